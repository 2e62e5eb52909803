//! An async client for Kiln and other FHIR R4 servers that offer Medplum's API.
//!
//! [`KilnClient`] signs in (email and password through Medplum's PKCE login, OAuth client
//! credentials, SMART Backend Services with an RS384 or ES384 key, or a token you already
//! hold), renews its token before it expires, retries what can safely be retried, and speaks
//! FHIR's RESTful API over [`serde_json::Value`] resources: create (also conditional), read,
//! vread, update (also with `If-Match`, and conditional), patch (JSON Patch and FHIRPath
//! Patch), delete (also conditional), history (of a resource, a type, the server), search (by
//! `GET` or `POST`) as a [`Stream`] that follows `next` links, batch and transaction Bundles,
//! `$validate`, Binary content, and Bulk Data export and `$import` (kick-off, polling with
//! progress, NDJSON files as streams). A token the server rejects before its announced expiry
//! is renewed, when the client can, and the call sent once more.
//!
//! Failures are [`Error`]s; an HTTP failure carries the status and the server's
//! `OperationOutcome`.
//!
//! ```
//! use futures_util::TryStreamExt;
//! use kiln_client::KilnClient;
//! use serde_json::json;
//!
//! # mod support { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/mod.rs")); }
//! # #[tokio::main] async fn main() -> Result<(), kiln_client::Error> {
//! # let server = support::Server::start().await;
//! # let (url, email, password) = (&server.base, support::ADMIN_EMAIL, support::ADMIN_PASSWORD);
//! // `url` is the server root, e.g. "http://127.0.0.1:8103/".
//! let client = KilnClient::new(url)?;
//! client.login(email, password).await?;
//!
//! let patient = client
//!     .create(&json!({"resourceType": "Patient", "name": [{"family": "Chalmers"}]}))
//!     .await?;
//! let id = patient["id"].as_str().unwrap();
//!
//! let found: Vec<_> = client.search("Patient", &[("family", "Chalmers")]).try_collect().await?;
//! assert!(found.iter().any(|p| p["id"] == id));
//!
//! match client.read("Patient", "no-such-id").await {
//!     Err(e) if e.is_not_found() => {}
//!     other => panic!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! (The examples in this documentation run against a Kiln started for them.)
//!
//! The crate depends on no server crate; it talks HTTP (reqwest with rustls) only.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod auth;
mod backend;
mod bulk;
mod error;
mod retry;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, Response, Url};
use serde_json::Value;
use tokio::sync::Mutex;

pub use backend::BackendKey;
pub use bulk::{BulkJob, BulkStatus, ExportLevel};
pub use error::{Error, Result};
pub use retry::RetryPolicy;

use auth::AuthState;

/// FHIR's JSON media type, sent as `Accept` and as the `Content-Type` of resources.
const FHIR_JSON: &str = "application/fhir+json";

/// A client of one FHIR server. Cheap to clone: clones share the connection pool and the
/// tokens.
#[derive(Debug, Clone)]
pub struct KilnClient {
    http: reqwest::Client,
    /// The server root, ending in `/` (`/auth`, `/oauth2` and `/fhir/R4` hang off it).
    root: Url,
    /// The FHIR base, `<root>fhir/R4/`.
    fhir: Url,
    retry: RetryPolicy,
    refresh_margin: Duration,
    auth: Arc<Mutex<AuthState>>,
}

/// What a conditional create did.
#[derive(Debug, Clone)]
pub struct CreateOutcome {
    /// The resource created, or the one that already matched.
    pub resource: Value,
    /// `true` when a resource was created (201), `false` when one already matched (200).
    pub created: bool,
}

impl KilnClient {
    /// A client of the server at `root`, e.g. `http://127.0.0.1:8103/` (a missing trailing
    /// `/` is added). The FHIR base is `<root>fhir/R4/`.
    ///
    /// The client starts unauthenticated: sign in with [`login`](Self::login),
    /// [`client_credentials`](Self::client_credentials) or
    /// [`backend_services`](Self::backend_services), or give it a token with
    /// [`with_token`](Self::with_token).
    pub fn new(root: &str) -> Result<KilnClient> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln-client/", env!("CARGO_PKG_VERSION")))
            .build()?;
        KilnClient::with_http_client(root, http)
    }

    /// Like [`new`](Self::new), with a reqwest client of your own (timeouts, proxies, root
    /// certificates…).
    pub fn with_http_client(root: &str, http: reqwest::Client) -> Result<KilnClient> {
        let mut root = Url::parse(root).map_err(|e| Error::Invalid(format!("{root}: {e}")))?;
        if !matches!(root.scheme(), "http" | "https") {
            return Err(Error::Invalid(format!("{root}: not an http(s) URL")));
        }
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        root.set_query(None);
        root.set_fragment(None);
        let fhir = root.join("fhir/R4/").map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(KilnClient {
            http,
            root,
            fhir,
            retry: RetryPolicy::default(),
            refresh_margin: Duration::from_secs(60),
            auth: Arc::new(Mutex::new(AuthState::default())),
        })
    }

    /// Uses `token` as the bearer token of every call (no refresh: the client cannot renew a
    /// token it did not get itself).
    pub fn with_token(self, token: &str) -> KilnClient {
        let state = AuthState { access: Some(token.to_owned()), ..AuthState::default() };
        KilnClient { auth: Arc::new(Mutex::new(state)), ..self }
    }

    /// Replaces the retry policy ([`RetryPolicy::default`] unless set).
    pub fn with_retry_policy(self, retry: RetryPolicy) -> KilnClient {
        KilnClient { retry, ..self }
    }

    /// How long before its expiry the access token is renewed (60 s unless set). The renewal
    /// happens before the first call made within that margin.
    pub fn with_refresh_margin(self, margin: Duration) -> KilnClient {
        KilnClient { refresh_margin: margin, ..self }
    }

    /// The server root the client was made with.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The FHIR base URL, `<root>fhir/R4/`.
    pub fn fhir_base(&self) -> &Url {
        &self.fhir
    }

    // --- FHIR interactions ---------------------------------------------------------------

    /// Creates `resource` (`POST [type]`); the type is its `resourceType`. Returns the
    /// resource as stored, with its `id` and `meta.versionId`.
    pub async fn create(&self, resource: &Value) -> Result<Value> {
        let ty = resource_type(resource)?;
        let call = Call::new(Method::POST, self.fhir_url(&[ty])?).body(Body::fhir(resource));
        json_of(self.execute(call).await?).await
    }

    /// Conditional create (`If-None-Exist`): creates `resource` unless a resource of its type
    /// matches the search `query` already. Two or more matches fail with 412 (see
    /// [`Error::is_precondition_failed`]).
    pub async fn create_if_none_exist(
        &self,
        resource: &Value,
        query: &[(&str, &str)],
    ) -> Result<CreateOutcome> {
        let ty = resource_type(resource)?;
        let condition = encode_query(query);
        let call = Call::new(Method::POST, self.fhir_url(&[ty])?)
            .header("if-none-exist", condition)?
            .body(Body::fhir(resource));
        let res = self.execute(call).await?;
        let created = res.status().as_u16() == 201;
        Ok(CreateOutcome { resource: json_of(res).await?, created })
    }

    /// Reads the current version of `type/id` (`GET [type]/[id]`). A missing resource fails
    /// with 404 ([`Error::is_not_found`]), a deleted one with 410 ([`Error::is_gone`]).
    pub async fn read(&self, ty: &str, id: &str) -> Result<Value> {
        self.get_json(self.fhir_url(&[ty, id])?).await
    }

    /// Reads version `version_id` of `type/id` (`GET [type]/[id]/_history/[vid]`).
    pub async fn vread(&self, ty: &str, id: &str, version_id: &str) -> Result<Value> {
        self.get_json(self.fhir_url(&[ty, id, "_history", version_id])?).await
    }

    /// Updates `resource` (`PUT [type]/[id]`), whatever its current version; its type and id
    /// are its `resourceType` and `id`. Returns the new version as stored.
    pub async fn update(&self, resource: &Value) -> Result<Value> {
        self.put(resource, None).await
    }

    /// Updates `resource` only if `version_id` is still its current version (`If-Match:
    /// W/"<version_id>"`, optimistic locking). Otherwise the server answers 412 and the call
    /// fails with an [`Error::Http`] whose [`is_precondition_failed`](Error::is_precondition_failed)
    /// holds.
    ///
    /// ```
    /// # mod support { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/mod.rs")); }
    /// # #[tokio::main] async fn main() -> Result<(), kiln_client::Error> {
    /// # let server = support::Server::start().await;
    /// # let client = server.admin().await;
    /// use serde_json::json;
    ///
    /// let created = client.create(&json!({"resourceType": "Patient", "gender": "female"})).await?;
    /// let version = created["meta"]["versionId"].as_str().unwrap();
    ///
    /// let mut edited = created.clone();
    /// edited["gender"] = json!("male");
    /// client.update_if_match(&edited, version).await?;
    ///
    /// // `version` is no longer current: the second writer gets 412 and an OperationOutcome.
    /// edited["gender"] = json!("other");
    /// let err = client.update_if_match(&edited, version).await.unwrap_err();
    /// assert!(err.is_precondition_failed());
    /// assert_eq!(err.outcome().unwrap()["resourceType"], "OperationOutcome");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn update_if_match(&self, resource: &Value, version_id: &str) -> Result<Value> {
        self.put(resource, Some(version_id)).await
    }

    async fn put(&self, resource: &Value, version_id: Option<&str>) -> Result<Value> {
        let ty = resource_type(resource)?;
        let id = resource["id"]
            .as_str()
            .ok_or_else(|| Error::Invalid("an update needs a resource with an id".into()))?;
        let mut call = Call::new(Method::PUT, self.fhir_url(&[ty, id])?).body(Body::fhir(resource));
        if let Some(version) = version_id {
            call = call.header("if-match", format!("W/\"{version}\""))?;
        }
        json_of(self.execute(call).await?).await
    }

    /// Conditional update (`PUT [type]?query`): updates the one resource of `resource`'s type
    /// that matches `query`, or creates `resource` when none does (its `id`, if any, must then
    /// be new). Two or more matches fail with 412. Returns the resource as stored.
    pub async fn update_where(&self, resource: &Value, query: &[(&str, &str)]) -> Result<Value> {
        let ty = resource_type(resource)?;
        let url = conditional_url(self.fhir_url(&[ty])?, query)?;
        let call = Call::new(Method::PUT, url).body(Body::fhir(resource));
        json_of(self.execute(call).await?).await
    }

    /// Conditional delete (`DELETE [type]?query`): deletes the resource of `ty` matching
    /// `query`; none matching is a success. Whether several may go at once is the server's
    /// choice: Kiln refuses with 412, like a conditional update.
    pub async fn delete_where(&self, ty: &str, query: &[(&str, &str)]) -> Result<()> {
        let url = conditional_url(self.fhir_url(&[ty])?, query)?;
        self.execute(Call::new(Method::DELETE, url)).await?;
        Ok(())
    }

    /// Patches `type/id` with a JSON Patch (RFC 6902): `operations` is the array of
    /// operations, sent as `application/json-patch+json`. Returns the patched resource.
    pub async fn patch_json(&self, ty: &str, id: &str, operations: &Value) -> Result<Value> {
        let body = Body { content_type: "application/json-patch+json", bytes: to_vec(operations) };
        let call = Call::new(Method::PATCH, self.fhir_url(&[ty, id])?).body(body);
        json_of(self.execute(call).await?).await
    }

    /// Patches `type/id` with a FHIRPath Patch: `parameters` is a `Parameters` resource of
    /// `operation` parts, sent as `application/fhir+json`. Returns the patched resource.
    ///
    /// ```
    /// # mod support { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/mod.rs")); }
    /// # #[tokio::main] async fn main() -> Result<(), kiln_client::Error> {
    /// # let server = support::Server::start().await;
    /// # let client = server.admin().await;
    /// use serde_json::json;
    ///
    /// let created = client.create(&json!({"resourceType": "Patient", "gender": "female"})).await?;
    /// let id = created["id"].as_str().unwrap();
    /// let parameters = json!({"resourceType": "Parameters", "parameter": [
    ///     {"name": "operation", "part": [
    ///         {"name": "type", "valueCode": "add"},
    ///         {"name": "path", "valueString": "Patient"},
    ///         {"name": "name", "valueString": "birthDate"},
    ///         {"name": "value", "valueDate": "1990-05-17"}]}]});
    /// let patched = client.patch_fhirpath("Patient", id, &parameters).await?;
    /// assert_eq!(patched["birthDate"], "1990-05-17");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn patch_fhirpath(&self, ty: &str, id: &str, parameters: &Value) -> Result<Value> {
        let call = Call::new(Method::PATCH, self.fhir_url(&[ty, id])?).body(Body::fhir(parameters));
        json_of(self.execute(call).await?).await
    }

    /// Deletes `type/id` (`DELETE [type]/[id]`).
    pub async fn delete(&self, ty: &str, id: &str) -> Result<()> {
        self.execute(Call::new(Method::DELETE, self.fhir_url(&[ty, id])?)).await?;
        Ok(())
    }

    /// `GET` of `path` relative to the FHIR base (`Patient/123`, `Patient?name=x`,
    /// `metadata`) or of an absolute URL on the same origin: the JSON answer.
    pub async fn get_path(&self, path: &str) -> Result<Value> {
        let url = self.fhir.join(path).map_err(|e| Error::Invalid(format!("{path}: {e}")))?;
        if url.origin() != self.fhir.origin() {
            return Err(Error::Invalid(format!(
                "{url} is not on {}; not sending this client's token there",
                self.fhir.origin().ascii_serialization()
            )));
        }
        self.get_json(url).await
    }

    /// The history of `type/id` (`GET [type]/[id]/_history`): a `history` Bundle, newest
    /// version first.
    pub async fn history(&self, ty: &str, id: &str) -> Result<Value> {
        self.get_json(self.fhir_url(&[ty, id, "_history"])?).await
    }

    /// The history of every resource of `ty` (`GET [type]/_history?query`, e.g. `_since`,
    /// `_count`): one `history` Bundle page; [`next_page`](Self::next_page) follows it.
    pub async fn type_history(&self, ty: &str, query: &[(&str, &str)]) -> Result<Value> {
        let url = with_query(self.fhir_url(&[ty, "_history"])?, query);
        self.get_json(url).await
    }

    /// The history of the whole server as the caller may see it (`GET _history?query`): one
    /// `history` Bundle page.
    pub async fn system_history(&self, query: &[(&str, &str)]) -> Result<Value> {
        let url = with_query(self.fhir_url(&["_history"])?, query);
        self.get_json(url).await
    }

    /// One page of a search sent as a form (`POST [type]/_search`), for queries too long or
    /// too private for a URL: the `searchset` Bundle. Its `next` link is a `GET` the server
    /// made, followed by [`next_page`](Self::next_page).
    pub async fn search_post(&self, ty: &str, query: &[(&str, &str)]) -> Result<Value> {
        let call =
            Call::new(Method::POST, self.fhir_url(&[ty, "_search"])?).body(Body::form(query));
        json_of(self.execute(call).await?).await
    }

    /// One page of a search (`GET [type]?query`): the `searchset` Bundle as the server sent
    /// it, with its `link`s, `total` and included resources. See [`next_page`](Self::next_page)
    /// for the following page, or [`search`](Self::search) for a stream of all matches.
    pub async fn search_page(&self, ty: &str, query: &[(&str, &str)]) -> Result<Value> {
        self.get_json(with_query(self.fhir_url(&[ty])?, query)).await
    }

    /// The page a Bundle's `next` link points to, or `None` on the last page.
    ///
    /// The link is followed only when it is on the same origin (scheme, host and port) as the
    /// client's base URL, so that the bearer token is never sent elsewhere; a link to another
    /// origin fails with [`Error::Invalid`].
    pub async fn next_page(&self, bundle: &Value) -> Result<Option<Value>> {
        match self.next_link(bundle)? {
            Some(url) => Ok(Some(self.get_json(url).await?)),
            None => Ok(None),
        }
    }

    /// Searches `type` with `query` and streams every matching resource, page after page,
    /// following the Bundles' `next` links (fetched as the stream is consumed, with the rules
    /// of [`next_page`](Self::next_page)).
    ///
    /// Only entries with `search.mode` `match` (or no mode) are yielded; resources brought by
    /// `_include`/`_revinclude` are in the pages [`search_page`](Self::search_page) returns.
    /// An error ends the stream after it is yielded.
    ///
    /// ```
    /// # mod support { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/mod.rs")); }
    /// # #[tokio::main] async fn main() -> Result<(), kiln_client::Error> {
    /// # let server = support::Server::start().await;
    /// # let client = server.admin().await;
    /// use futures_util::TryStreamExt;
    /// use serde_json::json;
    ///
    /// for _ in 0..5 {
    ///     client.create(&json!({"resourceType": "Patient", "name": [{"family": "Paged"}]})).await?;
    /// }
    /// // Three pages of at most two, as one stream.
    /// let all: Vec<_> =
    ///     client.search("Patient", &[("family", "Paged"), ("_count", "2")]).try_collect().await?;
    /// assert_eq!(all.len(), 5);
    /// # Ok(())
    /// # }
    /// ```
    pub fn search(
        &self,
        ty: &str,
        query: &[(&str, &str)],
    ) -> impl Stream<Item = Result<Value>> + Send + 'static {
        let first = self.fhir_url(&[ty]).map(|url| with_query(url, query));
        let state = SearchState {
            client: self.clone(),
            first: Some(first),
            next: None,
            pending: VecDeque::new(),
        };
        futures_util::stream::try_unfold(state, |mut state| async move {
            loop {
                if let Some(resource) = state.pending.pop_front() {
                    return Ok(Some((resource, state)));
                }
                let url = match state.first.take() {
                    Some(first) => first?,
                    None => match state.next.take() {
                        Some(next) => next,
                        None => return Ok(None),
                    },
                };
                let page = state.client.get_json(url).await?;
                state.next = state.client.next_link(&page)?;
                let entries = page["entry"].as_array().map(Vec::as_slice).unwrap_or_default();
                state.pending.extend(
                    entries
                        .iter()
                        .filter(|e| e["search"]["mode"].as_str().is_none_or(|m| m == "match"))
                        .filter_map(|e| e.get("resource").cloned()),
                );
            }
        })
    }

    /// Posts a `batch` or `transaction` Bundle to the FHIR base and returns the response
    /// Bundle. A transaction is all or nothing: when one entry fails, the call fails with that
    /// entry's status and `OperationOutcome`, and nothing is stored.
    ///
    /// A transaction is a `POST`: a 502/503/504 answer is not retried (see [`RetryPolicy`]).
    pub async fn execute_bundle(&self, bundle: &Value) -> Result<Value> {
        let call = Call::new(Method::POST, self.fhir.clone()).body(Body::fhir(bundle));
        json_of(self.execute(call).await?).await
    }

    /// Posts a `batch` or `transaction` Bundle given as JSON bytes (a file's content, sent as
    /// it is) with `Prefer: return=minimal`: the response Bundle's entries carry their
    /// `response` (status, location, etag; an `outcome` for a failed batch entry) and no
    /// resources. Fails like [`execute_bundle`](Self::execute_bundle) otherwise.
    pub async fn execute_bundle_minimal(&self, bundle_json: Vec<u8>) -> Result<Value> {
        let body = Body { content_type: FHIR_JSON, bytes: bundle_json };
        let call = Call::new(Method::POST, self.fhir.clone())
            .header("prefer", "return=minimal".to_owned())?
            .body(body);
        json_of(self.execute(call).await?).await
    }

    /// Validates `resource` against its type's profiles without storing it
    /// (`POST [type]/$validate`). Returns the `OperationOutcome`; a resource is valid when no
    /// issue has severity `error` or `fatal` (see [`has_errors`]).
    pub async fn validate(&self, resource: &Value) -> Result<Value> {
        let ty = resource_type(resource)?;
        let call =
            Call::new(Method::POST, self.fhir_url(&[ty, "$validate"])?).body(Body::fhir(resource));
        json_of(self.execute(call).await?).await
    }

    /// Stores `bytes` as a Binary of `content_type` (`POST Binary` with the raw bytes).
    /// Returns the Binary resource (without its data), whose `id` reads the content back.
    pub async fn upload_binary(&self, content_type: &str, bytes: Vec<u8>) -> Result<Value> {
        let content_type = HeaderValue::from_str(content_type)
            .map_err(|_| Error::Invalid(format!("bad content type {content_type:?}")))?;
        let call = Call::new(Method::POST, self.fhir_url(&["Binary"])?)
            .header_value(CONTENT_TYPE, content_type)
            .raw_body(bytes);
        json_of(self.execute(call).await?).await
    }

    /// The content of `Binary/id`: its content type and bytes.
    pub async fn download_binary(&self, id: &str) -> Result<(String, Vec<u8>)> {
        let call = Call::new(Method::GET, self.fhir_url(&["Binary", id])?)
            .header_value(ACCEPT, HeaderValue::from_static("*/*"));
        let res = self.execute(call).await?;
        let content_type = res
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        Ok((content_type, res.bytes().await?.to_vec()))
    }

    // --- plumbing ------------------------------------------------------------------------

    async fn get_json(&self, url: Url) -> Result<Value> {
        json_of(self.execute(Call::new(Method::GET, url)).await?).await
    }

    /// `<root><path>`.
    fn root_url(&self, path: &str) -> Result<Url> {
        self.root.join(path).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// `<fhir base>seg/seg/…`; each segment must be a FHIR type, id or operation name.
    fn fhir_url(&self, segments: &[&str]) -> Result<Url> {
        for segment in segments {
            let ok = !segment.is_empty()
                && segment.len() <= 64
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._$".contains(&b))
                && *segment != "."
                && *segment != "..";
            if !ok {
                return Err(Error::Invalid(format!(
                    "{segment:?} is not a FHIR type, id or version"
                )));
            }
        }
        self.fhir.join(&segments.join("/")).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// The Bundle's `next` link, checked to be on the client's origin.
    fn next_link(&self, bundle: &Value) -> Result<Option<Url>> {
        let links = bundle["link"].as_array().map(Vec::as_slice).unwrap_or_default();
        let Some(next) = links.iter().find(|l| l["relation"] == "next") else {
            return Ok(None);
        };
        let href = next["url"]
            .as_str()
            .ok_or_else(|| Error::Unexpected("a next link without a url".into()))?;
        let url = self.same_origin(href)?;
        Ok(Some(url))
    }

    /// Sends `call` with the bearer token (renewed first if due); see [`send`](Self::send).
    /// A 401 to a token the client can renew (a refresh token, or a client grant) is answered
    /// by renewing it and sending the call once more: the server may have revoked or rotated
    /// the token before its announced expiry.
    async fn execute(&self, call: Call) -> Result<Response> {
        let token = self.bearer().await?;
        match self.send(&call, token.clone()).await {
            Err(e @ Error::Http { status: 401, .. }) => {
                let Some(rejected) = token else { return Err(e) };
                match self.renew_after_401(&rejected).await? {
                    Some(renewed) => self.send(&call, Some(renewed)).await,
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// Sends `call`, with `token` as bearer token if any, retrying as the policy allows. A 2xx
    /// answer is returned; any other is an [`Error::Http`].
    async fn send(&self, call: &Call, token: Option<String>) -> Result<Response> {
        let mut attempt = 0;
        loop {
            let mut request = self.http.request(call.method.clone(), call.url.clone());
            if !call.headers.iter().any(|(name, _)| *name == ACCEPT) {
                request = request.header(ACCEPT, FHIR_JSON);
            }
            for (name, value) in &call.headers {
                request = request.header(name, value);
            }
            if let Some(body) = &call.body {
                if !call.headers.iter().any(|(name, _)| *name == CONTENT_TYPE) {
                    request = request.header(CONTENT_TYPE, body.content_type);
                }
                request = request.body(body.bytes.clone());
            }
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let retries_left = attempt < self.retry.max_retries;
            match request.send().await {
                Err(e) if retries_left && RetryPolicy::retries_error(&call.method, &e) => {
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                }
                Err(e) => return Err(e.into()),
                Ok(res) if res.status().is_success() => return Ok(res),
                Ok(res) => {
                    let retry_after = res
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok());
                    let wait = self.retry.delay(attempt, retry_after);
                    match wait {
                        Some(wait)
                            if retries_left
                                && RetryPolicy::retries_status(&call.method, res.status()) =>
                        {
                            drop(res);
                            tokio::time::sleep(wait).await;
                        }
                        _ => return Err(http_error(res).await),
                    }
                }
            }
            attempt += 1;
        }
    }
}

/// Whether an `OperationOutcome` has an issue of severity `error` or `fatal`.
pub fn has_errors(outcome: &Value) -> bool {
    let issues = outcome["issue"].as_array().map(Vec::as_slice).unwrap_or_default();
    issues.iter().any(|i| matches!(i["severity"].as_str(), Some("error" | "fatal")))
}

struct SearchState {
    client: KilnClient,
    first: Option<Result<Url>>,
    next: Option<Url>,
    pending: VecDeque<Value>,
}

/// One request, kept so that it can be sent again.
struct Call {
    method: Method,
    url: Url,
    headers: Vec<(reqwest::header::HeaderName, HeaderValue)>,
    body: Option<Body>,
}

impl Call {
    fn new(method: Method, url: Url) -> Call {
        Call { method, url, headers: Vec::new(), body: None }
    }

    /// Adds a header; a value that cannot be a header (a control character…) is an
    /// [`Error::Invalid`], never silently dropped.
    fn header(self, name: &'static str, value: String) -> Result<Call> {
        let value = HeaderValue::from_str(&value)
            .map_err(|_| Error::Invalid(format!("{value:?} cannot be sent as {name}")))?;
        Ok(self.header_value(reqwest::header::HeaderName::from_static(name), value))
    }

    fn header_value(mut self, name: reqwest::header::HeaderName, value: HeaderValue) -> Call {
        self.headers.push((name, value));
        self
    }

    fn body(mut self, body: Body) -> Call {
        self.body = Some(body);
        self
    }

    /// A body whose `Content-Type` is set as a header.
    fn raw_body(mut self, bytes: Vec<u8>) -> Call {
        self.body = Some(Body { content_type: "application/octet-stream", bytes });
        self
    }
}

struct Body {
    content_type: &'static str,
    bytes: Vec<u8>,
}

impl Body {
    fn fhir(resource: &Value) -> Body {
        Body { content_type: FHIR_JSON, bytes: to_vec(resource) }
    }

    fn json(value: &Value) -> Body {
        Body { content_type: "application/json", bytes: to_vec(value) }
    }

    fn form(pairs: &[(&str, &str)]) -> Body {
        Body {
            content_type: "application/x-www-form-urlencoded",
            bytes: encode_query(pairs).into_bytes(),
        }
    }
}

fn to_vec(value: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail: its map keys are strings.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `url` with `query` appended.
fn with_query(mut url: Url, query: &[(&str, &str)]) -> Url {
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

/// The URL of a conditional update or delete: a condition is required, since without one the
/// interaction would apply to every resource of the type.
fn conditional_url(url: Url, query: &[(&str, &str)]) -> Result<Url> {
    if query.is_empty() {
        return Err(Error::Invalid(
            "a conditional update or delete needs search parameters".into(),
        ));
    }
    Ok(with_query(url, query))
}

fn encode_query(pairs: &[(&str, &str)]) -> String {
    let mut url = Url::parse("http://x/").expect("a constant URL");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_owned()
}

fn resource_type(resource: &Value) -> Result<&str> {
    resource["resourceType"]
        .as_str()
        .ok_or_else(|| Error::Invalid("the resource has no resourceType".into()))
}

/// A success's body as JSON.
async fn json_of(res: Response) -> Result<Value> {
    let status = res.status().as_u16();
    let bytes = res.bytes().await?;
    if bytes.is_empty() {
        return Err(Error::Unexpected(format!("HTTP {status} without a body")));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// A failure's [`Error::Http`], with its `OperationOutcome` when the body is one.
async fn http_error(res: Response) -> Error {
    let status = res.status().as_u16();
    let body = match res.text().await {
        Ok(body) => body,
        Err(e) => return Error::Network(e),
    };
    let outcome = serde_json::from_str::<Value>(&body)
        .ok()
        .filter(|v| v["resourceType"] == "OperationOutcome");
    Error::Http { status, outcome, body }
}
