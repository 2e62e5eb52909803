//! `gen-profiles`: reads an unpacked FHIR IG package (the official US Core 5.0.1 package,
//! `package/` with `StructureDefinition-*.json`, `ValueSet-*.json`, `CodeSystem-*.json`)
//! and writes the compact profile artifact embedded by `kiln-definitions`
//! (`data/us-core-5.0.1.json`).
//!
//! Kept per profile: url, version, name, type, baseDefinition and the snapshot elements
//! reduced by `kiln_definitions::ProfileDef::from_structure_definition` (id, path, sliceName,
//! cardinality, types with profile/targetProfile, fixed/pattern, slicing, binding, maxLength,
//! mustSupport and the invariants the base definitions do not already hold). Kept value sets:
//! those named by required or extensible bindings and not already in the base definitions,
//! expanded from the package's own ValueSets and CodeSystems where that is possible, with
//! each code's display; the package's CodeSystems they draw on (codes and displays).
//! Output is sorted, so the same package always gives the same file.

use anyhow::Context;
use kiln_definitions::ProfileDef;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

pub fn run(input: &Path, out: &Path) -> anyhow::Result<()> {
    let manifest = read(&input.join("package.json"))?;
    let source = format!(
        "{} {}",
        manifest["name"].as_str().unwrap_or("unknown"),
        manifest["version"].as_str().unwrap_or("unknown")
    );
    let defs = kiln_definitions::definitions();
    let base: HashSet<(&str, &str)> =
        defs.constraints().iter().map(|c| (c.key.as_str(), c.expression.as_str())).collect();
    let keep = |key: &str, expression: &str| !base.contains(&(key, expression));

    let mut files: Vec<_> = std::fs::read_dir(input)
        .with_context(|| format!("reading {}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut profiles = BTreeMap::new();
    let mut value_sets = Vec::new();
    let mut code_systems = Vec::new();
    for file in &files {
        let resource = read(file)?;
        match resource["resourceType"].as_str() {
            Some("StructureDefinition") if resource["derivation"] == "constraint" => {
                let profile = ProfileDef::from_structure_definition(&resource, &keep)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                anyhow::ensure!(profile.snapshot, "{}: no snapshot", file.display());
                profiles.insert(profile.url.clone(), profile);
            }
            Some("ValueSet") => value_sets.push(resource),
            Some("CodeSystem") => code_systems.push(resource),
            _ => {}
        }
    }
    let mut bound = BTreeSet::new();
    for profile in profiles.values() {
        for el in &profile.elements {
            if let Some(b) = &el.binding
                && (b.strength == "required" || b.strength == "extensible")
                && defs.value_set(&b.value_set).is_none_or(|v| !v.enumerable)
            {
                bound.insert(b.value_set.clone());
            }
        }
    }
    let expanded =
        crate::gen_definitions::valuesets::expand_from(&value_sets, &code_systems, &bound);
    let enumerable = expanded.value_sets.iter().filter(|v| v["enumerable"] == true).count();
    let profiles: Vec<ProfileDef> = profiles.into_values().collect();
    let artifact = kiln_definitions::ProfileLibrary::artifact(
        &source,
        &profiles,
        expanded.value_sets,
        expanded.code_systems,
    );
    let text = serde_json::to_string(&artifact)?;
    std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({} bytes): {} profiles from {source}, {} value sets ({enumerable} enumerable)",
        out.display(),
        text.len(),
        profiles.len(),
        bound.len(),
    );
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}
