//! The engine's error: what went wrong with an interaction, in FHIR's terms. The server turns
//! it into an HTTP response; batch processing turns it into an entry's `response`.

use kiln_model::{Issue, IssueCode, operation_outcome_for_status};
use kiln_store::StoreError;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request or resource is invalid; every problem is listed.
    #[error("invalid request")]
    Invalid(Vec<Issue>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    /// A write conflicted with the current state (e.g. a create of an existing id).
    #[error("{0}")]
    Conflict(String),
    /// An `If-Match` (or other precondition) did not hold.
    #[error("{0}")]
    PreconditionFailed(String),
    /// Well-formed but violates a business rule.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Busy(String),
    /// The store stopped the work at its time limit (`--query-timeout`).
    #[error("{0}")]
    TimedOut(String),
    /// 429: the caller has too much running; retry after this many seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    /// A failure of ours. The message is logged, never sent to the client.
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub fn invalid(message: impl Into<String>) -> EngineError {
        EngineError::Invalid(vec![Issue::error(IssueCode::Invalid, message)])
    }

    /// The HTTP status FHIR prescribes for this outcome.
    pub fn status(&self) -> u16 {
        match self {
            EngineError::Invalid(_) => 400,
            EngineError::NotFound(_) => 404,
            EngineError::Gone(_) => 410,
            EngineError::Conflict(_) => 409,
            EngineError::PreconditionFailed(_) => 412,
            EngineError::Unprocessable(_) => 422,
            EngineError::NotSupported(_) => 400,
            EngineError::MethodNotAllowed(_) => 405,
            EngineError::Unauthorized(_) => 401,
            EngineError::Forbidden(_) => 403,
            EngineError::Busy(_) | EngineError::TimedOut(_) => 503,
            EngineError::TooManyRequests { .. } => 429,
            EngineError::Internal(_) => 500,
        }
    }

    pub fn issues(&self) -> Vec<Issue> {
        let one = |code, text: &str| vec![Issue::error(code, text)];
        match self {
            EngineError::Invalid(issues) => issues.clone(),
            EngineError::NotFound(m) => one(IssueCode::NotFound, m),
            EngineError::Gone(m) => one(IssueCode::Deleted, m),
            EngineError::Conflict(m) => one(IssueCode::Conflict, m),
            EngineError::PreconditionFailed(m) => one(IssueCode::Conflict, m),
            EngineError::Unprocessable(m) => one(IssueCode::Processing, m),
            EngineError::NotSupported(m) => one(IssueCode::NotSupported, m),
            EngineError::MethodNotAllowed(m) => one(IssueCode::NotSupported, m),
            EngineError::Unauthorized(m) => one(IssueCode::Login, m),
            EngineError::Forbidden(m) => one(IssueCode::Forbidden, m),
            EngineError::Busy(m) => one(IssueCode::Transient, m),
            EngineError::TimedOut(m) => one(IssueCode::Timeout, m),
            EngineError::TooManyRequests { message, .. } => one(IssueCode::Throttled, message),
            EngineError::Internal(_) => one(IssueCode::Exception, "Internal server error"),
        }
    }

    /// The outcome as a response would carry it, with Medplum's status id.
    pub fn operation_outcome(&self) -> Value {
        operation_outcome_for_status(self.status(), &self.issues())
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> EngineError {
        match e {
            StoreError::NotFound { resource_type, id } => {
                EngineError::NotFound(format!("Resource {resource_type}/{id} not found"))
            }
            StoreError::Gone { resource_type, id, .. } => {
                EngineError::Gone(format!("Resource {resource_type}/{id} has been deleted"))
            }
            StoreError::VersionConflict { expected, actual } => {
                EngineError::PreconditionFailed(format!(
                    "Version conflict: If-Match expected version {expected}, current version is {actual}"
                ))
            }
            StoreError::AlreadyExists { resource_type, id } => {
                EngineError::Conflict(format!("Resource {resource_type}/{id} already exists"))
            }
            StoreError::UniqueViolation { namespace, .. } => {
                EngineError::Conflict(format!("Another resource already has this {namespace}"))
            }
            StoreError::Busy(m) => EngineError::Busy(m),
            StoreError::TimedOut(m) => EngineError::TimedOut(m),
            StoreError::Forbidden(m) => EngineError::Forbidden(m),
            StoreError::Invalid(m) => EngineError::invalid(m),
            StoreError::Internal(m) => EngineError::Internal(m),
        }
    }
}
