//! Profiles over HTTP: `$validate` with `profile` (query or Parameters) and at instance
//! level, `meta.profile` claims, a project's own StructureDefinition, and writes in a project
//! with `strictProfiles` (rejected with the issues' expressions), and a project's own value
//! sets bound by its own profile.

use crate::support::*;
use reqwest::Method;
use serde_json::{Value, json};

const US_CORE_PATIENT: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";

async fn post(server: &TestServer, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut req = server.fhir(Method::POST, path);
    if let Some(body) = body {
        req = req.header("content-type", "application/fhir+json").body(body.to_string());
    }
    json_of(req.send().await.unwrap()).await
}

/// The (severity, first expression) of each issue.
fn issues(outcome: &Value) -> Vec<(String, String)> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["severity"].as_str().unwrap_or_default().to_string(),
                i["expression"][0].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn has_error_at(outcome: &Value, path: &str) -> bool {
    issues(outcome).iter().any(|(s, p)| s == "error" && p == path)
}

fn us_core_patient() -> Value {
    json!({"resourceType": "Patient",
        "identifier": [{"system": "http://hospital.example/mrn", "value": "12345"}],
        "name": [{"family": "Shaw", "given": ["Amy"]}], "gender": "female"})
}

#[tokio::test]
async fn validate_with_a_profile() {
    let server = TestServer::start().await;
    let lacking = json!({"resourceType": "Patient", "name": [{"family": "Shaw"}]});
    // By query: the base resource is valid, US Core wants identifier and gender.
    let (status, outcome) = post(&server, "Patient/$validate", Some(&lacking)).await;
    assert_eq!(status, 200);
    assert!(!has_error_at(&outcome, "Patient.identifier"), "{outcome}");
    assert_eq!(outcome["id"], "ok", "{outcome}");
    let path = format!("Patient/$validate?profile={US_CORE_PATIENT}");
    let (status, outcome) = post(&server, &path, Some(&lacking)).await;
    assert_eq!(status, 200);
    assert!(has_error_at(&outcome, "Patient.identifier"), "{outcome}");
    assert!(has_error_at(&outcome, "Patient.gender"), "{outcome}");
    assert!(outcome.to_string().contains("us-core-patient"));
    assert_ne!(outcome["id"], "ok", "an outcome with errors is not 'ok': {outcome}");
    // By Parameters.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": lacking},
        {"name": "profile", "valueCanonical": US_CORE_PATIENT},
        {"name": "mode", "valueCode": "create"}]});
    let (status, outcome) = post(&server, "Patient/$validate", Some(&params)).await;
    assert_eq!(status, 200);
    assert!(has_error_at(&outcome, "Patient.identifier"), "{outcome}");
    // Claimed in meta.profile.
    let mut claiming = lacking.clone();
    claiming["meta"] = json!({"profile": [US_CORE_PATIENT]});
    let (_, outcome) = post(&server, "Patient/$validate", Some(&claiming)).await;
    assert!(has_error_at(&outcome, "Patient.identifier"), "{outcome}");
    // A conforming one.
    let (_, outcome) = post(&server, &path, Some(&us_core_patient())).await;
    assert!(issues(&outcome).iter().all(|(s, _)| s != "error"), "{outcome}");
    // An unknown profile, an unknown mode.
    let (status, outcome) =
        post(&server, "Patient/$validate?profile=http://nowhere.example/p", Some(&lacking)).await;
    assert_eq!(status, 200);
    assert!(outcome.to_string().contains("is not known"), "{outcome}");
    let (status, _) = post(&server, "Patient/$validate?mode=sideways", Some(&lacking)).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn validate_an_instance() {
    let server = TestServer::start().await;
    // Stored without a profile claim: the project does not enforce anything.
    let stored =
        server.create(&json!({"resourceType": "Patient", "name": [{"family": "X"}]})).await;
    let id = stored["id"].as_str().unwrap();
    let path = format!("Patient/{id}/$validate?profile={US_CORE_PATIENT}");
    // No body: the stored version is validated.
    let (status, outcome) = post(&server, &path, None).await;
    assert_eq!(status, 200, "{outcome}");
    assert!(has_error_at(&outcome, "Patient.identifier"), "{outcome}");
    // A body: that resource is, and its id must be the URL's.
    let mut candidate = us_core_patient();
    candidate["id"] = json!(id);
    let (_, outcome) = post(&server, &path, Some(&candidate)).await;
    assert!(issues(&outcome).iter().all(|(s, _)| s != "error"), "{outcome}");
    candidate["id"] = json!("other");
    let (_, outcome) = post(&server, &path, Some(&candidate)).await;
    assert!(has_error_at(&outcome, "Patient.id"), "{outcome}");
    // mode=delete: the resource must exist.
    let (status, _) = post(&server, &format!("Patient/{id}/$validate?mode=delete"), None).await;
    assert_eq!(status, 200);
    let (status, _) = post(&server, "Patient/missing/$validate?mode=delete", None).await;
    assert_eq!(status, 404);
    let (status, _) = post(&server, "Patient/missing/$validate", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_stored_structure_definition_is_a_profile() {
    let server = TestServer::start().await;
    let url = "http://example.org/fhir/StructureDefinition/needs-birth-date";
    server
        .create(
            &json!({"resourceType": "StructureDefinition", "url": url, "name": "NeedsBirthDate",
            "status": "active", "kind": "resource", "abstract": false, "type": "Patient",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
            "derivation": "constraint",
            "differential": {"element": [
                {"id": "Patient", "path": "Patient"},
                {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}]}}),
        )
        .await;
    let patient = json!({"resourceType": "Patient", "meta": {"profile": [url]}});
    let (_, outcome) = post(&server, "Patient/$validate", Some(&patient)).await;
    assert!(has_error_at(&outcome, "Patient.birthDate"), "{outcome}");
    let (_, outcome) = post(
        &server,
        &format!("Patient/$validate?profile={url}"),
        Some(&json!({"resourceType": "Patient", "birthDate": "2000-01-01"})),
    )
    .await;
    assert!(issues(&outcome).iter().all(|(s, _)| s != "error"), "{outcome}");
}

#[tokio::test]
async fn strict_projects_reject_nonconforming_writes() {
    let server = TestServer::start().await;
    let mut lacking = json!({"resourceType": "Patient", "name": [{"family": "Shaw"}],
        "meta": {"profile": [US_CORE_PATIENT]}});
    // Not strict (the default): stored as sent.
    server.create(&lacking).await;

    let tokens = server.login_full().await;
    let project = tokens["project"]["reference"].as_str().unwrap().trim_start_matches("Project/");
    let (status, mut proj) = server.get_json(&format!("Project/{project}")).await;
    assert_eq!(status, 200);
    proj["setting"] = json!([{"name": "strictProfiles", "valueBoolean": true}]);
    let res =
        server.send_json(Method::PUT, &format!("Project/{project}"), &proj).send().await.unwrap();
    assert_eq!(res.status(), 200);

    let (status, outcome) = post(&server, "Patient", Some(&lacking)).await;
    assert_eq!(status, 400, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert!(has_error_at(&outcome, "Patient.identifier"), "{outcome}");
    // Updates and transactions too.
    let res = server
        .send_json(Method::PUT, "Patient/p1", &{
            let mut p = lacking.clone();
            p["id"] = json!("p1");
            p
        })
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": lacking, "request": {"method": "POST", "url": "Patient"}}]});
    let (status, outcome) = post(&server, "", Some(&bundle)).await;
    assert_eq!(status, 400, "{outcome}");
    // Conforming, unclaimed or claiming an unknown profile: accepted.
    let mut good = us_core_patient();
    good["meta"] = json!({"profile": [US_CORE_PATIENT]});
    server.create(&good).await;
    lacking.as_object_mut().unwrap().remove("meta");
    server.create(&lacking).await;
    lacking["meta"] = json!({"profile": ["http://nowhere.example/p"]});
    server.create(&lacking).await;

    // The setting is cached per project; switching it off is seen by the next write.
    let (_, mut proj) = server.get_json(&format!("Project/{project}")).await;
    proj.as_object_mut().unwrap().remove("setting");
    let res =
        server.send_json(Method::PUT, &format!("Project/{project}"), &proj).send().await.unwrap();
    assert_eq!(res.status(), 200);
    lacking["meta"] = json!({"profile": [US_CORE_PATIENT]});
    server.create(&lacking).await;
}

#[tokio::test]
async fn strict_projects_check_the_claims_of_contained_resources() {
    let server = TestServer::start().await;
    server.set_strict_profiles().await;
    let observation = |contained: Value| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "#p"}, "contained": [contained]})
    };
    let mut lacking = json!({"resourceType": "Patient", "id": "p",
        "meta": {"profile": [US_CORE_PATIENT]}, "name": [{"family": "Shaw"}]});
    let (status, outcome) = post(&server, "Observation", Some(&observation(lacking.clone()))).await;
    assert_eq!(status, 400, "{outcome}");
    assert!(has_error_at(&outcome, "Observation.contained[0].identifier"), "{outcome}");
    assert!(has_error_at(&outcome, "Observation.contained[0].gender"), "{outcome}");
    // $validate reports the same (it always checked nested claims).
    let (_, outcome) =
        post(&server, "Observation/$validate", Some(&observation(lacking.clone()))).await;
    assert!(has_error_at(&outcome, "Observation.contained[0].identifier"), "{outcome}");
    // Conforming, or claiming nothing: stored.
    let mut good = us_core_patient();
    good["id"] = json!("p");
    good["meta"] = json!({"profile": [US_CORE_PATIENT]});
    let (status, outcome) = post(&server, "Observation", Some(&observation(good))).await;
    assert_eq!(status, 201, "{outcome}");
    lacking.as_object_mut().unwrap().remove("meta");
    let (status, outcome) = post(&server, "Observation", Some(&observation(lacking))).await;
    assert_eq!(status, 201, "{outcome}");
}

#[tokio::test]
async fn strict_projects_check_the_claims_of_bundle_entries() {
    let server = TestServer::start().await;
    server.set_strict_profiles().await;
    let collection = |patient: Value| {
        json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:0d2f1b6e-58a4-4a57-9d3b-3c1d0e6c2f11", "resource": patient}]})
    };
    let lacking = json!({"resourceType": "Patient",
        "meta": {"profile": [US_CORE_PATIENT]}, "name": [{"family": "Shaw"}]});
    let (status, outcome) = post(&server, "Bundle", Some(&collection(lacking.clone()))).await;
    assert_eq!(status, 400, "{outcome}");
    assert!(has_error_at(&outcome, "Bundle.entry[0].resource.identifier"), "{outcome}");
    // A document inside a transaction's entry is checked the same way.
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": collection(lacking.clone()), "request": {"method": "POST", "url": "Bundle"}}]});
    let (status, outcome) = post(&server, "", Some(&transaction)).await;
    assert_eq!(status, 400, "{outcome}");
    let mut good = us_core_patient();
    good["meta"] = json!({"profile": [US_CORE_PATIENT]});
    let (status, outcome) = post(&server, "Bundle", Some(&collection(good))).await;
    assert_eq!(status, 201, "{outcome}");
}

const LAB_CS: &str = "http://example.org/fhir/CodeSystem/lab";
const LAB_VS: &str = "http://example.org/fhir/ValueSet/lab-panel";
const LAB_PROFILE: &str = "http://example.org/fhir/StructureDefinition/lab-observation";

/// A project's own small IG: a CodeSystem, a ValueSet of two of its codes, and an
/// Observation profile binding `code` (required) to that value set and asking the same of
/// it through a `memberOf` constraint, and `method` (required) to a value set it lacks.
pub(crate) async fn upload_lab_ig(server: &TestServer) {
    server
        .create(&json!({"resourceType": "CodeSystem", "url": LAB_CS, "status": "active",
            "content": "complete", "concept": [
                {"code": "glucose", "display": "Glucose"},
                {"code": "hba1c", "display": "HbA1c"},
                {"code": "sodium", "display": "Sodium"}]}))
        .await;
    server
        .create(&json!({"resourceType": "ValueSet", "url": LAB_VS, "status": "active",
            "compose": {"include": [{"system": LAB_CS,
                "concept": [{"code": "glucose"}, {"code": "hba1c"}]}]}}))
        .await;
    server
        .create(&json!({"resourceType": "StructureDefinition", "url": LAB_PROFILE,
            "name": "LabObservation", "status": "active", "kind": "resource",
            "abstract": false, "type": "Observation",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
            "derivation": "constraint",
            "differential": {"element": [
                {"id": "Observation", "path": "Observation", "constraint": [{"key": "lab-1",
                    "severity": "error", "human": "The code is one of the lab panel's",
                    "expression": format!("code.memberOf('{LAB_VS}')")}]},
                {"id": "Observation.code", "path": "Observation.code",
                    "binding": {"strength": "required", "valueSet": LAB_VS}},
                // A value set the project does not have: not checked (as before).
                {"id": "Observation.method", "path": "Observation.method",
                    "binding": {"strength": "required",
                        "valueSet": "http://example.org/fhir/ValueSet/missing"}}]}}))
        .await;
}

pub(crate) fn lab_observation(code: &str, claim: bool) -> Value {
    let mut obs = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LAB_CS, "code": code}]},
        "method": {"coding": [{"system": "http://example.org/fhir/method", "code": "any"}]}});
    if claim {
        obs["meta"] = json!({"profile": [LAB_PROFILE]});
    }
    obs
}

fn has_diagnostics(outcome: &Value, text: &str) -> bool {
    outcome["issue"].as_array().into_iter().flatten().any(|i| {
        i["severity"] == "error" && i["diagnostics"].as_str().is_some_and(|d| d.contains(text))
    })
}

#[tokio::test]
async fn a_project_profile_binds_to_the_project_value_sets() {
    let server = TestServer::start().await;
    upload_lab_ig(&server).await;
    let path = format!("Observation/$validate?profile={LAB_PROFILE}");
    // A code of the code system outside the value set: the binding and the constraint fail.
    let (status, outcome) = post(&server, &path, Some(&lab_observation("sodium", false))).await;
    assert_eq!(status, 200, "{outcome}");
    assert!(has_error_at(&outcome, "Observation.code"), "{outcome}");
    assert!(has_diagnostics(&outcome, LAB_VS), "{outcome}");
    assert!(has_diagnostics(&outcome, "lab-1:"), "{outcome}");
    // Claimed in meta.profile: the same.
    let (_, outcome) =
        post(&server, "Observation/$validate", Some(&lab_observation("sodium", true))).await;
    assert!(has_error_at(&outcome, "Observation.code"), "{outcome}");
    assert!(has_diagnostics(&outcome, "lab-1:"), "{outcome}");
    // A code of the value set: no error.
    let (_, outcome) = post(&server, &path, Some(&lab_observation("hba1c", false))).await;
    assert!(issues(&outcome).iter().all(|(s, _)| s != "error"), "{outcome}");
}

#[tokio::test]
async fn strict_projects_check_bindings_to_their_value_sets() {
    let server = TestServer::start().await;
    upload_lab_ig(&server).await;
    server.set_strict_profiles().await;
    let (status, outcome) =
        post(&server, "Observation", Some(&lab_observation("sodium", true))).await;
    assert_eq!(status, 400, "{outcome}");
    assert!(has_error_at(&outcome, "Observation.code"), "{outcome}");
    // A transaction entry too.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": lab_observation("sodium", true),
         "request": {"method": "POST", "url": "Observation"}}]});
    let (status, outcome) = post(&server, "", Some(&bundle)).await;
    assert_eq!(status, 400, "{outcome}");
    let (status, outcome) =
        post(&server, "Observation", Some(&lab_observation("glucose", true))).await;
    assert_eq!(status, 201, "{outcome}");

    // The compiled profile is cached; a change of its value set is in force at once.
    let (status, found) = server.get_json(&format!("ValueSet?url={LAB_VS}")).await;
    assert_eq!(status, 200, "{found}");
    let mut vs = found["entry"][0]["resource"].clone();
    vs["compose"]["include"][0]["concept"] = json!([{"code": "glucose"}, {"code": "sodium"}]);
    let id = vs["id"].as_str().unwrap().to_owned();
    let res = server.send_json(Method::PUT, &format!("ValueSet/{id}"), &vs).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (status, outcome) =
        post(&server, "Observation", Some(&lab_observation("sodium", true))).await;
    assert_eq!(status, 201, "the changed value set was not used: {outcome}");
    let (status, outcome) =
        post(&server, "Observation", Some(&lab_observation("hba1c", true))).await;
    assert_eq!(status, 400, "{outcome}");
    // So is a change of the profile: without its binding, any code will do.
    let (_, found) = server.get_json(&format!("StructureDefinition?url={LAB_PROFILE}")).await;
    let mut sd = found["entry"][0]["resource"].clone();
    sd["differential"]["element"] = json!([{"id": "Observation", "path": "Observation"}]);
    sd.as_object_mut().unwrap().remove("snapshot");
    let id = sd["id"].as_str().unwrap().to_owned();
    let res = server
        .send_json(Method::PUT, &format!("StructureDefinition/{id}"), &sd)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, outcome) =
        post(&server, "Observation", Some(&lab_observation("hba1c", true))).await;
    assert_eq!(status, 201, "the changed profile was not used: {outcome}");
}

#[tokio::test]
async fn profile_constraints_use_the_project_code_system_hierarchies() {
    let server = TestServer::start().await;
    let tests = "http://example.org/fhir/CodeSystem/tests";
    let profile = "http://example.org/fhir/StructureDefinition/kind-of-method";
    server
        .create(&json!({"resourceType": "CodeSystem", "url": tests, "status": "active",
            "content": "complete", "hierarchyMeaning": "is-a", "concept": [
                {"code": "chemistry", "concept": [{"code": "glucose"}, {"code": "sodium"}]},
                {"code": "hematology", "concept": [{"code": "cbc"}]}]}))
        .await;
    server
        .create(&json!({"resourceType": "StructureDefinition", "url": profile,
            "name": "KindOfMethod", "status": "active", "kind": "resource", "abstract": false,
            "type": "Observation", "derivation": "constraint",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
            "differential": {"element": [{"id": "Observation", "path": "Observation",
                "constraint": [{"key": "kind-1", "severity": "error",
                    "human": "The code is a kind of the method",
                    "expression": "code.coding.first().subsumedBy(method.coding.first())"}]}]}}))
        .await;
    let observation = |code: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": tests, "code": code}]},
            "method": {"coding": [{"system": tests, "code": "chemistry"}]}})
    };
    let path = format!("Observation/$validate?profile={profile}");
    let (status, outcome) = post(&server, &path, Some(&observation("glucose"))).await;
    assert_eq!(status, 200, "{outcome}");
    assert!(!has_diagnostics(&outcome, "kind-1"), "glucose is a kind of chemistry: {outcome}");
    let (_, outcome) = post(&server, &path, Some(&observation("cbc"))).await;
    assert!(has_diagnostics(&outcome, "kind-1"), "cbc is not a kind of chemistry: {outcome}");
}
