//! Server-owned metadata: the store alone assigns `meta.versionId` and `meta.lastUpdated`,
//! inside the transaction that writes the version, so both backends stamp the same way.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// A FHIR instant in UTC with millisecond precision, e.g. `2026-11-29T09:40:00.123Z`.
/// Fixed width, so the text sorts in time order.
pub fn format_instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Sets `meta.versionId` and `meta.lastUpdated` (keeping the rest of `meta` and the key order
/// of the resource) and returns the bytes to store.
pub fn stamp_meta(resource: &mut Value, version: i64, last_updated: &str) -> Vec<u8> {
    if let Value::Object(obj) = resource {
        let meta = obj.entry("meta").or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        if let Value::Object(meta) = meta {
            meta.insert("versionId".into(), Value::String(version.to_string()));
            meta.insert("lastUpdated".into(), Value::String(last_updated.to_owned()));
        }
    }
    // Sized for a typical resource up front: growing from serde_json's default 128 bytes
    // reallocates and copies the body about six times, on the store's writer.
    let mut bytes = Vec::with_capacity(4096);
    match serde_json::to_writer(&mut bytes, resource) {
        Ok(()) => bytes,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_keeps_decimals() {
        // Parsed from text: the json! macro would go through f64 and drop the zero.
        let mut it: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","id":"a","valueQuantity":{"value":1.50}}"#,
        )
        .unwrap();
        let bytes = stamp_meta(&mut it, 3, "2026-01-01T00:00:00.000Z");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("1.50"), "{text}");
        assert!(text.contains(r#""versionId":"3""#));
    }
}
