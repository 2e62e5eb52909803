//! Each class of structural problem yields an error issue with the right code and location.

use kiln_model::{IssueCode, Severity};
use kiln_validate::{ResourceContext, Validator, ValidatorOptions, validate_resource};
use serde_json::{Value, json};

/// Validates `resource` and asserts an issue with `code` at `expression` exists.
#[track_caller]
fn expect(resource: &Value, code: IssueCode, expression: &str) {
    let issues = validate_resource(resource);
    assert!(
        issues.iter().any(|i| i.code == code && i.expression.as_deref() == Some(expression)),
        "expected {code:?} at {expression}, got {issues:#?}"
    );
    assert!(issues.iter().all(|i| i.severity == Severity::Error));
    assert!(issues.iter().all(|i| !i.diagnostics.is_empty()));
}

/// Like `expect`, for a Patient built from `fields`.
#[track_caller]
fn expect_patient(fields: Value, code: IssueCode, expression: &str) {
    let mut patient = json!({"resourceType": "Patient"});
    for (k, v) in fields.as_object().unwrap() {
        patient[k] = v.clone();
    }
    expect(&patient, code, expression);
}

/// An Observation with the required elements plus `fields`.
fn observation(fields: Value) -> Value {
    let mut obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    for (k, v) in fields.as_object().unwrap() {
        obs[k] = v.clone();
    }
    obs
}

#[test]
fn top_level_shape() {
    expect(&json!([]), IssueCode::Structure, "Resource");
    expect(&json!("Patient"), IssueCode::Structure, "Resource");
    expect(&json!({"id": "x"}), IssueCode::Required, "Resource");
    expect(&json!({"resourceType": 5}), IssueCode::Structure, "Resource");
    expect(&json!({"resourceType": "Foo"}), IssueCode::Invalid, "Resource");
    expect(&json!({"resourceType": "DomainResource"}), IssueCode::Invalid, "Resource");
    expect(&json!({"resourceType": "HumanName"}), IssueCode::Invalid, "Resource");
    expect_patient(json!({"id": "has space"}), IssueCode::Value, "Patient.id");
    expect_patient(json!({"id": "x".repeat(65)}), IssueCode::Value, "Patient.id");
}

#[test]
fn unknown_elements() {
    expect_patient(json!({"foo": 1}), IssueCode::Structure, "Patient.foo");
    expect_patient(json!({"name": [{"foo": "x"}]}), IssueCode::Structure, "Patient.name[0].foo");
    expect_patient(
        json!({"contact": [{"foo": "x"}]}),
        IssueCode::Structure,
        "Patient.contact[0].foo",
    );
    expect_patient(
        json!({"name": [{"resourceType": "HumanName"}]}),
        IssueCode::Structure,
        "Patient.name[0].resourceType",
    );
    expect_patient(
        json!({"extension": [{"url": "http://x.org", "foo": 1}]}),
        IssueCode::Structure,
        "Patient.extension[0].foo",
    );
    expect_patient(
        json!({"contained": [{"resourceType": "Organization", "foo": 1}]}),
        IssueCode::Structure,
        "Patient.contained[0].foo",
    );
    let questionnaire = json!({
        "resourceType": "Questionnaire", "status": "draft",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "2", "type": "string", "foo": 1}]}]
    });
    expect(&questionnaire, IssueCode::Structure, "Questionnaire.item[0].item[0].foo");
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "foo": 1}}]});
    expect(&bundle, IssueCode::Structure, "Bundle.entry[0].resource.foo");
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Nope"}}]});
    expect(&bundle, IssueCode::Invalid, "Bundle.entry[0].resource");
    let parameters = json!({"resourceType": "Parameters", "parameter": [{"name": "p", "resource": {"resourceType": "Patient", "foo": 1}}]});
    expect(&parameters, IssueCode::Structure, "Parameters.parameter[0].resource.foo");
}

#[test]
fn choice_types() {
    expect_patient(
        json!({"deceasedDate": "2020-01-01"}),
        IssueCode::Structure,
        "Patient.deceasedDate",
    );
    assert!(
        validate_resource(&json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}))
            .is_empty()
    );
    expect(&observation(json!({"valueFoo": 1})), IssueCode::Structure, "Observation.valueFoo");
    expect(
        &observation(json!({"valueAttachment": {"url": "http://x"}})),
        IssueCode::Structure,
        "Observation.valueAttachment",
    );
    let two = observation(json!({"valueString": "a", "valueBoolean": true}));
    expect(&two, IssueCode::Structure, "Observation.valueBoolean");
    let extension = json!({"extension": [{"url": "http://x.org", "valueFoo": "x"}]});
    expect_patient(extension, IssueCode::Structure, "Patient.extension[0].valueFoo");
}

#[test]
fn json_shapes() {
    expect_patient(json!({"name": {"family": "Doe"}}), IssueCode::Structure, "Patient.name");
    expect_patient(json!({"gender": ["male"]}), IssueCode::Structure, "Patient.gender");
    expect_patient(json!({"name": ["Doe"]}), IssueCode::Structure, "Patient.name[0]");
    expect_patient(
        json!({"name": [{"given": "Jane"}]}),
        IssueCode::Structure,
        "Patient.name[0].given",
    );
    expect_patient(json!({"birthDate": 1970}), IssueCode::Structure, "Patient.birthDate");
    expect_patient(json!({"active": "true"}), IssueCode::Structure, "Patient.active");
    expect_patient(
        json!({"contact": [{"name": "Doe"}]}),
        IssueCode::Structure,
        "Patient.contact[0].name",
    );
    expect_patient(json!({"contained": ["x"]}), IssueCode::Structure, "Patient.contained[0]");
    expect(
        &observation(json!({"valueQuantity": {"value": "72"}})),
        IssueCode::Structure,
        "Observation.valueQuantity.value",
    );
}

#[test]
fn primitive_formats() {
    let cases: &[(&str, Value, &str)] = &[
        ("birthDate", json!("2023-02-29"), "Patient.birthDate"),
        ("birthDate", json!("1970-1-1"), "Patient.birthDate"),
        ("deceasedDateTime", json!("2020-01-01T10:00:00"), "Patient.deceasedDateTime"),
        ("gender", json!("male "), "Patient.gender"),
        ("meta", json!({"lastUpdated": "2020-01-01"}), "Patient.meta.lastUpdated"),
        ("meta", json!({"profile": ["http://x.org/a b"]}), "Patient.meta.profile[0]"),
        ("identifier", json!([{"system": "not a uri"}]), "Patient.identifier[0].system"),
        ("photo", json!([{"data": "not*base64"}]), "Patient.photo[0].data"),
        ("photo", json!([{"url": "http://x.org/a b"}]), "Patient.photo[0].url"),
        ("photo", json!([{"size": -1}]), "Patient.photo[0].size"),
        ("text", json!({"status": "generated", "div": "<p>no div</p>"}), "Patient.text.div"),
        ("name", json!([{"family": "bell\u{7}"}]), "Patient.name[0].family"),
        (
            "multipleBirthInteger",
            serde_json::from_str::<Value>("1.0").unwrap(),
            "Patient.multipleBirthInteger",
        ),
        (
            "extension",
            json!([{"url": "http://x.org", "valueOid": "1.2.3"}]),
            "Patient.extension[0].valueOid",
        ),
        (
            "extension",
            json!([{"url": "http://x.org", "valueUuid": "urn:uuid:1234"}]),
            "Patient.extension[0].valueUuid",
        ),
        (
            "extension",
            json!([{"url": "http://x.org", "valuePositiveInt": 0}]),
            "Patient.extension[0].valuePositiveInt",
        ),
        (
            "extension",
            json!([{"url": "http://x.org", "valueTime": "25:00:00"}]),
            "Patient.extension[0].valueTime",
        ),
        (
            "extension",
            json!([{"url": "http://x.org", "valueInstant": "2020-01-01T00:00:00"}]),
            "Patient.extension[0].valueInstant",
        ),
    ];
    for (field, value, expression) in cases {
        let mut patient = json!({"resourceType": "Patient"});
        patient[*field] = value.clone();
        let issues = validate_resource(&patient);
        assert!(
            issues.iter().any(|i| i.expression.as_deref() == Some(*expression)
                && matches!(i.code, IssueCode::Value | IssueCode::Structure)),
            "{field}: expected an issue at {expression}, got {issues:#?}"
        );
    }
}

#[test]
fn primitive_extension_siblings() {
    let ext = json!({"extension": [{"url": "http://x.org", "valueString": "x"}]});
    // `_x` alone with an extension is fine, without an extension it is not.
    assert!(validate_resource(&json!({"resourceType": "Patient", "_birthDate": ext})).is_empty());
    expect_patient(json!({"_birthDate": {"id": "a"}}), IssueCode::Structure, "Patient.birthDate");
    expect_patient(json!({"_birthDate": [ext]}), IssueCode::Structure, "Patient.birthDate");
    expect_patient(
        json!({"_birthDate": {"foo": 1}}),
        IssueCode::Structure,
        "Patient.birthDate.foo",
    );
    expect_patient(json!({"_name": ext}), IssueCode::Structure, "Patient._name");
    expect_patient(json!({"_foo": ext}), IssueCode::Structure, "Patient._foo");
    // Parallel arrays.
    let given = json!({"name": [{"given": ["a", "b"], "_given": [null]}]});
    expect_patient(given, IssueCode::Structure, "Patient.name[0].given");
    let given = json!({"name": [{"given": ["a", null], "_given": [null, null]}]});
    expect_patient(given, IssueCode::Structure, "Patient.name[0].given[1]");
    let given = json!({"name": [{"_given": [ext, null]}]});
    expect_patient(given, IssueCode::Structure, "Patient.name[0].given[1]");
    let given = json!({"name": [{"given": ["a"], "_given": ext}]});
    expect_patient(given, IssueCode::Structure, "Patient.name[0].given");
    let extension_on_extension =
        json!({"_gender": {"extension": [{"url": "http://x.org", "valueCode": " bad"}]}});
    expect_patient(
        extension_on_extension,
        IssueCode::Value,
        "Patient.gender.extension[0].valueCode",
    );
}

#[test]
fn cardinality() {
    let obs = json!({"resourceType": "Observation", "code": {"text": "x"}});
    expect(&obs, IssueCode::Required, "Observation.status");
    let obs = json!({"resourceType": "Observation", "status": "final"});
    expect(&obs, IssueCode::Required, "Observation.code");
    expect_patient(
        json!({"extension": [{"valueString": "x"}]}),
        IssueCode::Required,
        "Patient.extension[0].url",
    );
    expect_patient(
        json!({"text": {"status": "generated"}}),
        IssueCode::Required,
        "Patient.text.div",
    );
    expect_patient(
        json!({"link": [{"type": "seealso"}]}),
        IssueCode::Required,
        "Patient.link[0].other",
    );
    let bundle = json!({"resourceType": "Bundle"});
    expect(&bundle, IssueCode::Required, "Bundle.type");
    // A required primitive present only through its extension counts as present.
    let obs = json!({"resourceType": "Observation", "code": {"text": "x"},
        "_status": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}});
    assert!(validate_resource(&obs).is_empty());
    // A required choice is satisfied by any of its types.
    let ext = json!({"resourceType": "Patient", "extension": [{"url": "http://x.org", "valueBoolean": true}]});
    assert!(validate_resource(&ext).is_empty());
}

#[test]
fn empty_values() {
    expect_patient(json!({"name": []}), IssueCode::Structure, "Patient.name");
    expect_patient(json!({"name": [{}]}), IssueCode::Structure, "Patient.name[0]");
    expect_patient(json!({"maritalStatus": {}}), IssueCode::Structure, "Patient.maritalStatus");
    expect_patient(json!({"gender": ""}), IssueCode::Value, "Patient.gender");
    expect_patient(json!({"gender": null}), IssueCode::Structure, "Patient.gender");
    expect_patient(
        json!({"name": [{"given": [null]}]}),
        IssueCode::Structure,
        "Patient.name[0].given[0]",
    );
    expect_patient(json!({"name": [null]}), IssueCode::Structure, "Patient.name[0]");
    expect_patient(json!({"_birthDate": {}}), IssueCode::Structure, "Patient.birthDate");
}

#[test]
fn required_bindings() {
    expect_patient(json!({"gender": "boy"}), IssueCode::CodeInvalid, "Patient.gender");
    expect(&observation(json!({"status": "done"})), IssueCode::CodeInvalid, "Observation.status");
    let condition = |system: &str, code: &str| {
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
            "clinicalStatus": {"coding": [{"system": system, "code": code}]}})
    };
    let good = condition("http://terminology.hl7.org/CodeSystem/condition-clinical", "active");
    assert!(validate_resource(&good).is_empty(), "{:?}", validate_resource(&good));
    let bad = condition("http://terminology.hl7.org/CodeSystem/condition-clinical", "sleeping");
    expect(&bad, IssueCode::CodeInvalid, "Condition.clinicalStatus");
    // Codings from other systems are not judged.
    assert!(validate_resource(&condition("http://example.org/local", "sleeping")).is_empty());
    // Non-enumerable value sets (mime types) are never used to reject codes.
    let photo =
        json!({"resourceType": "Patient", "photo": [{"contentType": "application/x-whatever"}]});
    assert!(validate_resource(&photo).is_empty());
    // Binding checks can be switched off.
    let lenient =
        Validator::with_options(ValidatorOptions { check_bindings: false, ..Default::default() });
    assert!(lenient.validate(&json!({"resourceType": "Patient", "gender": "boy"})).is_empty());
}

#[test]
fn five_problems_five_issues() {
    let patient = json!({
        "resourceType": "Patient",
        "id": "bad id",
        "foo": true,
        "gender": "boy",
        "birthDate": "1970-13-01",
        "name": {"family": "Doe"}
    });
    let issues = validate_resource(&patient);
    assert_eq!(issues.len(), 5, "{issues:#?}");
    let expressions: Vec<&str> = issues.iter().filter_map(|i| i.expression.as_deref()).collect();
    assert_eq!(
        expressions,
        ["Patient.id", "Patient.foo", "Patient.gender", "Patient.birthDate", "Patient.name"]
    );
}

#[test]
fn deep_nesting_is_bounded() {
    let mut item = json!({"linkId": "leaf", "type": "display"});
    for i in 0..300 {
        item = json!({"linkId": i.to_string(), "type": "group", "item": [item]});
    }
    let questionnaire = json!({"resourceType": "Questionnaire", "status": "draft", "item": [item]});
    let issues = validate_resource(&questionnaire);
    assert!(issues.iter().any(|i| i.code == IssueCode::TooLong), "{issues:?}");
    assert!(issues.len() < 5);
}

#[test]
fn extra_checks_run_on_every_resource() {
    let validator = Validator::new().with_check(
        |ctx: &ResourceContext<'_>, issues: &mut Vec<kiln_model::Issue>| {
            if ctx.resource.get("id").is_none() {
                issues.push(kiln_model::Issue::error(IssueCode::Invariant, "no id").at(ctx.path));
            }
        },
    );
    let bundle = json!({"resourceType": "Bundle", "id": "b", "type": "collection",
        "entry": [{"resource": {"resourceType": "Patient"}}]});
    let issues = validator.validate(&bundle);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].expression.as_deref(), Some("Bundle.entry[0].resource"));
}

#[test]
fn reference_targets_are_warned_about() {
    let with_org = |reference: &str| json!({"resourceType": "Patient", "managingOrganization": {"reference": reference}});
    for fine in [
        "Organization/1",
        "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
        "http://x.org/fhir/Organization/1",
    ] {
        assert!(validate_resource(&with_org(fine)).is_empty(), "{fine}");
    }
    // A local reference needs its contained resource (invariant ref-1).
    let mut contained = with_org("#org");
    contained["contained"] = json!([{"resourceType": "Organization", "id": "org", "name": "x"}]);
    assert!(validate_resource(&contained).is_empty());
    for wrong in ["Patient/1", "http://x.org/fhir/Patient/1/_history/2", "Patient?identifier=a"] {
        let issues = validate_resource(&with_org(wrong));
        assert_eq!(issues.len(), 1, "{wrong}: {issues:?}");
        assert_eq!(issues[0].severity, Severity::Warning);
        assert_eq!(issues[0].expression.as_deref(), Some("Patient.managingOrganization"));
    }
    let typed = json!({"resourceType": "Patient", "managingOrganization": {"type": "Patient", "display": "x"}});
    assert_eq!(validate_resource(&typed).len(), 1);
    // Medplum's own types have targets too.
    let project = json!({"resourceType": "Project", "owner": {"reference": "Patient/1"}});
    assert_eq!(validate_resource(&project).len(), 1);
    let off = Validator::with_options(ValidatorOptions {
        check_reference_targets: false,
        ..Default::default()
    });
    assert!(off.validate(&with_org("Patient/1")).is_empty());
}
