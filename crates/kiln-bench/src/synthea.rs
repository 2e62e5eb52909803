//! The Synthea data the search scenarios run on (`../shared/data/synthea`): the two shared batch
//! bundles (`0-hospitalInformation*`, `0-practitionerInformation*`: Organizations, Locations,
//! Practitioners and PractitionerRoles as `ifNoneExist` conditional creates), then every patient
//! transaction bundle, posted `copies` times by a few concurrent clients. Each copy makes new
//! resources, because the server assigns ids to POST entries; the conditional references
//! (`Practitioner?identifier=…`) resolve to the shared resources.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::load::{self, ClientStats, RunResult, Scenario, Target};
use crate::sys::{self, CpuSample, Pids};
use crate::{raw, report};

/// One bundle file, read once and posted as is.
#[derive(Debug)]
pub struct SyntheaFile {
    pub name: String,
    pub body: Vec<u8>,
    pub entries: usize,
    /// `batch` or `transaction`.
    pub kind: String,
}

/// The shared bundles (posted first, once) and the patient bundles.
#[derive(Debug)]
pub struct SyntheaData {
    pub dir: PathBuf,
    pub shared: Vec<SyntheaFile>,
    pub patients: Vec<SyntheaFile>,
}

/// What the load did beyond the row: whether the server left resources out of its answers.
#[derive(Debug, Default)]
pub struct LoadNotes {
    /// Some answer entry carried a `resource` although `Prefer: return=minimal` was sent.
    pub representation_returned: AtomicBool,
}

#[cfg(test)]
/// Where the Synthea data lives when the shared folder sits beside the repository.
pub fn default_dir() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea"),
        PathBuf::from("../shared/data/synthea"),
    ];
    let dir = candidates.into_iter().find(|dir| dir.is_dir())?;
    Some(dir.canonicalize().unwrap_or(dir))
}

impl SyntheaData {
    /// Reads every `*.json` of `dir` except `MANIFEST.json`; names starting with `0-` are the
    /// shared bundles. Both lists are in file-name order (hospitals before practitioners).
    pub fn read(dir: &Path) -> anyhow::Result<SyntheaData> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && n != "MANIFEST.json")
            .collect();
        names.sort();
        let mut data =
            SyntheaData { dir: dir.to_owned(), shared: Vec::new(), patients: Vec::new() };
        for name in names {
            let file = read_file(dir, &name)?;
            if name.starts_with("0-") {
                data.shared.push(file);
            } else {
                data.patients.push(file);
            }
        }
        if data.patients.is_empty() {
            bail!("{} holds no Synthea patient bundles", dir.display());
        }
        Ok(data)
    }

    /// Bundle entries posted by a load of `copies` copies.
    pub fn resources(&self, copies: usize) -> usize {
        let entries = |files: &[SyntheaFile]| files.iter().map(|f| f.entries).sum::<usize>();
        entries(&self.shared) + copies * entries(&self.patients)
    }

    pub fn describe(&self, copies: usize) -> String {
        format!(
            "patient records from {}: {} shared bundles, then {} patient transactions x {copies} ({} entries in all)",
            self.dir.display(),
            self.shared.len(),
            self.patients.len(),
            report::thousands(self.resources(copies) as f64),
        )
    }
}

fn read_file(dir: &Path, name: &str) -> anyhow::Result<SyntheaFile> {
    let path = dir.join(name);
    let body = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    SyntheaFile::from_bytes(&path.display().to_string(), body)
}

impl SyntheaFile {
    /// A batch or transaction Bundle named `name` (for messages).
    pub fn from_bytes(name: &str, body: Vec<u8>) -> anyhow::Result<SyntheaFile> {
        let bundle: Value =
            serde_json::from_slice(&body).with_context(|| format!("parsing {name}"))?;
        let kind = bundle["type"].as_str().unwrap_or_default().to_owned();
        if bundle["resourceType"] != "Bundle" || !matches!(kind.as_str(), "batch" | "transaction") {
            bail!("{name} is not a batch or transaction Bundle");
        }
        let entries = bundle["entry"].as_array().map_or(0, Vec::len);
        let name = Path::new(name).file_name().map_or(name.into(), |n| n.to_string_lossy().into());
        Ok(SyntheaFile { name, body, entries, kind })
    }
}

/// Posts one bundle and fails unless every entry succeeded.
pub async fn post_once(target: &Target, file: &SyntheaFile) -> anyhow::Result<()> {
    let mut stats = ClientStats::default();
    post_bundle(target, file, &mut stats, &LoadNotes::default()).await;
    match stats.error_samples.first() {
        Some(what) => bail!("{what}"),
        None => Ok(()),
    }
}

/// Posts the shared bundles one after the other, then `copies` x every patient bundle with
/// `clients` concurrent clients. One row: requests are bundles, resources their entries, the
/// time the whole load.
pub async fn load(
    target: &Arc<Target>,
    data: &Arc<SyntheaData>,
    copies: usize,
    clients: usize,
    server_pid: Pids,
    notes: &Arc<LoadNotes>,
) -> anyhow::Result<RunResult> {
    let before = CpuSample::take(server_pid);
    let started = Instant::now();
    let mut shared = ClientStats::default();
    for file in &data.shared {
        post_bundle(target, file, &mut shared, notes).await;
    }
    let jobs = copies * data.patients.len();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (target, data, next, notes) =
                (target.clone(), data.clone(), next.clone(), notes.clone());
            tokio::spawn(async move {
                let mut stats = ClientStats::default();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= jobs {
                        break;
                    }
                    let file = &data.patients[n % data.patients.len()];
                    post_bundle(&target, file, &mut stats, &notes).await;
                }
                stats
            })
        })
        .collect();
    let mut all = vec![shared];
    for task in tasks {
        all.push(task.await.context("a loading task panicked")?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = CpuSample::take(server_pid);
    let usage = sys::usage(&before, &after);
    Ok(load::summarise(Scenario::SyntheaLoad, clients, all, seconds, usage))
}

/// Posts one bundle and checks its answer; records the outcome in `stats`.
async fn post_bundle(
    target: &Target,
    file: &SyntheaFile,
    stats: &mut ClientStats,
    notes: &LoadNotes,
) {
    let label = format!("POST {} {}", file.kind, file.name);
    let sent = Instant::now();
    let request = target
        .http
        .post(&target.fhir)
        .headers(target.auth.clone())
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .header("Prefer", "return=minimal")
        .body(file.body.clone());
    let outcome = async {
        let res = request.send().await.map_err(|e| format!("{label}: {e}"))?;
        let status = res.status();
        let body = res.bytes().await.map_err(|e| format!("{label}: reading body: {e}"))?;
        let elapsed = sent.elapsed();
        if status != StatusCode::OK {
            return Err(format!(
                "{label}: expected 200 OK, got {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let with_resources = check_answer(&body, file).map_err(|e| format!("{label}: {e}"))?;
        if with_resources {
            notes.representation_returned.store(true, Ordering::Relaxed);
        }
        Ok(elapsed)
    }
    .await;
    match outcome {
        Ok(elapsed) => stats.record(elapsed, file.entries as u64, 0),
        Err(what) => load::record_error(stats, what),
    }
}

/// Checks a `batch-response` / `transaction-response`: one entry per request entry, each
/// 200 or 201. Returns whether entries carried their resource.
fn check_answer(body: &[u8], file: &SyntheaFile) -> Result<bool, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the answer is not UTF-8: {e}"))?;
    let answer = raw::object(text).map_err(|e| format!("the answer is {e}"))?;
    let expected_type = format!("{}-response", file.kind);
    let (resource_type, kind) =
        (raw::member(&answer, "resourceType")?, raw::member(&answer, "type")?);
    if resource_type != "Bundle" || kind != expected_type.as_str() {
        return Err(format!(
            "expected a {expected_type} Bundle, got resourceType {resource_type} and type {kind}"
        ));
    }
    let entries = raw::objects(&answer, "entry")?;
    if entries.len() != file.entries {
        return Err(format!("{} answer entries for {} entries", entries.len(), file.entries));
    }
    let mut with_resources = false;
    for (n, entry) in entries.iter().enumerate() {
        let response = raw::member(entry, "response")?;
        let status = response["status"].as_str().unwrap_or_default();
        if !(status.starts_with("200") || status.starts_with("201")) {
            return Err(format!("entry {n} answered {status:?}: {response}"));
        }
        with_resources |= entry.contains_key("resource");
    }
    Ok(with_resources)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(kind: &str, entries: usize) -> SyntheaFile {
        SyntheaFile { name: "x.json".into(), body: Vec::new(), entries, kind: kind.into() }
    }

    #[test]
    fn answers_are_checked_entry_by_entry() {
        let ok = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created"}}, {"response": {"status": "200 OK"}}]});
        assert_eq!(check_answer(ok.to_string().as_bytes(), &file("transaction", 2)), Ok(false));
        assert!(check_answer(ok.to_string().as_bytes(), &file("transaction", 3)).is_err());
        assert!(check_answer(ok.to_string().as_bytes(), &file("batch", 2)).is_err());
        let failed = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "400 Bad Request"}}]});
        assert!(check_answer(failed.to_string().as_bytes(), &file("batch", 1)).is_err());
        let full = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"resource": {"resourceType": "Patient"}, "response": {"status": "201 Created"}}]});
        assert_eq!(check_answer(full.to_string().as_bytes(), &file("batch", 1)), Ok(true));
    }

    #[test]
    fn the_shared_data_reads_when_present() {
        let Some(dir) = default_dir() else {
            eprintln!("SKIP: the Synthea data is not beside the repository");
            return;
        };
        let data = SyntheaData::read(&dir).unwrap();
        assert_eq!(data.shared.len(), 2);
        assert!(data.shared.iter().all(|f| f.kind == "batch"));
        assert!(data.shared[0].name.starts_with("0-hospital"));
        assert!(data.patients.iter().all(|f| f.kind == "transaction"));
        assert!(data.resources(2) > data.resources(1));
    }
}
