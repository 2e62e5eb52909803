//! Conditional interactions (FHIR R4 http.html#ccreate, #cond-update, #cdelete, #cpatch):
//! the target is found by search criteria instead of an id. The rules for 0, 1 and many
//! matches follow the spec; "many" is 412 Precondition Failed.
//!
//! A conditional create also takes a unique key (`conditional-create`, `Type?criteria` in a
//! canonical order) with its resource, so two concurrent creates with the same criteria,
//! even on different nodes, cannot both create: the loser finds the winner's resource.

use kiln_store::{Precondition, StoreError, StoredResource, WriteMethod};
use serde_json::Value;

use crate::rest::{new_id, put_op};
use crate::search::query_pairs;
use crate::{Engine, EngineError, PatchBody, RequestContext, WriteOutcome};

/// The unique-key namespace of conditional creates.
pub(crate) const CONDITIONAL_CREATE_KEY: &str = "conditional-create";

/// The unique key of a conditional create: the type and its criteria, sorted.
pub(crate) fn conditional_key(ty: &str, criteria: &str) -> (String, String) {
    let mut pairs = query_pairs(criteria);
    pairs.sort();
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        query.append_pair(k, v);
    }
    (CONDITIONAL_CREATE_KEY.to_owned(), format!("{ty}?{}", query.finish()))
}

fn many(ty: &str, criteria: &str) -> EngineError {
    EngineError::PreconditionFailed(format!(
        "More than one {ty} matches '{criteria}': the criteria must select a single resource"
    ))
}

impl Engine {
    /// The live resources matching `criteria` (a query string) on `ty`: at most `limit`.
    pub(crate) async fn matching(
        &self,
        ctx: &RequestContext,
        ty: &str,
        criteria: &str,
        limit: usize,
    ) -> Result<Vec<StoredResource>, EngineError> {
        self.check_type(ty)?;
        self.find(ctx, ty, &query_pairs(criteria), limit).await
    }

    /// The one resource matching `criteria`, `None` when none does; 412 when several do.
    pub(crate) async fn match_one(
        &self,
        ctx: &RequestContext,
        ty: &str,
        criteria: &str,
    ) -> Result<Option<StoredResource>, EngineError> {
        let mut found = self.matching(ctx, ty, criteria, 2).await?;
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err(many(ty, criteria)),
        }
    }

    /// The id a conditional update writes: the one match's (the body's id, if any, must be
    /// the same), or when nothing matches the body's id or a new one; 412 on several matches.
    pub(crate) async fn update_target(
        &self,
        ctx: &RequestContext,
        ty: &str,
        criteria: &str,
        body_id: Option<&str>,
    ) -> Result<String, EngineError> {
        match self.match_one(ctx, ty, criteria).await? {
            Some(existing) if body_id.is_some_and(|b| b != existing.id) => {
                Err(EngineError::invalid(format!(
                    "The resource's id '{}' is not the id of the {ty} matching '{criteria}' ({})",
                    body_id.unwrap_or_default(),
                    existing.id
                )))
            }
            Some(existing) => Ok(existing.id),
            None => Ok(body_id.map_or_else(new_id, str::to_owned)),
        }
    }

    /// After a conditional create lost the race for its unique key: the resource the winner
    /// created (409 if it is not visible yet).
    pub(crate) async fn created_concurrently(
        &self,
        ctx: &RequestContext,
        ty: &str,
        criteria: &str,
    ) -> Result<StoredResource, EngineError> {
        self.match_one(ctx, ty, criteria).await?.ok_or_else(|| {
            EngineError::Conflict(format!(
                "A concurrent conditional create of {ty} with '{criteria}' is in progress; retry"
            ))
        })
    }

    /// `POST [type]` with `If-None-Exist`: creates unless a resource matches; with one match,
    /// returns it (`created: false`, 200); with several, 412.
    pub async fn create_conditional(
        &self,
        ctx: &RequestContext,
        ty: &str,
        resource: Value,
        criteria: &str,
    ) -> Result<WriteOutcome, EngineError> {
        self.check_type(ty)?;
        if let Some(existing) = self.match_one(ctx, ty, criteria).await? {
            return Ok(WriteOutcome { stored: existing, created: false });
        }
        let id = new_id();
        let resource = self.prepare(ctx, ty, &id, resource)?;
        self.enforce_profiles(ctx, &resource).await?;
        let keys = vec![conditional_key(ty, criteria)];
        let registry = self.registry(&ctx.project).await?;
        let op = put_op(resource, WriteMethod::Post, Precondition::MustNotExist, keys, &registry);
        match self.write_op(ctx, op, &registry).await {
            Ok(res) => crate::rest::written(res),
            // Another request created it first, with the same criteria.
            Err(StoreError::UniqueViolation { .. }) => {
                match self.match_one(ctx, ty, criteria).await? {
                    Some(existing) => Ok(WriteOutcome { stored: existing, created: false }),
                    None => Err(EngineError::Conflict(format!(
                        "A concurrent conditional create of {ty} with '{criteria}' is in progress; retry"
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `PUT [type]?criteria`: updates the one match, creates when none matches (with the
    /// body's id, if it has one), 412 when several match.
    pub async fn update_conditional(
        &self,
        ctx: &RequestContext,
        ty: &str,
        criteria: &str,
        resource: Value,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome, EngineError> {
        let body_id = resource.get("id").and_then(Value::as_str);
        let id = self.update_target(ctx, ty, criteria, body_id).await?;
        let mut resource = resource;
        if let Value::Object(obj) = &mut resource {
            obj.insert("id".into(), Value::String(id.clone()));
        }
        self.update(ctx, ty, &id, resource, if_match).await
    }

    /// `PATCH [type]?criteria`: patches the one match; 404 when none, 412 when several.
    pub async fn patch_conditional(
        &self,
        ctx: &RequestContext,
        ty: &str,
        criteria: &str,
        patch: PatchBody,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome, EngineError> {
        match self.match_one(ctx, ty, criteria).await? {
            Some(existing) => self.patch(ctx, ty, &existing.id, patch, if_match).await,
            None => Err(EngineError::NotFound(format!("No {ty} matches '{criteria}'"))),
        }
    }

    /// `DELETE [type]?criteria`: deletes every match, up to the configured maximum (1 by
    /// default: more matches are 412). Returns the deletions made.
    pub async fn delete_conditional(
        &self,
        ctx: &RequestContext,
        ty: &str,
        criteria: &str,
    ) -> Result<Vec<StoredResource>, EngineError> {
        let max = self.limits().max_conditional_delete.max(1);
        let found = self.matching(ctx, ty, criteria, max + 1).await?;
        if found.len() > max {
            return Err(EngineError::PreconditionFailed(format!(
                "More than {max} {ty} resources match '{criteria}'; a conditional delete may remove at most {max}"
            )));
        }
        let mut deleted = Vec::with_capacity(found.len());
        for it in found {
            if let Some(d) = self.delete(ctx, ty, &it.id).await? {
                deleted.push(d);
            }
        }
        Ok(deleted)
    }
}
