//! The official US Core 5.0.1 examples against the built-in profiles, and broken copies of
//! them. The package lives outside the repository (`../shared/data/us-core-5.0.1`, relative
//! to the workspace root): without it these tests print why and pass, except under
//! `CI=true`, where it must be there.

use kiln_model::{Issue, Severity};
use kiln_validate::{ProfileCheck, Profiles, Validator};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

/// `../shared/data/us-core-5.0.1/package` beside the workspace (`KILN_SHARED_DATA` names
/// another `shared/data` folder, e.g. from a git worktree).
fn package_dir() -> Option<PathBuf> {
    let shared = std::env::var_os("KILN_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let dir = shared.join("us-core-5.0.1/package");
    if dir.join("package.json").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the US Core package is missing at {}", dir.display());
    }
    println!("skipped: the US Core 5.0.1 package is not at {}", dir.display());
    None
}

fn errors(issues: &[Issue]) -> Vec<&Issue> {
    issues.iter().filter(|i| i.severity == Severity::Error).collect()
}

/// Examples whose errors are the example's own (checked by hand), with the reason.
const KNOWN_BAD: &[(&str, &str)] = &[];

#[test]
fn us_core_examples_validate() {
    let Some(dir) = package_dir() else { return };
    let profiles = Profiles::builtin();
    let check = ProfileCheck::new(Arc::new(Profiles::with_builtin()));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("example"))
        .expect("example dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let (mut checked, mut passed) = (0, 0);
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let resource: Value =
            serde_json::from_slice(&std::fs::read(file).expect("read")).expect("json");
        let claimed: Vec<&str> = resource
            .pointer("/meta/profile")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|u| profiles.get(u).is_some())
            .collect();
        let nested_claims = resource["entry"].as_array().is_some_and(|entries| {
            entries.iter().any(|e| e.pointer("/resource/meta/profile").is_some())
        });
        if claimed.is_empty() && !nested_claims {
            continue;
        }
        checked += 1;
        // Structure, base invariants and the claimed profiles (nested resources too).
        let issues = Validator::new().validate_with(&resource, &check);
        let errs = errors(&issues);
        if errs.is_empty() {
            passed += 1;
        } else if !KNOWN_BAD.iter().any(|(n, _)| *n == name) {
            failures.push(format!("{name}: {errs:#?}"));
        }
    }
    println!("US Core examples: {passed} of {checked} claiming a known profile validate");
    assert!(failures.is_empty(), "{} failing:\n{}", failures.len(), failures.join("\n"));
}

fn example(dir: &std::path::Path, name: &str) -> Value {
    let bytes = std::fs::read(dir.join("example").join(name)).expect("example exists");
    serde_json::from_slice(&bytes).expect("example is JSON")
}

/// The error issues of validating `resource` against its claimed profiles, as
/// (expression, diagnostics).
fn claimed_errors(resource: &Value) -> Vec<(String, String)> {
    let ty = resource["resourceType"].as_str().unwrap_or_default().to_string();
    errors(&Profiles::builtin().validate_claimed(resource, &ty))
        .into_iter()
        .map(|i| (i.expression.clone().unwrap_or_default(), i.diagnostics.clone()))
        .collect()
}

fn has_error(errors: &[(String, String)], path: &str, text: &str) -> bool {
    errors.iter().any(|(p, d)| p == path && d.contains(text))
}

#[test]
fn broken_patient_copies_are_reported() {
    let Some(dir) = package_dir() else { return };
    let patient = example(&dir, "Patient-example.json");
    assert!(claimed_errors(&patient).is_empty());

    for field in ["identifier", "name", "gender"] {
        let mut broken = patient.clone();
        broken.as_object_mut().expect("object").remove(field);
        let errs = claimed_errors(&broken);
        let path = format!("Patient.{field}");
        assert!(
            has_error(&errs, &path, "At least 1 value required, found 0"),
            "{field}: {errs:#?}"
        );
        assert!(errs.iter().all(|(_, d)| d.contains("us-core-patient")), "{errs:#?}");
    }

    let mut broken = patient.clone();
    broken["identifier"][0].as_object_mut().expect("object").remove("system");
    let errs = claimed_errors(&broken);
    assert!(has_error(&errs, "Patient.identifier[0].system", "At least 1"), "{errs:#?}");

    // The race extension (extension[0]) without its required text part.
    let mut broken = patient.clone();
    let race = broken["extension"][0]["extension"].as_array_mut().expect("race parts");
    race.retain(|part| part["url"] != "text");
    let errs = claimed_errors(&broken);
    assert!(has_error(&errs, "Patient.extension[0].extension", "slice 'text'"), "{errs:#?}");
    assert!(errs.iter().any(|(_, d)| d.contains("us-core-race")), "{errs:#?}");

    // An ombCategory part with a detailed code's wrong value type.
    let mut broken = patient.clone();
    broken["extension"][0]["extension"][0] =
        serde_json::json!({"url": "ombCategory", "valueString": "White"});
    let errs = claimed_errors(&broken);
    assert!(
        has_error(&errs, "Patient.extension[0].extension[0].valueString", "not allowed"),
        "{errs:#?}"
    );
}

#[test]
fn broken_observation_copies_are_reported() {
    let Some(dir) = package_dir() else { return };
    // A lab result whose category is no longer 'laboratory'.
    let lab = example(&dir, "Observation-serum-calcium.json");
    assert!(claimed_errors(&lab).is_empty());
    let mut broken = lab.clone();
    broken["category"][0]["coding"][0]["code"] = "vital-signs".into();
    let errs = claimed_errors(&broken);
    assert!(has_error(&errs, "Observation.category", "slice 'Laboratory'"), "{errs:#?}");

    // A blood pressure whose systolic component has the wrong code: the slice is empty.
    let bp = example(&dir, "Observation-blood-pressure.json");
    assert!(claimed_errors(&bp).is_empty());
    let mut broken = bp.clone();
    let components = broken["component"].as_array_mut().expect("components");
    let systolic = components
        .iter_mut()
        .find(|c| c["code"]["coding"][0]["code"] == "8480-6")
        .expect("a systolic component");
    systolic["code"]["coding"][0]["code"] = "12345-6".into();
    let errs = claimed_errors(&broken);
    assert!(has_error(&errs, "Observation.component", "slice 'systolic'"), "{errs:#?}");

    // Without its vital-signs category.
    let mut broken = bp.clone();
    broken.as_object_mut().expect("object").remove("category");
    let errs = claimed_errors(&broken);
    assert!(has_error(&errs, "Observation.category", "slice 'VSCat'"), "{errs:#?}");
}

/// `memberOf` and `conformsTo` answered by the built-in value sets and profiles.
#[test]
fn member_of_and_conforms_to_in_fhirpath() {
    use kiln_fhirpath::{Context, Item, compile, evaluate};
    use kiln_validate::{BuiltinTerminology, ProfileConformance};
    let Some(dir) = package_dir() else { return };
    let profiles = Profiles::with_builtin();
    let conformance = ProfileConformance { profiles: &profiles, depth: 0 };
    let run = |resource: &Value, text: &str| -> Vec<String> {
        let ctx = Context::new(resource)
            .with_terminology(&BuiltinTerminology)
            .with_conformance(&conformance);
        let items = evaluate(&compile(text).expect(text), &ctx).expect(text);
        items.iter().map(Item::to_string).collect()
    };
    let gender = "gender.memberOf('http://hl7.org/fhir/ValueSet/administrative-gender')";
    let us_core = "conformsTo('http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient')";
    let mut patient = example(&dir, "Patient-example.json");
    assert_eq!(run(&patient, gender), ["true"]);
    assert_eq!(run(&patient, us_core), ["true"]);
    patient["gender"] = "robot".into();
    assert_eq!(run(&patient, gender), ["false"]);
    patient.as_object_mut().unwrap().remove("identifier");
    assert_eq!(run(&patient, us_core), ["false"]);
    // A value set or profile Kiln does not have is unknown: empty.
    assert!(run(&patient, "gender.memberOf('http://x.org/ValueSet/none')").is_empty());
    assert!(run(&patient, "conformsTo('http://x.org/StructureDefinition/none')").is_empty());
    // A US Core value set; one whose codes the package lacks (omb-race-category) is unknown.
    let patient = example(&dir, "Patient-example.json");
    let status =
        "text.status.memberOf('http://hl7.org/fhir/us/core/ValueSet/us-core-narrative-status')";
    assert_eq!(run(&patient, status), ["true"]);
    let race = "extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race')\
        .extension('ombCategory').value.first()\
        .memberOf('http://hl7.org/fhir/us/core/ValueSet/omb-race-category')";
    assert!(run(&patient, race).is_empty());
}
