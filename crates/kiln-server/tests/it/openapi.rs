//! `GET /openapi.json`: served without a token, an OpenAPI 3.1 document whose paths follow the
//! CapabilityStatement and the feature switches, whose `$ref`s all resolve, gzip on request.

use std::collections::HashSet;
use std::io::Read;

use kiln_engine::Registration;
use serde_json::Value;

use crate::support::{Options, TestServer};

async fn fetch(server: &TestServer) -> Value {
    let res = server.client.get(server.url("openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    assert!(res.headers().get("content-encoding").is_none());
    res.json().await.unwrap()
}

/// Every `"$ref": "#/…"` under `value`, with where it was found.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref"
                    && let Some(target) = v.as_str()
                {
                    out.push((at.clone(), target));
                } else {
                    refs(v, format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn openapi_document_describes_the_fhir_api_and_its_refs_resolve() {
    let server = TestServer::start().await;
    let doc = fetch(&server).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
    assert_eq!(doc["servers"][0]["url"], server.base.trim_end_matches('/'));

    // Every `$ref` points inside the document (a JSON pointer), and the document has no other.
    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    assert!(found.len() > 1000, "{} refs", found.len());
    for (at, target) in &found {
        let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("{at}: {target}"));
        assert!(doc.pointer(pointer).is_some(), "{at}: {target} is dangling");
    }

    // Every resource type of the CapabilityStatement has its paths.
    let (status, capability) = server.get_json("metadata").await;
    assert_eq!(status, 200);
    let paths = &doc["paths"];
    let types = capability["rest"][0]["resource"].as_array().unwrap();
    assert!(types.len() > 140);
    for resource in types {
        let ty = resource["type"].as_str().unwrap();
        for path in [
            format!("/fhir/R4/{ty}"),
            format!("/fhir/R4/{ty}/{{id}}"),
            format!("/fhir/R4/{ty}/_history"),
            format!("/fhir/R4/{ty}/_search"),
            format!("/fhir/R4/{ty}/{{id}}/_history"),
            format!("/fhir/R4/{ty}/{{id}}/_history/{{vid}}"),
            format!("/fhir/R4/{ty}/$validate"),
        ] {
            assert!(paths.get(&path).is_some(), "no {path}");
        }
        let instance = &paths[format!("/fhir/R4/{ty}/{{id}}")];
        for method in ["get", "put", "patch", "delete"] {
            assert!(instance.get(method).is_some(), "no {method} {ty}/{{id}}");
        }
        let read = &instance["get"]["responses"]["200"]["content"]["application/fhir+json"];
        assert_eq!(read["schema"]["$ref"], format!("#/components/schemas/{ty}"));
        // PATCH takes JSON Patch or FHIRPath Patch (a Parameters resource).
        let patch = &instance["patch"]["requestBody"]["content"];
        assert!(patch.get("application/json-patch+json").is_some(), "{ty}: {patch}");
        assert_eq!(
            patch["application/fhir+json"]["schema"]["$ref"], "#/components/schemas/Parameters",
            "{ty}"
        );
        let schema = &doc["components"]["schemas"][ty];
        assert_eq!(schema["properties"]["resourceType"]["const"], ty, "{ty}");
        // The search takes the type's own parameters (those the CapabilityStatement lists).
        let search: HashSet<String> = paths[format!("/fhir/R4/{ty}")]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| match p["$ref"].as_str() {
                Some(r) => r.rsplit('/').next().unwrap().to_owned(),
                None => p["name"].as_str().unwrap().to_owned(),
            })
            .collect();
        for param in resource["searchParam"].as_array().unwrap() {
            let name = param["name"].as_str().unwrap();
            assert!(search.contains(name), "{ty} search lacks {name}");
        }
        // Every operation the CapabilityStatement names has a route in the document.
        for op in resource["operation"].as_array().unwrap() {
            let name = op["name"].as_str().unwrap();
            let served = paths.as_object().unwrap().keys().any(|p| {
                p.starts_with(&format!("/fhir/R4/{ty}/")) && p.ends_with(&format!("/${name}"))
            });
            assert!(served, "{ty} ${name} has no path");
        }
    }
    for op in capability["rest"][0]["operation"].as_array().unwrap() {
        let name = op["name"].as_str().unwrap();
        assert!(paths.get(format!("/fhir/R4/${name}")).is_some(), "no path for ${name}");
    }

    // Operation ids are unique.
    let mut ids = HashSet::new();
    for item in paths.as_object().unwrap().values() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
        }
    }

    // A few facts, by hand.
    let birthdate = paths["/fhir/R4/Patient"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "birthdate")
        .unwrap();
    assert_eq!(birthdate["in"], "query");
    assert_eq!(birthdate["description"], "date: Patient.birthDate");
    let schemas = &doc["components"]["schemas"];
    let observation = &schemas["Observation"];
    assert_eq!(observation["properties"]["valueQuantity"]["$ref"], "#/components/schemas/Quantity");
    assert_eq!(observation["properties"]["valueString"]["$ref"], "#/components/schemas/string");
    assert!(observation["required"].as_array().unwrap().contains(&"status".into()));
    assert_eq!(schemas["Patient"]["properties"]["name"]["type"], "array");
    assert_eq!(
        schemas["Patient"]["properties"]["contact"]["items"]["$ref"],
        "#/components/schemas/Patient.contact"
    );
    assert_eq!(
        schemas["Questionnaire.item"]["properties"]["item"]["items"]["$ref"],
        "#/components/schemas/Questionnaire.item"
    );
    assert_eq!(schemas["boolean"]["type"], "boolean");
    assert_eq!(schemas["positiveInt"]["minimum"], 1);
    assert!(schemas["date"]["pattern"].as_str().unwrap().starts_with("^("));
    for path in [
        "/fhir/R4",
        "/fhir/R4/metadata",
        "/fhir/R4/$export",
        "/fhir/R4/Patient/$export",
        "/fhir/R4/Group/{id}/$export",
        "/fhir/R4/Patient/{id}/$everything",
        "/fhir/R4/Patient/{id}/{type}",
        "/fhir/R4/AsyncJob/{id}/$cancel",
        "/fhir/R4/job/{id}/status",
        "/auth/login",
        "/auth/newuser",
        "/oauth2/token",
        "/oauth2/authorize",
        "/.well-known/smart-configuration",
        "/admin/projects/{projectId}/invite",
    ] {
        assert!(paths.get(path).is_some(), "no {path}");
    }
    // Registration "patients" (the default): no project of one's own.
    assert!(paths.get("/auth/newproject").is_none());

    // Security: OAuth 2.0 (code with PKCE, client credentials) or a bearer token, everywhere
    // but the public endpoints.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let flows = &schemes["oauth2"]["flows"];
    assert_eq!(flows["authorizationCode"]["tokenUrl"], server.url("oauth2/token"));
    assert_eq!(flows["clientCredentials"]["tokenUrl"], server.url("oauth2/token"));
    assert!(doc["security"].as_array().unwrap().len() == 2);
    for (path, method) in [
        ("/fhir/R4/metadata", "get"),
        ("/oauth2/token", "post"),
        ("/auth/login", "post"),
        ("/openapi.json", "get"),
    ] {
        assert_eq!(paths[path][method]["security"], serde_json::json!([]), "{path}");
    }
    assert!(paths["/fhir/R4/Patient/{id}"]["get"].get("security").is_none());
    assert_eq!(
        paths["/fhir/R4/Patient/{id}"]["get"]["responses"]["4XX"]["$ref"],
        "#/components/responses/Error"
    );
}

#[tokio::test]
async fn openapi_is_gzipped_when_the_client_accepts_it() {
    let server = TestServer::start().await;
    let plain = server.client.get(server.url("openapi.json")).send().await.unwrap();
    assert_eq!(plain.headers()["vary"], "accept-encoding");
    let plain = plain.bytes().await.unwrap();

    let res = server
        .client
        .get(server.url("openapi.json"))
        .header("accept-encoding", "br;q=1.0, gzip;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let compressed = res.bytes().await.unwrap();
    assert!(compressed.len() * 5 < plain.len(), "{} of {}", compressed.len(), plain.len());
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut unzipped).unwrap();
    assert_eq!(unzipped, plain);

    // q=0 refuses gzip.
    let res = server
        .client
        .get(server.url("openapi.json"))
        .header("accept-encoding", "gzip;q=0, identity")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("content-encoding").is_none());
    assert_eq!(res.bytes().await.unwrap(), plain);
}

#[tokio::test]
async fn openapi_leaves_out_what_is_switched_off() {
    let off =
        TestServer::start_with(Options { registration: Registration::Off, ..Options::default() })
            .await;
    let doc = fetch(&off).await;
    for path in ["/auth/newuser", "/auth/newpatient", "/auth/newproject"] {
        assert!(doc["paths"].get(path).is_none(), "{path} while registration is off");
    }
    assert!(doc["paths"].get("/auth/login").is_some());

    let open =
        TestServer::start_with(Options { registration: Registration::Open, ..Options::default() })
            .await;
    let doc = fetch(&open).await;
    for path in ["/auth/newuser", "/auth/newpatient", "/auth/newproject"] {
        assert!(doc["paths"].get(path).is_some(), "no {path} while registration is open");
    }
}
