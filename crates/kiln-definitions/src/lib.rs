//! kiln-definitions (skeleton).
