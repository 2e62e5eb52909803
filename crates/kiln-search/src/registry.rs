//! The search parameters in force for one project: Kiln's built-in definitions (R4 core,
//! US Core, Medplum) plus the `SearchParameter` resources the project has created.
//!
//! A project's own parameter is taken when it is `active`, names its `base` types, has a
//! `code` that no built-in parameter of those types uses, a `type` other than `special`,
//! and an `expression` kiln-fhirpath compiles (composites: every component's definition is
//! known, built-in or the project's). Anything else is listed in [`Registry::rejected`] with
//! the reason, so the server can say why a parameter does not work. A resource that repeats
//! a built-in definition (same `url`, as when an implementation guide is loaded) is simply
//! the built-in one.

use crate::extract::{Compiled, compile_def, compiled, compiled_of, extract_param};
use crate::index::{ContainedIn, IndexEntry};
use crate::query::SearchQuery;
use kiln_definitions::{SearchParamComponent, SearchParamDef, SearchParamType, definitions};
use kiln_model::Issue;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Types without `DomainResource` as their base.
const NOT_DOMAIN: [&str; 3] = ["Bundle", "Binary", "Parameters"];

/// The search parameters of one project. Cheap to share (`Arc`); build a new one when the
/// project's `SearchParameter` resources change.
#[derive(Debug, Default)]
pub struct Registry {
    /// The project's own parameters by the base they were declared on (a resource type,
    /// `Resource` or `DomainResource`).
    custom: HashMap<String, Vec<Arc<Compiled>>>,
    /// `(resource id, url)` of each parameter taken.
    sources: Vec<(String, String)>,
    rejected: Vec<Rejected>,
}

/// A `SearchParameter` resource that was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The resource's id.
    pub id: String,
    /// Why.
    pub reason: String,
}

impl Registry {
    /// The built-in parameters only.
    pub fn base() -> &'static Registry {
        static BASE: OnceLock<Registry> = OnceLock::new();
        BASE.get_or_init(Registry::default)
    }

    /// The built-in parameters plus the usable ones among `resources` (a project's
    /// `SearchParameter` resources; others are ignored). When two of them claim the same
    /// code on the same type, the one with the smaller id wins.
    pub fn new<'a>(resources: impl IntoIterator<Item = &'a Value>) -> Registry {
        let mut candidates: Vec<(&str, SearchParamDef)> = Vec::new();
        let mut rejected = Vec::new();
        for r in resources {
            if r.get("resourceType").and_then(Value::as_str) != Some("SearchParameter")
                || r.get("status").and_then(Value::as_str) != Some("active")
            {
                continue;
            }
            let id = r.get("id").and_then(Value::as_str).unwrap_or("");
            match definition(r) {
                Ok(Some(def)) => candidates.push((id, def)),
                Ok(None) => {}
                Err(reason) => rejected.push(Rejected { id: id.to_owned(), reason }),
            }
        }
        candidates.sort_by(|a, b| a.0.cmp(b.0));
        let defs = definitions();
        let mut custom_types: HashMap<String, SearchParamType> = HashMap::new();
        for (_, def) in &candidates {
            custom_types.insert(def.url.clone(), def.param_type);
        }
        let builtin_types: HashMap<&str, SearchParamType> =
            defs.all_search_params().iter().map(|d| (d.url.as_str(), d.param_type)).collect();
        let component_type =
            |url: &str| builtin_types.get(url).or_else(|| custom_types.get(url)).copied();
        let mut registry = Registry { custom: HashMap::new(), sources: Vec::new(), rejected };
        for (id, def) in candidates {
            if let Some(clash) = registry.clash(&def) {
                registry.rejected.push(Rejected { id: id.to_owned(), reason: clash });
                continue;
            }
            let c = compile_def(def, &component_type);
            if c.def.param_type == SearchParamType::Composite && c.components.is_empty() {
                let reason = "a component's definition is not a known search parameter".into();
                registry.rejected.push(Rejected { id: id.to_owned(), reason });
                continue;
            }
            let c = Arc::new(c);
            registry.sources.push((id.to_owned(), c.def.url.clone()));
            for base in &c.def.base {
                registry.custom.entry(base.clone()).or_default().push(c.clone());
            }
        }
        registry
    }

    /// Whether the `SearchParameter` resource could join this registry: `Err` with the
    /// reason when it is active but unusable (no expression, bad FHIRPath, a code taken by
    /// another parameter of its base types, …). Resources that are not active pass.
    pub fn admits(&self, resource: &Value) -> Result<(), String> {
        if resource.get("status").and_then(Value::as_str) != Some("active") {
            return Ok(());
        }
        let id = resource.get("id").and_then(Value::as_str);
        match definition(resource)? {
            None => Ok(()),
            Some(def) => {
                // The resource's own earlier version does not clash with it.
                let mut others = Registry::default();
                for (base, list) in &self.custom {
                    let kept: Vec<Arc<Compiled>> = list
                        .iter()
                        .filter(|c| {
                            !self
                                .sources
                                .iter()
                                .any(|(sid, url)| Some(sid.as_str()) == id && *url == c.def.url)
                        })
                        .cloned()
                        .collect();
                    others.custom.insert(base.clone(), kept);
                }
                match others.clash(&def) {
                    Some(reason) => Err(reason),
                    None => Ok(()),
                }
            }
        }
    }

    /// Why `def` cannot join: its code is taken on one of its base types.
    fn clash(&self, def: &SearchParamDef) -> Option<String> {
        let code = &def.code;
        for base in &def.base {
            let types: Vec<&str> = match base.as_str() {
                "Resource" | "DomainResource" => definitions().resource_types().collect(),
                t => vec![t],
            };
            for ty in types {
                if compiled(ty, code).is_some() {
                    return Some(format!("'{code}' is already a search parameter of {ty}"));
                }
                if self.custom_of(ty).any(|c| c.def.code == *code) {
                    return Some(format!(
                        "'{code}' on {ty} is already defined by another SearchParameter"
                    ));
                }
            }
        }
        None
    }

    /// The `SearchParameter` resources that were not taken, with the reasons.
    pub fn rejected(&self) -> &[Rejected] {
        &self.rejected
    }

    /// Whether the project has parameters of its own.
    pub fn has_custom(&self) -> bool {
        !self.custom.is_empty()
    }

    /// The project's own parameters that apply to `resource_type`.
    fn custom_of<'s>(&'s self, resource_type: &str) -> impl Iterator<Item = &'s Compiled> + 's {
        let domain = !NOT_DOMAIN.contains(&resource_type);
        let lists = [
            self.custom.get(resource_type),
            self.custom.get("Resource"),
            if domain { self.custom.get("DomainResource") } else { None },
        ];
        lists.into_iter().flatten().flatten().map(Arc::as_ref)
    }

    /// Every parameter of the project's own (each once), e.g. for the CapabilityStatement.
    pub fn custom_params(&self) -> Vec<&SearchParamDef> {
        let mut out: Vec<&SearchParamDef> = Vec::new();
        for c in self.custom.values().flatten() {
            if !out.iter().any(|d| d.url == c.def.url) {
                out.push(&c.def);
            }
        }
        out.sort_by(|a, b| a.code.cmp(&b.code));
        out
    }

    /// Whether `code` on `resource_type` is one of the project's own parameters.
    pub fn is_custom(&self, resource_type: &str, code: &str) -> bool {
        self.custom_of(resource_type).any(|c| c.def.code == code)
    }

    /// Parameter `code` of `resource_type` (built-in or the project's), if there is one.
    /// `resource_type` may also be `Resource` (the parameters every type has).
    pub fn param(&self, resource_type: &str, code: &str) -> Option<&SearchParamDef> {
        definitions()
            .search_param(resource_type, code)
            .or_else(|| self.custom_of(resource_type).find(|c| c.def.code == code).map(|c| &c.def))
    }

    /// The type of the component definition `url` (a built-in or the project's parameter).
    pub fn param_type_by_url(&self, url: &str) -> Option<SearchParamType> {
        definitions()
            .all_search_params()
            .iter()
            .find(|d| d.url == url)
            .map(|d| d.param_type)
            .or_else(|| {
                self.custom.values().flatten().find(|c| c.def.url == url).map(|c| c.def.param_type)
            })
    }

    /// The index rows of `resource` (see [`crate::extract()`]) for the built-in parameters
    /// and the project's own.
    ///
    /// Then the rows of each resource in `contained` that has a known type and an id
    /// ([`crate::contained_resources`]), with the parameters of *its* type, marked with
    /// [`IndexEntry::contained`]. A contained resource has no `_lastUpdated` (its own `meta`
    /// is not the store's), and its own `contained` is not looked into.
    pub fn extract(&self, resource: &Value) -> Vec<IndexEntry> {
        let mut out = self.extract_own(resource);
        for (index, ty, c) in crate::contained_resources(resource) {
            let start = out.len();
            out.extend(self.extract_own(c).into_iter().filter(|e| e.code != "_lastUpdated"));
            let at = ContainedIn { index, resource_type: ty.to_owned() };
            for e in &mut out[start..] {
                e.contained = Some(at.clone());
            }
        }
        out
    }

    /// The rows of the resource itself (not of its contained resources).
    fn extract_own(&self, resource: &Value) -> Vec<IndexEntry> {
        let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let ctx = crate::extract::context(resource);
        for c in compiled_of(ty) {
            extract_param(c, &ctx, &mut out);
        }
        for c in self.custom_of(ty) {
            extract_param(c, &ctx, &mut out);
        }
        out
    }

    /// Parses a search with this project's parameters (see [`crate::parse()`]).
    pub fn parse(
        &self,
        resource_type: &str,
        pairs: &[(String, String)],
    ) -> Result<SearchQuery, Vec<Issue>> {
        self.parse_at(resource_type, pairs, chrono::Utc::now().timestamp_millis())
    }

    /// Parses a search with this project's parameters, taking `now_ms` as the current time
    /// (see [`crate::parse_at()`]).
    pub fn parse_at(
        &self,
        resource_type: &str,
        pairs: &[(String, String)],
        now_ms: i64,
    ) -> Result<SearchQuery, Vec<Issue>> {
        crate::parse::parse_with(self, resource_type, pairs, now_ms)
    }
}

/// The definition a `SearchParameter` resource declares: `Ok(None)` when it repeats a
/// built-in one (same URL), `Err` with the reason when it cannot be used.
pub fn definition(resource: &Value) -> Result<Option<SearchParamDef>, String> {
    let text = |name: &str| resource.get(name).and_then(Value::as_str);
    let id = text("id").unwrap_or("");
    let url = text("url").map(str::to_owned).unwrap_or_else(|| format!("urn:kiln:search:{id}"));
    if definitions().all_search_params().iter().any(|d| d.url == url) {
        return Ok(None);
    }
    let code = text("code").ok_or("it has no code")?;
    if !valid_code(code) {
        return Err(format!(
            "code '{code}' must start with a letter and hold only letters, digits, '-' and '_'"
        ));
    }
    let param_type: SearchParamType = resource
        .get("type")
        .cloned()
        .and_then(|t| serde_json::from_value(t).ok())
        .ok_or("it has no valid type")?;
    if param_type == SearchParamType::Special {
        return Err("type 'special' cannot be indexed from an expression".into());
    }
    let strings = |name: &str| -> Vec<String> {
        match resource.get(name) {
            Some(Value::Array(items)) => {
                items.iter().filter_map(Value::as_str).map(str::to_owned).collect()
            }
            _ => Vec::new(),
        }
    };
    let base = strings("base");
    if base.is_empty() {
        return Err("it has no base".into());
    }
    let defs = definitions();
    for b in &base {
        if !(defs.is_resource_type(b) || b == "Resource" || b == "DomainResource") {
            return Err(format!("base '{b}' is not a resource type"));
        }
    }
    let target = strings("target");
    if let Some(t) = target.iter().find(|t| !defs.is_resource_type(t)) {
        return Err(format!("target '{t}' is not a resource type"));
    }
    let expression = text("expression").ok_or("it has no expression")?;
    kiln_fhirpath::compile(expression)
        .map_err(|e| format!("its expression does not compile: {e}"))?;
    let mut components = Vec::new();
    if param_type == SearchParamType::Composite {
        for c in resource.get("component").and_then(Value::as_array).into_iter().flatten() {
            let definition = c.get("definition").and_then(Value::as_str);
            let expression = c.get("expression").and_then(Value::as_str);
            let (Some(definition), Some(expression)) = (definition, expression) else {
                return Err("a component lacks its definition or expression".into());
            };
            kiln_fhirpath::compile(expression)
                .map_err(|e| format!("a component's expression does not compile: {e}"))?;
            components.push(SearchParamComponent {
                definition: definition.to_owned(),
                expression: expression.to_owned(),
            });
        }
        if components.is_empty() {
            return Err("a composite needs components".into());
        }
    }
    Ok(Some(SearchParamDef {
        code: code.to_owned(),
        url,
        base,
        param_type,
        expression: Some(expression.to_owned()),
        target,
        components,
    }))
}

fn valid_code(code: &str) -> bool {
    let mut chars = code.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && code.len() <= 64
}
