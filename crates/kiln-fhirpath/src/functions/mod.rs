//! The function library: the table of known functions and their argument counts (checked at
//! compile time), and the dispatch to the groups in the submodules. Arguments of functions
//! such as `where` are evaluated once per input item with `$this`/`$index` bound; others are
//! evaluated once, against the caller's `$this`.

mod collections;
mod convert;
mod fhir;
mod math;
mod strings;

use crate::EvalError;
use crate::ast::Node;
use crate::eval::{Coll, Evaluator, Res, Scope, err};
use crate::types::Item;

/// Known functions with their minimum and maximum argument counts.
const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("empty", 0, 0),
    ("exists", 0, 1),
    ("all", 1, 1),
    ("allTrue", 0, 0),
    ("anyTrue", 0, 0),
    ("allFalse", 0, 0),
    ("anyFalse", 0, 0),
    ("subsetOf", 1, 1),
    ("supersetOf", 1, 1),
    ("count", 0, 0),
    ("distinct", 0, 0),
    ("isDistinct", 0, 0),
    ("where", 1, 1),
    ("select", 1, 1),
    ("repeat", 1, 1),
    ("single", 0, 0),
    ("first", 0, 0),
    ("last", 0, 0),
    ("tail", 0, 0),
    ("skip", 1, 1),
    ("take", 1, 1),
    ("intersect", 1, 1),
    ("exclude", 1, 1),
    ("union", 1, 1),
    ("combine", 1, 1),
    ("iif", 2, 3),
    ("aggregate", 1, 2),
    ("sort", 0, 8),
    ("children", 0, 0),
    ("descendants", 0, 0),
    ("trace", 1, 2),
    ("not", 0, 0),
    ("toBoolean", 0, 0),
    ("convertsToBoolean", 0, 0),
    ("toInteger", 0, 0),
    ("convertsToInteger", 0, 0),
    ("toDecimal", 0, 0),
    ("convertsToDecimal", 0, 0),
    ("toString", 0, 0),
    ("convertsToString", 0, 0),
    ("toDate", 0, 0),
    ("convertsToDate", 0, 0),
    ("toDateTime", 0, 0),
    ("convertsToDateTime", 0, 0),
    ("toTime", 0, 0),
    ("convertsToTime", 0, 0),
    ("toQuantity", 0, 1),
    ("convertsToQuantity", 0, 1),
    ("indexOf", 1, 1),
    ("substring", 1, 2),
    ("startsWith", 1, 1),
    ("endsWith", 1, 1),
    ("contains", 1, 1),
    ("upper", 0, 0),
    ("lower", 0, 0),
    ("replace", 2, 2),
    ("matches", 1, 1),
    ("matchesFull", 1, 1),
    ("replaceMatches", 2, 2),
    ("length", 0, 0),
    ("toChars", 0, 0),
    ("trim", 0, 0),
    ("split", 1, 1),
    ("join", 0, 1),
    ("encode", 1, 1),
    ("decode", 1, 1),
    ("escape", 1, 1),
    ("unescape", 1, 1),
    ("abs", 0, 0),
    ("ceiling", 0, 0),
    ("exp", 0, 0),
    ("floor", 0, 0),
    ("ln", 0, 0),
    ("log", 1, 1),
    ("power", 1, 1),
    ("round", 0, 1),
    ("sqrt", 0, 0),
    ("truncate", 0, 0),
    ("lowBoundary", 0, 1),
    ("highBoundary", 0, 1),
    ("precision", 0, 0),
    ("comparable", 1, 1),
    ("now", 0, 0),
    ("today", 0, 0),
    ("timeOfDay", 0, 0),
    ("type", 0, 0),
    ("extension", 1, 1),
    ("hasValue", 0, 0),
    ("getValue", 0, 0),
    ("resolve", 0, 0),
    ("htmlChecks", 0, 0),
    ("htmlchecks", 0, 0),
    ("memberOf", 1, 1),
    ("conformsTo", 1, 1),
    ("subsumes", 1, 1),
    ("subsumedBy", 1, 1),
];

/// Checks a function name and its argument count.
pub(crate) fn check_arity(name: &str, n: usize) -> Result<(), String> {
    let Some(&(_, min, max)) = FUNCTIONS.iter().find(|(f, _, _)| *f == name) else {
        return Err(format!("unknown function '{name}'"));
    };
    if n < min || n > max {
        let expected = if min == max { min.to_string() } else { format!("{min} to {max}") };
        return Err(format!("{name}() takes {expected} argument(s), got {n}"));
    }
    Ok(())
}

/// One function call being evaluated.
pub(crate) struct Call<'e, 'c, 'a, 's> {
    pub ev: &'e Evaluator<'c, 'a>,
    pub input: Coll<'a>,
    pub args: &'e [Node],
    pub scope: &'e Scope<'s, 'a>,
    pub at: usize,
}

impl<'a> Call<'_, '_, 'a, '_> {
    pub fn err(&self, message: impl Into<String>) -> EvalError {
        err(self.at, message)
    }

    /// Argument `i`, evaluated once against the caller's scope.
    pub fn arg(&self, i: usize) -> Res<'a> {
        match self.args.get(i) {
            Some(node) => self.ev.eval(node, self.scope),
            None => Ok(Vec::new()),
        }
    }

    /// Argument `i` as at most one System value.
    pub fn arg_single(&self, i: usize) -> Result<Option<Item<'a>>, EvalError> {
        let v = self.arg(i)?;
        Ok(self.ev.singleton(&v, self.at)?.and_then(Item::to_system))
    }

    pub fn arg_string(&self, i: usize) -> Result<Option<String>, EvalError> {
        match self.arg_single(i)? {
            None => Ok(None),
            Some(Item::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(format!("expected a string argument, got {other}"))),
        }
    }

    pub fn arg_integer(&self, i: usize) -> Result<Option<i64>, EvalError> {
        match self.arg_single(i)? {
            None => Ok(None),
            Some(Item::Integer(n)) => Ok(Some(n)),
            Some(other) => Err(self.err(format!("expected an integer argument, got {other}"))),
        }
    }

    /// Argument `i` evaluated with `$this` = `item` and `$index` = `index`.
    pub fn lambda(&self, i: usize, item: &Item<'a>, index: usize) -> Res<'a> {
        let scope = Scope { this: std::slice::from_ref(item), index: Some(index), ..*self.scope };
        self.ev.eval(&self.args[i], &scope)
    }

    /// The input as at most one item.
    pub fn single(&self) -> Result<Option<&Item<'a>>, EvalError> {
        self.ev.singleton(&self.input, self.at)
    }

    /// The input as at most one System value (elements converted).
    pub fn single_value(&self) -> Result<Option<Item<'a>>, EvalError> {
        Ok(self.single()?.and_then(Item::to_system))
    }

    /// The input as at most one string; other types are an error.
    pub fn single_string(&self) -> Result<Option<String>, EvalError> {
        match self.single()? {
            None => Ok(None),
            Some(item) => match item.as_str() {
                Some(s) => Ok(Some(s.to_string())),
                None if matches!(item, Item::Node(n) if n.value().is_none()) => Ok(None),
                None => {
                    let (ns, ty) = item.type_name();
                    Err(self.err(format!("expected a string, got {ns}.{ty}")))
                }
            },
        }
    }
}

pub(crate) fn boolean<'a>(b: bool) -> Res<'a> {
    Ok(vec![Item::Boolean(b)])
}

pub(crate) fn opt<'a>(item: Option<Item<'a>>) -> Res<'a> {
    Ok(item.into_iter().collect())
}

pub(crate) fn call<'a>(
    ev: &Evaluator<'_, 'a>,
    name: &str,
    input: Coll<'a>,
    args: &[Node],
    scope: &Scope<'_, 'a>,
    at: usize,
) -> Res<'a> {
    let c = Call { ev, input, args, scope, at };
    if let Some(r) = collections::call(&c, name) {
        return r;
    }
    if let Some(r) = strings::call(&c, name) {
        return r;
    }
    if let Some(r) = convert::call(&c, name) {
        return r;
    }
    if let Some(r) = math::call(&c, name) {
        return r;
    }
    if let Some(r) = fhir::call(&c, name) {
        return r;
    }
    Err(err(at, format!("unknown function '{name}'")))
}
