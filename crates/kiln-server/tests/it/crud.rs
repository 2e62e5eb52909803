//! Create, read, vread, update, patch, delete and their headers.

use reqwest::Method;
use serde_json::json;

use crate::support::{TestServer, assert_outcome, json_of, patient};

#[tokio::test]
async fn create_returns_201_with_location_etag_and_last_modified() {
    let server = TestServer::start().await;
    let res = server.send_json(Method::POST, "Patient", &patient("Doe")).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let headers = res.headers().clone();
    let body: serde_json::Value = res.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(headers["etag"], "W/\"1\"");
    assert!(headers.contains_key("last-modified"));
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    assert_eq!(
        headers["location"].to_str().unwrap(),
        server.fhir_url(&format!("Patient/{id}/_history/1"))
    );
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["name"][0]["family"], "Doe");
    // The stored body is served byte for byte on read.
    let (status, read) = server.get_json(&format!("Patient/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read, body);
}

#[tokio::test]
async fn create_ignores_client_id_and_keeps_decimal_precision() {
    let server = TestServer::start().await;
    // Sent as text: a client-side JSON value would already have dropped the trailing zero.
    let obs = r#"{"resourceType": "Observation", "id": "client-chosen", "status": "final",
        "code": {"text": "weight"}, "valueQuantity": {"value": 72.50, "unit": "kg"}}"#;
    let res = server
        .fhir(Method::POST, "Observation")
        .header("content-type", "application/fhir+json")
        .body(obs)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let text = res.text().await.unwrap();
    assert!(text.contains("72.50"), "{text}");
    assert!(!text.contains("client-chosen"));
}

#[tokio::test]
async fn update_versions_and_update_as_create() {
    let server = TestServer::start().await;
    let mut it = patient("Doe");
    it["id"] = json!("fixed-id");
    let res = server.send_json(Method::PUT, "Patient/fixed-id", &it).send().await.unwrap();
    assert_eq!(res.status(), 201, "update-as-create");
    it["name"][0]["family"] = json!("Roe");
    let res = server.send_json(Method::PUT, "Patient/fixed-id", &it).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "W/\"2\"");
    let (_, v1) = server.get_json("Patient/fixed-id/_history/1").await;
    assert_eq!(v1["name"][0]["family"], "Doe");
    let (_, v2) = server.get_json("Patient/fixed-id/_history/2").await;
    assert_eq!(v2["name"][0]["family"], "Roe");
    let (status, _) = server.get_json("Patient/fixed-id/_history/3").await;
    assert_eq!(status, 404);
    let (status, _) = server.get_json("Patient/fixed-id/_history/abc").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn if_match_conflicts_are_412() {
    let server = TestServer::start().await;
    let created = server.create(&patient("Doe")).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("Patient/{id}");
    let res = server
        .send_json(Method::PUT, &path, &created)
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = server
        .send_json(Method::PUT, &path, &created)
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 412);
    assert_outcome(&res.json().await.unwrap());
}

#[tokio::test]
async fn conditional_reads_answer_304() {
    let server = TestServer::start().await;
    let created = server.create(&patient("Doe")).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let res =
        server.fhir(Method::GET, &path).header("if-none-match", "W/\"1\"").send().await.unwrap();
    assert_eq!(res.status(), 304);
    let res =
        server.fhir(Method::GET, &path).header("if-none-match", "W/\"0\"").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let last_modified = res.headers()["last-modified"].to_str().unwrap().to_owned();
    let res = server
        .fhir(Method::GET, &path)
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    let res = server
        .fhir(Method::GET, &path)
        .header("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn prefer_header_controls_the_body() {
    let server = TestServer::start().await;
    let res = server
        .send_json(Method::POST, "Patient", &patient("Doe"))
        .header("prefer", "return=minimal")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert!(res.headers().contains_key("location"));
    assert!(res.bytes().await.unwrap().is_empty());
    let res = server
        .send_json(Method::POST, "Patient", &patient("Doe"))
        .header("prefer", "return=OperationOutcome")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 201);
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["severity"], "information");
}

#[tokio::test]
async fn delete_is_logical_idempotent_and_410_afterwards() {
    let server = TestServer::start().await;
    let created = server.create(&patient("Doe")).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let res = server.fhir(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (status, body) = server.get_json(&path).await;
    assert_eq!(status, 410);
    assert_eq!(assert_outcome(&body)[0]["code"], "deleted");
    assert_eq!(body["id"], "gone", "Medplum's SDK classifies outcomes by id");
    let res = server.fhir(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(res.status(), 200, "deleting again succeeds");
    let res = server.fhir(Method::DELETE, "Patient/never-existed").send().await.unwrap();
    assert_eq!(res.status(), 200, "deleting a missing id succeeds");
    // The old version stays readable.
    let (status, _) = server.get_json(&format!("{path}/_history/1")).await;
    assert_eq!(status, 200);
    let (status, _) = server.get_json(&format!("{path}/_history/2")).await;
    assert_eq!(status, 410, "the deletion version is gone");
}

#[tokio::test]
async fn json_patch_applies_and_validates() {
    let server = TestServer::start().await;
    let created = server.create(&patient("Doe")).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let patch = json!([{"op": "replace", "path": "/name/0/family", "value": "Patched"},
                       {"op": "add", "path": "/active", "value": true}]);
    let res = server
        .fhir(Method::PATCH, &path)
        .header("content-type", "application/json-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"][0]["family"], "Patched");
    assert_eq!(body["meta"]["versionId"], "2");
    // A patch producing an invalid resource is refused and nothing is stored.
    let bad = json!([{"op": "add", "path": "/gender", "value": "robot"}]);
    let res = server
        .fhir(Method::PATCH, &path)
        .header("content-type", "application/json-patch+json")
        .body(bad.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let (_, current) = server.get_json(&path).await;
    assert_eq!(current["meta"]["versionId"], "2");
    // A stale If-Match is refused.
    let res = server
        .fhir(Method::PATCH, &path)
        .header("content-type", "application/json-patch+json")
        .header("if-match", "W/\"1\"")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 412);
    // A failing `test` op is 422.
    let failing = json!([{"op": "test", "path": "/active", "value": false}]);
    let res = server
        .fhir(Method::PATCH, &path)
        .header("content-type", "application/json-patch+json")
        .body(failing.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    // A FHIR JSON patch body is FHIRPath Patch (tested in `fhirpath_patch`), so a JSON Patch
    // sent as application/fhir+json is a bad request; other media types are unsupported.
    let res = server
        .fhir(Method::PATCH, &path)
        .header("content-type", "application/fhir+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = server
        .fhir(Method::PATCH, &path)
        .header("content-type", "text/plain")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
}

#[tokio::test]
async fn summary_elements_pretty_and_format() {
    let server = TestServer::start().await;
    let mut it = patient("Doe");
    it["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Doe</div>"});
    it["photo"] = json!([{"contentType": "image/png", "data": "aGVsbG8="}]);
    let created = server.create(&it).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let (_, summary) = server.get_json(&format!("{path}?_summary=true")).await;
    assert!(summary.get("photo").is_none());
    assert!(summary.get("text").is_none());
    assert_eq!(summary["name"][0]["family"], "Doe");
    assert_eq!(summary["meta"]["tag"][0]["code"], "SUBSETTED");
    let (_, text) = server.get_json(&format!("{path}?_summary=text")).await;
    assert!(text.get("text").is_some());
    assert!(text.get("name").is_none());
    let (_, data) = server.get_json(&format!("{path}?_summary=data")).await;
    assert!(data.get("text").is_none());
    assert!(data.get("photo").is_some());
    let (_, elements) = server.get_json(&format!("{path}?_elements=birthDate,gender")).await;
    assert_eq!(elements["birthDate"], "1990-05-17");
    assert!(elements.get("name").is_none());
    assert_eq!(elements["id"], created["id"]);
    let res = server.fhir(Method::GET, &format!("{path}?_pretty=true")).send().await.unwrap();
    assert!(res.text().await.unwrap().contains("\n  \"resourceType\""));
    let (status, _) = server.get_json(&format!("{path}?_format=json")).await;
    assert_eq!(status, 200);
    let (status, _) = server.get_json(&format!("{path}?_format=application/fhir%2Bjson")).await;
    assert_eq!(status, 200);
    let (status, body) = server.get_json(&format!("{path}?_format=xml")).await;
    assert_eq!(status, 406);
    assert_outcome(&body);
    let (status, _) = server.get_json(&format!("{path}?_summary=maybe")).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn metadata_is_public_and_truthful() {
    let server = TestServer::start().await;
    let res = server.client.get(server.fhir_url("metadata")).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200);
    assert_eq!(body["resourceType"], "CapabilityStatement");
    assert_eq!(body["fhirVersion"], "4.0.1");
    let resources = body["rest"][0]["resource"].as_array().unwrap();
    assert!(resources.len() > 140, "every resource type is listed");
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let interactions: Vec<&str> = patient["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert!(interactions.contains(&"read") && interactions.contains(&"update"));
    assert!(interactions.contains(&"search-type"));
    assert_eq!(patient["conditionalCreate"], true);
    assert_eq!(patient["conditionalDelete"], "single");
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(params.contains(&"family") && params.contains(&"birthdate"), "{params:?}");
    assert!(
        patient["searchRevInclude"].as_array().unwrap().contains(&json!("Observation:subject"))
    );
    let common: Vec<&str> = body["rest"][0]["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["_id", "_filter", "_content", "_text", "_list"] {
        assert!(common.contains(&name), "{name}: {common:?}");
    }
    let security = &body["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    // SMART's oauth-uris: every endpoint by name, each one this server answers on.
    let uris = security["extension"][0]["extension"].as_array().unwrap();
    let uri = |name: &str| {
        uris.iter().find(|u| u["url"] == name).unwrap_or_else(|| panic!("{name}"))["valueUri"]
            .clone()
    };
    assert_eq!(uri("token"), json!(server.url("oauth2/token")));
    assert_eq!(uri("authorize"), json!(server.url("oauth2/authorize")));
    for name in ["introspect", "revoke", "manage"] {
        assert!(uri(name).as_str().unwrap().starts_with(&server.url("oauth2/")), "{name}");
    }
}

#[tokio::test]
async fn healthcheck_reports_storage() {
    let server = TestServer::start().await;
    let res = server.client.get(server.url("healthcheck")).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true);
    assert_eq!(body["storage"], server.store.kind());
    assert!(body["version"].is_string());
}
