//! Kiln's embedded storage backend on SQLite.
//!
//! Shape: one writer thread owns the only read-write connection and is fed by a channel; a
//! small pool of read-only connections serves reads on tokio's blocking pool. The database runs
//! in WAL mode, so readers never block the writer and see only committed data.
//!
//! Group commit: the writer takes every request waiting in its queue (up to [`MAX_GROUP`]),
//! runs each in its own SAVEPOINT inside one transaction, commits once (one fsync with
//! `synchronous=FULL`), then answers all of them. A failing request rolls back only its own
//! savepoint. This is how durable small writes exceed the disk's fsync rate.
//!
//! Every SQL string of this backend lives in this crate: `migrations/`, [`queries`], and
//! `dump.rs` ([`SqliteDump`]: the raw table reads of `kiln migrate-store`).

mod checkpoint;
mod dump;
mod queries;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_store::sql::ParamKeys;
use kiln_store::{
    Atomicity, HistoryQuery, HistoryScope, ProjectId, QueuedJob, Store, StoreError, StoredResource,
    WriteOp, WriteResult,
};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::checkpoint::Checkpointer;
use crate::writer::Job;

pub use crate::dump::SqliteDump;

/// Most write requests committed together in one transaction.
pub const MAX_GROUP: usize = 512;

/// Read connections kept open for reuse. Opening one re-reads the schema, so the pool must be
/// at least as large as the usual number of concurrent reads.
const READ_POOL: usize = 64;

/// How durable a commit is before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced on every commit; survives power loss.
    Full,
    /// `synchronous=NORMAL`: survives a process crash (`kill -9`), may lose the last
    /// commits on power loss. Opt-in.
    Normal,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub durability: Durability,
    /// The longest a search may run before it is stopped ([`StoreError::TimedOut`]); `None`
    /// for no limit.
    pub query_timeout: Option<std::time::Duration>,
}

impl Default for SqliteOptions {
    fn default() -> SqliteOptions {
        SqliteOptions { durability: Durability::Full, query_timeout: None }
    }
}

/// A pooled read-only connection, and when the search running on it must stop: milliseconds
/// since [`epoch`], 0 for never. SQLite calls the connection's progress handler every
/// [`PROGRESS_OPS`] virtual-machine steps; once past the deadline it interrupts the statement.
struct Reader {
    conn: Connection,
    deadline: Arc<std::sync::atomic::AtomicU64>,
}

/// Virtual-machine steps between two looks at the clock (well under a millisecond of work).
const PROGRESS_OPS: std::os::raw::c_int = 4096;

/// The instant reader deadlines count from: a monotonic clock, since the wall clock (`now_ms`,
/// used for what is shared with other processes) may step.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// A time limit in milliseconds (at least 1), 0 for none.
fn timeout_ms(limit: Option<std::time::Duration>) -> u64 {
    limit.map_or(0, |l| (l.as_millis() as u64).max(1))
}

fn millis_since_epoch() -> u64 {
    epoch().elapsed().as_millis() as u64
}

pub struct SqliteStore {
    path: PathBuf,
    /// Sends work to the writer thread; `None` after `close`.
    writer: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// Idle read-only connections. A read takes one (or opens a new one) and returns it.
    readers: Arc<Mutex<Vec<Reader>>>,
    /// The time limit of a search in milliseconds, 0 for none (`SqliteOptions::query_timeout`,
    /// [`SqliteStore::set_query_timeout`]).
    query_timeout_ms: std::sync::atomic::AtomicU64,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Copies the WAL back into the database file off the writer (`checkpoint.rs`).
    checkpointer: Mutex<Option<Checkpointer>>,
    /// The index parameters' keys, resolved before a write is queued so the writer only binds.
    params: Arc<ParamKeys>,
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// A new read-only connection, with the progress handler that enforces its deadline.
fn open_reader(path: &Path) -> Result<Reader, StoreError> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(map_sqlite)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(map_sqlite)?;
    queries::register_functions(&conn).map_err(map_sqlite)?;
    let deadline = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watched = deadline.clone();
    conn.progress_handler(
        PROGRESS_OPS,
        Some(move || {
            let at = watched.load(std::sync::atomic::Ordering::Relaxed);
            at != 0 && millis_since_epoch() >= at
        }),
    )
    .map_err(map_sqlite)?;
    Ok(Reader { conn, deadline })
}

pub(crate) fn map_sqlite(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(code, _) = &e
        && matches!(
            code.code,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        )
    {
        return StoreError::Busy(e.to_string());
    }
    // Only a reader's progress handler interrupts a statement: its deadline passed.
    if let rusqlite::Error::SqliteFailure(code, _) = &e
        && code.code == rusqlite::ErrorCode::OperationInterrupted
    {
        return StoreError::TimedOut("the search ran longer than the query time limit".into());
    }
    internal(e)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file `dir/kiln.db` and migrates it.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(internal)?;
        let path = dir.join("kiln.db");
        let mut conn = Connection::open(&path).map_err(map_sqlite)?;
        let synchronous = match options.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; PRAGMA busy_timeout=10000; \
             PRAGMA foreign_keys=OFF; PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY; \
             PRAGMA wal_autocheckpoint={fallback}; PRAGMA journal_size_limit=67108864;",
            fallback = checkpoint::WRITER_FALLBACK,
        ))
        .map_err(map_sqlite)?;
        queries::register_functions(&conn).map_err(map_sqlite)?;
        queries::migrate(&mut conn)?;
        let checkpointer = Checkpointer::start(&path, synchronous)?;
        let params = Arc::new(ParamKeys::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let writer_params = params.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-sqlite-writer".into())
            .spawn(move || writer::run(conn, rx, writer_params))
            .map_err(internal)?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(Some(tx)),
            readers: Arc::new(Mutex::new(Vec::new())),
            query_timeout_ms: std::sync::atomic::AtomicU64::new(timeout_ms(options.query_timeout)),
            writer_thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(Some(checkpointer)),
            params,
        })
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let guard = self.writer.lock().map_err(internal)?;
        match guard.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| StoreError::Internal("store is closed".into())),
            None => Err(StoreError::Internal("store is closed".into())),
        }
    }

    /// Runs a small write on the writer thread, in its next group, and returns its result
    /// once the group has committed.
    async fn exec<T: Send + 'static>(
        &self,
        run: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = move |conn: &Connection| -> writer::Deliver {
            let result = run(conn);
            Box::new(move |failed: Option<StoreError>| {
                let _ = reply.send(match failed {
                    Some(e) => Err(e),
                    None => result,
                });
            })
        };
        self.send(Job::Exec(Box::new(job)))?;
        rx.await.map_err(|_| StoreError::Internal("writer stopped".into()))?
    }

    /// Runs `f` with a pooled read-only connection on the blocking pool.
    async fn with_reader<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.with_reader_until(None, f).await
    }

    /// [`with_reader`](SqliteStore::with_reader) for a search: stopped with
    /// [`StoreError::TimedOut`] once it has run for the store's query time limit.
    async fn with_search_reader<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let ms = self.query_timeout_ms.load(std::sync::atomic::Ordering::Relaxed);
        let limit = (ms > 0).then(|| std::time::Duration::from_millis(ms));
        self.with_reader_until(limit, f).await
    }

    /// Changes the time limit of searches started from now on.
    pub fn set_query_timeout(&self, limit: Option<std::time::Duration>) {
        self.query_timeout_ms.store(timeout_ms(limit), std::sync::atomic::Ordering::Relaxed);
    }

    async fn with_reader_until<T, F>(
        &self,
        limit: Option<std::time::Duration>,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let reader = readers.lock().ok().and_then(|mut it| it.pop());
            let reader = match reader {
                Some(reader) => reader,
                None => open_reader(&path)?,
            };
            // Counted from when the search starts on a connection, not from when it queued.
            let deadline = match timeout_ms(limit) {
                0 => 0,
                ms => millis_since_epoch() + ms,
            };
            reader.deadline.store(deadline, std::sync::atomic::Ordering::Relaxed);
            let res = f(&reader.conn);
            reader.deadline.store(0, std::sync::atomic::Ordering::Relaxed);
            if let Ok(mut pool) = readers.lock()
                && pool.len() < READ_POOL
            {
                pool.push(reader);
            }
            res
        })
        .await
        .map_err(internal)?
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn read(
        &self,
        project: &ProjectId,
        resource_type: &str,
        id: &str,
    ) -> Result<StoredResource, StoreError> {
        let (project, ty, id) = (project.clone(), resource_type.to_owned(), id.to_owned());
        self.with_reader(move |conn| queries::read_current(conn, &project, &ty, &id)).await
    }

    async fn vread(
        &self,
        project: &ProjectId,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<StoredResource, StoreError> {
        let (project, ty, id) = (project.clone(), resource_type.to_owned(), id.to_owned());
        self.with_reader(move |conn| queries::read_version(conn, &project, &ty, &id, version)).await
    }

    async fn write(
        &self,
        project: &ProjectId,
        ops: Vec<WriteOp>,
        atomicity: Atomicity,
    ) -> Result<Vec<Result<WriteResult, StoreError>>, StoreError> {
        let keys = match self.params.for_ops(project.as_str(), &ops) {
            Ok(keys) => keys,
            Err(missing) => {
                let (reply, rx) = oneshot::channel();
                self.send(Job::ParamKeys { project: project.clone(), missing, reply })?;
                rx.await.map_err(|_| StoreError::Internal("writer stopped".into()))??;
                self.params.for_ops(project.as_str(), &ops).map_err(|missing| {
                    StoreError::Internal(format!("index parameters without keys: {missing:?}"))
                })?
            }
        };
        let (reply, rx) = oneshot::channel();
        self.send(Job::Write { project: project.clone(), ops, keys, atomicity, reply })?;
        let (outcome, ops) = rx.await.map_err(|_| StoreError::Internal("writer stopped".into()))?;
        // Freed here, not on the writer thread; a large batch (an import's) on a blocking
        // thread, so that its caller can send the next one sooner.
        if ops.len() >= 64 {
            tokio::task::spawn_blocking(move || drop(ops));
        } else {
            drop(ops);
        }
        outcome
    }

    async fn history(
        &self,
        project: &ProjectId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let (project, scope, query) = (project.clone(), scope.clone(), query.clone());
        self.with_reader(move |conn| queries::history(conn, &project, &scope, &query)).await
    }

    async fn history_count(
        &self,
        project: &ProjectId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<u64, StoreError> {
        let (project, scope, query) = (project.clone(), scope.clone(), query.clone());
        self.with_reader(move |conn| queries::history_count(conn, &project, &scope, &query)).await
    }

    async fn search(
        &self,
        project: &ProjectId,
        request: &kiln_store::SearchRequest,
    ) -> Result<kiln_store::SearchPage, StoreError> {
        let (project, request) = (project.clone(), request.clone());
        self.with_search_reader(move |conn| queries::search(conn, &project, &request)).await
    }

    async fn lookup_unique(
        &self,
        project: &ProjectId,
        namespace: &str,
        key: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let (project, namespace, key) = (project.clone(), namespace.to_owned(), key.to_owned());
        self.with_reader(move |conn| queries::lookup_unique(conn, &project, &namespace, &key)).await
    }

    async fn lookup_key_all_projects(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Vec<(ProjectId, String, String)>, StoreError> {
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        self.with_reader(move |conn| queries::lookup_key_all_projects(conn, &namespace, &key)).await
    }

    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.to_owned();
        self.with_reader(move |conn| queries::get_setting(conn, &name)).await
    }

    async fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.exec(move |conn| queries::put_setting(conn, &name, &value, false)).await
    }

    async fn put_setting_if_absent(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (owned, value) = (name.to_owned(), value.to_vec());
        self.exec(move |conn| queries::put_setting(conn, &owned, &value, true)).await?;
        self.get_setting(name)
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
        let (project, id, node) = (project.clone(), id.to_owned(), node.to_owned());
        self.exec(move |conn| {
            queries::enqueue_job(conn, &project, &id, &node, now_ms() + millis(lease))
        })
        .await
    }

    async fn claim_jobs(
        &self,
        node: &str,
        lease: Duration,
        limit: usize,
        own: bool,
    ) -> Result<Vec<(ProjectId, String)>, StoreError> {
        let node = node.to_owned();
        self.exec(move |conn| {
            let now = now_ms();
            queries::claim_jobs(conn, &node, now, now + millis(lease), limit, own)
        })
        .await
    }

    async fn renew_jobs(
        &self,
        node: &str,
        lease: Duration,
    ) -> Result<Vec<(ProjectId, String)>, StoreError> {
        let node = node.to_owned();
        self.exec(move |conn| queries::renew_jobs(conn, &node, now_ms() + millis(lease))).await
    }

    async fn finish_job(&self, project: &ProjectId, id: &str) -> Result<(), StoreError> {
        let (project, id) = (project.clone(), id.to_owned());
        self.exec(move |conn| queries::finish_job(conn, &project, &id)).await
    }

    async fn queued_jobs(&self) -> Result<Vec<QueuedJob>, StoreError> {
        self.with_reader(|conn| queries::queued_jobs(conn, now_ms())).await
    }

    async fn count_event(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let key = key.to_owned();
        self.exec(move |conn| {
            let now = now_ms();
            queries::count_event(conn, &key, now, now + millis(ttl))
        })
        .await
    }

    async fn event_count(&self, key: &str) -> Result<u64, StoreError> {
        let key = key.to_owned();
        self.with_reader(move |conn| queries::event_count(conn, &key, now_ms())).await
    }

    async fn clear_events(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.exec(move |conn| queries::clear_events(conn, &key)).await
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        self.with_reader(queries::is_empty).await
    }

    async fn close(&self) {
        // The checkpointer first: the writer's last act is a full checkpoint of its own.
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut it| it.take());
        if let Some(checkpointer) = checkpointer {
            let _ = tokio::task::spawn_blocking(move || checkpointer.stop()).await;
        }
        let sender = self.writer.lock().ok().and_then(|mut it| it.take());
        drop(sender);
        let thread = self.writer_thread.lock().ok().and_then(|mut it| it.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Ok(mut pool) = self.readers.lock() {
            pool.clear();
        }
    }
}

/// Milliseconds since the epoch: the clock of the job queue and the event counters.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}
