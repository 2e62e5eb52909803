//! Value sets of required bindings, expanded to (system, code) pairs where possible.

use crate::CodeSystemDef;
use std::collections::{HashMap, HashSet};

/// A value set used by a required binding.
///
/// When `enumerable` is false the set could not be expanded from the definitions package
/// (filters, grammar-based or external code systems): callers must not check codes against it.
#[derive(Debug, Clone, Default)]
pub struct ValueSetDef {
    pub url: String,
    pub enumerable: bool,
    /// Why the value set is not enumerable, if it is not.
    pub reason: Option<String>,
    /// system -> codes.
    codes: HashMap<String, HashSet<String>>,
    /// Every code, whatever its system.
    any_system: HashSet<String>,
    /// system -> code -> display, for the codes that have one (the value set's own display,
    /// else the code system's, as far as the artifact holding the value set knows it).
    displays: HashMap<String, HashMap<String, String>>,
}

impl ValueSetDef {
    pub(crate) fn new(
        url: String,
        enumerable: bool,
        reason: Option<String>,
        codes: HashMap<String, HashSet<String>>,
        displays: HashMap<String, HashMap<String, String>>,
    ) -> ValueSetDef {
        let any_system = codes.values().flatten().cloned().collect();
        ValueSetDef { url, enumerable, reason, codes, any_system, displays }
    }

    /// An enumerable value set of the given (system, code) pairs, without displays: an
    /// expansion made elsewhere (a project's ValueSet expanded by the server), for the
    /// binding checks of validation.
    pub fn from_codes<I>(url: impl Into<String>, pairs: I) -> ValueSetDef
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut codes: HashMap<String, HashSet<String>> = HashMap::new();
        for (system, code) in pairs {
            codes.entry(system).or_default().insert(code);
        }
        ValueSetDef::new(url.into(), true, None, codes, HashMap::new())
    }

    /// The display of `code` in `system` as this value set gives it; `None` when the
    /// artifact has none for it (a code system of the other artifact may:
    /// see [`crate::builtin_display`]).
    pub fn display(&self, system: &str, code: &str) -> Option<&str> {
        self.displays.get(system)?.get(code).map(String::as_str)
    }

    /// Whether the expansion holds `code` in `system`; with `system` None, in any system.
    /// Always false for a non-enumerable value set: check [`ValueSetDef::enumerable`] first.
    pub fn contains(&self, system: Option<&str>, code: &str) -> bool {
        match system {
            Some(system) => self.codes.get(system).is_some_and(|codes| codes.contains(code)),
            None => self.any_system.contains(code),
        }
    }

    /// Whether any code of the expansion comes from `system`.
    pub fn has_system(&self, system: &str) -> bool {
        self.codes.contains_key(system)
    }

    /// The code systems of the expansion.
    pub fn systems(&self) -> impl Iterator<Item = &str> {
        self.codes.keys().map(String::as_str)
    }

    /// Every (system, code) pair of the expansion, in no particular order.
    pub fn codes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.codes.iter().flat_map(|(s, codes)| codes.iter().map(move |c| (s.as_str(), c.as_str())))
    }

    /// Number of (system, code) pairs.
    pub fn len(&self) -> usize {
        self.codes.values().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A value set's displays: its own (the artifact's `display` of the value set), else the
/// display of the code in `code_systems`, for each of its codes that has one.
pub(crate) fn resolve_displays<'a, C>(
    codes: C,
    own: HashMap<String, HashMap<String, String>>,
    code_systems: &HashMap<String, CodeSystemDef>,
) -> HashMap<String, HashMap<String, String>>
where
    C: IntoIterator<Item = (&'a String, &'a HashSet<String>)>,
{
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    for (system, set) in codes {
        let own_system = own.get(system);
        let cs = code_systems.get(system);
        for code in set {
            let display = own_system
                .and_then(|m| m.get(code))
                .map(String::as_str)
                .or_else(|| cs.and_then(|cs| cs.display(code)));
            if let Some(d) = display {
                out.entry(system.clone()).or_default().insert(code.clone(), d.to_string());
            }
        }
    }
    out
}
