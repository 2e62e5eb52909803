//! The checkpointer thread: copies committed pages from the write-ahead log back into the
//! database file in the background.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the
//! committing connection: the writer would copy a few megabytes and sync the database file
//! while every queued write waits (about a tenth of an import's time). Here a connection of
//! its own does it every [`INTERVAL`] in `PASSIVE` mode, which never waits for readers or
//! the writer. The WAL starts over from its beginning once all of it has been copied and no
//! reader still uses it; the writer keeps a high automatic threshold ([`WRITER_FALLBACK`])
//! only as a bound for when the checkpointer cannot keep up.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use kiln_store::StoreError;
use rusqlite::Connection;

use crate::map_sqlite;

/// How often the checkpointer looks at the WAL.
const INTERVAL: Duration = Duration::from_millis(250);
/// The writer's own automatic checkpoint threshold, in pages (4 KiB): 400 MB of WAL.
pub(crate) const WRITER_FALLBACK: u32 = 100_000;

/// The running checkpointer; stopped by [`Checkpointer::stop`].
pub(crate) struct Checkpointer {
    stop: Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    /// Opens a connection to `path` (synced like the writer's) and starts the thread.
    pub(crate) fn start(path: &Path, synchronous: &str) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path).map_err(map_sqlite)?;
        conn.execute_batch(&format!("PRAGMA synchronous={synchronous}; PRAGMA busy_timeout=1000;"))
            .map_err(map_sqlite)?;
        let (stop, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kiln-sqlite-checkpoint".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(Checkpointer { stop, thread })
    }

    /// Stops the thread (after the checkpoint it may be running) and waits for it.
    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

fn run(conn: Connection, rx: Receiver<()>) {
    loop {
        match rx.recv_timeout(INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        // (busy, frames in the WAL, frames copied); busy just means "try again later".
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        if let Err(e) = done {
            tracing::warn!(error = %e, "background WAL checkpoint failed");
        }
    }
}
