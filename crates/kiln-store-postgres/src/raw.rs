//! Raw rows in and out of the whole schema ([`kiln_store::raw`]): the target side of
//! `kiln migrate-store`.
//!
//! Loading ([`RawLoader`]) is one transaction from `BEGIN` to `COMMIT`: it locks every table,
//! empties them (`TRUNCATE`, so the target is exactly the copy), streams each table in with
//! one binary `COPY … FREEZE` (rows written frozen and all-visible, so index-only scans need no
//! `VACUUM` first), and at the end moves the `rid`, `seq` and `sp_param` sequences past the
//! copied keys. A failure anywhere, or a loader dropped before [`RawLoader::commit`], leaves the
//! database as it was. Reading ([`PostgresStore::raw_scan`], [`RawLoader::scan`]) pages through
//! a cursor in one snapshot.

use std::marker::PhantomData;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::GenericClient;
use kiln_store::raw::{BatchLimits, Kind, RAW_SCHEMA_VERSION, RawBatch, RawTable, RawValue};
use kiln_store::{ProjectId, StoreError};
use tokio_postgres::Row;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::{NO_TIME_LIMIT, PostgresStore, map_pg, map_pool};

/// Rows fetched from a cursor per round trip while scanning.
const FETCH_ROWS: usize = 1_000;

/// Instants further than this from the epoch (about 200,000 years) are refused rather than
/// handed to PostgreSQL, whose `timestamptz` ends in the year 294276.
const MAX_MILLIS: i64 = 6_300_000_000_000_000;

/// The sequences behind generated keys, moved past the copied rows after a load.
const SEQUENCES: [(&str, &str); 3] = [("resource", "rid"), ("history", "seq"), ("sp_param", "id")];

fn select_sql(table: RawTable) -> String {
    let names: Vec<&str> = table.columns().iter().map(|c| c.name).collect();
    format!("SELECT {} FROM {}", names.join(", "), table.name())
}

impl PostgresStore {
    /// The schema version the database is at (after the migrations `connect` ran).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COALESCE(MAX(version), 0)::bigint FROM kiln_schema_version", &[])
            .await
            .map_err(map_pg)?;
        Ok(row.get(0))
    }

    /// The names of the tables in the store's schema (for checking that [`RawTable::ALL`]
    /// covers it); `kiln_schema_version` included.
    pub async fn table_names(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
                 ORDER BY 1",
                &[],
            )
            .await
            .map_err(map_pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The rows of `table`.
    pub async fn raw_count(&self, table: RawTable) -> Result<u64, StoreError> {
        count(&self.client().await?, table).await
    }

    /// Reads every row of `table` in one read-only snapshot and hands them to `sink` in
    /// batches of at most `limits`. Stops at the first error, the sink's included.
    pub async fn raw_scan(
        &self,
        table: RawTable,
        limits: BatchLimits,
        sink: impl FnMut(RawBatch) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        check_version(self).await?;
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(map_pg)?;
        scan(&tx, table, limits, sink).await?;
        tx.commit().await.map_err(map_pg)
    }

    /// Refreshes the planner's statistics of every table (after a load).
    pub async fn analyze(&self) -> Result<(), StoreError> {
        let names: Vec<&str> = RawTable::ALL.iter().map(|t| t.name()).collect();
        let client = self.client().await?;
        let sql = format!("BEGIN; {NO_TIME_LIMIT}; ANALYZE {}; COMMIT", names.join(", "));
        client.batch_execute(&sql).await.map_err(map_pg)
    }

    /// Starts a raw load: one transaction, every table locked against other sessions until
    /// it ends. See [`RawLoader`].
    pub async fn raw_loader(&self) -> Result<RawLoader, StoreError> {
        check_version(self).await?;
        let client = self.pool.get().await.map_err(map_pool)?;
        let names: Vec<&str> = RawTable::ALL.iter().map(|t| t.name()).collect();
        client
            .batch_execute(&format!(
                "BEGIN; {NO_TIME_LIMIT}; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                names.join(", ")
            ))
            .await
            .map_err(map_pg)?;
        Ok(RawLoader { client: Some(client) })
    }
}

async fn check_version(store: &PostgresStore) -> Result<(), StoreError> {
    let version = store.schema_version().await?;
    if version != RAW_SCHEMA_VERSION {
        return Err(StoreError::Internal(format!(
            "the database is at schema version {version}, but raw copies know version {RAW_SCHEMA_VERSION}"
        )));
    }
    Ok(())
}

async fn count<C: GenericClient + Sync>(client: &C, table: RawTable) -> Result<u64, StoreError> {
    let row = client
        .query_one(&format!("SELECT COUNT(*) FROM {}", table.name()), &[])
        .await
        .map_err(map_pg)?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Reads every row of `table` through a cursor (inside the caller's transaction), in
/// batches of at most `limits`.
async fn scan<C: GenericClient + Sync>(
    client: &C,
    table: RawTable,
    limits: BatchLimits,
    mut sink: impl FnMut(RawBatch) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    client
        .batch_execute(&format!("DECLARE kiln_raw_scan NO SCROLL CURSOR FOR {}", select_sql(table)))
        .await
        .map_err(map_pg)?;
    let fetch = client
        .prepare(&format!("FETCH {} FROM kiln_raw_scan", limits.rows.clamp(1, FETCH_ROWS)))
        .await
        .map_err(map_pg)?;
    let columns = table.columns();
    let mut batch = RawBatch::new(table);
    loop {
        let rows = client.query(&fetch, &[]).await.map_err(map_pg)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            for (i, column) in columns.iter().enumerate() {
                batch.push(
                    decode(row, i, column.kind).map_err(|e| {
                        StoreError::Internal(format!("{table}.{}: {e}", column.name))
                    })?,
                );
            }
            if batch.is_full(limits) {
                sink(batch.take())?;
            }
        }
    }
    if !batch.is_empty() {
        sink(batch)?;
    }
    client.batch_execute("CLOSE kiln_raw_scan").await.map_err(map_pg)
}

/// A bulk load in progress: one open transaction on one connection. Dropped without
/// [`RawLoader::commit`], its connection is closed, and PostgreSQL rolls everything back.
pub struct RawLoader {
    client: Option<deadpool_postgres::Object>,
}

impl RawLoader {
    fn client(&self) -> Result<&deadpool_postgres::Object, StoreError> {
        self.client.as_ref().ok_or_else(|| StoreError::Internal("the load has ended".into()))
    }

    /// Rows each table holds now (inside the load's transaction, with every table locked).
    pub async fn counts(&self) -> Result<Vec<(RawTable, u64)>, StoreError> {
        let client = self.client()?;
        let mut out = Vec::with_capacity(RawTable::ALL.len());
        for table in RawTable::ALL {
            out.push((table, count(client, table).await?));
        }
        Ok(out)
    }

    /// Reads every row of `table` as this load's transaction sees it (what it has loaded),
    /// like [`PostgresStore::raw_scan`].
    pub async fn scan(
        &self,
        table: RawTable,
        limits: BatchLimits,
        sink: impl FnMut(RawBatch) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        scan(self.client()?, table, limits, sink).await
    }

    /// Empties every table (and restarts their sequences), binary content (`blob`) included.
    /// A load always starts with it: the target then holds exactly what is loaded, and
    /// `COPY … FREEZE` needs tables emptied in the same transaction.
    pub async fn clear(&self) -> Result<(), StoreError> {
        let names: Vec<&str> = RawTable::ALL.iter().map(|t| t.name()).collect();
        self.client()?
            // Binary content in the database goes too: the load replaces the whole store.
            .batch_execute(&format!(
                "TRUNCATE {}, blob_chunk, blob RESTART IDENTITY",
                names.join(", ")
            ))
            .await
            .map_err(map_pg)
    }

    /// Starts streaming rows into `table` (one binary `COPY`). Finish it before the next.
    pub async fn copy(&self, table: RawTable) -> Result<RawCopy<'_>, StoreError> {
        let client = self.client()?;
        let columns = table.columns();
        let stmt =
            client.prepare(&format!("{} LIMIT 0", select_sql(table))).await.map_err(map_pg)?;
        let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
        if types.len() != columns.len() {
            return Err(StoreError::Internal(format!("{table}: unexpected columns")));
        }
        let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
        let sql = format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary, FREEZE)",
            table.name(),
            names.join(", ")
        );
        let sink = client.copy_in(sql.as_str()).await.map_err(map_pg)?;
        let writer = Box::pin(BinaryCopyInWriter::new(sink, &types));
        Ok(RawCopy { table, writer, types, rows: 0, _load: PhantomData })
    }

    /// Moves the key sequences past the loaded rows and commits.
    /// Loads `content` as the live blob `key` of `project` inside this load's transaction
    /// (the blob tables are emptied by [`RawLoader::clear`] with the rest, and a rollback takes
    /// the blobs back too), in pieces of [`crate::blob::CHUNK`] bytes, as
    /// [`crate::PgBlobStore`] stores them. Returns the size.
    pub async fn load_blob(
        &self,
        project: &ProjectId,
        key: &str,
        content: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
    ) -> Result<u64, StoreError> {
        use tokio::io::AsyncReadExt;
        if !kiln_store::valid_key(project, key) {
            return Err(StoreError::Invalid(format!("not a blob key: {project}/{key}")));
        }
        let client = self.client()?;
        let row = client
            .query_one(
                "INSERT INTO blob (project, key, state) VALUES ($1, $2, 1) RETURNING id",
                &[&project.as_str(), &key],
            )
            .await
            .map_err(map_pg)?;
        let id: i64 = row.get(0);
        let insert = client
            .prepare("INSERT INTO blob_chunk (blob, seq, data) VALUES ($1, $2, $3)")
            .await
            .map_err(map_pg)?;
        let (mut seq, mut len) = (0i32, 0u64);
        let mut buf = vec![0u8; crate::blob::CHUNK];
        loop {
            // Fill a whole chunk (reads may return less) unless the content ends first.
            let mut filled = 0;
            while filled < buf.len() {
                let n = content
                    .read(&mut buf[filled..])
                    .await
                    .map_err(|e| StoreError::Internal(format!("reading {key}: {e}")))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            client.execute(&insert, &[&id, &seq, &&buf[..filled]]).await.map_err(map_pg)?;
            seq += 1;
            len += filled as u64;
            if filled < buf.len() {
                break;
            }
        }
        let total = i64::try_from(len).map_err(|e| StoreError::Internal(e.to_string()))?;
        client
            .execute("UPDATE blob SET len = $2 WHERE id = $1", &[&id, &total])
            .await
            .map_err(map_pg)?;
        Ok(len)
    }

    /// Hands the bytes of the live blob `key` of `project`, as this load's transaction sees
    /// them, to `sink` in order; returns the size, or `None` when there is no such blob.
    pub async fn read_blob(
        &self,
        project: &ProjectId,
        key: &str,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<Option<u64>, StoreError> {
        let client = self.client()?;
        let Some(row) = client
            .query_opt(
                "SELECT id, len FROM blob WHERE project = $1 AND key = $2 AND state = 1",
                &[&project.as_str(), &key],
            )
            .await
            .map_err(map_pg)?
        else {
            return Ok(None);
        };
        let (id, len): (i64, i64) = (row.get(0), row.get(1));
        // A piece at a time: memory stays one piece whatever the blob's size.
        let select = client
            .prepare("SELECT data FROM blob_chunk WHERE blob = $1 AND seq = $2")
            .await
            .map_err(map_pg)?;
        let (mut read, mut seq) = (0u64, 0i32);
        while i64::try_from(read).is_ok_and(|r| r < len) {
            let Some(row) = client.query_opt(&select, &[&id, &seq]).await.map_err(map_pg)? else {
                break;
            };
            let data: &[u8] = row.get(0);
            if data.is_empty() {
                break;
            }
            read += data.len() as u64;
            sink(data);
            seq += 1;
        }
        if i64::try_from(read).ok() != Some(len) {
            return Err(StoreError::Internal(format!(
                "blob {project}/{key}: {read} bytes in its pieces, {len} recorded"
            )));
        }
        Ok(Some(read))
    }

    pub async fn commit(mut self) -> Result<(), StoreError> {
        let client = self.client()?;
        for (table, column) in SEQUENCES {
            client
                .batch_execute(&format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
                     COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
                ))
                .await
                .map_err(map_pg)?;
        }
        client.batch_execute("COMMIT").await.map_err(map_pg)?;
        // Committed: the connection can go back to the pool.
        self.client.take();
        Ok(())
    }

    /// Undoes everything loaded so far.
    pub async fn rollback(mut self) -> Result<(), StoreError> {
        let res = self.client()?.batch_execute("ROLLBACK").await.map_err(map_pg);
        if res.is_ok() {
            self.client.take();
        }
        res
    }
}

impl Drop for RawLoader {
    fn drop(&mut self) {
        // Never hand a connection with an open transaction back to the pool: closing it
        // makes PostgreSQL roll the transaction back.
        if let Some(object) = self.client.take() {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

/// One table's rows on their way in.
pub struct RawCopy<'a> {
    table: RawTable,
    writer: Pin<Box<BinaryCopyInWriter>>,
    types: Vec<Type>,
    rows: u64,
    _load: PhantomData<&'a RawLoader>,
}

impl RawCopy<'_> {
    /// Sends a batch's rows.
    pub async fn write(&mut self, batch: &RawBatch) -> Result<(), StoreError> {
        if batch.table() != self.table {
            return Err(StoreError::Internal(format!(
                "rows of {} sent to {}",
                batch.table(),
                self.table
            )));
        }
        let columns = self.table.columns();
        for row in batch.rows() {
            let mut cells = Vec::with_capacity(row.len());
            for ((value, ty), column) in row.iter().zip(&self.types).zip(&columns) {
                cells.push(cell(value, ty).map_err(|e| {
                    StoreError::Internal(format!("{}.{}: {e}", self.table, column.name))
                })?);
            }
            let refs: Vec<&(dyn ToSql + Sync)> =
                cells.iter().map(|c| c.as_ref() as &(dyn ToSql + Sync)).collect();
            self.writer.as_mut().write(&refs).await.map_err(|e| {
                StoreError::Internal(format!("copying into {}: {}", self.table, map_pg(e)))
            })?;
            self.rows += 1;
        }
        Ok(())
    }

    /// Ends the `COPY`; returns the rows PostgreSQL took.
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        let n = self.writer.as_mut().finish().await.map_err(|e| {
            StoreError::Internal(format!("copying into {}: {}", self.table, map_pg(e)))
        })?;
        if n != self.rows {
            return Err(StoreError::Internal(format!(
                "{}: sent {} rows, PostgreSQL took {n}",
                self.table, self.rows
            )));
        }
        Ok(n)
    }
}

type Cell<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// A raw value as the PostgreSQL type of its column.
fn cell<'a>(value: &'a RawValue, ty: &Type) -> Result<Cell<'a>, String> {
    let wrong = || format!("a {value:?} cannot be stored as {ty}");
    Ok(match (ty, value) {
        (&Type::INT8, RawValue::Int(i)) => Box::new(*i),
        (&Type::INT8, RawValue::Null) => Box::new(None::<i64>),
        (&Type::INT4, RawValue::Int(i)) => Box::new(i32::try_from(*i).map_err(|_| wrong())?),
        (&Type::INT4, RawValue::Null) => Box::new(None::<i32>),
        (&Type::INT2, RawValue::Int(i)) => Box::new(i16::try_from(*i).map_err(|_| wrong())?),
        (&Type::INT2, RawValue::Null) => Box::new(None::<i16>),
        (&Type::FLOAT8, RawValue::Float(f)) => Box::new(*f),
        (&Type::FLOAT8, RawValue::Null) => Box::new(None::<f64>),
        (&Type::TEXT | &Type::VARCHAR, RawValue::Text(s)) => {
            if s.contains('\0') {
                return Err("text with a NUL character, which PostgreSQL cannot store".into());
            }
            Box::new(s.as_str())
        }
        (&Type::TEXT | &Type::VARCHAR, RawValue::Null) => Box::new(None::<&str>),
        (&Type::BYTEA, RawValue::Bytes(b)) => Box::new(b.as_slice()),
        (&Type::BYTEA, RawValue::Null) => Box::new(None::<&[u8]>),
        (&Type::BOOL, RawValue::Bool(b)) => Box::new(*b),
        (&Type::BOOL, RawValue::Null) => Box::new(None::<bool>),
        (&Type::TIMESTAMPTZ, RawValue::Int(ms)) => Box::new(instant(*ms).ok_or_else(wrong)?),
        (&Type::TIMESTAMPTZ, RawValue::Null) => Box::new(None::<SystemTime>),
        _ => return Err(wrong()),
    })
}

/// Milliseconds since the epoch as a `SystemTime`, within PostgreSQL's range.
fn instant(ms: i64) -> Option<SystemTime> {
    if !(-MAX_MILLIS..=MAX_MILLIS).contains(&ms) {
        return None;
    }
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 { UNIX_EPOCH.checked_add(d) } else { UNIX_EPOCH.checked_sub(d) }
}

fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// Column `i` of a scanned row as the logical kind of its column.
fn decode(row: &Row, i: usize, kind: Kind) -> Result<RawValue, String> {
    let ty = row.columns()[i].type_();
    let err = |e: tokio_postgres::Error| e.to_string();
    let value = match (kind, ty) {
        (Kind::Int, &Type::INT8) => {
            row.try_get::<_, Option<i64>>(i).map_err(err)?.map(RawValue::Int)
        }
        (Kind::Int, &Type::INT4) => {
            row.try_get::<_, Option<i32>>(i).map_err(err)?.map(|v| RawValue::Int(v.into()))
        }
        (Kind::Int, &Type::INT2) => {
            row.try_get::<_, Option<i16>>(i).map_err(err)?.map(|v| RawValue::Int(v.into()))
        }
        (Kind::Float, &Type::FLOAT8) => {
            row.try_get::<_, Option<f64>>(i).map_err(err)?.map(RawValue::Float)
        }
        (Kind::Text, &Type::TEXT | &Type::VARCHAR) => {
            row.try_get::<_, Option<String>>(i).map_err(err)?.map(RawValue::Text)
        }
        (Kind::Bytes, &Type::BYTEA) => {
            row.try_get::<_, Option<Vec<u8>>>(i).map_err(err)?.map(RawValue::Bytes)
        }
        (Kind::Bool, &Type::BOOL) => {
            row.try_get::<_, Option<bool>>(i).map_err(err)?.map(RawValue::Bool)
        }
        (Kind::Millis, &Type::TIMESTAMPTZ) => {
            row.try_get::<_, Option<SystemTime>>(i).map_err(err)?.map(|t| RawValue::Int(millis(t)))
        }
        _ => return Err(format!("a {ty} column where {kind:?} was expected")),
    };
    Ok(value.unwrap_or(RawValue::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_and_stay_in_range() {
        for ms in [0, 1, -1, 1_700_000_000_123, -86_400_000, MAX_MILLIS, -MAX_MILLIS] {
            assert_eq!(millis(instant(ms).unwrap()), ms);
        }
        assert!(instant(MAX_MILLIS + 1).is_none());
        assert!(instant(i64::MIN).is_none());
        assert!(instant(i64::MAX / 2).is_none());
    }

    #[test]
    fn values_are_checked_against_the_column_type() {
        assert!(cell(&RawValue::Int(1 << 40), &Type::INT4).is_err());
        assert!(cell(&RawValue::Int(7), &Type::INT4).is_ok());
        assert!(cell(&RawValue::Text("a\0b".into()), &Type::TEXT).is_err());
        assert!(cell(&RawValue::Bool(true), &Type::TEXT).is_err());
        assert!(cell(&RawValue::Null, &Type::TIMESTAMPTZ).is_ok());
        assert!(cell(&RawValue::Null, &Type::UUID).is_err());
    }
}
