//! VMCS12: the VMCS L1 builds for L2, kept by L0 in software.
//!
//! L1 may only use a VMCS region through VMREAD/VMWRITE (its layout is
//! implementation-specific, SDM 25.2), so L0 keeps the current VMCS12 in
//! its own memory and writes it back into L1's region on VMCLEAR, on
//! VMPTRLD of another VMCS and on VMXOFF, in this format:
//!
//! | offset | content |
//! |---|---|
//! | 0 | revision identifier (bit 31: shadow-VMCS indicator), written by L1 |
//! | 4 | VMX-abort indicator |
//! | 8 | launch state: 1 = launched, anything else = clear |
//! | 12 | format magic "V12\0" |
//! | 16 | the fields, 8 bytes each, in `Field::ALL` order |
//!
//! Everything read back from L1's memory is untrusted: VM entry checks it.

use super::caps::VMCS12_REVISION;
use crate::vmx::fields::{Encoding, Field, FieldType, Width};
use crate::vmx::{Vmcs, VmxError};

pub const FIELDS: usize = Field::ALL.len();
const HEADER: usize = 16;
pub const REGION_BYTES: usize = HEADER + 8 * FIELDS;
const MAGIC: u32 = u32::from_le_bytes(*b"V12\0");

/// Dense key of an encoding: width, type and a 6-bit index.
const fn key(enc: u32) -> usize {
    (((enc >> 13) & 3) << 8 | ((enc >> 10) & 3) << 6 | ((enc >> 1) & 0x3f)) as usize
}

/// Slot of each field in the array, by [`key`]; 0xff = none.
const SLOTS: [u8; 1024] = {
    let mut t = [0xffu8; 1024];
    let mut i = 0;
    while i < FIELDS {
        t[key(Field::ALL[i] as u32)] = i as u8;
        i += 1;
    }
    t
};

const _: () = assert!(FIELDS < 255 && REGION_BYTES <= 4096);

/// Words of a bitset over the slots.
pub const WORDS: usize = FIELDS.div_ceil(64);

/// The bitset of `fields`' slots (for masks over [`Vmcs12::is_dirty`]).
pub const fn slot_mask(fields: &[Field]) -> [u64; WORDS] {
    let mut m = [0u64; WORDS];
    let mut i = 0;
    while i < fields.len() {
        let s = SLOTS[key(fields[i] as u32)] as usize;
        m[s / 64] |= 1 << (s % 64);
        i += 1;
    }
    m
}

/// A field with its place in VMCS12 and its mask resolved at compile
/// time: the lists L0 copies at every exit and entry go through these, so
/// a copy costs a VMREAD/VMWRITE and a load or store (under an emulator
/// every instruction counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub field: Field,
    index: u8,
    mask: u64,
}

impl Slot {
    pub const fn of(f: Field) -> Slot {
        let index = SLOTS[key(f as u32)];
        assert!(index != 0xff, "every table field has a slot");
        Slot {
            field: f,
            index,
            mask: f.mask(),
        }
    }
}

/// [`Slot::of`] each field.
pub const fn slots<const N: usize>(fields: [Field; N]) -> [Slot; N] {
    let mut out = [Slot {
        field: fields[0],
        index: 0,
        mask: 0,
    }; N];
    let mut i = 0;
    while i < N {
        out[i] = Slot::of(fields[i]);
        i += 1;
    }
    out
}

/// The slot of a full (not "high") encoding that L0 supports.
fn slot(enc: u32) -> Option<usize> {
    if enc & 0xffff_9001 != 0 || (enc >> 1) & 0x1ff >= 64 {
        return None;
    }
    match SLOTS[key(enc)] {
        0xff => None,
        s => Some(s as usize),
    }
}

/// VM-instruction error numbers L1 can get from VMREAD/VMWRITE (SDM 31.4).
pub const ERR_UNSUPPORTED_FIELD: u32 = 12;
pub const ERR_READ_ONLY_FIELD: u32 = 13;

#[derive(Clone, PartialEq, Eq)]
pub struct Vmcs12 {
    /// As L1 wrote it at offset 0 of the region.
    pub revision: u32,
    pub abort: u32,
    pub launched: bool,
    fields: [u64; FIELDS],
    /// Fields L1 wrote since VMCS02 last took this VMCS12's values: only
    /// those need writing into VMCS02 at the next entry.
    dirty: [u64; WORDS],
}

impl core::fmt::Debug for Vmcs12 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Vmcs12 {{ revision: {:#x}, launched: {} }}",
            self.revision, self.launched
        )
    }
}

impl Default for Vmcs12 {
    fn default() -> Self {
        Vmcs12 {
            revision: VMCS12_REVISION,
            abort: 0,
            launched: false,
            fields: [0; FIELDS],
            dirty: [u64::MAX; WORDS],
        }
    }
}

impl Vmcs12 {
    /// Parses L1's region. Fields come back as stored; a region L0 never
    /// wrote has garbage fields (as on hardware) and a clear launch state.
    pub fn from_region(b: &[u8; REGION_BYTES]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let ours = u32_at(12) == MAGIC;
        let mut v = Vmcs12 {
            revision: u32_at(0),
            launched: ours && u32_at(8) == 1,
            abort: u32_at(4),
            ..Default::default()
        };
        if ours {
            for (i, f) in v.fields.iter_mut().enumerate() {
                let o = HEADER + 8 * i;
                *f = u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) & Field::ALL[i].mask();
            }
        }
        v
    }

    pub fn to_region(&self) -> [u8; REGION_BYTES] {
        let mut b = [0u8; REGION_BYTES];
        b[0..4].copy_from_slice(&self.revision.to_le_bytes());
        b[4..8].copy_from_slice(&self.abort.to_le_bytes());
        b[8..12].copy_from_slice(&(self.launched as u32).to_le_bytes());
        b[12..16].copy_from_slice(&MAGIC.to_le_bytes());
        for (i, f) in self.fields.iter().enumerate() {
            let o = HEADER + 8 * i;
            b[o..o + 8].copy_from_slice(&f.to_le_bytes());
        }
        b
    }

    /// Whether L1 wrote `f` since [`Vmcs12::clean`].
    pub fn is_dirty(&self, f: Field) -> bool {
        let s = slot(f as u32).expect("every table field has a slot");
        self.dirty[s / 64] & (1 << (s % 64)) != 0
    }

    /// VMCS02 now holds every field: nothing is dirty.
    pub fn clean(&mut self) {
        self.dirty = [0; WORDS];
    }

    /// Everything must be written again (VMCS02 served another VMCS12).
    pub fn make_dirty(&mut self) {
        self.dirty = [u64::MAX; WORDS];
    }

    /// Writes a field as L1 would (marking it dirty), for values L1 wrote
    /// through the shadow VMCS.
    pub fn set_dirty(&mut self, f: Field, v: u64) {
        let s = slot(f as u32).expect("every table field has a slot");
        self.fields[s] = v & f.mask();
        self.dirty[s / 64] |= 1 << (s % 64);
    }

    /// Whether every dirty field is in `mask` (a [`slot_mask`]).
    pub fn dirty_only_in(&self, mask: &[u64; WORDS]) -> bool {
        self.dirty.iter().zip(mask).all(|(d, m)| d & !m == 0)
    }

    /// The dirty fields within `mask`.
    pub fn dirty_in<'a>(&'a self, mask: &'a [u64; WORDS]) -> impl Iterator<Item = Field> + 'a {
        // Visits set bits only: usually a handful of the ~170 fields.
        (0..WORDS).flat_map(move |w| {
            let mut bits = self.dirty[w] & mask[w];
            core::iter::from_fn(move || {
                let b = bits.trailing_zeros() as usize;
                (bits != 0).then(|| {
                    bits &= bits - 1;
                    Field::ALL[w * 64 + b]
                })
            })
        })
    }

    /// Reads a field through its resolved slot.
    #[inline]
    pub fn get_at(&self, s: Slot) -> u64 {
        self.fields[s.index as usize]
    }

    /// Writes a field through its resolved slot (as [`Vmcs12::set`]).
    #[inline]
    pub fn set_at(&mut self, s: Slot, v: u64) {
        self.fields[s.index as usize] = v & s.mask;
    }

    /// As [`Vmcs12::set_dirty`], through the resolved slot.
    #[inline]
    pub fn set_dirty_at(&mut self, s: Slot, v: u64) {
        let i = s.index as usize;
        self.fields[i] = v & s.mask;
        self.dirty[i / 64] |= 1 << (i % 64);
    }

    /// Reads a field (L0's own access).
    pub fn get(&self, f: Field) -> u64 {
        self.fields[slot(f as u32).expect("every table field has a slot")]
    }

    /// The secondary processor-based controls in effect: the field, or 0
    /// when the primary controls do not activate it (SDM 25.6.2).
    pub fn secondary_controls(&self) -> u32 {
        use crate::vmx::caps::primary::ACTIVATE_SECONDARY;
        if self.get(Field::CPU_BASED_VM_EXEC_CONTROL) as u32 & ACTIVATE_SECONDARY != 0 {
            self.get(Field::SECONDARY_VM_EXEC_CONTROL) as u32
        } else {
            0
        }
    }

    /// Writes a field, read-only ones included (L0 filling in exit information).
    pub fn set(&mut self, f: Field, v: u64) {
        self.fields[slot(f as u32).expect("every table field has a slot")] = v & f.mask();
    }

    #[cfg(test)]
    pub fn set_bits_for_test(&mut self, f: Field, bits: u64) {
        let v = self.get(f);
        self.set(f, v | bits);
    }

    #[cfg(test)]
    pub fn clear_bits_for_test(&mut self, f: Field, bits: u64) {
        let v = self.get(f);
        self.set(f, v & !bits);
    }

    /// VMREAD by L1 (SDM 31.3, VMREAD): `long_mode` is whether L1 runs
    /// 64-bit code (operands are 64 bits there, 32 bits otherwise).
    pub fn vmread(&self, enc: u32, long_mode: bool) -> Result<u64, u32> {
        let e = Encoding(enc);
        if !e.is_well_formed() {
            return Err(ERR_UNSUPPORTED_FIELD);
        }
        let full = slot(enc & !1).ok_or(ERR_UNSUPPORTED_FIELD)?;
        let v = self.fields[full];
        let v = if e.is_high() { v >> 32 } else { v };
        Ok(if long_mode { v } else { v & 0xffff_ffff })
    }

    /// VMWRITE by L1; `any_field` is IA32_VMX_MISC[29] as advertised.
    pub fn vmwrite(
        &mut self,
        enc: u32,
        value: u64,
        long_mode: bool,
        any_field: bool,
    ) -> Result<(), u32> {
        let e = Encoding(enc);
        if !e.is_well_formed() {
            return Err(ERR_UNSUPPORTED_FIELD);
        }
        let full = slot(enc & !1).ok_or(ERR_UNSUPPORTED_FIELD)?;
        if e.field_type() == FieldType::ReadOnly && !any_field {
            return Err(ERR_READ_ONLY_FIELD);
        }
        let value = if long_mode {
            value
        } else {
            value & 0xffff_ffff
        };
        let f = Field::ALL[full];
        self.dirty[full / 64] |= 1 << (full % 64);
        self.fields[full] = if e.is_high() {
            (self.fields[full] & 0xffff_ffff) | (value & 0xffff_ffff) << 32
        } else if e.width() == Width::Bits64 && !long_mode {
            // A full write of a 64-bit field outside 64-bit mode sets its low
            // half and clears the high half (SDM VMWRITE: the operand is
            // zero-extended).
            value
        } else {
            value & f.mask()
        };
        Ok(())
    }
}

/// L0 reads and writes VMCS12 through the same trait as hardware VMCSs.
impl Vmcs for Vmcs12 {
    fn read_raw(&self, encoding: u32) -> Result<u64, VmxError> {
        self.vmread(encoding, true).map_err(VmxError::FailValid)
    }
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmxError> {
        self.vmwrite(encoding, value, true, true)
            .map_err(VmxError::FailValid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Field as F;

    #[test]
    fn resolved_slots_are_the_fields() {
        const S: [Slot; 3] = slots([F::GUEST_RIP, F::GUEST_CS_SELECTOR, F::EPT_POINTER]);
        let mut v = Vmcs12::default();
        v.clean();
        v.set_at(S[1], 0x1_2345);
        assert_eq!(v.get(F::GUEST_CS_SELECTOR), 0x2345, "masked to the width");
        v.set(F::GUEST_RIP, 7);
        assert_eq!(v.get_at(S[0]), 7);
        assert!(!v.is_dirty(F::EPT_POINTER));
        v.set_dirty_at(S[2], 0x5000);
        assert!(v.is_dirty(F::EPT_POINTER) && v.get(F::EPT_POINTER) == 0x5000);
    }

    #[test]
    fn every_field_has_its_own_slot() {
        let mut seen = [false; FIELDS];
        for &f in Field::ALL {
            let s = slot(f as u32).unwrap();
            assert!(!seen[s], "{f}");
            seen[s] = true;
        }
        assert_eq!(slot(0x201b), None, "high encodings are not slots");
        assert_eq!(slot(0x6c3e), None);
        assert_eq!(slot(0x0000_8000), None);
    }

    #[test]
    fn vmread_vmwrite_widths() {
        let mut v = Vmcs12::default();
        // 16-bit field keeps 16 bits.
        v.vmwrite(F::GUEST_CS_SELECTOR as u32, 0x1_2345, true, false)
            .unwrap();
        assert_eq!(v.vmread(F::GUEST_CS_SELECTOR as u32, true), Ok(0x2345));
        // 32-bit field.
        v.vmwrite(F::GUEST_CS_LIMIT as u32, 0x1_ffff_ffff, true, false)
            .unwrap();
        assert_eq!(v.get(F::GUEST_CS_LIMIT), 0xffff_ffff);
        // 64-bit field: full and high halves.
        v.vmwrite(F::EPT_POINTER as u32, 0x1234_5678_9abc_def0, true, false)
            .unwrap();
        assert_eq!(v.vmread(F::EPT_POINTER as u32 | 1, true), Ok(0x1234_5678));
        v.vmwrite(F::EPT_POINTER as u32 | 1, 0xaaaa_bbbb_cccc, true, false)
            .unwrap();
        assert_eq!(v.get(F::EPT_POINTER), 0xbbbb_cccc_9abc_def0);
        // Natural width outside 64-bit mode: 32 bits in and out.
        v.vmwrite(F::GUEST_RIP as u32, 0xffff_ffff_8000_1000, false, false)
            .unwrap();
        assert_eq!(v.get(F::GUEST_RIP), 0x8000_1000);
        v.set(F::GUEST_RIP, 0x1_0000_2000);
        assert_eq!(v.vmread(F::GUEST_RIP as u32, false), Ok(0x2000));
        // A 64-bit field written in full from 32-bit code: high half cleared.
        v.vmwrite(F::EPT_POINTER as u32, 0x5000, false, false)
            .unwrap();
        assert_eq!(v.get(F::EPT_POINTER), 0x5000);
    }

    #[test]
    fn vmread_vmwrite_errors() {
        let mut v = Vmcs12::default();
        assert_eq!(v.vmread(0x6c3e, true), Err(ERR_UNSUPPORTED_FIELD));
        assert_eq!(
            v.vmread(F::GUEST_RIP as u32 | 1, true),
            Err(ERR_UNSUPPORTED_FIELD),
            "high of natural"
        );
        assert_eq!(
            v.vmread(0x1_0000 | F::GUEST_RIP as u32, true),
            Err(ERR_UNSUPPORTED_FIELD),
            "reserved bits"
        );
        assert_eq!(
            v.vmwrite(F::VM_EXIT_REASON as u32, 1, true, false),
            Err(ERR_READ_ONLY_FIELD)
        );
        assert_eq!(v.vmwrite(F::VM_EXIT_REASON as u32, 1, true, true), Ok(()));
        assert_eq!(v.get(F::VM_EXIT_REASON), 1);
    }

    #[test]
    fn dirty_tracking() {
        let mut v = Vmcs12::default();
        v.clean();
        assert!(!v.is_dirty(F::GUEST_RIP));
        v.vmwrite(F::GUEST_RIP as u32, 5, true, false).unwrap();
        assert!(v.is_dirty(F::GUEST_RIP) && !v.is_dirty(F::GUEST_RSP));
        v.set(F::GUEST_RSP, 1);
        assert!(!v.is_dirty(F::GUEST_RSP), "L0's own writes mirror VMCS02");
        v.make_dirty();
        assert!(v.is_dirty(F::GUEST_RSP));
    }

    #[test]
    fn region_round_trip() {
        let mut v = Vmcs12 {
            launched: true,
            ..Default::default()
        };
        v.set(F::GUEST_RIP, 0xffff_8000_0000_1234);
        v.set(F::VIRTUAL_PROCESSOR_ID, 7);
        let r = v.to_region();
        let mut back = Vmcs12::from_region(&r);
        assert!(back.is_dirty(F::GUEST_RIP), "a loaded VMCS12 is all dirty");
        back.clean();
        let mut v = v;
        v.clean();
        assert_eq!(back, v);
        // A region L0 never wrote: clear, fields zero, revision as L1 put it.
        let mut fresh = [0u8; REGION_BYTES];
        fresh[0..4].copy_from_slice(&0x8000_4c30u32.to_le_bytes());
        fresh[8] = 1;
        let f = Vmcs12::from_region(&fresh);
        assert_eq!(
            (f.revision, f.launched, f.get(F::GUEST_RIP)),
            (0x8000_4c30, false, 0)
        );
    }

    #[test]
    fn tampered_region_values_are_masked_to_width() {
        let v = Vmcs12::default();
        let mut r = v.to_region();
        let s = slot(F::GUEST_CS_SELECTOR as u32).unwrap();
        r[HEADER + 8 * s..HEADER + 8 * s + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Vmcs12::from_region(&r).get(F::GUEST_CS_SELECTOR), 0xffff);
    }
}
