//! Runs the shared storage conformance suite against PostgreSQL. Each test gets its own schema.
//!
//! The database comes from `KILN_TEST_DATABASE_URL`, else the local default
//! `postgres://postgres@127.0.0.1:5432/test`. If nothing answers, the tests skip with a printed
//! reason, except under `CI=true`, where PostgreSQL is required and they fail.

use kiln_store_postgres::PostgresStore;

async fn open(test: &str) -> Option<PostgresStore> {
    let url = std::env::var("KILN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("kiln_test_{test}_{}", std::process::id());
    // A leftover schema of the same name (an earlier crashed run) is dropped first.
    match PostgresStore::drop_schema(&url, &schema).await {
        Ok(()) => {}
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL at {url} is required under CI=true: {e}");
            }
            eprintln!(
                "SKIP {test}: PostgreSQL at {url} is not reachable ({e}); set KILN_TEST_DATABASE_URL"
            );
            return None;
        }
    }
    Some(PostgresStore::connect(&url, Some(&schema)).await.expect("connect and migrate"))
}

kiln_store::conformance_tests!(open);
