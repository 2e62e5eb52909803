//! `kiln migrate-store` with the real binary: an embedded store filled over HTTP (several
//! projects, updates and deletes, a Binary, users) is copied into PostgreSQL, and a server on
//! the copy answers reads, versions, history, `_since`, searches, Binary downloads and
//! logins exactly as the embedded one did; tokens issued before keep working, and new writes
//! continue the version and history order. A target changed after the copy is caught by
//! `--verify-only`.
//!
//! Needs PostgreSQL (see `support::pg`): skipped with a printed reason when nothing answers,
//! except under `CI=true`.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::pg::Database;

/// Every node uses the same public base URL, so tokens stay valid across the move.
const PUBLIC_BASE: &str = "https://fhir.example.test/";

fn migrate_store(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).arg("migrate-store").args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn start_sqlite(dir: &Path) -> support::Kiln {
    let dir = dir.to_str().unwrap();
    support::start(support::free_port(), &["--base-url", PUBLIC_BASE, "--data-dir", dir])
}

fn start_postgres(url: &str, dir: &Path) -> support::Kiln {
    let dir = dir.to_str().unwrap();
    support::start(
        support::free_port(),
        &["--base-url", PUBLIC_BASE, "--database-url", url, "--data-dir", dir],
    )
}

/// Stops a server with SIGTERM and waits for its clean exit.
fn stop(mut kiln: support::Kiln) {
    let status =
        Command::new("kill").args(["-TERM", &kiln.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(exit) = kiln.child.try_wait().unwrap() {
            assert!(exit.success(), "clean exit on SIGTERM, got {exit}");
            return;
        }
        assert!(Instant::now() < deadline, "kiln did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A project with one administrator (invited by the super admin); returns the project id and
/// that administrator's token.
async fn project(
    client: &reqwest::Client,
    kiln: &support::Kiln,
    admin_token: &str,
    name: &str,
    email: &str,
) -> (String, String) {
    let res = client
        .post(format!("{}admin/projects", kiln.base))
        .bearer_auth(admin_token)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let project: Value = res.json().await.unwrap();
    let id = project["id"].as_str().unwrap().to_owned();
    let res = client
        .post(format!("{}admin/projects/{id}/invite", kiln.base))
        .bearer_auth(admin_token)
        .json(&json!({"firstName": name, "lastName": "Admin", "email": email,
                      "password": format!("{name}-password"), "admin": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let token = support::sign_in(client, &kiln.base, email, &format!("{name}-password")).await;
    (id, token)
}

/// What a list of GETs answered: status, content type and body. Bundles lose their own `id`
/// and `meta` (made afresh for every answer); everything else must match byte for byte.
async fn answers(
    client: &reqwest::Client,
    base: &str,
    requests: &[(String, String, &str)],
) -> Vec<(String, u16, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (token, path, accept) in requests {
        let res = client
            .get(format!("{base}fhir/R4/{path}"))
            .bearer_auth(token)
            .header("accept", *accept)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let kind = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = res.bytes().await.unwrap();
        let body = match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut v) if v["resourceType"] == "Bundle" => {
                let map = v.as_object_mut().unwrap();
                map.remove("id");
                map.remove("meta");
                v.to_string().into_bytes()
            }
            _ => bytes.to_vec(),
        };
        out.push((path.clone(), status, kind, body));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_moves_to_postgres_and_serves_the_same() {
    let Some(db) = Database::create("migrate_store").await else { return };
    let source = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    // An embedded store with two projects besides the super admin's.
    let mut kiln = start_sqlite(source.path());
    kiln.wait_ready(&client).await;
    let admin = kiln.token(&client).await;
    let (a, alice) = project(&client, &kiln, &admin, "alpha", "alice@example.com").await;
    let (_b, bob) = project(&client, &kiln, &admin, "beta", "bob@example.com").await;
    let fhir = format!("{}fhir/R4/", kiln.base);
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;

    let mut p1 = support::send_json(
        &client,
        post.clone(),
        format!("{fhir}Patient"),
        &alice,
        &json!({"resourceType": "Patient", "name": [{"family": "Migrant", "given": ["Ann"]}],
                "birthDate": "1970-01-01"}),
    )
    .await;
    let p1_id = p1["id"].as_str().unwrap().to_owned();
    let mut since = String::new();
    for given in ["Anna", "Anne"] {
        p1["name"][0]["given"] = json!([given]);
        p1 =
            support::send_json(&client, put.clone(), format!("{fhir}Patient/{p1_id}"), &alice, &p1)
                .await;
        if since.is_empty() {
            since = p1["meta"]["lastUpdated"].as_str().unwrap().to_owned();
        }
    }
    assert_eq!(p1["meta"]["versionId"], "3");
    support::send_json(
        &client,
        post.clone(),
        format!("{fhir}Observation"),
        &alice,
        &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                "subject": {"reference": format!("Patient/{p1_id}")},
                "valueQuantity": {"value": 61.5, "unit": "kg",
                                  "system": "http://unitsofmeasure.org", "code": "kg"}}),
    )
    .await;
    let gone = support::send_json(
        &client,
        post.clone(),
        format!("{fhir}Patient"),
        &alice,
        &json!({"resourceType": "Patient", "name": [{"family": "Migrant", "given": ["Gone"]}]}),
    )
    .await;
    let gone_id = gone["id"].as_str().unwrap().to_owned();
    let res =
        client.delete(format!("{fhir}Patient/{gone_id}")).bearer_auth(&alice).send().await.unwrap();
    assert!(res.status().is_success());
    let binary_bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let res = client
        .post(format!("{fhir}Binary?_filename=scan.bin"))
        .bearer_auth(&alice)
        .header("content-type", "application/octet-stream")
        .body(binary_bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let binary: Value = res.json().await.unwrap();
    let binary_id = binary["id"].as_str().unwrap().to_owned();
    let q = support::send_json(
        &client,
        post.clone(),
        format!("{fhir}Patient"),
        &bob,
        &json!({"resourceType": "Patient", "name": [{"family": "Beta"}]}),
    )
    .await;
    let q_id = q["id"].as_str().unwrap().to_owned();

    let requests: Vec<(String, String, &str)> = [
        (&alice, format!("Patient/{p1_id}"), "application/fhir+json"),
        (&alice, format!("Patient/{p1_id}/_history/1"), "application/fhir+json"),
        (&alice, format!("Patient/{p1_id}/_history/2"), "application/fhir+json"),
        (&alice, format!("Patient/{p1_id}/_history"), "application/fhir+json"),
        (&alice, format!("Patient/{gone_id}"), "application/fhir+json"),
        (&alice, format!("Patient/{gone_id}/_history"), "application/fhir+json"),
        (&alice, "Patient/_history".to_owned(), "application/fhir+json"),
        (&alice, "_history?_count=3".to_owned(), "application/fhir+json"),
        (&alice, format!("_history?_since={since}"), "application/fhir+json"),
        (&alice, "Patient?name=migrant".to_owned(), "application/fhir+json"),
        (&alice, "Patient?_count=1&_sort=-_lastUpdated".to_owned(), "application/fhir+json"),
        (
            &alice,
            format!("Observation?subject=Patient/{p1_id}&_include=Observation:subject"),
            "application/fhir+json",
        ),
        (
            &alice,
            "Observation?code=http://loinc.org|29463-7&value-quantity=gt60||kg".to_owned(),
            "application/fhir+json",
        ),
        (&alice, "Patient?birthdate=1970-01-01&_summary=count".to_owned(), "application/fhir+json"),
        (&alice, format!("Binary/{binary_id}"), "application/octet-stream"),
        (&alice, format!("Binary/{binary_id}"), "application/fhir+json"),
        (&bob, format!("Patient/{q_id}"), "application/fhir+json"),
        (&bob, "Patient?name=beta".to_owned(), "application/fhir+json"),
        (&bob, format!("Patient/{p1_id}"), "application/fhir+json"),
        (&admin, "Project?_count=10".to_owned(), "application/fhir+json"),
    ]
    .into_iter()
    .map(|(token, path, accept)| (token.clone(), path, accept))
    .collect();
    let before = answers(&client, &kiln.base, &requests).await;
    assert_eq!(before[0].1, 200);
    assert_eq!(before[4].1, 410, "{:?}", before[4]);
    assert_eq!(before[14].3, binary_bytes);
    assert_eq!(before[18].1, 404, "projects stay apart: {:?}", before[18]);
    let jwks: Value = client
        .get(format!("{}.well-known/jwks.json", kiln.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // Not while the server has the store open.
    let url = db.url();
    let from = format!("sqlite:{}", source.path().display());
    let to_dir = target.path().to_str().unwrap();
    let busy = migrate_store(&["--from", &from, "--to", &url, "--to-data-dir", to_dir]);
    assert!(!busy.status.success(), "{}", text(&busy));
    assert!(text(&busy).contains("in use"), "{}", text(&busy));
    stop(kiln);

    // The move, in small batches so that every table takes several.
    let started = Instant::now();
    let run = migrate_store(&[
        "--from",
        &from,
        "--to",
        &url,
        "--to-data-dir",
        to_dir,
        "--batch-rows",
        "7",
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let report = String::from_utf8_lossy(&run.stdout).into_owned();
    eprintln!("{report}\n(migrated in {:?})", started.elapsed());
    assert!(report.contains("Verified and committed"), "{report}");
    assert!(report.contains(&a), "the report lists the projects: {report}");
    assert!(!report.contains("DIFFERS"), "{report}");
    assert_eq!(
        std::fs::read(target.path().join("binary").join(&a).join(&binary_id)).unwrap(),
        binary_bytes
    );

    // A second run does not overwrite a filled target unless told to.
    let again = migrate_store(&["--from", &from, "--to", &url, "--to-data-dir", to_dir]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("not empty") && text(&again).contains("--force"),
        "{}",
        text(&again)
    );
    let check =
        migrate_store(&["--from", &from, "--to", &url, "--to-data-dir", to_dir, "--verify-only"]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("Verified: the target holds exactly"));

    // A server on the copy answers exactly as the embedded one did, to the tokens it issued.
    let mut pg = start_postgres(&url, target.path());
    pg.wait_ready(&client).await;
    let after = answers(&client, &pg.base, &requests).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "{} answers differently after the move", b.0);
    }
    let jwks_after: Value = client
        .get(format!("{}.well-known/jwks.json", pg.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, jwks_after, "the signing key moved");
    // Passwords moved: fresh sign-ins work.
    let alice2 = support::sign_in(&client, &pg.base, "alice@example.com", "alpha-password").await;
    let admin2 = pg.token(&client).await;
    let res = support::get(&client, format!("{}fhir/R4/Patient/{p1_id}", pg.base), &alice2).await;
    assert_eq!(res.status(), 200);
    let res = support::get(&client, format!("{}fhir/R4/Project?_count=10", pg.base), &admin2).await;
    assert_eq!(res.status(), 200);

    // Writes continue where the store left off: the next version, after the history.
    let fhir = format!("{}fhir/R4/", pg.base);
    p1["name"][0]["given"] = json!(["Annie"]);
    let p1v4 =
        support::send_json(&client, put, format!("{fhir}Patient/{p1_id}"), &alice2, &p1).await;
    assert_eq!(p1v4["meta"]["versionId"], "4");
    let fresh = support::send_json(
        &client,
        post,
        format!("{fhir}Patient"),
        &alice2,
        &json!({"resourceType": "Patient", "name": [{"family": "Migrant", "given": ["New"]}]}),
    )
    .await;
    let history = support::get_json(&client, format!("{fhir}_history?_count=2"), &alice2).await;
    let newest: Vec<&str> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(newest, vec![fresh["id"].as_str().unwrap(), p1_id.as_str()]);
    let found =
        support::get_json(&client, format!("{fhir}Patient?name=migrant&_summary=count"), &alice2)
            .await;
    assert_eq!(found["total"], 2, "{found}");
    drop(pg);

    // Into the database instead (no --to-data-dir): the binary content is loaded with the
    // rows, and a node whose data directory is empty serves it.
    let run = migrate_store(&["--from", &from, "--to", &url, "--force"]);
    assert!(run.status.success(), "{}", text(&run));
    let report = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(report.contains("loaded into the database; all identical"), "{report}");
    assert!(report.contains("any --data-dir"), "{report}");
    let check = migrate_store(&["--from", &from, "--to", &url, "--verify-only"]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("compared with the database's blobs; all identical"),
        "{}",
        text(&check)
    );
    let empty = tempfile::tempdir().unwrap();
    let mut pg = start_postgres(&url, empty.path());
    pg.wait_ready(&client).await;
    let after = answers(&client, &pg.base, &requests).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "{} answers differently after the move into the database", b.0);
    }
    assert!(!empty.path().join("binary").exists(), "nothing was read from or written to disk");
    drop(pg);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_catches_a_changed_target() {
    // Refusals that need no database.
    let empty = tempfile::tempdir().unwrap();
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let run = migrate_store(&["--from", empty.path().to_str().unwrap(), "--to", url]);
    assert!(!run.status.success() && text(&run).contains("sqlite:DIR"), "{}", text(&run));
    let run = migrate_store(&["--from", "sqlite:/nonexistent/kiln", "--to", url]);
    assert!(!run.status.success() && text(&run).contains("does not exist"), "{}", text(&run));
    let from = format!("sqlite:{}", empty.path().display());
    let run = migrate_store(&["--from", &from, "--to", url]);
    assert!(!run.status.success() && text(&run).contains("no Kiln database"), "{}", text(&run));
    assert!(!empty.path().join("db").join("kiln.db").exists(), "nothing was created");

    let Some(db) = Database::create("migrate_verify").await else { return };
    let source = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut kiln = start_sqlite(source.path());
    kiln.wait_ready(&client).await;
    let tokens = kiln.login(&client).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let project = tokens["project"]["reference"].as_str().unwrap();
    let binary_project = project.trim_start_matches("Project/").to_owned();
    let fhir = format!("{}fhir/R4/", kiln.base);
    support::send_json(
        &client,
        reqwest::Method::POST,
        format!("{fhir}Patient"),
        &token,
        &json!({"resourceType": "Patient", "name": [{"family": "Original"}]}),
    )
    .await;
    let res = client
        .post(format!("{fhir}Binary"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("binary content")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let binary: Value = res.json().await.unwrap();
    let binary_file =
        target.path().join("binary").join(&binary_project).join(binary["id"].as_str().unwrap());
    stop(kiln);

    let url = db.url();
    let from = format!("sqlite:{}", source.path().display());
    let to_dir = target.path().to_str().unwrap();
    let migrate = |extra: &[&str]| {
        let mut args = vec!["--from", &from, "--to", &url, "--to-data-dir", to_dir];
        args.extend_from_slice(extra);
        migrate_store(&args)
    };
    let run = migrate(&[]);
    assert!(run.status.success(), "{}", text(&run));
    let run = migrate(&["--verify-only"]);
    assert!(run.status.success(), "{}", text(&run));

    // A version's bytes changed on the target.
    let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = pg
        .query_one(
            "SELECT project FROM history WHERE type = 'Patient' ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let project: String = row.get(0);
    pg.batch_execute(
        "UPDATE history SET body = \
           convert_to(replace(convert_from(body, 'UTF8'), 'Original', 'Tampered'), 'UTF8') \
         WHERE seq = (SELECT MAX(seq) FROM history WHERE type = 'Patient')",
    )
    .await
    .unwrap();
    let run = migrate(&["--verify-only"]);
    assert!(!run.status.success(), "{}", text(&run));
    let out = text(&run);
    assert!(out.contains(&format!("MISMATCH history in project {project}")), "{out}");
    assert!(out.contains("verification failed"), "{out}");
    assert!(!out.contains("MISMATCH resource"), "only the changed table: {out}");

    // --force copies again over it.
    let run = migrate(&["--force"]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(migrate(&["--verify-only"]).status.success());

    // A lost index row, a changed setting and a damaged file.
    pg.batch_execute(
        "DELETE FROM sp_token WHERE ctid = (SELECT ctid FROM sp_token LIMIT 1); \
         UPDATE setting SET value = 'x'::bytea WHERE name = (SELECT MIN(name) FROM setting)",
    )
    .await
    .unwrap();
    std::fs::write(&binary_file, b"other content").unwrap();
    let run = migrate(&["--verify-only"]);
    assert!(!run.status.success(), "{}", text(&run));
    let out = text(&run);
    assert!(out.contains("MISMATCH sp_token"), "{out}");
    assert!(out.contains("MISMATCH setting in project (server)"), "{out}");
    assert!(out.contains("MISMATCH binary file"), "{out}");
    // --force repairs all of it.
    let run = migrate(&["--force"]);
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(std::fs::read(&binary_file).unwrap(), b"binary content");
    drop(pg);
    db.drop_database().await;
}
