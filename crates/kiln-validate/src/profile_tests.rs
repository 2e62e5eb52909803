//! One test per profile rule, on small profiles given as differentials (which also exercises
//! the snapshot expansion) and on the built-in US Core ones.

use super::*;
use serde_json::json;

const LOINC: &str = "http://loinc.org";

/// A differential-only StructureDefinition.
fn sd(url: &str, ty: &str, base: &str, elements: Value) -> Value {
    json!({
        "resourceType": "StructureDefinition",
        "url": url,
        "name": "Test",
        "status": "active",
        "kind": "resource",
        "abstract": false,
        "type": ty,
        "baseDefinition": base,
        "derivation": "constraint",
        "differential": {"element": elements}
    })
}

fn profiles_with(defs: &[Value]) -> Profiles {
    let mut profiles = Profiles::with_builtin();
    for d in defs {
        profiles.add_structure_definition(d).expect("the profile is accepted");
    }
    profiles
}

/// (severity, expression, diagnostics) of each issue.
fn check(profiles: &Profiles, resource: Value, url: &str) -> Vec<(Severity, String, String)> {
    profiles
        .validate(&resource, url)
        .into_iter()
        .map(|i| (i.severity, i.expression.unwrap_or_default(), i.diagnostics))
        .collect()
}

fn errors_at(issues: &[(Severity, String, String)], path: &str) -> usize {
    issues.iter().filter(|(s, p, _)| *s == Severity::Error && p == path).count()
}

/// Fails unless some issue is at `path` and its diagnostics contain `text`.
#[track_caller]
fn assert_issue(issues: &[(Severity, String, String)], path: &str, text: &str) {
    assert!(issues.iter().any(|(_, p, d)| p == path && d.contains(text)), "{issues:#?}");
}

fn only_errors(issues: &[(Severity, String, String)]) -> Vec<&(Severity, String, String)> {
    issues.iter().filter(|(s, _, _)| *s == Severity::Error).collect()
}

const PAT: &str = "http://example.org/StructureDefinition/test-patient";
const OBS: &str = "http://example.org/StructureDefinition/test-observation";
const CORE_PATIENT: &str = "http://hl7.org/fhir/StructureDefinition/Patient";
const CORE_OBSERVATION: &str = "http://hl7.org/fhir/StructureDefinition/Observation";

#[test]
fn cardinality_of_elements() {
    let p = profiles_with(&[sd(
        PAT,
        "Patient",
        CORE_PATIENT,
        json!([
            {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1, "max": "2"},
            {"id": "Patient.name.given", "path": "Patient.name.given", "min": 1},
            {"id": "Patient.deceased[x]", "path": "Patient.deceased[x]", "max": "0"}
        ]),
    )]);
    let ok = json!({"resourceType": "Patient", "identifier": [{"value": "1"}],
        "name": [{"given": ["A"]}]});
    assert!(only_errors(&check(&p, ok, PAT)).is_empty());

    let none = json!({"resourceType": "Patient", "name": [{"family": "B"}]});
    let issues = check(&p, none, PAT);
    assert_eq!(errors_at(&issues, "Patient.identifier"), 1, "{issues:#?}");
    assert_eq!(errors_at(&issues, "Patient.name[0].given"), 1, "{issues:#?}");
    assert!(issues.iter().all(|(_, _, d)| d.contains(PAT)), "{issues:#?}");

    let many = json!({"resourceType": "Patient", "identifier": [{"value": "1"}, {"value": "2"},
        {"value": "3"}], "deceasedBoolean": false});
    let issues = check(&p, many, PAT);
    assert_issue(&issues, "Patient.identifier", "At most 2");
    assert_eq!(errors_at(&issues, "Patient.deceasedBoolean"), 1, "{issues:#?}");
}

#[test]
fn fixed_values_match_exactly() {
    let p = profiles_with(&[sd(
        PAT,
        "Patient",
        CORE_PATIENT,
        json!([
            {"id": "Patient.gender", "path": "Patient.gender", "fixedCode": "female"},
            {"id": "Patient.maritalStatus", "path": "Patient.maritalStatus",
             "fixedCodeableConcept": {"text": "single"}}
        ]),
    )]);
    let ok =
        json!({"resourceType": "Patient", "gender": "female", "maritalStatus": {"text": "single"}});
    assert!(only_errors(&check(&p, ok, PAT)).is_empty());
    let bad = json!({"resourceType": "Patient", "gender": "male",
        "maritalStatus": {"text": "single", "coding": [{"code": "S"}]}});
    let issues = check(&p, bad, PAT);
    assert_eq!(errors_at(&issues, "Patient.gender"), 1, "{issues:#?}");
    // Fixed is exact: an extra member is a difference.
    assert_eq!(errors_at(&issues, "Patient.maritalStatus"), 1, "{issues:#?}");
}

#[test]
fn patterns_match_as_subsets() {
    let p = profiles_with(&[sd(
        OBS,
        "Observation",
        CORE_OBSERVATION,
        json!([{"id": "Observation.code", "path": "Observation.code",
            "patternCodeableConcept": {"coding": [{"system": LOINC, "code": "1234-5"}]}}]),
    )]);
    let obs = |code: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x",
            "coding": [{"system": "http://other", "code": "9"},
                       {"system": LOINC, "code": code, "display": "Something"}]}})
    };
    assert!(only_errors(&check(&p, obs("1234-5"), OBS)).is_empty());
    let issues = check(&p, obs("9999-9"), OBS);
    assert_eq!(errors_at(&issues, "Observation.code"), 1, "{issues:#?}");
}

/// Patient.identifier sliced by `value` on `system`: an `mrn` slice (1..1).
fn identifier_slices(rules: &str) -> Profiles {
    profiles_with(&[sd(
        PAT,
        "Patient",
        CORE_PATIENT,
        json!([
            {"id": "Patient.identifier", "path": "Patient.identifier",
             "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": rules}},
            {"id": "Patient.identifier:mrn", "path": "Patient.identifier", "sliceName": "mrn",
             "min": 1, "max": "1"},
            {"id": "Patient.identifier:mrn.system", "path": "Patient.identifier.system",
             "min": 1, "fixedUri": "http://hospital.example/mrn"},
            {"id": "Patient.identifier:mrn.value", "path": "Patient.identifier.value", "min": 1}
        ]),
    )])
}

#[test]
fn value_discriminators_assign_slices() {
    let p = identifier_slices("open");
    let ok = json!({"resourceType": "Patient", "identifier": [
        {"system": "http://other", "value": "x"},
        {"system": "http://hospital.example/mrn", "value": "1"}]});
    assert!(only_errors(&check(&p, ok, PAT)).is_empty());

    // No mrn: the slice's minimum is reported on the sliced element, naming the slice.
    let missing = json!({"resourceType": "Patient", "identifier": [{"system": "http://other"}]});
    let issues = check(&p, missing, PAT);
    assert_issue(&issues, "Patient.identifier", "slice 'mrn'");
    // An mrn without its value: checked against the slice's own elements.
    let no_value = json!({"resourceType": "Patient", "identifier": [
        {"system": "http://hospital.example/mrn"}]});
    let issues = check(&p, no_value, PAT);
    assert_eq!(errors_at(&issues, "Patient.identifier[0].value"), 1, "{issues:#?}");
    // Two of them.
    let two = json!({"resourceType": "Patient", "identifier": [
        {"system": "http://hospital.example/mrn", "value": "1"},
        {"system": "http://hospital.example/mrn", "value": "2"}]});
    let issues = check(&p, two, PAT);
    assert_issue(&issues, "Patient.identifier", "At most 1");
}

#[test]
fn closed_and_open_at_end_slicing() {
    let value = json!({"resourceType": "Patient", "identifier": [
        {"system": "http://other", "value": "x"},
        {"system": "http://hospital.example/mrn", "value": "1"}]});
    let closed = identifier_slices("closed");
    let issues = check(&closed, value.clone(), PAT);
    assert_eq!(errors_at(&issues, "Patient.identifier[0]"), 1, "{issues:#?}");
    assert!(issues.iter().any(|(_, _, d)| d.contains("closed")));

    let at_end = identifier_slices("openAtEnd");
    let issues = check(&at_end, value, PAT);
    assert_eq!(errors_at(&issues, "Patient.identifier[1]"), 1, "{issues:#?}");
    let fine = json!({"resourceType": "Patient", "identifier": [
        {"system": "http://hospital.example/mrn", "value": "1"},
        {"system": "http://other", "value": "x"}]});
    assert!(only_errors(&check(&at_end, fine, PAT)).is_empty());
}

#[test]
fn pattern_discriminator_on_this() {
    let p = profiles_with(&[sd(
        OBS,
        "Observation",
        CORE_OBSERVATION,
        json!([
            {"id": "Observation.category", "path": "Observation.category",
             "slicing": {"discriminator": [{"type": "pattern", "path": "$this"}], "rules": "open"}},
            {"id": "Observation.category:lab", "path": "Observation.category", "sliceName": "lab",
             "min": 1, "max": "1",
             "patternCodeableConcept": {"coding": [{"system":
                "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}}
        ]),
    )]);
    let obs = |code: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "category": [{"coding": [{"system":
                "http://terminology.hl7.org/CodeSystem/observation-category", "code": code}]}]})
    };
    assert!(only_errors(&check(&p, obs("laboratory"), OBS)).is_empty());
    let issues = check(&p, obs("imaging"), OBS);
    assert_issue(&issues, "Observation.category", "slice 'lab'");
}

#[test]
fn type_discriminator_on_a_choice() {
    let p = profiles_with(&[sd(
        OBS,
        "Observation",
        CORE_OBSERVATION,
        json!([
            {"id": "Observation.value[x]", "path": "Observation.value[x]",
             "slicing": {"discriminator": [{"type": "type", "path": "$this"}], "rules": "closed"}},
            {"id": "Observation.value[x]:valueQuantity", "path": "Observation.value[x]",
             "sliceName": "valueQuantity", "type": [{"code": "Quantity"}]},
            {"id": "Observation.value[x]:valueQuantity.system",
             "path": "Observation.value[x].system", "min": 1, "fixedUri": "http://unitsofmeasure.org"}
        ]),
    )]);
    let base = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    let mut ok = base.clone();
    ok["valueQuantity"] = json!({"value": 1, "system": "http://unitsofmeasure.org", "code": "g"});
    assert!(only_errors(&check(&p, ok, OBS)).is_empty());
    let mut wrong_system = base.clone();
    wrong_system["valueQuantity"] = json!({"value": 1, "system": "http://other", "code": "g"});
    let issues = check(&p, wrong_system, OBS);
    assert_eq!(errors_at(&issues, "Observation.valueQuantity.system"), 1, "{issues:#?}");
    let mut other_type = base;
    other_type["valueString"] = json!("high");
    let issues = check(&p, other_type, OBS);
    assert_eq!(errors_at(&issues, "Observation.valueString"), 1, "{issues:#?}");
}

#[test]
fn profile_discriminator_checks_the_referenced_profile() {
    const BUNDLE: &str = "http://example.org/StructureDefinition/test-bundle";
    let p = profiles_with(&[
        sd(
            PAT,
            "Patient",
            CORE_PATIENT,
            json!([
                {"id": "Patient.gender", "path": "Patient.gender", "min": 1}
            ]),
        ),
        sd(
            BUNDLE,
            "Bundle",
            "http://hl7.org/fhir/StructureDefinition/Bundle",
            json!([
                {"id": "Bundle.entry", "path": "Bundle.entry",
                 "slicing": {"discriminator": [{"type": "profile", "path": "resource"}], "rules": "open"}},
                {"id": "Bundle.entry:patient", "path": "Bundle.entry", "sliceName": "patient",
                 "min": 1, "max": "1"},
                {"id": "Bundle.entry:patient.resource", "path": "Bundle.entry.resource", "min": 1,
                 "type": [{"code": "Patient", "profile": [PAT]}]}
            ]),
        ),
    ]);
    let bundle = |gender: Option<&str>| {
        let mut patient = json!({"resourceType": "Patient"});
        if let Some(g) = gender {
            patient["gender"] = json!(g);
        }
        json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]})
    };
    assert!(only_errors(&check(&p, bundle(Some("male")), BUNDLE)).is_empty());
    let issues = check(&p, bundle(None), BUNDLE);
    assert_issue(&issues, "Bundle.entry", "slice 'patient'");
}

#[test]
fn exists_discriminator() {
    let p = profiles_with(&[sd(
        PAT,
        "Patient",
        CORE_PATIENT,
        json!([
            {"id": "Patient.identifier", "path": "Patient.identifier",
             "slicing": {"discriminator": [{"type": "exists", "path": "period"}], "rules": "open"}},
            {"id": "Patient.identifier:dated", "path": "Patient.identifier", "sliceName": "dated",
             "min": 1},
            {"id": "Patient.identifier:dated.period", "path": "Patient.identifier.period", "min": 1},
            {"id": "Patient.identifier:dated.value", "path": "Patient.identifier.value", "min": 1}
        ]),
    )]);
    let ok = json!({"resourceType": "Patient", "identifier": [
        {"system": "x"}, {"value": "1", "period": {"start": "2020"}}]});
    assert!(only_errors(&check(&p, ok, PAT)).is_empty());
    let undated = json!({"resourceType": "Patient", "identifier": [{"value": "1"}]});
    let issues = check(&p, undated, PAT);
    assert_issue(&issues, "Patient.identifier", "slice 'dated'");
    let dated_no_value =
        json!({"resourceType": "Patient", "identifier": [{"period": {"start": "2020"}}]});
    let issues = check(&p, dated_no_value, PAT);
    assert_eq!(errors_at(&issues, "Patient.identifier[0].value"), 1, "{issues:#?}");
}

#[test]
fn extension_slices_use_the_extension_profile() {
    const RACE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
    let p = profiles_with(&[sd(
        PAT,
        "Patient",
        CORE_PATIENT,
        json!([
            {"id": "Patient.extension", "path": "Patient.extension",
             "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}},
            {"id": "Patient.extension:race", "path": "Patient.extension", "sliceName": "race",
             "min": 1, "max": "1", "type": [{"code": "Extension", "profile": [RACE]}]}
        ]),
    )]);
    let patient = |parts: Value| {
        json!({"resourceType": "Patient", "extension": [
            {"url": "http://example.org/other", "valueString": "x"},
            {"url": RACE, "extension": parts}]})
    };
    let omb = json!({"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"}});
    let text = json!({"url": "text", "valueString": "White"});
    assert!(only_errors(&check(&p, patient(json!([omb, text])), PAT)).is_empty());
    // The nested `text` part is required by us-core-race.
    let issues = check(&p, patient(json!([omb])), PAT);
    assert!(
        issues.iter().any(|(_, p, d)| p == "Patient.extension[1].extension"
            && d.contains("slice 'text'")
            && d.contains(RACE)),
        "{issues:#?}"
    );
    // A race extension with a value instead of parts.
    let issues = check(
        &p,
        json!({"resourceType": "Patient", "extension": [
        {"url": RACE, "valueString": "White"}]}),
        PAT,
    );
    assert_eq!(errors_at(&issues, "Patient.extension[0].valueString"), 1, "{issues:#?}");
    // No race at all.
    let issues = check(&p, json!({"resourceType": "Patient"}), PAT);
    assert_issue(&issues, "Patient.extension", "slice 'race'");
}

#[test]
fn bindings_by_strength() {
    const VS: &str = "http://hl7.org/fhir/us/core/ValueSet/us-core-problem-or-health-concern";
    const COND: &str = "http://example.org/StructureDefinition/test-condition";
    let with = |strength: &str| {
        profiles_with(&[sd(
            COND,
            "Condition",
            "http://hl7.org/fhir/StructureDefinition/Condition",
            json!([{"id": "Condition.category", "path": "Condition.category",
                    "binding": {"strength": strength, "valueSet": VS}}]),
        )])
    };
    let condition = |code: &str| {
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
            "category": [{"coding": [{"system":
                "http://hl7.org/fhir/us/core/CodeSystem/condition-category", "code": code}]}]})
    };
    let required = with("required");
    assert!(check(&required, condition("health-concern"), COND).is_empty());
    let issues = check(&required, condition("nonsense"), COND);
    assert_eq!(errors_at(&issues, "Condition.category[0]"), 1, "{issues:#?}");
    let extensible = with("extensible");
    let issues = check(&extensible, condition("nonsense"), COND);
    assert!(only_errors(&issues).is_empty(), "{issues:#?}");
    assert!(issues.iter().any(|(s, p, _)| *s == Severity::Warning && p == "Condition.category[0]"));
    // A value set that cannot be enumerated (SNOMED CT by filter) is not checked.
    let lenient = profiles_with(&[sd(
        COND,
        "Condition",
        "http://hl7.org/fhir/StructureDefinition/Condition",
        json!([{"id": "Condition.code", "path": "Condition.code", "binding": {"strength": "required",
            "valueSet": "http://hl7.org/fhir/us/core/ValueSet/us-core-condition-code"}}]),
    )]);
    let mut c = condition("health-concern");
    c["code"] = json!({"coding": [{"system": "http://snomed.info/sct", "code": "123"}]});
    assert!(check(&lenient, c, COND).is_empty());
}

#[test]
fn max_length_and_reference_targets() {
    let p = profiles_with(&[
        sd(
            PAT,
            "Patient",
            CORE_PATIENT,
            json!([
                {"id": "Patient.name.family", "path": "Patient.name.family", "maxLength": 5}
            ]),
        ),
        sd(
            OBS,
            "Observation",
            CORE_OBSERVATION,
            json!([
                {"id": "Observation.subject", "path": "Observation.subject", "min": 1,
                 "type": [{"code": "Reference", "targetProfile":
                    ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]}]}
            ]),
        ),
    ]);
    let issues =
        check(&p, json!({"resourceType": "Patient", "name": [{"family": "Abcdefgh"}]}), PAT);
    assert_eq!(errors_at(&issues, "Patient.name[0].family"), 1, "{issues:#?}");
    assert!(
        only_errors(&check(
            &p,
            json!({"resourceType": "Patient", "name": [{"family": "Abc"}]}),
            PAT
        ))
        .is_empty()
    );
    let obs = |reference: &str| {
        json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": reference}})
    };
    assert!(only_errors(&check(&p, obs("Patient/1"), OBS)).is_empty());
    assert!(
        only_errors(&check(&p, obs("https://x.example/fhir/Patient/1/_history/2"), OBS)).is_empty()
    );
    let issues = check(&p, obs("Group/1"), OBS);
    assert_eq!(errors_at(&issues, "Observation.subject.reference"), 1, "{issues:#?}");
}

#[test]
fn profile_invariants_are_evaluated() {
    let p = profiles_with(&[sd(
        PAT,
        "Patient",
        CORE_PATIENT,
        json!([
            {"id": "Patient", "path": "Patient", "constraint": [{"key": "test-1", "severity": "error",
                "human": "A name or an identifier", "expression": "name.exists() or identifier.exists()"}]},
            {"id": "Patient.contact", "path": "Patient.contact", "constraint": [{"key": "test-2",
                "severity": "warning", "human": "A contact has a name", "expression": "name.exists()"}]}
        ]),
    )]);
    let issues = check(
        &p,
        json!({"resourceType": "Patient", "contact": [
        {"name": {"family": "A"}}, {"gender": "male"}]}),
        PAT,
    );
    assert!(
        issues
            .iter()
            .any(|(s, p, d)| *s == Severity::Error && p == "Patient" && d.starts_with("test-1:"))
    );
    assert!(issues.iter().any(|(s, p, d)| *s == Severity::Warning
        && p == "Patient.contact[1]"
        && d.starts_with("test-2:")));
    assert_eq!(issues.len(), 2, "{issues:#?}");
}

#[test]
fn us_core_patient_invariant_and_type() {
    let p = Profiles::builtin();
    const US: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";
    let issues = p.validate(
        &json!({"resourceType": "Patient", "identifier": [{"system": "s", "value": "v"}],
        "gender": "male", "name": [{"text": "only text"}]}),
        US,
    );
    assert!(issues.iter().any(|i| i.diagnostics.starts_with("us-core-6:")), "{issues:#?}");
    let issues = p.validate(&json!({"resourceType": "Observation"}), US);
    assert_eq!(issues.len(), 1);
    assert!(issues[0].diagnostics.contains("constrains Patient"));
    let issues = p.validate(&json!({"resourceType": "Patient"}), "http://nowhere.example/x");
    assert!(issues[0].diagnostics.contains("not known"));
}

#[test]
fn bad_input_never_panics() {
    let p = Profiles::builtin();
    let urls = p.urls();
    let deep = (0..200).fold(json!("x"), |v, _| json!({"extension": [v]}));
    let inputs = [
        json!(null),
        json!([]),
        json!("Patient"),
        json!({"resourceType": 5}),
        json!({"resourceType": "Patient", "identifier": 7, "name": [null, 3, "x"], "extension": [{"url": 3}]}),
        json!({"resourceType": "Observation", "component": [{"code": []}], "category": {"coding": "x"},
            "valueQuantity": [1, 2], "effectiveDateTime": {"a": 1}}),
        json!({"resourceType": "Patient", "extension": [deep]}),
    ];
    for url in &urls {
        for input in &inputs {
            let _ = p.validate(input, url);
            let _ = p.validate_claimed(input, "X");
        }
    }
    // A compiled profile without elements checks only the resource type.
    let bare = CompiledProfile::new(ProfileDef {
        url: "http://x/bare".into(),
        version: None,
        name: String::new(),
        type_name: "Patient".into(),
        base_definition: None,
        snapshot: true,
        elements: Vec::new(),
    });
    assert!(p.validate_with(&json!({"resourceType": "Patient"}), &bare, "Patient").is_empty());
    // Unusable StructureDefinitions are refused, not a panic.
    let mut p = Profiles::with_builtin();
    assert!(p.add_structure_definition(&json!({"resourceType": "Patient"})).is_err());
    assert!(
        p.add_structure_definition(&sd(PAT, "Patient", "http://nowhere/base", json!([]))).is_err()
    );
    assert!(
        p.add_structure_definition(&sd(
            PAT,
            "Patient",
            CORE_PATIENT,
            json!([{"id": "Patient.x:y.z", "path": "Patient.x.z"}])
        ))
        .is_err()
    );
    assert!(
        p.add_structure_definition(&sd(
            PAT,
            "Patient",
            CORE_PATIENT,
            json!([{"id": "", "path": ""}])
        ))
        .is_err()
    );
}

#[test]
fn profile_check_hooks_into_the_validator() {
    let check = ProfileCheck::new(Arc::new(Profiles::with_builtin()));
    let patient = json!({"resourceType": "Patient", "meta": {"profile": [
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|5.0.1",
        "http://nowhere.example/profile"]}});
    let bundle =
        json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]});
    let issues = crate::Validator::new().validate_with(&bundle, &check);
    let errors: Vec<&Issue> = issues.iter().filter(|i| i.severity == Severity::Error).collect();
    assert!(
        errors
            .iter()
            .any(|i| i.expression.as_deref() == Some("Bundle.entry[0].resource.identifier")),
        "{issues:#?}"
    );
    assert!(issues.iter().any(|i| i.severity == Severity::Warning
        && i.expression.as_deref() == Some("Bundle.entry[0].resource.meta.profile[1]")));
}

#[test]
fn profile_invariants_use_member_of_and_conforms_to() {
    const SELF: &str = "http://example.org/StructureDefinition/loops";
    let constraint = |key: &str, expression: &str| json!({"key": key, "severity": "error", "human": key, "expression": expression});
    let p = profiles_with(&[
        sd(
            PAT,
            "Patient",
            CORE_PATIENT,
            json!([{"id": "Patient", "path": "Patient", "constraint": [
                constraint("test-gender", "gender.memberOf('http://hl7.org/fhir/ValueSet/administrative-gender')"),
                constraint("test-us-core", "conformsTo('http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient')")
            ]}]),
        ),
        // A profile whose constraint asks whether the resource conforms to itself: the nesting
        // stops at MAX_CONFORMANCE_DEPTH, where the answer is unknown (empty, not a failure).
        sd(
            SELF,
            "Patient",
            CORE_PATIENT,
            json!([{"id": "Patient", "path": "Patient", "constraint": [
                constraint("test-self", &format!("conformsTo('{SELF}')"))
            ]}]),
        ),
    ]);
    let good = json!({"resourceType": "Patient", "gender": "female",
        "identifier": [{"system": "s", "value": "v"}], "name": [{"family": "F"}]});
    let issues = check(&p, good.clone(), PAT);
    assert!(!issues.iter().any(|(s, _, _)| *s == Severity::Error), "{issues:#?}");
    let bad = json!({"resourceType": "Patient", "gender": "robot", "name": [{"family": "F"}]});
    let issues = check(&p, bad, PAT);
    for key in ["test-gender:", "test-us-core:"] {
        assert!(issues.iter().any(|(_, _, d)| d.starts_with(key)), "{key} {issues:#?}");
    }
    let issues = check(&p, good, SELF);
    assert!(!issues.iter().any(|(s, _, _)| *s == Severity::Error), "{issues:#?}");
}

#[test]
fn project_value_sets_come_from_the_terminology_given() {
    const VS: &str = "http://example.org/ValueSet/lab-codes";
    const CS: &str = "http://example.org/CodeSystem/lab";
    let mut p = profiles_with(&[sd(
        OBS,
        "Observation",
        CORE_OBSERVATION,
        json!([
            {"id": "Observation", "path": "Observation", "constraint": [{"key": "test-member",
                "severity": "error", "human": "a lab code",
                "expression": format!("code.memberOf('{VS}')")}]},
            {"id": "Observation.code", "path": "Observation.code",
             "binding": {"strength": "required", "valueSet": format!("{VS}|1.0")}},
            {"id": "Observation.status", "path": "Observation.status",
             "binding": {"strength": "required",
                "valueSet": "http://hl7.org/fhir/ValueSet/observation-status|4.0.1"}}
        ]),
    )]);
    // Built-in value sets are not asked for; the project's one is, once, without version.
    assert_eq!(p.value_set_urls(), [VS]);
    assert_eq!(member_of_literals("a.memberOf( 'x') and b.memberOf(%v) or memberOf('y"), ["x"]);
    let obs = |code: &str| {
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": CS, "code": code}]}})
    };
    // The built-in terminology does not know the value set: neither check can judge.
    assert!(only_errors(&check(&p, obs("other"), OBS)).is_empty());
    let mut snapshot = crate::SnapshotTerminology::new();
    snapshot.insert(&format!("{VS}|1.0"), [(CS.to_string(), "glucose".to_string())]);
    p.set_terminology(Arc::new(snapshot));
    let issues = check(&p, obs("glucose"), OBS);
    assert!(only_errors(&issues).is_empty(), "{issues:#?}");
    let issues = check(&p, obs("other"), OBS);
    assert_eq!(errors_at(&issues, "Observation.code"), 1, "{issues:#?}");
    assert_issue(&issues, "Observation.code", VS);
    assert!(issues.iter().any(|(s, _, d)| *s == Severity::Error && d.starts_with("test-member:")));
    // Built-in value sets still answer through the snapshot.
    let gender = "http://hl7.org/fhir/ValueSet/administrative-gender";
    assert_eq!(p.terminology().member_of(None, "female", gender), Some(true));
    assert_eq!(p.terminology().member_of(None, "female", "http://example.org/none"), None);
}

#[test]
fn discriminator_paths_are_split_into_steps() {
    use DStep::*;
    assert_eq!(
        discriminator_steps("extension('http://x.org/a.b').value").unwrap(),
        [Extension("http://x.org/a.b".into()), Name("value")]
    );
    assert_eq!(
        discriminator_steps("value.ofType(FHIR.Quantity).code").unwrap(),
        [Name("value"), OfType("Quantity"), Name("code")]
    );
    assert_eq!(discriminator_steps("$this.resolve()").unwrap(), [Resolve]);
    assert_eq!(
        discriminator_steps("item.resolve().code").unwrap(),
        [Name("item"), Resolve, Name("code")]
    );
    for bad in ["where(true)", "extension(x)", "resolve(1)", "a.(b", "extension('x)", "a..b"] {
        assert!(discriminator_steps(bad).is_none(), "{bad}");
    }
}

#[test]
fn of_type_discriminator_looks_at_values_of_that_type() {
    let p = profiles_with(&[sd(
        OBS,
        "Observation",
        CORE_OBSERVATION,
        json!([
            {"id": "Observation.component", "path": "Observation.component",
             "slicing": {"discriminator": [{"type": "pattern",
                "path": "value.ofType(CodeableConcept)"}], "rules": "open"}},
            {"id": "Observation.component:smoker", "path": "Observation.component",
             "sliceName": "smoker", "max": "1"},
            {"id": "Observation.component:smoker.value[x]", "path": "Observation.component.value[x]",
             "type": [{"code": "CodeableConcept"}], "patternCodeableConcept":
                {"coding": [{"system": "http://example.org/s", "code": "smoker"}]}},
            {"id": "Observation.component:smoker.interpretation",
             "path": "Observation.component.interpretation", "min": 1}
        ]),
    )]);
    let concept =
        |code: &str| json!({"coding": [{"system": "http://example.org/s", "code": code}]});
    let obs = |components: Value| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "component": components})
    };
    // Only the smoker concept is in the slice: the other concept and the quantity are not.
    let ok = obs(json!([
        {"code": {"text": "a"}, "valueCodeableConcept": concept("smoker"),
         "interpretation": [{"text": "i"}]},
        {"code": {"text": "b"}, "valueCodeableConcept": concept("never")},
        {"code": {"text": "c"}, "valueQuantity": {"value": 1}},
        {"code": {"text": "d"}, "valueString": "smoker"}
    ]));
    let issues = check(&p, ok, OBS);
    assert!(only_errors(&issues).is_empty(), "{issues:#?}");
    // A smoker component is checked against the slice.
    let lacking = obs(json!([
        {"code": {"text": "b"}, "valueCodeableConcept": concept("never")},
        {"code": {"text": "a"}, "valueCodeableConcept": concept("smoker")}
    ]));
    let issues = check(&p, lacking, OBS);
    assert_eq!(errors_at(&issues, "Observation.component[1].interpretation"), 1, "{issues:#?}");
    assert_eq!(only_errors(&issues).len(), 1, "{issues:#?}");
}

#[test]
fn extension_discriminator_follows_the_extension_slice() {
    const SOURCE: &str = "http://example.org/StructureDefinition/source";
    let p = profiles_with(&[sd(
        PAT,
        "Patient",
        CORE_PATIENT,
        json!([
            {"id": "Patient.identifier", "path": "Patient.identifier",
             "slicing": {"discriminator": [{"type": "value",
                "path": format!("extension('{SOURCE}').value")}], "rules": "open"}},
            {"id": "Patient.identifier:national", "path": "Patient.identifier",
             "sliceName": "national", "min": 1, "max": "1"},
            {"id": "Patient.identifier:national.system", "path": "Patient.identifier.system",
             "min": 1},
            {"id": "Patient.identifier:national.extension", "path": "Patient.identifier.extension",
             "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}},
            {"id": "Patient.identifier:national.extension:source",
             "path": "Patient.identifier.extension", "sliceName": "source", "min": 1, "max": "1",
             "type": [{"code": "Extension", "profile": [SOURCE]}]},
            {"id": "Patient.identifier:national.extension:source.value[x]",
             "path": "Patient.identifier.extension.value[x]", "fixedCode": "national"}
        ]),
    )]);
    let identifier = |source: &str, system: Option<&str>| {
        let mut id = json!({"value": "1", "extension": [{"url": SOURCE, "valueCode": source}]});
        if let Some(system) = system {
            id["system"] = json!(system);
        }
        id
    };
    let patient = |ids: Value| json!({"resourceType": "Patient", "identifier": ids});
    let ok = patient(json!([identifier("local", None), identifier("national", Some("s"))]));
    let issues = check(&p, ok, PAT);
    assert!(only_errors(&issues).is_empty(), "{issues:#?}");
    // The national identifier is held to the slice's rules; the local one is not.
    let issues =
        check(&p, patient(json!([identifier("local", None), identifier("national", None)])), PAT);
    assert_eq!(errors_at(&issues, "Patient.identifier[1].system"), 1, "{issues:#?}");
    assert_eq!(only_errors(&issues).len(), 1, "{issues:#?}");
    // No national identifier at all.
    let issues = check(&p, patient(json!([identifier("local", Some("s"))])), PAT);
    assert_issue(&issues, "Patient.identifier", "slice 'national'");
}

/// Observation.performer sliced by the type of the referenced resource.
fn performer_slices() -> Profiles {
    let reference_to =
        |ty: &str| json!([{"code": "Reference", "targetProfile": [format!("{CORE_SD}{ty}")]}]);
    profiles_with(&[sd(
        OBS,
        "Observation",
        CORE_OBSERVATION,
        json!([
            {"id": "Observation.performer", "path": "Observation.performer",
             "slicing": {"discriminator": [{"type": "type", "path": "resolve()"}], "rules": "open"}},
            {"id": "Observation.performer:org", "path": "Observation.performer",
             "sliceName": "org", "max": "1", "type": reference_to("Organization")},
            {"id": "Observation.performer:prac", "path": "Observation.performer",
             "sliceName": "prac", "max": "1", "type": reference_to("Practitioner")},
            {"id": "Observation.performer:prac.display", "path": "Observation.performer.display",
             "min": 1}
        ]),
    )])
}

#[test]
fn resolve_discriminator_finds_contained_resources() {
    let p = performer_slices();
    let obs = |performers: Value| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "contained": [{"resourceType": "Organization", "id": "o1", "name": "O"},
                          {"resourceType": "Practitioner", "id": "p1"}],
            "performer": performers})
    };
    let ok = obs(json!([{"reference": "#o1"}, {"reference": "#p1", "display": "Dr P"}]));
    let issues = check(&p, ok, OBS);
    assert!(only_errors(&issues).is_empty(), "{issues:#?}");
    let issues = check(&p, obs(json!([{"reference": "#o1"}, {"reference": "#p1"}])), OBS);
    assert_eq!(errors_at(&issues, "Observation.performer[1].display"), 1, "{issues:#?}");
    assert_eq!(only_errors(&issues).len(), 1, "{issues:#?}");
    // Not resolvable here: the type the reference names decides.
    let issues = check(&p, obs(json!([{"reference": "Practitioner/9"}])), OBS);
    assert_eq!(errors_at(&issues, "Observation.performer[0].display"), 1, "{issues:#?}");
}

#[test]
fn resolve_discriminator_finds_bundle_entries() {
    let check = ProfileCheck::new(Arc::new(performer_slices()));
    let practitioner = "urn:uuid:6c5b0a3e-0d4f-4c55-9d0e-2a3f1d1c9e01";
    let organization = "urn:uuid:0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a00";
    let bundle = |display: Option<&str>| {
        let mut prac_ref = json!({"reference": practitioner});
        if let Some(d) = display {
            prac_ref["display"] = json!(d);
        }
        json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "resource": {
                "resourceType": "Observation", "meta": {"profile": [OBS]}, "status": "final",
                "code": {"text": "x"},
                "performer": [{"reference": organization}, prac_ref]}},
            {"fullUrl": practitioner, "resource": {"resourceType": "Practitioner"}},
            {"fullUrl": organization, "resource": {"resourceType": "Organization", "name": "O"}}
        ]})
    };
    let profile_errors = |bundle: Value| -> Vec<Issue> {
        crate::Validator::new()
            .validate_with(&bundle, &check)
            .into_iter()
            .filter(|i| i.severity == Severity::Error)
            .collect()
    };
    let issues = profile_errors(bundle(Some("Dr P")));
    assert!(issues.is_empty(), "{issues:#?}");
    let issues = profile_errors(bundle(None));
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(
        issues[0].expression.as_deref(),
        Some("Bundle.entry[0].resource.performer[1].display"),
        "{issues:#?}"
    );
}

#[test]
fn constraints_inside_a_slice_apply_to_its_values_only() {
    const S: &str = "http://example.org/components";
    let constraint = |key: &str, expression: &str| json!([{"key": key, "severity": "error", "human": key, "expression": expression}]);
    let p = profiles_with(&[sd(
        OBS,
        "Observation",
        CORE_OBSERVATION,
        json!([
            {"id": "Observation.component", "path": "Observation.component",
             "slicing": {"discriminator": [{"type": "pattern", "path": "code"}], "rules": "open"}},
            {"id": "Observation.component:systolic", "path": "Observation.component",
             "sliceName": "systolic", "constraint": constraint("test-sys", "interpretation.exists()")},
            {"id": "Observation.component:systolic.code", "path": "Observation.component.code",
             "patternCodeableConcept": {"coding": [{"system": S, "code": "sys"}]}},
            {"id": "Observation.component:diastolic", "path": "Observation.component",
             "sliceName": "diastolic"},
            {"id": "Observation.component:diastolic.code", "path": "Observation.component.code",
             "patternCodeableConcept": {"coding": [{"system": S, "code": "dia"}]},
             "constraint": constraint("test-dia", "text = 'diastolic'")}
        ]),
    )]);
    let component = |code: &str, text: &str, interpretation: bool| {
        let mut c = json!({"code": {"text": text, "coding": [{"system": S, "code": code}]},
            "valueQuantity": {"value": 80}});
        if interpretation {
            c["interpretation"] = json!([{"text": "normal"}]);
        }
        c
    };
    let obs = |components: Value| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
            "component": components})
    };
    // Each slice's rule holds for its own value; the other slice's value would break it.
    let ok = obs(json!([component("sys", "systolic", true), component("dia", "diastolic", false)]));
    let issues = check(&p, ok, OBS);
    assert!(issues.is_empty(), "{issues:#?}");
    // A value outside the slices is not held to them either.
    let other = obs(json!([component("other", "pulse", false)]));
    assert!(check(&p, other, OBS).is_empty());
    // Broken in the slice they belong to: reported there.
    let bad = obs(json!([component("dia", "low", true), component("sys", "systolic", false)]));
    let issues = check(&p, bad, OBS);
    assert_eq!(issues.len(), 2, "{issues:#?}");
    assert!(issues.iter().any(|(s, p, d)| *s == Severity::Error
        && p == "Observation.component[0].code"
        && d.starts_with("test-dia:")));
    assert!(issues.iter().any(|(s, p, d)| *s == Severity::Error
        && p == "Observation.component[1]"
        && d.starts_with("test-sys:")));
}

#[test]
fn a_constraint_also_on_the_unsliced_element_applies_everywhere() {
    let rule = json!([{"key": "test-all", "severity": "error", "human": "a value",
        "expression": "value.exists()"}]);
    let p = profiles_with(&[sd(
        OBS,
        "Observation",
        CORE_OBSERVATION,
        json!([
            {"id": "Observation.component", "path": "Observation.component", "constraint": rule,
             "slicing": {"discriminator": [{"type": "pattern", "path": "code"}], "rules": "open"}},
            {"id": "Observation.component:a", "path": "Observation.component", "sliceName": "a",
             "constraint": rule},
            {"id": "Observation.component:a.code", "path": "Observation.component.code",
             "patternCodeableConcept": {"text": "a"}},
            {"id": "Observation.component:b", "path": "Observation.component", "sliceName": "b"},
            {"id": "Observation.component:b.code", "path": "Observation.component.code",
             "patternCodeableConcept": {"text": "b"}}
        ]),
    )]);
    // In slice a (which repeats the rule), in slice b (which does not) and in no slice.
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "component": [{"code": {"text": "a"}}, {"code": {"text": "b"}}, {"code": {"text": "c"}}]});
    let issues = check(&p, obs, OBS);
    assert_eq!(issues.len(), 3, "{issues:#?}");
    for path in ["Observation.component[0]", "Observation.component[1]", "Observation.component[2]"]
    {
        assert!(
            issues.iter().any(|(_, p, d)| p == path && d.starts_with("test-all:")),
            "{issues:#?}"
        );
    }
}

#[test]
fn resolve_profile_discriminator_checks_the_resolved_resource() {
    const PRAC: &str = "http://example.org/StructureDefinition/named-practitioner";
    let p = profiles_with(&[
        sd(
            PRAC,
            "Practitioner",
            "http://hl7.org/fhir/StructureDefinition/Practitioner",
            json!([{"id": "Practitioner.name", "path": "Practitioner.name", "min": 1}]),
        ),
        sd(
            OBS,
            "Observation",
            CORE_OBSERVATION,
            json!([
                {"id": "Observation.performer", "path": "Observation.performer",
                 "slicing": {"discriminator": [{"type": "profile", "path": "resolve()"}],
                    "rules": "open"}},
                {"id": "Observation.performer:named", "path": "Observation.performer",
                 "sliceName": "named", "min": 1,
                 "type": [{"code": "Reference", "targetProfile": [PRAC]}]}
            ]),
        ),
    ]);
    let obs = |practitioner: Value, reference: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "contained": [practitioner], "performer": [{"reference": reference}]})
    };
    let named = json!({"resourceType": "Practitioner", "id": "p1", "name": [{"family": "P"}]});
    let issues = check(&p, obs(named.clone(), "#p1"), OBS);
    assert!(only_errors(&issues).is_empty(), "{issues:#?}");
    // The contained practitioner has no name: it does not conform, so the slice is empty.
    let unnamed = json!({"resourceType": "Practitioner", "id": "p1", "gender": "male"});
    let issues = check(&p, obs(unnamed, "#p1"), OBS);
    assert_issue(&issues, "Observation.performer", "slice 'named'");
    // Another type: not in the slice either.
    let org = json!({"resourceType": "Organization", "id": "p1", "name": "O"});
    let issues = check(&p, obs(org, "#p1"), OBS);
    assert_issue(&issues, "Observation.performer", "slice 'named'");
    // Not at hand: judged by the type the reference names.
    let issues = check(&p, obs(named, "Practitioner/9"), OBS);
    assert!(only_errors(&issues).is_empty(), "{issues:#?}");
}
