//! The evaluator: walks the syntax tree over collections of [`Item`]s with FHIRPath's empty
//! propagation and three-valued logic. Functions live in `functions`, single-item operators
//! in `ops`. A step budget and a string-size cap keep every evaluation bounded.

use crate::ast::{BinOp, Expr, Literal, Node, TypeSpec};
use crate::navigate::{self, Lookup};
use crate::types::Item;
use crate::{Context, EvalError, functions, ops};
use regex::Regex;
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Most evaluation steps (nodes visited plus items produced) one evaluation may take.
const MAX_STEPS: u64 = 20_000_000;
/// Longest string an expression may build, in bytes.
pub(crate) const MAX_STRING: usize = 1 << 20;

pub(crate) type Coll<'a> = Vec<Item<'a>>;
pub(crate) type Res<'a> = Result<Coll<'a>, EvalError>;

/// The variables in scope: `$this` (the focus of bare names), `$index`, `$total`.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'s, 'a> {
    pub this: &'s [Item<'a>],
    pub index: Option<usize>,
    pub total: Option<&'s [Item<'a>]>,
}

pub(crate) struct Evaluator<'c, 'a> {
    pub ctx: &'c Context<'a>,
    pub focus: Coll<'a>,
    steps: Cell<u64>,
    regexes: RefCell<HashMap<String, Regex>>,
}

pub(crate) fn err(offset: usize, message: impl Into<String>) -> EvalError {
    EvalError { offset, message: message.into() }
}

pub(crate) fn run<'a>(node: &Node, ctx: &Context<'a>) -> Res<'a> {
    let focus = ctx.focus.clone().unwrap_or_else(|| vec![ctx.resource_item(ctx.resource)]);
    let ev = Evaluator { ctx, focus, steps: Cell::new(0), regexes: RefCell::new(HashMap::new()) };
    let scope = Scope { this: &ev.focus, index: None, total: None };
    ev.eval(node, &scope)
}

fn literal<'a>(l: &Literal) -> Coll<'a> {
    let item = match l {
        Literal::Empty => return Vec::new(),
        Literal::Boolean(b) => Item::Boolean(*b),
        Literal::String(s) => Item::String(s.clone()),
        Literal::Integer(i) => Item::Integer(*i),
        Literal::Decimal(d) => Item::Decimal(*d),
        Literal::Date(d) => Item::Date(*d),
        Literal::DateTime(d) => Item::DateTime(*d),
        Literal::Time(t) => Item::Time(*t),
        Literal::Quantity(q) => Item::Quantity(q.clone()),
    };
    vec![item]
}

impl<'a> Evaluator<'_, 'a> {
    /// Charges `n` steps against the budget.
    pub fn charge(&self, n: usize, offset: usize) -> Result<(), EvalError> {
        let used = self.steps.get().saturating_add(n as u64 + 1);
        self.steps.set(used);
        if used > MAX_STEPS {
            return Err(err(offset, "evaluation exceeded its step budget"));
        }
        Ok(())
    }

    /// A compiled regex (cached for this evaluation), with bounded size.
    pub fn regex(&self, pattern: &str, offset: usize) -> Result<Regex, EvalError> {
        if let Some(r) = self.regexes.borrow().get(pattern) {
            return Ok(r.clone());
        }
        let r = regex::RegexBuilder::new(pattern)
            .dot_matches_new_line(true)
            .size_limit(1 << 20)
            .dfa_size_limit(1 << 20)
            .nest_limit(64)
            .build()
            .map_err(|e| err(offset, format!("invalid regular expression: {e}")))?;
        self.regexes.borrow_mut().insert(pattern.to_string(), r.clone());
        Ok(r)
    }

    /// A string result, refused beyond [`MAX_STRING`].
    pub fn string(&self, s: String, offset: usize) -> Result<Item<'a>, EvalError> {
        if s.len() > MAX_STRING {
            return Err(err(offset, "string result too long"));
        }
        Ok(Item::String(s))
    }

    pub fn eval(&self, node: &Node, scope: &Scope<'_, 'a>) -> Res<'a> {
        self.charge(0, node.offset)?;
        let at = node.offset;
        match &node.expr {
            Expr::Literal(l) => Ok(literal(l)),
            Expr::Member { target, name } => {
                let input = self.input(target, scope)?;
                self.member(&input, name, at)
            }
            Expr::Call { target, name, args } => {
                let input = self.input(target, scope)?;
                functions::call(self, name, input, args, scope, at)
            }
            Expr::TypeCall { target, name, spec } => {
                let input = self.input(target, scope)?;
                match name.as_str() {
                    "ofType" => Ok(input.into_iter().filter(|i| i.is_type_exact(spec)).collect()),
                    _ => self.type_op(name == "is", &input, spec, at),
                }
            }
            Expr::TypeOp { is_op, operand, spec } => {
                let input = self.eval(operand, scope)?;
                self.type_op(*is_op, &input, spec, at)
            }
            Expr::Index { target, index } => {
                let input = self.eval(target, scope)?;
                let idx = self.eval(index, scope)?;
                match self.singleton(&idx, at)?.and_then(|i| i.to_system()) {
                    None => Ok(Vec::new()),
                    Some(Item::Integer(i)) => {
                        let i = usize::try_from(i).ok();
                        Ok(i.and_then(|i| input.into_iter().nth(i)).into_iter().collect())
                    }
                    Some(_) => Err(err(at, "an index must be an integer")),
                }
            }
            Expr::This => Ok(scope.this.to_vec()),
            Expr::IndexVar => {
                Ok(scope.index.map(|i| Item::Integer(i as i64)).into_iter().collect())
            }
            Expr::Total => Ok(scope.total.map(<[_]>::to_vec).unwrap_or_default()),
            Expr::External(name) => self.external(name, at),
            Expr::Negate(operand) | Expr::Plus(operand) => {
                let value = self.eval(operand, scope)?;
                let negate = matches!(node.expr, Expr::Negate(_));
                let Some(item) = self.singleton(&value, at)? else { return Ok(Vec::new()) };
                let item = match item.to_system() {
                    Some(Item::Integer(i)) if negate => {
                        Item::Integer(i.checked_neg().ok_or_else(|| err(at, "integer overflow"))?)
                    }
                    Some(Item::Decimal(d)) if negate => Item::Decimal(-d),
                    Some(Item::Quantity(mut q)) if negate => {
                        q.value = -q.value;
                        Item::Quantity(q)
                    }
                    Some(i @ (Item::Integer(_) | Item::Decimal(_) | Item::Quantity(_))) => i,
                    _ => return Err(err(at, "unary + and - apply to numbers and quantities")),
                };
                Ok(vec![item])
            }
            Expr::Binary { op, left, right } => self.binary(*op, left, right, scope, at),
        }
    }

    fn input(&self, target: &Option<Box<Node>>, scope: &Scope<'_, 'a>) -> Res<'a> {
        match target {
            Some(t) => self.eval(t, scope),
            None => Ok(scope.this.to_vec()),
        }
    }

    /// Collection with at most one item; more is an error.
    pub fn singleton<'x>(
        &self,
        coll: &'x [Item<'a>],
        offset: usize,
    ) -> Result<Option<&'x Item<'a>>, EvalError> {
        match coll {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(err(offset, format!("expected one item, got {}", coll.len()))),
        }
    }

    /// Singleton evaluation as a Boolean: a lone Boolean is itself, any other lone item is
    /// `true`, empty is unknown.
    pub fn to_bool(&self, coll: &[Item<'a>], offset: usize) -> Result<Option<bool>, EvalError> {
        Ok(self.singleton(coll, offset)?.map(|item| match item.to_system() {
            Some(Item::Boolean(b)) => b,
            _ => true,
        }))
    }

    fn member(&self, input: &[Item<'a>], name: &str, at: usize) -> Res<'a> {
        let mut out = Vec::new();
        let is_type_name = name.starts_with(|c: char| c.is_ascii_uppercase())
            && kiln_definitions::definitions().type_def(name).is_some();
        // Strict mode rejects a name that no typed input element can have.
        let (mut typed, mut unknown) = (0, 0);
        let mut last_type = "element";
        for item in input {
            let Item::Node(node) = item else { continue };
            if is_type_name {
                if item.is_type(&TypeSpec::Unqualified(name.to_string())) {
                    out.push(item.clone());
                } else if self.ctx.strict {
                    let (_, actual) = item.type_name();
                    return Err(err(at, format!("expected {name}, found {actual}")));
                }
                continue;
            }
            if node.def.is_some() {
                typed += 1;
                last_type = node.fhir_type().unwrap_or(last_type);
            }
            if let Lookup::Unknown = navigate::child(node, name, &mut out) {
                unknown += 1;
            }
        }
        if self.ctx.strict && typed > 0 && unknown == typed {
            return Err(err(at, format!("{last_type} has no element '{name}'")));
        }
        self.charge(out.len(), at)?;
        Ok(out)
    }

    fn external(&self, name: &str, at: usize) -> Res<'a> {
        let text = |s: &str| Ok(vec![Item::String(s.to_string())]);
        match name {
            "resource" => Ok(vec![self.ctx.resource_item(self.ctx.resource)]),
            "rootResource" => Ok(vec![self.ctx.resource_item(self.ctx.root_resource)]),
            "context" => Ok(self.focus.clone()),
            "ucum" => text("http://unitsofmeasure.org"),
            "sct" => text("http://snomed.info/sct"),
            "loinc" => text("http://loinc.org"),
            _ => {
                if let Some(v) = self.ctx.variables.get(name) {
                    return Ok(v.clone());
                }
                if let Some(vs) = name.strip_prefix("vs-") {
                    return text(&format!("http://hl7.org/fhir/ValueSet/{vs}"));
                }
                if let Some(ext) = name.strip_prefix("ext-") {
                    return text(&format!("http://hl7.org/fhir/StructureDefinition/{ext}"));
                }
                Err(err(at, format!("undefined variable %{name}")))
            }
        }
    }

    fn type_op(&self, is_op: bool, input: &[Item<'a>], spec: &TypeSpec, at: usize) -> Res<'a> {
        let Some(item) = self.singleton(input, at)? else { return Ok(Vec::new()) };
        Ok(if is_op {
            vec![Item::Boolean(item.is_type(spec))]
        } else if item.is_type_exact(spec) {
            vec![item.clone()]
        } else {
            Vec::new()
        })
    }

    fn binary(
        &self,
        op: BinOp,
        left: &Node,
        right: &Node,
        scope: &Scope<'_, 'a>,
        at: usize,
    ) -> Res<'a> {
        let boolean = |b: Option<bool>| Ok(b.map(Item::Boolean).into_iter().collect());
        if matches!(op, BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Implies) {
            let l = self.to_bool(&self.eval(left, scope)?, left.offset)?;
            // Short-circuit where the left side decides.
            match (op, l) {
                (BinOp::And, Some(false)) => return boolean(Some(false)),
                (BinOp::Or, Some(true)) => return boolean(Some(true)),
                (BinOp::Implies, Some(false)) => return boolean(Some(true)),
                _ => {}
            }
            let r = self.to_bool(&self.eval(right, scope)?, right.offset)?;
            return boolean(match op {
                BinOp::And => match (l, r) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
                BinOp::Or => match (l, r) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
                BinOp::Xor => l.zip(r).map(|(a, b)| a != b),
                _ => match (l, r) {
                    (_, Some(true)) => Some(true),
                    (Some(true), Some(false)) => Some(false),
                    _ => None,
                },
            });
        }
        let l = self.eval(left, scope)?;
        let r = self.eval(right, scope)?;
        match op {
            BinOp::Union => {
                let mut out = Vec::with_capacity(l.len() + r.len());
                for item in l.into_iter().chain(r) {
                    self.charge(out.len(), at)?;
                    push_distinct(&mut out, item);
                }
                Ok(out)
            }
            BinOp::Eq | BinOp::Ne => {
                let eq = collection_equal(&l, &r);
                boolean(if op == BinOp::Eq { eq } else { eq.map(|b| !b) })
            }
            BinOp::Equiv | BinOp::NotEquiv => {
                let eq = collection_equivalent(&l, &r);
                boolean(Some(if op == BinOp::Equiv { eq } else { !eq }))
            }
            BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
                let (Some(a), Some(b)) = (self.singleton(&l, at)?, self.singleton(&r, at)?) else {
                    return Ok(Vec::new());
                };
                let ord = ops::compare(a, b).map_err(|m| err(at, m))?;
                boolean(ord.map(|o| match op {
                    BinOp::Lt => o == Ordering::Less,
                    BinOp::Gt => o == Ordering::Greater,
                    BinOp::Le => o != Ordering::Greater,
                    _ => o != Ordering::Less,
                }))
            }
            BinOp::In | BinOp::Contains => {
                let (needle, haystack) = if op == BinOp::In { (&l, &r) } else { (&r, &l) };
                let Some(needle) = self.singleton(needle, at)? else { return Ok(Vec::new()) };
                boolean(Some(haystack.iter().any(|h| ops::equal(needle, h) == Some(true))))
            }
            BinOp::Concat => {
                let text = |c: &[Item<'a>]| -> Result<String, EvalError> {
                    Ok(self.singleton(c, at)?.map(|i| i.to_string()).unwrap_or_default())
                };
                let s = text(&l)? + &text(&r)?;
                Ok(vec![self.string(s, at)?])
            }
            _ => {
                let (Some(a), Some(b)) = (self.singleton(&l, at)?, self.singleton(&r, at)?) else {
                    return Ok(Vec::new());
                };
                let result = ops::arithmetic(op, a, b).map_err(|m| err(at, m))?;
                if let Some(Item::String(s)) = &result
                    && s.len() > MAX_STRING
                {
                    return Err(err(at, "string result too long"));
                }
                Ok(result.into_iter().collect())
            }
        }
    }
}

/// Appends `item` unless an equal item is already there.
pub(crate) fn push_distinct<'a>(out: &mut Coll<'a>, item: Item<'a>) {
    if !out.iter().any(|o| ops::equal(o, &item) == Some(true)) {
        out.push(item);
    }
}

/// `=` on collections: unknown if either is empty, item-wise in order otherwise.
pub(crate) fn collection_equal(l: &[Item<'_>], r: &[Item<'_>]) -> Option<bool> {
    if l.is_empty() || r.is_empty() {
        return None;
    }
    if l.len() != r.len() {
        return Some(false);
    }
    let mut unknown = false;
    for (a, b) in l.iter().zip(r) {
        match ops::equal(a, b) {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown { None } else { Some(true) }
}

/// `~` on collections: same size and every item has an equivalent partner, in any order.
pub(crate) fn collection_equivalent(l: &[Item<'_>], r: &[Item<'_>]) -> bool {
    if l.len() != r.len() {
        return false;
    }
    let mut used = vec![false; r.len()];
    l.iter().all(|a| {
        let found = r.iter().enumerate().find(|(i, b)| !used[*i] && ops::equivalent(a, b));
        found.map(|(i, _)| used[i] = true).is_some()
    })
}
