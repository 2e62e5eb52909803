//! Structure definitions: resource types, datatypes and their snapshot elements, with
//! precomputed child and JSON-property lookups for fast validation.

use crate::ConstraintId;
use std::collections::HashMap;

/// What a StructureDefinition describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TypeKind {
    PrimitiveType,
    ComplexType,
    Resource,
    Logical,
}

impl TypeKind {
    pub(crate) fn parse(kind: &str) -> TypeKind {
        match kind {
            "primitive-type" => TypeKind::PrimitiveType,
            "resource" => TypeKind::Resource,
            "logical" => TypeKind::Logical,
            _ => TypeKind::ComplexType,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TypeKind::PrimitiveType => "primitive-type",
            TypeKind::ComplexType => "complex-type",
            TypeKind::Resource => "resource",
            TypeKind::Logical => "logical",
        }
    }
}

/// How a primitive type's value is written in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JsonKind {
    String,
    Number,
    Boolean,
}

/// A FHIR primitive type (`string`, `date`, `positiveInt`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimitiveDef {
    pub name: String,
    pub json: JsonKind,
    /// The regex the specification gives for the value, if any (informative).
    pub regex: Option<String>,
}

/// One element of a type's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementDef {
    /// Full path, e.g. `Patient.name` or `Observation.value[x]`.
    pub path: String,
    /// Last path segment, e.g. `name` or `value[x]`.
    pub name: String,
    pub min: u32,
    /// `None` means unbounded (`*`).
    pub max: Option<u32>,
    /// Type codes; several for choice elements, none for the root or a `contentReference`.
    pub types: Vec<String>,
    /// Type names that a `Reference`/`canonical` may point to (from `targetProfile`).
    pub target_types: Vec<String>,
    /// E.g. `#Questionnaire.item`, for elements that reuse another element's definition.
    pub content_reference: Option<String>,
    pub is_summary: bool,
    pub is_modifier: bool,
    /// Canonical URL (without version) of the value set of a `required` binding.
    pub required_binding: Option<String>,
    /// The element's invariants, as indexes into [`crate::Definitions::constraints`]. For a
    /// datatype's or resource's root element these are the type's own invariants (`per-1` on
    /// `Period`); an element *of* that type (`Encounter.period`) does not repeat them.
    pub constraints: Vec<ConstraintId>,
    pub(crate) index: usize,
}

impl ElementDef {
    /// Position of the element in its type's [`TypeDef::elements`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the element repeats (max > 1 or `*`), i.e. is a JSON array.
    pub fn is_array(&self) -> bool {
        self.max != Some(1) && self.max != Some(0)
    }

    /// Whether this is a choice element (`value[x]`).
    pub fn is_choice(&self) -> bool {
        self.name.ends_with("[x]")
    }

    /// The name without the `[x]` suffix (`value` for `value[x]`).
    pub fn base_name(&self) -> &str {
        self.name.strip_suffix("[x]").unwrap_or(&self.name)
    }

    /// The JSON property name for one of this element's types (`valueQuantity`).
    pub fn json_name(&self, type_code: &str) -> String {
        if self.is_choice() { choice_name(self.base_name(), type_code) } else { self.name.clone() }
    }
}

/// `value` + `dateTime` -> `valueDateTime`.
fn choice_name(base: &str, type_code: &str) -> String {
    let mut out = String::with_capacity(base.len() + type_code.len());
    out.push_str(base);
    let mut chars = type_code.chars();
    if let Some(first) = chars.next() {
        out.extend(first.to_uppercase());
        out.push_str(chars.as_str());
    }
    out
}

/// The element a JSON property name stands for, with the type it selects.
#[derive(Debug, Clone, Copy)]
pub struct PropertyMatch<'a> {
    pub element: &'a ElementDef,
    /// The type of the value: the chosen type for a choice element, the only type otherwise,
    /// `None` for a `contentReference` element (see [`TypeDef::content_target`]).
    pub type_code: Option<&'a str>,
}

/// A resource type, datatype or logical model.
#[derive(Debug, Clone)]
pub struct TypeDef {
    pub name: String,
    pub kind: TypeKind,
    pub is_abstract: bool,
    /// Name of the base type (`DomainResource` for `Patient`), if any.
    pub base: Option<String>,
    /// Canonical URL of the StructureDefinition.
    pub url: String,
    /// Dense number of the type, below [`crate::Definitions::type_count`] (for side tables).
    pub(crate) ordinal: usize,
    elements: Vec<ElementDef>,
    by_path: HashMap<String, usize>,
    children: Vec<Vec<usize>>,
    /// Per element: JSON property name -> (child element index, index into its types).
    properties: Vec<HashMap<Box<str>, (u32, u32)>>,
}

const NO_TYPE: u32 = u32::MAX;

impl TypeDef {
    pub(crate) fn new(
        name: String,
        kind: TypeKind,
        is_abstract: bool,
        base: Option<String>,
        url: String,
        mut elements: Vec<ElementDef>,
    ) -> TypeDef {
        let mut by_path = HashMap::with_capacity(elements.len());
        for (i, el) in elements.iter_mut().enumerate() {
            el.index = i;
            by_path.insert(el.path.clone(), i);
        }
        let mut children = vec![Vec::new(); elements.len()];
        let mut properties: Vec<HashMap<Box<str>, (u32, u32)>> =
            vec![HashMap::new(); elements.len()];
        for (i, el) in elements.iter().enumerate() {
            let Some((parent_path, _)) = el.path.rsplit_once('.') else { continue };
            let Some(&parent) = by_path.get(parent_path) else { continue };
            children[parent].push(i);
            let props = &mut properties[parent];
            if el.is_choice() {
                for (t, code) in el.types.iter().enumerate() {
                    props.insert(el.json_name(code).into(), (i as u32, t as u32));
                }
            } else {
                let t = if el.types.is_empty() { NO_TYPE } else { 0 };
                props.insert(el.name.as_str().into(), (i as u32, t));
            }
        }
        for props in &mut properties {
            props.shrink_to_fit();
        }
        TypeDef {
            name,
            kind,
            is_abstract,
            base,
            url,
            ordinal: 0,
            elements,
            by_path,
            children,
            properties,
        }
    }

    /// Dense number of this type: `0..Definitions::type_count()`, stable for the life of the
    /// process (for per-type side tables indexed without hashing names).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The root element (path = type name).
    pub fn root(&self) -> &ElementDef {
        &self.elements[0]
    }

    /// All snapshot elements in definition order.
    pub fn elements(&self) -> &[ElementDef] {
        &self.elements
    }

    /// Element by exact path, e.g. `Patient.contact.name` or `Observation.value[x]`.
    pub fn element(&self, path: &str) -> Option<&ElementDef> {
        self.by_path.get(path).map(|&i| &self.elements[i])
    }

    /// Direct children of the element at `path` (empty if unknown).
    pub fn children(&self, path: &str) -> impl Iterator<Item = &ElementDef> {
        let indexes = self.by_path.get(path).map(|&i| self.children[i].as_slice()).unwrap_or(&[]);
        indexes.iter().map(|&i| &self.elements[i])
    }

    /// Direct children of an element of this type.
    pub fn children_of(&self, element: &ElementDef) -> impl Iterator<Item = &ElementDef> {
        let indexes = self.children.get(element.index).map(Vec::as_slice).unwrap_or(&[]);
        indexes.iter().map(|&i| &self.elements[i])
    }

    /// Whether an element of this type has children defined inline (root or BackboneElement).
    pub fn has_children(&self, element: &ElementDef) -> bool {
        self.children.get(element.index).is_some_and(|c| !c.is_empty())
    }

    /// Resolves a JSON property name (`valueQuantity`, `name`) inside `parent`, which must
    /// be an element of this type. Choice elements only match with one of their types.
    pub fn property(&self, parent: &ElementDef, json_name: &str) -> Option<PropertyMatch<'_>> {
        let &(element, t) = self.properties.get(parent.index)?.get(json_name)?;
        let element = &self.elements[element as usize];
        let type_code = if t == NO_TYPE { None } else { Some(element.types[t as usize].as_str()) };
        Some(PropertyMatch { element, type_code })
    }

    /// The choice element of `parent` whose base name prefixes `json_name` (for explaining
    /// why `valueFoo` is wrong): `valueFoo` -> `value[x]`.
    pub fn choice_for(&self, parent: &ElementDef, json_name: &str) -> Option<&ElementDef> {
        self.children_of(parent).find(|el| {
            el.is_choice()
                && json_name.len() > el.base_name().len()
                && json_name.starts_with(el.base_name())
                && json_name.as_bytes()[el.base_name().len()].is_ascii_uppercase()
        })
    }

    /// The element a `contentReference` (`#Questionnaire.item`) points to, in this type.
    pub fn content_target(&self, element: &ElementDef) -> Option<&ElementDef> {
        let reference = element.content_reference.as_deref()?;
        let path = reference.rsplit_once('#').map_or(reference, |(_, p)| p);
        self.element(path)
    }
}
