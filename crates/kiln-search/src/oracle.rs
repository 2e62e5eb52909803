//! The reference evaluator: whether one resource matches a [`SearchQuery`], decided directly
//! on the rows [`crate::extract`] produces. Slow on purpose (it re-extracts for every check)
//! and written to be read: this is the oracle a SQL backend is property-tested against.
//!
//! Semantics, in one place:
//! - A filter holds when *some* value of the resource satisfies *some* alternative
//!   (comma = OR); every filter must hold (repeated parameter = AND).
//! - Date ranges ([`Prefix`]): with target `[tl, th]` and search `[sl, sh]` (both closed):
//!   `eq` ⇔ `sl ≤ tl ∧ th ≤ sh`; `ne` ⇔ ¬eq; `gt` ⇔ `th > sh`; `lt` ⇔ `tl < sl`;
//!   `ge` ⇔ gt ∨ eq; `le` ⇔ lt ∨ eq; `sa` ⇔ `tl > sh`; `eb` ⇔ `th < sl`; `ap` ⇔ the ranges
//!   overlap (`tl ≤ sh ∧ th ≥ sl`), the search range having been widened by the parser.
//!   This is R4's "the range of the search value fully contains the range of the target
//!   value" (eq) and "the range above the search value intersects the range of the target
//!   value" (gt), read with implicit precision on both sides.
//! - Numbers and quantities ([`compare_number`]): `eq`, `ne`, `ap` use the same rules on the
//!   implicit-precision ranges (`100` → `[99.5, 100.5]`) of both sides; `gt`, `lt`, `ge`,
//!   `le`, `sa`, `eb` use the same rules on *exact* values (`[min, max]`: a point for a
//!   number, the bounds for a Range), following R4's number examples ("`gt100`: values that
//!   are greater than exactly 100; the precision of the search value is not relevant").
//!   Half-open precision ranges (`[99.5, 100.5)`) are read as closed: only values exactly on
//!   the upper edge differ.
//! - `:not` holds when *no* value matches *any* alternative (so a resource without the
//!   element matches). `:missing=true` ⇔ no value at all.
//! - Tokens compare system and code exactly; `:text` is starts-with on normalised text.
//! - Strings: default starts-with on the normalised form, `:contains` substring of it,
//!   `:exact` equality of the text as written; `_filter`'s `eq` is equality and `ew`
//!   ends-with, both of the normalised form.
//! - Quantities: the number as above, plus `system` equality when given, and `code`
//!   equality (without a system: the code or the unit).
//! - References: `Type/id` equality; a bare id matches any type (or the `:Type`); URLs and
//!   canonicals by URL (and version when the search gives one). `:identifier` matches
//!   `Reference.identifier` as a token.
//! - URIs: equality; `:below` ⇔ stored URI starts with the search URI; `:above` ⇔ the search
//!   URI starts with the stored one.
//! - Composites: one occurrence (`elem`) must meet every component's criterion. An occurrence
//!   missing a component has no rows, so for `:missing` a composite is present only when
//!   some occurrence has every component.
//! - Chains and `_has` look up other resources in a [`ResourceSet`]; a chain also follows a
//!   local `#id` reference into the contained resource with that id in the same container.
//! - `_contained=true|both` evaluates every filter on each contained resource of the searched
//!   type (all on the same one); see [`matching_contained`] and `holds` for what differs on
//!   a contained resource (no `_lastUpdated`, no `_has`, compartments only by reference).
//! - `_filter`'s boolean filters: [`Filter::And`] holds when every part holds (so an empty
//!   one does), [`Filter::Or`] when some part does, [`Filter::Not`] when its part does not.
//! - [`Filter::Type`] holds for a resource of one of its types.
//! - `_content` / `_text` ([`Filter::Text`]): some phrase is a substring of the text, ASCII
//!   letters folded ([`crate::text_holds`]).

use crate::extract::{compiled, extract_param};
use crate::index::{IndexEntry, IndexValue, NumberRange, RefValue};
use crate::query::{
    Contained, Criterion, Filter, Modifier, Prefix, RefQuery, SearchQuery, SystemMatch,
};
use serde_json::Value;

/// The resources chains and `_has` may visit.
pub trait ResourceSet {
    /// The resource of this type and id, if present.
    fn get(&self, resource_type: &str, id: &str) -> Option<&Value>;
    /// Every resource of this type.
    fn of_type<'a>(&'a self, resource_type: &'a str) -> Box<dyn Iterator<Item = &'a Value> + 'a>;
}

impl ResourceSet for &[Value] {
    fn get(&self, resource_type: &str, id: &str) -> Option<&Value> {
        self.iter().find(|r| type_of(r) == Some(resource_type) && id_of(r) == Some(id))
    }

    fn of_type<'a>(&'a self, resource_type: &'a str) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        Box::new(self.iter().filter(move |r| type_of(r) == Some(resource_type)))
    }
}

impl ResourceSet for Vec<Value> {
    fn get(&self, resource_type: &str, id: &str) -> Option<&Value> {
        self.iter().find(|r| type_of(r) == Some(resource_type) && id_of(r) == Some(id))
    }

    fn of_type<'a>(&'a self, resource_type: &'a str) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        Box::new(self.iter().filter(move |r| type_of(r) == Some(resource_type)))
    }
}

fn type_of(r: &Value) -> Option<&str> {
    r.get("resourceType").and_then(Value::as_str)
}

fn id_of(r: &Value) -> Option<&str> {
    r.get("id").and_then(Value::as_str)
}

/// Whether `resource` matches `query`, with no other resources (chains and `_has` then
/// match nothing). Only filters count: paging, sorting and includes do not select.
pub fn matches(query: &SearchQuery, resource: &Value) -> bool {
    matches_in(query, resource, &Vec::new())
}

/// Whether `resource` matches `query`; chains and `_has` look in `set`.
///
/// With `_contained=true` the resource matches when one of its contained resources
/// ([`crate::contained_resources`]) of the searched type(s) meets every filter (all filters
/// on the *same* contained resource); with `both`, when it matches itself or so; with
/// `false` (the default), only the resource itself counts. The container may be of any type.
pub fn matches_in(query: &SearchQuery, resource: &Value, set: &dyn ResourceSet) -> bool {
    !matching_contained(query, resource, set).is_empty()
}

/// Which parts of `resource` match `query`: `0` for the resource itself, `k` for its
/// contained resource at position `k` ([`crate::ContainedIn::index`]), in that order.
/// Empty: no match. (See [`matches_in`].)
pub fn matching_contained(
    query: &SearchQuery,
    resource: &Value,
    set: &dyn ResourceSet,
) -> Vec<u32> {
    let Some(ty) = type_of(resource) else { return Vec::new() };
    let wanted = |t: &str| match &query.resource_type {
        Some(want) => want == t,
        None => query.types.is_empty() || query.types.iter().any(|x| x == t),
    };
    let mode = query.contained.unwrap_or(Contained::False);
    let mut out = Vec::new();
    if mode != Contained::True
        && wanted(ty)
        && query.filters.iter().all(|f| holds(f, Subject::top(resource), set))
    {
        out.push(0);
    }
    if mode != Contained::False {
        for (index, cty, c) in crate::contained_resources(resource) {
            let subject = Subject { json: c, container: Some(resource) };
            if wanted(cty) && query.filters.iter().all(|f| holds(f, subject, set)) {
                out.push(index);
            }
        }
    }
    out
}

/// What a filter is evaluated on: a stored resource, or one of its contained resources.
#[derive(Clone, Copy)]
struct Subject<'a> {
    json: &'a Value,
    /// The container, when `json` is a contained resource.
    container: Option<&'a Value>,
}

impl<'a> Subject<'a> {
    fn top(json: &'a Value) -> Subject<'a> {
        Subject { json, container: None }
    }

    /// The resource whose `contained` a local `#id` reference of this one points into.
    fn container(&self) -> &'a Value {
        self.container.unwrap_or(self.json)
    }
}

/// The rows of parameter `code` of `resource`.
fn entries(resource: &Value, code: &str) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    if let Some(c) = type_of(resource).and_then(|t| compiled(t, code)) {
        extract_param(c, &crate::extract::context(resource), &mut out);
    }
    out
}

/// The rows of parameter `code` of a subject: a contained resource has no `_lastUpdated`.
fn subject_entries(subject: Subject<'_>, code: &str) -> Vec<IndexEntry> {
    if subject.container.is_some() && code == "_lastUpdated" {
        return Vec::new();
    }
    entries(subject.json, code)
}

/// Whether one filter holds for `resource` (a stored resource, not a contained one).
pub fn filter_holds(filter: &Filter, resource: &Value, set: &dyn ResourceSet) -> bool {
    holds(filter, Subject::top(resource), set)
}

/// Whether one filter holds for a subject.
///
/// On a contained resource: its own values count (not `_lastUpdated`); a chain follows its
/// references like any other (`#id` ones into the same container); it is in a compartment
/// only through its references, never by being the compartment's resource; `_has` never
/// holds (nothing outside its container can reference it); `_content`/`_text` look at the
/// contained resource's JSON.
fn holds(filter: &Filter, subject: Subject<'_>, set: &dyn ResourceSet) -> bool {
    let resource = subject.json;
    match filter {
        Filter::Missing { code, missing, .. } => {
            subject_entries(subject, code).is_empty() == *missing
        }
        Filter::Values { code, modifier, values, .. } => {
            let rows = subject_entries(subject, code);
            let any = values.iter().any(|c| criterion_holds(c, modifier, &rows));
            if matches!(modifier, Modifier::Not | Modifier::NotIn) { !any } else { any }
        }
        Filter::Chain { code, types, then } => {
            subject_entries(subject, code).iter().any(|e| match &e.value {
                IndexValue::Reference(RefValue::Local { target_type, id }) => {
                    types.contains(target_type)
                        && set
                            .get(target_type, id)
                            .is_some_and(|target| holds(then, Subject::top(target), set))
                }
                IndexValue::Reference(RefValue::Contained { reference }) => {
                    let container = subject.container();
                    let id = reference.strip_prefix('#');
                    crate::contained_resources(container).any(|(_, cty, c)| {
                        id.is_some()
                            && id_of(c) == id
                            && types.iter().any(|t| t == cty)
                            && holds(then, Subject { json: c, container: Some(container) }, set)
                    })
                }
                _ => false,
            })
        }
        Filter::Compartment { compartment, ids } => {
            let Some(ty) = type_of(resource) else { return false };
            let wanted = |id: &str| ids.as_ref().is_none_or(|ids| ids.iter().any(|i| i == id));
            if subject.container.is_none()
                && ty == compartment
                && id_of(resource).is_some_and(wanted)
            {
                return true;
            }
            let params = crate::compartment_params(compartment, ty).unwrap_or(&[]);
            params.iter().any(|p| {
                subject_entries(subject, p).iter().any(|e| {
                    matches!(&e.value, IndexValue::Reference(RefValue::Local { target_type, id: i })
                        if target_type == compartment && wanted(i))
                })
            })
        }
        Filter::Has { source_type, param, then } => {
            if subject.container.is_some() {
                return false;
            }
            let (Some(ty), Some(id)) = (type_of(resource), id_of(resource)) else { return false };
            set.of_type(source_type).any(|source| {
                let points_here = entries(source, param).iter().any(|e| {
                    matches!(&e.value, IndexValue::Reference(RefValue::Local { target_type, id: i })
                        if target_type == ty && i == id)
                });
                points_here && holds(then, Subject::top(source), set)
            })
        }
        Filter::And(filters) => filters.iter().all(|f| holds(f, subject, set)),
        Filter::Or(filters) => filters.iter().any(|f| holds(f, subject, set)),
        Filter::Not(inner) => !holds(inner, subject, set),
        Filter::Type(types) => type_of(resource).is_some_and(|t| types.iter().any(|x| x == t)),
        Filter::Text { scope, phrases } => crate::text_holds(*scope, phrases, resource),
    }
}

/// Whether some row (of an ordinary parameter, or of one occurrence of a composite)
/// satisfies `c`.
fn criterion_holds(c: &Criterion, modifier: &Modifier, rows: &[IndexEntry]) -> bool {
    if let Criterion::Composite(parts) = c {
        return rows.iter().any(|occurrence| {
            parts.iter().enumerate().all(|(i, part)| {
                rows.iter().any(|r| {
                    r.elem == occurrence.elem
                        && r.component == Some(i as u8)
                        && value_matches(part, &Modifier::None, &r.value)
                })
            })
        });
    }
    rows.iter().any(|r| value_matches(c, modifier, &r.value))
}

/// Whether one value satisfies one criterion under a modifier (`:not` is applied by the
/// caller: here it compares like no modifier).
pub fn value_matches(c: &Criterion, modifier: &Modifier, v: &IndexValue) -> bool {
    match (c, v) {
        (Criterion::Token { system, code }, IndexValue::Token(t))
            if *modifier != Modifier::Identifier =>
        {
            system_ok(system, t.system.as_deref()) && code_ok(code, t.code.as_deref())
        }
        (
            Criterion::Token { system, code },
            IndexValue::Reference(RefValue::Identifier { system: s, value }),
        ) if *modifier == Modifier::Identifier => {
            system_ok(system, s.as_deref()) && code_ok(code, value.as_deref())
        }
        (Criterion::Text(text), IndexValue::Token(t)) => {
            t.text.as_deref().is_some_and(|have| have.starts_with(text.as_str()))
        }
        (Criterion::OfType { system, code, value }, IndexValue::OfType(o)) => {
            o.system.as_deref() == Some(system)
                && o.code.as_deref() == Some(code)
                && o.value == *value
        }
        (Criterion::String { exact, normalized }, IndexValue::String(s)) => match modifier {
            Modifier::Exact => s.exact == *exact,
            Modifier::Contains => s.normalized.contains(normalized.as_str()),
            Modifier::Equals => s.normalized == *normalized,
            Modifier::EndsWith => s.normalized.ends_with(normalized.as_str()),
            _ => s.normalized.starts_with(normalized.as_str()),
        },
        (Criterion::Date { prefix, range }, IndexValue::Date(d)) => {
            compare(*prefix, (d.lo, d.hi), (range.lo, range.hi))
        }
        (Criterion::Number { prefix, range }, IndexValue::Number(n)) => {
            compare_number(*prefix, n, range)
        }
        (Criterion::Quantity { prefix, range, system, code }, IndexValue::Quantity(q)) => {
            // Without a system, only what the resource said counts (not the UCUM copies).
            let system_ok = match system {
                None => q.system.as_deref() != Some(crate::UCUM_CANONICAL),
                Some(_) => q.system == *system,
            };
            let code_ok = match (system, code) {
                (_, None) => true,
                (Some(_), Some(c)) => q.code.as_ref() == Some(c),
                (None, Some(c)) => q.code.as_ref() == Some(c) || q.unit.as_ref() == Some(c),
            };
            system_ok && code_ok && compare_number(*prefix, &q.number, range)
        }
        (Criterion::Reference(r), IndexValue::Reference(v)) => reference_matches(r, modifier, v),
        (Criterion::Uri(u), IndexValue::Uri(v)) => match modifier {
            Modifier::Below => v.starts_with(u.as_str()),
            Modifier::Above => u.starts_with(v.as_str()),
            _ => v == u,
        },
        _ => false,
    }
}

fn system_ok(want: &SystemMatch, have: Option<&str>) -> bool {
    match want {
        SystemMatch::Any => true,
        SystemMatch::NoSystem => have.is_none(),
        SystemMatch::Is(s) => have == Some(s.as_str()),
    }
}

fn code_ok(want: &Option<String>, have: Option<&str>) -> bool {
    want.as_deref().is_none_or(|w| have == Some(w))
}

fn reference_matches(r: &RefQuery, modifier: &Modifier, v: &RefValue) -> bool {
    match (r, v) {
        (
            RefQuery::Local { target_type: want_type, id: want_id },
            RefValue::Local { target_type, id },
        ) => {
            let type_ok = match (want_type, modifier) {
                (Some(t), _) | (None, Modifier::Type(t)) => t == target_type,
                (None, _) => true,
            };
            type_ok && id == want_id
        }
        (
            RefQuery::Url { url: want, version: want_version, .. },
            RefValue::Url { url, version },
        ) => url == want && (want_version.is_none() || want_version == version),
        (
            RefQuery::Url { local: Some((want_type, want_id)), version: None, .. },
            RefValue::Local { target_type, id },
        ) => want_type == target_type && want_id == id,
        _ => false,
    }
}

/// Prefix comparison of a target number with a search number (see the module docs):
/// `eq`, `ne` and `ap` on the implicit-precision ranges, the others on exact values.
pub fn compare_number(prefix: Prefix, target: &NumberRange, search: &NumberRange) -> bool {
    match prefix {
        Prefix::Eq | Prefix::Ne | Prefix::Ap => {
            compare(prefix, (target.lo, target.hi), (search.lo, search.hi))
        }
        _ => compare(prefix, (target.min, target.max), (search.min, search.max)),
    }
}

/// Prefix comparison of a target range with a search range (see the module docs).
pub fn compare<T: PartialOrd>(prefix: Prefix, target: (T, T), search: (T, T)) -> bool {
    let (tl, th) = target;
    let (sl, sh) = search;
    let eq = sl <= tl && th <= sh;
    match prefix {
        Prefix::Eq => eq,
        Prefix::Ne => !eq,
        Prefix::Gt => th > sh,
        Prefix::Lt => tl < sl,
        Prefix::Ge => th > sh || eq,
        Prefix::Le => tl < sl || eq,
        Prefix::Sa => tl > sh,
        Prefix::Eb => th < sl,
        Prefix::Ap => tl <= sh && th >= sl,
    }
}
