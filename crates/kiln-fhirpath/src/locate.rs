//! Where the elements an expression selected live in the resource's JSON, for callers that
//! edit a resource in place (FHIRPath Patch).
//!
//! [`locate`] finds each selected element by identity: an element node borrows its JSON from
//! the evaluated resource, so one walk of the resource that compares addresses gives the
//! exact property chain and array indexes, whatever expression selected it (`where`,
//! `first()`, `ofType`, `extension('url')`, …). Items that are not part of the resource
//! (System values, resources found by `resolve()`) have no location. [`child_definition`]
//! answers what the definitions say about a property at a location.

use crate::navigate::child_type;
use crate::types::{ElementRef, Item, Json};
use kiln_definitions::{ElementDef, definitions};
use serde_json::Value;
use std::collections::HashMap;

/// One step from an object or array to a child value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A JSON property (a primitive's extension object keeps its `_` here).
    Key(String),
    /// An array entry.
    Index(usize),
}

/// The JSON position of an element: the steps from the resource to it. The element's own
/// property name is never the `_name` sibling: a primitive that only has extensions is
/// located by its plain name (`birthDate`), and its `_birthDate` object goes with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub steps: Vec<Step>,
}

impl Location {
    /// The resource itself.
    pub fn is_root(&self) -> bool {
        self.steps.is_empty()
    }

    /// The steps to the object holding the element, its property name and its index when
    /// the property is a list; `None` for the resource itself.
    pub fn split(&self) -> Option<(&[Step], &str, Option<usize>)> {
        match self.steps.as_slice() {
            [parent @ .., Step::Key(key), Step::Index(i)] => Some((parent, key, Some(*i))),
            [parent @ .., Step::Key(key)] => Some((parent, key, None)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Location {
    /// `name[0].given[1]` (JSON property names).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Key(k) if i == 0 => f.write_str(k)?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The location in `resource` of each of `items` (in order): `None` for an item that is not
/// an element of `resource` (a System value, a copy such as a `resolve()`d resource). The
/// items must come from an evaluation on `resource` itself.
pub fn locate(resource: &Value, items: &[Item<'_>]) -> Vec<Option<Location>> {
    let mut out = vec![None; items.len()];
    // Address of the JSON value → (item, whether it is the `_name` extension object).
    let mut wanted: HashMap<usize, Vec<(usize, bool)>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let Item::Node(node) = item else { continue };
        let (json, ext) = match (&node.value, &node.extension) {
            (Some(v), _) => (v, false),
            (None, Some(e)) => (e, true),
            (None, None) => continue,
        };
        if let Json::Borrowed(v) = json {
            wanted.entry(*v as *const Value as usize).or_default().push((i, ext));
        }
    }
    if wanted.is_empty() {
        return out;
    }
    let mut remaining = wanted.values().map(Vec::len).sum::<usize>();
    let mut steps = Vec::new();
    walk(resource, &mut steps, &wanted, &mut out, &mut remaining);
    out
}

fn walk(
    value: &Value,
    steps: &mut Vec<Step>,
    wanted: &HashMap<usize, Vec<(usize, bool)>>,
    out: &mut [Option<Location>],
    remaining: &mut usize,
) {
    if let Some(hits) = wanted.get(&(value as *const Value as usize)) {
        for &(i, ext) in hits {
            let mut found = Location { steps: steps.clone() };
            if ext {
                unprefix_last_key(&mut found.steps);
            }
            out[i] = Some(found);
            *remaining -= 1;
        }
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if *remaining == 0 {
                    return;
                }
                steps.push(Step::Key(key.clone()));
                walk(child, steps, wanted, out, remaining);
                steps.pop();
            }
        }
        Value::Array(list) => {
            for (i, child) in list.iter().enumerate() {
                if *remaining == 0 {
                    return;
                }
                steps.push(Step::Index(i));
                walk(child, steps, wanted, out, remaining);
                steps.pop();
            }
        }
        _ => {}
    }
}

/// `…_given[1]` → `…given[1]`: the element a `_name` object belongs to.
fn unprefix_last_key(steps: &mut [Step]) {
    if let Some(Step::Key(key)) = steps.iter_mut().rev().find(|s| matches!(s, Step::Key(_)))
        && let Some(plain) = key.strip_prefix('_')
    {
        *key = plain.to_string();
    }
}

/// What the definitions say about a child of the element at `parent`.
#[derive(Debug, Clone, Copy)]
pub enum ChildDefinition {
    /// The child's element definition (a choice element for `value` or `valueQuantity`).
    Known(&'static ElementDef),
    /// The parent's type is known and has no such element.
    Unknown { parent_type: &'static str },
    /// The parent's type is not known (content the definitions don't describe).
    Untyped,
}

/// The definition of the child `name` (a FHIRPath name such as `value`, or a JSON property
/// name such as `valueQuantity`) of the element at `parent` in `resource`.
pub fn child_definition(resource: &Value, parent: &[Step], name: &str) -> ChildDefinition {
    let Some((td, el)) = type_at(resource, parent) else { return ChildDefinition::Untyped };
    if let Some(pm) = td.property(el, name) {
        return ChildDefinition::Known(pm.element);
    }
    match td.children_of(el).find(|c| c.base_name() == name) {
        Some(child) => ChildDefinition::Known(child),
        None => ChildDefinition::Unknown { parent_type: type_name(td, el) },
    }
}

/// The type of the element at `steps` (a resource, contained resource, datatype, backbone
/// element or a primitive's `_name` object).
fn type_at(resource: &Value, steps: &[Step]) -> Option<ElementRef> {
    let mut json = resource;
    let mut def = resource_def(json)?;
    for step in steps {
        match step {
            Step::Index(i) => json = json.get(*i)?,
            Step::Key(key) => {
                let (td, el) = def;
                let name = key.strip_prefix('_').unwrap_or(key);
                let pm = td.property(el, name)?;
                def = child_type(td, pm.element, pm.type_code).1?;
                json = json.get(key.as_str())?;
            }
        }
        if json.is_object()
            && let Some(found) = resource_def(json)
        {
            def = found;
        }
    }
    Some(def)
}

fn resource_def(json: &Value) -> Option<ElementRef> {
    let rt = json.get("resourceType")?.as_str()?;
    let td = definitions().type_def(rt)?;
    Some((td, td.root()))
}

/// `Patient`, `HumanName`, or the path of a backbone element (`Patient.contact`).
fn type_name(td: &'static kiln_definitions::TypeDef, el: &'static ElementDef) -> &'static str {
    if std::ptr::eq(el, td.root()) { td.name.as_str() } else { el.path.as_str() }
}
