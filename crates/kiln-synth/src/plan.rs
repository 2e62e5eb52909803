//! The simulation: who a patient is (demographics, habits, body size, conditions with their
//! onsets, allergies) and which visits their last ten years hold, decided before anything is
//! written, so a resource can know what comes later (a prescription renewed at a later visit
//! is `completed`, the last one `active`).
//!
//! This is a small statistical model, not a disease simulator: prevalences by age band,
//! scheduled well visits and vaccines, follow-ups at a fixed rate per condition, and acute
//! illnesses drawn per quarter year.

use crate::codes::{self, ACUTE, CHRONIC, Code};
use crate::directory::{self, Directory};
use crate::people::{self, CITIES, City};
use crate::rng::Rng;
use crate::time::{Date, DateTime, HOUR, MINUTE};

/// Years of history before the reference date (as Synthea's default export).
pub(crate) const HISTORY_YEARS: i32 = 10;

pub(crate) const NEVER_SMOKED: usize = 0;

/// A condition on the problem list and when it began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Diagnosis {
    /// Index into [`CHRONIC`].
    pub kind: usize,
    pub onset: Date,
    /// When it ended, if before the reference date.
    pub resolved: Option<Date>,
}

impl Diagnosis {
    /// Whether the condition was present on `date`.
    pub(crate) fn active_on(&self, date: Date) -> bool {
        self.onset <= date && self.resolved.is_none_or(|end| date < end)
    }
}

#[derive(Debug)]
pub(crate) struct Person {
    pub female: bool,
    pub birth: Date,
    pub given: &'static str,
    pub middle: &'static str,
    pub family: &'static str,
    /// Index into [`people::RACES`].
    pub race: usize,
    pub hispanic: bool,
    pub language: Code,
    pub city: usize,
    pub line: String,
    pub moved_in: Date,
    pub phone: String,
    pub email: Option<String>,
    /// v3 MaritalStatus code and display, for adults.
    pub marital: Option<(&'static str, &'static str)>,
    pub mrn: String,
    pub ssn: String,
    /// Index into [`codes::SMOKING_ANSWERS`].
    pub smoking: usize,
    pub drinks_per_day: u32,
    /// Gets the seasonal influenza vaccine every autumn (else declines it at well visits).
    pub flu_vaccinated: bool,
    /// Height as an adult, cm.
    pub height_cm: f64,
    /// Body mass index at the reference date (adults) or as a young adult (children).
    pub bmi: f64,
    pub clinic: usize,
    pub hospital: usize,
    /// The primary care practitioner (index into the directory's clinicians).
    pub pcp: usize,
    pub conditions: Vec<Diagnosis>,
    /// Index into [`codes::ALLERGIES`] and onset.
    pub allergies: Vec<(usize, Date)>,
}

impl Person {
    pub(crate) fn age_at(&self, date: Date) -> i32 {
        self.birth.years_until(date)
    }

    pub(crate) fn city(&self) -> &'static City {
        &CITIES[self.city]
    }

    /// Whether the person had the condition of `CHRONIC[kind]` on `date`.
    pub(crate) fn has(&self, kind: usize, date: Date) -> bool {
        self.conditions.iter().any(|d| d.kind == kind && d.active_on(date))
    }

    pub(crate) fn full_name(&self) -> String {
        format!("{} {}", self.given, self.family)
    }
}

/// What a visit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VisitKind {
    Wellness,
    /// A new chronic condition (index into `Person::conditions`) is diagnosed.
    Diagnosis(usize),
    /// A scheduled follow-up of a condition (index into `Person::conditions`).
    FollowUp(usize),
    /// A short illness (index into [`ACUTE`]) at the clinic.
    Acute(usize),
    /// The same in the emergency room.
    Emergency(usize),
    /// A hospital stay following an emergency visit.
    Admission(usize),
    /// An implanted device (index into [`IMPLANTS`]) with the condition it treats.
    Implant(usize, usize),
    Vaccination(Code),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Visit {
    pub kind: VisitKind,
    pub start: DateTime,
    pub end: DateTime,
    /// Index into the directory's sites, and the clinician seen.
    pub site: usize,
    pub clinician: usize,
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub person: Person,
    pub visits: Vec<Visit>,
    pub window_start: Date,
    pub end: Date,
}

impl Plan {
    pub(crate) fn new(rng: &mut Rng, index: u64, directory: &Directory, end: Date) -> Plan {
        let person = person(rng, index, directory, end);
        let window_start = person.birth.max(end.add_years(-HISTORY_YEARS));
        let mut planner =
            Planner { rng, person: &person, directory, window_start, end, visits: Vec::new() };
        planner.wellness();
        planner.chronic();
        planner.acute();
        planner.implants();
        planner.vaccinations();
        let mut visits = planner.visits;
        visits.sort_by_key(|v| v.start);
        Plan { person, visits, window_start, end }
    }
}

fn person(rng: &mut Rng, index: u64, directory: &Directory, end: Date) -> Person {
    let band = rng.weighted(&people::AGE_BANDS) as i32;
    let age = band * 5 + rng.range(0, 4) as i32;
    let birth = end.add_years(-age).add_days(-rng.range(1, 364));
    let female = rng.chance(510);
    let race = rng.weighted(&people::RACES.map(|(_, w)| w));
    let hispanic = rng.chance(185);
    let given = match (female, hispanic) {
        (true, true) => *rng.pick(&people::HISPANIC_FEMALE_GIVEN),
        (false, true) => *rng.pick(&people::HISPANIC_MALE_GIVEN),
        (true, false) => *rng.pick(&people::FEMALE_GIVEN),
        (false, false) => *rng.pick(&people::MALE_GIVEN),
    };
    let middle =
        if female { *rng.pick(&people::FEMALE_GIVEN) } else { *rng.pick(&people::MALE_GIVEN) };
    let family = if hispanic {
        *rng.pick(&people::HISPANIC_FAMILY)
    } else if race == people::ASIAN && rng.chance(700) {
        *rng.pick(&people::ASIAN_FAMILY)
    } else {
        *rng.pick(&people::FAMILY)
    };
    let language = if hispanic && rng.chance(400) {
        people::SPANISH
    } else if race == people::ASIAN && rng.chance(300) {
        *rng.pick(&people::ASIAN_LANGUAGES)
    } else {
        people::ENGLISH
    };
    let city = rng.weighted(&CITIES.map(|c| c.weight));
    let line = format!("{} {}", rng.range(1, 9800), rng.pick(&people::STREETS));
    let moved_in = birth.max(end.add_days(-rng.range(200, 9000)));
    let phone = directory::phone(CITIES[city].area, rng);
    let email = (age >= 16 && rng.chance(750)).then(|| {
        format!(
            "{}.{}{}@example.com",
            directory::ascii_lower(given),
            directory::ascii_lower(family),
            rng.below(100)
        )
    });
    let marital = (age >= 18).then(|| {
        let weights = if age < 30 {
            [60, 35, 4, 1]
        } else if age < 65 {
            [20, 60, 17, 3]
        } else {
            [7, 55, 15, 23]
        };
        [("S", "Never Married"), ("M", "Married"), ("D", "Divorced"), ("W", "Widowed")]
            [rng.weighted(&weights)]
    });
    let smoking = if age < 13 {
        NEVER_SMOKED
    } else {
        rng.weighted(if age < 18 { &[950, 10, 25, 15] } else { &[560, 250, 50, 140] })
    };
    let drinks_per_day = if age < 18 { 0 } else { [0, 0, 1, 1, 1, 2, 2, 3][rng.below(8) as usize] };
    let flu_vaccinated = rng.chance(match age {
        0..=17 => 550,
        18..=64 => 450,
        _ => 700,
    });
    let height_cm = if female { rng.normal(163.0, 6.5) } else { rng.normal(176.0, 7.0) };
    let bmi = rng.normal(27.8, 4.8).clamp(17.5, 47.0);
    let clinic = directory.clinic(city);
    let hospital = directory.hospital(city);
    let pcp = directory.sites[clinic].clinicians.start
        + rng.below(directory.sites[clinic].clinicians.len() as u64) as usize;

    let mut person = Person {
        female,
        birth,
        given,
        middle,
        family,
        race,
        hispanic,
        language,
        city,
        line,
        moved_in,
        phone,
        email,
        marital,
        mrn: format!("{:08}", 10_000_000 + index),
        ssn: format!("999-{:02}-{:04}", rng.range(10, 99), rng.range(1000, 9999)),
        smoking,
        drinks_per_day,
        flu_vaccinated,
        height_cm,
        bmi,
        clinic,
        hospital,
        pcp,
        conditions: Vec::new(),
        allergies: Vec::new(),
    };
    person.conditions = conditions(rng, &person, age, end);
    person.allergies = allergies(rng, &person, end);
    person
}

/// The chronic conditions a person has by the reference date, with onsets biased toward
/// recent years (most are diagnosed in the decade before the prevalence is measured).
fn conditions(rng: &mut Rng, person: &Person, age: i32, end: Date) -> Vec<Diagnosis> {
    let band = match age {
        0..=17 => 0,
        18..=39 => 1,
        40..=64 => 2,
        _ => 3,
    };
    let smoker = person.smoking != NEVER_SMOKED;
    let obese = age >= 18 && person.bmi >= 30.0;
    let mut out: Vec<Diagnosis> = Vec::new();
    for (kind, chronic) in CHRONIC.iter().enumerate() {
        if age < chronic.min_age {
            continue;
        }
        let mut per_mille = chronic.prevalence[band];
        match kind {
            codes::OBESITY => per_mille = if obese { 1000 } else { 0 },
            codes::COPD | codes::CORONARY if smoker => per_mille *= 3,
            codes::DIABETES | codes::HYPERTENSION if obese => per_mille *= 2,
            codes::PREDIABETES if out.iter().any(|d| d.kind == codes::DIABETES) => per_mille = 0,
            codes::CKD
                if out.iter().any(|d| matches!(d.kind, codes::DIABETES | codes::HYPERTENSION)) =>
            {
                per_mille *= 2
            }
            _ => {}
        }
        if !rng.chance(per_mille.min(900)) {
            continue;
        }
        let u = rng.unit();
        let years_before = (f64::from(age - chronic.min_age) * u * u) as i32;
        let onset = person
            .birth
            .add_years(age - years_before)
            .add_days(-rng.range(0, 364))
            .max(person.birth.add_years(chronic.min_age))
            .min(end.add_days(-1));
        let resolved = rng
            .chance(chronic.remission)
            .then(|| onset.add_days(rng.range(365, 4 * 365)))
            .filter(|end_date| *end_date < end);
        out.push(Diagnosis { kind, onset, resolved });
    }
    out
}

fn allergies(rng: &mut Rng, person: &Person, end: Date) -> Vec<(usize, Date)> {
    let mut out = Vec::new();
    if rng.chance(220) {
        let n = if rng.chance(200) { 2 } else { 1 };
        for _ in 0..n {
            let kind = rng.below(codes::ALLERGIES.len() as u64) as usize;
            if out.iter().any(|(k, _)| *k == kind) {
                continue;
            }
            let span = i64::from(person.birth.0.abs_diff(end.0).max(1));
            let onset = person.birth.add_days(rng.range(span / 20, span - 1).max(0));
            out.push((kind, onset));
        }
    }
    out
}

/// Builds the visit list for one person.
struct Planner<'a> {
    rng: &'a mut Rng,
    person: &'a Person,
    directory: &'a Directory,
    window_start: Date,
    end: Date,
    visits: Vec<Visit>,
}

/// Ages in months of the well-child visits before the yearly ones from age three.
const WELL_CHILD_MONTHS: [i32; 11] = [0, 1, 2, 4, 6, 9, 12, 15, 18, 24, 30];

impl Planner<'_> {
    fn in_window(&self, date: Date) -> bool {
        date >= self.window_start && date < self.end
    }

    /// A clinic visit on `date` during office hours.
    fn clinic_visit(&mut self, kind: VisitKind, date: Date) {
        let start = date.at(8 * HOUR + 15 * MINUTE * self.rng.range(0, 33));
        let minutes = self.rng.range(15, 45);
        let site = self.person.clinic;
        let clinician =
            if self.rng.chance(800) { self.person.pcp } else { self.clinician_at(site) };
        self.visits.push(Visit { kind, start, end: start.plus(minutes * MINUTE), site, clinician });
    }

    fn hospital_visit(&mut self, kind: VisitKind, start: DateTime, end: DateTime) {
        let site = self.person.hospital;
        let clinician = self.clinician_at(site);
        self.visits.push(Visit { kind, start, end, site, clinician });
    }

    fn clinician_at(&mut self, site: usize) -> usize {
        let range = self.directory.sites[site].clinicians.clone();
        range.start + self.rng.below(range.len() as u64) as usize
    }

    fn wellness(&mut self) {
        let birth = self.person.birth;
        // Childhood: the well-child schedule, then yearly until 18.
        let child_visits = WELL_CHILD_MONTHS.iter().copied().chain((3..18).map(|y| y * 12));
        for months in child_visits {
            let date = if months == 0 {
                birth.add_days(self.rng.range(3, 5))
            } else {
                birth.add_days(i64::from(months) * 3044 / 100 + self.rng.range(-7, 14))
            };
            if self.in_window(date) {
                self.clinic_visit(VisitKind::Wellness, date);
            }
        }
        // Adults: around each birthday, not every year.
        for age in 18..130 {
            let date = birth.add_years(age).add_days(self.rng.range(0, 60));
            if date >= self.end {
                break;
            }
            let attends = match age {
                18..=39 => 650,
                40..=64 => 800,
                _ => 900,
            };
            if self.in_window(date) && self.rng.chance(attends) {
                self.clinic_visit(VisitKind::Wellness, date);
            }
        }
    }

    fn chronic(&mut self) {
        for (i, diagnosis) in self.person.conditions.iter().enumerate() {
            if self.in_window(diagnosis.onset) {
                self.clinic_visit(VisitKind::Diagnosis(i), diagnosis.onset);
            }
            let per_year = CHRONIC[diagnosis.kind].followups_per_year;
            if per_year == 0 {
                continue;
            }
            let interval = 365 / i64::from(per_year);
            let mut date = diagnosis.onset.max(self.window_start);
            let last = diagnosis.resolved.unwrap_or(self.end).min(self.end);
            loop {
                date = date.add_days(interval + self.rng.range(-interval / 6, interval / 6));
                if date >= last {
                    break;
                }
                self.clinic_visit(VisitKind::FollowUp(i), date);
            }
        }
    }

    fn acute(&mut self) {
        let mut slot = self.window_start;
        while slot < self.end {
            let age = self.person.age_at(slot);
            let per_year_percent = match age {
                0..=4 => 200,
                5..=17 => 100,
                18..=64 => 60,
                _ => 90,
            };
            if self.rng.chance(per_year_percent * 10 / 4) {
                let date = slot.add_days(self.rng.range(0, 90));
                if date < self.end.add_days(-7) {
                    self.illness(date, age);
                }
            }
            slot = slot.add_days(91);
        }
    }

    fn illness(&mut self, date: Date, age: i32) {
        let child = usize::from(age >= 18);
        let weights: Vec<u32> = ACUTE
            .iter()
            .map(|a| {
                let allowed = a.since.and_then(Date::parse).is_none_or(|since| date >= since);
                if allowed { a.weight[child] } else { 0 }
            })
            .collect();
        let kind = self.rng.weighted(&weights);
        let to_emergency = match age {
            0..=17 => 60,
            18..=64 => 150,
            _ => 350,
        };
        if !ACUTE[kind].severe || !self.rng.chance(to_emergency) {
            self.clinic_visit(VisitKind::Acute(kind), date);
            return;
        }
        let start = date.at(self.rng.range(0, 23) * HOUR + self.rng.range(0, 59) * MINUTE);
        let end = start.plus(self.rng.range(2 * 60, 6 * 60) * MINUTE);
        self.hospital_visit(VisitKind::Emergency(kind), start, end);
        if self.rng.chance(if age >= 65 { 500 } else { 300 }) {
            let admitted = end.plus(self.rng.range(20, 90) * MINUTE);
            let discharged =
                (admitted.date().add_days(self.rng.range(2, 5))).at(self.rng.range(10, 16) * HOUR);
            if discharged.date() < self.end {
                self.hospital_visit(VisitKind::Admission(kind), admitted, discharged);
            }
        }
    }

    fn implants(&mut self) {
        for (i, diagnosis) in self.person.conditions.iter().enumerate() {
            let options: &[(usize, u32)] = match diagnosis.kind {
                codes::CORONARY => &[(codes::STENT, 350), (codes::DEFIBRILLATOR, 50)],
                codes::ATRIAL_FIBRILLATION => &[(codes::PACEMAKER, 80)],
                _ => &[],
            };
            for &(implant, per_mille) in options {
                if !self.rng.chance(per_mille) {
                    continue;
                }
                let first = diagnosis.onset.max(self.window_start).add_days(7);
                let last = self.end.add_days(-14);
                if first >= last {
                    continue;
                }
                let date = first.add_days(self.rng.range(0, i64::from(last.0 - first.0)));
                let start = date.at(self.rng.range(7, 11) * HOUR);
                let end = date.add_days(self.rng.range(1, 2)).at(self.rng.range(10, 15) * HOUR);
                self.hospital_visit(VisitKind::Implant(implant, i), start, end);
            }
        }
    }

    /// Seasonal influenza and COVID-19 vaccination visits (childhood and adult schedule doses
    /// are given at well visits).
    fn vaccinations(&mut self) {
        let age_now = self.person.age_at(self.end);
        if self.person.flu_vaccinated {
            let (first_year, _, _) = self.window_start.ymd();
            let (last_year, _, _) = self.end.ymd();
            for year in first_year..=last_year {
                let Some(season) = Date::from_ymd(year, 9, 15) else { continue };
                let date = season.add_days(self.rng.range(0, 75));
                if self.in_window(date) && self.person.birth.months_until(date) >= 6 {
                    self.clinic_visit(VisitKind::Vaccination(codes::FLU), date);
                }
            }
        }
        let Some(rollout) = Date::from_ymd(2021, 4, 1) else { return };
        if self.person.age_at(rollout) >= 12
            && self.rng.chance(if age_now >= 18 { 650 } else { 350 })
        {
            let first = rollout.add_days(self.rng.range(0, 90));
            for date in [first, first.add_days(21)] {
                if self.in_window(date) {
                    self.clinic_visit(VisitKind::Vaccination(codes::COVID_VACCINE), date);
                }
            }
            let (last_year, _, _) = self.end.ymd();
            for year in 2022..=last_year {
                let Some(season) = Date::from_ymd(year, 9, 20) else { continue };
                let date = season.add_days(self.rng.range(0, 60));
                if self.in_window(date) && self.rng.chance(450) {
                    self.clinic_visit(VisitKind::Vaccination(codes::COVID_VACCINE), date);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    #[test]
    fn visits_are_ordered_and_inside_the_window() {
        let directory = Directory::new(1);
        let end = Date::parse("2025-01-01").unwrap();
        for index in 0..200 {
            let mut rng = Rng::derive(1, Stream::Content, index);
            let plan = Plan::new(&mut rng, index, &directory, end);
            assert!(plan.window_start >= plan.person.birth);
            let mut last = None;
            for visit in &plan.visits {
                assert!(visit.start.date() >= plan.window_start, "{visit:?}");
                assert!(visit.start.date() < end, "{visit:?}");
                assert!(visit.end > visit.start);
                assert!(last.is_none_or(|l| l <= visit.start));
                last = Some(visit.start);
            }
        }
    }
}
