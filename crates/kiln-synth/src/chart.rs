//! One patient's record: walks the [`Plan`]'s visits in time order and decides what each one
//! holds (vital signs, results, diagnoses, prescriptions, procedures, vaccines, notes). The
//! resources themselves are written by `resources.rs`.

use base64::Engine as _;

use crate::body;
use crate::codes::{self, ACUTE, CHRONIC, Code, Med, Panel, Workup};
use crate::directory::Directory;
use crate::fhir::Emitter;
use crate::json::Obj;
use crate::notes;
use crate::output::{Id, ResourceType};
use crate::plan::{Plan, Visit, VisitKind};
use crate::rng::Rng;
use crate::time::{Date, DateTime, HOUR, MINUTE};

/// Where and when something in a visit happens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    pub encounter: Id,
    pub start: DateTime,
    pub end: DateTime,
    pub clinician: Id,
    /// Index of the clinician in the directory.
    pub clinician_idx: usize,
    pub org: Id,
    pub location: Id,
    pub inpatient: bool,
}

impl At {
    pub(crate) fn date(&self) -> Date {
        self.start.date()
    }

    /// `minutes` after the visit began.
    pub(crate) fn after(&self, minutes: i64) -> DateTime {
        self.start.plus(minutes * MINUTE)
    }
}

/// When the periodic tests and screenings were last done.
#[derive(Debug, Default)]
struct Last {
    lipids: Option<Date>,
    metabolic: Option<Date>,
    blood_count: Option<Date>,
    a1c: Option<Date>,
    mammogram: Option<Date>,
    cytology: Option<Date>,
    colonoscopy: Option<Date>,
}

pub(crate) struct Chart<'a, 's> {
    pub(crate) em: &'a mut Emitter<'s>,
    pub(crate) dir: &'a Directory,
    pub(crate) plan: &'a Plan,
    /// Values drawn while writing (continues the stream the plan was drawn from).
    pub(crate) rng: Rng,
    /// The ids of this patient's resources, drawn in writing order.
    ids: Rng,
    pub(crate) patient: Id,
    /// Every resource written for this patient, in order: the Provenance's targets.
    pub(crate) written: Vec<Id>,
    /// The problem-list Condition of each of the person's conditions, allocated up front so
    /// an Encounter can point to a Condition written after it.
    pub(crate) conditions: Vec<Id>,
    /// The medicines each condition is treated with (decided once).
    med_sets: Vec<Vec<&'static Med>>,
    /// The index of the last visit renewing each condition's prescriptions: there they are
    /// `active`, earlier ones `completed`.
    last_renewal: Vec<Option<usize>>,
    /// Medication resources written so far, by RxNorm code.
    pub(crate) medications: Vec<(&'static str, Id)>,
    last: Last,
    /// The age in months at the previous well visit (childhood vaccine doses due since).
    prev_well_months: i32,
    /// The encounter diagnosis of the latest emergency visit, for the admission after it.
    emergency_condition: Option<Id>,
    /// Scratch buffers for note text and its base64 form.
    pub(crate) text: String,
    pub(crate) encoded: String,
}

impl<'a, 's> Chart<'a, 's> {
    pub(crate) fn new(
        em: &'a mut Emitter<'s>,
        dir: &'a Directory,
        plan: &'a Plan,
        mut rng: Rng,
        mut ids: Rng,
    ) -> Chart<'a, 's> {
        let patient = Id { ty: ResourceType::Patient, uuid: ids.uuid(), shared: false };
        let conditions = plan
            .person
            .conditions
            .iter()
            .map(|_| Id { ty: ResourceType::Condition, uuid: ids.uuid(), shared: false })
            .collect();
        let med_sets = plan
            .person
            .conditions
            .iter()
            .map(|d| {
                let meds = CHRONIC[d.kind].meds;
                meds.iter()
                    .enumerate()
                    .filter(|(i, _)| *i == 0 || rng.chance(500))
                    .map(|(_, m)| m)
                    .collect()
            })
            .collect();
        let last_renewal = (0..plan.person.conditions.len())
            .map(|i| plan.visits.iter().rposition(|v| renews(plan, v, i)))
            .collect();
        let months_at_start = plan.person.birth.months_until(plan.window_start);
        Chart {
            em,
            dir,
            plan,
            rng,
            ids,
            patient,
            written: Vec::with_capacity(1024),
            conditions,
            med_sets,
            last_renewal,
            medications: Vec::new(),
            last: Last::default(),
            prev_well_months: if plan.window_start > plan.person.birth {
                months_at_start
            } else {
                -1
            },
            emergency_condition: None,
            text: String::new(),
            encoded: String::new(),
        }
    }

    pub(crate) fn new_id(&mut self, ty: ResourceType) -> Id {
        Id { ty, uuid: self.ids.uuid(), shared: false }
    }

    /// Writes a resource with a new id.
    pub(crate) fn emit(
        &mut self,
        ty: ResourceType,
        profile: &str,
        body: impl FnOnce(&mut Obj<'_>),
    ) -> Id {
        let id = self.new_id(ty);
        self.emit_as(id, profile, body);
        id
    }

    /// Writes a resource whose id was allocated earlier.
    pub(crate) fn emit_as(&mut self, id: Id, profile: &str, body: impl FnOnce(&mut Obj<'_>)) {
        self.em.write(&id, profile, body);
        self.written.push(id);
    }

    /// `self.text` as base64, in `self.encoded`.
    pub(crate) fn encode_text(&mut self) {
        self.encoded.clear();
        base64::engine::general_purpose::STANDARD
            .encode_string(self.text.as_bytes(), &mut self.encoded);
    }

    /// Writes the whole record.
    pub(crate) fn write(mut self) {
        let plan = self.plan;
        self.patient();
        for &(kind, onset) in &plan.person.allergies {
            // Recorded at the first visit that knew of it.
            let recorded = plan
                .visits
                .iter()
                .find(|v| v.start.date() >= onset)
                .map_or(onset.max(plan.window_start).at(12 * HOUR), |v| v.start);
            self.allergy(kind, onset, recorded);
        }
        // Conditions that began before the history window: on the problem list from the start.
        for (i, diagnosis) in plan.person.conditions.iter().enumerate() {
            if diagnosis.onset < plan.window_start {
                self.problem(i, None);
                self.care_plan(i, None, diagnosis.onset.at(12 * HOUR));
            }
        }
        for (idx, visit) in plan.visits.iter().enumerate() {
            self.visit(idx, visit);
        }
        self.provenance();
    }

    fn at(&mut self, visit: &Visit) -> At {
        let site = &self.dir.sites[visit.site];
        At {
            encounter: self.new_id(ResourceType::Encounter),
            start: visit.start,
            end: visit.end,
            clinician: self.dir.clinicians[visit.clinician].id,
            clinician_idx: visit.clinician,
            org: site.org,
            location: site.location,
            inpatient: matches!(visit.kind, VisitKind::Admission(_) | VisitKind::Implant(..)),
        }
    }

    fn visit(&mut self, idx: usize, visit: &Visit) {
        let plan = self.plan;
        let person = &plan.person;
        let at = self.at(visit);
        let age = person.age_at(at.date());
        match visit.kind {
            VisitKind::Wellness => {
                let ty = if age < 18 { codes::ENC_WELL_CHILD } else { codes::ENC_WELL_ADULT };
                self.encounter(&at, visit, ty, None);
                self.vitals(&at, Vitals::Full);
                if age >= 13 {
                    self.smoking(&at);
                }
                if age >= 18 {
                    self.alcohol(&at);
                }
                self.screening_labs(&at, age);
                self.screenings(&at, age);
                self.well_vaccines(&at, age);
                for i in 0..person.conditions.len() {
                    if renews(plan, visit, i) {
                        self.prescribe(&at, idx, i);
                    }
                }
            }
            VisitKind::Diagnosis(i) => {
                let chronic = &CHRONIC[person.conditions[i].kind];
                let condition = self.conditions[i];
                self.encounter(&at, visit, codes::ENC_PROBLEM, Some((&chronic.code, condition)));
                self.vitals(&at, Vitals::Brief);
                self.problem(i, Some(&at));
                self.workup(&at, chronic.workup, Some(condition));
                self.prescribe(&at, idx, i);
                self.care_plan(i, Some(&at), at.start);
            }
            VisitKind::FollowUp(i) => {
                let chronic = &CHRONIC[person.conditions[i].kind];
                let condition = self.conditions[i];
                self.encounter(&at, visit, codes::ENC_FOLLOW_UP, Some((&chronic.code, condition)));
                self.vitals(&at, Vitals::Brief);
                self.workup(&at, chronic.workup, Some(condition));
                self.prescribe(&at, idx, i);
                if !self.med_sets[i].is_empty() {
                    self.procedure(&at, &codes::MEDICATION_RECONCILIATION, Some(condition), None);
                }
            }
            VisitKind::Acute(kind) => {
                let condition = self.new_id(ResourceType::Condition);
                self.encounter(
                    &at,
                    visit,
                    codes::ENC_SYMPTOM,
                    Some((&ACUTE[kind].code, condition)),
                );
                self.illness(&at, kind, condition);
            }
            VisitKind::Emergency(kind) => {
                let condition = self.new_id(ResourceType::Condition);
                self.emergency_condition = Some(condition);
                self.encounter(
                    &at,
                    visit,
                    codes::ENC_EMERGENCY,
                    Some((&ACUTE[kind].code, condition)),
                );
                self.illness(&at, kind, condition);
                self.panel(&at, &codes::CBC);
                self.panel(&at, &codes::BASIC_METABOLIC);
            }
            VisitKind::Admission(kind) => {
                let reason = self.emergency_condition.take().map(|c| (&ACUTE[kind].code, c));
                self.encounter(&at, visit, codes::ENC_ADMISSION, reason);
                self.stay(&at, kind, reason.map(|(_, id)| id));
            }
            VisitKind::Implant(implant, i) => {
                let chronic = &CHRONIC[person.conditions[i].kind];
                let condition = self.conditions[i];
                self.encounter(&at, visit, codes::ENC_ADMISSION, Some((&chronic.code, condition)));
                self.vitals(&at, Vitals::Brief);
                let device = self.new_id(ResourceType::Device);
                self.procedure(
                    &at,
                    &codes::IMPLANTS[implant].procedure,
                    Some(condition),
                    Some(device),
                );
                self.device(device, implant, &at);
            }
            VisitKind::Vaccination(vaccine) => {
                self.encounter(&at, visit, codes::ENC_VACCINATION, None);
                self.immunization(&at, &vaccine, true);
            }
        }
        if let Some(wording) = notes::wording(visit.kind, person, at.date()) {
            self.note(&at, &wording);
        }
    }

    /// An acute illness seen in the clinic or emergency room: its diagnosis, vital signs, the
    /// test or imaging it calls for, and the prescription.
    fn illness(&mut self, at: &At, kind: usize, condition: Id) {
        let acute = &ACUTE[kind];
        self.vitals(at, if acute.fever { Vitals::Fever } else { Vitals::Sick });
        self.encounter_diagnosis(condition, kind, at);
        if let Some(procedure) = acute.procedure {
            self.procedure(at, &procedure, Some(condition), None);
            if let Some(report) = acute.report {
                let abnormal = kind == codes::PNEUMONIA;
                self.imaging_report(
                    at,
                    &codes::RADIOLOGY,
                    &report,
                    procedure.display,
                    acute.code.display,
                    abnormal,
                );
            }
        }
        if kind == codes::COVID {
            self.coded_lab(at, &codes::SARS_COV_2, &codes::DETECTED);
        }
        for (n, med) in acute.meds.iter().enumerate() {
            if n == 0 || self.rng.chance(400) {
                let supply_end = at.end.date().add_days(i64::from(med.supply_days));
                let status = if supply_end < self.plan.end { "completed" } else { "active" };
                self.med_request(at, med, Some(condition), status);
            }
        }
    }

    /// A hospital stay: vital signs every day, blood work on the first and last day.
    fn stay(&mut self, at: &At, kind: usize, condition: Option<Id>) {
        let days = i64::from(at.end.date().0 - at.start.date().0).max(1);
        for day in 0..=days {
            let mut daily = *at;
            daily.start = at.start.plus(day * 86_400);
            if daily.start > at.end {
                break;
            }
            self.vitals(
                &daily,
                if day == 0 && ACUTE[kind].fever { Vitals::Fever } else { Vitals::Sick },
            );
            if day == 0 || day == days {
                self.panel(&daily, &codes::CBC);
                self.panel(&daily, &codes::BASIC_METABOLIC);
            }
        }
        for med in ACUTE[kind].meds {
            self.med_request(at, med, condition, "completed");
        }
    }

    /// Tests and procedures a chronic condition's visit calls for.
    fn workup(&mut self, at: &At, workup: Workup, condition: Option<Id>) {
        match workup {
            Workup::None => {}
            Workup::Glycemic => {
                self.panel(at, &codes::HBA1C_TEST);
                self.last.a1c = Some(at.date());
            }
            Workup::Lipids => {
                self.panel(at, &codes::LIPID);
                self.last.lipids = Some(at.date());
            }
            Workup::Renal => {
                self.panel(at, &codes::BASIC_METABOLIC);
                self.panel(at, &codes::EGFR_TEST);
                self.last.metabolic = Some(at.date());
            }
            Workup::Blood => {
                self.panel(at, &codes::CBC);
                self.last.blood_count = Some(at.date());
            }
            Workup::Lungs => {
                self.procedure(at, &codes::SPIROMETRY, condition, None);
            }
            Workup::Heart => {
                self.procedure(at, &codes::ECG, condition, None);
                let afib = self.plan.person.has(codes::ATRIAL_FIBRILLATION, at.date());
                self.imaging_report(
                    at,
                    &codes::CARDIOLOGY,
                    &codes::ECG_REPORT,
                    "12-lead electrocardiogram",
                    "Cardiac follow-up",
                    afib,
                );
            }
        }
    }

    /// The periodic blood work of a well visit.
    fn screening_labs(&mut self, at: &At, age: i32) {
        if age < 18 {
            return;
        }
        let person = &self.plan.person;
        let date = at.date();
        let due = |last: Option<Date>, years: i32| {
            last.is_none_or(|l| l.add_years(years) <= date.add_days(30))
        };
        let cardiac = [codes::HYPERLIPIDEMIA, codes::DIABETES, codes::CORONARY]
            .iter()
            .any(|k| person.has(*k, date));
        if age >= 20 && due(self.last.lipids, if cardiac { 1 } else { 5 }) {
            self.panel(at, &codes::LIPID);
            self.last.lipids = Some(date);
        }
        let renal_risk =
            [codes::HYPERTENSION, codes::DIABETES, codes::CKD].iter().any(|k| person.has(*k, date));
        if due(self.last.metabolic, if age >= 40 || renal_risk { 1 } else { 3 }) {
            self.panel(at, &codes::BASIC_METABOLIC);
            self.last.metabolic = Some(date);
        }
        if due(self.last.blood_count, 2) {
            self.panel(at, &codes::CBC);
            self.last.blood_count = Some(date);
        }
        if (person.has(codes::PREDIABETES, date) && due(self.last.a1c, 1))
            || (age >= 45 && due(self.last.a1c, 3))
        {
            self.panel(at, &codes::HBA1C_TEST);
            self.last.a1c = Some(date);
        }
    }

    /// The screening procedures of a well visit.
    fn screenings(&mut self, at: &At, age: i32) {
        let person = &self.plan.person;
        let date = at.date();
        if age >= 12 {
            self.procedure(at, &codes::DEPRESSION_SCREENING, None, None);
        }
        if age >= 18 {
            self.procedure(at, &codes::NEEDS_ASSESSMENT, None, None);
        }
        if person.conditions.iter().any(|d| d.active_on(date) && !CHRONIC[d.kind].meds.is_empty()) {
            self.procedure(at, &codes::MEDICATION_RECONCILIATION, None, None);
        }
        let due = |last: Option<Date>, years: i32| {
            last.is_none_or(|l| l.add_years(years) <= date.add_days(30))
        };
        if person.female && age >= 40 && due(self.last.mammogram, 2) {
            self.procedure(at, &codes::MAMMOGRAPHY, None, None);
            self.imaging_report(
                at,
                &codes::RADIOLOGY,
                &codes::MAMMOGRAPHY_REPORT,
                "Screening mammogram, bilateral",
                "Routine screening",
                false,
            );
            self.last.mammogram = Some(date);
        }
        if person.female && (21..=65).contains(&age) && due(self.last.cytology, 3) {
            self.procedure(at, &codes::CERVICAL_CYTOLOGY, None, None);
            self.last.cytology = Some(date);
        }
        if (45..=75).contains(&age) && due(self.last.colonoscopy, 10) && self.rng.chance(350) {
            self.procedure(at, &codes::COLONOSCOPY, None, None);
            self.last.colonoscopy = Some(date);
        }
    }

    /// Scheduled vaccine doses given at a well visit.
    fn well_vaccines(&mut self, at: &At, age: i32) {
        let months = self.plan.person.birth.months_until(at.date());
        if age < 18 {
            let previous = self.prev_well_months;
            for (vaccine, doses) in &codes::CHILD_VACCINES {
                for _ in doses.iter().filter(|&&m| m > previous && m <= months) {
                    self.immunization(at, vaccine, true);
                }
            }
            self.prev_well_months = months;
            return;
        }
        // Declined vaccines are recorded too (US Core: Immunization.statusReason).
        let (_, month, _) = at.date().ymd();
        if !self.plan.person.flu_vaccinated && !(4..=8).contains(&month) {
            self.immunization(at, &codes::FLU, false);
        }
        if age >= 19 && (age - 19) % 10 == 0 {
            self.immunization(at, &codes::TD, true);
        }
        if age == 50 || age == 51 {
            self.immunization(at, &codes::ZOSTER, true);
        }
        if age == 65 {
            self.immunization(at, &codes::PNEUMOCOCCAL_ADULT, true);
        }
    }

    /// The prescriptions of condition `i`, written or renewed at visit `idx`.
    fn prescribe(&mut self, at: &At, idx: usize, i: usize) {
        let ongoing = self.plan.person.conditions[i].resolved.is_none();
        let status =
            if ongoing && self.last_renewal[i] == Some(idx) { "active" } else { "completed" };
        let condition = self.conditions[i];
        for n in 0..self.med_sets[i].len() {
            let med = self.med_sets[i][n];
            self.med_request(at, med, Some(condition), status);
        }
    }

    /// A lab panel: each result, then the report pointing to them.
    pub(crate) fn panel(&mut self, at: &At, panel: &Panel) {
        let mut results = [None; 8];
        for (slot, analyte) in results.iter_mut().zip(panel.analytes) {
            // One result in about three hundred cannot be measured.
            let value = (!self.rng.chance(3))
                .then(|| body::lab_value(analyte, &self.plan.person, at.date(), &mut self.rng));
            *slot = Some(self.lab(at, analyte, value));
        }
        let results: Vec<Id> = results.iter().flatten().copied().collect();
        self.lab_report(at, &panel.code, &results);
    }

    /// The visit's clinical note.
    fn note(&mut self, at: &At, wording: &notes::Wording) {
        let clinician = &self.dir.clinicians[at.clinician_idx];
        let signature = format!("Dr. {} {}", clinician.given, clinician.family);
        notes::clinical_note(&mut self.text, &self.plan.person, at.date(), wording, &signature);
        self.encode_text();
        self.document(at, &wording.ty, wording.title);
    }

    /// A radiology or cardiology report with its text.
    fn imaging_report(
        &mut self,
        at: &At,
        category: &Code,
        code: &Code,
        exam: &str,
        indication: &str,
        abnormal: bool,
    ) {
        let clinician = &self.dir.clinicians[at.clinician_idx];
        let signature = format!("Dr. {} {}", clinician.given, clinician.family);
        let (findings, impression) = notes::findings(code, abnormal);
        notes::report(
            &mut self.text,
            exam,
            notes::strip_tag(indication),
            findings,
            impression,
            &signature,
        );
        self.encode_text();
        self.note_report(at, category, code);
    }
}

/// Whether visit `visit` renews the prescriptions of the person's condition `i`: its
/// diagnosis and follow-ups, or, for conditions without follow-ups, every well visit.
fn renews(plan: &Plan, visit: &Visit, i: usize) -> bool {
    let diagnosis = plan.person.conditions[i];
    match visit.kind {
        VisitKind::Diagnosis(j) | VisitKind::FollowUp(j) => i == j,
        VisitKind::Wellness => {
            let date = visit.start.date();
            CHRONIC[diagnosis.kind].followups_per_year == 0
                && diagnosis.onset < date
                && diagnosis.active_on(date)
        }
        _ => false,
    }
}

/// Which vital signs a visit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vitals {
    /// Well visits: everything, with height, weight and BMI.
    Full,
    /// Follow-ups and procedures: blood pressure, pulse, breathing, weight.
    Brief,
    /// Illness without fever.
    Sick,
    /// Illness with fever.
    Fever,
}
