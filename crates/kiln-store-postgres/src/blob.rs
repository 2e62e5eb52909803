//! Binary content (Binary resources, bulk export and import files) kept in PostgreSQL, so that
//! every Kiln node on one database sees the same blobs and keeps nothing of its own on disk.
//!
//! A blob version is a `blob` row plus its bytes in `blob_chunk` rows of [`CHUNK`] bytes (the
//! last one shorter). A writer streams chunks under a row in state *writing*, each chunk its
//! own statement, and makes the row *live* on finish in one transaction that also retires the
//! previous live version of the key: readers see the old bytes or the new, never a mix.
//! Retired and abandoned rows are deleted by a sweep ([`RETIRED_KEPT`], [`ABANDONED_KEPT`])
//! that runs now and then as blobs are written, so a reader streaming a version that was just
//! replaced can finish it.
//!
//! Blobs written before a deployment moved to the database stay readable: with a `legacy`
//! file-system store, a key missing from the database is looked up there.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use kiln_store::{BlobError, BlobReader, BlobStore, BlobWriter, FsBlobStore, ProjectId, valid_key};

use crate::PostgresStore;

/// Bytes per `blob_chunk` row (every chunk but a blob's last has exactly this many).
pub const CHUNK: usize = 1024 * 1024;
/// How long a replaced or deleted version stays readable.
const RETIRED_KEPT: Duration = Duration::from_secs(3600);
/// How long an unfinished write may go on before its chunks are swept (a node that died).
const ABANDONED_KEPT: Duration = Duration::from_secs(24 * 3600);
/// Pieces a reader fetches ahead of what it has handed out.
const PREFETCH: usize = 2;
/// The least time between two sweeps on one node.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

const WRITING: i16 = 0;
const LIVE: i16 = 1;
const RETIRED: i16 = 2;

fn io_error(e: impl std::fmt::Display) -> BlobError {
    BlobError::Io(io::Error::other(e.to_string()))
}

/// Blobs in the database's `blob` and `blob_chunk` tables.
#[derive(Clone)]
pub struct PgBlobStore {
    pool: Pool,
    legacy: Option<Arc<FsBlobStore>>,
    last_sweep: Arc<Mutex<Option<Instant>>>,
}

impl PgBlobStore {
    /// Blobs in `store`'s database; with `legacy`, keys missing there are read from (and
    /// deleted in) that file-system store too.
    pub fn new(store: &PostgresStore, legacy: Option<FsBlobStore>) -> PgBlobStore {
        PgBlobStore {
            pool: store.pool.clone(),
            legacy: legacy.map(Arc::new),
            last_sweep: Arc::new(Mutex::new(None)),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, BlobError> {
        self.pool.get().await.map_err(io_error)
    }

    /// The live version of a key: `(id, len)`.
    async fn live(&self, project: &ProjectId, key: &str) -> Result<Option<(i64, i64)>, BlobError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, len FROM blob WHERE project = $1 AND key = $2 AND state = 1",
            )
            .await
            .map_err(io_error)?;
        let row = client.query_opt(&stmt, &[&project.as_str(), &key]).await.map_err(io_error)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Starts a version of `key` in state *writing*; returns its id.
    async fn begin(&self, project: &ProjectId, key: &str) -> Result<i64, BlobError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO blob (project, key, state) VALUES ($1, $2, $3) RETURNING id",
                &[&project.as_str(), &key, &WRITING],
            )
            .await
            .map_err(io_error)?;
        Ok(row.get(0))
    }

    async fn put_chunk(&self, id: i64, seq: i32, data: &[u8]) -> Result<(), BlobError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("INSERT INTO blob_chunk (blob, seq, data) VALUES ($1, $2, $3)")
            .await
            .map_err(io_error)?;
        client.execute(&stmt, &[&id, &seq, &data]).await.map_err(io_error)?;
        Ok(())
    }

    /// Makes version `id` the live one of its key, retiring the one before, in one
    /// transaction. Two writers finishing the same key at once: the later one's retiring
    /// statement may not see the version the other just published (it was not live when the
    /// statement began), so the unique index refuses it; it tries again and retires it then.
    async fn publish(
        &self,
        project: &ProjectId,
        key: &str,
        id: i64,
        len: i64,
    ) -> Result<(), BlobError> {
        let mut client = self.client().await?;
        let mut tries = 0;
        loop {
            match try_publish(&mut client, project, key, id, len).await {
                Err(e)
                    if tries < 3
                        && e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                {
                    tries += 1;
                }
                Err(e) => return Err(io_error(e)),
                Ok(0) => {
                    return Err(io_error(format!(
                        "blob {key}: the unfinished version {id} is gone"
                    )));
                }
                Ok(_) => break,
            }
        }
        self.maybe_sweep();
        Ok(())
    }

    /// Deletes retired versions past [`RETIRED_KEPT`] and unfinished ones past
    /// [`ABANDONED_KEPT`], at most once per [`SWEEP_EVERY`] on this node, in the background.
    fn maybe_sweep(&self) {
        {
            let Ok(mut last) = self.last_sweep.lock() else { return };
            if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let store = self.clone();
        tokio::spawn(async move {
            match store.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(versions = n, "swept old blob versions"),
                Err(e) => tracing::warn!(error = %e, "sweeping old blob versions failed"),
            }
        });
    }

    /// Deletes what [`PgBlobStore::maybe_sweep`] describes, now; returns the versions removed.
    pub async fn sweep(&self) -> Result<u64, BlobError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM blob WHERE (state = $1 AND changed < now() - make_interval(secs => $2)) \
                 OR (state = $3 AND changed < now() - make_interval(secs => $4))",
                &[
                    &RETIRED,
                    &(RETIRED_KEPT.as_secs() as f64),
                    &WRITING,
                    &(ABANDONED_KEPT.as_secs() as f64),
                ],
            )
            .await
            .map_err(io_error)
    }

    /// Reads chunk `seq` of version `id`.
    async fn chunk(pool: &Pool, id: i64, seq: i32) -> Result<Option<Vec<u8>>, io::Error> {
        let client = pool.get().await.map_err(io::Error::other)?;
        let stmt = client
            .prepare_cached("SELECT data FROM blob_chunk WHERE blob = $1 AND seq = $2")
            .await
            .map_err(io::Error::other)?;
        let row = client.query_opt(&stmt, &[&id, &seq]).await.map_err(io::Error::other)?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// A blob being written: chunks of [`CHUNK`] bytes go out as they fill.
struct PgBlobWriter {
    store: PgBlobStore,
    project: ProjectId,
    key: String,
    id: i64,
    buf: Vec<u8>,
    seq: i32,
    len: u64,
    finished: bool,
}

impl PgBlobWriter {
    async fn flush_chunk(&mut self) -> Result<(), BlobError> {
        let rest = self.buf.split_off(self.buf.len().min(CHUNK));
        let chunk = std::mem::replace(&mut self.buf, rest);
        self.store.put_chunk(self.id, self.seq, &chunk).await?;
        self.seq += 1;
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for PgBlobWriter {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.buf.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
        while self.buf.len() >= CHUNK {
            self.flush_chunk().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, BlobError> {
        if !self.buf.is_empty() {
            self.flush_chunk().await?;
        }
        let len = i64::try_from(self.len).map_err(io_error)?;
        self.store.publish(&self.project, &self.key, self.id, len).await?;
        self.finished = true;
        Ok(self.len)
    }
}

impl Drop for PgBlobWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // An abandoned write: its chunks go now if a runtime is at hand, else with the sweep.
        let (pool, id) = (self.store.pool.clone(), self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Ok(client) = pool.get().await {
                    let _ = client
                        .execute("DELETE FROM blob WHERE id = $1 AND state = $2", &[&id, &WRITING])
                        .await;
                }
            });
        }
    }
}

#[async_trait]
impl BlobStore for PgBlobStore {
    async fn put(&self, project: &ProjectId, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let mut writer = self.create(project, key).await?;
        writer.write(bytes).await?;
        writer.finish().await?;
        Ok(())
    }

    async fn get(&self, project: &ProjectId, key: &str) -> Result<Vec<u8>, BlobError> {
        let mut reader = self.open(project, key).await?;
        let mut out = Vec::with_capacity(usize::try_from(reader.len).unwrap_or(0));
        tokio::io::AsyncReadExt::read_to_end(&mut reader.reader, &mut out).await?;
        Ok(out)
    }

    async fn create(
        &self,
        project: &ProjectId,
        key: &str,
    ) -> Result<Box<dyn BlobWriter>, BlobError> {
        if !valid_key(project, key) {
            return Err(BlobError::NotFound);
        }
        let id = self.begin(project, key).await?;
        Ok(Box::new(PgBlobWriter {
            store: self.clone(),
            project: project.clone(),
            key: key.to_owned(),
            id,
            buf: Vec::new(),
            seq: 0,
            len: 0,
            finished: false,
        }))
    }

    async fn open(&self, project: &ProjectId, key: &str) -> Result<BlobReader, BlobError> {
        if !valid_key(project, key) {
            return Err(BlobError::NotFound);
        }
        let Some((id, len)) = self.live(project, key).await? else {
            return match &self.legacy {
                Some(fs) => fs.open(project, key).await,
                None => Err(BlobError::NotFound),
            };
        };
        let total = u64::try_from(len).map_err(io_error)?;
        // A task fetches the pieces in order, at most PREFETCH ahead of the reader, so the
        // next piece comes from the database while the last one is still being sent: memory
        // stays a few pieces whatever the blob's size, and the task ends when the reader is
        // dropped (its channel closes).
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(PREFETCH);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let (mut seq, mut read) = (0i32, 0u64);
            while read < total {
                let piece = match PgBlobStore::chunk(&pool, id, seq).await {
                    Ok(Some(data)) if !data.is_empty() => {
                        read += data.len() as u64;
                        seq += 1;
                        Ok(bytes::Bytes::from(data))
                    }
                    Ok(_) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("blob version {id}: chunk {seq} is missing"),
                    )),
                    Err(e) => Err(e),
                };
                let failed = piece.is_err();
                if tx.send(piece).await.is_err() || failed {
                    return;
                }
            }
        });
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        });
        let reader = tokio_util::io::StreamReader::new(Box::pin(chunks));
        Ok(BlobReader { len: total, reader: Box::pin(reader) })
    }

    async fn delete_folder(&self, project: &ProjectId, prefix: &str) -> Result<(), BlobError> {
        if !valid_key(project, prefix) {
            return Err(BlobError::NotFound);
        }
        let client = self.client().await?;
        // Retired, not deleted: a download in progress finishes; the sweep removes them.
        client
            .execute(
                "UPDATE blob SET state = $4, changed = now() \
                 WHERE project = $1 AND state = 1 AND (key = $2 OR starts_with(key, $3))",
                &[&project.as_str(), &prefix, &format!("{prefix}/"), &RETIRED],
            )
            .await
            .map_err(io_error)?;
        if let Some(fs) = &self.legacy {
            fs.delete_folder(project, prefix).await?;
        }
        self.maybe_sweep();
        Ok(())
    }
}

/// One attempt of [`PgBlobStore::publish`]: the rows made live (1, or 0 if the version was
/// swept meanwhile).
async fn try_publish(
    client: &mut deadpool_postgres::Object,
    project: &ProjectId,
    key: &str,
    id: i64,
    len: i64,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE blob SET state = $3, changed = now() \
         WHERE project = $1 AND key = $2 AND state = 1",
        &[&project.as_str(), &key, &RETIRED],
    )
    .await?;
    let n = tx
        .execute(
            "UPDATE blob SET state = $2, len = $3, changed = now() WHERE id = $1 AND state = $4",
            &[&id, &LIVE, &len, &WRITING],
        )
        .await?;
    tx.commit().await?;
    Ok(n)
}
