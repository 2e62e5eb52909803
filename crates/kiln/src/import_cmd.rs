//! `kiln import`: loads files into a running Kiln over its HTTP API, with progress bars; a
//! client command on `kiln-client`, signed in like the others (saved session, `KILN_TOKEN`, or
//! `--email`/`--password` for one run).
//!
//! - NDJSON files (one resource per line) are uploaded as Binary content in pieces of at most
//!   `--piece-size` bytes, cut at line ends (so a file of any size goes through a server's
//!   request-size limit with bounded memory), then loaded by one `$import` job whose status is
//!   polled until it ends.
//! - JSON files holding a `transaction` or `batch` Bundle are posted as they are (references
//!   between their entries resolve as the Bundle says); any other Bundle has its entries'
//!   resources imported like NDJSON lines.
//!
//! Exit status: 0 when everything was loaded, 1 when some lines or entries were refused (each
//! printed, the rest stored), otherwise the client commands' codes (2 usage or unreadable
//! file, 3 HTTP 4xx, 4 HTTP 5xx, 5 network).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_client::{Error, KilnClient};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::client_cmd::{Common, Connection, Failure, Outcome, usage};

#[derive(Args)]
pub struct ImportArgs {
    /// Sign in with this email (and --password) for this run only, instead of the saved
    /// session.
    #[arg(long, env = "KILN_EMAIL", requires = "password")]
    email: Option<String>,
    #[arg(long, env = "KILN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Largest piece of an NDJSON file uploaded at once, in bytes (keep it under the server's
    /// --max-body).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    piece_size: usize,
    /// NDJSON (`.ndjson`) or Bundle (`.json`) files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    common: Common,
}

/// Runs the command: `Failure::Refused` when the server refused some lines or entries.
pub(crate) async fn run(args: ImportArgs) -> Outcome {
    for file in &args.files {
        if !file.is_file() {
            return Err(usage(format!("{}: not a readable file", file.display())));
        }
    }
    if args.piece_size == 0 {
        return Err(usage("--piece-size must be at least 1"));
    }
    let session = match (&args.email, &args.password) {
        (Some(email), Some(password)) => Connection::sign_in(&args.common, email, password).await?,
        _ => Connection::open(&args.common).await?,
    };
    let result = import(&session.client, &args).await;
    session.finish().await;
    if result? == 0 { Ok(()) } else { Err(Failure::Refused) }
}

/// One uploaded piece: its URL, the file it came from, and the number of the file's lines
/// before it (the server numbers lines within the piece).
struct Input {
    url: String,
    name: String,
    first_line: u64,
}

/// Loads every file; the number of refused lines and entries.
async fn import(client: &KilnClient, args: &ImportArgs) -> Outcome<u64> {
    let mut refused = 0;
    let mut inputs: Vec<Input> = Vec::new();
    for file in &args.files {
        let name = file.display().to_string();
        if file.extension().is_some_and(|e| e == "json") {
            let text = tokio::fs::read(file).await.map_err(|e| usage(format!("{name}: {e}")))?;
            let bundle: Value = serde_json::from_slice(&text)
                .map_err(|e| usage(format!("{name}: invalid JSON: {e}")))?;
            if bundle["resourceType"] != "Bundle" {
                return Err(usage(format!("{name}: a .json file must hold a Bundle")));
            }
            if matches!(bundle["type"].as_str(), Some("transaction" | "batch")) {
                drop(bundle);
                refused += post_bundle(client, &name, text).await?;
            } else {
                let mut lines = Vec::new();
                for entry in bundle["entry"].as_array().into_iter().flatten() {
                    if entry["resource"].is_object() {
                        lines.extend_from_slice(entry["resource"].to_string().as_bytes());
                        lines.push(b'\n');
                    }
                }
                if !lines.is_empty() {
                    inputs.push(Input { url: upload(client, lines).await?, name, first_line: 0 });
                }
            }
        } else {
            for (url, first_line) in upload_ndjson(client, file, args.piece_size).await? {
                inputs.push(Input { url, name: name.clone(), first_line });
            }
        }
    }
    if !inputs.is_empty() {
        refused += run_import(client, &inputs).await?;
    }
    Ok(refused)
}

/// The text of an OperationOutcome's issues.
fn outcome_text(outcome: &Value) -> String {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["diagnostics"].as_str().or(i["details"]["text"].as_str()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Uploads NDJSON bytes as a Binary; its URL.
async fn upload(client: &KilnClient, bytes: Vec<u8>) -> Outcome<String> {
    let binary = client.upload_binary("application/fhir+ndjson", bytes).await?;
    let id = binary["id"]
        .as_str()
        .ok_or_else(|| Failure::Client(Error::Unexpected("a Binary without id".into())))?;
    Ok(format!("{}Binary/{id}", client.fhir_base()))
}

/// Uploads an NDJSON file in pieces cut at line ends; their URLs and the lines before each.
async fn upload_ndjson(
    client: &KilnClient,
    file: &Path,
    piece_size: usize,
) -> Outcome<Vec<(String, u64)>> {
    let name = file.display().to_string();
    let fail = |e: std::io::Error| usage(format!("{name}: {e}"));
    let handle = tokio::fs::File::open(file).await.map_err(fail)?;
    let size = handle.metadata().await.map_err(fail)?.len();
    let bar = ProgressBar::new(size).with_message(format!("uploading {name}"));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut reader = tokio::io::BufReader::new(handle);
    let mut urls = Vec::new();
    let mut piece: Vec<u8> = Vec::with_capacity(piece_size.min(64 * 1024 * 1024));
    let mut line = Vec::new();
    let (mut lines, mut piece_start) = (0u64, 0u64);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).await.map_err(fail)?;
        if (n == 0 || piece.len() + line.len() > piece_size) && !piece.is_empty() {
            let len = piece.len() as u64;
            let capacity = piece.capacity();
            let full = std::mem::replace(&mut piece, Vec::with_capacity(capacity));
            urls.push((upload(client, full).await?, piece_start));
            bar.inc(len);
            piece_start = lines;
        }
        if n == 0 {
            break;
        }
        piece.extend_from_slice(&line);
        lines += 1;
    }
    bar.finish_and_clear();
    Ok(urls)
}

/// A refused line as `file:line: why`; the server says `<piece url> line <n>: why`.
fn refusal_text(input: Option<&Input>, text: &str) -> String {
    let Some(input) = input else { return text.to_owned() };
    let numbered = text
        .strip_prefix(&input.url)
        .and_then(|rest| rest.strip_prefix(" line "))
        .and_then(|rest| rest.split_once(": "))
        .and_then(|(n, why)| Some((n.parse::<u64>().ok()?, why)));
    match numbered {
        Some((n, why)) => format!("{}:{}: {why}", input.name, input.first_line + n),
        None => format!("{}: {text}", input.name),
    }
}

/// Posts a transaction or batch Bundle; the number of refused entries (each printed). A
/// transaction the server refuses as a whole counts as one.
async fn post_bundle(client: &KilnClient, name: &str, body: Vec<u8>) -> Outcome<u64> {
    let answer = match client.execute_bundle_minimal(body).await {
        Ok(answer) => answer,
        Err(Error::Http { status, outcome, body }) if (400..500).contains(&status) => {
            let why = outcome.as_ref().map(outcome_text).unwrap_or(body);
            eprintln!("{name}: refused (HTTP {status}): {why}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    let entries = answer["entry"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut refused = 0;
    for (n, entry) in entries.iter().enumerate() {
        let code = entry["response"]["status"].as_str().unwrap_or("");
        if !code.starts_with('2') {
            refused += 1;
            let why = outcome_text(&entry["response"]["outcome"]);
            eprintln!("{name} entry {}: {code} {why}", n + 1);
        }
    }
    let verdict =
        if refused == 0 { "all written".to_owned() } else { format!("{refused} refused") };
    println!("{name}: {} entries, {verdict}", entries.len());
    Ok(refused)
}

/// Runs one `$import` of `inputs`, showing progress; the number of refused lines (each
/// printed).
async fn run_import(client: &KilnClient, inputs: &[Input]) -> Outcome<u64> {
    let urls: Vec<&str> = inputs.iter().map(|i| i.url.as_str()).collect();
    let job = client.import(&urls).await?;
    let spinner = ProgressBar::new_spinner().with_message("importing");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let manifest = client.wait_for_job(&job, |progress| spinner.set_message(progress.to_owned()));
    let manifest = manifest.await;
    spinner.finish_and_clear();
    let manifest = manifest?;
    let written: u64 = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["count"].as_u64())
        .sum();
    let mut refused = 0u64;
    for error in manifest["error"].as_array().into_iter().flatten() {
        let Some(url) = error["url"].as_str() else { continue };
        let input = error["inputUrl"].as_str().and_then(|u| inputs.iter().find(|i| i.url == u));
        let mut outcomes = std::pin::pin!(client.download_ndjson(url));
        while let Some(outcome) = outcomes.next().await {
            eprintln!("{}", refusal_text(input, &outcome_text(&outcome?)));
            refused += 1;
        }
    }
    let mut files: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    files.dedup();
    println!("imported {written} resources from {} file(s); {refused} refused", files.len());
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_file_line() {
        let input = Input {
            url: "http://k/fhir/R4/Binary/b".into(),
            name: "a.ndjson".into(),
            first_line: 70,
        };
        assert_eq!(
            refusal_text(Some(&input), "http://k/fhir/R4/Binary/b line 8: bad gender"),
            "a.ndjson:78: bad gender"
        );
        assert_eq!(refusal_text(Some(&input), "something else"), "a.ndjson: something else");
        assert_eq!(refusal_text(None, "x"), "x");
    }
}
