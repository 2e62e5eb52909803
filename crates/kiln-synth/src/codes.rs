//! The clinical vocabulary of the generator: SNOMED CT, LOINC, RxNorm, CVX and ICD-10-CM codes
//! with their display texts, grouped into the conditions, panels, medicines, vaccines and
//! devices a record can hold, plus the code systems and profile canonicals used.
//!
//! A flat table of like items: adding a condition means adding a row to [`CHRONIC`] or
//! [`ACUTE`]; the simulation (`plan.rs`) reads only these tables.

/// One coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code {
    pub system: &'static str,
    pub code: &'static str,
    pub display: &'static str,
}

pub(crate) const SNOMED: &str = "http://snomed.info/sct";
pub(crate) const LOINC: &str = "http://loinc.org";
pub(crate) const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
pub(crate) const CVX: &str = "http://hl7.org/fhir/sid/cvx";
pub(crate) const ICD10CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
pub(crate) const UCUM: &str = "http://unitsofmeasure.org";
pub(crate) const NPI: &str = "http://hl7.org/fhir/sid/us-npi";
pub(crate) const SSN: &str = "http://hl7.org/fhir/sid/us-ssn";
pub(crate) const OMB: &str = "urn:oid:2.16.840.1.113883.6.238";
pub(crate) const BCP47: &str = "urn:ietf:bcp:47";
pub(crate) const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
pub(crate) const V2_0074: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";
pub(crate) const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub(crate) const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
pub(crate) const INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
pub(crate) const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub(crate) const CONDITION_CATEGORY: &str =
    "http://terminology.hl7.org/CodeSystem/condition-category";
pub(crate) const CONDITION_CLINICAL: &str =
    "http://terminology.hl7.org/CodeSystem/condition-clinical";
pub(crate) const CONDITION_VER: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
pub(crate) const ALLERGY_CLINICAL: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
pub(crate) const ALLERGY_VER: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
pub(crate) const MED_REQUEST_CATEGORY: &str =
    "http://terminology.hl7.org/CodeSystem/medicationrequest-category";
pub(crate) const DOC_CATEGORY: &str =
    "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category";
pub(crate) const CAREPLAN_CATEGORY: &str =
    "http://hl7.org/fhir/us/core/CodeSystem/careplan-category";
pub(crate) const PROVENANCE_TYPE: &str =
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
pub(crate) const US_CORE_PROVENANCE_TYPE: &str =
    "http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type";
pub(crate) const GOAL_ACHIEVEMENT: &str = "http://terminology.hl7.org/CodeSystem/goal-achievement";
pub(crate) const MARITAL: &str = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus";
pub(crate) const DISCHARGE: &str = "http://terminology.hl7.org/CodeSystem/discharge-disposition";
pub(crate) const ORG_TYPE: &str = "http://terminology.hl7.org/CodeSystem/organization-type";
pub(crate) const DEGREE: &str = "http://terminology.hl7.org/CodeSystem/v2-0360|2.7";
pub(crate) const FORMAT_CODE: &str =
    "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode";
pub(crate) const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
pub(crate) const DATA_ABSENT: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
pub(crate) const ROLE_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleCode";

/// US Core 5.0.1 profile canonicals.
pub(crate) mod profile {
    pub(crate) const PATIENT: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";
    pub(crate) const PRACTITIONER: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-practitioner";
    pub(crate) const ORGANIZATION: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-organization";
    pub(crate) const LOCATION: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-location";
    pub(crate) const ENCOUNTER: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-encounter";
    pub(crate) const CONDITION_PROBLEM: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition-problems-health-concerns";
    pub(crate) const CONDITION_ENCOUNTER: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition-encounter-diagnosis";
    pub(crate) const LAB: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab";
    pub(crate) const SMOKING: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-smokingstatus";
    pub(crate) const SOCIAL_HISTORY: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-social-history";
    pub(crate) const MEDICATION_REQUEST: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-medicationrequest";
    pub(crate) const MEDICATION: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-medication";
    pub(crate) const PROCEDURE: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-procedure";
    pub(crate) const IMMUNIZATION: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-immunization";
    pub(crate) const ALLERGY: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-allergyintolerance";
    pub(crate) const REPORT_LAB: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-diagnosticreport-lab";
    pub(crate) const REPORT_NOTE: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-diagnosticreport-note";
    pub(crate) const DOCUMENT: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference";
    pub(crate) const CARE_PLAN: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-careplan";
    pub(crate) const CARE_TEAM: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-careteam";
    pub(crate) const GOAL: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-goal";
    pub(crate) const DEVICE: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-implantable-device";
    pub(crate) const PROVENANCE: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-provenance";
    pub(crate) const RACE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
    pub(crate) const ETHNICITY: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity";
    pub(crate) const BIRTH_SEX: &str =
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex";
    pub(crate) const ASSERTED_DATE: &str =
        "http://hl7.org/fhir/StructureDefinition/condition-assertedDate";
}

const fn sct(code: &'static str, display: &'static str) -> Code {
    Code { system: SNOMED, code, display }
}
const fn loinc(code: &'static str, display: &'static str) -> Code {
    Code { system: LOINC, code, display }
}
const fn rx(code: &'static str, display: &'static str) -> Code {
    Code { system: RXNORM, code, display }
}
const fn cvx(code: &'static str, display: &'static str) -> Code {
    Code { system: CVX, code, display }
}
const fn icd(code: &'static str, display: &'static str) -> Code {
    Code { system: ICD10CM, code, display }
}

// ---------------------------------------------------------------------------------------------
// Encounters

pub(crate) const ENC_WELL_ADULT: Code =
    sct("162673000", "General examination of patient (procedure)");
pub(crate) const ENC_WELL_CHILD: Code = sct("410620009", "Well child visit (procedure)");
pub(crate) const ENC_PROBLEM: Code = sct("185347001", "Encounter for problem (procedure)");
pub(crate) const ENC_FOLLOW_UP: Code = sct("390906007", "Follow-up encounter (procedure)");
pub(crate) const ENC_SYMPTOM: Code = sct("185345009", "Encounter for symptom (procedure)");
pub(crate) const ENC_EMERGENCY: Code = sct("50849002", "Emergency room admission (procedure)");
pub(crate) const ENC_ADMISSION: Code = sct("32485007", "Hospital admission (procedure)");
pub(crate) const ENC_VACCINATION: Code =
    sct("33879002", "Administration of vaccine to produce active immunity (procedure)");

// ---------------------------------------------------------------------------------------------
// Vital signs, social history

pub(crate) const BP_PANEL: Code =
    loinc("85354-9", "Blood pressure panel with all children optional");
pub(crate) const BP_SYSTOLIC: Code = loinc("8480-6", "Systolic blood pressure");
pub(crate) const BP_DIASTOLIC: Code = loinc("8462-4", "Diastolic blood pressure");
pub(crate) const HEART_RATE: Code = loinc("8867-4", "Heart rate");
pub(crate) const RESPIRATORY_RATE: Code = loinc("9279-1", "Respiratory rate");
pub(crate) const BODY_TEMPERATURE: Code = loinc("8310-5", "Body temperature");
pub(crate) const BODY_WEIGHT: Code = loinc("29463-7", "Body weight");
pub(crate) const BODY_HEIGHT: Code = loinc("8302-2", "Body height");
pub(crate) const BMI: Code = loinc("39156-5", "Body mass index (BMI) [Ratio]");
pub(crate) const SMOKING_STATUS: Code = loinc("72166-2", "Tobacco smoking status");
pub(crate) const ALCOHOL_PER_DAY: Code = loinc("74013-4", "Alcoholic drinks per day");

/// Smoking status answers (SNOMED), in the order of [`crate::plan::Smoking`].
pub(crate) const SMOKING_ANSWERS: [Code; 4] = [
    sct("266919005", "Never smoked tobacco (finding)"),
    sct("8517006", "Ex-smoker (finding)"),
    sct("428041000124106", "Occasional tobacco smoker (finding)"),
    sct("449868002", "Smokes tobacco daily (finding)"),
];

/// Vital-sign profiles by LOINC code.
pub(crate) fn vital_profile(code: &Code) -> &'static str {
    match code.code {
        "85354-9" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-blood-pressure",
        "8867-4" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-heart-rate",
        "9279-1" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-respiratory-rate",
        "8310-5" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-body-temperature",
        "29463-7" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-body-weight",
        "8302-2" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-body-height",
        "39156-5" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-bmi",
        _ => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-vital-signs",
    }
}

// ---------------------------------------------------------------------------------------------
// Laboratory

/// One laboratory analyte: its code, UCUM unit, reference range and usual spread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Analyte {
    pub code: Code,
    pub unit: &'static str,
    /// Reference range; `None` for an open end.
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// Mean and standard deviation of a healthy adult's value.
    pub mean: f64,
    pub sd: f64,
    /// Decimals reported.
    pub scale: u8,
}

const fn analyte(
    code: Code,
    unit: &'static str,
    low: Option<f64>,
    high: Option<f64>,
    mean: f64,
    sd: f64,
    scale: u8,
) -> Analyte {
    Analyte { code, unit, low, high, mean, sd, scale }
}

/// A laboratory panel: the report's code and its results. Analyte columns: code, UCUM unit,
/// reference range low and high, healthy mean and standard deviation, decimals.
#[derive(Debug)]
pub(crate) struct Panel {
    pub code: Code,
    pub analytes: &'static [Analyte],
}

pub(crate) const GLUCOSE: &str = "2345-7";
pub(crate) const CREATININE: &str = "2160-0";
pub(crate) const HEMOGLOBIN: &str = "718-7";
pub(crate) const HEMATOCRIT: &str = "4544-3";
pub(crate) const CHOLESTEROL: &str = "2093-3";
pub(crate) const LDL: &str = "18262-6";
pub(crate) const HBA1C: &str = "4548-4";
pub(crate) const EGFR: &str = "33914-3";

#[rustfmt::skip]
pub(crate) const BASIC_METABOLIC: Panel = Panel {
    code: loinc("51990-0", "Basic metabolic panel - Blood"),
    analytes: &[
        analyte(loinc(GLUCOSE, "Glucose [Mass/volume] in Serum or Plasma"), "mg/dL", Some(70.0), Some(99.0), 88.0, 7.0, 0),
        analyte(loinc("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma"), "mg/dL", Some(7.0), Some(20.0), 13.0, 3.0, 0),
        analyte(loinc(CREATININE, "Creatinine [Mass/volume] in Serum or Plasma"), "mg/dL", Some(0.6), Some(1.3), 0.9, 0.15, 2),
        analyte(loinc("17861-6", "Calcium [Mass/volume] in Serum or Plasma"), "mg/dL", Some(8.6), Some(10.3), 9.4, 0.35, 1),
        analyte(loinc("2951-2", "Sodium [Moles/volume] in Serum or Plasma"), "mmol/L", Some(136.0), Some(145.0), 140.0, 2.0, 0),
        analyte(loinc("2823-3", "Potassium [Moles/volume] in Serum or Plasma"), "mmol/L", Some(3.5), Some(5.1), 4.2, 0.3, 1),
        analyte(loinc("2075-0", "Chloride [Moles/volume] in Serum or Plasma"), "mmol/L", Some(98.0), Some(107.0), 103.0, 2.0, 0),
        analyte(loinc("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma"), "mmol/L", Some(22.0), Some(29.0), 25.5, 1.5, 0),
    ],
};

#[rustfmt::skip]
pub(crate) const LIPID: Panel = Panel {
    code: loinc("57698-3", "Lipid panel with direct LDL - Serum or Plasma"),
    analytes: &[
        analyte(loinc(CHOLESTEROL, "Cholesterol [Mass/volume] in Serum or Plasma"), "mg/dL", None, Some(200.0), 185.0, 22.0, 0),
        analyte(loinc("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma"), "mg/dL", None, Some(150.0), 120.0, 30.0, 0),
        analyte(loinc("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma"), "mg/dL", Some(40.0), None, 55.0, 9.0, 0),
        analyte(loinc(LDL, "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay"), "mg/dL", None, Some(100.0), 105.0, 18.0, 0),
    ],
};

#[rustfmt::skip]
pub(crate) const CBC: Panel = Panel {
    code: loinc("58410-2", "CBC panel - Blood by Automated count"),
    analytes: &[
        analyte(loinc("6690-2", "Leukocytes [#/volume] in Blood by Automated count"), "10*3/uL", Some(4.5), Some(11.0), 7.2, 1.3, 1),
        analyte(loinc("789-8", "Erythrocytes [#/volume] in Blood by Automated count"), "10*6/uL", Some(4.2), Some(5.9), 4.9, 0.3, 2),
        analyte(loinc(HEMOGLOBIN, "Hemoglobin [Mass/volume] in Blood"), "g/dL", Some(12.0), Some(17.5), 14.5, 1.0, 1),
        analyte(loinc(HEMATOCRIT, "Hematocrit [Volume Fraction] of Blood by Automated count"), "%", Some(36.0), Some(50.0), 43.0, 2.8, 1),
        analyte(loinc("787-2", "MCV [Entitic volume] by Automated count"), "fL", Some(80.0), Some(100.0), 89.0, 4.0, 1),
        analyte(loinc("785-6", "MCH [Entitic mass] by Automated count"), "pg", Some(27.0), Some(33.0), 30.0, 1.2, 1),
        analyte(loinc("786-4", "MCHC [Mass/volume] by Automated count"), "g/dL", Some(32.0), Some(36.0), 34.0, 0.7, 1),
        analyte(loinc("777-3", "Platelets [#/volume] in Blood by Automated count"), "10*3/uL", Some(150.0), Some(450.0), 260.0, 45.0, 0),
    ],
};

#[rustfmt::skip]
pub(crate) const HBA1C_TEST: Panel = Panel {
    code: loinc(HBA1C, "Hemoglobin A1c/Hemoglobin.total in Blood"),
    analytes: &[
        analyte(loinc(HBA1C, "Hemoglobin A1c/Hemoglobin.total in Blood"), "%", Some(4.0), Some(5.6), 5.2, 0.2, 1),
    ],
};

const EGFR_NAME: &str =
    "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood";

#[rustfmt::skip]
pub(crate) const EGFR_TEST: Panel = Panel {
    code: loinc(EGFR, EGFR_NAME),
    analytes: &[
        analyte(loinc(EGFR, EGFR_NAME), "mL/min/{1.73_m2}", Some(60.0), None, 92.0, 10.0, 0),
    ],
};

/// A test whose result is a coded finding rather than a quantity.
pub(crate) const SARS_COV_2: Code = loinc(
    "94500-6",
    "SARS-CoV-2 (COVID-19) RNA [Presence] in Respiratory specimen by NAA with probe detection",
);
pub(crate) const DETECTED: Code = sct("260373001", "Detected (qualifier value)");

// ---------------------------------------------------------------------------------------------
// Notes and reports

pub(crate) const NOTE_PROGRESS: Code = loinc("11506-3", "Progress note");
pub(crate) const NOTE_HISTORY_AND_PHYSICAL: Code = loinc("34117-2", "History and physical note");
pub(crate) const NOTE_DISCHARGE: Code = loinc("18842-5", "Discharge summary");
pub(crate) const NOTE_PROCEDURE: Code = loinc("28570-0", "Procedure note");
pub(crate) const RADIOLOGY: Code = loinc("LP29684-5", "Radiology");
pub(crate) const CARDIOLOGY: Code = loinc("LP29708-2", "Cardiology");
pub(crate) const CHEST_XRAY_REPORT: Code = loinc("30746-2", "Portable XR Chest Views");
pub(crate) const IMAGING_REPORT: Code = loinc("18748-4", "Diagnostic imaging study");
pub(crate) const MAMMOGRAPHY_REPORT: Code = loinc("24606-6", "MG Breast Screening");
pub(crate) const ECG_REPORT: Code = loinc("11524-6", "EKG study");

// ---------------------------------------------------------------------------------------------
// Procedures

pub(crate) const MEDICATION_RECONCILIATION: Code =
    sct("430193006", "Medication reconciliation (procedure)");
pub(crate) const DEPRESSION_SCREENING: Code = sct("171207006", "Depression screening (procedure)");
pub(crate) const NEEDS_ASSESSMENT: Code =
    sct("710824005", "Assessment of health and social care needs (procedure)");
pub(crate) const MAMMOGRAPHY: Code = sct("71651007", "Mammography (procedure)");
pub(crate) const CERVICAL_CYTOLOGY: Code =
    sct("90226004", "Cytopathology procedure, preparation of smear, genital source (procedure)");
pub(crate) const COLONOSCOPY: Code = sct("73761001", "Colonoscopy (procedure)");
pub(crate) const SPIROMETRY: Code = sct("127783003", "Spirometry (procedure)");
pub(crate) const ECG: Code = sct("29303009", "Electrocardiographic procedure (procedure)");
pub(crate) const THROAT_CULTURE: Code = sct("117015009", "Throat culture (procedure)");
pub(crate) const URINE_CULTURE: Code = sct("117010004", "Urine culture (procedure)");
pub(crate) const CHEST_XRAY: Code = sct("399208008", "Plain chest X-ray (procedure)");
pub(crate) const ANKLE_XRAY: Code = sct("19490002", "Ankle X-ray (procedure)");

// ---------------------------------------------------------------------------------------------
// Medicines

/// A medicine: its RxNorm code, the sig, the days one fill lasts and how many are dispensed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Med {
    pub code: Code,
    pub sig: &'static str,
    /// Times a day (0: as needed).
    pub per_day: u8,
    pub supply_days: u16,
    pub quantity: u16,
    pub unit: &'static str,
    /// Prescribed through a Medication resource (`medicationReference`) rather than a code:
    /// devices and injectables, as EHRs often record them with their packaging.
    pub as_resource: bool,
}

const fn med(
    code: Code,
    sig: &'static str,
    per_day: u8,
    supply_days: u16,
    quantity: u16,
    unit: &'static str,
) -> Med {
    Med { code, sig, per_day, supply_days, quantity, unit, as_resource: false }
}

const fn med_resource(code: Code, sig: &'static str, per_day: u8, supply_days: u16) -> Med {
    Med { code, sig, per_day, supply_days, quantity: 1, unit: "{package}", as_resource: true }
}

/// Columns: RxNorm code, sig, doses a day (0: as needed), days one fill lasts, quantity
/// dispensed and its unit.
#[rustfmt::skip]
mod med_table {
    use super::{med, med_resource, rx, Med};

    pub(super) const LISINOPRIL: Med = med(rx("314076", "lisinopril 10 MG Oral Tablet"), "Take 1 tablet by mouth once daily", 1, 90, 90, "{tbl}");
    pub(super) const HYDROCHLOROTHIAZIDE: Med = med(rx("310798", "Hydrochlorothiazide 25 MG Oral Tablet"), "Take 1 tablet by mouth every morning", 1, 90, 90, "{tbl}");
    pub(super) const AMLODIPINE: Med = med(rx("308136", "amLODIPine 2.5 MG Oral Tablet"), "Take 1 tablet by mouth once daily", 1, 90, 90, "{tbl}");
    pub(super) const METFORMIN: Med = med(rx("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"), "Take 1 tablet by mouth daily with the evening meal", 1, 90, 90, "{tbl}");
    pub(super) const INSULIN: Med = med_resource(rx("106892", "insulin human, isophane 70 UNT/ML / Regular Insulin, Human 30 UNT/ML Injectable Suspension [Humulin]"), "Inject 20 units under the skin twice daily before meals", 2, 30);
    pub(super) const SIMVASTATIN: Med = med(rx("312961", "Simvastatin 20 MG Oral Tablet"), "Take 1 tablet by mouth every evening", 1, 90, 90, "{tbl}");
    pub(super) const FLUTICASONE: Med = med_resource(rx("895994", "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler"), "Inhale 2 puffs twice daily; rinse mouth after use", 2, 30);
    pub(super) const ALBUTEROL: Med = med_resource(rx("2123111", "NDA020503 200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"), "Inhale 2 puffs every 4 to 6 hours as needed for wheezing", 0, 30);
    pub(super) const FLUTICASONE_SALMETEROL: Med = med_resource(rx("896209", "60 ACTUAT Fluticasone propionate 0.25 MG/ACTUAT / salmeterol 0.05 MG/ACTUAT Dry Powder Inhaler"), "Inhale 1 puff twice daily", 2, 30);
    pub(super) const FLUOXETINE: Med = med(rx("310385", "fluoxetine 20 MG Oral Capsule"), "Take 1 capsule by mouth every morning", 1, 30, 30, "{cap}");
    pub(super) const NAPROXEN: Med = med(rx("849574", "Naproxen sodium 220 MG Oral Tablet"), "Take 1 tablet by mouth every 12 hours as needed for pain", 0, 30, 60, "{tbl}");
    pub(super) const ACETAMINOPHEN: Med = med(rx("313782", "Acetaminophen 325 MG Oral Tablet"), "Take 2 tablets by mouth every 6 hours as needed for pain or fever", 0, 10, 40, "{tbl}");
    pub(super) const WARFARIN: Med = med(rx("855332", "Warfarin Sodium 5 MG Oral Tablet"), "Take 1 tablet by mouth daily; dose adjusted to INR", 1, 30, 30, "{tbl}");
    pub(super) const DIGOXIN: Med = med(rx("197604", "Digoxin 0.125 MG Oral Tablet"), "Take 1 tablet by mouth once daily", 1, 30, 30, "{tbl}");
    pub(super) const CLOPIDOGREL: Med = med(rx("309362", "Clopidogrel 75 MG Oral Tablet"), "Take 1 tablet by mouth once daily", 1, 90, 90, "{tbl}");
    pub(super) const NITROGLYCERIN: Med = med_resource(rx("705129", "Nitroglycerin 0.4 MG/ACTUAT Mucosal Spray"), "Spray 1 to 2 doses under the tongue at the onset of chest pain; may repeat every 5 minutes, up to 3 doses", 0, 90);
    pub(super) const FEXOFENADINE: Med = med(rx("997488", "Fexofenadine hydrochloride 30 MG Oral Tablet"), "Take 1 tablet by mouth twice daily", 2, 30, 60, "{tbl}");
    pub(super) const IBUPROFEN: Med = med(rx("310965", "Ibuprofen 200 MG Oral Tablet"), "Take 2 tablets by mouth every 6 to 8 hours as needed for pain", 0, 10, 40, "{tbl}");
    pub(super) const IBUPROFEN_CHILD: Med = med(rx("198405", "Ibuprofen 100 MG Oral Tablet"), "Take 1 tablet by mouth every 6 to 8 hours as needed for pain or fever", 0, 7, 20, "{tbl}");
    pub(super) const FERROUS_SULFATE: Med = med(rx("310325", "ferrous sulfate 325 MG Oral Tablet"), "Take 1 tablet by mouth once daily with food", 1, 30, 30, "{tbl}");
    pub(super) const AMOXICILLIN: Med = med(rx("308182", "Amoxicillin 250 MG Oral Capsule"), "Take 1 capsule by mouth three times daily for 10 days", 3, 10, 30, "{cap}");
    pub(super) const AMOX_CLAV: Med = med(rx("562251", "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet"), "Take 1 tablet by mouth every 8 hours for 10 days", 3, 10, 30, "{tbl}");
    pub(super) const PENICILLIN_V: Med = med(rx("834061", "Penicillin V Potassium 250 MG Oral Tablet"), "Take 1 tablet by mouth four times daily for 10 days", 4, 10, 40, "{tbl}");
    pub(super) const CEFUROXIME: Med = med(rx("309097", "Cefuroxime 250 MG Oral Tablet"), "Take 1 tablet by mouth twice daily for 7 days", 2, 7, 14, "{tbl}");
    pub(super) const COUGH_SYRUP: Med = med(rx("1043400", "Acetaminophen 21.7 MG/ML / Dextromethorphan Hydrobromide 1 MG/ML / doxylamine succinate 0.417 MG/ML Oral Solution"), "Take 30 mL by mouth at bedtime as needed for cough", 0, 7, 1, "{bottle}");
}
use med_table::*;

// ---------------------------------------------------------------------------------------------
// Conditions

/// Kinds of clinical follow-up work a condition brings to its visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workup {
    None,
    /// HbA1c at every follow-up.
    Glycemic,
    /// A lipid panel.
    Lipids,
    /// Basic metabolic panel and eGFR.
    Renal,
    /// A blood count.
    Blood,
    /// Spirometry.
    Lungs,
    /// An ECG with its cardiology report.
    Heart,
}

/// A long-lasting condition on the problem list.
#[derive(Debug)]
pub(crate) struct Chronic {
    pub code: Code,
    pub icd10: Code,
    /// Earliest age of onset.
    pub min_age: i32,
    /// Per-mille prevalence at ages 0–17, 18–39, 40–64 and 65+.
    pub prevalence: [u32; 4],
    pub followups_per_year: u32,
    /// Per-mille chance that the condition ends (remits or is resolved) one to four years after
    /// it began; the others last.
    pub remission: u32,
    /// Medicines started at diagnosis and renewed at follow-ups (the first always; each
    /// further one with a chance of one in two).
    pub meds: &'static [Med],
    pub workup: Workup,
    /// The care plan's category (besides `assess-plan`) and its activities.
    pub plan: Option<(Code, &'static [&'static str])>,
    /// The goal written with the plan, and what it measures.
    pub goal: Option<Goal>,
}

/// A goal with one measured target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Goal {
    pub text: &'static str,
    pub measure: Option<(Code, f64, &'static str, u8)>,
}

pub(crate) const HYPERTENSION: usize = 0;
pub(crate) const DIABETES: usize = 1;
pub(crate) const PREDIABETES: usize = 2;
pub(crate) const HYPERLIPIDEMIA: usize = 3;
pub(crate) const OBESITY: usize = 5;
pub(crate) const COPD: usize = 6;
pub(crate) const CKD: usize = 7;
pub(crate) const CORONARY: usize = 10;
pub(crate) const ATRIAL_FIBRILLATION: usize = 11;
pub(crate) const ANEMIA: usize = 14;

pub(crate) const CHRONIC: [Chronic; 15] = [
    Chronic {
        code: sct("59621000", "Essential hypertension (disorder)"),
        icd10: icd("I10", "Essential (primary) hypertension"),
        min_age: 18,
        prevalence: [2, 90, 330, 580],
        followups_per_year: 2,
        remission: 0,
        meds: &[LISINOPRIL, HYDROCHLOROTHIAZIDE, AMLODIPINE],
        workup: Workup::None,
        plan: Some((
            sct("443402002", "Lifestyle education regarding hypertension (procedure)"),
            &[
                "Reduce dietary sodium to under 2,300 mg a day",
                "Moderate aerobic exercise, 30 minutes on most days",
                "Check blood pressure at home twice a week",
            ],
        )),
        goal: Some(Goal {
            text: "Maintain blood pressure below 140/90 mm[Hg]",
            measure: Some((BP_SYSTOLIC, 140.0, "mm[Hg]", 0)),
        }),
    },
    Chronic {
        code: sct("44054006", "Diabetes mellitus type 2 (disorder)"),
        icd10: icd("E11.9", "Type 2 diabetes mellitus without complications"),
        min_age: 20,
        prevalence: [1, 30, 130, 220],
        followups_per_year: 3,
        remission: 0,
        meds: &[METFORMIN, INSULIN],
        workup: Workup::Glycemic,
        plan: Some((
            sct("698360004", "Diabetes self management plan (record artifact)"),
            &[
                "Diabetic diet: consistent carbohydrates",
                "Check blood glucose every morning",
                "Yearly dilated eye exam and foot exam",
            ],
        )),
        goal: Some(Goal {
            text: "Hemoglobin A1c total in Blood below 7.0 %",
            measure: Some((HBA1C_TEST.code, 7.0, "%", 1)),
        }),
    },
    Chronic {
        code: sct("15777000", "Prediabetes (finding)"),
        icd10: icd("R73.03", "Prediabetes"),
        min_age: 18,
        prevalence: [3, 90, 220, 240],
        followups_per_year: 0,
        remission: 0,
        meds: &[],
        workup: Workup::Glycemic,
        plan: None,
        goal: None,
    },
    Chronic {
        code: sct("55822004", "Hyperlipidemia (disorder)"),
        icd10: icd("E78.5", "Hyperlipidemia, unspecified"),
        min_age: 25,
        prevalence: [0, 60, 280, 450],
        followups_per_year: 1,
        remission: 0,
        meds: &[SIMVASTATIN],
        workup: Workup::Lipids,
        plan: Some((
            sct("736285004", "Hyperlipidemia clinical management plan (record artifact)"),
            &["Diet low in saturated fat", "Statin therapy, taken every evening"],
        )),
        goal: Some(Goal {
            text: "LDL cholesterol below 100 mg/dL",
            measure: Some((
                Code {
                    system: LOINC,
                    code: LDL,
                    display: "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay",
                },
                100.0,
                "mg/dL",
                0,
            )),
        }),
    },
    Chronic {
        code: sct("195967001", "Asthma (disorder)"),
        icd10: icd("J45.909", "Unspecified asthma, uncomplicated"),
        min_age: 3,
        prevalence: [80, 80, 75, 70],
        followups_per_year: 1,
        remission: 0,
        meds: &[ALBUTEROL, FLUTICASONE],
        workup: Workup::Lungs,
        plan: Some((
            sct("699728000", "Asthma self management (regime/therapy)"),
            &[
                "Written asthma action plan",
                "Avoid known triggers: smoke, dust, pollen",
                "Inhaler technique reviewed",
            ],
        )),
        goal: Some(Goal {
            text: "No night-time asthma symptoms and no emergency visits",
            measure: None,
        }),
    },
    Chronic {
        code: sct("162864005", "Body mass index 30+ - obesity (finding)"),
        icd10: icd("E66.9", "Obesity, unspecified"),
        min_age: 18,
        // Decided from the body mass index, not from these numbers.
        prevalence: [0, 0, 0, 0],
        followups_per_year: 0,
        remission: 0,
        meds: &[],
        workup: Workup::None,
        plan: Some((
            sct("718361005", "Weight management program (regime/therapy)"),
            &["Calorie-controlled diet", "150 minutes of activity a week"],
        )),
        goal: Some(Goal {
            text: "Body mass index below 30 kg/m2",
            measure: Some((BMI, 30.0, "kg/m2", 0)),
        }),
    },
    Chronic {
        code: sct("13645005", "Chronic obstructive lung disease (disorder)"),
        icd10: icd("J44.9", "Chronic obstructive pulmonary disease, unspecified"),
        min_age: 40,
        prevalence: [0, 0, 50, 100],
        followups_per_year: 2,
        remission: 0,
        meds: &[FLUTICASONE_SALMETEROL, ALBUTEROL],
        workup: Workup::Lungs,
        plan: Some((
            sct(
                "412776001",
                "Chronic obstructive pulmonary disease clinical management plan (record artifact)",
            ),
            &[
                "Smoking cessation support",
                "Pulmonary rehabilitation",
                "Yearly influenza vaccination",
            ],
        )),
        goal: Some(Goal { text: "Walk 30 minutes without stopping for breath", measure: None }),
    },
    Chronic {
        code: sct("433144002", "Chronic kidney disease stage 3 (disorder)"),
        icd10: icd("N18.30", "Chronic kidney disease, stage 3 unspecified"),
        min_age: 40,
        prevalence: [0, 0, 40, 150],
        followups_per_year: 2,
        remission: 0,
        meds: &[],
        workup: Workup::Renal,
        plan: None,
        goal: None,
    },
    Chronic {
        code: sct("35489007", "Depressive disorder (disorder)"),
        icd10: icd("F32.A", "Depression, unspecified"),
        min_age: 12,
        prevalence: [20, 90, 80, 60],
        followups_per_year: 2,
        remission: 400,
        meds: &[FLUOXETINE],
        workup: Workup::None,
        plan: None,
        goal: None,
    },
    Chronic {
        code: sct("239873007", "Osteoarthritis of knee (disorder)"),
        icd10: icd("M17.9", "Osteoarthritis of knee, unspecified"),
        min_age: 40,
        prevalence: [0, 0, 100, 250],
        followups_per_year: 1,
        remission: 0,
        meds: &[NAPROXEN, ACETAMINOPHEN],
        workup: Workup::None,
        plan: Some((
            sct("408869004", "Musculoskeletal care (regime/therapy)"),
            &["Quadriceps strengthening exercises", "Weight-bearing activity as tolerated"],
        )),
        goal: None,
    },
    Chronic {
        code: sct("53741008", "Coronary arteriosclerosis (disorder)"),
        icd10: icd(
            "I25.10",
            "Atherosclerotic heart disease of native coronary artery without angina pectoris",
        ),
        min_age: 40,
        prevalence: [0, 0, 40, 140],
        followups_per_year: 2,
        remission: 0,
        meds: &[CLOPIDOGREL, NITROGLYCERIN],
        workup: Workup::Heart,
        plan: None,
        goal: None,
    },
    Chronic {
        code: sct("49436004", "Atrial fibrillation (disorder)"),
        icd10: icd("I48.91", "Unspecified atrial fibrillation"),
        min_age: 50,
        prevalence: [0, 0, 20, 90],
        followups_per_year: 2,
        remission: 0,
        meds: &[WARFARIN, DIGOXIN],
        workup: Workup::Heart,
        plan: None,
        goal: None,
    },
    Chronic {
        code: sct("446096008", "Perennial allergic rhinitis (disorder)"),
        icd10: icd("J30.9", "Allergic rhinitis, unspecified"),
        min_age: 3,
        prevalence: [80, 100, 80, 60],
        followups_per_year: 0,
        remission: 0,
        meds: &[FEXOFENADINE],
        workup: Workup::None,
        plan: None,
        goal: None,
    },
    Chronic {
        code: sct("278860009", "Chronic low back pain (finding)"),
        icd10: icd("M54.50", "Low back pain, unspecified"),
        min_age: 20,
        prevalence: [0, 50, 90, 100],
        followups_per_year: 1,
        remission: 500,
        meds: &[IBUPROFEN],
        workup: Workup::None,
        plan: Some((
            sct("91251008", "Physical therapy procedure (regime/therapy)"),
            &[
                "Physical therapy twice a week for six weeks",
                "Core strengthening exercises at home",
            ],
        )),
        goal: None,
    },
    Chronic {
        code: sct("271737000", "Anemia (disorder)"),
        icd10: icd("D64.9", "Anemia, unspecified"),
        min_age: 1,
        prevalence: [20, 50, 40, 80],
        followups_per_year: 1,
        remission: 500,
        meds: &[FERROUS_SULFATE],
        workup: Workup::Blood,
        plan: None,
        goal: None,
    },
];

/// A short illness, diagnosed at one visit and resolved within weeks.
#[derive(Debug)]
pub(crate) struct Acute {
    pub code: Code,
    pub icd10: Code,
    /// Relative frequency among children (0–17) and adults.
    pub weight: [u32; 2],
    pub meds: &'static [Med],
    pub procedure: Option<Code>,
    /// The imaging report written for the procedure, if any.
    pub report: Option<Code>,
    /// Whether the patient has a fever at the visit.
    pub fever: bool,
    /// Whether this illness can take a patient to the emergency room (and sometimes a ward).
    pub severe: bool,
    /// Only from this date on (`YYYY-MM-DD`), e.g. COVID-19.
    pub since: Option<&'static str>,
    pub days_to_resolve: i64,
}

pub(crate) const ACUTE: [Acute; 11] = [
    Acute {
        code: sct("444814009", "Viral sinusitis (disorder)"),
        icd10: icd("J01.90", "Acute sinusitis, unspecified"),
        weight: [15, 25],
        meds: &[],
        procedure: None,
        report: None,
        fever: false,
        severe: false,
        since: None,
        days_to_resolve: 14,
    },
    Acute {
        code: sct("195662009", "Acute viral pharyngitis (disorder)"),
        icd10: icd("J02.9", "Acute pharyngitis, unspecified"),
        weight: [20, 15],
        meds: &[ACETAMINOPHEN],
        procedure: None,
        report: None,
        fever: true,
        severe: false,
        since: None,
        days_to_resolve: 10,
    },
    Acute {
        code: sct("43878008", "Streptococcal sore throat (disorder)"),
        icd10: icd("J02.0", "Streptococcal pharyngitis"),
        weight: [12, 5],
        meds: &[PENICILLIN_V, AMOXICILLIN],
        procedure: Some(THROAT_CULTURE),
        report: None,
        fever: true,
        severe: false,
        since: None,
        days_to_resolve: 10,
    },
    Acute {
        code: sct("10509002", "Acute bronchitis (disorder)"),
        icd10: icd("J20.9", "Acute bronchitis, unspecified"),
        weight: [10, 15],
        meds: &[COUGH_SYRUP],
        procedure: Some(CHEST_XRAY),
        report: Some(CHEST_XRAY_REPORT),
        fever: true,
        severe: false,
        since: None,
        days_to_resolve: 21,
    },
    Acute {
        code: sct("65363002", "Otitis media (disorder)"),
        icd10: icd("H66.90", "Otitis media, unspecified, unspecified ear"),
        weight: [25, 2],
        meds: &[AMOXICILLIN, IBUPROFEN_CHILD],
        procedure: None,
        report: None,
        fever: true,
        severe: false,
        since: None,
        days_to_resolve: 10,
    },
    Acute {
        code: sct("68566005", "Urinary tract infectious disease (disorder)"),
        icd10: icd("N39.0", "Urinary tract infection, site not specified"),
        weight: [3, 10],
        meds: &[CEFUROXIME],
        procedure: Some(URINE_CULTURE),
        report: None,
        fever: false,
        severe: false,
        since: None,
        days_to_resolve: 7,
    },
    Acute {
        code: sct("44465007", "Sprain of ankle (disorder)"),
        icd10: icd(
            "S93.409A",
            "Sprain of unspecified ligament of unspecified ankle, initial encounter",
        ),
        weight: [6, 6],
        meds: &[NAPROXEN],
        procedure: Some(ANKLE_XRAY),
        report: Some(IMAGING_REPORT),
        fever: false,
        severe: false,
        since: None,
        days_to_resolve: 28,
    },
    Acute {
        code: sct("233604007", "Pneumonia (disorder)"),
        icd10: icd("J18.9", "Pneumonia, unspecified organism"),
        weight: [2, 4],
        meds: &[AMOX_CLAV],
        procedure: Some(CHEST_XRAY),
        report: Some(CHEST_XRAY_REPORT),
        fever: true,
        severe: true,
        since: None,
        days_to_resolve: 21,
    },
    Acute {
        code: sct(
            "840539006",
            "Disease caused by severe acute respiratory syndrome coronavirus 2 (disorder)",
        ),
        icd10: icd("U07.1", "COVID-19"),
        weight: [4, 8],
        meds: &[ACETAMINOPHEN],
        procedure: None,
        report: None,
        fever: true,
        severe: true,
        since: Some("2020-03-01"),
        days_to_resolve: 14,
    },
    Acute {
        code: sct("25064002", "Headache (finding)"),
        icd10: icd("R51.9", "Headache, unspecified"),
        weight: [4, 8],
        meds: &[IBUPROFEN],
        procedure: None,
        report: None,
        fever: false,
        severe: false,
        since: None,
        days_to_resolve: 3,
    },
    Acute {
        code: sct("39848009", "Whiplash injury to neck (disorder)"),
        icd10: icd("S13.4XXA", "Sprain of ligaments of cervical spine, initial encounter"),
        weight: [1, 3],
        meds: &[NAPROXEN],
        procedure: None,
        report: None,
        fever: false,
        severe: false,
        since: None,
        days_to_resolve: 30,
    },
];

pub(crate) const PNEUMONIA: usize = 7;
pub(crate) const COVID: usize = 8;

// ---------------------------------------------------------------------------------------------
// Allergies

/// An allergy: substance or finding code, category, and the usual reaction.
#[derive(Debug)]
pub(crate) struct Allergy {
    pub code: Code,
    pub category: &'static str,
    pub reaction: Code,
    pub high_risk: bool,
}

pub(crate) const ALLERGIES: [Allergy; 10] = [
    Allergy {
        code: sct("91935009", "Allergy to peanuts (finding)"),
        category: "food",
        reaction: sct("39579001", "Anaphylaxis (disorder)"),
        high_risk: true,
    },
    Allergy {
        code: sct("300913006", "Shellfish allergy (finding)"),
        category: "food",
        reaction: sct("271807003", "Eruption of skin (disorder)"),
        high_risk: false,
    },
    Allergy {
        code: sct("91930004", "Allergy to eggs (finding)"),
        category: "food",
        reaction: sct("271807003", "Eruption of skin (disorder)"),
        high_risk: false,
    },
    Allergy {
        code: sct("418689008", "Allergy to grass pollen (finding)"),
        category: "environment",
        reaction: sct("76067001", "Sneezing (finding)"),
        high_risk: false,
    },
    Allergy {
        code: sct("419263009", "Allergy to tree pollen (finding)"),
        category: "environment",
        reaction: sct("76067001", "Sneezing (finding)"),
        high_risk: false,
    },
    Allergy {
        code: sct("232350006", "House dust mite allergy (finding)"),
        category: "environment",
        reaction: sct("49727002", "Cough (finding)"),
        high_risk: false,
    },
    Allergy {
        code: sct("232347008", "Dander (animal) allergy (finding)"),
        category: "environment",
        reaction: sct("76067001", "Sneezing (finding)"),
        high_risk: false,
    },
    Allergy {
        code: sct("424213003", "Allergy to bee venom (finding)"),
        category: "environment",
        reaction: sct("39579001", "Anaphylaxis (disorder)"),
        high_risk: true,
    },
    Allergy {
        code: rx("7980", "Penicillin G"),
        category: "medication",
        reaction: sct("271807003", "Eruption of skin (disorder)"),
        high_risk: true,
    },
    Allergy {
        code: rx("1191", "Aspirin"),
        category: "medication",
        reaction: sct("267036007", "Dyspnea (finding)"),
        high_risk: false,
    },
];

// ---------------------------------------------------------------------------------------------
// Immunizations

pub(crate) const FLU: Code = cvx("140", "Influenza, seasonal, injectable, preservative free");
pub(crate) const TD: Code = cvx("113", "Td (adult) preservative free");
pub(crate) const ZOSTER: Code = cvx("187", "zoster vaccine recombinant");
pub(crate) const PNEUMOCOCCAL_ADULT: Code =
    cvx("33", "pneumococcal polysaccharide vaccine, 23 valent");
pub(crate) const COVID_VACCINE: Code = cvx("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose");

/// The childhood schedule: vaccine and the age in months of each dose.
pub(crate) const CHILD_VACCINES: [(Code, &[i32]); 12] = [
    (cvx("08", "Hep B, adolescent or pediatric"), &[0, 1, 6]),
    (cvx("119", "rotavirus, monovalent"), &[2, 4]),
    (cvx("20", "DTaP"), &[2, 4, 6, 15, 48]),
    (cvx("49", "Hib (PRP-OMP)"), &[2, 4, 12]),
    (cvx("133", "Pneumococcal conjugate PCV 13"), &[2, 4, 6, 12]),
    (cvx("10", "IPV"), &[2, 4, 6, 48]),
    (cvx("03", "MMR"), &[12, 48]),
    (cvx("21", "varicella"), &[12, 48]),
    (cvx("83", "Hep A, ped/adol, 2 dose"), &[12, 18]),
    (cvx("115", "Tdap"), &[132]),
    (cvx("114", "meningococcal MCV4P"), &[132, 192]),
    (cvx("165", "HPV9"), &[132, 138]),
];

// ---------------------------------------------------------------------------------------------
// Implanted devices

/// An implanted device and the procedure that places it.
#[derive(Debug)]
pub(crate) struct Implant {
    pub device: Code,
    pub procedure: Code,
    pub manufacturer: &'static str,
    pub model: &'static str,
    /// GS1 company prefix and item reference of the device identifier (12 digits; the
    /// packaging indicator and check digit are added).
    pub gtin_body: &'static str,
    pub years_valid: i32,
}

pub(crate) const IMPLANTS: [Implant; 3] = [
    Implant {
        device: sct("705643001", "Coronary artery stent (physical object)"),
        procedure: sct("415070008", "Percutaneous coronary intervention (procedure)"),
        manufacturer: "Meridian Vascular",
        model: "MV-DES 3.0 x 18 mm",
        gtin_body: "084458800312",
        years_valid: 3,
    },
    Implant {
        device: sct("14106009", "Cardiac pacemaker, device (physical object)"),
        procedure: sct("307280005", "Implantation of cardiac pacemaker (procedure)"),
        manufacturer: "Keystone Rhythm",
        model: "KR-200 DR",
        gtin_body: "076300520117",
        years_valid: 2,
    },
    Implant {
        device: sct("72506001", "Implantable defibrillator, device (physical object)"),
        procedure: sct(
            "447365002",
            "Insertion of biventricular implantable cardioverter defibrillator (procedure)",
        ),
        manufacturer: "Keystone Rhythm",
        model: "KR-ICD 5",
        gtin_body: "076300520988",
        years_valid: 2,
    },
];

pub(crate) const STENT: usize = 0;
pub(crate) const PACEMAKER: usize = 1;
pub(crate) const DEFIBRILLATOR: usize = 2;
