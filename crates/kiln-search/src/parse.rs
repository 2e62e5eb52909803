//! Query parsing: parameter names (modifiers, chains, `_has`), values (via
//! [`crate::parse_value`]) and the result parameters (`_count`, `_sort`, `_include`, …).

use crate::parse_value::{ValueContext, criterion, split_unescaped, unescape};
use crate::query::{
    Contained, ContainedType, Filter, Include, MAX_COUNT, Modifier, SearchQuery, SortKey, Summary,
    TextScope, Total, UnknownParam,
};
use crate::registry::Registry;
use kiln_definitions::{SearchParamDef, SearchParamType, definitions};
use kiln_model::{Issue, IssueCode};

/// The most reference links a chain may follow (`a.b.c.d=` has three).
pub const MAX_CHAIN: usize = 3;
/// The deepest nesting of `_has`.
pub const MAX_HAS: usize = 3;

/// Parses a search on `resource_type` (empty for a system-level search) from the decoded
/// query pairs, with the current time for date `ap`. See [`parse_at`].
/// Only the built-in parameters are known; [`crate::Registry::parse`] adds a project's own.
pub fn parse(resource_type: &str, pairs: &[(String, String)]) -> Result<SearchQuery, Vec<Issue>> {
    parse_at(resource_type, pairs, chrono::Utc::now().timestamp_millis())
}

/// Parses a search, taking `now_ms` (UTC epoch milliseconds) as the current time.
///
/// Unknown parameters (and unsupported ones such as `_query`, `near`, functional `_list`s)
/// go to [`SearchQuery::unknown`]. `_content`/`_text` become [`Filter::Text`], `_list=id`
/// becomes `_has:List:item:_id=id`. `_filter` is parsed by `filter_expr.rs`; an unknown
/// parameter inside it is an error. Malformed values, invalid or unsupported modifiers,
/// bad chains and bad result parameters are errors, each naming the parameter; all of them
/// are reported at once. An empty value (`name=`) is ignored. `_format` and `_pretty` are
/// accepted and ignored.
pub fn parse_at(
    resource_type: &str,
    pairs: &[(String, String)],
    now_ms: i64,
) -> Result<SearchQuery, Vec<Issue>> {
    parse_with(Registry::base(), resource_type, pairs, now_ms)
}

/// [`parse_at`] with the parameters of `reg`.
pub(crate) fn parse_with(
    reg: &Registry,
    resource_type: &str,
    pairs: &[(String, String)],
    now_ms: i64,
) -> Result<SearchQuery, Vec<Issue>> {
    let defs = definitions();
    let system = resource_type.is_empty();
    if !system && !defs.is_resource_type(resource_type) {
        let msg = format!("Unknown resource type '{resource_type}'");
        return Err(vec![Issue::error(IssueCode::NotSupported, msg)]);
    }
    let mut q = SearchQuery::new((!system).then_some(resource_type));
    let mut errors = Vec::new();
    let mut err = |name: &str, msg: String| {
        errors.push(Issue::error(IssueCode::Invalid, format!("Search parameter '{name}': {msg}")));
    };
    // `_type` first: in a system search it decides which parameters exist.
    for (name, value) in pairs.iter().filter(|(n, _)| n == "_type") {
        for t in value.split(',').filter(|t| !t.is_empty()) {
            if defs.is_resource_type(t) {
                q.types.push(t.to_string());
            } else {
                err(name, format!("unknown resource type '{t}'"));
            }
        }
    }
    let context = if system {
        q.types.first().cloned().unwrap_or_else(|| "Resource".into())
    } else {
        resource_type.to_string()
    };
    let now = Now(now_ms);
    for (name, value) in pairs {
        match result_param(reg, &mut q, &context, name, value) {
            Some(Ok(())) => continue,
            Some(Err(msg)) => {
                err(name, msg);
                continue;
            }
            None => {}
        }
        if value.is_empty() {
            continue;
        }
        if name == "_filter" {
            match crate::filter_expr::filters(reg, &context, value, now_ms) {
                Ok(filters) => q.filters.extend(filters),
                Err(msg) => err(name, msg),
            }
            continue;
        }
        match filter(reg, &context, name, value, now, Depth { chain: 0, has: 0 }) {
            Parsed::Filter(f) => q.filters.push(f),
            Parsed::Unknown(reason) => q.unknown.push(UnknownParam { name: name.clone(), reason }),
            Parsed::Error(msg) => err(name, msg),
        }
    }
    if errors.is_empty() { Ok(q) } else { Err(errors) }
}

#[derive(Clone, Copy)]
struct Now(i64);

enum Parsed {
    Filter(Filter),
    Unknown(String),
    Error(String),
}

/// One `name=value` pair as a filter on `ty`, or why it is not one (here an unknown
/// parameter is an error too). `_filter` builds its comparisons with it.
pub(crate) fn single_filter(
    reg: &Registry,
    ty: &str,
    name: &str,
    value: &str,
    now_ms: i64,
) -> Result<Filter, String> {
    match filter(reg, ty, name, value, Now(now_ms), Depth { chain: 0, has: 0 }) {
        Parsed::Filter(f) => Ok(f),
        Parsed::Unknown(msg) | Parsed::Error(msg) => Err(msg),
    }
}

/// A parameter of `ty` (or, for system searches, of `Resource`).
pub(crate) fn param<'r>(reg: &'r Registry, ty: &str, code: &str) -> Option<&'r SearchParamDef> {
    reg.param(ty, code).or_else(|| reg.param("Resource", code))
}

/// How deep a name is already: chain links and `_has` levels above it.
#[derive(Clone, Copy)]
struct Depth {
    chain: usize,
    has: usize,
}

fn filter(reg: &Registry, ty: &str, name: &str, value: &str, now: Now, depth: Depth) -> Parsed {
    if let Some(rest) = name.strip_prefix("_has:") {
        if depth.has >= MAX_HAS {
            return Parsed::Error(format!("_has is limited to {MAX_HAS} levels"));
        }
        return has(reg, rest, value, now, Depth { has: depth.has + 1, ..depth });
    }
    if let Some((head, rest)) = name.split_once('.') {
        if depth.chain >= MAX_CHAIN {
            return Parsed::Error(format!("chains are limited to {MAX_CHAIN} links"));
        }
        return chain(reg, ty, head, rest, value, now, Depth { chain: depth.chain + 1, ..depth });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    match code {
        "_text" | "_content" => return text(code, modifier, value),
        "_list" => return list(reg, modifier, value, now, depth),
        "_compartment" => return compartment(modifier, value),
        "_filter" | "_query" => return Parsed::Unknown(format!("'{code}' is not supported")),
        _ => {}
    }
    let Some(def) = param(reg, ty, code) else {
        return Parsed::Unknown(format!("unknown search parameter '{code}' for {ty}"));
    };
    if def.param_type == SearchParamType::Special || def.expression.is_none() {
        return Parsed::Unknown(format!("'{code}' is not supported"));
    }
    if modifier == Some("missing") {
        return match value {
            "true" | "false" => Parsed::Filter(Filter::Missing {
                code: code.into(),
                kind: def.param_type,
                missing: value == "true",
            }),
            _ => Parsed::Error("':missing' takes true or false".into()),
        };
    }
    let modifier = match modifier_of(def, modifier) {
        Ok(m) => m,
        Err(e) => return Parsed::Error(e),
    };
    let components = component_types(reg, def);
    let cx = ValueContext {
        kind: def.param_type,
        modifier: &modifier,
        targets: &def.target,
        components: &components,
        now_ms: now.0,
    };
    let mut values = Vec::new();
    for raw in split_unescaped(value, ',').into_iter().filter(|r| !r.is_empty()) {
        match criterion(raw, &cx) {
            Ok(c) => values.push(c),
            Err(e) => return Parsed::Error(format!("{e} (in '{}')", unescape(raw))),
        }
    }
    if values.is_empty() {
        return Parsed::Error("no value".into());
    }
    Parsed::Filter(Filter::Values { code: code.into(), kind: def.param_type, modifier, values })
}

fn modifier_of(def: &SearchParamDef, modifier: Option<&str>) -> Result<Modifier, String> {
    use SearchParamType as T;
    let Some(m) = modifier else { return Ok(Modifier::None) };
    Ok(match (def.param_type, m) {
        (T::String, "exact") => Modifier::Exact,
        (T::String, "contains") => Modifier::Contains,
        (T::Token, "text") => Modifier::Text,
        (T::Token, "not") => Modifier::Not,
        (T::Token, "of-type") => Modifier::OfType,
        (T::Uri, "below") => Modifier::Below,
        (T::Uri, "above") => Modifier::Above,
        (T::Reference, "identifier") => Modifier::Identifier,
        (T::Reference, t) if definitions().is_resource_type(t) => Modifier::Type(t.to_string()),
        (T::Token, "in") => Modifier::In,
        (T::Token, "not-in") => Modifier::NotIn,
        (T::Token, "below") => Modifier::Below,
        (T::Token, "above") => Modifier::Above,
        (kind, _) => {
            return Err(format!("modifier ':{m}' is not valid on a {} parameter", kind.as_str()));
        }
    })
}

/// Component types of a composite, from the component definitions' URLs.
fn component_types(reg: &Registry, def: &SearchParamDef) -> Vec<SearchParamType> {
    def.components.iter().filter_map(|c| reg.param_type_by_url(&c.definition)).collect()
}

fn chain(
    reg: &Registry,
    ty: &str,
    head: &str,
    rest: &str,
    value: &str,
    now: Now,
    depth: Depth,
) -> Parsed {
    let (code, type_mod) = match head.split_once(':') {
        Some((c, t)) => (c, Some(t)),
        None => (head, None),
    };
    let Some(def) = param(reg, ty, code) else {
        return Parsed::Unknown(format!("unknown search parameter '{code}' for {ty}"));
    };
    if def.param_type != SearchParamType::Reference {
        return Parsed::Error(format!(
            "'{code}' is not a reference parameter and cannot be chained"
        ));
    }
    let candidates: Vec<String> = match type_mod {
        Some(t) if definitions().is_resource_type(t) => vec![t.to_string()],
        Some(t) => return Parsed::Error(format!("'{t}' is not a resource type")),
        None if def.target.is_empty() => {
            definitions().resource_types().map(str::to_string).collect()
        }
        None => def.target.clone(),
    };
    let next_code = rest.split(['.', ':']).next().unwrap_or("");
    let types: Vec<String> = candidates
        .into_iter()
        .filter(|t| matches!(next_code, "_has" | "_list") || param(reg, t, next_code).is_some())
        .collect();
    let Some(first) = types.first() else {
        return Parsed::Error(format!("no target of '{code}' has a parameter '{next_code}'"));
    };
    match filter(reg, first, rest, value, now, depth) {
        Parsed::Filter(then) => {
            Parsed::Filter(Filter::Chain { code: code.into(), types, then: Box::new(then) })
        }
        Parsed::Unknown(reason) => Parsed::Error(reason),
        e @ Parsed::Error(_) => e,
    }
}

fn has(reg: &Registry, rest: &str, value: &str, now: Now, depth: Depth) -> Parsed {
    let mut parts = rest.splitn(3, ':');
    let (Some(source), Some(code), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
        return Parsed::Error("expected _has:Type:reference:parameter".into());
    };
    if !definitions().is_resource_type(source) {
        return Parsed::Error(format!("'{source}' is not a resource type"));
    }
    match param(reg, source, code) {
        Some(d) if d.param_type == SearchParamType::Reference => {}
        _ => return Parsed::Error(format!("'{code}' is not a reference parameter of {source}")),
    }
    match filter(reg, source, inner, value, now, depth) {
        Parsed::Filter(then) => Parsed::Filter(Filter::Has {
            source_type: source.into(),
            param: code.into(),
            then: Box::new(then),
        }),
        Parsed::Unknown(reason) => Parsed::Error(reason),
        e @ Parsed::Error(_) => e,
    }
}

/// `_content` / `_text`: phrases (see the `text` module), comma-separated alternatives.
fn text(code: &str, modifier: Option<&str>, value: &str) -> Parsed {
    if let Some(m) = modifier {
        return Parsed::Error(format!("'{code}' is not supported with a modifier (':{m}')"));
    }
    let scope = if code == "_text" { TextScope::Narrative } else { TextScope::Content };
    let phrases: Vec<String> = split_unescaped(value, ',')
        .into_iter()
        .filter(|raw| !raw.is_empty())
        .map(|raw| crate::fold_text(&unescape(raw)))
        .collect();
    if phrases.is_empty() {
        return Parsed::Error("no value".into());
    }
    Parsed::Filter(Filter::Text { scope, phrases })
}

/// `_list=id[,id]`: the resource is an `entry.item` of one of these Lists, which is
/// `_has:List:item:_id=id[,id]`. Functional lists (`$current-allergies`, …) are not known.
fn list(reg: &Registry, modifier: Option<&str>, value: &str, now: Now, depth: Depth) -> Parsed {
    if let Some(m) = modifier {
        return Parsed::Error(format!("'_list' is not supported with a modifier (':{m}')"));
    }
    if let Some(f) = split_unescaped(value, ',').into_iter().find(|v| v.starts_with('$')) {
        return Parsed::Unknown(format!("the functional list '{f}' is not supported"));
    }
    if depth.has >= MAX_HAS {
        return Parsed::Error(format!("_has (and _list) is limited to {MAX_HAS} levels"));
    }
    match filter(reg, "List", "_id", value, now, Depth { has: depth.has + 1, ..depth }) {
        Parsed::Filter(then) => Parsed::Filter(Filter::Has {
            source_type: "List".into(),
            param: "item".into(),
            then: Box::new(then),
        }),
        other => other,
    }
}

/// `_compartment=Patient/id[,Patient/id2]` (Medplum's parameter, used by access policies):
/// the resource is in one of these Patient compartments ([`Filter::Compartment`]).
fn compartment(modifier: Option<&str>, value: &str) -> Parsed {
    if let Some(m) = modifier {
        return Parsed::Error(format!("'_compartment' takes no modifier (got ':{m}')"));
    }
    let mut ids = Vec::new();
    for raw in value.split(',').filter(|r| !r.is_empty()) {
        let Some((ty, id)) = raw.split_once('/') else {
            return Parsed::Error(format!("'{raw}' is not a reference Type/id"));
        };
        if ty != "Patient" {
            return Parsed::Unknown(format!(
                "'_compartment' supports Patient compartments, not {ty}"
            ));
        }
        if !kiln_model::is_valid_id(id) {
            return Parsed::Error(format!("'{id}' is not a valid id"));
        }
        ids.push(id.to_owned());
    }
    match ids.len() {
        0 => Parsed::Error("no value".into()),
        _ => Parsed::Filter(Filter::Compartment { compartment: "Patient".into(), ids: Some(ids) }),
    }
}

/// Handles a result parameter; `None` when `name` is not one.
fn result_param(
    reg: &Registry,
    q: &mut SearchQuery,
    ty: &str,
    name: &str,
    value: &str,
) -> Option<Result<(), String>> {
    let r = match name {
        "_count" => value
            .parse::<u32>()
            .map(|n| q.count = n.min(MAX_COUNT))
            .map_err(|_| format!("'{value}' is not a non-negative integer")),
        "_sort" => sort(reg, q, ty, value),
        "_include" | "_include:iterate" | "_include:recurse" => {
            include(reg, value, name.contains(':')).map(|i| q.include.push(i))
        }
        "_revinclude" | "_revinclude:iterate" | "_revinclude:recurse" => {
            include(reg, value, name.contains(':')).map(|i| q.revinclude.push(i))
        }
        "_total" => match value {
            "none" => Ok(Total::None),
            "estimate" => Ok(Total::Estimate),
            "accurate" => Ok(Total::Accurate),
            _ => Err(format!("'{value}' is not none, estimate or accurate")),
        }
        .map(|t| q.total = Some(t)),
        "_summary" => match value {
            "true" => Ok(Summary::True),
            "false" => Ok(Summary::False),
            "text" => Ok(Summary::Text),
            "data" => Ok(Summary::Data),
            "count" => Ok(Summary::Count),
            _ => Err(format!("'{value}' is not true, false, text, data or count")),
        }
        .map(|s| q.summary = Some(s)),
        "_elements" => {
            q.elements.extend(
                value.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string),
            );
            Ok(())
        }
        "_contained" => match value {
            "true" => Ok(Contained::True),
            "false" => Ok(Contained::False),
            "both" => Ok(Contained::Both),
            _ => Err(format!("'{value}' is not true, false or both")),
        }
        .map(|c| q.contained = Some(c)),
        "_containedType" => match value {
            "container" => Ok(ContainedType::Container),
            "contained" => Ok(ContainedType::Contained),
            _ => Err(format!("'{value}' is not container or contained")),
        }
        .map(|c| q.contained_type = Some(c)),
        "_type" | "_format" | "_pretty" => Ok(()),
        _ => return None,
    };
    Some(r)
}

fn sort(reg: &Registry, q: &mut SearchQuery, ty: &str, value: &str) -> Result<(), String> {
    for key in value.split(',').filter(|k| !k.is_empty()) {
        let (code, descending) = match key.strip_prefix('-') {
            Some(c) => (c, true),
            None => (key, false),
        };
        match param(reg, ty, code) {
            Some(d)
                if !matches!(
                    d.param_type,
                    SearchParamType::Composite | SearchParamType::Special
                ) =>
            {
                q.sort.push(SortKey { code: code.to_string(), kind: d.param_type, descending });
            }
            Some(_) => return Err(format!("cannot sort on '{code}'")),
            None => return Err(format!("unknown sort parameter '{code}'")),
        }
    }
    Ok(())
}

fn include(reg: &Registry, value: &str, iterate: bool) -> Result<Include, String> {
    if value == "*" {
        return Ok(Include { source_type: None, param: None, target_type: None, iterate });
    }
    let parts: Vec<&str> = value.split(':').collect();
    let (source, code, target) = match parts.as_slice() {
        [s, c] => (*s, *c, None),
        [s, c, t] => (*s, *c, Some(*t)),
        _ => return Err(format!("'{value}' is not Type:parameter[:targetType]")),
    };
    if !definitions().is_resource_type(source) {
        return Err(format!("'{source}' is not a resource type"));
    }
    if let Some(t) = target.filter(|t| !definitions().is_resource_type(t)) {
        return Err(format!("'{t}' is not a resource type"));
    }
    let param = if code == "*" {
        None
    } else {
        match param(reg, source, code) {
            Some(d) if d.param_type == SearchParamType::Reference => Some(code.to_string()),
            _ => return Err(format!("'{code}' is not a reference parameter of {source}")),
        }
    };
    let target_type = target.map(str::to_string);
    Ok(Include { source_type: Some(source.to_string()), param, target_type, iterate })
}
