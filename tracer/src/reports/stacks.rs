//! The ledger's stacks with their frames named, in report order: the view every report shares.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use crate::{
    collector::Trace,
    ledger::{Source, StackKey, StackStats},
    symbolizer::FrameName,
};

/// A frame's name as reports show it, shared by every stack that holds the frame.
pub type Frame = Arc<str>;

/// One (source, stack) with its figures, frames root first.
#[derive(Clone, Debug)]
pub struct ReportStack {
    pub source: Source,
    /// From the root to the frame that asked for memory.
    pub frames: Vec<Frame>,
    /// C-runtime frames above the reported leaf (the allocator or syscall wrapper), root first.
    pub runtime_frames: Vec<Frame>,
    pub stats: StackStats,
    /// The names of the threads that ran it, as bits (see `collector::threads`); 0 for the allocator's.
    pub threads: u64,
}

/// Stacks merged by source and frame names (two call sites in one function are one frame to a reader),
/// sorted by outstanding bytes, largest first (ties: allocated bytes, then frames).
pub fn report_stacks(trace: &Trace) -> Vec<ReportStack> {
    let mut merged: HashMap<(Source, Vec<Frame>), ReportStack> = HashMap::new();
    for (key, stats) in trace.ledger.stats() {
        let names = trace.frames.get(key.stack as usize).map(Vec::as_slice).unwrap_or(&[]);
        let (runtime_frames, frames) = split_runtime_frames(names);
        let entry = merged.entry((key.source, frames.clone())).or_insert_with(|| ReportStack {
            source: key.source,
            frames,
            runtime_frames,
            stats: StackStats::default(),
            threads: 0,
        });
        entry.stats.add(stats);
        entry.threads |= trace.threads.of_stack(key.stack);
    }
    let mut stacks: Vec<ReportStack> = merged.into_values().collect();
    stacks.sort_by(|a, b| {
        b.stats
            .outstanding_bytes
            .cmp(&a.stats.outstanding_bytes)
            .then(b.stats.allocated_bytes.cmp(&a.stats.allocated_bytes))
            .then_with(|| a.frames.cmp(&b.frames))
            .then(a.source.cmp(&b.source))
    });
    stacks
}

/// A stack's frames as the report shows them (root first, runtime frames split off).
pub fn names_of(trace: &Trace, stack: crate::ledger::StackIx) -> Vec<Frame> {
    let names = trace.frames.get(stack as usize).map(Vec::as_slice).unwrap_or(&[]);
    split_runtime_frames(names).1
}

/// Sums per-stack values by what a reader sees: the source and the frame names. Returns, per
/// (source, frames), a report stack (figures left empty) and the summed value.
pub fn merge_by_names(
    trace: &Trace,
    values: impl IntoIterator<Item = (StackKey, u64)>,
) -> HashMap<(Source, Vec<Frame>), (ReportStack, u64)> {
    let mut merged: HashMap<(Source, Vec<Frame>), (ReportStack, u64)> = HashMap::new();
    for (key, value) in values {
        let names = trace.frames.get(key.stack as usize).map(Vec::as_slice).unwrap_or(&[]);
        let (runtime_frames, frames) = split_runtime_frames(names);
        let entry = merged.entry((key.source, frames.clone())).or_insert_with(|| {
            (ReportStack { source: key.source, frames, runtime_frames, stats: StackStats::default(), threads: 0 }, 0)
        });
        entry.1 += value;
    }
    merged
}

/// The source a reader looks at first: the allocator's view when it was traced, else resident memory,
/// else mapped memory.
///
/// The allocator's view only counts when it sees the target's memory: on a process whose allocator could
/// not be probed (Bun's mimalloc, stripped), the C library's malloc sees a few kilobytes while pages fault
/// in by the hundred megabytes. It leads when it has allocated at least a tenth of what became resident.
pub fn primary_source(stacks: &[ReportStack]) -> Option<Source> {
    primary_source_by(|source| stacks.iter().filter(|s| s.source == source).map(|s| s.stats.allocated_bytes).sum())
}

/// [`primary_source`] from the ledger's totals per source (`Ledger::by_source`), without building the
/// report's stacks.
pub fn primary_source_of_totals(totals: &BTreeMap<Source, StackStats>) -> Option<Source> {
    primary_source_by(|source| totals.get(&source).map_or(0, |stats| stats.allocated_bytes))
}

fn primary_source_by(allocated: impl Fn(Source) -> u64) -> Option<Source> {
    let (malloc, resident) = (allocated(Source::Malloc), allocated(Source::PageFault));
    if malloc > 0 && malloc >= resident / 10 {
        return Some(Source::Malloc);
    }
    [Source::PageFault, Source::Mmap, Source::Brk, Source::Malloc].into_iter().find(|source| allocated(*source) > 0)
}

/// Splits innermost-first names into (runtime frames, the rest), both root first. The innermost frames
/// that belong to the C runtime are the syscall wrapper or allocator: the leaf a reader wants is the code
/// that called them. A stack made only of runtime frames keeps them all.
fn split_runtime_frames(innermost_first: &[FrameName]) -> (Vec<Frame>, Vec<Frame>) {
    let runtime = innermost_first.iter().take_while(|f| f.in_runtime).count();
    let runtime = if runtime == innermost_first.len() { 0 } else { runtime };
    let rooted = |frames: &[FrameName]| frames.iter().rev().map(|f| f.name.clone()).collect::<Vec<_>>();
    let frames = if innermost_first.is_empty() {
        vec![Frame::from("[stack unavailable]")]
    } else {
        rooted(&innermost_first[runtime..])
    };
    (rooted(&innermost_first[..runtime]), frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, in_runtime: bool) -> FrameName {
        FrameName { name: name.into(), in_runtime, javascript: false }
    }

    #[test]
    fn innermost_runtime_frames_are_split_off() {
        let names = [frame("__mmap", true), frame("leak", false), frame("__libc_start_call_main", true)];
        let (runtime, frames) = split_runtime_frames(&names);
        assert_eq!(runtime, [Frame::from("__mmap")]);
        assert_eq!(frames, [Frame::from("__libc_start_call_main"), Frame::from("leak")]);
    }

    #[test]
    fn an_all_runtime_stack_is_kept_whole() {
        let names = [frame("__mmap", true), frame("_dl_map_object", true)];
        let (runtime, frames) = split_runtime_frames(&names);
        assert!(runtime.is_empty());
        assert_eq!(frames, [Frame::from("_dl_map_object"), Frame::from("__mmap")]);
    }

    #[test]
    fn an_unknown_stack_is_named_so() {
        assert_eq!(split_runtime_frames(&[]).1, [Frame::from("[stack unavailable]")]);
    }
}
