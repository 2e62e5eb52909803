//! Valid resources shared by the integration tests.

use serde_json::{Value, json};

/// A Patient using most structural features: contained, extensions, `_element` siblings,
/// parallel arrays, choice types, backbone elements and Medplum `meta` fields.
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
