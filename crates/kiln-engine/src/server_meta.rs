//! Medplum's server-side `meta` fields (`meta.project`, `meta.author`, `meta.compartment`,
//! `meta.account`) are not FHIR R4 elements: Kiln keeps them in the stored JSON (so that
//! Medplum's SDK, which asks for them with `X-Medplum: extended`, gets the stored bytes as
//! they are) and removes them for every other client, whose validators would reject them.
//!
//! The removal works on the bytes: one pass over the top-level members to find `meta`, one over
//! `meta`'s members, then a copy without the four. No parse into a tree and no re-serialising,
//! so a plain FHIR client pays a copy of the body, not a parse. The scanner understands exactly
//! what `serde_json` writes (no whitespace between tokens is needed, but any is tolerated);
//! on anything it does not expect it gives up and the body is parsed and rewritten instead
//! ([`strip_slow`]), so the answer is always right.

use std::borrow::Cow;

use serde_json::Value;

/// The `meta` members only Medplum's extended mode shows.
pub const SERVER_META: [&str; 4] = ["project", "author", "compartment", "account"];

/// `body` (a resource's JSON) without the [`SERVER_META`] members of its `meta`.
pub fn strip(body: &[u8]) -> Cow<'_, [u8]> {
    match strip_fast(body) {
        Some(Some(out)) => Cow::Owned(out),
        Some(None) => Cow::Borrowed(body),
        None => strip_slow(body).map_or(Cow::Borrowed(body), Cow::Owned),
    }
}

/// The same through `serde_json` (`None`: nothing to remove, or not JSON).
fn strip_slow(body: &[u8]) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let meta = value.get_mut("meta")?.as_object_mut()?;
    let before = meta.len();
    for key in SERVER_META {
        meta.shift_remove(key);
    }
    if meta.len() == before {
        return None;
    }
    serde_json::to_vec(&value).ok()
}

/// `None`: the scanner gave up; `Some(None)`: nothing to remove; `Some(Some(out))`: done.
fn strip_fast(body: &[u8]) -> Option<Option<Vec<u8>>> {
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.expect(b'{')?;
    // The top-level members up to `meta` (written third by Kiln; searched for in any place).
    let (meta_start, meta_end) = loop {
        s.ws();
        if s.peek()? == b'}' {
            return Some(None);
        }
        let key = s.string()?;
        s.ws();
        s.expect(b':')?;
        s.ws();
        let start = s.i;
        s.value()?;
        if key == b"meta" {
            break (start, s.i);
        }
        s.ws();
        match s.next()? {
            b',' => continue,
            b'}' => return Some(None),
            _ => return None,
        }
    };
    // The members of `meta`, as byte ranges (each from its key to the end of its value).
    let mut m = Scanner { b: &body[..meta_end], i: meta_start };
    m.expect(b'{')?;
    let mut members: Vec<(usize, usize, bool)> = Vec::new();
    loop {
        m.ws();
        if m.peek()? == b'}' {
            break;
        }
        let start = m.i;
        let key = m.string()?;
        m.ws();
        m.expect(b':')?;
        m.ws();
        m.value()?;
        let drop = SERVER_META.iter().any(|k| k.as_bytes() == key);
        members.push((start, m.i, drop));
        m.ws();
        match m.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    if !members.iter().any(|(_, _, drop)| *drop) {
        return Some(None);
    }
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..meta_start]);
    out.push(b'{');
    let mut first = true;
    for (start, end, drop) in members {
        if drop {
            continue;
        }
        if !first {
            out.push(b',');
        }
        out.extend_from_slice(&body[start..end]);
        first = false;
    }
    out.push(b'}');
    out.extend_from_slice(&body[meta_end..]);
    Some(Some(out))
}

/// A cursor over JSON text that can skip values without building them.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    /// A string; returns its raw contents (escapes left as they are).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => return Some(&self.b[start..self.i - 1]),
                b'\\' => {
                    self.next()?;
                }
                _ => {}
            }
        }
    }

    /// Skips one value of any kind.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                // Nested containers: count depth; strings are skipped whole.
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                // A number, true, false or null: up to the next delimiter.
                let start = self.i;
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
                ) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let fast = strip(&bytes);
        let slow = strip_slow(&bytes).unwrap_or_else(|| bytes.clone());
        let a: Value = serde_json::from_slice(&fast).unwrap();
        let b: Value = serde_json::from_slice(&slow).unwrap();
        assert_eq!(a, b, "{v}");
        // And the order of what remains is unchanged.
        assert_eq!(fast.as_ref(), slow.as_slice(), "{v}");
    }

    #[test]
    fn removes_the_server_members_and_nothing_else() {
        let v = json!({"resourceType": "Patient", "id": "p1", "meta": {
            "versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z",
            "tag": [{"system": "x", "code": "\"project\":\"p\""}],
            "project": "abc", "author": {"reference": "Practitioner/1", "display": "A {b} [c]"},
            "compartment": [{"reference": "Patient/p1"}], "account": {"reference": "Organization/o"}},
            "name": [{"family": "meta"}], "project": "kept"});
        let out = strip(&serde_json::to_vec(&v).unwrap()).into_owned();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out["meta"],
            json!({"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z",
            "tag": [{"system": "x", "code": "\"project\":\"p\""}]})
        );
        assert_eq!(out["project"], "kept", "only meta's members go");
        check(v);
    }

    #[test]
    fn agrees_with_the_slow_way_on_many_shapes() {
        check(json!({"resourceType": "Patient"}));
        check(json!({"resourceType": "Patient", "meta": {}}));
        check(json!({"resourceType": "Patient", "meta": {"project": "x"}}));
        check(
            json!({"meta": {"author": {"reference": "a"}, "versionId": "1"}, "resourceType": "X"}),
        );
        check(
            json!({"resourceType": "X", "id": "1", "meta": {"versionId": "1", "project": "p"}, "n": [1.5, -2e3, true, null, "\\\\"]}),
        );
        check(
            json!({"resourceType": "X", "text": {"div": "<div>\"}{][\\</div>"}, "meta": {"project": "p", "security": []}}),
        );
        // Escapes and unicode in keys and values before meta.
        check(
            json!({"resourceType": "X", "a\"b": "c\\\"d", "é": "ü", "meta": {"lastUpdated": "t", "project": "p"}}),
        );
    }

    #[test]
    fn tolerates_whitespace_and_gives_up_safely_on_junk() {
        let pretty = b"{ \"resourceType\" : \"X\" ,\n \"meta\" : { \"project\" : \"p\" , \"versionId\" : \"1\" } }";
        let out: Value = serde_json::from_slice(&strip(pretty)).unwrap();
        assert_eq!(out, json!({"resourceType": "X", "meta": {"versionId": "1"}}));
        for junk in
            [&b""[..], b"{", b"[1,2]", b"{\"meta\":", b"{\"meta\":{\"project\"", b"not json"]
        {
            assert_eq!(strip(junk).as_ref(), junk);
        }
    }
}
