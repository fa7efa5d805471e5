//! The BIOS's memory services (INT 15h E820h, E801h, 88h) answered with
//! the cloud VM's own memory map. L1 owns the firmware, whose answers
//! describe the host: L0's pool as usable RAM. A kernel that asks the BIOS
//! in real mode (Xen does, unless told `no-real-mode`) would place itself
//! in L0's memory and read back L0's scratch page. So before L1 starts, L0
//! takes one KiB from the top of base memory the way an option ROM does
//! (the BIOS data area's base memory size, 0x413, one less), puts a stub
//! there (`vmcall; iret`) and points vector 15h at it. A VMCALL of L1 in
//! real mode at the stub is answered here; any other function goes on to
//! the firmware's handler, as if the vector had never changed.

use alloc::vec::Vec;

use boot::memmap::Range;
use boot::multiboot2::MemoryRegion;

use crate::arch::run::GuestRegs;
use crate::guest_mem::GuestMemory;
use crate::mm::layout::reserve;

/// `vmcall; iret`.
pub const STUB: [u8; 4] = [0x0f, 0x01, 0xc1, 0xcf];
/// The BIOS data area's base memory size in KiB (a word).
pub const BDA_BASE_KIB: u64 = 0x413;
const INT15_VECTOR: u64 = 0x15 * 4;
/// "SMAP", the signature E820h takes in EDX and returns in EAX.
pub const SMAP: u32 = 0x534d_4150;
const CF: u64 = 1;
const MIB: u64 = 1 << 20;

/// Where the stub is and what vector 15h held before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BiosMemory {
    /// The stub's first byte: a real-mode segment's base (KiB-aligned).
    pub stub: u64,
    /// The firmware's handler, as (segment, offset).
    pub firmware: (u16, u16),
    /// L1's memory map, the stub's KiB reserved.
    pub map: Vec<MemoryRegion>,
}

/// Why the services are not offered (no BIOS to hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoBios {
    /// The BIOS data area's base memory size is not a real-mode BIOS's.
    BaseMemory(u16),
    /// Vector 15h is null: no firmware handler (a UEFI host).
    NoVector,
    /// The KiB below base memory is not usable RAM of L1.
    NotRam(u64),
}

impl core::fmt::Display for NoBios {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NoBios::BaseMemory(k) => write!(f, "base memory size {k} KiB is not a BIOS's"),
            NoBios::NoVector => f.write_str("vector 15h is null"),
            NoBios::NotRam(a) => write!(f, "{a:#x} is not usable RAM"),
        }
    }
}

/// The KiB the stub takes: the top KiB of base memory, below both the
/// size the BIOS data area holds (`base_kib`) and the end of the usable
/// RAM the map has there (BIOSes disagree with themselves: Bochs's says
/// 639 KiB and reserves from 636 KiB in its E820 map).
pub fn stub_range(base_kib: u16, map: &[MemoryRegion]) -> Result<Range, NoBios> {
    if !(64..=640).contains(&base_kib) {
        return Err(NoBios::BaseMemory(base_kib));
    }
    let top = u64::from(base_kib) * 1024;
    let end = map
        .iter()
        .filter(|r| r.kind == 1 && r.base < top)
        .map(|r| (r.base + r.len).min(top))
        .max()
        .unwrap_or(0)
        & !0x3ff;
    if end < 64 * 1024 {
        return Err(NoBios::NotRam(top.saturating_sub(1024)));
    }
    Ok(Range::new(end - 1024, end))
}

/// Finds where the stub goes, before anything of L1 is written: `map` is
/// L1's memory map, in which the stub's KiB must be usable RAM. The
/// result's map reserves that KiB: it is the one L1 must be told.
pub fn probe(mem: &impl GuestMemory, map: &[MemoryRegion]) -> Result<BiosMemory, NoBios> {
    let mut w = [0u8; 2];
    mem.read(BDA_BASE_KIB, &mut w)
        .map_err(|_| NoBios::BaseMemory(0))?;
    let stub = stub_range(u16::from_le_bytes(w), map)?;
    let usable = map
        .iter()
        .any(|r| r.kind == 1 && r.base <= stub.start && stub.end <= r.base + r.len);
    if !usable || !mem.is_ram(stub.start, stub.len()) {
        return Err(NoBios::NotRam(stub.start));
    }
    let mut v = [0u8; 4];
    mem.read(INT15_VECTOR, &mut v)
        .map_err(|_| NoBios::NoVector)?;
    let firmware = (
        u16::from_le_bytes([v[2], v[3]]),
        u16::from_le_bytes([v[0], v[1]]),
    );
    if firmware == (0, 0) {
        return Err(NoBios::NoVector);
    }
    Ok(BiosMemory {
        stub: stub.start,
        firmware,
        map: reserve(map, stub),
    })
}

impl BiosMemory {
    /// Puts the stub in place, makes base memory end where it begins and
    /// points vector 15h at it (after L1's RAM was zeroed: the vectors and
    /// the BIOS data area are the firmware's still).
    pub fn install(&self, mem: &mut impl GuestMemory) -> Result<(), NoBios> {
        let kib = (self.stub / 1024) as u16;
        let seg = (self.stub >> 4) as u16;
        mem.write(self.stub, &STUB)
            .and_then(|()| mem.write(BDA_BASE_KIB, &kib.to_le_bytes()))
            .and_then(|()| mem.write(INT15_VECTOR, &[0, 0, seg as u8, (seg >> 8) as u8]))
            .map_err(|_| NoBios::NotRam(self.stub))
    }
}

/// The guest state a call reads and changes: the registers, and the
/// real-mode segment bases and offsets the VMCS holds.
pub struct Call<'a> {
    pub regs: &'a mut GuestRegs,
    pub es_base: u64,
    pub ss_base: u64,
    pub sp: u64,
}

/// What L0 did with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Answered: registers and the stacked flags set; the stub's IRET
    /// returns to the caller.
    Done,
    /// Not a memory service: on to the firmware's handler at
    /// (segment, offset), with the interrupt's frame still on the stack.
    Firmware(u16, u16),
}

impl BiosMemory {
    /// Whether a VMCALL at linear address `rip_linear` in real mode is
    /// the stub's.
    pub fn is_stub(&self, real_mode: bool, rip_linear: u64) -> bool {
        real_mode && rip_linear == self.stub
    }

    /// Answers the INT 15h function in AX/EAX. A guest whose stack or
    /// buffer is not RAM gets the carry flag (as a BIOS that could not do
    /// it) where the flags can be written, and nothing else changes.
    pub fn call(&self, c: &mut Call, mem: &mut impl GuestMemory) -> Answer {
        let r = &mut c.regs.gpr;
        let eax = r[GuestRegs::RAX] as u32;
        let flags_at = c.ss_base + (c.sp & 0xffff) + 4;
        let ok = match (eax, eax as u16, (eax >> 8) as u8) {
            (0xe820, _, _) => {
                let edx = r[GuestRegs::RDX] as u32;
                let ecx = r[GuestRegs::RCX] as u32;
                let index = r[GuestRegs::RBX] as u32;
                match self.e820(index, ecx, edx) {
                    Some((entry, size, next)) => {
                        let at = c.es_base + (r[GuestRegs::RDI] & 0xffff);
                        if mem.write(at, &entry[..size as usize]).is_ok() {
                            set32(&mut r[GuestRegs::RAX], SMAP);
                            set32(&mut r[GuestRegs::RCX], size);
                            set32(&mut r[GuestRegs::RBX], next);
                            true
                        } else {
                            false
                        }
                    }
                    None => false,
                }
            }
            (_, 0xe801, _) => {
                let (low, high) = self.e801();
                for reg in [GuestRegs::RAX, GuestRegs::RCX] {
                    set16(&mut r[reg], low);
                }
                for reg in [GuestRegs::RBX, GuestRegs::RDX] {
                    set16(&mut r[reg], high);
                }
                true
            }
            (_, _, 0x88) => {
                set16(&mut r[GuestRegs::RAX], self.kib_above_1m());
                true
            }
            _ => return Answer::Firmware(self.firmware.0, self.firmware.1),
        };
        if !ok {
            // AH = 86h: function not supported, as a BIOS says it.
            r[GuestRegs::RAX] = (r[GuestRegs::RAX] & !0xff00) | 0x8600;
        }
        let mut f = [0u8; 2];
        if mem.read(flags_at, &mut f).is_ok() {
            let flags = u16::from_le_bytes(f) as u64;
            let flags = if ok { flags & !CF } else { flags | CF };
            let _ = mem.write(flags_at, &(flags as u16).to_le_bytes());
        }
        Answer::Done
    }

    /// E820h: entry `index` of the map (24 bytes when the caller's buffer
    /// takes them: ACPI 3's extended attributes, "enabled"), and the next
    /// index, 0 after the last. None for a bad signature, a buffer under
    /// 20 bytes or an index past the end.
    pub fn e820(&self, index: u32, buf_len: u32, signature: u32) -> Option<([u8; 24], u32, u32)> {
        if signature != SMAP || buf_len < 20 {
            return None;
        }
        let r = self.map.get(index as usize)?;
        let mut e = [0u8; 24];
        e[..8].copy_from_slice(&r.base.to_le_bytes());
        e[8..16].copy_from_slice(&r.len.to_le_bytes());
        e[16..20].copy_from_slice(&r.kind.to_le_bytes());
        e[20..].copy_from_slice(&1u32.to_le_bytes());
        let size = if buf_len >= 24 { 24 } else { 20 };
        let next = if index as usize + 1 < self.map.len() {
            index + 1
        } else {
            0
        };
        Some((e, size, next))
    }

    /// The end of the usable RAM that runs on without a gap from 1 MiB.
    fn contiguous_end(&self) -> u64 {
        let mut end = MIB;
        loop {
            let next = self
                .map
                .iter()
                .filter(|r| r.kind == 1 && r.base <= end && r.base + r.len > end)
                .map(|r| r.base + r.len)
                .max();
            match next {
                Some(e) => end = e,
                None => return end,
            }
        }
    }

    /// E801h: KiB from 1 MiB to 16 MiB, 64 KiB blocks from 16 MiB to 4 GiB.
    pub fn e801(&self) -> (u16, u16) {
        let end = self.contiguous_end();
        let low = (end.min(16 * MIB) - MIB) / 1024;
        let high = (end.min(4096 * MIB).saturating_sub(16 * MIB)) / (64 * 1024);
        (low as u16, high.min(0xffff) as u16)
    }

    /// 88h: KiB from 1 MiB on, at most 0xFFFF.
    pub fn kib_above_1m(&self) -> u16 {
        ((self.contiguous_end() - MIB) / 1024).min(0xffff) as u16
    }
}

fn set32(reg: &mut u64, v: u32) {
    *reg = (*reg & !0xffff_ffff) | u64::from(v);
}

fn set16(reg: &mut u64, v: u16) {
    *reg = (*reg & !0xffff) | u64::from(v);
}

#[cfg(test)]
mod tests;
