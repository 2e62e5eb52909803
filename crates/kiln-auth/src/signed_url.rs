//! Short-lived signed URLs: an HMAC-SHA256 over what a URL grants and until when, so that a
//! download link works without a token (Bulk Data's `requiresAccessToken: false`).

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The signature of `message` under `key`, base64url without padding.
pub fn sign(key: &[u8], message: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    URL_SAFE_NO_PAD.encode(hmac::sign(&key, message.as_bytes()).as_ref())
}

/// Whether `signature` is `message`'s under `key` (compared in constant time).
pub fn verify(key: &[u8], message: &str, signature: &str) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(signature) else { return false };
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&key, message.as_bytes(), &tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_anything_changed_does_not() {
        let sig = sign(b"key", "p\njob\n0\n1700000000");
        assert!(verify(b"key", "p\njob\n0\n1700000000", &sig));
        assert!(!verify(b"key", "p\njob\n1\n1700000000", &sig));
        assert!(!verify(b"other", "p\njob\n0\n1700000000", &sig));
        assert!(!verify(b"key", "p\njob\n0\n1700000000", "not base64!"));
        assert!(!verify(b"key", "p\njob\n0\n1700000000", &sig[1..]));
    }
}
