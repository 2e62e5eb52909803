//! Valid resources must produce no issues: core types, nested structures, Medplum types.

use kiln_validate::{Validator, validate_resource, validate_resource_as};
use serde_json::{Value, json};
use std::time::Instant;

fn assert_valid(resource: &Value) {
    let issues = validate_resource(resource);
    assert!(issues.is_empty(), "unexpected issues: {issues:#?}");
}

pub fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "pat-1",
        "meta": {
            "versionId": "1",
            "lastUpdated": "2024-01-02T03:04:05.678Z",
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
            "project": "0d3b5d6f-2b1c-4b3e-9a6e-0f4d9b8f7a11",
            "author": {"reference": "Practitioner/abc"},
            "compartment": [{"reference": "Project/0d3b5d6f"}]
        },
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Jane</div>"},
        "contained": [{"resourceType": "Organization", "id": "org1", "name": "Acme"}],
        "extension": [{
            "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "extension": [{"url": "text", "valueString": "Mixed"}]
        }],
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
        "active": true,
        "name": [{
            "use": "official",
            "family": "Doe",
            "given": ["Jane", null, "Q"],
            "_given": [null, {"extension": [{"url": "http://example.org/ext", "valueCode": "x"}]}, null]
        }],
        "telecom": [{"system": "phone", "value": "555-0100", "rank": 1}],
        "gender": "female",
        "birthDate": "1970-02-28",
        "_birthDate": {"extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
            "valueDateTime": "1970-02-28T10:15:00+01:00"
        }]},
        "deceasedDateTime": "2020-01-01",
        "multipleBirthInteger": 2,
        "photo": [{"contentType": "image/png", "data": "iVBORw0KGgo="}],
        "contact": [{
            "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
            "name": {"family": "Doe"},
            "organization": {"reference": "#org1"}
        }],
        "managingOrganization": {"reference": "#org1", "display": "Acme"}
    })
}

pub fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"
        }]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
        "subject": {"reference": "Patient/pat-1"},
        "effectiveDateTime": "2024-05-06T07:08:09-05:00",
        "issued": "2024-05-06T07:10:00Z",
        "valueQuantity": {"value": 72.0, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "referenceRange": [{"low": {"value": 60}, "high": {"value": 100}}],
        "component": [{
            "code": {"text": "rhythm"},
            "valueCodeableConcept": {"text": "regular"}
        }, {
            "code": {"text": "time"},
            "valueTime": "07:08:09"
        }]
    })
}

#[test]
fn valid_patient() {
    assert_valid(&patient());
}

#[test]
fn valid_observation() {
    assert_valid(&observation());
}

#[test]
fn valid_bundle() {
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient"}
            },
            {
                "resource": observation(),
                "request": {"method": "PUT", "url": "Observation/1", "ifMatch": "W/\"1\""}
            },
            {"request": {"method": "DELETE", "url": "Observation/2"}}
        ]
    });
    assert_valid(&bundle);
}

#[test]
fn valid_nested_definitions() {
    let questionnaire = json!({
        "resourceType": "Questionnaire",
        "status": "active",
        "item": [{
            "linkId": "1",
            "type": "group",
            "item": [{"linkId": "1.1", "type": "string", "item": [{"linkId": "1.1.1", "type": "display", "text": "x"}]}]
        }]
    });
    assert_valid(&questionnaire);
    let parameters = json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": {"resourceType": "Patient", "active": false}},
            {"name": "count", "valueInteger": 3},
            {"name": "group", "part": [{"name": "nested", "valueString": "x", "part": [{"name": "deep", "valueBoolean": true}]}]}
        ]
    });
    assert_valid(&parameters);
}

#[test]
fn valid_medplum_resources() {
    assert_valid(&json!({
        "resourceType": "Project",
        "name": "Test project",
        "strictMode": true,
        "features": ["bots", "email"],
        "setting": [{"name": "limit", "valueInteger": 5}],
        "secret": [{"name": "key", "valueString": "s3cr3t"}]
    }));
    assert_valid(&json!({
        "resourceType": "User",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": "ada@example.com",
        "project": {"reference": "Project/1"}
    }));
    assert_valid(&json!({
        "resourceType": "ClientApplication",
        "name": "app",
        "secret": "abc",
        "redirectUri": "https://example.com/cb"
    }));
    assert_valid(&json!({
        "resourceType": "AccessPolicy",
        "name": "read only",
        "resource": [{"resourceType": "Patient", "readonly": true}]
    }));
}

#[test]
fn expected_type() {
    assert!(validate_resource_as(&patient(), "Patient").is_empty());
    assert!(validate_resource_as(&patient(), "DomainResource").is_empty());
    assert!(validate_resource_as(&patient(), "Resource").is_empty());
    let issues = validate_resource_as(&patient(), "Observation");
    assert_eq!(issues.len(), 1, "{issues:?}");
}

#[test]
fn validate_value_of_datatype() {
    let v = Validator::new();
    assert!(v.validate_value(&json!({"family": "Doe"}), "HumanName", "Patient.name[0]").is_empty());
    let issues = v.validate_value(&json!({"family": 1}), "HumanName", "Patient.name[0]");
    assert_eq!(issues[0].expression.as_deref(), Some("Patient.name[0].family"));
}

#[test]
fn validation_is_fast() {
    let resource = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient()}, {"resource": observation()}]
    });
    let size = serde_json::to_vec(&resource).unwrap().len();
    assert!(size > 1500, "{size}");
    let v = Validator::new();
    v.validate(&resource); // warm up the definitions
    let runs = 200;
    let start = Instant::now();
    for _ in 0..runs {
        assert!(v.validate(&resource).is_empty());
    }
    let per_call = start.elapsed() / runs;
    println!("validating a {size}-byte Bundle takes {per_call:?}");
    // Microseconds in release; keep the bound loose for unoptimised builds on a busy machine.
    assert!(per_call.as_millis() < 5, "validation took {per_call:?}");
}
