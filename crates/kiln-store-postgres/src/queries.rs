//! Every SQL statement of the PostgreSQL backend. Statements are prepared once per connection
//! (`prepare_cached`); every value is a bound parameter, and the only dynamic SQL (history
//! filters) appends fixed clauses with numbered placeholders.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use kiln_store::search::{SearchPage, SearchRequest, SortValue};
use kiln_store::sql::{
    Arg, Column, Dialect, Includes, IndexRow, KeyType, PlanError, RESOURCE_COLUMNS, RowDiff,
    SearchPlan, Sql, Table, Val, index_rows, plan_search,
};
use kiln_store::{
    Atomicity, CurrentVersion, HistoryQuery, HistoryScope, NextVersion, ProjectId, QueuedJob,
    StoreError, StoredResource, WriteMethod, WriteOp, WriteResult, plan_delete, plan_put,
    put_target, stamped_bytes,
};
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use crate::map_pg;

const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_search.sql")),
    (3, include_str!("migrations/0003_index_keys.sql")),
    (4, include_str!("migrations/0004_contained.sql")),
    (5, include_str!("migrations/0005_shared_state.sql")),
    (6, include_str!("migrations/0006_blobs.sql")),
];

/// Refreshes the planner's statistics of the tables searches read.
pub(crate) const ANALYZE_SEARCH_TABLES: &str = "ANALYZE resource, sp_param, sp_token, sp_string, \
     sp_date, sp_number, sp_quantity, sp_reference, sp_uri";

/// Any number that identifies Kiln's migration lock among other advisory locks.
const MIGRATION_LOCK: i64 = 0x6b696c6e; // "kiln"

/// Applies pending migrations, one transaction each, under an advisory lock so concurrent
/// nodes never race. Refuses a schema newer than this binary knows.
pub(crate) async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(map_pg)?;
    // A migration may rebuild large tables; waiting for another node's is not a timeout either.
    tx.batch_execute(crate::NO_TIME_LIMIT).await.map_err(map_pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(map_pg)?;
    // Without it every start logs PostgreSQL's notice that the table already exists.
    tx.batch_execute("SET LOCAL client_min_messages = warning").await.map_err(map_pg)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS kiln_schema_version (version INTEGER NOT NULL)")
        .await
        .map_err(map_pg)?;
    let row = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM kiln_schema_version", &[])
        .await
        .map_err(map_pg)?;
    let current: i32 = row.get(0);
    let newest = MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0);
    if current > newest {
        return Err(StoreError::Internal(format!(
            "the database schema is at version {current}, newer than this Kiln knows ({newest}): upgrade Kiln"
        )));
    }
    for (version, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql).await.map_err(map_pg)?;
        tx.execute("INSERT INTO kiln_schema_version (version) VALUES ($1)", &[version])
            .await
            .map_err(map_pg)?;
    }
    tx.commit().await.map_err(map_pg)
}

fn row_to_stored(row: &Row) -> StoredResource {
    let body: Vec<u8> = row.get(6);
    let method: String = row.get(7);
    StoredResource {
        seq: row.get(0),
        resource_type: row.get(1),
        id: row.get(2),
        version: row.get(3),
        last_updated: row.get(4),
        deleted: row.get(5),
        body: Arc::from(body),
        method: WriteMethod::parse(&method).unwrap_or(WriteMethod::Put),
    }
}

pub(crate) async fn read_current<C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    ty: &str,
    id: &str,
) -> Result<StoredResource, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT h.seq, h.type, h.id, h.version, h.last_updated, h.deleted, h.body, h.method \
             FROM resource r JOIN history h ON h.seq = r.seq \
             WHERE r.project = $1 AND r.type = $2 AND r.id = $3 AND r.version > 0",
        )
        .await
        .map_err(map_pg)?;
    let row = client.query_opt(&stmt, &[&project.as_str(), &ty, &id]).await.map_err(map_pg)?;
    row.map(|row| row_to_stored(&row))
        .ok_or_else(|| StoreError::NotFound { resource_type: ty.to_owned(), id: id.to_owned() })
}

pub(crate) async fn read_version<C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    ty: &str,
    id: &str,
    version: i64,
) -> Result<StoredResource, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT h.seq, h.type, h.id, h.version, h.last_updated, h.deleted, h.body, h.method \
             FROM resource r JOIN history h ON h.rid = r.rid AND h.version = $4 \
             WHERE r.project = $1 AND r.type = $2 AND r.id = $3",
        )
        .await
        .map_err(map_pg)?;
    let row =
        client.query_opt(&stmt, &[&project.as_str(), &ty, &id, &version]).await.map_err(map_pg)?;
    row.map(|row| row_to_stored(&row))
        .ok_or_else(|| StoreError::NotFound { resource_type: ty.to_owned(), id: id.to_owned() })
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|it| it.as_ref() as &(dyn ToSql + Sync)).collect()
}

/// The WHERE clause and parameters shared by history listing and counting.
fn history_filter(
    project: &ProjectId,
    scope: &HistoryScope,
    query: &HistoryQuery,
) -> (String, Params) {
    let mut params: Params = vec![Box::new(project.as_str().to_owned())];
    let mut sql = String::from("h.project = $1");
    match scope {
        HistoryScope::System => {}
        HistoryScope::Type(ty) => {
            params.push(Box::new(ty.clone()));
            sql.push_str(&format!(" AND h.type = ${}", params.len()));
        }
        HistoryScope::Instance(ty, id) => {
            params.push(Box::new(ty.clone()));
            params.push(Box::new(id.clone()));
            sql.push_str(&format!(
                " AND h.rid = (SELECT rid FROM resource WHERE project = $1 AND type = ${} AND id = ${})",
                params.len() - 1,
                params.len()
            ));
        }
    }
    if let Some(since) = &query.since {
        params.push(Box::new(since.clone()));
        sql.push_str(&format!(" AND h.last_updated >= ${}", params.len()));
    }
    if let Some(at) = &query.at {
        params.push(Box::new(at.clone()));
        let n = params.len();
        sql.push_str(&format!(
            " AND h.last_updated <= ${n} AND NOT EXISTS (SELECT 1 FROM history h2 \
             WHERE h2.rid = h.rid AND h2.version > h.version AND h2.last_updated <= ${n})"
        ));
    }
    (sql, params)
}

pub(crate) async fn history<C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    scope: &HistoryScope,
    query: &HistoryQuery,
) -> Result<Vec<StoredResource>, StoreError> {
    let (mut filter, mut params) = history_filter(project, scope, query);
    if let Some(before) = query.before_seq {
        params.push(Box::new(before));
        filter.push_str(&format!(" AND h.seq < ${}", params.len()));
    }
    params.push(Box::new(query.count as i64));
    let sql = format!(
        "SELECT h.seq, h.type, h.id, h.version, h.last_updated, h.deleted, h.body, h.method \
         FROM history h WHERE {filter} ORDER BY h.seq DESC LIMIT ${}",
        params.len()
    );
    let stmt = client.prepare_cached(&sql).await.map_err(map_pg)?;
    let rows = client.query(&stmt, &refs(&params)).await.map_err(map_pg)?;
    Ok(rows.iter().map(row_to_stored).collect())
}

pub(crate) async fn history_count<C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    scope: &HistoryScope,
    query: &HistoryQuery,
) -> Result<u64, StoreError> {
    let (filter, params) = history_filter(project, scope, query);
    let sql = format!("SELECT count(*) FROM history h WHERE {filter}");
    let stmt = client.prepare_cached(&sql).await.map_err(map_pg)?;
    let row = client.query_one(&stmt, &refs(&params)).await.map_err(map_pg)?;
    let n: i64 = row.get(0);
    Ok(n as u64)
}

pub(crate) async fn lookup_unique<C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    namespace: &str,
    key: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT r.type, r.id FROM unique_key u JOIN resource r ON r.rid = u.rid \
             WHERE u.project = $1 AND u.namespace = $2 AND u.key = $3",
        )
        .await
        .map_err(map_pg)?;
    let row =
        client.query_opt(&stmt, &[&project.as_str(), &namespace, &key]).await.map_err(map_pg)?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

pub(crate) async fn lookup_key_all_projects<C: GenericClient + Sync>(
    client: &C,
    namespace: &str,
    key: &str,
) -> Result<Vec<(ProjectId, String, String)>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT r.project, r.type, r.id FROM unique_key u JOIN resource r ON r.rid = u.rid \
             WHERE u.namespace = $1 AND u.key = $2 ORDER BY r.project",
        )
        .await
        .map_err(map_pg)?;
    let rows = client.query(&stmt, &[&namespace, &key]).await.map_err(map_pg)?;
    Ok(rows
        .iter()
        .map(|row| (ProjectId::new(row.get::<_, String>(0)), row.get(1), row.get(2)))
        .collect())
}

pub(crate) async fn get_setting<C: GenericClient + Sync>(
    client: &C,
    name: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let stmt =
        client.prepare_cached("SELECT value FROM setting WHERE name = $1").await.map_err(map_pg)?;
    let row = client.query_opt(&stmt, &[&name]).await.map_err(map_pg)?;
    Ok(row.map(|row| row.get(0)))
}

pub(crate) async fn put_setting<C: GenericClient + Sync>(
    client: &C,
    name: &str,
    value: &[u8],
) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO setting (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .await
        .map_err(map_pg)?;
    client.execute(&stmt, &[&name, &value]).await.map_err(map_pg)?;
    Ok(())
}

pub(crate) async fn insert_setting_if_absent<C: GenericClient + Sync>(
    client: &C,
    name: &str,
    value: &[u8],
) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO setting (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .await
        .map_err(map_pg)?;
    client.execute(&stmt, &[&name, &value]).await.map_err(map_pg)?;
    Ok(())
}

/// Seconds, as `make_interval(secs => …)` takes them.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn job_rows(rows: Vec<Row>) -> Vec<(ProjectId, String)> {
    rows.iter().map(|row| (ProjectId::new(row.get::<_, String>(0)), row.get(1))).collect()
}

pub(crate) async fn enqueue_job<C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    id: &str,
    node: &str,
    lease: Duration,
) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO job_queue (project, id, node, lease_until) \
             VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4)) \
             ON CONFLICT (project, id) DO NOTHING",
        )
        .await
        .map_err(map_pg)?;
    client.execute(&stmt, &[&project.as_str(), &id, &node, &secs(lease)]).await.map_err(map_pg)?;
    Ok(())
}

/// Leases jobs whose lease ran out (with `own`, also `node`'s own) to `node`. Rows another
/// node is claiming at this moment are skipped, not waited for.
pub(crate) async fn claim_jobs<C: GenericClient + Sync>(
    client: &C,
    node: &str,
    lease: Duration,
    limit: usize,
    own: bool,
) -> Result<Vec<(ProjectId, String)>, StoreError> {
    let stmt = client
        .prepare_cached(
            "UPDATE job_queue q SET node = $1, \
               lease_until = clock_timestamp() + make_interval(secs => $2) \
             FROM (SELECT project, id FROM job_queue \
                   WHERE lease_until < clock_timestamp() OR ($4 AND node = $1) \
                   ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED) c \
             WHERE q.project = c.project AND q.id = c.id \
             RETURNING q.project, q.id",
        )
        .await
        .map_err(map_pg)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client.query(&stmt, &[&node, &secs(lease), &limit, &own]).await.map_err(map_pg)?;
    Ok(job_rows(rows))
}

pub(crate) async fn renew_jobs<C: GenericClient + Sync>(
    client: &C,
    node: &str,
    lease: Duration,
) -> Result<Vec<(ProjectId, String)>, StoreError> {
    let stmt = client
        .prepare_cached(
            "UPDATE job_queue SET lease_until = clock_timestamp() + make_interval(secs => $2) \
             WHERE node = $1 RETURNING project, id",
        )
        .await
        .map_err(map_pg)?;
    let rows = client.query(&stmt, &[&node, &secs(lease)]).await.map_err(map_pg)?;
    Ok(job_rows(rows))
}

pub(crate) async fn finish_job<C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    id: &str,
) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached("DELETE FROM job_queue WHERE project = $1 AND id = $2")
        .await
        .map_err(map_pg)?;
    client.execute(&stmt, &[&project.as_str(), &id]).await.map_err(map_pg)?;
    Ok(())
}

pub(crate) async fn queued_jobs<C: GenericClient + Sync>(
    client: &C,
) -> Result<Vec<QueuedJob>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT project, id, node, lease_until >= clock_timestamp() FROM job_queue \
             ORDER BY project, id",
        )
        .await
        .map_err(map_pg)?;
    let rows = client.query(&stmt, &[]).await.map_err(map_pg)?;
    Ok(rows
        .iter()
        .map(|row| QueuedJob {
            project: ProjectId::new(row.get::<_, String>(0)),
            id: row.get(1),
            node: row.get(2),
            leased: row.get(3),
        })
        .collect())
}

/// Counts an event of `key` (an expired count starts again at 1), sweeping a few expired
/// counters on the way.
pub(crate) async fn count_event<C: GenericClient + Sync>(
    client: &C,
    key: &str,
    ttl: Duration,
) -> Result<u64, StoreError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO event_counter AS e (key, count, expires_at) \
             VALUES ($1, 1, clock_timestamp() + make_interval(secs => $2)) \
             ON CONFLICT (key) DO UPDATE SET \
               count = CASE WHEN e.expires_at < clock_timestamp() THEN 1 ELSE e.count + 1 END, \
               expires_at = excluded.expires_at \
             RETURNING count",
        )
        .await
        .map_err(map_pg)?;
    let row = client.query_one(&stmt, &[&key, &secs(ttl)]).await.map_err(map_pg)?;
    let count: i64 = row.get(0);
    let sweep = client
        .prepare_cached(
            "DELETE FROM event_counter WHERE key IN (SELECT key FROM event_counter \
             WHERE expires_at < clock_timestamp() LIMIT 16 FOR UPDATE SKIP LOCKED)",
        )
        .await
        .map_err(map_pg)?;
    client.execute(&sweep, &[]).await.map_err(map_pg)?;
    Ok(u64::try_from(count).unwrap_or(0))
}

pub(crate) async fn event_count<C: GenericClient + Sync>(
    client: &C,
    key: &str,
) -> Result<u64, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT count FROM event_counter WHERE key = $1 AND expires_at >= clock_timestamp()",
        )
        .await
        .map_err(map_pg)?;
    let row = client.query_opt(&stmt, &[&key]).await.map_err(map_pg)?;
    Ok(row.and_then(|r| u64::try_from(r.get::<_, i64>(0)).ok()).unwrap_or(0))
}

pub(crate) async fn clear_events<C: GenericClient + Sync>(
    client: &C,
    key: &str,
) -> Result<(), StoreError> {
    let stmt =
        client.prepare_cached("DELETE FROM event_counter WHERE key = $1").await.map_err(map_pg)?;
    client.execute(&stmt, &[&key]).await.map_err(map_pg)?;
    Ok(())
}

pub(crate) async fn is_empty<C: GenericClient + Sync>(client: &C) -> Result<bool, StoreError> {
    let row = client
        .query_one("SELECT EXISTS (SELECT 1 FROM resource WHERE version > 0)", &[])
        .await
        .map_err(map_pg)?;
    let any: bool = row.get(0);
    Ok(!any)
}

/// One write call = one database transaction; with [`Atomicity::Each`] every op runs in its own
/// savepoint (after a first attempt with one savepoint for all, see below). A lock conflict anywhere returns `Busy` for the whole call, which the caller retries.
/// `keys` are the `sp_param` keys of each op's index rows. The index rows of a transaction are
/// inserted at its end, one multi-row statement per table (per op with `Each`).
pub(crate) async fn write(
    client: &mut deadpool_postgres::Object,
    project: &ProjectId,
    ops: &[WriteOp],
    keys: &[Vec<i64>],
    atomicity: Atomicity,
) -> Result<Vec<Result<WriteResult, StoreError>>, StoreError> {
    let mut tx = client.transaction().await.map_err(map_pg)?;
    let mut batch = IndexBatch::default();
    let none = Vec::new();
    // Optimistically, all of an `Each` call under one savepoint (one subtransaction, and the
    // index rows of every op in one statement per table): right whenever no op fails. Only
    // if one does is that undone and each op run in a savepoint of its own. (A thousand
    // savepoints in one transaction also overflow each backend's cache of subtransaction ids,
    // which slows every other session's visibility checks.)
    if plannable(ops) {
        let savepoint = tx.transaction().await.map_err(map_pg)?;
        match write_planned(&savepoint, project, ops, keys, &mut batch).await {
            Ok(Some(results)) => {
                savepoint.commit().await.map_err(map_pg)?;
                tx.commit().await.map_err(map_pg)?;
                return Ok(results.into_iter().map(Ok).collect());
            }
            Err(StoreError::Busy(reason)) => return Err(StoreError::Busy(reason)),
            Ok(None) | Err(_) => {
                batch.clear();
                savepoint.rollback().await.map_err(map_pg)?;
            }
        }
    } else if atomicity == Atomicity::Each && ops.len() > 1 {
        let savepoint = tx.transaction().await.map_err(map_pg)?;
        let mut results = Vec::with_capacity(ops.len());
        let mut failed = false;
        for (i, op) in ops.iter().enumerate() {
            match apply_op(&savepoint, project, op, keys.get(i).unwrap_or(&none), &mut batch).await
            {
                Ok(res) => results.push(Ok(res)),
                Err(StoreError::Busy(reason)) => return Err(StoreError::Busy(reason)),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            match batch.flush(&savepoint).await {
                Ok(()) => {
                    savepoint.commit().await.map_err(map_pg)?;
                    tx.commit().await.map_err(map_pg)?;
                    return Ok(results);
                }
                Err(StoreError::Busy(reason)) => return Err(StoreError::Busy(reason)),
                Err(_) => {}
            }
        }
        batch.clear();
        savepoint.rollback().await.map_err(map_pg)?;
    }
    let mut results = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let keys = keys.get(i).unwrap_or(&none);
        match atomicity {
            Atomicity::All => results.push(Ok(apply_op(&tx, project, op, keys, &mut batch).await?)),
            Atomicity::Each => {
                let savepoint = tx.transaction().await.map_err(map_pg)?;
                let res = match apply_op(&savepoint, project, op, keys, &mut batch).await {
                    Ok(res) => batch.flush(&savepoint).await.map(|()| res),
                    Err(e) => {
                        batch.clear();
                        Err(e)
                    }
                };
                match res {
                    Ok(res) => {
                        savepoint.commit().await.map_err(map_pg)?;
                        results.push(Ok(res));
                    }
                    Err(StoreError::Busy(reason)) => return Err(StoreError::Busy(reason)),
                    Err(e) => {
                        savepoint.rollback().await.map_err(map_pg)?;
                        results.push(Err(e));
                    }
                }
            }
        }
    }
    batch.flush(&tx).await?;
    tx.commit().await.map_err(map_pg)?;
    Ok(results)
}

/// Whether [`write_planned`] can take these ops: several, each a `Put` without unique keys
/// or a `Reindex`.
fn plannable(ops: &[WriteOp]) -> bool {
    ops.len() > 1
        && ops.iter().all(|op| match op {
            WriteOp::Put { unique_keys, .. } => unique_keys.is_empty(),
            WriteOp::Reindex { .. } => true,
            WriteOp::Delete { .. } => false,
        })
}

/// A planned op: a version to write, or a result already known.
enum Planned {
    Version {
        target: (String, String),
        rid: i64,
        next: NextVersion,
        method: WriteMethod,
        body: Vec<u8>,
    },
    Done(WriteResult),
}

/// Writes [`plannable`] ops with a few statements, whatever their number: the resource rows
/// of all targets made (placeholders) and locked at once, every version planned in memory in
/// op order (the same rules as one by one), then all history rows and resource pointers
/// written by one statement, and the index rows of the whole call diffed and written by
/// [`IndexBatch::flush`], all pipelined. `None` when an op fails to plan (a precondition, a
/// target without type or id): nothing is kept then, the caller rolls its savepoint back and
/// runs the ops one by one, which gives each op its own answer.
async fn write_planned<'a, C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    ops: &'a [WriteOp],
    keys: &'a [Vec<i64>],
    batch: &mut IndexBatch<'a>,
) -> Result<Option<Vec<WriteResult>>, StoreError> {
    let mut targets: Vec<(String, String)> = Vec::with_capacity(ops.len());
    let (mut new_types, mut new_ids) = (Vec::new(), Vec::new());
    for op in ops {
        match op {
            WriteOp::Put { resource, .. } => {
                let Ok(target) = put_target(resource) else { return Ok(None) };
                targets.push(target);
            }
            WriteOp::Reindex { resource_type, id, .. } => {
                targets.push((resource_type.clone(), id.clone()))
            }
            WriteOp::Delete { .. } => return Ok(None),
        }
    }
    let mut distinct: HashSet<(&str, &str)> = HashSet::with_capacity(targets.len());
    let (mut types, mut ids) = (Vec::new(), Vec::new());
    for (op, (ty, id)) in ops.iter().zip(&targets) {
        if matches!(op, WriteOp::Put { .. }) {
            new_types.push(ty.as_str());
            new_ids.push(id.as_str());
        }
        if distinct.insert((ty.as_str(), id.as_str())) {
            types.push(ty.as_str());
            ids.push(id.as_str());
        }
    }
    let placeholders = client
        .prepare_cached(
            "INSERT INTO resource (project, type, id, version, seq, deleted, last_updated) \
             SELECT $1, t, i, 0, 0, TRUE, '' FROM unnest($2::text[], $3::text[]) AS u(t, i) \
             ON CONFLICT (project, type, id) DO NOTHING",
        )
        .await
        .map_err(map_pg)?;
    let lock = client
        .prepare_cached(
            "SELECT r.rid, r.type, r.id, r.version, r.deleted, r.last_updated FROM resource r \
             JOIN unnest($2::text[], $3::text[]) AS u(t, i) ON r.type = u.t AND r.id = u.i \
             WHERE r.project = $1 ORDER BY r.rid FOR UPDATE OF r",
        )
        .await
        .map_err(map_pg)?;
    let project_id = project.as_str();
    // Sent back to back: the lock sees the placeholders (a later statement of the transaction).
    let (_, rows) = futures_util::future::try_join(
        client.execute(&placeholders, &[&project_id, &new_types, &new_ids]),
        client.query(&lock, &[&project_id, &types, &ids]),
    )
    .await
    .map_err(map_pg)?;
    let mut state: HashMap<(String, String), (i64, Option<CurrentVersion>)> =
        HashMap::with_capacity(rows.len());
    for row in &rows {
        let version: i64 = row.get(3);
        let cur = (version > 0).then(|| CurrentVersion {
            version,
            deleted: row.get(4),
            last_updated: row.get(5),
        });
        state.insert((row.get(1), row.get(2)), (row.get(0), cur));
    }
    let mut planned = Vec::with_capacity(ops.len());
    let mut dropped_keys = Vec::new();
    for (i, (op, target)) in ops.iter().zip(targets).enumerate() {
        let op_keys: &'a [i64] = keys.get(i).map_or(&[], Vec::as_slice);
        match op {
            WriteOp::Put { resource, method, precondition, index, .. } => {
                let Some((rid, cur)) = state.get_mut(&target) else {
                    return Err(StoreError::Internal("resource row vanished while locked".into()));
                };
                let Ok(next) = plan_put(*precondition, cur.as_ref(), &target.0, &target.1) else {
                    return Ok(None);
                };
                let body = stamped_bytes(resource, next.version, &next.last_updated);
                // A version before may have held unique keys; this one holds none.
                if cur.is_some() {
                    dropped_keys.push(*rid);
                }
                batch.replace(
                    *rid,
                    cur.is_some(),
                    index_rows(index, &next.last_updated),
                    op_keys,
                )?;
                *cur = Some(CurrentVersion {
                    version: next.version,
                    deleted: false,
                    last_updated: next.last_updated.clone(),
                });
                planned.push(Planned::Version { target, rid: *rid, next, method: *method, body });
            }
            WriteOp::Reindex { version, index, .. } => {
                let done = match state.get(&target) {
                    Some((rid, Some(cur))) if cur.version == *version && !cur.deleted => {
                        batch.replace(*rid, true, index_rows(index, &cur.last_updated), op_keys)?;
                        WriteResult { stored: None, created: true }
                    }
                    _ => WriteResult { stored: None, created: false },
                };
                planned.push(Planned::Done(done));
            }
            WriteOp::Delete { .. } => return Ok(None),
        }
    }
    // The history rows in op order (so `seq` follows it) and each resource row pointed at its
    // last version.
    let (mut h_rid, mut h_type, mut h_id, mut h_version, mut h_time, mut h_method, mut h_body) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for p in &planned {
        if let Planned::Version { target, rid, next, method, body } = p {
            h_rid.push(*rid);
            h_type.push(target.0.as_str());
            h_id.push(target.1.as_str());
            h_version.push(next.version);
            h_time.push(next.last_updated.as_str());
            h_method.push(method.as_str());
            h_body.push(body.as_slice());
        }
    }
    let versions = client
        .prepare_cached(
            "WITH h AS (INSERT INTO history \
                 (rid, project, type, id, version, last_updated, deleted, method, body) \
                 SELECT u.rid, $1, u.type, u.id, u.version, u.last_updated, FALSE, u.method, u.body \
                 FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[], \
                             $7::text[], $8::bytea[]) \
                   WITH ORDINALITY AS u(rid, type, id, version, last_updated, method, body, ord) \
                 ORDER BY u.ord \
                 RETURNING rid, version, seq, last_updated), \
             r AS (UPDATE resource SET version = x.version, seq = x.seq, deleted = FALSE, \
                     last_updated = x.last_updated \
                   FROM (SELECT DISTINCT ON (rid) rid, version, seq, last_updated FROM h \
                         ORDER BY rid, version DESC) x \
                   WHERE resource.rid = x.rid) \
             SELECT rid, version, seq FROM h",
        )
        .await
        .map_err(map_pg)?;
    let drop_stmt = client
        .prepare_cached("DELETE FROM unique_key WHERE rid = ANY($1)")
        .await
        .map_err(map_pg)?;
    let write_versions = async {
        if h_rid.is_empty() {
            return Ok(Vec::new());
        }
        client
            .query(
                &versions,
                &[&project_id, &h_rid, &h_type, &h_id, &h_version, &h_time, &h_method, &h_body],
            )
            .await
            .map_err(map_pg)
    };
    let drop_keys = async {
        if !dropped_keys.is_empty() {
            client.execute(&drop_stmt, &[&dropped_keys]).await.map_err(map_pg)?;
        }
        Ok(())
    };
    let (seqs, (), ()) =
        futures_util::future::try_join3(write_versions, drop_keys, batch.flush(client)).await?;
    let seqs: HashMap<(i64, i64), i64> =
        seqs.iter().map(|row| ((row.get(0), row.get(1)), row.get(2))).collect();
    drop((h_type, h_id, h_time, h_method, h_body));
    let mut results = Vec::with_capacity(planned.len());
    for p in planned {
        results.push(match p {
            Planned::Version { target, rid, next, method, body } => {
                let Some(seq) = seqs.get(&(rid, next.version)).copied() else {
                    return Err(StoreError::Internal("a history row went missing".into()));
                };
                next.into_result(target, method, body, seq)
            }
            Planned::Done(done) => done,
        });
    }
    Ok(Some(results))
}

/// Gives `(type, code)` pairs of `project` their `sp_param` keys, committed at once (outside any
/// write's transaction, so no rollback can take them back; racing nodes agree through the
/// unique constraint), and returns `(type, code, key)` for each.
pub(crate) async fn register_params<C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    missing: &[(String, String)],
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let (types, codes): (Vec<&str>, Vec<&str>) =
        missing.iter().map(|(t, c)| (t.as_str(), c.as_str())).unzip();
    let insert = client
        .prepare_cached(
            "INSERT INTO sp_param (project, type, code) \
             SELECT $1, * FROM unnest($2::text[], $3::text[]) ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(map_pg)?;
    client.execute(&insert, &[&project.as_str(), &types, &codes]).await.map_err(map_pg)?;
    let select = client
        .prepare_cached(
            "SELECT p.type, p.code, p.id FROM sp_param p \
             JOIN unnest($2::text[], $3::text[]) AS m(type, code) \
             ON p.type = m.type AND p.code = m.code WHERE p.project = $1",
        )
        .await
        .map_err(map_pg)?;
    let rows = client.query(&select, &[&project.as_str(), &types, &codes]).await.map_err(map_pg)?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
}

/// Locks the resource row (creating a placeholder with version 0 for a new resource, visible
/// to no one until commit) and returns its id and current state.
async fn lock_current<C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    ty: &str,
    id: &str,
    create: bool,
) -> Result<Option<(i64, Option<CurrentVersion>)>, StoreError> {
    if create {
        let stmt = client
            .prepare_cached(
                "INSERT INTO resource (project, type, id, version, seq, deleted, last_updated) \
                 VALUES ($1, $2, $3, 0, 0, TRUE, '') ON CONFLICT (project, type, id) DO NOTHING",
            )
            .await
            .map_err(map_pg)?;
        client.execute(&stmt, &[&project.as_str(), &ty, &id]).await.map_err(map_pg)?;
    }
    let stmt = client
        .prepare_cached(
            "SELECT rid, version, deleted, last_updated FROM resource \
             WHERE project = $1 AND type = $2 AND id = $3 FOR UPDATE",
        )
        .await
        .map_err(map_pg)?;
    let row = client.query_opt(&stmt, &[&project.as_str(), &ty, &id]).await.map_err(map_pg)?;
    Ok(row.map(|row| {
        let version: i64 = row.get(1);
        let state = (version > 0).then(|| CurrentVersion {
            version,
            deleted: row.get(2),
            last_updated: row.get(3),
        });
        (row.get(0), state)
    }))
}

async fn apply_op<'a, C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    op: &'a WriteOp,
    keys: &'a [i64],
    batch: &mut IndexBatch<'a>,
) -> Result<WriteResult, StoreError> {
    match op {
        WriteOp::Put { resource, method, precondition, unique_keys, index } => {
            let (method, precondition) = (*method, *precondition);
            let (ty, id) = put_target(resource)?;
            let Some((rid, cur)) = lock_current(client, project, &ty, &id, true).await? else {
                return Err(StoreError::Internal("resource row vanished while locked".into()));
            };
            let next = plan_put(precondition, cur.as_ref(), &ty, &id)?;
            let body = stamped_bytes(resource, next.version, &next.last_updated);
            let seq = write_version(client, rid, project, (&ty, &id), &next, method, &body).await?;
            // A row made just now (no version before) has no keys to replace.
            if cur.is_some() || !unique_keys.is_empty() {
                replace_unique_keys(client, project, rid, unique_keys).await?;
            }
            batch.replace(rid, cur.is_some(), index_rows(index, &next.last_updated), keys)?;
            Ok(next.into_result((ty, id), method, body, seq))
        }
        WriteOp::Delete { resource_type, id, precondition } => {
            let (resource_type, id, precondition) =
                (resource_type.clone(), id.clone(), *precondition);
            let locked = lock_current(client, project, &resource_type, &id, false).await?;
            let cur = locked.as_ref().and_then(|(_, cur)| cur.as_ref());
            let next = plan_delete(precondition, cur, &resource_type, &id)?;
            let (Some((rid, _)), Some(next)) = (locked, next) else {
                return Ok(WriteResult { stored: None, created: false });
            };
            let method = WriteMethod::Delete;
            let target = (resource_type.as_str(), id.as_str());
            let seq = write_version(client, rid, project, target, &next, method, b"").await?;
            replace_unique_keys(client, project, rid, &[]).await?;
            delete_index(client, rid).await?;
            batch.removed(rid);
            Ok(next.into_result((resource_type, id), method, Vec::new(), seq))
        }
        WriteOp::Reindex { resource_type, id, version, index } => {
            let locked = lock_current(client, project, resource_type, id, false).await?;
            let Some((rid, Some(cur))) = locked else {
                return Ok(WriteResult { stored: None, created: false });
            };
            if cur.version != *version || cur.deleted {
                return Ok(WriteResult { stored: None, created: false });
            }
            batch.replace(rid, true, index_rows(index, &cur.last_updated), keys)?;
            Ok(WriteResult { stored: None, created: true })
        }
    }
}

/// Writes a version: its history row, and the resource row pointing at it (version, `seq`,
/// deleted, time), in one statement (one round trip). Returns the version's `seq`.
async fn write_version<C: GenericClient + Sync>(
    client: &C,
    rid: i64,
    project: &ProjectId,
    (ty, id): (&str, &str),
    next: &NextVersion,
    method: WriteMethod,
    body: &[u8],
) -> Result<i64, StoreError> {
    let stmt = client
        .prepare_cached(
            "WITH h AS (INSERT INTO history \
                 (rid, project, type, id, version, last_updated, deleted, method, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq) \
             UPDATE resource SET version = $5, seq = h.seq, deleted = $7, last_updated = $6 \
             FROM h WHERE rid = $1 RETURNING h.seq",
        )
        .await
        .map_err(map_pg)?;
    let deleted = method == WriteMethod::Delete;
    let row = client
        .query_one(
            &stmt,
            &[
                &rid,
                &project.as_str(),
                &ty,
                &id,
                &next.version,
                &next.last_updated,
                &deleted,
                &method.as_str(),
                &body,
            ],
        )
        .await
        .map_err(map_pg)?;
    Ok(row.get(0))
}

async fn replace_unique_keys<C: GenericClient + Sync>(
    client: &C,
    project: &ProjectId,
    rid: i64,
    keys: &[(String, String)],
) -> Result<(), StoreError> {
    let delete =
        client.prepare_cached("DELETE FROM unique_key WHERE rid = $1").await.map_err(map_pg)?;
    client.execute(&delete, &[&rid]).await.map_err(map_pg)?;
    if keys.is_empty() {
        return Ok(());
    }
    let insert = client
        .prepare_cached(
            "INSERT INTO unique_key (project, namespace, key, rid) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(map_pg)?;
    for (namespace, key) in keys {
        let n = client
            .execute(&insert, &[&project.as_str(), namespace, key, &rid])
            .await
            .map_err(map_pg)?;
        if n == 0 {
            return Err(StoreError::UniqueViolation {
                namespace: namespace.clone(),
                key: key.clone(),
            });
        }
    }
    Ok(())
}

/// Removes a resource's index rows (all tables, pipelined on the connection).
async fn delete_index<C: GenericClient + Sync>(client: &C, rid: i64) -> Result<(), StoreError> {
    let mut pending = Vec::with_capacity(Table::ALL.len());
    for table in Table::ALL {
        let stmt =
            client.prepare_cached(table.delete_sql(Dialect::Postgres)).await.map_err(map_pg)?;
        pending.push(async move { client.execute(&stmt, &[&rid]).await });
    }
    futures_util::future::try_join_all(pending).await.map_err(map_pg)?;
    Ok(())
}

/// The index a transaction leaves each resource it wrote, applied at its end ([`flush`]):
/// the stored rows of every updated resource are read back (one statement per table),
/// matched to the new ones ([`RowDiff`]: rows that did not change stay), and the stale rows
/// deleted and the new ones inserted with one statement per table, all pipelined.
///
/// [`flush`]: IndexBatch::flush
#[derive(Default)]
struct IndexBatch<'a> {
    pending: Vec<PendingIndex<'a>>,
    /// `rid` → its place in `pending`.
    at: HashMap<i64, usize>,
}

struct PendingIndex<'a> {
    rid: i64,
    /// Whether the database may hold rows of `rid` from before the transaction (to be diffed
    /// against), or none (all rows are inserted).
    stored: bool,
    rows: Vec<IndexRow<'a>>,
    keys: &'a [i64],
}

/// Index rows to insert, column by column (the arrays of [`Table::insert_sql`]).
struct TableBatch<'a> {
    rid: Vec<i64>,
    param_id: Vec<i64>,
    values: Vec<ColumnBatch<'a>>,
    elem: Vec<i64>,
    comp: Vec<i64>,
    cix: Vec<i64>,
}

enum ColumnBatch<'a> {
    Int(Vec<i64>),
    Float(Vec<f64>),
    Text(Vec<Option<&'a str>>),
}

impl<'a> TableBatch<'a> {
    fn new(table: Table) -> TableBatch<'a> {
        TableBatch {
            rid: Vec::new(),
            param_id: Vec::new(),
            values: table
                .value_types()
                .iter()
                .map(|c| match c {
                    Column::Int => ColumnBatch::Int(Vec::new()),
                    Column::Float => ColumnBatch::Float(Vec::new()),
                    Column::Text => ColumnBatch::Text(Vec::new()),
                })
                .collect(),
            elem: Vec::new(),
            comp: Vec::new(),
            cix: Vec::new(),
        }
    }

    fn push(&mut self, rid: i64, row: &IndexRow<'a>, key: i64) -> Result<(), StoreError> {
        self.rid.push(rid);
        self.param_id.push(key);
        for (column, v) in self.values.iter_mut().zip(row.values()) {
            match (column, *v) {
                (ColumnBatch::Int(c), Val::Int(n)) => c.push(n),
                (ColumnBatch::Float(c), Val::Float(f)) => c.push(f),
                (ColumnBatch::Text(c), Val::Text(s)) => c.push(Some(s)),
                (ColumnBatch::Text(c), Val::Null) => c.push(None),
                _ => return Err(StoreError::Internal("index value of the wrong kind".into())),
            }
        }
        self.elem.push(row.elem);
        self.comp.push(row.comp);
        self.cix.push(row.cix);
        Ok(())
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&self.rid, &self.param_id];
        for c in &self.values {
            params.push(match c {
                ColumnBatch::Int(v) => v,
                ColumnBatch::Float(v) => v,
                ColumnBatch::Text(v) => v,
            });
        }
        params.push(&self.elem);
        params.push(&self.comp);
        params.push(&self.cix);
        params
    }
}

/// `SELECT param_id, ctid, rid, <values>, elem, comp, cix FROM <table> WHERE rid = ANY($1)`,
/// in the order the rows were inserted. `ctid` names a row to delete: the resource rows of
/// these `rid`s are locked, so no one else changes their index rows before the transaction
/// ends.
fn select_rows_sql(table: Table) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    table.cached_sql(&SQL, |t| {
        format!(
            "SELECT param_id, ctid::text, rid, {}, elem::bigint, comp::bigint, \
             cix::bigint FROM {} WHERE rid = ANY($1) ORDER BY rid, param_id, ctid",
            t.value_columns().join(", "),
            t.name()
        )
    })
}

/// `DELETE FROM <table> WHERE ctid = ANY($1)`.
fn delete_rows_sql(table: Table) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    table.cached_sql(&SQL, |t| {
        format!("DELETE FROM {} WHERE ctid = ANY($1::text[]::tid[])", t.name())
    })
}

/// Whether column `i` of a stored row holds `v`.
fn same_value(v: &Val<'_>, row: &Row, i: usize) -> Result<bool, tokio_postgres::Error> {
    Ok(match *v {
        Val::Int(a) => row.try_get::<_, Option<i64>>(i)? == Some(a),
        Val::Float(a) => row.try_get::<_, Option<f64>>(i)? == Some(a),
        Val::Text(a) => row.try_get::<_, Option<&str>>(i)? == Some(a),
        Val::Null => row.try_get::<_, Option<&str>>(i)?.is_none(),
    })
}

impl<'a> IndexBatch<'a> {
    /// Sets the rows `rid` is to have (`keys`: their `sp_param` keys, in row order);
    /// `stored` says whether it may have rows in the database already.
    fn replace(
        &mut self,
        rid: i64,
        stored: bool,
        rows: Vec<IndexRow<'a>>,
        keys: &'a [i64],
    ) -> Result<(), StoreError> {
        if keys.len() < rows.len() {
            return Err(StoreError::Internal("index rows without parameter keys".into()));
        }
        match self.at.get(&rid) {
            Some(&i) => {
                self.pending[i].rows = rows;
                self.pending[i].keys = keys;
            }
            None => {
                self.at.insert(rid, self.pending.len());
                self.pending.push(PendingIndex { rid, stored, rows, keys });
            }
        }
        Ok(())
    }

    /// `rid`'s rows were deleted from the database (its resource was deleted).
    fn removed(&mut self, rid: i64) {
        if let Some(&i) = self.at.get(&rid) {
            self.pending[i].rows.clear();
            self.pending[i].stored = false;
        }
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.at.clear();
    }

    /// Brings the database's index rows to the pending ones (see [`IndexBatch`]).
    async fn flush<C: GenericClient + Sync>(&mut self, client: &C) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.pending);
        self.at.clear();
        let stored: Vec<i64> = pending.iter().filter(|p| p.stored).map(|p| p.rid).collect();
        // The stored rows of each table, ordered by rid, and where each rid's rows start.
        let mut old: Vec<Vec<Row>> = vec![Vec::new(); Table::ALL.len()];
        if !stored.is_empty() {
            let mut selects = Vec::with_capacity(Table::ALL.len());
            for table in Table::ALL {
                selects.push(client.prepare_cached(select_rows_sql(table)).await.map_err(map_pg)?);
            }
            let stored = &stored;
            let reads =
                selects.iter().map(|stmt| async move { client.query(stmt, &[stored]).await });
            old = futures_util::future::try_join_all(reads).await.map_err(map_pg)?;
        }
        let mut inserts: Vec<Option<TableBatch<'_>>> =
            (0..Table::ALL.len()).map(|_| None).collect();
        let mut deletes: Vec<Vec<&str>> = vec![Vec::new(); Table::ALL.len()];
        for (t, table) in Table::ALL.into_iter().enumerate() {
            let mut by_rid: HashMap<i64, std::ops::Range<usize>> = HashMap::new();
            for (i, row) in old[t].iter().enumerate() {
                let rid: i64 = row.try_get(2).map_err(map_pg)?;
                by_rid.entry(rid).and_modify(|r| r.end = i + 1).or_insert(i..i + 1);
            }
            let width = table.value_columns().len();
            for p in &pending {
                let mut diff = RowDiff::new(table, &p.rows, p.keys);
                if let Some(range) = by_rid.get(&p.rid).filter(|_| p.stored) {
                    for row in &old[t][range.clone()] {
                        let param: i64 = row.try_get(0).map_err(map_pg)?;
                        let same = |r: &IndexRow<'_>| -> Result<bool, tokio_postgres::Error> {
                            for (i, v) in r.values().iter().enumerate() {
                                if !same_value(v, row, 3 + i)? {
                                    return Ok(false);
                                }
                            }
                            let tail: (i64, i64, i64) = (
                                row.try_get(3 + width)?,
                                row.try_get(4 + width)?,
                                row.try_get(5 + width)?,
                            );
                            Ok(tail == (r.elem, r.comp, r.cix))
                        };
                        if !diff.keep(param, same).map_err(map_pg)? {
                            deletes[t].push(row.try_get(1).map_err(map_pg)?);
                        }
                    }
                }
                for (row, key) in diff.wanted() {
                    inserts[t]
                        .get_or_insert_with(|| TableBatch::new(table))
                        .push(p.rid, row, key)?;
                }
            }
        }
        let mut statements = Vec::new();
        for (t, table) in Table::ALL.into_iter().enumerate() {
            if !deletes[t].is_empty() {
                let stmt = client.prepare_cached(delete_rows_sql(table)).await.map_err(map_pg)?;
                statements.push((stmt, vec![&deletes[t] as &(dyn ToSql + Sync)]));
            }
        }
        for (t, table) in Table::ALL.into_iter().enumerate() {
            if let Some(batch) = &inserts[t] {
                let stmt = client
                    .prepare_cached(table.insert_sql(Dialect::Postgres))
                    .await
                    .map_err(map_pg)?;
                statements.push((stmt, batch.params()));
            }
        }
        let writes = statements
            .iter()
            .map(|(stmt, params)| async move { client.execute(stmt, params).await });
        futures_util::future::try_join_all(writes).await.map_err(map_pg)?;
        Ok(())
    }
}

fn to_params(args: &[Arg]) -> Params {
    args.iter()
        .map(|a| -> Box<dyn ToSql + Sync + Send> {
            match a {
                Arg::Int(i) => Box::new(*i),
                Arg::Float(f) => Box::new(*f),
                Arg::Text(t) => Box::new(t.clone()),
                Arg::NullText => Box::new(None::<String>),
            }
        })
        .collect()
}

/// What runs a search statement: a pooled connection, or a transaction on one.
///
/// Search statements go out as unnamed statements with typed parameters
/// (`query_typed`): parse, bind and execute in one round trip instead of the three of a
/// prepare-then-execute, and each is planned with its actual values. (Keeping them prepared
/// per connection was tried: after five runs PostgreSQL may switch a statement to a generic
/// plan, and for skewed values such as a patient with hundreds of Observations those plans
/// were up to 30× slower.)
pub(crate) trait SearchClient: Sync {
    fn run_typed(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> impl std::future::Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send;
}

impl SearchClient for deadpool_postgres::Object {
    fn run_typed(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> impl std::future::Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send {
        let client: &tokio_postgres::Client = self;
        client.query_typed(sql, params)
    }
}

impl SearchClient for deadpool_postgres::Transaction<'_> {
    fn run_typed(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> impl std::future::Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send {
        let tx: &tokio_postgres::Transaction<'_> = self;
        tx.query_typed(sql, params)
    }
}

/// Runs a search statement, its arguments typed as the compiler made them.
async fn search_rows<C: SearchClient>(client: &C, sql: &Sql) -> Result<Vec<Row>, StoreError> {
    tracing::debug!(sql = sql.text(), args = ?sql.args(), "search statement");
    let params = to_params(sql.args());
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
        .iter()
        .zip(sql.args())
        .map(|(value, arg)| {
            let ty = match arg {
                Arg::Int(_) => Type::INT8,
                Arg::Float(_) => Type::FLOAT8,
                Arg::Text(_) | Arg::NullText => Type::TEXT,
            };
            (value.as_ref() as &(dyn ToSql + Sync), ty)
        })
        .collect();
    client.run_typed(sql.text(), &typed).await.map_err(map_pg)
}

/// Runs a statement selecting the resource columns (and then `keys` sort keys).
async fn resource_rows<C: SearchClient>(
    client: &C,
    sql: &Sql,
    keys: &[KeyType],
) -> Result<Vec<kiln_store::sql::SearchRow>, StoreError> {
    let rows = search_rows(client, sql).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let rid: i64 = row.get(0);
            let body: Vec<u8> = row.get(7);
            let method: String = row.get(8);
            let stored = StoredResource {
                seq: row.get(1),
                resource_type: row.get(2),
                id: row.get(3),
                version: row.get(4),
                last_updated: row.get(5),
                deleted: row.get(6),
                body: Arc::from(body),
                method: WriteMethod::parse(&method).unwrap_or(WriteMethod::Put),
            };
            let values = keys
                .iter()
                .enumerate()
                .map(|(i, kt)| {
                    let col = RESOURCE_COLUMNS + i;
                    let v = match kt {
                        KeyType::Int => row.get::<_, Option<i64>>(col).map(SortValue::Int),
                        KeyType::Float => row.get::<_, Option<f64>>(col).map(SortValue::Float),
                        KeyType::Text => row.get::<_, Option<String>>(col).map(SortValue::Text),
                    };
                    v.unwrap_or(SortValue::Null)
                })
                .collect();
            (rid, stored, values)
        })
        .collect())
}

/// One page of a search, read in one repeatable-read transaction (count, page and includes
/// see the same snapshot).
pub(crate) async fn search(
    client: &mut deadpool_postgres::Object,
    project: &ProjectId,
    request: &SearchRequest,
) -> Result<SearchPage, StoreError> {
    let plan = plan_search(Dialect::Postgres, project.as_str(), request)
        .map_err(|PlanError(m)| StoreError::Invalid(m))?;
    // One statement sees one snapshot by itself: a transaction (two more round trips) is
    // needed only when a count, an estimate or includes must agree with the page.
    let single = plan.count.is_none()
        && plan.probing.is_none()
        && request.query.include.is_empty()
        && request.query.revinclude.is_empty();
    if single {
        return search_in_tx(&*client, project, request, &plan).await;
    }
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(map_pg)?;
    let page = search_in_tx(&tx, project, request, &plan).await?;
    tx.commit().await.map_err(map_pg)?;
    Ok(page)
}

async fn search_in_tx<C: SearchClient>(
    client: &C,
    project: &ProjectId,
    request: &SearchRequest,
    plan: &SearchPlan,
) -> Result<SearchPage, StoreError> {
    let mut total = None;
    if let Some(count) = &plan.count {
        let rows = search_rows(client, count).await?;
        let row = rows.first().ok_or_else(|| StoreError::Internal("count without a row".into()))?;
        total = Some(row.get::<_, i64>(0) as u64);
    }
    let mut estimate = None;
    if let Some(probing) = plan.probing.as_ref().filter(|_| plan.select.is_some()) {
        let rows = search_rows(client, &probing.estimate).await?;
        let row =
            rows.first().ok_or_else(|| StoreError::Internal("estimate without a row".into()))?;
        estimate = Some(row.get::<_, i64>(0));
    }
    let Some(select) = plan.page_select(estimate) else {
        return Ok(SearchPage { total, ..SearchPage::default() });
    };
    let rows = resource_rows(client, select, &plan.key_types).await?;
    let (mut page, found) = plan.page(request, total, rows);
    let mut includes = Includes::new(Dialect::Postgres, project.as_str(), &request.query, found);
    loop {
        let statements = includes.statements();
        if statements.is_empty() {
            break;
        }
        let mut round = Vec::new();
        for sql in &statements {
            let rows = resource_rows(client, sql, &[]).await?;
            round.extend(rows.into_iter().map(|(rid, r, _)| (rid, r)));
        }
        includes.absorb(round);
    }
    includes.finish(&mut page);
    Ok(page)
}
