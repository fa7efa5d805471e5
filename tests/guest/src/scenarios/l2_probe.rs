//! `l2-probes-l0-port` (L0 only): an L2 probes L0's management UART, whose
//! base the command line gives (`port=0x...`, the `serial=` L0 was booted
//! with), while L1 lets every port through to it (I/O bitmaps all zero).
//! L0's port must look absent, as it does to L1: reads all ones, and the
//! scratch register keeps nothing. Run with the management UART at COM2
//! and `shadow=off` (L2's COM2 is not shadowed: the real UART answered an
//! L2 before L0 kept it), and outside COM1-COM4 (at Bochs's port 0xE9,
//! which reads 0xE9 when it reaches the machine).
//!
//! Natively there is no L0: no -native variant.

use crate::check::Checks;
use crate::hv::fields::*;
use crate::hv::mem::{self, pg};
use crate::hv::vmx::vmwrite;
use crate::hv::{l0_alive, no_exit, start, Hv};
use crate::l2;
use crate::mb1::{Identity, Info};

const CHECKS: &[&str] = &[
    "vmxon",
    "l0-port-given",
    "base-reads-absent",
    "lsr-reads-absent",
    "scratch-keeps-nothing",
];

pub fn run(mbi: &Info<Identity>) {
    static NAME: &str = "l2-probes-l0-port";
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);
    let port = crate::mb1::arg(mbi.cmdline(), "port")
        .and_then(|p| u16::from_str_radix(p.trim_start_matches("0x"), 16).ok());
    c.check(
        "l0-port-given",
        port.is_some(),
        format_args!("port={port:x?} on the command line"),
    );
    if let (Some(hv), Some(port)) = (start(&mut c, CHECKS), port) {
        probe(&mut c, &hv, port);
    }
    l0_alive(&mut c);
    c.finish();
}

/// Every port passes from L2 to the machine as far as L1 is concerned.
fn let_all_ports_through(hv: &Hv) -> bool {
    let (a, b) = (mem::page(pg::IO_A), mem::page(pg::IO_B));
    mem::zero_page(a);
    mem::zero_page(b);
    let _ = vmwrite(IO_BITMAP_A, a);
    let _ = vmwrite(IO_BITMAP_B, b);
    hv.ctl(PROC_CONTROLS, proc::USE_IO_BITMAPS, proc::UNCOND_IO_EXITING)
}

fn probe(c: &mut Checks, hv: &Hv, base: u16) {
    // (check, program, port, value written first)
    let probes = [
        ("base-reads-absent", l2!(l2_in_al_dx), base, None),
        ("lsr-reads-absent", l2!(l2_in_al_dx), base + 5, None),
        (
            "scratch-keeps-nothing",
            l2!(l2_out_in_dx),
            base + 7,
            Some(0x5a),
        ),
    ];
    for (name, rip, port, write) in probes {
        let Some(mut vm) = hv.fresh(c, name, rip) else {
            continue;
        };
        if !let_all_ports_through(hv) {
            c.skip(name, format_args!("I/O bitmaps not offered"));
            continue;
        }
        vm.regs.rdx = port as u64;
        vm.regs.rax = write.unwrap_or(0);
        // IN AL / OUT+IN AL, then the VMCALL: no exit to L1 in between.
        let vmcall = rip + if write.is_some() { 4 } else { 1 };
        let (ran, m) = no_exit(&mut vm, vmcall);
        let read = vm.regs.rax as u8;
        c.check(
            name,
            ran && read == 0xff,
            format_args!("port {port:#x}: L2 read {read:#x}; {}", m.as_str()),
        );
    }
}
