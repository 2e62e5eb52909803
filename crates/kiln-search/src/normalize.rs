//! Value normalisation shared by extraction and query parsing, so that both sides of a
//! comparison are computed by the same code: string folding, date ranges, number ranges.

use crate::index::{DateRange, NumberRange};
use chrono::{Months, NaiveDate, NaiveTime};
use kiln_fhirpath::{DateTime, Precision};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use std::str::FromStr;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// The search form of a string: Unicode canonical decomposition (NFD), combining marks
/// removed, then lower-cased (`"Ärzte-Straße"` → `"arzte-straße"`).
///
/// We use the `unicode-normalization` crate (already in the dependency tree) rather than a
/// hand-written table, so every script with decomposable accents folds, not only Latin.
/// Letters without a decomposition (`ß`, `ø`, `æ`) are kept as they are. Whitespace is kept
/// as written.
pub fn normalize_string(s: &str) -> String {
    s.nfd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect()
}

/// The closed millisecond range a FHIR `date`, `dateTime` or `instant` (or a search date)
/// covers, from its precision: `2020` → the whole year, `2020-03-04T10:00Z` → that minute.
///
/// A value with a time but no timezone, and every plain date, is taken as UTC (FHIR leaves
/// the zone of a date unspecified; using UTC keeps index rows independent of the server's
/// zone). `None` for text that is not a valid date/dateTime.
pub fn date_range(text: &str) -> Option<DateRange> {
    let dt = DateTime::parse(text.trim())?;
    let p = dt.0;
    let date = NaiveDate::from_ymd_opt(p.year, p.month, p.day)?;
    let time = NaiveTime::from_hms_milli_opt(p.hour, p.minute, p.second, p.millisecond)?;
    let start = date.and_time(time).and_utc().timestamp_millis()
        - i64::from(p.offset.unwrap_or(0)) * 60_000;
    let next = |months: u32| -> Option<i64> {
        let first = date.checked_add_months(Months::new(months))?;
        Some(first.and_time(NaiveTime::MIN).and_utc().timestamp_millis())
    };
    let end = match p.precision {
        Precision::Year => next(12)?,
        Precision::Month => next(1)?,
        Precision::Day => start + 86_400_000,
        Precision::Hour => start + 3_600_000,
        Precision::Minute => start + 60_000,
        Precision::Second => start + 1_000,
        Precision::Millisecond => start + 1,
    };
    Some(DateRange { lo: start, hi: end - 1 })
}

/// A decimal written as text (`100`, `1.50`, `1e2`) as a closed range of its implicit
/// precision: half a unit of the last written digit either side (`100` → `[99.5, 100.5]`,
/// `1.50` → `[1.495, 1.505]`, `1e2` → `[50, 150]`). The bounds are computed exactly in
/// decimal, then rounded to the nearest `f64`. `None` for text that is not a number.
pub fn number_range(text: &str) -> Option<NumberRange> {
    let text = text.trim();
    let (value, half) = decimal_with_half_unit(text)?;
    // Normalised before conversion, so equal decimals always give equal floats.
    let lo = (value - half).normalize().to_f64()?;
    let hi = (value + half).normalize().to_f64()?;
    let exact = value.normalize().to_f64()?;
    Some(NumberRange { lo, hi, min: exact, max: exact, text: text.to_string() })
}

/// The range of the number `text` converted by `factor` (a unit conversion), computed in
/// decimal: `5` mg at `0.001` gives `[0.0045, 0.0055]` g, the very floats `0.005` g gives.
pub(crate) fn scaled_number_range(text: &str, factor: Decimal) -> Option<NumberRange> {
    let (value, half) = decimal_with_half_unit(text.trim())?;
    let conv = |d: Decimal| d.checked_mul(factor).map(|d| d.normalize());
    let (lo, hi, exact) = (conv(value - half)?, conv(value + half)?, conv(value)?);
    let exact_f = exact.to_f64()?;
    Some(NumberRange {
        lo: lo.to_f64()?,
        hi: hi.to_f64()?,
        min: exact_f,
        max: exact_f,
        text: exact.to_string(),
    })
}

/// The value and half a unit of its last significant digit.
fn decimal_with_half_unit(text: &str) -> Option<(Decimal, Decimal)> {
    let valid = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !valid {
        return None;
    }
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let value = if exp == 0 {
        Decimal::from_str(mantissa).ok()?
    } else {
        Decimal::from_scientific(text).ok()?
    };
    let scale = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32) - exp;
    let half = if scale >= 0 {
        Decimal::try_from_i128_with_scale(5, u32::try_from(scale + 1).ok()?).ok()?
    } else {
        let unit = 10i128.checked_pow(u32::try_from(-scale).ok()?)?;
        Decimal::try_from_i128_with_scale(unit * 5, 1).ok()?
    };
    Some((value, half))
}

/// The number of a Range from its `low`/`high`: an absent bound is infinite. Each present
/// bound keeps its own implicit precision (the low end gives `lo` and `min`, the high end
/// `hi` and `max`).
pub fn span(low: Option<&NumberRange>, high: Option<&NumberRange>) -> Option<NumberRange> {
    if low.is_none() && high.is_none() {
        return None;
    }
    let lo = low.map_or(f64::NEG_INFINITY, |n| n.lo);
    let hi = high.map_or(f64::INFINITY, |n| n.hi);
    let min = low.map_or(f64::NEG_INFINITY, |n| n.min);
    let max = high.map_or(f64::INFINITY, |n| n.max);
    let text = format!(
        "{}..{}",
        low.map_or("", |n| n.text.as_str()),
        high.map_or("", |n| n.text.as_str())
    );
    Some(NumberRange { lo, hi, min, max, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn folds_case_and_accents() {
        assert_eq!(normalize_string("Ärzte Çédric ŁÓDŹ"), "arzte cedric łodz");
        assert_eq!(normalize_string("Straße"), "straße");
        assert_eq!(normalize_string(""), "");
    }

    #[test]
    fn date_ranges_follow_precision() {
        let y = date_range("2020").unwrap();
        assert_eq!((y.lo, y.hi), (ms("2020-01-01T00:00:00Z"), ms("2021-01-01T00:00:00Z") - 1));
        let m = date_range("2020-02").unwrap();
        assert_eq!((m.lo, m.hi), (ms("2020-02-01T00:00:00Z"), ms("2020-03-01T00:00:00Z") - 1));
        let d = date_range("2020-02-29").unwrap();
        assert_eq!(d.hi - d.lo, 86_400_000 - 1);
        let t = date_range("2020-02-29T10:00:00+02:00").unwrap();
        assert_eq!((t.lo, t.hi), (ms("2020-02-29T08:00:00Z"), ms("2020-02-29T08:00:01Z") - 1));
        let i = date_range("2020-02-29T10:00:00.123Z").unwrap();
        assert_eq!(i.lo, i.hi);
        let minute = date_range("2020-02-29T10:00").unwrap();
        assert_eq!(minute.hi - minute.lo, 59_999);
        assert!(date_range("2020-13").is_none());
        assert!(date_range("yesterday").is_none());
    }

    #[test]
    fn number_ranges_follow_precision() {
        let n = number_range("100").unwrap();
        assert_eq!((n.lo, n.hi), (99.5, 100.5));
        let n = number_range("1.50").unwrap();
        assert_eq!((n.lo, n.hi), (1.495, 1.505));
        let n = number_range("1e2").unwrap();
        assert_eq!((n.lo, n.hi), (50.0, 150.0));
        let n = number_range("-0.5").unwrap();
        assert_eq!((n.lo, n.hi), (-0.55, -0.45));
        assert!(number_range("abc").is_none());
        assert!(number_range("").is_none());
        assert!(number_range("1.2.3").is_none());
    }
}
