//! The terminology operations: `ValueSet/$expand` and `$validate-code`, `CodeSystem/$lookup`,
//! `$validate-code` and `$subsumes`, `ConceptMap/$translate`; GET and POST, type and instance
//! level, over a project's CodeSystem (with a hierarchy), ValueSet (an is-a filter and an
//! exclude) and ConceptMap, and over the value sets built into Kiln.

use reqwest::Method;
use serde_json::{Value, json};

use crate::admin::{invite, sign_in};
use crate::support::{TestServer, json_of};

const SYS: &str = "http://example.org/fhir/CodeSystem/body-findings";
const VS: &str = "http://example.org/fhir/ValueSet/findings";
const CM: &str = "http://example.org/fhir/ConceptMap/findings-to-snomed";
const SCT: &str = "http://snomed.info/sct";
const LOINC: &str = "http://loinc.org";

/// Ids of the fixture's CodeSystem, ValueSet and ConceptMap.
struct Fixture {
    cs: String,
    vs: String,
    cm: String,
}

async fn setup(server: &TestServer) -> Fixture {
    // finding > pain > {chest-pain, head-pain}; finding > swelling; finding > old-finding
    // (retired, by a `parent` property); procedure alone.
    let cs = server
        .create(&json!({"resourceType": "CodeSystem", "url": SYS, "version": "1.0",
            "name": "BodyFindings", "status": "active", "content": "complete", "concept": [
                {"code": "finding", "display": "Clinical finding", "concept": [
                    {"code": "pain", "display": "Pain", "concept": [
                        {"code": "chest-pain", "display": "Chest pain",
                         "designation": [{"language": "de", "value": "Brustschmerz"}]},
                        {"code": "head-pain", "display": "Headache"}]},
                    {"code": "swelling", "display": "Swelling"}]},
                {"code": "old-finding", "display": "Old finding", "property": [
                    {"code": "parent", "valueCode": "finding"},
                    {"code": "status", "valueCode": "retired"}]},
                {"code": "procedure", "display": "Procedure"}]}))
        .await;
    let vs = server
        .create(&json!({"resourceType": "ValueSet", "url": VS, "version": "3",
            "status": "active", "compose": {
                "include": [{"system": SYS,
                    "filter": [{"property": "concept", "op": "is-a", "value": "finding"}]}],
                "exclude": [{"system": SYS, "concept": [{"code": "swelling"}]}]}}))
        .await;
    let cm = server
        .create(&json!({"resourceType": "ConceptMap", "url": CM, "status": "active",
            "sourceUri": VS, "targetUri": "http://example.org/fhir/ValueSet/snomed-findings",
            "group": [{"source": SYS, "target": SCT, "element": [
                {"code": "chest-pain", "target": [
                    {"code": "29857009", "display": "Chest pain", "equivalence": "equivalent"}]},
                {"code": "head-pain", "target": [
                    {"code": "25064002", "display": "Headache", "equivalence": "equivalent"}]},
                {"code": "pain", "target": [
                    {"code": "22253000", "display": "Pain", "equivalence": "wider"}]},
                {"code": "procedure", "target": [{"equivalence": "unmatched"}]}]}]}))
        .await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    Fixture { cs: id(&cs), vs: id(&vs), cm: id(&cm) }
}

fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    server.get_json(path).await
}

/// POSTs a Parameters body made of `parts` to `path`.
async fn post(server: &TestServer, path: &str, parts: Value) -> (u16, Value) {
    let body = json!({"resourceType": "Parameters", "parameter": parts});
    json_of(server.send_json(Method::POST, path, &body).send().await.unwrap()).await
}

/// The value of the first output parameter `name` (its `value[x]`, or the part itself).
fn out<'a>(params: &'a Value, name: &str) -> &'a Value {
    let p = params["parameter"]
        .as_array()
        .unwrap_or_else(|| panic!("not Parameters: {params}"))
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {params}"));
    p.as_object().unwrap().iter().find(|(k, _)| k.starts_with("value")).map_or(p, |(_, v)| v)
}

fn all<'a>(params: &'a Value, name: &str) -> Vec<&'a Value> {
    params["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == name).collect()
}

/// The codes of an expansion, in order.
fn codes(vs: &Value) -> Vec<String> {
    vs["expansion"]["contains"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["code"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts an OperationOutcome with `status` whose text mentions `needle`.
fn assert_error(status: u16, body: &Value, expected: u16, needle: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert!(body.to_string().contains(needle), "{needle} not in {body}");
}

const ALL_FINDINGS: [&str; 5] = ["finding", "pain", "chest-pain", "head-pain", "old-finding"];

#[tokio::test]
async fn expand_at_type_and_instance_level_get_and_post() {
    let server = TestServer::start().await;
    let f = setup(&server).await;
    let check = |status: u16, vs: &Value| {
        assert_eq!(status, 200, "{vs}");
        assert_eq!(vs["resourceType"], "ValueSet");
        assert_eq!(vs["url"], VS);
        let e = &vs["expansion"];
        assert!(e["identifier"].as_str().unwrap().starts_with("urn:uuid:"), "{e}");
        assert!(e["timestamp"].as_str().unwrap().contains('T'), "{e}");
        assert_eq!(e["total"], 5, "{e}");
        assert_eq!(e["offset"], 0);
        assert_eq!(codes(vs), ALL_FINDINGS);
        let chest = &e["contains"][2];
        assert_eq!(chest["system"], SYS);
        assert_eq!(chest["version"], "1.0");
        assert_eq!(chest["display"], "Chest pain");
        assert!(chest.get("designation").is_none());
        // The retired concept is there, marked inactive.
        assert_eq!(e["contains"][4]["inactive"], true);
        assert!(e["contains"][0].get("inactive").is_none());
    };
    let (status, vs) = get(&server, &format!("ValueSet/$expand?url={}", enc(VS))).await;
    check(status, &vs);
    let (status, vs) =
        get(&server, &format!("ValueSet/$expand?url={}&valueSetVersion=3", enc(VS))).await;
    check(status, &vs);
    let (status, vs) =
        post(&server, "ValueSet/$expand", json!([{"name": "url", "valueUri": VS}])).await;
    check(status, &vs);
    let (status, vs) = get(&server, &format!("ValueSet/{}/$expand", f.vs)).await;
    check(status, &vs);
    let (status, vs) = post(&server, &format!("ValueSet/{}/$expand", f.vs), json!([])).await;
    check(status, &vs);

    // A value set sent in the body (never stored): its displays come from the code system.
    let (status, vs) = post(
        &server,
        "ValueSet/$expand",
        json!([{"name": "valueSet", "resource": {"resourceType": "ValueSet", "status": "draft",
            "compose": {"include": [{"system": SYS, "concept": [
                {"code": "procedure"}, {"code": "pain", "display": "Ache"}]}]}}}]),
    )
    .await;
    assert_eq!(status, 200, "{vs}");
    assert_eq!(codes(&vs), ["procedure", "pain"]);
    assert_eq!(vs["expansion"]["contains"][0]["display"], "Procedure");
    assert_eq!(vs["expansion"]["contains"][1]["display"], "Ache", "the value set's own display");
}

#[tokio::test]
async fn expand_pages_filters_and_shapes() {
    let server = TestServer::start().await;
    setup(&server).await;
    let url = enc(VS);
    // Paging: the total counts every code, the page holds `count` from `offset`.
    let (status, vs) = get(&server, &format!("ValueSet/$expand?url={url}&count=2&offset=1")).await;
    assert_eq!(status, 200, "{vs}");
    assert_eq!(vs["expansion"]["total"], 5);
    assert_eq!(vs["expansion"]["offset"], 1);
    assert_eq!(codes(&vs), ["pain", "chest-pain"]);
    let echoed: Vec<&Value> =
        vs["expansion"]["parameter"].as_array().unwrap().iter().map(|p| &p["name"]).collect();
    assert_eq!(echoed, ["count", "offset"]);
    let (_, vs) = post(
        &server,
        "ValueSet/$expand",
        json!([{"name": "url", "valueUri": VS}, {"name": "count", "valueInteger": 2},
               {"name": "offset", "valueInteger": 4}]),
    )
    .await;
    assert_eq!(codes(&vs), ["old-finding"]);
    let (_, vs) = get(&server, &format!("ValueSet/$expand?url={url}&offset=9")).await;
    assert_eq!(vs["expansion"]["total"], 5);
    assert!(codes(&vs).is_empty());

    // filter: words of the display or a prefix of the code, any case.
    for (filter, expected) in [
        ("pain", vec!["pain", "chest-pain"]),
        ("CHEST", vec!["chest-pain"]),
        ("head", vec!["head-pain"]),
        ("clinical find", vec!["finding"]),
        ("nothing-like-this", vec![]),
    ] {
        let (status, vs) =
            get(&server, &format!("ValueSet/$expand?url={url}&filter={}", enc(filter))).await;
        assert_eq!(status, 200, "{vs}");
        assert_eq!(codes(&vs), expected, "filter {filter}");
        assert_eq!(vs["expansion"]["total"], expected.len());
    }

    // activeOnly drops the retired concept.
    let (_, vs) = get(&server, &format!("ValueSet/$expand?url={url}&activeOnly=true")).await;
    assert_eq!(codes(&vs), ["finding", "pain", "chest-pain", "head-pain"]);
    assert_eq!(vs["expansion"]["total"], 4);

    // Designations and a display language.
    let (_, vs) = get(
        &server,
        &format!("ValueSet/$expand?url={url}&includeDesignations=true&displayLanguage=de"),
    )
    .await;
    let chest = &vs["expansion"]["contains"][2];
    assert_eq!(chest["display"], "Brustschmerz");
    assert_eq!(chest["designation"][0]["value"], "Brustschmerz");
    assert_eq!(vs["expansion"]["contains"][1]["display"], "Pain");
}

#[tokio::test]
async fn expand_built_in_value_sets_and_errors() {
    let server = TestServer::start().await;
    setup(&server).await;
    let gender = "http://hl7.org/fhir/ValueSet/administrative-gender";
    let (status, vs) = get(&server, &format!("ValueSet/$expand?url={}", enc(gender))).await;
    assert_eq!(status, 200, "{vs}");
    assert_eq!(vs["url"], gender);
    assert_eq!(vs["expansion"]["total"], 4);
    let mut found = codes(&vs);
    found.sort();
    assert_eq!(found, ["female", "male", "other", "unknown"]);
    assert_eq!(
        vs["expansion"]["contains"][0]["system"],
        "http://hl7.org/fhir/administrative-gender"
    );

    // Errors: unknown value set (404), nothing to expand (400), bad parameters (400, named).
    let (status, body) =
        get(&server, &format!("ValueSet/$expand?url={}", enc("http://example.org/nope"))).await;
    assert_error(status, &body, 404, "not known");
    let (status, body) = get(&server, "ValueSet/$expand").await;
    assert_error(status, &body, 400, "'url'");
    let (status, body) = get(&server, &format!("ValueSet/$expand?url={}&count=ten", enc(VS))).await;
    assert_error(status, &body, 400, "'count'");
    let (status, body) =
        get(&server, &format!("ValueSet/$expand?url={}&activeOnly=yes", enc(VS))).await;
    assert_error(status, &body, 400, "'activeOnly'");
    let (status, body) =
        get(&server, &format!("ValueSet/$expand?url={}&count=5000", enc(VS))).await;
    assert_error(status, &body, 400, "'count'");
    let (status, body) = get(&server, "ValueSet/no-such-id/$expand").await;
    assert_eq!(status, 404, "{body}");
    let res = server
        .fhir(Method::POST, "ValueSet/$expand")
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType": "Patient"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_error(status, &body, 400, "Parameters");
    let (status, body) =
        post(&server, "ValueSet/$expand", json!([{"name": "valueSet", "valueString": "x"}])).await;
    assert_error(status, &body, 400, "'valueSet'");
    let (status, body) = get(&server, "ValueSet/$expand?valueSet=x").await;
    assert_error(status, &body, 400, "'valueSet'");

    // More codes than one answer may list: a too-costly error, unless paged.
    let concepts: Vec<Value> = (0..1200).map(|i| json!({"code": format!("c{i:04}")})).collect();
    server
        .create(&json!({"resourceType": "CodeSystem", "url": "http://example.org/big",
            "status": "active", "content": "complete", "concept": concepts}))
        .await;
    server
        .create(&json!({"resourceType": "ValueSet", "url": "http://example.org/vs/big",
            "status": "active", "compose": {"include": [{"system": "http://example.org/big"}]}}))
        .await;
    let (status, body) = get(&server, "ValueSet/$expand?url=http://example.org/vs/big").await;
    assert_error(status, &body, 400, "too-costly");
    let (status, vs) =
        get(&server, "ValueSet/$expand?url=http://example.org/vs/big&count=10&offset=1190").await;
    assert_eq!(status, 200, "{vs}");
    assert_eq!(vs["expansion"]["total"], 1200);
    assert_eq!(codes(&vs).len(), 10);
    assert_eq!(codes(&vs)[0], "c1190");
    // A filter that narrows it below the limit needs no paging.
    let (status, vs) =
        get(&server, "ValueSet/$expand?url=http://example.org/vs/big&filter=c00").await;
    assert_eq!(status, 200, "{vs}");
    assert_eq!(vs["expansion"]["total"], 100);
}

#[tokio::test]
async fn lookup_answers_display_designations_and_hierarchy() {
    let server = TestServer::start().await;
    let f = setup(&server).await;
    let check = |status: u16, p: &Value| {
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["resourceType"], "Parameters");
        assert_eq!(out(p, "name"), "BodyFindings");
        assert_eq!(out(p, "version"), "1.0");
        assert_eq!(out(p, "display"), "Pain");
        let props: Vec<(String, String)> = all(p, "property")
            .iter()
            .map(|prop| {
                let code = prop["part"][0]["valueCode"].as_str().unwrap().to_owned();
                let value = prop["part"][1]["valueCode"].as_str().unwrap().to_owned();
                (code, value)
            })
            .collect();
        assert!(props.contains(&("parent".into(), "finding".into())), "{props:?}");
        assert!(props.contains(&("child".into(), "chest-pain".into())), "{props:?}");
        assert!(props.contains(&("child".into(), "head-pain".into())), "{props:?}");
    };
    let (status, p) =
        get(&server, &format!("CodeSystem/$lookup?system={}&code=pain", enc(SYS))).await;
    check(status, &p);
    let (status, p) = post(
        &server,
        "CodeSystem/$lookup",
        json!([{"name": "coding", "valueCoding": {"system": SYS, "code": "pain"}}]),
    )
    .await;
    check(status, &p);
    let (status, p) = get(&server, &format!("CodeSystem/{}/$lookup?code=pain", f.cs)).await;
    check(status, &p);
    let (status, p) = post(
        &server,
        &format!("CodeSystem/{}/$lookup", f.cs),
        json!([{"name": "code", "valueCode": "pain"}]),
    )
    .await;
    check(status, &p);

    // Designations; `property` picks the properties.
    let (_, p) =
        get(&server, &format!("CodeSystem/$lookup?system={}&code=chest-pain", enc(SYS))).await;
    let designation = all(&p, "designation")[0];
    assert_eq!(designation["part"][0]["valueCode"], "de");
    assert!(designation.to_string().contains("Brustschmerz"));
    let (_, p) = get(
        &server,
        &format!("CodeSystem/$lookup?system={}&code=old-finding&property=status", enc(SYS)),
    )
    .await;
    let props = all(&p, "property");
    assert_eq!(props.len(), 1, "{p}");
    assert_eq!(props[0]["part"][1]["valueCode"], "retired");

    // A FHIR code system built into Kiln, with its displays.
    let (status, p) = get(
        &server,
        "CodeSystem/$lookup?system=http://hl7.org/fhir/administrative-gender&code=male",
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(out(&p, "display"), "Male");

    // LOINC is not shipped: a lenient answer saying so.
    let (status, p) =
        get(&server, &format!("CodeSystem/$lookup?system={}&code=1234-5", enc(LOINC))).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(out(&p, "name"), "LOINC");
    assert!(out(&p, "message").as_str().unwrap().contains("not loaded"), "{p}");

    // Errors.
    let (status, body) =
        get(&server, &format!("CodeSystem/$lookup?system={}&code=nope", enc(SYS))).await;
    assert_error(status, &body, 404, "'nope'");
    let (status, body) = get(&server, "CodeSystem/$lookup?code=pain").await;
    assert_error(status, &body, 400, "'system'");
    let (status, body) = get(&server, &format!("CodeSystem/$lookup?system={}", enc(SYS))).await;
    assert_error(status, &body, 400, "'code'");
    let (status, body) =
        get(&server, "CodeSystem/$lookup?system=http://example.org/unknown&code=x").await;
    assert_error(status, &body, 404, "not known");
    let (status, body) =
        post(&server, "CodeSystem/$lookup", json!([{"name": "coding", "valueString": "x"}])).await;
    assert_error(status, &body, 400, "'coding'");
}

#[tokio::test]
async fn validate_code_against_value_sets_and_code_systems() {
    let server = TestServer::start().await;
    let f = setup(&server).await;
    let (sys, vs) = (enc(SYS), enc(VS));
    let result = |p: &Value| out(p, "result").as_bool().unwrap_or_else(|| panic!("{p}"));

    // ValueSet, GET at type level.
    let (status, p) =
        get(&server, &format!("ValueSet/$validate-code?url={vs}&system={sys}&code=chest-pain"))
            .await;
    assert_eq!(status, 200, "{p}");
    assert!(result(&p));
    assert_eq!(out(&p, "display"), "Chest pain");
    // A wrong display: valid, with a message.
    let (_, p) = get(
        &server,
        &format!(
            "ValueSet/$validate-code?url={vs}&system={sys}&code=chest-pain&display=Leg%20pain"
        ),
    )
    .await;
    assert!(result(&p));
    assert!(out(&p, "message").as_str().unwrap().contains("'Leg pain'"), "{p}");
    // The right display in another case is no complaint.
    let (_, p) = get(
        &server,
        &format!(
            "ValueSet/$validate-code?url={vs}&system={sys}&code=chest-pain&display=chest%20PAIN"
        ),
    )
    .await;
    assert!(result(&p));
    assert!(!p.to_string().contains("message"), "{p}");
    // Excluded, outside the filter, unknown, or of another system: not in the value set.
    for (system, code) in [(SYS, "swelling"), (SYS, "procedure"), (SYS, "nope"), (SCT, "pain")] {
        let (status, p) = get(
            &server,
            &format!("ValueSet/$validate-code?url={vs}&system={}&code={code}", enc(system)),
        )
        .await;
        assert_eq!(status, 200, "{p}");
        assert!(!result(&p), "{system}|{code}: {p}");
        assert!(out(&p, "message").as_str().unwrap().contains("not in value set"), "{p}");
    }
    // POST with a CodeableConcept: one valid coding is enough.
    let (_, p) = post(
        &server,
        "ValueSet/$validate-code",
        json!([{"name": "url", "valueUri": VS},
               {"name": "codeableConcept", "valueCodeableConcept": {"coding": [
                   {"system": SYS, "code": "swelling"}, {"system": SYS, "code": "head-pain"}]}}]),
    )
    .await;
    assert!(result(&p), "{p}");
    assert_eq!(out(&p, "display"), "Headache");
    // Instance level, GET and POST (with a Coding).
    let (_, p) =
        get(&server, &format!("ValueSet/{}/$validate-code?system={sys}&code=pain", f.vs)).await;
    assert!(result(&p), "{p}");
    let (_, p) = post(
        &server,
        &format!("ValueSet/{}/$validate-code", f.vs),
        json!([{"name": "coding", "valueCoding": {"system": SYS, "code": "procedure"}}]),
    )
    .await;
    assert!(!result(&p), "{p}");
    // A value set in the body; a built-in one.
    let (_, p) = post(
        &server,
        "ValueSet/$validate-code",
        json!([{"name": "valueSet", "resource": {"resourceType": "ValueSet", "status": "draft",
                  "compose": {"include": [{"system": SYS, "concept": [{"code": "procedure"}]}]}}},
               {"name": "code", "valueCode": "procedure"}, {"name": "system", "valueUri": SYS}]),
    )
    .await;
    assert!(result(&p), "{p}");
    let gender = enc("http://hl7.org/fhir/ValueSet/administrative-gender");
    let (_, p) = get(
        &server,
        &format!("ValueSet/$validate-code?url={gender}&system=http://hl7.org/fhir/administrative-gender&code=female"),
    )
    .await;
    assert!(result(&p), "{p}");
    let (_, p) = get(&server, &format!("ValueSet/$validate-code?url={gender}&code=woman")).await;
    assert!(!result(&p), "{p}");

    // CodeSystem, type and instance level.
    let (status, p) = get(&server, &format!("CodeSystem/$validate-code?url={sys}&code=pain")).await;
    assert_eq!(status, 200, "{p}");
    assert!(result(&p));
    assert_eq!(out(&p, "display"), "Pain");
    let (_, p) = get(&server, &format!("CodeSystem/$validate-code?url={sys}&code=nope")).await;
    assert!(!result(&p));
    assert!(out(&p, "message").as_str().unwrap().contains("'nope'"), "{p}");
    let (_, p) =
        get(&server, &format!("CodeSystem/$validate-code?url={sys}&code=pain&display=Ache")).await;
    assert!(result(&p));
    assert!(out(&p, "message").as_str().unwrap().contains("'Ache'"), "{p}");
    let (_, p) = get(&server, &format!("CodeSystem/{}/$validate-code?code=swelling", f.cs)).await;
    assert!(result(&p), "{p}");
    let (_, p) = post(
        &server,
        "CodeSystem/$validate-code",
        json!([{"name": "coding", "valueCoding": {"system": SYS, "code": "head-pain"}}]),
    )
    .await;
    assert!(result(&p), "{p}");
    let (_, p) = post(
        &server,
        &format!("CodeSystem/{}/$validate-code", f.cs),
        json!([{"name": "code", "valueCode": "nope"}]),
    )
    .await;
    assert!(!result(&p), "{p}");

    // Errors.
    let (status, body) = get(&server, &format!("ValueSet/$validate-code?url={vs}")).await;
    assert_error(status, &body, 400, "'code'");
    let (status, body) =
        get(&server, "ValueSet/$validate-code?url=http://example.org/nope&code=a").await;
    assert_error(status, &body, 404, "not known");
    let (status, body) = get(&server, "CodeSystem/$validate-code?code=a").await;
    assert_error(status, &body, 400, "'url'");
    let (status, body) =
        get(&server, "CodeSystem/$validate-code?url=http://example.org/nope&code=a").await;
    assert_error(status, &body, 404, "not known");
}

#[tokio::test]
async fn codes_of_systems_not_loaded_are_answered_leniently() {
    let server = TestServer::start().await;
    setup(&server).await;
    let loinc = enc(LOINC);
    let (status, p) =
        get(&server, &format!("CodeSystem/$validate-code?url={loinc}&code=1234-5")).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(out(&p, "result"), true);
    assert!(out(&p, "message").as_str().unwrap().contains("not loaded"), "{p}");
    let (status, p) = post(
        &server,
        "CodeSystem/$validate-code",
        json!([{"name": "coding", "valueCoding": {"system": SCT, "code": "22253000"}}]),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(out(&p, "result"), true);

    // A value set including all of LOINC: its codes cannot be checked, others can.
    server
        .create(&json!({"resourceType": "ValueSet", "url": "http://example.org/vs/labs",
            "status": "active", "compose": {"include": [{"system": LOINC},
                {"system": SYS, "concept": [{"code": "pain"}]}]}}))
        .await;
    let (status, p) = get(
        &server,
        &format!(
            "ValueSet/$validate-code?url=http://example.org/vs/labs&system={loinc}&code=1234-5"
        ),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(out(&p, "result"), true);
    assert!(out(&p, "message").as_str().unwrap().contains("not loaded"), "{p}");
    let (_, p) = get(
        &server,
        &format!(
            "ValueSet/$validate-code?url=http://example.org/vs/labs&system={}&code=pain",
            enc(SYS)
        ),
    )
    .await;
    assert_eq!(out(&p, "result"), true);
    let (_, p) = get(
        &server,
        &format!(
            "ValueSet/$validate-code?url=http://example.org/vs/labs&system={}&code=head-pain",
            enc(SYS)
        ),
    )
    .await;
    assert_eq!(out(&p, "result"), false, "{p}");
    // Expanding it is impossible here: a 4xx naming the system, never a 500.
    let (status, body) = get(&server, "ValueSet/$expand?url=http://example.org/vs/labs").await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(body.to_string().contains(LOINC), "{body}");
    // $subsumes cannot answer for LOINC either.
    let (status, body) =
        get(&server, &format!("CodeSystem/$subsumes?system={loinc}&codeA=1&codeB=2")).await;
    assert_error(status, &body, 400, "not loaded");
}

#[tokio::test]
async fn subsumes_reads_the_hierarchy() {
    let server = TestServer::start().await;
    let f = setup(&server).await;
    let sys = enc(SYS);
    for (a, b, outcome) in [
        ("finding", "chest-pain", "subsumes"),
        ("chest-pain", "finding", "subsumed-by"),
        ("pain", "pain", "equivalent"),
        ("chest-pain", "procedure", "not-subsumed"),
        ("head-pain", "chest-pain", "not-subsumed"),
        ("finding", "old-finding", "subsumes"),
    ] {
        let (status, p) =
            get(&server, &format!("CodeSystem/$subsumes?system={sys}&codeA={a}&codeB={b}")).await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(out(&p, "outcome"), outcome, "{a} vs {b}");
    }
    let (_, p) = post(
        &server,
        "CodeSystem/$subsumes",
        json!([{"name": "codingA", "valueCoding": {"system": SYS, "code": "chest-pain"}},
               {"name": "codingB", "valueCoding": {"system": SYS, "code": "pain"}}]),
    )
    .await;
    assert_eq!(out(&p, "outcome"), "subsumed-by", "{p}");
    let (_, p) =
        get(&server, &format!("CodeSystem/{}/$subsumes?codeA=pain&codeB=head-pain", f.cs)).await;
    assert_eq!(out(&p, "outcome"), "subsumes", "{p}");
    let (_, p) = post(
        &server,
        &format!("CodeSystem/{}/$subsumes", f.cs),
        json!([{"name": "codeA", "valueCode": "procedure"}, {"name": "codeB", "valueCode": "procedure"}]),
    )
    .await;
    assert_eq!(out(&p, "outcome"), "equivalent", "{p}");

    let (status, body) =
        get(&server, &format!("CodeSystem/$subsumes?system={sys}&codeA=pain&codeB=nope")).await;
    assert_error(status, &body, 404, "'nope'");
    let (status, body) =
        get(&server, &format!("CodeSystem/$subsumes?system={sys}&codeA=pain")).await;
    assert_error(status, &body, 400, "'codeB'");
    let (status, body) = post(
        &server,
        "CodeSystem/$subsumes",
        json!([{"name": "codingA", "valueCoding": {"system": SYS, "code": "pain"}},
               {"name": "codingB", "valueCoding": {"system": SCT, "code": "pain"}}]),
    )
    .await;
    assert_error(status, &body, 400, "different systems");
}

#[tokio::test]
async fn translate_forward_and_reverse() {
    let server = TestServer::start().await;
    let f = setup(&server).await;
    let (sys, cm, sct) = (enc(SYS), enc(CM), enc(SCT));
    let first_match = |p: &Value| -> (String, String, String) {
        let m = all(p, "match")[0];
        let part =
            |name: &str| m["part"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap();
        let concept = &part("concept")["valueCoding"];
        assert_eq!(part("source")["valueUri"], CM);
        (
            part("equivalence")["valueCode"].as_str().unwrap().to_owned(),
            concept["system"].as_str().unwrap().to_owned(),
            concept["code"].as_str().unwrap().to_owned(),
        )
    };
    let (status, p) =
        get(&server, &format!("ConceptMap/$translate?url={cm}&system={sys}&code=chest-pain")).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(out(&p, "result"), true);
    assert_eq!(first_match(&p), ("equivalent".into(), SCT.into(), "29857009".into()));
    assert_eq!(all(&p, "match")[0]["part"][1]["valueCoding"]["display"], "Chest pain");
    // Without a map named: the project's maps that have the code.
    let (_, p) = post(
        &server,
        "ConceptMap/$translate",
        json!([{"name": "coding", "valueCoding": {"system": SYS, "code": "pain"}}]),
    )
    .await;
    assert_eq!(out(&p, "result"), true, "{p}");
    assert_eq!(first_match(&p), ("wider".into(), SCT.into(), "22253000".into()));
    // source/target/targetsystem narrow the maps.
    let (_, p) =
        get(&server, &format!("ConceptMap/$translate?system={sys}&code=pain&source={}", enc(VS)))
            .await;
    assert_eq!(out(&p, "result"), true, "{p}");
    let (_, p) = get(
        &server,
        &format!("ConceptMap/$translate?system={sys}&code=pain&target=http://example.org/other"),
    )
    .await;
    assert_eq!(out(&p, "result"), false, "{p}");
    let (_, p) = get(
        &server,
        &format!(
            "ConceptMap/$translate?url={cm}&system={sys}&code=pain&targetsystem={}",
            enc(LOINC)
        ),
    )
    .await;
    assert_eq!(out(&p, "result"), false, "{p}");
    // Reverse: from the target system back to the source.
    let (_, p) = get(
        &server,
        &format!("ConceptMap/$translate?url={cm}&system={sct}&code=25064002&reverse=true"),
    )
    .await;
    assert_eq!(out(&p, "result"), true, "{p}");
    assert_eq!(first_match(&p), ("equivalent".into(), SYS.into(), "head-pain".into()));
    let (_, p) = post(
        &server,
        "ConceptMap/$translate",
        json!([{"name": "system", "valueUri": SCT}, {"name": "code", "valueCode": "29857009"},
               {"name": "reverse", "valueBoolean": true}]),
    )
    .await;
    assert_eq!(first_match(&p), ("equivalent".into(), SYS.into(), "chest-pain".into()));
    // Instance level, GET and POST (a CodeableConcept).
    let (_, p) =
        get(&server, &format!("ConceptMap/{}/$translate?system={sys}&code=head-pain", f.cm)).await;
    assert_eq!(first_match(&p).2, "25064002", "{p}");
    let (_, p) = post(
        &server,
        &format!("ConceptMap/{}/$translate", f.cm),
        json!([{"name": "codeableConcept", "valueCodeableConcept": {"coding": [
            {"system": SYS, "code": "chest-pain"}]}}]),
    )
    .await;
    assert_eq!(first_match(&p).2, "29857009", "{p}");
    // A map sent in the body.
    let (_, p) = post(
        &server,
        "ConceptMap/$translate",
        json!([{"name": "conceptMap", "resource": {"resourceType": "ConceptMap", "status": "draft",
                  "group": [{"source": "http://a", "target": "http://b", "element": [
                      {"code": "x", "target": [{"code": "y", "equivalence": "equal"}]}]}]}},
               {"name": "system", "valueUri": "http://a"}, {"name": "code", "valueCode": "x"}]),
    )
    .await;
    assert_eq!(out(&p, "result"), true, "{p}");

    // No mapping: `unmatched` is reported but is no result; unknown codes have no match.
    let (_, p) =
        get(&server, &format!("ConceptMap/$translate?url={cm}&system={sys}&code=procedure")).await;
    assert_eq!(out(&p, "result"), false, "{p}");
    assert_eq!(first_match_equivalence(&p), "unmatched");
    let (_, p) =
        get(&server, &format!("ConceptMap/$translate?url={cm}&system={sys}&code=nope")).await;
    assert_eq!(out(&p, "result"), false, "{p}");
    assert!(out(&p, "message").as_str().unwrap().contains("nope"), "{p}");
    assert!(all(&p, "match").is_empty());

    let (status, body) = get(
        &server,
        &format!("ConceptMap/$translate?url=http://example.org/nope&system={sys}&code=pain"),
    )
    .await;
    assert_error(status, &body, 404, "not known");
    let (status, body) = get(&server, &format!("ConceptMap/$translate?url={cm}")).await;
    assert_error(status, &body, 400, "'code'");
    let (status, body) =
        get(&server, &format!("ConceptMap/$translate?url={cm}&code=pain&reverse=maybe")).await;
    assert_error(status, &body, 400, "'reverse'");
}

/// The built-in value sets and code systems carry displays (FHIR R4's and US Core's).
#[tokio::test]
async fn built_in_terminology_has_displays() {
    let server = TestServer::start().await;
    let gender = enc("http://hl7.org/fhir/ValueSet/administrative-gender");
    let gender_cs = enc("http://hl7.org/fhir/administrative-gender");
    let display_of = |vs: &Value, code: &str| -> Value {
        let contains = vs["expansion"]["contains"].as_array().unwrap();
        let item = contains.iter().find(|c| c["code"] == code).unwrap_or_else(|| panic!("{vs}"));
        item["display"].clone()
    };
    let (status, vs) = get(&server, &format!("ValueSet/$expand?url={gender}")).await;
    assert_eq!(status, 200, "{vs}");
    assert_eq!(display_of(&vs, "male"), "Male");
    assert_eq!(display_of(&vs, "unknown"), "Unknown");
    // The text filter sees the displays; a language without designations keeps them.
    let (_, vs) = get(&server, &format!("ValueSet/$expand?url={gender}&filter=fem")).await;
    assert_eq!(codes(&vs), ["female"]);
    let (_, vs) = get(
        &server,
        &format!("ValueSet/$expand?url={gender}&displayLanguage=de&includeDesignations=true"),
    )
    .await;
    assert_eq!(display_of(&vs, "female"), "Female");
    assert!(vs["expansion"]["contains"][0].get("designation").is_none(), "{vs}");

    // $validate-code: the display out-parameter, and a wrong display reported.
    let (_, p) = get(
        &server,
        &format!("ValueSet/$validate-code?url={gender}&system={gender_cs}&code=male&display=Man"),
    )
    .await;
    assert_eq!(out(&p, "result"), true, "{p}");
    assert_eq!(out(&p, "display"), "Male", "{p}");
    let message = out(&p, "message").as_str().unwrap();
    assert!(message.contains("'Man'") && message.contains("'Male'"), "{p}");
    let (_, p) = get(
        &server,
        &format!("ValueSet/$validate-code?url={gender}&system={gender_cs}&code=male&display=male"),
    )
    .await;
    assert_eq!(out(&p, "result"), true, "{p}");
    assert!(all(&p, "message").is_empty(), "{p}");
    let (_, p) = get(
        &server,
        &format!("CodeSystem/$validate-code?url={gender_cs}&code=female&display=Woman"),
    )
    .await;
    assert_eq!(out(&p, "display"), "Female", "{p}");
    assert!(out(&p, "message").as_str().unwrap().contains("'Woman'"), "{p}");
    // $lookup of a built-in code system.
    let (status, p) =
        get(&server, &format!("CodeSystem/$lookup?system={gender_cs}&code=other")).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(out(&p, "display"), "Other", "{p}");

    // A US Core value set: displays from its compose (v3 NullFlavor) and from US Core's own
    // code system; a wrong display is reported there too.
    let orientation = enc("http://hl7.org/fhir/us/core/ValueSet/us-core-sexual-orientation");
    let (status, vs) = get(&server, &format!("ValueSet/$expand?url={orientation}")).await;
    assert_eq!(status, 200, "{vs}");
    assert_eq!(display_of(&vs, "ASKU"), "Asked but no answer");
    assert_eq!(vs["expansion"]["total"], 6, "{vs}");
    let (_, p) = post(
        &server,
        "ValueSet/$validate-code",
        json!([{"name": "url", "valueUri": "http://hl7.org/fhir/us/core/ValueSet/us-core-sexual-orientation"},
               {"name": "coding", "valueCoding": {
                   "system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
                   "code": "UNK", "display": "Not known at all"}}]),
    )
    .await;
    assert_eq!(out(&p, "result"), true, "{p}");
    assert_eq!(out(&p, "display"), "Unknown", "{p}");
    assert!(out(&p, "message").as_str().unwrap().contains("Not known at all"), "{p}");
    let category = enc("http://hl7.org/fhir/us/core/ValueSet/us-core-documentreference-category");
    let (_, vs) = get(&server, &format!("ValueSet/$expand?url={category}")).await;
    assert_eq!(display_of(&vs, "clinical-note"), "Clinical Note", "{vs}");
}

/// FHIR's `is-a` code systems (v3 ActCode here) answer `$subsumes` and `:below` searches
/// from the hierarchy built into Kiln.
#[tokio::test]
async fn built_in_hierarchies_answer_subsumes_and_below() {
    let server = TestServer::start().await;
    let act = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
    for (a, b, outcome) in [
        ("_ActEncounterCode", "AMB", "subsumes"),
        ("ACUTE", "IMP", "subsumed-by"),
        ("AMB", "IMP", "not-subsumed"),
        ("EMER", "EMER", "equivalent"),
    ] {
        let (status, p) =
            get(&server, &format!("CodeSystem/$subsumes?system={}&codeA={a}&codeB={b}", enc(act)))
                .await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(out(&p, "outcome"), outcome, "{a} vs {b}");
    }
    let (_, p) = get(&server, &format!("CodeSystem/$lookup?system={}&code=ACUTE", enc(act))).await;
    let parents: Vec<&Value> =
        all(&p, "property").into_iter().filter(|x| x["part"][0]["valueCode"] == "parent").collect();
    assert_eq!(parents.len(), 1, "{p}");
    assert_eq!(parents[0]["part"][1]["valueCode"], "IMP", "{p}");
    for code in ["ACUTE", "AMB"] {
        server
            .create(&json!({"resourceType": "Encounter", "status": "finished",
                "class": {"system": act, "code": code}}))
            .await;
    }
    let bundle = crate::support::search(
        &server,
        &format!("Encounter?class:below={}", enc(&format!("{act}|IMP"))),
    )
    .await;
    assert_eq!(bundle["entry"].as_array().map_or(0, Vec::len), 1, "{bundle}");
    assert_eq!(bundle["entry"][0]["resource"]["class"]["code"], "ACUTE");
}

const A: &str = "http://example.org/a";
const B: &str = "http://example.org/b";
const ROUTE: &str = "http://example.org/element/route";
const FORM: &str = "http://example.org/element/form";

/// A ConceptMap from `A` to `B` mapping `x` to `y` and `n` to nothing (`unmatched`), with
/// the given `group.unmapped`.
fn map_with_unmapped(url: &str, unmapped: Value) -> Value {
    json!({"resourceType": "ConceptMap", "url": url, "status": "active",
        "group": [{"source": A, "target": B, "unmapped": unmapped, "element": [
            {"code": "x", "target": [{"code": "y", "equivalence": "equivalent"}]},
            {"code": "n", "target": [{"equivalence": "unmatched"}]}]}]})
}

/// The (equivalence, code, display) of every match.
fn matches(p: &Value) -> Vec<(String, String, Option<String>)> {
    all(p, "match")
        .into_iter()
        .map(|m| {
            let parts = m["part"].as_array().unwrap();
            let get = |name: &str| parts.iter().find(|x| x["name"] == name).unwrap();
            let coding = &get("concept")["valueCoding"];
            (
                get("equivalence")["valueCode"].as_str().unwrap().to_owned(),
                coding["code"].as_str().unwrap_or_default().to_owned(),
                coding["display"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn translate_applies_group_unmapped() {
    let server = TestServer::start().await;
    let (provided, fixed, other, loop_a, loop_b) = (
        "http://example.org/cm/provided",
        "http://example.org/cm/fixed",
        "http://example.org/cm/other",
        "http://example.org/cm/loop-a",
        "http://example.org/cm/loop-b",
    );
    server.create(&map_with_unmapped(provided, json!({"mode": "provided"}))).await;
    server
        .create(&map_with_unmapped(
            fixed,
            json!({"mode": "fixed", "code": "unk", "display": "Unknown"}),
        ))
        .await;
    let mut chained = map_with_unmapped(other, json!({"mode": "other-map", "url": fixed}));
    chained["group"][0]["element"][0]["code"] = json!("z");
    server.create(&chained).await;
    server.create(&map_with_unmapped(loop_a, json!({"mode": "other-map", "url": loop_b}))).await;
    server.create(&map_with_unmapped(loop_b, json!({"mode": "other-map", "url": loop_a}))).await;
    let translate = |url: &str, code: &str| {
        format!("ConceptMap/$translate?url={}&system={}&code={code}", enc(url), enc(A))
    };

    // A mapped code is translated as before, whatever the default.
    let (_, p) = get(&server, &translate(provided, "x")).await;
    assert_eq!(matches(&p), [("equivalent".into(), "y".into(), None)], "{p}");
    // provided: the code itself, in the target system.
    let (_, p) = get(&server, &translate(provided, "q")).await;
    assert_eq!(out(&p, "result"), true, "{p}");
    assert_eq!(matches(&p), [("relatedto".into(), "q".into(), None)], "{p}");
    assert_eq!(all(&p, "match")[0]["part"][1]["valueCoding"]["system"], B);
    // fixed: the map's code.
    let (_, p) = get(&server, &translate(fixed, "q")).await;
    assert_eq!(matches(&p), [("relatedto".into(), "unk".into(), Some("Unknown".into()))]);
    // An `unmatched` element is not unmapped: no default.
    let (_, p) = get(&server, &translate(fixed, "n")).await;
    assert_eq!(out(&p, "result"), false, "{p}");
    assert_eq!(matches(&p), [("unmatched".into(), String::new(), None)], "{p}");
    // other-map: the named map answers (its element, or its own default).
    let (_, p) = get(&server, &translate(other, "x")).await;
    assert_eq!(matches(&p), [("equivalent".into(), "y".into(), None)], "{p}");
    let (_, p) = get(&server, &translate(other, "q")).await;
    assert_eq!(matches(&p), [("relatedto".into(), "unk".into(), Some("Unknown".into()))]);
    // Two maps naming each other: the chain is bounded.
    let (status, body) = get(&server, &translate(loop_a, "q")).await;
    assert_error(status, &body, 422, "group.unmapped");
    // Reversed, no default applies.
    let (_, p) = get(
        &server,
        &format!(
            "ConceptMap/$translate?url={}&system={}&code=q&reverse=true",
            enc(provided),
            enc(B)
        ),
    )
    .await;
    assert_eq!(out(&p, "result"), false, "{p}");
}

#[tokio::test]
async fn translate_checks_depends_on_and_returns_products() {
    let server = TestServer::start().await;
    let url = "http://example.org/cm/dependent";
    server
        .create(&json!({"resourceType": "ConceptMap", "url": url, "status": "active",
            "group": [{"source": A, "target": B, "element": [{"code": "drug", "target": [
                {"code": "drug-oral", "equivalence": "equivalent",
                 "dependsOn": [{"property": ROUTE, "system": "http://example.org/route",
                                "value": "oral"}],
                 "product": [{"property": FORM, "system": "http://example.org/form",
                              "value": "tablet", "display": "Tablet"}]},
                {"code": "drug-any", "equivalence": "wider"}]}]}]}))
        .await;
    let ask = |dependency: Option<Value>| {
        let mut parts = vec![
            json!({"name": "url", "valueUri": url}),
            json!({"name": "coding", "valueCoding": {"system": A, "code": "drug"}}),
        ];
        parts.extend(dependency);
        Value::Array(parts)
    };
    let dependency = |element: &str, system: &str, code: &str| {
        json!({"name": "dependency", "part": [
            {"name": "element", "valueUri": element},
            {"name": "concept", "valueCodeableConcept": {"coding": [
                {"system": system, "code": code}]}}]})
    };
    let codes_of = |p: &Value| matches(p).into_iter().map(|m| m.1).collect::<Vec<_>>();

    // Without the dependency only the unconditional target matches.
    let (status, p) = post(&server, "ConceptMap/$translate", ask(None)).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(codes_of(&p), ["drug-any"], "{p}");
    // With it, the conditional target too, and its product.
    let (_, p) = post(
        &server,
        "ConceptMap/$translate",
        ask(Some(dependency(ROUTE, "http://example.org/route", "oral"))),
    )
    .await;
    assert_eq!(codes_of(&p), ["drug-oral", "drug-any"], "{p}");
    let first = all(&p, "match")[0]["part"].as_array().unwrap().clone();
    let product = first.iter().find(|x| x["name"] == "product").expect("a product part");
    assert_eq!(product["part"][0], json!({"name": "element", "valueUri": FORM}));
    assert_eq!(
        product["part"][1]["valueCoding"],
        json!({"system": "http://example.org/form", "code": "tablet", "display": "Tablet"})
    );
    // A different value, element or system does not satisfy it.
    for dep in [
        dependency(ROUTE, "http://example.org/route", "iv"),
        dependency(FORM, "http://example.org/route", "oral"),
        dependency(ROUTE, "http://example.org/other", "oral"),
    ] {
        let (_, p) = post(&server, "ConceptMap/$translate", ask(Some(dep.clone()))).await;
        assert_eq!(codes_of(&p), ["drug-any"], "{dep}: {p}");
    }
    // Reversed, the source is found whatever the dependencies, its conditions as products.
    let (_, p) = post(
        &server,
        "ConceptMap/$translate",
        json!([{"name": "url", "valueUri": url}, {"name": "system", "valueUri": B},
               {"name": "code", "valueCode": "drug-oral"}, {"name": "reverse", "valueBoolean": true}]),
    )
    .await;
    assert_eq!(codes_of(&p), ["drug"], "{p}");
    let parts = all(&p, "match")[0]["part"].as_array().unwrap().clone();
    let product = parts.iter().find(|x| x["name"] == "product").expect("a product part");
    assert_eq!(product["part"][0]["valueUri"], ROUTE);
    assert_eq!(product["part"][1]["valueCoding"]["code"], "oral");
    // A dependency needs parts, which a query cannot carry; and both of them.
    let (status, body) = get(
        &server,
        &format!("ConceptMap/$translate?url={}&system={}&code=drug&dependency=x", enc(url), enc(A)),
    )
    .await;
    assert_error(status, &body, 400, "'dependency'");
    let (status, body) = post(
        &server,
        "ConceptMap/$translate",
        ask(Some(json!({"name": "dependency", "part": [{"name": "element", "valueUri": ROUTE}]}))),
    )
    .await;
    assert_error(status, &body, 400, "'dependency'");
}

fn first_match_equivalence(p: &Value) -> String {
    all(p, "match")[0]["part"][0]["valueCode"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn other_projects_do_not_see_the_terminology() {
    let server = TestServer::start().await;
    let f = setup(&server).await;
    let s = &server;
    let project = s.engine.create_project("Other clinic", None).await.unwrap();
    let b = project["id"].as_str().unwrap().to_owned();
    let (status, m) = invite(
        s,
        &s.token,
        &b,
        json!({"firstName": "Ad", "lastName": "Min", "email": "admin-b@example.com",
               "password": "admin-password", "admin": true}),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    let tokens = sign_in(s, "admin-b@example.com", "admin-password", Some(&b)).await.unwrap();
    let token_b = tokens["access_token"].as_str().unwrap().to_owned();
    let get_b = |path: String| {
        let req = s.client.get(s.fhir_url(&path)).bearer_auth(&token_b).send();
        async move { json_of(req.await.unwrap()).await }
    };
    let (sys, vs, cm) = (enc(SYS), enc(VS), enc(CM));
    for path in [
        format!("ValueSet/$expand?url={vs}"),
        format!("ValueSet/{}/$expand", f.vs),
        format!("ValueSet/$validate-code?url={vs}&system={sys}&code=pain"),
        format!("CodeSystem/$lookup?system={sys}&code=pain"),
        format!("CodeSystem/$validate-code?url={sys}&code=pain"),
        format!("CodeSystem/{}/$lookup?code=pain", f.cs),
        format!("CodeSystem/$subsumes?system={sys}&codeA=pain&codeB=finding"),
        format!("ConceptMap/$translate?url={cm}&system={sys}&code=pain"),
        format!("ConceptMap/{}/$translate?system={sys}&code=pain", f.cm),
    ] {
        let (status, body) = get_b(path.clone()).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome");
    }
    // Without a map named, B's search finds none of A's.
    let (status, p) = get_b(format!("ConceptMap/$translate?system={sys}&code=pain")).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(out(&p, "result"), false);
    // The built-in value sets are everyone's.
    let gender = enc("http://hl7.org/fhir/ValueSet/administrative-gender");
    let (status, vs) = get_b(format!("ValueSet/$expand?url={gender}")).await;
    assert_eq!(status, 200, "{vs}");
    assert_eq!(vs["expansion"]["total"], 4);
}

#[tokio::test]
async fn get_reaches_operations_not_reads() {
    let server = TestServer::start().await;
    let f = setup(&server).await;
    // Unknown operations are 404 not-supported; those that change things need POST.
    for (path, status, needle) in [
        ("Patient/$nope".to_owned(), 404, "$nope"),
        (format!("ValueSet/{}/$nope", f.vs), 404, "$nope"),
        ("Patient/$reindex".to_owned(), 405, "POST"),
        ("Patient/$validate".to_owned(), 405, "POST"),
        ("CodeSystem/$expand".to_owned(), 404, "$expand"),
    ] {
        let (got, body) = get(&server, &path).await;
        assert_error(got, &body, status, needle);
        assert_eq!(body["issue"][0]["code"], "not-supported", "{path}: {body}");
    }
    // Ordinary reads and compartment searches still work beside them.
    let (status, vs) = get(&server, &format!("ValueSet/{}", f.vs)).await;
    assert_eq!(status, 200, "{vs}");
    assert!(vs.get("expansion").is_none());
    let (status, _) = get(&server, "ValueSet?url=http://example.org/fhir/ValueSet/findings").await;
    assert_eq!(status, 200);
    // The CapabilityStatement lists the operations.
    let (_, capability) = get(&server, "metadata").await;
    let ops = |ty: &str| -> Vec<String> {
        capability["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == ty)
            .unwrap()["operation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["definition"].as_str().unwrap().to_owned())
            .collect()
    };
    let base = "http://hl7.org/fhir/OperationDefinition";
    for (ty, op) in [
        ("ValueSet", "ValueSet-expand"),
        ("ValueSet", "ValueSet-validate-code"),
        ("CodeSystem", "CodeSystem-lookup"),
        ("CodeSystem", "CodeSystem-validate-code"),
        ("CodeSystem", "CodeSystem-subsumes"),
        ("ConceptMap", "ConceptMap-translate"),
    ] {
        assert!(ops(ty).contains(&format!("{base}/{op}")), "{ty}: {:?}", ops(ty));
    }
    let res = server.client.get(server.url("openapi.json")).send().await.unwrap();
    let doc: Value = res.json().await.unwrap();
    for path in [
        "/fhir/R4/ValueSet/$expand",
        "/fhir/R4/CodeSystem/{id}/$lookup",
        "/fhir/R4/ConceptMap/$translate",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
        assert!(doc["paths"][path]["post"].is_object(), "{path}");
    }
}

#[tokio::test]
async fn access_policies_limit_what_the_operations_read() {
    use kiln_engine::RequestContext;
    use kiln_store::ProjectId;

    let server = TestServer::start().await;
    let f = setup(&server).await;
    let tokens = server.login_full().await;
    let project =
        tokens["project"]["reference"].as_str().unwrap().strip_prefix("Project/").unwrap();
    let ctx = RequestContext::new(ProjectId::new(project.to_owned()));
    let (_, mut proj) = server.get_json(&format!("Project/{project}")).await;
    proj["superAdmin"] = json!(false);
    server.engine.update(&ctx, "Project", project, proj, None).await.unwrap();
    let (_, bundle) = server.get_json("ProjectMembership").await;
    let membership = bundle["entry"][0]["resource"].clone();
    let become_member = |resources: Value| {
        let (server, ctx, mut m) = (&server, &ctx, membership.clone());
        async move {
            let policy = json!({"resourceType": "AccessPolicy", "resource": resources});
            let stored = server.engine.create(ctx, "AccessPolicy", policy).await.unwrap();
            m["accessPolicy"] = json!({"reference": format!("AccessPolicy/{}", stored.stored.id)});
            m["admin"] = json!(false);
            let id = m["id"].as_str().unwrap().to_owned();
            server.engine.update(ctx, "ProjectMembership", &id, m, None).await.unwrap();
        }
    };
    let (sys, vs) = (enc(SYS), enc(VS));

    // A member who may read only Patients sees none of the project's terminology...
    become_member(json!([{"resourceType": "Patient"}])).await;
    let (status, body) = get(&server, &format!("ValueSet/$expand?url={vs}")).await;
    assert_error(status, &body, 404, "not known");
    let (status, body) = get(&server, &format!("ValueSet/{}/$expand", f.vs)).await;
    assert!(status == 403 || status == 404, "{status} {body}");
    let (status, body) = get(&server, &format!("CodeSystem/$lookup?system={sys}&code=pain")).await;
    assert_error(status, &body, 404, "not known");
    // ...but the built-in value sets.
    let gender = enc("http://hl7.org/fhir/ValueSet/administrative-gender");
    let (status, body) = get(&server, &format!("ValueSet/$expand?url={gender}")).await;
    assert_eq!(status, 200, "{body}");

    // A policy's criteria apply too: only the ValueSets it admits are found.
    become_member(
        json!([{"resourceType": "ValueSet", "criteria": "ValueSet?url=http://example.org/other"},
                         {"resourceType": "CodeSystem"}]),
    )
    .await;
    let (status, body) = get(&server, &format!("ValueSet/$expand?url={vs}")).await;
    assert_error(status, &body, 404, "not known");
    become_member(json!([{"resourceType": "ValueSet"}, {"resourceType": "CodeSystem"}])).await;
    let (status, body) = get(&server, &format!("ValueSet/$expand?url={vs}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expansion"]["total"], 5);
}
