//! The L0 image: GRUB enters `boot`'s multiboot2 entry, which calls
//! `kernel_main` in 64-bit mode.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
boot::multiboot2_header!();

#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn kernel_main(magic: u32, info: u32) -> ! {
    hypervisor::start::start(magic, info as u64)
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("L0 is a bare-metal image: build it with `cargo xtask build`, boot it with `cargo xtask run`");
    std::process::exit(2);
}
