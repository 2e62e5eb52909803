//! The real `kiln` binary as a process: acknowledged writes survive `kill -9`, SIGTERM shuts down
//! cleanly, and a restart on an existing data directory keeps keys, users and data.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::Kiln;

fn start(data_dir: &Path, port: u16) -> Kiln {
    let base = format!("http://127.0.0.1:{port}/");
    let data_dir = data_dir.to_str().unwrap();
    support::start(port, &["--base-url", &base, "--data-dir", data_dir])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut kiln = start(dir.path(), support::free_port());
    kiln.wait_ready(&client).await;
    let token = kiln.token(&client).await;

    // 16 writers create patients as fast as they can; the server is killed mid-stream.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut writers = Vec::new();
    for writer in 0..16 {
        let (client, token, tx, base) =
            (client.clone(), token.clone(), tx.clone(), kiln.base.clone());
        writers.push(tokio::spawn(async move {
            for idx in 0.. {
                let body = json!({"resourceType": "Patient", "name": [{"family": format!("W{writer}-{idx}")}]});
                let res = client
                    .post(format!("{base}fhir/R4/Patient"))
                    .bearer_auth(&token)
                    .header("content-type", "application/fhir+json")
                    .body(body.to_string())
                    .send()
                    .await;
                match res {
                    Ok(res) if res.status() == 201 => {
                        let created: Value = match res.json().await {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        let _ = tx.send(created["id"].as_str().unwrap().to_owned());
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(tx);
    // Let a few hundred writes be acknowledged, then SIGKILL.
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 300 {
        acknowledged.push(rx.recv().await.expect("writers stopped early"));
    }
    kiln.child.kill().unwrap(); // SIGKILL on Unix
    kiln.child.wait().unwrap();
    for writer in writers {
        let _ = writer.await;
    }
    while let Ok(id) = rx.try_recv() {
        acknowledged.push(id);
    }

    let mut kiln = start(dir.path(), support::free_port());
    kiln.wait_ready(&client).await;
    let token = kiln.token(&client).await;
    for id in &acknowledged {
        let res = support::get(&client, format!("{}fhir/R4/Patient/{id}", kiln.base), &token).await;
        assert_eq!(res.status(), 200, "acknowledged Patient/{id} was lost");
    }
    eprintln!("{} acknowledged creates survived kill -9", acknowledged.len());
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_restart_keeps_keys() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let port = support::free_port();
    let mut kiln = start(dir.path(), port);
    kiln.wait_ready(&client).await;
    let token = kiln.token(&client).await;
    let created: Value = client
        .post(format!("{}fhir/R4/Patient", kiln.base))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "active": true}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwks: Value = client
        .get(format!("{}.well-known/jwks.json", kiln.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status =
        Command::new("kill").args(["-TERM", &kiln.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = kiln.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "kiln did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "clean exit on SIGTERM, got {exit}");

    let mut kiln = start(dir.path(), port);
    kiln.wait_ready(&client).await;
    let jwks_after: Value = client
        .get(format!("{}.well-known/jwks.json", kiln.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, jwks_after, "the signing key persists across restarts");
    // The old token still verifies (same key, same login).
    let res = support::get(
        &client,
        format!("{}fhir/R4/Patient/{}", kiln.base, created["id"].as_str().unwrap()),
        &token,
    )
    .await;
    assert_eq!(res.status(), 200);
}
