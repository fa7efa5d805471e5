//! What the shadow-device scenarios share: running the 64-bit L2s
//! (`hv::l2x`) while counting every exit L1 gets (the spy), scanning L1's
//! own memory for what the L2s printed or were typed, L1's ultracall
//! buffers, and the VM list.
//!
//! These scenarios only pass under L0: natively Bochs's VMX gives L1 every
//! COM access of its L2s and no ultracall is answered.

use core::ptr::addr_of;

use ultracall_abi::list::ListView;
use ultracall_abi::{Status, VmTag};

use crate::hv::fields::*;
use crate::hv::l2x::{self, EXIT_DONE, EXIT_EXC, EXIT_YIELD};
use crate::hv::mem;
use crate::hv::ucall::{self, St};
use crate::hv::vm::{Entry, Exit, Vm};
use crate::hv::vmx::vmwrite;
use crate::hv::Msg;
use crate::msg;

/// Counts the exits L1 gets, by reason, and the port I/O among them.
pub struct Spy {
    pub by_reason: [u32; 80],
    pub total: u32,
    /// I/O exits for a COM1-COM4 port: L0 keeps these, L1 must get none.
    pub com_io: u32,
    /// VMCALL exits with the ultracall magic in RAX: L0 answers those.
    pub ucall_exits: u32,
}

/// The frame of every L0-only shadow scenario: start the test hypervisor
/// with the scenario's `checks`, run `body`, check that L0 still answers,
/// print the verdict.
pub fn scenario(
    name: &'static &'static str,
    checks: &[&str],
    body: fn(&mut crate::check::Checks, &mut crate::hv::Hv),
) {
    crate::set_current_test(name);
    let mut c = crate::check::Checks::new(name);
    if let Some(mut hv) = crate::hv::start(&mut c, checks) {
        body(&mut c, &mut hv);
    }
    crate::hv::l0_alive(&mut c);
    c.finish();
}

pub fn is_com_port(port: u16) -> bool {
    [0x3f8u16, 0x2f8, 0x3e8, 0x2e8]
        .iter()
        .any(|&b| (b..b + 8).contains(&port))
}

impl Spy {
    pub const fn new() -> Spy {
        Spy {
            by_reason: [0; 80],
            total: 0,
            com_io: 0,
            ucall_exits: 0,
        }
    }

    pub fn record(&mut self, x: &Exit) {
        self.total += 1;
        if let Some(n) = self.by_reason.get_mut(x.basic() as usize) {
            *n += 1;
        }
        if x.basic() == reason::IO && is_com_port((x.qual >> 16) as u16) {
            self.com_io += 1;
        }
    }

    /// "reason:count" for every reason seen.
    pub fn summary(&self) -> Msg {
        let mut m = msg!("{} exits:", self.total);
        for (r, &n) in self.by_reason.iter().enumerate().filter(|(_, n)| **n > 0) {
            let _ = core::fmt::Write::write_fmt(&mut m, format_args!(" {r}x{n}"));
        }
        m
    }
}

/// Why `run` came back to its caller.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// The program ended (VMCALL with `EXIT_DONE`).
    Done,
    /// It yielded (`EXIT_YIELD`); the next entry continues it.
    Yield,
    /// An unexpected exception in L2 (vector).
    Exception(u64),
    /// Any other exit, for the caller to handle; RIP is at the instruction.
    Exit(Exit),
    /// VM entry failed, or the exit bound was reached.
    Failed(Entry),
}

/// L2's RIP past the exiting instruction; clears blocking by STI/MOV SS,
/// which ends with that instruction (SDM 25.4.2).
pub fn skip(x: &Exit) {
    let _ = vmwrite(GUEST_RIP, x.rip + x.len);
    let i = crate::hv::vmx::rd(GUEST_INTERRUPTIBILITY);
    if i & 3 != 0 {
        let _ = vmwrite(GUEST_INTERRUPTIBILITY, i & !3);
    }
}

/// Enters the VM (its VMCS current) until something for the caller. A
/// COM access that reaches L1 (natively: no L0 keeps it) is counted and
/// completed as an absent device would (reads all ones), so the program
/// goes on and the scenario fails on its checks rather than hanging; an
/// ultracall that reaches L1 gets a RAX that is no status.
pub fn run(vm: &mut Vm, slot: usize, spy: &mut Spy) -> Stop {
    for _ in 0..200_000 {
        let e = vm.enter();
        let Some(x) = e.exit().copied() else {
            return Stop::Failed(e);
        };
        spy.record(&x);
        match x.basic() {
            reason::IO if is_com_port((x.qual >> 16) as u16) => {
                if x.qual & 8 != 0 {
                    let size = (x.qual & 7) + 1;
                    let mask = (1u64 << (8 * size)) - 1;
                    vm.regs.rax |= mask;
                }
                skip(&x);
            }
            reason::VMCALL => match vm.regs.rax {
                EXIT_DONE => {
                    skip(&x);
                    return Stop::Done;
                }
                EXIT_YIELD => {
                    skip(&x);
                    return Stop::Yield;
                }
                EXIT_EXC => return Stop::Exception(l2x::rd(slot, l2x::D_EXC).wrapping_sub(1)),
                ultracall_abi::ULTRACALL_MAGIC => {
                    spy.ucall_exits += 1;
                    vm.regs.rax = u64::MAX;
                    skip(&x);
                }
                _ => return Stop::Exit(x),
            },
            _ => return Stop::Exit(x),
        }
    }
    Stop::Failed(Entry::Fail(crate::hv::vmx::VmFail::Valid(u32::MAX)))
}

/// `run` until the program ends; a yield just continues.
pub fn run_to_end(vm: &mut Vm, slot: usize, spy: &mut Spy) -> Stop {
    loop {
        match run(vm, slot, spy) {
            Stop::Yield => continue,
            s => return s,
        }
    }
}

impl core::fmt::Display for Stop {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Stop::Done => write!(f, "done"),
            Stop::Yield => write!(f, "yielded"),
            Stop::Exception(v) => write!(f, "exception {v} in L2"),
            Stop::Exit(x) => write!(f, "{x}"),
            Stop::Failed(e) => write!(f, "{e}"),
        }
    }
}

// ------------------------------------------------------------ buffers

pub const BUF_LEN: usize = 32 * 1024;

#[repr(C, align(4096))]
struct Buffers {
    /// What L1 hands to L0 (blobs to restore, room for saves and lists).
    io: [u8; BUF_LEN],
    /// A blob L1 keeps.
    blob: [u8; BUF_LEN],
    list: [u8; 4096],
}

static mut BUFFERS: Buffers = Buffers {
    io: [0; BUF_LEN],
    blob: [0; BUF_LEN],
    list: [0; 4096],
};

/// The buffer L1 passes to ultracalls (identity-mapped: VA = PA).
pub fn io_buf() -> &'static mut [u8; BUF_LEN] {
    // SAFETY: one CPU; each scenario uses the buffer from one place at a
    // time, and L0 writes it only during an ultracall the scenario issues.
    unsafe { &mut *core::ptr::addr_of_mut!(BUFFERS.io) }
}

pub fn blob_buf() -> &'static mut [u8; BUF_LEN] {
    // SAFETY: as for `io_buf`.
    unsafe { &mut *core::ptr::addr_of_mut!(BUFFERS.blob) }
}

fn list_buf() -> &'static mut [u8; 4096] {
    // SAFETY: as for `io_buf`.
    unsafe { &mut *core::ptr::addr_of_mut!(BUFFERS.list) }
}

pub fn va(b: &[u8]) -> u64 {
    b.as_ptr() as u64
}

// ------------------------------------------------------------ VM list

/// One VM as LIST_VMS shows it, with its COM1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Row {
    pub id: u64,
    pub tag: Option<VmTag>,
    pub frozen: bool,
    pub com1_in: u64,
    pub com1_out: u64,
    pub com1_attached: bool,
}

/// The VM list, or the status L0 answered.
pub fn list_vms(rows: &mut [Row]) -> Result<usize, u64> {
    let b = list_buf();
    let o = ucall::list(va(b), b.len() as u64);
    if !o.is(Status::Ok) {
        return Err(o.rax);
    }
    let Ok(view) = ListView::parse(&b[..o.rcx.min(b.len() as u64) as usize]) else {
        return Err(u64::MAX);
    };
    let mut n = 0;
    for vm in view.vms().take(rows.len()) {
        let mut r = Row {
            id: vm.info.vm_id,
            tag: vm.info.tag,
            frozen: vm.info.frozen,
            ..Row::default()
        };
        if let Some(d) = vm.devices().find(|d| d.port_base == 0x3f8) {
            r.com1_in = d.bytes_in;
            r.com1_out = d.bytes_out;
            r.com1_attached = d.operator_attached;
        }
        rows[n] = r;
        n += 1;
    }
    Ok(n)
}

/// The listed VM holding `tag`.
pub fn listed(tag: &VmTag) -> Result<Option<Row>, u64> {
    let mut rows = [Row::default(); 8];
    let n = list_vms(&mut rows)?;
    Ok(rows[..n]
        .iter()
        .find(|r| r.tag.as_ref() == Some(tag))
        .copied())
}

/// Lists `tag` until an operator follows its COM1 or `ticks` TSC ticks
/// passed; the last row seen (attached or not).
pub fn until_attached(tag: &VmTag, ticks: u64) -> Option<Row> {
    let deadline = crate::hv::cpu::rdtsc() + ticks;
    loop {
        let row = listed(tag).ok().flatten();
        if row.is_none_or(|r| r.com1_attached) || crate::hv::cpu::rdtsc() >= deadline {
            return row;
        }
    }
}

pub struct ShowRow(pub Option<Row>);

impl core::fmt::Display for ShowRow {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self.0 {
            None => write!(f, "not listed"),
            Some(r) => write!(
                f,
                "vm {} tag {} frozen {} COM1 in {} out {}",
                r.id,
                r.tag.as_ref().map_or("-", |t| t.as_str()),
                r.frozen as u8,
                r.com1_in,
                r.com1_out
            ),
        }
    }
}

/// Lower-case status name for CHECK lines.
pub fn st(raw: u64) -> St {
    St(raw)
}

// ------------------------------------------------------------ the spy's scan

extern "C" {
    static __guest_start: u8;
    static __guest_end: u8;
}

/// Counts what `at` recognises in `[start, end)`.
pub fn scan(start: u64, end: u64, at: &dyn Fn(&[u8]) -> bool) -> usize {
    // SAFETY: the range is this guest's own identity-mapped memory, read
    // while nothing else (no L2, no L0 call) changes it.
    let hay = unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    crate::spy::count(hay, at)
}

/// Counts what `at` recognises in L1's own memory — its image: code,
/// data, .bss and stack — leaving out the pages L2s own. Returns the
/// count and the bytes scanned.
pub fn scan_l1(at: &dyn Fn(&[u8]) -> bool) -> (usize, u64) {
    let (start, end) = (addr_of!(__guest_start) as u64, addr_of!(__guest_end) as u64);
    let mut holes = mem::l2_ranges();
    holes.sort_unstable();
    let (mut hits, mut bytes, mut at_addr) = (0, 0, start);
    for (hs, he) in holes.into_iter().chain(core::iter::once((end, end))) {
        let (s, e) = (at_addr, hs.clamp(start, end));
        if e > s {
            hits += scan(s, e, at);
            bytes += e - s;
        }
        at_addr = at_addr.max(he.min(end));
    }
    (hits, bytes)
}

/// Counts what `at` recognises in the data page of the 64-bit L2 `slot`.
pub fn scan_l2_data(slot: usize, at: &dyn Fn(&[u8]) -> bool) -> usize {
    let d = l2x::data(slot, 0);
    scan(d, d + mem::PAGE, at)
}
