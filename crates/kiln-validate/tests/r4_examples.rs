//! False-positive checks on real data outside the repository (`shared/data`): every official
//! FHIR R4 example, and the HL7 validator test cases that the Java validator accepts, must
//! validate without errors. Each test skips with a message when its folder is absent, except
//! under CI (`CI=true`), where the folder must exist.

use kiln_model::{IssueCode, Severity};
use std::path::Path;

#[test]
fn official_r4_examples_have_no_errors() {
    let dir = shared_data().join("r4-examples");
    if !dir.is_dir() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "CI=true but the R4 examples folder {} is missing", dir.display());
        println!("skipping: R4 examples folder {} not found", dir.display());
        return;
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("readable examples folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut failing = Vec::new();
    let mut total = 0;
    let mut invariant_warnings = 0;
    let mut evaluation_errors = 0;
    for file in &files {
        let bytes = std::fs::read(file).expect("readable example");
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            println!("not JSON, skipped: {}", file.display());
            continue;
        };
        total += 1;
        let issues = kiln_validate::validate_resource(&json);
        for issue in issues.iter().filter(|i| i.code == IssueCode::Invariant) {
            if issue.severity == Severity::Warning {
                invariant_warnings += 1;
            }
            if issue.diagnostics.contains("could not be evaluated")
                || issue.diagnostics.contains("not evaluated")
            {
                evaluation_errors += 1;
                println!("{}: {}", file.display(), issue.diagnostics);
            }
        }
        let errors: Vec<_> = issues
            .into_iter()
            .filter(|i| i.severity == Severity::Error || i.severity == Severity::Fatal)
            .collect();
        if !errors.is_empty() {
            let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
            for issue in errors.iter().take(10) {
                println!(
                    "{name}: [{}] {} @ {}",
                    issue.code.as_str(),
                    issue.diagnostics,
                    issue.expression.as_deref().unwrap_or("-")
                );
            }
            failing.push(name);
        }
    }
    println!("{} of {total} examples valid", total - failing.len());
    println!("{invariant_warnings} invariant warnings, {evaluation_errors} evaluation errors");
    assert!(total > 700, "expected the full example set, found {total} files");
    assert!(failing.is_empty(), "{} examples have errors: {failing:?}", failing.len());
    // Every invariant evaluates on every official example (errors would only be warnings).
    assert_eq!(evaluation_errors, 0, "invariants that could not be evaluated");
}

/// The US Core 5.0.1 examples and the resources of the Inferno reference server's bundles:
/// no invariant is violated (errors) and every one evaluates. Structural problems of the
/// data itself are printed, not asserted (one Inferno Period carries an unknown `stop`).
#[test]
fn us_core_and_inferno_data_break_no_invariant() {
    let root = shared_data();
    let sets = [
        ("us-core-5.0.1/package/example", false),
        ("examples/inferno-reference-server-data-current", true),
    ];
    for (sub, bundles) in sets {
        let dir = root.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!ci, "CI=true but {} is missing", dir.display());
            println!("skipping: {} not found", dir.display());
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        let (mut resources, mut structural, mut warnings) = (0, 0, 0);
        let mut broken = Vec::new();
        for file in files.iter().filter(|f| f.extension().is_some_and(|x| x == "json")) {
            let Ok(bytes) = std::fs::read(file) else { continue };
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
            if json.get("resourceType").is_none() {
                continue; // package metadata, not a resource
            }
            let list: Vec<&serde_json::Value> = if bundles {
                json["entry"].as_array().into_iter().flatten().map(|e| &e["resource"]).collect()
            } else {
                vec![&json]
            };
            let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
            for resource in list {
                resources += 1;
                for issue in kiln_validate::validate_resource(resource) {
                    let at = issue.expression.as_deref().unwrap_or("-");
                    match (issue.code, issue.severity) {
                        (IssueCode::Invariant, Severity::Warning) => warnings += 1,
                        (IssueCode::Invariant, _) => {
                            broken.push(format!("{name}: {} @ {at}", issue.diagnostics));
                        }
                        (_, s) if s.is_failure() => {
                            structural += 1;
                            println!(
                                "{name}: [{}] {} @ {at}",
                                issue.code.as_str(),
                                issue.diagnostics
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
        println!(
            "{sub}: {resources} resources, {} invariant errors, {warnings} invariant warnings, \
             {structural} structural errors",
            broken.len()
        );
        assert!(resources > 100, "{sub}: expected the data set, found {resources} resources");
        assert!(broken.is_empty(), "{sub}: {broken:#?}");
        assert_eq!(warnings, 0, "{sub}: evaluation problems or warnings");
    }
}

/// The HL7 validator test cases (R4 subset) that the reference Java validator accepts must
/// not be rejected either. Cases outside plain FHIR JSON (CDS Hooks payloads, matchetype
/// patterns) are left out, as is one whose contained id breaks the 64-character id rule that
/// the Java validator does not enforce on contained resources.
#[test]
fn validator_cases_accepted_by_java_have_no_errors() {
    let dir = shared_data().join("validator-r4");
    let manifest_path = dir.join("manifest-r4.json");
    let Ok(manifest) = std::fs::read(&manifest_path) else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "CI=true but {} is missing", manifest_path.display());
        println!("skipping: {} not found", manifest_path.display());
        return;
    };
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest is JSON");
    const SKIPPED: [&str; 1] = ["contained-resource.json"];
    let mut checked = 0;
    let mut failing = Vec::new();
    for case in manifest["test-cases"].as_array().into_iter().flatten() {
        let Some(file) = case["file"].as_str().filter(|f| f.ends_with(".json")) else { continue };
        let module = case["module"].as_str().unwrap_or_default();
        if matches!(module, "cdshooks" | "matchetype") || SKIPPED.contains(&file) {
            continue;
        }
        if java_error_count(&dir, &case["java"]) != Some(0) {
            continue;
        }
        let Ok(bytes) = std::fs::read(dir.join(file)) else { continue };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        checked += 1;
        let issues: Vec<_> = kiln_validate::validate_resource(&json)
            .into_iter()
            .filter(|i| i.severity.is_failure())
            .collect();
        if !issues.is_empty() {
            for issue in issues.iter().take(5) {
                println!(
                    "{file}: {} @ {}",
                    issue.diagnostics,
                    issue.expression.as_deref().unwrap_or("-")
                );
            }
            failing.push(file.to_string());
        }
    }
    println!("{} of {checked} validator cases accepted", checked - failing.len());
    assert!(checked > 100, "expected the validator test cases, found {checked}");
    assert!(failing.is_empty(), "false positives: {failing:?}");
}

/// Errors the Java validator reported for a case: from its outcome file or inline count.
fn java_error_count(dir: &Path, java: &serde_json::Value) -> Option<usize> {
    match java {
        serde_json::Value::String(outcome) => {
            let bytes = std::fs::read(dir.join("outcomes").join(outcome)).ok()?;
            let outcome: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            let issues = outcome["issue"].as_array().map(Vec::as_slice).unwrap_or_default();
            Some(
                issues
                    .iter()
                    .filter(|i| i["severity"] == "error" || i["severity"] == "fatal")
                    .count(),
            )
        }
        serde_json::Value::Object(inline) => match inline.get("outcome") {
            Some(outcome) => java_error_count(dir, outcome),
            None => {
                inline.get("errorCount").and_then(serde_json::Value::as_u64).map(|n| n as usize)
            }
        },
        _ => None,
    }
}

/// `../shared/data` beside the workspace, or the folder `KILN_SHARED_DATA` names (e.g. from a
/// git worktree).
fn shared_data() -> std::path::PathBuf {
    std::env::var_os("KILN_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}
