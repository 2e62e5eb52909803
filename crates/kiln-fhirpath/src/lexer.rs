//! Tokeniser for FHIRPath text: identifiers (plain and `` `delimited` ``), strings with escapes,
//! numbers, date/time literals (`@2015-02-04T14:34`, `@T14:34`), `$`/`%` prefixes, operators and
//! comments. Every token carries the byte offset where it starts, for precise error messages.

use crate::ParseError;

/// What a token is; literal payloads keep their source text where the parser needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A plain identifier or keyword (`name`, `and`, `true`).
    Ident(String),
    /// A `` `backtick` `` identifier: never a keyword.
    Delimited(String),
    /// A `'string'`, unescaped.
    Str(String),
    /// Digits with an optional fraction (`12`, `3.14`), as written.
    Number(String),
    /// The text after `@`: `2015-02-04`, `2015-02-04T14:30`, `T14:30:00`.
    DateTime(String),
    /// `$this`, `$index`, `$total` (the name after `$`).
    Dollar(String),
    Percent,
    Punct(&'static str),
    Eof,
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub offset: usize,
}

const PUNCT: [&str; 21] = [
    "<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", "{", "}", ",", "+", "-", "*", "/", "&", "|",
    "=", "~", "<",
];

/// Splits `text` into tokens, ending with [`Tok::Eof`].
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if text[i..].starts_with("//") {
            i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
            continue;
        }
        if text[i..].starts_with("/*") {
            match text[i + 2..].find("*/") {
                Some(n) => i = i + 2 + n + 2,
                None => return Err(ParseError::new(i, "unterminated comment")),
            }
            continue;
        }
        let start = i;
        let tok = if c.is_ascii_alphabetic() || c == b'_' {
            i = scan_ident(bytes, i);
            Tok::Ident(text[start..i].to_string())
        } else if c.is_ascii_digit() {
            i = scan_number(bytes, i);
            Tok::Number(text[start..i].to_string())
        } else if c == b'\'' || c == b'`' {
            let (s, end) = scan_quoted(text, i, c as char)?;
            i = end;
            if c == b'\'' { Tok::Str(s) } else { Tok::Delimited(s) }
        } else if c == b'@' {
            let end = scan_datetime(bytes, i + 1);
            if end == i + 1 {
                return Err(ParseError::new(i, "expected a date, date-time or time after '@'"));
            }
            i = end;
            Tok::DateTime(text[start + 1..i].to_string())
        } else if c == b'$' {
            let end = scan_ident(bytes, i + 1);
            if end == i + 1 {
                return Err(ParseError::new(i, "expected $this, $index or $total"));
            }
            i = end;
            Tok::Dollar(text[start + 1..i].to_string())
        } else if c == b'%' {
            i += 1;
            Tok::Percent
        } else if c == b'>' && !text[i..].starts_with(">=") {
            i += 1;
            Tok::Punct(">")
        } else if let Some(p) = PUNCT.iter().find(|p| text[i..].starts_with(**p)) {
            i += p.len();
            Tok::Punct(p)
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(ParseError::new(i, format!("unexpected character '{ch}'")));
        };
        out.push(Token { tok, offset: start });
    }
    out.push(Token { tok: Tok::Eof, offset: bytes.len() });
    Ok(out)
}

fn scan_ident(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    i
}

fn scan_digits(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    i
}

fn scan_number(bytes: &[u8], i: usize) -> usize {
    let i = scan_digits(bytes, i);
    if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
        scan_digits(bytes, i + 1)
    } else {
        i
    }
}

/// Exactly `n` digits at `i`?
fn digits_at(bytes: &[u8], i: usize, n: usize) -> bool {
    i + n <= bytes.len() && bytes[i..i + n].iter().all(u8::is_ascii_digit)
}

/// Scans `HH(:mm(:ss(.fff)?)?)?` starting at `i`; returns the end (or `i` if no hour).
fn scan_time(bytes: &[u8], i: usize) -> usize {
    if !digits_at(bytes, i, 2) {
        return i;
    }
    let mut end = i + 2;
    if bytes.get(end) == Some(&b':') && digits_at(bytes, end + 1, 2) {
        end += 3;
        if bytes.get(end) == Some(&b':') && digits_at(bytes, end + 1, 2) {
            end += 3;
            if bytes.get(end) == Some(&b'.') && digits_at(bytes, end + 1, 1) {
                end = scan_digits(bytes, end + 1);
            }
        }
    }
    end
}

/// Scans the body of a date/time literal after `@`; returns its end.
fn scan_datetime(bytes: &[u8], i: usize) -> usize {
    if bytes.get(i) == Some(&b'T') {
        let end = scan_time(bytes, i + 1);
        return if end == i + 1 { i } else { end };
    }
    if !digits_at(bytes, i, 4) {
        return i;
    }
    let mut end = i + 4;
    if bytes.get(end) == Some(&b'-') && digits_at(bytes, end + 1, 2) {
        end += 3;
        if bytes.get(end) == Some(&b'-') && digits_at(bytes, end + 1, 2) {
            end += 3;
        }
    }
    if bytes.get(end) != Some(&b'T') {
        return end;
    }
    end += 1;
    let time_end = scan_time(bytes, end);
    if time_end == end {
        return end;
    }
    end = time_end;
    match bytes.get(end) {
        Some(b'Z') => end + 1,
        Some(b'+' | b'-')
            if digits_at(bytes, end + 1, 2)
                && bytes.get(end + 3) == Some(&b':')
                && digits_at(bytes, end + 4, 2) =>
        {
            end + 6
        }
        _ => end,
    }
}

/// Reads a quoted string or delimited identifier starting at the quote; returns the unescaped
/// text and the offset after the closing quote.
fn scan_quoted(text: &str, start: usize, quote: char) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((n, ch)) = chars.next() {
        let at = start + 1 + n;
        if ch == quote {
            return Ok((out, at + 1));
        }
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        let Some((_, esc)) = chars.next() else { break };
        match esc {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'f' => out.push('\u{c}'),
            'u' => {
                let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 4)
                    .and_then(char::from_u32)
                    .ok_or_else(|| ParseError::new(at, "invalid \\u escape"))?;
                out.push(code);
            }
            '\\' | '/' | '\'' | '"' | '`' => out.push(esc),
            other => return Err(ParseError::new(at, format!("invalid escape '\\{other}'"))),
        }
    }
    let what = if quote == '\'' { "string" } else { "identifier" };
    Err(ParseError::new(start, format!("unterminated {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn numbers_and_members() {
        assert_eq!(
            toks("1.convertsToInteger()"),
            vec![
                Tok::Number("1".into()),
                Tok::Punct("."),
                Tok::Ident("convertsToInteger".into()),
                Tok::Punct("("),
                Tok::Punct(")"),
                Tok::Eof
            ]
        );
        assert_eq!(toks("2.5")[0], Tok::Number("2.5".into()));
    }

    #[test]
    fn dates_strings_comments() {
        assert_eq!(toks("@2015-02-04T14:34:28.123+10:00")[0], {
            Tok::DateTime("2015-02-04T14:34:28.123+10:00".into())
        });
        assert_eq!(toks("@2015T.is(DateTime)")[0], Tok::DateTime("2015T".into()));
        assert_eq!(toks("@T14:34")[0], Tok::DateTime("T14:34".into()));
        assert_eq!(toks(r"'a\'b\u0065'")[0], Tok::Str("a'be".into()));
        assert_eq!(toks("1 /* x */ // y\n + 2").len(), 4);
        assert_eq!(tokenize("2 /* open").unwrap_err().offset, 2);
        assert_eq!(tokenize("a # b").unwrap_err().offset, 2);
    }
}
