//! Client assertions: the JWTs a client signs with its own private key to authenticate at the
//! token endpoint (RFC 7523 §2.2, `private_key_jwt`), as SMART App Launch's asymmetric client
//! authentication and SMART Backend Services require.
//!
//! [`verify_assertion`] checks one against the client's JWK Set:
//!
//! - header `alg` is `RS384` or `ES384` (`none`, `HS*` and everything else are refused before
//!   any key is looked at), and `kid` is present;
//! - the candidate keys are those of the set with that `kid` whose `kty` fits the algorithm
//!   (`RSA`, or `EC` on `P-384`), whose `alg` (if given) is the header's, whose `use` (if given)
//!   is `sig` and whose `key_ops` (if given) include `verify`; RSA keys need 2048 bits. The
//!   signature must verify with one of them (SMART's "candidate set" rule);
//! - claims: `iss` and `sub` are both the client id; `aud` is the token endpoint URL (a string,
//!   or an array containing it); `exp` is present, not past and at most
//!   [`MAX_ASSERTION_LIFETIME_SECS`] ahead; `jti` is present; `iat` and `nbf`, if present, are
//!   not in the future. Clocks may differ by [`ASSERTION_LEEWAY_SECS`] each way.
//!
//! Remembering `jti`s (replay) is the caller's job: it needs state, and this module has none.
//! [`peek`] reads the header and `iss`/`sub` without verifying anything, so the caller can find
//! the client (and its keys) first.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use thiserror::Error;

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How far ahead of now an assertion's `exp` may lie (SMART: "no more than five minutes").
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;
/// Tolerated difference between the client's clock and ours, each way.
pub const ASSERTION_LEEWAY_SECS: i64 = 30;
/// Longest assertion accepted, in bytes (a few keys' worth of JWS; real ones are < 2 KiB).
pub const MAX_ASSERTION_LEN: usize = 16 * 1024;
/// Longest `jti` accepted, in bytes (the replay cache keeps them).
pub const MAX_JTI_LEN: usize = 256;
/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Why an assertion was refused. The `Display` text names the rule, for `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AssertionError {
    /// Not a compact JWS, or its header or claims are not JSON objects.
    #[error("malformed client assertion: {0}")]
    Malformed(String),
    /// The header's `alg` is not RS384 or ES384.
    #[error("client assertion algorithm '{0}' is not allowed (use RS384 or ES384)")]
    UnsupportedAlgorithm(String),
    /// The header has no `kid`.
    #[error("client assertion header has no kid")]
    MissingKid,
    /// No key of the client's JWK Set has the header's `kid`.
    #[error("no key with kid '{0}' in the client's JWK Set")]
    UnknownKid(String),
    /// Keys with the `kid` exist, but none fits the algorithm (kty, crv, alg, use, size).
    #[error("the key with kid '{kid}' cannot verify {alg}: {reason}")]
    KeyMismatch { kid: String, alg: String, reason: String },
    /// The client's JWK Set is not `{"keys": [...]}`.
    #[error("invalid client JWK Set: {0}")]
    InvalidJwks(String),
    /// The signature does not verify with any candidate key.
    #[error("client assertion signature is invalid")]
    BadSignature,
    /// `iss` is missing or not the client id.
    #[error("client assertion iss must be the client id")]
    InvalidIssuer,
    /// `sub` is missing or not the client id.
    #[error("client assertion sub must be the client id")]
    InvalidSubject,
    /// `aud` is missing or does not name the token endpoint.
    #[error("client assertion aud must be the token endpoint URL")]
    InvalidAudience,
    /// `exp` is missing or not a number.
    #[error("client assertion has no exp")]
    MissingExp,
    /// `exp` has passed.
    #[error("client assertion expired")]
    Expired,
    /// `exp` lies more than five minutes ahead.
    #[error("client assertion exp is more than five minutes ahead")]
    LifetimeTooLong,
    /// `nbf` or `iat` lies in the future.
    #[error("client assertion is not valid yet (nbf or iat in the future)")]
    NotYetValid,
    /// `jti` is missing, empty, not a string or too long.
    #[error("client assertion has no usable jti")]
    MissingJti,
}

/// What [`peek`] reads without verifying anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedAssertion {
    /// Header `alg`, as written.
    pub alg: String,
    /// Header `kid`.
    pub kid: Option<String>,
    /// Header `jku` (a JWK Set URL the client points at).
    pub jku: Option<String>,
    /// Claim `iss`.
    pub iss: Option<String>,
    /// Claim `sub`.
    pub sub: Option<String>,
}

/// A verified assertion's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// `iss` = `sub`: the client id.
    pub client_id: String,
    /// `jti`, for the caller's replay cache.
    pub jti: String,
    /// `exp`, seconds since the Unix epoch: how long to remember `jti`.
    pub exp: i64,
    /// Header `kid` of the key that verified it.
    pub kid: String,
    /// Header `alg` (`RS384` or `ES384`).
    pub alg: String,
}

/// Splits a compact JWS and decodes its header and claims as JSON objects.
fn split(assertion: &str) -> Result<(Value, Value), AssertionError> {
    let malformed = |m: &str| AssertionError::Malformed(m.to_owned());
    if assertion.len() > MAX_ASSERTION_LEN {
        return Err(malformed("too long"));
    }
    let mut parts = assertion.split('.');
    let (Some(header), Some(claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not a compact JWS (three base64url parts)"));
    };
    let decode = |part: &str, what: &str| -> Result<Value, AssertionError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part.as_bytes())
            .map_err(|_| AssertionError::Malformed(format!("{what} is not base64url")))?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value @ Value::Object(_)) => Ok(value),
            _ => Err(AssertionError::Malformed(format!("{what} is not a JSON object"))),
        }
    };
    Ok((decode(header, "header")?, decode(claims, "payload")?))
}

fn string_of(value: &Value, name: &str) -> Option<String> {
    value.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// Reads the header and `iss`/`sub` of an assertion without checking anything else, so the
/// caller can find the client it claims to come from. Nothing read here is trusted.
pub fn peek(assertion: &str) -> Result<UnverifiedAssertion, AssertionError> {
    let (header, claims) = split(assertion)?;
    let Some(alg) = string_of(&header, "alg") else {
        return Err(AssertionError::Malformed("header has no alg".into()));
    };
    Ok(UnverifiedAssertion {
        alg,
        kid: string_of(&header, "kid"),
        jku: string_of(&header, "jku"),
        iss: string_of(&claims, "iss"),
        sub: string_of(&claims, "sub"),
    })
}

/// The algorithms a client may sign with.
fn allowed_algorithm(alg: &str) -> Option<Algorithm> {
    match alg {
        "RS384" => Some(Algorithm::RS384),
        "ES384" => Some(Algorithm::ES384),
        _ => None,
    }
}

/// Whether `key` may verify `alg` (`Err` says why not), and its `jsonwebtoken` key if so.
fn candidate_key(key: &Value, alg: &str) -> Result<DecodingKey, String> {
    let kty = key.get("kty").and_then(Value::as_str).unwrap_or_default();
    match alg {
        "RS384" if kty != "RSA" => return Err(format!("kty is '{kty}', not RSA")),
        "ES384" if kty != "EC" => return Err(format!("kty is '{kty}', not EC")),
        "ES384" => {
            let crv = key.get("crv").and_then(Value::as_str).unwrap_or_default();
            if crv != "P-384" {
                return Err(format!("crv is '{crv}', not P-384"));
            }
        }
        _ => {}
    }
    if let Some(key_alg) = key.get("alg")
        && key_alg.as_str() != Some(alg)
    {
        return Err(format!("the key's alg is {key_alg}"));
    }
    if let Some(usage) = key.get("use")
        && usage.as_str() != Some("sig")
    {
        return Err(format!("the key's use is {usage}, not \"sig\""));
    }
    if let Some(ops) = key.get("key_ops") {
        let verifies = ops.as_array().is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verifies {
            return Err("the key's key_ops do not include verify".into());
        }
    }
    if kty == "RSA" {
        let n = key.get("n").and_then(Value::as_str).unwrap_or_default();
        let n = URL_SAFE_NO_PAD.decode(n.as_bytes()).map_err(|_| "n is not base64url")?;
        let significant = n.iter().skip_while(|b| **b == 0).count();
        if significant * 8 < MIN_RSA_BITS {
            return Err(format!("RSA keys need at least {MIN_RSA_BITS} bits"));
        }
    }
    let jwk: Jwk = serde_json::from_value(key.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))
}

/// A NumericDate claim: an integer, or a number with a fraction (cut to whole seconds).
fn numeric_date(claims: &Value, name: &str) -> Result<Option<i64>, AssertionError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            if let Some(n) = value.as_i64() {
                return Ok(Some(n));
            }
            match value.as_f64() {
                // In range: a float this size truncates to a valid i64.
                Some(f) if f.is_finite() && f.abs() < 9.0e15 => Ok(Some(f.trunc() as i64)),
                _ => Err(AssertionError::Malformed(format!("{name} is not a NumericDate"))),
            }
        }
    }
}

/// Verifies a client assertion for `client_id` against `jwks`, with `audience` (the token
/// endpoint URL) as the required `aud`, at the current time.
pub fn verify_assertion(
    assertion: &str,
    jwks: &Value,
    client_id: &str,
    audience: &str,
) -> Result<VerifiedAssertion, AssertionError> {
    verify_assertion_at(assertion, jwks, client_id, audience, crate::tokens::now_secs())
}

/// Like [`verify_assertion`] at `now` (seconds since the Unix epoch).
pub fn verify_assertion_at(
    assertion: &str,
    jwks: &Value,
    client_id: &str,
    audience: &str,
    now: i64,
) -> Result<VerifiedAssertion, AssertionError> {
    let (header, _) = split(assertion)?;
    let alg_name = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        Some(other) => return Err(AssertionError::UnsupportedAlgorithm(other.to_string())),
        None => return Err(AssertionError::Malformed("header has no alg".into())),
    };
    let Some(alg) = allowed_algorithm(&alg_name) else {
        return Err(AssertionError::UnsupportedAlgorithm(alg_name));
    };
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
        _ => return Err(AssertionError::MissingKid),
    };
    let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
        return Err(AssertionError::InvalidJwks("no \"keys\" array".into()));
    };
    let same_kid: Vec<&Value> =
        keys.iter().filter(|k| k.get("kid").and_then(Value::as_str) == Some(&kid)).collect();
    if same_kid.is_empty() {
        return Err(AssertionError::UnknownKid(kid));
    }
    let mut candidates = Vec::new();
    let mut refusal = String::new();
    for key in same_kid {
        match candidate_key(key, &alg_name) {
            Ok(decoding) => candidates.push(decoding),
            Err(reason) => refusal = reason,
        }
    }
    if candidates.is_empty() {
        return Err(AssertionError::KeyMismatch { kid, alg: alg_name, reason: refusal });
    }

    let mut validation = Validation::new(alg);
    // Every claim is checked below, with our own clock and precise errors.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = candidates
        .iter()
        .find_map(|key| jsonwebtoken::decode::<Value>(assertion, key, &validation).ok())
        .map(|data| data.claims)
        .ok_or(AssertionError::BadSignature)?;

    if claims.get("iss").and_then(Value::as_str) != Some(client_id) {
        return Err(AssertionError::InvalidIssuer);
    }
    if claims.get("sub").and_then(Value::as_str) != Some(client_id) {
        return Err(AssertionError::InvalidSubject);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(AssertionError::InvalidAudience);
    }
    let exp = numeric_date(&claims, "exp")?.ok_or(AssertionError::MissingExp)?;
    if now > exp.saturating_add(ASSERTION_LEEWAY_SECS) {
        return Err(AssertionError::Expired);
    }
    if exp > now.saturating_add(MAX_ASSERTION_LIFETIME_SECS + ASSERTION_LEEWAY_SECS) {
        return Err(AssertionError::LifetimeTooLong);
    }
    for name in ["nbf", "iat"] {
        if numeric_date(&claims, name)?
            .is_some_and(|t| t > now.saturating_add(ASSERTION_LEEWAY_SECS))
        {
            return Err(AssertionError::NotYetValid);
        }
    }
    let jti = match claims.get("jti") {
        Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= MAX_JTI_LEN => jti.clone(),
        _ => return Err(AssertionError::MissingJti),
    };
    Ok(VerifiedAssertion { client_id: client_id.to_owned(), jti, exp, kid, alg: alg_name })
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::keys::SigningKey;
    use crate::test_support::test_key;

    const CLIENT: &str = "client-1";
    const AUD: &str = "https://kiln.example.org/oauth2/token";
    const NOW: i64 = 1_750_000_000;

    /// A P-384 key: `(private PKCS#8, public JWK)`.
    fn ec_key() -> &'static (Vec<u8>, Value) {
        static KEY: OnceLock<(Vec<u8>, Value)> = OnceLock::new();
        KEY.get_or_init(|| {
            let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
            let pkcs8 = pair.to_pkcs8v1().unwrap().as_ref().to_vec();
            let point = pair.public_key().as_ref();
            assert_eq!(point.len(), 97, "uncompressed P-384 point");
            let jwk = json!({
                "kty": "EC", "crv": "P-384", "alg": "ES384", "use": "sig", "kid": "ec-1",
                "x": URL_SAFE_NO_PAD.encode(&point[1..49]),
                "y": URL_SAFE_NO_PAD.encode(&point[49..]),
            });
            (pkcs8, jwk)
        })
    }

    fn other_rsa_key() -> &'static SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate().unwrap())
    }

    /// The public JWK of an RSA key, as a client would publish it for RS384.
    fn rsa_jwk(key: &SigningKey, kid: &str) -> Value {
        let mut jwk = key.public_jwk();
        jwk["alg"] = json!("RS384");
        jwk["kid"] = json!(kid);
        jwk
    }

    fn jwks() -> Value {
        json!({"keys": [rsa_jwk(test_key(), "rsa-1"), ec_key().1.clone()]})
    }

    fn claims() -> Value {
        json!({"iss": CLIENT, "sub": CLIENT, "aud": AUD, "exp": NOW + 240, "iat": NOW,
               "jti": "jti-1"})
    }

    fn sign_rsa(claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::RS384);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, test_key().encoding_key()).unwrap()
    }

    fn sign_ec(claims: &Value, kid: &str) -> String {
        let mut header = Header::new(Algorithm::ES384);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&ec_key().0)).unwrap()
    }

    /// A JWS with a hand-written header and claims, and `signature` as its third part.
    fn raw(header: &Value, claims: &Value, signature: &str) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!("{}.{}.{signature}", enc(header), enc(claims))
    }

    fn verify(assertion: &str) -> Result<VerifiedAssertion, AssertionError> {
        verify_assertion_at(assertion, &jwks(), CLIENT, AUD, NOW)
    }

    #[test]
    fn rs384_and_es384_verify() {
        let ok = verify(&sign_rsa(&claims(), Some("rsa-1"))).unwrap();
        assert_eq!(ok.client_id, CLIENT);
        assert_eq!(ok.jti, "jti-1");
        assert_eq!(ok.exp, NOW + 240);
        assert_eq!((ok.kid.as_str(), ok.alg.as_str()), ("rsa-1", "RS384"));
        let ok = verify(&sign_ec(&claims(), "ec-1")).unwrap();
        assert_eq!((ok.kid.as_str(), ok.alg.as_str()), ("ec-1", "ES384"));
        // A key without alg, use or key_ops fits too; so does an audience array.
        let mut bare = rsa_jwk(test_key(), "rsa-1");
        for field in ["alg", "use"] {
            bare.as_object_mut().unwrap().remove(field);
        }
        let mut c = claims();
        c["aud"] = json!(["https://elsewhere.example/", AUD]);
        let set = json!({"keys": [bare]});
        assert!(verify_assertion_at(&sign_rsa(&c, Some("rsa-1")), &set, CLIENT, AUD, NOW).is_ok());
    }

    #[test]
    fn peek_reads_without_verifying() {
        let token = sign_rsa(&claims(), Some("rsa-1"));
        let seen = peek(&token).unwrap();
        assert_eq!(seen.alg, "RS384");
        assert_eq!(seen.kid.as_deref(), Some("rsa-1"));
        assert_eq!(seen.iss.as_deref(), Some(CLIENT));
        assert_eq!(seen.sub.as_deref(), Some(CLIENT));
        assert_eq!(seen.jku, None);
        let forged = raw(&json!({"alg": "none", "jku": "https://x/"}), &json!({"iss": "a"}), "");
        let seen = peek(&forged).unwrap();
        assert_eq!((seen.alg.as_str(), seen.jku.as_deref()), ("none", Some("https://x/")));
        assert!(matches!(peek("a.b"), Err(AssertionError::Malformed(_))));
        assert!(matches!(
            peek(&raw(&json!({}), &json!({}), "")),
            Err(AssertionError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_assertions_are_refused() {
        for bad in ["", "abc", "a.b", "a.b.c.d", "!!.??.xx", &"a".repeat(MAX_ASSERTION_LEN + 1)] {
            assert!(matches!(verify(bad), Err(AssertionError::Malformed(_))), "{bad:.20}");
        }
        let not_object =
            format!("{}.{}.x", URL_SAFE_NO_PAD.encode("[1]"), URL_SAFE_NO_PAD.encode("{}"));
        assert!(matches!(verify(&not_object), Err(AssertionError::Malformed(_))));
    }

    #[test]
    fn only_rs384_and_es384_are_allowed() {
        // `none`, HMAC (a classic: the public key as an HMAC secret), and other asymmetric ones.
        for alg in ["none", "HS256", "HS384", "RS256", "RS512", "PS384", "ES256", "EdDSA", ""] {
            let token = raw(&json!({"alg": alg, "kid": "rsa-1"}), &claims(), "");
            assert_eq!(verify(&token), Err(AssertionError::UnsupportedAlgorithm(alg.into())));
        }
        let token = raw(&json!({"alg": 384, "kid": "rsa-1"}), &claims(), "");
        assert!(matches!(verify(&token), Err(AssertionError::UnsupportedAlgorithm(_))));
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let rs256 = jsonwebtoken::encode(&header, &claims(), test_key().encoding_key()).unwrap();
        assert_eq!(verify(&rs256), Err(AssertionError::UnsupportedAlgorithm("RS256".into())));
    }

    #[test]
    fn kid_is_required_and_selects_the_key() {
        assert_eq!(verify(&sign_rsa(&claims(), None)), Err(AssertionError::MissingKid));
        assert_eq!(
            verify(&sign_rsa(&claims(), Some("rsa-2"))),
            Err(AssertionError::UnknownKid("rsa-2".into()))
        );
        // The kid names the EC key, but the header says RS384.
        assert!(matches!(
            verify(&sign_rsa(&claims(), Some("ec-1"))),
            Err(AssertionError::KeyMismatch { .. })
        ));
        assert!(matches!(
            verify(&sign_ec(&claims(), "rsa-1")),
            Err(AssertionError::KeyMismatch { .. })
        ));
        // Signed by another key under a known kid.
        let mut header = Header::new(Algorithm::RS384);
        header.kid = Some("rsa-1".into());
        let forged =
            jsonwebtoken::encode(&header, &claims(), other_rsa_key().encoding_key()).unwrap();
        assert_eq!(verify(&forged), Err(AssertionError::BadSignature));
        // A tampered payload.
        let token = sign_rsa(&claims(), Some("rsa-1"));
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims();
        c["sub"] = json!("someone-else");
        let tampered =
            format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(c.to_string()), parts[2]);
        assert_eq!(verify(&tampered), Err(AssertionError::BadSignature));
    }

    #[test]
    fn candidate_keys_share_the_kid_and_the_first_that_verifies_wins() {
        // Two keys under one kid (a rotation): the set's first does not verify, the second does.
        let set = json!({"keys": [rsa_jwk(other_rsa_key(), "k"), rsa_jwk(test_key(), "k")]});
        let token = sign_rsa(&claims(), Some("k"));
        assert!(verify_assertion_at(&token, &set, CLIENT, AUD, NOW).is_ok());
        // Keys of other types under the kid are skipped.
        let mut ec = ec_key().1.clone();
        ec["kid"] = json!("k");
        let set = json!({"keys": [ec, rsa_jwk(test_key(), "k")]});
        assert!(verify_assertion_at(&token, &set, CLIENT, AUD, NOW).is_ok());
    }

    #[test]
    fn unfit_keys_are_refused() {
        let token = sign_rsa(&claims(), Some("rsa-1"));
        let check = |edit: &dyn Fn(&mut Value)| {
            let mut key = rsa_jwk(test_key(), "rsa-1");
            edit(&mut key);
            verify_assertion_at(&token, &json!({"keys": [key]}), CLIENT, AUD, NOW)
        };
        let mismatch = |r: Result<VerifiedAssertion, AssertionError>| {
            matches!(r, Err(AssertionError::KeyMismatch { .. }))
        };
        assert!(check(&|_| {}).is_ok());
        assert!(mismatch(check(&|k| k["alg"] = json!("RS256"))));
        assert!(mismatch(check(&|k| k["kty"] = json!("EC"))));
        assert!(mismatch(check(&|k| k["use"] = json!("enc"))));
        assert!(mismatch(check(&|k| k["key_ops"] = json!(["encrypt"]))));
        assert!(check(&|k| k["key_ops"] = json!(["verify"])).is_ok());
        assert!(mismatch(check(&|k| k["n"] = json!("!!"))));
        // A 1024-bit modulus is too weak.
        assert!(mismatch(check(&|k| k["n"] = json!(URL_SAFE_NO_PAD.encode([0xc5u8; 128])))));
        // An EC key must be on P-384.
        let es = sign_ec(&claims(), "ec-1");
        let mut p256 = ec_key().1.clone();
        p256["crv"] = json!("P-256");
        let r = verify_assertion_at(&es, &json!({"keys": [p256]}), CLIENT, AUD, NOW);
        assert!(mismatch(r));
    }

    #[test]
    fn the_jwks_must_have_keys() {
        let token = sign_rsa(&claims(), Some("rsa-1"));
        for set in [json!({}), json!([]), json!({"keys": {}}), json!(null)] {
            let r = verify_assertion_at(&token, &set, CLIENT, AUD, NOW);
            assert!(matches!(r, Err(AssertionError::InvalidJwks(_))), "{set}");
        }
    }

    /// Signs `claims()` edited by `edit` and verifies it.
    fn with_claims(edit: impl Fn(&mut Value)) -> Result<VerifiedAssertion, AssertionError> {
        let mut c = claims();
        edit(&mut c);
        verify(&sign_rsa(&c, Some("rsa-1")))
    }

    fn remove(c: &mut Value, name: &str) {
        c.as_object_mut().unwrap().remove(name);
    }

    #[test]
    fn iss_and_sub_are_the_client() {
        assert_eq!(with_claims(|c| c["iss"] = json!("other")), Err(AssertionError::InvalidIssuer));
        assert_eq!(with_claims(|c| remove(c, "iss")), Err(AssertionError::InvalidIssuer));
        assert_eq!(with_claims(|c| c["sub"] = json!("other")), Err(AssertionError::InvalidSubject));
        assert_eq!(with_claims(|c| remove(c, "sub")), Err(AssertionError::InvalidSubject));
        // Both right but for another client than the one asked about.
        let token = sign_rsa(&claims(), Some("rsa-1"));
        let r = verify_assertion_at(&token, &jwks(), "client-2", AUD, NOW);
        assert_eq!(r, Err(AssertionError::InvalidIssuer));
    }

    #[test]
    fn aud_is_the_token_endpoint() {
        for aud in [json!("https://kiln.example.org/"), json!([]), json!(["x"]), json!(7)] {
            assert_eq!(
                with_claims(|c| c["aud"] = aud.clone()),
                Err(AssertionError::InvalidAudience),
                "{aud}"
            );
        }
        assert_eq!(with_claims(|c| remove(c, "aud")), Err(AssertionError::InvalidAudience));
    }

    #[test]
    fn exp_is_required_near_and_not_past() {
        assert_eq!(with_claims(|c| remove(c, "exp")), Err(AssertionError::MissingExp));
        assert!(matches!(
            with_claims(|c| c["exp"] = json!("soon")),
            Err(AssertionError::Malformed(_))
        ));
        assert_eq!(with_claims(|c| c["exp"] = json!(NOW - 31)), Err(AssertionError::Expired));
        // Within the leeway.
        assert!(with_claims(|c| c["exp"] = json!(NOW - 30)).is_ok());
        // Five minutes ahead (plus the leeway) is the limit.
        assert!(with_claims(|c| c["exp"] = json!(NOW + 330)).is_ok());
        assert_eq!(
            with_claims(|c| c["exp"] = json!(NOW + 331)),
            Err(AssertionError::LifetimeTooLong)
        );
        assert_eq!(
            with_claims(|c| c["exp"] = json!(i64::MAX)),
            Err(AssertionError::LifetimeTooLong)
        );
        // A fractional NumericDate is fine.
        assert_eq!(with_claims(|c| c["exp"] = json!(NOW as f64 + 60.5)).unwrap().exp, NOW + 60);
    }

    #[test]
    fn nbf_and_iat_are_not_in_the_future() {
        assert_eq!(with_claims(|c| c["iat"] = json!(NOW + 31)), Err(AssertionError::NotYetValid));
        assert_eq!(with_claims(|c| c["nbf"] = json!(NOW + 31)), Err(AssertionError::NotYetValid));
        assert!(with_claims(|c| c["nbf"] = json!(NOW + 30)).is_ok());
        assert!(with_claims(|c| remove(c, "iat")).is_ok());
        assert!(matches!(
            with_claims(|c| c["iat"] = json!([1])),
            Err(AssertionError::Malformed(_))
        ));
    }

    #[test]
    fn jti_is_required() {
        assert_eq!(with_claims(|c| remove(c, "jti")), Err(AssertionError::MissingJti));
        assert_eq!(with_claims(|c| c["jti"] = json!("")), Err(AssertionError::MissingJti));
        assert_eq!(with_claims(|c| c["jti"] = json!(42)), Err(AssertionError::MissingJti));
        let long = "j".repeat(MAX_JTI_LEN + 1);
        assert_eq!(with_claims(|c| c["jti"] = json!(long)), Err(AssertionError::MissingJti));
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let text = AssertionError::UnknownKid("abc".into()).to_string();
        assert!(text.contains("abc"), "{text}");
        assert!(AssertionError::Expired.to_string().contains("expired"));
    }
}
