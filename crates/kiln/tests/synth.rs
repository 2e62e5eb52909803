//! `kiln synth` with the real binary: what it writes loads into a running Kiln as it is.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod support;

fn synth(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["synth", "--patients", "2", "--seed", "5", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_bundles_load_into_a_server() {
    let out = tempfile::tempdir().unwrap();
    let run = synth(out.path(), &[]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report = String::from_utf8_lossy(&run.stderr);
    assert!(report.contains("resources/s") && report.contains("Observation"), "{report}");
    // A second run into the same directory is refused rather than mixed in.
    assert!(!synth(out.path(), &[]).status.success());

    let (kiln, _data) = support::start_fresh().await;
    let client = reqwest::Client::new();
    let token = kiln.token(&client).await;

    let mut patient_bundle = Value::Null;
    for name in ["00-shared.json", "patient-000000.json", "patient-000001.json"] {
        let body = std::fs::read(out.path().join(name)).unwrap();
        let sent: Value = serde_json::from_slice(&body).unwrap();
        let res = client
            .post(format!("{}fhir/R4", kiln.base))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let answer: Value = res.json().await.unwrap();
        assert_eq!(status, 200, "{name}: {answer}");
        let entries = answer["entry"].as_array().unwrap();
        assert_eq!(entries.len(), sent["entry"].as_array().unwrap().len(), "{name}");
        for entry in entries {
            let status = entry["response"]["status"].as_str().unwrap();
            assert!(status.starts_with("200") || status.starts_with("201"), "{name}: {entry}");
        }
        if name == "patient-000000.json" {
            patient_bundle = sent;
        }
    }

    // The patient's Observations are found through the reference the server resolved from
    // the `urn:uuid:` fullUrl.
    let entries = patient_bundle["entry"].as_array().unwrap();
    let patient_id = entries[0]["resource"]["id"].as_str().unwrap();
    let observations =
        entries.iter().filter(|e| e["resource"]["resourceType"] == "Observation").count();
    let found: Value = support::get_json(
        &client,
        format!("{}fhir/R4/Observation?subject=Patient/{patient_id}&_summary=count", kiln.base),
        &token,
    )
    .await;
    assert_eq!(found["total"], observations, "{found}");
}
