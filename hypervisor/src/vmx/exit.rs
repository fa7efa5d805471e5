//! VM-exit reasons and exit-qualification formats (SDM Vol. 3C, chapter 28
//! and Appendix C), decoded by pure functions.

use super::{Field as F, Vmcs};

/// Basic exit reasons (SDM Vol. 3D, Appendix C).
pub mod reason {
    pub const EXCEPTION_NMI: u16 = 0;
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    pub const TRIPLE_FAULT: u16 = 2;
    pub const INIT: u16 = 3;
    pub const SIPI: u16 = 4;
    pub const IO_SMI: u16 = 5;
    pub const OTHER_SMI: u16 = 6;
    pub const INTERRUPT_WINDOW: u16 = 7;
    pub const NMI_WINDOW: u16 = 8;
    pub const TASK_SWITCH: u16 = 9;
    pub const CPUID: u16 = 10;
    pub const GETSEC: u16 = 11;
    pub const HLT: u16 = 12;
    pub const INVD: u16 = 13;
    pub const INVLPG: u16 = 14;
    pub const RDPMC: u16 = 15;
    pub const RDTSC: u16 = 16;
    pub const RSM: u16 = 17;
    pub const VMCALL: u16 = 18;
    pub const VMCLEAR: u16 = 19;
    pub const VMLAUNCH: u16 = 20;
    pub const VMPTRLD: u16 = 21;
    pub const VMPTRST: u16 = 22;
    pub const VMREAD: u16 = 23;
    pub const VMRESUME: u16 = 24;
    pub const VMWRITE: u16 = 25;
    pub const VMXOFF: u16 = 26;
    pub const VMXON: u16 = 27;
    pub const CR_ACCESS: u16 = 28;
    pub const DR_ACCESS: u16 = 29;
    pub const IO_INSTRUCTION: u16 = 30;
    pub const RDMSR: u16 = 31;
    pub const WRMSR: u16 = 32;
    pub const INVALID_GUEST_STATE: u16 = 33;
    pub const MSR_LOADING: u16 = 34;
    pub const MWAIT: u16 = 36;
    pub const MONITOR_TRAP_FLAG: u16 = 37;
    pub const MONITOR: u16 = 39;
    pub const PAUSE: u16 = 40;
    pub const MACHINE_CHECK: u16 = 41;
    pub const TPR_BELOW_THRESHOLD: u16 = 43;
    pub const APIC_ACCESS: u16 = 44;
    pub const VIRTUALIZED_EOI: u16 = 45;
    pub const GDTR_IDTR: u16 = 46;
    pub const LDTR_TR: u16 = 47;
    pub const EPT_VIOLATION: u16 = 48;
    pub const EPT_MISCONFIG: u16 = 49;
    pub const INVEPT: u16 = 50;
    pub const RDTSCP: u16 = 51;
    pub const PREEMPTION_TIMER: u16 = 52;
    pub const INVVPID: u16 = 53;
    pub const WBINVD: u16 = 54;
    pub const XSETBV: u16 = 55;
    pub const APIC_WRITE: u16 = 56;
    pub const RDRAND: u16 = 57;
    pub const INVPCID: u16 = 58;
    pub const VMFUNC: u16 = 59;
    pub const ENCLS: u16 = 60;
    pub const RDSEED: u16 = 61;
    pub const PML_FULL: u16 = 62;
    pub const XSAVES: u16 = 63;
    pub const XRSTORS: u16 = 64;
    pub const UMWAIT: u16 = 67;
    pub const TPAUSE: u16 = 68;
}

/// A name for the log.
pub fn reason_name(basic: u16) -> &'static str {
    use reason::*;
    match basic {
        EXCEPTION_NMI => "exception or NMI",
        EXTERNAL_INTERRUPT => "external interrupt",
        TRIPLE_FAULT => "triple fault",
        INIT => "INIT signal",
        SIPI => "SIPI",
        IO_SMI => "I/O SMI",
        OTHER_SMI => "other SMI",
        INTERRUPT_WINDOW => "interrupt window",
        NMI_WINDOW => "NMI window",
        TASK_SWITCH => "task switch",
        CPUID => "CPUID",
        GETSEC => "GETSEC",
        HLT => "HLT",
        INVD => "INVD",
        INVLPG => "INVLPG",
        RDPMC => "RDPMC",
        RDTSC => "RDTSC",
        RSM => "RSM",
        VMCALL => "VMCALL",
        VMCLEAR => "VMCLEAR",
        VMLAUNCH => "VMLAUNCH",
        VMPTRLD => "VMPTRLD",
        VMPTRST => "VMPTRST",
        VMREAD => "VMREAD",
        VMRESUME => "VMRESUME",
        VMWRITE => "VMWRITE",
        VMXOFF => "VMXOFF",
        VMXON => "VMXON",
        CR_ACCESS => "control-register access",
        DR_ACCESS => "debug-register access",
        IO_INSTRUCTION => "I/O instruction",
        RDMSR => "RDMSR",
        WRMSR => "WRMSR",
        INVALID_GUEST_STATE => "VM entry failure: invalid guest state",
        MSR_LOADING => "VM entry failure: MSR loading",
        MWAIT => "MWAIT",
        MONITOR_TRAP_FLAG => "monitor trap flag",
        MONITOR => "MONITOR",
        PAUSE => "PAUSE",
        MACHINE_CHECK => "VM entry failure: machine check",
        TPR_BELOW_THRESHOLD => "TPR below threshold",
        APIC_ACCESS => "APIC access",
        VIRTUALIZED_EOI => "virtualized EOI",
        GDTR_IDTR => "GDTR/IDTR access",
        LDTR_TR => "LDTR/TR access",
        EPT_VIOLATION => "EPT violation",
        EPT_MISCONFIG => "EPT misconfiguration",
        INVEPT => "INVEPT",
        RDTSCP => "RDTSCP",
        PREEMPTION_TIMER => "VMX-preemption timer expired",
        INVVPID => "INVVPID",
        WBINVD => "WBINVD",
        XSETBV => "XSETBV",
        APIC_WRITE => "APIC write",
        RDRAND => "RDRAND",
        INVPCID => "INVPCID",
        VMFUNC => "VMFUNC",
        ENCLS => "ENCLS",
        RDSEED => "RDSEED",
        PML_FULL => "page-modification log full",
        XSAVES => "XSAVES",
        XRSTORS => "XRSTORS",
        UMWAIT => "UMWAIT",
        TPAUSE => "TPAUSE",
        _ => "unknown",
    }
}

/// The exit-reason field (SDM 25.9.1): basic reason and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReason(pub u32);

impl ExitReason {
    pub fn basic(self) -> u16 {
        self.0 as u16
    }
    /// Bit 31: the VM entry failed (the guest never ran).
    pub fn entry_failed(self) -> bool {
        self.0 & (1 << 31) != 0
    }
}

/// Control-register access qualification (SDM Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccess {
    MovToCr { cr: u8, gpr: u8 },
    MovFromCr { cr: u8, gpr: u8 },
    Clts,
    Lmsw { source: u16 },
}

impl CrAccess {
    pub fn decode(q: u64) -> Self {
        let cr = (q & 0xf) as u8;
        let gpr = ((q >> 8) & 0xf) as u8;
        match (q >> 4) & 3 {
            0 => CrAccess::MovToCr { cr, gpr },
            1 => CrAccess::MovFromCr { cr, gpr },
            2 => CrAccess::Clts,
            _ => CrAccess::Lmsw {
                source: (q >> 16) as u16,
            },
        }
    }
}

/// I/O instruction qualification (SDM Table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoAccess {
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    pub is_in: bool,
    pub string: bool,
    pub rep: bool,
}

impl IoAccess {
    pub fn decode(q: u64) -> Self {
        IoAccess {
            size: ((q & 7) + 1) as u8,
            is_in: q & (1 << 3) != 0,
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            port: (q >> 16) as u16,
        }
    }
}

/// EPT-violation qualification (SDM Table 28-7), the parts L0 uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptViolation {
    pub read: bool,
    pub write: bool,
    pub fetch: bool,
    /// Bits 5:3: what the entry allowed (read, write, execute).
    pub allowed: u8,
    /// Bit 7: the guest linear address field is valid.
    pub linear_valid: bool,
    /// Bit 8 (with bit 7): the access was to the translated address, not to
    /// a paging structure.
    pub to_final_address: bool,
    /// Bit 12: NMI unblocking due to IRET.
    pub nmi_unblocking: bool,
}

impl EptViolation {
    pub fn decode(q: u64) -> Self {
        EptViolation {
            read: q & 1 != 0,
            write: q & 2 != 0,
            fetch: q & 4 != 0,
            allowed: ((q >> 3) & 7) as u8,
            linear_valid: q & (1 << 7) != 0,
            to_final_address: q & (1 << 8) != 0,
            nmi_unblocking: q & (1 << 12) != 0,
        }
    }
}

/// The exit-information fields of an exit, read once from the VMCS that
/// exited (SDM Vol. 3C 25.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitInfo {
    pub reason: u32,
    pub qualification: u64,
    pub intr_info: u32,
    pub intr_error: u32,
    pub idt_info: u32,
    pub idt_error: u32,
    pub instr_len: u32,
    pub instr_info: u32,
    pub guest_linear: u64,
    pub guest_physical: u64,
    pub io_rcx: u64,
    pub io_rsi: u64,
    pub io_rdi: u64,
    pub io_rip: u64,
}

impl ExitInfo {
    pub fn read(v: &impl Vmcs) -> Self {
        let r = |f| v.read(f);
        ExitInfo {
            reason: r(F::VM_EXIT_REASON) as u32,
            qualification: r(F::EXIT_QUALIFICATION),
            intr_info: r(F::VM_EXIT_INTR_INFO) as u32,
            intr_error: r(F::VM_EXIT_INTR_ERROR_CODE) as u32,
            idt_info: r(F::IDT_VECTORING_INFO_FIELD) as u32,
            idt_error: r(F::IDT_VECTORING_ERROR_CODE) as u32,
            instr_len: r(F::VM_EXIT_INSTRUCTION_LEN) as u32,
            instr_info: r(F::VMX_INSTRUCTION_INFO) as u32,
            guest_linear: r(F::GUEST_LINEAR_ADDRESS),
            guest_physical: r(F::GUEST_PHYSICAL_ADDRESS),
            io_rcx: r(F::IO_RCX),
            io_rsi: r(F::IO_RSI),
            io_rdi: r(F::IO_RDI),
            io_rip: r(F::IO_RIP),
        }
    }

    pub fn basic(&self) -> u16 {
        self.reason as u16
    }
}

/// The VMX instructions (the exits L0 emulates for L1, or refuses with #UD
/// when it does not offer VMX).
pub const VMX_INSTRUCTIONS: [u16; 11] = [
    reason::VMCLEAR,
    reason::VMLAUNCH,
    reason::VMPTRLD,
    reason::VMPTRST,
    reason::VMREAD,
    reason::VMRESUME,
    reason::VMWRITE,
    reason::VMXOFF,
    reason::VMXON,
    reason::INVEPT,
    reason::INVVPID,
];

/// Whether `basic` is one of [`VMX_INSTRUCTIONS`]: a table lookup, as a
/// guest hypervisor's every round trip passes here.
pub fn is_vmx_instruction(basic: u16) -> bool {
    const TABLE: [bool; 64] = {
        let mut t = [false; 64];
        let mut i = 0;
        while i < VMX_INSTRUCTIONS.len() {
            t[VMX_INSTRUCTIONS[i] as usize] = true;
            i += 1;
        }
        t
    };
    TABLE.get(basic as usize).copied().unwrap_or(false)
}

/// One exit, decoded once: what L0's routing and handlers look at, with
/// the qualification and the registers it names already read. Reasons
/// L0 has no handler of its own for are `Other`: L1 gets them by its
/// controls, and from L1 itself they are unexpected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// Bit 31 of the reason: the VM entry failed.
    EntryFailed {
        reason: u16,
        qualification: u64,
    },
    Exception {
        info: InterruptionInfo,
        error_code: u32,
    },
    ExternalInterrupt {
        info: InterruptionInfo,
    },
    TripleFault,
    /// An INIT signal arrived (always an exit in VMX non-root operation).
    Init,
    /// A start-up IPI arrived while the guest waited for one.
    Sipi {
        vector: u8,
    },
    InterruptWindow,
    /// CPUID with EAX = `leaf`.
    Cpuid {
        leaf: u32,
    },
    Hlt,
    Invd,
    Vmcall,
    /// One of [`VMX_INSTRUCTIONS`].
    VmxInstruction(u16),
    Cr(CrAccess),
    Io(IoAccess),
    /// RDMSR or WRMSR of MSR `index` (ECX).
    Msr {
        index: u32,
        write: bool,
    },
    Xsetbv,
    EptViolation {
        access: EptViolation,
        gpa: u64,
    },
    EptMisconfig {
        gpa: u64,
    },
    PreemptionTimer,
    /// A trap-like APIC write at this offset of the virtual-APIC page.
    ApicWrite {
        offset: u16,
    },
    VirtualizedEoi {
        vector: u8,
    },
    Other(u16),
}

impl VmExit {
    /// Decodes `e`; `rax` and `rcx` are the guest's at the exit (CPUID's
    /// leaf, the MSR index).
    pub fn decode(e: &ExitInfo, rax: u64, rcx: u64) -> VmExit {
        Self::decode_with(e.reason, rax, rcx, |f| match f {
            F::EXIT_QUALIFICATION => e.qualification,
            F::VM_EXIT_INTR_INFO => e.intr_info as u64,
            F::VM_EXIT_INTR_ERROR_CODE => e.intr_error as u64,
            _ => e.guest_physical,
        })
    }

    /// Decodes the exit of `v` whose exit-reason field holds `reason`,
    /// reading only the fields this reason has (an L1 exit needs no more;
    /// an L2 exit reads [`ExitInfo`] whole, for reflecting it).
    pub fn read(v: &impl Vmcs, reason: ExitReason, rax: u64, rcx: u64) -> VmExit {
        Self::decode_with(reason.0, rax, rcx, |f| v.read(f))
    }

    /// The one decoder: `field` gives the exit qualification, the exit
    /// interruption information and error code, and the guest-physical
    /// address, when the reason has them.
    fn decode_with(reason: u32, rax: u64, rcx: u64, field: impl Fn(F) -> u64) -> VmExit {
        let r = ExitReason(reason);
        let q = || field(F::EXIT_QUALIFICATION);
        if r.entry_failed() {
            return VmExit::EntryFailed {
                reason: r.basic(),
                qualification: q(),
            };
        }
        match r.basic() {
            reason::EXCEPTION_NMI => VmExit::Exception {
                info: InterruptionInfo(field(F::VM_EXIT_INTR_INFO) as u32),
                error_code: field(F::VM_EXIT_INTR_ERROR_CODE) as u32,
            },
            reason::EXTERNAL_INTERRUPT => VmExit::ExternalInterrupt {
                info: InterruptionInfo(field(F::VM_EXIT_INTR_INFO) as u32),
            },
            reason::TRIPLE_FAULT => VmExit::TripleFault,
            reason::INIT => VmExit::Init,
            reason::SIPI => VmExit::Sipi { vector: q() as u8 },
            reason::INTERRUPT_WINDOW => VmExit::InterruptWindow,
            reason::CPUID => VmExit::Cpuid { leaf: rax as u32 },
            reason::HLT => VmExit::Hlt,
            reason::INVD => VmExit::Invd,
            reason::VMCALL => VmExit::Vmcall,
            reason::CR_ACCESS => VmExit::Cr(CrAccess::decode(q())),
            reason::IO_INSTRUCTION => VmExit::Io(IoAccess::decode(q())),
            reason::RDMSR | reason::WRMSR => VmExit::Msr {
                index: rcx as u32,
                write: r.basic() == reason::WRMSR,
            },
            reason::XSETBV => VmExit::Xsetbv,
            reason::EPT_VIOLATION => VmExit::EptViolation {
                access: EptViolation::decode(q()),
                gpa: field(F::GUEST_PHYSICAL_ADDRESS),
            },
            reason::EPT_MISCONFIG => VmExit::EptMisconfig {
                gpa: field(F::GUEST_PHYSICAL_ADDRESS),
            },
            reason::PREEMPTION_TIMER => VmExit::PreemptionTimer,
            reason::APIC_WRITE => VmExit::ApicWrite {
                offset: (q() & 0xfff) as u16,
            },
            reason::VIRTUALIZED_EOI => VmExit::VirtualizedEoi { vector: q() as u8 },
            b if is_vmx_instruction(b) => VmExit::VmxInstruction(b),
            other => VmExit::Other(other),
        }
    }
}

/// Interruption-information format shared by the exit, IDT-vectoring and
/// entry fields (SDM 25.8.3, 25.9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptionInfo(pub u32);

/// Interruption types (bits 10:8).
pub mod event_type {
    pub const EXTERNAL_INTERRUPT: u8 = 0;
    pub const NMI: u8 = 2;
    pub const HARDWARE_EXCEPTION: u8 = 3;
    pub const SOFTWARE_INTERRUPT: u8 = 4;
    pub const PRIV_SOFTWARE_EXCEPTION: u8 = 5;
    pub const SOFTWARE_EXCEPTION: u8 = 6;
    pub const OTHER: u8 = 7;
}

impl InterruptionInfo {
    pub const VALID: u32 = 1 << 31;
    pub const ERROR_CODE: u32 = 1 << 11;

    /// An event to inject.
    pub fn new(vector: u8, kind: u8, error_code: bool) -> Self {
        InterruptionInfo(
            Self::VALID
                | (kind as u32) << 8
                | vector as u32
                | if error_code { Self::ERROR_CODE } else { 0 },
        )
    }
    pub fn valid(self) -> bool {
        self.0 & Self::VALID != 0
    }
    pub fn vector(self) -> u8 {
        self.0 as u8
    }
    pub fn kind(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }
    pub fn has_error_code(self) -> bool {
        self.0 & Self::ERROR_CODE != 0
    }
}

/// Exceptions that push an error code (SDM Vol. 3A 6.15).
pub fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reason_flags() {
        let r = ExitReason(0x8000_0021);
        assert!(r.entry_failed());
        assert_eq!(r.basic(), reason::INVALID_GUEST_STATE);
        assert_eq!(
            reason_name(r.basic()),
            "VM entry failure: invalid guest state"
        );
        assert!(!ExitReason(10).entry_failed());
        assert_eq!(reason_name(200), "unknown");
    }

    #[test]
    fn exits_decode_once_with_their_operands() {
        let at = |reason: u16, qualification: u64| ExitInfo {
            reason: reason as u32,
            qualification,
            guest_physical: 0x1234_5000,
            intr_info: 0x8000_0b0e,
            intr_error: 6,
            ..Default::default()
        };
        let d = |e: ExitInfo| VmExit::decode(&e, 0x4000_0000, 0xc000_0080);
        assert_eq!(
            d(ExitInfo {
                reason: 0x8000_0021,
                qualification: 3,
                ..Default::default()
            }),
            VmExit::EntryFailed {
                reason: reason::INVALID_GUEST_STATE,
                qualification: 3
            }
        );
        assert_eq!(d(at(reason::CPUID, 0)), VmExit::Cpuid { leaf: 0x4000_0000 });
        assert_eq!(
            d(at(reason::WRMSR, 0)),
            VmExit::Msr {
                index: 0xc000_0080,
                write: true
            }
        );
        assert_eq!(
            d(at(reason::RDMSR, 0)),
            VmExit::Msr {
                index: 0xc000_0080,
                write: false
            }
        );
        for r in VMX_INSTRUCTIONS {
            assert_eq!(d(at(r, 0)), VmExit::VmxInstruction(r));
        }
        assert_eq!(
            d(at(reason::IO_INSTRUCTION, 0x03f8_0008)),
            VmExit::Io(IoAccess::decode(0x03f8_0008))
        );
        assert_eq!(
            d(at(reason::EPT_VIOLATION, 0x182)),
            VmExit::EptViolation {
                access: EptViolation::decode(0x182),
                gpa: 0x1234_5000
            }
        );
        assert_eq!(
            d(at(reason::EXCEPTION_NMI, 0)),
            VmExit::Exception {
                info: InterruptionInfo(0x8000_0b0e),
                error_code: 6
            }
        );
        assert_eq!(
            d(at(reason::APIC_WRITE, 0x1300)),
            VmExit::ApicWrite { offset: 0x300 }
        );
        assert_eq!(
            d(at(reason::VIRTUALIZED_EOI, 0x41)),
            VmExit::VirtualizedEoi { vector: 0x41 }
        );
        assert_eq!(d(at(reason::RDTSC, 0)), VmExit::Other(reason::RDTSC));
        // Read from a VMCS, the same exit.
        let mut v = crate::vmx::fake::FakeVmcs::default();
        for (f, x) in [
            (F::VM_EXIT_REASON, reason::EPT_VIOLATION as u64),
            (F::EXIT_QUALIFICATION, 0x182),
            (F::GUEST_PHYSICAL_ADDRESS, 0x1234_5000),
        ] {
            v.write(f, x);
        }
        let e = ExitInfo::read(&v);
        assert_eq!(
            VmExit::read(&v, ExitReason(e.reason), 1, 2),
            VmExit::decode(&e, 1, 2)
        );
        assert_eq!(d(at(200, 0)), VmExit::Other(200));
    }

    #[test]
    fn cr_access() {
        // mov cr0, rax / mov rbx, cr4 / clts / lmsw 0x1f
        assert_eq!(
            CrAccess::decode(0x0000),
            CrAccess::MovToCr { cr: 0, gpr: 0 }
        );
        assert_eq!(
            CrAccess::decode(0x0314),
            CrAccess::MovFromCr { cr: 4, gpr: 3 }
        );
        assert_eq!(CrAccess::decode(0x0020), CrAccess::Clts);
        assert_eq!(
            CrAccess::decode(0x001f_0030),
            CrAccess::Lmsw { source: 0x1f }
        );
        assert_eq!(
            CrAccess::decode(0x0f03),
            CrAccess::MovToCr { cr: 3, gpr: 15 }
        );
    }

    #[test]
    fn io_access() {
        // out dx, al to 0x3f8
        assert_eq!(
            IoAccess::decode(0x03f8_0000),
            IoAccess {
                port: 0x3f8,
                size: 1,
                is_in: false,
                string: false,
                rep: false
            }
        );
        // rep insd from 0x2f8
        assert_eq!(
            IoAccess::decode(0x02f8_0033 | 8),
            IoAccess {
                port: 0x2f8,
                size: 4,
                is_in: true,
                string: true,
                rep: true
            }
        );
        assert_eq!(IoAccess::decode(0x8900_0001).size, 2);
    }

    #[test]
    fn ept_violation() {
        let v = EptViolation::decode(0x182);
        assert!(v.write && !v.read && !v.fetch);
        assert_eq!(v.allowed, 0);
        assert!(v.linear_valid && v.to_final_address);
        let v = EptViolation::decode(0x1 | (5 << 3));
        assert!(v.read && v.allowed == 5 && !v.linear_valid);
    }

    #[test]
    fn interruption_info() {
        let i = InterruptionInfo::new(13, event_type::HARDWARE_EXCEPTION, true);
        assert_eq!(i.0, 0x8000_0b0d);
        assert!(i.valid() && i.has_error_code());
        assert_eq!((i.vector(), i.kind()), (13, 3));
        assert!(exception_has_error_code(14) && !exception_has_error_code(6));
    }
}
