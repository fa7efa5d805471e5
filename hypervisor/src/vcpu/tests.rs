//! The exit dispatch against a fake VMCS, fake platform and fake memory.

use super::*;
use crate::guest_mem::fake::VecMemory;
use crate::mm::paging::tests::FakeTables;
use crate::mm::paging::{translate, PageSize};
use crate::vmx::ept::Ept;
use crate::vmx::fake::FakeVmcs;
use boot::memmap::{Range, RangeSet};

struct FakePlatform {
    tables: FakeTables,
    mem: VecMemory,
    xcr0: u64,
    out: Vec<(u16, u8)>,
    flushed: Vec<u16>,
    wbinvd: u32,
    intact: bool,
}

impl Platform for FakePlatform {
    type Tables = FakeTables;
    type Mem = VecMemory;
    fn cpuid(&self, leaf: u32, _sub: u32) -> [u32; 4] {
        match leaf {
            0 => [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            1 => [0x50654, 0, (1 << 5) | (1 << 26), 0],
            _ => [0; 4],
        }
    }
    fn xcr0_supported(&self) -> u64 {
        0x7
    }
    fn set_xcr0(&mut self, value: u64) {
        self.xcr0 = value;
    }
    fn wbinvd(&mut self) {
        self.wbinvd += 1;
    }
    fn flush_vpid(&mut self, vpid: u16) {
        self.flushed.push(vpid);
    }
    fn port_out(&mut self, port: u16, value: u8) {
        self.out.push((port, value));
    }
    fn port_in(&mut self, _port: u16) -> u8 {
        0x5a
    }
    fn tables(&mut self) -> &mut FakeTables {
        &mut self.tables
    }
    fn mem(&mut self) -> &mut VecMemory {
        &mut self.mem
    }
    fn l0_intact(&self) -> bool {
        self.intact
    }
}

const POOL: Range = Range::new(0x1de0_0000, 0x1fe0_0000);

fn setup() -> (Vcpu, FakeVmcs, FakePlatform) {
    let mut tables = FakeTables::default();
    let mut l0 = RangeSet::new();
    l0.insert(POOL).unwrap();
    let regions = [(Range::new(0, POOL.start), crate::mm::layout::MemType::WriteBack)];
    let ept = Ept01::build(&mut tables, &regions, l0, POOL.end, POOL.start, PageSize::Size2M).unwrap();
    let policy = CrPolicy { cr0_forced: cr::CR0_NE, cr4_forced: cr::CR4_VMXE, cr4_allowed: 0x37_27ff & !0x6000 };
    let vcpu = Vcpu {
        regs: GuestRegs::default(),
        launched: true,
        policy,
        cpuid: cpuid::CpuidContext { abi_version: 0x1_0000, ..Default::default() },
        mtrr: MtrrShadow::capture(0x508, 39, |_| 0),
        vpid: 1,
        maxphyaddr: 39,
        ept,
        mgmt_port: Some(0x2f8),
        shutdown: ShutdownWatch::default(),
        stats: ExitStats { by_reason: [0; 80] },
        last_l0_touch: "",
    };
    let mut v = FakeVmcs::default();
    setup::write_entry_state(&mut v, &boot::loader::Entry::Multiboot { eip: 0x10_0000, ebx: 0 }, &policy);
    v.write(F::CR0_GUEST_HOST_MASK, policy.cr0_forced);
    v.write(F::CR4_GUEST_HOST_MASK, policy.cr4_forced);
    let p = FakePlatform {
        tables,
        mem: VecMemory::new(0, 0x10_0000),
        xcr0: 1,
        out: vec![],
        flushed: vec![],
        wbinvd: 0,
        intact: true,
    };
    (vcpu, v, p)
}

fn exit(v: &mut FakeVmcs, reason: u16, qualification: u64, len: u64) {
    v.write(F::VM_EXIT_REASON, reason as u64);
    v.write(F::EXIT_QUALIFICATION, qualification);
    v.write(F::VM_EXIT_INSTRUCTION_LEN, len);
    v.write(F::VM_ENTRY_INTR_INFO_FIELD, 0);
}

fn injected(v: &FakeVmcs) -> Option<(u8, Option<u64>)> {
    let i = InterruptionInfo(v.read(F::VM_ENTRY_INTR_INFO_FIELD) as u32);
    i.valid().then(|| (i.vector(), i.has_error_code().then(|| v.read(F::VM_ENTRY_EXCEPTION_ERROR_CODE))))
}

#[test]
fn cpuid_answers_and_advances() {
    let (mut c, mut v, mut p) = setup();
    c.regs.gpr[GuestRegs::RAX] = 0x4000_0000;
    exit(&mut v, reason::CPUID, 0, 2);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(c.regs.gpr[GuestRegs::RBX], u32::from_le_bytes(*b"L0Hy") as u64);
    assert_eq!(c.regs.gpr[GuestRegs::RDX], u32::from_le_bytes(*b"isor") as u64);
    assert_eq!(v.read(F::GUEST_RIP), 0x10_0002);
    c.regs.gpr[GuestRegs::RAX] = 1;
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(c.regs.gpr[GuestRegs::RCX] & (1 << 5), 0, "VMX hidden");
    assert_ne!(c.regs.gpr[GuestRegs::RCX] & (1 << 31), 0);
    assert_eq!(c.stats.by_reason[reason::CPUID as usize], 2);
}

#[test]
fn management_port_is_an_absent_device() {
    let (mut c, mut v, mut p) = setup();
    c.regs.gpr[GuestRegs::RAX] = 0x1234_5600;
    exit(&mut v, reason::IO_INSTRUCTION, 0x02fd_0008, 1); // in al, dx (0x2fd)
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(c.regs.gpr[GuestRegs::RAX], 0x1234_56ff);
    exit(&mut v, reason::IO_INSTRUCTION, 0x02f8_0000, 1); // out dx, al
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert!(p.out.is_empty(), "nothing reaches L0's UART");
    // An untrapped port exiting is L0's mistake, not resumed blindly.
    exit(&mut v, reason::IO_INSTRUCTION, 0x0060_0000, 1);
    assert!(matches!(c.handle_exit(&mut v, &mut p), Outcome::Stop(Stop::Unexpected(_))));
}

#[test]
fn shutdown_port_holds_the_word_then_passes_it() {
    let (mut c, mut v, mut p) = setup();
    for &b in b"SSxShutdown" {
        c.regs.gpr[GuestRegs::RAX] = b as u64;
        exit(&mut v, reason::IO_INSTRUCTION, 0x8900_0000, 1);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    }
    let sent: Vec<u8> = p.out.iter().map(|&(port, b)| {
        assert_eq!(port, 0x8900);
        b
    }).collect();
    assert_eq!(sent, b"SSxShutdown");
}

#[test]
fn shutdown_watch_sequences() {
    let mut w = ShutdownWatch::default();
    assert_eq!(w.feed(b'S'), ShutdownFeed::Hold);
    assert_eq!(w.feed(b'h'), ShutdownFeed::Hold);
    assert_eq!(w.feed(b'S'), ShutdownFeed::Forward { held: b"Sh", byte: None });
    assert_eq!(w.feed(b'!'), ShutdownFeed::Forward { held: b"S", byte: Some(b'!') });
    assert_eq!(w.feed(0), ShutdownFeed::Forward { held: b"", byte: Some(0) });
    for &b in b"Shutdow" {
        assert_eq!(w.feed(b), ShutdownFeed::Hold);
    }
    assert_eq!(w.feed(b'n'), ShutdownFeed::Shutdown);
}

#[test]
fn msrs() {
    let (mut c, mut v, mut p) = setup();
    c.regs.gpr[GuestRegs::RCX] = 0x3a;
    exit(&mut v, reason::RDMSR, 0, 2);
    c.handle_exit(&mut v, &mut p);
    assert_eq!((c.regs.gpr[GuestRegs::RAX], c.regs.gpr[GuestRegs::RDX]), (1, 0));
    assert_eq!(injected(&v), None);
    c.regs.gpr[GuestRegs::RCX] = 0x480;
    exit(&mut v, reason::RDMSR, 0, 2);
    let rip = v.read(F::GUEST_RIP);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), Some((13, Some(0))));
    assert_eq!(v.read(F::GUEST_RIP), rip, "a faulting RDMSR does not advance");
    c.regs.gpr[GuestRegs::RCX] = 0x2ff;
    c.regs.gpr[GuestRegs::RAX] = 0x806;
    exit(&mut v, reason::WRMSR, 0, 2);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), None);
    assert_eq!(c.mtrr.def_type, 0x806);
}

#[test]
fn cr_writes() {
    let (mut c, mut v, mut p) = setup();
    // mov cr4, rax with VMXE: VMX is not offered.
    c.regs.gpr[GuestRegs::RAX] = cr::CR4_VMXE;
    exit(&mut v, reason::CR_ACCESS, 0x04, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), Some((13, Some(0))));
    assert_eq!(v.read(F::CR4_READ_SHADOW), 0);
    // mov cr0, rbx setting NE (differs from the shadow): emulated.
    c.regs.gpr[GuestRegs::RBX] = 0x31;
    exit(&mut v, reason::CR_ACCESS, 0x300, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), None);
    assert_eq!((v.read(F::GUEST_CR0), v.read(F::CR0_READ_SHADOW)), (0x31, 0x31));
    // PAE paging: PDPTEs come from guest memory at CR3.
    p.mem.write(0x5000, &0x7001u64.to_le_bytes()).unwrap();
    v.write(F::GUEST_CR3, 0x5000);
    c.regs.gpr[GuestRegs::RAX] = 0x20;
    exit(&mut v, reason::CR_ACCESS, 0x04, 3);
    c.handle_exit(&mut v, &mut p);
    c.regs.gpr[GuestRegs::RAX] = 0x8000_0011; // clears NE in the shadow: exits
    exit(&mut v, reason::CR_ACCESS, 0x00, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), None);
    assert_eq!(v.read(F::GUEST_PDPTE0), 0x7001);
    assert_eq!(v.read(F::GUEST_CR0), 0x8000_0031);
    assert_eq!(v.read(F::VM_ENTRY_CONTROLS) & (1 << 9), 0);
    assert!(p.flushed.contains(&1));
}

#[test]
fn long_mode_entry_sets_the_entry_control() {
    let (mut c, mut v, mut p) = setup();
    v.write(F::GUEST_CR4, cr::CR4_PAE | cr::CR4_VMXE);
    v.write(F::GUEST_IA32_EFER, cr::EFER_LME);
    c.regs.gpr[GuestRegs::RAX] = 0x8000_0031;
    exit(&mut v, reason::CR_ACCESS, 0x00, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(v.read(F::GUEST_IA32_EFER), cr::EFER_LME | cr::EFER_LMA);
    assert_ne!(v.read(F::VM_ENTRY_CONTROLS) & (1 << 9), 0);
}

#[test]
fn vmx_instructions_and_vmcall_raise_ud() {
    for r in [reason::VMXON, reason::VMCALL, reason::VMREAD, reason::INVEPT, reason::GETSEC] {
        let (mut c, mut v, mut p) = setup();
        exit(&mut v, r, 0, 3);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert_eq!(injected(&v), Some((6, None)), "reason {r}");
    }
}

#[test]
fn real_mode_exceptions_carry_no_error_code() {
    let (mut c, mut v, mut p) = setup();
    v.write(F::GUEST_CR0, 0x30);
    c.regs.gpr[GuestRegs::RCX] = 0x480;
    exit(&mut v, reason::RDMSR, 0, 2);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), Some((13, None)));
}

#[test]
fn xsetbv_checks() {
    let (mut c, mut v, mut p) = setup();
    exit(&mut v, reason::XSETBV, 0, 3);
    c.regs.gpr[GuestRegs::RAX] = 3;
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), Some((6, None)), "CR4.OSXSAVE clear");
    v.write(F::GUEST_CR4, (1 << 18) | cr::CR4_VMXE);
    for bad in [2u64, 5, 0xf] {
        c.regs.gpr[GuestRegs::RAX] = bad;
        exit(&mut v, reason::XSETBV, 0, 3);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(injected(&v), Some((13, Some(0))), "{bad:#x}");
    }
    c.regs.gpr[GuestRegs::RAX] = 7;
    exit(&mut v, reason::XSETBV, 0, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!((injected(&v), p.xcr0), (None, 7));
    assert!(xcr0_valid(0xe7, 0xff) && !xcr0_valid(0x67, 0xff) && !xcr0_valid(0x0b, 0xff));
}

#[test]
fn l0_memory_access_is_backed_by_the_scratch_page() {
    let (mut c, mut v, mut p) = setup();
    exit(&mut v, reason::EPT_VIOLATION, 0x182, 0);
    v.write(F::GUEST_PHYSICAL_ADDRESS, POOL.start + 0x1234);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    let l = translate(&mut p.tables, &Ept, c.ept.root, POOL.start + 0x1000).unwrap();
    assert_eq!(l.pa, c.ept.sink);
    assert_eq!(c.ept.l0_touches, 1);
    // A violation on a present entry is not L1's doing.
    exit(&mut v, reason::EPT_VIOLATION, 0x2 | (1 << 3), 0);
    assert!(matches!(c.handle_exit(&mut v, &mut p), Outcome::Stop(Stop::Internal(_))));
}

#[test]
fn fatal_exits_stop() {
    let (mut c, mut v, mut p) = setup();
    exit(&mut v, reason::TRIPLE_FAULT, 0, 0);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Stop(Stop::TripleFault));
    exit(&mut v, reason::INVALID_GUEST_STATE, 0, 0);
    v.write(F::VM_EXIT_REASON, 0x8000_0021);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Stop(Stop::EntryFailure(ExitReason(0x8000_0021))));
    exit(&mut v, reason::EXTERNAL_INTERRUPT, 0, 0);
    assert!(matches!(c.handle_exit(&mut v, &mut p), Outcome::Stop(Stop::Unexpected(_))));
}

#[test]
fn invd_writes_back_and_hlt_halts() {
    let (mut c, mut v, mut p) = setup();
    exit(&mut v, reason::INVD, 0, 2);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(p.wbinvd, 1);
    exit(&mut v, reason::HLT, 0, 1);
    v.write(F::GUEST_INTERRUPTIBILITY_INFO, 1);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(v.read(F::GUEST_ACTIVITY_STATE), 1);
    assert_eq!(v.read(F::GUEST_INTERRUPTIBILITY_INFO), 0, "STI blocking ends with the instruction");
}
