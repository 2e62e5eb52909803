//! Partial dates, date-times and times with a precision (`@2015`, `@2015-02-04T14:30`,
//! `@T14`), their comparison (values of different precision compare as unknown once the
//! common components agree) and calendar arithmetic (`@1973-12-25 + 7 days`).

use chrono::{Datelike, Duration, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use std::cmp::Ordering;
use std::fmt;

/// How much of a date/time is known. Seconds and milliseconds count as one precision when
/// comparing (`@T10:30:00 = @T10:30:00.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

impl Precision {
    /// Index of the last compared component (second and millisecond share one).
    fn rank(self) -> usize {
        (self as usize).min(5)
    }
}

/// Components shared by the three temporal types; unknown components are zero (or one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Parts {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millisecond: u32,
    pub precision: Precision,
    /// Offset from UTC in minutes, when the value says.
    pub offset: Option<i32>,
}

/// A FHIRPath `Date` (year, month or day precision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Date(pub Parts);

/// A FHIRPath `DateTime` (any precision, optional time-zone offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateTime(pub Parts);

/// A FHIRPath `Time` (hour to millisecond precision, no offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Time(pub Parts);

const EMPTY: Parts = Parts {
    year: 1,
    month: 1,
    day: 1,
    hour: 0,
    minute: 0,
    second: 0,
    millisecond: 0,
    precision: Precision::Year,
    offset: None,
};

fn num(s: &str, len: usize) -> Option<u32> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let next = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    NaiveDate::from_ymd_opt(next.0, next.1, 1).and_then(|d| d.pred_opt()).map_or(28, |d| d.day())
}

/// `YYYY(-MM(-DD)?)?` into `p`.
fn parse_date(s: &str, p: &mut Parts) -> Option<()> {
    let mut it = s.split('-');
    p.year = num(it.next()?, 4)? as i32;
    p.precision = Precision::Year;
    if let Some(m) = it.next() {
        p.month = num(m, 2).filter(|m| (1..=12).contains(m))?;
        p.precision = Precision::Month;
        if let Some(d) = it.next() {
            p.day = num(d, 2).filter(|d| *d >= 1 && *d <= days_in_month(p.year, p.month))?;
            p.precision = Precision::Day;
        }
    }
    (it.next().is_none() && p.year >= 1).then_some(())
}

/// `HH(:MM(:SS(.fff)?)?)?` into `p`.
fn parse_time(s: &str, p: &mut Parts) -> Option<()> {
    let mut it = s.split(':');
    p.hour = num(it.next()?, 2).filter(|h| *h < 24)?;
    p.precision = Precision::Hour;
    if let Some(m) = it.next() {
        p.minute = num(m, 2).filter(|m| *m < 60)?;
        p.precision = Precision::Minute;
        if let Some(sec) = it.next() {
            let (whole, frac) = sec.split_once('.').map_or((sec, None), |(w, f)| (w, Some(f)));
            p.second = num(whole, 2).filter(|s| *s < 60)?;
            p.precision = Precision::Second;
            if let Some(frac) = frac {
                if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let ms: String = frac.chars().chain("00".chars()).take(3).collect();
                p.millisecond = ms.parse().ok()?;
                p.precision = Precision::Millisecond;
            }
        }
    }
    it.next().is_none().then_some(())
}

fn parse_offset(s: &str) -> Option<i32> {
    if s == "Z" {
        return Some(0);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = s[1..].split_once(':')?;
    let (h, m) = (num(h, 2)?, num(m, 2)?);
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m) as i32)
}

impl Date {
    /// Parses `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Date> {
        let mut p = EMPTY;
        parse_date(s, &mut p)?;
        Some(Date(p))
    }

    pub fn precision(&self) -> Precision {
        self.0.precision
    }

    pub fn to_datetime(self) -> DateTime {
        DateTime(self.0)
    }
}

impl DateTime {
    /// Parses a FHIR `dateTime`/`instant` or FHIRPath literal body: a date, optionally
    /// followed by `T`, a partial time and an offset (`Z`, `+10:00`).
    pub fn parse(s: &str) -> Option<DateTime> {
        let mut p = EMPTY;
        let Some((date, rest)) = s.split_once('T') else {
            parse_date(s, &mut p)?;
            return Some(DateTime(p));
        };
        parse_date(date, &mut p)?;
        if rest.is_empty() {
            return Some(DateTime(p));
        }
        let split = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
        parse_time(&rest[..split], &mut p)?;
        if split < rest.len() {
            p.offset = Some(parse_offset(&rest[split..])?);
        }
        (p.precision > Precision::Day || p.offset.is_none()).then_some(DateTime(p))
    }

    pub fn precision(&self) -> Precision {
        self.0.precision
    }

    /// A date-time from a chrono value, at millisecond precision with its offset.
    pub fn from_chrono(now: &chrono::DateTime<FixedOffset>) -> DateTime {
        DateTime(Parts {
            year: now.year(),
            month: now.month(),
            day: now.day(),
            hour: now.hour(),
            minute: now.minute(),
            second: now.second(),
            millisecond: now.timestamp_subsec_millis().min(999),
            precision: Precision::Millisecond,
            offset: Some(now.offset().local_minus_utc() / 60),
        })
    }

    /// The date part (day precision at most).
    pub fn date(self) -> Date {
        Date(Parts { precision: self.0.precision.min(Precision::Day), offset: None, ..self.0 })
    }

    /// The time part (for `timeOfDay()`).
    pub fn time(self) -> Time {
        Time(Parts { year: 1, month: 1, day: 1, offset: None, ..self.0 })
    }
}

impl Time {
    /// Parses `HH`, `HH:MM`, `HH:MM:SS` or `HH:MM:SS.fff`.
    pub fn parse(s: &str) -> Option<Time> {
        let mut p = EMPTY;
        parse_time(s, &mut p)?;
        Some(Time(p))
    }

    pub fn precision(&self) -> Precision {
        self.0.precision
    }
}

impl Parts {
    fn naive(&self) -> Option<NaiveDateTime> {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, self.day)?;
        let time =
            NaiveTime::from_hms_milli_opt(self.hour, self.minute, self.second, self.millisecond)?;
        Some(date.and_time(time))
    }

    fn with_naive(&self, n: NaiveDateTime) -> Parts {
        Parts {
            year: n.year(),
            month: n.month(),
            day: n.day(),
            hour: n.hour(),
            minute: n.minute(),
            second: n.second(),
            millisecond: n.and_utc().timestamp_subsec_millis().min(999),
            ..*self
        }
    }

    /// Shifted to UTC (a no-op without an offset or time).
    fn to_utc(self, offset: i32) -> Parts {
        if self.precision < Precision::Hour {
            return self;
        }
        match self.naive() {
            Some(n) => {
                Parts { offset: Some(0), ..self.with_naive(n - Duration::minutes(offset as i64)) }
            }
            None => self,
        }
    }

    fn components(&self) -> [i64; 6] {
        [
            self.year as i64,
            self.month as i64,
            self.day as i64,
            self.hour as i64,
            self.minute as i64,
            (self.second * 1000 + self.millisecond) as i64,
        ]
    }

    fn compare_fields(&self, other: &Parts) -> Option<Ordering> {
        let (a, b) = (self.components(), other.components());
        let (ra, rb) = (self.precision.rank(), other.precision.rank());
        for i in 0..=ra.min(rb) {
            if a[i] != b[i] {
                return Some(a[i].cmp(&b[i]));
            }
        }
        (ra == rb).then_some(Ordering::Equal)
    }

    /// Ordering, or `None` when the precisions leave it unknown. Offsets are honoured when
    /// both sides have one; a side without an offset may be in any zone (-12:00 to +14:00),
    /// and the answer is known only when it is the same for all of them.
    pub fn compare(&self, other: &Parts) -> Option<Ordering> {
        match (self.offset, other.offset) {
            (Some(a), Some(b)) => self.to_utc(a).compare_fields(&other.to_utc(b)),
            (Some(a), None) if other.precision >= Precision::Hour => {
                let me = self.to_utc(a);
                let east = me.compare_fields(&other.to_utc(14 * 60));
                let west = me.compare_fields(&other.to_utc(-12 * 60));
                if east == west { east } else { None }
            }
            (None, Some(_)) if self.precision >= Precision::Hour => {
                other.compare(self).map(Ordering::reverse)
            }
            _ => self.compare_fields(other),
        }
    }

    /// `~`: same precision and equal.
    pub fn equivalent(&self, other: &Parts) -> bool {
        self.precision.rank() == other.precision.rank()
            && self.compare(other) == Some(Ordering::Equal)
    }

    /// Adds `amount` of a calendar unit. Fractions are truncated, as are units finer than the
    /// value's precision (`@2014 + 400 days` adds one year).
    pub fn add(&self, amount: i64, unit: Precision, is_time: bool) -> Option<Parts> {
        let (mut amount, mut unit) = (amount, unit);
        // Convert to the value's own precision when the unit is finer.
        if unit > self.precision && !is_time {
            let seconds: i64 = match unit {
                Precision::Day => 86_400,
                Precision::Hour => 3_600,
                Precision::Minute => 60,
                Precision::Second => 1,
                Precision::Millisecond => 0,
                _ => 2_629_746,
            };
            let target_seconds: i64 = match self.precision {
                Precision::Year => 31_556_952,
                Precision::Month => 2_629_746,
                Precision::Day => 86_400,
                Precision::Hour => 3_600,
                Precision::Minute => 60,
                _ => 1,
            };
            amount = if unit == Precision::Millisecond {
                amount / 1000 / target_seconds
            } else {
                amount.checked_mul(seconds)? / target_seconds
            };
            unit = self.precision;
        }
        match unit {
            Precision::Year | Precision::Month => {
                if is_time {
                    return None;
                }
                let months = if unit == Precision::Year { amount.checked_mul(12)? } else { amount };
                let total = self.year as i64 * 12 + (self.month as i64 - 1) + months;
                let year = i32::try_from(total.div_euclid(12)).ok()?;
                let month = total.rem_euclid(12) as u32 + 1;
                if !(1..=9999).contains(&year) {
                    return None;
                }
                let day = self.day.min(days_in_month(year, month));
                Some(Parts { year, month, day, ..*self })
            }
            _ => {
                let ms: i64 = match unit {
                    Precision::Day => amount.checked_mul(86_400_000)?,
                    Precision::Hour => amount.checked_mul(3_600_000)?,
                    Precision::Minute => amount.checked_mul(60_000)?,
                    Precision::Second => amount.checked_mul(1_000)?,
                    _ => amount,
                };
                if is_time {
                    let day_ms = 86_400_000i64;
                    let now = self.components();
                    let t = now[3] * 3_600_000 + now[4] * 60_000 + now[5];
                    let t = (t + ms).rem_euclid(day_ms);
                    let (h, rest) = (t / 3_600_000, t % 3_600_000);
                    let (m, rest) = (rest / 60_000, rest % 60_000);
                    return Some(Parts {
                        hour: h as u32,
                        minute: m as u32,
                        second: (rest / 1000) as u32,
                        millisecond: (rest % 1000) as u32,
                        ..*self
                    });
                }
                let shifted = self.naive()?.checked_add_signed(Duration::try_milliseconds(ms)?)?;
                (1..=9999).contains(&shifted.year()).then(|| self.with_naive(shifted))
            }
        }
    }

    fn fmt_date(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.year)?;
        if self.precision >= Precision::Month {
            write!(f, "-{:02}", self.month)?;
        }
        if self.precision >= Precision::Day {
            write!(f, "-{:02}", self.day)?;
        }
        Ok(())
    }

    fn fmt_time(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.hour)?;
        if self.precision >= Precision::Minute {
            write!(f, ":{:02}", self.minute)?;
        }
        if self.precision >= Precision::Second {
            write!(f, ":{:02}", self.second)?;
        }
        if self.precision >= Precision::Millisecond {
            write!(f, ".{:03}", self.millisecond)?;
        }
        Ok(())
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_date(f)
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_date(f)?;
        if self.0.precision >= Precision::Hour {
            f.write_str("T")?;
            self.0.fmt_time(f)?;
            match self.0.offset {
                Some(0) => f.write_str("Z")?,
                Some(m) => {
                    let sign = if m < 0 { '-' } else { '+' };
                    write!(f, "{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60)?;
                }
                None => {}
            }
        }
        Ok(())
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_time(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> Parts {
        DateTime::parse(s).unwrap().0
    }

    #[test]
    fn parse_and_format() {
        assert_eq!(DateTime::parse("2015-02-04T14:34:28.123+10:00").unwrap().to_string(), {
            "2015-02-04T14:34:28.123+10:00"
        });
        assert_eq!(Date::parse("2015-02").unwrap().to_string(), "2015-02");
        assert!(Date::parse("2015-02-30").is_none());
        assert!(Date::parse("2015-13").is_none());
        assert_eq!(Time::parse("14:34").unwrap().to_string(), "14:34");
        assert!(Time::parse("24:00").is_none());
        assert_eq!(dt("2014-01-01T08").precision, Precision::Hour);
    }

    #[test]
    fn compare_with_precision_and_zones() {
        assert_eq!(dt("2012-04-15T15:30:31").compare(&dt("2012-04-15T15:30:31.0")), {
            Some(Ordering::Equal)
        });
        assert_eq!(dt("2018-03").compare(&dt("2018-03-01")), None);
        assert_eq!(
            dt("2017-11-05T01:30:00.0-04:00").compare(&dt("2017-11-05T01:15:00.0-05:00")),
            { Some(Ordering::Less) }
        );
        assert_eq!(dt("2012-04-15T15:00:00Z").compare(&dt("2012-04-15T10:00:00")), None);
        assert_eq!(dt("2026-01-01T10:00:00Z").compare(&dt("1974-12-25")), {
            Some(Ordering::Greater)
        });
    }

    #[test]
    fn arithmetic() {
        let d = Date::parse("1973-12-25").unwrap().0;
        assert_eq!(Date(d.add(7, Precision::Day, false).unwrap()).to_string(), "1974-01-01");
        assert_eq!(Date(d.add(1, Precision::Month, false).unwrap()).to_string(), "1974-01-25");
        let leap = Date::parse("2024-01-31").unwrap().0;
        assert_eq!(Date(leap.add(1, Precision::Month, false).unwrap()).to_string(), "2024-02-29");
        let t = Time::parse("23:30").unwrap().0;
        assert_eq!(Time(t.add(1, Precision::Hour, true).unwrap()).to_string(), "00:30");
    }
}
