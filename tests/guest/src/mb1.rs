//! The multiboot (v1) information the guest was started with.

/// Memory the guest can read by physical address.
pub trait Phys {
    fn bytes(&self, addr: u64, len: usize) -> &[u8];
}

/// Identity-mapped physical memory (the entry code maps the first 4 GiB).
pub struct Identity;

impl Phys for Identity {
    fn bytes(&self, addr: u64, len: usize) -> &[u8] {
        // SAFETY: the first 4 GiB are identity-mapped; the loader's
        // structures are below 4 GiB.
        unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub base: u64,
    pub len: u64,
    pub kind: u32,
}

pub struct Info<'a, P: Phys> {
    mem: &'a P,
    addr: u64,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

impl<'a, P: Phys> Info<'a, P> {
    pub fn new(mem: &'a P, addr: u64) -> Self {
        Info { mem, addr }
    }
    fn field(&self, off: usize) -> u32 {
        u32_at(self.mem.bytes(self.addr + off as u64, 4), 0)
    }
    pub fn flags(&self) -> u32 {
        self.field(0)
    }
    /// The command line (flag bit 2), up to 4 KiB.
    pub fn cmdline(&self) -> &'a str {
        if self.flags() & (1 << 2) == 0 {
            return "";
        }
        let b = self.mem.bytes(self.field(16) as u64, 4096);
        let n = b.iter().position(|&c| c == 0).unwrap_or(0);
        core::str::from_utf8(&b[..n]).unwrap_or("")
    }
    /// Where the loader left its structures: the information itself, the
    /// command line, the memory map (0 where absent).
    pub fn loader_addrs(&self) -> [u64; 3] {
        let f = self.flags();
        [
            self.addr,
            if f & (1 << 2) != 0 {
                self.field(16) as u64
            } else {
                0
            },
            if f & (1 << 6) != 0 {
                self.field(48) as u64
            } else {
                0
            },
        ]
    }
    /// mem_upper in KiB (flag bit 0).
    pub fn mem_upper_kib(&self) -> Option<u32> {
        (self.flags() & 1 != 0).then(|| self.field(8))
    }
    /// The memory map (flag bit 6).
    pub fn memory_map(&self) -> impl Iterator<Item = MapEntry> + 'a {
        let (len, addr) = if self.flags() & (1 << 6) != 0 {
            (self.field(44), self.field(48))
        } else {
            (0, 0)
        };
        let b = self.mem.bytes(addr as u64, len as usize);
        let mut off = 0usize;
        core::iter::from_fn(move || {
            if off + 24 > b.len() {
                return None;
            }
            let size = u32_at(b, off) as usize;
            let e = MapEntry {
                base: u64::from_le_bytes(b[off + 4..off + 12].try_into().unwrap()),
                len: u64::from_le_bytes(b[off + 12..off + 20].try_into().unwrap()),
                kind: u32_at(b, off + 20),
            };
            off += size + 4;
            Some(e)
        })
    }
}

/// The value of `key=` in a command line.
pub fn arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Buf(Vec<u8>);
    impl Phys for Buf {
        fn bytes(&self, addr: u64, len: usize) -> &[u8] {
            let end = (addr as usize + len).min(self.0.len());
            &self.0[addr as usize..end]
        }
    }

    #[test]
    fn reads_cmdline_and_map() {
        let mut m = vec![0u8; 0x1000];
        let put =
            |m: &mut Vec<u8>, off: usize, v: u32| m[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(&mut m, 0x100, (1 << 2) | (1 << 6) | 1);
        put(&mut m, 0x108, 0x1234);
        put(&mut m, 0x110, 0x200);
        m[0x200..0x20c].copy_from_slice(b"test=boot x\0");
        put(&mut m, 0x100 + 44, 48);
        put(&mut m, 0x100 + 48, 0x300);
        for (i, (base, len, kind)) in [(0u64, 0x9f000u64, 1u32), (0x10_0000, 0x100_0000, 2)]
            .into_iter()
            .enumerate()
        {
            let o = 0x300 + 24 * i;
            put(&mut m, o, 20);
            m[o + 4..o + 12].copy_from_slice(&base.to_le_bytes());
            m[o + 12..o + 20].copy_from_slice(&len.to_le_bytes());
            put(&mut m, o + 20, kind);
        }
        let mem = Buf(m);
        let info = Info::new(&mem, 0x100);
        assert_eq!(info.cmdline(), "test=boot x");
        assert_eq!(arg(info.cmdline(), "test"), Some("boot"));
        assert_eq!(arg(info.cmdline(), "tes"), None);
        assert_eq!(info.mem_upper_kib(), Some(0x1234));
        let map: Vec<_> = info.memory_map().collect();
        assert_eq!(
            map,
            vec![
                MapEntry {
                    base: 0,
                    len: 0x9f000,
                    kind: 1
                },
                MapEntry {
                    base: 0x10_0000,
                    len: 0x100_0000,
                    kind: 2
                }
            ]
        );
    }
}
