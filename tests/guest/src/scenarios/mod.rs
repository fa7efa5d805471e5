//! The scenarios, by name.

use crate::mb1::{Identity, Info};

mod boot;
mod ept_guard;
mod held_cpu;
mod l2_probe;
mod nested_basic;
mod nested_bench;
mod nested_entry;
mod nested_ept;
mod nested_exits;
mod nested_vmx_instr;
mod shadow;
mod shadow_bench;
mod shadow_console;
mod shadow_flood;
mod shadow_input;
mod shadow_many;
mod smp_bench;
mod smp_nested;
mod ucall_fuzz;
mod ucall_save_restore;
mod vmx_abort;

pub fn run(name: &str, magic: u32, mbi: &Info<Identity>) {
    crate::hv::force_l2_mode(crate::mb1::arg(mbi.cmdline(), "l2"));
    match name {
        "boot" => boot::run(magic, mbi),
        "ept-guard" => ept_guard::run(mbi),
        "held-cpu" => held_cpu::run(mbi),
        "l2-probes-l0-port" => l2_probe::run(mbi),
        "nested-basic" => nested_basic::run(),
        "nested-bench" => nested_bench::run(),
        "nested-entry-checks" => nested_entry::run(),
        "nested-ept" => nested_ept::run(),
        "nested-exits" => nested_exits::run(),
        "nested-vmx-instr" => nested_vmx_instr::run(),
        "shadow-bench" => shadow_bench::run_scenario(),
        "shadow-console" => shadow_console::run_scenario(),
        "shadow-flood" => shadow_flood::run_scenario(),
        "shadow-input" => shadow_input::run_scenario(),
        "owner-console" => {
            shadow_input::run_owner_scenario(crate::mb1::arg(mbi.cmdline(), "owner-key"))
        }
        "shadow-many" => shadow_many::run_scenario(),
        "smp-bench" => smp_bench::run(mbi),
        "smp-nested" => smp_nested::run(mbi),
        "ultracall-save-restore" => ucall_save_restore::run_scenario(),
        "ultracall-fuzz" => ucall_fuzz::run_scenario(),
        "vmx-abort" => vmx_abort::run(mbi),
        _ => crate::println!("TEST {name} FAIL no such scenario in this guest"),
    }
}
