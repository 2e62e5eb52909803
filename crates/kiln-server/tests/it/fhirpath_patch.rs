//! FHIRPath Patch (a `Parameters` body, `application/fhir+json`): every operation type, list
//! indexes, complex and choice values, primitive extensions, refusals, `If-Match`,
//! conditional patch and Bundle entries. JSON Patch is tested in `crud`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, assert_outcome, json_of, patient};

/// One `operation` parameter: its type and path, then the other parts as given.
fn op(kind: &str, path: &str, parts: Value) -> Value {
    let mut all = vec![
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "path", "valueString": path}),
    ];
    all.extend(parts.as_array().cloned().unwrap_or_default());
    json!({"name": "operation", "part": all})
}

fn parameters(ops: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": ops})
}

async fn fpatch(server: &TestServer, path: &str, ops: Vec<Value>) -> (u16, Value) {
    let res = server.send_json(Method::PATCH, path, &parameters(ops)).send().await.unwrap();
    json_of(res).await
}

/// Sends a patch that must succeed; returns the patched resource.
async fn patched(server: &TestServer, path: &str, ops: Vec<Value>) -> Value {
    let (status, body) = fpatch(server, path, ops).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Sends a patch that must be refused with 400; returns the diagnostics.
async fn refused(server: &TestServer, path: &str, ops: Vec<Value>) -> String {
    let (status, body) = fpatch(server, path, ops).await;
    assert_eq!(status, 400, "{body}");
    let issues = assert_outcome(&body);
    issues.iter().filter_map(|i| i["diagnostics"].as_str()).collect::<Vec<_>>().join(" | ")
}

async fn create_path(server: &TestServer, resource: &Value) -> String {
    let created = server.create(resource).await;
    format!("{}/{}", resource["resourceType"].as_str().unwrap(), created["id"].as_str().unwrap())
}

#[tokio::test]
async fn fhirpath_patch_each_operation_type() {
    let server = TestServer::start().await;
    let mut it = patient("Doe");
    it["identifier"] =
        json!([{"system": "http://a", "value": "1"}, {"system": "http://b", "value": "2"}]);
    let path = create_path(&server, &it).await;

    // add: a non-repeating element to the resource, an entry to a list.
    let body = patched(&server, &path, vec![
        op("add", "Patient", json!([{"name": "name", "valueString": "active"}, {"name": "value", "valueBoolean": true}])),
        op("add", "Patient.name[0]", json!([{"name": "name", "valueString": "given"}, {"name": "value", "valueString": "Second"}])),
    ])
    .await;
    assert_eq!(body["active"], true);
    assert_eq!(body["name"][0]["given"], json!(["Test", "Second"]));
    assert_eq!(body["meta"]["versionId"], "2");

    // insert at the front of a list.
    let body = patched(
        &server,
        &path,
        vec![op(
            "insert",
            "Patient.identifier",
            json!([
        {"name": "index", "valueInteger": 0},
        {"name": "value", "valueIdentifier": {"system": "http://z", "value": "0"}}]),
        )],
    )
    .await;
    let systems = identifier_systems(&body);
    assert_eq!(systems, ["http://z", "http://a", "http://b"]);

    // replace a primitive and a complex element selected with where().
    let body = patched(
        &server,
        &path,
        vec![
            op(
                "replace",
                "Patient.birthDate",
                json!([{"name": "value", "valueDate": "1980-02-03"}]),
            ),
            op(
                "replace",
                "Patient.identifier.where(system = 'http://a')",
                json!([
            {"name": "value", "valueIdentifier": {"system": "http://a", "value": "11"}}]),
            ),
        ],
    )
    .await;
    assert_eq!(body["birthDate"], "1980-02-03");
    assert_eq!(body["identifier"][1], json!({"system": "http://a", "value": "11"}));

    // move the last identifier to the front.
    let body = patched(
        &server,
        &path,
        vec![op(
            "move",
            "Patient.identifier",
            json!([
        {"name": "source", "valueInteger": 2}, {"name": "destination", "valueInteger": 0}]),
        )],
    )
    .await;
    let systems = identifier_systems(&body);
    assert_eq!(systems, ["http://b", "http://z", "http://a"]);

    // delete: a list entry (first()/last()), a whole element, and nothing (a no-op).
    let body = patched(
        &server,
        &path,
        vec![
            op("delete", "Patient.identifier.first()", json!([])),
            op("delete", "Patient.identifier.last()", json!([])),
            op("delete", "Patient.active", json!([])),
            op("delete", "Patient.deceased", json!([])),
            op("delete", "Patient.name.given[1]", json!([])),
        ],
    )
    .await;
    assert_eq!(body["identifier"], json!([{"system": "http://z", "value": "0"}]));
    assert!(body.get("active").is_none(), "{body}");
    assert_eq!(body["name"][0]["given"], json!(["Test"]));
    // Deleting the last entry of a list removes the list.
    let body = patched(&server, &path, vec![op("delete", "Patient.identifier", json!([]))]).await;
    assert!(body.get("identifier").is_none(), "{body}");
    assert_eq!(body["meta"]["versionId"], "7");
    let (_, stored) = server.get_json(&path).await;
    assert_eq!(stored["birthDate"], "1980-02-03");
    assert_eq!(stored["name"][0]["family"], "Doe");
}

#[tokio::test]
async fn fhirpath_patch_list_indexes() {
    let server = TestServer::start().await;
    let mut it = patient("Doe");
    it["name"][0]["given"] = json!(["a", "b", "c"]);
    let path = create_path(&server, &it).await;
    let insert = |index: i64, value: &str| {
        op(
            "insert",
            "Patient.name.given",
            json!([{"name": "index", "valueInteger": index}, {"name": "value", "valueString": value}]),
        )
    };
    // At the end (index = length) and in the middle.
    let body = patched(&server, &path, vec![insert(3, "end"), insert(1, "mid")]).await;
    assert_eq!(body["name"][0]["given"], json!(["a", "mid", "b", "c", "end"]));
    // Beyond the end is refused, and nothing is stored.
    let text = refused(&server, &path, vec![insert(6, "far")]).await;
    assert!(text.contains("Parameters.parameter[0]") && text.contains("index 6"), "{text}");
    let text = refused(&server, &path, vec![insert(-1, "neg")]).await;
    assert!(text.contains("valueInteger of 0 or more"), "{text}");
    // Into a list that does not exist yet: only index 0.
    let text = refused(
        &server,
        &path,
        vec![op(
            "insert",
            "Patient.name.prefix",
            json!([
        {"name": "index", "valueInteger": 1}, {"name": "value", "valueString": "Dr"}]),
        )],
    )
    .await;
    assert!(text.contains("index 1"), "{text}");
    let body = patched(
        &server,
        &path,
        vec![op(
            "insert",
            "Patient.name.prefix",
            json!([
        {"name": "index", "valueInteger": 0}, {"name": "value", "valueString": "Dr"}]),
        )],
    )
    .await;
    assert_eq!(body["name"][0]["prefix"], json!(["Dr"]));
    // move: first to last, last to first, and out of range.
    let mv = |source: i64, destination: i64| {
        op(
            "move",
            "Patient.name.given",
            json!([{"name": "source", "valueInteger": source}, {"name": "destination", "valueInteger": destination}]),
        )
    };
    let body = patched(&server, &path, vec![mv(0, 4)]).await;
    assert_eq!(body["name"][0]["given"], json!(["mid", "b", "c", "end", "a"]));
    let body = patched(&server, &path, vec![mv(4, 0), mv(2, 2)]).await;
    assert_eq!(body["name"][0]["given"], json!(["a", "mid", "b", "c", "end"]));
    let text = refused(&server, &path, vec![mv(0, 5)]).await;
    assert!(text.contains("destination index 5"), "{text}");
    let text = refused(&server, &path, vec![mv(5, 0)]).await;
    assert!(text.contains("source index 5"), "{text}");
    // insert and move need a list, not a single element.
    let text = refused(
        &server,
        &path,
        vec![op(
            "insert",
            "Patient.birthDate",
            json!([
        {"name": "index", "valueInteger": 0}, {"name": "value", "valueDate": "2000-01-01"}]),
        )],
    )
    .await;
    assert!(text.contains("list"), "{text}");
    let (_, stored) = server.get_json(&path).await;
    assert_eq!(stored["name"][0]["given"], json!(["a", "mid", "b", "c", "end"]));
}

#[tokio::test]
async fn fhirpath_patch_complex_values_and_choice_types() {
    let server = TestServer::start().await;
    let path = create_path(&server, &patient("Doe")).await;
    // A backbone element built from parts, with a datatype and a repeating element inside.
    let body = patched(
        &server,
        &path,
        vec![op(
            "add",
            "Patient",
            json!([
        {"name": "name", "valueString": "contact"},
        {"name": "value", "part": [
            {"name": "name", "valueHumanName": {"family": "Contact"}},
            {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "555"}},
            {"name": "telecom", "part": [
                {"name": "system", "valueCode": "email"},
                {"name": "value", "valueString": "c@example.org"}]},
            {"name": "gender", "valueCode": "male"}]}]),
        )],
    )
    .await;
    assert_eq!(
        body["contact"],
        json!([{
        "name": {"family": "Contact"},
        "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "c@example.org"}],
        "gender": "male"}])
    );

    // Choice types: add `value` as a Quantity, then replace it with a string.
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"}});
    let path = create_path(&server, &obs).await;
    let body = patched(
        &server,
        &path,
        vec![
            op(
                "add",
                "Observation",
                json!([{"name": "name", "valueString": "value"},
            {"name": "value", "valueQuantity": {"value": 72.50, "unit": "kg"}}]),
            ),
            op(
                "add",
                "Observation",
                json!([{"name": "name", "valueString": "component"},
            {"name": "value", "part": [
                {"name": "code", "valueCodeableConcept": {"text": "part"}},
                {"name": "value", "valueInteger": 3}]}]),
            ),
        ],
    )
    .await;
    assert_eq!(body["valueQuantity"]["unit"], "kg");
    assert_eq!(body["component"], json!([{"code": {"text": "part"}, "valueInteger": 3}]));
    let body = patched(
        &server,
        &path,
        vec![
            op(
                "replace",
                "Observation.value.ofType(Quantity).value",
                json!([{"name": "value", "valueDecimal": 80}]),
            ),
            op(
                "replace",
                "Observation.component.value",
                json!([{"name": "value", "valueString": "three"}]),
            ),
        ],
    )
    .await;
    assert_eq!(body["valueQuantity"]["value"], 80);
    assert_eq!(body["component"][0]["valueString"], "three");
    assert!(body["component"][0].get("valueInteger").is_none(), "{body}");
    let body = patched(
        &server,
        &path,
        vec![op(
            "replace",
            "Observation.value",
            json!([
        {"name": "value", "valueString": "heavy"}]),
        )],
    )
    .await;
    assert_eq!(body["valueString"], "heavy");
    assert!(body.get("valueQuantity").is_none(), "{body}");
    // A type the choice does not allow, and a second value for a choice, are refused.
    let text = refused(
        &server,
        &path,
        vec![op(
            "replace",
            "Observation.value",
            json!([
        {"name": "value", "valueHumanName": {"family": "x"}}]),
        )],
    )
    .await;
    assert!(text.contains("Observation.value[x] cannot hold a HumanName"), "{text}");
    let text = refused(
        &server,
        &path,
        vec![op(
            "add",
            "Observation",
            json!([
        {"name": "name", "valueString": "value"}, {"name": "value", "valueBoolean": true}]),
        )],
    )
    .await;
    assert!(text.contains("already has a value") && text.contains("use replace"), "{text}");
}

#[tokio::test]
async fn fhirpath_patch_primitive_extensions() {
    let server = TestServer::start().await;
    let path = create_path(&server, &patient("Doe")).await;
    let ext = json!({"url": "http://example.org/accuracy", "valueCode": "estimated"});
    let body = patched(
        &server,
        &path,
        vec![op(
            "add",
            "Patient.birthDate",
            json!([
        {"name": "name", "valueString": "extension"},
        {"name": "value", "part": [
            {"name": "url", "valueUri": "http://example.org/accuracy"},
            {"name": "value", "valueCode": "estimated"}]}]),
        )],
    )
    .await;
    assert_eq!(body["birthDate"], "1990-05-17");
    assert_eq!(body["_birthDate"], json!({"extension": [ext]}));
    // Replacing the value keeps the primitive's extensions.
    let body = patched(
        &server,
        &path,
        vec![op(
            "replace",
            "Patient.birthDate",
            json!([
        {"name": "value", "valueDate": "1991-01-01"}]),
        )],
    )
    .await;
    assert_eq!(body["birthDate"], "1991-01-01");
    assert_eq!(body["_birthDate"], json!({"extension": [ext]}));
    // The extension is found by url and deleted with its now empty `_birthDate`.
    let body = patched(
        &server,
        &path,
        vec![op("delete", "Patient.birthDate.extension('http://example.org/accuracy')", json!([]))],
    )
    .await;
    assert!(body.get("_birthDate").is_none(), "{body}");
    // A value with its own extension (`_valueString`) keeps list alignment.
    let body = patched(
        &server,
        &path,
        vec![op(
            "insert",
            "Patient.name.given",
            json!([
        {"name": "index", "valueInteger": 0},
        {"name": "value", "valueString": "First", "_valueString": {"extension": [ext]}}]),
        )],
    )
    .await;
    assert_eq!(body["name"][0]["given"], json!(["First", "Test"]));
    assert_eq!(body["name"][0]["_given"], json!([{"extension": [ext]}, null]));
    // Deleting the extension of a list entry.
    let body =
        patched(&server, &path, vec![op("delete", "Patient.name.given[0].extension", json!([]))])
            .await;
    assert!(body["name"][0].get("_given").is_none(), "{body}");
    assert_eq!(body["name"][0]["given"], json!(["First", "Test"]));
}

#[tokio::test]
async fn fhirpath_patch_refusals_name_the_operation() {
    let server = TestServer::start().await;
    let mut it = patient("Doe");
    it["name"] = json!([{"family": "Doe"}, {"family": "Roe"}]);
    it["generalPractitioner"] =
        json!([{"reference": "#pr"}, {"reference": "Practitioner/elsewhere"}]);
    it["contained"] =
        json!([{"resourceType": "Practitioner", "id": "pr", "name": [{"family": "Who"}]}]);
    let path = create_path(&server, &it).await;
    let ok = op("replace", "Patient.gender", json!([{"name": "value", "valueCode": "male"}]));

    // Not a Parameters resource.
    let res = server
        .send_json(Method::PATCH, &path, &json!([{"op": "remove", "path": "/gender"}]))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("must be a Parameters resource"), "{body}");

    let cases: Vec<(Vec<Value>, &str)> = vec![
        (
            vec![ok.clone(), json!({"name": "op", "part": []})],
            "Parameters.parameter[1]: every parameter of a FHIRPath Patch must be named 'operation'",
        ),
        (vec![op("upsert", "Patient", json!([]))], "unknown operation type 'upsert'"),
        (vec![op("delete", "Patient.name.where(", json!([]))], "is not valid FHIRPath"),
        (
            vec![
                ok.clone(),
                op("replace", "Patient.active", json!([{"name": "value", "valueBoolean": true}])),
            ],
            "Parameters.parameter[1]: replace at 'Patient.active': the path selects nothing",
        ),
        (
            vec![op(
                "replace",
                "Patient.name",
                json!([{"name": "value", "valueHumanName": {"family": "X"}}]),
            )],
            "selects 2 elements",
        ),
        (vec![op("delete", "Patient.name", json!([]))], "only one element can be deleted"),
        (
            vec![op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "birthDate"}, {"name": "value", "valueHumanName": {"family": "X"}}]),
            )],
            "a HumanName does not fit Patient.birthDate",
        ),
        (
            vec![op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "gender"}, {"name": "value", "valueCode": "male"}]),
            )],
            "'gender' already has a value",
        ),
        (
            vec![op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "shoeSize"}, {"name": "value", "valueInteger": 42}]),
            )],
            "Patient has no element 'shoeSize'",
        ),
        (
            vec![op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "contact"}, {"name": "value", "part": [{"name": "nickname", "valueString": "x"}]}]),
            )],
            "Patient.contact has no element 'nickname'",
        ),
        (
            vec![op("add", "Patient", json!([{"name": "name", "valueString": "active"}]))],
            "add needs the part 'value'",
        ),
        (
            vec![op("insert", "Patient.name", json!([{"name": "value", "valueHumanName": {}}]))],
            "insert needs the part 'index'",
        ),
        (
            vec![op("delete", "Patient.generalPractitioner[1].resolve()", json!([]))],
            "not an element of the resource",
        ),
        (
            vec![op(
                "replace",
                "Patient.name.count()",
                json!([{"name": "value", "valueInteger": 1}]),
            )],
            "not an element of the resource",
        ),
        (
            vec![op("replace", "Patient.name[0].family", json!([{"name": "value"}]))],
            "no value[x], resource or parts",
        ),
        (vec![op("delete", "Patient", json!([]))], "the resource itself cannot be deleted"),
        (vec![op("delete", "Patient.id", json!([]))], "may not change the id"),
    ];
    for (ops, expected) in cases {
        let text = refused(&server, &path, ops.clone()).await;
        assert!(text.contains(expected), "{ops:?}\nexpected '{expected}' in: {text}");
    }
    // A result that is not a valid resource is refused by validation.
    let text = refused(
        &server,
        &path,
        vec![op("replace", "Patient.gender", json!([{"name": "value", "valueCode": "robot"}]))],
    )
    .await;
    assert!(text.contains("robot"), "{text}");
    // Nothing was stored by any refused patch.
    let (_, stored) = server.get_json(&path).await;
    assert_eq!(stored["meta"]["versionId"], "1");
    assert_eq!(stored["gender"], "female");
    // resolve() may reach a contained resource, which is part of the resource.
    let body = patched(
        &server,
        &path,
        vec![op(
            "replace",
            "Patient.generalPractitioner[0].resolve().name.family",
            json!([{"name": "value", "valueString": "Someone"}]),
        )],
    )
    .await;
    assert_eq!(body["contained"][0]["name"][0]["family"], "Someone");
}

#[tokio::test]
async fn fhirpath_patch_media_types_if_match_and_conditional() {
    let server = TestServer::start().await;
    let mut it = patient("Doe");
    it["identifier"] = json!([{"system": "http://hospital.example/mrn", "value": "fp-1"}]);
    let path = create_path(&server, &it).await;
    let body = parameters(vec![op(
        "replace",
        "Patient.name.family",
        json!([{"name": "value", "valueString": "Plain"}]),
    )]);
    // application/json with a Parameters body is FHIRPath Patch too.
    let res = server
        .fhir(Method::PATCH, &path)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let (status, patched_body) = json_of(res).await;
    assert_eq!(status, 200, "{patched_body}");
    assert_eq!(patched_body["name"][0]["family"], "Plain");

    // If-Match: a stale version is 412, the current one succeeds.
    let res = server
        .send_json(Method::PATCH, &path, &body)
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 412);
    let res = server
        .send_json(Method::PATCH, &path, &body)
        .header("if-match", "W/\"2\"")
        .send()
        .await
        .unwrap();
    let (status, current) = json_of(res).await;
    assert_eq!(status, 200, "{current}");
    assert_eq!(current["meta"]["versionId"], "3");

    // Conditional patch.
    let conditional = parameters(vec![op(
        "add",
        "Patient",
        json!([{"name": "name", "valueString": "active"}, {"name": "value", "valueBoolean": false}]),
    )]);
    let res = server
        .send_json(
            Method::PATCH,
            "Patient?identifier=http://hospital.example/mrn|fp-1",
            &conditional,
        )
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], false);
    assert_eq!(format!("Patient/{}", body["id"].as_str().unwrap()), path);
    let res = server
        .send_json(Method::PATCH, "Patient?identifier=nobody", &conditional)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // The CapabilityStatement lists both patch formats.
    let (_, metadata) = server.get_json("metadata").await;
    assert_eq!(
        metadata["patchFormat"],
        json!(["application/json-patch+json", "application/fhir+json"])
    );
}

#[tokio::test]
async fn fhirpath_patch_bundle_entries() {
    let server = TestServer::start().await;
    let path = create_path(&server, &patient("Before")).await;
    let entry = |ops: Vec<Value>| json!({"request": {"method": "PATCH", "url": path}, "resource": parameters(ops)});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:33333333-3333-3333-3333-333333333333",
         "resource": {"resourceType": "Practitioner", "name": [{"family": "Gp"}]},
         "request": {"method": "POST", "url": "Practitioner"}},
        entry(vec![
            op("replace", "Patient.name.family", json!([{"name": "value", "valueString": "After"}])),
            op("add", "Patient", json!([{"name": "name", "valueString": "generalPractitioner"},
                {"name": "value", "valueReference": {"reference": "urn:uuid:33333333-3333-3333-3333-333333333333"}}])),
        ]),
    ]});
    let res = server.send_json(Method::POST, "", &bundle).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entry"][1]["response"]["status"], "200 OK", "{body}");
    let (_, stored) = server.get_json(&path).await;
    assert_eq!(stored["name"][0]["family"], "After");
    let gp = stored["generalPractitioner"][0]["reference"].as_str().unwrap();
    assert!(gp.starts_with("Practitioner/"), "the urn:uuid was resolved: {gp}");

    // In a batch, a refused FHIRPath Patch fails its entry alone.
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry(vec![op("replace", "Patient.active", json!([{"name": "value", "valueBoolean": true}]))]),
        entry(vec![op("add", "Patient", json!([{"name": "name", "valueString": "active"}, {"name": "value", "valueBoolean": true}]))]),
    ]});
    let res = server.send_json(Method::POST, "", &bundle).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entry"][0]["response"]["status"], "400 Bad Request", "{body}");
    let text = body["entry"][0]["response"]["outcome"].to_string();
    assert!(text.contains("Parameters.parameter[0]") && text.contains("selects nothing"), "{text}");
    assert_eq!(body["entry"][1]["response"]["status"], "200 OK", "{body}");
    let (_, stored) = server.get_json(&path).await;
    assert_eq!(stored["active"], true);
}

/// The `system` of each identifier of `resource`, in order.
fn identifier_systems(resource: &Value) -> Vec<&str> {
    resource["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["system"].as_str().unwrap())
        .collect()
}
