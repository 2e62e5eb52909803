//! `kiln login`, `get`, `post`, `put`, `patch`, `delete`, `search`, `export`: a command-line
//! client of a Kiln (or any server with Medplum's API), built on the `kiln-client` SDK.
//!
//! The session `kiln login` opens is kept in `session.json` in the configuration directory
//! (`$KILN_CONFIG_DIR`, else `$XDG_CONFIG_HOME/kiln`, else `~/.config/kiln`), readable by its
//! owner only. Exit codes: 0 success, 2 usage or client-side error, 3 HTTP 4xx, 4 HTTP 5xx,
//! 5 network error.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use futures_util::{StreamExt, TryStreamExt};
use kiln_client::{Error, ExportLevel, KilnClient};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const EXIT_CODES: &str = "Exit codes of the client commands (login, get, post, put, patch, \
delete, search, export, import): 0 success, 1 (import only) some lines or entries refused, 2 usage or client-side error (bad arguments, unreadable \
file, invalid JSON), 3 HTTP 4xx (the OperationOutcome on stderr), 4 HTTP 5xx, 5 network error \
(connection refused, timeout).";

/// The client commands, flattened into `kiln`'s own.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Sign in to a server and keep the session in the configuration directory.
    #[command(after_help = "Examples:\n  \
        kiln login --url http://localhost:8103/ --email admin@example.com --password secret\n  \
        kiln login --url https://fhir.example.org/ --client-id ID --client-secret SECRET\n\n\
        The session is saved to $KILN_CONFIG_DIR, $XDG_CONFIG_HOME/kiln or ~/.config/kiln \
        (session.json, mode 0600).\n\n\
        Exit codes: 0 success, 2 usage error, 3 refused credentials, 4 HTTP 5xx, 5 network error.")]
    Login(LoginArgs),
    /// Forget the saved session.
    #[command(after_help = "Example:\n  kiln logout")]
    Logout,
    /// GET a path under the FHIR base and print the JSON answer.
    #[command(after_help = "Examples:\n  \
        kiln get Patient/123\n  \
        kiln get 'Patient?name=smith' --pretty\n  \
        kiln get metadata --url http://localhost:8103/\n\n\
        Exit codes: 0 success, 2 usage or client-side error (bad arguments, unreadable file, \
        invalid JSON), 3 HTTP 4xx (the OperationOutcome on stderr), 4 HTTP 5xx, 5 network \
        error (connection refused, timeout).")]
    Get(PathArgs),
    /// Create a resource (or run a batch/transaction Bundle) from FILE or stdin.
    #[command(after_help = "Examples:\n  \
        kiln post Patient patient.json\n  \
        echo '{\"resourceType\":\"Patient\"}' | kiln post Patient -\n  \
        kiln post '' transaction.json\n\n\
        Exit codes: 0 success, 2 usage or client-side error (bad arguments, unreadable file, \
        invalid JSON), 3 HTTP 4xx (the OperationOutcome on stderr), 4 HTTP 5xx, 5 network \
        error (connection refused, timeout).")]
    Post(BodyArgs),
    /// Update a resource (`Type/id`) from FILE or stdin.
    #[command(after_help = "Examples:\n  \
        kiln put Patient/123 patient.json\n  \
        kiln put Patient/123 patient.json --if-match 2\n\n\
        Exit codes: 0 success, 2 usage or client-side error (bad arguments, unreadable file, \
        invalid JSON), 3 HTTP 4xx (the OperationOutcome on stderr; a stale --if-match is a \
        412), 4 HTTP 5xx, 5 network error (connection refused, timeout).")]
    Put(PutArgs),
    /// Patch a resource (`Type/id`): a JSON array is a JSON Patch, a Parameters resource a
    /// FHIRPath Patch.
    #[command(after_help = "Examples:\n  \
        echo '[{\"op\":\"replace\",\"path\":\"/gender\",\"value\":\"male\"}]' | kiln patch Patient/123 -\n  \
        kiln patch Patient/123 fhirpath-patch-parameters.json\n\n\
        Exit codes: 0 success, 2 usage or client-side error (bad arguments, unreadable file, \
        invalid JSON), 3 HTTP 4xx (the OperationOutcome on stderr), 4 HTTP 5xx, 5 network \
        error (connection refused, timeout).")]
    Patch(BodyArgs),
    /// Delete a resource (`Type/id`).
    #[command(after_help = "Example:\n  kiln delete Patient/123\n\n\
        Exit codes: 0 success, 2 usage error, 3 HTTP 4xx, 4 HTTP 5xx, 5 network error.")]
    Delete(PathArgs),
    /// Search a resource type; prints one resource per line (NDJSON).
    #[command(after_help = "Examples:\n  \
        kiln search Patient 'name=smith&_count=50'\n  \
        kiln search Observation 'subject=Patient/123' --all > observations.ndjson\n  \
        kiln search Patient 'name=smith' --table\n\n\
        Without --all only the first page is printed.\n\n\
        Exit codes: 0 success, 2 usage error, 3 HTTP 4xx (the OperationOutcome on stderr), \
        4 HTTP 5xx, 5 network error.")]
    Search(SearchArgs),
    /// Bulk export (the whole system, the Patient compartments, or a Group's) into a
    /// directory, one NDJSON file per manifest entry; files already complete are skipped, so
    /// an interrupted run can be repeated.
    #[command(after_help = "Examples:\n  \
        kiln export --out ./export\n  \
        kiln export --type Patient,Observation --since 2024-01-01T00:00:00Z --out ./export\n  \
        kiln export --patient --type Patient,Condition --out ./patients\n  \
        kiln export --group 8f0c2a --out ./cohort\n\n\
        Files are named <Type>-<n>.ndjson; manifest.json is saved next to them.\n\n\
        Exit codes: 0 success, 2 usage or client-side error, 3 HTTP 4xx, 4 HTTP 5xx, \
        5 network error.")]
    Export(ExportArgs),
    /// Load NDJSON files and Bundles into the server: transaction and batch Bundles are
    /// posted as they are, NDJSON (and other Bundles' resources) is uploaded in pieces and
    /// loaded by one bulk `$import` job.
    #[command(after_help = "Examples:\n  \
        kiln import patients.ndjson observations.ndjson\n  \
        kiln import ./synthetic/*.json\n  \
        kiln import --url http://localhost:8103/ --email admin@example.com --password secret data.ndjson\n\n\
        Without --email, the saved session (kiln login) or KILN_TOKEN is used. Every refused \
        line is printed as file:line: reason, every refused Bundle entry as file entry n: reason.\n\n\
        Exit codes: 0 everything loaded, 1 some lines or entries refused (the rest stored), \
        2 usage or client-side error (unreadable file, invalid JSON), 3 HTTP 4xx, 4 HTTP 5xx, \
        5 network error.")]
    Import(crate::import_cmd::ImportArgs),
}

/// Options every client command takes.
#[derive(Args)]
pub struct Common {
    /// The server root (e.g. http://localhost:8103/); defaults to the saved session's.
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Pretty-print JSON output.
    #[arg(long)]
    pub(crate) pretty: bool,
}

#[derive(Args)]
pub struct LoginArgs {
    /// The server root, e.g. http://localhost:8103/.
    #[arg(long)]
    url: String,
    /// Email of a user (with --password).
    #[arg(long, requires = "password", required_unless_present = "client_id")]
    email: Option<String>,
    #[arg(long, env = "KILN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A ClientApplication's id (with --client-secret): the client-credentials grant.
    #[arg(long, requires = "client_secret", conflicts_with = "email")]
    client_id: Option<String>,
    #[arg(long, env = "KILN_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
}

#[derive(Args)]
pub struct PathArgs {
    /// Relative to the FHIR base (`Patient/123`, `Patient?name=x`, `metadata`) or an
    /// absolute URL on the same server.
    path: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct BodyArgs {
    /// Relative to the FHIR base, or an absolute URL on the same server.
    path: String,
    /// The JSON body: a file, or `-` (the default) for stdin.
    #[arg(default_value = "-")]
    file: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    body: BodyArgs,
    /// Update only if this is still the current version (`If-Match`).
    #[arg(long)]
    if_match: Option<String>,
}

#[derive(Args)]
pub struct SearchArgs {
    /// The resource type, e.g. Patient.
    resource_type: String,
    /// The search parameters, e.g. 'name=smith&_count=10'.
    #[arg(default_value = "")]
    query: String,
    /// Follow `next` links and print every match, not only the first page.
    #[arg(long)]
    all: bool,
    /// An aligned table (id, lastUpdated, a short summary) instead of NDJSON.
    #[arg(long)]
    table: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Export the Patient compartments (`Patient/$export`) instead of the whole system.
    #[arg(long, conflicts_with = "group")]
    patient: bool,
    /// Export this Group's members and their compartments (`Group/ID/$export`).
    #[arg(long, value_name = "ID")]
    group: Option<String>,
    /// Only these resource types (comma-separated).
    #[arg(long = "type")]
    types: Option<String>,
    /// Only resources changed since this instant.
    #[arg(long)]
    since: Option<String>,
    /// The directory to write the NDJSON files to (created when missing).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

/// Why a command failed; each maps to an exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad arguments, an unreadable file, invalid JSON: exit 2.
    Usage(String),
    Client(Error),
    /// `kiln import` ran, but the server refused some lines or entries (each reported
    /// already): exit 1.
    Refused,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Client(e)
    }
}

pub(crate) type Outcome<T = ()> = Result<T, Failure>;

pub(crate) fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

/// Reports `failure` on stderr and returns its exit code.
fn report(failure: Failure) -> i32 {
    match failure {
        Failure::Refused => 1,
        Failure::Usage(message) => {
            eprintln!("error: {message}");
            2
        }
        Failure::Client(e) => {
            let code = exit_code(&e);
            match &e {
                Error::Http { outcome: Some(outcome), .. } => {
                    eprintln!("error: {e}");
                    eprintln!("{outcome}");
                }
                Error::Http { body, .. } if !body.is_empty() => {
                    eprintln!("error: {e}");
                    eprintln!("{body}");
                }
                _ => eprintln!("error: {e}"),
            }
            code
        }
    }
}

/// The exit code of an SDK error.
fn exit_code(e: &Error) -> i32 {
    match e {
        Error::Network(_) => 5,
        Error::Invalid(_) => 2,
        Error::Http { status, .. } | Error::Auth { status: Some(status), .. } => {
            if *status >= 500 {
                4
            } else {
                3
            }
        }
        Error::Auth { status: None, .. } => 3,
        // The server answered something unreadable.
        _ => 4,
    }
}

/// Runs a client command; the process exit code.
pub fn main(command: ClientCommand) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => 0,
        Err(failure) => report(failure),
    }
}

async fn run(command: ClientCommand) -> Outcome {
    match command {
        ClientCommand::Login(args) => login(args).await,
        ClientCommand::Logout => {
            let path = session_path()?;
            match std::fs::remove_file(&path) {
                Ok(()) => eprintln!("Signed out ({} removed)", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!("No session"),
                Err(e) => return Err(usage(format!("{}: {e}", path.display()))),
            }
            Ok(())
        }
        ClientCommand::Get(args) => {
            let session = Connection::open(&args.common).await?;
            let result = session.client.get_path(&args.path).await;
            session.finish().await;
            print_json(&result?, args.common.pretty);
            Ok(())
        }
        ClientCommand::Post(args) => {
            let body = read_body(&args.file)?;
            let session = Connection::open(&args.common).await?;
            let path = relative_path(&session.client, &args.path)?;
            let result = if path.is_empty() {
                session.client.execute_bundle(&body).await
            } else {
                let ty = body["resourceType"].as_str().unwrap_or_default();
                if path != ty {
                    return Err(usage(format!("POST {path}: the body is a {ty:?}")));
                }
                session.client.create(&body).await
            };
            session.finish().await;
            print_json(&result?, args.common.pretty);
            Ok(())
        }
        ClientCommand::Put(args) => {
            let mut body = read_body(&args.body.file)?;
            let session = Connection::open(&args.body.common).await?;
            let (ty, id) = type_and_id(&session.client, &args.body.path)?;
            if body["resourceType"] != ty {
                return Err(usage(format!("PUT {ty}/{id}: the body is not a {ty}")));
            }
            match body["id"].as_str() {
                None => body["id"] = Value::String(id.clone()),
                Some(own) if own != id => {
                    return Err(usage(format!("PUT {ty}/{id}: the body's id is {own}")));
                }
                Some(_) => {}
            }
            let result = match &args.if_match {
                Some(version) => session.client.update_if_match(&body, version).await,
                None => session.client.update(&body).await,
            };
            session.finish().await;
            print_json(&result?, args.body.common.pretty);
            Ok(())
        }
        ClientCommand::Patch(args) => {
            let body = read_body(&args.file)?;
            let session = Connection::open(&args.common).await?;
            let (ty, id) = type_and_id(&session.client, &args.path)?;
            let result = if body.is_array() {
                session.client.patch_json(&ty, &id, &body).await
            } else if body["resourceType"] == "Parameters" {
                session.client.patch_fhirpath(&ty, &id, &body).await
            } else {
                return Err(usage(
                    "a patch is a JSON Patch array or a Parameters resource (FHIRPath Patch)",
                ));
            };
            session.finish().await;
            print_json(&result?, args.common.pretty);
            Ok(())
        }
        ClientCommand::Delete(args) => {
            let session = Connection::open(&args.common).await?;
            let (ty, id) = type_and_id(&session.client, &args.path)?;
            let result = session.client.delete(&ty, &id).await;
            session.finish().await;
            result?;
            eprintln!("Deleted {ty}/{id}");
            Ok(())
        }
        ClientCommand::Search(args) => search(args).await,
        ClientCommand::Export(args) => export(args).await,
        ClientCommand::Import(args) => crate::import_cmd::run(args).await,
    }
}

// --- Session ---------------------------------------------------------------------------

/// What `session.json` holds.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
struct Session {
    url: String,
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// Seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
}

fn config_dir() -> Outcome<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("KILN_CONFIG_DIR") {
        return Ok(dir);
    }
    if let Some(dir) = var("XDG_CONFIG_HOME") {
        return Ok(dir.join("kiln"));
    }
    match var("HOME") {
        Some(home) => Ok(home.join(".config").join("kiln")),
        None => Err(usage("no configuration directory: set KILN_CONFIG_DIR or HOME")),
    }
}

fn session_path() -> Outcome<PathBuf> {
    Ok(config_dir()?.join("session.json"))
}

fn load_session() -> Outcome<Option<Session>> {
    let path = session_path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| usage(format!("{}: {e} (run kiln login again)", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(usage(format!("{}: {e}", path.display()))),
    }
}

/// Writes the session readable by its owner only: a temporary file created with mode 0600,
/// then renamed over `session.json`, in a directory of mode 0700.
fn save_session(session: &Session) -> Outcome {
    let dir = config_dir()?;
    let fail = |e: std::io::Error| usage(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    let tmp = dir.join(format!("session.json.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let bytes = serde_json::to_vec_pretty(session).map_err(|e| usage(e.to_string()))?;
    let mut file = options.open(&tmp).map_err(fail)?;
    file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(fail)?;
    std::fs::rename(&tmp, dir.join("session.json")).map_err(fail)?;
    Ok(())
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A `--url` as a server root: a trailing `fhir/R4` is taken off.
fn normalise_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    let root = trimmed.strip_suffix("/fhir/R4").unwrap_or(trimmed);
    format!("{root}/")
}

fn new_client(url: &str) -> Outcome<KilnClient> {
    let http = reqwest::Client::builder()
        .user_agent(concat!("kiln-cli/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| usage(e.to_string()))?;
    Ok(KilnClient::with_http_client(url, http)?)
}

/// A client signed in from the saved session (or `KILN_TOKEN`), and the session to save
/// again when its tokens were renewed.
pub(crate) struct Connection {
    pub(crate) client: KilnClient,
    saved: Option<Session>,
}

impl Connection {
    /// The server `--url` names, else the saved session's; and the session.
    fn server(common: &Common) -> Outcome<(String, Option<Session>)> {
        let session = load_session()?;
        let url = match (&common.url, &session) {
            (Some(url), _) => normalise_url(url),
            (None, Some(session)) => session.url.clone(),
            (None, None) => {
                return Err(usage("no server: run kiln login, or give --url"));
            }
        };
        Ok((url, session))
    }

    /// A client signed in with an email and password for this command only (nothing saved).
    pub(crate) async fn sign_in(
        common: &Common,
        email: &str,
        password: &str,
    ) -> Outcome<Connection> {
        let url = match &common.url {
            Some(url) => normalise_url(url),
            None => Connection::server(common)?.0,
        };
        let client = new_client(&url)?;
        client.login(email, password).await?;
        Ok(Connection { client, saved: None })
    }

    pub(crate) async fn open(common: &Common) -> Outcome<Connection> {
        let (url, session) = Connection::server(common)?;
        let client = new_client(&url)?;
        if let Some(token) = std::env::var("KILN_TOKEN").ok().filter(|t| !t.is_empty()) {
            return Ok(Connection { client: client.with_token(&token), saved: None });
        }
        // The saved tokens are sent only to the server they came from.
        let Some(session) = session.filter(|s| s.url == url) else {
            return Ok(Connection { client, saved: None });
        };
        let expires_at = session.expires_at.map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        let due = expires_at.is_some_and(|at| at <= SystemTime::now() + Duration::from_secs(60));
        match (&session.client_id, &session.client_secret) {
            (Some(id), Some(secret)) if due => {
                client.client_credentials(id, secret).await?;
            }
            _ => {
                let refresh = session.refresh_token.as_deref();
                client.restore_tokens(&session.access_token, refresh, expires_at).await;
            }
        }
        Ok(Connection { client, saved: Some(session) })
    }

    /// Saves the session again when the SDK renewed its tokens.
    pub(crate) async fn finish(&self) {
        let Some(saved) = &self.saved else { return };
        let Some(access) = self.client.access_token().await else { return };
        if access == saved.access_token {
            return;
        }
        let renewed = Session {
            access_token: access,
            refresh_token: self.client.refresh_token().await.or(saved.refresh_token.clone()),
            expires_at: self.client.token_expires_at().await.map(unix_seconds),
            ..saved.clone()
        };
        if let Err(Failure::Usage(message)) = save_session(&renewed) {
            eprintln!("warning: the renewed session was not saved: {message}");
        }
    }
}

async fn login(args: LoginArgs) -> Outcome {
    let url = normalise_url(&args.url);
    let client = new_client(&url)?;
    let mut session = match (&args.email, &args.password, &args.client_id, &args.client_secret) {
        (Some(email), Some(password), _, _) => {
            client.login(email, password).await?;
            Session {
                url: url.clone(),
                access_token: String::new(),
                refresh_token: client.refresh_token().await,
                expires_at: None,
                client_id: None,
                client_secret: None,
            }
        }
        (_, _, Some(id), Some(secret)) => {
            client.client_credentials(id, secret).await?;
            Session {
                url: url.clone(),
                access_token: String::new(),
                refresh_token: None,
                expires_at: None,
                client_id: Some(id.clone()),
                client_secret: Some(secret.clone()),
            }
        }
        _ => return Err(usage("give --email and --password, or --client-id and --client-secret")),
    };
    session.access_token = client.access_token().await.unwrap_or_default();
    session.expires_at = client.token_expires_at().await.map(unix_seconds);
    save_session(&session)?;
    eprintln!("Signed in to {url}; session saved in {}", session_path()?.display());
    Ok(())
}

// --- Paths and bodies ----------------------------------------------------------------------

/// `path` relative to the FHIR base: an absolute URL must be under it.
fn relative_path(client: &KilnClient, path: &str) -> Outcome<String> {
    if path.contains("://") {
        let base = client.fhir_base().as_str();
        return match path.strip_prefix(base) {
            Some(rest) => Ok(rest.to_owned()),
            None => Err(usage(format!("{path} is not under this server's FHIR base {base}"))),
        };
    }
    Ok(path.trim_start_matches('/').to_owned())
}

/// `Type/id` from a path.
fn type_and_id(client: &KilnClient, path: &str) -> Outcome<(String, String)> {
    let relative = relative_path(client, path)?;
    let relative = relative.split(['?', '#']).next().unwrap_or_default().trim_end_matches('/');
    match relative.split('/').collect::<Vec<_>>().as_slice() {
        [ty, id] if !ty.is_empty() && !id.is_empty() => Ok(((*ty).to_owned(), (*id).to_owned())),
        _ => Err(usage(format!("{path}: expected Type/id"))),
    }
}

fn read_body(file: &str) -> Outcome<Value> {
    let mut bytes = Vec::new();
    let read = if file == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::read(file).map(|b| bytes = b)
    };
    read.map_err(|e| usage(format!("{file}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| usage(format!("{file}: invalid JSON: {e}")))
}

fn print_json(value: &Value, pretty: bool) {
    let text =
        if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) };
    println!("{}", text.unwrap_or_default());
}

// --- Search ----------------------------------------------------------------------------------

async fn search(args: SearchArgs) -> Outcome {
    let query: Vec<(String, String)> = reqwest::Url::parse("http://query.invalid/")
        .map(|mut url| {
            url.set_query(Some(args.query.trim_start_matches('?')));
            url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
        })
        .map_err(|e| usage(e.to_string()))?;
    let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let session = Connection::open(&args.common).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut rows = Vec::new();
    let table = args.table;
    let mut write = |resource: &Value| -> Outcome {
        if table {
            rows.push(table_row(resource));
            return Ok(());
        }
        serde_json::to_writer(&mut out, resource)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| usage(format!("stdout: {e}")))
    };
    let result: Outcome = async {
        if args.all {
            let mut stream = std::pin::pin!(session.client.search(&args.resource_type, &pairs));
            while let Some(resource) = stream.try_next().await? {
                write(&resource)?;
            }
        } else {
            let page = session.client.search_page(&args.resource_type, &pairs).await?;
            let entries = page["entry"].as_array().map(Vec::as_slice).unwrap_or_default();
            for entry in entries {
                let mode = entry["search"]["mode"].as_str();
                if mode.is_none_or(|m| m == "match")
                    && let Some(resource) = entry.get("resource")
                {
                    write(resource)?;
                }
            }
        }
        Ok(())
    }
    .await;
    session.finish().await;
    if table {
        write_table(&mut out, &rows).map_err(|e| usage(format!("stdout: {e}")))?;
    }
    out.flush().map_err(|e| usage(format!("stdout: {e}")))?;
    result
}

/// A resource's `--table` row: id, lastUpdated, a short summary.
fn table_row(resource: &Value) -> [String; 3] {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let name = resource["name"].get(0).map(|name| {
        let given = name["given"].as_array().into_iter().flatten().filter_map(Value::as_str);
        let mut parts: Vec<&str> = given.collect();
        parts.extend(name["family"].as_str());
        if parts.is_empty() { text(&name["text"]) } else { parts.join(" ") }
    });
    let code = &resource["code"];
    let summary = name
        .filter(|n| !n.is_empty())
        .or_else(|| code["text"].as_str().map(str::to_owned))
        .or_else(|| code["coding"][0]["display"].as_str().map(str::to_owned))
        .or_else(|| code["coding"][0]["code"].as_str().map(str::to_owned))
        .or_else(|| resource["status"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let summary: String = summary.chars().take(60).collect();
    [text(&resource["id"]), text(&resource["meta"]["lastUpdated"]), summary]
}

/// The rows under a header, columns padded to their widest cell.
fn write_table(out: &mut impl Write, rows: &[[String; 3]]) -> std::io::Result<()> {
    let header = ["ID".to_owned(), "LAST UPDATED".to_owned(), "SUMMARY".to_owned()];
    let width =
        |i: usize| rows.iter().chain([&header]).map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1) = (width(0), width(1));
    for row in std::iter::once(&header).chain(rows) {
        writeln!(out, "{:w0$}  {:w1$}  {}", row[0], row[1], row[2])?;
    }
    Ok(())
}

// --- Export ----------------------------------------------------------------------------------

async fn export(args: ExportArgs) -> Outcome {
    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|e| usage(format!("{}: {e}", out.display())))?;
    let mut query = Vec::new();
    if let Some(types) = &args.types {
        query.push(("_type", types.as_str()));
    }
    if let Some(since) = &args.since {
        query.push(("_since", since.as_str()));
    }
    let level = match (&args.group, args.patient) {
        (Some(id), _) => ExportLevel::Group(id),
        (None, true) => ExportLevel::Patient,
        (None, false) => ExportLevel::System,
    };
    let session = Connection::open(&args.common).await?;
    let result = export_into(&session.client, level, &query, out).await;
    session.finish().await;
    let summary = result?;
    print_json(&summary, false);
    Ok(())
}

async fn export_into(
    client: &KilnClient,
    level: ExportLevel<'_>,
    query: &[(&str, &str)],
    out: &Path,
) -> Outcome<Value> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message("starting the export");
    let job = client.export(level, query).await?;
    let manifest = client
        .wait_for_job(&job, |progress| spinner.set_message(format!("exporting: {progress}")))
        .await?;
    spinner.finish_and_clear();
    write_file(
        &out.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )?;

    let outputs = manifest["output"].as_array().cloned().unwrap_or_default();
    let total: u64 = outputs.iter().filter_map(|o| o["count"].as_u64()).sum();
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} resources {msg} ({per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    let mut per_type = std::collections::HashMap::<String, usize>::new();
    let (mut downloaded, mut skipped, mut resources) = (0u64, 0u64, 0u64);
    for output in &outputs {
        let ty = output["type"].as_str().unwrap_or("Resource");
        let url = output["url"].as_str().ok_or_else(|| {
            Failure::Client(Error::Unexpected("a manifest output without url".into()))
        })?;
        let n = per_type.entry(ty.to_owned()).or_default();
        *n += 1;
        let name = format!("{ty}-{n}.ndjson");
        let path = out.join(&name);
        let expected = output["count"].as_u64();
        if let Some(expected) = expected
            && count_lines(&path) == Some(expected)
        {
            bar.inc(expected);
            skipped += 1;
            resources += expected;
            continue;
        }
        bar.set_message(name.clone());
        let written = download(client, url, &path, &bar).await?;
        if let Some(expected) = expected
            && written != expected
        {
            return Err(Failure::Client(Error::Unexpected(format!(
                "{name}: {written} resources downloaded, the manifest says {expected}"
            ))));
        }
        downloaded += 1;
        resources += written;
    }
    bar.finish_and_clear();
    eprintln!(
        "Exported {resources} resources into {}: {downloaded} files downloaded, {skipped} already complete",
        out.display()
    );
    Ok(serde_json::json!({
        "out": out.display().to_string(),
        "files": outputs.len(),
        "downloaded": downloaded,
        "skipped": skipped,
        "resources": resources,
    }))
}

/// Streams one NDJSON file into `<path>.partial`, then renames it; the resources written.
async fn download(
    client: &KilnClient,
    url: &str,
    path: &Path,
    bar: &indicatif::ProgressBar,
) -> Outcome<u64> {
    let partial = path.with_extension("ndjson.partial");
    let fail = |e: std::io::Error| usage(format!("{}: {e}", partial.display()));
    let file = std::fs::File::create(&partial).map_err(fail)?;
    let mut writer = std::io::BufWriter::new(file);
    let mut stream = std::pin::pin!(client.download_ndjson(url));
    let mut written = 0u64;
    while let Some(resource) = stream.next().await {
        let resource = resource?;
        serde_json::to_writer(&mut writer, &resource).map_err(|e| fail(e.into()))?;
        writer.write_all(b"\n").map_err(fail)?;
        written += 1;
        bar.inc(1);
    }
    writer.flush().map_err(fail)?;
    drop(writer);
    std::fs::rename(&partial, path).map_err(fail)?;
    Ok(written)
}

/// The number of non-blank lines of `path`, or `None` when it cannot be read.
fn count_lines(path: &Path) -> Option<u64> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).ok()?;
    let mut count = 0;
    for line in std::io::BufReader::new(file).lines() {
        if !line.ok()?.trim().is_empty() {
            count += 1;
        }
    }
    Some(count)
}

fn write_file(path: &Path, bytes: &[u8]) -> Outcome {
    std::fs::write(path, bytes).map_err(|e| usage(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_server_roots() {
        assert_eq!(normalise_url("http://h:1"), "http://h:1/");
        assert_eq!(normalise_url("http://h:1/fhir/R4/"), "http://h:1/");
        assert_eq!(normalise_url("http://h:1/kiln/"), "http://h:1/kiln/");
    }

    #[test]
    fn exit_codes_by_error() {
        let http = |status| Error::Http { status, outcome: None, body: String::new() };
        assert_eq!(exit_code(&http(412)), 3);
        assert_eq!(exit_code(&http(503)), 4);
        assert_eq!(exit_code(&Error::Auth { status: Some(400), message: String::new() }), 3);
        assert_eq!(exit_code(&Error::Invalid(String::new())), 2);
        assert!(EXIT_CODES.contains("5 network"));
    }

    #[test]
    fn paths_give_type_and_id() {
        let client = KilnClient::new("http://h:1/").unwrap();
        let (ty, id) = type_and_id(&client, "http://h:1/fhir/R4/Patient/7").unwrap();
        assert_eq!((ty.as_str(), id.as_str()), ("Patient", "7"));
        assert!(type_and_id(&client, "Patient").is_err());
        assert!(type_and_id(&client, "http://elsewhere/fhir/R4/Patient/7").is_err());
    }
}
