//! The store's share of write cost, without HTTP, validation or extraction: the Synthea patient
//! transactions, prepared once (fresh ids, `urn:uuid` references made local, index entries
//! extracted), then written through `Store::write` by a few concurrent tasks, as the server's
//! handlers do. Reports resources/s, process CPU per resource and, on SQLite, the writer
//! thread's CPU per resource (the part that cannot run in parallel).
//!
//! ```sh
//! cargo run --release -p kiln-bench --example store_write -- --synthea ../shared/data/synthea
//! cargo run --release -p kiln-bench --example store_write -- --backend postgres \
//!     --database-url postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! `--no-index` writes the same resources without index entries: the cost of a write before
//! search existed, to compare with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use kiln_store::{Atomicity, Precondition, ProjectId, Store, WriteMethod, WriteOp};
use serde_json::Value;

#[derive(Parser, Debug)]
struct Cli {
    /// Folder with the Synthea bundles.
    #[arg(long, default_value = "../shared/data/synthea")]
    synthea: PathBuf,
    /// Times every patient bundle is written (each copy with new ids).
    #[arg(long, default_value_t = 2)]
    copies: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, value_parser = ["sqlite", "postgres"], default_value = "sqlite")]
    backend: String,
    /// PostgreSQL URL (each run works in a fresh schema, dropped at the end).
    #[arg(long, env = "KILN_TEST_DATABASE_URL")]
    database_url: Option<String>,
    /// Parent of the SQLite data directory [default: system temp]. Use a real disk.
    #[arg(long)]
    data_parent: Option<PathBuf>,
    /// Keep the SQLite database in this folder (for inspection) instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Write without index entries (the cost before search).
    #[arg(long)]
    no_index: bool,
}

/// One prepared transaction: its ops and the resources they hold.
struct Job {
    ops: Vec<WriteOp>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bundles = read_bundles(&cli.synthea)?;
    let started = Instant::now();
    let mut jobs = Vec::new();
    for _ in 0..cli.copies {
        for bundle in &bundles {
            jobs.push(prepare(bundle, !cli.no_index));
        }
    }
    let resources: usize = jobs.iter().map(|j| j.ops.len()).sum();
    let rows: usize = jobs
        .iter()
        .flat_map(|j| &j.ops)
        .map(|op| match op {
            WriteOp::Put { index, .. } | WriteOp::Reindex { index, .. } => index.len(),
            WriteOp::Delete { .. } => 0,
        })
        .sum();
    eprintln!(
        "prepared {} transactions, {resources} resources, {rows} index entries in {:.1} s",
        jobs.len(),
        started.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(&cli, jobs, resources))
}

async fn run(cli: &Cli, jobs: Vec<Job>, resources: usize) -> anyhow::Result<()> {
    if let Some(keep) = &cli.keep {
        std::fs::create_dir_all(keep)?;
    }
    let tmp = match &cli.data_parent {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    };
    let schema = format!("store_write_{}", std::process::id());
    let store: Arc<dyn Store> = match cli.backend.as_str() {
        "sqlite" => Arc::new(
            kiln_store_sqlite::SqliteStore::open(
                cli.keep.as_deref().unwrap_or(tmp.path()),
                Default::default(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        _ => {
            let url = cli.database_url.as_deref().context("--database-url is needed")?;
            Arc::new(
                kiln_store_postgres::PostgresStore::connect(url, Some(&schema))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
        }
    };
    let project = ProjectId::new(uuid::Uuid::new_v4().to_string());
    let jobs: Arc<Vec<std::sync::Mutex<Option<Job>>>> =
        Arc::new(jobs.into_iter().map(|j| std::sync::Mutex::new(Some(j))).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let io_before = written_bytes();
    let cpu_before = process_cpu();
    let pg_before = processes_cpu("postgres");
    let writer_before = thread_cpu("kiln-sqlite-wri");
    let started = Instant::now();
    let tasks: Vec<_> = (0..cli.clients)
        .map(|_| {
            let (store, jobs, next, project) =
                (store.clone(), jobs.clone(), next.clone(), project.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = jobs.get(n) else { return Ok(()) };
                    let job = slot.lock().unwrap().take().unwrap();
                    let results = store
                        .write(&project, job.ops, Atomicity::All)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                        bail!("a write failed: {e}");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu_before;
    let writer = thread_cpu("kiln-sqlite-wri") - writer_before;
    let written = written_bytes() - io_before;
    let pg = processes_cpu("postgres") - pg_before;
    store.close().await;
    if cli.backend == "sqlite" {
        let size = |name: &str| std::fs::metadata(tmp.path().join(name)).map_or(0, |m| m.len());
        eprintln!("kiln.db: {:.1} MB", size("kiln.db") as f64 / 1e6);
    }
    if cli.backend == "postgres"
        && let Some(url) = &cli.database_url
    {
        kiln_store_postgres::PostgresStore::drop_schema(url, &schema)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let per = |s: f64| s * 1e6 / resources as f64;
    let server = if cli.backend == "postgres" {
        format!("; PostgreSQL processes {:.1} µs/resource", per(pg))
    } else {
        format!(
            "; writer thread {:.1} µs/resource; {:.1} KB written/resource",
            per(writer),
            written as f64 / 1024.0 / resources as f64
        )
    };
    println!(
        "{} {}: {resources} resources in {seconds:.2} s: {:.0} resources/s; CPU {:.1} µs/resource (this process){server}",
        cli.backend,
        if cli.no_index { "without index" } else { "indexed" },
        resources as f64 / seconds,
        per(cpu),
    );
    Ok(())
}

/// The patient transaction bundles of `dir` (not the shared `0-…` batches).
fn read_bundles(dir: &PathBuf) -> anyhow::Result<Vec<Value>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".json") && !name.starts_with("0-") && name != "MANIFEST.json"
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let text = std::fs::read(&path)?;
        out.push(serde_json::from_slice(&text)?);
    }
    if out.is_empty() {
        bail!("no Synthea patient bundles in {}", dir.display());
    }
    Ok(out)
}

/// A bundle's resources with fresh ids and local references, as the engine hands them over.
fn prepare(bundle: &Value, index: bool) -> Job {
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let mut ids = HashMap::new();
    let mut resources = Vec::new();
    for entry in entries {
        let Some(mut resource) = entry.get("resource").cloned() else { continue };
        let ty = resource["resourceType"].as_str().unwrap_or_default().to_owned();
        let id = uuid::Uuid::new_v4().to_string();
        if let Some(full) = entry["fullUrl"].as_str() {
            ids.insert(full.to_owned(), format!("{ty}/{id}"));
        }
        resource["id"] = Value::String(id);
        resources.push(resource);
    }
    let ops = resources
        .into_iter()
        .map(|mut resource| {
            localise(&mut resource, &ids);
            let index = if index { kiln_search::extract(&resource) } else { Vec::new() };
            WriteOp::Put {
                resource,
                method: WriteMethod::Post,
                precondition: Precondition::MustNotExist,
                unique_keys: Vec::new(),
                index,
            }
        })
        .collect();
    Job { ops }
}

fn localise(value: &mut Value, ids: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "reference"
                    && let Value::String(s) = v
                    && let Some(local) = ids.get(s.as_str())
                {
                    *s = local.clone();
                } else {
                    localise(v, ids);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| localise(v, ids)),
        _ => {}
    }
}

/// Bytes this process has passed to `write`-like calls so far (`wchar` of `/proc/self/io`).
fn written_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) of this process so far.
fn process_cpu() -> f64 {
    stat_cpu("/proc/self/stat")
}

/// CPU seconds of this process's threads named `name` (Linux truncates names to 15 bytes).
fn thread_cpu(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .map(|t| stat_cpu(&t.path().join("stat").to_string_lossy()))
        .sum()
}

/// CPU seconds of every process named `name` (e.g. the PostgreSQL server's backends; other
/// clients of the same server count too).
fn processes_cpu(name: &str) -> f64 {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0.0 };
    procs
        .filter_map(|p| p.ok())
        .filter(|p| {
            std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .map(|p| stat_cpu(&p.path().join("stat").to_string_lossy()))
        .sum()
}

fn stat_cpu(path: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(path) else { return 0.0 };
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let Some(rest) = text.rfind(')').map(|i| &text[i + 2..]) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    ticks / 100.0
}
