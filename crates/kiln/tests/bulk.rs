//! Bulk data with the real binary: an export survives `kill -9` of its server (the restarted
//! process finishes it, each resource once), and `kiln import` loads files into a server.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::Kiln;

fn start(data_dir: &Path, port: u16, extra: &[&str]) -> Kiln {
    let base = format!("http://127.0.0.1:{port}/");
    let data_dir = data_dir.to_str().unwrap();
    let mut args = vec!["--base-url", &base, "--data-dir", data_dir];
    args.extend_from_slice(extra);
    support::start(port, &args)
}

async fn post(client: &reqwest::Client, kiln: &Kiln, token: &str, body: &Value) -> Value {
    let ty = body["resourceType"].as_str().unwrap();
    let url = format!("{}fhir/R4/{ty}", kiln.base);
    let res = support::send(client, reqwest::Method::POST, url, token, body).await;
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_killed_midway_is_finished_by_the_restarted_server() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    // One resource per file: hundreds of checkpoints, so the kill lands in the middle.
    let slow = ["--export-file-resources", "1"];
    let port = support::free_port();
    let mut kiln = start(dir.path(), port, &slow);
    kiln.wait_ready(&client).await;
    let token = kiln.token(&client).await;
    let mut ids = BTreeSet::new();
    for i in 0..300 {
        let p = post(
            &client,
            &kiln,
            &token,
            &json!({"resourceType": "Patient", "name": [{"family": format!("K{i}")}]}),
        )
        .await;
        ids.insert(p["id"].as_str().unwrap().to_owned());
    }
    let res = client
        .get(format!("{}fhir/R4/$export?_type=Patient", kiln.base))
        .bearer_auth(&token)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let status_url = res.headers()["content-location"].to_str().unwrap().to_owned();
    // Kill once some files are written.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = support::get(&client, &status_url, &token).await;
        assert_eq!(res.status(), 202, "the export finished before the kill");
        let progress = res.headers()["x-progress"].to_str().unwrap().to_owned();
        let written: u64 =
            progress.split(", ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        if written >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {progress}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kiln.child.kill().unwrap(); // SIGKILL
    kiln.child.wait().unwrap();

    // Same port, so the status URL stays valid.
    let mut kiln = start(dir.path(), port, &slow);
    kiln.wait_ready(&client).await;
    let token = kiln.token(&client).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let manifest = loop {
        let res = support::get(&client, &status_url, &token).await;
        if res.status() == 200 {
            break res.json::<Value>().await.unwrap();
        }
        assert_eq!(res.status(), 202);
        assert!(Instant::now() < deadline, "the resumed export did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut exported = Vec::new();
    for file in manifest["output"].as_array().unwrap() {
        let text = support::get(&client, file["url"].as_str().unwrap(), &token)
            .await
            .text()
            .await
            .unwrap();
        for line in text.lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            exported.push(r["id"].as_str().unwrap().to_owned());
        }
    }
    let unique: BTreeSet<String> = exported.iter().cloned().collect();
    assert_eq!(exported.len(), unique.len(), "a resource was written twice");
    assert!(ids.is_subset(&unique), "a resource was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_import_loads_ndjson_files_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut kiln = start(dir.path(), support::free_port(), &[]);
    kiln.wait_ready(&client).await;
    let files = tempfile::tempdir().unwrap();
    // 500 patients, uploaded in pieces of about 10 kB.
    let mut ndjson = String::new();
    for i in 0..500 {
        ndjson.push_str(
            &json!({"resourceType": "Patient", "id": format!("cli-{i}"),
                                "name": [{"family": format!("Cli{i}")}]})
            .to_string(),
        );
        ndjson.push('\n');
    }
    ndjson.push_str("{\"resourceType\": \"Patient\", \"gender\": \"robot\"}\n");
    let ndjson_path = files.path().join("Patient.ndjson");
    std::fs::write(&ndjson_path, ndjson).unwrap();
    let bundle_path = files.path().join("bundle.json");
    std::fs::write(
        &bundle_path,
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:7f1c4b8e-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Patient", "name": [{"family": "FromBundle"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "urn:uuid:7f1c4b8e-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "Observation"}}]})
        .to_string(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["import", "--url", &kiln.base, "--email", "admin@example.com"])
        .args(["--password", support::PASSWORD, "--piece-size", "10000"])
        .arg(&ndjson_path)
        .arg(&bundle_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // One line was refused: exit status 1, and the line is named.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("imported 500 resources"), "{stdout}");
    assert!(stderr.contains("Patient.ndjson:501: "), "the refused line is reported: {stderr}");
    assert!(stdout.contains("bundle.json: 2 entries, all written"), "{stdout}");

    let token = kiln.token(&client).await;
    let count = |query: &'static str| {
        let client = client.clone();
        let url = format!("{}fhir/R4/{query}", kiln.base);
        let token = token.clone();
        async move {
            let bundle: Value = support::get_json(&client, url, &token).await;
            bundle["total"].as_u64().unwrap()
        }
    };
    assert_eq!(count("Patient?name=Cli&_summary=count").await, 500);
    assert_eq!(count("Observation?subject:Patient.name=FromBundle&_summary=count").await, 1);

    // A wrong password: refused by the server, exit status 3.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["import", "--url", &kiln.base, "--email", "admin@example.com", "--password", "nope"])
        .arg(&ndjson_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}
