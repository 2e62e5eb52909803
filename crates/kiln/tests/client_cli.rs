//! The `kiln` command-line client driven as a process against a real `kiln serve`: login and
//! the saved session, CRUD, search over several pages, import with refusals, exit codes, bulk
//! export to a directory.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

mod support;

/// Runs `kiln args…` with `config` as its configuration directory and `stdin` as its input.
fn kiln(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_CONFIG_DIR", config)
        .env_remove("KILN_TOKEN")
        .env_remove("KILN_PASSWORD")
        .env_remove("KILN_CLIENT_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// Runs `kiln args…`, which must succeed; its stdout as JSON.
fn ok_json(config: &Path, args: &[&str], stdin: Option<&str>) -> Value {
    let out = kiln(config, args, stdin);
    assert!(out.status.success(), "kiln {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn login(config: &Path, base: &str) -> Output {
    let args = ["login", "--url", base, "--email", "admin@example.com"];
    kiln(config, &[&args[..], &["--password", support::PASSWORD]].concat(), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_crud_and_search_over_pages() {
    let (server, _data) = support::start_fresh().await;
    let config = tempfile::tempdir().unwrap();
    let config = config.path();
    let session = config.join("session.json");

    // A wrong password: exit 3, nothing saved.
    let args = ["login", "--url", &server.base, "--email", "admin@example.com"];
    let out = kiln(config, &[&args[..], &["--password", "wrong"]].concat(), None);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!session.exists());

    // Before any login a command has no server: a usage error.
    assert_eq!(kiln(config, &["get", "metadata"], None).status.code(), Some(2));

    let out = login(config, &server.base);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved: Value = serde_json::from_slice(&std::fs::read(&session).unwrap()).unwrap();
    assert_eq!(saved["url"], server.base.as_str());
    assert!(saved["access_token"].as_str().is_some_and(|t| !t.is_empty()), "{saved}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&session).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    // An expired session is renewed with its refresh token before the call, and saved again
    // (still 0600).
    let mut expired = saved.clone();
    expired["expires_at"] = json!(1);
    std::fs::write(&session, expired.to_string()).unwrap();
    assert!(kiln(config, &["search", "Patient"], None).status.success());
    let renewed: Value = serde_json::from_slice(&std::fs::read(&session).unwrap()).unwrap();
    assert_ne!(renewed["access_token"], saved["access_token"]);
    assert!(renewed["expires_at"].as_u64().unwrap() > 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&session).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // get: relative paths, absolute URLs on the same server.
    assert_eq!(ok_json(config, &["get", "metadata"], None)["resourceType"], "CapabilityStatement");

    // post from stdin, then from a file.
    let patient =
        json!({"resourceType": "Patient", "gender": "female", "name": [{"family": "Cli"}]});
    let created = ok_json(config, &["post", "Patient", "-"], Some(&patient.to_string()));
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("Patient/{id}");
    let file = config.join("patient.json");
    std::fs::write(&file, patient.to_string()).unwrap();
    ok_json(config, &["post", "Patient", file.to_str().unwrap()], None);

    let absolute = format!("{}fhir/R4/{path}", server.base);
    let read = ok_json(config, &["get", &absolute, "--pretty"], None);
    assert_eq!(read["id"], id.as_str());
    let pretty = kiln(config, &["get", &path, "--pretty"], None);
    assert!(String::from_utf8_lossy(&pretty.stdout).contains("\n  \"gender\""));

    // An empty path posts a batch or transaction Bundle to the FHIR base.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Patient", "name": [{"family": "Bundled"}]},
        "request": {"method": "POST", "url": "Patient"}}]});
    let response = ok_json(config, &["post", "", "-"], Some(&bundle.to_string()));
    assert_eq!(response["type"], "transaction-response");
    // A body of another type than the path's: a usage error, nothing sent.
    assert_eq!(
        kiln(config, &["post", "Observation", "-"], Some(&patient.to_string())).status.code(),
        Some(2)
    );

    // Invalid JSON and unreadable files are client-side errors.
    assert_eq!(kiln(config, &["post", "Patient", "-"], Some("{nope")).status.code(), Some(2));
    assert_eq!(kiln(config, &["post", "Patient", "/no/such/file"], None).status.code(), Some(2));
    assert_eq!(kiln(config, &["get", "Patient/no-such-id"], None).status.code(), Some(3));

    // put with --if-match: the current version passes, a stale one is 412 → exit 3 with the
    // OperationOutcome on stderr.
    let mut edited = read.clone();
    edited["gender"] = json!("male");
    let updated =
        ok_json(config, &["put", &path, "-", "--if-match", "1"], Some(&edited.to_string()));
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["gender"], "male");
    let out = kiln(config, &["put", &path, "-", "--if-match", "1"], Some(&edited.to_string()));
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OperationOutcome"));

    // patch: a JSON Patch array, then a FHIRPath Patch Parameters.
    let ops = json!([{"op": "replace", "path": "/gender", "value": "other"}]);
    let patched = ok_json(config, &["patch", &path, "-"], Some(&ops.to_string()));
    assert_eq!(patched["gender"], "other");
    let params = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"},
        {"name": "path", "valueString": "Patient.gender"},
        {"name": "value", "valueCode": "unknown"}]}]});
    let patched = ok_json(config, &["patch", &path, "-"], Some(&params.to_string()));
    assert_eq!(patched["gender"], "unknown");

    // delete: then the read is 410 Gone → exit 3.
    let out = kiln(config, &["delete", &path], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(kiln(config, &["get", &path], None).status.code(), Some(3));

    // search: five matches, two a page: three pages with --all, the first page without.
    for _ in 0..5 {
        let body = json!({"resourceType": "Patient", "name": [{"family": "Paged"}]});
        ok_json(config, &["post", "Patient", "-"], Some(&body.to_string()));
    }
    let out = kiln(config, &["search", "Patient", "family=Paged&_count=2", "--all"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all = lines(&out);
    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|p| p["resourceType"] == "Patient"));
    let out = kiln(config, &["search", "Patient", "family=Paged&_count=2"], None);
    assert_eq!(lines(&out).len(), 2);
    let out = kiln(config, &["search", "Patient", "family=Paged", "--table"], None);
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 6, "{table}");
    assert!(table.starts_with("ID ") && table.contains("Paged"), "{table}");

    // import with the saved session: an NDJSON file with one bad line, a batch with one bad
    // entry, a transaction refused as a whole; the rest is stored, each refusal named, exit 1.
    let files = tempfile::tempdir().unwrap();
    let ndjson = files.path().join("people.ndjson");
    let mut text = String::new();
    for i in 0..3 {
        text.push_str(
            &json!({"resourceType": "Patient", "name": [{"family": format!("Imp{i}")}]})
                .to_string(),
        );
        text.push('\n');
    }
    text.push_str("{\"resourceType\": \"Patient\", \"gender\": \"robot\"}\n");
    std::fs::write(&ndjson, text).unwrap();
    let batch = files.path().join("batch.json");
    let entry = |resource: Value| {
        json!({"resource": resource,
                                         "request": {"method": "POST", "url": "Patient"}})
    };
    let good = json!({"resourceType": "Patient", "name": [{"family": "ImpBatch"}]});
    let bad = json!({"resourceType": "Patient", "birthDate": "yesterday"});
    let bundle = |ty: &str| {
        json!({"resourceType": "Bundle", "type": ty,
                                   "entry": [entry(good.clone()), entry(bad.clone())]})
    };
    std::fs::write(&batch, bundle("batch").to_string()).unwrap();
    let transaction = files.path().join("transaction.json");
    std::fs::write(&transaction, bundle("transaction").to_string()).unwrap();
    let paths = [&ndjson, &batch, &transaction].map(|p| p.to_str().unwrap().to_owned());
    let out =
        kiln(config, &[&["import"][..], &paths.each_ref().map(String::as_str)].concat(), None);
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("imported 3 resources from 1 file(s); 1 refused"), "{stdout}");
    assert!(stderr.contains("people.ndjson:4: "), "{stderr}");
    assert!(stderr.contains("batch.json entry 2: 400"), "{stderr}");
    assert!(stdout.contains("batch.json: 2 entries, 1 refused"), "{stdout}");
    assert!(stderr.contains("transaction.json: refused (HTTP 400)"), "{stderr}");
    let found = kiln(config, &["search", "Patient", "family=Imp&_count=100", "--all"], None);
    assert_eq!(lines(&found).len(), 4, "three lines and the batch's good entry");
    // Everything loaded: exit 0. A file that does not exist: exit 2, nothing sent.
    let good_only = files.path().join("good.ndjson");
    std::fs::write(&good_only, format!("{good}\n")).unwrap();
    let out = kiln(config, &["import", good_only.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let missing = files.path().join("missing.ndjson");
    assert_eq!(kiln(config, &["import", missing.to_str().unwrap()], None).status.code(), Some(2));

    // logout forgets the session.
    assert!(kiln(config, &["logout"], None).status.success());
    assert!(!session.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_errors_exit_5() {
    let config = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let out = kiln(config.path(), &["get", "metadata", "--url", &url], None);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    let args = ["login", "--url", &url, "--client-id", "x", "--client-secret", "y"];
    assert_eq!(kiln(config.path(), &args, None).status.code(), Some(5));
    let file = config.path().join("one.ndjson");
    std::fs::write(&file, "{\"resourceType\": \"Patient\"}\n").unwrap();
    let out = kiln(config.path(), &["import", "--url", &url, file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_and_export_to_a_directory() {
    let (server, _data) = support::start_fresh().await;
    let http = reqwest::Client::new();
    let token = server.token(&http).await;
    let login = server.login(&http).await;
    let project = login["project"]["reference"].as_str().unwrap().trim_start_matches("Project/");
    let url = format!("{}admin/projects/{project}/client", server.base);
    let body = json!({"name": "cli"});
    let app = support::send_json(&http, reqwest::Method::POST, url, &token, &body).await;
    let (id, secret) = (app["id"].as_str().unwrap(), app["secret"].as_str().unwrap());

    let config = tempfile::tempdir().unwrap();
    let config = config.path();
    let args = ["login", "--url", &server.base, "--client-id", id, "--client-secret", "wrong"];
    assert_eq!(kiln(config, &args, None).status.code(), Some(3));
    let args = ["login", "--url", &server.base, "--client-id", id, "--client-secret", secret];
    let out = kiln(config, &args, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved: Value =
        serde_json::from_slice(&std::fs::read(config.join("session.json")).unwrap()).unwrap();
    assert_eq!(saved["client_id"], id);

    // An expired client-credentials session is renewed before the call, and saved again.
    let mut expired = saved.clone();
    expired["expires_at"] = json!(1);
    std::fs::write(config.join("session.json"), expired.to_string()).unwrap();
    ok_json(config, &["get", "metadata"], None);
    let renewed: Value =
        serde_json::from_slice(&std::fs::read(config.join("session.json")).unwrap()).unwrap();
    assert_ne!(renewed["access_token"], saved["access_token"]);
    assert!(renewed["expires_at"].as_u64().unwrap() > 1);

    for family in ["A", "B", "C"] {
        let body = json!({"resourceType": "Patient", "name": [{"family": family}]});
        ok_json(config, &["post", "Patient", "-"], Some(&body.to_string()));
    }
    let body = json!({"resourceType": "Observation", "status": "final",
                      "code": {"text": "x"}});
    ok_json(config, &["post", "Observation", "-"], Some(&body.to_string()));

    let out_dir = config.join("export");
    let out_str = out_dir.to_str().unwrap();
    let export = ["export", "--type", "Patient,Observation", "--out", out_str];
    let summary = ok_json(config, &export, None);
    assert_eq!(summary["skipped"], 0, "{summary}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    let outputs = manifest["output"].as_array().unwrap();
    assert!(!outputs.is_empty(), "{manifest}");
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut patients = 0;
    for output in outputs {
        let ty = output["type"].as_str().unwrap();
        let n = seen.entry(ty.to_owned()).or_default();
        *n += 1;
        let text = std::fs::read_to_string(out_dir.join(format!("{ty}-{n}.ndjson"))).unwrap();
        let count = text.lines().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(Some(count as u64), output["count"].as_u64(), "{ty}-{n}");
        if ty == "Patient" {
            patients += count;
        }
    }
    assert_eq!(patients, 3);
    assert_eq!(summary["downloaded"], outputs.len());
    let leftovers = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().to_string_lossy().ends_with(".partial"))
        .count();
    assert_eq!(leftovers, 0);

    // A second run finds every file complete and downloads nothing.
    let again = ok_json(config, &export, None);
    assert_eq!(again["downloaded"], 0, "{again}");
    assert_eq!(again["skipped"], outputs.len());

    // --patient: the Patient compartments (the Observation has no subject: not in one);
    // --group: only the Group's member.
    let dir = config.join("patients");
    let args = ["export", "--patient", "--type", "Patient,Observation", "--out"];
    let summary = ok_json(config, &[&args[..], &[dir.to_str().unwrap()]].concat(), None);
    assert_eq!(summary["resources"], 3, "{summary}");
    let out = kiln(config, &["search", "Patient", "family=B"], None);
    let member = lines(&out)[0]["id"].as_str().unwrap().to_owned();
    let group = json!({"resourceType": "Group", "type": "person", "actual": true,
                       "member": [{"entity": {"reference": format!("Patient/{member}")}}]});
    let group = ok_json(config, &["post", "Group", "-"], Some(&group.to_string()));
    let dir = config.join("group");
    let group_id = group["id"].as_str().unwrap();
    let args = ["export", "--group", group_id, "--type", "Patient", "--out"];
    let summary = ok_json(config, &[&args[..], &[dir.to_str().unwrap()]].concat(), None);
    assert_eq!(summary["resources"], 1, "{summary}");
    let text = std::fs::read_to_string(dir.join("Patient-1.ndjson")).unwrap();
    assert!(text.contains(&member), "{text}");
}
