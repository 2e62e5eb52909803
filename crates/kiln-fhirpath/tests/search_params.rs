//! Every SearchParameter expression in kiln-definitions compiles, and evaluating each on every
//! R4 example resource of a matching base type (`../shared/data/r4-examples`) does not fail.
//! Skips (with a message) when the examples are absent, unless `CI=true`.

use kiln_definitions::definitions;
use kiln_fhirpath::{Context, compile, evaluate};
use serde_json::Value;
use std::path::Path;

#[test]
fn every_search_parameter_expression_compiles() {
    let params = definitions().all_search_params();
    let mut failures = Vec::new();
    let mut total = 0;
    for sp in params {
        let Some(text) = &sp.expression else { continue };
        total += 1;
        if let Err(e) = compile(text) {
            failures.push(format!("{} ({}): {e}", sp.url, text));
        }
        for component in &sp.components {
            total += 1;
            if let Err(e) = compile(&component.expression) {
                failures.push(format!("{} component ({}): {e}", sp.url, component.expression));
            }
        }
    }
    println!("{}/{total} SearchParameter expressions compile", total - failures.len());
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn search_parameters_evaluate_on_r4_examples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/r4-examples");
    if !dir.is_dir() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {} is missing",
            dir.display()
        );
        println!("SKIPPED: {} not found", dir.display());
        return;
    }
    let defs = definitions();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("read examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let (mut runs, mut resources, mut nonempty) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let Ok(resource) = serde_json::from_str::<Value>(&text) else { continue };
        let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else { continue };
        resources += 1;
        let ctx = Context::new(&resource);
        for sp in defs.search_params(rt) {
            let Some(text) = &sp.expression else { continue };
            let expr = compile(text).expect("compiles (checked above)");
            runs += 1;
            match evaluate(&expr, &ctx) {
                Ok(items) => nonempty += usize::from(!items.is_empty()),
                Err(e) => failures.push(format!(
                    "{} on {}: {} ({text})",
                    sp.code,
                    path.file_name().unwrap_or_default().to_string_lossy(),
                    e
                )),
            }
        }
    }
    println!(
        "{resources} example resources: {runs} SearchParameter evaluations, {nonempty} non-empty, {} errors",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
