use super::*;

const PAGE: u64 = 4096;
const PID: u32 = 100;
const TID: u32 = 101;
const OTHER_TID: u32 = 102;
const ANON: Backing = Backing::Anonymous;
const A: StackKey = StackKey { source: Source::Mmap, stack: 1 };
const B: StackKey = StackKey { source: Source::Mmap, stack: 2 };
const HEAP: StackKey = StackKey { source: Source::Brk, stack: 3 };

fn outstanding(ledger: &Ledger, key: StackKey) -> (u64, u64) {
    ledger.stats_of(&key).map(|s| (s.outstanding_bytes, s.outstanding_allocs)).unwrap_or_default()
}

#[test]
fn mmap_rounds_up_to_pages_and_munmap_gives_back() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 100, ANON, A);
    ledger.map(PID, 0x20000, 3 * PAGE, ANON, A);
    assert_eq!(outstanding(&ledger, A), (4 * PAGE, 2));
    ledger.unmap(PID, 0x10000, PAGE);
    assert_eq!(outstanding(&ledger, A), (3 * PAGE, 1));
    let stats = ledger.stats_of(&A).unwrap();
    assert_eq!((stats.allocated_bytes, stats.allocated_allocs, stats.freed_bytes), (4 * PAGE, 2, PAGE));
}

#[test]
fn partial_munmap_keeps_the_allocation_until_its_last_byte_goes() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 4 * PAGE, ANON, A);
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
    ledger.map(PID, 0x10000, 2 * PAGE, ANON, A);
    ledger.map(PID, 0x12000, 2 * PAGE, ANON, B);
    ledger.map(PID, 0x16000, PAGE, ANON, B); // after a hole
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
    ledger.map(PID, 0x10000, 4 * PAGE, ANON, A);
    ledger.map(PID, 0x11000, PAGE, ANON, B);
    assert_eq!(outstanding(&ledger, A), (3 * PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (PAGE, 1));
}

#[test]
fn mremap_grow_in_place_charges_the_growth_to_the_mremap_stack() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 2 * PAGE, ANON, A);
    ledger.remap(PID, TID, (0x10000, 2 * PAGE), (0x10000, 5 * PAGE), 0, B);
    assert_eq!(outstanding(&ledger, A), (2 * PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (3 * PAGE, 1));
}

#[test]
fn mremap_shrink_releases_the_tail() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 4 * PAGE, ANON, A);
    ledger.remap(PID, TID, (0x10000, 4 * PAGE), (0x10000, PAGE), 0, B);
    assert_eq!(outstanding(&ledger, A), (PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (0, 0));
}

#[test]
fn mremap_move_keeps_owners_and_frees_the_old_address() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 2 * PAGE, ANON, A);
    ledger.remap(PID, TID, (0x10000, 2 * PAGE), (0x80000, 3 * PAGE), 1, B);
    assert_eq!(outstanding(&ledger, A), (2 * PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (PAGE, 1));
    // The old address holds nothing now; the new one holds A's pages.
    ledger.unmap(PID, 0x10000, 2 * PAGE);
    assert_eq!(ledger.counters().unmatched_frees, 1);
    ledger.unmap(PID, 0x80000, PAGE);
    assert_eq!(outstanding(&ledger, A), (PAGE, 1));
}

/// Another thread maps the range an mremap freed before that mremap's return is recorded (its entry was):
/// the new mapping stays where it is, the moved one goes to its new address.
#[test]
fn a_range_mapped_again_while_its_mremap_is_under_way_does_not_move_with_it() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 2 * PAGE, ANON, A);
    ledger.fault(PID, 0x10000, PAGE, TOUCH, 1);
    ledger.remap_begin(PID, TID, 0x10000, 2 * PAGE);
    ledger.map(PID, 0x10000, PAGE, ANON, B); // OTHER_TID got the freed range first
    ledger.remap(PID, TID, (0x10000, 2 * PAGE), (0x80000, 4 * PAGE), 1, A);
    assert_eq!(outstanding(&ledger, A), (4 * PAGE, 2));
    assert_eq!(outstanding(&ledger, B), (PAGE, 1));
    assert_eq!(outstanding(&ledger, TOUCH), (PAGE, 1), "the resident page moved, not released");
    ledger.unmap(PID, 0x10000, PAGE);
    assert_eq!(outstanding(&ledger, B), (0, 0));
    ledger.unmap(PID, 0x80000, 4 * PAGE);
    assert_eq!(outstanding(&ledger, A), (0, 0));
    assert_eq!(outstanding(&ledger, TOUCH), (0, 0));
    assert_eq!(ledger.counters().unmatched_frees, 0);
}

#[test]
fn a_failed_mremap_leaves_its_range_where_it_was() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 2 * PAGE, ANON, A);
    ledger.fault(PID, 0x11000, PAGE, TOUCH, 1);
    ledger.remap_begin(PID, TID, 0x10000, 2 * PAGE);
    ledger.remap_begin(PID, OTHER_TID, 0x40000, PAGE); // nothing known there: nothing taken
    ledger.remap_failed(TID);
    ledger.remap_failed(OTHER_TID);
    assert_eq!(ledger.backing_at(PID, 0x11000), Some(ANON));
    ledger.unmap(PID, 0x10000, 2 * PAGE);
    assert_eq!((outstanding(&ledger, A), outstanding(&ledger, TOUCH)), ((0, 0), (0, 0)));
    assert_eq!(ledger.counters().unmatched_frees, 0);
}

/// A shrinking mremap whose entry was seen releases the cut-off tail, mapped and resident, exactly.
#[test]
fn a_shrinking_move_releases_the_tail_it_cut() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 2 * PAGE, ANON, A);
    ledger.map(PID, 0x12000, 2 * PAGE, ANON, B);
    ledger.fault(PID, 0x11000, PAGE, TOUCH, 1);
    ledger.fault(PID, 0x13000, PAGE, TOUCH, 1); // in the page the shrink cuts off
    ledger.remap_begin(PID, TID, 0x10000, 4 * PAGE);
    ledger.remap(PID, TID, (0x10000, 4 * PAGE), (0x80000, 3 * PAGE), 1, A);
    assert_eq!(outstanding(&ledger, A), (2 * PAGE, 1));
    assert_eq!(outstanding(&ledger, B), (PAGE, 1));
    assert_eq!(outstanding(&ledger, TOUCH), (PAGE, 1));
    ledger.unmap(PID, 0x80000, 3 * PAGE);
    assert_eq!(
        (outstanding(&ledger, A), outstanding(&ledger, B), outstanding(&ledger, TOUCH)),
        ((0, 0), (0, 0), (0, 0))
    );
}

#[test]
fn mremap_fixed_releases_the_destination_first() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, PAGE, ANON, A);
    ledger.map(PID, 0x80000, 2 * PAGE, ANON, B);
    ledger.remap(PID, TID, (0x10000, PAGE), (0x80000, PAGE), 1 | MREMAP_FIXED, A);
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
fn a_break_of_zero_is_no_break_known() {
    let mut ledger = Ledger::new(PAGE);
    ledger.seed_preexisting(PID, [], Some(0));
    ledger.brk(PID, 0x5000_0000, HEAP); // the loader's first call: where the break is
    assert_eq!(outstanding(&ledger, HEAP), (0, 0));
    ledger.brk(PID, 0x5000_0000 + 2 * PAGE, HEAP);
    assert_eq!(outstanding(&ledger, HEAP), (2 * PAGE, 1));
}

#[test]
fn address_spaces_of_two_processes_are_apart() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(1, 0x10000, PAGE, ANON, A);
    ledger.map(2, 0x10000, PAGE, ANON, B);
    ledger.unmap(1, 0x10000, PAGE);
    assert_eq!(outstanding(&ledger, A), (0, 0));
    assert_eq!(outstanding(&ledger, B), (PAGE, 1));
}

const TOUCH: StackKey = StackKey { source: Source::PageFault, stack: 4 };
const OTHER_TOUCH: StackKey = StackKey { source: Source::PageFault, stack: 5 };

#[test]
fn first_touch_makes_a_page_resident_once() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 4 * PAGE, ANON, A);
    ledger.fault(PID, 0x10010, PAGE, TOUCH, 1);
    ledger.fault(PID, 0x10ff0, PAGE, OTHER_TOUCH, 1); // the same page again: a copy-on-write or similar
    ledger.fault(PID, 0x11000, PAGE, TOUCH, 1);
    assert_eq!(outstanding(&ledger, TOUCH), (2 * PAGE, 2));
    assert_eq!(outstanding(&ledger, OTHER_TOUCH), (0, 0));
    assert_eq!(ledger.counters().faults_on_resident_pages, 1);
}

#[test]
fn madvise_munmap_and_mremap_shrink_release_resident_pages() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 8 * PAGE, ANON, A);
    for page in 0..8 {
        ledger.fault(PID, 0x10000 + page * PAGE, PAGE, TOUCH, 1);
    }
    ledger.drop_pages(PID, 0x10000, 2 * PAGE);
    assert_eq!(outstanding(&ledger, TOUCH), (6 * PAGE, 6));
    assert_eq!(outstanding(&ledger, A), (8 * PAGE, 1), "madvise leaves the mapping");
    ledger.unmap(PID, 0x12000, PAGE);
    ledger.remap(PID, TID, (0x10000, 8 * PAGE), (0x10000, 6 * PAGE), 0, B);
    assert_eq!(outstanding(&ledger, TOUCH), (3 * PAGE, 3));
    // A dropped page touched again is resident again.
    ledger.fault(PID, 0x10000, PAGE, OTHER_TOUCH, 1);
    assert_eq!(outstanding(&ledger, OTHER_TOUCH), (PAGE, 1));
}

#[test]
fn resident_pages_move_with_mremap() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 2 * PAGE, ANON, A);
    ledger.fault(PID, 0x10000, PAGE, TOUCH, 1);
    ledger.remap(PID, TID, (0x10000, 2 * PAGE), (0x80000, 2 * PAGE), 1, B);
    ledger.fault(PID, 0x80000, PAGE, OTHER_TOUCH, 1);
    assert_eq!(outstanding(&ledger, OTHER_TOUCH), (0, 0), "the moved page is still resident");
    ledger.unmap(PID, 0x80000, 2 * PAGE);
    assert_eq!(outstanding(&ledger, TOUCH), (0, 0));
}

#[test]
fn a_page_is_released_with_the_weight_it_was_counted_with_whatever_the_rate_since() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, 8 * PAGE, ANON, A);
    // Two neighbours counted at different sampling rates (16 then 4) stay apart, each at its own weight.
    ledger.fault(PID, 0x10000, PAGE, TOUCH, 16);
    ledger.fault(PID, 0x11000, PAGE, TOUCH, 4);
    ledger.fault(PID, 0x12000, PAGE, TOUCH, 4);
    assert_eq!(outstanding(&ledger, TOUCH), (24 * PAGE, 24));
    let live: u64 = ledger.live_by_birth().filter(|(key, ..)| *key == TOUCH).map(|(_, _, bytes, _)| bytes).sum();
    assert_eq!(live, 24 * PAGE);
    // Released (now at rate 1, say) one at a time, then the rest.
    ledger.drop_pages(PID, 0x10000, PAGE);
    assert_eq!(outstanding(&ledger, TOUCH), (8 * PAGE, 8));
    assert_eq!(ledger.stats_of(&TOUCH).unwrap().freed_bytes, 16 * PAGE);
    ledger.unmap(PID, 0x10000, 8 * PAGE);
    assert_eq!(outstanding(&ledger, TOUCH), (0, 0));
    assert_eq!(ledger.stats_of(&TOUCH).unwrap().freed_bytes, 24 * PAGE);
}

#[test]
fn a_huge_page_fault_counts_the_huge_page_minus_what_was_resident() {
    const HUGE: u64 = 2 << 20;
    let mut ledger = Ledger::new(PAGE);
    ledger.fault(PID, 0x20_0000 + 5 * PAGE, PAGE, OTHER_TOUCH, 1);
    ledger.fault(PID, 0x20_0000 + 0x1234, HUGE, TOUCH, 1);
    assert_eq!(outstanding(&ledger, TOUCH), (HUGE - PAGE, 511));
    ledger.drop_pages(PID, 0x20_0000, HUGE);
    assert_eq!(ledger.outstanding(), (0, 0));
}

#[test]
fn the_ledger_knows_what_backs_what_it_saw_mapped() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, PAGE, Backing::File, A);
    ledger.map(PID, 0x20000, PAGE, ANON, A);
    ledger.brk(PID, 0x5000_0000, HEAP);
    ledger.brk(PID, 0x5000_2000, HEAP);
    ledger.remap(PID, TID, (0x20000, PAGE), (0x20000, 3 * PAGE), 0, B);
    assert_eq!(ledger.backing_at(PID, 0x10fff), Some(Backing::File));
    assert_eq!(ledger.backing_at(PID, 0x22000), Some(Backing::Anonymous));
    assert_eq!(ledger.backing_at(PID, 0x5000_1000), Some(Backing::Heap));
    assert_eq!(ledger.backing_at(PID, 0x40000), None);
    assert!(Backing::Heap.reads_zero_page() && !Backing::File.reads_zero_page());
}

#[test]
fn kernel_kept_figures_replace_a_whole_source() {
    let mut ledger = Ledger::new(PAGE);
    ledger.map(PID, 0x10000, PAGE, ANON, A);
    let malloc = |stack| StackKey { source: Source::Malloc, stack };
    let figures = |bytes| StackStats { outstanding_bytes: bytes, outstanding_allocs: 1, ..Default::default() };
    ledger.replace_source_stats(Source::Malloc, [(malloc(1), figures(10)), (malloc(2), figures(20))].into());
    ledger.replace_source_stats(Source::Malloc, [(malloc(2), figures(30))].into());
    assert_eq!(ledger.stats_of(&malloc(1)), None);
    assert_eq!(ledger.stats_of(&malloc(2)).unwrap().outstanding_bytes, 30);
    assert_eq!(outstanding(&ledger, A), (PAGE, 1), "other sources stay");
}
