//! Completes user stacks where frame-pointer unwinding fails: in the C runtime.
//!
//! The kernel walks frame pointers (`bpf_get_stackid`). glibc keeps none: a syscall wrapper with a stack
//! frame (mremap) hides its caller, and a function that uses %rbp as a general register (sbrk) leaves the
//! walk garbage. So the innermost frames that lie in the C runtime are unwound here instead, with their
//! CFI (.eh_frame) over the copy of the top of the user stack the kernel sent, until a frame outside the
//! runtime is reached; from there the frame-pointer chain is valid again and the kernel's frames are used.

use std::{collections::HashMap, path::Path, sync::Arc};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EndianArcSlice, LittleEndian, ParsedEhFrameHdr, RegisterRule,
    UnwindContext, UnwindSection, UnwindTableRow, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment};

use tracer_common::alloc::{BY_FRAME_POINTER, CallerRule, RBP_NOT_SAVED};

use crate::{
    procfs::untrusted::{self, Cap, Origin},
    symbolizer::modules::{ModuleMap, is_runtime_module},
};

type Reader = EndianArcSlice<LittleEndian>;

/// The most of a function's code read to find its calls.
const MAX_FUNCTION_BYTES: u64 = 256 << 10;

/// How deep into the C runtime we unwind before giving up (malloc -> sysmalloc -> sbrk -> brk is 4).
const MAX_RUNTIME_FRAMES: usize = 8;

#[derive(Default)]
pub struct Unwinder {
    tables: HashMap<String, Option<Arc<CfiTable>>>,
    context: UnwindContext<usize>,
}

/// Where, relative to the stack pointer of a frame, its caller's state is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameRule {
    /// CFA = %rsp + this. `None` when the CFA is computed from %rbp (the function keeps a frame pointer).
    cfa_from_sp: Option<i64>,
    /// CFA = %rbp + this, when it is.
    cfa_from_rbp: Option<i64>,
    /// The return address is at CFA + this.
    return_address_from_cfa: i64,
    /// The caller's %rbp was saved at CFA + this, when the function saves it.
    saved_rbp_from_cfa: Option<i64>,
}

impl Unwinder {
    /// The full stack (innermost first) from the kernel's frame-pointer stack and the copy of the top of
    /// the user stack (`window`, starting at `user_sp`; empty when there is none).
    pub fn complete(&mut self, kernel: &[u64], user_sp: u64, window: &[u64], modules: &mut ModuleMap) -> Vec<u64> {
        let Some(&ip) = kernel.first() else { return Vec::new() };
        if user_sp == 0 || window.is_empty() {
            return kernel.to_vec();
        }
        let word_at = |address: i128| -> Option<u64> {
            let offset = address - user_sp as i128;
            (offset >= 0 && offset % 8 == 0).then_some(offset as usize / 8).and_then(|i| window.get(i).copied())
        };

        let mut frames = vec![ip];
        let mut pc = ip;
        let mut sp = user_sp as i128;
        let mut caller_rbp: Option<u64> = None;
        while frames.len() <= MAX_RUNTIME_FRAMES {
            let lookup = if frames.len() == 1 { pc } else { pc.saturating_sub(1) };
            let Some(rule) = self.rule_for(lookup, modules, Modules::RuntimeOnly) else { break };
            let Some(cfa_from_sp) = rule.cfa_from_sp else { break };
            let cfa = sp + cfa_from_sp as i128;
            // A zero return address ends the stack (thread entry points clear it).
            let Some(return_address) = word_at(cfa + rule.return_address_from_cfa as i128).filter(|ra| *ra != 0) else {
                break;
            };
            if let Some(from_cfa) = rule.saved_rbp_from_cfa {
                // The outermost save is the value the first frame outside the runtime had.
                caller_rbp = word_at(cfa + from_cfa as i128);
                if caller_rbp.is_none() {
                    break;
                }
            }
            frames.push(return_address);
            pc = return_address;
            sp = cfa;
            if !modules.lookup(pc).is_some_and(|m| is_runtime_module(m.file_path())) {
                break;
            }
        }
        // The kernel's walk got past the runtime too (by the CFI rules it was taught): its frames agree with
        // ours (where ours read the uretprobe trampoline, it put the allocator call's caller), and go on
        // further than the copy of the stack reaches.
        let agrees = kernel.len() >= frames.len()
            && frames[1..]
                .iter()
                .zip(&kernel[1..])
                .all(|(ours, kernels)| ours == kernels || super::stacks::is_uprobes_page(*ours, modules));
        if frames.len() == 1 || agrees {
            return kernel.to_vec();
        }
        match caller_rbp {
            // %rbp at the syscall still belongs to the first frame that keeps one, the frame we stopped in:
            // the kernel's frame 1 is that frame's return address, and its chain is sound from there.
            None => frames.extend_from_slice(&kernel[1.min(kernel.len())..]),
            // A runtime function used %rbp for something else: the kernel's chain is garbage. Follow the
            // saved frame pointer as far as the copy of the stack reaches.
            Some(mut rbp) => {
                while frames.len() < tracer_common::MAX_STACK_DEPTH {
                    let (Some(next_rbp), Some(return_address)) = (word_at(rbp as i128), word_at(rbp as i128 + 8))
                    else {
                        break;
                    };
                    if return_address == 0 || next_rbp <= rbp {
                        break;
                    }
                    frames.push(return_address);
                    rbp = next_rbp;
                }
            }
        }
        frames
    }

    /// For a call returning to `return_address` (in the C runtime, or in `Modules::Any` file of code): how
    /// to step out of the function that made it, for the kernel to walk past it (see `CALLER_RULES` in
    /// tracer-ebpf's alloc.rs). `None` when the function keeps a frame pointer (a frame-pointer walk is
    /// sound there) or has no usable CFI.
    pub fn caller_rule(&mut self, return_address: u64, modules: &mut ModuleMap, which: Modules) -> Option<CallerRule> {
        let rule = self.rule_for(return_address.checked_sub(1)?, modules, which)?;
        kernel_rule(rule)
    }

    /// For an event (a page fault, a system call) that stopped at instruction `ip`: how to step out of the
    /// function it is in, from the CFI row at that very instruction. `None` as for [`Self::caller_rule`].
    pub fn instruction_rule(&mut self, ip: u64, modules: &mut ModuleMap) -> Option<CallerRule> {
        let rule = self.rule_for(ip, modules, Modules::Any)?;
        kernel_rule(rule)
    }

    /// The return addresses of every call in the function a return address is in (from its CFI's bounds and
    /// its code in the file): a function without frame pointers is learned whole, so that a call from
    /// another place in it, first made in a burst, is walked too. Empty when the function cannot be read.
    pub fn call_sites_beside(&mut self, return_address: u64, modules: &mut ModuleMap) -> Vec<u64> {
        let Some(address) = return_address.checked_sub(1) else { return Vec::new() };
        let Some((path, table, virtual_address)) = self.table_at(address, modules) else { return Vec::new() };
        // The function's code, from the file: its addresses in the target are at the same distance.
        let Some((start, length)) = table.function_bounds(virtual_address) else { return Vec::new() };
        let Some(start_offset) = table.file_offset(start) else { return Vec::new() };
        let Ok(file) = untrusted::open(Path::new(&path), Origin::Target) else { return Vec::new() };
        let mut code = vec![0; length.min(MAX_FUNCTION_BYTES) as usize];
        let read = std::os::unix::fs::FileExt::read_at(&file, &mut code, start_offset).unwrap_or(0);
        code.truncate(read);
        let runtime_start = address - (virtual_address - start);
        calls_in(&code, runtime_start)
    }

    /// The file of code `address` lies in, its CFI table, and `address` in the file's own addresses.
    fn table_at(&mut self, address: u64, modules: &mut ModuleMap) -> Option<(String, Arc<CfiTable>, u64)> {
        let mapping = modules.lookup(address)?;
        if !mapping.executable || !mapping.is_file() {
            return None;
        }
        let path = mapping.file_path().to_string();
        let file_offset = mapping.file_offset_of(address);
        let table = self.tables.entry(path.clone()).or_insert_with_key(|p| CfiTable::load(p).map(Arc::new)).clone()?;
        let virtual_address = table.virtual_address(file_offset)?;
        Some((path, table, virtual_address))
    }

    /// Every call in the file of code `address` lies in whose caller's frame the kernel's walk must step out
    /// of by a rule (its function keeps no frame pointer there): (return address in the target, rule). A
    /// module found without frame pointers is learned whole at once, where learning it a function per stack
    /// would carry a path only one function further each time. Empty when the file's executable code is
    /// larger than `max_code_bytes` (a file built with frame pointers is learned by function instead) or
    /// cannot be read.
    pub fn module_call_sites(
        &mut self,
        address: u64,
        modules: &mut ModuleMap,
        max_code_bytes: u64,
    ) -> Vec<(u64, CallerRule)> {
        let Some((path, table, virtual_address)) = self.table_at(address, modules) else { return Vec::new() };
        // Where the file's addresses are in the target: the same distance for all of its segments.
        let bias = address.wrapping_sub(virtual_address);
        let Some(&(segment_offset, segment_size, segment_address)) =
            table.segments.iter().find(|(_, size, start)| (*start..start + size).contains(&virtual_address))
        else {
            return Vec::new();
        };
        if segment_size > max_code_bytes {
            return Vec::new();
        }
        let Ok(file) = untrusted::open(Path::new(&path), Origin::Target) else { return Vec::new() };
        let mut code = vec![0; segment_size as usize];
        let read = std::os::unix::fs::FileExt::read_at(&file, &mut code, segment_offset).unwrap_or(0);
        code.truncate(read);
        let code_range = segment_address..segment_address + code.len() as u64;
        let mut sites = Vec::new();
        let mut entries = table.eh_frame.entries(&table.bases);
        while let Ok(Some(entry)) = entries.next() {
            let gimli::CieOrFde::Fde(partial) = entry else { continue };
            let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else { continue };
            let (start, end) = (fde.initial_address(), fde.end_address());
            if !code_range.contains(&start) || end > code_range.end || end <= start {
                continue;
            }
            let bytes = &code[(start - segment_address) as usize..(end - segment_address) as usize];
            let calls = calls_in(bytes, start);
            if calls.is_empty() {
                continue;
            }
            // The function's rows in order, and its calls in order: one pass over both.
            let Ok(mut rows) = fde.rows(&table.eh_frame, &table.bases, &mut self.context) else { continue };
            let mut calls = calls.into_iter().peekable();
            while let Ok(Some(row)) = rows.next_row() {
                while let Some(&return_address) = calls.peek() {
                    // The call instruction's own row is the one before its return address.
                    let at = return_address - 1;
                    if at >= row.end_address() {
                        break;
                    }
                    calls.next();
                    if at < row.start_address() {
                        continue;
                    }
                    let Some(frame) = frame_rule(row) else { continue };
                    if let Some(rule) =
                        kernel_rule(frame).or_else(|| frame.is_standard_frame().then_some(BY_FRAME_POINTER))
                    {
                        sites.push((return_address.wrapping_add(bias), rule));
                    }
                }
            }
        }
        sites
    }

    /// The CFI rule at `address`, for code in the C runtime only or in any file.
    fn rule_for(&mut self, address: u64, modules: &mut ModuleMap, which: Modules) -> Option<FrameRule> {
        let mapping = modules.lookup(address)?;
        if !mapping.executable || !mapping.is_file() {
            return None;
        }
        if which == Modules::RuntimeOnly && !is_runtime_module(mapping.file_path()) {
            return None;
        }
        let file_offset = mapping.file_offset_of(address);
        let path = mapping.file_path().to_string();
        let table = self.tables.entry(path).or_insert_with_key(|path| CfiTable::load(path).map(Arc::new)).clone()?;
        table.rule_at(table.virtual_address(file_offset)?, &mut self.context)
    }
}

/// The return address of every call in `code`, which starts at `ip`, decoded up to its first invalid
/// instruction.
fn calls_in(code: &[u8], ip: u64) -> Vec<u64> {
    iced_x86::Decoder::with_ip(64, code, ip, iced_x86::DecoderOptions::NONE)
        .into_iter()
        .take_while(|instruction| !instruction.is_invalid())
        .filter(|instruction| instruction.flow_control() == iced_x86::FlowControl::Call)
        .map(|instruction| instruction.next_ip())
        .collect()
}

/// Where a CFI row puts the caller's state; `None` for a CFA the walk cannot compute.
fn frame_rule(row: &UnwindTableRow<usize>) -> Option<FrameRule> {
    let (cfa_from_sp, cfa_from_rbp) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => (Some(*offset), None),
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => (None, Some(*offset)),
        CfaRule::RegisterAndOffset { .. } => (None, None),
        CfaRule::Expression(_) => return None,
    };
    let return_address_from_cfa = match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(offset)) => offset,
        None | Some(RegisterRule::Undefined) => -8,
        _ => return None,
    };
    let saved_rbp_from_cfa = match row.register(X86_64::RBP) {
        Some(RegisterRule::Offset(offset)) => Some(offset),
        _ => None,
    };
    Some(FrameRule { cfa_from_sp, cfa_from_rbp, return_address_from_cfa, saved_rbp_from_cfa })
}

impl FrameRule {
    /// The frame a frame pointer walks: %rbp points at the caller's saved %rbp, the return address above it.
    fn is_standard_frame(&self) -> bool {
        self.cfa_from_rbp == Some(16) && self.return_address_from_cfa == -8 && self.saved_rbp_from_cfa == Some(-16)
    }
}

/// A CFI row as the kernel's walk steps by it: CFA from the stack pointer, the return address just below it
/// (where a call puts it); `None` for any other row (the CFA from %rbp: a frame-pointer walk is sound there).
fn kernel_rule(rule: FrameRule) -> Option<CallerRule> {
    let cfa_from_sp = i32::try_from(rule.cfa_from_sp?).ok()?;
    if rule.return_address_from_cfa != -8 {
        return None;
    }
    let saved_rbp_from_cfa =
        rule.saved_rbp_from_cfa.map_or(Some(RBP_NOT_SAVED), |offset| i32::try_from(offset).ok())?;
    Some(CallerRule { cfa_from_sp, saved_rbp_from_cfa })
}

/// Whose CFI is read: the C runtime's only, or that of any file of code the target runs (the program's
/// own, when its stacks show it keeps no frame pointers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modules {
    RuntimeOnly,
    Any,
}

/// A file's .eh_frame, ready for lookups.
struct CfiTable {
    eh_frame: EhFrame<Reader>,
    header: ParsedEhFrameHdr<Reader>,
    bases: BaseAddresses,
    /// (file offset, file size, virtual address) of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
}

impl CfiTable {
    fn load(path: &str) -> Option<Self> {
        // The path is the target's (from its maps): a link, a FIFO or a device put there is not read.
        let data = untrusted::read(Path::new(path), Origin::Target, Cap::ELF).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let section = |name: &str| file.section_by_name(name).and_then(|s| Some((s.address(), s.data().ok()?)));
        let (eh_frame_address, eh_frame_data) = section(".eh_frame")?;
        let (header_address, header_data) = section(".eh_frame_hdr")?;
        let text_address = file.section_by_name(".text").map_or(0, |s| s.address());
        let reader = |bytes: &[u8]| Reader::new(Arc::from(bytes), LittleEndian);
        let bases = BaseAddresses::default()
            .set_eh_frame(eh_frame_address)
            .set_eh_frame_hdr(header_address)
            .set_text(text_address);
        let header = EhFrameHdr::from(reader(header_data)).parse(&bases, 8).ok()?;
        let segments = file
            .segments()
            .map(|segment| {
                let (offset, size) = segment.file_range();
                (offset, size, segment.address())
            })
            .collect();
        Some(Self { eh_frame: EhFrame::from(reader(eh_frame_data)), header, bases, segments })
    }

    fn file_offset(&self, virtual_address: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(_, size, address)| (*address..address + size).contains(&virtual_address))
            .map(|(offset, _, address)| virtual_address - address + offset)
    }

    /// (start, length) of the function whose FDE covers `address`.
    fn function_bounds(&self, address: u64) -> Option<(u64, u64)> {
        let table = self.header.table()?;
        let fde = table.fde_for_address(&self.eh_frame, &self.bases, address, EhFrame::cie_from_offset).ok()?;
        Some((fde.initial_address(), fde.len()))
    }

    fn virtual_address(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(offset, size, _)| (*offset..offset + size).contains(&file_offset))
            .map(|(offset, _, address)| file_offset - offset + address)
    }

    fn rule_at(&self, address: u64, context: &mut UnwindContext<usize>) -> Option<FrameRule> {
        let table = self.header.table()?;
        let row = table
            .unwind_info_for_address(&self.eh_frame, &self.bases, context, address, EhFrame::cie_from_offset)
            .ok()?;
        frame_rule(row)
    }
}
