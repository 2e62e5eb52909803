//! The text of clinical notes (DocumentReference) and report documents (DiagnosticReport
//! `presentedForm`): short plain-text documents assembled from the record, the way an EHR's
//! templates would.

use std::fmt::Write as _;

use crate::codes::{self, ACUTE, ALLERGIES, CHRONIC, Code, IMPLANTS, SMOKING_ANSWERS};
use crate::people::RACES;
use crate::plan::{Person, VisitKind};
use crate::time::Date;

/// What a visit's note says beyond the record itself.
pub(crate) struct Wording {
    pub ty: Code,
    pub title: &'static str,
    pub complaint: String,
    pub assessment: String,
    pub plan: &'static str,
}

/// The note of a visit, or `None` for visits without one (a vaccination).
pub(crate) fn wording(kind: VisitKind, person: &Person, date: Date) -> Option<Wording> {
    let problem = |i: usize| strip_tag(CHRONIC[person.conditions[i].kind].code.display);
    let illness = |kind: usize| strip_tag(ACUTE[kind].code.display);
    let (ty, title, complaint, assessment, plan) = match kind {
        VisitKind::Wellness => {
            let active: Vec<&str> = person
                .conditions
                .iter()
                .filter(|d| d.active_on(date))
                .map(|d| strip_tag(CHRONIC[d.kind].code.display))
                .collect();
            let assessment = if active.is_empty() {
                "Healthy. Age-appropriate screening and counseling done.".to_owned()
            } else {
                format!(
                    "Chronic conditions reviewed: {}. Age-appropriate screening and counseling done.",
                    active.join(", ").to_lowercase()
                )
            };
            let title = if person.age_at(date) < 18 {
                "Well child visit"
            } else {
                "Annual physical examination"
            };
            let complaint = "Routine health maintenance.".to_owned();
            (codes::NOTE_HISTORY_AND_PHYSICAL, title, complaint, assessment, "Return in one year.")
        }
        VisitKind::Diagnosis(i) => (
            codes::NOTE_PROGRESS,
            "Problem visit",
            problem(i).to_owned(),
            format!("New diagnosis: {}.", problem(i).to_lowercase()),
            "Treatment started; follow up as scheduled.",
        ),
        VisitKind::FollowUp(i) => (
            codes::NOTE_PROGRESS,
            "Follow-up visit",
            problem(i).to_owned(),
            format!("{}: stable on current treatment.", problem(i)),
            "Continue current treatment.",
        ),
        VisitKind::Acute(k) => (
            codes::NOTE_PROGRESS,
            "Sick visit",
            illness(k).to_owned(),
            format!("{}.", illness(k)),
            "Supportive care; return if not improving.",
        ),
        VisitKind::Emergency(k) => (
            codes::NOTE_PROGRESS,
            "Emergency department visit",
            illness(k).to_owned(),
            format!("{}.", illness(k)),
            "Treated in the emergency department.",
        ),
        VisitKind::Admission(k) => (
            codes::NOTE_DISCHARGE,
            "Discharge summary",
            illness(k).to_owned(),
            format!("Admitted for {}; improved with treatment.", illness(k).to_lowercase()),
            "Discharged home; follow up with primary care within one week.",
        ),
        VisitKind::Implant(implant, i) => (
            codes::NOTE_PROCEDURE,
            "Procedure note",
            problem(i).to_owned(),
            format!("{} placed without complication.", strip_tag(IMPLANTS[implant].device.display)),
            "Device check in the clinic in three months.",
        ),
        VisitKind::Vaccination(_) => return None,
    };
    Some(Wording { ty, title, complaint, assessment, plan })
}

/// Writes a clinical note into `out` (cleared first).
pub(crate) fn clinical_note(
    out: &mut String,
    person: &Person,
    date: Date,
    wording: &Wording,
    clinician: &str,
) {
    out.clear();
    let age = person.age_at(date);
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
        wording.title,
        date.text(),
        wording.complaint
    );
    let _ = write!(
        out,
        "# History of present illness\n{} is a {age}-year-old {ethnicity} {race} {sex}",
        person.full_name()
    );
    let problems: Vec<&str> = person
        .conditions
        .iter()
        .filter(|d| d.onset <= date)
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
        .filter(|(_, onset)| *onset <= date)
        .map(|(kind, _)| ALLERGIES[*kind].code.display)
        .collect();
    if allergies.is_empty() {
        out.push_str("No known allergies.\n\n");
    } else {
        let _ = write!(out, "{}.\n\n", strip_tags(&allergies).join(", "));
    }
    out.push_str("# Medications\n");
    let mut any = false;
    for d in person.conditions.iter().filter(|d| d.active_on(date)) {
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
        "\n# Assessment and plan\n{}\n{}\n\nSigned: {clinician}\n",
        wording.assessment, wording.plan
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
        "EXAM: {}\nINDICATION: {indication}\n\nFINDINGS:\n{findings}\n\nIMPRESSION:\n{impression}\n\nReported by: {clinician}\n",
        strip_tag(exam)
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
