//! Real data: the Synthea bundles load with no error (the shared hospital and practitioner
//! batches first, with conditional creates; then every patient transaction, whose conditional
//! references must resolve to those resources), and the loaded data answers searches.

use std::path::Path;

use reqwest::Method;
use serde_json::Value;

use crate::support::{Options, TestServer, json_of, shared_data};

async fn post_bundle(server: &TestServer, path: &Path) -> Value {
    let body = std::fs::read(path).unwrap();
    let res = server
        .fhir(Method::POST, "")
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, out) = json_of(res).await;
    assert_eq!(status, 200, "{}: {out}", path.display());
    for (i, entry) in out["entry"].as_array().unwrap().iter().enumerate() {
        let status = entry["response"]["status"].as_str().unwrap_or_default();
        assert!(
            status.starts_with("200") || status.starts_with("201"),
            "{} entry {i}: {entry}",
            path.display()
        );
    }
    out
}

async fn total(server: &TestServer, query: &str) -> u64 {
    let (status, bundle) = server.get_json(query).await;
    assert_eq!(status, 200, "{query}: {bundle}");
    bundle["total"].as_u64().unwrap_or_else(|| panic!("{query}: no total in {bundle}"))
}

#[tokio::test]
async fn synthea_bundles_load_and_resolve() {
    let Some(dir) = shared_data("synthea") else { return };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "MANIFEST.json"))
        .collect();
    files.sort();
    let (shared, patients): (Vec<_>, Vec<_>) = files.into_iter().partition(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.starts_with("0-") || name.contains("Information")
    });
    assert_eq!(shared.len(), 2, "{shared:?}");
    assert!(patients.len() >= 40, "{} patient bundles", patients.len());

    // The server's default body limit (16 MiB), not the tests' small one.
    let server =
        TestServer::start_with(Options { max_body: 16 * 1024 * 1024, ..Options::default() }).await;
    for path in &shared {
        post_bundle(&server, path).await;
    }
    // The shared bundles' Organizations, Locations and Practitioners are conditional creates:
    // loading them again creates none of them (the PractitionerRoles are plain creates).
    let orgs = total(&server, "Organization?_summary=count").await;
    let practitioners = total(&server, "Practitioner?_summary=count").await;
    for path in &shared {
        let out = post_bundle(&server, path).await;
        let source: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let conditional = source["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"].get("ifNoneExist").is_some());
        for (i, (entry, conditional)) in
            out["entry"].as_array().unwrap().iter().zip(conditional).enumerate()
        {
            if conditional {
                assert_eq!(entry["response"]["status"], "200 OK", "{} entry {i}", path.display());
            }
        }
    }
    assert_eq!(total(&server, "Organization?_summary=count").await, orgs);
    assert_eq!(total(&server, "Practitioner?_summary=count").await, practitioners);

    let mut expected = 0u64;
    for path in &patients {
        let out = post_bundle(&server, path).await;
        expected += out["entry"].as_array().unwrap().len() as u64;
    }
    assert_eq!(total(&server, "Patient?_summary=count").await, patients.len() as u64);
    let loaded = total(&server, "?_summary=count").await;
    assert!(loaded >= expected, "{loaded} resources stored, {expected} created");

    // Every conditional reference was replaced by a resolvable one.
    let unresolved = total(&server, "Encounter?participant:missing=false&_summary=count").await;
    assert!(unresolved > 0);
    let chained = total(
        &server,
        "Encounter?participant:Practitioner.identifier=http://hl7.org/fhir/sid/us-npi|&_summary=count",
    )
    .await;
    assert_eq!(chained, unresolved, "every Encounter participant is a loaded Practitioner");
    let (_, page) = server.get_json("Encounter?_count=50&_include=Encounter:participant").await;
    for entry in page["entry"].as_array().unwrap() {
        let text = entry["resource"].to_string();
        assert!(!text.contains("Practitioner?identifier"), "unresolved reference in {text}");
    }

    // A few searches over the loaded data agree with each other.
    let (_, patients_page) = server.get_json("Patient?_count=1").await;
    let patient = &patients_page["entry"][0]["resource"];
    let pid = patient["id"].as_str().unwrap();
    let observations = total(&server, &format!("Observation?patient={pid}&_summary=count")).await;
    let vitals =
        total(&server, &format!("Observation?patient={pid}&category=vital-signs&_summary=count"))
            .await;
    assert!(observations > 0 && vitals <= observations);
    let has = total(
        &server,
        &format!("Patient?_id={pid}&_has:Observation:patient:category=vital-signs&_summary=count"),
    )
    .await;
    assert_eq!(has, u64::from(vitals > 0));
    let family = patient["name"][0]["family"].as_str().unwrap();
    assert!(total(&server, &format!("Patient?family={family}&_summary=count")).await >= 1);
}
