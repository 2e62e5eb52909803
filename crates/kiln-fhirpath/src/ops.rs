//! Operators on single items: equality (`=`, three-valued), equivalence (`~`), ordering and
//! arithmetic. Elements are first turned into System values (a FHIR `date` into a `Date`, a
//! `Quantity` element into a Quantity); complex elements compare structurally.

use crate::ast::BinOp;
use crate::datetime::{Date, DateTime, Parts};
use crate::quantity::Quantity;
use crate::types::{Item, json_decimal};
use rust_decimal::Decimal;
use serde_json::Value;
use std::cmp::Ordering;

/// System value of an item, or `None` for complex elements (and value-less primitives).
fn system<'a>(item: &Item<'a>) -> Option<Item<'a>> {
    item.to_system().filter(|i| !matches!(i, Item::Node(_)))
}

fn number(item: &Item<'_>) -> Option<Decimal> {
    match item {
        Item::Integer(i) => Some(Decimal::from(*i)),
        Item::Decimal(d) => Some(*d),
        _ => None,
    }
}

fn temporal(item: &Item<'_>) -> Option<(Parts, bool)> {
    match item {
        Item::Date(d) => Some((d.0, false)),
        Item::DateTime(d) => Some((d.0, false)),
        Item::Time(t) => Some((t.0, true)),
        _ => None,
    }
}

/// `=` on two items: `Some(bool)`, or `None` when unknown (different date precisions,
/// incomparable units).
pub(crate) fn equal(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    match (system(a), system(b)) {
        (Some(x), Some(y)) => equal_system(&x, &y),
        (None, None) => match (a, b) {
            (Item::Node(x), Item::Node(y)) => match (x.value(), y.value()) {
                (Some(vx), Some(vy)) => Some(json_equal(vx, vy, false)),
                _ => Some(false),
            },
            _ => Some(false),
        },
        _ => Some(false),
    }
}

fn equal_system(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return Some(x == y);
    }
    if let (Some((x, xt)), Some((y, yt))) = (temporal(a), temporal(b)) {
        if xt != yt {
            return Some(false);
        }
        return x.compare(&y).map(|o| o == Ordering::Equal);
    }
    match (a, b) {
        (Item::Boolean(x), Item::Boolean(y)) => Some(x == y),
        (Item::String(x), Item::String(y)) => Some(x == y),
        (Item::Quantity(x), Item::Quantity(y)) => x.compare(y).map(|o| o == Ordering::Equal),
        _ => Some(false),
    }
}

/// `~` on two items.
pub(crate) fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (system(a), system(b)) {
        (Some(x), Some(y)) => equivalent_system(&x, &y),
        (None, None) => match (a, b) {
            (Item::Node(x), Item::Node(y)) => match (x.value(), y.value()) {
                (Some(vx), Some(vy)) => json_equal(vx, vy, true),
                _ => false,
            },
            _ => false,
        },
        _ => false,
    }
}

fn normalize_text(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn equivalent_system(a: &Item<'_>, b: &Item<'_>) -> bool {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        let scale = x.scale().min(y.scale());
        return x.round_dp(scale) == y.round_dp(scale);
    }
    if let (Some((x, xt)), Some((y, yt))) = (temporal(a), temporal(b)) {
        return xt == yt && x.equivalent(&y);
    }
    match (a, b) {
        (Item::Boolean(x), Item::Boolean(y)) => x == y,
        (Item::String(x), Item::String(y)) => normalize_text(x) == normalize_text(y),
        (Item::Quantity(x), Item::Quantity(y)) => x.equivalent(y),
        _ => false,
    }
}

/// Structural JSON equality; numbers compare by value, strings by `~` rules if `loose`.
fn json_equal(a: &Value, b: &Value, loose: bool) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => json_decimal(x) == json_decimal(y),
        (Value::String(x), Value::String(y)) if loose => normalize_text(x) == normalize_text(y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q, loose))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w, loose)))
        }
        _ => a == b,
    }
}

fn describe(item: &Item<'_>) -> String {
    let (ns, name) = item.type_name();
    format!("{ns}.{name}")
}

/// Ordering for `<`, `>`, `<=`, `>=`: `Ok(None)` when unknown, an error for types that
/// cannot be compared.
pub(crate) fn compare(a: &Item<'_>, b: &Item<'_>) -> Result<Option<Ordering>, String> {
    let err = || format!("cannot compare {} with {}", describe(a), describe(b));
    let (Some(x), Some(y)) = (system(a), system(b)) else { return Err(err()) };
    if let (Some(p), Some(q)) = (number(&x), number(&y)) {
        return Ok(Some(p.cmp(&q)));
    }
    if let (Some((p, pt)), Some((q, qt))) = (temporal(&x), temporal(&y))
        && pt == qt
    {
        return Ok(p.compare(&q));
    }
    match (&x, &y) {
        (Item::String(p), Item::String(q)) => Ok(Some(p.cmp(q))),
        (Item::Quantity(p), Item::Quantity(q)) => Ok(p.compare(q)),
        _ => Err(err()),
    }
}

/// Arithmetic (`+ - * / div mod &` are handled by the caller for `&`). `Ok(None)` for an
/// empty result (division by zero, incompatible units).
pub(crate) fn arithmetic<'a>(
    op: BinOp,
    a: &Item<'a>,
    b: &Item<'a>,
) -> Result<Option<Item<'a>>, String> {
    let err = || format!("cannot apply {op:?} to {} and {}", describe(a), describe(b));
    let (Some(x), Some(y)) = (system(a), system(b)) else { return Err(err()) };
    match (&x, &y) {
        (Item::Integer(p), Item::Integer(q)) => {
            let r = match op {
                BinOp::Add => p.checked_add(*q),
                BinOp::Sub => p.checked_sub(*q),
                BinOp::Mul => p.checked_mul(*q),
                BinOp::IntDiv => return Ok(p.checked_div(*q).map(Item::Integer)),
                BinOp::Mod => return Ok(p.checked_rem(*q).map(Item::Integer)),
                BinOp::Div => {
                    let r = Decimal::from(*p).checked_div(Decimal::from(*q));
                    return Ok(r.map(Item::Decimal));
                }
                _ => return Err(err()),
            };
            r.map(|v| Some(Item::Integer(v))).ok_or_else(|| "integer overflow".to_string())
        }
        (Item::String(p), Item::String(q)) if op == BinOp::Add => {
            Ok(Some(Item::String(format!("{p}{q}"))))
        }
        (Item::Quantity(p), Item::Quantity(q)) => Ok(match op {
            BinOp::Add => p.add(q, false),
            BinOp::Sub => p.add(q, true),
            BinOp::Mul => p.multiply(q, false),
            BinOp::Div => p.multiply(q, true),
            _ => return Err(err()),
        }
        .map(Item::Quantity)),
        (Item::Quantity(p), _) if number(&y).is_some() && matches!(op, BinOp::Mul | BinOp::Div) => {
            let q = Quantity::new(number(&y).unwrap_or_default(), "1");
            Ok(p.multiply(&q, op == BinOp::Div).map(Item::Quantity))
        }
        (_, Item::Quantity(q)) if number(&x).is_some() && op == BinOp::Mul => Ok(q
            .multiply(&Quantity::new(number(&x).unwrap_or_default(), "1"), false)
            .map(Item::Quantity)),
        (Item::Date(_) | Item::DateTime(_) | Item::Time(_), Item::Quantity(q))
            if matches!(op, BinOp::Add | BinOp::Sub) =>
        {
            date_add(&x, q, op == BinOp::Sub).map(Some)
        }
        _ => {
            let (Some(p), Some(q)) = (number(&x), number(&y)) else { return Err(err()) };
            let r = match op {
                BinOp::Add => p.checked_add(q),
                BinOp::Sub => p.checked_sub(q),
                BinOp::Mul => p.checked_mul(q),
                BinOp::Div => return Ok(p.checked_div(q).map(Item::Decimal)),
                BinOp::IntDiv => {
                    return Ok(p.checked_div(q).map(|d| Item::Decimal(d.trunc())));
                }
                BinOp::Mod => return Ok(p.checked_rem(q).map(Item::Decimal)),
                _ => return Err(err()),
            };
            r.map(|v| Some(Item::Decimal(v))).ok_or_else(|| "decimal overflow".to_string())
        }
    }
}

fn date_add<'a>(base: &Item<'a>, q: &Quantity, negate: bool) -> Result<Item<'a>, String> {
    let (unit, mult) =
        q.calendar_unit().ok_or_else(|| format!("cannot add '{}' to a date or time", q.unit))?;
    let amount = q.value.trunc().checked_mul(Decimal::from(mult)).unwrap_or_default();
    let amount: i64 = amount.try_into().map_err(|_| "duration out of range".to_string())?;
    let amount = if negate { -amount } else { amount };
    let overflow = || "date arithmetic out of range".to_string();
    Ok(match base {
        Item::Date(d) => Item::Date(Date(d.0.add(amount, unit, false).ok_or_else(overflow)?)),
        Item::DateTime(d) => {
            Item::DateTime(DateTime(d.0.add(amount, unit, false).ok_or_else(overflow)?))
        }
        Item::Time(t) => Item::Time(crate::datetime::Time(
            t.0.add(amount, unit, true)
                .ok_or_else(|| "cannot add this unit to a time".to_string())?,
        )),
        _ => return Err(overflow()),
    })
}
