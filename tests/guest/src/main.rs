//! The scenario guest image.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod image {
    use test_guest::mb1::{self, Identity, Info};
    use test_guest::{faults, io, println, scenarios, serial};

    boot::multiboot1_header!();

    #[no_mangle]
    extern "C" fn kernel_main(magic: u32, info: u32) -> ! {
        serial::init();
        faults::init();
        let mbi = Info::new(&Identity, info as u64);
        let cmdline = mbi.cmdline();
        println!("guest: started with magic {magic:#x}, command line \"{cmdline}\"");
        match mb1::arg(cmdline, "test") {
            Some(name) => scenarios::run(name, magic, &mbi),
            None => println!("TEST ? FAIL no test=NAME on the command line"),
        }
        io::shutdown()
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        println!("GUEST panic: {}", info);
        println!("TEST {} FAIL panic", test_guest::current_test());
        io::shutdown()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the scenario guest is a bare-metal image: `cargo xtask build` builds it");
    std::process::exit(2);
}
