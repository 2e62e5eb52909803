//! The pure half of Kiln's FHIR search (no IO, no SQL, no async): what a storage backend
//! needs to index resources and to understand a search, plus a reference evaluator to test
//! the backend against.
//!
//! # Brief overview
//!
//! - [`extract`]`(resource) -> Vec<`[`IndexEntry`]`>`: one row per value of every search
//!   parameter whose base includes the resource's type (R4 core, US Core, Medplum, and the
//!   `Resource` parameters `_id`, `_lastUpdated`, `_tag`, `_profile`, `_security`,
//!   `_source`). Expressions are compiled once per definition and evaluated with
//!   kiln-fhirpath (no resolver: `resolve()` yields typed stubs).
//! - [`IndexValue`]: the normalised value of a row, by [`ParamKind`]: [`Token`] (system,
//!   code, text for `:text`) and [`OfType`], [`StringValue`] (exact + [`normalize_string`]),
//!   [`DateRange`] (closed UTC epoch-millisecond range), [`NumberRange`] (implicit-precision
//!   range + exact extent), [`QuantityValue`], [`RefValue`] (local `Type/id`, URL/canonical,
//!   logical identifier), URI. Composite parameters are indexed as their components
//!   ([`IndexEntry::component`]), joined by [`IndexEntry::elem`].
//! - [`parse`]`(type, pairs) -> `[`SearchQuery`]: [`Filter`]s (AND) of [`Criterion`]
//!   alternatives (OR) with [`Modifier`]s and [`Prefix`]es, chains and `_has`, the result
//!   parameters (`_count`, `_sort`, `_include`, …) and [`SearchQuery::unknown`] parameters.
//!   Malformed input is a list of [`kiln_model::Issue`]s naming the parameter. `_filter`
//!   expressions (`name co "smi" and not (gender eq male)`) are translated into the same
//!   filters, combined with [`Filter::And`], [`Filter::Or`] and [`Filter::Not`].
//! - [`matches()`] / [`matches_in`]: the reference evaluator (the oracle), slow and direct,
//!   working on the very rows [`extract`] produces; chains and `_has` look into a
//!   [`ResourceSet`]. Its module documentation states every matching rule.
//!
//! # Choices
//!
//! - Dates without a timezone (and plain dates) are taken as UTC; open Period ends are
//!   `i64::MIN` / `i64::MAX`; a Timing indexes the span of its `event`s.
//! - Strings fold with Unicode NFD minus combining marks, then lower case
//!   (`unicode-normalization`).
//! - Absolute references `http(s)://…/Type/id` index as local `Type/id` (the base URL is not
//!   known at this layer); `canonical`/`uri` elements stay URLs with their `|version` split.
//! - UCUM quantities are indexed twice: as written, and converted to base units under the
//!   system [`UCUM_CANONICAL`]; a UCUM search value is converted the same way, so `mg`
//!   finds `g` (for the units kiln-fhirpath's UCUM subset knows).
//! - Terminology is not this crate's: token `:in`/`:not-in` parse to
//!   [`Criterion::ValueSet`] and token `:below`/`:above` to a `system|code`; the engine
//!   expands them into explicit codes before a store sees the query.
//! - `_content` and `_text` are plain substring searches with ASCII case folding (the
//!   `text` module documentation says exactly where they look); `_list=id` is
//!   `_has:List:item:_id=id`.
//! - Contained resources are indexed with their container ([`IndexEntry::contained`]);
//!   a local reference `#id` is [`RefValue::Contained`], which only chains follow.
//!   `_contained` and `_containedType` are [`SearchQuery::contained`] and
//!   [`SearchQuery::contained_type`]; [`matching_contained`] says which parts of a resource
//!   match.
//! - Not here yet: `_filter`'s `po`, `special` parameters (`near`), `_query` and functional
//!   lists (`_list=$current-allergies`; reported as unknown), in-memory sorting and paging.

#![warn(missing_docs)]

mod extract;
mod filter_expr;
mod index;
mod normalize;
mod oracle;
mod parse;
mod parse_value;
mod query;
mod registry;
mod text;
mod values;

pub use extract::{MAX_CONTAINED, contained_resources, extract};
pub use index::{
    ContainedIn, DateRange, IndexEntry, IndexValue, NumberRange, OfType, ParamKind, QuantityValue,
    RefValue, StringValue, Token,
};
pub use kiln_definitions::SearchParamType;
pub use normalize::{date_range, normalize_string, number_range};
pub use oracle::{
    ResourceSet, compare, compare_number, filter_holds, matches, matches_in, matching_contained,
    value_matches,
};
pub use parse::{MAX_CHAIN, MAX_HAS, parse, parse_at};
pub use query::{
    Contained, ContainedType, Criterion, DEFAULT_COUNT, Filter, Include, MAX_COUNT, Modifier,
    Prefix, RefQuery, SearchQuery, SortKey, Summary, SystemMatch, TextScope, Total, UnknownParam,
};
pub use registry::{Registry, Rejected, definition as custom_definition};
pub use text::{XML_ENTITIES, fold_text, narrative_text, strip_tags, text_holds};
pub use values::{UCUM, UCUM_CANONICAL, parse_reference};

/// The search parameters that put a `resource_type` in `compartment` (R4's
/// CompartmentDefinitions; Kiln knows the Patient compartment), or `None` when the type is
/// not in that compartment.
pub fn compartment_params(compartment: &str, resource_type: &str) -> Option<&'static [String]> {
    match compartment {
        "Patient" => kiln_definitions::definitions().patient_compartment_params(resource_type),
        _ => None,
    }
}
