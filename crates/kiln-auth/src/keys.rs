//! RSA signing keys for RS256 JWTs: generation, PKCS#8 persistence, JWKS.
//!
//! Keys are generated with aws-lc-rs and exported as unencrypted PKCS#8
//! (DER or PEM) so the caller can persist them. The key id (`kid`) is the
//! RFC 7638 JWK thumbprint (SHA-256, base64url), so it is stable across
//! restarts and identical for the same key material everywhere.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde_json::{Value, json};

use crate::error::{AuthError, Result};

/// Smallest modulus accepted when loading a key, in bits.
const MIN_MODULUS_BITS: usize = 2048;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// An RSA private key used to sign RS256 tokens, together with the derived
/// public material (JWK, `kid`) and the `jsonwebtoken` keys.
///
/// `Debug` never prints private material.
#[derive(Clone)]
pub struct SigningKey {
    pkcs8: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl SigningKey {
    /// Generates a fresh RSA-2048 key.
    pub fn generate() -> Result<SigningKey> {
        let pair = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| AuthError::Crypto("RSA key generation failed".into()))?;
        let der = pair.as_der().map_err(|_| AuthError::Crypto("PKCS#8 export failed".into()))?;
        Self::from_pkcs8_der(der.as_ref())
    }

    /// Loads a key from unencrypted PKCS#8 DER (`PrivateKeyInfo`), as
    /// produced by [`SigningKey::to_pkcs8_der`] or
    /// `openssl genpkey -algorithm RSA -outform DER`.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey> {
        let pair = KeyPair::from_pkcs8(der)
            .map_err(|e| AuthError::InvalidKey(format!("not an RSA PKCS#8 key: {e}")))?;
        if pair.public_modulus_len() * 8 < MIN_MODULUS_BITS {
            return Err(AuthError::InvalidKey(format!(
                "RSA modulus of {} bits is below the {MIN_MODULUS_BITS}-bit minimum",
                pair.public_modulus_len() * 8
            )));
        }
        // jsonwebtoken's RSA signer wants the inner PKCS#1 `RSAPrivateKey`.
        let pkcs1 = pkcs8_inner_rsa_key(der)
            .ok_or_else(|| AuthError::InvalidKey("malformed PKCS#8 structure".into()))?;
        let public = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let (n, e) = (public.n, public.e);
        let kid = rfc7638_thumbprint(&n, &e);
        let encoding = EncodingKey::from_rsa_der(pkcs1);
        let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
        Ok(SigningKey { pkcs8: der.to_vec(), n, e, kid, encoding, decoding })
    }

    /// Loads a key from a PEM `-----BEGIN PRIVATE KEY-----` block (PKCS#8).
    pub fn from_pkcs8_pem(pem: &str) -> Result<SigningKey> {
        let start = pem
            .find(PEM_BEGIN)
            .ok_or_else(|| AuthError::InvalidKey("missing BEGIN PRIVATE KEY line".into()))?
            + PEM_BEGIN.len();
        let end = pem[start..]
            .find(PEM_END)
            .ok_or_else(|| AuthError::InvalidKey("missing END PRIVATE KEY line".into()))?
            + start;
        let body: String = pem[start..end].chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|e| AuthError::InvalidKey(format!("bad PEM base64: {e}")))?;
        Self::from_pkcs8_der(&der)
    }

    /// The private key as unencrypted PKCS#8 DER. Treat as a secret.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.pkcs8.clone()
    }

    /// The private key as a PKCS#8 PEM document. Treat as a secret.
    pub fn to_pkcs8_pem(&self) -> String {
        let b64 = STANDARD.encode(&self.pkcs8);
        let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
        out.push_str(PEM_BEGIN);
        out.push('\n');
        for chunk in b64.as_bytes().chunks(64) {
            // base64 output is ASCII, so every chunk is valid UTF-8.
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(PEM_END);
        out.push('\n');
        out
    }

    /// The key id: RFC 7638 SHA-256 thumbprint of the public JWK, base64url.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK for this key (`kty`, `alg`, `use`, `kid`, `n`, `e`).
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&self.n),
            "e": URL_SAFE_NO_PAD.encode(&self.e),
        })
    }

    /// A JWK Set containing only this key, ready to serve at
    /// `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk()] })
    }

    /// `jsonwebtoken` key for signing with RS256.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// `jsonwebtoken` key for verifying RS256 signatures made by this key.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("bits", &(self.n.len() * 8))
            .finish_non_exhaustive()
    }
}

/// Builds the JWS key id of RFC 7638 §3 for an RSA key: SHA-256 over the
/// canonical JSON `{"e":..,"kty":"RSA","n":..}` (members in lexicographic
/// order, no whitespace), base64url without padding.
fn rfc7638_thumbprint(n: &[u8], e: &[u8]) -> String {
    let canonical = format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(e),
        URL_SAFE_NO_PAD.encode(n)
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Reads one DER TLV at the start of `input`, returning
/// `(tag, contents, rest)`. Only definite lengths of up to four bytes.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..count] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[count..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// DER encoding of the rsaEncryption OID 1.2.840.113549.1.1.1.
const RSA_ENCRYPTION_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Extracts the PKCS#1 `RSAPrivateKey` from a PKCS#8 `PrivateKeyInfo`
/// (RFC 5208): `SEQUENCE { INTEGER version, AlgorithmIdentifier, OCTET STRING }`.
fn pkcs8_inner_rsa_key(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const OCTET_STRING: u8 = 0x04;
    const OID: u8 = 0x06;

    let (tag, info, _) = der_tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _version, rest) = der_tlv(info)?;
    if tag != INTEGER {
        return None;
    }
    let (tag, alg_id, rest) = der_tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, _) = der_tlv(alg_id)?;
    if tag != OID || oid != RSA_ENCRYPTION_OID {
        return None;
    }
    let (tag, private_key, _) = der_tlv(rest)?;
    if tag != OCTET_STRING {
        return None;
    }
    Some(private_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test_key;

    #[test]
    fn generated_key_is_rsa_2048_with_f4_exponent() {
        let key = test_key();
        assert_eq!(key.n.len(), 256);
        assert_eq!(key.e, vec![0x01, 0x00, 0x01]);
    }

    #[test]
    fn der_round_trip_preserves_kid() {
        let key = test_key();
        let again = SigningKey::from_pkcs8_der(&key.to_pkcs8_der()).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(again.to_pkcs8_der(), key.to_pkcs8_der());
    }

    #[test]
    fn pem_round_trip_preserves_kid() {
        let key = test_key();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let again = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(again.kid(), key.kid());
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(matches!(SigningKey::from_pkcs8_der(b"nope"), Err(AuthError::InvalidKey(_))));
        assert!(SigningKey::from_pkcs8_pem("hello").is_err());
        let mut der = test_key().to_pkcs8_der();
        der.truncate(der.len() / 2);
        assert!(SigningKey::from_pkcs8_der(&der).is_err());
    }

    #[test]
    fn debug_does_not_leak_private_key() {
        let text = format!("{:?}", test_key());
        assert!(text.contains(test_key().kid()));
        assert!(text.len() < 200, "{text}");
    }

    #[test]
    fn kid_matches_rfc7638_example() {
        // RFC 7638 §3.1 example key and its published thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let n = URL_SAFE_NO_PAD.decode(n).unwrap();
        let e = URL_SAFE_NO_PAD.decode("AQAB").unwrap();
        assert_eq!(rfc7638_thumbprint(&n, &e), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn kid_matches_jsonwebtoken_thumbprint() {
        let key = test_key();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk()).unwrap();
        let thumb = jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap();
        assert_eq!(thumb, key.kid());
    }

    #[test]
    fn jwks_shape() {
        let jwks = test_key().jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let k = &keys[0];
        assert_eq!(k["kty"], "RSA");
        assert_eq!(k["alg"], "RS256");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["e"], "AQAB");
        assert_eq!(k["kid"], test_key().kid());
        assert_eq!(URL_SAFE_NO_PAD.decode(k["n"].as_str().unwrap()).unwrap().len(), 256);
    }
}
