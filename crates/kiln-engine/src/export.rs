//! Bulk Data 2.0.0 `$export` (system, Patient, Group) as a background job.
//!
//! An export is an `AsyncJob` in the caller's project whose `output` holds the whole
//! [`ExportState`] (one `state` parameter, JSON): who asked, what they asked for, the
//! `transactionTime`, how far the job got and which files it wrote. Nothing else is needed to
//! resume it, on any node, after a restart.
//!
//! - **Who asked** is kept as the membership, profile, token scope and launch patient, never
//!   the token. Each run rebuilds the caller's [`crate::Access`] from them
//!   ([`Engine::access_for_token`]), so the files hold exactly what the caller's searches
//!   would show (AccessPolicy, SMART scopes, hidden fields), and a membership removed or a
//!   policy narrowed mid-export narrows the rest of it too.
//! - **Snapshot.** `transactionTime` is fixed at kick-off. The searches skip resources whose
//!   current version is newer and note them; after each type, the version each had at that
//!   instant is written if it matched ([`Engine::changed_meanwhile`]). An export is thus the
//!   data as it was at `transactionTime` however long it runs, but for two cases it misses:
//!   a resource deleted while the export ran, before its page was read (the next `_since`
//!   export lists it in `deleted[]`), and one changed so that its current version no longer
//!   matches the search (moved to another patient, say).
//! - **Reading** goes type by type through the search SQL (`Store::search` with the
//!   restricted query), a page of [`PAGE`] rows at a time in row order. The stored bytes are
//!   written as they are (only the caller's hidden fields, Medplum's server `meta` and
//!   `_elements` touch them); memory is one page.
//! - **Files** are blobs under `_bulk/<job>/`, split every `part_size` resources. The state
//!   is saved each time a part closes, with the position the next part starts from; a job
//!   that stops mid-part rewrites that part from there ([`kiln_store::BlobWriter`] leaves
//!   nothing of an unfinished part behind).
//! - **Patient and Group exports** read the Patient compartment of every patient (Patient
//!   level) or of the listed ones (`patient`, a Group's active members), then the resources
//!   of the supporting types (`Practitioner`, `Organization`, …) that the exported resources
//!   reference.
//!
//! The manifest, status and cancellation are served through the job status URL
//! (`/fhir/R4/job/{id}/status`), the files at `/fhir/R4/job/{id}/file/{n}`, each only to the
//! membership that asked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kiln_search::{Filter, SearchQuery};
use kiln_store::{
    BlobReader, BlobWriter, Cursor, HistoryQuery, HistoryScope, Precondition, ProjectId,
    SearchRequest, StoredResource, WriteMethod, format_instant,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::accounts::Authenticated;
use crate::policy::Grant;
use crate::shape::Shape;
use crate::{Engine, EngineError, Interaction, RequestContext};

/// Resources read per page.
const PAGE: usize = 1000;
/// The most patients a Patient or Group export may list (one query names them all).
pub const MAX_EXPORT_PATIENTS: usize = 10_000;
/// The most referenced resources of one supporting type an export tracks; beyond that it
/// exports every resource of the type the caller may read.
const MAX_TRACKED_REFS: usize = 100_000;
/// `_id` values per query when exporting referenced resources.
const REF_CHUNK: usize = 500;
/// The output formats Bulk Data allows (all NDJSON).
const FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];
/// Types a Patient or Group export adds for what the compartment resources reference (US
/// Core's supporting resources), when `_type` does not choose.
const SUPPORTING_TYPES: [&str; 5] =
    ["Practitioner", "PractitionerRole", "Organization", "Location", "Medication"];
/// Types never exported: the server's own bookkeeping.
const NOT_EXPORTED: [&str; 3] = ["AsyncJob", "Login", "BulkDataExport"];

/// Which `$export` was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum ExportLevel {
    /// `[base]/$export`
    System,
    /// `[base]/Patient/$export`
    Patient,
    /// `[base]/Group/[id]/$export`
    Group(String),
}

/// Settings of the export machinery (`kiln serve` flags).
#[derive(Debug, Clone)]
pub struct ExportLimits {
    /// Resources per output file before a new part begins.
    pub part_size: u64,
    /// How long finished files stay downloadable.
    pub retention: Duration,
    /// Exports one membership may have unfinished at once (then 429).
    pub per_client: usize,
    /// Exports this node runs at once (the rest wait, `accepted`).
    pub workers: usize,
    /// Serve file URLs signed for this long instead of requiring the caller's token
    /// (`requiresAccessToken: false`); `None`: the token is required.
    pub signed_urls: Option<Duration>,
    /// How often a running `$import` saves its position (a restart redoes what was written
    /// since). Exports save after each file part.
    pub import_checkpoint: Duration,
}

impl Default for ExportLimits {
    fn default() -> ExportLimits {
        ExportLimits {
            part_size: 100_000,
            retention: Duration::from_secs(24 * 3600),
            per_client: 2,
            workers: 2,
            signed_urls: None,
            import_checkpoint: Duration::from_secs(2),
        }
    }
}

/// Who started an export: enough to rebuild their access, never their token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Caller {
    pub(crate) membership: String,
    pub(crate) profile: String,
    pub(crate) scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client_id: Option<String>,
}

impl Caller {
    /// Who `who` is, as a job remembers them.
    pub(crate) fn of(who: &Authenticated, membership: String) -> Caller {
        Caller {
            membership,
            profile: who.profile.clone(),
            scope: who.scope.clone(),
            patient: who.patient.clone(),
            client_id: who.client_id.clone(),
        }
    }
}

/// One finished file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExportFile {
    /// The resource type in it (`OperationOutcome` for errors, `Bundle` for deletions).
    #[serde(rename = "type")]
    pub(crate) ty: String,
    /// `output`, `error` or `deleted`.
    pub(crate) list: String,
    pub(crate) key: String,
    pub(crate) count: u64,
    /// Import: the input the errors are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) input: Option<String>,
}

/// How one type is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    /// Every resource of the type (system level).
    All,
    /// The type's resources in the patients' compartments.
    Compartment,
    /// The type's resources outside the compartment that name one of the patients in their
    /// `patient` parameter (`Device`).
    Linked,
    /// The type's resources the exported ones reference.
    Referenced,
    /// Provenance of the exported resources (`includeAssociatedData`).
    Provenance,
}

/// Everything an export job is and has done; saved in its AsyncJob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExportState {
    caller: Caller,
    level: ExportLevel,
    /// The kick-off request URL, for the manifest.
    request: String,
    transaction_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    /// The types to read, in order, each with how.
    units: Vec<(String, Phase)>,
    /// `_typeFilter` queries by type (ORed).
    #[serde(default)]
    type_filters: BTreeMap<String, Vec<String>>,
    /// `_elements`: for every type (`None` key: `*`) the elements kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    elements: Option<Vec<String>>,
    /// The patients whose compartments are read; `None`: every patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patients: Option<Vec<String>>,
    /// What kick-off ignored (`Prefer: handling=lenient`), reported in `error[]`.
    #[serde(default)]
    warnings: Vec<String>,
    /// Referenced resources of the `Referenced` types seen so far (`None`: too many, all).
    #[serde(default)]
    refs: BTreeMap<String, Option<BTreeSet<String>>>,
    /// Resources of the current unit the searches skipped as changed after
    /// `transactionTime` ([`Engine::changed_meanwhile`]).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    skipped: BTreeSet<String>,
    // Progress: the position the open part starts from.
    unit: usize,
    #[serde(default)]
    chunk: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(default)]
    part: u32,
    /// Resources in the closed files.
    #[serde(default)]
    written: u64,
    pub(crate) files: Vec<ExportFile>,
    part_size: u64,
    /// When the files expire (set when the job completes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    /// The files were deleted (cancelled, expired, or deleted by the client).
    #[serde(default)]
    pub(crate) removed: bool,
}

impl ExportState {
    fn from_job(job: &Value) -> Option<ExportState> {
        let params = job["output"]["parameter"].as_array()?;
        let is_export =
            params.iter().any(|p| p["name"] == "operation" && p["valueCode"] == "export");
        if !is_export {
            return None;
        }
        let state = params.iter().find(|p| p["name"] == "state")?["valueString"].as_str()?;
        serde_json::from_str(state).ok()
    }

    fn output(&self) -> Result<Value, EngineError> {
        let state = serde_json::to_string(self)
            .map_err(|e| EngineError::Internal(format!("export state: {e}")))?;
        Ok(json!({"resourceType": "Parameters", "parameter": [
            {"name": "operation", "valueCode": "export"},
            {"name": "state", "valueString": state},
        ]}))
    }

    pub(crate) fn folder(id: &str) -> String {
        format!("_bulk/{id}")
    }
}

/// How the file URLs of one bulk job's manifest are written: plain (the caller's token is
/// required) or signed until `exp` (Unix seconds).
pub(crate) struct FileUrls {
    base: String,
    project: String,
    id: String,
    signing: Option<(Arc<[u8]>, i64)>,
}

impl FileUrls {
    pub(crate) fn requires_token(&self) -> bool {
        self.signing.is_none()
    }

    pub(crate) fn url(&self, n: usize) -> String {
        let Self { base, project, id, .. } = self;
        match &self.signing {
            None => format!("{base}/job/{id}/file/{n}"),
            Some((key, exp)) => {
                let sig = kiln_auth::signed_url::sign(key, &signed_message(project, id, n, *exp));
                format!("{base}/job/{id}/file/{n}?project={project}&exp={exp}&sig={sig}")
            }
        }
    }
}

/// What a file URL's signature covers.
fn signed_message(project: &str, id: &str, n: usize, exp: i64) -> String {
    format!("{project}\n{id}\n{n}\n{exp}")
}

/// The setting holding the key file URLs are signed with (shared by every node).
const URL_KEY_SETTING: &str = "kiln.url-key";

/// A bulk job's state, whichever kind: what the status URL, the files and the sweeper need.
#[derive(Debug, Clone)]
pub(crate) enum Bulk {
    Export(ExportState),
    Import(crate::import::ImportState),
    Batch(crate::async_batch::BatchState),
}

impl Bulk {
    pub(crate) fn from_job(job: &Value) -> Option<Bulk> {
        match job_operation(job)? {
            "export" => ExportState::from_job(job).map(Bulk::Export),
            "import" => crate::import::ImportState::from_job(job).map(Bulk::Import),
            "batch" => crate::async_batch::BatchState::from_job(job).map(Bulk::Batch),
            _ => None,
        }
    }

    pub(crate) fn caller(&self) -> &Caller {
        match self {
            Bulk::Export(s) => &s.caller,
            Bulk::Import(s) => &s.caller,
            Bulk::Batch(s) => &s.caller,
        }
    }

    fn files(&self) -> &[ExportFile] {
        match self {
            Bulk::Export(s) => &s.files,
            Bulk::Import(s) => &s.files,
            Bulk::Batch(s) => &s.files,
        }
    }

    fn removed(&self) -> bool {
        match self {
            Bulk::Export(s) => s.removed,
            Bulk::Import(s) => s.removed,
            Bulk::Batch(s) => s.removed,
        }
    }

    fn set_removed(&mut self) {
        match self {
            Bulk::Export(s) => s.removed = true,
            Bulk::Import(s) => s.removed = true,
            Bulk::Batch(s) => s.removed = true,
        }
    }

    fn expires(&self) -> Option<&String> {
        match self {
            Bulk::Export(s) => s.expires.as_ref(),
            Bulk::Import(s) => s.expires.as_ref(),
            Bulk::Batch(s) => s.expires.as_ref(),
        }
    }

    fn output(&self) -> Result<Value, EngineError> {
        match self {
            Bulk::Export(s) => s.output(),
            Bulk::Import(s) => s.output(),
            Bulk::Batch(s) => s.output(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Bulk::Export(_) => "Export",
            Bulk::Import(_) => "Import",
            Bulk::Batch(_) => "Bundle job",
        }
    }
}

/// The `operation` parameter of an AsyncJob's output (`reindex`, `export`, `import`).
pub(crate) fn job_operation(job: &Value) -> Option<&str> {
    job["output"]["parameter"].as_array()?.iter().find(|p| p["name"] == "operation")?["valueCode"]
        .as_str()
}

/// The saved `state` parameter of a bulk job, parsed.
pub(crate) fn saved_state<T: serde::de::DeserializeOwned>(job: &Value) -> Option<T> {
    let params = job["output"]["parameter"].as_array()?;
    let state = params.iter().find(|p| p["name"] == "state")?["valueString"].as_str()?;
    serde_json::from_str(state).ok()
}

/// An AsyncJob `output` holding a bulk job's state.
pub(crate) fn state_output<T: Serialize>(operation: &str, state: &T) -> Result<Value, EngineError> {
    let state = serde_json::to_string(state)
        .map_err(|e| EngineError::Internal(format!("{operation} state: {e}")))?;
    Ok(json!({"resourceType": "Parameters", "parameter": [
        {"name": "operation", "valueCode": operation},
        {"name": "state", "valueString": state},
    ]}))
}

/// What the status URL of an export answers.
#[derive(Debug)]
pub enum ExportStatus {
    /// Still running: `X-Progress`.
    Running(String),
    /// Done: the manifest and when its files expire (RFC 3339).
    Complete { manifest: Value, expires: Option<String> },
    /// The job failed: the reason.
    Failed(String),
    /// An asynchronous request's own answer: its status and FHIR JSON body.
    Response { status: u16, body: Vec<u8> },
}

/// The parsed kick-off request.
struct KickOff {
    since: Option<String>,
    until: Option<String>,
    types: Option<Vec<String>>,
    type_filters: Vec<String>,
    elements: Option<Vec<String>>,
    patients: Option<Vec<String>>,
    provenance: bool,
    warnings: Vec<String>,
}

/// Parses an instant parameter into Kiln's stored form (UTC, milliseconds). A space stands for
/// the `+` of an offset that a client left unencoded in a query string.
fn instant(name: &str, value: &str) -> Result<String, EngineError> {
    let parsed = chrono::DateTime::parse_from_rfc3339(&value.trim().replace(' ', "+"))
        .map_err(|_| {
            EngineError::invalid(format!(
                "Parameter '{name}': '{value}' is not an instant such as 2024-01-01T00:00:00Z"
            ))
        })?
        .with_timezone(&chrono::Utc);
    Ok(format_instant(parsed))
}

/// Splits a `_typeFilter` value into its queries: commas separate queries only where the next
/// one starts (`Type?`); a comma inside a query is its own.
fn split_type_filters(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in value.split(',') {
        let starts_query = piece
            .split_once('?')
            .is_some_and(|(ty, _)| !ty.is_empty() && ty.bytes().all(|b| b.is_ascii_alphabetic()));
        match out.last_mut() {
            Some(last) if !starts_query => {
                last.push(',');
                last.push_str(piece);
            }
            _ => out.push(piece.to_owned()),
        }
    }
    out.retain(|q| !q.is_empty());
    out
}

impl KickOff {
    /// Reads the parameters from the query string and a `Parameters` body.
    fn parse(
        level: &ExportLevel,
        pairs: &[(String, String)],
        body: Option<&Value>,
        lenient: bool,
    ) -> Result<KickOff, EngineError> {
        let mut params: Vec<(String, String)> = Vec::new();
        for (k, v) in pairs {
            params.push((k.clone(), v.clone()));
        }
        if let Some(body) = body {
            if body["resourceType"] != "Parameters" {
                return Err(EngineError::invalid(
                    "The body of $export must be a Parameters resource",
                ));
            }
            for p in body["parameter"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or_default().to_owned();
                let value =
                    ["valueString", "valueCode", "valueInstant", "valueUri", "valueDateTime"]
                        .iter()
                        .find_map(|k| p[*k].as_str())
                        .or_else(|| p["valueReference"]["reference"].as_str());
                let Some(value) = value else {
                    return Err(EngineError::invalid(format!(
                        "$export parameter '{name}' has no value Kiln understands"
                    )));
                };
                params.push((name, value.to_owned()));
            }
        }
        let mut out = KickOff {
            since: None,
            until: None,
            types: None,
            type_filters: Vec::new(),
            elements: None,
            patients: None,
            provenance: false,
            warnings: Vec::new(),
        };
        let refuse =
            |out: &mut KickOff, message: String| kick_refuse(&mut out.warnings, lenient, message);
        for (name, value) in params {
            match name.as_str() {
                "_outputFormat" => {
                    if !FORMATS.contains(&value.as_str()) {
                        return Err(EngineError::invalid(format!(
                            "_outputFormat '{value}' is not supported: use application/fhir+ndjson"
                        )));
                    }
                }
                "_since" => out.since = Some(instant("_since", &value)?),
                "_until" => out.until = Some(instant("_until", &value)?),
                "_type" => {
                    out.types.get_or_insert_with(Vec::new);
                    for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if !kiln_definitions::definitions().is_resource_type(t) {
                            refuse(&mut out, format!("_type '{t}' is not a resource type"))?;
                            continue;
                        }
                        let types = out.types.get_or_insert_with(Vec::new);
                        if !types.iter().any(|x| x == t) {
                            types.push(t.to_owned());
                        }
                    }
                }
                "_typeFilter" => out.type_filters.extend(split_type_filters(&value)),
                "_elements" => {
                    let list = out.elements.get_or_insert_with(Vec::new);
                    list.extend(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|e| !e.is_empty())
                            .map(str::to_owned),
                    );
                }
                "patient" => {
                    if *level == ExportLevel::System {
                        return Err(EngineError::invalid(
                            "Parameter 'patient' applies to Patient and Group exports only",
                        ));
                    }
                    let id =
                        value.strip_prefix("Patient/").filter(|id| kiln_model::is_valid_id(id));
                    let Some(id) = id else {
                        return Err(EngineError::invalid(format!(
                            "Parameter 'patient': '{value}' is not a reference Patient/id"
                        )));
                    };
                    out.patients.get_or_insert_with(Vec::new).push(id.to_owned());
                }
                "includeAssociatedData" => {
                    for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                        if v == "LatestProvenanceResources" {
                            out.provenance = true;
                        } else {
                            refuse(
                                &mut out,
                                format!(
                                    "includeAssociatedData '{v}' is not supported (Kiln supports LatestProvenanceResources)"
                                ),
                            )?;
                        }
                    }
                }
                "organizeOutputBy" => refuse(
                    &mut out,
                    "organizeOutputBy is not supported: files are organised by resource type"
                        .to_owned(),
                )?,
                "_format" | "_pretty" => {}
                other => refuse(&mut out, format!("$export has no parameter '{other}'"))?,
            }
        }
        Ok(out)
    }
}

/// The live progress of a running export (for `X-Progress`).
#[derive(Default)]
pub(crate) struct ExportProgress {
    pub(crate) written: AtomicU64,
    pub(crate) units_done: AtomicU64,
}

/// References in a stored body: `"reference":"Type/id"` (relative, or under `fhir_base`),
/// for the types in `wanted`, added to `out`. A byte scan: no parse.
fn scan_references(
    body: &[u8],
    fhir_base: &str,
    wanted: &mut BTreeMap<String, Option<BTreeSet<String>>>,
) {
    const NEEDLE: &[u8] = b"\"reference\":\"";
    let mut rest = body;
    while let Some(at) = memchr::memmem::find(rest, NEEDLE) {
        rest = &rest[at + NEEDLE.len()..];
        let Some(end) = rest.iter().position(|&b| b == b'"') else { return };
        let Ok(text) = std::str::from_utf8(&rest[..end]) else { continue };
        let text = text.strip_prefix(fhir_base).map(|t| t.trim_start_matches('/')).unwrap_or(text);
        let Some((ty, id)) = text.split_once('/') else { continue };
        if id.contains('/') || !kiln_model::is_valid_id(id) {
            continue;
        }
        if let Some(slot) = wanted.get_mut(ty)
            && let Some(set) = slot
        {
            set.insert(id.to_owned());
            if set.len() > MAX_TRACKED_REFS {
                *slot = None;
            }
        }
    }
}

pub(crate) fn job_body(stored: &StoredResource) -> Result<Value, EngineError> {
    serde_json::from_slice(&stored.body)
        .map_err(|e| EngineError::Internal(format!("stored AsyncJob: {e}")))
}

impl Engine {
    /// Kick-off: checks the request and the caller's rights, records the job and starts it.
    /// Returns the job's id (its status URL is `job/{id}/status`).
    pub async fn start_export(
        &self,
        who: &Authenticated,
        level: ExportLevel,
        pairs: &[(String, String)],
        body: Option<&Value>,
        lenient: bool,
        request_url: &str,
    ) -> Result<String, EngineError> {
        let Some(membership) = who.membership.clone() else {
            return Err(EngineError::Forbidden("$export needs a project membership".into()));
        };
        let ctx = who.context();
        ctx.access.usable()?;
        let mut kick = KickOff::parse(&level, pairs, body, lenient)?;
        let registry = self.registry(&ctx.project).await?;
        let defs = kiln_definitions::definitions();
        let readable =
            |ty: &str| !matches!(ctx.access.grant(ty, Interaction::Search), Grant::Nothing);
        let in_compartment = |ty: &str| {
            ty == "Patient"
                || kiln_search::compartment_params("Patient", ty).is_some_and(|p| !p.is_empty())
        };
        let is_linked = |ty: &str| linked_param(ty).is_some();

        // The patients whose compartments are read.
        let mut patients = kick.patients.take();
        if let ExportLevel::Group(group_id) = &level {
            let group = self.read(&ctx, "Group", group_id).await?;
            let group: Value = serde_json::from_slice(&group.body)
                .map_err(|e| EngineError::Internal(format!("stored Group: {e}")))?;
            if group["actual"] == json!(false) {
                return Err(EngineError::invalid(format!(
                    "Group/{group_id} is a definitional group (actual = false): it has no members to export"
                )));
            }
            let members: Vec<String> = group["member"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["inactive"] != json!(true))
                .filter_map(|m| m["entity"]["reference"].as_str())
                .filter_map(|r| r.strip_prefix("Patient/"))
                .map(str::to_owned)
                .collect();
            patients = Some(match patients {
                Some(listed) => listed.into_iter().filter(|p| members.contains(p)).collect(),
                None => members,
            });
        }
        if let Some(list) = &mut patients {
            list.sort();
            list.dedup();
            if list.len() > MAX_EXPORT_PATIENTS {
                return Err(EngineError::invalid(format!(
                    "An export may name at most {MAX_EXPORT_PATIENTS} patients ({} asked): split the group",
                    list.len()
                )));
            }
        }

        // The types, in order, and how each is read.
        let mut units: Vec<(String, Phase)> = Vec::new();
        let exportable = |ty: &str| !NOT_EXPORTED.contains(&ty);
        match &level {
            ExportLevel::System => {
                let types: Vec<String> = match &kick.types {
                    Some(t) => t.clone(),
                    None => defs
                        .resource_types()
                        .filter(|t| exportable(t) && readable(t))
                        .map(str::to_owned)
                        .collect(),
                };
                units.extend(types.into_iter().map(|t| (t, Phase::All)));
            }
            ExportLevel::Patient | ExportLevel::Group(_) => {
                let phase_of = |t: &str| {
                    if in_compartment(t) {
                        Phase::Compartment
                    } else if is_linked(t) {
                        Phase::Linked
                    } else {
                        Phase::Referenced
                    }
                };
                let types: Vec<String> = match &kick.types {
                    Some(t) => t.clone(),
                    None => {
                        let mut types = vec!["Patient".to_owned()];
                        types.extend(
                            defs.resource_types()
                                .filter(|t| *t != "Patient" && (in_compartment(t) || is_linked(t)))
                                .filter(|t| exportable(t) && readable(t))
                                .map(str::to_owned),
                        );
                        types.extend(
                            SUPPORTING_TYPES
                                .iter()
                                .filter(|t| readable(t))
                                .map(|t| (*t).to_owned()),
                        );
                        types
                    }
                };
                // Compartment types first, then the linked ones, then what they reference.
                for phase in [Phase::Compartment, Phase::Linked, Phase::Referenced] {
                    units.extend(
                        types.iter().filter(|t| phase_of(t) == phase).map(|t| (t.clone(), phase)),
                    );
                }
            }
        }
        // Types named in `_type` that the caller may not read.
        let mut refused = Vec::new();
        units.retain(|(t, _)| {
            let ok = exportable(t) && readable(t);
            if !ok {
                refused.push(t.clone());
            }
            ok
        });
        if !refused.is_empty() {
            let message = format!("Not permitted to export {}", refused.join(", "));
            if !lenient {
                return Err(EngineError::Forbidden(message));
            }
            kick.warnings.push(message);
        }
        if kick.provenance
            && readable("Provenance")
            && !units.iter().any(|(t, _)| t == "Provenance")
        {
            units.push(("Provenance".to_owned(), Phase::Provenance));
        }
        if units.is_empty() {
            return Err(EngineError::Forbidden(
                "There is no resource type this export may read".into(),
            ));
        }

        // `_typeFilter`: each a search on one of the exported types.
        let mut type_filters: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for q in std::mem::take(&mut kick.type_filters) {
            let Some((ty, query)) = q.split_once('?') else {
                kick_refuse(
                    &mut kick.warnings,
                    lenient,
                    format!("_typeFilter '{q}' is not Type?query"),
                )?;
                continue;
            };
            if !units.iter().any(|(t, _)| t == ty) {
                kick_refuse(
                    &mut kick.warnings,
                    lenient,
                    format!("_typeFilter '{q}' names a type that is not exported"),
                )?;
                continue;
            }
            let parsed =
                registry.parse(ty, &crate::query_pairs(query)).map_err(EngineError::Invalid)?;
            if let Some(u) = parsed.unknown.first() {
                kick_refuse(
                    &mut kick.warnings,
                    lenient,
                    format!(
                        "_typeFilter '{q}': parameter '{}' is not supported: {}",
                        u.name, u.reason
                    ),
                )?;
                continue;
            }
            if !parsed.include.is_empty()
                || !parsed.revinclude.is_empty()
                || !parsed.sort.is_empty()
            {
                kick_refuse(
                    &mut kick.warnings,
                    lenient,
                    format!("_typeFilter '{q}': only search parameters are allowed"),
                )?;
                continue;
            }
            type_filters.entry(ty.to_owned()).or_default().push(query.to_owned());
        }

        if let Some(busy) = self.bulk_slots_full(&who.project, &membership).await? {
            return Err(busy);
        }

        let transaction_time = format_instant(chrono::Utc::now());
        let refs = units
            .iter()
            .filter(|(_, p)| *p == Phase::Referenced)
            .map(|(t, _)| (t.clone(), Some(BTreeSet::new())))
            .collect();
        let state = ExportState {
            caller: Caller::of(who, membership),
            level,
            request: request_url.to_owned(),
            transaction_time: transaction_time.clone(),
            since: kick.since,
            until: kick.until,
            units,
            type_filters,
            elements: kick.elements,
            patients,
            warnings: kick.warnings,
            refs,
            skipped: BTreeSet::new(),
            unit: 0,
            chunk: 0,
            cursor: None,
            part: 0,
            written: 0,
            files: Vec::new(),
            part_size: self.export_limits().part_size.max(1),
            expires: None,
            removed: false,
        };
        let id = crate::rest::new_id();
        let kind = crate::jobs::JobKind::Export(state.caller.membership.clone());
        self.create_job(&ctx.project, &id, state.output()?, request_url, kind).await?;
        Ok(id)
    }

    /// The bulk job `id` as its caller sees it (`None`: another kind of job); 404 for anyone
    /// else.
    pub(crate) async fn own_bulk(
        &self,
        who: &Authenticated,
        id: &str,
    ) -> Result<Option<(StoredResource, Value, Bulk)>, EngineError> {
        let internal = RequestContext::new(who.project.clone());
        let stored = match self.read(&internal, "AsyncJob", id).await {
            Ok(s) => s,
            Err(EngineError::Gone(_)) => {
                return Err(EngineError::NotFound(format!("Job {id} not found")));
            }
            Err(e) => return Err(e),
        };
        let job = job_body(&stored)?;
        let Some(state) = Bulk::from_job(&job) else { return Ok(None) };
        if who.membership.as_deref() != Some(state.caller().membership.as_str()) {
            return Err(EngineError::NotFound(format!("Job {id} not found")));
        }
        Ok(Some((stored, job, state)))
    }

    /// The status of export job `id` (`None`: it is another kind of job).
    pub async fn export_status(
        &self,
        who: &Authenticated,
        id: &str,
    ) -> Result<Option<ExportStatus>, EngineError> {
        let Some((_, job, bulk)) = self.own_bulk(who, id).await? else { return Ok(None) };
        let kind = bulk.kind();
        let gone = || EngineError::NotFound(format!("{kind} {id} was cancelled or deleted"));
        match job["status"].as_str().unwrap_or_default() {
            "completed" if bulk.removed() => Err(gone()),
            "completed" => Ok(Some(match &bulk {
                Bulk::Export(state) => ExportStatus::Complete {
                    manifest: self.manifest(&self.file_urls(&who.project, id).await?, state),
                    expires: bulk.expires().cloned(),
                },
                Bulk::Import(state) => ExportStatus::Complete {
                    manifest: self.import_manifest(&self.file_urls(&who.project, id).await?, state),
                    expires: bulk.expires().cloned(),
                },
                Bulk::Batch(state) => {
                    let (status, body) = self.batch_response(&who.project, id, state).await?;
                    ExportStatus::Response { status, body }
                }
            })),
            "cancelled" => Err(gone()),
            "error" => {
                let reason = job["output"]["parameter"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == "error")
                    .and_then(|p| p["valueString"].as_str())
                    .unwrap_or("the job failed")
                    .to_owned();
                Ok(Some(ExportStatus::Failed(reason)))
            }
            status => {
                let state = match bulk {
                    Bulk::Export(state) => state,
                    Bulk::Import(state) => {
                        return Ok(Some(ExportStatus::Running(
                            self.import_progress(id, status, &state),
                        )));
                    }
                    Bulk::Batch(_) => {
                        return Ok(Some(ExportStatus::Running(format!(
                            "{status}: processing the Bundle"
                        ))));
                    }
                };
                let total = state.units.len();
                let (written, done) = match self.jobs.export_progress(id) {
                    Some(p) => (
                        p.written.load(Ordering::Relaxed),
                        p.units_done.load(Ordering::Relaxed) as usize,
                    ),
                    None => (state.written, state.unit),
                };
                Ok(Some(ExportStatus::Running(format!(
                    "{status}: {done} of {total} types done, {written} resources written"
                ))))
            }
        }
    }

    /// How file URLs are written for a manifest served now.
    async fn file_urls(&self, project: &ProjectId, id: &str) -> Result<FileUrls, EngineError> {
        let signing = match self.export_limits().signed_urls {
            None => None,
            Some(ttl) => {
                let exp =
                    chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(0);
                Some((self.url_key().await?, exp))
            }
        };
        Ok(FileUrls {
            base: self.base_url().fhir_base(),
            project: project.as_str().to_owned(),
            id: id.to_owned(),
            signing,
        })
    }

    /// The key file URLs are signed with: made once, kept in the store for every node.
    async fn url_key(&self) -> Result<Arc<[u8]>, EngineError> {
        if let Some(key) = self.jobs.url_key() {
            return Ok(key);
        }
        let fresh = kiln_auth::tokens::random_token(32);
        let stored = self.store().put_setting_if_absent(URL_KEY_SETTING, fresh.as_bytes()).await?;
        let key: Arc<[u8]> = stored.into();
        self.jobs.set_url_key(key.clone());
        Ok(key)
    }

    /// Opens file `n` of bulk job `id` of `project` for a signed URL (no token): the
    /// signature must cover exactly these and `exp` must not have passed.
    pub async fn signed_file(
        &self,
        project: &str,
        id: &str,
        n: &str,
        exp: &str,
        sig: &str,
    ) -> Result<BlobReader, EngineError> {
        let refused = || EngineError::Forbidden("This file link is invalid or has expired".into());
        let (Ok(file_n), Ok(exp)) = (n.parse::<usize>(), exp.parse::<i64>()) else {
            return Err(refused());
        };
        let key = self.url_key().await?;
        if !kiln_auth::signed_url::verify(&key, &signed_message(project, id, file_n, exp), sig)
            || exp < chrono::Utc::now().timestamp()
        {
            return Err(refused());
        }
        let project = ProjectId::new(project);
        let not_found = || EngineError::NotFound(format!("Job file {id}/{n} not found"));
        let stored = self.read(&RequestContext::new(project.clone()), "AsyncJob", id).await?;
        let job = job_body(&stored)?;
        let bulk = Bulk::from_job(&job).ok_or_else(not_found)?;
        if job["status"] != "completed" || bulk.removed() {
            return Err(not_found());
        }
        let file = bulk.files().get(file_n).ok_or_else(not_found)?;
        self.blobs.open(&project, &file.key).await.map_err(|e| match e {
            kiln_store::BlobError::NotFound => not_found(),
            other => EngineError::Internal(format!("job file: {other}")),
        })
    }

    fn manifest(&self, urls: &FileUrls, state: &ExportState) -> Value {
        let list = |name: &str| -> Vec<Value> {
            state
                .files
                .iter()
                .enumerate()
                .filter(|(_, f)| f.list == name)
                .map(|(n, f)| json!({"type": f.ty, "url": urls.url(n), "count": f.count}))
                .collect()
        };
        json!({
            "transactionTime": state.transaction_time,
            "request": state.request,
            "requiresAccessToken": urls.requires_token(),
            "output": list("output"),
            "deleted": list("deleted"),
            "error": list("error"),
        })
    }

    /// Opens file `n` of export `id` for its caller.
    pub async fn export_file(
        &self,
        who: &Authenticated,
        id: &str,
        n: &str,
    ) -> Result<BlobReader, EngineError> {
        let not_found = || EngineError::NotFound(format!("Job file {id}/{n} not found"));
        let Some((_, job, bulk)) = self.own_bulk(who, id).await? else {
            return Err(not_found());
        };
        if job["status"] != "completed" || bulk.removed() {
            return Err(not_found());
        }
        let file =
            n.parse::<usize>().ok().and_then(|n| bulk.files().get(n)).ok_or_else(not_found)?;
        self.blobs.open(&who.project, &file.key).await.map_err(|e| match e {
            kiln_store::BlobError::NotFound => not_found(),
            other => EngineError::Internal(format!("export file: {other}")),
        })
    }

    /// `DELETE` on an export's status URL: stops it if it runs, deletes its files, and from
    /// then on its status is 404.
    pub async fn delete_export(&self, who: &Authenticated, id: &str) -> Result<bool, EngineError> {
        if self.own_bulk(who, id).await?.is_none() {
            return Ok(false);
        }
        self.jobs.cancel(id, who.project.as_str());
        let ctx = RequestContext::new(who.project.clone());
        loop {
            let stored = self.read(&ctx, "AsyncJob", id).await?;
            let mut job = job_body(&stored)?;
            let Some(mut state) = Bulk::from_job(&job) else { return Ok(true) };
            if state.removed() {
                return Err(EngineError::NotFound(format!("Job {id} was already deleted")));
            }
            state.set_removed();
            if !matches!(job["status"].as_str(), Some("completed" | "error" | "cancelled")) {
                job["status"] = json!("cancelled");
                job["transactionTime"] = json!(format_instant(chrono::Utc::now()));
            }
            job["output"] = state.output()?;
            match self.save_job(&ctx, id, job, stored.version).await {
                Err(EngineError::PreconditionFailed(_)) => continue,
                Err(e) => return Err(e),
                Ok(_) => break,
            }
        }
        // The runner (if any) stops at its next page; files it closes after this are removed
        // by the runner itself when it sees the cancellation.
        self.remove_export_files(&who.project, id).await;
        Ok(true)
    }

    pub(crate) async fn remove_export_files(&self, project: &ProjectId, id: &str) {
        if let Err(e) = self.blobs.delete_folder(project, &ExportState::folder(id)).await {
            tracing::warn!(job = id, error = %e, "could not delete export files");
        }
    }

    /// Records a new bulk job (`output` = its state) in `project` and starts it.
    pub(crate) async fn create_job(
        &self,
        project: &ProjectId,
        id: &str,
        output: Value,
        request_url: &str,
        kind: crate::jobs::JobKind,
    ) -> Result<(), EngineError> {
        let job = json!({
            "resourceType": "AsyncJob",
            "status": "accepted",
            "requestTime": format_instant(chrono::Utc::now()),
            "request": request_url,
            "output": output,
        });
        // The job is the server's record: written whatever the caller's policy says of AsyncJob.
        let internal = RequestContext::new(project.clone());
        let job = self.prepare(&internal, "AsyncJob", id, job)?;
        self.put(&internal, job, WriteMethod::Post, Precondition::MustNotExist).await?;
        self.enqueue_job(project, id, kind, Duration::ZERO).await?;
        Ok(())
    }

    /// The AsyncJob `id` and its version, unless it is gone or finished.
    pub(crate) async fn open_job(
        &self,
        jobctx: &RequestContext,
        id: &str,
    ) -> Result<Option<(i64, Value)>, EngineError> {
        let stored = match self.read(jobctx, "AsyncJob", id).await {
            Ok(stored) => stored,
            Err(EngineError::NotFound(_) | EngineError::Gone(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let job = job_body(&stored)?;
        if matches!(job["status"].as_str(), Some("completed" | "error" | "cancelled")) {
            return Ok(None);
        }
        Ok(Some((stored.version, job)))
    }

    /// Opens job `id` (an `operation` job) to run it and marks it active: its version, body and
    /// state; `None` when it is gone or finished. When the job was written meanwhile (the last
    /// steps of a runner that stopped), the newer state is taken.
    pub(crate) async fn activate_job<T: serde::de::DeserializeOwned>(
        &self,
        jobctx: &RequestContext,
        id: &str,
        operation: &str,
    ) -> Result<Option<(i64, Value, T)>, EngineError> {
        loop {
            let Some((version, mut job)) = self.open_job(jobctx, id).await? else {
                return Ok(None);
            };
            let state = (job_operation(&job) == Some(operation))
                .then(|| saved_state::<T>(&job))
                .flatten()
                .ok_or_else(|| {
                    EngineError::Internal(format!("AsyncJob {id} has no {operation} state"))
                })?;
            job["status"] = json!("active");
            match self.save_job(jobctx, id, job.clone(), version).await {
                Ok(version) => return Ok(Some((version, job, state))),
                Err(EngineError::PreconditionFailed(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// When the files of a bulk job finishing now expire (`--export-retention`).
    pub(crate) fn files_expire(&self) -> String {
        let retention = chrono::Duration::from_std(self.export_limits().retention)
            .unwrap_or(chrono::Duration::days(1));
        format_instant(chrono::Utc::now() + retention)
    }

    /// Marks a bulk job completed with its final `output` and hands its files to the sweeper
    /// (they expire at `expires`). `false` when it was cancelled meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn complete_job(
        &self,
        jobctx: &RequestContext,
        id: &str,
        job: &mut Value,
        output: Value,
        version: i64,
        cancel: &AtomicBool,
        expires: &str,
    ) -> Result<bool, EngineError> {
        job["status"] = json!("completed");
        job["transactionTime"] = json!(format_instant(chrono::Utc::now()));
        if self.checkpoint_job(jobctx, id, job, output, version, cancel).await?.is_none() {
            return Ok(false);
        }
        self.add_to_sweep(&jobctx.project, id, expires).await;
        Ok(true)
    }

    /// The context a job acts in for its caller: their access as it is now (a membership
    /// removed since is a 403 that fails the job).
    pub(crate) async fn caller_context(
        &self,
        project: &ProjectId,
        caller: &Caller,
    ) -> Result<RequestContext, EngineError> {
        let access = self
            .access_for_token(
                project,
                &caller.membership,
                &caller.profile,
                &caller.scope,
                caller.patient.as_deref(),
            )
            .await
            .map_err(|e| match e {
                EngineError::Unauthorized(m) => {
                    EngineError::Forbidden(format!("The membership that asked is gone: {m}"))
                }
                other => other,
            })?;
        Ok(RequestContext {
            project: project.clone(),
            author: Some(caller.profile.clone()),
            access,
            extended: false,
        })
    }

    /// Runs export job `id` to its end: completed, cancelled, failed or gone.
    pub(crate) async fn run_export(
        &self,
        project: &ProjectId,
        id: &str,
        cancel: &AtomicBool,
        progress: &ExportProgress,
    ) -> Result<(), EngineError> {
        let jobctx = RequestContext::new(project.clone());
        let Some((mut version, mut job, mut state)) =
            self.activate_job::<ExportState>(&jobctx, id, "export").await?
        else {
            return Ok(());
        };
        let ctx = self.caller_context(project, &state.caller).await?;
        progress.written.store(state.written, Ordering::Relaxed);
        progress.units_done.store(state.unit as u64, Ordering::Relaxed);

        let fhir_base = self.base_url().fhir_base();
        let registry = self.registry(project).await?;
        while state.unit < state.units.len() {
            let (ty, phase) = state.units[state.unit].clone();
            let shape = shape_for(&ty, state.elements.as_deref());
            // The queries this unit runs, one after the other ("chunks").
            let queries = self.unit_queries(&ctx, &registry, &state, &ty, phase)?;
            let mut writer: Option<(Box<dyn BlobWriter>, u64)> = None;
            let mut cursor = state.cursor.as_deref().and_then(Cursor::decode);
            let mut chunk = state.chunk;
            // Parts end where pages do (the next part starts from that page's cursor), so a
            // part holds `part_size` resources or, when some rows are skipped, a page more.
            let page_size = PAGE.min(usize::try_from(state.part_size).unwrap_or(PAGE)).max(1);
            while chunk < queries.len() {
                // The next page is read while this one is written.
                let mut pending =
                    Some(self.fetch_page(project, &queries[chunk], cursor.clone(), page_size));
                while let Some(fetch) = pending.take() {
                    if cancel.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    let page = fetch
                        .await
                        .map_err(|e| EngineError::Internal(format!("export reader: {e}")))??;
                    if let Some(next) = &page.next {
                        pending = Some(self.fetch_page(
                            project,
                            &queries[chunk],
                            Some(next.clone()),
                            page_size,
                        ));
                    }
                    let mut buf = Vec::with_capacity(page.matches.len() * 1024);
                    let mut n = 0u64;
                    for mut stored in page.matches {
                        if stored.last_updated > state.transaction_time {
                            // Changed since the export began: its version of then comes at
                            // the end of the unit.
                            state.skipped.insert(stored.id);
                            continue;
                        }
                        if state.until.as_ref().is_some_and(|u| stored.last_updated > *u)
                            || state.since.as_ref().is_some_and(|s| stored.last_updated <= *s)
                        {
                            continue;
                        }
                        ctx.access.redact(&mut stored)?;
                        if !state.refs.is_empty()
                            && matches!(phase, Phase::Compartment | Phase::Linked)
                        {
                            // Without Medplum's `meta.author`, which is no reference of the
                            // resource's own.
                            let body = crate::server_meta::strip(&stored.body);
                            scan_references(&body, &fhir_base, &mut state.refs);
                        }
                        buf.extend_from_slice(&shape.serve(&stored.body));
                        buf.push(b'\n');
                        n += 1;
                    }
                    if n > 0 {
                        let key = part_key(id, state.unit, &ty, state.part);
                        self.write_part(project, &mut writer, &key, &buf, n).await?;
                        progress.written.fetch_add(n, Ordering::Relaxed);
                    }
                    cursor = page.next;
                    let part_full = writer.as_ref().is_some_and(|(_, c)| *c >= state.part_size);
                    if part_full {
                        // Close the part and remember where the next one starts.
                        let (w, count) = writer.take().unwrap_or_else(|| unreachable!());
                        self.close_part(&mut state, id, &ty, w, count).await?;
                        state.chunk = chunk;
                        state.cursor = cursor.as_ref().map(Cursor::encode);
                        if cursor.is_none() {
                            state.chunk = chunk + 1;
                        }
                        version = match self
                            .checkpoint(&jobctx, id, &mut job, &state, version, cancel)
                            .await?
                        {
                            Some(v) => v,
                            None => return Ok(()),
                        };
                    }
                }
                cursor = None;
                chunk += 1;
            }
            // Resources changed since `transactionTime` were left out above; the versions
            // they had then belong in this export.
            let (buf, n) = self.changed_meanwhile(&ctx, &state, &ty, &queries, &shape).await?;
            if n > 0 {
                let key = part_key(id, state.unit, &ty, state.part);
                self.write_part(project, &mut writer, &key, &buf, n).await?;
                progress.written.fetch_add(n, Ordering::Relaxed);
            }
            if let Some((w, count)) = writer.take() {
                self.close_part(&mut state, id, &ty, w, count).await?;
            }
            if phase == Phase::All && state.since.is_some() {
                self.export_deleted(&ctx, &mut state, id, &ty, cancel).await?;
            }
            state.unit += 1;
            state.chunk = 0;
            state.cursor = None;
            state.part = 0;
            state.skipped.clear();
            progress.units_done.store(state.unit as u64, Ordering::Relaxed);
            version = match self.checkpoint(&jobctx, id, &mut job, &state, version, cancel).await? {
                Some(v) => v,
                None => return Ok(()),
            };
        }
        if cancel.load(Ordering::SeqCst) {
            return Ok(());
        }
        // What kick-off left out, as OperationOutcomes in `error[]`.
        if let Some(file) = self.write_warnings(project, id, &state.warnings).await? {
            state.files.retain(|f| f.key != file.key);
            state.files.push(file);
        }
        let expires = self.files_expire();
        state.expires = Some(expires.clone());
        let output = state.output()?;
        if !self.complete_job(&jobctx, id, &mut job, output, version, cancel, &expires).await? {
            return Ok(());
        }
        tracing::info!(
            project = project.as_str(),
            job = id,
            resources = state.written,
            files = state.files.len(),
            "export completed"
        );
        Ok(())
    }

    /// The searches that read one unit of an export, restricted to the caller's access.
    fn unit_queries(
        &self,
        ctx: &RequestContext,
        registry: &kiln_search::Registry,
        state: &ExportState,
        ty: &str,
        phase: Phase,
    ) -> Result<Vec<SearchQuery>, EngineError> {
        let mut base = SearchQuery::new(Some(ty));
        base.types = vec![ty.to_owned()];
        if let Some(since) = &state.since {
            let q = registry
                .parse(ty, &[("_lastUpdated".to_owned(), format!("gt{since}"))])
                .map_err(EngineError::Invalid)?;
            base.filters.extend(q.filters);
        }
        if let Some(filters) = state.type_filters.get(ty) {
            let mut alternatives = Vec::new();
            for query in filters {
                let q =
                    registry.parse(ty, &crate::query_pairs(query)).map_err(EngineError::Invalid)?;
                alternatives.push(Filter::And(q.filters));
            }
            base.filters.push(Filter::Or(alternatives));
        }
        let compartment =
            || Filter::Compartment { compartment: "Patient".into(), ids: state.patients.clone() };
        let mut queries = Vec::new();
        match phase {
            Phase::All => queries.push(base),
            Phase::Compartment => {
                base.filters.push(compartment());
                queries.push(base);
            }
            Phase::Linked => {
                base.filters.push(linked_filter(registry, ty, state.patients.as_deref())?);
                queries.push(base);
            }
            Phase::Referenced => match state.refs.get(ty) {
                // Too many to list: every resource of the type the caller may read.
                Some(None) => queries.push(base),
                Some(Some(ids)) => {
                    let ids: Vec<&String> = ids.iter().collect();
                    for chunk in ids.chunks(REF_CHUNK) {
                        let value = chunk.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
                        let q = registry
                            .parse(ty, &[("_id".to_owned(), value)])
                            .map_err(EngineError::Invalid)?;
                        let mut query = base.clone();
                        query.filters.extend(q.filters);
                        queries.push(query);
                    }
                }
                None => {}
            },
            Phase::Provenance => {
                // Provenance whose target is a resource of an exported type (in the patients'
                // compartments, for Patient and Group exports).
                let mut targets = Vec::new();
                for (t, p) in &state.units {
                    if *p == Phase::Provenance || t == "Provenance" {
                        continue;
                    }
                    let then = match p {
                        Phase::Compartment => compartment(),
                        Phase::Linked => linked_filter(registry, t, state.patients.as_deref())?,
                        _ => Filter::And(Vec::new()),
                    };
                    targets.push(Filter::Chain {
                        code: "target".into(),
                        types: vec![t.clone()],
                        then: Box::new(then),
                    });
                }
                base.filters.push(Filter::Or(targets));
                queries.push(base);
            }
        }
        for q in &mut queries {
            ctx.access.restrict(q, Interaction::Search)?;
        }
        Ok(queries)
    }

    /// The resources of `ty` the searches skipped because their current version is newer
    /// than the export's `transactionTime` (`skipped`): the version each had at that instant,
    /// if it matched one of `queries` (the unit's restricted searches, evaluated in memory on
    /// that version), as NDJSON lines, and how many. A condition that needs other resources
    /// (a chain, `_has`) does not hold in memory, so such a resource is left out rather than
    /// risked.
    async fn changed_meanwhile(
        &self,
        ctx: &RequestContext,
        state: &ExportState,
        ty: &str,
        queries: &[SearchQuery],
        shape: &Shape,
    ) -> Result<(Vec<u8>, u64), EngineError> {
        let at = &state.transaction_time;
        let changed = state.skipped.iter().cloned();
        let mut buf = Vec::new();
        let mut n = 0u64;
        for id in changed {
            let then = HistoryQuery { count: 1, at: Some(at.clone()), ..Default::default() };
            let instance = HistoryScope::Instance(ty.to_owned(), id);
            let Some(mut version) =
                self.store().history(&ctx.project, &instance, &then).await?.pop()
            else {
                continue;
            };
            if version.deleted
                || version.last_updated > *at
                || state.until.as_ref().is_some_and(|u| version.last_updated > *u)
                || state.since.as_ref().is_some_and(|s| version.last_updated <= *s)
            {
                continue;
            }
            let Ok(json) = serde_json::from_slice::<Value>(&version.body) else { continue };
            if !queries.iter().any(|q| kiln_search::matches(q, &json)) {
                continue;
            }
            ctx.access.redact(&mut version)?;
            buf.extend_from_slice(&shape.serve(&version.body));
            buf.push(b'\n');
            n += 1;
        }
        Ok((buf, n))
    }

    /// `deleted[]` for a `_since` export of `ty`: the resources deleted after `_since` (and
    /// by `transactionTime`) that are still deleted then, one `Bundle` per line. Only for
    /// types the caller may read whole: a deleted resource has no content left to check a
    /// policy's criteria against.
    async fn export_deleted(
        &self,
        ctx: &RequestContext,
        state: &mut ExportState,
        id: &str,
        ty: &str,
        cancel: &AtomicBool,
    ) -> Result<(), EngineError> {
        if !matches!(ctx.access.grant(ty, Interaction::History), Grant::All)
            || state.type_filters.contains_key(ty)
        {
            return Ok(());
        }
        let scope = HistoryScope::Type(ty.to_owned());
        let mut query =
            HistoryQuery { count: PAGE, since: state.since.clone(), ..Default::default() };
        let mut seen = BTreeSet::new();
        let mut buf = Vec::new();
        let mut count = 0u64;
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Ok(());
            }
            let page = self.store().history(&ctx.project, &scope, &query).await?;
            let Some(last) = page.last() else { break };
            query.before_seq = Some(last.seq);
            let full = page.len() == PAGE;
            for version in page {
                if version.last_updated > state.transaction_time {
                    continue;
                }
                // Newest first: the first version seen of a resource is its state then.
                if !seen.insert(version.id.clone()) || !version.deleted {
                    continue;
                }
                let bundle = json!({
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [{"request": {"method": "DELETE", "url": format!("{ty}/{}", version.id)}}],
                });
                buf.extend_from_slice(&serde_json::to_vec(&bundle).unwrap_or_default());
                buf.push(b'\n');
                count += 1;
            }
            if !full {
                break;
            }
        }
        if count > 0 {
            let key = format!("{}/{}-{ty}-deleted.ndjson", ExportState::folder(id), state.unit);
            let mut w = self.blobs.create(&ctx.project, &key).await.map_err(blob_error)?;
            w.write(&buf).await.map_err(blob_error)?;
            w.finish().await.map_err(blob_error)?;
            state.files.retain(|f| f.key != key);
            state.files.push(ExportFile {
                ty: "Bundle".into(),
                list: "deleted".into(),
                key,
                count,
                input: None,
            });
        }
        Ok(())
    }

    /// Starts reading one page of `query` after `cursor` (on the store's readers).
    fn fetch_page(
        &self,
        project: &ProjectId,
        query: &SearchQuery,
        cursor: Option<Cursor>,
        count: usize,
    ) -> tokio::task::JoinHandle<Result<kiln_store::SearchPage, EngineError>> {
        let store = self.store().clone();
        let project = project.clone();
        let request = SearchRequest { query: query.clone(), after: cursor, count, total: false };
        tokio::spawn(async move { Ok(store.search(&project, &request).await?) })
    }

    /// Appends `lines` (`n` resources) to the open part, opening it at `key` if none is.
    async fn write_part(
        &self,
        project: &ProjectId,
        writer: &mut Option<(Box<dyn BlobWriter>, u64)>,
        key: &str,
        lines: &[u8],
        n: u64,
    ) -> Result<(), EngineError> {
        let (w, count) = match writer {
            Some(w) => w,
            None => {
                let w = self.blobs.create(project, key).await.map_err(blob_error)?;
                writer.insert((w, 0))
            }
        };
        w.write(lines).await.map_err(blob_error)?;
        *count += n;
        Ok(())
    }

    async fn close_part(
        &self,
        state: &mut ExportState,
        id: &str,
        ty: &str,
        writer: Box<dyn BlobWriter>,
        count: u64,
    ) -> Result<(), EngineError> {
        writer.finish().await.map_err(blob_error)?;
        let key = part_key(id, state.unit, ty, state.part);
        // A part rewritten after a restart replaces its earlier record.
        state.files.retain(|f| f.key != key);
        state.files.push(ExportFile {
            input: None,
            ty: ty.to_owned(),
            list: "output".into(),
            key,
            count,
        });
        state.written += count;
        state.part += 1;
        Ok(())
    }

    /// Saves the export's state; see [`Engine::checkpoint_job`].
    async fn checkpoint(
        &self,
        ctx: &RequestContext,
        id: &str,
        job: &mut Value,
        state: &ExportState,
        version: i64,
        cancel: &AtomicBool,
    ) -> Result<Option<i64>, EngineError> {
        self.checkpoint_job(ctx, id, job, state.output()?, version, cancel).await
    }

    /// Saves a bulk job: `output` (its state) and the status set in `job`. `None` when the
    /// job was cancelled meanwhile (here, or by a write of another node: its files are then
    /// removed) and the runner should stop.
    pub(crate) async fn checkpoint_job(
        &self,
        ctx: &RequestContext,
        id: &str,
        job: &mut Value,
        output: Value,
        version: i64,
        cancel: &AtomicBool,
    ) -> Result<Option<i64>, EngineError> {
        if cancel.load(Ordering::SeqCst) {
            return Ok(None);
        }
        job["output"] = output;
        match self.save_job(ctx, id, job.clone(), version).await {
            Ok(v) => Ok(Some(v)),
            Err(EngineError::PreconditionFailed(_)) => {
                let stored = self.read(ctx, "AsyncJob", id).await?;
                let current = job_body(&stored)?;
                if matches!(current["status"].as_str(), Some("completed" | "error" | "cancelled")) {
                    self.remove_export_files(&ctx.project, id).await;
                    return Ok(None);
                }
                // Someone else wrote the job but it still runs: write ours over it.
                let (status, output) = (job["status"].clone(), job["output"].take());
                *job = current;
                job["status"] = status;
                job["output"] = output;
                self.save_job(ctx, id, job.clone(), stored.version).await.map(Some)
            }
            Err(e) => Err(e),
        }
    }

    /// What kick-off left out (`Prefer: handling=lenient`), as an `error[]` file of
    /// OperationOutcomes; `None` when nothing was.
    pub(crate) async fn write_warnings(
        &self,
        project: &ProjectId,
        id: &str,
        warnings: &[String],
    ) -> Result<Option<ExportFile>, EngineError> {
        if warnings.is_empty() {
            return Ok(None);
        }
        let mut buf = Vec::new();
        for warning in warnings {
            let oo = kiln_model::operation_outcome_for_status(
                200,
                &[kiln_model::Issue::warning(kiln_model::IssueCode::NotSupported, warning)],
            );
            buf.extend_from_slice(&serde_json::to_vec(&oo).unwrap_or_default());
            buf.push(b'\n');
        }
        let key = format!("{}/warnings.ndjson", ExportState::folder(id));
        self.blobs.put(project, &key, &buf).await.map_err(blob_error)?;
        Ok(Some(ExportFile {
            ty: "OperationOutcome".into(),
            list: "error".into(),
            key,
            count: warnings.len() as u64,
            input: None,
        }))
    }

    /// Records a finished export for the sweeper.
    pub(crate) async fn add_to_sweep(&self, project: &ProjectId, id: &str, expires: &str) {
        let _guard = self.jobs.sweep_lock().await;
        let mut list = self.sweep_list().await;
        list.push(json!({"project": project.as_str(), "id": id, "expires": expires}));
        if let Err(e) = self.save_sweep_list(&list).await {
            tracing::warn!(job = id, error = %e, "could not record the export for clean-up");
        }
    }

    async fn sweep_list(&self) -> Vec<Value> {
        match self.store().get_setting(EXPORTS_SETTING).await {
            Ok(Some(raw)) => serde_json::from_slice(&raw).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    async fn save_sweep_list(&self, list: &[Value]) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(list)
            .map_err(|e| EngineError::Internal(format!("export list: {e}")))?;
        self.store().put_setting(EXPORTS_SETTING, &bytes).await?;
        Ok(())
    }

    /// Deletes the files of exports whose retention ended (and of exports deleted by their
    /// client); returns how many exports it cleared. `kiln serve` runs it hourly.
    pub async fn sweep_exports(&self) -> Result<usize, EngineError> {
        let _guard = self.jobs.sweep_lock().await;
        let now = format_instant(chrono::Utc::now());
        let list = self.sweep_list().await;
        let (expired, kept): (Vec<Value>, Vec<Value>) = list
            .into_iter()
            .partition(|e| e["expires"].as_str().is_some_and(|x| x <= now.as_str()));
        for entry in &expired {
            let (Some(project), Some(id)) = (entry["project"].as_str(), entry["id"].as_str())
            else {
                continue;
            };
            let project = ProjectId::new(project);
            self.remove_export_files(&project, id).await;
            let ctx = RequestContext::new(project.clone());
            if let Ok(stored) = self.read(&ctx, "AsyncJob", id).await
                && let Ok(mut job) = job_body(&stored)
                && let Some(mut state) = Bulk::from_job(&job)
                && !state.removed()
            {
                state.set_removed();
                if let Ok(output) = state.output() {
                    job["output"] = output;
                    let _ = self.save_job(&ctx, id, job, stored.version).await;
                }
            }
        }
        if !expired.is_empty() {
            self.save_sweep_list(&kept).await?;
        }
        Ok(expired.len())
    }

    /// The export settings in force.
    pub fn export_limits(&self) -> ExportLimits {
        self.jobs.export_limits()
    }

    /// What kind of job AsyncJob `job` is.
    pub(crate) fn job_kind(job: &Value) -> crate::jobs::JobKind {
        match Bulk::from_job(job) {
            Some(Bulk::Export(s)) => crate::jobs::JobKind::Export(s.caller.membership),
            Some(Bulk::Import(s)) => crate::jobs::JobKind::Import(s.caller.membership),
            Some(Bulk::Batch(s)) => crate::jobs::JobKind::Batch(s.caller.membership),
            None => crate::jobs::JobKind::Reindex,
        }
    }
}

/// The blob key of part `part` of unit `unit` (type `ty`) of export `id`.
fn part_key(id: &str, unit: usize, ty: &str, part: u32) -> String {
    format!("{}/{unit}-{ty}-{part}.ndjson", ExportState::folder(id))
}

/// The parameter by which a type outside the Patient compartment names its patient (`Device`'s
/// `patient`), if it has one.
fn linked_param(ty: &str) -> Option<&'static str> {
    if kiln_search::compartment_params("Patient", ty).is_some_and(|p| !p.is_empty()) {
        return None;
    }
    kiln_definitions::definitions()
        .search_params(ty)
        .find(|p| {
            p.code == "patient"
                && p.param_type == kiln_definitions::SearchParamType::Reference
                && p.target.iter().any(|t| t == "Patient")
        })
        .map(|_| "patient")
}

/// A `Linked` type's condition: its `patient` is one of `patients` (`None`: any patient).
fn linked_filter(
    registry: &kiln_search::Registry,
    ty: &str,
    patients: Option<&[String]>,
) -> Result<Filter, EngineError> {
    let param = linked_param(ty).unwrap_or("patient");
    let pair = match patients {
        None => (format!("{param}:missing"), "false".to_owned()),
        Some([]) => return Ok(Filter::Or(Vec::new())),
        Some(ids) => (
            param.to_owned(),
            ids.iter().map(|id| format!("Patient/{id}")).collect::<Vec<_>>().join(","),
        ),
    };
    let q = registry.parse(ty, &[pair]).map_err(EngineError::Invalid)?;
    Ok(Filter::And(q.filters))
}

/// The setting listing finished exports and when their files expire.
pub const EXPORTS_SETTING: &str = "kiln.exports";

pub(crate) fn kick_refuse(
    warnings: &mut Vec<String>,
    lenient: bool,
    message: String,
) -> Result<(), EngineError> {
    if lenient {
        warnings.push(message);
        Ok(())
    } else {
        Err(EngineError::invalid(message))
    }
}

pub(crate) fn blob_error(e: kiln_store::BlobError) -> EngineError {
    EngineError::Internal(format!("export file: {e}"))
}

/// How resources of `ty` are written: Medplum's server `meta` removed, and `_elements`
/// applied (`name` for every type, `Patient.name` for one).
fn shape_for(ty: &str, elements: Option<&[String]>) -> Shape {
    let elements = elements.map(|list| {
        list.iter()
            .filter_map(|e| match e.split_once('.') {
                Some((t, rest)) if t.starts_with(char::is_uppercase) => {
                    (t == ty).then(|| rest.to_owned())
                }
                _ => Some(e.clone()),
            })
            .collect::<Vec<_>>()
    });
    Shape { summary: None, elements: elements.filter(|e| !e.is_empty()), server_meta: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_filters_split_only_between_queries() {
        assert_eq!(
            split_type_filters("Observation?code=a,b&status=final,Condition?category=x"),
            vec!["Observation?code=a,b&status=final", "Condition?category=x"]
        );
        assert_eq!(split_type_filters(""), Vec::<String>::new());
    }

    #[test]
    fn references_are_found_by_a_byte_scan() {
        let mut wanted: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
        wanted.insert("Practitioner".into(), Some(BTreeSet::new()));
        let body = br#"{"performer":[{"reference":"Practitioner/p1"},{"reference":"http://x/fhir/R4/Practitioner/p2"},{"reference":"Organization/o"}],"subject":{"reference":"Patient/a"}}"#;
        scan_references(body, "http://x/fhir/R4", &mut wanted);
        let set = wanted["Practitioner"].as_ref().unwrap();
        assert_eq!(set.iter().map(String::as_str).collect::<Vec<_>>(), vec!["p1", "p2"]);
    }

    #[test]
    fn elements_apply_per_type() {
        let list = vec!["id".to_owned(), "Patient.name".to_owned(), "Observation.code".to_owned()];
        assert_eq!(shape_for("Patient", Some(&list)).elements.unwrap(), vec!["id", "name"]);
        assert_eq!(shape_for("Observation", Some(&list)).elements.unwrap(), vec!["id", "code"]);
        assert!(shape_for("Patient", None).elements.is_none());
    }

    #[test]
    fn instants_are_normalised() {
        assert_eq!(
            instant("_since", "2024-01-02T03:04:05+01:00").unwrap(),
            "2024-01-02T02:04:05.000Z"
        );
        assert_eq!(
            instant("_since", "2024-01-02T03:04:05 01:00").unwrap(),
            "2024-01-02T02:04:05.000Z"
        );
        assert!(instant("_since", "yesterday").is_err());
    }
}
