//! A minimal JSON writer: objects and arrays are written straight into a byte buffer by
//! closures, in the order the code names their members.
//!
//! Why not `serde_json::json!`: building a `Value` tree allocates a map and a string per member
//! and then walks the tree again to print it; writing bytes directly is several times faster,
//! and key order is simply the order of the calls (so output is deterministic by construction).
//! The cost is that nothing checks a key is used once: the resource writers are tested by
//! parsing and validating what they produce.
//!
//! Keys are `&'static str` literals and never escaped; string values are escaped per RFC 8259.

use std::io::Write as _;

/// A fixed-point decimal: `units / 10^scale`, printed with exactly `scale` decimals (`72.50`
/// stays `72.50`), as FHIR decimals keep their precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dec {
    pub units: i64,
    pub scale: u8,
}

impl Dec {
    /// `value` rounded half away from zero to `scale` decimals.
    pub(crate) fn round(value: f64, scale: u8) -> Dec {
        let scale = scale.min(4);
        Dec { units: (value * pow10(scale)).round() as i64, scale }
    }

    /// The value as a float (for comparisons, not for output).
    pub(crate) fn value(self) -> f64 {
        self.units as f64 / pow10(self.scale)
    }

    pub(crate) fn int(units: i64) -> Dec {
        Dec { units, scale: 0 }
    }

    pub(crate) fn write(self, out: &mut Vec<u8>) {
        if self.scale == 0 {
            let _ = write!(out, "{}", self.units);
            return;
        }
        let factor = 10i64.pow(u32::from(self.scale));
        if self.units < 0 {
            out.push(b'-');
        }
        let abs = self.units.unsigned_abs();
        let _ = write!(
            out,
            "{}.{:0width$}",
            abs / factor as u64,
            abs % factor as u64,
            width = usize::from(self.scale)
        );
    }
}

impl std::fmt::Display for Dec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = Vec::new();
        self.write(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// 10^scale for scale 0..=4: a table rather than `powi`, whose result is not specified bit for
/// bit across platforms.
pub(crate) fn pow10(scale: u8) -> f64 {
    const FACTORS: [f64; 5] = [1.0, 10.0, 100.0, 1000.0, 10000.0];
    FACTORS[usize::from(scale.min(4))]
}

/// Appends `s` as a JSON string literal.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// An open JSON object; members are appended in call order.
pub(crate) struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

/// An open JSON array.
pub(crate) struct Arr<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

/// Writes one object into `out` with `f`.
pub(crate) fn object(out: &mut Vec<u8>, f: impl FnOnce(&mut Obj<'_>)) {
    out.push(b'{');
    f(&mut Obj { out, first: true });
    out.push(b'}');
}

impl<'a> Obj<'a> {
    fn key(&mut self, key: &str) {
        debug_assert!(!key.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_str(self.out, value);
        self
    }

    /// A string member whose value is already valid JSON string content (ASCII with nothing
    /// to escape, e.g. an id or a formatted date): copied without the escape scan.
    pub(crate) fn ascii(&mut self, key: &str, value: &[u8]) -> &mut Self {
        debug_assert!(
            value.iter().all(|b| b.is_ascii() && *b >= 0x20 && *b != b'"' && *b != b'\\')
        );
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(value);
        self.out.push(b'"');
        self
    }

    pub(crate) fn int(&mut self, key: &str, value: i64) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    pub(crate) fn dec(&mut self, key: &str, value: Dec) -> &mut Self {
        self.key(key);
        value.write(self.out);
        self
    }

    pub(crate) fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// A member whose JSON value `f` appends to the buffer itself (it must write exactly one
    /// valid JSON value).
    pub(crate) fn raw_with(&mut self, key: &str, f: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.key(key);
        f(self.out);
        self
    }

    pub(crate) fn obj(&mut self, key: &str, f: impl FnOnce(&mut Obj<'_>)) -> &mut Self {
        self.key(key);
        object(self.out, f);
        self
    }

    pub(crate) fn arr(&mut self, key: &str, f: impl FnOnce(&mut Arr<'_>)) -> &mut Self {
        self.key(key);
        self.out.push(b'[');
        f(&mut Arr { out: self.out, first: true });
        self.out.push(b']');
        self
    }

    /// An array holding one string.
    pub(crate) fn str1(&mut self, key: &str, value: &str) -> &mut Self {
        self.arr(key, |a| {
            a.str(value);
        })
    }
}

impl<'a> Arr<'a> {
    fn sep(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    pub(crate) fn obj(&mut self, f: impl FnOnce(&mut Obj<'_>)) -> &mut Self {
        self.sep();
        object(self.out, f);
        self
    }

    pub(crate) fn str(&mut self, value: &str) -> &mut Self {
        self.sep();
        write_str(self.out, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Obj<'_>)) -> String {
        let mut out = Vec::new();
        object(&mut out, f);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_members_in_call_order() {
        let s = text(|o| {
            o.str("b", "x").int("a", -3).bool("t", true).obj("o", |_| {}).arr("l", |a| {
                a.str("1").obj(|o| {
                    o.dec("d", Dec { units: 7250, scale: 2 });
                });
            });
        });
        assert_eq!(s, r#"{"b":"x","a":-3,"t":true,"o":{},"l":["1",{"d":72.50}]}"#);
    }

    #[test]
    fn escapes_strings() {
        let s = text(|o| {
            o.str("s", "a\"b\\c\nd\u{1}é");
        });
        assert_eq!(s, r#"{"s":"a\"b\\c\nd\u0001é"}"#);
        let parsed: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(parsed["s"], "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(Dec::round(72.456, 1).to_string(), "72.5");
        assert_eq!(Dec::round(-0.05, 1).to_string(), "-0.1");
        assert_eq!(Dec { units: -5, scale: 2 }.to_string(), "-0.05");
        assert_eq!(Dec { units: 100, scale: 1 }.to_string(), "10.0");
        assert_eq!(Dec::int(120).to_string(), "120");
    }
}
