//! What an AccessPolicy costs: the same questions asked by an unrestricted caller (naming the
//! patient in the query) and by a patient whose policy limits them to their own compartment
//! (`Patient?_id=%patient.id`, `Observation?subject=%patient`), in process through
//! `kiln_engine::Engine` on SQLite, without HTTP. Reports the median and mean time of each and
//! their ratio.
//!
//! ```sh
//! cargo run --release -p kiln-bench --example policy -- --patients 2000 --observations 20
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use kiln_engine::{BaseUrl, Engine, Handling, Limits, RequestContext, SearchMode};
use kiln_store::{Atomicity, FsBlobStore, Precondition, ProjectId, Store, WriteMethod, WriteOp};
use kiln_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Cli {
    /// Patients written.
    #[arg(long, default_value_t = 2000)]
    patients: usize,
    /// Observations per patient.
    #[arg(long, default_value_t = 20)]
    observations: usize,
    /// Patients that get a membership (and are drawn as the restricted callers).
    #[arg(long, default_value_t = 200)]
    members: usize,
    /// Timed calls per question and caller.
    #[arg(long, default_value_t = 3000)]
    iterations: usize,
}

const CODES: [&str; 8] =
    ["8867-4", "8480-6", "8462-4", "29463-7", "8302-2", "39156-5", "2339-0", "718-7"];

fn put(resource: Value) -> WriteOp {
    let index = kiln_search::extract(&resource);
    WriteOp::Put {
        resource,
        method: WriteMethod::Put,
        precondition: Precondition::None,
        unique_keys: Vec::new(),
        index,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(&cli))
}

/// Cheap deterministic randomness (SplitMix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

struct Timing {
    samples: Vec<Duration>,
}

impl Timing {
    fn median(&mut self) -> Duration {
        self.samples.sort();
        self.samples[self.samples.len() / 2]
    }

    fn mean(&self) -> Duration {
        self.samples.iter().sum::<Duration>() / self.samples.len() as u32
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("db"), SqliteOptions::default())?);
    let blobs = Arc::new(FsBlobStore::new(dir.path().join("binary")));
    let signer = kiln_engine::accounts::load_signer(&*store, "http://localhost").await?;
    let engine = Engine::new(
        store.clone(),
        blobs,
        BaseUrl::new("http://localhost/"),
        Limits::default(),
        signer,
    );
    let project = ProjectId::new("bench");

    // The data, written straight to the store in batches.
    let started = Instant::now();
    let mut ops = vec![
        put(json!({"resourceType": "Project", "id": "bench", "name": "Bench"})),
        put(json!({"resourceType": "AccessPolicy", "id": "patient", "resource": [
            {"resourceType": "Patient", "criteria": "Patient?_id=%patient.id"},
            {"resourceType": "Observation", "criteria": "Observation?subject=%patient"},
        ]})),
    ];
    let mut written = 0;
    for p in 0..cli.patients {
        ops.push(put(json!({"resourceType": "Patient", "id": format!("p{p}"),
            "name": [{"family": format!("Family{}", p % 97), "given": ["Pat"]}],
            "gender": if p % 2 == 0 { "female" } else { "male" }, "birthDate": "1970-01-01"})));
        if p < cli.members {
            ops.push(put(json!({"resourceType": "ProjectMembership", "id": format!("m{p}"),
                "project": {"reference": "Project/bench"}, "user": {"reference": format!("User/u{p}")},
                "profile": {"reference": format!("Patient/p{p}")},
                "accessPolicy": {"reference": "AccessPolicy/patient"}})));
        }
        for o in 0..cli.observations {
            let code = CODES[(p + o) % CODES.len()];
            ops.push(put(json!({"resourceType": "Observation", "id": format!("o{p}-{o}"),
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": format!("Patient/p{p}")},
                "effectiveDateTime": format!("2020-01-{:02}T10:00:00Z", o % 28 + 1),
                "valueQuantity": {"value": 60 + o, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})));
        }
        if ops.len() >= 2000 {
            written += ops.len();
            store.write(&project, std::mem::take(&mut ops), Atomicity::All).await?;
        }
    }
    written += ops.len();
    store.write(&project, ops, Atomicity::All).await?;
    println!(
        "{written} resources ({} patients × {} observations) written in {:.1} s",
        cli.patients,
        cli.observations,
        started.elapsed().as_secs_f64()
    );

    let admin = RequestContext { extended: true, ..RequestContext::new(project.clone()) };
    let mut members = Vec::new();
    for p in 0..cli.members {
        let access = engine
            .access_for(
                &project,
                Some(&format!("ProjectMembership/m{p}")),
                &format!("Patient/p{p}"),
            )
            .await
            .context("resolving a member's access")?;
        members.push(RequestContext {
            project: project.clone(),
            author: None,
            access,
            extended: true,
        });
    }

    // Each question: (name, the unrestricted caller's query, the patient's query).
    type Query = fn(usize, &str) -> String;
    let questions: [(&str, Query, Query); 4] = [
        (
            "Observations of one code",
            |p, code| format!("Observation?patient=Patient/p{p}&code={code}"),
            |_, code| format!("Observation?code={code}"),
        ),
        (
            "all Observations (page of 50)",
            |p, _| format!("Observation?patient=Patient/p{p}&_count=50"),
            |_, _| "Observation?_count=50".to_owned(),
        ),
        (
            "latest 5 vital signs, sorted by date",
            |p, _| format!("Observation?patient=Patient/p{p}&_sort=-date&_count=5"),
            |_, _| "Observation?_sort=-date&_count=5".to_owned(),
        ),
        (
            "the Patient with _revinclude",
            |p, _| format!("Patient?_id=p{p}&_revinclude=Observation:subject"),
            |p, _| format!("Patient?_id=p{p}&_revinclude=Observation:subject"),
        ),
    ];
    let mut rng = Rng(7);
    println!("{:<40} {:>14} {:>14} {:>8}", "question", "unrestricted", "patient policy", "ratio");
    for (name, unrestricted, restricted) in questions {
        let mut times = [Timing { samples: Vec::new() }, Timing { samples: Vec::new() }];
        for i in 0..cli.iterations + 200 {
            let p = rng.below(members.len());
            let code = CODES[rng.below(CODES.len())];
            for (k, (ctx, query)) in
                [(&admin, unrestricted(p, code)), (&members[p], restricted(p, code))]
                    .into_iter()
                    .enumerate()
            {
                let (_, q) = query.split_once('?').unwrap_or((&query, ""));
                let ty = query.split('?').next().unwrap_or_default();
                let pairs = kiln_engine::query_pairs(q);
                let t = Instant::now();
                let bytes = engine
                    .search(
                        ctx,
                        Some(ty),
                        &pairs,
                        SearchMode { handling: Handling::Strict, ..SearchMode::default() },
                    )
                    .await?;
                let elapsed = t.elapsed();
                anyhow::ensure!(bytes.starts_with(b"{"), "not a Bundle");
                if i >= 200 {
                    times[k].samples.push(elapsed);
                }
            }
        }
        let (a, b) = (times[0].median(), times[1].median());
        println!(
            "{name:<40} {:>11.0} µs {:>11.0} µs {:>7.2}×   (means {:.0} / {:.0} µs)",
            a.as_secs_f64() * 1e6,
            b.as_secs_f64() * 1e6,
            b.as_secs_f64() / a.as_secs_f64(),
            times[0].mean().as_secs_f64() * 1e6,
            times[1].mean().as_secs_f64() * 1e6,
        );
    }
    // Reads of one Observation: the policy's check runs in memory on the read body.
    let mut times = [Timing { samples: Vec::new() }, Timing { samples: Vec::new() }];
    for i in 0..cli.iterations + 200 {
        let p = rng.below(members.len());
        let id = format!("o{p}-{}", rng.below(cli.observations));
        for (k, ctx) in [&admin, &members[p]].into_iter().enumerate() {
            let t = Instant::now();
            engine.read(ctx, "Observation", &id).await?;
            if i >= 200 {
                times[k].samples.push(t.elapsed());
            }
        }
    }
    let (a, b) = (times[0].median(), times[1].median());
    println!(
        "{:<40} {:>11.0} µs {:>11.0} µs {:>7.2}×",
        "read one Observation",
        a.as_secs_f64() * 1e6,
        b.as_secs_f64() * 1e6,
        b.as_secs_f64() / a.as_secs_f64()
    );
    // What a plain FHIR client pays for Medplum's meta members being removed (a byte scan of
    // each resource), against Medplum's SDK (`X-Medplum: extended`: the stored bytes).
    let plain = RequestContext { extended: false, ..admin.clone() };
    let mut times = [Timing { samples: Vec::new() }, Timing { samples: Vec::new() }];
    for i in 0..cli.iterations + 200 {
        let p = rng.below(members.len());
        let pairs = kiln_engine::query_pairs(&format!("patient=Patient/p{p}&_count=50"));
        for (k, ctx) in [&admin, &plain].into_iter().enumerate() {
            let t = Instant::now();
            engine
                .search(
                    ctx,
                    Some("Observation"),
                    &pairs,
                    SearchMode { handling: Handling::Strict, ..SearchMode::default() },
                )
                .await?;
            if i >= 200 {
                times[k].samples.push(t.elapsed());
            }
        }
    }
    let (a, b) = (times[0].median(), times[1].median());
    println!(
        "{:<40} {:>11.0} µs {:>11.0} µs {:>7.2}×   (extended / plain FHIR client)",
        "page of 50 without Medplum's meta",
        a.as_secs_f64() * 1e6,
        b.as_secs_f64() * 1e6,
        b.as_secs_f64() / a.as_secs_f64()
    );
    Ok(())
}
