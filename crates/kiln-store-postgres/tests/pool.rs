//! The connection pool's size: set by `connect_with_pool`, and enough at one connection
//! (requests take turns instead of waiting for a second).

mod support;

use std::time::Duration;

use kiln_store_postgres::PostgresStore;

#[tokio::test]
async fn one_connection_serves_requests_that_arrive_together() {
    let Some((store, url, schema)) = support::open_schema("kiln_test", "pool").await else {
        return;
    };
    assert_eq!(store.pool_size(), kiln_store_postgres::DEFAULT_POOL_SIZE);
    drop(store);
    let store = PostgresStore::connect_with_pool(&url, Some(&schema), 1).await.unwrap();
    assert_eq!(store.pool_size(), 1);
    let finished = tokio::time::timeout(
        Duration::from_secs(60),
        kiln_store::testsuite::requests_at_once_all_finish(&store),
    )
    .await;
    assert!(finished.is_ok(), "a request waited for a second connection that never came");
    PostgresStore::drop_schema(&url, &schema).await.unwrap();
}
