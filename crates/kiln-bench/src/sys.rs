//! What the machine is and where its CPU went: core count and CPU model, and CPU time of the
//! server process, of this process and of the whole machine (idle, iowait) from `/proc`.
//! Everything is best effort: off Linux the figures are simply absent.

use std::time::Instant;

/// Clock ticks per second of `/proc` CPU times. 100 on every mainstream Linux build
/// (`getconf CLK_TCK`); reading it properly would need libc.
const TICKS_PER_SECOND: f64 = 100.0;

/// Cumulative CPU counters at one instant.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    server_ticks: Option<u64>,
    bench_ticks: Option<u64>,
    /// (total, idle, iowait) ticks summed over all CPUs.
    machine: Option<(u64, u64, u64)>,
}

/// CPU use between two samples, each in % of one core (so they add up to about nproc x 100).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// The server process.
    pub server: Option<f64>,
    /// This process.
    pub bench: Option<f64>,
    /// Everything else on the machine (other processes, other containers, interrupts).
    pub other: Option<f64>,
    /// Idle, iowait included.
    pub idle: Option<f64>,
    /// Idle while some task waited for I/O (fsync, mostly).
    pub iowait: Option<f64>,
}

impl CpuSample {
    pub fn take(server_pid: Option<u32>) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            server_ticks: server_pid.and_then(|pid| process_ticks(&format!("/proc/{pid}/stat"))),
            bench_ticks: process_ticks("/proc/self/stat"),
            machine: machine_ticks(),
        }
    }
}

/// utime + stime of a process (all its threads), from `/proc/{pid}/stat`.
fn process_ticks(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' comes field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn machine_ticks() -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    Some((total, *values.get(3)?, *values.get(4)?))
}

pub fn usage(before: &CpuSample, after: &CpuSample) -> Usage {
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    let percent_of_core = |a: Option<u64>, b: Option<u64>| {
        let (a, b) = (a?, b?);
        (seconds > 0.0).then(|| b.saturating_sub(a) as f64 / TICKS_PER_SECOND / seconds * 100.0)
    };
    let server = percent_of_core(before.server_ticks, after.server_ticks);
    let bench = percent_of_core(before.bench_ticks, after.bench_ticks);
    let (busy, idle, iowait) = match (before.machine, after.machine) {
        (Some((t0, i0, w0)), Some((t1, i1, w1))) if seconds > 0.0 => {
            let core = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / seconds * 100.0;
            let (total, idle, iowait) = (t1 - t0, i1 - i0, w1 - w0);
            (
                Some(core(total.saturating_sub(idle + iowait))),
                Some(core(idle + iowait)),
                Some(core(iowait)),
            )
        }
        _ => (None, None, None),
    };
    let other = match (busy, server, bench) {
        // Without the server's own figure (`--url`), "other" would silently include the server.
        (Some(busy), Some(server), Some(bench)) => Some((busy - server - bench).max(0.0)),
        _ => None,
    };
    Usage { server, bench, other, idle, iowait }
}

/// The CPU model from `/proc/cpuinfo` (`model name`, or what ARM kernels print instead).
pub fn cpu_model() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    for key in ["model name", "Model", "Hardware", "cpu model"] {
        if let Some(value) = text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        }) {
            return value;
        }
    }
    "unknown".into()
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `git rev-parse --short HEAD` of the current directory, if it is a checkout.
pub fn git_commit() -> Option<String> {
    let out =
        std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_ticks("/proc/self/stat").is_some());
            assert!(machine_ticks().is_some());
        }
    }
}
