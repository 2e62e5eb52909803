//! Raw reads of a whole store, table by table ([`kiln_store::raw`]): the source side of
//! `kiln migrate-store`.
//!
//! [`SqliteDump::open`] takes the database for itself: its connection runs in SQLite's
//! `EXCLUSIVE` locking mode, which in WAL mode needs (and then keeps) an exclusive lock on the
//! database file. Every other open connection holds a shared lock on that file as long as it is
//! open, so the lock is refused while a `kiln serve` (or anything else) has the store open,
//! and a server started during the dump cannot open it. The dump therefore reads one
//! unchanging store from start to end without a long read transaction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_store::StoreError;
use kiln_store::raw::{BatchLimits, Kind, RAW_SCHEMA_VERSION, RawBatch, RawTable, RawValue};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::{map_sqlite, queries};

/// How long opening waits for another process to let go of the database.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A store opened for raw reading, exclusively.
pub struct SqliteDump {
    conn: Connection,
    path: PathBuf,
    version: i64,
}

impl SqliteDump {
    /// Opens the existing store in `dir` (the directory [`crate::SqliteStore::open`] takes,
    /// holding `kiln.db`), takes the database for itself, brings its schema up to date with the
    /// normal migrations, and checks that the schema is the one [`kiln_store::raw`] describes.
    /// Never creates a database: a missing `kiln.db` is an error.
    pub fn open(dir: &Path) -> Result<SqliteDump, StoreError> {
        let path = dir.join("kiln.db");
        if !path.is_file() {
            return Err(StoreError::Invalid(format!("no Kiln database at {}", path.display())));
        }
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map_sqlite)?;
        conn.busy_timeout(LOCK_WAIT).map_err(map_sqlite)?;
        conn.execute_batch("PRAGMA locking_mode=EXCLUSIVE").map_err(map_sqlite)?;
        // The first read takes the exclusive lock (and in WAL mode keeps it until close).
        let version: i64 =
            conn.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(|e| {
                match map_sqlite(e) {
                    StoreError::Busy(_) => StoreError::Busy(format!(
                        "{} is in use by another process: stop the Kiln server that uses it first",
                        path.display()
                    )),
                    other => other,
                }
            })?;
        let newest = queries::schema_version();
        if version > newest {
            return Err(StoreError::Invalid(format!(
                "{} has schema version {version}, newer than this Kiln knows ({newest}): upgrade Kiln",
                path.display()
            )));
        }
        queries::migrate(&mut conn)?;
        let version: i64 =
            conn.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(map_sqlite)?;
        if version != RAW_SCHEMA_VERSION {
            return Err(StoreError::Internal(format!(
                "{} is at schema version {version}, but raw copies know version {RAW_SCHEMA_VERSION}",
                path.display()
            )));
        }
        Ok(SqliteDump { conn, path, version })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version (after migration): the newest this Kiln knows.
    pub fn schema_version(&self) -> i64 {
        self.version
    }

    /// The rows of `table`.
    pub fn count(&self, table: RawTable) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row(&format!("SELECT COUNT(*) FROM {}", table.name()), [], |row| row.get(0))
            .map_err(map_sqlite)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The names of every table in the database (for checking that [`RawTable::ALL`] covers
    /// the schema).
    pub fn table_names(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .map_err(map_sqlite)?;
        let rows = stmt.query_map([], |row| row.get(0)).map_err(map_sqlite)?;
        rows.collect::<Result<_, _>>().map_err(map_sqlite)
    }

    /// Reads every row of `table`, in storage order, and hands them to `sink` in batches of at
    /// most `limits`. Stops at the first error, the sink's included.
    pub fn scan(
        &self,
        table: RawTable,
        limits: BatchLimits,
        mut sink: impl FnMut(RawBatch) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let columns = table.columns();
        let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
        let sql = format!("SELECT {} FROM {}", names.join(", "), table.name());
        let mut stmt = self.conn.prepare(&sql).map_err(map_sqlite)?;
        let mut rows = stmt.query([]).map_err(map_sqlite)?;
        let mut batch = RawBatch::new(table);
        while let Some(row) = rows.next().map_err(map_sqlite)? {
            for (i, column) in columns.iter().enumerate() {
                let value = row.get_ref(i).map_err(map_sqlite)?;
                batch.push(decode(value, column.kind).ok_or_else(|| {
                    StoreError::Internal(format!(
                        "{}.{}: a {} value where {:?} was expected",
                        table.name(),
                        column.name,
                        value.data_type(),
                        column.kind
                    ))
                })?);
            }
            if batch.is_full(limits) {
                sink(batch.take())?;
            }
        }
        if !batch.is_empty() {
            sink(batch)?;
        }
        Ok(())
    }
}

/// A stored SQLite value as the logical kind of its column; `None` when it cannot be one.
fn decode(value: ValueRef<'_>, kind: Kind) -> Option<RawValue> {
    Some(match (kind, value) {
        (_, ValueRef::Null) => RawValue::Null,
        (Kind::Int | Kind::Millis, ValueRef::Integer(i)) => RawValue::Int(i),
        (Kind::Float, ValueRef::Real(f)) => RawValue::Float(f),
        (Kind::Float, ValueRef::Integer(i)) => RawValue::Float(i as f64),
        (Kind::Text, ValueRef::Text(t) | ValueRef::Blob(t)) => {
            RawValue::Text(String::from_utf8(t.to_vec()).ok()?)
        }
        (Kind::Bytes, ValueRef::Blob(b) | ValueRef::Text(b)) => RawValue::Bytes(b.to_vec()),
        (Kind::Bool, ValueRef::Integer(i)) => RawValue::Bool(i != 0),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_missing_store() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteDump::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("no Kiln database"), "{err}");
        assert!(!dir.path().join("kiln.db").exists(), "nothing was created");
    }

    #[test]
    fn raw_tables_cover_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::SqliteStore::open(dir.path(), crate::SqliteOptions::default()).unwrap());
        let dump = SqliteDump::open(dir.path()).unwrap();
        let mut expected: Vec<&str> = RawTable::ALL.iter().map(|t| t.name()).collect();
        expected.sort_unstable();
        assert_eq!(dump.table_names().unwrap(), expected);
        for table in RawTable::ALL {
            assert_eq!(dump.count(table).unwrap(), 0, "{table}");
        }
    }

    #[test]
    fn another_open_connection_keeps_the_dump_out_and_the_dump_keeps_others_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::SqliteStore::open(dir.path(), crate::SqliteOptions::default()).unwrap();
        let err = SqliteDump::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::Busy(_)), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(kiln_store::Store::close(&store));
        drop(store);

        let dump = SqliteDump::open(dir.path()).unwrap();
        let other = Connection::open(dir.path().join("kiln.db")).unwrap();
        other.busy_timeout(Duration::from_millis(50)).unwrap();
        assert!(
            other.query_row("SELECT COUNT(*) FROM resource", [], |r| r.get::<_, i64>(0)).is_err()
        );
        drop(dump);
        assert_eq!(
            other.query_row("SELECT COUNT(*) FROM resource", [], |r| r.get::<_, i64>(0)).unwrap(),
            0
        );
    }
}
