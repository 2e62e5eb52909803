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

/// A resource type's built-in parameters, compiled, in definition order.
type Cache = HashMap<String, Vec<Arc<Compiled>>>;

/// Every built-in parameter of every resource type, compiled once per definition on first use.
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
            let mut list: Vec<Arc<Compiled>> = Vec::new();
            for def in defs.search_params(ty) {
                let text = def.expression.as_deref().unwrap_or_default();
                let own = for_type(text, ty);
                let compiled = if own == text {
                    by_def
                        .entry(def as *const SearchParamDef)
                        .or_insert_with(|| Arc::new(compile_def(def.clone(), &by_url)))
                        .clone()
                } else {
                    let mut compiled = compile_def(def.clone(), &by_url);
                    compiled.expr = compile(&own).ok();
                    Arc::new(compiled)
                };
                // A code defined twice for a type: the later definition wins.
                list.retain(|c| c.def.code != compiled.def.code);
                list.push(compiled);
            }
            cache.insert(ty.to_string(), list);
        }
        cache
    })
}

/// The part of a parameter's expression that can yield something on a `resource_type`: the
/// branches of its top-level union (`|`) minus those that start with another resource type's
/// name. Parameters shared by many types (`clinical-code`: `AllergyIntolerance.code |
/// Condition.code | … | Observation.code | …`) would otherwise evaluate every other type's
/// branch, to nothing, on every resource. Returns `expression` itself when nothing is left out.
pub(crate) fn for_type(expression: &str, resource_type: &str) -> String {
    let branches = top_level_union(expression);
    if branches.len() < 2 {
        return expression.to_owned();
    }
    let kept: Vec<&str> = branches
        .iter()
        .copied()
        .filter(|branch| {
            let start = branch.trim_start_matches(|c: char| c == '(' || c.is_whitespace());
            let name_len = start
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(start.len());
            let (name, rest) = start.split_at(name_len);
            let other_type = name != resource_type
                && rest.starts_with('.')
                && definitions().is_resource_type(name);
            !other_type
        })
        .collect();
    if kept.is_empty() || kept.len() == branches.len() {
        return expression.to_owned();
    }
    kept.iter().map(|b| b.trim()).collect::<Vec<_>>().join(" | ")
}

/// `a | (b | c) | 'x|y'` → `a `, ` (b | c) `, ` 'x|y'`: splits at the `|` outside brackets,
/// parentheses, strings and backquoted names.
fn top_level_union(expression: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<u8>, 0);
    let bytes = expression.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'\'' | b'`' => quote = Some(b),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                b'|' if depth == 0 => {
                    parts.push(&expression[start..i]);
                    start = i + 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    parts.push(&expression[start..]);
    parts
}

/// The compiled built-in parameters of `resource_type` (none for an unknown type).
pub(crate) fn compiled_of(resource_type: &str) -> &'static [Arc<Compiled>] {
    cache().get(resource_type).map_or(&[], Vec::as_slice)
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
    compiled_of(resource_type).iter().find(|c| c.def.code == code).map(Arc::as_ref)
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

/// The context parameters are evaluated in: values only, no element paths.
pub(crate) fn context(resource: &Value) -> Context<'_> {
    Context::new(resource).without_paths()
}

/// The rows of one parameter (used by extraction and by the reference evaluator); `ctx` is
/// [`context`] of the resource.
pub(crate) fn extract_param(c: &Compiled, ctx: &Context<'_>, out: &mut Vec<IndexEntry>) {
    let Some(expr) = &c.expr else { return };
    let kind = c.def.param_type;
    if kind == SearchParamType::Special {
        return;
    }
    let resource = ctx.resource();
    let Ok(items) = evaluate(expr, ctx) else { return };
    for (elem, item) in items.iter().enumerate() {
        let elem = u32::try_from(elem).unwrap_or(u32::MAX);
        let start = out.len();
        if kind == SearchParamType::Composite {
            if c.components.is_empty() {
                return;
            }
            for (ci, (cty, cexpr)) in c.components.iter().enumerate() {
                let before = out.len();
                let cctx = context(resource).with_focus(vec![item.clone()]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_expressions_keep_their_own_type_branches() {
        let code = "AllergyIntolerance.code | AllergyIntolerance.reaction.substance | \
                    (MedicationRequest.medication.ofType(CodeableConcept)) | Observation.code";
        assert_eq!(for_type(code, "Observation"), "Observation.code");
        assert_eq!(
            for_type(code, "MedicationRequest"),
            "(MedicationRequest.medication.ofType(CodeableConcept))"
        );
        // Nothing else to leave out, or nothing of this type: unchanged.
        assert_eq!(
            for_type("Observation.code | Observation.component.code", "Observation"),
            "Observation.code | Observation.component.code"
        );
        assert_eq!(for_type(code, "Patient"), code);
        // Bars inside strings and parentheses are not unions; `Resource.` stays.
        let odd =
            "Patient.name.where(text = 'a|b') | (Condition.code | Patient.code) | Resource.id";
        assert_eq!(top_level_union(odd).len(), 3);
        assert_eq!(for_type(odd, "Patient"), "Patient.name.where(text = 'a|b') | Resource.id");
    }

    #[test]
    fn specialised_expressions_index_the_same_rows() {
        let resources = [
            json!({"resourceType": "Observation", "id": "o", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": "Patient/p"}, "encounter": {"reference": "Encounter/e"},
                "effectiveDateTime": "2020-01-02", "valueQuantity": {"value": 3, "unit": "kg",
                "system": "http://unitsofmeasure.org", "code": "kg"},
                "component": [{"code": {"text": "c"}, "valueString": "x"}]}),
            json!({"resourceType": "MedicationRequest", "id": "m", "status": "active",
                "intent": "order", "subject": {"reference": "Patient/p"},
                "medicationCodeableConcept": {"coding": [{"code": "123"}]},
                "authoredOn": "2021-03-04"}),
            json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                "code": {"text": "flu"}, "onsetDateTime": "2020"}),
            json!({"resourceType": "AllergyIntolerance", "id": "a", "patient": {"reference": "Patient/p"},
                "code": {"text": "nuts"}, "reaction": [{"substance": {"text": "peanut"}}]}),
        ];
        let mut specialised = 0;
        for resource in &resources {
            let ty = resource["resourceType"].as_str().unwrap();
            let ctx = context(resource);
            for c in compiled_of(ty) {
                let whole = compile_def(c.def.clone(), &|_| None);
                if whole.expr.as_ref().map(Expression::text)
                    != c.expr.as_ref().map(Expression::text)
                {
                    specialised += 1;
                }
                let (mut a, mut b) = (Vec::new(), Vec::new());
                extract_param(c, &ctx, &mut a);
                let plain = Compiled { components: c.components.clone(), ..whole };
                extract_param(&plain, &ctx, &mut b);
                assert_eq!(a, b, "{ty}.{}", c.def.code);
            }
        }
        assert!(specialised > 10, "only {specialised} expressions were specialised");
    }
}
