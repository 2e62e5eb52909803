//! Token `:in`, `:not-in`, `:below` and `:above` against the project's ValueSets and
//! CodeSystems and the value sets built into Kiln.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, json_of};

const SYS: &str = "http://example.org/fhir/CodeSystem/findings";
const OTHER: &str = "http://example.org/fhir/CodeSystem/other";

fn observation(system: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": system, "code": code}], "text": code}})
}

/// The codes of the matching Observations.
async fn codes(server: &TestServer, query: &str) -> Vec<String> {
    let (status, bundle) = server.get_json(&format!("Observation?{query}&_count=100")).await;
    assert_eq!(status, 200, "{query}: {bundle}");
    let mut out: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["code"]["text"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn setup(server: &TestServer) {
    // a > a1 > a1x (nested); a > a2 (by a `parent` property); b alone.
    server
        .create(&json!({"resourceType": "CodeSystem", "url": SYS, "status": "active",
            "content": "complete", "concept": [
                {"code": "a", "concept": [{"code": "a1", "concept": [{"code": "a1x"}]}]},
                {"code": "a2", "property": [{"code": "parent", "valueCode": "a"}]},
                {"code": "b"}]}))
        .await;
    server
        .create(&json!({"resourceType": "ValueSet", "url": "http://example.org/vs/a-family",
            "status": "active", "compose": {"include": [
                {"system": SYS, "filter": [{"property": "concept", "op": "is-a", "value": "a1"}]},
                {"system": OTHER, "concept": [{"code": "z"}]}]}}))
        .await;
    server
        .create(&json!({"resourceType": "ValueSet", "url": "http://example.org/vs/all-but-a1",
            "version": "2", "status": "active", "compose": {
                "include": [{"system": SYS}],
                "exclude": [{"system": SYS, "concept": [{"code": "a1"}]}]}}))
        .await;
    for code in ["a", "a1", "a1x", "a2", "b"] {
        server.create(&observation(SYS, code)).await;
    }
    server.create(&observation(OTHER, "z")).await;
    server.create(&observation(OTHER, "y")).await;
}

#[tokio::test]
async fn value_sets_and_hierarchies_drive_token_modifiers() {
    let server = TestServer::start().await;
    setup(&server).await;
    assert_eq!(codes(&server, "code:in=http://example.org/vs/a-family").await, ["a1", "a1x", "z"]);
    assert_eq!(
        codes(&server, "code:not-in=http://example.org/vs/a-family").await,
        ["a", "a2", "b", "y"]
    );
    assert_eq!(
        codes(&server, "code:in=http://example.org/vs/all-but-a1|2").await,
        ["a", "a1x", "a2", "b"]
    );
    assert_eq!(codes(&server, &format!("code:below={SYS}|a")).await, ["a", "a1", "a1x", "a2"]);
    assert_eq!(codes(&server, &format!("code:below={SYS}|a1")).await, ["a1", "a1x"]);
    assert_eq!(codes(&server, &format!("code:above={SYS}|a1x")).await, ["a", "a1", "a1x"]);
    // The same through _filter's terminology operators.
    let filter = |expr: String| format!("_filter={}", urlencode(&expr));
    assert_eq!(
        codes(&server, &filter("code in http://example.org/vs/a-family".into())).await,
        ["a1", "a1x", "z"]
    );
    assert_eq!(
        codes(&server, &filter("code ni http://example.org/vs/a-family".into())).await,
        ["a", "a2", "b", "y"]
    );
    assert_eq!(codes(&server, &filter(format!("code ss {SYS}|a1"))).await, ["a1", "a1x"]);
    assert_eq!(codes(&server, &filter(format!("code sb {SYS}|a1"))).await, ["a", "a1"]);
    // Alternatives are ORed; the modifiers work inside _has and chains too.
    assert_eq!(codes(&server, &format!("code:below={SYS}|a1,{SYS}|b")).await, ["a1", "a1x", "b"]);

    // Unknown value sets, systems and codes are errors that say so.
    for (query, needle) in [
        ("code:in=http://example.org/vs/nope", "not known"),
        ("code:below=http://example.org/nope|a", "not known"),
        (&format!("code:below={SYS}|nope") as &str, "not in code system"),
        ("code:below=a", "system|code"),
    ] {
        let res = server.fhir(Method::GET, &format!("Observation?{query}")).send().await.unwrap();
        let (status, body) = json_of(res).await;
        assert!(status == 400 || status == 422, "{query}: {status} {body}");
        assert!(body.to_string().contains(needle), "{query}: {body}");
    }
}

#[tokio::test]
async fn built_in_value_sets_expand_too() {
    let server = TestServer::start().await;
    let female = crate::support::patient("Female");
    server.create(&female).await;
    let mut unknown = crate::support::patient("Unknown");
    unknown["gender"] = json!("unknown");
    server.create(&unknown).await;
    let (_, bundle) = server
        .get_json("Patient?gender:in=http://hl7.org/fhir/ValueSet/administrative-gender")
        .await;
    assert_eq!(bundle["total"], 2, "{bundle}");
    // A value set of the project that includes a FHIR code system by URL.
    server
        .create(&json!({"resourceType": "ValueSet", "url": "http://example.org/vs/female",
            "status": "active", "compose": {"include": [{
                "system": "http://hl7.org/fhir/administrative-gender",
                "filter": [{"property": "concept", "op": "=", "value": "female"}]}]}}))
        .await;
    let (_, bundle) = server.get_json("Patient?gender:in=http://example.org/vs/female").await;
    assert_eq!(bundle["total"], 1, "{bundle}");
    let (_, bundle) = server.get_json("Patient?gender:not-in=http://example.org/vs/female").await;
    assert_eq!(bundle["total"], 1, "{bundle}");
    assert_eq!(bundle["entry"][0]["resource"]["gender"], "unknown");
}
