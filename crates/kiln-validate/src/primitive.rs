//! Format rules of the FHIR primitive types, written out by hand (no regex engine) to follow
//! the specification's regexes plus the calendar rules they cannot express.

use kiln_model::{IssueCode, is_valid_id};
use serde_json::Value;

/// Checks a JSON value against a primitive type. Returns the issue code and a message when it
/// does not conform. Unknown type names are accepted.
pub fn check_primitive(value: &Value, type_code: &str) -> Result<(), (IssueCode, String)> {
    match type_code {
        "boolean" => match value {
            Value::Bool(_) => Ok(()),
            other => Err(shape_error("boolean", "a JSON boolean", other)),
        },
        "decimal" => match value {
            Value::Number(_) => Ok(()),
            other => Err(shape_error("decimal", "a JSON number", other)),
        },
        "integer" | "positiveInt" | "unsignedInt" => match value {
            Value::Number(n) => check_integer(n.as_str(), type_code),
            other => Err(shape_error(type_code, "a JSON number", other)),
        },
        _ => match value {
            Value::String(s) => check_string(s, type_code),
            other => Err(shape_error(type_code, "a JSON string", other)),
        },
    }
}

fn shape_error(type_code: &str, expected: &str, found: &Value) -> (IssueCode, String) {
    (IssueCode::Structure, format!("A {type_code} must be {expected}, found {}", describe(found)))
}

/// Short description of a JSON value's kind, for messages.
pub(crate) fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(type_code: &str, value: &str, rule: &str) -> (IssueCode, String) {
    let shown: String = value.chars().take(80).collect();
    (IssueCode::Value, format!("Invalid {type_code} '{shown}': {rule}"))
}

fn check_integer(text: &str, type_code: &str) -> Result<(), (IssueCode, String)> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !well_formed {
        return Err(invalid(
            type_code,
            text,
            "must be a whole number without fraction or exponent",
        ));
    }
    let Ok(n) = text.parse::<i32>() else {
        return Err(invalid(type_code, text, "out of the 32-bit integer range"));
    };
    match type_code {
        "positiveInt" if n < 1 => Err(invalid(type_code, text, "must be 1 or more")),
        "unsignedInt" if n < 0 => Err(invalid(type_code, text, "must be 0 or more")),
        _ => Ok(()),
    }
}

/// FHIR caps strings at 1 MiB (binary content goes in base64Binary).
const MAX_STRING_BYTES: usize = 1024 * 1024;

fn check_string(s: &str, type_code: &str) -> Result<(), (IssueCode, String)> {
    if s.is_empty() {
        return Err((IssueCode::Value, format!("A {type_code} must not be an empty string")));
    }
    if s.len() > MAX_STRING_BYTES && !matches!(type_code, "base64Binary" | "xhtml") {
        let message =
            format!("A {type_code} must not be longer than 1 MiB, found {} bytes", s.len());
        return Err((IssueCode::TooLong, message));
    }
    if s.chars().any(|c| (c as u32) < 0x20 && !matches!(c, '\t' | '\r' | '\n')) {
        return Err(invalid(type_code, s, "contains control characters"));
    }
    let ok = match type_code {
        "id" => is_valid_id(s),
        "code" => is_code(s),
        "uri" | "url" | "canonical" => !s.bytes().any(is_ascii_space),
        "oid" => is_oid(s),
        "uuid" => is_uuid(s),
        "date" => parse_date(s).is_some_and(|rest| rest.is_empty()),
        "dateTime" => is_date_time(s, false),
        "instant" => is_date_time(s, true),
        "time" => is_time(s),
        "base64Binary" => is_base64(s),
        "xhtml" => s.trim_start().starts_with("<div"),
        _ => true, // string, markdown
    };
    if ok { Ok(()) } else { Err(invalid(type_code, s, rule_of(type_code))) }
}

fn rule_of(type_code: &str) -> &'static str {
    match type_code {
        "id" => "must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'",
        "code" => "must not have leading, trailing or repeated whitespace",
        "uri" | "url" | "canonical" => "must not contain whitespace",
        "oid" => "must look like urn:oid:1.2.3",
        "uuid" => "must look like urn:uuid: followed by a lower-case UUID",
        "date" => "must be YYYY, YYYY-MM or YYYY-MM-DD with a real calendar date",
        "dateTime" => {
            "must be YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.sss) with a time zone"
        }
        "instant" => "must be YYYY-MM-DDThh:mm:ss(.sss) with a time zone",
        "time" => "must be hh:mm:ss(.sss)",
        "base64Binary" => "must be base64 (A-Z, a-z, 0-9, +, / and = padding)",
        "xhtml" => "must be an XHTML <div> element",
        _ => "malformed",
    }
}

fn is_ascii_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `[^\s]+(\s[^\s]+)*`: no leading/trailing whitespace, single whitespace between words.
fn is_code(s: &str) -> bool {
    let bytes = s.as_bytes();
    if is_ascii_space(bytes[0]) || is_ascii_space(bytes[bytes.len() - 1]) {
        return false;
    }
    !bytes.windows(2).any(|w| is_ascii_space(w[0]) && is_ascii_space(w[1]))
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else { return false };
    let mut arcs = rest.split('.');
    let first_ok = arcs.next().is_some_and(|a| matches!(a, "0" | "1" | "2"));
    let mut count = 0;
    let others_ok = arcs.all(|a| {
        count += 1;
        !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) && (a == "0" || !a.starts_with('0'))
    });
    first_ok && others_ok && count > 0
}

/// `urn:uuid:` + 8-4-4-4-12 lower-case hex digits.
fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else { return false };
    let groups: Vec<&str> = rest.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, len)| {
            g.len() == len && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn digits(s: &str, n: usize) -> Option<(u32, &str)> {
    let head = s.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, &s[n..]))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// Parses `YYYY(-MM(-DD)?)?` and returns what follows it.
fn parse_date(s: &str) -> Option<&str> {
    let (year, rest) = digits(s, 4)?;
    if year == 0 {
        return None;
    }
    let Some(rest) = rest.strip_prefix('-') else { return Some(rest) };
    let (month, rest) = digits(rest, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    let Some(rest) = rest.strip_prefix('-') else { return Some(rest) };
    let (day, rest) = digits(rest, 2)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(rest)
}

/// Parses `hh:mm:ss(.s+)?` and returns what follows it.
fn parse_time(s: &str) -> Option<&str> {
    let (hour, rest) = digits(s, 2)?;
    let (minute, rest) = digits(rest.strip_prefix(':')?, 2)?;
    let (second, rest) = digits(rest.strip_prefix(':')?, 2)?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    match rest.strip_prefix('.') {
        Some(fraction) => {
            let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 { None } else { Some(&fraction[n..]) }
        }
        None => Some(rest),
    }
}

fn is_time(s: &str) -> bool {
    parse_time(s).is_some_and(str::is_empty)
}

/// `Z` or `(+|-)hh:mm` with hh:mm at most 14:00.
fn is_zone(s: &str) -> bool {
    if s == "Z" {
        return true;
    }
    let Some(rest) = s.strip_prefix('+').or_else(|| s.strip_prefix('-')) else { return false };
    let Some((hour, rest)) = digits(rest, 2) else { return false };
    let Some((minute, rest)) = rest.strip_prefix(':').and_then(|r| digits(r, 2)) else {
        return false;
    };
    rest.is_empty() && minute <= 59 && (hour < 14 || (hour == 14 && minute == 0))
}

/// dateTime: a partial or full date, optionally `T` + time + zone (zone required with a
/// time). instant: full date, time and zone required.
fn is_date_time(s: &str, instant: bool) -> bool {
    let Some(rest) = parse_date(s) else { return false };
    let date_len = s.len() - rest.len();
    if rest.is_empty() {
        return !instant;
    }
    if date_len != 10 {
        return false;
    }
    let Some(time) = rest.strip_prefix('T') else { return false };
    parse_time(time).is_some_and(is_zone)
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+` with `=` only as trailing padding.
fn is_base64(s: &str) -> bool {
    let mut count = 0usize;
    let mut padding = 0usize;
    for b in s.bytes() {
        if is_ascii_space(b) {
            continue;
        }
        if b == b'=' {
            padding += 1;
        } else if padding > 0 || !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/') {
            return false;
        }
        count += 1;
    }
    count > 0 && count.is_multiple_of(4) && padding <= 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(value: Value, t: &str) -> bool {
        check_primitive(&value, t).is_ok()
    }

    #[test]
    fn dates() {
        for good in ["2024", "2024-02", "2024-02-29", "2000-02-29", "0001-01-01"] {
            assert!(ok(json!(good), "date"), "{good}");
        }
        for bad in ["0000", "2023-02-29", "1900-02-29", "2024-13", "2024-1-01", "2024-04-31", "24"]
        {
            assert!(!ok(json!(bad), "date"), "{bad}");
        }
        assert!(!ok(json!("2024-01-01T10:00:00Z"), "date"));
    }

    #[test]
    fn date_times_and_instants() {
        for good in [
            "2015",
            "2015-02",
            "2015-02-07",
            "2015-02-07T13:28:17-05:00",
            "2017-01-01T00:00:00.000Z",
        ] {
            assert!(ok(json!(good), "dateTime"), "{good}");
        }
        for bad in [
            "2015-02-07T13:28:17",
            "2015-02-07T13:28Z",
            "2015-02T10:00:00Z",
            "2015-02-07T24:00:00Z",
        ] {
            assert!(!ok(json!(bad), "dateTime"), "{bad}");
        }
        assert!(!ok(json!("2015-02-07T13:28:17+14:30"), "dateTime"));
        assert!(ok(json!("2015-02-07T13:28:17.239+02:00"), "instant"));
        assert!(!ok(json!("2015-02-07"), "instant"));
        assert!(!ok(json!("2015-02-07T13:28:17"), "instant"));
    }

    #[test]
    fn times() {
        assert!(ok(json!("09:30:00"), "time"));
        assert!(ok(json!("23:59:60.5"), "time"));
        assert!(!ok(json!("9:30"), "time"));
        assert!(!ok(json!("09:30"), "time"));
        assert!(!ok(json!("09:30:00Z"), "time"));
    }

    #[test]
    fn numbers() {
        let n = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        assert!(ok(n("12"), "integer"));
        assert!(ok(n("-3"), "integer"));
        assert!(!ok(n("1.0"), "integer"));
        assert!(!ok(n("1e3"), "integer"));
        assert!(!ok(n("2147483648"), "integer"));
        assert!(!ok(json!("12"), "integer"));
        assert!(ok(n("1"), "positiveInt"));
        assert!(!ok(n("0"), "positiveInt"));
        assert!(ok(n("0"), "unsignedInt"));
        assert!(!ok(n("-1"), "unsignedInt"));
        assert!(ok(n("1.50"), "decimal"));
        assert!(ok(n("1e-3"), "decimal"));
        assert!(!ok(json!("1.5"), "decimal"));
        assert!(ok(json!(true), "boolean"));
        assert!(!ok(json!("true"), "boolean"));
    }

    #[test]
    fn strings() {
        assert!(!ok(json!(""), "string"));
        assert!(ok(json!("a b\tc\r\n"), "string"));
        assert!(!ok(json!("bell\u{7}"), "string"));
        assert!(ok(json!("final"), "code"));
        assert!(ok(json!("two words"), "code"));
        assert!(!ok(json!(" lead"), "code"));
        assert!(!ok(json!("trail "), "code"));
        assert!(!ok(json!("two  spaces"), "code"));
        assert!(ok(json!("abc-1.2"), "id"));
        assert!(!ok(json!("a_b"), "id"));
        assert!(ok(json!("http://example.org/a?b=c"), "uri"));
        assert!(!ok(json!("http://example.org/a b"), "uri"));
        assert!(ok(json!("urn:oid:1.2.840.10008"), "oid"));
        assert!(!ok(json!("urn:oid:1.02"), "oid"));
        assert!(!ok(json!("1.2.3"), "oid"));
        assert!(ok(json!("urn:uuid:a76d9bbf-f293-4fb7-ad4c-2851cac77162"), "uuid"));
        assert!(!ok(json!("urn:uuid:A76D9BBF-F293-4FB7-AD4C-2851CAC77162"), "uuid"));
        assert!(ok(json!("SGVs bG8g\n V29y bGQ="), "base64Binary"));
        assert!(!ok(json!("SGVsbG8"), "base64Binary"));
        assert!(!ok(json!("SG=sbG8="), "base64Binary"));
        assert!(!ok(json!("SGVs*G8="), "base64Binary"));
        assert!(ok(json!("<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"), "xhtml"));
        assert!(!ok(json!("<p>x</p>"), "xhtml"));
        assert!(!ok(json!(5), "string"));
        assert!(!ok(json!("x".repeat(MAX_STRING_BYTES + 1)), "string"));
        assert!(ok(json!("QUJD".repeat(MAX_STRING_BYTES)), "base64Binary"));
    }
}
