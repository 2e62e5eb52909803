//! [`Error`]: what a call can fail with.

use serde_json::Value;

/// The result of every fallible call in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a status outside 2xx (after any retries).
    ///
    /// `outcome` is the response body when it was a FHIR `OperationOutcome`; `body` is the raw
    /// response text in every case.
    #[error("HTTP {status}: {}", summary(outcome.as_ref(), body))]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The `OperationOutcome` the server sent, if it sent one.
        outcome: Option<Value>,
        /// The response body as text (possibly empty).
        body: String,
    },
    /// Signing in or renewing a token failed (`/auth/login`, `/oauth2/token`).
    #[error("authentication failed: {message}")]
    Auth {
        /// The HTTP status of the failed exchange, when the server answered.
        status: Option<u16>,
        /// The server's explanation (`error_description`, an `OperationOutcome`'s diagnostics)
        /// or the client's.
        message: String,
    },
    /// The request could not be sent or its answer could not be read (connection refused,
    /// timeout, TLS, a broken body).
    #[error("network error: {0}")]
    Network(#[from] reqwest::Error),
    /// A body that should have been JSON was not.
    #[error("invalid JSON in the response: {0}")]
    Json(#[from] serde_json::Error),
    /// The caller passed something the client cannot use (a resource without `resourceType`,
    /// an unparseable base URL, a `next` link to another server…).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The server answered in a way the client did not expect (e.g. a 2xx without a body where
    /// a resource was required).
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

/// The first issue's diagnostics or details text, else the body's first 200 characters.
fn summary(outcome: Option<&Value>, body: &str) -> String {
    let issue = outcome.and_then(|o| o["issue"].get(0));
    if let Some(issue) = issue {
        let text = issue["diagnostics"].as_str().or_else(|| issue["details"]["text"].as_str());
        if let Some(text) = text {
            return text.to_owned();
        }
    }
    body.chars().take(200).collect()
}

impl Error {
    /// The HTTP status, for [`Error::Http`] and for [`Error::Auth`] when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            Error::Auth { status, .. } => *status,
            Error::Network(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// The `OperationOutcome` the server sent with a failure, if any.
    pub fn outcome(&self) -> Option<&Value> {
        match self {
            Error::Http { outcome, .. } => outcome.as_ref(),
            _ => None,
        }
    }

    /// Whether the server answered 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        self.http_status() == Some(404)
    }

    /// Whether the server answered 410 Gone (e.g. a read of a deleted resource).
    pub fn is_gone(&self) -> bool {
        self.http_status() == Some(410)
    }

    /// Whether the server answered 409 Conflict.
    pub fn is_conflict(&self) -> bool {
        self.http_status() == Some(409)
    }

    /// Whether the server answered 412 Precondition Failed (an `If-Match` version that is no
    /// longer current, or a conditional operation with several matches).
    pub fn is_precondition_failed(&self) -> bool {
        self.http_status() == Some(412)
    }

    /// Whether the server answered 401 Unauthorized, or signing in failed.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Auth { .. }) || self.http_status() == Some(401)
    }

    /// Whether the server answered 403 Forbidden.
    pub fn is_forbidden(&self) -> bool {
        self.http_status() == Some(403)
    }

    /// Whether the server answered 429 Too Many Requests (after the retries ran out).
    pub fn is_too_many_requests(&self) -> bool {
        self.http_status() == Some(429)
    }

    fn http_status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}
