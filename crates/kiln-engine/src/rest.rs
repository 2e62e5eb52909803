//! The instance and type interactions: create, read, vread, update, patch, delete, and Binary
//! content. Each validates, stamps server-owned metadata, and makes one store call.

use kiln_definitions::definitions;
use kiln_model::{Issue, IssueCode, has_failure, is_valid_id};
use kiln_store::{Precondition, StoredResource, WriteMethod, WriteOp, WriteResult};
use serde_json::{Map, Value, json};

use crate::{Engine, EngineError, Interaction, RequestContext};

/// The result of a write the client asked for.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub stored: StoredResource,
    /// True when the write created the resource (201), false when it replaced one (200).
    pub created: bool,
}

/// A PATCH body in one of the formats Kiln accepts.
#[derive(Debug, Clone)]
pub enum PatchBody {
    /// RFC 6902 JSON Patch (`application/json-patch+json`).
    JsonPatch(Value),
    /// FHIRPath Patch: a `Parameters` resource (`application/fhir+json`).
    FhirPath(Value),
}

/// Binary is not a DomainResource (no extensions), so the upload's file name is kept as a tag.
const FILENAME_TAG_SYSTEM: &str = "https://kiln.dev/fhir/CodeSystem/binary-filename";

/// The content of a Binary, ready to serve.
#[derive(Debug, Clone)]
pub struct BinaryContent {
    pub content_type: String,
    pub bytes: Vec<u8>,
    /// The `_filename` given at upload, if any.
    pub filename: Option<String>,
}

/// A store write of a prepared resource, with its search index rows and unique keys (those
/// given, plus an account resource's own: [`crate::accounts::account_keys`]).
pub(crate) fn put_op(
    resource: Value,
    method: WriteMethod,
    precondition: Precondition,
    unique_keys: Vec<(String, String)>,
    registry: &kiln_search::Registry,
) -> WriteOp {
    let mut resource = resource;
    crate::accounts::seal_client_secrets(&mut resource);
    let index = registry.extract(&resource);
    let mut unique_keys = unique_keys;
    for key in crate::accounts::account_keys(&resource) {
        if !unique_keys.contains(&key) {
            unique_keys.push(key);
        }
    }
    WriteOp::Put { resource, method, precondition, unique_keys, index }
}

/// A new server-assigned logical id.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Engine {
    /// 404 for anything that is not a concrete resource type Kiln knows.
    pub fn check_type(&self, ty: &str) -> Result<(), EngineError> {
        if definitions().is_resource_type(ty) {
            Ok(())
        } else {
            Err(EngineError::NotFound(format!("Unknown resource type '{ty}'")))
        }
    }

    fn check_id(id: &str) -> Result<(), EngineError> {
        if is_valid_id(id) {
            Ok(())
        } else {
            Err(EngineError::invalid(format!("'{id}' is not a valid FHIR id")))
        }
    }

    /// Validates `resource` as a `ty` and sets what the server owns: `id`, `meta.project` and
    /// `meta.author`. The store adds `meta.versionId` and `meta.lastUpdated`.
    pub(crate) fn prepare(
        &self,
        ctx: &RequestContext,
        ty: &str,
        id: &str,
        mut resource: Value,
    ) -> Result<Value, EngineError> {
        let Value::Object(obj) = &mut resource else {
            return Err(EngineError::invalid(
                "The request body must be a JSON object (a FHIR resource)",
            ));
        };
        match obj.get("resourceType").and_then(Value::as_str) {
            Some(actual) if actual == ty => {}
            Some(actual) => {
                return Err(EngineError::Invalid(vec![
                    Issue::error(
                        IssueCode::Invalid,
                        format!("resourceType '{actual}' does not match the URL's type '{ty}'"),
                    )
                    .at("resourceType"),
                ]));
            }
            None => {
                return Err(EngineError::Invalid(vec![
                    Issue::error(IssueCode::Required, "Missing resourceType").at("resourceType"),
                ]));
            }
        }
        obj.insert("id".into(), Value::String(id.to_owned()));
        // Server-owned meta fields are not the client's to set; drop them before validating so
        // a stale versionId in a client's copy is not an error.
        if let Some(Value::Object(meta)) = obj.get_mut("meta") {
            for key in ["versionId", "lastUpdated", "project", "author", "compartment"] {
                meta.remove(key);
            }
            if meta.is_empty() {
                obj.remove("meta");
            }
        }
        let issues = kiln_validate::validate_resource(&resource);
        if has_failure(&issues) {
            return Err(EngineError::Invalid(issues));
        }
        // An active SearchParameter must be one Kiln can index; drafts may be anything.
        if ty == "SearchParameter"
            && let Err(reason) = kiln_search::Registry::base().admits(&resource)
        {
            return Err(EngineError::invalid(format!(
                "This SearchParameter cannot be made active: {reason} (store it as a draft, or fix it)"
            )));
        }
        // Canonical key order: resourceType, id, meta, then the client's elements as sent.
        let Value::Object(mut rest) = resource else { return Ok(resource) };
        let mut out = Map::with_capacity(rest.len() + 2);
        out.insert("resourceType".into(), rest.shift_remove("resourceType").unwrap_or(Value::Null));
        out.insert("id".into(), rest.shift_remove("id").unwrap_or(Value::Null));
        let mut meta = match rest.shift_remove("meta") {
            Some(Value::Object(meta)) => meta,
            _ => Map::new(),
        };
        meta.insert("project".into(), Value::String(ctx.project.as_str().to_owned()));
        if let Some(author) = &ctx.author {
            meta.insert("author".into(), json!({ "reference": author }));
        }
        out.insert("meta".into(), Value::Object(meta));
        out.extend(rest);
        Ok(Value::Object(out))
    }

    /// Stores a prepared resource: the one write path of create, update, patch and Binary.
    pub(crate) async fn put(
        &self,
        ctx: &RequestContext,
        resource: Value,
        method: WriteMethod,
        precondition: Precondition,
    ) -> Result<WriteOutcome, EngineError> {
        self.enforce_profiles(ctx, &resource).await?;
        let registry = self.registry(&ctx.project).await?;
        let op = put_op(resource, method, precondition, vec![], &registry);
        let res = self.write_op(ctx, op, &registry).await?;
        written(res)
    }

    /// `POST /{type}`: the server picks the id; any id in the body is ignored.
    pub async fn create(
        &self,
        ctx: &RequestContext,
        ty: &str,
        resource: Value,
    ) -> Result<WriteOutcome, EngineError> {
        self.check_type(ty)?;
        let id = new_id();
        let resource = self.prepare(ctx, ty, &id, resource)?;
        self.put(ctx, resource, WriteMethod::Post, Precondition::MustNotExist).await
    }

    /// `GET /{type}/{id}`: the current version; 410 if deleted.
    pub async fn read(
        &self,
        ctx: &RequestContext,
        ty: &str,
        id: &str,
    ) -> Result<StoredResource, EngineError> {
        self.check_type(ty)?;
        Self::check_id(id)
            .map_err(|_| EngineError::NotFound(format!("Resource {ty}/{id} not found")))?;
        // A type the caller may not read is refused before the lookup, so the answer says
        // nothing about existence (a Binary may still be readable through its context).
        ctx.access.usable()?;
        let grant = ctx.access.grant(ty, Interaction::Read);
        if ty != "Binary" && matches!(grant, crate::policy::Grant::Nothing) {
            ctx.access.check_type(ty, Interaction::Read)?;
        }
        let mut stored = self.store().read(&ctx.project, ty, id).await?;
        match self.check_grant(ctx, &stored, grant, Interaction::Read).await {
            Ok(()) => {}
            // A Binary the caller's policy does not admit is still theirs to read when they
            // may read the resource its `securityContext` names (Medplum's rule).
            Err(_) if ty == "Binary" && !stored.deleted && has_security_context(&stored) => {
                self.security_context_readable(ctx, &stored).await.map_err(|e| match e {
                    EngineError::Forbidden(_) => {
                        EngineError::NotFound(format!("Resource {ty}/{id} not found"))
                    }
                    other => other,
                })?
            }
            Err(e) => return Err(e),
        }
        if stored.deleted {
            return Err(EngineError::Gone(format!("Resource {ty}/{id} has been deleted")));
        }
        ctx.access.redact(&mut stored)?;
        Ok(stored)
    }

    /// Whether the caller may read the resource a Binary's `securityContext` references
    /// (not another Binary: no chains of them).
    async fn security_context_readable(
        &self,
        ctx: &RequestContext,
        binary: &StoredResource,
    ) -> Result<(), EngineError> {
        let denied = || EngineError::Forbidden("No access to this Binary".into());
        let body: Value = serde_json::from_slice(&binary.body).map_err(|_| denied())?;
        let reference = body["securityContext"]["reference"].as_str().ok_or_else(denied)?;
        let (ty, id) = reference.split_once('/').ok_or_else(denied)?;
        if ty == "Binary" {
            return Err(denied());
        }
        Box::pin(self.read(ctx, ty, id)).await.map(|_| ())
    }

    /// `GET /{type}/{id}/_history/{vid}`: 410 if that version is a deletion.
    pub async fn vread(
        &self,
        ctx: &RequestContext,
        ty: &str,
        id: &str,
        version: &str,
    ) -> Result<StoredResource, EngineError> {
        self.check_type(ty)?;
        let not_found =
            || EngineError::NotFound(format!("Version {version} of {ty}/{id} not found"));
        Self::check_id(id).map_err(|_| not_found())?;
        let version: i64 = version.parse().map_err(|_| not_found())?;
        ctx.access.check_type(ty, Interaction::Vread)?;
        let mut stored = self.store().vread(&ctx.project, ty, id, version).await?;
        if !ctx.access.unrestricted() {
            // One resource, one decision: its versions are visible when its current version
            // is (as for its history), whatever an older version held.
            let current = self.store().read(&ctx.project, ty, id).await?;
            self.check_access(ctx, &current, Interaction::Vread).await?;
        }
        ctx.access.redact(&mut stored)?;
        if stored.deleted {
            return Err(EngineError::Gone(format!("Version {version} of {ty}/{id} is a deletion")));
        }
        Ok(stored)
    }

    /// `PUT /{type}/{id}`: replace, or create with the client's id. With `if_match`, the current
    /// version must be exactly that one (else 412).
    pub async fn update(
        &self,
        ctx: &RequestContext,
        ty: &str,
        id: &str,
        resource: Value,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome, EngineError> {
        self.check_type(ty)?;
        Self::check_id(id)?;
        check_body_id(&resource, id)?;
        let resource = self.prepare(ctx, ty, id, resource)?;
        let precondition = match if_match {
            Some(v) => Precondition::VersionIs(v),
            None => Precondition::None,
        };
        self.put(ctx, resource, WriteMethod::Put, precondition).await
    }

    /// `PATCH /{type}/{id}`: applies the patch to the current version and stores the result,
    /// which is validated like any write. The write is conditional on the version the patch was
    /// applied to, so a concurrent update is detected rather than overwritten.
    pub async fn patch(
        &self,
        ctx: &RequestContext,
        ty: &str,
        id: &str,
        patch: PatchBody,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome, EngineError> {
        self.check_type(ty)?;
        Self::check_id(id)?;
        let current = self.read(ctx, ty, id).await?;
        if let Some(expected) = if_match
            && expected != current.version
        {
            return Err(EngineError::PreconditionFailed(format!(
                "Version conflict: If-Match expected version {expected}, current version is {}",
                current.version
            )));
        }
        let patched = apply_patch(&current, patch)?;
        let resource = self.prepare(ctx, ty, id, patched)?;
        self.put(ctx, resource, WriteMethod::Patch, Precondition::VersionIs(current.version)).await
    }

    /// `DELETE /{type}/{id}`: logical delete; deleting a missing or deleted resource succeeds.
    pub async fn delete(
        &self,
        ctx: &RequestContext,
        ty: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, EngineError> {
        self.check_type(ty)?;
        Self::check_id(id)?;
        let op = WriteOp::Delete {
            resource_type: ty.to_owned(),
            id: id.to_owned(),
            precondition: Precondition::None,
        };
        let registry = self.registry(&ctx.project).await?;
        let res = self.write_op(ctx, op, &registry).await?;
        Ok(res.stored)
    }

    /// `POST /Binary` with raw bytes: the bytes go to the blob store (durably) first, then the
    /// Binary resource pointing at them is created.
    pub async fn create_binary(
        &self,
        ctx: &RequestContext,
        content_type: &str,
        bytes: &[u8],
        filename: Option<&str>,
    ) -> Result<WriteOutcome, EngineError> {
        let id = new_id();
        self.blobs
            .put(&ctx.project, &id, bytes)
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut resource = json!({
            "resourceType": "Binary",
            "contentType": content_type,
            "url": format!("{}/Binary/{id}", self.base_url().fhir_base()),
        });
        if let Some(name) = filename.filter(|it| !it.trim().is_empty()) {
            resource["meta"] = json!({ "tag": [{
                "system": FILENAME_TAG_SYSTEM,
                "code": name.trim(),
            }]});
        }
        let resource = self.prepare(ctx, "Binary", &id, resource)?;
        self.put(ctx, resource, WriteMethod::Post, Precondition::MustNotExist).await
    }

    /// The bytes of a Binary, their content type and the file name given at upload. A Binary
    /// created as JSON with inline `data` serves that data decoded.
    pub async fn binary_content(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<BinaryContent, EngineError> {
        let stored = self.read(ctx, "Binary", id).await?;
        let resource: Value = serde_json::from_slice(&stored.body)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let content_type =
            resource["contentType"].as_str().unwrap_or("application/octet-stream").to_owned();
        let filename = resource["meta"]["tag"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|tag| tag["system"] == FILENAME_TAG_SYSTEM)
            .and_then(|tag| tag["code"].as_str())
            .map(str::to_owned);
        let bytes = if let Some(data) = resource["data"].as_str() {
            decode_base64(data)
                .ok_or_else(|| EngineError::Internal("stored Binary.data is not base64".into()))?
        } else {
            match self.blobs.get(&ctx.project, id).await {
                Ok(bytes) => bytes,
                Err(kiln_store::BlobError::NotFound) => Vec::new(),
                Err(e) => return Err(EngineError::Internal(e.to_string())),
            }
        };
        Ok(BinaryContent { content_type, bytes, filename })
    }
}

fn has_security_context(binary: &StoredResource) -> bool {
    serde_json::from_slice::<Value>(&binary.body)
        .is_ok_and(|b| b["securityContext"]["reference"].is_string())
}

pub(crate) fn written(res: WriteResult) -> Result<WriteOutcome, EngineError> {
    match res.stored {
        Some(stored) => Ok(WriteOutcome { stored, created: res.created }),
        None => Err(EngineError::Internal("write produced no version".into())),
    }
}

/// PUT's body must carry the id of the URL (FHIR R4 http.html#update).
pub(crate) fn check_body_id(resource: &Value, id: &str) -> Result<(), EngineError> {
    match resource.get("id") {
        Some(Value::String(body_id)) if body_id == id => Ok(()),
        Some(Value::String(body_id)) => Err(EngineError::Invalid(vec![
            Issue::error(
                IssueCode::Invalid,
                format!("The resource id '{body_id}' does not match the URL id '{id}'"),
            )
            .at("id"),
        ])),
        Some(_) => Err(EngineError::Invalid(vec![
            Issue::error(IssueCode::Structure, "id must be a string").at("id"),
        ])),
        None => Err(EngineError::Invalid(vec![
            Issue::error(IssueCode::Required, "An update must carry the resource id in its body")
                .at("id"),
        ])),
    }
}

pub(crate) fn apply_patch(
    current: &StoredResource,
    patch: PatchBody,
) -> Result<Value, EngineError> {
    let mut doc: Value =
        serde_json::from_slice(&current.body).map_err(|e| EngineError::Internal(e.to_string()))?;
    match patch {
        PatchBody::JsonPatch(patch) => {
            let patch: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| EngineError::invalid(format!("Invalid JSON Patch document: {e}")))?;
            json_patch::patch(&mut doc, &patch).map_err(|e| {
                EngineError::Unprocessable(format!("JSON Patch could not be applied: {e}"))
            })?;
        }
        PatchBody::FhirPath(parameters) => crate::fhirpath_patch::apply(&mut doc, &parameters)?,
    }
    if doc.get("resourceType").and_then(Value::as_str) != Some(current.resource_type.as_str()) {
        return Err(EngineError::invalid("A patch may not change resourceType"));
    }
    if doc.get("id").and_then(Value::as_str) != Some(current.id.as_str()) {
        return Err(EngineError::invalid("A patch may not change the id"));
    }
    Ok(doc)
}

/// Standard base64, tolerating whitespace (FHIR base64Binary). `None` if it is not base64.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs bG8=").unwrap(), b"hello");
        assert!(decode_base64("a$").is_none());
    }
}
