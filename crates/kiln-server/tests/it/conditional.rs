//! Conditional create, update, patch and delete, over REST and inside Bundles, with the
//! spec's 0/1/many rules; conditional references in transactions.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, json_of};

fn patient(mrn: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}],
           "identifier": [{"system": "http://hospital.example/mrn", "value": mrn}]})
}

async fn count(server: &TestServer, query: &str) -> u64 {
    let (status, bundle) = server.get_json(&format!("{query}&_summary=count")).await;
    assert_eq!(status, 200, "{bundle}");
    bundle["total"].as_u64().unwrap()
}

#[tokio::test]
async fn conditional_create_update_patch_delete() {
    let server = TestServer::start().await;
    let create = |mrn: &'static str| {
        server
            .send_json(Method::POST, "Patient", &patient(mrn, "Doe"))
            .header("If-None-Exist", format!("identifier=http://hospital.example/mrn|{mrn}"))
    };
    // 0 matches: created (201); 1 match: the existing one (200), nothing new
    let res = create("1").send().await.unwrap();
    assert_eq!(res.status(), 201);
    let (_, first) = json_of(res).await;
    let res = create("1").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (_, again) = json_of(res).await;
    assert_eq!(first["id"], again["id"]);
    assert_eq!(count(&server, "Patient?identifier=1").await, 1);

    // several matches: 412
    server.create(&patient("2", "Roe")).await;
    server.create(&patient("3", "Roe")).await;
    let res = server
        .send_json(Method::POST, "Patient", &patient("4", "Roe"))
        .header("If-None-Exist", "family=roe")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 412);

    // conditional update: one match updates it, none creates, many is 412
    let mut body = patient("1", "Updated");
    let res = server
        .send_json(Method::PUT, "Patient?identifier=http://hospital.example/mrn|1", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, updated) = json_of(res).await;
    assert_eq!(updated["id"], first["id"]);
    assert_eq!(updated["meta"]["versionId"], "2");
    body["identifier"][0]["value"] = json!("9");
    let res = server.send_json(Method::PUT, "Patient?identifier=9", &body).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let res = server.send_json(Method::PUT, "Patient?family=roe", &body).send().await.unwrap();
    assert_eq!(res.status(), 412);
    // a body id that is not the match's id is refused
    body["id"] = json!("someone-else");
    let res = server
        .send_json(Method::PUT, "Patient?identifier=http://hospital.example/mrn|1", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // unknown criteria are refused rather than ignored (they would widen the match)
    let res = server.send_json(Method::PUT, "Patient?nonsense=1", &body).send().await.unwrap();
    assert_eq!(res.status(), 400);

    // conditional patch
    let res = server
        .fhir(Method::PATCH, "Patient?identifier=http://hospital.example/mrn|1")
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op": "replace", "path": "/name/0/family", "value": "Patched"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, patched) = json_of(res).await;
    assert_eq!(patched["name"][0]["family"], "Patched");
    let res = server
        .fhir(Method::PATCH, "Patient?identifier=nobody")
        .header("content-type", "application/json-patch+json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // conditional delete: several is 412, one deletes, none is fine
    let res = server.fhir(Method::DELETE, "Patient?family=roe").send().await.unwrap();
    assert_eq!(res.status(), 412);
    let res = server.fhir(Method::DELETE, "Patient?identifier=2").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(count(&server, "Patient?family=roe").await, 1);
    let res = server.fhir(Method::DELETE, "Patient?identifier=2").send().await.unwrap();
    assert_eq!(res.status(), 200);
    // no criteria at all is not a conditional interaction
    let res = server.fhir(Method::DELETE, "Patient").send().await.unwrap();
    assert_eq!(res.status(), 405);
}

#[tokio::test]
async fn concurrent_conditional_creates_make_one_resource() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = server
            .send_json(Method::POST, "Patient", &patient("race", "Racer"))
            .header("If-None-Exist", "identifier=http://hospital.example/mrn|race");
        tasks.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "{statuses:?}");
    assert_eq!(count(&server, "Patient?identifier=race").await, 1);
}

#[tokio::test]
async fn conditional_entries_and_references_in_bundles() {
    let server = TestServer::start().await;
    let org = json!({"resourceType": "Organization", "name": "General",
                     "identifier": [{"system": "urn:org", "value": "G"}]});
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": org, "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|G"}},
        {"resource": org, "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|G"}},
        {"request": {"method": "GET", "url": "Organization?identifier=urn:org|G"}}
    ]});
    let res = server.send_json(Method::POST, "", &batch).send().await.unwrap();
    let (status, out) = json_of(res).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["entry"][0]["response"]["status"], "201 Created", "{out}");
    assert_eq!(out["entry"][1]["response"]["status"], "200 OK", "{out}");
    assert_eq!(out["entry"][0]["resource"]["id"], out["entry"][1]["resource"]["id"]);
    assert_eq!(out["entry"][2]["resource"]["type"], "searchset");
    assert_eq!(out["entry"][2]["resource"]["total"], 1);
    let org_id = out["entry"][0]["resource"]["id"].as_str().unwrap().to_owned();

    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p1",
         "resource": {"resourceType": "Patient", "managingOrganization": {"reference": "Organization?identifier=urn:org|G"},
                      "identifier": [{"system": "urn:mrn", "value": "P1"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|P1"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:p1"},
                      "performer": [{"reference": "Organization?identifier=urn:org|G"}]},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let res = server.send_json(Method::POST, "", &tx).send().await.unwrap();
    let (status, out) = json_of(res).await;
    assert_eq!(status, 200, "{out}");
    let patient_id = out["entry"][0]["resource"]["id"].as_str().unwrap().to_owned();
    let obs = &out["entry"][1]["resource"];
    assert_eq!(obs["subject"]["reference"], format!("Patient/{patient_id}"));
    assert_eq!(obs["performer"][0]["reference"], format!("Organization/{org_id}"));
    assert_eq!(
        out["entry"][0]["resource"]["managingOrganization"]["reference"],
        format!("Organization/{org_id}")
    );
    // The same transaction again: the patient exists, so the Observation points at it.
    let res = server.send_json(Method::POST, "", &tx).send().await.unwrap();
    let (status, out) = json_of(res).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(
        out["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    assert_eq!(count(&server, "Patient?identifier=urn:mrn|P1").await, 1);

    // A conditional reference matching nothing fails the transaction, and nothing is written.
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
                      "subject": {"reference": "Patient?identifier=urn:mrn|nobody"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let res = server.send_json(Method::POST, "", &bad).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(count(&server, "Observation?code:text=y").await, 0);

    // Conditional update and delete entries.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "P1"}], "gender": "other"},
         "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|P1"}},
        {"request": {"method": "DELETE", "url": "Organization?identifier=urn:org|nothing"}}
    ]});
    let res = server.send_json(Method::POST, "", &tx).send().await.unwrap();
    let (status, out) = json_of(res).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["entry"][0]["resource"]["id"], patient_id);
    assert_eq!(out["entry"][0]["resource"]["gender"], "other");
    assert_eq!(out["entry"][1]["response"]["status"], "204 No Content");
}
