//! The bulk scenarios, each one job run once by one client:
//!
//! - `export`: a system-level `$export` of everything (no `_type`), timed from the kick-off to
//!   the 200 manifest. Its files are then downloaded one after the other, streamed and their
//!   lines counted (a second row, `export-download`), and the export is checked: each file has
//!   the lines its manifest entry counts, and each type holds as many resources as the
//!   server's `Type?_summary=count` says.
//! - `import`: the export's files `$import`ed back into the same project (each line overwrites
//!   its own id with a new version), timed from the kick-off to the manifest, whose counts must
//!   be the files' and whose `error` must be empty; the server's counts must not change.
//!
//! Both rows carry the server's resident memory before, at its peak during and after the job
//! (`VmHWM` reset at the kick-off), so that runs on data of different sizes show whether it
//! stays flat. Status URLs are polled more often than the server's `Retry-After` asks
//! ([`poll_interval`]), so that the measured time is within 2 % (or 10 ms) of the job's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{RequestBuilder, StatusCode, header};
use serde_json::{Value, json};

use crate::load::{self, ClientStats, RunResult, Scenario, Target};
use crate::report::thousands;
use crate::search;
use crate::sys::{self, CpuSample, MemoryUse, MemoryWatch, Pids};

/// The shortest and longest wait between two polls of a status URL.
const POLL_MIN: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(500);
/// A job not finished by then is an error.
const JOB_LIMIT: Duration = Duration::from_secs(4 * 3600);
/// The server's own bookkeeping, which it never exports.
const NOT_EXPORTED: [&str; 3] = ["AsyncJob", "Login", "BulkDataExport"];
/// Types whose lines `$import` refuses (the server's accounts): their files are left out.
const NOT_IMPORTED: [&str; 5] = ["AsyncJob", "Login", "Project", "ProjectMembership", "User"];
/// The longest first line of a file kept to check its `resourceType`.
const FIRST_LINE_CAP: usize = 1 << 20;

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub ty: String,
    pub url: String,
    pub count: u64,
}

/// An export's manifest (the 200 answer of its status URL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportManifest {
    pub transaction_time: String,
    pub output: Vec<ManifestFile>,
    pub deleted: Vec<ManifestFile>,
    pub error: Vec<ManifestFile>,
}

impl ExportManifest {
    /// Resources in the `output` files.
    pub fn total(&self) -> u64 {
        self.output.iter().map(|f| f.count).sum()
    }

    /// Resources in the `output` files, by type.
    pub fn by_type(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for file in &self.output {
            *out.entry(file.ty.clone()).or_insert(0) += file.count;
        }
        out
    }
}

/// Reads an export manifest: `transactionTime`, and `output`, `deleted` and `error` entries
/// each with `type`, `url` and `count`.
pub fn parse_export_manifest(body: &[u8]) -> Result<ExportManifest, String> {
    let manifest = manifest_json(body)?;
    let transaction_time = manifest["transactionTime"]
        .as_str()
        .ok_or_else(|| format!("the manifest has no transactionTime: {manifest}"))?
        .to_owned();
    let files = |list: &str| -> Result<Vec<ManifestFile>, String> {
        entries(&manifest, list)?
            .iter()
            .map(|e| match (e["type"].as_str(), e["url"].as_str(), e["count"].as_u64()) {
                (Some(ty), Some(url), Some(count)) => {
                    Ok(ManifestFile { ty: ty.to_owned(), url: url.to_owned(), count })
                }
                _ => Err(format!("a manifest {list} entry without type, url or count: {e}")),
            })
            .collect()
    };
    Ok(ExportManifest {
        transaction_time,
        output: files("output")?,
        deleted: files("deleted")?,
        error: files("error")?,
    })
}

/// What an import's manifest says of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutput {
    pub input_url: String,
    pub count: u64,
}

/// An import's manifest: resources written per input, and the error files (left as JSON).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportManifest {
    pub output: Vec<ImportOutput>,
    pub error: Vec<Value>,
}

pub fn parse_import_manifest(body: &[u8]) -> Result<ImportManifest, String> {
    let manifest = manifest_json(body)?;
    let output = manifest["output"]
        .as_array()
        .ok_or_else(|| format!("the import manifest has no output: {manifest}"))?
        .iter()
        .map(|e| match (e["inputUrl"].as_str(), e["count"].as_u64()) {
            (Some(url), Some(count)) => Ok(ImportOutput { input_url: url.to_owned(), count }),
            _ => Err(format!("an import manifest output without inputUrl or count: {e}")),
        })
        .collect::<Result<_, String>>()?;
    let error = entries(&manifest, "error")?.to_vec();
    Ok(ImportManifest { output, error })
}

fn manifest_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("the manifest is not JSON: {e}"))
}

/// The entries of a manifest's list `name` (none when it is absent).
fn entries<'m>(manifest: &'m Value, name: &str) -> Result<&'m [Value], String> {
    match &manifest[name] {
        Value::Null => Ok(&[]),
        Value::Array(entries) => Ok(entries),
        other => Err(format!("the manifest's {name} is {other}")),
    }
}

/// The `$import` Parameters reading `files` (each with its type).
pub fn import_parameters(files: &[&ManifestFile]) -> Value {
    let mut parameter =
        vec![json!({"name": "inputFormat", "valueCode": "application/fhir+ndjson"})];
    parameter.extend(files.iter().map(|f| {
        json!({"name": "input", "part": [
            {"name": "type", "valueCode": f.ty},
            {"name": "url", "valueUri": f.url},
        ]})
    }));
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// The resource types a CapabilityStatement lists (`rest[].resource[].type`).
pub fn capability_types(statement: &Value) -> Vec<String> {
    let mut types: Vec<String> = statement["rest"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rest| rest["resource"].as_array().into_iter().flatten())
        .filter_map(|r| r["type"].as_str().map(str::to_owned))
        .collect();
    types.sort();
    types.dedup();
    types
}

/// Where an export and the server's counts disagree: an exported type whose count is not the
/// server's, the server's bookkeeping in the export, or a type the server holds that the
/// export left out (other than its bookkeeping).
pub fn compare_counts(
    exported: &BTreeMap<String, u64>,
    server: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (ty, &n) in exported {
        if NOT_EXPORTED.contains(&ty.as_str()) {
            problems.push(format!("the export holds {n} {ty}, which the server keeps for itself"));
            continue;
        }
        let held = server.get(ty).copied().unwrap_or(0);
        if held != n {
            problems.push(format!("exported {n} {ty}, but {ty}?_summary=count says {held}"));
        }
    }
    for (ty, &held) in server {
        if held > 0 && !exported.contains_key(ty) && !NOT_EXPORTED.contains(&ty.as_str()) {
            problems.push(format!("the server holds {held} {ty}, none of them exported"));
        }
    }
    problems
}

/// `Type n, Type n` for the non-zero counts of `counts`.
fn list_counts<'a>(counts: impl IntoIterator<Item = (&'a String, u64)>) -> String {
    let parts: Vec<String> = counts
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(ty, n)| format!("{ty} {}", thousands(n as f64)))
        .collect();
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}

/// Counts the lines of a file streamed in chunks, keeping only its first line.
#[derive(Debug, Default)]
pub struct LineCounter {
    newlines: u64,
    bytes: u64,
    /// The last byte seen is not a newline (a last line without one still counts).
    open: bool,
    first: Vec<u8>,
    first_done: bool,
    first_too_long: bool,
}

impl LineCounter {
    pub fn feed(&mut self, chunk: &[u8]) {
        let Some(&last) = chunk.last() else { return };
        self.bytes += chunk.len() as u64;
        self.newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        self.open = last != b'\n';
        if !self.first_done {
            let end = chunk.iter().position(|&b| b == b'\n');
            let piece = &chunk[..end.unwrap_or(chunk.len())];
            if self.first.len() + piece.len() > FIRST_LINE_CAP {
                self.first_too_long = true;
                self.first = Vec::new();
                self.first_done = true;
            } else {
                self.first.extend_from_slice(piece);
                self.first_done = end.is_some();
            }
        }
    }

    pub fn lines(&self) -> u64 {
        self.newlines + u64::from(self.open)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The first line (`None` if it was longer than [`FIRST_LINE_CAP`]).
    pub fn first_line(&self) -> Option<&[u8]> {
        (!self.first_too_long).then_some(&self.first[..])
    }
}

/// The `resourceType` of one NDJSON line.
fn line_type(line: &[u8]) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("the line is not JSON: {e}"))?;
    value["resourceType"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the line has no resourceType".to_owned())
}

/// The wait before the next poll of a job that has run for `elapsed`: a fiftieth of that,
/// within [`POLL_MIN`] and [`POLL_MAX`] (a short job is timed closely, a long one polled
/// rarely).
fn poll_interval(elapsed: Duration) -> Duration {
    (elapsed / 50).clamp(POLL_MIN, POLL_MAX)
}

/// Sends a kick-off (`Prefer: respond-async`) and returns the status URL of the 202.
async fn kick_off(target: &Target, request: RequestBuilder, label: &str) -> Result<String, String> {
    let res = request
        .headers(target.auth.clone())
        .header(header::ACCEPT, "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .map_err(|e| format!("{label}: {e}"))?;
    let status = res.status();
    let location = res.headers().get(header::CONTENT_LOCATION).cloned();
    let body = res.text().await.unwrap_or_default();
    if status != StatusCode::ACCEPTED {
        return Err(format!("{label}: expected 202 Accepted, got {status}: {body}"));
    }
    let location = location.ok_or_else(|| format!("{label}: a 202 without Content-Location"))?;
    location.to_str().map(str::to_owned).map_err(|e| format!("{label}: Content-Location: {e}"))
}

/// Polls a status URL until the job's 200 manifest (sampling the server's memory at each
/// poll); returns the manifest's bytes. Any answer but 202 and 200 ends it as an error.
async fn await_job(
    target: &Target,
    status_url: &str,
    started: Instant,
    memory: &mut MemoryWatch,
) -> Result<Vec<u8>, String> {
    loop {
        memory.sample();
        let res = target
            .http
            .get(status_url)
            .headers(target.auth.clone())
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {status_url}: {e}"))?;
        let status = res.status();
        let body = res.bytes().await.map_err(|e| format!("GET {status_url}: reading body: {e}"))?;
        match status {
            StatusCode::OK => return Ok(body.to_vec()),
            StatusCode::ACCEPTED if started.elapsed() > JOB_LIMIT => {
                return Err(format!("{status_url}: still running after {JOB_LIMIT:?}"));
            }
            StatusCode::ACCEPTED => tokio::time::sleep(poll_interval(started.elapsed())).await,
            other => {
                return Err(format!(
                    "GET {status_url}: expected 202 or 200, got {other}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
        }
    }
}

/// Kicks off a system-level export of everything and waits for its manifest.
async fn run_export_job(
    target: &Target,
    started: Instant,
    memory: &mut MemoryWatch,
) -> Result<ExportManifest, String> {
    let request = target.http.get(format!("{}$export", target.fhir));
    let status_url = kick_off(target, request, "GET $export").await?;
    let body = await_job(target, &status_url, started, memory).await?;
    parse_export_manifest(&body).map_err(|e| format!("{status_url}: {e}"))
}

/// `Type?_summary=count` for every type of the server's CapabilityStatement (those with none
/// left out).
pub async fn count_types(target: &Target) -> Result<BTreeMap<String, u64>, String> {
    let url = format!("{}metadata", target.fhir);
    let res = target
        .http
        .get(&url)
        .header(header::ACCEPT, "application/fhir+json")
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let statement: Value = res.json().await.map_err(|e| format!("GET {url}: {e}"))?;
    let types = capability_types(&statement);
    if types.is_empty() {
        return Err(format!("GET {url}: the CapabilityStatement lists no resource types"));
    }
    let mut counts = BTreeMap::new();
    for ty in types {
        let n = search::count(target, &format!("{ty}?_summary=count")).await?;
        if n > 0 {
            counts.insert(ty, n);
        }
    }
    Ok(counts)
}

/// Downloads one file, counting its lines; returns the counter and the round trip.
async fn download(target: &Target, file: &ManifestFile) -> Result<(LineCounter, Duration), String> {
    let label = format!("GET {}", file.url);
    let sent = Instant::now();
    let mut res = target
        .http
        .get(&file.url)
        .headers(target.auth.clone())
        .header(header::ACCEPT, "application/fhir+ndjson")
        .send()
        .await
        .map_err(|e| format!("{label}: {e}"))?;
    if res.status() != StatusCode::OK {
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        return Err(format!("{label}: expected 200 OK, got {status}: {body}"));
    }
    let mut counter = LineCounter::default();
    while let Some(chunk) = res.chunk().await.map_err(|e| format!("{label}: reading: {e}"))? {
        counter.feed(&chunk);
    }
    Ok((counter, sent.elapsed()))
}

/// Checks a downloaded file against its manifest entry.
fn check_file(file: &ManifestFile, counter: &LineCounter) -> Result<(), String> {
    if counter.lines() != file.count {
        return Err(format!(
            "{} ({}) has {} lines, the manifest says {}",
            file.url,
            file.ty,
            counter.lines(),
            file.count
        ));
    }
    if let Some(first) = counter.first_line().filter(|_| file.count > 0) {
        let ty = line_type(first).map_err(|e| format!("{}: line 1: {e}", file.url))?;
        if ty != file.ty {
            return Err(format!("{}: line 1 is a {ty} in a file of {}", file.url, file.ty));
        }
    }
    Ok(())
}

/// `export-download`: every output file, one after the other. Requests are files, resources
/// their lines, latencies per file.
async fn download_all(target: &Target, manifest: &ExportManifest, server_pid: Pids) -> RunResult {
    let mut stats = ClientStats::default();
    let mut bytes = 0u64;
    let before = CpuSample::take(server_pid);
    let started = Instant::now();
    for file in &manifest.output {
        match download(target, file).await {
            Ok((counter, elapsed)) => {
                stats.record(elapsed, counter.lines(), 0);
                bytes += counter.bytes();
                if let Err(what) = check_file(file, &counter) {
                    load::record_error(&mut stats, what);
                }
            }
            Err(what) => load::record_error(&mut stats, what),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let usage = sys::usage(&before, &CpuSample::take(server_pid));
    let mut row = load::summarise(Scenario::ExportDownload, 1, vec![stats], seconds, usage);
    row.notes.push(format!(
        "{} files, {} MB of NDJSON, {:.0} MB/s; each file's lines counted against its manifest entry",
        manifest.output.len(),
        thousands(bytes as f64 / 1e6),
        bytes as f64 / 1e6 / seconds.max(1e-9),
    ));
    row
}

/// What the export held against what the server counts, and where it came from.
fn export_notes(
    manifest: &ExportManifest,
    server: &BTreeMap<String, u64>,
    baseline: &BTreeMap<String, u64>,
) -> Vec<String> {
    let exported = manifest.by_type();
    let before: BTreeMap<String, u64> = exported
        .iter()
        .map(|(ty, &n)| (ty.clone(), n.min(baseline.get(ty).copied().unwrap_or(0))))
        .collect();
    let before_total: u64 = before.values().sum();
    let bookkeeping = NOT_EXPORTED.iter().filter_map(|ty| server.get_key_value(*ty));
    vec![
        format!(
            "{} resources of {} types in {} files (transactionTime {}), {} deleted and {} error entries",
            thousands(manifest.total() as f64),
            exported.len(),
            manifest.output.len(),
            manifest.transaction_time,
            manifest.deleted.len(),
            manifest.error.len(),
        ),
        format!(
            "checked per type against the server's Type?_summary=count after the job; {} were \
             loaded by this run and {} were there before it ({}); not \
             exported, the server's bookkeeping: {}",
            thousands((manifest.total() - before_total) as f64),
            thousands(before_total as f64),
            list_counts(before.iter().map(|(t, n)| (t, *n))),
            list_counts(bookkeeping.map(|(t, n)| (t, *n))),
        ),
    ]
}

/// The memory line of a bulk row.
fn memory_note(memory: &MemoryUse) -> String {
    let mb = |kb: u64| format!("{:.0} MB", kb as f64 / 1024.0);
    format!(
        "server memory: RSS {} before, peak {} during the job ({}), RSS {} after",
        mb(memory.before.rss_kb),
        mb(memory.peak_kb()),
        if memory.peak_reset {
            "VmHWM, reset at the kick-off".to_owned()
        } else {
            format!("largest VmRSS sampled; VmHWM since start {}", mb(memory.after.hwm_kb))
        },
        mb(memory.after.rss_kb),
    )
}

/// `export` (the job's row, then the download's row) and the manifest for `import`. `baseline`
/// is what the server counted before this run loaded anything.
pub async fn export(
    target: &Target,
    server_pid: Pids,
    baseline: &BTreeMap<String, u64>,
) -> (Vec<RunResult>, Option<ExportManifest>) {
    let mut stats = ClientStats::default();
    let mut memory = MemoryWatch::start(server_pid.first());
    let before = CpuSample::take(server_pid);
    let started = Instant::now();
    let job = run_export_job(target, started, &mut memory).await;
    let elapsed = started.elapsed();
    let usage = sys::usage(&before, &CpuSample::take(server_pid));
    let memory = memory.finish();
    let manifest = match job {
        Ok(manifest) => manifest,
        Err(what) => {
            load::record_error(&mut stats, what);
            let row =
                load::summarise(Scenario::Export, 1, vec![stats], elapsed.as_secs_f64(), usage);
            return (vec![row], None);
        }
    };
    stats.record(elapsed, manifest.total(), 0);
    let download = download_all(target, &manifest, server_pid).await;
    let mut notes = Vec::new();
    match count_types(target).await {
        Ok(server) => {
            for problem in compare_counts(&manifest.by_type(), &server) {
                load::record_error(&mut stats, problem);
            }
            notes = export_notes(&manifest, &server, baseline);
        }
        Err(what) => {
            load::record_error(&mut stats, format!("counting the server's resources: {what}"))
        }
    }
    let mut row = load::summarise(Scenario::Export, 1, vec![stats], elapsed.as_secs_f64(), usage);
    row.notes = notes;
    row.notes.extend(memory.as_ref().map(memory_note));
    row.memory = memory;
    (vec![row, download], Some(manifest))
}

/// Checks an import's manifest against the files it read: one output per input with the
/// file's count, and no error.
fn check_import(inputs: &[&ManifestFile], manifest: &ImportManifest) -> Vec<String> {
    let mut problems: Vec<String> =
        manifest.error.iter().map(|e| format!("the import reports an error file: {e}")).collect();
    for file in inputs {
        match manifest.output.iter().find(|o| o.input_url == file.url) {
            Some(o) if o.count == file.count => {}
            Some(o) => problems.push(format!(
                "imported {} of the {} {} in {}",
                o.count, file.count, file.ty, file.url
            )),
            None => problems.push(format!("the import manifest does not mention {}", file.url)),
        }
    }
    if manifest.output.len() != inputs.len() {
        problems.push(format!(
            "{} inputs, {} import manifest outputs",
            inputs.len(),
            manifest.output.len()
        ));
    }
    problems
}

/// Types whose count changed between `before` and `after` (the bookkeeping aside).
fn changed_counts(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<String> {
    let mut types: Vec<&String> = before.keys().chain(after.keys()).collect();
    types.sort();
    types.dedup();
    types
        .into_iter()
        .filter(|ty| !NOT_EXPORTED.contains(&ty.as_str()))
        .filter_map(|ty| {
            let (b, a) =
                (before.get(ty).copied().unwrap_or(0), after.get(ty).copied().unwrap_or(0));
            (a != b).then(|| format!("{ty}: {b} before the import, {a} after"))
        })
        .collect()
}

/// Kicks off the import of `inputs` and waits for its manifest.
async fn run_import_job(
    target: &Target,
    inputs: &[&ManifestFile],
    started: Instant,
    memory: &mut MemoryWatch,
) -> Result<ImportManifest, String> {
    let body = serde_json::to_vec(&import_parameters(inputs)).unwrap_or_default();
    let request = target
        .http
        .post(format!("{}$import", target.fhir))
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .body(body);
    let status_url = kick_off(target, request, "POST $import").await?;
    let body = await_job(target, &status_url, started, memory).await?;
    parse_import_manifest(&body).map_err(|e| format!("{status_url}: {e}"))
}

/// `import`: the files of `exported` (or of an export run now, untimed, if none was) back
/// into the same project, but for the account types the server refuses to import.
pub async fn import(
    target: &Target,
    server_pid: Pids,
    exported: Option<&ExportManifest>,
) -> RunResult {
    let mut stats = ClientStats::default();
    let fresh;
    let manifest = match exported {
        Some(manifest) => manifest,
        None => {
            let mut memory = MemoryWatch::start(None);
            match run_export_job(target, Instant::now(), &mut memory).await {
                Ok(manifest) => {
                    fresh = manifest;
                    &fresh
                }
                Err(what) => {
                    load::record_error(&mut stats, format!("the export to import: {what}"));
                    return load::summarise(
                        Scenario::BulkImport,
                        1,
                        vec![stats],
                        1e-9,
                        Default::default(),
                    );
                }
            }
        }
    };
    let (inputs, left_out): (Vec<&ManifestFile>, Vec<&ManifestFile>) =
        manifest.output.iter().partition(|f| !NOT_IMPORTED.contains(&f.ty.as_str()));
    let counts_before = count_types(target).await;
    let mut memory = MemoryWatch::start(server_pid.first());
    let before = CpuSample::take(server_pid);
    let started = Instant::now();
    let job = run_import_job(target, &inputs, started, &mut memory).await;
    let elapsed = started.elapsed();
    let usage = sys::usage(&before, &CpuSample::take(server_pid));
    let memory = memory.finish();
    let mut notes = Vec::new();
    match job {
        Ok(result) => {
            let written: u64 = result.output.iter().map(|o| o.count).sum();
            stats.record(elapsed, written, 0);
            for problem in check_import(&inputs, &result) {
                load::record_error(&mut stats, problem);
            }
            let skipped: BTreeMap<String, u64> =
                left_out.iter().map(|f| (f.ty.clone(), f.count)).collect();
            notes.push(format!(
                "{} resources from {} files of the export; left out, as the server imports no \
                 accounts: {}",
                thousands(written as f64),
                inputs.len(),
                list_counts(skipped.iter().map(|(t, n)| (t, *n))),
            ));
        }
        Err(what) => load::record_error(&mut stats, what),
    }
    match (counts_before, count_types(target).await) {
        (Ok(before), Ok(after)) => {
            let changed = changed_counts(&before, &after);
            if changed.is_empty() {
                notes.push("the server's count of every type is unchanged (each line overwrote its own id)".into());
            }
            for what in changed {
                load::record_error(&mut stats, what);
            }
        }
        (Err(what), _) | (_, Err(what)) => {
            load::record_error(&mut stats, format!("counting the server's resources: {what}"));
        }
    }
    let mut row =
        load::summarise(Scenario::BulkImport, 1, vec![stats], elapsed.as_secs_f64(), usage);
    row.notes = notes;
    row.notes.extend(memory.as_ref().map(memory_note));
    row.memory = memory;
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    #[test]
    fn polls_thin_out_as_a_job_runs() {
        assert_eq!(poll_interval(Duration::ZERO), POLL_MIN);
        assert_eq!(poll_interval(Duration::from_secs(5)), Duration::from_millis(100));
        assert_eq!(poll_interval(Duration::from_secs(3600)), POLL_MAX);
    }

    #[test]
    fn export_manifests_parse() {
        let body = json!({"transactionTime": "2026-11-30T10:00:00.000Z", "request": "x",
            "requiresAccessToken": true,
            "output": [{"type": "Patient", "url": "http://h/fhir/R4/job/j/file/0", "count": 3},
                       {"type": "Patient", "url": "http://h/fhir/R4/job/j/file/1", "count": 2},
                       {"type": "Observation", "url": "http://h/fhir/R4/job/j/file/2", "count": 7}],
            "deleted": [], "error": []});
        let m = parse_export_manifest(body.to_string().as_bytes()).unwrap();
        assert_eq!(m.transaction_time, "2026-11-30T10:00:00.000Z");
        assert_eq!(m.output.len(), 3);
        assert_eq!(
            m.output[2],
            ManifestFile {
                ty: "Observation".into(),
                url: "http://h/fhir/R4/job/j/file/2".into(),
                count: 7
            }
        );
        assert_eq!(m.total(), 12);
        assert_eq!(m.by_type(), counts(&[("Observation", 7), ("Patient", 5)]));
        let no_lists = json!({"transactionTime": "t"});
        assert!(parse_export_manifest(no_lists.to_string().as_bytes()).unwrap().output.is_empty());
        let no_count = json!({"transactionTime": "t", "output": [{"type": "Patient", "url": "u"}]});
        assert!(parse_export_manifest(no_count.to_string().as_bytes()).is_err());
        assert!(parse_export_manifest(b"{\"output\": []}").is_err());
        assert!(parse_export_manifest(b"<html>").is_err());
    }

    #[test]
    fn import_manifests_parse_and_are_checked() {
        let body = json!({"transactionTime": "t", "request": "r",
            "output": [{"inputUrl": "u0", "count": 3, "type": "Patient"}, {"inputUrl": "u1", "count": 1}],
            "error": []});
        let m = parse_import_manifest(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            m.output,
            vec![
                ImportOutput { input_url: "u0".into(), count: 3 },
                ImportOutput { input_url: "u1".into(), count: 1 }
            ]
        );
        assert!(m.error.is_empty());
        let f0 = ManifestFile { ty: "Patient".into(), url: "u0".into(), count: 3 };
        let f1 = ManifestFile { ty: "Condition".into(), url: "u1".into(), count: 2 };
        let problems = check_import(&[&f0, &f1], &m);
        assert_eq!(problems, vec!["imported 1 of the 2 Condition in u1"]);
        let failed = json!({"output": [{"inputUrl": "u0", "count": 3}],
            "error": [{"type": "OperationOutcome", "inputUrl": "u0", "count": 1, "url": "e"}]});
        let m = parse_import_manifest(failed.to_string().as_bytes()).unwrap();
        let problems = check_import(&[&f0], &m);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("the import reports an error file"));
        assert_eq!(check_import(&[&f0, &f1], &m).len(), 3);
        assert!(parse_import_manifest(b"{\"error\": []}").is_err());
    }

    #[test]
    fn import_parameters_name_each_file_with_its_type() {
        let f = ManifestFile {
            ty: "Patient".into(),
            url: "http://h/fhir/R4/job/j/file/0".into(),
            count: 1,
        };
        let p = import_parameters(&[&f]);
        assert_eq!(p["resourceType"], "Parameters");
        assert_eq!(p["parameter"][0]["valueCode"], "application/fhir+ndjson");
        assert_eq!(p["parameter"][1]["name"], "input");
        assert_eq!(p["parameter"][1]["part"][0], json!({"name": "type", "valueCode": "Patient"}));
        assert_eq!(p["parameter"][1]["part"][1]["valueUri"], "http://h/fhir/R4/job/j/file/0");
    }

    #[test]
    fn capability_types_are_listed_once() {
        let statement = json!({"resourceType": "CapabilityStatement", "rest": [
            {"mode": "server", "resource": [{"type": "Patient"}, {"type": "Account"}, {"type": "Patient"}]}]});
        assert_eq!(capability_types(&statement), vec!["Account", "Patient"]);
        assert!(capability_types(&json!({})).is_empty());
    }

    #[test]
    fn counts_are_compared_type_by_type() {
        let server = counts(&[("Patient", 5), ("Observation", 7), ("AsyncJob", 1), ("Login", 2)]);
        assert!(compare_counts(&counts(&[("Patient", 5), ("Observation", 7)]), &server).is_empty());
        assert_eq!(
            compare_counts(&counts(&[("Patient", 4), ("Observation", 7)]), &server),
            vec!["exported 4 Patient, but Patient?_summary=count says 5"]
        );
        assert_eq!(
            compare_counts(&counts(&[("Patient", 5)]), &server),
            vec!["the server holds 7 Observation, none of them exported"]
        );
        let with_job = counts(&[("Patient", 5), ("Observation", 7), ("AsyncJob", 1)]);
        assert_eq!(compare_counts(&with_job, &server).len(), 1);
        assert_eq!(
            changed_counts(&server, &counts(&[("Patient", 5), ("Observation", 7)])),
            Vec::<String>::new()
        );
        assert_eq!(
            changed_counts(&server, &counts(&[("Patient", 6), ("Observation", 7)])),
            vec!["Patient: 5 before the import, 6 after"]
        );
    }

    #[test]
    fn lines_are_counted_across_chunks() {
        let mut c = LineCounter::default();
        for chunk in [&b"{\"resourceType\":"[..], b"\"Patient\"}\n{}\n", b"", b"{}"] {
            c.feed(chunk);
        }
        assert_eq!((c.lines(), c.bytes()), (3, 32));
        assert_eq!(c.first_line(), Some(&b"{\"resourceType\":\"Patient\"}"[..]));
        assert_eq!(line_type(c.first_line().unwrap()).as_deref(), Ok("Patient"));
        let mut ended = LineCounter::default();
        ended.feed(b"{}\n{}\n");
        assert_eq!(ended.lines(), 2);
        assert_eq!(LineCounter::default().lines(), 0);
        let mut long = LineCounter::default();
        long.feed(&vec![b'x'; FIRST_LINE_CAP + 1]);
        long.feed(b"\n");
        assert_eq!((long.lines(), long.first_line()), (1, None));
        assert!(line_type(b"{\"id\": 1}").is_err());
        assert!(line_type(b"nope").is_err());
    }

    #[test]
    fn files_are_checked_against_the_manifest() {
        let file = ManifestFile { ty: "Patient".into(), url: "u".into(), count: 2 };
        let mut c = LineCounter::default();
        c.feed(b"{\"resourceType\":\"Patient\"}\n{\"resourceType\":\"Patient\"}\n");
        assert!(check_file(&file, &c).is_ok());
        let obs = ManifestFile { ty: "Observation".into(), ..file.clone() };
        assert!(check_file(&obs, &c).unwrap_err().contains("line 1 is a Patient"));
        let three = ManifestFile { count: 3, ..file };
        assert!(check_file(&three, &c).unwrap_err().contains("has 2 lines, the manifest says 3"));
    }
}
