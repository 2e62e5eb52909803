//! PKCE (RFC 7636) code-verifier checks for the authorization-code grant.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::tokens::constant_time_eq;

/// Shortest code verifier RFC 7636 §4.1 allows.
pub const MIN_VERIFIER_LEN: usize = 43;
/// Longest code verifier RFC 7636 §4.1 allows.
pub const MAX_VERIFIER_LEN: usize = 128;

/// Computes the `S256` code challenge for `verifier`:
/// `BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))` without padding.
pub fn s256_challenge(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Whether `verifier` is a syntactically valid RFC 7636 code verifier:
/// 43 to 128 characters from `[A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"`.
pub fn is_valid_verifier(verifier: &str) -> bool {
    (MIN_VERIFIER_LEN..=MAX_VERIFIER_LEN).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Checks a token request's `code_verifier` against the `code_challenge`
/// stored with the authorization code (RFC 7636 §4.6).
///
/// * `"S256"`: the verifier must be a valid RFC 7636 verifier and
///   `BASE64URL(SHA256(verifier))` must equal the challenge.
/// * `"plain"` (also an empty method, the RFC's default when
///   `code_challenge_method` was omitted): verifier and challenge must be
///   equal and non-empty. The character set and length are not enforced,
///   because some clients send plain verifiers of their own making.
/// * Any other method: `false`.
///
/// Comparisons are constant time.
pub fn verify_pkce(method: &str, challenge: &str, verifier: &str) -> bool {
    if challenge.is_empty() || verifier.is_empty() {
        return false;
    }
    match method {
        "S256" => {
            is_valid_verifier(verifier) && constant_time_eq(s256_challenge(verifier), challenge)
        }
        "plain" | "" => constant_time_eq(verifier, challenge),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636 Appendix B.
    const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn rfc7636_appendix_b_vector() {
        assert_eq!(s256_challenge(RFC_VERIFIER), RFC_CHALLENGE);
        assert!(verify_pkce("S256", RFC_CHALLENGE, RFC_VERIFIER));
    }

    #[test]
    fn independently_computed_vector() {
        // Cross-checked with Python's hashlib/base64.
        let verifier = "dBjftJeZ4CVP-mJ0kZMi_XS9b6VwsnrWEclP3Qo6HvE";
        let challenge = "76XIMuzZ1HjUSg84OPPxT9zMIS8uTZFl02PUNMLaHrY";
        assert_eq!(s256_challenge(verifier), challenge);
        assert!(verify_pkce("S256", challenge, verifier));
        assert!(!verify_pkce("S256", RFC_CHALLENGE, verifier));
    }

    #[test]
    fn s256_rejects_mismatch() {
        assert!(!verify_pkce("S256", RFC_CHALLENGE, &RFC_VERIFIER.replace('d', "e")));
        assert!(!verify_pkce("S256", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN", RFC_VERIFIER));
        // Sending the challenge itself as a verifier must not work.
        assert!(!verify_pkce("S256", RFC_CHALLENGE, RFC_CHALLENGE));
    }

    #[test]
    fn s256_enforces_verifier_syntax() {
        let short = "a".repeat(42);
        assert!(!verify_pkce("S256", &s256_challenge(&short), &short));
        let min = "a".repeat(43);
        assert!(verify_pkce("S256", &s256_challenge(&min), &min));
        let max = "~".repeat(128);
        assert!(verify_pkce("S256", &s256_challenge(&max), &max));
        let long = "a".repeat(129);
        assert!(!verify_pkce("S256", &s256_challenge(&long), &long));
        let bad_chars = format!("{}+/", "a".repeat(43));
        assert!(!verify_pkce("S256", &s256_challenge(&bad_chars), &bad_chars));
    }

    #[test]
    fn plain_is_equality_and_permissive() {
        assert!(verify_pkce("plain", "abc", "abc"));
        assert!(verify_pkce("plain", "x y+z/=", "x y+z/="));
        assert!(verify_pkce("", "abc", "abc"));
        assert!(!verify_pkce("plain", "abc", "abd"));
        assert!(!verify_pkce("plain", "", ""));
        assert!(!verify_pkce("plain", "abc", ""));
    }

    #[test]
    fn unknown_method_rejected() {
        assert!(!verify_pkce("s256", RFC_CHALLENGE, RFC_VERIFIER));
        assert!(!verify_pkce("S512", RFC_CHALLENGE, RFC_VERIFIER));
    }
}
