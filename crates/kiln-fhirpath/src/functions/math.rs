//! Math functions. Rounding, `abs`, `ceiling`, `floor`, `truncate` and integer powers are
//! exact decimal arithmetic; `exp`, `ln`, `log`, `sqrt` and fractional powers go through
//! `f64` and are rounded to 15 significant digits. Undefined results (`sqrt(-1)`) are empty.

use super::{Call, opt};
use crate::eval::Res;
use crate::types::Item;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::{Decimal, RoundingStrategy};

fn from_f64<'a>(x: f64) -> Option<Item<'a>> {
    if !x.is_finite() {
        return None;
    }
    let d = Decimal::from_f64(x)?.round_sf(15)?.normalize();
    Some(Item::Decimal(d))
}

fn to_int<'a>(d: Decimal) -> Option<Item<'a>> {
    d.to_i64().map(Item::Integer)
}

pub(super) fn call<'a>(c: &Call<'_, '_, 'a, '_>, name: &str) -> Option<Res<'a>> {
    if !matches!(
        name,
        "abs"
            | "ceiling"
            | "exp"
            | "floor"
            | "ln"
            | "log"
            | "power"
            | "round"
            | "sqrt"
            | "truncate"
    ) {
        return None;
    }
    Some((|| {
        let Some(v) = c.single_value()? else { return Ok(Vec::new()) };
        let d = match &v {
            Item::Integer(i) => Decimal::from(*i),
            Item::Decimal(d) => *d,
            Item::Quantity(q) if name == "abs" => {
                let mut q = q.clone();
                q.value = q.value.abs();
                return Ok(vec![Item::Quantity(q)]);
            }
            other => return Err(c.err(format!("{name}() expects a number, got {other}"))),
        };
        let float = d.to_f64().unwrap_or(f64::NAN);
        let r = match name {
            "abs" => match v {
                Item::Integer(i) => i.checked_abs().map(Item::Integer),
                _ => Some(Item::Decimal(d.abs())),
            },
            "ceiling" => to_int(d.ceil()),
            "floor" => to_int(d.floor()),
            "truncate" => to_int(d.trunc()),
            "exp" => from_f64(float.exp()),
            "ln" => from_f64(float.ln()),
            "sqrt" => from_f64(float.sqrt()),
            "log" => {
                let Some(base) = c.arg_single(0)? else { return Ok(Vec::new()) };
                let base = number(&base).ok_or_else(|| c.err("log() base must be a number"))?;
                from_f64(float.ln() / base.to_f64().unwrap_or(f64::NAN).ln())
            }
            "power" => {
                let Some(exp) = c.arg_single(0)? else { return Ok(Vec::new()) };
                power(&v, d, &exp).ok_or(()).or_else(|_| {
                    let e =
                        number(&exp).ok_or_else(|| c.err("power() exponent must be a number"))?;
                    Ok(from_f64(float.powf(e.to_f64().unwrap_or(f64::NAN))))
                })?
            }
            _ => {
                let digits = match c.arg_integer(0)? {
                    Some(n) if !(0..=28).contains(&n) => {
                        return Err(c.err("round() precision must be 0 to 28"));
                    }
                    Some(n) => n as u32,
                    None => 0,
                };
                Some(Item::Decimal(
                    d.round_dp_with_strategy(digits, RoundingStrategy::MidpointAwayFromZero),
                ))
            }
        };
        opt(r)
    })())
}

fn number(item: &Item<'_>) -> Option<Decimal> {
    match item {
        Item::Integer(i) => Some(Decimal::from(*i)),
        Item::Decimal(d) => Some(*d),
        _ => None,
    }
}

/// Exact power for whole exponents (`2.power(3)` is the Integer 8).
fn power<'a>(base: &Item<'a>, d: Decimal, exp: &Item<'a>) -> Option<Option<Item<'a>>> {
    let e = match exp {
        Item::Integer(e) if (0..=1000).contains(e) => *e as u32,
        _ => return None,
    };
    if let Item::Integer(b) = base {
        return Some(b.checked_pow(e).map(Item::Integer));
    }
    let mut acc = Decimal::ONE;
    for _ in 0..e {
        acc = acc.checked_mul(d)?;
    }
    Some(Some(Item::Decimal(acc)))
}
