//! FHIR vocabulary shared by every Kiln layer: validation issues, `OperationOutcome`
//! rendering and the rules for logical ids.
//!
//! This crate is pure: no IO, no async, no knowledge of HTTP status codes.

use serde_json::{Map, Value, json};

/// `OperationOutcome.issue.severity` (FHIR value set `issue-severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }

    /// Whether an issue of this severity makes the request fail.
    pub fn is_failure(self) -> bool {
        matches!(self, Severity::Fatal | Severity::Error)
    }
}

/// `OperationOutcome.issue.code` (FHIR value set `issue-type`); only the codes Kiln emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Unknown,
    Expired,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    CodeInvalid,
    Conflict,
    Transient,
    Exception,
    Timeout,
    TooCostly,
    Throttled,
    Incomplete,
    Informational,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invariant => "invariant",
            IssueCode::Security => "security",
            IssueCode::Login => "login",
            IssueCode::Unknown => "unknown",
            IssueCode::Expired => "expired",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Processing => "processing",
            IssueCode::NotSupported => "not-supported",
            IssueCode::Duplicate => "duplicate",
            IssueCode::MultipleMatches => "multiple-matches",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::TooLong => "too-long",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::Conflict => "conflict",
            IssueCode::Transient => "transient",
            IssueCode::Exception => "exception",
            IssueCode::Timeout => "timeout",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Throttled => "throttled",
            IssueCode::Incomplete => "incomplete",
            IssueCode::Informational => "informational",
        }
    }
}

/// One problem found in a request or a resource. Validation returns these as data, never as
/// an `Err`: a broken resource is a normal input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    pub diagnostics: String,
    /// FHIRPath-style location of the problem, e.g. `Patient.name[0].given[1]`.
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Issue {
        Issue { severity: Severity::Error, code, diagnostics: diagnostics.into(), expression: None }
    }

    pub fn warning(code: IssueCode, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Warning,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn information(code: IssueCode, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Information,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Issue {
        self.expression = Some(expression.into());
        self
    }

    pub fn to_json(&self) -> Value {
        let mut it = Map::new();
        it.insert("severity".into(), json!(self.severity.as_str()));
        it.insert("code".into(), json!(self.code.as_str()));
        it.insert("details".into(), json!({ "text": self.diagnostics }));
        it.insert("diagnostics".into(), json!(self.diagnostics));
        if let Some(expression) = &self.expression {
            it.insert("expression".into(), json!([expression]));
        }
        Value::Object(it)
    }
}

/// Builds an `OperationOutcome` resource from issues. An empty list yields one
/// informational "All OK" issue, since FHIR requires at least one.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = if issues.is_empty() {
        vec![Issue::information(IssueCode::Informational, "All OK").to_json()]
    } else {
        issues.iter().map(Issue::to_json).collect()
    };
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

/// The `OperationOutcome.id` that Medplum's clients read to classify an outcome by HTTP status
/// (`@medplum/core` looks at the id, not at the status line). `None` for statuses it does not name
/// (a plain 400 is its default).
pub fn outcome_id_for_status(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "ok",
        201 => "created",
        202 => "accepted",
        302 => "found",
        304 => "not-modified",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not-found",
        409 => "conflict",
        410 => "gone",
        412 => "precondition-failed",
        413 => "content-too-large",
        415 => "unsupported-media-type",
        422 => "business-rule",
        429 => "too-many-requests",
        504 => "server-timeout",
        _ => return None,
    })
}

/// An `OperationOutcome` for a response with `status`, carrying the matching id.
pub fn operation_outcome_for_status(status: u16, issues: &[Issue]) -> Value {
    let mut outcome = operation_outcome(issues);
    if let (Some(id), Value::Object(obj)) = (outcome_id_for_status(status), &mut outcome) {
        let issue = obj.shift_remove("issue").unwrap_or(Value::Null);
        obj.insert("id".into(), json!(id));
        obj.insert("issue".into(), issue);
    }
    outcome
}

/// Whether any issue is an error or fatal.
pub fn has_failure(issues: &[Issue]) -> bool {
    issues.iter().any(|it| it.severity.is_failure())
}

/// FHIR `id` rule: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_ids_follow_status() {
        let oo = operation_outcome_for_status(404, &[Issue::error(IssueCode::NotFound, "x")]);
        assert_eq!(oo["id"], "not-found");
        let oo = operation_outcome_for_status(400, &[Issue::error(IssueCode::Invalid, "x")]);
        assert!(oo.get("id").is_none());
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("abc-1.2"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id(&"a".repeat(65)));
    }

    #[test]
    fn outcome_lists_every_issue() {
        let oo = operation_outcome(&[
            Issue::error(IssueCode::Structure, "bad").at("Patient.foo"),
            Issue::warning(IssueCode::Value, "meh"),
        ]);
        assert_eq!(oo["issue"].as_array().unwrap().len(), 2);
        assert_eq!(oo["issue"][0]["expression"][0], "Patient.foo");
    }
}
