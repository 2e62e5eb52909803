//! Code systems carried by the artifacts: every code of a (complete) code system, the display
//! of each code where the package gives one, and the `is-a` hierarchy where the system has one.
//!
//! Artifact form (written by `xtask`): `{"url", "concepts"?, "display"?, "parents"?}`.
//! `concepts` is the hierarchy as nested arrays: a node is a code (a leaf) or an array whose
//! first item is the code and whose other items are its children's nodes; without it the
//! system is flat and its codes are the keys of `display`. `parents` adds the parents that
//! the nesting cannot show (a code with two parents). The [`subsumption`] rule here is the one
//! both FHIRPath's `subsumes()` and the engine's `CodeSystem/$subsumes` use.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// How two codes of one code system relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subsumption {
    /// The same concept.
    Equivalent,
    /// The first code is an ancestor of the second.
    Subsumes,
    /// The first code is a descendant of the second.
    SubsumedBy,
    /// Neither.
    NotSubsumed,
}

impl Subsumption {
    /// The code of `$subsumes`' `outcome` (`equivalent`, `subsumes`, `subsumed-by`,
    /// `not-subsumed`).
    pub fn code(self) -> &'static str {
        match self {
            Subsumption::Equivalent => "equivalent",
            Subsumption::Subsumes => "subsumes",
            Subsumption::SubsumedBy => "subsumed-by",
            Subsumption::NotSubsumed => "not-subsumed",
        }
    }
}

/// Whether `ancestor` is `code` or above it, following `parents_of` (cycles are harmless).
pub fn is_ancestor_or_self<'a, F, I>(ancestor: &str, code: &'a str, parents_of: &F) -> bool
where
    F: Fn(&'a str) -> I,
    I: IntoIterator<Item = &'a str>,
{
    let mut seen: HashSet<&str> = HashSet::from([code]);
    let mut stack = vec![code];
    while let Some(c) = stack.pop() {
        if c == ancestor {
            return true;
        }
        for p in parents_of(c) {
            if seen.insert(p) {
                stack.push(p);
            }
        }
    }
    false
}

/// How `a` relates to `b` in a hierarchy given by `parents_of` (both codes known to be in it).
pub fn subsumption<'a, F, I>(a: &'a str, b: &'a str, parents_of: F) -> Subsumption
where
    F: Fn(&'a str) -> I,
    I: IntoIterator<Item = &'a str>,
{
    if a == b {
        Subsumption::Equivalent
    } else if is_ancestor_or_self(a, b, &parents_of) {
        Subsumption::Subsumes
    } else if is_ancestor_or_self(b, a, &parents_of) {
        Subsumption::SubsumedBy
    } else {
        Subsumption::NotSubsumed
    }
}

/// A built-in code system: all its codes, displays and `is-a` hierarchy.
#[derive(Debug, Clone, Default)]
pub struct CodeSystemDef {
    pub url: String,
    /// Every code, in the artifact's order (parents before their children).
    codes: Vec<String>,
    /// code -> its position in `codes`.
    index: HashMap<String, usize>,
    display: HashMap<String, String>,
    /// code -> its parents.
    parents: HashMap<String, Vec<String>>,
}

/// One node of the artifact's `concepts`: a code, or `[code, child, child, …]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawNode {
    Code(String),
    Branch(Vec<RawNode>),
}

#[derive(Deserialize)]
pub(crate) struct RawCodeSystem {
    url: String,
    #[serde(default)]
    concepts: Option<Vec<RawNode>>,
    #[serde(default)]
    display: BTreeMap<String, String>,
    #[serde(default)]
    parents: BTreeMap<String, Vec<String>>,
}

impl CodeSystemDef {
    /// An artifact's code systems, by canonical URL.
    pub(crate) fn index(raw: Vec<RawCodeSystem>) -> HashMap<String, CodeSystemDef> {
        raw.into_iter().map(CodeSystemDef::from_raw).map(|cs| (cs.url.clone(), cs)).collect()
    }

    pub(crate) fn from_raw(raw: RawCodeSystem) -> CodeSystemDef {
        let mut def = CodeSystemDef { url: raw.url, ..CodeSystemDef::default() };
        match raw.concepts {
            Some(nodes) => def.walk(&nodes, None),
            None => {
                for code in raw.display.keys() {
                    def.add(code);
                }
            }
        }
        for (code, parents) in raw.parents {
            if !def.index.contains_key(&code) {
                continue; // a dangling entry would be a generator bug: ignore it
            }
            for p in parents {
                if def.index.contains_key(&p) {
                    def.add_parent(&code, &p);
                }
            }
        }
        def.display = raw.display.into_iter().filter(|(c, _)| def.index.contains_key(c)).collect();
        def
    }

    fn add(&mut self, code: &str) {
        if !self.index.contains_key(code) {
            self.index.insert(code.to_string(), self.codes.len());
            self.codes.push(code.to_string());
        }
    }

    fn add_parent(&mut self, code: &str, parent: &str) {
        let list = self.parents.entry(code.to_string()).or_default();
        if !list.iter().any(|x| x == parent) {
            list.push(parent.to_string());
        }
    }

    fn walk(&mut self, nodes: &[RawNode], parent: Option<&str>) {
        for node in nodes {
            let (code, children) = match node {
                RawNode::Code(code) => (code, &[][..]),
                RawNode::Branch(items) => match items.split_first() {
                    Some((RawNode::Code(code), children)) => (code, children),
                    _ => continue, // malformed: a branch must start with its code
                },
            };
            self.add(code);
            if let Some(p) = parent {
                self.add_parent(code, p);
            }
            self.walk(children, Some(code));
        }
    }

    /// Whether `code` is in the system (codes compare exactly).
    pub fn contains(&self, code: &str) -> bool {
        self.index.contains_key(code)
    }

    /// Every code, parents before their children.
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        self.codes.iter().map(String::as_str)
    }

    /// How many codes the system has.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The display of `code`, where the package gives one.
    pub fn display(&self, code: &str) -> Option<&str> {
        self.display.get(code).map(String::as_str)
    }

    /// The direct parents of `code` (empty for a root, a flat system's code or an unknown code).
    pub fn parents(&self, code: &str) -> &[String] {
        self.parents.get(code).map(Vec::as_slice).unwrap_or_default()
    }

    /// Whether some code has a parent.
    pub fn has_hierarchy(&self) -> bool {
        !self.parents.is_empty()
    }

    /// How `a` relates to `b`; `None` when either is not a code of the system.
    pub fn subsumption(&self, a: &str, b: &str) -> Option<Subsumption> {
        let (a, b) = (self.code_ref(a)?, self.code_ref(b)?);
        Some(subsumption(a, b, |c| self.parents(c).iter().map(String::as_str)))
    }

    fn code_ref(&self, code: &str) -> Option<&str> {
        self.index.get(code).and_then(|&i| self.codes.get(i)).map(String::as_str)
    }
}
