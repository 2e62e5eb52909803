//! The official FHIRPath test suite for FHIR R4 (`../shared/data/fhirpath-r4`): every test is
//! run, the pass count is printed with the names of the failures, and the count must not fall
//! below [`FLOOR`]. Skips (with a message) when the data is absent, unless `CI=true`.

use kiln_fhirpath::{Context, Item, compile, evaluate};
use quick_xml::Reader;
use quick_xml::events::Event;
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Tests that must pass; raise it when the engine improves, never lower it.
const FLOOR: usize = 930;

#[derive(Debug, Default)]
struct Case {
    name: String,
    input: Option<String>,
    predicate: bool,
    unordered: bool,
    expression: String,
    invalid: bool,
    outputs: Vec<(Option<String>, String)>,
}

fn data_dir() -> Option<PathBuf> {
    // `KILN_SHARED_DATA` names another `shared/data` folder (e.g. from a git worktree).
    let shared = std::env::var_os("KILN_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let dir = shared.join("fhirpath-r4");
    if dir.join("tests-fhir-r4.xml").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {} is missing", dir.display());
    }
    println!("SKIPPED: {} not found", dir.display());
    None
}

fn attr(e: &quick_xml::events::BytesStart<'_>, name: &str) -> Option<String> {
    e.try_get_attribute(name)
        .ok()
        .flatten()
        .and_then(|a| a.unescape_value().ok())
        .map(|v| v.into_owned())
}

fn parse_cases(xml: &str) -> Vec<Case> {
    let mut reader = Reader::from_str(xml);
    let mut cases = Vec::new();
    let mut current: Option<Case> = None;
    let mut text: Option<String> = None;
    let mut output_type: Option<String> = None;
    loop {
        match reader.read_event().expect("well-formed test XML") {
            Event::Start(e) => match e.name().as_ref() {
                b"test" => {
                    current = Some(Case {
                        name: attr(&e, "name").unwrap_or_default(),
                        input: attr(&e, "inputfile"),
                        predicate: attr(&e, "predicate").as_deref() == Some("true"),
                        unordered: attr(&e, "ordered").as_deref() == Some("false"),
                        ..Case::default()
                    })
                }
                b"expression" => {
                    if let Some(c) = current.as_mut() {
                        c.invalid = attr(&e, "invalid").is_some();
                    }
                    text = Some(String::new());
                }
                b"output" => {
                    output_type = attr(&e, "type");
                    text = Some(String::new());
                }
                _ => {}
            },
            Event::Text(t) => {
                if let Some(buf) = text.as_mut() {
                    buf.push_str(&t.xml_content().expect("text"));
                }
            }
            Event::GeneralRef(r) => {
                if let Some(buf) = text.as_mut() {
                    let name = String::from_utf8_lossy(&r);
                    buf.push_str(match name.as_ref() {
                        "lt" => "<",
                        "gt" => ">",
                        "amp" => "&",
                        "quot" => "\"",
                        "apos" => "'",
                        other => panic!("unknown entity {other}"),
                    });
                }
            }
            Event::End(e) => match e.name().as_ref() {
                b"test" => cases.extend(current.take()),
                b"expression" => {
                    if let (Some(c), Some(t)) = (current.as_mut(), text.take()) {
                        c.expression = t;
                    }
                }
                b"output" => {
                    if let (Some(c), Some(t)) = (current.as_mut(), text.take()) {
                        c.outputs.push((output_type.take(), t));
                    }
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    cases
}

fn type_label(item: &Item<'_>) -> String {
    match item {
        Item::Node(n) => match (n.fhir_type(), item.to_system()) {
            (Some(t), _) => t.to_string(),
            (None, Some(sys)) if !matches!(sys, Item::Node(_)) => type_label(&sys),
            _ => "?".into(),
        },
        Item::Boolean(_) => "boolean".into(),
        Item::String(_) => "string".into(),
        Item::Integer(_) => "integer".into(),
        Item::Decimal(_) => "decimal".into(),
        Item::Date(_) => "date".into(),
        Item::DateTime(_) => "dateTime".into(),
        Item::Time(_) => "time".into(),
        Item::Quantity(_) => "Quantity".into(),
    }
}

fn matches_output(item: &Item<'_>, ty: Option<&str>, expected: &str) -> bool {
    if let Some(ty) = ty
        && type_label(item) != ty
    {
        return false;
    }
    let value = item.to_system().unwrap_or_else(|| item.clone());
    match value {
        Item::Decimal(d) => Decimal::from_str(expected).is_ok_and(|e| e == d),
        Item::Integer(i) => {
            expected.parse::<i64>().is_ok_and(|e| e == i)
                || Decimal::from_str(expected).is_ok_and(|e| e == Decimal::from(i))
        }
        Item::Date(_) | Item::DateTime(_) => value.to_string() == expected.trim_start_matches('@'),
        Item::Time(_) => value.to_string() == expected.trim_start_matches("@T"),
        _ => value.to_string() == expected,
    }
}

fn run_case(case: &Case, inputs: &HashMap<String, Value>, empty: &Value) -> Result<(), String> {
    let resource = match &case.input {
        Some(file) => inputs.get(file).ok_or_else(|| format!("no input {file}"))?,
        None => empty,
    };
    let expr = match compile(&case.expression) {
        Ok(e) => e,
        Err(e) if case.invalid => return Ok(()).map(|_: ()| drop(e)),
        Err(e) => return Err(format!("compile error: {e}")),
    };
    let ctx = Context::new(resource).strict(true);
    let result = match evaluate(&expr, &ctx) {
        Ok(r) if case.invalid => return Err(format!("expected an error, got {} item(s)", r.len())),
        Err(_) if case.invalid => return Ok(()),
        Err(e) => return Err(format!("error: {e}")),
        Ok(r) => r,
    };
    let result = if case.predicate { vec![Item::Boolean(!result.is_empty())] } else { result };
    let shown = || result.iter().map(|i| format!("{i}:{}", type_label(i))).collect::<Vec<_>>();
    if result.len() != case.outputs.len() {
        return Err(format!("expected {:?}, got {:?}", case.outputs, shown()));
    }
    let ok = if case.unordered {
        let mut used = vec![false; result.len()];
        case.outputs.iter().all(|(ty, text)| {
            let found = result
                .iter()
                .enumerate()
                .find(|(i, item)| !used[*i] && matches_output(item, ty.as_deref(), text));
            found.map(|(i, _)| used[i] = true).is_some()
        })
    } else {
        result
            .iter()
            .zip(&case.outputs)
            .all(|(item, (ty, text))| matches_output(item, ty.as_deref(), text))
    };
    if ok { Ok(()) } else { Err(format!("expected {:?}, got {:?}", case.outputs, shown())) }
}

#[test]
fn official_r4_suite() {
    let Some(dir) = data_dir() else { return };
    let xml = std::fs::read_to_string(dir.join("tests-fhir-r4.xml")).expect("read test XML");
    let cases = parse_cases(&xml);
    let mut inputs = HashMap::new();
    for case in &cases {
        if let Some(file) = &case.input
            && !inputs.contains_key(file)
        {
            let json_name = file.replace(".xml", ".json");
            let text = std::fs::read_to_string(dir.join("input-json").join(&json_name))
                .unwrap_or_else(|e| panic!("{json_name}: {e}"));
            inputs.insert(file.clone(), serde_json::from_str::<Value>(&text).expect("input JSON"));
        }
    }
    let empty = Value::Object(Default::default());
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(why) = run_case(case, &inputs, &empty) {
            failures.push(format!("{} [{}]: {why}", case.name, case.expression.trim()));
        }
    }
    let passed = cases.len() - failures.len();
    println!("FHIRPath R4 suite: {passed}/{} passed", cases.len());
    for f in &failures {
        println!("  FAIL {f}");
    }
    assert!(passed >= FLOOR, "{passed} passed, below the floor of {FLOOR}");
}
