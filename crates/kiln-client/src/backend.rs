//! SMART Backend Services: the `client_credentials` grant with a signed JWT assertion
//! (`private_key_jwt`, RFC 7523) instead of a secret.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::KilnClient;
use crate::auth::ClientGrant;
use crate::error::{Error, Result};

/// The `client_assertion_type` of a JWT assertion (RFC 7523 §2.2).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid: SMART asks for at most five minutes.
const ASSERTION_LIFETIME_SECS: u64 = 240;

/// A backend service's private key, which signs its client assertions: RS384 (RSA) or ES384
/// (EC P-384), with the `kid` of its public half in the client's JWKS.
pub struct BackendKey {
    algorithm: Algorithm,
    kid: String,
    key: EncodingKey,
}

impl std::fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("BackendKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish()
    }
}

impl BackendKey {
    /// An RSA private key in PEM (PKCS#1 or PKCS#8), signing with RS384.
    pub fn rs384_pem(kid: &str, pem: &[u8]) -> Result<BackendKey> {
        let key = EncodingKey::from_rsa_pem(pem)
            .map_err(|e| Error::Invalid(format!("not an RSA private key in PEM: {e}")))?;
        Ok(BackendKey { algorithm: Algorithm::RS384, kid: kid.to_owned(), key })
    }

    /// An EC P-384 private key in PEM (PKCS#8), signing with ES384.
    pub fn es384_pem(kid: &str, pem: &[u8]) -> Result<BackendKey> {
        let key = EncodingKey::from_ec_pem(pem)
            .map_err(|e| Error::Invalid(format!("not an EC private key in PEM: {e}")))?;
        Ok(BackendKey { algorithm: Algorithm::ES384, kid: kid.to_owned(), key })
    }

    /// A client assertion for `client_id` at the token endpoint `audience`: `iss` and `sub`
    /// the client, a fresh `jti`, valid for four minutes.
    fn assertion(&self, client_id: &str, audience: &str) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Error::Invalid(format!("signing the client assertion: {e}")))
    }
}

impl KilnClient {
    /// Signs in as a SMART Backend Service: the `client_credentials` grant with a client
    /// assertion signed by `key` (`private_key_jwt`), asking for `scope` (e.g.
    /// `system/*.rs`). The server checks the signature against the client's registered JWKS.
    /// A new assertion is signed, and a new token asked for, when the token is about to expire.
    /// Returns the token response.
    pub async fn backend_services(
        &self,
        client_id: &str,
        key: BackendKey,
        scope: &str,
    ) -> Result<Value> {
        let key = Arc::new(key);
        let tokens = self.assertion_token(client_id, &key, scope).await?;
        let mut auth = self.auth.lock().await;
        auth.store(&tokens)?;
        auth.client =
            Some(ClientGrant::Assertion { id: client_id.to_owned(), key, scope: scope.to_owned() });
        Ok(tokens)
    }

    pub(crate) async fn assertion_token(
        &self,
        client_id: &str,
        key: &BackendKey,
        scope: &str,
    ) -> Result<Value> {
        let audience = self.root_url("oauth2/token")?;
        let assertion = key.assertion(client_id, audience.as_str())?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.as_str()),
        ];
        self.token_request(&form).await
    }
}
