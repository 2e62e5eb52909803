//! The CapabilityStatement served at `/metadata`, generated from what this build implements.
//! It must never claim a feature that is not built: when a later issue adds an interaction,
//! it adds it here in the same change.

use kiln_definitions::definitions;
use serde_json::{Value, json};

use crate::BaseUrl;

/// Interactions every resource type supports today.
const TYPE_INTERACTIONS: &[&str] =
    &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create"];

pub(crate) fn capability_statement(base_url: &BaseUrl) -> Value {
    let resources: Vec<Value> = definitions()
        .resource_types()
        .map(|ty| {
            json!({
                "type": ty,
                "interaction": TYPE_INTERACTIONS.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": false,
                "conditionalRead": "not-supported",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "operation": [{
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                }],
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
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "patchFormat": ["application/json-patch+json"],
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
                        { "url": "token", "valueUri": base_url.join("oauth2/token") },
                    ],
                }],
                "description": "OAuth 2.0 bearer tokens issued by this server's /oauth2/token endpoint",
            },
            "resource": resources,
            "interaction": [
                { "code": "transaction" },
                { "code": "batch" },
                { "code": "history-system" },
            ],
        }],
    })
}
