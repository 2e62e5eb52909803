//! The writers of a patient's record other than results (`results.rs`): Patient, Encounter,
//! Condition, AllergyIntolerance, MedicationRequest and Medication, Procedure, Immunization,
//! CarePlan with CareTeam and Goal, Device and Provenance. Each fills every element its US
//! Core 5.0.1 profile requires or marks must-support (when the record has the data).
//!
//! The writers draw any random values before calling `emit`, whose closure may only read
//! copies (the emitter's buffer is borrowed while it runs).

use crate::chart::{At, Chart};
use crate::codes::{self, ACUTE, ALLERGIES, CHRONIC, Code, IMPLANTS, Med, profile};
use crate::directory;
use crate::json::Dec;
use crate::output::{Id, ResourceType};
use crate::people::{self, RACES};
use crate::time::{DAY, DateTime, HOUR, MINUTE};

/// Identifier systems of the generator's own ids (the fictional organization behind the
/// data; `example.org` is reserved for such use).
const MRN_SYSTEM: &str = "http://example.org/kiln-synth/mrn";
const ENCOUNTER_SYSTEM: &str = "http://example.org/kiln-synth/encounter";

/// A Coding of a fixed code system.
/// A Condition's `clinicalStatus`.
fn clinical_status(resolved: bool) -> Code {
    if resolved {
        status(codes::CONDITION_CLINICAL, "resolved", "Resolved")
    } else {
        status(codes::CONDITION_CLINICAL, "active", "Active")
    }
}

pub(crate) fn status(system: &'static str, code: &'static str, display: &'static str) -> Code {
    Code { system, code, display }
}

impl Chart<'_, '_> {
    pub(crate) fn patient(&mut self) {
        let ctx = self.em.ctx;
        let person = &self.plan.person;
        let race = &RACES[person.race].0;
        let ethnicity = if person.hispanic { &people::HISPANIC } else { &people::NOT_HISPANIC };
        let pcp = self.dir.clinicians[person.pcp].id;
        let clinic = self.dir.sites[person.clinic].org;
        let adult = person.age_at(self.plan.end) >= 18;
        let given = [person.given, person.middle];
        let patient = self.patient;
        self.emit_as(patient, profile::PATIENT, |o| {
            o.arr("extension", |a| {
                a.obj(|e| {
                    e.str("url", profile::RACE).arr("extension", |x| {
                        x.obj(|s| {
                            s.str("url", "ombCategory").coding("valueCoding", race);
                        })
                        .obj(|s| {
                            s.str("url", "text").str("valueString", race.display);
                        });
                    });
                })
                .obj(|e| {
                    e.str("url", profile::ETHNICITY).arr("extension", |x| {
                        x.obj(|s| {
                            s.str("url", "ombCategory").coding("valueCoding", ethnicity);
                        })
                        .obj(|s| {
                            s.str("url", "text").str("valueString", ethnicity.display);
                        });
                    });
                })
                .obj(|e| {
                    e.str("url", profile::BIRTH_SEX)
                        .str("valueCode", if person.female { "F" } else { "M" });
                });
            })
            .arr("identifier", |a| {
                a.obj(|i| {
                    i.str("use", "usual")
                        .concept("type", &status(codes::V2_0203, "MR", "Medical record number"))
                        .str("system", MRN_SYSTEM)
                        .str("value", &person.mrn);
                })
                .obj(|i| {
                    i.str("use", "official")
                        .concept("type", &status(codes::V2_0203, "SS", "Social Security number"))
                        .str("system", codes::SSN)
                        .str("value", &person.ssn);
                });
            })
            .bool("active", true)
            .arr("name", |a| {
                a.obj(|n| {
                    n.str("use", "official").str("family", person.family).arr("given", |g| {
                        for name in given {
                            g.str(name);
                        }
                    });
                    if adult {
                        n.str1("prefix", if person.female { "Ms." } else { "Mr." });
                    }
                });
            })
            .arr("telecom", |a| {
                a.obj(|t| {
                    t.str("system", "phone").str("value", &person.phone).str("use", "home");
                });
                if let Some(email) = &person.email {
                    a.obj(|t| {
                        t.str("system", "email").str("value", email).str("use", "home");
                    });
                }
            })
            .str("gender", if person.female { "female" } else { "male" })
            .date("birthDate", person.birth)
            .arr("address", |a| {
                a.obj(|ad| {
                    directory::address(ad, "home", &person.line, person.city());
                    ad.obj("period", |p| {
                        p.date("start", person.moved_in);
                    });
                });
            });
            if let Some((code, display)) = person.marital {
                o.concept("maritalStatus", &status(codes::MARITAL, code, display));
            }
            o.bool("multipleBirthBoolean", false)
                .arr("communication", |a| {
                    a.obj(|c| {
                        c.concept("language", &person.language).bool("preferred", true);
                    });
                })
                .arr("generalPractitioner", |a| {
                    a.reference(ctx, &pcp);
                })
                .reference("managingOrganization", ctx, &clinic);
        });
    }

    pub(crate) fn allergy(&mut self, kind: usize, onset: crate::time::Date, recorded: DateTime) {
        let ctx = self.em.ctx;
        let allergy = &ALLERGIES[kind];
        let patient = self.patient;
        let recorder = self.dir.clinicians[self.plan.person.pcp].id;
        let severity =
            if allergy.high_risk { "severe" } else { *self.rng.pick(&["mild", "moderate"]) };
        self.emit(ResourceType::AllergyIntolerance, profile::ALLERGY, |o| {
            o.concept("clinicalStatus", &status(codes::ALLERGY_CLINICAL, "active", "Active"))
                .concept(
                    "verificationStatus",
                    &status(codes::ALLERGY_VER, "confirmed", "Confirmed"),
                )
                .str("type", "allergy")
                .str1("category", allergy.category)
                .str("criticality", if allergy.high_risk { "high" } else { "low" })
                .concept("code", &allergy.code)
                .reference("patient", ctx, &patient)
                .date("onsetDateTime", onset)
                .datetime("recordedDate", ctx, recorded)
                .reference("recorder", ctx, &recorder)
                .arr("reaction", |a| {
                    a.obj(|r| {
                        r.arr("manifestation", |m| {
                            m.concept(&allergy.reaction);
                        })
                        .str("severity", severity);
                    });
                });
        });
    }

    /// The visit's Encounter, with the id `at.encounter`.
    pub(crate) fn encounter(
        &mut self,
        at: &At,
        visit: &crate::plan::Visit,
        ty: Code,
        reason: Option<(&Code, Id)>,
    ) {
        let ctx = self.em.ctx;
        let patient = self.patient;
        let (class, class_display) = match visit.kind {
            crate::plan::VisitKind::Emergency(_) => ("EMER", "emergency"),
            _ if at.inpatient => ("IMP", "inpatient encounter"),
            _ => ("AMB", "ambulatory"),
        };
        let (role, role_display) =
            if at.inpatient { ("ATND", "attender") } else { ("PPRF", "primary performer") };
        self.emit_as(at.encounter, profile::ENCOUNTER, |o| {
            o.arr("identifier", |a| {
                a.obj(|i| {
                    i.str("use", "official")
                        .str("system", ENCOUNTER_SYSTEM)
                        .ascii("value", &at.encounter.uuid);
                });
            })
            .str("status", "finished")
            .coding("class", &status(codes::ACT_CODE, class, class_display))
            .concepts("type", &ty)
            .reference("subject", ctx, &patient)
            .arr("participant", |a| {
                a.obj(|p| {
                    p.arr("type", |t| {
                        t.concept(&status(codes::PARTICIPATION, role, role_display));
                    })
                    .period("period", ctx, at.start, Some(at.end))
                    .reference("individual", ctx, &at.clinician);
                });
            })
            .period("period", ctx, at.start, Some(at.end));
            if let Some((code, condition)) = reason {
                o.concepts("reasonCode", code).references("reasonReference", ctx, &[condition]);
            }
            if at.inpatient {
                o.obj("hospitalization", |h| {
                    h.concept("dischargeDisposition", &status(codes::DISCHARGE, "home", "Home"));
                });
            }
            o.arr("location", |a| {
                a.obj(|l| {
                    l.reference("location", ctx, &at.location).str("status", "completed").period(
                        "period",
                        ctx,
                        at.start,
                        Some(at.end),
                    );
                });
            })
            .reference("serviceProvider", ctx, &at.org);
        });
    }

    /// Condition `i` of the person on the problem list; `at` is the visit that diagnosed it
    /// (none when it began before the history).
    pub(crate) fn problem(&mut self, i: usize, at: Option<&At>) {
        let ctx = self.em.ctx;
        let patient = self.patient;
        let diagnosis = self.plan.person.conditions[i];
        let chronic = &CHRONIC[diagnosis.kind];
        let recorder = at.map_or(self.dir.clinicians[self.plan.person.pcp].id, |at| at.clinician);
        let id = self.conditions[i];
        self.emit_as(id, profile::CONDITION_PROBLEM, |o| {
            o.arr("extension", |a| {
                a.obj(|e| {
                    e.str("url", profile::ASSERTED_DATE);
                    match at {
                        Some(at) => e.datetime("valueDateTime", ctx, at.start),
                        None => e.date("valueDateTime", diagnosis.onset),
                    };
                });
            })
            .concept("clinicalStatus", &clinical_status(diagnosis.resolved.is_some()))
            .concept("verificationStatus", &status(codes::CONDITION_VER, "confirmed", "Confirmed"))
            .concepts(
                "category",
                &status(codes::CONDITION_CATEGORY, "problem-list-item", "Problem List Item"),
            )
            .concept_n("code", &[&chronic.code, &chronic.icd10])
            .reference("subject", ctx, &patient);
            if let Some(at) = at {
                o.reference("encounter", ctx, &at.encounter).datetime(
                    "onsetDateTime",
                    ctx,
                    at.start,
                );
            } else {
                o.date("onsetDateTime", diagnosis.onset);
            }
            if let Some(resolved) = diagnosis.resolved {
                o.date("abatementDateTime", resolved);
            }
            match at {
                Some(at) => o.datetime("recordedDate", ctx, at.start),
                None => o.date("recordedDate", diagnosis.onset),
            };
            o.reference("recorder", ctx, &recorder).reference("asserter", ctx, &recorder);
        });
    }

    /// The diagnosis of an acute illness at its visit; resolved when it ended before the
    /// reference date.
    pub(crate) fn encounter_diagnosis(&mut self, id: Id, kind: usize, at: &At) {
        let ctx = self.em.ctx;
        let patient = self.patient;
        let acute = &ACUTE[kind];
        let resolved = at.start.plus(acute.days_to_resolve * DAY);
        let resolved = (resolved.date() < self.plan.end).then_some(resolved);
        self.emit_as(id, profile::CONDITION_ENCOUNTER, |o| {
            o.arr("extension", |a| {
                a.obj(|e| {
                    e.str("url", profile::ASSERTED_DATE).datetime("valueDateTime", ctx, at.start);
                });
            })
            .concept("clinicalStatus", &clinical_status(resolved.is_some()))
            .concept("verificationStatus", &status(codes::CONDITION_VER, "confirmed", "Confirmed"))
            .concepts(
                "category",
                &status(codes::CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis"),
            )
            .concept_n("code", &[&acute.code, &acute.icd10])
            .reference("subject", ctx, &patient)
            .reference("encounter", ctx, &at.encounter)
            .datetime("onsetDateTime", ctx, at.start);
            if let Some(resolved) = resolved {
                o.datetime("abatementDateTime", ctx, resolved);
            }
            o.datetime("recordedDate", ctx, at.start)
                .reference("recorder", ctx, &at.clinician)
                .reference("asserter", ctx, &at.clinician);
        });
    }

    /// A prescription; medicines recorded with their packaging point to a Medication.
    pub(crate) fn med_request(
        &mut self,
        at: &At,
        med: &'static Med,
        reason: Option<Id>,
        request_status: &str,
    ) {
        let ctx = self.em.ctx;
        let patient = self.patient;
        let medication = med.as_resource.then(|| self.medication(med));
        let category = if at.inpatient {
            status(codes::MED_REQUEST_CATEGORY, "inpatient", "Inpatient")
        } else {
            status(codes::MED_REQUEST_CATEGORY, "community", "Community")
        };
        let repeats = if med.supply_days >= 30 { 3 } else { 0 };
        self.emit(ResourceType::MedicationRequest, profile::MEDICATION_REQUEST, |o| {
            o.str("status", request_status)
                .str("intent", "order")
                .concepts("category", &category)
                .bool("reportedBoolean", false);
            match &medication {
                Some(id) => o.reference("medicationReference", ctx, id),
                None => o.concept("medicationCodeableConcept", &med.code),
            };
            o.reference("subject", ctx, &patient)
                .reference("encounter", ctx, &at.encounter)
                .datetime("authoredOn", ctx, at.end.plus(-5 * MINUTE))
                .reference("requester", ctx, &at.clinician);
            if let Some(reason) = &reason {
                o.references("reasonReference", ctx, std::slice::from_ref(reason));
            }
            o.arr("dosageInstruction", |a| {
                a.obj(|d| {
                    d.int("sequence", 1).str("text", med.sig);
                    if med.per_day > 0 {
                        d.obj("timing", |t| {
                            t.obj("repeat", |r| {
                                r.int("frequency", i64::from(med.per_day))
                                    .int("period", 1)
                                    .str("periodUnit", "d");
                            });
                        });
                    }
                    d.bool("asNeededBoolean", med.per_day == 0);
                });
            })
            .obj("dispenseRequest", |d| {
                d.int("numberOfRepeatsAllowed", repeats)
                    .quantity("quantity", Dec::int(i64::from(med.quantity)), med.unit)
                    .obj("expectedSupplyDuration", |q| {
                        q.int("value", i64::from(med.supply_days))
                            .str("unit", "days")
                            .str("system", codes::UCUM)
                            .str("code", "d");
                    });
            });
        });
    }

    /// The Medication resource of `med`, written the first time it is needed.
    fn medication(&mut self, med: &'static Med) -> Id {
        if let Some((_, id)) = self.medications.iter().find(|(code, _)| *code == med.code.code) {
            return *id;
        }
        let id = self.emit(ResourceType::Medication, profile::MEDICATION, |o| {
            o.concept("code", &med.code).str("status", "active");
        });
        self.medications.push((med.code.code, id));
        id
    }

    pub(crate) fn procedure(
        &mut self,
        at: &At,
        code: &Code,
        reason: Option<Id>,
        device: Option<Id>,
    ) {
        let ctx = self.em.ctx;
        let patient = self.patient;
        let (start, end) = if device.is_some() {
            (at.start.plus(2 * HOUR), at.start.plus(3 * HOUR + 30 * MINUTE))
        } else {
            (at.after(10), at.after(25))
        };
        self.emit(ResourceType::Procedure, profile::PROCEDURE, |o| {
            o.str("status", "completed")
                .concept("code", code)
                .reference("subject", ctx, &patient)
                .reference("encounter", ctx, &at.encounter)
                .period("performedPeriod", ctx, start, Some(end))
                .arr("performer", |a| {
                    a.obj(|p| {
                        p.reference("actor", ctx, &at.clinician).reference(
                            "onBehalfOf",
                            ctx,
                            &at.org,
                        );
                    });
                })
                .reference("location", ctx, &at.location);
            if let Some(reason) = &reason {
                o.references("reasonReference", ctx, std::slice::from_ref(reason));
            }
            if let Some(device) = &device {
                o.arr("focalDevice", |a| {
                    a.obj(|f| {
                        f.reference("manipulated", ctx, device);
                    });
                });
            }
        });
    }

    /// A vaccine given, or (`given` false) offered and declined by the patient.
    pub(crate) fn immunization(&mut self, at: &At, vaccine: &Code, given: bool) {
        const ROUTE: &str = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration";
        const SITE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActSite";
        let ctx = self.em.ctx;
        let patient = self.patient;
        let prefix = ["AB", "FK", "MX", "TR"][self.rng.below(4) as usize];
        let lot = format!("{prefix}{:05}", self.rng.below(100_000));
        let oral = vaccine.code == "119";
        self.emit(ResourceType::Immunization, profile::IMMUNIZATION, |o| {
            if given {
                o.str("status", "completed");
            } else {
                o.str("status", "not-done").concept(
                    "statusReason",
                    &status(codes::ACT_REASON, "PATOBJ", "patient objection"),
                );
            }
            o.concept("vaccineCode", vaccine)
                .reference("patient", ctx, &patient)
                .reference("encounter", ctx, &at.encounter)
                .datetime("occurrenceDateTime", ctx, at.after(15))
                .datetime("recorded", ctx, at.after(16))
                .bool("primarySource", true)
                .reference("location", ctx, &at.location);
            if !given {
                return;
            }
            o.str("lotNumber", &lot);
            if oral {
                o.concept("route", &status(ROUTE, "PO", "Swallow, oral"));
            } else {
                o.concept("site", &status(SITE, "LA", "left arm"))
                    .concept("route", &status(ROUTE, "IM", "Injection, intramuscular"));
            }
            o.arr("performer", |a| {
                a.obj(|p| {
                    p.reference("actor", ctx, &at.clinician);
                });
            });
        });
    }

    /// The care plan of condition `i` (with its team and goal), when the condition has one.
    pub(crate) fn care_plan(&mut self, i: usize, at: Option<&At>, start: DateTime) {
        let diagnosis = self.plan.person.conditions[i];
        let chronic = &CHRONIC[diagnosis.kind];
        let Some((category, activities)) = chronic.plan else { return };
        let ctx = self.em.ctx;
        let patient = self.patient;
        let condition = self.conditions[i];
        let pcp = self.dir.clinicians[self.plan.person.pcp].id;
        let clinic = self.dir.sites[self.plan.person.clinic].org;
        let encounter = at.map(|at| at.encounter);
        // A condition that ended closes its plan, team and goal on that day.
        let ended = diagnosis.resolved.map(|date| date.at(12 * HOUR));
        let (plan_status, activity_status) =
            if ended.is_some() { ("completed", "completed") } else { ("active", "in-progress") };
        let name = format!(
            "Care team for {}",
            crate::notes::strip_tag(chronic.code.display).to_lowercase()
        );
        let team = self.emit(ResourceType::CareTeam, profile::CARE_TEAM, |o| {
            o.str("status", if ended.is_some() { "inactive" } else { "active" })
                .str("name", &name)
                .reference("subject", ctx, &patient);
            if let Some(encounter) = &encounter {
                o.reference("encounter", ctx, encounter);
            }
            o.period("period", ctx, start, ended)
                .arr("participant", |a| {
                    a.obj(|p| {
                        p.arr("role", |r| {
                            r.concept(&Code {
                                system: codes::SNOMED,
                                code: "116154003",
                                display: "Patient (person)",
                            });
                        })
                        .reference("member", ctx, &patient);
                    })
                    .obj(|p| {
                        p.arr("role", |r| {
                            r.concept(&Code {
                                system: codes::SNOMED,
                                code: "453231000124104",
                                display: "Primary care provider",
                            });
                        })
                        .reference("member", ctx, &pcp)
                        .reference("onBehalfOf", ctx, &clinic);
                    });
                })
                .concepts("reasonCode", &chronic.code)
                .references("managingOrganization", ctx, &[clinic]);
        });
        let goal = chronic.goal.map(|goal| {
            let due = start.date().add_years(1);
            self.emit(ResourceType::Goal, profile::GOAL, |o| {
                let (lifecycle, achievement) = if ended.is_some() {
                    ("completed", status(codes::GOAL_ACHIEVEMENT, "achieved", "Achieved"))
                } else {
                    ("active", status(codes::GOAL_ACHIEVEMENT, "in-progress", "In Progress"))
                };
                o.str("lifecycleStatus", lifecycle)
                    .concept("achievementStatus", &achievement)
                    .obj("description", |d| {
                        d.str("text", goal.text);
                    })
                    .reference("subject", ctx, &patient)
                    .date("startDate", start.date())
                    .arr("target", |a| {
                        a.obj(|t| {
                            if let Some((measure, value, unit, scale)) = goal.measure {
                                t.concept("measure", &measure).quantity_cmp(
                                    "detailQuantity",
                                    "<",
                                    Dec::round(value, scale),
                                    unit,
                                );
                            }
                            t.date("dueDate", due);
                        });
                    })
                    .reference("expressedBy", ctx, &pcp)
                    .references("addresses", ctx, &[condition]);
            })
        });
        let title = format!(
            "Care plan for {}",
            crate::notes::strip_tag(chronic.code.display).to_lowercase()
        );
        let mut div = String::with_capacity(256);
        div.push_str("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>");
        xml_escape(&mut div, &title);
        div.push_str("</p><ul>");
        for activity in activities {
            div.push_str("<li>");
            xml_escape(&mut div, activity);
            div.push_str("</li>");
        }
        div.push_str("</ul></div>");
        self.emit(ResourceType::CarePlan, profile::CARE_PLAN, |o| {
            o.obj("text", |t| {
                t.str("status", "generated").str("div", &div);
            })
            .str("status", plan_status)
            .str("intent", "plan")
            .arr("category", |a| {
                a.concept(&status(
                    codes::CAREPLAN_CATEGORY,
                    "assess-plan",
                    "Assessment and Plan of Treatment",
                ))
                .concept(&category);
            })
            .str("title", &title)
            .reference("subject", ctx, &patient);
            if let Some(encounter) = &encounter {
                o.reference("encounter", ctx, encounter);
            }
            o.period("period", ctx, start, ended)
                .reference("author", ctx, &pcp)
                .references("careTeam", ctx, &[team])
                .references("addresses", ctx, &[condition]);
            if let Some(goal) = &goal {
                o.references("goal", ctx, std::slice::from_ref(goal));
            }
            o.arr("activity", |a| {
                for activity in activities {
                    a.obj(|x| {
                        x.obj("detail", |d| {
                            d.str("status", activity_status).str("description", activity);
                        });
                    });
                }
            });
        });
    }

    /// An implanted device with its UDI.
    pub(crate) fn device(&mut self, id: Id, implant: usize, at: &At) {
        let ctx = self.em.ctx;
        let patient = self.patient;
        let implant = &IMPLANTS[implant];
        let made = at.date().add_days(-self.rng.range(60, 400));
        let expires = made.add_years(implant.years_valid);
        let di = gtin14(implant.gtin_body);
        let lot = format!("{:06}", self.rng.below(1_000_000));
        let serial = format!("{:08}", self.rng.below(100_000_000));
        let yymmdd = |date: crate::time::Date| {
            let (y, m, d) = date.ymd();
            format!("{:02}{m:02}{d:02}", y % 100)
        };
        let hrf =
            format!("(01){di}(11){}(17){}(10){lot}(21){serial}", yymmdd(made), yymmdd(expires));
        self.emit_as(id, profile::DEVICE, |o| {
            o.arr("udiCarrier", |a| {
                a.obj(|u| {
                    u.str("deviceIdentifier", &di)
                        .str("issuer", "http://hl7.org/fhir/NamingSystem/gs1-di")
                        .str("carrierHRF", &hrf)
                        .str("entryType", "barcode");
                });
            })
            .str("status", "active")
            .str("distinctIdentifier", &format!("{di}-{lot}"))
            .str("manufacturer", implant.manufacturer)
            .date("manufactureDate", made)
            .date("expirationDate", expires)
            .str("lotNumber", &lot)
            .str("serialNumber", &serial)
            .arr("deviceName", |a| {
                a.obj(|n| {
                    n.str("name", implant.model).str("type", "model-name");
                });
            })
            .str("modelNumber", implant.model)
            .concept("type", &implant.device)
            .reference("patient", ctx, &patient);
        });
    }

    /// Who authored the record: every resource written for the patient.
    pub(crate) fn provenance(&mut self) {
        let ctx = self.em.ctx;
        let targets = std::mem::take(&mut self.written);
        let recorded =
            self.plan.visits.last().map_or(self.plan.window_start.at(12 * HOUR), |v| v.end);
        let pcp = self.dir.clinicians[self.plan.person.pcp].id;
        let clinic = self.dir.sites[self.plan.person.clinic].org;
        self.emit(ResourceType::Provenance, profile::PROVENANCE, |o| {
            o.references("target", ctx, &targets).datetime("recorded", ctx, recorded).arr(
                "agent",
                |a| {
                    a.obj(|g| {
                        g.concept("type", &status(codes::PROVENANCE_TYPE, "author", "Author"))
                            .reference("who", ctx, &pcp)
                            .reference("onBehalfOf", ctx, &clinic);
                    })
                    .obj(|g| {
                        g.concept(
                            "type",
                            &status(codes::US_CORE_PROVENANCE_TYPE, "transmitter", "Transmitter"),
                        )
                        .reference("who", ctx, &clinic);
                    });
                },
            );
        });
    }
}

/// A GTIN-14: packaging indicator 0, the 12-digit body, and the GS1 mod-10 check digit.
fn gtin14(body: &str) -> String {
    let digits = format!("0{body}");
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    format!("{digits}{}", (10 - sum % 10) % 10)
}

fn xml_escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtin_check_digits_follow_gs1() {
        // GS1's example GTIN-14: 0 0012345 67890 → check digit 5.
        assert_eq!(gtin14("001234567890"), "00012345678905");
    }
}
