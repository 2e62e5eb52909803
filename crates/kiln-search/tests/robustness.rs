//! Property tests with a deterministic generator (no extra dependency): the parser never
//! panics on arbitrary names and values, every query it accepts can be evaluated, and
//! extraction never panics on mutated resources.

use kiln_search::{extract, matches, matches_in, parse_at};
use serde_json::{Value, json};

/// xorshift64*: small, deterministic, good enough to spread inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NAMES: &[&str] = &[
    "name",
    "family",
    "birthdate",
    "gender",
    "identifier",
    "_id",
    "_lastUpdated",
    "_tag",
    "_profile",
    "subject",
    "patient",
    "code",
    "value-quantity",
    "date",
    "component-code-value-quantity",
    "organization",
    "general-practitioner",
    "address-city",
    "probability",
    "url",
    "_has",
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_total",
    "_summary",
    "_elements",
    "_contained",
    "_type",
    "near",
    "_text",
    "foo",
    "",
    "Patient",
    "Observation",
    "Organization",
    "*",
];
const SEPARATORS: &[&str] = &[":", ".", ":", "", ""];
const MODIFIERS: &[&str] = &[
    "exact",
    "contains",
    "not",
    "text",
    "of-type",
    "missing",
    "below",
    "above",
    "identifier",
    "Patient",
    "Group",
    "iterate",
    "in",
    "xx",
    "",
];
const VALUE_PARTS: &[&str] = &[
    "eq",
    "ne",
    "gt",
    "lt",
    "ge",
    "le",
    "sa",
    "eb",
    "ap",
    "xx",
    "2020",
    "-01",
    "-15",
    "T10:00",
    ":00Z",
    "+02:00",
    "100",
    "1.50",
    "1e2",
    "-3",
    ".",
    "|",
    ",",
    "\\",
    "\\,",
    "$",
    "http://x.org/",
    "Patient/",
    "p1",
    "_history/2",
    "mg",
    "true",
    "false",
    "é",
    "Ü",
    "\u{0301}",
    " ",
    "",
    "*",
    "urn:a",
    "Observation:subject",
    ":Patient",
    "9999999999999999999999",
    "0",
    "NaN",
    "inf",
];

fn name(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..=rng.below(4) {
        s.push_str(rng.pick(NAMES));
        s.push_str(rng.pick(SEPARATORS));
        if rng.below(3) == 0 {
            s.push_str(rng.pick(MODIFIERS));
        }
    }
    s
}

fn value(rng: &mut Rng) -> String {
    (0..rng.below(6)).map(|_| rng.pick(VALUE_PARTS)).collect()
}

fn resources() -> Vec<Value> {
    vec![
        json!({"resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": "2020-01-15T10:00:00Z", "tag": [{"code": "t"}]},
            "name": [{"family": "Müller", "given": ["Ann"]}], "gender": "female", "birthDate": "2020-01",
            "identifier": [{"system": "http://x.org/", "value": "100"}], "managingOrganization": {"reference": "Organization/o1"}}),
        json!({"resourceType": "Organization", "id": "o1", "name": "Acme"}),
        json!({"resourceType": "Observation", "id": "ob1", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://x.org/", "code": "100"}]}, "effectiveDateTime": "2020-01-15",
            "valueQuantity": {"value": 1.5, "system": "http://unitsofmeasure.org", "code": "mg"}}),
    ]
}

#[test]
fn parser_never_panics_and_accepted_queries_evaluate() {
    let set = resources();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut rejected) = (0, 0);
    for i in 0..20_000 {
        let ty = ["Patient", "Observation", "Organization", ""][i % 4];
        let pairs: Vec<(String, String)> =
            (0..=rng.below(3)).map(|_| (name(&mut rng), value(&mut rng))).collect();
        match parse_at(ty, &pairs, 1_700_000_000_000) {
            Ok(q) => {
                accepted += 1;
                assert!(q.count <= 1000);
                for r in &set {
                    let _ = matches(&q, r);
                    let _ = matches_in(&q, r, &set);
                }
            }
            Err(issues) => {
                rejected += 1;
                assert!(!issues.is_empty());
                for issue in &issues {
                    assert!(
                        issue.diagnostics.contains("'") || issue.diagnostics.contains("type"),
                        "{issue:?}"
                    );
                }
            }
        }
    }
    println!("{accepted} accepted, {rejected} rejected");
    assert!(accepted > 1000 && rejected > 1000, "{accepted} accepted, {rejected} rejected");
}

#[test]
fn parser_never_panics_on_arbitrary_text() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let mut random = |n: usize| -> String {
            (0..n).filter_map(|_| char::from_u32((rng.next() % 0x250) as u32)).collect()
        };
        let pairs = vec![
            (random(8), random(12)),
            ("name".into(), random(10)),
            ("birthdate".into(), random(10)),
        ];
        let _ = parse_at("Patient", &pairs, 0);
        let _ = parse_at("", &pairs, i64::MAX);
        let _ = parse_at("Observation", &pairs, i64::MIN);
    }
}

const FILTER_PARTS: &[&str] = &[
    "name",
    "family",
    "birthdate",
    "gender",
    "subject",
    "patient",
    "code",
    "value-quantity",
    "identifier",
    "_id",
    "_has:Observation:subject:code",
    "general-practitioner",
    "foo",
    ".",
    "[",
    "]",
    "(",
    ")",
    " ",
    " ",
    " ",
    "eq",
    "ne",
    "co",
    "sw",
    "ew",
    "gt",
    "le",
    "ap",
    "pr",
    "re",
    "in",
    "po",
    "xx",
    "and",
    "or",
    "not",
    "\"",
    "\"Mü ller\"",
    "\\\"",
    "\\u00e9",
    "true",
    "male",
    "2020-01",
    "5|ucum|mg",
    "loinc|100",
    "Patient/p1",
    "p1",
    "é",
    ",",
    "|",
    "$",
    ":",
];

const VALID_COMPARISONS: &[&str] = &[
    "name co \"mü\"",
    "gender ne male",
    "birthdate ge 2020-01",
    "_id eq p1",
    "subject.name sw a",
    "subject[gender eq female].family ew er",
    "code eq loinc|100",
    "value-quantity gt 1|ucum|mg",
    "_lastUpdated pr true",
    "patient re Patient/p1",
];

/// `_filter` values made of grammar fragments: the parser and the translation never panic,
/// and every accepted query can be evaluated.
#[test]
fn filter_never_panics_and_accepted_filters_evaluate() {
    let set = resources();
    let mut rng = Rng(0xf117e5);
    let (mut accepted, mut rejected) = (0, 0);
    for i in 0..20_000 {
        let ty = ["Patient", "Observation", ""][i % 3];
        let text: String = if i % 2 == 0 {
            // Shaped like a comparison sequence, so that many parse.
            (0..=rng.below(3))
                .map(|j| {
                    let join = if j == 0 { "" } else { rng.pick(&[" and ", " or ", " and not ("]) };
                    let open = rng.pick(&["", "("]);
                    let comparison = if rng.below(2) == 0 {
                        rng.pick(VALID_COMPARISONS).to_owned()
                    } else {
                        format!(
                            "{} {} {}",
                            rng.pick(&FILTER_PARTS[..14]),
                            rng.pick(&FILTER_PARTS[21..36]),
                            rng.pick(&FILTER_PARTS[39..])
                        )
                    };
                    format!("{join}{open}{comparison}")
                })
                .collect::<String>()
        } else {
            (0..rng.below(12)).map(|_| rng.pick(FILTER_PARTS)).collect()
        };
        // Mostly balanced: close what was opened.
        let opened = text.matches('(').count().saturating_sub(text.matches(')').count());
        let text = if i % 4 == 0 { text + &")".repeat(opened) } else { text };
        match parse_at(ty, &[("_filter".to_owned(), text)], 1_700_000_000_000) {
            Ok(q) => {
                accepted += 1;
                for r in &set {
                    let _ = matches_in(&q, r, &set);
                }
            }
            Err(issues) => {
                rejected += 1;
                assert!(issues.iter().all(|i| i.diagnostics.contains("'_filter'")), "{issues:?}");
            }
        }
    }
    println!("{accepted} accepted, {rejected} rejected");
    assert!(accepted > 500 && rejected > 1000, "{accepted} accepted, {rejected} rejected");
}

/// Replaces random nodes of a resource with values of other shapes.
fn mutate(v: &mut Value, rng: &mut Rng) {
    let replacement = || {
        [
            json!(null),
            json!(1),
            json!("x"),
            json!(true),
            json!([]),
            json!({}),
            json!([{"a": 1}]),
            json!(1.5e300),
        ]
    };
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if k == "resourceType" {
                    continue;
                }
                if rng.below(6) == 0 {
                    let options = replacement();
                    map.insert(k, options[rng.below(options.len())].clone());
                } else if let Some(child) = map.get_mut(&k) {
                    mutate(child, rng);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mutate(i, rng)),
        _ => {}
    }
}

#[test]
fn extraction_never_panics_on_mutated_resources() {
    let mut rng = Rng(7);
    for round in 0..300 {
        for base in resources() {
            let mut r = base.clone();
            mutate(&mut r, &mut rng);
            let _ = extract(&r);
            if round % 50 == 0 {
                assert!(!extract(&base).is_empty());
            }
        }
    }
}
