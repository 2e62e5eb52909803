//! Bulk `$import`: NDJSON files already on this server (Binary content, or the files of one
//! of the caller's own exports) loaded into the caller's project as a background job.
//!
//! Kiln never fetches a URL from elsewhere: an input URL must name `Binary/{id}` or
//! `job/{id}/file/{n}` under this server's FHIR base, and the caller must be allowed to read
//! it. Each line is one resource, validated and written as an update-or-create of its own id
//! (a line without an id gets `<job>-<input>-<line>`, so that a resumed job rewrites the same
//! resource rather than adding a second), under the caller's access, in batches of [`BATCH`]
//! lines that commit together but succeed or fail line by line (two batches are written at
//! once when they share no resource, [`WRITERS`]). A bad line never stops the
//! import: it becomes an `OperationOutcome` (its line number in each issue) in the job's error
//! files.
//!
//! The job's state (inputs, the byte offset and line reached, counts, error files) is saved in
//! its AsyncJob every few seconds (`ExportLimits::import_checkpoint`); a restarted job reopens
//! the input it was in at the saved offset and redoes the lines after it (each an overwrite of
//! the same id).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kiln_model::Issue;
use kiln_store::{
    Atomicity, Precondition, ProjectId, WriteMethod, WriteOp, format_instant, put_target,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::Semaphore;

use crate::accounts::Authenticated;
use crate::export::{
    Bulk, Caller, ExportFile, ExportProgress, ExportState, blob_error, kick_refuse, saved_state,
    state_output,
};
use crate::{Engine, EngineError, RequestContext};

/// Batches read and being validated while one is written.
const AHEAD: usize = 2;
/// Lines validated and written together, at most...
const BATCH: usize = 1000;
/// ... and at most about this many bytes of them (a batch of large resources, such as
/// Provenances listing hundreds of targets, would otherwise hold hundreds of MB parsed).
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// The longest line read; a longer one is an error of its own.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Input formats accepted (NDJSON).
const FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Batch writes running at once. On PostgreSQL each is a transaction on a connection of its
/// own, so the database works on one while Kiln plans and sends the other; on the embedded
/// store they queue for its one writer, which then need not wait for the next batch.
const WRITERS: usize = 2;

/// A batch's lines written, and the refused lines with why.
type Written = (u64, Vec<(u64, Vec<Issue>)>);

/// A batch being written: its result is its lines written and refused.
struct Writing {
    index: usize,
    batch: Batch,
    targets: Targets,
    handle: tokio::task::JoinHandle<Result<Written, EngineError>>,
}

/// What a batch writes, to tell whether it may be written beside another.
enum Targets {
    /// The `(type, id)` of each of its writes.
    Resources(HashSet<(String, String)>),
    /// One of its writes changes the rules later lines are judged or indexed by (an
    /// AccessPolicy, a profile, a SearchParameter...): it is written alone.
    Alone,
}

impl Targets {
    fn of(prepared: &Prepared) -> Targets {
        let Ok(lines) = prepared else {
            return Targets::Resources(HashSet::new());
        };
        let mut targets = HashSet::with_capacity(lines.len());
        for op in lines.iter().filter_map(|(_, op)| op.as_ref().ok()) {
            if crate::params::changes_write_rules(op) {
                return Targets::Alone;
            }
            let target = match op {
                // Every line has both (one without an id is given one); a write without
                // them fails on its own.
                WriteOp::Put { resource, .. } => put_target(resource).unwrap_or_default(),
                WriteOp::Delete { resource_type, id, .. }
                | WriteOp::Reindex { resource_type, id, .. } => (resource_type.clone(), id.clone()),
            };
            targets.insert(target);
        }
        Targets::Resources(targets)
    }

    /// Whether two batches may be written at once: they write different resources (lines
    /// of one resource must land in file order), and neither changes the rules.
    fn may_run_beside(&self, other: &Targets) -> bool {
        match (self, other) {
            (Targets::Resources(a), Targets::Resources(b)) => a.is_disjoint(b),
            _ => false,
        }
    }
}

/// Where an input's bytes are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Source {
    /// A blob of the project (a Binary's uploaded content, an export file).
    Blob { key: String },
    /// A Binary whose content is inline `data`.
    Binary { id: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImportInput {
    /// The resource type the input declares, if any (every line must be one).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    ty: Option<String>,
    url: String,
    source: Source,
    /// Lines written.
    #[serde(default)]
    ok: u64,
    /// Lines refused.
    #[serde(default)]
    errors: u64,
}

/// Everything an import job is and has done; saved in its AsyncJob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImportState {
    pub(crate) caller: Caller,
    request: String,
    transaction_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_source: Option<String>,
    inputs: Vec<ImportInput>,
    /// What kick-off ignored (`Prefer: handling=lenient`).
    #[serde(default)]
    warnings: Vec<String>,
    // Progress: the input, byte offset and line the next batch starts at.
    input: usize,
    offset: u64,
    line: u64,
    pub(crate) files: Vec<ExportFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires: Option<String>,
    #[serde(default)]
    pub(crate) removed: bool,
}

impl ImportState {
    pub(crate) fn from_job(job: &Value) -> Option<ImportState> {
        (crate::export::job_operation(job)? == "import").then(|| saved_state(job)).flatten()
    }

    pub(crate) fn output(&self) -> Result<Value, EngineError> {
        state_output("import", self)
    }
}

/// Refused lines not yet in an error file: their OperationOutcomes as NDJSON.
#[derive(Default)]
struct Refusals {
    bytes: Vec<u8>,
    count: u64,
}

/// An input being read.
type InputReader = BufReader<std::pin::Pin<Box<dyn AsyncRead + Send>>>;

/// The batches read ahead of the writer, each being validated on blocking threads, and where
/// reading goes on: it runs on into the next input while the last batches of one are written.
struct Feed {
    ahead: VecDeque<(usize, Batch, tokio::task::JoinHandle<Prepared>)>,
    /// The input being read: its index, reader and the number of its last line read.
    reading: Option<(usize, InputReader, u64)>,
    next_input: usize,
    /// Where a resumed job stopped: (input, byte offset, line).
    resume: (usize, u64, u64),
    buf: Vec<u8>,
    workers: Workers,
}

/// The blocking threads validation may use at once: every core but one, since the writer
/// needs a whole one and is what limits an import when it gets less.
#[derive(Clone)]
struct Workers {
    slots: Arc<Semaphore>,
    count: usize,
}

impl Feed {
    fn new(state: &ImportState) -> Feed {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Feed {
            ahead: VecDeque::with_capacity(AHEAD + 1),
            reading: None,
            next_input: state.input,
            resume: (state.input, state.offset, state.line),
            buf: Vec::new(),
            workers: {
                let count = cores.saturating_sub(1).clamp(1, 8);
                Workers { slots: Arc::new(Semaphore::new(count)), count }
            },
        }
    }

    /// Reads batches and starts their validation until [`AHEAD`] are waiting or the inputs end.
    async fn fill(
        &mut self,
        engine: &Engine,
        project: &ProjectId,
        ctx: &RequestContext,
        job: &str,
        inputs: &[ImportInput],
    ) -> Result<(), EngineError> {
        while self.ahead.len() < AHEAD {
            let (index, reader, next_line) = match &mut self.reading {
                Some(r) => r,
                None if self.next_input < inputs.len() => {
                    let index = self.next_input;
                    let (input, offset, line) = self.resume;
                    let (offset, line) = if index == input { (offset, line) } else { (0, 0) };
                    let reader = engine.open_input(project, ctx, &inputs[index], offset).await?;
                    self.next_input += 1;
                    self.reading.insert((index, reader, line))
                }
                None => return Ok(()),
            };
            let index = *index;
            let mut batch = read_batch(reader, &mut self.buf, next_line).await?;
            if batch.at_end {
                self.reading = None;
            }
            let lines = std::mem::take(&mut batch.lines);
            let handle =
                engine.prepare_lines(ctx, job, (index, &inputs[index]), lines, &self.workers);
            self.ahead.push_back((index, batch, handle));
        }
        Ok(())
    }
}

/// One line, read: its number and bytes, or why it could not be read.
struct Line {
    number: u64,
    bytes: Result<Vec<u8>, String>,
}

/// A batch of lines read from an input: the bytes it took, the number of its last line, and
/// whether the input ended with it.
struct Batch {
    lines: Vec<Line>,
    consumed: u64,
    last_line: u64,
    at_end: bool,
}

/// A batch validated: each line's number and its write, or why it has none.
type Prepared = Result<Vec<(u64, Result<WriteOp, Vec<Issue>>)>, EngineError>;

/// Reads up to [`BATCH`] lines or [`BATCH_BYTES`]; `next_line` is the number of the last line
/// read before.
async fn read_batch<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    next_line: &mut u64,
) -> Result<Batch, EngineError> {
    let mut batch =
        Batch { lines: Vec::with_capacity(BATCH), consumed: 0, last_line: 0, at_end: false };
    while batch.lines.len() < BATCH && batch.consumed < BATCH_BYTES {
        let (n, overflow) = read_line(reader, buf, MAX_LINE)
            .await
            .map_err(|e| EngineError::Internal(format!("import input: {e}")))?;
        if n == 0 {
            batch.at_end = true;
            break;
        }
        batch.consumed += n;
        *next_line += 1;
        if overflow {
            batch.lines.push(Line {
                number: *next_line,
                bytes: Err(format!("the line is longer than {MAX_LINE} bytes")),
            });
        } else if !buf.iter().all(u8::is_ascii_whitespace) {
            batch.lines.push(Line { number: *next_line, bytes: Ok(std::mem::take(buf)) });
        }
    }
    batch.last_line = *next_line;
    Ok(batch)
}

/// Reads the next line (without its `\n`) into `buf`, at most `cap` bytes kept; returns the
/// bytes consumed (0 at the end) and whether the line was longer than `cap`.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<(u64, bool)> {
    buf.clear();
    let mut consumed = 0u64;
    let mut overflow = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok((consumed, overflow));
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (chunk.len(), false),
        };
        let content = if done { &chunk[..take - 1] } else { &chunk[..take] };
        if overflow || buf.len() + content.len() > cap {
            overflow = true;
            buf.clear();
        } else {
            buf.extend_from_slice(content);
        }
        reader.consume(take);
        consumed += take as u64;
        if done {
            return Ok((consumed, overflow));
        }
    }
}

/// A line's problem as the OperationOutcome written to the error file.
fn line_outcome(url: &str, number: u64, mut issues: Vec<Issue>) -> Vec<u8> {
    for issue in &mut issues {
        issue.diagnostics = format!("{url} line {number}: {}", issue.diagnostics);
    }
    let oo = kiln_model::operation_outcome_for_status(400, &issues);
    let mut bytes = serde_json::to_vec(&oo).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The profiles the lines claim (`meta.profile`, and those of the resources they contain or,
/// for a Bundle, hold in entries), read without building the resources; a line that does not
/// parse claims nothing here.
fn claimed_in_lines(lines: &[Line]) -> Vec<String> {
    #[derive(Deserialize, Default)]
    struct Claims {
        #[serde(default)]
        meta: Option<ClaimsMeta>,
        #[serde(default)]
        contained: Vec<Claims>,
        #[serde(default)]
        entry: Vec<EntryClaims>,
    }
    #[derive(Deserialize, Default)]
    struct EntryClaims {
        #[serde(default)]
        resource: Option<Claims>,
    }
    #[derive(Deserialize, Default)]
    struct ClaimsMeta {
        #[serde(default)]
        profile: Vec<String>,
    }
    fn collect(claims: &Claims, urls: &mut Vec<String>) {
        for url in claims.meta.iter().flat_map(|m| &m.profile) {
            urls.push(url.split('|').next().unwrap_or(url).to_string());
        }
        let entries = claims.entry.iter().filter_map(|e| e.resource.as_ref());
        for nested in claims.contained.iter().chain(entries) {
            collect(nested, urls);
        }
    }
    let mut urls: Vec<String> = Vec::new();
    for line in lines {
        let Ok(bytes) = &line.bytes else { continue };
        // serde_json stops at its recursion limit (128), so a hostile line cannot overflow.
        let Ok(claims) = serde_json::from_slice::<Claims>(bytes) else { continue };
        collect(&claims, &mut urls);
    }
    urls.sort_unstable();
    urls.dedup();
    urls
}

fn invalid(message: String) -> Vec<Issue> {
    vec![Issue::error(kiln_model::IssueCode::Invalid, message)]
}

impl Engine {
    /// Kick-off for `POST [base]/$import`: checks the Parameters and the inputs, records the
    /// job and starts it. Returns the job's id.
    pub async fn start_import(
        &self,
        who: &Authenticated,
        body: Option<&Value>,
        lenient: bool,
        request_url: &str,
    ) -> Result<String, EngineError> {
        let Some(membership) = who.membership.clone() else {
            return Err(EngineError::Forbidden("$import needs a project membership".into()));
        };
        let ctx = who.context();
        ctx.access.usable()?;
        let Some(body) = body.filter(|b| b["resourceType"] == "Parameters") else {
            return Err(EngineError::invalid(
                "$import takes a Parameters body with inputFormat and input (type, url)",
            ));
        };
        let mut warnings = Vec::new();
        let mut inputs = Vec::new();
        let mut input_source = None;
        let text = |p: &Value| -> Option<String> {
            ["valueCode", "valueString", "valueUri", "valueUrl"]
                .iter()
                .find_map(|k| p[*k].as_str())
                .map(str::to_owned)
        };
        for p in body["parameter"].as_array().into_iter().flatten() {
            match p["name"].as_str().unwrap_or_default() {
                "inputFormat" => {
                    let format = text(p).unwrap_or_default();
                    if !FORMATS.contains(&format.as_str()) {
                        return Err(EngineError::invalid(format!(
                            "inputFormat '{format}' is not supported: use application/fhir+ndjson"
                        )));
                    }
                }
                "inputSource" => input_source = text(p),
                "storageDetail" => {
                    let kind = p["part"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|q| q["name"] == "type")
                        .and_then(text);
                    if kind.as_deref().is_some_and(|k| k != "https") {
                        kick_refuse(
                            &mut warnings,
                            lenient,
                            format!(
                                "storageDetail type '{}' is not supported (inputs are this server's own URLs)",
                                kind.unwrap_or_default()
                            ),
                        )?;
                    }
                }
                "mode" => {}
                "input" => {
                    let parts = p["part"].as_array().cloned().unwrap_or_default();
                    let part = |name: &str| parts.iter().find(|q| q["name"] == name).and_then(text);
                    let Some(url) = part("url") else {
                        return Err(EngineError::invalid("An $import input has no url"));
                    };
                    let ty = part("type");
                    if let Some(t) = &ty
                        && !kiln_definitions::definitions().is_resource_type(t)
                    {
                        return Err(EngineError::invalid(format!(
                            "$import input type '{t}' is not a resource type"
                        )));
                    }
                    let source = self.import_source(who, &ctx, &url).await?;
                    inputs.push(ImportInput { ty, url, source, ok: 0, errors: 0 });
                }
                other => kick_refuse(
                    &mut warnings,
                    lenient,
                    format!("$import has no parameter '{other}'"),
                )?,
            }
        }
        if inputs.is_empty() {
            return Err(EngineError::invalid("$import needs at least one input"));
        }
        if let Some(busy) = self.bulk_slots_full(&who.project, &membership).await? {
            return Err(busy);
        }
        let transaction_time = format_instant(chrono::Utc::now());
        let state = ImportState {
            caller: Caller::of(who, membership.clone()),
            request: request_url.to_owned(),
            transaction_time: transaction_time.clone(),
            input_source,
            inputs,
            warnings,
            input: 0,
            offset: 0,
            line: 0,
            files: Vec::new(),
            expires: None,
            removed: false,
        };
        let id = crate::rest::new_id();
        let kind = crate::jobs::JobKind::Import(membership);
        self.create_job(&ctx.project, &id, state.output()?, request_url, kind).await?;
        Ok(id)
    }

    /// Where an input URL's bytes are, if the caller may read them.
    async fn import_source(
        &self,
        who: &Authenticated,
        ctx: &RequestContext,
        url: &str,
    ) -> Result<Source, EngineError> {
        let base = self.base_url().fhir_base();
        let path = url.strip_prefix(&base).map(|p| p.trim_start_matches('/')).unwrap_or(url);
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["Binary", id] => {
                let stored = self.read(ctx, "Binary", id).await?;
                let binary: Value = serde_json::from_slice(&stored.body)
                    .map_err(|e| EngineError::Internal(format!("stored Binary: {e}")))?;
                Ok(if binary["data"].is_string() {
                    Source::Binary { id: (*id).to_owned() }
                } else {
                    Source::Blob { key: (*id).to_owned() }
                })
            }
            ["job", job, "file", n] => {
                let missing = || EngineError::invalid(format!("$import input {url}: no such file"));
                let Some((_, body, bulk)) = self.own_bulk(who, job).await? else {
                    return Err(missing());
                };
                let Bulk::Export(state) = bulk else { return Err(missing()) };
                if body["status"] != "completed" || state.removed {
                    return Err(missing());
                }
                let file = n.parse::<usize>().ok().and_then(|n| state.files.get(n).cloned());
                let file = file.ok_or_else(missing)?;
                Ok(Source::Blob { key: file.key })
            }
            _ => Err(EngineError::invalid(format!(
                "$import input {url}: Kiln imports from its own storage only \
                 ({base}/Binary/[id], or {base}/job/[id]/file/[n] of your export)"
            ))),
        }
    }

    /// 429 when the membership has as many unfinished bulk jobs as it may. On a store
    /// several nodes share, its jobs are counted in the shared job queue (whichever node runs
    /// them); on the embedded store, among this node's running jobs.
    pub(crate) async fn bulk_slots_full(
        &self,
        project: &ProjectId,
        membership: &str,
    ) -> Result<Option<EngineError>, EngineError> {
        let limit = self.export_limits().per_client;
        let busy = if self.store().is_shared() {
            self.queued_bulk_jobs_of(project, membership, limit).await?
        } else {
            self.jobs.exports_of(membership)
        };
        Ok((busy >= limit).then(|| EngineError::TooManyRequests {
            message: format!(
                "This client already has {busy} bulk jobs running (at most {limit}); retry when one finishes"
            ),
            retry_after: 30,
        }))
    }

    /// Unfinished bulk jobs of `membership` in the shared job queue (not those cancelled and
    /// winding down), counted up to `enough`.
    async fn queued_bulk_jobs_of(
        &self,
        project: &ProjectId,
        membership: &str,
        enough: usize,
    ) -> Result<usize, EngineError> {
        let internal = RequestContext::new(project.clone());
        let mut busy = 0;
        for queued in self.store().queued_jobs().await? {
            if queued.project != *project {
                continue;
            }
            let stored = match self.read(&internal, "AsyncJob", &queued.id).await {
                Ok(stored) => stored,
                Err(EngineError::NotFound(_) | EngineError::Gone(_)) => continue,
                Err(e) => return Err(e),
            };
            let job: Value = serde_json::from_slice(&stored.body)
                .map_err(|e| EngineError::Internal(format!("stored AsyncJob: {e}")))?;
            let unfinished = matches!(job["status"].as_str(), Some("accepted" | "active"));
            if unfinished
                && crate::export::Bulk::from_job(&job)
                    .is_some_and(|bulk| bulk.caller().membership == membership)
            {
                busy += 1;
                if busy >= enough {
                    break;
                }
            }
        }
        Ok(busy)
    }

    pub(crate) fn import_progress(&self, id: &str, status: &str, state: &ImportState) -> String {
        let (ok, input) = match self.jobs.export_progress(id) {
            Some(p) => {
                (p.written.load(Ordering::Relaxed), p.units_done.load(Ordering::Relaxed) as usize)
            }
            None => (state.inputs.iter().map(|i| i.ok).sum(), state.input),
        };
        format!("{status}: {input} of {} inputs done, {ok} resources written", state.inputs.len())
    }

    pub(crate) fn import_manifest(
        &self,
        urls: &crate::export::FileUrls,
        state: &ImportState,
    ) -> Value {
        let output: Vec<Value> = state
            .inputs
            .iter()
            .map(|i| {
                let mut entry = json!({"inputUrl": i.url, "count": i.ok});
                if let Some(t) = &i.ty {
                    entry["type"] = json!(t);
                }
                entry
            })
            .collect();
        let error: Vec<Value> = state
            .files
            .iter()
            .enumerate()
            .map(|(n, f)| {
                json!({"type": f.ty, "inputUrl": f.input, "count": f.count, "url": urls.url(n)})
            })
            .collect();
        json!({
            "transactionTime": state.transaction_time,
            "request": state.request,
                        "requiresAccessToken": urls.requires_token(),
            "output": output,
            "error": error,
        })
    }

    /// Runs import job `id` to its end.
    pub(crate) async fn run_import(
        &self,
        project: &ProjectId,
        id: &str,
        cancel: &AtomicBool,
        progress: &ExportProgress,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let jobctx = RequestContext::new(project.clone());
        let Some((mut version, mut job, mut state)) =
            self.activate_job::<ImportState>(&jobctx, id, "import").await?
        else {
            return Ok(());
        };
        let ctx = self.caller_context(project, &state.caller).await?;
        progress.written.store(state.inputs.iter().map(|i| i.ok).sum(), Ordering::Relaxed);
        let mut errors = Refusals::default();
        let mut feed = Feed::new(&state);
        let mut saved = Instant::now();
        let save_every = self.export_limits().import_checkpoint;
        // Batches being written, oldest first; their results are taken in this order, so the
        // saved position only ever covers batches whose lines are all written.
        let mut writing: VecDeque<Writing> = VecDeque::with_capacity(WRITERS);
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Ok(());
            }
            if feed.ahead.is_empty() {
                feed.fill(self, project, &ctx, id, &state.inputs).await?;
            }
            let next = match feed.ahead.pop_front() {
                Some((index, batch, handle)) => {
                    progress.units_done.store(index as u64, Ordering::Relaxed);
                    let prepared = handle
                        .await
                        .map_err(|e| EngineError::Internal(format!("import worker: {e}")))?;
                    let targets = Targets::of(&prepared);
                    Some((index, batch, prepared, targets))
                }
                None => None,
            };
            // Take finished writes while the next batch may not start: WRITERS are running,
            // or it shares a resource with one of them (lines are applied in file order), or
            // either changes the rules later lines are judged by, or there is nothing left.
            while let Some(first) = writing.front() {
                let room = match &next {
                    Some((_, _, _, targets)) => {
                        writing.len() < WRITERS
                            && writing.iter().all(|w| w.targets.may_run_beside(targets))
                    }
                    None => false,
                };
                if room && !first.handle.is_finished() {
                    break;
                }
                let Some(done) = writing.pop_front() else { break };
                let written = done
                    .handle
                    .await
                    .map_err(|e| EngineError::Internal(format!("import writer: {e}")))?;
                let (ok, refused) = written?;
                let (index, batch) = (done.index, done.batch);
                let url = state.inputs[index].url.clone();
                state.inputs[index].ok += ok;
                state.inputs[index].errors += refused.len() as u64;
                progress.written.fetch_add(ok, Ordering::Relaxed);
                for (number, issues) in refused {
                    errors.bytes.extend_from_slice(&line_outcome(&url, number, issues));
                    errors.count += 1;
                }
                state.offset += batch.consumed;
                state.line = batch.last_line;
                if batch.at_end {
                    state.input = index + 1;
                    state.offset = 0;
                    state.line = 0;
                    // Each input's refusals go to files of their own.
                    self.flush_refusals(project, id, &mut state, &mut errors, &url).await?;
                }
                // Saved every few seconds (and at the end, by `complete_job`), not after each
                // input: an import of many small files would otherwise spend its time saving.
                // A restart redoes what was written since (the same ids, overwritten), and
                // writes refusals not yet listed to the same error file names again.
                if saved.elapsed() >= save_every {
                    self.flush_refusals(project, id, &mut state, &mut errors, &url).await?;
                    version = match self
                        .checkpoint_import(&jobctx, id, &mut job, &state, version, cancel)
                        .await?
                    {
                        Some(v) => v,
                        None => return Ok(()),
                    };
                    saved = Instant::now();
                }
            }
            let Some((index, batch, prepared, targets)) = next else {
                break;
            };
            let (engine, wctx) = (self.clone(), ctx.clone());
            let handle = tokio::spawn(async move { engine.write_prepared(&wctx, prepared).await });
            writing.push_back(Writing { index, batch, targets, handle });
            // The next batches are read and handed to validation while these are written.
            feed.fill(self, project, &ctx, id, &state.inputs).await?;
        }
        if cancel.load(Ordering::SeqCst) {
            return Ok(());
        }
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
            resources = state.inputs.iter().map(|i| i.ok).sum::<u64>(),
            refused = state.inputs.iter().map(|i| i.errors).sum::<u64>(),
            seconds = started.elapsed().as_secs_f64(),
            "import completed"
        );
        Ok(())
    }

    /// Writes the refusals collected so far (of input `url`) to an error file of the job.
    async fn flush_refusals(
        &self,
        project: &ProjectId,
        id: &str,
        state: &mut ImportState,
        errors: &mut Refusals,
        url: &str,
    ) -> Result<(), EngineError> {
        if errors.count == 0 {
            return Ok(());
        }
        let n = state.files.len();
        let key = format!("{}/errors-{n}.ndjson", ExportState::folder(id));
        self.blobs.put(project, &key, &errors.bytes).await.map_err(blob_error)?;
        state.files.push(ExportFile {
            ty: "OperationOutcome".into(),
            list: "error".into(),
            key,
            count: errors.count,
            input: Some(url.to_owned()),
        });
        *errors = Refusals::default();
        Ok(())
    }

    /// Opens an input's bytes, `offset` bytes in.
    async fn open_input(
        &self,
        project: &ProjectId,
        ctx: &RequestContext,
        input: &ImportInput,
        offset: u64,
    ) -> Result<InputReader, EngineError> {
        let reader: std::pin::Pin<Box<dyn AsyncRead + Send>> = match &input.source {
            Source::Blob { key } => match self.blobs.open(project, key).await {
                Ok(blob) => blob.reader,
                Err(kiln_store::BlobError::NotFound) => {
                    return Err(EngineError::invalid(format!(
                        "$import input {} is no longer there",
                        input.url
                    )));
                }
                Err(e) => return Err(blob_error(e)),
            },
            Source::Binary { id: binary } => {
                let content = self.binary_content(ctx, binary).await?;
                Box::pin(std::io::Cursor::new(content.bytes))
            }
        };
        let mut reader = BufReader::with_capacity(256 * 1024, reader);
        if offset > 0 {
            let skipped = tokio::io::copy(&mut (&mut reader).take(offset), &mut tokio::io::sink())
                .await
                .map_err(|e| EngineError::Internal(format!("import input: {e}")))?;
            if skipped < offset {
                return Err(EngineError::Internal(format!(
                    "import input {} is shorter than the saved position",
                    input.url
                )));
            }
        }
        Ok(reader)
    }

    /// Parses, validates and indexes `lines` on blocking threads (the batch split between
    /// the cores): each line's write, or why it has none.
    fn prepare_lines(
        &self,
        ctx: &RequestContext,
        job: &str,
        (input_index, input): (usize, &ImportInput),
        lines: Vec<Line>,
        workers: &Workers,
    ) -> tokio::task::JoinHandle<Prepared> {
        let engine = self.clone();
        let ctx = ctx.clone();
        let expected = input.ty.clone();
        let job = job.to_owned();
        let workers = workers.clone();
        tokio::spawn(async move {
            if lines.is_empty() {
                return Ok(Vec::new());
            }
            let registry = engine.registry(&ctx.project).await?;
            // In a project with `strictProfiles`, lines must conform to the profiles they
            // claim: those named in the batch are found once for it.
            let profiles = if engine.strict_profiles(&ctx.project).await? {
                let urls = claimed_in_lines(&lines);
                Some(engine.profiles_for_urls(&ctx, urls.iter().map(String::as_str)).await?)
            } else {
                None
            };
            // One part per worker, each validated on a blocking thread once a slot is free.
            let chunk = lines.len().div_ceil(workers.count);
            let mut lines = lines;
            let mut handles = Vec::new();
            while !lines.is_empty() {
                let rest = lines.split_off(chunk.min(lines.len()));
                let part = std::mem::replace(&mut lines, rest);
                let (engine, ctx, registry) = (engine.clone(), ctx.clone(), registry.clone());
                let profiles = profiles.clone();
                let (expected, job) = (expected.clone(), job.clone());
                let permit = workers
                    .slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| EngineError::Internal(format!("import workers: {e}")))?;
                handles.push(tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    part.into_iter()
                        .map(|line| {
                            let number = line.number;
                            let op = line.bytes.map_err(invalid).and_then(|bytes| {
                                engine.import_line(
                                    &ctx,
                                    &registry,
                                    profiles.as_deref(),
                                    expected.as_deref(),
                                    || format!("{job}-{input_index}-{number}"),
                                    &bytes,
                                )
                            });
                            (number, op)
                        })
                        .collect::<Vec<_>>()
                }));
            }
            let mut out = Vec::new();
            for handle in handles {
                out.extend(
                    handle
                        .await
                        .map_err(|e| EngineError::Internal(format!("import worker: {e}")))?,
                );
            }
            Ok(out)
        })
    }

    /// Writes a prepared batch in one commit (each line on its own); returns how many were
    /// written and the refused lines with their issues, in line order.
    async fn write_prepared(
        &self,
        ctx: &RequestContext,
        prepared: Prepared,
    ) -> Result<Written, EngineError> {
        let mut refused = Vec::new();
        let mut numbers = Vec::new();
        let mut ops = Vec::new();
        for (number, op) in prepared? {
            match op {
                Ok(op) => {
                    numbers.push(number);
                    ops.push(op);
                }
                Err(issues) => refused.push((number, issues)),
            }
        }
        let mut ok = 0;
        if !ops.is_empty() {
            let registry = self.registry(&ctx.project).await?;
            let results = self.write_ops(ctx, ops, Atomicity::Each, &registry).await?;
            for (number, result) in numbers.into_iter().zip(results) {
                match result {
                    Ok(_) => ok += 1,
                    Err(e) => refused.push((number, EngineError::from(e).issues())),
                }
            }
        }
        refused.sort_by_key(|(n, _)| *n);
        Ok((ok, refused))
    }

    /// One NDJSON line as a write, or why it cannot be written.
    fn import_line(
        &self,
        ctx: &RequestContext,
        registry: &kiln_search::Registry,
        profiles: Option<&kiln_validate::Profiles>,
        expected: Option<&str>,
        fallback_id: impl FnOnce() -> String,
        bytes: &[u8],
    ) -> Result<WriteOp, Vec<Issue>> {
        let resource: Value = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not a JSON resource: {e}")))?;
        let Some(ty) = resource["resourceType"].as_str().map(str::to_owned) else {
            return Err(invalid("no resourceType".into()));
        };
        if !kiln_definitions::definitions().is_resource_type(&ty) {
            return Err(invalid(format!("'{ty}' is not a resource type")));
        }
        if let Some(expected) = expected
            && expected != ty
        {
            return Err(invalid(format!("a {ty} in an input of {expected}")));
        }
        if matches!(ty.as_str(), "AsyncJob" | "Login" | "Project" | "ProjectMembership" | "User") {
            return Err(invalid(format!("{ty} resources are not imported")));
        }
        let id = match resource.get("id") {
            None => fallback_id(),
            Some(Value::String(id)) if kiln_model::is_valid_id(id) => id.clone(),
            Some(other) => return Err(invalid(format!("{other} is not a valid id"))),
        };
        let resource = self.prepare(ctx, &ty, &id, resource).map_err(|e| e.issues())?;
        if let Some(profiles) = profiles {
            let errors = crate::operations::claimed_profile_errors(profiles, &resource);
            if !errors.is_empty() {
                return Err(errors);
            }
        }
        Ok(crate::rest::put_op(resource, WriteMethod::Put, Precondition::None, vec![], registry))
    }

    /// Saves the import's state; see [`Engine::checkpoint_job`].
    async fn checkpoint_import(
        &self,
        ctx: &RequestContext,
        id: &str,
        job: &mut Value,
        state: &ImportState,
        version: i64,
        cancel: &AtomicBool,
    ) -> Result<Option<i64>, EngineError> {
        self.checkpoint_job(ctx, id, job, state.output()?, version, cancel).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_with_a_cap() {
        let data = b"one\n\ntoo-long-line\nlast".to_vec();
        let mut reader = BufReader::with_capacity(4, std::io::Cursor::new(data));
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            let (n, overflow) = read_line(&mut reader, &mut buf, 8).await.unwrap();
            if n == 0 {
                break;
            }
            got.push((n, overflow, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            got,
            vec![
                (4, false, "one".into()),
                (1, false, String::new()),
                (14, true, String::new()),
                (4, false, "last".into()),
            ]
        );
    }

    fn batch(resources: &[Value]) -> Prepared {
        Ok(resources
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let op = WriteOp::Put {
                    resource: r.clone(),
                    method: WriteMethod::Put,
                    precondition: Precondition::None,
                    unique_keys: vec![],
                    index: vec![],
                };
                (i as u64 + 1, Ok(op))
            })
            .collect())
    }

    #[test]
    fn batches_run_side_by_side_only_when_they_write_different_resources() {
        let patient = |id: &str| json!({"resourceType": "Patient", "id": id});
        let a = Targets::of(&batch(&[patient("1"), patient("2")]));
        let b = Targets::of(&batch(&[patient("3"), json!({"resourceType": "Group", "id": "2"})]));
        let c = Targets::of(&batch(&[patient("4"), patient("2")]));
        assert!(a.may_run_beside(&b) && b.may_run_beside(&a));
        assert!(!a.may_run_beside(&c) && !c.may_run_beside(&a), "both write Patient/2");
        // Refused lines write nothing; a batch that failed as a whole writes nothing either.
        let mut refused = batch(&[patient("2")]).unwrap();
        refused[0].1 = Err(vec![]);
        assert!(a.may_run_beside(&Targets::of(&Ok(refused))));
        let failed = Targets::of(&Err(EngineError::Internal("x".into())));
        assert!(a.may_run_beside(&failed));
        // A batch that changes the rules later lines follow runs alone.
        for rules in ["SearchParameter", "AccessPolicy", "StructureDefinition", "ValueSet"] {
            let alone =
                Targets::of(&batch(&[patient("9"), json!({"resourceType": rules, "id": "r"})]));
            assert!(!alone.may_run_beside(&b) && !b.may_run_beside(&alone), "{rules}");
        }
    }
}
