//! A project's own SearchParameter resources: which are taken, how they index and parse.

use kiln_search::{Filter, IndexValue, Registry, SearchParamType};
use serde_json::{Value, json};

fn sp(id: &str, code: &str, base: &[&str], ty: &str, expression: &str) -> Value {
    json!({
        "resourceType": "SearchParameter", "id": id, "status": "active",
        "url": format!("http://example.org/sp/{id}"), "name": code, "code": code,
        "base": base, "type": ty, "expression": expression,
        "description": "test"
    })
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn a_custom_parameter_indexes_and_parses() {
    let params = [sp(
        "1",
        "eye-color",
        &["Patient"],
        "token",
        "Patient.extension('http://example.org/eye').value",
    )];
    let reg = Registry::new(&params);
    assert!(reg.rejected().is_empty(), "{:?}", reg.rejected());
    assert!(reg.is_custom("Patient", "eye-color"));
    let patient = json!({
        "resourceType": "Patient", "id": "p",
        "extension": [{"url": "http://example.org/eye", "valueCode": "green"}]
    });
    let rows: Vec<_> =
        reg.extract(&patient).into_iter().filter(|e| e.code == "eye-color").collect();
    assert_eq!(rows.len(), 1);
    assert!(matches!(&rows[0].value, IndexValue::Token(t) if t.code.as_deref() == Some("green")));
    // The built-in extraction knows nothing of it.
    assert!(kiln_search::extract(&patient).iter().all(|e| e.code != "eye-color"));

    let q = reg
        .parse("Patient", &pairs(&[("eye-color", "green"), ("eye-color:missing", "false")]))
        .unwrap();
    assert_eq!(q.filters.len(), 2);
    assert!(matches!(
        &q.filters[1],
        Filter::Missing { kind: SearchParamType::Token, missing: false, .. }
    ));
    // Without the registry it is unknown.
    let q = kiln_search::parse("Patient", &pairs(&[("eye-color", "green")])).unwrap();
    assert_eq!(q.unknown.len(), 1);
    // Sorting on it is allowed.
    let q = reg.parse("Patient", &pairs(&[("_sort", "-eye-color")])).unwrap();
    assert_eq!(q.sort[0].kind, SearchParamType::Token);
}

#[test]
fn resource_based_parameters_apply_to_every_type() {
    let params =
        [sp("1", "cohort", &["Resource"], "token", "meta.tag.where(system = 'urn:cohort')")];
    let reg = Registry::new(&params);
    assert!(reg.rejected().is_empty(), "{:?}", reg.rejected());
    let obs = json!({"resourceType": "Observation", "id": "o", "status": "final",
        "code": {"text": "x"}, "meta": {"tag": [{"system": "urn:cohort", "code": "a"}]}});
    assert!(reg.extract(&obs).iter().any(|e| e.code == "cohort"));
    assert!(reg.param("Binary", "cohort").is_some());
    // System-level searches look parameters up on `Resource`.
    assert!(reg.param("Resource", "cohort").is_some());
    assert!(reg.param("Resource", "_id").is_some());
    assert_eq!(reg.custom_params().len(), 1);
}

#[test]
fn unusable_definitions_are_rejected_with_a_reason() {
    let mut no_expr = sp("a", "nothing", &["Patient"], "token", "x");
    no_expr.as_object_mut().unwrap().remove("expression");
    let params = [
        sp("b", "name", &["Patient"], "string", "Patient.name"), // clashes with a built-in
        sp("c", "bad", &["Patient"], "token", "Patient.(("),     // does not compile
        sp("d", "odd", &["NotAType"], "token", "id"),
        sp("e", "_x", &["Patient"], "token", "id"),
        sp("f", "near2", &["Location"], "special", "Location.position"),
        no_expr,
        sp("g", "twice", &["Patient"], "token", "Patient.gender"),
        sp("h", "twice", &["Patient"], "token", "Patient.gender"),
    ];
    let reg = Registry::new(&params);
    let mut ids: Vec<&str> = reg.rejected().iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c", "d", "e", "f", "h"], "{:?}", reg.rejected());
    assert!(reg.is_custom("Patient", "twice"));
    // Retired and draft definitions are not in force, and not errors either.
    let mut retired = sp("r", "later", &["Patient"], "token", "id");
    retired["status"] = json!("retired");
    let reg = Registry::new(&[retired]);
    assert!(reg.rejected().is_empty() && !reg.has_custom());
}

#[test]
fn a_copy_of_a_built_in_definition_is_the_built_in() {
    let builtin = kiln_definitions::definitions().search_param("Patient", "birthdate").unwrap();
    let mut copy = sp("x", "birthdate", &["Patient"], "date", "Patient.birthDate");
    copy["url"] = json!(builtin.url);
    let reg = Registry::new(&[copy]);
    assert!(reg.rejected().is_empty() && !reg.has_custom());
}

#[test]
fn custom_composites_join_their_components() {
    let params = [
        sp("k", "kind", &["Observation"], "token", "Observation.code"),
        json!({
            "resourceType": "SearchParameter", "id": "kv", "status": "active",
            "url": "http://example.org/sp/kv", "code": "kind-value", "base": ["Observation"],
            "type": "composite", "expression": "Observation",
            "component": [
                {"definition": "http://example.org/sp/k", "expression": "code"},
                {"definition": "http://hl7.org/fhir/SearchParameter/Observation-value-quantity", "expression": "value.as(Quantity)"}
            ]
        }),
    ];
    let reg = Registry::new(&params);
    assert!(reg.rejected().is_empty(), "{:?}", reg.rejected());
    let obs = json!({"resourceType": "Observation", "id": "o", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}});
    let rows: Vec<_> = reg.extract(&obs).into_iter().filter(|e| e.code == "kind-value").collect();
    assert!(
        rows.iter().any(|e| e.component == Some(0)) && rows.iter().any(|e| e.component == Some(1))
    );
    let q = reg
        .parse("Observation", &pairs(&[("kind-value", "http://loinc.org|8867-4$gt70")]))
        .unwrap();
    assert_eq!(q.filters.len(), 1, "{q:?}");
}

#[test]
fn admits_says_why_a_definition_would_not_work() {
    let base = Registry::base();
    assert!(base.admits(&sp("a", "eye", &["Patient"], "token", "Patient.gender")).is_ok());
    let err = base.admits(&sp("b", "name", &["Patient"], "string", "Patient.name")).unwrap_err();
    assert!(err.contains("already a search parameter"), "{err}");
    assert!(base.admits(&sp("c", "bad", &["Patient"], "token", "Patient.((")).is_err());
    let mut draft = sp("d", "bad", &["Patient"], "token", "Patient.((");
    draft["status"] = json!("draft");
    assert!(base.admits(&draft).is_ok());
    // A project's parameter clashes with another one, not with its own earlier version.
    let reg = Registry::new(&[sp("e", "eye", &["Patient"], "token", "Patient.gender")]);
    assert!(reg.admits(&sp("e", "eye", &["Patient"], "token", "Patient.birthDate")).is_ok());
    assert!(reg.admits(&sp("f", "eye", &["Patient"], "token", "Patient.gender")).is_err());
}
