//! `kiln-bench`: measures a Kiln server over HTTP on loopback, the way FHIR servers are
//! measured: single-resource read, create and update, and transaction-bundle ingest, each for a
//! fixed time at several client counts, reporting throughput and latency percentiles. The search
//! scenarios (opt-in) first load the Synthea data, then query values drawn from it; the bulk
//! scenarios (opt-in, `export` and `import`) load it too, then run one Bulk Data job each.
//!
//! By default it starts `target/release/kiln serve` itself in a fresh temporary data directory on
//! a free port and kills it at the end (also on error or Ctrl-C); `--url` targets a running
//! server instead. Exits non-zero if any request failed or answered an unexpected status.

mod bulk;
mod bundles;
mod fixtures;
mod load;
mod raw;
mod report;
mod search;
mod server;
mod synthea;
mod sys;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::load::{RunResult, Scenario, Target, Workload};
use crate::report::RunInfo;
use crate::search::SearchPool;
use crate::server::{ServerGuard, SpawnOptions};
use crate::synthea::{LoadNotes, SyntheaData};

#[derive(Parser, Debug)]
#[command(name = "kiln-bench", version, about = "Load generator for the Kiln FHIR server")]
struct Cli {
    /// The `kiln` binary to start (ignored with --url).
    #[arg(long, default_value = "target/release/kiln")]
    kiln: PathBuf,
    /// Benchmark an already running server at this base URL instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// With --url: the server's process id, so that its CPU time is measured.
    #[arg(long, requires = "url")]
    server_pid: Option<u32>,
    /// Administrator to log in as (also seeded into a server this tool starts).
    #[arg(long, env = "KILN_ADMIN_EMAIL", default_value = "admin@example.com")]
    email: String,
    #[arg(long, env = "KILN_ADMIN_PASSWORD", default_value = "medplum_admin")]
    password: String,
    /// Measured seconds per scenario and client count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured seconds before each measurement (connections open, caches warm).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Runs of each scenario and client count; the median (by requests/s) is reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Concurrency levels: concurrent clients, each with one request in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    clients: Vec<usize>,
    /// Scenarios to run, in order. The search scenarios (search-name, search-patient-obs,
    /// search-count, search-chain, search-include, search-has, page) and the bulk ones (export,
    /// import) are opt-in: they load the Synthea data first. `page` runs once with one client,
    /// whatever --clients and --seconds say; `export` and `import` run one job each, whatever
    /// --repeat says too (`import` reads the files of the `export` before it, or of one it runs
    /// untimed).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "read,create,update,ingest")]
    scenarios: Vec<Scenario>,
    /// Patients created before the runs (read, create and update draw on them).
    #[arg(long, default_value_t = 1000)]
    patients: usize,
    /// Folder with the Inferno `uscore_bundle_patient_*.json` files
    /// [default: ../shared/data/examples/inferno-reference-server-data-current if present].
    #[arg(long)]
    bundles: Option<PathBuf>,
    /// Ingest synthetic bundles (1 Patient + ~100 resources) even if the Inferno data is present.
    #[arg(long)]
    synthetic: bool,
    /// Folder with the Synthea bundles loaded before the search scenarios
    /// [default: ../shared/data/synthea beside the repository if present].
    #[arg(long)]
    synthea: Option<PathBuf>,
    /// Times the Synthea patient bundles are posted (each copy makes new resources); 0 loads
    /// nothing and searches what the server already holds.
    #[arg(long, default_value_t = 1)]
    synthea_copies: usize,
    /// Concurrent clients posting the Synthea bundles.
    #[arg(long, default_value_t = 4)]
    synthea_clients: usize,
    /// Write machine-readable results to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Parent directory of the started server's temporary data directory [default: system temp].
    #[arg(long)]
    data_parent: Option<PathBuf>,
    /// Durability of the started server: full (fsync per commit, its default) or normal.
    #[arg(long, value_parser = ["full", "normal"])]
    durability: Option<String>,
    /// Start the server on this PostgreSQL database instead of SQLite. It should be empty: the
    /// load adds to whatever it holds. PostgreSQL's own CPU is counted as `other`.
    #[arg(long)]
    database_url: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts (or finds) the server, runs the benchmark, and stops the server whatever happens.
/// `Ok(false)`: the benchmark ran but some requests failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    if cli.clients.is_empty() || cli.clients.contains(&0) {
        bail!("--clients needs positive numbers, e.g. 1,32");
    }
    if cli.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if cli.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    if cli.synthea_clients == 0 {
        bail!("--synthea-clients must be at least 1");
    }
    let max_clients = cli.clients.iter().copied().max().unwrap_or(1);
    let needs_patients = cli.scenarios.iter().any(|s| s.needs_seeded_patients());
    if needs_patients && cli.patients == 0 {
        bail!("--patients must be at least 1 for read, create and update");
    }
    if cli.scenarios.contains(&Scenario::Update) && max_clients > cli.patients {
        bail!("update gives each client its own patient: --patients must be >= the most clients");
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_clients.max(32) * 2)
        .timeout(Duration::from_secs(300))
        .build()?;

    let (mut guard, base) = match &cli.url {
        Some(url) => (None, format!("{}/", url.trim_end_matches('/'))),
        None => {
            let (guard, base) = ServerGuard::spawn(&SpawnOptions {
                kiln: &cli.kiln,
                email: &cli.email,
                password: &cli.password,
                data_parent: cli.data_parent.as_deref(),
                durability: cli.durability.as_deref(),
                database_url: cli.database_url.as_deref(),
            })?;
            (Some(guard), base)
        }
    };
    let outcome = tokio::select! {
        outcome = bench(&cli, http, &base, guard.as_mut()) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if outcome.is_err()
        && let Some(guard) = &guard
    {
        let tail = guard.log_tail(15);
        if !tail.is_empty() {
            eprintln!("last lines of the server log:\n{tail}");
        }
    }
    drop(guard); // kills the child and removes its data directory
    outcome
}

async fn bench(
    cli: &Cli,
    http: reqwest::Client,
    base: &str,
    mut guard: Option<&mut ServerGuard>,
) -> anyhow::Result<bool> {
    let health =
        server::wait_healthy(&http, base, guard.as_deref_mut(), Duration::from_secs(60)).await?;
    let token = server::login(&http, base, &cli.email, &cli.password).await?;
    let target = Arc::new(Target {
        http,
        fhir: format!("{base}fhir/R4/"),
        authorization: format!("Bearer {token}"),
    });
    let server_pid = guard.as_ref().map(|g| g.pid()).or(cli.server_pid);
    // What the server holds before this run adds anything (the export's notes tell them apart).
    let baseline = if cli.scenarios.iter().any(|s| s.is_bulk()) {
        bulk::count_types(&target).await.map_err(anyhow::Error::msg)?
    } else {
        Default::default()
    };

    let needs_patients = cli.scenarios.iter().any(|s| s.needs_seeded_patients());
    let patients = if needs_patients {
        eprintln!("seeding {} patients ...", cli.patients);
        load::seed_patients(&target, cli.patients, 32).await?
    } else {
        Vec::new()
    };
    let observations =
        if patients.is_empty() { Vec::new() } else { load::observation_bodies(&patients, 512) };
    let (bundles, bundle_source) = if cli.scenarios.contains(&Scenario::Ingest) {
        let dir = if cli.synthetic {
            None
        } else {
            cli.bundles.clone().or_else(bundles::default_inferno_dir)
        };
        match dir {
            Some(dir) => {
                let templates = bundles::load_inferno(&dir)?;
                let sizes: Vec<String> =
                    templates.iter().map(|t| format!("{} ({})", t.name, t.resources)).collect();
                let text = format!(
                    "Inferno US Core transactions {}, replicated with fresh ids",
                    sizes.join(", ")
                );
                (templates, text)
            }
            None => {
                let templates = bundles::synthetic(4, 101)?;
                (templates, "synthetic transactions of 101 resources (1 Patient + 100)".into())
            }
        }
    } else {
        (Vec::new(), "-".into())
    };
    let mut results = Vec::new();
    let (search, search_data) = if cli.scenarios.iter().any(|s| s.needs_synthea()) {
        let (pool, text) = prepare_search(cli, &target, server_pid, &mut results).await?;
        (pool, Some(text))
    } else {
        (SearchPool::default(), None)
    };
    let workload = Arc::new(Workload { patients, observations, bundles, search });

    let info = RunInfo {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        nproc: sys::nproc(),
        cpu_model: sys::cpu_model(),
        kiln_version: health["version"].as_str().unwrap_or("unknown").to_owned(),
        git_commit: sys::git_commit(),
        server: match guard.as_ref() {
            Some(g) => format!(
                "child `kiln serve` ({}, built {}, {}), data in {}",
                cli.kiln.display(),
                modified(&cli.kiln),
                match &cli.database_url {
                    Some(_) => "PostgreSQL".to_owned(),
                    None => format!(
                        "SQLite, durability {}",
                        cli.durability.as_deref().unwrap_or("full")
                    ),
                },
                g.data_dir().display()
            ),
            None => format!("external, {base}"),
        },
        command: std::env::args().collect::<Vec<_>>().join(" "),
        bundles: bundle_source,
        search_data,
        seconds: cli.seconds,
        warmup: cli.warmup,
        repeat: cli.repeat,
    };

    // The manifest of the last export, for `import`.
    let mut exported = None;
    for &scenario in &cli.scenarios {
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
            if let Some(guard) = guard.as_deref_mut()
                && let Some(status) = guard.exited()
            {
                bail!("the server exited during the run ({status})");
            }
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
                        Duration::from_secs(cli.seconds),
                        server_pid,
                    )
                    .await?,
                );
            }
            let result = load::median(runs);
            progress(&result);
            results.push(result);
            if let Some(guard) = guard.as_deref_mut()
                && let Some(status) = guard.exited()
            {
                bail!("the server exited during the run ({status})");
            }
        }
    }

    println!("{}", report::header(&info));
    println!("{}", report::markdown(&results));
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report::json(&info, &results))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let failed: Vec<_> = results.iter().filter(|r| r.errors > 0).collect();
    for r in &failed {
        eprintln!(
            "{} x{}: {} failed requests; first ones:",
            r.scenario.name(),
            r.clients,
            r.errors
        );
        for sample in &r.error_samples {
            eprintln!("  {sample}");
        }
    }
    Ok(failed.is_empty())
}

/// Loads the Synthea data (unless `--synthea-copies 0`), adding its row to `results`, then
/// collects the values the search scenarios draw on (if any runs). Returns them and a line for
/// the report.
async fn prepare_search(
    cli: &Cli,
    target: &Arc<Target>,
    server_pid: Option<u32>,
    results: &mut Vec<RunResult>,
) -> anyhow::Result<(SearchPool, String)> {
    let mut lines = Vec::new();
    if cli.synthea_copies > 0 {
        let dir = cli.synthea.clone().or_else(synthea::default_dir).context(
            "no Synthea data: pass --synthea DIR, or --synthea-copies 0 to search what the server holds",
        )?;
        let data = Arc::new(SyntheaData::read(&dir)?);
        eprintln!(
            "loading Synthea: {} bundles, {} resources ...",
            data.shared.len() + cli.synthea_copies * data.patients.len(),
            report::thousands(data.resources(cli.synthea_copies) as f64)
        );
        let notes = Arc::new(LoadNotes::default());
        let result = synthea::load(
            target,
            &data,
            cli.synthea_copies,
            cli.synthea_clients,
            server_pid,
            &notes,
        )
        .await?;
        progress(&result);
        let minimal = if result.requests == 0 {
            "sent with `Prefer: return=minimal`; no answer to tell whether it was honoured"
        } else if notes.representation_returned.load(std::sync::atomic::Ordering::Relaxed) {
            "sent with `Prefer: return=minimal`, which the server did not honour (entries carried resources)"
        } else {
            "sent with `Prefer: return=minimal`, honoured"
        };
        results.push(result);
        lines.push(format!("{}; {minimal}", data.describe(cli.synthea_copies)));
    }
    if !cli.scenarios.iter().any(|s| s.needs_search_data()) {
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
        Scenario::SearchCount => {
            format!("  {} matches counted/s", report::thousands(result.match_rate()))
        }
        s if s.counts_resources() => {
            format!("  {} resources/s", report::thousands(result.resource_rate()))
        }
        _ => String::new(),
    };
    eprintln!(
        "{:>6} x{:<3} {:>8} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}{extra}",
        result.scenario.name(),
        result.clients,
        report::thousands(result.rate()),
        result.p50_ms,
        result.p99_ms,
        result.errors,
    );
}

/// When a file was last modified, in UTC (for "which build did we measure").
fn modified(path: &std::path::Path) -> String {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| chrono::DateTime::<chrono::Utc>::from(t).format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| "at an unknown time".into())
}
