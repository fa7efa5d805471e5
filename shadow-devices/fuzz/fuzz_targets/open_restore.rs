//! Feeds arbitrary bytes to every decoder that sees guest- or
//! migration-manager-controlled data. The first byte picks the target;
//! the property is always the same: no panic, and a rejected input leaves
//! the device untouched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadow_devices::uart16550::UartState;
use shadow_devices::{
    open, seal, ComPort, CounterNonce, EpochLedger, Registry, SealKey, Uart16550,
};
use ultracall_abi::blob::BlobHeader;
use ultracall_abi::list::ListView;
use ultracall_abi::{VmTag, DEVICE_CLASS_DEVICE_SET, DEVICE_CLASS_UART16550A};

fn busy_uart() -> Uart16550 {
    let mut u = ComPort::Com1.uart();
    u.write(2, 0xC7);
    u.write(3, 0x03);
    u.write(4, 0x0B);
    u.write(1, 0x0F);
    u.push_input(b"some typed input that spills past the fifo");
    u.write(0, b'x');
    u
}

fn key() -> SealKey {
    SealKey::new(&[0x42; 32])
}

fn tag() -> VmTag {
    VmTag::new(b"fuzz").expect("valid tag")
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            let mut u = busy_uart();
            let before = u.save_state();
            if u.restore_state(data).is_err() {
                assert_eq!(u.save_state(), before);
            } else {
                // Accepted states must round-trip exactly.
                assert_eq!(u.save_state(), data);
            }
        }
        1 => {
            let _ = open(
                &key(),
                DEVICE_CLASS_UART16550A,
                &tag(),
                &EpochLedger::new(),
                data,
            );
        }
        2 => {
            let mut r: Registry<u8> = Registry::default();
            let vm = r.vm(0);
            let before = vm.save_set();
            if vm.restore_set(data).is_err() {
                assert_eq!(vm.save_set(), before);
            }
        }
        3 => {
            if let Ok(view) = ListView::parse(data) {
                for vm in view.vms() {
                    for _ in vm.devices() {}
                }
            }
            let _ = BlobHeader::decode(data);
        }
        4 => {
            // Authentic blob around fuzzed plaintext: restore must still
            // validate everything inside.
            let mut n = CounterNonce::new(|b: &mut [u8]| {
                b.fill(7);
                true
            });
            let Ok(blob) = seal(&key(), DEVICE_CLASS_DEVICE_SET, &tag(), 1, data, &mut n) else {
                return;
            };
            let mut r: Registry<u8> = Registry::default();
            r.register_tag(0, tag()).expect("fresh registry");
            let before = r.vm(0).save_set();
            let mut ledger = EpochLedger::new();
            if r.restore_sealed(&tag(), &key(), &mut ledger, &blob)
                .is_err()
            {
                assert_eq!(r.vm(0).save_set(), before);
                assert!(ledger.is_empty());
            }
        }
        _ => {
            // Drive the model with (offset, value) pairs; whatever state it
            // reaches must decode.
            let mut u = busy_uart();
            for pair in data.chunks(2) {
                match pair {
                    [op, v] if op & 0x80 != 0 => u.write(op & 7, *v),
                    [op, _] if op & 0x40 != 0 => {
                        let mut buf = [0u8; 64];
                        u.pull_output(&mut buf);
                    }
                    [op, v] if op & 0x20 != 0 => {
                        u.push_input(&[*v]);
                    }
                    [op, _] => {
                        u.read(op & 7);
                    }
                    _ => {}
                }
            }
            let saved = u.save_state();
            assert!(UartState::decode(&saved).is_ok());
        }
    }
});
