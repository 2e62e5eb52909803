//! The answers kiln-fhirpath asks for while invariants are evaluated: `memberOf` over the value
//! sets Kiln carries (the R4 definitions and the US Core artifact), and `conformsTo(profile)`
//! by validating against a [`Profiles`] set. Anything else is unknown, which FHIRPath turns
//! into an empty result.

use crate::profile::Profiles;
use kiln_fhirpath::{Conformance, Subsumption, Terminology};
use serde_json::Value;

/// How deep `conformsTo` may nest: a profile's constraint asking whether the resource conforms
/// to a profile whose constraint asks again stops here, and the answer is unknown.
pub const MAX_CONFORMANCE_DEPTH: usize = 4;

/// Terminology from the built-in value sets. Only expanded (enumerable) value sets are
/// answered; subsumption is unknown, since Kiln carries no code system hierarchies here.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinTerminology;

impl Terminology for BuiltinTerminology {
    fn member_of(&self, system: Option<&str>, code: &str, value_set_url: &str) -> Option<bool> {
        let vs = kiln_definitions::definitions()
            .value_set(value_set_url)
            .or_else(|| kiln_definitions::us_core().value_set(value_set_url))?;
        vs.enumerable.then(|| vs.contains(system, code))
    }

    fn subsumes(&self, _system: Option<&str>, _a: &str, _b: &str) -> Option<Subsumption> {
        None
    }
}

/// `conformsTo(url)` through a set of profiles: a resource conforms when validating it against
/// the profile reports no error. `depth` counts the nested `conformsTo` calls so far.
pub struct ProfileConformance<'p> {
    pub profiles: &'p Profiles,
    pub depth: usize,
}

impl Conformance for ProfileConformance<'_> {
    fn conforms_to(&self, resource: &Value, profile_url: &str) -> Option<bool> {
        if self.depth >= MAX_CONFORMANCE_DEPTH {
            return None;
        }
        let profile = self.profiles.get(profile_url)?;
        let path = resource.get("resourceType").and_then(Value::as_str).unwrap_or("Resource");
        let issues = self.profiles.validate_at_depth(resource, profile, path, self.depth + 1);
        Some(!kiln_model::has_failure(&issues))
    }
}

/// [`ProfileConformance`] over [`Profiles::builtin`], fetched only when `conformsTo` asks (the
/// base invariants' evaluation does not compile the US Core profiles otherwise).
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinConformance;

impl Conformance for BuiltinConformance {
    fn conforms_to(&self, resource: &Value, profile_url: &str) -> Option<bool> {
        ProfileConformance { profiles: Profiles::builtin(), depth: 0 }
            .conforms_to(resource, profile_url)
    }
}
