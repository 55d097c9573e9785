//! User stacks from the kernel's stack map, completed by the unwinder and interned so that the ledger
//! keys on a small index.

use std::collections::HashMap;

use aya::maps::{MapData, StackTraceMap};

use super::unwind::Unwinder;
use crate::{
    ledger::StackIx,
    symbolizer::{jit_frames::JitFrames, modules::ModuleMap},
};

/// Where an event's stack is: an id in the kernel's stack map, or frames carried in the event itself; and
/// the copy of the top of the user stack taken at the same moment.
pub struct EventStack<'a> {
    /// When the stack was taken (CLOCK_MONOTONIC ns): JIT code is named as it was then.
    pub time_ns: u64,
    pub stack_id: i32,
    pub inline: Option<&'a [u64]>,
    pub user_sp: u64,
    pub stack_top: &'a [u64],
    /// The return address taken at a function's entry: frame 1, which frame-pointer unwinding from the
    /// entry skips.
    pub caller: Option<u64>,
}

/// The stack of events whose stack could not be taken (counted in `stack_errors`).
pub const UNKNOWN_STACK: StackIx = 0;

pub struct StackTable {
    /// Instruction pointers by index, innermost first. Index 0 is [`UNKNOWN_STACK`] (empty).
    stacks: Vec<Box<[u64]>>,
    index: HashMap<Box<[u64]>, StackIx>,
    /// Frames by kernel stack id. Ids are never reused for another stack (no BPF_F_REUSE_STACKID).
    kernel_frames: HashMap<u32, Box<[u64]>>,
    unwinder: Unwinder,
}

impl Default for StackTable {
    fn default() -> Self {
        Self {
            stacks: vec![Box::new([])],
            index: HashMap::new(),
            kernel_frames: HashMap::new(),
            unwinder: Unwinder::default(),
        }
    }
}

impl StackTable {
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn ips(&self, stack: StackIx) -> &[u64] {
        &self.stacks[stack as usize]
    }

    pub fn intern(&mut self, ips: Vec<u64>) -> StackIx {
        if ips.is_empty() {
            return UNKNOWN_STACK;
        }
        let ips = ips.into_boxed_slice();
        if let Some(&ix) = self.index.get(&ips) {
            return ix;
        }
        let ix = self.stacks.len() as StackIx;
        self.stacks.push(ips.clone());
        self.index.insert(ips, ix);
        ix
    }

    /// The interned stack for a kernel stack id (negative: none was taken), completed with the copy of the
    /// top of the user stack taken at the same moment.
    pub fn intern_event_stack(
        &mut self,
        kernel_stacks: &StackTraceMap<MapData>,
        event: &EventStack<'_>,
        modules: &mut ModuleMap,
        jit: &mut JitFrames,
    ) -> StackIx {
        let kernel: &[u64] = match (event.inline, u32::try_from(event.stack_id)) {
            (Some(inline), _) => inline,
            (None, Ok(stack_id)) => match self.kernel_frames.get(&stack_id) {
                Some(frames) => frames,
                None => {
                    let Ok(trace) = kernel_stacks.get(&stack_id, 0) else { return UNKNOWN_STACK };
                    let frames: Box<[u64]> = trace.frames().iter().map(|frame| frame.ip).collect();
                    self.kernel_frames.entry(stack_id).or_insert(frames)
                }
            },
            (None, Err(_)) => return UNKNOWN_STACK,
        };
        let mut ips = self.unwinder.complete(kernel, event.user_sp, event.stack_top, modules);
        // The caller, unless it is the kernel's uretprobe trampoline (a tail call from a probed function
        // finds that in place of the return address).
        let caller = event.caller.filter(|c| {
            *c != 0
                && !ips.is_empty()
                && ips.get(1) != Some(c)
                && modules.lookup(*c).is_none_or(|m| m.pathname != "[uprobes]")
        });
        if let Some(caller) = caller {
            ips.insert(1, caller);
        }
        jit.tag(&mut ips, event.time_ns, modules);
        self.intern(ips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_gives_one_index_per_distinct_stack() {
        let mut table = StackTable::default();
        let a = table.intern(vec![1, 2, 3]);
        let b = table.intern(vec![1, 2, 4]);
        assert_ne!(a, b);
        assert_eq!(table.intern(vec![1, 2, 3]), a);
        assert_eq!(table.intern(vec![]), UNKNOWN_STACK);
        assert_eq!(table.ips(b), &[1, 2, 4]);
    }
}
