//! `GET /openapi.json`: an OpenAPI 3.1 description of this server, built once from what it
//! serves. The FHIR part comes from the CapabilityStatement (`AppState::capability`, the
//! engine's record of the resource types, interactions, search parameters and operations this
//! build implements) and the schemas from the embedded definitions ([`schemas`]); what only the
//! HTTP edge knows (which route serves an operation, status codes, media types, the auth and
//! admin endpoints) is written here beside the router. Feature switches (`--registration`)
//! remove the paths they turn off.
//!
//! The document is served from bytes made once (and a gzip copy for clients that accept it).

mod schemas;

use std::collections::HashSet;
use std::io::Write;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_definitions::definitions;
use kiln_engine::{BaseUrl, Registration};
use serde_json::{Map, Value, json};

use crate::AppState;

/// The serialized document and its gzip encoding (cheap to clone into a response).
pub struct OpenApi {
    pub json: Bytes,
    pub gzip: Bytes,
}

impl OpenApi {
    pub(crate) fn build(
        capability: &Value,
        base_url: &BaseUrl,
        registration: Registration,
    ) -> OpenApi {
        let doc = document(capability, base_url, registration);
        let json = serde_json::to_vec(&doc).unwrap_or_default();
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(json.len() / 8),
            flate2::Compression::best(),
        );
        // Writing to memory cannot fail; were it to, the document goes out uncompressed.
        let gzip = encoder.write_all(&json).and_then(|()| encoder.finish()).unwrap_or_default();
        OpenApi { json: json.into(), gzip: gzip.into() }
    }
}

/// `GET /openapi.json` (no authentication).
pub async fn serve(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let doc = state.openapi();
    let gzip = !doc.gzip.is_empty() && accepts_gzip(&headers);
    let body = if gzip { doc.gzip.clone() } else { doc.json.clone() };
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    res
}

/// Whether `Accept-Encoding` allows gzip (`gzip`, `x-gzip` or `*`, with a non-zero `q`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            matches!(coding.as_str(), "gzip" | "x-gzip" | "*") && !q_zero
        })
    })
}

const FHIR: &str = "/fhir/R4";
const FHIR_JSON: &str = "application/fhir+json";

/// The whole document.
pub(crate) fn document(
    capability: &Value,
    base_url: &BaseUrl,
    registration: Registration,
) -> Value {
    let rest = &capability["rest"][0];
    let shared_params: Vec<&str> = rest["searchParam"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let mut paths = Map::new();
    system_paths(rest, &mut paths);
    for resource in rest["resource"].as_array().into_iter().flatten() {
        type_paths(resource, &shared_params, &mut paths);
    }
    compartment_paths(&mut paths);
    auth_paths(registration, &mut paths);

    let mut parameters = Map::new();
    for p in rest["searchParam"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        let description = match p["documentation"].as_str() {
            Some(doc) => doc.to_owned(),
            None => param_description("Resource", name, p["type"].as_str().unwrap_or_default()),
        };
        parameters.insert(name.to_owned(), search_param(name, &description));
    }
    for (name, param) in result_parameters() {
        parameters.insert(name.to_owned(), param);
    }
    for (name, param) in path_parameters() {
        parameters.insert(name.to_owned(), param);
    }

    let mut schemas = schemas::all();
    schemas.insert(
        "JsonPatch".into(),
        json!({
            "description": "A JSON Patch document (RFC 6902)",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["op", "path"],
                "properties": {
                    "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
                    "path": {"type": "string"},
                    "from": {"type": "string"},
                    "value": {},
                },
            },
        }),
    );
    schemas.insert(
        "OAuthError".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
        }),
    );

    let scopes = json!({
        "openid": "OpenID Connect: an ID token",
        "profile": "The user's profile in the ID token",
        "fhirUser": "The user's FHIR resource",
        "offline_access": "A refresh token",
        "online_access": "A refresh token while the user is signed in",
        "launch": "EHR launch context",
        "launch/patient": "Standalone launch: pick a patient",
        "launch/encounter": "Standalone launch: pick an encounter",
        "patient/*.*": "SMART v1: everything about the patient in context (v2: patient/*.cruds)",
        "user/*.*": "SMART v1: everything the user may see (v2: user/*.cruds)",
        "system/*.*": "SMART v1 backend services: everything the client may see (v2: system/*.cruds)",
    });
    let fhir_base = base_url.fhir_base();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Kiln FHIR R4 API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "FHIR R4 ({}) with Medplum's API. Resources are application/fhir+json; every \
                 error is an OperationOutcome (the OAuth endpoints answer OAuth errors). \
                 Search parameters take FHIR modifiers and prefixes (name:exact=…, \
                 date=ge2024), which OpenAPI cannot name; the CapabilityStatement at \
                 {fhir_base}/metadata is the reference.",
                definitions().version()
            ),
        },
        "servers": [{"url": base_url.as_str().trim_end_matches('/')}],
        "security": [{"bearer": []}, {"oauth2": []}],
        "tags": [
            {"name": "system", "description": "Server-wide FHIR interactions and operations"},
            {"name": "auth", "description": "Login, registration and accounts (Medplum's /auth API)"},
            {"name": "oauth2", "description": "OAuth 2.0, OpenID Connect and SMART App Launch"},
            {"name": "admin", "description": "Project administration (Medplum's /admin API)"},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": parameters,
            "responses": {
                "Error": {
                    "description": "An OperationOutcome saying what went wrong",
                    "content": fhir_content(schemas::reference("OperationOutcome")),
                },
                "Outcome": {
                    "description": "An OperationOutcome saying what was done",
                    "content": fhir_content(schemas::reference("OperationOutcome")),
                },
                "Bundle": {
                    "description": "A Bundle (searchset or history)",
                    "content": fhir_content(schemas::reference("Bundle")),
                },
                "Accepted": {
                    "description": "Accepted as a background job: poll the Content-Location URL",
                    "headers": {"Content-Location": {"schema": {"type": "string"}}},
                },
                "Json": {
                    "description": "A JSON object",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "Html": {
                    "description": "An HTML page",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
                "Redirect": {
                    "description": "A redirect",
                    "headers": {"Location": {"schema": {"type": "string"}}},
                },
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from /oauth2/token",
                },
                "oauth2": {
                    "type": "oauth2",
                    "description": "The authorization code flow requires PKCE (S256) for \
                                    public clients; confidential clients authenticate with \
                                    client_secret_basic, client_secret_post or private_key_jwt \
                                    (SMART Backend Services). Discovery: \
                                    /.well-known/smart-configuration",
                    "flows": {
                        "authorizationCode": {
                            "authorizationUrl": base_url.join("oauth2/authorize"),
                            "tokenUrl": base_url.join("oauth2/token"),
                            "refreshUrl": base_url.join("oauth2/token"),
                            "scopes": scopes,
                        },
                        "clientCredentials": {
                            "tokenUrl": base_url.join("oauth2/token"),
                            "scopes": scopes,
                        },
                    },
                },
            },
        },
    })
}

fn fhir_content(schema: Value) -> Value {
    json!({ FHIR_JSON: {"schema": schema} })
}

fn param_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

fn response_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/responses/{name}") })
}

/// A response with a FHIR resource of schema `schema`.
fn fhir_response(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": fhir_content(schemas::reference(schema))})
}

/// A search parameter: repeatable (each occurrence is ANDed, commas inside one OR).
fn search_param(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": "array", "items": {"type": "string"}},
    })
}

/// `token: Patient.gender`: the parameter's type and its expression, cut to `ty`'s branches
/// when one definition serves many types.
fn param_description(ty: &str, name: &str, param_type: &str) -> String {
    let Some(def) = definitions().search_param(ty, name) else {
        return param_type.to_owned();
    };
    let Some(expression) = def.expression.as_deref() else {
        return param_type.to_owned();
    };
    let own: Vec<&str> = expression
        .split(" | ")
        .map(str::trim)
        .filter(|part| {
            let part = part.trim_start_matches('(');
            part.starts_with(&format!("{ty}.")) || part == ty
        })
        .collect();
    let expression = if own.is_empty() { expression.to_owned() } else { own.join(" | ") };
    let mut text = format!("{param_type}: {expression}");
    if !def.target.is_empty() && def.target.len() <= 6 {
        text.push_str(&format!(" (to {})", def.target.join(", ")));
    }
    text
}

/// The result parameters every search takes.
fn result_parameters() -> Vec<(&'static str, Value)> {
    let query = |name: &str, description: &str, schema: Value| json!({"name": name, "in": "query", "description": description, "schema": schema});
    vec![
        ("_count", query("_count", "Page size", json!({"type": "integer", "minimum": 0}))),
        (
            "_sort",
            query(
                "_sort",
                "Comma-separated parameters, - for descending",
                json!({"type": "string"}),
            ),
        ),
        (
            "_include",
            query(
                "_include",
                "Type:param[:target] whose targets to include",
                json!({"type": "array", "items": {"type": "string"}}),
            ),
        ),
        (
            "_revinclude",
            query(
                "_revinclude",
                "Type:param[:target] whose referrers to include",
                json!({"type": "array", "items": {"type": "string"}}),
            ),
        ),
        (
            "_summary",
            query(
                "_summary",
                "Summary form",
                json!({"enum": ["true", "false", "text", "data", "count"]}),
            ),
        ),
        (
            "_elements",
            query("_elements", "Comma-separated elements to keep", json!({"type": "string"})),
        ),
        (
            "_total",
            query(
                "_total",
                "Whether to count the matches",
                json!({"enum": ["none", "estimate", "accurate"]}),
            ),
        ),
        (
            "_cursor",
            query("_cursor", "Opaque page position, from a Bundle link", json!({"type": "string"})),
        ),
    ]
}

fn path_parameters() -> Vec<(&'static str, Value)> {
    vec![
        (
            "id",
            json!({"name": "id", "in": "path", "required": true, "schema": schemas::reference("id")}),
        ),
        (
            "vid",
            json!({"name": "vid", "in": "path", "required": true, "description": "versionId", "schema": {"type": "string"}}),
        ),
        (
            "If-Match",
            json!({"name": "If-Match", "in": "header", "description": "W/\"versionId\": write only over this version", "schema": {"type": "string"}}),
        ),
    ]
}

fn search_results() -> Vec<Value> {
    result_parameters().iter().map(|(name, _)| param_ref(name)).collect()
}

/// An operation object: the errors (4XX/5XX, OperationOutcome) added to `responses`.
fn op(id: &str, summary: &str, tag: &str, mut responses: Map<String, Value>) -> Map<String, Value> {
    responses.insert("4XX".into(), response_ref("Error"));
    responses.insert("5XX".into(), response_ref("Error"));
    let mut op = Map::new();
    op.insert("operationId".into(), Value::String(id.into()));
    op.insert("summary".into(), Value::String(summary.into()));
    op.insert("tags".into(), json!([tag]));
    op.insert("responses".into(), Value::Object(responses));
    op
}

fn responses(entries: Vec<(&str, Value)>) -> Map<String, Value> {
    entries.into_iter().map(|(code, v)| (code.to_owned(), v)).collect()
}

fn with(mut op: Map<String, Value>, key: &str, value: Value) -> Map<String, Value> {
    op.insert(key.into(), value);
    op
}

fn fhir_body(schema: &str) -> Value {
    let content = json!({"schema": schemas::reference(schema)});
    json!({"required": true, "content": {FHIR_JSON: content.clone(), "application/json": content}})
}

fn optional_parameters_body() -> Value {
    json!({"required": false, "content": {FHIR_JSON: {"schema": schemas::reference("Parameters")}}})
}

fn add(paths: &mut Map<String, Value>, path: &str, method: &str, op: Map<String, Value>) {
    let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
    entry[method] = Value::Object(op);
}

fn public(op: Map<String, Value>) -> Map<String, Value> {
    with(op, "security", json!([]))
}

fn system_paths(rest: &Value, paths: &mut Map<String, Value>) {
    let interactions: HashSet<&str> = rest["interaction"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["code"].as_str())
        .collect();
    add(
        paths,
        &format!("{FHIR}/metadata"),
        "get",
        public(op(
            "capabilities",
            "The CapabilityStatement",
            "system",
            responses(vec![(
                "200",
                fhir_response("What this server implements", "CapabilityStatement"),
            )]),
        )),
    );
    if interactions.contains("search-system") {
        let mut params = vec![
            json!({"name": "_type", "in": "query", "description": "Comma-separated resource types", "schema": {"type": "string"}}),
        ];
        params.extend(search_results());
        let search = op(
            "search-system",
            "Search across types",
            "system",
            responses(vec![("200", response_ref("Bundle"))]),
        );
        add(paths, FHIR, "get", with(search, "parameters", Value::Array(params)));
    }
    if interactions.contains("batch") || interactions.contains("transaction") {
        let bundle = op(
            "batch-transaction",
            "A batch or transaction Bundle (Prefer: respond-async runs it as a job)",
            "system",
            responses(vec![
                (
                    "200",
                    fhir_response("The batch-response or transaction-response Bundle", "Bundle"),
                ),
                ("202", response_ref("Accepted")),
            ]),
        );
        add(paths, FHIR, "post", with(bundle, "requestBody", fhir_body("Bundle")));
    }
    if interactions.contains("history-system") {
        let history = op(
            "history-system",
            "Every change in the project",
            "system",
            responses(vec![("200", response_ref("Bundle"))]),
        );
        add(
            paths,
            &format!("{FHIR}/_history"),
            "get",
            with(history, "parameters", json!([param_ref("_count")])),
        );
    }
    for operation in rest["operation"].as_array().into_iter().flatten() {
        match operation["name"].as_str() {
            Some("export") => {
                let path = format!("{FHIR}/$export");
                let accepted = || responses(vec![("202", response_ref("Accepted"))]);
                add(
                    paths,
                    &path,
                    "get",
                    op(
                        "export-system",
                        "Bulk Data export of the project (async)",
                        "system",
                        accepted(),
                    ),
                );
                add(
                    paths,
                    &path,
                    "post",
                    with(
                        op(
                            "export-system-post",
                            "Bulk Data export, parameters in a Parameters body",
                            "system",
                            accepted(),
                        ),
                        "requestBody",
                        optional_parameters_body(),
                    ),
                );
            }
            Some("reindex") => {
                let reindex = op(
                    "reindex-system",
                    "Recompute the search index of every type (a job)",
                    "system",
                    responses(vec![("202", response_ref("Accepted"))]),
                );
                add(
                    paths,
                    &format!("{FHIR}/$reindex"),
                    "post",
                    with(reindex, "requestBody", optional_parameters_body()),
                );
            }
            _ => {}
        }
    }
    // Kiln's own bulk import (not a FHIR OperationDefinition, so not in the CapabilityStatement).
    let import = op(
        "import",
        "Bulk import of NDJSON files named in a Parameters body (a job)",
        "system",
        responses(vec![("202", response_ref("Accepted"))]),
    );
    add(
        paths,
        &format!("{FHIR}/$import"),
        "post",
        with(import, "requestBody", fhir_body("Parameters")),
    );
    let job_id =
        json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let status = op(
        "job-status",
        "A background job's status: 202 while it runs, then the AsyncJob or the Bulk Data manifest",
        "system",
        responses(vec![
            (
                "200",
                json!({"description": "Done", "content": {
                    FHIR_JSON: {"schema": schemas::reference("AsyncJob")},
                    "application/json": {"schema": {"type": "object"}},
                }}),
            ),
            ("202", json!({"description": "Still running (X-Progress)"})),
        ]),
    );
    let path = format!("{FHIR}/job/{{id}}/status");
    add(paths, &path, "get", status);
    add(
        paths,
        &path,
        "delete",
        op(
            "job-cancel",
            "Cancel a job",
            "system",
            responses(vec![("202", response_ref("Outcome"))]),
        ),
    );
    paths[&path]["parameters"] = job_id.clone();
    let file = op(
        "job-file",
        "One NDJSON file of a finished export",
        "system",
        responses(vec![(
            "200",
            json!({"description": "NDJSON", "content": {"application/fhir+ndjson": {"schema": {"type": "string"}}}}),
        )]),
    );
    let path = format!("{FHIR}/job/{{id}}/file/{{n}}");
    add(paths, &path, "get", file);
    paths[&path]["parameters"] = json!([job_id[0], {"name": "n", "in": "path", "required": true, "schema": {"type": "string"}}]);
}

/// The paths of one resource type, from its CapabilityStatement entry.
fn type_paths(resource: &Value, shared: &[&str], paths: &mut Map<String, Value>) {
    let Some(ty) = resource["type"].as_str() else { return };
    let has = |code: &str| {
        resource["interaction"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["code"].as_str() == Some(code))
    };
    let base = format!("{FHIR}/{ty}");
    let instance = format!("{base}/{{id}}");
    let id = || json!([param_ref("id")]);
    let one = |what: &str| fhir_response(what, ty);

    if has("search-type") {
        let mut params: Vec<Value> = resource["searchParam"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let name = p["name"].as_str()?;
                if shared.contains(&name) {
                    return Some(param_ref(name));
                }
                let description = match p["documentation"].as_str() {
                    Some(doc) => doc.to_owned(),
                    None => param_description(ty, name, p["type"].as_str().unwrap_or_default()),
                };
                Some(search_param(name, &description))
            })
            .collect();
        for name in shared {
            let name = *name;
            if !params
                .iter()
                .any(|p| p["$ref"].as_str().is_some_and(|r| r.ends_with(&format!("/{name}"))))
            {
                params.push(param_ref(name));
            }
        }
        params.extend(search_results());
        let search = op(
            &format!("search-{ty}"),
            &format!("Search {ty}"),
            ty,
            responses(vec![("200", response_ref("Bundle"))]),
        );
        add(paths, &base, "get", with(search, "parameters", Value::Array(params)));
        let form = op(
            &format!("search-post-{ty}"),
            &format!("Search {ty} with the parameters in a form body"),
            ty,
            responses(vec![("200", response_ref("Bundle"))]),
        );
        let body = json!({"required": false, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}});
        add(paths, &format!("{base}/_search"), "post", with(form, "requestBody", body));
    }
    if has("create") {
        let create = op(
            &format!("create-{ty}"),
            &format!("Create a {ty} (If-None-Exist: only if no match)"),
            ty,
            responses(vec![
                ("201", one("Created (per Prefer: return=…)")),
                ("200", one("An existing match of If-None-Exist")),
            ]),
        );
        let create = with(create, "requestBody", fhir_body(ty));
        let if_none = json!([{"name": "If-None-Exist", "in": "header", "description": "A search: create only if nothing matches", "schema": {"type": "string"}}]);
        add(paths, &base, "post", with(create, "parameters", if_none));
    }
    if has("update") {
        let update = op(
            &format!("update-conditional-{ty}"),
            &format!("Conditional update: the {ty} matching the query's search"),
            ty,
            responses(vec![("200", one("Updated")), ("201", one("Created"))]),
        );
        add(paths, &base, "put", with(update, "requestBody", fhir_body(ty)));
    }
    if has("patch") {
        let patch = op(
            &format!("patch-conditional-{ty}"),
            &format!("Conditional patch: the {ty} matching the query's search"),
            ty,
            responses(vec![("200", one("Patched"))]),
        );
        add(paths, &base, "patch", with(patch, "requestBody", patch_body()));
    }
    if has("delete") {
        let delete = op(
            &format!("delete-conditional-{ty}"),
            &format!("Conditional delete: the {ty} resources matching the query's search"),
            ty,
            responses(vec![("200", response_ref("Outcome"))]),
        );
        add(paths, &base, "delete", delete);
    }
    if has("history-type") {
        let history = op(
            &format!("history-{ty}"),
            &format!("Every change to {ty} resources"),
            ty,
            responses(vec![("200", response_ref("Bundle"))]),
        );
        add(
            paths,
            &format!("{base}/_history"),
            "get",
            with(history, "parameters", json!([param_ref("_count")])),
        );
    }
    if has("read") {
        let read = op(
            &format!("read-{ty}"),
            &format!("Read a {ty}"),
            ty,
            responses(vec![
                ("200", one("The current version")),
                ("304", json!({"description": "Not modified"})),
            ]),
        );
        let mut read = read;
        if ty == "Binary" {
            // Without `Accept: application/fhir+json` (or `_format`), a Binary read is its content.
            read["responses"]["200"]["content"]["*/*"] = json!({"schema": {}});
        }
        add(paths, &instance, "get", read);
    }
    if has("update") {
        let update = op(
            &format!("update-{ty}"),
            &format!("Update (or create with this id) a {ty}"),
            ty,
            responses(vec![("200", one("Updated")), ("201", one("Created"))]),
        );
        let update = with(update, "requestBody", fhir_body(ty));
        add(paths, &instance, "put", with(update, "parameters", json!([param_ref("If-Match")])));
    }
    if has("patch") {
        let patch = op(
            &format!("patch-{ty}"),
            &format!("JSON Patch a {ty}"),
            ty,
            responses(vec![("200", one("Patched"))]),
        );
        let patch = with(patch, "requestBody", patch_body());
        add(paths, &instance, "patch", with(patch, "parameters", json!([param_ref("If-Match")])));
    }
    if has("delete") {
        let delete = op(
            &format!("delete-{ty}"),
            &format!("Delete a {ty}"),
            ty,
            responses(vec![("200", response_ref("Outcome"))]),
        );
        add(paths, &instance, "delete", delete);
    }
    if paths.contains_key(&instance) {
        paths[&instance]["parameters"] = id();
    }
    if has("history-instance") {
        let history = op(
            &format!("history-instance-{ty}"),
            &format!("Every version of a {ty}"),
            ty,
            responses(vec![("200", response_ref("Bundle"))]),
        );
        let path = format!("{instance}/_history");
        add(paths, &path, "get", with(history, "parameters", json!([param_ref("_count")])));
        paths[&path]["parameters"] = id();
    }
    if has("vread") {
        let vread = op(
            &format!("vread-{ty}"),
            &format!("Read one version of a {ty}"),
            ty,
            responses(vec![("200", one("That version"))]),
        );
        let path = format!("{instance}/_history/{{vid}}");
        add(paths, &path, "get", vread);
        paths[&path]["parameters"] = json!([param_ref("id"), param_ref("vid")]);
    }
    for operation in resource["operation"].as_array().into_iter().flatten() {
        let name = operation["name"].as_str().unwrap_or_default();
        for (path, method, op) in type_operation(ty, name) {
            add(paths, &path, method, op);
            if path.contains("{id}") {
                paths[&path]["parameters"] = id();
            }
        }
    }
    for (path, method, op) in kiln_operations(ty) {
        add(paths, &path, method, op);
        paths[&path]["parameters"] = id();
    }
}

/// A PATCH body: JSON Patch, or FHIRPath Patch (a `Parameters` resource).
fn patch_body() -> Value {
    json!({"required": true, "content": {
        "application/json-patch+json": {"schema": schemas::reference("JsonPatch")},
        "application/fhir+json": {"schema": schemas::reference("Parameters")},
    }})
}

/// The routes serving the type-level operation `name` of the CapabilityStatement.
fn type_operation(ty: &str, name: &str) -> Vec<(String, &'static str, Map<String, Value>)> {
    let base = format!("{FHIR}/{ty}");
    let accepted = || responses(vec![("202", response_ref("Accepted"))]);
    match (name, ty) {
        ("validate", _) => {
            let validate = op(
                &format!("validate-{ty}"),
                &format!("Validate a {ty} without storing it"),
                ty,
                responses(vec![("200", response_ref("Outcome"))]),
            );
            vec![(
                format!("{base}/$validate"),
                "post",
                with(validate, "requestBody", fhir_body(ty)),
            )]
        }
        ("reindex", _) => vec![
            (
                format!("{base}/$reindex"),
                "post",
                with(
                    op(
                        &format!("reindex-{ty}"),
                        &format!("Recompute the search index of every {ty} (a job)"),
                        ty,
                        accepted(),
                    ),
                    "requestBody",
                    optional_parameters_body(),
                ),
            ),
            (
                format!("{base}/{{id}}/$reindex"),
                "post",
                op(
                    &format!("reindex-instance-{ty}"),
                    &format!("Recompute one {ty}'s search index"),
                    ty,
                    responses(vec![("200", response_ref("Outcome"))]),
                ),
            ),
        ],
        ("everything", "Patient") => {
            let params = json!([
                param_ref("id"),
                param_ref("_count"),
                {"name": "_since", "in": "query", "schema": schemas::reference("instant")},
                {"name": "_type", "in": "query", "schema": {"type": "string"}},
                {"name": "start", "in": "query", "schema": schemas::reference("date")},
                {"name": "end", "in": "query", "schema": schemas::reference("date")},
            ]);
            let everything = op(
                "everything-Patient",
                "Everything in the patient's compartment",
                ty,
                responses(vec![("200", response_ref("Bundle"))]),
            );
            vec![(
                format!("{base}/{{id}}/$everything"),
                "get",
                with(everything, "parameters", params),
            )]
        }
        ("export", "Patient" | "Group") => {
            let path = if ty == "Group" {
                format!("{base}/{{id}}/$export")
            } else {
                format!("{base}/$export")
            };
            let summary = format!("Bulk Data export of {ty} data (async)");
            vec![
                (path.clone(), "get", op(&format!("export-{ty}"), &summary, ty, accepted())),
                (
                    path,
                    "post",
                    with(
                        op(&format!("export-post-{ty}"), &summary, ty, accepted()),
                        "requestBody",
                        optional_parameters_body(),
                    ),
                ),
            ]
        }
        (name, _) if terminology_params(ty, name).is_some() => terminology_operation(ty, name),
        ("cancel", "AsyncJob") => vec![(
            format!("{base}/{{id}}/$cancel"),
            "post",
            op(
                "cancel-AsyncJob",
                "Cancel a background job",
                ty,
                responses(vec![("200", response_ref("Outcome"))]),
            ),
        )],
        _ => Vec::new(),
    }
}

/// The query parameters of a terminology operation (its GET form): name, JSON Schema type.
fn terminology_params(ty: &str, name: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match (ty, name) {
        ("ValueSet", "expand") => &[
            ("url", "string"),
            ("valueSetVersion", "string"),
            ("filter", "string"),
            ("count", "integer"),
            ("offset", "integer"),
            ("activeOnly", "boolean"),
            ("includeDesignations", "boolean"),
            ("displayLanguage", "string"),
        ],
        ("ValueSet", "validate-code") => &[
            ("url", "string"),
            ("valueSetVersion", "string"),
            ("code", "string"),
            ("system", "string"),
            ("display", "string"),
            ("coding", "string"),
        ],
        ("CodeSystem", "lookup") => &[
            ("system", "string"),
            ("code", "string"),
            ("version", "string"),
            ("coding", "string"),
            ("property", "string"),
            ("displayLanguage", "string"),
        ],
        ("CodeSystem", "validate-code") => &[
            ("url", "string"),
            ("version", "string"),
            ("code", "string"),
            ("display", "string"),
            ("coding", "string"),
        ],
        ("CodeSystem", "subsumes") => &[
            ("system", "string"),
            ("version", "string"),
            ("codeA", "string"),
            ("codeB", "string"),
            ("codingA", "string"),
            ("codingB", "string"),
        ],
        ("ConceptMap", "translate") => &[
            ("url", "string"),
            ("conceptMapVersion", "string"),
            ("system", "string"),
            ("code", "string"),
            ("coding", "string"),
            ("source", "string"),
            ("target", "string"),
            ("targetsystem", "string"),
            ("reverse", "boolean"),
        ],
        _ => return None,
    })
}

/// A terminology operation's four routes: GET and POST, type and instance level.
fn terminology_operation(ty: &str, name: &str) -> Vec<(String, &'static str, Map<String, Value>)> {
    let params: Vec<Value> = terminology_params(ty, name)
        .unwrap_or_default()
        .iter()
        .map(|(p, t)| json!({"name": p, "in": "query", "schema": {"type": t}}))
        .collect();
    let result = if name == "expand" { "ValueSet" } else { "Parameters" };
    let ok = || responses(vec![("200", fhir_response("The operation's answer", result))]);
    let mut out = Vec::new();
    for (level, path) in
        [("", format!("{FHIR}/{ty}/${name}")), ("instance-", format!("{FHIR}/{ty}/{{id}}/${name}"))]
    {
        let on = if level.is_empty() { ty.to_owned() } else { format!("one {ty}") };
        let get = op(&format!("{name}-{level}{ty}"), &format!("${name} on {on}"), ty, ok());
        out.push((path.clone(), "get", with(get, "parameters", Value::Array(params.clone()))));
        let post = op(
            &format!("{name}-{level}post-{ty}"),
            &format!("${name} on {on}, parameters in a Parameters body"),
            ty,
            ok(),
        );
        out.push((path, "post", with(post, "requestBody", fhir_body("Parameters"))));
    }
    out
}

/// Medplum's instance operations Kiln serves that have no FHIR OperationDefinition (and so no
/// place in the CapabilityStatement).
fn kiln_operations(ty: &str) -> Vec<(String, &'static str, Map<String, Value>)> {
    let instance = format!("{FHIR}/{ty}/{{id}}");
    match ty {
        "ClientApplication" => vec![
            (
                format!("{instance}/$rotate-secret"),
                "post",
                op(
                    "rotate-secret-ClientApplication",
                    "A new client secret",
                    ty,
                    responses(vec![(
                        "200",
                        fhir_response("The client with its new secret", "ClientApplication"),
                    )]),
                ),
            ),
            (
                format!("{instance}/$smart-launch"),
                "get",
                op(
                    "smart-launch-ClientApplication",
                    "EHR launch: a launch context (?patient=, &encounter=), then a redirect to the app",
                    ty,
                    responses(vec![("302", response_ref("Redirect"))]),
                ),
            ),
        ],
        _ => Vec::new(),
    }
}

/// `GET /Patient/{id}/{type}` and `/Patient/{id}/*`.
fn compartment_paths(paths: &mut Map<String, Value>) {
    let defs = definitions();
    let types: Vec<&str> =
        defs.resource_types().filter(|t| defs.patient_compartment_params(t).is_some()).collect();
    let params = json!([
        param_ref("id"),
        {"name": "type", "in": "path", "required": true, "schema": {"enum": types}},
    ]);
    let search = op(
        "search-compartment-Patient",
        "Search one type in a patient's compartment",
        "Patient",
        responses(vec![("200", response_ref("Bundle"))]),
    );
    let search = with(search, "parameters", json!(search_results()));
    let path = format!("{FHIR}/Patient/{{id}}/{{type}}");
    add(paths, &path, "get", search);
    paths[&path]["parameters"] = params;
    let all = op(
        "search-compartment-all-Patient",
        "Search every type in a patient's compartment",
        "Patient",
        responses(vec![("200", response_ref("Bundle"))]),
    );
    let path = format!("{FHIR}/Patient/{{id}}/*");
    add(paths, &path, "get", with(all, "parameters", json!(search_results())));
    paths[&path]["parameters"] = json!([param_ref("id")]);
}

/// A JSON request body with these properties (`name` or `name:boolean`), `required` among them.
fn json_body(props: &[&str], required: &[&str]) -> Value {
    let properties: Map<String, Value> = props
        .iter()
        .map(|p| match p.split_once(':') {
            Some((name, kind)) => (name.to_owned(), json!({"type": kind})),
            None => ((*p).to_owned(), json!({"type": "string"})),
        })
        .collect();
    json!({"required": true, "content": {"application/json": {"schema": {
        "type": "object", "required": required, "properties": properties,
    }}}})
}

fn form_body(props: &[&str], required: &[&str]) -> Value {
    let properties: Map<String, Value> =
        props.iter().map(|p| ((*p).to_owned(), json!({"type": "string"}))).collect();
    json!({"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "required": required, "properties": properties,
    }}}})
}

/// The auth, OAuth 2.0/SMART and admin endpoints of [`crate::router`].
fn auth_paths(registration: Registration, paths: &mut Map<String, Value>) {
    let json_ok = || responses(vec![("200", response_ref("Json"))]);
    let outcome_ok = || responses(vec![("200", response_ref("Outcome"))]);
    let html = || responses(vec![("200", response_ref("Html"))]);
    let redirect =
        || responses(vec![("302", response_ref("Redirect")), ("303", response_ref("Redirect"))]);

    add(
        paths,
        "/openapi.json",
        "get",
        public(op("openapi", "This document (gzip on request)", "system", json_ok())),
    );
    add(
        paths,
        "/healthcheck",
        "get",
        public(op("healthcheck", "Liveness and version", "system", json_ok())),
    );

    let login_fields = [
        "email",
        "password",
        "scope",
        "codeChallenge",
        "codeChallengeMethod",
        "clientId",
        "projectId",
        "nonce",
        "remember:boolean",
    ];
    let auth = |id: &str, summary: &str, rs: Map<String, Value>| op(id, summary, "auth", rs);
    add(
        paths,
        "/auth/login",
        "post",
        public(with(
            auth(
                "login",
                "Sign in: a login id, and a code (or the memberships to choose from)",
                json_ok(),
            ),
            "requestBody",
            json_body(&login_fields, &["email", "password"]),
        )),
    );
    add(
        paths,
        "/auth/profile",
        "post",
        public(with(
            auth("profile", "Choose a membership of a pending login", json_ok()),
            "requestBody",
            json_body(&["login", "profile"], &["login", "profile"]),
        )),
    );
    add(
        paths,
        "/auth/me",
        "get",
        auth("me", "The signed-in user, profile, project and membership", json_ok()),
    );
    add(
        paths,
        "/auth/setpassword",
        "post",
        public(with(
            auth("setpassword", "Set a password from an emailed link", outcome_ok()),
            "requestBody",
            json_body(&["id", "secret", "password"], &["id", "secret", "password"]),
        )),
    );
    add(
        paths,
        "/auth/changepassword",
        "post",
        with(
            auth("changepassword", "Change one's own password", outcome_ok()),
            "requestBody",
            json_body(&["oldPassword", "newPassword"], &["oldPassword", "newPassword"]),
        ),
    );
    if registration != Registration::Off {
        let fields = [
            "firstName",
            "lastName",
            "email",
            "password",
            "recaptchaToken",
            "projectId",
            "clientId",
            "scope",
            "nonce",
            "codeChallenge",
            "codeChallengeMethod",
        ];
        add(
            paths,
            "/auth/newuser",
            "post",
            public(with(
                auth(
                    "newuser",
                    "Register a user (server-wide, or a patient of projectId)",
                    json_ok(),
                ),
                "requestBody",
                json_body(&fields, &["firstName", "lastName", "email", "password"]),
            )),
        );
        add(
            paths,
            "/auth/newpatient",
            "post",
            public(with(
                auth("newpatient", "Make a registered user a patient of a project", json_ok()),
                "requestBody",
                json_body(&["login", "projectId"], &["login", "projectId"]),
            )),
        );
    }
    if registration == Registration::Open {
        add(
            paths,
            "/auth/newproject",
            "post",
            public(with(
                auth("newproject", "Create a project owned by a registered user", json_ok()),
                "requestBody",
                json_body(&["login", "projectName"], &["login", "projectName"]),
            )),
        );
    }
    add(
        paths,
        "/auth/resetpassword",
        "post",
        public(with(
            auth("resetpassword", "Mail a password reset link", outcome_ok()),
            "requestBody",
            json_body(&["email", "projectId", "recaptchaToken"], &["email"]),
        )),
    );
    add(
        paths,
        "/auth/revoke",
        "post",
        with(
            auth("revoke-login", "End one of one's own sessions", outcome_ok()),
            "requestBody",
            json_body(&["loginId"], &["loginId"]),
        ),
    );
    add(paths, "/auth/mfa/status", "get", auth("mfa-status", "Whether MFA is enrolled", json_ok()));
    add(
        paths,
        "/auth/mfa/enroll",
        "post",
        with(
            auth("mfa-enroll", "Enroll a TOTP authenticator", json_ok()),
            "requestBody",
            json_body(&["token"], &[]),
        ),
    );
    add(
        paths,
        "/auth/mfa/verify",
        "post",
        public(with(
            auth("mfa-verify", "Complete a login with a TOTP code", json_ok()),
            "requestBody",
            json_body(&["login", "token"], &["login", "token"]),
        )),
    );
    add(
        paths,
        "/auth/mfa/disable",
        "post",
        with(
            auth("mfa-disable", "Remove MFA", outcome_ok()),
            "requestBody",
            json_body(&["token"], &["token"]),
        ),
    );

    let oauth = |id: &str, summary: &str, rs: Map<String, Value>| op(id, summary, "oauth2", rs);
    let token_errors = |mut rs: Map<String, Value>| {
        let error = json!({"description": "An OAuth 2.0 error", "content": {"application/json": {"schema": schemas::reference("OAuthError")}}});
        rs.insert("400".into(), error.clone());
        rs.insert("401".into(), error);
        rs
    };
    add(
        paths,
        "/oauth2/token",
        "post",
        public(with(
            oauth(
                "token",
                "Tokens: authorization_code (with PKCE), client_credentials (secret or private_key_jwt), refresh_token",
                token_errors(json_ok()),
            ),
            "requestBody",
            form_body(
                &[
                    "grant_type",
                    "code",
                    "code_verifier",
                    "redirect_uri",
                    "client_id",
                    "client_secret",
                    "client_assertion_type",
                    "client_assertion",
                    "refresh_token",
                    "scope",
                ],
                &["grant_type"],
            ),
        )),
    );
    add(
        paths,
        "/oauth2/introspect",
        "post",
        public(with(
            oauth("introspect", "Token introspection (RFC 7662)", json_ok()),
            "requestBody",
            form_body(&["token", "client_id", "client_secret"], &["token"]),
        )),
    );
    add(
        paths,
        "/oauth2/revoke",
        "post",
        public(with(
            oauth(
                "revoke-token",
                "Token revocation (RFC 7009)",
                responses(vec![("200", json!({"description": "Revoked (or unknown)"}))]),
            ),
            "requestBody",
            form_body(&["token", "token_type_hint", "client_id", "client_secret"], &["token"]),
        )),
    );
    let logout = || oauth("logout", "End the session of the token", json_ok());
    add(paths, "/oauth2/logout", "post", logout());
    let mut get_logout = logout();
    get_logout.insert("operationId".into(), json!("logout-get"));
    add(paths, "/oauth2/logout", "get", get_logout);
    add(paths, "/oauth2/userinfo", "get", oauth("userinfo", "OpenID Connect UserInfo", json_ok()));
    add(
        paths,
        "/oauth2/userinfo",
        "post",
        oauth("userinfo-post", "OpenID Connect UserInfo", json_ok()),
    );
    add(
        paths,
        "/.well-known/jwks.json",
        "get",
        public(oauth("jwks", "The token signing keys (JWKS)", json_ok())),
    );
    add(
        paths,
        "/.well-known/smart-configuration",
        "get",
        public(oauth("smart-configuration", "SMART App Launch discovery", json_ok())),
    );
    add(
        paths,
        &format!("{FHIR}/.well-known/smart-configuration"),
        "get",
        public(oauth(
            "smart-configuration-fhir",
            "SMART App Launch discovery (under the FHIR base)",
            json_ok(),
        )),
    );
    add(
        paths,
        "/.well-known/openid-configuration",
        "get",
        public(oauth("openid-configuration", "OpenID Connect discovery", json_ok())),
    );
    add(
        paths,
        "/oauth2/smart-style.json",
        "get",
        public(oauth("smart-style", "SMART styling for apps", json_ok())),
    );
    let authorize_params = json!([
        {"name": "response_type", "in": "query", "required": true, "schema": {"const": "code"}},
        {"name": "client_id", "in": "query", "required": true, "schema": {"type": "string"}},
        {"name": "redirect_uri", "in": "query", "schema": {"type": "string"}},
        {"name": "scope", "in": "query", "schema": {"type": "string"}},
        {"name": "state", "in": "query", "schema": {"type": "string"}},
        {"name": "aud", "in": "query", "schema": {"type": "string"}},
        {"name": "launch", "in": "query", "schema": {"type": "string"}},
        {"name": "code_challenge", "in": "query", "schema": {"type": "string"}},
        {"name": "code_challenge_method", "in": "query", "schema": {"const": "S256"}},
        {"name": "nonce", "in": "query", "schema": {"type": "string"}},
    ]);
    let mut authorize = html();
    authorize.extend(redirect());
    add(
        paths,
        "/oauth2/authorize",
        "get",
        public(with(
            oauth(
                "authorize",
                "Authorization request (browser): sign-in and consent pages, then a redirect with a code",
                authorize.clone(),
            ),
            "parameters",
            authorize_params,
        )),
    );
    let browser_form = || json!({"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}});
    add(
        paths,
        "/oauth2/authorize",
        "post",
        public(with(
            oauth(
                "authorize-post",
                "Authorization request as a form post (browser)",
                authorize.clone(),
            ),
            "requestBody",
            browser_form(),
        )),
    );
    for (path, id, summary) in [
        (
            "/oauth2/authorize/signin",
            "authorize-signin",
            "The authorization page's sign-in form (browser)",
        ),
        (
            "/oauth2/authorize/consent",
            "authorize-consent",
            "The authorization page's consent form (browser)",
        ),
        ("/oauth2/signin", "signin", "Sign in to the server's pages (browser)"),
        ("/oauth2/signout", "signout", "Sign out of the server's pages (browser)"),
        ("/oauth2/apps/revoke", "apps-revoke", "Revoke an app's access (browser)"),
        ("/oauth2/launch", "launch", "Start an EHR launch (browser)"),
    ] {
        add(
            paths,
            path,
            "post",
            public(with(oauth(id, summary, authorize.clone()), "requestBody", browser_form())),
        );
    }
    add(
        paths,
        "/oauth2/signin",
        "get",
        public(oauth("signin-page", "The sign-in page (browser)", html())),
    );
    add(
        paths,
        "/oauth2/apps",
        "get",
        public(oauth(
            "apps",
            "The apps the signed-in user has authorized (browser)",
            authorize.clone(),
        )),
    );
    add(
        paths,
        "/oauth2/launch",
        "get",
        public(oauth("launch-page", "The EHR launch page (browser)", authorize)),
    );

    let admin = |id: &str, summary: &str, rs: Map<String, Value>| op(id, summary, "admin", rs);
    let project_id = json!({"name": "projectId", "in": "path", "required": true, "schema": schemas::reference("id")});
    let membership_id = json!({"name": "membershipId", "in": "path", "required": true, "schema": schemas::reference("id")});
    add(
        paths,
        "/admin/projects",
        "post",
        with(
            admin(
                "admin-create-project",
                "Create a project (super administrators)",
                responses(vec![("201", fhir_response("The Project", "Project"))]),
            ),
            "requestBody",
            json_body(&["name"], &["name"]),
        ),
    );
    add(
        paths,
        "/admin/projects/{projectId}",
        "get",
        admin("admin-project", "A project and its members", json_ok()),
    );
    paths["/admin/projects/{projectId}"]["parameters"] = json!([project_id]);
    add(
        paths,
        "/admin/projects/{projectId}/invite",
        "post",
        with(
            admin(
                "admin-invite",
                "Invite a user (by email) into the project",
                responses(vec![("201", fhir_response("The membership", "ProjectMembership"))]),
            ),
            "requestBody",
            json_body(
                &[
                    "resourceType",
                    "firstName",
                    "lastName",
                    "email",
                    "password",
                    "sendEmail:boolean",
                    "admin:boolean",
                ],
                &["firstName", "lastName"],
            ),
        ),
    );
    paths["/admin/projects/{projectId}/invite"]["parameters"] = json!([project_id]);
    add(
        paths,
        "/admin/projects/{projectId}/client",
        "post",
        with(
            admin(
                "admin-client",
                "Create a ClientApplication and its membership",
                responses(vec![(
                    "201",
                    fhir_response("The client and its secret", "ClientApplication"),
                )]),
            ),
            "requestBody",
            json_body(
                &["name", "description", "redirectUri", "launchUri", "jwksUri", "public:boolean"],
                &["name"],
            ),
        ),
    );
    paths["/admin/projects/{projectId}/client"]["parameters"] = json!([project_id]);
    let member = "/admin/projects/{projectId}/members/{membershipId}";
    add(
        paths,
        member,
        "get",
        admin(
            "admin-member",
            "A membership",
            responses(vec![("200", fhir_response("The membership", "ProjectMembership"))]),
        ),
    );
    add(
        paths,
        member,
        "post",
        with(
            admin(
                "admin-update-member",
                "Replace a membership",
                responses(vec![("200", fhir_response("The membership", "ProjectMembership"))]),
            ),
            "requestBody",
            fhir_body("ProjectMembership"),
        ),
    );
    add(paths, member, "delete", admin("admin-delete-member", "Remove a membership", outcome_ok()));
    paths[member]["parameters"] = json!([project_id, membership_id]);
}
