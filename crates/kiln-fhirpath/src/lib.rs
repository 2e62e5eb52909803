//! FHIRPath.
