//! Kernel programs of dispatch-leaktrace. One file per hook family; `maps.rs` declares what they share.
#![no_std]
#![no_main]

mod faults;
mod maps;
mod record;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only exists to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
