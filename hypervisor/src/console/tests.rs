//! The console over real shadow devices: sessions, commands, output and
//! input, notices; and the shadow state it follows: devices per VM, the
//! relay's pending edges, save and restore.

use super::*;
use crate::shadow::COM_PORTS;
use shadow_devices::mgmt::{parse_event, parse_frame, Event};
use shadow_devices::seal::SealKey;
use shadow_devices::Error;

/// The registry and the console, as a Machine holds them.
struct Host {
    sh: Shadow,
    con: Console,
}

impl core::ops::Deref for Host {
    type Target = Shadow;
    fn deref(&self) -> &Shadow {
        &self.sh
    }
}

impl core::ops::DerefMut for Host {
    fn deref_mut(&mut self) -> &mut Shadow {
        &mut self.sh
    }
}

impl Host {
    fn feed(&mut self, bytes: &[u8]) -> Frames {
        self.con.feed(&mut self.sh, bytes)
    }
    fn pump(&mut self) -> Frames {
        self.con.pump(&mut self.sh)
    }
    /// A VMCLEAR that ends the VM (its deadline passed).
    fn vmclear(&mut self, vmcs12: u64) -> Frames {
        self.sh.vmclear(vmcs12, 0);
        self.sh.expire(0);
        self.con.notices(&mut self.sh)
    }
}

fn rng(buf: &mut [u8]) -> bool {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = i as u8 ^ 0x5a;
    }
    true
}

fn shadow() -> Host {
    Host {
        sh: Shadow::new(Some(SealKey::new(&[7; 32])), rng),
        con: Console::default(),
    }
}

fn send(s: &mut Host, body: &str) -> Vec<Event> {
    let f = mgmt::frame(format_args!("{body}"));
    s.feed(f.as_bytes())
        .iter()
        .map(|l| parse_event(parse_frame(l).unwrap()).unwrap())
        .collect()
}

fn events(frames: Frames) -> Vec<Event> {
    frames
        .iter()
        .map(|l| parse_event(parse_frame(l).unwrap()).unwrap())
        .collect()
}

/// The guest prints `text` on COM1 the way a driver does: THR writes.
fn print(s: &mut Host, vm: VmId, text: &[u8]) {
    for &b in text {
        s.io(vm, 0x3f8, Some(b));
    }
}

#[test]
fn devices_per_vm_and_console_output() {
    let mut s = shadow();
    let a = s.identify(0x1000, Some(0x10_0000)).unwrap();
    let b = s.identify(0x2000, Some(0x20_0000)).unwrap();
    assert_eq!(events(s.pump()).len(), 2, "two VMs announced");
    print(&mut s, a, b"from a\n");
    print(&mut s, b, b"from b\n");
    let list = send(&mut s, "list");
    assert_eq!(list.len(), 3);
    assert!(matches!(list[2], Event::EndList { count: 2 }));
    assert_eq!(
        send(&mut s, "attach 1"),
        vec![Event::Attached { id: a, port: 0x3f8 }]
    );
    // The backlog arrives at the next pump, and only VM a's.
    assert_eq!(
        events(s.pump()),
        vec![Event::Out {
            id: a,
            port: 0x3f8,
            bytes: b"from a\n".to_vec()
        }]
    );
    print(&mut s, a, b"more");
    assert_eq!(
        events(s.pump()),
        vec![Event::Out {
            id: a,
            port: 0x3f8,
            bytes: b"more".to_vec()
        }]
    );
    assert_eq!(events(s.pump()), vec![]);
}

#[test]
fn operator_input_reaches_the_guest_and_raises_edges() {
    let mut s = shadow();
    let a = s.identify(0x1000, Some(0x10_0000)).unwrap();
    // The guest driver: enable the RX interrupt and OUT2.
    s.io(a, 0x3f9, Some(0x01));
    s.io(a, 0x3fc, Some(0x08));
    send(&mut s, "attach 1 0x3f8");
    assert!(!s.irqs.irq_pending(), "no relay registered yet");
    s.irqs.relay_vector = Some(0xec);
    send(&mut s, &alloc::format!("in {}", mgmt::hex(b"ls\r")));
    assert!(s.irqs.irq_pending());
    let (vmcs, edges, levels) = s.take_irqs().unwrap();
    assert_eq!(
        (vmcs, edges & (1 << 4), levels & (1 << 4)),
        (0x1000, 1 << 4, 1 << 4)
    );
    assert_eq!(s.take_irqs(), None);
    // The guest reads what was typed.
    let got: Vec<u8> = (0..3).map(|_| s.io(a, 0x3f8, None)).collect();
    assert_eq!(got, b"ls\r");
}

#[test]
fn console_errors_are_answered() {
    let mut s = shadow();
    assert_eq!(
        send(&mut s, "attach 9"),
        vec![Event::Error("no such VM".into())]
    );
    assert_eq!(
        send(&mut s, "in 41"),
        vec![Event::Error("not attached".into())]
    );
    assert!(matches!(&send(&mut s, "reboot")[0], Event::Error(_)));
    assert_eq!(send(&mut s, "ping"), vec![Event::Pong]);
    // A damaged frame is reported, not executed.
    let damaged = mgmt::frame(format_args!("list")).replace("list", "lisT");
    assert!(matches!(
        &events(s.feed(damaged.as_bytes()))[0],
        Event::Error(_)
    ));
    // Log text from the other direction is ignored.
    assert!(s.feed(b"L0 INFO  something\n").is_empty());
}

#[test]
fn vm_end_drops_devices_and_detaches() {
    let mut s = shadow();
    let a = s.identify(0x1000, Some(0x10_0000)).unwrap();
    send(&mut s, "attach 1");
    let f = events(s.vmclear(0x1000));
    assert_eq!(
        f,
        vec![
            Event::Gone { id: a },
            Event::Detached {
                id: a,
                port: 0x3f8,
                reason: "the VM ended".into()
            }
        ]
    );
    assert_eq!(s.vm_count(), 0);
    assert!(s.con.sessions.is_empty());
}

/// KVM moves a vCPU to another CPU with a VMCLEAR there and an entry
/// here: its VM, devices and session stay. A VMCLEAR not followed by an
/// entry ends the VM at its deadline; an entry with another VM's EPT12
/// root (the page reused) ends it at once.
#[test]
fn a_moving_vcpu_keeps_its_vm() {
    let mut s = shadow();
    let a = s.identify(0x1000, Some(0x10_0000)).unwrap();
    send(&mut s, "attach 1");
    s.con.notices(&mut s.sh);
    s.sh.vmclear(0x1000, 100);
    s.sh.expire(99);
    s.sh.note_entry(0x1000, Some(0x10_0000 | 0x5e));
    s.sh.expire(1000);
    assert_eq!(s.vm_count(), 1);
    assert!(events(s.con.notices(&mut s.sh)).is_empty());
    assert!(!s.con.sessions.is_empty(), "still attached");
    assert_eq!(s.sh.identify(0x1000, Some(0x10_0000)), Some(a));
    // Freed: the VM ends at the deadline.
    s.sh.vmclear(0x1000, 2000);
    s.sh.expire(1999);
    assert_eq!(s.vm_count(), 1);
    s.sh.expire(2000);
    assert_eq!(s.vm_count(), 0);
    assert!(events(s.con.notices(&mut s.sh)).contains(&Event::Gone { id: a }));
    // Reused by another VM before the deadline: the old one ends now.
    let b = s.identify(0x3000, Some(0x30_0000)).unwrap();
    s.sh.vmclear(0x3000, 5000);
    s.sh.note_entry(0x3000, Some(0x40_0000));
    assert_eq!(s.vm_count(), 0, "VM {b} ended");
    let c = s.sh.identify(0x3000, Some(0x40_0000)).unwrap();
    assert_ne!(c, b);
}

#[test]
fn new_vms_and_tags_are_announced() {
    let mut s = shadow();
    let a = s.identify(0x1000, Some(0x10_0000)).unwrap();
    s.identify(0x1000, Some(0x10_0000)).unwrap();
    let vm = |tag: Option<&str>| Event::Vm {
        id: a,
        tag: tag.map(Into::into),
        frozen: false,
        bytes_in: 0,
        bytes_out: 0,
    };
    assert_eq!(events(s.pump()), vec![vm(None)], "once, at the first exit");
    s.register_tag(a, VmTag::new(b"web-1").unwrap()).unwrap();
    assert_eq!(events(s.pump()), vec![vm(Some("web-1"))]);
    assert_eq!(events(s.pump()), vec![]);
}

#[test]
fn several_ports_followed_input_to_the_last() {
    let mut s = shadow();
    let a = s.identify(0x1000, Some(0x10_0000)).unwrap();
    let b = s.identify(0x2000, Some(0x20_0000)).unwrap();
    s.pump();
    print(&mut s, a, b"A");
    print(&mut s, b, b"B");
    assert_eq!(
        send(&mut s, "attach 1"),
        vec![Event::Attached { id: a, port: 0x3f8 }]
    );
    assert_eq!(
        send(&mut s, "attach 2"),
        vec![Event::Attached { id: b, port: 0x3f8 }]
    );
    let out = events(s.pump());
    assert!(
        out.contains(&Event::Out {
            id: a,
            port: 0x3f8,
            bytes: b"A".to_vec()
        }),
        "{out:?}"
    );
    assert!(
        out.contains(&Event::Out {
            id: b,
            port: 0x3f8,
            bytes: b"B".to_vec()
        }),
        "{out:?}"
    );
    // Input goes to VM b (attached last), until VM a is attached again.
    send(&mut s, &alloc::format!("in {}", mgmt::hex(b"x")));
    assert_eq!(s.io(b, 0x3f8, None), b'x');
    assert_eq!(
        send(&mut s, "attach 1"),
        vec![Event::Attached { id: a, port: 0x3f8 }]
    );
    send(&mut s, &alloc::format!("in {}", mgmt::hex(b"y")));
    assert_eq!(s.io(a, 0x3f8, None), b'y');
    // Detach one, then the rest; a second detach has nothing to do.
    assert_eq!(
        send(&mut s, "detach 1"),
        vec![Event::Detached {
            id: a,
            port: 0x3f8,
            reason: "operator detached".into()
        }]
    );
    assert_eq!(send(&mut s, "in 41"), vec![], "input now goes to VM b");
    assert_eq!(
        send(&mut s, "detach"),
        vec![Event::Detached {
            id: b,
            port: 0x3f8,
            reason: "operator detached".into()
        }]
    );
    assert_eq!(
        send(&mut s, "detach"),
        vec![Event::Error("not attached".into())]
    );
    assert_eq!(
        send(&mut s, "detach 7"),
        vec![Event::Error("no such VM".into())]
    );
    assert_eq!(
        send(&mut s, "attach 1 0x2e8"),
        vec![Event::Attached { id: a, port: 0x2e8 }]
    );
    assert_eq!(
        send(&mut s, "attach 1 0x2e9"),
        vec![Event::Error("no COM port 0x2e9".into())]
    );
}

#[test]
fn followed_ports_are_bounded() {
    let mut s = shadow();
    for i in 0..3 {
        s.identify(0x1000 * (i + 1), Some(0x10_0000 * (i + 1)))
            .unwrap();
    }
    for i in 0..MAX_SESSIONS {
        let (vm, port) = (1 + i / 4, COM_PORTS[i % 4]);
        assert_eq!(
            send(&mut s, &alloc::format!("attach {vm} {port:#x}")),
            vec![Event::Attached {
                id: vm as u64,
                port
            }]
        );
    }
    assert!(matches!(&send(&mut s, "attach 3")[..], [Event::Error(_)]));
    // Re-attaching a followed port only moves the input to it.
    assert_eq!(
        send(&mut s, "attach 1"),
        vec![Event::Attached { id: 1, port: 0x3f8 }]
    );
    assert_eq!(s.con.sessions.len(), MAX_SESSIONS);
}

#[test]
fn save_restore_through_the_registry() {
    let mut s = shadow();
    let a = s.identify(0x1000, Some(0x10_0000)).unwrap();
    let tag = VmTag::new(b"web-1").unwrap();
    s.register_tag(a, tag).unwrap();
    print(&mut s, a, b"before migration");
    let mut blob = Vec::new();
    s.save_with(&tag, |b| {
        blob = b.to_vec();
        Ok::<(), ()>(())
    })
    .unwrap()
    .unwrap();
    assert!(s.frozen(a));
    // The VM ends here; a new one takes the tag on the destination.
    s.vmclear(0x1000);
    let b = s.identify(0x3000, Some(0x30_0000)).unwrap();
    s.register_tag(b, tag).unwrap();
    s.restore(&tag, &blob).unwrap();
    s.pump();
    send(&mut s, "attach web-1");
    assert_eq!(
        events(s.pump()),
        vec![Event::Out {
            id: b,
            port: 0x3f8,
            bytes: b"before migration".to_vec()
        }]
    );
    // The same blob does not open twice.
    assert_eq!(
        s.restore(&tag, &blob).unwrap_err().status(),
        ultracall_abi::Status::BlobReplayed
    );
    // Without a key, nothing is sealed.
    let mut nokey = Shadow::new(None, rng);
    let c = nokey.identify(0x1000, Some(0x10_0000)).unwrap();
    nokey.register_tag(c, tag).unwrap();
    assert_eq!(
        nokey.save_with(&tag, |_| Ok::<(), ()>(())).unwrap_err(),
        Error::NoKey
    );
}

#[test]
fn a_frozen_console_stands_still_until_the_rollback() {
    let mut s = shadow();
    let a = s.identify(0x1000, Some(0x10_0000)).unwrap();
    let tag = VmTag::new(b"web-1").unwrap();
    s.register_tag(a, tag).unwrap();
    s.pump();
    send(&mut s, "attach web-1");
    print(&mut s, a, b"shown once");
    let mut blob = Vec::new();
    s.save_with(&tag, |b| {
        blob = b.to_vec();
        Ok::<(), ()>(())
    })
    .unwrap()
    .unwrap();
    // Frozen: the sealed backlog is not pulled, typed input waits in L0.
    assert_eq!(events(s.pump()), vec![]);
    assert_eq!(
        send(&mut s, &alloc::format!("in {}", mgmt::hex(b"ls\r"))),
        vec![]
    );
    let sealed = s.devices.get(&a).unwrap().save_set();
    assert_eq!(events(s.pump()), vec![]);
    // (The device set unchanged: the rollback restores exactly it.)
    let mut still = s.devices.vm(a).save_set();
    assert_eq!(still, sealed);
    // The migration fails: the manager restores on the source.
    s.restore(&tag, &blob).unwrap();
    s.con.notices(&mut s.sh);
    assert_eq!(
        events(s.pump()),
        vec![Event::Out {
            id: a,
            port: 0x3f8,
            bytes: b"shown once".to_vec()
        }]
    );
    still = s.devices.vm(a).save_set();
    assert_ne!(still, sealed, "the typed input went in after the thaw");
    let got: Vec<u8> = (0..3).map(|_| s.io(a, 0x3f8, None)).collect();
    assert_eq!(got, b"ls\r");
}

/// `list` of 1024 VMs goes out a batch per visit to the line, every VM
/// once and in order, then `end-list 1024`; VMs that end meanwhile are
/// skipped, not listed as gone.
#[test]
fn a_list_of_1024_vms_is_paced() {
    let mut s = shadow();
    for i in 0..1024u64 {
        s.identify(0x1_0000_0000 + i * 0x1000, Some(0x4000_0000 + i * 0x1000))
            .unwrap();
    }
    let _ = s.take_notices();
    let mut got = send(&mut s, "list");
    assert_eq!(got.len(), LIST_BATCH, "the first batch with the answer");
    let mut visits = 1;
    s.vmclear(0x1_0000_0000 + 1000 * 0x1000); // VM 1001 ends
    while !matches!(got.last(), Some(Event::EndList { .. })) {
        got.extend(events(s.pump()));
        visits += 1;
        assert!(visits < 1000, "the list never ends");
    }
    let ids: Vec<u64> = got
        .iter()
        .filter_map(|e| match e {
            Event::Vm { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    let want: Vec<u64> = (1..=1024).filter(|&id| id != 1001).collect();
    assert_eq!(ids, want);
    assert!(matches!(got.last(), Some(Event::EndList { count: 1023 })));
    assert!(visits >= 1024 / LIST_BATCH, "{visits} visits");
    assert!(s.pump().is_empty(), "nothing more once it ended");
}

/// A cloud VM that makes and ends user VMs while the line is full never
/// makes L0 wait: notices go out only with room, one per VM, and VMs that
/// came and went unseen cost nothing; what is left comes out later, in order.
#[test]
fn notices_wait_for_room_coalesced() {
    let mut s = shadow();
    let a = s.identify(0x1000, Some(0x10_0000)).unwrap();
    assert!(
        s.con.notices_within(&mut s.sh, 100).is_empty(),
        "no room, nothing sent"
    );
    // Churn: 2000 VMs appear and end while the line has no room.
    for i in 1..=2000u64 {
        s.identify(0x100_0000 + i * 0x1000, Some(0x4000_0000 + i * 0x1000))
            .unwrap();
        s.sh.vmclear(0x100_0000 + i * 0x1000, 0);
        s.sh.expire(0);
        assert!(s.con.notices_within(&mut s.sh, 0).is_empty());
    }
    let b = s.identify(0x2000, Some(0x20_0000)).unwrap();
    let got = events(s.con.notices_within(&mut s.sh, 1 << 20));
    let ids: Vec<u64> = got
        .iter()
        .map(|e| match e {
            Event::Vm { id, .. } => *id,
            other => panic!("only the two live VMs are told: {other:?}"),
        })
        .collect();
    assert_eq!(ids, [a, b]);
    // Room for one notice at a time: each goes out whole, in order.
    s.sh.vmclear(0x1000, 0);
    s.sh.vmclear(0x2000, 0);
    s.sh.expire(0);
    assert_eq!(
        events(s.con.notices_within(&mut s.sh, 520)),
        [Event::Gone { id: a }]
    );
    assert_eq!(
        events(s.con.notices_within(&mut s.sh, 520)),
        [Event::Gone { id: b }]
    );
    assert!(!s.sh.has_notices());
}
