//! Existence, filtering and projection, subsetting, combining, aggregation, sorting, tree
//! navigation (`children`, `descendants`) and `iif`, `not`, `trace`.

use super::{Call, boolean, opt};
use crate::ast::Expr;
use crate::eval::{Coll, Res, Scope, push_distinct};
use crate::navigate;
use crate::ops;
use crate::types::Item;
use std::cmp::Ordering;
use std::collections::HashSet;

/// Most rounds `repeat()`/`descendants()` run (deeper than any real resource).
const MAX_ROUNDS: usize = 1_000;

fn contains(coll: &[Item<'_>], item: &Item<'_>) -> bool {
    coll.iter().any(|c| ops::equal(c, item) == Some(true))
}

/// Identity of an element for `repeat()`: the addresses of its JSON.
fn identity(item: &Item<'_>) -> Option<(usize, usize)> {
    let Item::Node(n) = item else { return None };
    let p = |v: Option<&serde_json::Value>| v.map_or(0, |v| v as *const _ as usize);
    Some((p(n.value()), p(n.extension_element())))
}

pub(super) fn call<'a>(c: &Call<'_, '_, 'a, '_>, name: &str) -> Option<Res<'a>> {
    Some(match name {
        "empty" => boolean(c.input.is_empty()),
        "exists" if c.args.is_empty() => boolean(!c.input.is_empty()),
        "exists" => matching(c, true).map(|m| vec![Item::Boolean(!m.is_empty())]),
        "all" => matching(c, false).map(|m| vec![Item::Boolean(m.len() == c.input.len())]),
        "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => booleans(c, name),
        "subsetOf" | "supersetOf" => (|| {
            let other = c.arg(0)?;
            let (small, big) =
                if name == "subsetOf" { (&c.input, &other) } else { (&other, &c.input) };
            c.ev.charge(small.len().saturating_mul(big.len()), c.at)?;
            boolean(small.iter().all(|i| contains(big, i)))
        })(),
        "count" => Ok(vec![Item::Integer(c.input.len() as i64)]),
        "distinct" => distinct(c),
        "isDistinct" => distinct(c).map(|d| vec![Item::Boolean(d.len() == c.input.len())]),
        "where" => matching(c, true),
        "select" => (|| {
            let mut out = Vec::new();
            for (i, item) in c.input.iter().enumerate() {
                out.extend(c.lambda(0, item, i)?);
                c.ev.charge(out.len(), c.at)?;
            }
            Ok(out)
        })(),
        "repeat" => repeat(c, |item, i, out| {
            out.extend(c.lambda(0, item, i)?);
            Ok(())
        }),
        "children" => (|| {
            let mut out = Vec::new();
            for item in &c.input {
                if let Item::Node(n) = item {
                    navigate::children(n, &mut out);
                }
            }
            c.ev.charge(out.len(), c.at)?;
            Ok(out)
        })(),
        "descendants" => repeat(c, |item, _, out| {
            if let Item::Node(n) = item {
                navigate::children(n, out);
            }
            Ok(())
        }),
        "single" => match c.input.len() {
            0 | 1 => Ok(c.input.clone()),
            n => Err(c.err(format!("single() on {n} items"))),
        },
        "first" => opt(c.input.first().cloned()),
        "last" => opt(c.input.last().cloned()),
        "tail" => Ok(c.input.iter().skip(1).cloned().collect()),
        "skip" | "take" => (|| {
            let Some(n) = c.arg_integer(0)? else { return Ok(Vec::new()) };
            let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
            let it = c.input.iter().cloned();
            Ok(if name == "skip" { it.skip(n).collect() } else { it.take(n).collect() })
        })(),
        "intersect" => (|| {
            let other = c.arg(0)?;
            c.ev.charge(c.input.len().saturating_mul(other.len()), c.at)?;
            let mut out = Vec::new();
            for item in c.input.iter().filter(|i| contains(&other, i)) {
                push_distinct(&mut out, item.clone());
            }
            Ok(out)
        })(),
        "exclude" => (|| {
            let other = c.arg(0)?;
            c.ev.charge(c.input.len().saturating_mul(other.len()), c.at)?;
            Ok(c.input.iter().filter(|i| !contains(&other, i)).cloned().collect())
        })(),
        "union" => (|| {
            let mut out = Vec::new();
            for item in c.input.iter().cloned().chain(c.arg(0)?) {
                c.ev.charge(out.len(), c.at)?;
                push_distinct(&mut out, item);
            }
            Ok(out)
        })(),
        "combine" => (|| {
            let mut out = c.input.clone();
            out.extend(c.arg(0)?);
            Ok(out)
        })(),
        "iif" => iif(c),
        "aggregate" => (|| {
            let mut total = c.arg(1)?;
            for (i, item) in c.input.iter().enumerate() {
                let scope =
                    Scope { this: std::slice::from_ref(item), index: Some(i), total: Some(&total) };
                total = c.ev.eval(&c.args[0], &scope)?;
            }
            Ok(total)
        })(),
        "sort" => sort(c),
        "trace" => Ok(c.input.clone()),
        "not" => (|| {
            let b = c.ev.to_bool(&c.input, c.at)?;
            opt(b.map(|b| Item::Boolean(!b)))
        })(),
        _ => return None,
    })
}

/// Items for which argument 0 is true (`where`, `exists(criteria)`, `all`).
fn matching<'a>(c: &Call<'_, '_, 'a, '_>, continue_on_miss: bool) -> Res<'a> {
    let mut out = Vec::new();
    for (i, item) in c.input.iter().enumerate() {
        let r = c.lambda(0, item, i)?;
        if c.ev.to_bool(&r, c.args[0].offset)? == Some(true) {
            out.push(item.clone());
        } else if !continue_on_miss {
            break;
        }
    }
    Ok(out)
}

fn booleans<'a>(c: &Call<'_, '_, 'a, '_>, name: &str) -> Res<'a> {
    let mut values = Vec::with_capacity(c.input.len());
    for item in &c.input {
        match item.to_system() {
            Some(Item::Boolean(b)) => values.push(b),
            _ => return Err(c.err(format!("{name}() expects booleans, got {item}"))),
        }
    }
    boolean(match name {
        "allTrue" => values.iter().all(|b| *b),
        "anyTrue" => values.iter().any(|b| *b),
        "allFalse" => values.iter().all(|b| !*b),
        _ => values.iter().any(|b| !*b),
    })
}

fn distinct<'a>(c: &Call<'_, '_, 'a, '_>) -> Res<'a> {
    let mut out = Vec::new();
    for item in &c.input {
        c.ev.charge(out.len(), c.at)?;
        push_distinct(&mut out, item.clone());
    }
    Ok(out)
}

/// Applies `step` to the input, then to what it produced, until nothing new appears.
/// Elements are new unless the very same element was seen; other values unless equal.
fn repeat<'a>(
    c: &Call<'_, '_, 'a, '_>,
    step: impl Fn(&Item<'a>, usize, &mut Coll<'a>) -> Result<(), crate::EvalError>,
) -> Res<'a> {
    let mut out: Coll<'a> = Vec::new();
    let mut seen = HashSet::new();
    let mut frontier = c.input.clone();
    for _ in 0..MAX_ROUNDS {
        if frontier.is_empty() {
            return Ok(out);
        }
        let mut next = Vec::new();
        for (i, item) in frontier.iter().enumerate() {
            let mut produced = Vec::new();
            step(item, i, &mut produced)?;
            c.ev.charge(produced.len(), c.at)?;
            for p in produced {
                let new = match identity(&p) {
                    Some(id) => seen.insert(id),
                    None => {
                        c.ev.charge(out.len(), c.at)?;
                        !contains(&out, &p)
                    }
                };
                if new {
                    out.push(p.clone());
                    next.push(p);
                }
            }
        }
        frontier = next;
    }
    Err(c.err("repeat() did not finish"))
}

fn iif<'a>(c: &Call<'_, '_, 'a, '_>) -> Res<'a> {
    let item = c.single()?;
    let scope = match item {
        Some(item) => Scope { this: std::slice::from_ref(item), ..*c.scope },
        None => *c.scope,
    };
    let criterion = c.ev.eval(&c.args[0], &scope)?;
    let truth = match c.ev.singleton(&criterion, c.args[0].offset)? {
        None => false,
        Some(v) => match v.to_system() {
            Some(Item::Boolean(b)) => b,
            _ => return Err(c.err("iif() criterion must be a boolean")),
        },
    };
    match (truth, c.args.get(if truth { 1 } else { 2 })) {
        (_, Some(branch)) => c.ev.eval(branch, &scope),
        (_, None) => Ok(Vec::new()),
    }
}

fn sort<'a>(c: &Call<'_, '_, 'a, '_>) -> Res<'a> {
    // Keys per item: (descending, value).
    let mut keyed = Vec::with_capacity(c.input.len());
    for (i, item) in c.input.iter().enumerate() {
        let mut keys = Vec::new();
        if c.args.is_empty() {
            keys.push((false, item.to_system()));
        }
        for arg in c.args {
            let (desc, node) = match &arg.expr {
                Expr::Negate(inner) => (true, &**inner),
                _ => (false, arg),
            };
            let scope = Scope { this: std::slice::from_ref(item), index: Some(i), ..*c.scope };
            let v = c.ev.eval(node, &scope)?;
            let v = c.ev.singleton(&v, arg.offset)?.and_then(Item::to_system);
            keys.push((desc, v));
        }
        keyed.push((keys, item.clone()));
    }
    let cmp = |a: &Option<Item<'a>>, b: &Option<Item<'a>>| match (a, b) {
        (None, None) => Ordering::Equal,
        // Empty keys sort after values (and so first when descending).
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => ops::compare(x, y).ok().flatten().unwrap_or(Ordering::Equal),
    };
    keyed.sort_by(|(ka, _), (kb, _)| {
        for ((desc, a), (_, b)) in ka.iter().zip(kb) {
            let o = cmp(a, b);
            if o != Ordering::Equal {
                return if *desc { o.reverse() } else { o };
            }
        }
        Ordering::Equal
    });
    Ok(keyed.into_iter().map(|(_, item)| item).collect())
}
