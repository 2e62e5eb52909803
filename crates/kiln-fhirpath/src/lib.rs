//! FHIRPath (normative release N1, the version FHIR R4 uses) for Kiln: a lexer and parser with
//! precise error offsets, and a synchronous evaluator over `serde_json::Value` resources that
//! knows FHIR types from `kiln-definitions` (choice elements, primitive `_name` siblings,
//! `is`/`as`/`ofType`).
//!
//! ```
//! use kiln_fhirpath::{Context, Item, compile, evaluate};
//! let patient = serde_json::json!({"resourceType": "Patient", "birthDate": "1974-12-25"});
//! let expr = compile("Patient.birthDate < @2000-01-01").unwrap();
//! let result = evaluate(&expr, &Context::new(&patient)).unwrap();
//! assert!(matches!(result.as_slice(), [Item::Boolean(true)]));
//! ```
//!
//! The crate is pure: no IO, no async. Evaluation is bounded (expression depth, a step budget,
//! string sizes, regex sizes) and never panics on any input. `trace()` returns its input and
//! logs nothing. `htmlChecks()` checks the narrative XHTML rules itself; the terminology
//! functions (`memberOf`, `subsumes`, `subsumedBy`) ask a [`Terminology`] and `conformsTo()`
//! of a profile asks a [`Conformance`], set on the [`Context`] like the [`Resolver`]; without
//! one, or when it does not know, they return empty.

mod ast;
mod datetime;
mod eval;
mod functions;
mod html;
mod lexer;
mod locate;
mod navigate;
mod ops;
mod parser;
mod quantity;
mod types;

pub use datetime::{Date, DateTime, Parts, Precision, Time};
pub use html::NarrativeCheck;
pub use locate::{ChildDefinition, Location, Step, child_definition, locate};
pub use quantity::{Quantity, ucum_canonical};
pub use types::{Item, Node, derives_from};

/// The narrative checks of `htmlChecks()` on an XHTML text (FHIR invariants txt-1, txt-2).
pub fn html_checks(xhtml: &str) -> bool {
    html::narrative_ok(xhtml)
}

/// The narrative checks of `htmlChecks()` one by one: the allowed XHTML (txt-1) and the
/// content (txt-2), which R4 both expresses as `htmlChecks()`.
pub fn check_narrative(xhtml: &str) -> NarrativeCheck {
    html::check(xhtml)
}

use chrono::FixedOffset;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// A compiled expression: cheap to clone, shareable across threads.
#[derive(Debug, Clone)]
pub struct Expression {
    inner: Arc<(String, ast::Node)>,
}

impl Expression {
    /// The source text.
    pub fn text(&self) -> &str {
        &self.inner.0
    }

    /// For a path ending in a property name (`Patient.name`, `contact[0].telecom`, `name`):
    /// the expression before the last `.` (`None` when the name stands alone, i.e. applies
    /// to the focus) and that name. `None` for any other expression.
    pub fn split_last_member(&self) -> Option<(Option<Expression>, &str)> {
        let (text, root) = &*self.inner;
        let ast::Expr::Member { target, name } = &root.expr else { return None };
        let Some(target) = target else { return Some((None, name)) };
        let before = text.get(..root.offset)?.trim_end();
        let before = before.strip_suffix('.')?.trim_end();
        let parent = Expression { inner: Arc::new((before.to_string(), (**target).clone())) };
        Some((Some(parent), name))
    }
}

/// A syntax (or unknown-function, unknown-type) error at byte `offset` of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(offset: usize, message: impl Into<String>) -> ParseError {
        ParseError { offset, message: message.into() }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at offset {})", self.message, self.offset)
    }
}

impl std::error::Error for ParseError {}

/// An error raised while evaluating, with the byte offset of the failing sub-expression:
/// a collection where one item is required, incompatible operand types, an exhausted budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at offset {})", self.message, self.offset)
    }
}

impl std::error::Error for EvalError {}

/// Parses `text` into an [`Expression`]. Function names, their argument counts and type names
/// (`is(Quantity)`) are checked here too.
pub fn compile(text: &str) -> Result<Expression, ParseError> {
    let root = parser::parse(text)?;
    Ok(Expression { inner: Arc::new((text.to_string(), root)) })
}

/// Finds resources for `resolve()`.
pub trait Resolver {
    /// The resource a reference (`Patient/123`, an absolute URL, `urn:uuid:…`) points to.
    fn resolve(&self, reference: &str) -> Option<Value>;
}

/// How two codes of one code system relate (the answer to `subsumes`): the definitions' type,
/// shared with the built-in code systems and the engine's `CodeSystem/$subsumes`.
pub use kiln_definitions::Subsumption;

/// Answers the terminology functions. `None` means "unknown" (a value set or code system the
/// implementation does not have), and the function then returns empty.
pub trait Terminology {
    /// Whether the code (of `system`, or of a system the value set names when `None`) is in
    /// the value set.
    fn member_of(&self, system: Option<&str>, code: &str, value_set_url: &str) -> Option<bool>;

    /// How `code_a` relates to `code_b` in `system` (`None` when the codes came without one).
    fn subsumes(&self, system: Option<&str>, code_a: &str, code_b: &str) -> Option<Subsumption>;
}

/// Answers `conformsTo(url)` for profiles other than the base types' own definitions.
pub trait Conformance {
    /// Whether `resource` conforms to the profile; `None` for a profile it does not know.
    fn conforms_to(&self, resource: &Value, profile_url: &str) -> Option<bool>;
}

/// What an expression is evaluated against.
///
/// `resolve()` looks up `#id` references in `contained` and `urn:uuid:` references in a
/// Bundle root resource itself. Other references go to the [`Resolver`]; without one, a
/// reference of the form `Type/id` (relative or absolute, `_history` allowed) yields a stub
/// `{"resourceType": Type, "id": id}`, so `where(resolve() is Patient)` works without IO.
pub struct Context<'a> {
    pub(crate) resource: &'a Value,
    pub(crate) root_resource: &'a Value,
    pub(crate) focus: Option<Vec<Item<'a>>>,
    pub(crate) variables: HashMap<String, Vec<Item<'a>>>,
    pub(crate) resolver: Option<&'a dyn Resolver>,
    pub(crate) terminology: Option<&'a dyn Terminology>,
    pub(crate) conformance: Option<&'a dyn Conformance>,
    /// Set by [`Context::with_now`], else read from the clock at the first `now()`.
    pub(crate) now: OnceLock<chrono::DateTime<FixedOffset>>,
    pub(crate) strict: bool,
    pub(crate) paths: bool,
}

impl<'a> Context<'a> {
    /// Evaluation on `resource`, which is also `%resource`, `%rootResource` and `%context`.
    pub fn new(resource: &'a Value) -> Context<'a> {
        Context {
            resource,
            root_resource: resource,
            focus: None,
            variables: HashMap::new(),
            resolver: None,
            terminology: None,
            conformance: None,
            now: OnceLock::new(),
            strict: false,
            paths: true,
        }
    }

    /// Nodes without paths ([`Node::path`] is empty): for callers that only want values, such
    /// as search indexing, this saves formatting a path for every element visited.
    pub fn without_paths(mut self) -> Self {
        self.paths = false;
        self
    }

    /// A resource of this context as an item, with a path when paths are tracked.
    pub(crate) fn resource_item(&self, resource: &'a Value) -> Item<'a> {
        if self.paths {
            Item::resource(resource)
        } else {
            Item::Node(Node::resource_without_path(resource))
        }
    }

    /// The instant `now()` reports: fixed at its first use in this context.
    pub(crate) fn now(&self) -> chrono::DateTime<FixedOffset> {
        *self.now.get_or_init(|| chrono::Utc::now().fixed_offset())
    }

    /// The resource (`%resource`).
    pub fn resource(&self) -> &'a Value {
        self.resource
    }

    /// `%rootResource` (the containing resource, e.g. the Bundle or the container of a
    /// contained resource).
    pub fn with_root_resource(mut self, root: &'a Value) -> Self {
        self.root_resource = root;
        self
    }

    /// Evaluate on these items (also `%context`) instead of the resource, e.g. the
    /// components of a composite search parameter.
    pub fn with_focus(mut self, items: Vec<Item<'a>>) -> Self {
        self.focus = Some(items);
        self
    }

    /// Defines `%name`.
    pub fn with_variable(mut self, name: impl Into<String>, items: Vec<Item<'a>>) -> Self {
        self.variables.insert(name.into(), items);
        self
    }

    pub fn with_resolver(mut self, resolver: &'a dyn Resolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Answers `memberOf`, `subsumes` and `subsumedBy`.
    pub fn with_terminology(mut self, terminology: &'a dyn Terminology) -> Self {
        self.terminology = Some(terminology);
        self
    }

    /// Answers `conformsTo` for profiles.
    pub fn with_conformance(mut self, conformance: &'a dyn Conformance) -> Self {
        self.conformance = Some(conformance);
        self
    }

    /// The instant `now()`, `today()` and `timeOfDay()` report (default: the current time,
    /// UTC); fixed for one context.
    pub fn with_now(mut self, now: chrono::DateTime<FixedOffset>) -> Self {
        self.now = OnceLock::from(now);
        self
    }

    /// Strict mode: navigating to an element that the definitions say the type doesn't have
    /// (`Patient.name.given1`, `Observation.valueQuantity`), or starting a path with another
    /// type's name, is an error instead of an empty result.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }
}

/// Evaluates `expr`; the result borrows from the context's resource.
pub fn evaluate<'a>(expr: &Expression, ctx: &Context<'a>) -> Result<Vec<Item<'a>>, EvalError> {
    eval::run(&expr.inner.1, ctx)
}

#[cfg(test)]
mod tests;
