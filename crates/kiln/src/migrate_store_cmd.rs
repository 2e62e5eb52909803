//! `kiln migrate-store --from sqlite:DIR --to postgres://…`: copies an embedded store into
//! PostgreSQL and proves the copy complete (docs/DEPLOYMENT.md, "Moving from the embedded
//! store to PostgreSQL").
//!
//! Data flow. The source is opened with `kiln_store_sqlite::SqliteDump`, which takes the
//! database file for itself (refused while a server has it open) and runs the normal
//! migrations; the target with `PostgresStore::connect`, which runs its own. Both must then be
//! at the same schema version. The load is one PostgreSQL transaction
//! (`kiln_store_postgres::RawLoader`): every table locked, emptied, and filled table by table,
//! a blocking thread reading the SQLite rows in batches and hashing them into the source
//! [`Digest`] while this task streams each batch into one binary `COPY` per table (a bounded
//! channel between them, so memory stays a few batches whatever the store's size). Every row
//! is copied as stored: ids, versions, `lastUpdated`, `seq` (history order and `_since`), row
//! ids, the search index rows and their parameter keys, unique keys, settings (signing keys,
//! `kiln.url-key`, …), the job queue and event counters. Before committing, the loaded tables
//! are read back inside the same transaction into the target [`Digest`], and the `binary/`
//! files are loaded as blobs in the same transaction (or copied to `--to-data-dir`) and
//! re-read; any difference rolls the whole load back, so a failed
//! migration leaves the target as it was. `--verify-only` compares a finished migration the
//! same way, copying nothing.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_store::raw::{BatchLimits, Difference, Digest, RawBatch, RawTable, SERVER_WIDE};
use kiln_store::sql::Table;
use kiln_store::{BlobError, BlobStore, ProjectId, Store, StoreError};
use kiln_store_postgres::{PgBlobStore, PostgresStore, RawLoader};
use kiln_store_sqlite::SqliteDump;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

#[derive(Args, Debug)]
pub struct MigrateStoreArgs {
    /// The embedded store to copy: `sqlite:DIR`, DIR being the `--data-dir` its server ran
    /// with (holding `db/kiln.db` and `binary/`). Stop that server first.
    #[arg(long)]
    from: String,
    /// The PostgreSQL database to fill, `postgres://user[:password]@host[:port]/database`. Its
    /// schema is created or brought up to date first, as `kiln migrate` does.
    #[arg(long)]
    to: String,
    /// Copy Binary content and bulk files into this directory's `binary/` folder, for nodes
    /// running with `--binary-storage files --data-dir DIR`. Without it they are loaded into
    /// the database (in the same transaction as the rows), where nodes with the default
    /// `--binary-storage database` read them whatever their `--data-dir`.
    #[arg(long)]
    to_data_dir: Option<PathBuf>,
    /// Replace what the target holds: without it a target database with any row in it is
    /// refused, and so is a file under the target `binary/` that differs from the source's.
    #[arg(long)]
    force: bool,
    /// Copy nothing: compare the source with the target (counts and checksums per table and
    /// project, and every binary file, in the database or under --to-data-dir) and report.
    #[arg(long)]
    verify_only: bool,
    /// Rows per batch read from the source and streamed to PostgreSQL.
    #[arg(long, default_value_t = 5_000)]
    batch_rows: usize,
}

pub async fn run(args: MigrateStoreArgs) -> anyhow::Result<()> {
    let Some(source_dir) = args.from.strip_prefix("sqlite:").map(PathBuf::from) else {
        bail!(
            "--from must be sqlite:DIR (the data directory of an embedded store), not {}",
            args.from
        );
    };
    if !(args.to.starts_with("postgres://") || args.to.starts_with("postgresql://")) {
        bail!("--to must be a postgres:// URL, not {}", crate::redact_password(&args.to));
    }
    if !source_dir.is_dir() {
        bail!("the source directory {} does not exist", source_dir.display());
    }
    let limits = BatchLimits { rows: args.batch_rows.max(1), ..BatchLimits::default() };
    let target_text = crate::redact_password(&args.to);

    let dump = {
        let db = source_dir.join("db");
        tokio::task::spawn_blocking(move || SqliteDump::open(&db))
            .await?
            .with_context(|| format!("opening the source store in {}", source_dir.display()))?
    };
    let target = PostgresStore::connect(&args.to, None)
        .await
        .with_context(|| format!("connecting to the target database {target_text}"))?;
    let target_version =
        target.schema_version().await.context("reading the target's schema version")?;
    if dump.schema_version() != target_version {
        bail!(
            "schema versions differ: the source is at {}, the target at {target_version}; run \
             `kiln migrate` on both with the same Kiln first",
            dump.schema_version()
        );
    }
    println!(
        "kiln migrate-store: sqlite in {} -> postgres at {target_text} (schema version {target_version})",
        source_dir.display()
    );

    let binaries = Binaries::plan(&source_dir, args.to_data_dir.as_deref())?;
    let started = Instant::now();
    let outcome = if args.verify_only {
        verify_only(dump, &target, &binaries, limits).await
    } else {
        migrate(dump, &target, &binaries, limits, args.force).await
    };
    let result = match outcome {
        Ok(report) => {
            report.print(started.elapsed(), args.verify_only);
            if report.ok() {
                Ok(())
            } else if args.verify_only {
                Err(anyhow::anyhow!(
                    "verification failed: the target differs from the source ({} differences)",
                    report.problems()
                ))
            } else {
                Err(anyhow::anyhow!(
                    "verification failed ({} differences): nothing was committed to the target",
                    report.problems()
                ))
            }
        }
        Err(e) => Err(e),
    };
    target.close().await;
    result
}

/// Copies, verifies, and commits only a verified copy.
async fn migrate(
    dump: SqliteDump,
    target: &PostgresStore,
    binaries: &Binaries,
    limits: BatchLimits,
    force: bool,
) -> anyhow::Result<Report> {
    let loader = target.raw_loader().await.context("starting the load")?;
    let present: Vec<(RawTable, u64)> =
        loader.counts().await?.into_iter().filter(|(_, n)| *n > 0).collect();
    if !present.is_empty() && !force {
        let what: Vec<String> = present.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        bail!(
            "the target database is not empty ({}); use --force to replace its contents",
            what.join(", ")
        );
    }
    if !force && let Some(conflict) = binaries.first_conflict()? {
        bail!("{} already exists with other content; use --force to overwrite", conflict.display());
    }
    loader.clear().await.context("emptying the target tables")?;

    // Source rows, for progress.
    let (dump, totals) = tokio::task::spawn_blocking(move || {
        let mut totals = BTreeMap::new();
        for table in RawTable::ALL {
            match dump.count(table) {
                Ok(n) => {
                    totals.insert(table, n);
                }
                Err(e) => return (dump, Err(e)),
            }
        }
        (dump, Ok(totals))
    })
    .await?;
    let totals = totals.context("counting the source rows")?;
    let progress = Progress::new(totals.values().sum(), "copying");

    let mut source = Digest::new();
    let mut timings = Vec::new();
    let mut dump = dump;
    for table in RawTable::ALL {
        let begun = Instant::now();
        let (back, digest, rows) = copy_table(dump, source, &loader, table, limits, &progress)
            .await
            .with_context(|| format!("copying {table}"))?;
        (dump, source) = (back, digest);
        timings.push((table, rows, begun.elapsed()));
        progress.line(&format!(
            "  {table:<14} {rows:>12} rows  {:>8.1} s",
            begun.elapsed().as_secs_f64()
        ));
    }
    drop(dump); // lets go of the source database
    let copy_time = progress.finish();

    let check = Progress::new(totals.values().sum(), "verifying");
    let mut loaded = Digest::new();
    for table in RawTable::ALL {
        loader
            .scan(table, limits, |batch| {
                check.inc(batch.len() as u64);
                loaded.add(&batch);
                Ok(())
            })
            .await
            .with_context(|| format!("reading back {table}"))?;
    }
    let verify_time = check.finish();

    let files = binaries.copy(force, &loader).await?;
    let report = Report {
        differences: source.differences(&loaded),
        source,
        target: loaded,
        files,
        copied: Some((copy_time, verify_time)),
    };
    if report.ok() {
        loader.commit().await.context("committing the load")?;
        target.analyze().await.context("analysing the loaded tables")?;
    } else {
        loader.rollback().await.context("rolling the load back")?;
    }
    Ok(report)
}

/// Copies one table: a blocking thread reads and hashes the source rows while this task
/// streams them into a `COPY`. Returns the dump and the digest for the next table.
async fn copy_table(
    dump: SqliteDump,
    mut digest: Digest,
    loader: &RawLoader,
    table: RawTable,
    limits: BatchLimits,
    progress: &Progress,
) -> anyhow::Result<(SqliteDump, Digest, u64)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RawBatch>(4);
    let reader = tokio::task::spawn_blocking(move || {
        let res = dump.scan(table, limits, |batch| {
            digest.add(&batch);
            tx.blocking_send(batch).map_err(|_| StoreError::Internal("the copy stopped".into()))
        });
        (dump, digest, res)
    });
    let mut copy = loader.copy(table).await?;
    let mut failed = None;
    while let Some(batch) = rx.recv().await {
        if let Err(e) = copy.write(&batch).await {
            failed = Some(e);
            break;
        }
        progress.inc(batch.len() as u64);
    }
    drop(rx); // a reader still sending stops
    let (dump, digest, read) = reader.await?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    read.context("reading the source")?;
    let rows = copy.finish().await?;
    Ok((dump, digest, rows))
}

/// Compares source and target as they are.
async fn verify_only(
    dump: SqliteDump,
    target: &PostgresStore,
    binaries: &Binaries,
    limits: BatchLimits,
) -> anyhow::Result<Report> {
    let source = tokio::task::spawn_blocking(move || -> Result<Digest, StoreError> {
        let mut digest = Digest::new();
        for table in RawTable::ALL {
            dump.scan(table, limits, |batch| {
                digest.add(&batch);
                Ok(())
            })?;
        }
        Ok(digest)
    })
    .await?
    .context("reading the source")?;
    let mut loaded = Digest::new();
    for table in RawTable::ALL {
        target
            .raw_scan(table, limits, |batch| {
                loaded.add(&batch);
                Ok(())
            })
            .await
            .with_context(|| format!("reading the target's {table}"))?;
    }
    let files = binaries.compare(target).await?;
    Ok(Report {
        differences: source.differences(&loaded),
        source,
        target: loaded,
        files,
        copied: None,
    })
}

/// Progress on stderr: a bar on a terminal, otherwise a line every 10 seconds.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    quiet_since: std::sync::Mutex<Instant>,
    total: u64,
    what: &'static str,
}

impl Progress {
    fn new(total: u64, what: &'static str) -> Progress {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {human_pos}/{human_len} rows ({per_sec}, {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(what);
            bar
        } else {
            ProgressBar::hidden()
        };
        let now = Instant::now();
        Progress { bar, started: now, quiet_since: std::sync::Mutex::new(now), total, what }
    }

    fn inc(&self, rows: u64) {
        self.bar.inc(rows);
        if self.bar.is_hidden()
            && let Ok(mut last) = self.quiet_since.lock()
            && last.elapsed() >= Duration::from_secs(10)
        {
            *last = Instant::now();
            eprintln!("{}: {} of {} rows", self.what, self.bar.position(), self.total);
        }
    }

    fn line(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    fn finish(&self) -> Duration {
        self.bar.finish_and_clear();
        self.started.elapsed()
    }
}

/// What the comparison found, and what it prints.
struct Report {
    source: Digest,
    target: Digest,
    differences: Vec<Difference>,
    files: Files,
    /// How long copying and reading back took, when this run copied.
    copied: Option<(Duration, Duration)>,
}

impl Report {
    fn problems(&self) -> usize {
        self.differences.len() + self.files.problems.len()
    }

    fn ok(&self) -> bool {
        self.problems() == 0
    }

    fn print(&self, elapsed: Duration, verify_only: bool) {
        let mut out = std::io::stdout().lock();
        let _ = self.write(&mut out, elapsed, verify_only);
    }

    fn write(
        &self,
        out: &mut impl Write,
        elapsed: Duration,
        verify_only: bool,
    ) -> std::io::Result<()> {
        writeln!(out)?;
        writeln!(
            out,
            "{:<14} {:>12} {:>12}  checksum (source)                  result",
            "table", "source rows", "target rows"
        )?;
        for table in RawTable::ALL {
            let (s, t) = (self.source.table(table), self.target.table(table));
            let result = if s == t { "ok" } else { "DIFFERS" };
            writeln!(
                out,
                "{:<14} {:>12} {:>12}  {:032x}  {result}",
                table.name(),
                s.rows,
                t.rows,
                s.sum
            )?;
        }
        let projects: Vec<&str> =
            self.source.all_projects().into_iter().filter(|p| *p != SERVER_WIDE).collect();
        writeln!(out)?;
        writeln!(out, "{} project(s): resources / versions / index rows", projects.len())?;
        const SHOWN: usize = 50;
        for project in projects.iter().take(SHOWN) {
            let rows = |digest: &Digest, table| {
                digest.projects(table).find(|(p, _)| p == project).map_or(0, |(_, d)| d.rows)
            };
            let index = |digest: &Digest| -> u64 {
                Table::ALL.iter().map(|t| rows(digest, RawTable::Index(*t))).sum()
            };
            let same = !self.differences.iter().any(|d| d.project == *project);
            writeln!(
                out,
                "  {project:<40} {:>9} / {:>9} / {:>10}  {}",
                rows(&self.source, RawTable::Resource),
                rows(&self.source, RawTable::History),
                index(&self.source),
                if same { "ok" } else { "DIFFERS" }
            )?;
        }
        if projects.len() > SHOWN {
            let rest = projects.len() - SHOWN;
            let bad = self
                .differences
                .iter()
                .filter(|d| !projects.iter().take(SHOWN).any(|p| *p == d.project))
                .count();
            writeln!(out, "  … and {rest} more project(s), {bad} difference(s) among them")?;
        }
        writeln!(out)?;
        writeln!(out, "{}", self.files.summary)?;
        for d in &self.differences {
            writeln!(
                out,
                "MISMATCH {} in project {}: source {}; target {}",
                d.table, d.project, d.source, d.target
            )?;
        }
        for p in &self.files.problems {
            writeln!(out, "MISMATCH {p}")?;
        }
        let rows: u64 = RawTable::ALL.iter().map(|t| self.source.table(*t).rows).sum();
        if let Some((copy, verify)) = self.copied {
            writeln!(
                out,
                "Copied {rows} rows in {:.1} s ({:.0} rows/s), read back in {:.1} s; {:.1} s in all.",
                copy.as_secs_f64(),
                rows as f64 / copy.as_secs_f64().max(0.001),
                verify.as_secs_f64(),
                elapsed.as_secs_f64()
            )?;
        } else {
            writeln!(out, "Compared {rows} rows in {:.1} s.", elapsed.as_secs_f64())?;
        }
        if self.ok() {
            if verify_only {
                writeln!(out, "Verified: the target holds exactly the source's rows and files.")?;
            } else {
                match &self.files.data_dir {
                    Some(dir) => writeln!(
                        out,
                        "Verified and committed. Start the PostgreSQL node(s) with --database-url and --data-dir {}.",
                        dir.display()
                    )?,
                    None => writeln!(
                        out,
                        "Verified and committed. Start the PostgreSQL node(s) with --database-url \
                         (binary content is in the database: any --data-dir)."
                    )?,
                }
            }
        }
        Ok(())
    }
}

/// What became of the binary files.
struct Files {
    summary: String,
    problems: Vec<String>,
    /// What to tell the operator about `--data-dir` for the PostgreSQL nodes.
    data_dir: Option<PathBuf>,
}

/// Where the binary files go.
enum Target {
    /// Into the database's blob tables, inside the load's transaction (the default): every
    /// node serves them, whatever its `--data-dir`.
    Database,
    /// Into `<to-data-dir>/binary/`.
    Dir(PathBuf),
    /// `--to-data-dir` named the source directory: the files stay.
    Stay,
}

/// The `binary/` folder of the source: Binary content and bulk job files, `<project>/<key>`.
struct Binaries {
    source_dir: PathBuf,
    source: PathBuf,
    target: Target,
}

impl Binaries {
    fn plan(source_dir: &Path, target_dir: Option<&Path>) -> anyhow::Result<Binaries> {
        let source = source_dir.join("binary");
        let target = match target_dir {
            None => Target::Database,
            Some(dir) => {
                // A directory that does not exist yet is not the source; copying creates it.
                let same = dir.exists()
                    && std::fs::canonicalize(dir)? == std::fs::canonicalize(source_dir)?;
                if same { Target::Stay } else { Target::Dir(dir.join("binary")) }
            }
        };
        Ok(Binaries { source_dir: source_dir.to_owned(), source, target })
    }

    /// The source files as paths relative to `binary/`, sorted. Unfinished writes
    /// (`*.partial`, left by a server that stopped mid-write) are not content and are skipped.
    fn list(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        if !self.source.exists() {
            return Ok(out);
        }
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = self.source.join(&rel);
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
            {
                let entry = entry?;
                let kind = entry.file_type()?;
                let path = rel.join(entry.file_name());
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() && !path.to_string_lossy().ends_with(".partial") {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// A target file that exists with content other than the source's.
    fn first_conflict(&self) -> anyhow::Result<Option<PathBuf>> {
        let Target::Dir(target) = &self.target else { return Ok(None) };
        for rel in self.list()? {
            let there = target.join(&rel);
            if there.exists() && hash_file(&there)? != hash_file(&self.source.join(&rel))? {
                return Ok(Some(there));
            }
        }
        Ok(None)
    }

    /// Copies the files (into the load's transaction, or into the target folder: every file
    /// missing there, or different, which only `--force` allows, durably), then re-reads
    /// both sides of every file.
    async fn copy(&self, force: bool, loader: &RawLoader) -> anyhow::Result<Files> {
        let list = self.list()?;
        match &self.target {
            Target::Database => self.load_into(loader, &list).await,
            Target::Stay => Ok(Files {
                summary: format!(
                    "Binary files: {} ({} bytes) left in {}",
                    list.len(),
                    total_size(&self.source, &list)?,
                    self.source.display(),
                ),
                problems: Vec::new(),
                data_dir: Some(self.source_dir.clone()),
            }),
            Target::Dir(target) => {
                let (source, target) = (self.source.clone(), target.clone());
                tokio::task::spawn_blocking(move || copy_files(&source, &target, &list, force))
                    .await?
            }
        }
    }

    /// Loads every file as a blob inside the load's transaction and reads it back.
    async fn load_into(&self, loader: &RawLoader, list: &[PathBuf]) -> anyhow::Result<Files> {
        let mut problems = Vec::new();
        let mut bytes = 0u64;
        for rel in list {
            let from = self.source.join(rel);
            let (project, key) = blob_name(rel)?;
            let mut file = tokio::fs::File::open(&from)
                .await
                .with_context(|| format!("reading {}", from.display()))?;
            bytes += loader
                .load_blob(&project, &key, &mut file)
                .await
                .with_context(|| format!("loading {}", from.display()))?;
            let mut hasher = Sha256::new();
            loader.read_blob(&project, &key, |piece| hasher.update(piece)).await?;
            if hasher.finalize().as_slice() != hash_file(&from)?.as_slice() {
                problems.push(format!("binary file {}: the loaded blob differs", rel.display()));
            }
        }
        Ok(Files {
            summary: format!(
                "Binary files: {} ({bytes} bytes) loaded into the database; {}",
                list.len(),
                if problems.is_empty() { "all identical" } else { "SOME DIFFER" }
            ),
            problems,
            data_dir: None,
        })
    }

    /// Checks every source file against the target's.
    async fn compare(&self, store: &PostgresStore) -> anyhow::Result<Files> {
        let list = self.list()?;
        let target = match &self.target {
            Target::Stay => {
                return Ok(Files {
                    summary: format!(
                        "Binary files: {} in {} (not compared: --to-data-dir is the source)",
                        list.len(),
                        self.source.display()
                    ),
                    problems: Vec::new(),
                    data_dir: Some(self.source_dir.clone()),
                });
            }
            Target::Database => {
                let blobs = PgBlobStore::new(store, None);
                let mut problems = Vec::new();
                for rel in &list {
                    let (project, key) = blob_name(rel)?;
                    match blobs.open(&project, &key).await {
                        Ok(mut blob) => {
                            let mut hasher = Sha256::new();
                            let mut buf = vec![0u8; 256 * 1024];
                            loop {
                                let n = blob.reader.read(&mut buf).await?;
                                if n == 0 {
                                    break;
                                }
                                hasher.update(&buf[..n]);
                            }
                            if hasher.finalize().as_slice()
                                != hash_file(&self.source.join(rel))?.as_slice()
                            {
                                problems.push(format!(
                                    "binary file {}: content differs",
                                    rel.display()
                                ));
                            }
                        }
                        Err(BlobError::NotFound) => problems.push(format!(
                            "binary file {}: missing from the database",
                            rel.display()
                        )),
                        Err(e) => return Err(e.into()),
                    }
                }
                return Ok(Files {
                    summary: format!(
                        "Binary files: {} compared with the database's blobs; {}",
                        list.len(),
                        if problems.is_empty() { "all identical" } else { "SOME DIFFER" }
                    ),
                    problems,
                    data_dir: None,
                });
            }
            Target::Dir(target) => target.clone(),
        };
        let source = self.source.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Files> {
            let mut problems = Vec::new();
            for rel in &list {
                let there = target.join(rel);
                if !there.exists() {
                    problems.push(format!(
                        "binary file {}: missing from {}",
                        rel.display(),
                        target.display()
                    ));
                } else if hash_file(&there)? != hash_file(&source.join(rel))? {
                    problems.push(format!("binary file {}: content differs", rel.display()));
                }
            }
            Ok(Files {
                summary: format!(
                    "Binary files: {} compared with {}; {}",
                    list.len(),
                    target.display(),
                    if problems.is_empty() { "all identical" } else { "SOME DIFFER" }
                ),
                problems,
                data_dir: target.parent().map(Path::to_owned),
            })
        })
        .await?
    }
}

/// A file under `binary/` as the blob it holds: `<project>/<key…>`.
fn blob_name(rel: &Path) -> anyhow::Result<(ProjectId, String)> {
    let text = rel.to_str().with_context(|| format!("{} is not UTF-8", rel.display()))?;
    let (project, key) = text
        .split_once('/')
        .with_context(|| format!("binary file {text} is not under a project folder"))?;
    let project = ProjectId::new(project);
    if !kiln_store::valid_key(&project, key) {
        bail!("binary file {text} is not a blob name Kiln writes");
    }
    Ok((project, key.to_owned()))
}

/// Copies the files missing from (or different in) `target`, then re-reads both sides.
fn copy_files(
    source: &Path,
    target: &Path,
    list: &[PathBuf],
    force: bool,
) -> anyhow::Result<Files> {
    let (mut copied, mut already, mut bytes) = (0usize, 0usize, 0u64);
    let mut problems = Vec::new();
    for rel in list {
        let (from, to) = (source.join(rel), target.join(rel));
        let want = hash_file(&from)?;
        if to.exists() && hash_file(&to)? == want {
            already += 1;
            continue;
        }
        if to.exists() && !force {
            bail!("{} already exists with other content; use --force to overwrite", to.display());
        }
        bytes += copy_file(&from, &to)?;
        copied += 1;
        if hash_file(&to)? != want {
            problems.push(format!("binary file {}: the copy differs", rel.display()));
        }
    }
    Ok(Files {
        summary: format!(
            "Binary files: {} in all, {copied} copied ({bytes} bytes) to {}, {already} already there; {}",
            list.len(),
            target.display(),
            if problems.is_empty() { "all identical" } else { "SOME DIFFER" }
        ),
        problems,
        data_dir: target.parent().map(Path::to_owned),
    })
}

fn total_size(root: &Path, list: &[PathBuf]) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for rel in list {
        bytes += std::fs::metadata(root.join(rel))?.len();
    }
    Ok(bytes)
}

/// SHA-256 of a file's content, read in pieces.
fn hash_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&hasher.finalize());
    Ok(out)
}

/// Copies `from` to `to` as the blob store writes: a temporary name, fsync, rename, and the
/// folder fsynced. Returns the bytes copied.
fn copy_file(from: &Path, to: &Path) -> anyhow::Result<u64> {
    let dir = to.parent().context("a file without a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp_name = to.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}-migrate.partial", std::process::id()));
    let tmp = to.with_file_name(tmp_name);
    let copy = || -> anyhow::Result<u64> {
        let mut input = std::fs::File::open(from)?;
        let mut output = std::fs::File::create(&tmp)?;
        let n = std::io::copy(&mut input, &mut output)?;
        output.sync_all()?;
        std::fs::rename(&tmp, to)?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(n)
    };
    copy()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}
