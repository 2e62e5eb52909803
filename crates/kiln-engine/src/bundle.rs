//! `batch` and `transaction` Bundles posted to the base URL (FHIR R4 http.html#transaction).
//!
//! A transaction is all or nothing: every entry is planned and validated first, `urn:uuid:` and
//! `urn:oid:` fullUrls get server ids and every reference to them is rewritten, then all writes
//! go to the store as one atomic group, processed in the spec's order (DELETE, POST, PUT/PATCH,
//! then GET). A batch plans each entry on its own; failures become that entry's response.

use std::collections::{HashMap, HashSet};

use kiln_model::{Issue, IssueCode};
use kiln_store::{Atomicity, Precondition, StoredResource, WriteMethod, WriteOp, WriteResult};
use serde_json::{Value, json};

use crate::conditional::conditional_key;
use crate::history::{BundleOut, EntryOut, raw_resource};
use crate::rest::{PatchBody, apply_patch, check_body_id, decode_base64, new_id, put_op};
use crate::shape::Shape;
use crate::{Engine, EngineError, RequestContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    /// The spec's processing order within a transaction.
    fn rank(self) -> u8 {
        match self {
            Method::Delete => 0,
            Method::Post => 1,
            Method::Put | Method::Patch => 2,
            Method::Get => 3,
        }
    }
}

/// One entry, parsed.
struct Planned {
    idx: usize,
    method: Method,
    ty: String,
    id: Option<String>,
    version: Option<String>,
    resource: Option<Value>,
    if_match: Option<i64>,
    /// Search criteria of a conditional interaction (`ifNoneExist`, or the query of a
    /// PUT/PATCH/DELETE url), or of a search (GET).
    condition: Option<String>,
    /// Set when resolving the condition settled the entry without a write.
    settled: Option<Settled>,
}

/// An entry whose condition already decided the answer.
enum Settled {
    /// A conditional create matched this resource: 200, nothing written.
    Existing(StoredResource),
    /// A conditional delete matched nothing: 204.
    NothingToDelete,
}

/// What an entry turned into once planned: a store op, a read, a search, a settled answer,
/// or an error.
enum Step {
    Write { op: WriteOp, is_update: bool },
    Read { ty: String, id: String, version: Option<String> },
    Search { ty: String, query: String },
    Respond(EntryOut),
    Failed(EngineError),
}

fn status_line(code: u16) -> String {
    let text = match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    format!("{code} {text}")
}

fn entry_error(idx: usize, message: impl Into<String>) -> EngineError {
    EngineError::Invalid(vec![
        Issue::error(IssueCode::Invalid, message).at(format!("Bundle.entry[{idx}]")),
    ])
}

/// Prefixes each issue's expression with the entry it came from.
fn locate(err: EngineError, idx: usize) -> EngineError {
    match err {
        EngineError::Invalid(issues) => EngineError::Invalid(
            issues
                .into_iter()
                .map(|mut issue| {
                    let inner = issue.expression.take().unwrap_or_default();
                    let path = match inner.split_once('.') {
                        Some((_, rest)) if inner.starts_with(char::is_uppercase) => {
                            format!("Bundle.entry[{idx}].resource.{rest}")
                        }
                        _ if inner.is_empty() => format!("Bundle.entry[{idx}]"),
                        // The resource root itself, e.g. `Observation`.
                        _ if inner.starts_with(char::is_uppercase) => {
                            format!("Bundle.entry[{idx}].resource")
                        }
                        _ => format!("Bundle.entry[{idx}].resource.{inner}"),
                    };
                    issue.expression = Some(path);
                    issue
                })
                .collect(),
        ),
        other => other,
    }
}

/// What a batch or transaction response entry of a write carries (`Prefer: return=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EntryReturn {
    /// The resource as stored (the default).
    #[default]
    Representation,
    /// Only `response` (status, location, etag, lastModified).
    Minimal,
    /// `response.outcome`: an OperationOutcome saying what was done.
    OperationOutcome,
}

impl Engine {
    /// Processes a `batch` or `transaction` Bundle and returns the response Bundle's bytes.
    pub async fn process_bundle(
        &self,
        ctx: &RequestContext,
        mut bundle: Value,
        ret: EntryReturn,
    ) -> Result<Vec<u8>, EngineError> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(EngineError::invalid(
                "Only a Bundle of type batch or transaction may be posted to the base URL",
            ));
        }
        let is_transaction = match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => true,
            Some("batch") => false,
            other => {
                return Err(EngineError::Invalid(vec![
                    Issue::error(
                        IssueCode::Value,
                        format!("Bundle.type must be batch or transaction, not {other:?}"),
                    )
                    .at("Bundle.type"),
                ]));
            }
        };
        // Taken, not cloned: a large transaction is not copied.
        let entries = match bundle.get_mut("entry").map(Value::take) {
            None => Vec::new(),
            Some(Value::Array(entries)) => entries,
            Some(_) => return Err(EngineError::invalid("Bundle.entry must be an array")),
        };
        if entries.len() > self.limits().max_bundle_entries {
            return Err(EngineError::invalid(format!(
                "A Bundle may have at most {} entries",
                self.limits().max_bundle_entries
            )));
        }
        if is_transaction {
            self.transaction(ctx, entries, ret).await
        } else {
            self.batch(ctx, entries, ret).await
        }
    }

    async fn transaction(
        &self,
        ctx: &RequestContext,
        entries: Vec<Value>,
        ret: EntryReturn,
    ) -> Result<Vec<u8>, EngineError> {
        let mut planned = Vec::with_capacity(entries.len());
        let mut issues = Vec::new();
        for (idx, entry) in entries.iter().enumerate() {
            match self.parse_entry(idx, entry) {
                Ok(it) => planned.push(it),
                Err(e) => issues.extend(locate(e, idx).issues()),
            }
        }
        if !issues.is_empty() {
            return Err(EngineError::Invalid(issues));
        }
        for plan in &mut planned {
            if let Err(e) = self.resolve_condition(ctx, plan).await {
                return Err(locate(e, plan.idx));
            }
        }
        // Assign ids to creates and map every temporary fullUrl to its final reference.
        let mut mapping: HashMap<String, String> = HashMap::new();
        for (plan, entry) in planned.iter_mut().zip(&entries) {
            if plan.method == Method::Post && plan.id.is_none() {
                plan.id = Some(new_id());
            }
            let full_url = entry.get("fullUrl").and_then(Value::as_str);
            if let (Some(full_url), Some(id)) = (full_url, &plan.id)
                && matches!(plan.method, Method::Post | Method::Put)
            {
                mapping.insert(full_url.to_owned(), format!("{}/{id}", plan.ty));
            }
        }
        let mut resolved = HashMap::new();
        for plan in &mut planned {
            if plan.settled.is_some() {
                continue;
            }
            if let Some(resource) = &mut plan.resource {
                if let Err(e) = self.resolve_references(ctx, resource, &mut resolved).await {
                    return Err(locate(e, plan.idx));
                }
                let mut dangling = Vec::new();
                rewrite_references(resource, &mapping, &mut dangling);
                for reference in dangling {
                    issues.push(
                        Issue::error(
                            IssueCode::NotFound,
                            format!("Reference '{reference}' does not match any entry's fullUrl"),
                        )
                        .at(format!("Bundle.entry[{}].resource", plan.idx)),
                    );
                }
            }
        }
        // The same resource may not be written twice in one transaction.
        let mut targets = HashSet::new();
        for plan in &planned {
            if plan.method != Method::Get
                && plan.settled.is_none()
                && let Some(id) = &plan.id
                && !targets.insert((plan.ty.clone(), id.clone()))
            {
                issues.push(
                    Issue::error(
                        IssueCode::Duplicate,
                        format!("{}/{id} is the target of more than one entry", plan.ty),
                    )
                    .at(format!("Bundle.entry[{}]", plan.idx)),
                );
            }
        }
        if !issues.is_empty() {
            return Err(EngineError::Invalid(issues));
        }
        planned.sort_by_key(|it| (it.method.rank(), it.idx));

        let mut steps = Vec::with_capacity(planned.len());
        for plan in planned {
            let idx = plan.idx;
            match self.step(ctx, plan).await {
                Step::Failed(e) => issues.extend(locate(e, idx).issues()),
                step => steps.push((idx, step)),
            }
        }
        if !issues.is_empty() {
            return Err(EngineError::Invalid(issues));
        }
        let (writes, reads): (Vec<_>, Vec<_>) =
            steps.into_iter().partition(|(_, step)| matches!(step, Step::Write { .. }));
        let mut ops = Vec::with_capacity(writes.len());
        let mut write_meta = Vec::with_capacity(writes.len());
        for (idx, step) in writes {
            if let Step::Write { op, is_update } = step {
                ops.push(op);
                write_meta.push((idx, is_update));
            }
        }
        let registry = self.registry(&ctx.project).await?;
        let results = self.write_ops(ctx, ops, Atomicity::All, &registry).await?;
        let mut out: Vec<Option<EntryOut>> = (0..entries.len()).map(|_| None).collect();
        for ((idx, _), res) in write_meta.into_iter().zip(results) {
            let res = res.map_err(|e| locate_store(e, idx))?;
            out[idx] = Some(self.write_entry(ctx, &res, ret)?);
        }
        for (idx, step) in reads {
            let entry = match self.finish_step(ctx, step).await {
                Ok(entry) => entry,
                Err(e) => return Err(locate(e, idx)),
            };
            out[idx] = Some(entry);
        }
        let mut bundle = BundleOut::new("transaction-response");
        bundle.entry = out.into_iter().flatten().collect();
        bundle.to_bytes()
    }

    async fn batch(
        &self,
        ctx: &RequestContext,
        entries: Vec<Value>,
        ret: EntryReturn,
    ) -> Result<Vec<u8>, EngineError> {
        let mut out: Vec<Option<EntryOut>> = (0..entries.len()).map(|_| None).collect();
        let mut ops = Vec::new();
        // For each write: its entry, and the criteria of a conditional create.
        let mut write_idx: Vec<(usize, Option<(String, String)>)> = Vec::new();
        let mut reads = Vec::new();
        let mut resolved = HashMap::new();
        for (idx, entry) in entries.iter().enumerate() {
            let step = match self.plan_batch_entry(ctx, idx, entry, &mut resolved).await {
                Ok(plan) => {
                    let create_criteria = (plan.method == Method::Post)
                        .then(|| plan.condition.clone().map(|c| (plan.ty.clone(), c)))
                        .flatten();
                    (self.step(ctx, plan).await, create_criteria)
                }
                Err(e) => (Step::Failed(e), None),
            };
            match step {
                (Step::Write { op, .. }, criteria) => {
                    ops.push(op);
                    write_idx.push((idx, criteria));
                }
                (Step::Failed(e), _) => out[idx] = Some(error_entry(&locate(e, idx))),
                (step, _) => reads.push((idx, step)),
            }
        }
        if !ops.is_empty() {
            let registry = self.registry(&ctx.project).await?;
            let results = self.write_ops(ctx, ops, Atomicity::Each, &registry).await?;
            for ((idx, criteria), res) in write_idx.into_iter().zip(results) {
                out[idx] = Some(match (res, criteria) {
                    (Ok(res), _) => self.write_entry(ctx, &res, ret)?,
                    // A concurrent conditional create won: answer with its resource.
                    (Err(kiln_store::StoreError::UniqueViolation { .. }), Some((ty, c))) => {
                        match self.created_concurrently(ctx, &ty, &c).await {
                            Ok(existing) => self.read_entry(ctx, &existing)?,
                            Err(e) => error_entry(&e),
                        }
                    }
                    (Err(e), _) => error_entry(&EngineError::from(e)),
                });
            }
        }
        for (idx, step) in reads {
            out[idx] = Some(match self.finish_step(ctx, step).await {
                Ok(entry) => entry,
                Err(e) => error_entry(&locate(e, idx)),
            });
        }
        let mut bundle = BundleOut::new("batch-response");
        bundle.entry = out.into_iter().flatten().collect();
        bundle.to_bytes()
    }

    fn parse_entry(&self, idx: usize, entry: &Value) -> Result<Planned, EngineError> {
        let request = entry
            .get("request")
            .filter(|it| it.is_object())
            .ok_or_else(|| entry_error(idx, "Every entry needs a request with method and url"))?;
        let method = match request.get("method").and_then(Value::as_str) {
            Some("GET") | Some("HEAD") => Method::Get,
            Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("PATCH") => Method::Patch,
            Some("DELETE") => Method::Delete,
            other => return Err(entry_error(idx, format!("Unsupported request.method {other:?}"))),
        };
        let url = request
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| entry_error(idx, "request.url is required"))?;
        let base = self.base_url().fhir_base();
        let path = url.strip_prefix(&base).unwrap_or(url).trim_start_matches('/');
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (path, None),
        };
        let if_none_exist = request.get("ifNoneExist").and_then(Value::as_str);
        let mut condition = match (method, query, if_none_exist) {
            (Method::Post, None, Some(criteria)) => Some(criteria.to_owned()),
            (Method::Post, Some(_), _) => {
                return Err(entry_error(idx, format!("A POST url takes no query: '{url}'")));
            }
            (_, query, None) => query,
            (_, _, Some(_)) => {
                return Err(entry_error(idx, "ifNoneExist is only for POST entries"));
            }
        };
        let segments: Vec<&str> = path.split('/').filter(|it| !it.is_empty()).collect();
        let (ty, id, version) = match (method, segments.as_slice()) {
            (Method::Post, [ty]) => (*ty, None, None),
            (Method::Put | Method::Patch | Method::Delete | Method::Get, [ty])
                if condition.is_some() =>
            {
                (*ty, None, None)
            }
            (Method::Put | Method::Patch | Method::Delete | Method::Get, [ty, id]) => {
                (*ty, Some(*id), None)
            }
            (Method::Get, [ty, id, "_history", version]) => (*ty, Some(*id), Some(*version)),
            // A search without parameters: every resource of the type.
            (Method::Get, [ty]) => {
                condition = Some(String::new());
                (*ty, None, None)
            }
            _ => {
                return Err(entry_error(
                    idx,
                    format!("request.url '{url}' does not fit method {method:?}"),
                ));
            }
        };
        self.check_type(ty)?;
        let if_match = match request.get("ifMatch").and_then(Value::as_str) {
            Some(etag) => Some(parse_etag(etag).ok_or_else(|| {
                entry_error(idx, format!("request.ifMatch '{etag}' is not an ETag like W/\"1\""))
            })?),
            None => None,
        };
        let resource = entry.get("resource").cloned();
        if matches!(method, Method::Post | Method::Put | Method::Patch) && resource.is_none() {
            return Err(entry_error(idx, format!("A {method:?} entry needs a resource")));
        }
        Ok(Planned {
            idx,
            method,
            ty: ty.to_owned(),
            id: id.map(str::to_owned),
            version: version.map(str::to_owned),
            resource,
            if_match,
            condition,
            settled: None,
        })
    }

    /// Parses a batch entry and resolves its condition and conditional references.
    async fn plan_batch_entry(
        &self,
        ctx: &RequestContext,
        idx: usize,
        entry: &Value,
        resolved: &mut HashMap<String, String>,
    ) -> Result<Planned, EngineError> {
        let mut plan = self.parse_entry(idx, entry)?;
        self.resolve_condition(ctx, &mut plan).await?;
        if plan.method == Method::Post && plan.id.is_none() {
            plan.id = Some(new_id());
        }
        if plan.settled.is_none()
            && let Some(resource) = &mut plan.resource
        {
            self.resolve_references(ctx, resource, resolved).await?;
        }
        Ok(plan)
    }

    /// Decides a conditional entry's target from its criteria (0/1/many per the spec).
    async fn resolve_condition(
        &self,
        ctx: &RequestContext,
        plan: &mut Planned,
    ) -> Result<(), EngineError> {
        let Some(criteria) = plan.condition.clone() else { return Ok(()) };
        match plan.method {
            Method::Get => Ok(()), // a search, run with the reads
            Method::Post => {
                if let Some(existing) = self.match_one(ctx, &plan.ty, &criteria).await? {
                    plan.id = Some(existing.id.clone());
                    plan.settled = Some(Settled::Existing(existing));
                }
                Ok(())
            }
            Method::Put => {
                let body_id =
                    plan.resource.as_ref().and_then(|r| r.get("id")).and_then(Value::as_str);
                let id = self.update_target(ctx, &plan.ty, &criteria, body_id).await?;
                if let Some(Value::Object(obj)) = &mut plan.resource {
                    obj.insert("id".into(), Value::String(id.clone()));
                }
                plan.id = Some(id);
                Ok(())
            }
            Method::Patch => match self.match_one(ctx, &plan.ty, &criteria).await? {
                Some(existing) => {
                    plan.id = Some(existing.id);
                    Ok(())
                }
                None => Err(EngineError::NotFound(format!("No {} matches '{criteria}'", plan.ty))),
            },
            Method::Delete => {
                match self.match_one(ctx, &plan.ty, &criteria).await? {
                    Some(existing) => plan.id = Some(existing.id),
                    None => plan.settled = Some(Settled::NothingToDelete),
                }
                Ok(())
            }
        }
    }

    /// Replaces conditional references (`Patient?identifier=sys|123`) with the one resource
    /// they match; `resolved` remembers answers across the Bundle's entries.
    async fn resolve_references(
        &self,
        ctx: &RequestContext,
        resource: &mut Value,
        resolved: &mut HashMap<String, String>,
    ) -> Result<(), EngineError> {
        let mut wanted = Vec::new();
        conditional_references(resource, &mut wanted);
        if wanted.is_empty() {
            return Ok(());
        }
        for reference in wanted {
            if resolved.contains_key(&reference) {
                continue;
            }
            let Some((ty, criteria)) = reference.split_once('?') else { continue };
            match self.match_one(ctx, ty, criteria).await {
                Ok(Some(found)) => {
                    resolved.insert(reference.clone(), format!("{ty}/{}", found.id));
                }
                Ok(None) => {
                    return Err(EngineError::invalid(format!(
                        "Conditional reference '{reference}' matches no resource"
                    )));
                }
                Err(EngineError::PreconditionFailed(_)) => {
                    return Err(EngineError::PreconditionFailed(format!(
                        "Conditional reference '{reference}' matches more than one resource"
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        let mut dangling = Vec::new();
        rewrite_references(resource, resolved, &mut dangling);
        Ok(())
    }

    /// Runs a step that is not a write: a read, a search or a settled answer.
    async fn finish_step(&self, ctx: &RequestContext, step: Step) -> Result<EntryOut, EngineError> {
        match step {
            Step::Read { ty, id, version } => {
                let stored = self.read_step(ctx, &ty, &id, version.as_deref()).await?;
                self.read_entry(ctx, &stored)
            }
            Step::Search { ty, query } => {
                let pairs = crate::search::query_pairs(&query);
                let bytes =
                    self.search(ctx, Some(&ty), &pairs, crate::SearchMode::default()).await?;
                let text =
                    String::from_utf8(bytes).map_err(|e| EngineError::Internal(e.to_string()))?;
                Ok(EntryOut {
                    full_url: None,
                    resource: Some(
                        serde_json::value::RawValue::from_string(text)
                            .map_err(|e| EngineError::Internal(e.to_string()))?,
                    ),
                    search: None,
                    request: None,
                    response: Some(json!({ "status": status_line(200) })),
                })
            }
            Step::Respond(entry) => Ok(entry),
            Step::Write { .. } => {
                Err(EngineError::Internal("a write reached the read phase".into()))
            }
            Step::Failed(e) => Err(e),
        }
    }

    /// Turns a planned entry into a store op (validating it) or a read.
    async fn step(&self, ctx: &RequestContext, plan: Planned) -> Step {
        match plan.settled {
            Some(Settled::Existing(existing)) => {
                return match self.read_entry(ctx, &existing) {
                    Ok(entry) => Step::Respond(entry),
                    Err(e) => Step::Failed(e),
                };
            }
            Some(Settled::NothingToDelete) => {
                return Step::Respond(EntryOut {
                    full_url: None,
                    resource: None,
                    search: None,
                    request: None,
                    response: Some(json!({ "status": status_line(204) })),
                });
            }
            None => {}
        }
        if plan.method == Method::Get
            && let Some(query) = plan.condition
        {
            return Step::Search { ty: plan.ty, query };
        }
        let res = async {
            let id = plan.id.clone().unwrap_or_default();
            let precondition = match plan.if_match {
                Some(v) => Precondition::VersionIs(v),
                None => Precondition::None,
            };
            let registry = self.registry(&ctx.project).await?;
            match plan.method {
                Method::Get => Ok(Step::Read { ty: plan.ty, id, version: plan.version }),
                Method::Delete => Ok(Step::Write {
                    op: WriteOp::Delete { resource_type: plan.ty, id, precondition },
                    is_update: false,
                }),
                Method::Post => {
                    let keys = match &plan.condition {
                        Some(criteria) => vec![conditional_key(&plan.ty, criteria)],
                        None => vec![],
                    };
                    let resource = self.prepare(ctx, &plan.ty, &id, plan.resource.unwrap_or_default())?;
                    self.enforce_profiles(ctx, &resource).await?;
                    Ok(Step::Write {
                        op: put_op(
                            resource,
                            WriteMethod::Post,
                            Precondition::MustNotExist,
                            keys,
                            &registry,
                        ),
                        is_update: false,
                    })
                }
                Method::Put => {
                    let resource = plan.resource.unwrap_or_default();
                    check_body_id(&resource, &id)?;
                    let resource = self.prepare(ctx, &plan.ty, &id, resource)?;
                    self.enforce_profiles(ctx, &resource).await?;
                    Ok(Step::Write {
                        op: put_op(resource, WriteMethod::Put, precondition, vec![], &registry),
                        is_update: true,
                    })
                }
                Method::Patch => {
                    let patch = patch_from_entry(plan.resource.unwrap_or_default())?;
                    let current = self.read(ctx, &plan.ty, &id).await?;
                    if let Some(expected) = plan.if_match
                        && expected != current.version
                    {
                        return Err(EngineError::PreconditionFailed(format!(
                            "Version conflict: ifMatch expected version {expected}, current version is {}",
                            current.version
                        )));
                    }
                    let patched = apply_patch(&current, patch)?;
                    let resource = self.prepare(ctx, &plan.ty, &id, patched)?;
                    self.enforce_profiles(ctx, &resource).await?;
                    Ok(Step::Write {
                        op: put_op(
                            resource,
                            WriteMethod::Patch,
                            Precondition::VersionIs(current.version),
                            vec![],
                            &registry,
                        ),
                        is_update: true,
                    })
                }
            }
        }
        .await;
        res.unwrap_or_else(Step::Failed)
    }

    async fn read_step(
        &self,
        ctx: &RequestContext,
        ty: &str,
        id: &str,
        version: Option<&str>,
    ) -> Result<StoredResource, EngineError> {
        match version {
            Some(version) => self.vread(ctx, ty, id, version).await,
            None => self.read(ctx, ty, id).await,
        }
    }

    fn write_entry(
        &self,
        ctx: &RequestContext,
        res: &WriteResult,
        ret: EntryReturn,
    ) -> Result<EntryOut, EngineError> {
        let Some(stored) = &res.stored else {
            return Ok(EntryOut {
                full_url: None,
                resource: None,
                search: None,
                request: None,
                response: Some(json!({ "status": status_line(204) })),
            });
        };
        if stored.deleted {
            return Ok(EntryOut {
                full_url: None,
                resource: None,
                search: None,
                request: None,
                response: Some(json!({ "status": status_line(204), "etag": stored.etag() })),
            });
        }
        let status = if res.created { 201 } else { 200 };
        let mut response = json!({
            "status": status_line(status),
            "location": format!("{}/{}/_history/{}", stored.resource_type, stored.id, stored.version),
            "etag": stored.etag(),
            "lastModified": stored.last_updated,
        });
        let resource = match ret {
            EntryReturn::Representation => Some(raw_resource(
                stored,
                &Shape { server_meta: ctx.extended, ..Shape::default() },
            )?),
            EntryReturn::Minimal => None,
            EntryReturn::OperationOutcome => {
                let what = if res.created { "Created" } else { "Updated" };
                let text = format!(
                    "{what} {}/{} version {}",
                    stored.resource_type, stored.id, stored.version
                );
                let outcome = kiln_model::operation_outcome(&[Issue::information(
                    IssueCode::Informational,
                    text,
                )]);
                response["outcome"] = outcome;
                None
            }
        };
        Ok(EntryOut {
            full_url: Some(self.base_url().resource_url(&stored.resource_type, &stored.id)),
            resource,
            search: None,
            request: None,
            response: Some(response),
        })
    }

    fn read_entry(
        &self,
        ctx: &RequestContext,
        stored: &StoredResource,
    ) -> Result<EntryOut, EngineError> {
        Ok(EntryOut {
            full_url: Some(self.base_url().resource_url(&stored.resource_type, &stored.id)),
            resource: Some(raw_resource(
                stored,
                &Shape { server_meta: ctx.extended, ..Shape::default() },
            )?),
            search: None,
            request: None,
            response: Some(json!({
                "status": status_line(200),
                "etag": stored.etag(),
                "lastModified": stored.last_updated,
            })),
        })
    }
}

fn error_entry(e: &EngineError) -> EntryOut {
    let outcome = serde_json::value::to_raw_value(&e.operation_outcome()).ok();
    EntryOut {
        full_url: None,
        resource: None,
        search: None,
        request: None,
        response: Some(json!({
            "status": status_line(e.status()),
            "outcome": outcome,
        })),
    }
}

fn locate_store(e: kiln_store::StoreError, idx: usize) -> EngineError {
    match EngineError::from(e) {
        EngineError::PreconditionFailed(m) => {
            EngineError::PreconditionFailed(format!("Bundle entry {idx}: {m}"))
        }
        EngineError::Conflict(m) => EngineError::Conflict(format!("Bundle entry {idx}: {m}")),
        EngineError::NotFound(m) => EngineError::NotFound(format!("Bundle entry {idx}: {m}")),
        EngineError::Gone(m) => EngineError::Gone(format!("Bundle entry {idx}: {m}")),
        other => other,
    }
}

/// `W/"3"` or `"3"` or `3` → 3.
pub fn parse_etag(etag: &str) -> Option<i64> {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.trim_matches('"').parse().ok()
}

/// A PATCH entry carries a FHIRPath Patch (`Parameters`) or a JSON Patch as a Binary
/// (`application/json-patch+json`, base64 data).
fn patch_from_entry(resource: Value) -> Result<PatchBody, EngineError> {
    if resource.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
        return Ok(PatchBody::FhirPath(resource));
    }
    if resource.get("resourceType").and_then(Value::as_str) == Some("Binary") {
        let content_type = resource.get("contentType").and_then(Value::as_str).unwrap_or_default();
        if !content_type.starts_with("application/json-patch+json") {
            return Err(EngineError::NotSupported(format!(
                "A Binary in a PATCH entry must hold a JSON Patch, not '{content_type}'"
            )));
        }
        let data = resource.get("data").and_then(Value::as_str).unwrap_or_default();
        let bytes =
            decode_base64(data).ok_or_else(|| EngineError::invalid("Binary.data is not base64"))?;
        let patch: Value = serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::invalid(format!("The JSON Patch is not JSON: {e}")))?;
        return Ok(PatchBody::JsonPatch(patch));
    }
    if resource.is_array() {
        return Ok(PatchBody::JsonPatch(resource));
    }
    Err(EngineError::NotSupported(
        "PATCH entries must carry a Parameters resource (FHIRPath Patch) or a Binary with a JSON Patch"
            .into(),
    ))
}

/// Collects the conditional references (`Type?criteria`) anywhere in `value`.
fn conditional_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(obj) => {
            for (key, child) in obj {
                if key == "reference"
                    && let Value::String(reference) = child
                {
                    if let Some((ty, _)) = reference.split_once('?')
                        && kiln_definitions::definitions().is_resource_type(ty)
                        && !out.contains(reference)
                    {
                        out.push(reference.clone());
                    }
                    continue;
                }
                conditional_references(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|it| conditional_references(it, out)),
        _ => {}
    }
}

/// Rewrites every `reference` (at any depth, including extensions and contained resources)
/// that names a temporary fullUrl. Temporary references left unresolved are reported.
fn rewrite_references(
    value: &mut Value,
    mapping: &HashMap<String, String>,
    dangling: &mut Vec<String>,
) {
    match value {
        Value::Object(obj) => {
            for (key, child) in obj.iter_mut() {
                if key == "reference"
                    && let Value::String(reference) = child
                {
                    if let Some(target) = mapping.get(reference.as_str()) {
                        *reference = target.clone();
                    } else if reference.starts_with("urn:uuid:")
                        || reference.starts_with("urn:oid:")
                    {
                        dangling.push(reference.clone());
                    }
                    continue;
                }
                rewrite_references(child, mapping, dangling);
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_references(item, mapping, dangling);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("x"), None);
    }

    #[test]
    fn rewrites_nested_references() {
        let mut mapping = HashMap::new();
        mapping.insert("urn:uuid:1".to_owned(), "Patient/abc".to_owned());
        let mut it = json!({"subject": {"reference": "urn:uuid:1"},
            "extension": [{"url": "x", "valueReference": {"reference": "urn:uuid:1"}}],
            "contained": [{"resourceType": "Provenance", "target": [{"reference": "urn:uuid:1"}]}],
            "other": {"reference": "urn:uuid:2"}});
        let mut dangling = Vec::new();
        rewrite_references(&mut it, &mapping, &mut dangling);
        assert_eq!(it["subject"]["reference"], "Patient/abc");
        assert_eq!(it["extension"][0]["valueReference"]["reference"], "Patient/abc");
        assert_eq!(it["contained"][0]["target"][0]["reference"], "Patient/abc");
        assert_eq!(dangling, vec!["urn:uuid:2"]);
    }
}
