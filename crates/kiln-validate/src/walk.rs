//! The structural walk: one pass over the JSON, resolving each property through the type
//! definitions and collecting every issue with its location.
//!
//! The current location is kept in one `String` that grows and shrinks as the walk descends,
//! so a valid resource costs no allocation beyond the issue list.

use crate::invariant::{Collector, ElementInfo};
use crate::primitive::{check_primitive, describe};
use crate::{ResourceCheck, ResourceContext, Validator, binding, reference};
use kiln_definitions::{Definitions, ElementDef, PropertyMatch, TypeDef, TypeKind};
use kiln_model::{Issue, IssueCode};
use serde_json::{Map, Value};
use std::fmt::Write;

/// The invariants of an element or type; `None` when it has none to evaluate.
type Checks<'v> = Option<&'v ElementInfo>;

pub(crate) struct Walker<'v, 'r> {
    validator: &'v Validator,
    defs: &'static Definitions,
    issues: Vec<Issue>,
    path: String,
    depth: usize,
    /// Invariant sites met on the way, evaluated by `into_issues` (`None`: not checked).
    invariants: Option<Collector<'v, 'r>>,
    /// A check run after the validator's own (see `Validator::validate_with`).
    pub(crate) extra: Option<&'v dyn ResourceCheck>,
    /// The resources being walked, outermost first (for `ResourceContext::container`).
    resources: Vec<&'r Value>,
}

impl<'v, 'r> Walker<'v, 'r> {
    pub(crate) fn new(validator: &'v Validator) -> Walker<'v, 'r> {
        Walker {
            validator,
            defs: validator.definitions,
            issues: Vec::new(),
            path: String::with_capacity(64),
            depth: 0,
            invariants: validator.invariants.as_ref().map(Collector::new),
            extra: None,
            resources: Vec::new(),
        }
    }

    /// Evaluates the invariants of every structurally valid resource, then returns all issues.
    pub(crate) fn into_issues(mut self) -> Vec<Issue> {
        if let Some(collector) = self.invariants.take() {
            collector.evaluate(&mut self.issues);
        }
        self.issues
    }

    /// The invariant table entry of an element of `td`.
    fn info(&self, td: &TypeDef, element: &ElementDef) -> Option<&'v ElementInfo> {
        self.invariants.as_ref()?.info(td.ordinal(), element.index())
    }

    /// The constraints to evaluate on each value of an element of `td`.
    fn active(&self, td: &TypeDef, element: &ElementDef) -> Checks<'v> {
        self.info(td, element).filter(|i| i.has_checks())
    }

    fn push_step(&mut self, info: Option<&ElementInfo>) {
        if let Some(c) = &mut self.invariants {
            c.push(info);
        }
    }

    fn pop_step(&mut self) {
        if let Some(c) = &mut self.invariants {
            c.pop();
        }
    }

    fn set_index(&mut self, index: usize) {
        if let Some(c) = &mut self.invariants {
            c.set_index(index);
        }
    }

    /// Records the current element for invariant evaluation.
    fn site(&mut self, own: Checks<'v>, of_type: Checks<'v>) {
        if let Some(c) = &mut self.invariants {
            c.site(own, of_type);
        }
    }

    fn error(&mut self, code: IssueCode, diagnostics: impl Into<String>) {
        self.issues.push(Issue::error(code, diagnostics).at(self.path.clone()));
    }

    /// Runs `f` with `.segment` appended to the current path.
    fn at<R>(&mut self, segment: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(segment);
        let result = f(self);
        self.path.truncate(len);
        result
    }

    /// Runs `f` with `[index]` appended to the current path.
    fn at_index<R>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.path.len();
        let _ = write!(self.path, "[{index}]");
        let result = f(self);
        self.path.truncate(len);
        result
    }

    /// Validates a top-level resource (path empty) or a nested one (path = its location);
    /// `contained` when it sits in a `contained` element.
    pub(crate) fn resource(&mut self, value: &'r Value, expected: Option<&str>, contained: bool) {
        let nested = !self.path.is_empty();
        let Value::Object(obj) = value else {
            self.resource_error(expected, IssueCode::Structure, |_| {
                format!("A resource must be a JSON object, found {}", describe(value))
            });
            return;
        };
        let resource_type = match obj.get("resourceType") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                let found = describe(other);
                self.resource_error(expected, IssueCode::Structure, |_| {
                    format!("resourceType must be a string, found {found}")
                });
                return;
            }
            None => {
                self.resource_error(expected, IssueCode::Required, |_| {
                    "The resource has no resourceType".to_string()
                });
                return;
            }
        };
        let Some(td) = self.defs.type_def(resource_type).filter(|t| is_concrete_resource(t)) else {
            self.resource_error(expected, IssueCode::Invalid, |_| {
                format!("Unknown resource type '{resource_type}'")
            });
            return;
        };
        if let Some(expected) = expected.filter(|e| !self.is_a(resource_type, e)) {
            self.resource_error(Some(expected), IssueCode::Invalid, |_| {
                format!("Expected a {expected} resource, found {resource_type}")
            });
        }
        if !nested {
            self.path.push_str(resource_type);
        }
        let before = self.issues.len();
        let root_active = self.active(td, td.root());
        if let Some(c) = &mut self.invariants {
            c.open_frame(value, contained, &self.path);
            c.site(root_active, None);
        }
        self.resources.push(value);
        self.object(obj, td, td.root(), true);
        self.resources.pop();
        let structurally_valid = self.issues.len() == before;
        if let Some(c) = &mut self.invariants {
            c.close_frame();
        }
        let checks = &self.validator.checks;
        if !checks.is_empty() || self.extra.is_some() {
            let path = self.path.clone();
            let context = ResourceContext {
                resource_type,
                resource: value,
                path: &path,
                nested,
                structurally_valid,
                container: self.resources.last().copied(),
            };
            for check in checks {
                check.check(&context, &mut self.issues);
            }
            if let Some(extra) = self.extra {
                extra.check(&context, &mut self.issues);
            }
        }
        if !nested {
            self.path.clear();
        }
    }

    /// Reports a problem with a resource as a whole: at its location when nested, else at its
    /// (expected) type name.
    fn resource_error(
        &mut self,
        expected: Option<&str>,
        code: IssueCode,
        message: impl FnOnce(&Self) -> String,
    ) {
        let diagnostics = message(self);
        let at = if self.path.is_empty() { expected.unwrap_or("Resource") } else { &self.path };
        let issue = Issue::error(code, diagnostics).at(at);
        self.issues.push(issue);
    }

    /// Whether `resource_type` is `ancestor` or derives from it.
    fn is_a(&self, resource_type: &str, ancestor: &str) -> bool {
        let mut current = Some(resource_type);
        for _ in 0..16 {
            match current {
                Some(name) if name == ancestor => return true,
                Some(name) => current = self.defs.type_def(name).and_then(|t| t.base.as_deref()),
                None => return false,
            }
        }
        false
    }

    /// Validates a value of any type at `path` (see `Validator::validate_value`).
    pub(crate) fn value_of_type(&mut self, value: &'r Value, type_name: &str, path: &str) {
        self.path.clear();
        self.path.push_str(path);
        if self.defs.type_def(type_name).is_none() {
            self.error(IssueCode::Invalid, format!("Unknown type '{type_name}'"));
            return;
        }
        self.typed(value, type_name, None, None);
    }

    /// Validates the properties of an object standing for `parent` (an element of `td`).
    fn object(
        &mut self,
        obj: &'r Map<String, Value>,
        td: &TypeDef,
        parent: &ElementDef,
        is_resource: bool,
    ) {
        if obj.is_empty() {
            self.error(
                IssueCode::Structure,
                "Empty object: an element must have a value or children",
            );
            return;
        }
        if self.depth >= self.validator.options.max_depth {
            self.error(IssueCode::TooLong, "Content is nested too deeply to be validated");
            return;
        }
        self.depth += 1;
        let mut choices_seen: Vec<&ElementDef> = Vec::new();
        for (key, value) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            if let Some(name) = key.strip_prefix('_') {
                self.primitive_extension(obj, key, name, value, td, parent);
                continue;
            }
            let Some(property) = td.property(parent, key) else {
                self.unknown(key, td, parent);
                continue;
            };
            if property.element.is_choice() {
                if choices_seen.iter().any(|e| std::ptr::eq(*e, property.element)) {
                    let message = format!(
                        "Only one type of {}[x] may be present, '{key}' is a second one",
                        property.element.base_name()
                    );
                    self.at(key, |w| w.error(IssueCode::Structure, message));
                } else {
                    choices_seen.push(property.element);
                }
            }
            let info = self.info(td, property.element);
            self.push_step(info);
            let own = info.filter(|i| i.has_checks());
            self.at(key, |w| w.property(obj, key, value, property, td, own));
            self.pop_step();
        }
        for child in td.children_of(parent).filter(|c| c.min > 0) {
            let count = occurrences(obj, td, parent, child);
            if count == 0 {
                let message = format!("Missing required element '{}'", child.name);
                self.at(child.base_name(), |w| w.error(IssueCode::Required, message));
            } else if count < child.min as usize {
                let message =
                    format!("'{}' needs at least {} values, found {count}", child.name, child.min);
                self.at(child.base_name(), |w| w.error(IssueCode::Required, message));
            }
        }
        self.depth -= 1;
    }

    fn unknown(&mut self, key: &str, td: &TypeDef, parent: &ElementDef) {
        let message = match td.choice_for(parent, key) {
            Some(choice) => {
                let allowed: Vec<String> =
                    choice.types.iter().map(|t| choice.json_name(t)).collect();
                format!(
                    "'{key}' is not a valid form of {}: allowed are {}",
                    choice.name,
                    allowed.join(", ")
                )
            }
            None => format!("Unknown element '{key}' in {}", parent.path),
        };
        self.at(key, |w| w.error(IssueCode::Structure, message));
    }

    /// A property whose element is known; the path already ends with its name.
    #[allow(clippy::too_many_arguments)]
    fn property(
        &mut self,
        obj: &'r Map<String, Value>,
        key: &str,
        value: &'r Value,
        property: PropertyMatch<'_>,
        td: &TypeDef,
        own: Checks<'v>,
    ) {
        let element = property.element;
        if element.max == Some(0) {
            self.error(IssueCode::Structure, format!("'{key}' is not allowed here"));
            return;
        }
        match value {
            Value::Null => {
                self.error(
                    IssueCode::Structure,
                    "null is not a valid value: omit the element instead",
                );
            }
            Value::Array(items) if element.is_array() => {
                if items.is_empty() {
                    self.error(IssueCode::Structure, "Empty array: omit the element instead");
                    return;
                }
                if let Some(max) = element.max.filter(|&m| items.len() > m as usize) {
                    let message =
                        format!("'{key}' allows at most {max} values, found {}", items.len());
                    self.error(IssueCode::Structure, message);
                }
                for (i, item) in items.iter().enumerate() {
                    self.set_index(i);
                    self.at_index(i, |w| {
                        if item.is_null() {
                            if !w.null_covered(obj, key, i, property) {
                                w.error(
                                    IssueCode::Structure,
                                    "null is only allowed in an array of primitives when the \
                                     matching '_' entry carries an id or extension",
                                );
                            }
                        } else {
                            w.item(item, property, td, own);
                        }
                    });
                }
            }
            Value::Array(_) => {
                let message =
                    format!("'{key}' does not repeat: expected a single value, found an array");
                self.error(IssueCode::Structure, message);
            }
            _ if element.is_array() => {
                let message =
                    format!("'{key}' repeats and must be an array, found {}", describe(value));
                self.error(IssueCode::Structure, message);
            }
            _ => self.item(value, property, td, own),
        }
    }

    /// Whether a `null` at `index` of a primitive array is matched by a non-null `_key` entry.
    fn null_covered(
        &self,
        obj: &Map<String, Value>,
        key: &str,
        index: usize,
        p: PropertyMatch<'_>,
    ) -> bool {
        if !p.type_code.is_some_and(|t| self.defs.is_primitive(t)) {
            return false;
        }
        let sibling = obj.get(&format!("_{key}")).and_then(Value::as_array);
        sibling.and_then(|s| s.get(index)).is_some_and(|v| !v.is_null())
    }

    /// One (non-null, non-array) value of an element; the path points at it. `own`: the
    /// element's invariants.
    fn item(
        &mut self,
        value: &'r Value,
        property: PropertyMatch<'_>,
        td: &TypeDef,
        own: Checks<'v>,
    ) {
        let element = property.element;
        let inline = if td.has_children(element) {
            Some(element)
        } else if element.content_reference.is_some() {
            td.content_target(element)
        } else {
            None
        };
        if let Some(definition) = inline {
            match value {
                Value::Object(obj) => {
                    self.site(own, None);
                    self.object(obj, td, definition, false);
                    self.only_id(obj);
                }
                other => {
                    let message = format!("Expected an object, found {}", describe(other));
                    self.error(IssueCode::Structure, message);
                }
            }
            return;
        }
        if let Some(type_code) = property.type_code {
            self.typed(value, type_code, Some(element), own);
        }
    }

    /// A value that must conform to the named type; `own`: the invariants of its element.
    fn typed(
        &mut self,
        value: &'r Value,
        type_code: &str,
        element: Option<&ElementDef>,
        own: Checks<'v>,
    ) {
        let defs = self.defs;
        if type_code == "Resource" || defs.is_resource_type(type_code) {
            let expected = (type_code != "Resource").then_some(type_code);
            self.site(own, None);
            let contained = element.is_some_and(|e| e.name == "contained");
            self.resource(value, expected, contained);
            return;
        }
        if defs.is_primitive(type_code) {
            match check_primitive(value, type_code) {
                Err((code, message)) => self.error(code, message),
                Ok(()) => {
                    self.site(own, None);
                    if let Value::String(text) = value
                        && text.starts_with('#')
                        && let Some(c) = &mut self.invariants
                    {
                        let name = element.map_or("", |e| e.base_name());
                        c.local_reference(text, type_code, name);
                    }
                    self.binding(value, type_code, element);
                }
            }
            return;
        }
        let Some(td) = defs.type_def(type_code) else { return };
        match value {
            Value::Object(obj) => {
                let of_type = self.active(td, td.root());
                self.site(own, of_type);
                self.object(obj, td, td.root(), false);
                self.only_id(obj);
                if type_code == "Extension" {
                    self.extension_rule(obj);
                }
                self.binding(value, type_code, element);
                if type_code == "Reference"
                    && self.validator.options.check_reference_targets
                    && let Some(element) = element
                    && let Some((code, message)) = reference::check(defs, value, element)
                {
                    // A warning: even the official R4 examples break this rule here and there.
                    self.issues.push(Issue::warning(code, message).at(self.path.clone()));
                }
            }
            other => {
                let message =
                    format!("A {type_code} must be a JSON object, found {}", describe(other));
                self.error(IssueCode::Structure, message);
            }
        }
    }

    fn binding(&mut self, value: &Value, type_code: &str, element: Option<&ElementDef>) {
        if !self.validator.options.check_bindings {
            return;
        }
        let Some(url) = element.and_then(|e| e.required_binding.as_deref()) else { return };
        let Some(vs) = self.defs.value_set(url) else { return };
        if let Some((code, message)) = binding::check(value, type_code, vs) {
            self.error(code, message);
        }
    }

    /// `ele-1` beyond empty objects: an element with nothing but an `id` has no value or
    /// children either.
    fn only_id(&mut self, obj: &Map<String, Value>) {
        if obj.len() == 1 && obj.contains_key("id") {
            self.error(
                IssueCode::Invariant,
                "ele-1: All FHIR elements must have a @value or children (an id alone is not enough)",
            );
        }
    }

    /// `ext-1`: an Extension has nested extensions or a value, exactly one of the two.
    fn extension_rule(&mut self, obj: &Map<String, Value>) {
        if obj.is_empty() {
            return; // already reported
        }
        let nested = obj.contains_key("extension");
        let valued = obj.keys().any(|k| {
            let k = k.strip_prefix('_').unwrap_or(k);
            k.strip_prefix("value").is_some_and(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))
        });
        if nested == valued {
            self.error(
                IssueCode::Invariant,
                "ext-1: Must have either extensions or value[x], not both",
            );
        }
    }

    /// `_name`: the id/extensions of primitive `name`, a single object or an array parallel
    /// to `name`'s array.
    fn primitive_extension(
        &mut self,
        obj: &'r Map<String, Value>,
        key: &str,
        name: &str,
        value: &'r Value,
        td: &TypeDef,
        parent: &ElementDef,
    ) {
        let Some(property) = td.property(parent, name) else {
            self.unknown(key, td, parent);
            return;
        };
        let primitive = property.type_code.filter(|t| self.defs.is_primitive(t));
        let Some(ptd) = primitive.and_then(|t| self.defs.type_def(t)) else {
            let message =
                format!("'{key}' is only allowed for primitive elements, '{name}' is not one");
            self.at(key, |w| w.error(IssueCode::Structure, message));
            return;
        };
        let main = obj.get(name).filter(|v| !v.is_null());
        let info = self.info(td, property.element);
        self.push_step(info);
        self.at(name, |w| {
            if !property.element.is_array() {
                match value {
                    Value::Object(o) => w.primitive_element(o, ptd, key, main.is_some()),
                    other => {
                        let message =
                            format!("'{key}' must be an object, found {}", describe(other));
                        w.error(IssueCode::Structure, message);
                    }
                }
                return;
            }
            let Value::Array(items) = value else {
                let message = format!("'{key}' must be an array because '{name}' repeats");
                w.error(IssueCode::Structure, message);
                return;
            };
            if items.is_empty() {
                w.error(IssueCode::Structure, format!("Empty array '{key}': omit it instead"));
                return;
            }
            let values = main.and_then(Value::as_array);
            if let Some(values) = values.filter(|v| v.len() != items.len()) {
                let message = format!(
                    "'{key}' has {} entries but '{name}' has {}: the arrays must be parallel",
                    items.len(),
                    values.len()
                );
                w.error(IssueCode::Structure, message);
            }
            for (i, item) in items.iter().enumerate() {
                let has_value = values.and_then(|v| v.get(i)).is_some_and(|v| !v.is_null());
                // A null in `name` itself is reported while walking `name`.
                let reported = values.is_some_and(|v| i < v.len());
                w.set_index(i);
                w.at_index(i, |w| match item {
                    Value::Null if !has_value && !reported => w.error(
                        IssueCode::Structure,
                        format!("'{key}' is null at a position where '{name}' has no value"),
                    ),
                    Value::Null => {}
                    Value::Object(o) => w.primitive_element(o, ptd, key, has_value),
                    other => {
                        let message = format!(
                            "Entries of '{key}' must be objects or null, found {}",
                            describe(other)
                        );
                        w.error(IssueCode::Structure, message);
                    }
                });
            }
        });
        self.pop_step();
    }

    /// The object holding a primitive's `id` and `extension`.
    fn primitive_element(
        &mut self,
        obj: &'r Map<String, Value>,
        ptd: &TypeDef,
        key: &str,
        has_value: bool,
    ) {
        let before = self.issues.len();
        self.object(obj, ptd, ptd.root(), false);
        if !has_value && self.issues.len() == before && !obj.contains_key("extension") {
            let message = format!("'{key}' without a value must carry an extension");
            self.error(IssueCode::Structure, message);
        }
    }
}

fn is_concrete_resource(td: &TypeDef) -> bool {
    td.kind == TypeKind::Resource && !td.is_abstract
}

/// How many values `obj` gives for `child` (one of `parent`'s elements), counting `_name`
/// siblings, so that a primitive with only an extension counts as present.
fn occurrences(
    obj: &Map<String, Value>,
    td: &TypeDef,
    parent: &ElementDef,
    child: &ElementDef,
) -> usize {
    let mut count = 0;
    for (key, value) in obj {
        let bare = key.strip_prefix('_').unwrap_or(key);
        let Some(property) = td.property(parent, bare) else { continue };
        if !std::ptr::eq(property.element, child) {
            continue;
        }
        let n = match value {
            Value::Array(items) => items.iter().filter(|v| !v.is_null()).count(),
            Value::Null => 0,
            _ => 1,
        };
        count = count.max(n);
    }
    count
}
