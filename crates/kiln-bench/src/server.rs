//! The server under test: either a `kiln serve` child process in a fresh data directory on a
//! free loopback port (killed when the [`ServerGuard`] drops, including on error and Ctrl-C),
//! or an already running server given by URL. Also the login flow that yields a bearer token.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Client;
use serde_json::{Value, json};

/// A `kiln serve` child process and its temporary data directory.
pub struct ServerGuard {
    child: Child,
    log: PathBuf,
    /// Removed on drop, after the child is gone.
    dir: tempfile::TempDir,
    /// The control group limiting the child's CPU (`--node-cpus`), removed on drop.
    cgroup: Option<CpuLimit>,
}

pub struct SpawnOptions<'a> {
    pub kiln: &'a Path,
    pub email: &'a str,
    pub password: &'a str,
    /// Parent of the temporary data directory (`None`: the system temp dir).
    pub data_parent: Option<&'a Path>,
    /// `full` or `normal`; `None` keeps the server's default.
    pub durability: Option<&'a str>,
    /// A PostgreSQL database for the server (`None`: its embedded SQLite store).
    pub database_url: Option<&'a str>,
    /// The public base URL when it is not the node's own (several nodes behind one name, so
    /// that a token issued by one node is valid on all of them).
    pub public_base: Option<&'a str>,
    /// Limit the child to this many CPUs (a Linux control group), as if it ran on a machine
    /// of its own that size.
    pub cpus: Option<f64>,
}

impl ServerGuard {
    /// Starts `kiln serve` on a free port; returns the guard and the base URL (with a slash).
    pub fn spawn(options: &SpawnOptions<'_>) -> anyhow::Result<(ServerGuard, String)> {
        if !options.kiln.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release -p kiln` or pass --kiln / --url",
                options.kiln.display()
            );
        }
        let dir = match options.data_parent {
            Some(parent) => tempfile::Builder::new().prefix("kiln-bench-").tempdir_in(parent),
            None => tempfile::Builder::new().prefix("kiln-bench-").tempdir(),
        }
        .context("creating the data directory")?;
        // Ask the OS for a free port, release it, and hand it to the child. The window in which
        // another process could take it is tiny on a benchmark machine.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let listen = format!("127.0.0.1:{port}");
        let base = format!("http://{listen}/");
        let public = options.public_base.unwrap_or(&base);
        let log = dir.path().join("kiln.log");
        let out = std::fs::File::create(&log)?;
        let mut command = Command::new(options.kiln);
        command
            .arg("serve")
            .args(["--listen", &listen, "--base-url", public])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("KILN_ADMIN_EMAIL", options.email)
            .env("KILN_ADMIN_PASSWORD", options.password)
            .env("KILN_LOG_LEVEL", "warn")
            .env_remove("KILN_CONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if let Some(durability) = options.durability {
            command.args(["--durability", durability]);
        }
        if let Some(url) = options.database_url {
            command.args(["--database-url", url]);
        }
        let mut child =
            command.spawn().with_context(|| format!("starting {}", options.kiln.display()))?;
        let cgroup = match options.cpus {
            Some(cpus) => match CpuLimit::apply(child.id(), cpus) {
                Ok(limit) => Some(limit),
                Err(err) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err);
                }
            },
            None => None,
        };
        Ok((ServerGuard { child, log, dir, cgroup }, base))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `Some(status)` if the child has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines the server printed, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The group can only be removed once it has no process left.
        drop(self.cgroup.take());
    }
}

/// A Linux control group with a CPU quota holding one server process: `--node-cpus 0.5` gives
/// each node half a core's time per scheduling period, so several nodes on one machine behave
/// like nodes on machines of that size. cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`);
/// creating a group needs the right to write under `/sys/fs/cgroup` (root, or a delegated
/// subtree), and a clear error says so otherwise.
#[derive(Debug)]
struct CpuLimit {
    dir: PathBuf,
}

/// The scheduling period of the quota, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

impl CpuLimit {
    fn apply(pid: u32, cpus: f64) -> anyhow::Result<CpuLimit> {
        if !(cpus.is_finite() && cpus > 0.0) {
            bail!("--node-cpus must be a positive number of CPUs, e.g. 0.5");
        }
        let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1_000);
        let name = format!("kiln-bench-{}-{pid}", std::process::id());
        let root = Path::new("/sys/fs/cgroup");
        let (dir, settings): (PathBuf, Vec<(&str, String)>) =
            if root.join("cgroup.controllers").is_file() {
                // v2: the cpu controller must be enabled for the children of the root.
                let control = root.join("cgroup.subtree_control");
                let enabled = std::fs::read_to_string(&control).unwrap_or_default();
                if !enabled.split_whitespace().any(|c| c == "cpu") {
                    std::fs::write(&control, "+cpu").with_context(|| {
                        format!("enabling the cpu controller in {}", control.display())
                    })?;
                }
                (root.join(&name), vec![("cpu.max", format!("{quota} {CPU_PERIOD_US}"))])
            } else if root.join("cpu/cpu.cfs_quota_us").is_file() {
                (
                    root.join("cpu").join(&name),
                    vec![
                        ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                        ("cpu.cfs_quota_us", quota.to_string()),
                    ],
                )
            } else {
                bail!("--node-cpus needs Linux control groups with the cpu controller");
            };
        std::fs::create_dir(&dir).with_context(|| {
            format!("--node-cpus: creating the control group {} (needs root)", dir.display())
        })?;
        let limit = CpuLimit { dir };
        for (file, value) in settings {
            let path = limit.dir.join(file);
            std::fs::write(&path, &value)
                .with_context(|| format!("writing {value} to {}", path.display()))?;
        }
        // Moves the whole process (all its threads, and those it starts later).
        let procs = limit.dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .with_context(|| format!("moving process {pid} into {}", procs.display()))?;
        Ok(limit)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // The process was killed and reaped first; the kernel may take a moment to let go.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls `GET /healthcheck` until it answers `{"ok":true}`; returns its body.
pub async fn wait_healthy(
    http: &Client,
    base: &str,
    mut guard: Option<&mut ServerGuard>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let url = format!("{base}healthcheck");
    loop {
        if let Some(guard) = guard.as_deref_mut()
            && let Some(status) = guard.exited()
        {
            bail!("kiln exited before becoming healthy ({status}):\n{}", guard.log_tail(20));
        }
        if let Ok(res) = http.get(&url).send().await
            && res.status().is_success()
            && let Ok(body) = res.json::<Value>().await
            && body["ok"] == json!(true)
        {
            return Ok(body);
        }
        if started.elapsed() > timeout {
            bail!("{url} did not answer {{\"ok\":true}} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Medplum's login: `/auth/login` (PKCE plain) then `/oauth2/token`; returns the access token.
pub async fn login(
    http: &Client,
    base: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let res = http
        .post(format!("{base}auth/login"))
        .json(&json!({"email": email, "password": password,
                      "codeChallenge": "x", "codeChallengeMethod": "plain"}))
        .send()
        .await
        .context("POST /auth/login")?;
    let status = res.status();
    let body: Value = res.json().await.context("POST /auth/login: body is not JSON")?;
    if !status.is_success() {
        bail!("POST /auth/login answered {status}: {body}");
    }
    let code = body["code"].as_str().context("login answered without a code")?;
    let res = http
        .post(format!("{base}oauth2/token"))
        .form(&[("grant_type", "authorization_code"), ("code", code), ("code_verifier", "x")])
        .send()
        .await
        .context("POST /oauth2/token")?;
    let status = res.status();
    let body: Value = res.json().await.context("POST /oauth2/token: body is not JSON")?;
    if !status.is_success() {
        bail!("POST /oauth2/token answered {status}: {body}");
    }
    Ok(body["access_token"].as_str().context("token response without access_token")?.to_owned())
}

/// What a FHIR server says it is (`CapabilityStatement.software`), from `GET {fhir}metadata`;
/// also the check that `fhir` is a FHIR base at all.
pub async fn software(http: &Client, fhir: &str) -> anyhow::Result<String> {
    let url = format!("{fhir}metadata");
    let res = http
        .get(&url)
        .header(reqwest::header::ACCEPT, "application/fhir+json")
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = res.status();
    let body: Value = res.json().await.with_context(|| format!("GET {url}: body is not JSON"))?;
    if !status.is_success() || body["resourceType"] != "CapabilityStatement" {
        bail!(
            "GET {url} answered {status} without a CapabilityStatement: is this a FHIR base URL?"
        );
    }
    let software = &body["software"];
    let name = software["name"].as_str().unwrap_or("unnamed server");
    Ok(match software["version"].as_str() {
        Some(version) => format!("{name} {version}"),
        None => name.to_owned(),
    })
}

/// The token endpoint: from `{fhir}.well-known/smart-configuration` if the server publishes
/// one, else Medplum's `{root}oauth2/token`.
pub async fn token_endpoint(http: &Client, fhir: &str, root: &str) -> anyhow::Result<String> {
    let url = format!("{fhir}.well-known/smart-configuration");
    if let Ok(res) = http.get(&url).send().await
        && res.status().is_success()
        && let Ok(body) = res.json::<Value>().await
        && let Some(endpoint) = body["token_endpoint"].as_str()
    {
        return Ok(endpoint.to_owned());
    }
    Ok(format!("{root}oauth2/token"))
}

/// The client-credentials grant with the secret in HTTP Basic; returns the access token.
pub async fn client_credentials(
    http: &Client,
    endpoint: &str,
    client_id: &str,
    secret: &str,
) -> anyhow::Result<String> {
    let res = http
        .post(endpoint)
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .with_context(|| format!("POST {endpoint}"))?;
    let status = res.status();
    let body: Value =
        res.json().await.with_context(|| format!("POST {endpoint}: body is not JSON"))?;
    if !status.is_success() {
        bail!("POST {endpoint} (client credentials) answered {status}: {body}");
    }
    Ok(body["access_token"].as_str().context("token response without access_token")?.to_owned())
}
