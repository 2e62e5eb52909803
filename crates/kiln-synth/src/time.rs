//! Calendar dates and local date-times as plain integers, formatted for FHIR.
//!
//! No clock is read anywhere in the generator: every date is an offset from the reference date
//! the caller chooses. Conversions use the proleptic Gregorian calendar with the usual
//! era-of-400-years arithmetic (March-based years, so leap days fall at a year's end).

use std::io::Write as _;

/// A calendar date, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(pub i32);

/// A local wall-clock time, as seconds since 1970-01-01T00:00 of that local clock. It is
/// written with the UTC offset of the place it happens in (see [`DateTime::write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime(pub i64);

pub(crate) const DAY: i64 = 86_400;
pub(crate) const HOUR: i64 = 3_600;
pub(crate) const MINUTE: i64 = 60;

impl Date {
    /// The date of `year-month-day`, or `None` when that day does not exist.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<Date> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        let y = i64::from(if month <= 2 { year - 1 } else { year });
        let era = y.div_euclid(400);
        let year_of_era = y - era * 400;
        let m = i64::from(month);
        let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        Some(Date((era * 146_097 + day_of_era - 719_468) as i32))
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Date> {
        let mut parts = text.splitn(3, '-');
        let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return None;
        }
        Date::from_ymd(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
    }

    /// `(year, month, day)`.
    pub fn ymd(self) -> (i32, u32, u32) {
        let z = i64::from(self.0) + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (year_of_era + era * 400) as i32 + i32::from(month <= 2);
        (year, month, day)
    }

    pub fn add_days(self, days: i64) -> Date {
        Date(self.0 + days as i32)
    }

    /// Whole years from `self` (a birth date) to `on`.
    pub fn years_until(self, on: Date) -> i32 {
        let (by, bm, bd) = self.ymd();
        let (y, m, d) = on.ymd();
        y - by - i32::from((m, d) < (bm, bd))
    }

    /// Whole months from `self` to `on` (approximate at month ends, which is all a growth
    /// curve needs).
    pub fn months_until(self, on: Date) -> i32 {
        let (by, bm, bd) = self.ymd();
        let (y, m, d) = on.ymd();
        (y - by) * 12 + m as i32 - bm as i32 - i32::from(d < bd)
    }

    /// The same day `years` later (28 February for 29 February in a common year).
    pub fn add_years(self, years: i32) -> Date {
        let (y, m, d) = self.ymd();
        let y = y + years;
        Date::from_ymd(y, m, d.min(days_in_month(y, m))).unwrap_or(self)
    }

    pub fn at(self, seconds_of_day: i64) -> DateTime {
        DateTime(i64::from(self.0) * DAY + seconds_of_day)
    }

    /// `YYYY-MM-DD`.
    pub fn write(self, out: &mut Vec<u8>) {
        let (y, m, d) = self.ymd();
        let _ = write!(out, "{y:04}-{m:02}-{d:02}");
    }

    pub fn text(self) -> String {
        let mut out = Vec::with_capacity(10);
        self.write(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl DateTime {
    pub fn date(self) -> Date {
        Date(self.0.div_euclid(DAY) as i32)
    }

    pub fn plus(self, seconds: i64) -> DateTime {
        DateTime(self.0 + seconds)
    }

    /// `YYYY-MM-DDThh:mm:ss±hh:mm`, the local time with its offset from UTC in minutes.
    pub fn write(self, offset_minutes: i32, out: &mut Vec<u8>) {
        self.date().write(out);
        let s = self.0.rem_euclid(DAY);
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let off = offset_minutes.unsigned_abs();
        let _ = write!(
            out,
            "T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
            s / HOUR,
            s % HOUR / MINUTE,
            s % MINUTE,
            off / 60,
            off % 60
        );
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_calendar() {
        assert_eq!(Date::from_ymd(1970, 1, 1), Some(Date(0)));
        assert_eq!(Date::from_ymd(2000, 3, 1), Some(Date(11_017)));
        assert_eq!(Date::from_ymd(1969, 12, 31), Some(Date(-1)));
        assert_eq!(Date::from_ymd(2023, 2, 29), None);
        for days in -800_000..80_000 {
            let date = Date(days);
            let (y, m, d) = date.ymd();
            assert_eq!(Date::from_ymd(y, m, d), Some(date), "{y}-{m}-{d}");
        }
    }

    #[test]
    fn formats_for_fhir() {
        let date = Date::parse("2024-02-29").unwrap();
        assert_eq!(date.text(), "2024-02-29");
        let mut out = Vec::new();
        date.at(9 * HOUR + 5 * MINUTE + 7).write(-300, &mut out);
        assert_eq!(out, b"2024-02-29T09:05:07-05:00");
        assert_eq!(Date::parse("2024-2-29"), None);
    }

    #[test]
    fn counts_ages() {
        let birth = Date::parse("2000-02-29").unwrap();
        assert_eq!(birth.years_until(Date::parse("2001-02-28").unwrap()), 0);
        assert_eq!(birth.years_until(Date::parse("2001-03-01").unwrap()), 1);
        assert_eq!(birth.months_until(Date::parse("2000-05-01").unwrap()), 2);
        assert_eq!(birth.add_years(1).text(), "2001-02-28");
    }
}
