//! The raw bulk load and read-back (`RawLoader`, `PostgresStore::raw_scan`) that
//! `kiln migrate-store` uses: every table of the schema is covered, values of every kind come
//! back exactly, a load is all or nothing, and the key sequences continue after the loaded
//! rows. Each test gets its own schema; PostgreSQL as in `conformance.rs` (skipped with a
//! reason when unreachable, except under `CI=true`).

use kiln_store::raw::{BatchLimits, Digest, RawBatch, RawTable, RawValue};
use kiln_store::sql::Table;
use kiln_store::{Precondition, ProjectId, Store, WriteMethod, WriteOp};
use kiln_store_postgres::PostgresStore;
use serde_json::json;

mod support;

async fn open(test: &str) -> Option<(PostgresStore, String, String)> {
    support::open_schema("kiln_raw", test).await
}

fn t(s: &str) -> RawValue {
    RawValue::Text(s.to_owned())
}

fn i(n: i64) -> RawValue {
    RawValue::Int(n)
}

fn f(x: f64) -> RawValue {
    RawValue::Float(x)
}

fn batch(table: RawTable, rows: Vec<Vec<RawValue>>) -> RawBatch {
    let mut b = RawBatch::new(table);
    for row in rows {
        assert_eq!(row.len(), table.columns().len(), "{table}");
        for v in row {
            b.push(v);
        }
    }
    b
}

/// A small store's worth of rows, every kind of value and NULL among them.
fn rows() -> Vec<RawBatch> {
    let body = br#"{"resourceType":"Patient","id":"a","meta":{"versionId":"1"}}"#.to_vec();
    vec![
        batch(
            RawTable::Setting,
            vec![
                vec![t("kiln.signing-key"), RawValue::Bytes(vec![0, 159, 255, 1])],
                vec![t("kiln.url-key"), RawValue::Bytes(b"secret".to_vec())],
            ],
        ),
        batch(RawTable::EventCounter, vec![vec![t("throttle:x"), i(3), i(1_700_000_000_123)]]),
        batch(RawTable::JobQueue, vec![vec![t("p1"), t("job1"), t("local"), i(1_700_000_000_999)]]),
        batch(
            RawTable::SpParam,
            vec![
                vec![i(1), t("p1"), t("Patient"), t("name")],
                vec![i(7), t("p1"), t("Patient"), t("_lastUpdated")],
            ],
        ),
        batch(
            RawTable::Resource,
            vec![vec![
                i(3),
                t("p1"),
                t("Patient"),
                t("a"),
                i(2),
                i(12),
                RawValue::Bool(true),
                t("2024-01-02T00:00:00.000Z"),
            ]],
        ),
        batch(
            RawTable::History,
            vec![
                vec![
                    i(9),
                    i(3),
                    t("p1"),
                    t("Patient"),
                    t("a"),
                    i(1),
                    t("2024-01-01T00:00:00.000Z"),
                    RawValue::Bool(false),
                    t("POST"),
                    RawValue::Bytes(body),
                ],
                vec![
                    i(12),
                    i(3),
                    t("p1"),
                    t("Patient"),
                    t("a"),
                    i(2),
                    t("2024-01-02T00:00:00.000Z"),
                    RawValue::Bool(true),
                    t("DELETE"),
                    RawValue::Bytes(Vec::new()),
                ],
            ],
        ),
        batch(
            RawTable::UniqueKey,
            vec![vec![t("system"), t("User.email"), t("a@example.com"), i(3)]],
        ),
        batch(
            RawTable::Index(Table::Token),
            vec![
                vec![i(3), i(1), RawValue::Null, t("code"), RawValue::Null, i(0), i(-1), i(0)],
                vec![i(3), i(1), t("http://x"), t("c"), t("Text ü"), i(1), i(0), i(2)],
            ],
        ),
        batch(
            RawTable::Index(Table::String),
            vec![vec![i(3), i(1), t("ann"), t("Ann"), i(0), i(-1), i(0)]],
        ),
        batch(
            RawTable::Index(Table::Date),
            vec![vec![i(3), i(7), i(i64::MIN), i(i64::MAX), i(0), i(-1), i(0)]],
        ),
        batch(
            RawTable::Index(Table::Number),
            vec![vec![
                i(3),
                i(1),
                f(-0.5),
                f(f64::INFINITY),
                f(f64::NEG_INFINITY),
                f(1e300),
                i(0),
                i(-1),
                i(0),
            ]],
        ),
        batch(
            RawTable::Index(Table::Quantity),
            vec![vec![
                i(3),
                i(1),
                t("http://unitsofmeasure.org"),
                t("kg"),
                RawValue::Null,
                f(61.45),
                f(61.55),
                f(61.5),
                f(61.5),
                i(0),
                i(1),
                i(0),
            ]],
        ),
        batch(
            RawTable::Index(Table::Reference),
            vec![vec![
                i(3),
                i(1),
                t("Patient"),
                t("b"),
                RawValue::Null,
                RawValue::Null,
                RawValue::Null,
                RawValue::Null,
                i(0),
                i(-1),
                i(0),
            ]],
        ),
        batch(
            RawTable::Index(Table::Uri),
            vec![vec![i(3), i(1), t("http://example.org/fhir"), i(0), i(-1), i(0)]],
        ),
    ]
}

async fn target_digest(store: &PostgresStore) -> Digest {
    let mut digest = Digest::new();
    for table in RawTable::ALL {
        store
            .raw_scan(table, BatchLimits { rows: 1, bytes: 1 }, |b| {
                digest.add(&b);
                Ok(())
            })
            .await
            .unwrap();
    }
    digest
}

#[tokio::test]
async fn raw_tables_cover_the_schema() {
    let Some((store, url, schema)) = open("cover").await else { return };
    let mut expected: Vec<&str> = RawTable::ALL.iter().map(|t| t.name()).collect();
    expected.push("kiln_schema_version");
    // Binary content: copied blob by blob, not as raw rows (emptied by a load's clear).
    expected.extend(["blob", "blob_chunk"]);
    expected.sort_unstable();
    assert_eq!(store.table_names().await.unwrap(), expected);
    assert_eq!(store.schema_version().await.unwrap(), kiln_store::raw::RAW_SCHEMA_VERSION);
    store.close().await;
    PostgresStore::drop_schema(&url, &schema).await.unwrap();
}

#[tokio::test]
async fn a_load_comes_back_exactly_and_writes_continue_after_it() {
    let Some((store, url, schema)) = open("load").await else { return };
    let source = rows();
    let mut expected = Digest::new();
    for b in &source {
        expected.add(b);
    }

    // A load dropped before its commit leaves nothing behind.
    {
        let loader = store.raw_loader().await.unwrap();
        loader.clear().await.unwrap();
        let mut copy = loader.copy(RawTable::Setting).await.unwrap();
        copy.write(&source[0]).await.unwrap();
        copy.finish().await.unwrap();
    }
    assert_eq!(store.raw_count(RawTable::Setting).await.unwrap(), 0);

    let loader = store.raw_loader().await.unwrap();
    assert!(loader.counts().await.unwrap().iter().all(|(_, n)| *n == 0));
    loader.clear().await.unwrap();
    for b in &source {
        let mut copy = loader.copy(b.table()).await.unwrap();
        copy.write(b).await.unwrap();
        assert_eq!(copy.finish().await.unwrap(), b.len() as u64);
    }
    // Read back inside the load, then after the commit.
    let mut inside = Digest::new();
    for table in RawTable::ALL {
        loader
            .scan(table, BatchLimits::default(), |b| {
                inside.add(&b);
                Ok(())
            })
            .await
            .unwrap();
    }
    assert_eq!(expected.differences(&inside), vec![]);
    loader.commit().await.unwrap();
    assert_eq!(expected.differences(&target_digest(&store).await), vec![]);

    // A second load sees the rows; rows of the wrong table or out-of-range values are refused.
    let loader = store.raw_loader().await.unwrap();
    let counts = loader.counts().await.unwrap();
    assert!(counts.contains(&(RawTable::History, 2)), "{counts:?}");
    let mut copy = loader.copy(RawTable::Index(Table::Uri)).await.unwrap();
    assert!(copy.write(&source[0]).await.is_err());
    let bad =
        batch(RawTable::Index(Table::Uri), vec![vec![i(3), i(1), t("u"), i(1 << 40), i(0), i(0)]]);
    assert!(copy.write(&bad).await.is_err());
    drop(copy);
    drop(loader);
    assert_eq!(expected.differences(&target_digest(&store).await), vec![]);

    // New writes get keys after the loaded ones: the next row id, `seq` and parameter key.
    let project = ProjectId::new("p1");
    let results = store
        .write(
            &project,
            vec![WriteOp::Put {
                resource: json!({"resourceType": "Observation", "id": "new"}),
                method: WriteMethod::Post,
                precondition: Precondition::None,
                unique_keys: Vec::new(),
                index: Vec::new(),
            }],
            kiln_store::Atomicity::All,
        )
        .await
        .unwrap();
    let stored = results[0].as_ref().unwrap().stored.clone().unwrap();
    assert_eq!(stored.seq, 13, "history continues after seq 12");
    let mut rids = Vec::new();
    store
        .raw_scan(RawTable::Resource, BatchLimits::default(), |b| {
            rids.extend(b.rows().map(|r| r[0].clone()));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(rids.len(), 2);
    assert!(rids.contains(&i(4)), "the new row id follows rid 3: {rids:?}");
    let mut params = Vec::new();
    store
        .raw_scan(RawTable::SpParam, BatchLimits::default(), |b| {
            params.extend(b.rows().map(|r| r[0].clone()));
            Ok(())
        })
        .await
        .unwrap();
    assert!(params.contains(&i(8)), "parameter keys continue after 7: {params:?}");
    store.close().await;
    PostgresStore::drop_schema(&url, &schema).await.unwrap();
}
