//! The values an expression produces ([`Item`]): FHIR elements of a resource ([`Node`], which
//! remember their FHIR type) and System values (Boolean, String, Integer, Decimal, Date,
//! DateTime, Time, Quantity). Also type tests for `is`, `as` and `ofType`.

use crate::ast::TypeSpec;
use crate::datetime::{Date, DateTime, Time};
use crate::quantity::Quantity;
use kiln_definitions::{ElementDef, TypeDef, definitions};
use rust_decimal::Decimal;
use serde_json::Value;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

/// JSON borrowed from the caller's resource, or owned (resolved resources, type infos).
#[derive(Debug, Clone)]
pub(crate) enum Json<'a> {
    Borrowed(&'a Value),
    Shared(Arc<Value>),
}

impl Deref for Json<'_> {
    type Target = Value;
    fn deref(&self) -> &Value {
        match self {
            Json::Borrowed(v) => v,
            Json::Shared(v) => v,
        }
    }
}

impl<'a> Json<'a> {
    /// A child value, borrowed when possible, copied out of owned JSON otherwise.
    pub(crate) fn child(&self, f: impl FnOnce(&Value) -> Option<&Value>) -> Option<Json<'a>> {
        match self {
            Json::Borrowed(v) => f(v).map(Json::Borrowed),
            Json::Shared(v) => f(v).map(|c| Json::Shared(Arc::new(c.clone()))),
        }
    }
}

/// Where a node sits in the definitions: the type that defines its children and the element.
pub(crate) type ElementRef = (&'static TypeDef, &'static ElementDef);

/// An element of a resource (or a resource): its JSON value, the `_name` sibling that holds
/// a primitive's `id`/`extension`, its FHIR type and its path (`Patient.name[0].given[1]`).
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub(crate) value: Option<Json<'a>>,
    pub(crate) extension: Option<Json<'a>>,
    pub(crate) ty: Option<&'static str>,
    pub(crate) def: Option<ElementRef>,
    /// `None` when paths are not tracked (see [`crate::Context::without_paths`]): then no
    /// child has one either, and navigation formats no strings.
    pub(crate) path: Option<Arc<str>>,
}

impl<'a> Node<'a> {
    /// A resource as a node, typed by its `resourceType`.
    pub fn resource(value: &'a Value) -> Node<'a> {
        Node::from_json(Json::Borrowed(value), None)
    }

    /// A resource as a node whose descendants have no paths ([`Node::path`] is empty).
    pub(crate) fn resource_without_path(value: &'a Value) -> Node<'a> {
        let rt = value.get("resourceType").and_then(Value::as_str);
        let td = rt.and_then(|t| definitions().type_def(t));
        Node {
            value: Some(Json::Borrowed(value)),
            extension: None,
            ty: td.map(|t| t.name.as_str()),
            def: td.map(|t| (t, t.root())),
            path: None,
        }
    }

    pub(crate) fn from_json(value: Json<'a>, path: Option<Arc<str>>) -> Node<'a> {
        let rt = value.get("resourceType").and_then(Value::as_str);
        let td = rt.and_then(|t| definitions().type_def(t));
        let path = Some(path.unwrap_or_else(|| Arc::from(rt.unwrap_or(""))));
        Node {
            value: Some(value),
            extension: None,
            ty: td.map(|t| t.name.as_str()),
            def: td.map(|t| (t, t.root())),
            path,
        }
    }

    /// The JSON value; `None` for a primitive that only has an id or extensions (`_birthDate`).
    pub fn value(&self) -> Option<&Value> {
        self.value.as_deref()
    }

    /// A primitive's `_name` sibling object (its `id` and `extension`), if present.
    pub fn extension_element(&self) -> Option<&Value> {
        self.extension.as_deref()
    }

    /// The FHIR type (`HumanName`, `Quantity` for `valueQuantity`, `code`), when known.
    pub fn fhir_type(&self) -> Option<&'static str> {
        self.ty
    }

    /// The instance path, e.g. `Patient.name[0].given[1]`; empty when the evaluation did not
    /// track paths.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or_default()
    }

    fn is_primitive_type(&self) -> bool {
        self.ty.is_some_and(|t| definitions().is_primitive(t))
    }
}

/// One value in a FHIRPath collection.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// An element of a resource, with its FHIR type.
    Node(Node<'a>),
    Boolean(bool),
    String(String),
    Integer(i64),
    Decimal(Decimal),
    Date(Date),
    DateTime(DateTime),
    Time(Time),
    Quantity(Quantity),
}

const QUANTITY_TYPES: [&str; 7] =
    ["Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"];

/// Whether `name` is a FHIRPath System type.
pub(crate) fn is_system_type(name: &str) -> bool {
    matches!(
        name,
        "Any"
            | "Boolean"
            | "String"
            | "Integer"
            | "Decimal"
            | "Date"
            | "DateTime"
            | "Time"
            | "Quantity"
    )
}

/// Parses a JSON number (kept as text thanks to `arbitrary_precision`) exactly.
pub(crate) fn json_decimal(n: &serde_json::Number) -> Option<Decimal> {
    let s = n.to_string();
    Decimal::from_str(&s).ok().or_else(|| Decimal::from_scientific(&s).ok())
}

impl<'a> Item<'a> {
    /// A resource as an item (see [`Node::resource`]).
    pub fn resource(value: &'a Value) -> Item<'a> {
        Item::Node(Node::resource(value))
    }

    /// The System value of a primitive element (`Patient.birthDate` → a `Date`), or the item
    /// itself when it already is one. `None` for complex elements and value-less primitives.
    pub fn to_system(&self) -> Option<Item<'a>> {
        let Item::Node(node) = self else { return Some(self.clone()) };
        let value = node.value()?;
        let ty = node.ty.unwrap_or("");
        let item = match value {
            Value::Bool(b) => Item::Boolean(*b),
            Value::Number(n) => {
                let text = n.to_string();
                let integral = !text.contains(['.', 'e', 'E']);
                match (ty, integral) {
                    ("decimal", _) | (_, false) => Item::Decimal(json_decimal(n)?),
                    _ => text
                        .parse()
                        .map(Item::Integer)
                        .or_else(|_| json_decimal(n).map(Item::Decimal).ok_or(()))
                        .ok()?,
                }
            }
            Value::String(s) => {
                let parsed = match ty {
                    "date" => Date::parse(s).map(Item::Date),
                    "dateTime" | "instant" => DateTime::parse(s).map(Item::DateTime),
                    "time" => Time::parse(s).map(Item::Time),
                    _ => None,
                };
                parsed.unwrap_or_else(|| Item::String(s.clone()))
            }
            Value::Object(_) if QUANTITY_TYPES.contains(&ty) => {
                Item::Quantity(node_quantity(value)?)
            }
            _ => return None,
        };
        Some(item)
    }

    /// Text of a string-like item (System String or a FHIR primitive held as a JSON string).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::String(s) => Some(s),
            Item::Node(n) => n.value().and_then(Value::as_str),
            _ => None,
        }
    }

    /// The type name for messages and `type()`: `(namespace, name)`.
    pub fn type_name(&self) -> (&'static str, &'static str) {
        match self {
            Item::Node(n) => match (n.ty, self.to_system()) {
                (Some(t), _) => ("FHIR", t),
                (None, Some(sys)) if !matches!(sys, Item::Node(_)) => sys.type_name(),
                _ => ("FHIR", "Element"),
            },
            Item::Boolean(_) => ("System", "Boolean"),
            Item::String(_) => ("System", "String"),
            Item::Integer(_) => ("System", "Integer"),
            Item::Decimal(_) => ("System", "Decimal"),
            Item::Date(_) => ("System", "Date"),
            Item::DateTime(_) => ("System", "DateTime"),
            Item::Time(_) => ("System", "Time"),
            Item::Quantity(_) => ("System", "Quantity"),
        }
    }

    /// `is`: the item's type is `spec` or derives from it.
    pub(crate) fn is_type(&self, spec: &TypeSpec) -> bool {
        self.matches_type(spec, false)
    }

    /// `as`/`ofType`: like `is`, but FHIR primitive types must match exactly (`code` is not
    /// returned by `as(string)`), as the R4 test suite expects.
    pub(crate) fn is_type_exact(&self, spec: &TypeSpec) -> bool {
        self.matches_type(spec, true)
    }

    fn matches_type(&self, spec: &TypeSpec, exact_primitives: bool) -> bool {
        let (fhir_ok, sys_ok, name) = match spec {
            TypeSpec::System(n) => (false, true, n),
            TypeSpec::Fhir(n) => (true, false, n),
            TypeSpec::Unqualified(n) => (true, true, n),
        };
        if let Item::Node(node) = self {
            if let Some(ty) = node.ty {
                if !fhir_ok {
                    return false;
                }
                if exact_primitives && node.is_primitive_type() {
                    return ty == name;
                }
                return derives_from(ty, name);
            }
            // An untyped element: judge by its JSON value.
            return match self.to_system() {
                Some(sys) if !matches!(sys, Item::Node(_)) => {
                    sys.matches_type(spec, exact_primitives)
                }
                _ => false,
            };
        }
        sys_ok && (self.type_name().1 == name || name == "Any")
    }
}

/// Whether FHIR type `ty` is `ancestor` or a specialisation of it.
pub fn derives_from(ty: &str, ancestor: &str) -> bool {
    let defs = definitions();
    let mut current = Some(ty);
    for _ in 0..16 {
        let Some(t) = current else { return false };
        if t == ancestor {
            return true;
        }
        current = defs.type_def(t).and_then(|d| d.base.as_deref());
    }
    false
}

/// A FHIR Quantity-like element as a System Quantity (UCUM `code`, else `unit`).
pub(crate) fn node_quantity(value: &Value) -> Option<Quantity> {
    let number = value.get("value")?.as_number()?;
    let unit =
        value.get("code").or_else(|| value.get("unit")).and_then(Value::as_str).unwrap_or("1");
    Some(Quantity::new(json_decimal(number)?, unit))
}

impl fmt::Display for Item<'_> {
    /// The `toString()` form; elements print their JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Node(n) => match (n.value(), self.to_system()) {
                (Some(Value::String(s)), _) => f.write_str(s),
                (_, Some(sys)) if !matches!(sys, Item::Node(_)) => sys.fmt(f),
                (Some(v), _) => write!(f, "{v}"),
                (None, _) => Ok(()),
            },
            Item::Boolean(b) => write!(f, "{b}"),
            Item::String(s) => f.write_str(s),
            Item::Integer(i) => write!(f, "{i}"),
            Item::Decimal(d) => write!(f, "{d}"),
            Item::Date(d) => write!(f, "{d}"),
            Item::DateTime(d) => write!(f, "{d}"),
            Item::Time(t) => write!(f, "{t}"),
            Item::Quantity(q) => write!(f, "{q}"),
        }
    }
}
