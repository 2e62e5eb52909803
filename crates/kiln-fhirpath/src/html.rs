//! The narrative rules behind `htmlChecks()` (FHIR R4 invariants txt-1 and txt-2): the text is
//! one well-formed XHTML `<div>` that uses only plain formatting elements and attributes (no
//! scripts, forms, frames, objects, event handlers or `javascript:` links) and has some content:
//! non-whitespace text or an image.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// Elements a narrative may use: text formatting, lists, tables, links and images.
const ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "area",
    "b",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "kbd",
    "li",
    "map",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "ul",
    "var",
];

/// Attributes a narrative element may carry (namespace declarations and `xml:` attributes are
/// allowed besides these).
const ATTRIBUTES: &[&str] = &[
    "abbr",
    "accesskey",
    "align",
    "alt",
    "axis",
    "bgcolor",
    "border",
    "cellpadding",
    "cellspacing",
    "char",
    "charoff",
    "charset",
    "cite",
    "class",
    "colspan",
    "compact",
    "coords",
    "dir",
    "frame",
    "headers",
    "height",
    "href",
    "hreflang",
    "id",
    "lang",
    "name",
    "nohref",
    "rel",
    "rev",
    "rowspan",
    "rules",
    "scope",
    "shape",
    "span",
    "src",
    "start",
    "style",
    "summary",
    "tabindex",
    "title",
    "type",
    "usemap",
    "valign",
    "value",
    "width",
];

const XHTML_NS: &[u8] = b"http://www.w3.org/1999/xhtml";

/// Whether `text` passes the narrative checks.
pub(crate) fn narrative_ok(text: &str) -> bool {
    check(text).is_some()
}

fn check(text: &str) -> Option<()> {
    let mut reader = Reader::from_str(text);
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut content = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                element(&e, depth == 0)?;
                content |= e.local_name().as_ref() == b"img";
                roots += usize::from(depth == 0);
                depth += 1;
            }
            Event::Empty(e) => {
                element(&e, depth == 0)?;
                content |= e.local_name().as_ref() == b"img";
                roots += usize::from(depth == 0);
            }
            Event::End(_) => depth = depth.checked_sub(1)?,
            Event::Text(t) => {
                let blank = t.iter().all(u8::is_ascii_whitespace);
                if depth == 0 && !blank {
                    return None;
                }
                content |= !blank;
            }
            Event::CData(_) | Event::GeneralRef(_) => {
                if depth == 0 {
                    return None;
                }
                content = true;
            }
            Event::Comment(_) => {}
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => return None,
            Event::Eof => break,
        }
    }
    (depth == 0 && roots == 1 && content).then_some(())
}

/// Checks one element's name and attributes; the root must be a `div` in the XHTML namespace.
fn element(e: &BytesStart<'_>, root: bool) -> Option<()> {
    let name = std::str::from_utf8(e.local_name().into_inner()).ok()?;
    if !ELEMENTS.contains(&name) || (root && name != "div") {
        return None;
    }
    let mut namespace = false;
    for attr in e.attributes() {
        let attr = attr.ok()?;
        let key = attr.key.as_ref();
        if key == b"xmlns" {
            namespace = attr.value.as_ref() == XHTML_NS;
            if !namespace {
                return None;
            }
            continue;
        }
        if key.starts_with(b"xmlns:") || key.starts_with(b"xml:") {
            continue;
        }
        let key = std::str::from_utf8(key).ok()?;
        if !ATTRIBUTES.contains(&key) {
            return None;
        }
        if matches!(key, "href" | "src") {
            let value = String::from_utf8_lossy(&attr.value).trim().to_ascii_lowercase();
            if value.starts_with("javascript:") || value.starts_with("vbscript:") {
                return None;
            }
        }
    }
    (!root || namespace).then_some(())
}

#[cfg(test)]
mod tests {
    use super::narrative_ok;

    const NS: &str = "xmlns=\"http://www.w3.org/1999/xhtml\"";

    #[test]
    fn narratives() {
        let ok = |body: &str| narrative_ok(&format!("<div {NS}>{body}</div>"));
        assert!(ok("<p>Peter <b>Chalmers</b></p><table><tr><td>x</td></tr></table>"));
        assert!(ok("<a href=\"http://x\">link</a> &amp; <br/> text"));
        assert!(ok("<img src=\"#a\" alt=\"\"/>"));
        assert!(ok("<span style=\"color: red\" xml:lang=\"en\">x</span>"));
        assert!(!ok("<script>alert(1)</script>text"));
        assert!(!ok("<p onclick=\"alert(1)\">text</p>"));
        assert!(!ok("<a href=\"javascript:alert(1)\">x</a>"));
        assert!(!ok("<iframe src=\"http://x\"/>text"));
        assert!(!ok(""));
        assert!(!ok("  <p> </p> "));
        assert!(!ok("<p>unclosed"));
        assert!(!ok("<p>x</b>"));
        assert!(!narrative_ok("<div>no namespace</div>"));
        assert!(!narrative_ok(&format!("<p {NS}>not a div</p>")));
        assert!(!narrative_ok(&format!("<div {NS}>a</div><div {NS}>b</div>")));
        assert!(!narrative_ok(&format!("<div {NS}>a")));
    }
}
