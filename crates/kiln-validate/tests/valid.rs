//! Valid resources must produce no issues: core types, nested structures, Medplum types.

use kiln_validate::{Validator, validate_resource, validate_resource_as};
use serde_json::{Value, json};
use std::time::Instant;

mod common;
use common::{observation, patient};

fn assert_valid(resource: &Value) {
    let issues = validate_resource(resource);
    assert!(issues.is_empty(), "unexpected issues: {issues:#?}");
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
