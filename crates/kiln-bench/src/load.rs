//! The load loops: N client tasks over one pooled reqwest `Client`, each issuing one request at
//! a time for a fixed duration, recording the latency of every request that started inside the
//! measured window (after the warm-up). Any transport error or unexpected status is an error.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ValueEnum;
use reqwest::{Client, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::bundles::BundleTemplate;
use crate::dataset::{self, CrudTemplate};
use crate::fixtures::{self, Rng};
use crate::search::{self, SearchPool};
use crate::sys::{self, CpuSample, Pids, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Create, read, update and delete cycles over the nine `crud` types (a row per operation).
    Crud,
    /// The US Core search mix, each request a search drawn at random (a row per search).
    #[value(name = "search")]
    SearchMix,
    /// POST transaction bundles of whole patient records (fresh ids per copy).
    #[value(name = "import")]
    Ingest,
    /// A system-level `$export` of everything, kick-off to manifest; then its files are
    /// downloaded (a second row, `export-download`) and checked against the server's counts.
    Export,
    /// Medplum's measured workload: read, search-anchor and create, in that order.
    Anchor,
    /// GET Patient/{random id} among the seeded patients.
    Read,
    /// POST a vital-sign Observation about a random seeded patient.
    Create,
    /// PUT one patient per client, with If-Match of the version the client last wrote.
    Update,
    /// GET Observation?code=http://loinc.org|8867-4&_count=10 over 2,700 heart rates (anchor).
    SearchAnchor,
    /// GET Patient?name={first 3 letters of a loaded family name}.
    SearchName,
    /// GET Patient?identifier={system|value of a loaded patient}.
    SearchIdentifier,
    /// GET Observation?patient={id}&category=laboratory.
    SearchPatientCategory,
    /// GET Observation?patient={id}&code=http://loinc.org|{a code of that patient}.
    SearchPatientCode,
    /// GET Observation?patient={id}&category=vital-signs&date=ge2015-01-01 (US Core style).
    SearchPatientObs,
    /// GET Observation?code=http://loinc.org|{code}&_summary=count.
    SearchCount,
    /// GET Observation?subject:Patient.name={family}&_count=20 (a chain).
    SearchChain,
    /// GET Observation?patient={id}&_include=Observation:subject&_count=50.
    SearchInclude,
    /// GET Patient?_has:Observation:patient:code={code}&_count=20 (reverse chain).
    SearchHas,
    /// One client pages through every Observation (`_count=1000`, following `next` links).
    Page,
    /// `$import` of the export's files back into the same project, kick-off to manifest.
    BulkImport,
    /// Downloading the files of the `export` just run (a report row, not selectable).
    #[value(skip)]
    ExportDownload,
    /// Loading the patient records before the search scenarios (a report row, not selectable).
    #[value(skip)]
    SyntheaLoad,
}

/// The searches of the `search` mix, drawn with equal odds.
pub const SEARCH_MIX: [Scenario; 9] = [
    Scenario::SearchPatientCategory,
    Scenario::SearchPatientCode,
    Scenario::SearchPatientObs,
    Scenario::SearchName,
    Scenario::SearchIdentifier,
    Scenario::SearchChain,
    Scenario::SearchInclude,
    Scenario::SearchHas,
    Scenario::SearchCount,
];

/// The operations of one `crud` cycle, in order.
pub const CRUD_OPS: [&str; 4] = ["create", "read", "update", "delete"];

/// Heart-rate Observations seeded for `search-anchor` (Medplum's run matched about 2,700).
pub const ANCHOR_MATCHES: usize = 2_700;

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Crud => "crud",
            Scenario::SearchMix => "search",
            Scenario::Ingest => "import",
            Scenario::Export => "export",
            Scenario::Anchor => "anchor",
            Scenario::Read => "read",
            Scenario::Create => "create",
            Scenario::Update => "update",
            Scenario::SearchAnchor => "search-anchor",
            Scenario::SearchName => "search-name",
            Scenario::SearchIdentifier => "search-identifier",
            Scenario::SearchPatientCategory => "search-patient-category",
            Scenario::SearchPatientCode => "search-patient-code",
            Scenario::SearchPatientObs => "search-patient-obs",
            Scenario::SearchCount => "search-count",
            Scenario::SearchChain => "search-chain",
            Scenario::SearchInclude => "search-include",
            Scenario::SearchHas => "search-has",
            Scenario::Page => "page",
            Scenario::BulkImport => "bulk-import",
            Scenario::ExportDownload => "export-download",
            Scenario::SyntheaLoad => "load",
        }
    }

    /// The workloads made of other scenarios replaced by them (`anchor`).
    pub fn expand(chosen: &[Scenario]) -> Vec<Scenario> {
        chosen
            .iter()
            .flat_map(|&s| match s {
                Scenario::Anchor => vec![Scenario::Read, Scenario::SearchAnchor, Scenario::Create],
                other => vec![other],
            })
            .collect()
    }

    /// The rows a run of this scenario reports besides its total, one per kind of request.
    pub fn parts(self) -> Vec<&'static str> {
        match self {
            Scenario::Crud => CRUD_OPS.to_vec(),
            Scenario::SearchMix => SEARCH_MIX.iter().map(|s| s.name()).collect(),
            _ => Vec::new(),
        }
    }

    /// Read, create, update and anchor draw on the patients seeded before the runs.
    pub fn needs_seeded_patients(self) -> bool {
        matches!(
            self,
            Scenario::Read | Scenario::Create | Scenario::Update | Scenario::SearchAnchor
        )
    }

    /// The search scenarios (and `page`) need loaded records and a pool drawn from them.
    pub fn needs_search_data(self) -> bool {
        (self.is_search() && self != Scenario::SearchAnchor) || self == Scenario::Page
    }

    /// Scenarios that run on loaded patient records (unless `--copies 0`).
    pub fn needs_synthea(self) -> bool {
        self.needs_search_data() || self.is_bulk()
    }

    /// `$export` and `$import`: one job each, run by [`crate::bulk`].
    pub fn is_bulk(self) -> bool {
        matches!(self, Scenario::Export | Scenario::BulkImport)
    }

    /// One client's single pass, not a concurrency level: run once whatever `--clients` says.
    pub fn runs_once(self) -> bool {
        self == Scenario::Page || self.is_bulk()
    }

    /// A GET whose answer must be a `searchset` Bundle, run for a fixed time.
    pub fn is_search(self) -> bool {
        self == Scenario::SearchMix || SEARCH_MIX.contains(&self) || self == Scenario::SearchAnchor
    }

    /// Whether the resources/s column means something for this scenario.
    pub fn counts_resources(self) -> bool {
        !matches!(
            self,
            Scenario::Read
                | Scenario::Create
                | Scenario::Update
                | Scenario::Crud
                | Scenario::Anchor
        )
    }
}

/// Where requests go and how they authenticate.
pub struct Target {
    pub http: Client,
    /// `{base}fhir/R4/`
    pub fhir: String,
    /// The Authorization header, or nothing (`--no-auth`).
    pub auth: header::HeaderMap,
    /// Every node's FHIR base when the server has several (`fhir` is the first); measured
    /// client `i` talks to node `i mod n`.
    pub nodes: Vec<String>,
}

impl Target {
    /// The same server seen through node `index mod n` (itself when there is one node).
    pub fn node(self: &Arc<Target>, index: usize) -> Arc<Target> {
        if self.nodes.len() < 2 {
            return self.clone();
        }
        Arc::new(Target {
            http: self.http.clone(),
            fhir: self.nodes[index % self.nodes.len()].clone(),
            auth: self.auth.clone(),
            nodes: self.nodes.clone(),
        })
    }
}

/// A seeded patient: its id, the body to PUT back, and the version last written.
pub struct SeededPatient {
    pub id: String,
    pub body: Value,
    pub version: AtomicI64,
}

/// Everything the scenarios draw on, shared by all clients.
pub struct Workload {
    pub patients: Vec<SeededPatient>,
    /// Pre-serialised Observations (so the load generator spends its CPU on requests).
    pub observations: Vec<Vec<u8>>,
    pub bundles: Vec<BundleTemplate>,
    /// Patient ids, family names and codes present in the loaded records (search scenarios).
    pub search: SearchPool,
    /// One resource per `crud` type.
    pub crud: Vec<CrudTemplate>,
}

/// What one client (or one loader task) did; merged into a [`RunResult`] by [`summarise`].
#[derive(Debug, Default)]
pub struct ClientStats {
    pub latencies_us: Vec<u32>,
    pub requests: u64,
    pub resources: u64,
    /// Sum of `Bundle.total` over the search answers that had one.
    pub matches: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub finished: Option<Instant>,
}

impl ClientStats {
    /// Records one successful request that took `elapsed`.
    pub fn record(&mut self, elapsed: Duration, resources: u64, matches: u64) {
        self.requests += 1;
        self.resources += resources;
        self.matches += matches;
        self.latencies_us.push(elapsed.as_micros().min(u32::MAX as u128) as u32);
    }
}

/// One scenario at one concurrency.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub scenario: Scenario,
    /// The kind of request of a part row (e.g. `read` of `crud`); `None` on a total row.
    pub part: Option<&'static str>,
    pub clients: usize,
    /// Successful requests that started in the measured window.
    pub requests: u64,
    /// Resources written by those requests (ingest: bundle entries; create/update: 1 each), or
    /// returned by them (searches: match and include entries).
    pub resources: u64,
    /// Sum of `Bundle.total` of the search answers (what `search-count` counted); for `page`,
    /// the distinct resources seen.
    pub matches: u64,
    /// Failed requests, warm-up included.
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub seconds: f64,
    /// Successful requests per node, when the measured clients were spread over several.
    pub per_node: Vec<u64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// CPU used by the server process over the window, in % of one core (`None`: not ours).
    pub server_cpu: Option<f64>,
    /// CPU used by this load generator over the window, in % of one core.
    pub bench_cpu: Option<f64>,
    /// The rest of the machine over the window, also in % of one core: other processes, idle
    /// (iowait included) and iowait alone.
    pub other_cpu: Option<f64>,
    pub idle: Option<f64>,
    pub iowait: Option<f64>,
    /// Requests/s of every repetition (the figures above are from the median one).
    pub repetitions: Vec<f64>,
    /// The server's resident memory around the run (bulk scenarios).
    pub memory: Option<sys::MemoryUse>,
    /// What the run checked and found, printed under the table (bulk scenarios).
    pub notes: Vec<String>,
}

impl RunResult {
    /// The row's name: the scenario, and the part of a part row (`crud: read`).
    pub fn name(&self) -> String {
        match self.part {
            Some(part) => format!("{}: {part}", self.scenario.name()),
            None => self.scenario.name().to_owned(),
        }
    }

    /// `search-count` (alone or in the mix) returns no entries; its figure is matches counted.
    pub fn counts_matches(&self) -> bool {
        match self.part {
            Some(part) => part == Scenario::SearchCount.name(),
            None => self.scenario == Scenario::SearchCount,
        }
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn resource_rate(&self) -> f64 {
        self.resources as f64 / self.seconds
    }

    pub fn match_rate(&self) -> f64 {
        self.matches as f64 / self.seconds
    }
}

const MAX_SAMPLES: usize = 5;

pub fn record_error(stats: &mut ClientStats, what: String) {
    stats.errors += 1;
    if stats.error_samples.len() < MAX_SAMPLES {
        let mut what = what;
        if what.len() > 600 {
            let mut cut = 600;
            while !what.is_char_boundary(cut) {
                cut -= 1;
            }
            what.truncate(cut);
            what.push_str("...");
        }
        stats.error_samples.push(what);
    }
}

/// What a response must be to count as a success.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Status(StatusCode),
    /// 200 and a `searchset` Bundle.
    Searchset,
}

/// A successful response: its headers, the round trip (sent to body read, before any parsing),
/// and for searches the entries returned and `Bundle.total`.
struct Reply {
    headers: header::HeaderMap,
    /// The body of a non-search answer (searches are read in place and not kept).
    body: bytes::Bytes,
    elapsed: Duration,
    entries: u64,
    total: Option<u64>,
}

/// Sends one request (sent at `sent`); `Ok(reply)` if it answered as `expected`, else
/// `Err(description)`.
async fn exchange(
    request: reqwest::RequestBuilder,
    expected: Expect,
    label: &str,
    sent: Instant,
) -> Result<Reply, String> {
    match expected {
        Expect::Status(status) => exchange_any(request, &[status], label, sent).await,
        Expect::Searchset => {
            let mut reply = exchange_any(request, &[StatusCode::OK], label, sent).await?;
            let page = search::parse_searchset(&reply.body, search::Keep::Nothing)
                .map_err(|e| format!("{label}: {e}"))?;
            (reply.entries, reply.total) = (page.entries, page.total);
            reply.body = Default::default();
            Ok(reply)
        }
    }
}

/// Sends one request; `Ok(reply)` if it answered one of the `wanted` statuses.
async fn exchange_any(
    request: reqwest::RequestBuilder,
    wanted: &[StatusCode],
    label: &str,
    sent: Instant,
) -> Result<Reply, String> {
    let res = request.send().await.map_err(|e| format!("{label}: {e}"))?;
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.bytes().await.map_err(|e| format!("{label}: reading body: {e}"))?;
    let elapsed = sent.elapsed();
    if !wanted.contains(&status) {
        let want: Vec<String> = wanted.iter().map(StatusCode::to_string).collect();
        return Err(format!(
            "{label}: expected {}, got {status}: {}",
            want.join(" or "),
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(Reply { headers, body, elapsed, entries: 0, total: None })
}

fn etag_version(headers: &header::HeaderMap) -> Option<i64> {
    let tag = headers.get(header::ETAG)?.to_str().ok()?;
    tag.trim_start_matches("W/").trim_matches('"').parse().ok()
}

/// A cap on the requests of one run (`--max-requests`), shared by its clients.
#[derive(Debug, Clone)]
pub struct Budget(Option<(Arc<AtomicU64>, u64)>);

impl Budget {
    pub fn new(max: Option<u64>) -> Budget {
        Budget(max.map(|max| (Arc::new(AtomicU64::new(0)), max)))
    }

    /// Takes one request from the budget; `false` once it is spent.
    fn take(&self) -> bool {
        match &self.0 {
            Some((used, max)) => used.fetch_add(1, Ordering::Relaxed) < *max,
            None => true,
        }
    }
}

/// What one client does in one run: the start of the measured window, its end, the budget.
#[derive(Clone)]
struct Window {
    measure_from: Instant,
    deadline: Instant,
    budget: Budget,
}

/// Records a request in the total (`stats[0]`) and in its part (`stats[1 + part]`), if it
/// started in the measured window.
fn record_part(
    stats: &mut [ClientStats],
    part: Option<usize>,
    window: &Window,
    sent: Instant,
    reply: &Reply,
    resources: u64,
) {
    if sent < window.measure_from {
        return;
    }
    let total = reply.total.unwrap_or(0);
    stats[0].record(reply.elapsed, resources + reply.entries, total);
    if let Some(part) = part {
        stats[1 + part].record(reply.elapsed, resources + reply.entries, total);
    }
}

fn record_part_error(stats: &mut [ClientStats], part: Option<usize>, what: String) {
    if let Some(part) = part {
        record_error(&mut stats[1 + part], what.clone());
    }
    record_error(&mut stats[0], what);
}

async fn client_loop(
    target: Arc<Target>,
    workload: Arc<Workload>,
    scenario: Scenario,
    index: usize,
    window: Window,
) -> Vec<ClientStats> {
    let mut stats: Vec<ClientStats> =
        (0..=scenario.parts().len()).map(|_| ClientStats::default()).collect();
    if scenario == Scenario::Crud {
        crud_cycles(&target, &workload, index, &window, &mut stats).await;
        stats[0].finished = Some(Instant::now());
        return stats;
    }
    let mut rng = Rng::new(0x00C1_1E47 + index as u64 * 7919 + scenario as u64);
    let mut iteration: u64 = 0;
    // Update: each client owns one patient, so there are no write conflicts between clients.
    let own = match scenario {
        Scenario::Update => workload.patients.get(index % workload.patients.len().max(1)),
        _ => None,
    };
    let mut own_body = own.map(|p| p.body.clone()).unwrap_or_default();
    let own_url = own.map(|p| format!("{}Patient/{}", target.fhir, p.id)).unwrap_or_default();
    loop {
        let started = Instant::now();
        if started >= window.deadline || !window.budget.take() {
            break;
        }
        iteration += 1;
        let mut part = None;
        let (request, expected, resources, label): (_, _, _, Cow<'static, str>) = match scenario {
            Scenario::Read => {
                let patient = &workload.patients[rng.below(workload.patients.len())];
                let url = format!("{}Patient/{}", target.fhir, patient.id);
                (target.http.get(url), Expect::Status(StatusCode::OK), 0, "GET Patient/{id}".into())
            }
            Scenario::Create => {
                let body = workload.observations[rng.below(workload.observations.len())].clone();
                let request = target
                    .http
                    .post(format!("{}Observation", target.fhir))
                    .header(header::CONTENT_TYPE, "application/fhir+json")
                    .body(body);
                (request, Expect::Status(StatusCode::CREATED), 1, "POST Observation".into())
            }
            Scenario::Update => {
                let Some(own) = own else {
                    record_error(&mut stats[0], "update: no seeded patient".into());
                    break;
                };
                own_body["telecom"][0]["value"] =
                    json!(format!("555-{:03}-{:04}", index % 1000, iteration % 10_000));
                let version = own.version.load(Ordering::Relaxed);
                let request = target
                    .http
                    .request(Method::PUT, &own_url)
                    .header(header::CONTENT_TYPE, "application/fhir+json")
                    .header(header::IF_MATCH, format!("W/\"{version}\""))
                    .body(serde_json::to_vec(&own_body).unwrap_or_default());
                (request, Expect::Status(StatusCode::OK), 1, "PUT Patient/{id}".into())
            }
            Scenario::Ingest => {
                let template =
                    &workload.bundles[(index + iteration as usize) % workload.bundles.len()];
                let body = template.instantiate();
                let request = target
                    .http
                    .post(&target.fhir)
                    .header(header::CONTENT_TYPE, "application/fhir+json")
                    .body(body);
                let resources = template.resources as u64;
                let label = "POST transaction Bundle".into();
                (request, Expect::Status(StatusCode::OK), resources, label)
            }
            search if search.is_search() => {
                let kind = if search == Scenario::SearchMix {
                    let n = rng.below(SEARCH_MIX.len());
                    part = Some(n);
                    SEARCH_MIX[n]
                } else {
                    search
                };
                match search::query_url(kind, &workload.search, &mut rng, &target.fhir) {
                    Ok((url, label)) => (target.http.get(url), Expect::Searchset, 0, label.into()),
                    Err(what) => {
                        record_part_error(&mut stats, part, what);
                        break;
                    }
                }
            }
            other => {
                record_error(
                    &mut stats[0],
                    format!("{} is not a load-loop scenario", other.name()),
                );
                break;
            }
        };
        // The clock starts after the body is built: latency is the server's round trip.
        let sent = Instant::now();
        let request = request.headers(target.auth.clone());
        match exchange(request, expected, &label, sent).await {
            Ok(reply) => {
                if let Some(own) = own {
                    match etag_version(&reply.headers) {
                        Some(v) => own.version.store(v, Ordering::Relaxed),
                        None => {
                            let what = format!("{label}: response without an ETag");
                            record_error(&mut stats[0], what);
                            continue;
                        }
                    }
                }
                record_part(&mut stats, part, &window, sent, &reply, resources);
            }
            Err(what) => {
                record_part_error(&mut stats, part, what);
                // A dead server fails fast; do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    stats[0].finished = Some(Instant::now());
    stats
}

/// The id and version a create answered with, from its `Location`
/// (`…/Type/id/_history/version`), else from `ETag` and the body's `id`.
fn created_id(reply: &Reply, resource_type: &str) -> Option<(String, Option<i64>)> {
    if let Some(location) = reply.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        let segments: Vec<&str> = location.trim_end_matches('/').split('/').collect();
        if let Some(at) = segments.iter().rposition(|s| *s == resource_type)
            && let Some(id) = segments.get(at + 1)
        {
            let version = match (segments.get(at + 2), segments.get(at + 3)) {
                (Some(&"_history"), Some(v)) => v.parse().ok(),
                _ => None,
            };
            return Some(((*id).to_owned(), version.or_else(|| etag_version(&reply.headers))));
        }
    }
    let body: Value = serde_json::from_slice(&reply.body).ok()?;
    Some((body["id"].as_str()?.to_owned(), etag_version(&reply.headers)))
}

/// `crud`: cycles of POST, GET, PUT (with `If-Match` when the create told the version) and
/// DELETE of one new resource, the types taken in turn. A failed step ends its cycle.
async fn crud_cycles(
    target: &Target,
    workload: &Workload,
    index: usize,
    window: &Window,
    stats: &mut [ClientStats],
) {
    let templates = &workload.crud;
    if templates.is_empty() {
        record_error(&mut stats[0], "crud: no resource templates".into());
        return;
    }
    let fhir_json = "application/fhir+json";
    let mut cycle = index as u64;
    'cycles: loop {
        let template = &templates[cycle as usize % templates.len()];
        cycle += 1;
        let ty = template.resource_type;
        let mut instance = None::<(String, Option<i64>)>;
        for op in 0..CRUD_OPS.len() {
            if Instant::now() >= window.deadline || !window.budget.take() {
                break 'cycles;
            }
            let (request, expected, label) = match (op, &instance) {
                (0, _) => {
                    let request = target
                        .http
                        .post(format!("{}{ty}", target.fhir))
                        .header(header::CONTENT_TYPE, fhir_json)
                        .body(template.bytes.clone());
                    (request, vec![StatusCode::CREATED], format!("POST {ty}"))
                }
                (1, Some((id, _))) => {
                    let request = target.http.get(format!("{}{ty}/{id}", target.fhir));
                    (request, vec![StatusCode::OK], format!("GET {ty}/{id}"))
                }
                (2, Some((id, version))) => {
                    let mut request = target
                        .http
                        .put(format!("{}{ty}/{id}", target.fhir))
                        .header(header::CONTENT_TYPE, fhir_json)
                        .body(dataset::updated(template, id, cycle));
                    if let Some(version) = version {
                        request = request.header(header::IF_MATCH, format!("W/\"{version}\""));
                    }
                    (request, vec![StatusCode::OK], format!("PUT {ty}/{id}"))
                }
                (_, Some((id, _))) => {
                    let request = target.http.delete(format!("{}{ty}/{id}", target.fhir));
                    let ok = vec![StatusCode::OK, StatusCode::NO_CONTENT];
                    (request, ok, format!("DELETE {ty}/{id}"))
                }
                (_, None) => break,
            };
            let sent = Instant::now();
            let request = request.headers(target.auth.clone());
            match exchange_any(request, &expected, &label, sent).await {
                Ok(reply) => {
                    if op == 0 {
                        match created_id(&reply, ty) {
                            Some(created) => instance = Some(created),
                            None => {
                                let what = format!("{label}: no id in Location or body");
                                record_part_error(stats, Some(op), what);
                                continue 'cycles;
                            }
                        }
                    }
                    let resources = u64::from(op != 1);
                    record_part(stats, Some(op), window, sent, &reply, resources);
                }
                Err(what) => {
                    record_part_error(stats, Some(op), what);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue 'cycles;
                }
            }
        }
    }
}

/// Nearest-rank percentile of sorted values, in milliseconds.
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

/// Runs `scenario` with `clients` tasks: `warmup` unmeasured, then `duration` measured (or
/// until `max_requests` are spent). `page` is one pass by one client instead, however long it
/// takes. The first row is the total; scenarios with [`Scenario::parts`] add a row per part.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    target: &Arc<Target>,
    workload: &Arc<Workload>,
    scenario: Scenario,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    max_requests: Option<u64>,
    server_pid: Pids,
) -> anyhow::Result<Vec<RunResult>> {
    if scenario == Scenario::Page {
        return Ok(vec![search::page_all(target, server_pid).await]);
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let window = Window {
        measure_from,
        deadline: measure_from + duration,
        budget: Budget::new(max_requests),
    };
    let client_targets: Vec<Arc<Target>> = (0..clients).map(|index| target.node(index)).collect();
    let tasks: Vec<_> = (0..clients)
        .map(|index| {
            tokio::spawn(client_loop(
                client_targets[index].clone(),
                workload.clone(),
                scenario,
                index,
                window.clone(),
            ))
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let before = CpuSample::take(server_pid);
    let mut all = Vec::with_capacity(clients);
    for task in tasks {
        all.push(task.await.context("a client task panicked")?);
    }
    let after = CpuSample::take(server_pid);
    let end = all.iter().filter_map(|s| s[0].finished).max().unwrap_or_else(Instant::now);
    let seconds = end.saturating_duration_since(measure_from).as_secs_f64();
    let parts = scenario.parts();
    // What each node answered, by the base URL each client talked to.
    let mut per_node = vec![0; target.nodes.len()];
    if per_node.len() > 1 {
        for (client, stats) in client_targets.iter().zip(&all) {
            if let Some(node) = target.nodes.iter().position(|n| *n == client.fhir) {
                per_node[node] += stats[0].requests;
            }
        }
    }
    let mut columns: Vec<Vec<ClientStats>> = (0..=parts.len()).map(|_| Vec::new()).collect();
    for client in all {
        for (n, stats) in client.into_iter().enumerate() {
            columns[n].push(stats);
        }
    }
    let mut columns = columns.into_iter();
    let usage = sys::usage(&before, &after);
    let mut total =
        summarise(scenario, clients, columns.next().unwrap_or_default(), seconds, usage);
    if per_node.len() > 1 {
        let counts: Vec<String> = per_node.iter().map(u64::to_string).collect();
        total.notes.push(format!("requests per node: {}", counts.join(" / ")));
        total.per_node = per_node;
    }
    let mut rows = vec![total];
    for (part, stats) in parts.into_iter().zip(columns) {
        let mut row = summarise(scenario, clients, stats, seconds, Usage::default());
        row.part = Some(part);
        rows.push(row);
    }
    Ok(rows)
}

/// Merges what the clients did over `seconds` into one result row.
pub fn summarise(
    scenario: Scenario,
    clients: usize,
    all: Vec<ClientStats>,
    seconds: f64,
    usage: Usage,
) -> RunResult {
    let seconds = seconds.max(1e-9);
    let mut latencies: Vec<u32> = Vec::new();
    let (mut requests, mut resources, mut matches, mut errors) = (0, 0, 0, 0);
    let mut error_samples = Vec::new();
    for stats in all {
        latencies.extend_from_slice(&stats.latencies_us);
        requests += stats.requests;
        resources += stats.resources;
        matches += stats.matches;
        errors += stats.errors;
        error_samples.extend(stats.error_samples);
    }
    error_samples.truncate(MAX_SAMPLES);
    latencies.sort_unstable();
    let mean_ms = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().map(|&v| v as f64).sum::<f64>() / latencies.len() as f64 / 1000.0
    };
    RunResult {
        scenario,
        part: None,
        clients,
        requests,
        resources,
        matches,
        errors,
        error_samples,
        seconds,
        per_node: Vec::new(),
        p50_ms: percentile_ms(&latencies, 0.50),
        p90_ms: percentile_ms(&latencies, 0.90),
        p95_ms: percentile_ms(&latencies, 0.95),
        p99_ms: percentile_ms(&latencies, 0.99),
        max_ms: latencies.last().map_or(0.0, |&v| v as f64 / 1000.0),
        mean_ms,
        server_cpu: usage.server,
        bench_cpu: usage.bench,
        other_cpu: usage.other,
        idle: usage.idle,
        iowait: usage.iowait,
        repetitions: vec![requests as f64 / seconds],
        memory: None,
        notes: Vec::new(),
    }
}

/// The repetition with the median requests/s (of its total row), carrying every repetition's
/// rate and the errors of all of them on that row.
pub fn median(mut runs: Vec<Vec<RunResult>>) -> Vec<RunResult> {
    runs.retain(|rows| !rows.is_empty());
    if runs.is_empty() {
        return Vec::new();
    }
    let rates: Vec<f64> = runs.iter().map(|rows| rows[0].rate()).collect();
    let errors: u64 = runs.iter().map(|rows| rows[0].errors).sum();
    let mut samples: Vec<String> =
        runs.iter().flat_map(|rows| rows[0].error_samples.clone()).collect();
    samples.truncate(MAX_SAMPLES);
    runs.sort_by(|a, b| a[0].rate().total_cmp(&b[0].rate()));
    let mut chosen = runs.swap_remove(runs.len() / 2);
    chosen[0].repetitions = rates;
    chosen[0].errors = errors;
    chosen[0].error_samples = samples;
    chosen
}

/// Creates `count` patients with `concurrency` parallel requests; returns them with versions.
pub async fn seed_patients(
    target: &Target,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<SeededPatient>> {
    let target = Arc::new(Target {
        http: target.http.clone(),
        fhir: target.fhir.clone(),
        auth: target.auth.clone(),
        nodes: Vec::new(),
    });
    let workers = concurrency.clamp(1, count.max(1));
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for n in (worker..count).step_by(workers) {
                    let body = fixtures::patient(n as u64);
                    let res = target
                        .http
                        .post(format!("{}Patient", target.fhir))
                        .headers(target.auth.clone())
                        .header(header::CONTENT_TYPE, "application/fhir+json")
                        .body(serde_json::to_vec(&body)?)
                        .send()
                        .await
                        .context("POST Patient")?;
                    let status = res.status();
                    let version = etag_version(res.headers());
                    let text = res.text().await?;
                    if status != StatusCode::CREATED {
                        anyhow::bail!("seeding: POST Patient answered {status}: {text}");
                    }
                    let created: Value = serde_json::from_str(&text)?;
                    let id = created["id"].as_str().context("created Patient without id")?;
                    let mut body = body;
                    body["id"] = json!(id);
                    out.push(SeededPatient {
                        id: id.to_owned(),
                        body,
                        version: AtomicI64::new(version.context("created Patient without ETag")?),
                    });
                }
                Ok::<_, anyhow::Error>(out)
            })
        })
        .collect();
    let mut patients = Vec::with_capacity(count);
    for task in tasks {
        patients.extend(task.await.context("a seeding task panicked")??);
    }
    Ok(patients)
}

/// Seeds heart-rate Observations (LOINC 8867-4) about random seeded patients, in transactions
/// of 100, until the server holds [`ANCHOR_MATCHES`], for `search-anchor`.
pub async fn seed_anchor_observations(
    target: &Target,
    patients: &[SeededPatient],
) -> anyhow::Result<()> {
    // A server measured again (`--url`) keeps what earlier runs seeded: top it up only.
    let held = search::count(target, "Observation?code=http://loinc.org|8867-4&_summary=count")
        .await
        .map_err(anyhow::Error::msg)? as usize;
    let missing = ANCHOR_MATCHES.saturating_sub(held);
    let mut rng = Rng::new(8867 + held as u64);
    for chunk in 0..missing.div_ceil(100) {
        let entries: Vec<Value> = (0..100.min(missing - chunk * 100))
            .map(|n| {
                let patient = &patients[rng.below(patients.len())];
                let seed = (chunk * 100 + n) as u64;
                json!({
                    "resource": fixtures::vital(&format!("Patient/{}", patient.id), seed, 0),
                    "request": {"method": "POST", "url": "Observation"}
                })
            })
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let res = target
            .http
            .post(&target.fhir)
            .headers(target.auth.clone())
            .header(header::CONTENT_TYPE, "application/fhir+json")
            .header("Prefer", "return=minimal")
            .body(serde_json::to_vec(&bundle)?)
            .send()
            .await
            .context("POST transaction of heart rates")?;
        let status = res.status();
        if status != StatusCode::OK {
            anyhow::bail!("seeding heart rates: answered {status}: {}", res.text().await?);
        }
    }
    Ok(())
}

/// Observation bodies about random seeded patients.
pub fn observation_bodies(patients: &[SeededPatient], count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(42);
    (0..count)
        .map(|n| {
            let patient = &patients[rng.below(patients.len())];
            let obs = fixtures::observation(&format!("Patient/{}", patient.id), n as u64);
            serde_json::to_vec(&obs).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).map(|n| n * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.50), 50.0);
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
        assert_eq!(percentile_ms(&[7000], 0.99), 7.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn etags_parse() {
        let mut headers = header::HeaderMap::new();
        headers.insert(header::ETAG, "W/\"12\"".parse().unwrap());
        assert_eq!(etag_version(&headers), Some(12));
    }
}
