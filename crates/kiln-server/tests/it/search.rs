//! Search over HTTP: parameter types, modifiers, chains, `_has`, `_filter`, includes, sorting,
//! paging, counts, unknown parameters, POST `_search` and system-level search.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, ids, json_of, matches, search};

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// GET of an absolute URL (a Bundle link).
async fn get_url(server: &TestServer, url: &str) -> Value {
    let res = server.client.get(url).bearer_auth(&server.token).send().await.unwrap();
    let (status, bundle) = json_of(res).await;
    assert_eq!(status, 200, "{url}: {bundle}");
    bundle
}

/// The URL of a Bundle's link with this relation.
fn link(bundle: &Value, relation: &str) -> Option<String> {
    let links = bundle["link"].as_array()?;
    let link = links.iter().find(|l| l["relation"] == relation)?;
    Some(link["url"].as_str()?.to_owned())
}

fn r(ty: &str, created: &Value) -> String {
    format!("{ty}/{}", created["id"].as_str().unwrap())
}

struct People {
    alice: String,
    bob: String,
    carol: String,
}

async fn people(server: &TestServer) -> People {
    let alice = server
        .create(&json!({
            "resourceType": "Patient",
            "name": [{"family": "Müller", "given": ["Alice", "Ann"]}],
            "gender": "female",
            "birthDate": "1980-03-15",
            "identifier": [{"system": "http://hospital.example/mrn", "value": "A-1"}],
            "telecom": [{"system": "email", "value": "alice@example.com"}],
            "address": [{"city": "Zürich", "postalCode": "8000"}]
        }))
        .await;
    let bob = server
        .create(&json!({
            "resourceType": "Patient",
            "name": [{"family": "Miller", "given": ["Bob"]}],
            "gender": "male",
            "birthDate": "1975",
            "identifier": [{"system": "http://hospital.example/mrn", "value": "B-2"}],
            "active": true
        }))
        .await;
    let carol = server
        .create(&json!({
            "resourceType": "Patient",
            "name": [{"family": "Smith", "given": ["Carol"]}],
            "gender": "female",
            "birthDate": "2001-12-01",
            "identifier": [{"value": "C-3"}]
        }))
        .await;
    People { alice: r("Patient", &alice), bob: r("Patient", &bob), carol: r("Patient", &carol) }
}

#[tokio::test]
async fn value_types_prefixes_and_modifiers() {
    let server = TestServer::start().await;
    let p = people(&server).await;
    let all = sorted(vec![p.alice.clone(), p.bob.clone(), p.carol.clone()]);
    assert_eq!(matches(&server, "Patient").await, all);
    // string: starts-with, case and accent insensitive; :exact; :contains
    assert_eq!(matches(&server, "Patient?family=mul").await, vec![p.alice.clone()]);
    assert_eq!(matches(&server, "Patient?name=ALI").await, vec![p.alice.clone()]);
    assert_eq!(matches(&server, "Patient?family:exact=Müller").await, vec![p.alice.clone()]);
    assert!(matches(&server, "Patient?family:exact=muller").await.is_empty());
    assert_eq!(matches(&server, "Patient?family:contains=ill").await, vec![p.bob.clone()]);
    assert_eq!(matches(&server, "Patient?address-city=zurich").await, vec![p.alice.clone()]);
    // OR with commas, AND with repeats
    assert_eq!(
        matches(&server, "Patient?family=smith,miller").await,
        sorted(vec![p.bob.clone(), p.carol.clone()])
    );
    assert_eq!(matches(&server, "Patient?gender=female&family=smi").await, vec![p.carol.clone()]);
    // token: code, system|code, |code, system|, :not, :missing
    assert_eq!(
        matches(&server, "Patient?gender=female").await,
        sorted(vec![p.alice.clone(), p.carol.clone()])
    );
    let mrn = "http://hospital.example/mrn";
    assert_eq!(
        matches(&server, &format!("Patient?identifier={mrn}|B-2")).await,
        vec![p.bob.clone()]
    );
    assert_eq!(matches(&server, "Patient?identifier=|C-3").await, vec![p.carol.clone()]);
    assert!(matches(&server, "Patient?identifier=|B-2").await.is_empty());
    assert_eq!(
        matches(&server, &format!("Patient?identifier={mrn}|")).await,
        sorted(vec![p.alice.clone(), p.bob.clone()])
    );
    assert_eq!(matches(&server, "Patient?gender:not=female").await, vec![p.bob.clone()]);
    assert_eq!(matches(&server, "Patient?active:missing=false").await, vec![p.bob.clone()]);
    assert_eq!(
        matches(&server, "Patient?active:missing=true").await,
        sorted(vec![p.alice.clone(), p.carol.clone()])
    );
    assert_eq!(matches(&server, "Patient?email=alice@example.com").await, vec![p.alice.clone()]);
    // date prefixes, with partial dates as ranges
    assert_eq!(matches(&server, "Patient?birthdate=1980").await, vec![p.alice.clone()]);
    assert_eq!(matches(&server, "Patient?birthdate=1980-03").await, vec![p.alice.clone()]);
    assert!(matches(&server, "Patient?birthdate=1980-04").await.is_empty());
    assert_eq!(
        matches(&server, "Patient?birthdate=ge1980-01-01").await,
        sorted(vec![p.alice.clone(), p.carol.clone()])
    );
    assert_eq!(matches(&server, "Patient?birthdate=lt1979").await, vec![p.bob.clone()]);
    assert_eq!(
        matches(&server, "Patient?birthdate=ge1970&birthdate=lt1990").await,
        sorted(vec![p.alice.clone(), p.bob.clone()])
    );
    // _id
    let alice_id = p.alice.trim_start_matches("Patient/");
    assert_eq!(matches(&server, &format!("Patient?_id={alice_id}")).await, vec![p.alice.clone()]);
    // _lastUpdated is the store's instant
    assert_eq!(matches(&server, "Patient?_lastUpdated=gt2000-01-01").await, all);
    assert!(matches(&server, "Patient?_lastUpdated=lt2000-01-01").await.is_empty());
}

#[tokio::test]
async fn writes_and_deletes_keep_the_index_current() {
    let server = TestServer::start().await;
    let p = people(&server).await;
    let (status, mut bob) = server.get_json(&p.bob).await;
    assert_eq!(status, 200);
    bob["name"][0]["family"] = json!("Jones");
    let res = server.send_json(Method::PUT, &p.bob, &bob).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(matches(&server, "Patient?family=miller").await.is_empty());
    assert_eq!(matches(&server, "Patient?family=jones").await, vec![p.bob.clone()]);
    let res = server.fhir(Method::DELETE, &p.carol).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(matches(&server, "Patient?family=smith").await.is_empty());
    assert_eq!(matches(&server, "Patient").await, sorted(vec![p.alice.clone(), p.bob.clone()]));
}

async fn observation(
    server: &TestServer,
    patient: &str,
    code: &str,
    value: f64,
    date: &str,
) -> String {
    let body = format!(
        r#"{{"resourceType": "Observation", "status": "final",
            "category": [{{"coding": [{{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}}]}}],
            "code": {{"coding": [{{"system": "http://loinc.org", "code": "{code}"}}], "text": "Body weight"}},
            "subject": {{"reference": "{patient}"}},
            "effectiveDateTime": "{date}",
            "valueQuantity": {{"value": {value}, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}}}"#
    );
    let value: Value = serde_json::from_str(&body).unwrap();
    r("Observation", &server.create(&value).await)
}

#[tokio::test]
async fn references_chains_has_and_includes() {
    let server = TestServer::start().await;
    let p = people(&server).await;
    let o1 = observation(&server, &p.alice, "29463-7", 61.5, "2024-01-10").await;
    let o2 = observation(&server, &p.alice, "8302-2", 170.0, "2024-02-10").await;
    let o3 = observation(&server, &p.bob, "29463-7", 90.0, "2023-05-01").await;
    let alice_id = p.alice.trim_start_matches("Patient/");

    assert_eq!(
        matches(&server, &format!("Observation?subject={}", p.alice)).await,
        sorted(vec![o1.clone(), o2.clone()])
    );
    assert_eq!(
        matches(&server, &format!("Observation?patient={alice_id}")).await,
        sorted(vec![o1.clone(), o2.clone()])
    );
    assert_eq!(
        matches(&server, &format!("Observation?subject:Patient={alice_id}&code=29463-7")).await,
        vec![o1.clone()]
    );
    // quantity and composite
    assert_eq!(
        matches(&server, "Observation?value-quantity=gt80|http://unitsofmeasure.org|kg").await,
        sorted(vec![o2.clone(), o3.clone()])
    );
    assert_eq!(matches(&server, "Observation?value-quantity=61.5||kg").await, vec![o1.clone()]);
    // UCUM: grams find kilograms
    assert_eq!(
        matches(&server, "Observation?value-quantity=lt70000|http://unitsofmeasure.org|g").await,
        vec![o1.clone()]
    );
    assert_eq!(
        matches(&server, "Observation?value-quantity=61.5e3|http://unitsofmeasure.org|g").await,
        vec![o1.clone()]
    );
    assert_eq!(
        matches(&server, "Observation?code-value-quantity=http://loinc.org|29463-7$gt80").await,
        vec![o3.clone()]
    );
    assert!(
        matches(&server, "Observation?code-value-quantity=http://loinc.org|8302-2$lt80")
            .await
            .is_empty()
    );
    // token :text on CodeableConcept.text
    assert_eq!(matches(&server, "Observation?code:text=body").await.len(), 3);
    // chain and reverse chain
    assert_eq!(
        matches(&server, "Observation?subject:Patient.family=miller").await,
        vec![o3.clone()]
    );
    assert_eq!(
        matches(&server, "Observation?patient.identifier=http://hospital.example/mrn|A-1").await,
        sorted(vec![o1.clone(), o2.clone()])
    );
    assert_eq!(
        matches(&server, "Patient?_has:Observation:patient:code=8302-2").await,
        vec![p.alice.clone()]
    );
    assert_eq!(
        matches(&server, "Patient?_has:Observation:subject:value-quantity=gt80").await,
        sorted(vec![p.alice.clone(), p.bob.clone()])
    );
    // _include and _revinclude
    let bundle = search(&server, "Observation?code=29463-7&_include=Observation:subject").await;
    assert_eq!(sorted(ids(&bundle, "match")), sorted(vec![o1.clone(), o3.clone()]));
    assert_eq!(sorted(ids(&bundle, "include")), sorted(vec![p.alice.clone(), p.bob.clone()]));
    let bundle =
        search(&server, &format!("Patient?_id={alice_id}&_revinclude=Observation:subject")).await;
    assert_eq!(ids(&bundle, "match"), vec![p.alice.clone()]);
    assert_eq!(sorted(ids(&bundle, "include")), sorted(vec![o1.clone(), o2.clone()]));
    let bundle = search(&server, "Observation?code=8302-2&_include=*").await;
    assert_eq!(ids(&bundle, "include"), vec![p.alice.clone()]);
    // a deleted target is neither chained through nor included
    server.fhir(Method::DELETE, &p.bob).send().await.unwrap();
    assert!(matches(&server, "Observation?subject:Patient.family=miller").await.is_empty());
    let bundle = search(
        &server,
        &format!(
            "Observation?_id={}&_include=Observation:subject",
            o3.trim_start_matches("Observation/")
        ),
    )
    .await;
    assert!(ids(&bundle, "include").is_empty());
}

#[tokio::test]
async fn sorting_paging_and_counting() {
    let server = TestServer::start().await;
    let mut created = Vec::new();
    for i in 0..45 {
        let family = format!("Fam{:02}", (i * 7) % 45);
        let birth = format!("19{:02}-01-01", 50 + (i % 9));
        let p = server
            .create(&json!({"resourceType": "Patient", "name": [{"family": family}], "birthDate": birth}))
            .await;
        created.push(r("Patient", &p));
    }
    // _summary=count and _total=accurate
    let bundle = search(&server, "Patient?_summary=count").await;
    assert_eq!(bundle["total"], 45);
    assert!(bundle.get("entry").is_none(), "{bundle}");
    let bundle = search(&server, "Patient?_count=5&_total=accurate").await;
    assert_eq!(bundle["total"], 45);
    assert_eq!(ids(&bundle, "match").len(), 5);
    let bundle = search(&server, "Patient?_count=5&_total=none").await;
    assert!(bundle.get("total").is_none());

    // Following next links returns every match exactly once, in order, for several sorts;
    // following previous links back from the last page returns the same pages.
    for sort in ["", "&_sort=family", "&_sort=-birthdate,family", "&_sort=-_lastUpdated"] {
        let mut url = server.fhir_url(&format!("Patient?_count=7{sort}"));
        let mut first_self = String::new();
        let mut seen = Vec::new();
        let mut forward: Vec<(Vec<String>, Option<String>, Option<String>)> = Vec::new();
        loop {
            let bundle = get_url(&server, &url).await;
            let page: Vec<Value> = bundle["entry"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e["resource"].clone())
                .collect();
            seen.extend(page);
            let self_link = link(&bundle, "self").unwrap();
            if forward.is_empty() {
                first_self = self_link.clone();
            } else {
                assert_eq!(self_link, url, "{sort}");
            }
            assert_eq!(link(&bundle, "first").unwrap(), first_self, "{sort}");
            let previous = link(&bundle, "previous");
            assert_eq!(previous.is_none(), forward.is_empty(), "{sort}: previous on page 1 only");
            let next = link(&bundle, "next");
            forward.push((ids(&bundle, "match"), next.clone(), previous));
            match next {
                Some(next) => url = next,
                None => break,
            }
            assert!(forward.len() < 20, "paging does not end");
        }
        let pages = forward.len();
        // Back from the last page: the same pages with the same links, and the first page
        // reached that way has no previous link.
        let mut back = pages - 1;
        let mut url = forward[back].2.clone();
        while let Some(previous) = url {
            assert!(previous.starts_with(&server.base), "{previous}");
            assert!(back > 0, "{sort}: walking back does not end");
            back -= 1;
            let bundle = get_url(&server, &previous).await;
            let (want_ids, want_next, want_previous) = &forward[back];
            assert_eq!(&ids(&bundle, "match"), want_ids, "{sort}: back to page {}", back + 1);
            assert_eq!(&link(&bundle, "next"), want_next, "{sort}: back to page {}", back + 1);
            let previous = link(&bundle, "previous");
            assert_eq!(&previous, want_previous, "{sort}: back to page {}", back + 1);
            url = previous;
        }
        assert_eq!(back, 0, "{sort}: walking back stopped early");
        assert_eq!(pages, 7, "{sort}");
        let got: Vec<String> = seen.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(got.len(), 45, "{sort}");
        assert_eq!(unique.len(), 45, "{sort}: a resource was served twice");
        if sort == "&_sort=family" {
            let families: Vec<&str> =
                seen.iter().map(|r| r["name"][0]["family"].as_str().unwrap()).collect();
            let mut expected = families.clone();
            expected.sort();
            assert_eq!(families, expected);
        }
        if sort == "&_sort=-birthdate,family" {
            let keys: Vec<(String, String)> = seen
                .iter()
                .map(|r| {
                    (
                        r["birthDate"].as_str().unwrap().to_owned(),
                        r["name"][0]["family"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            for w in keys.windows(2) {
                assert!(w[0].0 > w[1].0 || (w[0].0 == w[1].0 && w[0].1 <= w[1].1), "{w:?}");
            }
        }
    }
}

#[tokio::test]
async fn previous_links_after_deletes() {
    let server = TestServer::start().await;
    let mut patients = Vec::new();
    for family in ["Aa", "Bb", "Cc", "Dd"] {
        let p =
            server.create(&json!({"resourceType": "Patient", "name": [{"family": family}]})).await;
        patients.push(r("Patient", &p));
    }
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| patients[i].clone());
    // Pages of two: [a, b], [c, d]. Once c and d are gone, the second page is empty, and its
    // previous link still leads to [a, b].
    let page1 = search(&server, "Patient?_count=2&_sort=family").await;
    assert_eq!(ids(&page1, "match"), vec![a.clone(), b.clone()]);
    assert_eq!(link(&page1, "previous"), None);
    let next = link(&page1, "next").unwrap();
    for gone in [&c, &d] {
        assert_eq!(server.fhir(Method::DELETE, gone).send().await.unwrap().status(), 200);
    }
    let empty = get_url(&server, &next).await;
    assert!(ids(&empty, "match").is_empty(), "{empty}");
    assert_eq!(link(&empty, "next"), None);
    let back = get_url(&server, &link(&empty, "previous").unwrap()).await;
    assert_eq!(ids(&back, "match"), vec![a.clone(), b.clone()]);
    assert_eq!(link(&back, "previous"), None, "the first page has no previous link");
    assert_eq!(
        ids(&get_url(&server, &link(&back, "next").unwrap()).await, "match"),
        vec![] as Vec<String>
    );

    // Pages of one: [a], [b]. Once a is gone, b's previous page is empty and has no previous
    // link; its next link leads to b again.
    let page1 = search(&server, "Patient?_count=1&_sort=family").await;
    assert_eq!(ids(&page1, "match"), vec![a.clone()]);
    let page2 = get_url(&server, &link(&page1, "next").unwrap()).await;
    assert_eq!(ids(&page2, "match"), vec![b.clone()]);
    assert_eq!(server.fhir(Method::DELETE, &a).send().await.unwrap().status(), 200);
    let before = get_url(&server, &link(&page2, "previous").unwrap()).await;
    assert!(ids(&before, "match").is_empty(), "{before}");
    assert_eq!(link(&before, "previous"), None);
    let again = get_url(&server, &link(&before, "next").unwrap()).await;
    assert_eq!(ids(&again, "match"), vec![b.clone()]);
}

#[tokio::test]
async fn unknown_and_malformed_parameters() {
    let server = TestServer::start().await;
    people(&server).await;
    let bundle = search(&server, "Patient?foo=bar&family=smith").await;
    assert_eq!(ids(&bundle, "match").len(), 1);
    let outcome = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry for the ignored parameter");
    assert_eq!(outcome["resource"]["resourceType"], "OperationOutcome");
    assert!(outcome["resource"].to_string().contains("foo"));

    let res = server
        .fhir(Method::GET, "Patient?foo=bar")
        .header("Prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("foo"));

    for bad in [
        "Patient?birthdate=xx2020",
        "Patient?birthdate=2020-13-45",
        "Patient?_count=-1",
        "Patient?_cursor=nonsense",
    ] {
        let (status, body) = server.get_json(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome");
    }
    let (status, _) = server.get_json("Nonsense?name=x").await;
    assert_eq!(status, 404);
}

/// `Type?_filter=<expr>&rest`, the expression form-encoded (spaces as `+`).
fn filtered(ty: &str, expr: &str, rest: &str) -> String {
    let expr: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    format!("{ty}?_filter={expr}{rest}")
}

#[tokio::test]
async fn filter_expressions() {
    let server = TestServer::start().await;
    let p = people(&server).await;
    let o1 = observation(&server, &p.alice, "29463-7", 61.5, "2024-01-10").await;
    let o3 = observation(&server, &p.bob, "29463-7", 90.0, "2023-05-01").await;
    let patients = |expr: &str| filtered("Patient", expr, "");
    let observations = |expr: &str| filtered("Observation", expr, "");

    // and, or, not; strings are case- and accent-insensitive.
    assert_eq!(
        matches(&server, &patients(r#"name co "smi" and birthdate ge 1990-01-01"#)).await,
        vec![p.carol.clone()]
    );
    assert_eq!(
        matches(&server, &patients(r#"family eq "MILLER" or family eq smith"#)).await,
        sorted(vec![p.bob.clone(), p.carol.clone()])
    );
    assert_eq!(matches(&server, &patients("not (gender eq female)")).await, vec![p.bob.clone()]);
    assert_eq!(
        matches(&server, &patients("family ew LLER and not (given sw bob)")).await,
        vec![p.alice.clone()]
    );
    assert_eq!(
        matches(&server, &patients("gender eq female and (birthdate lt 1990 or active pr true)"))
            .await,
        vec![p.alice.clone()]
    );
    // With ordinary parameters (ANDed), and two `_filter`s.
    assert_eq!(
        matches(&server, &filtered("Patient", "gender ne male", "&family=mu")).await,
        vec![p.alice.clone()]
    );
    assert_eq!(
        matches(&server, &filtered("Patient", "gender eq female", "&_filter=address-city pr true"))
            .await,
        vec![p.alice.clone()]
    );
    // Chains, a sub-filter, _has; references, quantities and the predefined system names.
    assert_eq!(
        matches(&server, &observations(r#"subject.family eq "miller""#)).await,
        vec![o3.clone()]
    );
    assert_eq!(
        matches(&server, &observations("subject[gender eq female].given sw ali")).await,
        vec![o1.clone()]
    );
    assert_eq!(
        matches(&server, &patients("_has:Observation:subject:value-quantity gt 80")).await,
        vec![p.bob.clone()]
    );
    assert_eq!(
        matches(&server, &observations("value-quantity lt 70000|ucum|g")).await,
        vec![o1.clone()]
    );
    assert_eq!(
        matches(&server, &observations(&format!("code eq loinc|29463-7 and subject re {}", p.bob)))
            .await,
        vec![o3.clone()]
    );
    // Paging keeps the filter.
    let bundle = search(&server, &filtered("Patient", "gender eq female", "&_count=1")).await;
    assert_eq!(ids(&bundle, "match").len(), 1);
    let next = bundle["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next");
    let next = next.unwrap()["url"].as_str().unwrap().to_owned();
    let res = server.client.get(&next).bearer_auth(&server.token).send().await.unwrap();
    let (status, page) = json_of(res).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page, "match").len(), 1);
    assert_ne!(ids(&page, "match"), ids(&bundle, "match"));

    // A malformed or unsupported expression is a 400 naming `_filter` and saying why, even
    // without `Prefer: handling=strict`: an unknown parameter inside it is not ignored.
    for (expr, why) in [
        (r#"name co "smi"#, "unterminated string"),
        ("name co smi and", "expected a parameter name"),
        ("(gender eq male", "expected ')'"),
        ("name xx smi", "unknown operator 'xx'"),
        ("foo eq bar", "unknown search parameter 'foo'"),
        ("gender gt male", "'gt' cannot be used on the token parameter 'gender'"),
        ("birthdate po 2020", "'po' is not supported"),
    ] {
        let (status, body) = server.get_json(&patients(expr)).await;
        assert_eq!(status, 400, "{expr}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome");
        let diagnostics = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
        assert!(diagnostics.contains("'_filter'"), "{expr}: {diagnostics}");
        assert!(diagnostics.contains(why), "{expr}: {diagnostics}");
    }
}

#[tokio::test]
async fn post_search_and_system_search() {
    let server = TestServer::start().await;
    let p = people(&server).await;
    let o1 = observation(&server, &p.alice, "29463-7", 61.5, "2024-01-10").await;
    let res = server
        .fhir(Method::POST, "Patient/_search?gender=female")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("family=smi")
        .send()
        .await
        .unwrap();
    let (status, bundle) = json_of(res).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(ids(&bundle, "match"), vec![p.carol.clone()]);

    let bundle = search(&server, "?_type=Patient,Observation&_count=100").await;
    assert_eq!(ids(&bundle, "match").len(), 4);
    let bundle = search(&server, "?_type=Observation").await;
    assert_eq!(ids(&bundle, "match"), vec![o1.clone()]);
    let bundle = search(&server, &format!("?_id={}", p.bob.trim_start_matches("Patient/"))).await;
    assert_eq!(ids(&bundle, "match"), vec![p.bob.clone()]);
    // links are absolute
    let link = bundle["link"][0]["url"].as_str().unwrap();
    assert!(link.starts_with("http"), "{link}");
}

#[tokio::test]
async fn compartments_and_everything() {
    let server = TestServer::start().await;
    let p = people(&server).await;
    let o1 = observation(&server, &p.alice, "29463-7", 61.5, "2024-01-10").await;
    let o2 = observation(&server, &p.alice, "8302-2", 170.0, "2024-02-10").await;
    let o3 = observation(&server, &p.bob, "29463-7", 90.0, "2023-05-01").await;
    let org = server.create(&json!({"resourceType": "Organization", "name": "Clinic"})).await;
    let org_ref = r("Organization", &org);
    let enc = server
        .create(&json!({"resourceType": "Encounter", "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                        "subject": {"reference": p.alice}, "serviceProvider": {"reference": org_ref}}))
        .await;
    let enc = r("Encounter", &enc);
    assert_eq!(
        matches(&server, &format!("{}/Observation", p.alice)).await,
        sorted(vec![o1.clone(), o2.clone()])
    );
    assert_eq!(
        matches(&server, &format!("{}/Observation?code=29463-7", p.alice)).await,
        vec![o1.clone()]
    );
    assert_eq!(matches(&server, &format!("{}/Observation", p.bob)).await, vec![o3.clone()]);
    assert_eq!(
        matches(&server, &format!("{}/*", p.alice)).await,
        sorted(vec![p.alice.clone(), o1.clone(), o2.clone(), enc.clone()])
    );
    let (status, _) = server.get_json(&format!("{}/Organization", p.alice)).await;
    assert_eq!(status, 400, "Organization is not in the Patient compartment");

    let bundle = search(&server, &format!("{}/$everything", p.alice)).await;
    assert_eq!(
        sorted(ids(&bundle, "match")),
        sorted(vec![p.alice.clone(), o1.clone(), o2.clone(), enc.clone()])
    );
    assert_eq!(ids(&bundle, "include"), vec![org_ref.clone()], "referenced resources come too");
    let bundle =
        search(&server, &format!("{}/$everything?_type=Observation&_count=1", p.alice)).await;
    assert_eq!(ids(&bundle, "match").len(), 1);
    assert!(bundle["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"));
    let (status, _) = server.get_json("Patient/nobody/$everything").await;
    assert_eq!(status, 404);
    // _history is still history
    let (status, history) = server.get_json(&format!("{}/_history", p.alice)).await;
    assert_eq!(status, 200);
    assert_eq!(history["type"], "history");
}

#[tokio::test]
async fn everything_start_and_end() {
    let server = TestServer::start().await;
    let p = people(&server).await;
    let o1 = observation(&server, &p.alice, "29463-7", 61.5, "2024-01-10").await;
    let o2 = observation(&server, &p.alice, "8302-2", 170.0, "2024-02-10").await;
    let condition = |onset: Option<&str>| {
        let mut c = json!({"resourceType": "Condition", "subject": {"reference": p.alice},
                           "code": {"text": "Asthma"}, "recordedDate": "2024-02-15"});
        if let Some(onset) = onset {
            c["onsetDateTime"] = json!(onset);
        }
        c
    };
    let old = r("Condition", &server.create(&condition(Some("2010-05-01"))).await);
    let undated = r("Condition", &server.create(&condition(None)).await);
    let enc = server
        .create(&json!({"resourceType": "Encounter", "status": "in-progress",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                        "subject": {"reference": p.alice}, "period": {"start": "2023-12-20"}}))
        .await;
    let enc = r("Encounter", &enc);
    let everything = |query: &str| format!("{}/$everything{query}", p.alice);
    let all = sorted(vec![
        p.alice.clone(),
        o1.clone(),
        o2.clone(),
        old.clone(),
        undated.clone(),
        enc.clone(),
    ]);
    assert_eq!(matches(&server, &everything("")).await, all);
    // The patient, undated resources and the still-open encounter stay; the rest by date.
    assert_eq!(
        matches(&server, &everything("?start=2024-02-01")).await,
        sorted(vec![p.alice.clone(), o2.clone(), undated.clone(), enc.clone()])
    );
    assert_eq!(
        matches(&server, &everything("?end=2024-01-31")).await,
        sorted(vec![p.alice.clone(), o1.clone(), old.clone(), undated.clone(), enc.clone()])
    );
    assert_eq!(
        matches(&server, &everything("?start=2024-01&end=2024-01")).await,
        sorted(vec![p.alice.clone(), o1.clone(), undated.clone(), enc.clone()])
    );
    assert_eq!(
        matches(&server, &everything("?end=2023-01-01")).await,
        sorted(vec![p.alice.clone(), old.clone(), undated.clone()])
    );
    assert_eq!(
        matches(&server, &everything("?_type=Observation&start=2024-02-01T00:00:00Z")).await,
        vec![o2.clone()]
    );
    // Paging keeps the window.
    let page1 = search(&server, &everything("?start=2024-02-01&_count=2")).await;
    let page2 = get_url(&server, &link(&page1, "next").unwrap()).await;
    let mut paged = ids(&page1, "match");
    paged.extend(ids(&page2, "match"));
    assert_eq!(
        sorted(paged),
        sorted(vec![p.alice.clone(), o2.clone(), undated.clone(), enc.clone()])
    );
    for bad in ["?start=soon", "?end=2024-13", "?start=2024-02-01&end=2024-01-01", "?at=2024"] {
        let (status, body) = server.get_json(&everything(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome");
    }
}

#[tokio::test]
async fn list_parameter() {
    let server = TestServer::start().await;
    let p = people(&server).await;
    let o1 = observation(&server, &p.alice, "29463-7", 61.5, "2024-01-10").await;
    let o2 = observation(&server, &p.bob, "29463-7", 90.0, "2024-01-11").await;
    let list = |items: &[&str]| {
        let entries: Vec<Value> = items.iter().map(|i| json!({"item": {"reference": i}})).collect();
        json!({"resourceType": "List", "status": "current", "mode": "working", "entry": entries})
    };
    let l1 = server.create(&list(&[&p.alice, &p.bob, &o1, "Patient/ghost"])).await;
    let l1 = l1["id"].as_str().unwrap().to_owned();
    let l2 = server.create(&list(&[&p.bob, &p.carol])).await;
    let l2 = l2["id"].as_str().unwrap().to_owned();
    assert_eq!(
        matches(&server, &format!("Patient?_list={l1}")).await,
        sorted(vec![p.alice.clone(), p.bob.clone()])
    );
    assert_eq!(matches(&server, &format!("Observation?_list={l1}")).await, vec![o1.clone()]);
    assert_eq!(
        matches(&server, &format!("?_list={l1}")).await,
        sorted(vec![p.alice.clone(), p.bob.clone(), o1.clone()])
    );
    // Comma is OR, repeating is AND, other parameters narrow it.
    assert_eq!(
        matches(&server, &format!("Patient?_list={l1},{l2}")).await,
        sorted(vec![p.alice.clone(), p.bob.clone(), p.carol.clone()])
    );
    assert_eq!(
        matches(&server, &format!("Patient?_list={l1}&_list={l2}")).await,
        vec![p.bob.clone()]
    );
    assert_eq!(
        matches(&server, &format!("Patient?_list={l1}&gender=female")).await,
        vec![p.alice.clone()]
    );
    assert_eq!(
        matches(&server, &format!("Observation?patient._list={l2}")).await,
        vec![o2.clone()]
    );
    // A List that does not exist (or no longer does) lists nothing.
    assert!(matches(&server, "Patient?_list=nonexistent").await.is_empty());
    let res = server.fhir(Method::DELETE, &format!("List/{l2}")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(matches(&server, &format!("Patient?_list={l2}")).await.is_empty());
    // Functional lists are not supported: ignored with a warning, or 400 when strict.
    let bundle = search(&server, "Patient?_list=$current-allergies&family=smith").await;
    assert_eq!(ids(&bundle, "match"), vec![p.carol.clone()]);
    let outcome =
        bundle["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome");
    assert!(outcome.unwrap()["resource"].to_string().contains("$current-allergies"));
    let res = server
        .fhir(Method::GET, "Patient?_list=$current-allergies")
        .header("Prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("_list"), "{body}");
}

#[tokio::test]
async fn text_and_content() {
    let server = TestServer::start().await;
    let xhtml = |inner: &str| format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{inner}</div>");
    let alice = server
        .create(&json!({"resourceType": "Patient", "name": [{"family": "O'Brien", "given": ["Zoë"]}],
                        "text": {"status": "generated",
                                 "div": xhtml("<p>Allergic to <b>pea</b>nuts &amp; <i>Penicillin</i></p>")},
                        "address": [{"city": "Zürich", "line": ["100% Main St_1"]}]}))
        .await;
    let alice = r("Patient", &alice);
    let bob = server
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Peanut"}],
                        "text": {"status": "generated", "div": xhtml("<p>No known allergies</p>")},
                        "gender": "male"}))
        .await;
    let bob = r("Patient", &bob);
    let carol = server
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Smith"}], "gender": "female"}),
        )
        .await;
    let carol = r("Patient", &carol);
    let obs = observation(&server, &alice, "29463-7", 61.5, "2024-01-10").await;

    // _text: the narrative without tags, ASCII case folded, a phrase; commas are OR.
    assert_eq!(matches(&server, "Patient?_text=peanuts").await, vec![alice.clone()]);
    assert_eq!(matches(&server, "Patient?_text=PEANUTS %26 penicillin").await, vec![alice.clone()]);
    assert_eq!(
        matches(&server, "Patient?_text=peanuts,known").await,
        sorted(vec![alice.clone(), bob.clone()])
    );
    assert!(matches(&server, "Patient?_text=xhtml").await.is_empty(), "tags are not text");
    assert!(matches(&server, "Patient?_text=smith").await.is_empty(), "only the narrative");
    assert!(matches(&server, "Patient?_text=peanuts penicillin").await.is_empty(), "a phrase");
    // _content: every string value (the narrative as written, tags and all), not keys, not
    // resourceType/id/meta.
    assert_eq!(matches(&server, "Patient?_content=peanut").await, vec![bob.clone()]);
    assert_eq!(
        matches(&server, "Patient?_content=penicillin,peanut").await,
        sorted(vec![alice.clone(), bob.clone()])
    );
    assert_eq!(matches(&server, "Patient?_content=<b>pea</b>").await, vec![alice.clone()]);
    assert_eq!(matches(&server, "Patient?_content=o'brien").await, vec![alice.clone()]);
    assert_eq!(matches(&server, "Patient?_content=Zürich").await, vec![alice.clone()]);
    assert!(matches(&server, "Patient?_content=zurich").await.is_empty(), "accents count");
    assert_eq!(matches(&server, "Patient?_content=100%25 main st_1").await, vec![alice.clone()]);
    assert!(matches(&server, "Patient?_content=0%25 main st_").await.len() == 1);
    assert!(matches(&server, "Patient?_content=_%25").await.is_empty(), "no wildcards");
    assert_eq!(
        matches(&server, "Patient?_content=MALE").await,
        sorted(vec![bob.clone(), carol.clone()]),
        "female holds male"
    );
    assert!(matches(&server, "Patient?_content=family").await.is_empty(), "keys are not text");
    assert!(matches(&server, "Patient?_content=patient").await.is_empty());
    let carol_id = carol.trim_start_matches("Patient/");
    assert!(matches(&server, &format!("Patient?_content={carol_id}")).await.is_empty());
    // With other parameters, repeated (AND), through a chain, at system level.
    assert_eq!(matches(&server, "Patient?_content=peanut&gender=male").await, vec![bob.clone()]);
    assert_eq!(
        matches(&server, "Patient?_content=penicillin&_text=peanuts").await,
        vec![alice.clone()]
    );
    assert!(matches(&server, "Patient?_content=peanut&_text=peanuts").await.is_empty());
    assert_eq!(
        matches(&server, "Observation?subject:Patient._text=penicillin").await,
        vec![obs.clone()]
    );
    assert_eq!(
        matches(&server, "?_type=Patient,Observation&_content=body weight").await,
        vec![obs.clone()]
    );
    // User text is a bound value.
    assert!(matches(&server, "Patient?_content=x') OR 1=1 --").await.is_empty());
    let (status, body) = server.get_json("Patient?_text:exact=x").await;
    assert_eq!(status, 400, "{body}");
}
