//! What the machine is and where its CPU went: core count and CPU model, CPU time of the
//! server process, of this process and of the whole machine (idle, iowait), and the server's
//! resident memory, from `/proc`. Everything is best effort: off Linux the figures are simply
//! absent.

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

/// The most server processes a run measures (`kiln bench --nodes`).
pub const MAX_NODES: usize = 8;

/// The process ids of the server under test: none (an external server without
/// `--server-pid`), one, or one per node. `Copy`, so every measurement can take it along.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pids {
    ids: [u32; MAX_NODES],
    len: usize,
}

impl Pids {
    /// At most [`MAX_NODES`] ids (the rest are ignored; the caller refuses more nodes).
    pub fn new(ids: &[u32]) -> Pids {
        let mut pids = Pids::default();
        for &id in ids.iter().take(MAX_NODES) {
            pids.ids[pids.len] = id;
            pids.len += 1;
        }
        pids
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..self.len]
    }

    /// The first node's process (memory is followed on that one).
    pub fn first(&self) -> Option<u32> {
        self.as_slice().first().copied()
    }
}

impl CpuSample {
    /// `server_ticks` is the sum over `server`'s processes (`None` if one cannot be read).
    pub fn take(server: Pids) -> CpuSample {
        let server_ticks = if server.len == 0 {
            None
        } else {
            server
                .as_slice()
                .iter()
                .map(|pid| process_ticks(&format!("/proc/{pid}/stat")))
                .sum::<Option<u64>>()
        };
        CpuSample {
            at: Instant::now(),
            server_ticks,
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

/// Resident memory of a process at one instant, in KiB (`/proc/{pid}/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kb: u64,
    /// `VmHWM`: the most resident since the process started or since [`reset_peak`].
    pub hwm_kb: u64,
}

/// The server's memory around one run: before it, its peak during it, and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    pub before: Memory,
    pub after: Memory,
    /// Whether `VmHWM` was reset at the start, so that `after.hwm_kb` is the run's own peak
    /// (else it is the process's peak since it started).
    pub peak_reset: bool,
    /// The largest `VmRSS` seen while polling during the run.
    pub sampled_max_kb: u64,
}

impl MemoryUse {
    /// The peak during the run, as well as it is known: `VmHWM` if it was reset at the start,
    /// else the largest sample.
    pub fn peak_kb(&self) -> u64 {
        if self.peak_reset {
            self.after.hwm_kb.max(self.sampled_max_kb)
        } else {
            self.sampled_max_kb
        }
    }
}

/// Follows the server's memory over one run: `VmHWM` reset at the start where possible, and
/// `VmRSS` sampled whenever [`MemoryWatch::sample`] is called.
#[derive(Debug)]
pub struct MemoryWatch {
    pid: Option<u32>,
    before: Option<Memory>,
    peak_reset: bool,
    sampled_max_kb: u64,
}

impl MemoryWatch {
    /// Reads the memory before the run (with the peak so far), then resets the peak.
    pub fn start(pid: Option<u32>) -> MemoryWatch {
        let before = pid.and_then(memory);
        let peak_reset = before.is_some() && pid.is_some_and(reset_peak);
        let sampled_max_kb = before.map_or(0, |m| m.rss_kb);
        MemoryWatch { pid, before, peak_reset, sampled_max_kb }
    }

    pub fn sample(&mut self) {
        if let Some(now) = self.pid.and_then(memory) {
            self.sampled_max_kb = self.sampled_max_kb.max(now.rss_kb);
        }
    }

    /// The memory after the run; `None` without a server process to read.
    pub fn finish(mut self) -> Option<MemoryUse> {
        self.sample();
        let after = self.pid.and_then(memory)?;
        Some(MemoryUse {
            before: self.before?,
            after,
            peak_reset: self.peak_reset,
            sampled_max_kb: self.sampled_max_kb,
        })
    }
}

/// The `VmRSS` and `VmHWM` of process `pid`.
pub fn memory(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Memory { rss_kb: status_kb(&text, "VmRSS")?, hwm_kb: status_kb(&text, "VmHWM")? })
}

/// A `kB` field of `/proc/{pid}/status` (`VmHWM:\t  123456 kB`).
fn status_kb(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    let (_, value) = line.split_once(':')?;
    let mut words = value.split_whitespace();
    let number = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(number)
}

/// Resets process `pid`'s `VmHWM` to its current `VmRSS` (writing `5` to
/// `/proc/{pid}/clear_refs`, Linux 4.0 and later; needs the right to trace the process, which
/// the parent of a child has). Returns whether it worked. Changes nothing else.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
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
            let own = memory(std::process::id()).unwrap();
            assert!(own.rss_kb > 0 && own.hwm_kb >= own.rss_kb);
        }
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let text = "Name:\tkiln\nVmPeak:\t  900 kB\nVmHWM:\t  123456 kB\nVmRSS:\t   65432 kB\nThreads:\t9\n";
        assert_eq!(status_kb(text, "VmHWM"), Some(123_456));
        assert_eq!(status_kb(text, "VmRSS"), Some(65_432));
        assert_eq!(status_kb(text, "Threads"), None);
        assert_eq!(status_kb(text, "VmSwap"), None);
        let before = Memory { rss_kb: 10, hwm_kb: 50 };
        let after = Memory { rss_kb: 12, hwm_kb: 30 };
        let reset = MemoryUse { before, after, peak_reset: true, sampled_max_kb: 20 };
        assert_eq!(reset.peak_kb(), 30);
        assert_eq!(MemoryUse { peak_reset: false, ..reset }.peak_kb(), 20);
    }
}
