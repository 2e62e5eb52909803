//! `TestServer`: the real router and middleware on a real socket (127.0.0.1:0), over a fresh
//! SQLite store in a temporary directory, driven with reqwest. `login()` walks Medplum's
//! login flow and returns a bearer token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_engine::{BaseUrl, Engine, Limits};
use kiln_server::AppState;
use kiln_store::{FsBlobStore, Store};
use kiln_store_sqlite::{SqliteOptions, SqliteStore};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{Value, json};

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "test-password";

pub struct TestServer {
    pub base: String,
    pub client: Client,
    pub token: String,
    pub store: Arc<dyn Store>,
    /// The temporary data directory (mails land in `outbox/mail.jsonl`).
    pub dir: PathBuf,
    /// The server's engine (e.g. to run what a restart would, on the same store).
    pub engine: Engine,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

pub struct Options {
    pub max_body: usize,
    /// `Limits::registry_ttl`: short, so that tests of SearchParameter changes do not wait.
    pub registry_ttl: Duration,
    /// Who may register (`kiln serve --registration`).
    pub registration: kiln_engine::Registration,
    /// `kiln serve --trusted-proxies`.
    pub trusted_proxies: Vec<kiln_server::client_ip::Cidr>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_body: 4 * 1024 * 1024,
            registry_ttl: Duration::from_millis(100),
            registration: kiln_engine::Registration::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> TestServer {
        let dir = tempfile::tempdir().unwrap().keep();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}/");
        let store = open_store(&dir).await;
        let blobs = Arc::new(FsBlobStore::new(dir.join("binary")));
        let base_url = BaseUrl::new(&base);
        let signer =
            kiln_engine::accounts::load_signer(&*store, base.trim_end_matches('/')).await.unwrap();
        let limits = Limits { registry_ttl: options.registry_ttl, ..Limits::default() };
        let engine = Engine::new(store.clone(), blobs, base_url, limits, signer);
        engine.set_mail_outbox(dir.join("outbox"));
        engine.set_registration(options.registration);
        engine.seed_if_empty(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
        let app = kiln_server::router(
            AppState::new(engine.clone(), options.max_body)
                .with_trusted_proxies(options.trusted_proxies.clone()),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            kiln_server::serve(listener, app, None, shutdown, Duration::from_secs(5))
                .await
                .unwrap();
        });
        let client = Client::builder().build().unwrap();
        let mut server = TestServer {
            base,
            client,
            token: String::new(),
            store,
            dir,
            engine,
            shutdown: Some(tx),
        };
        server.token = server.login().await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path.trim_start_matches('/'))
    }

    pub fn fhir_url(&self, path: &str) -> String {
        format!("{}fhir/R4/{}", self.base, path.trim_start_matches('/'))
    }

    /// Turns the seeded project's `strictProfiles` setting on (writes must conform to the
    /// profiles resources claim).
    pub async fn set_strict_profiles(&self) {
        let tokens = self.login_full().await;
        let project =
            tokens["project"]["reference"].as_str().unwrap().trim_start_matches("Project/");
        let (status, mut proj) = self.get_json(&format!("Project/{project}")).await;
        assert_eq!(status, 200, "{proj}");
        proj["setting"] = json!([{"name": "strictProfiles", "valueBoolean": true}]);
        let res =
            self.send_json(Method::PUT, &format!("Project/{project}"), &proj).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }

    /// Logs in as the seeded administrator (PKCE S256) and returns the token response.
    pub async fn login_full(&self) -> Value {
        let verifier = "a".repeat(43) + "-verifier-for-tests";
        let challenge = kiln_auth::pkce::s256_challenge(&verifier);
        let res = self
            .client
            .post(self.url("auth/login"))
            .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
                          "codeChallenge": challenge, "codeChallengeMethod": "S256", "scope": "openid"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        let code = body["code"].as_str().expect("login returns a code").to_owned();
        let res = self
            .client
            .post(self.url("oauth2/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code_verifier", &verifier),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    pub async fn login(&self) -> String {
        self.login_full().await["access_token"].as_str().unwrap().to_owned()
    }

    /// An authenticated request to a path under `/fhir/R4`.
    pub fn fhir(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.fhir_url(path)).bearer_auth(&self.token)
    }

    /// POST/PUT of a resource as `application/fhir+json`.
    pub fn send_json(&self, method: Method, path: &str, body: &Value) -> RequestBuilder {
        self.fhir(method, path)
            .header("content-type", "application/fhir+json")
            .body(serde_json::to_vec(body).unwrap())
    }

    pub async fn create(&self, resource: &Value) -> Value {
        let ty = resource["resourceType"].as_str().unwrap();
        let res = self.send_json(Method::POST, ty, resource).send().await.unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        res.json().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let res = self.fhir(Method::GET, path).send().await.unwrap();
        json_of(res).await
    }
}

/// The backend under test: SQLite by default, PostgreSQL with `KILN_TEST_BACKEND=postgres`
/// (database from `KILN_TEST_DATABASE_URL`, default the local `test` database; each server gets
/// its own schema).
async fn open_store(dir: &std::path::Path) -> Arc<dyn Store> {
    if std::env::var("KILN_TEST_BACKEND").is_ok_and(|v| v == "postgres") {
        let url = std::env::var("KILN_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let schema = format!("kiln_it_{}_{n}", std::process::id());
        kiln_store_postgres::PostgresStore::drop_schema(&url, &schema).await.unwrap();
        let store = kiln_store_postgres::PostgresStore::connect(&url, Some(&schema)).await.unwrap();
        return Arc::new(store);
    }
    Arc::new(SqliteStore::open(&dir.join("db"), SqliteOptions::default()).unwrap())
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn json_of(res: Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    let value =
        if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (status, value)
}

/// GETs a search; asserts a 200 `searchset` Bundle and returns it.
pub async fn search(server: &TestServer, path: &str) -> Value {
    let (status, bundle) = server.get_json(path).await;
    assert_eq!(status, 200, "{path}: {bundle}");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "searchset");
    bundle
}

/// `Type/id` of a Bundle's entries with this `search.mode`, in Bundle order.
pub fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    let entries = bundle["entry"].as_array().map(Vec::as_slice).unwrap_or_default();
    entries
        .iter()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect()
}

/// `Type/id` of a search's matches, sorted.
pub async fn matches(server: &TestServer, path: &str) -> Vec<String> {
    let mut out = ids(&search(server, path).await, "match");
    out.sort();
    out
}

/// Asserts an OperationOutcome with at least one error issue; returns the issues.
pub fn assert_outcome(body: &Value) -> Vec<Value> {
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let issues = body["issue"].as_array().unwrap().clone();
    assert!(!issues.is_empty());
    issues
}

pub fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Test"]}], "gender": "female", "birthDate": "1990-05-17"})
}

/// `../shared/data` if present. Absent: `None` with a printed reason, or a panic under CI.
pub fn shared_data(sub: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(sub);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{} is required under CI=true but missing", path.display());
    }
    eprintln!("SKIP: {} is absent (the shared data folder is not beside the repo)", path.display());
    None
}

/// Polls a job's status URL with `token` until it stops answering 202 (asserting 202 while it
/// runs) and returns that answer.
pub async fn job_result(server: &TestServer, token: &str, url: &str) -> Response {
    for _ in 0..1000 {
        let res = server.client.get(url).bearer_auth(token).send().await.unwrap();
        if res.status() != 202 {
            return res;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the job at {url} did not finish");
}
