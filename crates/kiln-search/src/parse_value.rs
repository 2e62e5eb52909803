//! The search value grammar: `\`-escaping of `,` `$` `|`, comparison prefixes, and one
//! [`Criterion`] per alternative by parameter type.

use crate::index::{DateRange, NumberRange};
use crate::normalize::{date_range, normalize_string, number_range};
use crate::query::{Criterion, Modifier, Prefix, RefQuery, SystemMatch};
use crate::values::{local_parts, split_version};
use kiln_definitions::SearchParamType;

/// Splits on `sep` where it is not escaped with `\`; the parts keep their escapes.
pub(crate) fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Removes the escapes: `\,` → `,`, `\$` → `$`, `\|` → `|`, `\\` → `\`. A backslash before
/// any other character (or at the end) is kept.
pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&n @ (',' | '$' | '|' | '\\'))) => {
                out.push(n);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// Splits a leading comparison prefix off a date/number/quantity value. Two lower-case
/// letters that are not a prefix are an error (`xx5`).
fn prefix(value: &str) -> Result<(Prefix, &str), String> {
    let head = value.get(..2).unwrap_or("");
    let p = match head {
        "eq" => Prefix::Eq,
        "ne" => Prefix::Ne,
        "gt" => Prefix::Gt,
        "lt" => Prefix::Lt,
        "ge" => Prefix::Ge,
        "le" => Prefix::Le,
        "sa" => Prefix::Sa,
        "eb" => Prefix::Eb,
        "ap" => Prefix::Ap,
        _ if head.len() == 2 && head.bytes().all(|b| b.is_ascii_lowercase()) => {
            return Err(format!("unknown prefix '{head}'"));
        }
        _ => return Ok((Prefix::Eq, value)),
    };
    Ok((p, &value[2..]))
}

/// What a value is parsed against.
pub(crate) struct ValueContext<'a> {
    /// The parameter's type.
    pub(crate) kind: SearchParamType,
    /// The modifier.
    pub(crate) modifier: &'a Modifier,
    /// A reference parameter's target types.
    pub(crate) targets: &'a [String],
    /// Component types of a composite.
    pub(crate) components: &'a [SearchParamType],
    /// "Now", in epoch milliseconds, for date `ap`.
    pub(crate) now_ms: i64,
}

/// One alternative (still escaped) as a criterion; the error says what is wrong with it.
pub(crate) fn criterion(raw: &str, cx: &ValueContext<'_>) -> Result<Criterion, String> {
    match (cx.kind, cx.modifier) {
        (SearchParamType::Token, Modifier::Text) => {
            Ok(Criterion::Text(normalize_string(&unescape(raw))))
        }
        (SearchParamType::Token, Modifier::OfType) => {
            let parts = split_unescaped(raw, '|');
            let [system, code, value] = parts.as_slice() else {
                return Err("expected system|code|value".into());
            };
            let (system, code, value) = (unescape(system), unescape(code), unescape(value));
            if system.is_empty() || code.is_empty() || value.is_empty() {
                return Err("expected system|code|value".into());
            }
            Ok(Criterion::OfType { system, code, value })
        }
        (SearchParamType::Token, Modifier::In | Modifier::NotIn) => {
            let url = unescape(raw);
            if url.is_empty() || url.contains(char::is_whitespace) {
                return Err("expected the canonical URL of a ValueSet".into());
            }
            Ok(Criterion::ValueSet(url))
        }
        (SearchParamType::Token, Modifier::Below | Modifier::Above) => match token(raw)? {
            c @ Criterion::Token { system: SystemMatch::Is(_), code: Some(_) } => Ok(c),
            _ => Err("':below' and ':above' take system|code".into()),
        },
        (SearchParamType::Token, _) | (SearchParamType::Reference, Modifier::Identifier) => {
            token(raw)
        }
        (SearchParamType::String, _) => {
            let exact = unescape(raw);
            Ok(Criterion::String { normalized: normalize_string(&exact), exact })
        }
        (SearchParamType::Date, _) => {
            let (prefix, rest) = prefix(raw)?;
            let range =
                date_range(&unescape(rest)).ok_or_else(|| format!("invalid date '{rest}'"))?;
            let range = if prefix == Prefix::Ap { widen_date(range, cx.now_ms) } else { range };
            Ok(Criterion::Date { prefix, range })
        }
        (SearchParamType::Number, _) => {
            let (prefix, rest) = prefix(raw)?;
            Ok(Criterion::Number { prefix, range: number(prefix, &unescape(rest))? })
        }
        (SearchParamType::Quantity, _) => quantity(raw),
        (SearchParamType::Reference, _) => reference(&unescape(raw), cx),
        (SearchParamType::Uri, _) => Ok(Criterion::Uri(unescape(raw))),
        (SearchParamType::Composite, _) => {
            let parts = split_unescaped(raw, '$');
            if parts.len() != cx.components.len() {
                let n = cx.components.len();
                return Err(format!("expected {n} components separated by '$'"));
            }
            let mut criteria = Vec::with_capacity(parts.len());
            for (part, kind) in parts.iter().zip(cx.components) {
                let inner = ValueContext { kind: *kind, modifier: &Modifier::None, ..*cx };
                criteria.push(criterion(part, &inner)?);
            }
            Ok(Criterion::Composite(criteria))
        }
        (SearchParamType::Special, _) => Err("special parameters are not supported".into()),
    }
}

fn token(raw: &str) -> Result<Criterion, String> {
    let parts = split_unescaped(raw, '|');
    let non_empty = |s: &str| (!s.is_empty()).then(|| unescape(s));
    match parts.as_slice() {
        [code] => Ok(Criterion::Token { system: SystemMatch::Any, code: Some(unescape(code)) }),
        [system, code] => {
            let system = match non_empty(system) {
                Some(s) => SystemMatch::Is(s),
                None => SystemMatch::NoSystem,
            };
            let code = non_empty(code);
            if system == SystemMatch::NoSystem && code.is_none() {
                return Err("a token needs a system or a code".into());
            }
            Ok(Criterion::Token { system, code })
        }
        _ => Err("a token has at most one unescaped '|'".into()),
    }
}

fn number(prefix: Prefix, text: &str) -> Result<NumberRange, String> {
    let mut range = number_range(text).ok_or_else(|| format!("invalid number '{text}'"))?;
    if prefix == Prefix::Ap {
        widen(&mut range);
    }
    Ok(range)
}

/// `ap`: at least 10% of the value either side.
fn widen(range: &mut NumberRange) {
    let margin = range.min.abs() * 0.1;
    range.lo = range.lo.min(range.min - margin);
    range.hi = range.hi.max(range.min + margin);
}

fn quantity(raw: &str) -> Result<Criterion, String> {
    let (prefix, rest) = prefix(raw)?;
    let parts = split_unescaped(rest, '|');
    let (value, system, code) = match parts.as_slice() {
        [v] => (*v, None, None),
        [v, s, c] => {
            let opt = |s: &str| (!s.is_empty()).then(|| unescape(s));
            (*v, opt(s), opt(c))
        }
        _ => return Err("expected number or number|system|code".into()),
    };
    // A UCUM value is compared in base units with the canonical copies the index keeps.
    if system.as_deref() == Some(crate::values::UCUM)
        && let Some((factor, canonical)) = code.as_deref().and_then(kiln_fhirpath::ucum_canonical)
    {
        let text = unescape(value);
        let mut range = crate::normalize::scaled_number_range(&text, factor)
            .ok_or_else(|| format!("invalid number '{text}'"))?;
        if prefix == Prefix::Ap {
            widen(&mut range);
        }
        return Ok(Criterion::Quantity {
            prefix,
            range,
            system: Some(crate::values::UCUM_CANONICAL.to_string()),
            code: Some(canonical),
        });
    }
    Ok(Criterion::Quantity { prefix, range: number(prefix, &unescape(value))?, system, code })
}

fn reference(value: &str, cx: &ValueContext<'_>) -> Result<Criterion, String> {
    let type_modifier = match cx.modifier {
        Modifier::Type(t) => Some(t.clone()),
        _ => None,
    };
    if value.starts_with('#') {
        // A local reference names a contained resource only inside its container.
        return Err(format!("'{value}' is a local reference: chain through it instead"));
    }
    if !value.contains(['/', ':', '|']) {
        if value.is_empty() {
            return Err("empty reference".into());
        }
        let only_target = (cx.targets.len() == 1).then(|| cx.targets[0].clone());
        let target_type = type_modifier.or(only_target);
        return Ok(Criterion::Reference(RefQuery::Local { target_type, id: value.to_string() }));
    }
    let relative = !value.contains(':');
    let (url, version) = split_version(value);
    let local = local_parts(url).map(|(t, i)| (t.to_string(), i.to_string()));
    if let (Some(want), Some((t, _))) = (&type_modifier, &local)
        && want != t
    {
        return Err(format!("'{value}' is not a {want}"));
    }
    match local {
        Some((target_type, id)) if relative => {
            Ok(Criterion::Reference(RefQuery::Local { target_type: Some(target_type), id }))
        }
        _ if relative && version.is_none() => Err(format!("invalid reference '{value}'")),
        local => Ok(Criterion::Reference(RefQuery::Url { url: url.to_string(), version, local })),
    }
}

/// `ap` on a date: the range widened by 10% of its distance from now (at least its own
/// width is kept; a value at "now" is not widened).
fn widen_date(range: DateRange, now_ms: i64) -> DateRange {
    let mid = range.lo / 2 + range.hi / 2;
    let margin = (i128::from(now_ms) - i128::from(mid)).abs() / 10;
    let margin = i64::try_from(margin).unwrap_or(i64::MAX);
    DateRange { lo: range.lo.saturating_sub(margin), hi: range.hi.saturating_add(margin) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(split_unescaped(r"a,b\,c,", ','), vec!["a", r"b\,c", ""]);
        assert_eq!(unescape(r"b\,c\$d\|e\\f\x"), r"b,c$d|e\f\x");
        assert_eq!(split_unescaped(r"a\\,b", ','), vec![r"a\\", "b"]);
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix("ge2020").unwrap(), (Prefix::Ge, "2020"));
        assert_eq!(prefix("2020").unwrap(), (Prefix::Eq, "2020"));
        assert!(prefix("xx5").is_err());
        assert_eq!(prefix("").unwrap(), (Prefix::Eq, ""));
        assert_eq!(prefix("é").unwrap(), (Prefix::Eq, "é"));
    }
}
