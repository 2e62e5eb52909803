//! Reference target checks: the resource type named by `Reference.reference` (or
//! `Reference.type`) must be one the element allows (`targetProfile`).

use kiln_definitions::{Definitions, ElementDef};
use kiln_model::IssueCode;
use serde_json::Value;

/// Checks a `Reference` value of `element`. Only references whose type can be read from the
/// reference itself are judged: `Type/id`, `Type/id/_history/v`, absolute RESTful URLs
/// ending that way, and conditional `Type?query` forms. Contained (`#id`), `urn:` and other
/// references pass.
pub(crate) fn check(
    defs: &Definitions,
    value: &Value,
    element: &ElementDef,
) -> Option<(IssueCode, String)> {
    let targets = &element.target_types;
    if targets.is_empty() || targets.iter().any(|t| t == "Resource") {
        return None;
    }
    let allowed = |t: &str| targets.iter().any(|target| target == t);
    if let Some(explicit) = value.get("type").and_then(Value::as_str) {
        let name = explicit.rsplit('/').next().unwrap_or(explicit);
        if defs.is_resource_type(name) && !allowed(name) {
            return Some(mismatch(name, targets));
        }
    }
    let reference = value.get("reference")?.as_str()?;
    let named = referenced_type(reference)?;
    (defs.is_resource_type(named) && !allowed(named)).then(|| mismatch(named, targets))
}

/// The type segment of a reference, if it has a recognisable RESTful shape.
fn referenced_type(reference: &str) -> Option<&str> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    if let Some((head, _query)) = reference.split_once('?') {
        return (!head.contains('/')).then_some(head);
    }
    let mut segments: Vec<&str> = reference.split('/').collect();
    if segments.len() >= 4 && segments[segments.len() - 2] == "_history" {
        segments.truncate(segments.len() - 2);
    }
    match segments.as_slice() {
        [.., resource_type, id] if !id.is_empty() => Some(resource_type),
        _ => None,
    }
}

fn mismatch(found: &str, targets: &[String]) -> (IssueCode, String) {
    let message =
        format!("A reference to {found} is not allowed here (allowed: {})", targets.join(", "));
    (IssueCode::Invalid, message)
}

#[cfg(test)]
mod tests {
    use super::referenced_type;

    #[test]
    fn reference_shapes() {
        assert_eq!(referenced_type("Patient/1"), Some("Patient"));
        assert_eq!(referenced_type("Patient/1/_history/2"), Some("Patient"));
        assert_eq!(referenced_type("https://x.org/fhir/Patient/1"), Some("Patient"));
        assert_eq!(referenced_type("Patient?identifier=a|b"), Some("Patient"));
        assert_eq!(referenced_type("#p1"), None);
        assert_eq!(referenced_type("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"), None);
        assert_eq!(referenced_type("Patient"), None);
    }
}
