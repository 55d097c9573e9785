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

/// Every stack's frames as the reports show them, split off the runtime frames and interned once per
/// report set (see [`Trace::names`]): every view (stacks, growth, suspects, turns) merges stacks by their
/// frame names, and splitting and hashing each stack's names again in each was about a fifth of a
/// snapshot's time in the soak. Stacks with the same frames share a class.
pub struct StackNames {
    /// By stack index: its class, an index into `classes`.
    class_of: Vec<u32>,
    /// (runtime frames, frames), both root first. Class 0: a stack without names.
    classes: Vec<(Vec<Frame>, Vec<Frame>)>,
}

/// A class of stacks with the same frame names (see [`StackNames`]).
pub type NameClass = u32;

impl StackNames {
    /// From the frame names by stack index, innermost first.
    pub fn of(frames: &[Vec<FrameName>]) -> Self {
        let mut classes = vec![split_runtime_frames(&[])];
        let mut index: HashMap<Vec<Frame>, NameClass> = HashMap::from([(classes[0].1.clone(), 0)]);
        let class_of = frames
            .iter()
            .map(|names| {
                let (runtime_frames, frames) = split_runtime_frames(names);
                *index.entry(frames).or_insert_with_key(|frames| {
                    classes.push((runtime_frames, frames.clone()));
                    (classes.len() - 1) as NameClass
                })
            })
            .collect();
        Self { class_of, classes }
    }

    /// The class of a stack; a stack not named (yet) is in class 0 with the unknown ones.
    pub fn class(&self, stack: crate::ledger::StackIx) -> NameClass {
        self.class_of.get(stack as usize).copied().unwrap_or(0)
    }

    /// A class's frames, root first.
    pub fn frames(&self, class: NameClass) -> &[Frame] {
        &self.classes[class as usize].1
    }

    /// A class's runtime frames (of the first stack seen with its frames), root first.
    pub fn runtime_frames(&self, class: NameClass) -> &[Frame] {
        &self.classes[class as usize].0
    }

    fn report_stack(&self, source: Source, class: NameClass) -> ReportStack {
        ReportStack {
            source,
            frames: self.frames(class).to_vec(),
            runtime_frames: self.runtime_frames(class).to_vec(),
            stats: StackStats::default(),
            threads: 0,
        }
    }
}

/// Stacks merged by source and frame names (two call sites in one function are one frame to a reader),
/// sorted by outstanding bytes, largest first (ties: allocated bytes, then frames).
pub fn report_stacks(trace: &Trace) -> Vec<ReportStack> {
    let names = trace.names();
    let mut merged: HashMap<(Source, NameClass), ReportStack> = HashMap::new();
    for (key, stats) in trace.ledger.stats() {
        let class = names.class(key.stack);
        let entry = merged.entry((key.source, class)).or_insert_with(|| names.report_stack(key.source, class));
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
pub fn names_of<'t>(trace: &'t Trace, stack: crate::ledger::StackIx) -> &'t [Frame] {
    let names = trace.names();
    names.frames(names.class(stack))
}

/// Sums per-stack values by what a reader sees: the source and the frame names. Returns, per
/// (source, name class), a report stack (figures left empty) and the summed value.
pub fn merge_by_names(
    trace: &Trace,
    values: impl IntoIterator<Item = (StackKey, u64)>,
) -> HashMap<(Source, NameClass), (ReportStack, u64)> {
    let names = trace.names();
    let mut merged: HashMap<(Source, NameClass), (ReportStack, u64)> = HashMap::new();
    for (key, value) in values {
        let class = names.class(key.stack);
        let entry = merged.entry((key.source, class)).or_insert_with(|| (names.report_stack(key.source, class), 0));
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
    fn stacks_with_the_same_frames_share_a_class_and_unnamed_ones_are_unknown() {
        let frames = vec![
            vec![],
            vec![frame("malloc", true), frame("leak", false), frame("main", false)],
            // Another call site in the same functions: the same frames to a reader.
            vec![frame("malloc", true), frame("leak", false), frame("main", false)],
            vec![frame("__mmap", true), frame("other", false), frame("main", false)],
        ];
        let names = StackNames::of(&frames);
        assert_eq!(names.class(1), names.class(2));
        assert_ne!(names.class(1), names.class(3));
        assert_eq!(names.class(0), 0, "an evicted or unknown stack");
        assert_eq!(names.class(99), 0, "a stack not named yet");
        assert_eq!(names.frames(0), [Frame::from("[stack unavailable]")]);
        assert_eq!(names.frames(names.class(2)), [Frame::from("main"), Frame::from("leak")]);
        assert_eq!(names.runtime_frames(names.class(3)), [Frame::from("__mmap")]);
        // The same as splitting each stack's names on its own.
        for (stack, innermost_first) in frames.iter().enumerate() {
            let (runtime, rooted) = split_runtime_frames(innermost_first);
            let class = names.class(stack as u32);
            assert_eq!((names.runtime_frames(class), names.frames(class)), (runtime.as_slice(), rooted.as_slice()));
        }
    }

    #[test]
    fn an_unknown_stack_is_named_so() {
        assert_eq!(split_runtime_frames(&[]).1, [Frame::from("[stack unavailable]")]);
    }
}
