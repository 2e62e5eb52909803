//! The search parameters in force per project ([`Registry`]): the built-in ones plus the
//! project's active `SearchParameter` resources, loaded from the store and cached.
//!
//! A node rebuilds a project's registry when it writes one of the project's SearchParameters
//! and otherwise at most [`Limits::registry_ttl`](crate::Limits) after its last load, so a
//! change made on another node is seen everywhere within that time. A reindex job waits twice
//! that long before it scans (see [`crate::jobs`]), so that no node still writes with the old
//! parameters behind the scan.

use std::sync::Arc;

use kiln_search::Registry;
use kiln_store::{Atomicity, ProjectId, SearchRequest, StoreError, WriteOp, WriteResult};
use serde_json::Value;

use crate::cache::TtlCache;
use crate::{Engine, EngineError, RequestContext};

/// Registries by project; each lives for the engine's `registry_ttl`.
pub(crate) struct ParamCache {
    entries: TtlCache<Arc<Registry>>,
}

impl Default for ParamCache {
    fn default() -> ParamCache {
        // The lifetime is given on each read (a setting); the size bounds memory.
        ParamCache { entries: TtlCache::new(std::time::Duration::MAX, CACHED_PROJECTS) }
    }
}

/// Projects whose registries one node keeps at most (then it starts again).
const CACHED_PROJECTS: usize = 10_000;

impl ParamCache {
    fn get(&self, project: &ProjectId, ttl: std::time::Duration) -> Option<Arc<Registry>> {
        self.entries.get_within(project.as_str(), ttl)
    }

    fn put(&self, project: &ProjectId, registry: Arc<Registry>) {
        self.entries.put(project.as_str().to_owned(), registry);
    }

    /// Forgets `project`'s registry (another node changed its SearchParameters).
    pub(crate) fn invalidate(&self, project: &ProjectId) {
        self.entries.remove(project.as_str());
    }

    pub(crate) fn clear(&self) {
        self.entries.clear();
    }
}

/// The most SearchParameter resources one project may have in force.
const MAX_CUSTOM: usize = 10_000;

impl Engine {
    /// The search parameters of `project` (cached; see the module documentation).
    pub(crate) async fn registry(&self, project: &ProjectId) -> Result<Arc<Registry>, EngineError> {
        if let Some(registry) = self.params.get(project, self.limits().registry_ttl) {
            return Ok(registry);
        }
        self.reload_registry(project).await
    }

    /// Loads the registry of `project` from its active SearchParameter resources.
    pub(crate) async fn reload_registry(
        &self,
        project: &ProjectId,
    ) -> Result<Arc<Registry>, EngineError> {
        let pairs = [("status".to_owned(), "active".to_owned())];
        let query = kiln_search::parse("SearchParameter", &pairs).map_err(EngineError::Invalid)?;
        let mut request = SearchRequest { query, after: None, count: 1000, total: false };
        let mut resources: Vec<Value> = Vec::new();
        loop {
            let page = self.store().search(project, &request).await?;
            for stored in &page.matches {
                if let Ok(resource) = serde_json::from_slice(&stored.body) {
                    resources.push(resource);
                }
            }
            match page.next {
                Some(next) if resources.len() < MAX_CUSTOM => request.after = Some(next),
                _ => break,
            }
        }
        let registry =
            if resources.is_empty() { Arc::default() } else { Arc::new(Registry::new(&resources)) };
        for rejected in registry.rejected() {
            tracing::warn!(
                project = project.as_str(),
                search_parameter = rejected.id,
                reason = rejected.reason,
                "a SearchParameter is not in force"
            );
        }
        self.params.put(project, registry.clone());
        Ok(registry)
    }
}

/// The resource types whose index rows differ between two registries (the bases of every
/// project parameter added, removed or changed): `None` when nothing differs, an empty list
/// when every type does (a parameter on `Resource` or `DomainResource`).
pub(crate) fn changed_types(old: &Registry, new: &Registry) -> Option<Vec<String>> {
    use kiln_definitions::SearchParamDef;
    let (before, after) = (old.custom_params(), new.custom_params());
    let gone = |d: &&SearchParamDef, others: &[&SearchParamDef]| !others.contains(d);
    let changed: Vec<&SearchParamDef> = before
        .iter()
        .filter(|d| gone(d, &after))
        .chain(after.iter().filter(|d| gone(d, &before)))
        .copied()
        .collect();
    if changed.is_empty() {
        return None;
    }
    let mut types: Vec<String> = Vec::new();
    for base in changed.iter().flat_map(|d| &d.base) {
        if base == "Resource" || base == "DomainResource" {
            return Some(Vec::new());
        }
        if !types.contains(base) {
            types.push(base.clone());
        }
    }
    types.sort();
    Some(types)
}

/// Whether `op` writes a resource that decides members' access.
fn touches_access(op: &WriteOp) -> bool {
    match op {
        WriteOp::Put { resource, .. } => {
            resource["resourceType"].as_str().is_some_and(crate::policy::affects_access)
        }
        WriteOp::Delete { resource_type, .. } => crate::policy::affects_access(resource_type),
        WriteOp::Reindex { .. } => false,
    }
}

/// `op`, unless it writes an AccessPolicy that could never be applied (400).
fn checked_policy(op: WriteOp, registry: &Registry) -> Result<WriteOp, StoreError> {
    if let WriteOp::Put { resource, .. } = &op
        && resource["resourceType"] == "AccessPolicy"
    {
        crate::policy::check_policy(resource, registry).map_err(|e| {
            StoreError::Invalid(format!("This AccessPolicy could not be applied: {e}"))
        })?;
    }
    Ok(op)
}

/// Whether `op` writes a type with fields no caller reads (so even a super admin's write
/// needs the stored version: see [`crate::policy::has_always_hidden`]).
fn touches_always_hidden(op: &WriteOp) -> bool {
    match op {
        WriteOp::Put { resource, .. } => {
            resource["resourceType"].as_str().is_some_and(crate::policy::has_always_hidden)
        }
        _ => false,
    }
}

/// A write the caller's access refuses, as the store's error type.
fn refusal(e: EngineError) -> StoreError {
    match e {
        EngineError::Forbidden(m) | EngineError::NotFound(m) => StoreError::Forbidden(m),
        EngineError::Invalid(issues) => StoreError::Invalid(
            issues.iter().map(|i| i.diagnostics.as_str()).collect::<Vec<_>>().join("; "),
        ),
        other => StoreError::Internal(other.to_string()),
    }
}

/// Whether `op` writes a SearchParameter.
/// Whether an op writes a resource that defines profiles or their terminology.
fn touches_conformance(op: &WriteOp) -> bool {
    const TYPES: [&str; 3] = ["StructureDefinition", "ValueSet", "CodeSystem"];
    match op {
        WriteOp::Put { resource, .. } => {
            resource["resourceType"].as_str().is_some_and(|t| TYPES.contains(&t))
        }
        WriteOp::Delete { resource_type, .. } => TYPES.contains(&resource_type.as_str()),
        WriteOp::Reindex { .. } => false,
    }
}

fn touches_params(op: &WriteOp) -> bool {
    match op {
        WriteOp::Put { resource, .. } => resource["resourceType"] == "SearchParameter",
        WriteOp::Delete { resource_type, .. } => resource_type == "SearchParameter",
        WriteOp::Reindex { .. } => false,
    }
}

/// Whether `op` changes how later writes are judged, validated or indexed (an AccessPolicy or
/// other access resource, a profile or terminology resource, a SearchParameter): writes that
/// run side by side (an import's batches) must not overtake one that does.
pub(crate) fn changes_write_rules(op: &WriteOp) -> bool {
    touches_params(op) || touches_access(op) || touches_conformance(op)
}

impl Engine {
    /// The store write every engine write goes through. When SearchParameters are among the
    /// ops, the project's registry is rebuilt at once and the types whose rows changed are
    /// reindexed in the background (`registry` is the one the ops were extracted with).
    pub(crate) async fn write_ops(
        &self,
        ctx: &RequestContext,
        ops: Vec<WriteOp>,
        atomicity: Atomicity,
        registry: &Registry,
    ) -> Result<Vec<Result<WriteResult, StoreError>>, StoreError> {
        let params = ops.iter().any(touches_params);
        let access = ops.iter().any(touches_access);
        let conformance = ops.iter().any(touches_conformance);
        // Each op is judged first: an AccessPolicy must be one that can be applied, and a
        // restricted caller's policy must allow the write (`policy`). A refused op fails
        // alone in a batch, and fails the whole of a transaction.
        let judged: Vec<Result<WriteOp, StoreError>> =
            if ctx.access.unrestricted() && !ops.iter().any(touches_always_hidden) {
                ops.into_iter().map(Ok).collect()
            } else {
                let judged = self.authorize_ops(ctx, ops, registry).await.map_err(refusal)?;
                judged.into_iter().map(|op| op.map_err(refusal)).collect()
            };
        let mut allowed = Vec::with_capacity(judged.len());
        let mut refused = Vec::with_capacity(judged.len());
        for op in judged {
            match op.and_then(|op| checked_policy(op, registry)) {
                Ok(op) => {
                    allowed.push(op);
                    refused.push(None);
                }
                Err(e) if atomicity == Atomicity::All => return Err(e),
                Err(e) => refused.push(Some(e)),
            }
        }
        let mut written = self.store().write(&ctx.project, allowed, atomicity).await?.into_iter();
        let results: Vec<Result<WriteResult, StoreError>> = refused
            .into_iter()
            .map(|r| match r {
                Some(e) => Err(e),
                None => written.next().unwrap_or_else(|| {
                    Err(StoreError::Internal("write returned too few results".into()))
                }),
            })
            .collect();
        if access && results.iter().any(Result::is_ok) {
            self.forget_access(&ctx.project);
        }
        if conformance && results.iter().any(Result::is_ok) {
            self.conformance_written(&ctx.project);
        }
        if params
            && results.iter().any(Result::is_ok)
            && let Err(e) = Box::pin(self.search_params_written(ctx, registry)).await
        {
            tracing::error!(project = ctx.project.as_str(), error = %e,
                "could not apply changed SearchParameters");
        }
        Ok(results)
    }

    /// [`Engine::write_ops`] of one op.
    pub(crate) async fn write_op(
        &self,
        ctx: &RequestContext,
        op: WriteOp,
        registry: &Registry,
    ) -> Result<WriteResult, StoreError> {
        let mut results = self.write_ops(ctx, vec![op], Atomicity::All, registry).await?;
        match results.pop() {
            Some(res) => res,
            None => Err(StoreError::Internal("write returned no result".into())),
        }
    }

    async fn search_params_written(
        &self,
        ctx: &RequestContext,
        old: &Registry,
    ) -> Result<(), EngineError> {
        let new = self.reload_registry(&ctx.project).await?;
        self.announce(crate::shared::Change::SearchParameters(ctx.project.clone()));
        let Some(types) = changed_types(old, &new) else { return Ok(()) };
        let request = format!("{}/SearchParameter/$reindex", self.base_url().fhir_base());
        // Other nodes may write with the old parameters for up to one TTL.
        let delay = self.limits().registry_ttl * 2;
        let job = self.start_reindex(ctx, types, &request, delay).await?;
        tracing::info!(
            project = ctx.project.as_str(),
            job = job.id,
            "SearchParameters changed: reindexing"
        );
        Ok(())
    }
}
