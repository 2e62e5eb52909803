//! Time-based one-time passwords (RFC 6238) for MFA, as authenticator apps compute them:
//! HMAC-SHA-1, 30-second steps, 6 digits, the secret shared as unpadded Base32 (RFC 4648).
//!
//! [`verify`] accepts the current step and one step either side (clock drift), comparing in
//! constant time. Written here rather than taken from a crate: it is twenty lines over
//! aws-lc-rs's HMAC, which the workspace already has, and the RFC's vectors test it.

use aws_lc_rs::hmac;

/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps accepted either side of the current one.
pub const WINDOW: u64 = 1;
/// Bytes of a generated secret (160 bits, RFC 4226's recommendation).
const SECRET_BYTES: usize = 20;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new random secret, Base32 without padding (32 characters).
pub fn generate_secret() -> String {
    let mut buf = [0u8; SECRET_BYTES];
    aws_lc_rs::rand::fill(&mut buf).expect("system CSPRNG failure");
    base32_encode(&buf)
}

/// RFC 4648 Base32, without padding.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// RFC 4648 Base32, case-insensitive, padding and spaces ignored; `None` for any other
/// character.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !matches!(c, b'=' | b' ')) {
        let value = BASE32.iter().position(|&b| b == c.to_ascii_uppercase())? as u32;
        buffer = ((buffer << 5) | value) & 0xFFFF;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// The HOTP value (RFC 4226) of `key` at `counter`, reduced to `digits` digits.
pub fn hotp(key: &[u8], counter: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    // Dynamic truncation: the low nibble of the last byte picks four bytes.
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let code = u32::from_be_bytes([mac[offset], mac[offset + 1], mac[offset + 2], mac[offset + 3]])
        & 0x7fff_ffff;
    code % 10u32.pow(digits.min(9))
}

/// The 6-digit code of a Base32 `secret` at Unix time `unix_secs`, zero-padded; `None` if the
/// secret is not Base32.
pub fn code_at(secret: &str, unix_secs: u64) -> Option<String> {
    let key = base32_decode(secret)?;
    let code = hotp(&key, unix_secs / STEP_SECS, DIGITS);
    Some(format!("{code:0width$}", width = DIGITS as usize))
}

/// Whether `token` is the code of `secret` at `unix_secs`, or one step before or after.
/// Spaces in the token are ignored (apps show `123 456`).
pub fn verify(secret: &str, token: &str, unix_secs: u64) -> bool {
    let token: String = token.chars().filter(|c| !c.is_whitespace()).collect();
    if token.len() != DIGITS as usize || !token.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Some(key) = base32_decode(secret).filter(|k| !k.is_empty()) else { return false };
    let step = unix_secs / STEP_SECS;
    let mut ok = false;
    for counter in step.saturating_sub(WINDOW)..=step.saturating_add(WINDOW) {
        let code = format!("{:0width$}", hotp(&key, counter, DIGITS), width = DIGITS as usize);
        // Every candidate is compared, so the time taken does not say which one matched.
        ok |= crate::constant_time_eq(code.as_bytes(), token.as_bytes());
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (8 digits) and the same codes' last 6 digits.
    #[test]
    fn rfc_6238_vectors() {
        let key = b"12345678901234567890";
        let rows: [(u64, u32); 6] = [
            (59, 94287082),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ];
        let secret = base32_encode(key);
        assert_eq!(secret, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        for (time, expected) in rows {
            assert_eq!(hotp(key, time / STEP_SECS, 8), expected, "t={time}");
            let six = format!("{:06}", expected % 1_000_000);
            assert_eq!(code_at(&secret, time).unwrap(), six, "t={time}");
            assert!(verify(&secret, &six, time));
        }
    }

    /// RFC 4226 appendix D: HOTP of the same key at counters 0 to 9.
    #[test]
    fn rfc_4226_vectors() {
        let expected =
            [755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489];
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(hotp(b"12345678901234567890", counter as u64, 6), *code);
        }
    }

    #[test]
    fn a_window_of_one_step_either_side() {
        let secret = generate_secret();
        assert_eq!(secret.len(), 32);
        let now = 1_700_000_015;
        let code = code_at(&secret, now).unwrap();
        assert!(verify(&secret, &code, now));
        assert!(verify(&secret, &code, now + STEP_SECS));
        assert!(verify(&secret, &code, now - STEP_SECS));
        assert!(!verify(&secret, &code, now + 3 * STEP_SECS));
        assert!(!verify(&secret, &code, now - 3 * STEP_SECS));
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert!(verify(&secret, &spaced, now));
    }

    #[test]
    fn malformed_tokens_and_secrets_fail() {
        let secret = generate_secret();
        for token in ["", "12345", "1234567", "abcdef", "12345a", "１２３４５６"] {
            assert!(!verify(&secret, token, 1_000_000), "{token:?}");
        }
        assert!(!verify("not base32!", "123456", 1_000_000));
        assert!(!verify("", "123456", 1_000_000));
        assert!(code_at("1", 0).is_none());
    }

    #[test]
    fn base32_round_trips() {
        // RFC 4648 §10 vectors, without padding.
        let cases = [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base32_encode(plain.as_bytes()), encoded);
            assert_eq!(base32_decode(encoded).unwrap(), plain.as_bytes());
            assert_eq!(base32_decode(&encoded.to_lowercase()).unwrap(), plain.as_bytes());
        }
        assert_eq!(base32_decode("MZXW6===").unwrap(), b"foo");
    }
}
