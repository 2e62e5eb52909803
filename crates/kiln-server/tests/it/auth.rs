//! Medplum-style login: `/auth/login` → code → `/oauth2/token`, refresh, `/auth/me`, logout.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ADMIN_EMAIL, ADMIN_PASSWORD, TestServer, json_of};

async fn login(server: &TestServer, body: Value) -> (u16, Value) {
    let res = server.client.post(server.url("auth/login")).json(&body).send().await.unwrap();
    json_of(res).await
}

async fn token(server: &TestServer, form: &[(&str, &str)]) -> (u16, Value) {
    let res = server.client.post(server.url("oauth2/token")).form(form).send().await.unwrap();
    json_of(res).await
}

#[tokio::test]
async fn token_response_has_medplum_fields_and_works() {
    let server = TestServer::start().await;
    let tokens = server.login_full().await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_u64().unwrap() > 0);
    assert!(tokens["refresh_token"].is_string());
    assert!(tokens["id_token"].is_string(), "openid scope yields an id_token");
    assert!(tokens["project"]["reference"].as_str().unwrap().starts_with("Project/"));
    assert!(tokens["profile"]["reference"].as_str().unwrap().starts_with("Practitioner/"));
    // The access token is a JWT whose claims Medplum's client reads.
    let payload = tokens["access_token"].as_str().unwrap().split('.').nth(1).unwrap().to_owned();
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap(),
    )
    .unwrap();
    for claim in ["login_id", "sub", "scope", "exp", "iat", "iss"] {
        assert!(claims.get(claim).is_some(), "claim {claim} missing: {claims}");
    }
    // /auth/me describes the caller without secrets.
    let res = server
        .client
        .get(server.url("auth/me"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let (status, me) = json_of(res).await;
    assert_eq!(status, 200);
    assert_eq!(me["user"]["email"], ADMIN_EMAIL);
    assert!(me["user"].get("passwordHash").is_none());
    assert_eq!(me["profile"]["resourceType"], "Practitioner");
    assert_eq!(me["project"]["resourceType"], "Project");
    assert_eq!(me["membership"]["resourceType"], "ProjectMembership");
    // The JWKS verifies the token's key id.
    let res = server.client.get(server.url(".well-known/jwks.json")).send().await.unwrap();
    let (_, jwks) = json_of(res).await;
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(jwks["keys"][0].get("d").is_none(), "no private parts");
}

#[tokio::test]
async fn wrong_credentials_are_refused_without_saying_which() {
    let server = TestServer::start().await;
    let (status_pw, body_pw) =
        login(&server, json!({"email": ADMIN_EMAIL, "password": "wrong"})).await;
    let (status_user, body_user) =
        login(&server, json!({"email": "nobody@example.com", "password": "wrong"})).await;
    assert_eq!(status_pw, 400);
    assert_eq!(status_user, 400);
    assert_eq!(body_pw["issue"][0]["diagnostics"], body_user["issue"][0]["diagnostics"]);
    let (status, _) = login(&server, json!({"email": ADMIN_EMAIL})).await;
    assert_eq!(status, 400);
    // Email is case-insensitive.
    let (status, body) =
        login(&server, json!({"email": ADMIN_EMAIL.to_uppercase(), "password": ADMIN_PASSWORD}))
            .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn codes_are_single_use_and_need_the_right_verifier() {
    let server = TestServer::start().await;
    let verifier = "v".repeat(50);
    let challenge = kiln_auth::pkce::s256_challenge(&verifier);
    let (_, body) = login(
        &server,
        json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
        "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
    )
    .await;
    let code = body["code"].as_str().unwrap().to_owned();
    let wrong = "w".repeat(50);
    let (status, err) = token(
        &server,
        &[("grant_type", "authorization_code"), ("code", &code), ("code_verifier", &wrong)],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"], "invalid_grant");
    let (status, _) =
        token(&server, &[("grant_type", "authorization_code"), ("code", &code)]).await;
    assert_eq!(status, 400, "the verifier is required when a challenge was sent");
    let (status, _) = token(
        &server,
        &[("grant_type", "authorization_code"), ("code", &code), ("code_verifier", &verifier)],
    )
    .await;
    assert_eq!(status, 200);
    let (status, err) = token(
        &server,
        &[("grant_type", "authorization_code"), ("code", &code), ("code_verifier", &verifier)],
    )
    .await;
    assert_eq!(status, 400, "a code is single use");
    assert_eq!(err["error"], "invalid_grant");
    // Medplum's SDK under Node sends the plain method.
    let (_, body) = login(
        &server,
        json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
        "codeChallenge": "plain-secret", "codeChallengeMethod": "plain"}),
    )
    .await;
    let code = body["code"].as_str().unwrap().to_owned();
    let (status, _) = token(
        &server,
        &[("grant_type", "authorization_code"), ("code", &code), ("code_verifier", "plain-secret")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, err) = token(&server, &[("grant_type", "password")]).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn refresh_tokens_rotate() {
    let server = TestServer::start().await;
    let tokens = server.login_full().await;
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, renewed) =
        token(&server, &[("grant_type", "refresh_token"), ("refresh_token", &first)]).await;
    assert_eq!(status, 200, "{renewed}");
    let second = renewed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    let (status, _) =
        token(&server, &[("grant_type", "refresh_token"), ("refresh_token", &first)]).await;
    assert_eq!(status, 400, "the old refresh token is spent");
    let res = server
        .client
        .get(server.fhir_url("Patient/_history"))
        .bearer_auth(renewed["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn logout_revokes_tokens_at_once() {
    let server = TestServer::start().await;
    let tokens = server.login_full().await;
    let access = tokens["access_token"].as_str().unwrap();
    let res = server
        .client
        .get(server.fhir_url("Patient/_history"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res =
        server.client.post(server.url("oauth2/logout")).bearer_auth(access).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = server
        .client
        .get(server.fhir_url("Patient/_history"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, _) =
        token(&server, &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
    assert_eq!(status, 400, "a revoked login cannot refresh");
    // Other logins are unaffected.
    let res = server.fhir(Method::GET, "Patient/_history").send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn writes_are_attributed_and_scoped_to_the_project() {
    let server = TestServer::start().await;
    let tokens = server.login_full().await;
    let project = tokens["project"]["reference"].as_str().unwrap().trim_start_matches("Project/");
    // A plain FHIR client sees R4's meta only: Medplum's members are not R4 elements.
    let created = server.create(&crate::support::patient("Doe")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let meta = created["meta"].as_object().unwrap();
    assert!(meta.contains_key("versionId") && meta.contains_key("lastUpdated"), "{created}");
    assert!(!meta.contains_key("author") && !meta.contains_key("project"), "{created}");
    let bundle = crate::support::search(&server, &format!("Patient?_id={id}")).await;
    assert!(bundle["entry"][0]["resource"]["meta"].get("project").is_none(), "{bundle}");
    let (_, hist) = server.get_json(&format!("Patient/{id}/_history")).await;
    assert!(hist["entry"][0]["resource"]["meta"].get("author").is_none(), "{hist}");
    // `X-Medplum: extended` (what Medplum's SDK sends) shows them, everywhere.
    let extended =
        |path: String| server.fhir(Method::GET, &path).header("x-medplum", "extended").send();
    let (_, read) = json_of(extended(format!("Patient/{id}")).await.unwrap()).await;
    assert_eq!(read["meta"]["author"], tokens["profile"]);
    assert_eq!(read["meta"]["project"], json!(project));
    let (_, bundle) = json_of(extended(format!("Patient?_id={id}")).await.unwrap()).await;
    assert_eq!(bundle["entry"][0]["resource"]["meta"]["project"], json!(project));
    let (_, hist) = json_of(extended(format!("Patient/{id}/_history")).await.unwrap()).await;
    assert_eq!(hist["entry"][0]["resource"]["meta"]["author"], tokens["profile"]);
    let (_, summary) =
        json_of(extended(format!("Patient/{id}?_summary=true")).await.unwrap()).await;
    assert_eq!(summary["meta"]["project"], json!(project));
    let (_, summary) = server.get_json(&format!("Patient/{id}?_elements=name")).await;
    assert!(summary["meta"].get("project").is_none(), "{summary}");
    // Batch entries follow the same rule.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{id}")}}]});
    let res = server.send_json(Method::POST, "", &batch).send().await.unwrap();
    let (_, out) = json_of(res).await;
    assert!(out["entry"][0]["resource"]["meta"].get("project").is_none(), "{out}");
    let res = server.send_json(Method::POST, "", &batch).header("x-medplum", "extended").send();
    let (_, out) = json_of(res.await.unwrap()).await;
    assert_eq!(out["entry"][0]["resource"]["meta"]["author"], tokens["profile"]);
}
