//! Login and token endpoints with Medplum's contract: `/auth/login`, `/auth/profile`,
//! `/auth/me`, `/oauth2/token`, `/oauth2/logout`, and the public JWKS.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_engine::accounts::{LoginRequest, OAuthError};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Auth, LimitedBody, content_type, parse_json};

type ApiResult = Result<Response, ApiError>;

fn json_body<T: serde::de::DeserializeOwned>(
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

fn no_store(mut res: Response) -> Response {
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: LoginRequest = json_body(&headers, &body)?;
    let out = state.engine.login(req, Some(peer.ip().to_string())).await?;
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
    if content_type(&headers).as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(OAuthError {
            error: "invalid_request",
            description: "Send application/x-www-form-urlencoded".into(),
            status: 400,
        }
        .into());
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
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
            state.engine.exchange_code(code, get("code_verifier")).await?
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
            state.engine.refresh(token).await?
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

pub async fn jwks(State(state): State<AppState>) -> Response {
    Json(state.engine.auth().jwks()).into_response()
}
