//! Precedence-climbing parser for the FHIRPath N1 grammar. Precedence, loosest first:
//! `implies` (right-associative), `or`/`xor`, `and`, `in`/`contains`, `= ~ != !~`,
//! `< > <= >=`, `|`, `is`/`as`, `+ - &`, `* / div mod`, unary `+ -`, then `.` and `[]`.
//! Nesting is limited to [`MAX_DEPTH`] so hostile input cannot overflow the stack.

use crate::ParseError;
use crate::ast::{BinOp, Expr, Literal, Node, TypeSpec};
use crate::datetime;
use crate::functions;
use crate::lexer::{Tok, Token, tokenize};
use crate::quantity::{Quantity, is_calendar_keyword};
use rust_decimal::Decimal;
use std::str::FromStr;

/// Deepest nesting of sub-expressions the parser accepts.
pub(crate) const MAX_DEPTH: usize = 128;

const UNARY_PREC: u8 = 11;

pub(crate) fn parse(text: &str) -> Result<Node, ParseError> {
    let tokens = tokenize(text)?;
    let mut p = Parser { tokens, pos: 0, depth: 0 };
    let node = p.expression(0)?;
    let t = p.peek();
    if t.tok != Tok::Eof {
        return Err(ParseError::new(t.offset, format!("unexpected {}", describe(&t.tok))));
    }
    Ok(node)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(s) => format!("'{s}'"),
        Tok::Delimited(s) => format!("`{s}`"),
        Tok::Str(_) => "string".into(),
        Tok::Number(n) => format!("number {n}"),
        Tok::DateTime(d) => format!("@{d}"),
        Tok::Dollar(d) => format!("${d}"),
        Tok::Percent => "'%'".into(),
        Tok::Punct(p) => format!("'{p}'"),
        Tok::Eof => "end of expression".into(),
    }
}

/// Binary operator of an infix token, with its precedence.
fn binary_op(tok: &Tok) -> Option<(u8, BinOp)> {
    let op = match tok {
        Tok::Punct(p) => match *p {
            "*" => (10, BinOp::Mul),
            "/" => (10, BinOp::Div),
            "+" => (9, BinOp::Add),
            "-" => (9, BinOp::Sub),
            "&" => (9, BinOp::Concat),
            "|" => (7, BinOp::Union),
            "<" => (6, BinOp::Lt),
            ">" => (6, BinOp::Gt),
            "<=" => (6, BinOp::Le),
            ">=" => (6, BinOp::Ge),
            "=" => (5, BinOp::Eq),
            "!=" => (5, BinOp::Ne),
            "~" => (5, BinOp::Equiv),
            "!~" => (5, BinOp::NotEquiv),
            _ => return None,
        },
        Tok::Ident(word) => match word.as_str() {
            "div" => (10, BinOp::IntDiv),
            "mod" => (10, BinOp::Mod),
            "in" => (4, BinOp::In),
            "contains" => (4, BinOp::Contains),
            "and" => (3, BinOp::And),
            "or" => (2, BinOp::Or),
            "xor" => (2, BinOp::Xor),
            "implies" => (1, BinOp::Implies),
            _ => return None,
        },
        _ => return None,
    };
    Some(op)
}

impl Parser {
    /// Builds a node, refusing trees taller than [`MAX_DEPTH`] (long chains of `.` or of
    /// left-associative operators grow the tree without nesting the parser's own calls).
    fn node(&self, expr: Expr, offset: usize) -> Result<Node, ParseError> {
        let node = Node::new(expr, offset);
        if node.depth > MAX_DEPTH {
            return Err(ParseError::new(offset, "expression nested too deeply"));
        }
        Ok(node)
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn eat(&mut self, punct: &'static str) -> bool {
        if self.peek().tok == Tok::Punct(punct) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, punct: &'static str) -> Result<(), ParseError> {
        if self.eat(punct) {
            return Ok(());
        }
        let t = self.peek();
        Err(ParseError::new(t.offset, format!("expected '{punct}', found {}", describe(&t.tok))))
    }

    fn expression(&mut self, min_prec: u8) -> Result<Node, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::new(self.peek().offset, "expression nested too deeply"));
        }
        let result = self.expression_inner(min_prec);
        self.depth -= 1;
        result
    }

    fn expression_inner(&mut self, min_prec: u8) -> Result<Node, ParseError> {
        let mut left = self.prefix()?;
        loop {
            let t = self.peek().clone();
            if let Tok::Ident(word) = &t.tok
                && (word == "is" || word == "as")
            {
                if 8 <= min_prec {
                    break;
                }
                self.pos += 1;
                let spec = self.type_specifier()?;
                let is_op = word == "is";
                left =
                    self.node(Expr::TypeOp { is_op, operand: Box::new(left), spec }, t.offset)?;
                continue;
            }
            let Some((prec, op)) = binary_op(&t.tok) else { break };
            if prec <= min_prec {
                break;
            }
            self.pos += 1;
            // `implies` is right-associative; everything else groups to the left.
            let right = self.expression(if op == BinOp::Implies { prec - 1 } else { prec })?;
            let expr = Expr::Binary { op, left: Box::new(left), right: Box::new(right) };
            left = self.node(expr, t.offset)?;
        }
        Ok(left)
    }

    fn prefix(&mut self) -> Result<Node, ParseError> {
        let t = self.peek().clone();
        if t.tok == Tok::Punct("-") || t.tok == Tok::Punct("+") {
            self.pos += 1;
            let operand = Box::new(self.expression(UNARY_PREC)?);
            let expr =
                if t.tok == Tok::Punct("-") { Expr::Negate(operand) } else { Expr::Plus(operand) };
            return self.node(expr, t.offset);
        }
        let mut node = self.term()?;
        loop {
            if self.eat(".") {
                node = self.invocation(Some(node))?;
            } else if self.peek().tok == Tok::Punct("[") {
                let offset = self.next().offset;
                let index = self.expression(0)?;
                self.expect("]")?;
                let expr = Expr::Index { target: Box::new(node), index: Box::new(index) };
                node = self.node(expr, offset)?;
            } else {
                return Ok(node);
            }
        }
    }

    fn identifier(&mut self) -> Result<(String, usize), ParseError> {
        let t = self.next();
        match t.tok {
            Tok::Ident(s) | Tok::Delimited(s) => Ok((s, t.offset)),
            other => Err(ParseError::new(
                t.offset,
                format!("expected an identifier, found {}", describe(&other)),
            )),
        }
    }

    /// `name` or `name(args)` after a `.` (or as a term when `target` is `None`).
    fn invocation(&mut self, target: Option<Node>) -> Result<Node, ParseError> {
        let (name, offset) = self.identifier()?;
        let target = target.map(Box::new);
        if !self.eat("(") {
            return self.node(Expr::Member { target, name }, offset);
        }
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                args.push(self.expression(0)?);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        if matches!(name.as_str(), "is" | "as" | "ofType") {
            let [arg] = args.as_slice() else {
                return Err(ParseError::new(offset, format!("{name}() takes one type name")));
            };
            let mut parts = Vec::new();
            qualified_name(arg, &mut parts)
                .map_err(|()| ParseError::new(arg.offset, "expected a type name"))?;
            let spec = resolve_type(&parts, arg.offset)?;
            return self.node(Expr::TypeCall { target, name, spec }, offset);
        }
        functions::check_arity(&name, args.len()).map_err(|m| ParseError::new(offset, m))?;
        self.node(Expr::Call { target, name, args }, offset)
    }

    fn type_specifier(&mut self) -> Result<TypeSpec, ParseError> {
        let (first, offset) = self.identifier()?;
        let mut parts = vec![first];
        while self.peek().tok == Tok::Punct(".")
            && matches!(
                self.tokens.get(self.pos + 1).map(|t| &t.tok),
                Some(Tok::Ident(_) | Tok::Delimited(_))
            )
        {
            self.pos += 1;
            parts.push(self.identifier()?.0);
        }
        resolve_type(&parts, offset)
    }

    fn term(&mut self) -> Result<Node, ParseError> {
        let t = self.next();
        let offset = t.offset;
        let lit = |l: Literal| Ok(Node::new(Expr::Literal(l), offset));
        match t.tok {
            Tok::Number(text) => {
                let unit = match &self.peek().tok {
                    Tok::Str(u) => Some(u.clone()),
                    Tok::Ident(w) if is_calendar_keyword(w) => Some(w.clone()),
                    _ => None,
                };
                if let Some(unit) = unit {
                    self.pos += 1;
                    let value = Decimal::from_str(&text)
                        .map_err(|_| ParseError::new(offset, "number out of range"))?;
                    return lit(Literal::Quantity(Quantity::new(value, unit)));
                }
                if text.contains('.') {
                    let d = Decimal::from_str(&text)
                        .map_err(|_| ParseError::new(offset, "decimal out of range"))?;
                    lit(Literal::Decimal(d))
                } else {
                    let i = text
                        .parse::<i64>()
                        .map_err(|_| ParseError::new(offset, "integer out of range"))?;
                    lit(Literal::Integer(i))
                }
            }
            Tok::Str(s) => lit(Literal::String(s)),
            Tok::DateTime(text) => {
                let bad = || ParseError::new(offset, format!("invalid date/time literal @{text}"));
                if let Some(time) = text.strip_prefix('T') {
                    lit(Literal::Time(datetime::Time::parse(time).ok_or_else(bad)?))
                } else if text.contains('T') {
                    let body = text.strip_suffix('T').unwrap_or(&text);
                    lit(Literal::DateTime(datetime::DateTime::parse(body).ok_or_else(bad)?))
                } else {
                    lit(Literal::Date(datetime::Date::parse(&text).ok_or_else(bad)?))
                }
            }
            Tok::Ident(word) if word == "true" || word == "false" => {
                lit(Literal::Boolean(word == "true"))
            }
            Tok::Ident(_) | Tok::Delimited(_) => {
                self.pos -= 1;
                self.invocation(None)
            }
            Tok::Dollar(name) => {
                let expr = match name.as_str() {
                    "this" => Expr::This,
                    "index" => Expr::IndexVar,
                    "total" => Expr::Total,
                    _ => return Err(ParseError::new(offset, format!("unknown variable ${name}"))),
                };
                Ok(Node::new(expr, offset))
            }
            Tok::Percent => {
                let n = self.next();
                match n.tok {
                    Tok::Ident(s) | Tok::Delimited(s) | Tok::Str(s) => {
                        Ok(Node::new(Expr::External(s), offset))
                    }
                    other => Err(ParseError::new(
                        n.offset,
                        format!("expected a name after '%', found {}", describe(&other)),
                    )),
                }
            }
            Tok::Punct("(") => {
                let inner = self.expression(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Punct("{") => {
                self.expect("}")?;
                lit(Literal::Empty)
            }
            other => Err(ParseError::new(
                offset,
                format!("expected an expression, found {}", describe(&other)),
            )),
        }
    }
}

/// `a.b.c` written as an expression → `["a", "b", "c"]`.
fn qualified_name(node: &Node, out: &mut Vec<String>) -> Result<(), ()> {
    match &node.expr {
        Expr::Member { target, name } => {
            if let Some(t) = target {
                qualified_name(t, out)?;
            }
            out.push(name.clone());
            Ok(())
        }
        _ => Err(()),
    }
}

/// Resolves a (possibly qualified) type name against the System types and the definitions.
fn resolve_type(parts: &[String], offset: usize) -> Result<TypeSpec, ParseError> {
    let defs = kiln_definitions::definitions();
    let unknown = || ParseError::new(offset, format!("unknown type '{}'", parts.join(".")));
    match parts {
        [ns, name] if ns == "System" => Ok(TypeSpec::System(name.clone())),
        [ns, name] if ns == "FHIR" => {
            defs.type_def(name).map(|_| TypeSpec::Fhir(name.clone())).ok_or_else(unknown)
        }
        [name] => {
            if defs.type_def(name).is_some() || crate::types::is_system_type(name) {
                Ok(TypeSpec::Unqualified(name.clone()))
            } else {
                Err(unknown())
            }
        }
        _ => Err(unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> ParseError {
        parse(s).unwrap_err()
    }

    #[test]
    fn precedence_and_errors() {
        assert!(parse("1 + 2 * 3 = 7 and true implies false or x").is_ok());
        assert!(parse("(1 | 1 is Integer).count()").is_ok());
        assert!(parse("Observation.value.as(FHIR.Quantity).unit").is_ok());
        assert!(parse("4 days + 1 'mg' + %`vs-x` + %resource").is_ok());
        assert_eq!(err("2 + 2 /").offset, 7);
        assert_eq!(err("name.").offset, 5);
        assert_eq!(err("a.b(1,").offset, 6);
        assert_eq!(err("Patient.gender.as(string1)").offset, 18);
        assert_eq!(err("1 2").offset, 2);
        assert_eq!(err("name.nosuchfunction()").offset, 5);
        let deep = "(".repeat(500) + "1" + &")".repeat(500);
        assert!(err(&deep).message.contains("deeply"));
    }
}
