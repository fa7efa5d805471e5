//! The registry under concurrency, as L0's CPUs use it: a CPU serves a
//! user VM's port I/O holding only that VM's cell (`vcpu/com.rs`), while
//! the machine's holder creates, lists, saves and ends VMs. Threads stand
//! for CPUs; a `std` mutex stands for the machine's lock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;

use shadow_devices::{SealKey, VmCell};
use ultracall_abi::VmTag;

use super::*;

const COM1: u16 = 0x3f8;

fn shadow() -> Shadow {
    Shadow::new(Some(SealKey::new(&[9; 32])), |b| {
        b.fill(7);
        true
    })
}

/// VM `i`: a VMCS12 and an EPT root of its own, with its cell.
fn vm_at(sh: &mut Shadow, i: u64) -> (VmId, VmCell) {
    let (vm, cell, _) = sh
        .identify_cell(0x1_0000_0000 + i * 0x1000, Some(0x4000_0000 + i * 0x1000))
        .unwrap();
    (vm, cell)
}

/// What COM1 of the VM in `cell` sent, pulled as the console does.
fn output(cell: &VmCell) -> Vec<u8> {
    let mut v = cell.lock();
    let c = v.device_at(COM1).unwrap().console().unwrap();
    let mut out = vec![0; c.output_pending()];
    let n = c.pull_output(&mut out);
    out.truncate(n);
    out
}

/// A CPU's COM write as `l2_com_io` makes it: under the VM's lock, held
/// (not accepted) while the devices are frozen. Whether it was accepted.
fn com_write(cell: &VmCell, b: u8) -> bool {
    let mut v = cell.lock();
    if v.is_frozen() {
        return false;
    }
    v.io_write(COM1, b);
    true
}

/// Two CPUs each write their VM's bytes through its cell while the
/// machine's holder makes, lists and ends other VMs: every byte arrives,
/// in order, in its own VM and no other.
#[test]
fn two_vms_on_two_cpus_lose_and_mix_nothing() {
    const BYTES: usize = 3000; // below the UART's output ring
    let machine = Mutex::new(shadow());
    let (a, b) = {
        let mut sh = machine.lock().unwrap();
        (vm_at(&mut sh, 0), vm_at(&mut sh, 1))
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for (cell, seed) in [(&a.1, 0u8), (&b.1, 128u8)] {
            s.spawn(move || {
                for i in 0..BYTES {
                    assert!(com_write(cell, seed.wrapping_add((i % 97) as u8)));
                }
            });
        }
        s.spawn(|| {
            let mut i = 2;
            let mut buf = vec![0; 1 << 16];
            while !stop.load(SeqCst) {
                let mut sh = machine.lock().unwrap();
                let (vm, _) = vm_at(&mut sh, i);
                sh.list(&mut buf).unwrap();
                sh.vmclear(0x1_0000_0000 + i * 0x1000, 0);
                sh.expire(1);
                assert!(!sh.devices.contains(&vm));
                i += 1;
            }
        });
        while s_done(&a.1, &b.1, BYTES) {
            std::hint::spin_loop();
        }
        stop.store(true, SeqCst);
    });
    for (cell, seed) in [(&a.1, 0u8), (&b.1, 128u8)] {
        let want: Vec<u8> = (0..BYTES)
            .map(|i| seed.wrapping_add((i % 97) as u8))
            .collect();
        assert_eq!(output(cell), want);
    }
    let sh = machine.lock().unwrap();
    assert_eq!(sh.vm_count(), 2, "the VMs made meanwhile all ended");
}

/// Whether the writers are still going (their VMs hold fewer bytes).
fn s_done(a: &VmCell, b: &VmCell, bytes: usize) -> bool {
    let pending = |c: &VmCell| {
        let mut v = c.lock();
        v.device_at(COM1)
            .unwrap()
            .console()
            .unwrap()
            .output_pending()
    };
    pending(a) < bytes || pending(b) < bytes
}

/// The save's freeze is atomic across CPUs: a CPU writing the VM's COM1
/// while another saves it has every byte it saw accepted in the sealed
/// blob, and none after. Restored elsewhere, the VM's output is exactly
/// the bytes accepted before the freeze.
#[test]
fn no_byte_is_accepted_after_the_seal() {
    const WRITES: usize = 4000; // within the UART's output ring
    let tag = VmTag::new(b"freeze").unwrap();
    for round in 0..20 {
        let machine = Mutex::new(shadow());
        let (vm, cell) = {
            let mut sh = machine.lock().unwrap();
            let (vm, cell) = vm_at(&mut sh, 0);
            sh.register_tag(vm, tag).unwrap();
            (vm, cell)
        };
        let accepted = AtomicUsize::new(0);
        let blob = std::thread::scope(|s| {
            s.spawn(|| {
                let (mut n, mut held) = (0usize, 0);
                // Goes on past the freeze (held bytes must not count),
                // slower once the saver may come, so that the UART's
                // output ring holds every byte.
                for i in 0..WRITES {
                    if com_write(&cell, i as u8) {
                        assert_eq!(held, 0, "a byte accepted after a held one");
                        n += 1;
                        accepted.store(n, SeqCst);
                    } else if held == 100 {
                        break;
                    } else {
                        held += 1;
                    }
                    if n >= 50 * (round + 1) {
                        for _ in 0..2000 {
                            std::hint::spin_loop();
                        }
                    }
                }
            });
            // Save while the writer runs (a different moment each round).
            while accepted.load(SeqCst) < 50 * (round + 1) {
                std::hint::spin_loop();
            }
            let mut sh = machine.lock().unwrap();
            let mut blob = Vec::new();
            sh.save_with(&tag, |b| {
                blob = b.to_vec();
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
            assert!(sh.frozen(vm));
            blob
        });
        let n = accepted.load(SeqCst);
        assert!(n < WRITES, "round {round}: the save came after the writer");
        let mut dst = shadow();
        let (dvm, dcell) = vm_at(&mut dst, 0);
        dst.register_tag(dvm, tag).unwrap();
        dst.restore(&tag, &blob).unwrap();
        let want: Vec<u8> = (0..n).map(|i| i as u8).collect();
        assert_eq!(output(&dcell), want, "round {round}");
    }
}
