//! Every SQL statement of the SQLite backend, each behind a typed function. All values are
//! bound parameters; the only dynamic SQL (history filters) appends fixed clauses.

use std::sync::Arc;

use kiln_store::search::{SearchPage, SearchRequest, SortValue};
use kiln_store::sql::{
    Arg, Dialect, Includes, IndexRow, KeyType, PlanError, RESOURCE_COLUMNS, RowDiff, Sql, Table,
    Val, index_rows, plan_search,
};
use kiln_store::{
    CurrentVersion, HistoryQuery, HistoryScope, NextVersion, ProjectId, QueuedJob, StoreError,
    StoredResource, WriteMethod, WriteOp, WriteResult, plan_delete, plan_put, put_target,
    stamped_bytes,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::map_sqlite;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_search.sql")),
    (3, include_str!("migrations/0003_index_keys.sql")),
    (4, include_str!("migrations/0004_contained.sql")),
    (5, include_str!("migrations/0005_shared_state.sql")),
    (6, include_str!("migrations/0006_blobs.sql")),
];

/// The newest schema version this crate's migrations make.
pub(crate) fn schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// The SQL functions the shared search statements call that SQLite lacks:
/// `kiln_strip_tags(text)`, [`kiln_search::strip_tags`] (for `_text`; PostgreSQL uses a
/// regular expression with the same effect). Registered on every connection.
pub(crate) fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "kiln_strip_tags",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            // Text in, text out; anything else (NULL: no narrative) gives NULL.
            Ok(match ctx.get_raw(0) {
                rusqlite::types::ValueRef::Text(bytes) => {
                    Some(kiln_search::strip_tags(&String::from_utf8_lossy(bytes)))
                }
                _ => None,
            })
        },
    )
}

/// Applies every migration newer than the database's `user_version`, each in its own
/// transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 =
        conn.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(map_sqlite)?;
    for (version, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        let tx = conn.transaction().map_err(map_sqlite)?;
        tx.execute_batch(sql).map_err(map_sqlite)?;
        tx.execute_batch(&format!("PRAGMA user_version = {version}")).map_err(map_sqlite)?;
        tx.commit().map_err(map_sqlite)?;
    }
    Ok(())
}

const SELECT_VERSION_COLUMNS: &str =
    "h.seq, h.type, h.id, h.version, h.last_updated, h.deleted, h.body, h.method";

fn row_to_stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredResource> {
    let body: Vec<u8> = row.get(6)?;
    Ok(StoredResource {
        seq: row.get(0)?,
        resource_type: row.get(1)?,
        id: row.get(2)?,
        version: row.get(3)?,
        last_updated: row.get(4)?,
        deleted: row.get::<_, i64>(5)? != 0,
        body: Arc::from(body),
        method: WriteMethod::parse(&row.get::<_, String>(7)?).unwrap_or(WriteMethod::Put),
    })
}

pub(crate) fn read_current(
    conn: &Connection,
    project: &ProjectId,
    ty: &str,
    id: &str,
) -> Result<StoredResource, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            // A scalar subquery rather than a join: SQLite keeps this statement compiled across
            // executions from the statement cache, where the join form was re-prepared each time.
            "SELECT h.seq, h.type, h.id, h.version, h.last_updated, h.deleted, h.body, h.method \
             FROM history h \
             WHERE h.seq = (SELECT seq FROM resource WHERE project = ?1 AND type = ?2 AND id = ?3)",
        )
        .map_err(map_sqlite)?;
    stmt.query_row(params![project.as_str(), ty, id], row_to_stored)
        .optional()
        .map_err(map_sqlite)?
        .ok_or_else(|| StoreError::NotFound { resource_type: ty.to_owned(), id: id.to_owned() })
}

pub(crate) fn read_version(
    conn: &Connection,
    project: &ProjectId,
    ty: &str,
    id: &str,
    version: i64,
) -> Result<StoredResource, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT h.seq, h.type, h.id, h.version, h.last_updated, h.deleted, h.body, h.method \
             FROM history h \
             WHERE h.rid = (SELECT rid FROM resource WHERE project = ?1 AND type = ?2 AND id = ?3) \
               AND h.version = ?4",
        )
        .map_err(map_sqlite)?;
    stmt.query_row(params![project.as_str(), ty, id, version], row_to_stored)
        .optional()
        .map_err(map_sqlite)?
        .ok_or_else(|| StoreError::NotFound { resource_type: ty.to_owned(), id: id.to_owned() })
}

/// Builds the WHERE clause and bindings shared by history listing and counting.
fn history_filter(
    project: &ProjectId,
    scope: &HistoryScope,
    query: &HistoryQuery,
) -> (String, Vec<SqlValue>) {
    let mut sql = String::from("h.project = ?");
    let mut binds = vec![SqlValue::Text(project.as_str().to_owned())];
    match scope {
        HistoryScope::System => {}
        HistoryScope::Type(ty) => {
            sql.push_str(" AND h.type = ?");
            binds.push(SqlValue::Text(ty.clone()));
        }
        HistoryScope::Instance(ty, id) => {
            sql.push_str(
                " AND h.rid = (SELECT rid FROM resource WHERE project = ? AND type = ? AND id = ?)",
            );
            binds.push(SqlValue::Text(project.as_str().to_owned()));
            binds.push(SqlValue::Text(ty.clone()));
            binds.push(SqlValue::Text(id.clone()));
        }
    }
    if let Some(since) = &query.since {
        sql.push_str(" AND h.last_updated >= ?");
        binds.push(SqlValue::Text(since.clone()));
    }
    if let Some(at) = &query.at {
        // The version current at `at`: written at or before it, and not superseded by then.
        sql.push_str(
            " AND h.last_updated <= ? AND NOT EXISTS (SELECT 1 FROM history h2 \
             WHERE h2.rid = h.rid AND h2.version > h.version AND h2.last_updated <= ?)",
        );
        binds.push(SqlValue::Text(at.clone()));
        binds.push(SqlValue::Text(at.clone()));
    }
    (sql, binds)
}

pub(crate) fn history(
    conn: &Connection,
    project: &ProjectId,
    scope: &HistoryScope,
    query: &HistoryQuery,
) -> Result<Vec<StoredResource>, StoreError> {
    let (mut filter, mut binds) = history_filter(project, scope, query);
    if let Some(before) = query.before_seq {
        filter.push_str(" AND h.seq < ?");
        binds.push(SqlValue::Integer(before));
    }
    binds.push(SqlValue::Integer(query.count as i64));
    let sql = format!(
        "SELECT {SELECT_VERSION_COLUMNS} FROM history h WHERE {filter} ORDER BY h.seq DESC LIMIT ?"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(map_sqlite)?;
    let rows = stmt.query_map(params_from_iter(binds), row_to_stored).map_err(map_sqlite)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(map_sqlite)
}

pub(crate) fn history_count(
    conn: &Connection,
    project: &ProjectId,
    scope: &HistoryScope,
    query: &HistoryQuery,
) -> Result<u64, StoreError> {
    let (filter, binds) = history_filter(project, scope, query);
    let sql = format!("SELECT count(*) FROM history h WHERE {filter}");
    let mut stmt = conn.prepare_cached(&sql).map_err(map_sqlite)?;
    let n: i64 = stmt.query_row(params_from_iter(binds), |row| row.get(0)).map_err(map_sqlite)?;
    Ok(n as u64)
}

pub(crate) fn lookup_unique(
    conn: &Connection,
    project: &ProjectId,
    namespace: &str,
    key: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT r.type, r.id FROM resource r \
             WHERE r.rid = (SELECT rid FROM unique_key WHERE project = ?1 AND namespace = ?2 AND key = ?3)",
        )
        .map_err(map_sqlite)?;
    stmt.query_row(params![project.as_str(), namespace, key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .map_err(map_sqlite)
}

pub(crate) fn lookup_key_all_projects(
    conn: &Connection,
    namespace: &str,
    key: &str,
) -> Result<Vec<(ProjectId, String, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT r.project, r.type, r.id FROM unique_key u JOIN resource r ON r.rid = u.rid \
             WHERE u.namespace = ?1 AND u.key = ?2 ORDER BY r.project",
        )
        .map_err(map_sqlite)?;
    let rows = stmt
        .query_map(params![namespace, key], |row| {
            Ok((ProjectId::new(row.get::<_, String>(0)?), row.get(1)?, row.get(2)?))
        })
        .map_err(map_sqlite)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(map_sqlite)
}

pub(crate) fn get_setting(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT value FROM setting WHERE name = ?1").map_err(map_sqlite)?;
    stmt.query_row(params![name], |row| row.get(0)).optional().map_err(map_sqlite)
}

pub(crate) fn put_setting(
    conn: &Connection,
    name: &str,
    value: &[u8],
    only_if_absent: bool,
) -> Result<(), StoreError> {
    let sql = if only_if_absent {
        "INSERT INTO setting (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING"
    } else {
        "INSERT INTO setting (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value"
    };
    let mut stmt = conn.prepare_cached(sql).map_err(map_sqlite)?;
    stmt.execute(params![name, value]).map_err(map_sqlite)?;
    Ok(())
}

pub(crate) fn enqueue_job(
    conn: &Connection,
    project: &ProjectId,
    id: &str,
    node: &str,
    lease_until: i64,
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO job_queue (project, id, node, lease_until) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (project, id) DO NOTHING",
        )
        .map_err(map_sqlite)?;
    stmt.execute(params![project.as_str(), id, node, lease_until]).map_err(map_sqlite)?;
    Ok(())
}

/// Leases up to `limit` jobs whose lease ended before `now` (with `own`, also those `node`
/// holds) to `node` until `lease_until`. The writer thread is the only writer, so reading and
/// then updating cannot race.
pub(crate) fn claim_jobs(
    conn: &Connection,
    node: &str,
    now: i64,
    lease_until: i64,
    limit: usize,
    own: bool,
) -> Result<Vec<(ProjectId, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE job_queue SET node = ?1, lease_until = ?3 WHERE rowid IN \
             (SELECT rowid FROM job_queue WHERE lease_until < ?2 OR (?5 AND node = ?1) \
              ORDER BY lease_until LIMIT ?4) \
             RETURNING project, id",
        )
        .map_err(map_sqlite)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    job_rows(&mut stmt, params![node, now, lease_until, limit, own])
}

/// The `(project, id)` rows a job-queue statement returns.
fn job_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<(ProjectId, String)>, StoreError> {
    let rows = stmt
        .query_map(params, |row| {
            Ok((ProjectId::new(row.get::<_, String>(0)?), row.get::<_, String>(1)?))
        })
        .map_err(map_sqlite)?;
    rows.collect::<Result<_, _>>().map_err(map_sqlite)
}

pub(crate) fn renew_jobs(
    conn: &Connection,
    node: &str,
    lease_until: i64,
) -> Result<Vec<(ProjectId, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE job_queue SET lease_until = ?2 WHERE node = ?1 RETURNING project, id",
        )
        .map_err(map_sqlite)?;
    job_rows(&mut stmt, params![node, lease_until])
}

pub(crate) fn finish_job(
    conn: &Connection,
    project: &ProjectId,
    id: &str,
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached("DELETE FROM job_queue WHERE project = ?1 AND id = ?2")
        .map_err(map_sqlite)?;
    stmt.execute(params![project.as_str(), id]).map_err(map_sqlite)?;
    Ok(())
}

pub(crate) fn queued_jobs(conn: &Connection, now: i64) -> Result<Vec<QueuedJob>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT project, id, node, lease_until >= ?1 FROM job_queue ORDER BY project, id",
        )
        .map_err(map_sqlite)?;
    let rows = stmt
        .query_map(params![now], |row| {
            Ok(QueuedJob {
                project: ProjectId::new(row.get::<_, String>(0)?),
                id: row.get(1)?,
                node: row.get(2)?,
                leased: row.get(3)?,
            })
        })
        .map_err(map_sqlite)?;
    rows.collect::<Result<_, _>>().map_err(map_sqlite)
}

/// Counts an event of `key` (a count whose time ran out starts again at 1) and returns the
/// count. Expired counters are swept now and then by the same statement's caller.
pub(crate) fn count_event(
    conn: &Connection,
    key: &str,
    now: i64,
    expires_at: i64,
) -> Result<u64, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO event_counter (key, count, expires_at) VALUES (?1, 1, ?3) \
             ON CONFLICT (key) DO UPDATE SET \
               count = CASE WHEN event_counter.expires_at < ?2 THEN 1 ELSE event_counter.count + 1 END, \
               expires_at = excluded.expires_at \
             RETURNING count",
        )
        .map_err(map_sqlite)?;
    let count: i64 =
        stmt.query_row(params![key, now, expires_at], |row| row.get(0)).map_err(map_sqlite)?;
    // Forget a few expired counters with each new event, so the table stays small.
    let mut sweep = conn
        .prepare_cached(
            "DELETE FROM event_counter WHERE key IN \
             (SELECT key FROM event_counter WHERE expires_at < ?1 LIMIT 16)",
        )
        .map_err(map_sqlite)?;
    sweep.execute(params![now]).map_err(map_sqlite)?;
    Ok(u64::try_from(count).unwrap_or(0))
}

pub(crate) fn event_count(conn: &Connection, key: &str, now: i64) -> Result<u64, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT count FROM event_counter WHERE key = ?1 AND expires_at >= ?2")
        .map_err(map_sqlite)?;
    let count: Option<i64> =
        stmt.query_row(params![key, now], |row| row.get(0)).optional().map_err(map_sqlite)?;
    Ok(count.and_then(|c| u64::try_from(c).ok()).unwrap_or(0))
}

pub(crate) fn clear_events(conn: &Connection, key: &str) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare_cached("DELETE FROM event_counter WHERE key = ?1").map_err(map_sqlite)?;
    stmt.execute(params![key]).map_err(map_sqlite)?;
    Ok(())
}

pub(crate) fn is_empty(conn: &Connection) -> Result<bool, StoreError> {
    let any: i64 = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM resource)", [], |row| row.get(0))
        .map_err(map_sqlite)?;
    Ok(any == 0)
}

/// The live state of a resource row before a write.
struct Current {
    rid: i64,
    state: CurrentVersion,
}

fn current(
    conn: &Connection,
    project: &ProjectId,
    ty: &str,
    id: &str,
) -> Result<Option<Current>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT rid, version, deleted, last_updated FROM resource \
             WHERE project = ?1 AND type = ?2 AND id = ?3",
        )
        .map_err(map_sqlite)?;
    stmt.query_row(params![project.as_str(), ty, id], |row| {
        Ok(Current {
            rid: row.get(0)?,
            state: CurrentVersion {
                version: row.get(1)?,
                deleted: row.get::<_, i64>(2)? != 0,
                last_updated: row.get(3)?,
            },
        })
    })
    .optional()
    .map_err(map_sqlite)
}

/// Applies one op. `keys` are the `sp_param` keys of its index rows, in row order. The op is
/// only borrowed (its resource gets its meta stamped): the writer hands ops back to the
/// requests to drop, so their memory is freed off this thread. Applying an op again after a
/// rollback (see `writer::apply_write`) does the same thing.
pub(crate) fn apply_op(
    conn: &Connection,
    project: &ProjectId,
    op: &mut WriteOp,
    keys: &[i64],
) -> Result<WriteResult, StoreError> {
    match op {
        WriteOp::Put { resource, method, precondition, unique_keys, index } => {
            let (method, precondition) = (*method, *precondition);
            let (ty, id) = put_target(resource)?;
            let cur = current(conn, project, &ty, &id)?;
            let next = plan_put(precondition, cur.as_ref().map(|it| &it.state), &ty, &id)?;
            let body = stamped_bytes(resource, next.version, &next.last_updated);
            let rid = upsert_resource(conn, project, &ty, &id, cur.as_ref().map(|it| it.rid))?;
            let seq = insert_history(conn, rid, project, (&ty, &id), &next, method, &body)?;
            set_resource_version(conn, rid, &next, seq, false)?;
            replace_unique_keys(conn, project, rid, unique_keys)?;
            let rows = index_rows(index, &next.last_updated);
            if cur.is_some() {
                update_index(conn, rid, &rows, keys)?;
            } else {
                insert_index(conn, rid, &rows, keys)?;
            }
            Ok(next.into_result((ty, id), method, body, seq))
        }
        WriteOp::Delete { resource_type, id, precondition } => {
            let (resource_type, id, precondition) =
                (resource_type.clone(), id.clone(), *precondition);
            let cur = current(conn, project, &resource_type, &id)?;
            let state = cur.as_ref().map(|it| &it.state);
            let (Some(cur), Some(next)) =
                (&cur, plan_delete(precondition, state, &resource_type, &id)?)
            else {
                return Ok(WriteResult { stored: None, created: false });
            };
            let method = WriteMethod::Delete;
            let seq =
                insert_history(conn, cur.rid, project, (&resource_type, &id), &next, method, b"")?;
            set_resource_version(conn, cur.rid, &next, seq, true)?;
            replace_unique_keys(conn, project, cur.rid, &[])?;
            delete_index(conn, cur.rid)?;
            Ok(next.into_result((resource_type, id), method, Vec::new(), seq))
        }
        WriteOp::Reindex { resource_type, id, version, index } => {
            let cur = current(conn, project, resource_type, id)?;
            let Some(cur) = cur.filter(|c| c.state.version == *version && !c.state.deleted) else {
                return Ok(WriteResult { stored: None, created: false });
            };
            let rows = index_rows(index, &cur.state.last_updated);
            update_index(conn, cur.rid, &rows, keys)?;
            Ok(WriteResult { stored: None, created: true })
        }
    }
}

fn upsert_resource(
    conn: &Connection,
    project: &ProjectId,
    ty: &str,
    id: &str,
    rid: Option<i64>,
) -> Result<i64, StoreError> {
    if let Some(rid) = rid {
        return Ok(rid);
    }
    // The real version, seq and time are set once the history row exists.
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO resource (project, type, id, version, seq, deleted, last_updated) \
             VALUES (?1, ?2, ?3, 0, 0, 0, '')",
        )
        .map_err(map_sqlite)?;
    stmt.execute(params![project.as_str(), ty, id]).map_err(map_sqlite)?;
    Ok(conn.last_insert_rowid())
}

fn insert_history(
    conn: &Connection,
    rid: i64,
    project: &ProjectId,
    (ty, id): (&str, &str),
    next: &NextVersion,
    method: WriteMethod,
    body: &[u8],
) -> Result<i64, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO history (rid, project, type, id, version, last_updated, deleted, method, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(map_sqlite)?;
    let deleted = method == WriteMethod::Delete;
    stmt.execute(params![
        rid,
        project.as_str(),
        ty,
        id,
        next.version,
        next.last_updated,
        deleted as i64,
        method.as_str(),
        body
    ])
    .map_err(map_sqlite)?;
    Ok(conn.last_insert_rowid())
}

fn set_resource_version(
    conn: &Connection,
    rid: i64,
    next: &NextVersion,
    seq: i64,
    deleted: bool,
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE resource SET version = ?2, seq = ?3, deleted = ?4, last_updated = ?5 \
             WHERE rid = ?1",
        )
        .map_err(map_sqlite)?;
    stmt.execute(params![rid, next.version, seq, deleted as i64, next.last_updated])
        .map_err(map_sqlite)?;
    Ok(())
}

fn replace_unique_keys(
    conn: &Connection,
    project: &ProjectId,
    rid: i64,
    keys: &[(String, String)],
) -> Result<(), StoreError> {
    let mut delete =
        conn.prepare_cached("DELETE FROM unique_key WHERE rid = ?1").map_err(map_sqlite)?;
    delete.execute(params![rid]).map_err(map_sqlite)?;
    if keys.is_empty() {
        return Ok(());
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO unique_key (project, namespace, key, rid) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT DO NOTHING",
        )
        .map_err(map_sqlite)?;
    for (namespace, key) in keys {
        let n =
            insert.execute(params![project.as_str(), namespace, key, rid]).map_err(map_sqlite)?;
        if n == 0 {
            return Err(StoreError::UniqueViolation {
                namespace: namespace.clone(),
                key: key.clone(),
            });
        }
    }
    Ok(())
}

fn delete_index(conn: &Connection, rid: i64) -> Result<(), StoreError> {
    for table in Table::ALL {
        let mut stmt =
            conn.prepare_cached(table.delete_sql(Dialect::Sqlite)).map_err(map_sqlite)?;
        stmt.execute(params![rid]).map_err(map_sqlite)?;
    }
    Ok(())
}

/// Inserts a resource's index rows: each table's statement is taken from the cache once, and
/// every value is bound straight from the row (nothing is copied on the way to SQLite).
fn insert_index(
    conn: &Connection,
    rid: i64,
    rows: &[IndexRow<'_>],
    keys: &[i64],
) -> Result<(), StoreError> {
    check_keys(rows, keys)?;
    let mut statements: [Option<rusqlite::CachedStatement<'_>>; Table::ALL.len()] =
        Default::default();
    for (row, key) in rows.iter().zip(keys) {
        let stmt = match &mut statements[row.table as usize] {
            Some(stmt) => stmt,
            slot => slot.insert(
                conn.prepare_cached(row.table.insert_sql(Dialect::Sqlite)).map_err(map_sqlite)?,
            ),
        };
        bind_row(stmt, rid, *key, row.n, row).map_err(map_sqlite)?;
        stmt.raw_execute().map_err(map_sqlite)?;
    }
    Ok(())
}

/// Every row needs its parameter's key.
fn check_keys(rows: &[IndexRow<'_>], keys: &[i64]) -> Result<(), StoreError> {
    if keys.len() < rows.len() {
        return Err(StoreError::Internal("index rows without parameter keys".into()));
    }
    Ok(())
}

/// Replaces a resource's index rows with `rows` (keys as for [`insert_index`]), changing only
/// what differs ([`RowDiff`]). `n` only keeps a resource's rows apart, so inserted rows take numbers
/// above those of the rows kept.
fn update_index(
    conn: &Connection,
    rid: i64,
    rows: &[IndexRow<'_>],
    keys: &[i64],
) -> Result<(), StoreError> {
    check_keys(rows, keys)?;
    for table in Table::ALL {
        let mut diff = RowDiff::new(table, rows, keys);
        let mut stale = Vec::new();
        let mut top = -1;
        {
            let mut select = conn.prepare_cached(select_rows_sql(table)).map_err(map_sqlite)?;
            let mut old = select.query(params![rid]).map_err(map_sqlite)?;
            let width = table.value_columns().len();
            while let Some(row) = old.next().map_err(map_sqlite)? {
                let (param, n): (i64, i64) =
                    (row.get(0).map_err(map_sqlite)?, row.get(1).map_err(map_sqlite)?);
                top = top.max(n);
                let same = |r: &IndexRow<'_>| -> rusqlite::Result<bool> {
                    for (i, v) in r.values().iter().enumerate() {
                        if !same_value(v, row.get_ref(2 + i)?) {
                            return Ok(false);
                        }
                    }
                    let tail: (i64, i64, i64) =
                        (row.get(2 + width)?, row.get(3 + width)?, row.get(4 + width)?);
                    Ok(tail == (r.elem, r.comp, r.cix))
                };
                if !diff.keep(param, same).map_err(map_sqlite)? {
                    stale.push((param, n));
                }
            }
        }
        if !stale.is_empty() {
            let mut delete = conn.prepare_cached(delete_row_sql(table)).map_err(map_sqlite)?;
            for (param, n) in stale {
                delete.execute(params![rid, param, n]).map_err(map_sqlite)?;
            }
        }
        if diff.any_wanted() {
            let mut insert =
                conn.prepare_cached(table.insert_sql(Dialect::Sqlite)).map_err(map_sqlite)?;
            for (row, key) in diff.wanted() {
                top += 1;
                bind_row(&mut insert, rid, key, top, row).map_err(map_sqlite)?;
                insert.raw_execute().map_err(map_sqlite)?;
            }
        }
    }
    Ok(())
}

/// Whether a stored column holds `v` (a REAL column may give back a whole number as an
/// INTEGER, and the other way round).
fn same_value(v: &Val<'_>, stored: rusqlite::types::ValueRef<'_>) -> bool {
    use rusqlite::types::ValueRef;
    match (*v, stored) {
        (Val::Int(a), ValueRef::Integer(b)) => a == b,
        (Val::Float(a), ValueRef::Real(b)) => a == b,
        (Val::Float(a), ValueRef::Integer(b)) => a == b as f64,
        (Val::Int(a), ValueRef::Real(b)) => a as f64 == b,
        (Val::Text(a), ValueRef::Text(b)) => a.as_bytes() == b,
        (Val::Null, ValueRef::Null) => true,
        _ => false,
    }
}

/// `SELECT param_id, n, <values>, elem, comp, cix FROM <table> WHERE rid = ?`.
fn select_rows_sql(table: Table) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    table.cached_sql(&SQL, |t| {
        format!(
            "SELECT param_id, n, {}, elem, comp, cix FROM {} WHERE rid = ?",
            t.value_columns().join(", "),
            t.name()
        )
    })
}

/// `DELETE FROM <table> WHERE rid = ? AND param_id = ? AND n = ?`.
fn delete_row_sql(table: Table) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    table.cached_sql(&SQL, |t| {
        format!("DELETE FROM {} WHERE rid = ? AND param_id = ? AND n = ?", t.name())
    })
}

/// Binds `rid, param_id, n, <values>, elem, comp, cix` (the order of [`Table::insert_sql`]).
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    rid: i64,
    key: i64,
    n: i64,
    row: &IndexRow<'_>,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(1, rid)?;
    stmt.raw_bind_parameter(2, key)?;
    stmt.raw_bind_parameter(3, n)?;
    let mut i = 4;
    for v in row.values() {
        match *v {
            Val::Int(n) => stmt.raw_bind_parameter(i, n)?,
            Val::Float(f) => stmt.raw_bind_parameter(i, f)?,
            Val::Text(t) => stmt.raw_bind_parameter(i, t)?,
            Val::Null => stmt.raw_bind_parameter(i, rusqlite::types::Null)?,
        }
        i += 1;
    }
    stmt.raw_bind_parameter(i, row.elem)?;
    stmt.raw_bind_parameter(i + 1, row.comp)?;
    stmt.raw_bind_parameter(i + 2, row.cix)
}

/// Gives `(type, code)` pairs of `project` their `sp_param` keys, in a transaction of its own
/// (committed before any write uses them), and returns `(type, code, key)` for each.
pub(crate) fn register_params(
    conn: &mut Connection,
    project: &ProjectId,
    missing: &[(String, String)],
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(map_sqlite)?;
    let mut found = Vec::with_capacity(missing.len());
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO sp_param (project, type, code) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            )
            .map_err(map_sqlite)?;
        let mut select = tx
            .prepare_cached(
                "SELECT id FROM sp_param WHERE project = ?1 AND type = ?2 AND code = ?3",
            )
            .map_err(map_sqlite)?;
        for (ty, code) in missing {
            insert.execute(params![project.as_str(), ty, code]).map_err(map_sqlite)?;
            let id: i64 = select
                .query_row(params![project.as_str(), ty, code], |row| row.get(0))
                .map_err(map_sqlite)?;
            found.push((ty.clone(), code.clone(), id));
        }
    }
    tx.commit().map_err(map_sqlite)?;
    Ok(found)
}

fn to_sql(arg: &Arg) -> SqlValue {
    match arg {
        Arg::Int(i) => SqlValue::Integer(*i),
        Arg::Float(f) => SqlValue::Real(*f),
        Arg::Text(t) => SqlValue::Text(t.clone()),
        Arg::NullText => SqlValue::Null,
    }
}

/// Runs a statement selecting the resource columns (and then `keys` sort keys).
fn resource_rows(
    conn: &Connection,
    sql: &Sql,
    keys: &[KeyType],
) -> Result<Vec<kiln_store::sql::SearchRow>, StoreError> {
    tracing::debug!(sql = sql.text(), args = ?sql.args(), "search statement");
    let mut stmt = conn.prepare_cached(sql.text()).map_err(map_sqlite)?;
    let rows = stmt
        .query_map(params_from_iter(sql.args().iter().map(to_sql)), |row| {
            let rid: i64 = row.get(0)?;
            let body: Vec<u8> = row.get(7)?;
            let stored = StoredResource {
                seq: row.get(1)?,
                resource_type: row.get(2)?,
                id: row.get(3)?,
                version: row.get(4)?,
                last_updated: row.get(5)?,
                deleted: row.get::<_, i64>(6)? != 0,
                body: Arc::from(body),
                method: WriteMethod::parse(&row.get::<_, String>(8)?).unwrap_or(WriteMethod::Put),
            };
            let mut values = Vec::with_capacity(keys.len());
            for (i, kt) in keys.iter().enumerate() {
                let col = RESOURCE_COLUMNS + i;
                let v = match kt {
                    KeyType::Int => row.get::<_, Option<i64>>(col)?.map(SortValue::Int),
                    KeyType::Float => row.get::<_, Option<f64>>(col)?.map(SortValue::Float),
                    KeyType::Text => row.get::<_, Option<String>>(col)?.map(SortValue::Text),
                };
                values.push(v.unwrap_or(SortValue::Null));
            }
            Ok((rid, stored, values))
        })
        .map_err(map_sqlite)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(map_sqlite)
}

/// One page of a search, read in one transaction (count, page and includes agree).
pub(crate) fn search(
    conn: &Connection,
    project: &ProjectId,
    request: &SearchRequest,
) -> Result<SearchPage, StoreError> {
    let plan = plan_search(Dialect::Sqlite, project.as_str(), request)
        .map_err(|PlanError(m)| StoreError::Invalid(m))?;
    conn.execute_batch("BEGIN").map_err(map_sqlite)?;
    let res = search_in_tx(conn, project, request, &plan);
    let _ = conn.execute_batch("COMMIT");
    res
}

fn search_in_tx(
    conn: &Connection,
    project: &ProjectId,
    request: &SearchRequest,
    plan: &kiln_store::sql::SearchPlan,
) -> Result<SearchPage, StoreError> {
    let mut total = None;
    if let Some(count) = &plan.count {
        let mut stmt = conn.prepare_cached(count.text()).map_err(map_sqlite)?;
        let n: i64 = stmt
            .query_row(params_from_iter(count.args().iter().map(to_sql)), |row| row.get(0))
            .map_err(map_sqlite)?;
        total = Some(n as u64);
    }
    let mut estimate = None;
    if let Some(probing) = plan.probing.as_ref().filter(|_| plan.select.is_some()) {
        let sql = &probing.estimate;
        let mut stmt = conn.prepare_cached(sql.text()).map_err(map_sqlite)?;
        let n: i64 = stmt
            .query_row(params_from_iter(sql.args().iter().map(to_sql)), |row| row.get(0))
            .map_err(map_sqlite)?;
        estimate = Some(n);
    }
    let Some(select) = plan.page_select(estimate) else {
        return Ok(SearchPage { total, ..SearchPage::default() });
    };
    let rows = resource_rows(conn, select, &plan.key_types)?;
    let (mut page, found) = plan.page(request, total, rows);
    let mut includes = Includes::new(Dialect::Sqlite, project.as_str(), &request.query, found);
    loop {
        let statements = includes.statements();
        if statements.is_empty() {
            break;
        }
        let mut round = Vec::new();
        for sql in &statements {
            let rows = resource_rows(conn, sql, &[])?;
            round.extend(rows.into_iter().map(|(rid, r, _)| (rid, r)));
        }
        includes.absorb(round);
    }
    includes.finish(&mut page);
    Ok(page)
}
