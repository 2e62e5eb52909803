//! How the store uses its connections: the pool's size (`PostgresOptions::pool_size`; one
//! connection is enough, requests take turns instead of waiting for a second) and the time
//! limit of each statement (`PostgresOptions::query_timeout`).

mod support;

use std::time::Duration;

use kiln_store::{
    Precondition, ProjectId, SearchRequest, Store, StoreError, WriteMethod, WriteOp, write_one,
};
use kiln_store_postgres::{PostgresOptions, PostgresStore};
use serde_json::json;

#[tokio::test]
async fn one_connection_serves_requests_that_arrive_together() {
    let Some((store, url, schema)) = support::open_schema("kiln_test", "pool").await else {
        return;
    };
    assert_eq!(store.pool_size(), kiln_store_postgres::DEFAULT_POOL_SIZE);
    drop(store);
    let options = PostgresOptions { pool_size: 1, ..PostgresOptions::default() };
    let store = PostgresStore::connect_with(&url, Some(&schema), &options).await.unwrap();
    assert_eq!(store.pool_size(), 1);
    let finished = tokio::time::timeout(
        Duration::from_secs(60),
        kiln_store::testsuite::requests_at_once_all_finish(&store),
    )
    .await;
    assert!(finished.is_ok(), "a request waited for a second connection that never came");
    PostgresStore::drop_schema(&url, &schema).await.unwrap();
}

fn by_family(family: &str) -> SearchRequest {
    kiln_store::testsuite::search_for("Patient", "family", family, true)
}

#[tokio::test]
async fn a_statement_past_the_time_limit_is_stopped_and_migrations_are_exempt() {
    let Some((store, url, schema)) = support::open_schema("kiln_test", "limit").await else {
        return;
    };
    drop(store);
    // A fresh schema migrated by a store whose statements may take 1 ms.
    let fresh = format!("{schema}_fresh");
    PostgresStore::drop_schema(&url, &fresh).await.unwrap();
    let tiny = PostgresOptions { pool_size: 2, query_timeout: Some(Duration::from_millis(1)) };
    let migrated = PostgresStore::connect_with(&url, Some(&fresh), &tiny).await;
    assert!(migrated.is_ok(), "migrations ran under the limit: {:?}", migrated.err());
    drop(migrated);
    PostgresStore::drop_schema(&url, &fresh).await.unwrap();

    let options = PostgresOptions { pool_size: 2, query_timeout: Some(Duration::from_millis(300)) };
    let store = PostgresStore::connect_with(&url, Some(&schema), &options).await.unwrap();
    let project = ProjectId::new("p");
    let patient = json!({"resourceType": "Patient", "id": "a", "name": [{"family": "Doe"}]});
    let op = WriteOp::Put {
        index: kiln_search::extract(&patient),
        resource: patient,
        method: WriteMethod::Put,
        precondition: Precondition::None,
        unique_keys: vec![],
    };
    write_one(&store, &project, op).await.unwrap();
    // Another session holds the string index: the search waits for it past the limit.
    let (locker, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute(&format!("BEGIN; LOCK TABLE {schema}.sp_string IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    let err = store.search(&project, &by_family("Doe")).await.unwrap_err();
    assert!(matches!(err, StoreError::TimedOut(_)), "{err:?}");
    locker.batch_execute("ROLLBACK").await.unwrap();
    // The lock gone, the same search answers on the same connections.
    for _ in 0..3 {
        assert_eq!(store.search(&project, &by_family("Doe")).await.unwrap().total, Some(1));
    }
    PostgresStore::drop_schema(&url, &schema).await.unwrap();
}
