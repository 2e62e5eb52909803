//! Asymmetric client authentication (`private_key_jwt`, RFC 7523 §2.2) as SMART App Launch
//! 2.0.0 and SMART Backend Services use it: instead of a secret, the client sends
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and a
//! `client_assertion` JWT signed with its private key; Kiln checks it against the client's
//! public keys ([`kiln_auth::assertion`] has the rules).
//!
//! **Where a client's keys come from**: `ClientApplication.jwksUri` (http or https), fetched
//! with a [`FETCH_TIMEOUT`] timeout and at most [`MAX_JWKS_BYTES`]; else an extension on the
//! ClientApplication with url [`CLIENT_JWKS_EXTENSION`] whose `valueString` is the JWK Set
//! itself (JSON text), for clients that cannot publish one:
//!
//! ```json
//! {"resourceType": "ClientApplication", "name": "Nightly export",
//!  "extension": [{"url": "https://kiln.dev/fhir/StructureDefinition/client-jwks",
//!                 "valueString": "{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-384\", ...}]}"}]}
//! ```
//!
//! **Caching**: a fetched JWK Set is kept per URL for its `Cache-Control: max-age` (at most
//! [`JwksCachePolicy::max_ttl`]), [`JwksCachePolicy::default_ttl`] without one, and not at all
//! with `no-store` or `no-cache`. An assertion whose `kid` the cached set lacks (the client
//! rotated its keys) refetches the set, at most once per [`JwksCachePolicy::refetch_interval`]
//! per URL, so unknown kids cannot make Kiln hammer the client's server.
//!
//! **Replay**: each verified `(client, jti)` is counted in the shared event counters
//! ([`crate::shared`]: the store's, or Redis's) until the assertion's `exp` (plus the leeway),
//! and a second use is refused, whichever node it reaches. When the counters cannot be
//! reached the assertion is refused (503): a replay must never slip through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_auth::assertion::{
    ASSERTION_LEEWAY_SECS, AssertionError, JWT_BEARER_ASSERTION_TYPE, VerifiedAssertion,
};
use kiln_store::ProjectId;
use serde_json::Value;

use crate::accounts::OAuthError;
use crate::oauth::invalid_client;
use crate::{Engine, EngineError};

/// The extension of a ClientApplication that holds its JWK Set inline (`valueString`: JSON).
pub const CLIENT_JWKS_EXTENSION: &str = "https://kiln.dev/fhir/StructureDefinition/client-jwks";
/// Longest wait for a client's JWK Set.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWK Set body accepted.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most JWK Set URLs cached at once.
const MAX_JWKS_URLS: usize = 1_000;

/// How long fetched JWK Sets are trusted ([`Engine::set_jwks_cache_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksCachePolicy {
    /// Kept this long when the response has no `Cache-Control: max-age`.
    pub default_ttl: Duration,
    /// `max-age` is capped at this.
    pub max_ttl: Duration,
    /// A set is refetched for an unknown `kid` only when fetched at least this long ago.
    pub refetch_interval: Duration,
}

impl Default for JwksCachePolicy {
    fn default() -> JwksCachePolicy {
        JwksCachePolicy {
            default_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(3600),
            refetch_interval: Duration::from_secs(30),
        }
    }
}

/// A fetched JWK Set.
struct CachedJwks {
    jwks: Arc<Value>,
    fetched: Instant,
    ttl: Duration,
}

/// The cache behind client assertions: JWK Sets by URL. One per engine.
pub(crate) struct AssertionState {
    policy: Mutex<JwksCachePolicy>,
    http: OnceLock<reqwest::Client>,
    jwks: Mutex<HashMap<String, CachedJwks>>,
    /// JWK Set fetches made (for tests and metrics).
    fetches: std::sync::atomic::AtomicU64,
}

impl Default for AssertionState {
    fn default() -> AssertionState {
        AssertionState {
            policy: Mutex::new(JwksCachePolicy::default()),
            http: OnceLock::new(),
            jwks: Mutex::new(HashMap::new()),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl AssertionState {
    fn policy(&self) -> JwksCachePolicy {
        *self.policy.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn http(&self) -> Result<&reqwest::Client, String> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(self.http.get_or_init(|| client))
    }

    /// The cached set of `url` if still fresh: `(set, fetched at)`.
    fn cached(&self, url: &str) -> Option<(Arc<Value>, Instant)> {
        let cache = self.jwks.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(url)?;
        (entry.fetched.elapsed() < entry.ttl).then(|| (entry.jwks.clone(), entry.fetched))
    }

    fn store(&self, url: &str, jwks: Arc<Value>, ttl: Duration) {
        let mut cache = self.jwks.lock().unwrap_or_else(|e| e.into_inner());
        if ttl.is_zero() {
            cache.remove(url);
            return;
        }
        if cache.len() >= MAX_JWKS_URLS && !cache.contains_key(url) {
            cache.retain(|_, e| e.fetched.elapsed() < e.ttl);
            if cache.len() >= MAX_JWKS_URLS {
                cache.clear();
            }
        }
        cache.insert(url.to_owned(), CachedJwks { jwks, fetched: Instant::now(), ttl });
    }

    /// GETs a JWK Set: the parsed set and how long it may be cached.
    async fn fetch(&self, url: &str) -> Result<(Value, Duration), String> {
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let http = self.http()?;
        let mut res = http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/jwk-set+json, application/json")
            .send()
            .await
            .map_err(|e| unreachable(url, &e))?;
        if !res.status().is_success() {
            return Err(format!("HTTP status {}", res.status().as_u16()));
        }
        if res.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        let cache_control = res
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| unreachable(url, &e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let jwks = parse_jwks(&body)?;
        Ok((jwks, cache_ttl(&cache_control, &self.policy())))
    }
}

/// A failed JWK Set request: the detail (addresses, TLS) goes to the log only; whoever sent
/// the assertion (perhaps not the client) learns that the keys could not be read.
fn unreachable(url: &str, e: &reqwest::Error) -> String {
    tracing::warn!(%url, error = %e, "client JWK Set request failed");
    if e.is_timeout() { "request timed out".into() } else { "request failed".into() }
}

/// A JWK Set from JSON bytes: an object with a `keys` array.
fn parse_jwks(bytes: &[u8]) -> Result<Value, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| "not JSON".to_owned())?;
    if !value.get("keys").is_some_and(Value::is_array) {
        return Err("not a JWK Set (no \"keys\" array)".into());
    }
    Ok(value)
}

/// How long a JWK Set may be cached, from its response's `Cache-Control`.
fn cache_ttl(cache_control: &str, policy: &JwksCachePolicy) -> Duration {
    let mut ttl = policy.default_ttl;
    for directive in cache_control.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(age) = directive.strip_prefix("max-age=") {
            match age.trim_matches('"').parse::<u64>() {
                Ok(secs) => ttl = Duration::from_secs(secs),
                // A broken max-age: treat as stale, as RFC 9111 §4.2.1 suggests.
                Err(_) => return Duration::ZERO,
            }
        }
    }
    ttl.min(policy.max_ttl)
}

/// The SMART `system/` resource scopes of `requested`, in order, space separated.
fn system_scopes(requested: &str) -> String {
    kiln_auth::ScopeSet::parse(requested)
        .iter()
        .filter(|s| {
            kiln_auth::ResourceScope::parse(s)
                .is_ok_and(|rs| rs.context == kiln_auth::ScopeContext::System)
        })
        .collect::<kiln_auth::ScopeSet>()
        .to_string()
}

/// The OAuth error for an assertion the rules refuse: 401 `invalid_client` (RFC 7521 §4.2.1).
fn refused(e: &AssertionError) -> OAuthError {
    invalid_client(&e.to_string())
}

/// Where a client's keys are.
enum KeySource {
    Url(String),
    Inline(Value),
}

/// The client's key source: `jwksUri`, else the inline extension.
fn key_source(client: &Value) -> Result<KeySource, OAuthError> {
    if let Some(uri) = client["jwksUri"].as_str().filter(|u| !u.is_empty()) {
        let lower = uri.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(invalid_client("The client's jwksUri must be an http or https URL"));
        }
        return Ok(KeySource::Url(uri.to_owned()));
    }
    let inline = client["extension"].as_array().and_then(|exts| {
        exts.iter().find(|ext| ext["url"] == CLIENT_JWKS_EXTENSION)?["valueString"].as_str()
    });
    match inline {
        Some(text) => parse_jwks(text.as_bytes()).map(KeySource::Inline).map_err(|e| {
            invalid_client(&format!("The client's registered JWK Set is invalid: {e}"))
        }),
        None => Err(invalid_client(
            "The client has no registered public keys (jwksUri or the client-jwks extension)",
        )),
    }
}

impl Engine {
    /// Sets how long fetched client JWK Sets are trusted (defaults: [`JwksCachePolicy`]).
    pub fn set_jwks_cache_policy(&self, policy: JwksCachePolicy) {
        *self.assertions.policy.lock().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// How many client JWK Sets this engine has fetched (each HTTP GET counts).
    pub fn jwks_fetches(&self) -> u64 {
        self.assertions.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Authenticates a client by a JWT client assertion (`private_key_jwt`): the assertion
    /// type must be RFC 7523's `jwt-bearer`; `iss` = `sub` names the client (and `client_id`,
    /// when the request has one, must be the same); the signature must verify with one of
    /// the client's registered keys; `aud` must be this server's token endpoint; the `jti`
    /// must not have been used. Returns `(project, membership, ClientApplication)` like a
    /// secret check would. A wrong assertion type is 400 `invalid_request`; every other
    /// refusal is 401 `invalid_client`, its description naming the rule.
    pub async fn verify_client_assertion(
        &self,
        client_id: Option<&str>,
        assertion_type: &str,
        assertion: &str,
    ) -> Result<(ProjectId, Value, Value), OAuthError> {
        if assertion_type != JWT_BEARER_ASSERTION_TYPE {
            return Err(OAuthError {
                error: "invalid_request",
                description: format!("client_assertion_type must be {JWT_BEARER_ASSERTION_TYPE}"),
                status: 400,
            });
        }
        let unverified = kiln_auth::assertion::peek(assertion).map_err(|e| refused(&e))?;
        let Some(iss) = unverified.iss.as_deref().filter(|iss| !iss.is_empty()) else {
            return Err(refused(&AssertionError::InvalidIssuer));
        };
        if unverified.sub.as_deref() != Some(iss) {
            return Err(refused(&AssertionError::InvalidSubject));
        }
        if client_id.is_some_and(|id| id != iss) {
            return Err(invalid_client("client_id does not match the assertion's iss"));
        }
        let (project, membership, client) = self.find_client(iss).await.map_err(|e| match e {
            EngineError::Unauthorized(_) => invalid_client("Unknown client"),
            other => OAuthError::from(other),
        })?;
        let source = key_source(&client)?;
        if let Some(jku) = &unverified.jku {
            // Keys come from the registration only; a jku may just repeat the jwksUri.
            if !matches!(&source, KeySource::Url(url) if url == jku) {
                return Err(invalid_client("The assertion's jku is not the client's jwksUri"));
            }
        }
        let audience = self.base_url().join("oauth2/token");
        let verified = match &source {
            KeySource::Inline(jwks) => kiln_auth::verify_assertion(assertion, jwks, iss, &audience)
                .map_err(|e| refused(&e))?,
            KeySource::Url(url) => self.verify_with_url(assertion, url, iss, &audience).await?,
        };
        self.remember_jti(&verified).await?;
        Ok((project, membership, client))
    }

    /// SMART Backend Services: `grant_type=client_credentials` authenticated by a client
    /// assertion ([`Engine::verify_client_assertion`]). `scope` is required; the `system/`
    /// resource scopes in it are granted (others, such as `openid` or `patient/…`, are left
    /// out) and none is 400 `invalid_scope`. Answers like a secret-authenticated client:
    /// an access token (`scope` = the granted scopes), no refresh token.
    pub async fn client_credentials_assertion(
        &self,
        client_id: Option<&str>,
        assertion_type: &str,
        assertion: &str,
        scope: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let invalid_scope = |description: &str| OAuthError {
            error: "invalid_scope",
            description: description.to_owned(),
            status: 400,
        };
        // Scope first: a request refused for its scope does not use up its assertion's jti.
        let Some(requested) = scope.filter(|s| !s.trim().is_empty()) else {
            return Err(invalid_scope("scope is required, e.g. system/*.rs"));
        };
        let granted = system_scopes(requested);
        if granted.is_empty() {
            return Err(invalid_scope(
                "A backend service is granted system/ scopes only, e.g. system/Patient.rs",
            ));
        }
        let (project, membership, client) =
            self.verify_client_assertion(client_id, assertion_type, assertion).await?;
        let client_id = client["id"].as_str().unwrap_or_default().to_owned();
        self.issue_client_token(&project, &membership, &client_id, &granted).await
    }

    /// Verifies against the JWK Set at `url`: the cached copy, refetched once (rate-limited)
    /// when it lacks the assertion's `kid`.
    async fn verify_with_url(
        &self,
        assertion: &str,
        url: &str,
        client_id: &str,
        audience: &str,
    ) -> Result<VerifiedAssertion, OAuthError> {
        let state = &self.assertions;
        if let Some((jwks, fetched)) = state.cached(url) {
            match kiln_auth::verify_assertion(assertion, &jwks, client_id, audience) {
                Err(AssertionError::UnknownKid(kid))
                    if fetched.elapsed() >= state.policy().refetch_interval =>
                {
                    tracing::debug!(%url, %kid, "unknown kid: refetching the client's JWK Set");
                }
                other => return other.map_err(|e| refused(&e)),
            }
        }
        let (jwks, ttl) = state.fetch(url).await.map_err(|e| {
            tracing::info!(%url, error = %e, "could not read a client's JWK Set");
            invalid_client(&format!("Could not fetch the client's JWK Set: {e}"))
        })?;
        let jwks = Arc::new(jwks);
        state.store(url, jwks.clone(), ttl);
        kiln_auth::verify_assertion(assertion, &jwks, client_id, audience).map_err(|e| refused(&e))
    }

    /// Records a verified assertion's `jti`; a second use is 401 `invalid_client`.
    async fn remember_jti(&self, verified: &VerifiedAssertion) -> Result<(), OAuthError> {
        let now = kiln_auth::tokens::now_secs();
        let until = verified.exp.saturating_add(ASSERTION_LEEWAY_SECS);
        let ttl = Duration::from_secs(u64::try_from(until.saturating_sub(now)).unwrap_or(0).max(1));
        match self.shared().count_event(&jti_key(&verified.client_id, &verified.jti), ttl).await {
            Ok(1) => Ok(()),
            Ok(_) => Err(invalid_client("Client assertion replayed: its jti was used already")),
            Err(e) => {
                tracing::error!(error = %e, "client assertion: the jti counters are unavailable");
                Err(OAuthError {
                    error: "temporarily_unavailable",
                    description: "Client assertions cannot be checked for replay; retry shortly"
                        .into(),
                    status: 503,
                })
            }
        }
    }
}

/// The counter of a used `(client, jti)`: hashed, so that a long `jti` makes no long key.
fn jti_key(client: &str, jti: &str) -> String {
    let pair = format!("{}:{client}{jti}", client.len());
    format!("jti:{}", kiln_auth::tokens::hash_secret(&pair))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cache_control_decides_the_ttl() {
        let policy = JwksCachePolicy::default();
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(cache_ttl("", &policy), policy.default_ttl);
        assert_eq!(cache_ttl("public, max-age=60", &policy), secs(60));
        assert_eq!(cache_ttl("Max-Age=\"120\"", &policy), secs(120));
        assert_eq!(cache_ttl("max-age=999999", &policy), policy.max_ttl);
        assert_eq!(cache_ttl("max-age=0", &policy), Duration::ZERO);
        assert_eq!(cache_ttl("max-age=soon", &policy), Duration::ZERO);
        assert_eq!(cache_ttl("no-store", &policy), Duration::ZERO);
        assert_eq!(cache_ttl("max-age=60, no-cache", &policy), Duration::ZERO);
    }

    #[test]
    fn backend_services_get_system_scopes_only() {
        assert_eq!(system_scopes("system/*.rs"), "system/*.rs");
        assert_eq!(
            system_scopes(
                "openid system/Patient.read patient/*.rs system/Observation.r system/Patient.read"
            ),
            "system/Patient.read system/Observation.r"
        );
        assert_eq!(
            system_scopes("system/Observation.rs?category=laboratory launch"),
            "system/Observation.rs?category=laboratory"
        );
        assert_eq!(system_scopes("user/*.rs offline_access system/Patient.xyz"), "");
        assert_eq!(system_scopes(""), "");
    }

    #[test]
    fn jti_keys_tell_clients_apart_and_stay_short() {
        assert_ne!(jti_key("c", "j"), jti_key("d", "j"));
        assert_ne!(jti_key("c", "j\nx"), jti_key("c\nj", "x"));
        assert_eq!(jti_key("c", "j"), jti_key("c", "j"));
        assert!(jti_key("c", &"x".repeat(10_000)).len() < 80);
    }

    #[test]
    fn keys_come_from_the_jwks_uri_or_the_extension() {
        let inline = json!({"keys": [{"kty": "EC", "kid": "a"}]});
        let client = json!({"resourceType": "ClientApplication", "extension": [
            {"url": "https://example.org/other", "valueString": "x"},
            {"url": CLIENT_JWKS_EXTENSION, "valueString": inline.to_string()},
        ]});
        assert!(matches!(key_source(&client), Ok(KeySource::Inline(set)) if set == inline));
        let mut with_uri = client.clone();
        with_uri["jwksUri"] = json!("https://app.example.org/jwks.json");
        assert!(matches!(key_source(&with_uri), Ok(KeySource::Url(u)) if u.ends_with("jwks.json")));
        for bad in [
            json!({"jwksUri": "file:///etc/passwd"}),
            json!({"extension": [{"url": CLIENT_JWKS_EXTENSION, "valueString": "{"}]}),
            json!({"extension": [{"url": CLIENT_JWKS_EXTENSION, "valueString": "{\"keys\":1}"}]}),
            json!({"name": "no keys"}),
        ] {
            let e = key_source(&bad).err().unwrap();
            assert_eq!((e.error, e.status), ("invalid_client", 401), "{bad}");
        }
    }
}
