//! Deterministic synthetic patient records in FHIR R4, conforming to US Core 5.0.1: the data
//! behind `kiln synth`, for loading, demonstrating and benchmarking Kiln.
//!
//! Each patient has demographics, about ten years of visits (well visits with the childhood
//! and adult vaccine and screening schedules, chronic-condition follow-ups, acute illnesses,
//! emergency visits and hospital stays, implanted devices), and everything those visits
//! produce: Encounter, Condition (problem list and encounter diagnoses), Observation (vital
//! signs, laboratory, smoking status, social history), DiagnosticReport (lab panels, imaging
//! and ECG reports), DocumentReference (a note per visit), MedicationRequest and Medication,
//! Procedure, Immunization, AllergyIntolerance, CarePlan, CareTeam, Goal, Device and a
//! Provenance; they point into a shared directory of Organizations, Locations and
//! Practitioners.
//!
//! **Determinism.** The same seed, patient count and reference date give byte-identical
//! files: every value comes from the seeded generator in `rng.rs` (algorithms fixed by their
//! reference code, not by a crate version), dates count from the reference date (no clock),
//! ids are drawn from the generator, and the JSON writer emits members in code order (no hash
//! maps). Patient `i` depends only on the seed and `i`, so a larger run extends a smaller one.
//!
//! **Not** a disease simulator like Synthea: conditions, visits and values come from a small
//! statistical model (`plan.rs`, `body.rs`) that gives realistic shapes and volumes, not
//! epidemiology. Billing resources (Claim, ExplanationOfBenefit) are not generated.
//!
//! # Layout
//! - `rng.rs`: the generator; `time.rs`: dates; `json.rs`: the JSON writer.
//! - `codes.rs`, `people.rs`: vocabulary and demographic tables.
//! - `directory.rs`: the shared organizations, locations and practitioners.
//! - `plan.rs`: one patient's life and visits; `body.rs`: measured values.
//! - `chart.rs`: what each visit writes; `resources.rs` and `results.rs`: the resource
//!   writers; `notes.rs`: note texts; `fhir.rs`: datatypes and the emitter; `output.rs`: Bundle and NDJSON files.

mod body;
mod chart;
mod codes;
mod directory;
mod fhir;
mod json;
mod notes;
mod output;
mod people;
mod plan;
mod resources;
mod results;
mod rng;
mod time;

use std::path::Path;

pub use output::ResourceType;
pub use time::Date;

use crate::chart::Chart;
use crate::directory::Directory;
use crate::fhir::Emitter;
use crate::output::{BundleSink, NdjsonSink, RefStyle, Sink};
use crate::plan::Plan;
use crate::rng::{Rng, Stream};

/// The reference date used unless another is given: the newest visit is before it.
pub const DEFAULT_END: &str = "2025-01-01";

/// Output layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `00-shared.json` (the directory) and `patient-NNNNNN.json`: one FHIR `transaction`
    /// Bundle each, every entry `PUT Type/id` with `fullUrl` `urn:uuid:id`; references within
    /// a patient's Bundle are `urn:uuid:` fullUrls, references to the directory `Type/id`.
    Bundle,
    /// One `Type.ndjson` file per resource type (what Bulk Data `$import` reads); every
    /// reference is `Type/id`.
    Ndjson,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    pub patients: u64,
    pub seed: u64,
    pub format: Format,
    /// The reference date: histories end the day before.
    pub end: Date,
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub patients: u64,
    /// Resources written per type, in [`ResourceType::ALL`] order; types never written are
    /// left out.
    pub counts: Vec<(ResourceType, u64)>,
    pub bytes: u64,
}

impl Summary {
    pub fn resources(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
}

/// Progress after each patient: patients done, resources written so far.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Generates the records into the directory `out` (which must exist), streaming each
/// patient to disk as it is made.
pub fn generate(options: &Options, out: &Path, progress: Progress<'_>) -> anyhow::Result<Summary> {
    let mut bundle;
    let mut ndjson;
    let (sink, refs): (&mut dyn Sink, RefStyle) = match options.format {
        Format::Bundle => {
            bundle = BundleSink::new(out);
            (&mut bundle, RefStyle::Urn)
        }
        Format::Ndjson => {
            ndjson = NdjsonSink::new(out);
            (&mut ndjson, RefStyle::Relative)
        }
    };
    let directory = Directory::new(options.seed);
    let mut em = Emitter::new(refs, sink);
    em.sink().begin("00-shared.json")?;
    directory.write(&mut em);
    em.check()?;
    em.sink().end()?;
    let width = options.patients.saturating_sub(1).to_string().len().max(6);
    for index in 0..options.patients {
        let mut rng = Rng::derive(options.seed, Stream::Content, index);
        let ids = Rng::derive(options.seed, Stream::Ids, index);
        let plan = Plan::new(&mut rng, index, &directory, options.end);
        em.ctx.tz = plan.person.city().utc_offset;
        em.sink().begin(&format!("patient-{index:0width$}.json"))?;
        Chart::new(&mut em, &directory, &plan, rng, ids).write();
        em.check()?;
        em.sink().end()?;
        progress(index + 1, em.counts.iter().sum());
    }
    em.sink().finish()?;
    let counts = ResourceType::ALL
        .iter()
        .map(|ty| (*ty, em.counts[ty.index()]))
        .filter(|(_, n)| *n > 0)
        .collect();
    Ok(Summary { patients: options.patients, counts, bytes: em.sink().bytes() })
}
