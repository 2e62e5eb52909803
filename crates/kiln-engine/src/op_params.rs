//! An operation's input: the query parameters of a GET, or the `Parameters` resource of a
//! POST (with any query parameters after it), read by typed getters. A value of the wrong
//! type, a single-valued parameter given twice, or a body that is not a `Parameters` is a 400
//! naming the parameter; nothing here panics on bad input. Unknown parameters are ignored.

use serde_json::{Value, json};

use crate::EngineError;

/// Parameters of the request URL that shape the response rather than feed the operation.
const OUTPUT_PARAMS: &[&str] = &["_format", "_pretty", "_summary", "_elements"];

/// The input of one operation call.
#[derive(Debug, Clone, Default)]
pub struct OpParams {
    items: Vec<(String, Item)>,
}

#[derive(Debug, Clone)]
enum Item {
    /// A query parameter: its text.
    Query(String),
    /// A `Parameters.parameter`: the whole part.
    Part(Value),
}

fn bad(name: &str, what: &str) -> EngineError {
    EngineError::invalid(format!("Parameter '{name}' {what}"))
}

impl OpParams {
    /// The query parameters of `GET [type]/$op?…`.
    pub fn from_query(pairs: &[(String, String)]) -> OpParams {
        let items = pairs
            .iter()
            .filter(|(k, _)| !OUTPUT_PARAMS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), Item::Query(v.clone())))
            .collect();
        OpParams { items }
    }

    /// A POST body (a `Parameters` resource) and the request's query parameters.
    pub fn from_body(body: Value, pairs: &[(String, String)]) -> Result<OpParams, EngineError> {
        if body["resourceType"] != "Parameters" {
            return Err(EngineError::invalid(
                "The body of an operation must be a Parameters resource",
            ));
        }
        let mut items = Vec::new();
        for part in body["parameter"].as_array().into_iter().flatten() {
            let Some(name) = part["name"].as_str() else {
                return Err(EngineError::invalid("Every Parameters.parameter needs a name"));
            };
            items.push((name.to_owned(), Item::Part(part.clone())));
        }
        items.extend(OpParams::from_query(pairs).items);
        Ok(OpParams { items })
    }

    /// Whether `name` was given at all.
    pub fn has(&self, name: &str) -> bool {
        self.items.iter().any(|(n, _)| n == name)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Item> + 'a {
        self.items.iter().filter(move |(n, _)| n == name).map(|(_, item)| item)
    }

    fn one<'a>(&'a self, name: &str) -> Result<Option<&'a Item>, EngineError> {
        let mut found = self.items.iter().filter(|(n, _)| n == name).map(|(_, item)| item);
        let first = found.next();
        if found.next().is_some() {
            return Err(bad(name, "may be given only once"));
        }
        Ok(first)
    }

    /// A primitive of the string family (string, code, uri, url, canonical, id, …).
    pub fn string(&self, name: &str) -> Result<Option<String>, EngineError> {
        self.one(name)?.map(|item| string_of(name, item)).transpose()
    }

    /// Every value of a repeating string-like parameter.
    pub fn strings(&self, name: &str) -> Result<Vec<String>, EngineError> {
        self.all(name).map(|item| string_of(name, item)).collect()
    }

    pub fn boolean(&self, name: &str) -> Result<Option<bool>, EngineError> {
        let Some(item) = self.one(name)? else { return Ok(None) };
        let value = match item {
            Item::Query(text) => match text.as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            Item::Part(part) => part["valueBoolean"].as_bool(),
        };
        value.map(Some).ok_or_else(|| bad(name, "must be a boolean (true or false)"))
    }

    /// A non-negative integer (integer, unsignedInt, positiveInt).
    pub fn count(&self, name: &str) -> Result<Option<usize>, EngineError> {
        let Some(item) = self.one(name)? else { return Ok(None) };
        let value = match item {
            Item::Query(text) => text.trim().parse::<usize>().ok(),
            Item::Part(part) => ["valueInteger", "valueUnsignedInt", "valuePositiveInt"]
                .iter()
                .find_map(|k| part[*k].as_u64())
                .and_then(|n| usize::try_from(n).ok()),
        };
        value.map(Some).ok_or_else(|| bad(name, "must be a non-negative integer"))
    }

    /// A Coding; in a query, `system|code` (or a bare code).
    pub fn coding(&self, name: &str) -> Result<Option<Value>, EngineError> {
        let Some(item) = self.one(name)? else { return Ok(None) };
        match item {
            Item::Query(text) => Ok(Some(coding_from_text(text))),
            Item::Part(part) => match &part["valueCoding"] {
                coding @ Value::Object(_) => Ok(Some(coding.clone())),
                _ => Err(bad(name, "must be a Coding (valueCoding)")),
            },
        }
    }

    /// A CodeableConcept; in a query, one `system|code` coding.
    pub fn codeable_concept(&self, name: &str) -> Result<Option<Value>, EngineError> {
        let Some(item) = self.one(name)? else { return Ok(None) };
        match item {
            Item::Query(text) => Ok(Some(json!({"coding": [coding_from_text(text)]}))),
            Item::Part(part) => match &part["valueCodeableConcept"] {
                cc @ Value::Object(_) => Ok(Some(cc.clone())),
                _ => Err(bad(name, "must be a CodeableConcept (valueCodeableConcept)")),
            },
        }
    }

    /// Every value of a repeating parameter made of parts (such as `$translate`'s
    /// `dependency`): each one's `part` list. Only a POST body can carry them.
    pub fn part_groups(&self, name: &str) -> Result<Vec<Vec<Value>>, EngineError> {
        self.all(name)
            .map(|item| match item {
                Item::Part(part) => match &part["part"] {
                    Value::Array(parts) => Ok(parts.clone()),
                    _ => Err(bad(name, "must have parts (part)")),
                },
                Item::Query(_) => {
                    Err(bad(name, "is made of parts: send it in a Parameters body with POST"))
                }
            })
            .collect()
    }

    /// A resource, which only a POST body can carry.
    pub fn resource(&self, name: &str) -> Result<Option<Value>, EngineError> {
        let Some(item) = self.one(name)? else { return Ok(None) };
        match item {
            Item::Part(part) if part["resource"].is_object() => Ok(Some(part["resource"].clone())),
            Item::Part(_) => Err(bad(name, "must carry a resource")),
            Item::Query(_) => {
                Err(bad(name, "is a resource: send it in a Parameters body with POST"))
            }
        }
    }
}

fn string_of(name: &str, item: &Item) -> Result<String, EngineError> {
    match item {
        Item::Query(text) => Ok(text.clone()),
        Item::Part(part) => part
            .as_object()
            .into_iter()
            .flatten()
            .find(|(k, v)| k.starts_with("value") && v.is_string())
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| bad(name, "must be a string, code or uri value")),
    }
}

fn coding_from_text(text: &str) -> Value {
    match text.split_once('|') {
        Some((system, code)) if !system.is_empty() => json!({"system": system, "code": code}),
        Some((_, code)) => json!({"code": code}),
        None => json!({"code": text}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn query_values_are_typed() {
        let p = OpParams::from_query(&pairs(&[
            ("url", "http://x"),
            ("count", "5"),
            ("activeOnly", "true"),
            ("coding", "http://s|a"),
            ("_format", "json"),
        ]));
        assert_eq!(p.string("url").unwrap().as_deref(), Some("http://x"));
        assert_eq!(p.count("count").unwrap(), Some(5));
        assert_eq!(p.boolean("activeOnly").unwrap(), Some(true));
        assert_eq!(p.coding("coding").unwrap().unwrap()["system"], "http://s");
        assert!(!p.has("_format"));
        assert!(p.resource("url").is_err());
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let p = OpParams::from_query(&pairs(&[("count", "-1"), ("x", "1"), ("x", "2")]));
        let err = p.count("count").unwrap_err();
        assert!(format!("{:?}", err.issues()).contains("'count'"));
        assert!(p.string("x").is_err());
        assert_eq!(p.strings("x").unwrap(), ["1", "2"]);
    }

    #[test]
    fn parameters_bodies_are_read_by_type() {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "code", "valueCode": "a"},
            {"name": "reverse", "valueBoolean": false},
            {"name": "offset", "valueInteger": 2},
            {"name": "coding", "valueCoding": {"system": "s", "code": "c"}},
            {"name": "valueSet", "resource": {"resourceType": "ValueSet"}},
            {"name": "flag", "valueString": "yes"},
            {"name": "dependency", "part": [{"name": "element", "valueUri": "e"}]},
            {"name": "dependency", "part": []},
            {"name": "bad", "valueString": "no parts"},
        ]});
        let p = OpParams::from_body(body, &[]).unwrap();
        assert_eq!(p.string("code").unwrap().as_deref(), Some("a"));
        assert_eq!(p.boolean("reverse").unwrap(), Some(false));
        assert_eq!(p.count("offset").unwrap(), Some(2));
        assert_eq!(p.coding("coding").unwrap().unwrap()["code"], "c");
        assert_eq!(p.resource("valueSet").unwrap().unwrap()["resourceType"], "ValueSet");
        assert!(p.boolean("flag").is_err());
        assert!(p.coding("code").is_err());
        let groups = p.part_groups("dependency").unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0][0]["valueUri"], "e");
        assert!(p.part_groups("bad").is_err());
        assert!(p.part_groups("none").unwrap().is_empty());
        let query = OpParams::from_query(&pairs(&[("dependency", "x")]));
        assert!(query.part_groups("dependency").is_err());
        assert!(OpParams::from_body(json!({"resourceType": "Patient"}), &[]).is_err());
        assert!(
            OpParams::from_body(json!({"resourceType": "Parameters", "parameter": [{}]}), &[])
                .is_err()
        );
    }
}
