//! Expansion of the value sets used by required bindings into explicit (system, code) sets.
//!
//! Only what can be enumerated with certainty is expanded: `compose.include` entries naming a
//! whole code system (taken from a `content: complete` CodeSystem in the package, nested
//! concepts included), explicit concept lists and `valueSet` imports; `compose.exclude` of
//! explicit concepts or whole systems. Anything else (filters, external or partial code
//! systems, unknown imports) marks the value set as non-enumerable, and the validator then
//! skips code checks for it.
//!
//! Each expanded code keeps its display: the value set's own (`compose.include.concept`),
//! else the code system's. The code systems the expansions draw on are written beside the
//! value sets (every code, display and `is-a` parent), and so are the package's other
//! complete code systems that have an `is-a` hierarchy (codes and parents, no displays), for
//! subsumption; a value set lists only the displays its code system entry does not give.
//! No other text (definitions, designations, comments) is kept.

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

/// system -> code -> the code's display in the value set, if it has one.
type Codes = BTreeMap<String, BTreeMap<String, Option<String>>>;

/// Why a value set could not be enumerated.
type NotEnumerable = String;

/// What the package says of one code system (several resources of one URL are merged).
struct CodeSystemInfo {
    /// Every code, in order of first appearance.
    codes: Vec<String>,
    known: BTreeSet<String>,
    display: BTreeMap<String, String>,
    /// The parent a code is nested under (the first one seen).
    nested_under: BTreeMap<String, String>,
    /// Every parent of a code: nesting and the `parent`/`child`/`subsumedBy` properties.
    parents: BTreeMap<String, BTreeSet<String>>,
    /// `Ok` when the whole system is here (`content: complete`, not grammar-defined).
    complete: Result<(), NotEnumerable>,
}

struct Terminology {
    value_sets: HashMap<String, Value>,
    /// Medplum's own resource types, added wherever the whole FHIR resource-types system is.
    medplum_resource_types: BTreeSet<String>,
    code_systems: HashMap<String, CodeSystemInfo>,
}

/// The compact value sets and code systems of an artifact.
pub struct Compacted {
    pub value_sets: Vec<Value>,
    pub code_systems: Vec<Value>,
}

pub fn expand_required(
    input: &Path,
    urls: &BTreeSet<String>,
    medplum_resource_types: &[String],
) -> anyhow::Result<Compacted> {
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
            terminology.add_code_system(cs);
        }
    }
    Ok(terminology.compact_all(urls))
}

/// Expands `urls` from the given ValueSet and CodeSystem resources alone (for a package
/// such as US Core, whose value sets name its own code systems). Same output form as
/// [`expand_required`].
pub fn expand_from(
    value_sets: &[Value],
    code_systems: &[Value],
    urls: &BTreeSet<String>,
) -> Compacted {
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
        terminology.add_code_system(cs);
    }
    terminology.compact_all(urls)
}

impl Terminology {
    /// Reads one CodeSystem resource, merged into what earlier ones of its URL said.
    fn add_code_system(&mut self, cs: &Value) {
        let Some(url) = cs["url"].as_str() else { return };
        let info = self.code_systems.entry(url.to_string()).or_insert_with(|| CodeSystemInfo {
            codes: Vec::new(),
            known: BTreeSet::new(),
            display: BTreeMap::new(),
            nested_under: BTreeMap::new(),
            parents: BTreeMap::new(),
            complete: Err("code system lists no concepts".to_string()),
        });
        let complete = if GRAMMAR_SYSTEMS.contains(&url) {
            Err("code system is defined by a grammar".to_string())
        } else {
            match cs["content"].as_str().unwrap_or("unknown") {
                "complete" => Ok(()),
                content => Err(format!("code system content is '{content}'")),
            }
        };
        // Only a subsumption hierarchy is kept: `grouped-by`, `part-of` and
        // `classified-with` nestings are not `is-a`.
        let is_a = matches!(cs["hierarchyMeaning"].as_str(), None | Some("is-a"));
        let was_complete = info.complete.is_ok();
        info.read_concepts(&cs["concept"], None, is_a);
        // An earlier complete resource of the URL is not undone by a later partial one.
        if !was_complete {
            info.complete = complete.and_then(|()| {
                if info.codes.is_empty() {
                    Err("code system lists no concepts".to_string())
                } else {
                    Ok(())
                }
            });
        }
    }

    /// The artifact's value sets (one per url) and the code systems they draw on or that
    /// have a hierarchy.
    fn compact_all(&self, urls: &BTreeSet<String>) -> Compacted {
        let expansions: Vec<(&String, Result<Codes, NotEnumerable>)> =
            urls.iter().map(|url| (url, self.expand(url, &mut Vec::new()))).collect();
        let mut drawn_on: BTreeSet<&str> = BTreeSet::new();
        for (_, expansion) in &expansions {
            if let Ok(codes) = expansion {
                drawn_on
                    .extend(codes.iter().filter(|(_, c)| !c.is_empty()).map(|(s, _)| s.as_str()));
            }
        }
        let mut systems: BTreeMap<&str, Value> = BTreeMap::new();
        for (url, info) in &self.code_systems {
            if info.complete.is_err() {
                continue;
            }
            let with_display = drawn_on.contains(url.as_str());
            let hierarchical = !info.parents.is_empty();
            if with_display || hierarchical {
                systems.insert(url, info.compact(url, with_display));
            }
        }
        let value_sets = expansions
            .into_iter()
            .map(|(url, expansion)| {
                let mut vs = Map::new();
                vs.insert("url".into(), json!(url));
                match expansion {
                    Ok(codes) if !codes.values().all(BTreeMap::is_empty) => {
                        vs.insert("enumerable".into(), json!(true));
                        let lists: BTreeMap<&String, Vec<&String>> =
                            codes.iter().map(|(s, c)| (s, c.keys().collect())).collect();
                        vs.insert("codes".into(), json!(lists));
                        // Displays the code system entry does not already give.
                        let mut own: BTreeMap<&String, BTreeMap<&String, &String>> =
                            BTreeMap::new();
                        for (system, set) in &codes {
                            let cs = systems.get(system.as_str());
                            for (code, display) in set {
                                let Some(display) = display else { continue };
                                let given = cs.and_then(|cs| cs["display"][code.as_str()].as_str());
                                if given != Some(display.as_str()) {
                                    own.entry(system).or_default().insert(code, display);
                                }
                            }
                        }
                        if !own.is_empty() {
                            vs.insert("display".into(), json!(own));
                        }
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
            })
            .collect();
        Compacted { value_sets, code_systems: systems.into_values().collect() }
    }

    /// The display of `code` in the package's code system `system`, if it gives one.
    fn code_system_display(&self, system: &str, code: &str) -> Option<String> {
        self.code_systems.get(system)?.display.get(code).cloned()
    }
}

impl CodeSystemInfo {
    fn read_concepts(&mut self, concepts: &Value, parent: Option<&str>, is_a: bool) {
        for concept in concepts.as_array().into_iter().flatten() {
            let Some(code) = concept["code"].as_str() else { continue };
            if self.known.insert(code.to_string()) {
                self.codes.push(code.to_string());
            }
            if let Some(display) =
                concept["display"].as_str().map(str::trim).filter(|d| !d.is_empty())
            {
                self.display.entry(code.to_string()).or_insert_with(|| display.to_string());
            }
            if is_a {
                if let Some(p) = parent {
                    self.nested_under.entry(code.to_string()).or_insert_with(|| p.to_string());
                    self.parents.entry(code.to_string()).or_default().insert(p.to_string());
                }
                for prop in concept["property"].as_array().into_iter().flatten() {
                    let Some(other) = prop["valueCode"].as_str() else { continue };
                    match prop["code"].as_str() {
                        Some("parent" | "subsumedBy") => {
                            self.parents
                                .entry(code.to_string())
                                .or_default()
                                .insert(other.to_string());
                        }
                        Some("child") => {
                            self.parents
                                .entry(other.to_string())
                                .or_default()
                                .insert(code.to_string());
                        }
                        _ => {}
                    }
                }
            }
            self.read_concepts(&concept["concept"], Some(code), is_a);
        }
    }

    /// The artifact's form of the code system (see `kiln_definitions` `codesystem.rs`): the
    /// codes as a tree of nested arrays (unless the keys of `display` say it all), the
    /// displays when `with_display`, and the parents the tree cannot show.
    fn compact(&self, url: &str, with_display: bool) -> Value {
        // Parents outside the system are dropped: they cannot be compared.
        let parents: BTreeMap<&str, BTreeSet<&str>> = self
            .parents
            .iter()
            .filter(|(code, _)| self.known.contains(*code))
            .map(|(code, ps)| {
                let ps: BTreeSet<&str> = ps
                    .iter()
                    .filter(|p| self.known.contains(*p) && *p != code)
                    .map(String::as_str)
                    .collect();
                (code.as_str(), ps)
            })
            .filter(|(_, ps)| !ps.is_empty())
            .collect();
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for code in &self.codes {
            if let Some(p) = self
                .nested_under
                .get(code)
                .filter(|p| parents.get(code.as_str()).is_some_and(|ps| ps.contains(p.as_str())))
            {
                children.entry(p.as_str()).or_default().push(code.as_str());
            }
        }
        // The tree: roots are codes nested under nothing; a code left out by a nesting
        // cycle becomes a root, its nesting parent then listed among the extra parents.
        let mut placed: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        let mut tree = Vec::new();
        for code in &self.codes {
            let code = code.as_str();
            let nested = self
                .nested_under
                .get(code)
                .is_some_and(|p| children.get(p.as_str()).is_some_and(|c| c.contains(&code)));
            if !nested {
                tree.push(node(code, None, &children, &mut placed));
            }
        }
        for code in &self.codes {
            if !placed.contains_key(code.as_str()) {
                tree.push(node(code, None, &children, &mut placed));
            }
        }
        let mut extra: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (code, ps) in &parents {
            let shown = placed.get(code).copied().flatten();
            let rest: Vec<&str> = ps.iter().copied().filter(|p| Some(*p) != shown).collect();
            if !rest.is_empty() {
                extra.insert(code, rest);
            }
        }
        let mut out = Map::new();
        out.insert("url".into(), json!(url));
        let flat_and_named = extra.is_empty()
            && tree.iter().all(Value::is_string)
            && with_display
            && self.codes.iter().all(|c| self.display.contains_key(c));
        if !flat_and_named {
            out.insert("concepts".into(), Value::Array(tree));
        }
        if with_display && !self.display.is_empty() {
            out.insert("display".into(), json!(self.display));
        }
        if !extra.is_empty() {
            out.insert("parents".into(), json!(extra));
        }
        Value::Object(out)
    }
}

/// One code of the tree and (recursively) the codes nested under it, each placed once.
fn node<'a>(
    code: &'a str,
    parent: Option<&'a str>,
    children: &BTreeMap<&'a str, Vec<&'a str>>,
    placed: &mut BTreeMap<&'a str, Option<&'a str>>,
) -> Value {
    placed.insert(code, parent);
    let mut items = vec![json!(code)];
    for child in children.get(code).into_iter().flatten() {
        if !placed.contains_key(child) {
            items.push(node(child, Some(code), children, placed));
        }
    }
    if items.len() == 1 { json!(code) } else { Value::Array(items) }
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
                let into = codes.entry(system).or_default();
                for (code, display) in set {
                    let known = into.entry(code).or_default();
                    if known.is_none() {
                        *known = display;
                    }
                }
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
                // A display from the value set's own concept, else from the code system.
                let set: BTreeMap<String, Option<String>> = match part["concept"].as_array() {
                    Some(concepts) => concepts
                        .iter()
                        .filter_map(|c| {
                            let code = c["code"].as_str()?;
                            let own =
                                c["display"].as_str().map(str::trim).filter(|d| !d.is_empty());
                            let display = own
                                .map(String::from)
                                .or_else(|| self.code_system_display(system, code));
                            Some((code.to_string(), display))
                        })
                        .collect(),
                    None => match self.code_systems.get(system).map(|cs| (cs, &cs.complete)) {
                        Some((cs, Ok(()))) => cs
                            .codes
                            .iter()
                            .map(|c| (c.clone(), cs.display.get(c).cloned()))
                            .collect(),
                        Some((_, Err(reason))) => return Err(format!("{system}: {reason}")),
                        None => return Err(format!("code system {system} is not in the package")),
                    },
                };
                let mut codes = Codes::from([(system.to_string(), set)]);
                if system == RESOURCE_TYPES_CS && part["concept"].is_null() {
                    // Kiln serves Medplum's resource types too: they are valid resource type codes.
                    codes.insert(
                        MEDPLUM_RESOURCE_TYPES_CS.to_string(),
                        self.medplum_resource_types.iter().map(|t| (t.clone(), None)).collect(),
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
            let both = codes
                .iter()
                .filter(|(code, _)| other.contains_key(*code))
                .map(|(code, display)| {
                    (code.clone(), display.clone().or_else(|| other.get(code).cloned().flatten()))
                })
                .collect();
            Some((system.clone(), both))
        })
        .collect()
}
