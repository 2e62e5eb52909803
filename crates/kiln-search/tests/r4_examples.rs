//! Extraction over every official R4 example (`shared/data/r4-examples`): no panic, and the
//! obvious parameters produce rows. Skips with a message when the folder is absent, except
//! under CI (`CI=true`), where it must exist.

use kiln_search::{IndexEntry, IndexValue, ParamKind, extract};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn examples() -> Option<Vec<(String, Value)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/r4-examples");
    if !dir.is_dir() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "CI=true but the R4 examples folder {} is missing", dir.display());
        println!("skipping: R4 examples folder {} not found", dir.display());
        return None;
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("readable examples folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).expect("readable example");
        if let Ok(json) = serde_json::from_slice::<Value>(&bytes) {
            let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
            out.push((name, json));
        }
    }
    Some(out)
}

fn codes(entries: &[IndexEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.code.as_str()).collect()
}

#[test]
fn every_example_extracts_and_obvious_params_have_rows() {
    let Some(examples) = examples() else { return };
    assert!(examples.len() > 700, "expected the full example set, found {}", examples.len());
    let mut rows = 0usize;
    let mut by_kind: BTreeMap<ParamKind, usize> = BTreeMap::new();
    for (name, json) in &examples {
        let entries = extract(json);
        rows += entries.len();
        for e in &entries {
            *by_kind.entry(e.kind()).or_default() += 1;
        }
        let ty = json["resourceType"].as_str().unwrap_or("");
        let has = |code: &str| codes(&entries).contains(&code);
        if json.get("id").is_some() {
            assert!(has("_id"), "{name}: no _id row");
        }
        match ty {
            "Patient" => {
                if json.get("name").is_some() {
                    assert!(has("name"), "{name}: no Patient name row");
                }
                if json.get("birthDate").is_some() {
                    assert!(has("birthdate"), "{name}: no birthdate row");
                }
                if json.get("gender").is_some() {
                    assert!(has("gender"), "{name}: no gender row");
                }
            }
            "Observation" => {
                assert!(has("code"), "{name}: no Observation code row");
                let reference = json.pointer("/subject/reference").and_then(Value::as_str);
                if reference.is_some_and(|r| !r.starts_with('#')) {
                    assert!(has("subject"), "{name}: no subject row");
                }
                if json.get("effectiveDateTime").is_some() || json.get("effectivePeriod").is_some()
                {
                    assert!(has("date"), "{name}: no date row");
                }
                if json.get("valueQuantity").is_some_and(|q| q.get("value").is_some()) {
                    assert!(has("value-quantity"), "{name}: no value-quantity row");
                }
            }
            _ => {}
        }
        if json.pointer("/meta/lastUpdated").is_some() {
            assert!(has("_lastUpdated"), "{name}: no _lastUpdated row");
        }
    }
    println!("{} examples, {rows} index rows: {by_kind:?}", examples.len());
    for kind in [ParamKind::Token, ParamKind::String, ParamKind::Date, ParamKind::Number] {
        assert!(by_kind.get(&kind).is_some_and(|n| *n > 0), "no {kind:?} rows at all");
    }
    for kind in [ParamKind::Quantity, ParamKind::Reference, ParamKind::Uri] {
        assert!(by_kind.get(&kind).is_some_and(|n| *n > 0), "no {kind:?} rows at all");
    }
}

#[test]
fn composite_components_share_an_occurrence() {
    let Some(examples) = examples() else { return };
    let bp = examples
        .iter()
        .find(|(n, _)| n == "observation-example-bloodpressure.json")
        .map(|(_, j)| j)
        .expect("the blood pressure example");
    let entries = extract(bp);
    let comp: Vec<&IndexEntry> =
        entries.iter().filter(|e| e.code == "component-code-value-quantity").collect();
    assert!(comp.len() >= 4, "{comp:#?}");
    for elem in [0, 1] {
        let codes = comp.iter().filter(|e| e.elem == elem && e.component == Some(0)).count();
        // One value as written (plus, for UCUM, its base-unit copy).
        let values = comp
            .iter()
            .filter(|e| e.elem == elem && e.component == Some(1))
            .filter(|e| !matches!(&e.value, IndexValue::Quantity(q) if q.system.as_deref() == Some(kiln_search::UCUM_CANONICAL)))
            .count();
        assert!(codes >= 1 && values == 1, "elem {elem}: {comp:#?}");
    }
    assert!(
        comp.iter().any(|e| matches!(&e.value, IndexValue::Quantity(q) if q.number.text == "107"))
    );
}

#[test]
fn incomplete_composite_occurrences_are_not_indexed() {
    let Some(examples) = examples() else { return };
    let weight = examples
        .iter()
        .find(|(n, _)| n == "observation-example.json")
        .map(|(_, j)| j)
        .expect("the body weight example");
    let entries = extract(weight);
    // A quantity value: `code-value-quantity` has both components, the other value kinds none.
    let comps = |code: &str| entries.iter().filter(|e| e.code == code).count();
    assert!(comps("code-value-quantity") >= 2, "{entries:#?}");
    for code in ["code-value-string", "code-value-concept", "code-value-date"] {
        assert_eq!(comps(code), 0, "{code}: {entries:#?}");
    }
}
