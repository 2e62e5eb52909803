//! TLS to PostgreSQL: `sslmode=require` with `sslrootcert` encrypts and verifies; a server
//! certificate the named authority did not sign is refused. Uses the test server's own
//! certificate: Debian's PostgreSQL serves `/etc/ssl/certs/ssl-cert-snakeoil.pem` (a
//! self-signed certificate for `localhost`) with `ssl = on`. Skipped with a printed reason where
//! the server has no TLS, except under `CI=true`.

mod support;

use kiln_store::Store;
use kiln_store_postgres::PostgresStore;

const SERVER_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

#[tokio::test]
async fn require_encrypts_and_verifies_the_server() {
    let Some((plain, url, schema)) = support::open_schema("kiln_test", "tls").await else { return };
    assert!(!plain.tls_in_use().await.unwrap(), "no TLS unless the URL asks for it");
    if !std::path::Path::new(SERVER_CERT).exists() {
        assert!(!required(), "{SERVER_CERT} is missing: the CI machine's PostgreSQL serves it");
        eprintln!("SKIP tls: {SERVER_CERT} is missing (PostgreSQL without Debian's TLS set-up)");
        return;
    }
    // The certificate names localhost, so the URL must too.
    let local = url.replace("127.0.0.1", "localhost");
    let sep = if local.contains('?') { '&' } else { '?' };
    let secure = format!("{local}{sep}sslmode=require&sslrootcert={SERVER_CERT}");
    let store = PostgresStore::connect(&secure, Some(&schema)).await.expect("connect over TLS");
    assert!(store.tls_in_use().await.unwrap(), "the connection is encrypted");
    store.close().await;

    // An authority that did not sign the server's certificate: refused.
    let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    if let Some(end) = bundle.find("-----END CERTIFICATE-----") {
        let other = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(other.path(), &bundle[..end + "-----END CERTIFICATE-----".len()]).unwrap();
        let wrong = format!("{local}{sep}sslmode=require&sslrootcert={}", other.path().display());
        let refused = PostgresStore::connect(&wrong, Some(&schema)).await;
        assert!(refused.is_err(), "a certificate from another authority must be refused");
    }
    plain.close().await;
    PostgresStore::drop_schema(&url, &schema).await.unwrap();
}
