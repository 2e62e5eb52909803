//! Bulk Data `$export` over HTTP: kick-off at the system, Patient and Group levels, each
//! parameter, the status URL (progress, manifest, failure, deletion), file downloads and who
//! may make them, access policies, cancellation, a restart in the middle, and the per-client
//! limit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kiln_engine::export::ExportLimits;
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::admin::{clinic, invite, sign_in};
use crate::support::{TestServer, json_of, patient};

/// A file's text, fetched with `token`.
async fn text_of(server: &TestServer, token: &str, url: &str) -> String {
    server.client.get(url).bearer_auth(token).send().await.unwrap().text().await.unwrap()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn obs(patient: &str, code: &str, performer: Option<&str>) -> Value {
    let mut o = json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                   "code": if code == "8867-4" { "vital-signs" } else { "laboratory" }}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 72.50, "unit": "/min"}});
    if let Some(p) = performer {
        o["performer"] = json!([{"reference": format!("Practitioner/{p}")}]);
    }
    o
}

/// A project with two patients, three observations (one by a practitioner), a condition, an
/// organization nobody references, and a group holding the first patient.
struct World {
    server: TestServer,
    p1: String,
    p2: String,
    dr: String,
    group: String,
}

async fn world() -> World {
    let server = TestServer::start().await;
    let p1 = id(&server.create(&patient("Alpha")).await);
    let p2 = id(&server.create(&patient("Beta")).await);
    let dr = id(&server
        .create(&json!({"resourceType": "Practitioner", "name": [{"family": "Doc"}]}))
        .await);
    server
        .create(&json!({"resourceType": "Practitioner", "name": [{"family": "Unrelated"}]}))
        .await;
    server.create(&obs(&p1, "8867-4", Some(&dr))).await;
    server.create(&obs(&p1, "2339-0", None)).await;
    server.create(&obs(&p2, "8867-4", None)).await;
    server
        .create(&json!({"resourceType": "Condition",
            "code": {"text": "Asthma"}, "subject": {"reference": format!("Patient/{p2}")}}))
        .await;
    server.create(&json!({"resourceType": "Organization", "name": "Nobody's"})).await;
    let group = id(&server
        .create(&json!({"resourceType": "Group", "type": "person", "actual": true,
            "member": [{"entity": {"reference": format!("Patient/{p1}")}},
                       {"entity": {"reference": format!("Patient/{p2}")}, "inactive": true}]}))
        .await);
    World { server, p1, p2, dr, group }
}

/// Kick-off with the usual headers (and any extra), as `token`.
async fn kick(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
    prefer: &str,
) -> Response {
    let mut req = server
        .client
        .request(method, server.fhir_url(path))
        .bearer_auth(token)
        .header("accept", "application/fhir+json")
        .header("prefer", prefer);
    if let Some(body) = body {
        req = req.header("content-type", "application/fhir+json").body(body.to_string());
    }
    req.send().await.unwrap()
}

/// Kicks off and returns the status URL (asserting 202).
async fn start(server: &TestServer, path: &str) -> String {
    let res = kick(server, &server.token, Method::GET, path, None, "respond-async").await;
    accepted(res).await
}

async fn accepted(res: Response) -> String {
    let status = res.status().as_u16();
    let location = res.headers().get("content-location").map(|v| v.to_str().unwrap().to_owned());
    let body = res.text().await.unwrap();
    assert_eq!(status, 202, "{body}");
    location.expect("Content-Location")
}

/// Polls the status URL until the manifest; returns it and the response headers.
async fn manifest_as(
    server: &TestServer,
    token: &str,
    url: &str,
) -> (Value, reqwest::header::HeaderMap) {
    for _ in 0..600 {
        let res = server
            .client
            .get(url)
            .bearer_auth(token)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            202 => {
                let progress = res.headers().get("x-progress").expect("X-Progress");
                assert!(progress.to_str().unwrap().contains("resources written"));
                assert!(res.headers().get("retry-after").is_some());
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            200 => {
                let headers = res.headers().clone();
                assert_eq!(headers["content-type"], "application/json");
                return (res.json().await.unwrap(), headers);
            }
            other => panic!("status {other}: {}", res.text().await.unwrap()),
        }
    }
    panic!("the export at {url} did not finish");
}

async fn manifest(server: &TestServer, url: &str) -> Value {
    manifest_as(server, &server.token, url).await.0
}

/// Every resource in the manifest's output files, by type (each file checked against its
/// entry's type and count).
async fn contents_as(
    server: &TestServer,
    token: &str,
    manifest: &Value,
) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for file in manifest["output"].as_array().unwrap() {
        let res = server
            .client
            .get(file["url"].as_str().unwrap())
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/fhir+ndjson");
        let text = res.text().await.unwrap();
        let lines: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("one resource per line")).collect();
        assert_eq!(lines.len() as u64, file["count"].as_u64().unwrap());
        for r in &lines {
            assert_eq!(r["resourceType"], file["type"]);
        }
        out.entry(file["type"].as_str().unwrap().to_owned()).or_default().extend(lines);
    }
    out
}

async fn contents(server: &TestServer, manifest: &Value) -> BTreeMap<String, Vec<Value>> {
    contents_as(server, &server.token, manifest).await
}

fn ids_of(files: &BTreeMap<String, Vec<Value>>, ty: &str) -> BTreeSet<String> {
    files.get(ty).into_iter().flatten().map(id).collect()
}

#[tokio::test]
async fn a_system_export_writes_every_type_as_ndjson() {
    let w = world().await;
    let s = &w.server;
    let url = start(s, "$export").await;
    assert!(url.starts_with(&s.fhir_url("job/")) && url.ends_with("/status"), "{url}");
    let (m, headers) = manifest_as(s, &s.token, &url).await;
    assert!(headers.get("expires").is_some());
    assert_eq!(m["requiresAccessToken"], true);
    assert_eq!(m["request"], s.fhir_url("$export"));
    assert!(m["transactionTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(m["error"], json!([]));
    let files = contents(s, &m).await;
    assert_eq!(ids_of(&files, "Patient"), BTreeSet::from([w.p1.clone(), w.p2.clone()]));
    assert_eq!(files["Observation"].len(), 3);
    // The doctor, the unrelated one and the administrator's own profile.
    assert_eq!(files["Practitioner"].len(), 3);
    assert_eq!(files["Organization"].len(), 1);
    assert_eq!(files["Group"].len(), 1);
    // The stored bytes, decimals and all, without Medplum's server meta.
    let o = &files["Observation"][0];
    assert!(o["meta"]["versionId"].is_string());
    assert!(o["meta"].get("project").is_none() && o["meta"].get("author").is_none());
    assert!(!files.contains_key("AsyncJob"), "the export's own job is not exported");

    // The files need the caller's token.
    let file = m["output"][0]["url"].as_str().unwrap();
    let res = s.client.get(file).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = s.client.get(format!("{file}9")).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(res.status(), 404);

    // The CapabilityStatement says so.
    let (_, cs) = s.get_json("metadata").await;
    assert_eq!(
        cs["instantiates"][0],
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
    );
    let ops = |v: &Value| {
        v["operation"].as_array().unwrap().iter().map(|o| o["name"].clone()).collect::<Vec<_>>()
    };
    assert!(ops(&cs["rest"][0]).contains(&json!("export")));
    let group = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Group")
        .unwrap();
    assert!(ops(group).contains(&json!("export")));
}

#[tokio::test]
async fn kick_off_checks_its_request() {
    let w = world().await;
    let s = &w.server;
    async fn get_as(s: &TestServer, path: &str, prefer: &str) -> Response {
        kick(s, &s.token, Method::GET, path, None, prefer).await
    }
    // No token: 401.
    let res =
        s.client.get(s.fhir_url("$export")).header("prefer", "respond-async").send().await.unwrap();
    assert_eq!(res.status(), 401);
    // Not asynchronous: 400.
    let (status, body) = json_of(get_as(s, "$export", "return=representation").await).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("respond-async"));
    // Output formats.
    for ok in ["application/fhir%2Bndjson", "application/ndjson", "ndjson"] {
        let res =
            get_as(s, &format!("$export?_outputFormat={ok}&_type=Patient"), "respond-async").await;
        manifest(s, &accepted(res).await).await;
    }
    let (status, _) =
        json_of(get_as(s, "$export?_outputFormat=text/csv", "respond-async").await).await;
    assert_eq!(status, 400);
    // Malformed instants, unknown types and parameters: 400 ...
    for bad in [
        "$export?_since=yesterday",
        "$export?_type=Nonsense",
        "$export?_elephant=1",
        "$export?patient=Patient/x",
        "$export?_typeFilter=Observation%3Fnonsense=1",
        "$export?includeAssociatedData=Everything",
        "$export?organizeOutputBy=Patient",
    ] {
        let (status, body) = json_of(get_as(s, bad, "respond-async").await).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // ... unless the client asks for leniency: then what was ignored is in `error[]`.
    let url = accepted(
        get_as(s, "$export?_type=Patient,Nonsense&_elephant=1", "respond-async, handling=lenient")
            .await,
    )
    .await;
    let m = manifest(s, &url).await;
    assert_eq!(m["output"].as_array().unwrap().len(), 1);
    let errors = m["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["type"], "OperationOutcome");
    assert_eq!(errors[0]["count"], 2);
    let text = text_of(s, &s.token, errors[0]["url"].as_str().unwrap()).await;
    assert!(text.contains("Nonsense") && text.contains("_elephant"), "{text}");
    // A Group that is not there: 404; a definitional one: 400.
    let (status, _) = json_of(get_as(s, "Group/nope/$export", "respond-async").await).await;
    assert_eq!(status, 404);
    let def =
        id(&s.create(&json!({"resourceType": "Group", "type": "person", "actual": false})).await);
    let (status, _) =
        json_of(get_as(s, &format!("Group/{def}/$export"), "respond-async").await).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn type_since_type_filter_and_elements_narrow_the_export() {
    let w = world().await;
    let s = &w.server;
    // _type
    let m = manifest(s, &start(s, "$export?_type=Patient,Condition").await).await;
    let files = contents(s, &m).await;
    assert_eq!(files.keys().collect::<Vec<_>>(), vec!["Condition", "Patient"]);

    // _typeFilter: ORed per type; types without a filter are whole.
    let path = "$export?_type=Observation,Patient&_typeFilter=Observation%3Fcode%3D8867-4%26subject%3DPatient/".to_owned()
        + &w.p1 + ",Observation%3Fcode%3D2339-0";
    let files = contents(s, &manifest(s, &start(s, &path).await).await).await;
    assert_eq!(files["Observation"].len(), 2, "{:?}", files["Observation"]);
    assert_eq!(files["Patient"].len(), 2);

    // _elements: per type or for all; the result is marked SUBSETTED.
    let files = contents(
        s,
        &manifest(
            s,
            &start(s, "$export?_type=Patient,Observation&_elements=Patient.name,status").await,
        )
        .await,
    )
    .await;
    let p = &files["Patient"][0];
    assert!(p.get("name").is_some() && p.get("gender").is_none(), "{p}");
    let o = &files["Observation"][0];
    assert!(o.get("status").is_some() && o.get("code").is_none(), "{o}");
    assert!(o["meta"]["tag"].to_string().contains("SUBSETTED"));

    // _since: only what changed after it; deletions since then in `deleted[]`.
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, mut p2) = s.get_json(&format!("Patient/{}", w.p2)).await;
    p2["gender"] = json!("female");
    let res = s.send_json(Method::PUT, &format!("Patient/{}", w.p2), &p2).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let gone = id(&s.create(&patient("Gamma")).await);
    let res = s.fhir(Method::DELETE, &format!("Patient/{gone}")).send().await.unwrap();
    assert!(res.status().is_success());
    let path = format!("$export?_type=Patient&_since={}", since.replace('+', "%2B"));
    let m = manifest(s, &start(s, &path).await).await;
    let files = contents(s, &m).await;
    assert_eq!(ids_of(&files, "Patient"), BTreeSet::from([w.p2.clone()]));
    let deleted = m["deleted"].as_array().unwrap();
    assert_eq!(deleted.len(), 1, "{m}");
    assert_eq!(deleted[0]["type"], "Bundle");
    let text = text_of(s, &s.token, deleted[0]["url"].as_str().unwrap()).await;
    let bundle: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(bundle["type"], "transaction");
    assert_eq!(bundle["entry"][0]["request"]["method"], "DELETE");
    assert_eq!(bundle["entry"][0]["request"]["url"], format!("Patient/{gone}"));

    // _until: nothing written after it.
    let m = manifest(
        s,
        &start(s, &format!("$export?_type=Patient&_until={}", since.replace('+', "%2B"))).await,
    )
    .await;
    let files = contents(s, &m).await;
    assert_eq!(ids_of(&files, "Patient"), BTreeSet::from([w.p1.clone()]));
}

#[tokio::test]
async fn patient_and_group_exports_read_compartments() {
    let w = world().await;
    let s = &w.server;
    // Devices are outside the Patient compartment but name their patient.
    for p in [&w.p1, &w.p2] {
        s.create(
            &json!({"resourceType": "Device", "patient": {"reference": format!("Patient/{p}")}}),
        )
        .await;
    }
    s.create(
        &json!({"resourceType": "Device", "deviceName": [{"name": "spare", "type": "other"}]}),
    )
    .await;
    // Patient level: every patient's compartment, plus the practitioners they reference.
    let m = manifest(s, &start(s, "Patient/$export").await).await;
    let files = contents(s, &m).await;
    assert_eq!(ids_of(&files, "Patient"), BTreeSet::from([w.p1.clone(), w.p2.clone()]));
    assert_eq!(files["Observation"].len(), 3);
    assert_eq!(files["Condition"].len(), 1);
    assert_eq!(ids_of(&files, "Practitioner"), BTreeSet::from([w.dr.clone()]));
    assert!(!files.contains_key("Organization"), "nothing references it");
    assert_eq!(files["Device"].len(), 2, "the patients' devices, not the spare one");

    // POST with a Parameters body: `patient` narrows it.
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": format!("Patient/{}", w.p2)}},
        {"name": "_type", "valueString": "Patient,Observation,Condition"}]});
    let res =
        kick(s, &s.token, Method::POST, "Patient/$export", Some(&body), "respond-async").await;
    let files = contents(s, &manifest(s, &accepted(res).await).await).await;
    assert_eq!(ids_of(&files, "Patient"), BTreeSet::from([w.p2.clone()]));
    assert_eq!(files["Observation"].len(), 1);
    assert_eq!(files["Condition"].len(), 1);

    // Group level: its active members only (p2 is inactive).
    let m = manifest(s, &start(s, &format!("Group/{}/$export", w.group)).await).await;
    assert_eq!(m["request"], s.fhir_url(&format!("Group/{}/$export", w.group)));
    let files = contents(s, &m).await;
    assert_eq!(ids_of(&files, "Patient"), BTreeSet::from([w.p1.clone()]));
    assert_eq!(files["Observation"].len(), 2);
    assert!(!files.contains_key("Condition"));
    assert_eq!(ids_of(&files, "Practitioner"), BTreeSet::from([w.dr.clone()]));
    assert_eq!(files["Device"].len(), 1);
    assert_eq!(files["Device"][0]["patient"]["reference"], format!("Patient/{}", w.p1));

    // includeAssociatedData: the Provenance of exported resources.
    let target = s.create(&obs(&w.p1, "1234-5", None)).await;
    s.create(&json!({"resourceType": "Provenance", "recorded": "2024-01-01T00:00:00Z",
        "target": [{"reference": format!("Observation/{}", id(&target))}],
        "agent": [{"who": {"reference": format!("Practitioner/{}", w.dr)}}]}))
        .await;
    s.create(&json!({"resourceType": "Provenance", "recorded": "2024-01-01T00:00:00Z",
        "target": [{"reference": format!("Observation/{}", "elsewhere")}],
        "agent": [{"who": {"reference": format!("Practitioner/{}", w.dr)}}]}))
        .await;
    let path = format!(
        "Group/{}/$export?_type=Observation&includeAssociatedData=LatestProvenanceResources",
        w.group
    );
    let files = contents(s, &manifest(s, &start(s, &path).await).await).await;
    assert_eq!(files["Provenance"].len(), 1, "{files:?}");
}

#[tokio::test]
async fn an_export_shows_only_what_the_member_may_read() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let as_carl = |method: Method, path: &str| {
        server.client.request(method, server.fhir_url(path)).bearer_auth(&c.token)
    };
    for name in ["One", "Two"] {
        let res = as_carl(Method::POST, "Patient").json(&patient(name)).send().await.unwrap();
        let (_, p) = json_of(res).await;
        let res = as_carl(Method::POST, "Observation")
            .json(&obs(&id(&p), "8867-4", None))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let res = as_carl(Method::POST, "AccessPolicy")
        .json(&json!({"resourceType": "AccessPolicy", "name": "Patients only",
                      "resource": [{"resourceType": "Patient", "readonly": true,
                                    "hiddenFields": ["birthDate"]}]}))
        .send()
        .await
        .unwrap();
    let (_, policy) = json_of(res).await;
    let policy_ref = json!({"reference": format!("AccessPolicy/{}", id(&policy))});
    let (status, _) = invite(
        &server,
        &c.token,
        &c.project,
        json!({"firstName": "Dora", "lastName": "Desk", "email": "dora@example.com",
               "password": "dora-password", "accessPolicy": policy_ref}),
    )
    .await;
    assert_eq!(status, 201);
    let dora =
        sign_in(&server, "dora@example.com", "dora-password", Some(&c.project)).await.unwrap();
    let dora = dora["access_token"].as_str().unwrap().to_owned();

    let res = kick(&server, &dora, Method::GET, "$export", None, "respond-async").await;
    let url = accepted(res).await;
    let (m, _) = manifest_as(&server, &dora, &url).await;
    let files = contents_as(&server, &dora, &m).await;
    assert_eq!(files.keys().collect::<Vec<_>>(), vec!["Patient"], "{m}");
    assert_eq!(files["Patient"].len(), 2);
    assert!(
        files["Patient"].iter().all(|p| p.get("birthDate").is_none()),
        "hidden fields stay hidden"
    );
    // Asking for a type outside the policy is refused at kick-off.
    let res =
        kick(&server, &dora, Method::GET, "$export?_type=Observation", None, "respond-async").await;
    assert_eq!(res.status(), 403);

    // Another member (even an admin of the project) cannot see the job or its files.
    let res = server.client.get(&url).bearer_auth(&c.token).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let file = m["output"][0]["url"].as_str().unwrap();
    let res = server.client.get(file).bearer_auth(&c.token).send().await.unwrap();
    assert_eq!(res.status(), 404);
    // Nor can another project's member, and the first project's admin export has no data
    // of the clinic.
    let res = server.client.get(file).bearer_auth(&server.token).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let m = manifest(&server, &start(&server, "$export?_type=Patient,Observation").await).await;
    assert_eq!(m["output"], json!([]), "projects never cross");
}

#[tokio::test]
async fn a_deleted_export_is_gone_with_its_files() {
    let w = world().await;
    let s = &w.server;
    let url = start(s, "$export").await;
    let m = manifest(s, &url).await;
    let file = m["output"][0]["url"].as_str().unwrap().to_owned();
    let res = s.client.delete(&url).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let res = s.client.get(&url).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let res = s.client.get(&file).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let res = s.client.delete(&url).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let job = url.trim_end_matches("/status").rsplit('/').next().unwrap();
    let folder = s.dir.join("binary").join(project_dir(s).await).join("_bulk").join(job);
    assert!(!folder.exists(), "{} was left behind", folder.display());

    // Cancelling a running export: one part per resource makes it slow enough to catch.
    s.engine.set_export_limits(ExportLimits { part_size: 1, ..ExportLimits::default() });
    for i in 0..40 {
        s.create(&patient(&format!("Many{i}"))).await;
    }
    let url = start(s, "$export?_type=Patient").await;
    let res = s.client.delete(&url).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let res = s.client.get(&url).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let job = url.trim_end_matches("/status").rsplit('/').next().unwrap();
    let folder = s.dir.join("binary").join(project_dir(s).await).join("_bulk").join(job);
    for _ in 0..100 {
        if !folder.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the cancelled export's files stayed");
}

#[tokio::test]
async fn files_expire_after_their_retention() {
    let w = world().await;
    let s = &w.server;
    s.engine
        .set_export_limits(ExportLimits { retention: Duration::ZERO, ..ExportLimits::default() });
    let url = start(s, "$export?_type=Patient").await;
    let (m, headers) = manifest_as(s, &s.token, &url).await;
    let expires = httpdate::parse_http_date(headers["expires"].to_str().unwrap()).unwrap();
    assert!(expires <= std::time::SystemTime::now() + Duration::from_secs(1));
    let file = m["output"][0]["url"].as_str().unwrap().to_owned();
    // What `kiln serve` runs periodically.
    assert_eq!(s.engine.sweep_exports().await.unwrap(), 1);
    assert_eq!(s.client.get(&file).bearer_auth(&s.token).send().await.unwrap().status(), 404);
    assert_eq!(s.client.get(&url).bearer_auth(&s.token).send().await.unwrap().status(), 404);
    assert_eq!(s.engine.sweep_exports().await.unwrap(), 0);
}

async fn project_dir(s: &TestServer) -> String {
    let tokens = s.login_full().await;
    tokens["project"]["reference"].as_str().unwrap().trim_start_matches("Project/").to_owned()
}

/// Polls job `url` until its X-Progress (`…, N resources written…`) says at least `written`,
/// then stops every job as a crash would; fails if the job finished first.
async fn halt_after(s: &TestServer, url: &str, written: u64) {
    for _ in 0..5000 {
        let res = s.client.get(url).bearer_auth(&s.token).send().await.unwrap();
        assert_eq!(res.status(), 202, "the job finished before it could be stopped");
        let progress = res.headers()["x-progress"].to_str().unwrap().to_owned();
        let done: u64 = progress
            .split(", ")
            .nth(1)
            .and_then(|p| p.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("progress '{progress}'"));
        if done >= written {
            s.engine.halt_jobs();
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the job did not get to {written} resources");
}

#[tokio::test]
async fn an_export_stopped_midway_resumes_and_writes_each_resource_once() {
    let w = world().await;
    let s = &w.server;
    for i in 0..60 {
        s.create(&patient(&format!("Many{i}"))).await;
    }
    // A part per five resources: many checkpoints.
    s.engine.set_export_limits(ExportLimits { part_size: 5, ..ExportLimits::default() });
    let url = start(s, "$export?_type=Patient,Observation").await;
    // Wait for the first checkpoint, then stop the job as a crash would.
    halt_after(s, &url, 5).await;
    // What `kiln serve` does at start-up.
    assert!(s.engine.resume_jobs().await.unwrap() >= 1);
    let m = manifest(s, &url).await;
    let files = contents(s, &m).await;
    let patients: Vec<String> = files["Patient"].iter().map(id).collect();
    let unique: BTreeSet<&String> = patients.iter().collect();
    assert_eq!(patients.len(), 62, "every patient, once");
    assert_eq!(unique.len(), 62);
    assert_eq!(files["Observation"].len(), 3);
    assert!(m["output"].as_array().unwrap().len() >= 13, "split into parts of 5");
}

#[tokio::test]
async fn a_client_may_run_only_so_many_exports_at_once() {
    let w = world().await;
    let s = &w.server;
    for i in 0..100 {
        s.create(&patient(&format!("Many{i}"))).await;
    }
    s.engine.set_export_limits(ExportLimits {
        part_size: 1,
        per_client: 1,
        ..ExportLimits::default()
    });
    let first = start(s, "$export?_type=Patient").await;
    let res = kick(s, &s.token, Method::GET, "$export", None, "respond-async").await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
    // Once the first is done, the next one is welcome.
    manifest(s, &first).await;
    for _ in 0..100 {
        let res =
            kick(s, &s.token, Method::GET, "$export?_type=Group", None, "respond-async").await;
        if res.status() == 202 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the limit was not released");
}

/// `POST $import` with `inputs` as (type, url) pairs, as `token`.
async fn import_as(
    server: &TestServer,
    token: &str,
    inputs: &[(Option<&str>, String)],
) -> Response {
    let mut params = vec![json!({"name": "inputFormat", "valueCode": "application/fhir+ndjson"})];
    for (ty, url) in inputs {
        let mut parts = vec![json!({"name": "url", "valueUri": url})];
        if let Some(ty) = ty {
            parts.push(json!({"name": "type", "valueCode": ty}));
        }
        params.push(json!({"name": "input", "part": parts}));
    }
    let body = json!({"resourceType": "Parameters", "parameter": params});
    kick(server, token, Method::POST, "$import", Some(&body), "respond-async").await
}

/// Uploads NDJSON as a Binary (as `token`) and returns its URL.
async fn upload(server: &TestServer, token: &str, ndjson: &str) -> String {
    let res = server
        .client
        .post(server.fhir_url("Binary"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+ndjson")
        .body(ndjson.to_owned())
        .send()
        .await
        .unwrap();
    let (status, binary) = json_of(res).await;
    assert_eq!(status, 201, "{binary}");
    server.fhir_url(&format!("Binary/{}", id(&binary)))
}

/// A resource without what the server owns (`meta`), for comparing copies.
fn content(resource: &Value) -> Value {
    let mut r = resource.clone();
    r.as_object_mut().unwrap().remove("meta");
    r
}

#[tokio::test]
async fn an_export_imported_into_an_empty_project_is_the_same_data() {
    let w = world().await;
    let s = &w.server;
    let types = "Patient,Practitioner,Observation,Condition,Organization,Group";
    let m = manifest(s, &start(s, &format!("$export?_type={types}")).await).await;
    let exported = contents(s, &m).await;

    // Into another project: its admin uploads the files and imports them.
    let c = clinic(s).await;
    let mut inputs = Vec::new();
    for file in m["output"].as_array().unwrap() {
        let url = file["url"].as_str().unwrap();
        let text = text_of(s, &s.token, url).await;
        let binary = upload(s, &c.token, &text).await;
        inputs.push((file["type"].as_str(), binary));
    }
    let url = accepted(import_as(s, &c.token, &inputs).await).await;
    let (result, _) = manifest_as(s, &c.token, &url).await;
    assert_eq!(result["error"], json!([]), "{result}");
    let total: u64 =
        result["output"].as_array().unwrap().iter().map(|o| o["count"].as_u64().unwrap()).sum();
    let expected: usize = exported.values().map(Vec::len).sum();
    assert_eq!(total as usize, expected);

    // The clinic's own export holds the same resources, ids and all.
    let res =
        kick(s, &c.token, Method::GET, &format!("$export?_type={types}"), None, "respond-async")
            .await;
    let (m2, _) = manifest_as(s, &c.token, &accepted(res).await).await;
    let imported = contents_as(s, &c.token, &m2).await;
    for (ty, resources) in &exported {
        let mut want: Vec<Value> = resources.iter().map(content).collect();
        let mut got: Vec<Value> = imported.get(ty).into_iter().flatten().map(content).collect();
        if ty == "Practitioner" {
            // The clinic has its own administrator's profile too.
            got.retain(|p| want.iter().any(|q| q["id"] == p["id"]));
        }
        want.sort_by_key(|r| r["id"].to_string());
        got.sort_by_key(|r| r["id"].to_string());
        assert_eq!(got, want, "{ty}");
    }
}

#[tokio::test]
async fn an_import_reports_bad_lines_and_keeps_the_good_ones() {
    let w = world().await;
    let s = &w.server;
    let ndjson = [
        json!({"resourceType": "Patient", "id": "imp-1", "name": [{"family": "Good"}]}).to_string(),
        "{not json".to_owned(),
        String::new(),
        json!({"resourceType": "Patient", "gender": "robot"}).to_string(),
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
            .to_string(),
        json!({"resourceType": "Patient", "name": [{"family": "NoId"}]}).to_string(),
    ]
    .join("\n");
    let binary = upload(s, &s.token, &ndjson).await;
    let url = accepted(import_as(s, &s.token, &[(Some("Patient"), binary.clone())]).await).await;
    let m = manifest(s, &url).await;
    assert_eq!(m["output"][0]["count"], 2, "{m}");
    assert_eq!(m["output"][0]["inputUrl"], binary);
    let errors = m["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["count"], 3);
    assert_eq!(errors[0]["inputUrl"], binary);
    let text = text_of(s, &s.token, errors[0]["url"].as_str().unwrap()).await;
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    let said = |n: usize| lines[n]["issue"][0]["diagnostics"].as_str().unwrap().to_owned();
    assert!(said(0).contains("line 2") && said(0).contains("JSON"), "{}", said(0));
    assert!(said(1).contains("line 4"), "{}", said(1));
    assert!(said(2).contains("line 5") && said(2).contains("Observation"), "{}", said(2));
    let (status, p) = s.get_json("Patient/imp-1").await;
    assert_eq!(status, 200);
    assert_eq!(p["name"][0]["family"], "Good");
    let job = url.trim_end_matches("/status").rsplit('/').next().unwrap();
    let (status, _) = s.get_json(&format!("Patient/{job}-0-6")).await;
    assert_eq!(status, 200, "a line without an id gets a stable one");

    // Importing the same file again changes nothing but versions.
    let url = accepted(import_as(s, &s.token, &[(Some("Patient"), binary)]).await).await;
    assert_eq!(manifest(s, &url).await["output"][0]["count"], 2);
    let (_, p) = s.get_json("Patient/imp-1").await;
    assert_eq!(p["meta"]["versionId"], "2");
}

#[tokio::test]
async fn import_checks_its_request_and_the_callers_rights() {
    let w = world().await;
    let s = &w.server;
    // Only this server's own storage.
    let (status, body) = json_of(
        import_as(s, &s.token, &[(None, "https://elsewhere.example/x.ndjson".into())]).await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) =
        json_of(import_as(s, &s.token, &[(None, s.fhir_url("Binary/nope"))]).await).await;
    assert_eq!(status, 404);
    let (status, _) = json_of(import_as(s, &s.token, &[]).await).await;
    assert_eq!(status, 400);
    let binary = upload(s, &s.token, "{}").await;
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "input", "part": [{"name": "url", "valueUri": binary}]}]});
    let res = kick(s, &s.token, Method::POST, "$import", Some(&body), "return=minimal").await;
    assert_eq!(res.status(), 400, "Prefer: respond-async is required");
    let mut bad = body.clone();
    bad["parameter"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "inputFormat", "valueCode": "text/csv"}));
    let res = kick(s, &s.token, Method::POST, "$import", Some(&bad), "respond-async").await;
    assert_eq!(res.status(), 400);

    // A member whose policy allows Patients only: Observation lines are refused, one by one.
    let c = clinic(s).await;
    let res = s
        .client
        .post(s.fhir_url("AccessPolicy"))
        .bearer_auth(&c.token)
        .json(&json!({"resourceType": "AccessPolicy", "name": "Patients",
                      "resource": [{"resourceType": "Patient"}, {"resourceType": "Binary"}]}))
        .send()
        .await
        .unwrap();
    let (_, policy) = json_of(res).await;
    let policy_ref = json!({"reference": format!("AccessPolicy/{}", id(&policy))});
    let (status, _) = invite(
        s,
        &c.token,
        &c.project,
        json!({"firstName": "Ivy", "lastName": "Intake", "email": "ivy@example.com",
               "password": "ivy-password", "accessPolicy": policy_ref}),
    )
    .await;
    assert_eq!(status, 201);
    let ivy = sign_in(s, "ivy@example.com", "ivy-password", Some(&c.project)).await.unwrap();
    let ivy = ivy["access_token"].as_str().unwrap().to_owned();
    let ndjson = [
        json!({"resourceType": "Patient", "id": "ivy-p", "name": [{"family": "Ok"}]}).to_string(),
        json!({"resourceType": "Observation", "id": "ivy-o", "status": "final", "code": {"text": "x"}}).to_string(),
    ]
    .join("\n");
    let binary = upload(s, &ivy, &ndjson).await;
    let url = accepted(import_as(s, &ivy, &[(None, binary)]).await).await;
    let (m, _) = manifest_as(s, &ivy, &url).await;
    assert_eq!(m["output"][0]["count"], 1, "{m}");
    assert_eq!(m["error"][0]["count"], 1);
    // Another member cannot see the import's status.
    let res = s.client.get(&url).bearer_auth(&c.token).send().await.unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn an_export_file_imports_back_into_its_own_project() {
    let w = world().await;
    let s = &w.server;
    let m = manifest(s, &start(s, "$export?_type=Condition").await).await;
    let condition = contents(s, &m).await["Condition"][0].clone();
    let res =
        s.fhir(Method::DELETE, &format!("Condition/{}", id(&condition))).send().await.unwrap();
    assert!(res.status().is_success());
    let file = m["output"][0]["url"].as_str().unwrap().to_owned();
    let url = accepted(import_as(s, &s.token, &[(Some("Condition"), file)]).await).await;
    s.engine.halt_jobs(); // a restart before it ran: resumed from the start
    s.engine.resume_jobs().await.unwrap();
    assert_eq!(manifest(s, &url).await["output"][0]["count"], 1);
    let (status, back) = s.get_json(&format!("Condition/{}", id(&condition))).await;
    assert_eq!(status, 200);
    assert_eq!(content(&back), content(&condition));
}

#[tokio::test]
async fn a_bundle_sent_with_respond_async_is_answered_at_its_status_url() {
    let w = world().await;
    let s = &w.server;
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0d5a8a6e-1d1a-4b6b-9a8e-6d1f2b1d1c01",
         "resource": {"resourceType": "Patient", "name": [{"family": "Async"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:0d5a8a6e-1d1a-4b6b-9a8e-6d1f2b1d1c01"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let post = |body: &Value| {
        s.client
            .post(s.fhir_url(""))
            .bearer_auth(&s.token)
            .header("content-type", "application/fhir+json")
            .header("prefer", "respond-async")
            .body(body.to_string())
            .send()
    };
    let url = accepted(post(&transaction).await.unwrap()).await;
    let res = crate::support::job_result(s, &s.token, &url).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["type"], "transaction-response", "{answer}");
    let location = answer["entry"][1]["response"]["location"].as_str().unwrap();
    let (status, o) = s.get_json(location.split("/_history").next().unwrap()).await;
    assert_eq!(status, 200);
    assert!(o["subject"]["reference"].as_str().unwrap().starts_with("Patient/"));

    // A transaction the server refuses: its outcome and status at the status URL.
    let mut bad = transaction.clone();
    bad["entry"][1]["resource"]["status"] = json!("not-a-status");
    let url = accepted(post(&bad).await.unwrap()).await;
    let res = crate::support::job_result(s, &s.token, &url).await;
    assert_eq!(res.status(), 400);
    let oo: Value = res.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    // Nothing of it was written.
    let (_, found) = s.get_json("Patient?name=Async").await;
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 1);
    // Not a Bundle at all: refused at once.
    let res = post(&json!({"resourceType": "Patient"})).await.unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn an_export_holds_the_data_as_it_was_at_its_transaction_time() {
    let w = world().await;
    let s = &w.server;
    for i in 0..30 {
        s.create(&patient(&format!("Many{i}"))).await;
    }
    // One part per resource makes the export slow; it is stopped at once and the data
    // changed before it resumes.
    s.engine.set_export_limits(ExportLimits { part_size: 1, ..ExportLimits::default() });
    let url = start(s, "$export?_type=Patient").await;
    s.engine.halt_jobs();
    let (_, mut p2) = s.get_json(&format!("Patient/{}", w.p2)).await;
    p2["name"][0]["family"] = json!("Renamed");
    let res = s.send_json(Method::PUT, &format!("Patient/{}", w.p2), &p2).send().await.unwrap();
    assert_eq!(res.status(), 200);
    s.create(&patient("TooLate")).await;
    s.engine.resume_jobs().await.unwrap();
    let files = contents(s, &manifest(s, &url).await).await;
    let patients = &files["Patient"];
    assert_eq!(patients.len(), 32, "the patients of then, each once");
    let p2: Vec<&Value> = patients.iter().filter(|p| id(p) == w.p2).collect();
    assert_eq!(p2.len(), 1);
    assert_eq!(p2[0]["name"][0]["family"], "Beta", "the version of then");
    assert!(!patients.iter().any(|p| p["name"][0]["family"] == "TooLate"));
}

#[tokio::test]
async fn signed_links_download_without_a_token_until_they_expire() {
    let w = world().await;
    let s = &w.server;
    s.engine.set_export_limits(ExportLimits {
        signed_urls: Some(Duration::from_secs(1)),
        ..ExportLimits::default()
    });
    let m = manifest(s, &start(s, "$export?_type=Patient").await).await;
    assert_eq!(m["requiresAccessToken"], false);
    let url = m["output"][0]["url"].as_str().unwrap().to_owned();
    assert!(url.contains("sig="), "{url}");
    let res = s.client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap().lines().count(), 2);
    // Any change to what the link grants breaks it.
    for tampered in [url.replace("/file/0", "/file/1"), url.replace("exp=", "exp=9")] {
        let res = s.client.get(&tampered).send().await.unwrap();
        assert_eq!(res.status(), 403, "{tampered}");
    }
    // The caller's token still works without the signature.
    let plain = url.split('?').next().unwrap();
    assert_eq!(s.client.get(plain).bearer_auth(&s.token).send().await.unwrap().status(), 200);
    assert_eq!(s.client.get(plain).send().await.unwrap().status(), 401);
    // Once expired, the link is refused.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(s.client.get(&url).send().await.unwrap().status(), 403);
}

/// The (input URL, line number) of every refusal in an import manifest's error files.
async fn refused_lines(s: &TestServer, manifest: &Value) -> Vec<(String, usize)> {
    let mut refused = Vec::new();
    for file in manifest["error"].as_array().unwrap() {
        let text = text_of(s, &s.token, file["url"].as_str().unwrap()).await;
        for line in text.lines() {
            let oo: Value = serde_json::from_str(line).unwrap();
            let said = oo["issue"][0]["diagnostics"].as_str().unwrap();
            let (input_url, rest) = said.split_once(" line ").unwrap();
            let n: usize = rest.split(':').next().unwrap().parse().unwrap();
            refused.push((input_url.to_owned(), n));
        }
    }
    refused
}

#[tokio::test]
async fn a_large_input_is_numbered_and_counted_across_batches() {
    let w = world().await;
    let s = &w.server;
    let bad: BTreeSet<usize> = [1, 1000, 1001, 2500].into();
    let mut ndjson = String::new();
    for line in 1..=2500 {
        let gender = if bad.contains(&line) { "robot" } else { "female" };
        ndjson.push_str(
            &json!({"resourceType": "Patient", "id": format!("big-{line}"),
                                "gender": gender})
            .to_string(),
        );
        ndjson.push('\n');
    }
    let binary = upload(s, &s.token, &ndjson).await;
    let m = manifest(s, &accepted(import_as(s, &s.token, &[(None, binary)]).await).await).await;
    assert_eq!(m["output"][0]["count"], 2496, "{m}");
    let refused = refused_lines(s, &m).await;
    assert_eq!(refused.into_iter().map(|(_, n)| n).collect::<BTreeSet<_>>(), bad);
    let (_, found) = s.get_json("Patient?_id=big-999,big-1002,big-2499&_summary=count").await;
    assert_eq!(found["total"], 3);
}

#[tokio::test]
async fn an_import_stopped_midway_resumes_and_reports_each_refusal_once() {
    let w = world().await;
    let s = &w.server;
    // Saved after every batch, so that the stop below falls after some saved position.
    s.engine.set_export_limits(ExportLimits {
        import_checkpoint: Duration::ZERO,
        ..ExportLimits::default()
    });
    let (_, before) = s.get_json("Patient?_summary=count").await;
    let bad = [(0, 5), (1, 1200), (2, 1)];
    let mut inputs = Vec::new();
    for input in 0..3 {
        let mut ndjson = String::new();
        for line in 1..=2500 {
            let gender = if bad.contains(&(input, line)) { "robot" } else { "female" };
            let mut p = json!({"resourceType": "Patient", "gender": gender});
            // The last lines of the last input have no id: they get one from their position.
            if input < 2 || line <= 2400 {
                p["id"] = json!(format!("resume-{input}-{line}"));
            }
            ndjson.push_str(&p.to_string());
            ndjson.push('\n');
        }
        inputs.push((Some("Patient"), upload(s, &s.token, &ndjson).await));
    }
    let url = accepted(import_as(s, &s.token, &inputs).await).await;
    // Batches are of 1,000 lines: the stop falls inside the first input, after its second.
    halt_after(s, &url, 1000).await;
    assert!(s.engine.resume_jobs().await.unwrap() >= 1);
    let m = manifest(s, &url).await;
    let counts: Vec<&Value> = m["output"].as_array().unwrap().iter().map(|o| &o["count"]).collect();
    assert_eq!(counts, [2499, 2499, 2499], "{m}");
    let mut refused: Vec<(usize, usize)> = refused_lines(s, &m)
        .await
        .into_iter()
        .map(|(url, n)| (inputs.iter().position(|(_, u)| *u == url).unwrap(), n))
        .collect();
    refused.sort();
    assert_eq!(refused, bad, "each refused line reported once");
    // Every good line once: lines without ids were not added twice by the redo.
    let (_, after) = s.get_json("Patient?_summary=count").await;
    let added = after["total"].as_u64().unwrap() - before["total"].as_u64().unwrap();
    assert_eq!(added, 3 * 2499);
}

#[tokio::test]
async fn lines_of_one_resource_in_different_batches_land_in_file_order() {
    let w = world().await;
    let s = &w.server;
    // 3,500 lines (four batches, written side by side where they may be) over 40 Patients:
    // every Patient has lines in every batch, and its versions must follow the file.
    let mut ndjson = String::new();
    for line in 1..=3500 {
        let p = json!({"resourceType": "Patient", "id": format!("order-{}", line % 40),
                       "name": [{"family": format!("Line{line}")}]});
        ndjson.push_str(&p.to_string());
        ndjson.push('\n');
    }
    // A Patient of its own in each batch too, so that batches differ in what they write.
    for batch in 0..4 {
        let p = json!({"resourceType": "Patient", "id": format!("alone-{batch}")});
        ndjson.push_str(&p.to_string());
        ndjson.push('\n');
    }
    let input = vec![(Some("Patient"), upload(s, &s.token, &ndjson).await)];
    let m = manifest(s, &accepted(import_as(s, &s.token, &input).await).await).await;
    assert_eq!(m["output"][0]["count"], 3504, "{m}");
    for k in [0, 1, 17, 39] {
        let (status, history) = s.get_json(&format!("Patient/order-{k}/_history?_count=200")).await;
        assert_eq!(status, 200);
        // Newest first: the file's lines of this Patient, last line first.
        let families: Vec<String> = history["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["name"][0]["family"].as_str().unwrap().to_owned())
            .collect();
        let want: Vec<String> =
            (1..=3500).rev().filter(|l| l % 40 == k).map(|l| format!("Line{l}")).collect();
        assert_eq!(families, want, "order-{k}");
    }
}

#[tokio::test]
async fn a_strict_project_refuses_imported_lines_that_break_their_profiles() {
    const US_CORE_PATIENT: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";
    let s = TestServer::start().await;
    s.set_strict_profiles().await;
    let good = json!({"resourceType": "Patient", "id": "strict-1",
        "meta": {"profile": [US_CORE_PATIENT]},
        "identifier": [{"system": "http://hospital.example/mrn", "value": "1"}],
        "name": [{"family": "Shaw"}], "gender": "female"});
    let lacking = json!({"resourceType": "Patient", "id": "strict-2",
        "meta": {"profile": [US_CORE_PATIENT]}, "name": [{"family": "Shaw"}]});
    let mut unclaimed = lacking.clone();
    unclaimed["id"] = json!("strict-3");
    unclaimed.as_object_mut().unwrap().remove("meta");
    let mut contained = lacking.clone();
    contained["id"] = json!("p");
    let observation = json!({"resourceType": "Observation", "id": "strict-4", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "#p"}, "contained": [contained]});
    let ndjson = [good, lacking, unclaimed, observation].map(|r| r.to_string()).join("\n");
    let binary = upload(&s, &s.token, &ndjson).await;
    let m = manifest(&s, &accepted(import_as(&s, &s.token, &[(None, binary)]).await).await).await;
    assert_eq!(m["output"][0]["count"], 2, "{m}");
    let refused: Vec<usize> = refused_lines(&s, &m).await.into_iter().map(|(_, n)| n).collect();
    assert_eq!(refused, [2, 4], "{m}");
    // The reasons name the elements, as a refused write does.
    let text = text_of(&s, &s.token, m["error"][0]["url"].as_str().unwrap()).await;
    let outcomes: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let at = |oo: &Value, path: &str| {
        oo["issue"].as_array().unwrap().iter().any(|i| i["expression"][0] == path)
    };
    assert!(at(&outcomes[0], "Patient.identifier"), "{}", outcomes[0]);
    assert!(at(&outcomes[1], "Observation.contained[0].identifier"), "{}", outcomes[1]);
    for (id, status) in [("strict-1", 200), ("strict-2", 404), ("strict-3", 200)] {
        assert_eq!(s.get_json(&format!("Patient/{id}")).await.0, status, "{id}");
    }
    assert_eq!(s.get_json("Observation/strict-4").await.0, 404);
}

#[tokio::test]
async fn a_strict_project_checks_imported_codes_against_its_own_value_sets() {
    let s = TestServer::start().await;
    crate::profile::upload_lab_ig(&s).await;
    s.set_strict_profiles().await;
    let mut inside = crate::profile::lab_observation("glucose", true);
    inside["id"] = json!("lab-1");
    let mut outside = crate::profile::lab_observation("sodium", true);
    outside["id"] = json!("lab-2");
    let ndjson = [inside, outside].map(|r| r.to_string()).join("\n");
    let binary = upload(&s, &s.token, &ndjson).await;
    let m = manifest(&s, &accepted(import_as(&s, &s.token, &[(None, binary)]).await).await).await;
    assert_eq!(m["output"][0]["count"], 1, "{m}");
    let refused: Vec<usize> = refused_lines(&s, &m).await.into_iter().map(|(_, n)| n).collect();
    assert_eq!(refused, [2], "{m}");
    let text = text_of(&s, &s.token, m["error"][0]["url"].as_str().unwrap()).await;
    assert!(text.contains("Observation.code"), "{text}");
    assert_eq!(s.get_json("Observation/lab-1").await.0, 200);
    assert_eq!(s.get_json("Observation/lab-2").await.0, 404);
}
