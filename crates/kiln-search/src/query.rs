//! A parsed search ([`SearchQuery`]): the filters (AND of ORs, and the boolean combinations
//! `_filter` builds), the result parameters and the parameters that were not understood. Backend-neutral: a storage backend compiles the
//! filters to its own queries; [`crate::matches()`] evaluates them in memory.

use crate::index::{DateRange, NumberRange};
use kiln_definitions::SearchParamType;

/// A parsed search request.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// The searched type; `None` for a system-level search (`GET /fhir/R4?_type=…`).
    pub resource_type: Option<String>,
    /// Filters that must all hold (repeated parameters are ANDed).
    pub filters: Vec<Filter>,
    /// `_count`: page size, default 20, at most 1000 (larger values are lowered to 1000).
    pub count: u32,
    /// `_sort`, in order of precedence.
    pub sort: Vec<SortKey>,
    /// `_include` (and `_include:iterate`).
    pub include: Vec<Include>,
    /// `_revinclude` (and `_revinclude:iterate`).
    pub revinclude: Vec<Include>,
    /// `_total`.
    pub total: Option<Total>,
    /// `_summary`.
    pub summary: Option<Summary>,
    /// `_elements`: element names to keep (empty: all).
    pub elements: Vec<String>,
    /// `_contained`.
    pub contained: Option<Contained>,
    /// `_containedType`.
    pub contained_type: Option<ContainedType>,
    /// `_type`: the types of a system-level search (empty: all).
    pub types: Vec<String>,
    /// Parameters that are not known for the type or not supported: the engine ignores them
    /// with a warning, or rejects the search under `Prefer: handling=strict`.
    pub unknown: Vec<UnknownParam>,
    /// A condition every `_include`/`_revinclude`d resource must meet besides being
    /// referenced (the caller's access policy, over resources of any type); `None`: none.
    /// No URL spelling: the engine sets it.
    pub include_filter: Option<Filter>,
}

/// The default `_count`.
pub const DEFAULT_COUNT: u32 = 20;
/// The largest `_count`.
pub const MAX_COUNT: u32 = 1000;

impl SearchQuery {
    /// An empty query over `resource_type` (`None`: all types), with default paging.
    pub fn new(resource_type: Option<&str>) -> SearchQuery {
        SearchQuery {
            resource_type: resource_type.map(str::to_string),
            filters: Vec::new(),
            count: DEFAULT_COUNT,
            sort: Vec::new(),
            include: Vec::new(),
            revinclude: Vec::new(),
            total: None,
            summary: None,
            elements: Vec::new(),
            contained: None,
            contained_type: None,
            types: Vec::new(),
            unknown: Vec::new(),
            include_filter: None,
        }
    }
}

impl Filter {
    /// This filter on a resource known to be of type `ty`: its [`Filter::Type`] conditions
    /// decided, and the parts that became always true (`And([])`) or always false (`Or([])`)
    /// folded away. Chain and `_has` levels are other resources and stay as they are.
    pub fn for_type(&self, ty: &str) -> Filter {
        let always = || Filter::And(Vec::new());
        let never = || Filter::Or(Vec::new());
        let is_always = |f: &Filter| matches!(f, Filter::And(p) if p.is_empty());
        let is_never = |f: &Filter| matches!(f, Filter::Or(p) if p.is_empty());
        match self {
            Filter::Type(types) => {
                if types.iter().any(|t| t == ty) {
                    always()
                } else {
                    never()
                }
            }
            Filter::And(parts) => {
                let mut kept = Vec::with_capacity(parts.len());
                for part in parts.iter().map(|p| p.for_type(ty)) {
                    if is_never(&part) {
                        return never();
                    }
                    if !is_always(&part) {
                        kept.push(part);
                    }
                }
                if kept.len() == 1 { kept.remove(0) } else { Filter::And(kept) }
            }
            Filter::Or(parts) => {
                let mut kept = Vec::with_capacity(parts.len());
                for part in parts.iter().map(|p| p.for_type(ty)) {
                    if is_always(&part) {
                        return always();
                    }
                    if !is_never(&part) {
                        kept.push(part);
                    }
                }
                if kept.len() == 1 { kept.remove(0) } else { Filter::Or(kept) }
            }
            Filter::Not(inner) => match inner.for_type(ty) {
                f if is_always(&f) => never(),
                f if is_never(&f) => always(),
                f => Filter::Not(Box::new(f)),
            },
            other => other.clone(),
        }
    }

    /// ANDs `extra(types)` into the condition of every level this filter reaches besides the
    /// resource itself: each chain link (given its target types) and each `_has` level (given
    /// its source type), at any depth. `None` adds nothing. An access policy uses it so that
    /// a chain or `_has` cannot look at resources the caller may not see.
    pub fn restrict_levels(&mut self, extra: &mut dyn FnMut(&[String]) -> Option<Filter>) {
        let (types, then) = match self {
            Filter::Chain { types, then, .. } => (types.clone(), then),
            Filter::Has { source_type, then, .. } => (vec![source_type.clone()], then),
            Filter::And(parts) | Filter::Or(parts) => {
                parts.iter_mut().for_each(|p| p.restrict_levels(extra));
                return;
            }
            Filter::Not(inner) => return inner.restrict_levels(extra),
            Filter::Values { .. }
            | Filter::Missing { .. }
            | Filter::Compartment { .. }
            | Filter::Type(_)
            | Filter::Text { .. } => return,
        };
        then.restrict_levels(extra);
        if let Some(condition) = extra(&types) {
            let inner = std::mem::replace(then.as_mut(), Filter::And(Vec::new()));
            **then = Filter::And(vec![inner, condition]);
        }
    }
}

/// One condition on a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `code[:modifier]=v1,v2`: some value of parameter `code` matches one of `values`
    /// (for `:not`: no value matches any of them).
    Values {
        /// The parameter's code.
        code: String,
        /// The parameter's type (a composite's criteria are [`Criterion::Composite`]).
        kind: SearchParamType,
        /// The modifier.
        modifier: Modifier,
        /// The alternatives (comma-separated values, ORed).
        values: Vec<Criterion>,
    },
    /// `code:missing=true|false`: whether the resource has no value for `code`.
    Missing {
        /// The parameter's code.
        code: String,
        /// The parameter's type.
        kind: SearchParamType,
        /// `true`: the resource has no value; `false`: it has at least one.
        missing: bool,
    },
    /// `code[:Type].rest=…`: some resource that reference parameter `code` points to, of one
    /// of `types`, matches `then`.
    Chain {
        /// The reference parameter's code.
        code: String,
        /// The target types the chain may go through (the `:Type` modifier, or the
        /// parameter's targets that know the next parameter).
        types: Vec<String>,
        /// The condition on the referenced resource.
        then: Box<Filter>,
    },
    /// `[compartment]/[id]/[type]`: the resource is in the compartment of `compartment/id`
    /// for one of `ids`: one of its compartment parameters ([`crate::compartment_params`])
    /// references that resource, or it is that resource. `ids` = `None`: in the compartment
    /// of any resource of that type (a Patient-level bulk export).
    Compartment {
        /// The compartment type (`Patient`).
        compartment: String,
        /// The compartments' resource ids (empty: none); `None`: any.
        ids: Option<Vec<String>>,
    },
    /// `_has:Type:param:rest=…`: some resource of `source_type` whose reference parameter
    /// `param` points to this resource matches `then`.
    Has {
        /// The type of the referring resources.
        source_type: String,
        /// The reference parameter of `source_type` that points here.
        param: String,
        /// The condition on the referring resource.
        then: Box<Filter>,
    },
    /// Every filter holds (`_filter` `x and y`; empty: true).
    And(Vec<Filter>),
    /// Some filter holds (`_filter` `x or y`; empty: false).
    Or(Vec<Filter>),
    /// The filter does not hold (`_filter` `not (x)`, and its `ne` on strings, references,
    /// URIs and composites).
    Not(Box<Filter>),
    /// The resource is of one of these types (empty: false). No URL spelling: the engine
    /// builds per-type conditions with it (`$everything`'s `start`/`end`).
    Type(Vec<String>),
    /// `_content` / `_text`: one of `phrases` occurs in the resource's text (see
    /// [`TextScope`]), compared with ASCII letters folded to lower case. The phrases are
    /// stored folded ([`crate::fold_text`]).
    Text {
        /// Where the text is looked for.
        scope: TextScope,
        /// The alternatives (comma-separated values, ORed), folded, none empty.
        phrases: Vec<String>,
    },
}

/// Where `_content` and `_text` look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextScope {
    /// `_content`: every JSON string value of the resource but its `resourceType`, `id` and
    /// `meta` (contained resources and the narrative included).
    Content,
    /// `_text`: the narrative `text.div`, with its tags removed ([`crate::strip_tags`]) and
    /// the five XML entities (`&lt;` `&gt;` `&quot;` `&apos;` `&amp;`) decoded.
    Narrative,
}

/// A search modifier (`:missing` is [`Filter::Missing`], `:[type]` on a chain is
/// [`Filter::Chain::types`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    /// No modifier.
    None,
    /// string `:exact`: the whole string, case and accents included.
    Exact,
    /// string `:contains`: anywhere in the normalised string.
    Contains,
    /// string, `_filter` `eq` only (no URL spelling): the whole normalised string is equal.
    Equals,
    /// string, `_filter` `ew` only (no URL spelling): the normalised string ends with it.
    EndsWith,
    /// token `:text`: starts-with on the normalised display/text.
    Text,
    /// token `:not`: no value matches.
    Not,
    /// token `:of-type`: `Identifier.type` coding and value.
    OfType,
    /// uri `:below`: the stored URI starts with the search URI. token `:below`: the code
    /// or one it subsumes (the engine replaces it by the codes, see [`Criterion::ValueSet`]).
    Below,
    /// uri `:above`: the search URI starts with the stored URI. token `:above`: the code or
    /// one that subsumes it (replaced by the engine like `:below`).
    Above,
    /// token `:in`: the code is in the value set ([`Criterion::ValueSet`]).
    In,
    /// token `:not-in`: no code is in the value set.
    NotIn,
    /// reference `:identifier`: `Reference.identifier` matches a token.
    Identifier,
    /// reference `:[type]`: the target has this type.
    Type(String),
}

/// `system` part of a token search value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemMatch {
    /// `code`: any system (or none).
    Any,
    /// `|code`: the value must have no system.
    NoSystem,
    /// `system|code` or `system|`: this system.
    Is(String),
}

/// A comparison prefix of a date, number or quantity value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prefix {
    /// `eq` (the default): the target range lies within the search range.
    Eq,
    /// `ne`: not `eq`.
    Ne,
    /// `gt`: the target range reaches above the search range (`target.hi > search.hi`).
    Gt,
    /// `lt`: the target range reaches below the search range (`target.lo < search.lo`).
    Lt,
    /// `ge`: `gt` or `eq`.
    Ge,
    /// `le`: `lt` or `eq`.
    Le,
    /// `sa`: the target starts after the search range (`target.lo > search.hi`).
    Sa,
    /// `eb`: the target ends before the search range (`target.hi < search.lo`).
    Eb,
    /// `ap`: the ranges overlap; the search range is already widened by the parser (10% of
    /// the value for numbers and quantities, 10% of the distance to now for dates).
    Ap,
}

/// One alternative of a parameter's value list.
#[derive(Debug, Clone, PartialEq)]
pub enum Criterion {
    /// token `[system|]code` (also reference `:identifier` values).
    Token {
        /// The system condition.
        system: SystemMatch,
        /// The code; `None` for `system|` (any code in that system).
        code: Option<String>,
    },
    /// token `:text`: normalised text.
    Text(String),
    /// token `:of-type`: `system|code|value`.
    OfType {
        /// The type coding's system.
        system: String,
        /// The type coding's code.
        code: String,
        /// The identifier value.
        value: String,
    },
    /// string: the search text as written and normalised.
    String {
        /// As written (for `:exact`).
        exact: String,
        /// [`crate::normalize_string`] of it.
        normalized: String,
    },
    /// date with its prefix.
    Date {
        /// The comparison.
        prefix: Prefix,
        /// The search value's range.
        range: DateRange,
    },
    /// number with its prefix.
    Number {
        /// The comparison.
        prefix: Prefix,
        /// The search value's range.
        range: NumberRange,
    },
    /// quantity `[prefix]number|system|code` (`number||code` matches code or unit).
    Quantity {
        /// The comparison.
        prefix: Prefix,
        /// The search value's range.
        range: NumberRange,
        /// The system, if given.
        system: Option<String>,
        /// The code (or unit, when no system is given), if given.
        code: Option<String>,
    },
    /// reference `[Type/]id`, absolute URL or canonical.
    Reference(RefQuery),
    /// uri.
    Uri(String),
    /// composite: one criterion per component, all met by one occurrence.
    Composite(Vec<Criterion>),
    /// token `:in`/`:not-in`: a value set's canonical URL. Terminology is not this crate's:
    /// the engine expands the value set and replaces the filter by its codes before a search
    /// reaches a store (as it does for token `:below`/`:above`). Left unexpanded it matches
    /// nothing.
    ValueSet(String),
}

/// A reference search value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefQuery {
    /// `Type/id`, an absolute `…/Type/id`, or a bare `id` (type from the `:Type` modifier or
    /// the parameter's only target; `None`: any type).
    Local {
        /// The target type, if known.
        target_type: Option<String>,
        /// The id.
        id: String,
    },
    /// An absolute URL or a canonical (`url|version`). Matches a stored URL (and version,
    /// when given), or, when the URL ends in `Type/id` and no version is given, a stored
    /// local reference to that resource (absolute references are indexed as local ones,
    /// see [`crate::RefValue::Local`]).
    Url {
        /// The URL without `|version`.
        url: String,
        /// The version, if given (`None` matches every version).
        version: Option<String>,
        /// `(type, id)` when the URL ends in `Type/id`.
        local: Option<(String, String)>,
    },
}

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The parameter's code.
    pub code: String,
    /// The parameter's type.
    pub kind: SearchParamType,
    /// `-code`.
    pub descending: bool,
}

/// One `_include`/`_revinclude` value: `source_type:param[:target_type]` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The resource type holding the reference (`None` for `*`).
    pub source_type: Option<String>,
    /// The reference parameter (`None` for `*` or `Type:*`: every reference parameter).
    pub param: Option<String>,
    /// Only targets of this type.
    pub target_type: Option<String>,
    /// `:iterate` (also the R3 name `:recurse`).
    pub iterate: bool,
}

/// `_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    /// `none`.
    None,
    /// `estimate`.
    Estimate,
    /// `accurate`.
    Accurate,
}

/// `_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// `true`: summary elements only.
    True,
    /// `false`: everything.
    False,
    /// `text`: text, id, meta and mandatory elements.
    Text,
    /// `data`: everything but the text.
    Data,
    /// `count`: the total only.
    Count,
}

/// `_contained`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contained {
    /// `false` (the default): contained resources are not searched.
    False,
    /// `true`: only contained resources.
    True,
    /// `both`.
    Both,
}

/// `_containedType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainedType {
    /// Return the container.
    Container,
    /// Return the contained resource.
    Contained,
}

/// A parameter left out of the search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownParam {
    /// The parameter name as sent (with its modifier).
    pub name: String,
    /// Why it was left out.
    pub reason: String,
}
