//! The writer thread: the only connection that writes, committing queued requests in groups.

use std::sync::Arc;
use std::sync::mpsc::Receiver;

use kiln_store::sql::{MissingKeys, ParamKeys};
use kiln_store::{Atomicity, ProjectId, StoreError, WriteOp, WriteResult};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{MAX_GROUP, map_sqlite, queries};

/// The outcome of a write, and its ops back: their memory (parsed resources, index entries) is
/// freed by the request's task, not by the writer.
pub(crate) type WriteReply = oneshot::Sender<(WriteOutcome, Vec<WriteOp>)>;
pub(crate) type WriteOutcome = Result<Vec<Result<WriteResult, StoreError>>, StoreError>;

pub(crate) enum Job {
    Write {
        project: ProjectId,
        ops: Vec<WriteOp>,
        /// The `sp_param` keys of each op's index rows (`ParamKeys::for_ops`).
        keys: Vec<Vec<i64>>,
        atomicity: Atomicity,
        reply: WriteReply,
    },
    /// Gives parameters their keys, committed before the writes that need them are queued.
    ParamKeys {
        project: ProjectId,
        missing: MissingKeys,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// A small write run inside the group (a setting, the job queue, an event counter). It
    /// returns how to answer its caller, called once the group is over: with `None` when the
    /// group committed, with the error when it did not. (Dropped unrun, the caller hears that
    /// the writer stopped.) `SqliteStore::exec` builds it for any answer type.
    Exec(ExecFn),
}

/// A small write for [`Job::Exec`].
pub(crate) type ExecFn = Box<dyn FnOnce(&Connection) -> Deliver + Send>;
/// Answers a [`Job::Exec`]'s caller once its group is over.
pub(crate) type Deliver = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// A job's outcome, held until the group's COMMIT has succeeded.
enum Outcome {
    Write(WriteReply, WriteOutcome, Vec<WriteOp>),
    Exec(Deliver),
}

pub(crate) fn run(mut conn: Connection, rx: Receiver<Job>, params: Arc<ParamKeys>) {
    // The loop ends when every sender is gone (the store was closed or dropped).
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // New parameter keys commit on their own, so no rollback in the group can undo them.
        let mut group = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::ParamKeys { project, missing, reply } => {
                    let res = queries::register_params(&mut conn, &project, &missing)
                        .map(|found| params.insert(project.as_str(), found));
                    let _ = reply.send(res);
                }
                job => group.push(job),
            }
        }
        if !group.is_empty() {
            commit_group(&mut conn, group);
        }
    }
    // Fold the WAL back into the main file so the next start opens quickly.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

fn commit_group(conn: &mut Connection, jobs: Vec<Job>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = map_sqlite(e);
        fail_all(jobs, &e);
        return;
    }
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut poisoned = false;
    for job in jobs {
        match job {
            Job::Write { project, mut ops, keys, atomicity, reply } => {
                let res = if poisoned {
                    Err(StoreError::Internal("an earlier write of the group failed".into()))
                } else {
                    apply_write(conn, &project, &mut ops, &keys, atomicity, &mut poisoned)
                };
                outcomes.push(Outcome::Write(reply, res, ops));
            }
            Job::ParamKeys { reply, .. } => {
                let _ = reply.send(Err(StoreError::Internal("misrouted job".into())));
            }
            Job::Exec(run) => outcomes.push(Outcome::Exec(run(conn))),
        }
    }
    let committed = if poisoned {
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some("a savepoint of the group failed; the group is rolled back".into()),
        ))
    } else {
        conn.execute_batch("COMMIT")
    };
    if let Err(e) = committed {
        let _ = conn.execute_batch("ROLLBACK");
        let e = map_sqlite(e);
        tracing::error!(error = %e, "group commit failed");
        for outcome in outcomes {
            match outcome {
                Outcome::Write(reply, _, ops) => {
                    let _ = reply.send((Err(StoreError::Internal(e.to_string())), ops));
                }
                Outcome::Exec(deliver) => deliver(Some(StoreError::Internal(e.to_string()))),
            }
        }
        return;
    }
    for outcome in outcomes {
        match outcome {
            Outcome::Write(reply, res, ops) => {
                let _ = reply.send((res, ops));
            }
            Outcome::Exec(deliver) => deliver(None),
        }
    }
}

fn fail_all(jobs: Vec<Job>, e: &StoreError) {
    for job in jobs {
        match job {
            Job::Write { reply, ops, .. } => {
                let _ = reply.send((Err(StoreError::Internal(e.to_string())), ops));
            }
            Job::ParamKeys { reply, .. } => {
                let _ = reply.send(Err(StoreError::Internal(e.to_string())));
            }
            Job::Exec(_) => {} // dropped: its caller hears that the writer stopped
        }
    }
}

/// Runs one request so that its failure leaves the group untouched: all its ops in one
/// savepoint ([`Atomicity::All`]), or each op in a savepoint of its own ([`Atomicity::Each`];
/// tried first as one savepoint for all, which is cheaper and right when no op fails).
///
/// Each-savepoints are not nested inside one for the request: SQLite keeps a nested
/// savepoint's journal for the enclosing one, which made a batch of N ops cost O(N²) time and
/// hold every page it touched in memory. Without the enclosing savepoint a failing savepoint
/// *statement* (not an op) could leave the request half applied, so it sets `poisoned` and the
/// whole group is rolled back.
fn apply_write(
    conn: &Connection,
    project: &ProjectId,
    ops: &mut [WriteOp],
    keys: &[Vec<i64>],
    atomicity: Atomicity,
    poisoned: &mut bool,
) -> WriteOutcome {
    let none = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    match atomicity {
        Atomicity::All => {
            conn.execute_batch("SAVEPOINT req").map_err(map_sqlite)?;
            for (i, op) in ops.iter_mut().enumerate() {
                let keys = keys.get(i).unwrap_or(&none);
                match queries::apply_op(conn, project, op, keys) {
                    Ok(res) => results.push(Ok(res)),
                    Err(e) => {
                        conn.execute_batch("ROLLBACK TO req; RELEASE req").map_err(map_sqlite)?;
                        return Err(e);
                    }
                }
            }
            conn.execute_batch("RELEASE req").map_err(map_sqlite)?;
        }
        Atomicity::Each => {
            let statement = |sql: &str, poisoned: &mut bool| {
                conn.execute_batch(sql).map_err(|e| {
                    *poisoned = true;
                    map_sqlite(e)
                })
            };
            // Optimistically, the whole request under one savepoint: each page it changes is
            // copied to the statement journal once, not once per op (a savepoint per op
            // copied every index page each op touched). If an op fails, that attempt is
            // undone and the ops are run again, each in its own savepoint.
            if ops.len() > 1 {
                statement("SAVEPOINT req", poisoned)?;
                for (i, op) in ops.iter_mut().enumerate() {
                    let keys = keys.get(i).unwrap_or(&none);
                    match queries::apply_op(conn, project, op, keys) {
                        Ok(res) => results.push(Ok(res)),
                        Err(_) => break,
                    }
                }
                if results.len() == ops.len() {
                    statement("RELEASE req", poisoned)?;
                    return Ok(results);
                }
                statement("ROLLBACK TO req; RELEASE req", poisoned)?;
                results.clear();
            }
            for (i, op) in ops.iter_mut().enumerate() {
                let keys = keys.get(i).unwrap_or(&none);
                statement("SAVEPOINT op", poisoned)?;
                match queries::apply_op(conn, project, op, keys) {
                    Ok(res) => {
                        statement("RELEASE op", poisoned)?;
                        results.push(Ok(res));
                    }
                    Err(e) => {
                        statement("ROLLBACK TO op; RELEASE op", poisoned)?;
                        results.push(Err(e));
                    }
                }
            }
        }
    }
    Ok(results)
}
