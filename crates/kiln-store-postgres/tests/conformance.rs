//! Runs the shared storage conformance suite against PostgreSQL. Each test gets its own schema.
//!
//! The database comes from `KILN_TEST_DATABASE_URL`, else the local default
//! `postgres://postgres@127.0.0.1:5432/test`. If nothing answers, the tests skip with a printed
//! reason, except under `CI=true`, where PostgreSQL is required and they fail.

mod support;

use kiln_store_postgres::PostgresStore;

async fn open(test: &str) -> Option<PostgresStore> {
    Some(support::open_schema("kiln_test", test).await?.0)
}

kiln_store::conformance_tests!(open);
