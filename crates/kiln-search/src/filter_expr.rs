//! `_filter` (FHIR R4 search_filter.html): a hand-written parser of its expression language,
//! and the translation of an expression into [`Filter`]s. Not here: evaluation (a translated
//! filter is an ordinary one, evaluated by the oracle and compiled by the stores).
//!
//! A comparison `path op value` becomes the filter the ordinary parameter parser builds for
//! the equivalent `name[:modifier]=[prefix]value` pair ([`crate::parse::single_filter`]), so
//! parameter names, chains, `_has`, target types and value syntax mean exactly what they
//! mean in a URL; only string `eq` and `ew`, which have no URL spelling, set
//! [`Modifier::Equals`] / [`Modifier::EndsWith`] afterwards. `and`, `or` and `not` become
//! [`Filter::And`], [`Filter::Or`] and [`Filter::Not`].
//!
//! The grammar, as implemented (keywords and operators are matched case-insensitively):
//!
//! ```text
//! filter     = term (("and" / "or") term)*   ; left to right, no precedence (spec)
//! term       = "(" filter ")" / "not" "(" filter ")" / comparison
//! comparison = path SP op SP value
//! path       = segment ("." segment)*
//! segment    = name ("[" filter "]")?        ; "[…]" must be followed by "."
//!            / "_has:" name ":" name ":" name
//! name       = ("_" / ALPHA) ("_" / "-" / DIGIT / ALPHA)*
//! value      = JSON string / token           ; token: non-space run without ")" and "]"
//! ```
//!
//! Choices:
//! - `and` and `or` have no precedence and are read left to right, as R4 says ("Logical
//!   expressions are evaluated left to right, with no precedence between and and or"):
//!   `a or b and c` is `(a or b) and c`. (Medplum groups to the right instead; parentheses
//!   mean the same everywhere.)
//! - The operator decides the modifier or prefix by the parameter's type: numbers, dates
//!   and quantities take `eq ne gt lt ge le sa eb ap` as prefixes; strings take `eq`
//!   (whole normalised value), `ne` (not `eq`), `co` (`:contains`), `sw` (the default
//!   starts-with) and `ew` (ends-with), all case- and accent-insensitive; tokens take `eq`
//!   and `ne` (`:not`); references `eq`, `re` and `ne` (not `eq`); URIs `eq`, `ne` and `sw`
//!   (`:below`); composites `eq` and `ne`; every type takes `pr true|false` (`:missing`).
//!   Any other pair is an error naming both.
//! - A value is one value: a comma is literal (never an OR), a backslash too; `|` and `$`
//!   keep their meaning in tokens, quantities, references and composites. The system names
//!   `loinc`, `snomed`, `rxnorm` and `ucum` stand for their URIs in tokens and quantities.
//! - `ref[filter].rest` puts `filter` on the same referenced resource as `rest`
//!   (`subject[gender eq male].name co "smi"`); a sub-filter needs a reference parameter.
//! - An unknown parameter is an error, not a warning: ignoring part of an explicit
//!   expression would change its meaning.
//! - Terminology on tokens: `in` ⇔ `:in`, `ni` ⇔ `:not-in`, `ss` (the value subsumes the
//!   code) ⇔ `:below`, `sb` ⇔ `:above`; the engine expands them.
//! - Not supported (an error naming the operator): `po`.
//! - Limits: 16 levels of nesting, 64 comparisons per `_filter`, chains of 3 links in all.

use std::fmt;

use kiln_definitions::SearchParamType;

use crate::parse::{MAX_CHAIN, param, single_filter};
use crate::query::{Filter, Modifier};
use crate::registry::Registry;

/// The deepest nesting of parentheses, `not` and sub-filters.
const MAX_DEPTH: usize = 16;
/// The most comparisons in one `_filter` value.
const MAX_COMPARISONS: usize = 64;

/// The filters of one `_filter` value on `ty` (its top-level `and` parts as filters of their
/// own, so that a store may drive the search with one of them), or what is wrong with it.
pub(crate) fn filters(
    reg: &Registry,
    ty: &str,
    text: &str,
    now_ms: i64,
) -> Result<Vec<Filter>, String> {
    let expr = parse_expr(text).map_err(|e| e.to_string())?;
    Ok(match translate(reg, ty, &expr, now_ms, 0)? {
        Filter::And(parts) => parts,
        f => vec![f],
    })
}

// ---------------------------------------------------------------------------------------------
// The syntax tree.

/// A parsed `_filter` expression.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Compare(Comparison),
    /// Every part holds (at least two parts).
    And(Vec<Expr>),
    /// Some part holds (at least two parts).
    Or(Vec<Expr>),
    Not(Box<Expr>),
}

/// `path op value`.
#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    path: Vec<Segment>,
    op: Op,
    /// The value, unquoted and unescaped.
    value: String,
    /// Where the comparison starts, in characters from 1.
    at: usize,
}

/// One `.`-separated part of a path.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    /// The parameter name (a `_has:Type:param:name` specifier whole).
    name: String,
    /// `name[filter]`: a condition on the resource `name` refers to.
    sub: Option<Expr>,
}

/// A comparison operator (search_filter.html#ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Lt,
    Ge,
    Le,
    Ap,
    Sa,
    Eb,
    Pr,
    Po,
    Ss,
    Sb,
    In,
    Ni,
    Re,
}

impl Op {
    const ALL: [Op; 19] = [
        Op::Eq,
        Op::Ne,
        Op::Co,
        Op::Sw,
        Op::Ew,
        Op::Gt,
        Op::Lt,
        Op::Ge,
        Op::Le,
        Op::Ap,
        Op::Sa,
        Op::Eb,
        Op::Pr,
        Op::Po,
        Op::Ss,
        Op::Sb,
        Op::In,
        Op::Ni,
        Op::Re,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Co => "co",
            Op::Sw => "sw",
            Op::Ew => "ew",
            Op::Gt => "gt",
            Op::Lt => "lt",
            Op::Ge => "ge",
            Op::Le => "le",
            Op::Ap => "ap",
            Op::Sa => "sa",
            Op::Eb => "eb",
            Op::Pr => "pr",
            Op::Po => "po",
            Op::Ss => "ss",
            Op::Sb => "sb",
            Op::In => "in",
            Op::Ni => "ni",
            Op::Re => "re",
        }
    }
}

/// A syntax error: where (in characters from 1) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SyntaxError {
    at: usize,
    message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.at, self.message)
    }
}

// ---------------------------------------------------------------------------------------------
// The parser: recursive descent over the characters; never panics, bounded depth.

fn parse_expr(text: &str) -> Result<Expr, SyntaxError> {
    let mut p = Parser { chars: text.chars().collect(), pos: 0, comparisons: 0 };
    let expr = p.filter(0)?;
    p.skip_space();
    if p.pos < p.chars.len() {
        return Err(p.error(format!("expected 'and', 'or' or the end, found {}", p.found())));
    }
    Ok(expr)
}

struct Parser {
    chars: Vec<char>,
    /// The next character's index.
    pos: usize,
    comparisons: usize,
}

impl Parser {
    fn error(&self, message: String) -> SyntaxError {
        SyntaxError { at: self.pos + 1, message }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// What comes next, for messages: the next word (at most 20 characters) or the end.
    fn found(&self) -> String {
        let word: String = self.chars[self.pos.min(self.chars.len())..]
            .iter()
            .take_while(|c| !c.is_whitespace())
            .take(20)
            .collect();
        match self.peek() {
            None => "the end".to_owned(),
            Some(c) if c.is_whitespace() => "a space".to_owned(),
            Some(_) => format!("'{word}'"),
        }
    }

    fn skip_space(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn expect(&mut self, c: char, context: &str) -> Result<(), SyntaxError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format!("expected '{c}' {context}, found {}", self.found())))
        }
    }

    /// The ASCII word at the cursor, lower-cased, if it is one of `words` and ends there
    /// (no name character follows). Does not move.
    fn keyword(&self, words: &[&'static str]) -> Option<&'static str> {
        let end = self.pos
            + self.chars[self.pos.min(self.chars.len())..]
                .iter()
                .take_while(|c| c.is_ascii_alphabetic())
                .count();
        if self.chars.get(end).is_some_and(|&c| is_name_char(c)) {
            return None;
        }
        let word: String = self.chars[self.pos.min(end)..end].iter().collect();
        words.iter().copied().find(|w| w.eq_ignore_ascii_case(&word))
    }

    /// `term (("and" / "or") term)*`, combined left to right.
    fn filter(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        let mut left = self.term(depth)?;
        loop {
            let before = self.pos;
            self.skip_space();
            let Some(join) = self.keyword(&["and", "or"]) else {
                self.pos = before;
                return Ok(left);
            };
            self.pos += join.len();
            let right = self.term(depth)?;
            left = match (join, left) {
                ("and", Expr::And(mut parts)) => {
                    parts.push(right);
                    Expr::And(parts)
                }
                ("and", left) => Expr::And(vec![left, right]),
                (_, Expr::Or(mut parts)) => {
                    parts.push(right);
                    Expr::Or(parts)
                }
                (_, left) => Expr::Or(vec![left, right]),
            };
        }
    }

    /// `"(" filter ")"`, `not "(" filter ")"` or a comparison.
    fn term(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        self.skip_space();
        if self.peek() == Some('(') {
            self.pos += 1;
            let inner = self.filter(depth + 1)?;
            self.skip_space();
            self.expect(')', "after 'and', 'or' or a comparison")?;
            return Ok(inner);
        }
        if self.keyword(&["not"]).is_some() {
            self.pos += 3;
            self.skip_space();
            self.expect('(', "after 'not'")?;
            let inner = self.filter(depth + 1)?;
            self.skip_space();
            self.expect(')', "after 'and', 'or' or a comparison")?;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.comparison(depth)
    }

    /// `path SP op SP value`.
    fn comparison(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        let at = self.pos + 1;
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            return Err(self.error(format!("more than {MAX_COMPARISONS} comparisons")));
        }
        let path = self.path(depth)?;
        if self.peek() == Some(':') {
            return Err(self.error(
                "modifiers (':') are not part of _filter; use an operator (eq, co, …)".into(),
            ));
        }
        if !self.skip_space() {
            let msg = format!(
                "expected a space and an operator after the parameter, found {}",
                self.found()
            );
            return Err(self.error(msg));
        }
        let op = self.op()?;
        if !self.skip_space() {
            let msg = format!("expected a space and a value after '{}'", op.as_str());
            return Err(self.error(msg));
        }
        let value = self.value(op)?;
        Ok(Expr::Compare(Comparison { path, op, value, at }))
    }

    /// `segment ("." segment)*`.
    fn path(&mut self, depth: usize) -> Result<Vec<Segment>, SyntaxError> {
        let mut path = Vec::new();
        loop {
            let segment = self.segment(depth)?;
            let has_sub = segment.sub.is_some();
            path.push(segment);
            if self.peek() == Some('.') {
                self.pos += 1;
            } else if has_sub {
                let msg = format!("expected '.' and a parameter after ']', found {}", self.found());
                return Err(self.error(msg));
            } else {
                return Ok(path);
            }
        }
    }

    /// `name ("[" filter "]")?` or `_has:Type:param:name`.
    fn segment(&mut self, depth: usize) -> Result<Segment, SyntaxError> {
        let name = self.name()?;
        if name == "_has" && self.peek() == Some(':') {
            let mut specifier = name;
            for _ in 0..3 {
                self.expect(':', "in _has:Type:reference:parameter")?;
                specifier.push(':');
                specifier.push_str(&self.name()?);
            }
            return Ok(Segment { name: specifier, sub: None });
        }
        if self.peek() != Some('[') {
            return Ok(Segment { name, sub: None });
        }
        self.pos += 1;
        let sub = self.filter(depth + 1)?;
        self.skip_space();
        self.expect(']', "after the sub-filter")?;
        Ok(Segment { name, sub: Some(sub) })
    }

    /// `("_" / ALPHA) ("_" / "-" / DIGIT / ALPHA)*`.
    fn name(&mut self) -> Result<String, SyntaxError> {
        match self.peek() {
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {}
            _ => {
                return Err(
                    self.error(format!("expected a parameter name, found {}", self.found()))
                );
            }
        }
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn op(&mut self) -> Result<Op, SyntaxError> {
        let word: String =
            self.chars[self.pos..].iter().take_while(|c| !c.is_whitespace()).take(20).collect();
        match Op::ALL.iter().find(|op| op.as_str().eq_ignore_ascii_case(&word)) {
            Some(&op) => {
                self.pos += 2;
                Ok(op)
            }
            None => {
                let all: Vec<&str> = Op::ALL.iter().map(|op| op.as_str()).collect();
                let msg = format!(
                    "unknown operator {} (expected one of {})",
                    self.found(),
                    all.join(" ")
                );
                Err(self.error(msg))
            }
        }
    }

    /// A JSON string or a token.
    fn value(&mut self, op: Op) -> Result<String, SyntaxError> {
        if self.peek() == Some('"') {
            return self.string();
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| !c.is_whitespace() && c != ')' && c != ']') {
            self.pos += 1;
        }
        if self.pos == start {
            let msg = format!("expected a value after '{}', found {}", op.as_str(), self.found());
            return Err(self.error(msg));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    /// A JSON string (RFC 8259 §7 escapes), the cursor on its opening quote.
    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                self.pos = start;
                return Err(self.error("unterminated string".into()));
            };
            self.pos += 1;
            match c {
                '"' => return Ok(out),
                '\\' => out.push(self.escape()?),
                c => out.push(c),
            }
        }
    }

    /// The character an escape stands for, the cursor after its backslash.
    fn escape(&mut self) -> Result<char, SyntaxError> {
        let Some(c) = self.peek() else {
            return Err(self.error("unterminated string".into()));
        };
        self.pos += 1;
        Ok(match c {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let high = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&high) {
                    // A surrogate pair: `\uD83D\uDE00`.
                    if self.peek() != Some('\\') || self.chars.get(self.pos + 1) != Some(&'u') {
                        return Err(self.error(
                            "a high surrogate must be followed by '\\u' and a low one".into(),
                        ));
                    }
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(self.error("expected a low surrogate".into()));
                    }
                    0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    high
                };
                match char::from_u32(code) {
                    Some(c) => c,
                    None => return Err(self.error(format!("'\\u{code:04X}' is not a character"))),
                }
            }
            other => {
                self.pos -= 2;
                return Err(self.error(format!("invalid escape '\\{other}' in a string")));
            }
        })
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut n = 0;
        for _ in 0..4 {
            let Some(d) = self.peek().and_then(|c| c.to_digit(16)) else {
                return Err(self.error("expected four hex digits after '\\u'".into()));
            };
            n = n * 16 + d;
            self.pos += 1;
        }
        Ok(n)
    }
}

fn is_name_char(c: char) -> bool {
    c == '_' || c == '-' || c.is_ascii_alphanumeric()
}

// ---------------------------------------------------------------------------------------------
// The translation into filters.

/// `expr` as a filter on `ty`; `links_above` chain links lead to `ty` (from enclosing
/// sub-filters).
fn translate(
    reg: &Registry,
    ty: &str,
    expr: &Expr,
    now_ms: i64,
    links_above: usize,
) -> Result<Filter, String> {
    let all = |parts: &[Expr]| -> Result<Vec<Filter>, String> {
        parts.iter().map(|p| translate(reg, ty, p, now_ms, links_above)).collect()
    };
    match expr {
        Expr::And(parts) => Ok(Filter::And(all(parts)?)),
        Expr::Or(parts) => Ok(Filter::Or(all(parts)?)),
        Expr::Not(inner) => {
            Ok(Filter::Not(Box::new(translate(reg, ty, inner, now_ms, links_above)?)))
        }
        Expr::Compare(c) => comparison(reg, ty, c, now_ms, links_above),
    }
}

/// What a comparison becomes for a parameter type: `name{suffix}={prefix}value`, then the
/// leaf filter's modifier replaced and/or the leaf negated.
struct Plan {
    suffix: &'static str,
    prefix: &'static str,
    modifier: Option<Modifier>,
    negate: bool,
}

fn plan(kind: SearchParamType, op: Op, code: &str) -> Result<Plan, String> {
    use SearchParamType as T;
    let plain = Plan { suffix: "", prefix: "", modifier: None, negate: false };
    Ok(match (kind, op) {
        // Terminology: the engine expands these (see `Criterion::ValueSet`). `ss`: the value
        // subsumes the resource's code, which is therefore below it; `sb` the reverse.
        (T::Token, Op::In) => Plan { suffix: ":in", ..plain },
        (T::Token, Op::Ni) => Plan { suffix: ":not-in", ..plain },
        (T::Token, Op::Ss) => Plan { suffix: ":below", ..plain },
        (T::Token, Op::Sb) => Plan { suffix: ":above", ..plain },
        (_, Op::Po) => return Err("the operator 'po' is not supported".into()),
        (
            T::Date | T::Number | T::Quantity,
            Op::Eq | Op::Ne | Op::Gt | Op::Lt | Op::Ge | Op::Le | Op::Sa | Op::Eb | Op::Ap,
        ) => Plan { prefix: op.as_str(), ..plain },
        (T::String, Op::Eq) => Plan { modifier: Some(Modifier::Equals), ..plain },
        (T::String, Op::Ne) => Plan { modifier: Some(Modifier::Equals), negate: true, ..plain },
        (T::String, Op::Co) => Plan { suffix: ":contains", ..plain },
        (T::String, Op::Sw) => plain,
        (T::String, Op::Ew) => Plan { modifier: Some(Modifier::EndsWith), ..plain },
        (T::Token, Op::Eq) => plain,
        (T::Token, Op::Ne) => Plan { suffix: ":not", ..plain },
        (T::Reference, Op::Eq | Op::Re) => plain,
        (T::Uri, Op::Eq) => plain,
        (T::Uri, Op::Sw) => Plan { suffix: ":below", ..plain },
        (T::Reference | T::Uri | T::Composite, Op::Ne) => Plan { negate: true, ..plain },
        (T::Composite, Op::Eq) => plain,
        (kind, op) => {
            return Err(format!(
                "the operator '{}' cannot be used on the {} parameter '{code}'",
                op.as_str(),
                kind.as_str()
            ));
        }
    })
}

fn comparison(
    reg: &Registry,
    ty: &str,
    c: &Comparison,
    now_ms: i64,
    links_above: usize,
) -> Result<Filter, String> {
    let fail = |msg: String| format!("at character {}: {msg}", c.at);
    if links_above + c.path.len() - 1 > MAX_CHAIN {
        return Err(fail(format!(
            "chains are limited to {MAX_CHAIN} links (sub-filters included)"
        )));
    }
    let name: Vec<&str> = c.path.iter().map(|s| s.name.as_str()).collect();
    let name = name.join(".");
    let filter = if c.op == Op::Pr {
        let missing = match c.value.to_ascii_lowercase().as_str() {
            "true" => "false",
            "false" => "true",
            _ => return Err(fail(format!("'pr' takes true or false, not '{}'", c.value))),
        };
        single_filter(reg, ty, &format!("{name}:missing"), missing, now_ms).map_err(fail)?
    } else {
        // The parameter's type decides what the operator means: the path resolved as for
        // `name:missing=true` gives the leaf parameter and the type it is read on.
        let skeleton =
            single_filter(reg, ty, &format!("{name}:missing"), "true", now_ms).map_err(fail)?;
        let (leaf_ty, Filter::Missing { code, .. }) = leaf(&skeleton, ty) else {
            return Err(fail(format!("'{name}' is not a search parameter path")));
        };
        let Some(def) = param(reg, leaf_ty, code) else {
            return Err(fail(format!("unknown search parameter '{code}' for {leaf_ty}")));
        };
        let plan = plan(def.param_type, c.op, code).map_err(fail)?;
        if c.value.is_empty() {
            return Err(fail("the value is empty".into()));
        }
        let value = escape(&system_alias(def.param_type, &c.value));
        let pair = (format!("{name}{}", plan.suffix), format!("{}{value}", plan.prefix));
        let filter = single_filter(reg, ty, &pair.0, &pair.1, now_ms).map_err(fail)?;
        map_leaf(filter, &|leaf| {
            let leaf = match (leaf, &plan.modifier) {
                (Filter::Values { code, kind, values, .. }, Some(m)) => {
                    Filter::Values { code, kind, modifier: m.clone(), values }
                }
                (leaf, _) => leaf,
            };
            if plan.negate { Filter::Not(Box::new(leaf)) } else { leaf }
        })
    };
    // One entry per chain/_has level of the filter: the sub-filter on its target, if any.
    let mut levels: Vec<Option<&Expr>> = Vec::new();
    for (i, segment) in c.path.iter().enumerate() {
        if segment.name.starts_with("_has:") {
            levels.push(None);
        }
        if i + 1 < c.path.len() {
            levels.push(segment.sub.as_ref());
        }
    }
    attach(reg, filter, &levels, now_ms, links_above, c)
}

/// The innermost filter of a chain/`_has` nest and the type it is evaluated on.
fn leaf<'a>(f: &'a Filter, ty: &'a str) -> (&'a str, &'a Filter) {
    match f {
        Filter::Chain { types, then, .. } => leaf(then, types.first().map_or(ty, String::as_str)),
        Filter::Has { source_type, then, .. } => leaf(then, source_type),
        other => (ty, other),
    }
}

/// `f` with `g` applied to the innermost filter of its chain/`_has` nest.
fn map_leaf(f: Filter, g: &dyn Fn(Filter) -> Filter) -> Filter {
    match f {
        Filter::Chain { code, types, then } => {
            Filter::Chain { code, types, then: Box::new(map_leaf(*then, g)) }
        }
        Filter::Has { source_type, param, then } => {
            Filter::Has { source_type, param, then: Box::new(map_leaf(*then, g)) }
        }
        other => g(other),
    }
}

/// `f` with each level's sub-filter ANDed to that level's condition on its target.
fn attach(
    reg: &Registry,
    f: Filter,
    levels: &[Option<&Expr>],
    now_ms: i64,
    links_above: usize,
    c: &Comparison,
) -> Result<Filter, String> {
    let Some((sub, deeper)) = levels.split_first() else { return Ok(f) };
    let links = links_above + 1;
    match f {
        Filter::Chain { code, mut types, then } => {
            let then = attach(reg, *then, deeper, now_ms, links, c)?;
            let then = match sub {
                Some(sub) => {
                    let (sub, on) = sub_filter(reg, &types, sub, now_ms, links)?;
                    types = on;
                    Filter::And(vec![sub, then])
                }
                None => then,
            };
            Ok(Filter::Chain { code, types, then: Box::new(then) })
        }
        Filter::Has { source_type, param, then } => {
            let then = attach(reg, *then, deeper, now_ms, links, c)?;
            Ok(Filter::Has { source_type, param, then: Box::new(then) })
        }
        // The parser allows a sub-filter only where a '.' follows, so the level is a chain;
        // a level that is not one is a parameter that is not a reference.
        other => match sub {
            Some(_) => Err(format!(
                "at character {}: a sub-filter '[…]' needs a reference parameter",
                c.at
            )),
            None => Ok(other),
        },
    }
}

/// A sub-filter on the targets of a chain link: translated on each target type, it is kept
/// as it reads on the first type where it is valid, and the link is narrowed to the types
/// where it reads the same (`subject[given eq x]` goes through Patient, not Group, which has
/// no `given`). Its error on the first type when it is valid on none.
fn sub_filter(
    reg: &Registry,
    types: &[String],
    sub: &Expr,
    now_ms: i64,
    links: usize,
) -> Result<(Filter, Vec<String>), String> {
    let mut chosen: Option<(Filter, Vec<String>)> = None;
    let mut first_error = None;
    for ty in types {
        match (translate(reg, ty, sub, now_ms, links), &mut chosen) {
            (Ok(f), None) => chosen = Some((f, vec![ty.clone()])),
            (Ok(f), Some((kept, on))) if f == *kept => on.push(ty.clone()),
            (Ok(_), Some(_)) => {}
            (Err(e), _) => {
                first_error.get_or_insert(e);
            }
        }
    }
    chosen.ok_or_else(|| first_error.unwrap_or_else(|| "the chain has no target type".into()))
}

/// A value in the ordinary value syntax, taken literally: `\` and `,` escaped (so a comma
/// is never an OR); `|` and `$` keep their meaning.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '\\' || c == ',' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The system names search_filter.html predefines ("for convenience, the codes loinc,
/// snomed, rxnorm and ucum … can be used in place of their associated full namespace").
fn system_alias(kind: SearchParamType, value: &str) -> String {
    let uri = |name: &str| -> Option<&'static str> {
        Some(match name.to_ascii_lowercase().as_str() {
            "loinc" => "http://loinc.org",
            "snomed" => "http://snomed.info/sct",
            "rxnorm" => "http://www.nlm.nih.gov/research/umls/rxnorm",
            "ucum" => crate::values::UCUM,
            _ => return None,
        })
    };
    match kind {
        SearchParamType::Token => match value.split_once('|') {
            Some((system, rest)) if uri(system).is_some() => {
                format!("{}|{rest}", uri(system).unwrap_or(system))
            }
            _ => value.to_owned(),
        },
        SearchParamType::Quantity => {
            let parts: Vec<&str> = value.splitn(3, '|').collect();
            match parts.as_slice() {
                [n, system, code] if uri(system).is_some() => {
                    format!("{n}|{}|{code}", uri(system).unwrap_or(system))
                }
                _ => value.to_owned(),
            }
        }
        _ => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(path: &str, op: Op, value: &str) -> Expr {
        let path = path.split('.').map(|n| Segment { name: n.into(), sub: None }).collect();
        Expr::Compare(Comparison { path, op, value: value.into(), at: 0 })
    }

    /// The expression with every position set to 0.
    fn unplaced(e: Expr) -> Expr {
        let all = |parts: Vec<Expr>| parts.into_iter().map(unplaced).collect();
        match e {
            Expr::Compare(c) => {
                let path = c
                    .path
                    .into_iter()
                    .map(|s| Segment { name: s.name, sub: s.sub.map(unplaced) })
                    .collect();
                Expr::Compare(Comparison { path, at: 0, ..c })
            }
            Expr::And(parts) => Expr::And(all(parts)),
            Expr::Or(parts) => Expr::Or(all(parts)),
            Expr::Not(inner) => Expr::Not(Box::new(unplaced(*inner))),
        }
    }

    fn ok(text: &str) -> Expr {
        unplaced(parse_expr(text).unwrap_or_else(|e| panic!("{text}: {e}")))
    }

    /// Where each comparison starts.
    fn places(text: &str) -> Vec<usize> {
        fn walk(e: &Expr, out: &mut Vec<usize>) {
            match e {
                Expr::Compare(c) => out.push(c.at),
                Expr::And(parts) | Expr::Or(parts) => parts.iter().for_each(|p| walk(p, out)),
                Expr::Not(inner) => walk(inner, out),
            }
        }
        let mut out = Vec::new();
        walk(&parse_expr(text).unwrap(), &mut out);
        out
    }

    fn err(text: &str) -> String {
        match parse_expr(text) {
            Ok(e) => panic!("{text} parsed: {e:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn comparisons_and_values() {
        assert_eq!(ok(r#"name co "pet""#), cmp("name", Op::Co, "pet"));
        assert_eq!(ok("  birthdate ge 2014-10-10 "), cmp("birthdate", Op::Ge, "2014-10-10"));
        assert_eq!(
            ok("code eq http://loinc.org|1234-5"),
            cmp("code", Op::Eq, "http://loinc.org|1234-5")
        );
        assert_eq!(ok("subject.name CO x"), cmp("subject.name", Op::Co, "x"));
        assert_eq!(ok("name\teq\u{a0}x"), cmp("name", Op::Eq, "x"), "any Unicode space");
        // Strings: JSON escapes, spaces, ')' and ']' inside.
        assert_eq!(
            ok(r#"name eq "a \"b\" \\ c) ] \/ \u00e9 \ud83d\ude00 \n""#),
            cmp("name", Op::Eq, "a \"b\" \\ c) ] / é 😀 \n")
        );
        // A token ends at a space, ')' or ']'; '(' and ',' are part of it.
        assert_eq!(ok("(gender eq male)"), cmp("gender", Op::Eq, "male"));
        assert_eq!(ok("name eq a(b,c"), cmp("name", Op::Eq, "a(b,c"));
        // The value after an operator is a value even when it spells a keyword.
        assert_eq!(ok("name eq and"), cmp("name", Op::Eq, "and"));
        assert_eq!(
            ok("_has:Observation:patient:code eq x"),
            cmp("_has:Observation:patient:code", Op::Eq, "x")
        );
        assert_eq!(places("  a eq 1 or (b eq 2) and not ( c eq 3 )"), vec![3, 14, 32]);
    }

    #[test]
    fn and_or_not_read_left_to_right() {
        let (a, b, c) = (cmp("a", Op::Eq, "1"), cmp("b", Op::Eq, "2"), cmp("c", Op::Eq, "3"));
        // No precedence: `a or b and c` is `(a or b) and c`.
        assert_eq!(
            ok("a eq 1 or b eq 2 and c eq 3"),
            Expr::And(vec![Expr::Or(vec![a.clone(), b.clone()]), c.clone()])
        );
        assert_eq!(
            ok("a eq 1 and b eq 2 or c eq 3"),
            Expr::Or(vec![Expr::And(vec![a.clone(), b.clone()]), c.clone()])
        );
        assert_eq!(
            ok("a eq 1 and b eq 2 and c eq 3"),
            Expr::And(vec![a.clone(), b.clone(), c.clone()])
        );
        assert_eq!(
            ok("a eq 1 and (b eq 2 or c eq 3)"),
            Expr::And(vec![a.clone(), Expr::Or(vec![b.clone(), c.clone()])])
        );
        assert_eq!(
            ok("a eq 1 AND NOT (b eq 2)"),
            Expr::And(vec![a.clone(), Expr::Not(Box::new(b.clone()))])
        );
        assert_eq!(ok("not(a eq 1)"), Expr::Not(Box::new(a.clone())));
        assert_eq!(ok("((a eq 1))"), a);
        // `and(` needs no space; `andx` is not a keyword.
        assert!(matches!(ok("a eq 1 and(b eq 2)"), Expr::And(_)));
        assert!(err("a eq 1 andx b eq 2").contains("expected 'and', 'or' or the end"));
    }

    #[test]
    fn sub_filters() {
        let Expr::Compare(c) = ok(r#"subject[gender eq male and name sw "a"].name co x"#) else {
            panic!()
        };
        assert_eq!(c.path.len(), 2);
        assert!(matches!(&c.path[0].sub, Some(Expr::And(parts)) if parts.len() == 2));
        assert_eq!(c.path[1], Segment { name: "name".into(), sub: None });
        assert!(err("subject[gender eq male] eq x").contains("expected '.'"));
        assert!(err("subject[gender eq male.name eq x").contains("expected ']'"));
    }

    #[test]
    fn errors_say_where_and_what() {
        assert_eq!(err(""), "at character 1: expected a parameter name, found the end");
        assert_eq!(err("   "), "at character 4: expected a parameter name, found the end");
        assert_eq!(
            err("name"),
            "at character 5: expected a space and an operator after the parameter, found the end"
        );
        assert!(err("name xx y").starts_with("at character 6: unknown operator 'xx'"));
        assert!(err("name eq").contains("expected a space and a value after 'eq'"));
        assert!(err("name eq ").contains("at character 9: expected a value after 'eq'"));
        assert!(err("name eq )").contains("expected a value"));
        assert_eq!(err(r#"name eq "abc"#), "at character 9: unterminated string");
        assert!(err(r#"name eq "a\qb""#).contains("at character 11: invalid escape '\\q'"));
        assert!(err(r#"name eq "\u12""#).contains("four hex digits"));
        assert!(err(r#"name eq "\ud83d""#).contains("surrogate"));
        assert!(err(r#"name eq "\udc00""#).contains("is not a character"));
        assert!(err("name eq x y").contains("at character 11: expected 'and', 'or' or the end"));
        assert!(err("(name eq x").contains("expected ')'"));
        assert!(err("name eq x)").contains("at character 10"));
        assert!(err("not name eq x").contains("expected '(' after 'not'"));
        assert!(err("name eq x and").contains("at character 14: expected a parameter name"));
        assert!(err("name:exact eq x").contains("modifiers"));
        assert!(err("1name eq x").contains("expected a parameter name, found '1name'"));
        assert!(err("_has:Observation eq x").contains("_has:Type:reference:parameter"));
        let deep = format!("{}a eq 1{}", "(".repeat(40), ")".repeat(40));
        assert!(err(&deep).contains("nested more than 16 levels"));
        let many = vec!["a eq 1"; 65].join(" or ");
        assert!(err(&many).contains("more than 64 comparisons"));
        assert!(parse_expr(&vec!["a eq 1"; 64].join(" or ")).is_ok());
    }

    /// SplitMix64, for the fuzz test below (no dependency).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const PARTS: &[&str] = &[
        "name", "subject", ".", "[", "]", "(", ")", " ", "  ", "eq", "co", "pr", "not", "and",
        "or", "\"", "\\", "\\u", "d83d", "\\\"", "x", "1", "_has:", ":", "true", "é", "\u{a0}",
        "\t", "AND", "\\ud800", "ge2020", "|",
    ];

    /// A well-formed expression (to be mutated).
    fn expression(rng: &mut Rng, depth: usize) -> String {
        let comparison = |rng: &mut Rng| {
            let path = ["name", "subject.name", "subject[gender eq x].name", "_has:A:b:c"];
            let value = ["x", "\"a b\"", "2020-01-01", "\"\\u00e9\\\"\"", "a|b", "true"];
            format!(
                "{} {} {}",
                path[rng.below(path.len())],
                Op::ALL[rng.below(Op::ALL.len())].as_str(),
                value[rng.below(value.len())]
            )
        };
        match if depth > 3 { 0 } else { rng.below(5) } {
            0 | 1 => comparison(rng),
            2 => format!("not ({})", expression(rng, depth + 1)),
            3 => format!("({})", expression(rng, depth + 1)),
            _ => {
                let join = ["and", "or", "AND"][rng.below(3)];
                format!("{} {join} {}", expression(rng, depth + 1), expression(rng, depth + 1))
            }
        }
    }

    /// Random text: well-formed expressions, some with a fragment inserted or a character
    /// dropped, grammar fragments, arbitrary characters. The parser never panics, accepts
    /// the well-formed ones, and every error points inside the text (or just past its end).
    #[test]
    fn never_panics_on_random_text() {
        let mut rng = Rng(0x5eed);
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..50_000 {
            let mut text: Vec<char> = match rng.below(4) {
                0 => {
                    let text = expression(&mut rng, 0);
                    assert!(parse_expr(&text).is_ok(), "{text}: {:?}", parse_expr(&text));
                    text.chars().collect()
                }
                1 => expression(&mut rng, 0).chars().collect(),
                2 => {
                    (0..rng.below(16)).flat_map(|_| PARTS[rng.below(PARTS.len())].chars()).collect()
                }
                _ => (0..rng.below(24))
                    .filter_map(|_| char::from_u32((rng.next() % 0x180) as u32))
                    .collect(),
            };
            if !text.is_empty() && rng.below(2) == 0 {
                let at = rng.below(text.len());
                match rng.below(2) {
                    0 => {
                        text.remove(at);
                    }
                    _ => text.splice(at..at, PARTS[rng.below(PARTS.len())].chars()).for_each(drop),
                }
            }
            let text: String = text.into_iter().collect();
            match parse_expr(&text) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    rejected += 1;
                    assert!(e.at >= 1 && e.at <= text.chars().count() + 1, "{text:?}: {e}");
                }
            }
        }
        assert!(accepted > 5000 && rejected > 5000, "{accepted} accepted, {rejected} rejected");
    }

    #[test]
    fn values_stay_one_value() {
        assert_eq!(escape(r"a,b\c|d$e"), r"a\,b\\c|d$e");
        assert_eq!(system_alias(SearchParamType::Token, "LOINC|1234-5"), "http://loinc.org|1234-5");
        assert_eq!(system_alias(SearchParamType::Token, "loincx|1"), "loincx|1");
        assert_eq!(
            system_alias(SearchParamType::Quantity, "5|ucum|mg"),
            "5|http://unitsofmeasure.org|mg"
        );
        assert_eq!(system_alias(SearchParamType::String, "loinc|1"), "loinc|1");
    }
}
