//! Search parameter definitions (R4 core, Medplum and US Core).

use serde::Deserialize;

/// `SearchParameter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl SearchParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchParamType::Number => "number",
            SearchParamType::Date => "date",
            SearchParamType::String => "string",
            SearchParamType::Token => "token",
            SearchParamType::Reference => "reference",
            SearchParamType::Composite => "composite",
            SearchParamType::Quantity => "quantity",
            SearchParamType::Uri => "uri",
            SearchParamType::Special => "special",
        }
    }
}

/// One part of a composite search parameter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SearchParamComponent {
    /// Canonical URL of the component's SearchParameter.
    pub definition: String,
    /// FHIRPath relative to the composite's expression.
    pub expression: String,
}

/// A search parameter: the name used in queries and how to extract its values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SearchParamDef {
    /// The name used in a query string, e.g. `birthdate`.
    pub code: String,
    pub url: String,
    /// Resource types it applies to (may be `Resource` or `DomainResource`).
    pub base: Vec<String>,
    #[serde(rename = "type")]
    pub param_type: SearchParamType,
    /// FHIRPath extracting the values (absent for a few special parameters).
    #[serde(default)]
    pub expression: Option<String>,
    /// Resource types a reference parameter may point to.
    #[serde(default)]
    pub target: Vec<String>,
    #[serde(default, rename = "component")]
    pub components: Vec<SearchParamComponent>,
}
