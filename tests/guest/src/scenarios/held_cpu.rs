//! `held-cpu`: the cloud VM on a host where L0 keeps a CPU from it (held
//! in VMX root with `cpus=1`, or left as the firmware left it with
//! `aps=off`) sends that CPU INIT and start-up IPIs with a trampoline of
//! its own: the CPU must never run it, and the cloud VM goes on.

use crate::check::Checks;
use crate::hv::{apic, l0_alive};
use crate::mb1::{Identity, Info};
use crate::smp;

/// TSC ticks to wait for the CPU after the last start-up IPI (an AP that
/// can start does so within a few million here).
const PATIENCE: u64 = 100_000_000;

pub fn run(mbi: &Info<Identity>) {
    static NAME: &str = "held-cpu";
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);
    if let Err(why) = apic::usable() {
        c.check("apic", false, format_args!("{why}"));
        return c.finish();
    }
    apic::enable();
    let target = if smp::apic_id() == 0 { 1 } else { 0 };
    let Some(page) = smp::trampoline_page(mbi) else {
        c.check(
            "trampoline",
            false,
            format_args!("no free page below 1 MiB"),
        );
        return c.finish();
    };
    let r = smp::start_ap_within(target, page, never_runs, PATIENCE);
    c.check(
        "cpu-not-started",
        r.is_err() && smp::ap_state() == smp::AP_WAITING,
        format_args!("APIC ID {target:#x}, trampoline at {page:#x}: {r:?}"),
    );
    l0_alive(&mut c);
    c.finish();
}

fn never_runs(_: usize) {
    crate::println!("GUEST the held CPU ran the cloud VM's code");
}
