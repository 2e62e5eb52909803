//! Project administration (`/admin/projects/…`), invitations and their password flows, client
//! applications with `client_credentials`, HTTP Basic and `$rotate-secret`.

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, assert_outcome, json_of, patient};

/// The seeded admin's project id (a super-admin project: every member is a super admin).
async fn super_project(server: &TestServer) -> String {
    let tokens = server.login_full().await;
    tokens["project"]["reference"].as_str().unwrap().trim_start_matches("Project/").to_owned()
}

/// An ordinary project, whose first admin the super admin invites.
pub(crate) struct Clinic {
    pub project: String,
    /// The clinic admin's access token.
    pub token: String,
}

pub(crate) async fn clinic(server: &TestServer) -> Clinic {
    let project = server.engine.create_project("Clinic", None).await.unwrap();
    let project = project["id"].as_str().unwrap().to_owned();
    let (status, admin) = invite(
        server,
        &server.token,
        &project,
        json!({"firstName": "Carl", "lastName": "Chief", "email": "carl@example.com",
               "password": "carl-password", "admin": true}),
    )
    .await;
    assert_eq!(status, 201, "{admin}");
    let tokens =
        sign_in(server, "carl@example.com", "carl-password", Some(&project)).await.unwrap();
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    Clinic { project, token }
}

pub(crate) async fn admin_post(
    server: &TestServer,
    token: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let res =
        server.client.post(server.url(path)).bearer_auth(token).json(body).send().await.unwrap();
    json_of(res).await
}

async fn admin_get(server: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let res = server.client.get(server.url(path)).bearer_auth(token).send().await.unwrap();
    json_of(res).await
}

pub(crate) async fn invite(
    server: &TestServer,
    token: &str,
    project: &str,
    body: Value,
) -> (u16, Value) {
    admin_post(server, token, &format!("admin/projects/{project}/invite"), &body).await
}

/// `/auth/login` (optionally into a project) then `/oauth2/token`: the token response, or the
/// failed login's status and body.
pub(crate) async fn sign_in(
    server: &TestServer,
    email: &str,
    password: &str,
    project: Option<&str>,
) -> Result<Value, (u16, Value)> {
    let mut body = json!({"email": email, "password": password});
    if let Some(project) = project {
        body["projectId"] = json!(project);
    }
    let res = server.client.post(server.url("auth/login")).json(&body).send().await.unwrap();
    let (status, login) = json_of(res).await;
    if status != 200 {
        return Err((status, login));
    }
    let code = login["code"].as_str().expect("one membership: a code").to_owned();
    let res = server
        .client
        .post(server.url("oauth2/token"))
        .form(&[("grant_type", "authorization_code"), ("code", &code)])
        .send()
        .await
        .unwrap();
    let (status, tokens) = json_of(res).await;
    assert_eq!(status, 200, "{tokens}");
    Ok(tokens)
}

async fn token_of(server: &TestServer, email: &str, password: &str) -> String {
    let tokens = sign_in(server, email, password, None).await.expect("sign-in works");
    tokens["access_token"].as_str().unwrap().to_owned()
}

async fn me(server: &TestServer, token: &str) -> Value {
    let (status, me) = admin_get(server, token, "auth/me").await;
    assert_eq!(status, 200, "{me}");
    me
}

/// A FHIR request with a bearer token.
fn fhir_as(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
) -> reqwest::RequestBuilder {
    server.client.request(method, server.fhir_url(path)).bearer_auth(token)
}

async fn fhir_get(server: &TestServer, token: &str, path: &str) -> (u16, Value) {
    json_of(fhir_as(server, token, Method::GET, path).send().await.unwrap()).await
}

fn assert_forbidden(status: u16, body: &Value) {
    assert_eq!(status, 403, "{body}");
    let issues = assert_outcome(body);
    assert_eq!(issues[0]["code"], "forbidden");
}

#[tokio::test]
async fn an_invited_practitioner_signs_in_but_cannot_administer() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let project = c.project.clone();
    let admin_me = me(&server, &c.token).await;
    let (status, membership) = invite(
        &server,
        &c.token,
        &project,
        json!({"resourceType": "Practitioner", "firstName": "Ada", "lastName": "Lovelace",
               "email": "Ada@Example.com", "password": "analytical-engine"}),
    )
    .await;
    assert_eq!(status, 201, "{membership}");
    assert_eq!(membership["resourceType"], "ProjectMembership");
    assert_eq!(membership["project"]["reference"], format!("Project/{project}"));
    assert_eq!(membership["user"]["display"], "ada@example.com");
    assert_eq!(
        membership["invitedBy"]["reference"],
        format!("User/{}", admin_me["user"]["id"].as_str().unwrap())
    );
    assert!(membership.get("admin").is_none(), "not an admin: {membership}");
    let profile_ref = membership["profile"]["reference"].as_str().unwrap().to_owned();
    assert!(profile_ref.starts_with("Practitioner/"), "{profile_ref}");
    // The profile resource carries the name and email.
    let (status, profile) = fhir_get(&server, &c.token, &profile_ref).await;
    assert_eq!(status, 200);
    assert_eq!(profile["name"][0]["given"][0], "Ada");
    assert_eq!(profile["name"][0]["family"], "Lovelace");
    assert_eq!(profile["telecom"][0]["value"], "ada@example.com");

    // Ada signs in with the password the admin set; /auth/me describes her.
    let tokens = sign_in(&server, "ada@example.com", "analytical-engine", None).await.unwrap();
    assert_eq!(tokens["profile"]["reference"], profile_ref);
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let ada = me(&server, &token).await;
    assert_eq!(ada["user"]["email"], "ada@example.com");
    assert_eq!(ada["user"]["firstName"], "Ada");
    assert!(ada["user"].get("passwordHash").is_none());
    assert_eq!(ada["membership"]["id"], membership["id"]);
    assert_eq!(ada["profile"]["id"], profile["id"]);
    // She works in the project…
    let res = server
        .client
        .post(server.fhir_url("Patient"))
        .bearer_auth(&token)
        .json(&patient("Babbage"))
        .header("content-type", "application/fhir+json")
        .header("x-medplum", "extended")
        .send()
        .await
        .unwrap();
    let (status, created) = json_of(res).await;
    assert_eq!(status, 201);
    assert_eq!(created["meta"]["author"]["reference"], profile_ref);
    // …but administers nothing.
    let (status, body) = admin_get(&server, &token, &format!("admin/projects/{project}")).await;
    assert_forbidden(status, &body);
    let (status, body) = invite(
        &server,
        &token,
        &project,
        json!({"firstName": "Eve", "lastName": "Intruder", "email": "eve@example.com"}),
    )
    .await;
    assert_forbidden(status, &body);
    let (status, body) = admin_post(
        &server,
        &token,
        &format!("admin/projects/{project}/client"),
        &json!({"name": "sneaky"}),
    )
    .await;
    assert_forbidden(status, &body);
    let member_path =
        format!("admin/projects/{project}/members/{}", membership["id"].as_str().unwrap());
    let (status, body) = admin_get(&server, &token, &member_path).await;
    assert_forbidden(status, &body);
    // No token at all: 401.
    let res =
        server.client.get(server.url(&format!("admin/projects/{project}"))).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 401);
    assert_outcome(&body);
}

#[tokio::test]
async fn an_invited_admin_invites_and_duplicates_conflict() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let project = c.project.clone();
    let (status, bob) = invite(
        &server,
        &c.token,
        &project,
        json!({"firstName": "Bob", "lastName": "Boss", "email": "bob@example.com",
               "password": "bob-password", "admin": true}),
    )
    .await;
    assert_eq!(status, 201, "{bob}");
    assert_eq!(bob["admin"], true);
    let bob_token = token_of(&server, "bob@example.com", "bob-password").await;
    let bob_me = me(&server, &bob_token).await;
    let (status, carol) = invite(
        &server,
        &bob_token,
        &project,
        json!({"firstName": "Carol", "lastName": "Clerk", "email": "carol@example.com",
               "membership": {"userName": "carol", "externalId": "ext-7"}}),
    )
    .await;
    assert_eq!(status, 201, "{carol}");
    assert_eq!(
        carol["invitedBy"]["reference"],
        format!("User/{}", bob_me["user"]["id"].as_str().unwrap())
    );
    assert_eq!(carol["userName"], "carol");
    assert_eq!(carol["externalId"], "ext-7");
    // The same email again: 409, and nothing changed.
    let (status, body) = invite(
        &server,
        &bob_token,
        &project,
        json!({"firstName": "Carol", "lastName": "Clerk", "email": "CAROL@example.com"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(assert_outcome(&body)[0]["code"], "conflict");
    // With upsert the membership is updated in place.
    let (status, upserted) = invite(
        &server,
        &bob_token,
        &project,
        json!({"firstName": "Carol", "lastName": "Clerk", "email": "carol@example.com",
               "upsert": true, "admin": true}),
    )
    .await;
    assert_eq!(status, 201, "{upserted}");
    assert_eq!(upserted["id"], carol["id"]);
    assert_eq!(upserted["admin"], true);
    assert_eq!(upserted["userName"], "carol", "the rest of the membership is kept");
    assert_eq!(upserted["meta"]["versionId"], "2");
    // A project admin is not a super admin: another project id is forbidden.
    let other = "00000000-0000-4000-8000-000000000000";
    let (status, body) = admin_get(&server, &bob_token, &format!("admin/projects/{other}")).await;
    assert_forbidden(status, &body);
    // …and so is the super admin's project.
    let (status, body) =
        admin_get(&server, &bob_token, &format!("admin/projects/{}", super_project(&server).await))
            .await;
    assert_forbidden(status, &body);
    // The super admin may administer any project, and gets a 404 for one that does not exist.
    let (status, overview) =
        admin_get(&server, &server.token, &format!("admin/projects/{project}")).await;
    assert_eq!(status, 200);
    assert_eq!(overview["members"].as_array().unwrap().len(), 3, "{overview}");
    let (status, body) =
        admin_get(&server, &server.token, &format!("admin/projects/{other}")).await;
    assert_eq!(status, 404, "{body}");
    // Bad invitations are 400s.
    for bad in [
        json!({"firstName": "X", "lastName": "Y"}),
        json!({"firstName": "X", "lastName": "Y", "email": "x@example.com", "resourceType": "Device"}),
        json!({"firstName": "X", "lastName": "Y", "email": "x@example.com", "password": "short"}),
        json!({"lastName": "Y", "email": "x@example.com"}),
        json!({"firstName": "X", "lastName": "Y", "email": "x@example.com",
               "accessPolicy": {"reference": "AccessPolicy/does-not-exist"}}),
    ] {
        let (status, body) = invite(&server, &bob_token, &project, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_outcome(&body);
    }
}

#[tokio::test]
async fn an_invitation_with_an_access_policy_records_it() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let project = c.project.clone();
    let res = fhir_as(&server, &c.token, Method::POST, "AccessPolicy")
        .json(&json!({"resourceType": "AccessPolicy", "name": "Read patients",
                      "resource": [{"resourceType": "Patient", "readonly": true}]}))
        .send()
        .await
        .unwrap();
    let (status, policy) = json_of(res).await;
    assert_eq!(status, 201, "{policy}");
    let policy_ref =
        json!({"reference": format!("AccessPolicy/{}", policy["id"].as_str().unwrap())});
    let (status, membership) = invite(
        &server,
        &c.token,
        &project,
        json!({"firstName": "Pat", "lastName": "Policy", "email": "pat@example.com",
               "accessPolicy": policy_ref,
               "membership": {"access": [{"policy": policy_ref,
                   "parameter": [{"name": "org", "valueString": "x"}]}]}}),
    )
    .await;
    assert_eq!(status, 201, "{membership}");
    assert_eq!(membership["accessPolicy"], policy_ref);
    assert_eq!(membership["access"][0]["policy"], policy_ref);
    assert_eq!(membership["access"][0]["parameter"][0]["valueString"], "x");
}

/// The set-password link in the outbox for `email`, as `(id, secret)`.
fn mailed_link(server: &TestServer, email: &str) -> (String, String) {
    let mails = std::fs::read_to_string(server.dir.join("outbox/mail.jsonl")).unwrap();
    let mail: Value = mails
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .rfind(|mail| mail["to"] == email)
        .expect("a mail to the invitee");
    let link = mail["link"].as_str().unwrap();
    assert!(mail["text"].as_str().unwrap().contains(link));
    let rest = link.strip_prefix(&server.url("setpassword/")).expect("a setpassword link");
    let (id, secret) = rest.split_once('/').unwrap();
    (id.to_owned(), secret.to_owned())
}

/// A [`MailSender`](kiln_engine::mail::MailSender) that keeps what it is given.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<kiln_engine::mail::Mail>>);

#[async_trait::async_trait]
impl kiln_engine::mail::MailSender for Recorder {
    async fn send(&self, mail: &kiln_engine::mail::Mail) -> Result<(), String> {
        self.0.lock().unwrap().push(mail.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_mailed_link_sets_the_password_once() {
    let server = TestServer::start().await;
    let sent = std::sync::Arc::new(Recorder::default());
    server.engine.set_mail_sender(sent.clone());
    let c = clinic(&server).await;
    let project = c.project.clone();
    let (status, _) = invite(
        &server,
        &c.token,
        &project,
        json!({"firstName": "Dave", "lastName": "Mail", "email": "dave@example.com",
               "sendEmail": true}),
    )
    .await;
    assert_eq!(status, 201);
    // No password yet: sign-in fails.
    let (status, _) =
        sign_in(&server, "dave@example.com", "dave-password", None).await.unwrap_err();
    assert_eq!(status, 400);
    let (id, secret) = mailed_link(&server, "dave@example.com");
    // The configured sender (SMTP in `kiln serve`) delivered the same mail.
    let delivered = sent.0.lock().unwrap().clone();
    let mail = delivered.iter().find(|m| m.to == "dave@example.com").expect("delivered");
    assert!(mail.text.contains(&format!("setpassword/{id}/{secret}")), "{mail:?}");
    let set = |secret: String, password: &str| {
        let body = json!({"id": id, "secret": secret, "password": password});
        let request = server.client.post(server.url("auth/setpassword")).json(&body);
        async move { json_of(request.send().await.unwrap()).await }
    };
    let (status, body) = set("wrong-secret".into(), "dave-password").await;
    assert_eq!(status, 400, "{body}");
    assert_outcome(&body);
    let (status, body) = set(secret.clone(), "short").await;
    assert_eq!(status, 400, "a password of 5 bytes: {body}");
    let (status, body) = set(secret.clone(), &"x".repeat(73)).await;
    assert_eq!(status, 400, "a password of 73 bytes: {body}");
    let (status, body) = set(secret.clone(), "dave-password").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let tokens = sign_in(&server, "dave@example.com", "dave-password", None).await.unwrap();
    assert!(tokens["access_token"].is_string());
    // The link is spent.
    let (status, body) = set(secret, "another-password").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) =
        sign_in(&server, "dave@example.com", "another-password", None).await.unwrap_err();
    assert_eq!(status, 400);
    // The stored request holds a hash of the secret, never the secret.
    let stored = server
        .store
        .read(&kiln_store::ProjectId::system(), "UserSecurityRequest", &id)
        .await
        .unwrap();
    let request: Value = serde_json::from_slice(&stored.body).unwrap();
    assert_eq!(request["type"], "invite");
    assert_eq!(request["used"], true);
    assert_eq!(request["secret"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn a_user_changes_their_password() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let project = c.project.clone();
    let (status, _) = invite(
        &server,
        &c.token,
        &project,
        json!({"firstName": "Fay", "lastName": "Change", "email": "fay@example.com",
               "password": "first-password"}),
    )
    .await;
    assert_eq!(status, 201);
    let token = token_of(&server, "fay@example.com", "first-password").await;
    let change = |old: &str, new: &str| {
        let body = json!({"oldPassword": old, "newPassword": new});
        let request =
            server.client.post(server.url("auth/changepassword")).bearer_auth(&token).json(&body);
        async move { json_of(request.send().await.unwrap()).await }
    };
    let (status, body) = change("wrong-password", "second-password").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(assert_outcome(&body)[0]["expression"][0], "oldPassword");
    let (status, _) = change("first-password", "2short").await;
    assert_eq!(status, 400);
    let (status, body) = change("first-password", "second-password").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        sign_in(&server, "fay@example.com", "first-password", None).await.unwrap_err();
    assert_eq!(status, 400);
    let tokens = sign_in(&server, "fay@example.com", "second-password", None).await.unwrap();
    assert!(tokens["access_token"].is_string());
    // Unauthenticated: 401.
    let res = server
        .client
        .post(server.url("auth/changepassword"))
        .json(&json!({"oldPassword": "second-password", "newPassword": "third-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

pub(crate) async fn create_client(server: &TestServer, token: &str, project: &str) -> Value {
    let (status, client) = admin_post(
        server,
        token,
        &format!("admin/projects/{project}/client"),
        &json!({"name": "Integration", "description": "Nightly sync",
                "redirectUri": "https://app.example.com/callback"}),
    )
    .await;
    assert_eq!(status, 201, "{client}");
    client
}

async fn client_token(
    server: &TestServer,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut request = server.client.post(server.url("oauth2/token")).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    json_of(request.send().await.unwrap()).await
}

pub(crate) async fn by_post(server: &TestServer, id: &str, secret: &str) -> (u16, Value) {
    client_token(
        server,
        &[("grant_type", "client_credentials"), ("client_id", id), ("client_secret", secret)],
        None,
    )
    .await
}

async fn by_basic(server: &TestServer, id: &str, secret: &str) -> (u16, Value) {
    client_token(server, &[("grant_type", "client_credentials")], Some((id, secret))).await
}

/// GET a FHIR path with HTTP Basic client credentials.
async fn basic_get(server: &TestServer, id: &str, secret: &str, path: &str) -> (u16, Value) {
    let res =
        server.client.get(server.fhir_url(path)).basic_auth(id, Some(secret)).send().await.unwrap();
    json_of(res).await
}

#[tokio::test]
async fn a_client_gets_tokens_with_its_secret() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let project = c.project.clone();
    let client = create_client(&server, &c.token, &project).await;
    assert_eq!(client["resourceType"], "ClientApplication");
    assert_eq!(client["name"], "Integration");
    assert_eq!(client["description"], "Nightly sync");
    assert_eq!(client["redirectUris"], json!(["https://app.example.com/callback"]));
    let id = client["id"].as_str().unwrap().to_owned();
    let secret = client["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 43, "32 random bytes, base64url");
    let client_ref = format!("ClientApplication/{id}");

    // client_secret_post
    let (status, tokens) = by_post(&server, &id, &secret).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens.get("refresh_token").is_none(), "no refresh token for a client: {tokens}");
    assert_eq!(tokens["profile"]["reference"], client_ref);
    assert_eq!(tokens["project"]["reference"], format!("Project/{project}"));
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let payload = access.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["client_id"], id.as_str(), "Medplum's SDK checks client_id: {claims}");
    assert_eq!(claims["sub"], id.as_str());
    assert!(claims["login_id"].is_string());
    // The token reads and writes FHIR as the client.
    let res = server
        .client
        .post(server.fhir_url("Patient"))
        .bearer_auth(&access)
        .header("content-type", "application/fhir+json")
        .header("x-medplum", "extended")
        .json(&patient("Client"))
        .send()
        .await
        .unwrap();
    let (status, created) = json_of(res).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["meta"]["author"]["reference"], client_ref);
    let patient_path = format!("Patient/{}", created["id"].as_str().unwrap());
    let res = server
        .client
        .get(server.fhir_url(&patient_path))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    let (status, read) = json_of(res).await;
    assert_eq!(status, 200);
    assert_eq!(read["name"][0]["family"], "Client");
    // /auth/me names the client, without its secret.
    let who = me(&server, &access).await;
    assert_eq!(who["profile"]["resourceType"], "ClientApplication");
    assert_eq!(who["profile"]["id"], id.as_str());
    assert!(who["profile"].get("secret").is_none(), "{who}");
    assert!(who["user"].get("secret").is_none(), "{who}");
    assert_eq!(who["membership"]["user"]["reference"], client_ref);

    // client_secret_basic, including RFC 6749 form-encoding of the parts.
    let (status, tokens) = by_basic(&server, &id, &secret).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["profile"]["reference"], client_ref);

    // Wrong or unknown credentials: 401 invalid_client.
    for (status, body) in [
        by_post(&server, &id, "wrong").await,
        by_basic(&server, &id, "wrong").await,
        by_post(&server, "00000000-0000-4000-8000-000000000000", &secret).await,
        by_post(&server, "not an id", &secret).await,
        client_token(&server, &[("grant_type", "client_credentials"), ("client_id", &id)], None)
            .await,
    ] {
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "invalid_client");
    }

    // HTTP Basic straight on the FHIR API.
    let (status, read) = basic_get(&server, &id, &secret, &patient_path).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["id"], created["id"]);
    let (status, body) = basic_get(&server, &id, "wrong-secret", &patient_path).await;
    assert_eq!(status, 401, "{body}");
    assert_outcome(&body);
    let res = server
        .client
        .get(server.fhir_url(&patient_path))
        .header("authorization", "Basic !!!not-base64")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // A client switched off is refused.
    let mut off = client.clone();
    off["status"] = json!("off");
    let res = fhir_as(&server, &c.token, Method::PUT, &client_ref).json(&off).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (status, body) = by_post(&server, &id, &secret).await;
    assert_eq!(status, 401, "{body}");

    // The overview lists the client's membership.
    let (status, overview) =
        admin_get(&server, &c.token, &format!("admin/projects/{project}")).await;
    assert_eq!(status, 200);
    let members = overview["members"].as_array().unwrap();
    assert!(members.iter().any(|m| m["profile"]["reference"] == client_ref), "{overview}");
}

#[tokio::test]
async fn a_rotated_secret_keeps_working_until_the_next_rotation() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let project = c.project.clone();
    let client = create_client(&server, &c.token, &project).await;
    let id = client["id"].as_str().unwrap().to_owned();
    let first = client["secret"].as_str().unwrap().to_owned();
    // Basic credentials verified before the rotation (and cached) must see it.
    assert_eq!(basic_get(&server, &id, &first, "Patient").await.0, 200);
    let rotate = || async {
        let res = fhir_as(
            &server,
            &c.token,
            Method::POST,
            &format!("ClientApplication/{id}/$rotate-secret"),
        )
        .send()
        .await
        .unwrap();
        json_of(res).await
    };
    let (status, rotated) = rotate().await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert!(rotated.get("retiringSecret").is_none(), "shown once, never again: {rotated}");
    // Only hashes are stored, and no one reads them back, not even an admin.
    let stored = server
        .engine
        .read(
            &kiln_engine::RequestContext::new(kiln_store::ProjectId::new(project.clone())),
            "ClientApplication",
            &id,
        )
        .await
        .unwrap();
    let stored: Value = serde_json::from_slice(&stored.body).unwrap();
    assert_eq!(
        stored["secret"].as_str().unwrap(),
        format!("sha256:{}", kiln_auth::hash_secret(&second))
    );
    assert!(stored["retiringSecret"].as_str().unwrap().starts_with("sha256:"));
    let (status, read) = fhir_get(&server, &c.token, &format!("ClientApplication/{id}")).await;
    assert_eq!(status, 200);
    assert!(read.get("secret").is_none() && read.get("retiringSecret").is_none(), "{read}");
    // An admin's PUT of what they read keeps the secrets.
    let res = fhir_as(&server, &c.token, Method::PUT, &format!("ClientApplication/{id}"))
        .json(&json!({"resourceType": "ClientApplication", "id": id, "name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(by_post(&server, &id, &second).await.0, 200);
    for secret in [&first, &second] {
        assert_eq!(by_post(&server, &id, secret).await.0, 200);
        assert_eq!(by_basic(&server, &id, secret).await.0, 200);
        assert_eq!(basic_get(&server, &id, secret, "Patient").await.0, 200);
    }
    let (status, rotated) = rotate().await;
    assert_eq!(status, 200);
    let third = rotated["secret"].as_str().unwrap().to_owned();
    assert_eq!(by_post(&server, &id, &first).await.0, 401, "the first secret is retired");
    assert_eq!(basic_get(&server, &id, &first, "Patient").await.0, 401);
    assert_eq!(by_post(&server, &id, &second).await.0, 200);
    assert_eq!(by_post(&server, &id, &third).await.0, 200);
    // Only a project admin rotates.
    let (status, _) = invite(
        &server,
        &c.token,
        &project,
        json!({"firstName": "Nora", "lastName": "Normal", "email": "nora@example.com",
               "password": "nora-password"}),
    )
    .await;
    assert_eq!(status, 201);
    let nora = token_of(&server, "nora@example.com", "nora-password").await;
    let res = server
        .client
        .post(server.fhir_url(&format!("ClientApplication/{id}/$rotate-secret")))
        .bearer_auth(&nora)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_forbidden(status, &body);
    assert_eq!(by_post(&server, &id, &third).await.0, 200, "nothing rotated");
    // An unknown client: 404.
    let res = fhir_as(
        &server,
        &c.token,
        Method::POST,
        "ClientApplication/00000000-0000-4000-8000-000000000000/$rotate-secret",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn members_are_read_updated_and_removed() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let project = c.project.clone();
    let admin_me = me(&server, &c.token).await;
    let (status, erin) = invite(
        &server,
        &c.token,
        &project,
        json!({"firstName": "Erin", "lastName": "Member", "email": "erin@example.com",
               "password": "erin-password"}),
    )
    .await;
    assert_eq!(status, 201);
    let erin_id = erin["id"].as_str().unwrap().to_owned();
    let path = format!("admin/projects/{project}/members/{erin_id}");
    let erin_token = token_of(&server, "erin@example.com", "erin-password").await;

    // The overview: the project and both members.
    let (status, overview) =
        admin_get(&server, &c.token, &format!("admin/projects/{project}")).await;
    assert_eq!(status, 200, "{overview}");
    assert_eq!(overview["project"]["id"], project.as_str());
    assert_eq!(overview["project"]["name"], "Clinic");
    let members = overview["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{overview}");
    let listed = members.iter().find(|m| m["id"] == erin["id"]).expect("erin is listed");
    assert_eq!(listed["profile"], erin["profile"]);
    assert_eq!(listed["user"], erin["user"]);
    let admin_member = members.iter().find(|m| m["id"] == admin_me["membership"]["id"]).unwrap();
    assert_eq!(admin_member["admin"], true);

    // GET
    let (status, read) = admin_get(&server, &c.token, &path).await;
    assert_eq!(status, 200);
    assert_eq!(read, erin);

    // POST: made an admin; she can now use the admin routes at once.
    let (status, body) =
        admin_get(&server, &erin_token, &format!("admin/projects/{project}")).await;
    assert_forbidden(status, &body);
    let mut update = read.clone();
    update["admin"] = json!(true);
    update["userName"] = json!("erin");
    let (status, updated) = admin_post(&server, &c.token, &path, &update).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["admin"], true);
    assert_eq!(updated["userName"], "erin");
    assert_eq!(updated["meta"]["versionId"], "2");
    let (status, _) = admin_get(&server, &erin_token, &format!("admin/projects/{project}")).await;
    assert_eq!(status, 200, "the admin flag applies at once");
    // project and user cannot change; the id must match.
    let mut moved = updated.clone();
    moved["user"] = admin_me["membership"]["user"].clone();
    let (status, body) = admin_post(&server, &c.token, &path, &moved).await;
    assert_eq!(status, 400, "{body}");
    let mut moved = updated.clone();
    moved["project"] = json!({"reference": "Project/elsewhere"});
    let (status, _) = admin_post(&server, &c.token, &path, &moved).await;
    assert_eq!(status, 400);
    let (status, _) =
        admin_post(&server, &c.token, &path, &json!({"resourceType": "Patient"})).await;
    assert_eq!(status, 400);

    // DELETE: not your own membership.
    let own = format!(
        "admin/projects/{project}/members/{}",
        admin_me["membership"]["id"].as_str().unwrap()
    );
    let res = server.client.delete(server.url(&own)).bearer_auth(&c.token).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("own membership"));
    let res = server.client.delete(server.url(&path)).bearer_auth(&c.token).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let (status, body) = admin_get(&server, &c.token, &path).await;
    assert_eq!(status, 404, "{body}");
    // Her tokens stop working with the membership, and she cannot sign in to the project.
    let res = server
        .client
        .get(server.fhir_url("Patient"))
        .bearer_auth(&erin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let (status, _) =
        sign_in(&server, "erin@example.com", "erin-password", None).await.unwrap_err();
    assert_eq!(status, 403);
    // Invited again, she reuses her User (the old password) with a new membership.
    let (status, again) = invite(
        &server,
        &c.token,
        &project,
        json!({"firstName": "Erin", "lastName": "Member", "email": "erin@example.com",
               "password": "ignored-for-existing-users", "sendEmail": true}),
    )
    .await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["id"], erin["id"]);
    assert_eq!(again["user"], erin["user"]);
    assert!(sign_in(&server, "erin@example.com", "erin-password", None).await.is_ok());
    // She has a password: the mail tells her so and carries no set-password link.
    let mails = std::fs::read_to_string(server.dir.join("outbox/mail.jsonl")).unwrap();
    let mail: Value = serde_json::from_str(mails.lines().last().unwrap()).unwrap();
    assert_eq!(mail["to"], "erin@example.com");
    assert!(mail["link"].is_null(), "{mail}");
    assert!(!mail["text"].as_str().unwrap().contains("setpassword"));
}

#[tokio::test]
async fn a_project_scoped_patient_signs_in_with_the_project_id() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let project = c.project.clone();
    let (status, membership) = invite(
        &server,
        &c.token,
        &project,
        json!({"resourceType": "Patient", "firstName": "Paula", "lastName": "Patient",
               "email": "paula@example.com", "password": "paula-password"}),
    )
    .await;
    assert_eq!(status, 201, "{membership}");
    let profile_ref = membership["profile"]["reference"].as_str().unwrap().to_owned();
    assert!(profile_ref.starts_with("Patient/"));
    // A project's user is not a server-wide user.
    let (status, _) =
        sign_in(&server, "paula@example.com", "paula-password", None).await.unwrap_err();
    assert_eq!(status, 400);
    let tokens =
        sign_in(&server, "paula@example.com", "paula-password", Some(&project)).await.unwrap();
    assert_eq!(tokens["profile"]["reference"], profile_ref);
    let paula = me(&server, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(paula["user"]["project"]["reference"], format!("Project/{project}"));
    assert_eq!(paula["profile"]["resourceType"], "Patient");
    assert_eq!(paula["profile"]["name"][0]["family"], "Patient");
    // The same email may also be a server-wide user, a separate account.
    let (status, practitioner) = invite(
        &server,
        &c.token,
        &project,
        json!({"resourceType": "Practitioner", "firstName": "Paula", "lastName": "Doctor",
               "email": "paula@example.com", "password": "server-password"}),
    )
    .await;
    assert_eq!(status, 201, "{practitioner}");
    assert_ne!(practitioner["user"]["reference"], membership["user"]["reference"]);
    let tokens = sign_in(&server, "paula@example.com", "server-password", None).await.unwrap();
    assert_eq!(tokens["profile"]["reference"], practitioner["profile"]["reference"]);
    // With the project id, the project's own user comes first.
    let tokens =
        sign_in(&server, "paula@example.com", "paula-password", Some(&project)).await.unwrap();
    assert_eq!(tokens["profile"]["reference"], profile_ref);
    // Inviting the project's patient again is a conflict.
    let (status, _) = invite(
        &server,
        &c.token,
        &project,
        json!({"resourceType": "Patient", "firstName": "Paula", "lastName": "Patient",
               "email": "paula@example.com"}),
    )
    .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn the_owner_of_a_project_cannot_be_removed() {
    let server = TestServer::start().await;
    let project = super_project(&server).await;
    let owner = me(&server, &server.token).await;
    let (status, _) = invite(
        &server,
        &server.token,
        &project,
        json!({"firstName": "Olga", "lastName": "Other", "email": "olga@example.com",
               "password": "olga-password", "admin": true}),
    )
    .await;
    assert_eq!(status, 201);
    let olga = token_of(&server, "olga@example.com", "olga-password").await;
    let path =
        format!("admin/projects/{project}/members/{}", owner["membership"]["id"].as_str().unwrap());
    let res = server.client.delete(server.url(&path)).bearer_auth(&olga).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("owner"), "{body}");
    let (status, _) = admin_get(&server, &server.token, &path).await;
    assert_eq!(status, 200, "still there");
}

#[tokio::test]
async fn a_super_admin_creates_a_project_and_invites_its_first_admin() {
    let server = TestServer::start().await;
    let (status, project) =
        admin_post(&server, &server.token, "admin/projects", &json!({"name": "Gamma clinic"}))
            .await;
    assert_eq!(status, 201, "{project}");
    assert_eq!(project["resourceType"], "Project");
    assert_eq!(project["name"], "Gamma clinic");
    assert!(project["owner"]["reference"].as_str().unwrap().starts_with("User/"));
    assert!(project.get("superAdmin").is_none());
    let id = project["id"].as_str().unwrap().to_owned();
    let (status, _) = invite(
        &server,
        &server.token,
        &id,
        json!({"firstName": "Gil", "lastName": "Gamma",
        "email": "gil@example.com", "password": "gil-password", "admin": true}),
    )
    .await;
    assert_eq!(status, 201);
    let tokens = sign_in(&server, "gil@example.com", "gil-password", Some(&id)).await.unwrap();
    assert_eq!(tokens["project"]["reference"], format!("Project/{id}"));
    // Only super admins; a name is required.
    let gil = tokens["access_token"].as_str().unwrap();
    let (status, body) = admin_post(&server, gil, "admin/projects", &json!({"name": "Mine"})).await;
    assert_forbidden(status, &body);
    let (status, _) =
        admin_post(&server, &server.token, "admin/projects", &json!({"name": " "})).await;
    assert_eq!(status, 400);
}
