use super::*;
use crate::guest_mem::fake::VecMemory;

fn region(base: u64, len: u64, kind: u32) -> MemoryRegion {
    MemoryRegion { base, len, kind }
}

/// Bochs's map as L1 gets it: base memory to the EBDA, the BIOS, RAM
/// from 1 MiB with L0's pool reserved at the top of 512 MiB.
fn l1_map() -> Vec<MemoryRegion> {
    vec![
        region(0, 0x9fc00, 1),
        region(0x9fc00, 0x400, 2),
        region(0xe8000, 0x18000, 2),
        region(0x10_0000, 0x1c00_0000 - 0x10_0000, 1),
        region(0x1c00_0000, 0x400_0000, 2),
        region(0xfffc_0000, 0x4_0000, 2),
    ]
}

/// Low memory with a BIOS: base memory 639 KiB, vector 15h at F000:F859.
fn bios_memory() -> VecMemory {
    let mut m = VecMemory::new(0, 0xa0000);
    m.bytes[0x413..0x415].copy_from_slice(&639u16.to_le_bytes());
    m.bytes[0x54..0x58].copy_from_slice(&[0x59, 0xf8, 0x00, 0xf0]);
    m
}

#[test]
fn the_stub_takes_the_top_kib_of_base_memory_and_vector_15h() {
    let mut m = bios_memory();
    let b = probe(&m, &l1_map()).unwrap();
    assert_eq!(m.bytes, bios_memory().bytes, "the probe writes nothing");
    b.install(&mut m).unwrap();
    assert_eq!(b.stub, 638 * 1024);
    assert_eq!(b.firmware, (0xf000, 0xf859));
    assert_eq!(&m.bytes[638 * 1024..638 * 1024 + 4], &STUB);
    assert_eq!(u16::from_le_bytes([m.bytes[0x413], m.bytes[0x414]]), 638);
    // Vector 15h = 9F80:0000, the stub's first byte.
    assert_eq!(&m.bytes[0x54..0x58], &[0, 0, 0x80, 0x9f]);
    assert_eq!(b.map[0], region(0, 638 * 1024, 1));
    assert_eq!(b.map[1], region(638 * 1024, 1024, 2));
    assert_eq!(b.map[2], region(0x9fc00, 0x400, 2));
    assert!(b.is_stub(true, 638 * 1024) && !b.is_stub(false, 638 * 1024));
    assert!(!b.is_stub(true, 638 * 1024 + 3));
}

#[test]
fn no_bios_no_hook_and_nothing_written() {
    for (kib, vector, why) in [
        (0u16, [0x59, 0xf8, 0, 0xf0], NoBios::BaseMemory(0)),
        (63, [0x59, 0xf8, 0, 0xf0], NoBios::BaseMemory(63)),
        (641, [0x59, 0xf8, 0, 0xf0], NoBios::BaseMemory(641)),
        (639, [0, 0, 0, 0], NoBios::NoVector),
    ] {
        let mut m = bios_memory();
        m.bytes[0x413..0x415].copy_from_slice(&kib.to_le_bytes());
        m.bytes[0x54..0x58].copy_from_slice(&vector);
        assert_eq!(probe(&m, &l1_map()), Err(why));
    }
    // No usable RAM below base memory's top.
    let m = bios_memory();
    let mut map = l1_map();
    map[0] = region(0, 0x8000, 1);
    assert_eq!(probe(&m, &map), Err(NoBios::NotRam(638 * 1024)));
}

#[test]
fn the_stub_goes_below_what_the_map_reserves_when_the_bda_says_more() {
    // Bochs with 1 GiB: the BDA says 639 KiB, the map reserves from 636.
    let mut m = bios_memory();
    let mut map = l1_map();
    map[0] = region(0, 0x9f000, 1);
    map[1] = region(0x9f000, 0x1000, 2);
    let b = probe(&m, &map).unwrap();
    assert_eq!(b.stub, 635 * 1024);
    b.install(&mut m).unwrap();
    assert_eq!(u16::from_le_bytes([m.bytes[0x413], m.bytes[0x414]]), 635);
    assert_eq!(b.map[0], region(0, 635 * 1024, 1));
    assert_eq!(b.map[1], region(635 * 1024, 1024, 2));
    assert_eq!(b.map[2], region(0x9f000, 0x1000, 2));
}

fn hooked() -> (BiosMemory, VecMemory) {
    let mut m = bios_memory();
    let b = probe(&m, &l1_map()).unwrap();
    b.install(&mut m).unwrap();
    (b, m)
}

const SS: u64 = 0x7000;
const SP: u64 = 0xfff0;
const ES: u64 = 0x8000;

/// INT 15h from real mode with ES = 0x800, SS = 0x700 (SP = FFF0h, the
/// INT's frame there with the carry flag set), then the stub's answer.
fn int15(b: &BiosMemory, m: &mut VecMemory, regs: &mut GuestRegs) -> (Answer, u16) {
    m.bytes[(SS + SP + 4) as usize..(SS + SP + 6) as usize]
        .copy_from_slice(&0x0203u16.to_le_bytes());
    let mut c = Call {
        regs,
        es_base: ES,
        ss_base: SS,
        sp: SP,
    };
    let a = b.call(&mut c, m);
    let f = u16::from_le_bytes([
        m.bytes[(SS + SP + 4) as usize],
        m.bytes[(SS + SP + 5) as usize],
    ]);
    (a, f)
}

fn e820_regs(index: u64, ecx: u64, edx: u64, di: u64) -> GuestRegs {
    let mut r = GuestRegs::default();
    r.gpr[GuestRegs::RAX] = 0xe820;
    r.gpr[GuestRegs::RBX] = index;
    r.gpr[GuestRegs::RCX] = ecx;
    r.gpr[GuestRegs::RDX] = edx;
    r.gpr[GuestRegs::RDI] = di;
    r
}

#[test]
fn e820_walks_l1s_map_with_the_stub_reserved() {
    let (b, mut m) = hooked();
    let mut index = 0;
    let mut got = Vec::new();
    loop {
        let mut r = e820_regs(index, 24, SMAP as u64, 0x100);
        let (a, flags) = int15(&b, &mut m, &mut r);
        assert_eq!(a, Answer::Done);
        assert_eq!(flags & 1, 0, "carry clear at entry {index}");
        assert_eq!(r.gpr[GuestRegs::RAX], SMAP as u64);
        assert_eq!(r.gpr[GuestRegs::RCX], 24);
        let at = (ES + 0x100) as usize;
        let e = &m.bytes[at..at + 24];
        let q = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap());
        got.push(region(
            q(0),
            q(8),
            u32::from_le_bytes(e[16..20].try_into().unwrap()),
        ));
        assert_eq!(u32::from_le_bytes(e[20..24].try_into().unwrap()), 1);
        index = r.gpr[GuestRegs::RBX];
        if index == 0 {
            break;
        }
    }
    assert_eq!(got, b.map);
    // The pool is reserved, never usable.
    assert!(got.iter().any(|r| *r == region(0x1c00_0000, 0x400_0000, 2)));
}

#[test]
fn e820_writes_20_bytes_into_a_20_byte_buffer() {
    let (b, mut m) = hooked();
    let at = (ES + 0x200) as usize;
    m.bytes[at + 20..at + 24].copy_from_slice(&[0xaa; 4]);
    let mut r = e820_regs(3, 20, SMAP as u64, 0x200);
    assert_eq!(int15(&b, &mut m, &mut r).0, Answer::Done);
    assert_eq!(r.gpr[GuestRegs::RCX], 20);
    assert_eq!(&m.bytes[at + 20..at + 24], &[0xaa; 4]);
    assert_eq!(r.gpr[GuestRegs::RBX], 4);
}

#[test]
fn e820_refusals_set_carry_and_write_no_entry() {
    let (b, mut m) = hooked();
    let n = b.map.len() as u64;
    for (index, ecx, edx) in [
        (0, 24, 0x1234_5678u64),
        (0, 19, SMAP as u64),
        (n, 24, SMAP as u64),
        (u32::MAX as u64, 24, SMAP as u64),
    ] {
        let at = (ES + 0x300) as usize;
        let before = m.bytes[at..at + 24].to_vec();
        let mut r = e820_regs(index, ecx, edx, 0x300);
        let (a, flags) = int15(&b, &mut m, &mut r);
        assert_eq!(a, Answer::Done);
        assert_eq!(flags & 1, 1, "carry for {index} {ecx} {edx:#x}");
        assert_eq!(r.gpr[GuestRegs::RAX] & 0xff00, 0x8600);
        assert_eq!(m.bytes[at..at + 24], before[..]);
    }
    // A buffer that is not RAM: carry, nothing else.
    let mut r = e820_regs(0, 24, SMAP as u64, 0xffff);
    let mut c = Call {
        regs: &mut r,
        es_base: 0xf_0000,
        ss_base: SS,
        sp: SP,
    };
    assert_eq!(b.call(&mut c, &mut m), Answer::Done);
    assert_eq!(r.gpr[GuestRegs::RBX], 0);
}

#[test]
fn e801_and_88h_count_ram_from_1_mib_to_the_pool() {
    let (b, mut m) = hooked();
    // 1 MiB .. 448 MiB contiguous: 15 MiB below 16 MiB, 432 MiB above.
    assert_eq!(b.e801(), (15 * 1024, 432 * 16));
    let mut r = GuestRegs::default();
    r.gpr[GuestRegs::RAX] = 0xdead_e801;
    let (a, flags) = int15(&b, &mut m, &mut r);
    assert_eq!((a, flags & 1), (Answer::Done, 0));
    assert_eq!(r.gpr[GuestRegs::RAX], 0xdead_0000 | 15 * 1024);
    assert_eq!(r.gpr[GuestRegs::RCX], 15 * 1024);
    assert_eq!(r.gpr[GuestRegs::RBX], 432 * 16);
    assert_eq!(r.gpr[GuestRegs::RDX], 432 * 16);
    let mut r = GuestRegs::default();
    r.gpr[GuestRegs::RAX] = 0x8800;
    int15(&b, &mut m, &mut r);
    assert_eq!(r.gpr[GuestRegs::RAX], 0xffff);
}

#[test]
fn other_functions_go_to_the_firmware_untouched() {
    let (b, mut m) = hooked();
    for ax in [0x2400u64, 0xc000, 0x5300, 0xe980, 0x0000_e821] {
        let mut r = GuestRegs::default();
        r.gpr[GuestRegs::RAX] = ax;
        let before = m.bytes.clone();
        let mut c = Call {
            regs: &mut r,
            es_base: ES,
            ss_base: SS,
            sp: SP,
        };
        assert_eq!(
            b.call(&mut c, &mut m),
            Answer::Firmware(0xf000, 0xf859),
            "{ax:#x}"
        );
        assert_eq!(r.gpr[GuestRegs::RAX], ax);
        assert!(m.bytes == before);
    }
}
