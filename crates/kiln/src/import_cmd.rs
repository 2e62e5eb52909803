//! `kiln import`: loads files into a running Kiln over its HTTP API, with a progress bar.
//!
//! - NDJSON files (one resource per line) are uploaded as Binary content in pieces of at most
//!   `--piece-size` bytes, cut at line ends (so a file of any size goes through a server's
//!   request-size limit with bounded memory), then loaded by one `$import` job whose status is
//!   polled until it ends.
//! - JSON files holding a `transaction` or `batch` Bundle are posted as they are (references
//!   between their entries resolve as the Bundle says); any other Bundle has its entries'
//!   resources imported like NDJSON lines.
//!
//! Exit status: 0 when everything was loaded, 1 when some lines or entries were refused
//! (each printed), 2 when the import could not run (bad arguments, login, network).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    kiln import --email admin@example.com --password medplum_admin patients.ndjson\n  \
    kiln import --url https://fhir.example.com/ --token \"$TOKEN\" Observation.ndjson bundle.json")]
pub struct ImportArgs {
    /// The server's base URL.
    #[arg(long, env = "KILN_URL", default_value = "http://localhost:8103/")]
    pub url: String,
    /// Sign in with this email and password (Medplum's login flow) ...
    #[arg(long, env = "KILN_EMAIL", requires = "password")]
    pub email: Option<String>,
    #[arg(long, env = "KILN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// ... or use this bearer token.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true, conflicts_with = "email")]
    pub token: Option<String>,
    /// Largest piece of an NDJSON file uploaded at once, in bytes (keep it under the server's
    /// --max-body).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub piece_size: usize,
    /// NDJSON (`.ndjson`) or Bundle (`.json`) files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs the command; the process exit status.
pub async fn run(args: ImportArgs) -> i32 {
    match import(args).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("kiln import: {e:#}");
            2
        }
    }
}

/// One uploaded piece: its URL, the file it came from, and the number of the file's lines
/// before it (the server numbers lines within the piece).
struct Input {
    url: String,
    name: String,
    first_line: u64,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn fhir(&self, path: &str) -> String {
        format!("{}fhir/R4/{}", self.base, path.trim_start_matches('/'))
    }

    /// `POST` to a path under the FHIR base, with the token.
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.fhir(path)).bearer_auth(&self.token)
    }

    /// `GET` of an absolute URL, with the token.
    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.get(url).bearer_auth(&self.token)
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<bool> {
    let mut base = args.url.trim().to_owned();
    if !base.ends_with('/') {
        base.push('/');
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
    let token = match (&args.token, &args.email, &args.password) {
        (Some(token), _, _) => token.clone(),
        (None, Some(email), Some(password)) => login(&http, &base, email, password).await?,
        _ => bail!("give --email and --password, or --token"),
    };
    let client = Client { http, base, token };
    let mut all_ok = true;
    let mut inputs: Vec<Input> = Vec::new();
    for file in &args.files {
        let name = file.display().to_string();
        if file.extension().is_some_and(|e| e == "json") {
            let text = tokio::fs::read(file).await.with_context(|| format!("reading {name}"))?;
            let bundle: Value =
                serde_json::from_slice(&text).with_context(|| format!("{name} is not JSON"))?;
            if bundle["resourceType"] != "Bundle" {
                bail!("{name}: a .json file must hold a Bundle");
            }
            if matches!(bundle["type"].as_str(), Some("transaction" | "batch")) {
                all_ok &= post_bundle(&client, &name, text).await?;
            } else {
                let mut lines = Vec::new();
                for entry in bundle["entry"].as_array().into_iter().flatten() {
                    if entry["resource"].is_object() {
                        lines.extend_from_slice(&serde_json::to_vec(&entry["resource"])?);
                        lines.push(b'\n');
                    }
                }
                if !lines.is_empty() {
                    inputs.push(Input { url: upload(&client, &lines).await?, name, first_line: 0 });
                }
            }
        } else {
            for (url, first_line) in upload_ndjson(&client, file, args.piece_size).await? {
                inputs.push(Input { url, name: name.clone(), first_line });
            }
        }
    }
    if !inputs.is_empty() {
        all_ok &= run_import(&client, &inputs).await?;
    }
    Ok(all_ok)
}

/// Medplum's login: `/auth/login` (PKCE), then the code for a token.
async fn login(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let verifier = format!("{}{}", uuid_like(), uuid_like());
    let res = http
        .post(format!("{base}auth/login"))
        .json(&json!({"email": email, "password": password, "scope": "openid",
                      "codeChallenge": verifier, "codeChallengeMethod": "plain"}))
        .send()
        .await
        .with_context(|| format!("connecting to {base}"))?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or_default();
    let Some(code) = body["code"].as_str() else {
        bail!("sign-in refused ({status}): {}", outcome_text(&body));
    };
    let res = http
        .post(format!("{base}oauth2/token"))
        .form(&[("grant_type", "authorization_code"), ("code", code), ("code_verifier", &verifier)])
        .send()
        .await?;
    let tokens: Value = res.json().await?;
    tokens["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no access token: {tokens}"))
}

/// 32 hex digits from the clock and the process: a PKCE verifier needs no more than
/// uniqueness here (it never leaves this exchange).
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 64))
}

fn outcome_text(body: &Value) -> String {
    body["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["diagnostics"].as_str().or(i["details"]["text"].as_str()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Uploads NDJSON bytes as a Binary; its URL.
async fn upload(client: &Client, bytes: &[u8]) -> anyhow::Result<String> {
    let res = client
        .post("Binary")
        .header("content-type", "application/fhir+ndjson")
        .body(bytes.to_vec())
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or_default();
    match body["id"].as_str() {
        Some(id) if status.is_success() => Ok(client.fhir(&format!("Binary/{id}"))),
        _ => bail!("uploading failed ({status}): {}", outcome_text(&body)),
    }
}

/// Uploads an NDJSON file in pieces cut at line ends; their URLs and the lines before each.
async fn upload_ndjson(
    client: &Client,
    file: &Path,
    piece_size: usize,
) -> anyhow::Result<Vec<(String, u64)>> {
    let name = file.display().to_string();
    let handle = tokio::fs::File::open(file).await.with_context(|| format!("opening {name}"))?;
    let size = handle.metadata().await?.len();
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
        let n = reader.read_until(b'\n', &mut line).await?;
        if (n == 0 || piece.len() + line.len() > piece_size) && !piece.is_empty() {
            urls.push((upload(client, &piece).await?, piece_start));
            bar.inc(piece.len() as u64);
            piece.clear();
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

/// Posts a transaction or batch Bundle; whether every entry succeeded (failures printed).
async fn post_bundle(client: &Client, name: &str, body: Vec<u8>) -> anyhow::Result<bool> {
    let res = client
        .post("")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(body)
        .send()
        .await?;
    let status = res.status();
    let answer: Value = res.json().await.unwrap_or_default();
    if !status.is_success() {
        eprintln!("{name}: refused ({status}): {}", outcome_text(&answer));
        return Ok(false);
    }
    let mut ok = true;
    let entries = answer["entry"].as_array().cloned().unwrap_or_default();
    for (n, entry) in entries.iter().enumerate() {
        let code = entry["response"]["status"].as_str().unwrap_or("");
        if !code.starts_with('2') {
            ok = false;
            eprintln!(
                "{name} entry {}: {code} {}",
                n + 1,
                outcome_text(&entry["response"]["outcome"])
            );
        }
    }
    println!(
        "{name}: {} entries, {}",
        entries.len(),
        if ok { "all written" } else { "some refused" }
    );
    Ok(ok)
}

/// Runs one `$import` of `inputs`, showing progress; whether every line was written.
async fn run_import(client: &Client, inputs: &[Input]) -> anyhow::Result<bool> {
    let mut params = vec![json!({"name": "inputFormat", "valueCode": "application/fhir+ndjson"})];
    for Input { url, .. } in inputs {
        params.push(json!({"name": "input", "part": [{"name": "url", "valueUri": url}]}));
    }
    let res = client
        .post("$import")
        .header("content-type", "application/fhir+json")
        .header("prefer", "respond-async")
        .json(&json!({"resourceType": "Parameters", "parameter": params}))
        .send()
        .await?;
    let status = res.status();
    let location =
        res.headers().get("content-location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: Value = res.json().await.unwrap_or_default();
    let Some(status_url) = location.filter(|_| status.as_u16() == 202) else {
        bail!("$import refused ({status}): {}", outcome_text(&body));
    };
    let spinner = ProgressBar::new_spinner().with_message("importing");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let manifest = loop {
        let res = client.get(&status_url).send().await?;
        match res.status().as_u16() {
            202 => {
                if let Some(progress) =
                    res.headers().get("x-progress").and_then(|v| v.to_str().ok())
                {
                    spinner.set_message(progress.to_owned());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            200 => break res.json::<Value>().await?,
            other => {
                spinner.finish_and_clear();
                let body: Value = res.json().await.unwrap_or_default();
                bail!("the import failed ({other}): {}", outcome_text(&body));
            }
        }
    };
    spinner.finish_and_clear();
    let written: u64 = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["count"].as_u64())
        .sum();
    let mut refused = 0u64;
    for error in manifest["error"].as_array().into_iter().flatten() {
        let Some(url) = error["url"].as_str() else { continue };
        let text = client.get(url).send().await?.text().await?;
        let input = error["inputUrl"].as_str().and_then(|u| inputs.iter().find(|i| i.url == u));
        for line in text.lines() {
            let oo: Value = serde_json::from_str(line).unwrap_or_default();
            eprintln!("{}", refusal_text(input, &outcome_text(&oo)));
            refused += 1;
        }
    }
    let mut files: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    files.dedup();
    println!("imported {written} resources from {} file(s); {refused} refused", files.len());
    Ok(refused == 0)
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
