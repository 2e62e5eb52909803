//! Structural validation of FHIR R4 resources (JSON) against the definitions embedded in
//! `kiln-definitions`, Medplum's resource types included.
//!
//! What is checked, for the resource and every nested resource (`contained`,
//! `Bundle.entry.resource`, `Parameters.parameter.resource`):
//! - a known concrete `resourceType`, a valid logical `id`;
//! - every property names an element of the type (choice elements only with an allowed type,
//!   e.g. `valueQuantity`), resolved through datatypes, backbone elements and
//!   `contentReference`;
//! - JSON shapes: objects vs primitives, arrays exactly for repeating elements, no `null`,
//!   `{}`, `[]` or `""`;
//! - primitive formats (`date`, `dateTime`, `instant`, `time`, `integer`, `positiveInt`,
//!   `decimal`, `uri`, `code`, `id`, `oid`, `uuid`, `base64Binary`, `xhtml`, ...);
//! - `_element` siblings carrying `id`/`extension` for primitives, parallel arrays included;
//! - cardinality (`min`, `max`);
//! - codes of `required` bindings whose value set could be enumerated;
//! - the resource type a `Reference` names (`Patient/1`) against the element's allowed targets
//!   (reported as a *warning*: a handful of official R4 examples break it);
//! - the FHIRPath invariants (`ElementDefinition.constraint` with an `expression`) of the base
//!   resource and datatype definitions, on the resource root and on every element present,
//!   evaluated with `kiln-fhirpath` (module `invariant`): a violation is an issue with code
//!   `invariant`, the constraint's severity (error or warning), diagnostics `"<key>: <human>"`
//!   and the element's path. An expression that fails to evaluate is only a warning.
//!   [`SKIPPED_INVARIANTS`] lists the few never evaluated (`ele-1`, `ext-1`: enforced by the
//!   walk itself; `dom-r4b`: names types R4 lacks), [`CORRECTED_INVARIANTS`] the R4 errata
//!   evaluated in their corrected form, [`DOWNGRADED_INVARIANTS`] those only warned about
//!   (`dom-3`, as Medplum accepts it; `txt-2`, an empty narrative, which official examples
//!   have), [`NATIVE_INVARIANTS`] those checked by Rust code (`dom-3`, for speed; `txt-1`
//!   and `txt-2`, whose R4 expression is the same `htmlChecks()`: txt-1 the allowed markup,
//!   txt-2 the content); best-practice ones (`dom-6`) are opt-in.
//!
//! Bad input is data: validation never panics and never fails, it returns every
//! [`Issue`] found (severity error, except the reference-target warnings and warning-level
//! invariants), each located by a FHIRPath-like `expression` such as
//! `Patient.name[0].given[1]`.
//!
//! Further rules plug in as [`ResourceCheck`]s run on each resource after the structural walk.
//! Profile validation (module [`profile`]) is one: [`ProfileCheck`] checks each resource
//! against the known profiles its `meta.profile` claims, [`Profiles::validate`] against a
//! given profile (US Core 5.0.1 built in; others added as StructureDefinitions), checking
//! bindings and `memberOf` with the terminology the [`Profiles`] carry (the built-in value
//! sets, or a [`SnapshotTerminology`] adding expansions the caller made).

mod binding;
mod callbacks;
mod invariant;
mod primitive;
pub mod profile;
mod reference;
mod walk;

use kiln_definitions::Definitions;
use kiln_model::Issue;
use serde_json::Value;
use std::sync::OnceLock;

pub use callbacks::{
    BuiltinConformance, BuiltinTerminology, MAX_CONFORMANCE_DEPTH, ProfileConformance,
    SnapshotTerminology, ValidationTerminology,
};
pub use invariant::{
    CORRECTED_INVARIANTS, DOWNGRADED_INVARIANTS, NATIVE_INVARIANTS, SKIPPED_INVARIANTS, skip_reason,
};
pub use primitive::check_primitive;
pub use profile::{CompiledProfile, ProfileCheck, Profiles};

/// Validates a resource of any type with the default [`Validator`].
pub fn validate_resource(resource: &Value) -> Vec<Issue> {
    default_validator().validate(resource)
}

/// Validates a resource of any type with the default [`Validator`], running `extra` (for
/// example a [`ProfileCheck`]) on it and on every nested resource.
pub fn validate_resource_with(resource: &Value, extra: &dyn ResourceCheck) -> Vec<Issue> {
    default_validator().validate_with(resource, extra)
}

/// Calls `visit` with `resource` and with every resource nested in it — contained resources,
/// Bundle entries, Parameters resources, found by the same walk as validation, with the same
/// paths — for work on a resource whose structure and invariants were already validated (the
/// walk here skips invariants and bindings, and its own issues are dropped).
pub fn visit_nested(resource: &Value, visit: &mut (dyn FnMut(&ResourceContext<'_>) + Send)) {
    static WALK_ONLY: OnceLock<Validator> = OnceLock::new();
    let walker = WALK_ONLY.get_or_init(|| {
        Validator::with_options(ValidatorOptions {
            check_bindings: false,
            check_reference_targets: false,
            check_invariants: false,
            best_practice_invariants: false,
            ..ValidatorOptions::default()
        })
    });
    struct Visit<'v> {
        visit: std::sync::Mutex<&'v mut (dyn FnMut(&ResourceContext<'_>) + Send)>,
    }
    impl ResourceCheck for Visit<'_> {
        fn check(&self, context: &ResourceContext<'_>, _walk: &mut Vec<Issue>) {
            let mut visit = self.visit.lock().unwrap_or_else(|e| e.into_inner());
            (*visit)(context);
        }
    }
    walker.validate_with(resource, &Visit { visit: std::sync::Mutex::new(visit) });
}

/// Validates a resource that must be of `expected_type` (e.g. the type in a request URL).
/// `Resource` and `DomainResource` accept any resource type deriving from them.
pub fn validate_resource_as(resource: &Value, expected_type: &str) -> Vec<Issue> {
    default_validator().validate_as(resource, expected_type)
}

fn default_validator() -> &'static Validator {
    static DEFAULT: OnceLock<Validator> = OnceLock::new();
    DEFAULT.get_or_init(Validator::new)
}

/// Switches of the structural validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorOptions {
    /// Check codes of required bindings against enumerable value sets.
    pub check_bindings: bool,
    /// Warn when a `Reference` names a resource type its element does not allow.
    pub check_reference_targets: bool,
    /// Deepest JSON nesting walked; deeper content is reported once and not descended into.
    pub max_depth: usize,
    /// Evaluate the FHIRPath invariants of the base definitions (see [`SKIPPED_INVARIANTS`]).
    pub check_invariants: bool,
    /// Also evaluate invariants marked as best practice (`dom-6`: a resource should have a
    /// narrative; `con-3`), reported as warnings. Off by default: advice, not rules.
    pub best_practice_invariants: bool,
}

impl Default for ValidatorOptions {
    fn default() -> Self {
        ValidatorOptions {
            check_bindings: true,
            check_reference_targets: true,
            max_depth: 96,
            check_invariants: true,
            best_practice_invariants: false,
        }
    }
}

/// What a [`ResourceCheck`] is given: one resource (top-level or nested) that passed the
/// structural walk's type resolution.
#[derive(Debug, Clone, Copy)]
pub struct ResourceContext<'a> {
    pub resource_type: &'a str,
    pub resource: &'a Value,
    /// Location of the resource: its type for the top-level one, else e.g.
    /// `Bundle.entry[2].resource`. Issues should extend this path.
    pub path: &'a str,
    /// Whether this is a contained / entry / parameter resource rather than the top level.
    pub nested: bool,
    /// Whether the structural walk found errors in this resource (checks may skip then).
    pub structurally_valid: bool,
    /// The resource this one is nested in (a contained resource's container, a Bundle
    /// entry's Bundle), if any.
    pub container: Option<&'a Value>,
}

/// An additional rule run on every resource after the structural walk (profile conformance
/// is meant to be implemented as such a check; invariants are built in).
pub trait ResourceCheck: Send + Sync {
    fn check(&self, context: &ResourceContext<'_>, issues: &mut Vec<Issue>);
}

impl<F> ResourceCheck for F
where
    F: Fn(&ResourceContext<'_>, &mut Vec<Issue>) + Send + Sync,
{
    fn check(&self, context: &ResourceContext<'_>, issues: &mut Vec<Issue>) {
        self(context, issues)
    }
}

/// A configured validator. Cheap to share: it holds no per-call state.
pub struct Validator {
    definitions: &'static Definitions,
    options: ValidatorOptions,
    checks: Vec<Box<dyn ResourceCheck>>,
    /// Compiled invariants, when `options.check_invariants`.
    invariants: Option<invariant::Invariants>,
}

impl Default for Validator {
    fn default() -> Self {
        Validator::new()
    }
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("options", &self.options)
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Validator {
    /// Structural validation with default options and no extra checks.
    pub fn new() -> Validator {
        Validator::with_options(ValidatorOptions::default())
    }

    pub fn with_options(options: ValidatorOptions) -> Validator {
        let definitions = kiln_definitions::definitions();
        let invariants = options
            .check_invariants
            .then(|| invariant::Invariants::new(definitions, options.best_practice_invariants));
        Validator { definitions, options, checks: Vec::new(), invariants }
    }

    /// Adds a rule run on every resource after the structural walk.
    pub fn with_check(mut self, check: impl ResourceCheck + 'static) -> Validator {
        self.checks.push(Box::new(check));
        self
    }

    pub fn options(&self) -> &ValidatorOptions {
        &self.options
    }

    /// Keys of the invariants this validator evaluates (sorted, deduplicated).
    pub fn invariant_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.invariants.iter().flat_map(|i| i.active_keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Validates a resource of any type.
    pub fn validate(&self, resource: &Value) -> Vec<Issue> {
        let mut walker = walk::Walker::new(self);
        walker.resource(resource, None, false);
        walker.into_issues()
    }

    /// Validates a resource of any type, running `extra` on each resource (top-level and
    /// nested) after this validator's own checks.
    pub fn validate_with(&self, resource: &Value, extra: &dyn ResourceCheck) -> Vec<Issue> {
        let mut walker = walk::Walker::new(self);
        walker.extra = Some(extra);
        walker.resource(resource, None, false);
        walker.into_issues()
    }

    /// Validates a resource that must be of `expected_type`.
    pub fn validate_as(&self, resource: &Value, expected_type: &str) -> Vec<Issue> {
        let mut walker = walk::Walker::new(self);
        walker.resource(resource, Some(expected_type), false);
        walker.into_issues()
    }

    /// Validates a value of a datatype (`HumanName`, `date`, ...) or resource type, reporting
    /// issues under `path` (e.g. `Patient.name[0]`).
    pub fn validate_value(&self, value: &Value, type_name: &str, path: &str) -> Vec<Issue> {
        let mut walker = walk::Walker::new(self);
        walker.value_of_type(value, type_name, path);
        walker.into_issues()
    }
}
