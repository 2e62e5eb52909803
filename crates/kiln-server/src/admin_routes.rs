//! Project administration with Medplum's contract, under `/admin/projects/{projectId}`:
//! `invite`, `client`, the overview, and `members/{membershipId}` (GET, POST, DELETE); and
//! `POST /admin/projects` for a super admin to create a project. Each
//! handler makes one engine call; the engine checks that the caller administers the project.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kiln_engine::admin::{ClientRequest, InviteRequest};

use crate::AppState;
use crate::auth_routes::{all_ok, json_body, no_store};
use crate::error::ApiError;
use crate::extract::{Auth, FhirPath as Path, LimitedBody, parse_json, require_json};
use crate::response::fhir_json;

type ApiResult = Result<Response, ApiError>;

/// `POST /admin/projects` `{name}` (super admins): 201 with the new Project.
pub async fn create_project(
    State(state): State<AppState>,
    Auth(who): Auth,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let body: serde_json::Value = json_body(&headers, &body)?;
    let project = state.engine.create_project_as(&who, &body).await?;
    Ok(fhir_json(StatusCode::CREATED, &project, false))
}

/// `POST /admin/projects/{projectId}/invite`: 201 with the ProjectMembership.
pub async fn invite(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: InviteRequest = json_body(&headers, &body)?;
    let membership = state.engine.invite(&who, &project_id, req).await?;
    Ok(fhir_json(StatusCode::CREATED, &membership, false))
}

/// `POST /admin/projects/{projectId}/client`: 201 with the ClientApplication and its secret.
pub async fn client(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    let req: ClientRequest = json_body(&headers, &body)?;
    let client = state.engine.create_client(&who, &project_id, req).await?;
    Ok(no_store(fhir_json(StatusCode::CREATED, &client, false)))
}

/// `GET /admin/projects/{projectId}`: `{project, members}`.
pub async fn project(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(project_id): Path<String>,
) -> ApiResult {
    let out = state.engine.project_overview(&who, &project_id).await?;
    Ok(fhir_json(StatusCode::OK, &out, false))
}

/// `GET /admin/projects/{projectId}/members/{membershipId}`.
pub async fn get_member(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((project_id, membership_id)): Path<(String, String)>,
) -> ApiResult {
    let membership = state.engine.get_member(&who, &project_id, &membership_id).await?;
    Ok(fhir_json(StatusCode::OK, &membership, false))
}

/// `POST /admin/projects/{projectId}/members/{membershipId}` with a ProjectMembership.
pub async fn update_member(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((project_id, membership_id)): Path<(String, String)>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> ApiResult {
    require_json(&headers)?;
    let body = parse_json(&body)?;
    let membership = state.engine.update_member(&who, &project_id, &membership_id, body).await?;
    Ok(fhir_json(StatusCode::OK, &membership, false))
}

/// `DELETE /admin/projects/{projectId}/members/{membershipId}`.
pub async fn delete_member(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((project_id, membership_id)): Path<(String, String)>,
) -> ApiResult {
    state.engine.delete_member(&who, &project_id, &membership_id).await?;
    Ok(all_ok("Membership deleted"))
}
