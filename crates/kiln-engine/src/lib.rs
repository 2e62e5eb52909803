//! FHIR interactions over a [`Store`]: create, read, vread, update, patch, delete, history,
//! batch and transaction, plus the accounts behind first-party login. **API boundary**: the
//! HTTP server and the CLI call only this crate's `Engine`; neither touches the store directly
//! for FHIR data.
//!
//! Invariants:
//! - Nothing invalid is ever stored: every write is validated here before it reaches the store,
//!   and the store trusts it.
//! - Every call is scoped by the caller's [`ProjectId`] through [`RequestContext`].
//! - Every absolute URL comes from one [`BaseUrl`].
//!
//! This crate knows FHIR's status codes for interactions (a batch response entry carries
//! them), but nothing of HTTP headers, sockets or axum.

pub mod accounts;
pub mod admin;
mod async_batch;
mod bundle;
mod cache;
mod capability;
pub mod client_assertion;
mod conditional;
mod error;
mod everything;
pub mod export;
mod fhirpath_patch;
mod history;
mod import;
mod jobs;
pub mod mail;
mod mfa;
pub mod oauth;
mod op_params;
mod operations;
mod params;
pub mod policy;
pub mod registration;
mod rest;
mod search;
pub mod server_meta;
pub mod shape;
pub mod shared;
pub mod smart;
mod terminology;
mod terminology_ops;

use std::sync::Arc;

use kiln_store::{BlobStore, ProjectId, Store};

pub use bundle::{EntryReturn, parse_etag};
pub use error::EngineError;
pub use history::HistoryParams;
pub use jobs::{JOBS_SETTING, JobQueue, JobStatus};
pub use op_params::OpParams;
pub use policy::{Access, Interaction};
pub use rest::{BinaryContent, PatchBody, WriteOutcome};
pub use search::{CURSOR_PARAM, Handling, ReadFrom, SearchMode, query_pairs};
pub use terminology_ops::{MAX_EXPAND_PAGE, TerminologyOp};

/// Where Kiln is reachable from outside, e.g. `https://fhir.example.com/`. Always ends in `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl(String);

impl BaseUrl {
    pub fn new(url: &str) -> BaseUrl {
        let mut url = url.trim().to_owned();
        if !url.ends_with('/') {
            url.push('/');
        }
        BaseUrl(url)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `https://host/fhir/R4` (no trailing slash).
    pub fn fhir_base(&self) -> String {
        format!("{}fhir/R4", self.0)
    }

    /// Absolute URL of a path under the base, e.g. `join("oauth2/token")`.
    pub fn join(&self, path: &str) -> String {
        format!("{}{}", self.0, path.trim_start_matches('/'))
    }

    /// `https://host/fhir/R4/Patient/123`.
    pub fn resource_url(&self, ty: &str, id: &str) -> String {
        format!("{}fhir/R4/{ty}/{id}", self.0)
    }
}

/// Who is asking, and in which project. Built by the server from a verified access token.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub project: ProjectId,
    /// The acting profile, e.g. `Practitioner/123`; written into `meta.author`.
    pub author: Option<String>,
    /// What the caller may see and do ([`policy`]).
    pub access: Arc<Access>,
    /// The caller asked for Medplum's server-side `meta` members (`X-Medplum: extended`);
    /// otherwise they are left out of every resource served ([`server_meta`]).
    pub extended: bool,
}

impl RequestContext {
    /// The engine acting for itself in `project`: no access checks.
    pub fn new(project: ProjectId) -> RequestContext {
        RequestContext {
            project,
            author: None,
            access: Arc::new(Access::internal()),
            extended: false,
        }
    }
}

/// Limits that protect the server from oversized requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `_count` a history (or later search) page may have.
    pub max_page_size: usize,
    /// Default `_count` when none is given.
    pub default_page_size: usize,
    /// Most entries in one batch or transaction Bundle.
    pub max_bundle_entries: usize,
    /// Most resources one conditional delete may remove (more matches are 412).
    pub max_conditional_delete: usize,
    /// How long a node may use a project's search parameters before reloading them (a
    /// SearchParameter written on another node takes effect here within this time).
    pub registry_ttl: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_page_size: 1000,
            default_page_size: 20,
            max_bundle_entries: 10_000,
            max_conditional_delete: 1,
            registry_ttl: std::time::Duration::from_secs(5),
        }
    }
}

/// Who may create accounts without an administrator (`kiln serve --registration`). Patient
/// self-registration also needs the project's consent: its `defaultPatientAccessPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Registration {
    /// No self-registration at all: `/auth/newuser`, `newproject` and `newpatient` are 403.
    Off,
    /// Only patients sign themselves up (`newuser` with a `projectId`, then `newpatient`), into
    /// projects that name a `defaultPatientAccessPolicy`. The default.
    #[default]
    Patients,
    /// Anyone may also sign up as a server-wide user and create their own project.
    Open,
}

impl std::str::FromStr for Registration {
    type Err = String;

    fn from_str(s: &str) -> Result<Registration, String> {
        match s {
            "off" => Ok(Registration::Off),
            "patients" => Ok(Registration::Patients),
            "open" => Ok(Registration::Open),
            other => Err(format!("registration must be off, patients or open, not {other}")),
        }
    }
}

/// The FHIR engine. Cheap to clone; share one per server.
#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    base_url: BaseUrl,
    limits: Limits,
    auth: Arc<accounts::AuthState>,
    params: Arc<params::ParamCache>,
    /// Project profiles compiled with their value sets ([`operations`]).
    profiles: Arc<cache::TtlCache<Arc<kiln_validate::Profiles>>>,
    jobs: Arc<jobs::Jobs>,
    access: Arc<policy::AccessCache>,
    /// JWK Sets of client assertions ([`client_assertion`]).
    assertions: Arc<client_assertion::AssertionState>,
    /// Counters and change notices shared with the other nodes ([`shared`]).
    shared: Arc<std::sync::RwLock<Arc<dyn shared::SharedState>>>,
}

impl Engine {
    /// Builds the engine. `signer` signs and verifies the server's JWTs.
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        base_url: BaseUrl,
        limits: Limits,
        signer: kiln_auth::TokenSigner,
    ) -> Engine {
        let auth = Arc::new(accounts::AuthState::new(signer));
        let jobs = Arc::new(jobs::Jobs::new(jobs::node_id(&*store)));
        let profiles = Arc::new(cache::TtlCache::new(
            limits.registry_ttl,
            operations::MAX_CACHED_PROFILE_SETS,
        ));
        Engine {
            store: store.clone(),
            blobs,
            base_url,
            limits,
            auth,
            params: Arc::default(),
            profiles,
            jobs,
            access: Arc::default(),
            assertions: Arc::default(),
            shared: Arc::new(std::sync::RwLock::new(Arc::new(shared::StoreShared::new(store)))),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn base_url(&self) -> &BaseUrl {
        &self.base_url
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn auth(&self) -> &accounts::AuthState {
        &self.auth
    }

    /// The CapabilityStatement describing what this build implements.
    pub fn capability_statement(&self) -> serde_json::Value {
        capability::capability_statement(&self.base_url, &self.limits)
    }
}
