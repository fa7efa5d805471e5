//! VMCS02's I/O and MSR bitmaps (see `Vmcs02Pages`): never L1's merged
//! wholesale; the MSR bitmap takes from L1's only the x2APIC range and a
//! short list of frequent MSRs (KVM's nested_vmx_prepare_msr_bitmap does
//! the same), and forces the x2APIC writes L0 virtualizes itself.

use super::apicv::{X2APIC_ICR, X2APIC_SELF_IPI, X2APIC_TPR};
use super::context::{NestedCtx, NestedHw};
use super::VmcsSet;
use crate::guest_mem::GuestMemory;
use crate::vmx::caps::{primary, secondary};
use crate::vmx::Field as F;

/// MSRs an L2 may touch without exiting when L1 lets it: frequent in a
/// Linux guest, switched by VMCS02 or harmless to share (none is one L0
/// emulates). (msr, write)
const PASS_THROUGH_MSRS: &[(u32, bool)] = &[
    (0xc000_0100, false), // FS_BASE: a VMCS02 guest field
    (0xc000_0100, true),
    (0xc000_0101, false), // GS_BASE: likewise
    (0xc000_0101, true),
    (0xc000_0102, false), // KERNEL_GS_BASE
    (0xc000_0102, true),
    (0xc000_0103, false), // TSC_AUX
    (0x48, false),        // SPEC_CTRL
    (0x48, true),
    (0x49, true), // PRED_CMD
];

/// The bit number of an MSR in a VMX MSR bitmap (SDM 25.6.9).
pub const fn msr_bit(msr: u32, write: bool) -> usize {
    (if write { 2048 * 8 } else { 0 })
        + if msr <= 0x1fff {
            msr as usize
        } else {
            1024 * 8 + (msr - 0xc000_0000) as usize
        }
}

/// The words of MSR bitmap02 that follow L1's bitmap, with the bits of
/// each that do: the x2APIC range (reads, then writes: 4 words each), then
/// the words of the pass-through MSRs.
const FROM_L1: [(u16, u64); 12] = {
    let mut t = [(0u16, 0u64); 12];
    let mut n = 0;
    while n < 8 {
        t[n] = ((msr_bit(0x800, n >= 4) / 64 + n % 4) as u16, u64::MAX);
        n += 1;
    }
    let mut i = 0;
    while i < PASS_THROUGH_MSRS.len() {
        let bit = msr_bit(PASS_THROUGH_MSRS[i].0, PASS_THROUGH_MSRS[i].1);
        let mut j = 8;
        while j < n && t[j].0 as usize != bit / 64 {
            j += 1;
        }
        if j == n {
            t[n] = ((bit / 64) as u16, 0);
            n += 1;
        }
        t[j].1 |= 1 << (bit % 64);
        i += 1;
    }
    assert!(
        n == 12,
        "prepare_bitmaps reads the pass-through words one by one"
    );
    t
};

impl<S: VmcsSet, H: NestedHw> NestedCtx<'_, S, H> {
    /// VMCS02's I/O and MSR bitmaps (see `Vmcs02Pages`).
    pub fn prepare_bitmaps(&mut self) -> (u64, u64) {
        let v12 = &self.nested.vmx.vmcs12;
        let pages = self.nested.pages;
        let p12 = v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32;
        let io = if p12 & (primary::USE_IO_BITMAPS | primary::UNCONDITIONAL_IO_EXITING) != 0 {
            pages.io_all
        } else {
            pages.io_l0
        };
        // The x2APIC range follows L1's bitmap as is: with "virtualize
        // x2APIC mode" the hardware virtualizes what L1 does not intercept;
        // so do the pass-through MSRs. Everything else stays L0's.
        let mut l1 = [u64::MAX; FROM_L1.len()];
        if p12 & primary::USE_MSR_BITMAPS != 0 {
            let b = v12.get(F::MSR_BITMAP);
            let mem = self.hw.mem();
            // The x2APIC words, 4 in a row in each half, then one each.
            for (k, chunk) in [(0, 4), (4, 4), (8, 1), (9, 1), (10, 1), (11, 1)] {
                let mut bytes = [0xffu8; 32];
                let bytes = &mut bytes[..8 * chunk];
                if mem.read(b + 8 * FROM_L1[k].0 as u64, bytes).is_err() {
                    bytes.fill(0xff); // not L1 RAM any more: exit
                }
                for (i, c) in bytes.chunks_exact(8).enumerate() {
                    l1[k + i] = u64::from_le_bytes(c.try_into().unwrap());
                }
            }
        }
        let page = self.hw.page(pages.msr02);
        for (&(w, mask), v) in FROM_L1.iter().zip(l1) {
            let w = w as usize;
            page[w] = page[w] & !mask | v & mask;
        }
        let mut force = |msr: u32| {
            let bit = 2048 * 8 + msr as usize;
            page[bit / 64] |= 1 << (bit % 64);
        };
        if self.nested.ipiv12()
            && self.nested.vmx.vmcs12.secondary_controls() & secondary::VIRTUALIZE_X2APIC != 0
        {
            // L0 does IPI virtualization: ICR writes must reach it.
            force(X2APIC_ICR);
        }
        if self.nested.vmx.vmcs12.secondary_controls()
            & (secondary::VIRTUALIZE_X2APIC | secondary::VIRTUAL_INTERRUPT_DELIVERY)
            == secondary::VIRTUALIZE_X2APIC | secondary::VIRTUAL_INTERRUPT_DELIVERY
        {
            // TPR and self-IPI virtualization evaluate pending virtual
            // interrupts, which Bochs may then deliver with IF = 0 (see
            // prepare.rs on EOIs): L0 virtualizes these writes itself.
            force(X2APIC_TPR);
            force(X2APIC_SELF_IPI);
        }
        (io, pages.msr02)
    }
}
