//! Outstanding memory per (source, stack): what was allocated, what of it was given back, what is left.
//!
//! Pure data structures, fed by the collector with decoded events; nothing here touches the kernel.

pub mod ranges;
pub mod regions;
pub mod turns;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use ranges::{RangeMap, Segment};
use turns::{TurnLedger, TurnSetId};

/// The layer memory was taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// mmap, and the pages mremap adds.
    Mmap,
    /// The brk heap.
    Brk,
    /// Pages made resident by a first-touch page fault.
    PageFault,
    /// Blocks from the allocator (malloc, operator new, mi_malloc, ...), whichever family.
    Malloc,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Malloc, Source::PageFault, Source::Mmap, Source::Brk];

    /// What the source's bytes are, for titles.
    pub const fn describe(self) -> &'static str {
        match self {
            Source::Mmap => "mapped memory",
            Source::Brk => "brk heap",
            Source::PageFault => "resident memory",
            Source::Malloc => "allocator memory",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Source::Mmap => "mmap",
            Source::Brk => "brk",
            Source::PageFault => "page-fault",
            Source::Malloc => "malloc",
        }
    }
}

/// A stack interned by the collector (see `collector::stacks`).
pub type StackIx = u32;

/// One allocation: a single mmap, a brk growth, the pages an mremap added.
pub type AllocId = u64;

/// Memory that was mapped before tracing began. It belongs to no stack; its release is counted apart so
/// that it is neither an unmatched free nor a negative figure.
pub const PREEXISTING: AllocId = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub source: Source,
    pub stack: StackIx,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    pub outstanding_bytes: u64,
    pub outstanding_allocs: u64,
    pub allocated_bytes: u64,
    pub allocated_allocs: u64,
    pub freed_bytes: u64,
}

impl StackStats {
    pub fn add(&mut self, other: &StackStats) {
        self.outstanding_bytes += other.outstanding_bytes;
        self.outstanding_allocs += other.outstanding_allocs;
        self.allocated_bytes += other.allocated_bytes;
        self.allocated_allocs += other.allocated_allocs;
        self.freed_bytes += other.freed_bytes;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerCounters {
    /// Release calls (munmap, mremap shrink, brk shrink) that found no byte they covered in the ledger.
    pub unmatched_frees: u64,
    /// Bytes released that were mapped before tracing began.
    pub preexisting_released_bytes: u64,
    /// Page faults on pages the ledger already held resident (copy-on-write, a write after a read of a
    /// never-written page). Not lost: they add no resident memory.
    pub faults_on_resident_pages: u64,
    /// Read faults on never-written private anonymous memory: the kernel maps its zero page, nothing
    /// becomes resident until the first write.
    pub zero_page_reads: u64,
    /// Faults that brought in a huge page at once.
    pub huge_page_faults: u64,
    /// Faults on the page the kernel maps into the target for our uprobes (`[uprobes]`): the tracer's own
    /// footprint, not the target's memory, so not counted as resident.
    pub uprobe_page_faults: u64,
    /// Stacks forgotten to keep the tracer within its memory budget (they had nothing outstanding), and
    /// the bytes they had allocated (still in no other stack's figures).
    pub evicted_stacks: u64,
    pub evicted_allocated_bytes: u64,
}

#[derive(Debug)]
struct Allocation {
    key: StackKey,
    remaining: u64,
    backing: Backing,
    /// The turns under way when it was made.
    born: TurnSetId,
}

/// Who made a resident page resident, and during which turns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResidentOwner {
    pub key: StackKey,
    pub born: TurnSetId,
    /// The pages each of its pages stands for: the page sampling rate when it was faulted in. Kept per
    /// segment so that a release, whatever the rate then, gives back exactly what the fault counted: with
    /// one page in N chosen by address, each page is counted N times with probability 1/N, an unbiased
    /// estimate whatever N was at each fault, and releases (munmap, madvise, exit) are ranges the kernel
    /// always sends, so they find every counted page at its own weight.
    pub weight: u64,
}

/// What backs a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// The brk heap.
    Heap,
    /// Private anonymous memory.
    Anonymous,
    /// Shared anonymous memory (shmem).
    SharedAnonymous,
    /// A file.
    File,
}

impl Backing {
    /// A read of a never-written page maps the shared zero page, which adds nothing resident.
    pub fn reads_zero_page(self) -> bool {
        matches!(self, Backing::Heap | Backing::Anonymous)
    }
}

#[derive(Debug, Default)]
struct AddressSpace {
    /// Which allocation mapped each byte.
    owners: RangeMap<AllocId>,
    /// Which stack made each resident page resident. For pages, an "allocation" is one base page.
    resident: RangeMap<ResidentOwner>,
    /// Current program break, once known.
    brk: Option<u64>,
}

/// mremap flags (linux/mman.h).
pub const MREMAP_FIXED: u64 = 2;
pub const MREMAP_DONTUNMAP: u64 = 4;

#[derive(Debug)]
pub struct Ledger {
    page_size: u64,
    stats: HashMap<StackKey, StackStats>,
    spaces: HashMap<u32, AddressSpace>,
    allocations: HashMap<AllocId, Allocation>,
    next_alloc: AllocId,
    counters: LedgerCounters,
    pub turns: TurnLedger,
    /// The ranges of mremap calls under way, by thread (see [`Ledger::remap_begin`]).
    moving: HashMap<u32, MovingRange>,
}

/// A range an mremap under way took out of its address space: what mapped it and what was resident, at
/// its old addresses.
#[derive(Debug)]
struct MovingRange {
    tgid: u32,
    addr: u64,
    len: u64,
    owners: Vec<Segment<AllocId>>,
    resident: Vec<Segment<ResidentOwner>>,
}

impl Ledger {
    pub fn new(page_size: u64) -> Self {
        Self {
            page_size,
            stats: HashMap::new(),
            spaces: HashMap::new(),
            allocations: HashMap::new(),
            next_alloc: PREEXISTING + 1,
            counters: LedgerCounters::default(),
            turns: TurnLedger::default(),
            moving: HashMap::new(),
        }
    }

    /// Records what `tgid` had mapped before tracing began, and its break. A break of 0 is none known: a
    /// process read before its image set one (a launched target just after exec) shows 0, and taken as the
    /// break it made the first brk look like a heap grown from address 0 (86 TiB).
    pub fn seed_preexisting(&mut self, tgid: u32, regions: impl IntoIterator<Item = (u64, u64)>, brk: Option<u64>) {
        let space = self.spaces.entry(tgid).or_default();
        for (start, end) in regions {
            space.owners.remove(start, end);
            space.owners.insert(start, end, PREEXISTING);
        }
        space.brk = brk.filter(|brk| *brk != 0);
    }

    /// A successful `mmap` of `len` bytes at `addr`. A mapping placed over an older one (MAP_FIXED)
    /// releases what it covers, as the kernel does.
    pub fn map(&mut self, tgid: u32, addr: u64, len: u64, backing: Backing, key: StackKey) {
        let end = addr + self.page_align(len);
        self.release(tgid, addr, end);
        self.allocate(tgid, addr, end, backing, key);
    }

    /// A successful `munmap`.
    pub fn unmap(&mut self, tgid: u32, addr: u64, len: u64) {
        let end = addr + self.page_align(len);
        if self.release(tgid, addr, end) == 0 {
            self.counters.unmatched_frees += 1;
        }
    }

    /// Thread `tid` entered `mremap` of `[old_addr, old_addr+old_len)`: the range is taken aside until the
    /// call returns ([`Ledger::remap`]) or fails ([`Ledger::remap_failed`]). Taken out at the entry because
    /// once the kernel has moved it, another thread's mmap may get the old range and be recorded before
    /// this call's return; that new mapping must not move with this one.
    pub fn remap_begin(&mut self, tgid: u32, tid: u32, old_addr: u64, old_len: u64) {
        // A range left aside by a call whose end was never seen goes back first.
        self.remap_failed(tid);
        let len = self.page_align(old_len);
        if len == 0 {
            // old_len 0 makes a second mapping of a shared region: nothing moves.
            return;
        }
        let moving = self.take_aside(tgid, old_addr, len);
        self.moving.insert(tid, moving);
    }

    /// Takes `[addr, addr+len)` (page-aligned) out of `tgid`'s space, with its resident pages, uncharged.
    fn take_aside(&mut self, tgid: u32, addr: u64, len: u64) -> MovingRange {
        let space = self.spaces.entry(tgid).or_default();
        let owners = space.owners.remove(addr, addr + len);
        let resident = space.resident.remove(addr, addr + len);
        MovingRange { tgid, addr, len, owners, resident }
    }

    /// The mremap thread `tid` entered failed: its range goes back where it was (still mapped there, so
    /// nothing else can have taken it).
    pub fn remap_failed(&mut self, tid: u32) {
        if let Some(moving) = self.moving.remove(&tid) {
            self.put_back(moving);
        }
    }

    /// A successful `mremap` by thread `tid` of `old` to `new` (each an address and a length). Bytes that
    /// stay keep their allocation (and stack); bytes it adds belong to `key`.
    pub fn remap(&mut self, tgid: u32, tid: u32, old: (u64, u64), new: (u64, u64), flags: u64, key: StackKey) {
        let ((old_addr, old_len), (new_addr, new_len)) = (old, new);
        let old_len = self.page_align(old_len);
        let new_len = self.page_align(new_len);
        // The range its entry took aside; taken now if the entry was not seen (an empty range takes nothing).
        let moving = match self.moving.remove(&tid) {
            Some(moving) if moving.tgid == tgid && moving.addr == old_addr && moving.len == old_len => moving,
            stale => {
                if let Some(stale) = stale {
                    self.put_back(stale);
                }
                self.take_aside(tgid, old_addr, old_len)
            }
        };
        // Pages mremap adds are backed like the region it resizes.
        let backing = moving
            .owners
            .first()
            .and_then(|segment| self.allocations.get(&segment.owner))
            .map_or(Backing::Anonymous, |allocation| allocation.backing);
        if old_len == 0 {
            // old_len 0 makes a second mapping of a shared region: a new mapping.
            self.map(tgid, new_addr, new_len, backing, key);
            return;
        }
        if flags & MREMAP_DONTUNMAP != 0 {
            // The old range stays mapped (emptied); the new range is a mapping of its own.
            self.put_back(moving);
            if flags & MREMAP_FIXED != 0 {
                self.release(tgid, new_addr, new_addr + new_len);
            }
            self.allocate(tgid, new_addr, new_addr + new_len, backing, key);
            return;
        }
        if flags & MREMAP_FIXED != 0 && new_addr != old_addr {
            // The kernel unmaps whatever was at the destination first.
            self.release(tgid, new_addr, new_addr + new_len);
        }
        // What stays moves (or stays in place), with its resident pages; what a shrink cuts off is released.
        let kept_end = old_addr + old_len.min(new_len);
        let moved = |start: u64| new_addr + (start - old_addr);
        let (kept, cut) = split_segments(moving.owners, kept_end);
        let (kept_resident, cut_resident) = split_segments(moving.resident, kept_end);
        let space = self.spaces.entry(tgid).or_default();
        for segment in kept {
            space.owners.insert(moved(segment.start), moved(segment.end), segment.owner);
        }
        for segment in kept_resident {
            space.resident.insert_merging(moved(segment.start), moved(segment.end), segment.owner);
        }
        for segment in cut {
            self.charge_release(segment.owner, segment.len());
        }
        self.release_resident_segments(cut_resident);
        if new_len > old_len {
            self.allocate(tgid, new_addr + old_len, new_addr + new_len, backing, key);
        }
    }

    /// Puts a range an mremap took aside back at its old addresses.
    fn put_back(&mut self, moving: MovingRange) {
        let space = self.spaces.entry(moving.tgid).or_default();
        for segment in moving.owners {
            space.owners.insert(segment.start, segment.end, segment.owner);
        }
        for segment in moving.resident {
            space.resident.insert_merging(segment.start, segment.end, segment.owner);
        }
    }

    /// What backs the mapping at `addr`, when the ledger saw it being made.
    pub fn backing_at(&self, tgid: u32, addr: u64) -> Option<Backing> {
        let owner = self.spaces.get(&tgid)?.owners.owner_at(addr)?;
        self.allocations.get(&owner).map(|allocation| allocation.backing)
    }

    /// A `brk(requested)` call that left the break at `result`. The kernel answers a query (0), a refused
    /// request and a success alike with the break after the call, so growth and shrink come from the
    /// break we knew before.
    pub fn brk(&mut self, tgid: u32, result: u64, key: StackKey) {
        let previous = self.spaces.entry(tgid).or_default().brk.replace(result);
        let Some(previous) = previous else { return };
        if result > previous {
            self.allocate(tgid, previous, result, Backing::Heap, key);
        } else if result < previous && self.release(tgid, result, previous) == 0 {
            self.counters.unmatched_frees += 1;
        }
    }

    /// `tgid` called exec: its old address space is gone whole, every mapping and resident page with its
    /// break. Returns the outstanding bytes released, by source.
    pub fn release_image(&mut self, tgid: u32) -> BTreeMap<Source, u64> {
        let before = self.by_source();
        // An mremap under way is gone with the image too.
        let moving: Vec<u32> =
            self.moving.iter().filter(|(_, moving)| moving.tgid == tgid).map(|(tid, _)| *tid).collect();
        for tid in moving {
            self.remap_failed(tid);
        }
        self.release(tgid, 0, u64::MAX);
        self.spaces.remove(&tgid);
        let after = self.by_source();
        before
            .into_iter()
            .filter(|(source, _)| *source != Source::Malloc)
            .map(|(source, stats)| {
                let left = after.get(&source).map_or(0, |stats| stats.outstanding_bytes);
                (source, stats.outstanding_bytes.saturating_sub(left))
            })
            .filter(|(_, bytes)| *bytes > 0)
            .collect()
    }

    /// Forgets the figures of stacks with nothing outstanding, except those in `keep` and the allocator's
    /// (kept in the kernel); returns how many went.
    pub fn evict_idle(&mut self, keep: &HashSet<StackKey>) -> usize {
        let before = self.stats.len();
        let counters = &mut self.counters;
        self.stats.retain(|key, stats| {
            let idle = stats.outstanding_bytes == 0 && key.source != Source::Malloc && !keep.contains(key);
            if idle {
                counters.evicted_stacks += 1;
                counters.evicted_allocated_bytes += stats.allocated_bytes;
            }
            !idle
        });
        self.stats.shrink_to_fit();
        before - self.stats.len()
    }

    /// Bytes and objects still live per (stack, turns they were born in): mapped allocations (one object
    /// each) and resident pages (one object a page).
    pub fn live_by_birth(&self) -> impl Iterator<Item = (StackKey, TurnSetId, u64, u64)> + '_ {
        let mapped = self.allocations.values().map(|a| (a.key, a.born, a.remaining, 1));
        let resident = self.spaces.values().flat_map(|space| space.resident.segments()).map(|segment| {
            let bytes = segment.len() * segment.owner.weight;
            (segment.owner.key, segment.owner.born, bytes, bytes / self.page_size)
        });
        mapped.chain(resident)
    }

    /// Replaces the figures of every stack of `source` by figures kept elsewhere (the allocator's are kept
    /// in the kernel).
    pub fn replace_source_stats(&mut self, source: Source, stats: HashMap<StackKey, StackStats>) {
        self.stats.retain(|key, _| key.source != source);
        self.stats.extend(stats.into_iter().filter(|(key, _)| key.source == source));
    }

    /// Resident pages of `tgid`, segment by segment.
    pub fn resident_segments(&self, tgid: u32) -> impl Iterator<Item = Segment<ResidentOwner>> + '_ {
        self.spaces.get(&tgid).into_iter().flat_map(|space| space.resident.segments())
    }

    pub fn stats(&self) -> impl Iterator<Item = (&StackKey, &StackStats)> {
        self.stats.iter()
    }

    /// Every stack's figures added up per source. (Not across sources: the same pages are mapped and
    /// resident, and the allocator's blocks lie in both.)
    pub fn by_source(&self) -> BTreeMap<Source, StackStats> {
        let mut totals: BTreeMap<Source, StackStats> = BTreeMap::new();
        for (key, stats) in &self.stats {
            totals.entry(key.source).or_default().add(stats);
        }
        totals
    }

    #[cfg(test)]
    pub fn stats_of(&self, key: &StackKey) -> Option<&StackStats> {
        self.stats.get(key)
    }

    pub fn counters(&self) -> LedgerCounters {
        self.counters
    }

    #[cfg(test)]
    pub fn outstanding(&self) -> (u64, u64) {
        self.stats
            .values()
            .fold((0, 0), |(bytes, allocs), s| (bytes + s.outstanding_bytes, allocs + s.outstanding_allocs))
    }

    fn page_align(&self, len: u64) -> u64 {
        len.div_ceil(self.page_size) * self.page_size
    }

    fn allocate(&mut self, tgid: u32, start: u64, end: u64, backing: Backing, key: StackKey) {
        if start >= end {
            return;
        }
        let id = self.next_alloc;
        self.next_alloc += 1;
        let bytes = end - start;
        self.spaces.entry(tgid).or_default().owners.insert(start, end, id);
        let born = self.turns.allocated(key.source, bytes);
        self.allocations.insert(id, Allocation { key, remaining: bytes, backing, born });
        let stats = self.stats.entry(key).or_default();
        stats.outstanding_bytes += bytes;
        stats.outstanding_allocs += 1;
        stats.allocated_bytes += bytes;
        stats.allocated_allocs += 1;
    }

    /// Releases `[start, end)`, mapped and resident, and returns the number of mapped bytes the ledger
    /// knew there.
    fn release(&mut self, tgid: u32, start: u64, end: u64) -> u64 {
        self.release_resident(tgid, start, end);
        let Some(space) = self.spaces.get_mut(&tgid) else { return 0 };
        let removed = space.owners.remove(start, end);
        let mut known = 0;
        for segment in removed {
            known += segment.len();
            self.charge_release(segment.owner, segment.len());
        }
        known
    }

    /// A user page fault at `addr` that made a page of `page_bytes` (a base page, or a huge page) resident,
    /// unless the ledger holds it resident already (a write to a zero page, a copy-on-write). `weight`: the
    /// pages it stands for (`--sample-pages` or the overhead budget's rate when the kernel chose it; 1: all).
    pub fn fault(&mut self, tgid: u32, addr: u64, page_bytes: u64, key: StackKey, weight: u64) {
        let weight = weight.max(1);
        if page_bytes > self.page_size {
            self.counters.huge_page_faults += 1;
        }
        let start = addr & !(page_bytes - 1);
        let end = start + page_bytes;
        let space = self.spaces.entry(tgid).or_default();
        let gaps = space.resident.gaps(start, end);
        let held: u64 = gaps.iter().map(|(gap_start, gap_end)| gap_end - gap_start).sum();
        if held == 0 {
            self.counters.faults_on_resident_pages += 1;
            return;
        }
        let added = held * weight;
        let owner = ResidentOwner { key, born: self.turns.allocated(key.source, added), weight };
        for (gap_start, gap_end) in gaps {
            space.resident.insert_merging(gap_start, gap_end, owner);
        }
        let pages = added / self.page_size;
        let stats = self.stats.entry(key).or_default();
        stats.outstanding_bytes += added;
        stats.outstanding_allocs += pages;
        stats.allocated_bytes += added;
        stats.allocated_allocs += pages;
    }

    pub fn zero_page_read(&mut self) {
        self.counters.zero_page_reads += 1;
    }

    pub fn uprobe_page_fault(&mut self) {
        self.counters.uprobe_page_faults += 1;
    }

    /// A successful madvise that lets the kernel drop the pages (DONTNEED, FREE, REMOVE): they are no longer
    /// resident, though still mapped.
    pub fn drop_pages(&mut self, tgid: u32, addr: u64, len: u64) {
        let end = addr + self.page_align(len);
        self.release_resident(tgid, addr, end);
    }

    fn release_resident(&mut self, tgid: u32, start: u64, end: u64) {
        let Some(space) = self.spaces.get_mut(&tgid) else { return };
        let removed = space.resident.remove(start, end);
        self.release_resident_segments(removed);
    }

    fn release_resident_segments(&mut self, segments: Vec<Segment<ResidentOwner>>) {
        for segment in segments {
            let bytes = segment.len() * segment.owner.weight;
            self.turns.released(segment.owner.key.source, bytes, segment.owner.born);
            // cannot fail: a stack owning resident pages has outstanding bytes, so `evict_idle` keeps its stats
            // (and `replace_source_stats` replaces only the allocator's, which own no pages)
            let stats = self.stats.get_mut(&segment.owner.key).expect("a resident page's stack has stats");
            stats.outstanding_bytes -= bytes;
            stats.outstanding_allocs -= bytes / self.page_size;
            stats.freed_bytes += bytes;
        }
    }

    fn charge_release(&mut self, owner: AllocId, bytes: u64) {
        if owner == PREEXISTING {
            self.counters.preexisting_released_bytes += bytes;
            return;
        }
        let Some(allocation) = self.allocations.get_mut(&owner) else { return };
        allocation.remaining -= bytes;
        let key = allocation.key;
        self.turns.released(key.source, bytes, allocation.born);
        let gone = allocation.remaining == 0;
        if gone {
            self.allocations.remove(&owner);
        }
        // cannot fail: until its last byte is released an allocation's stack has outstanding bytes, so
        // `evict_idle` keeps its stats
        let stats = self.stats.get_mut(&key).expect("an allocation's stack has stats");
        stats.outstanding_bytes -= bytes;
        stats.freed_bytes += bytes;
        if gone {
            stats.outstanding_allocs -= 1;
        }
    }
}

/// Segments in address order split at `at`: those below it, and those from it on.
fn split_segments<O: Copy>(segments: Vec<Segment<O>>, at: u64) -> (Vec<Segment<O>>, Vec<Segment<O>>) {
    let mut below = Vec::new();
    let mut above = Vec::new();
    for segment in segments {
        if segment.end <= at {
            below.push(segment);
        } else if segment.start >= at {
            above.push(segment);
        } else {
            below.push(Segment { end: at, ..segment });
            above.push(Segment { start: at, ..segment });
        }
    }
    (below, above)
}

#[cfg(test)]
mod tests;
