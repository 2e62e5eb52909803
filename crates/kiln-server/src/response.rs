//! Building FHIR responses: content type, `ETag`, `Last-Modified`, `Location`, `_pretty`, and
//! serving stored bytes without re-serialising them when nothing asks for a change.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_engine::shape::Shape;
use kiln_store::StoredResource;
use serde_json::Value;

use crate::error::ApiError;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Output options read from the query string.
#[derive(Debug, Clone, Default)]
pub struct OutputOptions {
    pub pretty: bool,
    pub shape: Shape,
}

impl OutputOptions {
    /// `_pretty`, `_summary` and `_elements` from the query; the server-side `meta` members
    /// only for `X-Medplum: extended`.
    pub fn from_request(
        pairs: &[(String, String)],
        headers: &HeaderMap,
    ) -> Result<OutputOptions, ApiError> {
        let pretty = pairs.iter().any(|(k, v)| k == "_pretty" && v == "true");
        let shape = Shape { server_meta: wants_extended(headers), ..Shape::from_query(pairs)? };
        Ok(OutputOptions { pretty, shape })
    }
}

/// `X-Medplum: extended`: Medplum's SDK asks for the server-side `meta` members.
pub fn wants_extended(headers: &HeaderMap) -> bool {
    headers
        .get_all("x-medplum")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case("extended")))
}

/// `2026-11-29T09:40:00.123Z` → `Sun, 29 Nov 2026 09:40:00 GMT`.
pub fn http_date(instant: &str) -> Option<HeaderValue> {
    let parsed = chrono::DateTime::parse_from_rfc3339(instant).ok()?;
    let system: std::time::SystemTime = parsed.with_timezone(&chrono::Utc).into();
    HeaderValue::from_str(&httpdate::fmt_http_date(system)).ok()
}

/// A JSON body with the FHIR content type, pretty-printed on request.
pub fn fhir_bytes(status: StatusCode, bytes: Vec<u8>, pretty: bool) -> Response {
    let bytes = if pretty {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => serde_json::to_vec_pretty(&value).unwrap_or(bytes),
            Err(_) => bytes,
        }
    } else {
        bytes
    };
    let mut res = (status, Body::from(bytes)).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    res
}

pub fn fhir_json(status: StatusCode, value: &Value, pretty: bool) -> Response {
    let bytes = if pretty { serde_json::to_vec_pretty(value) } else { serde_json::to_vec(value) };
    // Already pretty-printed above when asked; no second pass.
    fhir_bytes(status, bytes.unwrap_or_default(), false)
}

/// The stored resource, shaped if asked, with its version headers.
pub fn resource(status: StatusCode, stored: &StoredResource, options: &OutputOptions) -> Response {
    let bytes = options.shape.serve(&stored.body).into_owned();
    let mut res = fhir_bytes(status, bytes, options.pretty);
    version_headers(res.headers_mut(), stored);
    res
}

pub fn version_headers(headers: &mut HeaderMap, stored: &StoredResource) {
    if let Ok(etag) = HeaderValue::from_str(&stored.etag()) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(date) = http_date(&stored.last_updated) {
        headers.insert(header::LAST_MODIFIED, date);
    }
}

/// `Prefer: return=minimal | representation | OperationOutcome` (FHIR R4 http.html#ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

impl ReturnPreference {
    pub fn from_headers(headers: &HeaderMap) -> ReturnPreference {
        for value in headers.get_all("prefer") {
            let Ok(text) = value.to_str() else { continue };
            for part in text.split([',', ';']) {
                match part.trim() {
                    "return=minimal" => return ReturnPreference::Minimal,
                    "return=OperationOutcome" => return ReturnPreference::OperationOutcome,
                    "return=representation" => return ReturnPreference::Representation,
                    _ => {}
                }
            }
        }
        ReturnPreference::Representation
    }
}

/// The response to a successful create/update/patch, honouring `Prefer`.
pub fn written(
    status: StatusCode,
    stored: &StoredResource,
    location: &str,
    preference: ReturnPreference,
    options: &OutputOptions,
) -> Response {
    let mut res = match preference {
        ReturnPreference::Representation => resource(status, stored, options),
        ReturnPreference::Minimal => {
            let mut res = status.into_response();
            version_headers(res.headers_mut(), stored);
            res
        }
        ReturnPreference::OperationOutcome => {
            let text = format!(
                "{} {}/{} version {}",
                if status == StatusCode::CREATED { "Created" } else { "Updated" },
                stored.resource_type,
                stored.id,
                stored.version
            );
            let oo = kiln_model::operation_outcome_for_status(
                status.as_u16(),
                &[kiln_model::Issue::information(kiln_model::IssueCode::Informational, text)],
            );
            let mut res = fhir_json(status, &oo, options.pretty);
            version_headers(res.headers_mut(), stored);
            res
        }
    };
    if let Ok(location) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, location.clone());
        if status == StatusCode::CREATED {
            res.headers_mut().insert(header::CONTENT_LOCATION, location);
        }
    }
    res
}
