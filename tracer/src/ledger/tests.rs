use super::*;

const PAGE: u64 = 4096;
const PID: u32 = 100;
const A: StackKey = StackKey { source: Source::Mmap, stack: 1 };
const B: StackKey = StackKey { source: Source::Mmap, stack: 2 };
const HEAP: StackKey = StackKey { source: Source::Brk, stack: 3 };

fn outstanding(ledger: &Ledger, key: StackKey) -> (u64, u64) {
    ledger.stats_of(&key).map(|s| (s.outstanding_bytes, s.outstanding_allocs)).unwrap_or_default()
}

#[test]
fn mmap_rounds_up_to_pages_and_munmap_gives_back() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 100, A);
    ledger.map(PID, 0x20000, 3 * PAGE, A);
    assert_eq!(outstanding(&ledger, A), (4 * PAGE, 2));
    ledger.unmap(PID, 0x10000, PAGE);
    assert_eq!(outstanding(&ledger, A), (3 * PAGE, 1));
    let stats = ledger.stats_of(&A).unwrap();
    assert_eq!((stats.allocated_bytes, stats.allocated_allocs, stats.freed_bytes), (4 * PAGE, 2, PAGE));
}

#[test]
fn partial_munmap_keeps_the_allocation_until_its_last_byte_goes() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 4 * PAGE, A);
    ledger.unmap(PID, 0x11000, PAGE); // a hole in the middle
    assert_eq!(outstanding(&ledger, A), (3 * PAGE, 1));
    ledger.unmap(PID, 0x10000, PAGE);
    ledger.unmap(PID, 0x12000, 2 * PAGE);
    assert_eq!(outstanding(&ledger, A), (0, 0));
    assert_eq!(ledger.counters().unmatched_frees, 0);
}

#[test]
fn munmap_spanning_several_mappings_releases_each_stack() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 2 * PAGE, A);
    ledger.map(PID, 0x12000, 2 * PAGE, B);
    ledger.map(PID, 0x16000, PAGE, B); // after a hole
    ledger.unmap(PID, 0x11000, 6 * PAGE);
    assert_eq!(outstanding(&ledger, A), (PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (0, 0));
}

#[test]
fn munmap_of_unknown_memory_is_an_unmatched_free() {
    let mut ledger = Ledger::new(PAGE);
    ledger.unmap(PID, 0x10000, PAGE);
    ledger.seed_preexisting(PID, [(0x20000, 0x30000)], None);
    ledger.unmap(PID, 0x20000, PAGE);
    let counters = ledger.counters();
    assert_eq!(counters.unmatched_frees, 1);
    assert_eq!(counters.preexisting_released_bytes, PAGE);
    assert_eq!(ledger.outstanding(), (0, 0));
}

#[test]
fn map_fixed_over_an_old_mapping_releases_it() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 4 * PAGE, A);
    ledger.map(PID, 0x11000, PAGE, B);
    assert_eq!(outstanding(&ledger, A), (3 * PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (PAGE, 1));
}

#[test]
fn mremap_grow_in_place_charges_the_growth_to_the_mremap_stack() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 2 * PAGE, A);
    ledger.remap(PID, 0x10000, 2 * PAGE, 0x10000, 5 * PAGE, 0, B);
    assert_eq!(outstanding(&ledger, A), (2 * PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (3 * PAGE, 1));
}

#[test]
fn mremap_shrink_releases_the_tail() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 4 * PAGE, A);
    ledger.remap(PID, 0x10000, 4 * PAGE, 0x10000, PAGE, 0, B);
    assert_eq!(outstanding(&ledger, A), (PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (0, 0));
}

#[test]
fn mremap_move_keeps_owners_and_frees_the_old_address() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 2 * PAGE, A);
    ledger.remap(PID, 0x10000, 2 * PAGE, 0x80000, 3 * PAGE, 1, B);
    assert_eq!(outstanding(&ledger, A), (2 * PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (PAGE, 1));
    // The old address holds nothing now; the new one holds A's pages.
    ledger.unmap(PID, 0x10000, 2 * PAGE);
    assert_eq!(ledger.counters().unmatched_frees, 1);
    ledger.unmap(PID, 0x80000, PAGE);
    assert_eq!(outstanding(&ledger, A), (PAGE, 1));
}

#[test]
fn mremap_fixed_releases_the_destination_first() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, PAGE, A);
    ledger.map(PID, 0x80000, 2 * PAGE, B);
    ledger.remap(PID, 0x10000, PAGE, 0x80000, PAGE, 1 | MREMAP_FIXED, A);
    assert_eq!(outstanding(&ledger, A), (PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (PAGE, 1));
}

#[test]
fn brk_grow_and_shrink_are_exact_bytes() {
    let mut ledger = Ledger::new(PAGE);
    ledger.brk(PID, 0x5000_0000, HEAP); // the first answer only tells the break
    assert_eq!(outstanding(&ledger, HEAP), (0, 0));
    ledger.brk(PID, 0x5000_0000 + 1000, HEAP);
    ledger.brk(PID, 0x5000_0000 + 5000, HEAP);
    assert_eq!(outstanding(&ledger, HEAP), (5000, 2));
    ledger.brk(PID, 0x5000_0000 + 500, HEAP);
    assert_eq!(outstanding(&ledger, HEAP), (500, 1));
    ledger.brk(PID, 0x5000_0000 + 500, HEAP); // a refused or query call changes nothing
    assert_eq!(outstanding(&ledger, HEAP), (500, 1));
}

#[test]
fn brk_shrink_below_the_traced_start_counts_preexisting_heap() {
    let mut ledger = Ledger::new(PAGE);
    ledger.seed_preexisting(PID, [(0x5000_0000, 0x5000_2000)], Some(0x5000_2000));
    ledger.brk(PID, 0x5000_3000, HEAP);
    ledger.brk(PID, 0x5000_1000, HEAP);
    assert_eq!(outstanding(&ledger, HEAP), (0, 0));
    assert_eq!(ledger.counters().preexisting_released_bytes, 0x1000);
}

#[test]
fn address_spaces_of_two_processes_are_apart() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(1, 0x10000, PAGE, A);
    ledger.map(2, 0x10000, PAGE, B);
    ledger.unmap(1, 0x10000, PAGE);
    assert_eq!(outstanding(&ledger, A), (0, 0));
    assert_eq!(outstanding(&ledger, B), (PAGE, 1));
}
