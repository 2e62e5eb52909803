//! FHIRPath Patch (FHIR R4 fhirpatch.html): a `Parameters` resource whose `operation`
//! parameters add, insert, delete, replace or move elements that FHIRPath expressions select.
//!
//! Each operation is applied in order to the JSON of the current version. Its path is
//! evaluated on the resource as patched so far, and `kiln_fhirpath::locate` turns the selected
//! elements into JSON positions; the definitions (`kiln_fhirpath::child_definition`) say
//! whether a property repeats, whether it is a choice (`value` → `valueQuantity`) and which
//! types fit. A primitive's `_name` sibling (its id and extensions) moves with it. The result
//! is validated by the caller like any other write. Every refusal names the operation
//! (`Parameters.parameter[2]`).

use kiln_definitions::{ElementDef, TypeDef, definitions};
use kiln_fhirpath::{
    ChildDefinition, Context, Expression, Location, Step, child_definition, compile, evaluate,
    locate,
};
use kiln_model::{Issue, IssueCode};
use serde_json::{Map, Value};

use crate::EngineError;

/// Applies every operation of the `Parameters` resource `patch` to `doc`.
pub(crate) fn apply(doc: &mut Value, patch: &Value) -> Result<(), EngineError> {
    for op in parse(patch)? {
        op.apply(doc)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Insert,
    Delete,
    Replace,
    Move,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Add => "add",
            Kind::Insert => "insert",
            Kind::Delete => "delete",
            Kind::Replace => "replace",
            Kind::Move => "move",
        }
    }
}

/// One `operation` parameter.
struct Operation<'p> {
    /// Its position in `Parameters.parameter`.
    at: usize,
    kind: Kind,
    path: Expression,
    name: Option<&'p str>,
    /// The `value` part (with a `value[x]`, a `resource` or `part`s).
    value: Option<&'p Value>,
    index: Option<usize>,
    source: Option<usize>,
    destination: Option<usize>,
}

/// A refusal of a patch document that is not FHIRPath Patch at all.
fn bad_body(message: impl Into<String>) -> EngineError {
    EngineError::Invalid(vec![Issue::error(IssueCode::Invalid, message)])
}

fn issue(at: usize, message: String) -> EngineError {
    EngineError::Invalid(vec![
        Issue::error(IssueCode::Invalid, format!("Parameters.parameter[{at}]: {message}"))
            .at(format!("Parameters.parameter[{at}]")),
    ])
}

fn parse(patch: &Value) -> Result<Vec<Operation<'_>>, EngineError> {
    if patch.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad_body("A FHIRPath Patch must be a Parameters resource"));
    }
    let params = match patch.get("parameter") {
        None => return Ok(Vec::new()),
        Some(Value::Array(params)) => params,
        Some(_) => return Err(bad_body("Parameters.parameter must be an array")),
    };
    params.iter().enumerate().map(|(at, p)| parse_operation(at, p)).collect()
}

fn parse_operation(at: usize, param: &Value) -> Result<Operation<'_>, EngineError> {
    let fail = |message: String| issue(at, message);
    if param.get("name").and_then(Value::as_str) != Some("operation") {
        return Err(fail("every parameter of a FHIRPath Patch must be named 'operation'".into()));
    }
    let Some(parts) = param.get("part").and_then(Value::as_array) else {
        return Err(fail("an operation needs its parts (type, path, …)".into()));
    };
    let mut seen: Vec<&str> = Vec::new();
    let (mut kind, mut path, mut name, mut value) = (None, None, None, None);
    let (mut index, mut source, mut destination) = (None, None, None);
    for part in parts {
        let Some(part_name) = part.get("name").and_then(Value::as_str) else {
            return Err(fail("every part needs a name".into()));
        };
        if seen.contains(&part_name) {
            return Err(fail(format!("the part '{part_name}' appears twice")));
        }
        seen.push(part_name);
        let string = |key: &str| {
            part.get(key).and_then(Value::as_str).ok_or_else(|| {
                fail(format!("the part '{part_name}' needs a {key} (a string value)"))
            })
        };
        let number = || {
            part.get("valueInteger")
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    fail(format!("the part '{part_name}' needs a valueInteger of 0 or more"))
                })
        };
        match part_name {
            "type" => {
                kind = Some(match string("valueCode")? {
                    "add" => Kind::Add,
                    "insert" => Kind::Insert,
                    "delete" => Kind::Delete,
                    "replace" => Kind::Replace,
                    "move" => Kind::Move,
                    other => {
                        return Err(fail(format!(
                            "unknown operation type '{other}' (add | insert | delete | replace | move)"
                        )));
                    }
                })
            }
            "path" => {
                let text = string("valueString")?;
                path =
                    Some(compile(text).map_err(|e| {
                        fail(format!("the path '{text}' is not valid FHIRPath: {e}"))
                    })?);
            }
            "name" => name = Some(string("valueString")?),
            "value" => value = Some(part),
            "index" => index = Some(number()?),
            "source" => source = Some(number()?),
            "destination" => destination = Some(number()?),
            other => return Err(fail(format!("unknown part '{other}'"))),
        }
    }
    let Some(kind) = kind else { return Err(fail("the part 'type' is missing".into())) };
    let Some(path) = path else { return Err(fail("the part 'path' is missing".into())) };
    let required = match kind {
        Kind::Add => vec![("name", name.is_some()), ("value", value.is_some())],
        Kind::Insert => vec![("value", value.is_some()), ("index", index.is_some())],
        Kind::Delete => vec![],
        Kind::Replace => vec![("value", value.is_some())],
        Kind::Move => vec![("source", source.is_some()), ("destination", destination.is_some())],
    };
    if let Some((missing, _)) = required.iter().find(|(_, present)| !present) {
        return Err(fail(format!("{} needs the part '{missing}'", kind.as_str())));
    }
    Ok(Operation { at, kind, path, name, value, index, source, destination })
}

/// A value to write: its JSON, a primitive's `_name` object, and its FHIR type when the
/// parameter says it (`valueQuantity` → `Quantity`; `None` for a value built from parts).
struct Produced {
    json: Value,
    ext: Option<Value>,
    ty: Option<String>,
}

impl Operation<'_> {
    fn fail(&self, message: impl Into<String>) -> EngineError {
        issue(
            self.at,
            format!("{} at '{}': {}", self.kind.as_str(), self.path.text(), message.into()),
        )
    }

    fn apply(&self, doc: &mut Value) -> Result<(), EngineError> {
        match self.kind {
            Kind::Add => self.add(doc),
            Kind::Insert => self.insert(doc),
            Kind::Delete => self.delete(doc),
            Kind::Replace => self.replace(doc),
            Kind::Move => self.move_entry(doc),
        }
    }

    /// The elements `path` selects in `doc`; anything selected that is not an element of the
    /// resource (a computed value, a `resolve()`d resource) is refused.
    fn select(&self, doc: &Value, path: &Expression) -> Result<Vec<Location>, EngineError> {
        let items = evaluate(path, &Context::new(doc)).map_err(|e| {
            self.fail(format!("the path '{}' could not be evaluated: {e}", path.text()))
        })?;
        locate(doc, &items)
            .into_iter()
            .map(|loc| {
                loc.ok_or_else(|| {
                    self.fail(format!(
                        "the path '{}' selects a value that is not an element of the resource",
                        path.text()
                    ))
                })
            })
            .collect()
    }

    /// The one element `path` selects.
    fn select_one(&self, doc: &Value, path: &Expression) -> Result<Location, EngineError> {
        let mut found = self.select(doc, path)?;
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => {
                Err(self.fail("the path selects nothing; this operation needs exactly one element"))
            }
            n => Err(self
                .fail(format!("the path selects {n} elements; this operation needs exactly one"))),
        }
    }

    /// The list `path` selects: the object holding it, its property name and its length.
    /// The path may select some entries of one list (`identifier.where(…)`); indexes count in
    /// the whole list. An empty selection of `….name` is the (missing) list `name` of the one
    /// element before.
    fn select_list(&self, doc: &Value) -> Result<(Vec<Step>, String, usize), EngineError> {
        let found = self.select(doc, &self.path)?;
        let Some(first) = found.first() else {
            let Some((parent, name)) = self.path.split_last_member() else {
                return Err(self.fail("the path selects nothing, so there is no list to use"));
            };
            let parent = match parent {
                Some(parent) => self.select_one(doc, &parent)?,
                None => Location::default(),
            };
            let key = match child_definition(doc, &parent.steps, name) {
                ChildDefinition::Known(el) if el.is_array() => el.name.clone(),
                ChildDefinition::Known(_) => {
                    return Err(self.fail(format!("'{name}' is not a list (it does not repeat)")));
                }
                ChildDefinition::Unknown { parent_type } => {
                    return Err(self.fail(format!("{parent_type} has no element '{name}'")));
                }
                ChildDefinition::Untyped => name.to_string(),
            };
            return Ok((parent.steps, key, 0));
        };
        let Some((parent, key, Some(_))) = first.split() else {
            return Err(
                self.fail("the path must select the entries of a list (a repeating element)")
            );
        };
        for loc in &found {
            match loc.split() {
                Some((p, k, Some(_))) if p == parent && k == key => {}
                _ => {
                    return Err(self.fail("the path selects elements of more than one list"));
                }
            }
        }
        let obj = get(doc, parent).and_then(Value::as_object);
        let len = obj.map_or(0, |o| list_len(o, key));
        Ok((parent.to_vec(), key.to_string(), len))
    }

    fn add(&self, doc: &mut Value) -> Result<(), EngineError> {
        let name = self.name.unwrap_or_default();
        let target = self.select_one(doc, &self.path)?;
        // A primitive's id and extensions live in its `_name` object.
        let container = if get(doc, &target.steps).is_some_and(Value::is_object) {
            target.steps.clone()
        } else {
            let Some((parent, key, index)) = target.split() else {
                return Err(self.fail("the path does not select an object"));
            };
            let mut steps = parent.to_vec();
            steps.push(Step::Key(format!("_{key}")));
            ensure_ext_object(doc, parent, key, index);
            steps.extend(index.map(Step::Index));
            steps
        };
        let (def, key, value) = self.resolve_child(doc, &container, name)?;
        let Some(obj) = get_mut(doc, &container).and_then(Value::as_object_mut) else {
            return Err(self.fail("the path does not select an object"));
        };
        let repeats = match def {
            Some(el) => el.is_array(),
            None => obj.get(&key).is_some_and(Value::is_array),
        };
        if repeats {
            let len = list_len(obj, &key);
            insert_entry(obj, &key, len, value);
            return Ok(());
        }
        let taken = match def {
            Some(el) if el.is_choice() => obj.keys().find(|k| {
                let k = k.strip_prefix('_').unwrap_or(k);
                el.types.iter().any(|t| el.json_name(t) == k)
            }),
            _ => obj.keys().find(|k| **k == key || k.strip_prefix('_') == Some(key.as_str())),
        };
        if let Some(taken) = taken {
            let taken = taken.strip_prefix('_').unwrap_or(taken);
            return Err(self
                .fail(format!("'{taken}' already has a value and does not repeat: use replace")));
        }
        if !value.json.is_null() {
            obj.insert(key.clone(), value.json);
        }
        if let Some(ext) = value.ext {
            obj.insert(format!("_{key}"), ext);
        }
        Ok(())
    }

    fn insert(&self, doc: &mut Value) -> Result<(), EngineError> {
        let index = self.index.unwrap_or_default();
        let (parent, key, len) = self.select_list(doc)?;
        if index > len {
            return Err(self.fail(format!(
                "index {index} is beyond the end of the list ({len} entries; at most {len})"
            )));
        }
        let def = match child_definition(doc, &parent, &key) {
            ChildDefinition::Known(el) => Some(el),
            _ => None,
        };
        let value = self.produce(def)?;
        if let Some(el) = def {
            self.check_fits(el, &value)?;
        }
        let Some(obj) = get_mut(doc, &parent).and_then(Value::as_object_mut) else {
            return Err(self.fail("the list's parent is not an object"));
        };
        insert_entry(obj, &key, index, value);
        Ok(())
    }

    fn delete(&self, doc: &mut Value) -> Result<(), EngineError> {
        let mut found = self.select(doc, &self.path)?;
        let target = match found.len() {
            0 => return Ok(()),
            1 => found.remove(0),
            n => {
                return Err(self.fail(format!(
                    "the path selects {n} elements; only one element can be deleted"
                )));
            }
        };
        let Some((parent, key, index)) = target.split() else {
            return Err(self.fail("the resource itself cannot be deleted by a patch"));
        };
        let Some(obj) = get_mut(doc, parent).and_then(Value::as_object_mut) else {
            return Ok(());
        };
        match index {
            Some(i) => {
                remove_entry(obj, key, i);
            }
            None => {
                obj.shift_remove(key);
                obj.shift_remove(&format!("_{key}"));
            }
        }
        tidy_ext_object(doc, parent);
        Ok(())
    }

    fn replace(&self, doc: &mut Value) -> Result<(), EngineError> {
        let target = self.select_one(doc, &self.path)?;
        let Some((parent, key, index)) = target.split() else {
            return Err(self.fail("the resource itself cannot be replaced by a patch"));
        };
        let (parent, key) = (parent.to_vec(), key.to_string());
        let def = match child_definition(doc, &parent, &key) {
            ChildDefinition::Known(el) => Some(el),
            _ => None,
        };
        let value = self.produce(def)?;
        let new_key = match def {
            Some(el) => {
                let key = self.json_key(el, &value)?;
                self.check_fits(el, &value)?;
                key
            }
            None => key.clone(),
        };
        let Some(obj) = get_mut(doc, &parent).and_then(Value::as_object_mut) else {
            return Err(self.fail("the element's parent is not an object"));
        };
        let ext_key = format!("_{key}");
        let complex = value.json.is_object();
        match index {
            Some(i) => {
                // The value list may be shorter than its `_key` list (or missing) when its
                // last entries only have extensions.
                let len = list_len(obj, &key);
                let list = obj.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(list) = list else {
                    return Err(self.fail("the element is not in a list"));
                };
                list.resize(len.max(list.len()), Value::Null);
                let Some(slot) = list.get_mut(i) else {
                    return Err(self.fail("the element is no longer in its list"));
                };
                *slot = value.json;
                if value.ext.is_some() || complex {
                    let len = list_len(obj, &key);
                    let ext = obj.entry(ext_key.clone()).or_insert_with(|| Value::Array(vec![]));
                    if let Value::Array(exts) = ext {
                        exts.resize(len.max(exts.len()), Value::Null);
                        exts[i] = value.ext.unwrap_or(Value::Null);
                    }
                    tidy_ext_list(obj, &key);
                }
            }
            None => {
                // A choice element changes its property name with its type, in place.
                let mut kept_ext = obj.get(&ext_key).cloned();
                if new_key != key || complex {
                    kept_ext = None;
                }
                let old = std::mem::take(obj);
                for (k, v) in old {
                    if k == key {
                        obj.insert(new_key.clone(), Value::Null);
                    } else if k != ext_key {
                        obj.insert(k, v);
                    }
                }
                if value.json.is_null() {
                    obj.shift_remove(&new_key);
                } else {
                    obj.insert(new_key.clone(), value.json);
                }
                if let Some(ext) = value.ext.or(kept_ext) {
                    obj.insert(format!("_{new_key}"), ext);
                }
            }
        }
        Ok(())
    }

    fn move_entry(&self, doc: &mut Value) -> Result<(), EngineError> {
        let (source, destination) = (self.source.unwrap_or(0), self.destination.unwrap_or(0));
        let (parent, key, len) = self.select_list(doc)?;
        for (what, i) in [("source", source), ("destination", destination)] {
            if i >= len {
                return Err(
                    self.fail(format!("{what} index {i} is not in the list ({len} entries)"))
                );
            }
        }
        let Some(obj) = get_mut(doc, &parent).and_then(Value::as_object_mut) else {
            return Err(self.fail("the list's parent is not an object"));
        };
        for k in [key.clone(), format!("_{key}")] {
            if let Some(Value::Array(list)) = obj.get_mut(&k) {
                list.resize(len.max(list.len()), Value::Null);
                let entry = list.remove(source);
                list.insert(destination, entry);
            }
        }
        Ok(())
    }

    /// The definition, JSON property name and value of the child `name` that `add` writes
    /// into the object at `container`.
    fn resolve_child(
        &self,
        doc: &Value,
        container: &[Step],
        name: &str,
    ) -> Result<(Option<&'static ElementDef>, String, Produced), EngineError> {
        match child_definition(doc, container, name) {
            ChildDefinition::Known(el) => {
                let value = self.produce(Some(el))?;
                let key = self.json_key(el, &value)?;
                self.check_fits(el, &value)?;
                Ok((Some(el), key, value))
            }
            ChildDefinition::Unknown { parent_type } => {
                Err(self.fail(format!("{parent_type} has no element '{name}'")))
            }
            ChildDefinition::Untyped => Ok((None, name.to_string(), self.produce(None)?)),
        }
    }

    /// The JSON property name of element `el` holding `value`: `valueQuantity` for a choice.
    fn json_key(&self, el: &ElementDef, value: &Produced) -> Result<String, EngineError> {
        if !el.is_choice() {
            return Ok(el.name.clone());
        }
        match &value.ty {
            Some(ty) if el.types.iter().any(|t| t == ty) => Ok(el.json_name(ty)),
            Some(ty) => Err(self.fail(format!(
                "{} cannot hold a {ty} (allowed: {})",
                el.path,
                el.types.join(", ")
            ))),
            None => Err(self.fail(format!(
                "{} is a choice of types: give the value as a value[x] naming its type",
                el.path
            ))),
        }
    }

    /// Refuses a value whose type does not fit element `el`.
    fn check_fits(&self, el: &ElementDef, value: &Produced) -> Result<(), EngineError> {
        if el.types.is_empty() {
            return Ok(());
        }
        let defs = definitions();
        let primitive_target = el.types.iter().all(|t| defs.is_primitive(t));
        let fits = match &value.ty {
            Some(ty) => el.types.iter().any(|t| {
                t == ty
                    || kiln_fhirpath::derives_from(ty, t)
                    || kiln_fhirpath::derives_from(t, ty)
                    || (defs.is_primitive(t) && defs.is_primitive(ty))
                    || (t == "Resource" && defs.is_resource_type(ty))
            }),
            None => !primitive_target,
        };
        if fits {
            return Ok(());
        }
        let given = value.ty.as_deref().unwrap_or("complex value built from parts");
        Err(self.fail(format!("a {given} does not fit {} ({})", el.path, el.types.join(" | "))))
    }

    /// The `value` part as JSON for an element defined by `def` (when known).
    fn produce(&self, def: Option<&'static ElementDef>) -> Result<Produced, EngineError> {
        let Some(part) = self.value else { return Err(self.fail("the part 'value' is missing")) };
        let scope = def.and_then(|el| scope_of(el, None));
        produce(part, scope).map_err(|m| self.fail(m))
    }
}

/// The type whose children a value for `el` has (a backbone element, a datatype, the target
/// of a `contentReference`), for building a value from parts.
fn scope_of(
    el: &'static ElementDef,
    chosen: Option<&str>,
) -> Option<(&'static TypeDef, &'static ElementDef)> {
    let defs = definitions();
    let owner = defs.type_def(el.path.split('.').next()?)?;
    if let Some(target) = owner.content_target(el) {
        return Some((owner, target));
    }
    if owner.has_children(el) {
        return Some((owner, el));
    }
    let only = match el.types.as_slice() {
        [only] => Some(only.as_str()),
        _ => None,
    };
    let code = chosen.or(only)?;
    let td = defs.type_def(code)?;
    Some((td, td.root()))
}

/// A part's value: its `value[x]` (with `_value[x]`), its `resource`, or an object built from
/// its `part`s, typed by `scope` when known.
fn produce(
    part: &Value,
    scope: Option<(&'static TypeDef, &'static ElementDef)>,
) -> Result<Produced, String> {
    let Some(obj) = part.as_object() else { return Err("a part must be an object".into()) };
    if let Some((key, json)) = obj.iter().find(|(k, _)| is_value_key(k)) {
        let ty = value_type(&key["value".len()..]);
        let ext = obj.get(&format!("_{key}")).cloned();
        return Ok(Produced { json: json.clone(), ext, ty: Some(ty) });
    }
    if let Some((key, ext)) =
        obj.iter().find(|(k, _)| k.strip_prefix('_').is_some_and(is_value_key))
    {
        // A primitive with only an id or extensions.
        let ty = value_type(&key["_value".len()..]);
        return Ok(Produced { json: Value::Null, ext: Some(ext.clone()), ty: Some(ty) });
    }
    if let Some(resource) = obj.get("resource") {
        let ty = resource.get("resourceType").and_then(Value::as_str).map(str::to_string);
        return Ok(Produced { json: resource.clone(), ext: None, ty });
    }
    let Some(parts) = obj.get("part").and_then(Value::as_array) else {
        return Err("the value has no value[x], resource or parts".into());
    };
    let mut out = Map::new();
    for part in parts {
        let Some(name) = part.get("name").and_then(Value::as_str) else {
            return Err("every part of a value needs a name".into());
        };
        let el = scope.and_then(|(td, parent)| {
            td.property(parent, name)
                .map(|pm| pm.element)
                .or_else(|| td.children_of(parent).find(|c| c.base_name() == name))
        });
        if let (Some((td, parent)), None) = (scope, el) {
            let owner = if std::ptr::eq(parent, td.root()) { &td.name } else { &parent.path };
            return Err(format!("{owner} has no element '{name}'"));
        }
        let inner = el.and_then(|el| {
            let chosen = part_type(part);
            scope_of(el, chosen.as_deref())
        });
        let value = produce(part, inner)?;
        let key = match el {
            Some(el) if el.is_choice() => match &value.ty {
                Some(ty) if el.types.iter().any(|t| t == ty) => el.json_name(ty),
                _ => return Err(format!("{} needs a value[x] of one of its types", el.path)),
            },
            _ => name.to_string(),
        };
        let repeats = match el {
            Some(el) => el.is_array(),
            None => out.contains_key(&key),
        };
        if repeats {
            if let Some(existing) = out.get_mut(&key)
                && !existing.is_array()
            {
                *existing = Value::Array(vec![existing.take()]);
            }
            let len = list_len(&out, &key);
            insert_entry(&mut out, &key, len, value);
        } else if out.contains_key(&key) {
            return Err(format!("the part '{name}' appears twice but does not repeat"));
        } else {
            if !value.json.is_null() {
                out.insert(key.clone(), value.json);
            }
            if let Some(ext) = value.ext {
                out.insert(format!("_{key}"), ext);
            }
        }
    }
    Ok(Produced { json: Value::Object(out), ext: None, ty: None })
}

/// The type a part's `value[x]` names, if any.
fn part_type(part: &Value) -> Option<String> {
    let key = part.as_object()?.keys().find(|k| is_value_key(k))?;
    Some(value_type(&key["value".len()..]))
}

fn is_value_key(key: &str) -> bool {
    key.strip_prefix("value").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// `Date` → `date`, `Quantity` → `Quantity`.
fn value_type(suffix: &str) -> String {
    let mut chars = suffix.chars();
    let lower: String =
        chars.next().map(|c| c.to_ascii_lowercase()).into_iter().chain(chars).collect();
    if definitions().is_primitive(&lower) { lower } else { suffix.to_string() }
}

fn get<'v>(doc: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    steps.iter().try_fold(doc, |v, step| match step {
        Step::Key(k) => v.get(k.as_str()),
        Step::Index(i) => v.get(*i),
    })
}

fn get_mut<'v>(doc: &'v mut Value, steps: &[Step]) -> Option<&'v mut Value> {
    steps.iter().try_fold(doc, |v, step| match step {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::Index(i) => v.get_mut(*i),
    })
}

/// Entries of list `key` in `obj`: the longer of the values and their `_key` objects.
fn list_len(obj: &Map<String, Value>, key: &str) -> usize {
    let len = |k: &str| obj.get(k).and_then(Value::as_array).map_or(0, Vec::len);
    len(key).max(len(&format!("_{key}")))
}

/// Inserts `value` at `index` of list `key` (created if missing), keeping `_key` aligned.
fn insert_entry(obj: &mut Map<String, Value>, key: &str, index: usize, value: Produced) {
    let len = list_len(obj, key);
    let ext_key = format!("_{key}");
    let list = obj.entry(key.to_string()).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        list.resize(len, Value::Null);
        list.insert(index.min(len), value.json);
    }
    if value.ext.is_some() || obj.contains_key(&ext_key) {
        let exts = obj.entry(ext_key).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(exts) = exts {
            exts.resize(len, Value::Null);
            exts.insert(index.min(len), value.ext.unwrap_or(Value::Null));
        }
    }
    tidy_ext_list(obj, key);
}

/// Removes entry `index` of list `key` and of its `_key` list; an emptied list goes.
fn remove_entry(obj: &mut Map<String, Value>, key: &str, index: usize) {
    for k in [key.to_string(), format!("_{key}")] {
        if let Some(Value::Array(list)) = obj.get_mut(&k)
            && index < list.len()
        {
            list.remove(index);
        }
    }
    tidy_ext_list(obj, key);
}

/// Drops `key` when its list holds no value, and `_key` when it holds no extension object.
fn tidy_ext_list(obj: &mut Map<String, Value>, key: &str) {
    let ext_key = format!("_{key}");
    let empty = |v: Option<&Value>| {
        v.and_then(Value::as_array).is_some_and(|l| l.iter().all(Value::is_null))
    };
    if empty(obj.get(&ext_key)) {
        obj.shift_remove(&ext_key);
    }
    if empty(obj.get(key)) && !obj.contains_key(&ext_key) {
        obj.shift_remove(key);
    }
}

/// Makes the `_key` object (or entry) of a primitive exist, so `add` can give it an id or
/// an extension.
fn ensure_ext_object(doc: &mut Value, parent: &[Step], key: &str, index: Option<usize>) {
    let Some(Value::Object(obj)) = get_mut(doc, parent) else { return };
    let ext_key = format!("_{key}");
    match index {
        None => {
            if !obj.get(&ext_key).is_some_and(Value::is_object) {
                obj.insert(ext_key, Value::Object(Map::new()));
            }
        }
        Some(i) => {
            let len = list_len(obj, key);
            let exts = obj.entry(ext_key).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(exts) = exts {
                exts.resize(len.max(exts.len()), Value::Null);
                if !exts[i].is_object() {
                    exts[i] = Value::Object(Map::new());
                }
            }
        }
    }
}

/// After a delete inside a primitive's `_key` object: drop the object (or null the entry)
/// once it holds nothing.
fn tidy_ext_object(doc: &mut Value, parent: &[Step]) {
    let (holder, key, index) = match parent {
        [holder @ .., Step::Key(k), Step::Index(i)] => (holder, k, Some(*i)),
        [holder @ .., Step::Key(k)] => (holder, k, None),
        _ => return,
    };
    let Some(plain) = key.strip_prefix('_') else { return };
    let Some(Value::Object(obj)) = get_mut(doc, holder) else { return };
    match index {
        None => {
            if obj.get(key.as_str()).and_then(Value::as_object).is_some_and(Map::is_empty) {
                obj.shift_remove(key.as_str());
            }
        }
        Some(i) => {
            if let Some(Value::Array(exts)) = obj.get_mut(key.as_str())
                && exts.get(i).and_then(Value::as_object).is_some_and(Map::is_empty)
            {
                exts[i] = Value::Null;
            }
            tidy_ext_list(obj, plain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(parts: Value) -> Value {
        json!({"name": "operation", "part": parts})
    }

    fn patched(mut doc: Value, ops: Vec<Value>) -> Result<Value, String> {
        let patch = json!({"resourceType": "Parameters", "parameter": ops});
        apply(&mut doc, &patch).map_err(|e| e.issues()[0].diagnostics.clone())?;
        Ok(doc)
    }

    #[test]
    fn primitive_lists_keep_their_extensions_aligned() {
        let p = json!({"resourceType": "Patient", "name": [{
            "given": ["a", "b", "c"], "_given": [null, {"id": "x"}, null]}]});
        let moved = patched(
            p.clone(),
            vec![op(json!([
            {"name": "type", "valueCode": "move"},
            {"name": "path", "valueString": "Patient.name.given"},
            {"name": "source", "valueInteger": 1},
            {"name": "destination", "valueInteger": 0}]))],
        )
        .unwrap();
        assert_eq!(
            moved["name"][0],
            json!({"given": ["b", "a", "c"], "_given": [{"id": "x"}, null, null]})
        );
        let deleted = patched(
            p.clone(),
            vec![op(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.name.given[1]"}]))],
        )
        .unwrap();
        assert_eq!(deleted["name"][0], json!({"given": ["a", "c"]}));
        let inserted = patched(
            p,
            vec![op(json!([
            {"name": "type", "valueCode": "insert"},
            {"name": "path", "valueString": "Patient.name.given"},
            {"name": "index", "valueInteger": 3},
            {"name": "value", "valueString": "d", "_valueString": {"id": "d"}}]))],
        )
        .unwrap();
        assert_eq!(
            inserted["name"][0],
            json!({"given": ["a", "b", "c", "d"], "_given": [null, {"id": "x"}, null, {"id": "d"}]})
        );
    }

    #[test]
    fn replace_of_an_entry_that_only_has_extensions() {
        let p = json!({"resourceType": "Patient", "name": [{
            "given": ["a"], "_given": [null, {"id": "x"}]}]});
        let replaced = patched(
            p,
            vec![op(json!([
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.name.given[1]"},
            {"name": "value", "valueString": "b"}]))],
        )
        .unwrap();
        assert_eq!(
            replaced["name"][0],
            json!({"given": ["a", "b"], "_given": [null, {"id": "x"}]})
        );
    }

    #[test]
    fn a_primitive_without_a_value() {
        let p = json!({"resourceType": "Patient"});
        let ext = json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]});
        let added = patched(
            p,
            vec![op(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "birthDate"},
            {"name": "value", "_valueDate": ext}]))],
        )
        .unwrap();
        assert_eq!(added, json!({"resourceType": "Patient", "_birthDate": ext}));
        let replaced = patched(
            added,
            vec![op(json!([
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.birthDate"},
            {"name": "value", "valueDate": "2000-01-01"}]))],
        )
        .unwrap();
        assert_eq!(
            replaced,
            json!({"resourceType": "Patient", "birthDate": "2000-01-01", "_birthDate": ext})
        );
    }

    #[test]
    fn extensions_of_primitives() {
        let p = json!({"resourceType": "Patient", "birthDate": "2000-01-01"});
        let added = patched(
            p,
            vec![op(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient.birthDate"},
            {"name": "name", "valueString": "extension"},
            {"name": "value", "part": [
                {"name": "url", "valueUri": "http://e"},
                {"name": "value", "valueCode": "x"}]}]))],
        )
        .unwrap();
        assert_eq!(
            added["_birthDate"],
            json!({"extension": [{"url": "http://e", "valueCode": "x"}]})
        );
        let deleted = patched(
            added,
            vec![op(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.birthDate.extension('http://e')"}]))],
        )
        .unwrap();
        assert_eq!(deleted, json!({"resourceType": "Patient", "birthDate": "2000-01-01"}));
    }

    #[test]
    fn refusals_name_the_operation() {
        let p = json!({"resourceType": "Patient", "name": [{"family": "a"}, {"family": "b"}]});
        let e = patched(p.clone(), vec![
            op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.active"}])),
            op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.name"},
                {"name": "value", "valueHumanName": {"family": "c"}}])),
        ])
        .unwrap_err();
        assert!(e.starts_with("Parameters.parameter[1]: replace"), "{e}");
        assert!(e.contains("selects 2 elements"), "{e}");
        let e = patched(p, vec![op(json!([{"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "birthDate"},
            {"name": "value", "valueHumanName": {"family": "c"}}]))])
        .unwrap_err();
        assert!(e.contains("does not fit Patient.birthDate"), "{e}");
    }
}
