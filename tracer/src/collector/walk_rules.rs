//! What the kernel's walk of user stacks learns from the collector: how to step out of functions that keep
//! no frame pointer (their CFI rules at each return address, and at each instruction an event stopped at,
//! in `CALLER_RULES`), judged from the stacks that show the walk stopped in them.

use tracer_common::alloc::{AT_INSTRUCTION, CallerRule};

use super::{Collector, unwind::Modules};
use crate::symbolizer::modules::is_runtime_module;

/// The most executable code of one file learned whole (python3.11: 2.7 MiB, 56,800 calls). 0: off. Off
/// since tests/lifecycle's flood of distinct stacks once went 25 MiB past its budget with it on. Measured
/// again on 2026-12-06 at 16 MiB, it made no difference either way: the flood peaked at 43-73 MiB of its 96
/// with it on and 44-72 with it off, and python3.11's page-fault bytes under `__libc_start_call_main` were
/// 83-91% (on) and 75-95% (off) in 1-s runs, 99.4-99.6% and 99.3-99.6% in 8-s runs: a function at a time
/// learns python's paths within the first second. The full test suite passes with it on.
const MAX_MODULE_CODE_BYTES: u64 = 0;

impl Collector {
    /// A new caller in the C runtime (libstdc++'s `std::string` constructor, libc's `strdup`) keeps no frame
    /// pointer: the kernel's walk stops in it or reads data. Its CFI rule goes to the kernel, which walks
    /// past it from then on (the calls before are under the short stack). Each caller is judged once.
    pub(super) fn teach_kernel_the_caller(&mut self, caller: u64) {
        if caller == 0 || !self.callers_judged.insert(caller) {
            return;
        }
        if let Some(rule) = self.stacks.caller_rule(caller, &mut self.modules, Modules::RuntimeOnly) {
            self.teach_kernel_the_rule(caller, rule);
        }
    }

    /// A stack that ends short of the C runtime's start, in the program's own code: it has code without
    /// frame pointers (built with -fomit-frame-pointer, as most of Debian is), where the walk stopped or
    /// read frames of another function. Each of its return addresses in such code gets its CFI rule in the
    /// kernel, and so does the instruction an event stopped at (its first frame), which from then on walks
    /// every stack (allocator calls', events') by the rules where it has them: the next call or fault on the
    /// same path gets past the function it stopped in, and each such function is learned once.
    pub(super) fn teach_kernel_the_frames(&mut self) {
        for key in self.stacks.take_frames_to_judge() {
            if !self.frames_judged.insert(key) {
                continue;
            }
            let at_instruction = key & AT_INSTRUCTION != 0;
            let address = key & !AT_INSTRUCTION;
            let rule = if at_instruction {
                self.stacks.instruction_rule(address, &mut self.modules)
            } else {
                self.stacks.caller_rule(address, &mut self.modules, Modules::Any)
            };
            let Some(rule) = rule else { continue };
            // The module has code without frame pointers: every call in it whose caller keeps none is a
            // place a walk must step out of. Learned whole, once; a file too large for that (a big program
            // with frame pointers, whose few functions without are met one by one) by function.
            let whole = self.learn_module(address);
            self.teach_kernel_the_frame(key, rule);
            if whole {
                continue;
            }
            // (`call_sites_beside` looks in the function before a return address: an instruction's is one on.)
            let in_function = if at_instruction { address + 1 } else { address };
            for call_site in self.stacks.call_sites_beside(in_function, &mut self.modules) {
                if !self.frames_judged.insert(call_site) {
                    continue;
                }
                if let Some(rule) = self.stacks.caller_rule(call_site, &mut self.modules, Modules::Any) {
                    self.teach_kernel_the_frame(call_site, rule);
                }
            }
        }
    }

    /// Teaches the kernel every call site of the module `address` is in (see
    /// [`super::unwind::Unwinder::module_call_sites`]); whether the module is learned whole (now or before).
    fn learn_module(&mut self, address: u64) -> bool {
        let Some(path) = self.modules.lookup(address).map(|m| m.file_path().to_string()) else { return false };
        if let Some(&whole) = self.modules_learned.get(&path) {
            return whole;
        }
        // The C runtime's few frames at the top of a stack are learned a function at a time: learning libc
        // whole (13,300 calls) cost a flood of distinct stacks 25 MiB of the tracer's memory budget.
        if is_runtime_module(&path) {
            self.modules_learned.insert(path, false);
            return false;
        }
        let sites = self.stacks.module_call_sites(address, &mut self.modules, MAX_MODULE_CODE_BYTES);
        let whole = !sites.is_empty();
        self.modules_learned.insert(path, whole);
        for (return_address, rule) in sites {
            if self.frames_judged.insert(return_address) {
                self.teach_kernel_the_frame(return_address, rule);
            }
        }
        whole
    }

    /// Teaches the kernel a rule. A rule in the program's own code (not the C runtime's) of a module not
    /// learned whole has the kernel look rules up at every frame: a function without frame pointers amid
    /// code with them is met after a frame stepped by its frame pointer, where the walk's chain of rules (see
    /// `Walk::in_rule_chain` in tracer-ebpf's user_stack.rs) has ended. Lookups at every frame of a program
    /// otherwise walked by frame pointers cost it about 15 ns a frame, for nothing.
    fn teach_kernel_the_frame(&mut self, key: u64, rule: CallerRule) {
        if !self.teach_kernel_the_rule(key, rule) || self.walking_by_rules {
            return;
        }
        let Some(path) = self.modules.lookup(key & !AT_INSTRUCTION).map(|m| m.file_path().to_string()) else {
            return;
        };
        let learned_whole = self.modules_learned.get(&path).copied().unwrap_or(false);
        if !learned_whole && !is_runtime_module(&path) {
            self.walking_by_rules = self.maps.walk_by_rules().is_ok();
        }
    }

    /// Whether the kernel's table took the rule.
    fn teach_kernel_the_rule(&mut self, key: u64, rule: CallerRule) -> bool {
        // The rule is looked up only in the mapping it lies in (see `RuledCode`).
        let Some(mapping) = self.modules.lookup(key & !AT_INSTRUCTION).map(|m| (m.start, m.end)) else {
            return false;
        };
        if self.maps.add_caller_rule(key, rule, mapping).is_err() {
            // The table is full: stacks through this function stay as the walk without it gives them
            // (counted).
            self.callers_untaught += 1;
            return false;
        }
        true
    }
}
