//! Contained resources over HTTP: `_contained=true|both|false`, `_containedType`, several
//! parameters on the same contained resource, chains through local `#id` references, updates
//! and deletes of containers, paging and counts, and what is refused.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, assert_outcome, json_of, matches, search};

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

fn r(created: &Value) -> String {
    format!("{}/{}", created["resourceType"].as_str().unwrap(), created["id"].as_str().unwrap())
}

fn contained_patient(id: &str, family: &str, gender: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}], "gender": gender})
}

/// An Observation about contained Patient `#p1`, with more contained Patients as performers.
fn observation_with(patients: Vec<Value>) -> Value {
    let performers: Vec<Value> = patients
        .iter()
        .skip(1)
        .map(|p| json!({"reference": format!("#{}", p["id"].as_str().unwrap())}))
        .collect();
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "#p1"},
        "contained": patients,
    });
    if !performers.is_empty() {
        o["performer"] = Value::Array(performers);
    }
    o
}

struct Data {
    /// Observation holding `p1` Taylor (female, its subject) and `p2` Smith (male).
    o1: Value,
    /// Observation holding `p1` Smith (female, its subject).
    o2: Value,
    /// Observation about the stored Patient Taylor.
    o3: Value,
    /// The stored Patient Taylor.
    taylor: Value,
}

async fn data(server: &TestServer) -> Data {
    let o1 = server
        .create(&observation_with(vec![
            contained_patient("p1", "Taylor", "female"),
            contained_patient("p2", "Smith", "male"),
        ]))
        .await;
    let o2 =
        server.create(&observation_with(vec![contained_patient("p1", "Smith", "female")])).await;
    let taylor = server
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Taylor"}], "gender": "male"}),
        )
        .await;
    let o3 = server
        .create(&json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": r(&taylor)},
        }))
        .await;
    Data { o1, o2, o3, taylor }
}

#[tokio::test]
async fn contained_true_both_and_false() {
    let server = TestServer::start().await;
    let d = data(&server).await;
    // The default (and `false`): stored resources only.
    assert_eq!(matches(&server, "Patient?family=Taylor").await, vec![r(&d.taylor)]);
    assert_eq!(
        matches(&server, "Patient?family=Taylor&_contained=false").await,
        vec![r(&d.taylor)]
    );
    // `true`: the containers of matching contained Patients, each once.
    assert_eq!(matches(&server, "Patient?family=Taylor&_contained=true").await, vec![r(&d.o1)]);
    let mut both = vec![r(&d.o1), r(&d.o2)];
    both.sort();
    assert_eq!(matches(&server, "Patient?family=Smith&_contained=true").await, both);
    assert_eq!(matches(&server, "Patient?_contained=true").await, both);
    // `both`: the stored Patient and the container.
    let mut expected = vec![r(&d.o1), r(&d.taylor)];
    expected.sort();
    assert_eq!(matches(&server, "Patient?family=Taylor&_contained=both").await, expected);
    // The container mode says so explicitly too.
    let path = "Patient?family=Taylor&_contained=true&_containedType=container";
    assert_eq!(matches(&server, path).await, vec![r(&d.o1)]);
    // A contained resource's id is not a stored resource's.
    assert!(matches(&server, "Patient?_id=p1").await.is_empty());
    let (status, bundle) = server.get_json("?_id=p1").await;
    assert_eq!(status, 200, "{bundle}");
    assert!(entries(&bundle).iter().all(|e| e["search"]["mode"] != "match"), "{bundle}");
    // But `_contained` finds it by its id.
    assert_eq!(matches(&server, "Patient?_id=p2&_contained=true").await, vec![r(&d.o1)]);
    // Ordinary Observation searches are not widened by what Observations contain.
    let mut all = vec![r(&d.o1), r(&d.o2), r(&d.o3)];
    all.sort();
    assert_eq!(matches(&server, "Observation?code=8867-4").await, all);
    assert!(matches(&server, "Observation?code=8867-4&_contained=true").await.is_empty());
}

#[tokio::test]
async fn contained_type_contained_returns_the_contained_resources() {
    let server = TestServer::start().await;
    let d = data(&server).await;
    let path = "Patient?family=Smith&_contained=true&_containedType=contained";
    let bundle = search(&server, path).await;
    let got = entries(&bundle);
    assert_eq!(got.len(), 2, "{bundle}");
    assert_eq!(bundle["total"], 2);
    let container_url = |o: &Value| server.fhir_url(&r(o));
    let mut urls: Vec<String> =
        got.iter().map(|e| e["fullUrl"].as_str().unwrap().to_owned()).collect();
    urls.sort();
    let mut expected =
        vec![format!("{}#p2", container_url(&d.o1)), format!("{}#p1", container_url(&d.o2))];
    expected.sort();
    assert_eq!(urls, expected);
    for e in &got {
        assert_eq!(e["search"]["mode"], "match");
        assert_eq!(e["resource"]["resourceType"], "Patient");
        assert_eq!(e["resource"]["name"][0]["family"], "Smith");
    }
    // `both` lists the stored Patient beside the contained one.
    let path = "Patient?family=Taylor&_contained=both&_containedType=contained";
    let bundle = search(&server, path).await;
    let mut urls: Vec<String> =
        entries(&bundle).iter().map(|e| e["fullUrl"].as_str().unwrap().to_owned()).collect();
    urls.sort();
    let mut expected = vec![format!("{}#p1", container_url(&d.o1)), container_url(&d.taylor)];
    expected.sort();
    assert_eq!(urls, expected, "{bundle}");
    // `_elements` shapes a contained match like any other.
    let path = "Patient?family=Taylor&_contained=true&_containedType=contained&_elements=gender";
    let bundle = search(&server, path).await;
    let resource = &entries(&bundle)[0]["resource"];
    assert_eq!(resource["gender"], "female");
    assert!(resource.get("name").is_none(), "{resource}");
}

#[tokio::test]
async fn all_parameters_apply_to_the_same_contained_resource() {
    let server = TestServer::start().await;
    let d = data(&server).await;
    // o1 holds Smith/male (p2) and Taylor/female (p1); o2 holds Smith/female.
    let q = |query: &str| format!("Patient?{query}&_contained=true");
    assert_eq!(matches(&server, &q("family=Smith&gender=male")).await, vec![r(&d.o1)]);
    assert_eq!(matches(&server, &q("family=Smith&gender=female")).await, vec![r(&d.o2)]);
    assert!(matches(&server, &q("family=Taylor&gender=male")).await.is_empty());
    assert_eq!(matches(&server, &q("family=Taylor&gender=female")).await, vec![r(&d.o1)]);
    // `_filter` too.
    let path = "Patient?_filter=family%20eq%20Taylor%20and%20gender%20eq%20male&_contained=true";
    assert!(matches(&server, path).await.is_empty());
    // `:missing` looks at the contained resource itself.
    assert!(matches(&server, &q("birthdate:missing=false")).await.is_empty());
}

#[tokio::test]
async fn chains_follow_local_references_into_contained_resources() {
    let server = TestServer::start().await;
    let d = data(&server).await;
    let mut taylors = vec![r(&d.o1), r(&d.o3)];
    taylors.sort();
    assert_eq!(matches(&server, "Observation?subject.name=Taylor").await, taylors);
    assert_eq!(matches(&server, "Observation?subject:Patient.family=Taylor").await, taylors);
    assert_eq!(matches(&server, "Observation?subject:Patient.family=Smith").await, vec![r(&d.o2)]);
    // `patient` is `subject.where(resolve() is Patient)`: `resolve()` finds contained targets.
    assert_eq!(matches(&server, "Observation?patient.name=Taylor").await, taylors);
    // The subject of o1 is p1 (female); p2 (male) is only a performer.
    assert_eq!(matches(&server, "Observation?subject.gender=male").await, vec![r(&d.o3)]);
    assert_eq!(matches(&server, "Observation?performer.gender=male").await, vec![r(&d.o1)]);
    // Both conditions of a chain with `_filter` on the same contained target.
    let path = "Observation?_filter=subject%5Bfamily%20eq%20Taylor%5D.gender%20eq%20female";
    assert_eq!(matches(&server, path).await, vec![r(&d.o1)]);
    // A `#` reference is no reference search value.
    let (status, body) = server.get_json("Observation?subject=%23p1").await;
    assert_eq!(status, 400, "{body}");
    assert_outcome(&body);
}

#[tokio::test]
async fn updates_and_deletes_replace_contained_rows() {
    let server = TestServer::start().await;
    let d = data(&server).await;
    // o1 rewritten without Taylor: its old contained rows go.
    let mut o1 = observation_with(vec![contained_patient("p1", "Jones", "other")]);
    o1["id"] = d.o1["id"].clone();
    let path = r(&d.o1);
    let res = server.send_json(Method::PUT, &path, &o1).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(matches(&server, "Patient?family=Taylor&_contained=true").await.is_empty());
    assert_eq!(matches(&server, "Patient?family=Jones&_contained=true").await, vec![r(&d.o1)]);
    assert_eq!(matches(&server, "Observation?subject.name=Taylor").await, vec![r(&d.o3)]);
    assert_eq!(matches(&server, "Observation?subject.name=Jones").await, vec![r(&d.o1)]);
    // o2 deleted: nothing of it is found.
    let res = server.fhir(Method::DELETE, &r(&d.o2)).send().await.unwrap();
    assert!(res.status().is_success());
    assert!(matches(&server, "Patient?family=Smith&_contained=true").await.is_empty());
    assert!(matches(&server, "Observation?subject.name=Smith").await.is_empty());
}

#[tokio::test]
async fn paging_and_counting_contained_matches() {
    let server = TestServer::start().await;
    let patients: Vec<Value> =
        (1..=5).map(|i| contained_patient(&format!("p{i}"), "Page", "female")).collect();
    let holder = server.create(&observation_with(patients)).await;
    let other =
        server.create(&observation_with(vec![contained_patient("p1", "Page", "male")])).await;

    // Containers: two, each once.
    let bundle = search(&server, "Patient?family=Page&_contained=true&_summary=count").await;
    assert_eq!(bundle["total"], 2, "{bundle}");
    // Contained resources: six, counted and paged two at a time.
    let base = "Patient?family=Page&_contained=true&_containedType=contained";
    let bundle = search(&server, &format!("{base}&_summary=count")).await;
    assert_eq!(bundle["total"], 6, "{bundle}");
    assert!(entries(&bundle).is_empty());
    let mut seen = Vec::new();
    let mut bundle = search(&server, &format!("{base}&_count=2&_total=accurate")).await;
    let mut pages = 1;
    loop {
        assert_eq!(bundle["total"], 6, "{bundle}");
        let page = entries(&bundle);
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|e| e["fullUrl"].as_str().unwrap().to_owned()));
        let next = bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
        let Some(next) = next else { break };
        let res = server.client.get(&next).bearer_auth(&server.token).send().await.unwrap();
        let (status, b) = json_of(res).await;
        assert_eq!(status, 200, "{b}");
        bundle = b;
        pages += 1;
        assert!(pages <= 4, "too many pages");
    }
    assert_eq!(pages, 3);
    let mut expected: Vec<String> =
        (1..=5).map(|i| format!("{}#p{i}", server.fhir_url(&r(&holder)))).collect();
    expected.push(format!("{}#p1", server.fhir_url(&r(&other))));
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
    // A second condition narrows to one contained resource.
    let bundle = search(&server, &format!("{base}&gender=male")).await;
    assert_eq!(bundle["total"], 1, "{bundle}");
}

#[tokio::test]
async fn what_contained_searches_refuse() {
    let server = TestServer::start().await;
    data(&server).await;
    for path in [
        "Patient?_contained=maybe",
        "Patient?_containedType=inside",
        "Patient?family=Smith&_contained=true&_sort=family",
        "Patient?_contained=true&_containedType=contained&_include=Patient:organization",
        "?_contained=true",
    ] {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_outcome(&body);
    }
    // Sorting is fine without `_contained`.
    search(&server, "Patient?_sort=family&_contained=false").await;
}

#[tokio::test]
async fn project_parameters_and_reindexing_apply_to_contained_resources() {
    let server = TestServer::start().await;
    let param = json!({"resourceType": "SearchParameter", "url": "http://example.org/sp/nick",
        "name": "Nick", "status": "active", "description": "A given name",
        "code": "nick", "base": ["Patient"], "type": "string",
        "expression": "Patient.name.given"});
    server.create(&param).await;
    let mut p1 = contained_patient("p1", "Taylor", "female");
    p1["name"][0]["given"] = json!(["Zed"]);
    let o = server.create(&observation_with(vec![p1])).await;
    let base = "Patient?nick=Zed&_contained=true";
    assert_eq!(matches(&server, base).await, vec![r(&o)]);
    assert_eq!(matches(&server, "Observation?subject.nick=Zed").await, vec![r(&o)]);
    // Reindexing the container replaces its contained rows (none doubled, none lost).
    let res = server.fhir(Method::POST, &format!("{}/$reindex", r(&o))).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let bundle = search(&server, &format!("{base}&_containedType=contained&_total=accurate")).await;
    assert_eq!(bundle["total"], 1, "{bundle}");
    assert_eq!(matches(&server, base).await, vec![r(&o)]);
}
