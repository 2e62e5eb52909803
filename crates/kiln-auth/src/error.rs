//! Error type shared by every module of `kiln-auth`.

use thiserror::Error;

/// Everything that can go wrong in the authentication primitives.
///
/// The `Display` text is meant for logs. Callers speaking OAuth to a client
/// should map these to generic protocol errors (`invalid_token`,
/// `invalid_grant`, ...) instead of echoing the detail.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The token is malformed, has a bad signature, a disallowed algorithm,
    /// an unexpected type or is missing required claims.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The token was well formed and correctly signed but its `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token's `iat` lies in the future (beyond the allowed clock skew).
    #[error("token issued in the future")]
    NotYetValid,
    /// The token was issued by someone else.
    #[error("token issuer mismatch")]
    InvalidIssuer,
    /// The token was issued for a different audience (ID tokens).
    #[error("token audience mismatch")]
    InvalidAudience,
    /// A key could not be parsed or is not an acceptable RSA key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A scope string is not a valid SMART resource scope.
    #[error("invalid scope: {0}")]
    InvalidScope(String),
    /// A password hash could not be produced.
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    /// Any other failure in the underlying cryptographic libraries
    /// (key generation, signing, random number generation).
    #[error("cryptographic failure: {0}")]
    Crypto(String),
}

/// Shorthand for `Result<T, AuthError>`.
pub type Result<T, E = AuthError> = std::result::Result<T, E>;
