//! Throughput of index extraction (every search parameter's FHIRPath over every resource) on a
//! folder of Bundles, e.g. the Synthea data:
//!
//! ```sh
//! cargo run --release -p kiln-search --example extract_bench -- ../shared/data/synthea
//! ```

use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "../shared/data/synthea".into());
    let mut resources = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("a folder of Bundles") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let Ok(bundle) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if let Some(entries) = bundle.get("entry").and_then(|e| e.as_array()) {
            resources.extend(entries.iter().filter_map(|e| e.get("resource").cloned()));
        }
    }
    // Warm the compiled-expression cache.
    for r in resources.iter().take(200) {
        kiln_search::extract(r);
    }
    let start = Instant::now();
    let mut rows = 0usize;
    for r in &resources {
        rows += kiln_search::extract(r).len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} resources, {rows} index rows ({:.1} per resource) in {secs:.2} s: {:.0} resources/s, {:.1} µs per resource",
        resources.len(),
        rows as f64 / resources.len() as f64,
        resources.len() as f64 / secs,
        secs * 1e6 / resources.len() as f64
    );
}
