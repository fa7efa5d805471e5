//! AES-256-GCM on AES-NI and PCLMULQDQ, for L0.
//!
//! L0 is built without SIMD code generation (its target is soft-float, and
//! the guests own the vector registers), so the `aes-gcm` crate runs its
//! bit-sliced software AES and GHASH there: ~80 000 instructions to seal a
//! half-kilobyte device state, which under an emulator is most of a
//! save's cost. The instructions the CPU has for exactly this bring it to a
//! few thousand. Each `asm!` block below saves the XMM registers it uses
//! and restores them before it ends, so the guest's vector state (which
//! VM exits leave in the registers) is untouched and the compiler's
//! register assumptions hold.
//!
//! What is done here is NIST SP 800-38D with 96-bit IVs, built from two
//! primitives: AES-256 encryption of whole blocks (FIPS 197; the key
//! schedule in plain Rust) and the GHASH update (`Y = (Y ⊕ X) · H` in
//! GF(2¹²⁸), carry-less multiplication on byte-reversed operands and the
//! reduction of Gueron and Kounavis, "Intel Carry-Less Multiplication
//! Instruction and its Usage for Computing the GCM Mode"). Tests check it
//! against the `aes-gcm` crate on random inputs and against NIST vectors.
#![allow(unsafe_code)]

use core::arch::asm;

/// AES-256 round keys, 16-byte aligned for the instructions' memory operands.
#[derive(Clone)]
#[repr(C, align(16))]
struct RoundKeys([[u8; 16]; 15]);

/// The authentication tag did not match: the text was altered, or
/// sealed under another key or nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagMismatch;

/// An AES-256-GCM key for the CPU's instructions.
#[derive(Clone)]
pub struct NiGcm {
    rk: RoundKeys,
    /// The hash key `H = AES_K(0¹²⁸)` and its powers H², H³, H⁴,
    /// byte-reversed as the GHASH code wants them.
    h: [Block; 4],
}

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Block([u8; 16]);

/// Reverses the bytes of an XMM register (PSHUFB mask).
static BSWAP: Block = Block([15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);

/// Whether this CPU has the instructions (CPUID.1: AES, PCLMULQDQ,
/// SSSE3 for PSHUFB, SSE2).
pub fn cpu_supports() -> bool {
    let r = core::arch::x86_64::__cpuid(1);
    r.ecx & (1 << 25) != 0
        && r.ecx & (1 << 1) != 0
        && r.ecx & (1 << 9) != 0
        && r.edx & (1 << 26) != 0
}

/// The AES S-box, computed (multiplicative inverse in GF(2⁸), then the
/// affine map of FIPS 197 5.1.1).
const SBOX: [u8; 256] = {
    const fn mul(mut a: u8, mut b: u8) -> u8 {
        let mut p = 0;
        while b != 0 {
            if b & 1 != 0 {
                p ^= a;
            }
            let hi = a & 0x80;
            a <<= 1;
            if hi != 0 {
                a ^= 0x1b;
            }
            b >>= 1;
        }
        p
    }
    let mut s = [0u8; 256];
    let mut x = 0usize;
    while x < 256 {
        // x^254 = x^-1 (and 0 for 0).
        let mut inv = 1u8;
        let mut i = 0;
        while i < 254 {
            inv = mul(inv, x as u8);
            i += 1;
        }
        if x == 0 {
            inv = 0;
        }
        let b = inv;
        s[x] = b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63;
        x += 1;
    }
    s
};

/// FIPS 197 5.2 for a 256-bit key: 60 words, 15 round keys.
fn expand(key: &[u8; 32]) -> RoundKeys {
    let mut w = [[0u8; 4]; 60];
    for (i, word) in w.iter_mut().take(8).enumerate() {
        word.copy_from_slice(&key[4 * i..4 * i + 4]);
    }
    let mut rcon = 1u8;
    for i in 8..60 {
        let mut t = w[i - 1];
        if i % 8 == 0 {
            t = [
                SBOX[t[1] as usize] ^ rcon,
                SBOX[t[2] as usize],
                SBOX[t[3] as usize],
                SBOX[t[0] as usize],
            ];
            rcon = (rcon << 1) ^ if rcon & 0x80 != 0 { 0x1b } else { 0 };
        } else if i % 8 == 4 {
            t = t.map(|b| SBOX[b as usize]);
        }
        for j in 0..4 {
            w[i][j] = w[i - 8][j] ^ t[j];
        }
    }
    let mut rk = RoundKeys([[0; 16]; 15]);
    for (r, k) in rk.0.iter_mut().enumerate() {
        for j in 0..4 {
            k[4 * j..4 * j + 4].copy_from_slice(&w[4 * r + j]);
        }
    }
    rk
}

/// Encrypts `blocks` in place (ECB: CTR builds its counter blocks first).
fn encrypt_blocks(rk: &RoundKeys, blocks: &mut [Block]) {
    if blocks.is_empty() {
        return;
    }
    let mut save = [Block([0; 16]); 2];
    // SAFETY: reads 15 aligned round keys and `blocks.len()` blocks, writes
    // those blocks; XMM0/XMM1 are restored before the block ends. The
    // caller's construction guarantees the instructions exist and that
    // CR4.OSFXSR is set ([`NiGcm::new`]).
    unsafe {
        asm!(
            "movdqa xmmword ptr [{save}], xmm0",
            "movdqa xmmword ptr [{save} + 16], xmm1",
            "2:",
            "movdqu xmm0, xmmword ptr [{p}]",
            "pxor xmm0, xmmword ptr [{rk}]",
            "aesenc xmm0, xmmword ptr [{rk} + 16]",
            "aesenc xmm0, xmmword ptr [{rk} + 32]",
            "aesenc xmm0, xmmword ptr [{rk} + 48]",
            "aesenc xmm0, xmmword ptr [{rk} + 64]",
            "aesenc xmm0, xmmword ptr [{rk} + 80]",
            "aesenc xmm0, xmmword ptr [{rk} + 96]",
            "aesenc xmm0, xmmword ptr [{rk} + 112]",
            "aesenc xmm0, xmmword ptr [{rk} + 128]",
            "aesenc xmm0, xmmword ptr [{rk} + 144]",
            "aesenc xmm0, xmmword ptr [{rk} + 160]",
            "aesenc xmm0, xmmword ptr [{rk} + 176]",
            "aesenc xmm0, xmmword ptr [{rk} + 192]",
            "aesenc xmm0, xmmword ptr [{rk} + 208]",
            "aesenclast xmm0, xmmword ptr [{rk} + 224]",
            "movdqu xmmword ptr [{p}], xmm0",
            "add {p}, 16",
            "dec {n}",
            "jnz 2b",
            "movdqa xmm0, xmmword ptr [{save}]",
            "movdqa xmm1, xmmword ptr [{save} + 16]",
            save = in(reg) save.as_mut_ptr(),
            rk = in(reg) rk.0.as_ptr(),
            p = inout(reg) blocks.as_mut_ptr() => _,
            n = inout(reg) blocks.len() => _,
            options(nostack),
        );
    }
}

/// The shift by one bit (the operands are bit-reflected) and the reduction
/// modulo x^128 + x^7 + x^2 + x + 1 of the 256-bit carry-less product
/// xmm6:xmm3, into xmm0 (Gueron and Kounavis, algorithm 5). Uses
/// xmm2-xmm8 and xmm10.
macro_rules! shift_reduce {
    () => {
        concat!(
            "movdqa xmm7, xmm3\n",
            "psrld xmm7, 31\n",
            "movdqa xmm8, xmm6\n",
            "psrld xmm8, 31\n",
            "pslld xmm3, 1\n",
            "pslld xmm6, 1\n",
            "movdqa xmm10, xmm7\n",
            "psrldq xmm10, 12\n",
            "pslldq xmm8, 4\n",
            "pslldq xmm7, 4\n",
            "por xmm3, xmm7\n",
            "por xmm6, xmm8\n",
            "por xmm6, xmm10\n",
            "movdqa xmm7, xmm3\n",
            "pslld xmm7, 31\n",
            "movdqa xmm8, xmm3\n",
            "pslld xmm8, 30\n",
            "movdqa xmm10, xmm3\n",
            "pslld xmm10, 25\n",
            "pxor xmm7, xmm8\n",
            "pxor xmm7, xmm10\n",
            "movdqa xmm8, xmm7\n",
            "psrldq xmm8, 4\n",
            "pslldq xmm7, 12\n",
            "pxor xmm3, xmm7\n",
            "movdqa xmm2, xmm3\n",
            "psrld xmm2, 1\n",
            "movdqa xmm4, xmm3\n",
            "psrld xmm4, 2\n",
            "movdqa xmm5, xmm3\n",
            "psrld xmm5, 7\n",
            "pxor xmm2, xmm4\n",
            "pxor xmm2, xmm5\n",
            "pxor xmm2, xmm8\n",
            "pxor xmm3, xmm2\n",
            "pxor xmm6, xmm3\n",
            "movdqa xmm0, xmm6\n",
        )
    };
}

/// Adds the carry-less product of xmm2 and the register `$h` to the
/// 256-bit sum lo = xmm3, hi = xmm6, middle = xmm4 (xmm5 scratch; xmm2 is
/// consumed).
macro_rules! mul_add {
    ($h:literal) => {
        concat!(
            "movdqa xmm5, xmm2\n",
            "pclmulqdq xmm5, ",
            $h,
            ", 0x00\n",
            "pxor xmm3, xmm5\n",
            "movdqa xmm5, xmm2\n",
            "pclmulqdq xmm5, ",
            $h,
            ", 0x11\n",
            "pxor xmm6, xmm5\n",
            "movdqa xmm5, xmm2\n",
            "pclmulqdq xmm5, ",
            $h,
            ", 0x10\n",
            "pxor xmm4, xmm5\n",
            "pclmulqdq xmm2, ",
            $h,
            ", 0x01\n",
            "pxor xmm4, xmm2\n",
        )
    };
}

/// The middle term of the sum into its low and high halves.
macro_rules! fold_middle {
    () => {
        "movdqa xmm5, xmm4\npslldq xmm5, 8\npsrldq xmm4, 8\npxor xmm3, xmm5\npxor xmm6, xmm4\n"
    };
}

/// `y = (...((y ⊕ X₁)·H ⊕ X₂)·H ...)·H` over the whole 16-byte blocks of
/// `data` (GHASH, SP 800-38D 6.4); `y` in the standard byte order. `h` is
/// H, H², H³, H⁴ byte-reversed: four blocks at a time are
/// `(y ⊕ X₁)·H⁴ ⊕ X₂·H³ ⊕ X₃·H² ⊕ X₄·H`, summed before one reduction.
fn ghash_blocks(h: &[Block; 4], y: &mut Block, data: &[u8]) {
    let n = data.len() / 16;
    if n == 0 {
        return;
    }
    let mut save = [Block([0; 16]); 14];
    // SAFETY: reads `n` blocks of `data`, `h`, the mask; writes `y`;
    // XMM0-XMM13 are restored before the block ends; instructions and
    // CR4.OSFXSR as for `encrypt_blocks`.
    unsafe {
        asm!(
            "movdqa xmmword ptr [{save}], xmm0",
            "movdqa xmmword ptr [{save} + 16], xmm1",
            "movdqa xmmword ptr [{save} + 32], xmm2",
            "movdqa xmmword ptr [{save} + 48], xmm3",
            "movdqa xmmword ptr [{save} + 64], xmm4",
            "movdqa xmmword ptr [{save} + 80], xmm5",
            "movdqa xmmword ptr [{save} + 96], xmm6",
            "movdqa xmmword ptr [{save} + 112], xmm7",
            "movdqa xmmword ptr [{save} + 128], xmm8",
            "movdqa xmmword ptr [{save} + 144], xmm9",
            "movdqa xmmword ptr [{save} + 160], xmm10",
            "movdqa xmmword ptr [{save} + 176], xmm11",
            "movdqa xmmword ptr [{save} + 192], xmm12",
            "movdqa xmmword ptr [{save} + 208], xmm13",
            "movdqa xmm9, xmmword ptr [{mask}]",
            "movdqa xmm1, xmmword ptr [{h}]",
            "movdqa xmm11, xmmword ptr [{h} + 16]",
            "movdqa xmm12, xmmword ptr [{h} + 32]",
            "movdqa xmm13, xmmword ptr [{h} + 48]",
            "movdqa xmm0, xmmword ptr [{y}]",
            "pshufb xmm0, xmm9",
            // Four blocks at a time.
            "2:",
            "cmp {n}, 4",
            "jb 3f",
            "pxor xmm3, xmm3",
            "pxor xmm4, xmm4",
            "pxor xmm6, xmm6",
            "movdqu xmm2, xmmword ptr [{p}]",
            "pshufb xmm2, xmm9",
            "pxor xmm2, xmm0",
            mul_add!("xmm13"),
            "movdqu xmm2, xmmword ptr [{p} + 16]",
            "pshufb xmm2, xmm9",
            mul_add!("xmm12"),
            "movdqu xmm2, xmmword ptr [{p} + 32]",
            "pshufb xmm2, xmm9",
            mul_add!("xmm11"),
            "movdqu xmm2, xmmword ptr [{p} + 48]",
            "pshufb xmm2, xmm9",
            mul_add!("xmm1"),
            fold_middle!(),
            shift_reduce!(),
            "add {p}, 64",
            "sub {n}, 4",
            "jmp 2b",
            // The rest one at a time.
            "3:",
            "test {n}, {n}",
            "jz 4f",
            "pxor xmm3, xmm3",
            "pxor xmm4, xmm4",
            "pxor xmm6, xmm6",
            "movdqu xmm2, xmmword ptr [{p}]",
            "pshufb xmm2, xmm9",
            "pxor xmm2, xmm0",
            mul_add!("xmm1"),
            fold_middle!(),
            shift_reduce!(),
            "add {p}, 16",
            "dec {n}",
            "jmp 3b",
            "4:",
            "pshufb xmm0, xmm9",
            "movdqa xmmword ptr [{y}], xmm0",
            "movdqa xmm0, xmmword ptr [{save}]",
            "movdqa xmm1, xmmword ptr [{save} + 16]",
            "movdqa xmm2, xmmword ptr [{save} + 32]",
            "movdqa xmm3, xmmword ptr [{save} + 48]",
            "movdqa xmm4, xmmword ptr [{save} + 64]",
            "movdqa xmm5, xmmword ptr [{save} + 80]",
            "movdqa xmm6, xmmword ptr [{save} + 96]",
            "movdqa xmm7, xmmword ptr [{save} + 112]",
            "movdqa xmm8, xmmword ptr [{save} + 128]",
            "movdqa xmm9, xmmword ptr [{save} + 144]",
            "movdqa xmm10, xmmword ptr [{save} + 160]",
            "movdqa xmm11, xmmword ptr [{save} + 176]",
            "movdqa xmm12, xmmword ptr [{save} + 192]",
            "movdqa xmm13, xmmword ptr [{save} + 208]",
            save = in(reg) save.as_mut_ptr(),
            mask = in(reg) &BSWAP,
            h = in(reg) h.as_ptr(),
            y = in(reg) y as *mut Block,
            p = inout(reg) data.as_ptr() => _,
            n = inout(reg) n => _,
            options(nostack),
        );
    }
}

impl NiGcm {
    /// # Safety
    /// The CPU must have the instructions ([`cpu_supports`]) and SSE must
    /// be enabled (CR4.OSFXSR = 1; any OS sets it, L0 does at boot).
    pub unsafe fn new(key: &[u8; 32]) -> NiGcm {
        let rk = expand(key);
        let mut h = [Block([0; 16])];
        encrypt_blocks(&rk, &mut h);
        let rev = |b: Block| {
            let mut r = b;
            r.0.reverse();
            r
        };
        let mut powers = [rev(h[0]); 4];
        // H^(k+1) = (0 ⊕ H^k)·H: GHASH of one block from zero.
        let mut p = h[0];
        for k in 1..4 {
            let mut y = Block([0; 16]);
            ghash_blocks(&powers, &mut y, &p.0);
            p = y;
            powers[k] = rev(p);
        }
        NiGcm { rk, h: powers }
    }

    /// AES-256 of one block (the key id).
    pub fn encrypt_block(&self, block: &mut [u8; 16]) {
        let mut b = [Block(*block)];
        encrypt_blocks(&self.rk, &mut b);
        *block = b[0].0;
    }

    /// `data ⊕` the keystream from counter block `inc32(j0)` on.
    fn ctr(&self, j0: &Block, data: &mut [u8]) {
        let mut counter = u32::from_be_bytes(j0.0[12..].try_into().unwrap());
        for chunk in data.chunks_mut(8 * 16) {
            let mut ks = [Block(j0.0); 8];
            let n = chunk.len().div_ceil(16);
            for k in &mut ks[..n] {
                counter = counter.wrapping_add(1);
                k.0[12..].copy_from_slice(&counter.to_be_bytes());
            }
            encrypt_blocks(&self.rk, &mut ks[..n]);
            for (c, k) in chunk.chunks_mut(16).zip(&ks) {
                if let Ok(c) = <&mut [u8; 16]>::try_from(&mut *c) {
                    // Two 64-bit XORs (L0 has no vector code of its own).
                    *c = (u128::from_ne_bytes(*c) ^ u128::from_ne_bytes(k.0)).to_ne_bytes();
                } else {
                    for (b, k) in c.iter_mut().zip(k.0) {
                        *b ^= k;
                    }
                }
            }
        }
    }

    /// GHASH over `aad` and `ciphertext` with their lengths, xor `E_K(J0)`.
    fn tag(&self, j0: &Block, aad: &[u8], ciphertext: &[u8]) -> [u8; 16] {
        let mut y = Block([0; 16]);
        for part in [aad, ciphertext] {
            let whole = part.len() / 16 * 16;
            ghash_blocks(&self.h, &mut y, &part[..whole]);
            if whole < part.len() {
                let mut last = [0u8; 16];
                last[..part.len() - whole].copy_from_slice(&part[whole..]);
                ghash_blocks(&self.h, &mut y, &last);
            }
        }
        let mut lens = [0u8; 16];
        lens[..8].copy_from_slice(&(aad.len() as u64 * 8).to_be_bytes());
        lens[8..].copy_from_slice(&(ciphertext.len() as u64 * 8).to_be_bytes());
        ghash_blocks(&self.h, &mut y, &lens);
        let mut ekj0 = [*j0];
        encrypt_blocks(&self.rk, &mut ekj0);
        core::array::from_fn(|i| y.0[i] ^ ekj0[0].0[i])
    }

    fn j0(nonce: &[u8; 12]) -> Block {
        let mut j0 = Block([0; 16]);
        j0.0[..12].copy_from_slice(nonce);
        j0.0[15] = 1;
        j0
    }

    /// Encrypts `buf` in place; returns the tag.
    pub fn encrypt(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let j0 = Self::j0(nonce);
        self.ctr(&j0, buf);
        self.tag(&j0, aad, buf)
    }

    /// Checks the tag (in constant time), then decrypts `buf` in place;
    /// on a bad tag ([`TagMismatch`]) `buf` is unchanged.
    pub fn decrypt(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), TagMismatch> {
        let j0 = Self::j0(nonce);
        let expected = self.tag(&j0, aad, buf);
        let diff = expected.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return Err(TagMismatch);
        }
        self.ctr(&j0, buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::aes::cipher::BlockEncrypt;
    use aes_gcm::{Aes256Gcm, Nonce, Tag};
    use proptest::prelude::*;

    /// The accelerated key, or `None` (and a line saying so) on a CPU
    /// without the instructions: these tests then check only what is plain
    /// Rust, and the software path stays covered by seal.rs's tests.
    fn ni(key: &[u8; 32]) -> Option<NiGcm> {
        if !cpu_supports() {
            eprintln!(
                "gcm_ni: this CPU lacks AES-NI, PCLMULQDQ or SSSE3: instruction path not run"
            );
            return None;
        }
        // SAFETY: supported, and the host OS enables SSE.
        Some(unsafe { NiGcm::new(key) })
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sbox_and_key_schedule_are_fips_197() {
        assert_eq!(
            (SBOX[0x00], SBOX[0x01], SBOX[0x53], SBOX[0xff]),
            (0x63, 0x7c, 0xed, 0x16)
        );
        // FIPS 197 appendix A.3: the last word of the 256-bit expansion.
        let key: [u8; 32] = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .try_into()
            .unwrap();
        assert_eq!(expand(&key).0[14][12..], hex("706c631e")[..]);
        // FIPS 197 appendix C.3.
        let key: [u8; 32] = (0..32).collect::<Vec<u8>>().try_into().unwrap();
        let mut b: [u8; 16] = hex("00112233445566778899aabbccddeeff").try_into().unwrap();
        let Some(ni) = ni(&key) else { return };
        ni.encrypt_block(&mut b);
        assert_eq!(b[..], hex("8ea2b7ca516745bfeafc49904b496089")[..]);
    }

    #[test]
    fn nist_gcm_vector() {
        // McGrew & Viega test case 16 (AES-256, 60-byte text, 20-byte AAD).
        let key: [u8; 32] = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
            .try_into()
            .unwrap();
        let iv: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
        let pt = hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let mut buf = pt.clone();
        let Some(ni) = ni(&key) else { return };
        let tag = ni.encrypt(&iv, &aad, &mut buf);
        assert_eq!(buf, hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"));
        assert_eq!(tag[..], hex("76fc6ece0f4e1768cddf8853bb2d551b")[..]);
        ni.decrypt(&iv, &aad, &mut buf, &tag).unwrap();
        assert_eq!(buf, pt);
    }

    proptest! {
        #[test]
        fn same_as_the_aes_gcm_crate(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 12]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..80),
            pt in proptest::collection::vec(any::<u8>(), 0..300),
            flip in any::<usize>(),
        ) {
            let Some(ours) = ni(&key) else { return Ok(()) };
            let theirs = Aes256Gcm::new(&key.into());
            let mut a = pt.clone();
            let tag = ours.encrypt(&nonce, &aad, &mut a);
            let mut b = pt.clone();
            let tag2 = theirs.encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut b).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&tag[..], &tag2[..]);
            let mut block = nonce.iter().chain(&nonce[..4]).copied().collect::<Vec<u8>>();
            let mut block2 = block.clone();
            ours.encrypt_block((&mut block[..]).try_into().unwrap());
            aes_gcm::aes::Aes256::new(&key.into()).encrypt_block((&mut block2[..]).into());
            prop_assert_eq!(block, block2);
            // Opening: the right tag gives the text back; any flipped bit fails
            // and leaves the buffer as it was.
            let mut c = a.clone();
            prop_assert!(ours.decrypt(&nonce, &aad, &mut c, &tag).is_ok());
            prop_assert_eq!(&c, &pt);
            let mut bad = tag;
            bad[flip % 16] ^= 1 << (flip % 8);
            let mut d = a.clone();
            prop_assert!(ours.decrypt(&nonce, &aad, &mut d, &bad).is_err());
            prop_assert_eq!(&d, &a);
            prop_assert!(theirs.decrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut b, Tag::from_slice(&tag)).is_ok());
        }
    }
}
