//! Command lines of L0 and of its boot modules: whitespace-separated words,
//! each `key=value` or a bare `flag`.

use core::fmt;

/// One word of a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Word<'a> {
    pub key: &'a str,
    pub value: Option<&'a str>,
}

/// Iterates over the words of `s`.
pub fn words(s: &str) -> impl Iterator<Item = Word<'_>> {
    s.split_ascii_whitespace().map(|w| match w.split_once('=') {
        Some((key, value)) => Word {
            key,
            value: Some(value),
        },
        None => Word {
            key: w,
            value: None,
        },
    })
}

/// Splits off the first word: module command lines start with what the
/// module is (`l1=multiboot`, `l1.module`, ...); the rest belongs to it.
pub fn split_first(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// A size or number that did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadNumber;

impl fmt::Display for BadNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a number (decimal, 0x-hex, with an optional K/M/G suffix)"
        )
    }
}

/// Parses `123`, `0x7b`, `64K`, `32M`, `1G`.
pub fn parse_size(s: &str) -> Result<u64, BadNumber> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n = parse_number(digits)?;
    n.checked_mul(1u64 << shift).ok_or(BadNumber)
}

/// Parses a decimal or `0x` hexadecimal number.
pub fn parse_number(s: &str) -> Result<u64, BadNumber> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| BadNumber)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words() {
        let w: Vec<_> = words("  serial=com2 quiet  l0_mem=32M ").collect();
        assert_eq!(
            w,
            [
                Word {
                    key: "serial",
                    value: Some("com2")
                },
                Word {
                    key: "quiet",
                    value: None
                },
                Word {
                    key: "l0_mem",
                    value: Some("32M")
                }
            ]
        );
        assert_eq!(
            words("a=b=c").next(),
            Some(Word {
                key: "a",
                value: Some("b=c")
            })
        );
    }

    #[test]
    fn first_word() {
        assert_eq!(
            split_first(" l1=multiboot  test=boot x"),
            ("l1=multiboot", "test=boot x")
        );
        assert_eq!(split_first("l1.module"), ("l1.module", ""));
        assert_eq!(split_first(""), ("", ""));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("32M"), Ok(32 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size(""), Err(BadNumber));
        assert_eq!(parse_size("M"), Err(BadNumber));
        assert_eq!(parse_size("12Q"), Err(BadNumber));
        assert_eq!(parse_size("0xffffffffffffffffG"), Err(BadNumber));
    }
}
