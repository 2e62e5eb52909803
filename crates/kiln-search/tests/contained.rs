//! Contained resources: what extraction marks as theirs, local `#id` references, and how the
//! oracle evaluates `_contained` and chains through them.

use kiln_search::{
    ContainedIn, IndexValue, RefValue, extract, matches, matching_contained, parse_at,
};
use serde_json::{Value, json};

fn container() -> Value {
    json!({
        "resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "#p1"},
        "performer": [{"reference": "#p2"}],
        "contained": [
            {"resourceType": "Patient", "id": "p1", "name": [{"family": "Taylor"}],
             "gender": "female", "meta": {"lastUpdated": "2020-01-01T00:00:00Z"}},
            {"resourceType": "Patient", "name": [{"family": "NoId"}]},
            {"resourceType": "Patient", "id": "p2", "name": [{"family": "Smith"}], "gender": "male"}
        ]
    })
}

fn query(ty: &str, q: &[(&str, &str)]) -> kiln_search::SearchQuery {
    let pairs: Vec<(String, String)> =
        q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let parsed = parse_at(ty, &pairs, 0).unwrap();
    assert!(parsed.unknown.is_empty(), "{:?}", parsed.unknown);
    parsed
}

#[test]
fn contained_resources_are_extracted_apart() {
    let entries = extract(&container());
    let of = |index: u32| -> Vec<&kiln_search::IndexEntry> {
        entries.iter().filter(|e| e.contained.as_ref().map(|c| c.index) == Some(index)).collect()
    };
    let p1 = of(1);
    assert!(p1.iter().all(|e| e.contained
        == Some(ContainedIn { index: 1, resource_type: "Patient".into() })));
    assert!(p1.iter().any(|e| e.code == "family"));
    assert!(p1.iter().any(|e| e.code == "_id"));
    assert!(p1.iter().all(|e| e.code != "_lastUpdated"), "a contained meta is not the store's");
    assert!(of(2).is_empty(), "no id: not indexed");
    assert!(of(3).iter().any(|e| e.code == "gender"));
    // The container's own rows: no Patient parameter, and its subject is a local reference.
    let own: Vec<_> = entries.iter().filter(|e| e.contained.is_none()).collect();
    assert!(own.iter().all(|e| e.code != "family"));
    assert!(own.iter().any(|e| e.code == "subject"
        && e.value == IndexValue::Reference(RefValue::Contained { reference: "#p1".into() })));
}

#[test]
fn the_oracle_searches_contained_resources() {
    let o = container();
    let family = |v: &str, mode: &str| query("Patient", &[("family", v), ("_contained", mode)]);
    assert!(!matches(&family("Taylor", "false"), &o));
    assert!(matches(&family("Taylor", "true"), &o));
    assert!(matches(&family("Taylor", "both"), &o));
    assert!(!matches(&family("NoId", "true"), &o));
    // Every filter on the same contained resource.
    let q = query("Patient", &[("family", "Taylor"), ("gender", "male"), ("_contained", "true")]);
    assert!(!matches(&q, &o));
    let q = query(
        "Patient",
        &[
            ("family", "Smith"),
            ("gender", "male"),
            ("_contained", "true"),
            ("_containedType", "contained"),
        ],
    );
    assert_eq!(matching_contained(&q, &o, &Vec::new()), vec![3]);
    let q = query("Observation", &[("status", "final"), ("_contained", "both")]);
    assert_eq!(matching_contained(&q, &o, &Vec::new()), vec![0]);
    // No `_lastUpdated` on a contained resource.
    let q = query("Patient", &[("_lastUpdated", "2020"), ("_contained", "true")]);
    assert!(!matches(&q, &o));
}

#[test]
fn chains_follow_local_references() {
    let o = container();
    let q = |k: &str, v: &str| query("Observation", &[(k, v)]);
    assert!(matches(&q("subject.name", "Taylor"), &o));
    assert!(matches(&q("subject:Patient.family", "Taylor"), &o));
    assert!(!matches(&q("subject.gender", "male"), &o));
    assert!(matches(&q("performer.gender", "male"), &o));
    // A `#` value is not a reference search value.
    let pairs = vec![("subject".to_string(), "#p1".to_string())];
    assert!(parse_at("Observation", &pairs, 0).is_err());
}

#[test]
fn typed_parameters_resolve_local_references() {
    // `patient` is `Observation.subject.where(resolve() is Patient)`: `resolve()` finds `#p1`
    // among the container's contained resources, so the typed parameter is indexed too.
    let entries = extract(&container());
    let patient: Vec<_> = entries
        .iter()
        .filter(|e| e.code == "patient" && e.contained.is_none())
        .map(|e| e.value.clone())
        .collect();
    assert_eq!(
        patient,
        vec![IndexValue::Reference(RefValue::Contained { reference: "#p1".into() })]
    );
}
