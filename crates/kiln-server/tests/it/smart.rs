//! SMART App Launch 2.0.0 over real HTTP: discovery, the authorization pages (sign-in,
//! picker, consent) as a browser walks them (cookies, CSRF, redirects not followed), the token
//! endpoint's checks, launch contexts, scopes on the API, refresh, revocation.

use std::collections::HashMap;

use reqwest::redirect::Policy;
use serde_json::{Value, json};

use crate::admin::{Clinic, admin_post, clinic, invite};
use crate::support::{TestServer, json_of};

const REDIRECT: &str = "https://app.example.com/callback";
const LAUNCH_URI: &str = "https://app.example.com/launch";
const VERIFIER: &str = "smart-test-verifier-0123456789-abcdefghijklmnopqrstuvwxyz";

/// A browser: a cookie jar and a client that does not follow redirects.
struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
}

/// A page or redirect: status, `Location`, body.
struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder().redirect(Policy::none()).build().unwrap(),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn take(&mut self, res: reqwest::Response) -> Page {
        for value in res.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap();
            assert!(value.contains("HttpOnly") && value.contains("SameSite=Lax"), "{value}");
            let (pair, _) = value.split_once(';').unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let status = res.status().as_u16();
        let location = res.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
        if status == 200 {
            let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
            assert_eq!(ct, "text/html; charset=utf-8");
            assert_eq!(res.headers()["cache-control"], "no-store");
            assert_eq!(res.headers()["x-frame-options"], "DENY");
        }
        Page { status, location, body: res.text().await.unwrap() }
    }

    async fn get(&mut self, url: &str) -> Page {
        let res = self.http.get(url).header("cookie", self.cookie_header()).send().await.unwrap();
        self.take(res).await
    }

    /// POSTs a form, adding the CSRF token from the cookie jar.
    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let csrf = self.cookies.get("kiln_csrf").cloned().unwrap_or_default();
        let mut form: Vec<(&str, &str)> = form.to_vec();
        form.push(("csrf", &csrf));
        let res = self
            .http
            .post(url)
            .header("cookie", self.cookie_header())
            .form(&form)
            .send()
            .await
            .unwrap();
        self.take(res).await
    }
}

/// The query parameters of a URL.
fn query_of(url: &str) -> HashMap<String, String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// A clinic with a patient (a user of the project) and practitioner, some data, and apps.
struct World {
    clinic: Clinic,
    /// Confidential client `(id, secret)`.
    confidential: (String, String),
    /// Public client id.
    public: String,
    patient_id: String,
    other_patient: String,
    encounter_id: String,
}

async fn world(server: &TestServer) -> World {
    let clinic = clinic(server).await;
    let new_client = |body: Value| {
        let (token, project) = (clinic.token.clone(), clinic.project.clone());
        async move {
            let (status, client) =
                admin_post(server, &token, &format!("admin/projects/{project}/client"), &body)
                    .await;
            assert_eq!(status, 201, "{client}");
            client
        }
    };
    let client = new_client(json!({"name": "Chart Viewer", "launchUri": LAUNCH_URI,
        "redirectUris": [REDIRECT, "https://app.example.com/other"]}))
    .await;
    let client_id = client["id"].as_str().unwrap().to_owned();
    let secret = client["secret"].as_str().unwrap().to_owned();
    let public =
        new_client(json!({"name": "Pocket App", "public": true, "redirectUris": [REDIRECT]})).await;
    assert!(public.get("secret").is_none(), "{public}");
    let public_id = public["id"].as_str().unwrap().to_owned();
    let (status, membership) = invite(
        server,
        &clinic.token,
        &clinic.project,
        json!({"resourceType": "Patient", "firstName": "Paula", "lastName": "Smart",
               "email": "paula@example.com", "password": "paula-password"}),
    )
    .await;
    assert_eq!(status, 201, "{membership}");
    let patient_id = membership["profile"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_owned();
    let (status, membership) = invite(
        server,
        &clinic.token,
        &clinic.project,
        json!({"resourceType": "Practitioner", "firstName": "Dana", "lastName": "Doctor",
               "email": "dana@example.com", "password": "dana-password"}),
    )
    .await;
    assert_eq!(status, 201, "{membership}");
    let post = |body: Value| create_as(server, &clinic.token, body);
    let other_patient = post(json!({"resourceType": "Patient",
        "name": [{"family": "Other", "given": ["Oscar"]}], "birthDate": "1970-02-03"}))
    .await;
    // Paula's record: a name to find her by, observations, an encounter.
    let res = server
        .client
        .patch(server.fhir_url(&format!("Patient/{patient_id}")))
        .bearer_auth(&clinic.token)
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"add","path":"/birthDate","value":"1985-06-07"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for (subject, code) in
        [(&patient_id, "laboratory"), (&patient_id, "vital-signs"), (&other_patient, "laboratory")]
    {
        post(json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": code}]}],
            "code": {"text": "test"}, "subject": {"reference": format!("Patient/{subject}")}}))
        .await;
    }
    post(json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{patient_id}")},
        "code": {"text": "asthma"}})).await;
    let encounter_id = post(json!({"resourceType": "Encounter", "status": "finished",
        "class": {"code": "AMB"}, "subject": {"reference": format!("Patient/{patient_id}")}}))
    .await;
    World {
        clinic,
        confidential: (client_id, secret),
        public: public_id,
        patient_id,
        other_patient,
        encounter_id,
    }
}

/// Creates a resource through the FHIR API as `token`: its id.
async fn create_as(server: &TestServer, token: &str, body: Value) -> String {
    let ty = body["resourceType"].as_str().unwrap().to_owned();
    let res = server
        .client
        .post(server.fhir_url(&ty))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The parameters of an authorization request.
fn authorize_params(server: &TestServer, client_id: &str, scope: &str) -> Vec<(String, String)> {
    vec![
        ("response_type".into(), "code".into()),
        ("client_id".into(), client_id.into()),
        ("redirect_uri".into(), REDIRECT.into()),
        ("scope".into(), scope.into()),
        ("state".into(), "st-123".into()),
        ("aud".into(), server.fhir_url("").trim_end_matches('/').to_owned()),
        ("code_challenge".into(), kiln_auth::pkce::s256_challenge(VERIFIER)),
        ("code_challenge_method".into(), "S256".into()),
        ("nonce".into(), "n-456".into()),
    ]
}

fn authorize_url(server: &TestServer, params: &[(String, String)]) -> String {
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    server.url(&format!("oauth2/authorize?{query}"))
}

fn with(params: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        params.iter().filter(|(k, _)| k != name).cloned().collect();
    out.push((name.into(), value.into()));
    out
}

fn as_refs(params: &[(String, String)]) -> Vec<(&str, &str)> {
    params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Signs `browser` in on the authorization page; answers the page the sign-in leads to.
async fn sign_in(
    server: &TestServer,
    browser: &mut Browser,
    params: &[(String, String)],
    email: &str,
    password: &str,
) -> Page {
    let login = browser.get(&authorize_url(server, params)).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(login.body.contains("action=\"/oauth2/authorize/signin\""), "{}", login.body);
    let mut form = as_refs(params);
    form.extend([("email", email), ("password", password)]);
    let after = browser.post(&server.url("oauth2/authorize/signin"), &form).await;
    assert_eq!(after.status, 303, "{}", after.body);
    assert!(browser.cookies.contains_key("kiln_session"));
    browser.get(&server.url(after.location.as_deref().unwrap())).await
}

/// Approves the consent page with `grant` ticked (and `patient` chosen); answers the code.
async fn approve(
    server: &TestServer,
    browser: &mut Browser,
    params: &[(String, String)],
    patient: Option<&str>,
    grant: &[&str],
) -> String {
    let mut form = as_refs(params);
    if let Some(p) = patient {
        form.push(("patient", p));
    }
    form.push(("decision", "allow"));
    for g in grant {
        form.push(("grant", g));
    }
    let res = browser.post(&server.url("oauth2/authorize/consent"), &form).await;
    assert_eq!(res.status, 303, "{}", res.body);
    let location = res.location.unwrap();
    assert!(location.starts_with(REDIRECT), "{location}");
    let q = query_of(&location);
    assert_eq!(q["state"], "st-123", "{location}");
    q.get("code").cloned().unwrap_or_else(|| panic!("no code: {location}"))
}

/// POSTs to the token endpoint.
async fn token(
    server: &TestServer,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut req = server.client.post(server.url("oauth2/token")).form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let res = req.send().await.unwrap();
    if res.status() == 200 {
        assert_eq!(res.headers()["cache-control"], "no-store");
        assert_eq!(res.headers()["pragma"], "no-cache");
    }
    json_of(res).await
}

async fn redeem(server: &TestServer, w: &World, code: &str) -> (u16, Value) {
    let (id, secret) = &w.confidential;
    token(
        server,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", VERIFIER),
            ("redirect_uri", REDIRECT),
        ],
        Some((id, secret)),
    )
    .await
}

async fn get_with(server: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let res = server.client.get(server.fhir_url(path)).bearer_auth(token).send().await.unwrap();
    json_of(res).await
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| e.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The claims of a JWT (not verified).
fn claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn discovery_lists_what_the_server_does() {
    let server = TestServer::start().await;
    for path in [".well-known/smart-configuration", "fhir/R4/.well-known/smart-configuration"] {
        let res = server
            .client
            .get(server.url(path))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let (status, conf) = json_of(res).await;
        assert_eq!(status, 200, "{conf}");
        assert_eq!(conf["authorization_endpoint"], server.url("oauth2/authorize"));
        assert_eq!(conf["token_endpoint"], server.url("oauth2/token"));
        assert_eq!(conf["code_challenge_methods_supported"], json!(["S256"]));
        let caps: Vec<&str> =
            conf["capabilities"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        for cap in [
            "launch-ehr",
            "launch-standalone",
            "authorize-post",
            "client-public",
            "client-confidential-symmetric",
            "sso-openid-connect",
            "context-banner",
            "context-style",
            "context-ehr-patient",
            "context-ehr-encounter",
            "context-standalone-patient",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
        ] {
            assert!(caps.contains(&cap), "{cap} missing: {caps:?}");
        }
        // Every endpoint it names answers (none is a 404).
        for key in ["jwks_uri", "management_endpoint", "userinfo_endpoint"] {
            let url = conf[key].as_str().unwrap();
            let res = server.client.get(url).send().await.unwrap();
            assert_ne!(res.status(), 404, "{key}: {url}");
        }
    }
    let res =
        server.client.get(server.url(".well-known/openid-configuration")).send().await.unwrap();
    let (status, oidc) = json_of(res).await;
    assert_eq!(status, 200, "{oidc}");
    assert!(
        oidc["id_token_signing_alg_values_supported"].as_array().unwrap().contains(&json!("RS256"))
    );
    // The style URL is public JSON.
    let res = server.client.get(server.url("oauth2/smart-style.json")).send().await.unwrap();
    let (status, style) = json_of(res).await;
    assert_eq!(status, 200);
    assert!(style["color_background"].is_string());
    // The CapabilityStatement names the OAuth endpoints.
    let (_, cs) = server.get_json("metadata").await;
    let uris = &cs["rest"][0]["security"]["extension"][0];
    assert_eq!(
        uris["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    let authorize =
        uris["extension"].as_array().unwrap().iter().find(|e| e["url"] == "authorize").unwrap();
    assert_eq!(authorize["valueUri"], server.url("oauth2/authorize"));
    // Browser apps may call from other origins.
    let res = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("oauth2/token"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn a_patient_launches_an_app_and_unticks_a_scope() {
    let server = TestServer::start().await;
    let w = world(&server).await;
    let scope = "launch/patient openid fhirUser offline_access patient/Patient.rs \
                 patient/Observation.rs patient/Condition.rs";
    let params = authorize_params(&server, &w.confidential.0, scope);
    let mut browser = Browser::new();
    let consent =
        sign_in(&server, &mut browser, &params, "paula@example.com", "paula-password").await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    assert!(consent.body.contains("Chart Viewer"), "{}", consent.body);
    assert!(
        consent.body.contains("Read and search conditions and problems of the patient"),
        "{}",
        consent.body
    );
    assert!(
        consent.body.contains("keep access after you leave it"),
        "offline access is called out"
    );
    assert!(consent.body.contains("Paula Smart"), "the patient is named");
    // Condition unticked.
    let code = approve(
        &server,
        &mut browser,
        &params,
        None,
        &[
            "launch/patient",
            "openid",
            "fhirUser",
            "offline_access",
            "patient/Patient.rs",
            "patient/Observation.rs",
        ],
    )
    .await;
    let (status, tokens) = redeem(&server, &w, &code).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["patient"], w.patient_id);
    assert_eq!(tokens["need_patient_banner"], true);
    assert_eq!(tokens["smart_style_url"], server.url("oauth2/smart-style.json"));
    let granted = tokens["scope"].as_str().unwrap();
    assert!(!granted.contains("Condition"), "{granted}");
    assert!(granted.contains("patient/Observation.rs"), "{granted}");
    assert!(tokens["refresh_token"].is_string(), "offline_access gives a refresh token");
    let id = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["aud"], w.confidential.0);
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["fhirUser"], server.fhir_url(&format!("Patient/{}", w.patient_id)));
    assert!(id["auth_time"].is_i64());
    // The token reads the patient's own data, only that, and not what was unticked.
    let access = tokens["access_token"].as_str().unwrap();
    let (status, me) = get_with(&server, access, &format!("Patient/{}", w.patient_id)).await;
    assert_eq!(status, 200, "{me}");
    let (status, obs) = get_with(&server, access, "Observation").await;
    assert_eq!(status, 200, "{obs}");
    assert_eq!(ids(&obs).len(), 2, "only Paula's observations: {obs}");
    let (status, _) = get_with(&server, access, &format!("Patient/{}", w.other_patient)).await;
    assert_eq!(status, 404);
    let (status, outcome) = get_with(&server, access, "Condition").await;
    assert_eq!(status, 403, "an unticked type is refused: {outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    // UserInfo names the user.
    let res =
        server.client.get(server.url("oauth2/userinfo")).bearer_auth(access).send().await.unwrap();
    let (status, info) = json_of(res).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["email"], "paula@example.com");
    assert_eq!(info["fhirUser"], id["fhirUser"]);
    // The same code again: refused, and the tokens issued from it die.
    let (status, err) = redeem(&server, &w, &code).await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_grant")), "{err}");
    let (status, _) = get_with(&server, access, &format!("Patient/{}", w.patient_id)).await;
    assert_eq!(status, 401, "reusing a code revokes what it gave");
}

#[tokio::test]
async fn the_authorization_request_is_checked_before_any_code() {
    let server = TestServer::start().await;
    let w = world(&server).await;
    let params = authorize_params(&server, &w.confidential.0, "openid patient/*.rs");
    let mut browser = Browser::new();
    // Shown to the user, never redirected: unknown client, unregistered redirect, wrong aud.
    for bad in [
        with(&params, "client_id", "no-such-client"),
        with(&params, "redirect_uri", "https://evil.example.com/cb"),
        with(&params, "aud", "https://inferno.healthit.gov/invalid_aud"),
    ] {
        let page = browser.get(&authorize_url(&server, &bad)).await;
        assert_eq!(page.status, 400, "{}", page.body);
        assert!(page.location.is_none());
        assert!(page.body.contains("cannot be authorized"), "{}", page.body);
    }
    // Sent back to the app with the state: PKCE missing or plain, another response type.
    let no_pkce: Vec<_> =
        params.iter().filter(|(k, _)| !k.starts_with("code_challenge")).cloned().collect();
    for (bad, error) in [
        (no_pkce, "invalid_request"),
        (with(&params, "code_challenge_method", "plain"), "invalid_request"),
        (with(&params, "response_type", "token"), "unsupported_response_type"),
        (with(&params, "scope", "nonsense other/thing"), "invalid_scope"),
        (with(&params, "launch", "no-such-launch"), "invalid_request"),
    ] {
        let page = browser.get(&authorize_url(&server, &bad)).await;
        assert_eq!(page.status, 303, "{}", page.body);
        let location = page.location.unwrap();
        assert!(location.starts_with(REDIRECT), "{location}");
        let q = query_of(&location);
        assert_eq!(q["error"], error, "{location}");
        assert_eq!(q["state"], "st-123");
        assert!(!q.contains_key("code"));
    }
    // A repeated parameter is an error too.
    let mut twice = params.clone();
    twice.push(("state".into(), "again".into()));
    let page = browser.get(&authorize_url(&server, &twice)).await;
    assert_eq!(query_of(&page.location.unwrap())["error"], "invalid_request");
    // Forms without the CSRF token are refused.
    let res = browser
        .http
        .post(server.url("oauth2/authorize/signin"))
        .form(&[("email", "paula@example.com"), ("password", "paula-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // Wrong password: the sign-in page again with an error, no session.
    browser.get(&authorize_url(&server, &params)).await;
    let mut form = as_refs(&params);
    form.extend([("email", "paula@example.com"), ("password", "wrong")]);
    let page = browser.post(&server.url("oauth2/authorize/signin"), &form).await;
    assert_eq!(page.status, 401);
    assert!(page.body.contains("role=\"alert\""));
    assert!(!browser.cookies.contains_key("kiln_session"));
    // The authorization request by POST (authorize-post) shows the same sign-in page.
    let res = browser
        .http
        .post(server.url("oauth2/authorize"))
        .form(&as_refs(&params))
        .send()
        .await
        .unwrap();
    let page = browser.take(res).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Sign in"), "{}", page.body);
    // Deny: the app hears access_denied.
    let consent =
        sign_in(&server, &mut browser, &params, "paula@example.com", "paula-password").await;
    assert_eq!(consent.status, 200);
    let mut form = as_refs(&params);
    form.push(("decision", "deny"));
    let page = browser.post(&server.url("oauth2/authorize/consent"), &form).await;
    let q = query_of(&page.location.unwrap());
    assert_eq!((q["error"].as_str(), q["state"].as_str()), ("access_denied", "st-123"));
}

#[tokio::test]
async fn a_user_outside_the_apps_project_is_told_so_and_may_sign_out() {
    let server = TestServer::start().await;
    let w = world(&server).await;
    let params = authorize_params(&server, &w.confidential.0, "openid patient/*.rs");
    let mut browser = Browser::new();
    // The server's admin has an account, but no membership in the clinic.
    let page = sign_in(
        &server,
        &mut browser,
        &params,
        "admin@example.com",
        crate::support::ADMIN_PASSWORD,
    )
    .await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("no access to the project"), "{}", page.body);
    assert!(page.body.contains("action=\"/oauth2/signout\""), "{}", page.body);
    let out = browser.post(&server.url("oauth2/signout"), &[]).await;
    assert_eq!(out.status, 303);
    let login = browser.get(&authorize_url(&server, &params)).await;
    assert!(
        login.body.contains("action=\"/oauth2/authorize/signin\""),
        "signed out: {}",
        login.body
    );
}

#[tokio::test]
async fn the_token_endpoint_checks_verifier_client_and_redirect() {
    let server = TestServer::start().await;
    let w = world(&server).await;
    let params = authorize_params(&server, &w.confidential.0, "openid patient/*.rs");
    let mut browser = Browser::new();
    sign_in(&server, &mut browser, &params, "paula@example.com", "paula-password").await;
    let (id, secret) = (&w.confidential.0, &w.confidential.1);
    let challenge = kiln_auth::pkce::s256_challenge(VERIFIER);
    // Each bad verifier on a fresh code: missing, empty, wrong, the challenge itself.
    for verifier in [
        None,
        Some(""),
        Some("wrong-verifier-wrong-verifier-wrong-verifier-00"),
        Some(challenge.as_str()),
    ] {
        let code = approve(&server, &mut browser, &params, None, &["openid", "patient/*.rs"]).await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v));
        }
        let (status, err) = token(&server, &form, Some((id, secret))).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (400, Some("invalid_grant")),
            "{verifier:?}: {err}"
        );
    }
    let code = approve(&server, &mut browser, &params, None, &["openid", "patient/*.rs"]).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", VERIFIER),
        ("redirect_uri", REDIRECT),
    ];
    // A confidential client must authenticate; a wrong secret is a 401.
    let (status, err) =
        token(&server, &[&form[..], &[("client_id", id.as_str())]].concat(), None).await;
    assert_eq!((status, err["error"].as_str()), (401, Some("invalid_client")), "{err}");
    let (status, err) = token(&server, &form, Some((id, "wrong-secret"))).await;
    assert_eq!((status, err["error"].as_str()), (401, Some("invalid_client")), "{err}");
    // Another redirect URI than the request's.
    let other = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", VERIFIER),
        ("redirect_uri", "https://app.example.com/other"),
    ];
    let (status, err) = token(&server, &other, Some((id, secret))).await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_grant")), "{err}");
    // client_secret_post works; no refresh token without offline_access.
    let (status, tokens) = token(
        &server,
        &[&form[..], &[("client_id", id.as_str()), ("client_secret", secret.as_str())]].concat(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    // An unknown grant type, a garbage code.
    let (status, err) = token(
        &server,
        &[("grant_type", "authorization_code"), ("code", "a"), ("code", "b")],
        Some((id, secret)),
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_request")), "{err}");
    let (status, err) = token(&server, &[("grant_type", "password")], None).await;
    assert_eq!((status, err["error"].as_str()), (400, Some("unsupported_grant_type")));
    let (status, err) = token(
        &server,
        &[("grant_type", "authorization_code"), ("code", "garbage"), ("code_verifier", VERIFIER)],
        Some((id, secret)),
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_grant")));

    // A public client: PKCE and its client_id, nothing else.
    let params =
        authorize_params(&server, &w.public, "openid patient/Observation.rs offline_access");
    let consent = browser.get(&authorize_url(&server, &params)).await;
    assert!(consent.body.contains("Pocket App"), "the session is reused: {}", consent.body);
    let code = approve(
        &server,
        &mut browser,
        &params,
        None,
        &["openid", "patient/Observation.rs", "offline_access"],
    )
    .await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", VERIFIER),
        ("redirect_uri", REDIRECT),
    ];
    let (status, err) = token(&server, &form, None).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (401, Some("invalid_client")),
        "a public client names itself: {err}"
    );
    let (status, err) =
        token(&server, &[&form[..], &[("client_id", id.as_str())]].concat(), None).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant")),
        "another client's code: {err}"
    );
    let public = w.public.as_str();
    let (status, tokens) =
        token(&server, &[&form[..], &[("client_id", public)]].concat(), None).await;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens.get("patient").is_none(), "no launch/patient, no patient context: {tokens}");

    // Refresh: rotates, may narrow, never widens; the old one stops working.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, err) = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", public),
            ("scope", "patient/*.cruds"),
        ],
        None,
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_scope")), "{err}");
    let (status, renewed) = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", public),
            ("scope", "patient/Observation.rs"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["scope"], "patient/Observation.rs");
    assert!(renewed.get("id_token").is_none());
    // A public client's refresh token stands for it: client_id may be left out (SMART's JS
    // client does), but another client's id is refused.
    let (status, err) = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", renewed["refresh_token"].as_str().unwrap()),
            ("client_id", id.as_str()),
        ],
        None,
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_grant")), "{err}");
    let (status, renewed) = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", renewed["refresh_token"].as_str().unwrap()),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["scope"], "openid patient/Observation.rs offline_access");
    let (status, _) = token(
        &server,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh), ("client_id", public)],
        None,
    )
    .await;
    assert_eq!(status, 400, "the old refresh token is spent");
    let (status, err) = token(
        &server,
        &[("grant_type", "refresh_token"), ("refresh_token", "garbage"), ("client_id", public)],
        None,
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_grant")));
    let (status, obs) =
        get_with(&server, renewed["access_token"].as_str().unwrap(), "Observation").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&obs).len(), 2, "{obs}");
}

#[tokio::test]
async fn a_practitioner_picks_the_patient_of_a_standalone_launch() {
    let server = TestServer::start().await;
    let w = world(&server).await;
    let params = authorize_params(
        &server,
        &w.confidential.0,
        "launch/patient openid fhirUser patient/*.rs user/Patient.rs",
    );
    let mut browser = Browser::new();
    let picker = sign_in(&server, &mut browser, &params, "dana@example.com", "dana-password").await;
    assert_eq!(picker.status, 200);
    assert!(picker.body.contains("Choose the patient"), "{}", picker.body);
    let search = with(&params, "patient_name", "Smart");
    let found = browser.get(&authorize_url(&server, &search)).await;
    assert!(found.body.contains("Paula Smart"), "{}", found.body);
    assert!(!found.body.contains("Oscar"), "{}", found.body);
    let by_birth = browser
        .get(&authorize_url(&server, &with(&params, "patient_birthdate", "1970-02-03")))
        .await;
    assert!(by_birth.body.contains("Oscar Other"), "{}", by_birth.body);
    // Choosing leads to the consent page for that patient.
    let chosen =
        browser.get(&authorize_url(&server, &with(&params, "patient", &w.patient_id))).await;
    assert!(chosen.body.contains("Patient: <strong>Paula Smart</strong>"), "{}", chosen.body);
    // Consent without a chosen patient is refused.
    let mut form = as_refs(&params);
    form.extend([("decision", "allow"), ("grant", "launch/patient")]);
    let page = browser.post(&server.url("oauth2/authorize/consent"), &form).await;
    assert_eq!(page.status, 400, "{}", page.body);
    let code = approve(
        &server,
        &mut browser,
        &params,
        Some(&w.patient_id),
        &["launch/patient", "openid", "fhirUser", "patient/*.rs", "user/Patient.rs"],
    )
    .await;
    let (status, tokens) = redeem(&server, &w, &code).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["patient"], w.patient_id);
    let fhir_user =
        claims(tokens["id_token"].as_str().unwrap())["fhirUser"].as_str().unwrap().to_owned();
    assert!(fhir_user.starts_with(&server.fhir_url("Practitioner/")), "{fhir_user}");
    let access = tokens["access_token"].as_str().unwrap();
    let (_, obs) = get_with(&server, access, "Observation").await;
    assert_eq!(ids(&obs).len(), 2, "patient/ scopes reach the chosen patient only: {obs}");
    let (status, _) = get_with(&server, access, &format!("Patient/{}", w.other_patient)).await;
    assert_eq!(status, 200, "user/Patient.rs reaches what the practitioner may see");
}

#[tokio::test]
async fn an_ehr_launch_carries_patient_and_encounter() {
    let server = TestServer::start().await;
    let w = world(&server).await;
    // Dana signs in on the launch page and launches the app for Paula's encounter.
    let mut browser = Browser::new();
    let page = browser.get(&server.url("oauth2/launch?patient_name=Smart")).await;
    assert_eq!(page.status, 303);
    let to_signin = page.location.unwrap();
    let next = query_of(&to_signin)["next"].clone();
    assert_eq!(next, "/oauth2/launch?patient_name=Smart", "the search survives sign-in");
    browser.get(&server.url(&to_signin)).await;
    let page = browser
        .post(
            &server.url("oauth2/signin"),
            &[("email", "dana@example.com"), ("password", "dana-password"), ("next", &next)],
        )
        .await;
    assert_eq!(page.location.as_deref(), Some(next.as_str()));
    // Another site is never a place to go back to.
    let page = browser.get(&server.url("oauth2/signin?next=https://evil.example.com/")).await;
    assert_eq!(page.location.as_deref(), Some("/oauth2/apps"));
    let found = browser.get(&server.url(&next)).await;
    assert!(found.body.contains("Chart Viewer"), "{}", found.body);
    let option = format!("<option value=\"{}\">AMB (finished)", w.encounter_id);
    assert!(found.body.contains(&option), "the patient's encounters to pick: {}", found.body);
    assert!(found.body.contains("Paula Smart"), "{}", found.body);
    let page = browser
        .post(
            &server.url("oauth2/launch"),
            &[
                ("project", &w.clinic.project),
                ("client_id", &w.confidential.0),
                ("patient", &w.patient_id),
                ("encounter", &w.encounter_id),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let location = page.location.unwrap();
    assert!(location.starts_with(LAUNCH_URI), "{location}");
    let q = query_of(&location);
    assert_eq!(q["iss"], server.fhir_url("").trim_end_matches('/'));
    let launch = q["launch"].clone();
    // The app comes back with `launch`.
    let params = with(
        &authorize_params(
            &server,
            &w.confidential.0,
            "launch openid fhirUser offline_access user/*.rs patient/*.rs",
        ),
        "launch",
        &launch,
    );
    let consent = browser.get(&authorize_url(&server, &params)).await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    assert!(consent.body.contains("Paula Smart"));
    let code = approve(
        &server,
        &mut browser,
        &params,
        None,
        &["launch", "openid", "fhirUser", "offline_access", "user/*.rs", "patient/*.rs"],
    )
    .await;
    let (status, tokens) = redeem(&server, &w, &code).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["patient"], w.patient_id);
    assert_eq!(tokens["encounter"], w.encounter_id);
    assert!(tokens.get("fhirContext").is_none(), "the encounter has its own member: {tokens}");
    // Introspection tells the launch context, and agrees with the ID token.
    let id_token = claims(tokens["id_token"].as_str().unwrap());
    for token in [&tokens["access_token"], &tokens["refresh_token"]] {
        let res = server
            .client
            .post(server.url("oauth2/introspect"))
            .basic_auth(&w.confidential.0, Some(&w.confidential.1))
            .form(&[("token", token.as_str().unwrap())])
            .send()
            .await
            .unwrap();
        let (status, info) = json_of(res).await;
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["active"], true, "{info}");
        assert_eq!(info["patient"], w.patient_id, "{info}");
        assert_eq!(info["encounter"], w.encounter_id, "{info}");
        assert_eq!(info["sub"], id_token["sub"], "{info}");
        assert_eq!(info["iss"], id_token["iss"], "{info}");
        assert_eq!(info["fhirUser"], id_token["fhirUser"], "{info}");
        assert!(info["exp"].is_i64(), "{info}");
    }
    // The API form: `$smart-launch` redirects to the launch URL.
    let res = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
        .get(server.fhir_url(&format!(
            "ClientApplication/{}/$smart-launch?patient={}&encounter={}",
            w.confidential.0, w.patient_id, w.encounter_id
        )))
        .bearer_auth(&w.clinic.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let location = res.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(LAUNCH_URI) && location.contains("launch="), "{location}");
    // An encounter of another patient is refused.
    let res = server
        .client
        .get(server.fhir_url(&format!(
            "ClientApplication/{}/$smart-launch?patient={}&encounter={}",
            w.confidential.0, w.other_patient, w.encounter_id
        )))
        .bearer_auth(&w.clinic.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn a_user_revokes_an_app_on_the_connected_apps_page() {
    let server = TestServer::start().await;
    let w = world(&server).await;
    let params = authorize_params(&server, &w.confidential.0, "openid patient/*.rs offline_access");
    let mut browser = Browser::new();
    sign_in(&server, &mut browser, &params, "paula@example.com", "paula-password").await;
    let code = approve(
        &server,
        &mut browser,
        &params,
        None,
        &["openid", "patient/*.rs", "offline_access"],
    )
    .await;
    let (_, tokens) = redeem(&server, &w, &code).await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    // An online-only grant of another app, which ends with the session.
    let online = authorize_params(&server, &w.public, "openid patient/*.rs online_access");
    let code =
        approve(&server, &mut browser, &online, None, &["openid", "patient/*.rs", "online_access"])
            .await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", VERIFIER),
        ("redirect_uri", REDIRECT),
        ("client_id", w.public.as_str()),
    ];
    let (status, online_tokens) = token(&server, &form, None).await;
    assert_eq!(status, 200, "{online_tokens}");
    let online_refresh = online_tokens["refresh_token"].as_str().unwrap();

    let page = browser.get(&server.url("oauth2/apps")).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("Chart Viewer") && page.body.contains("Pocket App"),
        "{}",
        page.body
    );
    let page =
        browser.post(&server.url("oauth2/apps/revoke"), &[("client_id", &w.confidential.0)]).await;
    assert_eq!(page.status, 303);
    let page = browser.get(&server.url(page.location.as_deref().unwrap())).await;
    assert!(page.body.contains("Chart Viewer no longer has access"), "{}", page.body);
    assert!(page.body.contains("Pocket App"));
    let (status, _) = get_with(&server, access, &format!("Patient/{}", w.patient_id)).await;
    assert_eq!(status, 401, "revoked at once");
    let (id, secret) = &w.confidential;
    let (status, _) = token(
        &server,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
        Some((id, secret)),
    )
    .await;
    assert_eq!(status, 400, "the refresh token too");
    // Revoking needs the CSRF token.
    let res = browser
        .http
        .post(server.url("oauth2/apps/revoke"))
        .header("cookie", browser.cookie_header())
        .form(&[("client_id", w.public.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // The online grant refreshes while the session lives, not after sign-out.
    let (status, renewed) = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", online_refresh),
            ("client_id", w.public.as_str()),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{renewed}");
    let page = browser.post(&server.url("oauth2/signout"), &[]).await;
    assert_eq!(page.status, 303);
    assert!(!browser.cookies.contains_key("kiln_session"));
    let (status, err) = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", renewed["refresh_token"].as_str().unwrap()),
            ("client_id", w.public.as_str()),
        ],
        None,
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_grant")), "{err}");
    // Signed out: the apps page asks to sign in.
    let page = browser.get(&server.url("oauth2/apps")).await;
    assert_eq!(page.status, 303);
}

/// `client-confidential-asymmetric`: an app registered with a key (no secret) redeems its code
/// and refreshes with `private_key_jwt` assertions; without one, or with a used one, it cannot.
#[tokio::test]
async fn an_app_with_a_key_pair_redeems_and_refreshes_with_private_key_jwt() {
    use jsonwebtoken::{Algorithm, Header};
    let server = TestServer::start().await;
    let w = world(&server).await;
    let key = kiln_auth::SigningKey::generate().unwrap();
    let mut jwk = key.public_jwk();
    jwk["alg"] = json!("RS384");
    jwk["kid"] = json!("app-key");
    let post = |body: Value| create_as(&server, &w.clinic.token, body);
    let app = post(json!({"resourceType": "ClientApplication", "name": "Keyed App",
        "redirectUris": [REDIRECT],
        "extension": [{"url": "https://kiln.dev/fhir/StructureDefinition/client-jwks",
                       "valueString": json!({"keys": [jwk]}).to_string()}]}))
    .await;
    let reference = json!({"reference": format!("ClientApplication/{app}")});
    post(json!({"resourceType": "ProjectMembership",
        "project": {"reference": format!("Project/{}", w.clinic.project)},
        "user": reference, "profile": reference}))
    .await;
    let assertion = || {
        let mut header = Header::new(Algorithm::RS384);
        header.kid = Some("app-key".into());
        let now = chrono::Utc::now().timestamp();
        let claims = json!({"iss": app, "sub": app, "aud": server.url("oauth2/token"),
            "exp": now + 120, "jti": uuid::Uuid::new_v4().to_string()});
        jsonwebtoken::encode(&header, &claims, key.encoding_key()).unwrap()
    };
    const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

    let params = authorize_params(&server, &app, "openid offline_access patient/*.rs");
    let mut browser = Browser::new();
    sign_in(&server, &mut browser, &params, "paula@example.com", "paula-password").await;
    let grant = ["openid", "offline_access", "patient/*.rs"];
    let code = approve(&server, &mut browser, &params, None, &grant).await;
    let base = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", VERIFIER),
        ("redirect_uri", REDIRECT),
    ];
    // A client with keys is confidential: its id alone is not enough.
    let mut form = base.to_vec();
    form.push(("client_id", &app));
    let (status, err) = token(&server, &form, None).await;
    assert_eq!((status, err["error"].as_str()), (401, Some("invalid_client")), "{err}");
    // With an assertion it redeems the code.
    let signed = assertion();
    let mut form = base.to_vec();
    form.extend([("client_assertion_type", JWT_BEARER), ("client_assertion", &signed)]);
    let (status, tokens) = token(&server, &form, None).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(claims(tokens["id_token"].as_str().unwrap())["aud"], app.as_str());
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(get_with(&server, access, &format!("Patient/{}", w.patient_id)).await.0, 200);
    // Refresh: a fresh assertion works; the used one is a replay.
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let refresh_form = |assertion: &str| {
        vec![
            ("grant_type".to_owned(), "refresh_token".to_owned()),
            ("refresh_token".to_owned(), refresh.clone()),
            ("client_assertion_type".to_owned(), JWT_BEARER.to_owned()),
            ("client_assertion".to_owned(), assertion.to_owned()),
        ]
    };
    let send = |form: Vec<(String, String)>| {
        let server = &server;
        async move {
            let form: Vec<(&str, &str)> =
                form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            token(server, &form, None).await
        }
    };
    let (status, err) = send(refresh_form(&signed)).await;
    assert_eq!((status, err["error"].as_str()), (401, Some("invalid_client")), "{err}");
    assert!(err["error_description"].as_str().unwrap().contains("replayed"), "{err}");
    let (status, refreshed) = send(refresh_form(&assertion())).await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed["access_token"].is_string());
}

#[tokio::test]
async fn an_enrolled_user_signs_in_with_the_authenticator_code() {
    let server = TestServer::start().await;
    let w = world(&server).await;
    let tokens = crate::admin::sign_in(
        &server,
        "paula@example.com",
        "paula-password",
        Some(&w.clinic.project),
    )
    .await
    .unwrap();
    let paula = tokens["access_token"].as_str().unwrap();
    let res =
        server.client.get(server.url("auth/mfa/status")).bearer_auth(paula).send().await.unwrap();
    let (_, status) = json_of(res).await;
    let uri = status["enrollUri"].as_str().unwrap();
    let secret = uri.split("secret=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let code_now = || {
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap();
        kiln_auth::totp::code_at(&secret, now).unwrap()
    };
    let res = server
        .client
        .post(server.url("auth/mfa/enroll"))
        .bearer_auth(paula)
        .json(&json!({"token": code_now()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let params = authorize_params(&server, &w.confidential.0, "openid patient/*.rs");
    let mut browser = Browser::new();
    browser.get(&authorize_url(&server, &params)).await;
    let mut form = as_refs(&params);
    form.extend([("email", "paula@example.com"), ("password", "paula-password")]);
    // The password alone: the page asks for the code, and no session starts.
    let page = browser.post(&server.url("oauth2/authorize/signin"), &form).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Code from your authenticator app"), "{}", page.body);
    assert!(!browser.cookies.contains_key("kiln_session"));
    // A wrong code: refused.
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap();
    let accepted: Vec<String> = [now - 30, now, now + 30]
        .iter()
        .map(|t| kiln_auth::totp::code_at(&secret, *t).unwrap())
        .collect();
    let bad =
        (0..10u32).map(|d| format!("{d}{d}{d}{d}{d}{d}")).find(|c| !accepted.contains(c)).unwrap();
    let mut wrong = form.clone();
    wrong.push(("code", &bad));
    let page = browser.post(&server.url("oauth2/authorize/signin"), &wrong).await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(page.body.contains("role=\"alert\""));
    assert!(!browser.cookies.contains_key("kiln_session"));
    // The right code: signed in, on to consent.
    let good = code_now();
    let mut right = form.clone();
    right.push(("code", &good));
    let page = browser.post(&server.url("oauth2/authorize/signin"), &right).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert!(browser.cookies.contains_key("kiln_session"));
    let consent = browser.get(&server.url(page.location.as_deref().unwrap())).await;
    assert!(consent.body.contains("asks for access"), "{}", consent.body);
}

/// A patient-scoped SMART token (`patient/*.rs` with a chosen patient) exports that patient's
/// compartment only, whoever else the practitioner could see.
#[tokio::test]
async fn a_patient_scoped_token_exports_only_its_patient() {
    let server = TestServer::start().await;
    let w = world(&server).await;
    let params = authorize_params(&server, &w.confidential.0, "launch/patient openid patient/*.rs");
    let mut browser = Browser::new();
    sign_in(&server, &mut browser, &params, "dana@example.com", "dana-password").await;
    let code = approve(
        &server,
        &mut browser,
        &params,
        Some(&w.patient_id),
        &["launch/patient", "openid", "patient/*.rs"],
    )
    .await;
    let (status, tokens) = redeem(&server, &w, &code).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let res = server
        .client
        .get(server.fhir_url("Patient/$export"))
        .bearer_auth(&access)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let url = res.headers()["content-location"].to_str().unwrap().to_owned();
    let res = crate::support::job_result(&server, &access, &url).await;
    assert_eq!(res.status(), 200);
    let manifest: Value = res.json().await.unwrap();
    let mut seen: Vec<(String, String)> = Vec::new();
    for file in manifest["output"].as_array().unwrap() {
        let text = server
            .client
            .get(file["url"].as_str().unwrap())
            .bearer_auth(&access)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in text.lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            seen.push((
                r["resourceType"].as_str().unwrap().into(),
                r["id"].as_str().unwrap().into(),
            ));
        }
    }
    let count = |ty: &str| seen.iter().filter(|(t, _)| t == ty).count();
    assert_eq!(count("Patient"), 1, "{seen:?}");
    assert!(seen.contains(&("Patient".into(), w.patient_id.clone())));
    assert!(!seen.iter().any(|(_, id)| *id == w.other_patient));
    assert_eq!(count("Observation"), 2, "{seen:?}");
    assert_eq!(count("Condition"), 1);
    assert_eq!(count("Encounter"), 1);
}
