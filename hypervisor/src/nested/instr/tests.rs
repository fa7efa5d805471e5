//! The VMX instructions against fake L1 memory with real page tables.

use super::*;
use crate::guest_mem::fake::VecMemory;
use crate::nested::caps::VMCS12_REVISION;
use crate::nested::operand::Segment;
use crate::vmx::caps::tests::bochs_skylake as bochs;

const VMXON_REGION: u64 = 0x10_0000;
const VMCS_A: u64 = 0x10_1000;
const VMCS_B: u64 = 0x10_2000;
/// Where operands live.
const OPERAND: u64 = 0x20_0000;

/// L1 with 4-level paging identity-mapping its first 16 MiB (2 MiB pages).
fn l1() -> (VmxState, VecMemory, L1State) {
    let mut m = VecMemory::new(0, 0x100_0000);
    let put = |m: &mut VecMemory, a: u64, v: u64| m.write(a, &v.to_le_bytes()).unwrap();
    put(&mut m, 0x1000, 0x2000 | 3);
    put(&mut m, 0x2000, 0x3000 | 3);
    for i in 0..8 {
        put(&mut m, 0x3000 + 8 * i, (i << 21) | 0x83);
    }
    for r in [VMXON_REGION, VMCS_A, VMCS_B] {
        m.write(r, &VMCS12_REVISION.to_le_bytes()).unwrap();
    }
    let caps = NestedCaps::new(&bochs());
    let mut ctx = GuestCtx {
        long_mode: true,
        ..Default::default()
    };
    ctx.segs = [Segment {
        base: 0,
        limit: 0xffff_ffff,
        ar: 0xa09b,
    }; 6];
    let s = L1State {
        ctx,
        paging: PagingRegs {
            cr0: 0x8005_0033,
            cr3: 0x1000,
            cr4: 0x2020,
            efer: 0xd00,
            pdptes: [0; 4],
            maxphyaddr: 39,
        },
        cr0: 0x8005_0033,
        cr4: 0x2020,
        rflags: 0x2,
        cpl: 0,
        // Memory operand [rax], DS, 64-bit addresses; reg2 = rcx.
        info: InstrInfo(3 << 15 | 2 << 7 | 1 << 22 | 1 << 28),
        qualification: 0,
    };
    (VmxState::new(caps, 39), m, s)
}

/// Puts `v` at the operand address and points RAX at it.
fn operand(m: &mut VecMemory, s: &mut L1State, v: u64) {
    m.write(OPERAND, &v.to_le_bytes()).unwrap();
    s.ctx.gpr[0] = OPERAND;
}

fn on(x: &mut VmxState, m: &mut VecMemory, s: &mut L1State) {
    operand(m, s, VMXON_REGION);
    assert_eq!(x.vmxon(s, m), Outcome::Succeed);
}

fn load(x: &mut VmxState, m: &mut VecMemory, s: &mut L1State, p: u64) -> Outcome {
    operand(m, s, p);
    x.vmptrld(s, m, &mut |_| false)
}

fn ud() -> Outcome {
    Outcome::Fault(Fault {
        vector: 6,
        error_code: 0,
    })
}

fn gp() -> Outcome {
    Outcome::Fault(Fault {
        vector: 13,
        error_code: 0,
    })
}

#[test]
fn vmxon_checks() {
    let (mut x, mut m, mut s) = l1();
    operand(&mut m, &mut s, VMXON_REGION);
    let no_vmxe = L1State { cr4: 0x20, ..s };
    assert_eq!(x.vmxon(&no_vmxe, &mut m), ud(), "CR4.VMXE clear");
    let user = L1State { cpl: 3, ..s };
    assert_eq!(x.vmxon(&user, &mut m), gp());
    let no_ne = L1State {
        cr0: s.cr0 & !0x20,
        ..s
    };
    assert_eq!(x.vmxon(&no_ne, &mut m), gp(), "CR0 fixed bits");
    operand(&mut m, &mut s, VMXON_REGION + 8);
    assert_eq!(x.vmxon(&s, &mut m), Outcome::FailInvalid, "misaligned");
    operand(&mut m, &mut s, 0x4000_0000);
    assert_eq!(x.vmxon(&s, &mut m), Outcome::FailInvalid, "not L1 RAM");
    operand(&mut m, &mut s, VMCS_A);
    m.write(VMCS_A, &1u32.to_le_bytes()).unwrap();
    assert_eq!(x.vmxon(&s, &mut m), Outcome::FailInvalid, "wrong revision");
    assert!(x.vmxon.is_none());
    on(&mut x, &mut m, &mut s);
    assert_eq!(
        x.vmxon(&s, &mut m),
        Outcome::FailInvalid,
        "again, no current VMCS"
    );
    // Compatibility mode: #UD.
    let compat = L1State {
        ctx: GuestCtx {
            long_mode: false,
            ..s.ctx
        },
        ..s
    };
    assert_eq!(x.vmxon(&compat, &mut m), ud());
}

#[test]
fn instructions_outside_vmx_operation_ud() {
    let (mut x, mut m, mut s) = l1();
    operand(&mut m, &mut s, VMCS_A);
    assert_eq!(x.vmptrld(&s, &mut m, &mut |_| false), ud());
    assert_eq!(x.vmxoff(&s, &mut m), ud());
    let mut g = [0u64; 16];
    assert_eq!(x.vmread(&s, &mut m, &mut g), ud());
}

#[test]
fn vmptrld_errors() {
    let (mut x, mut m, mut s) = l1();
    on(&mut x, &mut m, &mut s);
    assert_eq!(
        load(&mut x, &mut m, &mut s, VMCS_A + 0x10),
        Outcome::FailInvalid,
        "no current VMCS yet"
    );
    assert_eq!(load(&mut x, &mut m, &mut s, VMCS_A), Outcome::Succeed);
    assert_eq!(
        load(&mut x, &mut m, &mut s, VMCS_B + 0x10),
        Outcome::FailValid(9)
    );
    assert_eq!(x.vmcs12.get(Field::VM_INSTRUCTION_ERROR), 9);
    assert_eq!(
        load(&mut x, &mut m, &mut s, 1 << 40),
        Outcome::FailValid(9),
        "beyond MAXPHYADDR"
    );
    assert_eq!(
        load(&mut x, &mut m, &mut s, VMXON_REGION),
        Outcome::FailValid(10)
    );
    m.write(VMCS_B, &(VMCS12_REVISION | 1 << 31).to_le_bytes())
        .unwrap();
    assert_eq!(
        load(&mut x, &mut m, &mut s, VMCS_B),
        Outcome::FailValid(11),
        "shadow indicator"
    );
    operand(&mut m, &mut s, VMXON_REGION);
    assert_eq!(x.vmxon(&s, &mut m), Outcome::FailValid(15));
    assert_eq!(x.current, Some(VMCS_A));
}

#[test]
fn vmread_vmwrite_register_and_memory() {
    let (mut x, mut m, mut s) = l1();
    on(&mut x, &mut m, &mut s);
    let mut g = [0u64; 16];
    let reg = L1State {
        info: InstrInfo(1 << 10 | 2 << 3 | 1 << 28),
        ..s
    };
    g[1] = Field::GUEST_RIP as u64;
    g[2] = 0x1234;
    assert_eq!(
        x.vmwrite(&reg, &m, &g),
        Outcome::FailInvalid,
        "no current VMCS"
    );
    load(&mut x, &mut m, &mut s, VMCS_A);
    assert_eq!(x.vmwrite(&reg, &m, &g), Outcome::Succeed);
    g[2] = 0;
    assert_eq!(x.vmread(&reg, &mut m, &mut g), Outcome::Succeed);
    assert_eq!(g[2], 0x1234);
    // Memory operands at [rax].
    g[0] = OPERAND;
    m.write(OPERAND, &0x5678u64.to_le_bytes()).unwrap();
    g[1] = Field::GUEST_RSP as u64;
    let mem = L1State {
        ctx: GuestCtx { gpr: g, ..s.ctx },
        ..s
    };
    assert_eq!(x.vmwrite(&mem, &m, &g), Outcome::Succeed);
    assert_eq!(x.vmcs12.get(Field::GUEST_RSP), 0x5678);
    g[1] = Field::GUEST_RIP as u64;
    assert_eq!(x.vmread(&mem, &mut m, &mut g), Outcome::Succeed);
    assert_eq!(m.read_u64(OPERAND).unwrap(), 0x1234);
    // Field errors.
    g[1] = 0x6c3e;
    assert_eq!(x.vmread(&reg, &mut m, &mut g), Outcome::FailValid(12));
    g[1] = 1 << 32 | Field::GUEST_RIP as u64;
    assert_eq!(
        x.vmread(&reg, &mut m, &mut g),
        Outcome::FailValid(12),
        "bits 63:32 of the encoding"
    );
    assert_eq!(x.vmwrite(&reg, &m, &g), Outcome::FailValid(12));
    // MISC[29] is advertised: read-only fields are writable.
    g[1] = Field::VM_EXIT_REASON as u64;
    assert_eq!(x.vmwrite(&reg, &m, &g), Outcome::Succeed);
}

#[test]
fn vmcs12_survives_switching() {
    let (mut x, mut m, mut s) = l1();
    on(&mut x, &mut m, &mut s);
    load(&mut x, &mut m, &mut s, VMCS_A);
    x.vmcs12.set(Field::GUEST_RIP, 0xaaaa);
    x.vmcs12.launched = true;
    load(&mut x, &mut m, &mut s, VMCS_B);
    assert_eq!(x.vmcs12.get(Field::GUEST_RIP), 0);
    load(&mut x, &mut m, &mut s, VMCS_A);
    assert_eq!(
        (x.vmcs12.get(Field::GUEST_RIP), x.vmcs12.launched),
        (0xaaaa, true)
    );
    // VMCLEAR of the current one: launch state clear, no current VMCS.
    operand(&mut m, &mut s, VMCS_A);
    assert_eq!(x.vmclear(&s, &mut m, &mut |_| false), Outcome::Succeed);
    assert_eq!(x.current, None);
    load(&mut x, &mut m, &mut s, VMCS_A);
    assert_eq!(
        (x.vmcs12.get(Field::GUEST_RIP), x.vmcs12.launched),
        (0xaaaa, false)
    );
}

#[test]
fn vmclear_errors_and_vmptrst() {
    let (mut x, mut m, mut s) = l1();
    on(&mut x, &mut m, &mut s);
    operand(&mut m, &mut s, VMXON_REGION);
    assert_eq!(
        x.vmclear(&s, &mut m, &mut |_| false),
        Outcome::FailInvalid,
        "no current VMCS to hold error 3"
    );
    load(&mut x, &mut m, &mut s, VMCS_A);
    operand(&mut m, &mut s, VMXON_REGION);
    assert_eq!(x.vmclear(&s, &mut m, &mut |_| false), Outcome::FailValid(3));
    operand(&mut m, &mut s, 0x123);
    assert_eq!(x.vmclear(&s, &mut m, &mut |_| false), Outcome::FailValid(2));
    s.ctx.gpr[0] = OPERAND + 0x100;
    assert_eq!(x.vmptrst(&s, &mut m), Outcome::Succeed);
    assert_eq!(m.read_u64(OPERAND + 0x100).unwrap(), VMCS_A);
}

#[test]
fn operand_faults() {
    let (mut x, mut m, mut s) = l1();
    s.ctx.gpr[0] = 0x4000_0000; // not mapped by L1's tables
    assert_eq!(
        x.vmxon(&s, &mut m),
        Outcome::PageFault {
            address: 0x4000_0000,
            error_code: 0
        }
    );
    s.ctx.gpr[0] = 0x0000_8000_0000_0000;
    assert_eq!(x.vmxon(&s, &mut m), gp(), "non-canonical");
    on(&mut x, &mut m, &mut s);
    // 8 bytes straddling the end of L1's mapping: the fault is on the second page.
    s.ctx.gpr[0] = 0xff_fffc;
    assert_eq!(
        x.vmptrst(&s, &mut m),
        Outcome::PageFault {
            address: 0x100_0000,
            error_code: 2
        }
    );
}

#[test]
fn invept_and_invvpid() {
    let (mut x, mut m, mut s) = l1();
    on(&mut x, &mut m, &mut s);
    load(&mut x, &mut m, &mut s, VMCS_A);
    let mut g = [0u64; 16];
    g[0] = OPERAND;
    let st = L1State {
        ctx: GuestCtx { gpr: g, ..s.ctx },
        ..s
    };
    // INVEPT single-context with a valid EPTP.
    m.write(OPERAND, &(0x5000u64 | 0x1e).to_le_bytes()).unwrap();
    g[1] = 1;
    assert_eq!(
        x.invept(&st, &m, &g),
        (Outcome::Succeed, Invalidate::Ept(Some(0x501e)))
    );
    m.write(OPERAND, &(0x5000u64 | 0x1f).to_le_bytes()).unwrap();
    assert_eq!(
        x.invept(&st, &m, &g).0,
        Outcome::FailValid(28),
        "bad memory type"
    );
    g[1] = 2;
    assert_eq!(
        x.invept(&st, &m, &g),
        (Outcome::Succeed, Invalidate::Ept(None))
    );
    g[1] = 3;
    assert_eq!(x.invept(&st, &m, &g).0, Outcome::FailValid(28));
    // INVVPID.
    m.write(OPERAND, &5u64.to_le_bytes()).unwrap();
    m.write(OPERAND + 8, &0x1000u64.to_le_bytes()).unwrap();
    for (kind, inv) in [
        (0, Invalidate::Vpid(Some(5))),
        (1, Invalidate::Vpid(Some(5))),
        (2, Invalidate::Vpid(None)),
        (3, Invalidate::Vpid(Some(5))),
    ] {
        g[1] = kind;
        assert_eq!(
            x.invvpid(&st, &m, &g),
            (Outcome::Succeed, inv),
            "type {kind}"
        );
    }
    m.write(OPERAND, &0u64.to_le_bytes()).unwrap();
    g[1] = 1;
    assert_eq!(x.invvpid(&st, &m, &g).0, Outcome::FailValid(28), "VPID 0");
    m.write(OPERAND, &(1u64 << 16 | 5).to_le_bytes()).unwrap();
    g[1] = 2;
    assert_eq!(
        x.invvpid(&st, &m, &g).0,
        Outcome::FailValid(28),
        "reserved bits"
    );
    m.write(OPERAND, &5u64.to_le_bytes()).unwrap();
    m.write(OPERAND + 8, &0x0000_8000_0000_0000u64.to_le_bytes())
        .unwrap();
    g[1] = 0;
    assert_eq!(
        x.invvpid(&st, &m, &g).0,
        Outcome::FailValid(28),
        "non-canonical address"
    );
}

#[test]
fn vmxoff_leaves_vmx_operation() {
    let (mut x, mut m, mut s) = l1();
    on(&mut x, &mut m, &mut s);
    load(&mut x, &mut m, &mut s, VMCS_A);
    x.vmcs12.set(Field::GUEST_RIP, 0x77);
    assert_eq!(x.vmxoff(&s, &mut m), Outcome::Succeed);
    assert_eq!((x.vmxon, x.current), (None, None));
    // The cached VMCS12 went back to memory.
    let mut region = [0u8; REGION_BYTES];
    m.read(VMCS_A, &mut region).unwrap();
    assert_eq!(Vmcs12::from_region(&region).get(Field::GUEST_RIP), 0x77);
    assert_eq!(x.vmxoff(&s, &mut m), ud());
}

#[test]
fn rflags_conventions() {
    let all = 0x8d5 | 0x2;
    assert_eq!(rflags_after(all, Outcome::Succeed), 0x2);
    assert_eq!(rflags_after(all, Outcome::FailInvalid), 0x3);
    assert_eq!(rflags_after(all, Outcome::FailValid(7)), 0x42);
    assert_eq!(rflags_after(0x202, Outcome::Succeed), 0x202, "IF untouched");
}

#[test]
fn a_vmcs_current_elsewhere_is_refused_after_the_architectural_checks() {
    let (mut x, mut m, mut s) = l1();
    on(&mut x, &mut m, &mut s);
    let mut asked = Vec::new();
    // CPL 3: #GP, and no CPU is asked.
    operand(&mut m, &mut s, VMCS_A);
    s.cpl = 3;
    let mut ask = |p: u64| {
        asked.push(p);
        true
    };
    assert_eq!(x.vmptrld(&s, &mut m, &mut ask), gp());
    assert_eq!(x.vmclear(&s, &mut m, &mut ask), gp());
    s.cpl = 0;
    // An address the instruction refuses anyway: its own error.
    operand(&mut m, &mut s, 0x123);
    assert_eq!(x.vmptrld(&s, &mut m, &mut ask), Outcome::FailInvalid);
    assert!(asked.is_empty());
    // Current elsewhere: refused with the invalid-address error, nothing loaded.
    load(&mut x, &mut m, &mut s, VMCS_B);
    operand(&mut m, &mut s, VMCS_A);
    let mut ask = |p: u64| {
        asked.push(p);
        true
    };
    assert_eq!(x.vmptrld(&s, &mut m, &mut ask), Outcome::FailValid(9));
    assert_eq!(x.current, Some(VMCS_B));
    let region = m.bytes[VMCS_A as usize..VMCS_A as usize + 4096].to_vec();
    assert_eq!(x.vmclear(&s, &mut m, &mut ask), Outcome::FailValid(2));
    assert_eq!(m.bytes[VMCS_A as usize..VMCS_A as usize + 4096], region[..]);
    assert_eq!(asked, [VMCS_A, VMCS_A]);
    // This CPU's current VMCS is never asked about (the hot case).
    operand(&mut m, &mut s, VMCS_B);
    let mut never = |_: u64| -> bool { panic!("asked about the current VMCS") };
    assert_eq!(x.vmptrld(&s, &mut m, &mut never), Outcome::Succeed);
    assert_eq!(x.vmclear(&s, &mut m, &mut never), Outcome::Succeed);
}
