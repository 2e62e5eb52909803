//! Transaction bundles for the `ingest` scenario, replicated with fresh ids.
//!
//! A [`BundleTemplate`] is a serialised transaction split at every `urn:uuid:` and at the one
//! client-chosen Patient id. Each [`BundleTemplate::instantiate`] joins the pieces with new
//! UUIDs and a new Patient id, so copies never collide and cost one string build, not a JSON walk.
//!
//! Sources: `kiln synth` patient records (see `dataset.rs`), or the Inferno reference-server
//! patients (`uscore_bundle_patient_*.json`) with `--bundles DIR`.

use std::collections::HashMap;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Stands for the Patient id in a template; never appears in real data.
const PATIENT_ID: &str = "kilnbenchpatientid";
const URN: &str = "urn:uuid:";
const UUID_LEN: usize = 36;

/// The Inferno patients used by `ingest`, in order.
pub const INFERNO_FILES: &[&str] = &[
    "uscore_bundle_patient_85.json",
    "uscore_bundle_patient_355.json",
    "uscore_bundle_patient_907.json",
    "uscore_bundle_patient_908.json",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The n-th distinct `urn:uuid:` of the template (the text after the prefix).
    Uuid(usize),
    /// The client-chosen Patient id.
    PatientId,
}

#[derive(Debug)]
pub struct BundleTemplate {
    pub name: String,
    /// Entries, i.e. resources written per bundle.
    pub resources: usize,
    /// Literal text, then a slot to fill, ...; `pieces.len() == slots.len() + 1`.
    pieces: Vec<String>,
    slots: Vec<Slot>,
    distinct_uuids: usize,
}

impl BundleTemplate {
    /// Builds a template from a transaction bundle: fixes the one known defect of the Inferno
    /// data, and replaces the id of a `PUT Patient/{id}` entry (and references to it).
    pub fn from_bundle(name: &str, mut bundle: Value) -> anyhow::Result<BundleTemplate> {
        if bundle["resourceType"] != "Bundle" || bundle["type"] != "transaction" {
            bail!("{name} is not a transaction Bundle");
        }
        rename_period_stop(&mut bundle);
        let entries = bundle["entry"].as_array_mut().context("bundle without entries")?;
        let resources = entries.len();
        let mut old_patient = None;
        for entry in entries.iter_mut() {
            let url = entry["request"]["url"].as_str().unwrap_or_default();
            if entry["request"]["method"] == "PUT"
                && let Some(id) = url.strip_prefix("Patient/")
            {
                if old_patient.is_some() {
                    bail!("{name}: more than one PUT Patient entry");
                }
                old_patient = Some(id.to_owned());
                entry["request"]["url"] = json!(format!("Patient/{PATIENT_ID}"));
                entry["resource"]["id"] = json!(PATIENT_ID);
            } else if entry["request"]["method"] == "PUT" {
                bail!("{name}: PUT {url} would collide between copies");
            }
        }
        if let Some(old) = old_patient {
            rewrite_references(
                &mut bundle,
                &format!("Patient/{old}"),
                &format!("Patient/{PATIENT_ID}"),
            );
        }
        let text = serde_json::to_string(&bundle)?;
        Ok(BundleTemplate::tokenise(name, resources, &text))
    }

    fn tokenise(name: &str, resources: usize, text: &str) -> BundleTemplate {
        let mut pieces = Vec::new();
        let mut slots = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut literal = String::new();
        let mut rest = text;
        loop {
            let next_urn = rest.find(URN).map(|at| (at, true));
            let next_pid = rest.find(PATIENT_ID).map(|at| (at, false));
            let next = match (next_urn, next_pid) {
                (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            let Some((at, is_urn)) = next else { break };
            if is_urn {
                let start = at + URN.len();
                let uuid = rest.get(start..start + UUID_LEN);
                match uuid {
                    Some(uuid) if looks_like_uuid(uuid) => {
                        literal.push_str(&rest[..start]);
                        pieces.push(std::mem::take(&mut literal));
                        let n = seen.len();
                        slots.push(Slot::Uuid(*seen.entry(uuid).or_insert(n)));
                        rest = &rest[start + UUID_LEN..];
                    }
                    _ => {
                        literal.push_str(&rest[..start]);
                        rest = &rest[start..];
                    }
                }
            } else {
                literal.push_str(&rest[..at]);
                pieces.push(std::mem::take(&mut literal));
                slots.push(Slot::PatientId);
                rest = &rest[at + PATIENT_ID.len()..];
            }
        }
        literal.push_str(rest);
        pieces.push(literal);
        BundleTemplate {
            name: name.to_owned(),
            resources,
            pieces,
            slots,
            distinct_uuids: seen.len(),
        }
    }

    /// A copy with fresh UUIDs and a fresh Patient id.
    pub fn instantiate(&self) -> String {
        let uuids: Vec<String> =
            (0..self.distinct_uuids).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let patient = uuid::Uuid::new_v4().to_string();
        let size: usize =
            self.pieces.iter().map(String::len).sum::<usize>() + self.slots.len() * UUID_LEN;
        let mut out = String::with_capacity(size);
        for (piece, slot) in self.pieces.iter().zip(&self.slots) {
            out.push_str(piece);
            match slot {
                Slot::Uuid(n) => out.push_str(&uuids[*n]),
                Slot::PatientId => out.push_str(&patient),
            }
        }
        out.push_str(self.pieces.last().map(String::as_str).unwrap_or_default());
        out
    }
}

fn looks_like_uuid(text: &str) -> bool {
    text.len() == UUID_LEN
        && text.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() }
        })
}

/// Patient 355 of the Inferno data has `effectivePeriod.stop`; Period's element is `end`.
fn rename_period_stop(value: &mut Value) {
    match value {
        Value::Object(obj) => {
            if let Some(Value::Object(period)) = obj.get_mut("effectivePeriod")
                && let Some(stop) = period.remove("stop")
            {
                period.insert("end".into(), stop);
            }
            obj.values_mut().for_each(rename_period_stop);
        }
        Value::Array(items) => items.iter_mut().for_each(rename_period_stop),
        _ => {}
    }
}

fn rewrite_references(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::Object(obj) => {
            for (key, child) in obj.iter_mut() {
                match child {
                    Value::String(s) if key == "reference" && s == from => *s = to.to_owned(),
                    _ => rewrite_references(child, from, to),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|it| rewrite_references(it, from, to)),
        _ => {}
    }
}

/// Where the Inferno data lives when the shared folder sits beside the repository.
#[cfg(test)]
pub fn default_inferno_dir() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/examples/inferno-reference-server-data-current"),
        PathBuf::from("../shared/data/examples/inferno-reference-server-data-current"),
    ];
    candidates.into_iter().find(|dir| INFERNO_FILES.iter().all(|f| dir.join(f).is_file()))
}

pub fn load_inferno(dir: &Path) -> anyhow::Result<Vec<BundleTemplate>> {
    INFERNO_FILES
        .iter()
        .map(|file| {
            let path = dir.join(file);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let bundle: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?;
            BundleTemplate::from_bundle(file, bundle)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:11111111-2222-3333-4444-555555555555",
             "resource": {"resourceType": "Patient", "id": "85"},
             "request": {"method": "PUT", "url": "Patient/85"}},
            {"fullUrl": "urn:uuid:aaaaaaaa-2222-3333-4444-555555555555",
             "resource": {"resourceType": "Observation", "status": "final",
                          "code": {"text": "x"},
                          "effectivePeriod": {"start": "2020-01-01", "stop": "2020-01-02"},
                          "subject": {"reference": "urn:uuid:11111111-2222-3333-4444-555555555555"},
                          "focus": [{"reference": "Patient/85"}]},
             "request": {"method": "POST", "url": "Observation"}}
        ]})
    }

    #[test]
    fn copies_get_fresh_consistent_ids() {
        let template = BundleTemplate::from_bundle("sample", sample()).unwrap();
        assert_eq!(template.resources, 2);
        let a: Value = serde_json::from_str(&template.instantiate()).unwrap();
        let b: Value = serde_json::from_str(&template.instantiate()).unwrap();
        let (pa, pb) = (&a["entry"][0], &b["entry"][0]);
        assert_ne!(pa["fullUrl"], pb["fullUrl"]);
        assert_ne!(pa["resource"]["id"], pb["resource"]["id"]);
        assert_eq!(
            pa["request"]["url"],
            format!("Patient/{}", pa["resource"]["id"].as_str().unwrap())
        );
        let obs = &a["entry"][1]["resource"];
        assert_eq!(obs["subject"]["reference"], pa["fullUrl"]);
        assert_eq!(obs["focus"][0]["reference"], pa["request"]["url"]);
        assert_eq!(obs["effectivePeriod"], json!({"start": "2020-01-01", "end": "2020-01-02"}));
        assert!(!template.instantiate().contains(PATIENT_ID));
    }

    #[test]
    fn other_puts_are_refused() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Practitioner", "id": "1"},
             "request": {"method": "PUT", "url": "Practitioner/1"}}]});
        assert!(BundleTemplate::from_bundle("x", bundle).is_err());
    }

    #[test]
    fn inferno_templates_replicate_when_the_data_is_present() {
        let Some(dir) = default_inferno_dir() else {
            eprintln!("SKIP: the Inferno data is not beside the repository");
            return;
        };
        let templates = load_inferno(&dir).unwrap();
        assert_eq!(templates.len(), INFERNO_FILES.len());
        for template in &templates {
            let text = template.instantiate();
            assert!(!text.contains("\"stop\""), "{}: effectivePeriod.stop left", template.name);
            let copy: Value = serde_json::from_str(&text).unwrap();
            let entries = copy["entry"].as_array().unwrap();
            assert_eq!(entries.len(), template.resources);
            let put: Vec<_> = entries.iter().filter(|e| e["request"]["method"] == "PUT").collect();
            assert_eq!(put.len(), 1, "{}", template.name);
            let id = put[0]["resource"]["id"].as_str().unwrap();
            assert_eq!(id.len(), UUID_LEN);
            assert_eq!(put[0]["request"]["url"], format!("Patient/{id}"));
        }
    }
}
