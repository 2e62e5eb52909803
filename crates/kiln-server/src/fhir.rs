//! Handlers for the FHIR REST API under `/fhir/R4`. Each one extracts, makes one engine call and
//! builds the response; no business rule lives here.

use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_engine::export::ExportLevel;
use kiln_engine::{Handling, HistoryParams, PatchBody, ReadFrom, SearchMode};
use kiln_model::IssueCode;
use kiln_store::{HistoryScope, StoredResource};

use crate::error::ApiError;
use crate::extract::{
    Auth, FhirPath as Path, LimitedBody, QueryPairs, content_type, negotiate, parse_json,
    require_json,
};
use crate::response::{self, OutputOptions, ReturnPreference, fhir_bytes, fhir_json};
use crate::{AppState, bulk_routes, terminology_routes};

type ApiResult = Result<Response, ApiError>;

fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(value) => {
            let text = value.to_str().unwrap_or_default();
            kiln_engine::parse_etag(text).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!("If-Match '{text}' is not an ETag such as W/\"1\""))
            })
        }
    }
}

/// 304 when the client's cached copy is still current (`If-None-Match`, `If-Modified-Since`).
fn not_modified(headers: &HeaderMap, stored: &StoredResource) -> bool {
    if let Some(value) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return value
            .split(',')
            .any(|tag| tag.trim() == "*" || kiln_engine::parse_etag(tag) == Some(stored.version));
    }
    if let Some(since) = headers.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok())
        && let Ok(since) = httpdate::parse_http_date(since)
        && let Ok(updated) = chrono::DateTime::parse_from_rfc3339(&stored.last_updated)
    {
        let updated: std::time::SystemTime = updated.with_timezone(&chrono::Utc).into();
        // HTTP dates have whole seconds.
        let updated_secs =
            updated.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let since_secs =
            since.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        return updated_secs <= since_secs;
    }
    false
}

fn location(state: &AppState, stored: &StoredResource) -> String {
    format!(
        "{}/_history/{}",
        state.engine.base_url().resource_url(&stored.resource_type, &stored.id),
        stored.version
    )
}

/// 200 with an informational OperationOutcome (what a delete did).
fn informational(text: String, pretty: bool) -> Response {
    let oo = kiln_model::operation_outcome_for_status(
        200,
        &[kiln_model::Issue::information(IssueCode::Informational, text)],
    );
    fhir_json(StatusCode::OK, &oo, pretty)
}

/// The response to a create, update or patch: status, version headers, `Location`, and the body
/// `Prefer: return=…` asks for.
fn written(
    state: &AppState,
    status: StatusCode,
    stored: &StoredResource,
    headers: &HeaderMap,
    options: &OutputOptions,
) -> Response {
    let preference = ReturnPreference::from_headers(headers);
    response::written(status, stored, &location(state, stored), preference, options)
}

pub async fn metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    Ok(fhir_json(StatusCode::OK, &state.capability, options.pretty))
}

pub async fn read(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((ty, id)): Path<(String, String)>,
    uri: OriginalUri,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    if ty == "Patient" && id == "$export" {
        let level = ExportLevel::Patient;
        return bulk_routes::kick_off(&state, &who, level, &uri, &headers, &query, &[]).await;
    }
    if id.starts_with('$') {
        return terminology_routes::get(&state, &who, &ty, None, &id, &headers, &query).await;
    }
    // A Binary's raw content is served whatever the client accepts (its own content type,
    // typically); only the FHIR JSON form goes through negotiation.
    let raw_binary = ty == "Binary" && !wants_fhir_json(&headers, &query);
    if !raw_binary {
        negotiate(&headers, &query)?;
    }
    let options = OutputOptions::from_request(&query, &headers)?;
    if raw_binary {
        let content = state.engine.binary_content(&who.context(), &id).await?;
        let mut res = (StatusCode::OK, content.bytes).into_response();
        if let Ok(value) = HeaderValue::from_str(&content.content_type) {
            res.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        if let Some(name) = content.filename {
            // Only a conservative subset of characters goes into the quoted header value.
            let safe: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "._- ".contains(c) { c } else { '_' })
                .collect();
            if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
                res.headers_mut().insert(header::CONTENT_DISPOSITION, value);
            }
        }
        return Ok(res);
    }
    let stored = state.engine.read(&who.context(), &ty, &id).await?;
    if not_modified(&headers, &stored) {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        response::version_headers(res.headers_mut(), &stored);
        return Ok(res);
    }
    Ok(response::resource(StatusCode::OK, &stored, &options))
}

/// A Binary read returns raw bytes unless the client asks for the FHIR resource.
fn wants_fhir_json(headers: &HeaderMap, query: &[(String, String)]) -> bool {
    if query.iter().any(|(k, _)| k == "_format") {
        return true;
    }
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/fhir+json"))
}

pub async fn vread(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((ty, id, version)): Path<(String, String, String)>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let stored = state.engine.vread(&who.context(), &ty, &id, &version).await?;
    if not_modified(&headers, &stored) {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    Ok(response::resource(StatusCode::OK, &stored, &options))
}

pub async fn create(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(ty): Path<String>,
    uri: OriginalUri,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    if ty == "$export" {
        let level = ExportLevel::System;
        return bulk_routes::kick_off(&state, &who, level, &uri, &headers, &query, &body).await;
    }
    if ty == "$import" {
        return bulk_routes::import(&state, &who, &uri, &headers, &body).await;
    }
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let ctx = who.context();
    // `POST [base]/$operation`: system-level operations.
    match ty.as_str() {
        "$reindex" => {
            let body = optional_json(&headers, &body)?;
            let job = state.engine.reindex(&ctx, None, body.as_ref()).await?;
            return Ok(job_accepted(&state, &job.id, options.pretty));
        }
        op if op.starts_with('$') => {
            return Err(ApiError::status(
                StatusCode::NOT_FOUND,
                IssueCode::NotSupported,
                format!("Operation {op} is not supported at the system level"),
            ));
        }
        _ => {}
    }
    let media = content_type(&headers);
    let is_fhir_json = media.as_deref().is_some_and(|m| {
        matches!(m, "application/fhir+json" | "application/json" | "application/json+fhir")
    });
    let outcome = if ty == "Binary" && !is_fhir_json {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream");
        let filename = query.iter().find(|(k, _)| k == "_filename").map(|(_, v)| v.as_str());
        state.engine.create_binary(&ctx, content_type, &body, filename).await?
    } else {
        require_json(&headers)?;
        let resource = parse_json(&body)?;
        match headers.get("if-none-exist") {
            Some(criteria) => {
                let criteria = criteria
                    .to_str()
                    .map_err(|_| ApiError::bad_request("If-None-Exist must be a query string"))?;
                state.engine.create_conditional(&ctx, &ty, resource, criteria).await?
            }
            None => state.engine.create(&ctx, &ty, resource).await?,
        }
    };
    let status = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(written(&state, status, &outcome.stored, &headers, &options))
}

pub async fn update(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    negotiate(&headers, &query)?;
    require_json(&headers)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let resource = parse_json(&body)?;
    let if_match = if_match(&headers)?;
    let outcome = state.engine.update(&who.context(), &ty, &id, resource, if_match).await?;
    let status = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(written(&state, status, &outcome.stored, &headers, &options))
}

/// The criteria of a conditional interaction on `/{type}?…` (the query minus `_format`-like
/// output parameters), as a query string.
fn criteria(query: &[(String, String)]) -> Result<String, ApiError> {
    let mut out = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in query.iter().filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty")) {
        out.append_pair(k, v);
        any = true;
    }
    if !any {
        return Err(ApiError::status(
            StatusCode::METHOD_NOT_ALLOWED,
            IssueCode::NotSupported,
            "This method needs a resource id in the URL, or search criteria for a conditional interaction",
        ));
    }
    Ok(out.finish())
}

/// `PUT /{type}?criteria`: conditional update.
pub async fn update_conditional(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(ty): Path<String>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    negotiate(&headers, &query)?;
    require_json(&headers)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let criteria = criteria(&query)?;
    let resource = parse_json(&body)?;
    let if_match = if_match(&headers)?;
    let outcome =
        state.engine.update_conditional(&who.context(), &ty, &criteria, resource, if_match).await?;
    let status = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(written(&state, status, &outcome.stored, &headers, &options))
}

/// `DELETE /{type}?criteria`: conditional delete.
pub async fn delete_conditional(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(ty): Path<String>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let criteria = criteria(&query)?;
    let deleted = state.engine.delete_conditional(&who.context(), &ty, &criteria).await?;
    let text = match deleted.as_slice() {
        [] => format!("No {ty} matched '{criteria}': nothing was deleted"),
        [one] => format!("Deleted {ty}/{}", one.id),
        many => format!("Deleted {} {ty} resources", many.len()),
    };
    Ok(informational(text, options.pretty))
}

/// `PATCH /{type}?criteria`: conditional patch.
pub async fn patch_conditional(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(ty): Path<String>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let criteria = criteria(&query)?;
    let patch = patch_body(&headers, &body)?;
    let if_match = if_match(&headers)?;
    let outcome =
        state.engine.patch_conditional(&who.context(), &ty, &criteria, patch, if_match).await?;
    Ok(written(&state, StatusCode::OK, &outcome.stored, &headers, &options))
}

/// A PATCH body: JSON Patch (`application/json-patch+json`) or FHIRPath Patch (a `Parameters`
/// resource as `application/fhir+json`). Plain `application/json` is read by its content: a
/// `Parameters` resource is FHIRPath Patch, an array is JSON Patch.
fn patch_body(headers: &HeaderMap, body: &[u8]) -> Result<PatchBody, ApiError> {
    const SEND: &str = "send application/json-patch+json (JSON Patch) or application/fhir+json \
                        (FHIRPath Patch, a Parameters resource)";
    match content_type(headers).as_deref() {
        Some("application/json-patch+json") => Ok(PatchBody::JsonPatch(parse_json(body)?)),
        Some("application/fhir+json" | "application/json+fhir") => {
            Ok(PatchBody::FhirPath(parse_json(body)?))
        }
        Some("application/json") => {
            let value = parse_json(body)?;
            Ok(if value.is_array() {
                PatchBody::JsonPatch(value)
            } else {
                PatchBody::FhirPath(value)
            })
        }
        Some(other) => Err(ApiError::status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueCode::NotSupported,
            format!("Unsupported PATCH Content-Type '{other}': {SEND}"),
        )),
        None => Err(ApiError::status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueCode::NotSupported,
            format!("Missing Content-Type: {SEND}"),
        )),
    }
}

pub async fn patch(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let patch = patch_body(&headers, &body)?;
    let if_match = if_match(&headers)?;
    let outcome = state.engine.patch(&who.context(), &ty, &id, patch, if_match).await?;
    Ok(written(&state, StatusCode::OK, &outcome.stored, &headers, &options))
}

pub async fn delete(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let deleted = state.engine.delete(&who.context(), &ty, &id).await?;
    let text = match &deleted {
        Some(_) => format!("Deleted {ty}/{id}"),
        None => format!("{ty}/{id} did not exist or was already deleted"),
    };
    let mut res = informational(text, options.pretty);
    if let Some(stored) = &deleted
        && let Ok(etag) = HeaderValue::from_str(&stored.etag())
    {
        res.headers_mut().insert(header::ETAG, etag);
    }
    Ok(res)
}

async fn history(
    state: &AppState,
    who: &Auth,
    scope: HistoryScope,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> ApiResult {
    negotiate(headers, query)?;
    let options = OutputOptions::from_request(query, headers)?;
    let params = HistoryParams::from_query(query)?;
    let bytes = state.engine.history(&who.0.context(), scope, &params).await?;
    Ok(fhir_bytes(StatusCode::OK, bytes, options.pretty))
}

pub async fn history_system(
    State(state): State<AppState>,
    who: Auth,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    history(&state, &who, HistoryScope::System, &headers, &query).await
}

pub async fn history_type(
    State(state): State<AppState>,
    who: Auth,
    Path(ty): Path<String>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    history(&state, &who, HistoryScope::Type(ty), &headers, &query).await
}

pub async fn history_instance(
    State(state): State<AppState>,
    who: Auth,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    history(&state, &who, HistoryScope::Instance(ty, id), &headers, &query).await
}

pub async fn bundle(
    State(state): State<AppState>,
    Auth(who): Auth,
    uri: OriginalUri,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    negotiate(&headers, &query)?;
    require_json(&headers)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let ret = match ReturnPreference::from_headers(&headers) {
        ReturnPreference::Representation => kiln_engine::EntryReturn::Representation,
        ReturnPreference::Minimal => kiln_engine::EntryReturn::Minimal,
        ReturnPreference::OperationOutcome => kiln_engine::EntryReturn::OperationOutcome,
    };
    if bulk_routes::wants_async(&headers) {
        return bulk_routes::batch(&state, &who, &uri, ret, &body).await;
    }
    let bundle = parse_json(&body)?;
    let bytes = state.engine.process_bundle(&who.context(), bundle, ret).await?;
    Ok(fhir_bytes(StatusCode::OK, bytes, options.pretty))
}

/// `POST /{type}/{$operation}`: type-level operations, and `POST /{type}/_search`.
pub async fn type_operation(
    State(state): State<AppState>,
    who: Auth,
    Path((ty, operation)): Path<(String, String)>,
    uri: OriginalUri,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    if operation == "_search" {
        return search_post(&state, &who, &ty, &headers, query, &body).await;
    }
    if ty == "Patient" && operation == "$export" {
        let level = ExportLevel::Patient;
        return bulk_routes::kick_off(&state, &who.0, level, &uri, &headers, &query, &body).await;
    }
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    match operation.as_str() {
        "$validate" => {
            let body = optional_json(&headers, &body)?;
            let issues = state.engine.validate(&who.0.context(), &ty, None, body, &query).await?;
            Ok(fhir_json(StatusCode::OK, &validation_outcome(&issues), options.pretty))
        }
        "$reindex" => {
            let body = optional_json(&headers, &body)?;
            let job = state.engine.reindex(&who.0.context(), Some(&ty), body.as_ref()).await?;
            Ok(job_accepted(&state, &job.id, options.pretty))
        }
        op if terminology_routes::handles(&ty, op) => {
            terminology_routes::run(&state, &who.0, &ty, None, op, &headers, &query, &body).await
        }
        other if other.starts_with('$') => Err(ApiError::status(
            StatusCode::NOT_FOUND,
            IssueCode::NotSupported,
            format!("Operation {other} is not supported on {ty}"),
        )),
        _ => Err(ApiError::status(
            StatusCode::METHOD_NOT_ALLOWED,
            IssueCode::NotSupported,
            "POST is not allowed on a resource instance: use PUT to update",
        )),
    }
}

/// `$validate`'s answer: 200 with every issue; the outcome's id is `ok` only when none is an
/// error (the operation ran either way: whether the resource is valid is in the issues).
fn validation_outcome(issues: &[kiln_model::Issue]) -> serde_json::Value {
    if kiln_model::has_failure(issues) {
        kiln_model::operation_outcome(issues)
    } else {
        kiln_model::operation_outcome_for_status(200, issues)
    }
}

/// An operation's optional JSON body (absent or empty: `None`).
fn optional_json(headers: &HeaderMap, body: &[u8]) -> Result<Option<serde_json::Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    require_json(headers)?;
    parse_json(body).map(Some)
}

/// 202 for an operation that runs as a job: `Content-Location` is the job's status URL.
fn job_accepted(state: &AppState, id: &str, pretty: bool) -> Response {
    let url = format!("{}/job/{id}/status", state.engine.base_url().fhir_base());
    let oo = kiln_model::operation_outcome_for_status(
        200,
        &[kiln_model::Issue::information(
            IssueCode::Informational,
            format!("Accepted as job {id}; poll {url}"),
        )],
    );
    let mut response = fhir_json(StatusCode::ACCEPTED, &oo, pretty);
    if let Ok(value) = HeaderValue::from_str(&url) {
        response.headers_mut().insert(header::CONTENT_LOCATION, value);
    }
    response
}

/// `POST /{type}/{id}/{$operation}`: instance-level operations.
pub async fn instance_operation(
    State(state): State<AppState>,
    who: Auth,
    Path((ty, id, operation)): Path<(String, String, String)>,
    uri: OriginalUri,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    if ty == "Group" && operation == "$export" {
        let level = ExportLevel::Group(id);
        return bulk_routes::kick_off(&state, &who.0, level, &uri, &headers, &query, &body).await;
    }
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let ctx = who.0.context();
    match operation.as_str() {
        "$validate" => {
            let body = optional_json(&headers, &body)?;
            let issues = state.engine.validate(&ctx, &ty, Some(&id), body, &query).await?;
            Ok(fhir_json(StatusCode::OK, &validation_outcome(&issues), options.pretty))
        }
        "$reindex" => {
            state.engine.reindex_one(&ctx, &ty, &id).await?;
            Ok(informational(format!("{ty}/{id} was reindexed"), options.pretty))
        }
        "$cancel" if ty == "AsyncJob" => {
            state.engine.cancel_job(&ctx, &id).await?;
            Ok(informational(format!("Job {id} was cancelled"), options.pretty))
        }
        "$rotate-secret" if ty == "ClientApplication" => {
            let client = state.engine.rotate_secret(&who.0, &id).await?;
            Ok(fhir_json(StatusCode::OK, &client, options.pretty))
        }
        op if terminology_routes::handles(&ty, op) => {
            let id = Some(id.as_str());
            terminology_routes::run(&state, &who.0, &ty, id, op, &headers, &query, &body).await
        }
        op => Err(ApiError::status(
            StatusCode::NOT_FOUND,
            IssueCode::NotSupported,
            format!("Operation {op} is not supported on {ty}/{{id}}"),
        )),
    }
}

/// `GET /job/{id}/status`: 202 (with `X-Progress`) while the job runs, then 200 with the
/// AsyncJob (completed, failed or cancelled).
pub async fn job_status(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    if let Some(response) = bulk_routes::status(&state, &who.0, &id).await? {
        return Ok(response);
    }
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    match state.engine.job_status(&who.0.context(), &id).await? {
        kiln_engine::JobStatus::InProgress(progress) => {
            let mut response = StatusCode::ACCEPTED.into_response();
            if let Ok(value) = HeaderValue::from_str(&progress) {
                response.headers_mut().insert("x-progress", value);
            }
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(response)
        }
        kiln_engine::JobStatus::Done(job) => Ok(response::resource(StatusCode::OK, &job, &options)),
    }
}

/// `DELETE /job/{id}/status`: cancels the job (202).
pub async fn job_cancel(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    if !state.engine.delete_export(&who.0, &id).await? {
        state.engine.cancel_job(&who.0.context(), &id).await?;
    }
    let oo = kiln_model::operation_outcome_for_status(
        200,
        &[kiln_model::Issue::information(
            IssueCode::Informational,
            format!("Job {id} was cancelled"),
        )],
    );
    Ok(fhir_json(StatusCode::ACCEPTED, &oo, options.pretty))
}

/// `Prefer: handling=strict|lenient` (FHIR R4 search.html#errors).
fn handling(headers: &HeaderMap) -> Handling {
    let strict = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split([',', ';']).any(|p| p.trim().eq_ignore_ascii_case("handling=strict")));
    if strict { Handling::Strict } else { Handling::Lenient }
}

async fn search(
    state: &AppState,
    who: &Auth,
    ty: Option<&str>,
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> ApiResult {
    negotiate(headers, pairs)?;
    let options = OutputOptions::from_request(pairs, headers)?;
    // A client's search may be answered by a read replica (`--read-database-url`).
    let mode = SearchMode { handling: handling(headers), from: ReadFrom::Replica };
    let bytes = state.engine.search(&who.0.context(), ty, pairs, mode).await?;
    Ok(fhir_bytes(StatusCode::OK, bytes, options.pretty))
}

/// `GET /{type}?…`.
pub async fn search_type(
    State(state): State<AppState>,
    who: Auth,
    Path(ty): Path<String>,
    uri: OriginalUri,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    if ty == "$export" {
        let level = ExportLevel::System;
        return bulk_routes::kick_off(&state, &who.0, level, &uri, &headers, &query, &[]).await;
    }
    search(&state, &who, Some(&ty), &headers, &query).await
}

/// `GET /{compartment}/{id}/{type}`, `/{compartment}/{id}/*` and `Patient/{id}/$everything`.
pub async fn search_compartment(
    State(state): State<AppState>,
    who: Auth,
    Path((compartment, id, ty)): Path<(String, String, String)>,
    uri: OriginalUri,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    if compartment == "Group" && ty == "$export" {
        let level = ExportLevel::Group(id);
        return bulk_routes::kick_off(&state, &who.0, level, &uri, &headers, &query, &[]).await;
    }
    negotiate(&headers, &query)?;
    let options = OutputOptions::from_request(&query, &headers)?;
    let ctx = who.0.context();
    let bytes = match ty.as_str() {
        "$everything" if compartment == "Patient" => {
            state.engine.patient_everything(&ctx, &id, &query).await?
        }
        "$smart-launch" if compartment == "ClientApplication" => {
            // Medplum's EHR launch for API callers: a launch context for `patient` (and
            // `encounter`), then a redirect to the app's `launchUri?iss=…&launch=…`.
            let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let url =
                state.engine.smart_launch(&ctx, &id, get("patient"), get("encounter")).await?;
            let mut res = StatusCode::FOUND.into_response();
            res.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&url)
                    .map_err(|_| ApiError::bad_request("The app's launchUri is not a valid URL"))?,
            );
            return Ok(res);
        }
        op if op.starts_with('$') => {
            let (who, id) = (&who.0, Some(id.as_str()));
            return terminology_routes::get(&state, who, &compartment, id, op, &headers, &query)
                .await;
        }
        "*" => {
            let mode = SearchMode { handling: handling(&headers), from: ReadFrom::Replica };
            state.engine.search_compartment(&ctx, &compartment, &id, None, &query, mode).await?
        }
        ty => {
            let mode = SearchMode { handling: handling(&headers), from: ReadFrom::Replica };
            state.engine.search_compartment(&ctx, &compartment, &id, Some(ty), &query, mode).await?
        }
    };
    Ok(fhir_bytes(StatusCode::OK, bytes, options.pretty))
}

/// `GET /fhir/R4?_type=…`: a search across types.
pub async fn search_system(
    State(state): State<AppState>,
    who: Auth,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> ApiResult {
    search(&state, &who, None, &headers, &query).await
}

/// `POST /{type}/_search` with an `application/x-www-form-urlencoded` body (and possibly URL
/// parameters too).
async fn search_post(
    state: &AppState,
    who: &Auth,
    ty: &str,
    headers: &HeaderMap,
    mut pairs: Vec<(String, String)>,
    body: &[u8],
) -> ApiResult {
    match content_type(headers).as_deref() {
        Some("application/x-www-form-urlencoded") | None => {}
        Some(other) => {
            return Err(ApiError::status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                IssueCode::NotSupported,
                format!("_search takes application/x-www-form-urlencoded, not '{other}'"),
            ));
        }
    }
    pairs.extend(form_urlencoded::parse(body).into_owned());
    search(state, who, Some(ty), headers, &pairs).await
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::status(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueCode::NotSupported,
        "This HTTP method is not allowed on this URL",
    )
}

pub async fn not_found() -> ApiError {
    ApiError::status(StatusCode::NOT_FOUND, IssueCode::NotFound, "No such endpoint")
}
