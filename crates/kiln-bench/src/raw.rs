//! Light reading of large JSON answers: an object's members as unparsed slices of the input
//! (`serde_json`'s `RawValue`), so checking a page of 1,000 resources costs a scan, not a tree
//! of `Value`s. This keeps the load generator's CPU, which it shares with the server, small.

use std::collections::HashMap;

use serde_json::Value;
use serde_json::value::RawValue;

/// The members of a JSON object, each unparsed.
pub type Object<'a> = HashMap<String, &'a RawValue>;

/// Reads `text` as an object whose members stay unparsed.
pub fn object(text: &str) -> Result<Object<'_>, String> {
    serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))
}

/// The member `key` of `object`, parsed (`Value::Null` if absent). For small members.
pub fn member(object: &Object<'_>, key: &str) -> Result<Value, String> {
    match object.get(key) {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| format!("{key}: {e}")),
        None => Ok(Value::Null),
    }
}

/// The items of the array member `key`, each an object whose members stay unparsed (none if
/// absent). One scan of the array, not one for the array and one per item.
pub fn objects<'a>(object: &Object<'a>, key: &str) -> Result<Vec<Object<'a>>, String> {
    match object.get(key) {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| format!("{key} is not an array of objects: {e}")),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_stay_raw_until_asked_for() {
        let text = r#"{"type": "searchset", "total": 3, "entry": [{"a": {"b": [1, 2]}}, {}]}"#;
        let bundle = object(text).unwrap();
        assert_eq!(member(&bundle, "type").unwrap(), "searchset");
        assert_eq!(member(&bundle, "total").unwrap().as_u64(), Some(3));
        assert_eq!(member(&bundle, "missing").unwrap(), Value::Null);
        let entries = objects(&bundle, "entry").unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["a"].get(), r#"{"b": [1, 2]}"#);
        assert!(entries[1].is_empty());
        assert!(objects(&bundle, "type").is_err());
        assert!(object("[1]").is_err());
    }
}
