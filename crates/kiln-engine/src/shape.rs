//! `_summary` and `_elements`: returning a subset of each resource (FHIR R4 search.html#summary,
//! search.html#elements). A subsetted resource is tagged `SUBSETTED` so no client mistakes it
//! for the whole.

use kiln_definitions::definitions;
use serde_json::{Value, json};

use crate::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// Only elements marked as summary in the definitions.
    True,
    /// `text`, `id`, `meta` and the mandatory top-level elements.
    Text,
    /// Everything but `text`.
    Data,
    /// Only a count (searches); for reads it is treated as `true`.
    Count,
}

/// How to cut resources down before returning them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    pub summary: Option<Summary>,
    pub elements: Option<Vec<String>>,
    /// Keep Medplum's server-side `meta` members (`X-Medplum: extended`); by default they
    /// are removed ([`crate::server_meta`]).
    pub server_meta: bool,
}

impl Shape {
    /// Reads `_summary` and `_elements` from query pairs; other parameters are ignored.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Shape, EngineError> {
        let mut shape = Shape::default();
        for (key, value) in pairs {
            match key.as_str() {
                "_summary" => {
                    shape.summary = match value.as_str() {
                        "true" => Some(Summary::True),
                        "text" => Some(Summary::Text),
                        "data" => Some(Summary::Data),
                        "count" => Some(Summary::Count),
                        "false" => None,
                        other => {
                            return Err(EngineError::invalid(format!(
                                "Invalid _summary value '{other}': expected true, text, data, count or false"
                            )));
                        }
                    }
                }
                "_elements" => {
                    let list: Vec<String> = value
                        .split(',')
                        .map(|it| it.trim())
                        .filter(|it| !it.is_empty())
                        .map(|it| {
                            // `Patient.name` is accepted as well as `name`.
                            match it.split_once('.') {
                                Some((head, tail)) if head.starts_with(char::is_uppercase) => tail,
                                _ => it,
                            }
                            .to_owned()
                        })
                        .collect();
                    if !list.is_empty() {
                        shape.elements = Some(list);
                    }
                }
                _ => {}
            }
        }
        Ok(shape)
    }

    /// True when resources pass through unchanged (so stored bytes can be served as they are).
    pub fn is_identity(&self) -> bool {
        self.server_meta && self.cuts_nothing()
    }

    /// True when no element is cut (the server-side `meta` members aside).
    pub fn cuts_nothing(&self) -> bool {
        self.summary.is_none() && self.elements.is_none()
    }

    /// The stored JSON of a resource as this shape serves it: the bytes as they are, or with
    /// the server-side `meta` members removed by a byte scan, or (with `_summary`/`_elements`)
    /// parsed, cut and written again.
    pub fn serve<'b>(&self, body: &'b [u8]) -> std::borrow::Cow<'b, [u8]> {
        if self.cuts_nothing() {
            return if self.server_meta {
                std::borrow::Cow::Borrowed(body)
            } else {
                crate::server_meta::strip(body)
            };
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(mut value) => {
                self.apply(&mut value);
                std::borrow::Cow::Owned(serde_json::to_vec(&value).unwrap_or_default())
            }
            Err(_) => std::borrow::Cow::Borrowed(body),
        }
    }

    /// Cuts `resource` down in place. `_summary` wins over `_elements` when both are given.
    pub fn apply(&self, resource: &mut Value) {
        let Value::Object(obj) = resource else { return };
        if !self.server_meta
            && let Some(Value::Object(meta)) = obj.get_mut("meta")
        {
            for key in crate::server_meta::SERVER_META {
                meta.shift_remove(key);
            }
        }
        let ty = obj.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
        let def = definitions().type_def(&ty);
        let is_mandatory = |key: &str| {
            def.and_then(|d| d.element(&format!("{ty}.{key}"))).is_some_and(|e| e.min > 0)
        };
        let is_summary = |key: &str| {
            def.and_then(|d| {
                d.element(&format!("{ty}.{key}")).or_else(|| choice_element(d, &ty, key))
            })
            .is_some_and(|e| e.is_summary)
        };
        let always = |key: &str| matches!(key, "resourceType" | "id" | "meta");
        let keep: Box<dyn Fn(&str) -> bool> = match (self.summary, &self.elements) {
            (Some(Summary::True | Summary::Count), _) => {
                Box::new(|key: &str| always(key) || is_summary(primitive_base(key)))
            }
            (Some(Summary::Text), _) => Box::new(|key: &str| {
                always(key) || key == "text" || is_mandatory(primitive_base(key))
            }),
            (Some(Summary::Data), _) => Box::new(|key: &str| key != "text"),
            (None, Some(elements)) => Box::new(move |key: &str| {
                always(key) || elements.iter().any(|it| it == primitive_base(key))
            }),
            (None, None) => return,
        };
        let before = obj.len();
        obj.retain(|key, _| keep(key));
        let subsetted = obj.len() != before || self.summary == Some(Summary::True);
        if subsetted || self.summary.is_some() || self.elements.is_some() {
            mark_subsetted(resource);
        }
    }
}

/// `_birthDate` → `birthDate`: a primitive's extension sibling follows its element.
fn primitive_base(key: &str) -> &str {
    key.strip_prefix('_').unwrap_or(key)
}

/// `valueQuantity` → the element `value[x]`.
fn choice_element<'a>(
    def: &'a kiln_definitions::TypeDef,
    ty: &str,
    key: &str,
) -> Option<&'a kiln_definitions::ElementDef> {
    let split = key.find(|c: char| c.is_ascii_uppercase())?;
    def.element(&format!("{ty}.{}[x]", &key[..split]))
}

fn mark_subsetted(resource: &mut Value) {
    let Value::Object(obj) = resource else { return };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    let Value::Object(meta) = meta else { return };
    let tags = meta.entry("tag").or_insert_with(|| json!([]));
    let Value::Array(tags) = tags else { return };
    if !tags.iter().any(|t| t["code"] == "SUBSETTED") {
        tags.push(json!({
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "SUBSETTED",
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
               "name": [{"family": "Doe"}], "birthDate": "2000-01-01", "photo": [{"contentType": "image/png"}]})
    }

    #[test]
    fn summary_true_drops_non_summary_elements() {
        let mut it = patient();
        Shape::from_query(&pairs(&[("_summary", "true")])).unwrap().apply(&mut it);
        assert!(it.get("name").is_some());
        assert!(it.get("photo").is_none());
        assert!(it.get("text").is_none());
        assert_eq!(it["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    #[test]
    fn elements_keeps_listed_and_mandatory() {
        let mut it = patient();
        Shape::from_query(&pairs(&[("_elements", "birthDate")])).unwrap().apply(&mut it);
        assert_eq!(it["birthDate"], "2000-01-01");
        assert!(it.get("name").is_none());
        assert_eq!(it["id"], "p");
    }

    #[test]
    fn summary_data_drops_text() {
        let mut it = patient();
        Shape::from_query(&pairs(&[("_summary", "data")])).unwrap().apply(&mut it);
        assert!(it.get("text").is_none());
        assert!(it.get("photo").is_some());
    }

    #[test]
    fn rejects_bad_summary() {
        assert!(Shape::from_query(&pairs(&[("_summary", "maybe")])).is_err());
    }
}
