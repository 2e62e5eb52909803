//! The answers kiln-fhirpath asks for while invariants are evaluated: `memberOf` over the value
//! sets Kiln carries (the R4 definitions and the US Core artifact), `subsumes`/`subsumedBy`
//! over the code systems they carry (with the `is-a` hierarchies of the R4 package), and
//! `conformsTo(profile)` by validating against a [`Profiles`] set. Anything else is unknown,
//! which FHIRPath turns into an empty result. Profile validation asks a
//! [`ValidationTerminology`], which may add value sets expanded by the caller
//! ([`SnapshotTerminology`]) to the built-in ones.

use crate::profile::Profiles;
use kiln_definitions::ValueSetDef;
use kiln_fhirpath::{Conformance, Subsumption, Terminology};
use serde_json::Value;
use std::collections::HashMap;

/// How deep `conformsTo` may nest: a profile's constraint asking whether the resource conforms
/// to a profile whose constraint asks again stops here, and the answer is unknown.
pub const MAX_CONFORMANCE_DEPTH: usize = 4;

/// Terminology from the built-in value sets and code systems
/// ([`kiln_definitions::builtin_value_set`], [`kiln_definitions::builtin_code_system`]).
/// Only expanded (enumerable) value sets are answered; subsumption is answered for the
/// built-in code systems (every code of each, and its `is-a` hierarchy where it has one: a
/// flat system relates only equal codes) and is unknown for codes without a system, other
/// systems, and codes a system does not have.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinTerminology;

impl Terminology for BuiltinTerminology {
    fn member_of(&self, system: Option<&str>, code: &str, value_set_url: &str) -> Option<bool> {
        let vs = kiln_definitions::builtin_value_set(value_set_url)?;
        vs.enumerable.then(|| vs.contains(system, code))
    }

    fn subsumes(&self, system: Option<&str>, a: &str, b: &str) -> Option<Subsumption> {
        kiln_definitions::builtin_code_system(system?)?.subsumption(a, b)
    }
}

/// The terminology profile validation uses: FHIRPath's `memberOf`/`subsumes` (through
/// [`Terminology`]) and, for binding checks, the value sets it can enumerate.
/// [`BuiltinTerminology`] is the default; [`SnapshotTerminology`] adds expansions made by
/// the caller (a server's project value sets).
pub trait ValidationTerminology: Terminology + std::fmt::Debug + Send + Sync {
    /// The value set `url` (a `|version` suffix ignored) when it is known and enumerable;
    /// `None` leaves a binding to it unchecked.
    fn value_set(&self, url: &str) -> Option<&ValueSetDef>;
}

impl ValidationTerminology for BuiltinTerminology {
    fn value_set(&self, url: &str) -> Option<&ValueSetDef> {
        builtin_enumerable(url)
    }
}

/// The built-in value set `url` (US Core's artifact first, as profiles have always looked it
/// up, then the R4 definitions'), when enumerable.
fn builtin_enumerable(url: &str) -> Option<&'static ValueSetDef> {
    let vs = kiln_definitions::us_core()
        .value_set(url)
        .or_else(|| kiln_definitions::definitions().value_set(url))?;
    vs.enumerable.then_some(vs)
}

/// [`BuiltinTerminology`] plus value sets expanded elsewhere (a server expanding the
/// ValueSets of a project before validating against the project's profiles), keyed by
/// canonical URL without version. A built-in enumerable value set wins over an expansion of
/// the same URL; subsumption is answered from the built-in code systems only.
#[derive(Debug, Clone, Default)]
pub struct SnapshotTerminology {
    value_sets: HashMap<String, ValueSetDef>,
    /// Code systems by URL: each code with its parents (for `subsumes`).
    code_systems: HashMap<String, HashMap<String, Vec<String>>>,
}

impl SnapshotTerminology {
    pub fn new() -> SnapshotTerminology {
        SnapshotTerminology::default()
    }

    /// Adds the expansion `(system, code)` pairs of the value set `url`.
    pub fn insert<I>(&mut self, url: &str, codes: I)
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let url = without_version(url);
        self.value_sets.insert(url.to_string(), ValueSetDef::from_codes(url, codes));
    }

    /// Adds a code system's hierarchy: every code of `url` with its parents (`is-a`).
    pub fn insert_code_system<I>(&mut self, url: &str, concepts: I)
    where
        I: IntoIterator<Item = (String, Vec<String>)>,
    {
        self.code_systems.insert(without_version(url).to_string(), concepts.into_iter().collect());
    }

    /// How many value sets the snapshot holds.
    pub fn len(&self) -> usize {
        self.value_sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.value_sets.is_empty()
    }
}

fn without_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

impl Terminology for SnapshotTerminology {
    fn member_of(&self, system: Option<&str>, code: &str, value_set_url: &str) -> Option<bool> {
        BuiltinTerminology.member_of(system, code, value_set_url).or_else(|| {
            let vs = self.value_sets.get(without_version(value_set_url))?;
            Some(vs.contains(system, code))
        })
    }

    fn subsumes(&self, system: Option<&str>, a: &str, b: &str) -> Option<Subsumption> {
        BuiltinTerminology.subsumes(system, a, b).or_else(|| {
            let concepts = self.code_systems.get(without_version(system?))?;
            let (a, b) = (concepts.get_key_value(a)?.0, concepts.get_key_value(b)?.0);
            Some(kiln_definitions::subsumption(a.as_str(), b.as_str(), |c| {
                concepts.get(c).into_iter().flatten().map(String::as_str)
            }))
        })
    }
}

impl ValidationTerminology for SnapshotTerminology {
    fn value_set(&self, url: &str) -> Option<&ValueSetDef> {
        builtin_enumerable(url).or_else(|| self.value_sets.get(without_version(url)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_fhirpath::{Context, Item, compile, evaluate};
    use serde_json::json;

    const ACT: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

    fn run(resource: &Value, text: &str) -> Vec<String> {
        let ctx = Context::new(resource).with_terminology(&BuiltinTerminology);
        let items = evaluate(&compile(text).expect(text), &ctx).expect(text);
        items.iter().map(Item::to_string).collect()
    }

    /// An Encounter whose `class` is `code` and whose type codings are `types`, all v3-ActCode.
    fn encounter(code: &str, types: &[&str]) -> Value {
        let coding: Vec<Value> = types.iter().map(|t| json!({"system": ACT, "code": t})).collect();
        json!({"resourceType": "Encounter", "status": "finished",
               "class": {"system": ACT, "code": code}, "type": [{"coding": coding}]})
    }

    #[test]
    fn subsumption_follows_the_built_in_hierarchies() {
        let amb = encounter("AMB", &["_ActEncounterCode"]);
        assert_eq!(run(&amb, "class.subsumedBy(%resource.type.first())"), ["true"]);
        assert_eq!(run(&amb, "class.subsumes(%resource.type.first())"), ["false"]);
        assert_eq!(run(&amb, "type.first().subsumes(%resource.class)"), ["true"]);
        // Two levels down: inpatient acute is an inpatient encounter.
        let acute = encounter("ACUTE", &["IMP"]);
        assert_eq!(run(&acute, "class.subsumedBy(%resource.type.first())"), ["true"]);
        // Siblings: neither subsumes the other.
        let emer = encounter("EMER", &["AMB"]);
        assert_eq!(run(&emer, "class.subsumes(%resource.type.first())"), ["false"]);
        assert_eq!(run(&emer, "class.subsumedBy(%resource.type.first())"), ["false"]);
        // A code the system does not have, or a system Kiln does not carry: unknown (empty).
        let unknown = encounter("AMB", &["NOT-A-CODE"]);
        assert!(run(&unknown, "class.subsumedBy(%resource.type.first())").is_empty());
        let mut other = encounter("a", &["b"]);
        other["class"]["system"] = json!("http://example.org/cs");
        other["type"][0]["coding"][0]["system"] = json!("http://example.org/cs");
        assert!(run(&other, "class.subsumedBy(%resource.type.first())").is_empty());
    }

    #[test]
    fn answers_come_from_the_definitions() {
        let t = BuiltinTerminology;
        assert_eq!(t.subsumes(Some(ACT), "_ActEncounterCode", "AMB"), Some(Subsumption::Subsumes));
        assert_eq!(
            t.subsumes(Some(ACT), "AMB", "_ActEncounterCode"),
            Some(Subsumption::SubsumedBy)
        );
        assert_eq!(t.subsumes(Some(ACT), "AMB", "AMB"), Some(Subsumption::Equivalent));
        assert_eq!(t.subsumes(Some(ACT), "AMB", "IMP"), Some(Subsumption::NotSubsumed));
        assert_eq!(t.subsumes(None, "AMB", "IMP"), None);
        let gender = "http://hl7.org/fhir/administrative-gender";
        assert_eq!(t.subsumes(Some(gender), "male", "female"), Some(Subsumption::NotSubsumed));
        assert_eq!(t.subsumes(Some(gender), "male", "robot"), None);
    }
}
