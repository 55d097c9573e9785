//! Where in an allocator function its entry uprobe goes.
//!
//! The kernel emulates some probed instructions (push, jumps, calls) and single-steps the others out of
//! line, which costs a second trap: on this machine kind a uprobe on glibc's `free`+0 (`test %rdi,%rdi`)
//! costs about 10 µs a hit, on `free`+9 (`push %rbp`) under 1 µs. A free function that starts by testing
//! its pointer for NULL and branching to a bare return can be probed just past that test: every call with a
//! non-NULL pointer passes there with the pointer still in its register and the stack untouched, and a
//! free(NULL) has nothing to track (the entry program ignores it). Anything else stays at the entry.
//!
//! The instructions are decoded with iced-x86 at attach time, from the file's own bytes.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction, Mnemonic, OpKind, Register,
};
use serde::Serialize;
use std::{os::unix::fs::FileExt, path::Path};

use crate::procfs::untrusted::{self, Origin};

/// Where a probe went, and why, for `probes` in report.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Bytes past the function's entry.
    pub offset: u64,
    /// The instruction probed (AT&T syntax), when the bytes could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    pub reason: String,
}

impl Placement {
    pub fn entry(instruction: Option<String>, reason: impl Into<String>) -> Self {
        Self { offset: 0, instruction, reason: reason.into() }
    }
}

/// How far the null path may go (instructions) before it counts as doing something.
const NULL_PATH_LIMIT: usize = 8;

/// The registers of the first six integer arguments (System V x86-64).
const ARGUMENT_REGISTERS: [Register; 6] =
    [Register::RDI, Register::RSI, Register::RDX, Register::RCX, Register::R8, Register::R9];

/// Places the entry (or return) probe of a function that does not free: past a leading `endbr64` when the
/// kernel emulates the instruction after it. `endbr64` only marks a place indirect branches may land, so
/// passing it changes nothing the probe sees: not the arguments, not the stack (a return probe still finds
/// the return address at the top).
pub fn place(code: &[u8]) -> Placement {
    place_past_landing_pad(&decode(code), None)
}

/// Places the entry probe of a free function whose pointer is argument `pointer_arg`: past a leading null
/// test when its NULL branch returns at once (else as [`place`]). `code` holds the function from its first
/// instruction (the whole function when its size is known; a window otherwise: bytes past its end only make
/// the choice more cautious).
pub fn place_free(code: &[u8], pointer_arg: u8) -> Placement {
    let instructions = decode(code);
    let at_entry = |why: &str| place_past_landing_pad(&instructions, Some(why));
    let Some(&pointer) = ARGUMENT_REGISTERS.get(pointer_arg as usize) else {
        return at_entry("the pointer is not passed in a register");
    };
    let mut leading = instructions.iter().skip(usize::from(starts_with_landing_pad(&instructions)));
    let Some(test) = leading.next().filter(|i| is_null_test(i, pointer)) else {
        return at_entry("it does not start with a null test of the pointer");
    };
    let Some(branch) = leading.next().filter(|i| matches!(i.code(), Code::Je_rel8_64 | Code::Je_rel32_64)) else {
        return at_entry("its null test is not followed by a jump on NULL");
    };
    if !returns_at_once(&instructions, branch.near_branch_target()) {
        return at_entry("its NULL path does more than return");
    }
    let past = branch.next_ip();
    let Some(probed) = instructions.iter().find(|i| i.ip() == past) else {
        return at_entry("the code past its null test could not be decoded");
    };
    if instructions.iter().any(|i| branches_to(i, past)) {
        return at_entry("code inside it jumps to the point past the null test");
    }
    Placement {
        offset: past,
        instruction: Some(text(probed)),
        reason: format!(
            "past the null test `{}; {}`: free(NULL) returns at once and is not tracked, the pointer is still in {}, \
             and the instruction probed is {}",
            text(test),
            text(branch),
            format!("{pointer:?}").to_lowercase(),
            if is_emulated(probed) { "emulated by the kernel" } else { "single-stepped all the same" }
        ),
    }
}

/// The entry, or the instruction after a leading `endbr64` when the kernel emulates that one (it
/// single-steps an `endbr64`: about 10 µs a hit here, against under 1 µs for an emulated push or jump).
/// `no_further`: why a free's probe could not go past a null test.
fn place_past_landing_pad(instructions: &[Instruction], no_further: Option<&str>) -> Placement {
    let because = no_further.map(|why| format!(" ({why})")).unwrap_or_default();
    if starts_with_landing_pad(instructions) {
        if let Some(next) = instructions.get(1).filter(|i| is_emulated(i)) {
            return Placement {
                offset: next.ip(),
                instruction: Some(text(next)),
                reason: format!(
                    "past its endbr64, which the kernel single-steps, to an instruction it emulates{because}"
                ),
            };
        }
    }
    let emulation = match instructions.first() {
        Some(first) if is_emulated(first) => "emulated by the kernel",
        Some(_) => "single-stepped by the kernel",
        None => "not decoded",
    };
    Placement::entry(instructions.first().map(text), format!("at the entry, whose instruction is {emulation}{because}"))
}

fn starts_with_landing_pad(instructions: &[Instruction]) -> bool {
    instructions.first().is_some_and(|i| i.code() == Code::Endbr64)
}

/// Instructions the kernel's x86 uprobes emulate instead of single-stepping: pushing a register, and direct
/// jumps and calls.
fn is_emulated(instruction: &Instruction) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Push => instruction.op0_kind() == OpKind::Register,
        _ => {
            matches!(
                instruction.flow_control(),
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch | FlowControl::Call
            ) && matches!(instruction.op0_kind(), OpKind::NearBranch32 | OpKind::NearBranch64)
        }
    }
}

/// Bytes read when a function's size is unknown.
const UNKNOWN_SIZE_WINDOW: u64 = 4096;
/// The most read of one function.
const MAX_FUNCTION_BYTES: u64 = 1 << 16;

/// The bytes of the function at `file_offset` in `object` (`size` 0: unknown, a window is read). Empty
/// when the file cannot be read: the probe then stays at the entry.
pub fn function_code(object: &Path, file_offset: u64, size: u64) -> Vec<u8> {
    let length = if size == 0 { UNKNOWN_SIZE_WINDOW } else { size.min(MAX_FUNCTION_BYTES) };
    let Ok(file) = untrusted::open(object, Origin::of_target_path(object)) else { return Vec::new() };
    let mut code = vec![0; length as usize];
    let read = file.read_at(&mut code, file_offset).unwrap_or(0);
    code.truncate(read);
    code
}

/// Decodes `code` as 64-bit code starting at address 0, up to the first byte that is not an instruction.
fn decode(code: &[u8]) -> Vec<Instruction> {
    Decoder::with_ip(64, code, 0, DecoderOptions::NONE).into_iter().take_while(|i| !i.is_invalid()).collect()
}

/// `test %reg,%reg` on the whole 64-bit pointer register.
fn is_null_test(instruction: &Instruction, pointer: Register) -> bool {
    instruction.code() == Code::Test_rm64_r64
        && instruction.op0_kind() == OpKind::Register
        && instruction.op0_register() == pointer
        && instruction.op1_register() == pointer
}

/// Whether the path from `target` returns without calling, storing or jumping elsewhere: bare returns,
/// no-ops, setting a return value, and direct jumps within the function.
fn returns_at_once(instructions: &[Instruction], mut target: u64) -> bool {
    for _ in 0..NULL_PATH_LIMIT {
        let Some(instruction) = instructions.iter().find(|i| i.ip() == target) else { return false };
        match instruction.mnemonic() {
            Mnemonic::Ret => return true,
            Mnemonic::Nop | Mnemonic::Endbr64 => target = instruction.next_ip(),
            Mnemonic::Xor | Mnemonic::Mov if sets_return_value(instruction) => target = instruction.next_ip(),
            Mnemonic::Jmp if instruction.op0_kind() == OpKind::NearBranch64 => {
                target = instruction.near_branch_target();
            }
            _ => return false,
        }
    }
    false
}

/// `xor %eax,%eax` or `mov $imm,%eax`/`%rax`: a return value, nothing else.
fn sets_return_value(instruction: &Instruction) -> bool {
    let register = instruction.op0_register();
    if !matches!(register, Register::EAX | Register::RAX) || instruction.op0_kind() != OpKind::Register {
        return false;
    }
    match instruction.mnemonic() {
        Mnemonic::Xor => instruction.op1_kind() == OpKind::Register && instruction.op1_register() == register,
        Mnemonic::Mov => matches!(instruction.op1_kind(), OpKind::Immediate32 | OpKind::Immediate32to64),
        _ => false,
    }
}

/// A direct jump or call to `address`.
fn branches_to(instruction: &Instruction, address: u64) -> bool {
    matches!(
        instruction.flow_control(),
        FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch | FlowControl::Call
    ) && matches!(instruction.op0_kind(), OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64)
        && instruction.near_branch_target() == address
}

/// AT&T syntax; branch targets are offsets from the function's entry (it is decoded at address 0).
fn text(instruction: &Instruction) -> String {
    let mut formatter = GasFormatter::new();
    formatter.options_mut().set_uppercase_hex(false);
    formatter.options_mut().set_rip_relative_addresses(true);
    let mut out = String::new();
    formatter.format(instruction, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc 2.39's free: `test %rdi,%rdi; je ret; push %rbp; lea -0x10(%rdi),%rsi; ...` with the `ret` at +200.
    fn glibc_free() -> Vec<u8> {
        let mut code = vec![0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48, 0x8d, 0x77, 0xf0];
        code.resize(200, 0x90);
        code.push(0xc3);
        code
    }

    #[test]
    fn glibc_free_is_probed_past_its_null_test() {
        let placement = place_free(&glibc_free(), 0);
        assert_eq!(placement.offset, 9);
        assert_eq!(placement.instruction.as_deref(), Some("push %rbp"));
        assert!(placement.reason.contains("test %rdi,%rdi"), "{}", placement.reason);
    }

    #[test]
    fn an_endbr64_before_the_null_test_is_passed_too() {
        let mut code = vec![0xf3, 0x0f, 0x1e, 0xfa];
        code.extend(glibc_free());
        // The je's displacement is relative, so the ret it reaches moved with it.
        assert_eq!(place_free(&code, 0).offset, 13);
    }

    #[test]
    fn a_null_path_that_does_something_keeps_the_entry() {
        // test %rdi,%rdi; je +2; push %rbp; ...; at the target: call (a NULL free that still does work).
        let code = [0x48, 0x85, 0xff, 0x74, 0x01, 0x55, 0xe8, 0x00, 0x00, 0x00, 0x00, 0xc3];
        let placement = place_free(&code, 0);
        assert_eq!(placement.offset, 0);
        assert!(placement.reason.contains("NULL path"), "{}", placement.reason);
    }

    #[test]
    fn a_null_path_setting_a_result_and_jumping_to_ret_counts_as_returning() {
        // test %rdi,%rdi; je L; push %rbp; pop %rbp; L: xor %eax,%eax; jmp R; nop; R: ret
        let code = [0x48, 0x85, 0xff, 0x74, 0x02, 0x55, 0x5d, 0x31, 0xc0, 0xeb, 0x01, 0x90, 0xc3];
        assert_eq!(place_free(&code, 0).offset, 5);
    }

    #[test]
    fn a_test_of_another_register_keeps_the_entry() {
        // test %rsi,%rsi; je ret; push %rbp; ret — the pointer is in %rdi.
        let code = [0x48, 0x85, 0xf6, 0x74, 0x01, 0x55, 0xc3];
        assert_eq!(place_free(&code, 0).offset, 0);
        // The same code is right for a free whose pointer is its second argument.
        assert_eq!(place_free(&code, 1).offset, 5);
    }

    #[test]
    fn a_jump_back_to_the_point_past_the_test_keeps_the_entry() {
        // test %rdi,%rdi; je R; push %rbp; jmp back to the push; R: ret
        let code = [0x48, 0x85, 0xff, 0x74, 0x03, 0x55, 0xeb, 0xfd, 0xc3];
        let placement = place_free(&code, 0);
        assert_eq!(placement.offset, 0);
        assert!(placement.reason.contains("jumps to the point"), "{}", placement.reason);
    }

    #[test]
    fn a_function_without_a_null_test_keeps_the_entry() {
        // push %rbp; mov %rsp,%rbp; ...
        let placement = place_free(&[0x55, 0x48, 0x89, 0xe5, 0xc3], 0);
        assert_eq!(
            placement,
            Placement {
                offset: 0,
                instruction: Some("push %rbp".into()),
                reason:
                    "at the entry, whose instruction is emulated by the kernel (it does not start with a null test \
                     of the pointer)"
                        .into()
            }
        );
        assert_eq!(place_free(&[], 0).offset, 0);
    }

    #[test]
    fn a_landing_pad_before_an_emulated_instruction_is_passed() {
        // libstdc++'s operator delete: endbr64; jmp free@plt.
        let delete = [0xf3, 0x0f, 0x1e, 0xfa, 0xe9, 0x87, 0x21, 0xff, 0xff];
        let placement = place_free(&delete, 0);
        assert_eq!((placement.offset, placement.instruction.as_deref()), (4, Some("jmp 0xffffffffffff2190")));
        assert!(placement.reason.contains("past its endbr64"), "{}", placement.reason);
        // endbr64; push %rbp
        assert_eq!(place(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0xc3]).offset, 4);
    }

    #[test]
    fn a_landing_pad_before_a_single_stepped_instruction_stays() {
        // libstdc++'s operator new: endbr64; test %rdi,%rdi; mov $1,%eax — nothing to gain past the endbr64.
        let new = [0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0xb8, 0x01, 0x00, 0x00, 0x00];
        let placement = place(&new);
        assert_eq!((placement.offset, placement.instruction.as_deref()), (0, Some("endbr64")));
        assert_eq!(placement.reason, "at the entry, whose instruction is single-stepped by the kernel");
    }

    #[test]
    fn jne_to_the_body_keeps_the_entry() {
        // test %rdi,%rdi; jne body; ret; body: push %rbp — the body might be reached from elsewhere too.
        let code = [0x48, 0x85, 0xff, 0x75, 0x01, 0xc3, 0x55, 0xc3];
        assert_eq!(place_free(&code, 0).offset, 0);
    }
}
