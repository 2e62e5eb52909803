//! Output: the machine header, a markdown table of results, and the same as JSON.

use serde_json::{Value, json};

use crate::load::{RunResult, Scenario};

/// Facts about the run printed above the table and stored in the JSON.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub date: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub kiln_version: String,
    pub git_commit: Option<String>,
    pub server: String,
    /// How requests were authenticated.
    pub auth: String,
    pub command: String,
    pub bundles: String,
    /// What the search and bulk scenarios ran on (`None`: none of them ran).
    pub search_data: Option<String>,
    pub seconds: u64,
    pub warmup: u64,
    pub repeat: usize,
}

pub fn header(info: &RunInfo) -> String {
    format!(
        "- date: {}\n- machine: {} CPUs, {}\n- server software: {}{}\n- server: {}\n- authentication: {}\n- import data: {}\n{}- command: `{}`\n- each run: {} s measured after {} s warm-up{}; load generator on the same machine\n",
        info.date,
        info.nproc,
        info.cpu_model,
        info.kiln_version,
        info.git_commit
            .as_deref()
            .map(|c| format!(" (kiln repository HEAD at run time: {c})"))
            .unwrap_or_default(),
        info.server,
        info.auth,
        info.bundles,
        info.search_data.as_deref().map(|s| format!("- data: {s}\n")).unwrap_or_default(),
        info.command,
        info.seconds,
        info.warmup,
        if info.repeat > 1 {
            format!(", {} repetitions, the median by req/s shown", info.repeat)
        } else {
            String::new()
        },
    )
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0}%"))
}

/// Thousands separators: 12345.6 -> "12,346".
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn markdown(results: &[RunResult]) -> String {
    let repeated = results.iter().any(|r| r.repetitions.len() > 1);
    let mut out = String::from(
        "| scenario | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors | resources/s | server CPU | bench CPU | other CPU | idle |",
    );
    out.push_str(if repeated { " req/s of each run |\n" } else { "\n" });
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    out.push_str(if repeated { "---|\n" } else { "\n" });
    for r in results {
        let resources = match r.scenario {
            _ if r.counts_matches() => thousands(r.match_rate()),
            s if s.counts_resources() => thousands(r.resource_rate()),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
            r.name(),
            r.clients,
            thousands(r.requests as f64),
            thousands(r.rate()),
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.errors,
            resources,
            percent(r.server_cpu),
            percent(r.bench_cpu),
            percent(r.other_cpu),
            percent(r.idle),
        ));
        if repeated {
            let runs: Vec<String> = r.repetitions.iter().map(|v| thousands(*v)).collect();
            out.push_str(&format!(" {} |", runs.join(" / ")));
        }
        out.push('\n');
    }
    out.push_str(
        "\nCPU columns are % of one core over the measured window (they add up to about nproc x 100%): \
         the server process, this load generator, everything else on the machine, and idle.\n",
    );
    out.push_str(&notes(results));
    out
}

/// What the columns mean for the rows that are not plain requests.
fn notes(results: &[RunResult]) -> String {
    let has = |scenario: Scenario| results.iter().any(|r| r.scenario == scenario);
    let mut out = String::new();
    if results.iter().any(|r| r.part.is_some()) {
        out.push_str(
            "\nRows named `workload: part` are the parts of the row above them (one kind of request each), over the same \
             window; CPU is measured for the whole run only. crud: every cycle creates a resource, reads it, \
             updates it (If-Match) and deletes it; the nine types are taken in turn. search: each request is \
             one of the nine searches, drawn with equal odds.\n",
        );
    }
    if has(Scenario::SyntheaLoad) {
        out.push_str(
            "\nload: requests are the bundles posted, resources/s counts their entries, and the \
             time is the whole load (no warm-up); latencies are per bundle.\n",
        );
    }
    if results.iter().any(|r| r.scenario.is_search()) {
        out.push_str(
            "\nSearches: resources/s counts the entries returned (matches and includes). \
             search-count returns none; its resources/s is matches counted per second (the sum of Bundle.total).\n",
        );
    }
    if has(Scenario::Page) {
        out.push_str(
            "\npage: one client, one pass through every Observation with _count=1000 (no warm-up), \
             the client's parsing included; requests are pages and latencies are per page.\n",
        );
    }
    if has(Scenario::Export) || has(Scenario::BulkImport) {
        out.push_str(
            "\nexport, bulk-import: one job each, timed from the kick-off to the 200 manifest (status polled \
             every fiftieth of the time so far, 10-500 ms); requests are jobs, the latency is the job's, resources/s counts the \
             manifest's resources. export-download: the export's files fetched one after the other, \
             streamed; requests are files, resources their lines.\n",
        );
    }
    for r in results.iter().filter(|r| !r.notes.is_empty()) {
        out.push_str(&format!("\n{}:\n", r.name()));
        for note in &r.notes {
            out.push_str(&format!("- {note}\n"));
        }
    }
    out
}

pub fn json(info: &RunInfo, results: &[RunResult]) -> Value {
    json!({
        "date": info.date,
        "machine": {"nproc": info.nproc, "cpu_model": info.cpu_model},
        "kiln_version": info.kiln_version,
        "git_commit": info.git_commit,
        "server": info.server,
        "authentication": info.auth,
        "import_data": info.bundles,
        "search_data": info.search_data,
        "command": info.command,
        "seconds": info.seconds,
        "warmup_seconds": info.warmup,
        "repeat": info.repeat,
        "results": results.iter().map(|r| json!({
            "scenario": r.scenario.name(),
            "part": r.part,
            "name": r.name(),
            "clients": r.clients,
            "requests": r.requests,
            "errors": r.errors,
            "error_samples": r.error_samples,
            "seconds": r.seconds,
            "requests_per_second": r.rate(),
            "requests_per_node": (!r.per_node.is_empty()).then_some(&r.per_node),
            "resources": r.resources,
            "resources_per_second": r.resource_rate(),
            "matches": r.matches,
            "matches_per_second": r.match_rate(),
            "latency_ms": {"p50": r.p50_ms, "p90": r.p90_ms, "p95": r.p95_ms, "p99": r.p99_ms, "max": r.max_ms, "mean": r.mean_ms},
            "cpu_percent_of_one_core": {"server": r.server_cpu, "bench": r.bench_cpu,
                                        "other": r.other_cpu, "idle": r.idle, "iowait": r.iowait},
            "requests_per_second_each_run": r.repetitions,
            "server_memory_kb": r.memory.map(|m| json!({
                "rss_before": m.before.rss_kb, "hwm_before": m.before.hwm_kb,
                "peak": m.peak_kb(), "peak_is_hwm_reset_at_start": m.peak_reset,
                "rss_sampled_max": m.sampled_max_kb,
                "rss_after": m.after.rss_kb, "hwm_after": m.after.hwm_kb,
            })),
            "notes": r.notes,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
