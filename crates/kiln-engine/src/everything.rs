//! `Patient/[id]/$everything`'s `start` and `end`: the care-date window.
//!
//! The operation's definition says these restrict the records by *care* date ("the date range
//! relates to care dates, not record currency dates"), without saying which element is a
//! type's care date. Kiln takes one date search parameter per type ([`care_date_param`]): R4's
//! `clinical-date` parameter (`date` on AllergyIntolerance, CarePlan, Encounter, Observation,
//! Procedure, …) where it applies, otherwise the parameter for when the care happened or was
//! ordered (`onset-date` of a Condition, `authoredon` of a MedicationRequest, `period` of an
//! Account, …).
//!
//! A resource of such a type stays in the result when some value of that parameter overlaps
//! `[start, end]` (a Period counts as the whole span; an open end reaches forever), or when it
//! has no value for it at all (an undated record is not known to lie outside the window).
//! Resources of types without a care date (the Patient itself, Coverage, Group, …) always
//! stay. Without `start` the window is open at the beginning, without `end` at the end. The
//! resources the matches reference (`_include=*`) come along whatever their dates.

use kiln_search::{Criterion, DateRange, Filter, Modifier, Prefix, SearchParamType};

/// The care-date search parameter of each type in the Patient compartment that has one.
const CARE_DATES: &[(&str, &str)] = &[
    ("Account", "period"),
    ("AdverseEvent", "date"),
    ("AllergyIntolerance", "date"),
    ("Appointment", "date"),
    ("AuditEvent", "date"),
    ("Basic", "created"),
    ("CarePlan", "date"),
    ("CareTeam", "date"),
    ("ChargeItem", "occurrence"),
    ("Claim", "created"),
    ("ClaimResponse", "created"),
    ("ClinicalImpression", "date"),
    ("Communication", "sent"),
    ("CommunicationRequest", "authored"),
    ("Composition", "date"),
    ("Condition", "onset-date"),
    ("Consent", "date"),
    ("CoverageEligibilityRequest", "created"),
    ("CoverageEligibilityResponse", "created"),
    ("DetectedIssue", "identified"),
    ("DeviceRequest", "event-date"),
    ("DiagnosticReport", "date"),
    ("DocumentManifest", "created"),
    ("DocumentReference", "period"),
    ("Encounter", "date"),
    ("EpisodeOfCare", "date"),
    ("ExplanationOfBenefit", "created"),
    ("FamilyMemberHistory", "date"),
    ("Flag", "date"),
    ("Goal", "start-date"),
    ("ImagingStudy", "started"),
    ("Immunization", "date"),
    ("ImmunizationEvaluation", "date"),
    ("ImmunizationRecommendation", "date"),
    ("Invoice", "date"),
    ("List", "date"),
    ("MeasureReport", "period"),
    ("Media", "created"),
    ("MedicationAdministration", "effective-time"),
    ("MedicationDispense", "whenhandedover"),
    ("MedicationRequest", "authoredon"),
    ("MedicationStatement", "effective"),
    ("NutritionOrder", "datetime"),
    ("Observation", "date"),
    ("Procedure", "date"),
    ("Provenance", "when"),
    ("QuestionnaireResponse", "authored"),
    ("RequestGroup", "authored"),
    ("ResearchSubject", "date"),
    ("RiskAssessment", "date"),
    ("Schedule", "date"),
    ("ServiceRequest", "authored"),
    ("Specimen", "collected"),
    ("SupplyRequest", "date"),
    ("Task", "period"),
    ("VisionPrescription", "datewritten"),
];

/// The care-date search parameter of `resource_type`, if it has one.
pub(crate) fn care_date_param(resource_type: &str) -> Option<&'static str> {
    CARE_DATES.iter().find(|(t, _)| *t == resource_type).map(|(_, p)| *p)
}

/// The condition `start`/`end` put on a search over `types`: per type with a care date,
/// "of this type, and some care date overlaps `[lo, hi]` or there is none"; every other
/// type passes.
pub(crate) fn care_date_filter(types: &[String], lo: i64, hi: i64) -> Filter {
    let overlap = |code: &str| Filter::Values {
        code: code.to_owned(),
        kind: SearchParamType::Date,
        modifier: Modifier::None,
        // `ap` on an unwidened range is exactly "the ranges overlap".
        values: vec![Criterion::Date { prefix: Prefix::Ap, range: DateRange { lo, hi } }],
    };
    let mut dated = Vec::new();
    let mut branches = Vec::new();
    for ty in types {
        let Some(code) = care_date_param(ty) else { continue };
        dated.push(ty.clone());
        let missing =
            Filter::Missing { code: code.to_owned(), kind: SearchParamType::Date, missing: true };
        branches.push(Filter::And(vec![
            Filter::Type(vec![ty.clone()]),
            Filter::Or(vec![overlap(code), missing]),
        ]));
    }
    branches.push(Filter::Not(Box::new(Filter::Type(dated))));
    Filter::Or(branches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_definitions::definitions;
    use serde_json::json;

    #[test]
    fn every_care_date_is_a_date_parameter_of_a_compartment_type() {
        let defs = definitions();
        for (ty, code) in CARE_DATES {
            assert!(kiln_search::compartment_params("Patient", ty).is_some(), "{ty}");
            let def = defs.search_params(ty).find(|p| p.code == *code);
            let def = def.unwrap_or_else(|| panic!("{ty} has no search parameter '{code}'"));
            assert_eq!(def.param_type, SearchParamType::Date, "{ty}.{code}");
        }
    }

    #[test]
    fn the_window_keeps_overlapping_undated_and_undatable_resources() {
        let types: Vec<String> = ["Patient", "Observation", "Condition", "Coverage"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let range = |d: &str| kiln_search::date_range(d).unwrap();
        let filter = care_date_filter(&types, range("2024-01-01").lo, range("2024-12-31").hi);
        let holds = |r: serde_json::Value| kiln_search::filter_holds(&filter, &r, &Vec::new());
        assert!(holds(json!({"resourceType": "Patient", "id": "p", "birthDate": "1980"})));
        assert!(holds(json!({"resourceType": "Coverage", "id": "c", "status": "active"})));
        let obs = |effective: serde_json::Value| {
            let mut o = json!({"resourceType": "Observation", "id": "o", "status": "final",
                               "code": {"text": "x"}});
            if let serde_json::Value::Object(fields) = effective {
                o.as_object_mut().unwrap().extend(fields);
            }
            o
        };
        assert!(holds(obs(json!({"effectiveDateTime": "2024-06-01"}))));
        assert!(holds(obs(json!({"effectiveDateTime": "2024"}))));
        assert!(holds(obs(json!({}))), "undated");
        assert!(!holds(obs(json!({"effectiveDateTime": "2023-12-31T23:59:59Z"}))));
        assert!(!holds(obs(json!({"effectiveDateTime": "2025-01-01"}))));
        // A period overlapping the window, an open one reaching into it, one wholly before.
        assert!(holds(obs(
            json!({"effectivePeriod": {"start": "2023-06-01", "end": "2024-02-01"}})
        )));
        assert!(holds(obs(json!({"effectivePeriod": {"start": "2020-01-01"}}))));
        assert!(!holds(obs(json!({"effectivePeriod": {"start": "2020", "end": "2021"}}))));
        // The parameter is the type's own: a Condition by its onset.
        let condition = |onset: &str| {
            json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                   "onsetDateTime": onset, "recordedDate": "2024-03-01"})
        };
        assert!(holds(condition("2024-02-01")));
        assert!(!holds(condition("2010-02-01")));
    }
}
