//! Architectural register bits, named once (SDM Vol. 3A 2.5 control
//! registers, 2.2.1 EFER, 3.4.5 segment descriptors, 2.3 RFLAGS). Every
//! module that tests or builds one of these bits takes its name from here.

/// IA32_EFER (MSR 0xC000_0080).
pub const IA32_EFER: u32 = 0xc000_0080;

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_MP: u64 = 1 << 1;
pub const CR0_EM: u64 = 1 << 2;
pub const CR0_TS: u64 = 1 << 3;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_NW: u64 = 1 << 29;
pub const CR0_CD: u64 = 1 << 30;
pub const CR0_PG: u64 = 1 << 31;

pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_PGE: u64 = 1 << 7;
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
pub const CR4_LA57: u64 = 1 << 12;
pub const CR4_VMXE: u64 = 1 << 13;
pub const CR4_SMXE: u64 = 1 << 14;
pub const CR4_PCIDE: u64 = 1 << 17;
pub const CR4_OSXSAVE: u64 = 1 << 18;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;
pub const CR4_PKE: u64 = 1 << 22;

pub const EFER_SCE: u64 = 1 << 0;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

pub const RFLAGS_IF: u64 = 1 << 9;
pub const RFLAGS_DF: u64 = 1 << 10;

/// Segment access rights as VMX stores them (SDM Vol. 3C 25.4.1): the
/// descriptor's type, S, DPL, P, L, D/B and G bits, and VMX's "unusable".
pub const AR_TYPE: u64 = 0xf;
pub const AR_S: u64 = 1 << 4;
pub const AR_DPL_SHIFT: u32 = 5;
pub const AR_P: u64 = 1 << 7;
pub const AR_L: u64 = 1 << 13;
pub const AR_DB: u64 = 1 << 14;
pub const AR_G: u64 = 1 << 15;
pub const AR_UNUSABLE: u64 = 1 << 16;
