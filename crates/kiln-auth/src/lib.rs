//! kiln-auth (skeleton).
