//! JWT access and ID tokens (RS256) plus opaque-secret helpers.
//!
//! Access tokens carry the claims Medplum clients read from the payload
//! (`login_id`, `profile`, `scope`, `client_id`, `username`, `exp`, ...) and
//! use the RFC 9068 header type `at+jwt`; ID tokens are plain OIDC `JWT`s.
//! The differing `typ` (and claim sets) keep one kind of token from being
//! accepted as the other.
//!
//! Time-based claims (`exp`, `iat`) and the issuer are checked here rather
//! than by `jsonwebtoken`, so that the clock can be injected (the `_at`
//! methods) and errors map onto [`AuthError`] precisely. `jsonwebtoken`
//! still enforces the RS256-only algorithm list and the signature. Claims
//! are typed `i64` fields, which deserialize correctly with the workspace's
//! `serde_json/arbitrary_precision` (a test decodes tokens with it).
//!
//! Refresh tokens and authorization codes are opaque random strings: hand
//! the [`random_token`] value to the client and store only [`hash_secret`]
//! of it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::error::{AuthError, Result};
use crate::keys::SigningKey;

/// JOSE `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// JOSE `typ` of ID tokens.
pub const ID_TOKEN_TYP: &str = "JWT";
/// Default tolerated clock skew when checking `exp` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Claims of a Kiln access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the server's base URL.
    pub iss: String,
    /// Subject: the id part of `profile` (or the user id).
    pub sub: String,
    /// Id of the `Login` this token belongs to (used for revocation).
    pub login_id: String,
    /// OAuth client the token was issued to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Granted scopes, space separated.
    pub scope: String,
    /// Reference to the acting profile, e.g. `Practitioner/123`.
    pub profile: String,
    /// Id of the project the login is scoped to.
    pub project_id: String,
    /// Login name / email of the user, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// SMART launch patient (a Patient id) whose compartment `patient/` scopes reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
}

/// What the caller supplies to mint an access token; the signer adds
/// `iss`, `exp`, `iat` and `jti`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessClaimsInput {
    /// See [`AccessClaims::sub`].
    pub sub: String,
    /// See [`AccessClaims::login_id`].
    pub login_id: String,
    /// See [`AccessClaims::client_id`].
    pub client_id: Option<String>,
    /// See [`AccessClaims::scope`].
    pub scope: String,
    /// See [`AccessClaims::profile`].
    pub profile: String,
    /// See [`AccessClaims::project_id`].
    pub project_id: String,
    /// See [`AccessClaims::username`].
    pub username: Option<String>,
    /// See [`AccessClaims::patient`].
    pub patient: Option<String>,
}

/// Claims of an OpenID Connect ID token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdClaims {
    /// Issuer: the server's base URL.
    pub iss: String,
    /// Subject identifier.
    pub sub: String,
    /// Audience: the OAuth `client_id`.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: i64,
    /// Time of the end-user authentication, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The `nonce` from the authorization request, echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// SMART `fhirUser`: reference to the user's FHIR resource.
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The user's email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// What the caller supplies to mint an ID token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdTokenInput {
    /// Subject identifier.
    pub sub: String,
    /// The OAuth client, used as `aud`.
    pub client_id: String,
    /// Nonce from the authorization request.
    pub nonce: Option<String>,
    /// SMART `fhirUser` reference, e.g. `Practitioner/123`.
    pub fhir_user: Option<String>,
    /// The user's email.
    pub email: Option<String>,
    /// Time of authentication, seconds since the Unix epoch.
    pub auth_time: Option<i64>,
}

/// Signs and verifies tokens with one [`SigningKey`] for one issuer.
///
/// Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug, Clone)]
pub struct TokenSigner {
    key: SigningKey,
    issuer: String,
    leeway_secs: i64,
}

impl TokenSigner {
    /// Creates a signer; `issuer` becomes the `iss` of every token and is
    /// required on verification (typically the server's public base URL).
    pub fn new(key: SigningKey, issuer: impl Into<String>) -> TokenSigner {
        TokenSigner { key, issuer: issuer.into(), leeway_secs: duration_secs(DEFAULT_LEEWAY) }
    }

    /// Replaces the tolerated clock skew (default [`DEFAULT_LEEWAY`]).
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> TokenSigner {
        self.leeway_secs = duration_secs(leeway);
        self
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The public JWK Set for this signer's key.
    pub fn jwks(&self) -> Value {
        self.key.jwks()
    }

    /// Mints an access token valid for `ttl` from now.
    pub fn issue_access_token(
        &self,
        input: &AccessClaimsInput,
        ttl: Duration,
    ) -> Result<(String, AccessClaims)> {
        self.issue_access_token_at(input, ttl, now_secs())
    }

    /// Like [`TokenSigner::issue_access_token`] with an explicit issue time
    /// (seconds since the Unix epoch).
    pub fn issue_access_token_at(
        &self,
        input: &AccessClaimsInput,
        ttl: Duration,
        now: i64,
    ) -> Result<(String, AccessClaims)> {
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: input.sub.clone(),
            login_id: input.login_id.clone(),
            client_id: input.client_id.clone(),
            scope: input.scope.clone(),
            profile: input.profile.clone(),
            project_id: input.project_id.clone(),
            username: input.username.clone(),
            patient: input.patient.clone(),
            exp: now.saturating_add(duration_secs(ttl)),
            iat: now,
            jti: random_token(16),
        };
        let token = self.sign(ACCESS_TOKEN_TYP, &claims)?;
        Ok((token, claims))
    }

    /// Verifies an access token: RS256 signature by this key, `typ`
    /// `at+jwt`, issuer, `exp` and `iat` (with leeway).
    pub fn verify_access_token(&self, token: &str) -> Result<AccessClaims> {
        self.verify_access_token_at(token, now_secs())
    }

    /// Like [`TokenSigner::verify_access_token`] at an explicit time
    /// (seconds since the Unix epoch).
    pub fn verify_access_token_at(&self, token: &str, now: i64) -> Result<AccessClaims> {
        let claims: AccessClaims = self.decode_verified(token, ACCESS_TOKEN_TYP)?;
        self.check_standard(&claims.iss, claims.exp, claims.iat, now)?;
        Ok(claims)
    }

    /// Mints an OIDC ID token valid for `ttl` from now.
    pub fn issue_id_token(
        &self,
        input: &IdTokenInput,
        ttl: Duration,
    ) -> Result<(String, IdClaims)> {
        self.issue_id_token_at(input, ttl, now_secs())
    }

    /// Like [`TokenSigner::issue_id_token`] with an explicit issue time.
    pub fn issue_id_token_at(
        &self,
        input: &IdTokenInput,
        ttl: Duration,
        now: i64,
    ) -> Result<(String, IdClaims)> {
        let claims = IdClaims {
            iss: self.issuer.clone(),
            sub: input.sub.clone(),
            aud: input.client_id.clone(),
            exp: now.saturating_add(duration_secs(ttl)),
            iat: now,
            auth_time: input.auth_time,
            nonce: input.nonce.clone(),
            fhir_user: input.fhir_user.clone(),
            email: input.email.clone(),
        };
        let token = self.sign(ID_TOKEN_TYP, &claims)?;
        Ok((token, claims))
    }

    /// Verifies an ID token issued by this signer for `audience`.
    pub fn verify_id_token(&self, token: &str, audience: &str) -> Result<IdClaims> {
        self.verify_id_token_at(token, audience, now_secs())
    }

    /// Like [`TokenSigner::verify_id_token`] at an explicit time.
    pub fn verify_id_token_at(&self, token: &str, audience: &str, now: i64) -> Result<IdClaims> {
        let claims: IdClaims = self.decode_verified(token, ID_TOKEN_TYP)?;
        self.check_standard(&claims.iss, claims.exp, claims.iat, now)?;
        if claims.aud != audience {
            return Err(AuthError::InvalidAudience);
        }
        Ok(claims)
    }

    fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String> {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.key.kid().to_owned());
        jsonwebtoken::encode(&header, claims, self.key.encoding_key())
            .map_err(|e| AuthError::Crypto(format!("JWT signing failed: {e}")))
    }

    /// Checks header and signature and deserializes the claims. Time and
    /// issuer checks are left to [`TokenSigner::check_standard`].
    fn decode_verified<T: DeserializeOwned>(&self, token: &str, expected_typ: &str) -> Result<T> {
        let header = jsonwebtoken::decode_header(token).map_err(map_jwt_error)?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::InvalidToken("algorithm not allowed".into()));
        }
        if !typ_matches(header.typ.as_deref(), expected_typ) {
            return Err(AuthError::InvalidToken("unexpected token type".into()));
        }
        if header.kid.as_deref().is_some_and(|kid| kid != self.key.kid()) {
            return Err(AuthError::InvalidToken("unknown key id".into()));
        }

        let mut validation = Validation::new(Algorithm::RS256);
        // See the module docs: claims are validated by `check_standard`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();

        jsonwebtoken::decode::<T>(token, self.key.decoding_key(), &validation)
            .map(|data| data.claims)
            .map_err(map_jwt_error)
    }

    fn check_standard(&self, iss: &str, exp: i64, iat: i64, now: i64) -> Result<()> {
        if iss != self.issuer {
            return Err(AuthError::InvalidIssuer);
        }
        if now > exp.saturating_add(self.leeway_secs) {
            return Err(AuthError::Expired);
        }
        if iat > now.saturating_add(self.leeway_secs) {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }
}

/// Compares a header `typ` with the expected one, ignoring case and an
/// optional `application/` prefix (RFC 7515 §4.1.9).
fn typ_matches(actual: Option<&str>, expected: &str) -> bool {
    let Some(actual) = actual else {
        return false;
    };
    let bare = match actual.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &actual[12..],
        _ => actual,
    };
    bare.eq_ignore_ascii_case(expected)
}

fn map_jwt_error(err: jsonwebtoken::errors::Error) -> AuthError {
    let detail = match err.kind() {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not allowed",
        ErrorKind::InvalidToken => "malformed token",
        ErrorKind::Base64(_) => "malformed base64",
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => "malformed claims",
        ErrorKind::ExpiredSignature => return AuthError::Expired,
        ErrorKind::InvalidIssuer => return AuthError::InvalidIssuer,
        ErrorKind::InvalidAudience => return AuthError::InvalidAudience,
        _ => return AuthError::InvalidToken(err.to_string()),
    };
    AuthError::InvalidToken(detail.into())
}

fn duration_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Current time in whole seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Returns `bytes` bytes from the system CSPRNG (aws-lc), base64url encoded
/// without padding. 32 bytes (43 characters) is a good size for refresh
/// tokens and authorization codes.
///
/// # Panics
/// If the operating system's random number generator fails, which leaves
/// no safe way to continue.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).expect("system CSPRNG failure");
    URL_SAFE_NO_PAD.encode(&buf)
}

/// SHA-256 of `secret` as lowercase hex: the at-rest form of refresh
/// tokens, authorization codes and similar bearer secrets. Look secrets up
/// by this hash; since the input is high-entropy random data, no salt or
/// slow hash is needed.
pub fn hash_secret(secret: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest.as_ref() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Compares two byte strings in time independent of their contents (the
/// length may leak; a length mismatch is simply `false`).
pub fn constant_time_eq(a: impl AsRef<[u8]>, b: impl AsRef<[u8]>) -> bool {
    a.as_ref().ct_eq(b.as_ref()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test_key;
    use jsonwebtoken::DecodingKey;
    use jsonwebtoken::jwk::JwkSet;

    const ISSUER: &str = "https://kiln.example.org/";
    const HOUR: Duration = Duration::from_secs(3600);

    fn signer() -> TokenSigner {
        TokenSigner::new(test_key().clone(), ISSUER)
    }

    fn input() -> AccessClaimsInput {
        AccessClaimsInput {
            sub: "123".into(),
            login_id: "login-1".into(),
            client_id: Some("client-1".into()),
            scope: "openid offline_access user/*.cruds".into(),
            profile: "Practitioner/123".into(),
            project_id: "project-1".into(),
            username: Some("alice@example.org".into()),
            patient: None,
        }
    }

    fn b64_json(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn access_token_round_trip() {
        let s = signer();
        let (token, issued) = s.issue_access_token(&input(), HOUR).unwrap();
        assert_eq!(issued.exp - issued.iat, 3600);
        assert_eq!(issued.iss, ISSUER);
        let verified = s.verify_access_token(&token).unwrap();
        assert_eq!(verified, issued);
    }

    #[test]
    fn wire_format_is_what_clients_expect() {
        let s = signer();
        let (token, issued) = s.issue_access_token_at(&input(), HOUR, 1_700_000_000).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = b64_json(parts[0]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["kid"], test_key().kid());
        // Decoded with the workspace's arbitrary_precision serde_json.
        let payload = b64_json(parts[1]);
        assert_eq!(payload["iat"].as_i64(), Some(1_700_000_000));
        assert_eq!(payload["exp"].as_i64(), Some(1_700_003_600));
        assert_eq!(payload["login_id"], "login-1");
        assert_eq!(payload["profile"], "Practitioner/123");
        assert_eq!(payload["client_id"], "client-1");
        assert_eq!(payload["username"], "alice@example.org");
        assert_eq!(payload["jti"], issued.jti.as_str());
        // Integers must be written as plain integers, not floats or strings.
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert!(raw.contains(r#""exp":1700003600"#), "{raw}");
    }

    #[test]
    fn optional_fields_are_omitted() {
        let s = signer();
        let mut i = input();
        i.client_id = None;
        i.username = None;
        let (token, _) = s.issue_access_token(&i, HOUR).unwrap();
        let payload = b64_json(token.split('.').nth(1).unwrap());
        assert!(payload.get("client_id").is_none());
        assert!(payload.get("username").is_none());
        let claims = s.verify_access_token(&token).unwrap();
        assert_eq!(claims.client_id, None);
    }

    #[test]
    fn tampered_payload_rejected() {
        let s = signer();
        let (token, _) = s.issue_access_token(&input(), HOUR).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload = b64_json(parts[1]);
        payload["profile"] = Value::from("Practitioner/999");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
            parts[2]
        );
        assert!(matches!(s.verify_access_token(&forged), Err(AuthError::InvalidToken(_))));
    }

    #[test]
    fn tampered_signature_rejected() {
        let s = signer();
        let (token, _) = s.issue_access_token(&input(), HOUR).unwrap();
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[10] ^= 0x01;
        let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert!(matches!(s.verify_access_token(&forged), Err(AuthError::InvalidToken(_))));
    }

    #[test]
    fn garbage_rejected() {
        let s = signer();
        for t in ["", "a", "a.b", "a.b.c", "...", "eyJhbGciOiJub25lIn0.e30."] {
            assert!(matches!(s.verify_access_token(t), Err(AuthError::InvalidToken(_))), "{t}");
        }
    }

    #[test]
    fn hs256_and_none_rejected() {
        let s = signer();
        let (token, _) = s.issue_access_token(&input(), HOUR).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        for alg in ["HS256", "none", "RS512"] {
            let header = serde_json::json!({"alg": alg, "typ": "at+jwt", "kid": test_key().kid()});
            let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
            let forged = format!("{h}.{}.{}", parts[1], parts[2]);
            assert!(
                matches!(s.verify_access_token(&forged), Err(AuthError::InvalidToken(_))),
                "{alg}"
            );
        }
    }

    #[test]
    fn expired_rejected_with_leeway() {
        let s = signer();
        let t0 = 1_700_000_000;
        let (token, _) = s.issue_access_token_at(&input(), Duration::from_secs(60), t0).unwrap();
        assert!(s.verify_access_token_at(&token, t0 + 60).is_ok());
        assert!(s.verify_access_token_at(&token, t0 + 60 + 30).is_ok());
        assert_eq!(s.verify_access_token_at(&token, t0 + 60 + 31), Err(AuthError::Expired));
        // Long past: also via the wall clock.
        assert_eq!(s.verify_access_token(&token), Err(AuthError::Expired));
    }

    #[test]
    fn future_iat_rejected() {
        let s = signer();
        let t0 = 1_700_000_000;
        let (token, _) = s.issue_access_token_at(&input(), HOUR, t0).unwrap();
        assert!(s.verify_access_token_at(&token, t0 - 30).is_ok());
        assert_eq!(s.verify_access_token_at(&token, t0 - 31), Err(AuthError::NotYetValid));
    }

    #[test]
    fn wrong_issuer_rejected() {
        let (token, _) = signer().issue_access_token(&input(), HOUR).unwrap();
        let other = TokenSigner::new(test_key().clone(), "https://evil.example.org/");
        assert_eq!(other.verify_access_token(&token), Err(AuthError::InvalidIssuer));
    }

    #[test]
    fn other_key_rejected() {
        let (token, _) = signer().issue_access_token(&input(), HOUR).unwrap();
        let other = TokenSigner::new(SigningKey::generate().unwrap(), ISSUER);
        assert!(matches!(other.verify_access_token(&token), Err(AuthError::InvalidToken(_))));
        // Even with the kid header removed, the signature check fails.
        let parts: Vec<&str> = token.split('.').collect();
        let header = serde_json::json!({"alg": "RS256", "typ": "at+jwt"});
        let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
        let no_kid = format!("{h}.{}.{}", parts[1], parts[2]);
        assert!(matches!(other.verify_access_token(&no_kid), Err(AuthError::InvalidToken(_))));
    }

    #[test]
    fn jwks_verifies_token() {
        let s = signer();
        let (token, issued) = s.issue_access_token(&input(), HOUR).unwrap();
        let set: JwkSet = serde_json::from_value(s.jwks()).unwrap();
        let jwk = set.find(test_key().kid()).unwrap();
        let key = DecodingKey::from_jwk(jwk).unwrap();
        // A stock verifier: default validation (exp required and checked),
        // issuer pinned; runs with the workspace's arbitrary_precision.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[ISSUER]);
        let data = jsonwebtoken::decode::<AccessClaims>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims, issued);

        // The same via raw components, as a third-party verifier would do.
        let k = &s.jwks()["keys"][0];
        let key =
            DecodingKey::from_rsa_components(k["n"].as_str().unwrap(), k["e"].as_str().unwrap())
                .unwrap();
        assert!(jsonwebtoken::decode::<Value>(&token, &key, &validation).is_ok());

        // The stock verifier also reads our integer `exp` and rejects expiry.
        let (old, _) = s.issue_access_token_at(&input(), HOUR, 1_000_000_000).unwrap();
        let err = jsonwebtoken::decode::<Value>(&old, &key, &validation).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::ExpiredSignature);
    }

    #[test]
    fn id_token_round_trip() {
        let s = signer();
        let input = IdTokenInput {
            sub: "123".into(),
            client_id: "client-1".into(),
            nonce: Some("n-0S6_WzA2Mj".into()),
            fhir_user: Some("Practitioner/123".into()),
            email: Some("alice@example.org".into()),
            auth_time: Some(1_700_000_000),
        };
        let (token, issued) = s.issue_id_token(&input, HOUR).unwrap();
        let payload = b64_json(token.split('.').nth(1).unwrap());
        assert_eq!(payload["aud"], "client-1");
        assert_eq!(payload["fhirUser"], "Practitioner/123");
        assert_eq!(payload["nonce"], "n-0S6_WzA2Mj");
        assert_eq!(payload["auth_time"].as_i64(), Some(1_700_000_000));
        assert_eq!(s.verify_id_token(&token, "client-1").unwrap(), issued);
        assert_eq!(s.verify_id_token(&token, "client-2"), Err(AuthError::InvalidAudience));
    }

    #[test]
    fn token_kinds_are_not_interchangeable() {
        let s = signer();
        let (access, _) = s.issue_access_token(&input(), HOUR).unwrap();
        let id_input =
            IdTokenInput { sub: "1".into(), client_id: "c".into(), ..Default::default() };
        let (id, _) = s.issue_id_token(&id_input, HOUR).unwrap();
        assert!(matches!(s.verify_access_token(&id), Err(AuthError::InvalidToken(_))));
        assert!(matches!(s.verify_id_token(&access, "c"), Err(AuthError::InvalidToken(_))));
    }

    #[test]
    fn typ_comparison() {
        assert!(typ_matches(Some("at+jwt"), ACCESS_TOKEN_TYP));
        assert!(typ_matches(Some("application/AT+JWT"), ACCESS_TOKEN_TYP));
        assert!(!typ_matches(Some("JWT"), ACCESS_TOKEN_TYP));
        assert!(!typ_matches(None, ACCESS_TOKEN_TYP));
    }

    #[test]
    fn random_tokens() {
        let a = random_token(32);
        let b = random_token(32);
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(random_token(0), "");
    }

    #[test]
    fn secret_hash_is_sha256_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hash_secret(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
