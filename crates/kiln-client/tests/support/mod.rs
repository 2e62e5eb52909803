// A real Kiln (router, middleware, SQLite store in a temporary directory) on 127.0.0.1:0,
// started in-process for the SDK's tests and its documentation's examples (which `include!`
// this file, hence plain comments and no inner attributes).

use std::sync::Arc;
use std::time::Duration;

use kiln_client::KilnClient;
use kiln_engine::{BaseUrl, Engine, Limits};
use kiln_server::AppState;
use kiln_store::{FsBlobStore, Store};
use kiln_store_sqlite::{SqliteOptions, SqliteStore};

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "sdk-test-password";

pub struct Server {
    /// The server root, `http://127.0.0.1:<port>/`.
    pub base: String,
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    pub async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("db"), SqliteOptions::default()).unwrap());
        let blobs = Arc::new(FsBlobStore::new(dir.path().join("binary")));
        let signer =
            kiln_engine::accounts::load_signer(&*store, base.trim_end_matches('/')).await.unwrap();
        let engine = Engine::new(store, blobs, BaseUrl::new(&base), Limits::default(), signer);
        engine.seed_if_empty(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
        let app = kiln_server::router(AppState::new(engine, 4 * 1024 * 1024));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            kiln_server::serve(listener, app, None, shutdown, Duration::from_secs(5))
                .await
                .unwrap();
        });
        Server { base, _dir: dir, shutdown: Some(tx) }
    }

    /// A client signed in as the seeded administrator.
    pub async fn admin(&self) -> KilnClient {
        let client = KilnClient::new(&self.base).unwrap();
        client.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
        client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
