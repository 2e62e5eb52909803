//! The storage contract of Kiln: the [`Store`] trait that every backend (embedded SQLite now,
//! PostgreSQL next) implements, the types it speaks, and a conformance suite (feature
//! `testsuite`) that every backend runs unchanged.
//!
//! The store knows nothing of HTTP, FHIR validation or access control. It trusts the engine:
//! everything handed to it has been validated. It does own three things no caller may fake:
//! version numbers, `meta.lastUpdated` and the atomicity of a group of writes.

mod blob;
pub mod raw;
mod rules;
pub mod search;
pub mod sql;
mod stamp;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

pub use blob::{BlobError, BlobReader, BlobStore, BlobWriter, FsBlobStore, valid_key};
pub use rules::{
    CurrentVersion, NextVersion, check_precondition, next_instant, plan_delete, plan_put,
    put_target,
};
pub use search::{Cursor, SearchPage, SearchRequest, SortValue};
pub use stamp::{format_instant, stamped_bytes};

pub use kiln_search::IndexEntry;

/// The tenant. Every row a store keeps carries one, and every store call names one.
/// Server-wide records (users, logins, keys) live in [`ProjectId::system`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectId(String);

impl ProjectId {
    pub fn new(id: impl Into<String>) -> ProjectId {
        ProjectId(id.into())
    }

    /// The reserved project holding server-wide records.
    pub fn system() -> ProjectId {
        ProjectId("system".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One version of a resource as stored: the exact JSON bytes Kiln serves (meta included).
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// `meta.lastUpdated` as a FHIR instant with millisecond precision, UTC.
    pub last_updated: String,
    /// A deletion marker: `body` is empty.
    pub deleted: bool,
    pub body: Arc<[u8]>,
    /// The interaction that wrote this version.
    pub method: WriteMethod,
    /// History only: the global order of this version among all writes of its project.
    pub seq: i64,
}

impl StoredResource {
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }
}

/// The HTTP verb that produced a history entry, as Bundle.entry.request.method needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    Post,
    Put,
    Patch,
    Delete,
}

impl WriteMethod {
    pub fn parse(text: &str) -> Option<WriteMethod> {
        match text {
            "POST" => Some(WriteMethod::Post),
            "PUT" => Some(WriteMethod::Put),
            "PATCH" => Some(WriteMethod::Patch),
            "DELETE" => Some(WriteMethod::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Post => "POST",
            WriteMethod::Put => "PUT",
            WriteMethod::Patch => "PATCH",
            WriteMethod::Delete => "DELETE",
        }
    }
}

/// A precondition on the current state of the resource a write targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No condition: create or replace.
    None,
    /// The resource must not exist (or be deleted): a create with a server-chosen id.
    MustNotExist,
    /// The current version must be exactly this one (`If-Match`).
    VersionIs(i64),
    /// The resource must exist and not be deleted (PATCH).
    MustExist,
}

/// One write, fully prepared by the engine.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Create or replace `resource` (its `resourceType` and `id` are set). The store sets
    /// `meta.versionId` and `meta.lastUpdated`.
    Put {
        resource: Value,
        method: WriteMethod,
        precondition: Precondition,
        /// The full set of unique keys (namespace, key) this version holds; replaces the old set.
        unique_keys: Vec<(String, String)>,
        /// The search index rows of this version (`kiln_search::extract`); replace the old
        /// rows. `_lastUpdated` is indexed by the store from the instant it assigns.
        index: Vec<IndexEntry>,
    },
    /// Logical delete. Deleting a missing or deleted resource succeeds and changes nothing.
    Delete { resource_type: String, id: String, precondition: Precondition },
    /// Replaces the search index rows of version `version` of a resource (a reindex after
    /// the project's search parameters changed); no new version is written. When that
    /// version is no longer the live one (the resource was updated or deleted since it was
    /// read), nothing changes: the newer write indexed itself. `WriteResult::stored` is
    /// `None` either way and `created` says whether the rows were replaced.
    Reindex { resource_type: String, id: String, version: i64, index: Vec<IndexEntry> },
}

/// What one write did.
#[derive(Debug, Clone)]
pub struct WriteResult {
    /// The version written, or for a no-op delete, `None`.
    pub stored: Option<StoredResource>,
    /// True when a `Put` created the resource (no live version existed before).
    pub created: bool,
}

/// How a group of writes commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atomicity {
    /// All or nothing: the first failure rolls every op back and is returned as the error.
    All,
    /// Each op commits or fails on its own (a batch Bundle).
    Each,
}

/// A job on the shared queue ([`Store::queued_jobs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub project: ProjectId,
    pub id: String,
    /// The node leasing it (the last one to, when the lease has run out).
    pub node: String,
    /// Whether the lease is still running.
    pub leased: bool,
}

/// Filters for a history query. Newest first; `before_seq` is the paging cursor.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub count: usize,
    /// Only versions with `lastUpdated >= since` (a FHIR instant, normalised to UTC millis).
    pub since: Option<String>,
    /// Only versions that were current at this instant.
    pub at: Option<String>,
    pub before_seq: Option<i64>,
}

/// Which history a query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{resource_type}/{id} not found")]
    NotFound { resource_type: String, id: String },
    #[error("{resource_type}/{id} was deleted")]
    Gone { resource_type: String, id: String, version: i64 },
    #[error("version conflict: expected {expected}, current is {actual}")]
    VersionConflict { expected: i64, actual: i64 },
    #[error("{resource_type}/{id} already exists")]
    AlreadyExists { resource_type: String, id: String },
    #[error("unique key {namespace} = {key} is already taken")]
    UniqueViolation { namespace: String, key: String },
    #[error("{0}")]
    Invalid(String),
    /// A write the caller's access policy refuses. The store never raises it: the engine
    /// judges writes before they reach the store, and reports a refusal in the same place as
    /// the store's own errors (one result per op of a batch).
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("the store is busy: {0}")]
    Busy(String),
    /// The work ran past the store's query time limit and was stopped (a search too costly
    /// for its data, or a write that waited too long for a lock).
    #[error("stopped after the time limit: {0}")]
    TimedOut(String),
    #[error("storage failure: {0}")]
    Internal(String),
}

/// The storage contract. Implementations must be safe to share between tasks; writes are
/// durable (fsynced) before a write call returns `Ok`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for health checks and logs, e.g. `"sqlite"`.
    fn kind(&self) -> &'static str;

    /// Whether several Kiln processes (nodes) may use this store at once. An embedded store
    /// is one process's alone, which makes that process the only node of the job queue.
    fn is_shared(&self) -> bool;

    /// The current version (which may be a deletion marker), or `NotFound`.
    async fn read(
        &self,
        project: &ProjectId,
        resource_type: &str,
        id: &str,
    ) -> Result<StoredResource, StoreError>;

    /// One version of a resource, or `NotFound`.
    async fn vread(
        &self,
        project: &ProjectId,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<StoredResource, StoreError>;

    /// Commits `ops` in order, as one group. With [`Atomicity::All`] the outer `Err` is the
    /// first failure and nothing was written; with [`Atomicity::Each`] every op has its own
    /// result and the outer `Err` means the group could not be committed at all.
    async fn write(
        &self,
        project: &ProjectId,
        ops: Vec<WriteOp>,
        atomicity: Atomicity,
    ) -> Result<Vec<Result<WriteResult, StoreError>>, StoreError>;

    /// History, newest first, at most `query.count` entries.
    async fn history(
        &self,
        project: &ProjectId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<Vec<StoredResource>, StoreError>;

    /// Number of versions in a history scope (respecting `since`/`at`).
    async fn history_count(
        &self,
        project: &ProjectId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<u64, StoreError>;

    /// One page of a search over the live resources of `project`. A query the store cannot
    /// run (a cursor from another search) is `StoreError::Invalid`.
    async fn search(
        &self,
        project: &ProjectId,
        request: &SearchRequest,
    ) -> Result<SearchPage, StoreError>;

    /// [`Store::search`] where an answer a little behind the latest writes is acceptable (a
    /// client's search, not a search a write depends on): a backend with a read replica may
    /// answer from it. By default, the same as [`Store::search`].
    async fn search_replica(
        &self,
        project: &ProjectId,
        request: &SearchRequest,
    ) -> Result<SearchPage, StoreError> {
        self.search(project, request).await
    }

    /// The live resource holding a unique key, as `(resourceType, id)`.
    async fn lookup_unique(
        &self,
        project: &ProjectId,
        namespace: &str,
        key: &str,
    ) -> Result<Option<(String, String)>, StoreError>;

    /// Every live resource, in any project, holding `(namespace, key)`. A system-level lookup
    /// (e.g. the memberships of a user across projects); ordinary requests never call it.
    async fn lookup_key_all_projects(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Vec<(ProjectId, String, String)>, StoreError>;

    /// Server-private settings (signing keys and the like), outside any resource.
    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Stores `value` unless the setting exists, and returns the stored value either way: nodes
    /// starting at once agree on one value (e.g. one signing key).
    async fn put_setting_if_absent(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Puts job `id` of `project` on the shared job queue, leased to `node` for `lease` (the
    /// node that accepted the request runs it at once). A job already queued is left as it is.
    async fn enqueue_job(
        &self,
        project: &ProjectId,
        id: &str,
        node: &str,
        lease: Duration,
    ) -> Result<(), StoreError>;
    /// Leases up to `limit` queued jobs to `node` for `lease`: jobs whose lease has run out
    /// (their node stopped renewing it), and with `own` also those `node` holds already (a
    /// node taking its own jobs back after a restart). Concurrent callers never get the same
    /// job (`FOR UPDATE SKIP LOCKED` on PostgreSQL). Oldest lease first.
    async fn claim_jobs(
        &self,
        node: &str,
        lease: Duration,
        limit: usize,
        own: bool,
    ) -> Result<Vec<(ProjectId, String)>, StoreError>;
    /// Extends every lease `node` holds to `lease` from now and returns the jobs it still
    /// holds: a job missing from the answer was taken over by another node.
    async fn renew_jobs(
        &self,
        node: &str,
        lease: Duration,
    ) -> Result<Vec<(ProjectId, String)>, StoreError>;
    /// Takes a finished (or vanished) job off the queue.
    async fn finish_job(&self, project: &ProjectId, id: &str) -> Result<(), StoreError>;
    /// Every queued job: project, id, the node leasing it, and whether its lease is live.
    async fn queued_jobs(&self) -> Result<Vec<QueuedJob>, StoreError>;

    /// Counts one event under `key` and returns the count: events of a key are counted
    /// together until `ttl` passes without one (each event restarts the clock), then the count
    /// starts again from 1. Shared by every node on the same store: login throttling and
    /// single-use tokens (`count == 1` means the first use).
    async fn count_event(&self, key: &str, ttl: Duration) -> Result<u64, StoreError>;
    /// The live count of `key` (0 once its `ttl` has passed).
    async fn event_count(&self, key: &str) -> Result<u64, StoreError>;
    /// Forgets `key`.
    async fn clear_events(&self, key: &str) -> Result<(), StoreError>;

    /// Whether the store holds no resource at all (first start).
    async fn is_empty(&self) -> Result<bool, StoreError>;

    /// Flushes and closes: called on graceful shutdown. Later calls fail.
    async fn close(&self);
}

/// Convenience: a single write with [`Atomicity::All`].
pub async fn write_one(
    store: &dyn Store,
    project: &ProjectId,
    op: WriteOp,
) -> Result<WriteResult, StoreError> {
    let mut results = store.write(project, vec![op], Atomicity::All).await?;
    match results.pop() {
        Some(res) => res,
        None => Err(StoreError::Internal("write returned no result".into())),
    }
}
