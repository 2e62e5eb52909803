//! Token introspection (RFC 7662, `/oauth2/introspect`) and revocation (RFC 7009,
//! `/oauth2/revoke`).

use reqwest::Method;
use serde_json::{Value, json};

use crate::admin::{Clinic, admin_post, clinic, create_client, invite};
use crate::support::{TestServer, json_of};

/// How a caller authenticates at an OAuth endpoint.
enum Caller<'a> {
    None,
    Basic(&'a str, &'a str),
    Post(&'a str, &'a str),
    Public(&'a str),
    Bearer(&'a str),
}

/// POSTs `form` to `path` as `caller`: `(status, Cache-Control, body)`.
async fn oauth_post(
    server: &TestServer,
    path: &str,
    caller: &Caller<'_>,
    form: &[(&str, &str)],
) -> (u16, String, Value) {
    let mut form: Vec<(&str, &str)> = form.to_vec();
    let mut request = server.client.post(server.url(path));
    match caller {
        Caller::None => {}
        Caller::Basic(id, secret) => request = request.basic_auth(id, Some(secret)),
        Caller::Post(id, secret) => form.extend([("client_id", *id), ("client_secret", *secret)]),
        Caller::Public(id) => form.push(("client_id", id)),
        Caller::Bearer(token) => request = request.bearer_auth(token),
    }
    let res = request.form(&form).send().await.unwrap();
    let cache = res
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let (status, body) = json_of(res).await;
    (status, cache, body)
}

async fn introspect(server: &TestServer, caller: &Caller<'_>, token: &str) -> Value {
    let (status, cache, body) =
        oauth_post(server, "oauth2/introspect", caller, &[("token", token)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache, "no-store");
    body
}

async fn revoke(server: &TestServer, caller: &Caller<'_>, form: &[(&str, &str)]) -> (u16, Value) {
    let (status, _, body) = oauth_post(server, "oauth2/revoke", caller, form).await;
    (status, body)
}

/// A clinic with a confidential client `(id, secret)` and an invited Patient `(email,
/// password, patient id)`.
struct Setup {
    clinic: Clinic,
    client_id: String,
    secret: String,
    patient_id: String,
}

async fn setup(server: &TestServer) -> Setup {
    let clinic = clinic(server).await;
    let client = create_client(server, &clinic.token, &clinic.project).await;
    let (status, membership) = invite(
        server,
        &clinic.token,
        &clinic.project,
        json!({"resourceType": "Patient", "firstName": "Paula", "lastName": "Patient",
               "email": "paula@example.com", "password": "paula-password"}),
    )
    .await;
    assert_eq!(status, 201, "{membership}");
    let profile = membership["profile"]["reference"].as_str().unwrap();
    Setup {
        client_id: client["id"].as_str().unwrap().to_owned(),
        secret: client["secret"].as_str().unwrap().to_owned(),
        patient_id: profile.strip_prefix("Patient/").unwrap().to_owned(),
        clinic,
    }
}

/// The Patient signs in through the app `client_id`: the token response.
async fn patient_tokens(server: &TestServer, s: &Setup, client_id: &str) -> Value {
    let body = json!({"email": "paula@example.com", "password": "paula-password",
                      "projectId": s.clinic.project, "clientId": client_id,
                      "scope": "openid offline_access patient/*.rs"});
    let res = server.client.post(server.url("auth/login")).json(&body).send().await.unwrap();
    let (status, login) = json_of(res).await;
    assert_eq!(status, 200, "{login}");
    let code = login["code"].as_str().unwrap();
    let res = server
        .client
        .post(server.url("oauth2/token"))
        .form(&[("grant_type", "authorization_code"), ("code", code)])
        .send()
        .await
        .unwrap();
    let (status, tokens) = json_of(res).await;
    assert_eq!(status, 200, "{tokens}");
    tokens
}

fn str_of<'a>(tokens: &'a Value, field: &str) -> &'a str {
    tokens[field].as_str().unwrap()
}

/// GET `/fhir/R4/Patient` with a bearer token: the status.
async fn read_patients(server: &TestServer, token: &str) -> u16 {
    let res = server.client.request(Method::GET, server.fhir_url("Patient")).bearer_auth(token);
    res.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn introspection_describes_live_tokens() {
    let server = TestServer::start().await;
    let s = setup(&server).await;
    let tokens = patient_tokens(&server, &s, &s.client_id).await;
    let access = str_of(&tokens, "access_token");
    let refresh = str_of(&tokens, "refresh_token");
    let fhir_user = format!("{}fhir/R4/Patient/{}", server.base, s.patient_id);

    let body = introspect(&server, &Caller::Basic(&s.client_id, &s.secret), access).await;
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["scope"], "openid offline_access patient/*.rs");
    assert_eq!(body["client_id"], s.client_id.as_str());
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["patient"], s.patient_id.as_str());
    assert_eq!(body["fhirUser"], fhir_user.as_str());
    assert_eq!(body["iss"], server.base.trim_end_matches('/'));
    let now = chrono::Utc::now().timestamp();
    assert!(body["exp"].as_i64().unwrap() > now, "{body}");
    assert!(body["iat"].as_i64().unwrap() <= now + 5, "{body}");
    // `sub` is the access token's subject: the Patient's User.
    let me = server.client.get(server.url("auth/me")).bearer_auth(access).send().await.unwrap();
    let (_, me) = json_of(me).await;
    assert_eq!(body["sub"], me["user"]["id"], "{body}");

    // client_secret_post, and a refresh token (found by its hash; it carries no expiry).
    let body = introspect(&server, &Caller::Post(&s.client_id, &s.secret), refresh).await;
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["client_id"], s.client_id.as_str());
    assert_eq!(body["patient"], s.patient_id.as_str());
    assert_eq!(body["fhirUser"], fhir_user.as_str());
    assert_eq!(body["sub"], me["user"]["id"]);
    assert!(body.get("exp").is_none(), "{body}");
    // The hint only decides what is tried first.
    let (status, _, body) = oauth_post(
        &server,
        "oauth2/introspect",
        &Caller::Basic(&s.client_id, &s.secret),
        &[("token", access), ("token_type_hint", "refresh_token")],
    )
    .await;
    assert_eq!((status, &body["active"]), (200, &json!(true)), "{body}");

    // A bearer caller of the same project (the clinic's admin) sees it too.
    let body = introspect(&server, &Caller::Bearer(&s.clinic.token), access).await;
    assert_eq!(body["active"], true, "{body}");

    // Garbage, and look-alikes of a token, are inactive.
    let caller = Caller::Basic(&s.client_id, &s.secret);
    for garbage in ["", "garbage", "a.b.c", &format!("{access}x"), &refresh[1..]] {
        let body = introspect(&server, &caller, garbage).await;
        assert_eq!(body, json!({"active": false}), "{garbage}");
    }

    // A client of another project learns nothing about this project's tokens.
    let super_project = server.login_full().await["project"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Project/")
        .to_owned();
    let other = create_client(&server, &server.token, &super_project).await;
    let other = Caller::Basic(other["id"].as_str().unwrap(), other["secret"].as_str().unwrap());
    assert_eq!(introspect(&server, &other, access).await, json!({"active": false}));
    assert_eq!(introspect(&server, &other, refresh).await, json!({"active": false}));
    // ... but its own project's tokens it does.
    assert_eq!(introspect(&server, &other, &server.token).await["active"], true);
}

#[tokio::test]
async fn introspection_needs_an_authenticated_caller() {
    let server = TestServer::start().await;
    let s = setup(&server).await;
    let tokens = patient_tokens(&server, &s, &s.client_id).await;
    let access = str_of(&tokens, "access_token");
    let callers = [
        Caller::None,
        Caller::Basic(&s.client_id, "wrong-secret"),
        Caller::Post(&s.client_id, "wrong-secret"),
        Caller::Basic("no-such-client", "secret"),
        // Introspection is for confidential clients: a client id alone is not enough.
        Caller::Public(&s.client_id),
        Caller::Bearer("garbage"),
    ];
    for caller in &callers {
        let (status, cache, body) =
            oauth_post(&server, "oauth2/introspect", caller, &[("token", access)]).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "invalid_client", "{body}");
        assert!(body["error_description"].is_string());
        assert_eq!(cache, "no-store");
    }
    // Malformed Basic credentials.
    let res = server
        .client
        .post(server.url("oauth2/introspect"))
        .header("authorization", "Basic !!!")
        .form(&[("token", access)])
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    // Missing token, and a body that is not a form.
    let caller = Caller::Basic(&s.client_id, &s.secret);
    let (status, _, body) = oauth_post(&server, "oauth2/introspect", &caller, &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
    let res = server
        .client
        .post(server.url("oauth2/introspect"))
        .basic_auth(&s.client_id, Some(&s.secret))
        .json(&json!({"token": access}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
}

#[tokio::test]
async fn revocation_ends_every_token_of_the_login() {
    let server = TestServer::start().await;
    let s = setup(&server).await;
    let client = Caller::Basic(&s.client_id, &s.secret);
    let tokens = patient_tokens(&server, &s, &s.client_id).await;
    let access = str_of(&tokens, "access_token");
    let refresh = str_of(&tokens, "refresh_token");
    assert_eq!(read_patients(&server, access).await, 200);

    // Unknown tokens: 200 with an empty body (RFC 7009 §2.2).
    let (status, body) = revoke(&server, &client, &[("token", "no-such-token")]).await;
    assert_eq!((status, body), (200, Value::Null));
    // Unauthenticated or wrongly authenticated: 401 invalid_client, nothing revoked.
    for caller in [Caller::None, Caller::Basic(&s.client_id, "wrong"), Caller::Bearer(access)] {
        let (status, body) = revoke(&server, &caller, &[("token", access)]).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    }
    // A confidential client named without its secret is refused too.
    let (status, body) = revoke(&server, &Caller::Public(&s.client_id), &[("token", access)]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    // Another client of the project may not revoke this client's tokens: 200, nothing done.
    let other = create_client(&server, &s.clinic.token, &s.clinic.project).await;
    let other = Caller::Post(other["id"].as_str().unwrap(), other["secret"].as_str().unwrap());
    let (status, _) = revoke(&server, &other, &[("token", access)]).await;
    assert_eq!(status, 200);
    let (status, _) = revoke(&server, &other, &[("token", refresh)]).await;
    assert_eq!(status, 200);
    assert_eq!(read_patients(&server, access).await, 200, "still live");
    assert_eq!(introspect(&server, &client, refresh).await["active"], true);

    // The client revokes its access token: the whole login ends.
    let (status, body) = revoke(&server, &client, &[("token", access)]).await;
    assert_eq!((status, body), (200, Value::Null));
    assert_eq!(read_patients(&server, access).await, 401);
    let res = server
        .client
        .post(server.url("oauth2/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert_eq!(introspect(&server, &client, access).await, json!({"active": false}));
    assert_eq!(introspect(&server, &client, refresh).await, json!({"active": false}));
    // Revoking again is no error.
    let (status, _) = revoke(&server, &client, &[("token", access)]).await;
    assert_eq!(status, 200);

    // A refresh token (client_secret_post, with the hint) ends its login too.
    let tokens = patient_tokens(&server, &s, &s.client_id).await;
    let access = str_of(&tokens, "access_token");
    let refresh = str_of(&tokens, "refresh_token");
    assert_eq!(read_patients(&server, access).await, 200);
    let (status, _) = revoke(
        &server,
        &Caller::Post(&s.client_id, &s.secret),
        &[("token", refresh), ("token_type_hint", "refresh_token")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(read_patients(&server, access).await, 401);
    assert_eq!(introspect(&server, &client, access).await, json!({"active": false}));

    // Missing token: 400 invalid_request.
    let (status, body) = revoke(&server, &client, &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
}

#[tokio::test]
async fn a_logged_out_token_is_inactive() {
    let server = TestServer::start().await;
    let s = setup(&server).await;
    let client = Caller::Basic(&s.client_id, &s.secret);
    let tokens = patient_tokens(&server, &s, &s.client_id).await;
    let access = str_of(&tokens, "access_token");
    let refresh = str_of(&tokens, "refresh_token");
    assert_eq!(introspect(&server, &client, access).await["active"], true);
    let res =
        server.client.post(server.url("oauth2/logout")).bearer_auth(access).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(introspect(&server, &client, access).await, json!({"active": false}));
    assert_eq!(introspect(&server, &client, refresh).await, json!({"active": false}));
    // A rotated-out refresh token is inactive as well.
    let tokens = patient_tokens(&server, &s, &s.client_id).await;
    let old = str_of(&tokens, "refresh_token");
    let res = server
        .client
        .post(server.url("oauth2/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", old)])
        .send()
        .await
        .unwrap();
    let (status, rotated) = json_of(res).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(introspect(&server, &client, old).await, json!({"active": false}));
    let new = str_of(&rotated, "refresh_token");
    assert_eq!(introspect(&server, &client, new).await["active"], true);
}

#[tokio::test]
async fn a_public_client_revokes_its_tokens_with_its_id() {
    let server = TestServer::start().await;
    let s = setup(&server).await;
    // A public client: a ClientApplication without a secret, with its membership.
    let (status, app) = admin_post(
        &server,
        &s.clinic.token,
        "fhir/R4/ClientApplication",
        &json!({"resourceType": "ClientApplication", "name": "Phone app"}),
    )
    .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap().to_owned();
    let app_ref = format!("ClientApplication/{app_id}");
    let (status, membership) = admin_post(
        &server,
        &s.clinic.token,
        "fhir/R4/ProjectMembership",
        &json!({"resourceType": "ProjectMembership",
                "project": {"reference": format!("Project/{}", s.clinic.project)},
                "user": {"reference": app_ref}, "profile": {"reference": app_ref}}),
    )
    .await;
    assert_eq!(status, 201, "{membership}");
    let tokens = patient_tokens(&server, &s, &app_id).await;
    let access = str_of(&tokens, "access_token");
    assert_eq!(read_patients(&server, access).await, 200);
    // The confidential client may not revoke the public app's token.
    let (status, _) =
        revoke(&server, &Caller::Basic(&s.client_id, &s.secret), &[("token", access)]).await;
    assert_eq!(status, 200);
    assert_eq!(read_patients(&server, access).await, 200);
    let (status, body) = revoke(&server, &Caller::Public(&app_id), &[("token", access)]).await;
    assert_eq!((status, body), (200, Value::Null));
    assert_eq!(read_patients(&server, access).await, 401);
    // A public client cannot introspect.
    let (status, _, body) =
        oauth_post(&server, "oauth2/introspect", &Caller::Public(&app_id), &[("token", access)])
            .await;
    assert_eq!(status, 401, "{body}");
}
