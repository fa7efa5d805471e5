//! `probe capture FILE`: a packet capture in the cloud VM, as the provider
//! can take one: every Ethernet frame of every interface (an AF_PACKET
//! socket, ETH_P_ALL, both directions), each written to FILE as it comes
//! (a little-endian u32 length, then the frame), until the probe is
//! killed.
//!
//! `probe capture-check FILE PORT`: what the capture holds of the TCP
//! connections to or from PORT (the relay's): frames, payload bytes, and
//! how many payloads carry an owner frame (`@owner `). The control of the
//! spy's search of the capture: a capture that never saw the relay's
//! traffic in it proves nothing (`CAPTURE FAIL`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;

const SYS_SOCKET: usize = 41;
const AF_PACKET: usize = 17;
const SOCK_RAW: usize = 3;
/// ETH_P_ALL (0x0003) in network byte order.
const ETH_P_ALL_BE: usize = 0x0300;

pub fn capture(path: &str) -> bool {
    let fd = crate::syscall6(SYS_SOCKET, [AF_PACKET, SOCK_RAW, ETH_P_ALL_BE, 0, 0, 0]);
    if fd < 0 {
        println!("CAPTURE FAIL: no AF_PACKET socket (errno {})", -fd);
        return false;
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let mut sock = unsafe { File::from_raw_fd(fd as i32) };
    let Ok(mut out) = File::create(path) else {
        println!("CAPTURE FAIL: cannot create {path}");
        return false;
    };
    let mut frame = vec![0u8; 65536];
    loop {
        let n = match sock.read(&mut frame) {
            Ok(n) => n,
            Err(e) => {
                println!("CAPTURE FAIL: {e}");
                return false;
            }
        };
        let record = [&(n as u32).to_le_bytes()[..], &frame[..n]].concat();
        if out.write_all(&record).is_err() {
            println!("CAPTURE FAIL: cannot write {path}");
            return false;
        }
    }
}

/// The TCP payload of an IPv4 Ethernet frame, if it is to or from `port`.
fn tcp_payload(frame: &[u8], port: u16) -> Option<&[u8]> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if ip.len() < ihl + 20 || ip[9] != 6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let tcp = ip.get(ihl..total).filter(|t| t.len() >= 20)?;
    let (src, dst) = (
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
    );
    let doff = usize::from(tcp[12] >> 4) * 4;
    (src == port || dst == port).then(|| tcp.get(doff..).unwrap_or(&[]))
}

pub fn check(path: &str, port: u16) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        println!("CAPTURE FAIL: cannot read {path}");
        return false;
    };
    let (mut frames, mut on_port, mut payload, mut owner) = (0, 0, 0, 0);
    let mut rest = &bytes[..];
    while rest.len() >= 4 {
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(frame) = rest.get(4..4 + n) else {
            break;
        };
        rest = &rest[4 + n..];
        frames += 1;
        if let Some(p) = tcp_payload(frame, port) {
            on_port += 1;
            payload += p.len();
            owner += usize::from(p.windows(7).any(|w| w == b"@owner "));
        }
    }
    let ok = owner > 0;
    println!(
        "CAPTURE {}: {frames} frames, {on_port} on port {port} ({payload} payload bytes, {owner} carrying owner frames)",
        if ok { "ok" } else { "FAIL" }
    );
    ok
}
