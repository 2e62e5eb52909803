//! Kiln's PostgreSQL storage backend: the same `Store` contract as the embedded SQLite store, for
//! production and for many stateless Kiln nodes on one database.
//!
//! Shape: a deadpool pool of tokio-postgres connections; every write call is one database
//! transaction. Concurrency is PostgreSQL's: a write locks the rows it changes (`FOR UPDATE`), so
//! two racing `If-Match` updates serialise and exactly one wins, on one node or many. Group
//! commit is the database's own (concurrent transactions share WAL flushes).
//!
//! Migrations run at start inside an advisory lock, so several nodes may start at once.
//! Every SQL string of this backend lives in this crate: `migrations/`, [`queries`], and
//! `raw.rs` ([`RawLoader`] and [`PostgresStore::raw_scan`]: the bulk load and read-back of
//! `kiln migrate-store`).

mod blob;
mod queries;
mod raw;
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use kiln_store::sql::ParamKeys;
use kiln_store::{
    Atomicity, HistoryQuery, HistoryScope, ProjectId, Store, StoreError, StoredResource, WriteOp,
    WriteResult,
};
use tokio_postgres::NoTls;

pub use crate::blob::PgBlobStore;
pub use crate::raw::{RawCopy, RawLoader};

/// Connections a pool keeps unless told otherwise ([`PostgresOptions::pool_size`]).
pub const DEFAULT_POOL_SIZE: usize = 16;

/// A write of this many ops or more (an import batch, a large transaction Bundle) is large.
const LARGE_WRITE: usize = 32;

/// How many large writes of this node run at once: an eighth of the pool, at least 2. Each
/// keeps a PostgreSQL backend busy for its whole transaction; many at once only share the
/// database's cores and contend for its WAL and buffers (on the 2-core machine of
/// docs/PERFORMANCE.md, 32 clients posting large Bundles got 18 % less through than 4 before
/// turns), and they would hold every connection that small requests need.
fn large_write_turns(pool_size: usize) -> usize {
    (pool_size / 8).max(2)
}

/// The longest a request waits for a free connection of the pool.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest opening a connection to the database may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a write is retried after a deadlock or serialisation failure before giving up.
const WRITE_ATTEMPTS: usize = 4;

pub struct PostgresStore {
    pool: Pool,
    /// A read replica for searches that may lag ([`Store::search_replica`]).
    replica: Option<Pool>,
    stats: Arc<Statistics>,
    /// The index parameters' keys this node has seen (`sp_param`).
    params: ParamKeys,
    /// Turns for large writes ([`LARGE_WRITE`] ops or more): see [`large_write_turns`].
    large_writes: Arc<tokio::sync::Semaphore>,
    /// Every statement's time limit (PostgreSQL's `statement_timeout` on each connection).
    query_timeout: Option<std::time::Duration>,
}

/// How a [`PostgresStore`] connects.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The most connections kept to the primary (and to a read replica); at least 1.
    pub pool_size: usize,
    /// The longest one statement may run (`statement_timeout`) before PostgreSQL stops it
    /// ([`StoreError::TimedOut`]): a search too costly for its data, or a write waiting that
    /// long for a lock. Migrations, raw loads and `ANALYZE` are exempt. `None`: no limit.
    pub query_timeout: Option<std::time::Duration>,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions { pool_size: DEFAULT_POOL_SIZE, query_timeout: None }
    }
}

/// Adds a server option (`-c name=value`) to the connection's start-up options.
fn add_option(target: &mut tls::Target, option: &str) {
    let options = match target.config.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {option}"),
        _ => option.to_owned(),
    };
    target.config.options(options);
}

fn statement_timeout(limit: std::time::Duration) -> String {
    format!("-c statement_timeout={}", limit.as_millis().max(1))
}

/// Work that may rightly run long (migrations, raw loads, `ANALYZE`) lifts the statement
/// time limit for its own transaction with this.
pub(crate) const NO_TIME_LIMIT: &str = "SET LOCAL statement_timeout = 0";

/// Keeps the planner's statistics fresh while a store fills. PostgreSQL's autovacuum analyses a
/// table only after a minute and 10% of change, so right after a bulk load (or in a fresh
/// schema) the planner guesses, and searches such as `_has` pick nested loops that re-scan
/// tables. This node analyses the search tables itself each time the rows it wrote since the
/// last run pass a threshold that doubles (1,000, 2,000, 4,000 … up to 1,000,000 rows).
struct Statistics {
    written: AtomicU64,
    threshold: AtomicU64,
    running: AtomicBool,
}

const FIRST_ANALYZE: u64 = 1_000;
const MAX_ANALYZE_INTERVAL: u64 = 1_000_000;

impl PostgresStore {
    /// Counts rows written; starts a background `ANALYZE` when they pass the threshold.
    fn note_written(&self, rows: u64) {
        let written = self.stats.written.fetch_add(rows, Ordering::Relaxed) + rows;
        if written < self.stats.threshold.load(Ordering::Relaxed)
            || self.stats.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.stats.written.store(0, Ordering::Relaxed);
        let next = (self.stats.threshold.load(Ordering::Relaxed) * 2).min(MAX_ANALYZE_INTERVAL);
        self.stats.threshold.store(next, Ordering::Relaxed);
        let (pool, stats) = (self.pool.clone(), self.stats.clone());
        tokio::spawn(async move {
            let res = async {
                let client = pool.get().await.map_err(map_pool)?;
                let sql =
                    format!("BEGIN; {NO_TIME_LIMIT}; {}; COMMIT", queries::ANALYZE_SEARCH_TABLES);
                client.batch_execute(&sql).await.map_err(map_pg)
            }
            .await;
            if let Err(e) = res {
                tracing::warn!(error = %e, "ANALYZE of the search tables failed");
            }
            stats.running.store(false, Ordering::Release);
        });
    }
}

pub(crate) fn map_pg(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 40001 serialization_failure, 40P01 deadlock_detected, 55P03 lock_not_available.
        if matches!(code, "40001" | "40P01" | "55P03") {
            return StoreError::Busy(db.message().to_owned());
        }
        // 57014 query_canceled: the statement ran past `statement_timeout`.
        if code == "57014" {
            return StoreError::TimedOut(
                "a database statement ran longer than the query time limit".into(),
            );
        }
        return StoreError::Internal(format!("{code}: {}", db.message()));
    }
    StoreError::Internal(e.to_string())
}

fn map_pool(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => map_pg(e),
        other => StoreError::Busy(format!("no database connection available: {other}")),
    }
}

/// The pool's connection manager for `target`, with TLS when its URL asks for it
/// (`sslmode=require`, `sslrootcert`: see the `tls` module).
fn manager(target: tls::Target) -> Manager {
    let config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    match target.tls {
        Some(tls) => Manager::from_config(target.config, tls, config),
        None => Manager::from_config(target.config, NoTls, config),
    }
}

/// A pool of at most `size` connections. A request waits at most [`POOL_WAIT`] for one (then
/// fails as `Busy`, which the server answers with 503 and `Retry-After`) and a new
/// connection is given [`CONNECT_TIMEOUT`], so that a stuck database shows as errors
/// instead of requests that never end.
fn pool_builder(manager: Manager, size: usize) -> deadpool_postgres::PoolBuilder {
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
}

/// Runs `sql` on a connection of its own (outside the pool), then closes it.
async fn execute_once(target: &tls::Target, sql: &str) -> Result<(), StoreError> {
    async fn run<T>(config: &tokio_postgres::Config, tls: T, sql: &str) -> Result<(), StoreError>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = config.connect(tls).await.map_err(map_pg)?;
        let task = tokio::spawn(connection);
        let result = client.batch_execute(sql).await.map_err(map_pg);
        drop(client);
        let _ = task.await;
        result
    }
    match &target.tls {
        Some(tls) => run(&target.config, tls.clone(), sql).await,
        None => run(&target.config, NoTls, sql).await,
    }
}

impl PostgresStore {
    /// Connects to `url` (a `postgres://` URL or a key=value string) and migrates the schema.
    /// With `schema`, every connection works in that schema (created if missing): tests use it
    /// to isolate themselves in one database.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(url, schema, &PostgresOptions::default()).await
    }

    /// [`connect`](PostgresStore::connect) with a pool size and query time limit; a read
    /// replica added later gets the same.
    pub async fn connect_with(
        url: &str,
        schema: Option<&str>,
        options: &PostgresOptions,
    ) -> Result<PostgresStore, StoreError> {
        let pool_size = options.pool_size;
        let mut target = tls::parse(url)?;
        if let Some(schema) = schema {
            if !schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(StoreError::Internal(format!("invalid schema name {schema}")));
            }
            // Create the schema on a connection of its own before the pool points at it.
            execute_once(&target, &format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await?;
            add_option(&mut target, &format!("-c search_path={schema}"));
        }
        if let Some(limit) = options.query_timeout {
            add_option(&mut target, &statement_timeout(limit));
        }
        let pool = pool_builder(manager(target), pool_size)
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let stats = Arc::new(Statistics {
            written: AtomicU64::new(0),
            threshold: AtomicU64::new(FIRST_ANALYZE),
            running: AtomicBool::new(false),
        });
        let large_writes = Arc::new(tokio::sync::Semaphore::new(large_write_turns(pool_size)));
        let store = PostgresStore {
            pool,
            replica: None,
            stats,
            params: ParamKeys::default(),
            large_writes,
            query_timeout: options.query_timeout,
        };
        {
            let mut client = store.pool.get().await.map_err(map_pool)?;
            queries::migrate(&mut client).await?;
        }
        Ok(store)
    }

    /// Sends searches that may lag ([`Store::search_replica`]: clients' own searches) to a
    /// read replica at `url` (a streaming replica of this database; never migrated from here,
    /// its schema comes from the primary). Checked once: its schema version must be this
    /// store's.
    pub async fn with_read_replica(mut self, url: &str) -> Result<PostgresStore, StoreError> {
        let mut target = tls::parse(url)?;
        if let Some(limit) = self.query_timeout {
            add_option(&mut target, &statement_timeout(limit));
        }
        let pool = pool_builder(manager(target), self.pool.status().max_size)
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let version = |pool: Pool| async move {
            let client = pool.get().await.map_err(map_pool)?;
            let row = client
                .query_one("SELECT COALESCE(MAX(version), 0) FROM kiln_schema_version", &[])
                .await
                .map_err(map_pg)?;
            Ok::<i32, StoreError>(row.get(0))
        };
        let (primary, replica) = (version(self.pool.clone()).await?, version(pool.clone()).await?);
        if primary != replica {
            return Err(StoreError::Internal(format!(
                "the read replica's schema is at version {replica}, the primary's at {primary}: \
                 is it a replica of this database?"
            )));
        }
        self.replica = Some(pool);
        Ok(self)
    }

    /// The most connections kept to the primary (and to a read replica).
    pub fn pool_size(&self) -> usize {
        self.pool.status().max_size
    }

    /// Whether the pool's connections to the primary are encrypted (TLS).
    pub async fn tls_in_use(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .await
            .map_err(map_pg)?;
        Ok(row.get(0))
    }

    /// Drops `schema` and everything in it, if it exists (tests clean up with it).
    pub async fn drop_schema(url: &str, schema: &str) -> Result<(), StoreError> {
        if !schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(StoreError::Internal(format!("invalid schema name {schema}")));
        }
        execute_once(&tls::parse(url)?, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(map_pool)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn read(
        &self,
        project: &ProjectId,
        resource_type: &str,
        id: &str,
    ) -> Result<StoredResource, StoreError> {
        queries::read_current(&self.client().await?, project, resource_type, id).await
    }

    async fn vread(
        &self,
        project: &ProjectId,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<StoredResource, StoreError> {
        queries::read_version(&self.client().await?, project, resource_type, id, version).await
    }

    async fn write(
        &self,
        project: &ProjectId,
        ops: Vec<WriteOp>,
        atomicity: Atomicity,
    ) -> Result<Vec<Result<WriteResult, StoreError>>, StoreError> {
        let rows: u64 = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { index, .. } => index.len() as u64 + 1,
                WriteOp::Delete { .. } => 1,
                WriteOp::Reindex { index, .. } => index.len() as u64,
            })
            .sum();
        let _turn = if ops.len() >= LARGE_WRITE {
            let turn = self.large_writes.acquire().await;
            Some(turn.map_err(|_| StoreError::Internal("the store is closing".into()))?)
        } else {
            None
        };
        let mut client = self.client().await?;
        let keys = match self.params.for_ops(project.as_str(), &ops) {
            Ok(keys) => keys,
            Err(missing) => {
                let found = queries::register_params(&client, project, &missing).await?;
                self.params.insert(project.as_str(), found);
                self.params.for_ops(project.as_str(), &ops).map_err(|missing| {
                    StoreError::Internal(format!("index parameters without keys: {missing:?}"))
                })?
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match queries::write(&mut client, project, &ops, &keys, atomicity).await {
                Err(StoreError::Busy(reason)) if attempt < WRITE_ATTEMPTS => {
                    tracing::debug!(%reason, attempt, "retrying a write after a lock conflict");
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64)).await;
                }
                other => {
                    if other.is_ok() {
                        self.note_written(rows);
                    }
                    return other;
                }
            }
        }
    }

    async fn history(
        &self,
        project: &ProjectId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<Vec<StoredResource>, StoreError> {
        queries::history(&self.client().await?, project, scope, query).await
    }

    async fn history_count(
        &self,
        project: &ProjectId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<u64, StoreError> {
        queries::history_count(&self.client().await?, project, scope, query).await
    }

    async fn search(
        &self,
        project: &ProjectId,
        request: &kiln_store::SearchRequest,
    ) -> Result<kiln_store::SearchPage, StoreError> {
        queries::search(&mut self.client().await?, project, request).await
    }

    async fn search_replica(
        &self,
        project: &ProjectId,
        request: &kiln_store::SearchRequest,
    ) -> Result<kiln_store::SearchPage, StoreError> {
        let Some(replica) = &self.replica else { return self.search(project, request).await };
        let mut client = replica.get().await.map_err(map_pool)?;
        queries::search(&mut client, project, request).await
    }

    async fn lookup_unique(
        &self,
        project: &ProjectId,
        namespace: &str,
        key: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        queries::lookup_unique(&self.client().await?, project, namespace, key).await
    }

    async fn lookup_key_all_projects(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Vec<(ProjectId, String, String)>, StoreError> {
        queries::lookup_key_all_projects(&self.client().await?, namespace, key).await
    }

    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        queries::get_setting(&self.client().await?, name).await
    }

    async fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        queries::put_setting(&self.client().await?, name, value).await
    }

    async fn put_setting_if_absent(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        queries::insert_setting_if_absent(&client, name, value).await?;
        queries::get_setting(&client, name)
            .await?
            .ok_or_else(|| StoreError::Internal(format!("setting {name} vanished")))
    }

    async fn enqueue_job(
        &self,
        project: &ProjectId,
        id: &str,
        node: &str,
        lease: Duration,
    ) -> Result<(), StoreError> {
        queries::enqueue_job(&self.client().await?, project, id, node, lease).await
    }

    async fn claim_jobs(
        &self,
        node: &str,
        lease: Duration,
        limit: usize,
        own: bool,
    ) -> Result<Vec<(ProjectId, String)>, StoreError> {
        queries::claim_jobs(&self.client().await?, node, lease, limit, own).await
    }

    async fn renew_jobs(
        &self,
        node: &str,
        lease: Duration,
    ) -> Result<Vec<(ProjectId, String)>, StoreError> {
        queries::renew_jobs(&self.client().await?, node, lease).await
    }

    async fn finish_job(&self, project: &ProjectId, id: &str) -> Result<(), StoreError> {
        queries::finish_job(&self.client().await?, project, id).await
    }

    async fn queued_jobs(&self) -> Result<Vec<kiln_store::QueuedJob>, StoreError> {
        queries::queued_jobs(&self.client().await?).await
    }

    async fn count_event(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        queries::count_event(&self.client().await?, key, ttl).await
    }

    async fn event_count(&self, key: &str) -> Result<u64, StoreError> {
        queries::event_count(&self.client().await?, key).await
    }

    async fn clear_events(&self, key: &str) -> Result<(), StoreError> {
        queries::clear_events(&self.client().await?, key).await
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        queries::is_empty(&self.client().await?).await
    }

    async fn close(&self) {
        self.pool.close();
        if let Some(replica) = &self.replica {
            replica.close();
        }
    }
}
