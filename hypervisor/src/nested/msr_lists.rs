//! The VM-entry MSR-load list and the VM-exit MSR-store and MSR-load lists
//! of VMCS12 (SDM Vol. 3C 25.7.2, 25.8.2, 27.4, 28.4, 28.6), carried out by
//! L0 in software: entries are read from L1's memory and validated, then
//! loaded into the current VMCS or the CPU, or stored from them.

use alloc::vec::Vec;

use super::caps::VMX_MSRS;
use super::context::{NestedCtx, NestedHw};
use super::VmcsSet;
use crate::guest_mem::GuestMemory;
use crate::vmx::{Field, Vmcs};

/// One 16-byte list entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrEntry {
    pub index: u32,
    pub reserved: u32,
    pub data: u64,
}

/// Where an MSR of a list lives while a guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// Switched by the VMCS: the guest-state field holds it.
    Vmcs(Field),
    /// The physical MSR (or L0's emulation of it).
    Msr,
}

const IA32_SMBASE: u32 = 0x9e;
const IA32_SMM_MONITOR_CTL: u32 = 0x9b;
const IA32_BIOS_UPDT_TRIG: u32 = 0x79;
const IA32_BIOS_SIGN_ID: u32 = 0x8b;
const IA32_FS_BASE: u32 = 0xc000_0100;
const IA32_GS_BASE: u32 = 0xc000_0101;

/// Where `msr` lives, or None if lists may not name it (SDM 27.4: FS/GS
/// base, SMM monitor control, the x2APIC range; KVM also refuses the
/// microcode MSRs, and so does L0).
pub fn home(msr: u32, for_load: bool) -> Option<Home> {
    match msr {
        0x800..=0x8ff | IA32_SMM_MONITOR_CTL | IA32_BIOS_UPDT_TRIG | IA32_BIOS_SIGN_ID => None,
        IA32_FS_BASE | IA32_GS_BASE if for_load => None,
        IA32_SMBASE => None,
        0xc000_0080 => Some(Home::Vmcs(Field::GUEST_IA32_EFER)),
        0x277 => Some(Home::Vmcs(Field::GUEST_IA32_PAT)),
        0x1d9 => Some(Home::Vmcs(Field::GUEST_IA32_DEBUGCTL)),
        0x174 => Some(Home::Vmcs(Field::GUEST_SYSENTER_CS)),
        0x175 => Some(Home::Vmcs(Field::GUEST_SYSENTER_ESP)),
        0x176 => Some(Home::Vmcs(Field::GUEST_SYSENTER_EIP)),
        IA32_FS_BASE => Some(Home::Vmcs(Field::GUEST_FS_BASE)),
        IA32_GS_BASE => Some(Home::Vmcs(Field::GUEST_GS_BASE)),
        _ => Some(Home::Msr),
    }
}

/// Reads `count` entries at `addr` in L1's memory as the processor does:
/// an entry no L1 RAM backs reads as all ones (and so fails as a load or
/// store entry, its reserved bits set). Entries are 16-byte aligned and
/// never cross a page.
pub fn read_list<M: GuestMemory>(mem: &M, addr: u64, count: u64) -> Vec<MsrEntry> {
    (0..count)
        .map(|i| {
            let mut b = [0u8; 16];
            let at = (16 * i).checked_add(addr);
            if at.is_none_or(|at| mem.read(at, &mut b).is_err()) {
                b = [0xff; 16];
            }
            MsrEntry {
                index: u32::from_le_bytes(b[0..4].try_into().unwrap()),
                reserved: u32::from_le_bytes(b[4..8].try_into().unwrap()),
                data: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            }
        })
        .collect()
}

/// Whether an entry of a load list is acceptable before it is applied.
pub fn loadable(e: &MsrEntry) -> Option<Home> {
    if e.reserved != 0 {
        return None;
    }
    home(e.index, true)
}

impl<S: VmcsSet, H: NestedHw> NestedCtx<'_, S, H> {
    /// Applies a VM-entry (or VM-exit) MSR-load list to the current VMCS
    /// and the CPU; Err(1-based index) names the entry that failed.
    pub fn load_msr_list(&mut self, addr: u64, count: u64) -> Result<(), u64> {
        let list = read_list(self.hw.mem(), addr, count);
        for (i, e) in list.iter().enumerate() {
            let bad = (i + 1) as u64;
            match loadable(e) {
                Some(Home::Vmcs(f)) => self.vs.current().write(f, e.data),
                Some(Home::Msr) => {
                    if !self.hw.write_l1_msr(e.index, e.data) {
                        return Err(bad);
                    }
                }
                None => return Err(bad),
            }
        }
        Ok(())
    }

    /// Stores L2's values (VMCS02 current) into the VM-exit MSR-store list
    /// (SDM 28.4); Err(why) is a VMX abort.
    pub fn store_msr_list(&mut self, addr: u64, count: u64) -> Result<(), &'static str> {
        let list = read_list(self.hw.mem(), addr, count);
        let mut values = Vec::with_capacity(list.len());
        for e in &list {
            let value = match home(e.index, false) {
                Some(_) if e.reserved != 0 => None,
                Some(Home::Vmcs(f)) => Some(self.vs.current().read(f)),
                Some(Home::Msr) => self.read_l1_msr(e.index),
                None => None,
            };
            match value {
                Some(v) => values.push(v),
                None => {
                    return Err("the VM-exit MSR-store list names an MSR that cannot be stored")
                }
            }
        }
        for (i, v) in values.into_iter().enumerate() {
            // A write no L1 RAM backs is dropped, as the processor's.
            if let Some(at) = (16 * i as u64 + 8).checked_add(addr) {
                let _ = self.hw.mem().write(at, &v.to_le_bytes());
            }
        }
        Ok(())
    }

    /// RDMSR as L1 would: the VMX capability MSRs as L0 offers them, the
    /// rest as the vCPU does it.
    fn read_l1_msr(&mut self, msr: u32) -> Option<u64> {
        if VMX_MSRS.contains(&msr) {
            return self.nested.vmx.caps.msr(msr);
        }
        self.hw.read_l1_msr(msr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::fake::VecMemory;

    #[test]
    fn homes() {
        assert_eq!(
            home(0xc000_0080, true),
            Some(Home::Vmcs(Field::GUEST_IA32_EFER))
        );
        assert_eq!(home(0xc000_0103, true), Some(Home::Msr));
        assert_eq!(home(0x808, true), None, "x2APIC");
        assert_eq!(home(0xc000_0100, true), None, "FS base may not be loaded");
        assert_eq!(
            home(0xc000_0100, false),
            Some(Home::Vmcs(Field::GUEST_FS_BASE)),
            "but may be stored"
        );
        assert_eq!(home(0x9b, false), None);
    }

    #[test]
    fn lists_from_memory() {
        let mut m = VecMemory::new(0, 0x2000);
        m.write(0x1000, &0xc000_0103u32.to_le_bytes()).unwrap();
        m.write(0x1008, &7u64.to_le_bytes()).unwrap();
        m.write(0x1010, &0x174u32.to_le_bytes()).unwrap();
        m.write(0x1014, &1u32.to_le_bytes()).unwrap();
        let l = read_list(&m, 0x1000, 2);
        assert_eq!(
            l[0],
            MsrEntry {
                index: 0xc000_0103,
                reserved: 0,
                data: 7
            }
        );
        assert_eq!(loadable(&l[0]), Some(Home::Msr));
        assert_eq!(loadable(&l[1]), None, "reserved bits");
        // A list that runs off L1's RAM: the entries beyond read as all ones.
        let l = read_list(&m, 0x1ff0, 2);
        assert_eq!(l[0].index, 0);
        let ones = MsrEntry {
            index: u32::MAX,
            reserved: u32::MAX,
            data: u64::MAX,
        };
        assert_eq!(l[1], ones);
        assert_eq!(loadable(&l[1]), None, "fails as the processor's load");
        // A list past 2^64 (refused by the entry checks; read as unbacked
        // memory if it ever came here), never an overflow.
        assert_eq!(read_list(&m, u64::MAX - 15, 2), [ones, ones]);
    }
}
