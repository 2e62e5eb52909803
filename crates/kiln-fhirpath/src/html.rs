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

/// What the narrative checks found in an XHTML text. `htmlChecks()` is all three; FHIR
/// splits them into two invariants: txt-1 (a well-formed `div` using only the allowed
/// elements and attributes) and txt-2 (some non-whitespace content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarrativeCheck {
    /// The text parses as XML (elements balanced and properly closed).
    pub well_formed: bool,
    /// One root `div` in the XHTML namespace, nothing but whitespace around it, and only
    /// the allowed elements and attributes (no script, form, event handler,
    /// `javascript:` link, processing instruction or DOCTYPE).
    pub allowed: bool,
    /// Some non-whitespace text, character reference or image (read up to the first
    /// well-formedness error).
    pub content: bool,
}

impl NarrativeCheck {
    /// txt-1: well formed and only allowed markup.
    pub fn structure_ok(&self) -> bool {
        self.well_formed && self.allowed
    }

    /// txt-2: some content. A text that is not well formed is txt-1's problem, not this one's.
    pub fn content_ok(&self) -> bool {
        self.content || !self.well_formed
    }
}

/// Whether `text` passes the narrative checks.
pub(crate) fn narrative_ok(text: &str) -> bool {
    let c = check(text);
    c.well_formed && c.allowed && c.content
}

/// Runs the narrative checks on `text`.
pub(crate) fn check(text: &str) -> NarrativeCheck {
    let mut reader = Reader::from_str(text);
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut found = NarrativeCheck { well_formed: true, allowed: true, content: false };
    loop {
        let Ok(event) = reader.read_event() else {
            found.well_formed = false;
            break;
        };
        match event {
            Event::Start(e) => {
                found.allowed &= element(&e, depth == 0).is_some();
                found.content |= e.local_name().as_ref() == b"img";
                roots += usize::from(depth == 0);
                depth += 1;
            }
            Event::Empty(e) => {
                found.allowed &= element(&e, depth == 0).is_some();
                found.content |= e.local_name().as_ref() == b"img";
                roots += usize::from(depth == 0);
            }
            Event::End(_) => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => {
                    found.well_formed = false;
                    break;
                }
            },
            Event::Text(t) => {
                let blank = t.iter().all(u8::is_ascii_whitespace);
                if depth == 0 && !blank {
                    found.allowed = false;
                }
                found.content |= !blank;
            }
            Event::CData(_) | Event::GeneralRef(_) => {
                if depth == 0 {
                    found.allowed = false;
                }
                found.content = true;
            }
            Event::Comment(_) => {}
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => found.allowed = false,
            Event::Eof => break,
        }
    }
    found.well_formed &= depth == 0;
    found.allowed &= roots == 1;
    found
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
    use super::{check, narrative_ok};

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

    #[test]
    fn structure_and_content_are_told_apart() {
        let of = |body: &str| check(&format!("<div {NS}>{body}</div>"));
        // txt-1 alone: forbidden markup, with or without content.
        for body in ["<script>alert(1)</script>", "<p onclick=\"x()\">text</p>", "<form/>"] {
            let c = of(body);
            assert!(!c.structure_ok() && c.well_formed, "{body}");
        }
        assert!(of("<script>alert(1)</script>").content_ok());
        assert!(!of("<script/>").content_ok());
        // txt-2 alone: allowed markup, no content.
        for body in ["", "  \n ", "<p> </p>", "<!-- a comment -->"] {
            let c = of(body);
            assert!(c.structure_ok() && !c.content_ok(), "{body:?}");
        }
        // Content: text, a character reference, an image.
        for body in ["x", "&amp;", "<img src=\"#a\"/>", "<p><b>bold</b></p>"] {
            let c = of(body);
            assert!(c.structure_ok() && c.content_ok(), "{body}");
        }
        // Not well formed: txt-1's, and txt-2 is not judged.
        let broken = of("<p>unclosed");
        assert!(!broken.well_formed && !broken.structure_ok() && broken.content_ok());
        let broken = check("<div>a</div></p>");
        assert!(!broken.well_formed);
        // A root that is not a div, two roots, text outside the root: structure.
        assert!(!check(&format!("<p {NS}>x</p>")).structure_ok());
        assert!(!check(&format!("<div {NS}>a</div><div {NS}>b</div>")).structure_ok());
        assert!(!check(&format!("x<div {NS}>a</div>")).structure_ok());
        assert!(
            !check("<?xml version=\"1.0\"?><div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>")
                .structure_ok()
        );
        // Every combination agrees with htmlChecks().
        for body in ["x", "", "<script>x</script>", "<p>unclosed"] {
            let text = format!("<div {NS}>{body}</div>");
            let c = check(&text);
            assert_eq!(narrative_ok(&text), c.structure_ok() && c.content && c.well_formed);
        }
    }
}
