//! The exit dispatch against a fake VMCS, fake platform and fake memory.

use super::*;
use crate::guest_mem::fake::VecMemory;
use crate::machine::ept01::Ept01;
use crate::machine::shared::SharedMachine;
use crate::machine::shutdown::{ShutdownFeed, ShutdownWatch};
use crate::mm::paging::tests::FakeTables;
use crate::mm::paging::{translate, PageSize};
use crate::nested::{Level, Nested, Vmcs02Pages};
use crate::vmx::ept::Ept;
use crate::vmx::fake::FakeVmcs;
use crate::vmx::guest_cr::CrPolicy;
use boot::memmap::{Range, RangeSet};
use std::collections::BTreeMap;

pub struct FakePlatform {
    pub tables: FakeTables,
    pub mem: VecMemory,
    pub xcr0: u64,
    pub out: Vec<(u16, u8)>,
    pub flushed: Vec<u16>,
    pub wbinvd: u32,
    /// CR0.CD | CR0.NW as L0 last loaded them into the CPU.
    pub cache_mode: Option<u64>,
    pub intact: bool,
    pub pages: BTreeMap<u64, Box<[u64; 512]>>,
    pub msrs: BTreeMap<u32, u64>,
    pub inept_all: u32,
    pub cr2: u64,
    /// What the operator sends, and what L0 sent back.
    pub mgmt_in: Vec<u8>,
    pub mgmt_out: Vec<String>,
    /// IPIs sent (dest, vector) and EOIs written.
    pub ipis: Vec<(u32, u8)>,
    pub eois: u32,
    /// The xAPIC page's registers, and L0's writes of them.
    pub xapic: BTreeMap<u64, u32>,
    pub xapic_writes: Vec<(u64, u32)>,
}

/// VMCS01 and VMCS02 as two fake VMCSs; derefs to the current one.
pub struct FakeSet {
    pub v01: FakeVmcs,
    pub v02: FakeVmcs,
    pub sh: FakeVmcs,
    pub cur: Level,
}

impl VmcsSet for FakeSet {
    type V = FakeVmcs;
    fn current(&mut self) -> &mut FakeVmcs {
        match self.cur {
            Level::L1 => &mut self.v01,
            Level::L2 => &mut self.v02,
            Level::Shadow => &mut self.sh,
        }
    }
    fn select(&mut self, which: Level) {
        self.cur = which;
    }
    fn selected(&self) -> Level {
        self.cur
    }
}

impl std::ops::Deref for FakeSet {
    type Target = FakeVmcs;
    fn deref(&self) -> &FakeVmcs {
        match self.cur {
            Level::L1 => &self.v01,
            Level::L2 => &self.v02,
            Level::Shadow => &self.sh,
        }
    }
}

impl std::ops::DerefMut for FakeSet {
    fn deref_mut(&mut self) -> &mut FakeVmcs {
        self.current()
    }
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
    fn set_cache_mode(&mut self, bits: u64) {
        self.cache_mode = Some(bits);
    }
    fn flush_vpid(&mut self, vpid: u16) {
        self.flushed.push(vpid);
    }
    fn io_out(&mut self, port: u16, size: u8, value: u32) {
        for i in 0..size {
            self.out.push((port + i as u16, (value >> (8 * i)) as u8));
        }
    }
    fn io_in(&mut self, _port: u16, size: u8) -> u32 {
        0x5a5a_5a5a & ((1u64 << (8 * size)) - 1) as u32
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
    fn l0_data_intact(&self) -> bool {
        self.intact
    }
    fn page(&mut self, phys: u64) -> &mut [u64; 512] {
        self.pages.entry(phys).or_insert_with(|| Box::new([0; 512]))
    }
    fn read_msr(&mut self, msr: u32) -> Option<u64> {
        self.msrs.get(&msr).copied()
    }
    fn write_msr(&mut self, msr: u32, value: u64) -> bool {
        match self.msrs.get_mut(&msr) {
            Some(m) => {
                *m = value;
                true
            }
            None => false,
        }
    }
    fn invept_all(&mut self) {
        self.inept_all += 1;
    }
    fn set_cr2(&mut self, value: u64) {
        self.cr2 = value;
    }
    fn mgmt_rx(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.mgmt_in.len());
        buf[..n].copy_from_slice(&self.mgmt_in[..n]);
        self.mgmt_in.drain(..n);
        n
    }
    fn mgmt_send(&mut self, line: &str) {
        self.mgmt_out.push(line.to_string());
    }
    fn send_ipi(&mut self, dest: u32, vector: u8) -> bool {
        self.ipis.push((dest, vector));
        true
    }
    fn apic_eoi(&mut self) -> bool {
        self.eois += 1;
        true
    }
    fn xapic_read(&mut self, offset: u64) -> Option<u32> {
        Some(self.xapic.get(&offset).copied().unwrap_or(0))
    }
    fn xapic_write(&mut self, offset: u64, value: u32) -> bool {
        self.xapic_writes.push((offset, value));
        self.xapic.insert(offset, value);
        true
    }
}

const POOL: Range = Range::new(0x1de0_0000, 0x1fe0_0000);

pub const PAGES: Vmcs02Pages = Vmcs02Pages {
    io_all: 0x7000_2000,
    io_l0: 0x7000_4000,
    msr02: 0x7000_6000,
    vapic_unbacked: 0x7000_7000,
};

/// A vCPU with the machine it runs on, paired as start.rs pairs them.
pub struct Cpu {
    pub vcpu: Vcpu,
    pub m: SharedMachine,
}

impl core::ops::Deref for Cpu {
    type Target = Vcpu;
    fn deref(&self) -> &Vcpu {
        &self.vcpu
    }
}

impl core::ops::DerefMut for Cpu {
    fn deref_mut(&mut self) -> &mut Vcpu {
        &mut self.vcpu
    }
}

impl Cpu {
    pub fn handle_exit<S: VmcsSet, P: Platform>(&mut self, vs: &mut S, p: &mut P) -> Outcome {
        self.vcpu.handle_exit(&mut self.m.lock(), vs, p)
    }
    /// An exit, and whether its handling took the machine's lock.
    pub fn exit_locks<S: VmcsSet, P: Platform>(&mut self, vs: &mut S, p: &mut P) -> bool {
        let mut m = self.m.lock();
        self.vcpu.handle_exit(&mut m, vs, p);
        m.taken()
    }
    pub fn poll_console<S: VmcsSet, P: Platform>(&mut self, vs: &mut S, p: &mut P) {
        self.vcpu.poll_console(&mut self.m.lock(), vs, p)
    }
}

pub fn setup() -> (Cpu, FakeSet, FakePlatform) {
    let mut tables = FakeTables::default();
    let mut l0 = RangeSet::new();
    l0.insert(POOL).unwrap();
    let regions = [(
        Range::new(0, POOL.start),
        crate::mm::layout::MemType::WriteBack,
    )];
    let ept = Ept01::build(
        &mut tables,
        &regions,
        l0,
        POOL.end,
        POOL.start,
        PageSize::Size2M,
        None,
    )
    .unwrap();
    let policy = CrPolicy {
        cr0_forced: crate::regs::CR0_NE,
        cr4_forced: crate::regs::CR4_VMXE,
        cr4_allowed: 0x37_27ff & !0x6000,
    };
    let vcpu = Vcpu {
        regs: GuestRegs::default(),
        launched: true,
        cpuid: cpuid::CpuidContext::default(),
        mtrr: MtrrShadow::capture(0x508, 39, |_| 0),
        host: HostVmx {
            caps: crate::vmx::caps::tests::bochs_skylake(),
            policy,
            eptp01: crate::vmx::ept::eptp(0, false),
            msr_bitmap01: 0x7000_8000,
            vmcs_phys: [0x7100_0000, 0x7100_1000, 0x7100_2000],
            vpid: 1,
            maxphyaddr: 39,
            l0_timer: None,
        },
        stats: ExitStats::default(),
        l2_stats: ExitStats::default(),
        last_l0_touch: "",
        nested: Nested::new(crate::nested::testutil::caps(), 39, PAGES, false),
        poll_ticks: 1 << 20,
        window_requested: false,
        waiting_for_sipi: false,
        saves_smi_blocking: false,
        counts: None,
        noted_entry: None,
        com_vm: None,
        serves_console: true,
    };
    let mut v = FakeVmcs::default();
    setup::write_entry_state(
        &mut v,
        &boot::loader::Entry::Multiboot {
            eip: 0x10_0000,
            ebx: 0,
        },
        &policy,
    );
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
        pages: BTreeMap::new(),
        msrs: BTreeMap::new(),
        inept_all: 0,
        cr2: 0,
        mgmt_in: Vec::new(),
        mgmt_out: Vec::new(),
        ipis: Vec::new(),
        eois: 0,
        xapic: BTreeMap::new(),
        xapic_writes: Vec::new(),
        cache_mode: None,
    };
    let m = SharedMachine::new(Machine {
        ept,
        shadow: crate::shadow::Shadow::new(Some(shadow_devices::SealKey::new(&[1; 32])), |b| {
            b.fill(0x42);
            true
        }),
        console: crate::console::Console::default(),
        l0_ports: crate::vcpu::l0_ports::L0Ports::new(Some(0x2f8)),
        shutdown: ShutdownWatch::default(),
        ap_wait: Default::default(),
        vmcs12_owners: Default::default(),
        vmx_operation: Default::default(),
        cpus: alloc::vec::Vec::new(),
        bios: None,
    });
    (
        Cpu { vcpu, m },
        FakeSet {
            v01: v,
            v02: FakeVmcs::default(),
            sh: FakeVmcs::default(),
            cur: Level::L1,
        },
        p,
    )
}

fn exit(v: &mut FakeVmcs, reason: u16, qualification: u64, len: u64) {
    v.write(F::VM_EXIT_REASON, reason as u64);
    v.write(F::EXIT_QUALIFICATION, qualification);
    v.write(F::VM_EXIT_INSTRUCTION_LEN, len);
    v.write(F::VM_ENTRY_INTR_INFO_FIELD, 0);
}

/// L1's memory operand of a VMPTRLD/VMCLEAR: the pointer at linear
/// 0x20_0000 ([RAX], identity-mapped by 2 MiB pages).
pub fn vmcs_pointer_operand(c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform, ptr: u64) {
    c.regs.gpr[GuestRegs::RAX] = 0x20_0000;
    p.mem.write(0x20_0000, &ptr.to_le_bytes()).unwrap();
    v.v01
        .write(F::VMX_INSTRUCTION_INFO, (3 << 15 | 2 << 7 | 1 << 22) as u64);
    p.mem.write(0x1000, &(0x2000u64 | 3).to_le_bytes()).unwrap();
    p.mem.write(0x2000, &(0x3000u64 | 3).to_le_bytes()).unwrap();
    p.mem
        .write(0x3000 + 8, &(0x20_0000u64 | 0x83).to_le_bytes())
        .unwrap();
    v.v01.write(F::GUEST_CR3, 0x1000);
}

fn injected(v: &FakeVmcs) -> Option<(u8, Option<u64>)> {
    let i = InterruptionInfo(v.read(F::VM_ENTRY_INTR_INFO_FIELD) as u32);
    i.valid().then(|| {
        (
            i.vector(),
            i.has_error_code()
                .then(|| v.read(F::VM_ENTRY_EXCEPTION_ERROR_CODE)),
        )
    })
}

#[test]
fn cpuid_answers_and_advances() {
    let (mut c, mut v, mut p) = setup();
    c.regs.gpr[GuestRegs::RAX] = 0x4000_0000;
    exit(&mut v, reason::CPUID, 0, 2);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(
        c.regs.gpr[GuestRegs::RBX],
        u32::from_le_bytes(*b"L0Hy") as u64
    );
    assert_eq!(
        c.regs.gpr[GuestRegs::RDX],
        u32::from_le_bytes(*b"isor") as u64
    );
    assert_eq!(v.read(F::GUEST_RIP), 0x10_0002);
    c.regs.gpr[GuestRegs::RAX] = 1;
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(c.regs.gpr[GuestRegs::RCX] & (1 << 5), 0, "VMX hidden");
    assert_ne!(c.regs.gpr[GuestRegs::RCX] & (1 << 31), 0);
    assert_eq!(c.stats.by_reason[reason::CPUID as usize], 2);
}

#[test]
fn stats_are_answered_on_the_management_line() {
    let (mut c, mut v, mut p) = setup();
    c.vcpu.register(c.m.get_mut(), 0);
    c.m.get_mut().register_cpu(1).count(true, 48, 0x1000);
    c.regs.gpr[GuestRegs::RAX] = 0;
    exit(&mut v, reason::CPUID, 0, 2);
    c.handle_exit(&mut v, &mut p);
    c.vcpu.account_exit(false, reason::CPUID as usize, 0, 1);
    let cmd = shadow_devices::mgmt::frame(format_args!("stats"));
    p.mgmt_in.extend_from_slice(cmd.as_bytes());
    c.poll_console(&mut v, &mut p);
    let kinds: Vec<&str> = p
        .mgmt_out
        .iter()
        .filter_map(|l| shadow_devices::mgmt::parse_frame(l).ok())
        .filter_map(|b| b.strip_prefix("stats "))
        .map(|b| b.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "now",
            "l1",
            "l1-recent",
            "l1-vmcs-exits",
            "l2",
            "l2-recent",
            "log",
            "cpu",
            "cpu"
        ]
    );
    // Every CPU, not only the one that serves the line.
    let cpus: Vec<&String> = p
        .mgmt_out
        .iter()
        .filter(|l| l.contains("stats cpu"))
        .collect();
    assert!(
        cpus[0].contains("CPU APIC ID 0x0: L1 1 exits, L2 0 exits, last in L1"),
        "{cpus:?}"
    );
    assert!(
        cpus[1].contains("CPU APIC ID 0x1: L1 0 exits, L2 1 exits, last in L2"),
        "{cpus:?}"
    );
    assert!(
        p.mgmt_out[0].contains("in L1, 0 user VMs"),
        "{:?}",
        p.mgmt_out
    );
    assert!(p.mgmt_out[1].contains("CPUID"), "{:?}", p.mgmt_out);
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
    // The in-band BMC interface (IPMI KCS) is absent too.
    exit(&mut v, reason::IO_INSTRUCTION, 0x0ca3_0008, 1); // in al, dx (0xca3)
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(c.regs.gpr[GuestRegs::RAX], 0x1234_56ff);
    exit(&mut v, reason::IO_INSTRUCTION, 0x0ca2_0000, 1);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert!(p.out.is_empty(), "nothing reaches the BMC");
    // A BMC the firmware's SPMI table puts elsewhere (KCS, 32-bit
    // registers at 0xca8: 8 ports) is absent in the same way.
    c.m.get_mut().l0_ports.add_bmc(0xca8, 8, "IPMI KCS");
    exit(&mut v, reason::IO_INSTRUCTION, 0x0cac_000b, 4); // in eax, dx (0xcac)
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(c.regs.gpr[GuestRegs::RAX], 0xffff_ffff);
    exit(&mut v, reason::IO_INSTRUCTION, 0x0caf_0000, 1);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert!(p.out.is_empty(), "nothing reaches that BMC either");
    // An untrapped port exiting is L0's mistake, not resumed blindly.
    exit(&mut v, reason::IO_INSTRUCTION, 0x0060_0000, 1);
    assert!(matches!(
        c.handle_exit(&mut v, &mut p),
        Outcome::Stop(Stop::Unexpected(_))
    ));
}

#[test]
fn shutdown_port_holds_the_word_then_passes_it() {
    let (mut c, mut v, mut p) = setup();
    for &b in b"SSxShutdown" {
        c.regs.gpr[GuestRegs::RAX] = b as u64;
        exit(&mut v, reason::IO_INSTRUCTION, 0x8900_0000, 1);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    }
    let sent: Vec<u8> = p
        .out
        .iter()
        .map(|&(port, b)| {
            assert_eq!(port, 0x8900);
            b
        })
        .collect();
    assert_eq!(sent, b"SSxShutdown");
}

#[test]
fn shutdown_watch_sequences() {
    let mut w = ShutdownWatch::default();
    assert_eq!(w.feed(b'S'), ShutdownFeed::Hold);
    assert_eq!(w.feed(b'h'), ShutdownFeed::Hold);
    assert_eq!(
        w.feed(b'S'),
        ShutdownFeed::Forward {
            held: b"Sh",
            byte: None
        }
    );
    assert_eq!(
        w.feed(b'!'),
        ShutdownFeed::Forward {
            held: b"S",
            byte: Some(b'!')
        }
    );
    assert_eq!(
        w.feed(0),
        ShutdownFeed::Forward {
            held: b"",
            byte: Some(0)
        }
    );
    for &b in b"Shutdow" {
        assert_eq!(w.feed(b), ShutdownFeed::Hold);
    }
    assert_eq!(w.feed(b'n'), ShutdownFeed::Shutdown);
}

#[test]
fn xss_cannot_name_pt_or_lbr_state() {
    let (mut c, mut v, mut p) = setup();
    p.msrs.insert(0xda0, 0);
    c.regs.gpr[GuestRegs::RCX] = 0xda0;
    c.regs.gpr[GuestRegs::RAX] = 1 << 8; // PT
    exit(&mut v, reason::WRMSR, 0, 2);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), Some((13, Some(0))));
    assert_eq!(p.msrs[&0xda0], 0, "XRSTORS cannot load PT state");
    c.regs.gpr[GuestRegs::RAX] = 1 << 11 | 1 << 12; // CET
    exit(&mut v, reason::WRMSR, 0, 2);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), None);
    assert_eq!(p.msrs[&0xda0], 0x1800, "other components reach the CPU");
}

/// (That L1's performance-monitoring MSRs exit at all is the bitmap's
/// business: `msr::tests::perfmon_and_trace_msrs_exit_and_fault`.)
#[test]
fn rdpmc_faults_for_l1() {
    let (mut c, mut v, mut p) = setup();
    exit(&mut v, reason::RDPMC, 0, 2);
    let rip = v.read(F::GUEST_RIP);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(injected(&v), Some((13, Some(0))));
    assert_eq!(v.read(F::GUEST_RIP), rip);
}

#[test]
fn msrs() {
    let (mut c, mut v, mut p) = setup();
    c.regs.gpr[GuestRegs::RCX] = 0x3a;
    exit(&mut v, reason::RDMSR, 0, 2);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(
        (c.regs.gpr[GuestRegs::RAX], c.regs.gpr[GuestRegs::RDX]),
        (1, 0)
    );
    assert_eq!(injected(&v), None);
    c.regs.gpr[GuestRegs::RCX] = 0x480;
    exit(&mut v, reason::RDMSR, 0, 2);
    let rip = v.read(F::GUEST_RIP);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), Some((13, Some(0))));
    assert_eq!(
        v.read(F::GUEST_RIP),
        rip,
        "a faulting RDMSR does not advance"
    );
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
    c.regs.gpr[GuestRegs::RAX] = crate::regs::CR4_VMXE;
    exit(&mut v, reason::CR_ACCESS, 0x04, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), Some((13, Some(0))));
    assert_eq!(v.read(F::CR4_READ_SHADOW), 0);
    // mov cr0, rbx setting NE (differs from the shadow): emulated.
    c.regs.gpr[GuestRegs::RBX] = 0x31;
    exit(&mut v, reason::CR_ACCESS, 0x300, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), None);
    assert_eq!(
        (v.read(F::GUEST_CR0), v.read(F::CR0_READ_SHADOW)),
        (0x31, 0x31)
    );
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
fn emulated_cr0_writes_carry_the_cache_mode_to_the_cpu() {
    let (mut c, mut v, mut p) = setup();
    v.write(F::GUEST_CR0, 0x11);
    // mov cr0, rax: CD with NE (NE differs from the shadow, so it exits).
    c.regs.gpr[GuestRegs::RAX] = 0x4000_0031;
    exit(&mut v, reason::CR_ACCESS, 0x00, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), None);
    assert_eq!(p.cache_mode, Some(crate::regs::CR0_CD));
    // NW without CD: #GP, and the CPU's cache mode stays.
    c.regs.gpr[GuestRegs::RAX] = 0x2000_0031;
    exit(&mut v, reason::CR_ACCESS, 0x00, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(injected(&v), Some((13, Some(0))));
    assert_eq!(p.cache_mode, Some(crate::regs::CR0_CD));
    // Caches back on.
    c.regs.gpr[GuestRegs::RAX] = 0x11;
    exit(&mut v, reason::CR_ACCESS, 0x00, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(p.cache_mode, Some(0));
}

#[test]
fn long_mode_entry_sets_the_entry_control() {
    let (mut c, mut v, mut p) = setup();
    v.write(F::GUEST_CR4, crate::regs::CR4_PAE | crate::regs::CR4_VMXE);
    v.write(F::GUEST_IA32_EFER, crate::regs::EFER_LME);
    c.regs.gpr[GuestRegs::RAX] = 0x8000_0031;
    exit(&mut v, reason::CR_ACCESS, 0x00, 3);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(
        v.read(F::GUEST_IA32_EFER),
        crate::regs::EFER_LME | crate::regs::EFER_LMA
    );
    assert_ne!(v.read(F::VM_ENTRY_CONTROLS) & (1 << 9), 0);
}

#[test]
fn vmx_instructions_and_vmcall_raise_ud() {
    for r in [
        reason::VMXON,
        reason::VMCALL,
        reason::VMREAD,
        reason::INVEPT,
        reason::GETSEC,
    ] {
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
    v.write(F::GUEST_CR4, (1 << 18) | crate::regs::CR4_VMXE);
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
    let l = translate(
        &mut p.tables,
        &Ept,
        c.m.get_mut().ept.root,
        POOL.start + 0x1000,
    )
    .unwrap();
    assert_eq!(l.pa, c.m.get_mut().ept.sink);
    assert_eq!(c.m.get_mut().ept.l0_touches, 1);
    // A violation on a present entry is not L1's doing.
    exit(&mut v, reason::EPT_VIOLATION, 0x2 | (1 << 3), 0);
    assert!(matches!(
        c.handle_exit(&mut v, &mut p),
        Outcome::Stop(Stop::Internal(_))
    ));
}

#[test]
fn inits_for_a_waiting_vcpu_are_kept_from_the_apic_the_rest_goes_through() {
    use crate::machine::ap_wait::X2APIC_ICR;
    let (mut c, mut v, mut p) = setup();
    c.m.get_mut().ept.apic_page = Some(0xfee0_0000);
    c.m.get_mut().ap_wait.wait(1);
    // L1 in protected mode without paging: mov %esi,(%rax) at 0x7000.
    v.write(F::GUEST_CR0, crate::regs::CR0_PE | crate::regs::CR0_NE);
    v.write(F::GUEST_RIP, 0x7000);
    p.mem.write(0x7000, &[0x89, 0x30]).unwrap();
    p.xapic.insert(0x310, 1 << 24);
    let icr_write = |c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform, low: u64| {
        c.vcpu.regs.gpr[GuestRegs::RSI] = low;
        exit(v, reason::EPT_VIOLATION, 0x2 | 1 << 3, 0);
        v.write(F::GUEST_PHYSICAL_ADDRESS, 0xfee0_0300);
        v.write(F::GUEST_RIP, 0x7000);
        assert_eq!(c.handle_exit(v, p), Outcome::Resume);
        assert_eq!(v.read(F::GUEST_RIP), 0x7002, "past the store");
    };
    // INIT assert and de-assert for the waiting APIC ID 1: kept.
    icr_write(&mut c, &mut v, &mut p, 0xc500);
    icr_write(&mut c, &mut v, &mut p, 0x8500);
    assert!(p.xapic_writes.is_empty());
    // The SIPI goes out; so does an INIT for a running CPU.
    icr_write(&mut c, &mut v, &mut p, 0x069a);
    p.xapic.insert(0x310, 2 << 24);
    icr_write(&mut c, &mut v, &mut p, 0xc500);
    assert_eq!(p.xapic_writes, [(0x300, 0x069a), (0x300, 0xc500)]);
    // x2APIC: the ICR's WRMSR, destination in EDX.
    p.msrs.insert(X2APIC_ICR, 0);
    c.vcpu.regs.gpr[GuestRegs::RCX] = X2APIC_ICR as u64;
    c.vcpu.regs.gpr[GuestRegs::RDX] = 1;
    c.vcpu.regs.gpr[GuestRegs::RAX] = 0xc500;
    exit(&mut v, reason::WRMSR, 0, 2);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(p.msrs[&X2APIC_ICR], 0, "kept");
    c.vcpu.regs.gpr[GuestRegs::RDX] = 2;
    exit(&mut v, reason::WRMSR, 0, 2);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(p.msrs[&X2APIC_ICR], 2 << 32 | 0xc500);
    // An OR into a register (the spurious-interrupt vector, enabling the
    // APIC) is carried out on its current value.
    p.xapic.insert(0xf0, 0xff);
    p.mem.write(0x7000, &[0x81, 0x08, 0, 1, 0, 0]).unwrap();
    exit(&mut v, reason::EPT_VIOLATION, 0x2 | 1 << 3, 0);
    v.write(F::GUEST_PHYSICAL_ADDRESS, 0xfee0_00f0);
    v.write(F::GUEST_RIP, 0x7000);
    c.handle_exit(&mut v, &mut p);
    assert_eq!((p.xapic[&0xf0], v.read(F::GUEST_RIP)), (0x1ff, 0x7006));
    // A store L0 cannot decode ends the watch: the page turns writable and
    // the instruction runs again.
    p.mem.write(0x7000, &[0x0f, 0x0b]).unwrap();
    exit(&mut v, reason::EPT_VIOLATION, 0x2 | 1 << 3, 0);
    v.write(F::GUEST_RIP, 0x7000);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(v.read(F::GUEST_RIP), 0x7000);
}

#[test]
fn fatal_exits_stop() {
    let (mut c, mut v, mut p) = setup();
    exit(&mut v, reason::TRIPLE_FAULT, 0, 0);
    assert_eq!(
        c.handle_exit(&mut v, &mut p),
        Outcome::Stop(Stop::TripleFault)
    );
    exit(&mut v, reason::INVALID_GUEST_STATE, 0, 0);
    v.write(F::VM_EXIT_REASON, 0x8000_0021);
    assert_eq!(
        c.handle_exit(&mut v, &mut p),
        Outcome::Stop(Stop::EntryFailure(ExitReason(0x8000_0021)))
    );
    exit(&mut v, reason::EXTERNAL_INTERRUPT, 0, 0);
    assert!(matches!(
        c.handle_exit(&mut v, &mut p),
        Outcome::Stop(Stop::Unexpected(_))
    ));
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
    assert_eq!(
        v.read(F::GUEST_INTERRUPTIBILITY_INFO),
        0,
        "STI blocking ends with the instruction"
    );
}

#[test]
fn init_then_sipi_starts_a_vcpu_and_a_vmx_root_vcpu_ignores_init() {
    let (mut c, mut v, mut p) = setup();
    c.vcpu.regs.gpr[GuestRegs::RAX] = 0x1234;
    exit(&mut v, reason::INIT, 0, 0);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(v.read(F::GUEST_ACTIVITY_STATE), super::reset::WAIT_FOR_SIPI);
    assert_eq!(c.vcpu.regs.gpr[GuestRegs::RAX], 0);
    // The SIPI exit as Bochs 2.7 saves it: activity "active", SMI and
    // NMI blocked. The vCPU still starts, with nothing blocked.
    exit(&mut v, reason::SIPI, 0x9a, 0);
    v.write(F::GUEST_ACTIVITY_STATE, super::reset::ACTIVE);
    v.write(F::GUEST_INTERRUPTIBILITY_INFO, 0xc);
    assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
    assert_eq!(v.read(F::GUEST_CS_BASE) + v.read(F::GUEST_RIP), 0x9_a000);
    assert_eq!(v.read(F::GUEST_INTERRUPTIBILITY_INFO), 0);
    assert!(c.vcpu.saves_smi_blocking);
    // A second SIPI once running is not reported by VMX; if one were, it
    // would change nothing.
    v.write(F::GUEST_RIP, 0x42);
    exit(&mut v, reason::SIPI, 0x10, 0);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(v.read(F::GUEST_RIP), 0x42);
    // In VMX operation INIT is blocked.
    c.vcpu.nested.vmx.vmxon = Some(0x5000);
    exit(&mut v, reason::INIT, 0, 0);
    c.handle_exit(&mut v, &mut p);
    assert_eq!(v.read(F::GUEST_RIP), 0x42);
    assert_eq!(v.read(F::GUEST_ACTIVITY_STATE), super::reset::ACTIVE);
}

mod nested {
    //! L1 runs an L2 through the whole dispatch: entry, reflected and
    //! L0-handled exits, EPT02 fills, entry failures.
    use super::*;
    use crate::nested::testutil::{valid_vmcs12, EPT12_ROOT, IO_A};
    use crate::shadow::interrupts::PiRoute;
    use crate::vcpu::ultracall::needs_machine;
    use crate::vmx::ept::{Ept, RWX};

    const L2_PAGE: u64 = 0x50_0000;

    fn put(m: &mut VecMemory, a: u64, v: u64) {
        m.write(a, &v.to_le_bytes()).unwrap();
    }

    /// L1 in 64-bit mode, in VMX operation with a valid current VMCS12
    /// whose EPT12 maps L2 page 0x1000 to L1 page 0x50_0000.
    pub(super) fn l1_in_vmx() -> (Cpu, FakeSet, FakePlatform) {
        let (mut c, mut v, mut p) = setup();
        p.mem = VecMemory::new(0, 0x100_0000);
        c.cpuid.vmx = true;
        c.host.policy.cr4_allowed |= crate::regs::CR4_VMXE;
        c.nested.vmx.vmxon = Some(0x10_0000);
        c.nested.vmx.current = Some(0x10_1000);
        *c.nested.vmx.vmcs12 = valid_vmcs12();
        put(&mut p.mem, EPT12_ROOT, (EPT12_ROOT + 0x1000) | 7);
        put(&mut p.mem, EPT12_ROOT + 0x1000, (EPT12_ROOT + 0x2000) | 7);
        put(&mut p.mem, EPT12_ROOT + 0x2000, (EPT12_ROOT + 0x3000) | 7);
        put(&mut p.mem, EPT12_ROOT + 0x3000 + 8, L2_PAGE | 7 | 6 << 3);
        v.write(F::GUEST_CR0, 0x8005_0033);
        v.write(F::CR0_READ_SHADOW, 0x8005_0033);
        v.write(F::GUEST_CR4, 0x2020);
        v.write(F::CR4_READ_SHADOW, 0x2020);
        v.write(F::GUEST_IA32_EFER, 0xd00);
        v.write(F::GUEST_CS_AR_BYTES, 0xa09b);
        v.write(F::GUEST_SS_AR_BYTES, 0xc093);
        v.write(F::GUEST_RIP, 0x20_0000);
        (c, v, p)
    }

    fn launch(c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform, reason_: u16) -> Outcome {
        exit(v, reason_, 0, 3);
        c.handle_exit(v, p)
    }

    /// The hot path of a nested guest takes no machine-wide lock: an exit
    /// reflected to L1 and a VMRESUME of the VMCS12 this vCPU entered
    /// before, unless the machine changed since (then once).
    #[test]
    fn reflect_and_resume_take_no_lock() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        exit(&mut v, reason::VMLAUNCH, 0, 3);
        assert!(c.exit_locks(&mut v, &mut p), "the first entry notes the VM");
        let round_trip = |c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform| {
            exit(v, reason::CPUID, 0, 2);
            let reflect = c.exit_locks(v, p);
            assert!(!c.nested.in_l2());
            exit(v, reason::VMRESUME, 0, 3);
            let resume = c.exit_locks(v, p);
            assert!(c.nested.in_l2());
            (reflect, resume)
        };
        assert_eq!(round_trip(&mut c, &mut v, &mut p), (false, false));
        assert_eq!(round_trip(&mut c, &mut v, &mut p), (false, false));
        // Another CPU changed the machine: noted again, once.
        c.m.lock().shadow.irqs.relay_vector = Some(0x40);
        assert_eq!(round_trip(&mut c, &mut v, &mut p), (false, true));
        assert_eq!(round_trip(&mut c, &mut v, &mut p), (false, false));
        // Another VMCS12: noted.
        exit(&mut v, reason::CPUID, 0, 2);
        c.handle_exit(&mut v, &mut p);
        c.nested.vmx.current = Some(0x10_2000);
        *c.nested.vmx.vmcs12 = valid_vmcs12();
        exit(&mut v, reason::VMLAUNCH, 0, 3);
        assert!(c.exit_locks(&mut v, &mut p));
        assert!(c.nested.in_l2());
    }

    /// A user VM's COM byte takes its VM's lock alone once the vCPU knows
    /// the VM: the machine's only to find the VM (again after the
    /// identities changed), or to pull output the operator follows.
    #[test]
    fn com_bytes_take_the_vms_lock_not_the_machines() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        let byte = |c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform, b: u8| {
            c.regs.gpr[GuestRegs::RAX] = b as u64;
            exit(v, reason::IO_INSTRUCTION, 0x3f8 << 16, 1); // out %al,(%dx)
            let locked = c.exit_locks(v, p);
            assert!(c.nested.in_l2());
            locked
        };
        assert!(byte(&mut c, &mut v, &mut p, b'a'), "the VM found");
        assert!(!byte(&mut c, &mut v, &mut p, b'b'));
        // Through an exit to L1 and back: the same VM, still no lock.
        exit(&mut v, reason::CPUID, 0, 2);
        c.handle_exit(&mut v, &mut p);
        launch(&mut c, &mut v, &mut p, reason::VMRESUME);
        assert!(!byte(&mut c, &mut v, &mut p, b'c'));
        // Another VM appeared (on another CPU): found again, once.
        c.m.lock().shadow.identify(0x77_0000, Some(0x66_601e));
        assert!(byte(&mut c, &mut v, &mut p, b'd'));
        assert!(!byte(&mut c, &mut v, &mut p, b'e'));
        // The operator follows COM1: its output goes out at each byte.
        p.mgmt_in
            .extend_from_slice(shadow_devices::mgmt::frame(format_args!("attach 1")).as_bytes());
        c.poll_console(&mut v, &mut p);
        assert!(byte(&mut c, &mut v, &mut p, b'f'));
        let out = p.mgmt_out.concat();
        assert!(out.contains("out 1 3f8 6162636465"), "{out}");
        assert!(out.contains("out 1 3f8 66"), "{out}");
    }

    /// Runs `f` while another thread holds the machine (for up to 5 s);
    /// whether `f` was done before that thread let go.
    fn while_another_cpu_holds(m: &SharedMachine, f: impl FnOnce(&SharedMachine)) -> bool {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        use std::time::{Duration, Instant};
        let (held, done) = (AtomicBool::new(false), AtomicBool::new(false));
        std::thread::scope(|s| {
            let holder = s.spawn(|| {
                let mut g = m.lock();
                let _ = &mut *g;
                held.store(true, SeqCst);
                let start = Instant::now();
                while !done.load(SeqCst) && start.elapsed() < Duration::from_secs(5) {
                    std::hint::spin_loop();
                }
                done.load(SeqCst)
            });
            while !held.load(SeqCst) {
                std::hint::spin_loop();
            }
            f(m);
            done.store(true, SeqCst);
            holder.join().unwrap()
        })
    }

    /// While another CPU holds the machine, a COM byte of a known VM
    /// completes; the operator's output waits for a later visit.
    #[test]
    fn com_bytes_go_on_while_another_cpu_holds_the_machine() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        p.mgmt_in
            .extend_from_slice(shadow_devices::mgmt::frame(format_args!("attach 1")).as_bytes());
        c.regs.gpr[GuestRegs::RAX] = b'a' as u64;
        exit(&mut v, reason::IO_INSTRUCTION, 0x3f8 << 16, 1);
        c.handle_exit(&mut v, &mut p);
        c.poll_console(&mut v, &mut p);
        let sent = p.mgmt_out.len();
        let Cpu { vcpu, m } = &mut c;
        let done_while_held = while_another_cpu_holds(m, |m| {
            vcpu.regs.gpr[GuestRegs::RAX] = b'b' as u64;
            exit(&mut v, reason::IO_INSTRUCTION, 0x3f8 << 16, 1);
            vcpu.handle_exit(&mut m.lock(), &mut v, &mut p);
        });
        assert!(done_while_held, "the byte waited for the machine");
        assert_eq!(
            p.mgmt_out.len(),
            sent,
            "output waits: the line is the holder's"
        );
        c.poll_console(&mut v, &mut p);
        let out = p.mgmt_out[sent..].concat();
        assert!(out.contains("out 1 3f8 62"), "{out}");
    }

    #[test]
    fn launch_reflect_resume() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        assert_eq!(
            launch(&mut c, &mut v, &mut p, reason::VMLAUNCH),
            Outcome::Resume
        );
        assert!(c.nested.in_l2() && v.cur == Level::L2);
        assert!(c.nested.vmx.vmcs12.launched);
        assert_eq!(v.v02.read(F::GUEST_RIP), 0x1000);
        assert_eq!(
            v.v02.read(F::VIRTUAL_PROCESSOR_ID),
            3,
            "L1's VPID 1 mapped to L0's 3"
        );
        let eptp02 = v.v02.read(F::EPT_POINTER);
        assert_ne!(eptp02 & !0xfff, EPT12_ROOT, "a shadow, not L1's table");

        // L2's CPUID goes to L1.
        exit(&mut v, reason::CPUID, 0, 2);
        v.v02.write(F::GUEST_RSP, 0x7000);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(!c.nested.in_l2() && v.cur == Level::L1);
        let v12 = &c.nested.vmx.vmcs12;
        assert_eq!(
            (
                v12.get(F::VM_EXIT_REASON),
                v12.get(F::GUEST_RIP),
                v12.get(F::GUEST_RSP)
            ),
            (10, 0x1000, 0x7000)
        );
        assert_eq!(v12.get(F::VM_EXIT_INSTRUCTION_LEN), 2);
        assert_eq!(
            (v.v01.read(F::GUEST_RIP), v.v01.read(F::GUEST_RSP)),
            (0x10_1234, 0x20_0000),
            "L1 at its host RIP/RSP"
        );

        // VMLAUNCH of a launched VMCS fails; VMRESUME enters again.
        let rip = v.v01.read(F::GUEST_RIP);
        assert_eq!(
            launch(&mut c, &mut v, &mut p, reason::VMLAUNCH),
            Outcome::Resume
        );
        assert_eq!(v.v01.read(F::GUEST_RFLAGS) & 0x41, 0x40, "VMfailValid");
        assert_eq!(c.nested.vmx.vmcs12.get(F::VM_INSTRUCTION_ERROR), 4);
        assert_eq!(v.v01.read(F::GUEST_RIP), rip + 3);
        assert_eq!(
            launch(&mut c, &mut v, &mut p, reason::VMRESUME),
            Outcome::Resume
        );
        assert!(c.nested.in_l2());
        assert_eq!(
            v.v02.read(F::EPT_POINTER),
            eptp02,
            "the same shadow for the same EPT12"
        );
    }

    #[test]
    fn ept02_fills_and_reflects() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        let root02 = v.v02.read(F::EPT_POINTER) & !0xfff;
        // Mapped by EPT12: L0 fills EPT02 and L2 goes on.
        exit(&mut v, reason::EPT_VIOLATION, 0x181, 0);
        v.v02.write(F::GUEST_PHYSICAL_ADDRESS, 0x1010);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(c.nested.in_l2());
        let l = translate(&mut p.tables, &Ept, root02, 0x1010).unwrap();
        assert_eq!((l.pa, l.entry & RWX), (L2_PAGE + 0x10, RWX));
        // Not mapped by EPT12: L1 gets the violation with EPT12's rights.
        exit(&mut v, reason::EPT_VIOLATION, 0x182, 0);
        v.v02.write(F::GUEST_PHYSICAL_ADDRESS, 0x9000);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(!c.nested.in_l2());
        let v12 = &c.nested.vmx.vmcs12;
        assert_eq!(
            (
                v12.get(F::VM_EXIT_REASON),
                v12.get(F::EXIT_QUALIFICATION),
                v12.get(F::GUEST_PHYSICAL_ADDRESS)
            ),
            (48, 0x182, 0x9000)
        );
    }

    /// An L2 exit whose VMCS12 exit MSR lists name an MSR that cannot be
    /// stored or loaded (an x2APIC register, SDM 28.4 and 28.6): the SDM's
    /// VMX abort for L1, with its indicator in VMCS12 (the cache and L1's
    /// memory), and L1's vCPU shut down; never L0's stop. The CPU still
    /// comes back to L0 (a preemption-timer exit) and L1 stays down.
    #[test]
    fn exit_msr_lists_that_abort_shut_down_l1s_vcpu_not_l0() {
        use crate::vcpu::reset::SHUTDOWN;
        for (count, addr, indicator) in [
            (F::VM_EXIT_MSR_STORE_COUNT, F::VM_EXIT_MSR_STORE_ADDR, 1),
            (F::VM_EXIT_MSR_LOAD_COUNT, F::VM_EXIT_MSR_LOAD_ADDR, 4),
        ] {
            let (mut c, mut v, mut p) = l1_in_vmx();
            put(&mut p.mem, 0x30_0000, 0x808);
            c.nested.vmx.vmcs12.set(count, 1);
            c.nested.vmx.vmcs12.set(addr, 0x30_0000);
            assert_eq!(
                launch(&mut c, &mut v, &mut p, reason::VMLAUNCH),
                Outcome::Resume
            );
            assert!(c.nested.in_l2());
            exit(&mut v, reason::CPUID, 0, 2);
            assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
            assert!(!c.nested.in_l2() && v.cur == Level::L1);
            assert_eq!(c.nested.vmx.vmcs12.abort, indicator);
            assert_eq!(
                p.mem.read_u32(0x10_1004),
                Ok(indicator),
                "in L1's VMCS12 region"
            );
            assert_eq!(v.v01.read(F::GUEST_ACTIVITY_STATE), SHUTDOWN);
            assert_eq!(v.v01.read(F::GUEST_RFLAGS), 2, "interrupts off");
            assert_eq!(v.v01.read(F::VM_ENTRY_INTR_INFO_FIELD), 0);
            exit(&mut v, reason::PREEMPTION_TIMER, 0, 0);
            assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
            assert_eq!(v.v01.read(F::GUEST_ACTIVITY_STATE), SHUTDOWN);
        }
    }

    /// The CPU refusing the state VMCS12's host area gave L1 (checks L0
    /// missed) is the SDM's "VMCS corrupted" abort for L1, once: a second
    /// refusal, of L0's own shutdown state, would be L0's bug.
    #[test]
    fn l1_state_from_the_host_area_refused_is_a_vmx_abort() {
        use crate::vcpu::reset::SHUTDOWN;
        let (mut c, mut v, mut p) = l1_in_vmx();
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        exit(&mut v, reason::CPUID, 0, 2);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(v.cur == Level::L1);
        v.v01.write(F::VM_EXIT_REASON, 0x8000_0021);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert_eq!(c.nested.vmx.vmcs12.abort, 3);
        assert_eq!(v.v01.read(F::GUEST_ACTIVITY_STATE), SHUTDOWN);
        v.v01.write(F::VM_EXIT_REASON, 0x8000_0021);
        assert!(matches!(
            c.handle_exit(&mut v, &mut p),
            Outcome::Stop(Stop::EntryFailure(_))
        ));
        // An L1 that entered its host state fine and fails later is not
        // an abort either.
        let (mut c, mut v, mut p) = l1_in_vmx();
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        exit(&mut v, reason::CPUID, 0, 2);
        c.handle_exit(&mut v, &mut p);
        exit(&mut v, reason::PREEMPTION_TIMER, 0, 0);
        c.handle_exit(&mut v, &mut p);
        v.v01.write(F::VM_EXIT_REASON, 0x8000_0021);
        assert!(matches!(c.handle_exit(&mut v, &mut p), Outcome::Stop(_)));
        assert_eq!(c.nested.vmx.vmcs12.abort, 0);
    }

    /// An L2 touching far more memory than the EPT02 cap: every violation
    /// is filled and L2 goes on; the tables stay under the cap, and each
    /// reclaim flushes this CPU's EPT translations before L2 runs again.
    #[test]
    fn l2_beyond_the_ept02_cap_keeps_running() {
        use crate::nested::ept02::MIN_TABLES;
        let (mut c, mut v, mut p) = l1_in_vmx();
        // 2 MiB leaves of EPT12 for L2's 2nd to 200th 2 MiB, all onto one L1 region.
        for i in 1..200u64 {
            put(
                &mut p.mem,
                EPT12_ROOT + 0x2000 + 8 * i,
                0x20_0000 | 1 << 7 | 7 | 6 << 3,
            );
        }
        c.nested.cap_ept02(MIN_TABLES);
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        let root02 = v.v02.read(F::EPT_POINTER) & !0xfff;
        let mut flushes_due = 0;
        for i in 1..200u64 {
            let before = (p.inept_all, c.nested.ept02_tables().2);
            exit(&mut v, reason::EPT_VIOLATION, 0x182, 0);
            v.v02
                .write(F::GUEST_PHYSICAL_ADDRESS, i * 0x20_0000 + 0x1008);
            assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
            assert!(c.nested.in_l2(), "L2 goes on at {i}");
            let (held, cap, reclaims) = c.nested.ept02_tables();
            assert!(held <= cap && cap == MIN_TABLES);
            let l = translate(&mut p.tables, &Ept, root02, i * 0x20_0000 + 0x1008).unwrap();
            assert_eq!(l.pa, 0x20_1008);
            if reclaims > before.1 {
                flushes_due += 1;
                assert!(p.inept_all > before.0, "a reclaim at {i} flushes");
            }
        }
        assert!(flushes_due > 30, "{flushes_due} reclaims");
        assert_eq!(
            v.v02.read(F::EPT_POINTER) & !0xfff,
            root02,
            "the same shadow"
        );
    }

    /// EPT A/D flags off: the processor's setting of an accessed flag in
    /// L2's page table is a write (SDM 29.3.3.2). EPT02 copies EPT12's
    /// read-only permission, so the CPU exits to L0 with a write to the
    /// paging structure (qualification bit 8 clear), and L1 gets it.
    #[test]
    fn accessed_flag_write_to_a_read_only_page_table_reaches_l1() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        // L2-physical 0x2000 (its page table) read-only onto L1's L2_PAGE.
        put(&mut p.mem, EPT12_ROOT + 0x3000 + 16, L2_PAGE | 1 | 6 << 3);
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        let root02 = v.v02.read(F::EPT_POINTER) & !0xfff;
        // The page walk's read: EPT02 gets EPT12's read-only leaf.
        exit(&mut v.v02, reason::EPT_VIOLATION, 0x81, 0);
        v.v02.write(F::GUEST_PHYSICAL_ADDRESS, 0x2010);
        c.handle_exit(&mut v, &mut p);
        assert!(c.nested.in_l2());
        let l = translate(&mut p.tables, &Ept, root02, 0x2010).unwrap();
        assert_eq!(l.entry & RWX, 1, "read-only, as EPT12");
        // The accessed-flag update: a write to the PTE.
        exit(&mut v.v02, reason::EPT_VIOLATION, 0x8a, 0);
        c.handle_exit(&mut v, &mut p);
        assert!(!c.nested.in_l2());
        let v12 = &c.nested.vmx.vmcs12;
        assert_eq!(
            (
                v12.get(F::VM_EXIT_REASON),
                v12.get(F::EXIT_QUALIFICATION),
                v12.get(F::GUEST_PHYSICAL_ADDRESS)
            ),
            (48, 0x8a, 0x2010)
        );
    }

    /// EPT A/D flags and PML through the whole dispatch (SDM 29.3.5,
    /// 29.3.6). EPTP02 has A/D flags on and VMCS02 no PML; an L2 read sets
    /// EPT12's accessed flags and maps the page without write; the write
    /// that follows sets the dirty flag, logs the page at index 0 (which
    /// wraps to 0xffff) and gets write; the next page to dirty is then a
    /// log-full exit to L1 with nothing set. L1 clearing the dirty flag and
    /// running INVEPT takes write away again.
    #[test]
    fn ept_accessed_dirty_flags_and_pml_through_ept02() {
        use crate::nested::ept_ad::{ACCESSED as A, DIRTY as D};
        use crate::nested::instr::Invalidate;
        use crate::vmx::caps::secondary::ENABLE_PML;
        const LOG: u64 = 0x60_0000;
        const EPTP12: u64 = EPT12_ROOT | 6 | 3 << 3 | 1 << 6;
        let (mut c, mut v, mut p) = l1_in_vmx();
        // L2 page 0x2000 onto L1's page after L2_PAGE.
        let pte2 = EPT12_ROOT + 0x3000 + 16;
        put(&mut p.mem, pte2, (L2_PAGE + 0x1000) | 7 | 6 << 3);
        let v12 = &mut c.nested.vmx.vmcs12;
        v12.set(F::EPT_POINTER, EPTP12);
        v12.set_bits_for_test(F::SECONDARY_VM_EXEC_CONTROL, ENABLE_PML as u64);
        v12.set(F::PML_ADDRESS, LOG);
        v12.set(F::GUEST_PML_INDEX, 0);
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        assert!(c.nested.in_l2());
        let eptp02 = v.v02.read(F::EPT_POINTER);
        assert_ne!(eptp02 & 1 << 6, 0, "EPTP02 with A/D flags");
        assert_eq!(
            v.v02.read(F::SECONDARY_VM_EXEC_CONTROL) & ENABLE_PML as u64,
            0
        );
        let root02 = eptp02 & !0xfff;
        let walk1 = [
            EPT12_ROOT,
            EPT12_ROOT + 0x1000,
            EPT12_ROOT + 0x2000,
            EPT12_ROOT + 0x3000 + 8,
        ];
        let flags = |p: &FakePlatform, at: &[u64]| -> Vec<u64> {
            at.iter()
                .map(|&a| p.mem.read_u64(a).unwrap() & (A | D))
                .collect()
        };
        let fault = |c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform, q: u64, gpa: u64| {
            exit(&mut v.v02, reason::EPT_VIOLATION, q, 0);
            v.v02.write(F::GUEST_PHYSICAL_ADDRESS, gpa);
            c.handle_exit(v, p)
        };
        // A read: accessed flags on all four levels, no write in EPT02.
        fault(&mut c, &mut v, &mut p, 0x181, 0x1008);
        assert!(c.nested.in_l2());
        assert_eq!(flags(&p, &walk1), [A; 4]);
        let l = translate(&mut p.tables, &Ept, root02, 0x1008).unwrap();
        assert_eq!(l.entry & RWX, 5, "read and execute until dirty");
        assert_eq!(c.nested.vmx.vmcs12.get(F::GUEST_PML_INDEX), 0);
        // The write (EPT02 allowed R+X): dirty, logged, writable.
        fault(&mut c, &mut v, &mut p, 0x182 | 5 << 3, 0x1008);
        assert!(c.nested.in_l2());
        assert_eq!(flags(&p, &walk1[3..]), [A | D]);
        assert_eq!(p.mem.read_u64(LOG).unwrap(), 0x1000, "4 KiB-aligned");
        assert_eq!(c.nested.vmx.vmcs12.get(F::GUEST_PML_INDEX), 0xffff);
        let l = translate(&mut p.tables, &Ept, root02, 0x1008).unwrap();
        assert_eq!(l.entry & RWX, 7);
        // The next page to dirty: the log is full. L1 gets exit 62 (with
        // NMI unblocking kept), no flag is set, EPT02 has no leaf.
        fault(&mut c, &mut v, &mut p, 0x1182, 0x2010);
        assert!(!c.nested.in_l2());
        let v12 = &c.nested.vmx.vmcs12;
        assert_eq!(
            (v12.get(F::VM_EXIT_REASON), v12.get(F::EXIT_QUALIFICATION)),
            (62, 0x1000)
        );
        assert_eq!(flags(&p, &[pte2]), [0]);
        assert!(translate(&mut p.tables, &Ept, root02, 0x2010).is_none());
        assert_eq!(v12.get(F::GUEST_PML_INDEX), 0xffff);
        // L1 empties its log, clears the dirty flag, runs INVEPT.
        c.nested.vmx.vmcs12.set(F::GUEST_PML_INDEX, 511);
        let pte1 = p.mem.read_u64(walk1[3]).unwrap();
        put(&mut p.mem, walk1[3], pte1 & !D);
        c.nested_ctx(&mut v, &mut p)
            .invalidate(Invalidate::Ept(Some(EPTP12)));
        exit(&mut v, reason::VMRESUME, 0, 3);
        c.handle_exit(&mut v, &mut p);
        assert!(c.nested.in_l2());
        let root02 = v.v02.read(F::EPT_POINTER) & !0xfff;
        fault(&mut c, &mut v, &mut p, 0x181, 0x1008);
        let l = translate(&mut p.tables, &Ept, root02, 0x1008).unwrap();
        assert_eq!(l.entry & RWX, 5, "write-protected again");
        fault(&mut c, &mut v, &mut p, 0x182 | 5 << 3, 0x1008);
        assert_eq!(p.mem.read_u64(LOG + 8 * 511).unwrap(), 0x1000);
        assert_eq!(c.nested.vmx.vmcs12.get(F::GUEST_PML_INDEX), 510);
        // A walk of L2's page tables through page 0x2000 comes as a write
        // (EPTP02 has A/D flags): that page gets dirty too.
        fault(&mut c, &mut v, &mut p, 0x8a, 0x2010);
        assert_eq!(flags(&p, &[pte2]), [A | D]);
        assert_eq!(p.mem.read_u64(LOG + 8 * 510).unwrap(), 0x2000);
    }

    #[test]
    fn ept12_pointing_at_l0_is_a_misconfiguration() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        c.m.get_mut()
            .ept
            .l0
            .insert(Range::new(L2_PAGE, L2_PAGE + 0x1000))
            .unwrap();
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        exit(&mut v, reason::EPT_VIOLATION, 0x181, 0);
        v.v02.write(F::GUEST_PHYSICAL_ADDRESS, 0x1000);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(c.nested.vmx.vmcs12.get(F::VM_EXIT_REASON), 49);
        assert!(!c.nested.in_l2());
    }

    #[test]
    fn guest_state_failure_exits_to_l1() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        c.nested.vmx.vmcs12.set(F::GUEST_RFLAGS, 0);
        assert_eq!(
            launch(&mut c, &mut v, &mut p, reason::VMLAUNCH),
            Outcome::Resume
        );
        assert!(!c.nested.in_l2());
        assert_eq!(c.nested.vmx.vmcs12.get(F::VM_EXIT_REASON), 0x8000_0021);
        assert!(
            !c.nested.vmx.vmcs12.launched,
            "a failed entry does not launch"
        );
        assert_eq!(v.v01.read(F::GUEST_RIP), 0x10_1234);
        // A control failure is VMfailValid(7) instead.
        c.nested.vmx.vmcs12.set(F::GUEST_RFLAGS, 2);
        c.nested.vmx.vmcs12.set(F::VIRTUAL_PROCESSOR_ID, 0);
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        assert_eq!(c.nested.vmx.vmcs12.get(F::VM_INSTRUCTION_ERROR), 7);
    }

    /// The CPU refuses VMCS02's guest state at the entry that follows
    /// (as the CPU loop sees it: a run that ends in an entry-failure exit).
    fn rejected(c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform) -> Outcome {
        c.nested.note_vmcs02_launched();
        let failed = 0x8000_0000 | reason::INVALID_GUEST_STATE as u64;
        v.v02.write(F::VM_EXIT_REASON, failed);
        v.v02.write(F::EXIT_QUALIFICATION, 0);
        c.handle_exit(v, p)
    }

    /// L2 ran until an exit with reason `r`.
    fn l2_ran_to(c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform, r: u16) -> Outcome {
        c.nested.note_vmcs02_launched();
        exit(&mut v.v02, r, 0, 2);
        c.handle_exit(v, p)
    }

    #[test]
    fn hardware_rejection_keeps_the_launch_states() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        // L1's first VMLAUNCH, refused: VMCS12 and VMCS02 stay clear.
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        assert_eq!(rejected(&mut c, &mut v, &mut p), Outcome::Resume);
        assert!(!c.nested.in_l2() && v.cur == Level::L1);
        assert_eq!(c.nested.vmx.vmcs12.get(F::VM_EXIT_REASON), 0x8000_0021);
        assert!(!c.nested.vmx.vmcs12.launched);
        assert!(
            !c.vcpu.launched(true),
            "VMCS02 is entered with VMLAUNCH again"
        );
        // Launched, then a VMRESUME refused: VMCS12 stays launched.
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        l2_ran_to(&mut c, &mut v, &mut p, reason::CPUID);
        assert!(c.vcpu.launched(true));
        launch(&mut c, &mut v, &mut p, reason::VMRESUME);
        rejected(&mut c, &mut v, &mut p);
        assert!(!c.nested.in_l2());
        assert!(
            c.nested.vmx.vmcs12.launched,
            "a failed VMRESUME leaves the VMCS launched (SDM 27.8)"
        );
        assert!(c.vcpu.launched(true));
        launch(&mut c, &mut v, &mut p, reason::VMRESUME);
        assert!(c.nested.in_l2(), "L1's next VMRESUME enters");
        // L0's own resume of a running L2, refused: L1's VMLAUNCH of a
        // clear VMCS12 had succeeded, so it stays launched.
        l2_ran_to(&mut c, &mut v, &mut p, reason::CPUID);
        c.nested.vmx.vmcs12.launched = false; // as after VMCLEAR
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        assert!(c.nested.in_l2());
        v.v02.write(F::GUEST_PHYSICAL_ADDRESS, 0x1010);
        c.nested.note_vmcs02_launched();
        exit(&mut v.v02, reason::EPT_VIOLATION, 0x181, 0);
        c.handle_exit(&mut v, &mut p);
        assert!(c.nested.in_l2(), "an EPT02 fill: L0 resumes L2 itself");
        rejected(&mut c, &mut v, &mut p);
        assert!(!c.nested.in_l2());
        assert!(c.nested.vmx.vmcs12.launched);
    }

    /// Structures beyond L1's RAM (16 MiB here): the entry goes on as on
    /// the hardware, and L0 uses only its own stand-in or L1's RAM.
    #[test]
    fn structures_beyond_l1_ram() {
        use crate::vmx::caps::primary::USE_TPR_SHADOW;
        let (mut c, mut v, mut p) = l1_in_vmx();
        let beyond = 0x2000_0000;
        let v12 = &mut *c.nested.vmx.vmcs12;
        v12.set_bits_for_test(F::CPU_BASED_VM_EXEC_CONTROL, USE_TPR_SHADOW as u64);
        v12.set(F::VIRTUAL_APIC_PAGE_ADDR, beyond);
        v12.set(F::TPR_THRESHOLD, 0xf);
        v12.set(F::IO_BITMAP_A, beyond + 0x1000);
        // Entry 1 in RAM (a valid load of SYSENTER_CS), entry 2 beyond it.
        let list = 0x100_0000 - 16;
        put(&mut p.mem, list, 0x174);
        put(&mut p.mem, list + 8, 7);
        v12.set(F::VM_ENTRY_MSR_LOAD_ADDR, list);
        v12.set(F::VM_ENTRY_MSR_LOAD_COUNT, 2);
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        assert!(!c.nested.in_l2());
        let v12 = &mut *c.nested.vmx.vmcs12;
        assert_eq!(
            (v12.get(F::VM_EXIT_REASON), v12.get(F::EXIT_QUALIFICATION)),
            (0x8000_0022, 2),
            "the unbacked entry reads as all ones and fails, by its index"
        );
        v12.set(F::VM_ENTRY_MSR_LOAD_COUNT, 1);
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        assert!(c.nested.in_l2());
        assert_eq!(v.v02.read(F::VIRTUAL_APIC_PAGE_ADDR), PAGES.vapic_unbacked);
        assert!(p.page(PAGES.vapic_unbacked).iter().all(|&w| w == u64::MAX));
        // L2 reads port 0x10 through L1's I/O bitmap A: all ones, so L1's.
        let io_in_0x10 = 0x10 << 16 | 1 << 3;
        exit(&mut v.v02, reason::IO_INSTRUCTION, io_in_0x10, 2);
        c.handle_exit(&mut v, &mut p);
        assert!(!c.nested.in_l2());
        assert_eq!(c.nested.vmx.vmcs12.get(F::VM_EXIT_REASON), 30);
        // Back in L1's RAM, VMCS02 takes L1's page again.
        c.nested
            .vmx
            .vmcs12
            .set(F::VIRTUAL_APIC_PAGE_ADDR, 0x60_0000);
        launch(&mut c, &mut v, &mut p, reason::VMRESUME);
        assert!(!c.nested.in_l2(), "VTPR 0 there: under TPR threshold 0xf");
        c.nested.vmx.vmcs12.set(F::TPR_THRESHOLD, 0);
        launch(&mut c, &mut v, &mut p, reason::VMRESUME);
        assert!(c.nested.in_l2());
        assert_eq!(v.v02.read(F::VIRTUAL_APIC_PAGE_ADDR), 0x60_0000);
    }

    #[test]
    fn pae_l2_without_ept_takes_its_pdptes_from_cr3() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        let v12 = &mut *c.nested.vmx.vmcs12;
        let s = v12.get(F::SECONDARY_VM_EXEC_CONTROL);
        use crate::vmx::caps::secondary::{ENABLE_EPT, UNRESTRICTED_GUEST};
        v12.set(
            F::SECONDARY_VM_EXEC_CONTROL,
            s & !((ENABLE_EPT | UNRESTRICTED_GUEST) as u64),
        );
        v12.set(F::GUEST_CR0, 0x8000_0031);
        v12.set(F::GUEST_CR4, 0x2020);
        v12.set(F::GUEST_CR3, 0x5020);
        v12.set(F::GUEST_PDPTE0, 0xdead_0001);
        put(&mut p.mem, 0x5020, 0x6001);
        put(&mut p.mem, 0x5030, 0x7001);
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        assert!(c.nested.in_l2());
        assert_eq!(
            (v.v02.read(F::GUEST_PDPTE0), v.v02.read(F::GUEST_PDPTE2)),
            (0x6001, 0x7001),
            "VMCS02 (with EPT) holds what CR3 points at, not VMCS12's fields"
        );
        exit(&mut v.v02, reason::CPUID, 0, 2);
        c.handle_exit(&mut v, &mut p);
        // L1 puts a reserved bit into a PDPTE in memory, then VMRESUMEs.
        put(&mut p.mem, 0x5030, 0x7001 | 1 << 5);
        launch(&mut c, &mut v, &mut p, reason::VMRESUME);
        assert!(!c.nested.in_l2());
        let v12 = &c.nested.vmx.vmcs12;
        assert_eq!(
            (v12.get(F::VM_EXIT_REASON), v12.get(F::EXIT_QUALIFICATION)),
            (0x8000_0021, 2)
        );
        assert!(v12.launched);
        put(&mut p.mem, 0x5030, 0x8001);
        launch(&mut c, &mut v, &mut p, reason::VMRESUME);
        assert!(c.nested.in_l2());
        assert_eq!(v.v02.read(F::GUEST_PDPTE2), 0x8001);
    }

    #[test]
    fn l2_io_routing() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        // L1 traps port 0x80 and (uselessly) COM1 for its L2.
        p.mem.write(IO_A + 0x80 / 8, &[1]).unwrap();
        p.mem.write(IO_A + 0x3f8 / 8, &[1]).unwrap();
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        // COM1 is the user VM's shadow UART in L0, whatever L1 asked.
        c.regs.gpr[GuestRegs::RAX] = b'x' as u64;
        exit(&mut v, reason::IO_INSTRUCTION, 0x03f8_0000, 1); // out dx, al
        v.v02.write(F::GUEST_RIP, 0x1000);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(c.nested.in_l2(), "L1 never sees it");
        assert_eq!(v.v02.read(F::GUEST_RIP), 0x1001);
        c.regs.gpr[GuestRegs::RAX] = 0x1234_5600;
        exit(&mut v, reason::IO_INSTRUCTION, 0x03fd_0008, 1); // in al, dx: LSR
        c.handle_exit(&mut v, &mut p);
        assert_eq!(c.regs.gpr[GuestRegs::RAX] & !0xff, 0x1234_5600);
        assert_eq!(
            c.regs.gpr[GuestRegs::RAX] & 0x60,
            0x60,
            "THRE and TEMT: the byte left"
        );
        assert_eq!(c.m.get_mut().shadow.vm_count(), 1);
        // L0's management port (COM2 for L0) is this VM's COM2, not L0's.
        exit(&mut v, reason::IO_INSTRUCTION, 0x02fb_0000, 1);
        c.regs.gpr[GuestRegs::RAX] = 0x03;
        c.handle_exit(&mut v, &mut p);
        assert!(c.nested.in_l2());
        // A port in L1's bitmap: reflected.
        exit(&mut v, reason::IO_INSTRUCTION, 0x0080_0000, 1);
        c.handle_exit(&mut v, &mut p);
        assert!(!c.nested.in_l2());
        assert_eq!(c.nested.vmx.vmcs12.get(F::EXIT_QUALIFICATION), 0x0080_0000);
        // With L1's bitmaps in use, VMCS02 traps every port; a port L1
        // lets through is carried out by L0 for L2.
        assert_eq!(v.v02.read(F::IO_BITMAP_A), PAGES.io_all);
        launch(&mut c, &mut v, &mut p, reason::VMRESUME);
        exit(&mut v, reason::IO_INSTRUCTION, 0x0070_0000, 1); // out 0x70, al
        c.regs.gpr[GuestRegs::RAX] = 0x8f;
        c.handle_exit(&mut v, &mut p);
        assert!(c.nested.in_l2());
        assert_eq!(p.out.last(), Some(&(0x70, 0x8f)));
    }

    #[test]
    fn l0s_ports_are_absent_to_l2_in_every_configuration() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        // L1 lets every port through (its bitmaps are all zero) but 0x2f5.
        p.mem.write(IO_A + 0x2f5 / 8, &[1 << (0x2f5 % 8)]).unwrap();
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        let probe = |c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform, port: u64, write| {
            c.regs.gpr[GuestRegs::RAX] = 0x1234_5600;
            let dir = if write { 0 } else { 8 };
            exit(v, reason::IO_INSTRUCTION, port << 16 | dir, 1);
            v.v02.write(F::GUEST_RIP, 0x1000);
            assert_eq!(c.handle_exit(v, p), Outcome::Resume);
            assert!(c.nested.in_l2(), "{port:#x}: L0's, not reflected");
            assert_eq!(v.v02.read(F::GUEST_RIP), 0x1001);
            c.regs.gpr[GuestRegs::RAX]
        };
        // The management UART outside COM1-COM4.
        c.m.get_mut().l0_ports.mgmt = Some(0x2f0);
        assert_eq!(probe(&mut c, &mut v, &mut p, 0x2f7, false), 0x1234_56ff);
        c.regs.gpr[GuestRegs::RAX] = 0x41;
        probe(&mut c, &mut v, &mut p, 0x2f0, true);
        // Shadow devices off, the management UART at COM2.
        c.m.get_mut().l0_ports.mgmt = Some(0x2f8);
        c.m.set_intercept_com(false);
        assert_eq!(probe(&mut c, &mut v, &mut p, 0x2fd, false), 0x1234_56ff);
        probe(&mut c, &mut v, &mut p, 0x2f8, true);
        // The in-band BMC interface.
        assert_eq!(probe(&mut c, &mut v, &mut p, 0xca3, false), 0x1234_56ff);
        probe(&mut c, &mut v, &mut p, 0xca3, true);
        assert!(p.out.is_empty(), "nothing reached a port: {:?}", p.out);
        // Other ports L1 lets through still reach the machine.
        assert_eq!(probe(&mut c, &mut v, &mut p, 0x3fd, false), 0x1234_565a);
        // A port of L0's that L1 asked for is L1's to emulate for its L2.
        exit(&mut v, reason::IO_INSTRUCTION, 0x02f5_0008, 1);
        c.handle_exit(&mut v, &mut p);
        assert!(!c.nested.in_l2());
    }

    #[test]
    fn l2_finds_l0_by_its_announcement_leaf_alone() {
        use ultracall_abi::cpuid::{signature_of, CpuidRegs, L0_LEAF};
        let (mut c, mut v, mut p) = l1_in_vmx();
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        v.v02.write(F::GUEST_RIP, 0x1000);
        c.regs.gpr[GuestRegs::RAX] = L0_LEAF as u64;
        exit(&mut v, reason::CPUID, 0, 2);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(c.nested.in_l2(), "L0 answers, L1 never sees the exit");
        assert_eq!(v.v02.read(F::GUEST_RIP), 0x1002);
        let [eax, ebx, ecx, edx] = [
            GuestRegs::RAX,
            GuestRegs::RBX,
            GuestRegs::RCX,
            GuestRegs::RDX,
        ]
        .map(|r| c.regs.gpr[r] as u32);
        let r = CpuidRegs { eax, ebx, ecx, edx };
        assert_eq!(&signature_of(r), b"L0Hypervisor");
        assert_eq!(eax, ultracall_abi::ABI_VERSION.to_raw());
        // Every other leaf, the standard hypervisor leaf included, is the
        // guest hypervisor's to answer.
        c.regs.gpr[GuestRegs::RAX] = 0x4000_0000;
        exit(&mut v, reason::CPUID, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert!(!c.nested.in_l2());
        assert_eq!(c.nested.vmx.vmcs12.get(F::VM_EXIT_REASON), 10);
    }

    const DESC: u64 = 0x60_0000;
    const VAPIC: u64 = 0x61_0000;

    /// L2 launched by an L1 that uses posted interrupts (KVM with APICv).
    fn l2_with_posted_interrupts() -> (Cpu, FakeSet, FakePlatform) {
        use crate::vmx::caps::{exit as x, pin, primary as pr, secondary as s2};
        let (mut c, mut v, mut p) = l1_in_vmx();
        let v12 = &mut c.nested.vmx.vmcs12;
        v12.set(
            F::PIN_BASED_VM_EXEC_CONTROL,
            v12.get(F::PIN_BASED_VM_EXEC_CONTROL)
                | (pin::EXTERNAL_INTERRUPT_EXITING | pin::POSTED_INTERRUPTS) as u64,
        );
        v12.set(
            F::CPU_BASED_VM_EXEC_CONTROL,
            v12.get(F::CPU_BASED_VM_EXEC_CONTROL) | pr::USE_TPR_SHADOW as u64,
        );
        v12.set(
            F::SECONDARY_VM_EXEC_CONTROL,
            v12.get(F::SECONDARY_VM_EXEC_CONTROL) | s2::VIRTUAL_INTERRUPT_DELIVERY as u64,
        );
        v12.set(
            F::VM_EXIT_CONTROLS,
            v12.get(F::VM_EXIT_CONTROLS) | x::ACK_INTERRUPT_ON_EXIT as u64,
        );
        v12.set(F::VIRTUAL_APIC_PAGE_ADDR, VAPIC);
        v12.set(F::POSTED_INTR_NV, 0xf2);
        v12.set(F::POSTED_INTR_DESC_ADDR, DESC);
        p.mem.write(DESC + 34, &[0xf2]).unwrap();
        p.mem.write(DESC + 36, &0x0100u32.to_le_bytes()).unwrap();
        assert_eq!(
            launch(&mut c, &mut v, &mut p, reason::VMLAUNCH),
            Outcome::Resume
        );
        assert!(c.nested.in_l2());
        (c, v, p)
    }

    /// A shadow UART's interrupt reaches an L2 that L1 runs with posted
    /// interrupts: L0 learns the vector from L2's IOAPIC writes, posts it,
    /// and processes the posting itself while L2 runs or notifies L1.
    #[test]
    fn posted_shadow_interrupt() {
        let (mut c, mut v, mut p) = l2_with_posted_interrupts();
        // L2 programs IOAPIC pin 4 (paging off: the instruction is at L2
        // 0x1000, L1 0x50_0000).
        l2_ioapic_writes(&mut c, &mut v, &mut p, &[(0, 0x18), (0x10, 0x24)]);
        // L2's 8250 driver: THR-empty interrupt on, OUT2. The edge is
        // posted and, L2 being the one running, processed at once.
        v.v02.write(F::GUEST_INTR_STATUS, 0);
        for (port, value) in [(0x3f9u32, 0x02u64), (0x3fc, 0x08)] {
            c.regs.gpr[GuestRegs::RAX] = value;
            exit(&mut v, reason::IO_INSTRUCTION, (port as u64) << 16, 1);
            c.handle_exit(&mut v, &mut p);
        }
        assert!(c.nested.in_l2());
        assert_eq!(v.v02.read(F::GUEST_INTR_STATUS) & 0xff, 0x24, "RVI");
        let mut irr = [0u8; 4];
        p.mem.read(VAPIC + 0x210, &mut irr).unwrap();
        assert_eq!(u32::from_le_bytes(irr), 1 << 4, "vector 0x24 in VIRR");
        assert!(p.ipis.is_empty());
        // Now L1 runs (L2's CPUID exits to it) when the operator types:
        // the descriptor gets the vector and L1's APIC the notification.
        exit(&mut v, reason::CPUID, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert!(!c.nested.in_l2());
        c.m.get_mut().shadow.io(1, 0x3f9, Some(0x01)); // received-data interrupt on
        c.m.get_mut().shadow.irqs.take_edges(1, u16::MAX);
        for cmd in ["attach 1", "in 41"] {
            p.mgmt_in
                .extend_from_slice(shadow_devices::mgmt::frame(format_args!("{cmd}")).as_bytes());
        }
        c.poll_console(&mut v, &mut p);
        assert_eq!(p.ipis, vec![(0x100, 0xf2)]);
        // VMRESUME processes the outstanding notification.
        launch(&mut c, &mut v, &mut p, reason::VMRESUME);
        assert_eq!(v.v02.read(F::GUEST_INTR_STATUS) & 0xff, 0x24);
        let mut d = [0u8; 33];
        p.mem.read(DESC, &mut d).unwrap();
        assert!(d.iter().all(|&b| b == 0), "PIR and ON cleared");
    }

    /// L2 writes `(offset, value)` pairs to its IOAPIC with `mov
    /// %esi,(%rax)` at L2 0x1000; each write goes on to L1 (KVM's IOAPIC).
    fn l2_ioapic_writes(c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform, w: &[(u64, u64)]) {
        p.mem.write(L2_PAGE, &[0x89, 0x30]).unwrap();
        for &(offset, value) in w {
            c.regs.gpr[GuestRegs::RSI] = value;
            exit(v, reason::EPT_VIOLATION, 0x182, 0);
            v.v02.write(F::GUEST_PHYSICAL_ADDRESS, 0xfec0_0000 + offset);
            v.v02.write(F::GUEST_RIP, 0x1000);
            c.handle_exit(v, p);
            assert!(!c.nested.in_l2(), "KVM emulates the IOAPIC");
            launch(c, v, p, reason::VMRESUME);
        }
    }

    /// The operator's `commands` (typing a byte into VM 1's COM1, its
    /// receive interrupt enabled) while L1 runs.
    fn typed_while_l1_runs(c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform, commands: &[&str]) {
        exit(v, reason::CPUID, 0, 2);
        c.handle_exit(v, p);
        assert!(!c.nested.in_l2());
        let sh = &mut c.m.get_mut().shadow;
        sh.io(1, 0x3fc, Some(0x08)); // OUT2: the UART's interrupt reaches its pin
        sh.io(1, 0x3f9, Some(0x01));
        sh.io(1, 0x3f8, None); // L2 read what came before
        sh.irqs.take_edges(1, u16::MAX);
        for cmd in commands {
            p.mgmt_in
                .extend_from_slice(shadow_devices::mgmt::frame(format_args!("{cmd}")).as_bytes());
        }
        c.poll_console(v, p);
    }

    const DESC1: u64 = 0x62_0000;
    const VAPIC1: u64 = 0x63_0000;
    /// vCPU 0's VMCS12 (`l1_in_vmx`'s) and vCPU 1's.
    const VMCS0: u64 = 0x10_1000;
    const VMCS1: u64 = 0x10_2000;

    /// A VM with two vCPUs (two VMCS12s, each with its descriptor and
    /// virtual-APIC page): vCPU 0 (xAPIC ID 0) is notified on CPU 1,
    /// vCPU 1 (ID 1) on CPU 2. L2 sends its IOAPIC pin 4 (vector 0x24) to
    /// APIC ID `dest`; then L1 runs vCPU 1 here.
    fn vm_of_two_vcpus(dest: u64) -> (Cpu, FakeSet, FakePlatform) {
        let (mut c, mut v, mut p) = l2_with_posted_interrupts();
        p.mem.write(VAPIC + 0x20, &0u32.to_le_bytes()).unwrap();
        p.mem
            .write(VAPIC1 + 0x20, &(1u32 << 24).to_le_bytes())
            .unwrap();
        p.mem.write(DESC1 + 34, &[0xf2]).unwrap();
        p.mem.write(DESC1 + 36, &0x0200u32.to_le_bytes()).unwrap();
        l2_ioapic_writes(&mut c, &mut v, &mut p, &pin4_to(dest));
        // L1 runs vCPU 1 on its own VMCS12.
        exit(&mut v, reason::CPUID, 0, 2);
        c.handle_exit(&mut v, &mut p);
        let mut v12 = (*c.nested.vmx.vmcs12).clone();
        v12.launched = false;
        v12.set(F::VIRTUAL_APIC_PAGE_ADDR, VAPIC1);
        v12.set(F::POSTED_INTR_DESC_ADDR, DESC1);
        c.nested.vmx.current = Some(VMCS1);
        *c.nested.vmx.vmcs12 = v12;
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        assert!(c.nested.in_l2());
        assert_eq!(c.m.get_mut().shadow.pi_routes_of(1).len(), 2);
        (c, v, p)
    }

    /// IOAPIC writes that send pin 4 (vector 0x24) to physical APIC ID `id`.
    fn pin4_to(id: u64) -> [(u64, u64); 4] {
        [(0, 0x18), (0x10, 0x24), (0, 0x19), (0x10, id << 24)]
    }

    /// L2 writes `value` to COM port `port`; whether that took the
    /// machine's lock.
    fn l2_com_out(
        c: &mut Cpu,
        v: &mut FakeSet,
        p: &mut FakePlatform,
        port: u16,
        value: u8,
    ) -> bool {
        c.regs.gpr[GuestRegs::RAX] = value as u64;
        exit(v, reason::IO_INSTRUCTION, (port as u64) << 16, 1);
        let locked = c.exit_locks(v, p);
        assert!(c.nested.in_l2());
        locked
    }

    /// The shadow UART of COM1 raises a THR-empty edge (IER's THRI off,
    /// then on, OUT2 on); whether any of it took the machine's lock.
    fn thre_edge(c: &mut Cpu, v: &mut FakeSet, p: &mut FakePlatform) -> bool {
        let mcr = l2_com_out(c, v, p, 0x3fc, 0x08);
        let off = l2_com_out(c, v, p, 0x3f9, 0x00);
        mcr | off | l2_com_out(c, v, p, 0x3f9, 0x02)
    }

    /// The shadow UART's interrupt is posted to the vCPU whose APIC ID the
    /// IOAPIC entry names, and its notification goes to the physical CPU
    /// in that descriptor's NDST.
    #[test]
    fn shadow_interrupt_goes_to_the_vcpu_the_ioapic_names() {
        let (mut c, mut v, mut p) = vm_of_two_vcpus(1);
        typed_while_l1_runs(&mut c, &mut v, &mut p, &["attach 1", "in 41"]);
        assert_eq!(p.ipis, vec![(0x200, 0xf2)], "vCPU 1's CPU notified");
        assert_eq!(p.mem.read_u64(DESC1).unwrap(), 1 << 0x24, "in vCPU 1's PIR");
        assert_eq!(p.mem.read_u64(DESC).unwrap(), 0, "not in vCPU 0's");

        // L2 moves the interrupt to vCPU 0.
        launch(&mut c, &mut v, &mut p, reason::VMRESUME);
        l2_ioapic_writes(&mut c, &mut v, &mut p, &pin4_to(0));
        p.ipis.clear();
        typed_while_l1_runs(&mut c, &mut v, &mut p, &["in 42"]);
        assert_eq!(p.ipis, vec![(0x100, 0xf2)], "vCPU 0's CPU notified");
        assert_eq!(p.mem.read_u64(DESC).unwrap(), 1 << 0x24);
    }

    /// An edge a COM access raises is posted with the VM's own routes: no
    /// machine lock, the notification to the CPU where the vCPU the
    /// IOAPIC names runs (vCPU 0, on CPU 1, while vCPU 1 writes here).
    #[test]
    fn an_edge_is_posted_without_the_machine_lock() {
        let (mut c, mut v, mut p) = vm_of_two_vcpus(0);
        assert!(
            l2_com_out(&mut c, &mut v, &mut p, 0x3fc, 0x08),
            "the VM found"
        );
        assert!(!thre_edge(&mut c, &mut v, &mut p), "no machine lock");
        assert_eq!(p.ipis, vec![(0x100, 0xf2)], "vCPU 0's CPU notified");
        assert_eq!(p.mem.read_u64(DESC).unwrap(), 1 << 0x24, "in vCPU 0's PIR");
        let m = c.m.get_mut();
        assert!(!m.shadow.irqs.has_edges() && !m.shadow.irqs.irq_pending());
    }

    /// While another CPU holds the machine, an edge is posted all the same.
    #[test]
    fn an_edge_is_posted_while_another_cpu_holds_the_machine() {
        let (mut c, mut v, mut p) = vm_of_two_vcpus(0);
        assert!(l2_com_out(&mut c, &mut v, &mut p, 0x3fc, 0x08));
        let Cpu { vcpu, m } = &mut c;
        let done_while_held = while_another_cpu_holds(m, |m| {
            for ier in [0x00, 0x02] {
                vcpu.regs.gpr[GuestRegs::RAX] = ier;
                exit(&mut v, reason::IO_INSTRUCTION, 0x3f9 << 16, 1);
                vcpu.handle_exit(&mut m.lock(), &mut v, &mut p);
            }
        });
        assert!(done_while_held, "the edge waited for the machine");
        assert_eq!(p.ipis, vec![(0x100, 0xf2)]);
        assert_eq!(p.mem.read_u64(DESC).unwrap(), 1 << 0x24);
    }

    /// KVM moves vCPU 0 to another CPU (VMCLEAR on the old one, NDST
    /// rewritten, VMPTRLD and VMLAUNCH on the new one: what those CPUs'
    /// exits tell the machine): this CPU's next edge, still without the
    /// machine lock, notifies the new CPU.
    #[test]
    fn routes_follow_a_vcpu_that_moves_between_cpus() {
        let (mut c, mut v, mut p) = vm_of_two_vcpus(0);
        assert!(thre_edge(&mut c, &mut v, &mut p));
        assert_eq!(p.ipis, vec![(0x100, 0xf2)]);
        // vCPU 0 took the interrupt (KVM cleared ON and PIR).
        p.mem.write(DESC, &[0u8; 33]).unwrap();
        let eptp = c.nested.eptp12();
        let route = PiRoute {
            desc: DESC,
            nv: 0xf2,
            vapic: VAPIC,
        };
        c.m.lock().shadow.vmclear(VMCS0, u64::MAX);
        p.mem.write(DESC + 36, &0x0300u32.to_le_bytes()).unwrap();
        {
            let mut m = c.m.lock();
            m.shadow.note_entry(VMCS0, eptp);
            m.shadow.set_pi_route(VMCS0, Some(route));
        }
        p.ipis.clear();
        assert!(!thre_edge(&mut c, &mut v, &mut p), "no machine lock");
        assert_eq!(p.ipis, vec![(0x300, 0xf2)], "vCPU 0's new CPU notified");
        assert_eq!(p.mem.read_u64(DESC1).unwrap(), 0, "not vCPU 1's");
    }

    /// An L2 ultracall `req`; its status, and whether it took the
    /// machine's lock.
    fn l2_ultracall(
        c: &mut Cpu,
        v: &mut FakeSet,
        p: &mut FakePlatform,
        req: &ultracall_abi::Request,
    ) -> (u64, bool) {
        let r = req.to_regs();
        let g = &mut c.regs.gpr;
        (g[GuestRegs::RAX], g[GuestRegs::RCX], g[GuestRegs::RDX]) = (r.rax, r.rcx, r.rdx);
        (g[GuestRegs::RSI], g[GuestRegs::RDI]) = (r.rsi, r.rdi);
        (g[8], g[9], g[10], g[11]) = (r.r8, r.r9, r.r10, r.r11);
        exit(v, reason::VMCALL, 0, 3);
        let locked = c.exit_locks(v, p);
        assert!(c.nested.in_l2());
        (c.regs.gpr[GuestRegs::RAX], locked)
    }

    /// Ultracalls take the machine's lock only where `needs_machine` says:
    /// a Ping, a refused request and a RegisterTag the VM holds already
    /// take none; the first RegisterTag does.
    #[test]
    fn ultracalls_take_the_machine_lock_only_where_needed() {
        use ultracall_abi::call::GuestBuffer;
        use ultracall_abi::{Op, Request, VmTag};
        let (mut c, mut v, mut p) = l1_in_vmx();
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        l2_com_out(&mut c, &mut v, &mut p, 0x3f8, b'a');
        let tag = VmTag::new(b"alpha").unwrap();
        let none = GuestBuffer::default();
        let ping = Request::new(Op::Ping, none, None);
        assert_eq!(l2_ultracall(&mut c, &mut v, &mut p, &ping), (0, false));
        let mut bad = ping.to_regs();
        bad.rcx = 0xffff; // no such op
        let g = &mut c.regs.gpr;
        (g[GuestRegs::RAX], g[GuestRegs::RCX]) = (bad.rax, bad.rcx);
        exit(&mut v, reason::VMCALL, 0, 3);
        assert!(!c.exit_locks(&mut v, &mut p), "refused without the machine");
        assert_ne!(c.regs.gpr[GuestRegs::RAX], 0);
        let register = Request::new(Op::RegisterTag, none, Some(tag));
        assert_eq!(l2_ultracall(&mut c, &mut v, &mut p, &register), (0, true));
        assert_eq!(
            c.m.get_mut().shadow.devices.get(&1).unwrap().tag(),
            Some(tag)
        );
        let again = l2_ultracall(&mut c, &mut v, &mut p, &register);
        assert_eq!(again, (0, false), "the VM's own tag: its lock alone");
        assert_eq!(c.regs.gpr[GuestRegs::RSI], 1, "the VM's id");
        let other = Request::new(Op::RegisterTag, none, VmTag::new(b"beta").ok());
        let (status, locked) = l2_ultracall(&mut c, &mut v, &mut p, &other);
        assert!(status != 0 && locked, "another tag: refused by the machine");
        assert!(!needs_machine(Op::Ping) && needs_machine(Op::SaveDevices));
    }

    /// A vCPU lets go of the cells of the VM it served last at its next
    /// exit after that VM ended (on another CPU), whatever the exit.
    #[test]
    fn an_ended_vms_cells_go_with_each_cpus_next_exit() {
        let (mut c, mut v, mut p) = l2_with_posted_interrupts();
        l2_com_out(&mut c, &mut v, &mut p, 0x3f8, b'a');
        let (devices, irqs) = {
            let m = c.m.get_mut();
            let d = std::sync::Arc::downgrade(&m.shadow.devices.cell(&1).unwrap());
            let i = std::sync::Arc::downgrade(m.shadow.irqs.cell_of(1).unwrap());
            (d, i)
        };
        // L1 VMCLEARs the VM's only VMCS12 on another CPU; 50 ms pass.
        {
            let mut m = c.m.lock();
            m.shadow.vmclear(VMCS0, 0);
            m.shadow.expire(1);
            assert_eq!(m.shadow.vm_count(), 0);
        }
        assert!(devices.upgrade().is_some(), "this vCPU still holds them");
        exit(&mut v, reason::CPUID, 0, 2);
        assert!(!c.exit_locks(&mut v, &mut p), "a reflected exit: no lock");
        assert!(devices.upgrade().is_none() && irqs.upgrade().is_none());
    }

    /// L0 delivers the virtual interrupt RVI names at entry into L2 (the
    /// CPU below may not), or waits for L2's interrupt window.
    #[test]
    fn virtual_interrupt_delivered_at_l2_entry() {
        use crate::vmx::caps::primary as pr;
        let (mut c, mut v, mut p) = l2_with_posted_interrupts();
        p.mem
            .write(VAPIC + 0x210, &(1u32 << 4 | 1 << 1).to_le_bytes())
            .unwrap(); // 0x24 and 0x21 pending
        v.v02.write(F::GUEST_INTR_STATUS, 0x24);
        v.v02.write(F::GUEST_RFLAGS, 0x2);
        c.before_l2_entry(&mut v.v02, &mut p.mem);
        assert_eq!(v.v02.read(F::VM_ENTRY_INTR_INFO_FIELD), 0, "IF=0: not yet");
        assert_ne!(
            v.v02.read(F::CPU_BASED_VM_EXEC_CONTROL) & pr::INTERRUPT_WINDOW_EXITING as u64,
            0,
            "L0 waits for the window"
        );
        // The window exit is L0's (L1 did not ask for it).
        exit(&mut v, reason::INTERRUPT_WINDOW, 0, 0);
        v.v02.write(F::GUEST_RFLAGS, 0x202);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(c.nested.in_l2());
        assert_eq!(
            v.v02.read(F::CPU_BASED_VM_EXEC_CONTROL) & pr::INTERRUPT_WINDOW_EXITING as u64,
            0
        );
        c.before_l2_entry(&mut v.v02, &mut p.mem);
        assert_eq!(
            v.v02.read(F::VM_ENTRY_INTR_INFO_FIELD),
            0x8000_0024,
            "external interrupt 0x24"
        );
        assert_eq!(
            v.v02.read(F::GUEST_INTR_STATUS),
            0x2421,
            "SVI 0x24, RVI the next one"
        );
        let rd = |m: &VecMemory, a| {
            let mut b = [0u8; 4];
            m.read(a, &mut b).unwrap();
            u32::from_le_bytes(b)
        };
        assert_eq!(
            (
                rd(&p.mem, VAPIC + 0x110),
                rd(&p.mem, VAPIC + 0x210),
                rd(&p.mem, VAPIC + 0xa0)
            ),
            (1 << 4, 1 << 1, 0x20)
        );
        // 0x21 is below the new priority: nothing more until L2's EOI.
        v.v02.write(F::VM_ENTRY_INTR_INFO_FIELD, 0);
        c.before_l2_entry(&mut v.v02, &mut p.mem);
        assert_eq!(v.v02.read(F::VM_ENTRY_INTR_INFO_FIELD), 0);
    }

    /// Every virtualized EOI of L2 exits (Bochs 2.7 would deliver what an
    /// EOI leaves pending even with IF = 0): L0 resumes L2 unless L1's
    /// EOI-exit bitmap names the vector; then L1 gets the exit.
    #[test]
    fn eoi_exits_are_l0s_unless_l1_asked() {
        let (mut c, mut v, mut p) = l2_with_posted_interrupts();
        assert_eq!(
            v.v02.read(F::EOI_EXIT_BITMAP1),
            u64::MAX,
            "every EOI exits to L0"
        );
        exit(&mut v, reason::VIRTUALIZED_EOI, 0x41, 0);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(c.nested.in_l2(), "L1 did not ask for EOI exits of 0x41");
        c.nested.vmx.vmcs12.set(F::EOI_EXIT_BITMAP1, 1 << 1);
        exit(&mut v, reason::VIRTUALIZED_EOI, 0x41, 0);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(!c.nested.in_l2(), "0x41 is in L1's EOI-exit bitmap");
        assert_eq!(
            c.nested.vmx.vmcs12.get(F::VM_EXIT_REASON),
            reason::VIRTUALIZED_EOI as u64
        );
        assert_eq!(c.nested.vmx.vmcs12.get(F::EXIT_QUALIFICATION), 0x41);
    }

    /// A self-IPI through the virtualized x2APIC: L0 puts the vector in
    /// VIRR and RVI; it is delivered at the next entry if L2 takes it.
    #[test]
    fn x2apic_self_ipi_virtualized_by_l0() {
        use crate::vmx::caps::secondary as s2;
        let (mut c, mut v, mut p) = l2_with_posted_interrupts();
        let v12 = &mut c.nested.vmx.vmcs12;
        v12.set(
            F::SECONDARY_VM_EXEC_CONTROL,
            v12.get(F::SECONDARY_VM_EXEC_CONTROL) | s2::VIRTUALIZE_X2APIC as u64,
        );
        c.regs.gpr[GuestRegs::RCX] = 0x83f;
        c.regs.gpr[GuestRegs::RAX] = 0x62;
        c.regs.gpr[GuestRegs::RDX] = 0;
        v.v02.write(F::GUEST_RIP, 0x1000);
        exit(&mut v, reason::WRMSR, 0, 2);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(c.nested.in_l2());
        assert_eq!(v.v02.read(F::GUEST_RIP), 0x1002);
        let mut b = [0u8; 4];
        p.mem.read(VAPIC + 0x230, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 1 << 2, "VIRR bit 0x62");
        assert_eq!(v.v02.read(F::GUEST_INTR_STATUS) & 0xff, 0x62, "RVI");
        v.v02.write(F::GUEST_RFLAGS, 0x202);
        c.before_l2_entry(&mut v.v02, &mut p.mem);
        assert_eq!(v.v02.read(F::VM_ENTRY_INTR_INFO_FIELD), 0x8000_0062);
        // A reserved bit: #GP(0) in L2.
        c.regs.gpr[GuestRegs::RAX] = 0x162;
        v.v02.write(F::VM_ENTRY_INTR_INFO_FIELD, 0);
        exit(&mut v, reason::WRMSR, 0, 2);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert_eq!(injected(&v.v02), Some((13, Some(0))));
    }

    /// IPI virtualization: L2's write of ICR (xAPIC: an APIC-write exit)
    /// to a destination in the PID-pointer table is posted there; any
    /// other IPI goes to L1 as the APIC-write exit.
    #[test]
    fn ipi_virtualization() {
        use crate::vmx::caps::primary as pr;
        const TABLE: u64 = 0x62_0000;
        let (mut c, mut v, mut p) = l2_with_posted_interrupts();
        let v12 = &mut c.nested.vmx.vmcs12;
        v12.set(
            F::CPU_BASED_VM_EXEC_CONTROL,
            v12.get(F::CPU_BASED_VM_EXEC_CONTROL) | pr::ACTIVATE_TERTIARY as u64,
        );
        v12.set(
            F::TERTIARY_VM_EXEC_CONTROL,
            crate::nested::caps::TERTIARY_IPI_VIRT,
        );
        v12.set(F::PID_POINTER_TABLE, TABLE);
        v12.set(F::LAST_PID_POINTER_INDEX, 1);
        p.mem.write(TABLE + 8, &(DESC | 1).to_le_bytes()).unwrap();
        // A fixed IPI, vector 0x41, to APIC 1 (ICR high bits 31:24).
        p.mem
            .write(VAPIC + 0x310, &(1u32 << 24).to_le_bytes())
            .unwrap();
        p.mem.write(VAPIC + 0x300, &0x41u32.to_le_bytes()).unwrap();
        exit(&mut v, reason::APIC_WRITE, 0x300, 0);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert!(c.nested.in_l2(), "virtualized: L1 sees nothing");
        // APIC 1 is this very L2's descriptor: posted and processed at once.
        let mut irr = [0u8; 4];
        p.mem.read(VAPIC + 0x220, &mut irr).unwrap();
        assert_eq!(u32::from_le_bytes(irr), 1 << 1, "vector 0x41 in VIRR");
        assert_eq!(v.v02.read(F::GUEST_INTR_STATUS) & 0xff, 0x41);
        // To APIC 2 (no entry): L1 gets the APIC-write exit.
        p.mem
            .write(VAPIC + 0x310, &(2u32 << 24).to_le_bytes())
            .unwrap();
        exit(&mut v, reason::APIC_WRITE, 0x300, 0);
        c.handle_exit(&mut v, &mut p);
        assert!(!c.nested.in_l2());
        let v12 = &c.nested.vmx.vmcs12;
        assert_eq!(
            (v12.get(F::VM_EXIT_REASON), v12.get(F::EXIT_QUALIFICATION)),
            (56, 0x300)
        );
    }

    #[test]
    fn msr_bitmap02_takes_l1s_x2apic_and_pass_through_bits_only() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        let bitmap = crate::nested::testutil::MSR_BITMAP;
        let set = |p: &mut FakePlatform, bit: usize| {
            let a = bitmap + bit as u64 / 8;
            let mut b = [0u8];
            p.mem.read(a, &mut b).unwrap();
            p.mem.write(a, &[b[0] | 1 << (bit % 8)]).unwrap();
        };
        set(&mut p, 0x80b); // read of x2APIC EOI: L1 intercepts
        set(&mut p, 2048 * 8 + 0x48); // write of SPEC_CTRL
        set(&mut p, 1024 * 8 + 0x101); // read of GS_BASE
                                       // An MSR L0 keeps (set up with the page): L1's clear bit does not open it.
        let l0_only = 0x1d9;
        p.page(PAGES.msr02)[l0_only / 64] |= 1 << (l0_only % 64);
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        let page = p.page(PAGES.msr02);
        let bit = |b: usize| page[b / 64] & 1 << (b % 64) != 0;
        assert!(bit(0x80b) && !bit(0x80c), "x2APIC reads as L1's bitmap");
        assert!(
            bit(2048 * 8 + 0x48) && !bit(0x48),
            "SPEC_CTRL: writes exit, reads not"
        );
        assert!(bit(1024 * 8 + 0x101) && !bit(1024 * 8 + 0x100));
        assert!(!bit(2048 * 8 + 1024 * 8 + 0x100), "FS_BASE writes pass");
        assert!(bit(l0_only), "L0's own MSRs stay intercepted");
        // The bitmap moved out of RAM: everything L1 could have asked exits.
        c.nested.vmx.vmcs12.set(F::MSR_BITMAP, 0xffff_f000_0000);
        exit(&mut v, reason::CPUID, 0, 2);
        c.handle_exit(&mut v, &mut p);
        exit(&mut v, reason::VMRESUME, 0, 3);
        c.handle_exit(&mut v, &mut p);
        let page = p.page(PAGES.msr02);
        assert!(page[1024 * 8 / 64 + 4] & 0xf == 0xf && page[0x800 / 64] == u64::MAX);
    }

    #[test]
    fn l2_msrs_l1_lets_through() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        p.msrs.insert(0xc000_0102, 7);
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        // KERNEL_GS_BASE passes through (L1's bitmap is clear): not even an exit.
        let bit = 1024 * 8 + 0x102;
        assert_eq!(p.page(PAGES.msr02)[bit / 64] & (1 << (bit % 64)), 0);
        // An MSR outside the list exits; L0 carries it out on the CPU...
        c.regs.gpr[GuestRegs::RCX] = 0xc000_0102;
        exit(&mut v, reason::RDMSR, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert_eq!((c.regs.gpr[GuestRegs::RAX], c.nested.in_l2()), (7, true));
        // ...or in VMCS02 for one the VMCS switches...
        c.regs.gpr[GuestRegs::RCX] = 0x175;
        c.regs.gpr[GuestRegs::RAX] = 0x1234;
        c.regs.gpr[GuestRegs::RDX] = 0;
        exit(&mut v, reason::WRMSR, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(v.v02.read(F::GUEST_SYSENTER_ESP), 0x1234);
        // ...and an MSR the CPU lacks is #GP in L2.
        c.regs.gpr[GuestRegs::RCX] = 0x1234;
        exit(&mut v, reason::RDMSR, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(injected(&v), Some((13, Some(0))));
    }

    #[test]
    fn l2_gets_no_counters_or_trace() {
        use crate::vmx::caps::primary::RDPMC_EXITING;
        let (mut c, mut v, mut p) = l1_in_vmx();
        p.msrs.insert(0x600, 0x1234); // a CPU that has IA32_DS_AREA
        launch(&mut c, &mut v, &mut p, reason::VMLAUNCH);
        // L1's bitmap lets DS_AREA through; L0 does not.
        c.regs.gpr[GuestRegs::RCX] = 0x600;
        exit(&mut v, reason::RDMSR, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(injected(&v), Some((13, Some(0))));
        assert!(c.nested.in_l2());
        // L2's IA32_XSS, which L1 lets through, cannot name PT state either.
        p.msrs.insert(0xda0, 0);
        c.regs.gpr[GuestRegs::RCX] = 0xda0;
        c.regs.gpr[GuestRegs::RAX] = 1 << 8;
        c.regs.gpr[GuestRegs::RDX] = 0;
        exit(&mut v, reason::WRMSR, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(injected(&v), Some((13, Some(0))));
        assert_eq!((p.msrs[&0xda0], c.nested.in_l2()), (0, true));
        // RDPMC exits from L2 whatever L1 chose; not asked for by L1, #GP.
        assert_ne!(
            v.v02.read(F::CPU_BASED_VM_EXEC_CONTROL) & RDPMC_EXITING as u64,
            0
        );
        exit(&mut v, reason::RDPMC, 0, 2);
        assert_eq!(c.handle_exit(&mut v, &mut p), Outcome::Resume);
        assert_eq!(injected(&v), Some((13, Some(0))));
        assert!(c.nested.in_l2());
        // Asked for by L1: L1's exit.
        let p12 = c.nested.vmx.vmcs12.get(F::CPU_BASED_VM_EXEC_CONTROL);
        c.nested
            .vmx
            .vmcs12
            .set(F::CPU_BASED_VM_EXEC_CONTROL, p12 | RDPMC_EXITING as u64);
        exit(&mut v, reason::RDPMC, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert!(!c.nested.in_l2());
        assert_eq!(
            c.nested.vmx.vmcs12.get(F::VM_EXIT_REASON),
            reason::RDPMC as u64
        );
    }

    #[test]
    fn vmx_capability_msrs_when_offered() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        c.regs.gpr[GuestRegs::RCX] = 0x480;
        exit(&mut v, reason::RDMSR, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(injected(&v), None);
        assert_eq!(
            c.regs.gpr[GuestRegs::RAX],
            crate::nested::caps::VMCS12_REVISION as u64
        );
        c.regs.gpr[GuestRegs::RCX] = 0x3a;
        exit(&mut v, reason::RDMSR, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(c.regs.gpr[GuestRegs::RAX], 5, "locked, VMX outside SMX");
    }
}

mod shadowing {
    //! VMCS shadowing: L1's direct VMREAD/VMWRITE meet L0's VMCS12.
    use super::*;

    #[test]
    fn shadow_follows_vmcs12_and_l1_writes_reach_vmcs02() {
        let (mut c, mut v, mut p) = setup();
        p.mem = VecMemory::new(0, 0x100_0000);
        c.cpuid.vmx = true;
        c.nested.set_shadowing(true);
        c.nested.vmx.vmxon = Some(0x10_0000);
        c.nested.vmx.current = Some(0x10_1000);
        *c.nested.vmx.vmcs12 = crate::nested::testutil::valid_vmcs12();
        for (f, x) in [
            (F::GUEST_CR0, 0x8005_0033),
            (F::CR0_READ_SHADOW, 0x8005_0033),
            (F::GUEST_CR4, 0x2020),
            (F::CR4_READ_SHADOW, 0x2020),
            (F::GUEST_IA32_EFER, 0xd00),
            (F::GUEST_CS_AR_BYTES, 0xa09b),
            (F::GUEST_SS_AR_BYTES, 0xc093),
        ] {
            v.v01.write(f, x);
        }
        // L0 syncs the shadow when VMCS12 changes (here: after an entry failure
        // report is not needed; a VMLAUNCH then an exit).
        exit(&mut v, reason::VMLAUNCH, 0, 3);
        c.handle_exit(&mut v, &mut p);
        assert!(c.nested.in_l2());
        exit(&mut v, reason::CPUID, 0, 2);
        c.handle_exit(&mut v, &mut p);
        assert!(!c.nested.in_l2());
        assert_eq!(
            v.v01.read(F::VMCS_LINK_POINTER),
            0x7100_2000,
            "VMCS01 links the shadow"
        );
        assert_eq!(
            v.sh.read(F::VM_EXIT_REASON),
            10,
            "L1 reads the exit without exiting"
        );
        assert_eq!(v.sh.read(F::GUEST_RIP), 0x1000);
        // L1 advances L2's RIP through the shadow, then VMRESUMEs.
        v.sh.write(F::GUEST_RIP, 0x1002);
        exit(&mut v, reason::VMRESUME, 0, 3);
        c.handle_exit(&mut v, &mut p);
        assert!(c.nested.in_l2());
        assert_eq!(v.v02.read(F::GUEST_RIP), 0x1002);
        // VMCLEAR of the current VMCS: the link is cut.
        exit(&mut v, reason::CPUID, 0, 2);
        c.handle_exit(&mut v, &mut p);
        vmcs_pointer_operand(&mut c, &mut v, &mut p, 0x10_1000);
        exit(&mut v, reason::VMCLEAR, 0, 3);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(injected(&v), None);
        assert_eq!(c.nested.vmx.current, None);
        assert_eq!(v.v01.read(F::VMCS_LINK_POINTER), u64::MAX);
    }
}

mod across_cpus {
    //! What one vCPU does that another CPU's vCPU could see.
    use super::nested::l1_in_vmx;
    use super::*;
    use crate::nested::testutil::{valid_vmcs12, EPT12_ROOT};

    /// A permission L0 takes away in EPT01 (the APIC page turning
    /// read-only) is published with the unlock: every CPU compares the
    /// generation before its next entry and drops its translations.
    #[test]
    fn an_ept01_permission_taken_away_reaches_every_cpu() {
        let (mut c, _v, mut p) = setup();
        c.m.get_mut().ept.apic_page = Some(0xfee0_0000);
        let before = c.m.ept01_generation();
        c.m.lock().ept.set_apic_writable(&mut p.tables, false);
        assert_eq!(c.m.ept01_generation(), before + 1);
        // Reading the machine publishes nothing new.
        let _ = c.m.lock().ept.root;
        assert_eq!(c.m.ept01_generation(), before + 1);
    }

    /// L1 leaving VMX operation on one CPU (KVM offlines it) ends no user
    /// VM while another CPU is still in VMX operation; the last one does.
    #[test]
    fn user_vms_end_with_the_last_vmxoff() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        let m = c.m.get_mut();
        m.vmx_operation.extend([0, 7]);
        let vm = m.shadow.identify(0x10_1000, Some(EPT12_ROOT | 0x1e));
        assert!(vm.is_some());
        exit(&mut v.v01, reason::VMXOFF, 0, 3);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(c.nested.vmx.vmxon, None, "this CPU left VMX operation");
        assert_eq!(c.m.get_mut().shadow.vm_count(), 1, "CPU 7 has not");
        // CPU 7 leaves, then this one enters and leaves again.
        c.m.get_mut().vmx_operation.remove(&7);
        c.nested.vmx.vmxon = Some(0x10_0000);
        c.m.get_mut().vmx_operation.insert(0);
        exit(&mut v.v01, reason::VMXOFF, 0, 3);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(c.m.get_mut().shadow.vm_count(), 0);
        assert!(c.m.get_mut().vmx_operation.is_empty());
    }

    /// A VMCS12 current on another CPU can be neither loaded nor cleared
    /// here (the SDM leaves it undefined; two caches of it would overwrite
    /// each other): VMfailValid, nothing else changes. Once that CPU lets
    /// it go, it moves.
    #[test]
    fn a_vmcs12_current_elsewhere_is_refused() {
        let (mut c, mut v, mut p) = l1_in_vmx();
        let theirs = 0x10_3000;
        p.mem.write(theirs, &valid_vmcs12().to_region()).unwrap();
        c.m.get_mut().vmcs12_owners.change(7, None, Some(theirs));
        let rip = v.v01.read(F::GUEST_RIP);
        for (instr, error) in [(reason::VMPTRLD, 9), (reason::VMCLEAR, 2)] {
            vmcs_pointer_operand(&mut c, &mut v, &mut p, theirs);
            exit(&mut v.v01, instr, 0, 3);
            c.handle_exit(&mut v, &mut p);
            assert_eq!(v.v01.read(F::GUEST_RFLAGS) & 0x41, 0x40, "VMfailValid");
            assert_eq!(c.nested.vmx.vmcs12.get(F::VM_INSTRUCTION_ERROR), error);
            assert_eq!(c.nested.vmx.current, Some(0x10_1000));
        }
        assert_eq!(v.v01.read(F::GUEST_RIP), rip + 6);
        // CPU 7 loads another: this CPU may load it.
        c.m.get_mut()
            .vmcs12_owners
            .change(7, Some(theirs), Some(0x10_4000));
        vmcs_pointer_operand(&mut c, &mut v, &mut p, theirs);
        exit(&mut v.v01, reason::VMPTRLD, 0, 3);
        c.handle_exit(&mut v, &mut p);
        assert_eq!(v.v01.read(F::GUEST_RFLAGS) & 0x41, 0);
        assert_eq!(c.nested.vmx.current, Some(theirs));
        let owners = &c.m.get_mut().vmcs12_owners;
        assert_eq!(owners.elsewhere(theirs, 7), Some(0));
        assert_eq!(owners.elsewhere(0x10_1000, 7), None, "released");
    }
}
