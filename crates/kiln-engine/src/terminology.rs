//! The terminology behind search's token modifiers `:in`, `:not-in`, `:below` and `:above`:
//! value set expansion and code system hierarchies, from what the server knows.
//!
//! - A ValueSet is looked up by canonical URL (`url|version` allowed) among the project's
//!   ValueSet resources, then among the value sets built into Kiln (FHIR R4's and US Core's
//!   enumerable required bindings). A stored `expansion.contains` is used as it is;
//!   otherwise `compose` is expanded: `include`/`exclude` with `concept` lists, whole code
//!   systems, `filter`s `is-a`, `descendant-of`, `is-not-a`, `=` on `concept`, and imported
//!   `valueSet`s (intersected with the rest of their include, as the spec says).
//! - A code system's concepts and hierarchy come from the project's CodeSystem resource of
//!   that URL (nested `concept`s, or the `parent`/`child`/`subsumedBy` properties). A system
//!   Kiln knows only from its built-in value sets (FHIR's own code systems) is flat.
//! - What cannot be expanded is an error naming the value set or system (a search that
//!   silently matched nothing would be wrong). Expansions stop at [`MAX_EXPANSION`] codes.
//!
//! Search never sees a value set: [`Engine::resolve_terminology`] rewrites each such filter
//! into an ordinary token filter over the codes before the store runs the query. A value of
//! a `code` element is indexed without a system (its binding implies one), so it matches an
//! expanded code by the code alone.

use std::collections::{BTreeSet, HashMap, HashSet};

use kiln_definitions::definitions;
use kiln_search::{Criterion, Filter, Modifier, SearchQuery, SystemMatch};
use kiln_store::SearchRequest;
use serde_json::Value;

use crate::{Engine, EngineError, RequestContext};

/// The most codes one expansion (or one `:below`/`:above`) may have.
pub const MAX_EXPANSION: usize = 10_000;
/// How deeply value sets may import value sets.
const MAX_IMPORT_DEPTH: usize = 8;

type Codes = BTreeSet<(String, String)>;

/// A code system's concepts: each code with its parents.
struct Hierarchy {
    parents: HashMap<String, Vec<String>>,
}

impl Hierarchy {
    fn from_code_system(cs: &Value) -> Hierarchy {
        let mut parents: HashMap<String, Vec<String>> = HashMap::new();
        fn walk(concepts: &Value, parent: Option<&str>, out: &mut HashMap<String, Vec<String>>) {
            for c in concepts.as_array().into_iter().flatten() {
                let Some(code) = c["code"].as_str() else { continue };
                let entry = out.entry(code.to_owned()).or_default();
                if let Some(p) = parent {
                    entry.push(p.to_owned());
                }
                for prop in c["property"].as_array().into_iter().flatten() {
                    let value = prop["valueCode"].as_str();
                    match (prop["code"].as_str(), value) {
                        (Some("parent" | "subsumedBy"), Some(p)) => {
                            out.entry(code.to_owned()).or_default().push(p.to_owned());
                        }
                        (Some("child"), Some(child)) => {
                            out.entry(child.to_owned()).or_default().push(code.to_owned());
                        }
                        _ => {}
                    }
                }
                walk(&c["concept"], Some(code), out);
            }
        }
        walk(&cs["concept"], None, &mut parents);
        Hierarchy { parents }
    }

    fn flat<'a>(codes: impl Iterator<Item = &'a str>) -> Hierarchy {
        Hierarchy { parents: codes.map(|c| (c.to_owned(), Vec::new())).collect() }
    }

    fn contains(&self, code: &str) -> bool {
        self.parents.contains_key(code)
    }

    /// `code` and every code below it.
    fn descendants_or_self(&self, code: &str) -> HashSet<String> {
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for (c, ps) in &self.parents {
            for p in ps {
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
    fn ancestors_or_self(&self, code: &str) -> HashSet<String> {
        let mut out = HashSet::from([code.to_owned()]);
        let mut stack = vec![code.to_owned()];
        while let Some(c) = stack.pop() {
            for p in self.parents.get(&c).into_iter().flatten() {
                if out.insert(p.clone()) {
                    stack.push(p.clone());
                }
            }
        }
        out
    }
}

fn too_many(what: &str) -> EngineError {
    EngineError::Unprocessable(format!(
        "{what} has more than {MAX_EXPANSION} codes: too many to search with"
    ))
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
                            codes.extend(self.expand(ctx, url, 0).await?)
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

    /// The codes of the value set `url`.
    async fn expand(
        &self,
        ctx: &RequestContext,
        url: &str,
        depth: usize,
    ) -> Result<Codes, EngineError> {
        if depth > MAX_IMPORT_DEPTH {
            return Err(EngineError::Unprocessable(format!(
                "ValueSet '{url}' imports value sets more than {MAX_IMPORT_DEPTH} deep"
            )));
        }
        if let Some(vs) = self.find_canonical(ctx, "ValueSet", url).await? {
            return Box::pin(self.expand_resource(ctx, &vs, depth)).await;
        }
        match definitions().value_set(url) {
            Some(def) if def.enumerable => {
                Ok(def.codes().map(|(s, c)| (s.to_owned(), c.to_owned())).collect())
            }
            Some(def) => Err(EngineError::Unprocessable(format!(
                "ValueSet '{url}' cannot be expanded here: {}",
                def.reason.as_deref().unwrap_or("it is not enumerable")
            ))),
            None => {
                Err(EngineError::invalid(format!("ValueSet '{url}' is not known to this server")))
            }
        }
    }

    async fn expand_resource(
        &self,
        ctx: &RequestContext,
        vs: &Value,
        depth: usize,
    ) -> Result<Codes, EngineError> {
        let url = vs["url"].as_str().unwrap_or("(no url)");
        if let Some(contains) = vs["expansion"]["contains"].as_array() {
            let mut codes = Codes::new();
            fn flatten(items: &[Value], out: &mut Codes) {
                for c in items {
                    if let (Some(system), Some(code)) = (c["system"].as_str(), c["code"].as_str()) {
                        out.insert((system.to_owned(), code.to_owned()));
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
        let mut codes = Codes::new();
        for inc in &includes {
            codes.extend(self.include(ctx, inc, depth).await?);
            if codes.len() > MAX_EXPANSION {
                return Err(too_many(&format!("ValueSet '{url}'")));
            }
        }
        for exc in compose["exclude"].as_array().into_iter().flatten() {
            for c in self.include(ctx, exc, depth).await? {
                codes.remove(&c);
            }
        }
        Ok(codes)
    }

    /// The codes of one `compose.include` (or `exclude`).
    async fn include(
        &self,
        ctx: &RequestContext,
        inc: &Value,
        depth: usize,
    ) -> Result<Codes, EngineError> {
        let system = inc["system"].as_str();
        let mut set: Option<Codes> = None;
        if let Some(system) = system {
            let concepts = inc["concept"].as_array();
            let filters = inc["filter"].as_array();
            let codes: Codes = if let Some(concepts) = concepts {
                concepts
                    .iter()
                    .filter_map(|c| c["code"].as_str())
                    .map(|c| (system.to_owned(), c.to_owned()))
                    .collect()
            } else {
                let h = self.hierarchy(ctx, system).await?;
                let mut selected: HashSet<String> = h.parents.keys().cloned().collect();
                for f in filters.into_iter().flatten() {
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
                            h.parents.keys().filter(|c| !below.contains(*c)).cloned().collect()
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
                selected.into_iter().map(|c| (system.to_owned(), c)).collect()
            };
            set = Some(codes);
        }
        for url in inc["valueSet"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            let imported = self.expand(ctx, url, depth + 1).await?;
            set = Some(match set {
                None => imported,
                Some(s) => s.intersection(&imported).cloned().collect(),
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

    /// The concepts and hierarchy of `system`: the project's CodeSystem, or a FHIR code
    /// system known from the built-in value sets (flat).
    async fn hierarchy(
        &self,
        ctx: &RequestContext,
        system: &str,
    ) -> Result<Hierarchy, EngineError> {
        if let Some(cs) = self.find_canonical(ctx, "CodeSystem", system).await? {
            match cs["content"].as_str() {
                Some("complete") | None => {}
                Some(other) => {
                    return Err(EngineError::Unprocessable(format!(
                        "CodeSystem '{system}' holds content '{other}', not its complete list of codes"
                    )));
                }
            }
            return Ok(Hierarchy::from_code_system(&cs));
        }
        let mut codes: BTreeSet<&str> = BTreeSet::new();
        for (s, c) in definitions().all_value_sets().flat_map(|vs| vs.codes()) {
            if s == system {
                codes.insert(c);
            }
        }
        if codes.is_empty() {
            return Err(EngineError::Unprocessable(format!(
                "Code system '{system}' is not known to this server (add a CodeSystem resource with its concepts)"
            )));
        }
        Ok(Hierarchy::flat(codes.into_iter()))
    }

    /// The project's `ty` resource (ValueSet, CodeSystem) with canonical `url` (`url|version`
    /// picks the version; otherwise the most recently updated).
    async fn find_canonical(
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
        let query = kiln_search::parse(ty, &pairs).map_err(EngineError::Invalid)?;
        let request = SearchRequest { query, after: None, count: 1, total: false };
        let page = self.store().search(&ctx.project, &request).await?;
        Ok(page.matches.first().and_then(|s| serde_json::from_slice(&s.body).ok()))
    }
}
