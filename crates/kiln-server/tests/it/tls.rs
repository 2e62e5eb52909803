//! HTTPS with TLS 1.2 and 1.3 through rustls, using a throwaway CA made with rcgen.

use std::time::Duration;

use crate::support::TestServer;

#[tokio::test]
async fn serves_tls_1_2_and_1_3() {
    // The store behind the TLS listener does not matter here; reuse a TestServer's state.
    let plain = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();

    let config =
        kiln_server::tls_config(&kiln_server::TlsFiles { cert: cert_path, key: key_path }).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = plain.store.clone();
    let signer = kiln_engine::accounts::load_signer(&*store, "https://localhost").await.unwrap();
    let engine = kiln_engine::Engine::new(
        store,
        std::sync::Arc::new(kiln_store::FsBlobStore::new(dir.path().join("b"))),
        kiln_engine::BaseUrl::new(&format!("https://localhost:{port}/")),
        kiln_engine::Limits::default(),
        signer,
    );
    let app = kiln_server::router(kiln_server::AppState::new(engine, 1 << 20));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        kiln_server::serve(
            listener,
            app,
            Some(config),
            async {
                let _ = rx.await;
            },
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    });
    let ca_cert = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    for version in [reqwest::tls::Version::TLS_1_2, reqwest::tls::Version::TLS_1_3] {
        let client = reqwest::Client::builder()
            .add_root_certificate(ca_cert.clone())
            .min_tls_version(version)
            .max_tls_version(version)
            .build()
            .unwrap();
        let res = client.get(format!("https://localhost:{port}/healthcheck")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{version:?}");
        let res =
            client.get(format!("https://localhost:{port}/fhir/R4/metadata")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{version:?}");
    }
    let _ = tx.send(());
}
