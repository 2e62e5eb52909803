//! Self-service account flows over HTTP: registration (`/auth/newuser`, `newproject`,
//! `newpatient`) under each `--registration` mode, the password-reset mail, TOTP MFA
//! (`/auth/mfa/*` and its step in `/auth/login`), the sessions in `/auth/me` and `/auth/revoke`.

use base64::Engine as _;
use kiln_engine::Registration;
use serde_json::{Value, json};

use crate::admin::{clinic, sign_in};
use crate::support::{ADMIN_EMAIL, ADMIN_PASSWORD, Options, TestServer, assert_outcome, json_of};

async fn start(registration: Registration) -> TestServer {
    TestServer::start_with(Options { registration, ..Options::default() }).await
}

async fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let res = server
        .client
        .post(server.url(path))
        .header("user-agent", "kiln-test/1.0")
        .json(body)
        .send()
        .await
        .unwrap();
    json_of(res).await
}

async fn post_as(server: &TestServer, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let res =
        server.client.post(server.url(path)).bearer_auth(token).json(body).send().await.unwrap();
    json_of(res).await
}

async fn get_as(server: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let res = server.client.get(server.url(path)).bearer_auth(token).send().await.unwrap();
    json_of(res).await
}

fn assert_error(status: u16, body: &Value, expected: u16, code: &str) {
    assert_eq!(status, expected, "{body}");
    let issues = assert_outcome(body);
    assert_eq!(issues[0]["code"], code, "{body}");
}

/// `/oauth2/token` for a code (with its PKCE verifier, if any): the token response.
async fn exchange(server: &TestServer, code: &str, verifier: Option<&str>) -> Value {
    let mut form = vec![("grant_type", "authorization_code"), ("code", code)];
    if let Some(verifier) = verifier {
        form.push(("code_verifier", verifier));
    }
    let res = server.client.post(server.url("oauth2/token")).form(&form).send().await.unwrap();
    let (status, tokens) = json_of(res).await;
    assert_eq!(status, 200, "{tokens}");
    tokens
}

fn access_token(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// The `login_id` claim of an access token.
fn login_id_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap(),
    )
    .unwrap();
    claims["login_id"].as_str().unwrap().to_owned()
}

async fn read_system(server: &TestServer, ty: &str, id: &str) -> Value {
    let stored = server.store.read(&kiln_store::ProjectId::system(), ty, id).await.unwrap();
    serde_json::from_slice(&stored.body).unwrap()
}

/// The id of the server-wide User with this email, if any.
async fn user_id(server: &TestServer, email: &str) -> Option<String> {
    let system = kiln_store::ProjectId::system();
    server.store.lookup_unique(&system, "User.email", email).await.unwrap().map(|(_, id)| id)
}

fn new_user(email: &str) -> Value {
    json!({"firstName": "Ann", "lastName": "Archer", "email": email, "password": "ann-password",
           "recaptchaToken": "ignored"})
}

#[tokio::test]
async fn by_default_only_patients_register_and_only_where_the_project_allows_it() {
    let server = TestServer::start().await;
    let (status, body) = post(&server, "auth/newuser", &new_user("ann@example.com")).await;
    assert_error(status, &body, 403, "forbidden");
    assert_eq!(user_id(&server, "ann@example.com").await, None);
    // A project without a defaultPatientAccessPolicy takes no patients either.
    let c = clinic(&server).await;
    let mut body = new_user("pat@example.com");
    body["projectId"] = json!(c.project);
    let (status, outcome) = post(&server, "auth/newuser", &body).await;
    assert_error(status, &outcome, 403, "forbidden");
    // newproject is refused before the login is even looked at.
    let (status, outcome) = post(
        &server,
        "auth/newproject",
        &json!({"login": "00000000-0000-4000-8000-000000000000", "projectName": "Mine"}),
    )
    .await;
    assert_error(status, &outcome, 403, "forbidden");
    // Nor does a sign-in for a new project get an unbound login.
    let (status, outcome) = post(
        &server,
        "auth/login",
        &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "projectId": "new"}),
    )
    .await;
    assert_error(status, &outcome, 403, "forbidden");
    // An unknown project is a 404.
    body["projectId"] = json!("no-such-project");
    let (status, outcome) = post(&server, "auth/newuser", &body).await;
    assert_error(status, &outcome, 404, "not-found");
}

#[tokio::test]
async fn open_registration_creates_a_user_then_their_project() {
    let server = start(Registration::Open).await;
    let verifier = "v".repeat(43);
    let challenge = kiln_auth::pkce::s256_challenge(&verifier);
    let mut body = new_user("Ann@Example.com");
    body["codeChallenge"] = json!(challenge);
    body["codeChallengeMethod"] = json!("S256");
    let (status, out) = post(&server, "auth/newuser", &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out.as_object().unwrap().len(), 1, "only the login: {out}");
    let login_id = out["login"].as_str().unwrap().to_owned();

    // The User: email lower-cased, an Argon2id hash, no membership; the Login unbound.
    let ann = user_id(&server, "ann@example.com").await.expect("the user exists");
    let user = read_system(&server, "User", &ann).await;
    assert_eq!(user["firstName"], "Ann");
    assert_eq!(user["email"], "ann@example.com");
    assert!(user["passwordHash"].as_str().unwrap().starts_with("$argon2id$"));
    assert!(user.get("project").is_none());
    let login = read_system(&server, "Login", &login_id).await;
    assert_eq!(login["user"]["reference"], format!("User/{ann}"));
    assert_eq!(login["userAgent"], "kiln-test/1.0");
    assert_eq!(login["remoteAddress"], "127.0.0.1");
    assert_eq!(login["granted"], false);
    assert!(login.get("membership").is_none());
    assert!(login.get("code").is_none());

    // The same email in any case is taken; bad input is a 400 naming the field.
    let (status, outcome) = post(&server, "auth/newuser", &new_user("ANN@example.com")).await;
    assert_error(status, &outcome, 409, "conflict");
    for (field, value) in [
        ("password", json!("7-bytes")),
        ("password", json!("x".repeat(73))),
        ("firstName", json!("  ")),
        ("email", json!("not-an-email")),
    ] {
        let mut body = new_user("bob@example.com");
        body[field] = value;
        let (status, outcome) = post(&server, "auth/newuser", &body).await;
        assert_error(status, &outcome, 400, "invalid");
        assert_eq!(outcome["issue"][0]["expression"][0], field, "{outcome}");
    }
    // Exactly 8 and exactly 72 bytes are fine.
    for (email, password) in
        [("eight@example.com", "8-bytes!"), ("max@example.com", &"y".repeat(72))]
    {
        let mut body = new_user(email);
        body["password"] = json!(password);
        let (status, out) = post(&server, "auth/newuser", &body).await;
        assert_eq!(status, 200, "{out}");
    }
    assert_eq!(user_id(&server, "bob@example.com").await, None);

    // newproject: a Project owned by Ann, her Practitioner profile, an admin membership.
    let (status, outcome) =
        post(&server, "auth/newproject", &json!({"login": login_id, "projectName": " "})).await;
    assert_error(status, &outcome, 400, "invalid");
    let (status, out) = post(
        &server,
        "auth/newproject",
        &json!({"login": login_id, "projectName": "Ann's Practice"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["login"], login_id);
    let code = out["code"].as_str().unwrap().to_owned();
    // Without the PKCE verifier the code is refused; with it, tokens.
    let res = server
        .client
        .post(server.url("oauth2/token"))
        .form(&[("grant_type", "authorization_code"), ("code", &code)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let tokens = exchange(&server, &code, Some(&verifier)).await;
    let token = access_token(&tokens);
    let project = tokens["project"]["reference"].as_str().unwrap().to_owned();
    let (status, me) = get_as(&server, &token, "auth/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["project"]["name"], "Ann's Practice");
    assert_eq!(me["project"]["owner"]["reference"], format!("User/{ann}"));
    assert_eq!(format!("Project/{}", me["project"]["id"].as_str().unwrap()), project);
    assert_eq!(me["membership"]["admin"], true);
    assert_eq!(me["profile"]["resourceType"], "Practitioner");
    assert_eq!(me["profile"]["name"][0]["family"], "Archer");
    assert_eq!(me["profile"]["telecom"][0]["value"], "ann@example.com");
    assert!(me["user"].get("passwordHash").is_none());

    // The login is bound: it cannot make a second project.
    let (status, outcome) =
        post(&server, "auth/newproject", &json!({"login": login_id, "projectName": "Another"}))
            .await;
    assert_error(status, &outcome, 400, "invalid");

    // Ann administers her project: FHIR writes and invitations work, other projects stay shut.
    let res = server
        .client
        .post(server.fhir_url("Patient"))
        .bearer_auth(&token)
        .json(&json!({"resourceType": "Patient", "name": [{"family": "First"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let project_id = project.trim_start_matches("Project/");
    let (status, membership) = post_as(
        &server,
        &token,
        &format!("admin/projects/{project_id}/invite"),
        &json!({"firstName": "Nia", "lastName": "Nurse", "email": "nia@example.com",
                "password": "nia-password"}),
    )
    .await;
    assert_eq!(status, 201, "{membership}");
    let (status, bundle) = get_as(&server, &token, "fhir/R4/Patient").await;
    assert_eq!(status, 200);
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 1, "only her project's patient");

    // Later sign-ins use the password like anyone's.
    let tokens = sign_in(&server, "ann@example.com", "ann-password", None).await.unwrap();
    assert_eq!(tokens["project"]["reference"], project);

    // A registered user without a project yet (or wanting another) signs in with
    // `projectId: "new"`: an unbound login, then newproject.
    let (status, out) = post(
        &server,
        "auth/login",
        &json!({"email": "eight@example.com", "password": "8-bytes!", "projectId": "new"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["memberships"], json!([]));
    assert!(out.get("code").is_none());
    let (status, outcome) =
        post(&server, "auth/login", &json!({"email": "eight@example.com", "password": "8-bytes!"}))
            .await;
    assert_error(status, &outcome, 403, "forbidden");
    let (status, out) = post(
        &server,
        "auth/login",
        &json!({"email": "ann@example.com", "password": "ann-password", "projectId": "new"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["memberships"].as_array().unwrap().len(), 1);
    let (status, out) = post(
        &server,
        "auth/newproject",
        &json!({"login": out["login"], "projectName": "Ann's Second"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let tokens = exchange(&server, out["code"].as_str().unwrap(), None).await;
    assert_ne!(tokens["project"]["reference"], project);
    let (_, me) = get_as(&server, &access_token(&tokens), "auth/me").await;
    assert_eq!(me["project"]["name"], "Ann's Second");
    assert_eq!(me["security"]["memberships"].as_array().unwrap().len(), 2);
}

/// A project that takes patients: Carl's clinic with a patient policy as its
/// `defaultPatientAccessPolicy`. Returns `(project, carl's token, policy id)`.
async fn patient_clinic(server: &TestServer) -> (String, String, String) {
    let c = clinic(server).await;
    let res = server
        .client
        .post(server.fhir_url("AccessPolicy"))
        .bearer_auth(&c.token)
        .json(&json!({"resourceType": "AccessPolicy", "name": "Patients", "resource": [
            {"resourceType": "Patient", "criteria": "Patient?_id=%patient.id"},
            {"resourceType": "Observation", "criteria": "Observation?subject=%patient"},
        ]}))
        .send()
        .await
        .unwrap();
    let (status, policy) = json_of(res).await;
    assert_eq!(status, 201, "{policy}");
    let policy = policy["id"].as_str().unwrap().to_owned();
    let (status, mut project) =
        get_as(server, &c.token, &format!("fhir/R4/Project/{}", c.project)).await;
    assert_eq!(status, 200, "{project}");
    project["defaultPatientAccessPolicy"] = json!({"reference": format!("AccessPolicy/{policy}")});
    let res = server
        .client
        .put(server.fhir_url(&format!("Project/{}", c.project)))
        .bearer_auth(&c.token)
        .json(&project)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    (c.project, c.token, policy)
}

#[tokio::test]
async fn a_patient_registers_into_a_project_with_a_default_patient_policy() {
    let server = TestServer::start().await;
    let (project, carl, policy) = patient_clinic(&server).await;
    // Someone else, already in the clinic, whom the new patient must not see.
    let res = server
        .client
        .post(server.fhir_url("Patient"))
        .bearer_auth(&carl)
        .json(&json!({"resourceType": "Patient", "name": [{"family": "Other"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    let mut body = new_user("pat@example.com");
    body["firstName"] = json!("Pat");
    body["lastName"] = json!("Ient");
    body["projectId"] = json!(project);
    let (status, out) = post(&server, "auth/newuser", &body).await;
    assert_eq!(status, 200, "{out}");
    let login = out["login"].as_str().unwrap().to_owned();
    // The User is the project's own (its key is `<project>/<email>`, not a server-wide email).
    assert_eq!(user_id(&server, "pat@example.com").await, None);
    let (status, outcome) = post(&server, "auth/newuser", &body).await;
    assert_error(status, &outcome, 409, "conflict");

    // newpatient needs the project the user belongs to.
    let other = server.engine.create_project("Other", None).await.unwrap();
    let (status, outcome) =
        post(&server, "auth/newpatient", &json!({"login": login, "projectId": other["id"]})).await;
    assert_error(status, &outcome, 403, "forbidden");
    let (status, outcome) =
        post(&server, "auth/newpatient", &json!({"login": "nope", "projectId": project})).await;
    assert_error(status, &outcome, 404, "not-found");

    let (status, out) =
        post(&server, "auth/newpatient", &json!({"login": login, "projectId": project})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["login"], login);
    let tokens = exchange(&server, out["code"].as_str().unwrap(), None).await;
    let token = access_token(&tokens);
    let (status, me) = get_as(&server, &token, "auth/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["profile"]["resourceType"], "Patient");
    assert_eq!(me["profile"]["name"][0]["given"][0], "Pat");
    assert_eq!(me["membership"]["accessPolicy"]["reference"], format!("AccessPolicy/{policy}"));
    assert_eq!(me["user"]["project"]["reference"], format!("Project/{project}"));
    let patient_id = me["profile"]["id"].as_str().unwrap().to_owned();

    // The policy applies: the patient sees only themself.
    let (status, bundle) = get_as(&server, &token, "fhir/R4/Patient").await;
    assert_eq!(status, 200, "{bundle}");
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [patient_id.as_str()]);

    // The login is spent for registration; the patient signs in with the project id.
    let (status, outcome) =
        post(&server, "auth/newpatient", &json!({"login": login, "projectId": project})).await;
    assert_error(status, &outcome, 400, "invalid");
    let tokens = sign_in(&server, "pat@example.com", "ann-password", Some(&project)).await.unwrap();
    assert_eq!(tokens["profile"]["reference"], format!("Patient/{patient_id}"));
}

#[tokio::test]
async fn nobody_registers_into_a_super_admin_project() {
    let server = TestServer::start().await;
    let tokens = server.login_full().await;
    let project = tokens["project"]["reference"].as_str().unwrap().trim_start_matches("Project/");
    let policy = server
        .create(&json!({"resourceType": "AccessPolicy", "name": "Patients", "resource": [
            {"resourceType": "Patient", "criteria": "Patient?_id=%patient.id"}]}))
        .await;
    let (status, mut proj) = server.get_json(&format!("Project/{project}")).await;
    assert_eq!(status, 200);
    assert_eq!(proj["superAdmin"], true);
    proj["defaultPatientAccessPolicy"] =
        json!({"reference": format!("AccessPolicy/{}", policy["id"].as_str().unwrap())});
    let res = server
        .send_json(reqwest::Method::PUT, &format!("Project/{project}"), &proj)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Its members are super admins: a self-registered patient would be one.
    let mut body = new_user("pat@example.com");
    body["projectId"] = json!(project);
    let (status, outcome) = post(&server, "auth/newuser", &body).await;
    assert_error(status, &outcome, 403, "forbidden");
    let system = kiln_store::ProjectId::system();
    let key = format!("{project}/pat@example.com");
    assert!(
        server.store.lookup_unique(&system, "User.projectEmail", &key).await.unwrap().is_none()
    );
}

#[tokio::test]
async fn registration_off_refuses_patients_too() {
    let server = start(Registration::Off).await;
    let (project, _, _) = patient_clinic(&server).await;
    let mut body = new_user("pat@example.com");
    body["projectId"] = json!(project);
    let (status, outcome) = post(&server, "auth/newuser", &body).await;
    assert_error(status, &outcome, 403, "forbidden");
    let (status, outcome) = post(&server, "auth/newuser", &new_user("ann@example.com")).await;
    assert_error(status, &outcome, 403, "forbidden");
}

/// The newest mail to `email`, waiting up to 5 s for it (reset mails go out after the answer).
async fn wait_for_mail(server: &TestServer, email: &str, after: usize) -> Option<Value> {
    for _ in 0..100 {
        let mails =
            std::fs::read_to_string(server.dir.join("outbox/mail.jsonl")).unwrap_or_default();
        let found = mails
            .lines()
            .skip(after)
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|mail| mail["to"] == email)
            .last();
        if found.is_some() {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

fn mail_count(server: &TestServer) -> usize {
    std::fs::read_to_string(server.dir.join("outbox/mail.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test]
async fn a_reset_mail_sets_a_new_password_once_and_says_nothing_about_unknown_emails() {
    let server = TestServer::start().await;
    clinic(&server).await; // carl@example.com / carl-password
    let before = mail_count(&server);
    let (status, known) =
        post(&server, "auth/resetpassword", &json!({"email": "Carl@example.com"})).await;
    assert_eq!(status, 200, "{known}");
    assert_eq!(known["resourceType"], "OperationOutcome");
    assert_eq!(known["issue"][0]["severity"], "information");
    let (status, unknown) =
        post(&server, "auth/resetpassword", &json!({"email": "nobody@example.com"})).await;
    assert_eq!(status, 200);
    assert_eq!(known, unknown, "the same answer either way");
    let (status, outcome) =
        post(&server, "auth/resetpassword", &json!({"email": "not an email"})).await;
    assert_error(status, &outcome, 400, "invalid");

    let mail = wait_for_mail(&server, "carl@example.com", before).await.expect("a reset mail");
    assert_eq!(mail["subject"], "Reset your password");
    let link = mail["link"].as_str().unwrap();
    assert!(mail["text"].as_str().unwrap().contains(link));
    let (id, secret) =
        link.strip_prefix(&server.url("setpassword/")).unwrap().split_once('/').unwrap();
    let request = read_system(&server, "UserSecurityRequest", id).await;
    assert_eq!(request["type"], "reset");
    assert_eq!(request["used"], false);
    assert_ne!(request["secret"], secret, "only a hash is stored");
    // Nothing went to the unknown address.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(wait_for_mail(&server, "nobody@example.com", before).await.is_none());

    // The old password works until the link is used.
    assert!(sign_in(&server, "carl@example.com", "carl-password", None).await.is_ok());
    let set = json!({"id": id, "secret": secret, "password": "carl-new-password"});
    let (status, body) = post(&server, "auth/setpassword", &set).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        sign_in(&server, "carl@example.com", "carl-password", None).await.unwrap_err();
    assert_eq!(status, 400);
    assert!(sign_in(&server, "carl@example.com", "carl-new-password", None).await.is_ok());
    // Used: a second redemption fails and changes nothing.
    let again = json!({"id": id, "secret": secret, "password": "carl-third-password"});
    let (status, outcome) = post(&server, "auth/setpassword", &again).await;
    assert_error(status, &outcome, 400, "invalid");
    assert!(sign_in(&server, "carl@example.com", "carl-third-password", None).await.is_err());
    assert_eq!(read_system(&server, "UserSecurityRequest", id).await["used"], true);
}

#[tokio::test]
async fn an_expired_reset_link_fails() {
    let server = TestServer::start().await;
    clinic(&server).await;
    let before = mail_count(&server);
    let (status, _) =
        post(&server, "auth/resetpassword", &json!({"email": "carl@example.com"})).await;
    assert_eq!(status, 200);
    let mail = wait_for_mail(&server, "carl@example.com", before).await.unwrap();
    let link = mail["link"].as_str().unwrap();
    let (id, secret) =
        link.strip_prefix(&server.url("setpassword/")).unwrap().split_once('/').unwrap();
    // Age the request past its expiry, as the server itself would write it.
    let system = kiln_store::ProjectId::system();
    let mut request = read_system(&server, "UserSecurityRequest", id).await;
    request["expiresAt"] = json!("2020-01-01T00:00:00Z");
    let ctx = kiln_engine::RequestContext::new(system);
    server.engine.update(&ctx, "UserSecurityRequest", id, request, None).await.unwrap();
    let set = json!({"id": id, "secret": secret, "password": "carl-new-password"});
    let (status, outcome) = post(&server, "auth/setpassword", &set).await;
    assert_error(status, &outcome, 400, "invalid");
    assert!(sign_in(&server, "carl@example.com", "carl-password", None).await.is_ok());
}

/// The current TOTP code of a secret, and a six-digit code that is none of the accepted ones.
fn codes(secret: &str) -> (String, String) {
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap();
    let good = kiln_auth::totp::code_at(secret, now).unwrap();
    let accepted: Vec<String> = [now - 30, now, now + 30]
        .iter()
        .map(|t| kiln_auth::totp::code_at(secret, *t).unwrap())
        .collect();
    let bad =
        (0..10u32).map(|d| format!("{d}{d}{d}{d}{d}{d}")).find(|c| !accepted.contains(c)).unwrap();
    (good, bad)
}

#[tokio::test]
async fn mfa_enrolment_makes_sign_in_ask_for_a_code() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let (status, status_body) = get_as(&server, &c.token, "auth/mfa/status").await;
    assert_eq!(status, 200, "{status_body}");
    assert_eq!(status_body["enrolled"], false);
    let uri = status_body["enrollUri"].as_str().unwrap();
    let qr = status_body["enrollQrCode"].as_str().unwrap();
    let svg = {
        use base64::Engine as _;
        let data = qr.strip_prefix("data:image/svg+xml;base64,").expect("an SVG data URL");
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data).unwrap()).unwrap()
    };
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");
    let prefix = "otpauth://totp/Kiln:carl%40example%2Ecom?secret=";
    assert!(uri.starts_with(prefix), "{uri}");
    let secret = uri[prefix.len()..].split('&').next().unwrap().to_owned();
    assert_eq!(secret.len(), 32);
    assert!(uri.contains("&issuer=Kiln"));
    // Asking again keeps the same secret until enrolment.
    let (_, again) = get_as(&server, &c.token, "auth/mfa/status").await;
    assert_eq!(again["enrollUri"], status_body["enrollUri"]);
    // The secret is never served.
    let (_, me) = get_as(&server, &c.token, "auth/me").await;
    assert!(me["user"].get("mfaSecret").is_none());
    assert_eq!(me["security"]["mfaEnrolled"], false);
    let carl_id = me["user"]["id"].as_str().unwrap().to_owned();
    // Stored as is (codes are computed from it), served nowhere.
    assert_eq!(read_system(&server, "User", &carl_id).await["mfaSecret"], secret);

    let (good, bad) = codes(&secret);
    let (status, outcome) =
        post_as(&server, &c.token, "auth/mfa/enroll", &json!({"token": bad})).await;
    assert_error(status, &outcome, 400, "invalid");
    let (status, body) =
        post_as(&server, &c.token, "auth/mfa/enroll", &json!({"token": good})).await;
    assert_eq!(status, 200, "{body}");
    let (_, status_body) = get_as(&server, &c.token, "auth/mfa/status").await;
    assert_eq!(status_body, json!({"enrolled": true}));
    let (_, me) = get_as(&server, &c.token, "auth/me").await;
    assert_eq!(me["security"]["mfaEnrolled"], true);

    // Sign-in now stops at the second factor.
    let creds = json!({"email": "carl@example.com", "password": "carl-password"});
    let (status, pending) = post(&server, "auth/login", &creds).await;
    assert_eq!(status, 200, "{pending}");
    assert_eq!(pending["mfaRequired"], true);
    assert!(pending.get("code").is_none());
    let login = pending["login"].as_str().unwrap().to_owned();
    // No profile can be picked before the code.
    let (status, outcome) =
        post(&server, "auth/profile", &json!({"login": login, "profile": "x"})).await;
    assert_error(status, &outcome, 401, "login");
    let (good, bad) = codes(&secret);
    let (status, outcome) =
        post(&server, "auth/mfa/verify", &json!({"login": login, "token": bad})).await;
    assert_error(status, &outcome, 400, "invalid");
    let (status, out) =
        post(&server, "auth/mfa/verify", &json!({"login": login, "token": good})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["login"], login);
    let tokens = exchange(&server, out["code"].as_str().unwrap(), None).await;
    let token = access_token(&tokens);
    let (status, _) = get_as(&server, &token, "auth/me").await;
    assert_eq!(status, 200);
    // A verified login is not verified again.
    let (status, outcome) =
        post(&server, "auth/mfa/verify", &json!({"login": login, "token": good})).await;
    assert_error(status, &outcome, 400, "invalid");
    // With a project id, too.
    let mut creds_project = creds.clone();
    creds_project["projectId"] = json!(c.project);
    let (_, pending) = post(&server, "auth/login", &creds_project).await;
    assert_eq!(pending["mfaRequired"], true);
    let (status, out) = post(
        &server,
        "auth/mfa/verify",
        &json!({"login": pending["login"], "token": codes(&secret).0}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let tokens = exchange(&server, out["code"].as_str().unwrap(), None).await;
    assert_eq!(tokens["project"]["reference"], format!("Project/{}", c.project));

    // Disabling needs a current code too; then sign-in gives a code at once.
    let (good, bad) = codes(&secret);
    let (status, outcome) =
        post_as(&server, &token, "auth/mfa/disable", &json!({"token": bad})).await;
    assert_error(status, &outcome, 400, "invalid");
    let (status, body) =
        post_as(&server, &token, "auth/mfa/disable", &json!({"token": good})).await;
    assert_eq!(status, 200, "{body}");
    let user = read_system(&server, "User", &carl_id).await;
    assert_eq!(user["mfaEnrolled"], false);
    assert!(user.get("mfaSecret").is_none());
    let (status, direct) = post(&server, "auth/login", &creds).await;
    assert_eq!(status, 200);
    assert!(direct["code"].is_string(), "{direct}");
    assert!(direct.get("mfaRequired").is_none());
    // Not enrolled: disable is a 400, and a fresh status gives a new secret.
    let (status, outcome) =
        post_as(&server, &token, "auth/mfa/disable", &json!({"token": good})).await;
    assert_error(status, &outcome, 400, "invalid");
    let (_, fresh) = get_as(&server, &token, "auth/mfa/status").await;
    assert_ne!(fresh["enrollUri"], status_body["enrollUri"]);
    assert!(!fresh["enrollUri"].as_str().unwrap().contains(&secret));
}

#[tokio::test]
async fn me_lists_the_sessions_and_a_user_revokes_only_their_own() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let first = c.token.clone();
    let second = access_token(
        &sign_in(&server, "carl@example.com", "carl-password", Some(&c.project)).await.unwrap(),
    );
    let (first_login, second_login) = (login_id_of(&first), login_id_of(&second));
    let (status, me) = get_as(&server, &second, "auth/me").await;
    assert_eq!(status, 200, "{me}");
    let security = &me["security"];
    assert_eq!(security["mfaEnrolled"], false);
    let sessions = security["sessions"].as_array().unwrap();
    let ids: Vec<&str> = sessions.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second_login.as_str(), first_login.as_str()], "newest first");
    assert_eq!(sessions[0]["authMethod"], "password");
    assert_eq!(sessions[0]["remoteAddress"], "127.0.0.1");
    assert!(sessions[0]["authTime"].is_string());
    let memberships = security["memberships"].as_array().unwrap();
    assert_eq!(memberships.len(), 1);
    assert_eq!(memberships[0]["project"]["reference"], format!("Project/{}", c.project));
    assert_eq!(memberships[0]["id"], me["membership"]["id"]);
    assert_eq!(memberships[0]["profile"], me["membership"]["profile"]);

    // Someone else's login: 403, and it keeps working.
    let admin_login = login_id_of(&server.token);
    let (status, outcome) =
        post_as(&server, &second, "auth/revoke", &json!({"loginId": admin_login})).await;
    assert_error(status, &outcome, 403, "forbidden");
    let (status, _) = get_as(&server, &server.token, "auth/me").await;
    assert_eq!(status, 200);
    let (status, outcome) = post_as(
        &server,
        &second,
        "auth/revoke",
        &json!({"loginId": "00000000-0000-4000-8000-000000000000"}),
    )
    .await;
    assert_error(status, &outcome, 404, "not-found");

    // One's own: its tokens stop at once; the other session lives on.
    let (status, body) =
        post_as(&server, &second, "auth/revoke", &json!({"loginId": first_login})).await;
    assert_eq!(status, 200, "{body}");
    let (status, outcome) = get_as(&server, &first, "auth/me").await;
    assert_error(status, &outcome, 401, "login");
    let (status, me) = get_as(&server, &second, "auth/me").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = me["security"]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second_login.as_str()]);
    // Without a token there is nothing to revoke.
    let res = server
        .client
        .post(server.url("auth/revoke"))
        .json(&json!({"loginId": second_login}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}
