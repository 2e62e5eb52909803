//! The SDK against a real Kiln started in the test.

mod support;

use futures_util::TryStreamExt;
use kiln_client::{BackendKey, BulkStatus, Error, ExportLevel, KilnClient, has_errors};
use serde_json::{Value, json};
use support::{ADMIN_EMAIL, ADMIN_PASSWORD, Server};

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Sam"]}],
           "gender": "female", "birthDate": "1990-05-17"})
}

fn id_of(resource: &Value) -> String {
    resource["id"].as_str().expect("an id").to_owned()
}

fn version_of(resource: &Value) -> String {
    resource["meta"]["versionId"].as_str().expect("a versionId").to_owned()
}

#[tokio::test]
async fn login_issues_a_token_and_a_wrong_password_is_an_auth_error() {
    let server = Server::start().await;
    let client = KilnClient::new(&server.base).unwrap();
    assert!(client.access_token().await.is_none());
    let unauthenticated = client.read("Patient", "x").await.unwrap_err();
    assert_eq!(unauthenticated.status(), Some(401), "{unauthenticated}");
    assert!(unauthenticated.is_unauthorized());

    let tokens = client.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(client.access_token().await.as_deref(), tokens["access_token"].as_str());
    client.create(&patient("Login")).await.unwrap();

    let err = KilnClient::new(&server.base).unwrap().login(ADMIN_EMAIL, "wrong").await.unwrap_err();
    assert!(matches!(err, Error::Auth { status: Some(400..=401), .. }), "{err:?}");

    // A token given to the client is sent as is.
    let token = tokens["access_token"].as_str().unwrap();
    let other = KilnClient::new(&server.base).unwrap().with_token(token);
    other.create(&patient("Token")).await.unwrap();
}

#[tokio::test]
async fn the_token_is_refreshed_before_it_expires() {
    let server = Server::start().await;
    // A margin longer than any token's life: every call renews the token first.
    let client = KilnClient::new(&server.base)
        .unwrap()
        .with_refresh_margin(std::time::Duration::from_secs(365 * 24 * 3600));
    let tokens = client.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
    let first = client.access_token().await.unwrap();
    client.create(&patient("Refresh")).await.unwrap();
    let second = client.access_token().await.unwrap();
    assert_ne!(first, second, "the call renewed the token");
    // The rotated refresh token works again.
    client.create(&patient("Refresh")).await.unwrap();
    assert_ne!(client.access_token().await.unwrap(), second);

    // Without a refresh token, refresh() says so.
    let bare = KilnClient::new(&server.base).unwrap().with_token(&first);
    assert!(matches!(bare.refresh().await, Err(Error::Auth { .. })));
}

#[tokio::test]
async fn a_rejected_token_is_renewed_and_the_call_sent_again() {
    let server = Server::start().await;
    let client = KilnClient::new(&server.base).unwrap();
    let tokens = client.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    // A token the server does not know, said to be valid for an hour: the first answer is a
    // 401; the client renews through its refresh token and sends the create once more.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    client.restore_tokens("not-a-token", Some(refresh), Some(later)).await;
    let created = client.create(&patient("Renewed")).await.unwrap();
    assert_eq!(created["resourceType"], "Patient");
    let renewed = client.access_token().await.unwrap();
    assert_ne!(renewed, "not-a-token");
    let found = client.search_page("Patient", &[("family", "Renewed")]).await.unwrap();
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1), "created exactly once");

    // Without a way to renew, the 401 is the answer.
    let bare = KilnClient::new(&server.base).unwrap().with_token("not-a-token");
    let err = bare.read("Patient", &id_of(&created)).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
}

#[tokio::test]
async fn client_credentials_get_a_working_token() {
    let server = Server::start().await;
    let admin = server.admin().await;
    let tokens = admin.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let project = tokens["project"]["reference"].as_str().unwrap().trim_start_matches("Project/");
    // A ClientApplication with a secret, made through the admin API.
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{}admin/projects/{project}/client", server.base))
        .bearer_auth(admin.access_token().await.unwrap())
        .json(&json!({"name": "SDK test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let app: Value = res.json().await.unwrap();
    let (id, secret) = (app["id"].as_str().unwrap(), app["secret"].as_str().unwrap());

    let client = KilnClient::new(&server.base).unwrap();
    let tokens = client.client_credentials(id, secret).await.unwrap();
    assert_eq!(tokens["profile"]["reference"], format!("ClientApplication/{id}"));
    let created = client.create(&patient("Machine")).await.unwrap();
    assert_eq!(client.read("Patient", &id_of(&created)).await.unwrap()["id"], created["id"]);

    // With a margin longer than the token's life, each call first gets a new token.
    let renewing = KilnClient::new(&server.base)
        .unwrap()
        .with_refresh_margin(std::time::Duration::from_secs(365 * 24 * 3600));
    renewing.client_credentials(id, secret).await.unwrap();
    let first = renewing.access_token().await.unwrap();
    renewing.read("Patient", &id_of(&created)).await.unwrap();
    assert_ne!(renewing.access_token().await.unwrap(), first);

    let err = KilnClient::new(&server.base).unwrap().client_credentials(id, "wrong").await;
    assert!(matches!(err, Err(Error::Auth { status: Some(400..=401), .. })), "{err:?}");
}

#[tokio::test]
async fn crud_with_versions_and_if_match() {
    let server = Server::start().await;
    let client = server.admin().await;
    let created = client.create(&patient("Crud")).await.unwrap();
    let id = id_of(&created);
    let v1 = version_of(&created);
    assert_eq!(client.read("Patient", &id).await.unwrap()["name"][0]["family"], "Crud");

    let mut changed = created.clone();
    changed["gender"] = json!("male");
    let updated = client.update_if_match(&changed, &v1).await.unwrap();
    let v2 = version_of(&updated);
    assert_ne!(v1, v2);
    assert_eq!(updated["gender"], "male");

    // The first version is no longer current: 412 with an OperationOutcome.
    changed["gender"] = json!("other");
    let err = client.update_if_match(&changed, &v1).await.unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");
    let outcome = err.outcome().expect("an OperationOutcome");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert!(has_errors(outcome));
    let Error::Http { status: 412, body, .. } = &err else { panic!("{err:?}") };
    assert!(body.contains("OperationOutcome"));

    // A version that cannot be sent in a header is refused, not dropped.
    let err = client.update_if_match(&changed, "1\n").await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");

    // An unconditional update wins.
    let third = client.update(&changed).await.unwrap();
    assert_eq!(third["gender"], "other");

    assert_eq!(client.vread("Patient", &id, &v1).await.unwrap()["gender"], "female");
    assert_eq!(client.vread("Patient", &id, &v2).await.unwrap()["gender"], "male");
    let history = client.history("Patient", &id).await.unwrap();
    assert_eq!(history["type"], "history");
    assert_eq!(history["entry"].as_array().unwrap().len(), 3);

    client.delete("Patient", &id).await.unwrap();
    let err = client.read("Patient", &id).await.unwrap_err();
    assert!(err.is_gone() || err.is_not_found(), "{err:?}");

    let err = client.read("Patient", "does-not-exist").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.outcome().unwrap()["resourceType"], "OperationOutcome");
    assert!(matches!(client.read("Patient", "../x").await, Err(Error::Invalid(_))));
}

#[tokio::test]
async fn conditional_create_finds_the_existing_resource() {
    let server = Server::start().await;
    let client = server.admin().await;
    let mut resource = patient("Conditional");
    resource["identifier"] = json!([{"system": "urn:sdk", "value": "42"}]);
    let query = [("identifier", "urn:sdk|42")];
    let first = client.create_if_none_exist(&resource, &query).await.unwrap();
    assert!(first.created);
    let second = client.create_if_none_exist(&resource, &query).await.unwrap();
    assert!(!second.created);
    assert_eq!(second.resource["id"], first.resource["id"]);
}

#[tokio::test]
async fn both_patch_formats() {
    let server = Server::start().await;
    let client = server.admin().await;
    let id = id_of(&client.create(&patient("Patch")).await.unwrap());

    let patched = client
        .patch_json("Patient", &id, &json!([{"op": "replace", "path": "/gender", "value": "male"}]))
        .await
        .unwrap();
    assert_eq!(patched["gender"], "male");

    let parameters = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"},
        {"name": "path", "valueString": "Patient.birthDate"},
        {"name": "value", "valueDate": "2001-02-03"}]}]});
    let patched = client.patch_fhirpath("Patient", &id, &parameters).await.unwrap();
    assert_eq!(patched["birthDate"], "2001-02-03");
    assert_eq!(patched["gender"], "male");
    assert_eq!(client.read("Patient", &id).await.unwrap()["birthDate"], "2001-02-03");

    let err = client
        .patch_json("Patient", &id, &json!([{"op": "test", "path": "/gender", "value": "female"}]))
        .await
        .unwrap_err();
    assert!(err.outcome().is_some(), "{err:?}");
}

#[tokio::test]
async fn search_streams_every_page() {
    let server = Server::start().await;
    let client = server.admin().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(id_of(&client.create(&patient("Paged")).await.unwrap()));
    }
    client.create(&patient("Elsewhere")).await.unwrap();

    let query = [("family", "Paged"), ("_count", "2")];
    let first = client.search_page("Patient", &query).await.unwrap();
    assert_eq!(first["entry"].as_array().unwrap().len(), 2);
    let second = client.next_page(&first).await.unwrap().expect("a second page");
    let third = client.next_page(&second).await.unwrap().expect("a third page");
    assert_eq!(third["entry"].as_array().unwrap().len(), 1);
    assert!(client.next_page(&third).await.unwrap().is_none());

    let found: Vec<Value> = client.search("Patient", &query).try_collect().await.unwrap();
    let mut found: Vec<String> = found.iter().map(id_of).collect();
    found.sort();
    ids.sort();
    assert_eq!(found, ids, "three pages of 2, 2 and 1");

    let err =
        client.search("Patient", &[("birthdate", "not-a-date")]).try_collect::<Vec<_>>().await;
    assert!(matches!(&err, Err(Error::Http { status: 400, outcome: Some(_), .. })), "{err:?}");
}

#[tokio::test]
async fn transaction_and_batch_bundles() {
    let server = Server::start().await;
    let client = server.admin().await;
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
         "resource": patient("Transaction"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final",
                      "code": {"text": "weight"},
                      "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let response = client.execute_bundle(&transaction).await.unwrap();
    assert_eq!(response["type"], "transaction-response");
    let location = response["entry"][0]["response"]["location"].as_str().unwrap();
    let patient_id = location.split('/').nth(1).unwrap();
    let observations: Vec<Value> =
        client.search("Observation", &[("subject", location)]).try_collect().await.unwrap();
    assert_eq!(observations.len(), 1);
    assert_eq!(observations[0]["subject"]["reference"], format!("Patient/{patient_id}"));

    // A failing entry fails the whole transaction.
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("Rolled back"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": "Patient?no-such-param=1"}}]});
    let err = client.execute_bundle(&failing).await.unwrap_err();
    assert!(err.outcome().is_some(), "{err:?}");
    let none: Vec<Value> =
        client.search("Patient", &[("family", "Rolled back")]).try_collect().await.unwrap();
    assert!(none.is_empty());

    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{patient_id}")}},
        {"request": {"method": "GET", "url": "Patient/missing"}}]});
    let response = client.execute_bundle(&batch).await.unwrap();
    assert_eq!(response["type"], "batch-response");
    assert!(response["entry"][0]["response"]["status"].as_str().unwrap().starts_with("200"));
    assert!(response["entry"][1]["response"]["status"].as_str().unwrap().starts_with("404"));
}

#[tokio::test]
async fn validate_and_binary() {
    let server = Server::start().await;
    let client = server.admin().await;
    let good = client.validate(&patient("Valid")).await.unwrap();
    assert_eq!(good["resourceType"], "OperationOutcome");
    assert!(!has_errors(&good), "{good}");
    let bad =
        client.validate(&json!({"resourceType": "Patient", "gender": "sometimes"})).await.unwrap();
    assert!(has_errors(&bad), "{bad}");

    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let binary = client.upload_binary("application/pdf", bytes.clone()).await.unwrap();
    assert_eq!(binary["resourceType"], "Binary");
    let (content_type, back) = client.download_binary(&id_of(&binary)).await.unwrap();
    assert_eq!(content_type, "application/pdf");
    assert_eq!(back, bytes);
}

#[tokio::test]
async fn a_bulk_export_is_polled_and_its_files_streamed() {
    let server = Server::start().await;
    let client = server.admin().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(id_of(&client.create(&patient(&format!("Bulk{i}"))).await.unwrap()));
    }
    let job = client.export(ExportLevel::System, &[("_type", "Patient")]).await.unwrap();
    let manifest =
        client.wait_for_job(&job, |progress| assert!(!progress.is_empty())).await.unwrap();
    let output = manifest["output"].as_array().expect("a manifest with output");
    assert!(!output.is_empty(), "{manifest}");
    let mut exported = Vec::new();
    for file in output {
        assert_eq!(file["type"], "Patient");
        let url = file["url"].as_str().unwrap();
        let lines: Vec<Value> = client.download_ndjson(url).try_collect().await.unwrap();
        assert_eq!(lines.len() as u64, file["count"].as_u64().unwrap());
        exported.extend(lines.iter().map(id_of));
    }
    exported.sort();
    ids.sort();
    assert_eq!(exported, ids);
    // Once complete, the status says so at once.
    assert!(matches!(client.job_status(&job).await.unwrap(), BulkStatus::Complete(_)));
}

#[tokio::test]
async fn a_backend_service_signs_in_with_rs384_or_es384() {
    let server = Server::start().await;
    let admin = server.admin().await;
    let tokens = admin.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let project = tokens["project"]["reference"].as_str().unwrap().to_owned();
    let created = admin.create(&patient("Backend")).await.unwrap();
    // A ClientApplication with the test keys' JWKS inline, and its membership.
    let jwks = include_str!("keys/jwks.json");
    let app = admin
        .create(&json!({"resourceType": "ClientApplication", "name": "Nightly export",
            "extension": [{"url": "https://kiln.dev/fhir/StructureDefinition/client-jwks",
                           "valueString": jwks}]}))
        .await
        .unwrap();
    let id = id_of(&app);
    let reference = json!({"reference": format!("ClientApplication/{id}")});
    admin
        .create(&json!({"resourceType": "ProjectMembership", "project": {"reference": project},
                        "user": reference, "profile": reference}))
        .await
        .unwrap();

    let keys = [
        BackendKey::rs384_pem("sdk-rsa", include_bytes!("keys/rs384.pem")).unwrap(),
        BackendKey::es384_pem("sdk-ec", include_bytes!("keys/es384.pem")).unwrap(),
    ];
    for key in keys {
        // Each call renews the token first: a new assertion is signed each time.
        let client = KilnClient::new(&server.base)
            .unwrap()
            .with_refresh_margin(std::time::Duration::from_secs(365 * 24 * 3600));
        let tokens = client.backend_services(&id, key, "system/Patient.rs").await.unwrap();
        assert_eq!(tokens["token_type"], "Bearer", "{tokens}");
        let read = client.read("Patient", &id_of(&created)).await.unwrap();
        assert_eq!(read["id"], created["id"]);
        assert_ne!(client.access_token().await.as_deref(), tokens["access_token"].as_str());
    }

    // A key the client did not register is refused.
    let wrong = BackendKey::es384_pem("sdk-rsa", include_bytes!("keys/es384.pem")).unwrap();
    let err =
        KilnClient::new(&server.base).unwrap().backend_services(&id, wrong, "system/*.rs").await;
    assert!(matches!(err, Err(Error::Auth { status: Some(400..=401), .. })), "{err:?}");
    assert!(matches!(BackendKey::rs384_pem("k", b"not a key"), Err(Error::Invalid(_))));
}

#[tokio::test]
async fn conditional_update_and_delete_histories_and_search_by_post() {
    let server = Server::start().await;
    let client = server.admin().await;
    let system = "urn:example:mrn";
    let mut body = patient("Cond");
    body["identifier"] = json!([{"system": system, "value": "42"}]);
    let condition = [("identifier", "urn:example:mrn|42")];
    // No match: created; one match: updated in place.
    let created = client.update_where(&body, &condition).await.unwrap();
    body["gender"] = json!("male");
    let updated = client.update_where(&body, &condition).await.unwrap();
    assert_eq!(updated["id"], created["id"]);
    assert_eq!(version_of(&updated), "2");
    // Two matches: 412.
    let mut twin = patient("Cond");
    twin["identifier"] = json!([{"system": system, "value": "42"}]);
    client.create(&twin).await.unwrap();
    let err = client.update_where(&body, &condition).await.unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");
    // A condition is required.
    assert!(matches!(client.update_where(&body, &[]).await, Err(Error::Invalid(_))));
    assert!(matches!(client.delete_where("Patient", &[]).await, Err(Error::Invalid(_))));

    // History of the type and of the system include both versions.
    let history = client.type_history("Patient", &[("_count", "50")]).await.unwrap();
    assert_eq!(history["type"], "history");
    let versions = |bundle: &Value| {
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        entries.iter().filter(|e| e["resource"]["id"] == created["id"]).count()
    };
    assert_eq!(versions(&history), 2, "{history}");
    let all = client.system_history(&[("_count", "50")]).await.unwrap();
    assert_eq!(versions(&all), 2);

    // _search by POST finds what GET finds.
    let by_post = client.search_post("Patient", &[("identifier", "urn:example:mrn|42")]).await;
    let by_post = by_post.unwrap();
    assert_eq!(by_post["type"], "searchset");
    assert_eq!(by_post["entry"].as_array().map(Vec::len), Some(2), "{by_post}");

    // Kiln deletes at most one resource per conditional delete: two matches are a 412.
    let err = client.delete_where("Patient", &condition).await.unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");
    let twin_id = by_post["entry"].as_array().unwrap().iter().map(|e| id_of(&e["resource"]));
    let twin_id = twin_id.into_iter().find(|id| *id != id_of(&created)).unwrap();
    client.delete("Patient", &twin_id).await.unwrap();
    client.delete_where("Patient", &condition).await.unwrap();
    let after = client.search_page("Patient", &[("identifier", "urn:example:mrn|42")]).await;
    assert_eq!(after.unwrap()["entry"].as_array().map_or(0, Vec::len), 0);
}

#[tokio::test]
async fn an_import_loads_uploaded_ndjson_and_reports_refused_lines() {
    let server = Server::start().await;
    let client = server.admin().await;
    let mut ndjson = String::new();
    for i in 0..4 {
        ndjson.push_str(&patient(&format!("Imported{i}")).to_string());
        ndjson.push('\n');
    }
    ndjson.push_str("{\"resourceType\": \"Patient\", \"gender\": \"robot\"}\n");
    let binary = client.upload_binary("application/fhir+ndjson", ndjson.into_bytes()).await;
    let url = format!("{}Binary/{}", client.fhir_base(), id_of(&binary.unwrap()));
    let job = client.import(&[&url]).await.unwrap();
    let manifest = client.wait_for_job(&job, |_| {}).await.unwrap();
    let written: u64 =
        manifest["output"].as_array().unwrap().iter().filter_map(|o| o["count"].as_u64()).sum();
    assert_eq!(written, 4, "{manifest}");
    let errors = manifest["error"].as_array().expect("an error file");
    let outcomes: Vec<Value> =
        client.download_ndjson(errors[0]["url"].as_str().unwrap()).try_collect().await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0]["resourceType"], "OperationOutcome");
    let found: Vec<Value> =
        client.search("Patient", &[("family", "Imported")]).try_collect().await.unwrap();
    assert_eq!(found.len(), 4);
    // An input the server cannot fetch is refused at kick-off or reported by the job.
    let bad = client.import(&["http://elsewhere.invalid/x.ndjson"]).await;
    match bad {
        Err(e) => assert_eq!(e.status().map(|s| s / 100), Some(4), "{e}"),
        Ok(job) => assert!(client.wait_for_job(&job, |_| {}).await.is_err()),
    }
}
