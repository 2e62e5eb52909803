//! SMART Backend Services: `grant_type=client_credentials` with a JWT client assertion
//! (`private_key_jwt`, RFC 7523), keys from the client's `jwksUri` (served here by a small
//! HTTP server on 127.0.0.1) or inline in the `client-jwks` extension.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use axum::response::IntoResponse as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kiln_auth::SigningKey;
use reqwest::Method;
use serde_json::{Value, json};

use crate::admin::{Clinic, clinic};
use crate::support::{TestServer, json_of, patient};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const JWKS_EXTENSION: &str = "https://kiln.dev/fhir/StructureDefinition/client-jwks";

/// A client's key pair: how to sign, and its public JWK.
struct ClientKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn rsa_key(kid: &str) -> ClientKey {
    // RSA generation is the slow part; one key per process serves every kid.
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    let key = KEY.get_or_init(|| SigningKey::generate().unwrap());
    let mut jwk = key.public_jwk();
    jwk["alg"] = json!("RS384");
    jwk["kid"] = json!(kid);
    ClientKey { kid: kid.into(), alg: Algorithm::RS384, encoding: key.encoding_key().clone(), jwk }
}

fn ec_key(kid: &str) -> ClientKey {
    let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
    let point = pair.public_key().as_ref().to_vec();
    let jwk = json!({"kty": "EC", "crv": "P-384", "alg": "ES384", "use": "sig", "kid": kid,
                     "x": URL_SAFE_NO_PAD.encode(&point[1..49]),
                     "y": URL_SAFE_NO_PAD.encode(&point[49..])});
    let encoding = EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref());
    ClientKey { kid: kid.into(), alg: Algorithm::ES384, encoding, jwk }
}

fn jwks(keys: &[&ClientKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// What the JWKS server answers, and how often it was asked.
struct JwksServer {
    url: String,
    body: Arc<Mutex<(u16, String, String)>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    /// Serves `jwks` at `http://127.0.0.1:<port>/jwks.json` with `cache_control`.
    async fn start(jwks: &Value, cache_control: &str) -> JwksServer {
        let body = Arc::new(Mutex::new((200, jwks.to_string(), cache_control.to_owned())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (b, h) = (b.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body, cache) = b.lock().unwrap().clone();
                    let status = axum::http::StatusCode::from_u16(status).unwrap();
                    (
                        status,
                        [("content-type", "application/json"), ("cache-control", cache.as_str())],
                        body,
                    )
                        .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        JwksServer { url, body, hits }
    }

    fn serve(&self, status: u16, body: String, cache_control: &str) {
        *self.body.lock().unwrap() = (status, body, cache_control.to_owned());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Registers a ClientApplication without a secret (`client` holds its key fields) and its
/// membership, through the FHIR API as the clinic's admin: the client id.
async fn register_client(server: &TestServer, c: &Clinic, client: Value) -> String {
    let post = |resource: Value| async move {
        let ty = resource["resourceType"].as_str().unwrap().to_owned();
        let res = server
            .client
            .post(server.fhir_url(&ty))
            .bearer_auth(&c.token)
            .header("content-type", "application/fhir+json")
            .json(&resource)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(res).await;
        assert_eq!(status, 201, "{body}");
        body
    };
    let mut resource = json!({"resourceType": "ClientApplication", "name": "Nightly export"});
    for (k, v) in client.as_object().unwrap() {
        resource[k] = v.clone();
    }
    let created = post(resource).await;
    assert!(created.get("secret").is_none());
    let id = created["id"].as_str().unwrap().to_owned();
    let reference = json!({"reference": format!("ClientApplication/{id}")});
    post(json!({"resourceType": "ProjectMembership",
                "project": {"reference": format!("Project/{}", c.project)},
                "user": reference, "profile": reference}))
    .await;
    id
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The claims of a good assertion of `client` for `server`.
fn claims(server: &TestServer, client: &str) -> Value {
    json!({"iss": client, "sub": client, "aud": server.url("oauth2/token"),
           "exp": now() + 240, "iat": now(), "jti": uuid::Uuid::new_v4().to_string()})
}

fn sign(key: &ClientKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

/// POST /oauth2/token with `form`: `(status, Cache-Control, Pragma, body)`.
async fn token_request(server: &TestServer, form: &[(&str, &str)]) -> (u16, String, String, Value) {
    let res = server.client.post(server.url("oauth2/token")).form(form).send().await.unwrap();
    let header = |name: &str| {
        res.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    };
    let (cache, pragma) = (header("cache-control"), header("pragma"));
    let (status, body) = json_of(res).await;
    (status, cache, pragma, body)
}

/// The backend services token request with `assertion` and `scope`.
async fn backend_token(server: &TestServer, assertion: &str, scope: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", scope),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ];
    let (status, _, _, body) = token_request(server, &form).await;
    (status, body)
}

/// Asserts an RFC 6749 error response: status, `error`, and a description containing `hint`.
fn assert_oauth_error(got: (u16, Value), status: u16, error: &str, hint: &str) {
    let (got_status, body) = got;
    assert_eq!(got_status, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(hint), "expected '{hint}' in: {body}");
}

async fn get_as(server: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let res = server.client.get(server.fhir_url(path)).bearer_auth(token).send().await.unwrap();
    json_of(res).await
}

#[tokio::test]
async fn a_backend_service_signs_in_with_rs384_or_es384_from_its_jwks_uri() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let keys = JwksServer::start(&jwks(&[&rsa, &ec]), "public, max-age=300").await;
    let id = register_client(&server, &c, json!({"jwksUri": keys.url})).await;
    // A Patient in the clinic for the service to find.
    let res = server
        .client
        .post(server.fhir_url("Patient"))
        .bearer_auth(&c.token)
        .header("content-type", "application/fhir+json")
        .json(&patient("Backend"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let fetches = server.engine.jwks_fetches();

    let assertion = sign(&rsa, &claims(&server, &id));
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", "system/*.rs"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.as_str()),
        ("client_id", id.as_str()),
    ];
    let (status, cache, pragma, tokens) = token_request(&server, &form).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!((cache.as_str(), pragma.as_str()), ("no-store", "no-cache"));
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(tokens["scope"], "system/*.rs");
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    assert!(tokens.get("id_token").is_none(), "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    let payload = access.split('.').nth(1).unwrap();
    let claims_of: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims_of["client_id"], id.as_str());
    assert_eq!(claims_of["scope"], "system/*.rs");

    // The token searches the clinic's data.
    let (status, bundle) = get_as(&server, access, "Patient?family=Backend").await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["total"], 1, "{bundle}");
    assert_eq!(bundle["entry"][0]["resource"]["name"][0]["family"], "Backend");

    // ES384, without client_id (iss names the client), and v1 scopes.
    let assertion = sign(&ec, &claims(&server, &id));
    let (status, tokens) = backend_token(&server, &assertion, "system/Patient.read").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["scope"], "system/Patient.read");
    let (status, _) = get_as(&server, tokens["access_token"].as_str().unwrap(), "Patient").await;
    assert_eq!(status, 200);

    // The JWK Set was fetched once (max-age=300): both assertions used the cached copy.
    assert_eq!(keys.hits(), 1);
    assert_eq!(server.engine.jwks_fetches() - fetches, 1);
}

#[tokio::test]
async fn scopes_decide_what_a_backend_token_may_do() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let rsa = rsa_key("rsa-1");
    let inline = jwks(&[&rsa]).to_string();
    let id = register_client(
        &server,
        &c,
        json!({"extension": [{"url": JWKS_EXTENSION, "valueString": inline}]}),
    )
    .await;
    let token = |scope: &'static str| {
        let assertion = sign(&rsa, &claims(&server, &id));
        let server = &server;
        async move { backend_token(server, &assertion, scope).await }
    };

    // Only the system/ scopes asked for are granted.
    let (status, tokens) = token("openid offline_access patient/*.rs system/Patient.rs").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["scope"], "system/Patient.rs");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(get_as(&server, access, "Patient").await.0, 200);
    let (status, body) = get_as(&server, access, "Observation").await;
    assert_eq!(status, 403, "{body}");
    // `rs` does not create.
    let res = server
        .client
        .request(Method::POST, server.fhir_url("Patient"))
        .bearer_auth(access)
        .header("content-type", "application/fhir+json")
        .json(&patient("Nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // system/*.cruds creates; the client is the author.
    let (status, tokens) = token("system/*.cruds").await;
    assert_eq!(status, 200, "{tokens}");
    let res = server
        .client
        .post(server.fhir_url("Patient"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .header("content-type", "application/fhir+json")
        .header("x-medplum", "extended")
        .json(&patient("Written"))
        .send()
        .await
        .unwrap();
    let (status, created) = json_of(res).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["meta"]["author"]["reference"], format!("ClientApplication/{id}"));

    // No scope, or no system/ scope: 400 invalid_scope.
    assert_oauth_error(token("").await, 400, "invalid_scope", "scope is required");
    assert_oauth_error(token("openid user/*.rs").await, 400, "invalid_scope", "system/");
    let assertion = sign(&rsa, &claims(&server, &id));
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.as_str()),
    ];
    let (status, _, _, body) = token_request(&server, &form).await;
    assert_oauth_error((status, body), 400, "invalid_scope", "scope is required");
    // The refused request did not use up that assertion.
    assert_eq!(backend_token(&server, &assertion, "system/*.rs").await.0, 200);
}

#[tokio::test]
async fn bad_requests_and_bad_assertions_are_refused() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let keys = JwksServer::start(&jwks(&[&rsa, &ec]), "max-age=300").await;
    let id = register_client(&server, &c, json!({"jwksUri": keys.url})).await;
    let keyless = register_client(&server, &c, json!({})).await;
    let scope = "system/*.rs";
    let good = || claims(&server, &id);
    let edited = |edit: &dyn Fn(&mut Value)| {
        let mut c = good();
        edit(&mut c);
        sign(&rsa, &c)
    };
    let without = |name: &str| {
        let mut c = good();
        c.as_object_mut().unwrap().remove(name);
        sign(&rsa, &c)
    };
    let refused = |assertion: String, hint: &'static str| {
        let server = &server;
        async move {
            assert_oauth_error(
                backend_token(server, &assertion, scope).await,
                401,
                "invalid_client",
                hint,
            );
        }
    };

    // The request itself.
    let assertion = sign(&rsa, &good());
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("scope", scope),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.as_str()),
    ];
    let send = |form: Vec<(&'static str, &str)>| {
        let server = &server;
        let form: Vec<(String, String)> =
            form.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        async move {
            let form: Vec<(&str, &str)> =
                form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (status, _, _, body) = token_request(server, &form).await;
            (status, body)
        }
    };
    form[0].1 = "client_credential";
    assert_oauth_error(send(form.clone()).await, 400, "unsupported_grant_type", "grant_type");
    form[0].1 = "client_credentials";
    form[2].1 = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer";
    assert_oauth_error(send(form.clone()).await, 400, "invalid_request", "client_assertion_type");
    form[2].1 = JWT_BEARER;
    assert_oauth_error(send(form[..3].to_vec()).await, 400, "invalid_request", "together");
    let mut with_secret = form.clone();
    with_secret.push(("client_secret", "also-a-secret"));
    assert_oauth_error(send(with_secret).await, 400, "invalid_request", "one client auth");
    let mut other_id = form.clone();
    other_id.push(("client_id", keyless.as_str()));
    assert_oauth_error(send(other_id).await, 401, "invalid_client", "client_id");
    // None of those used the assertion up.
    assert_eq!(send(form.clone()).await.0, 200);
    // ... but now it is used: a replay is refused.
    assert_oauth_error(send(form.clone()).await, 401, "invalid_client", "replayed");

    // Who the assertion claims to be.
    refused("not-a-jwt".into(), "malformed").await;
    let stranger = "00000000-0000-4000-8000-000000000000";
    let mut unknown = claims(&server, stranger);
    unknown["aud"] = good()["aud"].clone();
    refused(sign(&rsa, &unknown), "Unknown client").await;
    refused(edited(&|c| c["sub"] = json!(keyless)), "sub").await;
    refused(without("iss"), "iss").await;
    // A client with no registered keys.
    let mut k = claims(&server, &keyless);
    k["jti"] = json!("k");
    refused(sign(&rsa, &k), "no registered public keys").await;

    // The signature and its key.
    refused(sign(&rsa_key("rsa-unknown"), &good()), "no key with kid 'rsa-unknown'").await;
    let mut wrong_kid = rsa_key("ec-1");
    wrong_kid.alg = Algorithm::RS384;
    refused(sign(&wrong_kid, &good()), "cannot verify RS384").await;
    refused(sign(&ec_key("ec-1"), &good()), "signature").await;
    let mut rs256 = rsa_key("rsa-1");
    rs256.alg = Algorithm::RS256;
    refused(sign(&rs256, &good()), "'RS256' is not allowed").await;
    let hs256 = ClientKey {
        kid: "rsa-1".into(),
        alg: Algorithm::HS256,
        encoding: EncodingKey::from_secret(rsa.jwk["n"].as_str().unwrap().as_bytes()).unwrap(),
        jwk: Value::Null,
    };
    refused(sign(&hs256, &good()), "'HS256' is not allowed").await;
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!("{}.{}.", enc(&json!({"alg": "none", "kid": "rsa-1"})), enc(&good()));
    refused(none, "'none' is not allowed").await;
    let mut no_kid = Header::new(Algorithm::RS384);
    no_kid.kid = None;
    refused(jsonwebtoken::encode(&no_kid, &good(), &rsa.encoding).unwrap(), "no kid").await;
    // A jku other than the registered jwksUri.
    let mut jku = Header::new(Algorithm::RS384);
    jku.kid = Some("rsa-1".into());
    jku.jku = Some("http://127.0.0.1:1/evil.json".into());
    refused(jsonwebtoken::encode(&jku, &good(), &rsa.encoding).unwrap(), "jku").await;

    // The claims.
    refused(edited(&|c| c["aud"] = json!(server.url("oauth2/token/"))), "aud").await;
    refused(edited(&|c| c["aud"] = json!(server.base)), "aud").await;
    refused(edited(&|c| c["exp"] = json!(now() - 120)), "expired").await;
    refused(edited(&|c| c["exp"] = json!(now() + 3600)), "five minutes").await;
    refused(without("exp"), "no exp").await;
    refused(edited(&|c| c["nbf"] = json!(now() + 600)), "not valid yet").await;
    refused(without("jti"), "jti").await;

    // Every refusal above used the cached JWK Set.
    assert_eq!(keys.hits(), 1);
}

#[tokio::test]
async fn the_jwks_cache_follows_cache_control_and_refetches_for_new_kids() {
    let server = TestServer::start().await;
    server.engine.set_jwks_cache_policy(kiln_engine::client_assertion::JwksCachePolicy {
        refetch_interval: Duration::from_secs(2),
        ..Default::default()
    });
    let c = clinic(&server).await;
    let (old, new) = (rsa_key("2024"), ec_key("2025"));
    let keys = JwksServer::start(&jwks(&[&old]), "no-store").await;
    let id = register_client(&server, &c, json!({"jwksUri": keys.url})).await;
    let try_with = |key: &ClientKey| {
        let assertion = sign(key, &claims(&server, &id));
        let server = &server;
        async move { backend_token(server, &assertion, "system/*.rs").await }
    };

    // no-store: every assertion fetches.
    assert_eq!(try_with(&old).await.0, 200);
    assert_eq!(try_with(&old).await.0, 200);
    assert_eq!(keys.hits(), 2);

    // max-age=1: cached for a second, then fetched again.
    keys.serve(200, jwks(&[&old]).to_string(), "max-age=1");
    assert_eq!(try_with(&old).await.0, 200);
    assert_eq!(try_with(&old).await.0, 200);
    assert_eq!(keys.hits(), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    keys.serve(200, jwks(&[&old]).to_string(), "max-age=300");
    assert_eq!(try_with(&old).await.0, 200);
    assert_eq!(keys.hits(), 4);

    // The client rotates to a new key. Just after a fetch, an unknown kid does not refetch...
    keys.serve(200, jwks(&[&old, &new]).to_string(), "max-age=300");
    assert_oauth_error(try_with(&new).await, 401, "invalid_client", "no key with kid '2025'");
    assert_eq!(keys.hits(), 4);
    // ... once the refetch interval has passed it does, and the new key works.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(try_with(&new).await.0, 200);
    assert_eq!(keys.hits(), 5);
    // A kid that is still unknown refetches at most once per interval.
    for _ in 0..3 {
        let (status, _) = try_with(&rsa_key("nobody")).await;
        assert_eq!(status, 401);
    }
    assert_eq!(keys.hits(), 5);
    assert_eq!(try_with(&old).await.0, 200);
    assert_eq!(keys.hits(), 5, "max-age=300 is honoured");

    // An unreachable or broken JWK Set: 401 invalid_client, nothing cached.
    let broken = JwksServer::start(&json!({}), "no-store").await;
    let id2 = register_client(&server, &c, json!({"jwksUri": broken.url})).await;
    let try2 = || {
        let assertion = sign(&old, &claims(&server, &id2));
        let server = &server;
        async move { backend_token(server, &assertion, "system/*.rs").await }
    };
    assert_oauth_error(try2().await, 401, "invalid_client", "no \"keys\" array");
    broken.serve(500, "oops".into(), "no-store");
    assert_oauth_error(try2().await, 401, "invalid_client", "HTTP status 500");
    let huge = json!({"keys": [old.jwk], "padding": "x".repeat(300 * 1024)});
    broken.serve(200, huge.to_string(), "no-store");
    assert_oauth_error(try2().await, 401, "invalid_client", "larger than");
    broken.serve(200, jwks(&[&old]).to_string(), "no-store");
    assert_eq!(try2().await.0, 200);
    // Nobody listening: the reason, without the network's details.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let id3 = register_client(&server, &c, json!({"jwksUri": gone})).await;
    let (status, body) =
        backend_token(&server, &sign(&old, &claims(&server, &id3)), "system/*.rs").await;
    assert_oauth_error((status, body.clone()), 401, "invalid_client", "request failed");
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
}

#[tokio::test]
async fn inline_keys_need_no_fetch() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let ec = ec_key("inline-ec");
    let inline = jwks(&[&ec]).to_string();
    let id = register_client(
        &server,
        &c,
        json!({"extension": [{"url": JWKS_EXTENSION, "valueString": inline}]}),
    )
    .await;
    let before = server.engine.jwks_fetches();
    let (status, tokens) =
        backend_token(&server, &sign(&ec, &claims(&server, &id)), "system/Patient.rs").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(server.engine.jwks_fetches(), before);
    // Inline keys have no URL a jku could name.
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some("inline-ec".into());
    header.jku = Some("http://127.0.0.1:1/jwks.json".into());
    let assertion = jsonwebtoken::encode(&header, &claims(&server, &id), &ec.encoding).unwrap();
    assert_oauth_error(
        backend_token(&server, &assertion, "system/Patient.rs").await,
        401,
        "invalid_client",
        "jku",
    );
    // A broken inline set.
    let broken = register_client(
        &server,
        &c,
        json!({"extension": [{"url": JWKS_EXTENSION, "valueString": "{not json"}]}),
    )
    .await;
    assert_oauth_error(
        backend_token(&server, &sign(&ec, &claims(&server, &broken)), "system/Patient.rs").await,
        401,
        "invalid_client",
        "JWK Set is invalid",
    );
    // Introspection sees the backend token's scope and client.
    let access = tokens["access_token"].as_str().unwrap();
    let res = server
        .client
        .post(server.url("oauth2/introspect"))
        .bearer_auth(&c.token)
        .form(&[("token", access)])
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["scope"], "system/Patient.rs");
    assert_eq!(body["client_id"], id.as_str());
    // The client itself may introspect and revoke, authenticating with a fresh assertion.
    let as_client = |extra: (&'static str, String)| {
        let assertion = sign(&ec, &claims(&server, &id));
        let path = extra.0;
        let token = extra.1;
        let server = &server;
        async move {
            let res = server
                .client
                .post(server.url(path))
                .form(&[
                    ("token", token.as_str()),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", assertion.as_str()),
                ])
                .send()
                .await
                .unwrap();
            json_of(res).await
        }
    };
    let (status, body) = as_client(("oauth2/introspect", access.to_owned())).await;
    assert_eq!((status, body["active"].as_bool()), (200, Some(true)), "{body}");
    let (status, _) = as_client(("oauth2/revoke", access.to_owned())).await;
    assert_eq!(status, 200);
    let (status, _) = get_as(&server, access, "Patient").await;
    assert_eq!(status, 401, "revoked by its own client");
    // Its id alone is not enough: the client has keys.
    let res = server
        .client
        .post(server.url("oauth2/revoke"))
        .form(&[("token", access), ("client_id", id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

/// The g10 flow: a backend service with `system/` read scopes runs a Group export and gets the
/// types its scopes cover, and nothing else.
#[tokio::test]
async fn a_backend_service_exports_a_group_within_its_scopes() {
    let server = TestServer::start().await;
    let c = clinic(&server).await;
    let post = |resource: Value| {
        let server = &server;
        let token = c.token.clone();
        async move {
            let ty = resource["resourceType"].as_str().unwrap().to_owned();
            let res = server
                .client
                .post(server.fhir_url(&ty))
                .bearer_auth(&token)
                .json(&resource)
                .send()
                .await
                .unwrap();
            let (status, body) = json_of(res).await;
            assert_eq!(status, 201, "{body}");
            body["id"].as_str().unwrap().to_owned()
        }
    };
    let p = post(patient("Member")).await;
    post(json!({"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
                "subject": {"reference": format!("Patient/{p}")}}))
    .await;
    post(json!({"resourceType": "Condition", "code": {"text": "flu"},
                "subject": {"reference": format!("Patient/{p}")}}))
    .await;
    let group = post(json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{p}")}}]}))
    .await;
    let ec = ec_key("bulk-ec");
    let id = register_client(
        &server,
        &c,
        json!({"extension": [{"url": JWKS_EXTENSION, "valueString": jwks(&[&ec]).to_string()}]}),
    )
    .await;
    let (status, tokens) = backend_token(
        &server,
        &sign(&ec, &claims(&server, &id)),
        "system/Patient.rs system/Observation.rs system/Group.rs",
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let kick = |path: String| {
        server
            .client
            .get(server.fhir_url(&path))
            .bearer_auth(&token)
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
            .send()
    };
    // A type outside the scopes is refused at kick-off.
    let res = kick(format!("Group/{group}/$export?_type=Condition")).await.unwrap();
    assert_eq!(res.status(), 403);
    let res = kick(format!("Group/{group}/$export")).await.unwrap();
    assert_eq!(res.status(), 202);
    let url = res.headers()["content-location"].to_str().unwrap().to_owned();
    let res = crate::support::job_result(&server, &token, &url).await;
    assert_eq!(res.status(), 200);
    let manifest: Value = res.json().await.unwrap();
    let mut types: Vec<&str> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    types.sort();
    // The Group is in its member's compartment (`Group.member`); the Condition is not in scope.
    assert_eq!(types, vec!["Group", "Observation", "Patient"], "{manifest}");
}
