//! The knobs of a run, read once from the environment. Every knob is a
//! `BENCH_*` variable so the one documented command stays the same.

use std::path::PathBuf;
use std::time::Duration;

/// What one run does; see the table in `main.rs`'s documentation.
pub struct Settings {
    /// Length of each measured wrk run (`BENCH_SECS`).
    pub run: Duration,
    /// Unmeasured wrk run before the first round of each case and path
    /// (`BENCH_WARMUP_SECS`, 0 to skip): connections opened, caches warm.
    pub warmup: Duration,
    /// Measured runs per case and path (`BENCH_ROUNDS`); the report shows medians.
    pub rounds: usize,
    /// Case names to run (`BENCH_CASES`, comma-separated, `*` at the end of a
    /// name matches any rest); `None` runs them all.
    pub cases: Option<Vec<String>>,
    /// Size of the streamed upload and download (`BENCH_STREAM`: `1G`,
    /// `256M`, `0` to skip the streaming check).
    pub stream_bytes: u64,
    /// Whether to measure syscalls and context switches with `perf stat`
    /// (`BENCH_PERF=0` turns it off; without a working `perf` it is skipped).
    pub perf: bool,
    /// `worker_processes` of the upstream nginx (`BENCH_UPSTREAM_WORKERS`).
    pub upstream_workers: u32,
    /// Keep the temporary directory (configs, logs) at the end (`BENCH_KEEP_TMP=1`).
    pub keep_tmp: bool,
    /// Where the report is written (`BENCH_OUT_DIR`, default `target/bench`).
    pub out_dir: PathBuf,
    /// Also run ours with tracing on, every request sampled, exporting to a
    /// loopback collector (`BENCH_TRACING=1`).
    pub tracing: bool,
    /// Also run this other build of truedat-auth-proxy (`BENCH_BASELINE`,
    /// a path), side by side with this one: tracing off against a build
    /// without tracing.
    pub baseline: Option<String>,
    /// With the tracing comparison, how long every proxy of a group is left
    /// idle after login, to measure its idle CPU and wake-ups
    /// (`BENCH_IDLE_SECS`, default 20; 0 skips it).
    pub idle: Duration,
    /// Pin the proxies under test to the last CPU, and wrk, the upstream
    /// nginx and this program (the collector) to the others
    /// (`BENCH_PIN=1`): each proxy's CPU per request is then measured
    /// without wrk and the upstream taking turns on its core.
    pub pin: bool,
}

impl Settings {
    /// Reads the `BENCH_*` variables; panics naming the variable on a bad value.
    pub fn from_env() -> Settings {
        Settings {
            run: Duration::from_secs(number("BENCH_SECS", 5).max(1)),
            warmup: Duration::from_secs(number("BENCH_WARMUP_SECS", 1)),
            rounds: number("BENCH_ROUNDS", 3).max(1) as usize,
            cases: var("BENCH_CASES").map(|list| {
                list.split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_owned).collect()
            }),
            stream_bytes: var("BENCH_STREAM").map_or(1 << 30, |v| {
                size(&v).unwrap_or_else(|| panic!("BENCH_STREAM={v:?}: write a size such as 1G, 256M or 0"))
            }),
            perf: var("BENCH_PERF").is_none_or(|v| v != "0"),
            upstream_workers: number("BENCH_UPSTREAM_WORKERS", 1).max(1) as u32,
            keep_tmp: var("BENCH_KEEP_TMP").is_some_and(|v| v == "1"),
            out_dir: var("BENCH_OUT_DIR")
                .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"), PathBuf::from),
            tracing: var("BENCH_TRACING").is_some_and(|v| v == "1"),
            baseline: var("BENCH_BASELINE"),
            idle: Duration::from_secs(number("BENCH_IDLE_SECS", 20)),
            pin: var("BENCH_PIN").is_some_and(|v| v == "1"),
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn number(name: &str, default: u64) -> u64 {
    var(name).map_or(default, |v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")))
}

/// Bytes from `1G`, `256M`, `64K` (binary units) or a plain number.
fn size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last()? {
        (i, 'G' | 'g') => (&text[..i], 1 << 30),
        (i, 'M' | 'm') => (&text[..i], 1 << 20),
        (i, 'K' | 'k') => (&text[..i], 1 << 10),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok().map(|n| n * unit)
}
