//! The search scenarios: a pool of values present in the loaded data (patient ids, family names,
//! LOINC codes), the query each scenario sends, the check that an answer is a `searchset`
//! Bundle, and `page`: one client following `next` links through every Observation.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::fixtures::Rng;
use crate::load::{self, ClientStats, RunResult, Scenario, Target};
use crate::sys::{self, CpuSample, Pids};
use crate::{raw, report};

/// The identifier system of every Synthea resource; tells its Patients from the seeded ones.
const SYNTHEA_SYSTEM: &str = "https://github.com/synthetichealth/synthea";
const LOINC: &str = "http://loinc.org";
/// Page size of the pool scans and of `page` (the server's largest `_count`).
const PAGE_SIZE: usize = 1000;
/// Observations scanned for codes: the first copy of the Synthea data holds about 12,000.
const SCAN_OBSERVATIONS: usize = 20_000;

/// A Patient the search scenarios ask about.
#[derive(Debug, Clone)]
pub struct PoolPatient {
    pub id: String,
    pub family: String,
    /// The first identifier with a system, as `system|value`.
    pub identifier: Option<String>,
}

/// Values present in the server's data, drawn at random by the search scenarios.
#[derive(Debug, Default)]
pub struct SearchPool {
    pub patients: Vec<PoolPatient>,
    /// The LOINC code of each Observation scanned, so common codes are drawn more often.
    pub codes: Vec<String>,
    /// (patient id, LOINC code) of each Observation scanned that has a patient subject.
    pub pairs: Vec<(String, String)>,
    pub distinct_codes: usize,
    /// True if the patients are the Synthea ones (false: every Patient with a family name).
    pub synthea_only: bool,
}

impl SearchPool {
    pub fn describe(&self) -> String {
        format!(
            "search values: {} {}Patients with their family names, LOINC codes of {} Observations ({} distinct, drawn by frequency)",
            self.patients.len(),
            if self.synthea_only { "Synthea " } else { "" },
            report::thousands(self.codes.len() as f64),
            self.distinct_codes,
        )
    }
}

/// What [`parse_searchset`] keeps of the entries besides counting them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Nothing,
    /// The entries' `fullUrl`s (one per resource, so they tell repeats; cheaper than reading
    /// each resource's id).
    Urls,
    /// The resources, parsed (for small pages, e.g. with `_elements`).
    Resources,
}

/// One page of a `searchset` Bundle.
#[derive(Debug, Default)]
pub struct Searchset {
    /// `match` and `include` entries.
    pub entries: u64,
    pub total: Option<u64>,
    /// The `next` link, if any.
    pub next: Option<String>,
    /// With [`Keep::Urls`].
    pub urls: Vec<String>,
    /// With [`Keep::Resources`].
    pub resources: Vec<Value>,
}

/// Checks that `body` is a `searchset` Bundle and reads it, leaving resources unparsed unless
/// asked for. An `outcome` entry is an error: it means the server ignored part of the query, so
/// the figure would not measure that query.
pub fn parse_searchset(body: &[u8], keep: Keep) -> Result<Searchset, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the answer is not UTF-8: {e}"))?;
    let bundle = raw::object(text).map_err(|e| format!("the answer is {e}"))?;
    let (resource_type, kind) =
        (raw::member(&bundle, "resourceType")?, raw::member(&bundle, "type")?);
    if resource_type != "Bundle" || kind != "searchset" {
        return Err(format!(
            "expected a searchset Bundle, got resourceType {resource_type} and type {kind}"
        ));
    }
    let total = match raw::member(&bundle, "total")? {
        Value::Null => None,
        other => Some(other.as_u64().ok_or_else(|| format!("Bundle.total is {other}"))?),
    };
    let links = raw::member(&bundle, "link")?;
    let next = links.as_array().and_then(|links| {
        links
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str().map(str::to_owned))
    });
    let mut page = Searchset { total, next, ..Searchset::default() };
    for entry in raw::objects(&bundle, "entry")? {
        if raw::member(&entry, "search")?["mode"] == "outcome" {
            return Err(format!(
                "the searchset carries an OperationOutcome: {}",
                raw::member(&entry, "resource")?
            ));
        }
        page.entries += 1;
        match keep {
            Keep::Nothing => {}
            Keep::Urls => match raw::member(&entry, "fullUrl")? {
                Value::String(url) => page.urls.push(url),
                _ => return Err("an entry without a fullUrl".into()),
            },
            Keep::Resources => page.resources.push(raw::member(&entry, "resource")?),
        }
    }
    Ok(page)
}

/// The request of a search scenario with parameters drawn from `pool`, and a readable label
/// for error messages (the query unencoded).
pub fn query_url(
    scenario: Scenario,
    pool: &SearchPool,
    rng: &mut Rng,
    fhir: &str,
) -> Result<(Url, String), String> {
    if scenario != Scenario::SearchAnchor && (pool.patients.is_empty() || pool.codes.is_empty()) {
        return Err("the search pool is empty".into());
    }
    let empty = PoolPatient { id: String::new(), family: String::new(), identifier: None };
    let patient = pool.patients.get(rng.below(pool.patients.len().max(1))).unwrap_or(&empty);
    let code = pool.codes.get(rng.below(pool.codes.len().max(1))).cloned().unwrap_or_default();
    let code = &code;
    let (path, params): (&str, Vec<(&str, String)>) = match scenario {
        Scenario::SearchAnchor => {
            ("Observation", vec![("code", format!("{LOINC}|8867-4")), ("_count", "10".into())])
        }
        Scenario::SearchIdentifier => {
            let with: Vec<&PoolPatient> =
                pool.patients.iter().filter(|p| p.identifier.is_some()).collect();
            if with.is_empty() {
                return Err("no loaded Patient has an identifier with a system".into());
            }
            let identifier = with[rng.below(with.len())].identifier.clone().unwrap_or_default();
            ("Patient", vec![("identifier", identifier)])
        }
        Scenario::SearchPatientCategory => (
            "Observation",
            vec![("patient", patient.id.clone()), ("category", "laboratory".into())],
        ),
        Scenario::SearchPatientCode => {
            let Some((id, code)) = pool.pairs.get(rng.below(pool.pairs.len().max(1))) else {
                return Err("no scanned Observation has a patient subject".into());
            };
            ("Observation", vec![("patient", id.clone()), ("code", format!("{LOINC}|{code}"))])
        }
        Scenario::SearchName => {
            ("Patient", vec![("name", patient.family.chars().take(3).collect())])
        }
        Scenario::SearchPatientObs => (
            "Observation",
            vec![
                ("patient", patient.id.clone()),
                ("category", "vital-signs".into()),
                ("date", "ge2015-01-01".into()),
            ],
        ),
        Scenario::SearchCount => {
            ("Observation", vec![("code", format!("{LOINC}|{code}")), ("_summary", "count".into())])
        }
        Scenario::SearchChain => (
            "Observation",
            vec![("subject:Patient.name", patient.family.clone()), ("_count", "20".into())],
        ),
        Scenario::SearchInclude => (
            "Observation",
            vec![
                ("patient", patient.id.clone()),
                ("_include", "Observation:subject".into()),
                ("_count", "50".into()),
            ],
        ),
        Scenario::SearchHas => (
            "Patient",
            vec![("_has:Observation:patient:code", code.clone()), ("_count", "20".into())],
        ),
        other => return Err(format!("{} is not a search scenario", other.name())),
    };
    let mut url = Url::parse(&format!("{fhir}{path}")).map_err(|e| format!("{fhir}{path}: {e}"))?;
    url.query_pairs_mut().extend_pairs(&params);
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok((url, format!("GET {path}?{}", query.join("&"))))
}

/// GETs one search page; returns it and the round trip (before parsing).
async fn fetch_page(
    target: &Target,
    url: &str,
    keep: Keep,
) -> Result<(Searchset, Duration), String> {
    let sent = Instant::now();
    let res = target
        .http
        .get(url)
        .headers(target.auth.clone())
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = res.status();
    let body = res.bytes().await.map_err(|e| format!("GET {url}: reading body: {e}"))?;
    let elapsed = sent.elapsed();
    if status != StatusCode::OK {
        return Err(format!(
            "GET {url}: expected 200 OK, got {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let page = parse_searchset(&body, keep).map_err(|e| format!("GET {url}: {e}"))?;
    Ok((page, elapsed))
}

/// Follows `next` links from `{fhir}{first}` until the end or until `limit` resources.
async fn scan(target: &Target, first: &str, limit: usize) -> anyhow::Result<Vec<Value>> {
    let mut url = format!("{}{first}", target.fhir);
    let mut out = Vec::new();
    loop {
        let (page, _) =
            fetch_page(target, &url, Keep::Resources).await.map_err(anyhow::Error::msg)?;
        out.extend(page.resources);
        match page.next {
            Some(next) if out.len() < limit => url = next,
            _ => return Ok(out),
        }
    }
}

/// The official (else the first) family name of a Patient.
fn family(patient: &Value) -> Option<String> {
    let names = patient["name"].as_array()?;
    let name = names.iter().find(|n| n["use"] == "official").or_else(|| names.first())?;
    name["family"].as_str().filter(|f| !f.is_empty()).map(str::to_owned)
}

/// The first identifier with a system and a value, as `system|value`.
fn identifier(patient: &Value) -> Option<String> {
    patient["identifier"]
        .as_array()?
        .iter()
        .find_map(|i| Some(format!("{}|{}", i["system"].as_str()?, i["value"].as_str()?)))
}

fn is_synthea(patient: &Value) -> bool {
    patient["identifier"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|i| i["system"] == SYNTHEA_SYSTEM))
}

/// The first LOINC code of an Observation's `code`.
fn loinc_code(observation: &Value) -> Option<String> {
    let codings = observation["code"]["coding"].as_array()?;
    let coding = codings.iter().find(|c| c["system"] == LOINC)?;
    coding["code"].as_str().map(str::to_owned)
}

/// Reads every Patient (id, name, identifier) and the codes of the first
/// [`SCAN_OBSERVATIONS`] Observations. Patients are the Synthea ones if there are any.
pub async fn collect_pool(target: &Target) -> anyhow::Result<SearchPool> {
    let first = format!("Patient?_count={PAGE_SIZE}&_elements=id,name,identifier");
    let patients = scan(target, &first, usize::MAX).await?;
    let synthea_only = patients.iter().any(is_synthea);
    let patients: Vec<PoolPatient> = patients
        .iter()
        .filter(|p| !synthea_only || is_synthea(p))
        .filter_map(|p| {
            Some(PoolPatient {
                id: p["id"].as_str()?.to_owned(),
                family: family(p)?,
                identifier: identifier(p),
            })
        })
        .collect();
    let first = format!("Observation?_count={PAGE_SIZE}&_elements=code,subject");
    let observations = scan(target, &first, SCAN_OBSERVATIONS).await?;
    let codes: Vec<String> = observations.iter().filter_map(loinc_code).collect();
    let pairs: Vec<(String, String)> = observations
        .iter()
        .filter_map(|o| {
            let subject = o["subject"]["reference"].as_str()?;
            let id = subject.rsplit_once("Patient/").map(|(_, id)| id)?;
            Some((id.to_owned(), loinc_code(o)?))
        })
        .collect();
    // Patient-level searches ask about patients with records, not bare ones seeded for `crud`.
    let with_records: HashSet<&str> = pairs.iter().map(|(id, _)| id.as_str()).collect();
    let patients = if patients.iter().any(|p| with_records.contains(p.id.as_str())) {
        patients.into_iter().filter(|p| with_records.contains(p.id.as_str())).collect()
    } else {
        patients
    };
    if patients.is_empty() || codes.is_empty() {
        bail!(
            "the server holds no Patients with family names or no Observations with LOINC codes to search for"
        );
    }
    let distinct_codes = codes.iter().collect::<HashSet<_>>().len();
    Ok(SearchPool { patients, codes, pairs, distinct_codes, synthea_only })
}

/// `{fhir}{query}`'s `Bundle.total` (for a `_summary=count` query).
pub async fn count(target: &Target, query: &str) -> Result<u64, String> {
    let url = format!("{}{query}", target.fhir);
    let (page, _) = fetch_page(target, &url, Keep::Nothing).await?;
    page.total.ok_or_else(|| format!("GET {url}: the answer has no total"))
}

/// `page`: one client follows `next` links from `Observation?_count=1000` to the end. Every
/// resource must come exactly once (each repeat is an error), and as many as
/// `Observation?_summary=count` counted just before. The time is the whole pass, the client's
/// parsing included; latencies are per page.
pub async fn page_all(target: &Target, server_pid: Pids) -> RunResult {
    let mut stats = ClientStats::default();
    let expected = count(target, "Observation?_summary=count").await;
    // A server that never stops linking would otherwise loop for ever.
    let max_pages = match &expected {
        Ok(n) => *n as usize / PAGE_SIZE + 10,
        Err(_) => usize::MAX,
    };
    // Entry fullUrls: one per resource.
    let mut seen: HashSet<String> = HashSet::new();
    let mut url = Some(format!("{}Observation?_count={PAGE_SIZE}", target.fhir));
    let before = CpuSample::take(server_pid);
    let started = Instant::now();
    while let Some(current) = url.take() {
        if stats.requests as usize >= max_pages {
            load::record_error(&mut stats, format!("still a next link after {max_pages} pages"));
            break;
        }
        match fetch_page(target, &current, Keep::Urls).await {
            Ok((page, elapsed)) => {
                stats.record(elapsed, page.entries, 0);
                let number = stats.requests;
                for full_url in page.urls {
                    if seen.contains(&full_url) {
                        let what = format!("{full_url} came twice (page {number})");
                        load::record_error(&mut stats, what);
                    } else {
                        seen.insert(full_url);
                    }
                }
                url = page.next;
            }
            Err(what) => load::record_error(&mut stats, what),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = CpuSample::take(server_pid);
    match expected {
        Ok(n) if n != seen.len() as u64 => load::record_error(
            &mut stats,
            format!(
                "paged {} distinct Observations, but Observation?_summary=count said {n}",
                seen.len()
            ),
        ),
        Ok(_) => {}
        Err(what) => load::record_error(&mut stats, what),
    }
    stats.matches = seen.len() as u64;
    load::summarise(Scenario::Page, 1, vec![stats], seconds, sys::usage(&before, &after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool() -> SearchPool {
        SearchPool {
            patients: vec![PoolPatient {
                id: "p1".into(),
                family: "Abbott774".into(),
                identifier: Some("urn:mrn|7".into()),
            }],
            codes: vec!["8302-2".into()],
            pairs: vec![("p1".into(), "8302-2".into())],
            distinct_codes: 1,
            synthea_only: true,
        }
    }

    #[test]
    fn queries_carry_drawn_values_encoded() {
        let mut rng = Rng::new(1);
        let fhir = "http://127.0.0.1:1/fhir/R4/";
        let (url, label) = query_url(Scenario::SearchName, &pool(), &mut rng, fhir).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:1/fhir/R4/Patient?name=Abb");
        assert_eq!(label, "GET Patient?name=Abb");
        let (url, label) = query_url(Scenario::SearchCount, &pool(), &mut rng, fhir).unwrap();
        assert_eq!(label, "GET Observation?code=http://loinc.org|8302-2&_summary=count");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs[0], ("code".into(), "http://loinc.org|8302-2".into()));
        let (url, _) = query_url(Scenario::SearchHas, &pool(), &mut rng, fhir).unwrap();
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs[0], ("_has:Observation:patient:code".into(), "8302-2".into()));
        let (_, label) = query_url(Scenario::SearchIdentifier, &pool(), &mut rng, fhir).unwrap();
        assert_eq!(label, "GET Patient?identifier=urn:mrn|7");
        let (_, label) = query_url(Scenario::SearchPatientCode, &pool(), &mut rng, fhir).unwrap();
        assert_eq!(label, "GET Observation?patient=p1&code=http://loinc.org|8302-2");
        let (_, label) = query_url(Scenario::SearchAnchor, &pool(), &mut rng, fhir).unwrap();
        assert_eq!(label, "GET Observation?code=http://loinc.org|8867-4&_count=10");
        for kind in crate::load::SEARCH_MIX {
            assert!(query_url(kind, &pool(), &mut rng, fhir).is_ok(), "{}", kind.name());
        }
        assert!(query_url(Scenario::Read, &pool(), &mut rng, fhir).is_err());
    }

    #[test]
    fn searchsets_are_checked() {
        let body = json!({"resourceType": "Bundle", "type": "searchset", "total": 7,
        "link": [{"relation": "self", "url": "a"}, {"relation": "next", "url": "b"}],
        "entry": [
            {"fullUrl": "http://x/Observation/o1",
             "resource": {"resourceType": "Observation", "id": "o1"}, "search": {"mode": "match"}},
            {"fullUrl": "http://x/Patient/p1",
             "resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "include"}}
        ]});
        let body = body.to_string();
        let page = parse_searchset(body.as_bytes(), Keep::Resources).unwrap();
        assert_eq!((page.entries, page.total, page.next.as_deref()), (2, Some(7), Some("b")));
        assert_eq!(page.resources[1]["id"], "p1");
        let page = parse_searchset(body.as_bytes(), Keep::Urls).unwrap();
        assert_eq!(page.urls, ["http://x/Observation/o1", "http://x/Patient/p1"]);
        let empty = json!({"resourceType": "Bundle", "type": "searchset"});
        let page = parse_searchset(empty.to_string().as_bytes(), Keep::Nothing).unwrap();
        assert_eq!((page.entries, page.total, page.next), (0, None, None));
        let history = json!({"resourceType": "Bundle", "type": "history"});
        assert!(parse_searchset(history.to_string().as_bytes(), Keep::Nothing).is_err());
        let warned = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}]});
        assert!(parse_searchset(warned.to_string().as_bytes(), Keep::Nothing).is_err());
        assert!(parse_searchset(b"not json", Keep::Nothing).is_err());
    }

    #[test]
    fn pool_values_come_from_resources() {
        let patient = json!({"resourceType": "Patient", "id": "x",
            "identifier": [{"system": SYNTHEA_SYSTEM, "value": "1"}],
            "name": [{"use": "maiden", "family": "Old1"}, {"use": "official", "family": "New2"}]});
        assert!(is_synthea(&patient));
        assert_eq!(family(&patient).as_deref(), Some("New2"));
        assert_eq!(
            identifier(&patient).as_deref(),
            Some("https://github.com/synthetichealth/synthea|1")
        );
        let observation = json!({"code": {"coding": [
            {"system": "http://snomed.info/sct", "code": "1"}, {"system": LOINC, "code": "8867-4"}]}});
        assert_eq!(loinc_code(&observation).as_deref(), Some("8867-4"));
    }
}
