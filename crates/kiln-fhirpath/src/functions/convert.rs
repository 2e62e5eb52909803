//! Conversion functions: `toX()` returns the converted value or empty, `convertsToX()` tells
//! whether `toX()` would succeed. Elements convert through their System value.

use super::{Call, opt};
use crate::datetime::{Date, DateTime, Time};
use crate::eval::Res;
use crate::quantity::Quantity;
use crate::types::Item;
use rust_decimal::Decimal;
use std::str::FromStr;

pub(super) fn call<'a>(c: &Call<'_, '_, 'a, '_>, name: &str) -> Option<Res<'a>> {
    let (target, test) = match name.strip_prefix("convertsTo") {
        Some(t) => (t, true),
        None => (name.strip_prefix("to")?, false),
    };
    if !matches!(
        target,
        "Boolean" | "Integer" | "Decimal" | "String" | "Date" | "DateTime" | "Time" | "Quantity"
    ) {
        return None;
    }
    Some((|| {
        let Some(item) = c.single()? else { return Ok(Vec::new()) };
        let unit = if target == "Quantity" { c.arg_string(0)? } else { None };
        let converted = item.to_system().and_then(|v| convert(&v, item, target, unit.as_deref()));
        if test { Ok(vec![Item::Boolean(converted.is_some())]) } else { opt(converted) }
    })())
}

fn is_integer_text(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_decimal_text(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    is_integer_text(whole)
        && !whole.starts_with(['+', '-'])
        && !frac.is_empty()
        && frac.bytes().all(|b| b.is_ascii_digit())
}

fn convert<'a>(
    v: &Item<'a>,
    original: &Item<'a>,
    target: &str,
    unit: Option<&str>,
) -> Option<Item<'a>> {
    Some(match (target, v) {
        ("Boolean", Item::Boolean(b)) => Item::Boolean(*b),
        ("Boolean", Item::Integer(i)) => match i {
            0 => Item::Boolean(false),
            1 => Item::Boolean(true),
            _ => return None,
        },
        ("Boolean", Item::Decimal(d)) => match d {
            d if d.is_zero() => Item::Boolean(false),
            d if *d == Decimal::ONE => Item::Boolean(true),
            _ => return None,
        },
        ("Boolean", Item::String(s)) => match s.to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Item::Boolean(true),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Item::Boolean(false),
            _ => return None,
        },
        ("Integer", Item::Integer(i)) => Item::Integer(*i),
        ("Integer", Item::Boolean(b)) => Item::Integer(*b as i64),
        ("Integer", Item::String(s)) if is_integer_text(s) => Item::Integer(s.parse().ok()?),
        ("Decimal", Item::Integer(i)) => Item::Decimal(Decimal::from(*i)),
        ("Decimal", Item::Decimal(d)) => Item::Decimal(*d),
        ("Decimal", Item::Boolean(b)) => {
            Item::Decimal(if *b { Decimal::ONE } else { Decimal::ZERO })
        }
        ("Decimal", Item::String(s)) if is_decimal_text(s) => {
            Item::Decimal(Decimal::from_str(s).ok()?)
        }
        ("String", Item::Node(_)) => return None,
        ("String", _) => Item::String(original.to_string()),
        ("Date", Item::Date(d)) => Item::Date(*d),
        ("Date", Item::DateTime(d)) => Item::Date(d.date()),
        ("Date", Item::String(s)) => {
            Item::Date(Date::parse(s).or_else(|| DateTime::parse(s).map(DateTime::date))?)
        }
        ("DateTime", Item::DateTime(d)) => Item::DateTime(*d),
        ("DateTime", Item::Date(d)) => Item::DateTime(d.to_datetime()),
        ("DateTime", Item::String(s)) => Item::DateTime(DateTime::parse(s)?),
        ("Time", Item::Time(t)) => Item::Time(*t),
        ("Time", Item::String(s)) => Item::Time(Time::parse(s.strip_prefix('T').unwrap_or(s))?),
        ("Quantity", _) => {
            let q = match v {
                Item::Quantity(q) => q.clone(),
                Item::Integer(i) => Quantity::new(Decimal::from(*i), "1"),
                Item::Decimal(d) => Quantity::new(*d, "1"),
                Item::Boolean(b) => {
                    Quantity::new(if *b { Decimal::ONE } else { Decimal::ZERO }, "1")
                }
                Item::String(s) => Quantity::parse(s)?,
                _ => return None,
            };
            match unit {
                None => Item::Quantity(q),
                Some(u) => {
                    let target = Quantity::new(Decimal::ONE, u);
                    Item::Quantity(Quantity::new(target.convert_other(&q)?, u))
                }
            }
        }
        _ => return None,
    })
}
