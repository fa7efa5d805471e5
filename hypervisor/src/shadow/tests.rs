//! The shadow registry at scale: what a VM costs L0's heap at worst, and
//! how a VM beyond the bounds is refused.

use std::sync::atomic::{AtomicUsize, Ordering};

use shadow_devices::registry::JOURNAL_MAX;
use ultracall_abi::VmTag;

use super::interrupts::PiRoute;
use super::ioapic::{IOREGSEL, IOWIN};
use super::limits::{self, Limits, MAX_VMS, VMCS_BYTES, VM_BYTES};
use super::*;
use crate::arch::heap_meter::held;

fn shadow() -> Shadow {
    Shadow::new(None, |b| {
        b.fill(7);
        true
    })
}

const ROUTE: PiRoute = PiRoute {
    desc: 0x9000,
    nv: 0xf2,
    vapic: 0xa000,
};

/// VM `i`: a VMCS12 and an EPT root of its own.
fn vm_at(sh: &mut Shadow, i: u64) -> Option<VmId> {
    sh.identify(0x1_0000_0000 + i * 0x1000, Some(0x4000_0000 + i * 0x1000))
}

/// Makes VM `vm` hold all it can: its restore journal full (the rings
/// are allocated whole with the VM; a VM that writes more than the
/// journal holds drops it), every IOAPIC pin written, a tag, input
/// queued, pending edges, its route.
fn fill_vm(sh: &mut Shadow, vm: VmId, vmcs: u64) {
    for base in COM_PORTS {
        sh.io(vm, base + 1, Some(0x0f)); // IER: every interrupt
        sh.io(vm, base + 4, Some(0x0b)); // MCR: OUT2, RTS, DTR
    }
    for i in 8..JOURNAL_MAX {
        sh.io(vm, COM_PORTS[i % 4], Some(b'x'));
    }
    for base in COM_PORTS {
        let mut v = sh.devices.vm(vm);
        let c = v.device_at(base).unwrap().console().unwrap();
        c.push_input(&[b'i'; shadow_devices::uart16550::INPUT_CAPACITY]);
    }
    for pin in 0..24u32 {
        sh.ioapic_write(vm, IOREGSEL, 0x10 + 2 * pin);
        sh.ioapic_write(vm, IOWIN, 0x30 + pin);
        sh.ioapic_write(vm, IOREGSEL, 0x11 + 2 * pin);
        sh.ioapic_write(vm, IOWIN, 0);
    }
    let tag = alloc::format!("vm-{vm:0>29}");
    sh.register_tag(vm, VmTag::new(tag.as_bytes()).unwrap())
        .unwrap();
    sh.irqs.note_edges(vm, 0x18);
    sh.set_pi_route(vmcs, Some(ROUTE));
}

/// A VM's devices, identity, interrupts and IOAPIC copy at their fullest
/// (with one VMCS12), then each further VMCS12, fit the figures
/// `limits` charges.
#[test]
fn worst_case_vm_fits() {
    let mut sh = shadow();
    // Trees already past their first nodes, as in a running L0.
    for i in 0..8 {
        let vm = vm_at(&mut sh, i).unwrap();
        fill_vm(&mut sh, vm, 0x1_0000_0000 + i * 0x1000);
    }
    let _ = sh.take_notices();
    let before = held();
    let vm = vm_at(&mut sh, 100).unwrap();
    fill_vm(&mut sh, vm, 0x1_0000_0000 + 100 * 0x1000);
    let _ = sh.take_notices();
    let vm_bytes = held() - before;

    let before = held();
    let per = limits::MAX_VMCS_PER_VM as u64;
    for i in 1..per {
        let vmcs = 0x8_0000_0000 + i * 0x1000;
        sh.ids.note_entry(vmcs, Some(0x4000_0000 + 100 * 0x1000));
        sh.set_pi_route(vmcs, Some(ROUTE));
    }
    let vmcs_bytes = (held() - before) / (per as isize - 1);
    eprintln!("one VM at its worst: {vm_bytes} bytes; each further VMCS12: {vmcs_bytes} bytes");
    assert!(vm_bytes <= VM_BYTES as isize, "{vm_bytes} > {VM_BYTES}");
    assert!(
        vmcs_bytes <= VMCS_BYTES as isize,
        "{vmcs_bytes} > {VMCS_BYTES}"
    );
}

static HEAP_FREE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// A VM the bounds or the heap cannot hold gets no devices and changes
/// nothing; known VMs go on; the next VM that fits is admitted.
#[test]
fn a_vm_beyond_the_bounds_is_refused_cleanly() {
    let mut sh = shadow();
    sh.set_limits(Limits { vms: 2, vmcs: 32 }, || {
        HEAP_FREE.load(Ordering::Relaxed)
    });
    let a = vm_at(&mut sh, 0).unwrap();
    let b = vm_at(&mut sh, 1).unwrap();
    let _ = sh.take_notices();
    let state = |sh: &Shadow| {
        (
            sh.ids.len(),
            sh.ids.vmcs_count(),
            sh.devices.len(),
            sh.has_notices(),
        )
    };
    let before = state(&sh);
    for _ in 0..100 {
        assert_eq!(vm_at(&mut sh, 2), None);
    }
    assert_eq!(state(&sh), before);
    assert!(sh.refusing, "logged once");
    assert_eq!((vm_at(&mut sh, 0), vm_at(&mut sh, 1)), (Some(a), Some(b)));
    // The heap, not the count: a VM ends, but too little heap is free.
    sh.vmclear(0x1_0000_0000, 0);
    sh.expire(0);
    let _ = sh.take_notices();
    HEAP_FREE.store(Limits::vm_reserve() - 1, Ordering::Relaxed);
    let before = state(&sh);
    assert_eq!(vm_at(&mut sh, 2), None);
    assert_eq!(state(&sh), before);
    HEAP_FREE.store(Limits::vm_reserve(), Ordering::Relaxed);
    let c = vm_at(&mut sh, 2).unwrap();
    assert!(c > b && !sh.refusing);
    assert_eq!(sh.take_notices(), [Notice::Vm(c)]);
}

/// The bounds L0 derives from its heap (a quarter of `l0_mem`).
#[test]
fn limits_follow_the_heap() {
    let heap = |l0_mem_mib: usize| (l0_mem_mib << 20) / 4;
    let default = Limits::for_heap(heap(32));
    let needed = (1..)
        .find(|&m| Limits::for_heap(heap(m)).vms == MAX_VMS)
        .unwrap();
    eprintln!("l0_mem=32M: {default:?}; 1024 VMs from l0_mem={needed}M");
    assert!(default.vms >= 64, "no fewer than before at the default");
    assert_eq!(default.vmcs, default.vms * limits::VMCS_PER_VM_BUDGET);
    assert_eq!(Limits::for_heap(heap(needed)), Limits::MAX);
    assert_eq!(Limits::for_heap(0).vms, 1);
    // What they admit fits in half the heap at every VM's worst.
    for m in [10, 32, 64, needed] {
        let l = Limits::for_heap(heap(m));
        assert!(l.vms * VM_BYTES + l.vmcs * VMCS_BYTES <= heap(m) / 2);
    }
}

/// 1024 VMs fill the registry; the 1025th is refused; an exit's VM and
/// its devices are still found by keyed lookups.
#[test]
fn registry_holds_1024_vms() {
    let mut sh = shadow();
    for i in 0..MAX_VMS as u64 {
        assert_eq!(vm_at(&mut sh, i), Some(i + 1));
    }
    assert_eq!(vm_at(&mut sh, MAX_VMS as u64), None);
    assert_eq!(sh.vm_count(), MAX_VMS);
    let notices = sh.take_notices();
    assert_eq!(notices.len(), MAX_VMS);
    sh.io(700, COM_PORTS[0], Some(b'z'));
    assert_eq!(sh.devices.get(&700).unwrap().device_infos()[0].bytes_out, 1);
}

/// Posted-interrupt routes are kept for at most the VMCS12 bound: an L1
/// entering ever new VMCS12s without VMCLEAR cannot grow them.
#[test]
fn routes_stay_within_the_vmcs12_bound() {
    let mut sh = shadow();
    sh.set_limits(Limits { vms: 2, vmcs: 2 }, || usize::MAX);
    let other = PiRoute { nv: 0xf1, ..ROUTE };
    sh.set_pi_route(0x1000, Some(ROUTE));
    sh.set_pi_route(0x2000, Some(ROUTE));
    sh.set_pi_route(0x3000, Some(ROUTE));
    assert_eq!(sh.irqs.pi_route(0x3000), None, "beyond the bound");
    sh.set_pi_route(0x2000, Some(other));
    assert_eq!(sh.irqs.pi_route(0x2000), Some(other), "known ones update");
    sh.vmclear(0x1000, 0);
    sh.expire(0);
    sh.set_pi_route(0x3000, Some(ROUTE));
    assert_eq!(
        sh.irqs.pi_route(0x3000),
        Some(ROUTE),
        "a VMCLEAR frees room"
    );
}

/// A routing pass tries the edges that arrived since the last one, or all
/// after a route changed: with 1024 VMs' edges waiting for L1's relay, an
/// exit's pass costs nothing for them.
#[test]
fn routing_passes_try_only_new_edges() {
    let mut sh = shadow();
    for vm in 1..=1024 {
        sh.irqs.note_edges(vm, 1 << 4);
    }
    assert_eq!(sh.irqs.edges().len(), 1024, "new: all tried once");
    assert!(!sh.irqs.has_edges() && sh.irqs.edges().is_empty());
    sh.irqs.note_edges(5, 1 << 3);
    assert_eq!(sh.irqs.edges(), [(5, 1 << 3 | 1 << 4)]);
    // The same route again is no change; a new one retries every VM.
    sh.set_pi_route(0x1000, Some(ROUTE));
    assert_eq!(sh.irqs.edges().len(), 1024);
    sh.set_pi_route(0x1000, Some(ROUTE));
    assert!(!sh.irqs.has_edges());
    // Waiting edges are still L1's relay's to take.
    sh.irqs.relay_vector = Some(0x40);
    assert!(sh.irqs.irq_pending());
    assert_eq!(sh.irqs.take_next(), Some((1, 1 << 4)));
}

/// An L1 that makes VMs and vCPUs without end (never VMCLEARing) meets
/// the bounds: 1024 VMs, one of them with 256 VMCS12s, the total bound,
/// and no VM or route beyond; every known VM still answers its exits.
#[test]
fn an_endless_l1_meets_the_bounds() {
    let mut sh = shadow();
    let max = Limits::MAX;
    let eptp = |vm: u64| 0x4000_0000 + vm * 0x1000;
    for i in 0..2 * MAX_VMS as u64 {
        vm_at(&mut sh, i);
    }
    assert_eq!(sh.vm_count(), MAX_VMS);
    // VM 1 runs 256 vCPUs, and more: it keeps its newest 256.
    for cpu in 0..300u64 {
        let vmcs = 0x10_0000_0000 + cpu * 0x1000;
        sh.ids.note_entry(vmcs, Some(eptp(0)));
        sh.set_pi_route(vmcs, Some(ROUTE));
    }
    assert_eq!(sh.ids.vmcs_count(), MAX_VMS - 1 + limits::MAX_VMCS_PER_VM);
    // Every VM adds vCPUs until the total bound holds them all.
    for cpu in 0..40u64 {
        for vm in 0..MAX_VMS as u64 {
            let vmcs = 0x20_0000_0000 + (vm * 64 + cpu) * 0x1000;
            sh.ids.note_entry(vmcs, Some(eptp(vm)));
            sh.set_pi_route(vmcs, Some(ROUTE));
        }
    }
    assert_eq!(sh.ids.vmcs_count(), max.vmcs);
    assert_eq!(sh.vm_count(), MAX_VMS);
    assert_eq!(vm_at(&mut sh, 5000), None);
    for vm in [0, 511, 1023] {
        assert_eq!(vm_at(&mut sh, vm), Some(vm + 1), "by its EPT root");
        assert!(sh.ids.vmcs_of(vm + 1).is_some());
    }
    assert_eq!(sh.irqs.pi_route(0x30_0000_0000), None);
    sh.set_pi_route(0x30_0000_0000, Some(ROUTE));
    assert_eq!(
        sh.irqs.pi_route(0x30_0000_0000),
        None,
        "no route beyond the bound"
    );
}
