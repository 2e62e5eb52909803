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

fn locations(resource: &Value, text: &str) -> Vec<Option<String>> {
    let expr = compile(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let items = evaluate(&expr, &Context::new(resource)).unwrap_or_else(|e| panic!("{text}: {e}"));
    crate::locate(resource, &items).into_iter().map(|l| l.map(|l| l.to_string())).collect()
}

#[test]
fn locations_of_selected_elements() {
    let p = json!({
        "resourceType": "Patient",
        "identifier": [{"system": "a", "value": "1"}, {"system": "b", "value": "2"}],
        "name": [{"given": ["Ann", null, "Cy"], "_given": [null, {"id": "g1"}, null]}],
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://x", "valueString": "y"}]},
        "extension": [{"url": "http://e", "valueBoolean": true}],
        "contained": [{"resourceType": "Practitioner", "id": "pr", "name": [{"family": "Z"}]}],
        "generalPractitioner": [{"reference": "#pr"}]
    });
    let some = |s: &str| Some(s.to_string());
    assert_eq!(locations(&p, "Patient"), [Some(String::new())]);
    assert_eq!(locations(&p, "Patient.identifier"), [some("identifier[0]"), some("identifier[1]")]);
    assert_eq!(locations(&p, "identifier.where(system = 'b')"), [some("identifier[1]")]);
    assert_eq!(locations(&p, "Patient.identifier.last().value"), [some("identifier[1].value")]);
    assert_eq!(locations(&p, "Patient.identifier[0]"), [some("identifier[0]")]);
    assert_eq!(locations(&p, "Patient.identifier.first()"), [some("identifier[0]")]);
    // A primitive with only an extension is located by its plain name.
    assert_eq!(
        locations(&p, "Patient.name.given"),
        [some("name[0].given[0]"), some("name[0].given[1]"), some("name[0].given[2]")]
    );
    assert_eq!(locations(&p, "Patient.birthDate"), [some("birthDate")]);
    assert_eq!(
        locations(&p, "Patient.birthDate.extension('http://x')"),
        [some("_birthDate.extension[0]")]
    );
    assert_eq!(
        locations(&p, "Patient.extension('http://e').value"),
        [some("extension[0].valueBoolean")]
    );
    assert_eq!(
        locations(&p, "Patient.contained.ofType(Practitioner).name"),
        [some("contained[0].name[0]")]
    );
    // Values that are not elements of the resource have no location.
    assert_eq!(locations(&p, "'text'"), [None]);
    assert_eq!(locations(&p, "Patient.identifier.count()"), [None]);
    // `resolve()` of a contained reference stays inside the resource; a stub does not.
    assert_eq!(
        locations(&p, "Patient.generalPractitioner.resolve().name"),
        [some("contained[0].name[0]")]
    );
    let q = json!({"resourceType": "Patient", "generalPractitioner": [{"reference": "Practitioner/1"}]});
    assert_eq!(locations(&q, "Patient.generalPractitioner.resolve()"), [None]);

    let obs = json!({"resourceType": "Observation", "valueQuantity": {"value": 1}});
    assert_eq!(locations(&obs, "Observation.value"), [some("valueQuantity")]);
    assert_eq!(
        locations(&obs, "Observation.value.ofType(Quantity).value"),
        [some("valueQuantity.value")]
    );
    assert_eq!(locations(&obs, "Observation.value.ofType(string)"), Vec::<Option<String>>::new());
}

#[test]
fn child_definitions() {
    use crate::{ChildDefinition, Step, child_definition};
    let obs = json!({"resourceType": "Observation", "component": [{"code": {"text": "x"}}],
        "status": "final", "_status": {"id": "s"}});
    let known = |parent: &[Step], name: &str| match child_definition(&obs, parent, name) {
        ChildDefinition::Known(el) => el.path.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(known(&[], "value"), "Observation.value[x]");
    assert_eq!(known(&[], "valueQuantity"), "Observation.value[x]");
    assert_eq!(known(&[], "component"), "Observation.component");
    let comp = [Step::Key("component".into()), Step::Index(0)];
    assert_eq!(known(&comp, "value"), "Observation.component.value[x]");
    let code = [Step::Key("component".into()), Step::Index(0), Step::Key("code".into())];
    assert_eq!(known(&code, "coding"), "CodeableConcept.coding");
    assert_eq!(known(&[Step::Key("_status".into())], "extension"), "code.extension");
    assert!(matches!(
        child_definition(&obs, &[], "nonsense"),
        ChildDefinition::Unknown { parent_type: "Observation" }
    ));
    assert!(matches!(
        child_definition(&obs, &comp, "x"),
        ChildDefinition::Unknown { parent_type: "Observation.component" }
    ));
}

#[test]
fn split_last_member() {
    let e = compile("Patient.contact[0] . telecom").unwrap();
    let (parent, name) = e.split_last_member().unwrap();
    assert_eq!((parent.unwrap().text(), name), ("Patient.contact[0]", "telecom"));
    let e = compile("name").unwrap();
    let (parent, name) = e.split_last_member().unwrap();
    assert!(parent.is_none());
    assert_eq!(name, "name");
    assert!(compile("name.first()").unwrap().split_last_member().is_none());
}

/// A terminology knowing one value set (`vs`: system `s`, codes `a`, `b`) and one hierarchy
/// (`s`: `parent` above `child`); everything else is unknown.
struct FakeTerminology;

impl crate::Terminology for FakeTerminology {
    fn member_of(&self, system: Option<&str>, code: &str, value_set_url: &str) -> Option<bool> {
        if value_set_url != "vs" {
            return None;
        }
        Some(system.is_none_or(|s| s == "s") && matches!(code, "a" | "b"))
    }

    fn subsumes(&self, system: Option<&str>, a: &str, b: &str) -> Option<crate::Subsumption> {
        use crate::Subsumption::*;
        if system != Some("s") {
            return None;
        }
        Some(match (a, b) {
            ("parent", "child") => Subsumes,
            ("child", "parent") => SubsumedBy,
            ("same", "alias") | ("alias", "same") => Equivalent,
            ("parent" | "child" | "same" | "alias" | "other", _) => NotSubsumed,
            _ => return None,
        })
    }
}

struct FakeConformance;

impl crate::Conformance for FakeConformance {
    fn conforms_to(&self, resource: &Value, profile_url: &str) -> Option<bool> {
        (profile_url == "http://x/p").then(|| resource.get("active").is_some())
    }
}

fn eval_with(resource: &Value, text: &str) -> Vec<String> {
    let expr = compile(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let ctx = Context::new(resource)
        .with_terminology(&FakeTerminology)
        .with_conformance(&FakeConformance);
    let out = evaluate(&expr, &ctx).unwrap_or_else(|e| panic!("{text}: {e}"));
    out.iter().map(Item::to_string).collect()
}

#[test]
fn member_of() {
    let obs = json!({
        "resourceType": "Observation",
        "status": "a",
        "code": {"coding": [{"system": "t", "code": "a"}, {"system": "s", "code": "b"}]},
        "valueCodeableConcept": {"coding": [{"system": "t", "code": "a"}]},
        "dataAbsentReason": {"coding": [{"system": "s", "code": "c"}], "text": "x"},
        "interpretation": [{"text": "no codings"}],
        "category": [{"coding": [{"system": "s", "code": "a"}]}]
    });
    assert_eq!(eval_with(&obs, "status.memberOf('vs')"), ["true"]);
    assert_eq!(eval_with(&obs, "'z'.memberOf('vs')"), ["false"]);
    assert_eq!(eval_with(&obs, "status.memberOf('unknown')"), Vec::<String>::new());
    // A CodeableConcept is a member when any of its codings is.
    assert_eq!(eval_with(&obs, "code.memberOf('vs')"), ["true"]);
    assert_eq!(eval_with(&obs, "value.memberOf('vs')"), ["false"]);
    assert_eq!(eval_with(&obs, "dataAbsentReason.memberOf('vs')"), ["false"]);
    assert_eq!(eval_with(&obs, "interpretation.memberOf('vs')"), ["false"]);
    assert_eq!(eval_with(&obs, "category.coding.memberOf('vs')"), ["true"]);
    assert_eq!(eval_with(&obs, "code.coding[0].memberOf('vs')"), ["false"]);
    assert_eq!(eval_with(&obs, "subject.memberOf('vs')"), Vec::<String>::new());
    // Without a terminology, nothing is known.
    assert_eq!(eval_on(&obs, "status.memberOf('vs')"), Vec::<String>::new());
}

#[test]
fn subsumes_and_subsumed_by() {
    let coding = |code: &str| json!({"system": "s", "code": code});
    let p = json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "parent", "valueCoding": coding("parent")},
            {"name": "child", "valueCoding": coding("child")},
            {"name": "same", "valueCoding": coding("same")},
            {"name": "alias", "valueCoding": coding("alias")},
            {"name": "other", "valueCoding": coding("other")},
            {"name": "foreign", "valueCoding": {"system": "t", "code": "child"}},
            {"name": "unknown", "valueCoding": coding("mystery")},
            {"name": "cc", "valueCodeableConcept": {"coding": [coding("other"), coding("parent")]}}
        ]
    });
    let v = |name: &str| format!("parameter.where(name = '{name}').value");
    let check = |a: &str, f: &str, b: &str| eval_with(&p, &format!("{}.{f}({})", v(a), v(b)));
    assert_eq!(check("parent", "subsumes", "child"), ["true"]);
    assert_eq!(check("child", "subsumes", "parent"), ["false"]);
    assert_eq!(check("child", "subsumedBy", "parent"), ["true"]);
    assert_eq!(check("parent", "subsumedBy", "child"), ["false"]);
    assert_eq!(check("same", "subsumes", "alias"), ["true"]);
    assert_eq!(check("same", "subsumedBy", "alias"), ["true"]);
    assert_eq!(check("child", "subsumes", "child"), ["true"]);
    assert_eq!(check("other", "subsumes", "child"), ["false"]);
    assert_eq!(check("parent", "subsumes", "foreign"), ["false"]);
    assert_eq!(check("unknown", "subsumes", "child"), Vec::<String>::new());
    assert_eq!(check("cc", "subsumes", "child"), ["true"]);
    assert_eq!(eval_with(&p, &format!("{}.subsumes('child')", v("parent"))), ["true"]);
    assert_eq!(eval_with(&p, &format!("{}.subsumes({{}})", v("parent"))), Vec::<String>::new());
    assert_eq!(eval_on(&p, &format!("{}.subsumes({})", v("parent"), v("child"))), [""; 0]);
}

#[test]
fn conforms_to_profiles() {
    let p = json!({"resourceType": "Patient", "active": true});
    let q = json!({"resourceType": "Patient"});
    assert_eq!(eval_with(&p, "conformsTo('http://x/p')"), ["true"]);
    assert_eq!(eval_with(&q, "conformsTo('http://x/p')"), ["false"]);
    assert_eq!(eval_with(&q, "conformsTo('http://x/unknown')"), Vec::<String>::new());
    let base = "conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')";
    assert_eq!(eval_with(&q, base), ["true"]);
    // Without a conformance callback an unknown profile is an error, as before.
    assert!(evaluate(&compile("conformsTo('http://x/p')").unwrap(), &Context::new(&q)).is_err());
}

#[test]
fn html_checks() {
    let narrative =
        |div: &str| json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
    let ns = "xmlns=\"http://www.w3.org/1999/xhtml\"";
    let check = |body: &str| {
        eval_on(&narrative(&format!("<div {ns}>{body}</div>")), "text.div.htmlChecks()")
    };
    assert_eq!(check("<p>Peter <b>James</b> Chalmers</p>"), ["true"]);
    assert_eq!(check("<script>alert(1)</script>"), ["false"]);
    assert_eq!(check("<p onclick=\"alert(1)\">x</p>"), ["false"]);
    assert_eq!(check(""), ["false"]);
    assert_eq!(check("<p>x</div>"), ["false"]);
    assert_eq!(eval_on(&json!({"resourceType": "Patient"}), "text.div.htmlChecks()"), [""; 0]);
}
