//! What a search asks of a store and what it gets back: [`SearchRequest`] (a parsed
//! [`SearchQuery`] plus paging) and [`SearchPage`] (one page of matches, the resources
//! `_include`/`_revinclude` pulled in, the total and the cursor of the next page).
//!
//! Paging is by keyset: a [`Cursor`] holds the sort values and the row id of a match, and a
//! direction. A forward cursor (a `next` link: the last match of a page) reads the rows
//! strictly after it; a backward cursor (a `previous` link: the first match of a page) reads
//! the `count` rows just before it, in the same order. Pages are therefore stable while the
//! store is being written: walking one way, a resource is never served twice, and none that
//! existed when the first page was read is skipped unless it was changed so that it sorts
//! behind the cursor.

use base64::Engine as _;
use kiln_search::SearchQuery;
use serde_json::Value;

use crate::StoredResource;

/// The most resources `_include`/`_revinclude` add to one page (all rounds together).
pub const MAX_INCLUDED: usize = 5_000;
/// The most rounds of `:iterate` includes.
pub const MAX_INCLUDE_DEPTH: usize = 4;

/// One search, as the engine hands it to the store.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: SearchQuery,
    /// The page to read: the rows after this cursor, or (a [`Cursor::backward`] one) the
    /// `count` rows just before it; `None` for the first page.
    pub after: Option<Cursor>,
    /// How many matches to return; 0 returns none (a count-only search).
    pub count: usize,
    /// Count every match (`_total=accurate`, `_summary=count`).
    pub total: bool,
}

/// One page of results.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    /// The matches, in order.
    pub matches: Vec<StoredResource>,
    /// For a search that returns contained resources (`_containedType=contained`): for each
    /// match, 0 when it is the resource itself, else the position in its `contained` (from 1)
    /// of the contained resource that matched ([`kiln_search::ContainedIn::index`]); the
    /// same resource may then be listed several times. Empty for other searches.
    pub contained: Vec<u32>,
    /// Resources added by `_include`/`_revinclude`, each once, none of them a match.
    pub included: Vec<StoredResource>,
    /// Whether [`MAX_INCLUDED`] cut the includes short.
    pub included_truncated: bool,
    /// The number of matches, when asked for (or when the whole result fits on this page).
    pub total: Option<u64>,
    /// Where the next page starts, if there are more matches.
    pub next: Option<Cursor>,
    /// Where the previous page ends (a backward cursor), unless this is the first page.
    pub previous: Option<Cursor>,
}

/// A sort value of a row, as the store compares it.
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    /// The row has no value for the key (sorts last in both directions).
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// A position in a result (the sort values and row id of a match) and a direction.
///
/// Positions are ordered by the sort keys and then the row id, so they are totally ordered:
/// the position `(keys, rid + 1)` lies just after the row `(keys, rid)`, which lets a cursor
/// name "up to and including this row" as "before the next position".
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub keys: Vec<SortValue>,
    pub rid: i64,
    /// `false`: the rows after this position; `true`: the rows before it.
    pub backward: bool,
}

impl Cursor {
    /// The rows after `(keys, rid)`.
    pub fn after(keys: Vec<SortValue>, rid: i64) -> Cursor {
        Cursor { keys, rid, backward: false }
    }

    /// The rows before `(keys, rid)`.
    pub fn before(keys: Vec<SortValue>, rid: i64) -> Cursor {
        Cursor { keys, rid, backward: true }
    }

    /// An opaque URL-safe text form (`[rid, keys]`, plus `"b"` for a backward cursor, as
    /// base64url JSON).
    pub fn encode(&self) -> String {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|k| match k {
                SortValue::Null => Value::Null,
                SortValue::Int(i) => serde_json::json!({ "i": i }),
                SortValue::Float(f) => serde_json::json!({ "f": f.to_string() }),
                SortValue::Text(t) => serde_json::json!({ "t": t }),
            })
            .collect();
        let json = if self.backward {
            serde_json::json!([self.rid, keys, "b"])
        } else {
            serde_json::json!([self.rid, keys])
        }
        .to_string();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads [`Cursor::encode`]'s form; `None` for anything else.
    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        let value: Value = serde_json::from_slice(&bytes).ok()?;
        let (rid, keys, backward) = match value.as_array()?.as_slice() {
            [rid, keys] => (rid, keys, false),
            [rid, keys, direction] if direction == "b" => (rid, keys, true),
            _ => return None,
        };
        let rid = rid.as_i64()?;
        let keys = keys
            .as_array()?
            .iter()
            .map(|k| match k {
                Value::Null => Some(SortValue::Null),
                Value::Object(o) => {
                    if let Some(i) = o.get("i") {
                        i.as_i64().map(SortValue::Int)
                    } else if let Some(f) = o.get("f") {
                        f.as_str()?.parse::<f64>().ok().map(SortValue::Float)
                    } else {
                        o.get("t")?.as_str().map(|t| SortValue::Text(t.to_owned()))
                    }
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Cursor { keys, rid, backward })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        let keys = vec![
            SortValue::Null,
            SortValue::Int(-5),
            SortValue::Float(1.5e300),
            SortValue::Text("a\"b".into()),
        ];
        let forward = Cursor::after(keys.clone(), 42);
        let backward = Cursor::before(keys, 42);
        assert_eq!(Cursor::decode(&forward.encode()), Some(forward.clone()));
        assert_eq!(Cursor::decode(&backward.encode()), Some(backward.clone()));
        assert_ne!(forward.encode(), backward.encode());
        // The forward form is the one links carried before backward paging existed.
        let old = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[42,[]]");
        assert_eq!(Cursor::decode(&old), Some(Cursor::after(vec![], 42)));
        let odd = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[42,[],\"x\"]");
        assert_eq!(Cursor::decode(&odd), None);
        assert_eq!(Cursor::decode("not a cursor"), None);
        assert_eq!(Cursor::decode(""), None);
    }
}
