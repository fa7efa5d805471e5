//! Operations and the register convention.
//!
//! An ultracall is `vmcall` in 64-bit mode with these registers:
//!
//! | in   | meaning                                                          |
//! |------|------------------------------------------------------------------|
//! | RAX  | [`ULTRACALL_MAGIC`]                                              |
//! | RCX  | operation number ([`Op`])                                        |
//! | RDX  | caller's ABI version, `major << 16 \| minor` (upper 32 bits zero) |
//! | RSI  | buffer guest-virtual address (0 when the op takes no buffer)     |
//! | RDI  | buffer length in bytes (0 when the op takes no buffer)           |
//! | R8..R11 | VM tag, bytes 0..8, 8..16, 16..24, 24..32, little-endian, NUL-padded (0 when the op takes no tag); `OWNER_RELAY`: R8 = channel, R9 = message length |
//!
//! | out  | meaning                                                          |
//! |------|------------------------------------------------------------------|
//! | RAX  | [`Status`]                                                       |
//! | RCX  | bytes written/read on `OK`; bytes needed on `BUFFER_TOO_SMALL`; else 0 |
//! | RDX  | L0's ABI version, on every return                                |
//! | RSI  | op-specific value (see [`Op`]), else 0                           |
//!
//! L0 writes all four outputs on every return (unused ones as 0, so no L0
//! data leaks) and preserves every other register, RFLAGS included; RIP
//! advances past the `vmcall`. Registers that an op does not use are
//! ignored by this ABI version; callers pass 0 so a later minor can give
//! them meaning.
//!
//! The magic's upper half is non-zero, so it cannot collide with KVM, Xen
//! or Hyper-V hypercall numbers (small integers). A `vmcall` whose RAX is
//! not the magic is not an ultracall: from L2, L0 reflects it to the guest
//! hypervisor; from L1, L0 injects #UD. Ultracalls from 16/32-bit code are
//! not recognised (the upper register halves are not the caller's to set).

use crate::error::Error;
use crate::owner_key::{KeyAccess, OwnerKey};
use crate::status::Status;
use crate::tag::VmTag;
use crate::version::{AbiVersion, ABI_VERSION};

/// RAX of an ultracall: `"L0UCALL1"` read as a little-endian u64.
pub const ULTRACALL_MAGIC: u64 = u64::from_le_bytes(*b"L0UCALL1");

// Hypercall numbers of other hypervisors are small; a non-zero upper half
// keeps the magic clear of all of them.
const _: () = assert!(ULTRACALL_MAGIC >> 32 != 0);

/// Largest Noise message of an owner session (`OWNER_RELAY`): the
/// buffer of a relayed message holds at least this many bytes, so L0 has
/// room for any answer.
pub const MAX_RELAY_MESSAGE: usize = 560;

/// Largest buffer an ultracall may pass (1 MiB). L0 copies page by page, so
/// this bounds the time one call spends in L0.
pub const MAX_BUFFER_LEN: usize = 1 << 20;

/// Which guest level issued the call (L0 knows; the caller cannot forge it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CallerLevel {
    /// The cloud VM (guest hypervisor, migration manager).
    L1 = 1,
    /// A user VM run by L1.
    L2 = 2,
}

impl CallerLevel {
    /// Decodes the value `Ping` returns in RSI.
    pub const fn from_raw(raw: u64) -> Option<CallerLevel> {
        match raw {
            1 => Some(CallerLevel::L1),
            2 => Some(CallerLevel::L2),
            _ => None,
        }
    }
}

/// How an operation uses the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferUse {
    /// No buffer; RSI and RDI are ignored.
    None,
    /// L0 reads the buffer (needs present pages).
    L0Reads,
    /// L0 writes the buffer (needs present, writable pages).
    L0Writes,
    /// L0 reads the buffer, then writes its answer over it (needs
    /// present, writable pages).
    L0ReadsThenWrites,
}

/// The operations (RCX).
///
/// Any CPL may call: L0 cannot tell a guest's kernel from its processes
/// apart in a way the guest could not also fake, and every operation is one
/// that the *whole* calling VM is entitled to (see docs/ultracall-abi.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum Op {
    /// Any level. Out: RSI = caller level (1 or 2). Answers even on a major
    /// mismatch, so a client can always learn L0's version.
    Ping = 1,
    /// L2 only. In: tag. Binds the calling VM to the tag (once per VM).
    /// Out: RSI = L0's identity number of the VM.
    RegisterTag = 2,
    /// L1 only. In: tag, buffer (L0 writes). Seals the devices of the VM
    /// holding the tag into the buffer and freezes them. Out: RCX = blob
    /// length, RSI = the blob's epoch. A buffer of length 0 asks for the
    /// size: `BUFFER_TOO_SMALL` with RCX = bytes needed, nothing frozen.
    SaveDevices = 3,
    /// L1 only. In: tag, buffer holding a blob (L0 reads). Opens the blob
    /// and restores the devices of the VM holding the tag. Out: RCX = bytes
    /// consumed, RSI = the blob's epoch.
    RestoreDevices = 4,
    /// L1 only. In: buffer (L0 writes). Writes the VM list
    /// ([`crate::list`]). Out: RCX = bytes written, RSI = number of VMs.
    ListVms = 5,
    /// L1 only (since 1.1). In: RSI = vector (32..=255), or 0 to turn the
    /// relay off. From then on, a rising edge of a user VM's shadow-device
    /// interrupt makes L0 raise this external-interrupt vector in L1; the
    /// interrupt carries no data.
    SetIrqRelay = 6,
    /// L1 only (since 1.1). Takes the interrupt edges L0 has pending for one
    /// user VM. Out: RCX = a VMCS pointer L1 uses for that VM, RSI = the
    /// ISA IRQ lines with a new edge (bit n = IRQ n), RDI = the lines'
    /// current levels. `NO_DEVICE` when nothing is pending.
    TakeIrqs = 7,
    /// L2 only (since 1.3). In: R8..R11 = an owner's X25519 public key
    /// (bytes 0..32 as a tag would be), RSI = its access ([`KeyAccess`]:
    /// 1 read-only, 2 read-write). Sets the VM's first owner key; the same
    /// key again answers `OK` (an agent may repeat it), another key
    /// `OWNER_KEYS_SET`: further keys come only through an owner session.
    /// Out: RSI = the number of keys the VM holds.
    OwnerKeyAdd = 8,
    /// L1 only (since 1.4). One message of an owner session, carried by
    /// the cloud VM's relay (`l0-relay`). In: R8 = the relay's channel
    /// (< 2^32, one per session), R9 = the message's length (1..=
    /// [`MAX_RELAY_MESSAGE`]; 0: the relay's connection closed, L0
    /// forgets the channel's session), buffer of at least
    /// [`MAX_RELAY_MESSAGE`] bytes holding the message (L0 reads it, then
    /// writes its answer over it). Out: RSI = 0 and RCX = the answer's
    /// length, or RSI = why L0 ended the session (an `owner-end` code,
    /// docs/console-protocol.md) and RCX = 0.
    OwnerRelay = 9,
    /// L1 only (since 1.4). In: buffer (L0 writes). Writes what owners
    /// pin as text: L0's identity in base64, or `off <why>` when owner
    /// sessions are off. Out: RCX = bytes written.
    OwnerIdentity = 10,
}

impl Op {
    /// Every operation.
    pub const ALL: &'static [Op] = &[
        Op::Ping,
        Op::RegisterTag,
        Op::SaveDevices,
        Op::RestoreDevices,
        Op::ListVms,
        Op::SetIrqRelay,
        Op::TakeIrqs,
        Op::OwnerKeyAdd,
        Op::OwnerRelay,
        Op::OwnerIdentity,
    ];

    /// Decodes RCX.
    pub const fn from_raw(raw: u64) -> Option<Op> {
        match raw {
            1 => Some(Op::Ping),
            2 => Some(Op::RegisterTag),
            3 => Some(Op::SaveDevices),
            4 => Some(Op::RestoreDevices),
            5 => Some(Op::ListVms),
            6 => Some(Op::SetIrqRelay),
            7 => Some(Op::TakeIrqs),
            8 => Some(Op::OwnerKeyAdd),
            9 => Some(Op::OwnerRelay),
            10 => Some(Op::OwnerIdentity),
            _ => None,
        }
    }

    /// The RCX value.
    pub const fn raw(self) -> u64 {
        self as u64
    }

    /// Short lower-case name (the CLI's command word).
    pub const fn name(self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::RegisterTag => "tag",
            Op::SaveDevices => "save",
            Op::RestoreDevices => "restore",
            Op::ListVms => "list",
            Op::SetIrqRelay => "irq-relay",
            Op::TakeIrqs => "take-irqs",
            Op::OwnerKeyAdd => "owner-key",
            Op::OwnerRelay => "owner-relay",
            Op::OwnerIdentity => "owner-identity",
        }
    }

    /// The ABI minor (of major 1) that introduced the operation.
    pub const fn since_minor(self) -> u16 {
        match self {
            Op::SetIrqRelay | Op::TakeIrqs => 1,
            Op::OwnerKeyAdd => 3,
            Op::OwnerRelay | Op::OwnerIdentity => 4,
            _ => 0,
        }
    }

    /// Who may call it.
    pub const fn allowed_from(self, level: CallerLevel) -> bool {
        match self {
            Op::Ping => true,
            Op::RegisterTag | Op::OwnerKeyAdd => matches!(level, CallerLevel::L2),
            Op::SaveDevices
            | Op::RestoreDevices
            | Op::ListVms
            | Op::SetIrqRelay
            | Op::TakeIrqs
            | Op::OwnerRelay
            | Op::OwnerIdentity => matches!(level, CallerLevel::L1),
        }
    }

    /// Whether R8..R11 carry a tag.
    pub const fn takes_tag(self) -> bool {
        matches!(self, Op::RegisterTag | Op::SaveDevices | Op::RestoreDevices)
    }

    /// How the buffer is used.
    pub const fn buffer_use(self) -> BufferUse {
        match self {
            Op::Ping | Op::RegisterTag | Op::SetIrqRelay | Op::TakeIrqs | Op::OwnerKeyAdd => {
                BufferUse::None
            }
            Op::RestoreDevices => BufferUse::L0Reads,
            Op::SaveDevices | Op::ListVms | Op::OwnerIdentity => BufferUse::L0Writes,
            Op::OwnerRelay => BufferUse::L0ReadsThenWrites,
        }
    }
}

/// The input registers of an ultracall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct InRegs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
}

/// The output registers of an ultracall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct OutRegs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
}

/// A guest buffer named by guest-virtual address and length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestBuffer {
    /// Guest-virtual address (walked through the caller's page tables).
    pub va: u64,
    /// Length in bytes (≤ [`MAX_BUFFER_LEN`] once decoded).
    pub len: u64,
}

/// A decoded, validated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub op: Op,
    /// The caller's ABI version.
    pub version: AbiVersion,
    /// The buffer; zero when [`Op::buffer_use`] is `None`.
    pub buffer: GuestBuffer,
    /// The tag, when [`Op::takes_tag`].
    pub tag: Option<VmTag>,
    /// The key and its access, for [`Op::OwnerKeyAdd`].
    pub owner_key: Option<(OwnerKey, KeyAccess)>,
    /// The channel and the message's length, for [`Op::OwnerRelay`].
    pub relay: Option<RelayMessage>,
}

/// Where a relayed owner message goes ([`Op::OwnerRelay`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayMessage {
    /// The relay's channel: one per session.
    pub channel: u32,
    /// Bytes of the message at the buffer's start; 0: forget the channel.
    pub len: usize,
}

impl Request {
    /// A request in this crate's ABI version.
    pub fn new(op: Op, buffer: GuestBuffer, tag: Option<VmTag>) -> Request {
        Request {
            op,
            version: ABI_VERSION,
            buffer,
            tag,
            owner_key: None,
            relay: None,
        }
    }

    /// `OWNER_RELAY` of the message in the first `msg.len` bytes of `buffer`.
    pub fn owner_relay(buffer: GuestBuffer, msg: RelayMessage) -> Request {
        Request {
            relay: Some(msg),
            ..Request::new(Op::OwnerRelay, buffer, None)
        }
    }

    /// `OWNER_KEY_ADD` of `key` with `access`.
    pub fn owner_key_add(key: OwnerKey, access: KeyAccess) -> Request {
        Request {
            owner_key: Some((key, access)),
            ..Request::new(Op::OwnerKeyAdd, GuestBuffer::default(), None)
        }
    }

    /// The registers a caller loads before `vmcall`.
    pub fn to_regs(&self) -> InRegs {
        let tag = match (self.tag, self.owner_key, self.relay) {
            (Some(t), _, _) => t.to_regs(),
            (None, Some((k, _)), _) => k.to_regs(),
            (None, None, Some(r)) => [u64::from(r.channel), r.len as u64, 0, 0],
            (None, None, None) => [0; 4],
        };
        let rsi = match self.owner_key {
            Some((_, access)) => u64::from(access.raw()),
            None => self.buffer.va,
        };
        InRegs {
            rax: ULTRACALL_MAGIC,
            rcx: self.op.raw(),
            rdx: u64::from(self.version.to_raw()),
            rsi,
            rdi: self.buffer.len,
            r8: tag[0],
            r9: tag[1],
            r10: tag[2],
            r11: tag[3],
        }
    }
}

impl InRegs {
    /// True when RAX carries the magic: L0 handles the `vmcall` itself.
    pub const fn is_ultracall(&self) -> bool {
        self.rax == ULTRACALL_MAGIC
    }

    /// L0's decoding, against L0's own [`ABI_VERSION`].
    pub fn decode(&self, level: CallerLevel) -> Result<Request, Status> {
        self.decode_for(level, ABI_VERSION)
    }

    /// Decodes and validates in a fixed order, so a caller gets one
    /// predictable status: unknown op → version (not for `Ping`) →
    /// permission → buffer length → tag. Buffer mapping is checked later by
    /// L0's page walk (`BUFFER_FAULT`, `BUFFER_NOT_WRITABLE`).
    pub fn decode_for(&self, level: CallerLevel, l0: AbiVersion) -> Result<Request, Status> {
        if !self.is_ultracall() {
            // Callers check first; treat a stray call as an unknown op.
            return Err(Status::UnknownOp);
        }
        let op = Op::from_raw(self.rcx).ok_or(Status::UnknownOp)?;
        let version = AbiVersion::from_reg(self.rdx);
        let version = match (op, version) {
            (Op::Ping, v) => v.unwrap_or(AbiVersion { major: 0, minor: 0 }),
            (_, Some(v)) if v.compatible_with(l0) => v,
            _ => return Err(Status::BadVersion),
        };
        if op.since_minor() > l0.minor {
            return Err(Status::UnknownOp);
        }
        if !op.allowed_from(level) {
            return Err(Status::NotPermitted);
        }
        let buffer = match op.buffer_use() {
            BufferUse::None => GuestBuffer::default(),
            BufferUse::L0Reads | BufferUse::L0Writes | BufferUse::L0ReadsThenWrites => {
                if self.rdi > MAX_BUFFER_LEN as u64 {
                    return Err(Status::BufferTooLarge);
                }
                GuestBuffer {
                    va: self.rsi,
                    len: self.rdi,
                }
            }
        };
        let tag = if op.takes_tag() {
            Some(
                VmTag::from_regs([self.r8, self.r9, self.r10, self.r11])
                    .map_err(|_| Status::TagInvalid)?,
            )
        } else {
            None
        };
        let owner_key = if op == Op::OwnerKeyAdd {
            let access = KeyAccess::from_raw(self.rsi).ok_or(Status::InvalidArgument)?;
            let key = OwnerKey::from_regs([self.r8, self.r9, self.r10, self.r11])
                .map_err(|_| Status::OwnerKeyInvalid)?;
            Some((key, access))
        } else {
            None
        };
        let relay = if op == Op::OwnerRelay {
            let channel = u32::try_from(self.r8).map_err(|_| Status::InvalidArgument)?;
            if self.r9 > MAX_RELAY_MESSAGE as u64 {
                return Err(Status::InvalidArgument);
            }
            Some(RelayMessage {
                channel,
                len: self.r9 as usize,
            })
        } else {
            None
        };
        Ok(Request {
            op,
            version,
            buffer,
            tag,
            owner_key,
            relay,
        })
    }
}

/// A decoded answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// RAX.
    pub status: Status,
    /// RCX: bytes written/read, or bytes needed on `BUFFER_TOO_SMALL`.
    pub len: u64,
    /// RDX.
    pub l0_version: AbiVersion,
    /// RSI: the op-specific value.
    pub value: u64,
}

impl Response {
    /// Success with a length and a value.
    pub fn ok(len: u64, value: u64) -> Response {
        Response {
            status: Status::Ok,
            len,
            l0_version: ABI_VERSION,
            value,
        }
    }

    /// A failure (RCX and RSI zero).
    pub fn error(status: Status) -> Response {
        Response {
            status,
            len: 0,
            l0_version: ABI_VERSION,
            value: 0,
        }
    }

    /// `BUFFER_TOO_SMALL` telling the caller how many bytes to retry with.
    pub fn too_small(needed: u64) -> Response {
        Response {
            status: Status::BufferTooSmall,
            len: needed,
            l0_version: ABI_VERSION,
            value: 0,
        }
    }

    /// The registers L0 writes back.
    pub fn to_regs(&self) -> OutRegs {
        OutRegs {
            rax: self.status.raw(),
            rcx: self.len,
            rdx: u64::from(self.l0_version.to_raw()),
            rsi: self.value,
        }
    }

    /// `Ok(self)` for `OK`, otherwise the status as an error.
    pub fn into_result(self) -> Result<Response, Error> {
        match self.status {
            Status::Ok => Ok(self),
            s => Err(Error::Status(s)),
        }
    }
}

impl OutRegs {
    /// The caller's decoding. A RAX that is no status means the `vmcall`
    /// was not answered by a compatible L0.
    pub fn decode(&self) -> Result<Response, Error> {
        let status = Status::from_raw(self.rax).ok_or(Error::UnknownStatus(self.rax))?;
        let l0_version =
            AbiVersion::from_reg(self.rdx).ok_or(Error::Malformed("RDX (L0 version)"))?;
        Ok(Response {
            status,
            len: self.rcx,
            l0_version,
            value: self.rsi,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> VmTag {
        VmTag::new(b"vm-7").unwrap()
    }

    #[test]
    fn magic_is_l0ucall1_in_little_endian() {
        assert_eq!(ULTRACALL_MAGIC.to_le_bytes(), *b"L0UCALL1");
        assert_eq!(ULTRACALL_MAGIC, 0x314c_4c41_4355_304c);
    }

    #[test]
    fn op_numbers_round_trip() {
        for &op in Op::ALL {
            assert_eq!(Op::from_raw(op.raw()), Some(op));
        }
        assert_eq!(Op::from_raw(0), None);
        assert_eq!(Op::from_raw(11), None);
    }

    #[test]
    fn permission_table() {
        use CallerLevel::*;
        assert!(Op::Ping.allowed_from(L1) && Op::Ping.allowed_from(L2));
        assert!(!Op::RegisterTag.allowed_from(L1) && Op::RegisterTag.allowed_from(L2));
        assert!(!Op::OwnerKeyAdd.allowed_from(L1) && Op::OwnerKeyAdd.allowed_from(L2));
        for op in [
            Op::SaveDevices,
            Op::RestoreDevices,
            Op::ListVms,
            Op::SetIrqRelay,
            Op::TakeIrqs,
        ] {
            assert!(op.allowed_from(L1) && !op.allowed_from(L2), "{op:?}");
        }
    }

    #[test]
    fn owner_key_add_round_trips_and_is_checked() {
        let key = OwnerKey([9; 32]);
        let req = Request::owner_key_add(key, KeyAccess::ReadWrite);
        let regs = req.to_regs();
        assert_eq!(regs.rcx, 8);
        assert_eq!(regs.rsi, 2);
        assert_eq!(regs.decode(CallerLevel::L2), Ok(req));
        assert_eq!(regs.decode(CallerLevel::L1), Err(Status::NotPermitted));
        let old_l0 = AbiVersion { major: 1, minor: 2 };
        assert_eq!(
            regs.decode_for(CallerLevel::L2, old_l0),
            Err(Status::UnknownOp)
        );
        let mut bad = regs;
        bad.rsi = 3;
        assert_eq!(bad.decode(CallerLevel::L2), Err(Status::InvalidArgument));
        let mut zero = regs;
        (zero.r8, zero.r9, zero.r10, zero.r11) = (0, 0, 0, 0);
        assert_eq!(zero.decode(CallerLevel::L2), Err(Status::OwnerKeyInvalid));
    }

    #[test]
    fn owner_relay_round_trips_and_is_checked() {
        let buf = GuestBuffer {
            va: 0x7000_0000,
            len: MAX_RELAY_MESSAGE as u64,
        };
        let req = Request::owner_relay(
            buf,
            RelayMessage {
                channel: 7,
                len: 48,
            },
        );
        let regs = req.to_regs();
        assert_eq!((regs.rcx, regs.r8, regs.r9), (9, 7, 48));
        assert_eq!(regs.decode(CallerLevel::L1), Ok(req));
        // Only the cloud VM's relay carries sessions.
        assert_eq!(regs.decode(CallerLevel::L2), Err(Status::NotPermitted));
        let old_l0 = AbiVersion { major: 1, minor: 3 };
        assert_eq!(
            regs.decode_for(CallerLevel::L1, old_l0),
            Err(Status::UnknownOp)
        );
        let mut long = regs;
        long.r9 = MAX_RELAY_MESSAGE as u64 + 1;
        assert_eq!(long.decode(CallerLevel::L1), Err(Status::InvalidArgument));
        let mut wide = regs;
        wide.r8 = 1 << 32;
        assert_eq!(wide.decode(CallerLevel::L1), Err(Status::InvalidArgument));
        let id = Request::new(Op::OwnerIdentity, buf, None).to_regs();
        assert_eq!(id.decode(CallerLevel::L2), Err(Status::NotPermitted));
        assert_eq!(
            id.decode(CallerLevel::L1).map(|r| r.op.buffer_use()),
            Ok(BufferUse::L0Writes)
        );
    }

    #[test]
    fn relay_ops_need_minor_1() {
        let regs = Request::new(Op::TakeIrqs, GuestBuffer::default(), None).to_regs();
        assert_eq!(regs.decode(CallerLevel::L1).map(|r| r.op), Ok(Op::TakeIrqs));
        let old_l0 = AbiVersion { major: 1, minor: 0 };
        assert_eq!(
            regs.decode_for(CallerLevel::L1, old_l0),
            Err(Status::UnknownOp)
        );
        assert_eq!(Op::SetIrqRelay.since_minor(), 1);
        assert_eq!(Op::ListVms.since_minor(), 0);
    }

    #[test]
    fn request_round_trips_through_registers() {
        let req = Request::new(
            Op::SaveDevices,
            GuestBuffer {
                va: 0x7fff_0000_1000,
                len: 4096,
            },
            Some(tag()),
        );
        let regs = req.to_regs();
        assert_eq!(regs.rax, ULTRACALL_MAGIC);
        assert_eq!(regs.rcx, 3);
        assert_eq!(regs.rdx, u64::from(ABI_VERSION.to_raw()));
        assert_eq!(regs.decode(CallerLevel::L1), Ok(req));
    }

    #[test]
    fn decode_rejects_unknown_op_first() {
        let mut regs = Request::new(Op::Ping, GuestBuffer::default(), None).to_regs();
        regs.rcx = 99;
        regs.rdx = 0xdead_0000_0000;
        assert_eq!(regs.decode(CallerLevel::L2), Err(Status::UnknownOp));
    }

    #[test]
    fn decode_rejects_other_major_but_ping_answers() {
        let mut regs = Request::new(
            Op::ListVms,
            GuestBuffer {
                va: 0x1000,
                len: 16,
            },
            None,
        )
        .to_regs();
        regs.rdx = u64::from(AbiVersion { major: 2, minor: 0 }.to_raw());
        assert_eq!(regs.decode(CallerLevel::L1), Err(Status::BadVersion));
        regs.rcx = Op::Ping.raw();
        assert!(regs.decode(CallerLevel::L1).is_ok());
    }

    #[test]
    fn decode_checks_permission() {
        let regs = Request::new(
            Op::RestoreDevices,
            GuestBuffer {
                va: 0x1000,
                len: 16,
            },
            Some(tag()),
        )
        .to_regs();
        assert_eq!(regs.decode(CallerLevel::L2), Err(Status::NotPermitted));
        let regs = Request::new(Op::RegisterTag, GuestBuffer::default(), Some(tag())).to_regs();
        assert_eq!(regs.decode(CallerLevel::L1), Err(Status::NotPermitted));
    }

    #[test]
    fn decode_limits_buffer_length() {
        let ok = Request::new(
            Op::ListVms,
            GuestBuffer {
                va: 0x1000,
                len: MAX_BUFFER_LEN as u64,
            },
            None,
        );
        assert!(ok.to_regs().decode(CallerLevel::L1).is_ok());
        let mut regs = ok.to_regs();
        regs.rdi += 1;
        assert_eq!(regs.decode(CallerLevel::L1), Err(Status::BufferTooLarge));
    }

    #[test]
    fn decode_rejects_invalid_tag() {
        let mut regs = Request::new(Op::RegisterTag, GuestBuffer::default(), Some(tag())).to_regs();
        regs.r8 = u64::from_le_bytes(*b"bad tag!");
        assert_eq!(regs.decode(CallerLevel::L2), Err(Status::TagInvalid));
    }

    #[test]
    fn decode_ignores_buffer_registers_for_ops_without_buffer() {
        let mut regs = Request::new(Op::Ping, GuestBuffer::default(), None).to_regs();
        regs.rsi = 0x1234;
        regs.rdi = u64::MAX;
        assert_eq!(
            regs.decode(CallerLevel::L1).unwrap().buffer,
            GuestBuffer::default()
        );
    }

    #[test]
    fn non_magic_is_not_an_ultracall() {
        let mut regs = Request::new(Op::Ping, GuestBuffer::default(), None).to_regs();
        assert!(regs.is_ultracall());
        regs.rax = 12; // e.g. a KVM hypercall number
        assert!(!regs.is_ultracall());
    }

    #[test]
    fn response_round_trips_through_registers() {
        for r in [
            Response::ok(80, 7),
            Response::error(Status::BlobReplayed),
            Response::too_small(9000),
        ] {
            assert_eq!(r.to_regs().decode(), Ok(r));
        }
        assert_eq!(Response::too_small(9000).to_regs().rcx, 9000);
    }

    #[test]
    fn response_decode_rejects_non_status() {
        let regs = OutRegs {
            rax: 0x1_0000,
            ..OutRegs::default()
        };
        assert_eq!(regs.decode(), Err(Error::UnknownStatus(0x1_0000)));
    }

    #[test]
    fn into_result_maps_failures() {
        assert_eq!(
            Response::error(Status::UnknownTag).into_result(),
            Err(Error::Status(Status::UnknownTag))
        );
        assert!(Response::ok(0, 0).into_result().is_ok());
    }
}
