use alloc::vec::Vec;

use super::madt::{self, MadtCpu};
use super::*;

/// Physical memory made of a few tables at fixed addresses.
struct Mem(Vec<(u64, Vec<u8>)>);

impl PhysRead for Mem {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        for (a, t) in &self.0 {
            if addr >= *a && addr + buf.len() as u64 <= *a + t.len() as u64 {
                let o = (addr - a) as usize;
                buf.copy_from_slice(&t[o..o + buf.len()]);
                return true;
            }
        }
        false
    }
}

fn fix_checksum(t: &mut [u8], at: usize) {
    t[at] = 0;
    let s = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    t[at] = 0u8.wrapping_sub(s);
}

fn sdt(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut t = Vec::from(&sig[..]);
    t.extend_from_slice(&((HEADER + body.len()) as u32).to_le_bytes());
    t.resize(HEADER, 0);
    t.extend_from_slice(body);
    fix_checksum(&mut t, 9);
    t
}

fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
    let mut e = vec![0, 8, uid, id];
    e.extend_from_slice(&flags.to_le_bytes());
    e
}

fn x2apic(id: u32, flags: u32, uid: u32) -> Vec<u8> {
    let mut e = vec![9, 16, 0, 0];
    e.extend_from_slice(&id.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e.extend_from_slice(&uid.to_le_bytes());
    e
}

fn madt_table(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![0, 0, 0xe0, 0xfe, 1, 0, 0, 0];
    for e in entries {
        body.extend_from_slice(e);
    }
    sdt(b"APIC", &body)
}

fn rsdp_v1(rsdt: u32) -> Vec<u8> {
    let mut r = Vec::from(&b"RSD PTR "[..]);
    r.extend_from_slice(&[0; 7]);
    r.push(0);
    r.extend_from_slice(&rsdt.to_le_bytes());
    fix_checksum(&mut r, 8);
    r
}

fn rsdp_v2(xsdt: u64) -> Vec<u8> {
    let mut r = rsdp_v1(0);
    r[15] = 2;
    fix_checksum(&mut r, 8);
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    fix_checksum(&mut r, 32);
    r
}

fn host(madt: Vec<u8>) -> (Vec<u8>, Mem) {
    let facp = sdt(b"FACP", &[0; 8]);
    let xsdt = sdt(
        b"XSDT",
        &[0x2000u64.to_le_bytes(), 0x3000u64.to_le_bytes()].concat(),
    );
    (
        rsdp_v2(0x1000),
        Mem(vec![(0x1000, xsdt), (0x2000, facp), (0x3000, madt)]),
    )
}

#[test]
fn finds_the_madt_through_the_xsdt_and_the_rsdt() {
    let m = madt_table(&[lapic(0, 0, 1), lapic(1, 2, 1)]);
    let (rsdp, mut mem) = host(m.clone());
    assert_eq!(
        find(&rsdp, &mut mem, *b"APIC").unwrap(),
        Table {
            addr: 0x3000,
            bytes: m.clone()
        }
    );
    let rsdt = sdt(b"RSDT", &[0x3000u32.to_le_bytes()].concat());
    let mut mem = Mem(vec![(0x5000, rsdt), (0x3000, m.clone())]);
    assert_eq!(find(&rsdp_v1(0x5000), &mut mem, *b"APIC").unwrap().bytes, m);
    assert_eq!(
        find(&rsdp_v1(0x5000), &mut mem, *b"HPET"),
        Err(AcpiError::Missing(*b"HPET"))
    );
}

#[test]
fn enabled_cpus_in_madt_order_each_id_once() {
    let m = madt_table(&[
        lapic(0, 0, 1),
        lapic(1, 4, 1),
        lapic(2, 6, 0),                                  // disabled
        lapic(3, 8, 2),                                  // online capable: hot-add, not taken
        vec![1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0], // an IOAPIC
        x2apic(0x1_0000, 1, 7),                          // beyond 8-bit IDs
        x2apic(4, 1, 1),                                 // the same CPU again
    ]);
    assert_eq!(
        madt::cpus(&m).unwrap(),
        vec![
            MadtCpu { apic_id: 0, uid: 0 },
            MadtCpu { apic_id: 4, uid: 1 },
            MadtCpu {
                apic_id: 0x1_0000,
                uid: 7
            },
        ]
    );
}

#[test]
fn cpus_l0_keeps_are_disabled_in_the_madt_with_a_valid_checksum() {
    let mut m = madt_table(&[lapic(0, 0, 1), lapic(1, 2, 1), x2apic(0x300, 1, 2)]);
    assert_eq!(madt::disable(&mut m, &[2, 0x300, 7]), 2);
    assert!(checksum_ok(&m));
    assert_eq!(
        madt::cpus(&m).unwrap(),
        vec![MadtCpu { apic_id: 0, uid: 0 }]
    );
}

#[test]
fn a_thousand_cpus() {
    let entries: Vec<Vec<u8>> = (0..1024).map(|i| x2apic(i * 2, 1, i)).collect();
    let cpus = madt::cpus(&madt_table(&entries)).unwrap();
    assert_eq!(cpus.len(), 1024);
    assert_eq!(cpus[1023].apic_id, 2046);
}

#[test]
fn malformed_tables_are_refused_by_name() {
    let m = madt_table(&[lapic(0, 0, 1)]);
    let (mut rsdp, mut mem) = host(m.clone());
    // RSDP: signature, checksum, too short.
    assert_eq!(
        find(&rsdp[..10], &mut mem, *b"APIC"),
        Err(AcpiError::BadRsdp)
    );
    rsdp[20] ^= 1;
    assert_eq!(find(&rsdp, &mut mem, *b"APIC"), Err(AcpiError::BadRsdp));
    let (rsdp, mut mem) = host(m.clone());
    // A corrupt MADT checksum.
    mem.0[2].1[40] ^= 0x10;
    assert_eq!(
        find(&rsdp, &mut mem, *b"APIC"),
        Err(AcpiError::BadTable(*b"APIC", 0x3000))
    );
    // An XSDT where nothing is.
    let mut mem = Mem(vec![]);
    assert_eq!(
        find(&rsdp, &mut mem, *b"APIC"),
        Err(AcpiError::Unreadable(0x1000))
    );
    // A length far beyond any real table.
    let (rsdp, mut mem) = host(m);
    mem.0[2].1[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        find(&rsdp, &mut mem, *b"APIC"),
        Err(AcpiError::BadTable(*b"APIC", 0x3000))
    );
}

#[test]
fn malformed_entries_never_loop_or_overrun() {
    let mut zero_len = madt_table(&[]);
    zero_len.extend_from_slice(&[0, 0]);
    assert_eq!(
        madt::cpus(&zero_len),
        Err(AcpiError::BadEntry { offset: 44 })
    );
    let mut past_end = madt_table(&[]);
    past_end.extend_from_slice(&[0, 8, 0, 0]);
    assert_eq!(
        madt::cpus(&past_end),
        Err(AcpiError::BadEntry { offset: 44 })
    );
    let short_lapic = madt_table(&[vec![0, 4, 0, 0]]);
    assert_eq!(
        madt::cpus(&short_lapic),
        Err(AcpiError::BadEntry { offset: 44 })
    );
    let mut one_byte = madt_table(&[]);
    one_byte.push(0);
    assert_eq!(
        madt::cpus(&one_byte),
        Err(AcpiError::BadEntry { offset: 44 })
    );
}

#[test]
fn a_hidden_dmar_is_no_longer_found() {
    use super::dmar::{build, hide, parse};
    let d = build::table(38, &[build::drhd(1, 0, 0, 0xfed9_0000)]);
    // The DMAR in the MADT's place (0x3000), as the firmware lists it.
    let (rsdp, mut mem) = host(d);
    let mut t = find(&rsdp, &mut mem, *b"DMAR").unwrap();
    assert_eq!(parse(&t.bytes).unwrap().units.len(), 1);
    hide(&mut t.bytes);
    mem.0[2].1 = t.bytes; // written back where it lies
    assert_eq!(
        find(&rsdp, &mut mem, *b"DMAR"),
        Err(AcpiError::Missing(*b"DMAR")),
        "the cloud VM's ACPI code finds no remapping units"
    );
    assert!(
        find(&rsdp, &mut mem, *b"XMAR").is_ok(),
        "a valid table still"
    );
}

#[test]
fn find_all_gives_every_table_of_a_signature_in_order() {
    let a = sdt(b"SPMI", &[1; 29]);
    let b = sdt(b"SPMI", &[3; 29]);
    let xsdt = sdt(
        b"XSDT",
        &[0x2000u64, 0x3000, 0x4000].map(u64::to_le_bytes).concat(),
    );
    let mut mem = Mem(vec![
        (0x1000, xsdt),
        (0x2000, a.clone()),
        (0x3000, sdt(b"FACP", &[0; 8])),
        (0x4000, b.clone()),
    ]);
    let rsdp = rsdp_v2(0x1000);
    let all = find_all(&rsdp, &mut mem, *b"SPMI").unwrap();
    assert_eq!(
        all.iter().map(|t| (t.addr, &t.bytes)).collect::<Vec<_>>(),
        [(0x2000, &a), (0x4000, &b)]
    );
    assert_eq!(find_all(&rsdp, &mut mem, *b"HPET"), Ok(Vec::new()));
    // `find` stops at the first: an unreadable entry after it is not read.
    mem.0.retain(|(addr, _)| *addr != 0x4000);
    assert_eq!(find(&rsdp, &mut mem, *b"SPMI").unwrap().addr, 0x2000);
    assert_eq!(
        find_all(&rsdp, &mut mem, *b"SPMI"),
        Err(AcpiError::Unreadable(0x4000))
    );
}
