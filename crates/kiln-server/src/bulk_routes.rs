//! Bulk jobs over HTTP: `$export` kick-off at the three levels, `$import`, batch Bundles sent
//! with `Prefer: respond-async`, the status URL's answers for them (progress, manifest,
//! failure, deletion) and the file downloads. The rules live in `kiln_engine::export`,
//! `import` and `async_batch`; this module speaks HTTP.

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_engine::accounts::Authenticated;
use kiln_engine::export::{ExportLevel, ExportStatus};
use kiln_model::{Issue, IssueCode};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{parse_json, require_json};
use crate::response::fhir_json;

/// The `Prefer` header's tokens, lower-cased (several headers or comma-separated).
fn prefer(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .map(|t| t.trim().to_ascii_lowercase().replace(' ', ""))
        .filter(|t| !t.is_empty())
        .collect()
}

/// Kick-off for `GET|POST [base]/$export`, `Patient/$export`, `Group/{id}/$export`: 202 with
/// the status URL in `Content-Location`.
pub async fn kick_off(
    state: &AppState,
    who: &Authenticated,
    level: ExportLevel,
    uri: &OriginalUri,
    headers: &HeaderMap,
    query: &[(String, String)],
    body: &[u8],
) -> Result<Response, ApiError> {
    let prefer = prefer(headers);
    if !prefer.iter().any(|t| t == "respond-async") {
        return Err(ApiError::bad_request(
            "$export runs asynchronously: send the header 'Prefer: respond-async'",
        ));
    }
    let lenient = prefer.iter().any(|t| t == "handling=lenient");
    // `Accept` must allow FHIR JSON (the status and error responses); NDJSON comes later.
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        let ok = accept.split(',').any(|part| {
            let media = part.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            matches!(
                media.as_str(),
                "application/fhir+json" | "application/json" | "*/*" | "application/*" | ""
            )
        });
        if !ok {
            return Err(ApiError::status(
                StatusCode::NOT_ACCEPTABLE,
                IssueCode::NotSupported,
                format!("$export answers application/fhir+json, not '{accept}'"),
            ));
        }
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        require_json(headers)?;
        Some(parse_json(body)?)
    };
    let path_and_query = uri.0.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request_url = state.engine.base_url().join(path_and_query.trim_start_matches('/'));
    let id =
        state.engine.start_export(who, level, query, body.as_ref(), lenient, &request_url).await?;
    Ok(accepted(state, &id, "Export"))
}

/// `POST [base]` with `Prefer: respond-async`: a batch or transaction Bundle processed as a
/// job; 202 with the status URL, which answers the response Bundle when done.
pub async fn batch(
    state: &AppState,
    who: &Authenticated,
    uri: &OriginalUri,
    ret: kiln_engine::EntryReturn,
    body: &[u8],
) -> Result<Response, ApiError> {
    let path_and_query = uri.0.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request_url = state.engine.base_url().join(path_and_query.trim_start_matches('/'));
    let id = state.engine.start_batch(who, body, ret, &request_url).await?;
    Ok(accepted(state, &id, "Bundle"))
}

/// Whether the request asks for asynchronous processing (`Prefer: respond-async`).
pub fn wants_async(headers: &HeaderMap) -> bool {
    prefer(headers).iter().any(|t| t == "respond-async")
}

/// Kick-off for `POST [base]/$import` (a Parameters body): 202 with the status URL.
pub async fn import(
    state: &AppState,
    who: &Authenticated,
    uri: &OriginalUri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let prefer = prefer(headers);
    if !prefer.iter().any(|t| t == "respond-async") {
        return Err(ApiError::bad_request(
            "$import runs asynchronously: send the header 'Prefer: respond-async'",
        ));
    }
    let lenient = prefer.iter().any(|t| t == "handling=lenient");
    require_json(headers)?;
    let body = parse_json(body)?;
    let path_and_query = uri.0.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request_url = state.engine.base_url().join(path_and_query.trim_start_matches('/'));
    let id = state.engine.start_import(who, Some(&body), lenient, &request_url).await?;
    Ok(accepted(state, &id, "Import"))
}

/// 202 with the job's status URL in `Content-Location`.
fn accepted(state: &AppState, id: &str, what: &str) -> Response {
    let url = format!("{}/job/{id}/status", state.engine.base_url().fhir_base());
    let oo = kiln_model::operation_outcome_for_status(
        200,
        &[Issue::information(
            IssueCode::Informational,
            format!("{what} accepted as job {id}; poll {url}"),
        )],
    );
    let mut response = fhir_json(StatusCode::ACCEPTED, &oo, false);
    if let Ok(value) = HeaderValue::from_str(&url) {
        response.headers_mut().insert(header::CONTENT_LOCATION, value);
    }
    response
}

/// The status URL's answer for a bulk job; `None` for other jobs.
pub async fn status(
    state: &AppState,
    who: &Authenticated,
    id: &str,
) -> Result<Option<Response>, ApiError> {
    let Some(status) = state.engine.export_status(who, id).await? else { return Ok(None) };
    Ok(Some(match status {
        ExportStatus::Running(progress) => {
            let mut response = StatusCode::ACCEPTED.into_response();
            if let Ok(value) = HeaderValue::from_str(&progress) {
                response.headers_mut().insert("x-progress", value);
            }
            // A second: a status answer costs one read of the job, and most imports and
            // exports of a few hundred thousand resources take seconds, not minutes.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        ExportStatus::Complete { manifest, expires } => {
            let body = serde_json::to_vec(&manifest).unwrap_or_default();
            let mut response = (StatusCode::OK, body).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(at) = expires
                .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e).ok())
                .map(|at| httpdate::fmt_http_date(at.with_timezone(&chrono::Utc).into()))
                .and_then(|text| HeaderValue::from_str(&text).ok())
            {
                headers.insert(header::EXPIRES, at);
            }
            response
        }
        ExportStatus::Response { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            crate::response::fhir_bytes(status, body, false)
        }
        ExportStatus::Failed(reason) => {
            let oo = kiln_model::operation_outcome_for_status(
                500,
                &[Issue::error(IssueCode::Exception, format!("The export failed: {reason}"))],
            );
            fhir_json(StatusCode::INTERNAL_SERVER_ERROR, &oo, false)
        }
    }))
}

/// `GET /job/{id}/file/{n}`: one NDJSON file of a finished bulk job, streamed: to the
/// membership that asked for it (bearer token), or to anyone holding a signed link that has
/// not expired (`project`, `exp`, `sig`; `kiln serve --export-signed-urls`).
pub async fn file(
    State(state): State<AppState>,
    crate::extract::FhirPath((id, n)): crate::extract::FhirPath<(String, String)>,
    crate::extract::QueryPairs(query): crate::extract::QueryPairs,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let blob = match (get("project"), get("exp"), get("sig")) {
        (Some(project), Some(exp), Some(sig)) => {
            state.engine.signed_file(project, &id, &n, exp, sig).await?
        }
        _ => {
            let (mut parts, _) = request.into_parts();
            let crate::extract::Auth(who) =
                <crate::extract::Auth as axum::extract::FromRequestParts<AppState>>::from_request_parts(
                    &mut parts, &state,
                )
                .await?;
            state.engine.export_file(&who, &id, &n).await?
        }
    };
    let stream = tokio_util::io::ReaderStream::with_capacity(blob.reader, 64 * 1024);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(blob.len));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(response)
}
