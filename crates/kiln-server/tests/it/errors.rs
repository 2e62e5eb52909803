//! Malformed and refused requests: each answered with an OperationOutcome and nothing stored.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Options, TestServer, assert_outcome, json_of, patient};

/// How many versions the project's history holds: proof that nothing was stored.
async fn versions(server: &TestServer) -> usize {
    let (status, body) = server.get_json("_history?_count=1000").await;
    assert_eq!(status, 200);
    body["entry"].as_array().map(Vec::len).unwrap_or(0)
}

async fn post_raw(server: &TestServer, path: &str, body: &str) -> (u16, Value) {
    let res = server
        .fhir(Method::POST, path)
        .header("content-type", "application/fhir+json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    json_of(res).await
}

#[tokio::test]
async fn malformed_bodies_are_400_and_store_nothing() {
    let server = TestServer::start().await;
    let before = versions(&server).await;
    let deep = format!(
        "{{\"resourceType\":\"Patient\",\"extension\":{}1{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let cases: Vec<(&str, String)> = vec![
        ("bad json", "{\"resourceType\": \"Patient\",".to_owned()),
        ("not an object", "[1,2]".to_owned()),
        ("empty", "".to_owned()),
        ("wrong type", json!({"resourceType": "Patient", "active": "yes"}).to_string()),
        ("unknown field", json!({"resourceType": "Patient", "nickname": "x"}).to_string()),
        (
            "misplaced choice",
            json!({"resourceType": "Patient", "deceasedDate": "2020-01-01"}).to_string(),
        ),
        ("singleton as array", json!({"resourceType": "Patient", "gender": ["male"]}).to_string()),
        (
            "array as singleton",
            json!({"resourceType": "Patient", "name": {"family": "x"}}).to_string(),
        ),
        ("empty string", json!({"resourceType": "Patient", "name": [{"family": ""}]}).to_string()),
        ("empty object", json!({"resourceType": "Patient", "name": [{}]}).to_string()),
        ("bad code", json!({"resourceType": "Patient", "gender": "robot"}).to_string()),
        ("bad date", json!({"resourceType": "Patient", "birthDate": "1990-02-30"}).to_string()),
        (
            "resourceType mismatch",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
                .to_string(),
        ),
        ("missing resourceType", json!({"name": [{"family": "x"}]}).to_string()),
        (
            "invariant pat-1",
            json!({"resourceType": "Patient", "contact": [{"gender": "male"}]}).to_string(),
        ),
        ("100-level nesting", deep),
    ];
    for (name, body) in cases {
        let (status, outcome) = post_raw(&server, "Patient", &body).await;
        assert_eq!(status, 400, "{name}: {outcome}");
        let issues = assert_outcome(&outcome);
        for issue in &issues {
            assert!(issue["severity"].is_string() && issue["code"].is_string(), "{name}");
            assert!(issue["diagnostics"].is_string(), "{name}");
        }
    }
    assert_eq!(versions(&server).await, before, "nothing was stored");
}

#[tokio::test]
async fn every_problem_is_reported_with_its_path() {
    let server = TestServer::start().await;
    let body = json!({"resourceType": "Patient", "gender": "robot", "birthDate": "yesterday",
        "name": [{"family": 7}], "nickname": "x"});
    let (status, outcome) = post_raw(&server, "Patient", &body.to_string()).await;
    assert_eq!(status, 400);
    let issues = assert_outcome(&outcome);
    let paths: Vec<&str> = issues.iter().filter_map(|i| i["expression"][0].as_str()).collect();
    for expected in
        ["Patient.gender", "Patient.birthDate", "Patient.name[0].family", "Patient.nickname"]
    {
        assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
    }
}

#[tokio::test]
async fn update_id_rules() {
    let server = TestServer::start().await;
    let mut it = patient("Doe");
    it["id"] = json!("other");
    let res = server.send_json(Method::PUT, "Patient/mine", &it).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 400);
    assert_outcome(&body);
    let res = server.send_json(Method::PUT, "Patient/mine", &patient("Doe")).send().await.unwrap();
    assert_eq!(res.status(), 400, "an update needs the id in the body");
    let mut bad = patient("Doe");
    bad["id"] = json!("bad_id!");
    let res = server.send_json(Method::PUT, "Patient/bad_id!", &bad).send().await.unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn oversize_body_is_413() {
    let server = TestServer::start_with(Options { max_body: 10_000, ..Options::default() }).await;
    let mut it = patient("Doe");
    it["name"][0]["family"] = json!("x".repeat(20_000));
    let res = server.send_json(Method::POST, "Patient", &it).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 413);
    assert_eq!(assert_outcome(&body)[0]["code"], "too-long");
}

#[tokio::test]
async fn negotiation_errors_406_and_415() {
    let server = TestServer::start().await;
    let res = server
        .fhir(Method::GET, "metadata")
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 406);
    assert_outcome(&body);
    let res = server
        .fhir(Method::GET, "metadata")
        .header("accept", "application/json, */*;q=0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = server
        .fhir(Method::POST, "Patient")
        .header("content-type", "application/xml")
        .body("<Patient/>")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 415);
    assert_outcome(&body);
}

#[tokio::test]
async fn unknown_types_routes_and_methods() {
    let server = TestServer::start().await;
    let (status, body) = server.get_json("Unicorn/1").await;
    assert_eq!(status, 404);
    assert_outcome(&body);
    let (status, body) = server.get_json("Patient/does-not-exist").await;
    assert_eq!(status, 404);
    assert_eq!(assert_outcome(&body)[0]["code"], "not-found");
    assert_eq!(body["id"], "not-found", "Medplum's SDK classifies outcomes by id");
    let (status, _) =
        post_raw(&server, "Unicorn", &json!({"resourceType": "Unicorn"}).to_string()).await;
    assert_eq!(status, 404);
    let res = server.client.get(server.url("no/such/route")).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 404);
    assert_outcome(&body);
    let res = server.fhir(Method::DELETE, "metadata").send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 405);
    assert_outcome(&body);
    let res = server.fhir(Method::POST, "Patient/123").send().await.unwrap();
    assert_eq!(res.status(), 405);
    let res = server.fhir(Method::GET, "Patient/%FF%FE").send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert!(status == 400 || status == 404, "{status}");
    assert_outcome(&body);
}

#[tokio::test]
async fn missing_or_bad_tokens_are_401_with_a_challenge() {
    let server = TestServer::start().await;
    let res = server.client.get(server.fhir_url("Patient/1")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    assert!(res.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_outcome(&res.json().await.unwrap());
    let res = server
        .client
        .get(server.fhir_url("Patient/1"))
        .bearer_auth("not-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    // A token signed by another key is refused.
    let key = kiln_auth::SigningKey::generate().unwrap();
    let signer = kiln_auth::TokenSigner::new(key, server.base.trim_end_matches('/'));
    let (forged, _) = signer
        .issue_access_token(
            &kiln_auth::AccessClaimsInput {
                sub: "x".into(),
                login_id: "x".into(),
                project_id: "x".into(),
                ..Default::default()
            },
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    let res =
        server.client.get(server.fhir_url("Patient/1")).bearer_auth(forged).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = server.client.get(server.fhir_url("_history")).send().await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn validate_operation_reports_without_storing() {
    let server = TestServer::start().await;
    let before = versions(&server).await;
    let (status, outcome) = post_raw(
        &server,
        "Patient/$validate",
        &json!({"resourceType": "Patient", "gender": "robot"}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(outcome["issue"][0]["severity"], "error");
    assert_eq!(outcome["issue"][0]["expression"][0], "Patient.gender");
    let params = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient("Ok")}]});
    let (status, outcome) = post_raw(&server, "Patient/$validate", &params.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(outcome["issue"][0]["severity"], "information", "{outcome}");
    let (status, _) = post_raw(&server, "Patient/$unknown-op", "{}").await;
    assert_eq!(status, 404);
    assert_eq!(versions(&server).await, before);
}

#[tokio::test]
async fn unsafe_narrative_is_refused_and_an_empty_one_only_warned_about() {
    let server = TestServer::start().await;
    let with_div = |div: &str| {
        let mut p = patient("Doe");
        p["text"] = json!({"status": "generated", "div": div});
        p
    };
    let before = versions(&server).await;
    let script =
        with_div("<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>");
    let (status, outcome) = post_raw(&server, "Patient", &script.to_string()).await;
    assert_eq!(status, 400, "{outcome}");
    let issues = assert_outcome(&outcome);
    assert!(
        issues.iter().any(|i| i["severity"] == "error"
            && i["code"] == "invariant"
            && i["diagnostics"].as_str().is_some_and(|d| d.starts_with("txt-1: "))
            && i["expression"][0] == "Patient.text.div"),
        "{outcome}"
    );
    assert_eq!(versions(&server).await, before, "nothing was stored");

    // Whitespace only: stored, and $validate warns (txt-2).
    let blank = with_div("<div xmlns=\"http://www.w3.org/1999/xhtml\">\n  </div>");
    let (status, created) = post_raw(&server, "Patient", &blank.to_string()).await;
    assert_eq!(status, 201, "{created}");
    let (status, outcome) = post_raw(&server, "Patient/$validate", &blank.to_string()).await;
    assert_eq!(status, 200, "{outcome}");
    let issues = assert_outcome(&outcome);
    let txt2: Vec<&Value> = issues
        .iter()
        .filter(|i| i["diagnostics"].as_str().is_some_and(|d| d.starts_with("txt-2: ")))
        .collect();
    assert_eq!(txt2.len(), 1, "{outcome}");
    assert_eq!(txt2[0]["severity"], "warning");
    assert_eq!(txt2[0]["expression"][0], "Patient.text.div");
    assert!(issues.iter().all(|i| i["severity"] != "error"), "{outcome}");
}
