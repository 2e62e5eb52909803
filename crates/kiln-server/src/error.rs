//! `ApiError`: the only place that turns failures into HTTP responses. Every error leaves as an
//! `OperationOutcome` (`application/fhir+json`), OAuth endpoints excepted (RFC 6749 JSON).
//! Internal errors are logged here, inside the request's span, and never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_engine::EngineError;
use kiln_engine::accounts::OAuthError;
use kiln_model::{Issue, IssueCode, operation_outcome_for_status};

use crate::response::FHIR_JSON;

#[derive(Debug)]
pub enum ApiError {
    Engine(EngineError),
    /// Explicit status with one issue (406, 413, 415 and the like).
    Status(StatusCode, IssueCode, String),
    /// 401 with the `WWW-Authenticate` challenge.
    Unauthenticated {
        message: String,
        invalid_token: bool,
    },
    OAuth(OAuthError),
}

impl ApiError {
    pub fn status(code: StatusCode, issue: IssueCode, message: impl Into<String>) -> ApiError {
        ApiError::Status(code, issue, message.into())
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::Engine(EngineError::invalid(message))
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::Unauthorized(message) => {
                ApiError::Unauthenticated { message, invalid_token: true }
            }
            other => ApiError::Engine(other),
        }
    }
}

impl From<OAuthError> for ApiError {
    fn from(e: OAuthError) -> ApiError {
        ApiError::OAuth(e)
    }
}

fn outcome_response(status: StatusCode, issues: &[Issue]) -> Response {
    let body = serde_json::to_vec(&operation_outcome_for_status(status.as_u16(), issues))
        .unwrap_or_default();
    let mut res = (status, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Engine(e) => {
                if let EngineError::Internal(message) = &e {
                    tracing::error!(error = %message, "internal error");
                }
                let status =
                    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut res = outcome_response(status, &e.issues());
                match &e {
                    EngineError::TooManyRequests { retry_after, .. } => {
                        res.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                    }
                    // A lock conflict that outlasted the retries, or no free database
                    // connection: worth trying again shortly.
                    EngineError::Busy(_) => {
                        res.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    }
                    _ => {}
                }
                res
            }
            ApiError::Status(status, code, message) => {
                outcome_response(status, &[Issue::error(code, message)])
            }
            ApiError::Unauthenticated { message, invalid_token } => {
                let mut res = outcome_response(
                    StatusCode::UNAUTHORIZED,
                    &[Issue::error(IssueCode::Login, message)],
                );
                let challenge = if invalid_token {
                    r#"Bearer realm="kiln", error="invalid_token""#
                } else {
                    r#"Bearer realm="kiln""#
                };
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
                res
            }
            ApiError::OAuth(e) => {
                if e.status >= 500 {
                    tracing::error!(error = %e.description, "internal error in OAuth endpoint");
                }
                let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
                let mut res = (status, axum::Json(e.to_json())).into_response();
                res.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                res
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_store_is_a_503_to_retry_shortly() {
        let res =
            ApiError::Engine(EngineError::Busy("no database connection".into())).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        // Stopped at the query time limit: the same again would be stopped again.
        let res = ApiError::Engine(EngineError::TimedOut("too long".into())).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        let res = ApiError::Engine(EngineError::invalid("bad")).into_response();
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
    }
}
