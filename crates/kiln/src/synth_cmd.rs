//! `kiln synth`: writes deterministic synthetic US Core patient records (`kiln-synth`) to a
//! directory, as transaction Bundles or NDJSON, with progress and a summary on stderr.
//!
//! It works offline: load the files afterwards with `kiln import` or Bulk Data `$import`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use kiln_synth::{Date, Format, Options};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    kiln synth --patients 100 --seed 42 --out ./synthetic\n  \
    kiln synth --patients 1000 --format ndjson --out ./ndjson\n  \
    kiln import --email admin@example.com --password medplum_admin ./synthetic/*.json")]
pub struct SynthArgs {
    /// How many patients.
    #[arg(long, default_value_t = 10)]
    pub patients: u64,
    /// The seed: the same seed, patient count and --end give byte-identical files.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory (created if missing; it must be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// `bundle`: one transaction Bundle per patient plus `00-shared.json`; `ndjson`: one
    /// `Type.ndjson` file per resource type.
    #[arg(long, value_enum, default_value_t = SynthFormat::Bundle)]
    pub format: SynthFormat,
    /// Reference date (YYYY-MM-DD): histories cover the ten years before it.
    #[arg(long, default_value = kiln_synth::DEFAULT_END)]
    pub end: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SynthFormat {
    Bundle,
    Ndjson,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let Some(end) = Date::parse(&args.end) else {
        bail!("--end must be a date as YYYY-MM-DD, not '{}'", args.end);
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the output directory {}", args.out.display()))?;
    let not_empty = std::fs::read_dir(&args.out)
        .with_context(|| format!("reading the output directory {}", args.out.display()))?
        .next()
        .is_some();
    if not_empty {
        bail!(
            "the output directory {} is not empty (files of an earlier run would mix with this one)",
            args.out.display()
        );
    }
    let options = Options {
        patients: args.patients,
        seed: args.seed,
        format: match args.format {
            SynthFormat::Bundle => Format::Bundle,
            SynthFormat::Ndjson => Format::Ndjson,
        },
        end,
    };
    let started = Instant::now();
    let mut last_report = started;
    let mut report = |patients: u64, resources: u64| {
        let now = Instant::now();
        if now.duration_since(last_report) >= Duration::from_secs(1) || patients == args.patients {
            last_report = now;
            let rate = resources as f64 / now.duration_since(started).as_secs_f64().max(1e-9);
            eprint!(
                "\rkiln synth: {patients}/{} patients, {resources} resources, {:.0} resources/s   ",
                args.patients, rate
            );
            let _ = std::io::stderr().flush();
        }
    };
    let summary = kiln_synth::generate(&options, &args.out, &mut report)?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let total = summary.resources();
    eprintln!();
    eprintln!(
        "kiln synth: wrote {} patients, {total} resources ({:.1} MB) to {} in {elapsed:.2} s: {:.0} resources/s",
        summary.patients,
        summary.bytes as f64 / 1e6,
        args.out.display(),
        total as f64 / elapsed,
    );
    for (ty, n) in &summary.counts {
        eprintln!("  {:<20} {n:>10}", ty.name());
    }
    Ok(())
}
