//! Measured values: growth, vital signs and laboratory results for a person on a date, from
//! population medians shifted by the person's build and conditions, plus measurement noise.
//!
//! The medians are rounded from public growth charts and adult reference intervals; they make
//! plausible charts, not clinical truth.

use crate::codes::{self, Analyte};
use crate::json::Dec;
use crate::plan::Person;
use crate::rng::Rng;
use crate::time::Date;

/// Median height (cm) by age in months, boys then girls; linear between points.
const HEIGHT_MEDIAN: [(i32, f64, f64); 16] = [
    (0, 50.0, 49.2),
    (3, 61.4, 59.8),
    (6, 67.6, 65.7),
    (9, 72.0, 70.1),
    (12, 75.7, 74.0),
    (18, 82.3, 80.7),
    (24, 87.1, 85.7),
    (36, 96.1, 95.1),
    (48, 103.3, 102.7),
    (72, 116.0, 115.5),
    (96, 127.3, 127.0),
    (120, 138.4, 138.6),
    (144, 149.1, 151.2),
    (168, 163.2, 159.8),
    (192, 173.4, 162.5),
    (216, 176.1, 163.1),
];

/// Median body mass index by age in months (both sexes; the curves differ little).
const BMI_MEDIAN: [(i32, f64); 12] = [
    (0, 13.4),
    (6, 17.3),
    (12, 17.2),
    (24, 16.4),
    (48, 15.6),
    (72, 15.4),
    (96, 15.9),
    (120, 16.9),
    (144, 18.2),
    (168, 19.5),
    (192, 20.7),
    (216, 21.6),
];

fn interpolate(points: &[(i32, f64)], x: i32) -> f64 {
    let Some(first) = points.first() else { return 0.0 };
    if x <= first.0 {
        return first.1;
    }
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        if x <= x1 {
            return y0 + (y1 - y0) * f64::from(x - x0) / f64::from(x1 - x0);
        }
    }
    points.last().map_or(0.0, |p| p.1)
}

/// Height in cm on `date`, following the person's own growth percentile.
pub(crate) fn height(person: &Person, date: Date) -> f64 {
    let months = person.birth.months_until(date).max(0);
    let column: Vec<(i32, f64)> = HEIGHT_MEDIAN
        .iter()
        .map(|&(m, boys, girls)| (m, if person.female { girls } else { boys }))
        .collect();
    let adult_median = column.last().map_or(170.0, |p| p.1);
    interpolate(&column, months) * person.height_cm / adult_median
}

/// Body mass index on `date`: the child curve scaled toward the person's adult build, and
/// for adults a slow gain of 0.15 a year toward the value at the reference date.
pub(crate) fn bmi(person: &Person, date: Date, end: Date) -> f64 {
    let months = person.birth.months_until(date).max(0);
    if months < 216 {
        let build = 1.0 + (person.bmi / 25.0 - 1.0) * f64::from(months) / 216.0 * 0.8;
        interpolate(&BMI_MEDIAN, months) * build
    } else {
        let years_before_end = f64::from(end.0 - date.0) / 365.25;
        (person.bmi - 0.15 * years_before_end).max(17.0)
    }
}

/// Weight in kg on `date`.
pub(crate) fn weight(person: &Person, date: Date, end: Date) -> f64 {
    let m = height(person, date) / 100.0;
    bmi(person, date, end) * m * m
}

/// Systolic and diastolic pressure, mm[Hg].
pub(crate) fn blood_pressure(person: &Person, date: Date, end: Date, rng: &mut Rng) -> (Dec, Dec) {
    let age = f64::from(person.age_at(date));
    let (mut systolic, mut diastolic) = if age < 18.0 {
        (88.0 + 1.8 * age, 52.0 + 1.1 * age)
    } else {
        (110.0 + 0.45 * (age - 18.0), 72.0 + 0.1 * (age - 18.0))
    };
    systolic += (bmi(person, date, end) - 24.0) * 0.5;
    if person.has(codes::HYPERTENSION, date) {
        systolic += 14.0;
        diastolic += 8.0;
    }
    let systolic = rng.normal(systolic, 7.0).round();
    let diastolic = rng.normal(diastolic, 5.0).round().min(systolic - 20.0);
    (Dec::round(systolic, 0), Dec::round(diastolic, 0))
}

pub(crate) fn heart_rate(person: &Person, date: Date, rng: &mut Rng) -> Dec {
    let months = person.birth.months_until(date);
    let (mean, sd) = match months {
        ..12 => (130.0, 10.0),
        12..72 => (108.0, 9.0),
        72..156 => (88.0, 8.0),
        _ if person.has(codes::ATRIAL_FIBRILLATION, date) => (86.0, 14.0),
        _ => (72.0, 8.0),
    };
    Dec::round(rng.normal(mean, sd), 0)
}

pub(crate) fn respiratory_rate(person: &Person, date: Date, rng: &mut Rng) -> Dec {
    let months = person.birth.months_until(date);
    let (mean, sd) = match months {
        ..12 => (36.0, 4.0),
        12..72 => (25.0, 2.5),
        72..156 => (20.0, 2.0),
        _ if person.has(codes::COPD, date) => (19.0, 2.0),
        _ => (15.0, 1.5),
    };
    Dec::round(rng.normal(mean, sd), 0)
}

pub(crate) fn temperature(fever: bool, rng: &mut Rng) -> Dec {
    if fever { Dec::round(rng.normal(38.5, 0.35), 1) } else { Dec::round(rng.normal(36.8, 0.2), 1) }
}

/// A laboratory value, shifted by the conditions that move it.
pub(crate) fn lab_value(analyte: &Analyte, person: &Person, date: Date, rng: &mut Rng) -> Dec {
    let has = |kind| person.has(kind, date);
    let age = f64::from(person.age_at(date));
    let (mut mean, mut sd) = (analyte.mean, analyte.sd);
    match analyte.code.code {
        codes::GLUCOSE if has(codes::DIABETES) => (mean, sd) = (148.0, 28.0),
        codes::GLUCOSE if has(codes::PREDIABETES) => (mean, sd) = (109.0, 6.0),
        codes::HBA1C if has(codes::DIABETES) => (mean, sd) = (7.4, 0.7),
        codes::HBA1C if has(codes::PREDIABETES) => (mean, sd) = (6.0, 0.15),
        codes::CHOLESTEROL if has(codes::HYPERLIPIDEMIA) => mean += 45.0,
        codes::LDL if has(codes::HYPERLIPIDEMIA) => mean += 40.0,
        codes::CREATININE if has(codes::CKD) => (mean, sd) = (1.6, 0.2),
        codes::EGFR if has(codes::CKD) => (mean, sd) = (46.0, 6.0),
        codes::EGFR if age > 40.0 => mean -= 0.7 * (age - 40.0),
        codes::HEMOGLOBIN if has(codes::ANEMIA) => (mean, sd) = (10.4, 0.6),
        codes::HEMATOCRIT if has(codes::ANEMIA) => (mean, sd) = (32.0, 1.8),
        codes::HEMOGLOBIN if person.female => mean -= 1.2,
        codes::HEMATOCRIT if person.female => mean -= 3.0,
        _ => {}
    }
    let floor = 1.0 / crate::json::pow10(analyte.scale);
    Dec::round(rng.normal(mean, sd).max(floor), analyte.scale)
}

/// `H`, `L` or `N` against the analyte's reference range.
pub(crate) fn interpretation(analyte: &Analyte, value: Dec) -> (&'static str, &'static str) {
    let v = value.value();
    if analyte.high.is_some_and(|high| v > high) {
        ("H", "High")
    } else if analyte.low.is_some_and(|low| v < low) {
        ("L", "Low")
    } else {
        ("N", "Normal")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_growth_curves() {
        let points = [(0, 10.0), (10, 20.0)];
        assert_eq!(interpolate(&points, -5), 10.0);
        assert_eq!(interpolate(&points, 5), 15.0);
        assert_eq!(interpolate(&points, 50), 20.0);
    }
}
