//! The blob conformance cases against the file-system store (each test in its own folder).

use kiln_store::FsBlobStore;

async fn open(_test: &str) -> Option<FsBlobStore> {
    // Kept for the whole test process: the cases are short and the OS cleans /tmp.
    let dir = tempfile::tempdir().expect("temp dir").keep();
    Some(FsBlobStore::new(dir))
}

kiln_store::blob_conformance_tests!(open);
