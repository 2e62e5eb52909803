//! Parsing of the embedded artifact (`data/definitions.json`, written by
//! `cargo run -p xtask -- gen-definitions`) into the lookup structures of [`Definitions`].

use crate::Definitions;
use crate::codesystem::{CodeSystemDef, RawCodeSystem};
use crate::constraint::{ConstraintDef, ConstraintId};
use crate::search::SearchParamDef;
use crate::types::{ElementDef, JsonKind, PrimitiveDef, TypeDef, TypeKind};
use crate::valueset::{ValueSetDef, resolve_displays};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArtifact {
    version: String,
    fhir_version: String,
    primitives: Vec<RawPrimitive>,
    types: Vec<RawType>,
    #[serde(default)]
    constraints: Vec<ConstraintDef>,
    search_parameters: Vec<SearchParamDef>,
    patient_compartment: HashMap<String, Vec<String>>,
    value_sets: Vec<RawValueSet>,
    #[serde(default)]
    code_systems: Vec<RawCodeSystem>,
}

#[derive(Deserialize)]
struct RawPrimitive {
    name: String,
    json: String,
    regex: Option<String>,
}

#[derive(Deserialize)]
struct RawType {
    name: String,
    kind: String,
    #[serde(default, rename = "abstract")]
    is_abstract: bool,
    base: Option<String>,
    url: String,
    elements: Vec<RawElement>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawElement {
    path: String,
    #[serde(default)]
    min: u32,
    /// `"*"`, a number, or absent for 1.
    max: Option<Value>,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    targets: Vec<String>,
    content_reference: Option<String>,
    #[serde(default)]
    summary: bool,
    #[serde(default)]
    modifier: bool,
    binding: Option<String>,
    #[serde(default)]
    constraints: Vec<ConstraintId>,
}

#[derive(Deserialize)]
struct RawValueSet {
    url: String,
    enumerable: bool,
    reason: Option<String>,
    #[serde(default)]
    codes: HashMap<String, HashSet<String>>,
    /// system -> code -> display, where it is not the code system's (see `codesystem.rs`).
    #[serde(default)]
    display: HashMap<String, HashMap<String, String>>,
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Definitions, serde_json::Error> {
    let raw: RawArtifact = serde_json::from_slice(bytes)?;

    let primitives: HashMap<String, PrimitiveDef> = raw
        .primitives
        .into_iter()
        .map(|p| {
            let json = match p.json.as_str() {
                "number" => JsonKind::Number,
                "boolean" => JsonKind::Boolean,
                _ => JsonKind::String,
            };
            (p.name.clone(), PrimitiveDef { name: p.name, json, regex: p.regex })
        })
        .collect();

    let mut types = HashMap::with_capacity(raw.types.len());
    let constraint_count = raw.constraints.len();
    for t in raw.types {
        let mut elements: Vec<ElementDef> = t.elements.into_iter().map(element).collect();
        for el in &mut elements {
            // A dangling index would be a generator bug; drop it rather than panic later.
            el.constraints.retain(|&id| (id as usize) < constraint_count);
        }
        let kind = TypeKind::parse(&t.kind);
        let def = TypeDef::new(t.name.clone(), kind, t.is_abstract, t.base, t.url, elements);
        types.insert(t.name, def);
    }
    let mut names: Vec<String> = types.keys().cloned().collect();
    names.sort();
    for (ordinal, name) in names.iter().enumerate() {
        if let Some(t) = types.get_mut(name) {
            t.ordinal = ordinal;
        }
    }

    let mut resource_types: Vec<String> = types
        .values()
        .filter(|t| t.kind == TypeKind::Resource && !t.is_abstract)
        .map(|t| t.name.clone())
        .collect();
    resource_types.sort();

    let search_params = raw.search_parameters;
    let mut search_by_type: HashMap<String, Vec<usize>> = HashMap::new();
    for name in types.keys() {
        // Own params and those of every ancestor; later definitions win on the same code.
        let lineage = lineage(&types, name);
        let mut by_code: HashMap<&str, usize> = HashMap::new();
        for (i, sp) in search_params.iter().enumerate() {
            if sp.base.iter().any(|b| lineage.contains(&b.as_str())) {
                by_code.insert(sp.code.as_str(), i);
            }
        }
        if !by_code.is_empty() {
            let mut list: Vec<(&str, usize)> = by_code.into_iter().collect();
            list.sort();
            search_by_type.insert(name.clone(), list.into_iter().map(|(_, i)| i).collect());
        }
    }

    let code_systems = CodeSystemDef::index(raw.code_systems);
    let value_sets = raw
        .value_sets
        .into_iter()
        .map(|v| {
            let displays = resolve_displays(&v.codes, v.display, &code_systems);
            (v.url.clone(), ValueSetDef::new(v.url, v.enumerable, v.reason, v.codes, displays))
        })
        .collect();

    Ok(Definitions {
        version: raw.version,
        fhir_version: raw.fhir_version,
        primitives,
        types,
        constraints: raw.constraints,
        resource_types,
        search_params,
        search_by_type,
        patient_compartment: raw.patient_compartment,
        value_sets,
        code_systems,
    })
}

fn element(raw: RawElement) -> ElementDef {
    let max = match &raw.max {
        None => Some(1),
        Some(Value::String(s)) if s == "*" => None,
        Some(Value::String(s)) => s.parse().ok(),
        Some(Value::Number(n)) => n.as_u64().map(|n| n.min(u32::MAX as u64) as u32),
        Some(_) => None,
    };
    let name = raw.path.rsplit('.').next().unwrap_or(&raw.path).to_string();
    ElementDef {
        name,
        path: raw.path,
        min: raw.min,
        max,
        types: raw.types,
        target_types: raw.targets,
        content_reference: raw.content_reference,
        is_summary: raw.summary,
        is_modifier: raw.modifier,
        required_binding: raw.binding,
        constraints: raw.constraints,
        index: 0,
    }
}

/// The type and its ancestors by `base`, most specific first.
fn lineage<'a>(types: &'a HashMap<String, TypeDef>, name: &'a str) -> Vec<&'a str> {
    let mut out = vec![name];
    let mut current = types.get(name);
    while let Some(base) = current.and_then(|t| t.base.as_deref()) {
        if out.contains(&base) || out.len() > 16 {
            break;
        }
        out.push(base);
        current = types.get(base);
    }
    out
}
