//! Validation throughput, printed and never asserted (timings depend on the machine). Run in
//! release mode for meaningful numbers:
//!
//! ```sh
//! cargo test --release -p kiln-validate --test throughput -- --nocapture
//! ```

use kiln_validate::{Validator, ValidatorOptions};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

/// A vital-signs Observation of about 2 KB, the typical size of a clinical write.
fn blood_pressure() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "blood-pressure",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
        "text": {
            "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Blood pressure 107/60 mmHg</div>"
        },
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281"}],
        "basedOn": [{"identifier": {"system": "https://acme.org/identifiers", "value": "1234"}}],
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
            "display": "Vital Signs"
        }]}],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel with all children optional"}],
            "text": "Blood pressure systolic & diastolic"
        },
        "subject": {"reference": "Patient/example"},
        "encounter": {"reference": "Encounter/example"},
        "effectiveDateTime": "2012-09-17T10:30:00+02:00",
        "issued": "2012-09-17T11:02:13.000+02:00",
        "performer": [{"reference": "Practitioner/example"}],
        "interpretation": [{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "L", "display": "low"}],
            "text": "Below low normal"
        }],
        "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "368209003", "display": "Right arm"}]},
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]},
                "valueQuantity": {"value": 107, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
                "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N", "display": "normal"}]}],
                "referenceRange": [{
                    "low": {"value": 90, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
                    "high": {"value": 140, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
                }]
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"}]},
                "valueQuantity": {"value": 60, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
                "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "L", "display": "low"}]}]
            }
        ]
    })
}

/// Validates `resources` round-robin for about `budget` validations, three times; returns
/// the best rate per second (the machine is shared: the best run is the least disturbed).
fn rate(validator: &Validator, resources: &[Value], budget: usize) -> f64 {
    // Warm up: definitions, compiled expressions, caches.
    for r in resources.iter().take(50) {
        std::hint::black_box(validator.validate(r));
    }
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let start = Instant::now();
        let mut n = 0;
        while n < budget {
            for r in resources {
                std::hint::black_box(validator.validate(r));
                n += 1;
            }
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// Prints the rate with and without invariants.
fn report(what: &str, resources: &[Value], budget: usize) {
    let mode = if cfg!(debug_assertions) { "debug" } else { "release" };
    let structural =
        Validator::with_options(ValidatorOptions { check_invariants: false, ..Default::default() });
    let full = Validator::new();
    let before = rate(&structural, resources, budget);
    let after = rate(&full, resources, budget);
    println!(
        "[{mode}] {what}: structural only {before:.0}/s ({:.1} µs each), with invariants \
         {after:.0}/s ({:.1} µs each), one thread",
        1e6 / before,
        1e6 / after
    );
}

#[test]
fn validation_throughput() {
    let budget = if cfg!(debug_assertions) { 200 } else { 20_000 };
    let bp = blood_pressure();
    let size = serde_json::to_vec(&bp).map_or(0, |b| b.len());
    assert!(kiln_validate::validate_resource(&bp).iter().all(|i| !i.severity.is_failure()));
    report(&format!("one {size}-byte Observation"), std::slice::from_ref(&bp), budget);

    // Real-world mix: every resource of the Synthea patient bundles, validated one by one.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("skipping the Synthea mix: {} not found", dir.display());
        return;
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let mut resources = Vec::new();
    let mut bytes = 0;
    for file in files.iter().filter(|f| f.extension().is_some_and(|x| x == "json")).take(5) {
        let Ok(data) = std::fs::read(file) else { continue };
        let Ok(bundle) = serde_json::from_slice::<Value>(&data) else { continue };
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            bytes += serde_json::to_vec(&entry["resource"]).map_or(0, |b| b.len());
            resources.push(entry["resource"].clone());
        }
    }
    if resources.is_empty() {
        return;
    }
    let what = format!(
        "Synthea mix ({} resources, {} bytes on average)",
        resources.len(),
        bytes / resources.len()
    );
    report(&what, &resources, budget.max(resources.len()));
}
