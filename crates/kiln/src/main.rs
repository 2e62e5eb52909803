//! The `kiln` binary: parses the command line and configuration, opens storage, and runs the
//! server. Everything else lives in the library crates; this file is glue.

mod client_cmd;
mod config;
mod import_cmd;
mod migrate_store_cmd;
mod redis_shared;
mod smtp;
mod synth_cmd;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiln_engine::{BaseUrl, Engine, Limits};
use kiln_server::{AppState, TlsFiles};
use kiln_store::{BlobStore, FsBlobStore, Store};
use kiln_store_postgres::{PgBlobStore, PostgresOptions, PostgresStore};
use kiln_store_sqlite::{SqliteOptions, SqliteStore};

use crate::config::{BinaryStorage, ServeArgs, Settings};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: a FHIR R4 server with Medplum's API",
    after_help = client_cmd::EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server.
    #[command(after_help = "Examples:\n  \
        kiln serve                                   # embedded SQLite in ./kiln-data, http://127.0.0.1:8103/\n  \
        kiln serve --data-dir /var/lib/kiln --listen 0.0.0.0:8103 --base-url https://fhir.example.org/\n  \
        kiln serve --database-url postgres://kiln@db/kiln --redis-url redis://cache:6379/\n  \
        kiln serve --tls-cert cert.pem --tls-key key.pem --listen 0.0.0.0:8443\n\n\
        Every option can also come from its KILN_* environment variable or a --config file.")]
    Serve(ServeArgs),
    /// Bring the store's schema up to date and exit (the server also does this at start).
    /// Takes the same storage settings as `serve` (--data-dir or --database-url, --config).
    #[command(after_help = "Examples:\n  \
        kiln migrate --data-dir ./kiln-data\n  \
        kiln migrate --database-url postgres://kiln@db/kiln\n\n\
        Safe while other nodes start (an advisory lock); a schema newer than this binary is refused.")]
    Migrate(ServeArgs),
    /// Write deterministic synthetic US Core patient records (Bundles or NDJSON) to a directory.
    Synth(synth_cmd::SynthArgs),
    /// Measure a FHIR server (a fresh Kiln, or any server on loopback with --url): CRUD,
    /// search, transaction import, bulk export; throughput and latency per operation.
    Bench(kiln_bench::BenchArgs),
    /// Copy an embedded (SQLite) store into PostgreSQL: every version, users, keys, jobs and
    /// binary files; verified by counts and checksums before it is committed.
    #[command(after_help = "Examples:\n  \
        kiln migrate-store --from sqlite:./kiln-data --to postgres://kiln@db/kiln\n  \
        kiln migrate-store --from sqlite:./kiln-data --to postgres://kiln@db/kiln --verify-only\n\n\
        Stop the server using the embedded store first.")]
    MigrateStore(migrate_store_cmd::MigrateStoreArgs),
    #[command(flatten)]
    Client(client_cmd::ClientCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::resolve(args)?;
            init_logging(&settings);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(settings))
        }
        Command::Synth(args) => synth_cmd::run(args),
        Command::Client(command) => std::process::exit(client_cmd::main(command)),
        Command::Bench(args) => match kiln_bench::main(args)? {
            true => Ok(()),
            false => std::process::exit(1),
        },
        Command::MigrateStore(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(migrate_store_cmd::run(args))
        }
        Command::Migrate(args) => {
            let settings = Settings::resolve(args)?;
            init_logging(&settings);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async {
                let (store, _, storage_text) = open_store(&settings).await?;
                store.close().await;
                println!("Storage schema is up to date: {storage_text}");
                Ok(())
            })
        }
    }
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if settings.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested; draining in-flight requests");
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs.
fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Opens (and migrates) the configured store.
/// Opens (and migrates) the configured store, and the blob store beside it.
async fn open_store(
    settings: &Settings,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn BlobStore>, String)> {
    let files = FsBlobStore::new(settings.data_dir.join("binary"));
    Ok(match &settings.database_url {
        Some(url) => {
            let options = PostgresOptions {
                pool_size: settings.database_pool,
                query_timeout: settings.query_timeout,
            };
            let mut store = PostgresStore::connect_with(url, None, &options)
                .await
                .with_context(|| "connecting to PostgreSQL (--database-url)".to_owned())?;
            let mut replica_text = String::new();
            if let Some(replica) = &settings.read_database_url {
                store = store.with_read_replica(replica).await.with_context(|| {
                    format!("connecting to the read replica {}", redact_password(replica))
                })?;
                replica_text = format!(", searches from {}", redact_password(replica));
            }
            let (blobs, where_blobs): (Arc<dyn BlobStore>, _) = match settings.binary_storage {
                // Files an earlier configuration wrote stay readable.
                BinaryStorage::Database => (
                    Arc::new(PgBlobStore::new(&store, Some(files))),
                    "binary content in the database",
                ),
                BinaryStorage::Files => (Arc::new(files), "binary content in files"),
            };
            let tls = if store.tls_in_use().await.unwrap_or(false) { " (TLS)" } else { "" };
            let text =
                format!("postgres at {}{tls}{replica_text}, {where_blobs}", redact_password(url));
            (Arc::new(store), blobs, text)
        }
        None => {
            let store = SqliteStore::open(
                &settings.data_dir.join("db"),
                SqliteOptions {
                    durability: settings.durability,
                    query_timeout: settings.query_timeout,
                },
            )
            .with_context(|| format!("opening the store in {}", settings.data_dir.display()))?;
            (Arc::new(store), Arc::new(files), format!("sqlite in {}", settings.data_dir.display()))
        }
    })
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let (store, blobs, storage_text) = open_store(&settings).await?;
    let base_url = BaseUrl::new(&settings.base_url);
    let signer =
        kiln_engine::accounts::load_signer(&*store, base_url.as_str().trim_end_matches('/'))
            .await
            .context("loading the signing key")?;
    let engine = Engine::new(store.clone(), blobs, base_url.clone(), Limits::default(), signer);
    engine.set_mail_outbox(settings.data_dir.join("outbox"));
    if let Some(url) = &settings.smtp_url {
        engine.set_mail_sender(Arc::new(smtp::SmtpSender::new(url, &settings.mail_from)?));
    }
    engine.set_registration(settings.registration);
    engine.set_export_limits(settings.export.clone());
    engine.set_job_queue(settings.job_queue.clone());
    if let Some(url) = &settings.redis_url {
        let shared = redis_shared::RedisShared::connect(url)
            .await
            .with_context(|| format!("connecting to Redis at {}", redact_password(url)))?;
        engine.set_shared_state(Arc::new(shared));
        tracing::info!(redis = %redact_password(url), "counters and change notices shared through Redis");
    }
    let seeded = engine
        .seed_if_empty(&settings.admin_email, &settings.admin_password)
        .await
        .context("seeding the first administrator")?;
    let resumed = engine.resume_jobs().await.context("resuming background jobs")?;
    if resumed > 0 {
        tracing::info!(jobs = resumed, "resumed unfinished background jobs");
    }
    engine.run_job_queue();
    // Bulk export files past their retention: swept at start, then hourly (or more often
    // when files are kept less than four hours).
    let sweeper = engine.clone();
    let period = (settings.export.retention / 4)
        .clamp(std::time::Duration::from_secs(10), std::time::Duration::from_secs(3600));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        loop {
            every.tick().await;
            match sweeper.sweep_exports().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(exports = n, "deleted expired bulk export files"),
                Err(e) => tracing::warn!(error = %e, "sweeping expired exports failed"),
            }
        }
    });

    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(
            kiln_server::tls_config(&TlsFiles { cert: cert.clone(), key: key.clone() })
                .map_err(anyhow::Error::msg)?,
        ),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key must be given together"),
    };
    let listener = std::net::TcpListener::bind(&settings.listen)
        .with_context(|| format!("binding {}", settings.listen))?;
    let local = listener.local_addr()?;
    let app = kiln_server::router(
        AppState::new(engine, settings.max_body)
            .with_trusted_proxies(settings.trusted_proxies.clone())
            .prepare_openapi(),
    );

    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("Kiln {} listening on {scheme}://{local}", env!("CARGO_PKG_VERSION"));
    println!("FHIR base: {}", base_url.fhir_base());
    println!("Storage: {storage_text}");
    if seeded.is_some() {
        println!(
            "Created the first administrator: {} / (password from KILN_ADMIN_PASSWORD or the default)",
            settings.admin_email
        );
        if settings.admin_password == config::DEFAULT_ADMIN_PASSWORD {
            println!(
                "WARNING: the administrator uses the default password '{}': change it before real use",
                config::DEFAULT_ADMIN_PASSWORD
            );
        }
    } else {
        println!("Admin login: {}", settings.admin_email);
    }

    kiln_server::serve(listener, app, tls, shutdown_signal(), Duration::from_secs(30)).await?;
    store.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
}
