//! A cpio archive in the "newc" format the kernel unpacks as initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst), written
//! reproducibly: fixed inode numbers, owner root, mtime 0, sorted paths.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { data: Vec<u8>, exec: bool },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// Paths (without a leading slash) to what they are.
#[derive(Clone, Default)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

impl Archive {
    /// Adds `path` and every parent directory it lacks.
    pub fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.nodes.entry(parent.clone()).or_insert(Node::Dir);
        }
        self.nodes.insert(path, node);
    }

    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path.trim_start_matches('/'))
    }

    /// The archive bytes, ending with the TRAILER!!! record.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, node)) in self.nodes.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir => (0o040755, &[], (0, 0)),
                Node::File { data, exec } => {
                    (if *exec { 0o100755 } else { 0o100644 }, data, (0, 0))
                }
                Node::Symlink(target) => (0o120777, target.as_bytes(), (0, 0)),
                Node::CharDev { major, minor } => (0o020600, &[], (*major, *minor)),
            };
            let nlink = if matches!(node, Node::Dir) { 2 } else { 1 };
            record(&mut out, ino as u32 + 1, mode, nlink, rdev, path, data);
        }
        record(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn record(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize (with NUL), check.
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_records_with_parents_and_padding() {
        let mut a = Archive::default();
        a.add(
            "/bin/busybox",
            Node::File {
                data: b"ELF".to_vec(),
                exec: true,
            },
        );
        a.add("bin/sh", Node::Symlink("busybox".into()));
        let b = a.to_bytes();
        // "bin" comes first (a directory created for its children).
        assert!(b.starts_with(b"070701"));
        let header = |i: usize| String::from_utf8(b[6 + 8 * i..14 + 8 * i].to_vec()).unwrap();
        assert_eq!(header(1), "000041ed");
        assert_eq!(&b[110..114], b"bin\0");
        // Every record starts 4-byte aligned and the archive ends with the trailer.
        assert_eq!(b.len() % 4, 0);
        let s = String::from_utf8_lossy(&b);
        assert!(s.contains("bin/busybox\0"));
        assert!(s.contains("bin/sh\0"));
        assert!(s.ends_with("TRAILER!!!\0\0\0\0") || s.ends_with("TRAILER!!!\0\0"));
        assert!(a.contains("/bin/sh") && a.contains("bin"));
        // Reproducible.
        assert_eq!(a.to_bytes(), b);
    }
}
