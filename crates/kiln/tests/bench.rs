//! `kiln bench` with the real binary: every workload against a Kiln it starts itself, and the
//! same harness pointed at a running server by URL, where failures must show.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod support;

fn bench(args: &[&str], json: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(json)
        .env_remove("KILN_ADMIN_PASSWORD")
        .env_remove("KILN_BENCH_TOKEN")
        .output()
        .unwrap()
}

fn rows(json: &Path) -> Vec<Value> {
    let report: Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    report["results"].as_array().unwrap().clone()
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
}

/// A `kiln serve` on a fresh data directory, ready, with its base URL and an admin token.
async fn running_kiln() -> (support::Kiln, tempfile::TempDir, String, String) {
    let (kiln, data) = support::start_fresh().await;
    let token = kiln.token(&reqwest::Client::new()).await;
    let base = kiln.base.clone();
    (kiln, data, base, token)
}

#[test]
fn every_workload_runs_against_a_fresh_kiln() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let run = bench(
        &[
            "crud,search,import,export,anchor",
            "--duration",
            "2",
            "--warmup",
            "0",
            "--clients",
            "2",
            "--patients",
            "2",
            "--seed-patients",
            "20",
        ],
        &json,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "kiln bench failed:\n{stderr}");
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(table.contains("| crud: update | 2 |"), "{table}");
    let rows = rows(&json);
    assert!(rows.iter().all(|r| r["errors"] == 0), "{rows:?}");

    let mut expected = vec!["crud", "search", "import", "export", "export-download", "load"];
    expected.extend(["read", "search-anchor", "create"]);
    for op in ["create", "read", "update", "delete"] {
        expected.push(Box::leak(format!("crud: {op}").into_boxed_str()));
    }
    for kind in [
        "search-patient-category",
        "search-patient-code",
        "search-patient-obs",
        "search-name",
        "search-identifier",
        "search-chain",
        "search-include",
        "search-has",
        "search-count",
    ] {
        expected.push(Box::leak(format!("search: {kind}").into_boxed_str()));
    }
    for name in expected {
        let r = row(&rows, name);
        assert!(r["requests"].as_u64().unwrap() > 0, "{name} made no request: {r}");
        let p = &r["latency_ms"];
        assert!(p["p50"].as_f64() <= p["p95"].as_f64() && p["p95"].as_f64() <= p["p99"].as_f64());
    }
    // Each crud cycle is create, read, update, delete of one resource: the counts follow.
    let crud = |op: &str| row(&rows, &format!("crud: {op}"))["requests"].as_u64().unwrap();
    assert!(crud("create") >= crud("read") && crud("read") >= crud("update"));
    assert!(crud("update") >= crud("delete") && crud("create") - crud("delete") <= 2);
    assert_eq!(
        row(&rows, "crud")["requests"].as_u64().unwrap(),
        ["create", "read", "update", "delete"].iter().map(|op| crud(op)).sum::<u64>()
    );
    // Searches returned what they matched; the anchor search matches the seeded heart rates.
    assert!(row(&rows, "search: search-include")["resources"].as_u64().unwrap() > 0);
    assert!(row(&rows, "search: search-count")["matches"].as_u64().unwrap() > 0);
    let anchor = row(&rows, "search-anchor");
    assert_eq!(
        anchor["resources"].as_u64().unwrap(),
        10 * anchor["requests"].as_u64().unwrap(),
        "every anchor search fills its page of 10"
    );
    let import = row(&rows, "import");
    assert!(import["resources"].as_u64().unwrap() >= 10 * import["requests"].as_u64().unwrap());
    assert!(row(&rows, "export")["resources"].as_u64().unwrap() > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_is_measured_by_url_and_failures_show() {
    let (kiln, _data, base, token) = running_kiln().await;
    let client = reqwest::Client::new();
    let fhir = format!("{base}fhir/R4");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let common = ["--url", &fhir, "--duration", "1", "--warmup", "0", "--clients", "2"];

    // With a token: runs, and says what it measured.
    let mut args = vec!["crud,read", "--token", &token, "--seed-patients", "5"];
    args.extend(common);
    let run = bench(&args, &json);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["authentication"], "a given bearer token");
    assert!(report["server"].as_str().unwrap().starts_with("external"), "{report}");
    assert!(row(&rows(&json), "crud: delete")["requests"].as_u64().unwrap() > 0);

    // The anchor search's data is topped up, not added again, when a server is measured twice.
    for _ in 0..2 {
        let mut args = vec!["search-anchor", "--token", &token, "--seed-patients", "5"];
        args.extend(["--max-requests", "20"]);
        args.extend(common);
        let run = bench(&args, &json);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let url = format!("{fhir}/Observation?code=http://loinc.org|8867-4&_summary=count");
    assert_eq!(support::get_json(&client, url, &token).await["total"], 2700);
    assert_eq!(row(&rows(&json), "search-anchor")["requests"], 20, "--max-requests bounds a run");

    // With the administrator's password (Medplum's login flow).
    let mut args = vec!["read", "--email", "admin@example.com", "--seed-patients", "3"];
    args.extend(["--password", support::PASSWORD]);
    args.extend(common);
    let run = bench(&args, &json);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    // With a client application's credentials (client-credentials grant, token endpoint from
    // the SMART configuration).
    let login = kiln.login(&client).await;
    let project = login["project"]["reference"].as_str().unwrap().trim_start_matches("Project/");
    let url = format!("{base}admin/projects/{project}/client");
    let body = serde_json::json!({"name": "bench"});
    let app = support::send_json(&client, reqwest::Method::POST, url, &token, &body).await;
    let (id, secret) = (app["id"].as_str().unwrap(), app["secret"].as_str().unwrap());
    let mut args = vec!["read", "--client-id", id, "--client-secret", secret];
    args.extend(["--seed-patients", "3"]);
    args.extend(common);
    let run = bench(&args, &json);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["authentication"], format!("client credentials of {id}"));
    let mut args = vec!["read", "--client-id", id, "--client-secret", "wrong"];
    args.extend(common);
    let run = bench(&args, &json);
    assert!(!run.status.success(), "a wrong client secret got a token");

    // Without authentication every request is refused: the run fails and the errors show.
    let mut args = vec!["crud", "--no-auth"];
    args.extend(common);
    let run = bench(&args, &json);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "requests without a token passed:\n{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    let crud = rows(&json);
    assert!(row(&crud, "crud")["errors"].as_u64().unwrap() > 0);
    assert_eq!(row(&crud, "crud: read")["requests"], 0);

    // Other machines are refused before anything is sent.
    let run = bench(&["read", "--url", "http://192.0.2.1/fhir/R4"], &json);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("loopback"));
}

/// Requests per node of a row, checked to add up to its requests.
fn per_node(row: &Value) -> Vec<u64> {
    let counts: Vec<u64> = row["requests_per_node"]
        .as_array()
        .unwrap_or_else(|| panic!("no requests_per_node: {row}"))
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), row["requests"].as_u64().unwrap(), "{row}");
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_spread_over_the_nodes_given_by_url() {
    let (kiln, _data, base, token) = running_kiln().await;
    // One server under two names stands for two nodes.
    let port = base.trim_end_matches('/').rsplit(':').next().unwrap();
    let urls = format!("{base}fhir/R4,http://localhost:{port}/fhir/R4");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let mut args = vec!["read,update", "--url", &urls, "--token", &token, "--clients", "3"];
    args.extend(["--duration", "1", "--warmup", "0", "--seed-patients", "5"]);
    let run = bench(&args, &json);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let rows = rows(&json);
    for name in ["read", "update"] {
        let counts = per_node(row(&rows, name));
        assert_eq!(counts.len(), 2, "{name}: {counts:?}");
        assert!(counts.iter().all(|&n| n > 0), "{name}: a node got no requests: {counts:?}");
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["server"].as_str().unwrap().contains("spread over the 2 nodes"), "{report}");

    // One process id per node, or none.
    let pid = kiln.child.id().to_string();
    let mut args = vec!["read", "--url", &urls, "--token", &token, "--server-pid", &pid];
    args.extend(["--max-requests", "5"]);
    let run = bench(&args, &json);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("one process id per --url node"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_nodes_share_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let run = bench(&["read", "--nodes", "2", "--max-requests", "5"], &json);
    assert!(!run.status.success(), "two nodes on SQLite");
    assert!(String::from_utf8_lossy(&run.stderr).contains("needs --database-url"));

    let Some(db) = support::pg::Database::create("bench_nodes").await else { return };
    let url = db.url();
    let mut args = vec!["read,create", "--nodes", "2", "--database-url", &url, "--clients", "2"];
    args.extend(["--duration", "1", "--warmup", "0", "--seed-patients", "5"]);
    let run = bench(&args, &json);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    db.drop_database().await;
    assert!(run.status.success(), "{stderr}");
    let rows = rows(&json);
    // The token comes from node 1; node 2 accepts it and sees node 1's patients.
    for name in ["read", "create"] {
        let counts = per_node(row(&rows, name));
        assert_eq!(counts.len(), 2, "{name}: {counts:?}");
        assert!(counts.iter().all(|&n| n > 0), "{name}: a node got no requests: {counts:?}");
    }
    assert!(rows.iter().all(|r| r["errors"] == 0), "{rows:?}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let server = report["server"].as_str().unwrap();
    assert!(
        server.starts_with("2 child `kiln serve` nodes on one database (PostgreSQL"),
        "{server}"
    );
}

/// Where `--node-cpus` makes its control groups, if this process may (root, cgroup v1 or v2).
fn writable_cgroup_root() -> Option<std::path::PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let dir =
        if root.join("cgroup.controllers").is_file() { root.into() } else { root.join("cpu") };
    let probe = dir.join(format!("kiln-bench-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).ok()?;
    std::fs::remove_dir(&probe).ok()?;
    Some(dir)
}

#[test]
fn a_started_node_can_be_limited_to_part_of_a_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let run = bench(&["read", "--node-cpus", "0", "--max-requests", "5"], &json);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("positive number of CPUs"));

    let Some(cgroups) = writable_cgroup_root() else {
        eprintln!("SKIP: no writable cpu control group here (needs root): --node-cpus not tried");
        return;
    };
    let groups = || -> Vec<String> {
        std::fs::read_dir(&cgroups)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("kiln-bench-") && !n.starts_with("kiln-bench-probe"))
            .collect()
    };
    let before = groups();
    let mut args = vec!["read", "--node-cpus", "0.5", "--clients", "2", "--seed-patients", "5"];
    args.extend(["--duration", "1", "--warmup", "0"]);
    let run = bench(&args, &json);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let server = report["server"].as_str().unwrap();
    assert!(server.contains("limited to 0.5 CPUs"), "{server}");
    assert!(row(&rows(&json), "read")["requests"].as_u64().unwrap() > 0);
    assert_eq!(groups(), before, "the control group is removed with the node");
}
