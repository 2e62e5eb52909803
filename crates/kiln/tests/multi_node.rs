//! Several `kiln` processes on one PostgreSQL database behave as one server: a write on one node
//! is readable on another at once, a login made on one node works on the others, a logout is
//! honoured everywhere, and racing `If-Match` updates spread over the nodes have one winner per
//! version; a job whose node is killed is finished by another node, each node with a data
//! directory of its own (Binary content is in the database).
//!
//! Needs PostgreSQL (`KILN_TEST_DATABASE_URL`, default the local `test` database); each run creates
//! and drops its own database. Skips with a printed reason when nothing answers, except under
//! `CI=true`.

mod support;

use serde_json::{Value, json};
use support::Kiln;
use support::pg::Database;

/// Starts a node. All nodes share one public base URL (as behind a load balancer), so tokens
/// issued by one are valid on all.
fn start_node(db: &Database, public_base: &str) -> Kiln {
    let url = db.url();
    support::start(support::free_port(), &["--base-url", public_base, "--database-url", &url])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_one_database() {
    let Some(db) = Database::create("nodes_share").await else { return };
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
        let res = support::get(&client, format!("{}fhir/R4/Patient/{id}", node.base), &token).await;
        assert_eq!(res.status(), 200);
        let read: Value = res.json().await.unwrap();
        assert_eq!(read, created);
    }

    // 50 writers spread over the three nodes race with If-Match: one winner per version.
    let mut tasks = Vec::new();
    for idx in 0..50 {
        let (client, token, id) = (client.clone(), token.clone(), id.clone());
        let base = nodes[idx % 3].base.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let current: Value =
                    support::get_json(&client, format!("{base}fhir/R4/Patient/{id}"), &token).await;
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
    let history: Value = support::get_json(
        &client,
        format!("{}fhir/R4/Patient/{id}/_history?_count=100", c.base),
        &token,
    )
    .await;
    let entries = history["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 51, "every update is a version");
    let mut writers: Vec<&str> = entries[..50]
        .iter()
        .map(|e| e["resource"]["name"][0]["given"][0].as_str().unwrap())
        .collect();
    writers.sort();
    writers.dedup();
    assert_eq!(writers.len(), 50, "no update was lost");

    // A logout on B is honoured by A and C at once.
    let res =
        client.post(format!("{}oauth2/logout", b.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    for node in nodes {
        let res = support::get(&client, format!("{}fhir/R4/Patient/{id}", node.base), &token).await;
        assert_eq!(res.status(), 401, "{}", node.base);
    }
    drop((a, b, c));
    db.drop_database().await;
}

/// A bulk import running on node A when A is killed (`SIGKILL`) is claimed by node B once A's
/// lease has run out, resumed from A's last saved position, and completed: every line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_node_dies_is_finished_by_another() {
    let Some(db) = Database::create("nodes_jobs").await else { return };
    let client = reqwest::Client::new();
    let public_base = "https://fhir.example.test/";
    // A data directory each: the NDJSON the job reads is Binary content, kept in the database
    // (`--binary-storage database`, the default with PostgreSQL), so B finds what A stored.
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = db.url();
    let node = |port, data_dir: &std::path::Path| {
        support::start(
            port,
            &[
                "--base-url",
                public_base,
                "--database-url",
                &url,
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--job-lease",
                "2s",
                "--exports-per-client",
                "1",
            ],
        )
    };
    let mut a = node(support::free_port(), data_a.path());
    let mut b = node(support::free_port(), data_b.path());
    a.wait_ready(&client).await;
    b.wait_ready(&client).await;
    let token = a.login(&client).await["access_token"].as_str().unwrap().to_owned();

    const LINES: usize = 6000;
    let ndjson: String = (0..LINES)
        .map(|i| {
            json!({"resourceType": "Patient", "id": format!("imp-{i}"),
                   "name": [{"family": "Moved", "given": [format!("N{i}")]}]})
            .to_string()
                + "\n"
        })
        .collect();
    let res = client
        .post(format!("{}fhir/R4/Binary", a.base))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let binary: Value = res.json().await.unwrap();
    let binary_url = format!("{public_base}fhir/R4/Binary/{}", binary["id"].as_str().unwrap());
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
        {"name": "input", "part": [{"name": "type", "valueCode": "Patient"},
                                   {"name": "url", "valueUri": binary_url}]}]});
    let kick_off = |base: String| {
        client
            .post(format!("{base}fhir/R4/$import"))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .header("prefer", "respond-async")
            .body(body.to_string())
            .send()
    };
    let res = kick_off(a.base.clone()).await.unwrap();
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let location = res.headers()["content-location"].to_str().unwrap().to_owned();
    let status_path = location.strip_prefix(public_base).unwrap().to_owned();

    // Kill A once it has written some of the lines (and before it has written them all).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let res = support::get(&client, format!("{}{status_path}", a.base), &token).await;
        assert_eq!(res.status(), 202, "the import finished before the node could be killed");
        let progress = res.headers()["x-progress"].to_str().unwrap().to_owned();
        let written: u64 = progress
            .split(", ")
            .nth(1)
            .and_then(|p| p.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if written >= 500 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {progress}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The per-client limit of bulk jobs counts this one wherever it runs: a second one,
    // asked of B, is refused while A runs the first.
    let res = kick_off(b.base.clone()).await.unwrap();
    assert_eq!(res.status(), 429, "{}", res.text().await.unwrap());
    a.child.kill().unwrap();
    a.child.wait().unwrap();

    // B takes the job over once A's lease has run out, and finishes it.
    let result: Value = loop {
        let res = support::get(&client, format!("{}{status_path}", b.base), &token).await;
        match res.status().as_u16() {
            202 => {}
            200 => break res.json().await.unwrap(),
            other => panic!("status {other}: {}", res.text().await.unwrap()),
        }
        assert!(std::time::Instant::now() < deadline, "the job was not taken over");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(result["error"], json!([]), "{result}");
    let count: Value = support::get_json(
        &client,
        format!("{}fhir/R4/Patient?family=Moved&_summary=count", b.base),
        &token,
    )
    .await;
    assert_eq!(count["total"], LINES, "every line, once");
    // Nothing of it was written to either node's disk.
    for dir in [data_a.path(), data_b.path()] {
        let binary = dir.join("binary");
        let files = walk_files(&binary);
        assert!(files.is_empty(), "files under {}: {files:?}", binary.display());
    }
    drop((a, b));
    db.drop_database().await;
}

/// Every file under `dir` (none if it does not exist).
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Redis for the test, or `None` (skipped with a reason) when none answers outside CI.
fn redis_url() -> Option<String> {
    let url =
        std::env::var("KILN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let client = redis::Client::open(url.as_str()).ok()?;
    match client.get_connection_with_timeout(std::time::Duration::from_secs(2)) {
        Ok(_) => Some(url),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("Redis at {url} is required under CI=true: {e}");
            }
            eprintln!("SKIP: Redis at {url} is not reachable ({e})");
            None
        }
    }
}

/// With `--redis-url`, a SearchParameter created on node A is usable on node B at once (B
/// had its registry cached), and failed logins spread over the nodes are counted together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_counters_and_notices_through_redis() {
    let Some(redis) = redis_url() else { return };
    let Some(db) = Database::create("nodes_redis").await else { return };
    let client = reqwest::Client::new();
    let public_base = "https://fhir.example.test/";
    let url = db.url();
    let node = |port| {
        support::start(
            port,
            &["--base-url", public_base, "--database-url", &url, "--redis-url", &redis],
        )
    };
    // Failures from this address counted by an earlier run (within the throttle's window)
    // would slow every login here down.
    let mut conn = redis::Client::open(redis.as_str()).unwrap().get_connection().unwrap();
    let ip_key = "kiln:throttle:ip:127.0.0.1";
    let _: i64 = redis::cmd("DEL").arg(ip_key).query(&mut conn).unwrap();
    let mut a = node(support::free_port());
    let mut b = node(support::free_port());
    a.wait_ready(&client).await;
    b.wait_ready(&client).await;
    let token = a.login(&client).await["access_token"].as_str().unwrap().to_owned();
    let search = |base: &str| {
        client
            .get(format!("{base}fhir/R4/Patient?eye=green"))
            .bearer_auth(&token)
            .header("prefer", "handling=strict")
            .send()
    };
    // B knows no `eye` parameter, and caches its registry saying so.
    assert_eq!(search(&b.base).await.unwrap().status(), 400);

    let post = |body: Value| {
        client
            .post(format!("{}fhir/R4/{}", a.base, body["resourceType"].as_str().unwrap()))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    let res = post(json!({"resourceType": "SearchParameter", "status": "active",
        "url": "http://example.org/SearchParameter/eye", "name": "Eye", "code": "eye",
        "description": "Eye colour",
        "base": ["Patient"], "type": "token",
        "expression": "Patient.extension('http://example.org/eye').value"}))
    .await
    .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let res = post(json!({"resourceType": "Patient", "extension": [
        {"url": "http://example.org/eye", "valueCode": "green"}]}))
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    // The notice reaches B well before its cache would expire (5 s).
    let started = std::time::Instant::now();
    let found: Value = loop {
        let res = search(&b.base).await.unwrap();
        if res.status() == 200 {
            break res.json().await.unwrap();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "B did not hear of the new SearchParameter"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1), "{found}");

    // Failed logins on A and B count against one key.
    let email = format!("nobody-{}@example.com", std::process::id());
    for node in [&a, &b, &a, &b] {
        let res = client
            .post(format!("{}auth/login", node.base))
            .json(&json!({"email": email, "password": "wrong-password",
                          "codeChallenge": "c", "codeChallengeMethod": "plain"}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    let key = format!("kiln:throttle:email:{email}");
    let count: u64 = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    assert_eq!(count, 4);
    let _: i64 = redis::cmd("DEL").arg(&key).arg(ip_key).query(&mut conn).unwrap();
    drop((a, b));
    db.drop_database().await;
}

/// `--read-database-url`: clients' searches are answered by the replica; reads by id,
/// conditional creates and searches inside Bundles stay on the primary. The "replica" here is
/// a second, empty database at the same schema version, so a search it answers finds nothing
/// that was written to the primary — which shows where each request went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_go_to_the_read_replica_and_the_rest_to_the_primary() {
    let Some(primary) = Database::create("replica_primary").await else { return };
    let Some(replica) = Database::create("replica_copy").await else { return };
    let migrated = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["migrate", "--database-url", &replica.url()])
        .env("KILN_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let client = reqwest::Client::new();
    let (primary_url, replica_url) = (primary.url(), replica.url());
    let mut node = support::start(
        support::free_port(),
        &["--database-url", &primary_url, "--read-database-url", &replica_url],
    );
    node.wait_ready(&client).await;
    let token = node.token(&client).await;
    let fhir = format!("{}fhir/R4/", node.base);
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Replicated"}]});
    let created = support::send_json(
        &client,
        reqwest::Method::POST,
        format!("{fhir}Patient"),
        &token,
        &patient,
    )
    .await;
    let id = created["id"].as_str().unwrap();

    // Read by id: the primary.
    let res = support::get(&client, format!("{fhir}Patient/{id}"), &token).await;
    assert_eq!(res.status(), 200);
    // A client's search: the replica, which has not got it.
    let found =
        support::get_json(&client, format!("{fhir}Patient?family=Replicated"), &token).await;
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 0, "{found}");
    // A conditional create looks on the primary: it finds the patient and creates nothing.
    let res = client
        .post(format!("{fhir}Patient"))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "family=Replicated")
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    // A search inside a Bundle sees the primary.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?family=Replicated"}}]});
    let answer =
        support::send_json(&client, reqwest::Method::POST, fhir.clone(), &token, &batch).await;
    let inner = &answer["entry"][0]["resource"];
    assert_eq!(inner["entry"].as_array().map_or(0, Vec::len), 1, "{answer}");
    drop(node);

    // A replica at another schema version is refused at start.
    let Some(unmigrated) = Database::create("replica_unmigrated").await else { return };
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["migrate", "--database-url", &primary_url, "--read-database-url", &unmigrated.url()])
        .env("KILN_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("read replica"), "{text}");
    unmigrated.drop_database().await;
    primary.drop_database().await;
    replica.drop_database().await;
}
