//! Request extractors: the bearer-token (or client Basic) check, size-limited bodies, query
//! pairs, and content negotiation. A handler that takes [`Auth`] cannot forget to authenticate.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use kiln_engine::accounts::Authenticated;
use kiln_model::IssueCode;
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;

/// Deepest JSON nesting accepted. FHIR resources stay far below it; the check runs before
/// parsing so hostile input cannot exhaust the stack.
pub const MAX_JSON_DEPTH: usize = 64;

/// The authenticated caller: `Authorization: Bearer <access token>`, or, as Medplum allows,
/// `Authorization: Basic base64(clientId:secret)` of a ClientApplication.
pub struct Auth(pub Authenticated);

/// HTTP Basic credentials from `Authorization`, each part URL-decoded as RFC 6749 §2.3.1
/// prescribes for client credentials. `Ok(None)` when the header is absent or not Basic.
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, &'static str> {
    use base64::Engine as _;
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let encoded = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => rest.trim(),
        _ => return Ok(None),
    };
    let malformed = "Malformed Basic credentials";
    let decoded =
        base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed)?;
    let (id, secret) = decoded.split_once(':').ok_or(malformed)?;
    let form_decode = |part: &str| {
        percent_encoding::percent_decode_str(&part.replace('+', " "))
            .decode_utf8()
            .map(|it| it.into_owned())
            .map_err(|_| malformed)
    };
    Ok(Some((form_decode(id)?, form_decode(secret)?)))
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Auth, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return Err(ApiError::Unauthenticated {
                message: "Authentication required: send an Authorization: Bearer token".into(),
                invalid_token: false,
            });
        };
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("basic") => {
                let credentials = basic_credentials(&parts.headers).map_err(|message| {
                    ApiError::Unauthenticated { message: message.into(), invalid_token: true }
                })?;
                let Some((client_id, secret)) = credentials else {
                    return Err(ApiError::Unauthenticated {
                        message: "Malformed Basic credentials".into(),
                        invalid_token: true,
                    });
                };
                let mut who = state.engine.authenticate_basic(&client_id, &secret).await?;
                who.extended = crate::response::wants_extended(&parts.headers);
                return checked_address(parts, state, who);
            }
            _ => {
                return Err(ApiError::Unauthenticated {
                    message: "Unsupported authorization scheme: use Bearer (or Basic with client credentials)".into(),
                    invalid_token: false,
                });
            }
        };
        let mut who = state.engine.authenticate(token).await?;
        who.extended = crate::response::wants_extended(&parts.headers);
        checked_address(parts, state, who)
    }
}

/// The caller, unless their access policy's `ipAccessRule`s block the address the request
/// came from ([`crate::client_ip`]: behind a trusted proxy, the forwarded client's).
fn checked_address(parts: &Parts, state: &AppState, who: Authenticated) -> Result<Auth, ApiError> {
    let client = crate::client_ip::of_parts(parts, state);
    if who.access.ip_allowed(Some(client)) {
        Ok(Auth(who))
    } else {
        Err(kiln_engine::EngineError::Forbidden(
            "Your access policy does not allow access from this address".into(),
        )
        .into())
    }
}

/// Path parameters, with malformed paths (e.g. invalid percent-encoding) answered by an
/// OperationOutcome instead of axum's plain-text rejection.
pub struct FhirPath<T>(pub T);

impl<T, S> FromRequestParts<S> for FhirPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<FhirPath<T>, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(it)) => Ok(FhirPath(it)),
            Err(e) => Err(ApiError::bad_request(format!("Invalid URL path: {e}"))),
        }
    }
}

/// The raw query string as decoded pairs, in order.
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<QueryPairs, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        Ok(QueryPairs(form_urlencoded::parse(query.as_bytes()).into_owned().collect()))
    }
}

/// The request body, refused with 413 past the configured limit.
pub struct LimitedBody(pub Bytes);

impl FromRequest<AppState> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<LimitedBody, ApiError> {
        let limit = state.max_body;
        let too_large = || {
            ApiError::status(
                StatusCode::PAYLOAD_TOO_LARGE,
                IssueCode::TooLong,
                format!("The request body exceeds the limit of {limit} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let body: Body = req.into_body();
        match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => Ok(LimitedBody(bytes)),
            Err(_) => Err(too_large()),
        }
    }
}

fn media_type(value: &str) -> String {
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

fn is_json_media(media: &str) -> bool {
    matches!(
        media,
        "application/fhir+json" | "application/json" | "application/json+fhir" | "text/json"
    )
}

/// 406 unless the client accepts JSON (`Accept` or `_format`).
pub fn negotiate(headers: &HeaderMap, query: &[(String, String)]) -> Result<(), ApiError> {
    if let Some((_, format)) = query.iter().find(|(k, _)| k == "_format") {
        let format = format.to_ascii_lowercase();
        let ok = matches!(format.as_str(), "json" | "application/json" | "application/fhir+json")
            || format.starts_with("application/fhir+json;")
            || format.starts_with("application/json;");
        return if ok {
            Ok(())
        } else {
            Err(ApiError::status(
                StatusCode::NOT_ACCEPTABLE,
                IssueCode::NotSupported,
                format!("Unsupported _format '{format}': Kiln speaks JSON only"),
            ))
        };
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let acceptable = accept.split(',').any(|part| {
        let media = media_type(part);
        is_json_media(&media) || matches!(media.as_str(), "*/*" | "application/*" | "")
    });
    if acceptable {
        Ok(())
    } else {
        Err(ApiError::status(
            StatusCode::NOT_ACCEPTABLE,
            IssueCode::NotSupported,
            format!("Cannot produce '{accept}': Kiln speaks application/fhir+json only"),
        ))
    }
}

/// The body's media type, lower-cased and without parameters.
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(media_type)
}

/// 415 unless the body is FHIR JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match content_type(headers) {
        Some(media) if is_json_media(&media) => Ok(()),
        Some(media) => Err(ApiError::status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueCode::NotSupported,
            format!("Unsupported Content-Type '{media}': send application/fhir+json"),
        )),
        None => Err(ApiError::status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueCode::NotSupported,
            "Missing Content-Type: send application/fhir+json",
        )),
    }
}

/// Depth of the deepest nesting in a JSON text, counted without parsing it.
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses a JSON body, refusing excessive nesting first. Errors name line and column.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("The request body is empty"));
    }
    if json_depth(bytes) > MAX_JSON_DEPTH {
        return Err(ApiError::bad_request(format!(
            "The JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("Invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(br#"{"a":"[[[{{{\"]]]"}"#), 1);
        assert_eq!(json_depth(b"[[[]]]"), 3);
    }

    #[test]
    fn deep_json_is_refused() {
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_json(deep.as_bytes()).is_err());
    }
}
