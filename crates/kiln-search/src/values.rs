//! From one FHIRPath item to index values, by search-parameter type and the item's FHIR type
//! (`Node::fhir_type()`, or the JSON shape when the type is unknown).

use crate::index::DateRange;
use crate::index::{IndexValue, OfType, QuantityValue, RefValue, StringValue, Token};
use crate::normalize::{date_range, normalize_string, number_range, span};
use kiln_definitions::{SearchParamType, definitions};
use kiln_fhirpath::Item;
use serde_json::{Value, json};
use std::borrow::Cow;

/// The values one item yields for a parameter of type `kind`. Composite and special
/// parameters yield nothing here (composites are indexed through their components).
pub(crate) fn item_values(kind: SearchParamType, item: &Item<'_>) -> Vec<IndexValue> {
    let Some((ty, json)) = typed_json(item) else { return Vec::new() };
    let ty = ty.unwrap_or_else(|| guess_type(&json));
    let mut out = Vec::new();
    match kind {
        SearchParamType::Token => token_values(ty, &json, &mut out),
        SearchParamType::String => string_values(ty, &json, &mut out),
        SearchParamType::Date => out.extend(date_value(ty, &json).map(IndexValue::Date)),
        SearchParamType::Number => out.extend(number_value(ty, &json).map(IndexValue::Number)),
        SearchParamType::Quantity => {
            if let Some(q) = quantity_value(ty, &json) {
                let canonical = canonical_quantity(&q);
                out.push(IndexValue::Quantity(q));
                out.extend(canonical.map(IndexValue::Quantity));
            }
        }
        SearchParamType::Reference => {
            out.extend(reference_value(ty, &json).map(IndexValue::Reference))
        }
        SearchParamType::Uri => out.extend(json.as_str().map(|s| IndexValue::Uri(s.to_string()))),
        SearchParamType::Composite | SearchParamType::Special => {}
    }
    out
}

/// The item's FHIR type (when known) and its JSON; System values are given the JSON a FHIR
/// element of the corresponding type would have.
fn typed_json<'a>(item: &'a Item<'_>) -> Option<(Option<&'static str>, Cow<'a, Value>)> {
    Some(match item {
        Item::Node(n) => (n.fhir_type(), Cow::Borrowed(n.value()?)),
        Item::Boolean(b) => (Some("boolean"), Cow::Owned(json!(b))),
        Item::String(s) => (Some("string"), Cow::Owned(json!(s))),
        Item::Integer(i) => (Some("integer"), Cow::Owned(number_json(&i.to_string())?)),
        Item::Decimal(d) => (Some("decimal"), Cow::Owned(number_json(&d.to_string())?)),
        Item::Date(d) => (Some("date"), Cow::Owned(json!(d.to_string()))),
        Item::DateTime(d) => (Some("dateTime"), Cow::Owned(json!(d.to_string()))),
        Item::Time(_) => return None,
        Item::Quantity(q) => (
            Some("Quantity"),
            Cow::Owned(json!({"value": number_json(&q.value.to_string())?, "code": q.unit})),
        ),
    })
}

fn number_json(text: &str) -> Option<Value> {
    serde_json::from_str::<serde_json::Number>(text).ok().map(Value::Number)
}

/// A FHIR type for untyped JSON, from its shape.
fn guess_type(json: &Value) -> &'static str {
    match json {
        Value::Bool(_) => "boolean",
        Value::Number(_) => "decimal",
        Value::String(_) => "string",
        Value::Object(o) if o.contains_key("resourceType") => "Resource",
        Value::Object(o) if o.contains_key("coding") => "CodeableConcept",
        Value::Object(o) if o.contains_key("reference") => "Reference",
        Value::Object(o) if o.contains_key("family") || o.contains_key("given") => "HumanName",
        Value::Object(o) if o.contains_key("start") || o.contains_key("end") => "Period",
        Value::Object(o) if o.contains_key("low") || o.contains_key("high") => "Range",
        Value::Object(o) if o.contains_key("value") && o.contains_key("unit") => "Quantity",
        Value::Object(o) if o.contains_key("code") => "Coding",
        Value::Object(o) if o.contains_key("value") => "Identifier",
        _ => "Element",
    }
}

fn text(json: &Value, key: &str) -> Option<String> {
    json.get(key).and_then(Value::as_str).map(str::to_string)
}

fn norm(json: &Value, key: &str) -> Option<String> {
    json.get(key).and_then(Value::as_str).map(normalize_string)
}

fn strings<'a>(json: &'a Value, key: &str) -> impl Iterator<Item = &'a str> {
    let v = json.get(key);
    let arr = v.and_then(Value::as_array).map(|a| a.iter()).into_iter().flatten();
    let single = v.filter(|v| v.is_string()).into_iter();
    arr.chain(single).filter_map(Value::as_str)
}

fn coding_token(c: &Value) -> Option<Token> {
    let t = Token { system: text(c, "system"), code: text(c, "code"), text: norm(c, "display") };
    (t.system.is_some() || t.code.is_some() || t.text.is_some()).then_some(t)
}

fn token_values(ty: &str, json: &Value, out: &mut Vec<IndexValue>) {
    let mut token = |t: Token| out.push(IndexValue::Token(t));
    match ty {
        "Coding" => coding_token(json).into_iter().for_each(&mut token),
        "CodeableConcept" => {
            let codings = json.get("coding").and_then(Value::as_array);
            codings.into_iter().flatten().filter_map(coding_token).for_each(&mut token);
            if let Some(t) = norm(json, "text") {
                token(Token { system: None, code: None, text: Some(t) });
            }
        }
        "Identifier" => {
            let value = text(json, "value");
            let type_text = json.get("type").and_then(|t| norm(t, "text"));
            let t = Token { system: text(json, "system"), code: value.clone(), text: type_text };
            if t.system.is_some() || t.code.is_some() || t.text.is_some() {
                token(t);
            }
            if let Some(value) = value {
                let codings = json.pointer("/type/coding").and_then(Value::as_array);
                for c in codings.into_iter().flatten() {
                    let (system, code) = (text(c, "system"), text(c, "code"));
                    out.push(IndexValue::OfType(OfType { system, code, value: value.clone() }));
                }
            }
        }
        "ContactPoint" => {
            if let Some(value) = text(json, "value") {
                token(Token { system: text(json, "system"), code: Some(value), text: None });
            }
        }
        _ => match json {
            Value::Bool(b) => token(Token { code: Some(b.to_string()), ..Token::default() }),
            Value::String(s) => token(Token { code: Some(s.clone()), ..Token::default() }),
            Value::Number(n) => token(Token { code: Some(n.to_string()), ..Token::default() }),
            _ => {}
        },
    }
}

fn push_string(out: &mut Vec<IndexValue>, s: &str) {
    if s.trim().is_empty() {
        return;
    }
    let value =
        IndexValue::String(StringValue { exact: s.to_string(), normalized: normalize_string(s) });
    if !out.contains(&value) {
        out.push(value);
    }
}

fn string_values(ty: &str, json: &Value, out: &mut Vec<IndexValue>) {
    match ty {
        "HumanName" => {
            let mut whole: Vec<&str> = Vec::new();
            for key in ["prefix", "given", "family", "suffix"] {
                for part in strings(json, key) {
                    push_string(out, part);
                    whole.push(part);
                }
            }
            if let Some(t) = json.get("text").and_then(Value::as_str) {
                push_string(out, t);
            }
            if whole.len() > 1 {
                push_string(out, &whole.join(" "));
            }
        }
        "Address" => {
            for key in ["line", "city", "district", "state", "postalCode", "country", "text"] {
                strings(json, key).for_each(|s| push_string(out, s));
            }
        }
        _ => {
            if let Some(s) = json.as_str() {
                push_string(out, s);
            }
        }
    }
}

fn date_value(ty: &str, json: &Value) -> Option<DateRange> {
    match ty {
        "Period" => {
            let start = json.get("start").and_then(Value::as_str).and_then(date_range);
            let end = json.get("end").and_then(Value::as_str).and_then(date_range);
            if start.is_none() && end.is_none() {
                return None;
            }
            Some(DateRange {
                lo: start.map_or(i64::MIN, |r| r.lo),
                hi: end.map_or(i64::MAX, |r| r.hi),
            })
        }
        "Timing" => {
            // All events of one Timing form one occurrence; index their overall span.
            let events: Vec<DateRange> = strings(json, "event").filter_map(date_range).collect();
            let lo = events.iter().map(|r| r.lo).min()?;
            let hi = events.iter().map(|r| r.hi).max()?;
            Some(DateRange { lo, hi })
        }
        _ => json.as_str().and_then(date_range),
    }
}

fn number_value(ty: &str, json: &Value) -> Option<crate::index::NumberRange> {
    match (ty, json) {
        (_, Value::Number(n)) => number_range(&n.to_string()),
        ("Range", _) => range_span(json),
        (_, Value::Object(_)) => {
            json.get("value").and_then(Value::as_number).and_then(|n| number_range(&n.to_string()))
        }
        _ => None,
    }
}

fn range_span(json: &Value) -> Option<crate::index::NumberRange> {
    let bound = |k: &str| {
        json.pointer(&format!("/{k}/value"))
            .and_then(Value::as_number)
            .and_then(|n| number_range(&n.to_string()))
    };
    span(bound("low").as_ref(), bound("high").as_ref())
}

fn quantity_value(ty: &str, json: &Value) -> Option<QuantityValue> {
    match ty {
        "Money" => Some(QuantityValue {
            number: number_range(&json.get("value")?.as_number()?.to_string())?,
            system: Some("urn:iso:std:iso:4217".to_string()),
            code: text(json, "currency"),
            unit: None,
        }),
        "Range" => {
            let unit_of = |k: &str| json.get(k).filter(|v| v.get("value").is_some());
            let q = unit_of("low").or_else(|| unit_of("high"))?;
            Some(QuantityValue {
                number: range_span(json)?,
                system: text(q, "system"),
                code: text(q, "code"),
                unit: text(q, "unit"),
            })
        }
        _ => Some(QuantityValue {
            number: number_range(&json.get("value")?.as_number()?.to_string())?,
            system: text(json, "system"),
            code: text(json, "code"),
            unit: text(json, "unit"),
        }),
    }
}

/// UCUM's system URI.
pub const UCUM: &str = "http://unitsofmeasure.org";

/// The system of the UCUM-canonical copy of a quantity: a UCUM quantity is indexed twice, as
/// written and converted to base units (`5 mg` also as `0.005` in code `g` of this system).
/// A search in UCUM is converted the same way and compared with the copies, so `mg` finds
/// `g`. The copy lives in its own system so it never passes for what the resource said.
pub const UCUM_CANONICAL: &str = "urn:kiln:ucum-canonical";

/// The base-unit copy of a UCUM quantity, for units kiln-fhirpath's UCUM subset knows.
pub(crate) fn canonical_quantity(q: &QuantityValue) -> Option<QuantityValue> {
    if q.system.as_deref() != Some(UCUM) || q.number.text.contains("..") {
        return None;
    }
    let (factor, code) = kiln_fhirpath::ucum_canonical(q.code.as_deref()?)?;
    Some(QuantityValue {
        number: crate::normalize::scaled_number_range(&q.number.text, factor)?,
        system: Some(UCUM_CANONICAL.to_string()),
        code: Some(code),
        unit: None,
    })
}

fn reference_value(ty: &str, json: &Value) -> Option<RefValue> {
    match json {
        // Canonical (and uri/url) elements name a resource by its canonical URL, never by
        // a server location: keep them as URLs.
        Value::String(s) if matches!(ty, "canonical" | "uri" | "url") => {
            let (url, version) = split_version(s);
            Some(RefValue::Url { url: url.to_string(), version })
        }
        Value::String(s) => contained_or_parse(s),
        Value::Object(o) if o.contains_key("resourceType") => {
            let target_type = o.get("resourceType")?.as_str()?.to_string();
            let id = o.get("id")?.as_str()?.to_string();
            Some(RefValue::Local { target_type, id })
        }
        Value::Object(_) => match json.get("reference").and_then(Value::as_str) {
            Some(r) => contained_or_parse(r),
            None => {
                let ident = json.get("identifier")?;
                let (system, value) = (text(ident, "system"), text(ident, "value"));
                (system.is_some() || value.is_some())
                    .then_some(RefValue::Identifier { system, value })
            }
        },
        _ => None,
    }
}

/// Reference text in a resource: `#id` (a contained resource) → [`RefValue::Contained`],
/// anything else as [`parse_reference`]. A bare `#` (the container itself) is not indexed.
fn contained_or_parse(text: &str) -> Option<RefValue> {
    let text = text.trim();
    match text.strip_prefix('#') {
        Some(id) if !id.is_empty() => Some(RefValue::Contained { reference: text.to_string() }),
        _ => parse_reference(text),
    }
}

/// Reference text as an index value: `Type/id` (relative or at the end of an absolute URL,
/// `/_history/v` ignored) → [`RefValue::Local`]; other absolute URLs, URNs and canonicals →
/// [`RefValue::Url`] (a canonical's `|version` split off). `None` for contained references
/// (`#id`) and empty text. Also used to read reference search values.
pub fn parse_reference(text: &str) -> Option<RefValue> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    if let Some((target_type, id)) = local_parts(text) {
        return Some(RefValue::Local { target_type: target_type.to_string(), id: id.to_string() });
    }
    let (url, version) = split_version(text);
    Some(RefValue::Url { url: url.to_string(), version })
}

/// `url|version` → (`url`, `Some(version)`).
pub(crate) fn split_version(text: &str) -> (&str, Option<String>) {
    match text.split_once('|') {
        Some((u, v)) => (u, Some(v.to_string())),
        None => (text, None),
    }
}

/// `(type, id)` of `Type/id`, `Type/id/_history/v`, `http(s)://…/Type/id[/_history/v]`.
pub(crate) fn local_parts(text: &str) -> Option<(&str, &str)> {
    if text.contains(['?', '|', '#']) {
        return None;
    }
    let absolute = text.starts_with("http://") || text.starts_with("https://");
    if !absolute && text.contains(':') {
        return None;
    }
    let mut segs: Vec<&str> = text.split('/').collect();
    if segs.len() >= 4 && segs[segs.len() - 2] == "_history" {
        segs.truncate(segs.len() - 2);
    }
    let n = segs.len();
    if n < 2 || (!absolute && n != 2) || (absolute && n < 5) {
        return None;
    }
    let (ty, id) = (segs[n - 2], segs[n - 1]);
    (definitions().is_resource_type(ty) && kiln_model::is_valid_id(id)).then_some((ty, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let local =
            |t: &str, i: &str| Some(RefValue::Local { target_type: t.into(), id: i.into() });
        assert_eq!(parse_reference("Patient/1"), local("Patient", "1"));
        assert_eq!(parse_reference("Patient/1/_history/3"), local("Patient", "1"));
        assert_eq!(parse_reference("https://x.org/fhir/R4/Patient/a-b"), local("Patient", "a-b"));
        assert_eq!(parse_reference("http://x.org/Patient/1/_history/2"), local("Patient", "1"));
        assert_eq!(parse_reference("#c1"), None);
        assert_eq!(
            parse_reference("http://x.org/ValueSet/y|1.0"),
            Some(RefValue::Url {
                url: "http://x.org/ValueSet/y".into(),
                version: Some("1.0".into())
            })
        );
        assert_eq!(
            parse_reference("urn:uuid:1234"),
            Some(RefValue::Url { url: "urn:uuid:1234".into(), version: None })
        );
        assert!(matches!(parse_reference("Foo/1"), Some(RefValue::Url { .. })));
    }
}
