//! Runs the shared storage conformance suite against the SQLite backend.

use kiln_store_sqlite::{SqliteOptions, SqliteStore};

async fn open(_test: &str) -> Option<SqliteStore> {
    // Each test keeps its own directory; `keep` leaves it for the OS temp cleaner so the
    // writer thread never races a directory removal.
    let dir = tempfile::tempdir().unwrap().keep();
    Some(SqliteStore::open(&dir, SqliteOptions::default()).unwrap())
}

kiln_store::conformance_tests!(open);
