//! Expansion of the value sets used by required bindings into explicit (system, code) sets.
//!
//! Only what can be enumerated with certainty is expanded: `compose.include` entries naming a
//! whole code system (taken from a `content: complete` CodeSystem in the package, nested
//! concepts included), explicit concept lists and `valueSet` imports; `compose.exclude` of
//! explicit concepts or whole systems. Anything else (filters, external or partial code
//! systems, unknown imports) marks the value set as non-enumerable, and the validator then
//! skips code checks for it.

use super::{read_bundle, resources_of, strip_version};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

const TERMINOLOGY_FILES: [&str; 5] = [
    "valuesets.json",
    "v3-codesystems.json",
    "v2-tables.json",
    "valuesets-medplum.json",
    "valuesets-medplum-generated.json",
];
const RESOURCE_TYPES_CS: &str = "http://hl7.org/fhir/resource-types";
const MEDPLUM_RESOURCE_TYPES_CS: &str = "https://medplum.com/fhir/CodeSystem/resource-types";
/// Code systems defined by a grammar: a package may list some of their codes, never all.
const GRAMMAR_SYSTEMS: [&str; 3] =
    ["http://unitsofmeasure.org", "urn:ietf:bcp:47", "urn:ietf:bcp:13"];

type Codes = BTreeMap<String, BTreeSet<String>>;

/// Why a value set could not be enumerated.
type NotEnumerable = String;

struct Terminology {
    value_sets: HashMap<String, Value>,
    /// Medplum's own resource types, added wherever the whole FHIR resource-types system is.
    medplum_resource_types: BTreeSet<String>,
    /// url -> all codes, for code systems whose content is complete.
    code_systems: HashMap<String, Result<BTreeSet<String>, NotEnumerable>>,
}

pub fn expand_required(
    input: &Path,
    urls: &BTreeSet<String>,
    medplum_resource_types: &[String],
) -> anyhow::Result<Vec<Value>> {
    let mut terminology = Terminology {
        value_sets: HashMap::new(),
        medplum_resource_types: medplum_resource_types.iter().cloned().collect(),
        code_systems: HashMap::new(),
    };
    for file in TERMINOLOGY_FILES {
        let bundle = read_bundle(&input.join(file))?;
        for vs in resources_of(&bundle, "ValueSet") {
            if let Some(url) = vs["url"].as_str() {
                terminology.value_sets.entry(url.to_string()).or_insert_with(|| vs.clone());
            }
        }
        for cs in resources_of(&bundle, "CodeSystem") {
            let Some(url) = cs["url"].as_str() else { continue };
            let codes = code_system_codes(cs);
            let merged = match (terminology.code_systems.remove(url), codes) {
                (None, new) => new,
                (Some(Ok(mut old)), Ok(new)) => {
                    old.extend(new);
                    Ok(old)
                }
                (Some(Ok(old)), Err(_)) => Ok(old),
                (Some(Err(_)), new) => new,
            };
            terminology.code_systems.insert(url.to_string(), merged);
        }
    }

    Ok(urls.iter().map(|url| terminology.compact(url)).collect())
}

/// Expands `urls` from the given ValueSet and CodeSystem resources alone (for a package
/// such as US Core, whose value sets name its own code systems). Same output form as
/// [`expand_required`].
pub fn expand_from(
    value_sets: &[Value],
    code_systems: &[Value],
    urls: &BTreeSet<String>,
) -> Vec<Value> {
    let mut terminology = Terminology {
        value_sets: HashMap::new(),
        medplum_resource_types: BTreeSet::new(),
        code_systems: HashMap::new(),
    };
    for vs in value_sets {
        if let Some(url) = vs["url"].as_str() {
            terminology.value_sets.entry(url.to_string()).or_insert_with(|| vs.clone());
        }
    }
    for cs in code_systems {
        if let Some(url) = cs["url"].as_str() {
            terminology.code_systems.insert(url.to_string(), code_system_codes(cs));
        }
    }
    urls.iter().map(|url| terminology.compact(url)).collect()
}

impl Terminology {
    /// The artifact's form of the value set `url`: `{url, enumerable, codes}` or
    /// `{url, enumerable: false, reason}`.
    fn compact(&self, url: &str) -> Value {
        let mut vs = Map::new();
        vs.insert("url".into(), json!(url));
        match self.expand(url, &mut Vec::new()) {
            Ok(codes) if !codes.values().all(BTreeSet::is_empty) => {
                vs.insert("enumerable".into(), json!(true));
                vs.insert("codes".into(), json!(codes));
            }
            Ok(_) => {
                vs.insert("enumerable".into(), json!(false));
                vs.insert("reason".into(), json!("expands to no codes"));
            }
            Err(reason) => {
                vs.insert("enumerable".into(), json!(false));
                vs.insert("reason".into(), json!(reason));
            }
        }
        Value::Object(vs)
    }
}

/// All codes of a code system, nested concepts included; an error unless its content is complete.
fn code_system_codes(cs: &Value) -> Result<BTreeSet<String>, NotEnumerable> {
    if GRAMMAR_SYSTEMS.iter().any(|g| cs["url"] == *g) {
        return Err("code system is defined by a grammar".to_string());
    }
    let content = cs["content"].as_str().unwrap_or("unknown");
    if content != "complete" {
        return Err(format!("code system content is '{content}'"));
    }
    let mut codes = BTreeSet::new();
    collect_concepts(&cs["concept"], &mut codes);
    if codes.is_empty() {
        return Err("code system lists no concepts".to_string());
    }
    Ok(codes)
}

fn collect_concepts(concepts: &Value, into: &mut BTreeSet<String>) {
    for concept in concepts.as_array().into_iter().flatten() {
        if let Some(code) = concept["code"].as_str() {
            into.insert(code.to_string());
        }
        collect_concepts(&concept["concept"], into);
    }
}

impl Terminology {
    fn expand(&self, url: &str, stack: &mut Vec<String>) -> Result<Codes, NotEnumerable> {
        let url = strip_version(url);
        if stack.iter().any(|u| u == url) {
            return Err(format!("value set {url} imports itself"));
        }
        let Some(vs) = self.value_sets.get(url) else {
            return Err(format!("value set {url} is not in the package"));
        };
        let compose = &vs["compose"];
        if !compose.is_object() {
            return Err(format!("value set {url} has no compose"));
        }
        stack.push(url.to_string());
        let result = self.expand_compose(compose, stack);
        stack.pop();
        result
    }

    fn expand_compose(
        &self,
        compose: &Value,
        stack: &mut Vec<String>,
    ) -> Result<Codes, NotEnumerable> {
        let mut codes = Codes::new();
        for include in compose["include"].as_array().into_iter().flatten() {
            for (system, set) in self.expand_part(include, stack)? {
                codes.entry(system).or_default().extend(set);
            }
        }
        for exclude in compose["exclude"].as_array().into_iter().flatten() {
            if exclude["filter"].is_array() || exclude["valueSet"].is_array() {
                return Err("exclude with a filter or value set".to_string());
            }
            let Some(system) = exclude["system"].as_str() else {
                return Err("exclude without system".to_string());
            };
            match exclude["concept"].as_array() {
                Some(concepts) => {
                    if let Some(set) = codes.get_mut(system) {
                        for c in concepts.iter().filter_map(|c| c["code"].as_str()) {
                            set.remove(c);
                        }
                    }
                }
                None => {
                    codes.remove(system);
                }
            }
        }
        Ok(codes)
    }

    /// One `include`: its system part (concept list or whole system) intersected with its
    /// imported value sets, if both are given.
    fn expand_part(&self, part: &Value, stack: &mut Vec<String>) -> Result<Codes, NotEnumerable> {
        if part["filter"].as_array().is_some_and(|f| !f.is_empty()) {
            return Err("include uses a filter".to_string());
        }
        let from_system = match part["system"].as_str() {
            None => None,
            Some(system) => {
                let set: BTreeSet<String> = match part["concept"].as_array() {
                    Some(concepts) => concepts
                        .iter()
                        .filter_map(|c| c["code"].as_str().map(String::from))
                        .collect(),
                    None => match self.code_systems.get(system) {
                        Some(Ok(all)) => all.clone(),
                        Some(Err(reason)) => return Err(format!("{system}: {reason}")),
                        None => return Err(format!("code system {system} is not in the package")),
                    },
                };
                let mut codes = Codes::from([(system.to_string(), set)]);
                if system == RESOURCE_TYPES_CS && part["concept"].is_null() {
                    // Kiln serves Medplum's resource types too: they are valid resource type codes.
                    codes.insert(
                        MEDPLUM_RESOURCE_TYPES_CS.to_string(),
                        self.medplum_resource_types.clone(),
                    );
                }
                Some(codes)
            }
        };
        let mut imported: Option<Codes> = None;
        for vs in part["valueSet"].as_array().into_iter().flatten() {
            let Some(vs_url) = vs.as_str() else { continue };
            let expansion = self.expand(vs_url, stack)?;
            imported = Some(match imported {
                None => expansion,
                Some(previous) => intersect(&previous, &expansion),
            });
        }
        match (from_system, imported) {
            (Some(a), Some(b)) => Ok(intersect(&a, &b)),
            (Some(a), None) => Ok(a),
            (None, Some(b)) => Ok(b),
            (None, None) => Err("include names neither a system nor a value set".to_string()),
        }
    }
}

fn intersect(a: &Codes, b: &Codes) -> Codes {
    a.iter()
        .filter_map(|(system, codes)| {
            let other = b.get(system)?;
            Some((system.clone(), codes.intersection(other).cloned().collect()))
        })
        .collect()
}
