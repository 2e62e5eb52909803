//! kiln-store (skeleton).
