//! Bad input is data: every single-node mutation of valid resources must validate without
//! panicking, and replacing any node with `{}` or `[]` must always be reported.

mod common;

use serde_json::{Value, json};

/// JSON pointers of every node below the root.
fn pointers(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let pointer = format!("{prefix}/{}", key.replace('~', "~0").replace('/', "~1"));
                out.push(pointer.clone());
                pointers(child, pointer, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let pointer = format!("{prefix}/{i}");
                out.push(pointer.clone());
                pointers(child, pointer, out);
            }
        }
        _ => {}
    }
}

#[test]
fn mutations_never_panic_and_empties_are_reported() {
    let number = |text: &str| serde_json::from_str::<Value>(text).unwrap();
    let replacements = [
        json!({}),
        json!([]),
        Value::Null,
        json!(""),
        json!(" x "),
        json!(true),
        number("0"),
        number("-1.5e400"),
        json!([null]),
        json!([[]]),
        json!({"resourceType": "Patient"}),
        json!({"extension": [{"url": "http://x.org"}]}),
    ];
    let resources = [
        common::patient(),
        common::observation(),
        json!({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": common::patient()}]}),
    ];
    let mut runs = 0;
    for resource in &resources {
        let mut paths = Vec::new();
        pointers(resource, String::new(), &mut paths);
        for path in &paths {
            for replacement in &replacements {
                let mut mutated = resource.clone();
                *mutated.pointer_mut(path).unwrap() = replacement.clone();
                let issues = kiln_validate::validate_resource(&mutated);
                runs += 1;
                let empty = replacement == &json!({}) || replacement == &json!([]);
                assert!(!empty || !issues.is_empty(), "{path} = {replacement} was not reported");
            }
        }
    }
    assert!(runs > 1000, "{runs}");
}
