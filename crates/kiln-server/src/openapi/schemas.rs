//! JSON Schemas (2020-12, as OpenAPI 3.1 uses them) for every resource type and datatype of
//! the embedded definitions, the ones the validator checks resources against.
//!
//! - a primitive is a JSON type, with the specification's regex where it is short and Kiln
//!   checks the same rule (dates, times, ids, codes, URIs);
//! - a complex type or resource is an object: an array where the element repeats, one
//!   property per type of a choice element (`valueQuantity`, `valueString`, …), `required` for
//!   elements with a minimum of 1, and a `$ref` to the shared schema of each datatype;
//! - a BackboneElement is its own schema named by its path (`Patient.contact`), so that a
//!   `contentReference` (`Questionnaire.item.item`) is a `$ref` to it;
//! - a resource has `resourceType` as a `const`; `Resource` (contained resources, Bundle
//!   entries) is any object with a `resourceType`.
//!
//! Objects stay open (no `additionalProperties: false`): the `_name` siblings of primitives
//! carrying their `id`/`extension` are allowed and not described.

use kiln_definitions::{ElementDef, TypeDef, TypeKind, definitions};
use serde_json::{Map, Value, json};

/// The schemas, by name: primitives, datatypes, resources and their BackboneElements.
pub(crate) fn all() -> Map<String, Value> {
    let defs = definitions();
    let mut types: Vec<&TypeDef> = defs.type_defs().collect();
    types.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Map::new();
    for td in types {
        match td.kind {
            TypeKind::PrimitiveType => {
                out.insert(td.name.clone(), primitive(&td.name));
            }
            TypeKind::ComplexType => object(td, td.root(), &mut out),
            TypeKind::Resource if !td.is_abstract => object(td, td.root(), &mut out),
            TypeKind::Resource | TypeKind::Logical => {}
        }
    }
    out.insert(
        "Resource".into(),
        json!({
            "description": "Any FHIR resource: its resourceType names the schema it follows",
            "type": "object",
            "required": ["resourceType"],
            "properties": {"resourceType": {"type": "string"}},
        }),
    );
    out
}

/// A `$ref` to a schema of this document.
pub(crate) fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Primitive types whose regex (from the definitions) goes into the schema.
const PATTERNED: &[&str] = &[
    "date",
    "dateTime",
    "instant",
    "time",
    "id",
    "code",
    "oid",
    "uuid",
    "uri",
    "url",
    "canonical",
];

fn primitive(name: &str) -> Value {
    let defs = definitions();
    let mut schema = match name {
        "boolean" => json!({"type": "boolean"}),
        "decimal" => json!({"type": "number"}),
        "integer" => json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}),
        "positiveInt" => json!({"type": "integer", "minimum": 1, "maximum": i32::MAX}),
        "unsignedInt" => json!({"type": "integer", "minimum": 0, "maximum": i32::MAX}),
        _ => json!({"type": "string"}),
    };
    if PATTERNED.contains(&name)
        && let Some(regex) = defs.primitive(name).and_then(|p| p.regex.as_deref())
    {
        schema["pattern"] = Value::String(format!("^({regex})$"));
    }
    schema
}

/// The schema of a type code as a property value.
fn type_schema(code: &str) -> Value {
    let defs = definitions();
    match code {
        // An R5-style 64-bit integer (one Medplum element), written as a JSON string.
        "integer64" => json!({"type": "string", "pattern": "^-?([0]|([1-9][0-9]*))$"}),
        "Resource" | "DomainResource" => reference("Resource"),
        _ if defs.type_def(code).is_some() => reference(code),
        _ => json!({}),
    }
}

/// The object schema of `element` (a type's root or a BackboneElement) under its path's name,
/// and those of the BackboneElements inside it.
fn object(td: &TypeDef, element: &ElementDef, out: &mut Map<String, Value>) {
    let mut properties = Map::new();
    let mut required: Vec<Value> = Vec::new();
    let is_resource_root = td.kind == TypeKind::Resource && element.index() == 0;
    if is_resource_root {
        properties.insert("resourceType".into(), json!({ "const": td.name }));
        required.push(Value::String("resourceType".into()));
    }
    for child in td.children_of(element) {
        if child.max == Some(0) {
            continue;
        }
        if child.is_choice() {
            for code in &child.types {
                properties.insert(child.json_name(code), repeated(child, type_schema(code)));
            }
            continue;
        }
        let value = if let Some(target) = td.content_target(child) {
            reference(&target.path)
        } else if td.has_children(child) {
            object(td, child, out);
            reference(&child.path)
        } else {
            match child.types.as_slice() {
                [code] => type_schema(code),
                _ => json!({}),
            }
        };
        properties.insert(child.name.clone(), repeated(child, value));
        if child.min >= 1 {
            required.push(Value::String(child.name.clone()));
        }
    }
    let mut schema = json!({"type": "object"});
    if is_resource_root {
        schema["description"] = Value::String(td.url.clone());
    }
    if !required.is_empty() {
        schema["required"] = Value::Array(required);
    }
    schema["properties"] = Value::Object(properties);
    let name = if element.index() == 0 { td.name.clone() } else { element.path.clone() };
    out.insert(name, schema);
}

fn repeated(element: &ElementDef, item: Value) -> Value {
    if element.is_array() { json!({"type": "array", "items": item}) } else { item }
}
