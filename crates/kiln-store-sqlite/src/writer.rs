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
    PutSetting {
        name: String,
        value: Vec<u8>,
        only_if_absent: bool,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A job's outcome, held until the group's COMMIT has succeeded.
enum Outcome {
    Write(WriteReply, WriteOutcome, Vec<WriteOp>),
    Setting(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
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
    for job in jobs {
        match job {
            Job::Write { project, mut ops, keys, atomicity, reply } => {
                let res = apply_write(conn, &project, &mut ops, &keys, atomicity);
                outcomes.push(Outcome::Write(reply, res, ops));
            }
            Job::ParamKeys { reply, .. } => {
                let _ = reply.send(Err(StoreError::Internal("misrouted job".into())));
            }
            Job::PutSetting { name, value, only_if_absent, reply } => {
                let res = queries::put_setting(conn, &name, &value, only_if_absent);
                outcomes.push(Outcome::Setting(reply, res));
            }
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        let e = map_sqlite(e);
        tracing::error!(error = %e, "group commit failed");
        for outcome in outcomes {
            match outcome {
                Outcome::Write(reply, _, ops) => {
                    let _ = reply.send((Err(StoreError::Internal(e.to_string())), ops));
                }
                Outcome::Setting(reply, _) => {
                    let _ = reply.send(Err(StoreError::Internal(e.to_string())));
                }
            }
        }
        return;
    }
    for outcome in outcomes {
        match outcome {
            Outcome::Write(reply, res, ops) => {
                let _ = reply.send((res, ops));
            }
            Outcome::Setting(reply, res) => {
                let _ = reply.send(res);
            }
        }
    }
}

fn fail_all(jobs: Vec<Job>, e: &StoreError) {
    for job in jobs {
        match job {
            Job::Write { reply, ops, .. } => {
                let _ = reply.send((Err(StoreError::Internal(e.to_string())), ops));
            }
            Job::PutSetting { reply, .. } | Job::ParamKeys { reply, .. } => {
                let _ = reply.send(Err(StoreError::Internal(e.to_string())));
            }
        }
    }
}

/// Runs one request inside its own savepoint, so its failure leaves the group untouched.
fn apply_write(
    conn: &Connection,
    project: &ProjectId,
    ops: &mut [WriteOp],
    keys: &[Vec<i64>],
    atomicity: Atomicity,
) -> WriteOutcome {
    conn.execute_batch("SAVEPOINT req").map_err(map_sqlite)?;
    let mut results = Vec::with_capacity(ops.len());
    let none = Vec::new();
    for (i, op) in ops.iter_mut().enumerate() {
        let keys = keys.get(i).unwrap_or(&none);
        match atomicity {
            Atomicity::All => match queries::apply_op(conn, project, op, keys) {
                Ok(res) => results.push(Ok(res)),
                Err(e) => {
                    conn.execute_batch("ROLLBACK TO req; RELEASE req").map_err(map_sqlite)?;
                    return Err(e);
                }
            },
            Atomicity::Each => {
                conn.execute_batch("SAVEPOINT op").map_err(map_sqlite)?;
                match queries::apply_op(conn, project, op, keys) {
                    Ok(res) => {
                        conn.execute_batch("RELEASE op").map_err(map_sqlite)?;
                        results.push(Ok(res));
                    }
                    Err(e) => {
                        conn.execute_batch("ROLLBACK TO op; RELEASE op").map_err(map_sqlite)?;
                        results.push(Err(e));
                    }
                }
            }
        }
    }
    conn.execute_batch("RELEASE req").map_err(map_sqlite)?;
    Ok(results)
}
