//! A project's own SearchParameters over HTTP: validated on write, searchable at once for new
//! writes, existing resources reindexed by a background job that clients poll
//! (`/job/{id}/status`), explicit `$reindex`, cancelling, and resuming after a restart.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, json_of};

const EYE: &str = "http://example.org/fhir/eye-color";

fn eye_patient(family: &str, color: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}],
           "extension": [{"url": EYE, "valueCode": color}]})
}

fn eye_param(expression: &str) -> Value {
    json!({"resourceType": "SearchParameter", "url": "http://example.org/fhir/sp/eye-color",
           "name": "EyeColor", "status": "active", "description": "Eye colour",
           "code": "eye-color", "base": ["Patient"], "type": "token", "expression": expression})
}

/// The families of the matches of a Patient search.
async fn families(server: &TestServer, query: &str) -> Vec<String> {
    let (status, bundle) = server.get_json(&format!("Patient?{query}")).await;
    assert_eq!(status, 200, "{query}: {bundle}");
    let mut out: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["name"][0]["family"].as_str().unwrap_or("").to_owned())
        .collect();
    out.sort();
    out
}

/// Polls a job's status URL until it answers 200; returns the AsyncJob.
async fn wait_for_job(server: &TestServer, status_url: &str) -> Value {
    for _ in 0..300 {
        let res = server.client.get(status_url).bearer_auth(&server.token).send().await.unwrap();
        match res.status().as_u16() {
            202 => {
                assert!(res.headers().get("x-progress").is_some());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            200 => return res.json().await.unwrap(),
            other => panic!("job status {other}: {}", res.text().await.unwrap()),
        }
    }
    panic!("the job at {status_url} did not finish");
}

/// The newest AsyncJob of the project.
async fn latest_job(server: &TestServer) -> Value {
    let (status, bundle) = server.get_json("AsyncJob?_sort=-_lastUpdated&_count=1").await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"][0]["resource"].clone()
}

fn processed(job: &Value) -> u64 {
    job["output"]["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "processed")
        .and_then(|p| p["valueDecimal"].as_u64())
        .unwrap()
}

#[tokio::test]
async fn a_new_search_parameter_reindexes_what_exists() {
    let server = TestServer::start().await;
    server.create(&eye_patient("Green1", "green")).await;
    server.create(&eye_patient("Blue1", "blue")).await;
    server.create(&json!({"resourceType": "Patient", "name": [{"family": "NoEyes"}]})).await;

    // Unknown before: ignored with a warning (lenient), 400 when strict.
    assert_eq!(families(&server, "eye-color=green").await.len(), 3);
    let res = server
        .fhir(Method::GET, "Patient?eye-color=green")
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    let sp = server.create(&eye_param(&format!("Patient.extension('{EYE}').value"))).await;
    // New writes are indexed at once.
    server.create(&eye_patient("Green2", "green")).await;
    // The automatic job brings in the resources written before.
    let job = latest_job(&server).await;
    assert_eq!(job["resourceType"], "AsyncJob");
    let status_url = server.fhir_url(&format!("job/{}/status", job["id"].as_str().unwrap()));
    // Until it has, searches on the new parameter say they may be incomplete (the job waits
    // two registry TTLs before it scans, so it is normally still running here).
    let (_, during) = server.get_json("Patient?eye-color=green").await;
    let (_, other) = server.get_json("Patient?family=Green1").await;
    let res = server.client.get(&status_url).bearer_auth(&server.token).send().await.unwrap();
    if res.status() == 202 {
        let warned = |b: &Value| b.to_string().contains("incomplete");
        assert!(warned(&during), "{during}");
        assert!(!warned(&other), "only searches on the new parameter warn: {other}");
    }
    let job = wait_for_job(&server, &status_url).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert!(processed(&job) >= 4, "{job}");
    assert!(job["transactionTime"].is_string());

    assert_eq!(families(&server, "eye-color=green").await, ["Green1", "Green2"]);
    assert_eq!(families(&server, "eye-color=blue,green").await, ["Blue1", "Green1", "Green2"]);
    assert_eq!(families(&server, "eye-color:not=green").await.len(), 2);
    assert_eq!(families(&server, "eye-color:missing=true").await, ["NoEyes"]);
    let (_, sorted) = server.get_json("Patient?eye-color:missing=false&_sort=-eye-color").await;
    assert_eq!(sorted["entry"][0]["resource"]["name"][0]["family"], "Green1");
    // In a chain and in _has too.
    let green = server.create(&eye_patient("Green3", "green")).await;
    server
        .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": format!("Patient/{}", green["id"].as_str().unwrap())}}))
        .await;
    let (_, obs) = server.get_json("Observation?subject:Patient.eye-color=green").await;
    assert_eq!(obs["total"], 1, "{obs}");

    // Changing the expression reindexes again: now the parameter reads the family name.
    let mut changed = eye_param("Patient.name.family");
    changed["id"] = sp["id"].clone();
    let path = format!("SearchParameter/{}", sp["id"].as_str().unwrap());
    let res = server.send_json(Method::PUT, &path, &changed).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let job = latest_job(&server).await;
    let status_url = server.fhir_url(&format!("job/{}/status", job["id"].as_str().unwrap()));
    assert_eq!(wait_for_job(&server, &status_url).await["status"], "completed");
    assert_eq!(families(&server, "eye-color=Blue1").await, ["Blue1"]);
    assert!(families(&server, "eye-color=green").await.is_empty());

    // Deleting it makes it unknown again.
    let res = server.fhir(Method::DELETE, &path).send().await.unwrap();
    assert!(res.status().is_success());
    let (_, bundle) = server.get_json("Patient?eye-color=Blue1").await;
    let outcome =
        bundle["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome");
    assert!(outcome.is_some(), "{bundle}");
}

#[tokio::test]
async fn unusable_search_parameters_are_refused_while_drafts_are_kept() {
    let server = TestServer::start().await;
    let bad = eye_param("Patient.extension(");
    let res = server.send_json(Method::POST, "SearchParameter", &bad).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("expression"), "{body}");
    let mut clash = eye_param("Patient.name");
    clash["code"] = json!("name");
    let res = server.send_json(Method::POST, "SearchParameter", &clash).send().await.unwrap();
    assert_eq!(res.status(), 400);
    let mut draft = bad.clone();
    draft["status"] = json!("draft");
    server.create(&draft).await;
    // A draft is not in force.
    let (_, bundle) = server.get_json("Patient?eye-color=green").await;
    assert!(bundle["entry"].as_array().unwrap().iter().any(|e| e["search"]["mode"] == "outcome"));
}

#[tokio::test]
async fn reindex_on_request_and_cancel() {
    let server = TestServer::start().await;
    for i in 0..30 {
        server.create(&eye_patient(&format!("P{i}"), "green")).await;
    }
    // Type level: 202 with the status URL; a Parameters body may name the types.
    let res = server.fhir(Method::POST, "SearchParameter/$reindex").send().await.unwrap();
    assert_eq!(res.status(), 202);
    let location = res.headers()["content-location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&server.fhir_url("job/")), "{location}");
    let job = wait_for_job(&server, &location).await;
    assert_eq!(job["status"], "completed");
    // No project parameters: every type, so the 30 patients and more.
    assert!(processed(&job) >= 30, "{job}");

    let body = json!({"resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "Patient"}]});
    let res = server.send_json(Method::POST, "$reindex", &body).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let location = res.headers()["content-location"].to_str().unwrap().to_owned();
    let job = wait_for_job(&server, &location).await;
    assert_eq!(processed(&job), 30, "{job}");

    let bad =
        json!({"resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "Nope"}]});
    let res = server.send_json(Method::POST, "$reindex", &bad).send().await.unwrap();
    assert_eq!(res.status(), 404);

    // One resource, synchronously.
    let p = server.create(&eye_patient("One", "green")).await;
    let path = format!("Patient/{}/$reindex", p["id"].as_str().unwrap());
    let res = server.fhir(Method::POST, &path).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // Cancelling a finished job changes nothing; an unknown job is 404.
    let id = job["id"].as_str().unwrap();
    let res = server.fhir(Method::DELETE, &format!("job/{id}/status")).send().await.unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(wait_for_job(&server, &location).await["status"], "completed");
    let res = server.fhir(Method::GET, "job/nope/status").send().await.unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn an_unfinished_job_resumes_after_a_restart() {
    let server = TestServer::start().await;
    for i in 0..5 {
        server.create(&eye_patient(&format!("R{i}"), "green")).await;
    }
    // A job that was accepted when the node stopped: recorded, never run.
    let job = server
        .create(&json!({"resourceType": "AsyncJob", "status": "accepted",
            "requestTime": "2026-01-01T00:00:00Z", "request": server.fhir_url("$reindex"),
            "output": {"resourceType": "Parameters", "parameter": [
                {"name": "operation", "valueCode": "reindex"},
                {"name": "type", "valueCode": "Patient"},
                {"name": "processed", "valueDecimal": 0}]}}))
        .await;
    let id = job["id"].as_str().unwrap();
    let tokens = server.login_full().await;
    let project = tokens["project"]["reference"].as_str().unwrap().trim_start_matches("Project/");
    let list = json!([{"project": project, "id": id}]);
    server
        .store
        .put_setting(kiln_engine::JOBS_SETTING, &serde_json::to_vec(&list).unwrap())
        .await
        .unwrap();
    // What `kiln serve` does at start-up: the list an older version kept moves to the queue.
    assert_eq!(server.engine.resume_jobs().await.unwrap(), 1);
    let raw = server.store.get_setting(kiln_engine::JOBS_SETTING).await.unwrap().unwrap();
    assert!(serde_json::from_slice::<Vec<Value>>(&raw).unwrap().is_empty(), "list emptied");
    let job = wait_for_job(&server, &server.fhir_url(&format!("job/{id}/status"))).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(processed(&job), 5);
    // Finished jobs leave the queue.
    for _ in 0..100 {
        if server.store.queued_jobs().await.unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the finished job stayed on the queue");
}
