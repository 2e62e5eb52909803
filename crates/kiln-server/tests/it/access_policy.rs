//! AccessPolicy enforcement over HTTP: a member restricted by a policy tries every interaction
//! across the policy's boundary, and nothing outside it is seen or changed.
//!
//! The signed-in administrator is turned into such a member: the test takes away the
//! project's `superAdmin` flag and the membership's `admin` flag and gives the membership a
//! policy and a profile, writing through the engine with an internal context (what a project
//! admin does through the admin API).

use kiln_engine::RequestContext;
use kiln_store::ProjectId;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, ids, json_of, matches, patient, search};

struct World {
    server: TestServer,
    ctx: RequestContext,
    membership: Value,
    p1: String,
    p2: String,
    o1: String,
    o2: String,
    o3: String,
    e1: String,
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn obs(patient: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "subject": {"reference": format!("Patient/{patient}")},
           "valueString": "secret-ish"})
}

/// Two patients with observations and an encounter, written as the administrator.
async fn world() -> World {
    let server = TestServer::start().await;
    let tokens = server.login_full().await;
    let project =
        tokens["project"]["reference"].as_str().unwrap().strip_prefix("Project/").unwrap();
    let ctx = RequestContext::new(ProjectId::new(project.to_owned()));
    let p1 = id(&server.create(&patient("Alpha")).await);
    let p2 = id(&server.create(&patient("Beta")).await);
    let o1 = id(&server.create(&obs(&p1, "A")).await);
    let o2 = id(&server.create(&obs(&p2, "A")).await);
    let o3 = id(&server.create(&obs(&p1, "B")).await);
    let e1 = id(&server
        .create(&json!({"resourceType": "Encounter", "status": "finished",
                        "class": {"code": "AMB"}, "subject": {"reference": format!("Patient/{p1}")}}))
        .await);
    let bundle = search(&server, "ProjectMembership").await;
    let membership = bundle["entry"][0]["resource"].clone();
    // No longer a super admin project.
    let (_, mut proj) = server.get_json(&format!("Project/{project}")).await;
    proj["superAdmin"] = json!(false);
    proj["secret"] = json!([{"name": "api-key", "valueString": "s3cret"}]);
    server.engine.update(&ctx, "Project", project, proj, None).await.unwrap();
    World { server, ctx, membership, p1, p2, o1, o2, o3, e1 }
}

impl World {
    /// Gives the signed-in member `policy` (an AccessPolicy body), `profile` and `admin`.
    async fn become_member(&self, policy: Option<Value>, profile: &str, admin: bool) {
        let mut m = self.membership.clone();
        if let Some(policy) = policy {
            let stored =
                self.server.engine.create(&self.ctx, "AccessPolicy", policy).await.unwrap();
            m["accessPolicy"] = json!({"reference": format!("AccessPolicy/{}", stored.stored.id)});
        }
        m["profile"] = json!({"reference": profile});
        m["admin"] = json!(admin);
        let mid = id(&m);
        self.server.engine.update(&self.ctx, "ProjectMembership", &mid, m, None).await.unwrap();
    }

    async fn status(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let req = match body {
            Some(b) => self.server.send_json(method, path, b),
            None => self.server.fhir(method, path),
        };
        json_of(req.send().await.unwrap()).await
    }

    async fn stored(&self, ty: &str, id: &str) -> Value {
        let s = self.server.engine.read(&self.ctx, ty, id).await.unwrap();
        serde_json::from_slice(&s.body).unwrap()
    }
}

fn patient_policy() -> Value {
    json!({"resourceType": "AccessPolicy", "name": "Patient portal",
    "resource": [
        {"resourceType": "Patient", "criteria": "Patient?_id=%patient.id"},
        {"resourceType": "Observation", "criteria": "Observation?subject=%patient"},
    ]})
}

#[tokio::test]
async fn a_patient_sees_only_their_own_compartment() {
    let w = world().await;
    w.become_member(Some(patient_policy()), &format!("Patient/{}", w.p1), false).await;
    let s = &w.server;
    let (p1, p2, o1, o2, o3) = (&w.p1, &w.p2, &w.o1, &w.o2, &w.o3);

    // Searches: only their own, with exact totals.
    assert_eq!(matches(s, "Patient").await, vec![format!("Patient/{p1}")]);
    let bundle = search(s, "Observation?_total=accurate").await;
    assert_eq!(bundle["total"], 2);
    let mut want = vec![format!("Observation/{o1}"), format!("Observation/{o3}")];
    want.sort();
    assert_eq!(matches(s, "Observation").await, want);
    assert_eq!(search(s, "Observation?_summary=count").await["total"], 2);
    assert!(matches(s, &format!("Observation?subject=Patient/{p2}")).await.is_empty());
    // Paging over the restricted set serves each once.
    let first = search(s, "Observation?_count=1").await;
    assert_eq!(ids(&first, "match").len(), 1);
    let next = first["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap();
    let url = next["url"].as_str().unwrap();
    let (_, second) = json_of(s.client.get(url).bearer_auth(&s.token).send().await.unwrap()).await;
    assert_eq!(ids(&second, "match").len(), 1);
    assert_ne!(ids(&first, "match"), ids(&second, "match"));

    // Reads: their own 200, another patient's 404 (existence is not revealed).
    assert_eq!(w.status(Method::GET, &format!("Patient/{p1}"), None).await.0, 200);
    let (status, body) = w.status(Method::GET, &format!("Patient/{p2}"), None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(w.status(Method::GET, &format!("Observation/{o2}"), None).await.0, 404);
    assert_eq!(w.status(Method::GET, &format!("Observation/{o2}/_history/1"), None).await.0, 404);
    assert_eq!(w.status(Method::GET, &format!("Observation/{o1}/_history/1"), None).await.0, 200);
    // A type the policy does not name: 403.
    let (status, body) = w.status(Method::GET, "Encounter", None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(w.status(Method::GET, &format!("Encounter/{}", w.e1), None).await.0, 403);
    // The same answer for one that does not exist: existence is not revealed.
    assert_eq!(w.status(Method::GET, "Encounter/no-such-encounter", None).await.0, 403);
    assert_eq!(w.status(Method::GET, "Encounter/no-such-encounter/_history", None).await.0, 403);
    assert_eq!(w.status(Method::GET, "Observation/no-such-obs", None).await.0, 404);
    // Definitions are public; writing them is not.
    assert_eq!(w.status(Method::GET, "SearchParameter", None).await.0, 200);
    let sp = json!({"resourceType": "SearchParameter", "url": "http://x/sp", "name": "x", "status": "draft",
                    "description": "x", "code": "x", "base": ["Patient"], "type": "string", "expression": "Patient.name"});
    assert_eq!(w.status(Method::POST, "SearchParameter", Some(&sp)).await.0, 403);
    // Membership records are for admins.
    assert_eq!(w.status(Method::GET, "ProjectMembership", None).await.0, 403);
    assert_eq!(w.status(Method::GET, "AccessPolicy", None).await.0, 403);

    // _include / _revinclude only bring in what the member may see.
    let bundle = search(s, "Observation?_include=Observation:subject").await;
    assert_eq!(ids(&bundle, "include"), vec![format!("Patient/{p1}")]);
    let bundle = search(s, "Patient?_revinclude=Observation:subject").await;
    let mut inc = ids(&bundle, "include");
    inc.sort();
    assert_eq!(inc, want);
    // _has counts only visible referrers.
    assert_eq!(
        matches(s, "Patient?_has:Observation:subject:code=A").await,
        vec![format!("Patient/{p1}")]
    );
    // Compartment search and $everything.
    assert!(matches(s, &format!("Patient/{p2}/Observation")).await.is_empty());
    assert_eq!(matches(s, &format!("Patient/{p1}/Observation")).await, want);
    let (status, _) = w.status(Method::GET, &format!("Patient/{p2}/$everything"), None).await;
    assert_eq!(status, 404);
    let everything = search(s, &format!("Patient/{p1}/$everything")).await;
    let all: Vec<String> =
        ids(&everything, "match").into_iter().chain(ids(&everything, "include")).collect();
    assert!(all.iter().all(|r| !r.contains(p2.as_str()) && !r.contains(o2.as_str())), "{all:?}");
    assert!(!all.iter().any(|r| r.starts_with("Encounter/")), "{all:?}");

    // History at every level.
    let (status, hist) = w.status(Method::GET, "Observation/_history", None).await;
    assert_eq!(status, 200);
    let seen: Vec<String> = hist["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(seen.contains(o1) && seen.contains(o3) && !seen.contains(o2), "{seen:?}");
    let (_, hist) = w.status(Method::GET, "_history", None).await;
    let seen: Vec<String> =
        hist["entry"].as_array().unwrap().iter().map(|e| e["fullUrl"].to_string()).collect();
    assert!(seen.iter().all(|u| !u.contains(p2.as_str()) && !u.contains(o2.as_str())), "{seen:?}");
    assert!(
        seen.iter().all(|u| !u.contains("/Encounter/") && !u.contains("Membership")),
        "{seen:?}"
    );
    assert_eq!(w.status(Method::GET, &format!("Observation/{o2}/_history"), None).await.0, 404);
    assert_eq!(w.status(Method::GET, "Encounter/_history", None).await.0, 403);

    // Writes: inside the policy yes, outside no.
    let (status, _) = w.status(Method::POST, "Observation", Some(&obs(p1, "C"))).await;
    assert_eq!(status, 201);
    let (status, body) = w.status(Method::POST, "Observation", Some(&obs(p2, "C"))).await;
    assert_eq!(status, 403, "{body}");
    let mut moved = w.stored("Observation", o1).await;
    moved["subject"] = json!({"reference": format!("Patient/{p2}")});
    assert_eq!(w.status(Method::PUT, &format!("Observation/{o1}"), Some(&moved)).await.0, 403);
    let mut other = w.stored("Observation", o2).await;
    other["status"] = json!("amended");
    assert_eq!(w.status(Method::PUT, &format!("Observation/{o2}"), Some(&other)).await.0, 403);
    assert_eq!(w.status(Method::DELETE, &format!("Observation/{o2}"), None).await.0, 403);
    let patch = json!([{"op": "replace", "path": "/status", "value": "amended"}]);
    let res = s
        .fhir(Method::PATCH, &format!("Observation/{o2}"))
        .header("content-type", "application/json-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(w.stored("Observation", o2).await["status"], "final", "o2 untouched");
    // Conditional writes see only the member's resources.
    let res =
        s.fhir(Method::DELETE, &format!("Observation?subject=Patient/{p2}")).send().await.unwrap();
    assert!(res.status().is_success(), "nothing visible matched");
    assert!(!w.server.engine.read(&w.ctx, "Observation", o2).await.unwrap().deleted);
    // A batch: each entry judged on its own.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": obs(p2, "D"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": obs(p1, "D"), "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": format!("Patient/{p2}")}},
        {"request": {"method": "GET", "url": "Encounter"}},
    ]});
    let (status, out) = w.status(Method::POST, "", Some(&batch)).await;
    assert_eq!(status, 200, "{out}");
    let statuses: Vec<&str> = out["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert!(statuses[0].starts_with("403"), "{statuses:?}");
    assert!(statuses[1].starts_with("201"), "{statuses:?}");
    assert!(statuses[2].starts_with("404"), "{statuses:?}");
    assert!(statuses[3].starts_with("403"), "{}", out["entry"][3]);
    // A transaction with one refused entry writes nothing.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": obs(p1, "E"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": obs(p2, "E"), "request": {"method": "POST", "url": "Observation"}},
    ]});
    let (status, _) = w.status(Method::POST, "", Some(&tx)).await;
    assert_eq!(status, 403);
    assert!(matches(s, "Observation?code=E").await.is_empty());

    // /auth/me shows the effective policy with its placeholders bound.
    let res = s.client.get(s.url("auth/me")).bearer_auth(&s.token).send().await.unwrap();
    let (_, me) = json_of(res).await;
    let criteria = me["accessPolicy"]["resource"][0]["criteria"].as_str().unwrap();
    assert_eq!(criteria, format!("Patient?_id={p1}"));
    assert!(me["project"].get("secret").is_none(), "project secrets are for admins: {me}");
    assert!(me["project"]["name"].is_string());
}

#[tokio::test]
async fn chains_and_includes_do_not_pass_through_hidden_resources() {
    let w = world().await;
    // Every Observation, but only one Patient.
    let policy = json!({"resourceType": "AccessPolicy", "resource": [
        {"resourceType": "Patient", "criteria": "Patient?_id=%patient.id"},
        {"resourceType": "Observation"},
    ]});
    w.become_member(Some(policy), &format!("Patient/{}", w.p1), false).await;
    let s = &w.server;
    assert_eq!(matches(s, "Observation").await.len(), 3);
    // The chain cannot probe the hidden patient's name...
    assert!(matches(s, "Observation?subject:Patient.name=Beta").await.is_empty());
    assert_eq!(matches(s, "Observation?subject:Patient.name=Alpha").await.len(), 2);
    assert!(matches(s, "Observation?_filter=subject.name eq Beta").await.is_empty());
    // Includes leave the hidden patient out.
    let bundle = search(s, "Observation?_include=Observation:subject").await;
    assert_eq!(ids(&bundle, "include"), vec![format!("Patient/{}", w.p1)]);
    let bundle = search(s, &format!("Observation?_id={}&_include=Observation:subject", w.o2)).await;
    assert!(ids(&bundle, "include").is_empty());

    // Every Patient, but only one patient's Observations: `_has` cannot see the others.
    let policy = json!({"resourceType": "AccessPolicy", "resource": [
        {"resourceType": "Patient"},
        {"resourceType": "Observation", "criteria": "Observation?subject=%patient"},
    ]});
    w.become_member(Some(policy), &format!("Patient/{}", w.p1), false).await;
    assert_eq!(matches(s, "Patient").await.len(), 2);
    assert_eq!(
        matches(s, "Patient?_has:Observation:subject:code=A").await,
        vec![format!("Patient/{}", w.p1)]
    );
    let bundle = search(s, &format!("Patient?_id={}&_revinclude=Observation:subject", w.p2)).await;
    assert!(ids(&bundle, "include").is_empty());
}

#[tokio::test]
async fn hidden_and_readonly_fields_and_write_constraints() {
    let w = world().await;
    let policy = json!({"resourceType": "AccessPolicy", "resource": [
        {"resourceType": "Patient", "hiddenFields": ["birthDate"], "readonlyFields": ["gender"]},
        {"resourceType": "Observation",
         "writeConstraint": [{"language": "text/fhirpath", "expression": "%after.status != 'cancelled'"}]},
    ]});
    w.become_member(Some(policy), "Practitioner/someone", false).await;
    let p1 = &w.p1;
    let (status, read) = w.status(Method::GET, &format!("Patient/{p1}"), None).await;
    assert_eq!(status, 200);
    assert!(read.get("birthDate").is_none(), "{read}");
    assert_eq!(read["gender"], "female");
    let bundle = search(&w.server, "Patient").await;
    assert!(
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["resource"].get("birthDate").is_none())
    );
    // An update (which cannot carry the hidden field) keeps the stored birthDate, and the
    // read-only gender stays what it was.
    let mut changed = read.clone();
    changed["gender"] = json!("male");
    changed["name"] = json!([{"family": "Renamed"}]);
    let (status, out) = w.status(Method::PUT, &format!("Patient/{p1}"), Some(&changed)).await;
    assert_eq!(status, 200, "{out}");
    let stored = w.stored("Patient", p1).await;
    assert_eq!(stored["birthDate"], "1990-05-17");
    assert_eq!(stored["gender"], "female");
    assert_eq!(stored["name"][0]["family"], "Renamed");
    // A created patient cannot set the read-only field.
    let (status, created) = w.status(Method::POST, "Patient", Some(&patient("Gamma"))).await;
    assert_eq!(status, 201);
    assert!(created.get("gender").is_none(), "{created}");
    // writeConstraint.
    let mut cancelled = obs(p1, "Z");
    cancelled["status"] = json!("cancelled");
    let (status, body) = w.status(Method::POST, "Observation", Some(&cancelled)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(w.status(Method::POST, "Observation", Some(&obs(p1, "Z"))).await.0, 201);
}

#[tokio::test]
async fn interactions_are_enforced_one_by_one() {
    let w = world().await;
    let policy = json!({"resourceType": "AccessPolicy", "resource": [
        {"resourceType": "Patient", "interaction": ["read"]},
        {"resourceType": "Observation", "readonly": true},
    ]});
    w.become_member(Some(policy), "Practitioner/someone", false).await;
    let (p1, o1) = (&w.p1, &w.o1);
    assert_eq!(w.status(Method::GET, &format!("Patient/{p1}"), None).await.0, 200);
    assert_eq!(w.status(Method::GET, "Patient", None).await.0, 403, "no search");
    assert_eq!(w.status(Method::GET, &format!("Patient/{p1}/_history"), None).await.0, 403);
    assert_eq!(w.status(Method::GET, &format!("Patient/{p1}/_history/1"), None).await.0, 403);
    assert_eq!(w.status(Method::POST, "Patient", Some(&patient("X"))).await.0, 403);
    assert_eq!(w.status(Method::DELETE, &format!("Patient/{p1}"), None).await.0, 403);
    assert_eq!(w.status(Method::GET, "Observation", None).await.0, 200);
    assert_eq!(w.status(Method::GET, &format!("Observation/{o1}/_history"), None).await.0, 200);
    let current = w.stored("Observation", o1).await;
    assert_eq!(w.status(Method::PUT, &format!("Observation/{o1}"), Some(&current)).await.0, 403);
}

#[tokio::test]
async fn members_without_a_policy_see_the_project_but_not_its_admin_records() {
    let w = world().await;
    w.become_member(None, "Practitioner/someone", false).await;
    assert_eq!(matches(&w.server, "Patient").await.len(), 2);
    // The membership was rewritten as a whole (as a FHIR PUT does): its user can still sign in.
    let tokens = w.server.login_full().await;
    assert_eq!(tokens["profile"]["reference"], "Practitioner/someone");
    assert_eq!(w.status(Method::GET, "ProjectMembership", None).await.0, 403);
    assert_eq!(
        w.status(Method::GET, &format!("ProjectMembership/{}", id(&w.membership)), None).await.0,
        403
    );
    // A system search leaves them out too.
    let bundle = search(&w.server, "?_type=Patient,ProjectMembership").await;
    assert!(ids(&bundle, "match").iter().all(|r| r.starts_with("Patient/")));
    // Rebuilding the index is an admin's call.
    let (status, body) = w
        .status(Method::POST, "Patient/$reindex", Some(&json!({"resourceType": "Parameters"})))
        .await;
    assert_eq!(status, 403, "{body}");
    // An admin sees them, and may reindex.
    w.become_member(None, "Practitioner/someone", true).await;
    assert_eq!(w.status(Method::GET, "ProjectMembership", None).await.0, 200);
    let (status, body) = w
        .status(Method::POST, "Patient/$reindex", Some(&json!({"resourceType": "Parameters"})))
        .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn a_policy_that_cannot_be_applied_refuses_everything() {
    let w = world().await;
    // One that could never apply is refused when written.
    let bad = json!({"resourceType": "AccessPolicy", "resource": [
        {"resourceType": "Patient", "criteria": "Patient?no-such-param=1"},
    ]});
    let (status, body) = w.status(Method::POST, "AccessPolicy", Some(&bad)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("no-such-param"), "{body}");
    // One that cannot apply to this member: `%patient` for a practitioner.
    let policy = json!({"resourceType": "AccessPolicy", "resource": [
        {"resourceType": "Patient", "criteria": "Patient?_id=%patient.id"},
    ]});
    w.become_member(Some(policy), "Practitioner/someone", false).await;
    let (status, body) = w.status(Method::GET, &format!("Patient/{}", w.p1), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("cannot be applied"), "{body}");
    assert_eq!(w.status(Method::GET, "Observation", None).await.0, 403);
    assert_eq!(w.status(Method::POST, "Observation", Some(&obs(&w.p1, "Q"))).await.0, 403);
}

#[tokio::test]
async fn a_binary_follows_its_security_context() {
    let w = world().await;
    let binary = |patient: &str| {
        json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8=",
               "securityContext": {"reference": format!("Patient/{patient}")}})
    };
    let mine = id(&w.server.create(&binary(&w.p1)).await);
    let theirs = id(&w.server.create(&binary(&w.p2)).await);
    let loose = id(&w
        .server
        .create(&json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="}))
        .await);
    w.become_member(Some(patient_policy()), &format!("Patient/{}", w.p1), false).await;
    let get = |bid: String| {
        let req = w.server.fhir(Method::GET, &format!("Binary/{bid}"));
        async move { json_of(req.header("accept", "application/fhir+json").send().await.unwrap()).await }
    };
    let (status, body) = get(mine.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["securityContext"]["reference"], format!("Patient/{}", w.p1));
    assert_eq!(get(theirs.clone()).await.0, 404);
    assert_eq!(get(loose).await.0, 403);
    // The raw content too.
    let res = w
        .server
        .fhir(Method::GET, &format!("Binary/{mine}"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "hello");
    let res = w
        .server
        .fhir(Method::GET, &format!("Binary/{theirs}"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn ip_access_rules_allow_and_block_addresses() {
    let w = world().await;
    let policy = |rules: Value| {
        json!({"resourceType": "AccessPolicy", "ipAccessRule": rules,
               "resource": [{"resourceType": "Patient"}]})
    };
    // Loopback allowed first, everything else blocked: the tests' requests pass.
    w.become_member(
        Some(policy(json!([
            {"name": "office", "value": "127.0.0.0/8", "action": "allow"},
            {"name": "rest", "value": "*", "action": "block"},
        ]))),
        "Practitioner/someone",
        false,
    )
    .await;
    assert_eq!(w.status(Method::GET, "Patient", None).await.0, 200);
    // Only some other network allowed: blocked, with an OperationOutcome.
    w.become_member(
        Some(policy(json!([
            {"name": "office", "value": "10.20.", "action": "allow"},
            {"name": "rest", "value": "*", "action": "block"},
        ]))),
        "Practitioner/someone",
        false,
    )
    .await;
    let (status, body) = w.status(Method::GET, "Patient", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("address"), "{body}");
    // Behind a trusted proxy, the forwarded client address decides; a client's own header is
    // not believed when the server trusts no proxy (the case above: loopback peer, blocked).
    let res = w.server.fhir(Method::GET, "Patient").header("x-forwarded-for", "10.20.1.1").send();
    assert_eq!(res.await.unwrap().status(), 403, "an untrusted X-Forwarded-For changes nothing");
    // A rule without an action is refused when written.
    let bad = policy(json!([{"name": "x", "value": "*"}]));
    let stored = w.server.engine.create(&w.ctx, "AccessPolicy", bad).await;
    assert!(stored.is_err());
}

/// Signs the administrator in again asking for `scope`; the access token.
async fn token_with_scope(server: &TestServer, scope: &str) -> String {
    let res = server
        .client
        .post(server.url("auth/login"))
        .json(&json!({"email": crate::support::ADMIN_EMAIL, "password": crate::support::ADMIN_PASSWORD,
                      "scope": scope, "codeChallenge": "plain-verifier-for-scope-tests",
                      "codeChallengeMethod": "plain"}))
        .send()
        .await
        .unwrap();
    let (status, login) = json_of(res).await;
    assert_eq!(status, 200, "{login}");
    let res = server
        .client
        .post(server.url("oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", login["code"].as_str().unwrap()),
            ("code_verifier", "plain-verifier-for-scope-tests"),
        ])
        .send()
        .await
        .unwrap();
    let (status, tokens) = json_of(res).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["scope"], scope);
    tokens["access_token"].as_str().unwrap().to_owned()
}

async fn get_with(server: &TestServer, token: &str, path: &str) -> (u16, Value) {
    json_of(server.client.get(server.fhir_url(path)).bearer_auth(token).send().await.unwrap()).await
}

#[tokio::test]
async fn smart_scopes_narrow_what_a_token_reaches() {
    let w = world().await;
    let s = &w.server;
    let (p1, p2, o1, o2) = (&w.p1, &w.p2, &w.o1, &w.o2);
    let labels = |bundle: &Value| {
        let mut v = ids(bundle, "match");
        v.sort();
        v
    };
    // The patient, without a policy: scopes alone decide.
    w.become_member(None, &format!("Patient/{p1}"), false).await;
    let token = token_with_scope(s, "openid patient/Observation.rs").await;
    let (status, bundle) = get_with(s, &token, "Observation").await;
    assert_eq!(status, 200);
    let mut want = vec![format!("Observation/{o1}"), format!("Observation/{}", w.o3)];
    want.sort();
    assert_eq!(labels(&bundle), want, "patient/ reaches the patient's compartment only");
    assert_eq!(get_with(s, &token, &format!("Observation/{o1}")).await.0, 200);
    assert_eq!(get_with(s, &token, &format!("Observation/{o2}")).await.0, 404);
    let (status, body) = get_with(s, &token, "Patient").await;
    assert_eq!(status, 403, "a type the scopes do not name: {body}");
    assert!(body.to_string().contains("scopes"), "{body}");
    let res =
        s.client.post(s.fhir_url("Observation")).bearer_auth(&token).json(&obs(p1, "N")).send();
    assert_eq!(res.await.unwrap().status(), 403, "no 'c'");
    // v2 granular: a query narrows further.
    let token = token_with_scope(s, "patient/Observation.rs?code=http://loinc.org|B").await;
    let (_, bundle) = get_with(s, &token, "Observation").await;
    assert_eq!(labels(&bundle), vec![format!("Observation/{}", w.o3)]);
    // v1 words; `*`.
    let token = token_with_scope(s, "patient/*.read").await;
    assert_eq!(get_with(s, &token, &format!("Patient/{p1}")).await.0, 200);
    assert_eq!(get_with(s, &token, &format!("Patient/{p2}")).await.0, 404);
    let (_, bundle) = get_with(s, &token, "Encounter").await;
    assert_eq!(labels(&bundle), vec![format!("Encounter/{}", w.e1)]);
    let res =
        s.client.post(s.fhir_url("Observation")).bearer_auth(&token).json(&obs(p1, "N")).send();
    assert_eq!(res.await.unwrap().status(), 403, "read gives no write");
    let token = token_with_scope(s, "patient/Observation.cruds").await;
    let res =
        s.client.post(s.fhir_url("Observation")).bearer_auth(&token).json(&obs(p1, "N")).send();
    assert_eq!(res.await.unwrap().status(), 201);
    let res =
        s.client.post(s.fhir_url("Observation")).bearer_auth(&token).json(&obs(p2, "N")).send();
    assert_eq!(res.await.unwrap().status(), 403, "outside the patient's compartment");
    // A scope never widens: with a policy limiting Observations to one code, `user/*.cruds`
    // still sees only those.
    let policy = json!({"resourceType": "AccessPolicy", "resource": [
        {"resourceType": "Observation", "criteria": "Observation?code=http://loinc.org|A"}]});
    w.become_member(Some(policy), "Practitioner/someone", false).await;
    let token = token_with_scope(s, "user/*.cruds").await;
    let (_, bundle) = get_with(s, &token, "Observation").await;
    let mut want = vec![format!("Observation/{o1}"), format!("Observation/{o2}")];
    want.sort();
    assert_eq!(labels(&bundle), want);
    // Medplum's own sign-in asks for no resource scope: the policy alone applies.
    let token = token_with_scope(s, "openid offline").await;
    assert_eq!(labels(&get_with(s, &token, "Observation").await.1), want);
    // Even a super admin's token is narrowed by its scopes.
    w.become_member(None, "Practitioner/someone", true).await;
    let (_, mut proj) = s.get_json(&format!("Project/{}", w.ctx.project.as_str())).await;
    proj["superAdmin"] = json!(true);
    s.engine.update(&w.ctx, "Project", w.ctx.project.as_str(), proj, None).await.unwrap();
    let token = token_with_scope(s, "user/Patient.rs").await;
    assert_eq!(get_with(s, &token, "Patient").await.0, 200);
    assert_eq!(get_with(s, &token, "Observation").await.0, 403);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_counts() {
    let options = crate::support::Options {
        trusted_proxies: vec![kiln_server::client_ip::Cidr::parse("127.0.0.0/8").unwrap()],
        ..Default::default()
    };
    let server = TestServer::start_with(options).await;
    let tokens = server.login_full().await;
    let project = tokens["project"]["reference"].as_str().unwrap().trim_start_matches("Project/");
    let ctx = RequestContext::new(ProjectId::new(project.to_owned()));
    let (_, mut proj) = server.get_json(&format!("Project/{project}")).await;
    proj["superAdmin"] = json!(false);
    server.engine.update(&ctx, "Project", project, proj, None).await.unwrap();
    let policy = json!({"resourceType": "AccessPolicy",
        "ipAccessRule": [{"name": "office", "value": "203.0.113.0/24", "action": "allow"},
                         {"name": "rest", "value": "*", "action": "block"}],
        "resource": [{"resourceType": "Patient"}]});
    let policy = server.engine.create(&ctx, "AccessPolicy", policy).await.unwrap();
    let bundle = search(&server, "ProjectMembership").await;
    let mut m = bundle["entry"][0]["resource"].clone();
    m["admin"] = json!(false);
    m["accessPolicy"] = json!({"reference": format!("AccessPolicy/{}", policy.stored.id)});
    let mid = m["id"].as_str().unwrap().to_owned();
    server.engine.update(&ctx, "ProjectMembership", &mid, m, None).await.unwrap();
    let get = |xff: Option<&str>| {
        let mut req = server.fhir(Method::GET, "Patient");
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(Some("203.0.113.5")).await, 200, "the office, through the proxy");
    assert_eq!(get(Some("198.51.100.1")).await, 403, "elsewhere, through the proxy");
    assert_eq!(get(Some("203.0.113.5, 198.51.100.1")).await, 403, "the last untrusted hop decides");
    assert_eq!(get(None).await, 403, "the proxy itself is not the office");
}
