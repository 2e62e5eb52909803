//! History at instance, type and system level (FHIR R4 http.html#history): Bundles of type
//! `history`, newest first, deletions included, paged by an opaque cursor in the `next` link.
//!
//! Bundles are serialised around the stored bytes ([`RawValue`]), so a page of history costs
//! one pass over the bytes, not a parse and re-serialisation of every resource.

use chrono::{DateTime, NaiveDate, Utc};
use kiln_store::{HistoryQuery, HistoryScope, StoredResource, WriteMethod, format_instant};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::policy::Grant;
use crate::shape::Shape;
use crate::{Engine, EngineError, Interaction, RequestContext};

/// The parameters of a history request.
#[derive(Debug, Clone, Default)]
pub struct HistoryParams {
    pub count: Option<usize>,
    pub since: Option<String>,
    pub at: Option<String>,
    pub cursor: Option<i64>,
    pub shape: Shape,
}

impl HistoryParams {
    /// Reads `_count`, `_since`, `_at`, `_cursor`, `_summary`, `_elements`; any other parameter
    /// is an error, since silently ignoring it would return more than the client asked for.
    pub fn from_query(pairs: &[(String, String)]) -> Result<HistoryParams, EngineError> {
        let mut params =
            HistoryParams { shape: Shape::from_query(pairs)?, ..HistoryParams::default() };
        for (key, value) in pairs {
            match key.as_str() {
                "_count" => {
                    params.count = Some(value.parse().map_err(|_| {
                        EngineError::invalid(format!(
                            "Invalid _count '{value}': expected a non-negative integer"
                        ))
                    })?)
                }
                "_since" => params.since = Some(parse_instant(value, "_since")?),
                "_at" => params.at = Some(parse_instant(value, "_at")?),
                "_cursor" => {
                    params.cursor =
                        Some(value.parse().map_err(|_| {
                            EngineError::invalid(format!("Invalid _cursor '{value}'"))
                        })?)
                }
                "_summary" | "_elements" | "_format" | "_pretty" => {}
                other => {
                    return Err(EngineError::NotSupported(format!(
                        "Unsupported parameter '{other}' for history"
                    )));
                }
            }
        }
        Ok(params)
    }
}

/// Accepts a FHIR instant, dateTime or date and normalises it to Kiln's stored form.
fn parse_instant(value: &str, name: &str) -> Result<String, EngineError> {
    if let Ok(it) = DateTime::parse_from_rfc3339(value) {
        return Ok(format_instant(it.with_timezone(&Utc)));
    }
    if let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d")
        && let Some(midnight) = date.and_hms_opt(0, 0, 0)
    {
        return Ok(format_instant(midnight.and_utc()));
    }
    Err(EngineError::invalid(format!(
        "Invalid {name} '{value}': expected an instant such as 2024-01-31T12:00:00Z"
    )))
}

#[derive(Serialize)]
pub(crate) struct BundleOut<'a> {
    #[serde(rename = "resourceType")]
    pub resource_type: &'static str,
    pub id: String,
    pub meta: Value,
    #[serde(rename = "type")]
    pub ty: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<Value>,
    /// FHIR JSON has no empty arrays: an empty Bundle has no `entry` at all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<EntryOut>,
}

#[derive(Serialize)]
pub(crate) struct EntryOut {
    #[serde(rename = "fullUrl", skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
}

impl BundleOut<'_> {
    pub fn new(ty: &str) -> BundleOut<'_> {
        BundleOut {
            resource_type: "Bundle",
            id: crate::rest::new_id(),
            meta: serde_json::json!({ "lastUpdated": format_instant(Utc::now()) }),
            ty,
            total: None,
            link: Vec::new(),
            entry: Vec::new(),
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, EngineError> {
        serde_json::to_vec(self).map_err(|e| EngineError::Internal(e.to_string()))
    }
}

/// The stored bytes as a raw JSON value, cut down by `shape` if it asks for that.
pub(crate) fn raw_resource(
    stored: &StoredResource,
    shape: &Shape,
) -> Result<Box<RawValue>, EngineError> {
    let internal = |e: serde_json::Error| EngineError::Internal(e.to_string());
    let bytes = shape.serve(&stored.body);
    let text = std::str::from_utf8(&bytes).map_err(|e| EngineError::Internal(e.to_string()))?;
    RawValue::from_string(text.to_owned()).map_err(internal)
}

impl Engine {
    /// A page of history as Bundle bytes.
    pub async fn history(
        &self,
        ctx: &RequestContext,
        scope: HistoryScope,
        params: &HistoryParams,
    ) -> Result<Vec<u8>, EngineError> {
        let path = match &scope {
            HistoryScope::System => "_history".to_owned(),
            HistoryScope::Type(ty) => {
                self.check_type(ty)?;
                format!("{ty}/_history")
            }
            HistoryScope::Instance(ty, id) => {
                self.check_type(ty)?;
                // 404 for an instance that never existed (or that the caller may not see).
                ctx.access.check_type(ty, Interaction::History)?;
                let current = self.store().read(&ctx.project, ty, id).await?;
                self.check_access(ctx, &current, Interaction::History).await?;
                format!("{ty}/{id}/_history")
            }
        };
        // Type and system history: only the versions the caller's policy admits (judged on
        // each version's content; deletions only when the whole type is granted).
        let grant = match &scope {
            HistoryScope::Instance(..) => Grant::All,
            HistoryScope::Type(ty) => {
                ctx.access.grant_types(std::slice::from_ref(ty), Interaction::History)
            }
            HistoryScope::System => ctx.access.grant_types(&[], Interaction::History),
        };
        if matches!(grant, Grant::Nothing) {
            return Err(EngineError::Forbidden(
                "Your access policy does not allow 'history' here".into(),
            ));
        }
        let count = params
            .count
            .unwrap_or(self.limits().default_page_size)
            .min(self.limits().max_page_size);
        let query = HistoryQuery {
            // One more than asked tells whether a next page exists.
            count: count + 1,
            since: params.since.clone(),
            at: params.at.clone(),
            before_seq: params.cursor,
        };
        let mut rows = self.store().history(&ctx.project, &scope, &query).await?;
        let has_next = rows.len() > count;
        rows.truncate(count);
        // The cursor follows the unfiltered rows, so a filtered page may be short.
        let last_seq = rows.last().map(|r| r.seq);
        if let Grant::Only(f) = &grant {
            let set: Vec<serde_json::Value> = Vec::new();
            let mut kept = Vec::with_capacity(rows.len());
            for row in rows {
                let visible = !row.deleted
                    && serde_json::from_slice::<serde_json::Value>(&row.body)
                        .is_ok_and(|body| kiln_search::filter_holds(f, &body, &set));
                if visible {
                    kept.push(row);
                }
            }
            rows = kept;
        }
        for row in &mut rows {
            ctx.access.redact(row)?;
        }

        let shape = Shape { server_meta: ctx.extended, ..params.shape.clone() };
        let mut bundle = BundleOut::new("history");
        if matches!(scope, HistoryScope::Instance(..)) {
            bundle.total = Some(self.store().history_count(&ctx.project, &scope, &query).await?);
        }
        let base = self.base_url().fhir_base();
        let link_for = |cursor: Option<i64>| {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("_count", &count.to_string());
            if let Some(since) = &params.since {
                query.append_pair("_since", since);
            }
            if let Some(at) = &params.at {
                query.append_pair("_at", at);
            }
            if let Some(cursor) = cursor {
                query.append_pair("_cursor", &cursor.to_string());
            }
            format!("{base}/{path}?{}", query.finish())
        };
        bundle.link.push(serde_json::json!({ "relation": "self", "url": link_for(params.cursor) }));
        if has_next && let Some(last) = last_seq {
            bundle
                .link
                .push(serde_json::json!({ "relation": "next", "url": link_for(Some(last)) }));
        }
        for row in &rows {
            bundle.entry.push(history_entry(self, row, &shape)?);
        }
        bundle.to_bytes()
    }
}

fn history_entry(
    engine: &Engine,
    row: &StoredResource,
    shape: &Shape,
) -> Result<EntryOut, EngineError> {
    let (ty, id) = (&row.resource_type, &row.id);
    let method = row.method.as_str();
    let (url, status) = match row.method {
        WriteMethod::Delete => (format!("{ty}/{id}"), "204 No Content"),
        WriteMethod::Post => (ty.clone(), "201 Created"),
        WriteMethod::Put if row.version == 1 => (format!("{ty}/{id}"), "201 Created"),
        WriteMethod::Put | WriteMethod::Patch => (format!("{ty}/{id}"), "200 OK"),
    };
    Ok(EntryOut {
        full_url: Some(engine.base_url().resource_url(ty, id)),
        resource: if row.deleted { None } else { Some(raw_resource(row, shape)?) },
        search: None,
        request: Some(serde_json::json!({ "method": method, "url": url })),
        response: Some(serde_json::json!({
            "status": status,
            "etag": row.etag(),
            "lastModified": row.last_updated,
        })),
    })
}
