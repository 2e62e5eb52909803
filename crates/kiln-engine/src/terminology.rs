//! The terminology behind search's token modifiers `:in`, `:not-in`, `:below` and `:above`
//! and the terminology operations (`terminology_ops`): value set expansion and code system
//! hierarchies, from what the server knows.
//!
//! - A ValueSet is looked up by canonical URL (`url|version` allowed) among the project's
//!   ValueSet resources, then among the value sets built into Kiln (FHIR R4's and US Core's
//!   enumerable bindings, each code with its display). A stored `expansion.contains` is used
//!   as it is; otherwise `compose` is expanded: `include`/`exclude` with `concept` lists,
//!   whole code systems, `filter`s `is-a`, `descendant-of`, `is-not-a`, `=` on `concept`, and
//!   imported `valueSet`s (intersected with the rest of their include, as the spec says).
//! - A code system's concepts and hierarchy come from the project's CodeSystem resource of
//!   that URL (nested `concept`s, or the `parent`/`child`/`subsumedBy` properties), else from
//!   the code systems built into Kiln (`kiln_definitions::builtin_code_system`: FHIR's own and
//!   US Core's, with displays, and the `is-a` hierarchies of the R4 package, the same data
//!   FHIRPath's `subsumes()` answers from). A FHIR system Kiln knows only from codes of the
//!   R4 value sets is flat.
//! - An expansion keeps, per code, what the value set or code system says of it (display,
//!   version, designations, status) in the value set's order; search uses only the codes.
//! - Project resources are found by an ordinary search under the caller's access policy: a
//!   caller who may not search ValueSets sees only the built-in ones.
//! - What cannot be expanded is an error naming the value set or system (a search that
//!   silently matched nothing would be wrong). Expansions stop at [`MAX_EXPANSION`] codes.
//!
//! Search never sees a value set: [`Engine::resolve_terminology`] rewrites each such filter
//! into an ordinary token filter over the codes before the store runs the query. A value of
//! a `code` element is indexed without a system (its binding implies one), so it matches an
//! expanded code by the code alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use indexmap::IndexMap;
use kiln_definitions::{CodeSystemDef, Subsumption, ValueSetDef};
use kiln_model::{Issue, IssueCode};
use kiln_search::{Criterion, Filter, Modifier, SearchQuery, SystemMatch};
use serde_json::Value;

use crate::{Engine, EngineError, RequestContext};

/// The most codes one expansion (or one `:below`/`:above`) may have.
pub const MAX_EXPANSION: usize = 10_000;
/// The most value sets expanded for one validation against a project's profiles.
pub const MAX_VALIDATION_VALUE_SETS: usize = 32;
/// How deeply value sets may import value sets.
const MAX_IMPORT_DEPTH: usize = 8;

type Codes = BTreeSet<(String, String)>;

/// What an expansion knows of one code.
#[derive(Debug, Clone, Default)]
pub(crate) struct Concept {
    pub display: Option<String>,
    pub version: Option<String>,
    /// `designation` elements, as the value set or code system has them.
    pub designation: Vec<Value>,
    pub inactive: bool,
}

/// An expansion: (system, code) → what is known of it, in the order the value set gives.
pub(crate) type Expansion = IndexMap<(String, String), Concept>;

/// One concept of a code system.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConceptDef {
    pub display: Option<String>,
    pub definition: Option<String>,
    pub designation: Vec<Value>,
    /// The concept's own `property` elements.
    pub property: Vec<Value>,
    pub parents: Vec<String>,
    pub inactive: bool,
}

/// A code system's concepts and hierarchy, from a CodeSystem resource, a code system built
/// into Kiln, or (flat) from the codes of the R4 value sets built into Kiln.
#[derive(Debug, Clone, Default)]
pub(crate) struct CodeSystemView {
    pub url: String,
    pub version: Option<String>,
    pub name: Option<String>,
    /// `CodeSystem.caseSensitive` (codes compare exactly unless it is false).
    pub case_sensitive: bool,
    /// `content` is `complete` (or absent): every code of the system is here.
    pub complete: bool,
    pub concepts: IndexMap<String, ConceptDef>,
}

impl CodeSystemView {
    pub fn from_resource(cs: &Value) -> CodeSystemView {
        let mut concepts: IndexMap<String, ConceptDef> = IndexMap::new();
        fn walk(concepts: &Value, parent: Option<&str>, out: &mut IndexMap<String, ConceptDef>) {
            for c in concepts.as_array().into_iter().flatten() {
                let Some(code) = c["code"].as_str() else { continue };
                let entry = out.entry(code.to_owned()).or_default();
                entry.display = c["display"].as_str().map(str::to_owned);
                entry.definition = c["definition"].as_str().map(str::to_owned);
                entry.designation = c["designation"].as_array().cloned().unwrap_or_default();
                entry.property = c["property"].as_array().cloned().unwrap_or_default();
                if let Some(p) = parent {
                    entry.parents.push(p.to_owned());
                }
                for prop in c["property"].as_array().into_iter().flatten() {
                    match (prop["code"].as_str(), prop["valueCode"].as_str()) {
                        (Some("parent" | "subsumedBy"), Some(p)) => {
                            out.entry(code.to_owned()).or_default().parents.push(p.to_owned());
                        }
                        (Some("child"), Some(child)) => {
                            out.entry(child.to_owned()).or_default().parents.push(code.to_owned());
                        }
                        (Some("status"), Some("retired" | "inactive")) => {
                            out.entry(code.to_owned()).or_default().inactive = true;
                        }
                        _ => {}
                    }
                    if prop["code"] == "inactive" && prop["valueBoolean"] == true {
                        out.entry(code.to_owned()).or_default().inactive = true;
                    }
                }
                walk(&c["concept"], Some(code), out);
            }
        }
        walk(&cs["concept"], None, &mut concepts);
        CodeSystemView {
            url: cs["url"].as_str().unwrap_or_default().to_owned(),
            version: cs["version"].as_str().map(str::to_owned),
            name: cs["name"].as_str().or(cs["title"].as_str()).map(str::to_owned),
            case_sensitive: cs["caseSensitive"].as_bool() != Some(false),
            complete: matches!(cs["content"].as_str(), Some("complete") | None),
            concepts,
        }
    }

    /// A code system built into Kiln: every code, its display and its parents.
    fn from_builtin(def: &CodeSystemDef) -> CodeSystemView {
        let concepts = def
            .codes()
            .map(|code| {
                let concept = ConceptDef {
                    display: def.display(code).map(str::to_owned),
                    parents: def.parents(code).to_vec(),
                    ..ConceptDef::default()
                };
                (code.to_owned(), concept)
            })
            .collect();
        CodeSystemView {
            url: def.url.clone(),
            case_sensitive: true,
            complete: true,
            concepts,
            ..CodeSystemView::default()
        }
    }

    /// A system known only from the codes of built-in value sets (with their displays).
    fn flat<'a>(
        url: &str,
        codes: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    ) -> CodeSystemView {
        CodeSystemView {
            url: url.to_owned(),
            case_sensitive: true,
            complete: true,
            concepts: codes
                .map(|(c, display)| {
                    let def =
                        ConceptDef { display: display.map(str::to_owned), ..ConceptDef::default() };
                    (c.to_owned(), def)
                })
                .collect(),
            ..CodeSystemView::default()
        }
    }

    /// How `a` relates to `b`, both codes of the system (as [`CodeSystemView::find`] spells
    /// them), by the rule FHIRPath's `subsumes()` uses for the built-in systems.
    pub fn subsumption(&self, a: &str, b: &str) -> Subsumption {
        let (Some((a, _)), Some((b, _))) = (self.find(a), self.find(b)) else {
            return Subsumption::NotSubsumed;
        };
        kiln_definitions::subsumption(a, b, |c| {
            self.concepts.get(c).into_iter().flat_map(|d| d.parents.iter().map(String::as_str))
        })
    }

    /// The system's own spelling of `code` (case-insensitive when the system says so).
    pub fn find(&self, code: &str) -> Option<(&str, &ConceptDef)> {
        if let Some((c, def)) = self.concepts.get_key_value(code) {
            return Some((c.as_str(), def));
        }
        if self.case_sensitive {
            return None;
        }
        self.concepts
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(code))
            .map(|(c, d)| (c.as_str(), d))
    }

    fn contains(&self, code: &str) -> bool {
        self.concepts.contains_key(code)
    }

    /// The codes directly below `code`.
    pub fn children(&self, code: &str) -> Vec<&str> {
        self.concepts
            .iter()
            .filter(|(_, d)| d.parents.iter().any(|p| p == code))
            .map(|(c, _)| c.as_str())
            .collect()
    }

    /// `code` and every code below it.
    pub fn descendants_or_self(&self, code: &str) -> HashSet<String> {
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for (c, def) in &self.concepts {
            for p in &def.parents {
                children.entry(p.as_str()).or_default().push(c.as_str());
            }
        }
        let mut out = HashSet::from([code.to_owned()]);
        let mut stack = vec![code];
        while let Some(c) = stack.pop() {
            for child in children.get(c).into_iter().flatten() {
                if out.insert((*child).to_owned()) {
                    stack.push(child);
                }
            }
        }
        out
    }

    /// `code` and every code above it.
    pub fn ancestors_or_self(&self, code: &str) -> HashSet<String> {
        let mut out = HashSet::from([code.to_owned()]);
        let mut stack = vec![code.to_owned()];
        while let Some(c) = stack.pop() {
            for p in self.concepts.get(&c).map(|d| d.parents.as_slice()).unwrap_or_default() {
                if out.insert(p.clone()) {
                    stack.push(p.clone());
                }
            }
        }
        out
    }
}

/// Where a value set comes from: the project's ValueSet resource or one built into Kiln.
pub(crate) enum ValueSetSource {
    Stored(Value),
    BuiltIn(&'static ValueSetDef),
}

/// Large code systems Kiln does not ship. Without a CodeSystem of the project for one of
/// them, a code of it cannot be checked: the terminology operations say so rather than fail.
const EXTERNAL_SYSTEMS: &[(&str, &str)] = &[
    ("http://loinc.org", "LOINC"),
    ("http://snomed.info/sct", "SNOMED CT"),
    ("http://www.nlm.nih.gov/research/umls/rxnorm", "RxNorm"),
    ("http://hl7.org/fhir/sid/icd-10", "ICD-10"),
    ("http://hl7.org/fhir/sid/icd-10-cm", "ICD-10-CM"),
    ("http://www.cms.gov/Medicare/Coding/ICD10", "ICD-10-PCS"),
    ("http://hl7.org/fhir/sid/icd-9-cm", "ICD-9-CM"),
    ("http://www.ama-assn.org/go/cpt", "CPT"),
    ("http://hl7.org/fhir/sid/ndc", "NDC"),
    ("http://hl7.org/fhir/sid/cvx", "CVX"),
    ("http://unitsofmeasure.org", "UCUM"),
    ("http://www.whocc.no/atc", "ATC"),
];

/// The name of a large external code system Kiln knows of but does not ship.
pub(crate) fn external_system(url: &str) -> Option<&'static str> {
    EXTERNAL_SYSTEMS.iter().find(|(u, _)| *u == url).map(|(_, name)| *name)
}

/// More codes than an expansion may have: a `too-costly` error.
pub(crate) fn too_costly(message: String) -> EngineError {
    EngineError::Invalid(vec![Issue::error(IssueCode::TooCostly, message)])
}

fn too_many(what: &str) -> EngineError {
    too_costly(format!("{what} has more than {MAX_EXPANSION} codes: too many to expand"))
}

impl Engine {
    /// Rewrites every `:in`, `:not-in`, and token `:below`/`:above` filter of `query` (also
    /// inside chains, `_has` and boolean filters) into a token filter over explicit codes.
    pub(crate) async fn resolve_terminology(
        &self,
        ctx: &RequestContext,
        query: &mut SearchQuery,
    ) -> Result<(), EngineError> {
        let mut filters = std::mem::take(&mut query.filters);
        for f in &mut filters {
            Box::pin(self.resolve_filter(ctx, f)).await?;
        }
        query.filters = filters;
        Ok(())
    }

    async fn resolve_filter(
        &self,
        ctx: &RequestContext,
        f: &mut Filter,
    ) -> Result<(), EngineError> {
        match f {
            Filter::Values { modifier, values, .. }
                if matches!(modifier, Modifier::In | Modifier::NotIn)
                    || (matches!(modifier, Modifier::Below | Modifier::Above)
                        && values.iter().all(|v| matches!(v, Criterion::Token { .. }))) =>
            {
                let mut codes = Codes::new();
                for v in values.iter() {
                    match (&*modifier, v) {
                        (_, Criterion::ValueSet(url)) => {
                            codes.extend(self.expand(ctx, url, 0, None).await?.into_keys())
                        }
                        (
                            Modifier::Below | Modifier::Above,
                            Criterion::Token { system: SystemMatch::Is(system), code: Some(code) },
                        ) => {
                            let below = *modifier == Modifier::Below;
                            let found = self.related_codes(ctx, system, code, below).await?;
                            codes.extend(found.into_iter().map(|c| (system.clone(), c)));
                        }
                        _ => {}
                    }
                    if codes.len() > MAX_EXPANSION {
                        return Err(too_many("The expansion"));
                    }
                }
                let negative = *modifier == Modifier::NotIn;
                // A bare `code` element carries no system (its binding implies one), so a code
                // without a system matches by the code alone.
                let bare: BTreeSet<String> = codes.iter().map(|(_, c)| c.clone()).collect();
                *values = codes
                    .into_iter()
                    .map(|(system, code)| Criterion::Token {
                        system: if system.is_empty() {
                            SystemMatch::Any
                        } else {
                            SystemMatch::Is(system)
                        },
                        code: Some(code),
                    })
                    .chain(bare.into_iter().map(|code| Criterion::Token {
                        system: SystemMatch::NoSystem,
                        code: Some(code),
                    }))
                    .collect();
                *modifier = if negative { Modifier::Not } else { Modifier::None };
                if values.is_empty() {
                    // Nothing is in an empty value set; everything is outside it.
                    *f = if negative { Filter::And(Vec::new()) } else { Filter::Or(Vec::new()) };
                }
                Ok(())
            }
            Filter::Chain { then, .. } | Filter::Has { then, .. } => {
                Box::pin(self.resolve_filter(ctx, then)).await
            }
            Filter::Not(inner) => Box::pin(self.resolve_filter(ctx, inner)).await,
            Filter::And(parts) | Filter::Or(parts) => {
                for p in parts {
                    Box::pin(self.resolve_filter(ctx, p)).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The value set `url` (`url|version` allowed): the project's ValueSet of that URL, else
    /// the built-in one; `None` when neither exists.
    pub(crate) async fn value_set(
        &self,
        ctx: &RequestContext,
        url: &str,
    ) -> Result<Option<ValueSetSource>, EngineError> {
        if let Some(vs) = self.find_canonical(ctx, "ValueSet", url).await? {
            return Ok(Some(ValueSetSource::Stored(vs)));
        }
        Ok(kiln_definitions::builtin_value_set(url).map(ValueSetSource::BuiltIn))
    }

    /// The codes of the value set `url`. With `unchecked`, an include of a whole large
    /// external system Kiln does not have ([`external_system`]) adds that system there instead
    /// of failing.
    pub(crate) async fn expand(
        &self,
        ctx: &RequestContext,
        url: &str,
        depth: usize,
        unchecked: Option<&mut BTreeSet<String>>,
    ) -> Result<Expansion, EngineError> {
        if depth > MAX_IMPORT_DEPTH {
            return Err(EngineError::Unprocessable(format!(
                "ValueSet '{url}' imports value sets more than {MAX_IMPORT_DEPTH} deep"
            )));
        }
        match self.value_set(ctx, url).await? {
            Some(ValueSetSource::Stored(vs)) => {
                Box::pin(self.expand_resource(ctx, &vs, depth, unchecked)).await
            }
            Some(ValueSetSource::BuiltIn(def)) => built_in_expansion(def),
            None => {
                Err(EngineError::invalid(format!("ValueSet '{url}' is not known to this server")))
            }
        }
    }

    /// The codes of a ValueSet resource: its stored `expansion`, else its `compose`.
    pub(crate) async fn expand_resource(
        &self,
        ctx: &RequestContext,
        vs: &Value,
        depth: usize,
        mut unchecked: Option<&mut BTreeSet<String>>,
    ) -> Result<Expansion, EngineError> {
        let url = vs["url"].as_str().unwrap_or("(no url)");
        if let Some(contains) = vs["expansion"]["contains"].as_array() {
            let mut codes = Expansion::new();
            fn flatten(items: &[Value], out: &mut Expansion) {
                for c in items {
                    if let (Some(system), Some(code)) = (c["system"].as_str(), c["code"].as_str()) {
                        out.entry((system.to_owned(), code.to_owned())).or_insert_with(|| {
                            Concept {
                                display: c["display"].as_str().map(str::to_owned),
                                version: c["version"].as_str().map(str::to_owned),
                                designation: c["designation"]
                                    .as_array()
                                    .cloned()
                                    .unwrap_or_default(),
                                inactive: c["inactive"] == true,
                            }
                        });
                    }
                    if let Some(nested) = c["contains"].as_array() {
                        flatten(nested, out);
                    }
                }
            }
            flatten(contains, &mut codes);
            return Ok(codes);
        }
        let compose = &vs["compose"];
        let includes = compose["include"].as_array().cloned().unwrap_or_default();
        if includes.is_empty() {
            return Err(EngineError::Unprocessable(format!(
                "ValueSet '{url}' has neither an expansion nor compose.include"
            )));
        }
        let mut codes = Expansion::new();
        for inc in &includes {
            for (key, concept) in self.include(ctx, inc, depth, unchecked.as_deref_mut()).await? {
                codes.entry(key).or_insert(concept);
            }
            if codes.len() > MAX_EXPANSION {
                return Err(too_many(&format!("ValueSet '{url}'")));
            }
        }
        for exc in compose["exclude"].as_array().into_iter().flatten() {
            let excluded = self.include(ctx, exc, depth, unchecked.as_deref_mut()).await?;
            codes.retain(|key, _| !excluded.contains_key(key));
        }
        if compose["inactive"] == false {
            codes.retain(|_, c| !c.inactive);
        }
        Ok(codes)
    }

    /// The codes of one `compose.include` (or `exclude`).
    async fn include(
        &self,
        ctx: &RequestContext,
        inc: &Value,
        depth: usize,
        mut unchecked: Option<&mut BTreeSet<String>>,
    ) -> Result<Expansion, EngineError> {
        let system = inc["system"].as_str();
        let version = inc["version"].as_str().map(str::to_owned);
        let mut set: Option<Expansion> = None;
        if let Some(system) = system {
            let codes: Expansion = if let Some(concepts) = inc["concept"].as_array() {
                concepts
                    .iter()
                    .filter_map(|c| {
                        let code = c["code"].as_str()?;
                        Some((
                            (system.to_owned(), code.to_owned()),
                            Concept {
                                display: c["display"].as_str().map(str::to_owned),
                                version: version.clone(),
                                designation: c["designation"]
                                    .as_array()
                                    .cloned()
                                    .unwrap_or_default(),
                                inactive: false,
                            },
                        ))
                    })
                    .collect()
            } else if unchecked.is_some()
                && external_system(system).is_some()
                && self.code_system(ctx, system).await?.is_none()
            {
                // Validation only: the codes of this system cannot be listed, nor denied.
                if let Some(unchecked) = unchecked.as_deref_mut() {
                    unchecked.insert(system.to_owned());
                }
                Expansion::new()
            } else {
                let h = self.hierarchy(ctx, system).await?;
                let mut selected: HashSet<String> = h.concepts.keys().cloned().collect();
                for f in inc["filter"].as_array().into_iter().flatten() {
                    let (property, op, value) =
                        (f["property"].as_str(), f["op"].as_str(), f["value"].as_str());
                    let Some(value) = value else {
                        return Err(EngineError::Unprocessable(format!(
                            "A filter on '{system}' has no value"
                        )));
                    };
                    let keep: HashSet<String> = match (property, op) {
                        (Some("concept") | None, Some("is-a")) => h.descendants_or_self(value),
                        (Some("concept") | None, Some("descendant-of")) => {
                            let mut d = h.descendants_or_self(value);
                            d.remove(value);
                            d
                        }
                        (Some("concept") | None, Some("is-not-a")) => {
                            let below = h.descendants_or_self(value);
                            h.concepts.keys().filter(|c| !below.contains(*c)).cloned().collect()
                        }
                        (Some("concept") | None, Some("=")) => HashSet::from([value.to_owned()]),
                        (Some("concept") | None, Some("in")) => {
                            value.split(',').map(|v| v.trim().to_owned()).collect()
                        }
                        (p, o) => {
                            return Err(EngineError::Unprocessable(format!(
                                "ValueSet filter '{} {}' on '{system}' is not supported (Kiln evaluates is-a, descendant-of, is-not-a, = and in on concept)",
                                p.unwrap_or("concept"),
                                o.unwrap_or("?")
                            )));
                        }
                    };
                    selected.retain(|c| keep.contains(c));
                }
                let version = version.clone().or_else(|| h.version.clone());
                h.concepts
                    .iter()
                    .filter(|(code, _)| selected.contains(*code))
                    .map(|(code, def)| {
                        (
                            (system.to_owned(), code.clone()),
                            Concept {
                                display: def.display.clone(),
                                version: version.clone(),
                                designation: def.designation.clone(),
                                inactive: def.inactive,
                            },
                        )
                    })
                    .collect()
            };
            set = Some(codes);
        }
        for url in inc["valueSet"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            let imported = self.expand(ctx, url, depth + 1, unchecked.as_deref_mut()).await?;
            set = Some(match set {
                None => imported,
                Some(mut s) => {
                    s.retain(|key, _| imported.contains_key(key));
                    s
                }
            });
        }
        Ok(set.unwrap_or_default())
    }

    /// `code` and the codes below (`below`) or above it in `system`.
    async fn related_codes(
        &self,
        ctx: &RequestContext,
        system: &str,
        code: &str,
        below: bool,
    ) -> Result<HashSet<String>, EngineError> {
        let h = self.hierarchy(ctx, system).await?;
        if !h.contains(code) {
            return Err(EngineError::invalid(format!(
                "Code '{code}' is not in code system '{system}'"
            )));
        }
        let codes = if below { h.descendants_or_self(code) } else { h.ancestors_or_self(code) };
        if codes.len() > MAX_EXPANSION {
            return Err(too_many(&format!("'{system}|{code}'")));
        }
        Ok(codes)
    }

    /// The complete concepts and hierarchy of `system`; an error naming the system when
    /// Kiln does not have them.
    pub(crate) async fn hierarchy(
        &self,
        ctx: &RequestContext,
        system: &str,
    ) -> Result<CodeSystemView, EngineError> {
        match self.code_system(ctx, system).await? {
            Some(cs) if !cs.complete => Err(EngineError::Unprocessable(format!(
                "CodeSystem '{system}' holds only part of its codes (content is not 'complete')"
            ))),
            Some(cs) => Ok(cs),
            None => Err(EngineError::Unprocessable(format!(
                "Code system '{system}' is not known to this server (add a CodeSystem resource with its concepts)"
            ))),
        }
    }

    /// The concepts of `system` (`url|version` allowed): the project's CodeSystem, else a
    /// code system built into Kiln, else a FHIR code system known only from the codes of the
    /// R4 value sets (flat); `None` when Kiln knows none of them.
    pub(crate) async fn code_system(
        &self,
        ctx: &RequestContext,
        system: &str,
    ) -> Result<Option<CodeSystemView>, EngineError> {
        if let Some(cs) = self.find_canonical(ctx, "CodeSystem", system).await? {
            return Ok(Some(CodeSystemView::from_resource(&cs)));
        }
        let url = system.split('|').next().unwrap_or(system);
        if let Some(def) = kiln_definitions::builtin_code_system(url) {
            return Ok(Some(CodeSystemView::from_builtin(def)));
        }
        // FHIR's own systems only: US Core's value sets list a few codes of large external
        // systems (SNOMED CT, LOINC), which are no view of the whole system.
        if external_system(url).is_some() {
            return Ok(None);
        }
        let mut codes: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        for vs in kiln_definitions::definitions().all_value_sets() {
            for (s, c) in vs.codes() {
                if s == url {
                    let display = codes.entry(c).or_default();
                    if display.is_none() {
                        *display = vs.display(s, c);
                    }
                }
            }
        }
        if codes.is_empty() {
            return Ok(None);
        }
        Ok(Some(CodeSystemView::flat(url, codes.into_iter())))
    }

    /// The expansions of the value sets `urls` for validation against a project's profiles
    /// (the value sets their bindings and `memberOf` constraints name that are not built in:
    /// `Profiles::value_set_urls`), under the caller's access like `$expand`. A value set
    /// that cannot be expanded (unknown, a filter on a system Kiln does not have, more than
    /// [`MAX_EXPANSION`] codes), or one past the first [`MAX_VALIDATION_VALUE_SETS`], is left
    /// out and stays unknown to validation, which then does not judge codes against it. Only
    /// a failure of the server itself (the store) is an error.
    pub(crate) async fn validation_terminology(
        &self,
        ctx: &RequestContext,
        urls: &[String],
    ) -> Result<kiln_validate::SnapshotTerminology, EngineError> {
        let mut snapshot = kiln_validate::SnapshotTerminology::new();
        for url in urls.iter().take(MAX_VALIDATION_VALUE_SETS) {
            match self.expand(ctx, url, 0, None).await {
                Ok(codes) if codes.len() <= MAX_EXPANSION => {
                    snapshot.insert(url, codes.into_keys());
                }
                Ok(_) => {}
                Err(e @ (EngineError::Internal(_) | EngineError::Busy(_))) => return Err(e),
                Err(e @ EngineError::TooManyRequests { .. }) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(snapshot)
    }

    /// The project's `ty` resource (ValueSet, CodeSystem, ConceptMap) with canonical `url`
    /// (`url|version` picks the version; otherwise the most recently updated), found by an
    /// ordinary search under the caller's access: a caller who may not search `ty` finds none.
    pub(crate) async fn find_canonical(
        &self,
        ctx: &RequestContext,
        ty: &str,
        url: &str,
    ) -> Result<Option<Value>, EngineError> {
        let (url, version) = match url.split_once('|') {
            Some((u, v)) => (u, Some(v)),
            None => (url, None),
        };
        let mut pairs = vec![
            ("url".to_owned(), url.to_owned()),
            ("_sort".to_owned(), "-_lastUpdated".to_owned()),
        ];
        if let Some(v) = version {
            pairs.push(("version".to_owned(), v.to_owned()));
        }
        // Parsed here rather than through `search_matches`, whose terminology step may call
        // back into this function.
        let registry = self.registry(&ctx.project).await?;
        let query = registry.parse(ty, &pairs).map_err(EngineError::Invalid)?;
        let found = match self.matches(ctx, query, 1).await {
            Ok(found) => found,
            Err(EngineError::Forbidden(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(found.first().and_then(|s| serde_json::from_slice(&s.body).ok()))
    }
}

/// A built-in value set's codes, sorted, with their displays.
pub(crate) fn built_in_expansion(def: &ValueSetDef) -> Result<Expansion, EngineError> {
    if !def.enumerable {
        return Err(EngineError::Unprocessable(format!(
            "ValueSet '{}' cannot be expanded here: {}",
            def.url,
            def.reason.as_deref().unwrap_or("it is not enumerable")
        )));
    }
    let sorted: BTreeSet<(&str, &str)> = def.codes().collect();
    Ok(sorted
        .into_iter()
        .map(|(s, c)| {
            let concept = Concept {
                display: kiln_definitions::builtin_display(def, s, c).map(str::to_owned),
                ..Concept::default()
            };
            ((s.to_owned(), c.to_owned()), concept)
        })
        .collect())
}
