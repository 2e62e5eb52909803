//! `kiln_synth::generate` end to end: determinism, validity against Kiln's own validator,
//! referential integrity, and the shape and volume of what it writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use kiln_synth::{Date, Format, Options, Summary};
use serde_json::Value;

fn options(patients: u64, seed: u64, format: Format) -> Options {
    Options { patients, seed, format, end: Date::parse(kiln_synth::DEFAULT_END).unwrap() }
}

fn generate(dir: &Path, options: &Options) -> Summary {
    kiln_synth::generate(options, dir, &mut |_, _| {}).unwrap()
}

/// Every file of a directory, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect()
}

fn bundles(dir: &Path) -> BTreeMap<String, Value> {
    files(dir)
        .into_iter()
        .map(|(name, bytes)| (name, serde_json::from_slice(&bytes).unwrap()))
        .collect()
}

fn entries(bundle: &Value) -> &Vec<Value> {
    bundle["entry"].as_array().unwrap()
}

/// Every `reference` string anywhere in `value`.
fn references<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("reference", Value::String(s)) => out.push(s),
                    _ => references(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|it| references(it, out)),
        _ => {}
    }
}

/// Rewrites every `urn:uuid:` reference to the `Type/id` its fullUrl stands for.
fn resolve(value: &mut Value, full_urls: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(s) if key == "reference" => {
                        if let Some(target) = full_urls.get(s.as_str()) {
                            *s = target.clone();
                        }
                    }
                    _ => resolve(child, full_urls),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|it| resolve(it, full_urls)),
        _ => {}
    }
}

#[test]
fn the_same_seed_gives_byte_identical_files() {
    for format in [Format::Bundle, Format::Ndjson] {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate(a.path(), &options(6, 42, format));
        generate(b.path(), &options(6, 42, format));
        let (a, b) = (files(a.path()), files(b.path()));
        assert!(a.len() > 5, "{:?}", a.keys());
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, bytes) in &a {
            assert!(bytes == &b[name], "{name} differs between two runs with the same seed");
        }
    }
}

#[test]
fn another_seed_gives_other_records() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    generate(a.path(), &options(3, 1, Format::Bundle));
    generate(b.path(), &options(3, 2, Format::Bundle));
    let (a, b) = (files(a.path()), files(b.path()));
    for (name, bytes) in &a {
        assert!(bytes != &b[name], "{name} is the same for seeds 1 and 2");
    }
}

#[test]
fn a_larger_run_extends_a_smaller_one() {
    let (small, large) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    generate(small.path(), &options(3, 9, Format::Bundle));
    generate(large.path(), &options(5, 9, Format::Bundle));
    let (small, large) = (files(small.path()), files(large.path()));
    assert_eq!(large.len(), small.len() + 2);
    for (name, bytes) in &small {
        assert!(bytes == &large[name], "{name} depends on the number of patients");
    }
}

#[test]
fn every_resource_passes_kiln_validation_and_its_profiles() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &options(20, 7, Format::Bundle));
    let mut problems = Vec::new();
    let mut checked = 0;
    // Structure, base invariants and the US Core profiles each resource claims.
    let profiles = kiln_validate::ProfileCheck::new(std::sync::Arc::new(
        kiln_validate::Profiles::with_builtin(),
    ));
    for (name, bundle) in bundles(dir.path()) {
        // Resolve `urn:uuid:` references as the server would, so the validator also checks
        // each reference's target type.
        let full_urls: HashMap<String, String> = entries(&bundle)
            .iter()
            .map(|e| {
                let r = &e["resource"];
                let target = format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap()
                );
                (e["fullUrl"].as_str().unwrap().to_owned(), target)
            })
            .collect();
        for entry in entries(&bundle) {
            let mut resource = entry["resource"].clone();
            resolve(&mut resource, &full_urls);
            for issue in kiln_validate::validate_resource_with(&resource, &profiles) {
                problems.push(format!(
                    "{name} {}/{}: {:?} {} at {:?}",
                    resource["resourceType"],
                    resource["id"],
                    issue.severity,
                    issue.diagnostics,
                    issue.expression
                ));
            }
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} resources");
    // The validator does see what is wrong: a broken copy of a generated resource fails.
    let mut broken = entries(&bundles(dir.path())["patient-000000.json"])[1]["resource"].clone();
    broken["status"] = Value::from("done");
    broken["subject"] = serde_json::json!({"reference": 7});
    assert!(kiln_validate::validate_resource(&broken).len() >= 2, "{broken}");
    // And the profiles are checked: a patient without identifiers breaks us-core-patient.
    let patient = entries(&bundles(dir.path())["patient-000000.json"])
        .iter()
        .map(|e| e["resource"].clone())
        .find(|r| r["resourceType"] == "Patient")
        .expect("a Patient");
    let mut broken = patient;
    broken.as_object_mut().unwrap().remove("identifier");
    let issues = kiln_validate::validate_resource_with(&broken, &profiles);
    assert!(
        issues.iter().any(|i| i.expression.as_deref() == Some("Patient.identifier")
            && i.diagnostics.contains("us-core-patient")),
        "{issues:?}"
    );
    assert!(
        problems.is_empty(),
        "{} issues, first ones:\n{}",
        problems.len(),
        problems[..problems.len().min(30)].join("\n")
    );
}

#[test]
fn every_reference_resolves_within_the_bundle_or_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &options(10, 3, Format::Bundle));
    let all = bundles(dir.path());
    let shared = &all["00-shared.json"];
    let shared_ids: BTreeSet<String> = entries(shared)
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    for (name, bundle) in &all {
        let full_urls: BTreeSet<&str> =
            entries(bundle).iter().map(|e| e["fullUrl"].as_str().unwrap()).collect();
        assert_eq!(full_urls.len(), entries(bundle).len(), "{name}: fullUrls are unique");
        for entry in entries(bundle) {
            let r = &entry["resource"];
            let (ty, id) = (r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            assert_eq!(entry["fullUrl"], format!("urn:uuid:{id}"));
            assert_eq!(entry["request"]["method"], "PUT");
            assert_eq!(entry["request"]["url"], format!("{ty}/{id}"));
            assert!(
                r["meta"]["profile"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("http://hl7.org/fhir/us/core/StructureDefinition/us-core-")
            );
            let mut refs = Vec::new();
            references(r, &mut refs);
            for reference in refs {
                let resolves = if reference.starts_with("urn:uuid:") {
                    full_urls.contains(reference)
                } else {
                    shared_ids.contains(reference)
                };
                assert!(resolves, "{name}: {ty}/{id} refers to {reference}, which is not there");
            }
        }
    }
}

#[test]
fn ndjson_has_one_file_per_type_and_resolvable_references() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path(), &options(8, 5, Format::Ndjson));
    let mut ids = BTreeSet::new();
    let mut lines = Vec::new();
    for (name, bytes) in files(dir.path()) {
        let ty = name.strip_suffix(".ndjson").unwrap().to_owned();
        let text = String::from_utf8(bytes).unwrap();
        let n = summary.counts.iter().find(|(t, _)| t.name() == ty).unwrap().1;
        assert_eq!(text.lines().count() as u64, n, "{name}");
        for line in text.lines() {
            let resource: Value = serde_json::from_str(line).unwrap();
            assert_eq!(resource["resourceType"], ty.as_str());
            ids.insert(format!("{ty}/{}", resource["id"].as_str().unwrap()));
            lines.push(resource);
        }
    }
    for resource in &lines {
        let mut refs = Vec::new();
        references(resource, &mut refs);
        for reference in refs {
            assert!(ids.contains(reference), "{reference} does not resolve");
        }
    }
}

#[test]
fn volumes_and_types_resemble_synthea_histories() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path(), &options(60, 11, Format::Ndjson));
    let per_patient = summary.resources() as f64 / 60.0;
    assert!((200.0..900.0).contains(&per_patient), "{per_patient} resources per patient");
    let types: BTreeSet<&str> = summary.counts.iter().map(|(ty, _)| ty.name()).collect();
    for ty in [
        "Patient",
        "Encounter",
        "Condition",
        "Observation",
        "DiagnosticReport",
        "DocumentReference",
        "MedicationRequest",
        "Procedure",
        "Immunization",
        "CarePlan",
        "CareTeam",
        "Goal",
        "Provenance",
        "Practitioner",
        "Organization",
        "Location",
    ] {
        assert!(types.contains(ty), "no {ty} in {types:?}");
    }
}

/// Spot checks of US Core elements the validator does not know about.
#[test]
fn records_carry_the_us_core_elements() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &options(40, 13, Format::Ndjson));
    let read = |ty: &str| -> Vec<Value> {
        std::fs::read_to_string(dir.path().join(format!("{ty}.ndjson")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    for patient in read("Patient") {
        let urls: Vec<&str> = patient["extension"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["url"].as_str().unwrap())
            .collect();
        assert!(urls.contains(&"http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"));
        assert!(
            urls.contains(&"http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity")
        );
        assert!(urls.contains(&"http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"));
        assert!(patient["identifier"][0]["system"].is_string());
        assert!(patient["name"][0]["family"].is_string() && patient["gender"].is_string());
    }
    let observations = read("Observation");
    let bp: Vec<&Value> =
        observations.iter().filter(|o| o["code"]["coding"][0]["code"] == "85354-9").collect();
    assert!(!bp.is_empty());
    for o in &bp {
        assert_eq!(o["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(o["component"][0]["code"]["coding"][0]["code"], "8480-6");
        assert_eq!(o["component"][1]["code"]["coding"][0]["code"], "8462-4");
        assert_eq!(o["component"][0]["valueQuantity"]["code"], "mm[Hg]");
    }
    for code in ["8867-4", "9279-1", "8310-5", "29463-7", "8302-2", "39156-5", "72166-2", "74013-4"]
    {
        assert!(observations.iter().any(|o| o["code"]["coding"][0]["code"] == code), "no {code}");
    }
    let smoking =
        observations.iter().find(|o| o["code"]["coding"][0]["code"] == "72166-2").unwrap();
    assert_eq!(smoking["valueCodeableConcept"]["coding"][0]["system"], "http://snomed.info/sct");
    let lab = observations
        .iter()
        .find(|o| o["category"][0]["coding"][0]["code"] == "laboratory")
        .unwrap();
    assert!(
        lab["referenceRange"][0].is_object()
            && lab["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    );
    let reports = read("DiagnosticReport");
    assert!(
        reports
            .iter()
            .any(|r| r["category"][0]["coding"][0]["code"] == "LAB" && r["result"].is_array())
    );
    assert!(reports.iter().any(|r| r["presentedForm"][0]["data"].is_string()));
    for doc in read("DocumentReference") {
        assert_eq!(doc["category"][0]["coding"][0]["code"], "clinical-note");
        assert!(doc["content"][0]["attachment"]["data"].is_string());
        assert!(doc["context"]["encounter"][0]["reference"].is_string());
    }
    let conditions = read("Condition");
    for category in ["problem-list-item", "encounter-diagnosis"] {
        assert!(
            conditions.iter().any(|c| c["category"][0]["coding"][0]["code"] == category),
            "{category}"
        );
    }
    for plan in read("CarePlan") {
        assert_eq!(plan["category"][0]["coding"][0]["code"], "assess-plan");
        assert!(
            plan["text"]["div"]
                .as_str()
                .unwrap()
                .starts_with("<div xmlns=\"http://www.w3.org/1999/xhtml\">")
        );
    }
    assert!(read("MedicationRequest").iter().any(|m| m["medicationReference"].is_object()));
    for immunization in read("Immunization") {
        assert_eq!(
            immunization["vaccineCode"]["coding"][0]["system"],
            "http://hl7.org/fhir/sid/cvx"
        );
    }
    for device in read("Device") {
        assert!(device["udiCarrier"][0]["deviceIdentifier"].is_string());
    }
    for provenance in read("Provenance") {
        assert_eq!(provenance["agent"][0]["type"]["coding"][0]["code"], "author");
        assert!(provenance["target"].as_array().unwrap().len() > 1);
    }
    for practitioner in read("Practitioner") {
        assert_eq!(practitioner["identifier"][0]["system"], "http://hl7.org/fhir/sid/us-npi");
    }
}
