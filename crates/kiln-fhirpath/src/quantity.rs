//! Quantities: a decimal value with a UCUM unit (`4 'mg'`) or a calendar-duration keyword
//! (`4 days`). A small UCUM subset (metric prefixes, mass, length, time, volume, amount,
//! pressure, customary mass/length, products, quotients and exponents) converts units so that
//! `4.0 'g' = 4000 'mg'` and `2 'cm' * 2 'm' = 0.04 'm2'`; other units compare only with the
//! very same unit. Calendar `year`/`month` are not comparable with UCUM `'a'`/`'mo'`.

use crate::datetime::Precision;
use rust_decimal::Decimal;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A value with a unit. `unit` is a UCUM code or a calendar keyword (`week`, `days`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    pub value: Decimal,
    pub unit: String,
}

const CALENDAR: [(&str, &str, Precision); 8] = [
    ("year", "years", Precision::Year),
    ("month", "months", Precision::Month),
    ("week", "weeks", Precision::Day),
    ("day", "days", Precision::Day),
    ("hour", "hours", Precision::Hour),
    ("minute", "minutes", Precision::Minute),
    ("second", "seconds", Precision::Second),
    ("millisecond", "milliseconds", Precision::Millisecond),
];

/// Whether `word` is a calendar-duration keyword (`year`, `weeks`, ...).
pub(crate) fn is_calendar_keyword(word: &str) -> bool {
    CALENDAR.iter().any(|(s, p, _)| *s == word || *p == word)
}

/// Dimension exponents: metre, gram, second, calendar month, mole, kelvin, ampere.
type Dims = [i8; 7];
const DIM_NAMES: [&str; 7] = ["m", "g", "s", "", "mol", "K", "A"];

/// A unit reduced to a factor times base units.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Canon {
    factor: Decimal,
    dims: Dims,
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or(Decimal::ONE)
}

fn atom(name: &str) -> Option<Canon> {
    let d = |i: usize, e: i8| {
        let mut dims = [0; 7];
        dims[i] = e;
        dims
    };
    let (factor, dims): (&str, Dims) = match name {
        "m" => ("1", d(0, 1)),
        "g" => ("1", d(1, 1)),
        "s" => ("1", d(2, 1)),
        "min" => ("60", d(2, 1)),
        "h" => ("3600", d(2, 1)),
        "d" => ("86400", d(2, 1)),
        "wk" => ("604800", d(2, 1)),
        "mo" => ("2629800", d(2, 1)),
        "a" => ("31557600", d(2, 1)),
        "L" | "l" => ("0.001", d(0, 3)),
        "mol" => ("1", d(4, 1)),
        "K" => ("1", d(5, 1)),
        "A" => ("1", d(6, 1)),
        "Pa" => ("1000", [-1, 1, -2, 0, 0, 0, 0]),
        "m[Hg]" => ("133322000", [-1, 1, -2, 0, 0, 0, 0]),
        "[in_i]" => ("0.0254", d(0, 1)),
        "[ft_i]" => ("0.3048", d(0, 1)),
        "[yd_i]" => ("0.9144", d(0, 1)),
        "[mi_i]" => ("1609.344", d(0, 1)),
        "[lb_av]" => ("453.59237", d(1, 1)),
        "[oz_av]" => ("28.349523125", d(1, 1)),
        "%" => ("0.01", [0; 7]),
        "1" => ("1", [0; 7]),
        _ => return None,
    };
    Some(Canon { factor: dec(factor), dims })
}

fn prefix(p: &str) -> Option<Decimal> {
    let exp: i32 = match p {
        "T" => 12,
        "G" => 9,
        "M" => 6,
        "k" => 3,
        "h" => 2,
        "da" => 1,
        "d" => -1,
        "c" => -2,
        "m" => -3,
        "u" => -6,
        "n" => -9,
        "p" => -12,
        _ => return None,
    };
    pow10(exp)
}

fn pow10(exp: i32) -> Option<Decimal> {
    if exp >= 0 {
        Decimal::from_i128_with_scale(10i128.checked_pow(exp as u32)?, 0).into()
    } else {
        Decimal::try_from_i128_with_scale(1, (-exp) as u32).ok()
    }
}

/// One term of a unit expression, e.g. `cm2`, `[lb_av]`, `10*3`, `{beats}`.
fn term(t: &str) -> Option<Canon> {
    let mut s = String::new();
    let mut depth = 0;
    for ch in t.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => s.push(ch),
            _ => {}
        }
    }
    if s.is_empty() {
        return atom("1");
    }
    if let Some(e) = s.strip_prefix("10*").or_else(|| s.strip_prefix("10^")) {
        return Some(Canon { factor: pow10(e.parse().ok()?)?, dims: [0; 7] });
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Canon { factor: Decimal::from_str(&s).ok()?, dims: [0; 7] });
    }
    let body_end = s.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '+').len();
    let (body, exp) = s.split_at(body_end);
    let exp: i8 = if exp.is_empty() { 1 } else { exp.parse().ok()? };
    let base = atom(body).or_else(|| {
        ["da", "T", "G", "M", "k", "h", "d", "c", "m", "u", "n", "p"].iter().find_map(|p| {
            let rest = body.strip_prefix(p)?;
            let a = atom(rest)?;
            Some(Canon { factor: prefix(p)? * a.factor, dims: a.dims })
        })
    })?;
    let mut factor = Decimal::ONE;
    for _ in 0..exp.unsigned_abs() {
        factor = factor.checked_mul(base.factor)?;
    }
    if exp < 0 {
        factor = Decimal::ONE.checked_div(factor)?;
    }
    Some(Canon { factor, dims: base.dims.map(|d| d * exp) })
}

fn canon(unit: &str) -> Option<Canon> {
    if let Some((_, _, p)) = CALENDAR.iter().find(|(s, pl, _)| *s == unit || *pl == unit) {
        let (factor, dims): (&str, Dims) = match (p, unit.starts_with("week")) {
            (Precision::Year, _) => ("12", [0, 0, 0, 1, 0, 0, 0]),
            (Precision::Month, _) => ("1", [0, 0, 0, 1, 0, 0, 0]),
            (_, true) => ("604800", [0, 0, 1, 0, 0, 0, 0]),
            (Precision::Day, _) => ("86400", [0, 0, 1, 0, 0, 0, 0]),
            (Precision::Hour, _) => ("3600", [0, 0, 1, 0, 0, 0, 0]),
            (Precision::Minute, _) => ("60", [0, 0, 1, 0, 0, 0, 0]),
            (Precision::Second, _) => ("1", [0, 0, 1, 0, 0, 0, 0]),
            (Precision::Millisecond, _) => ("0.001", [0, 0, 1, 0, 0, 0, 0]),
        };
        return Some(Canon { factor: dec(factor), dims });
    }
    if unit.contains(['(', ')']) {
        return None;
    }
    let mut out = Canon { factor: Decimal::ONE, dims: [0; 7] };
    let mut divide = false;
    let mut start = 0;
    let bytes = unit.as_bytes();
    for i in 0..=bytes.len() {
        let at_sep = i == bytes.len() || bytes[i] == b'.' || bytes[i] == b'/';
        if !at_sep {
            continue;
        }
        let piece = &unit[start..i];
        if !(piece.is_empty() && i == 0 && bytes.get(i) == Some(&b'/')) {
            let c = term(piece)?;
            if divide {
                out.factor = out.factor.checked_div(c.factor)?;
                out.dims = std::array::from_fn(|k| out.dims[k] - c.dims[k]);
            } else {
                out.factor = out.factor.checked_mul(c.factor)?;
                out.dims = std::array::from_fn(|k| out.dims[k] + c.dims[k]);
            }
        }
        if i < bytes.len() {
            divide = bytes[i] == b'/';
        }
        start = i + 1;
    }
    Some(out)
}

/// Drops the last digits of a converted value, where division leaves rounding noise
/// (`60 * (1/60)` is `1.000…002`).
fn tidy(d: Decimal) -> Decimal {
    d.round_sf(20).unwrap_or(d)
}

fn unit_of(dims: &Dims) -> Option<String> {
    if dims[3] != 0 {
        return None;
    }
    let parts: Vec<String> = dims
        .iter()
        .zip(DIM_NAMES)
        .filter(|(e, _)| **e != 0)
        .map(|(e, n)| if *e == 1 { n.to_string() } else { format!("{n}{e}") })
        .collect();
    Some(if parts.is_empty() { "1".into() } else { parts.join(".") })
}

/// A UCUM unit reduced to base units: the factor that converts a value to them and the code of
/// the base units (`mg` → `0.001`, `g`; `mmol/L` → `1`, `mol.m-3`; `/min` → `0.0166…`, `s-1`).
/// `None` for units outside the subset this crate knows, for calendar keywords (not UCUM) and
/// for the empty unit.
pub fn ucum_canonical(unit: &str) -> Option<(Decimal, String)> {
    if unit.trim().is_empty() || is_calendar_keyword(unit) {
        return None;
    }
    let c = canon(unit)?;
    Some((c.factor, unit_of(&c.dims)?))
}

impl Quantity {
    pub fn new(value: Decimal, unit: impl Into<String>) -> Quantity {
        Quantity { value, unit: unit.into() }
    }

    /// The calendar unit for date arithmetic (`days`, `'d'`, `'wk'`, `'month'`), or `None` for
    /// units that are no calendar duration (UCUM `'a'` and `'mo'` are not: their length varies).
    pub(crate) fn calendar_unit(&self) -> Option<(Precision, i64)> {
        let u = self.unit.as_str();
        if let Some((s, _, p)) = CALENDAR.iter().find(|(s, pl, _)| *s == u || *pl == u) {
            return Some((*p, if *s == "week" { 7 } else { 1 }));
        }
        Some(match u {
            "wk" => (Precision::Day, 7),
            "d" => (Precision::Day, 1),
            "h" => (Precision::Hour, 1),
            "min" => (Precision::Minute, 1),
            "s" => (Precision::Second, 1),
            "ms" => (Precision::Millisecond, 1),
            _ => return None,
        })
    }

    /// The value in base units, with the dimensions; `None` for units this crate doesn't know.
    fn canonical(&self) -> Option<(Decimal, Dims)> {
        let c = canon(&self.unit)?;
        Some((self.value.checked_mul(c.factor)?, c.dims))
    }

    /// `other`'s value expressed in this quantity's unit, if the units are comparable.
    pub(crate) fn convert_other(&self, other: &Quantity) -> Option<Decimal> {
        if self.unit == other.unit {
            return Some(other.value);
        }
        let (a, b) = (canon(&self.unit)?, canon(&other.unit)?);
        if a.dims != b.dims {
            return None;
        }
        other.value.checked_mul(b.factor)?.checked_div(a.factor).map(tidy)
    }

    /// Ordering when the units are comparable.
    pub(crate) fn compare(&self, other: &Quantity) -> Option<Ordering> {
        if self.unit == other.unit {
            return Some(self.value.cmp(&other.value));
        }
        let ((a, da), (b, db)) = (self.canonical()?, other.canonical()?);
        (da == db).then(|| tidy(a).cmp(&tidy(b)))
    }

    /// `~`: comparable and equal once rounded to the precision of the less precise value.
    pub(crate) fn equivalent(&self, other: &Quantity) -> bool {
        let Some(b) = self.convert_other(other) else { return false };
        let scale = self.value.scale().min(other.value.scale());
        self.value.round_dp(scale) == b.round_dp(scale)
    }

    pub(crate) fn add(&self, other: &Quantity, negate: bool) -> Option<Quantity> {
        let b = self.convert_other(other)?;
        let value = if negate { self.value.checked_sub(b)? } else { self.value.checked_add(b)? };
        Some(Quantity { value, unit: self.unit.clone() })
    }

    pub(crate) fn multiply(&self, other: &Quantity, divide: bool) -> Option<Quantity> {
        if other.unit == "1" || (divide && self.unit == other.unit) {
            let value = if divide {
                self.value.checked_div(other.value)?
            } else {
                self.value.checked_mul(other.value)?
            };
            let unit = if divide && self.unit == other.unit { "1" } else { &self.unit };
            return Some(Quantity::new(value, unit));
        }
        let ((a, da), (b, db)) = (self.canonical()?, other.canonical()?);
        let (value, dims) = if divide {
            (a.checked_div(b)?, std::array::from_fn(|k| da[k] - db[k]))
        } else {
            (a.checked_mul(b)?, std::array::from_fn(|k| da[k] + db[k]))
        };
        Some(Quantity { value: value.normalize(), unit: unit_of(&dims)? })
    }

    /// Parses `'1 day'`, `'4.5 \'mg\''` or `'3'` (unit `'1'`), as `toQuantity()` does.
    pub(crate) fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let (num, rest) = s.split_once(' ').map_or((s, ""), |(n, r)| (n, r.trim()));
        let digits = num.strip_prefix(['+', '-']).unwrap_or(num);
        let valid = !digits.is_empty()
            && !digits.starts_with('.')
            && !digits.ends_with('.')
            && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && digits.matches('.').count() <= 1;
        if !valid {
            return None;
        }
        let value = Decimal::from_str(num).ok()?;
        let unit = if rest.is_empty() {
            "1".to_string()
        } else if let Some(u) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            u.to_string()
        } else if is_calendar_keyword(rest) {
            rest.to_string()
        } else {
            return None;
        };
        Some(Quantity { value, unit })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_calendar_keyword(&self.unit) {
            write!(f, "{} {}", self.value, self.unit)
        } else {
            write!(f, "{} '{}'", self.value, self.unit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: &str, u: &str) -> Quantity {
        Quantity::new(dec(v), u)
    }

    #[test]
    fn conversions() {
        assert_eq!(q("4.0", "g").compare(&q("4000", "mg")), Some(Ordering::Equal));
        assert_eq!(q("7", "days").compare(&q("1", "week")), Some(Ordering::Equal));
        assert_eq!(q("1", "wk").compare(&q("7", "d")), Some(Ordering::Equal));
        assert_eq!(q("1", "a").compare(&q("1", "year")), None);
        assert_eq!(q("185", "[lb_av]").compare(&q("185", "kg")), Some(Ordering::Less));
        assert!(q("4", "g").equivalent(&q("4040", "mg")));
        let m2 = q("2.0", "cm").multiply(&q("2.0", "m"), false).unwrap();
        assert_eq!(m2.compare(&q("0.040", "m2")), Some(Ordering::Equal));
        let gm = q("4.0", "g").multiply(&q("2.0", "m"), true).unwrap();
        assert_eq!(gm.compare(&q("2", "g/m")), Some(Ordering::Equal));
        assert_eq!(q("1", "mm[Hg]").compare(&q("133.322", "Pa")), Some(Ordering::Equal));
        assert_eq!(q("60", "{beats}/min").compare(&q("1", "/s")), Some(Ordering::Equal));
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(Quantity::parse("1 day").unwrap().to_string(), "1 day");
        assert_eq!(Quantity::parse("1 'wk'").unwrap().to_string(), "1 'wk'");
        assert!(Quantity::parse("1 wk").is_none());
        assert!(Quantity::parse("1.a").is_none());
        assert_eq!(Quantity::parse("1.0").unwrap().to_string(), "1.0 '1'");
    }
}
