//! Value sets of required bindings, expanded to (system, code) pairs where possible.

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
}

impl ValueSetDef {
    pub(crate) fn new(
        url: String,
        enumerable: bool,
        reason: Option<String>,
        codes: HashMap<String, HashSet<String>>,
    ) -> ValueSetDef {
        let any_system = codes.values().flatten().cloned().collect();
        ValueSetDef { url, enumerable, reason, codes, any_system }
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
