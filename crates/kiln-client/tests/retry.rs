//! Retries against a stub server whose answers the test scripts: 429 and 5xx with
//! `Retry-After`, idempotent and non-idempotent methods.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use futures_util::TryStreamExt;
use kiln_client::{Error, KilnClient, RetryPolicy};
use serde_json::json;

/// Serves every request with the scripted statuses in turn (then 200 with a Patient), each
/// failure with `Retry-After: <retry_after>`. Returns the root URL and the request counter.
async fn stub(failures: Vec<u16>, retry_after: &'static str) -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let handler = move || {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let failures = failures.clone();
        async move {
            if let Some(&status) = failures.get(n) {
                let mut headers = HeaderMap::new();
                headers.insert(header::RETRY_AFTER, retry_after.parse().unwrap());
                headers.insert(header::CONTENT_TYPE, "application/fhir+json".parse().unwrap());
                let outcome = json!({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "transient", "diagnostics": "busy"}]});
                return (StatusCode::from_u16(status).unwrap(), headers, outcome.to_string())
                    .into_response();
            }
            let patient = json!({"resourceType": "Patient", "id": "p1"});
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/fhir+json")], patient.to_string())
                .into_response()
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (root, count)
}

/// Exponential backoff far shorter than the `Retry-After` the stub sends.
fn quick() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn a_503_is_retried_after_the_retry_after_delay() {
    let (root, count) = stub(vec![503], "1").await;
    let client = KilnClient::new(&root).unwrap().with_retry_policy(quick());
    let start = Instant::now();
    let patient = client.read("Patient", "p1").await.unwrap();
    assert_eq!(patient["id"], "p1");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(start.elapsed() >= Duration::from_millis(950), "{:?}", start.elapsed());
}

#[tokio::test]
async fn a_429_is_retried_even_for_a_post() {
    let (root, count) = stub(vec![429, 429], "0").await;
    let client = KilnClient::new(&root).unwrap().with_retry_policy(quick());
    client.create(&json!({"resourceType": "Patient"})).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_503_to_a_post_is_not_retried() {
    let (root, count) = stub(vec![503], "0").await;
    let client = KilnClient::new(&root).unwrap().with_retry_policy(quick());
    let err = client.create(&json!({"resourceType": "Patient"})).await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(count.load(Ordering::SeqCst), 1, "a POST may have been processed");
}

#[tokio::test]
async fn retries_are_bounded_and_the_last_outcome_is_kept() {
    let (root, count) = stub(vec![502, 503, 504, 503, 503], "0").await;
    let client = KilnClient::new(&root).unwrap().with_retry_policy(quick());
    let err = client.read("Patient", "p1").await.unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 4, "the first attempt and three retries");
    let Error::Http { status: 503, outcome: Some(outcome), .. } = &err else { panic!("{err:?}") };
    assert_eq!(outcome["issue"][0]["diagnostics"], "busy");
    assert_eq!(err.to_string(), "HTTP 503: busy");

    let (root, count) = stub(vec![503], "0").await;
    let client = KilnClient::new(&root).unwrap().with_retry_policy(RetryPolicy::none());
    assert_eq!(client.read("Patient", "p1").await.unwrap_err().status(), Some(503));
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_retry_after_beyond_the_longest_wait_is_not_cut_short() {
    let (root, count) = stub(vec![429], "120").await;
    let client = KilnClient::new(&root).unwrap().with_retry_policy(quick());
    let start = Instant::now();
    let err = client.read("Patient", "p1").await.unwrap_err();
    assert!(err.is_too_many_requests(), "{err:?}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_refused_connection_is_a_network_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client =
        KilnClient::new(&format!("http://127.0.0.1:{port}/")).unwrap().with_retry_policy(quick());
    let err = client.read("Patient", "p1").await.unwrap_err();
    assert!(matches!(err, Error::Network(_)), "{err:?}");
}

#[tokio::test]
async fn ndjson_lines_split_across_chunks_are_joined() {
    let chunks = [
        "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Pat",
        "ient\",\"id\":\"b\"}\n\n",
        "{\"resourceType\":\"Patient\",\"id\":\"c\"}",
    ];
    let app = axum::Router::new().route(
        "/files/1.ndjson",
        axum::routing::get(move || async move {
            let body = futures_util::stream::iter(
                chunks.map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c))),
            );
            axum::body::Body::from_stream(body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = KilnClient::new(&root).unwrap();
    let lines: Vec<serde_json::Value> =
        client.download_ndjson(&format!("{root}files/1.ndjson")).try_collect().await.unwrap();
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}
