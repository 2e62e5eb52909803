//! The CapabilityStatement served at `/metadata`, generated from what this build implements.
//! It must never claim a feature that is not built: when a later issue adds an interaction,
//! it adds it here in the same change.

use kiln_definitions::{SearchParamType, definitions};
use serde_json::{Value, json};

use crate::{BaseUrl, Limits};

/// Interactions every resource type supports today.
const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

fn type_code(t: SearchParamType) -> &'static str {
    match t {
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

/// The search parameters of `ty` Kiln indexes (`special` ones, such as `near`, are not).
fn search_params(ty: &str) -> Vec<Value> {
    definitions()
        .search_params(ty)
        .filter(|p| p.param_type != SearchParamType::Special && p.expression.is_some())
        .map(|p| json!({"name": p.code, "definition": p.url, "type": type_code(p.param_type)}))
        .collect()
}

/// The parameters of every resource type: `Resource`'s, `_filter`, `_content`, `_text` and
/// `_list`.
fn rest_search_params() -> Vec<Value> {
    let mut params = search_params("Resource");
    params.push(json!({
        "name": "_filter",
        "type": "special",
        "documentation": "FHIR R4 _filter (search_filter.html) over the search parameters of the \
                          searched type: and, or, not (read left to right), chains, \
                          param[filter].param, _has; every operator but po, ss, sb, in and ni",
    }));
    params.push(json!({
        "name": "_content",
        "definition": "http://hl7.org/fhir/SearchParameter/Resource-content",
        "type": "string",
        "documentation": "The phrase occurs in some string value of the resource (not its \
                          resourceType, id or meta), ASCII letters compared case-insensitively; \
                          commas separate alternatives. Not indexed: the bodies of the resources \
                          the other parameters select are scanned",
    }));
    params.push(json!({
        "name": "_text",
        "definition": "http://hl7.org/fhir/SearchParameter/DomainResource-text",
        "type": "string",
        "documentation": "The phrase occurs in the narrative (text.div without its tags, XML \
                          entities decoded), ASCII letters compared case-insensitively; commas \
                          separate alternatives. Not indexed, as _content",
    }));
    params.push(json!({
        "name": "_list",
        "type": "special",
        "documentation": "_list=id: the resources that List/id (in this project) has as an \
                          entry.item; a List that does not exist lists nothing. Functional lists \
                          ($current-problems, …) are not supported",
    }));
    params
}

pub(crate) fn capability_statement(base_url: &BaseUrl, limits: &Limits) -> Value {
    let defs = definitions();
    let conditional_delete = if limits.max_conditional_delete > 1 { "multiple" } else { "single" };
    let resources: Vec<Value> = defs
        .resource_types()
        .map(|ty| {
            let mut include: Vec<String> = defs
                .search_params(ty)
                .filter(|p| p.param_type == SearchParamType::Reference)
                .map(|p| format!("{ty}:{}", p.code))
                .collect();
            include.push("*".into());
            let revinclude: Vec<String> = defs
                .resource_types()
                .flat_map(|source| {
                    defs.search_params(source)
                        .filter(move |p| {
                            p.param_type == SearchParamType::Reference
                                && p.target.iter().any(|t| t == ty)
                        })
                        .map(move |p| format!("{source}:{}", p.code))
                })
                .collect();
            json!({
                "type": ty,
                "interaction": TYPE_INTERACTIONS.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": conditional_delete,
                "searchInclude": include,
                "searchRevInclude": revinclude,
                "searchParam": search_params(ty),
                "operation": type_operations(ty),
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": kiln_store::format_instant(chrono::Utc::now()),
        "publisher": "Kiln",
        "kind": "instance",
        "software": { "name": "Kiln", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Kiln FHIR server", "url": base_url.fhir_base() },
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": true,
                "service": [{
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }],
                }],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        { "url": "authorize", "valueUri": base_url.join("oauth2/authorize") },
                        { "url": "token", "valueUri": base_url.join("oauth2/token") },
                        { "url": "introspect", "valueUri": base_url.join("oauth2/introspect") },
                        { "url": "revoke", "valueUri": base_url.join("oauth2/revoke") },
                        { "url": "manage", "valueUri": base_url.join("oauth2/apps") },
                    ],
                }],
                "description": "SMART App Launch 2.0.0 (discovery at .well-known/smart-configuration): \
                                OAuth 2.0 bearer tokens from this server's authorization server",
            },
            "resource": resources,
            "interaction": [
                { "code": "transaction" },
                { "code": "batch" },
                { "code": "search-system" },
                { "code": "history-system" },
            ],
            "searchParam": rest_search_params(),
            "operation": [
                json!({"name": "export",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                    "documentation": "Bulk Data 2.0.0: _outputFormat, _since, _until, _type, \
                                      _typeFilter, _elements, includeAssociatedData \
                                      (LatestProvenanceResources)"}),
                REINDEX.clone(),
            ],
        }],
    })
}

/// `$reindex`, at system, type and instance level (see the engine's jobs module).
static REINDEX: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
    || json!({"name": "reindex", "definition": "https://kiln.dev/fhir/OperationDefinition/reindex"}),
);

fn type_operations(ty: &str) -> Vec<Value> {
    let mut ops = vec![
        json!({"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}),
        REINDEX.clone(),
    ];
    if ty == "Patient" {
        ops.push(json!({"name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
            "documentation": "Parameters _count, _since, _type, start and end; start/end keep \
                              the resources whose care date (one date parameter per type) \
                              overlaps the window, and those without one"}));
    }
    if ty == "Patient" {
        ops.push(json!({"name": "export",
            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}));
    }
    if ty == "Group" {
        ops.push(json!({"name": "export",
            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}));
    }
    for (name, doc) in terminology_operations(ty) {
        ops.push(json!({"name": name,
            "definition": format!("http://hl7.org/fhir/OperationDefinition/{ty}-{name}"),
            "documentation": doc}));
    }
    if ty == "AsyncJob" {
        ops.push(json!({"name": "cancel", "definition": "https://kiln.dev/fhir/OperationDefinition/cancel"}));
    }
    ops
}

/// The terminology operations of `ty` (GET or POST, type and instance level; see the engine's
/// `terminology_ops` module) and what Kiln does with them.
pub(crate) fn terminology_operations(ty: &str) -> &'static [(&'static str, &'static str)] {
    match ty {
        "ValueSet" => &[
            (
                "expand",
                "url (+valueSetVersion), valueSet or an instance; filter (words in the display, \
                 or a prefix of the code, case-insensitive), count, offset, activeOnly, \
                 includeDesignations, displayLanguage. More than 1000 codes need count",
            ),
            (
                "validate-code",
                "url, valueSet or an instance; code+system(+display), coding or \
                 codeableConcept. A wrong display is valid with a message; codes of large \
                 systems not loaded here (LOINC, SNOMED CT, ...) are valid with a message",
            ),
        ],
        "CodeSystem" => &[
            (
                "lookup",
                "system+code or coding; property. Returns name, version, display, designation \
                 and properties (parent and child from the hierarchy)",
            ),
            ("validate-code", "url or an instance; code(+display), coding or codeableConcept"),
            ("subsumes", "codeA/codeB (+system) or codingA/codingB, from the hierarchy"),
        ],
        "ConceptMap" => &[(
            "translate",
            "url, conceptMap or an instance, or every ConceptMap of the project with the code; \
             code+system, coding or codeableConcept; source, target, targetsystem, reverse",
        )],
        _ => &[],
    }
}
