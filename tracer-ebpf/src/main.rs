//! Kernel programs of dispatch-leaktrace. One file per hook family; `maps.rs` declares what they share.
#![no_std]
#![no_main]
// Atomic adds on map values: core's atomic types have no read-modify-write on the BPF target.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod alloc;
mod exits;
mod faults;
mod maps;
mod record;
mod syscalls;
mod user_stack;
mod writes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only exists to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
