//! Hostile input never panics: random byte strings and mutated real expressions go through
//! `compile` and `evaluate` on a sample resource, and pathological expressions stay bounded.

use kiln_fhirpath::{Context, compile, evaluate};
use serde_json::{Value, json};

fn sample() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "_birthDate": {"extension": [{"url": "http://x", "valueString": "y"}]},
        "birthDate": "1974-12-25",
        "contained": [{"resourceType": "Organization", "id": "o1"}],
        "managingOrganization": {"reference": "#o1"},
        "extension": [{"url": "http://q", "valueQuantity": {"value": 3, "code": "mg"}}]
    })
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    "Patient.name.where(given.startsWith('P')).family | %resource.id",
    "birthDate + 1 year > @2000-01-01T10:00:00Z and (1.5 * 2 'mg').value ~ 3",
    "descendants().ofType(string).select($this.length()).aggregate($total + $this, 0)",
    "managingOrganization.resolve().is(Organization) implies iif(true, 'a' & 'b', {}).matches('a.*')",
    "extension('http://q').value.toQuantity('g').round(2).toString().replaceMatches('[0-9]', 'x')",
    "name.given.repeat($this).distinct().sort(-$this).skip(1).take(1).indexOf('a') div 0 mod 1",
];

const ATOMS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    ".",
    ",",
    "'",
    "`",
    "@",
    "%",
    "$this",
    "{}",
    "-",
    "+",
    "/*",
    "//",
    "\\u",
    "and",
    "is",
    "as",
    "where(",
    "1.0",
    "@T",
    "'x'",
    " ",
    "0",
    "99999999999999999999",
];

#[test]
fn random_input_never_panics() {
    let resource = sample();
    let ctx = Context::new(&resource);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for round in 0..20_000 {
        let text = if round % 2 == 0 {
            // Random bytes (lossily made UTF-8).
            let len = rng.below(40);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            // A real expression with random cuts and insertions.
            let mut s = SEEDS[rng.below(SEEDS.len())].to_string();
            for _ in 0..1 + rng.below(4) {
                let mut at = rng.below(s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                if rng.below(2) == 0 {
                    s.insert_str(at, ATOMS[rng.below(ATOMS.len())]);
                } else {
                    let mut end = (at + rng.below(6)).min(s.len());
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s.replace_range(at..end, "");
                }
            }
            s
        };
        if let Ok(expr) = compile(&text) {
            let _ = evaluate(&expr, &ctx);
        }
    }
}

#[test]
fn pathological_expressions_are_bounded() {
    let resource = sample();
    let ctx = Context::new(&resource);
    let long_chain = vec!["name"; 5_000].join(".");
    assert!(compile(&long_chain).is_err());
    let long_sum = vec!["1"; 5_000].join("+");
    assert!(compile(&long_sum).is_err());
    let nested = "(".repeat(10_000) + &")".repeat(10_000);
    assert!(compile(&nested).is_err());
    // Exponential string growth stops at the size cap.
    let grow = compile("'ab'.repeat($this & $this)").unwrap();
    assert!(evaluate(&grow, &ctx).is_err());
    let doubling = compile("'x'.repeat($this.replace('x', 'xx'))").unwrap();
    assert!(evaluate(&doubling, &ctx).is_err());
    // A regex that would compile to a huge automaton is refused.
    let huge = compile("'a'.matches('(a{1000}){1000}')").unwrap();
    assert!(evaluate(&huge, &ctx).is_err());
}
