//! The writer thread: the only connection that writes, committing queued requests in groups.

use std::sync::mpsc::Receiver;

use kiln_store::{Atomicity, ProjectId, StoreError, WriteOp, WriteResult};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{MAX_GROUP, map_sqlite, queries};

type WriteReply = oneshot::Sender<Result<Vec<Result<WriteResult, StoreError>>, StoreError>>;

pub(crate) enum Job {
    Write {
        project: ProjectId,
        ops: Vec<WriteOp>,
        atomicity: Atomicity,
        reply: WriteReply,
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
    Write(WriteReply, Result<Vec<Result<WriteResult, StoreError>>, StoreError>),
    Setting(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
}

pub(crate) fn run(mut conn: Connection, rx: Receiver<Job>) {
    // The loop ends when every sender is gone (the store was closed or dropped).
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        commit_group(&mut conn, jobs);
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
            Job::Write { project, ops, atomicity, reply } => {
                let res = apply_write(conn, &project, ops, atomicity);
                outcomes.push(Outcome::Write(reply, res));
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
                Outcome::Write(reply, _) => {
                    let _ = reply.send(Err(StoreError::Internal(e.to_string())));
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
            Outcome::Write(reply, res) => {
                let _ = reply.send(res);
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
            Job::Write { reply, .. } => {
                let _ = reply.send(Err(StoreError::Internal(e.to_string())));
            }
            Job::PutSetting { reply, .. } => {
                let _ = reply.send(Err(StoreError::Internal(e.to_string())));
            }
        }
    }
}

/// Runs one request inside its own savepoint, so its failure leaves the group untouched.
fn apply_write(
    conn: &Connection,
    project: &ProjectId,
    ops: Vec<WriteOp>,
    atomicity: Atomicity,
) -> Result<Vec<Result<WriteResult, StoreError>>, StoreError> {
    conn.execute_batch("SAVEPOINT req").map_err(map_sqlite)?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match atomicity {
            Atomicity::All => match queries::apply_op(conn, project, op) {
                Ok(res) => results.push(Ok(res)),
                Err(e) => {
                    conn.execute_batch("ROLLBACK TO req; RELEASE req").map_err(map_sqlite)?;
                    return Err(e);
                }
            },
            Atomicity::Each => {
                conn.execute_batch("SAVEPOINT op").map_err(map_sqlite)?;
                match queries::apply_op(conn, project, op) {
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
