//! Profile validation: a resource checked against a constraining StructureDefinition
//! (US Core 5.0.1 built in, others added at run time).
//!
//! A profile is a tree of snapshot elements (`kiln_definitions::ProfileDef`). The resource's
//! JSON is walked along it, from the root element down:
//! - per element: cardinality (`min`/`max`, tighter than the base's), the allowed types of a
//!   choice, `Reference` targets (`targetProfile`, by resource type), `fixed[x]` (exact) and
//!   `pattern[x]` (the value contains the pattern: objects key by key, arrays item by item),
//!   `maxLength`, and bindings (`required`: error, `extensible`: warning) when the value set
//!   is known and enumerable (large external systems, LOINC or SNOMED, are never enumerable
//!   here, so they are not checked);
//! - a sliced element: each value is assigned to the first slice whose discriminators it
//!   matches (`value`, `pattern`, `type`, `profile`, `exists`; a path may use
//!   `extension(url)`, `ofType(type)` and `resolve()`, which finds contained resources and
//!   Bundle entries), then each slice's cardinality is checked, the values are checked
//!   against their slice's elements, and the slicing rules (`closed`: no value outside the
//!   slices; `openAtEnd`: those come last; `ordered`);
//! - an element whose type names a profile (an extension slice typed `Extension` with the
//!   extension's URL, a datatype profile) is checked against that profile when it is known;
//! - the profile's own FHIRPath invariants (those not already in the base definitions,
//!   which the structural walk evaluates), with the same rules as [`crate::invariant`]:
//!   exactly `false` is a violation, an evaluation error only a warning. One declared only
//!   inside a slice applies to the values matched to that slice.
//!
//! Every issue names the profile and, inside a slice, the slice (`diagnostics`), and is
//! located by a FHIRPath-like `expression` (`Patient.extension[0].extension[1].url`).
//! Nothing here panics on any input; nesting of profiles is bounded by [`MAX_DEPTH`].
//!
//! A profile given with a differential only is expanded over its base (a known profile or a
//! base resource/datatype definition) by [`Profiles::add_structure_definition`].

use kiln_definitions::{Definitions, ProfileDef, ProfileElement, ValueSetDef};
use kiln_fhirpath::{Context, Expression, Item, compile, evaluate};
use kiln_model::{Issue, IssueCode, Severity};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::{
    BuiltinTerminology, ProfileConformance, ResourceCheck, ResourceContext, ValidationTerminology,
};

/// The deepest nesting of profiles (a type profile inside a slice inside ...).
pub const MAX_DEPTH: usize = 24;

/// The type given to a primitive's `_name` object when the value itself is absent.
const EXTENSIONS_ONLY: &str = "(extensions only)";

const CORE_SD: &str = "http://hl7.org/fhir/StructureDefinition/";

/// A profile ready for validation: its elements with the tree precomputed and its
/// invariants compiled.
#[derive(Debug)]
pub struct CompiledProfile {
    def: ProfileDef,
    /// Per element: the child elements (not slices), in order.
    children: Vec<Vec<usize>>,
    /// Per element: its slices, in order.
    slices: Vec<Vec<usize>>,
    by_id: HashMap<String, usize>,
    constraints: Vec<CompiledConstraint>,
    /// Per element: whether a constraint applies only to the values of this element (one
    /// declared inside a slice), so the walk must note which values it checked against it.
    scoped: Vec<bool>,
}

/// A profile constraint's identity: the unsliced path it sits on, its key and expression.
type ConstraintKey = (String, String, String);

struct CompiledConstraint {
    key: String,
    severity: Severity,
    /// Declared only inside slices: the elements (`Observation.component:systolic`, or an
    /// element below one) whose values it applies to. `None`: every value of the unsliced
    /// path.
    only_in: Option<Vec<usize>>,
    /// The FHIRPath reaching the element from the resource (`None`: the resource itself).
    navigation: Option<Expression>,
    expression: Result<Expression, String>,
    diagnostics: String,
}

impl std::fmt::Debug for CompiledConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledConstraint").field("key", &self.key).finish()
    }
}

impl CompiledProfile {
    /// Compiles a profile whose elements are a snapshot. A profile without elements gets a
    /// bare root element (it then constrains nothing but the resource type).
    pub fn new(mut def: ProfileDef) -> CompiledProfile {
        if def.elements.is_empty() {
            def.elements.push(ProfileElement {
                id: def.type_name.clone(),
                path: def.type_name.clone(),
                ..ProfileElement::default()
            });
        }
        let n = def.elements.len();
        let mut by_id = HashMap::with_capacity(n);
        for (i, el) in def.elements.iter().enumerate() {
            by_id.entry(el.id.clone()).or_insert(i);
        }
        let mut children = vec![Vec::new(); n];
        let mut slices = vec![Vec::new(); n];
        for (i, el) in def.elements.iter().enumerate().skip(1) {
            match parent_of(&el.id) {
                Some((parent, true)) => {
                    if let Some(&p) = by_id.get(parent) {
                        slices[p].push(i);
                    }
                }
                Some((parent, false)) => {
                    if let Some(&p) = by_id.get(parent) {
                        children[p].push(i);
                    }
                }
                None => {}
            }
        }
        // A constraint (by unsliced path, key and expression) applies to every value of its
        // path when declared on an element outside slices, else only to the values matched
        // to the elements (inside slices) declaring it.
        let mut declared: Vec<(ConstraintKey, Option<Vec<usize>>)> = Vec::new();
        for (i, el) in def.elements.iter().enumerate() {
            for c in &el.constraints {
                let key = (unsliced_path(&el.id), c.key.clone(), c.expression.clone());
                let in_slice = el.id.contains(':');
                match declared.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, scope)) => match scope {
                        Some(elements) if in_slice => elements.push(i),
                        _ if in_slice => {}
                        _ => *scope = None,
                    },
                    None => declared.push((key, in_slice.then(|| vec![i]))),
                }
            }
        }
        let mut scoped = vec![false; n];
        for (_, scope) in &declared {
            for &i in scope.iter().flatten() {
                scoped[i] = true;
            }
        }
        let mut constraints: Vec<CompiledConstraint> = Vec::new();
        let mut seen: Vec<ConstraintKey> = Vec::new();
        for el in &def.elements {
            for c in &el.constraints {
                let unsliced = unsliced_path(&el.id);
                let key = (unsliced.clone(), c.key.clone(), c.expression.clone());
                if seen.contains(&key) {
                    continue;
                }
                let only_in =
                    declared.iter().find(|(k, _)| *k == key).and_then(|(_, scope)| scope.clone());
                seen.push(key);
                let navigation = match unsliced.split_once('.') {
                    None => None,
                    Some((_, rest)) => {
                        let text = rest
                            .split('.')
                            .map(|s| format!("`{}`", s.trim_end_matches("[x]")))
                            .collect::<Vec<_>>()
                            .join(".");
                        match compile(&text) {
                            Ok(expr) => Some(expr),
                            Err(_) => continue,
                        }
                    }
                };
                constraints.push(CompiledConstraint {
                    key: c.key.clone(),
                    severity: if c.severity == "warning" {
                        Severity::Warning
                    } else {
                        Severity::Error
                    },
                    only_in,
                    navigation,
                    expression: compile(&c.expression).map_err(|e| e.to_string()),
                    diagnostics: format!("{}: {} (profile {})", c.key, c.human, def.url),
                });
            }
        }
        CompiledProfile { def, children, slices, by_id, constraints, scoped }
    }

    pub fn url(&self) -> &str {
        &self.def.url
    }

    /// The constrained type (`Patient`, `Extension`).
    pub fn type_name(&self) -> &str {
        &self.def.type_name
    }

    pub fn definition(&self) -> &ProfileDef {
        &self.def
    }

    fn el(&self, i: usize) -> &ProfileElement {
        &self.def.elements[i]
    }

    /// The child `name` of element `e` (`name[x]` for a choice).
    fn child(&self, e: usize, name: &str) -> Option<usize> {
        let id = format!("{}.{name}", self.el(e).id);
        self.by_id.get(&id).or_else(|| self.by_id.get(&format!("{id}[x]"))).copied()
    }

    /// The slice of element `e`'s `extension` that stands for extension `url`: its type
    /// names the extension's definition, or its `url` is fixed to it.
    fn extension_slice(&self, e: usize, url: &str) -> Option<usize> {
        let extension = self.child(e, "extension")?;
        self.slices[extension].iter().copied().find(|&s| {
            let by_type = self.el(s).types.iter().any(|t| {
                t.code == "Extension" && t.profile.iter().any(|p| p.split('|').next() == Some(url))
            });
            let fixed = self.child(s, "url").and_then(|u| self.el(u).fixed.as_ref());
            by_type || fixed.and_then(Value::as_str) == Some(url)
        })
    }

    /// For `ofType(ty)` on choice element `e` (`value[x]`): its element for that type
    /// (`value[x]:valueQuantity` or `valueQuantity`), else `e` itself.
    fn typed_choice(&self, e: usize, ty: &str) -> usize {
        let id = &self.el(e).id;
        let Some(base) = id.strip_suffix("[x]") else { return e };
        let name = base.rsplit('.').next().unwrap_or(base);
        let mut chars = ty.chars();
        let suffix: String =
            chars.next().into_iter().flat_map(char::to_uppercase).chain(chars).collect();
        [format!("{id}:{name}{suffix}"), format!("{base}{suffix}")]
            .iter()
            .find_map(|candidate| self.by_id.get(candidate).copied())
            .unwrap_or(e)
    }
}

/// The parent of an element id and whether the element is a slice of it:
/// `A.b:s` → (`A.b`, true), `A.b:s.c` → (`A.b:s`, false).
fn parent_of(id: &str) -> Option<(&str, bool)> {
    let last_dot = id.rfind('.');
    let last_segment = &id[last_dot.map_or(0, |d| d + 1)..];
    if let Some(colon) = last_segment.rfind(':') {
        let start = last_dot.map_or(0, |d| d + 1);
        // A re-slice `a:s/t` is treated as a slice of `a:s`.
        let segment = &last_segment[..colon];
        let cut = match last_segment[colon + 1..].rfind('/') {
            Some(_) => start + colon + 1 + last_segment[colon + 1..].rfind('/').unwrap_or(0),
            None => start + segment.len(),
        };
        return Some((&id[..cut], true));
    }
    last_dot.map(|d| (&id[..d], false))
}

/// The value set URLs a FHIRPath expression passes to `memberOf` as string literals
/// (`code.memberOf('http://example.org/vs')`); other arguments are not followed.
fn member_of_literals(expression: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expression;
    while let Some(at) = rest.find("memberOf(") {
        rest = &rest[at + "memberOf(".len()..];
        let arg = rest.trim_start();
        let Some(quoted) = arg.strip_prefix('\'') else { continue };
        if let Some(end) = quoted.find('\'') {
            found.push(quoted[..end].to_string());
        }
    }
    found
}

/// `Observation.component:systolic.code` → `Observation.component.code`.
fn unsliced_path(id: &str) -> String {
    id.split('.').map(|s| s.split(':').next().unwrap_or(s)).collect::<Vec<_>>().join(".")
}

/// A set of profiles: the built-in US Core 5.0.1 ones, plus any added at run time, and the
/// terminology their bindings and constraints are checked with (the built-in value sets and
/// code systems unless [`Profiles::set_terminology`] says otherwise).
#[derive(Debug)]
pub struct Profiles {
    own: HashMap<String, Arc<CompiledProfile>>,
    /// Looked up after `own` (the built-in set), if any.
    fallback: Option<&'static Profiles>,
    terminology: Arc<dyn ValidationTerminology>,
}

impl Default for Profiles {
    fn default() -> Profiles {
        Profiles { own: HashMap::new(), fallback: None, terminology: Arc::new(BuiltinTerminology) }
    }
}

impl Profiles {
    /// The built-in profiles (US Core 5.0.1), compiled once.
    pub fn builtin() -> &'static Profiles {
        static BUILTIN: OnceLock<Profiles> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            let own = kiln_definitions::us_core()
                .profiles()
                .map(|p| (p.url.clone(), Arc::new(CompiledProfile::new(p.clone()))))
                .collect();
            Profiles { own, ..Profiles::default() }
        })
    }

    /// An empty set that also knows the built-in profiles.
    pub fn with_builtin() -> Profiles {
        Profiles { fallback: Some(Profiles::builtin()), ..Profiles::default() }
    }

    /// Checks bindings and answers `memberOf`/`subsumes` in profile constraints with
    /// `terminology` (for example a [`crate::SnapshotTerminology`] holding a project's value
    /// sets) instead of the built-in value sets alone.
    pub fn set_terminology(&mut self, terminology: Arc<dyn ValidationTerminology>) {
        self.terminology = terminology;
    }

    /// The terminology bindings and constraints are checked with.
    pub fn terminology(&self) -> &dyn ValidationTerminology {
        self.terminology.as_ref()
    }

    /// The value sets the profiles added to this set (not the built-in ones) use and the
    /// built-in terminology cannot enumerate: those of `required` and `extensible` bindings
    /// and those named by `memberOf('...')` in their constraints (without versions, sorted,
    /// each once). What a caller should expand before validating against these profiles.
    pub fn value_set_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        for profile in self.own.values() {
            for el in &profile.def.elements {
                if let Some(b) = &el.binding
                    && matches!(b.strength.as_str(), "required" | "extensible")
                {
                    urls.push(b.value_set.clone());
                }
                for c in &el.constraints {
                    urls.extend(member_of_literals(&c.expression));
                }
            }
        }
        let mut urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.split('|').next().unwrap_or(&u).to_string())
            .filter(|u| !u.is_empty() && BuiltinTerminology.value_set(u).is_none())
            .collect();
        urls.sort_unstable();
        urls.dedup();
        urls
    }

    /// Whether a constraint of the added profiles asks `subsumes()` or `subsumedBy()`: then
    /// the caller should give the project's code system hierarchies
    /// ([`crate::SnapshotTerminology::insert_code_system`]).
    pub fn uses_subsumption(&self) -> bool {
        self.own
            .values()
            .flat_map(|p| &p.def.elements)
            .flat_map(|el| &el.constraints)
            .any(|c| c.expression.contains("subsumes(") || c.expression.contains("subsumedBy("))
    }

    /// The compiled profiles among `urls` (unknown ones left out).
    fn known<'u>(&self, urls: impl IntoIterator<Item = &'u String>) -> Vec<&Arc<CompiledProfile>> {
        urls.into_iter().filter_map(|u| self.get(u)).collect()
    }

    /// A profile by canonical URL (a `|version` suffix is ignored).
    pub fn get(&self, url: &str) -> Option<&Arc<CompiledProfile>> {
        let url = url.split('|').next().unwrap_or(url);
        self.own.get(url).or_else(|| self.fallback.and_then(|f| f.get(url)))
    }

    /// Every known profile URL, sorted.
    pub fn urls(&self) -> Vec<&str> {
        let mut urls: Vec<&str> = self.own.keys().map(String::as_str).collect();
        if let Some(f) = self.fallback {
            urls.extend(f.urls());
        }
        urls.sort_unstable();
        urls.dedup();
        urls
    }

    /// Adds a profile given as a StructureDefinition resource (JSON). Without a snapshot,
    /// its differential is expanded over its base: a known profile, or a base resource or
    /// datatype. Returns the profile's URL.
    pub fn add_structure_definition(&mut self, sd: &Value) -> Result<String, String> {
        let defs = kiln_definitions::definitions();
        let base: std::collections::HashSet<(&str, &str)> =
            defs.constraints().iter().map(|c| (c.key.as_str(), c.expression.as_str())).collect();
        let keep = |key: &str, expression: &str| !base.contains(&(key, expression));
        let mut def = ProfileDef::from_structure_definition(sd, &keep)?;
        if def.elements.is_empty() {
            return Err("the StructureDefinition has no elements".to_string());
        }
        if !def.snapshot {
            def = self.expand_differential(def)?;
        }
        let url = def.url.clone();
        self.own.insert(url.clone(), Arc::new(CompiledProfile::new(def)));
        Ok(url)
    }

    /// A snapshot from a differential: the base's elements, each differential element merged
    /// into the element with its id or inserted after its parent's subtree.
    fn expand_differential(&self, diff: ProfileDef) -> Result<ProfileDef, String> {
        let base_url = diff
            .base_definition
            .clone()
            .ok_or_else(|| "a differential needs a baseDefinition".to_string())?;
        let mut elements: Vec<ProfileElement> = if let Some(base) = self.get(&base_url) {
            base.def.elements.clone()
        } else if let Some(name) = base_url.strip_prefix(CORE_SD) {
            let defs = kiln_definitions::definitions();
            let td =
                defs.type_def(name).ok_or_else(|| format!("the base {base_url} is not known"))?;
            td.elements().iter().map(element_from_base).collect()
        } else {
            return Err(format!("the base {base_url} is not known"));
        };
        for d in diff.elements {
            if let Some(existing) = elements.iter_mut().find(|e| e.id == d.id) {
                merge(existing, d);
                continue;
            }
            let Some((parent, is_slice)) = parent_of(&d.id) else {
                return Err(format!("element {} has no parent", d.id));
            };
            let parent = parent.to_string();
            let Some(parent_pos) = elements.iter().position(|e| e.id == parent) else {
                return Err(format!("element {}: its parent {parent} is not in the base", d.id));
            };
            // Start from what the base says about the element.
            let mut start = if is_slice {
                elements[parent_pos].clone()
            } else {
                let unsliced = unsliced_path(&d.id);
                match elements.iter().find(|e| e.id == unsliced) {
                    Some(e) => e.clone(),
                    None => datatype_element(&elements[parent_pos], &d.path).unwrap_or_default(),
                }
            };
            start.id = d.id.clone();
            start.path = d.path.clone();
            start.slice_name = d.slice_name.clone();
            if is_slice {
                start.slicing = None;
            }
            merge(&mut start, d);
            let prefix_dot = format!("{parent}.");
            let prefix_colon = format!("{parent}:");
            let mut at = parent_pos + 1;
            while at < elements.len()
                && (elements[at].id.starts_with(&prefix_dot)
                    || elements[at].id.starts_with(&prefix_colon))
            {
                at += 1;
            }
            elements.insert(at, start);
        }
        Ok(ProfileDef { snapshot: true, elements, ..diff })
    }
}

/// A base definition's element as a profile element.
fn element_from_base(el: &kiln_definitions::ElementDef) -> ProfileElement {
    ProfileElement {
        id: el.path.clone(),
        path: el.path.clone(),
        min: Some(el.min),
        max: Some(el.max.map_or_else(|| "*".to_string(), |m| m.to_string())),
        types: el
            .types
            .iter()
            .map(|code| kiln_definitions::ProfileType {
                code: code.clone(),
                profile: Vec::new(),
                target_profile: if code == "Reference" || code == "canonical" {
                    el.target_types.iter().map(|t| format!("{CORE_SD}{t}")).collect()
                } else {
                    Vec::new()
                },
            })
            .collect(),
        binding: el.required_binding.as_ref().map(|vs| kiln_definitions::Binding {
            strength: "required".to_string(),
            value_set: vs.clone(),
        }),
        content_reference: el.content_reference.clone(),
        ..ProfileElement::default()
    }
}

/// The element of the parent's datatype that `path` names (`Identifier.system` for
/// `Patient.identifier.system`).
fn datatype_element(parent: &ProfileElement, path: &str) -> Option<ProfileElement> {
    let name = path.rsplit('.').next()?;
    let ty = parent.types.first()?;
    let td = kiln_definitions::definitions().type_def(&ty.code)?;
    let el = td.element(&format!("{}.{name}", td.name))?;
    Some(element_from_base(el))
}

/// Applies what a differential element sets over a base element.
fn merge(into: &mut ProfileElement, d: ProfileElement) {
    if d.min.is_some() {
        into.min = d.min;
    }
    if d.max.is_some() {
        into.max = d.max;
    }
    if !d.types.is_empty() {
        into.types = d.types;
    }
    if d.fixed.is_some() {
        into.fixed = d.fixed;
    }
    if d.pattern.is_some() {
        into.pattern = d.pattern;
    }
    if d.slicing.is_some() {
        into.slicing = d.slicing;
    }
    if d.binding.is_some() {
        into.binding = d.binding;
    }
    if d.max_length.is_some() {
        into.max_length = d.max_length;
    }
    into.must_support |= d.must_support;
    into.constraints.extend(d.constraints);
    if d.slice_name.is_some() {
        into.slice_name = d.slice_name;
    }
}

/// Runs profile validation for the `meta.profile` a resource claims, as a
/// [`ResourceCheck`] (nested resources included). Unknown profiles are reported as warnings.
pub struct ProfileCheck {
    profiles: Arc<Profiles>,
}

impl ProfileCheck {
    pub fn new(profiles: Arc<Profiles>) -> ProfileCheck {
        ProfileCheck { profiles }
    }
}

impl ResourceCheck for ProfileCheck {
    fn check(&self, context: &ResourceContext<'_>, issues: &mut Vec<Issue>) {
        issues.extend(self.profiles.validate_claimed_in(
            context.resource,
            context.path,
            context.container,
        ));
    }
}

impl Profiles {
    /// Validates a resource against the profiles its `meta.profile` claims; `path` is where
    /// the resource is (`Patient`, `Bundle.entry[0].resource`). A claimed profile that is
    /// not known is a warning.
    pub fn validate_claimed(&self, resource: &Value, path: &str) -> Vec<Issue> {
        self.validate_claimed_in(resource, path, None)
    }

    /// [`Profiles::validate_claimed`] for a resource nested in `container` (its container
    /// when contained, the Bundle of an entry), where `resolve()` discriminators look too.
    pub fn validate_claimed_in(
        &self,
        resource: &Value,
        path: &str,
        container: Option<&Value>,
    ) -> Vec<Issue> {
        let mut issues = Vec::new();
        let claimed = resource.pointer("/meta/profile").and_then(Value::as_array);
        for (i, url) in claimed.into_iter().flatten().enumerate() {
            let Some(url) = url.as_str() else { continue };
            match self.get(url) {
                Some(profile) => {
                    issues.extend(self.validate_in(resource, container, profile, path, 0))
                }
                None => issues.push(
                    Issue::warning(
                        IssueCode::NotSupported,
                        format!(
                            "Profile {url} is not known: the resource was not checked against it"
                        ),
                    )
                    .at(format!("{path}.meta.profile[{i}]")),
                ),
            }
        }
        issues
    }

    /// Validates a top-level resource against the profile `url`. An unknown profile is an
    /// error issue.
    pub fn validate(&self, resource: &Value, url: &str) -> Vec<Issue> {
        let path = resource.get("resourceType").and_then(Value::as_str).unwrap_or("Resource");
        match self.get(url) {
            Some(profile) => self.validate_with(resource, profile, path),
            None => vec![Issue::error(IssueCode::NotFound, format!("Profile {url} is not known"))],
        }
    }

    /// Validates a resource (at `path`) against a compiled profile.
    pub fn validate_with(
        &self,
        resource: &Value,
        profile: &CompiledProfile,
        path: &str,
    ) -> Vec<Issue> {
        self.validate_at_depth(resource, profile, path, 0)
    }

    /// [`Profiles::validate_with`] from inside `depth` nested `conformsTo` calls.
    pub(crate) fn validate_at_depth(
        &self,
        resource: &Value,
        profile: &CompiledProfile,
        path: &str,
        depth: usize,
    ) -> Vec<Issue> {
        self.validate_in(resource, None, profile, path, depth)
    }

    /// Validates `resource` (nested in `container`, if any) against `profile`.
    fn validate_in(
        &self,
        resource: &Value,
        container: Option<&Value>,
        profile: &CompiledProfile,
        path: &str,
        depth: usize,
    ) -> Vec<Issue> {
        let defs = kiln_definitions::definitions();
        let mut run = Run {
            profiles: self,
            defs,
            issues: Vec::new(),
            depth,
            root: resource,
            container,
            matched: Vec::new(),
        };
        let actual = resource.get("resourceType").and_then(Value::as_str);
        if actual != Some(profile.type_name()) {
            run.issues.push(
                Issue::error(
                    IssueCode::Invalid,
                    format!(
                        "The resource is a {}, but profile {} constrains {}",
                        actual.unwrap_or("(no resourceType)"),
                        profile.url(),
                        profile.type_name()
                    ),
                )
                .at(path),
            );
            return run.issues;
        }
        let root =
            Focus { value: resource, type_code: Some(profile.type_name()), path: path.into() };
        run.node(&root, profile, 0, None, 0);
        run.constraints(resource, profile, path);
        run.issues
    }
}

/// One JSON value of a child element.
struct Child<'v> {
    value: &'v Value,
    type_code: Option<&'v str>,
    key: &'v str,
    /// Its position, when the property is an array.
    index: Option<usize>,
}

/// One value being checked: the JSON, its FHIR type when known and its location.
struct Focus<'v> {
    value: &'v Value,
    type_code: Option<&'v str>,
    path: String,
}

struct Run<'p> {
    profiles: &'p Profiles,
    defs: &'static Definitions,
    issues: Vec<Issue>,
    /// Nesting of `conformsTo` calls that led to this validation (0 at the top).
    depth: usize,
    /// The resource being validated, and the one it is nested in: where `resolve()`
    /// discriminators find contained resources and Bundle entries.
    root: &'p Value,
    container: Option<&'p Value>,
    /// (profile, element, JSON value address) of each value checked against an element with
    /// slice-scoped constraints (see [`CompiledProfile::scoped`]).
    matched: Vec<(usize, usize, usize)>,
}

impl<'p> Run<'p> {
    /// A run over the same resource collecting its own issues (to test a value quietly).
    fn quiet(&self) -> Run<'p> {
        Run {
            profiles: self.profiles,
            defs: self.defs,
            issues: Vec::new(),
            depth: self.depth,
            root: self.root,
            container: self.container,
            matched: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn issue(
        &mut self,
        severity: Severity,
        code: IssueCode,
        message: String,
        profile: &CompiledProfile,
        el: &ProfileElement,
        slice: Option<&str>,
        path: &str,
    ) {
        let mut text = format!("{message} (profile {}", profile.url());
        if let Some(slice) = slice.or(el.slice_name.as_deref()) {
            text.push_str(&format!(", slice '{slice}'"));
        }
        text.push_str(&format!(", element {})", el.id));
        let issue = match severity {
            Severity::Warning => Issue::warning(code, text),
            _ => Issue::error(code, text),
        };
        self.issues.push(issue.at(path));
    }

    /// Checks one value against element `e` of `profile`. `slice`: the slice being checked,
    /// for diagnostics.
    fn node(
        &mut self,
        focus: &Focus<'_>,
        profile: &CompiledProfile,
        e: usize,
        slice: Option<&str>,
        depth: usize,
    ) {
        let el = profile.el(e);
        let err = Severity::Error;
        if focus.type_code == Some(EXTENSIONS_ONLY) {
            return;
        }
        if profile.scoped.get(e).copied().unwrap_or(false) {
            self.matched.push((address(profile), e, address(focus.value)));
        }
        if let Some(fixed) = &el.fixed
            && !same(focus.value, fixed)
        {
            let msg = format!("The value must be exactly {fixed}");
            self.issue(err, IssueCode::Value, msg, profile, el, slice, &focus.path);
        }
        if let Some(pattern) = &el.pattern
            && !contains(focus.value, pattern)
        {
            let msg = format!("The value must match the pattern {pattern}");
            self.issue(err, IssueCode::Value, msg, profile, el, slice, &focus.path);
        }
        if let (Some(max), Some(text)) = (el.max_length, focus.value.as_str())
            && text.chars().count() > max as usize
        {
            let msg = format!("The value is longer than {max} characters");
            self.issue(err, IssueCode::TooLong, msg, profile, el, slice, &focus.path);
        }
        if !el.types.is_empty()
            && let Some(code) = focus.type_code
            && e != 0
            && !el.types.iter().any(|t| t.code == code)
        {
            let allowed: Vec<&str> = el.types.iter().map(|t| t.code.as_str()).collect();
            let msg = format!("Type {code} is not allowed here (allowed: {})", allowed.join(", "));
            self.issue(err, IssueCode::Structure, msg, profile, el, slice, &focus.path);
        }
        self.binding(focus, profile, el, slice);
        self.reference_target(focus, profile, el, slice);
        let kids = &profile.children[e];
        if kids.is_empty() {
            if e != 0 {
                self.type_profiles(focus, profile, el, slice, depth);
            }
            return;
        }
        let Value::Object(obj) = focus.value else { return };
        for &c in kids {
            let child = profile.el(c);
            let name = child.path.rsplit('.').next().unwrap_or(&child.path);
            let items = self.items(obj, name, child);
            let key = items.first().map_or(name.trim_end_matches("[x]"), |i| i.key);
            let group_path = format!("{}.{key}", focus.path);
            let focuses: Vec<Focus<'_>> = items
                .iter()
                .map(|i| Focus {
                    value: i.value,
                    type_code: i.type_code,
                    path: match i.index {
                        Some(n) => format!("{}.{}[{n}]", focus.path, i.key),
                        None => format!("{}.{}", focus.path, i.key),
                    },
                })
                .collect();
            self.group(&focuses, profile, c, &group_path, slice, depth);
        }
    }

    /// The values of a child element, array entries one by one.
    fn items<'v>(
        &self,
        obj: &'v serde_json::Map<String, Value>,
        name: &str,
        child: &'v ProfileElement,
    ) -> Vec<Child<'v>> {
        let mut out = Vec::new();
        let mut push = |value: &'v Value, type_code: Option<&'v str>, key: &'v str| match value {
            Value::Array(list) => out.extend(list.iter().enumerate().map(|(n, value)| Child {
                value,
                type_code,
                key,
                index: Some(n),
            })),
            value => out.push(Child { value, type_code, key, index: None }),
        };
        if let Some(base) = name.strip_suffix("[x]") {
            for (key, value) in obj {
                let Some(rest) = key.strip_prefix(base) else { continue };
                if !rest.starts_with(|c: char| c.is_ascii_uppercase()) {
                    continue;
                }
                push(value, self.choice_type(rest), key.as_str());
            }
        } else if let Some((key, value)) = obj.get_key_value(name) {
            let ty = match child.types.as_slice() {
                [one] => Some(one.code.as_str()),
                _ => None,
            };
            push(value, ty, key.as_str());
        } else if let Some((key, value)) = obj.get_key_value(format!("_{name}").as_str()) {
            // A primitive present only through its extensions (`_questionnaire`): counted,
            // nothing else to check on its value.
            push(value, Some(EXTENSIONS_ONLY), key.as_str());
        }
        out
    }

    /// The type a choice suffix names: `Quantity` → `Quantity`, `DateTime` → `dateTime`.
    fn choice_type(&self, suffix: &str) -> Option<&'static str> {
        let mut lower = String::with_capacity(suffix.len());
        let mut chars = suffix.chars();
        if let Some(first) = chars.next() {
            lower.extend(first.to_lowercase());
            lower.push_str(chars.as_str());
        }
        let defs: &'static Definitions = self.defs;
        match defs.primitive(&lower) {
            Some(p) => Some(p.name.as_str()),
            None => defs.type_def(suffix).map(|t| t.name.as_str()),
        }
    }

    /// Checks the values of one element: cardinality, then slices or each value.
    fn group(
        &mut self,
        items: &[Focus<'_>],
        profile: &CompiledProfile,
        c: usize,
        group_path: &str,
        slice: Option<&str>,
        depth: usize,
    ) {
        let el = profile.el(c);
        let count = items.len();
        self.cardinality(count, profile, el, slice, group_path);
        let slices = &profile.slices[c];
        if slices.is_empty() {
            for focus in items {
                self.node(focus, profile, c, slice, depth);
            }
            return;
        }
        // Assign each value to the first slice it matches.
        let assigned: Vec<Option<usize>> = items
            .iter()
            .map(|focus| slices.iter().position(|&s| self.matches(focus, profile, c, s, depth)))
            .collect();
        for (k, &s) in slices.iter().enumerate() {
            let n = assigned.iter().filter(|a| **a == Some(k)).count();
            let sl = profile.el(s);
            self.cardinality(n, profile, sl, sl.slice_name.as_deref(), group_path);
        }
        let rules = el.slicing.as_ref().map_or("open", |s| s.rules.as_str());
        let ordered = el.slicing.as_ref().is_some_and(|s| s.ordered);
        let mut last_slice = 0;
        let mut seen_unmatched = false;
        for (focus, a) in items.iter().zip(&assigned) {
            let path = focus.path.as_str();
            match a {
                Some(k) => {
                    if ordered && *k < last_slice {
                        let msg = "The value is out of order: the slicing is ordered".to_string();
                        self.issue(
                            Severity::Error,
                            IssueCode::Structure,
                            msg,
                            profile,
                            el,
                            slice,
                            path,
                        );
                    }
                    if rules == "openAtEnd" && seen_unmatched {
                        let msg =
                            "Values outside the slices must come last (openAtEnd)".to_string();
                        self.issue(
                            Severity::Error,
                            IssueCode::Structure,
                            msg,
                            profile,
                            el,
                            slice,
                            path,
                        );
                    }
                    last_slice = last_slice.max(*k);
                    let s = slices[*k];
                    self.node(focus, profile, s, profile.el(s).slice_name.as_deref(), depth);
                }
                None => {
                    seen_unmatched = true;
                    if rules == "closed" {
                        let msg = "The value matches none of the slices, and the slicing is closed"
                            .to_string();
                        self.issue(
                            Severity::Error,
                            IssueCode::Structure,
                            msg,
                            profile,
                            el,
                            slice,
                            path,
                        );
                    }
                    self.node(focus, profile, c, slice, depth);
                }
            }
        }
    }

    fn cardinality(
        &mut self,
        count: usize,
        profile: &CompiledProfile,
        el: &ProfileElement,
        slice: Option<&str>,
        path: &str,
    ) {
        let min = el.min.unwrap_or(0) as usize;
        if count < min {
            let noun = if min == 1 { "value" } else { "values" };
            let what = match slice.or(el.slice_name.as_deref()) {
                Some(_) if el.slice_name.is_some() => format!("{noun} in this slice"),
                _ => noun.to_owned(),
            };
            let msg = format!("At least {min} {what} required, found {count}");
            self.issue(Severity::Error, IssueCode::Required, msg, profile, el, slice, path);
        }
        if let Some(max) = el.max_count()
            && count > max as usize
        {
            let noun = if max == 1 { "value" } else { "values" };
            let msg = format!("At most {max} {noun} allowed, found {count}");
            self.issue(Severity::Error, IssueCode::Structure, msg, profile, el, slice, path);
        }
    }

    /// Whether a value belongs to slice `s` of element `c`.
    fn matches(
        &self,
        focus: &Focus<'_>,
        profile: &CompiledProfile,
        c: usize,
        s: usize,
        depth: usize,
    ) -> bool {
        let Some(slicing) = &profile.el(c).slicing else {
            return self.conforms(focus, profile, s, depth);
        };
        if slicing.discriminator.is_empty() {
            return self.conforms(focus, profile, s, depth);
        }
        slicing
            .discriminator
            .iter()
            .all(|d| self.discriminates(focus, profile, s, &d.kind, &d.path, depth))
    }

    /// Whether a value conforms to element `s` (no error issue), checked quietly.
    fn conforms(
        &self,
        focus: &Focus<'_>,
        profile: &CompiledProfile,
        s: usize,
        depth: usize,
    ) -> bool {
        if depth >= MAX_DEPTH {
            return false;
        }
        let mut quiet = self.quiet();
        quiet.node(focus, profile, s, None, depth + 1);
        !quiet.issues.iter().any(|i| i.severity == Severity::Error)
    }

    /// Whether a value of slice `s` matches one discriminator. The path (element names and
    /// `extension(url)`, `ofType(T)`, `resolve()`) is followed through the value and, in step,
    /// through the profile's elements (an extension slice, a choice's typed element, the
    /// referenced resource's profile).
    fn discriminates(
        &self,
        focus: &Focus<'_>,
        profile: &CompiledProfile,
        s: usize,
        kind: &str,
        path: &str,
        depth: usize,
    ) -> bool {
        let Some(steps) = discriminator_steps(path) else {
            // Not a discriminator path (the spec allows names and these three functions).
            return true;
        };
        let reached = self.follow(focus, profile, s, &steps);
        if matches!(steps.last(), Some(DStep::Resolve)) && matches!(kind, "type" | "profile") {
            return self.resolved_matches(
                kind,
                reached.reference,
                &reached.hits,
                &focus.path,
                depth,
            );
        }
        let target = reached.element.map(|(p, e)| p.el(e));
        let values: Vec<&Value> = reached.hits.iter().filter_map(|h| h.value).collect();
        match kind {
            "value" | "pattern" => {
                let expected = expected_value(target).or_else(|| {
                    // An extension slice: its URL is the profile of its type.
                    (steps == [DStep::Name("url")])
                        .then(|| profile.el(s).types.iter().find(|t| t.code == "Extension"))
                        .flatten()
                        .and_then(|t| t.profile.first())
                        .map(|u| (Value::String(u.clone()), true))
                });
                self.value_matches(kind, expected, target, &values)
            }
            "exists" => exists_matches(target, values.len()),
            "type" => {
                let Some(t) = target.filter(|t| !t.types.is_empty()) else { return true };
                match reached.hits.iter().find_map(|h| h.ty.as_deref()) {
                    Some(actual) => t.types.iter().any(|ty| ty.code == actual),
                    None => true,
                }
            }
            "profile" => {
                let Some(t) = target else { return true };
                let known = self.profiles.known(t.types.iter().flat_map(|ty| &ty.profile));
                if known.is_empty() {
                    // Unknown profiles: decide by type.
                    let actual = reached.hits.iter().find_map(|h| h.ty.as_deref());
                    return actual.is_none_or(|a| t.types.iter().any(|ty| ty.code == a));
                }
                if depth >= MAX_DEPTH {
                    return false;
                }
                reached.hits.iter().any(|h| {
                    let Some(value) = h.value else { return false };
                    let f = Focus { value, type_code: h.ty.as_deref(), path: focus.path.clone() };
                    known.iter().any(|p| self.conforms_to_root(&f, p, depth))
                })
            }
            _ => true,
        }
    }

    /// `value`/`pattern`: whether some value carries the expected value (exactly for a fixed
    /// value under `value`, as a pattern otherwise); without one, whether some value has a
    /// code of the target's binding (when its value set is enumerable).
    fn value_matches(
        &self,
        kind: &str,
        expected: Option<(Value, bool)>,
        target: Option<&ProfileElement>,
        values: &[&Value],
    ) -> bool {
        match expected {
            Some((value, exact)) => values.iter().any(|v| {
                if exact && kind == "value" { same(v, &value) } else { contains(v, &value) }
            }),
            None => match target.and_then(|t| t.binding.as_ref()) {
                Some(b) => match self.value_set(&b.value_set) {
                    Some(vs) => values.iter().any(|v| {
                        codes_of(v, None).iter().any(|(sys, code)| vs.contains(*sys, code))
                    }),
                    None => true,
                },
                None => true,
            },
        }
    }

    /// Whether a value conforms to a whole profile (its root element), checked quietly.
    fn conforms_to_root(&self, focus: &Focus<'_>, profile: &CompiledProfile, depth: usize) -> bool {
        let mut quiet = self.quiet();
        quiet.node(focus, profile, 0, None, depth + 1);
        !quiet.issues.iter().any(|i| i.severity == Severity::Error)
    }

    /// Follows discriminator `steps` from a value of slice `s`.
    fn follow<'a>(
        &'a self,
        focus: &Focus<'a>,
        profile: &'a CompiledProfile,
        s: usize,
        steps: &[DStep<'_>],
    ) -> Reached<'a> {
        let ty = focus.type_code.map(String::from).or_else(|| resource_type(focus.value));
        let mut hits = vec![Hit { value: Some(focus.value), ty }];
        let mut element: Option<(&'a CompiledProfile, usize)> = Some((profile, s));
        let mut reference = None;
        for step in steps {
            let mut next = Vec::new();
            match step {
                DStep::Name(name) => {
                    let child = element.and_then(|(p, e)| Some((p, p.child(e, name)?)));
                    let declared = child.and_then(|(p, c)| match p.el(c).types.as_slice() {
                        [one] => Some(one.code.clone()),
                        _ => None,
                    });
                    for value in hits.iter().filter_map(|h| h.value) {
                        let Value::Object(obj) = value else { continue };
                        if let Some(v) = obj.get(*name) {
                            push_values(&mut next, v, declared.as_deref());
                            continue;
                        }
                        // A choice element: `value` reaches `valueQuantity`.
                        for (key, v) in obj {
                            let Some(rest) = key.strip_prefix(*name) else { continue };
                            if rest.starts_with(|c: char| c.is_ascii_uppercase()) {
                                push_values(&mut next, v, self.choice_type(rest));
                            }
                        }
                    }
                    element = child;
                }
                DStep::Extension(url) => {
                    for value in hits.iter().filter_map(|h| h.value) {
                        let extensions = value.get("extension").and_then(Value::as_array);
                        for ext in extensions.into_iter().flatten() {
                            if ext.get("url").and_then(Value::as_str) == Some(url.as_str()) {
                                next.push(Hit { value: Some(ext), ty: Some("Extension".into()) });
                            }
                        }
                    }
                    element = element.and_then(|(p, e)| Some((p, p.extension_slice(e, url)?)));
                }
                DStep::OfType(ty) => {
                    next = hits
                        .into_iter()
                        .filter(|h| {
                            let actual = h.ty.clone().or_else(|| h.value.and_then(resource_type));
                            // A value whose type is not known is kept (the lenient reading).
                            actual.is_none_or(|a| a == *ty)
                        })
                        .collect();
                    element = element.map(|(p, e)| (p, p.typed_choice(e, ty)));
                }
                DStep::Resolve => {
                    reference = element.map(|(p, e)| p.el(e));
                    for value in hits.iter().filter_map(|h| h.value) {
                        let Some(r) = value.get("reference").and_then(Value::as_str) else {
                            continue;
                        };
                        next.push(match self.resolve_local(r) {
                            Some(resource) => {
                                Hit { value: Some(resource), ty: resource_type(resource) }
                            }
                            None => Hit { value: None, ty: reference_type(r).map(String::from) },
                        });
                    }
                    // Further steps name elements of the referenced resource's profile.
                    element = reference
                        .and_then(|r| {
                            r.types
                                .iter()
                                .flat_map(|t| &t.target_profile)
                                .find_map(|u| self.profiles.get(u))
                        })
                        .map(|p| (p.as_ref(), 0));
                }
            }
            hits = next;
        }
        Reached { hits, element, reference }
    }

    /// A `type` or `profile` discriminator ending in `resolve()`: the referenced resource
    /// (when found locally) or the type its reference names, against the targets of the
    /// Reference element (`reference`) the path went through.
    fn resolved_matches(
        &self,
        kind: &str,
        reference: Option<&ProfileElement>,
        hits: &[Hit<'_>],
        path: &str,
        depth: usize,
    ) -> bool {
        let Some(r) = reference else { return true };
        let allowed = self.target_types(r);
        let type_ok = |h: &Hit<'_>| {
            h.ty.as_deref().is_some_and(|t| {
                allowed.is_empty() || allowed.iter().any(|a| a == t || a == "Resource")
            })
        };
        // Nothing typed to judge (no reference, or a `urn:` one that is not in the Bundle).
        if hits.iter().all(|h| h.ty.is_none()) {
            return true;
        }
        let known = self.profiles.known(r.types.iter().flat_map(|t| &t.target_profile));
        if kind == "type" || known.is_empty() {
            return hits.iter().any(type_ok);
        }
        if depth >= MAX_DEPTH {
            return false;
        }
        hits.iter().any(|h| match h.value {
            Some(resource) => known.iter().any(|p| {
                resource_type(resource).as_deref() == Some(p.type_name())
                    && self.conforms_to_root(
                        &Focus {
                            value: resource,
                            type_code: Some(p.type_name()),
                            path: path.to_string(),
                        },
                        p,
                        depth,
                    )
            }),
            // Not found here: its profile cannot be checked, its type can.
            None => h.ty.as_deref().is_some_and(|t| known.iter().any(|p| p.type_name() == t)),
        })
    }

    /// The resource a reference names, when it is at hand: a contained resource (`#id`, of
    /// the resource or, from a contained one, of its container) or an entry of the Bundle
    /// being validated or holding the resource (by `fullUrl`).
    fn resolve_local(&self, reference: &str) -> Option<&'p Value> {
        let resources = [Some(self.root), self.container];
        if let Some(id) = reference.strip_prefix('#') {
            return resources.into_iter().flatten().find_map(|r| {
                let contained = r.get("contained").and_then(Value::as_array)?;
                contained
                    .iter()
                    .find(|c| !id.is_empty() && c.get("id").and_then(Value::as_str) == Some(id))
            });
        }
        let bundle = resources
            .into_iter()
            .flatten()
            .find(|r| r.get("resourceType").and_then(Value::as_str) == Some("Bundle"))?;
        let relative = !reference.contains(':');
        bundle.get("entry").and_then(Value::as_array)?.iter().find_map(|entry| {
            let full = entry.get("fullUrl").and_then(Value::as_str)?;
            let hit = full == reference
                || (relative && full.strip_suffix(reference).is_some_and(|b| b.ends_with('/')));
            hit.then(|| entry.get("resource")).flatten()
        })
    }

    /// The resource types an element's `targetProfile`s stand for.
    fn target_types(&self, el: &ProfileElement) -> Vec<String> {
        el.types
            .iter()
            .flat_map(|t| &t.target_profile)
            .filter_map(|url| match self.profiles.get(url) {
                Some(p) => Some(p.type_name().to_string()),
                None => url.strip_prefix(CORE_SD).map(String::from),
            })
            .collect()
    }

    fn reference_target(
        &mut self,
        focus: &Focus<'_>,
        profile: &CompiledProfile,
        el: &ProfileElement,
        slice: Option<&str>,
    ) {
        if focus.type_code != Some("Reference") {
            return;
        }
        let Some(ty) =
            focus.value.get("reference").and_then(Value::as_str).and_then(reference_type)
        else {
            return;
        };
        let allowed = self.target_types(el);
        if allowed.is_empty() || allowed.iter().any(|a| a == ty || a == "Resource") {
            return;
        }
        let msg =
            format!("A reference to a {ty} is not allowed here (allowed: {})", allowed.join(", "));
        let path = format!("{}.reference", focus.path);
        self.issue(Severity::Error, IssueCode::Structure, msg, profile, el, slice, &path);
    }

    fn value_set(&self, url: &str) -> Option<&'p ValueSetDef> {
        self.profiles.terminology.value_set(url)
    }

    fn binding(
        &mut self,
        focus: &Focus<'_>,
        profile: &CompiledProfile,
        el: &ProfileElement,
        slice: Option<&str>,
    ) {
        let Some(b) = &el.binding else { return };
        let severity = match b.strength.as_str() {
            "required" => Severity::Error,
            "extensible" => Severity::Warning,
            _ => return,
        };
        let Some(vs) = self.value_set(&b.value_set) else { return };
        let ty = focus.type_code.unwrap_or_default();
        let codes = codes_of(focus.value, Some(ty));
        if codes.is_empty() {
            // Text only (or not a coded type): nothing to check.
            return;
        }
        if codes.iter().any(|(system, code)| vs.contains(*system, code)) {
            return;
        }
        let shown: Vec<String> = codes
            .iter()
            .map(|(s, c)| match s {
                Some(s) => format!("{s}#{c}"),
                None => (*c).to_string(),
            })
            .collect();
        let msg = format!(
            "{} is not in the value set {} ({} binding)",
            shown.join(", "),
            b.value_set,
            b.strength
        );
        self.issue(severity, IssueCode::CodeInvalid, msg, profile, el, slice, &focus.path);
    }

    /// Checks a value against the profiles its type names (an extension's definition, a
    /// datatype profile), when one of them is known.
    fn type_profiles(
        &mut self,
        focus: &Focus<'_>,
        profile: &CompiledProfile,
        el: &ProfileElement,
        slice: Option<&str>,
        depth: usize,
    ) {
        let ty = match focus.type_code {
            Some(code) => el.types.iter().find(|t| t.code == code),
            None => el.types.first(),
        };
        let Some(ty) = ty else { return };
        let known = self.profiles.known(&ty.profile);
        if known.is_empty() {
            return;
        }
        if depth >= MAX_DEPTH {
            let msg = "Profiles nest too deeply: not checked further".to_string();
            self.issue(
                Severity::Warning,
                IssueCode::TooCostly,
                msg,
                profile,
                el,
                slice,
                &focus.path,
            );
            return;
        }
        let mut best: Option<Vec<Issue>> = None;
        for p in known {
            let mut sub = self.quiet();
            sub.node(focus, p, 0, None, depth + 1);
            if !sub.issues.iter().any(|i| i.severity == Severity::Error) {
                self.issues.extend(sub.issues);
                return;
            }
            if best.is_none() {
                best = Some(sub.issues);
            }
        }
        self.issues.extend(best.unwrap_or_default());
    }

    /// The profile's own invariants, evaluated on every element they sit on.
    fn constraints(&mut self, resource: &Value, profile: &CompiledProfile, path: &str) {
        for c in &profile.constraints {
            let expression = match &c.expression {
                Ok(e) => e,
                Err(message) => {
                    self.issues.push(
                        Issue::warning(
                            IssueCode::Invariant,
                            format!(
                                "{}: could not be compiled: {message} (profile {})",
                                c.key,
                                profile.url()
                            ),
                        )
                        .at(path),
                    );
                    continue;
                }
            };
            let mut nodes: Vec<Item<'_>> = match &c.navigation {
                None => vec![Item::resource(resource)],
                Some(nav) => evaluate(nav, &Context::new(resource)).unwrap_or_default(),
            };
            if let Some(elements) = &c.only_in {
                // Only the values the walk matched to the slice declaring the constraint.
                let this = address(profile);
                nodes.retain(|node| {
                    let Item::Node(n) = node else { return false };
                    let Some(value) = n.value() else { return false };
                    let at = address(value);
                    self.matched
                        .iter()
                        .any(|&(p, e, v)| p == this && v == at && elements.contains(&e))
                });
            }
            let conformance = ProfileConformance { profiles: self.profiles, depth: self.depth };
            for node in nodes {
                let ctx = Context::new(resource)
                    .with_focus(vec![node.clone()])
                    .with_terminology(self.profiles.terminology())
                    .with_conformance(&conformance);
                let issue = match evaluate(expression, &ctx) {
                    Ok(items) if is_false(&items) => match c.severity {
                        Severity::Warning => Issue::warning(IssueCode::Invariant, &c.diagnostics),
                        _ => Issue::error(IssueCode::Invariant, &c.diagnostics),
                    },
                    Ok(_) => continue,
                    Err(e) => Issue::warning(
                        IssueCode::Invariant,
                        format!(
                            "{}: could not be evaluated: {} (profile {})",
                            c.key,
                            e.message,
                            profile.url()
                        ),
                    ),
                };
                self.issues.push(issue.at(issue_path(path, &node)));
            }
        }
    }
}

/// The value the discriminator's target element must carry: its fixed value (`true`: exact)
/// or its pattern.
fn expected_value(target: Option<&ProfileElement>) -> Option<(Value, bool)> {
    let t = target?;
    t.fixed.clone().map(|v| (v, true)).or_else(|| t.pattern.clone().map(|v| (v, false)))
}

/// `exists`: whether `count` values agree with the target element being required (`min` >
/// 0) or forbidden (`max` 0).
fn exists_matches(target: Option<&ProfileElement>, count: usize) -> bool {
    let Some(t) = target else { return true };
    if t.max.as_deref() == Some("0") {
        count == 0
    } else if t.min.unwrap_or(0) > 0 {
        count > 0
    } else {
        true
    }
}

/// One step of a discriminator path (FHIR restricts them to element names and the three
/// functions `extension(url)`, `ofType(type)` and `resolve()`).
#[derive(Debug, PartialEq, Eq)]
enum DStep<'a> {
    Name(&'a str),
    Extension(String),
    OfType(&'a str),
    Resolve,
}

/// A value reached by a discriminator path, with its FHIR type when known. A reference that
/// could not be resolved is a hit without a value, typed by the reference.
struct Hit<'a> {
    value: Option<&'a Value>,
    ty: Option<String>,
}

/// Where a discriminator path led.
struct Reached<'a> {
    hits: Vec<Hit<'a>>,
    /// The element the path names: in the sliced profile, or past `resolve()` in the
    /// referenced resource's (known) profile.
    element: Option<(&'a CompiledProfile, usize)>,
    /// The Reference element the last `resolve()` started from.
    reference: Option<&'a ProfileElement>,
}

/// Splits a discriminator path into steps; `None` for anything else (an unknown function,
/// unbalanced quotes or parentheses).
fn discriminator_steps(path: &str) -> Option<Vec<DStep<'_>>> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0usize, None, 0);
    for (i, c) in path.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.checked_sub(1)?,
            (None, '.') if depth == 0 => {
                parts.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quote.is_some() || depth != 0 {
        return None;
    }
    parts.push(&path[start..]);
    let mut steps = Vec::new();
    for part in parts.into_iter().map(str::trim) {
        let step = match part.split_once('(') {
            None if part == "$this" => continue,
            None if part.is_empty() => return None,
            None => DStep::Name(part.trim_end_matches("[x]")),
            Some((name, rest)) => {
                let arg = rest.strip_suffix(')')?.trim();
                match name.trim() {
                    "extension" => {
                        let url = arg
                            .strip_prefix('\'')
                            .and_then(|a| a.strip_suffix('\''))
                            .or_else(|| arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')))?;
                        DStep::Extension(url.to_string())
                    }
                    "ofType" if !arg.is_empty() => {
                        DStep::OfType(arg.rsplit('.').next().unwrap_or(arg).trim_matches('`'))
                    }
                    "resolve" if arg.is_empty() => DStep::Resolve,
                    _ => return None,
                }
            }
        };
        steps.push(step);
    }
    Some(steps)
}

/// Adds a JSON value (each entry of an array) as hits of type `ty`.
fn push_values<'a>(hits: &mut Vec<Hit<'a>>, value: &'a Value, ty: Option<&str>) {
    // A resource is of its own type, not the element's declared `Resource`.
    let hit = |v: &'a Value| Hit { value: Some(v), ty: resource_type(v).or(ty.map(String::from)) };
    match value {
        Value::Array(list) => hits.extend(list.iter().map(hit)),
        v => hits.push(hit(v)),
    }
}

/// The address of a value, as an identity.
fn address<T>(value: &T) -> usize {
    value as *const T as usize
}

/// Whether a result is exactly `false`.
fn is_false(items: &[Item<'_>]) -> bool {
    matches!(items, [item] if matches!(item.to_system(), Some(Item::Boolean(false))))
}

/// The issue location: the resource's location plus the node's path below the resource.
fn issue_path(frame_path: &str, node: &Item<'_>) -> String {
    let Item::Node(node) = node else { return frame_path.to_string() };
    let path = node.path();
    let below = path.find('.').map_or("", |dot| &path[dot..]);
    format!("{frame_path}{below}")
}

/// The `resourceType` of a resource value.
fn resource_type(value: &Value) -> Option<String> {
    value.get("resourceType").and_then(Value::as_str).map(String::from)
}

/// The resource type a reference names: `Patient/1`, `http://x/fhir/Patient/1/_history/2`.
fn reference_type(reference: &str) -> Option<&str> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    let defs = kiln_definitions::definitions();
    let parts: Vec<&str> = reference.split('/').collect();
    let n = parts.len();
    let pos =
        if n >= 4 && parts[n - 2] == "_history" { n.checked_sub(4)? } else { n.checked_sub(2)? };
    let ty = parts.get(pos)?;
    defs.is_resource_type(ty).then_some(*ty)
}

/// The (system, code) pairs a coded value carries, by its type (guessed from its shape when
/// the type is not known).
fn codes_of<'v>(value: &'v Value, type_code: Option<&str>) -> Vec<(Option<&'v str>, &'v str)> {
    let coding = |c: &'v Value| -> Option<(Option<&'v str>, &'v str)> {
        Some((c.get("system").and_then(Value::as_str), c.get("code")?.as_str()?))
    };
    match (value, type_code) {
        (Value::String(s), Some("code" | "string" | "uri" | "") | None) => vec![(None, s.as_str())],
        (Value::Object(obj), _) if obj.contains_key("coding") => {
            obj["coding"].as_array().into_iter().flatten().filter_map(coding).collect()
        }
        (Value::Object(obj), _) if obj.contains_key("code") => coding(value).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Exact equality of JSON values, numbers by value (`1` = `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Whether `actual` contains `pattern`: objects key by key, arrays each pattern item matched
/// by some actual item, primitives equal.
pub fn contains(actual: &Value, pattern: &Value) -> bool {
    match (actual, pattern) {
        (Value::Object(a), Value::Object(p)) => {
            p.iter().all(|(k, pv)| a.get(k).is_some_and(|av| contains(av, pv)))
        }
        (Value::Array(a), Value::Array(p)) => {
            p.iter().all(|pv| a.iter().any(|av| contains(av, pv)))
        }
        // A single value against a one-item array pattern (or the reverse) compares the items.
        (Value::Array(a), p) => a.iter().any(|av| contains(av, p)),
        _ => same(actual, pattern),
    }
}

#[cfg(test)]
#[path = "profile_tests.rs"]
mod tests;
