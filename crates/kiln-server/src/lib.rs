//! kiln-server (skeleton).
