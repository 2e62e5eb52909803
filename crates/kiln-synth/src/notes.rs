//! The text of clinical notes (DocumentReference) and report documents (DiagnosticReport
//! `presentedForm`): short plain-text documents assembled from the record, the way an EHR's
//! templates would.

use std::fmt::Write as _;

use crate::codes::{self, ALLERGIES, CHRONIC, SMOKING_ANSWERS};
use crate::people::RACES;
use crate::plan::Person;
use crate::time::Date;

/// What a note says about one visit.
pub(crate) struct NoteVisit<'a> {
    pub date: Date,
    pub title: &'a str,
    pub complaint: &'a str,
    pub assessment: &'a str,
    pub plan: &'a str,
    pub clinician: &'a str,
}

/// Writes a clinical note into `out` (cleared first).
pub(crate) fn clinical_note(out: &mut String, person: &Person, visit: &NoteVisit<'_>) {
    out.clear();
    let age = person.age_at(visit.date);
    let race = RACES[person.race].0.display.to_ascii_lowercase();
    let ethnicity = if person.hispanic { "hispanic" } else { "non-hispanic" };
    let sex = match (person.female, age < 18) {
        (true, true) => "girl",
        (true, false) => "woman",
        (false, true) => "boy",
        (false, false) => "man",
    };
    let _ = write!(
        out,
        "{}\n{}\n\n# Chief complaint\n{}\n\n",
        visit.title,
        visit.date.text(),
        visit.complaint
    );
    let _ = write!(
        out,
        "# History of present illness\n{} is a {age}-year-old {ethnicity} {race} {sex}",
        person.full_name()
    );
    let problems: Vec<&str> = person
        .conditions
        .iter()
        .filter(|d| d.onset <= visit.date)
        .map(|d| CHRONIC[d.kind].code.display)
        .collect();
    if problems.is_empty() {
        out.push_str(" with no chronic conditions.\n\n");
    } else {
        let _ = write!(out, " with a history of {}.\n\n", strip_tags(&problems).join(", "));
    }
    if age >= 13 {
        let _ = write!(
            out,
            "# Social history\nTobacco: {}. Alcohol: {} drink(s) a day.\n\n",
            strip_tag(SMOKING_ANSWERS[person.smoking].display).to_ascii_lowercase(),
            person.drinks_per_day
        );
    }
    out.push_str("# Allergies\n");
    let allergies: Vec<&str> = person
        .allergies
        .iter()
        .filter(|(_, onset)| *onset <= visit.date)
        .map(|(kind, _)| ALLERGIES[*kind].code.display)
        .collect();
    if allergies.is_empty() {
        out.push_str("No known allergies.\n\n");
    } else {
        let _ = write!(out, "{}.\n\n", strip_tags(&allergies).join(", "));
    }
    out.push_str("# Medications\n");
    let mut any = false;
    for d in person.conditions.iter().filter(|d| d.onset <= visit.date) {
        if let Some(med) = CHRONIC[d.kind].meds.first() {
            let _ = writeln!(out, "- {}", med.code.display);
            any = true;
        }
    }
    if !any {
        out.push_str("None.\n");
    }
    let _ = write!(
        out,
        "\n# Assessment and plan\n{}\n{}\n\nSigned: {}\n",
        visit.assessment, visit.plan, visit.clinician
    );
}

/// Writes an imaging or ECG report into `out` (cleared first).
pub(crate) fn report(
    out: &mut String,
    exam: &str,
    indication: &str,
    findings: &str,
    impression: &str,
    clinician: &str,
) {
    out.clear();
    let _ = write!(
        out,
        "EXAM: {exam}\nINDICATION: {indication}\n\nFINDINGS:\n{findings}\n\nIMPRESSION:\n{impression}\n\nReported by: {clinician}\n"
    );
}

/// `Osteoarthritis of knee (disorder)` → `Osteoarthritis of knee`: SNOMED's semantic tags
/// do not belong in prose.
pub(crate) fn strip_tag(display: &str) -> &str {
    match display.rfind(" (") {
        Some(i) if display.ends_with(')') => &display[..i],
        _ => display,
    }
}

fn strip_tags<'a>(displays: &[&'a str]) -> Vec<&'a str> {
    displays.iter().map(|d| strip_tag(d)).collect()
}

/// Findings and impression of a report by its kind.
pub(crate) fn findings(report: &codes::Code, abnormal: bool) -> (&'static str, &'static str) {
    match (report.code, abnormal) {
        ("30746-2", true) => (
            "Patchy airspace opacity in the right lower lobe. No pleural effusion or pneumothorax. Heart size normal.",
            "Right lower lobe opacity, compatible with pneumonia in the clinical setting.",
        ),
        ("30746-2", false) => (
            "Lungs are clear. No focal consolidation, effusion or pneumothorax. Cardiomediastinal silhouette normal.",
            "No acute cardiopulmonary process.",
        ),
        ("24606-6", _) => (
            "Scattered fibroglandular densities. No suspicious mass, calcification or architectural distortion.",
            "BI-RADS 1: negative. Routine screening in two years.",
        ),
        ("11524-6", true) => (
            "Irregularly irregular rhythm without discernible P waves. Ventricular rate 92. QRS 88 ms. No acute ST changes.",
            "Atrial fibrillation with controlled ventricular response.",
        ),
        ("11524-6", false) => (
            "Sinus rhythm, rate 70. PR 160 ms, QRS 90 ms, QTc 420 ms. No ST or T wave abnormality.",
            "Normal sinus rhythm. No acute ischemic changes.",
        ),
        _ => (
            "No fracture or dislocation. Mild soft tissue swelling. Joint spaces preserved.",
            "Soft tissue swelling without fracture.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_semantic_tags() {
        assert_eq!(strip_tag("Osteoarthritis of knee (disorder)"), "Osteoarthritis of knee");
        assert_eq!(strip_tag("Penicillin G"), "Penicillin G");
    }
}
