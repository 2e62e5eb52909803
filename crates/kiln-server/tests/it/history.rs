//! History at instance, type and system level, with paging and filters.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, json_of, patient};

fn versions_of(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["etag"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn instance_history_is_newest_first_and_includes_deletions() {
    let server = TestServer::start().await;
    let created = server.create(&patient("A")).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("Patient/{id}");
    let mut it = created.clone();
    it["name"][0]["family"] = json!("B");
    server.send_json(Method::PUT, &path, &it).send().await.unwrap();
    server.fhir(Method::DELETE, &path).send().await.unwrap();
    let (status, bundle) = server.get_json(&format!("{path}/_history")).await;
    assert_eq!(status, 200);
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["total"], 3);
    assert_eq!(versions_of(&bundle), vec!["W/\"3\"", "W/\"2\"", "W/\"1\""]);
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[1]["request"]["method"], "PUT");
    assert_eq!(entries[1]["resource"]["name"][0]["family"], "B");
    assert_eq!(entries[2]["request"]["method"], "POST");
    assert_eq!(entries[2]["request"]["url"], "Patient");
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["fullUrl"], json!(server.fhir_url(&path)));
    let (status, _) = server.get_json("Patient/never/_history").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn type_and_system_history_page_with_next_links() {
    let server = TestServer::start().await;
    for idx in 0..5 {
        server.create(&patient(&format!("P{idx}"))).await;
    }
    server
        .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}))
        .await;
    let (_, page) = server.get_json("Patient/_history?_count=2").await;
    assert_eq!(page["entry"].as_array().unwrap().len(), 2);
    let mut seen = Vec::new();
    let mut page = page;
    loop {
        for entry in page["entry"].as_array().unwrap() {
            assert_eq!(entry["resource"]["resourceType"], "Patient");
            seen.push(entry["resource"]["name"][0]["family"].as_str().unwrap().to_owned());
        }
        let next =
            page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").cloned();
        let Some(next) = next else { break };
        let res = server
            .client
            .get(next["url"].as_str().unwrap())
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap();
        page = json_of(res).await.1;
    }
    assert_eq!(seen, vec!["P4", "P3", "P2", "P1", "P0"]);
    // System history holds every type of the project (plus the seeded admin resources).
    let (_, system) = server.get_json("_history?_count=100").await;
    let types: Vec<&str> = system["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types[0], "Observation");
    assert!(types.contains(&"Patient") && types.contains(&"ProjectMembership"));
    assert!(
        !types.contains(&"User") && !types.contains(&"Login"),
        "server-wide records stay out of projects"
    );
}

#[tokio::test]
async fn since_and_at_filter_versions() {
    let server = TestServer::start().await;
    let first = server.create(&patient("Old")).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cutoff = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    server.create(&patient("New")).await;
    let (_, since) =
        server.get_json(&format!("Patient/_history?_since={}", urlencode(&cutoff))).await;
    let names: Vec<&str> = since["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["name"][0]["family"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["New"]);
    let (_, at) = server.get_json(&format!("Patient/_history?_at={}", urlencode(&cutoff))).await;
    let ids: Vec<&str> = at["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![first["id"].as_str().unwrap()]);
    let (status, _) = server.get_json("Patient/_history?_since=not-a-date").await;
    assert_eq!(status, 400);
    let (status, _) = server.get_json("Patient/_history?_count=abc").await;
    assert_eq!(status, 400);
}

fn urlencode(text: &str) -> String {
    text.replace(':', "%3A").replace('+', "%2B")
}
