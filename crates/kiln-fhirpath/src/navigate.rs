//! Walking FHIR JSON: the children of a node by FHIRPath name (choice elements `value[x]`
//! answer to `value` whatever their JSON suffix, primitives reach their `_name` sibling for
//! `id` and `extension`), every child (`children()`), and the FHIR type of each child from
//! the definitions. Elements the definitions don't know are still found, with a type guessed
//! from the JSON key when possible.

use crate::types::{ElementRef, Json, Node};
use kiln_definitions::{ElementDef, TypeDef, definitions};
use serde_json::Value;
use std::sync::Arc;

type Typed = (Option<&'static str>, Option<ElementRef>);

/// Type and definition context of a child element of FHIR type `code` (or a
/// `contentReference` when `code` is `None`).
pub(crate) fn child_type(
    td: &'static TypeDef,
    el: &'static ElementDef,
    code: Option<&'static str>,
) -> Typed {
    match code {
        None => match td.content_target(el) {
            Some(target) => (target.types.first().map(String::as_str), Some((td, target))),
            None => (None, None),
        },
        Some(code) if matches!(code, "BackboneElement" | "Element") && td.has_children(el) => {
            (Some(code), Some((td, el)))
        }
        Some(code) => match definitions().type_def(code) {
            Some(t) => (Some(t.name.as_str()), Some((t, t.root()))),
            None => (Some(code), None),
        },
    }
}

/// A type guessed from a choice suffix (`valueString` → `string`, `valueQuantity` →
/// `Quantity`) for elements without definitions.
fn guess_type(suffix: &str) -> Typed {
    let defs = definitions();
    let mut chars = suffix.chars();
    let lower: String =
        chars.next().map(|c| c.to_ascii_lowercase()).into_iter().chain(chars).collect();
    if defs.is_primitive(&lower) {
        return child_type_plain(&lower);
    }
    child_type_plain(suffix)
}

fn child_type_plain(code: &str) -> Typed {
    match definitions().type_def(code) {
        Some(t) => (Some(t.name.as_str()), Some((t, t.root()))),
        None => (None, None),
    }
}

/// The JSON object holding a node's children: the value for complex elements, the `_name`
/// sibling for primitives.
fn container<'n, 'a>(node: &'n Node<'a>) -> Option<&'n Json<'a>> {
    match &node.value {
        Some(v) if v.is_object() => Some(v),
        _ => node.extension.as_ref().filter(|e| e.is_object()),
    }
}

/// Outcome of looking a name up on a typed node.
pub(crate) enum Lookup {
    Found,
    /// The definitions know this type and it has no such element.
    Unknown,
}

/// Appends the children named `name` (a FHIRPath name: `value`, not `valueQuantity`).
pub(crate) fn child<'a>(node: &Node<'a>, name: &str, out: &mut Vec<crate::Item<'a>>) -> Lookup {
    let Some(obj) = container(node) else {
        return match node.def {
            Some((td, el)) if !has_element(td, el, name) => Lookup::Unknown,
            _ => Lookup::Found,
        };
    };
    if let Some((td, el)) = node.def {
        if let Some(pm) = td.property(el, name)
            && !pm.element.is_choice()
        {
            push_values(node, obj, name, child_type(td, pm.element, pm.type_code), out);
            return Lookup::Found;
        }
        if let Some(choice) = td.children_of(el).find(|c| c.is_choice() && c.base_name() == name) {
            // The JSON keys name the type (`valueQuantity`, `_valueString`): look at the
            // object's keys rather than building every `value<Type>` name.
            let Some(map) = obj.as_object() else { return Lookup::Found };
            for code in &choice.types {
                let named = |key: &str| {
                    let key = key.strip_prefix('_').unwrap_or(key);
                    key.strip_prefix(name).is_some_and(|suffix| is_choice_suffix(suffix, code))
                };
                if let Some(key) = map.keys().find(|k| named(k)) {
                    let key = key.strip_prefix('_').unwrap_or(key);
                    push_values(node, obj, key, child_type(td, choice, Some(code.as_str())), out);
                }
            }
            return Lookup::Found;
        }
    }
    let Some(map) = obj.as_object() else { return Lookup::Found };
    if map.contains_key(name) || with_underscore(name, |ext| map.contains_key(ext)) {
        push_values(node, obj, name, (None, None), out);
        return if node.def.is_some() { Lookup::Unknown } else { Lookup::Found };
    }
    if node.def.is_none() {
        let choices: Vec<&String> = map
            .keys()
            .filter(|k| {
                k.len() > name.len()
                    && k.starts_with(name)
                    && k.as_bytes()[name.len()].is_ascii_uppercase()
            })
            .collect();
        for key in choices {
            push_values(node, obj, key, guess_type(&key[name.len()..]), out);
        }
        return Lookup::Found;
    }
    Lookup::Unknown
}

fn has_element(td: &TypeDef, el: &ElementDef, name: &str) -> bool {
    td.property(el, name).is_some()
        || td.children_of(el).any(|c| c.is_choice() && c.base_name() == name)
}

/// Appends every child element (`children()`), in JSON order.
pub(crate) fn children<'a>(node: &Node<'a>, out: &mut Vec<crate::Item<'a>>) {
    let Some(obj) = container(node) else { return };
    let Some(map) = obj.as_object() else { return };
    for key in map.keys() {
        if key == "resourceType" || key == "fhir_comments" {
            continue;
        }
        let base = key.strip_prefix('_');
        if let Some(base) = base
            && map.contains_key(base)
        {
            continue;
        }
        let key = base.unwrap_or(key);
        let typed = match node.def {
            Some((td, el)) => match td.property(el, key) {
                Some(pm) => child_type(td, pm.element, pm.type_code),
                None => (None, None),
            },
            None => (None, None),
        };
        push_values(node, obj, key, typed, out);
    }
}

/// Appends the node(s) of JSON property `key` of `obj` (an array gives one node per entry,
/// aligned with the `_key` array).
fn push_values<'a>(
    parent: &Node<'a>,
    obj: &Json<'a>,
    key: &str,
    typed: Typed,
    out: &mut Vec<crate::Item<'a>>,
) {
    let value = obj.child(|o| o.get(key));
    let ext = with_underscore(key, |ext_key| obj.child(|o| o.get(ext_key)));
    let make = |value: Option<Json<'a>>, extension: Option<Json<'a>>, path: Option<String>| {
        let value = value.filter(|v| !v.is_null());
        let extension = extension.filter(|v| !v.is_null());
        if value.is_none() && extension.is_none() {
            return None;
        }
        let path = path.map(Arc::from);
        let mut node = Node { value, extension, ty: typed.0, def: typed.1, path };
        if let Some(rt) =
            node.value.as_ref().and_then(|v| v.get("resourceType")).and_then(Value::as_str)
            && let Some(td) = definitions().type_def(rt)
        {
            node.ty = Some(td.name.as_str());
            node.def = Some((td, td.root()));
        }
        Some(crate::Item::Node(node))
    };
    let at = |j: &Option<Json<'a>>, i: usize| {
        j.as_ref().and_then(|j| j.child(|v| v.as_array().and_then(|a| a.get(i))))
    };
    let is_array = |j: &Option<Json<'a>>| j.as_ref().is_some_and(|v| v.is_array());
    if is_array(&value) || is_array(&ext) {
        let len = |j: &Option<Json<'a>>| j.as_ref().and_then(|v| v.as_array().map(Vec::len));
        let n = len(&value).unwrap_or(0).max(len(&ext).unwrap_or(0));
        for i in 0..n {
            let path = parent.path.as_ref().map(|p| format!("{p}.{key}[{i}]"));
            out.extend(make(at(&value, i), at(&ext, i), path));
        }
    } else {
        let path = parent.path.as_ref().map(|p| format!("{p}.{key}"));
        out.extend(make(value, ext, path));
    }
}

/// Calls `f` with `_key` (a primitive's extension sibling), built on the stack for the short
/// names that FHIR elements have.
fn with_underscore<T>(key: &str, f: impl FnOnce(&str) -> T) -> T {
    let mut buf = [0u8; 64];
    if key.len() < buf.len() {
        buf[0] = b'_';
        buf[1..=key.len()].copy_from_slice(key.as_bytes());
        // '_' followed by the bytes of a str is UTF-8.
        if let Ok(ext) = std::str::from_utf8(&buf[..=key.len()]) {
            return f(ext);
        }
    }
    f(&format!("_{key}"))
}

/// Whether `suffix` (after a choice element's base name) names type `code`: `Quantity` for
/// `Quantity`, `DateTime` for `dateTime`.
fn is_choice_suffix(suffix: &str, code: &str) -> bool {
    let (s, c) = (suffix.as_bytes(), code.as_bytes());
    s.len() == c.len() && !s.is_empty() && s[0] == c[0].to_ascii_uppercase() && s[1..] == c[1..]
}
