//! The cases every [`BlobStore`] passes: the file-system store and PostgreSQL's alike.
//! A backend's test file calls [`blob_conformance_tests!`](crate::blob_conformance_tests).

use tokio::io::AsyncReadExt;

use crate::{BlobError, BlobStore, ProjectId};

fn p1() -> ProjectId {
    ProjectId::new("p1")
}

async fn read_all(blobs: &dyn BlobStore, project: &ProjectId, key: &str) -> Vec<u8> {
    let mut reader = blobs.open(project, key).await.expect("open");
    let mut out = Vec::new();
    reader.reader.read_to_end(&mut out).await.expect("read");
    assert_eq!(out.len() as u64, reader.len, "open's len is the size read");
    out
}

/// Bytes that differ at every position (so a chunk out of order would show).
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(2654435761).to_le_bytes()[1] ^ salt).collect()
}

pub async fn blobs_round_trip_and_replace(blobs: &dyn BlobStore) {
    let project = p1();
    assert!(matches!(blobs.get(&project, "b1").await, Err(BlobError::NotFound)));
    assert!(matches!(blobs.open(&project, "b1").await, Err(BlobError::NotFound)));
    blobs.put(&project, "b1", b"first").await.unwrap();
    assert_eq!(blobs.get(&project, "b1").await.unwrap(), b"first");
    blobs.put(&project, "b1", b"second, longer").await.unwrap();
    assert_eq!(blobs.get(&project, "b1").await.unwrap(), b"second, longer");
    assert_eq!(read_all(blobs, &project, "b1").await, b"second, longer");
    // Empty content is content.
    blobs.put(&project, "empty", b"").await.unwrap();
    assert_eq!(blobs.get(&project, "empty").await.unwrap(), b"");
    assert_eq!(read_all(blobs, &project, "empty").await, b"");
    // Another project does not see it.
    let other = ProjectId::new("p2");
    assert!(matches!(blobs.get(&other, "b1").await, Err(BlobError::NotFound)));
}

pub async fn blobs_stream_in_pieces(blobs: &dyn BlobStore) {
    let project = p1();
    // Larger than a few of any backend's internal pieces, written in uneven slices.
    let content = pattern(3 * 1024 * 1024 + 12_345, 7);
    let mut writer = blobs.create(&project, "_bulk/job1/Patient-1.ndjson").await.unwrap();
    for piece in content.chunks(333_333) {
        writer.write(piece).await.unwrap();
    }
    // Nothing is visible before finish.
    assert!(matches!(
        blobs.get(&project, "_bulk/job1/Patient-1.ndjson").await,
        Err(BlobError::NotFound)
    ));
    assert_eq!(writer.finish().await.unwrap(), content.len() as u64);
    assert_eq!(read_all(blobs, &project, "_bulk/job1/Patient-1.ndjson").await, content);
    assert_eq!(blobs.get(&project, "_bulk/job1/Patient-1.ndjson").await.unwrap(), content);

    // A writer dropped unfinished leaves the previous content.
    let mut writer = blobs.create(&project, "_bulk/job1/Patient-1.ndjson").await.unwrap();
    writer.write(b"never finished").await.unwrap();
    drop(writer);
    assert_eq!(blobs.get(&project, "_bulk/job1/Patient-1.ndjson").await.unwrap(), content);

    // A reader opened before a replacement reads the version it opened.
    let replaced = pattern(2 * 1024 * 1024 + 1, 9);
    let mut reader = blobs.open(&project, "_bulk/job1/Patient-1.ndjson").await.unwrap();
    let mut first = vec![0u8; 1000];
    reader.reader.read_exact(&mut first).await.unwrap();
    blobs.put(&project, "_bulk/job1/Patient-1.ndjson", &replaced).await.unwrap();
    let mut rest = Vec::new();
    reader.reader.read_to_end(&mut rest).await.unwrap();
    first.extend(rest);
    assert_eq!(first, content, "the open reader kept its version");
    assert_eq!(blobs.get(&project, "_bulk/job1/Patient-1.ndjson").await.unwrap(), replaced);
}

pub async fn blobs_delete_folders(blobs: &dyn BlobStore) {
    let project = p1();
    for key in ["_bulk/j1/a.ndjson", "_bulk/j1/b.ndjson", "_bulk/j10/a.ndjson", "bin1"] {
        blobs.put(&project, key, key.as_bytes()).await.unwrap();
    }
    blobs.delete_folder(&project, "_bulk/j1").await.unwrap();
    for gone in ["_bulk/j1/a.ndjson", "_bulk/j1/b.ndjson"] {
        assert!(matches!(blobs.get(&project, gone).await, Err(BlobError::NotFound)), "{gone}");
    }
    // A folder whose name starts alike, and other keys, stay.
    assert_eq!(blobs.get(&project, "_bulk/j10/a.ndjson").await.unwrap(), b"_bulk/j10/a.ndjson");
    assert_eq!(blobs.get(&project, "bin1").await.unwrap(), b"bin1");
    // Deleting nothing is fine.
    blobs.delete_folder(&project, "_bulk/none").await.unwrap();
    // A deleted key can be written again.
    blobs.put(&project, "_bulk/j1/a.ndjson", b"again").await.unwrap();
    assert_eq!(blobs.get(&project, "_bulk/j1/a.ndjson").await.unwrap(), b"again");
}

pub async fn blobs_refuse_unsafe_keys(blobs: &dyn BlobStore) {
    let project = p1();
    for key in ["", "..", "a/../b", "a//b", "/abs", "a b", "a%2e"] {
        assert!(
            matches!(blobs.put(&project, key, b"x").await, Err(BlobError::NotFound)),
            "put {key:?}"
        );
        assert!(matches!(blobs.get(&project, key).await, Err(BlobError::NotFound)), "{key:?}");
        assert!(blobs.create(&project, key).await.is_err(), "create {key:?}");
    }
    assert!(matches!(blobs.put(&ProjectId::new(".."), "k", b"x").await, Err(BlobError::NotFound)));
}

/// Runs every blob case against the store an `open` function gives (`None` skips).
#[macro_export]
macro_rules! blob_conformance_tests {
    ($open:ident) => {
        $crate::blob_conformance_tests!(@cases $open,
            blobs_round_trip_and_replace,
            blobs_stream_in_pieces,
            blobs_delete_folders,
            blobs_refuse_unsafe_keys
        );
    };
    (@cases $open:ident, $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                if let Some(blobs) = $open(stringify!($case)).await {
                    $crate::testsuite::blobs::$case(&blobs).await;
                }
            }
        )*
    };
}
