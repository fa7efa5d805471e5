//! The `ultracall-fuzz` oracle: random ultracalls and, for each, the
//! status L0 must answer with, from a model of what L0 holds (the fuzzed
//! user VM's tag, whether its devices are frozen, the epoch ledger for its
//! tag, the blob L1 last got). Written from docs/ultracall-abi.md and the
//! caller rules, not from L0's decoder, so the two can disagree; plain
//! arithmetic, tested on the host.
//!
//! The check order it encodes: unknown op → version (not for Ping) →
//! permission → buffer length limit → tag validity → non-canonical
//! buffer → the operation. Within the operations, as L0 carries them
//! out: SAVE looks up the tag and the frozen flag, then the size, then
//! writes the buffer; RESTORE reads the buffer, then looks up the tag,
//! then opens the blob; LIST compares the size, then writes.

use ultracall_abi::{Op, Status, MAX_BUFFER_LEN, ULTRACALL_MAGIC};

/// xorshift64* (Vigna): small, seedable, good enough to pick test inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0), near enough.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    L1 = 1,
    L2 = 2,
}

/// Input registers, in this order.
pub const RAX: usize = 0;
pub const RCX: usize = 1;
pub const RDX: usize = 2;
pub const RSI: usize = 3;
pub const RDI: usize = 4;
pub const R8: usize = 5;

/// Where the buffer points, as the fuzzer chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buf {
    /// `off` bytes into L1's fuzz buffer: mapped, writable RAM.
    Good { off: u64 },
    /// Canonical, not mapped in L1's page tables.
    Unmapped,
    /// Not canonical (start, or end of the range).
    NonCanonical,
}

/// What a RESTORE's buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    Garbage,
    /// The blob L1 got from its last successful SAVE.
    Blob,
    /// That blob with bit `n` flipped.
    Flipped(usize),
    /// That blob's first `n` bytes (0 < n < its length).
    Truncated(usize),
    /// That blob and one byte more.
    Extended,
}

#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub regs: [u64; 9],
    pub buf: Buf,
    pub content: Content,
}

/// What L0 must answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Is(Status),
    OneOf(&'static [Status]),
}

impl Expect {
    pub fn allows(&self, s: Status) -> bool {
        match self {
            Expect::Is(e) => *e == s,
            Expect::OneOf(v) => v.contains(&s),
        }
    }
}

/// The tag in R8..R11 if it follows the charset and padding rules.
pub fn tag_of(regs: &[u64; 9]) -> Option<[u8; 32]> {
    let mut t = [0u8; 32];
    for i in 0..4 {
        t[8 * i..8 * i + 8].copy_from_slice(&regs[R8 + i].to_le_bytes());
    }
    let len = t.iter().position(|&b| b == 0).unwrap_or(32);
    let ok = len > 0
        && t[len..].iter().all(|&b| b == 0)
        && t[0].is_ascii_alphanumeric()
        && t[1..len]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(t)
}

fn canonical(va: u64) -> bool {
    let top = (va as i64) >> 47;
    top == 0 || top == -1
}

/// The statuses decoding alone decides, else the operation.
pub fn prefix(level: Level, r: &[u64; 9]) -> Result<Op, Status> {
    let op = match r[RCX] {
        1 => Op::Ping,
        2 => Op::RegisterTag,
        3 => Op::SaveDevices,
        4 => Op::RestoreDevices,
        5 => Op::ListVms,
        6 => Op::SetIrqRelay,
        7 => Op::TakeIrqs,
        8 => Op::OwnerKeyAdd,
        9 => Op::OwnerRelay,
        10 => Op::OwnerIdentity,
        _ => return Err(Status::UnknownOp),
    };
    let major_ok = r[RDX] >> 32 == 0 && r[RDX] >> 16 == 1;
    if op != Op::Ping && !major_ok {
        return Err(Status::BadVersion);
    }
    let l1_only = matches!(
        op,
        Op::SaveDevices
            | Op::RestoreDevices
            | Op::ListVms
            | Op::SetIrqRelay
            | Op::TakeIrqs
            | Op::OwnerRelay
            | Op::OwnerIdentity
    );
    match (op, level) {
        (Op::RegisterTag | Op::OwnerKeyAdd, Level::L1) => return Err(Status::NotPermitted),
        (_, Level::L2) if l1_only => return Err(Status::NotPermitted),
        _ => {}
    }
    let buffered = matches!(
        op,
        Op::SaveDevices | Op::RestoreDevices | Op::ListVms | Op::OwnerRelay | Op::OwnerIdentity
    );
    if buffered && r[RDI] > MAX_BUFFER_LEN as u64 {
        return Err(Status::BufferTooLarge);
    }
    if matches!(op, Op::RegisterTag | Op::SaveDevices | Op::RestoreDevices) && tag_of(r).is_none() {
        return Err(Status::TagInvalid);
    }
    if op == Op::OwnerKeyAdd {
        if !matches!(r[RSI], 1 | 2) {
            return Err(Status::InvalidArgument);
        }
        if r[R8..R8 + 4] == [0; 4] {
            return Err(Status::OwnerKeyInvalid);
        }
    }
    // The relay's channel is a u32, its message at most 560 bytes.
    if op == Op::OwnerRelay && (r[R8] > u64::from(u32::MAX) || r[R8 + 1] > 560) {
        return Err(Status::InvalidArgument);
    }
    if buffered && r[RDI] > 0 && (!canonical(r[RSI]) || !canonical(r[RSI].wrapping_add(r[RDI] - 1)))
    {
        return Err(Status::BufferFault);
    }
    Ok(op)
}

/// What `OWNER_IDENTITY` writes on an L0 without an identity module.
pub const OWNER_SESSIONS_OFF: &str = "off no l0.identity module";

/// The VM-list size for `vms` VMs with four UARTs each (list format 1).
pub fn list_len(vms: u64) -> u64 {
    24 + vms * (48 + 4 * 24)
}

/// One user VM L0 knows, with the epoch ledger of its tag.
#[derive(Clone, Copy, Debug)]
pub struct VmModel {
    pub tag: [u8; 32],
    /// L0's number for the VM.
    pub id: u64,
    pub frozen: bool,
    /// The highest epoch issued or accepted for the tag, and whether it
    /// was issued by a save here and not consumed since.
    pub high: u64,
    pub own_pending: bool,
}

impl VmModel {
    pub fn new(name: &[u8], id: u64) -> VmModel {
        let mut tag = [0u8; 32];
        tag[..name.len()].copy_from_slice(name);
        VmModel {
            tag,
            id,
            frozen: false,
            high: 0,
            own_pending: false,
        }
    }

    fn restorable(&self, epoch: u64) -> bool {
        epoch > self.high || (epoch == self.high && self.own_pending)
    }
}

/// What L0 holds that decides the answers: two user VMs, the fuzzing
/// one (`vms[0]`, whose L2 issues the L2 calls) and a bystander with a
/// tag of its own, both with four idle UARTs (so one sealed size).
#[derive(Clone, Debug)]
pub struct Model {
    pub vms: [VmModel; 2],
    /// The sealed size of either VM's devices (learned by a size query).
    pub blob_len: u64,
    /// The blob L1 holds: whose, and its epoch.
    pub blob: Option<(usize, u64)>,
}

/// The answer and what RCX and RSI must then hold (None: not checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub expect: Expect,
    pub rcx: Option<u64>,
    pub rsi: Option<u64>,
}

fn is(s: Status) -> Answer {
    let zero = Some(0);
    Answer {
        expect: Expect::Is(s),
        rcx: zero,
        rsi: zero,
    }
}

fn ok(rcx: u64, rsi: u64) -> Answer {
    Answer {
        expect: Expect::Is(Status::Ok),
        rcx: Some(rcx),
        rsi: Some(rsi),
    }
}

fn too_small(needed: u64) -> Answer {
    Answer {
        expect: Expect::Is(Status::BufferTooSmall),
        rcx: Some(needed),
        rsi: Some(0),
    }
}

impl Model {
    pub fn new(vms: [VmModel; 2], blob_len: u64) -> Model {
        Model {
            vms,
            blob_len,
            blob: None,
        }
    }

    /// The VM holding the tag in R8..R11.
    fn holder(&self, r: &[u64; 9]) -> Option<usize> {
        let t = tag_of(r)?;
        self.vms.iter().position(|v| v.tag == t)
    }

    /// The answer to `c` from `level`; None when it is no ultracall (RAX
    /// not the magic: L0 reflects it to L1, or injects #UD into L1).
    pub fn answer(&self, level: Level, c: &Call) -> Option<Answer> {
        if c.regs[RAX] != ULTRACALL_MAGIC {
            return None;
        }
        Some(match prefix(level, &c.regs) {
            Ok(op) => self.op_answer(level, op, c),
            Err(s) => is(s),
        })
    }

    fn op_answer(&self, level: Level, op: Op, c: &Call) -> Answer {
        let r = &c.regs;
        let len = r[RDI];
        let unmapped = len > 0 && c.buf == Buf::Unmapped;
        let holder = self.holder(r);
        let n_vms = self.vms.len() as u64;
        match op {
            Op::Ping => ok(0, level as u64),
            // From the fuzzing L2, which registered vms[0]'s tag.
            Op::RegisterTag => match holder {
                Some(0) => ok(0, self.vms[0].id),
                Some(_) => is(Status::TagInUse),
                None => is(Status::TagAlreadySet),
            },
            Op::SetIrqRelay => match r[RSI] {
                0 => ok(0, 0),
                32..=255 => ok(0, r[RSI]),
                _ => is(Status::InvalidArgument),
            },
            Op::TakeIrqs => is(Status::NoDevice),
            // RSI names no access in any generated call (it holds a
            // buffer address, see `gen`), so no key is ever added and the
            // sealed size stays the one learned at the start.
            Op::OwnerKeyAdd => is(Status::Internal),
            // The fuzzed L0 has no identity module: it says why sessions
            // are off, and ends every relayed session with `off` (4).
            Op::OwnerIdentity => {
                let n = OWNER_SESSIONS_OFF.len() as u64;
                if len < n {
                    too_small(n)
                } else if unmapped {
                    is(Status::BufferFault)
                } else {
                    ok(n, 0)
                }
            }
            Op::OwnerRelay => {
                if r[R8 + 1] == 0 {
                    ok(0, 0) // the relay's connection closed: nothing to read
                } else if len < 560 {
                    too_small(560)
                } else if unmapped {
                    is(Status::BufferFault)
                } else {
                    ok(0, 4)
                }
            }
            Op::ListVms => {
                let n = list_len(n_vms);
                if len < n {
                    too_small(n)
                } else if unmapped {
                    is(Status::BufferFault)
                } else {
                    ok(n, n_vms)
                }
            }
            Op::SaveDevices => {
                let Some(v) = holder.map(|i| &self.vms[i]) else {
                    return is(Status::UnknownTag);
                };
                if v.frozen {
                    is(Status::DeviceFrozen)
                } else if len < self.blob_len {
                    too_small(self.blob_len)
                } else if unmapped {
                    is(Status::BufferFault)
                } else {
                    ok(self.blob_len, v.high + 1)
                }
            }
            Op::RestoreDevices => {
                if unmapped {
                    return is(Status::BufferFault);
                }
                let Some(dest) = holder else {
                    return is(Status::UnknownTag);
                };
                // L1 stages the content at the buffer and L0 reads `len`
                // bytes: the generator makes `len` the content's own
                // length (or 0). Without a blob L1 stages garbage.
                let held = self.blob.filter(|_| matches!(c.buf, Buf::Good { .. }));
                match (c.content, held) {
                    (Content::Blob, Some((owner, e))) if len == self.blob_len => {
                        if owner != dest {
                            is(Status::BlobWrongTag)
                        } else if self.vms[dest].restorable(e) {
                            ok(len, e)
                        } else {
                            is(Status::BlobReplayed)
                        }
                    }
                    (Content::Flipped(bit), Some(_)) if len == self.blob_len => match bit / 8 {
                        // magic, version, flags, payload length, reserved
                        0..=5 | 8..=15 | 44..=47 => is(Status::BlobMalformed),
                        16..=23 => is(Status::BlobWrongKey),
                        // the tag: an invalid one fails decoding, a valid one authentication
                        48..=79 => Answer {
                            expect: Expect::OneOf(&[Status::BlobMalformed, Status::BlobAuthFailed]),
                            rcx: Some(0),
                            rsi: Some(0),
                        },
                        // class (authenticated first), epoch, nonce, ciphertext, GCM tag
                        _ => is(Status::BlobAuthFailed),
                    },
                    // Garbage, a truncated or extended blob, an empty buffer.
                    _ => is(Status::BlobMalformed),
                }
            }
        }
    }

    /// Applies an answer L0 gave (only successes change anything).
    pub fn apply(&mut self, level: Level, c: &Call, status: Status) {
        if status != Status::Ok || prefix(level, &c.regs).is_err() {
            return;
        }
        let Some(i) = self.holder(&c.regs) else {
            return;
        };
        let v = &mut self.vms[i];
        match c.regs[RCX] {
            3 => {
                v.high += 1;
                v.own_pending = true;
                v.frozen = true;
                self.blob = Some((i, v.high));
            }
            4 => {
                if let Some((_, e)) = self.blob {
                    v.high = e;
                }
                v.own_pending = false;
                v.frozen = false;
            }
            _ => {}
        }
    }
}

/// The raw operation numbers the fuzzer draws from: every operation,
/// 0, the next unassigned numbers, and far-off values.
fn pick_op(rng: &mut Rng) -> u64 {
    match rng.below(12) {
        0 => 0,
        // The relay's two operations, then the next unassigned numbers.
        1 => 9 + rng.below(6),
        2 => rng.next(),
        3 => 1 << 32 | (1 + rng.below(8)),
        n => 1 + (n - 4) % 8,
    }
}

fn pick_version(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => 0x0001_0000,
        1 => 0x0001_0000 | rng.below(0x1_0000),
        2 => 0x0002_0001,
        3 => 0,
        4 => 1 << 32 | 0x0001_0001,
        5 => rng.next(),
        _ => 0x0001_0001,
    }
}

const TAG_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789.-_";

fn pick_tag(rng: &mut Rng, m: &Model) -> [u64; 4] {
    let mut t = [0u8; 32];
    match rng.below(9) {
        0 | 1 => t = m.vms[0].tag,
        7 => t = m.vms[1].tag,
        2 => {
            let n = 1 + rng.below(32) as usize;
            for (i, b) in t[..n].iter_mut().enumerate() {
                let pool = if i == 0 { &TAG_CHARS[..36] } else { TAG_CHARS };
                *b = pool[rng.below(pool.len() as u64) as usize];
            }
        }
        3 => t[..5].copy_from_slice(b"alpha"),
        4 => {
            // Not a tag: a bad first byte, a space, garbage after the NUL.
            t[..4].copy_from_slice([b"-abc", b"a bc", b"ab\0c"][rng.below(3) as usize]);
        }
        5 => {} // all zero: empty
        _ => {
            for b in t.iter_mut() {
                *b = rng.next() as u8;
            }
        }
    }
    let mut r = [0u64; 4];
    for (i, w) in r.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&t[8 * i..8 * i + 8]);
        *w = u64::from_le_bytes(b);
    }
    r
}

/// L1's fuzz buffer: `BUF_SPAN` bytes at `base`; L0 writes at most
/// `BUF_SPAN - MAX_GOOD_OFF` bytes into it (a list, a blob).
pub const BUF_SPAN: u64 = 32 * 1024;
pub const MAX_GOOD_OFF: u64 = 8 * 1024;
/// PML4 entries 1..=255 of L1's tables are empty: this is not mapped.
pub const UNMAPPED_BASE: u64 = 0x0000_0080_0000_0000;

/// A random call from `level`. `base` is L1's fuzz buffer.
pub fn gen(rng: &mut Rng, level: Level, m: &Model, base: u64) -> Call {
    let mut r = [0u64; 9];
    r[RAX] = if level == Level::L2 && rng.pct(6) {
        // Not an ultracall: L0 reflects it to L1.
        [
            0,
            ULTRACALL_MAGIC ^ 1,
            ULTRACALL_MAGIC & 0xffff_ffff,
            rng.next(),
        ][rng.below(4) as usize]
    } else {
        ULTRACALL_MAGIC
    };
    r[RCX] = pick_op(rng);
    r[RDX] = pick_version(rng);
    let t = pick_tag(rng, m);
    r[R8..R8 + 4].copy_from_slice(&t);
    let buf = match rng.below(10) {
        0 => Buf::Unmapped,
        1 => Buf::NonCanonical,
        _ => Buf::Good {
            off: rng.below(MAX_GOOD_OFF / 8) * 8,
        },
    };
    let content = match rng.below(6) {
        0 => Content::Garbage,
        1 | 2 => Content::Blob,
        3 => Content::Flipped(rng.below(m.blob_len.max(1) * 8) as usize),
        4 => Content::Truncated(1 + rng.below(m.blob_len.max(2) - 1) as usize),
        _ => Content::Extended,
    };
    // A RESTORE reads exactly its content (or nothing, or too much to be
    // allowed), so every content has one expected answer.
    let restore = r[RCX] == 4;
    r[RDI] = match rng.below(12) {
        0 => 0,
        1 => MAX_BUFFER_LEN as u64 + 1 + rng.below(1 << 20),
        2 if !restore => rng.next(),
        3 if !restore => m.blob_len.saturating_sub(1 + rng.below(8)),
        4 if !restore => list_len(m.vms.len() as u64) - 1,
        _ if restore => match content {
            Content::Truncated(n) => n as u64,
            Content::Extended => m.blob_len + 1,
            Content::Blob | Content::Flipped(_) => m.blob_len,
            Content::Garbage => 1 + rng.below(4096),
        },
        _ => BUF_SPAN - MAX_GOOD_OFF,
    };
    r[RSI] = match buf {
        Buf::Good { off } => base + off,
        Buf::Unmapped => UNMAPPED_BASE + rng.below(1 << 20) * 4096,
        Buf::NonCanonical if rng.pct(50) => 0x0000_8000_0000_0000 | rng.below(1 << 46),
        // Canonical start, non-canonical end.
        Buf::NonCanonical => 0x0000_7fff_ffff_f000,
    };
    if matches!(buf, Buf::NonCanonical) && r[RSI] == 0x0000_7fff_ffff_f000 && r[RDI] <= 0x1000 {
        r[RDI] = 0x2000;
    }
    if r[RCX] == 6 {
        // SetIrqRelay takes its vector in RSI.
        r[RSI] = match rng.below(4) {
            0 => 0,
            1 => rng.below(32),
            2 => 256 + rng.below(1 << 20),
            _ => 32 + rng.below(224),
        };
    }
    Call {
        regs: r,
        buf,
        content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ultracall_abi::{CallerLevel, InRegs};

    fn in_regs(r: &[u64; 9]) -> InRegs {
        InRegs {
            rax: r[0],
            rcx: r[1],
            rdx: r[2],
            rsi: r[3],
            rdi: r[4],
            r8: r[5],
            r9: r[6],
            r10: r[7],
            r11: r[8],
        }
    }

    fn model() -> Model {
        Model::new(
            [VmModel::new(b"fuzz-l2", 3), VmModel::new(b"bystander", 4)],
            500,
        )
    }

    /// No generated OWNER_KEY_ADD names an access, so none adds a key
    /// (the model's fixed sealed size relies on it).
    #[test]
    fn generated_owner_key_adds_never_succeed() {
        let mut rng = Rng::new(11);
        let m = model();
        let mut seen = 0;
        for _ in 0..20_000 {
            let c = gen(&mut rng, Level::L2, &m, 0x10_0000);
            if c.regs[RCX] == 8 && c.regs[RAX] == ULTRACALL_MAGIC {
                seen += 1;
                assert!(!matches!(c.regs[RSI], 1 | 2), "{:x?}", c.regs);
            }
        }
        assert!(seen > 100, "op 8 drawn {seen} times");
    }

    /// The oracle's decoding agrees with the ABI crate's on every field
    /// it decides (the crate leaves the canonical check to L0's walk).
    #[test]
    fn prefix_agrees_with_the_abi_decoder() {
        let mut rng = Rng::new(7);
        let m = model();
        for i in 0..20_000 {
            let c = gen(
                &mut rng,
                if i % 2 == 0 { Level::L1 } else { Level::L2 },
                &m,
                0x30_0000,
            );
            if c.regs[RAX] != ULTRACALL_MAGIC {
                continue;
            }
            for (level, cl) in [(Level::L1, CallerLevel::L1), (Level::L2, CallerLevel::L2)] {
                let ours = prefix(level, &c.regs);
                let theirs = in_regs(&c.regs).decode(cl).map(|r| r.op);
                match (ours, theirs) {
                    (Err(Status::BufferFault), Ok(_)) => {}
                    (a, b) => assert_eq!(a, b, "{:x?}", c.regs),
                }
            }
        }
    }

    #[test]
    fn tags() {
        let mut r = [0u64; 9];
        r[R8] = u64::from_le_bytes(*b"web-1\0\0\0");
        assert!(tag_of(&r).is_some());
        r[R8 + 2] = 1;
        assert!(tag_of(&r).is_none(), "garbage after the NUL");
        r[R8 + 2] = 0;
        r[R8] = u64::from_le_bytes(*b"-web\0\0\0\0");
        assert!(tag_of(&r).is_none());
        assert!(tag_of(&[0; 9]).is_none());
    }

    #[test]
    fn the_save_restore_ledger() {
        let mut m = model();
        let mut c = gen(&mut Rng::new(1), Level::L1, &m, 0x30_0000);
        c.regs[RAX] = ULTRACALL_MAGIC;
        c.regs[RCX] = 3;
        c.regs[RDX] = 0x1_0001;
        c.regs[R8..].copy_from_slice(&[u64::from_le_bytes(*b"fuzz-l2\0"), 0, 0, 0]);
        c.buf = Buf::Good { off: 0 };
        c.regs[RSI] = 0x30_0000;
        c.regs[RDI] = 499;
        assert_eq!(m.answer(Level::L1, &c).unwrap(), too_small(500));
        c.regs[RDI] = 500;
        assert_eq!(m.answer(Level::L1, &c).unwrap(), ok(500, 1));
        m.apply(Level::L1, &c, Status::Ok);
        assert_eq!(
            m.answer(Level::L1, &c).unwrap().expect,
            Expect::Is(Status::DeviceFrozen)
        );
        c.regs[RCX] = 4;
        c.content = Content::Blob;
        assert_eq!(
            m.answer(Level::L1, &c).unwrap(),
            ok(500, 1),
            "the source may roll back once"
        );
        m.apply(Level::L1, &c, Status::Ok);
        assert_eq!(
            m.answer(Level::L1, &c).unwrap().expect,
            Expect::Is(Status::BlobReplayed)
        );
        c.content = Content::Flipped(24 * 8 + 3);
        assert_eq!(
            m.answer(Level::L1, &c).unwrap().expect,
            Expect::Is(Status::BlobAuthFailed)
        );
        c.content = Content::Flipped(17 * 8);
        assert_eq!(
            m.answer(Level::L1, &c).unwrap().expect,
            Expect::Is(Status::BlobWrongKey)
        );
        c.buf = Buf::Unmapped;
        assert_eq!(
            m.answer(Level::L1, &c).unwrap().expect,
            Expect::Is(Status::BufferFault)
        );
        c.regs[RCX] = 2;
        assert_eq!(
            m.answer(Level::L1, &c).unwrap().expect,
            Expect::Is(Status::NotPermitted)
        );
        assert_eq!(m.answer(Level::L2, &c).unwrap(), ok(0, 3));
        // The bystander's tag: in use for REGISTER_TAG, the wrong tag for
        // the fuzzing VM's blob.
        c.regs[R8..].copy_from_slice(&[u64::from_le_bytes(*b"bystande"), u64::from(b'r'), 0, 0]);
        assert_eq!(
            m.answer(Level::L2, &c).unwrap().expect,
            Expect::Is(Status::TagInUse)
        );
        c.regs[RCX] = 4;
        c.buf = Buf::Good { off: 0 };
        c.content = Content::Blob;
        assert_eq!(
            m.answer(Level::L1, &c).unwrap().expect,
            Expect::Is(Status::BlobWrongTag)
        );
    }

    #[test]
    fn the_generator_covers_every_outcome() {
        let mut rng = Rng::new(0x5eed);
        let mut m = model();
        m.blob = Some((0, 0));
        m.vms[0].own_pending = true;
        let mut seen = std::collections::HashSet::new();
        for i in 0..50_000 {
            let level = if i % 3 == 0 { Level::L2 } else { Level::L1 };
            let c = gen(&mut rng, level, &m, 0x30_0000);
            let Some(a) = m.answer(level, &c) else {
                continue;
            };
            if let Expect::Is(s) = a.expect {
                seen.insert(s);
            }
        }
        for s in [
            Status::Ok,
            Status::UnknownOp,
            Status::BadVersion,
            Status::NotPermitted,
            Status::BufferFault,
            Status::BufferTooSmall,
            Status::BufferTooLarge,
            Status::UnknownTag,
            Status::TagAlreadySet,
            Status::TagInUse,
            Status::TagInvalid,
            Status::BlobWrongTag,
            Status::BlobMalformed,
            Status::BlobWrongKey,
            Status::BlobAuthFailed,
            Status::NoDevice,
            Status::InvalidArgument,
        ] {
            assert!(seen.contains(&s), "{s:?} never expected");
        }
    }
}
