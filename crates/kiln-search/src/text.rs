//! `_content` and `_text`: plain substring search over a resource's text, defined so that a
//! SQL engine can compute exactly the same thing from the stored JSON (no index: the stores
//! scan the bodies of the rows their other filters leave).
//!
//! - The search value is a phrase (commas separate alternatives, as everywhere); it matches
//!   when it occurs as written, spaces included, in some text of the resource.
//! - Case folding is of ASCII letters only ([`fold_text`]): SQLite's `lower()` and
//!   PostgreSQL's `lower(… COLLATE "C")` do exactly that, so both backends agree with this
//!   evaluator. Accents and non-ASCII case are compared as written (`zurich` does not find
//!   `Zürich`; `ZÜRICH` does not find `zürich`).
//! - `_content` ([`TextScope::Content`]) looks in every JSON string value (not keys, numbers
//!   or booleans) except the resource's own `resourceType`, `id` and `meta`.
//! - `_text` ([`TextScope::Narrative`]) looks in `text.div` with its tags removed
//!   ([`strip_tags`]) and the five XML entities decoded; numeric character references stay
//!   as written.

use crate::query::TextScope;
use serde_json::Value;

/// `s` with ASCII letters in lower case (and nothing else changed).
pub fn fold_text(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// `s` without its tags: every `<` with the first `>` after it, and what lies between, is
/// removed (the regular expression `<[^>]*>` replaced by nothing, left to right); a `<`
/// without a `>` after it stays. So `<b>Heart</b> rate` reads `Heart rate`.
pub fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else { break };
        out.push_str(&rest[..open]);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// The five XML entities, in the order they are decoded (`&amp;` last, so `&amp;lt;` reads
/// `&lt;`). The SQL engines apply the same `replace` calls in the same order.
pub const XML_ENTITIES: [(&str, &str); 5] =
    [("&lt;", "<"), ("&gt;", ">"), ("&quot;", "\""), ("&apos;", "'"), ("&amp;", "&")];

/// The narrative text `_text` searches: `text.div` without tags, entities decoded, folded.
pub fn narrative_text(resource: &Value) -> Option<String> {
    let div = resource.get("text")?.get("div")?.as_str()?;
    let mut text = strip_tags(div);
    for (entity, character) in XML_ENTITIES {
        text = text.replace(entity, character);
    }
    Some(fold_text(&text))
}

/// Whether one of `phrases` (already folded) occurs in the text of `resource` that `scope`
/// names.
pub fn text_holds(scope: TextScope, phrases: &[String], resource: &Value) -> bool {
    let found = |text: &str| {
        let text = fold_text(text);
        phrases.iter().any(|p| text.contains(p.as_str()))
    };
    match scope {
        TextScope::Narrative => narrative_text(resource).is_some_and(|t| found(&t)),
        TextScope::Content => {
            let Value::Object(fields) = resource else { return false };
            fields
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "resourceType" | "id" | "meta"))
                .any(|(_, v)| any_string(v, &found))
        }
    }
}

fn any_string(v: &Value, found: &dyn Fn(&str) -> bool) -> bool {
    match v {
        Value::String(s) => found(s),
        Value::Array(items) => items.iter().any(|i| any_string(i, found)),
        Value::Object(fields) => fields.values().any(|i| any_string(i, found)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tags_are_removed_like_the_regex() {
        assert_eq!(strip_tags("<div>a<b>b</b>c</div>"), "abc");
        assert_eq!(strip_tags("a<b<c>d"), "ad");
        assert_eq!(strip_tags("a > b < c"), "a > b < c");
        assert_eq!(strip_tags("x<y"), "x<y");
        assert_eq!(strip_tags("<p\nclass=\"q\">z</p>"), "z");
        assert_eq!(strip_tags("é<i>ü</i>"), "éü");
    }

    #[test]
    fn narrative_and_content() {
        let r = json!({
            "resourceType": "Patient", "id": "pat1", "meta": {"source": "secret"},
            "text": {"status": "generated",
                     "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><b>Heart</b> RATE &amp;lt; &lt;i&gt; Zürich</div>"},
            "name": [{"family": "O'Brien", "given": ["Ánna"]}],
            "multipleBirthInteger": 2,
            "contained": [{"resourceType": "Organization", "id": "org", "name": "Acme"}]
        });
        let holds = |scope, p: &str| text_holds(scope, &[fold_text(p)], &r);
        assert_eq!(narrative_text(&r).unwrap(), "heart rate &lt; <i> zürich");
        assert!(holds(TextScope::Narrative, "heart rate"));
        assert!(holds(TextScope::Narrative, "<i>"));
        assert!(holds(TextScope::Narrative, "&lt;"));
        assert!(!holds(TextScope::Narrative, "xhtml"), "attributes are tags");
        assert!(!holds(TextScope::Narrative, "ZÜRICH"), "only ASCII letters fold");
        assert!(holds(TextScope::Content, "o'brien"));
        assert!(holds(TextScope::Content, "Ánna"));
        assert!(!holds(TextScope::Content, "anna"), "accents count");
        assert!(holds(TextScope::Content, "acme"), "contained resources count");
        assert!(holds(TextScope::Content, "organization"), "and their resourceType");
        assert!(holds(TextScope::Content, "xhtml"), "the div is a string value");
        assert!(!holds(TextScope::Content, "patient"));
        assert!(!holds(TextScope::Content, "pat1"));
        assert!(!holds(TextScope::Content, "secret"));
        assert!(!holds(TextScope::Content, "family"), "keys are not text");
        assert!(!holds(TextScope::Content, "2"), "numbers are not text");
        assert!(!text_holds(
            TextScope::Narrative,
            &["a".into()],
            &json!({"resourceType": "Basic"})
        ));
    }
}
