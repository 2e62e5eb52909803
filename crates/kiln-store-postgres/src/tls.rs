//! TLS to PostgreSQL (rustls), asked for in the database URL as with libpq:
//!
//! - `sslmode=require`: the connection must be encrypted, and the server's certificate must be
//!   valid for the host named in the URL and signed by a trusted authority — the certificates
//!   in `sslrootcert=FILE` (PEM) when given, else the system's. (libpq's `require` checks
//!   neither; Kiln checks both, as libpq's `verify-full` does.)
//! - `sslmode=prefer` (the default) with `sslrootcert`: encrypted and verified when the server
//!   offers TLS, plain otherwise. Without `sslrootcert`, and with `sslmode=disable`: plain.
//!
//! `sslrootcert` is read here and removed before the URL reaches tokio-postgres, which does not
//! know it.

use std::sync::Arc;

use kiln_store::StoreError;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A parsed database URL and, when it asks for TLS, the connector to use.
pub(crate) struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Option<MakeRustlsConnect>,
}

pub(crate) fn parse(url: &str) -> Result<Target, StoreError> {
    let invalid = |e: String| StoreError::Internal(format!("invalid database URL: {e}"));
    let (rest, root_cert) = take_root_cert(url);
    let config: tokio_postgres::Config = rest.parse().map_err(|e| invalid(format!("{e}")))?;
    let wants_tls = match config.get_ssl_mode() {
        SslMode::Require => true,
        SslMode::Prefer => root_cert.is_some(),
        _ => false,
    };
    if !wants_tls {
        return Ok(Target { config, tls: None });
    }
    let mut roots = rustls::RootCertStore::empty();
    match &root_cert {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| invalid(format!("sslrootcert {path}: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| invalid(format!("sslrootcert {path}: {e}")))?;
                roots.add(cert).map_err(|e| invalid(format!("sslrootcert {path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid(format!("sslrootcert {path} holds no certificate")));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(invalid(
                    "sslmode=require, but the system has no trusted certificates: name the \
                     server's authority with sslrootcert=FILE"
                        .into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Internal(format!("TLS to PostgreSQL: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Target { config, tls: Some(MakeRustlsConnect::new(tls)) })
}

/// Splits `sslrootcert=…` off a URL (`postgres://…?a=b&sslrootcert=F`) or a key=value string.
fn take_root_cert(url: &str) -> (String, Option<String>) {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
        let mut root = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.strip_prefix("sslrootcert=") {
                Some(value) => {
                    root = Some(
                        percent_encoding::percent_decode_str(value)
                            .decode_utf8_lossy()
                            .into_owned(),
                    );
                    false
                }
                None => true,
            })
            .collect();
        let rest =
            if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        (rest, root)
    } else {
        let mut root = None;
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|pair| match pair.strip_prefix("sslrootcert=") {
                Some(value) => {
                    root = Some(value.to_owned());
                    false
                }
                None => true,
            })
            .collect();
        (kept.join(" "), root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_certificate_is_taken_out_of_the_url() {
        let (rest, root) =
            take_root_cert("postgres://k@db/kiln?sslmode=require&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(rest, "postgres://k@db/kiln?sslmode=require");
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, root) = take_root_cert("postgres://k@db/kiln?sslrootcert=/ca.pem");
        assert_eq!((rest.as_str(), root.as_deref()), ("postgres://k@db/kiln", Some("/ca.pem")));
        let (rest, root) = take_root_cert("host=db sslmode=require sslrootcert=/ca.pem user=k");
        assert_eq!(
            (rest.as_str(), root.as_deref()),
            ("host=db sslmode=require user=k", Some("/ca.pem"))
        );
        assert_eq!(take_root_cert("postgres://k@db/kiln").1, None);
    }

    #[test]
    fn tls_only_when_asked_for() {
        assert!(parse("postgres://k@db/kiln").unwrap().tls.is_none());
        assert!(parse("postgres://k@db/kiln?sslmode=disable").unwrap().tls.is_none());
        let missing = parse("postgres://k@db/kiln?sslmode=require&sslrootcert=/nonexistent.pem");
        assert!(missing.is_err());
    }
}
