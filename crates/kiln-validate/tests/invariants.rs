//! FHIRPath invariants of the base definitions: violations are reported with the constraint's
//! severity, code `invariant`, `"<key>: <human>"` and the element's path, in top-level,
//! contained and Bundle entry resources alike.

use kiln_model::{Issue, IssueCode, Severity};
use kiln_validate::{Validator, ValidatorOptions, validate_resource};
use serde_json::{Value, json};

/// The invariant issues with key `key` (diagnostics start with `"<key>: "`).
fn with_key<'a>(issues: &'a [Issue], key: &str) -> Vec<&'a Issue> {
    let prefix = format!("{key}: ");
    issues
        .iter()
        .filter(|i| i.code == IssueCode::Invariant && i.diagnostics.starts_with(&prefix))
        .collect()
}

/// Asserts exactly one issue of `key`, an error at `path`, and no other issue.
#[track_caller]
fn expect_error(resource: &Value, key: &str, path: &str) {
    let issues = validate_resource(resource);
    let found = with_key(&issues, key);
    assert_eq!(found.len(), 1, "expected one {key}, got {issues:#?}");
    assert_eq!(found[0].severity, Severity::Error);
    assert_eq!(found[0].expression.as_deref(), Some(path), "{issues:#?}");
    assert!(found[0].diagnostics.len() > key.len() + 2, "the human text follows the key");
    assert_eq!(issues.len(), 1, "{issues:#?}");
}

#[track_caller]
fn expect_valid(resource: &Value) {
    let issues = validate_resource(resource);
    assert!(issues.is_empty(), "{issues:#?}");
}

fn patient_with_contact(contact: Value) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": "Doe"}], "contact": [contact]})
}

#[test]
fn pat_1_contact_needs_details() {
    let bare = json!({"relationship": [{"text": "Mother"}], "gender": "female"});
    let patient = patient_with_contact(bare);
    expect_error(&patient, "pat-1", "Patient.contact[0]");
    let issue = &validate_resource(&patient)[0];
    assert!(issue.diagnostics.starts_with("pat-1: SHALL at least contain a contact's details"));
    for fine in [
        json!({"name": {"family": "Doe"}}),
        json!({"telecom": [{"system": "phone", "value": "555"}]}),
        json!({"address": {"city": "Paris"}}),
        json!({"organization": {"reference": "Organization/1"}}),
    ] {
        expect_valid(&patient_with_contact(fine));
    }
    // The second of two contacts is the broken one.
    let two = json!({"resourceType": "Patient", "contact": [
        {"name": {"family": "A"}},
        {"relationship": [{"text": "Friend"}]}
    ]});
    expect_error(&two, "pat-1", "Patient.contact[1]");
}

#[test]
fn obs_6_data_absent_reason_only_without_value() {
    let obs = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Heart rate"},
        "valueQuantity": {"value": 80, "unit": "/min"},
        "dataAbsentReason": {"text": "not measured"}
    });
    expect_error(&obs, "obs-6", "Observation");
    let mut fine = obs.clone();
    fine.as_object_mut().unwrap().remove("valueQuantity");
    expect_valid(&fine);
}

#[test]
fn per_1_start_not_after_end() {
    let patient = json!({"resourceType": "Patient", "name": [
        {"family": "A"},
        {"family": "B", "period": {"start": "2020-05-01", "end": "2019-01-01"}}
    ]});
    expect_error(&patient, "per-1", "Patient.name[1].period");
    let encounter = json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T09:00:00Z"}
    });
    expect_error(&encounter, "per-1", "Encounter.period");
    // Datatypes inside datatypes: Identifier.period.
    let deep = json!({"resourceType": "Patient", "identifier": [
        {"value": "1", "period": {"start": "2021", "end": "2020"}}
    ]});
    expect_error(&deep, "per-1", "Patient.identifier[0].period");
    // Equal, open-ended, or of different precision (undecidable: not a violation).
    for period in [
        json!({"start": "2020-01-01", "end": "2020-01-01"}),
        json!({"start": "2020-01-01"}),
        json!({"end": "2020-01-01"}),
        json!({"start": "2020-01-01T10:00:00Z", "end": "2020-01-01"}),
    ] {
        expect_valid(
            &json!({"resourceType": "Patient", "name": [{"family": "A", "period": period}]}),
        );
    }
}

#[test]
fn nested_resources_report_their_location() {
    let bad = patient_with_contact(json!({"relationship": [{"text": "Mother"}]}));
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Patient"}}, {"resource": bad.clone()}]
    });
    expect_error(&bundle, "pat-1", "Bundle.entry[1].resource.contact[0]");
    let parameters =
        json!({"resourceType": "Parameters", "parameter": [{"name": "r", "resource": bad}]});
    expect_error(&parameters, "pat-1", "Parameters.parameter[0].resource.contact[0]");
    // A Bundle's own invariants: bdl-5 (an entry needs a resource, request or response).
    let empty_entry = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}]});
    expect_error(&empty_entry, "bdl-5", "Bundle.entry[0]");
}

#[test]
fn resource_and_root_resource_in_contained_resources() {
    // %resource is the contained Observation (obs-7 compares with %resource.code), not the
    // DiagnosticReport holding it.
    let report = json!({
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "result": [{"reference": "#obs"}],
        "contained": [{
            "resourceType": "Observation",
            "id": "obs",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 80},
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "valueQuantity": {"value": 80}}]
        }]
    });
    expect_error(&report, "obs-7", "DiagnosticReport.contained[0]");

    // %rootResource of a contained resource is its container: ref-1 finds the sibling.
    let org = |id: &str, part_of: &str| json!({"resourceType": "Organization", "id": id, "name": id, "partOf": {"reference": part_of}});
    let mut patient = json!({
        "resourceType": "Patient",
        "managingOrganization": {"reference": "#a"},
        "generalPractitioner": [{"reference": "#b"}],
        "contained": [org("a", "#b"), {"resourceType": "Organization", "id": "b", "name": "b"}]
    });
    expect_valid(&patient);
    patient["contained"][0] = org("a", "#missing");
    expect_error(&patient, "ref-1", "Patient.contained[0].partOf");

    // dom-3: a contained resource nobody refers to (a warning: Medplum accepts it).
    let mut orphan = patient.clone();
    orphan["contained"][0] = org("a", "#b");
    orphan.as_object_mut().unwrap().remove("managingOrganization");
    let issues = validate_resource(&orphan);
    let dom3 = with_key(&issues, "dom-3");
    assert_eq!(dom3.len(), 1, "{issues:#?}");
    assert_eq!(dom3[0].severity, Severity::Warning);
    assert_eq!(dom3[0].expression.as_deref(), Some("Patient"));
    assert_eq!(issues.len(), 1, "{issues:#?}");
    // ... unless it refers to its container ('#').
    orphan["contained"][0] = org("a", "#");
    orphan["contained"][0]["partOf"] = json!({"reference": "#"});
    let issues = validate_resource(&orphan);
    assert!(with_key(&issues, "dom-3").is_empty(), "{issues:#?}");
}

#[test]
fn bundle_entries_are_their_own_root() {
    // ref-1 resolves '#x' in the entry resource's own contained list, not in other entries.
    let entry_patient = |contained: bool| {
        let mut p =
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "#org"}});
        if contained {
            p["contained"] = json!([{"resourceType": "Organization", "id": "org", "name": "x"}]);
        }
        p
    };
    let ok = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": entry_patient(true)}]});
    expect_valid(&ok);
    let other_entry = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": entry_patient(true)},
        {"resource": entry_patient(false)}
    ]});
    expect_error(&other_entry, "ref-1", "Bundle.entry[1].resource.managingOrganization");
}

#[test]
fn warnings_are_reported_without_rejecting() {
    let questionnaire =
        json!({"resourceType": "Questionnaire", "status": "draft", "name": "not an identifier"});
    let issues = validate_resource(&questionnaire);
    let found = with_key(&issues, "que-0");
    assert_eq!(found.len(), 1, "{issues:#?}");
    assert_eq!(found[0].severity, Severity::Warning);
    assert_eq!(found[0].expression.as_deref(), Some("Questionnaire"));
    assert!(!kiln_model::has_failure(&issues));
}

#[test]
fn best_practice_invariants_are_opt_in() {
    let patient = json!({"resourceType": "Patient"});
    expect_valid(&patient);
    let strict = Validator::with_options(ValidatorOptions {
        best_practice_invariants: true,
        ..Default::default()
    });
    let issues = strict.validate(&patient);
    let dom6 = with_key(&issues, "dom-6");
    assert_eq!(dom6.len(), 1, "{issues:#?}");
    assert_eq!(dom6[0].severity, Severity::Warning);
    assert!(strict.invariant_keys().contains(&"dom-6"));
    assert!(!Validator::new().invariant_keys().contains(&"dom-6"));
}

#[test]
fn skipped_invariants_and_the_structural_rules_that_replace_them() {
    let validator = Validator::new();
    let keys = validator.invariant_keys();
    for skipped in ["ele-1", "ext-1", "dom-r4b"] {
        assert!(!keys.contains(&skipped), "{skipped}");
        assert!(kiln_validate::skip_reason(skipped).is_some());
    }
    for checked in ["pat-1", "obs-6", "per-1", "ref-1", "dom-3", "que-7", "bdl-7", "txt-1", "txt-2"]
    {
        assert!(keys.contains(&checked), "{checked}");
    }
    assert!(keys.len() > 200, "{}", keys.len());
    // ele-1: an element with nothing but an id.
    expect_error(
        &json!({"resourceType": "Patient", "name": [{"id": "n1"}]}),
        "ele-1",
        "Patient.name[0]",
    );
    let contact = patient_with_contact(json!({"id": "c1"}));
    let issues = validate_resource(&contact);
    assert_eq!(with_key(&issues, "ele-1").len(), 1, "{issues:#?}");
    // ext-1: nested extensions or a value, exactly one.
    let ext = |e: Value| json!({"resourceType": "Patient", "extension": [e]});
    expect_error(
        &ext(
            json!({"url": "http://x.org/a", "valueString": "v", "extension": [{"url": "b", "valueString": "w"}]}),
        ),
        "ext-1",
        "Patient.extension[0]",
    );
    expect_error(&ext(json!({"url": "http://x.org/a"})), "ext-1", "Patient.extension[0]");
    expect_valid(&ext(
        json!({"url": "http://x.org/a", "_valueCode": {"extension": [{"url": "http://x.org/why", "valueString": "masked"}]}}),
    ));
    expect_valid(&ext(
        json!({"url": "http://x.org/a", "extension": [{"url": "b", "valueBoolean": true}]}),
    ));
}

#[test]
fn invariants_run_alongside_structural_errors() {
    // One answer lists every problem: the unknown element and the broken pat-1.
    let patient =
        json!({"resourceType": "Patient", "nickname": "x", "contact": [{"gender": "male"}]});
    let issues = validate_resource(&patient);
    assert_eq!(issues.len(), 2, "{issues:#?}");
    assert_eq!(issues[0].code, IssueCode::Structure);
    assert_eq!(with_key(&issues, "pat-1").len(), 1);
    // A value of the wrong shape is not a site: no invariant is evaluated on it.
    let shapeless = json!({"resourceType": "Patient", "name": [{"period": "2020"}]});
    let issues = validate_resource(&shapeless);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let off =
        Validator::with_options(ValidatorOptions { check_invariants: false, ..Default::default() });
    assert!(off.validate(&patient_with_contact(json!({"gender": "male"}))).is_empty());
    assert!(off.invariant_keys().is_empty());
}

#[test]
fn medplum_invariants() {
    // user-1 (Medplum's User.email is lower case) on a primitive element.
    let user = json!({"resourceType": "User", "firstName": "A", "lastName": "B", "email": "Alice@Example.com"});
    expect_error(&user, "user-1", "User.email");
    let mut fine = user.clone();
    fine["email"] = json!("alice@example.com");
    expect_valid(&fine);
}

fn with_narrative(div: &str) -> Value {
    json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}})
}

const XHTML: &str = "xmlns=\"http://www.w3.org/1999/xhtml\"";

#[test]
fn txt_1_rejects_unsafe_or_malformed_markup() {
    for body in [
        "<script>alert(1)</script>",
        "<p onclick=\"alert(1)\">Peter</p>",
        "<a href=\"javascript:alert(1)\">Peter</a>",
        "<form><input/></form>Peter",
        "<iframe src=\"http://x.org\"/>Peter",
    ] {
        expect_error(
            &with_narrative(&format!("<div {XHTML}>{body}</div>")),
            "txt-1",
            "Patient.text.div",
        );
    }
    // Not well formed, or not one XHTML div.
    for div in [
        format!("<div {XHTML}><p>Peter</div>"),
        "<div>Peter</div>".to_string(),
        format!("<div {XHTML}>a</div><div {XHTML}>b</div>"),
    ] {
        expect_error(&with_narrative(&div), "txt-1", "Patient.text.div");
    }
    // Nested resources too: a contained resource may carry no narrative (dom-1), so a
    // Bundle entry.
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": with_narrative(&format!("<div {XHTML}><script>x()</script></div>"))}]});
    expect_error(&bundle, "txt-1", "Bundle.entry[0].resource.text.div");
}

#[test]
fn txt_2_warns_about_an_empty_narrative() {
    for body in ["", "   \n  ", "<p> </p>", "<br/>"] {
        let patient = with_narrative(&format!("<div {XHTML}>{body}</div>"));
        let issues = validate_resource(&patient);
        let found = with_key(&issues, "txt-2");
        assert_eq!(found.len(), 1, "{body:?}: {issues:#?}");
        assert_eq!(found[0].severity, Severity::Warning, "downgraded: official examples have it");
        assert_eq!(found[0].expression.as_deref(), Some("Patient.text.div"));
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert!(!kiln_model::has_failure(&issues));
    }
    // Unsafe and empty: both.
    let issues = validate_resource(&with_narrative(&format!("<div {XHTML}><script/></div>")));
    assert_eq!(with_key(&issues, "txt-1").len(), 1, "{issues:#?}");
    assert_eq!(with_key(&issues, "txt-2").len(), 1, "{issues:#?}");
    // A narrative with text, a character reference or an image only.
    for body in ["Peter <b>Chalmers</b>", "&#160;&amp;", "<img src=\"#photo\" alt=\"\"/>"] {
        expect_valid(&with_narrative(&format!("<div {XHTML}>{body}</div>")));
    }
}
