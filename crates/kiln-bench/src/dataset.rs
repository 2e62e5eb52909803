//! The data the workloads run on, made by `kiln-synth` (deterministic for a seed, no files
//! needed): the patient records loaded before `search` and `export`, the transactions `import`
//! posts, and one resource of each type the `crud` cycle writes.
//!
//! The generator writes each patient as a transaction of `PUT Type/id` entries. Posting the
//! same records again must make new resources (a benchmark load of N copies, or `import` for
//! ten seconds), so the patient bundles are turned into `POST Type` entries: the server gives
//! each resource a new id and resolves the `urn:uuid:` references between them. The shared
//! directory (organizations, locations, practitioners) stays `PUT`: it is loaded once and
//! every copy refers to it by id.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bundles::BundleTemplate;
use crate::synthea::{SyntheaData, SyntheaFile};

/// The types of the `crud` workload, in the order a client cycles through them (Health
/// Samurai's FHIR server benchmark uses the same nine).
pub const CRUD_TYPES: [&str; 9] = [
    "Patient",
    "Encounter",
    "Observation",
    "Condition",
    "MedicationRequest",
    "Procedure",
    "AllergyIntolerance",
    "Immunization",
    "DiagnosticReport",
];

/// Patient records whose transactions `import` posts in turn.
const IMPORT_PATIENTS: u64 = 8;

/// A resource the `crud` cycle creates, without `id`.
#[derive(Debug, Clone)]
pub struct CrudTemplate {
    pub resource_type: &'static str,
    pub body: Value,
    /// `body` serialised, as POSTed.
    pub bytes: Vec<u8>,
}

/// Runs `kiln-synth` into a temporary directory.
fn generate(
    patients: u64,
    seed: u64,
    format: kiln_synth::Format,
    dir: &Path,
) -> anyhow::Result<()> {
    let end = kiln_synth::Date::parse(kiln_synth::DEFAULT_END).context("the default end date")?;
    let options = kiln_synth::Options { patients, seed, format, end };
    kiln_synth::generate(&options, dir, &mut |_, _| {}).context("generating patient records")?;
    Ok(())
}

/// `patients` synthetic records: the directory (shared, PUT) and one POST transaction per
/// patient.
pub fn synthetic_records(patients: u64, seed: u64) -> anyhow::Result<SyntheaData> {
    if patients == 0 {
        bail!("--patients must be at least 1 to load synthetic records");
    }
    let dir = tempfile::tempdir().context("a temporary directory for kiln synth")?;
    generate(patients, seed, kiln_synth::Format::Bundle, dir.path())?;
    let mut data = SyntheaData {
        dir: format!("kiln synth --patients {patients} --seed {seed}").into(),
        shared: Vec::new(),
        patients: Vec::new(),
    };
    let mut names: Vec<String> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    for name in names {
        let bytes = std::fs::read(dir.path().join(&name))?;
        if name == "00-shared.json" {
            data.shared.push(SyntheaFile::from_bytes(&name, bytes)?);
        } else {
            let mut bundle: Value = serde_json::from_slice(&bytes)?;
            puts_to_posts(&mut bundle);
            data.patients.push(SyntheaFile::from_bytes(&name, serde_json::to_vec(&bundle)?)?);
        }
    }
    if data.patients.is_empty() {
        bail!("kiln synth wrote no patient records");
    }
    Ok(data)
}

/// The directory transaction (to post once) and `import`'s templates: the records of
/// [`IMPORT_PATIENTS`] patients as POST transactions, replicated with fresh `urn:uuid`s.
pub fn ingest_templates(seed: u64) -> anyhow::Result<(SyntheaFile, Vec<BundleTemplate>)> {
    let mut data = synthetic_records(IMPORT_PATIENTS, seed)?;
    let directory = data.shared.pop().context("kiln synth wrote no directory")?;
    let templates = data
        .patients
        .iter()
        // A newborn's record can hold the Patient alone; it measures nothing.
        .filter(|file| file.entries >= 10)
        .map(|file| {
            let bundle: Value = serde_json::from_slice(&file.body)?;
            BundleTemplate::from_bundle(&file.name, bundle)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if templates.is_empty() {
        bail!("no synthetic record with 10 or more resources for seed {seed}");
    }
    Ok((directory, templates))
}

/// One resource of each of [`CRUD_TYPES`], the first the generator makes for a seed, without
/// its id; references to other resources stay as they are (`Type/id`).
pub fn crud_templates(seed: u64) -> anyhow::Result<Vec<CrudTemplate>> {
    let dir = tempfile::tempdir().context("a temporary directory for kiln synth")?;
    // Few patients hold every type; more are generated until one of each is found.
    for patients in [10, 40, 200] {
        generate(patients, seed, kiln_synth::Format::Ndjson, dir.path())?;
        let mut found = Vec::new();
        for ty in CRUD_TYPES {
            let path = dir.path().join(format!("{ty}.ndjson"));
            let Ok(text) = std::fs::read_to_string(&path) else { break };
            let Some(line) = text.lines().find(|l| !l.trim().is_empty()) else { break };
            let mut body: Value = serde_json::from_str(line)
                .with_context(|| format!("parsing {}", path.display()))?;
            if let Some(obj) = body.as_object_mut() {
                obj.remove("id");
            }
            let bytes = serde_json::to_vec(&body)?;
            found.push(CrudTemplate { resource_type: ty, body, bytes });
        }
        if found.len() == CRUD_TYPES.len() {
            return Ok(found);
        }
        for entry in std::fs::read_dir(dir.path())? {
            std::fs::remove_file(entry?.path())?;
        }
    }
    bail!("kiln synth made no resource of some crud type for seed {seed}")
}

/// The body of a `crud` update: the template with the created id and a changed identifier, so
/// that every update is a real change (servers may skip an update that changes nothing).
pub fn updated(template: &CrudTemplate, id: &str, change: u64) -> Vec<u8> {
    let mut body = template.body.clone();
    body["id"] = json!(id);
    let marker = json!({"system": "urn:kiln-bench:update", "value": change.to_string()});
    match body.get_mut("identifier").and_then(Value::as_array_mut) {
        Some(identifiers) => identifiers.push(marker),
        None => body["identifier"] = json!([marker]),
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Turns a transaction's `PUT Type/id` entries into `POST Type` without ids.
fn puts_to_posts(bundle: &mut Value) {
    let Some(entries) = bundle["entry"].as_array_mut() else { return };
    for entry in entries {
        let request = &mut entry["request"];
        if request["method"] != "PUT" {
            continue;
        }
        let Some(ty) = request["url"].as_str().and_then(|u| u.split('/').next()).map(str::to_owned)
        else {
            continue;
        };
        *request = json!({"method": "POST", "url": ty});
        if let Some(resource) = entry["resource"].as_object_mut() {
            resource.remove("id");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_posted_so_copies_make_new_resources() {
        let data = synthetic_records(3, 7).unwrap();
        assert_eq!(data.shared.len(), 1);
        assert_eq!(data.patients.len(), 3);
        let shared: Value = serde_json::from_slice(&data.shared[0].body).unwrap();
        assert!(
            shared["entry"].as_array().unwrap().iter().all(|e| e["request"]["method"] == "PUT")
        );
        for file in &data.patients {
            let bundle: Value = serde_json::from_slice(&file.body).unwrap();
            assert_eq!(bundle["type"], "transaction");
            for entry in bundle["entry"].as_array().unwrap() {
                assert_eq!(entry["request"]["method"], "POST", "{}", file.name);
                assert_eq!(entry["request"]["url"], entry["resource"]["resourceType"]);
                assert!(entry["resource"].get("id").is_none());
                assert!(entry["fullUrl"].as_str().unwrap().starts_with("urn:uuid:"));
            }
        }
        // The same seed gives the same data.
        let again = synthetic_records(3, 7).unwrap();
        assert_eq!(again.patients[2].body, data.patients[2].body);
    }

    #[test]
    fn every_crud_type_has_a_template() {
        let templates = crud_templates(1).unwrap();
        let types: Vec<_> = templates.iter().map(|t| t.resource_type).collect();
        assert_eq!(types, CRUD_TYPES);
        for t in &templates {
            assert_eq!(t.body["resourceType"], t.resource_type);
            assert!(t.body.get("id").is_none());
        }
        let body: Value = serde_json::from_slice(&updated(&templates[2], "abc", 9)).unwrap();
        assert_eq!(body["id"], "abc");
        let ids = body["identifier"].as_array().unwrap();
        assert_eq!(ids.last().unwrap()["value"], "9");
    }

    #[test]
    fn import_templates_are_real_records() {
        let (directory, templates) = ingest_templates(1).unwrap();
        assert_eq!(directory.name, "00-shared.json");
        assert!(!templates.is_empty());
        assert!(templates.iter().all(|t| t.resources >= 10));
        let a = templates[0].instantiate();
        assert_ne!(a, templates[0].instantiate(), "copies get fresh urn:uuids");
    }
}
