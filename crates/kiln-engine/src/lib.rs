//! kiln-engine (skeleton).
