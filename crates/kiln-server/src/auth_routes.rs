//! Login and token endpoints with Medplum's contract: `/auth/login`, `/auth/profile`,
//! `/auth/me`, `/auth/revoke`, registration (`/auth/newuser`, `newproject`, `newpatient`),
//! `/auth/resetpassword`, `/auth/setpassword`, `/auth/changepassword`, `/auth/mfa/*`,
//! `/oauth2/token` (authorization code, refresh token, client credentials by secret or by a
//! JWT client assertion: SMART Backend Services), `/oauth2/logout`,
//! `/oauth2/introspect` (RFC 7662), `/oauth2/revoke` (RFC 7009), and the public JWKS.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_engine::accounts::{LoginRequest, OAuthError, TokenClient};
use kiln_engine::admin::{ChangePasswordRequest, SetPasswordRequest};
use kiln_engine::oauth::{Introspector, invalid_client};
use kiln_engine::registration::{
    ClientInfo, NewPatientRequest, NewProjectRequest, NewUserRequest, ResetPasswordRequest,
};
use serde_json::{Value, json};

use crate::AppState;
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::extract::{Auth, LimitedBody, basic_credentials, content_type, parse_json};

type ApiResult = Result<Response, ApiError>;

pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    match content_type(headers).as_deref() {
        Some("application/json" | "application/fhir+json") => {}
        _ => {
            return Err(ApiError::status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                kiln_model::IssueCode::NotSupported,
                "Send application/json",
            ));
        }
    }
    let value = parse_json(body)?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

pub(crate) fn no_store(mut res: Response) -> Response {
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

pub async fn login(
    State(state): State<AppState>,
    ClientIp(peer): ClientIp,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let mut req: LoginRequest = json_body(&headers, &body)?;
    req.user_agent = user_agent(&headers);
    let out = state.engine.login(req, Some(peer.to_string())).await?;
    Ok(no_store(Json(out).into_response()))
}

/// The request's `User-Agent`, if it is text (cut to 512 bytes).
pub(crate) fn user_agent(headers: &HeaderMap) -> Option<String> {
    let agent = headers.get(header::USER_AGENT)?.to_str().ok()?;
    let mut end = agent.len().min(512);
    while !agent.is_char_boundary(end) {
        end -= 1;
    }
    Some(agent[..end].to_owned())
}

fn client_info(peer: std::net::IpAddr, headers: &HeaderMap) -> ClientInfo {
    ClientInfo { remote_addr: Some(peer.to_string()), user_agent: user_agent(headers) }
}

/// `POST /auth/newuser`: `{login}` for a new User without a membership yet.
pub async fn new_user(
    State(state): State<AppState>,
    ClientIp(peer): ClientIp,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: NewUserRequest = json_body(&headers, &body)?;
    let out = state.engine.new_user(req, client_info(peer, &headers)).await?;
    Ok(no_store(Json(out).into_response()))
}

/// `POST /auth/newproject` `{login, projectName}`: `{login, code}`.
pub async fn new_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: NewProjectRequest = json_body(&headers, &body)?;
    let out = state.engine.new_project(req).await?;
    Ok(no_store(Json(out).into_response()))
}

/// `POST /auth/newpatient` `{login, projectId}`: `{login, code}`.
pub async fn new_patient(
    State(state): State<AppState>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: NewPatientRequest = json_body(&headers, &body)?;
    let out = state.engine.new_patient(req).await?;
    Ok(no_store(Json(out).into_response()))
}

/// `POST /auth/resetpassword` `{email, projectId?}`: "All OK" whether or not the account
/// exists; the mail goes out when it does.
pub async fn reset_password(
    State(state): State<AppState>,
    ClientIp(peer): ClientIp,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: ResetPasswordRequest = json_body(&headers, &body)?;
    state.engine.reset_password(req, client_info(peer, &headers)).await?;
    Ok(no_store(all_ok("All OK")))
}

#[derive(serde::Deserialize)]
pub struct RevokeRequest {
    #[serde(default, rename = "loginId")]
    login_id: String,
}

/// `POST /auth/revoke` `{loginId}`: ends one of the caller's own sessions.
pub async fn revoke(
    State(state): State<AppState>,
    Auth(who): Auth,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: RevokeRequest = json_body(&headers, &body)?;
    state.engine.revoke_login(&who, &req.login_id).await?;
    Ok(no_store(all_ok("All OK")))
}

#[derive(serde::Deserialize)]
pub struct MfaRequest {
    #[serde(default)]
    login: String,
    #[serde(default)]
    token: String,
}

/// `GET /auth/mfa/status`: `{enrolled, enrollUri?}`.
pub async fn mfa_status(State(state): State<AppState>, Auth(who): Auth) -> ApiResult {
    let out = state.engine.mfa_status(&who).await?;
    Ok(no_store(Json(out).into_response()))
}

/// `POST /auth/mfa/enroll` `{token}`.
pub async fn mfa_enroll(
    State(state): State<AppState>,
    ClientIp(peer): ClientIp,
    Auth(who): Auth,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: MfaRequest = json_body(&headers, &body)?;
    state.engine.mfa_enroll(&who, &req.token, Some(&peer.to_string())).await?;
    Ok(no_store(all_ok("All OK")))
}

/// `POST /auth/mfa/disable` `{token}`.
pub async fn mfa_disable(
    State(state): State<AppState>,
    ClientIp(peer): ClientIp,
    Auth(who): Auth,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: MfaRequest = json_body(&headers, &body)?;
    state.engine.mfa_disable(&who, &req.token, Some(&peer.to_string())).await?;
    Ok(no_store(all_ok("All OK")))
}

/// `POST /auth/mfa/verify` `{login, token}`: `{login, code}` or `{login, memberships}`.
pub async fn mfa_verify(
    State(state): State<AppState>,
    ClientIp(peer): ClientIp,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: MfaRequest = json_body(&headers, &body)?;
    let out = state.engine.mfa_verify(&req.login, &req.token, Some(&peer.to_string())).await?;
    Ok(no_store(Json(out).into_response()))
}

#[derive(serde::Deserialize)]
pub struct ProfileRequest {
    #[serde(default)]
    login: String,
    #[serde(default)]
    profile: String,
}

pub async fn profile(
    State(state): State<AppState>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: ProfileRequest = json_body(&headers, &body)?;
    let out = state.engine.select_profile(&req.login, &req.profile).await?;
    Ok(no_store(Json(out).into_response()))
}

pub async fn me(State(state): State<AppState>, Auth(who): Auth) -> ApiResult {
    let out = state.engine.me(&who).await?;
    Ok(no_store(Json(out).into_response()))
}

/// `POST /auth/setpassword` `{id, secret, password}`: redeems a mailed link.
pub async fn set_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: SetPasswordRequest = json_body(&headers, &body)?;
    state.engine.set_password(req).await?;
    Ok(no_store(all_ok("Password set")))
}

/// `POST /auth/changepassword` `{oldPassword, newPassword}` for the signed-in user.
pub async fn change_password(
    State(state): State<AppState>,
    Auth(who): Auth,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: ChangePasswordRequest = json_body(&headers, &body)?;
    state.engine.change_password(&who, req).await?;
    Ok(no_store(all_ok("Password changed")))
}

/// 200 with an informational OperationOutcome, as Medplum answers these calls.
pub(crate) fn all_ok(text: &str) -> Response {
    let oo = kiln_model::operation_outcome_for_status(
        200,
        &[kiln_model::Issue::information(kiln_model::IssueCode::Informational, text)],
    );
    crate::response::fhir_json(StatusCode::OK, &oo, false)
}

pub async fn logout(State(state): State<AppState>, Auth(who): Auth) -> ApiResult {
    state.engine.logout(&who).await?;
    Ok(Json(json!({ "ok": true })).into_response())
}

/// `POST /oauth2/token` (`application/x-www-form-urlencoded`, RFC 6749 §4.1.3 and §6).
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let form = oauth_form(&headers, &body)?;
    let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let out: Value = match get("grant_type") {
        Some("authorization_code") => {
            let Some(code) = get("code") else {
                return Err(OAuthError {
                    error: "invalid_request",
                    description: "Missing code".into(),
                    status: 400,
                }
                .into());
            };
            let client = token_client(&headers, &form)?;
            state
                .engine
                .exchange_code(code, get("code_verifier"), &client, get("redirect_uri"))
                .await?
        }
        Some("client_credentials")
            if get("client_assertion_type").is_some() || get("client_assertion").is_some() =>
        {
            // SMART Backend Services: private_key_jwt (RFC 7523 §2.2), and no other method
            // alongside it (RFC 6749 §2.3).
            if headers.contains_key(header::AUTHORIZATION) || get("client_secret").is_some() {
                return Err(invalid_request(
                    "Use one client authentication method: a client assertion or a secret",
                )
                .into());
            }
            let (Some(assertion_type), Some(assertion)) =
                (get("client_assertion_type"), get("client_assertion"))
            else {
                return Err(invalid_request(
                    "client_assertion_type and client_assertion must come together",
                )
                .into());
            };
            state
                .engine
                .client_credentials_assertion(
                    get("client_id"),
                    assertion_type,
                    assertion,
                    get("scope"),
                )
                .await?
        }
        Some("client_credentials") => {
            // client_secret_basic, else client_secret_post (RFC 6749 §2.3.1).
            let basic = basic_credentials(&headers).map_err(|message| OAuthError {
                error: "invalid_client",
                description: message.into(),
                status: 401,
            })?;
            let (client_id, secret) = match basic {
                Some(credentials) => credentials,
                None => match (get("client_id"), get("client_secret")) {
                    (Some(id), Some(secret)) => (id.to_owned(), secret.to_owned()),
                    _ => {
                        return Err(OAuthError {
                            error: "invalid_client",
                            description: "Missing client credentials".into(),
                            status: 401,
                        }
                        .into());
                    }
                },
            };
            state.engine.client_credentials(&client_id, &secret, get("scope")).await?
        }
        Some("refresh_token") => {
            let Some(token) = get("refresh_token") else {
                return Err(OAuthError {
                    error: "invalid_request",
                    description: "Missing refresh_token".into(),
                    status: 400,
                }
                .into());
            };
            let client = token_client(&headers, &form)?;
            state.engine.refresh(token, &client, get("scope")).await?
        }
        Some(other) => {
            return Err(OAuthError {
                error: "unsupported_grant_type",
                description: format!("Unsupported grant_type '{other}'"),
                status: 400,
            }
            .into());
        }
        None => {
            return Err(OAuthError {
                error: "invalid_request",
                description: "Missing grant_type".into(),
                status: 400,
            }
            .into());
        }
    };
    Ok(no_store(Json(out).into_response()))
}

/// The body of an OAuth endpoint: an `application/x-www-form-urlencoded` form, else 400
/// `invalid_request`.
fn oauth_form(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    if content_type(headers).as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(invalid_request("Send application/x-www-form-urlencoded"));
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    // RFC 6749 §3.2: request parameters must not be included more than once.
    for (i, (name, _)) in form.iter().enumerate() {
        if form[..i].iter().any(|(earlier, _)| earlier == name) {
            return Err(invalid_request(&format!("Parameter {name} is repeated")));
        }
    }
    Ok(form)
}

fn invalid_request(description: &str) -> OAuthError {
    OAuthError { error: "invalid_request", description: description.to_owned(), status: 400 }
}

/// How the client identified itself at the token endpoint: HTTP Basic
/// (`client_secret_basic`), else the form's `client_id` with `client_secret`
/// (`client_secret_post`) or with a `client_assertion` (`private_key_jwt`), or alone (a public
/// client). Malformed Basic credentials are a 401 `invalid_client`.
fn token_client(headers: &HeaderMap, form: &[(String, String)]) -> Result<TokenClient, OAuthError> {
    let get = |name: &str| {
        form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).filter(|v| !v.is_empty())
    };
    let assertion = match (get("client_assertion_type"), get("client_assertion")) {
        (Some(ty), Some(jwt)) => Some((ty, jwt)),
        (None, None) => None,
        _ => return Err(invalid_request("Send client_assertion_type with client_assertion")),
    };
    if let Some((id, secret)) = basic_credentials(headers).map_err(invalid_client)? {
        if assertion.is_some() {
            return Err(invalid_request("Use one way to authenticate the client"));
        }
        return Ok(TokenClient { client_id: Some(id), secret: Some(secret), assertion: None });
    }
    let secret = get("client_secret");
    if secret.is_some() && assertion.is_some() {
        return Err(invalid_request("Use one way to authenticate the client"));
    }
    Ok(TokenClient { client_id: get("client_id"), secret, assertion })
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        _ => None,
    }
}

/// `POST /oauth2/introspect` (RFC 7662), form `token` and optional `token_type_hint`. The
/// caller is a confidential client (Basic, `client_secret_post` or `private_key_jwt`) or holds a bearer
/// access token; anyone else gets 401 `invalid_client`. Answers the token's claims with
/// `active: true`, or `{"active": false}`.
pub async fn introspect(
    State(state): State<AppState>,
    ClientIp(peer): ClientIp,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let form = oauth_form(&headers, &body)?;
    let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let credentials = token_client(&headers, &form)?;
    let authenticates = credentials.secret.is_some() || credentials.assertion.is_some();
    let caller = match (authenticates, bearer(&headers)) {
        (true, _) => Introspector::Client(state.engine.oauth_client(&credentials).await?),
        (_, Some(token)) => {
            let who = state.engine.authenticate(token).await.map_err(|e| match e {
                kiln_engine::EngineError::Unauthorized(m) => invalid_client(&m),
                other => OAuthError::from(other),
            })?;
            if !who.access.ip_allowed(Some(peer)) {
                return Err(OAuthError {
                    error: "access_denied",
                    description: "Your access policy does not allow access from this address"
                        .into(),
                    status: 403,
                }
                .into());
            }
            Introspector::Bearer(who)
        }
        _ => {
            return Err(invalid_client(
                "Authenticate as a confidential client or with a bearer token",
            )
            .into());
        }
    };
    let Some(token) = get("token") else { return Err(invalid_request("Missing token").into()) };
    let out = state.engine.introspect(&caller, token, get("token_type_hint")).await?;
    Ok(no_store(Json(out).into_response()))
}

/// `POST /oauth2/revoke` (RFC 7009), form `token` and optional `token_type_hint`, from a
/// confidential client (Basic, `client_secret_post` or `private_key_jwt`) or a public one
/// (`client_id` alone).
/// 200 with an empty body whether or not the token was known (§2.2).
pub async fn revoke_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let form = oauth_form(&headers, &body)?;
    let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let client = state.engine.oauth_client(&token_client(&headers, &form)?).await?;
    let Some(token) = get("token") else { return Err(invalid_request("Missing token").into()) };
    state.engine.revoke_token(&client, token, get("token_type_hint")).await?;
    Ok(no_store(StatusCode::OK.into_response()))
}

pub async fn jwks(State(state): State<AppState>) -> Response {
    Json(state.engine.auth().jwks()).into_response()
}
