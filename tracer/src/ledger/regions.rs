//! Resident memory split by the kind of mapping it lies in: the brk heap, named anonymous regions
//! (`[anon:NAME]`, as allocators and runtimes name their arenas), other anonymous memory, files, stacks.

use std::collections::BTreeMap;

use super::ranges::Segment;
use crate::procfs::maps::{Mapping, MemoryMap};

/// The kind of a mapping, as a report key.
pub fn region_kind(mapping: Option<&Mapping>) -> String {
    let Some(mapping) = mapping else { return "unmapped".to_string() };
    let name = mapping.pathname.as_str();
    if name == "[heap]" {
        "heap".to_string()
    } else if name.starts_with("[stack") {
        "stack".to_string()
    } else if let Some(inner) = name.strip_prefix("[anon:").and_then(|n| n.strip_suffix(']')) {
        format!("anon:{inner}")
    } else if let Some(inner) = name.strip_prefix("[anon_shmem:").and_then(|n| n.strip_suffix(']')) {
        format!("shmem:{inner}")
    } else if name.is_empty() {
        if mapping.shared { "shared-anonymous".to_string() } else { "anonymous".to_string() }
    } else if mapping.is_file() || name.starts_with('/') {
        "file".to_string()
    } else {
        name.trim_matches(|c| c == '[' || c == ']').to_string()
    }
}

/// Bytes of `segments` per region kind, cutting segments at mapping boundaries.
pub fn bytes_by_region<O>(
    segments: impl Iterator<Item = Segment<O>>,
    map: &MemoryMap,
    weight: impl Fn(&O) -> u64,
) -> BTreeMap<String, u64> {
    let mut regions = BTreeMap::new();
    for segment in segments {
        let mut cursor = segment.start;
        while cursor < segment.end {
            let mapping = map.find(cursor);
            let piece_end = match mapping {
                Some(m) => m.end.min(segment.end),
                // Not in the snapshot: up to the next mapping, or the segment's end.
                None => {
                    map.iter().map(|m| m.start).find(|&start| start > cursor).unwrap_or(segment.end).min(segment.end)
                }
            };
            *regions.entry(region_kind(mapping)).or_default() += (piece_end - cursor) * weight(&segment.owner);
            cursor = piece_end;
        }
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/server
00e03000-00e24000 rw-p 00000000 00:00 0           [heap]
7f2d0000-7f2d4000 rw-p 00000000 00:00 0           [anon:mimalloc]
7f2d4000-7f2d8000 rw-p 00000000 00:00 0
7f2e0000-7f2e8000 rw-s 00000000 00:01 99          /dev/shm/x
7ffd0000-7ffd2000 rw-p 00000000 00:00 0           [stack]
";

    fn segment(start: u64, end: u64) -> Segment<u32> {
        Segment { start, end, owner: 0 }
    }

    #[test]
    fn segments_are_split_at_mapping_boundaries_and_classified() {
        let map = MemoryMap::parse(MAPS);
        let regions = bytes_by_region(
            [
                segment(0xe03000, 0xe05000),
                segment(0x7f2d2000, 0x7f2d6000),
                segment(0x7f2e0000, 0x7f2e1000),
                segment(0x7ffd1000, 0x7ffd2000),
            ]
            .into_iter(),
            &map,
            |_| 1,
        );
        let expected: BTreeMap<String, u64> =
            [("heap", 0x2000), ("anon:mimalloc", 0x2000), ("anonymous", 0x2000), ("file", 0x1000), ("stack", 0x1000)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert_eq!(regions, expected);
    }

    #[test]
    fn memory_outside_the_snapshot_is_unmapped() {
        let map = MemoryMap::parse(MAPS);
        let regions = bytes_by_region([segment(0x1000, 0x3000)].into_iter(), &map, |_| 1);
        assert_eq!(regions.get("unmapped"), Some(&0x2000));
    }
}
