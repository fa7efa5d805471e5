//! The `list` answer: the VMs L0 knows, in a versioned little-endian format.
//!
//! L0 encodes with [`ListEncoder`] straight into the bytes it will copy to
//! the caller (no allocation); the CLI decodes with [`ListView`].
//!
//! Layout (format major 1). Header, 24 bytes:
//!
//! | off | size | field                                   |
//! |-----|------|-----------------------------------------|
//! | 0   | 4    | magic `"L0VL"`                          |
//! | 4   | 2    | format major (1)                        |
//! | 6   | 2    | header length (≥ 24)                    |
//! | 8   | 2    | VM record length (≥ 48)                 |
//! | 10  | 2    | device record length (≥ 24)             |
//! | 12  | 4    | number of VM records                    |
//! | 16  | 4    | total length of the list in bytes       |
//! | 20  | 4    | reserved, 0                             |
//!
//! Then each VM record (48 bytes) followed by its device records (24 each):
//!
//! | off | size | VM record                               |
//! |-----|------|-----------------------------------------|
//! | 0   | 8    | L0's identity number of the VM          |
//! | 8   | 4    | flags: bit 0 = devices frozen (saved)   |
//! | 12  | 2    | number of device records that follow    |
//! | 14  | 2    | reserved, 0                             |
//! | 16  | 32   | VM tag, NUL-padded; all zero = no tag   |
//!
//! | off | size | device record                           |
//! |-----|------|-----------------------------------------|
//! | 0   | 2    | device class (see [`crate::blob`])      |
//! | 2   | 2    | first I/O port claimed                  |
//! | 4   | 2    | number of ports claimed                 |
//! | 6   | 1    | ISA IRQ, 0xFF = none                    |
//! | 7   | 1    | flags: bit 0 = operator attached        |
//! | 8   | 8    | bytes in (operator → guest)             |
//! | 16  | 8    | bytes out (guest → operator)            |
//!
//! Compatibility: a later minor may lengthen the header or records (the
//! lengths travel in the header) and define flag bits; decoders skip
//! unknown trailing bytes and ignore unknown flag bits. Encoders write
//! zeros in reserved fields. A different major changes the magic's meaning
//! and is refused.

use crate::error::Error;
use crate::tag::{VmTag, MAX_TAG_LEN};

/// Magic of a VM list.
pub const LIST_MAGIC: [u8; 4] = *b"L0VL";
/// Format major.
pub const LIST_FORMAT_MAJOR: u16 = 1;
/// Header length written by this version.
pub const LIST_HEADER_LEN: usize = 24;
/// VM record length written by this version.
pub const LIST_VM_RECORD_LEN: usize = 48;
/// Device record length written by this version.
pub const LIST_DEVICE_RECORD_LEN: usize = 24;
/// VM flag: the VM's devices were saved and are frozen.
pub const VM_FLAG_FROZEN: u32 = 1 << 0;
/// Device flag: an operator is attached to this device's console.
pub const DEVICE_FLAG_OPERATOR_ATTACHED: u8 = 1 << 0;
/// `isa_irq` byte meaning "no IRQ".
pub const NO_IRQ: u8 = 0xFF;

/// One VM as listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmInfo {
    /// L0's identity number.
    pub vm_id: u64,
    /// Its tag, once registered.
    pub tag: Option<VmTag>,
    /// Devices saved and frozen.
    pub frozen: bool,
}

/// One device as listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device class.
    pub class: u16,
    /// First port claimed.
    pub port_base: u16,
    /// Number of ports claimed.
    pub port_count: u16,
    /// ISA IRQ, if any.
    pub isa_irq: Option<u8>,
    /// An operator is attached to its console.
    pub operator_attached: bool,
    /// Bytes operator → guest.
    pub bytes_in: u64,
    /// Bytes guest → operator.
    pub bytes_out: u64,
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    // Only called after the encoder checked that `at + len ≤ out.len()`.
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Writes a list into a caller buffer. Keeps counting when the buffer is
/// too small, so [`ListEncoder::finish`] can report the size needed.
pub struct ListEncoder<'a> {
    out: &'a mut [u8],
    len: usize,
    vm_count: u32,
    error: Option<Error>,
}

impl<'a> ListEncoder<'a> {
    /// Starts a list in `out`.
    pub fn new(out: &'a mut [u8]) -> ListEncoder<'a> {
        ListEncoder {
            out,
            len: LIST_HEADER_LEN,
            vm_count: 0,
            error: None,
        }
    }

    /// Appends a VM and its devices.
    pub fn push_vm(&mut self, vm: &VmInfo, devices: &[DeviceInfo]) {
        let Ok(device_count) = u16::try_from(devices.len()) else {
            self.error = Some(Error::Malformed("more than 65535 devices in one VM"));
            return;
        };
        let Some(vm_count) = self.vm_count.checked_add(1) else {
            self.error = Some(Error::Malformed("too many VMs"));
            return;
        };
        let record = LIST_DEVICE_RECORD_LEN
            .checked_mul(devices.len())
            .and_then(|d| d.checked_add(LIST_VM_RECORD_LEN));
        let Some(end) = record.and_then(|r| r.checked_add(self.len)) else {
            self.error = Some(Error::Malformed("list length overflow"));
            return;
        };
        let at = self.len;
        self.len = end;
        self.vm_count = vm_count;
        if end > self.out.len() {
            return; // only counting from here on
        }
        let mut rec = [0u8; LIST_VM_RECORD_LEN];
        rec[0..8].copy_from_slice(&vm.vm_id.to_le_bytes());
        let flags = if vm.frozen { VM_FLAG_FROZEN } else { 0 };
        rec[8..12].copy_from_slice(&flags.to_le_bytes());
        rec[12..14].copy_from_slice(&device_count.to_le_bytes());
        if let Some(tag) = vm.tag {
            rec[16..16 + MAX_TAG_LEN].copy_from_slice(tag.padded());
        }
        put(self.out, at, &rec);
        let mut pos = at + LIST_VM_RECORD_LEN;
        for d in devices {
            let mut rec = [0u8; LIST_DEVICE_RECORD_LEN];
            rec[0..2].copy_from_slice(&d.class.to_le_bytes());
            rec[2..4].copy_from_slice(&d.port_base.to_le_bytes());
            rec[4..6].copy_from_slice(&d.port_count.to_le_bytes());
            rec[6] = d.isa_irq.unwrap_or(NO_IRQ);
            rec[7] = if d.operator_attached {
                DEVICE_FLAG_OPERATOR_ATTACHED
            } else {
                0
            };
            rec[8..16].copy_from_slice(&d.bytes_in.to_le_bytes());
            rec[16..24].copy_from_slice(&d.bytes_out.to_le_bytes());
            put(self.out, pos, &rec);
            pos += LIST_DEVICE_RECORD_LEN;
        }
    }

    /// Bytes the list needs so far.
    pub fn needed(&self) -> usize {
        self.len
    }

    /// Writes the header; returns the list length, or
    /// [`Error::BufferTooSmall`] with the length needed.
    pub fn finish(self) -> Result<usize, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.len > self.out.len() {
            return Err(Error::BufferTooSmall { needed: self.len });
        }
        let total =
            u32::try_from(self.len).map_err(|_| Error::Malformed("list length overflow"))?;
        let mut h = [0u8; LIST_HEADER_LEN];
        h[0..4].copy_from_slice(&LIST_MAGIC);
        h[4..6].copy_from_slice(&LIST_FORMAT_MAJOR.to_le_bytes());
        h[6..8].copy_from_slice(&(LIST_HEADER_LEN as u16).to_le_bytes());
        h[8..10].copy_from_slice(&(LIST_VM_RECORD_LEN as u16).to_le_bytes());
        h[10..12].copy_from_slice(&(LIST_DEVICE_RECORD_LEN as u16).to_le_bytes());
        h[12..16].copy_from_slice(&self.vm_count.to_le_bytes());
        h[16..20].copy_from_slice(&total.to_le_bytes());
        put(self.out, 0, &h);
        Ok(self.len)
    }
}

fn rd_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn rd_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// A validated list; iterating it cannot fail.
#[derive(Clone, Copy, Debug)]
pub struct ListView<'a> {
    body: &'a [u8],
    vm_count: u32,
    vm_rec: usize,
    dev_rec: usize,
}

impl<'a> ListView<'a> {
    /// Checks the whole list: header, every record, every tag, exact length.
    /// Bytes past the announced total length are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<ListView<'a>, Error> {
        if bytes.len() < LIST_HEADER_LEN {
            return Err(Error::Truncated);
        }
        if bytes[0..4] != LIST_MAGIC {
            return Err(Error::BadMagic);
        }
        let major = rd_u16(bytes, 4).ok_or(Error::Truncated)?;
        if major != LIST_FORMAT_MAJOR {
            return Err(Error::UnsupportedVersion { found: major });
        }
        let header_len = usize::from(rd_u16(bytes, 6).ok_or(Error::Truncated)?);
        let vm_rec = usize::from(rd_u16(bytes, 8).ok_or(Error::Truncated)?);
        let dev_rec = usize::from(rd_u16(bytes, 10).ok_or(Error::Truncated)?);
        let vm_count = rd_u32(bytes, 12).ok_or(Error::Truncated)?;
        let total = rd_u32(bytes, 16).ok_or(Error::Truncated)? as usize;
        if header_len < LIST_HEADER_LEN {
            return Err(Error::Malformed("list header length"));
        }
        if vm_rec < LIST_VM_RECORD_LEN || dev_rec < LIST_DEVICE_RECORD_LEN {
            return Err(Error::Malformed("list record length"));
        }
        if total < header_len {
            return Err(Error::Malformed("list total length"));
        }
        let list = bytes.get(..total).ok_or(Error::Truncated)?;
        let body = &list[header_len..];
        let mut pos = 0usize;
        for _ in 0..vm_count {
            let end = pos.checked_add(vm_rec).ok_or(Error::Truncated)?;
            let rec = body.get(pos..end).ok_or(Error::Truncated)?;
            parse_tag(rec)?;
            let devices = usize::from(rd_u16(rec, 12).ok_or(Error::Truncated)?);
            pos = devices
                .checked_mul(dev_rec)
                .and_then(|d| d.checked_add(end))
                .ok_or(Error::Truncated)?;
            if pos > body.len() {
                return Err(Error::Truncated);
            }
        }
        if pos != body.len() {
            return Err(Error::Malformed("list has bytes after its last record"));
        }
        Ok(ListView {
            body,
            vm_count,
            vm_rec,
            dev_rec,
        })
    }

    /// Number of VMs.
    pub fn len(&self) -> usize {
        self.vm_count as usize
    }

    /// True when L0 knows no VM.
    pub fn is_empty(&self) -> bool {
        self.vm_count == 0
    }

    /// The VMs in L0's order.
    pub fn vms(&self) -> VmIter<'a> {
        VmIter {
            body: self.body,
            pos: 0,
            left: self.vm_count,
            vm_rec: self.vm_rec,
            dev_rec: self.dev_rec,
        }
    }
}

fn parse_tag(rec: &[u8]) -> Result<Option<VmTag>, Error> {
    let mut padded = [0u8; MAX_TAG_LEN];
    padded.copy_from_slice(rec.get(16..16 + MAX_TAG_LEN).ok_or(Error::Truncated)?);
    if padded == [0u8; MAX_TAG_LEN] {
        return Ok(None);
    }
    VmTag::from_padded(&padded)
        .map(Some)
        .map_err(|_| Error::Malformed("list VM tag"))
}

/// Iterator over a validated list's VMs.
pub struct VmIter<'a> {
    body: &'a [u8],
    pos: usize,
    left: u32,
    vm_rec: usize,
    dev_rec: usize,
}

/// One VM of a validated list.
#[derive(Clone, Copy, Debug)]
pub struct VmEntry<'a> {
    /// The VM.
    pub info: VmInfo,
    devices: &'a [u8],
    dev_rec: usize,
}

impl<'a> Iterator for VmIter<'a> {
    type Item = VmEntry<'a>;

    fn next(&mut self) -> Option<VmEntry<'a>> {
        self.left = self.left.checked_sub(1)?;
        let rec = self
            .body
            .get(self.pos..self.pos.checked_add(self.vm_rec)?)?;
        let count = usize::from(rd_u16(rec, 12)?);
        let dev_start = self.pos + self.vm_rec;
        let dev_end = dev_start.checked_add(count.checked_mul(self.dev_rec)?)?;
        let devices = self.body.get(dev_start..dev_end)?;
        self.pos = dev_end;
        let info = VmInfo {
            vm_id: rd_u64(rec, 0)?,
            tag: parse_tag(rec).ok()?,
            frozen: rd_u32(rec, 8)? & VM_FLAG_FROZEN != 0,
        };
        Some(VmEntry {
            info,
            devices,
            dev_rec: self.dev_rec,
        })
    }
}

impl<'a> VmEntry<'a> {
    /// The VM's devices.
    pub fn devices(&self) -> DeviceIter<'a> {
        DeviceIter {
            bytes: self.devices,
            dev_rec: self.dev_rec,
        }
    }
}

/// Iterator over one VM's devices.
pub struct DeviceIter<'a> {
    bytes: &'a [u8],
    dev_rec: usize,
}

impl Iterator for DeviceIter<'_> {
    type Item = DeviceInfo;

    fn next(&mut self) -> Option<DeviceInfo> {
        let rec = self.bytes.get(..self.dev_rec)?;
        self.bytes = &self.bytes[self.dev_rec..];
        Some(DeviceInfo {
            class: rd_u16(rec, 0)?,
            port_base: rd_u16(rec, 2)?,
            port_count: rd_u16(rec, 4)?,
            isa_irq: match rec[6] {
                NO_IRQ => None,
                irq => Some(irq),
            },
            operator_attached: rec[7] & DEVICE_FLAG_OPERATOR_ATTACHED != 0,
            bytes_in: rd_u64(rec, 8)?,
            bytes_out: rd_u64(rec, 16)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uart(port: u16, irq: u8, inb: u64, outb: u64) -> DeviceInfo {
        DeviceInfo {
            class: crate::DEVICE_CLASS_UART16550A,
            port_base: port,
            port_count: 8,
            isa_irq: Some(irq),
            operator_attached: port == 0x3f8,
            bytes_in: inb,
            bytes_out: outb,
        }
    }

    fn sample() -> Vec<(VmInfo, Vec<DeviceInfo>)> {
        vec![
            (
                VmInfo {
                    vm_id: 1,
                    tag: Some(VmTag::new(b"web-1").unwrap()),
                    frozen: false,
                },
                vec![uart(0x3f8, 4, 10, 20), uart(0x2f8, 3, 0, 5)],
            ),
            (
                VmInfo {
                    vm_id: 2,
                    tag: None,
                    frozen: true,
                },
                vec![],
            ),
            (
                VmInfo {
                    vm_id: u64::MAX,
                    tag: Some(VmTag::new(&[b'z'; 32]).unwrap()),
                    frozen: true,
                },
                vec![DeviceInfo {
                    isa_irq: None,
                    ..uart(0x3e8, 4, u64::MAX, 1)
                }],
            ),
        ]
    }

    fn encode(vms: &[(VmInfo, Vec<DeviceInfo>)], buf: &mut [u8]) -> Result<usize, Error> {
        let mut enc = ListEncoder::new(buf);
        for (vm, devs) in vms {
            enc.push_vm(vm, devs);
        }
        enc.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Vec<(VmInfo, Vec<DeviceInfo>)>, Error> {
        let view = ListView::parse(bytes)?;
        Ok(view
            .vms()
            .map(|v| (v.info, v.devices().collect()))
            .collect())
    }

    #[test]
    fn round_trip() {
        let vms = sample();
        let mut buf = vec![0u8; 4096];
        let n = encode(&vms, &mut buf).unwrap();
        assert_eq!(n, 24 + 3 * 48 + 3 * 24);
        assert_eq!(decode(&buf[..n]).unwrap(), vms);
        assert_eq!(ListView::parse(&buf[..n]).unwrap().len(), 3);
    }

    #[test]
    fn empty_list_round_trip() {
        let mut buf = [0u8; 24];
        assert_eq!(encode(&[], &mut buf), Ok(24));
        let view = ListView::parse(&buf).unwrap();
        assert!(view.is_empty());
        assert_eq!(view.vms().count(), 0);
    }

    #[test]
    fn too_small_buffer_reports_needed_and_writes_nothing_partial() {
        let vms = sample();
        let mut small = vec![0xAAu8; 100];
        assert_eq!(
            encode(&vms, &mut small),
            Err(Error::BufferTooSmall { needed: 240 })
        );
        // The header is never written into a too-small buffer, so the
        // partial bytes cannot be mistaken for a list.
        assert!(ListView::parse(&small).is_err());
    }

    #[test]
    fn layout_matches_the_documented_offsets() {
        let vms = sample();
        let mut buf = vec![0u8; 4096];
        let n = encode(&vms, &mut buf).unwrap();
        let b = &buf[..n];
        assert_eq!(&b[0..4], b"L0VL");
        assert_eq!(&b[4..12], &[1, 0, 24, 0, 48, 0, 24, 0]);
        assert_eq!(&b[12..16], &3u32.to_le_bytes());
        assert_eq!(&b[16..20], &(n as u32).to_le_bytes());
        let vm0 = &b[24..72];
        assert_eq!(&vm0[0..8], &1u64.to_le_bytes());
        assert_eq!(&vm0[12..14], &2u16.to_le_bytes());
        assert_eq!(&vm0[16..21], b"web-1");
        let dev0 = &b[72..96];
        assert_eq!(&dev0[0..8], &[1, 0, 0xf8, 0x03, 8, 0, 4, 1]);
        assert_eq!(&dev0[8..16], &10u64.to_le_bytes());
    }

    #[test]
    fn decoder_skips_longer_records_of_a_later_minor() {
        // Hand-build a list with 32-byte headers, 56-byte VM records and
        // 32-byte device records: a future minor that appended fields.
        let tag = VmTag::new(b"future").unwrap();
        let mut b = vec![0u8; 32];
        b[0..4].copy_from_slice(b"L0VL");
        b[4..6].copy_from_slice(&1u16.to_le_bytes());
        b[6..8].copy_from_slice(&32u16.to_le_bytes());
        b[8..10].copy_from_slice(&56u16.to_le_bytes());
        b[10..12].copy_from_slice(&32u16.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        let mut vm = vec![0u8; 56];
        vm[0..8].copy_from_slice(&9u64.to_le_bytes());
        vm[8..12].copy_from_slice(&(VM_FLAG_FROZEN | 0x8000).to_le_bytes());
        vm[12..14].copy_from_slice(&1u16.to_le_bytes());
        vm[16..48].copy_from_slice(tag.padded());
        vm[48..56].copy_from_slice(b"newfield");
        b.extend_from_slice(&vm);
        let mut dev = vec![0xEEu8; 32];
        dev[0..24].copy_from_slice(&[
            1, 0, 0xf8, 3, 8, 0, 4, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
        ]);
        b.extend_from_slice(&dev);
        let total = b.len() as u32;
        b[16..20].copy_from_slice(&total.to_le_bytes());
        let got = decode(&b).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].0,
            VmInfo {
                vm_id: 9,
                tag: Some(tag),
                frozen: true
            }
        );
        assert_eq!(got[0].1[0].bytes_in, 1);
        assert_eq!(got[0].1[0].bytes_out, 2);
    }

    #[test]
    fn decoder_rejects_each_corruption() {
        let vms = sample();
        let mut buf = vec![0u8; 4096];
        let n = encode(&vms, &mut buf).unwrap();
        let good = buf[..n].to_vec();

        assert_eq!(ListView::parse(&good[..23]).err(), Some(Error::Truncated));
        assert_eq!(
            ListView::parse(&good[..n - 1]).err(),
            Some(Error::Truncated)
        );
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(ListView::parse(&b).err(), Some(Error::BadMagic));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(
            ListView::parse(&b).err(),
            Some(Error::UnsupportedVersion { found: 2 })
        );
        let mut b = good.clone();
        b[6] = 20;
        assert!(matches!(ListView::parse(&b), Err(Error::Malformed(_))));
        let mut b = good.clone();
        b[8] = 40;
        assert!(matches!(ListView::parse(&b), Err(Error::Malformed(_))));
        let mut b = good.clone();
        b[12] = 2; // claims fewer VMs than present
        assert!(matches!(ListView::parse(&b), Err(Error::Malformed(_))));
        let mut b = good.clone();
        b[12] = 4; // claims more VMs than present
        assert_eq!(ListView::parse(&b).err(), Some(Error::Truncated));
        let mut b = good.clone();
        b[24 + 17] = b'!'; // tag charset
        assert!(matches!(ListView::parse(&b), Err(Error::Malformed(_))));
    }

    #[test]
    fn bytes_after_total_length_are_ignored() {
        let vms = sample();
        let mut buf = vec![0x55u8; 4096];
        let n = encode(&vms, &mut buf).unwrap();
        assert_eq!(decode(&buf).unwrap(), vms);
        assert!(n < buf.len());
    }

    fn arb_device() -> impl Strategy<Value = DeviceInfo> {
        (
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
            any::<Option<u8>>(),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(class, port_base, port_count, irq, op, bytes_in, bytes_out)| DeviceInfo {
                    class,
                    port_base,
                    port_count,
                    isa_irq: irq.filter(|&i| i != NO_IRQ),
                    operator_attached: op,
                    bytes_in,
                    bytes_out,
                },
            )
    }

    fn arb_vm() -> impl Strategy<Value = (VmInfo, Vec<DeviceInfo>)> {
        let tag = proptest::option::of("[a-z0-9][a-z0-9._-]{0,31}");
        (
            any::<u64>(),
            tag,
            any::<bool>(),
            proptest::collection::vec(arb_device(), 0..6),
        )
            .prop_map(|(vm_id, tag, frozen, devs)| {
                (
                    VmInfo {
                        vm_id,
                        tag: tag.map(|t| VmTag::new(t.as_bytes()).unwrap()),
                        frozen,
                    },
                    devs,
                )
            })
    }

    proptest! {
        #[test]
        fn prop_round_trip(vms in proptest::collection::vec(arb_vm(), 0..8)) {
            let mut buf = vec![0u8; 8192];
            let n = encode(&vms, &mut buf).unwrap();
            prop_assert_eq!(decode(&buf[..n]).unwrap(), vms);
        }

        #[test]
        fn prop_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(view) = ListView::parse(&bytes) {
                for vm in view.vms() {
                    let _ = vm.devices().count();
                }
            }
        }

        #[test]
        fn prop_parse_of_mutated_list_never_panics(idx in 0usize..240, val in any::<u8>()) {
            let mut buf = vec![0u8; 240];
            encode(&sample(), &mut buf).unwrap();
            buf[idx] = val;
            if let Ok(view) = ListView::parse(&buf) {
                for vm in view.vms() {
                    let _ = vm.devices().count();
                }
            }
        }
    }
}
