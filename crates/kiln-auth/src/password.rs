//! Password hashing with Argon2id, stored as PHC strings.
//!
//! Parameters follow the OWASP Password Storage Cheat Sheet recommendation
//! for Argon2id: 19 MiB of memory, 2 iterations, 1 degree of parallelism.
//! The parameters are recorded inside every PHC string, so raising them
//! later does not invalidate existing hashes; use [`needs_rehash`] after a
//! successful login to upgrade old hashes transparently.

use std::sync::OnceLock;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

use crate::error::{AuthError, Result};

/// Memory cost in KiB (19 MiB).
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// Number of passes over memory.
pub const ARGON2_T_COST: u32 = 2;
/// Degree of parallelism.
pub const ARGON2_P_COST: u32 = 1;

/// Upper bound on the memory a stored hash may ask for during verification
/// (256 MiB). A hash demanding more is treated as malformed rather than
/// letting a corrupt database row exhaust the server's memory.
const MAX_VERIFY_M_COST_KIB: u32 = 256 * 1024;
/// Upper bound on the iterations a stored hash may ask for.
const MAX_VERIFY_T_COST: u32 = 16;
/// Upper bound on the parallelism a stored hash may ask for.
const MAX_VERIFY_P_COST: u32 = 16;

fn production_params() -> Params {
    Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .expect("static Argon2 parameters are valid")
}

fn hash_with_params(password: &str, params: Params) -> Result<String> {
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let hash = hasher
        .hash_password(password.as_bytes())
        .map_err(|e| AuthError::PasswordHash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Hashes `password` with Argon2id and a fresh random salt, returning a PHC
/// string such as `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`.
///
/// This is deliberately slow (tens of milliseconds in release builds); call it
/// from a blocking-friendly context (e.g. `tokio::task::spawn_blocking`).
pub fn hash_password(password: &str) -> Result<String> {
    hash_with_params(password, production_params())
}

/// Checks `password` against a PHC string produced by [`hash_password`].
///
/// Returns `false` for a wrong password and for anything that is not a
/// well-formed Argon2 PHC string (including hashes with absurd cost
/// parameters). The final comparison of the derived hash is constant time.
/// Like [`hash_password`] this is slow by design.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return false;
    }
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_VERIFY_M_COST_KIB
        || params.t_cost() > MAX_VERIFY_T_COST
        || params.p_cost() > MAX_VERIFY_P_COST
    {
        return false;
    }
    // The algorithm, version and parameters are taken from the PHC string.
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
}

/// Whether a stored hash should be replaced by a fresh [`hash_password`]
/// result (different algorithm, version or weaker parameters than the
/// current policy). Malformed hashes also report `true`.
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return true;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return true;
    }
    if parsed.version != Some(u32::from(Version::V0x13)) {
        return true;
    }
    let Ok(params) = Params::try_from(&parsed) else {
        return true;
    };
    params.m_cost() < ARGON2_M_COST_KIB
        || params.t_cost() < ARGON2_T_COST
        || params.p_cost() < ARGON2_P_COST
}

/// Spends roughly the same time as a real [`verify_password`] call and
/// always returns `false`.
///
/// Call this when a login names an unknown user so that response timing does
/// not reveal which accounts exist.
pub fn verify_password_dummy(password: &str) -> bool {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("kiln-dummy-password-for-timing").ok());
    if let Some(phc) = dummy {
        let _ = verify_password(password, phc);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so the debug-mode test suite stays fast.
    fn light_params() -> Params {
        Params::new(64, 1, 1, None).unwrap()
    }

    #[test]
    fn production_hash_round_trip() {
        // The only test that pays for the real parameters.
        let phc = hash_password("correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password("correct horse battery staple", &phc));
        assert!(!needs_rehash(&phc));
    }

    #[test]
    fn wrong_password_rejected() {
        let phc = hash_with_params("s3cret", light_params()).unwrap();
        assert!(verify_password("s3cret", &phc));
        assert!(!verify_password("s3cret ", &phc));
        assert!(!verify_password("", &phc));
    }

    #[test]
    fn salts_differ() {
        let a = hash_with_params("same", light_params()).unwrap();
        let b = hash_with_params("same", light_params()).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn weak_params_need_rehash() {
        let phc = hash_with_params("pw", light_params()).unwrap();
        assert!(needs_rehash(&phc));
        assert!(needs_rehash("not a hash"));
    }

    #[test]
    fn malformed_hashes_are_rejected() {
        assert!(!verify_password("pw", ""));
        assert!(!verify_password("pw", "plaintext"));
        assert!(!verify_password("pw", "$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(!verify_password("pw", "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$"));
        assert!(!verify_password(
            "pw",
            "$2b$12$abcdefghijklmnopqrstuuK3W9i7xkqYdkPq4M4a0K1X6pV1mIu"
        ));
        // Absurd memory cost from a corrupt row must not be honoured.
        assert!(!verify_password(
            "pw",
            "$argon2id$v=19$m=4000000,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        ));
    }

    #[test]
    fn dummy_verify_is_false() {
        assert!(!verify_password_dummy("anything"));
    }
}
