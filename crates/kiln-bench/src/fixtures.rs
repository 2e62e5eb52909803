//! Realistic test resources: Patients and vital-sign Observations (~1.2 KB each), built
//! deterministically from a seed so runs are repeatable, plus a tiny PRNG for the load loops.

use serde_json::{Value, json};

/// SplitMix64: small, fast and good enough to pick ids and values; no dependency needed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

const FAMILY: &[&str] =
    &["Smith", "Johnson", "Garcia", "Okafor", "Nguyen", "Müller", "Rossi", "Kowalski", "Haddad"];
const GIVEN: &[&str] =
    &["Olivia", "Liam", "Amara", "Mateo", "Yuki", "Noah", "Fatima", "Elena", "Kwame", "Sofia"];
const CITY: &[(&str, &str, &str)] = &[
    ("Boston", "MA", "02118"),
    ("Springfield", "IL", "62701"),
    ("Austin", "TX", "73301"),
    ("Portland", "OR", "97201"),
    ("Madison", "WI", "53703"),
];

/// A US Core-shaped Patient: identifiers, name, telecom, address, language. Around 1.2 KB.
pub fn patient(seed: u64) -> Value {
    let mut rng = Rng::new(seed);
    let family = FAMILY[rng.below(FAMILY.len())];
    let given = GIVEN[rng.below(GIVEN.len())];
    let (city, state, zip) = CITY[rng.below(CITY.len())];
    let gender = if rng.below(2) == 0 { "female" } else { "male" };
    let birth =
        format!("{}-{:02}-{:02}", 1930 + rng.below(90), 1 + rng.below(12), 1 + rng.below(28));
    json!({
        "resourceType": "Patient",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical Record Number"}], "text": "Medical Record Number"},
                "system": "http://hospital.example.org/mrn",
                "value": format!("MRN-{seed:08}")
            },
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS", "display": "Social Security Number"}]},
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": format!("999-{:02}-{:04}", rng.below(100), rng.below(10_000))
            }
        ],
        "active": true,
        "name": [{"use": "official", "family": family, "given": [given, GIVEN[rng.below(GIVEN.len())]], "prefix": ["Ms."]}],
        "telecom": [
            {"system": "phone", "value": format!("555-{:03}-{:04}", rng.below(1000), rng.below(10_000)), "use": "home"},
            {"system": "email", "value": format!("{}.{}{}@example.com", given.to_lowercase(), family.to_lowercase(), seed)}
        ],
        "gender": gender,
        "birthDate": birth,
        "address": [{"use": "home", "line": [format!("{} Main Street", 1 + rng.below(999))], "city": city, "state": state, "postalCode": zip, "country": "US"}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M", "display": "Married"}]},
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US", "display": "English (United States)"}]}, "preferred": true}]
    })
}

/// (LOINC code, display, UCUM unit, low, high) of common vital signs.
const VITALS: &[(&str, &str, &str, f64, f64)] = &[
    ("8867-4", "Heart rate", "/min", 50.0, 110.0),
    ("9279-1", "Respiratory rate", "/min", 10.0, 24.0),
    ("8310-5", "Body temperature", "Cel", 36.0, 38.5),
    ("29463-7", "Body weight", "kg", 45.0, 120.0),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 90.0, 100.0),
    ("8302-2", "Body height", "cm", 150.0, 195.0),
];

/// A US Core vital-sign Observation about `patient` (a `Patient/{id}` or `urn:uuid:` reference).
/// Around 1.2 KB serialised.
pub fn observation(patient: &str, seed: u64) -> Value {
    let kind = Rng::new(seed ^ 0x5EED).below(VITALS.len());
    vital(patient, seed, kind)
}

/// The `kind`-th vital sign of [`VITALS`] (0: heart rate, LOINC 8867-4) about `patient`.
pub fn vital(patient: &str, seed: u64, kind: usize) -> Value {
    let mut rng = Rng::new(seed);
    let (code, display, unit, low, high) = VITALS[kind % VITALS.len()];
    let value = low + (high - low) * (rng.below(1000) as f64 / 1000.0);
    let value = (value * 10.0).round() / 10.0;
    let when = format!(
        "20{:02}-{:02}-{:02}T{:02}:{:02}:00Z",
        15 + rng.below(10),
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24),
        rng.below(60)
    );
    json!({
        "resourceType": "Observation",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
        "identifier": [{"system": "http://hospital.example.org/observations", "value": format!("obs-{seed}")}],
        "status": "final",
        "category": [{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}],
            "text": "Vital Signs"
        }],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "subject": {"reference": patient},
        "effectiveDateTime": when,
        "issued": when.replace(":00Z", ":30.000Z"),
        "performer": [{"display": "Nurse on duty, Ward 3"}],
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        "interpretation": [{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N", "display": "Normal"}],
            "text": "Normal"
        }],
        "note": [{"text": "Measured at rest, seated, after five minutes. Device calibrated this morning."}],
        "referenceRange": [{
            "low": {"value": low, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            "high": {"value": high, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            "text": "Normal adult range"
        }]
    })
}
