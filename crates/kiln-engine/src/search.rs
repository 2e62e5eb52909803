//! Search (FHIR R4 search.html): parsing with kiln-search, one store call per page, and the
//! `searchset` Bundle around the stored bytes. Also the lookups behind conditional
//! interactions (`If-None-Exist`, `PUT/DELETE/PATCH [type]?…`, conditional references).
//!
//! Paging links carry an opaque keyset cursor (`_cursor`, see [`kiln_store::Cursor`]): every
//! match is served exactly once however far a client pages, even while others write. A page
//! links `self`, `first`, `next` when more matches follow and `previous` unless it is the
//! first page; `previous` carries a backward cursor (the page just before this one's first
//! match), and the pages it leads to link both ways again.

use kiln_model::{Issue, IssueCode};
use kiln_search::{SearchQuery, Summary, Total};
use kiln_store::{Cursor, SearchPage, SearchRequest, StoredResource};
use serde_json::json;

use crate::history::{BundleOut, EntryOut, raw_resource};
use crate::shape::Shape;
use crate::{Engine, EngineError, Interaction, RequestContext};

/// The query parameter carrying the paging cursor.
pub const CURSOR_PARAM: &str = "_cursor";

/// Where a search may read: the primary database, or a read replica that may lag it a little
/// (`kiln serve --read-database-url`). A client's own searches may lag; a search inside a
/// Bundle (whose writes it must see) or one a write depends on may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    #[default]
    Primary,
    Replica,
}

/// How a search runs: what becomes of unknown parameters, and where it may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SearchMode {
    pub handling: Handling,
    pub from: ReadFrom,
}

/// How unknown search parameters are treated (`Prefer: handling=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handling {
    /// Ignored, with a warning in an OperationOutcome entry.
    #[default]
    Lenient,
    /// Rejected with 400.
    Strict,
}

impl Engine {
    /// Parses a search on `ty` (`None`: system level, `_type` picks the types). Result
    /// parameters are checked too; the cursor is split off.
    async fn parse_search(
        &self,
        ctx: &RequestContext,
        ty: Option<&str>,
        pairs: &[(String, String)],
    ) -> Result<(SearchQuery, Option<Cursor>), EngineError> {
        if let Some(ty) = ty {
            self.check_type(ty)?;
        }
        let mut cursor = None;
        let mut rest = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            if k == CURSOR_PARAM {
                cursor = Some(Cursor::decode(v).ok_or_else(|| {
                    EngineError::invalid(format!(
                        "Invalid paging cursor '{v}': follow the Bundle's links"
                    ))
                })?);
            } else {
                rest.push((k.clone(), v.clone()));
            }
        }
        let registry = self.registry(&ctx.project).await?;
        let mut query = registry.parse(ty.unwrap_or(""), &rest).map_err(EngineError::Invalid)?;
        self.resolve_terminology(ctx, &mut query).await?;
        Ok((query, cursor))
    }

    /// `GET [type]?…`, `POST [type]/_search`, `GET [base]?_type=…`: a page of results as
    /// `searchset` Bundle bytes.
    pub async fn search(
        &self,
        ctx: &RequestContext,
        ty: Option<&str>,
        pairs: &[(String, String)],
        mode: SearchMode,
    ) -> Result<Vec<u8>, EngineError> {
        let (query, cursor) = self.parse_search(ctx, ty, pairs).await?;
        self.run_search(ctx, ty.unwrap_or(""), query, cursor, pairs, mode).await
    }

    /// `GET [compartment]/[id]/[type]?…` and `GET [compartment]/[id]/*?…`: a search limited
    /// to the resources in one compartment (Kiln knows the Patient compartment).
    pub async fn search_compartment(
        &self,
        ctx: &RequestContext,
        compartment: &str,
        id: &str,
        ty: Option<&str>,
        pairs: &[(String, String)],
        mode: SearchMode,
    ) -> Result<Vec<u8>, EngineError> {
        self.check_type(compartment)?;
        if compartment != "Patient" {
            return Err(EngineError::NotSupported(format!(
                "Compartment searches are supported for Patient, not {compartment}"
            )));
        }
        if let Some(ty) = ty
            && ty != compartment
            && kiln_search::compartment_params(compartment, ty).is_none()
        {
            return Err(EngineError::invalid(format!(
                "{ty} is not in the {compartment} compartment"
            )));
        }
        let (mut query, cursor) = self.parse_search(ctx, ty, pairs).await?;
        if ty.is_none() && query.types.is_empty() {
            query.types = compartment_types(compartment);
        }
        query.filters.push(kiln_search::Filter::Compartment {
            compartment: compartment.to_owned(),
            ids: Some(vec![id.to_owned()]),
        });
        let path = format!("{compartment}/{id}/{}", ty.unwrap_or("*"));
        self.run_search(ctx, &path, query, cursor, pairs, mode).await
    }

    /// `GET Patient/[id]/$everything`: the patient, every resource in its compartment and
    /// what those reference, paged. Takes `_count`, `_since` (changed since), `_type`, and
    /// `start`/`end` (a care-date window: see the `everything` module).
    pub async fn patient_everything(
        &self,
        ctx: &RequestContext,
        id: &str,
        pairs: &[(String, String)],
    ) -> Result<Vec<u8>, EngineError> {
        // 404 for a patient that is not there.
        self.read(ctx, "Patient", id).await?;
        let mut inner: Vec<(String, String)> = Vec::new();
        let (mut lo, mut hi) = (None, None);
        for (k, v) in pairs {
            match k.as_str() {
                "_count" | "_type" | CURSOR_PARAM | "_format" | "_pretty" => {
                    inner.push((k.clone(), v.clone()))
                }
                "_since" => inner.push(("_lastUpdated".into(), format!("ge{v}"))),
                "start" | "end" => {
                    let range = kiln_search::date_range(v).ok_or_else(|| {
                        EngineError::invalid(format!(
                            "Parameter '{k}' of $everything: '{v}' is not a date"
                        ))
                    })?;
                    if k == "start" { lo = Some(range.lo) } else { hi = Some(range.hi) }
                }
                other => {
                    return Err(EngineError::NotSupported(format!(
                        "Parameter '{other}' of $everything is not supported (Kiln takes _count, \
                         _since, _type, start and end)"
                    )));
                }
            }
        }
        if let (Some(lo), Some(hi)) = (lo, hi)
            && lo > hi
        {
            return Err(EngineError::invalid("$everything: 'start' is after 'end'"));
        }
        let (mut query, cursor) = self.parse_search(ctx, None, &inner).await?;
        if query.types.is_empty() {
            query.types = compartment_types("Patient");
        }
        if lo.is_some() || hi.is_some() {
            let (lo, hi) = (lo.unwrap_or(i64::MIN), hi.unwrap_or(i64::MAX));
            query.filters.push(crate::everything::care_date_filter(&query.types, lo, hi));
        }
        query.filters.push(kiln_search::Filter::Compartment {
            compartment: "Patient".into(),
            ids: Some(vec![id.to_owned()]),
        });
        query.include.push(kiln_search::Include {
            source_type: None,
            param: None,
            target_type: None,
            iterate: false,
        });
        let path = format!("Patient/{id}/$everything");
        let mode = SearchMode { handling: Handling::Strict, from: ReadFrom::Replica };
        self.run_search(ctx, &path, query, cursor, pairs, mode).await
    }

    async fn run_search(
        &self,
        ctx: &RequestContext,
        path: &str,
        mut query: SearchQuery,
        cursor: Option<Cursor>,
        pairs: &[(String, String)],
        mode: SearchMode,
    ) -> Result<Vec<u8>, EngineError> {
        let SearchMode { handling, from } = mode;
        ctx.access.restrict(&mut query, Interaction::Search)?;
        if handling == Handling::Strict && !query.unknown.is_empty() {
            let errors = query
                .unknown
                .iter()
                .map(|u| {
                    let text =
                        format!("Search parameter '{}' is not supported: {}", u.name, u.reason);
                    Issue::error(IssueCode::NotSupported, text)
                })
                .collect();
            return Err(EngineError::Invalid(errors));
        }
        let mut unknown: Vec<Issue> = query
            .unknown
            .iter()
            .map(|u| {
                let text = format!("Search parameter '{}' was ignored: {}", u.name, u.reason);
                Issue::warning(IssueCode::NotSupported, text)
            })
            .collect();
        if self.reindexing(&ctx.project) {
            let registry = self.registry(&ctx.project).await?;
            let mut codes = Vec::new();
            query.filters.iter().for_each(|f| filter_codes(f, &mut codes));
            codes.extend(query.sort.iter().map(|k| k.code.as_str()));
            let custom: Vec<String> = registry
                .custom_params()
                .into_iter()
                .filter(|d| codes.contains(&d.code.as_str()))
                .map(|d| d.code.clone())
                .collect();
            if !custom.is_empty() {
                unknown.push(Issue::warning(
                    IssueCode::Incomplete,
                    format!(
                        "A reindex of this project's resources is running: results for '{}' may \
                         miss resources written before the parameter existed until it completes",
                        custom.join("', '")
                    ),
                ));
            }
        }
        let shape = Shape { server_meta: ctx.extended, ..Shape::from_query(pairs)? };
        let count_only = query.summary == Some(Summary::Count) || query.count == 0;
        let total = count_only || matches!(query.total, Some(Total::Accurate | Total::Estimate));
        let no_total = query.total == Some(Total::None) && !count_only;
        let count = if count_only { 0 } else { query.count as usize };
        let request = SearchRequest { query, after: cursor, count, total };
        let mut page = match from {
            ReadFrom::Primary => self.store().search(&ctx.project, &request).await?,
            ReadFrom::Replica => self.store().search_replica(&ctx.project, &request).await?,
        };
        for stored in page.matches.iter_mut().chain(page.included.iter_mut()) {
            ctx.access.redact(stored)?;
        }
        if no_total {
            page.total = None;
        }
        self.searchset(path, pairs, request.after.as_ref(), &page, &shape, unknown)
    }

    fn searchset(
        &self,
        path: &str,
        pairs: &[(String, String)],
        current: Option<&Cursor>,
        page: &SearchPage,
        shape: &Shape,
        mut warnings: Vec<Issue>,
    ) -> Result<Vec<u8>, EngineError> {
        let mut bundle = BundleOut::new("searchset");
        bundle.total = page.total;
        let link = |cursor: Option<&Cursor>| self.search_link(path, pairs, cursor);
        bundle.link.push(json!({ "relation": "self", "url": link(current) }));
        bundle.link.push(json!({ "relation": "first", "url": link(None) }));
        if let Some(previous) = &page.previous {
            bundle.link.push(json!({ "relation": "previous", "url": link(Some(previous)) }));
        }
        if let Some(next) = &page.next {
            bundle.link.push(json!({ "relation": "next", "url": link(Some(next)) }));
        }
        for (i, (stored, mode)) in page
            .matches
            .iter()
            .map(|r| (r, "match"))
            .chain(page.included.iter().map(|r| (r, "include")))
            .enumerate()
        {
            let url = self.base_url().resource_url(&stored.resource_type, &stored.id);
            let (full_url, resource) = match page.contained.get(i).copied().unwrap_or(0) {
                0 => (url, raw_resource(stored, shape)?),
                cix => contained_entry(stored, cix, shape, url)?,
            };
            bundle.entry.push(EntryOut {
                full_url: Some(full_url),
                resource: Some(resource),
                search: Some(json!({ "mode": mode })),
                request: None,
                response: None,
            });
        }
        if page.included_truncated {
            warnings.push(Issue::warning(
                IssueCode::TooCostly,
                format!(
                    "_include/_revinclude stopped after {} resources",
                    kiln_store::search::MAX_INCLUDED
                ),
            ));
        }
        if !warnings.is_empty() {
            let outcome = kiln_model::operation_outcome(&warnings);
            bundle.entry.push(EntryOut {
                full_url: None,
                resource: serde_json::value::to_raw_value(&outcome).ok(),
                search: Some(json!({ "mode": "outcome" })),
                request: None,
                response: None,
            });
        }
        bundle.to_bytes()
    }

    /// An absolute link to this search (`path` below the FHIR base), at `cursor`.
    fn search_link(
        &self,
        path: &str,
        pairs: &[(String, String)],
        cursor: Option<&Cursor>,
    ) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs.iter().filter(|(k, _)| k != CURSOR_PARAM) {
            query.append_pair(k, v);
        }
        if let Some(cursor) = cursor {
            query.append_pair(CURSOR_PARAM, &cursor.encode());
        }
        let query = query.finish();
        let base = self.base_url().fhir_base();
        let path = if path.is_empty() { base } else { format!("{base}/{path}") };
        if query.is_empty() { path } else { format!("{path}?{query}") }
    }

    /// The live resources of `ty` matching a conditional interaction's criteria, at most
    /// `limit`. Unknown parameters are an error here: ignoring one would widen the match and
    /// let a conditional write touch the wrong resource.
    pub(crate) async fn find(
        &self,
        ctx: &RequestContext,
        ty: &str,
        pairs: &[(String, String)],
        limit: usize,
    ) -> Result<Vec<StoredResource>, EngineError> {
        let mut query = self.parse_strict(ctx, ty, pairs, " in a conditional interaction").await?;
        if query.filters.is_empty() {
            return Err(EngineError::invalid(
                "A conditional interaction needs at least one search parameter",
            ));
        }
        query.sort.clear();
        self.matches(ctx, query, limit).await
    }

    /// The live resources of `ty` that `ctx` may see matching `pairs` (sorted as they ask), at
    /// most `limit`: a search for the engine's own pages, without a Bundle. Unknown
    /// parameters are an error.
    pub(crate) async fn search_matches(
        &self,
        ctx: &RequestContext,
        ty: &str,
        pairs: &[(String, String)],
        limit: usize,
    ) -> Result<Vec<StoredResource>, EngineError> {
        let query = self.parse_strict(ctx, ty, pairs, "").await?;
        self.matches(ctx, query, limit).await
    }

    /// A search on `ty` in which every parameter is known (`where_` says where, in the error).
    async fn parse_strict(
        &self,
        ctx: &RequestContext,
        ty: &str,
        pairs: &[(String, String)],
        where_: &str,
    ) -> Result<SearchQuery, EngineError> {
        let (query, _) = self.parse_search(ctx, Some(ty), pairs).await?;
        if let Some(u) = query.unknown.first() {
            return Err(EngineError::invalid(format!(
                "Search parameter '{}' is not supported{where_}: {}",
                u.name, u.reason
            )));
        }
        Ok(query)
    }

    /// One page of `query`'s matches under `ctx`'s access, redacted, without includes.
    pub(crate) async fn matches(
        &self,
        ctx: &RequestContext,
        mut query: SearchQuery,
        limit: usize,
    ) -> Result<Vec<StoredResource>, EngineError> {
        query.include.clear();
        query.revinclude.clear();
        ctx.access.restrict(&mut query, Interaction::Search)?;
        let request = SearchRequest { query, after: None, count: limit, total: false };
        let mut matches = self.store().search(&ctx.project, &request).await?.matches;
        for stored in &mut matches {
            ctx.access.redact(stored)?;
        }
        Ok(matches)
    }
}

/// Every parameter code a filter names (chains and `_has` included).
fn filter_codes<'f>(f: &'f kiln_search::Filter, out: &mut Vec<&'f str>) {
    use kiln_search::Filter;
    match f {
        Filter::Values { code, .. } | Filter::Missing { code, .. } => out.push(code),
        Filter::Chain { code, then, .. } => {
            out.push(code);
            filter_codes(then, out);
        }
        Filter::Has { param, then, .. } => {
            out.push(param);
            filter_codes(then, out);
        }
        Filter::And(parts) | Filter::Or(parts) => parts.iter().for_each(|p| filter_codes(p, out)),
        Filter::Not(inner) => filter_codes(inner, out),
        Filter::Compartment { .. } | Filter::Type(_) | Filter::Text { .. } => {}
    }
}

/// The types in a compartment, the compartment's own type first.
fn compartment_types(compartment: &str) -> Vec<String> {
    let defs = kiln_definitions::definitions();
    let mut types = vec![compartment.to_owned()];
    types.extend(
        defs.resource_types()
            .filter(|t| *t != compartment)
            .filter(|t| {
                kiln_search::compartment_params(compartment, t).is_some_and(|p| !p.is_empty())
            })
            .map(str::to_owned),
    );
    types
}

/// Decodes a query string (`a=1&b=2`, with or without a leading `?`) into pairs.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    let query = query.strip_prefix('?').unwrap_or(query);
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// The match that is the contained resource at position `cix` (from 1) of `stored`
/// (`_containedType=contained`): its JSON as stored inside the container, shaped like any
/// match, with the fullUrl `[container's URL]#[its id]`.
fn contained_entry(
    stored: &StoredResource,
    cix: u32,
    shape: &Shape,
    container_url: String,
) -> Result<(String, Box<serde_json::value::RawValue>), EngineError> {
    let internal = |e: serde_json::Error| EngineError::Internal(e.to_string());
    let body: serde_json::Value = serde_json::from_slice(&stored.body).map_err(internal)?;
    let mut contained = usize::try_from(cix - 1)
        .ok()
        .and_then(|i| body.get("contained")?.get(i).cloned())
        .ok_or_else(|| EngineError::Internal("a contained match is not in its container".into()))?;
    let id = contained.get("id").and_then(serde_json::Value::as_str).unwrap_or("").to_owned();
    shape.apply(&mut contained);
    let raw = serde_json::value::to_raw_value(&contained).map_err(internal)?;
    Ok((format!("{container_url}#{id}"), raw))
}
