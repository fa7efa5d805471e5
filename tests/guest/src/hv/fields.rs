//! VMCS field encodings (SDM Vol. 3D, Appendix B) and the bits of the
//! controls and exit information this test hypervisor uses (SDM 3C ch. 25).
//! Only what the checks need; names follow the SDM.

// 16-bit control fields (B.1.1).
pub const VPID: u32 = 0x0000;
pub const POSTED_INTR_NV: u32 = 0x0002;
pub const GUEST_INTR_STATUS: u32 = 0x0810;
// 16-bit guest-state fields (B.1.2).
pub const GUEST_PML_INDEX: u32 = 0x0812;
pub const GUEST_ES_SEL: u32 = 0x0800;
pub const GUEST_CS_SEL: u32 = 0x0802;
pub const GUEST_SS_SEL: u32 = 0x0804;
pub const GUEST_DS_SEL: u32 = 0x0806;
pub const GUEST_FS_SEL: u32 = 0x0808;
pub const GUEST_GS_SEL: u32 = 0x080a;
pub const GUEST_LDTR_SEL: u32 = 0x080c;
pub const GUEST_TR_SEL: u32 = 0x080e;
// 16-bit host-state fields (B.1.3).
pub const HOST_ES_SEL: u32 = 0x0c00;
pub const HOST_CS_SEL: u32 = 0x0c02;
pub const HOST_SS_SEL: u32 = 0x0c04;
pub const HOST_DS_SEL: u32 = 0x0c06;
pub const HOST_FS_SEL: u32 = 0x0c08;
pub const HOST_GS_SEL: u32 = 0x0c0a;
pub const HOST_TR_SEL: u32 = 0x0c0c;

// 64-bit control fields (B.2.1).
pub const IO_BITMAP_A: u32 = 0x2000;
pub const IO_BITMAP_B: u32 = 0x2002;
pub const MSR_BITMAP: u32 = 0x2004;
pub const EXIT_MSR_STORE_ADDR: u32 = 0x2006;
pub const EXIT_MSR_LOAD_ADDR: u32 = 0x2008;
pub const ENTRY_MSR_LOAD_ADDR: u32 = 0x200a;
pub const PML_ADDRESS: u32 = 0x200e;
pub const TSC_OFFSET: u32 = 0x2010;
pub const VIRTUAL_APIC_ADDR: u32 = 0x2012;
pub const APIC_ACCESS_ADDR: u32 = 0x2014;
pub const POSTED_INTR_DESC: u32 = 0x2016;
pub const EPT_POINTER: u32 = 0x201a;
/// EOI-exit bitmaps 0-3 (0x201c, 0x201e, 0x2020, 0x2022).
pub const EOI_EXIT_BITMAP0: u32 = 0x201c;
// 64-bit read-only data (B.2.2).
pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
// 64-bit guest-state fields (B.2.3).
pub const VMCS_LINK_POINTER: u32 = 0x2800;
pub const VMCS_LINK_POINTER_HIGH: u32 = 0x2801;
pub const GUEST_IA32_DEBUGCTL: u32 = 0x2802;
pub const GUEST_IA32_PAT: u32 = 0x2804;
pub const GUEST_IA32_EFER: u32 = 0x2806;
pub const GUEST_PDPTE0: u32 = 0x280a;
pub const GUEST_PDPTE1: u32 = 0x280c;
pub const GUEST_PDPTE2: u32 = 0x280e;
pub const GUEST_PDPTE3: u32 = 0x2810;
// 64-bit host-state fields (B.2.4).
pub const HOST_IA32_PAT: u32 = 0x2c00;
pub const HOST_IA32_EFER: u32 = 0x2c02;

// 32-bit control fields (B.3.1).
pub const PIN_CONTROLS: u32 = 0x4000;
pub const PROC_CONTROLS: u32 = 0x4002;
pub const EXCEPTION_BITMAP: u32 = 0x4004;
pub const PF_ERROR_MASK: u32 = 0x4006;
pub const PF_ERROR_MATCH: u32 = 0x4008;
pub const CR3_TARGET_COUNT: u32 = 0x400a;
pub const EXIT_CONTROLS: u32 = 0x400c;
pub const EXIT_MSR_STORE_COUNT: u32 = 0x400e;
pub const EXIT_MSR_LOAD_COUNT: u32 = 0x4010;
pub const ENTRY_CONTROLS: u32 = 0x4012;
pub const ENTRY_MSR_LOAD_COUNT: u32 = 0x4014;
pub const ENTRY_INTR_INFO: u32 = 0x4016;
pub const ENTRY_EXCEPTION_ERROR: u32 = 0x4018;
pub const ENTRY_INSTR_LEN: u32 = 0x401a;
pub const TPR_THRESHOLD: u32 = 0x401c;
pub const PROC2_CONTROLS: u32 = 0x401e;
// 32-bit read-only data (B.3.2).
pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
pub const EXIT_REASON: u32 = 0x4402;
pub const EXIT_INTR_INFO: u32 = 0x4404;
pub const EXIT_INTR_ERROR: u32 = 0x4406;
pub const IDT_VECTORING_INFO: u32 = 0x4408;
pub const EXIT_INSTR_LEN: u32 = 0x440c;
pub const EXIT_INSTR_INFO: u32 = 0x440e;
// 32-bit guest-state fields (B.3.3).
pub const GUEST_ES_LIMIT: u32 = 0x4800;
pub const GUEST_CS_LIMIT: u32 = 0x4802;
pub const GUEST_SS_LIMIT: u32 = 0x4804;
pub const GUEST_DS_LIMIT: u32 = 0x4806;
pub const GUEST_FS_LIMIT: u32 = 0x4808;
pub const GUEST_GS_LIMIT: u32 = 0x480a;
pub const GUEST_LDTR_LIMIT: u32 = 0x480c;
pub const GUEST_TR_LIMIT: u32 = 0x480e;
pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
pub const GUEST_ES_AR: u32 = 0x4814;
pub const GUEST_CS_AR: u32 = 0x4816;
pub const GUEST_SS_AR: u32 = 0x4818;
pub const GUEST_DS_AR: u32 = 0x481a;
pub const GUEST_FS_AR: u32 = 0x481c;
pub const GUEST_GS_AR: u32 = 0x481e;
pub const GUEST_LDTR_AR: u32 = 0x4820;
pub const GUEST_TR_AR: u32 = 0x4822;
pub const GUEST_INTERRUPTIBILITY: u32 = 0x4824;
pub const GUEST_ACTIVITY_STATE: u32 = 0x4826;
pub const GUEST_SYSENTER_CS: u32 = 0x482a;
pub const PREEMPTION_TIMER_VALUE: u32 = 0x482e;
// 32-bit host-state field (B.3.4).
pub const HOST_SYSENTER_CS: u32 = 0x4c00;

// Natural-width control fields (B.4.1).
pub const CR0_GUEST_HOST_MASK: u32 = 0x6000;
pub const CR4_GUEST_HOST_MASK: u32 = 0x6002;
pub const CR0_READ_SHADOW: u32 = 0x6004;
pub const CR4_READ_SHADOW: u32 = 0x6006;
pub const CR3_TARGET0: u32 = 0x6008;
// Natural-width read-only data (B.4.2).
pub const EXIT_QUALIFICATION: u32 = 0x6400;
pub const GUEST_LINEAR_ADDRESS: u32 = 0x640a;
// Natural-width guest-state fields (B.4.3).
pub const GUEST_CR0: u32 = 0x6800;
pub const GUEST_CR3: u32 = 0x6802;
pub const GUEST_CR4: u32 = 0x6804;
pub const GUEST_ES_BASE: u32 = 0x6806;
pub const GUEST_CS_BASE: u32 = 0x6808;
pub const GUEST_SS_BASE: u32 = 0x680a;
pub const GUEST_DS_BASE: u32 = 0x680c;
pub const GUEST_FS_BASE: u32 = 0x680e;
pub const GUEST_GS_BASE: u32 = 0x6810;
pub const GUEST_LDTR_BASE: u32 = 0x6812;
pub const GUEST_TR_BASE: u32 = 0x6814;
pub const GUEST_GDTR_BASE: u32 = 0x6816;
pub const GUEST_IDTR_BASE: u32 = 0x6818;
pub const GUEST_DR7: u32 = 0x681a;
pub const GUEST_RSP: u32 = 0x681c;
pub const GUEST_RIP: u32 = 0x681e;
pub const GUEST_RFLAGS: u32 = 0x6820;
pub const GUEST_PENDING_DBG: u32 = 0x6822;
pub const GUEST_SYSENTER_ESP: u32 = 0x6824;
pub const GUEST_SYSENTER_EIP: u32 = 0x6826;
// Natural-width host-state fields (B.4.4).
pub const HOST_CR0: u32 = 0x6c00;
pub const HOST_CR3: u32 = 0x6c02;
pub const HOST_CR4: u32 = 0x6c04;
pub const HOST_FS_BASE: u32 = 0x6c06;
pub const HOST_GS_BASE: u32 = 0x6c08;
pub const HOST_TR_BASE: u32 = 0x6c0a;
pub const HOST_GDTR_BASE: u32 = 0x6c0c;
pub const HOST_IDTR_BASE: u32 = 0x6c0e;
pub const HOST_SYSENTER_ESP: u32 = 0x6c10;
pub const HOST_SYSENTER_EIP: u32 = 0x6c12;
pub const HOST_RSP: u32 = 0x6c14;
pub const HOST_RIP: u32 = 0x6c16;

/// Pin-based VM-execution controls (SDM 25.6.1).
pub mod pin {
    pub const EXT_INTR_EXITING: u32 = 1 << 0;
    pub const NMI_EXITING: u32 = 1 << 3;
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
    pub const POSTED_INTERRUPTS: u32 = 1 << 7;
}

/// Primary processor-based VM-execution controls (SDM 25.6.2).
pub mod proc {
    pub const INTR_WINDOW_EXITING: u32 = 1 << 2;
    pub const TSC_OFFSETTING: u32 = 1 << 3;
    pub const HLT_EXITING: u32 = 1 << 7;
    pub const RDTSC_EXITING: u32 = 1 << 12;
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    pub const CR3_STORE_EXITING: u32 = 1 << 16;
    pub const USE_TPR_SHADOW: u32 = 1 << 21;
    pub const UNCOND_IO_EXITING: u32 = 1 << 24;
    pub const USE_IO_BITMAPS: u32 = 1 << 25;
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    pub const SECONDARY: u32 = 1 << 31;
}

/// Secondary processor-based VM-execution controls (SDM 25.6.2).
pub mod proc2 {
    pub const VIRTUALIZE_APIC_ACCESSES: u32 = 1 << 0;
    pub const EPT: u32 = 1 << 1;
    pub const VPID: u32 = 1 << 5;
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    pub const VIRTUAL_INTR_DELIVERY: u32 = 1 << 9;
    pub const ENABLE_PML: u32 = 1 << 17;
}

/// VM-exit controls (SDM 25.7.1).
pub mod exit {
    pub const HOST_ADDR_SPACE_SIZE: u32 = 1 << 9;
    pub const ACK_INTR_ON_EXIT: u32 = 1 << 15;
    pub const SAVE_PAT: u32 = 1 << 18;
    pub const LOAD_PAT: u32 = 1 << 19;
    pub const SAVE_EFER: u32 = 1 << 20;
    pub const LOAD_EFER: u32 = 1 << 21;
    pub const SAVE_PREEMPTION_TIMER: u32 = 1 << 22;
}

/// VM-entry controls (SDM 25.8.1).
pub mod entry {
    pub const IA32E_MODE_GUEST: u32 = 1 << 9;
    pub const LOAD_PAT: u32 = 1 << 14;
    pub const LOAD_EFER: u32 = 1 << 15;
}

/// Basic exit reasons (SDM Appendix C).
pub mod reason {
    pub const EXCEPTION_NMI: u32 = 0;
    pub const EXTERNAL_INTERRUPT: u32 = 1;
    pub const TRIPLE_FAULT: u32 = 2;
    pub const INTERRUPT_WINDOW: u32 = 7;
    pub const CPUID: u32 = 10;
    pub const HLT: u32 = 12;
    pub const RDTSC: u32 = 16;
    pub const VMCALL: u32 = 18;
    pub const VMPTRLD: u32 = 21;
    pub const VMREAD: u32 = 23;
    pub const VMXON: u32 = 27;
    pub const CR_ACCESS: u32 = 28;
    pub const IO: u32 = 30;
    pub const RDMSR: u32 = 31;
    pub const WRMSR: u32 = 32;
    pub const INVALID_GUEST_STATE: u32 = 33;
    pub const MSR_LOADING: u32 = 34;
    pub const TPR_BELOW_THRESHOLD: u32 = 43;
    pub const EPT_VIOLATION: u32 = 48;
    pub const EPT_MISCONFIG: u32 = 49;
    pub const PREEMPTION_TIMER: u32 = 52;
    pub const PML_FULL: u32 = 62;
    /// Bit 31: VM-entry failure (SDM 25.9.1).
    pub const ENTRY_FAILURE: u32 = 1 << 31;
}

/// VM-instruction error numbers (SDM 31.4).
pub mod err {
    pub const VMCLEAR_INVALID_ADDR: u32 = 2;
    pub const VMCLEAR_VMXON_PTR: u32 = 3;
    pub const VMLAUNCH_NONCLEAR: u32 = 4;
    pub const VMRESUME_NONLAUNCHED: u32 = 5;
    pub const ENTRY_INVALID_CONTROLS: u32 = 7;
    pub const ENTRY_INVALID_HOST: u32 = 8;
    pub const VMPTRLD_INVALID_ADDR: u32 = 9;
    pub const VMPTRLD_VMXON_PTR: u32 = 10;
    pub const VMPTRLD_BAD_REVISION: u32 = 11;
    pub const UNSUPPORTED_FIELD: u32 = 12;
    pub const VMWRITE_READ_ONLY: u32 = 13;
    pub const VMXON_IN_ROOT: u32 = 15;
    pub const INVALID_INVEPT_INVVPID: u32 = 28;
}

/// Interruption-information format (SDM 25.8.3, 25.9.2): valid bit, types.
pub mod intr {
    pub const VALID: u32 = 1 << 31;
    pub const ERROR_CODE: u32 = 1 << 11;
    pub const TYPE_EXTERNAL: u32 = 0 << 8;
    pub const TYPE_HW_EXCEPTION: u32 = 3 << 8;
    pub const TYPE_SW_INTERRUPT: u32 = 4 << 8;
}
