//! The conformance suite every backend runs unchanged (feature `testsuite`).
//!
//! Each case is a `pub async fn(&dyn Store)` asserting behaviour, never SQL. A backend's test
//! file calls [`conformance_tests!`](crate::conformance_tests) with an `open` function; a new
//! case must also be listed in that macro.

use std::sync::Arc;

pub mod blobs;
mod oracle;

pub use oracle::{ORACLE_SEED, search_matches_the_oracle};

use serde_json::{Value, json};

use crate::{
    Atomicity, HistoryQuery, HistoryScope, Precondition, ProjectId, Store, StoreError, WriteMethod,
    WriteOp, write_one,
};

fn project() -> ProjectId {
    ProjectId::new("p1")
}

fn put(resource: Value, precondition: Precondition) -> WriteOp {
    let index = kiln_search::extract(&resource);
    WriteOp::Put { resource, method: WriteMethod::Put, precondition, unique_keys: vec![], index }
}

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
}

fn body(stored: &crate::StoredResource) -> Value {
    serde_json::from_slice(&stored.body).unwrap()
}

pub async fn create_assigns_version_1(store: &dyn Store) {
    let res = write_one(store, &project(), put(patient("a", "Doe"), Precondition::MustNotExist))
        .await
        .unwrap();
    assert!(res.created);
    let stored = res.stored.unwrap();
    assert_eq!(stored.version, 1);
    let read = store.read(&project(), "Patient", "a").await.unwrap();
    assert_eq!(read.version, 1);
    let it = body(&read);
    assert_eq!(it["meta"]["versionId"], "1");
    assert_eq!(it["meta"]["lastUpdated"], Value::String(read.last_updated.clone()));
    assert_eq!(it["name"][0]["family"], "Doe");
}

pub async fn create_twice_conflicts(store: &dyn Store) {
    write_one(store, &project(), put(patient("a", "Doe"), Precondition::MustNotExist))
        .await
        .unwrap();
    let err = write_one(store, &project(), put(patient("a", "Roe"), Precondition::MustNotExist))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
}

pub async fn update_increments_version_and_keeps_history(store: &dyn Store) {
    for family in ["A", "B", "C"] {
        write_one(store, &project(), put(patient("x", family), Precondition::None)).await.unwrap();
    }
    let read = store.read(&project(), "Patient", "x").await.unwrap();
    assert_eq!(read.version, 3);
    let v1 = store.vread(&project(), "Patient", "x", 1).await.unwrap();
    assert_eq!(body(&v1)["name"][0]["family"], "A");
    let err = store.vread(&project(), "Patient", "x", 9).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    let scope = HistoryScope::Instance("Patient".into(), "x".into());
    let history = store
        .history(&project(), &scope, &HistoryQuery { count: 10, ..Default::default() })
        .await
        .unwrap();
    let versions: Vec<i64> = history.iter().map(|it| it.version).collect();
    assert_eq!(versions, vec![3, 2, 1]);
    assert_eq!(
        store
            .history_count(&project(), &scope, &HistoryQuery { count: 10, ..Default::default() })
            .await
            .unwrap(),
        3
    );
}

pub async fn if_match_detects_conflicts(store: &dyn Store) {
    write_one(store, &project(), put(patient("m", "A"), Precondition::None)).await.unwrap();
    write_one(store, &project(), put(patient("m", "B"), Precondition::VersionIs(1))).await.unwrap();
    let err = write_one(store, &project(), put(patient("m", "C"), Precondition::VersionIs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { expected: 1, actual: 2 }), "{err:?}");
}

pub async fn delete_is_logical_and_idempotent(store: &dyn Store) {
    write_one(store, &project(), put(patient("d", "A"), Precondition::None)).await.unwrap();
    let del = |id: &str| WriteOp::Delete {
        resource_type: "Patient".into(),
        id: id.into(),
        precondition: Precondition::None,
    };
    let res = write_one(store, &project(), del("d")).await.unwrap();
    assert_eq!(res.stored.unwrap().version, 2);
    let read = store.read(&project(), "Patient", "d").await.unwrap();
    assert!(read.deleted);
    // Deleting again, or deleting what never existed, changes nothing.
    assert!(write_one(store, &project(), del("d")).await.unwrap().stored.is_none());
    assert!(write_one(store, &project(), del("never")).await.unwrap().stored.is_none());
    // Re-creating a deleted resource continues its version sequence.
    let res =
        write_one(store, &project(), put(patient("d", "B"), Precondition::None)).await.unwrap();
    assert!(res.created);
    assert_eq!(res.stored.unwrap().version, 3);
}

pub async fn projects_are_isolated(store: &dyn Store) {
    write_one(store, &project(), put(patient("iso", "A"), Precondition::None)).await.unwrap();
    let other = ProjectId::new("p2");
    let err = store.read(&other, "Patient", "iso").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    let history = store
        .history(&other, &HistoryScope::System, &HistoryQuery { count: 10, ..Default::default() })
        .await
        .unwrap();
    assert!(history.is_empty());
}

pub async fn atomic_group_rolls_back(store: &dyn Store) {
    write_one(store, &project(), put(patient("t1", "A"), Precondition::None)).await.unwrap();
    let ops = vec![
        put(patient("t2", "B"), Precondition::None),
        put(patient("t1", "C"), Precondition::VersionIs(7)),
    ];
    let err = store.write(&project(), ops, Atomicity::All).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }), "{err:?}");
    assert!(store.read(&project(), "Patient", "t2").await.is_err());
    assert_eq!(store.read(&project(), "Patient", "t1").await.unwrap().version, 1);
}

pub async fn each_group_commits_independently(store: &dyn Store) {
    write_one(store, &project(), put(patient("b1", "A"), Precondition::None)).await.unwrap();
    let ops = vec![
        put(patient("b2", "B"), Precondition::None),
        put(patient("b1", "C"), Precondition::VersionIs(7)),
        put(patient("b3", "D"), Precondition::None),
    ];
    let results = store.write(&project(), ops, Atomicity::Each).await.unwrap();
    assert!(results[0].is_ok());
    assert!(results[1].is_err());
    assert!(results[2].is_ok(), "the ops after a failed one are written too");
    // Each written once (a first attempt undone leaves no version behind), b1 untouched.
    for (id, version) in [("b2", 1), ("b3", 1), ("b1", 1)] {
        let stored = store.read(&project(), "Patient", id).await.unwrap();
        assert_eq!(stored.version, version, "{id}");
    }
}

pub async fn history_pages_and_filters(store: &dyn Store) {
    for idx in 0..5 {
        write_one(store, &project(), put(patient(&format!("h{idx}"), "A"), Precondition::None))
            .await
            .unwrap();
    }
    let scope = HistoryScope::Type("Patient".into());
    let page1 = store
        .history(&project(), &scope, &HistoryQuery { count: 2, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page1.len(), 2);
    assert_eq!(page1[0].id, "h4");
    let cursor = page1[1].seq;
    let page2 = store
        .history(
            &project(),
            &scope,
            &HistoryQuery { count: 10, before_seq: Some(cursor), ..Default::default() },
        )
        .await
        .unwrap();
    let ids: Vec<&str> = page2.iter().map(|it| it.id.as_str()).collect();
    assert_eq!(ids, vec!["h2", "h1", "h0"]);
    let far_future = "2999-01-01T00:00:00.000Z".to_owned();
    let none = store
        .history(
            &project(),
            &scope,
            &HistoryQuery { count: 10, since: Some(far_future), ..Default::default() },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
}

pub async fn unique_keys_are_enforced_and_replaced(store: &dyn Store) {
    let user = |id: &str, email: &str| WriteOp::Put {
        resource: json!({"resourceType": "User", "id": id, "email": email}),
        method: WriteMethod::Put,
        precondition: Precondition::None,
        unique_keys: vec![("User.email".into(), email.into())],
        index: vec![],
    };
    write_one(store, &project(), user("u1", "a@x")).await.unwrap();
    let err = write_one(store, &project(), user("u2", "a@x")).await.unwrap_err();
    assert!(matches!(err, StoreError::UniqueViolation { .. }), "{err:?}");
    assert_eq!(
        store.lookup_unique(&project(), "User.email", "a@x").await.unwrap(),
        Some(("User".into(), "u1".into()))
    );
    let other = ProjectId::new("p2");
    write_one(store, &other, user("u9", "a@x")).await.unwrap();
    let all = store.lookup_key_all_projects("User.email", "a@x").await.unwrap();
    assert_eq!(
        all,
        vec![(project(), "User".into(), "u1".into()), (other, "User".into(), "u9".into())]
    );
    // Changing the email frees the old key.
    write_one(store, &project(), user("u1", "b@x")).await.unwrap();
    assert_eq!(store.lookup_unique(&project(), "User.email", "a@x").await.unwrap(), None);
    write_one(store, &project(), user("u2", "a@x")).await.unwrap();
    // Deleting frees keys too.
    write_one(
        store,
        &project(),
        WriteOp::Delete {
            resource_type: "User".into(),
            id: "u2".into(),
            precondition: Precondition::None,
        },
    )
    .await
    .unwrap();
    assert_eq!(store.lookup_unique(&project(), "User.email", "a@x").await.unwrap(), None);
}

pub async fn settings_round_trip(store: &dyn Store) {
    assert_eq!(store.get_setting("k").await.unwrap(), None);
    store.put_setting("k", b"v1").await.unwrap();
    store.put_setting("k", b"v2").await.unwrap();
    assert_eq!(store.get_setting("k").await.unwrap(), Some(b"v2".to_vec()));
    assert_eq!(store.put_setting_if_absent("k", b"v3").await.unwrap(), b"v2".to_vec());
    assert_eq!(store.put_setting_if_absent("new", b"n1").await.unwrap(), b"n1".to_vec());
    assert_eq!(store.put_setting_if_absent("new", b"n2").await.unwrap(), b"n1".to_vec());
}

/// The job queue: a job is leased to one node at a time; a lease that runs out lets another
/// node claim the job; renewals tell a node which jobs it still holds.
pub async fn job_queue_leases_jobs_to_one_node(store: &dyn Store) {
    use std::time::Duration;
    let long = Duration::from_secs(60);
    let short = Duration::from_millis(300);
    let p = project();
    store.enqueue_job(&p, "j1", "node-a", long).await.unwrap();
    store.enqueue_job(&p, "j2", "node-a", short).await.unwrap();
    store.enqueue_job(&p, "j3", "node-a", short).await.unwrap();
    // Enqueueing again changes nothing.
    store.enqueue_job(&p, "j1", "node-b", short).await.unwrap();
    let queued = store.queued_jobs().await.unwrap();
    assert_eq!(queued.len(), 3);
    assert!(queued.iter().all(|j| j.node == "node-a" && j.leased), "{queued:?}");
    // Live leases are not claimed by another node.
    assert!(store.claim_jobs("node-b", long, 10, false).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let lapsed: Vec<String> = store
        .queued_jobs()
        .await
        .unwrap()
        .into_iter()
        .filter(|j| !j.leased)
        .map(|j| j.id)
        .collect();
    assert_eq!(lapsed, ["j2", "j3"]);
    // Two nodes claim at once: each lapsed job goes to exactly one of them.
    let (b, c) = tokio::join!(
        store.claim_jobs("node-b", long, 10, false),
        store.claim_jobs("node-c", long, 10, false)
    );
    let (b, c) = (b.unwrap(), c.unwrap());
    let mut claimed: Vec<String> = b.iter().chain(&c).map(|(_, id)| id.clone()).collect();
    claimed.sort();
    assert_eq!(claimed, lapsed, "each lapsed job claimed once");
    assert!(store.claim_jobs("node-d", long, 10, false).await.unwrap().is_empty());
    // Renewing tells node-a which jobs it still holds.
    let held: Vec<String> =
        store.renew_jobs("node-a", long).await.unwrap().into_iter().map(|(_, id)| id).collect();
    assert_eq!(held, ["j1"]);
    assert_eq!(store.renew_jobs("node-b", long).await.unwrap().len(), b.len());
    // A node may take its own jobs back at once (after its own restart), and no other's.
    let own: Vec<String> = store
        .claim_jobs("node-a", long, 10, true)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(own, ["j1"]);
    for id in ["j1", "j2", "j3"] {
        store.finish_job(&p, id).await.unwrap();
    }
    assert!(store.queued_jobs().await.unwrap().is_empty());
    assert!(store.renew_jobs("node-a", long).await.unwrap().is_empty());
}

/// A search of `ty` for one `param=value` (built-in parameters), first page of 10, with the
/// total when `total`.
pub fn search_for(ty: &str, param: &str, value: &str, total: bool) -> crate::SearchRequest {
    let pairs = vec![(param.to_owned(), value.to_owned())];
    let query = kiln_search::parse(ty, &pairs).expect("a valid search");
    crate::SearchRequest { query, after: None, count: 10, total }
}

/// Writes, searches with totals, reads and history all at once on one store: each finishes
/// (a store that holds one connection while waiting for a second would hang here when its
/// pool is small), and every write is found afterwards.
pub async fn requests_at_once_all_finish(store: &dyn Store) {
    let by_family = |family: &str| search_for("Patient", "family", family, true);
    let p = project();
    let writes = (0..8).map(|i| {
        let op = put(patient(&format!("busy{i}"), "Busy"), Precondition::None);
        let p = p.clone();
        async move { write_one(store, &p, op).await.map(|_| ()) }
    });
    // Large writes too (a backend may give them turns), more of them than it gives at once.
    let batches = (0..3).map(|b| {
        let ops = (0..40)
            .map(|i| put(patient(&format!("bulk{b}-{i}"), "Bulk"), Precondition::None))
            .collect();
        let p = p.clone();
        async move { store.write(&p, ops, Atomicity::Each).await.map(|_| ()) }
    });
    let searches = (0..8).map(|_| async { store.search(&p, &by_family("Busy")).await.map(|_| ()) });
    let histories = (0..4).map(|_| async {
        let scope = HistoryScope::Type("Patient".into());
        store
            .history(&p, &scope, &HistoryQuery { count: 10, ..Default::default() })
            .await
            .map(|_| ())
    });
    let (w, b, s, h) = tokio::join!(
        futures_util::future::join_all(writes),
        futures_util::future::join_all(batches),
        futures_util::future::join_all(searches),
        futures_util::future::join_all(histories),
    );
    for r in w.into_iter().chain(b).chain(s).chain(h) {
        r.unwrap();
    }
    assert_eq!(store.search(&p, &by_family("Busy")).await.unwrap().total, Some(8));
    assert_eq!(store.search(&p, &by_family("Bulk")).await.unwrap().total, Some(120));
}

/// Event counters count until their time runs out without an event, then start again.
pub async fn event_counters_count_until_they_expire(store: &dyn Store) {
    use std::time::Duration;
    let minute = Duration::from_secs(60);
    assert_eq!(store.event_count("k").await.unwrap(), 0);
    assert_eq!(store.count_event("k", minute).await.unwrap(), 1);
    assert_eq!(store.count_event("k", minute).await.unwrap(), 2);
    assert_eq!(store.count_event("other", minute).await.unwrap(), 1);
    assert_eq!(store.event_count("k").await.unwrap(), 2);
    store.clear_events("k").await.unwrap();
    assert_eq!(store.event_count("k").await.unwrap(), 0);
    assert_eq!(store.event_count("other").await.unwrap(), 1);
    let short = Duration::from_millis(200);
    assert_eq!(store.count_event("brief", short).await.unwrap(), 1);
    assert_eq!(store.count_event("brief", short).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.event_count("brief").await.unwrap(), 0);
    assert_eq!(store.count_event("brief", short).await.unwrap(), 1, "starts again");
}

/// Many tasks race to update one resource with `If-Match`: for every version exactly one
/// wins, nothing is lost, and the history is complete.
/// `WriteOp::Reindex` replaces the rows of the live version only, and writes no version.
pub async fn reindex_replaces_rows_of_the_live_version(store: &dyn Store) {
    use crate::SearchRequest;
    let eye = |color: &str| {
        json!({"resourceType": "Patient", "id": "a", "extension": [
            {"url": "http://example.org/eye", "valueCode": color}]})
    };
    let params = [json!({"resourceType": "SearchParameter", "id": "eye", "status": "active",
        "code": "eye", "base": ["Patient"], "type": "token",
        "expression": "Patient.extension('http://example.org/eye').value"})];
    let registry = kiln_search::Registry::new(&params);
    let find = |color: &str| {
        let pairs = vec![("eye".to_owned(), color.to_owned())];
        let query = registry.parse("Patient", &pairs).unwrap();
        SearchRequest { query, after: None, count: 10, total: true }
    };
    // Written before the parameter existed: not found.
    write_one(store, &project(), put(eye("green"), Precondition::None)).await.unwrap();
    let page = store.search(&project(), &find("green")).await.unwrap();
    assert_eq!(page.total, Some(0));
    let reindex = |version: i64, resource: &Value| WriteOp::Reindex {
        resource_type: "Patient".into(),
        id: "a".into(),
        version,
        index: registry.extract(resource),
    };
    let res = write_one(store, &project(), reindex(1, &eye("green"))).await.unwrap();
    assert!(res.created && res.stored.is_none());
    let page = store.search(&project(), &find("green")).await.unwrap();
    assert_eq!(page.total, Some(1));
    // The built-in rows were replaced too, not lost.
    let by_id = vec![("_id".to_owned(), "a".to_owned())];
    let query = kiln_search::parse("Patient", &by_id).unwrap();
    let request = SearchRequest { query, after: None, count: 1, total: true };
    assert_eq!(store.search(&project(), &request).await.unwrap().total, Some(1));
    // No version was written.
    assert_eq!(store.read(&project(), "Patient", "a").await.unwrap().version, 1);
    // A reindex of a version that is no longer live changes nothing.
    let blue = json!({"resourceType": "Patient", "id": "a", "extension": [
        {"url": "http://example.org/eye", "valueCode": "blue"}]});
    let op = WriteOp::Put {
        index: registry.extract(&blue),
        resource: blue,
        method: WriteMethod::Put,
        precondition: Precondition::None,
        unique_keys: vec![],
    };
    write_one(store, &project(), op).await.unwrap();
    let res = write_one(store, &project(), reindex(1, &eye("green"))).await.unwrap();
    assert!(!res.created);
    assert_eq!(store.search(&project(), &find("green")).await.unwrap().total, Some(0));
    assert_eq!(store.search(&project(), &find("blue")).await.unwrap().total, Some(1));
    // Nor does a reindex of a deleted or missing resource.
    let del = WriteOp::Delete {
        resource_type: "Patient".into(),
        id: "a".into(),
        precondition: Precondition::None,
    };
    write_one(store, &project(), del).await.unwrap();
    assert!(!write_one(store, &project(), reindex(2, &eye("blue"))).await.unwrap().created);
    assert_eq!(store.search(&project(), &find("blue")).await.unwrap().total, Some(0));
    let mut other = eye("blue");
    other["id"] = json!("missing");
    let op = WriteOp::Reindex {
        resource_type: "Patient".into(),
        id: "missing".into(),
        version: 1,
        index: registry.extract(&other),
    };
    assert!(!write_one(store, &project(), op).await.unwrap().created);
}

pub async fn concurrent_if_match_updates_lose_nothing(store: Arc<dyn Store>) {
    write_one(&*store, &project(), put(patient("race", "0"), Precondition::None)).await.unwrap();
    let mut tasks = Vec::new();
    for idx in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = 0;
            loop {
                let current = store.read(&project(), "Patient", "race").await.unwrap();
                let op = put(
                    patient("race", &idx.to_string()),
                    Precondition::VersionIs(current.version),
                );
                match write_one(&*store, &project(), op).await {
                    Ok(_) => {
                        wins += 1;
                        return wins;
                    }
                    Err(StoreError::VersionConflict { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, 50);
    let read = store.read(&project(), "Patient", "race").await.unwrap();
    assert_eq!(read.version, 51);
    let scope = HistoryScope::Instance("Patient".into(), "race".into());
    let history = store
        .history(&project(), &scope, &HistoryQuery { count: 100, ..Default::default() })
        .await
        .unwrap();
    let versions: Vec<i64> = history.iter().map(|it| it.version).collect();
    assert_eq!(versions, (1..=51).rev().collect::<Vec<_>>());
}

/// Expands to one `#[tokio::test]` per conformance case. `$open` is an async fn taking the
/// test name and returning `Option<S>` where `S: Store`; `None` skips (with a printed reason).
#[macro_export]
macro_rules! conformance_tests {
    ($open:ident) => {
        $crate::conformance_tests!(@cases $open,
            create_assigns_version_1,
            create_twice_conflicts,
            update_increments_version_and_keeps_history,
            if_match_detects_conflicts,
            delete_is_logical_and_idempotent,
            projects_are_isolated,
            atomic_group_rolls_back,
            each_group_commits_independently,
            history_pages_and_filters,
            unique_keys_are_enforced_and_replaced,
            settings_round_trip,
            job_queue_leases_jobs_to_one_node,
            event_counters_count_until_they_expire,
            requests_at_once_all_finish,
            reindex_replaces_rows_of_the_live_version,
            search_matches_the_oracle
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_if_match_updates_lose_nothing() {
            if let Some(store) = $open("concurrent_if_match_updates_lose_nothing").await {
                let store: std::sync::Arc<dyn $crate::Store> = std::sync::Arc::new(store);
                $crate::testsuite::concurrent_if_match_updates_lose_nothing(store).await;
            }
        }
    };
    (@cases $open:ident, $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                if let Some(store) = $open(stringify!($case)).await {
                    $crate::testsuite::$case(&store).await;
                }
            }
        )*
    };
}
