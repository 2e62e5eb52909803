//! The writers of results and documents: vital signs, laboratory results and social
//! history (Observation), lab panels and imaging/ECG reports (DiagnosticReport) and visit notes
//! (DocumentReference), each with the elements its US Core 5.0.1 profile requires or marks
//! must-support.

use crate::body;
use crate::chart::{At, Chart, Vitals};
use crate::codes::{self, Analyte, Code, profile};
use crate::fhir::Ctx;
use crate::json::{Dec, Obj};
use crate::output::{Id, ResourceType};
use crate::resources::status;
use crate::time::DateTime;

const VITAL_SIGNS: Code =
    Code { system: codes::OBS_CATEGORY, code: "vital-signs", display: "Vital Signs" };
const LABORATORY: Code =
    Code { system: codes::OBS_CATEGORY, code: "laboratory", display: "Laboratory" };
const SOCIAL_HISTORY: Code =
    Code { system: codes::OBS_CATEGORY, code: "social-history", display: "Social History" };
const LAB_REPORT: Code = Code { system: codes::V2_0074, code: "LAB", display: "Laboratory" };

impl Chart<'_, '_> {
    /// The vital signs of a visit.
    pub(crate) fn vitals(&mut self, at: &At, set: Vitals) {
        let person = &self.plan.person;
        let date = at.date();
        let end = self.plan.end;
        let months = person.birth.months_until(date);
        let child = months < 18 * 12;
        if set == Vitals::Full {
            let height = body::height(person, date);
            let height = Dec::round(self.rng.normal(height, 0.4), 1);
            self.vital(at, &codes::BODY_HEIGHT, height, "cm");
        }
        if set != Vitals::Sick || child {
            let weight = body::weight(person, date, end);
            let scale = if months < 24 { 2 } else { 1 };
            let weight = Dec::round(self.rng.normal(weight, weight * 0.004), scale);
            self.vital(at, &codes::BODY_WEIGHT, weight, "kg");
        }
        if set == Vitals::Full && months >= 24 {
            self.vital(at, &codes::BMI, Dec::round(body::bmi(person, date, end), 1), "kg/m2");
        }
        if months >= 36 {
            let (systolic, diastolic) = body::blood_pressure(person, date, end, &mut self.rng);
            self.blood_pressure(at, systolic, diastolic);
        }
        let pulse = body::heart_rate(person, date, &mut self.rng);
        self.vital(at, &codes::HEART_RATE, pulse, "/min");
        let breaths = body::respiratory_rate(person, date, &mut self.rng);
        self.vital(at, &codes::RESPIRATORY_RATE, breaths, "/min");
        if set != Vitals::Brief {
            let temperature = body::temperature(set == Vitals::Fever, &mut self.rng);
            self.vital(at, &codes::BODY_TEMPERATURE, temperature, "Cel");
        }
    }

    fn observation_head(o: &mut Obj<'_>, chart: &ObsHead, category: &Code, code: &Code) {
        let ctx = chart.ctx;
        o.str("status", "final")
            .concepts("category", category)
            .concept("code", code)
            .reference("subject", ctx, &chart.patient)
            .reference("encounter", ctx, &chart.encounter)
            .datetime("effectiveDateTime", ctx, chart.effective)
            .datetime("issued", ctx, chart.issued)
            .references("performer", ctx, &[chart.performer]);
    }

    fn head(&self, at: &At, effective: DateTime, issued: DateTime, performer: Id) -> ObsHead {
        ObsHead {
            ctx: self.em.ctx,
            patient: self.patient,
            encounter: at.encounter,
            effective,
            issued,
            performer,
        }
    }

    fn vital(&mut self, at: &At, code: &Code, value: Dec, unit: &str) -> Id {
        let head = self.head(at, at.after(5), at.after(6), at.clinician);
        self.emit(ResourceType::Observation, codes::vital_profile(code), |o| {
            Self::observation_head(o, &head, &VITAL_SIGNS, code);
            o.quantity("valueQuantity", value, unit);
        })
    }

    fn blood_pressure(&mut self, at: &At, systolic: Dec, diastolic: Dec) -> Id {
        let head = self.head(at, at.after(5), at.after(6), at.clinician);
        self.emit(ResourceType::Observation, codes::vital_profile(&codes::BP_PANEL), |o| {
            Self::observation_head(o, &head, &VITAL_SIGNS, &codes::BP_PANEL);
            o.arr("component", |a| {
                for (code, value) in
                    [(&codes::BP_SYSTOLIC, systolic), (&codes::BP_DIASTOLIC, diastolic)]
                {
                    a.obj(|c| {
                        c.concept("code", code).quantity("valueQuantity", value, "mm[Hg]");
                    });
                }
            });
        })
    }

    pub(crate) fn smoking(&mut self, at: &At) {
        let head = self.head(at, at.after(8), at.after(9), at.clinician);
        let answer = &codes::SMOKING_ANSWERS[self.plan.person.smoking];
        self.emit(ResourceType::Observation, profile::SMOKING, |o| {
            Self::observation_head(o, &head, &SOCIAL_HISTORY, &codes::SMOKING_STATUS);
            o.concept("valueCodeableConcept", answer);
        });
    }

    pub(crate) fn alcohol(&mut self, at: &At) {
        let head = self.head(at, at.after(8), at.after(9), at.clinician);
        let drinks = Dec::int(i64::from(self.plan.person.drinks_per_day));
        self.emit(ResourceType::Observation, profile::SOCIAL_HISTORY, |o| {
            Self::observation_head(o, &head, &SOCIAL_HISTORY, &codes::ALCOHOL_PER_DAY);
            o.quantity("valueQuantity", drinks, "{drinks}/d");
        });
    }

    /// A laboratory result; `None` when the specimen could not be measured (recorded with a
    /// data-absent reason, as labs report a hemolysed or clotted sample).
    pub(crate) fn lab(&mut self, at: &At, analyte: &Analyte, value: Option<Dec>) -> Id {
        let head = self.head(at, at.after(10), at.after(4 * 60), at.org);
        self.emit(ResourceType::Observation, profile::LAB, |o| {
            Self::observation_head(o, &head, &LABORATORY, &analyte.code);
            match value {
                Some(value) => {
                    let (flag, flag_display) = body::interpretation(analyte, value);
                    o.quantity("valueQuantity", value, analyte.unit).concepts(
                        "interpretation",
                        &status(codes::INTERPRETATION, flag, flag_display),
                    );
                }
                None => {
                    o.concept("dataAbsentReason", &status(codes::DATA_ABSENT, "error", "Error"));
                }
            }
            o.arr("referenceRange", |a| {
                a.obj(|r| {
                    if let Some(low) = analyte.low {
                        r.quantity("low", Dec::round(low, analyte.scale), analyte.unit);
                    }
                    if let Some(high) = analyte.high {
                        r.quantity("high", Dec::round(high, analyte.scale), analyte.unit);
                    }
                });
            });
        })
    }

    /// A test with a coded result, and its report.
    pub(crate) fn coded_lab(&mut self, at: &At, code: &Code, answer: &Code) {
        let head = self.head(at, at.after(10), at.after(6 * 60), at.org);
        let id = self.emit(ResourceType::Observation, profile::LAB, |o| {
            Self::observation_head(o, &head, &LABORATORY, code);
            o.concept("valueCodeableConcept", answer);
        });
        self.lab_report(at, code, &[id]);
    }

    pub(crate) fn lab_report(&mut self, at: &At, code: &Code, results: &[Id]) {
        let ctx = self.em.ctx;
        let patient = self.patient;
        self.emit(ResourceType::DiagnosticReport, profile::REPORT_LAB, |o| {
            o.str("status", "final")
                .concepts("category", &LAB_REPORT)
                .concept("code", code)
                .reference("subject", ctx, &patient)
                .reference("encounter", ctx, &at.encounter)
                .datetime("effectiveDateTime", ctx, at.after(10))
                .datetime("issued", ctx, at.after(4 * 60))
                .references("performer", ctx, &[at.org])
                .references("result", ctx, results);
        });
    }

    /// A radiology or cardiology report whose text is in `self.encoded`.
    pub(crate) fn note_report(&mut self, at: &At, category: &Code, code: &Code) {
        let ctx = self.em.ctx;
        let patient = self.patient;
        let data = std::mem::take(&mut self.encoded);
        self.emit(ResourceType::DiagnosticReport, profile::REPORT_NOTE, |o| {
            o.str("status", "final")
                .concepts("category", category)
                .concept("code", code)
                .reference("subject", ctx, &patient)
                .reference("encounter", ctx, &at.encounter)
                .datetime("effectiveDateTime", ctx, at.after(20))
                .datetime("issued", ctx, at.after(3 * 60))
                .references("performer", ctx, &[at.clinician])
                .arr("presentedForm", |a| {
                    a.obj(|f| {
                        f.str("contentType", "text/plain; charset=utf-8")
                            .ascii("data", data.as_bytes())
                            .str("title", code.display);
                    });
                });
        });
        self.encoded = data;
    }

    /// A clinical note whose text is in `self.encoded`.
    pub(crate) fn document(&mut self, at: &At, ty: &Code, title: &str) {
        let ctx = self.em.ctx;
        let patient = self.patient;
        let data = std::mem::take(&mut self.encoded);
        let id = self.new_id(ResourceType::DocumentReference);
        self.emit_as(id, profile::DOCUMENT, |o| {
            o.arr("identifier", |a| {
                a.obj(|i| {
                    i.str("system", "urn:ietf:rfc:3986").raw_with("value", |out| {
                        out.extend_from_slice(b"\"urn:uuid:");
                        out.extend_from_slice(&id.uuid);
                        out.push(b'"');
                    });
                });
            })
            .str("status", "current")
            .str("docStatus", "final")
            .concept("type", ty)
            .concepts("category", &status(codes::DOC_CATEGORY, "clinical-note", "Clinical Note"))
            .reference("subject", ctx, &patient)
            .datetime("date", ctx, at.end)
            .references("author", ctx, &[at.clinician])
            .reference("custodian", ctx, &at.org)
            .str("description", title)
            .arr("content", |a| {
                a.obj(|c| {
                    c.obj("attachment", |t| {
                        t.str("contentType", "text/plain; charset=utf-8")
                            .ascii("data", data.as_bytes())
                            .str("title", title)
                            .datetime("creation", ctx, at.end);
                    })
                    .coding(
                        "format",
                        &status(
                            codes::FORMAT_CODE,
                            "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                            "mimeType Sufficient",
                        ),
                    );
                });
            })
            .obj("context", |c| {
                c.references("encounter", ctx, &[at.encounter]).period(
                    "period",
                    ctx,
                    at.start,
                    Some(at.end),
                );
            });
        });
        self.encoded = data;
    }
}

/// The parts every Observation shares.
struct ObsHead {
    ctx: Ctx,
    patient: Id,
    encounter: Id,
    effective: DateTime,
    issued: DateTime,
    performer: Id,
}
