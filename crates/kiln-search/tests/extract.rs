//! Extraction, one test per value type, on small hand-made resources.

use kiln_search::{
    DateRange, IndexValue, OfType, RefValue, StringValue, Token, date_range, extract,
};
use serde_json::{Value, json};

fn rows(resource: &Value, code: &str) -> Vec<IndexValue> {
    extract(resource).into_iter().filter(|e| e.code == code).map(|e| e.value).collect()
}

fn s(exact: &str, normalized: &str) -> IndexValue {
    IndexValue::String(StringValue { exact: exact.into(), normalized: normalized.into() })
}

fn tok(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
    IndexValue::Token(Token {
        system: system.map(Into::into),
        code: code.map(Into::into),
        text: text.map(Into::into),
    })
}

fn ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "meta": {
            "lastUpdated": "2024-05-01T10:00:00.123Z",
            "profile": ["http://example.org/StructureDefinition/p"],
            "tag": [{"system": "http://example.org/tags", "code": "t1", "display": "Tag One"}],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
            "source": "http://example.org/source#abc"
        },
        "identifier": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "Medical Record"},
            "system": "urn:oid:1.2.3", "value": "12345"
        }],
        "active": true,
        "name": [{"family": "Müller", "given": ["José", "Maria"], "prefix": ["Dr."]}],
        "telecom": [{"system": "phone", "value": "555-1234"}],
        "gender": "female",
        "birthDate": "1974-12",
        "address": [{"line": ["1 Rue Étienne"], "city": "Genève", "postalCode": "1201", "country": "CH"}],
        "generalPractitioner": [{"reference": "https://other.example/fhir/Practitioner/gp1/_history/2"}],
        "managingOrganization": {"identifier": {"system": "urn:ids", "value": "org-9"}}
    })
}

#[test]
fn base_resource_parameters() {
    let p = patient();
    assert_eq!(rows(&p, "_id"), vec![tok(None, Some("p1"), None)]);
    let t = ms("2024-05-01T10:00:00.123Z");
    assert_eq!(rows(&p, "_lastUpdated"), vec![IndexValue::Date(DateRange { lo: t, hi: t })]);
    assert_eq!(
        rows(&p, "_profile"),
        vec![IndexValue::Uri("http://example.org/StructureDefinition/p".into())]
    );
    assert_eq!(
        rows(&p, "_tag"),
        vec![tok(Some("http://example.org/tags"), Some("t1"), Some("tag one"))]
    );
    assert_eq!(rows(&p, "_security").len(), 1);
    assert_eq!(rows(&p, "_source"), vec![IndexValue::Uri("http://example.org/source#abc".into())]);
}

#[test]
fn strings_human_name_and_address() {
    let p = patient();
    let name = rows(&p, "name");
    for v in [s("Müller", "muller"), s("José", "jose"), s("Maria", "maria"), s("Dr.", "dr.")] {
        assert!(name.contains(&v), "{v:?} not in {name:?}");
    }
    assert!(name.contains(&s("Dr. José Maria Müller", "dr. jose maria muller")), "{name:?}");
    assert!(rows(&p, "family").contains(&s("Müller", "muller")));
    assert_eq!(rows(&p, "given").len(), 2);
    let address = rows(&p, "address");
    assert!(address.contains(&s("Genève", "geneve")), "{address:?}");
    assert!(address.contains(&s("1 Rue Étienne", "1 rue etienne")), "{address:?}");
    assert_eq!(rows(&p, "address-city"), vec![s("Genève", "geneve")]);
    assert_eq!(rows(&p, "address-postalcode"), vec![s("1201", "1201")]);
}

#[test]
fn tokens_of_every_shape() {
    let p = patient();
    assert_eq!(rows(&p, "gender"), vec![tok(None, Some("female"), None)]);
    assert_eq!(rows(&p, "active"), vec![tok(None, Some("true"), None)]);
    assert_eq!(rows(&p, "phone"), vec![tok(Some("phone"), Some("555-1234"), None)]);
    let ids = rows(&p, "identifier");
    assert!(ids.contains(&tok(Some("urn:oid:1.2.3"), Some("12345"), Some("medical record"))));
    assert!(ids.contains(&IndexValue::OfType(OfType {
        system: Some("http://terminology.hl7.org/CodeSystem/v2-0203".into()),
        code: Some("MR".into()),
        value: "12345".into(),
    })));
    let obs = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Pulse"}});
    let code = rows(&obs, "code");
    assert_eq!(
        code,
        vec![
            tok(Some("http://loinc.org"), Some("8867-4"), Some("heart rate")),
            tok(None, None, Some("pulse"))
        ]
    );
}

#[test]
fn dates_periods_and_timings() {
    let p = patient();
    assert_eq!(rows(&p, "birthdate"), vec![IndexValue::Date(date_range("1974-12").unwrap())]);
    let enc = json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
        "period": {"start": "2020-01-01T10:00:00Z"}});
    let lo = ms("2020-01-01T10:00:00Z");
    assert_eq!(rows(&enc, "date"), vec![IndexValue::Date(DateRange { lo, hi: i64::MAX })]);
    let enc = json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
        "period": {"end": "2020-01-02"}});
    assert_eq!(
        rows(&enc, "date"),
        vec![IndexValue::Date(DateRange { lo: i64::MIN, hi: ms("2020-01-03T00:00:00Z") - 1 })]
    );
    let plan = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": "Patient/p1"},
        "activity": [{"detail": {"status": "scheduled", "scheduledTiming": {"event": ["2021-03-01", "2021-03-05"]}}}]});
    let lo = ms("2021-03-01T00:00:00Z");
    let hi = ms("2021-03-06T00:00:00Z") - 1;
    assert_eq!(rows(&plan, "activity-date"), vec![IndexValue::Date(DateRange { lo, hi })]);
}

#[test]
fn numbers_and_quantities() {
    let ra = json!({"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/p1"},
        "prediction": [{"probabilityDecimal": 0.02}, {"probabilityRange": {"low": {"value": 1}, "high": {"value": 3}}}]});
    let probability = rows(&ra, "probability");
    assert_eq!(probability.len(), 2, "{probability:?}");
    let IndexValue::Number(n) = &probability[0] else { panic!("{probability:?}") };
    assert_eq!((n.lo, n.hi, n.text.as_str()), (0.015, 0.025, "0.02"));
    let IndexValue::Number(r) = &probability[1] else { panic!("{probability:?}") };
    assert_eq!((r.lo, r.hi), (0.5, 3.5));

    // Parsed from text: the `json!` macro would turn 72.50 into an f64 and lose the zero.
    let obs: Value = serde_json::from_str(
        r#"{"resourceType": "Observation", "status": "final", "code": {"text": "w"},
            "valueQuantity": {"value": 72.50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}"#,
    )
    .unwrap();
    let q = rows(&obs, "value-quantity");
    let [IndexValue::Quantity(q), IndexValue::Quantity(c)] = q.as_slice() else { panic!("{q:?}") };
    assert_eq!((q.number.lo, q.number.hi, q.number.text.as_str()), (72.495, 72.505, "72.50"));
    assert_eq!(
        (q.system.as_deref(), q.code.as_deref(), q.unit.as_deref()),
        (Some("http://unitsofmeasure.org"), Some("kg"), Some("kg"))
    );
    // The UCUM copy in base units (grams), converted in decimal.
    assert_eq!((c.number.lo, c.number.hi, c.number.min), (72495.0, 72505.0, 72500.0));
    assert_eq!(
        (c.system.as_deref(), c.code.as_deref(), c.unit.as_deref()),
        (Some(kiln_search::UCUM_CANONICAL), Some("g"), None)
    );

    let item = json!({"resourceType": "ChargeItem", "status": "billed", "code": {"text": "x"},
        "subject": {"reference": "Patient/p1"}, "priceOverride": {"value": 40, "currency": "EUR"}});
    let money = rows(&item, "price-override");
    let [IndexValue::Quantity(m)] = money.as_slice() else { panic!("{money:?}") };
    assert_eq!(
        (m.system.as_deref(), m.code.as_deref()),
        (Some("urn:iso:std:iso:4217"), Some("EUR"))
    );
}

#[test]
fn references_local_absolute_canonical_identifier() {
    let p = patient();
    assert_eq!(
        rows(&p, "general-practitioner"),
        vec![IndexValue::Reference(RefValue::Local {
            target_type: "Practitioner".into(),
            id: "gp1".into()
        })]
    );
    assert_eq!(
        rows(&p, "organization"),
        vec![IndexValue::Reference(RefValue::Identifier {
            system: Some("urn:ids".into()),
            value: Some("org-9".into())
        })]
    );
    let qr = json!({"resourceType": "QuestionnaireResponse", "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/q|2.0"});
    assert_eq!(
        rows(&qr, "questionnaire"),
        vec![IndexValue::Reference(RefValue::Url {
            url: "http://example.org/Questionnaire/q".into(),
            version: Some("2.0".into())
        })]
    );
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "#contained"}, "performer": [{"reference": "Practitioner/d1"}]});
    // A local reference: kept for chains into the container's contained resources.
    assert_eq!(
        rows(&obs, "subject"),
        vec![IndexValue::Reference(RefValue::Contained { reference: "#contained".into() })]
    );
    // `patient` needs `resolve()` to know the target is a Patient: not from a `#` reference.
    assert!(rows(&obs, "patient").is_empty());
    assert_eq!(rows(&obs, "performer").len(), 1);
}

#[test]
fn uris_and_unknown_input() {
    let vs = json!({"resourceType": "ValueSet", "status": "active", "url": "http://example.org/ValueSet/v"});
    assert_eq!(rows(&vs, "url"), vec![IndexValue::Uri("http://example.org/ValueSet/v".into())]);
    assert!(extract(&json!({"resourceType": "NoSuchType", "id": "x"})).is_empty());
    assert!(extract(&json!({"id": "x"})).is_empty());
    assert!(extract(&json!([1, 2])).is_empty());
    // Wrong shapes do not panic and yield nothing for the broken elements.
    let weird = json!({"resourceType": "Patient", "id": 5, "birthDate": "not a date", "name": "x", "gender": {"a": 1}});
    let entries = extract(&weird);
    assert!(entries.iter().all(|e| e.code != "birthdate"));
}
