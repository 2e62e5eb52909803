//! Invariants: `ElementDefinition.constraint` entries that carry a FHIRPath `expression`.

use serde::Deserialize;

/// Index of a constraint in [`crate::Definitions::constraints`].
pub type ConstraintId = u32;

/// How a failed invariant is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConstraintSeverity {
    Error,
    Warning,
}

impl ConstraintSeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintSeverity::Error => "error",
            ConstraintSeverity::Warning => "warning",
        }
    }
}

/// One invariant, e.g. `pat-1` (error): `name.exists() or telecom.exists() or ...`.
///
/// The same constraint is shared by every element that carries it (`ele-1` is on almost
/// all of them); elements refer to it by [`ConstraintId`] (see [`crate::ElementDef::constraints`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConstraintDef {
    /// `pat-1`, `ele-1`, ... Keys are not unique: `inv-1` names three different invariants.
    pub key: String,
    pub severity: ConstraintSeverity,
    /// The FHIRPath expression; the constraint holds when it evaluates to `true`.
    pub expression: String,
    /// The human description (`All FHIR elements must have a @value or children`).
    pub human: String,
    /// Marked as a best practice (`elementdefinition-bestpractice`, e.g. `dom-6`): advice
    /// rather than a rule.
    #[serde(default, rename = "bestPractice")]
    pub best_practice: bool,
}
