//! Racing writers over HTTP: optimistic concurrency never loses an update.

use reqwest::Method;
use serde_json::json;

use crate::support::{TestServer, patient};

/// 50 clients update one resource with `If-Match`, retrying on 412: for every version exactly
/// one wins, every client eventually wins once, and the history is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_if_match_updates_lose_nothing() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let created = server.create(&patient("Race")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for idx in 0..50 {
        let server = server.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("Patient/{id}");
            let mut conflicts = 0;
            loop {
                let (_, current) = server.get_json(&path).await;
                let version = current["meta"]["versionId"].as_str().unwrap().to_owned();
                let mut next = current.clone();
                next["name"][0]["given"] = json!([format!("writer-{idx}")]);
                let res = server
                    .send_json(Method::PUT, &path, &next)
                    .header("if-match", format!("W/\"{version}\""))
                    .send()
                    .await
                    .unwrap();
                match res.status().as_u16() {
                    200 => return conflicts,
                    412 => conflicts += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
        }));
    }
    let mut total_conflicts = 0;
    for task in tasks {
        total_conflicts += task.await.unwrap();
    }
    let (_, current) = server.get_json(&format!("Patient/{id}")).await;
    assert_eq!(current["meta"]["versionId"], "51");
    let (_, history) = server.get_json(&format!("Patient/{id}/_history?_count=100")).await;
    let entries = history["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 51);
    let mut writers: Vec<String> = entries[..50]
        .iter()
        .map(|e| e["resource"]["name"][0]["given"][0].as_str().unwrap().to_owned())
        .collect();
    writers.sort();
    writers.dedup();
    assert_eq!(writers.len(), 50, "every writer's update is in the history exactly once");
    eprintln!("{total_conflicts} conflicts were detected and retried");
}
