//! L1 as a spy: what an L2 printed or was typed must never be found in
//! L1's own memory. The patterns are recognised without being stored:
//! a console line's random part by its shape, typed text through a
//! masked copy, so the text itself is not in L1's image to be found.
//! Plain byte matching, tested on the host.

/// `shadow-<A|B>-<16 lower-case hex digits>`: what `l2x_console` builds
/// from randomness it draws inside L2.
pub const SECRET_PREFIX: &[u8] = b"shadow-";
pub const SECRET_LEN: usize = 7 + 1 + 1 + 16;

/// Whether a console secret starts at `b[0]`; its letter if so.
pub fn secret_at(b: &[u8]) -> Option<u8> {
    if b.len() < SECRET_LEN
        || &b[..7] != SECRET_PREFIX
        || !matches!(b[7], b'A' | b'B')
        || b[8] != b'-'
    {
        return None;
    }
    b[9..SECRET_LEN]
        .iter()
        .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(b[7])
}

/// Text kept XOR-ed with [`MASK`], so the image never holds it in clear.
pub const MASK: u8 = 0x5a;

pub const fn mask<const N: usize>(s: &[u8; N]) -> [u8; N] {
    let mut o = [0u8; N];
    let mut i = 0;
    while i < N {
        o[i] = s[i] ^ MASK;
        i += 1;
    }
    o
}

/// Whether the masked `needle` starts at `b[0]`.
pub fn masked_at(b: &[u8], needle: &[u8]) -> bool {
    b.len() >= needle.len() && b.iter().zip(needle).all(|(x, n)| x ^ MASK == *n)
}

/// Occurrences in `hay` of what `at` recognises (per start position).
pub fn count(hay: &[u8], at: impl Fn(&[u8]) -> bool) -> usize {
    (0..hay.len()).filter(|&i| at(&hay[i..])).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_by_shape() {
        let s =
            b"xxshadow-A-0123456789abcdef\r\nshadow-B-0123456789abcdeZ shadow-C-0123456789abcdef";
        assert_eq!(count(s, |b| secret_at(b).is_some()), 1);
        assert_eq!(secret_at(&s[2..]), Some(b'A'));
        assert_eq!(secret_at(b"shadow-console A line 1"), None);
        assert_eq!(secret_at(b"shadow-A-0123"), None, "too short");
    }

    #[test]
    fn masked_needles() {
        static HELLO: [u8; 8] = mask(b"hello-L2");
        let hay = b"..hello-L2..hello-L..HELLO-L2";
        assert_eq!(count(hay, |b| masked_at(b, &HELLO)), 1);
        assert!(!HELLO.windows(8).any(|w| w == b"hello-L2"));
    }
}
