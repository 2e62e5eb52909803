//! Server-owned metadata: the store alone assigns `meta.versionId` and `meta.lastUpdated`,
//! inside the transaction that writes the version, so both backends stamp the same way.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// A FHIR instant in UTC with millisecond precision, e.g. `2026-11-29T09:40:00.123Z`.
/// Fixed width, so the text sorts in time order.
pub fn format_instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The bytes to store for a version of `resource`: the resource with `meta.versionId` and
/// `meta.lastUpdated` set, written from the borrowed resource (no copy of it is made to be
/// changed). The same keys in the same order, `meta` where it was (or last when absent), its
/// `versionId` and `lastUpdated` replaced where they were (or added at its end): exactly what
/// setting them in the `Value` and serialising it would give (the tests' `stamp_meta`).
pub fn stamped_bytes(resource: &Value, version: i64, last_updated: &str) -> Vec<u8> {
    // Sized for a typical resource up front: growing from serde_json's default 128 bytes
    // reallocates and copies the body about six times, on the store's writer.
    let mut bytes = Vec::with_capacity(4096);
    let stamped = Stamped { resource, version: version.to_string(), last_updated };
    match serde_json::to_writer(&mut bytes, &stamped) {
        Ok(()) => bytes,
        Err(_) => Vec::new(),
    }
}

struct Stamped<'a> {
    resource: &'a Value,
    version: String,
    last_updated: &'a str,
}

/// The stamped `meta`: `meta` is the resource's own when it is an object.
struct StampedMeta<'a> {
    meta: Option<&'a Map<String, Value>>,
    version: &'a str,
    last_updated: &'a str,
}

impl<'a> Serialize for Stamped<'a> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Value::Object(obj) = self.resource else {
            return self.resource.serialize(serializer);
        };
        let meta = |value: Option<&'a Value>| StampedMeta {
            meta: value.and_then(Value::as_object),
            version: &self.version,
            last_updated: self.last_updated,
        };
        let mut map =
            serializer.serialize_map(Some(obj.len() + usize::from(!obj.contains_key("meta"))))?;
        for (key, value) in obj {
            if key == "meta" {
                map.serialize_entry(key, &meta(Some(value)))?;
            } else {
                map.serialize_entry(key, value)?;
            }
        }
        if !obj.contains_key("meta") {
            map.serialize_entry("meta", &meta(None))?;
        }
        map.end()
    }
}

impl Serialize for StampedMeta<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let own = self.meta.map_or(0, Map::len);
        let has = |k: &str| self.meta.is_some_and(|m| m.contains_key(k));
        let added = usize::from(!has("versionId")) + usize::from(!has("lastUpdated"));
        let mut map = serializer.serialize_map(Some(own + added))?;
        for (key, value) in self.meta.into_iter().flatten() {
            match key.as_str() {
                "versionId" => map.serialize_entry(key, self.version)?,
                "lastUpdated" => map.serialize_entry(key, self.last_updated)?,
                _ => map.serialize_entry(key, value)?,
            }
        }
        if !has("versionId") {
            map.serialize_entry("versionId", self.version)?;
        }
        if !has("lastUpdated") {
            map.serialize_entry("lastUpdated", self.last_updated)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference [`stamped_bytes`] is held to: sets `meta.versionId` and `meta.lastUpdated`
    /// in the resource itself (keeping the rest of `meta` and the key order) and serialises it.
    fn stamp_meta(resource: &mut Value, version: i64, last_updated: &str) -> Vec<u8> {
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
        serde_json::to_vec(resource).unwrap()
    }

    #[test]
    fn stamped_bytes_are_the_bytes_stamp_meta_stores() {
        let cases = [
            r#"{"resourceType":"Patient","id":"a"}"#,
            r#"{"resourceType":"Patient","meta":{"profile":["x"]},"id":"a","active":true}"#,
            r#"{"meta":{"lastUpdated":"old","tag":[{"code":"t"}],"versionId":"9"},"id":"a"}"#,
            r#"{"resourceType":"Patient","meta":{"versionId":"1"},"id":"a"}"#,
            r#"{"resourceType":"Patient","meta":"not an object","id":"a"}"#,
            r#"{"resourceType":"Observation","valueQuantity":{"value":1.50},"meta":{}}"#,
            r#"[1,2]"#,
        ];
        for text in cases {
            let mut resource: Value = serde_json::from_str(text).unwrap();
            let borrowed = stamped_bytes(&resource, 12, "2026-01-01T00:00:00.000Z");
            let stored = stamp_meta(&mut resource, 12, "2026-01-01T00:00:00.000Z");
            assert_eq!(String::from_utf8(borrowed).unwrap(), String::from_utf8(stored).unwrap());
        }
    }

    #[test]
    fn stamps_and_keeps_decimals() {
        // Parsed from text: the json! macro would go through f64 and drop the zero.
        let it: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","id":"a","valueQuantity":{"value":1.50}}"#,
        )
        .unwrap();
        let bytes = stamped_bytes(&it, 3, "2026-01-01T00:00:00.000Z");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("1.50"), "{text}");
        assert!(text.contains(r#""versionId":"3""#));
    }
}
