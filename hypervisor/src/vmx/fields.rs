//! VMCS field encodings (Intel SDM Vol. 3D, Appendix B) and the rules that
//! follow from an encoding (SDM 25.11.2): width, type, read-only.
//!
//! One table lists every field; the same table serves L0's own VMCSs and,
//! later, the software VMCS12 that L1 reads and writes through VMREAD and
//! VMWRITE.

use core::fmt;

/// The width bits (14:13) of an encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Bits16,
    Bits64,
    Bits32,
    Natural,
}

/// The type bits (11:10) of an encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Control,
    /// VM-exit information: read-only unless IA32_VMX_MISC[29].
    ReadOnly,
    Guest,
    Host,
}

/// A raw 32-bit field encoding as L1 passes it to VMREAD/VMWRITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Encoding(pub u32);

impl Encoding {
    /// Bit 0: 1 = the high 32 bits of a 64-bit field.
    pub const fn is_high(self) -> bool {
        self.0 & 1 != 0
    }
    pub const fn index(self) -> u32 {
        (self.0 >> 1) & 0x1ff
    }
    pub const fn field_type(self) -> FieldType {
        match (self.0 >> 10) & 3 {
            0 => FieldType::Control,
            1 => FieldType::ReadOnly,
            2 => FieldType::Guest,
            _ => FieldType::Host,
        }
    }
    pub const fn width(self) -> Width {
        match (self.0 >> 13) & 3 {
            0 => Width::Bits16,
            1 => Width::Bits64,
            2 => Width::Bits32,
            _ => Width::Natural,
        }
    }
    /// Bits 31:15 and 12 are reserved; bit 0 is only meaningful for 64-bit fields.
    pub const fn is_well_formed(self) -> bool {
        self.0 & 0xffff_9000 == 0 && (!self.is_high() || matches!(self.width(), Width::Bits64))
    }
}

macro_rules! vmcs_fields {
    ($($name:ident = $enc:expr,)*) => {
        /// Every VMCS field L0 knows, by its SDM name.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u32)]
        pub enum Field { $($name = $enc,)* }

        impl Field {
            /// All fields, in encoding order of the table.
            pub const ALL: &'static [Field] = &[$(Field::$name,)*];

            /// The field with this (full, not high) encoding.
            pub const fn from_encoding(enc: u32) -> Option<Field> {
                match enc {
                    $($enc => Some(Field::$name),)*
                    _ => None,
                }
            }

            pub const fn name(self) -> &'static str {
                match self { $(Field::$name => stringify!($name),)* }
            }
        }
    };
}

vmcs_fields! {
    // 16-bit control
    VIRTUAL_PROCESSOR_ID = 0x0000,
    POSTED_INTR_NV = 0x0002,
    EPTP_INDEX = 0x0004,
    LAST_PID_POINTER_INDEX = 0x0008,
    // 16-bit guest state
    GUEST_ES_SELECTOR = 0x0800,
    GUEST_CS_SELECTOR = 0x0802,
    GUEST_SS_SELECTOR = 0x0804,
    GUEST_DS_SELECTOR = 0x0806,
    GUEST_FS_SELECTOR = 0x0808,
    GUEST_GS_SELECTOR = 0x080a,
    GUEST_LDTR_SELECTOR = 0x080c,
    GUEST_TR_SELECTOR = 0x080e,
    GUEST_INTR_STATUS = 0x0810,
    GUEST_PML_INDEX = 0x0812,
    // 16-bit host state
    HOST_ES_SELECTOR = 0x0c00,
    HOST_CS_SELECTOR = 0x0c02,
    HOST_SS_SELECTOR = 0x0c04,
    HOST_DS_SELECTOR = 0x0c06,
    HOST_FS_SELECTOR = 0x0c08,
    HOST_GS_SELECTOR = 0x0c0a,
    HOST_TR_SELECTOR = 0x0c0c,
    // 64-bit control
    IO_BITMAP_A = 0x2000,
    IO_BITMAP_B = 0x2002,
    MSR_BITMAP = 0x2004,
    VM_EXIT_MSR_STORE_ADDR = 0x2006,
    VM_EXIT_MSR_LOAD_ADDR = 0x2008,
    VM_ENTRY_MSR_LOAD_ADDR = 0x200a,
    EXECUTIVE_VMCS_POINTER = 0x200c,
    PML_ADDRESS = 0x200e,
    TSC_OFFSET = 0x2010,
    VIRTUAL_APIC_PAGE_ADDR = 0x2012,
    APIC_ACCESS_ADDR = 0x2014,
    POSTED_INTR_DESC_ADDR = 0x2016,
    VM_FUNCTION_CONTROL = 0x2018,
    EPT_POINTER = 0x201a,
    EOI_EXIT_BITMAP0 = 0x201c,
    EOI_EXIT_BITMAP1 = 0x201e,
    EOI_EXIT_BITMAP2 = 0x2020,
    EOI_EXIT_BITMAP3 = 0x2022,
    EPTP_LIST_ADDR = 0x2024,
    VMREAD_BITMAP = 0x2026,
    VMWRITE_BITMAP = 0x2028,
    VE_INFO_ADDR = 0x202a,
    XSS_EXIT_BITMAP = 0x202c,
    ENCLS_EXITING_BITMAP = 0x202e,
    TSC_MULTIPLIER = 0x2032,
    TERTIARY_VM_EXEC_CONTROL = 0x2034,
    PID_POINTER_TABLE = 0x2042,
    // 64-bit read-only data
    GUEST_PHYSICAL_ADDRESS = 0x2400,
    // 64-bit guest state
    VMCS_LINK_POINTER = 0x2800,
    GUEST_IA32_DEBUGCTL = 0x2802,
    GUEST_IA32_PAT = 0x2804,
    GUEST_IA32_EFER = 0x2806,
    GUEST_IA32_PERF_GLOBAL_CTRL = 0x2808,
    GUEST_PDPTE0 = 0x280a,
    GUEST_PDPTE1 = 0x280c,
    GUEST_PDPTE2 = 0x280e,
    GUEST_PDPTE3 = 0x2810,
    GUEST_IA32_BNDCFGS = 0x2812,
    GUEST_IA32_RTIT_CTL = 0x2814,
    GUEST_IA32_PKRS = 0x2818,
    // 64-bit host state
    HOST_IA32_PAT = 0x2c00,
    HOST_IA32_EFER = 0x2c02,
    HOST_IA32_PERF_GLOBAL_CTRL = 0x2c04,
    HOST_IA32_PKRS = 0x2c06,
    // 32-bit control
    PIN_BASED_VM_EXEC_CONTROL = 0x4000,
    CPU_BASED_VM_EXEC_CONTROL = 0x4002,
    EXCEPTION_BITMAP = 0x4004,
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006,
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008,
    CR3_TARGET_COUNT = 0x400a,
    VM_EXIT_CONTROLS = 0x400c,
    VM_EXIT_MSR_STORE_COUNT = 0x400e,
    VM_EXIT_MSR_LOAD_COUNT = 0x4010,
    VM_ENTRY_CONTROLS = 0x4012,
    VM_ENTRY_MSR_LOAD_COUNT = 0x4014,
    VM_ENTRY_INTR_INFO_FIELD = 0x4016,
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018,
    VM_ENTRY_INSTRUCTION_LEN = 0x401a,
    TPR_THRESHOLD = 0x401c,
    SECONDARY_VM_EXEC_CONTROL = 0x401e,
    PLE_GAP = 0x4020,
    PLE_WINDOW = 0x4022,
    // 32-bit read-only data
    VM_INSTRUCTION_ERROR = 0x4400,
    VM_EXIT_REASON = 0x4402,
    VM_EXIT_INTR_INFO = 0x4404,
    VM_EXIT_INTR_ERROR_CODE = 0x4406,
    IDT_VECTORING_INFO_FIELD = 0x4408,
    IDT_VECTORING_ERROR_CODE = 0x440a,
    VM_EXIT_INSTRUCTION_LEN = 0x440c,
    VMX_INSTRUCTION_INFO = 0x440e,
    // 32-bit guest state
    GUEST_ES_LIMIT = 0x4800,
    GUEST_CS_LIMIT = 0x4802,
    GUEST_SS_LIMIT = 0x4804,
    GUEST_DS_LIMIT = 0x4806,
    GUEST_FS_LIMIT = 0x4808,
    GUEST_GS_LIMIT = 0x480a,
    GUEST_LDTR_LIMIT = 0x480c,
    GUEST_TR_LIMIT = 0x480e,
    GUEST_GDTR_LIMIT = 0x4810,
    GUEST_IDTR_LIMIT = 0x4812,
    GUEST_ES_AR_BYTES = 0x4814,
    GUEST_CS_AR_BYTES = 0x4816,
    GUEST_SS_AR_BYTES = 0x4818,
    GUEST_DS_AR_BYTES = 0x481a,
    GUEST_FS_AR_BYTES = 0x481c,
    GUEST_GS_AR_BYTES = 0x481e,
    GUEST_LDTR_AR_BYTES = 0x4820,
    GUEST_TR_AR_BYTES = 0x4822,
    GUEST_INTERRUPTIBILITY_INFO = 0x4824,
    GUEST_ACTIVITY_STATE = 0x4826,
    GUEST_SMBASE = 0x4828,
    GUEST_SYSENTER_CS = 0x482a,
    VMX_PREEMPTION_TIMER_VALUE = 0x482e,
    // 32-bit host state
    HOST_IA32_SYSENTER_CS = 0x4c00,
    // natural-width control
    CR0_GUEST_HOST_MASK = 0x6000,
    CR4_GUEST_HOST_MASK = 0x6002,
    CR0_READ_SHADOW = 0x6004,
    CR4_READ_SHADOW = 0x6006,
    CR3_TARGET_VALUE0 = 0x6008,
    CR3_TARGET_VALUE1 = 0x600a,
    CR3_TARGET_VALUE2 = 0x600c,
    CR3_TARGET_VALUE3 = 0x600e,
    // natural-width read-only data
    EXIT_QUALIFICATION = 0x6400,
    IO_RCX = 0x6402,
    IO_RSI = 0x6404,
    IO_RDI = 0x6406,
    IO_RIP = 0x6408,
    GUEST_LINEAR_ADDRESS = 0x640a,
    // natural-width guest state
    GUEST_CR0 = 0x6800,
    GUEST_CR3 = 0x6802,
    GUEST_CR4 = 0x6804,
    GUEST_ES_BASE = 0x6806,
    GUEST_CS_BASE = 0x6808,
    GUEST_SS_BASE = 0x680a,
    GUEST_DS_BASE = 0x680c,
    GUEST_FS_BASE = 0x680e,
    GUEST_GS_BASE = 0x6810,
    GUEST_LDTR_BASE = 0x6812,
    GUEST_TR_BASE = 0x6814,
    GUEST_GDTR_BASE = 0x6816,
    GUEST_IDTR_BASE = 0x6818,
    GUEST_DR7 = 0x681a,
    GUEST_RSP = 0x681c,
    GUEST_RIP = 0x681e,
    GUEST_RFLAGS = 0x6820,
    GUEST_PENDING_DBG_EXCEPTIONS = 0x6822,
    GUEST_SYSENTER_ESP = 0x6824,
    GUEST_SYSENTER_EIP = 0x6826,
    GUEST_S_CET = 0x6828,
    GUEST_SSP = 0x682a,
    GUEST_INTR_SSP_TABLE = 0x682c,
    // natural-width host state
    HOST_CR0 = 0x6c00,
    HOST_CR3 = 0x6c02,
    HOST_CR4 = 0x6c04,
    HOST_FS_BASE = 0x6c06,
    HOST_GS_BASE = 0x6c08,
    HOST_TR_BASE = 0x6c0a,
    HOST_GDTR_BASE = 0x6c0c,
    HOST_IDTR_BASE = 0x6c0e,
    HOST_IA32_SYSENTER_ESP = 0x6c10,
    HOST_IA32_SYSENTER_EIP = 0x6c12,
    HOST_RSP = 0x6c14,
    HOST_RIP = 0x6c16,
    HOST_S_CET = 0x6c18,
    HOST_SSP = 0x6c1a,
    HOST_INTR_SSP_TABLE = 0x6c1c,
}

impl Field {
    pub const fn encoding(self) -> Encoding {
        Encoding(self as u32)
    }
    pub const fn width(self) -> Width {
        self.encoding().width()
    }
    pub const fn field_type(self) -> FieldType {
        self.encoding().field_type()
    }
    pub const fn is_read_only(self) -> bool {
        matches!(self.field_type(), FieldType::ReadOnly)
    }
    /// The bits a field of this width holds, for truncating writes.
    pub const fn mask(self) -> u64 {
        match self.width() {
            Width::Bits16 => 0xffff,
            Width::Bits32 => 0xffff_ffff,
            Width::Bits64 | Width::Natural => u64::MAX,
        }
    }
}

/// A guest segment register's four VMCS fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentFields {
    pub selector: Field,
    pub base: Field,
    pub limit: Field,
    pub ar: Field,
}

const fn seg(selector: Field, base: Field, limit: Field, ar: Field) -> SegmentFields {
    SegmentFields {
        selector,
        base,
        limit,
        ar,
    }
}

/// Indices into [`GUEST_SEGMENTS`].
pub mod seg {
    pub const ES: usize = 0;
    pub const CS: usize = 1;
    pub const SS: usize = 2;
    pub const DS: usize = 3;
    pub const FS: usize = 4;
    pub const GS: usize = 5;
    pub const LDTR: usize = 6;
    pub const TR: usize = 7;
}

/// The guest segment registers in the SDM's numbering (ES, CS, SS, DS, FS,
/// GS: the segment-register field of the VM-exit instruction information,
/// SDM Vol. 3C 28.2.5), then LDTR and TR.
pub const GUEST_SEGMENTS: [SegmentFields; 8] = {
    use Field as F;
    [
        seg(
            F::GUEST_ES_SELECTOR,
            F::GUEST_ES_BASE,
            F::GUEST_ES_LIMIT,
            F::GUEST_ES_AR_BYTES,
        ),
        seg(
            F::GUEST_CS_SELECTOR,
            F::GUEST_CS_BASE,
            F::GUEST_CS_LIMIT,
            F::GUEST_CS_AR_BYTES,
        ),
        seg(
            F::GUEST_SS_SELECTOR,
            F::GUEST_SS_BASE,
            F::GUEST_SS_LIMIT,
            F::GUEST_SS_AR_BYTES,
        ),
        seg(
            F::GUEST_DS_SELECTOR,
            F::GUEST_DS_BASE,
            F::GUEST_DS_LIMIT,
            F::GUEST_DS_AR_BYTES,
        ),
        seg(
            F::GUEST_FS_SELECTOR,
            F::GUEST_FS_BASE,
            F::GUEST_FS_LIMIT,
            F::GUEST_FS_AR_BYTES,
        ),
        seg(
            F::GUEST_GS_SELECTOR,
            F::GUEST_GS_BASE,
            F::GUEST_GS_LIMIT,
            F::GUEST_GS_AR_BYTES,
        ),
        seg(
            F::GUEST_LDTR_SELECTOR,
            F::GUEST_LDTR_BASE,
            F::GUEST_LDTR_LIMIT,
            F::GUEST_LDTR_AR_BYTES,
        ),
        seg(
            F::GUEST_TR_SELECTOR,
            F::GUEST_TR_BASE,
            F::GUEST_TR_LIMIT,
            F::GUEST_TR_AR_BYTES,
        ),
    ]
};

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#06x})", self.name(), *self as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_encoding_bits() {
        let e = Field::GUEST_RIP.encoding();
        assert_eq!(
            (e.width(), e.field_type(), e.index()),
            (Width::Natural, FieldType::Guest, 0xf)
        );
        let e = Field::VM_EXIT_REASON.encoding();
        assert_eq!(
            (e.width(), e.field_type()),
            (Width::Bits32, FieldType::ReadOnly)
        );
        let e = Field::EPT_POINTER.encoding();
        assert_eq!(
            (e.width(), e.field_type()),
            (Width::Bits64, FieldType::Control)
        );
        let e = Field::HOST_TR_SELECTOR.encoding();
        assert_eq!(
            (e.width(), e.field_type()),
            (Width::Bits16, FieldType::Host)
        );
    }

    #[test]
    fn every_table_entry_is_consistent() {
        for &f in Field::ALL {
            let e = f.encoding();
            assert!(e.is_well_formed(), "{f}");
            assert!(!e.is_high(), "{f}: table holds full encodings only");
            assert_eq!(Field::from_encoding(e.0), Some(f), "{f}");
            assert_eq!(f.is_read_only(), e.field_type() == FieldType::ReadOnly);
        }
        // No duplicates.
        let mut v: Vec<u32> = Field::ALL.iter().map(|&f| f as u32).collect();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), Field::ALL.len());
    }

    #[test]
    fn high_access_and_reserved_bits() {
        assert!(Encoding(0x201b).is_well_formed()); // EPT_POINTER_HIGH
        assert!(!Encoding(0x681f).is_well_formed()); // "high" of a natural field
        assert!(!Encoding(0x0000_8000).is_well_formed());
        assert!(!Encoding(0x1000).is_well_formed());
        assert_eq!(Field::from_encoding(0x201b), None);
    }

    #[test]
    fn masks_follow_width() {
        assert_eq!(Field::GUEST_CS_SELECTOR.mask(), 0xffff);
        assert_eq!(Field::GUEST_CS_LIMIT.mask(), 0xffff_ffff);
        assert_eq!(Field::GUEST_RIP.mask(), u64::MAX);
    }
}
