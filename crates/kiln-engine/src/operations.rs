//! FHIR operations (`$name`) this build implements. Today: `$validate` at type level, with
//! structural validation; profile validation and invariants plug in with the FHIRPath issue.

use kiln_model::{Issue, IssueCode};
use serde_json::Value;

use crate::{Engine, EngineError};

impl Engine {
    /// `POST [type]/$validate`: the body is the resource itself or a `Parameters` with a
    /// `resource` parameter. Returns every issue found (an empty list means valid). Nothing is
    /// stored.
    pub fn validate(&self, ty: &str, body: Value) -> Result<Vec<Issue>, EngineError> {
        self.check_type(ty)?;
        let resource = if body.get("resourceType").and_then(Value::as_str) == Some("Parameters")
            && ty != "Parameters"
        {
            let found = body
                .get("parameter")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
                .and_then(|p| p.get("resource"))
                .cloned();
            match found {
                Some(resource) => resource,
                None => {
                    return Err(EngineError::invalid(
                        "Parameters for $validate need a 'resource' parameter",
                    ));
                }
            }
        } else {
            body
        };
        match resource.get("resourceType").and_then(Value::as_str) {
            Some(actual) if actual == ty => {}
            Some(actual) => {
                return Ok(vec![
                    Issue::error(
                        IssueCode::Invalid,
                        format!("resourceType '{actual}' does not match the URL's type '{ty}'"),
                    )
                    .at("resourceType"),
                ]);
            }
            None => {
                return Ok(vec![
                    Issue::error(IssueCode::Required, "Missing resourceType").at("resourceType"),
                ]);
            }
        }
        Ok(kiln_validate::validate_resource(&resource))
    }
}
