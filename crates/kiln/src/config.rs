//! Configuration: command-line flags, each also settable by a `KILN_…` environment variable and
//! by a TOML file given with `--config`. Precedence: flag, then environment, then file, then the
//! built-in default.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kiln_store_sqlite::Durability;
use serde::Deserialize;

pub const DEFAULT_ADMIN_EMAIL: &str = "admin@example.com";
pub const DEFAULT_ADMIN_PASSWORD: &str = "medplum_admin";

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flags, with underscores).
    #[arg(long, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8103].
    #[arg(long, env = "KILN_LISTEN")]
    pub listen: Option<String>,
    /// Public base URL; every absolute URL Kiln emits starts with it [default: http://localhost:8103/].
    #[arg(long, env = "KILN_BASE_URL")]
    pub base_url: Option<String>,
    /// Directory of the embedded database and stored files [default: ./kiln-data].
    #[arg(long, env = "KILN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL (e.g. postgres://user@host/db); without it, the embedded SQLite store is used.
    #[arg(long, env = "KILN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// A read replica of the PostgreSQL database (streaming replication): clients' searches
    /// are answered from it and may lag the primary by the replication delay; reads by id,
    /// writes, conditional interactions and searches inside Bundles stay on the primary.
    #[arg(long, env = "KILN_READ_DATABASE_URL")]
    pub read_database_url: Option<String>,
    /// Connections this node keeps open to PostgreSQL (and as many to the read replica);
    /// PostgreSQL's `max_connections` must cover every node's [default: 16].
    #[arg(long, env = "KILN_DATABASE_POOL")]
    pub database_pool: Option<usize>,
    /// The longest a search may run (on PostgreSQL: any one statement, a write waiting for a
    /// lock included) before it is stopped with a 503 `timeout` OperationOutcome, e.g. 500ms,
    /// 30s, 2m; 0 for no limit [default: 60s].
    #[arg(long, env = "KILN_QUERY_TIMEOUT")]
    pub query_timeout: Option<String>,
    /// Where binary content (Binary resources, bulk export and import files) is kept:
    /// `database` (PostgreSQL only: every node sees it; files written earlier under
    /// `<data dir>/binary` stay readable) or `files` (under `<data dir>/binary`) [default:
    /// database with --database-url, else files].
    #[arg(long, env = "KILN_BINARY_STORAGE")]
    pub binary_storage: Option<String>,
    /// TLS certificate chain (PEM); serves HTTPS (TLS 1.2 and 1.3) with --tls-key.
    #[arg(long, env = "KILN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "KILN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Largest request body in bytes [default: 16777216].
    #[arg(long, env = "KILN_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Log filter, e.g. info or kiln_server=debug [default: info].
    #[arg(long, env = "KILN_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "KILN_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Commit durability: full (fsync, survives power loss) or normal (survives a crash) [default: full].
    #[arg(long, env = "KILN_DURABILITY")]
    pub durability: Option<String>,
    /// Deliver mail (invitations, password links) over SMTP: `smtp://[user:pass@]host[:port]`
    /// (STARTTLS when offered; `?tls=required` to insist) or `smtps://…`. Without it, mail is
    /// only logged and written to `<data dir>/outbox/mail.jsonl`.
    #[arg(long, env = "KILN_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// Proxies (load balancers) whose `X-Forwarded-For` header tells the client's address,
    /// comma-separated CIDR ranges, e.g. `10.0.0.0/8,127.0.0.1`. Without it the connection's
    /// peer is the client (login throttling, `ipAccessRule`).
    #[arg(long, env = "KILN_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// The sender of Kiln's mail, `Name <address>` [default: Kiln <noreply@localhost>].
    #[arg(long, env = "KILN_MAIL_FROM")]
    pub mail_from: Option<String>,
    /// Self-registration: off, patients (only into projects with a defaultPatientAccessPolicy)
    /// or open (anyone may sign up and create a project) [default: patients].
    #[arg(long, env = "KILN_REGISTRATION")]
    pub registration: Option<String>,
    /// Bulk export: resources per NDJSON file before the next part begins [default: 100000].
    #[arg(long, env = "KILN_EXPORT_FILE_RESOURCES")]
    pub export_file_resources: Option<u64>,
    /// Bulk export: how long finished files stay downloadable, e.g. 30m, 24h, 7d [default: 24h].
    #[arg(long, env = "KILN_EXPORT_RETENTION")]
    pub export_retention: Option<String>,
    /// Bulk export: exports this node runs at once; the rest wait [default: 2].
    #[arg(long, env = "KILN_EXPORT_WORKERS")]
    pub export_workers: Option<usize>,
    /// Bulk export: unfinished exports one client (membership) may have; more is 429 [default: 2].
    #[arg(long, env = "KILN_EXPORTS_PER_CLIENT")]
    pub exports_per_client: Option<usize>,
    /// Bulk export: serve file links signed for this long (e.g. 10m), usable without a token
    /// (`requiresAccessToken: false`); unset: every download needs the caller's token.
    #[arg(long, env = "KILN_EXPORT_SIGNED_URLS")]
    pub export_signed_urls: Option<String>,
    /// Background jobs: how long a job stays a node's without the node renewing it, e.g. 30s;
    /// when a node dies, another takes its jobs over after this long [default: 30s].
    #[arg(long, env = "KILN_JOB_LEASE")]
    pub job_lease: Option<String>,
    /// Redis (e.g. redis://127.0.0.1:6379/) for what the nodes of a deployment share beyond
    /// the database: login-throttle and replay counters, and notices that make a change of
    /// access policies or search parameters on one node take effect on all at once.
    #[arg(long, env = "KILN_REDIS_URL")]
    pub redis_url: Option<String>,
}

/// The same settings as read from a TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    base_url: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    read_database_url: Option<String>,
    database_pool: Option<usize>,
    query_timeout: Option<String>,
    binary_storage: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_body: Option<usize>,
    log_level: Option<String>,
    log_format: Option<String>,
    durability: Option<String>,
    smtp_url: Option<String>,
    mail_from: Option<String>,
    trusted_proxies: Option<String>,
    registration: Option<String>,
    export_file_resources: Option<u64>,
    export_retention: Option<String>,
    export_workers: Option<usize>,
    exports_per_client: Option<usize>,
    export_signed_urls: Option<String>,
    job_lease: Option<String>,
    redis_url: Option<String>,
}

/// Where binary content is kept (`--binary-storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryStorage {
    /// In PostgreSQL's `blob` tables, shared by every node.
    Database,
    /// As files under `<data dir>/binary`.
    Files,
}

/// Resolved settings.
#[derive(Debug)]
pub struct Settings {
    pub listen: String,
    pub base_url: String,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub read_database_url: Option<String>,
    pub database_pool: usize,
    pub query_timeout: Option<std::time::Duration>,
    pub binary_storage: BinaryStorage,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_body: usize,
    pub log_level: String,
    pub log_format: String,
    pub durability: Durability,
    pub smtp_url: Option<String>,
    pub mail_from: String,
    pub trusted_proxies: Vec<kiln_server::client_ip::Cidr>,
    pub registration: kiln_engine::Registration,
    pub export: kiln_engine::export::ExportLimits,
    pub job_queue: kiln_engine::JobQueue,
    pub redis_url: Option<String>,
    pub admin_email: String,
    pub admin_password: String,
}

impl Settings {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileSettings>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileSettings::default(),
        };
        let durability = match args.durability.or(file.durability).as_deref() {
            None | Some("full") => Durability::Full,
            Some("normal") => Durability::Normal,
            Some(other) => anyhow::bail!("durability must be full or normal, not {other}"),
        };
        let database_url = args.database_url.or(file.database_url).filter(|it| !it.is_empty());
        let read_database_url =
            args.read_database_url.or(file.read_database_url).filter(|it| !it.is_empty());
        if read_database_url.is_some() && database_url.is_none() {
            anyhow::bail!("--read-database-url needs --database-url (a replica of that database)");
        }
        let database_pool = args.database_pool.or(file.database_pool).unwrap_or(16);
        if database_pool == 0 {
            anyhow::bail!("--database-pool must be at least 1");
        }
        let query_timeout = match args.query_timeout.or(file.query_timeout) {
            None => Some(DEFAULT_QUERY_TIMEOUT),
            Some(text) => {
                let limit = parse_duration(&text).with_context(|| {
                    format!("query timeout '{text}': expected e.g. 500ms, 30s or 2m, or 0 for none")
                })?;
                (!limit.is_zero()).then_some(limit)
            }
        };
        let binary_storage = match args.binary_storage.or(file.binary_storage).as_deref() {
            None if database_url.is_some() => BinaryStorage::Database,
            None | Some("files") => BinaryStorage::Files,
            Some("database") if database_url.is_some() => BinaryStorage::Database,
            Some("database") => {
                anyhow::bail!("--binary-storage database needs PostgreSQL (--database-url)")
            }
            Some(other) => anyhow::bail!("binary storage must be database or files, not {other}"),
        };
        let registration = match args.registration.or(file.registration) {
            Some(mode) => mode.parse().map_err(anyhow::Error::msg)?,
            None => kiln_engine::Registration::default(),
        };
        let mut trusted_proxies = Vec::new();
        for part in args.trusted_proxies.or(file.trusted_proxies).unwrap_or_default().split(',') {
            if part.trim().is_empty() {
                continue;
            }
            match kiln_server::client_ip::Cidr::parse(part) {
                Some(cidr) => trusted_proxies.push(cidr),
                None => anyhow::bail!(
                    "trusted proxies: '{}' is not an address or CIDR range",
                    part.trim()
                ),
            }
        }
        let defaults = kiln_engine::export::ExportLimits::default();
        let retention = match args.export_retention.or(file.export_retention) {
            Some(text) => parse_duration(&text).with_context(|| {
                format!("export retention '{text}': expected a number and s, m, h or d, e.g. 24h")
            })?,
            None => defaults.retention,
        };
        let signed_urls = match args.export_signed_urls.or(file.export_signed_urls) {
            Some(text) => Some(parse_duration(&text).with_context(|| {
                format!("export signed URLs '{text}': expected a lifetime such as 10m")
            })?),
            None => None,
        };
        let export = kiln_engine::export::ExportLimits {
            signed_urls,
            part_size: args
                .export_file_resources
                .or(file.export_file_resources)
                .unwrap_or(defaults.part_size)
                .max(1),
            retention,
            workers: args.export_workers.or(file.export_workers).unwrap_or(defaults.workers).max(1),
            per_client: args
                .exports_per_client
                .or(file.exports_per_client)
                .unwrap_or(defaults.per_client)
                .max(1),
            ..defaults
        };
        let lease = match args.job_lease.or(file.job_lease) {
            Some(text) => parse_duration(&text)
                .with_context(|| format!("job lease '{text}': expected a duration such as 30s"))?,
            None => kiln_engine::JobQueue::default().lease,
        };
        // Room for the exports this node runs plus reindexing and asynchronous Bundles.
        let job_queue = kiln_engine::JobQueue::new(lease, export.workers + 2);
        let log_format = args.log_format.or(file.log_format).unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            anyhow::bail!("log format must be text or json, not {log_format}");
        }
        Ok(Settings {
            listen: args.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8103".into()),
            base_url: args
                .base_url
                .or(file.base_url)
                .unwrap_or_else(|| "http://localhost:8103/".into()),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./kiln-data")),
            database_url,
            read_database_url,
            database_pool,
            query_timeout,
            binary_storage,
            tls_cert: args.tls_cert.or(file.tls_cert),
            tls_key: args.tls_key.or(file.tls_key),
            max_body: args.max_body.or(file.max_body).unwrap_or(16 * 1024 * 1024),
            log_level: args.log_level.or(file.log_level).unwrap_or_else(|| "info".into()),
            log_format,
            durability,
            trusted_proxies,
            smtp_url: args.smtp_url.or(file.smtp_url).filter(|it| !it.is_empty()),
            mail_from: args
                .mail_from
                .or(file.mail_from)
                .unwrap_or_else(|| "Kiln <noreply@localhost>".into()),
            registration,
            export,
            job_queue,
            redis_url: args.redis_url.or(file.redis_url).filter(|it| !it.is_empty()),
            admin_email: std::env::var("KILN_ADMIN_EMAIL")
                .unwrap_or_else(|_| DEFAULT_ADMIN_EMAIL.into()),
            admin_password: std::env::var("KILN_ADMIN_PASSWORD")
                .unwrap_or_else(|_| DEFAULT_ADMIN_PASSWORD.into()),
        })
    }
}

/// How long a search may run unless `--query-timeout` says otherwise.
const DEFAULT_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `500ms`, `30s`, `15m`, `24h`, `7d`; a bare `0` is zero.
fn parse_duration(text: &str) -> anyhow::Result<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().context("no number")?;
    let secs = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "" if n == 0 => 0,
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => anyhow::bail!("unknown unit '{other}'"),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("kiln-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kiln.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9000\"\nbase_url = \"https://fhir.example\"\n")
            .unwrap();
        let args = ServeArgs {
            config: Some(path),
            base_url: Some("https://flag.example/".into()),
            ..ServeArgs::default()
        };
        let settings = Settings::resolve(args).unwrap();
        assert_eq!(settings.listen, "0.0.0.0:9000");
        assert_eq!(settings.base_url, "https://flag.example/");
        assert_eq!(settings.max_body, 16 * 1024 * 1024);
        assert_eq!(settings.durability, Durability::Full);
        assert_eq!(settings.registration, kiln_engine::Registration::Patients);
    }

    #[test]
    fn binary_storage_follows_the_database() {
        let resolve = |url: Option<&str>, storage: Option<&str>| {
            Settings::resolve(ServeArgs {
                database_url: url.map(str::to_owned),
                binary_storage: storage.map(str::to_owned),
                ..ServeArgs::default()
            })
        };
        let pg = Some("postgres://kiln@db/kiln");
        assert_eq!(resolve(None, None).unwrap().binary_storage, BinaryStorage::Files);
        assert_eq!(resolve(pg, None).unwrap().binary_storage, BinaryStorage::Database);
        assert_eq!(resolve(pg, Some("files")).unwrap().binary_storage, BinaryStorage::Files);
        assert_eq!(resolve(pg, Some("database")).unwrap().binary_storage, BinaryStorage::Database);
        let err = resolve(None, Some("database")).unwrap_err().to_string();
        assert!(err.contains("needs PostgreSQL"), "{err}");
        assert!(resolve(pg, Some("s3")).is_err());
        let replica_alone = Settings::resolve(ServeArgs {
            read_database_url: Some("postgres://kiln@replica/kiln".into()),
            ..ServeArgs::default()
        });
        assert!(replica_alone.unwrap_err().to_string().contains("needs --database-url"));
    }

    #[test]
    fn the_query_timeout_defaults_to_a_minute_and_0_lifts_it() {
        let limit = |text: Option<&str>| {
            Settings::resolve(ServeArgs {
                query_timeout: text.map(str::to_owned),
                ..ServeArgs::default()
            })
            .map(|s| s.query_timeout)
        };
        assert_eq!(limit(None).unwrap(), Some(std::time::Duration::from_secs(60)));
        assert_eq!(limit(Some("500ms")).unwrap(), Some(std::time::Duration::from_millis(500)));
        assert_eq!(limit(Some("2m")).unwrap(), Some(std::time::Duration::from_secs(120)));
        assert_eq!(limit(Some("0")).unwrap(), None);
        assert!(limit(Some("fast")).is_err());
    }

    #[test]
    fn the_database_pool_defaults_to_16_and_must_hold_a_connection() {
        let pool = |n: Option<usize>| {
            Settings::resolve(ServeArgs { database_pool: n, ..ServeArgs::default() })
                .map(|s| s.database_pool)
        };
        assert_eq!(pool(None).unwrap(), 16);
        assert_eq!(pool(Some(4)).unwrap(), 4);
        assert!(pool(Some(0)).is_err());
    }

    #[test]
    fn export_settings_parse() {
        let settings = Settings::resolve(ServeArgs {
            export_retention: Some("2h".into()),
            export_file_resources: Some(5000),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(settings.export.retention, std::time::Duration::from_secs(7200));
        assert_eq!(settings.export.part_size, 5000);
        assert_eq!(settings.export.workers, 2);
        let bad = ServeArgs { export_retention: Some("soon".into()), ..ServeArgs::default() };
        assert!(Settings::resolve(bad).is_err());
    }

    #[test]
    fn job_queue_settings_parse() {
        let settings = Settings::resolve(ServeArgs {
            job_lease: Some("10s".into()),
            export_workers: Some(3),
            redis_url: Some("redis://127.0.0.1:6379/".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(settings.job_queue.lease, std::time::Duration::from_secs(10));
        assert_eq!(settings.job_queue.poll, std::time::Duration::from_secs(10) / 6);
        assert_eq!(settings.job_queue.slots, 5);
        assert_eq!(settings.redis_url.as_deref(), Some("redis://127.0.0.1:6379/"));
        let defaults = Settings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(defaults.job_queue.lease, std::time::Duration::from_secs(30));
        assert_eq!(defaults.redis_url, None);
        let bad = ServeArgs { job_lease: Some("a while".into()), ..ServeArgs::default() };
        assert!(Settings::resolve(bad).is_err());
    }

    #[test]
    fn registration_modes_parse_and_others_are_errors() {
        let with = |mode: &str| {
            Settings::resolve(ServeArgs { registration: Some(mode.into()), ..ServeArgs::default() })
        };
        assert_eq!(with("open").unwrap().registration, kiln_engine::Registration::Open);
        assert_eq!(with("off").unwrap().registration, kiln_engine::Registration::Off);
        assert!(with("yes").is_err());
    }

    #[test]
    fn trusted_proxies_are_ranges_and_mistakes_are_errors() {
        let with = |list: &str| {
            Settings::resolve(ServeArgs {
                trusted_proxies: Some(list.into()),
                ..ServeArgs::default()
            })
        };
        let settings = with("10.0.0.0/8, 127.0.0.1,").unwrap();
        assert_eq!(settings.trusted_proxies.len(), 2);
        assert!(settings.trusted_proxies[0].contains("10.9.8.7".parse().unwrap()));
        assert!(with("10.0.0.0/99").is_err());
        assert!(Settings::resolve(ServeArgs::default()).unwrap().trusted_proxies.is_empty());
    }

    #[test]
    fn passwords_are_redacted_in_logs() {
        assert_eq!(crate::redact_password("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(crate::redact_password("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = std::env::temp_dir().join(format!("kiln-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kiln.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        assert!(
            Settings::resolve(ServeArgs { config: Some(path), ..ServeArgs::default() }).is_err()
        );
    }
}
