//! The pure half of Kiln's FHIR search (no IO, no SQL, no async).
//!
//! # Brief overview
//!
//! - [`extract`] turns a resource into [`IndexEntry`] rows: one normalised [`IndexValue`]
//!   per value of every search parameter that applies to the resource's type.
//! - [`parse`] turns a query string's pairs into a [`SearchQuery`].
//! - [`matches`] / [`matches_in`] decide whether a resource matches a query. They are the
//!   reference evaluator (the oracle): slow and direct, working on the very rows
//!   [`extract`] produces, so a storage backend's SQL can be property-tested against them.

#![warn(missing_docs)]

mod extract;
mod index;
mod normalize;
mod oracle;
mod parse;
mod parse_value;
mod query;
mod values;

pub use extract::extract;
pub use index::{
    DateRange, IndexEntry, IndexValue, NumberRange, OfType, ParamKind, QuantityValue, RefValue,
    StringValue, Token,
};
pub use kiln_definitions::SearchParamType;
pub use normalize::{date_range, normalize_string, number_range};
pub use oracle::{
    ResourceSet, compare, compare_number, filter_holds, matches, matches_in, value_matches,
};
pub use parse::{MAX_CHAIN, MAX_HAS, parse, parse_at};
pub use query::{
    Contained, ContainedType, Criterion, DEFAULT_COUNT, Filter, Include, MAX_COUNT, Modifier,
    Prefix, RefQuery, SearchQuery, SortKey, Summary, SystemMatch, Total, UnknownParam,
};
pub use values::parse_reference;
