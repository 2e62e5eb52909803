//! Shared by the process tests: the real `kiln` binary started as a child process, waited for,
//! and logged into.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

pub mod pg;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const PASSWORD: &str = "process-test-password";

/// A running `kiln serve`; killed when dropped.
pub struct Kiln {
    pub child: Child,
    /// Where this process listens, e.g. `http://127.0.0.1:4711/`.
    pub base: String,
}

impl Drop for Kiln {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET url` with a bearer token.
pub async fn get(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    token: &str,
) -> reqwest::Response {
    client.get(url).bearer_auth(token).send().await.unwrap()
}

/// `GET url` with a bearer token, the body as JSON.
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl, token: &str) -> Value {
    get(client, url, token).await.json().await.unwrap()
}

/// Medplum's first-party login, `/auth/login` then `/oauth2/token`: the token response.
pub async fn token_response(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> Value {
    let res = client
        .post(format!("{base}auth/login"))
        .json(&json!({"email": email, "password": password,
                      "codeChallenge": "c", "codeChallengeMethod": "plain"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "sign-in of {email} on {base}");
    let login: Value = res.json().await.unwrap();
    let code = login["code"].as_str().expect("one membership: a code").to_owned();
    client
        .post(format!("{base}oauth2/token"))
        .form(&[("grant_type", "authorization_code"), ("code", &code), ("code_verifier", "c")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// [`token_response`]'s access token.
pub async fn sign_in(client: &reqwest::Client, base: &str, email: &str, password: &str) -> String {
    let tokens = token_response(client, base, email, password).await;
    tokens["access_token"].as_str().expect("an access token").to_owned()
}

/// Sends `body` as JSON with a bearer token; the answer must be a success, returned as JSON.
/// Sends `body` as FHIR JSON with `method` to `url` and returns the response.
pub async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .request(method, url)
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// [`send`], asserting a 2xx answer, which it returns as JSON.
pub async fn send_json(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: &Value,
) -> Value {
    let res = send(client, method, url, token, body).await;
    assert!(res.status().is_success(), "{}", res.status());
    res.json().await.unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `kiln serve` on `port` with the given extra arguments (storage, base URL).
pub fn start(port: u16, args: &[&str]) -> Kiln {
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("KILN_ADMIN_PASSWORD", PASSWORD)
        .env("KILN_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Kiln { child, base: format!("http://127.0.0.1:{port}/") }
}

/// A `kiln serve` on the embedded store in a fresh data directory (kept while the returned
/// directory lives), ready to answer.
pub async fn start_fresh() -> (Kiln, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}/");
    let mut kiln = start(port, &["--base-url", &base, "--data-dir", data.path().to_str().unwrap()]);
    kiln.wait_ready(&reqwest::Client::new()).await;
    (kiln, data)
}

impl Kiln {
    /// Waits until `/healthcheck` answers; panics if the process exits or 30 s pass.
    pub async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(res) = client.get(format!("{}healthcheck", self.base)).send().await
                && res.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("kiln exited early: {status}");
            }
            assert!(Instant::now() < deadline, "kiln did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Logs in as the seeded administrator; returns the token response.
    pub async fn login(&self, client: &reqwest::Client) -> Value {
        token_response(client, &self.base, "admin@example.com", PASSWORD).await
    }

    /// The access token of a fresh administrator login.
    pub async fn token(&self, client: &reqwest::Client) -> String {
        self.login(client).await["access_token"].as_str().unwrap().to_owned()
    }
}
