//! The guest-side client for Linux on x86-64 (feature `std`).
//!
//! Order of business, so that a process never dies of SIGILL:
//! 1. [`Client::detect`] reads CPUID ([`crate::cpuid::detect`]) and refuses
//!    plainly when L0 is absent, the CPU is not Intel's, or L0 speaks
//!    another ABI major. A [`Client`] exists only after that check, so no
//!    `vmcall` can be issued without it, on any CPU or hypervisor.
//! 2. Buffers come from [`LockedBuffer`]: anonymous `mmap` with
//!    `MAP_POPULATE`, every page written once (so each page table entry is
//!    present and writable, not the shared zero page), then `mlock`ed so the
//!    pages stay resident while L0 walks the page tables during the call.
//!    L0 cannot fault pages in for us.
//! 3. [`Client`] issues `vmcall` with the registers of [`crate::call`] and
//!    maps the answer to [`Error`].
//!
//! The `vmcall` is the only inline assembly outside L0; it lives here
//! because the guest tools have no `arch` crate of their own.

use core::ffi::c_void;
use core::ptr::NonNull;

use crate::call::{
    CallerLevel, GuestBuffer, InRegs, Op, OutRegs, Request, Response, MAX_BUFFER_LEN,
};
use crate::cpuid::{self, CpuidRegs};
use crate::error::Error;
use crate::owner_key::{KeyAccess, OwnerKey};
use crate::status::Status;
use crate::tag::VmTag;
use crate::version::{AbiVersion, ABI_VERSION};

/// The libc calls we need, declared here to stay within the allowed
/// dependencies (std links libc on Linux, glibc and musl alike).
mod sys {
    use core::ffi::{c_int, c_void};

    pub const PROT_READ: c_int = 0x1;
    pub const PROT_WRITE: c_int = 0x2;
    pub const MAP_PRIVATE: c_int = 0x02;
    pub const MAP_ANONYMOUS: c_int = 0x20;
    pub const MAP_POPULATE: c_int = 0x8000;
    pub const MAP_FAILED: *mut c_void = !0usize as *mut c_void;

    extern "C" {
        pub fn mmap(
            addr: *mut c_void,
            len: usize,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            off: i64,
        ) -> *mut c_void;
        pub fn munmap(addr: *mut c_void, len: usize) -> c_int;
        pub fn mlock(addr: *const c_void, len: usize) -> c_int;
        pub fn munlock(addr: *const c_void, len: usize) -> c_int;
    }
}

const PAGE: usize = 4096;

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A page-aligned, populated, writable, `mlock`ed buffer.
pub struct LockedBuffer {
    ptr: NonNull<u8>,
    len: usize,
    map_len: usize,
}

impl LockedBuffer {
    /// Maps and locks `len` bytes (1..=[`MAX_BUFFER_LEN`]), zero-filled.
    pub fn new(len: usize) -> Result<LockedBuffer, Error> {
        if len == 0 || len > MAX_BUFFER_LEN {
            return Err(Error::Malformed("buffer length"));
        }
        let map_len = len.div_ceil(PAGE) * PAGE;
        // SAFETY: an anonymous private mapping at a kernel-chosen address
        // touches no existing memory.
        let p = unsafe {
            sys::mmap(
                core::ptr::null_mut(),
                map_len,
                sys::PROT_READ | sys::PROT_WRITE,
                sys::MAP_PRIVATE | sys::MAP_ANONYMOUS | sys::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == sys::MAP_FAILED {
            return Err(Error::Os {
                call: "mmap",
                errno: last_errno(),
            });
        }
        let Some(ptr) = NonNull::new(p.cast::<u8>()) else {
            return Err(Error::Os {
                call: "mmap",
                errno: 0,
            });
        };
        for off in (0..map_len).step_by(PAGE) {
            // SAFETY: `off < map_len` and the mapping is readable and writable.
            // A write fault breaks copy-on-write of the zero page.
            unsafe { ptr.as_ptr().add(off).write_volatile(0) };
        }
        // SAFETY: the range is exactly our mapping.
        if unsafe { sys::mlock(p, map_len) } != 0 {
            let errno = last_errno();
            // SAFETY: unmapping our own mapping, not used afterwards.
            unsafe { sys::munmap(p, map_len) };
            return Err(Error::Os {
                call: "mlock",
                errno,
            });
        }
        Ok(LockedBuffer { ptr, len, map_len })
    }

    /// Guest-virtual address for the ultracall.
    pub fn va(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length requested.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (a buffer has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is live for `self`'s lifetime and `len ≤ map_len`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn guest_buffer(&self) -> GuestBuffer {
        GuestBuffer {
            va: self.va(),
            len: self.len as u64,
        }
    }
}

impl Drop for LockedBuffer {
    fn drop(&mut self) {
        let p = self.ptr.as_ptr().cast::<c_void>();
        // SAFETY: our own mapping, unlocked and unmapped exactly once.
        unsafe {
            sys::munlock(p, self.map_len);
            sys::munmap(p, self.map_len);
        }
    }
}

fn host_cpuid(leaf: u32) -> CpuidRegs {
    // SAFETY: CPUID exists on every x86-64 CPU and only reads.
    #[allow(unused_unsafe)]
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, 0) };
    CpuidRegs {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Issues the ultracall.
///
/// # Safety
/// L0 must have been detected (otherwise `vmcall` raises #UD), and any
/// buffer in `regs` must stay mapped, locked and unaliased until it returns.
unsafe fn vmcall(regs: &InRegs) -> OutRegs {
    let (rax, rcx, rdx, rsi): (u64, u64, u64, u64);
    // SAFETY: per the contract above. L0 writes only RAX, RCX, RDX, RSI and
    // the named buffer (hence no `nomem`); it preserves every other register
    // and does not touch our stack.
    unsafe {
        core::arch::asm!(
            "vmcall",
            inout("rax") regs.rax => rax,
            inout("rcx") regs.rcx => rcx,
            inout("rdx") regs.rdx => rdx,
            inout("rsi") regs.rsi => rsi,
            in("rdi") regs.rdi,
            in("r8") regs.r8,
            in("r9") regs.r9,
            in("r10") regs.r10,
            in("r11") regs.r11,
            options(nostack),
        );
    }
    OutRegs { rax, rcx, rdx, rsi }
}

/// What `ping` learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingInfo {
    /// L0's ABI version.
    pub l0_version: AbiVersion,
    /// The level L0 sees the caller at (`None` if L0 sent an unknown value).
    pub level: Option<CallerLevel>,
}

/// A sealed blob fetched by `save`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedBlob {
    /// The blob, ready to carry to the destination.
    pub blob: Vec<u8>,
    /// Its epoch.
    pub epoch: u64,
}

/// First buffer size tried by `save` (a 4-UART set seals to about 21 KiB).
const SAVE_INITIAL_LEN: usize = 64 * 1024;
/// First buffer size tried by `list`.
const LIST_INITIAL_LEN: usize = 16 * 1024;

/// L0's answer to a relayed owner message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayAnswer {
    /// A Noise message for the client (empty after a forget).
    Message(Vec<u8>),
    /// L0 ended the channel's session: the `owner-end` code.
    Ended(u8),
}

/// A connection to L0; exists only once L0 has been detected.
#[derive(Debug)]
pub struct Client {
    l0_version: AbiVersion,
    /// TSC ticks the last VMCALL took, as this vCPU saw them.
    last_ticks: core::cell::Cell<u64>,
}

impl Client {
    /// Detects L0 via CPUID and checks the ABI major. Only CPUID runs
    /// here, which cannot fault; L0 answers its announcement leaf for
    /// user VMs too, so no probing `vmcall` is ever needed
    /// ([`cpuid::decide`]).
    pub fn detect() -> Result<Client, Error> {
        let l0_version = cpuid::detect(host_cpuid)?;
        if !ABI_VERSION.compatible_with(l0_version) {
            return Err(Error::VersionMismatch {
                ours: ABI_VERSION,
                l0: l0_version,
            });
        }
        Ok(Client {
            l0_version,
            last_ticks: core::cell::Cell::new(0),
        })
    }

    /// L0's ABI version as CPUID reported it.
    pub fn l0_version(&self) -> AbiVersion {
        self.l0_version
    }

    /// The guest-TSC ticks the last ultracall took (the VMCALL alone: what
    /// L0 spent on it, plus the exit and entry).
    pub fn last_call_ticks(&self) -> u64 {
        self.last_ticks.get()
    }

    fn call(&self, req: &Request) -> Result<Response, Error> {
        fn tsc() -> u64 {
            // SAFETY: RDTSC has no side effects (CR4.TSD is clear for Linux
            // user space).
            unsafe { core::arch::x86_64::_rdtsc() }
        }
        let t0 = tsc();
        // SAFETY: `self` exists only after detection; the buffer, if any, is
        // a LockedBuffer borrowed by the caller across this call.
        let regs = unsafe { vmcall(&req.to_regs()) };
        self.last_ticks.set(tsc().wrapping_sub(t0));
        let resp = regs.decode()?;
        if resp.status == Status::BadVersion {
            return Err(Error::VersionMismatch {
                ours: ABI_VERSION,
                l0: resp.l0_version,
            });
        }
        Ok(resp)
    }

    /// `ping`: L0's version and the caller's level. Allowed from anywhere.
    pub fn ping(&self) -> Result<PingInfo, Error> {
        let resp = self
            .call(&Request::new(Op::Ping, GuestBuffer::default(), None))?
            .into_result()?;
        Ok(PingInfo {
            l0_version: resp.l0_version,
            level: CallerLevel::from_raw(resp.value),
        })
    }

    /// `tag`: registers the calling VM (L2) under `tag`; returns L0's VM id.
    pub fn register_tag(&self, tag: &VmTag) -> Result<u64, Error> {
        let req = Request::new(Op::RegisterTag, GuestBuffer::default(), Some(*tag));
        Ok(self.call(&req)?.into_result()?.value)
    }

    /// `owner-key add`: the VM's first owner key (L2 only); returns how
    /// many keys the VM holds.
    pub fn owner_key_add(&self, key: OwnerKey, access: KeyAccess) -> Result<u64, Error> {
        let req = Request::owner_key_add(key, access);
        Ok(self.call(&req)?.into_result()?.value)
    }

    /// `save`: seals and freezes the devices of the VM holding `tag` (L1 only).
    pub fn save(&self, tag: &VmTag) -> Result<SavedBlob, Error> {
        let (blob, resp) = self.call_out(Op::SaveDevices, Some(*tag), SAVE_INITIAL_LEN)?;
        Ok(SavedBlob {
            blob,
            epoch: resp.value,
        })
    }

    /// `restore`: restores the devices of the VM holding `tag` from a blob
    /// (L1 only); returns the blob's epoch.
    pub fn restore(&self, tag: &VmTag, blob: &[u8]) -> Result<u64, Error> {
        if blob.len() > MAX_BUFFER_LEN {
            return Err(Error::Status(Status::BufferTooLarge));
        }
        let mut buf = LockedBuffer::new(blob.len().max(1))?;
        buf.as_mut_slice()[..blob.len()].copy_from_slice(blob);
        let gb = GuestBuffer {
            va: buf.va(),
            len: blob.len() as u64,
        };
        let resp = self
            .call(&Request::new(Op::RestoreDevices, gb, Some(*tag)))?
            .into_result()?;
        drop(buf);
        Ok(resp.value)
    }

    /// `list`: the raw list bytes; decode with [`crate::list::ListView`].
    pub fn list(&self) -> Result<Vec<u8>, Error> {
        Ok(self.call_out(Op::ListVms, None, LIST_INITIAL_LEN)?.0)
    }

    /// `owner-identity`: what owners pin (L0's identity in base64) or
    /// `off <why>` (L1 only).
    pub fn owner_identity(&self) -> Result<String, Error> {
        let (text, _) = self.call_out(Op::OwnerIdentity, None, 512)?;
        String::from_utf8(text).map_err(|_| Error::Malformed("L0's identity is not text"))
    }

    /// `owner-relay`: one owner-session message on `channel` (an empty
    /// one: forget the channel), with `buf` (at least
    /// [`crate::MAX_RELAY_MESSAGE`] bytes) as the exchange buffer
    /// (L1 only).
    pub fn owner_relay(
        &self,
        buf: &mut LockedBuffer,
        channel: u32,
        msg: &[u8],
    ) -> Result<RelayAnswer, Error> {
        if msg.len() > crate::MAX_RELAY_MESSAGE || buf.len() < crate::MAX_RELAY_MESSAGE {
            return Err(Error::Malformed("relay message or buffer length"));
        }
        buf.as_mut_slice()[..msg.len()].copy_from_slice(msg);
        let req = Request::owner_relay(
            buf.guest_buffer(),
            crate::RelayMessage {
                channel,
                len: msg.len(),
            },
        );
        let resp = self.call(&req)?.into_result()?;
        if resp.value != 0 {
            return Ok(RelayAnswer::Ended(resp.value as u8));
        }
        let n = usize::try_from(resp.len).unwrap_or(usize::MAX);
        let bytes = buf.as_slice().get(..n).ok_or(Error::Malformed(
            "L0 reported more bytes than the buffer holds",
        ))?;
        Ok(RelayAnswer::Message(bytes.to_vec()))
    }

    /// A call where L0 writes the buffer: retries once with the size L0
    /// asks for on `BUFFER_TOO_SMALL` (the state may grow in between, so
    /// a few rounds are allowed).
    fn call_out(
        &self,
        op: Op,
        tag: Option<VmTag>,
        initial: usize,
    ) -> Result<(Vec<u8>, Response), Error> {
        let mut size = initial;
        for _ in 0..4 {
            let buf = LockedBuffer::new(size)?;
            let gb: GuestBuffer = buf.guest_buffer();
            let resp = self.call(&Request::new(op, gb, tag))?;
            match resp.status {
                Status::Ok => {
                    let n = usize::try_from(resp.len).unwrap_or(usize::MAX);
                    let bytes = buf.as_slice().get(..n).ok_or(Error::Malformed(
                        "L0 reported more bytes than the buffer holds",
                    ))?;
                    return Ok((bytes.to_vec(), resp));
                }
                Status::BufferTooSmall => {
                    let needed = usize::try_from(resp.len).unwrap_or(usize::MAX);
                    if needed <= size || needed > MAX_BUFFER_LEN {
                        return Err(Error::Status(Status::BufferTooSmall));
                    }
                    size = needed;
                }
                s => return Err(Error::Status(s)),
            }
        }
        Err(Error::Status(Status::BufferTooSmall))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_buffer_is_page_aligned_zeroed_and_writable() {
        let mut b = LockedBuffer::new(5000).unwrap();
        assert_eq!(b.va() % PAGE as u64, 0);
        assert_eq!(b.len(), 5000);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[4999] = 7;
        assert_eq!(b.as_slice()[4999], 7);
    }

    #[test]
    fn locked_buffer_rejects_bad_lengths() {
        assert!(LockedBuffer::new(0).is_err());
        assert!(LockedBuffer::new(MAX_BUFFER_LEN + 1).is_err());
    }

    #[test]
    fn host_cpuid_reads_the_vendor_leaf() {
        let v = host_cpuid(0);
        let mut s = [0u8; 12];
        s[..4].copy_from_slice(&v.ebx.to_le_bytes());
        s[4..8].copy_from_slice(&v.edx.to_le_bytes());
        s[8..].copy_from_slice(&v.ecx.to_le_bytes());
        assert!(
            s.iter().all(|b| b.is_ascii_graphic() || *b == b' '),
            "{s:?}"
        );
    }

    #[test]
    fn detect_agrees_with_the_pure_procedure() {
        // What holds on every build host, Intel or AMD, bare or under any
        // hypervisor (or under L0): Client::detect returns, issuing no
        // instruction but CPUID, and succeeds exactly when the pure
        // decision finds a compatible L0.
        let pure = cpuid::detect(host_cpuid);
        eprintln!("this host: {pure:?}");
        match (Client::detect(), pure) {
            (Ok(c), Ok(v)) => assert_eq!(c.l0_version(), v),
            (Err(Error::VersionMismatch { l0, .. }), Ok(v)) => assert_eq!(l0, v),
            (Err(e), Err(p)) => assert_eq!(e, p),
            (a, b) => panic!("disagree: {a:?} vs {b:?}"),
        }
    }
}
