//! The FHIR terminology operations (R4 terminology-service.html), on the expansion and code
//! system machinery of [`crate::terminology`] (the same that backs search's `:in`/`:below`):
//!
//! - `ValueSet/$expand` (`url`+`valueSetVersion`, a `valueSet` resource, or an instance):
//!   `filter` (every word of it is a case-insensitive substring of the display, or the whole
//!   filter a prefix of the code), `count`/`offset` paging, `activeOnly`,
//!   `includeDesignations`, `displayLanguage` (a designation in that language becomes the
//!   display). Displays come from the value set, else from the code system (the project's,
//!   else the built-in one; the built-in value sets carry their displays). More
//!   than [`MAX_EXPAND_PAGE`] codes without `count` is a `too-costly` 400, never a silently
//!   cut list; paging reaches at most [`MAX_EXPANSION`] codes.
//! - `ValueSet/$validate-code`, `CodeSystem/$validate-code`: `result`, `message`, `display`.
//!   A known code with a display other than the system's is valid (`result` true) with a
//!   message saying so, as HAPI does by default.
//! - `CodeSystem/$lookup`: `name`, `version`, `display`, `designation`, and `property` (the
//!   concept's own, `parent`/`child` from the hierarchy, `inactive`); 404 for a code not in
//!   the system.
//! - `CodeSystem/$subsumes`: `equivalent`, `subsumes`, `subsumed-by` or `not-subsumed`.
//! - `ConceptMap/$translate`: the project's ConceptMaps (by `url`, an instance, a
//!   `conceptMap` resource, or every map with the code and matching `source`/`target`),
//!   forward or `reverse`. A target with `dependsOn` matches only when the `dependency`
//!   inputs (POST only) give each element its value; its `product`s are returned as the
//!   match's `product` parts (reversed, every source that might map to the code is returned,
//!   with the `dependsOn` it needs as `product` parts). Forward, a code no element of a
//!   group maps gets the group's `unmapped` default (`provided`: the code itself; `fixed`:
//!   the map's code; both with equivalence `relatedto`, R4 giving the default none;
//!   `other-map`: the named map, at most [`MAX_MAP_CHAIN`] maps deep).
//!
//! Large external systems (LOINC, SNOMED CT, RxNorm, ICD-10, …, see
//! [`crate::terminology::external_system`]) are not shipped. Without a CodeSystem of the
//! project for one of them, `$validate-code` answers `result` true with a message saying the
//! code was not checked (a validator treats the code as unverifiable, not as wrong), and
//! `$lookup` answers the system's `name` and that message, without a display. `$subsumes` and
//! `$expand` over such a system are 4xx errors naming it.
//!
//! Project resources are read through the caller's access (a read for an instance, a search
//! for a canonical URL); the built-in value sets are visible to everyone.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::op_params::OpParams;
use crate::terminology::{
    CodeSystemView, Concept, Expansion, MAX_EXPANSION, ValueSetSource, external_system, too_costly,
};
use crate::{Engine, EngineError, RequestContext};

/// The most codes one `$expand` answer may list; more need `count` (and `offset`).
pub const MAX_EXPAND_PAGE: usize = 1000;

/// One of the terminology operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminologyOp {
    Expand,
    ValueSetValidateCode,
    Lookup,
    CodeSystemValidateCode,
    Subsumes,
    Translate,
}

impl TerminologyOp {
    /// The operation `op` (with its `$`) on resource type `ty`, if it is a terminology one.
    pub fn parse(ty: &str, op: &str) -> Option<TerminologyOp> {
        Some(match (ty, op) {
            ("ValueSet", "$expand") => TerminologyOp::Expand,
            ("ValueSet", "$validate-code") => TerminologyOp::ValueSetValidateCode,
            ("CodeSystem", "$lookup") => TerminologyOp::Lookup,
            ("CodeSystem", "$validate-code") => TerminologyOp::CodeSystemValidateCode,
            ("CodeSystem", "$subsumes") => TerminologyOp::Subsumes,
            ("ConceptMap", "$translate") => TerminologyOp::Translate,
            _ => return None,
        })
    }
}

/// A coding to check or translate.
struct Input {
    system: Option<String>,
    code: String,
    display: Option<String>,
}

impl Input {
    fn from_coding(coding: &Value, name: &str) -> Result<Input, EngineError> {
        let code = coding["code"].as_str().ok_or_else(|| {
            EngineError::invalid(format!("Parameter '{name}' needs a coding with a code"))
        })?;
        Ok(Input {
            system: coding["system"].as_str().map(str::to_owned),
            code: code.to_owned(),
            display: coding["display"].as_str().map(str::to_owned),
        })
    }

    fn label(&self) -> String {
        match &self.system {
            Some(s) => format!("'{s}|{}'", self.code),
            None => format!("'{}'", self.code),
        }
    }
}

/// The codings given by `code`+`system_param`(+`display`), `coding` or `codeableConcept`;
/// none is a 400 naming them.
fn input_codings(p: &OpParams, system_param: &str) -> Result<Vec<Input>, EngineError> {
    let mut out = Vec::new();
    if let Some(code) = p.string("code")? {
        out.push(Input { system: p.string(system_param)?, code, display: p.string("display")? });
    }
    if let Some(coding) = p.coding("coding")? {
        out.push(Input::from_coding(&coding, "coding")?);
    }
    if let Some(cc) = p.codeable_concept("codeableConcept")? {
        for coding in cc["coding"].as_array().into_iter().flatten() {
            out.push(Input::from_coding(coding, "codeableConcept")?);
        }
        if out.is_empty() {
            return Err(EngineError::invalid(
                "Parameter 'codeableConcept' has no coding with a code",
            ));
        }
    }
    if out.is_empty() {
        return Err(EngineError::invalid(format!(
            "Parameter 'code' (with '{system_param}'), 'coding' or 'codeableConcept' is required"
        )));
    }
    Ok(out)
}

/// `url` with `|version` when a version parameter names one.
fn versioned(url: String, version: Option<String>) -> String {
    match version {
        Some(v) if !url.contains('|') => format!("{url}|{v}"),
        _ => url,
    }
}

fn part(name: &str, key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::String(name.into()));
    m.insert(key.into(), value);
    Value::Object(m)
}

fn parameters(parts: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": parts})
}

/// Whether a client's display is the one known (case and spacing aside).
fn same_display(given: &str, known: &str) -> bool {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    norm(given) == norm(known)
}

/// The `$expand` text filter (see the module documentation).
fn matches_filter(code: &str, display: Option<&str>, filter: &str) -> bool {
    let filter = filter.trim().to_lowercase();
    if filter.is_empty() || code.to_lowercase().starts_with(&filter) {
        return true;
    }
    let display = display.unwrap_or_default().to_lowercase();
    filter.split_whitespace().all(|word| display.contains(word))
}

/// The display in `language` among `designation`s, if one has it.
fn designation_in(designation: &[Value], language: &str) -> Option<String> {
    let language = language.to_lowercase();
    designation
        .iter()
        .find(|d| {
            d["language"].as_str().is_some_and(|l| {
                let l = l.to_lowercase();
                l == language || l.starts_with(&format!("{language}-"))
            })
        })
        .and_then(|d| d["value"].as_str())
        .map(str::to_owned)
}

/// A check's answer: `$validate-code`'s `result`, `message` and `display`.
#[derive(Default)]
struct Verdict {
    result: bool,
    messages: Vec<String>,
    display: Option<String>,
}

impl Verdict {
    /// Folds one coding's answer in: any valid coding makes the whole valid.
    fn add(&mut self, ok: bool, message: Option<String>, display: Option<String>) {
        if ok && !self.result {
            self.display = display;
        }
        self.result |= ok;
        self.messages.extend(message);
    }

    fn into_parameters(self) -> Value {
        let mut parts = vec![part("result", "valueBoolean", Value::Bool(self.result))];
        if !self.messages.is_empty() {
            parts.push(part("message", "valueString", Value::String(self.messages.join("; "))));
        }
        if let Some(d) = self.display {
            parts.push(part("display", "valueString", Value::String(d)));
        }
        parameters(parts)
    }

    /// The answer for `input` found (or not) with `known_display`.
    fn found(&mut self, input: &Input, where_: &str, known_display: Option<&str>) {
        let message = match (&input.display, known_display) {
            (Some(given), Some(known)) if !same_display(given, known) => Some(format!(
                "The display '{given}' is not the display of {} in {where_} ('{known}')",
                input.label()
            )),
            _ => None,
        };
        self.add(true, message, known_display.map(str::to_owned));
    }

    /// `input`'s system is a large external one Kiln does not have.
    fn unchecked(&mut self, input: &Input, system: &str) {
        let name = external_system(system).unwrap_or(system);
        self.add(
            true,
            Some(format!(
                "Code system '{system}' ({name}) is not loaded on this server: {} was not checked",
                input.label()
            )),
            None,
        );
    }
}

/// How many ConceptMaps one `$translate` may pass through by `group.unmapped` `other-map`.
const MAX_MAP_CHAIN: usize = 8;

/// What a `$translate` call asks besides its codes.
struct Translation {
    reverse: bool,
    target_system: Option<String>,
    dependencies: Vec<Dependency>,
}

/// One `dependency` input of `$translate`: an element and the codings it holds.
struct Dependency {
    element: Option<String>,
    codings: Vec<(Option<String>, String)>,
}

/// The `dependency` parameters (`element` and `concept`, a CodeableConcept or a Coding).
fn dependencies(p: &OpParams) -> Result<Vec<Dependency>, EngineError> {
    let mut out = Vec::new();
    for parts in p.part_groups("dependency")? {
        let mut dependency = Dependency { element: None, codings: Vec::new() };
        for sub in &parts {
            match sub["name"].as_str() {
                Some("element") => {
                    dependency.element = sub["valueUri"].as_str().map(str::to_owned);
                }
                Some("concept") => {
                    let codings: Vec<&Value> =
                        match (&sub["valueCodeableConcept"], &sub["valueCoding"]) {
                            (Value::Object(cc), _) => cc
                                .get("coding")
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten()
                                .collect(),
                            (_, coding @ Value::Object(_)) => vec![coding],
                            _ => Vec::new(),
                        };
                    for coding in codings {
                        if let Some(code) = coding["code"].as_str() {
                            let system = coding["system"].as_str().map(str::to_owned);
                            dependency.codings.push((system, code.to_owned()));
                        }
                    }
                }
                _ => {}
            }
        }
        if dependency.element.is_none() || dependency.codings.is_empty() {
            return Err(EngineError::invalid(
                "Parameter 'dependency' needs an 'element' (valueUri) and a 'concept' with a code",
            ));
        }
        out.push(dependency);
    }
    Ok(out)
}

/// Whether `dependencies` satisfy every condition of a ConceptMap target's `dependsOn` list:
/// one must be for the condition's element (`property`) and hold its `value` as a code (of
/// its `system`, when both name one).
fn conditions_hold(conditions: &Value, dependencies: &[Dependency]) -> bool {
    conditions.as_array().into_iter().flatten().all(|c| {
        let (property, value, system) =
            (c["property"].as_str(), c["value"].as_str(), c["system"].as_str());
        dependencies.iter().any(|d| {
            d.element.as_deref() == property
                && d.codings.iter().any(|(s, code)| {
                    Some(code.as_str()) == value
                        && (system.is_none() || s.is_none() || s.as_deref() == system)
                })
        })
    })
}

/// A target's `product` (or, reversed, `dependsOn`) list as `$translate` `product` parts.
fn products(outcomes: &Value) -> Vec<Value> {
    outcomes
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let mut concept = Map::new();
            for (from, to) in [("system", "system"), ("value", "code"), ("display", "display")] {
                if let Some(v) = o[from].as_str() {
                    concept.insert(to.into(), json!(v));
                }
            }
            let mut parts = Vec::new();
            if let Some(element) = o["property"].as_str() {
                parts.push(part("element", "valueUri", json!(element)));
            }
            parts.push(part("concept", "valueCoding", Value::Object(concept)));
            json!({"name": "product", "part": parts})
        })
        .collect()
}

impl Engine {
    /// Runs a terminology operation at type level (`id` None) or on the instance `id`.
    pub async fn terminology_operation(
        &self,
        ctx: &RequestContext,
        op: TerminologyOp,
        id: Option<&str>,
        params: &OpParams,
    ) -> Result<Value, EngineError> {
        match op {
            TerminologyOp::Expand => self.op_expand(ctx, id, params).await,
            TerminologyOp::ValueSetValidateCode => {
                self.op_validate_value_set(ctx, id, params).await
            }
            TerminologyOp::Lookup => self.op_lookup(ctx, id, params).await,
            TerminologyOp::CodeSystemValidateCode => {
                self.op_validate_code_system(ctx, id, params).await
            }
            TerminologyOp::Subsumes => self.op_subsumes(ctx, id, params).await,
            TerminologyOp::Translate => self.op_translate(ctx, id, params).await,
        }
    }

    /// The resource `ty/id`, read under the caller's access.
    async fn instance(
        &self,
        ctx: &RequestContext,
        ty: &str,
        id: &str,
    ) -> Result<Value, EngineError> {
        let stored = self.read(ctx, ty, id).await?;
        serde_json::from_slice(&stored.body).map_err(|e| EngineError::Internal(e.to_string()))
    }

    /// The value set an operation names (instance, `valueSet` resource, or `url` with
    /// `valueSetVersion`) and its codes, with displays from the code systems.
    async fn operation_value_set(
        &self,
        ctx: &RequestContext,
        id: Option<&str>,
        p: &OpParams,
        unchecked: Option<&mut BTreeSet<String>>,
    ) -> Result<(Value, Expansion), EngineError> {
        let vs = if let Some(id) = id {
            self.instance(ctx, "ValueSet", id).await?
        } else if let Some(vs) = p.resource("valueSet")? {
            if vs["resourceType"] != "ValueSet" {
                return Err(EngineError::invalid("Parameter 'valueSet' must be a ValueSet"));
            }
            vs
        } else if let Some(url) = p.string("url")? {
            let url = versioned(url, p.string("valueSetVersion")?);
            match self.value_set(ctx, &url).await? {
                Some(ValueSetSource::Stored(vs)) => vs,
                Some(ValueSetSource::BuiltIn(def)) => {
                    let vs =
                        json!({"resourceType": "ValueSet", "url": def.url, "status": "active"});
                    let mut codes = crate::terminology::built_in_expansion(def)?;
                    self.describe(ctx, &mut codes).await?;
                    return Ok((vs, codes));
                }
                None => {
                    return Err(EngineError::NotFound(format!(
                        "ValueSet '{url}' is not known to this server"
                    )));
                }
            }
        } else {
            return Err(EngineError::invalid(
                "Parameter 'url' or 'valueSet' is required (or call the operation on a ValueSet instance)",
            ));
        };
        let mut codes = self.expand_resource(ctx, &vs, 0, unchecked).await?;
        self.describe(ctx, &mut codes).await?;
        Ok((vs, codes))
    }

    /// Fills what the code systems know (the project's, else the built-in ones: display,
    /// designations, status, version) into the concepts that lack it.
    async fn describe(
        &self,
        ctx: &RequestContext,
        codes: &mut Expansion,
    ) -> Result<(), EngineError> {
        let systems: BTreeSet<String> = codes
            .iter()
            .filter(|(_, c)| c.display.is_none())
            .map(|((s, _), _)| s.clone())
            .collect();
        for system in systems {
            let Some(view) = self.code_system(ctx, &system).await? else { continue };
            for ((s, code), concept) in codes.iter_mut() {
                if *s != system {
                    continue;
                }
                if let Some(def) = view.concepts.get(code) {
                    if concept.display.is_none() {
                        concept.display = def.display.clone();
                    }
                    if concept.designation.is_empty() {
                        concept.designation = def.designation.clone();
                    }
                    concept.inactive |= def.inactive;
                }
                if concept.version.is_none() {
                    concept.version = view.version.clone();
                }
            }
        }
        Ok(())
    }

    async fn op_expand(
        &self,
        ctx: &RequestContext,
        id: Option<&str>,
        p: &OpParams,
    ) -> Result<Value, EngineError> {
        let filter = p.string("filter")?;
        let count = p.count("count")?;
        let offset = p.count("offset")?.unwrap_or(0);
        let designations = p.boolean("includeDesignations")?.unwrap_or(false);
        let active_only = p.boolean("activeOnly")?.unwrap_or(false);
        let language = p.string("displayLanguage")?;
        if count.is_some_and(|c| c > MAX_EXPAND_PAGE) {
            return Err(EngineError::invalid(format!(
                "Parameter 'count' may be at most {MAX_EXPAND_PAGE}"
            )));
        }
        let (mut vs, codes) = self.operation_value_set(ctx, id, p, None).await?;
        let selected: Vec<(&(String, String), &Concept)> = codes
            .iter()
            .filter(|(_, c)| !(active_only && c.inactive))
            .filter(|((_, code), c)| {
                filter.as_deref().is_none_or(|f| matches_filter(code, c.display.as_deref(), f))
            })
            .collect();
        let total = selected.len();
        if count.is_none() && total.saturating_sub(offset) > MAX_EXPAND_PAGE {
            return Err(too_costly(format!(
                "The expansion has {total} codes, more than the {MAX_EXPAND_PAGE} one answer may list: page it with count and offset, or narrow it with filter"
            )));
        }
        let contains: Vec<Value> = selected
            .into_iter()
            .skip(offset)
            .take(count.unwrap_or(MAX_EXPANSION))
            .map(|((system, code), c)| {
                let mut item = Map::new();
                item.insert("system".into(), json!(system));
                if let Some(v) = &c.version {
                    item.insert("version".into(), json!(v));
                }
                item.insert("code".into(), json!(code));
                let display = language
                    .as_deref()
                    .and_then(|l| designation_in(&c.designation, l))
                    .or_else(|| c.display.clone());
                if let Some(d) = display {
                    item.insert("display".into(), json!(d));
                }
                if c.inactive {
                    item.insert("inactive".into(), json!(true));
                }
                if designations && !c.designation.is_empty() {
                    item.insert("designation".into(), json!(c.designation));
                }
                Value::Object(item)
            })
            .collect();
        let mut echoed = Vec::new();
        if let Some(f) = &filter {
            echoed.push(part("filter", "valueString", json!(f)));
        }
        if let Some(c) = count {
            echoed.push(part("count", "valueInteger", json!(c)));
        }
        if p.has("offset") {
            echoed.push(part("offset", "valueInteger", json!(offset)));
        }
        if p.has("activeOnly") {
            echoed.push(part("activeOnly", "valueBoolean", json!(active_only)));
        }
        if p.has("includeDesignations") {
            echoed.push(part("includeDesignations", "valueBoolean", json!(designations)));
        }
        if let Some(l) = &language {
            echoed.push(part("displayLanguage", "valueCode", json!(l)));
        }
        let mut expansion = Map::new();
        expansion.insert("identifier".into(), json!(format!("urn:uuid:{}", uuid::Uuid::new_v4())));
        expansion.insert("timestamp".into(), json!(kiln_store::format_instant(chrono::Utc::now())));
        expansion.insert("total".into(), json!(total));
        expansion.insert("offset".into(), json!(offset));
        if !echoed.is_empty() {
            expansion.insert("parameter".into(), Value::Array(echoed));
        }
        if !contains.is_empty() {
            expansion.insert("contains".into(), Value::Array(contains));
        }
        if let Some(obj) = vs.as_object_mut() {
            obj.insert("expansion".into(), Value::Object(expansion));
        }
        Ok(vs)
    }

    async fn op_validate_value_set(
        &self,
        ctx: &RequestContext,
        id: Option<&str>,
        p: &OpParams,
    ) -> Result<Value, EngineError> {
        let inputs = input_codings(p, "system")?;
        let mut unchecked = BTreeSet::new();
        let (vs, codes) = self.operation_value_set(ctx, id, p, Some(&mut unchecked)).await?;
        let name = format!("value set '{}'", vs["url"].as_str().unwrap_or("(no url)"));
        let mut verdict = Verdict::default();
        for input in &inputs {
            let found = match &input.system {
                Some(system) => codes.get(&(system.clone(), input.code.clone())),
                None => codes.iter().find(|((_, c), _)| *c == input.code).map(|(_, c)| c),
            };
            match (found, &input.system) {
                (Some(c), _) => verdict.found(input, &name, c.display.as_deref()),
                (None, Some(system)) if unchecked.contains(system) => {
                    verdict.unchecked(input, system)
                }
                (None, _) => verdict.add(
                    false,
                    Some(format!("The code {} is not in {name}", input.label())),
                    None,
                ),
            }
        }
        Ok(verdict.into_parameters())
    }

    /// The code system an operation names: the instance `id`, a `codeSystem` resource, or
    /// the URL `system` (`None` when Kiln does not know it).
    async fn operation_code_system(
        &self,
        ctx: &RequestContext,
        id: Option<&str>,
        p: &OpParams,
        system: Option<&str>,
    ) -> Result<Option<CodeSystemView>, EngineError> {
        if let Some(id) = id {
            return Ok(Some(CodeSystemView::from_resource(
                &self.instance(ctx, "CodeSystem", id).await?,
            )));
        }
        if let Some(cs) = p.resource("codeSystem")? {
            if cs["resourceType"] != "CodeSystem" {
                return Err(EngineError::invalid("Parameter 'codeSystem' must be a CodeSystem"));
            }
            return Ok(Some(CodeSystemView::from_resource(&cs)));
        }
        match system {
            Some(system) => self.code_system(ctx, system).await,
            None => Ok(None),
        }
    }

    async fn op_validate_code_system(
        &self,
        ctx: &RequestContext,
        id: Option<&str>,
        p: &OpParams,
    ) -> Result<Value, EngineError> {
        let url = p.string("url")?;
        let version = p.string("version")?;
        let inputs = input_codings(p, "system")?;
        let by_resource = id.is_some() || p.has("codeSystem");
        let mut verdict = Verdict::default();
        for input in &inputs {
            let system = url.clone().or_else(|| input.system.clone());
            if !by_resource && system.is_none() {
                return Err(EngineError::invalid(
                    "Parameter 'url' (or a coding with a system) is required",
                ));
            }
            let lookup = system.clone().map(|s| versioned(s, version.clone()));
            match self.operation_code_system(ctx, id, p, lookup.as_deref()).await? {
                Some(view) => {
                    if let (Some(given), false) = (&input.system, view.url.is_empty())
                        && *given != view.url
                    {
                        verdict.add(
                            false,
                            Some(format!(
                                "The coding's system '{given}' is not code system '{}'",
                                view.url
                            )),
                            None,
                        );
                        continue;
                    }
                    let name = format!("code system '{}'", view.url);
                    match view.find(&input.code) {
                        Some((_, def)) => verdict.found(input, &name, def.display.as_deref()),
                        None => verdict.add(
                            false,
                            Some(format!("The code '{}' is not in {name}", input.code)),
                            None,
                        ),
                    }
                }
                None => match system.as_deref() {
                    Some(s) if external_system(s).is_some() => verdict.unchecked(input, s),
                    Some(s) => {
                        return Err(EngineError::NotFound(format!(
                            "Code system '{s}' is not known to this server"
                        )));
                    }
                    None => {
                        return Err(EngineError::invalid("Parameter 'url' is required"));
                    }
                },
            }
        }
        Ok(verdict.into_parameters())
    }

    async fn op_lookup(
        &self,
        ctx: &RequestContext,
        id: Option<&str>,
        p: &OpParams,
    ) -> Result<Value, EngineError> {
        let (system, code) = match (p.string("code")?, p.coding("coding")?) {
            (Some(code), _) => (p.string("system")?, code),
            (None, Some(coding)) => {
                let input = Input::from_coding(&coding, "coding")?;
                (input.system, input.code)
            }
            (None, None) => {
                return Err(EngineError::invalid(
                    "Parameter 'code' (with 'system') or 'coding' is required",
                ));
            }
        };
        if id.is_none() && system.is_none() {
            return Err(EngineError::invalid("Parameter 'system' is required"));
        }
        let wanted = p.strings("property")?;
        let version = p.string("version")?;
        let lookup = system.clone().map(|s| versioned(s, version));
        let Some(view) = self.operation_code_system(ctx, id, p, lookup.as_deref()).await? else {
            let system = system.unwrap_or_default();
            return match external_system(&system) {
                Some(name) => Ok(parameters(vec![
                    part("name", "valueString", json!(name)),
                    part(
                        "message",
                        "valueString",
                        json!(format!(
                            "Code system '{system}' ({name}) is not loaded on this server: '{code}' was not looked up"
                        )),
                    ),
                ])),
                None => Err(EngineError::NotFound(format!(
                    "Code system '{system}' is not known to this server"
                ))),
            };
        };
        let Some((code, def)) = view.find(&code) else {
            return Err(EngineError::NotFound(format!(
                "The code '{code}' is not in code system '{}'",
                if view.url.is_empty() {
                    system.as_deref().unwrap_or_default()
                } else {
                    view.url.as_str()
                }
            )));
        };
        let language = p.string("displayLanguage")?;
        let display = language
            .as_deref()
            .and_then(|l| designation_in(&def.designation, l))
            .or_else(|| def.display.clone())
            .unwrap_or_else(|| code.to_owned());
        let name = view.name.clone().unwrap_or_else(|| view.url.clone());
        let mut parts = vec![part("name", "valueString", json!(name))];
        if let Some(v) = &view.version {
            parts.push(part("version", "valueString", json!(v)));
        }
        parts.push(part("display", "valueString", json!(display)));
        let want = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
        if want("designation") {
            for d in &def.designation {
                let mut sub = Vec::new();
                if let Some(l) = d.get("language") {
                    sub.push(part("language", "valueCode", l.clone()));
                }
                if let Some(u) = d.get("use") {
                    sub.push(part("use", "valueCoding", u.clone()));
                }
                if let Some(v) = d.get("value") {
                    sub.push(part("value", "valueString", v.clone()));
                }
                parts.push(json!({"name": "designation", "part": sub}));
            }
        }
        let property = |code: &str, key: &str, value: Value| {
            json!({"name": "property", "part": [
                part("code", "valueCode", json!(code)),
                part("value", key, value),
            ]})
        };
        if want("definition")
            && let Some(text) = &def.definition
        {
            parts.push(property("definition", "valueString", json!(text)));
        }
        if want("parent") {
            for parent in &def.parents {
                parts.push(property("parent", "valueCode", json!(parent)));
            }
        }
        if want("child") {
            for child in view.children(code) {
                parts.push(property("child", "valueCode", json!(child)));
            }
        }
        if want("inactive") && def.inactive {
            parts.push(property("inactive", "valueBoolean", json!(true)));
        }
        for prop in &def.property {
            let Some(name) = prop["code"].as_str() else { continue };
            if matches!(name, "parent" | "child" | "subsumedBy") || !want(name) {
                continue;
            }
            if let Some((key, value)) =
                prop.as_object().into_iter().flatten().find(|(k, _)| k.starts_with("value"))
            {
                parts.push(property(name, key, value.clone()));
            }
        }
        Ok(parameters(parts))
    }

    async fn op_subsumes(
        &self,
        ctx: &RequestContext,
        id: Option<&str>,
        p: &OpParams,
    ) -> Result<Value, EngineError> {
        let side = |code: &str, coding: &str| -> Result<Input, EngineError> {
            match (p.string(code)?, p.coding(coding)?) {
                (Some(c), _) => Ok(Input { system: None, code: c, display: None }),
                (None, Some(coding_value)) => Input::from_coding(&coding_value, coding),
                (None, None) => Err(EngineError::invalid(format!(
                    "Parameter '{code}' or '{coding}' is required"
                ))),
            }
        };
        let (a, b) = (side("codeA", "codingA")?, side("codeB", "codingB")?);
        let mut systems: BTreeSet<String> = BTreeSet::new();
        systems.extend(p.string("system")?);
        systems.extend(a.system.clone());
        systems.extend(b.system.clone());
        if systems.len() > 1 {
            return Err(EngineError::invalid(format!(
                "The codes to compare are from different systems ({})",
                systems.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        let system = systems.into_iter().next();
        if id.is_none() && system.is_none() {
            return Err(EngineError::invalid("Parameter 'system' is required"));
        }
        let version = p.string("version")?;
        let lookup = system.clone().map(|s| versioned(s, version));
        let Some(view) = self.operation_code_system(ctx, id, p, lookup.as_deref()).await? else {
            let system = system.unwrap_or_default();
            return Err(match external_system(&system) {
                Some(name) => EngineError::NotSupported(format!(
                    "Code system '{system}' ({name}) is not loaded on this server: add a CodeSystem resource with its concepts to compare its codes"
                )),
                None => EngineError::NotFound(format!(
                    "Code system '{system}' is not known to this server"
                )),
            });
        };
        let find = |input: &Input| {
            view.find(&input.code).map(|(c, _)| c.to_owned()).ok_or_else(|| {
                EngineError::NotFound(format!(
                    "The code '{}' is not in code system '{}'",
                    input.code, view.url
                ))
            })
        };
        let (a, b) = (find(&a)?, find(&b)?);
        let outcome = view.subsumption(&a, &b).code();
        Ok(parameters(vec![part("outcome", "valueCode", json!(outcome))]))
    }

    async fn op_translate(
        &self,
        ctx: &RequestContext,
        id: Option<&str>,
        p: &OpParams,
    ) -> Result<Value, EngineError> {
        let reverse = p.boolean("reverse")?.unwrap_or(false);
        let inputs = input_codings(p, "system")?;
        let source = p.string("source")?;
        let target = p.string("target")?;
        let target_system = p.string("targetsystem")?;
        let maps: Vec<Value> = if let Some(id) = id {
            vec![self.instance(ctx, "ConceptMap", id).await?]
        } else if let Some(map) = p.resource("conceptMap")? {
            if map["resourceType"] != "ConceptMap" {
                return Err(EngineError::invalid("Parameter 'conceptMap' must be a ConceptMap"));
            }
            vec![map]
        } else if let Some(url) = p.string("url")? {
            let url = versioned(url, p.string("conceptMapVersion")?);
            match self.find_canonical(ctx, "ConceptMap", &url).await? {
                Some(map) => vec![map],
                None => {
                    return Err(EngineError::NotFound(format!(
                        "ConceptMap '{url}' is not known to this server"
                    )));
                }
            }
        } else {
            // Every map of the project that has one of the codes on the side translated from.
            let param = if reverse { "target-code" } else { "source-code" };
            let codes: BTreeSet<String> =
                inputs.iter().map(|i| i.code.replace('\\', "\\\\").replace(',', "\\,")).collect();
            let pairs = [(param.to_owned(), codes.into_iter().collect::<Vec<_>>().join(","))];
            let found = self.search_matches(ctx, "ConceptMap", &pairs, 100).await?;
            found.iter().filter_map(|s| serde_json::from_slice(&s.body).ok()).collect()
        };
        // Which side of a map the `source` and `target` value sets must match.
        let side_of = |map: &Value, side: &str| {
            map[format!("{side}Uri")]
                .as_str()
                .or(map[format!("{side}Canonical")].as_str())
                .map(str::to_owned)
        };
        let (from_side, to_side) =
            if reverse { ("target", "source") } else { ("source", "target") };
        let request = Translation { reverse, target_system, dependencies: dependencies(p)? };
        let mut matches = Vec::new();
        for map in &maps {
            if source.as_ref().is_some_and(|s| side_of(map, from_side).as_ref() != Some(s))
                || target.as_ref().is_some_and(|t| side_of(map, to_side).as_ref() != Some(t))
            {
                continue;
            }
            matches.extend(self.translate_with(ctx, map, &inputs, &request, 0).await?);
        }
        let result = matches.iter().any(|(e, _)| !matches!(e.as_str(), "unmatched" | "disjoint"));
        let mut parts = vec![part("result", "valueBoolean", json!(result))];
        if !result {
            let what: Vec<String> = inputs.iter().map(Input::label).collect();
            parts.push(part(
                "message",
                "valueString",
                json!(format!("No mapping found for {}", what.join(", "))),
            ));
        }
        parts.extend(matches.into_iter().map(|(_, m)| m));
        Ok(parameters(parts))
    }

    /// The matches of `inputs` in one ConceptMap: each target of an element with the code
    /// whose `dependsOn` the request's dependencies satisfy, with the target's `product`s as
    /// `product` parts (when `reverse`: each element whose target has the code, whatever
    /// the dependencies, with the target's `dependsOn` as `product` parts). Forward, an input that no element of a group
    /// matches (and that no element declares `unmatched`) gets the group's `unmapped`
    /// default: `provided` (the input code), `fixed` (the map's code), or `other-map` (the
    /// named map, followed at most [`MAX_MAP_CHAIN`] maps deep).
    async fn translate_with(
        &self,
        ctx: &RequestContext,
        map: &Value,
        inputs: &[Input],
        request: &Translation,
        depth: usize,
    ) -> Result<Vec<(String, Value)>, EngineError> {
        let reverse = request.reverse;
        let map_url = map["url"].as_str().map(str::to_owned);
        let match_of = |equivalence: &str, concept: Map<String, Value>, products: Vec<Value>| {
            let mut m = vec![
                part("equivalence", "valueCode", json!(equivalence)),
                part("concept", "valueCoding", Value::Object(concept)),
            ];
            m.extend(products);
            if let Some(u) = &map_url {
                m.push(part("source", "valueUri", json!(u)));
            }
            (equivalence.to_owned(), json!({"name": "match", "part": m}))
        };
        let mut matches = Vec::new();
        for group in map["group"].as_array().into_iter().flatten() {
            let (group_from, group_to) = if reverse {
                (group["target"].as_str(), group["source"].as_str())
            } else {
                (group["source"].as_str(), group["target"].as_str())
            };
            if request.target_system.as_deref().is_some_and(|t| group_to != Some(t)) {
                continue;
            }
            for input in inputs {
                if input.system.as_deref().is_some_and(|s| group_from.is_some_and(|g| g != s)) {
                    continue;
                }
                // Whether the group maps this input (a match, or an explicit `unmatched`).
                let mut mapped = false;
                for element in group["element"].as_array().into_iter().flatten() {
                    for t in element["target"].as_array().into_iter().flatten() {
                        let (from, to, to_display) = if reverse {
                            (&t["code"], &element["code"], &element["display"])
                        } else {
                            (&element["code"], &t["code"], &t["display"])
                        };
                        if from.as_str() != Some(input.code.as_str()) {
                            continue;
                        }
                        // Reversed, every source that might map to the code is one (the
                        // spec's reading of `reverse`), its conditions returned as products.
                        let (conditions, outcomes) = if reverse {
                            (&Value::Null, &t["dependsOn"])
                        } else {
                            (&t["dependsOn"], &t["product"])
                        };
                        if !conditions_hold(conditions, &request.dependencies) {
                            continue;
                        }
                        mapped = true;
                        let equivalence = t["equivalence"].as_str().unwrap_or("equivalent");
                        let mut concept = Map::new();
                        if let Some(s) = group_to {
                            concept.insert("system".into(), json!(s));
                        }
                        if let Some(c) = to.as_str() {
                            concept.insert("code".into(), json!(c));
                        }
                        if let Some(d) = to_display.as_str() {
                            concept.insert("display".into(), json!(d));
                        }
                        matches.push(match_of(equivalence, concept, products(outcomes)));
                    }
                }
                if mapped || reverse {
                    continue;
                }
                let unmapped = &group["unmapped"];
                let mut concept = Map::new();
                match unmapped["mode"].as_str() {
                    Some("provided") => {
                        if let Some(s) = group_to.or(input.system.as_deref()) {
                            concept.insert("system".into(), json!(s));
                        }
                        concept.insert("code".into(), json!(input.code));
                        if let Some(d) = &input.display {
                            concept.insert("display".into(), json!(d));
                        }
                    }
                    Some("fixed") => {
                        let Some(code) = unmapped["code"].as_str() else {
                            return Err(EngineError::Unprocessable(format!(
                                "ConceptMap '{}': group.unmapped of mode 'fixed' has no code",
                                map_url.as_deref().unwrap_or("(no url)")
                            )));
                        };
                        if let Some(s) = group_to {
                            concept.insert("system".into(), json!(s));
                        }
                        concept.insert("code".into(), json!(code));
                        if let Some(d) = unmapped["display"].as_str() {
                            concept.insert("display".into(), json!(d));
                        }
                    }
                    Some("other-map") => {
                        let name = map_url.as_deref().unwrap_or("(no url)");
                        let Some(url) = unmapped["url"].as_str() else {
                            return Err(EngineError::Unprocessable(format!(
                                "ConceptMap '{name}': group.unmapped of mode 'other-map' has no url"
                            )));
                        };
                        if depth + 1 >= MAX_MAP_CHAIN {
                            return Err(EngineError::Unprocessable(format!(
                                "ConceptMap '{name}' leads through group.unmapped to more than {MAX_MAP_CHAIN} maps (a cycle?)"
                            )));
                        }
                        let Some(other) = self.find_canonical(ctx, "ConceptMap", url).await? else {
                            return Err(EngineError::Unprocessable(format!(
                                "ConceptMap '{name}': group.unmapped names ConceptMap '{url}', which is not known to this server"
                            )));
                        };
                        let one = std::slice::from_ref(input);
                        let found =
                            Box::pin(self.translate_with(ctx, &other, one, request, depth + 1))
                                .await?;
                        matches.extend(found);
                        continue;
                    }
                    _ => continue,
                }
                // R4 gives the default no equivalence: the map claims only that it relates.
                matches.push(match_of("relatedto", concept, Vec::new()));
            }
        }
        Ok(matches)
    }
}
