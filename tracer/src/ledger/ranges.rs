//! Which allocation owns each byte of an address space: non-overlapping `[start, end)` segments.
//!
//! A segment is cut wherever a release covers only part of it, so a partial munmap, a munmap spanning
//! several mappings, or a move by mremap all come down to [`RangeMap::remove`] and [`RangeMap::insert`].

use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<O> {
    pub start: u64,
    pub end: u64,
    pub owner: O,
}

impl<O> Segment<O> {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

#[derive(Debug)]
pub struct RangeMap<O> {
    /// start -> (end, owner)
    segments: BTreeMap<u64, (u64, O)>,
}

impl<O> Default for RangeMap<O> {
    fn default() -> Self {
        Self { segments: BTreeMap::new() }
    }
}

impl<O: Copy + PartialEq> RangeMap<O> {
    /// Takes `[start, end)` out of the map and returns the pieces that were there, in address order.
    pub fn remove(&mut self, start: u64, end: u64) -> Vec<Segment<O>> {
        let mut removed = Vec::new();
        if start >= end {
            return removed;
        }
        // A segment starting before `start` may reach into the range.
        let first = self
            .segments
            .range(..start)
            .next_back()
            .filter(|(_, (seg_end, _))| *seg_end > start)
            .map(|(seg_start, _)| *seg_start)
            .unwrap_or(start);
        let overlapping: Vec<u64> = self.segments.range(first..end).map(|(s, _)| *s).collect();
        for seg_start in overlapping {
            // cannot fail: the keys were just listed from this map, each once
            let (seg_end, owner) = self.segments.remove(&seg_start).expect("key just listed");
            if seg_start < start {
                self.segments.insert(seg_start, (start, owner));
            }
            if seg_end > end {
                self.segments.insert(end, (seg_end, owner));
            }
            removed.push(Segment { start: seg_start.max(start), end: seg_end.min(end), owner });
        }
        removed
    }

    /// Gives `[start, end)` to `owner`. The range must be free: call [`RangeMap::remove`] first.
    pub fn insert(&mut self, start: u64, end: u64, owner: O) {
        if start < end {
            self.segments.insert(start, (end, owner));
        }
    }

    /// Like [`RangeMap::insert`], joining the new range with neighbours of the same owner, so that memory
    /// filled page by page from one place stays one segment.
    /// A segment that ends where the new range starts is stretched in place: pages faulted in one after
    /// another cost two searches each, not a removal and an insertion besides.
    pub fn insert_merging(&mut self, start: u64, mut end: u64, owner: O) {
        if start >= end {
            return;
        }
        if let Some(&(after_end, after_owner)) = self.segments.get(&end) {
            if after_owner == owner {
                self.segments.remove(&end);
                end = after_end;
            }
        }
        if let Some((_, (before_end, before_owner))) = self.segments.range_mut(..start).next_back() {
            if *before_end == start && *before_owner == owner {
                *before_end = end;
                return;
            }
        }
        self.segments.insert(start, (end, owner));
    }

    /// The owner of the byte at `addr`.
    pub fn owner_at(&self, addr: u64) -> Option<O> {
        let (_, &(end, owner)) = self.segments.range(..=addr).next_back()?;
        (addr < end).then_some(owner)
    }

    /// The parts of `[start, end)` that no segment covers, in address order. Walks down from `end`: a page
    /// costs one search of the map.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        // Everything from `cursor` up to `end` has been looked at.
        let mut cursor = end;
        for (&seg_start, &(seg_end, _)) in self.segments.range(..end).rev() {
            if seg_end <= start {
                break;
            }
            if seg_end < cursor {
                gaps.push((seg_end, cursor));
            }
            cursor = cursor.min(seg_start);
            if cursor <= start {
                break;
            }
        }
        if cursor > start {
            gaps.push((start, cursor));
        }
        gaps.reverse();
        gaps
    }

    pub fn segments(&self) -> impl Iterator<Item = Segment<O>> + '_ {
        self.segments.iter().map(|(start, (end, owner))| Segment { start: *start, end: *end, owner: *owner })
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, end: u64, owner: u64) -> Segment<u64> {
        Segment { start, end, owner }
    }

    #[test]
    fn remove_cuts_partial_overlaps_and_keeps_the_rest() {
        let mut map = RangeMap::default();
        map.insert(0x1000, 0x5000, 1);
        map.insert(0x6000, 0x8000, 2);
        map.insert(0x8000, 0x9000, 3);

        let removed = map.remove(0x3000, 0x8800);
        assert_eq!(removed, vec![seg(0x3000, 0x5000, 1), seg(0x6000, 0x8000, 2), seg(0x8000, 0x8800, 3)]);
        assert_eq!(map.segments().collect::<Vec<_>>(), vec![seg(0x1000, 0x3000, 1), seg(0x8800, 0x9000, 3)]);
    }

    #[test]
    fn insert_merging_joins_neighbours_of_the_same_owner_only() {
        let mut map = RangeMap::default();
        map.insert_merging(0x2000, 0x3000, 1);
        map.insert_merging(0x1000, 0x2000, 1);
        map.insert_merging(0x3000, 0x4000, 1);
        map.insert_merging(0x4000, 0x5000, 2);
        assert_eq!(map.segments().collect::<Vec<_>>(), vec![seg(0x1000, 0x4000, 1), seg(0x4000, 0x5000, 2)]);
        // Filling the hole between two segments of one owner leaves one segment.
        map.insert_merging(0x6000, 0x7000, 2);
        map.insert_merging(0x5000, 0x6000, 2);
        assert_eq!(map.segments().collect::<Vec<_>>(), vec![seg(0x1000, 0x4000, 1), seg(0x4000, 0x7000, 2)]);
        map.insert_merging(0x8000, 0x9000, 1);
        map.insert_merging(0x7000, 0x8000, 1);
        assert_eq!(
            map.segments().collect::<Vec<_>>(),
            vec![seg(0x1000, 0x4000, 1), seg(0x4000, 0x7000, 2), seg(0x7000, 0x9000, 1)]
        );
    }

    #[test]
    fn gaps_are_what_no_segment_covers() {
        let mut map = RangeMap::default();
        map.insert(0x2000, 0x3000, 1);
        map.insert(0x4000, 0x6000, 1);
        assert_eq!(map.gaps(0x1000, 0x7000), vec![(0x1000, 0x2000), (0x3000, 0x4000), (0x6000, 0x7000)]);
        assert_eq!(map.gaps(0x4800, 0x5000), vec![]);
        assert_eq!(map.gaps(0x2800, 0x4800), vec![(0x3000, 0x4000)]);
        assert_eq!(map.gaps(0x3000, 0x4000), vec![(0x3000, 0x4000)]);
        assert_eq!(map.gaps(0x2000, 0x3000), vec![]);
        assert_eq!(map.gaps(0x5000, 0x9000), vec![(0x6000, 0x9000)]);
        assert_eq!(map.gaps(0x0, 0x2000), vec![(0x0, 0x2000)]);
        assert_eq!(map.gaps(0x2000, 0x2000), vec![]);
    }

    /// Random inserts, removals and gap queries on 64 pages, checked page by page against a plain array of
    /// owners (a fixed seed: the same sequence on every run).
    #[test]
    fn agrees_with_an_array_of_pages_under_random_operations() {
        const PAGES: u64 = 64;
        let mut map = RangeMap::default();
        let mut pages: [Option<u64>; PAGES as usize] = [None; PAGES as usize];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for _ in 0..20_000 {
            let first = next(PAGES);
            let last = (first + 1 + next(4)).min(PAGES);
            let (start, end) = (first * 0x1000, last * 0x1000);
            match next(3) {
                0 => {
                    // Fill the free pages, as a fault does.
                    let owner = next(3);
                    let gaps = map.gaps(start, end);
                    let expected: Vec<u64> = (first..last).filter(|&p| pages[p as usize].is_none()).collect();
                    let found: Vec<u64> = gaps.iter().flat_map(|&(s, e)| s / 0x1000..e / 0x1000).collect();
                    assert_eq!(found, expected, "gaps of {start:#x}..{end:#x}");
                    for (gap_start, gap_end) in gaps {
                        map.insert_merging(gap_start, gap_end, owner);
                    }
                    for page in expected {
                        pages[page as usize] = Some(owner);
                    }
                }
                1 => {
                    let removed = map.remove(start, end);
                    let found: Vec<(u64, u64)> = removed
                        .iter()
                        .flat_map(|seg| (seg.start / 0x1000..seg.end / 0x1000).map(|p| (p, seg.owner)))
                        .collect();
                    let expected: Vec<(u64, u64)> =
                        (first..last).filter_map(|p| pages[p as usize].map(|owner| (p, owner))).collect();
                    assert_eq!(found, expected, "removed from {start:#x}..{end:#x}");
                    for page in first..last {
                        pages[page as usize] = None;
                    }
                }
                _ => {
                    for page in first..last {
                        assert_eq!(map.owner_at(page * 0x1000 + 0x10), pages[page as usize]);
                    }
                }
            }
            // Merging keeps neighbours of one owner in one segment.
            let segments: Vec<Segment<u64>> = map.segments().collect();
            for pair in segments.windows(2) {
                assert!(pair[0].end < pair[1].start || pair[0].owner != pair[1].owner, "{pair:?} not merged");
            }
        }
    }

    #[test]
    fn remove_in_the_middle_splits_one_segment_in_two() {
        let mut map = RangeMap::default();
        map.insert(0x1000, 0x9000, 7);
        assert_eq!(map.remove(0x4000, 0x5000), vec![seg(0x4000, 0x5000, 7)]);
        assert_eq!(map.segments().collect::<Vec<_>>(), vec![seg(0x1000, 0x4000, 7), seg(0x5000, 0x9000, 7)]);
    }

    #[test]
    fn remove_of_a_hole_or_empty_range_finds_nothing() {
        let mut map = RangeMap::default();
        map.insert(0x1000, 0x2000, 1);
        assert!(map.remove(0x2000, 0x3000).is_empty());
        assert!(map.remove(0x0, 0x1000).is_empty());
        assert!(map.remove(0x1800, 0x1800).is_empty());
        assert_eq!(map.len(), 1);
    }
}
