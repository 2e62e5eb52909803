//! Several `kiln` processes on one PostgreSQL database behave as one server: a write on one node
//! is readable on another at once, a login made on one node works on the others, a logout is
//! honoured everywhere, and racing `If-Match` updates spread over the nodes have one winner per
//! version.
//!
//! Needs PostgreSQL (`KILN_TEST_DATABASE_URL`, default the local `test` database); each run creates
//! and drops its own database. Skips with a printed reason when nothing answers, except under
//! `CI=true`.

mod support;

use serde_json::{Value, json};
use support::Kiln;

const ADMIN_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database of our own, dropped at the end.
struct Database {
    admin_url: String,
    name: String,
}

impl Database {
    async fn create() -> Option<Database> {
        let admin_url = std::env::var("KILN_TEST_DATABASE_URL")
            .unwrap_or_else(|_| ADMIN_URL_DEFAULT.to_owned());
        let name = format!("kiln_nodes_{}", std::process::id());
        match admin(
            &admin_url,
            &[&format!("DROP DATABASE IF EXISTS {name}"), &format!("CREATE DATABASE {name}")],
        )
        .await
        {
            Ok(()) => Some(Database { admin_url, name }),
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("PostgreSQL at {admin_url} is required under CI=true: {e}");
                }
                eprintln!("SKIP: PostgreSQL at {admin_url} is not reachable ({e})");
                None
            }
        }
    }

    /// The URL of this database: the admin URL with the database name replaced.
    fn url(&self) -> String {
        let (head, _) = self.admin_url.rsplit_once('/').unwrap();
        format!("{head}/{}", self.name)
    }
}

async fn admin(url: &str, statements: &[&str]) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(connection);
    for sql in statements {
        client.batch_execute(sql).await?;
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// Starts a node. All nodes share one public base URL (as behind a load balancer), so tokens
/// issued by one are valid on all.
fn start_node(db: &Database, public_base: &str) -> Kiln {
    let url = db.url();
    support::start(support::free_port(), &["--base-url", public_base, "--database-url", &url])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_one_database() {
    let Some(db) = Database::create().await else { return };
    let client = reqwest::Client::new();
    let public_base = "https://fhir.example.test/";
    // All nodes start at once on an empty database: migrations, the signing key and the first
    // administrator must come out once, agreed by all.
    let mut a = start_node(&db, public_base);
    let mut b = start_node(&db, public_base);
    let mut c = start_node(&db, public_base);
    a.wait_ready(&client).await;
    b.wait_ready(&client).await;
    c.wait_ready(&client).await;
    let nodes = [&a, &b, &c];
    let mut keys = Vec::new();
    for node in &nodes {
        let jwks: Value = client
            .get(format!("{}.well-known/jwks.json", node.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys.push(jwks);
    }
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "every node signs with the same key");

    // A login made on A works on B.
    let tokens = a.login(&client).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let created: Value = client
        .post(format!("{}fhir/R4/Patient", a.base))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "name": [{"family": "Shared"}]}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // The write on A is readable on B and C at once.
    for node in &nodes[1..] {
        let res = client
            .get(format!("{}fhir/R4/Patient/{id}", node.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let read: Value = res.json().await.unwrap();
        assert_eq!(read, created);
    }

    // 30 writers spread over the three nodes race with If-Match: one winner per version.
    let mut tasks = Vec::new();
    for idx in 0..30 {
        let (client, token, id) = (client.clone(), token.clone(), id.clone());
        let base = nodes[idx % 3].base.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let current: Value = client
                    .get(format!("{base}fhir/R4/Patient/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let version = current["meta"]["versionId"].as_str().unwrap().to_owned();
                let mut next = current.clone();
                next["name"][0]["given"] = json!([format!("writer-{idx}")]);
                let res = client
                    .put(format!("{base}fhir/R4/Patient/{id}"))
                    .bearer_auth(&token)
                    .header("content-type", "application/fhir+json")
                    .header("if-match", format!("W/\"{version}\""))
                    .body(next.to_string())
                    .send()
                    .await
                    .unwrap();
                match res.status().as_u16() {
                    200 => return,
                    412 => continue,
                    other => panic!("unexpected {other}: {}", res.text().await.unwrap()),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let history: Value = client
        .get(format!("{}fhir/R4/Patient/{id}/_history?_count=100", c.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = history["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 31, "every update is a version");
    let mut writers: Vec<&str> = entries[..30]
        .iter()
        .map(|e| e["resource"]["name"][0]["given"][0].as_str().unwrap())
        .collect();
    writers.sort();
    writers.dedup();
    assert_eq!(writers.len(), 30, "no update was lost");

    // A logout on B is honoured by A and C at once.
    let res =
        client.post(format!("{}oauth2/logout", b.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    for node in nodes {
        let res = client
            .get(format!("{}fhir/R4/Patient/{id}", node.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{}", node.base);
    }
    drop((a, b, c));
    let _ =
        admin(&db.admin_url, &[&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name)]).await;
}
