//! kiln-store-sqlite (skeleton).
