//! Batch and transaction Bundles.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, assert_outcome, json_of, patient};

async fn post_bundle(server: &TestServer, bundle: &Value) -> (u16, Value) {
    let res = server.send_json(Method::POST, "", bundle).send().await.unwrap();
    json_of(res).await
}

#[tokio::test]
async fn transaction_resolves_urn_uuid_references_everywhere() {
    let server = TestServer::start().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
             "subject": {"reference": "urn:uuid:22222222-2222-2222-2222-222222222222"},
             "extension": [{"url": "http://example.org/x", "valueReference": {"reference": "urn:uuid:22222222-2222-2222-2222-222222222222"}}],
             "contained": [{"resourceType": "Provenance", "id": "prov", "recorded": "2024-01-01T00:00:00Z",
                 "target": [{"reference": "urn:uuid:22222222-2222-2222-2222-222222222222"}],
                 "agent": [{"who": {"display": "x"}}]}]},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": patient("Tx"),
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:33333333-3333-3333-3333-333333333333",
         "resource": {"resourceType": "Patient", "id": "fixed", "name": [{"family": "Put"}],
             "link": [{"other": {"reference": "urn:uuid:22222222-2222-2222-2222-222222222222"}, "type": "seealso"}]},
         "request": {"method": "PUT", "url": "Patient/fixed"}}
    ]});
    let (status, response) = post_bundle(&server, &bundle).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "transaction-response");
    let entries = response["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "one response entry per request entry, in order");
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    let obs = &entries[0]["resource"];
    let patient_id = entries[1]["resource"]["id"].as_str().unwrap();
    let expected = format!("Patient/{patient_id}");
    assert_eq!(obs["subject"]["reference"], json!(expected));
    assert_eq!(obs["extension"][0]["valueReference"]["reference"], json!(expected));
    assert_eq!(obs["contained"][0]["target"][0]["reference"], json!(expected));
    assert_eq!(entries[2]["resource"]["link"][0]["other"]["reference"], json!(expected));
    assert!(entries[0]["response"]["location"].as_str().unwrap().starts_with("Observation/"));
    // What was stored reads back.
    let (status, read) =
        server.get_json(&format!("Observation/{}", obs["id"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(&read, obs);
}

#[tokio::test]
async fn transaction_is_all_or_nothing() {
    let server = TestServer::start().await;
    let before = server.get_json("_history?_count=1000").await.1["entry"].as_array().unwrap().len();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("Good"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}}
    ]});
    let (status, body) = post_bundle(&server, &bundle).await;
    assert_eq!(status, 400);
    let issues = assert_outcome(&body);
    assert!(
        issues.iter().any(|i| i["expression"][0].as_str().unwrap().starts_with("Bundle.entry[1]")),
        "{body}"
    );
    // A failing precondition at commit time rolls back the other entries too.
    let created = server.create(&patient("Existing")).await;
    let id = created["id"].as_str().unwrap();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("Good"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": created, "request": {"method": "PUT", "url": format!("Patient/{id}"), "ifMatch": "W/\"9\""}}
    ]});
    let (status, body) = post_bundle(&server, &bundle).await;
    assert_eq!(status, 412, "{body}");
    let after = server.get_json("_history?_count=1000").await.1["entry"].as_array().unwrap().len();
    assert_eq!(after, before + 1, "only the separately created patient was stored");
}

#[tokio::test]
async fn transaction_processes_deletes_before_creates_and_reads_last() {
    let server = TestServer::start().await;
    let doomed = server.create(&patient("Doomed")).await;
    let doomed_id = doomed["id"].as_str().unwrap();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{doomed_id}/_history/1")}},
        {"resource": patient("New"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": format!("Patient/{doomed_id}")}}
    ]});
    let (status, body) = post_bundle(&server, &bundle).await;
    assert_eq!(status, 200, "{body}");
    let entries = body["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["response"]["status"], "204 No Content");
    let (status, _) = server.get_json(&format!("Patient/{doomed_id}")).await;
    assert_eq!(status, 410);
}

#[tokio::test]
async fn batch_entries_succeed_or_fail_independently() {
    let server = TestServer::start().await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("Ok"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "PATCH", "url": "Patient/missing"}, "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": "W10="}},
        {"request": {"method": "GET", "url": "Patient?name=ok"}},
        {"request": {"method": "GET", "url": "Patient?birthdate=notadate"}}
    ]});
    let (status, body) = post_bundle(&server, &bundle).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "batch-response");
    let entries = body["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "400 Bad Request");
    assert_eq!(entries[1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(entries[2]["response"]["status"], "404 Not Found");
    assert_eq!(entries[3]["response"]["status"], "404 Not Found");
    assert_eq!(entries[4]["response"]["status"], "200 OK");
    assert_eq!(entries[4]["resource"]["type"], "searchset");
    assert_eq!(entries[4]["resource"]["total"], 1, "{body}");
    assert_eq!(entries[5]["response"]["status"], "400 Bad Request");
}

#[tokio::test]
async fn batch_patch_with_binary_json_patch() {
    let server = TestServer::start().await;
    let created = server.create(&patient("Before")).await;
    let id = created["id"].as_str().unwrap();
    let patch = json!([{"op": "replace", "path": "/name/0/family", "value": "After"}]).to_string();
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(patch);
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "PATCH", "url": format!("Patient/{id}")},
         "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}}
    ]});
    let (status, body) = post_bundle(&server, &bundle).await;
    assert_eq!(status, 200);
    assert_eq!(body["entry"][0]["response"]["status"], "200 OK", "{body}");
    assert_eq!(body["entry"][0]["resource"]["name"][0]["family"], "After");
}

#[tokio::test]
async fn bundle_shape_errors() {
    let server = TestServer::start().await;
    let (status, _) = post_bundle(&server, &patient("x")).await;
    assert_eq!(status, 400);
    let (status, _) =
        post_bundle(&server, &json!({"resourceType": "Bundle", "type": "collection"})).await;
    assert_eq!(status, 400);
    let (status, body) = post_bundle(&server, &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:dangling"}},
         "request": {"method": "POST", "url": "Observation"}}]})).await;
    assert_eq!(status, 400, "a dangling urn:uuid reference is refused: {body}");
    let (status, _) = post_bundle(&server, &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "dup"}, "request": {"method": "PUT", "url": "Patient/dup"}},
        {"resource": {"resourceType": "Patient", "id": "dup"}, "request": {"method": "PUT", "url": "Patient/dup"}}]})).await;
    assert_eq!(status, 400, "one resource may not be written twice in a transaction");
}

#[tokio::test]
async fn prefer_return_shapes_write_entries() {
    let server = TestServer::start().await;
    let bundle = |ty: &str| {
        json!({"resourceType": "Bundle", "type": ty, "entry": [
            {"resource": patient("Pref"), "request": {"method": "POST", "url": "Patient"}}]})
    };
    for ty in ["batch", "transaction"] {
        let send = |prefer: &'static str| {
            server.send_json(Method::POST, "", &bundle(ty)).header("prefer", prefer).send()
        };
        let (status, minimal) = json_of(send("return=minimal").await.unwrap()).await;
        assert_eq!(status, 200, "{minimal}");
        let entry = &minimal["entry"][0];
        assert!(entry.get("resource").is_none(), "{entry}");
        assert_eq!(entry["response"]["status"], "201 Created");
        assert!(entry["response"]["location"].as_str().unwrap().starts_with("Patient/"));
        let (_, outcome) = json_of(send("return=OperationOutcome").await.unwrap()).await;
        let entry = &outcome["entry"][0];
        assert!(entry.get("resource").is_none(), "{entry}");
        assert_eq!(entry["response"]["outcome"]["resourceType"], "OperationOutcome");
        let (_, full) = json_of(send("return=representation").await.unwrap()).await;
        assert_eq!(full["entry"][0]["resource"]["resourceType"], "Patient");
    }
}
