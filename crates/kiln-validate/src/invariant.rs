//! FHIRPath invariants (`ElementDefinition.constraint` with an `expression`) of the base
//! resource and datatype definitions, checked with `kiln-fhirpath`.
//!
//! How it runs:
//! - [`Invariants`] is built once per [`crate::Validator`]: every constraint expression is
//!   compiled once, and for every element of every type (indexed by type ordinal and element
//!   index, no string keys) it holds the constraints to evaluate there and the compiled
//!   one-step FHIRPath expression (`` `name` ``) that reaches the element from its parent.
//! - During the structural walk a [`Collector`] records, for each element present whose
//!   element or type has constraints (a *site*), the navigation steps from its resource.
//!   Elements without constraints cost one slice-length check.
//! - After the walk, each resource's sites are visited in walk order (also in a resource with
//!   structural errors, so that one answer lists every problem):
//!   the FHIRPath node of a site is reached step by step (a shared prefix with the previous
//!   site is reused), then each constraint is evaluated with the node as focus (`$this`,
//!   `%context`), `%resource` = the resource holding the element and `%rootResource` = its
//!   container for a contained resource, else the resource itself (a Bundle entry or a
//!   `Parameters` resource is its own root).
//!
//! - The constraints of one element are first evaluated together, `(c1) and (c2) ...`: when
//!   that is `true` (the usual case) nothing else runs; otherwise each is evaluated alone.
//! - `dom-3` is checked natively (see [`NATIVE_INVARIANTS`]): the walk collects the local
//!   references (`#id`) of each resource and of the resources nested in it. `txt-1` and
//!   `txt-2` (both `htmlChecks()` in R4) are evaluated as the two halves of that function
//!   on `Narrative.div`: the markup (error) and the content (downgraded to a warning).
//!
//! Outcome of one constraint: exactly `false` is a violation, reported with the constraint's
//! severity, code `invariant`, diagnostics `"<key>: <human>"` and the element's path. `true`,
//! an empty result (the expression could not decide, e.g. comparing dates of different
//! precision) or any other value passes. An evaluation error is a *warning* (never a
//! rejection): `"<key>: could not be evaluated: <message>"`.

use crate::{BuiltinConformance, BuiltinTerminology};
use kiln_definitions::{ConstraintSeverity, Definitions};
use kiln_fhirpath::{Context, Expression, Item, compile, evaluate};
use kiln_model::{Issue, IssueCode};
use serde_json::Value;
use std::collections::HashMap;

/// Invariants that are never evaluated, with the reason. Everything else in the base
/// definitions is checked (best-practice ones only when
/// [`crate::ValidatorOptions::best_practice_invariants`] is set).
pub const SKIPPED_INVARIANTS: &[(&str, &str)] = &[
    (
        "ele-1",
        "enforced by the structural walk: no null, {}, [] or \"\"; an object with only an id and \
         a value-less primitive without extensions are rejected",
    ),
    (
        "ext-1",
        "enforced by the structural walk: an Extension has nested extensions or a value[x], \
         exactly one of the two",
    ),
    (
        "dom-r4b",
        "Medplum's R4B backport (SubscriptionStatus.contained): names R4B-only types (Citation, \
         ...) that R4 lacks, so it does not compile, and such resources cannot occur in R4",
    ),
];

/// Invariants reported as warnings whatever their declared severity, with the reason.
pub const DOWNGRADED_INVARIANTS: &[(&str, &str)] = &[
    (
        "dom-3",
        "Medplum accepts contained resources that nothing refers to (its validator skips \
         dom-3), and Kiln serves Medplum's API: reported by $validate, never a reason to reject \
         a write",
    ),
    (
        "txt-2",
        "four official R4 examples (activitydefinition-servicerequest-example, \
         activitydefinition-supplyrequest-example, eventdefinition-example, \
         questionnaire-zika-virus-exposure-assessment) have a narrative of whitespace only, and \
         Medplum stores such narratives: an empty narrative is reported by $validate, never a \
         reason to reject a write",
    ),
];

/// Invariants checked by Rust code instead of their FHIRPath expression, with the reason.
/// The rule is the same (tests compare both on the official examples).
pub const NATIVE_INVARIANTS: &[(&str, &str)] = &[
    (
        "dom-3",
        "its expression scans the whole resource four times per contained resource (1.3 ms for \
         a 5 KB ExplanationOfBenefit); the walk collects the local references in the same pass",
    ),
    (
        "txt-1",
        "its R4 expression is htmlChecks(), the whole narrative rule, which is also txt-2's: \
         txt-1 is evaluated as the markup half of htmlChecks() (one well-formed XHTML div, only \
         the allowed elements and attributes: no script, form, event handler or javascript: \
         link), so that an empty narrative is not reported as unsafe markup",
    ),
    (
        "txt-2",
        "its R4 expression is htmlChecks(), the same as txt-1's: txt-2 is evaluated as the \
         content half (some non-whitespace text or an image; a narrative that is not well \
         formed is txt-1's problem)",
    ),
];

/// Which Rust check stands for a [`NATIVE_INVARIANTS`] entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Native {
    /// dom-3, from the local references the walk collects.
    LocalReferences,
    /// txt-1: the narrative's markup.
    NarrativeMarkup,
    /// txt-2: the narrative's content.
    NarrativeContent,
}

fn native(key: &str) -> Option<Native> {
    match key {
        "dom-3" => Some(Native::LocalReferences),
        "txt-1" => Some(Native::NarrativeMarkup),
        "txt-2" => Some(Native::NarrativeContent),
        _ => None,
    }
}

/// R4 invariants evaluated in a corrected form: (key, text in the R4 expression, its
/// replacement, reason). The correction is the one later FHIR versions published.
pub const CORRECTED_INVARIANTS: &[(&str, &str, &str, &str)] = &[
    (
        "dom-3",
        "descendants().as(",
        "descendants().ofType(",
        "R4 filters a collection with as(), which FHIRPath N1 defines for one item only (an \
         error on more); R5's dom-3 uses ofType()",
    ),
    (
        "que-12",
        "enableWhen.count() > 2",
        "enableWhen.count() > 1",
        "the R4 expression contradicts its own text ('more than one enableWhen'); R5's que-12 \
         tests > 1, and the Java validator reports que-12 for two conditions",
    ),
    (
        "que-7",
        "answer is Boolean",
        "answer is boolean",
        "System.Boolean is not the FHIR type of answerBoolean; R5's que-7 tests `is boolean`",
    ),
];

/// The expression to evaluate for an invariant: its own, or the corrected form.
fn corrected(key: &str, expression: &str) -> String {
    let mut text = expression.to_string();
    for (k, from, to, _) in CORRECTED_INVARIANTS {
        if *k == key {
            text = text.replace(from, to);
        }
    }
    text
}

/// Why an invariant is skipped, if it is.
pub fn skip_reason(key: &str) -> Option<&'static str> {
    SKIPPED_INVARIANTS.iter().find(|(k, _)| *k == key).map(|(_, reason)| *reason)
}

const NO_INDEX: u32 = u32::MAX;
const NO_STEP: u32 = u32::MAX;

struct Compiled {
    key: &'static str,
    severity: ConstraintSeverity,
    expression: Expression,
    /// Set when Rust code decides instead of `expression` (see [`NATIVE_INVARIANTS`]).
    native: Option<Native>,
    /// `"<key>: <human>"`, the diagnostics of a violation.
    diagnostics: String,
}

impl Compiled {
    /// The issue reporting a violation (without its location).
    fn issue(&self) -> Issue {
        match self.severity {
            ConstraintSeverity::Error => Issue::error(IssueCode::Invariant, &self.diagnostics),
            ConstraintSeverity::Warning => Issue::warning(IssueCode::Invariant, &self.diagnostics),
        }
    }
}

/// What the walk needs to know about one element definition.
#[derive(Default)]
pub(crate) struct ElementInfo {
    /// Index into `Invariants::steps` of the expression reaching this element from its parent.
    step: u32,
    /// Constraint ids evaluated on each value of this element (skips removed). For a type's
    /// root element: the type's own invariants, evaluated on every value of that type.
    active: Box<[u32]>,
    /// With two or more of them: index into `Invariants::combined` of `(c1) and (c2) ...`,
    /// evaluated first; only a result other than `true` evaluates them one by one.
    combined: u32,
}

impl ElementInfo {
    pub(crate) fn has_checks(&self) -> bool {
        !self.active.is_empty()
    }
}

/// The compiled invariants and per-element tables; built once per validator.
pub(crate) struct Invariants {
    /// By constraint id; `None` when skipped or not compilable.
    compiled: Vec<Option<Compiled>>,
    /// `[type ordinal][element index]`.
    elements: Vec<Box<[ElementInfo]>>,
    /// One-name navigation expressions (`` `contact` ``), shared by name.
    steps: Vec<Expression>,
    /// Conjunctions of the constraint lists that have several, shared by list.
    combined: Vec<Expression>,
    /// dom-3, checked natively from what the walk collects (see [`NATIVE_INVARIANTS`]).
    dom3: Option<Compiled>,
}

impl Invariants {
    pub(crate) fn new(defs: &'static Definitions, best_practice: bool) -> Invariants {
        let mut dom3 = None;
        let compiled: Vec<Option<Compiled>> = defs
            .constraints()
            .iter()
            .map(|c| {
                if skip_reason(&c.key).is_some() || (c.best_practice && !best_practice) {
                    return None;
                }
                let native = native(&c.key);
                // Every base expression compiles (tested); one that did not would be skipped.
                let expression = compile(&corrected(&c.key, &c.expression)).ok()?;
                let downgraded = DOWNGRADED_INVARIANTS.iter().any(|(k, _)| *k == c.key);
                let compiled = Compiled {
                    key: c.key.as_str(),
                    severity: if downgraded { ConstraintSeverity::Warning } else { c.severity },
                    expression,
                    native,
                    diagnostics: format!("{}: {}", c.key, c.human),
                };
                if native == Some(Native::LocalReferences) {
                    dom3 = Some(compiled);
                    return None;
                }
                Some(compiled)
            })
            .collect();
        let mut step_ids: HashMap<&'static str, u32> = HashMap::new();
        let mut steps = Vec::new();
        let mut combined_ids: HashMap<Box<[u32]>, u32> = HashMap::new();
        let mut combined = Vec::new();
        let mut elements: Vec<Box<[ElementInfo]>> =
            (0..defs.type_count()).map(|_| Box::default()).collect();
        for td in defs.type_defs() {
            let infos = td
                .elements()
                .iter()
                .map(|el| {
                    let name = el.base_name();
                    let step = *step_ids.entry(name).or_insert_with(|| {
                        match compile(&format!("`{name}`")) {
                            Ok(expr) => {
                                steps.push(expr);
                                (steps.len() - 1) as u32
                            }
                            Err(_) => NO_STEP,
                        }
                    });
                    let active: Box<[u32]> = el
                        .constraints
                        .iter()
                        .copied()
                        .filter(|&id| compiled.get(id as usize).is_some_and(Option::is_some))
                        .collect();
                    let has_native = active.iter().any(|&id| {
                        compiled
                            .get(id as usize)
                            .is_some_and(|c| c.as_ref().is_some_and(|c| c.native.is_some()))
                    });
                    // A list with a native check is evaluated one by one.
                    let combined = if active.len() < 2 || has_native {
                        NO_STEP
                    } else {
                        *combined_ids.entry(active.clone()).or_insert_with(|| {
                            let parts: Vec<String> = active
                                .iter()
                                .filter_map(|&id| compiled.get(id as usize)?.as_ref())
                                .map(|c| format!("({})", c.expression.text()))
                                .collect();
                            match compile(&parts.join(" and ")) {
                                Ok(expr) => {
                                    combined.push(expr);
                                    (combined.len() - 1) as u32
                                }
                                Err(_) => NO_STEP,
                            }
                        })
                    };
                    ElementInfo { step, active, combined }
                })
                .collect();
            if let Some(slot) = elements.get_mut(td.ordinal()) {
                *slot = infos;
            }
        }
        Invariants { compiled, elements, steps, combined, dom3 }
    }

    /// The table entry of an element of `td`.
    pub(crate) fn info(&self, td_ordinal: usize, element_index: usize) -> Option<&ElementInfo> {
        self.elements.get(td_ordinal)?.get(element_index)
    }

    /// Keys of the constraints that are checked (for tests and documentation).
    pub(crate) fn active_keys(&self) -> impl Iterator<Item = &str> {
        self.compiled.iter().flatten().chain(&self.dom3).map(|c| c.key)
    }
}

/// One step from a node to a child element: which name, and which array entry if repeating.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Step {
    expr: u32,
    index: u32,
}

/// A resource met by the walk (the top-level one, contained, Bundle entries, ...).
struct Frame<'r> {
    resource: &'r Value,
    /// The frame of the enclosing resource, if nested.
    parent: Option<usize>,
    /// Whether it sits in its parent's `contained` (then the parent is `%rootResource`).
    contained: bool,
    /// Where the resource is: `Patient`, `Bundle.entry[0].resource`.
    path: String,
    /// Length of the walk's step stack when the resource was entered.
    step_base: usize,
    /// For dom-3: local references (`#id`) found in it and in the resources nested in it.
    local_refs: Vec<&'r str>,
    /// For dom-3, of a contained resource: whether it refers to its container (`#`).
    refers_to_container: bool,
    /// For dom-3: (id, refers to container) of each contained resource with an id.
    contained_ids: Vec<(&'r str, bool)>,
}

/// An element value with constraints to evaluate.
struct Site<'v> {
    frame: usize,
    /// Range of `Collector::store` holding the steps from the frame's resource.
    steps: (usize, usize),
    own: Option<&'v ElementInfo>,
    of_type: Option<&'v ElementInfo>,
}

/// Records the sites of one validation while the structural walk runs, then evaluates them.
pub(crate) struct Collector<'v, 'r> {
    invariants: &'v Invariants,
    frames: Vec<Frame<'r>>,
    /// Frames being walked, innermost last.
    open: Vec<usize>,
    /// The walk's current position, as navigation steps.
    steps: Vec<Step>,
    /// Copies of `steps` for the recorded sites.
    store: Vec<Step>,
    sites: Vec<Site<'v>>,
}

impl<'v, 'r> Collector<'v, 'r> {
    pub(crate) fn new(invariants: &'v Invariants) -> Collector<'v, 'r> {
        Collector {
            invariants,
            frames: Vec::new(),
            open: Vec::new(),
            steps: Vec::new(),
            store: Vec::new(),
            sites: Vec::new(),
        }
    }

    pub(crate) fn info(&self, td_ordinal: usize, element_index: usize) -> Option<&'v ElementInfo> {
        self.invariants.info(td_ordinal, element_index)
    }

    /// Enters a resource at `path`; `contained` when it sits in a `contained` element.
    pub(crate) fn open_frame(&mut self, resource: &'r Value, contained: bool, path: &str) {
        let parent = self.open.last().copied();
        self.frames.push(Frame {
            resource,
            parent,
            contained: contained && parent.is_some(),
            path: path.to_string(),
            step_base: self.steps.len(),
            local_refs: Vec::new(),
            refers_to_container: false,
            contained_ids: Vec::new(),
        });
        self.open.push(self.frames.len() - 1);
    }

    /// Leaves the innermost resource. Its local references count for the enclosing one too
    /// (`%resource.descendants()` reaches into nested resources).
    pub(crate) fn close_frame(&mut self) {
        let Some(index) = self.open.pop() else { return };
        let Some(parent) = self.frames[index].parent else { return };
        let frame = &self.frames[index];
        let refs = frame.local_refs.clone();
        let id = frame.resource.get("id").and_then(Value::as_str);
        let entry = id.filter(|_| frame.contained).map(|id| (id, frame.refers_to_container));
        let parent = &mut self.frames[parent];
        parent.local_refs.extend(refs);
        parent.contained_ids.extend(entry);
    }

    /// A string primitive starting with `#` (the walker filters): a local reference when it
    /// is the value of an element named `reference` or of type canonical, uri or url (what
    /// dom-3 looks at).
    pub(crate) fn local_reference(&mut self, text: &'r str, type_code: &str, element: &str) {
        let reference = element == "reference";
        let canonical = type_code == "canonical";
        if !(reference || canonical || type_code == "uri" || type_code == "url") {
            return;
        }
        let Some(&index) = self.open.last() else { return };
        let frame = &mut self.frames[index];
        if text == "#" {
            frame.refers_to_container |= reference || canonical;
        } else {
            frame.local_refs.push(text);
        }
    }

    /// Descends into a child element.
    pub(crate) fn push(&mut self, info: Option<&ElementInfo>) {
        let expr = info.map_or(NO_STEP, |i| i.step);
        self.steps.push(Step { expr, index: NO_INDEX });
    }

    /// Selects entry `index` of the repeating element just pushed.
    pub(crate) fn set_index(&mut self, index: usize) {
        if let Some(step) = self.steps.last_mut() {
            step.index = u32::try_from(index).unwrap_or(NO_INDEX);
        }
    }

    pub(crate) fn pop(&mut self) {
        self.steps.pop();
    }

    /// Records the current position as a site, if there is anything to check there.
    pub(crate) fn site(&mut self, own: Option<&'v ElementInfo>, of_type: Option<&'v ElementInfo>) {
        if own.is_none() && of_type.is_none() {
            return;
        }
        let Some(&frame) = self.open.last() else { return };
        let base = self.frames[frame].step_base;
        let start = self.store.len();
        self.store.extend_from_slice(&self.steps[base.min(self.steps.len())..]);
        self.sites.push(Site { frame, steps: (start, self.store.len()), own, of_type });
    }

    /// Evaluates every recorded site.
    pub(crate) fn evaluate(mut self, issues: &mut Vec<Issue>) {
        // Group by resource, keeping walk order inside each (shared navigation prefixes).
        self.sites.sort_by_key(|s| s.frame);
        let mut i = 0;
        while i < self.sites.len() {
            let frame = self.sites[i].frame;
            let end = self.sites[i..]
                .iter()
                .position(|s| s.frame != frame)
                .map_or(self.sites.len(), |n| i + n);
            self.evaluate_frame(frame, &self.sites[i..end], issues);
            i = end;
        }
        if let Some(dom3) = &self.invariants.dom3 {
            for frame in &self.frames {
                let unreferenced = frame.contained_ids.iter().any(|&(id, to_container)| {
                    !to_container
                        && !frame.local_refs.iter().any(|r| r.strip_prefix('#') == Some(id))
                });
                if unreferenced {
                    issues.push(dom3.issue().at(frame.path.as_str()));
                }
            }
        }
    }

    fn evaluate_frame(&self, frame: usize, sites: &[Site<'v>], issues: &mut Vec<Issue>) {
        let f = &self.frames[frame];
        let resource = f.resource;
        let root = match f.parent {
            Some(parent) if f.contained => self.frames[parent].resource,
            _ => resource,
        };
        let root_item = Item::resource(resource);
        // The steps taken for the previous site. A site sharing a prefix starts from there,
        // and a sibling entry of a repeating element reuses the children already listed (so
        // `item[0]`..`item[n]` cost one evaluation of `item`, not n).
        let mut levels: Vec<Level<'r>> = Vec::new();
        for site in sites {
            let steps = &self.store[site.steps.0..site.steps.1];
            let shared = levels.iter().zip(steps).take_while(|(l, s)| l.step == **s).count();
            levels.truncate(shared + 1);
            if let Some(level) = levels.get_mut(shared) {
                match steps.get(shared) {
                    Some(step) if step.expr == level.step.expr => {
                        level.step = *step;
                        level.chosen = select(&level.children, step.index);
                    }
                    _ => levels.truncate(shared),
                }
            }
            while let Some(&step) = steps.get(levels.len()) {
                let parent = levels.last().map_or(Some(&root_item), Level::node);
                let children =
                    parent.map(|p| self.children(resource, root, p, step)).unwrap_or_default();
                let chosen = select(&children, step.index);
                levels.push(Level { step, children, chosen });
            }
            let Some(node) = levels.last().map_or(Some(&root_item), Level::node) else {
                issues.push(self.unreachable(site, &f.path));
                continue;
            };
            self.evaluate_site(site, node, resource, root, &f.path, issues);
        }
    }

    /// The children of `parent` with the name of `step` (every entry of a repeating one).
    fn children(
        &self,
        resource: &'r Value,
        root: &'r Value,
        parent: &Item<'r>,
        step: Step,
    ) -> Vec<Item<'r>> {
        let Some(expr) = self.invariants.steps.get(step.expr as usize) else { return Vec::new() };
        let ctx = Context::new(resource).with_root_resource(root).with_focus(vec![parent.clone()]);
        evaluate(expr, &ctx).unwrap_or_default()
    }

    fn evaluate_site(
        &self,
        site: &Site<'v>,
        node: &Item<'r>,
        resource: &'r Value,
        root: &'r Value,
        frame_path: &str,
        issues: &mut Vec<Issue>,
    ) {
        let ctx = Context::new(resource)
            .with_root_resource(root)
            .with_focus(vec![node.clone()])
            .with_terminology(&BuiltinTerminology)
            .with_conformance(&BuiltinConformance);
        let own: &[u32] = site.own.map_or(&[], |i| &i.active);
        // The usual case, everything holds, costs one evaluation per list.
        let holds = |info: Option<&ElementInfo>| {
            info.is_none_or(|i| {
                self.invariants.combined.get(i.combined as usize).is_some_and(|all| {
                    evaluate(all, &ctx).is_ok_and(|r| matches!(r.as_slice(), [Item::Boolean(true)]))
                })
            })
        };
        let own_hold = holds(site.own);
        let type_hold = holds(site.of_type);
        if own_hold && type_hold {
            return;
        }
        let of_type: &[u32] = if type_hold { &[] } else { site.of_type.map_or(&[], |i| &i.active) };
        let own_ids: &[u32] = if own_hold { &[] } else { own };
        let ids = own_ids.iter().chain(of_type.iter().filter(|id| !own.contains(id)));
        // The narrative checks, run once for txt-1 and txt-2 together.
        let mut narrative = None;
        for &id in ids {
            let Some(Some(c)) = self.invariants.compiled.get(id as usize) else { continue };
            if let Some(native) = c.native {
                let Some(text) = node.as_str() else { continue };
                let found = *narrative.get_or_insert_with(|| kiln_fhirpath::check_narrative(text));
                let holds = match native {
                    Native::NarrativeMarkup => found.structure_ok(),
                    Native::NarrativeContent => found.content_ok(),
                    Native::LocalReferences => true,
                };
                if !holds {
                    issues.push(c.issue().at(issue_path(frame_path, node)));
                }
                continue;
            }
            let issue = match evaluate(&c.expression, &ctx) {
                Ok(items) if is_false(&items) => c.issue(),
                Ok(_) => continue,
                Err(e) => Issue::warning(
                    IssueCode::Invariant,
                    format!("{}: could not be evaluated: {}", c.key, e.message),
                ),
            };
            issues.push(issue.at(issue_path(frame_path, node)));
        }
    }

    /// A site whose node could not be reached again (a bug, reported rather than hidden).
    fn unreachable(&self, site: &Site<'v>, frame_path: &str) -> Issue {
        let keys: Vec<&str> = [site.own, site.of_type]
            .into_iter()
            .flatten()
            .flat_map(|i| i.active.iter())
            .filter_map(|&id| self.invariants.compiled.get(id as usize)?.as_ref())
            .map(|c| c.key)
            .collect();
        let message =
            format!("{}: not evaluated: the element could not be located", keys.join(", "));
        Issue::warning(IssueCode::Invariant, message).at(frame_path)
    }
}

/// One navigation step taken: the children the step's name gives, and the one selected.
struct Level<'r> {
    step: Step,
    children: Vec<Item<'r>>,
    chosen: Option<usize>,
}

impl<'r> Level<'r> {
    fn node(&self) -> Option<&Item<'r>> {
        self.chosen.and_then(|i| self.children.get(i))
    }
}

/// Which of `children` a step selects: the only one, or the entry at `index` (FHIRPath
/// skips null entries of primitive arrays, so the node's own path index decides).
fn select(children: &[Item<'_>], index: u32) -> Option<usize> {
    if index == NO_INDEX {
        return (children.len() == 1).then_some(0);
    }
    let i = index as usize;
    if children.get(i).is_some_and(|it| path_index(it) == Some(i)) {
        Some(i)
    } else {
        children.iter().position(|it| path_index(it) == Some(i))
    }
}

/// Whether a result is exactly `false`.
fn is_false(items: &[Item<'_>]) -> bool {
    matches!(items, [item] if matches!(item.to_system(), Some(Item::Boolean(false))))
}

/// The array index a node's path ends with (`Patient.name[2]` → 2).
fn path_index(item: &Item<'_>) -> Option<usize> {
    let Item::Node(node) = item else { return None };
    let (_, digits) = node.path().strip_suffix(']')?.rsplit_once('[')?;
    digits.parse().ok()
}

/// The issue location: the resource's location plus the node's path below its resource
/// (node paths start with the resource type: `Patient.contact[0]`).
fn issue_path(frame_path: &str, node: &Item<'_>) -> String {
    let Item::Node(node) = node else { return frame_path.to_string() };
    let path = node.path();
    let below = path.find('.').map_or("", |dot| &path[dot..]);
    format!("{frame_path}{below}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Validator;
    use serde_json::json;

    #[test]
    fn evaluation_errors_are_counted_as_warnings() {
        let mut validator = Validator::new();
        let defs = kiln_definitions::definitions();
        let id = defs.constraints().iter().position(|c| c.key == "pat-1").expect("pat-1 exists");
        let invariants = validator.invariants.as_mut().expect("invariants are on by default");
        let pat1 = invariants.compiled[id].as_mut().expect("pat-1 is evaluated");
        // startsWith() on a collection of two strings is an evaluation error.
        pat1.expression = compile("telecom.value.startsWith('1')").expect("compiles");
        let patient = json!({"resourceType": "Patient", "contact": [
            {"name": {"family": "A"}, "telecom": [{"system": "phone", "value": "1"}]},
            {"telecom": [{"system": "phone", "value": "1"}, {"system": "phone", "value": "2"}]}
        ]});
        let issues = validator.validate(&patient);
        let errors: Vec<&Issue> =
            issues.iter().filter(|i| i.diagnostics.contains("could not be evaluated")).collect();
        assert_eq!(errors.len(), 1, "{issues:#?}");
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(errors[0].severity, kiln_model::Severity::Warning);
        assert_eq!(errors[0].code, IssueCode::Invariant);
        assert_eq!(errors[0].expression.as_deref(), Some("Patient.contact[1]"));
        assert!(errors[0].diagnostics.starts_with("pat-1: could not be evaluated: "));
        assert!(!kiln_model::has_failure(&issues));
    }

    #[test]
    fn every_base_invariant_compiles() {
        let defs = kiln_definitions::definitions();
        let failures: Vec<String> = defs
            .constraints()
            .iter()
            .filter(|c| skip_reason(&c.key).is_none())
            .filter_map(|c| {
                let text = corrected(&c.key, &c.expression);
                compile(&text).err().map(|e| format!("{}: {e}", c.key))
            })
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
        // The corrections apply to the R4 text (a stale correction would silently do nothing).
        for (key, from, _, _) in CORRECTED_INVARIANTS {
            assert!(
                defs.constraints().iter().any(|c| c.key == *key && c.expression.contains(from)),
                "{key}"
            );
        }
    }

    /// Resources (with their issue path) whose dom-3 both implementations judge.
    fn dom3_cases() -> Vec<(Value, String)> {
        let org = |id: &str, part_of: &str| json!({"resourceType": "Organization", "id": id, "name": "x", "partOf": {"reference": part_of}});
        let mut cases = vec![
            json!({"resourceType": "Patient", "contained": [org("a", "x")]}),
            json!({"resourceType": "Patient", "contained": [org("a", "#")]}),
            json!({"resourceType": "Patient", "contained": [org("a", "#b"), org("b", "x")]}),
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "#a"},
                "contained": [org("a", "#b"), org("b", "x")]}),
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "name": "no id"}]}),
            json!({"resourceType": "Patient", "meta": {"profile": ["#a"]}, "contained": [org("a", "x")]}),
            json!({"resourceType": "Patient", "extension": [{"url": "http://x.org", "valueUri": "#a"}],
                "contained": [org("a", "x")]}),
            json!({"resourceType": "Patient", "extension": [{"url": "http://x.org", "valueString": "#a"}],
                "contained": [org("a", "x")]}),
        ]
        .into_iter()
        .map(|r| (r, "Patient".to_string()))
        .collect::<Vec<_>>();
        let mut files: Vec<_> = std::fs::read_dir(examples_dir())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let Ok(bytes) = std::fs::read(&file) else { continue };
            let Ok(value) = serde_json::from_slice::<Value>(&bytes) else { continue };
            let Some(ty) = value["resourceType"].as_str().map(String::from) else { continue };
            for (i, entry) in value["entry"].as_array().into_iter().flatten().enumerate() {
                if entry["resource"].get("contained").is_some() {
                    cases.push((entry["resource"].clone(), format!("{ty}.entry[{i}].resource")));
                }
            }
            if value.get("contained").is_some() {
                cases.push((value, ty));
            }
        }
        cases
    }

    #[test]
    fn native_dom3_agrees_with_its_expression() {
        let defs = kiln_definitions::definitions();
        let dom3 = defs.constraints().iter().find(|c| c.key == "dom-3").expect("dom-3");
        let expression = compile(&corrected("dom-3", &dom3.expression)).expect("compiles");
        let validator = Validator::new();
        let cases = dom3_cases();
        let mut violations = 0;
        for (resource, path) in &cases {
            let by_expression = evaluate(&expression, &Context::new(resource)).expect("evaluates");
            let expected = is_false(&by_expression);
            // Validated alone: the issue sits at the resource's root.
            let issues = validator.validate(resource);
            let root = resource["resourceType"].as_str().unwrap_or_default();
            let native = issues.iter().any(|i| {
                i.diagnostics.starts_with("dom-3: ") && i.expression.as_deref() == Some(root)
            });
            assert_eq!(native, expected, "{path}: {resource}");
            violations += usize::from(expected);
        }
        assert!(violations >= 3, "{violations}");
        println!("dom-3: {} resources compared, {violations} violations", cases.len());
    }

    /// The official R4 examples' folder (`KILN_SHARED_DATA`, else `shared/data` beside the
    /// repository).
    fn examples_dir() -> std::path::PathBuf {
        std::env::var_os("KILN_SHARED_DATA")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
            })
            .join("r4-examples")
    }

    /// The official examples, parsed (none when the shared data is absent).
    fn r4_examples() -> Vec<Value> {
        let mut files: Vec<_> = std::fs::read_dir(examples_dir())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().filter_map(|f| serde_json::from_slice(&std::fs::read(f).ok()?).ok()).collect()
    }

    #[test]
    fn native_txt_1_and_txt_2_together_are_html_checks() {
        let narratives = compile("descendants().ofType(Narrative).div").expect("compiles");
        let validator = Validator::new();
        let mut examples: Vec<Value> = r4_examples();
        let div = |body: &str| format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{body}</div>");
        for body in ["", "<script>x()</script>", "<p>x", "ok"] {
            examples.push(json!({"resourceType": "Patient", "text": {"status": "generated",
                "div": div(body)}}));
        }
        let mut failing = 0;
        for resource in &examples {
            let root = resource["resourceType"].as_str().unwrap_or_default();
            let divs = evaluate(&narratives, &Context::new(resource)).expect("evaluates");
            let mut expected: Vec<String> = divs
                .iter()
                .filter(|d| !d.as_str().is_some_and(kiln_fhirpath::html_checks))
                .map(|d| issue_path(root, d))
                .collect();
            let mut reported: Vec<String> = validator
                .validate(resource)
                .into_iter()
                .filter(|i| {
                    i.diagnostics.starts_with("txt-1: ") || i.diagnostics.starts_with("txt-2: ")
                })
                .filter_map(|i| i.expression)
                .collect();
            expected.sort();
            reported.sort();
            reported.dedup();
            assert_eq!(reported, expected, "{root} {}", resource["id"]);
            failing += expected.len();
        }
        // The four whitespace-only official narratives (when the data is there) and three here.
        assert!(failing >= 3, "{failing}");
        println!("txt: {} resources, {failing} narratives failing htmlChecks()", examples.len());
    }

    #[test]
    fn path_index_reads_the_last_index() {
        let patient = json!({"resourceType": "Patient", "name": [{"given": ["a", "b"]}]});
        let ctx = Context::new(&patient);
        let given = evaluate(&compile("name.given").expect("compiles"), &ctx).expect("evaluates");
        assert_eq!(path_index(&given[1]), Some(1));
        assert_eq!(path_index(&Item::resource(&patient)), None);
        assert_eq!(
            issue_path("Bundle.entry[0].resource", &given[1]),
            "Bundle.entry[0].resource.name[0].given[1]"
        );
    }
}
