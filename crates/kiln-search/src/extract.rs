//! Index extraction: every search parameter of a resource's type (its own and those on
//! `Resource`/`DomainResource`, plus a project's own parameters, see [`crate::Registry`]) is
//! evaluated with kiln-fhirpath, and each resulting item is turned into normalised
//! [`IndexValue`]s by the parameter's type (see [`crate::values`]).

use crate::index::{IndexEntry, IndexValue};
use crate::values::item_values;
use kiln_definitions::{SearchParamDef, SearchParamType, definitions};
use kiln_fhirpath::{Context, Expression, compile, evaluate};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// A search parameter with its expressions compiled.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// The definition.
    pub(crate) def: SearchParamDef,
    /// The compiled expression; `None` for parameters without one (`_text`, `_content`,
    /// `_query`) or whose expression does not compile.
    pub(crate) expr: Option<Expression>,
    /// For a composite: each component's type and expression (relative to an item of
    /// `expr`). Empty when a component's definition cannot be found, which disables the
    /// composite.
    pub(crate) components: Vec<(SearchParamType, Expression)>,
}

type Cache = HashMap<(String, String), Arc<Compiled>>;

/// Every built-in (resource type, code) pair, compiled once per definition on first use.
fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| {
        let defs = definitions();
        let types: HashMap<&str, SearchParamType> =
            defs.all_search_params().iter().map(|d| (d.url.as_str(), d.param_type)).collect();
        let by_url = |url: &str| types.get(url).copied();
        let mut by_def: HashMap<*const SearchParamDef, Arc<Compiled>> = HashMap::new();
        let mut cache = Cache::new();
        for ty in defs.resource_types() {
            for def in defs.search_params(ty) {
                let compiled = by_def
                    .entry(def as *const SearchParamDef)
                    .or_insert_with(|| Arc::new(compile_def(def.clone(), &by_url)))
                    .clone();
                cache.insert((ty.to_string(), def.code.clone()), compiled);
            }
        }
        cache
    })
}

/// Compiles a definition; `component_type` finds a component's type by its definition URL.
pub(crate) fn compile_def(
    def: SearchParamDef,
    component_type: &dyn Fn(&str) -> Option<SearchParamType>,
) -> Compiled {
    let expr = def.expression.as_deref().and_then(|e| compile(e).ok());
    let mut components = Vec::new();
    for c in &def.components {
        match (component_type(&c.definition), compile(&c.expression)) {
            (Some(ty), Ok(e)) => components.push((ty, e)),
            _ => {
                components.clear();
                break;
            }
        }
    }
    Compiled { def, expr, components }
}

/// The compiled built-in parameter `code` of `resource_type`, if the type has it.
pub(crate) fn compiled(resource_type: &str, code: &str) -> Option<&'static Compiled> {
    cache().get(&(resource_type.to_string(), code.to_string())).map(Arc::as_ref)
}

/// The index rows of a resource for the built-in parameters: one [`IndexEntry`] per value of
/// every search parameter whose base includes the resource's type. Unknown types,
/// parameters without an expression, `special` parameters (`near`) and expressions that
/// fail to evaluate yield nothing; this function never panics. Exact duplicates within one
/// occurrence are dropped, and so is a composite occurrence that lacks a value for one of its
/// components. [`crate::Registry::extract`] adds a project's own parameters.
pub fn extract(resource: &Value) -> Vec<IndexEntry> {
    crate::Registry::base().extract(resource)
}

/// The last position in `contained` that is indexed (2^20 - 1: far more than a request body
/// can hold).
pub const MAX_CONTAINED: u32 = (1 << 20) - 1;

/// The resources in `resource.contained` that are indexed and searchable: each with its
/// position counted from 1 ([`crate::ContainedIn::index`]), its type and its JSON. Entries
/// that are not objects, have an unknown `resourceType`, or have no string `id` (nothing
/// can reference them) are skipped, keeping the positions of the others; so are those after
/// position [`MAX_CONTAINED`].
pub fn contained_resources(resource: &Value) -> impl Iterator<Item = (u32, &str, &Value)> {
    let list = resource.get("contained").and_then(Value::as_array);
    let list = list.into_iter().flatten().take(MAX_CONTAINED as usize);
    list.enumerate().filter_map(|(i, c)| {
        let ty = c.get("resourceType").and_then(Value::as_str)?;
        c.get("id").and_then(Value::as_str)?;
        let index = u32::try_from(i + 1).ok()?;
        definitions().is_resource_type(ty).then_some((index, ty, c))
    })
}

/// The rows of one parameter (used by extraction and by the reference evaluator).
pub(crate) fn extract_param(c: &Compiled, resource: &Value, out: &mut Vec<IndexEntry>) {
    let Some(expr) = &c.expr else { return };
    let kind = c.def.param_type;
    if kind == SearchParamType::Special {
        return;
    }
    let ctx = Context::new(resource);
    let Ok(items) = evaluate(expr, &ctx) else { return };
    for (elem, item) in items.iter().enumerate() {
        let elem = u32::try_from(elem).unwrap_or(u32::MAX);
        let start = out.len();
        if kind == SearchParamType::Composite {
            if c.components.is_empty() {
                return;
            }
            for (ci, (cty, cexpr)) in c.components.iter().enumerate() {
                let before = out.len();
                let cctx = Context::new(resource).with_focus(vec![item.clone()]);
                if let Ok(parts) = evaluate(cexpr, &cctx) {
                    for part in &parts {
                        for value in item_values(*cty, part) {
                            push(out, start, &c.def.code, Some(ci as u8), elem, value);
                        }
                    }
                }
                // An occurrence without a value for some component can match no composite
                // search (every component must match), so it is not indexed at all: an
                // Observation with a valueQuantity has no `code-value-string` rows.
                if out.len() == before {
                    out.truncate(start);
                    break;
                }
            }
        } else {
            for value in item_values(kind, item) {
                push(out, start, &c.def.code, None, elem, value);
            }
        }
    }
}

fn push(
    out: &mut Vec<IndexEntry>,
    start: usize,
    code: &str,
    component: Option<u8>,
    elem: u32,
    value: IndexValue,
) {
    let entry = IndexEntry { code: code.to_string(), component, elem, value, contained: None };
    if !out[start..].contains(&entry) {
        out.push(entry);
    }
}
