//! The HTTP side of the terminology operations (`kiln_engine::TerminologyOp`: `$expand`,
//! `$validate-code`, `$lookup`, `$subsumes`, `$translate`), at type and instance level, as
//! GET (query parameters) or POST (a `Parameters` body), and the answer to any other
//! `GET /{type}/{$op}` or `GET /{type}/{id}/{$op}`: only operations without side effects may
//! be called with GET.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kiln_engine::accounts::Authenticated;
use kiln_engine::{OpParams, TerminologyOp};
use kiln_model::IssueCode;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{negotiate, parse_json, require_json};
use crate::response::{OutputOptions, fhir_json};

/// Whether `op` on `ty` is a terminology operation.
pub(crate) fn handles(ty: &str, op: &str) -> bool {
    TerminologyOp::parse(ty, op).is_some()
}

/// Runs the terminology operation `op` on `ty` (or its instance `id`). A non-empty `body`
/// must be a `Parameters` resource; otherwise the query parameters are the input.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    state: &AppState,
    who: &Authenticated,
    ty: &str,
    id: Option<&str>,
    op: &str,
    headers: &HeaderMap,
    query: &[(String, String)],
    body: &[u8],
) -> Result<Response, ApiError> {
    let Some(operation) = TerminologyOp::parse(ty, op) else {
        return Err(unsupported(ty, id, op));
    };
    negotiate(headers, query)?;
    let options = OutputOptions::from_request(query, headers)?;
    let params = if body.iter().all(u8::is_ascii_whitespace) {
        OpParams::from_query(query)
    } else {
        require_json(headers)?;
        OpParams::from_body(parse_json(body)?, query)?
    };
    let out = state.engine.terminology_operation(&who.context(), operation, id, &params).await?;
    Ok(fhir_json(StatusCode::OK, &out, options.pretty))
}

/// `GET /{type}/{$op}` (`id` None) and `GET /{type}/{id}/{$op}` for operations the other
/// GET routes do not serve.
pub(crate) async fn get(
    state: &AppState,
    who: &Authenticated,
    ty: &str,
    id: Option<&str>,
    op: &str,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<Response, ApiError> {
    if handles(ty, op) {
        return run(state, who, ty, id, op, headers, query, &[]).await;
    }
    match op {
        // These change something, or need a body.
        "$validate" | "$reindex" | "$cancel" | "$rotate-secret" | "$import" => {
            Err(ApiError::status(
                StatusCode::METHOD_NOT_ALLOWED,
                IssueCode::NotSupported,
                format!("Operation {op} must be called with POST"),
            ))
        }
        _ => Err(unsupported(ty, id, op)),
    }
}

fn unsupported(ty: &str, id: Option<&str>, op: &str) -> ApiError {
    let on = if id.is_some() { format!("{ty}/{{id}}") } else { ty.to_owned() };
    ApiError::status(
        StatusCode::NOT_FOUND,
        IssueCode::NotSupported,
        format!("Operation {op} is not supported on {on}"),
    )
}
