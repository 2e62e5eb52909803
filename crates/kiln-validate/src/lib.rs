//! kiln-validate (skeleton).
