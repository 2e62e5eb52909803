//! The reference evaluator on hand-made resources: every prefix, every modifier, OR/AND,
//! composites, chains and `_has`.

use kiln_search::{matches, matches_in, parse_at};
use serde_json::{Value, json};

const NOW: i64 = 1_893_456_000_000; // 2030-01-01T00:00:00Z

fn q(ty: &str, list: &[(&str, &str)]) -> kiln_search::SearchQuery {
    let pairs: Vec<(String, String)> =
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    parse_at(ty, &pairs, NOW).unwrap_or_else(|e| panic!("{list:?}: {e:?}"))
}

fn hit(r: &Value, name: &str, value: &str) -> bool {
    let ty = r["resourceType"].as_str().unwrap();
    matches(&q(ty, &[(name, value)]), r)
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient", "id": "p1",
        "meta": {"lastUpdated": "2024-05-01T10:00:00Z", "profile": ["http://x.org/fhir/StructureDefinition/base/patient"]},
        "identifier": [{"type": {"coding": [{"system": "http://t", "code": "MR"}], "text": "Medical record"}, "system": "urn:s", "value": "123"}],
        "active": true,
        "name": [{"family": "Müller", "given": ["José"]}],
        "gender": "female",
        "birthDate": "1974-12-25",
        "address": [{"city": "Genève"}],
        "managingOrganization": {"reference": "Organization/o1"},
        "generalPractitioner": [{"identifier": {"system": "urn:npi", "value": "999"}}]
    })
}

#[test]
fn date_prefixes() {
    let p = patient(); // born 1974-12-25 (a whole day)
    let cases = [
        ("1974-12-25", true),
        ("1974-12", true),
        ("1974", true),
        ("1974-12-25T10:00:00Z", false),
        ("eq1974-12-26", false),
        ("ne1974-12-26", true),
        ("ne1974", false),
        ("gt1974-12-24", true),
        ("gt1974-12-25", false),
        ("gt1974", false),
        ("lt1974-12-26", true),
        ("lt1974-12-25", false),
        ("lt1975", true),
        ("ge1974-12-25", true),
        ("ge1974-12-26", false),
        ("ge1974-12-24", true),
        ("le1974-12-25", true),
        ("le1974-12-24", false),
        ("sa1974-12-24", true),
        ("sa1974-12", false),
        ("eb1974-12-26", true),
        ("eb1974-12-25", false),
        ("ap1975", true),
        ("ap2025", false),
    ];
    for (value, want) in cases {
        assert_eq!(hit(&p, "birthdate", value), want, "birthdate={value}");
    }
    // A period against a date: the period [Jan 1 10:00, open) lies in no finite range.
    let enc = json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}, "period": {"start": "2020-01-01T10:00:00Z"}});
    assert!(!hit(&enc, "date", "2020-01-01"));
    assert!(hit(&enc, "date", "gt2020-01-01"));
    assert!(hit(&enc, "date", "ge2020-01-01"));
    assert!(!hit(&enc, "date", "lt2020-01-01"));
    assert!(hit(&enc, "date", "sa2019-12-31"));
    assert!(hit(&enc, "date", "ap2020-01-01"));
    assert!(hit(&p, "_lastUpdated", "ge2024-05-01T09:00:00Z"));
    assert!(!hit(&p, "_lastUpdated", "gt2024-05-01T10:00:00Z"));
    assert!(hit(&p, "_lastUpdated", "2024-05-01T12:00:00+02:00"), "offsets are honoured");
}

#[test]
fn number_and_quantity_prefixes() {
    let ra = json!({"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/p1"},
        "prediction": [{"probabilityDecimal": 100}]});
    for (value, want) in [
        ("100", true),
        ("100.0", false),
        ("1e2", true),
        ("99", false),
        ("ne99", true),
        ("ne100", false),
        ("gt99", true),
        ("gt100", false),
        ("lt101", true),
        ("lt100", false),
        ("ge100", true),
        ("le100", true),
        ("le99", false),
        ("sa98", true),
        ("sa99.5", true),
        ("sa100", false),
        ("eb102", true),
        ("eb100", false),
        ("ap95", true),
        ("ap80", false),
    ] {
        assert_eq!(hit(&ra, "probability", value), want, "probability={value}");
    }
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "w"},
        "valueQuantity": {"value": 5.4, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg"}});
    for (value, want) in [
        ("5.4", true),
        ("5.4|http://unitsofmeasure.org|mg", true),
        ("5.4||mg", true),
        ("5.4||milligram", true),
        ("5.4|http://other|mg", false),
        ("5.4|http://unitsofmeasure.org|g", false),
        ("gt5|http://unitsofmeasure.org|mg", true),
        ("lt5||mg", false),
        ("le5.4||mg", true),
        ("ap5||mg", true),
        ("ap4||mg", false),
        ("ne5.4", false),
    ] {
        assert_eq!(hit(&obs, "value-quantity", value), want, "value-quantity={value}");
    }
}

#[test]
fn token_modifiers() {
    let p = patient();
    assert!(hit(&p, "gender", "female"));
    assert!(hit(&p, "gender", "male,female"), "OR");
    assert!(!hit(&p, "gender", "male"));
    assert!(hit(&p, "gender", "|female"), "no system on a plain code");
    assert!(!hit(&p, "gender", "http://hl7.org/fhir/administrative-gender|female"));
    assert!(hit(&p, "gender:not", "male"));
    assert!(!hit(&p, "gender:not", "female"));
    assert!(!hit(&p, "gender:not", "male,female"));
    assert!(hit(&p, "active", "true") && !hit(&p, "active", "false"));
    assert!(
        hit(&p, "identifier", "urn:s|123")
            && hit(&p, "identifier", "123")
            && hit(&p, "identifier", "urn:s|")
    );
    assert!(!hit(&p, "identifier", "urn:other|123") && !hit(&p, "identifier", "|123"));
    assert!(hit(&p, "identifier:of-type", "http://t|MR|123"));
    assert!(!hit(&p, "identifier:of-type", "http://t|MR|124"));
    assert!(hit(&p, "identifier:text", "medical"));
    assert!(!hit(&p, "identifier:text", "record"));
    assert!(hit(&p, "_id", "p1") && !hit(&p, "_id", "p2"));
    let obs = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Pulse"}});
    assert!(
        hit(&obs, "code:text", "heart")
            && hit(&obs, "code:text", "PULSE")
            && !hit(&obs, "code:text", "rate")
    );
    // `:not` matches resources without the element at all.
    let bare = json!({"resourceType": "Patient", "id": "x"});
    assert!(hit(&bare, "gender:not", "female"));
}

#[test]
fn string_modifiers() {
    let p = patient();
    assert!(hit(&p, "name", "mul") && hit(&p, "name", "MÜL") && hit(&p, "name", "jose"));
    assert!(!hit(&p, "name", "ller"));
    assert!(hit(&p, "name:contains", "ller") && hit(&p, "name:contains", "OSÉ"));
    assert!(
        hit(&p, "name:exact", "Müller")
            && !hit(&p, "name:exact", "muller")
            && !hit(&p, "name:exact", "Mül")
    );
    assert!(hit(&p, "name", "josé müller"), "the whole name");
    assert!(hit(&p, "address-city", "gen"));
}

#[test]
fn missing_on_every_kind() {
    let p = patient();
    for (name, present) in [
        ("name", true),
        ("birthdate", true),
        ("death-date", false),
        ("organization", true),
        ("email", false),
    ] {
        assert_eq!(hit(&p, &format!("{name}:missing"), "false"), present, "{name}");
        assert_eq!(hit(&p, &format!("{name}:missing"), "true"), !present, "{name}");
    }
}

#[test]
fn reference_and_uri_modifiers() {
    let p = patient();
    assert!(hit(&p, "organization", "Organization/o1") && hit(&p, "organization", "o1"));
    assert!(hit(&p, "organization", "http://elsewhere.org/fhir/Organization/o1"));
    assert!(hit(&p, "organization:Organization", "o1"));
    assert!(!hit(&p, "organization", "Organization/o2"));
    assert!(hit(&p, "general-practitioner:identifier", "urn:npi|999"));
    assert!(!hit(&p, "general-practitioner:identifier", "urn:npi|998"));
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Group/g1"}});
    assert!(
        hit(&obs, "subject", "g1")
            && hit(&obs, "subject:Group", "g1")
            && !hit(&obs, "subject:Patient", "g1")
    );
    assert!(!hit(&obs, "patient", "g1"));
    let qr = json!({"resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": "http://x.org/Questionnaire/q|2.0"});
    assert!(hit(&qr, "questionnaire", "http://x.org/Questionnaire/q"));
    assert!(hit(&qr, "questionnaire", "http://x.org/Questionnaire/q|2.0"));
    assert!(!hit(&qr, "questionnaire", "http://x.org/Questionnaire/q|1.0"));
    assert!(hit(&p, "_profile", "http://x.org/fhir/StructureDefinition/base/patient"));
    assert!(!hit(&p, "_profile", "http://x.org/fhir/StructureDefinition"));
    assert!(hit(&p, "_profile:below", "http://x.org/fhir/StructureDefinition"));
    assert!(!hit(&p, "_profile:below", "http://y.org"));
    assert!(hit(&p, "_profile:above", "http://x.org/fhir/StructureDefinition/base/patient/v2"));
    assert!(!hit(&p, "_profile:above", "http://x.org/fhir"));
}

#[test]
fn and_or_and_type() {
    let p = patient();
    assert!(matches(&q("Patient", &[("gender", "female"), ("name", "mul")]), &p));
    assert!(!matches(&q("Patient", &[("gender", "female"), ("name", "smith")]), &p));
    assert!(matches(&q("Patient", &[("name", "smith,mul")]), &p));
    assert!(matches(&q("Patient", &[]), &p));
    assert!(!matches(&q("Observation", &[]), &p));
    assert!(matches(&q("", &[("_type", "Patient"), ("_id", "p1")]), &p));
    assert!(!matches(&q("", &[("_type", "Observation")]), &p));
    assert!(
        matches(&q("Patient", &[("unknown-thing", "x")]), &p),
        "unknown parameters do not filter"
    );
}

#[test]
fn composite_needs_one_occurrence() {
    let bp = json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
    "component": [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
    ]});
    assert!(hit(&bp, "component-code-value-quantity", "http://loinc.org|8480-6$gt100"));
    assert!(hit(&bp, "component-code-value-quantity", "http://loinc.org|8462-4$80"));
    assert!(
        !hit(&bp, "component-code-value-quantity", "http://loinc.org|8462-4$gt100"),
        "values of different components must not mix"
    );
    assert!(hit(&bp, "component-code-value-quantity", "http://loinc.org|8462-4$gt100,8480-6$120"));
    let single = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}, "valueQuantity": {"value": 70, "code": "kg"}});
    assert!(hit(&single, "code-value-quantity", "http://loinc.org|29463-7$ge70||kg"));
    assert!(!hit(&single, "code-value-quantity", "http://loinc.org|29463-7$gt70"));
}

#[test]
fn chains_and_has_use_the_resource_set() {
    let org = json!({"resourceType": "Organization", "id": "o1", "name": "Acme Health", "partOf": {"reference": "Organization/o0"}});
    let parent = json!({"resourceType": "Organization", "id": "o0", "name": "Big Holding"});
    let p = patient();
    let obs = json!({"resourceType": "Observation", "id": "ob1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]}, "subject": {"reference": "Patient/p1"}});
    let other = json!({"resourceType": "Observation", "id": "ob2", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "9999-9"}]}, "subject": {"reference": "Patient/p2"}});
    let set = vec![org, parent, p.clone(), obs.clone(), other];
    let check = |ty: &str, list: &[(&str, &str)], r: &Value| matches_in(&q(ty, list), r, &set);
    assert!(check("Observation", &[("subject.name", "mul")], &obs));
    assert!(check("Observation", &[("subject:Patient.name", "mul")], &obs));
    assert!(!check("Observation", &[("subject.name", "smith")], &obs));
    assert!(check("Observation", &[("subject:Patient.organization.name", "acme")], &obs));
    assert!(check("Observation", &[("subject:Patient.organization.partof.name", "big")], &obs));
    assert!(!check("Observation", &[("subject:Patient.organization.partof.name", "acme")], &obs));
    assert!(!matches(&q("Observation", &[("subject.name", "mul")]), &obs), "no set, no chain");
    assert!(check("Patient", &[("_has:Observation:patient:code", "1234-5")], &p));
    assert!(!check("Patient", &[("_has:Observation:patient:code", "9999-9")], &p));
    assert!(check(
        "Organization",
        &[("_has:Patient:organization:_has:Observation:patient:code", "1234-5")],
        &set[0]
    ));
    assert!(!check("Organization", &[("_has:Patient:organization:gender", "male")], &set[0]));
}

#[test]
fn ucum_quantities_compare_in_base_units() {
    let obs: Value = serde_json::from_str(
        r#"{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 5, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}"#,
    )
    .unwrap();
    let ucum = "http://unitsofmeasure.org";
    let cases = [
        (format!("5|{ucum}|mg"), true),
        (format!("0.005|{ucum}|g"), true),
        (format!("5e3|{ucum}|ug"), true), // 5000 would be more precise than 5 mg
        (format!("5000|{ucum}|ug"), false),
        (format!("5|{ucum}|g"), false),
        (format!("gt4|{ucum}|mg"), true),
        (format!("lt0.004|{ucum}|g"), false),
        (format!("gt0.004|{ucum}|g"), true),
        (format!("5|{ucum}|mL"), false), // another dimension
        ("5||mg".to_string(), true),     // unit as written, no conversion
        ("5".to_string(), true),
    ];
    for (value, expected) in cases {
        assert_eq!(hit(&obs, "value-quantity", &value), expected, "value-quantity={value}");
    }
    // A unit outside the known subset still matches as written.
    let odd: Value = serde_json::from_str(
        r#"{"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 3, "system": "http://unitsofmeasure.org", "code": "[IU]"}}"#,
    )
    .unwrap();
    assert!(hit(&odd, "value-quantity", &format!("3|{ucum}|[IU]")));
}
