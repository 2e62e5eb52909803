//! A search that runs past the store's query time limit is stopped (`StoreError::TimedOut`)
//! and the connection it ran on serves the next search normally.

use std::time::{Duration, Instant};

use kiln_store::{
    Atomicity, Precondition, ProjectId, SearchRequest, Store, StoreError, WriteMethod, WriteOp,
};
use kiln_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

fn contains(text: &str) -> SearchRequest {
    kiln_store::testsuite::search_for("Patient", "name:contains", text, true)
}

#[tokio::test]
async fn a_search_past_the_time_limit_is_stopped() {
    let dir = tempfile::tempdir().unwrap().keep();
    let store = SqliteStore::open(&dir, SqliteOptions::default()).unwrap();
    let project = ProjectId::new("p");
    // Enough Patients that a `:contains` scan with a total takes well over the limit below.
    let mut written = 0;
    let mut unlimited = Duration::ZERO;
    while written < 64_000 && unlimited < Duration::from_millis(30) {
        let ops = (written..written + 4000)
            .map(|i| {
                let resource = json!({"resourceType": "Patient", "id": format!("p{i}"),
                    "name": [{"family": format!("Family{i}"), "given": ["Alexandra", "Beatrice"]}]});
                WriteOp::Put {
                    index: kiln_search::extract(&resource),
                    resource,
                    method: WriteMethod::Put,
                    precondition: Precondition::None,
                    unique_keys: vec![],
                }
            })
            .collect();
        store.write(&project, ops, Atomicity::Each).await.unwrap();
        written += 4000;
        let started = Instant::now();
        let page = store.search(&project, &contains("atric")).await.unwrap();
        unlimited = started.elapsed();
        assert_eq!(page.total, Some(written as u64));
    }
    assert!(unlimited >= Duration::from_millis(30), "the scan stayed fast: {unlimited:?}");

    store.set_query_timeout(Some(Duration::from_millis(1)));
    let started = Instant::now();
    let err = store.search(&project, &contains("atric")).await.unwrap_err();
    assert!(matches!(err, StoreError::TimedOut(_)), "{err:?}");
    assert!(started.elapsed() < unlimited, "stopped before the end");
    // Cheap searches still answer within the limit...
    let by_id = kiln_store::testsuite::search_for("Patient", "_id", "p7", false);
    store.set_query_timeout(Some(Duration::from_secs(30)));
    assert_eq!(store.search(&project, &by_id).await.unwrap().matches.len(), 1);
    // ... and without a limit the long one runs to its end again.
    store.set_query_timeout(None);
    let page = store.search(&project, &contains("atric")).await.unwrap();
    assert_eq!(page.total, Some(written as u64));
}
