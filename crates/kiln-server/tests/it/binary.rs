//! Binary: raw bytes in and out, or the resource as FHIR JSON.

use reqwest::Method;
use serde_json::json;

use crate::support::{TestServer, json_of};

#[tokio::test]
async fn raw_bytes_round_trip() {
    let server = TestServer::start().await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let res = server
        .fhir(Method::POST, "Binary?_filename=scan.bin")
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let (status, binary) = json_of(res).await;
    assert_eq!(status, 201, "{binary}");
    assert_eq!(binary["resourceType"], "Binary");
    assert_eq!(binary["contentType"], "application/octet-stream");
    let id = binary["id"].as_str().unwrap();
    assert_eq!(binary["url"], json!(server.fhir_url(&format!("Binary/{id}"))));
    let res = server.fhir(Method::GET, &format!("Binary/{id}")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    assert_eq!(res.headers()["content-disposition"], "attachment; filename=\"scan.bin\"");
    assert_eq!(res.bytes().await.unwrap().to_vec(), bytes);
    let res = server
        .fhir(Method::GET, &format!("Binary/{id}"))
        .header("accept", "application/fhir+json")
        .send()
        .await
        .unwrap();
    let (status, resource) = json_of(res).await;
    assert_eq!(status, 200);
    assert_eq!(resource["id"], json!(id));
}

#[tokio::test]
async fn json_binary_with_inline_data() {
    let server = TestServer::start().await;
    let created = server
        .create(&json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="}))
        .await;
    let id = created["id"].as_str().unwrap();
    let res = server.fhir(Method::GET, &format!("Binary/{id}")).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(res.text().await.unwrap(), "hello");
}
