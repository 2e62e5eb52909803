//! Unit tests of the public API on small resources.

use crate::{Context, Item, compile, evaluate};
use serde_json::{Value, json};

fn eval_on(resource: &Value, text: &str) -> Vec<String> {
    let expr = compile(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let ctx = Context::new(resource);
    let out = evaluate(&expr, &ctx).unwrap_or_else(|e| panic!("{text}: {e}"));
    out.iter().map(Item::to_string).collect()
}

#[test]
fn navigation_and_types() {
    let obs: Value = serde_json::from_str(
        r#"{"resourceType": "Observation", "subject": {"reference": "Patient/123"},
            "valueQuantity": {"value": 72.50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}"#,
    )
    .unwrap();
    assert_eq!(eval_on(&obs, "Observation.value.value"), ["72.50"]);
    assert_eq!(eval_on(&obs, "value.ofType(Quantity).unit"), ["kg"]);
    assert_eq!(eval_on(&obs, "value is Quantity"), ["true"]);
    assert_eq!(eval_on(&obs, "subject.where(resolve() is Patient).reference"), ["Patient/123"]);
    assert_eq!(eval_on(&obs, "value > 70 'kg'"), ["true"]);
    assert_eq!(eval_on(&obs, "value.value * 2"), ["145.00"]);
}

#[test]
fn primitive_extensions() {
    let p = json!({
        "resourceType": "Patient",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://x", "valueDateTime": "1974-12-25T14:35:45-05:00"}]}
    });
    assert_eq!(
        eval_on(&p, "Patient.birthDate.extension('http://x').value"),
        ["1974-12-25T14:35:45-05:00"]
    );
    assert_eq!(eval_on(&p, "birthDate.extension.value is dateTime"), ["true"]);
    assert_eq!(eval_on(&p, "birthDate.hasValue()"), ["true"]);
}

#[test]
fn errors_carry_offsets() {
    let p = json!({"resourceType": "Patient", "name": [{"given": ["a", "b"]}]});
    let expr = compile("name.given.single()").unwrap();
    let e = evaluate(&expr, &Context::new(&p)).unwrap_err();
    assert_eq!(e.offset, 11);
    let strict = Context::new(&p).strict(true);
    let e = evaluate(&compile("name.given1").unwrap(), &strict).unwrap_err();
    assert!(e.message.contains("given1"), "{e}");
}
