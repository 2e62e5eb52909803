//! String functions. Positions and lengths count characters, not bytes. Regular expressions
//! use the `regex` crate with size limits and `.` matching newlines; `matches` finds a match
//! anywhere, `matchesFull` must match the whole string.

use super::{Call, boolean, opt};
use crate::eval::Res;
use crate::types::Item;

pub(super) fn call<'a>(c: &Call<'_, '_, 'a, '_>, name: &str) -> Option<Res<'a>> {
    let r = match name {
        "indexOf" | "startsWith" | "endsWith" | "contains" | "matches" | "matchesFull"
        | "split" | "encode" | "decode" | "escape" | "unescape" => one_arg(c, name),
        "substring" => substring(c),
        "upper" | "lower" | "length" | "toChars" | "trim" => no_arg(c, name),
        "replace" | "replaceMatches" => replace(c, name),
        "join" => join(c),
        _ => return None,
    };
    Some(r)
}

fn no_arg<'a>(c: &Call<'_, '_, 'a, '_>, name: &str) -> Res<'a> {
    let Some(s) = c.single_string()? else { return Ok(Vec::new()) };
    Ok(match name {
        "upper" => vec![Item::String(s.to_uppercase())],
        "lower" => vec![Item::String(s.to_lowercase())],
        "length" => vec![Item::Integer(s.chars().count() as i64)],
        "trim" => vec![Item::String(s.trim().to_string())],
        _ => s.chars().map(|ch| Item::String(ch.to_string())).collect(),
    })
}

fn one_arg<'a>(c: &Call<'_, '_, 'a, '_>, name: &str) -> Res<'a> {
    let Some(s) = c.single_string()? else { return Ok(Vec::new()) };
    let Some(arg) = c.arg_string(0)? else { return Ok(Vec::new()) };
    match name {
        "indexOf" => {
            let i = s.find(&arg).map_or(-1, |b| s[..b].chars().count() as i64);
            Ok(vec![Item::Integer(i)])
        }
        "startsWith" => boolean(s.starts_with(&arg)),
        "endsWith" => boolean(s.ends_with(&arg)),
        "contains" => boolean(s.contains(&arg)),
        "matches" => boolean(c.ev.regex(&arg, c.at)?.is_match(&s)),
        "matchesFull" => boolean(c.ev.regex(&format!("^(?:{arg})$"), c.at)?.is_match(&s)),
        "split" => {
            if arg.is_empty() {
                return Ok(s.chars().map(|ch| Item::String(ch.to_string())).collect());
            }
            Ok(s.split(arg.as_str()).map(|p| Item::String(p.to_string())).collect())
        }
        "encode" => opt(encode(&s, &arg).map(Item::String)),
        "decode" => opt(decode(&s, &arg).map(Item::String)),
        "escape" => opt(escape(&s, &arg).map(Item::String)),
        _ => opt(unescape(&s, &arg).map(Item::String)),
    }
}

fn substring<'a>(c: &Call<'_, '_, 'a, '_>) -> Res<'a> {
    let Some(s) = c.single_string()? else { return Ok(Vec::new()) };
    let Some(start) = c.arg_integer(0)? else { return Ok(Vec::new()) };
    let len = s.chars().count() as i64;
    if start < 0 || start >= len {
        return Ok(Vec::new());
    }
    let take = match c.args.len() {
        2 => match c.arg_integer(1)? {
            Some(n) => n.max(0),
            None => len,
        },
        _ => len,
    };
    let out: String = s.chars().skip(start as usize).take(take as usize).collect();
    Ok(vec![Item::String(out)])
}

fn replace<'a>(c: &Call<'_, '_, 'a, '_>, name: &str) -> Res<'a> {
    let Some(s) = c.single_string()? else { return Ok(Vec::new()) };
    let (Some(pattern), Some(with)) = (c.arg_string(0)?, c.arg_string(1)?) else {
        return Ok(Vec::new());
    };
    // Bound the result before building it: every match could grow by `with`.
    let worst = s.len().saturating_add((s.len() + 1).saturating_mul(with.len()));
    if worst > crate::eval::MAX_STRING {
        return Err(c.err("string result too long"));
    }
    let out = if name == "replace" {
        s.replace(&pattern, &with)
    } else if pattern.is_empty() {
        s
    } else {
        c.ev.regex(&pattern, c.at)?.replace_all(&s, with.as_str()).into_owned()
    };
    Ok(vec![c.ev.string(out, c.at)?])
}

fn join<'a>(c: &Call<'_, '_, 'a, '_>) -> Res<'a> {
    let sep = c.arg_string(0)?.unwrap_or_default();
    let mut parts = Vec::with_capacity(c.input.len());
    for item in &c.input {
        match item.as_str() {
            Some(s) => parts.push(s.to_string()),
            None => return Err(c.err(format!("join() expects strings, got {item}"))),
        }
    }
    Ok(vec![c.ev.string(parts.join(&sep), c.at)?])
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn encode(s: &str, how: &str) -> Option<String> {
    let bytes = s.as_bytes();
    match how {
        "hex" => Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        "base64" | "urlbase64" => {
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
                for i in 0..4 {
                    if i <= chunk.len() {
                        out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
                    } else {
                        out.push('=');
                    }
                }
            }
            Some(if how == "urlbase64" { out.replace('+', "-").replace('/', "_") } else { out })
        }
        _ => None,
    }
}

fn decode(s: &str, how: &str) -> Option<String> {
    let bytes = match how {
        "hex" => {
            if !s.len().is_multiple_of(2) {
                return None;
            }
            (0..s.len())
                .step_by(2)
                .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect::<Option<Vec<u8>>>()?
        }
        "base64" | "urlbase64" => {
            let mut out = Vec::new();
            let (mut acc, mut bits) = (0u32, 0);
            for ch in s.bytes().filter(|b| *b != b'=') {
                let v = match ch {
                    b'-' => 62,
                    b'_' => 63,
                    _ => B64.iter().position(|b| *b == ch)? as u32,
                };
                acc = (acc << 6) | v;
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    out.push((acc >> bits & 0xff) as u8);
                }
            }
            out
        }
        _ => return None,
    };
    String::from_utf8(bytes).ok()
}

fn escape(s: &str, how: &str) -> Option<String> {
    match how {
        "html" => Some(
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;"),
        ),
        "json" => Some(s.replace('\\', "\\\\").replace('"', "\\\"")),
        _ => None,
    }
}

fn unescape(s: &str, how: &str) -> Option<String> {
    match how {
        "html" => Some(
            s.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        ),
        "json" => Some(s.replace("\\\"", "\"").replace("\\\\", "\\")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_hex() {
        assert_eq!(encode("subjects?_d", "base64").unwrap(), "c3ViamVjdHM/X2Q=");
        assert_eq!(encode("subjects?_d", "urlbase64").unwrap(), "c3ViamVjdHM_X2Q=");
        assert_eq!(decode("dGVzdA==", "base64").unwrap(), "test");
        assert_eq!(decode("c3ViamVjdHM_X2Q=", "urlbase64").unwrap(), "subjects?_d");
        assert_eq!(encode("test", "hex").unwrap(), "74657374");
        assert_eq!(decode("74657374", "hex").unwrap(), "test");
    }
}
