//! The adversarial matrix of #5: two projects; in the first an admin, a practitioner whose
//! policy grants their own patients, two patients (each with a patient policy) and a client
//! application with read-only access to Observations; in the second an admin and a patient.
//! Every actor tries every interaction on every resource, and on the searches that could
//! reach across a boundary (chains, `_has`, includes, compartments, `$everything`, history,
//! batch). What each actor may see is written down once (`visible`); every answer must agree
//! with it, and no write may change a resource outside what the actor may change.

use std::collections::BTreeSet;

use kiln_engine::RequestContext;
use kiln_store::ProjectId;
use serde_json::{Value, json};

use crate::admin::{admin_post, by_post, invite, sign_in};
use crate::support::{TestServer, json_of};

struct Actor {
    name: &'static str,
    token: String,
    /// The resources (by label) it may read.
    visible: BTreeSet<&'static str>,
    /// The resources (by label) it may update.
    writable: BTreeSet<&'static str>,
}

/// A resource of the fixture: its label, project, type and id.
struct Res {
    label: &'static str,
    project: String,
    ty: &'static str,
    id: String,
}

fn set(labels: &[&'static str]) -> BTreeSet<&'static str> {
    labels.iter().copied().collect()
}

async fn new_project(server: &TestServer, name: &str) -> String {
    let project = server.engine.create_project(name, None).await.unwrap();
    project["id"].as_str().unwrap().to_owned()
}

async fn token(server: &TestServer, email: &str, password: &str, project: Option<&str>) -> String {
    let tokens = sign_in(server, email, password, project).await.expect("sign-in");
    tokens["access_token"].as_str().unwrap().to_owned()
}

async fn post(server: &TestServer, token: &str, resource: &Value) -> Value {
    let ty = resource["resourceType"].as_str().unwrap();
    let res = server.client.post(server.fhir_url(ty)).bearer_auth(token).json(resource).send();
    let (status, body) = json_of(res.await.unwrap()).await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn get(server: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let res = server.client.get(server.fhir_url(path)).bearer_auth(token).send();
    json_of(res.await.unwrap()).await
}

/// Labels of the fixture resources found in a Bundle (matches and includes).
fn found(bundle: &Value, all: &[Res]) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let (ty, id) = (e["resource"]["resourceType"].as_str(), e["resource"]["id"].as_str());
        // History entries of deletions have no resource; their fullUrl names it.
        let url = e["fullUrl"].as_str().unwrap_or_default();
        for r in all {
            if (ty == Some(r.ty) && id == Some(r.id.as_str()))
                || url.ends_with(&format!("/{}/{}", r.ty, r.id))
            {
                out.insert(r.label);
            }
        }
    }
    out
}

fn policy_ref(policy: &Value) -> Value {
    json!({"reference": format!("AccessPolicy/{}", policy["id"].as_str().unwrap())})
}

#[tokio::test]
async fn no_interaction_crosses_a_boundary() {
    let server = TestServer::start().await;
    let s = &server;
    let (a, b) = (new_project(s, "Alpha clinic").await, new_project(s, "Beta clinic").await);
    // Admins.
    for (project, email) in [(&a, "admin-a@example.com"), (&b, "admin-b@example.com")] {
        let (status, m) = invite(
            s,
            &s.token,
            project,
            json!({"firstName": "Ad", "lastName": "Min",
            "email": email, "password": "admin-password", "admin": true}),
        )
        .await;
        assert_eq!(status, 201, "{m}");
    }
    let admin_a = token(s, "admin-a@example.com", "admin-password", Some(&a)).await;
    let admin_b = token(s, "admin-b@example.com", "admin-password", Some(&b)).await;
    // Policies in A.
    let patient_policy = json!({"resourceType": "AccessPolicy", "name": "Patient", "resource": [
        {"resourceType": "Patient", "criteria": "Patient?_id=%patient.id"},
        {"resourceType": "Observation", "criteria": "Observation?subject=%patient"},
    ]});
    let pp_a = post(s, &admin_a, &patient_policy).await;
    let pp_b = post(s, &admin_b, &patient_policy).await;
    let gp = post(s, &admin_a, &json!({"resourceType": "AccessPolicy", "name": "GP", "resource": [
        {"resourceType": "Patient", "criteria": "Patient?general-practitioner=%profile"},
        {"resourceType": "Observation", "criteria": "Observation?performer=%profile"},
        {"resourceType": "Practitioner", "criteria": "Practitioner?_id=%profile.id", "readonly": true},
    ]})).await;
    let reader = post(
        s,
        &admin_a,
        &json!({"resourceType": "AccessPolicy", "name": "Lab feed", "resource": [
            {"resourceType": "Observation", "readonly": true},
        ]}),
    )
    .await;
    // Members of A: the practitioner, two patients; of B: one patient.
    let (status, doc) = invite(s, &admin_a, &a, json!({"resourceType": "Practitioner",
        "firstName": "Greta", "lastName": "Gp", "email": "gp@example.com", "password": "gp-password",
        "accessPolicy": policy_ref(&gp)})).await;
    assert_eq!(status, 201, "{doc}");
    let doc_ref = doc["profile"]["reference"].as_str().unwrap().to_owned();
    let mut patients = Vec::new();
    for (project, admin, policy, email) in [
        (&a, &admin_a, &pp_a, "p1@example.com"),
        (&a, &admin_a, &pp_a, "p2@example.com"),
        (&b, &admin_b, &pp_b, "pb@example.com"),
    ] {
        let (status, m) = invite(
            s,
            admin,
            project,
            json!({"resourceType": "Patient",
            "firstName": "Pat", "lastName": email, "email": email, "password": "patient-password",
            "accessPolicy": policy_ref(policy)}),
        )
        .await;
        assert_eq!(status, 201, "{m}");
        patients.push(
            m["profile"]["reference"].as_str().unwrap().trim_start_matches("Patient/").to_owned(),
        );
    }
    let (x1, x2, xb) = (patients[0].clone(), patients[1].clone(), patients[2].clone());
    // The client application of A.
    let (status, client) = admin_post(
        s,
        &admin_a,
        &format!("admin/projects/{a}/client"),
        &json!({"name": "Lab feed", "accessPolicy": policy_ref(&reader)}),
    )
    .await;
    assert_eq!(status, 201, "{client}");
    let (status, tokens) =
        by_post(s, client["id"].as_str().unwrap(), client["secret"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{tokens}");
    let client_token = tokens["access_token"].as_str().unwrap().to_owned();

    // Data: x1's GP is the practitioner; observations of each patient.
    let ctx_a = RequestContext::new(ProjectId::new(a.clone()));
    let mut p1 =
        serde_json::from_slice::<Value>(&s.engine.read(&ctx_a, "Patient", &x1).await.unwrap().body)
            .unwrap();
    p1["generalPractitioner"] = json!([{"reference": doc_ref}]);
    s.engine.update(&ctx_a, "Patient", &x1, p1, None).await.unwrap();
    let obs = |patient: &str, code: &str, performer: Option<&str>| {
        let mut o = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{patient}")}});
        if let Some(p) = performer {
            o["performer"] = json!([{"reference": p}]);
        }
        o
    };
    let o1 = post(s, &admin_a, &obs(&x1, "1111-1", Some(&doc_ref))).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o2 = post(s, &admin_a, &obs(&x2, "2222-2", None)).await["id"].as_str().unwrap().to_owned();
    let ob = post(s, &admin_b, &obs(&xb, "3333-3", None)).await["id"].as_str().unwrap().to_owned();
    let all = vec![
        Res { label: "x1", project: a.clone(), ty: "Patient", id: x1.clone() },
        Res { label: "x2", project: a.clone(), ty: "Patient", id: x2.clone() },
        Res { label: "o1", project: a.clone(), ty: "Observation", id: o1.clone() },
        Res { label: "o2", project: a.clone(), ty: "Observation", id: o2.clone() },
        Res { label: "xb", project: b.clone(), ty: "Patient", id: xb.clone() },
        Res { label: "ob", project: b.clone(), ty: "Observation", id: ob.clone() },
    ];

    let actors = vec![
        Actor {
            name: "admin A",
            token: admin_a.clone(),
            visible: set(&["x1", "x2", "o1", "o2"]),
            writable: set(&["x1", "x2", "o1", "o2"]),
        },
        Actor {
            name: "GP",
            token: token(s, "gp@example.com", "gp-password", Some(&a)).await,
            visible: set(&["x1", "o1"]),
            writable: set(&["x1", "o1"]),
        },
        Actor {
            name: "patient 1",
            token: token(s, "p1@example.com", "patient-password", Some(&a)).await,
            visible: set(&["x1", "o1"]),
            writable: set(&["x1", "o1"]),
        },
        Actor {
            name: "patient 2",
            token: token(s, "p2@example.com", "patient-password", Some(&a)).await,
            visible: set(&["x2", "o2"]),
            writable: set(&["x2", "o2"]),
        },
        Actor {
            name: "client",
            token: client_token,
            visible: set(&["o1", "o2"]),
            writable: set(&[]),
        },
        Actor {
            name: "admin B",
            token: admin_b.clone(),
            visible: set(&["xb", "ob"]),
            writable: set(&["xb", "ob"]),
        },
        Actor {
            name: "patient B",
            token: token(s, "pb@example.com", "patient-password", Some(&b)).await,
            visible: set(&["xb", "ob"]),
            writable: set(&["xb", "ob"]),
        },
    ];

    for actor in &actors {
        let who = actor.name;
        let sees = |label: &str| actor.visible.contains(label);
        // Instance reads, vreads and histories.
        for r in &all {
            for path in [
                format!("{}/{}", r.ty, r.id),
                format!("{}/{}/_history/1", r.ty, r.id),
                format!("{}/{}/_history", r.ty, r.id),
            ] {
                let (status, body) = get(s, &actor.token, &path).await;
                if sees(r.label) {
                    assert_eq!(status, 200, "{who}: {path}: {body}");
                } else {
                    assert!(
                        status == 403 || status == 404,
                        "{who} reached {path}: {status} {body}"
                    );
                }
            }
        }
        // Searches, by type and across types; an unrestricted type gives all it may see.
        let mut seen = BTreeSet::new();
        for path in [
            "Patient?_count=100",
            "Observation?_count=100",
            "?_type=Patient,Observation&_count=100",
            "Observation?_include=Observation:subject&_count=100",
            "Patient?_revinclude=Observation:subject&_count=100",
            "Observation?_include=Observation:performer&_include:iterate=Patient:general-practitioner",
        ] {
            let (status, bundle) = get(s, &actor.token, path).await;
            if status == 200 {
                let got = found(&bundle, &all);
                assert!(
                    got.is_subset(&actor.visible),
                    "{who}: {path} leaked {:?}",
                    got.difference(&actor.visible).collect::<Vec<_>>()
                );
                seen.extend(got);
            } else {
                assert_eq!(status, 403, "{who}: {path}: {bundle}");
            }
        }
        assert_eq!(
            seen, actor.visible,
            "{who}: the searches together find exactly what it may see"
        );
        // Totals count only the visible.
        for ty in ["Patient", "Observation"] {
            let (status, bundle) = get(s, &actor.token, &format!("{ty}?_total=accurate")).await;
            if status == 200 {
                let want = all.iter().filter(|r| r.ty == ty && sees(r.label)).count();
                assert_eq!(bundle["total"], want, "{who}: {ty} total");
            }
        }
        // Chains, `_has`, `_id`, compartments and $everything aimed at every resource.
        for r in &all {
            let probes = match r.ty {
                "Patient" => vec![
                    format!("Observation?subject:Patient._id={}", r.id),
                    format!("Observation?patient={}", r.id),
                    format!("Patient?_id={}", r.id),
                    format!("Patient/{}/Observation", r.id),
                    format!("Patient/{}/$everything", r.id),
                    format!("Observation?subject:Patient.name=pb@example.com&subject={}", r.id),
                ],
                _ => vec![
                    format!("Patient?_has:Observation:subject:_id={}", r.id),
                    format!("Observation?_id={}", r.id),
                    format!("Observation?_id={}&_include=Observation:subject", r.id),
                ],
            };
            for path in probes {
                let (status, bundle) = get(s, &actor.token, &path).await;
                if status != 200 {
                    assert!(status == 403 || status == 404, "{who}: {path}: {status} {bundle}");
                    continue;
                }
                let got = found(&bundle, &all);
                assert!(got.is_subset(&actor.visible), "{who}: {path} leaked {got:?}");
                // A chain, `_has` or include cannot pass through an invisible resource. (A
                // value filter may still name one: the client reads Observations whose
                // subject it may not read.)
                let through = path.contains("_has") || path.contains(':') && path.contains('.');
                if !sees(r.label) && through {
                    assert!(got.is_empty(), "{who}: {path} found {got:?} through {}", r.label);
                }
            }
        }
        // History at type and system level.
        for path in ["Patient/_history", "Observation/_history", "_history"] {
            let (status, bundle) = get(s, &actor.token, path).await;
            if status == 200 {
                let got = found(&bundle, &all);
                assert!(got.is_subset(&actor.visible), "{who}: {path} leaked {got:?}");
            } else {
                assert_eq!(status, 403, "{who}: {path}");
            }
        }
        // A batch asking for everything.
        let entries: Vec<Value> = all
            .iter()
            .map(|r| json!({"request": {"method": "GET", "url": format!("{}/{}", r.ty, r.id)}}))
            .collect();
        let res = s
            .client
            .post(s.fhir_url(""))
            .bearer_auth(&actor.token)
            .json(&json!({"resourceType": "Bundle", "type": "batch", "entry": entries}))
            .send();
        let (status, out) = json_of(res.await.unwrap()).await;
        assert_eq!(status, 200, "{who}: {out}");
        for (r, e) in all.iter().zip(out["entry"].as_array().unwrap()) {
            let ok = e["response"]["status"].as_str().unwrap().starts_with("200");
            assert_eq!(ok, sees(r.label), "{who}: batch GET {}: {e}", r.label);
        }
    }

    // A project admin cannot make their project a super-admin one (nor read or set its
    // system secrets): those fields keep their stored values.
    let (status, mut proj) = get(s, &admin_a, &format!("Project/{a}")).await;
    assert_eq!(status, 200, "{proj}");
    proj["superAdmin"] = json!(true);
    proj["systemSecret"] = json!([{"name": "x", "valueString": "y"}]);
    proj["name"] = json!("Alpha clinic, renamed");
    let res = s.client.put(s.fhir_url(&format!("Project/{a}"))).bearer_auth(&admin_a).json(&proj);
    let (status, out) = json_of(res.send().await.unwrap()).await;
    assert_eq!(status, 200, "{out}");
    let stored = s.engine.read(&ctx_a, "Project", &a).await.unwrap();
    let stored: Value = serde_json::from_slice(&stored.body).unwrap();
    assert_eq!(stored["name"], "Alpha clinic, renamed");
    assert!(stored.get("superAdmin").is_none_or(|v| v == false), "{stored}");
    assert!(stored.get("systemSecret").is_none(), "{stored}");
    let (status, _) = get(s, &admin_a, "Patient?_count=1").await;
    assert_eq!(status, 200);
    // Still an ordinary admin: another project's data stays out of reach.
    let (status, _) = get(s, &admin_a, &format!("Patient/{xb}")).await;
    assert_eq!(status, 404);

    // Writes: each actor rewrites each resource as stored; only the writable change.
    for actor in &actors {
        for r in &all {
            let ctx = RequestContext::new(ProjectId::new(r.project.clone()));
            let before = s.engine.read(&ctx, r.ty, &r.id).await.unwrap();
            let mut body: Value = serde_json::from_slice(&before.body).unwrap();
            body["meta"] = json!({});
            let path = format!("{}/{}", r.ty, r.id);
            let res = s.client.put(s.fhir_url(&path)).bearer_auth(&actor.token).json(&body).send();
            let (status, out) = json_of(res.await.unwrap()).await;
            let after = s.engine.read(&ctx, r.ty, &r.id).await.unwrap();
            if actor.writable.contains(r.label) {
                assert_eq!(status, 200, "{}: PUT {}: {out}", actor.name, r.label);
                assert_eq!(after.version, before.version + 1);
            } else {
                assert_eq!(after.version, before.version, "{} changed {}", actor.name, r.label);
                // Across projects the id is free: a PUT may create the member's own copy (when
                // their policy admits it), never touching the other project's resource.
                assert!(
                    status == 403 || status == 404 || status == 201,
                    "{}: PUT {}: {status} {out}",
                    actor.name,
                    r.label
                );
            }
            // Deletes of what it may not change are refused, and change nothing.
            if !actor.writable.contains(r.label) {
                let res = s.client.delete(s.fhir_url(&path)).bearer_auth(&actor.token).send();
                let _ = res.await.unwrap();
                let again = s.engine.read(&ctx, r.ty, &r.id).await.unwrap();
                assert!(!again.deleted, "{} deleted {}", actor.name, r.label);
            }
        }
    }
}
