//! The blob conformance cases against PostgreSQL's `PgBlobStore`, plus what only it does:
//! the sweep of old versions and the fallback to a file-system store of older blobs. Each
//! test gets its own schema; PostgreSQL as in `conformance.rs` (skipped with a reason when
//! unreachable, except under `CI=true`).

use kiln_store::{BlobStore, FsBlobStore, ProjectId};
use kiln_store_postgres::{PgBlobStore, PostgresStore};

mod support;

async fn store(test: &str) -> Option<PostgresStore> {
    Some(store_at(test).await?.0)
}

/// The store, its database URL and schema.
async fn store_at(test: &str) -> Option<(PostgresStore, String, String)> {
    support::open_schema("kiln_test", test).await
}

/// Moves every blob version's `changed` back by `by`, as if written that long ago.
async fn age_blobs(url: &str, schema: &str, by: std::time::Duration) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .execute(
            &format!("UPDATE {schema}.blob SET changed = changed - make_interval(secs => $1)"),
            &[&(by.as_secs() as f64)],
        )
        .await
        .unwrap();
}

async fn open(test: &str) -> Option<PgBlobStore> {
    let store = store(test).await?;
    Some(PgBlobStore::new(&store, None))
}

kiln_store::blob_conformance_tests!(open);

#[tokio::test]
async fn older_blobs_are_read_from_the_file_system_until_replaced() {
    let Some(store) = store("blob_legacy").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let fs = FsBlobStore::new(dir.path());
    let project = ProjectId::new("p1");
    fs.put(&project, "old", b"from the files").await.unwrap();
    fs.put(&project, "_bulk/j/a.ndjson", b"old export").await.unwrap();

    let blobs = PgBlobStore::new(&store, Some(FsBlobStore::new(dir.path())));
    assert_eq!(blobs.get(&project, "old").await.unwrap(), b"from the files");
    let reader = blobs.open(&project, "old").await.unwrap();
    assert_eq!(reader.len, 14);
    // A write goes to the database and wins over the file from then on.
    blobs.put(&project, "old", b"in the database").await.unwrap();
    assert_eq!(blobs.get(&project, "old").await.unwrap(), b"in the database");
    let without_files = PgBlobStore::new(&store, None);
    assert_eq!(without_files.get(&project, "old").await.unwrap(), b"in the database");
    // Deleting a folder deletes it in both places.
    blobs.delete_folder(&project, "_bulk/j").await.unwrap();
    assert!(blobs.get(&project, "_bulk/j/a.ndjson").await.is_err());
    assert!(fs.get(&project, "_bulk/j/a.ndjson").await.is_err());
}

#[tokio::test]
async fn the_sweep_keeps_live_and_recent_versions() {
    let Some((store, url, schema)) = store_at("blob_sweep").await else { return };
    let blobs = PgBlobStore::new(&store, None);
    let project = ProjectId::new("p1");
    blobs.put(&project, "k", b"one").await.unwrap();
    blobs.put(&project, "k", b"two").await.unwrap();
    blobs.put(&project, "gone", b"x").await.unwrap();
    blobs.delete_folder(&project, "gone").await.unwrap();
    // Retired an hour ago or more: swept. Live ones never are.
    assert_eq!(blobs.sweep().await.unwrap(), 0, "recent versions stay");
    age_blobs(&url, &schema, std::time::Duration::from_secs(7200)).await;
    assert_eq!(blobs.sweep().await.unwrap(), 2, "the replaced and the deleted version");
    assert_eq!(blobs.get(&project, "k").await.unwrap(), b"two");
    assert!(blobs.get(&project, "gone").await.is_err());
}
