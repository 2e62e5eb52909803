//! What the PostgreSQL test files share: a store in a schema of its own.
//!
//! The database comes from `KILN_TEST_DATABASE_URL`, else the local default
//! `postgres://postgres@127.0.0.1:5432/test`. If nothing answers, `None` (the test skips with a
//! printed reason), except under `CI=true`, where PostgreSQL is required and the test fails.

use kiln_store_postgres::PostgresStore;

pub const URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A migrated store in the schema `<prefix>_<test>_<pid>` (a leftover of that name, from an
/// earlier crashed run, dropped first), with the database URL and the schema's name.
pub async fn open_schema(prefix: &str, test: &str) -> Option<(PostgresStore, String, String)> {
    let url = std::env::var("KILN_TEST_DATABASE_URL").unwrap_or_else(|_| URL_DEFAULT.to_owned());
    let schema = format!("{prefix}_{test}_{}", std::process::id());
    if let Err(e) = PostgresStore::drop_schema(&url, &schema).await {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("PostgreSQL at {url} is required under CI=true: {e}");
        }
        eprintln!(
            "SKIP {test}: PostgreSQL at {url} is not reachable ({e}); set KILN_TEST_DATABASE_URL"
        );
        return None;
    }
    let store = PostgresStore::connect(&url, Some(&schema)).await.expect("connect and migrate");
    Some((store, url, schema))
}
