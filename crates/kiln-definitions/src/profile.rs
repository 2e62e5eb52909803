//! Profiles: constraining StructureDefinitions (US Core 5.0.1 built in) reduced to what
//! validation needs, and the value sets their bindings name.
//!
//! The built-in set comes from `data/us-core-5.0.1.json`, written by
//! `cargo run -p xtask -- gen-profiles` from the official US Core package (see README.md).
//! [`ProfileDef::from_structure_definition`] reads a full StructureDefinition (snapshot or,
//! when it has none, differential) into the same form: the generator and run-time profiles
//! share it.

use crate::ValueSetDef;
use crate::codesystem::{CodeSystemDef, RawCodeSystem};
use crate::valueset::resolve_displays;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// The generated US Core 5.0.1 artifact.
const US_CORE_ARTIFACT: &[u8] = include_bytes!("../data/us-core-5.0.1.json");

/// One constraining StructureDefinition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileDef {
    /// Canonical URL, without version.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub name: String,
    /// The constrained type (`Patient`, `Extension`, `Quantity`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// `baseDefinition`, without version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_definition: Option<String>,
    /// Whether `elements` is a snapshot (true) or a differential still to be expanded.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub snapshot: bool,
    pub elements: Vec<ProfileElement>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One element of a profile. Absent optional fields mean "as the base says".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileElement {
    /// `Patient.extension:race`, `Observation.component:systolic.code`.
    pub id: String,
    /// `Patient.extension`, `Observation.component.code`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// `"*"` or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<ProfileType>,
    /// `fixed[x]`: the value must equal it exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<Value>,
    /// `pattern[x]`: the value must contain it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slicing: Option<Slicing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<ProfileConstraint>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub must_support: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_reference: Option<String>,
}

impl ProfileElement {
    /// The maximum as a number; `None` for `*` or when not set.
    pub fn max_count(&self) -> Option<u32> {
        self.max.as_deref().and_then(|m| m.parse().ok())
    }
}

/// One allowed type of an element, with the profiles it must conform to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileType {
    pub code: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_profile: Vec<String>,
}

/// `ElementDefinition.slicing`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slicing {
    #[serde(default)]
    pub discriminator: Vec<Discriminator>,
    /// `open`, `closed` or `openAtEnd`.
    #[serde(default = "open")]
    pub rules: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ordered: bool,
}

fn open() -> String {
    "open".to_string()
}

/// One slicing discriminator: `value`, `pattern`, `type`, `profile` or `exists`, and a path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Discriminator {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
}

/// `ElementDefinition.binding` (strength and value set only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub strength: String,
    /// Canonical URL, without version.
    pub value_set: String,
}

/// A FHIRPath invariant a profile adds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileConstraint {
    pub key: String,
    /// `error` or `warning`.
    pub severity: String,
    pub expression: String,
    #[serde(default)]
    pub human: String,
}

fn strip_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

impl ProfileDef {
    /// Reads a StructureDefinition resource. Uses its snapshot when it has one, else its
    /// differential (`snapshot` is then false and the caller expands it over the base).
    /// `keep_constraint(key, expression)` decides which invariants are kept (the generator
    /// drops those the base definitions already hold).
    pub fn from_structure_definition(
        sd: &Value,
        keep_constraint: &dyn Fn(&str, &str) -> bool,
    ) -> Result<ProfileDef, String> {
        if sd.get("resourceType").and_then(Value::as_str) != Some("StructureDefinition") {
            return Err("not a StructureDefinition".to_string());
        }
        let url = sd
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| "the StructureDefinition has no url".to_string())?;
        let type_name = sd
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| "the StructureDefinition has no type".to_string())?;
        let (list, snapshot) = match sd.pointer("/snapshot/element").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => (list, true),
            _ => match sd.pointer("/differential/element").and_then(Value::as_array) {
                Some(list) => (list, false),
                None => {
                    return Err("the StructureDefinition has no snapshot or differential".into());
                }
            },
        };
        let mut elements = Vec::with_capacity(list.len());
        for (i, el) in list.iter().enumerate() {
            elements
                .push(element_of(el, keep_constraint).map_err(|e| format!("element {i}: {e}"))?);
        }
        Ok(ProfileDef {
            url: strip_version(url).to_string(),
            version: sd.get("version").and_then(Value::as_str).map(String::from),
            name: sd.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
            type_name: type_name.to_string(),
            base_definition: sd
                .get("baseDefinition")
                .and_then(Value::as_str)
                .map(|b| strip_version(b).to_string()),
            snapshot,
            elements,
        })
    }
}

fn element_of(
    el: &Value,
    keep_constraint: &dyn Fn(&str, &str) -> bool,
) -> Result<ProfileElement, String> {
    let str_of = |key: &str| el.get(key).and_then(Value::as_str).map(String::from);
    let path = str_of("path").ok_or_else(|| "no path".to_string())?;
    let id = str_of("id").unwrap_or_else(|| match str_of("sliceName") {
        Some(slice) => format!("{path}:{slice}"),
        None => path.clone(),
    });
    let mut out = ProfileElement {
        id,
        path,
        slice_name: str_of("sliceName"),
        min: el.get("min").and_then(Value::as_u64).map(|m| m.min(u64::from(u32::MAX)) as u32),
        max: str_of("max"),
        max_length: el
            .get("maxLength")
            .and_then(Value::as_u64)
            .map(|m| m.min(u64::from(u32::MAX)) as u32),
        must_support: el.get("mustSupport").and_then(Value::as_bool).unwrap_or(false),
        content_reference: str_of("contentReference"),
        ..ProfileElement::default()
    };
    for t in el.get("type").and_then(Value::as_array).into_iter().flatten() {
        let Some(code) = t.get("code").and_then(Value::as_str) else { continue };
        let urls = |key: &str| -> Vec<String> {
            t.get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|u| strip_version(u).to_string())
                .collect()
        };
        out.types.push(ProfileType {
            code: code.to_string(),
            profile: urls("profile"),
            target_profile: urls("targetProfile"),
        });
    }
    if let Value::Object(obj) = el {
        for (key, value) in obj {
            if key.starts_with("fixed") && key.len() > 5 {
                out.fixed = Some(value.clone());
            } else if key.starts_with("pattern") && key.len() > 7 {
                out.pattern = Some(value.clone());
            }
        }
    }
    if let Some(slicing) = el.get("slicing").filter(|s| s.is_object()) {
        out.slicing = Some(Slicing {
            discriminator: slicing
                .get("discriminator")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|d| {
                    Some(Discriminator {
                        kind: d.get("type")?.as_str()?.to_string(),
                        path: d.get("path")?.as_str()?.to_string(),
                    })
                })
                .collect(),
            rules: slicing.get("rules").and_then(Value::as_str).unwrap_or("open").to_string(),
            ordered: slicing.get("ordered").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    if let Some(binding) = el.get("binding")
        && let (Some(strength), Some(vs)) = (
            binding.get("strength").and_then(Value::as_str),
            binding.get("valueSet").and_then(Value::as_str),
        )
    {
        out.binding = Some(Binding {
            strength: strength.to_string(),
            value_set: strip_version(vs).to_string(),
        });
    }
    for c in el.get("constraint").and_then(Value::as_array).into_iter().flatten() {
        let (Some(key), Some(expression)) = (
            c.get("key").and_then(Value::as_str),
            c.get("expression").and_then(Value::as_str).map(str::trim),
        ) else {
            continue;
        };
        if !keep_constraint(key, expression) {
            continue;
        }
        out.constraints.push(ProfileConstraint {
            key: key.to_string(),
            severity: if c.get("severity").and_then(Value::as_str) == Some("warning") {
                "warning".to_string()
            } else {
                "error".to_string()
            },
            expression: expression.to_string(),
            human: c.get("human").and_then(Value::as_str).unwrap_or_default().trim().to_string(),
        });
    }
    Ok(out)
}

/// A set of profiles and the value sets their bindings name, e.g. [`us_core()`].
#[derive(Debug, Default)]
pub struct ProfileLibrary {
    /// Where the set comes from (`hl7.fhir.us.core 5.0.1`).
    pub source: String,
    profiles: HashMap<String, ProfileDef>,
    value_sets: HashMap<String, ValueSetDef>,
    code_systems: HashMap<String, CodeSystemDef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLibrary {
    source: String,
    profiles: Vec<ProfileDef>,
    #[serde(default)]
    value_sets: Vec<RawValueSet>,
    #[serde(default)]
    code_systems: Vec<RawCodeSystem>,
}

#[derive(Deserialize)]
struct RawValueSet {
    url: String,
    enumerable: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    codes: HashMap<String, Vec<String>>,
    #[serde(default)]
    display: HashMap<String, HashMap<String, String>>,
}

impl ProfileLibrary {
    /// Parses an artifact written by `xtask gen-profiles`.
    pub fn parse(bytes: &[u8]) -> Result<ProfileLibrary, String> {
        let raw: RawLibrary = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let profiles = raw.profiles.into_iter().map(|p| (p.url.clone(), p)).collect();
        let code_systems = CodeSystemDef::index(raw.code_systems);
        let value_sets = raw
            .value_sets
            .into_iter()
            .map(|v| {
                let codes: HashMap<String, HashSet<String>> = v
                    .codes
                    .into_iter()
                    .map(|(s, c)| (s, c.into_iter().collect::<HashSet<_>>()))
                    .collect();
                let displays = resolve_displays(&codes, v.display, &code_systems);
                let def = ValueSetDef::new(v.url.clone(), v.enumerable, v.reason, codes, displays);
                (v.url, def)
            })
            .collect();
        Ok(ProfileLibrary { source: raw.source, profiles, value_sets, code_systems })
    }

    /// A profile by canonical URL; a `|version` suffix is ignored.
    pub fn profile(&self, url: &str) -> Option<&ProfileDef> {
        self.profiles.get(strip_version(url))
    }

    /// Every profile, in no particular order.
    pub fn profiles(&self) -> impl Iterator<Item = &ProfileDef> {
        self.profiles.values()
    }

    /// A value set by canonical URL; a `|version` suffix is ignored.
    pub fn value_set(&self, url: &str) -> Option<&ValueSetDef> {
        self.value_sets.get(strip_version(url))
    }

    /// A code system of the package (one its value sets draw on), by canonical URL.
    pub fn code_system(&self, url: &str) -> Option<&CodeSystemDef> {
        self.code_systems.get(strip_version(url))
    }

    /// The artifact form of a profile list, value sets and code systems (what
    /// `xtask gen-profiles` writes).
    pub fn artifact(
        source: &str,
        profiles: &[ProfileDef],
        value_sets: Vec<Value>,
        code_systems: Vec<Value>,
    ) -> Value {
        let mut out = Map::new();
        out.insert("source".into(), Value::String(source.to_string()));
        out.insert("licence".into(), Value::String("CC0-1.0 (HL7 FHIR content)".into()));
        out.insert(
            "profiles".into(),
            serde_json::to_value(profiles).unwrap_or(Value::Array(Vec::new())),
        );
        out.insert("valueSets".into(), Value::Array(value_sets));
        if !code_systems.is_empty() {
            out.insert("codeSystems".into(), Value::Array(code_systems));
        }
        Value::Object(out)
    }
}

/// The built-in US Core 5.0.1 profiles, parsed on first use.
pub fn us_core() -> &'static ProfileLibrary {
    static US_CORE: OnceLock<ProfileLibrary> = OnceLock::new();
    US_CORE.get_or_init(|| {
        // Part of the source tree and covered by tests: failing here is a build defect.
        ProfileLibrary::parse(US_CORE_ARTIFACT)
            .expect("embedded data/us-core-5.0.1.json is malformed")
    })
}
