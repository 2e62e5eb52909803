//! Authentication primitives for Kiln: password hashing, RS256 signing keys
//! and JWKS, access/ID tokens, opaque secrets, PKCE, login throttling and
//! SMART scope parsing, TOTP for MFA, client assertions (`private_key_jwt`).
//!
//! Everything here is synchronous, storage-free logic. Slow operations
//! ([`password::hash_password`], [`password::verify_password`],
//! [`keys::SigningKey::generate`]) should be run off the async executor
//! (e.g. `tokio::task::spawn_blocking`).

pub mod assertion;
pub mod error;
pub mod keys;
pub mod net;
pub mod password;
pub mod pkce;
pub mod scopes;
pub mod signed_url;
pub mod throttle;
pub mod tokens;
pub mod totp;

pub use assertion::{
    AssertionError, JWT_BEARER_ASSERTION_TYPE, UnverifiedAssertion, VerifiedAssertion,
    verify_assertion,
};
pub use error::{AuthError, Result};
pub use keys::SigningKey;
pub use password::{hash_password, needs_rehash, verify_password, verify_password_dummy};
pub use pkce::verify_pkce;
pub use scopes::{
    Permissions, ResourceScope, ResourceSelector, ScopeContext, ScopeSet, SmartScope, SmartVersion,
    parse_scopes,
};
pub use throttle::ThrottleConfig;
pub use tokens::{
    AccessClaims, AccessClaimsInput, IdClaims, IdTokenInput, TokenSigner, constant_time_eq,
    hash_secret, random_token,
};

#[cfg(test)]
pub(crate) mod test_support {
    //! Shared fixtures for unit tests.

    use std::sync::OnceLock;

    use crate::keys::SigningKey;

    /// RSA key generation is slow in debug builds; share one key.
    pub(crate) fn test_key() -> &'static SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate().expect("key generation"))
    }
}
