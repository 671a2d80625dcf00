//! What the proxies cost, read from `/proc`: CPU time (utime + stime of
//! every process of a proxy, so nginx's master and workers are summed) and
//! resident memory (`VmRSS`, summed the same way), sampled in the background
//! while wrk runs to catch the peak.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the background sampler reads `VmRSS`.
const RSS_EVERY: Duration = Duration::from_millis(50);

/// Clock ticks per second of `/proc/PID/stat`'s CPU times (`getconf CLK_TCK`).
pub fn ticks_per_second() -> f64 {
    super::process::output_of("getconf", &["CLK_TCK"]).and_then(|t| t.parse().ok()).unwrap_or(100.0)
}

/// CPU seconds the processes `pids` have used so far, user and system, all
/// their threads (`/proc/PID/stat` fields 14 and 15). A process that is
/// gone counts as zero.
pub fn cpu_seconds(pids: &[u32], ticks_per_second: f64) -> Cpu {
    let (user, system) = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // The command name may hold spaces: count fields after its ")".
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (field(11), field(12))
        })
        .fold((0, 0), |(user, system), (u, s)| (user + u, system + s));
    Cpu { user: user as f64 / ticks_per_second, system: system as f64 / ticks_per_second }
}

/// CPU time in seconds, in user space and in the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub user: f64,
    pub system: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;

    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu { user: self.user - earlier.user, system: self.system - earlier.system }
    }
}

/// The whole machine's CPU time so far, in clock ticks, as (busy, all):
/// the first line of `/proc/stat`, idle and iowait being the not-busy part.
/// Between two readings, busy / all is the share of every core that was
/// working: near 1.0, the run was limited by the machine, not by a proxy.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let all: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (all.saturating_sub(idle), all)
}

/// Summed `VmRSS` of `pids` in KiB; a process that is gone counts as zero.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
            line.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
        .sum()
}

/// What processes cost while idle, over a span of time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Idle {
    /// CPU time per second, in µs (`/proc/PID/task/*/schedstat`: nanoseconds
    /// on CPU, far finer than `/proc/PID/stat`'s 10 ms ticks).
    pub cpu_us_per_second: f64,
    /// Voluntary context switches per second, every thread: its wake-ups.
    pub wakeups_per_second: f64,
}

/// Nanoseconds on CPU and voluntary context switches of every thread of `pids`.
fn cpu_ns_and_wakeups(pids: &[u32]) -> (u64, u64) {
    let mut totals = (0, 0);
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let read = |file: &str| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
            totals.0 += read("schedstat").split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
            totals.1 += read("status")
                .lines()
                .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    totals
}

/// What each of `processes` costs while nothing happens for `duration`
/// (measured together, so that they share the machine's conditions).
pub fn idle<K: Copy>(processes: &[(K, Vec<u32>)], duration: Duration) -> Vec<(K, Idle)> {
    let before: Vec<(u64, u64)> = processes.iter().map(|(_, pids)| cpu_ns_and_wakeups(pids)).collect();
    std::thread::sleep(duration);
    let seconds = duration.as_secs_f64();
    processes
        .iter()
        .zip(before)
        .map(|((key, pids), (cpu0, wake0))| {
            let (cpu1, wake1) = cpu_ns_and_wakeups(pids);
            let idle = Idle {
                cpu_us_per_second: cpu1.saturating_sub(cpu0) as f64 / 1e3 / seconds,
                wakeups_per_second: wake1.saturating_sub(wake0) as f64 / seconds,
            };
            (*key, idle)
        })
        .collect()
}

/// A thread reading the summed `VmRSS` of some processes every
/// [`RSS_EVERY`] and keeping the largest.
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl RssPeak {
    /// Starts sampling `pids`.
    pub fn start(pids: Vec<u32>) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = rss_kib(&pids);
            while !stopping.load(Ordering::Relaxed) {
                std::thread::sleep(RSS_EVERY);
                peak = peak.max(rss_kib(&pids));
            }
            peak
        });
        RssPeak { stop, thread }
    }

    /// Stops sampling; the peak in KiB.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sampler only reads /proc and does not panic")
    }
}
