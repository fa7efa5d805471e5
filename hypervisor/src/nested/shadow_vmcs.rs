//! VMCS shadowing for L1's VMREAD/VMWRITE (SDM Vol. 3C 25.10, 25.6.15):
//! the fields L1 touches at every exit of its L2 live in a hardware shadow
//! VMCS linked from VMCS01, so L1 reads and writes them without exiting.
//! VMCS12 stays the master copy; L0 copies between the two at the points
//! where either side needs the other's values.

use super::caps::NestedCaps;
use super::vmcs12::{Slot, Vmcs12};
use super::{Level, Nested, VmcsSet};
use crate::vmx::caps::{secondary, Control};
use crate::vmx::{Field as F, Vmcs};

/// Fields L1 reads and writes through the shadow (what an exit handler
/// of a guest hypervisor typically touches).
pub const READ_WRITE: &[F] = &[
    F::GUEST_RIP,
    F::GUEST_RSP,
    F::GUEST_RFLAGS,
    F::GUEST_CR0,
    F::GUEST_CR3,
    F::GUEST_CR4,
    F::GUEST_INTERRUPTIBILITY_INFO,
    F::GUEST_ACTIVITY_STATE,
    F::GUEST_CS_SELECTOR,
    F::GUEST_CS_AR_BYTES,
    F::GUEST_SS_AR_BYTES,
    F::GUEST_CS_BASE,
    F::GUEST_DS_BASE,
    F::GUEST_ES_BASE,
    F::GUEST_FS_BASE,
    F::GUEST_GS_BASE,
    F::GUEST_SS_BASE,
    F::CR0_READ_SHADOW,
    F::CR4_READ_SHADOW,
    F::VM_ENTRY_INTR_INFO_FIELD,
    F::VM_ENTRY_EXCEPTION_ERROR_CODE,
    F::VM_ENTRY_INSTRUCTION_LEN,
    F::TPR_THRESHOLD,
    // KVM reads RVI/SVI after every exit of an L2 with virtual-interrupt
    // delivery and writes them when it injects; it rearms the preemption
    // timer before every entry (its hrtimer for L2's deadline).
    F::GUEST_INTR_STATUS,
    F::VMX_PREEMPTION_TIMER_VALUE,
    // KVM reads the PML index after every exit of its L2 and resets it
    // when it emptied the log; shadowed only where the CPU has the field
    // ([`pml_index_shadowed`]).
    F::GUEST_PML_INDEX,
    // A guest hypervisor's entry code writes its stack pointer before
    // every entry (KVM does when it changed, the test hypervisor always).
    F::HOST_RSP,
];

/// Fields L1 only reads through the shadow (exit information); its
/// VMWRITEs of them still exit, so L0 applies IA32_VMX_MISC[29] as offered.
pub const READ_ONLY: &[F] = &[
    F::VM_EXIT_REASON,
    F::EXIT_QUALIFICATION,
    F::VM_EXIT_INSTRUCTION_LEN,
    F::VMX_INSTRUCTION_INFO,
    F::VM_EXIT_INTR_INFO,
    F::VM_EXIT_INTR_ERROR_CODE,
    F::IDT_VECTORING_INFO_FIELD,
    F::IDT_VECTORING_ERROR_CODE,
    F::GUEST_LINEAR_ADDRESS,
    F::GUEST_PHYSICAL_ADDRESS,
    F::VM_INSTRUCTION_ERROR,
];

/// Whether the PML index is in the shadow: where L1 is offered PML,
/// which L0 does only on a CPU with PML (a VMWRITE of a field the CPU
/// lacks would fail, SDM 31.3).
pub fn pml_index_shadowed(caps: &NestedCaps) -> bool {
    caps.allows(Control::Secondary, secondary::ENABLE_PML)
}

/// Whether `f` is in the shadow on this CPU (`pml_index`: see
/// [`pml_index_shadowed`]).
fn present(f: F, pml_index: bool) -> bool {
    pml_index || f != F::GUEST_PML_INDEX
}

/// The VMREAD and VMWRITE bitmaps: bit n (n = encoding bits 14:0) set
/// means "exit" (SDM 25.6.15). Both halves of a 64-bit field are shadowed.
pub fn bitmaps(pml_index: bool) -> ([u8; 4096], [u8; 4096]) {
    let mut read = [0xffu8; 4096];
    let mut write = [0xffu8; 4096];
    let clear = |m: &mut [u8; 4096], f: F| {
        let enc = f as usize & 0x7fff;
        for e in [enc, enc | 1] {
            if e == enc || f.width() == crate::vmx::fields::Width::Bits64 {
                m[e / 8] &= !(1 << (e % 8));
            }
        }
    };
    for &f in READ_WRITE.iter().filter(|&&f| present(f, pml_index)) {
        clear(&mut read, f);
        clear(&mut write, f);
    }
    for &f in READ_ONLY {
        clear(&mut read, f);
    }
    (read, write)
}

/// Whether L1 can VMREAD `f` without exiting (so L0 keeps the shadow's
/// copy of it current when L0 changes it).
pub fn is_shadowed(f: F, pml_index: bool) -> bool {
    present(f, pml_index) && (READ_WRITE.contains(&f) || READ_ONLY.contains(&f))
}

const SHADOWED_N: usize = READ_WRITE.len() + READ_ONLY.len();

/// Every shadowed field, read-write ones first, with resolved slots (the
/// copies below run at every exit and entry of L2).
const SHADOWED: [Slot; SHADOWED_N] = {
    let mut out = [Slot::of(READ_WRITE[0]); SHADOWED_N];
    let mut i = 0;
    while i < SHADOWED_N {
        out[i] = Slot::of(if i < READ_WRITE.len() {
            READ_WRITE[i]
        } else {
            READ_ONLY[i - READ_WRITE.len()]
        });
        i += 1;
    }
    out
};

/// Writes one field of VMCS12 into the shadow.
pub fn field_to_shadow(
    v12: &Vmcs12,
    sh: &mut impl Vmcs,
    f: F,
    cache: &mut ShadowCache,
    pml_index: bool,
) {
    if !present(f, pml_index) {
        return;
    }
    let v = v12.get(f);
    sh.write(f, v);
    if let Some(i) = SHADOWED.iter().position(|s| s.field == f) {
        cache.0[i] = Some(v);
    }
}

/// What the shadow VMCS holds, so only changed fields are written.
#[derive(Clone, Copy, Debug)]
pub struct ShadowCache([Option<u64>; SHADOWED_N]);

impl Default for ShadowCache {
    fn default() -> Self {
        ShadowCache([None; SHADOWED_N])
    }
}

/// VMCS12 → shadow: everything L1 may read directly that changed since
/// the last copy (`cache` forgets everything when another VMCS12 is linked).
pub fn to_shadow(v12: &Vmcs12, sh: &mut impl Vmcs, cache: &mut ShadowCache, pml_index: bool) {
    for (s, c) in SHADOWED.iter().zip(cache.0.iter_mut()) {
        if !present(s.field, pml_index) {
            continue;
        }
        let v = v12.get_at(*s);
        if *c != Some(v) {
            sh.write(s.field, v);
            *c = Some(v);
        }
    }
}

/// Shadow → VMCS12: what L1 may have written directly; changed fields
/// become dirty for VMCS02 (and the cache learns the shadow's values).
pub fn from_shadow(sh: &impl Vmcs, v12: &mut Vmcs12, cache: &mut ShadowCache, pml_index: bool) {
    for (s, c) in SHADOWED[..READ_WRITE.len()].iter().zip(cache.0.iter_mut()) {
        if !present(s.field, pml_index) {
            continue;
        }
        let v = sh.read(s.field);
        *c = Some(v);
        if v != v12.get_at(*s) {
            v12.set_dirty_at(*s, v);
        }
    }
}

impl Nested {
    /// L1's direct VMWRITEs (through the shadow VMCS) into VMCS12, before
    /// L0 uses or moves VMCS12. VMCS01 is current before and after.
    pub fn sync_from_shadow<S: VmcsSet>(&mut self, vs: &mut S) {
        if self.shadow_linked {
            vs.select(Level::Shadow);
            let pml = pml_index_shadowed(&self.vmx.caps);
            from_shadow(
                vs.current(),
                &mut self.vmx.vmcs12,
                &mut self.shadow_cache,
                pml,
            );
            vs.select(Level::L1);
        }
    }

    /// VMCS12 into the shadow VMCS at `shadow_vmcs` (or the link cut when
    /// L1 has no current VMCS), after L0 changed VMCS12. VMCS01 is current
    /// before and after.
    pub fn sync_to_shadow<S: VmcsSet>(&mut self, vs: &mut S, shadow_vmcs: u64) {
        if !self.shadowing {
            return;
        }
        let linked = self.vmx.current.is_some();
        if linked {
            if self.shadow_holds != self.vmx.current {
                // The shadow holds another VMCS12's values.
                self.shadow_cache = Default::default();
                self.shadow_holds = self.vmx.current;
            }
            vs.select(Level::Shadow);
            let pml = pml_index_shadowed(&self.vmx.caps);
            to_shadow(&self.vmx.vmcs12, vs.current(), &mut self.shadow_cache, pml);
            vs.select(Level::L1);
        }
        if linked != self.shadow_linked {
            let link = if linked { shadow_vmcs } else { u64::MAX };
            vs.current().write(F::VMCS_LINK_POINTER, link);
            self.shadow_linked = linked;
        }
    }

    /// One field of VMCS12 into the shadow VMCS, if it is linked.
    pub fn field_to_shadow<S: VmcsSet>(&mut self, vs: &mut S, f: F) {
        if self.shadow_linked {
            vs.select(Level::Shadow);
            let pml = pml_index_shadowed(&self.vmx.caps);
            field_to_shadow(
                &self.vmx.vmcs12,
                vs.current(),
                f,
                &mut self.shadow_cache,
                pml,
            );
            vs.select(Level::L1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::fake::FakeVmcs;

    #[test]
    fn bitmaps_let_through_exactly_the_shadowed_fields() {
        let (r, w) = bitmaps(true);
        let bit = |m: &[u8; 4096], e: u32| m[(e as usize & 0x7fff) / 8] & (1 << (e % 8)) != 0;
        assert!(!bit(&r, F::GUEST_RIP as u32) && !bit(&w, F::GUEST_RIP as u32));
        assert!(!bit(&r, F::VM_EXIT_REASON as u32) && bit(&w, F::VM_EXIT_REASON as u32));
        assert!(
            !bit(&r, F::GUEST_PHYSICAL_ADDRESS as u32 | 1),
            "the high half of a 64-bit field"
        );
        assert!(bit(&r, F::EPT_POINTER as u32) && bit(&w, F::EPT_POINTER as u32));
        assert!(
            bit(&r, F::GUEST_RIP as u32 | 1),
            "natural-width fields have no high half"
        );
    }

    #[test]
    fn copies_both_ways_and_marks_changes_dirty() {
        let mut v12 = Vmcs12::default();
        v12.set(F::GUEST_RIP, 0x1000);
        v12.set(F::VM_EXIT_REASON, 10);
        v12.clean();
        let mut sh = FakeVmcs::default();
        let mut cache = ShadowCache::default();
        to_shadow(&v12, &mut sh, &mut cache, true);
        assert_eq!(
            (sh.read(F::GUEST_RIP), sh.read(F::VM_EXIT_REASON)),
            (0x1000, 10)
        );
        sh.write(F::GUEST_RIP, 0x1002);
        from_shadow(&sh, &mut v12, &mut cache, true);
        assert_eq!(v12.get(F::GUEST_RIP), 0x1002);
        assert!(v12.is_dirty(F::GUEST_RIP) && !v12.is_dirty(F::GUEST_RSP));
        // Only changes are written back.
        sh.write(F::VM_EXIT_REASON, 77);
        to_shadow(&v12, &mut sh, &mut cache, true);
        assert_eq!(
            sh.read(F::VM_EXIT_REASON),
            77,
            "unchanged in VMCS12: not rewritten"
        );
        v12.set(F::VM_EXIT_REASON, 12);
        to_shadow(&v12, &mut sh, &mut cache, true);
        assert_eq!(sh.read(F::VM_EXIT_REASON), 12);
    }

    /// A CPU without PML has no PML index field: it is neither in the
    /// bitmaps' holes nor written to the shadow.
    #[test]
    fn the_pml_index_is_shadowed_only_where_the_cpu_has_it() {
        let bit = |m: &[u8; 4096], e: u32| m[(e as usize & 0x7fff) / 8] & (1 << (e % 8)) != 0;
        let e = F::GUEST_PML_INDEX as u32;
        let (r, w) = bitmaps(true);
        assert!(!bit(&r, e) && !bit(&w, e));
        let (r, w) = bitmaps(false);
        assert!(bit(&r, e) && bit(&w, e));
        assert!(is_shadowed(F::GUEST_PML_INDEX, true) && !is_shadowed(F::GUEST_PML_INDEX, false));
        let mut v12 = Vmcs12::default();
        v12.set(F::GUEST_PML_INDEX, 511);
        let mut sh = FakeVmcs::default();
        let mut cache = ShadowCache::default();
        to_shadow(&v12, &mut sh, &mut cache, false);
        field_to_shadow(&v12, &mut sh, F::GUEST_PML_INDEX, &mut cache, false);
        assert_eq!(sh.read(F::GUEST_PML_INDEX), 0, "never written");
        to_shadow(&v12, &mut sh, &mut cache, true);
        assert_eq!(sh.read(F::GUEST_PML_INDEX), 511);
        use crate::vmx::caps::tests::bochs_skylake as bochs;
        assert!(pml_index_shadowed(&NestedCaps::new(&bochs())));
        let mut no_pml = bochs();
        no_pml.secondary &= !((secondary::ENABLE_PML as u64) << 32);
        assert!(!pml_index_shadowed(&NestedCaps::new(&no_pml)));
    }
}
