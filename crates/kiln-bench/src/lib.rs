//! `kiln bench`: measures a FHIR server over HTTP on loopback, the way FHIR servers are
//! compared: a CRUD cycle over nine resource types, a mix of US Core searches, transaction
//! ingest of whole patient records, and Bulk Data export, each for a fixed time at several
//! client counts, reporting throughput, latency percentiles and errors per operation (a
//! markdown table on stdout, optionally JSON). `anchor` runs the exact workload Medplum was
//! measured with on these machines (read by id, create Observation, a code search).
//!
//! By default it starts the running `kiln` executable as `kiln serve` in a fresh temporary data
//! directory on a free port and kills it at the end (also on error or Ctrl-C); `--url` targets
//! a running server instead, Kiln or any other FHIR server on loopback, with a login, a bearer
//! token, client credentials or no authentication. Exits non-zero if any request failed or
//! answered an unexpected status.
//!
//! The data comes from `kiln-synth` (generated in memory, the same for the same seed), or from
//! Synthea or Inferno files when pointed at them.

mod bulk;
mod bundles;
mod dataset;
mod fixtures;
mod load;
mod raw;
mod report;
mod search;
mod server;
mod synthea;
mod sys;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Url;
use reqwest::header::{self, HeaderMap, HeaderValue};

use crate::load::{RunResult, Scenario, Target, Workload};
use crate::report::RunInfo;
use crate::search::SearchPool;
use crate::server::{ServerGuard, SpawnOptions};
use crate::synthea::{LoadNotes, SyntheaData};
use crate::sys::Pids;

/// The command line of `kiln bench`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Workloads:
  crud     create, read, update and delete cycles over Patient, Encounter, Observation,
           Condition, MedicationRequest, Procedure, AllergyIntolerance, Immunization and
           DiagnosticReport (one row per operation)
  search   a mix of single-patient US Core searches, name, identifier, a chain, _include,
           _has and _summary=count over loaded patient records (one row per search)
  import   transaction Bundles of whole patient records, resources/s
  export   a system-level Bulk Data $export, kick-off to manifest, then its download
  anchor   Medplum's measured workload: GET Patient/{id}, POST Observation,
           Observation?code=http://loinc.org|8867-4&_count=10 (run it with --clients 32)
Single scenarios (read, create, update, search-name, ..., page, bulk-import) can be named too.

Examples:
  kiln bench crud search import --duration 10 --clients 1,32 --json bench.json
  kiln bench anchor --clients 32 --duration 10
  kiln bench crud --url http://127.0.0.1:8103/fhir/R4 --email admin@example.com --password medplum_admin
  kiln bench search --url http://127.0.0.1:8080/fhir --no-auth")]
pub struct BenchArgs {
    /// What to run, in order (see "Workloads" below).
    #[arg(value_enum, value_delimiter = ',', required = true)]
    pub workloads: Vec<Scenario>,
    /// The FHIR base URL of a running server to measure (loopback only), e.g.
    /// http://127.0.0.1:8103/fhir/R4. Without it, a fresh `kiln serve` is started. Several,
    /// comma-separated, are nodes of one server (one database): the data is loaded through the
    /// first, and measured clients are spread over all of them in turn (client i on node i mod n).
    #[arg(long = "url", value_delimiter = ',')]
    pub urls: Vec<String>,
    /// With --url: the server's process id(s), so that its CPU time is measured (one per node).
    #[arg(long = "server-pid", value_delimiter = ',', requires = "urls")]
    pub server_pids: Vec<u32>,
    /// Log in with Medplum's `/auth/login` as this user (the default; also the administrator
    /// seeded into a server this command starts).
    #[arg(long, env = "KILN_ADMIN_EMAIL", default_value = "admin@example.com")]
    pub email: String,
    #[arg(
        long,
        env = "KILN_ADMIN_PASSWORD",
        default_value = "medplum_admin",
        hide_env_values = true
    )]
    pub password: String,
    /// Send this bearer token instead of logging in.
    #[arg(long, env = "KILN_BENCH_TOKEN", hide_env_values = true, conflicts_with_all = ["client_id", "no_auth"])]
    pub token: Option<String>,
    /// Get a token with the client-credentials grant (HTTP Basic) instead of logging in; the
    /// token endpoint comes from `.well-known/smart-configuration`, else `/oauth2/token`.
    #[arg(long, requires = "client_secret", conflicts_with = "no_auth")]
    pub client_id: Option<String>,
    #[arg(long, env = "KILN_BENCH_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// Send no Authorization header (a server without authentication).
    #[arg(long)]
    pub no_auth: bool,
    /// Measured seconds per workload and client count.
    #[arg(long, alias = "seconds", default_value_t = 10)]
    pub duration: u64,
    /// Unmeasured seconds before each measurement (connections open, caches warm).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Runs of each workload and client count; the median (by requests/s) is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Concurrency levels: concurrent clients, each with one request in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub clients: Vec<usize>,
    /// At most this many requests per run (warm-up included), whatever --duration says.
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Patients created before read, create, update and anchor (they draw on them).
    #[arg(long, default_value_t = 1000)]
    pub seed_patients: usize,
    /// Synthetic patient records (`kiln synth`) loaded before search, export and bulk-import.
    #[arg(long, default_value_t = 50)]
    pub patients: u64,
    /// Seed of the synthetic records (the same seed gives the same data).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Load these Synthea bundles (a folder of transaction Bundles, shared `0-*` batches first)
    /// instead of synthetic records.
    #[arg(long)]
    pub synthea: Option<PathBuf>,
    /// Times the patient records are posted before search and export (each copy makes new
    /// resources); 0 loads nothing and searches what the server already holds.
    #[arg(long, alias = "synthea-copies", default_value_t = 1)]
    pub copies: usize,
    /// Concurrent clients loading the patient records.
    #[arg(long, alias = "synthea-clients", default_value_t = 4)]
    pub load_clients: usize,
    /// `import` posts the Inferno `uscore_bundle_patient_*.json` files of this folder instead of
    /// synthetic patient records.
    #[arg(long)]
    pub bundles: Option<PathBuf>,
    /// Write machine-readable results to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The `kiln` executable to start [default: this one].
    #[arg(long, conflicts_with = "urls")]
    pub kiln: Option<PathBuf>,
    /// Parent directory of the started server's temporary data directory [default: system temp].
    #[arg(long, conflicts_with = "urls")]
    pub data_parent: Option<PathBuf>,
    /// Durability of the started server: full (fsync per commit, its default) or normal.
    #[arg(long, value_parser = ["full", "normal"], conflicts_with = "urls")]
    pub durability: Option<String>,
    /// Start the server on this PostgreSQL database instead of SQLite. It should be empty: the
    /// load adds to whatever it holds. PostgreSQL's own CPU is counted as `other`.
    #[arg(long, conflicts_with = "urls")]
    pub database_url: Option<String>,
    /// Start this many `kiln serve` nodes on the --database-url database, behind one public
    /// base URL (as behind a load balancer), and spread the measured clients over them.
    #[arg(long, default_value_t = 1, conflicts_with = "urls")]
    pub nodes: usize,
    /// Limit each started node to this many CPUs with a Linux control group (needs root), e.g.
    /// 0.5: nodes then compare as machines of that size would, whatever else runs here.
    #[arg(long, conflicts_with = "urls")]
    pub node_cpus: Option<f64>,
}

/// Runs `kiln bench` to the end in its own runtime. `Ok(false)`: it ran, but requests failed.
pub fn main(args: BenchArgs) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

/// Starts (or finds) the server, runs the benchmark, and stops the server whatever happens.
/// `Ok(false)`: the benchmark ran but some requests failed.
pub async fn run(mut cli: BenchArgs) -> anyhow::Result<bool> {
    if cli.clients.is_empty() || cli.clients.contains(&0) {
        bail!("--clients needs positive numbers, e.g. 1,32");
    }
    if cli.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if cli.duration == 0 {
        bail!("--duration must be at least 1");
    }
    if cli.load_clients == 0 {
        bail!("--load-clients must be at least 1");
    }
    if cli.max_requests == Some(0) {
        bail!("--max-requests must be at least 1");
    }
    cli.workloads = Scenario::expand(&cli.workloads);
    let max_clients = cli.clients.iter().copied().max().unwrap_or(1);
    let needs_patients = cli.workloads.iter().any(|s| s.needs_seeded_patients());
    if needs_patients && cli.seed_patients == 0 {
        bail!("--seed-patients must be at least 1 for read, create, update and anchor");
    }
    if cli.workloads.contains(&Scenario::Update) && max_clients > cli.seed_patients {
        bail!(
            "update gives each client its own patient: --seed-patients must be >= the most clients"
        );
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_clients.max(32) * 2)
        .timeout(Duration::from_secs(300))
        .build()?;

    if cli.nodes == 0 || cli.nodes > sys::MAX_NODES {
        bail!("--nodes must be between 1 and {}", sys::MAX_NODES);
    }
    if cli.nodes > 1 && cli.database_url.is_none() {
        bail!(
            "--nodes {} needs --database-url: several nodes share one PostgreSQL database",
            cli.nodes
        );
    }
    if cli.node_cpus.is_some_and(|cpus| !(cpus.is_finite() && cpus > 0.0)) {
        bail!("--node-cpus must be a positive number of CPUs, e.g. 0.5");
    }
    if cli.urls.len() > sys::MAX_NODES {
        bail!("at most {} --url nodes", sys::MAX_NODES);
    }
    if !cli.server_pids.is_empty() && cli.server_pids.len() != cli.urls.len() {
        bail!("--server-pid needs one process id per --url node");
    }
    let (mut guards, nodes) = if cli.urls.is_empty() {
        spawn_nodes(&cli)?
    } else {
        let nodes = cli.urls.iter().map(|url| fhir_base(url)).collect::<anyhow::Result<_>>()?;
        (Vec::new(), nodes)
    };
    let outcome = tokio::select! {
        outcome = bench(&cli, http, &nodes, &mut guards) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if outcome.is_err() {
        for (n, guard) in guards.iter().enumerate() {
            let tail = guard.log_tail(15);
            if !tail.is_empty() {
                eprintln!("last lines of the log of node {}:\n{tail}", n + 1);
            }
        }
    }
    drop(guards); // kills the children and removes their data directories
    outcome
}

/// Starts `--nodes` `kiln serve` children at once (on one database when there are several, all
/// under the first one's base URL); returns them and their FHIR bases.
fn spawn_nodes(cli: &BenchArgs) -> anyhow::Result<(Vec<ServerGuard>, Vec<String>)> {
    let kiln = match &cli.kiln {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding the kiln executable")?,
    };
    let mut guards: Vec<ServerGuard> = Vec::with_capacity(cli.nodes);
    let mut nodes = Vec::with_capacity(cli.nodes);
    let mut public: Option<String> = None;
    for _ in 0..cli.nodes {
        let (guard, base) = ServerGuard::spawn(&SpawnOptions {
            kiln: &kiln,
            email: &cli.email,
            password: &cli.password,
            data_parent: cli.data_parent.as_deref(),
            durability: cli.durability.as_deref(),
            database_url: cli.database_url.as_deref(),
            public_base: public.as_deref(),
            cpus: cli.node_cpus,
        })?;
        public.get_or_insert_with(|| base.clone());
        guards.push(guard);
        nodes.push(format!("{base}fhir/R4/"));
    }
    Ok((guards, nodes))
}

/// `url` as a FHIR base ending in `/`, refused unless it is on loopback: the benchmark sends
/// thousands of requests a second and must not be aimed at someone else's server.
pub fn fhir_base(url: &str) -> anyhow::Result<String> {
    let parsed = Url::parse(url).with_context(|| format!("--url {url} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("--url must be http or https, not {}", parsed.scheme());
    }
    if !is_loopback(&parsed) {
        bail!(
            "--url {url} is not on this machine: kiln bench only talks to loopback \
             (127.0.0.0/8, ::1, localhost)"
        );
    }
    Ok(format!("{}/", url.trim_end_matches('/')))
}

/// Whether `url` points at this machine.
pub fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The server root of a FHIR base: Kiln's and Medplum's `…/fhir/R4/` sits under the root that
/// serves `/auth/login` and `/oauth2/token`; any other base is taken as its own root.
fn server_root(fhir: &str) -> String {
    match fhir.strip_suffix("fhir/R4/") {
        Some(root) => root.to_owned(),
        None => fhir.to_owned(),
    }
}

/// The Authorization header the run sends (none with --no-auth), and how it was obtained.
async fn authenticate(
    cli: &BenchArgs,
    http: &reqwest::Client,
    fhir: &str,
) -> anyhow::Result<(HeaderMap, String)> {
    if cli.no_auth {
        return Ok((HeaderMap::new(), "none".into()));
    }
    let token = if let Some(token) = &cli.token {
        (token.clone(), "a given bearer token".to_owned())
    } else if let (Some(id), Some(secret)) = (&cli.client_id, &cli.client_secret) {
        let endpoint = server::token_endpoint(http, fhir, &server_root(fhir)).await?;
        let parsed = Url::parse(&endpoint).with_context(|| format!("token endpoint {endpoint}"))?;
        if !is_loopback(&parsed) {
            bail!("the token endpoint {endpoint} is not on loopback");
        }
        let token = server::client_credentials(http, &endpoint, id, secret).await?;
        (token, format!("client credentials of {id}"))
    } else {
        let token = server::login(http, &server_root(fhir), &cli.email, &cli.password).await?;
        (token, format!("login of {}", cli.email))
    };
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.0))
        .context("the token cannot be sent in a header")?;
    value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);
    Ok((headers, token.1))
}

async fn bench(
    cli: &BenchArgs,
    http: reqwest::Client,
    nodes: &[String],
    guards: &mut [ServerGuard],
) -> anyhow::Result<bool> {
    let fhir = nodes[0].as_str();
    let software = if guards.is_empty() {
        let software = server::software(&http, fhir).await?;
        for node in &nodes[1..] {
            server::software(&http, node).await?;
        }
        software
    } else {
        let mut version = String::new();
        for (guard, node) in guards.iter_mut().zip(nodes) {
            let root = server_root(node);
            let health =
                server::wait_healthy(&http, &root, Some(guard), Duration::from_secs(60)).await?;
            version = health["version"].as_str().map(|v| format!("kiln {v}")).unwrap_or_default();
        }
        version
    };
    let (auth, auth_text) = authenticate(cli, &http, fhir).await?;
    let target = Arc::new(Target { http, fhir: fhir.to_owned(), auth, nodes: nodes.to_vec() });
    let server_pid = if guards.is_empty() {
        Pids::new(&cli.server_pids)
    } else {
        Pids::new(&guards.iter().map(ServerGuard::pid).collect::<Vec<_>>())
    };
    // What the server holds before this run adds anything (the export's notes tell them apart).
    let baseline = if cli.workloads.iter().any(|s| s.is_bulk()) {
        bulk::count_types(&target).await.map_err(anyhow::Error::msg)?
    } else {
        Default::default()
    };

    let needs_patients = cli.workloads.iter().any(|s| s.needs_seeded_patients());
    let patients = if needs_patients {
        eprintln!("seeding {} patients ...", cli.seed_patients);
        load::seed_patients(&target, cli.seed_patients, 32).await?
    } else {
        Vec::new()
    };
    if cli.workloads.contains(&Scenario::SearchAnchor) {
        eprintln!("seeding heart-rate Observations up to {} ...", load::ANCHOR_MATCHES);
        load::seed_anchor_observations(&target, &patients).await?;
    }
    let observations =
        if patients.is_empty() { Vec::new() } else { load::observation_bodies(&patients, 512) };
    let crud = if cli.workloads.contains(&Scenario::Crud) {
        dataset::crud_templates(cli.seed)?
    } else {
        Vec::new()
    };
    let (bundles, bundle_source) = if cli.workloads.contains(&Scenario::Ingest) {
        match &cli.bundles {
            Some(dir) => {
                let templates = bundles::load_inferno(dir)?;
                let sizes: Vec<String> =
                    templates.iter().map(|t| format!("{} ({})", t.name, t.resources)).collect();
                let text = format!(
                    "Inferno US Core transactions {}, replicated with fresh ids",
                    sizes.join(", ")
                );
                (templates, text)
            }
            None => {
                let (directory, templates) = dataset::ingest_templates(cli.seed)?;
                // The records point at a shared directory of organizations and clinicians.
                synthea::post_once(&target, &directory).await?;
                let entries: usize = templates.iter().map(|t| t.resources).sum();
                let text = format!(
                    "synthetic patient records (kiln synth, seed {}): {} transactions of {} entries on average, \
                     POSTed with fresh ids",
                    cli.seed,
                    templates.len(),
                    entries / templates.len().max(1)
                );
                (templates, text)
            }
        }
    } else {
        (Vec::new(), "-".into())
    };
    let mut results = Vec::new();
    let (search, search_data) = if cli.workloads.iter().any(|s| s.needs_synthea()) {
        let (pool, text) = prepare_search(cli, &target, server_pid, &mut results).await?;
        (pool, Some(text))
    } else {
        (SearchPool::default(), None)
    };
    let workload = Arc::new(Workload { patients, observations, bundles, search, crud });

    let info = RunInfo {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        nproc: sys::nproc(),
        cpu_model: sys::cpu_model(),
        kiln_version: software,
        git_commit: sys::git_commit(),
        server: describe_server(cli, guards, nodes),
        auth: auth_text,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        bundles: bundle_source,
        search_data,
        seconds: cli.duration,
        warmup: cli.warmup,
        repeat: cli.repeat,
    };

    // The manifest of the last export, for `bulk-import`.
    let mut exported = None;
    for &scenario in &cli.workloads {
        if scenario.is_bulk() {
            let rows = match scenario {
                Scenario::Export => {
                    let (rows, manifest) = bulk::export(&target, server_pid, &baseline).await;
                    exported = manifest.or(exported);
                    rows
                }
                _ => vec![bulk::import(&target, server_pid, exported.as_ref()).await],
            };
            for row in rows {
                progress(&row);
                results.push(row);
            }
            check_alive(guards)?;
            continue;
        }
        // `page` is one client's pass through everything, not a concurrency level.
        let levels = if scenario.runs_once() { vec![1] } else { cli.clients.clone() };
        for clients in levels {
            let mut runs = Vec::with_capacity(cli.repeat);
            for _ in 0..cli.repeat {
                runs.push(
                    load::run(
                        &target,
                        &workload,
                        scenario,
                        clients,
                        Duration::from_secs(cli.warmup),
                        Duration::from_secs(cli.duration),
                        cli.max_requests,
                        server_pid,
                    )
                    .await?,
                );
            }
            for row in load::median(runs) {
                progress(&row);
                results.push(row);
            }
            check_alive(guards)?;
        }
    }

    println!("{}", report::header(&info));
    println!("{}", report::markdown(&results));
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report::json(&info, &results))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    // Part rows repeat their total row's errors; report each failure once.
    let failed: Vec<_> = results.iter().filter(|r| r.errors > 0 && r.part.is_none()).collect();
    for r in &failed {
        eprintln!("{} x{}: {} failed requests; first ones:", r.name(), r.clients, r.errors);
        for sample in &r.error_samples {
            eprintln!("  {sample}");
        }
    }
    Ok(failed.is_empty())
}

fn check_alive(guards: &mut [ServerGuard]) -> anyhow::Result<()> {
    for (n, guard) in guards.iter_mut().enumerate() {
        if let Some(status) = guard.exited() {
            bail!("server node {} exited during the run ({status})", n + 1);
        }
    }
    Ok(())
}

/// The report's line about the server: what was started (or measured) and how requests spread.
fn describe_server(cli: &BenchArgs, guards: &[ServerGuard], nodes: &[String]) -> String {
    let spread = if nodes.len() > 1 {
        format!("; measured clients spread over the {} nodes in turn", nodes.len())
    } else {
        String::new()
    };
    let Some(first) = guards.first() else {
        return format!("external, {}{spread}", nodes.join(", "));
    };
    let store = match &cli.database_url {
        Some(_) => "PostgreSQL".to_owned(),
        None => format!("SQLite, durability {}", cli.durability.as_deref().unwrap_or("full")),
    };
    let limit = match cli.node_cpus {
        Some(cpus) => format!(", each limited to {cpus} CPUs by a control group"),
        None => String::new(),
    };
    if guards.len() == 1 {
        format!("child `kiln serve` ({store}{limit}), data in {}", first.data_dir().display())
    } else {
        format!(
            "{} child `kiln serve` nodes on one database ({store}{limit}){spread}",
            guards.len()
        )
    }
}

/// Loads the patient records (unless `--copies 0`), adding its row to `results`, then collects
/// the values the search scenarios draw on (if any runs). Returns them and a line for the
/// report.
async fn prepare_search(
    cli: &BenchArgs,
    target: &Arc<Target>,
    server_pid: Pids,
    results: &mut Vec<RunResult>,
) -> anyhow::Result<(SearchPool, String)> {
    let mut lines = Vec::new();
    if cli.copies > 0 {
        let data = Arc::new(match &cli.synthea {
            Some(dir) => SyntheaData::read(dir)?,
            None => dataset::synthetic_records(cli.patients, cli.seed)?,
        });
        eprintln!(
            "loading patient records: {} bundles, {} resources ...",
            data.shared.len() + cli.copies * data.patients.len(),
            report::thousands(data.resources(cli.copies) as f64)
        );
        let notes = Arc::new(LoadNotes::default());
        let result =
            synthea::load(target, &data, cli.copies, cli.load_clients, server_pid, &notes).await?;
        progress(&result);
        let minimal = if result.requests == 0 {
            "sent with `Prefer: return=minimal`; no answer to tell whether it was honoured"
        } else if notes.representation_returned.load(std::sync::atomic::Ordering::Relaxed) {
            "sent with `Prefer: return=minimal`, which the server did not honour (entries carried resources)"
        } else {
            "sent with `Prefer: return=minimal`, honoured"
        };
        if result.errors > 0 {
            bail!(
                "loading the patient records failed ({} bundles); first: {}",
                result.errors,
                result.error_samples.first().map(String::as_str).unwrap_or("?")
            );
        }
        results.push(result);
        lines.push(format!("{}; {minimal}", data.describe(cli.copies)));
    }
    if !cli.workloads.iter().any(|s| s.needs_search_data()) {
        return Ok((SearchPool::default(), lines.join("; ")));
    }
    eprintln!("collecting search values ...");
    let pool = search::collect_pool(target).await?;
    lines.push(pool.describe());
    Ok((pool, lines.join("; ")))
}

/// One line per finished row on stderr, while the run goes on.
fn progress(result: &RunResult) {
    let extra = match result.scenario {
        _ if result.counts_matches() => {
            format!("  {} matches counted/s", report::thousands(result.match_rate()))
        }
        s if s.counts_resources() => {
            format!("  {} resources/s", report::thousands(result.resource_rate()))
        }
        _ => String::new(),
    };
    eprintln!(
        "{:>24} x{:<3} {:>8} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}{extra}",
        result.name(),
        result.clients,
        report::thousands(result.rate()),
        result.p50_ms,
        result.p99_ms,
        result.errors,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert_eq!(
            fhir_base("http://127.0.0.1:8103/fhir/R4").unwrap(),
            "http://127.0.0.1:8103/fhir/R4/"
        );
        assert!(fhir_base("http://localhost:8080/fhir/").is_ok());
        assert!(fhir_base("https://[::1]:8443/fhir/R4/").is_ok());
        assert!(fhir_base("http://127.5.0.1/fhir").is_ok());
        assert!(fhir_base("http://example.org/fhir/R4").is_err());
        assert!(fhir_base("http://10.0.0.1/fhir/R4").is_err());
        assert!(fhir_base("http://localhost.example.org/fhir").is_err());
        assert!(fhir_base("ftp://127.0.0.1/fhir").is_err());
        assert!(fhir_base("not a url").is_err());
    }

    #[test]
    fn the_root_is_under_fhir_r4() {
        assert_eq!(server_root("http://127.0.0.1:1/fhir/R4/"), "http://127.0.0.1:1/");
        assert_eq!(server_root("http://127.0.0.1:1/baseR4/"), "http://127.0.0.1:1/baseR4/");
    }
}
