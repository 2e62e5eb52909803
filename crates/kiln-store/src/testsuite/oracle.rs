//! A property test of a backend's search against [`kiln_search::matches_in`], the reference
//! evaluator: a deterministic pseudo-random population of Patients and Observations (small
//! vocabularies, so values collide), updated and partly deleted, then a few hundred
//! deterministic pseudo-random searches. Every search must select exactly the resources the
//! oracle selects, report the same total, and (for a sample, with `_sort` and a small
//! `_count`) page through the same set in an order consistent with the sort keys, forwards
//! by `next` cursors and back again by `previous` ones.
//!
//! The seed is [`ORACLE_SEED`]; `KILN_ORACLE_SEED=<u64>` overrides it to explore other
//! populations. A failure prints the seed, the query, the ids found by only one side and the
//! JSON of a differing resource.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Instant;

use kiln_search::{Filter, IndexValue, RefValue, ResourceSet, SearchQuery, matches_in};
use serde_json::{Map, Value, json};

use crate::{
    Atomicity, Cursor, Precondition, ProjectId, SearchRequest, Store, WriteMethod, WriteOp,
};

/// The seed of the population and of the queries.
pub const ORACLE_SEED: u64 = 0x6b69_6c6e_0002_0001;
/// Mixed into the seed for the `_filter` searches' stream.
const FILTER_STREAM: u64 = 0x5f66_696c_7465_7200;

const PATIENTS: usize = 60;
const OBSERVATIONS: usize = 90;
const QUERIES: usize = 400;
/// `_filter` searches, generated after the others from a stream of their own (so the other
/// searches stay what they were).
const FILTER_QUERIES: usize = 160;
/// Mixed into the seed for the text stream: narratives, notes and Lists added to the
/// population, and the `_content`/`_text`/`_list` and care-date-window searches (so the
/// population's other values and the other searches stay what they were).
const TEXT_STREAM: u64 = 0x5f74_6578_7400_0000;
const TEXT_QUERIES: usize = 120;
const WINDOW_QUERIES: usize = 40;
const LISTS: usize = 4;
/// Mixed into the seed for the contained stream: resources holding contained resources
/// (written with the population) and the `_contained` searches (so the population's other
/// values and the other searches stay what they were).
const CONTAINED_STREAM: u64 = 0x5f63_6f6e_7400_0000;
const CONTAINERS: usize = 30;
const CONTAINED_QUERIES: usize = 200;
/// The share of generated queries that must parse (so the generator cannot silently degrade).
const MIN_PARSED_PERCENT: usize = 85;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness (SplitMix64: tiny, good enough, no dependency).

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True `percent`% of the time.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// Vocabularies: small on purpose, with accent, case and prefix variants that collide.

/// Family names; `"Mu\u{308}ller"` is `Müller` written decomposed (NFD).
const FAMILIES: &[&str] = &[
    "Müller",
    "Muller",
    "MÜLLER",
    "Mu\u{308}ller",
    "Mül",
    "Smith",
    "smith",
    "Smíth",
    "Smithson",
    "García",
    "Garcia",
    "Ng",
    "Nguyễn",
    // A value continuing with U+10FFFF: the prefix range's upper bound must still hold it.
    "Ab\u{10FFFF}z",
];
const GIVENS: &[&str] = &["Anna", "Ánna", "anna", "Annabel", "José", "Jose", "Jo", "Zoë", "Zoe"];
const CITIES: &[&str] = &["Paris", "paris", "Pärnu", "Berlin", "Bern", "São Paulo", "Sao Paulo"];
const LINES: &[&str] = &["1 Main St", "22 Rue de la Paix", "Hauptstraße 5"];
const GENDERS: &[&str] = &["male", "female", "other", "unknown"];
const ID_SYSTEMS: &[&str] = &["http://hospital.example/mrn", "urn:oid:1.2.3.4"];
const ID_VALUES: &[&str] = &["A1", "A2", "B7", "12345"];
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
/// Identifier types: `(code, text)`.
const ID_TYPES: &[(&str, &str)] = &[("MR", "Medical record number"), ("SS", "Social Security")];
const TAG_SYSTEM: &str = "http://tags.example";
const TAGS: &[&str] = &["t1", "t2", "t3"];
const SOURCES: &[&str] = &["http://src.example/a", "http://src.example/a/b", "urn:src:x"];
const ELSEWHERE: &str = "http://elsewhere.example/fhir";
const PHONES: &[&str] = &["555-0100", "555-0199", "+33 1 23 45"];
const EMAILS: &[&str] = &["anna@example.org", "jo@example.org", "ANNA@example.org"];

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
/// `(system, code, display)`; `1234-5` exists in two systems.
const CODES: &[(&str, &str, &str)] = &[
    (LOINC, "8867-4", "Heart rate"),
    (LOINC, "2345-7", "Glucose [Mass/volume] in Serum"),
    (LOINC, "1234-5", "Mystery analyte"),
    (SNOMED, "1234-5", "Mystère"),
    (SNOMED, "271649006", "Systolic blood pressure"),
];
const CODE_TEXTS: &[&str] =
    &["Heart rate", "heart RATE", "Glucose", "Glücose level", "Blood pressure"];
const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const CATEGORIES: &[&str] = &["vital-signs", "laboratory", "survey"];
const STATUSES: &[&str] = &["final", "preliminary", "amended", "cancelled"];
/// Numbers as written (their precision matters).
const NUMBERS: &[&str] =
    &["5", "5.0", "5.25", "5.250", "4.5", "4.75", "6", "10", "0.5", "100", "-1.5", "1e1"];
const UCUM: &str = "http://unitsofmeasure.org";
/// `(unit, code)`.
const UNITS: &[(&str, Option<&str>)] = &[
    ("mg", Some("mg")),
    ("g", Some("g")),
    ("kg", Some("kg")),
    ("milligram", Some("mg")),
    ("mg", None),
];
const VALUE_STRINGS: &[&str] = &["positive", "Positive result", "négatif", "NEGATIVE"];
/// Narrative pieces: tags, entities, case and accent variants (`Mu\u{308}ller` decomposed).
const NARRATIVES: &[&str] = &[
    "<b>Heart</b> rate",
    "heart <i>RATE</i> normal",
    "Allergic to pea<b>nuts</b>",
    "Zürich &amp; Bern",
    "x &lt; y &amp;lt; z",
    "O&apos;Brien said &quot;hi&quot;",
    "Mu\u{308}ller",
    "MÜLLER",
    "glucose<br/>level",
    "a <span class=\"q\">quoted</span> note",
    "3 &gt; 2 <!-- comment --> ok",
];
/// Free text in `Observation.note`: quotes, backslashes, markup-like text, accents.
const NOTES: &[&str] = &[
    "Heart rate high",
    "back\\slash and \"quotes\"",
    "naïve café",
    "CAFÉ",
    "tab\there",
    "100% sure_thing",
    "<not a tag>",
    "line\nbreak",
];
/// Text search probes beyond the words of the vocabularies.
const TEXT_PROBES: &[&str] = &[
    "heart",
    "HEART RATE",
    "heart rate",
    "rate",
    "peanuts",
    "pea",
    "zürich",
    "ZÜRICH",
    "zurich",
    "bern",
    "x < y",
    "&lt;",
    "&amp;",
    "& b",
    "o'brien",
    "\"hi\"",
    "müller",
    "mu\u{308}ller",
    "glucoselevel",
    "glucose level",
    "quoted",
    "span",
    "class",
    "xmlns",
    "comment",
    "3 > 2",
    "café",
    "CAFÉ",
    "back\\slash",
    "100%",
    "_thing",
    "<not",
    "\t",
    "patient",
    "observation",
    "generated",
    "final",
    "vital",
    "loinc",
    "kg",
    "p1",
    "o1",
    "src.example",
    "tags.example",
];

// ---------------------------------------------------------------------------------------------
// The population.

fn patient_id(i: usize) -> String {
    format!("p{i}")
}

fn observation_id(i: usize) -> String {
    format!("o{i}")
}

fn number(text: &str) -> Value {
    serde_json::from_str(text).expect("a JSON number")
}

/// A date of year/month/day precision from the given years.
fn date_value(rng: &mut Rng, years: &[i32], months: &[u32], days: &[u32]) -> String {
    let year = *rng.pick(years);
    match rng.below(3) {
        0 => format!("{year}"),
        1 => format!("{year}-{:02}", rng.pick(months)),
        _ => format!("{year}-{:02}-{:02}", rng.pick(months), rng.pick(days)),
    }
}

const BIRTH_YEARS: &[i32] = &[1979, 1980, 1981];
const BIRTH_MONTHS: &[u32] = &[1, 2, 6, 12];
const BIRTH_DAYS: &[u32] = &[1, 14, 28];
const OBS_YEARS: &[i32] = &[2020, 2021, 2022];
const OBS_MONTHS: &[u32] = &[1, 6, 12];
const OBS_DAYS: &[u32] = &[1, 15, 30];
/// Times (with seconds, as FHIR requires in a resource); some cross a day boundary in UTC.
const TIMES: &[&str] = &["T10:30:00Z", "T23:30:00-05:00", "T00:15:00+02:00", "T10:30:00.250Z"];

/// A `dateTime` of any precision, time zone included.
fn date_time_value(rng: &mut Rng) -> String {
    if rng.chance(35) {
        let day = format!(
            "{}-{:02}-{:02}",
            rng.pick(OBS_YEARS),
            rng.pick(OBS_MONTHS),
            rng.pick(OBS_DAYS)
        );
        format!("{day}{}", rng.pick(TIMES))
    } else {
        date_value(rng, OBS_YEARS, OBS_MONTHS, OBS_DAYS)
    }
}

fn gen_patient(rng: &mut Rng, id: &str) -> Value {
    let mut p = Map::new();
    p.insert("resourceType".into(), json!("Patient"));
    p.insert("id".into(), json!(id));
    if rng.chance(90) {
        let names: Vec<Value> = (0..1 + rng.below(2))
            .map(|_| {
                let mut n = Map::new();
                if rng.chance(90) {
                    n.insert("family".into(), json!(rng.pick(FAMILIES)));
                }
                let given: Vec<&str> = (0..rng.below(3)).map(|_| *rng.pick(GIVENS)).collect();
                if !given.is_empty() {
                    n.insert("given".into(), json!(given));
                }
                Value::Object(n)
            })
            .collect();
        p.insert("name".into(), Value::Array(names));
    }
    if rng.chance(80) {
        p.insert("gender".into(), json!(rng.pick(GENDERS)));
    }
    if rng.chance(85) {
        p.insert("birthDate".into(), json!(date_value(rng, BIRTH_YEARS, BIRTH_MONTHS, BIRTH_DAYS)));
    }
    let identifiers: Vec<Value> = (0..rng.below(3))
        .map(|_| {
            let mut identifier = Map::new();
            if rng.chance(70) {
                identifier.insert("system".into(), json!(rng.pick(ID_SYSTEMS)));
            }
            identifier.insert("value".into(), json!(rng.pick(ID_VALUES)));
            if rng.chance(30) {
                let (code, text) = *rng.pick(ID_TYPES);
                let mut ty = json!({"coding": [{"system": V2_0203, "code": code}]});
                if rng.chance(50) {
                    ty["text"] = json!(text);
                }
                identifier.insert("type".into(), ty);
            }
            Value::Object(identifier)
        })
        .collect();
    if !identifiers.is_empty() {
        p.insert("identifier".into(), Value::Array(identifiers));
    }
    match rng.below(3) {
        0 => {
            p.insert("active".into(), json!(true));
        }
        1 => {
            p.insert("active".into(), json!(false));
        }
        _ => {}
    }
    let addresses: Vec<Value> = (0..rng.below(3))
        .map(|_| {
            let mut a = Map::new();
            if rng.chance(50) {
                a.insert("line".into(), json!([rng.pick(LINES)]));
            }
            if rng.chance(85) {
                a.insert("city".into(), json!(rng.pick(CITIES)));
            }
            Value::Object(a)
        })
        .collect();
    if !addresses.is_empty() {
        p.insert("address".into(), Value::Array(addresses));
    }
    let telecom: Vec<Value> = (0..rng.below(3))
        .map(|_| {
            if rng.chance(50) {
                json!({"system": "phone", "value": rng.pick(PHONES)})
            } else {
                json!({"system": "email", "value": rng.pick(EMAILS)})
            }
        })
        .collect();
    if !telecom.is_empty() {
        p.insert("telecom".into(), Value::Array(telecom));
    }
    add_meta(rng, &mut p);
    Value::Object(p)
}

/// Sometimes `meta.tag` and `meta.source` (the store adds `versionId` and `lastUpdated`).
fn add_meta(rng: &mut Rng, resource: &mut Map<String, Value>) {
    let mut meta = Map::new();
    if rng.chance(30) {
        let tags: Vec<Value> = (0..1 + rng.below(2))
            .map(|_| json!({"system": TAG_SYSTEM, "code": rng.pick(TAGS)}))
            .collect();
        meta.insert("tag".into(), Value::Array(tags));
    }
    if rng.chance(30) {
        meta.insert("source".into(), json!(rng.pick(SOURCES)));
    }
    if !meta.is_empty() {
        resource.insert("meta".into(), Value::Object(meta));
    }
}

fn gen_quantity(rng: &mut Rng) -> Value {
    let (unit, code) = *rng.pick(UNITS);
    let mut q = Map::new();
    let value = *rng.pick(NUMBERS);
    q.insert("value".into(), number(value));
    q.insert("unit".into(), json!(unit));
    if let Some(code) = code {
        if rng.chance(85) {
            q.insert("system".into(), json!(UCUM));
        }
        q.insert("code".into(), json!(code));
    }
    Value::Object(q)
}

fn gen_code(rng: &mut Rng) -> Value {
    let codings: Vec<Value> = (0..1 + usize::from(rng.chance(20)))
        .map(|_| {
            let (system, code, display) = *rng.pick(CODES);
            let mut c = Map::new();
            if rng.chance(90) {
                c.insert("system".into(), json!(system));
            }
            c.insert("code".into(), json!(code));
            if rng.chance(50) {
                c.insert("display".into(), json!(display));
            }
            Value::Object(c)
        })
        .collect();
    let mut cc = Map::new();
    cc.insert("coding".into(), Value::Array(codings));
    if rng.chance(40) {
        cc.insert("text".into(), json!(rng.pick(CODE_TEXTS)));
    }
    Value::Object(cc)
}

/// `existing`: how many Observations exist before this one (for `hasMember`).
fn gen_observation(rng: &mut Rng, id: &str, existing: usize) -> Value {
    let mut o = Map::new();
    o.insert("resourceType".into(), json!("Observation"));
    o.insert("id".into(), json!(id));
    o.insert("status".into(), json!(rng.pick(STATUSES)));
    if rng.chance(70) {
        let category =
            json!({"coding": [{"system": CATEGORY_SYSTEM, "code": rng.pick(CATEGORIES)}]});
        o.insert("category".into(), json!([category]));
    }
    o.insert("code".into(), gen_code(rng));
    let subject = match rng.below(20) {
        0..=11 => Some(format!("Patient/{}", patient_id(rng.below(PATIENTS)))),
        12 => Some(format!("{ELSEWHERE}/Patient/{}", patient_id(rng.below(PATIENTS)))),
        13 => Some(format!("Patient/{}/_history/1", patient_id(rng.below(PATIENTS)))),
        14 | 15 => Some(format!("Patient/ghost{}", rng.below(3))),
        16 => Some("Group/g1".to_owned()),
        17 => {
            let identifier = json!({"system": rng.pick(ID_SYSTEMS), "value": rng.pick(ID_VALUES)});
            o.insert("subject".into(), json!({"identifier": identifier}));
            None
        }
        _ => None,
    };
    if let Some(reference) = subject {
        o.insert("subject".into(), json!({"reference": reference}));
    }
    match rng.below(10) {
        0..=5 => {
            o.insert("effectiveDateTime".into(), json!(date_time_value(rng)));
        }
        6..=8 => {
            let mut period = Map::new();
            match rng.below(4) {
                0 => {
                    period.insert("start".into(), json!(date_time_value(rng)));
                }
                1 => {
                    period.insert("end".into(), json!(date_time_value(rng)));
                }
                _ => {
                    // A closed period (the generator does not care whether start <= end).
                    period.insert("start".into(), json!(date_time_value(rng)));
                    period.insert("end".into(), json!(date_time_value(rng)));
                }
            }
            o.insert("effectivePeriod".into(), Value::Object(period));
        }
        _ => {}
    }
    match rng.below(20) {
        0..=11 => {
            o.insert("valueQuantity".into(), gen_quantity(rng));
        }
        12..=14 => {
            o.insert("valueString".into(), json!(rng.pick(VALUE_STRINGS)));
        }
        _ => {}
    }
    if rng.chance(30) {
        let components: Vec<Value> = (0..1 + rng.below(2))
            .map(|_| {
                let mut c = Map::new();
                c.insert("code".into(), gen_code(rng));
                if rng.chance(85) {
                    c.insert("valueQuantity".into(), gen_quantity(rng));
                }
                Value::Object(c)
            })
            .collect();
        o.insert("component".into(), Value::Array(components));
    }
    if existing > 0 && rng.chance(20) {
        let member = format!("Observation/{}", observation_id(rng.below(existing)));
        o.insert("hasMember".into(), json!([{"reference": member}]));
    }
    add_meta(rng, &mut o);
    Value::Object(o)
}

fn list_id(i: usize) -> String {
    format!("l{i}")
}

/// Sometimes a narrative (and, on an Observation, a note), from the text stream.
fn with_text(rng: &mut Rng, mut resource: Value) -> Value {
    let observation = resource["resourceType"] == "Observation";
    if rng.chance(if observation { 40 } else { 60 }) {
        let parts: Vec<&str> = (0..1 + rng.below(2)).map(|_| *rng.pick(NARRATIVES)).collect();
        let joined = if rng.chance(50) { parts.join(" ") } else { parts.join("</p><p>") };
        let div = format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{joined}</p></div>");
        resource["text"] = json!({"status": "generated", "div": div});
    }
    if observation && rng.chance(40) {
        resource["note"] = json!([{"text": rng.pick(NOTES)}]);
    }
    resource
}

/// A List of a few Patients and Observations (some of them deleted or never there).
fn gen_list(rng: &mut Rng, id: &str) -> Value {
    let entries: Vec<Value> = (0..1 + rng.below(8))
        .map(|_| {
            let item = match rng.below(10) {
                0..=4 => format!("Patient/{}", patient_id(rng.below(PATIENTS))),
                5..=8 => format!("Observation/{}", observation_id(rng.below(OBSERVATIONS))),
                _ => format!("Patient/ghost{}", rng.below(3)),
            };
            json!({"item": {"reference": item}})
        })
        .collect();
    json!({"resourceType": "List", "id": id, "status": "current", "mode": "working",
           "entry": entries})
}

fn container_id(i: usize) -> String {
    format!("c{i}")
}

/// A resource holding contained resources: an Observation with contained Patients (`cp0`,
/// `cp1`; its subject often a `#` reference to one of them, or to one that is not there) and
/// sometimes an Observation (`co0`) about one of them; or a Patient with contained
/// Observations (`co0`, `co1`) about a contained Patient (`cp0`) or a stored one. Contained
/// ids repeat across containers, and `c…` ids are the containers'.
fn gen_container(rng: &mut Rng, i: usize) -> Value {
    let id = container_id(i);
    let local = |rng: &mut Rng, n: usize| -> Value {
        let target = if n > 0 && rng.chance(85) {
            format!("#cp{}", rng.below(n))
        } else {
            "#nowhere".to_owned()
        };
        json!({"reference": target})
    };
    let mut contained = Vec::new();
    let mut resource = if i % 3 == 2 {
        let p = gen_patient(rng, &id);
        let patients = rng.below(2);
        for k in 0..patients {
            contained.push(gen_patient(rng, &format!("cp{k}")));
        }
        for k in 0..1 + rng.below(2) {
            let mut o = gen_observation(rng, &format!("co{k}"), OBSERVATIONS);
            if rng.chance(60) {
                o["subject"] = local(rng, patients);
            }
            contained.push(o);
        }
        p
    } else {
        let mut o = gen_observation(rng, &id, OBSERVATIONS);
        let patients = rng.below(3);
        for k in 0..patients {
            contained.push(gen_patient(rng, &format!("cp{k}")));
        }
        if rng.chance(70) {
            o["subject"] = local(rng, patients);
        }
        if rng.chance(30) {
            let mut inner = gen_observation(rng, "co0", OBSERVATIONS);
            if rng.chance(60) {
                inner["subject"] = local(rng, patients);
            }
            contained.push(inner);
        }
        o
    };
    // Contained resources are shuffled a little (positions must not matter).
    if contained.len() > 1 && rng.chance(50) {
        contained.reverse();
    }
    if !contained.is_empty() {
        resource["contained"] = Value::Array(contained);
    }
    resource
}

fn put(resource: Value) -> WriteOp {
    let index = kiln_search::extract(&resource);
    WriteOp::Put {
        resource,
        method: WriteMethod::Put,
        precondition: Precondition::None,
        unique_keys: vec![],
        index,
    }
}

async fn write_all(store: &dyn Store, project: &ProjectId, ops: Vec<WriteOp>) {
    for chunk in ops.chunks(25) {
        let results = store.write(project, chunk.to_vec(), Atomicity::All).await.unwrap();
        for r in results {
            r.unwrap();
        }
    }
}

/// Writes the population (then updates, deletes and re-creates some of it) and returns the
/// live resources as the store holds them (meta included).
async fn populate(
    store: &dyn Store,
    project: &ProjectId,
    rng: &mut Rng,
    text_rng: &mut Rng,
    contained_rng: &mut Rng,
) -> Vec<Value> {
    let mut keys: Vec<(&str, String)> = Vec::new();
    let mut ops = Vec::new();
    for i in 0..PATIENTS {
        ops.push(put(with_text(text_rng, gen_patient(rng, &patient_id(i)))));
        keys.push(("Patient", patient_id(i)));
    }
    for i in 0..OBSERVATIONS {
        ops.push(put(with_text(text_rng, gen_observation(rng, &observation_id(i), i))));
        keys.push(("Observation", observation_id(i)));
    }
    write_all(store, project, ops).await;

    // Updates: new content under the same id (the index must follow).
    let mut updated = BTreeSet::new();
    for _ in 0..15 {
        updated.insert(rng.below(keys.len()));
    }
    let ops = updated
        .iter()
        .map(|&k| {
            let (ty, id) = &keys[k];
            match *ty {
                "Patient" => put(with_text(text_rng, gen_patient(rng, id))),
                _ => put(with_text(text_rng, gen_observation(rng, id, OBSERVATIONS))),
            }
        })
        .collect();
    write_all(store, project, ops).await;

    // Small edits of stored versions: the same content again, or one element fewer, so that
    // most index rows stay as they were and the rest shift (the store may keep unchanged rows).
    let mut edit_rng = Rng(rng.next_u64());
    let mut ops = Vec::new();
    for _ in 0..20 {
        let (ty, id) = &keys[edit_rng.below(keys.len())];
        let mut resource: Value =
            serde_json::from_slice(&store.read(project, ty, id).await.unwrap().body).unwrap();
        let fields: Vec<String> = resource
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !matches!(k.as_str(), "resourceType" | "id" | "meta"))
            .cloned()
            .collect();
        if !fields.is_empty() && !edit_rng.chance(30) {
            let gone = &fields[edit_rng.below(fields.len())];
            resource.as_object_mut().unwrap().remove(gone);
        }
        ops.push(put(resource));
    }
    write_all(store, project, ops).await;

    // Deletes (some of them of referenced Patients and Observations), then re-creates.
    let mut deleted = BTreeSet::new();
    for _ in 0..12 {
        deleted.insert(rng.below(keys.len()));
    }
    let ops = deleted
        .iter()
        .map(|&k| WriteOp::Delete {
            resource_type: keys[k].0.to_owned(),
            id: keys[k].1.clone(),
            precondition: Precondition::None,
        })
        .collect();
    write_all(store, project, ops).await;
    let mut ops = Vec::new();
    for &k in &deleted {
        if rng.chance(25) {
            let (ty, id) = &keys[k];
            ops.push(match *ty {
                "Patient" => put(with_text(text_rng, gen_patient(rng, id))),
                _ => put(with_text(text_rng, gen_observation(rng, id, OBSERVATIONS))),
            });
        }
    }
    write_all(store, project, ops).await;

    // Lists (for `_list`); the last one deleted again.
    let lists: Vec<String> = (0..LISTS).map(list_id).collect();
    let ops = lists.iter().map(|id| put(gen_list(text_rng, id))).collect();
    write_all(store, project, ops).await;
    let gone = WriteOp::Delete {
        resource_type: "List".into(),
        id: list_id(LISTS - 1),
        precondition: Precondition::None,
    };
    write_all(store, project, vec![gone]).await;
    keys.extend(lists.into_iter().map(|id| ("List", id)));

    // Containers: written, some rewritten (their contained rows must be replaced), one
    // deleted (its contained rows must go).
    let crng = contained_rng;
    let ops = (0..CONTAINERS).map(|i| put(gen_container(crng, i))).collect();
    write_all(store, project, ops).await;
    let ops = (0..CONTAINERS).filter(|i| i % 5 == 1).map(|i| put(gen_container(crng, i))).collect();
    write_all(store, project, ops).await;
    let gone = container_id(CONTAINERS - 1);
    let ty = if (CONTAINERS - 1) % 3 == 2 { "Patient" } else { "Observation" };
    let op =
        WriteOp::Delete { resource_type: ty.into(), id: gone, precondition: Precondition::None };
    write_all(store, project, vec![op]).await;
    for i in 0..CONTAINERS {
        keys.push((if i % 3 == 2 { "Patient" } else { "Observation" }, container_id(i)));
    }

    let mut live = Vec::new();
    for (ty, id) in &keys {
        let stored = store.read(project, ty, id).await.unwrap();
        if !stored.deleted {
            live.push(serde_json::from_slice(&stored.body).unwrap());
        }
    }
    live
}

/// The live resources, indexed for the oracle's chains and `_has`.
struct Live {
    all: Vec<Value>,
    by_key: HashMap<(String, String), usize>,
    /// For each resource: the `(type, id)` its index rows refer to (through any parameter).
    refers_to: Vec<Vec<(String, String)>>,
    /// For each `(type, id)`: the live resources referring to it.
    referrers: HashMap<(String, String), Vec<usize>>,
}

impl Live {
    fn new(all: Vec<Value>) -> Live {
        let by_key = all.iter().enumerate().map(|(i, r)| (key_of(r), i)).collect();
        let mut refers_to = Vec::new();
        let mut referrers: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (i, r) in all.iter().enumerate() {
            let mut targets = Vec::new();
            for e in kiln_search::extract(r) {
                if let IndexValue::Reference(RefValue::Local { target_type, id }) = e.value {
                    let target = (target_type, id);
                    if !targets.contains(&target) {
                        referrers.entry(target.clone()).or_default().push(i);
                        targets.push(target);
                    }
                }
            }
            refers_to.push(targets);
        }
        Live { all, by_key, refers_to, referrers }
    }

    /// The oracle's verdict: the live resources matching `query`.
    ///
    /// The oracle's `_has` visits every resource of the source type, re-extracting each (slow
    /// on purpose; in a debug build, with nested `_has`, that is most of this test's time).
    /// So each candidate gets a view of the live set ([`Near`]) that lists by type only the
    /// resources referring to something within `radius` reference links (either direction)
    /// of the candidate, `radius` being the deepest chain/`_has` nesting above a `_has`: every
    /// resource a `_has` can be evaluated on is that close, and a source that refers to none
    /// of them cannot match. No verdict changes; `self_check` also runs the plain oracle.
    fn oracle(&self, query: &SearchQuery, self_check: bool) -> Found {
        let full = || -> Found {
            self.all.iter().filter(|r| matches_in(query, r, self)).map(key_of).collect()
        };
        let Some(radius) = query.filters.iter().filter_map(has_depth).max() else {
            return full();
        };
        let found: Found = self
            .all
            .iter()
            .filter(|r| matches_in(query, r, &self.near(r, radius)))
            .map(key_of)
            .collect();
        if self_check {
            assert_eq!(found, full(), "the narrowed oracle differs for {:?}", query.filters);
        }
        found
    }

    /// The view of the live set from `resource` (see [`Live::oracle`]).
    fn near(&self, resource: &Value, radius: usize) -> Near<'_> {
        let mut ball = vec![key_of(resource)];
        let mut frontier = ball.clone();
        for _ in 0..radius {
            let mut next = Vec::new();
            for key in &frontier {
                let forward = self.by_key.get(key).map_or(&[][..], |&i| &self.refers_to[i][..]);
                let backward = self.referrers.get(key).into_iter().flatten();
                let neighbours =
                    forward.iter().cloned().chain(backward.map(|&i| key_of(&self.all[i])));
                for n in neighbours {
                    if !ball.contains(&n) {
                        ball.push(n.clone());
                        next.push(n);
                    }
                }
            }
            frontier = next;
        }
        let mut sources: Vec<usize> =
            ball.iter().filter_map(|k| self.referrers.get(k)).flatten().copied().collect();
        sources.sort_unstable();
        sources.dedup();
        Near { live: self, sources }
    }
}

/// For a filter holding a `_has` (at any depth): how many chain/`_has` links lie above its
/// deepest `_has`.
fn has_depth(f: &Filter) -> Option<usize> {
    match f {
        Filter::Has { then, .. } => Some(has_depth(then).map_or(0, |d| d + 1)),
        Filter::Chain { then, .. } => has_depth(then).map(|d| d + 1),
        Filter::And(parts) | Filter::Or(parts) => parts.iter().filter_map(has_depth).max(),
        Filter::Not(inner) => has_depth(inner),
        _ => None,
    }
}

impl ResourceSet for Live {
    fn get(&self, resource_type: &str, id: &str) -> Option<&Value> {
        self.by_key.get(&(resource_type.to_owned(), id.to_owned())).map(|&i| &self.all[i])
    }

    fn of_type<'a>(&'a self, resource_type: &'a str) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        Box::new(self.all.iter().filter(move |r| r["resourceType"] == resource_type))
    }
}

/// The live set seen from one resource: every resource by key, but by type only those in
/// `sources` (see [`Live::oracle`]).
struct Near<'a> {
    live: &'a Live,
    sources: Vec<usize>,
}

impl ResourceSet for Near<'_> {
    fn get(&self, resource_type: &str, id: &str) -> Option<&Value> {
        self.live.get(resource_type, id)
    }

    fn of_type<'a>(&'a self, resource_type: &'a str) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        let all = &self.live.all;
        Box::new(
            self.sources
                .iter()
                .map(move |&i| &all[i])
                .filter(move |r| r["resourceType"] == resource_type),
        )
    }
}

fn key_of(r: &Value) -> (String, String) {
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
    (s("resourceType"), s("id"))
}

// ---------------------------------------------------------------------------------------------
// The queries.

type Pairs = Vec<(String, String)>;

/// A string search value derived from `word`: whole, a prefix, a substring or its folded
/// form, in some case.
fn probe(rng: &mut Rng, word: &str) -> String {
    let chars: Vec<char> = word.chars().collect();
    let s: String = match rng.below(5) {
        0 | 1 => word.to_owned(),
        2 => chars[..1 + rng.below(chars.len())].iter().collect(),
        3 => {
            let a = rng.below(chars.len());
            let b = a + 1 + rng.below(chars.len() - a);
            chars[a..b].iter().collect()
        }
        _ => kiln_search::normalize_string(word),
    };
    match rng.below(5) {
        0 => s.to_uppercase(),
        1 => s.to_lowercase(),
        _ => s,
    }
}

/// 1 to 3 comma-separated alternatives.
fn alternatives(rng: &mut Rng, mut one: impl FnMut(&mut Rng) -> String) -> String {
    let n = match rng.below(10) {
        0..=6 => 1,
        7 | 8 => 2,
        _ => 3,
    };
    (0..n).map(|_| one(rng)).collect::<Vec<_>>().join(",")
}

fn string_filter(rng: &mut Rng, code: &str, vocab: &[&str]) -> (String, String) {
    let modifier = *rng.pick(&["", "", ":exact", ":contains"]);
    let value = alternatives(rng, |rng| {
        let word = rng.pick(vocab);
        if modifier == ":exact" && rng.chance(70) { (*word).to_owned() } else { probe(rng, word) }
    });
    (format!("{code}{modifier}"), value)
}

fn of_type_value(rng: &mut Rng) -> String {
    format!("{V2_0203}|{}|{}", rng.pick(ID_TYPES).0, rng.pick(ID_VALUES))
}

/// `_tag`, `_source` (`:below`, `:above`), `_lastUpdated`, on either type.
fn meta_filter(rng: &mut Rng) -> (String, String) {
    match rng.below(6) {
        0 | 1 => token_filter(rng, "_tag", true, |rng| match rng.below(3) {
            0 => (*rng.pick(TAGS)).to_owned(),
            1 => format!("{TAG_SYSTEM}|"),
            _ => format!("{TAG_SYSTEM}|{}", rng.pick(TAGS)),
        }),
        2 => ("_source".into(), alternatives(rng, |rng| (*rng.pick(SOURCES)).to_owned())),
        3 => (
            "_source:below".into(),
            (*rng.pick(&["http://src.example", "http://src.example/a/", "urn:"])).to_owned(),
        ),
        4 => (
            "_source:above".into(),
            (*rng.pick(&["http://src.example/a/b/c", "http://src.example/a", "urn:src:x:y"]))
                .to_owned(),
        ),
        _ => (
            "_lastUpdated".into(),
            (*rng.pick(&["gt2000", "lt2000", "ge2000-01-01", "sa1999"])).to_owned(),
        ),
    }
}

fn name_words(rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => (*rng.pick(FAMILIES)).to_owned(),
        1 => (*rng.pick(GIVENS)).to_owned(),
        _ => format!("{} {}", rng.pick(GIVENS), rng.pick(FAMILIES)),
    }
}

fn identifier_value(rng: &mut Rng) -> String {
    let (system, value) = (*rng.pick(ID_SYSTEMS), *rng.pick(ID_VALUES));
    match rng.below(5) {
        0 | 1 => format!("{system}|{value}"),
        2 => format!("|{value}"),
        3 => format!("{system}|"),
        _ => value.to_owned(),
    }
}

/// A token value for an Observation code: `system|code`, `code`, `|code`, `system|`.
fn code_value(rng: &mut Rng) -> String {
    let (system, code, _) = *rng.pick(CODES);
    match rng.below(6) {
        0..=2 => format!("{system}|{code}"),
        3 => code.to_owned(),
        4 => format!("|{code}"),
        _ => format!("{system}|"),
    }
}

fn code_text(rng: &mut Rng) -> String {
    let word = if rng.chance(50) { *rng.pick(CODE_TEXTS) } else { rng.pick(CODES).2 };
    let chars: Vec<char> = word.chars().collect();
    let s: String = chars[..1 + rng.below(chars.len())].iter().collect();
    if rng.chance(30) { s.to_uppercase() } else { s }
}

fn token_filter(
    rng: &mut Rng,
    code: &str,
    not: bool,
    mut value: impl FnMut(&mut Rng) -> String,
) -> (String, String) {
    let modifier = if not && rng.chance(25) { ":not" } else { "" };
    (format!("{code}{modifier}"), alternatives(rng, &mut value))
}

const DATE_PREFIXES: &[&str] = &["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"];
const NUMBER_PREFIXES: &[&str] = &["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];

fn birthdate_value(rng: &mut Rng) -> String {
    let prefix = rng.pick(DATE_PREFIXES);
    let date = match rng.below(8) {
        0 => format!("{}-{:02}-{:02}T12:00:00Z", rng.pick(BIRTH_YEARS), rng.pick(BIRTH_MONTHS), 14),
        1 => (*rng.pick(&["1978", "1982", "1980-06-14"])).to_owned(),
        _ => date_value(rng, BIRTH_YEARS, BIRTH_MONTHS, BIRTH_DAYS),
    };
    format!("{prefix}{date}")
}

fn obs_date_value(rng: &mut Rng) -> String {
    let prefix = rng.pick(DATE_PREFIXES);
    let date = match rng.below(8) {
        0 => format!(
            "{}-{:02}-{:02}T10:30",
            rng.pick(OBS_YEARS),
            rng.pick(OBS_MONTHS),
            rng.pick(OBS_DAYS)
        ),
        1 => (*rng.pick(&["2019", "2023", "2021-06-15T10:30:00Z", "2021-06-15T23:30:00-05:00"]))
            .to_owned(),
        _ => date_time_value(rng),
    };
    format!("{prefix}{date}")
}

/// A quantity search value: `[prefix]N`, `N||unit`, `N|system|code`, `N|system|`.
fn quantity_value(rng: &mut Rng) -> String {
    let prefix = rng.pick(NUMBER_PREFIXES);
    let n = rng.pick(NUMBERS);
    let (unit, code) = *rng.pick(UNITS);
    let tail = match rng.below(8) {
        0..=3 => String::new(),
        4 | 5 => format!("||{unit}"),
        6 => format!("|{UCUM}|{}", code.unwrap_or(unit)),
        _ => format!("|{UCUM}|"),
    };
    format!("{prefix}{n}{tail}")
}

fn patient_ref(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => format!("ghost{}", rng.below(3)),
        _ => patient_id(rng.below(PATIENTS)),
    }
}

/// A reference value for `subject`/`patient`: `Patient/id`, a bare id, `Group/g1`.
fn reference_filter(rng: &mut Rng, code: &str) -> (String, String) {
    match rng.below(6) {
        0 | 1 => {
            (code.to_owned(), alternatives(rng, |rng| format!("Patient/{}", patient_ref(rng))))
        }
        2 | 3 => (code.to_owned(), alternatives(rng, patient_ref)),
        4 => (format!("{code}:Patient"), alternatives(rng, patient_ref)),
        _ if code == "subject" => (code.to_owned(), "Group/g1".to_owned()),
        _ => (format!("{code}:Patient"), format!("Patient/{}", patient_ref(rng))),
    }
}

fn composite_value(rng: &mut Rng) -> String {
    let (system, code, _) = *rng.pick(CODES);
    let token = if rng.chance(70) { format!("{system}|{code}") } else { code.to_owned() };
    format!("{token}${}", quantity_value(rng))
}

fn ids(rng: &mut Rng, ty: &str) -> String {
    alternatives(rng, |rng| match ty {
        "Patient" => patient_id(rng.below(PATIENTS + 3)),
        _ => observation_id(rng.below(OBSERVATIONS + 3)),
    })
}

fn missing(rng: &mut Rng, code: &str) -> (String, String) {
    let value = if rng.chance(50) { "true" } else { "false" };
    (format!("{code}:missing"), value.to_owned())
}

/// One Patient filter.
fn patient_filter(rng: &mut Rng) -> (String, String) {
    match rng.below(28) {
        0 => string_filter(rng, "family", FAMILIES),
        1 => string_filter(rng, "given", GIVENS),
        2 => {
            let modifier = *rng.pick(&["", ":exact", ":contains"]);
            let value = alternatives(rng, |rng| {
                let words = name_words(rng);
                if modifier == ":exact" { words } else { probe(rng, &words) }
            });
            (format!("name{modifier}"), value)
        }
        3 => string_filter(rng, "address-city", CITIES),
        4 => string_filter(rng, "address", &[CITIES, LINES].concat()),
        5 => token_filter(rng, "gender", true, |rng| {
            (*rng.pick(&[GENDERS, &["bogus"]].concat())).to_owned()
        }),
        6 => token_filter(rng, "identifier", true, identifier_value),
        7 => token_filter(rng, "active", true, |rng| (*rng.pick(&["true", "false"])).to_owned()),
        8 => ("birthdate".into(), birthdate_value(rng)),
        9 => ("birthdate".into(), alternatives(rng, birthdate_value)),
        10 => {
            let code = *rng.pick(&["telecom", "phone", "email"]);
            token_filter(rng, code, true, |rng| match rng.below(4) {
                0 => format!("phone|{}", rng.pick(PHONES)),
                1 => format!("email|{}", rng.pick(EMAILS)),
                2 => (*rng.pick(&["phone|", "email|"])).to_owned(),
                _ => (*rng.pick(&[PHONES, EMAILS].concat())).to_owned(),
            })
        }
        11 => {
            let code = *rng.pick(&["active", "gender", "birthdate", "family", "identifier"]);
            missing(rng, code)
        }
        12 => {
            let modifier = if rng.chance(20) { ":not" } else { "" };
            (format!("_id{modifier}"), ids(rng, "Patient"))
        }
        13 => ("_has:Observation:patient:code".into(), alternatives(rng, code_value)),
        14 => token_filter(rng, "_has:Observation:subject:status", true, |rng| {
            (*rng.pick(STATUSES)).to_owned()
        }),
        15 => ("_has:Observation:patient:value-quantity".into(), quantity_value(rng)),
        16 => ("_has:Observation:patient:date".into(), obs_date_value(rng)),
        17 => ("_has:Observation:patient:code:text".into(), code_text(rng)),
        18 => (
            "_has:Observation:patient:_has:Observation:has-member:status".into(),
            alternatives(rng, |rng| (*rng.pick(STATUSES)).to_owned()),
        ),
        19 => ("_has:Observation:patient:patient.gender".into(), (*rng.pick(GENDERS)).to_owned()),
        20 => {
            ("_has:Observation:patient:component-code-value-quantity".into(), composite_value(rng))
        }
        21 => {
            let (name, value) = missing(rng, "value-quantity");
            (format!("_has:Observation:patient:{name}"), value)
        }
        22 => {
            ("_lastUpdated".into(), (*rng.pick(&["gt2000", "lt2000", "ge2000-01-01"])).to_owned())
        }
        23 => ("identifier:of-type".into(), alternatives(rng, of_type_value)),
        24 => ("identifier:text".into(), {
            let text = rng.pick(ID_TYPES).1;
            probe(rng, text)
        }),
        25 | 26 => meta_filter(rng),
        _ => string_filter(rng, "family", FAMILIES),
    }
}

/// One Observation filter.
fn observation_filter(rng: &mut Rng) -> (String, String) {
    match rng.below(34) {
        0 | 1 => token_filter(rng, "code", true, code_value),
        2 => ("code:text".into(), alternatives(rng, code_text)),
        3 => token_filter(rng, "category", true, |rng| match rng.below(3) {
            0 => format!("{CATEGORY_SYSTEM}|{}", rng.pick(CATEGORIES)),
            1 => (*rng.pick(CATEGORIES)).to_owned(),
            _ => format!("{CATEGORY_SYSTEM}|"),
        }),
        4 => token_filter(rng, "status", true, |rng| (*rng.pick(STATUSES)).to_owned()),
        5 => {
            let code = *rng.pick(&["combo-code", "component-code"]);
            token_filter(rng, code, true, code_value)
        }
        6 | 7 => ("value-quantity".into(), alternatives(rng, quantity_value)),
        8 => {
            let code = *rng.pick(&["component-value-quantity", "combo-value-quantity"]);
            (code.to_owned(), alternatives(rng, quantity_value))
        }
        9 => string_filter(rng, "value-string", VALUE_STRINGS),
        10 | 11 => ("date".into(), obs_date_value(rng)),
        12 => ("date".into(), alternatives(rng, obs_date_value)),
        13 => reference_filter(rng, "subject"),
        14 => reference_filter(rng, "patient"),
        15 => {
            let code = *rng.pick(&[
                "code-value-quantity",
                "component-code-value-quantity",
                "combo-code-value-quantity",
            ]);
            (code.to_owned(), alternatives(rng, composite_value))
        }
        16 => {
            let (name, value) = string_filter(rng, "family", FAMILIES);
            (format!("subject:Patient.{name}"), value)
        }
        17 => {
            let (name, value) =
                token_filter(rng, "gender", true, |rng| (*rng.pick(GENDERS)).to_owned());
            (format!("patient.{name}"), value)
        }
        18 => {
            let (name, value) = token_filter(rng, "identifier", true, identifier_value);
            (format!("patient.{name}"), value)
        }
        19 => ("patient.birthdate".into(), birthdate_value(rng)),
        20 => {
            let (name, value) = string_filter(rng, "name", FAMILIES);
            (format!("subject.{name}"), value)
        }
        21 => (
            "subject:Patient._has:Observation:patient:status".into(),
            (*rng.pick(STATUSES)).to_owned(),
        ),
        22 => (
            "has-member".into(),
            alternatives(rng, |rng| {
                format!("Observation/{}", observation_id(rng.below(OBSERVATIONS)))
            }),
        ),
        23 => ("has-member:Observation.code".into(), code_value(rng)),
        24 => ("_has:Observation:has-member:status".into(), (*rng.pick(STATUSES)).to_owned()),
        25 => {
            let code = *rng.pick(&[
                "value-quantity",
                "subject",
                "date",
                "category",
                "code-value-quantity",
                "component-code",
            ]);
            missing(rng, code)
        }
        26 => {
            let modifier = if rng.chance(20) { ":not" } else { "" };
            (format!("_id{modifier}"), ids(rng, "Observation"))
        }
        27 => ("patient.active".into(), (*rng.pick(&["true", "false"])).to_owned()),
        28 => ("patient:missing".into(), (*rng.pick(&["true", "false"])).to_owned()),
        29 => ("subject:identifier".into(), alternatives(rng, identifier_value)),
        30 => (
            "subject".into(),
            alternatives(rng, |rng| format!("{ELSEWHERE}/Patient/{}", patient_ref(rng))),
        ),
        31 | 32 => meta_filter(rng),
        _ => token_filter(rng, "code", true, code_value),
    }
}

fn gen_query(rng: &mut Rng, ty: &str) -> Pairs {
    let n = match rng.below(10) {
        0..=4 => 1,
        5..=7 => 2,
        _ => 3,
    };
    (0..n)
        .map(|_| if ty == "Patient" { patient_filter(rng) } else { observation_filter(rng) })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// `_filter` searches: random `and`/`or`/`not` trees of comparisons, sometimes with ordinary
// parameters or a second `_filter` beside them.

/// A JSON string literal.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A string value for `op`: whole words for `eq`/`ne`, tails for `ew`, else [`probe`].
fn filter_string(rng: &mut Rng, op: &str, vocab: &[&str]) -> String {
    let word = *rng.pick(vocab);
    let chars: Vec<char> = word.chars().collect();
    let s: String = match op {
        "eq" | "ne" if rng.chance(70) => word.to_owned(),
        "ew" => chars[rng.below(chars.len())..].iter().collect(),
        _ => probe(rng, word),
    };
    let s = match rng.below(4) {
        0 => s.to_uppercase(),
        1 => kiln_search::normalize_string(&s),
        _ => s,
    };
    quoted(&s)
}

fn string_comparison(rng: &mut Rng, path: &str, vocab: &[&str]) -> String {
    let op = *rng.pick(&["eq", "ne", "co", "sw", "ew"]);
    format!("{path} {op} {}", filter_string(rng, op, vocab))
}

const FILTER_DATE_OPS: &[&str] = &["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"];

fn presence(rng: &mut Rng, path: &str) -> String {
    format!("{path} pr {}", rng.pick(&["true", "false"]))
}

/// A token `eq`/`ne` comparison; `values` gives the value.
fn token_comparison(rng: &mut Rng, path: &str, value: impl FnOnce(&mut Rng) -> String) -> String {
    let op = if rng.chance(25) { "ne" } else { "eq" };
    format!("{path} {op} {}", value(rng))
}

/// A code with the predefined system name `loinc` now and then.
fn filter_code(rng: &mut Rng) -> String {
    let (system, code, _) = *rng.pick(CODES);
    if system == LOINC && rng.chance(40) { format!("loinc|{code}") } else { code_value(rng) }
}

/// One Patient comparison (also the target of Observation chains).
fn patient_comparison(rng: &mut Rng, chained: bool) -> String {
    match rng.below(if chained { 8 } else { 13 }) {
        0 => string_comparison(rng, "family", FAMILIES),
        1 => string_comparison(rng, "given", GIVENS),
        2 => string_comparison(rng, "name", &[FAMILIES, GIVENS].concat()),
        3 => string_comparison(rng, "address-city", CITIES),
        4 => token_comparison(rng, "gender", |rng| {
            (*rng.pick(&[GENDERS, &["bogus"]].concat())).to_owned()
        }),
        5 => {
            let op = rng.pick(FILTER_DATE_OPS);
            format!("birthdate {op} {}", date_value(rng, BIRTH_YEARS, BIRTH_MONTHS, BIRTH_DAYS))
        }
        6 => token_comparison(rng, "active", |rng| (*rng.pick(&["true", "false"])).to_owned()),
        7 => {
            let code = *rng.pick(&["family", "birthdate", "active", "gender", "identifier"]);
            presence(rng, code)
        }
        8 => token_comparison(rng, "identifier", identifier_value),
        9 => token_comparison(rng, "_id", |rng| patient_id(rng.below(PATIENTS + 3))),
        10 => token_comparison(rng, "_has:Observation:patient:code", filter_code),
        11 => format!("_has:Observation:subject:status eq {}", rng.pick(STATUSES)),
        _ => token_comparison(rng, "_tag", |rng| format!("{TAG_SYSTEM}|{}", rng.pick(TAGS))),
    }
}

fn observation_comparison(rng: &mut Rng) -> String {
    match rng.below(14) {
        0 | 1 => token_comparison(rng, "code", filter_code),
        2 => token_comparison(rng, "status", |rng| (*rng.pick(STATUSES)).to_owned()),
        3 | 4 => {
            let op = rng.pick(NUMBER_PREFIXES[1..].as_ref());
            let (unit, code) = *rng.pick(UNITS);
            let tail = match rng.below(4) {
                0 | 1 => String::new(),
                2 => format!("||{unit}"),
                _ => format!("|ucum|{}", code.unwrap_or(unit)),
            };
            format!("value-quantity {op} {}{tail}", rng.pick(NUMBERS))
        }
        5 => {
            let op = rng.pick(FILTER_DATE_OPS);
            format!("date {op} {}", date_time_value(rng))
        }
        6 => {
            let op = *rng.pick(&["eq", "re", "ne"]);
            format!("subject {op} Patient/{}", patient_ref(rng))
        }
        7 => string_comparison(rng, "value-string", VALUE_STRINGS),
        8 => format!("subject.{}", patient_comparison(rng, true)),
        9 => format!("patient.{}", patient_comparison(rng, true)),
        10 => format!(
            "subject[{}].{}",
            filter_expression(rng, 2, &mut |rng| patient_comparison(rng, true)),
            patient_comparison(rng, true)
        ),
        11 => {
            let code = *rng.pick(&["value-quantity", "subject", "date", "code-value-quantity"]);
            presence(rng, code)
        }
        12 => format!("code-value-quantity eq {}", composite_value(rng)),
        _ => format!("has-member.status eq {}", rng.pick(STATUSES)),
    }
}

/// A random `and`/`or`/`not` tree of comparisons (`depth` limits it).
fn filter_expression(
    rng: &mut Rng,
    depth: usize,
    comparison: &mut dyn FnMut(&mut Rng) -> String,
) -> String {
    match if depth >= 3 { 0 } else { rng.below(10) } {
        0..=3 => comparison(rng),
        4 => format!("not ({})", filter_expression(rng, depth + 1, comparison)),
        5 => format!("({})", filter_expression(rng, depth + 1, comparison)),
        n => {
            let join = if n < 8 { "and" } else { "or" };
            let left = filter_expression(rng, depth + 1, comparison);
            let right = filter_expression(rng, depth + 1, comparison);
            format!("{left} {join} {right}")
        }
    }
}

fn gen_filter_query(rng: &mut Rng, ty: &str) -> Pairs {
    let mut comparison = |rng: &mut Rng| {
        if ty == "Patient" { patient_comparison(rng, false) } else { observation_comparison(rng) }
    };
    let mut pairs = vec![("_filter".to_owned(), filter_expression(rng, 0, &mut comparison))];
    if rng.chance(20) {
        pairs.push(("_filter".to_owned(), filter_expression(rng, 1, &mut comparison)));
    }
    if rng.chance(25) {
        pairs.push(if ty == "Patient" { patient_filter(rng) } else { observation_filter(rng) });
    }
    pairs
}

// ---------------------------------------------------------------------------------------------
// `_content`, `_text` and `_list` searches, and care-date windows (`$everything`'s
// `start`/`end`), all from the text stream.

/// A text probe: a vocabulary word or [`TEXT_PROBES`] entry, maybe cut or recased, escaped
/// for a search value.
fn text_probe(rng: &mut Rng) -> String {
    let word = match rng.below(10) {
        0..=3 => *rng.pick(TEXT_PROBES),
        4..=6 => *rng.pick(&[FAMILIES, GIVENS, CITIES, LINES, VALUE_STRINGS, CODE_TEXTS].concat()),
        7 | 8 => *rng.pick(NOTES),
        // In `meta` (which `_content` leaves out), and also in other elements.
        _ => *rng.pick(&[SOURCES, &[TAG_SYSTEM, "example"]].concat()),
    };
    let s = if rng.chance(75) { word.to_owned() } else { probe(rng, word) };
    s.replace('\\', "\\\\").replace(',', "\\,")
}

fn gen_text_query(rng: &mut Rng, ty: &str) -> Pairs {
    let lists = |rng: &mut Rng| alternatives(rng, |rng| list_id(rng.below(LISTS + 1)));
    let mut pairs = vec![match (rng.below(10), ty) {
        (0..=3, _) => ("_content".to_owned(), alternatives(rng, text_probe)),
        (4..=6, _) => ("_text".to_owned(), alternatives(rng, text_probe)),
        (7, _) => ("_list".to_owned(), lists(rng)),
        (8, "Patient") => {
            let code = *rng.pick(&["_content", "_text"]);
            (format!("_has:Observation:patient:{code}"), alternatives(rng, text_probe))
        }
        (8, _) => {
            let code = *rng.pick(&["_content", "_text"]);
            (format!("subject:Patient.{code}"), alternatives(rng, text_probe))
        }
        (_, "Patient") => ("_has:Observation:patient:_list".to_owned(), lists(rng)),
        (_, _) => ("patient._list".to_owned(), lists(rng)),
    }];
    if rng.chance(15) {
        let code = *rng.pick(&["_content", "_text", "_list"]);
        let value = if code == "_list" { lists(rng) } else { alternatives(rng, text_probe) };
        pairs.push((code.to_owned(), value));
    }
    if rng.chance(25) {
        pairs.push(if ty == "Patient" { patient_filter(rng) } else { observation_filter(rng) });
    }
    pairs
}

/// What `$everything`'s `start`/`end` add to its search (see the engine's `everything`
/// module), over Patients and Observations with one or both of them given a care date:
/// per dated type, "of this type, and some value overlaps the window or there is none";
/// every other type passes.
fn window_filter(rng: &mut Rng) -> Filter {
    let lo = match rng.below(4) {
        0 => i64::MIN,
        _ => kiln_search::date_range(&date_time_value(rng)).expect("a date").lo,
    };
    let hi = match rng.below(4) {
        0 => i64::MAX,
        1 => {
            kiln_search::date_range(&date_value(rng, BIRTH_YEARS, BIRTH_MONTHS, BIRTH_DAYS))
                .expect("a date")
                .hi
        }
        _ => kiln_search::date_range(&date_time_value(rng)).expect("a date").hi,
    };
    let dated: &[(&str, &str)] = match rng.below(3) {
        0 => &[("Observation", "date")],
        1 => &[("Patient", "birthdate")],
        _ => &[("Observation", "date"), ("Patient", "birthdate")],
    };
    let mut branches: Vec<Filter> = dated
        .iter()
        .map(|(ty, code)| {
            let overlap = Filter::Values {
                code: (*code).to_owned(),
                kind: kiln_search::SearchParamType::Date,
                modifier: kiln_search::Modifier::None,
                values: vec![kiln_search::Criterion::Date {
                    prefix: kiln_search::Prefix::Ap,
                    range: kiln_search::DateRange { lo, hi },
                }],
            };
            let missing = Filter::Missing {
                code: (*code).to_owned(),
                kind: kiln_search::SearchParamType::Date,
                missing: true,
            };
            Filter::And(vec![
                Filter::Type(vec![(*ty).to_owned()]),
                Filter::Or(vec![overlap, missing]),
            ])
        })
        .collect();
    let types = dated.iter().map(|(ty, _)| (*ty).to_owned()).collect();
    branches.push(Filter::Not(Box::new(Filter::Type(types))));
    Filter::Or(branches)
}

const PATIENT_SORTS: &[&str] = &[
    "family",
    "-family",
    "given",
    "-given",
    "birthdate",
    "-birthdate",
    "gender",
    "-_id",
    "address-city",
    "family,-birthdate",
    "-birthdate,_id",
    "-_lastUpdated",
    "_source",
];
const OBSERVATION_SORTS: &[&str] = &[
    "date",
    "-date",
    "-date,_id",
    "status",
    "-status,date",
    // Quantities sort on the values as written (not their UCUM base-unit copies).
    "value-quantity",
    "-value-quantity",
    "code",
    "subject",
    "-subject",
    "_tag",
];

// ---------------------------------------------------------------------------------------------
// Checking.

type Found = BTreeSet<(String, String)>;

/// What the SQL engine and the oracle disagree on, for the report.
fn describe(
    seed: u64,
    pairs: &Pairs,
    query: &SearchQuery,
    what: &str,
    sql: &Found,
    oracle: &Found,
    live: &Live,
) -> String {
    let only_sql: Vec<_> = sql.difference(oracle).map(|(_, id)| id.as_str()).collect();
    let only_oracle: Vec<_> = oracle.difference(sql).map(|(_, id)| id.as_str()).collect();
    let mut out = String::new();
    let _ = writeln!(out, "seed {seed:#x}: {what}");
    let _ = writeln!(out, "  query: {pairs:?}");
    let _ = writeln!(out, "  filters: {:?}", query.filters);
    let _ = writeln!(out, "  only in SQL:    {only_sql:?}");
    let _ = writeln!(out, "  only in oracle: {only_oracle:?}");
    let differing = sql.symmetric_difference(oracle).next();
    if let Some((ty, id)) = differing {
        match live.get(ty, id) {
            Some(r) => {
                let _ = writeln!(out, "  {ty}/{id}: {r}");
            }
            None => {
                let _ = writeln!(out, "  {ty}/{id} is not live");
            }
        }
    }
    out
}

/// One sort value, as the stores compare them.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Key {
    Int(i64),
    Float(f64),
    Text(String),
}

/// The sort key of `code` for `resource` (`MIN` ascending, `MAX` descending; `None` without a
/// value), computed from the index rows.
fn sort_key(resource: &Value, code: &str, descending: bool) -> Option<Key> {
    // The resource's own values (a sort never looks into contained resources).
    let values = kiln_search::extract(resource)
        .into_iter()
        .filter(|e| e.code == code && e.contained.is_none());
    let keys = values.filter_map(|e| match e.value {
        IndexValue::Token(t) => t.code.map(Key::Text),
        IndexValue::String(s) => Some(Key::Text(s.normalized)),
        IndexValue::Date(d) => Some(Key::Int(if descending { d.hi } else { d.lo })),
        IndexValue::Number(n) => Some(Key::Float(if descending { n.max } else { n.min })),
        // The values as the resource wrote them, not the UCUM base-unit copies.
        IndexValue::Quantity(q) if q.system.as_deref() == Some(kiln_search::UCUM_CANONICAL) => None,
        IndexValue::Quantity(q) => {
            Some(Key::Float(if descending { q.number.max } else { q.number.min }))
        }
        IndexValue::Reference(RefValue::Local { target_type, id }) => {
            Some(Key::Text(format!("{target_type}/{id}")))
        }
        IndexValue::Reference(RefValue::Url { url, .. }) => Some(Key::Text(url)),
        IndexValue::Uri(u) => Some(Key::Text(u)),
        IndexValue::Reference(_) | IndexValue::OfType(_) => None,
    });
    let pick = |a: Key, b: Key| {
        let b_wins = if descending { b > a } else { b < a };
        if b_wins { b } else { a }
    };
    keys.reduce(pick)
}

/// The order of two rows' keys under `sort` (missing values last in both directions).
fn compare_keys(sort: &[kiln_search::SortKey], a: &[Option<Key>], b: &[Option<Key>]) -> Ordering {
    for ((key, x), y) in sort.iter().zip(a).zip(b) {
        let o = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => {
                let o = x.partial_cmp(y).unwrap_or(Ordering::Equal);
                if key.descending { o.reverse() } else { o }
            }
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// One generated search: the type (empty: a system search), the query pairs, filters added
/// to the parsed query and, for a sample, a `_sort` to page with.
struct Case {
    ty: &'static str,
    pairs: Pairs,
    extra: Vec<Filter>,
    sort: Option<&'static str>,
    /// An access policy the search runs under.
    policy: Option<Policy>,
}

/// Mixed into the seed for the access-policy searches' stream.
const POLICY_STREAM: u64 = 0x5f70_6f6c_6963_7900;
const POLICY_QUERIES: usize = 160;

/// A model of what an access policy compiles to (`kiln-engine`'s `policy` module): for each of
/// the population's main types, every resource (`None`), none (an empty `Or`), or those
/// meeting a filter; other types are not restricted. It applies to the searched type and,
/// through [`Filter::restrict_levels`], to every chain link and `_has` level.
#[derive(Debug, Clone)]
struct Policy(Vec<(&'static str, Option<Filter>)>);

impl Policy {
    fn generate(rng: &mut Rng) -> Policy {
        let mut rules = Vec::new();
        for ty in ["Patient", "Observation"] {
            let criteria = match rng.below(5) {
                0 => None,
                1 => Some(Filter::Or(Vec::new())),
                _ => {
                    let (name, value) =
                        if ty == "Patient" { patient_filter(rng) } else { observation_filter(rng) };
                    match kiln_search::parse(ty, &[(name, value)]) {
                        Ok(q) if q.unknown.is_empty() => Some(Filter::And(q.filters)),
                        _ => Some(Filter::Or(Vec::new())),
                    }
                }
            };
            rules.push((ty, criteria));
        }
        Policy(rules)
    }

    fn criteria(&self, ty: &str) -> Option<&Filter> {
        self.0.iter().find(|(t, _)| *t == ty).and_then(|(_, f)| f.as_ref())
    }

    /// The condition on a level of these types; `None` when none of them is restricted.
    fn level(&self, types: &[String]) -> Option<Filter> {
        if types.iter().all(|t| self.criteria(t).is_none()) {
            return None;
        }
        let branches = types
            .iter()
            .map(|t| match self.criteria(t) {
                Some(f) => Filter::And(vec![Filter::Type(vec![t.clone()]), f.clone()]),
                None => Filter::Type(vec![t.clone()]),
            })
            .collect();
        Some(Filter::Or(branches))
    }

    fn apply(&self, ty: &str, query: &mut SearchQuery) {
        let mut level = |types: &[String]| self.level(types);
        query.filters.iter_mut().for_each(|f| f.restrict_levels(&mut level));
        if let Some(f) = self.level(&[ty.to_owned()]) {
            query.filters.push(f);
        }
    }
}

/// Every search, generated before any runs, so that what a backend skips does not change
/// what the other searches are.
fn gen_cases(seed: u64, rng: &mut Rng, filter_rng: &mut Rng, text_rng: &mut Rng) -> Vec<Case> {
    let mut cases: Vec<Case> = (0..QUERIES)
        .map(|i| {
            let ty = if i % 2 == 0 { "Patient" } else { "Observation" };
            let pairs = gen_query(rng, ty);
            let sorts = if ty == "Patient" { PATIENT_SORTS } else { OBSERVATION_SORTS };
            let sort = (i % 10 < 2).then(|| *rng.pick(sorts));
            Case { ty, pairs, extra: Vec::new(), sort, policy: None }
        })
        .collect();
    cases.extend((0..FILTER_QUERIES).map(|i| {
        let ty = if i % 2 == 0 { "Patient" } else { "Observation" };
        let pairs = gen_filter_query(filter_rng, ty);
        let sorts = if ty == "Patient" { PATIENT_SORTS } else { OBSERVATION_SORTS };
        let sort = (i % 10 < 2).then(|| *filter_rng.pick(sorts));
        Case { ty, pairs, extra: Vec::new(), sort, policy: None }
    }));
    cases.extend((0..TEXT_QUERIES).map(|i| {
        let ty = if i % 2 == 0 { "Patient" } else { "Observation" };
        let pairs = gen_text_query(text_rng, ty);
        let sorts = if ty == "Patient" { PATIENT_SORTS } else { OBSERVATION_SORTS };
        let sort = (i % 10 < 2).then(|| *text_rng.pick(sorts));
        Case { ty, pairs, extra: Vec::new(), sort, policy: None }
    }));
    cases.extend((0..WINDOW_QUERIES).map(|i| {
        let mut pairs = vec![("_type".to_owned(), "Patient,Observation".to_owned())];
        if text_rng.chance(30) {
            // With an ordinary parameter, the search is about one type.
            let (ty, (name, value)) = if text_rng.chance(50) {
                ("Observation", observation_filter(text_rng))
            } else {
                ("Patient", patient_filter(text_rng))
            };
            pairs = vec![("_type".to_owned(), ty.to_owned()), (name, value)];
        }
        let sort = (i % 4 == 0).then(|| *text_rng.pick(&["_id", "-_id", "-_lastUpdated"]));
        Case { ty: "", pairs, extra: vec![window_filter(text_rng)], sort, policy: None }
    }));
    // Sorted by `_lastUpdated` with nothing to drive: read in index order (`by_last_updated`).
    for ty in ["Patient", "Observation"] {
        for sort in ["_lastUpdated", "-_lastUpdated"] {
            let probes: [Pairs; 3] = [
                Vec::new(),
                vec![("_id:missing".to_owned(), "false".to_owned())],
                vec![("_id:not".to_owned(), "nothing-has-this-id".to_owned())],
            ];
            for pairs in probes {
                cases.push(Case { ty, pairs, extra: Vec::new(), sort: Some(sort), policy: None });
            }
        }
    }
    // Under an access policy: the same kinds of searches, chains and `_has` included.
    let mut policy_rng = Rng(seed ^ POLICY_STREAM);
    cases.extend((0..POLICY_QUERIES).map(|i| {
        let ty = if i % 2 == 0 { "Patient" } else { "Observation" };
        let pairs = gen_query(&mut policy_rng, ty);
        let sorts = if ty == "Patient" { PATIENT_SORTS } else { OBSERVATION_SORTS };
        let sort = (i % 10 < 2).then(|| *policy_rng.pick(sorts));
        let policy = Some(Policy::generate(&mut policy_rng));
        Case { ty, pairs, extra: Vec::new(), sort, policy }
    }));
    cases
}

#[derive(Default)]
struct Stats {
    parsed: usize,
    filter_parsed: usize,
    filter_nonempty: usize,
    /// `_content`/`_text`/`_list` searches, and care-date windows.
    text_parsed: usize,
    text_nonempty: usize,
    window_nonempty: usize,
    /// Searches under an access policy, and those of them that matched something.
    policy_parsed: usize,
    policy_nonempty: usize,
    skipped: Vec<String>,
    ran: usize,
    paged: usize,
    nonempty: usize,
    total_matches: usize,
    oracle_time: std::time::Duration,
    sql_time: std::time::Duration,
    paging_time: std::time::Duration,
}

/// The SQL search engine selects exactly what [`kiln_search::matches_in`] selects, counts it,
/// and pages through it in sort order.
pub async fn search_matches_the_oracle(store: &dyn Store) {
    let seed = std::env::var("KILN_ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(ORACLE_SEED);
    let started = Instant::now();
    let project = ProjectId::new("oracle");
    let mut rng = Rng(seed);
    let mut text_rng = Rng(seed ^ TEXT_STREAM);
    let mut contained_rng = Rng(seed ^ CONTAINED_STREAM);
    let live =
        Live::new(populate(store, &project, &mut rng, &mut text_rng, &mut contained_rng).await);
    let cases = gen_cases(seed, &mut rng, &mut Rng(seed ^ FILTER_STREAM), &mut text_rng);
    let written = started.elapsed();

    let mut stats = Stats::default();
    let mut failures: Vec<String> = Vec::new();
    // `_has` searches run so far: one level, nested.
    let mut has_searches = (0, 0);
    for Case { ty, pairs, extra, sort, policy } in &cases {
        let query = match kiln_search::parse(ty, pairs) {
            Ok(mut q) if q.unknown.is_empty() => {
                q.filters.extend(extra.iter().cloned());
                if let Some(policy) = policy {
                    policy.apply(ty, &mut q);
                    stats.policy_parsed += 1;
                }
                q
            }
            Ok(q) => {
                stats.skipped.push(format!("{ty}?{pairs:?}: unknown {:?}", q.unknown));
                continue;
            }
            Err(issues) => {
                stats.skipped.push(format!("{ty}?{pairs:?}: {issues:?}"));
                continue;
            }
        };
        stats.parsed += 1;
        let is_filter = pairs.iter().any(|(name, _)| name == "_filter");
        if is_filter {
            stats.filter_parsed += 1;
        }
        let is_text = pairs
            .iter()
            .any(|(name, _)| ["_content", "_text", "_list"].iter().any(|code| name.contains(code)));
        if is_text {
            stats.text_parsed += 1;
        }
        let depth = query.filters.iter().filter_map(has_depth).max();
        match depth {
            Some(0) => has_searches.0 += 1,
            Some(_) => has_searches.1 += 1,
            None => {}
        }
        stats.ran += 1;

        let t = Instant::now();
        // The narrowed oracle is checked against the plain one on the first `_has` searches.
        let self_check = match depth {
            Some(0) => has_searches.0 <= 3,
            Some(_) => has_searches.1 <= 3,
            None => false,
        };
        let oracle = live.oracle(&query, self_check);
        stats.oracle_time += t.elapsed();
        stats.total_matches += oracle.len();
        if !oracle.is_empty() {
            stats.nonempty += 1;
            if is_filter {
                stats.filter_nonempty += 1;
            }
            if is_text {
                stats.text_nonempty += 1;
            }
            if !extra.is_empty() && oracle.len() < live.all.len() - LISTS {
                stats.window_nonempty += 1;
            }
            if policy.is_some() {
                stats.policy_nonempty += 1;
            }
        }

        let t = Instant::now();
        let request = SearchRequest { query: query.clone(), after: None, count: 1000, total: true };
        let page = match store.search(&project, &request).await {
            Ok(page) => page,
            Err(e) => {
                failures.push(format!("seed {seed:#x}: {ty}?{pairs:?}: search failed: {e}"));
                continue;
            }
        };
        stats.sql_time += t.elapsed();
        let sql: Found =
            page.matches.iter().map(|m| (m.resource_type.clone(), m.id.clone())).collect();
        if sql.len() != page.matches.len() {
            failures.push(format!("seed {seed:#x}: {ty}?{pairs:?}: a match served twice"));
        }
        if depth.is_some() {
            // A `_has` page read the other way (`sql::Probing`) must be the same page.
            crate::sql::always_probe(true);
            let probed = store.search(&project, &request).await;
            crate::sql::always_probe(false);
            match probed {
                Ok(p)
                    if p.matches
                        .iter()
                        .map(|m| (&m.resource_type, &m.id))
                        .eq(page.matches.iter().map(|m| (&m.resource_type, &m.id))) => {}
                Ok(_) => failures.push(format!(
                    "seed {seed:#x}: {ty}?{pairs:?}: probing for `_has` gave another page"
                )),
                Err(e) => failures.push(format!(
                    "seed {seed:#x}: {ty}?{pairs:?}: probing for `_has` failed: {e}"
                )),
            }
        }
        if sql != oracle {
            let what = "different matches";
            failures.push(describe(seed, pairs, &query, what, &sql, &oracle, &live));
        } else if page.total != Some(oracle.len() as u64) {
            failures.push(format!(
                "seed {seed:#x}: {ty}?{pairs:?}: total {:?}, oracle {}",
                page.total,
                oracle.len()
            ));
        }
        if page.next.is_some() {
            failures.push(format!("seed {seed:#x}: {ty}?{pairs:?}: a next page after all matches"));
        }

        if let Some(sort) = sort {
            stats.paged += 1;
            let mut sorted_pairs = pairs.clone();
            sorted_pairs.push(("_sort".into(), (*sort).into()));
            sorted_pairs.push(("_count".into(), "7".into()));
            let mut query = kiln_search::parse(ty, &sorted_pairs).expect("the same query, sorted");
            query.filters.extend(extra.iter().cloned());
            if let Some(policy) = policy {
                policy.apply(ty, &mut query);
            }
            let t = Instant::now();
            if let Err(e) = check_paging(store, &project, &query, &oracle, &live).await {
                failures.push(format!("seed {seed:#x}: {ty}?{sorted_pairs:?}: {e}"));
            }
            // Every third one also pages unsorted (by row id).
            if stats.paged % 3 == 0 {
                let mut unsorted_pairs = pairs.clone();
                unsorted_pairs.push(("_count".into(), "7".into()));
                let mut query = kiln_search::parse(ty, &unsorted_pairs).expect("the same query");
                query.filters.extend(extra.iter().cloned());
                if let Some(policy) = policy {
                    policy.apply(ty, &mut query);
                }
                if let Err(e) = check_paging(store, &project, &query, &oracle, &live).await {
                    failures.push(format!("seed {seed:#x}: {ty}?{unsorted_pairs:?}: {e}"));
                }
            }
            stats.paging_time += t.elapsed();
        }
    }
    let contained = check_contained(store, &project, &live, &mut contained_rng, seed).await;
    failures.extend(contained.failures);
    let elapsed = started.elapsed();
    eprintln!(
        "search_matches_the_oracle ({}): {} `_contained` searches ({} with matches); seed {seed:#x}; {} live resources, written in \
         {written:?}; {} of {} searches parsed ({} with _filter, {} with _content/_text/_list), \
         {} ran, {} with matches ({} with _filter, {} with _content/_text/_list, {} care-date \
         windows that left something out; {} matches in all), {} paged; {} failures; \
         {elapsed:?} (oracle {:?}, SQL {:?}, paging {:?})",
        store.kind(),
        contained.ran,
        contained.nonempty,
        live.all.len(),
        stats.parsed,
        cases.len(),
        stats.filter_parsed,
        stats.text_parsed,
        stats.ran,
        stats.nonempty,
        stats.filter_nonempty,
        stats.text_nonempty,
        stats.window_nonempty,
        stats.total_matches,
        stats.paged,
        failures.len(),
        stats.oracle_time,
        stats.sql_time,
        stats.paging_time,
    );
    if !failures.is_empty() {
        let shown: Vec<&str> = failures.iter().take(12).map(String::as_str).collect();
        panic!(
            "{} of {} searches disagree with the oracle (seed {seed:#x}; first {}):\n{}",
            failures.len(),
            stats.ran,
            shown.len(),
            shown.join("\n")
        );
    }
    assert!(
        stats.parsed * 100 >= cases.len() * MIN_PARSED_PERCENT
            && stats.filter_parsed * 100 >= FILTER_QUERIES * MIN_PARSED_PERCENT,
        "only {} of {} generated searches ({} of {FILTER_QUERIES} with _filter) parsed \
         (seed {seed:#x}); first skipped:\n{}",
        stats.parsed,
        cases.len(),
        stats.filter_parsed,
        stats.skipped.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(
        contained.ran * 100 >= CONTAINED_QUERIES * MIN_PARSED_PERCENT
            && contained.nonempty * 3 >= contained.ran,
        "only {} of {CONTAINED_QUERIES} _contained searches parsed, {} matched anything \
         (seed {seed:#x})",
        contained.ran,
        contained.nonempty
    );
    assert!(
        stats.text_parsed * 100 >= TEXT_QUERIES * MIN_PARSED_PERCENT,
        "only {} of {TEXT_QUERIES} _content/_text/_list searches parsed (seed {seed:#x})",
        stats.text_parsed
    );
    assert!(
        stats.policy_parsed * 100 >= POLICY_QUERIES * MIN_PARSED_PERCENT
            && stats.policy_nonempty * 4 >= stats.policy_parsed,
        "only {} of {POLICY_QUERIES} searches under a policy parsed, {} matched anything \
         (seed {seed:#x})",
        stats.policy_parsed,
        stats.policy_nonempty
    );
    // The generator must produce searches that select something, not only empty results
    // (and windows that leave something out).
    assert!(
        stats.nonempty * 2 >= stats.ran
            && stats.text_nonempty * 4 >= TEXT_QUERIES
            && stats.window_nonempty * 3 >= WINDOW_QUERIES,
        "only {} of {} searches matched anything ({} of {TEXT_QUERIES} with \
         _content/_text/_list; {} of {WINDOW_QUERIES} windows left something out; \
         seed {seed:#x})",
        stats.nonempty,
        stats.ran,
        stats.text_nonempty,
        stats.window_nonempty
    );
}

/// One page of a paged walk: its matches and its links.
struct Walked {
    ids: Vec<(String, String)>,
    next: Option<Cursor>,
    previous: Option<Cursor>,
}

async fn walk_page(
    store: &dyn Store,
    project: &ProjectId,
    query: &SearchQuery,
    at: Option<Cursor>,
    oracle: &Found,
) -> Result<Walked, String> {
    let request =
        SearchRequest { query: query.clone(), after: at, count: query.count as usize, total: true };
    let page = store.search(project, &request).await.map_err(|e| e.to_string())?;
    if page.total != Some(oracle.len() as u64) {
        return Err(format!("total {:?}, oracle {}", page.total, oracle.len()));
    }
    if page.matches.len() > query.count as usize {
        return Err(format!("{} matches", page.matches.len()));
    }
    let ids = page.matches.iter().map(|m| (m.resource_type.clone(), m.id.clone())).collect();
    Ok(Walked { ids, next: page.next, previous: page.previous })
}

/// Pages through `query` (which has `_sort` and `_count`) by cursor: the pages together must
/// hold every match of `oracle` once, in an order consistent with the sort keys. Then walks
/// back from the last page by its `previous` cursors: every page must come again, the same
/// matches in the same order with the same `next` and `previous` cursors, and the first page
/// must have no `previous`.
async fn check_paging(
    store: &dyn Store,
    project: &ProjectId,
    query: &SearchQuery,
    oracle: &Found,
    live: &Live,
) -> Result<(), String> {
    let mut after: Option<Cursor> = None;
    let mut forward: Vec<Walked> = Vec::new();
    loop {
        let page = walk_page(store, project, query, after.clone(), oracle)
            .await
            .map_err(|e| format!("page {}: {e}", forward.len() + 1))?;
        if forward.is_empty() != page.previous.is_none() {
            return Err(format!(
                "page {}: previous link {:?} (only the first page has none)",
                forward.len() + 1,
                page.previous
            ));
        }
        after = page.next.clone();
        forward.push(page);
        match after {
            Some(_) if forward.len() <= oracle.len() + 1 => {}
            Some(_) => return Err(format!("more than {} pages", forward.len())),
            None => break,
        }
    }
    let pages = forward.len();
    let mut before = forward.last().and_then(|p| p.previous.clone());
    let mut back = pages - 1;
    while let Some(cursor) = before {
        if back == 0 {
            return Err(format!("walking back from page {pages}: more than {pages} pages"));
        }
        back -= 1;
        let page = walk_page(store, project, query, Some(cursor), oracle)
            .await
            .map_err(|e| format!("back to page {}: {e}", back + 1))?;
        let want = &forward[back];
        if page.ids != want.ids || page.next != want.next || page.previous != want.previous {
            return Err(format!(
                "back to page {} of {pages}: {:?} (next {:?}, previous {:?}), forward it was \
                 {:?} (next {:?}, previous {:?})",
                back + 1,
                page.ids,
                page.next,
                page.previous,
                want.ids,
                want.next,
                want.previous
            ));
        }
        before = page.previous;
    }
    if back != 0 {
        return Err(format!("walking back from page {pages} stopped at page {}", back + 1));
    }
    let seen: Vec<(String, String)> = forward.into_iter().flat_map(|p| p.ids).collect();
    let found: Found = seen.iter().cloned().collect();
    if found.len() != seen.len() {
        return Err(format!("a resource served twice over {pages} pages: {seen:?}"));
    }
    if &found != oracle {
        let only_sql: Vec<_> = found.difference(oracle).collect();
        let only_oracle: Vec<_> = oracle.difference(&found).collect();
        return Err(format!(
            "paged matches differ: only in SQL {only_sql:?}, only in oracle {only_oracle:?}"
        ));
    }
    let keys: Vec<Vec<Option<Key>>> = seen
        .iter()
        .map(|(ty, id)| {
            let r = live.get(ty, id).expect("a live match");
            query.sort.iter().map(|k| sort_key(r, &k.code, k.descending)).collect()
        })
        .collect();
    for (i, pair) in keys.windows(2).enumerate() {
        if compare_keys(&query.sort, &pair[0], &pair[1]) == Ordering::Greater {
            let (a, b) = (&seen[i], &seen[i + 1]);
            return Err(format!(
                "out of order at {i}: {} {:?} before {} {:?} (sort {:?})\n  {}: {}\n  {}: {}",
                a.1,
                pair[0],
                b.1,
                pair[1],
                query.sort,
                a.1,
                live.get(&a.0, &a.1).unwrap_or(&Value::Null),
                b.1,
                live.get(&b.0, &b.1).unwrap_or(&Value::Null),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `_contained` searches.

/// A match of a `_contained` search: the stored resource and, with
/// `_containedType=contained`, the position of the contained resource (0: the resource
/// itself, or a container).
type Positions = BTreeSet<(String, String, u32)>;

struct ContainedRun {
    ran: usize,
    nonempty: usize,
    failures: Vec<String>,
}

/// A `_contained` search: ordinary filters (with chains, `_has`, `:missing`, …), sometimes
/// an `_id` of contained resources, `_contained=true|both` and sometimes
/// `_containedType=contained`.
fn gen_contained_query(rng: &mut Rng, ty: &str) -> Pairs {
    let mut pairs = if rng.chance(15) { Vec::new() } else { gen_query(rng, ty) };
    if rng.chance(25) {
        let ids = ["cp0", "cp1", "co0", "co1", "c1", &patient_id(0)];
        pairs.push(("_id".into(), alternatives(rng, |rng| (*rng.pick(&ids)).to_owned())));
    }
    pairs.push(("_contained".into(), (*rng.pick(&["true", "true", "both"])).to_owned()));
    match rng.below(10) {
        0..=3 => pairs.push(("_containedType".into(), "contained".into())),
        4 => pairs.push(("_containedType".into(), "container".into())),
        _ => {}
    }
    pairs
}

impl Live {
    /// The oracle's matches of a `_contained` search (see [`Positions`]).
    fn oracle_positions(&self, query: &SearchQuery) -> Positions {
        let positions = crate::sql::returns_contained(query);
        let radius = query.filters.iter().filter_map(has_depth).max();
        let mut out = Positions::new();
        for r in &self.all {
            let near;
            let set: &dyn ResourceSet = match radius {
                Some(radius) => {
                    near = self.near(r, radius);
                    &near
                }
                None => self,
            };
            let found = kiln_search::matching_contained(query, r, set);
            let (ty, id) = key_of(r);
            if positions {
                out.extend(found.into_iter().map(|p| (ty.clone(), id.clone(), p)));
            } else if !found.is_empty() {
                out.insert((ty, id, 0));
            }
        }
        out
    }
}

fn page_positions(page: &crate::SearchPage) -> Vec<(String, String, u32)> {
    page.matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (m.resource_type.clone(), m.id.clone(), page.contained.get(i).copied().unwrap_or(0))
        })
        .collect()
}

async fn check_contained(
    store: &dyn Store,
    project: &ProjectId,
    live: &Live,
    rng: &mut Rng,
    seed: u64,
) -> ContainedRun {
    let mut run = ContainedRun { ran: 0, nonempty: 0, failures: Vec::new() };
    let cases: Vec<(&str, Pairs)> = (0..CONTAINED_QUERIES)
        .map(|i| {
            let ty = if i % 2 == 0 { "Patient" } else { "Observation" };
            (ty, gen_contained_query(rng, ty))
        })
        .collect();
    for (i, (ty, pairs)) in cases.iter().enumerate() {
        let Ok(query) = kiln_search::parse(ty, pairs) else { continue };
        if !query.unknown.is_empty() {
            continue;
        }
        run.ran += 1;
        let oracle = live.oracle_positions(&query);
        if !oracle.is_empty() {
            run.nonempty += 1;
        }
        let fail = |what: String| format!("seed {seed:#x}: {ty}?{pairs:?}: {what}");
        let request = SearchRequest { query: query.clone(), after: None, count: 1000, total: true };
        let page = match store.search(project, &request).await {
            Ok(page) => page,
            Err(e) => {
                run.failures.push(fail(format!("search failed: {e}")));
                continue;
            }
        };
        let listed = page_positions(&page);
        let sql: Positions = listed.iter().cloned().collect();
        if sql.len() != listed.len() {
            run.failures.push(fail("a match served twice".into()));
        }
        if sql != oracle {
            let only_sql: Vec<_> = sql.difference(&oracle).take(4).collect();
            let only_oracle: Vec<_> = oracle.difference(&sql).take(4).collect();
            let example = only_sql
                .first()
                .or(only_oracle.first())
                .and_then(|(t, id, _)| live.get(t, id))
                .map(|r| r.to_string())
                .unwrap_or_default();
            run.failures.push(fail(format!(
                "different matches: only SQL {only_sql:?}, only oracle {only_oracle:?}; {example}"
            )));
            continue;
        }
        if page.total != Some(oracle.len() as u64) {
            run.failures.push(fail(format!("total {:?}, oracle {}", page.total, oracle.len())));
        }
        // Every fourth one pages by 2, forwards and back.
        if i % 4 == 0
            && let Err(e) = page_contained(store, project, &query, &oracle).await
        {
            run.failures.push(fail(e));
        }
    }
    run
}

/// Walks `query` by pages of 2 along `next` links, then back along `previous` links: both
/// walks must list every match once.
async fn page_contained(
    store: &dyn Store,
    project: &ProjectId,
    query: &SearchQuery,
    oracle: &Positions,
) -> Result<(), String> {
    let mut forward = Vec::new();
    let mut at = None;
    let mut last_previous = None;
    let mut last_len = 0;
    for _ in 0..=oracle.len() {
        let request = SearchRequest { query: query.clone(), after: at, count: 2, total: true };
        let page = store.search(project, &request).await.map_err(|e| e.to_string())?;
        if page.total != Some(oracle.len() as u64) {
            return Err(format!("paged total {:?}, oracle {}", page.total, oracle.len()));
        }
        let listed = page_positions(&page);
        last_len = listed.len();
        forward.extend(listed);
        last_previous = page.previous.clone();
        match page.next {
            Some(next) => at = Some(next),
            None => break,
        }
    }
    let seen: Positions = forward.iter().cloned().collect();
    if seen.len() != forward.len() || seen != *oracle {
        return Err(format!("forward pages {forward:?}, oracle {oracle:?}"));
    }
    // Back from the last page.
    let mut backward = Vec::new();
    let mut at = last_previous;
    while let Some(cursor) = at.take() {
        let request =
            SearchRequest { query: query.clone(), after: Some(cursor), count: 2, total: true };
        let page = store.search(project, &request).await.map_err(|e| e.to_string())?;
        backward.extend(page_positions(&page));
        at = page.previous;
        if backward.len() > oracle.len() {
            break;
        }
    }
    let mut expected: Vec<_> = forward[..forward.len() - last_len].to_vec();
    expected.sort();
    backward.sort();
    if backward != expected {
        return Err(format!("backward pages {backward:?}, expected {expected:?}"));
    }
    Ok(())
}
