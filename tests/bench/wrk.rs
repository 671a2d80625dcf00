//! One wrk run: keep-alive load on a URL for a while, summarised by
//! `wrk-report.lua` as one `BENCH_JSON {...}` line so nothing parses wrk's
//! human-readable report (whose units change with magnitude).

use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use super::cases::Request;

/// A response slower than this counts as a wrk timeout error.
const TIMEOUT: &str = "5s";
/// The Lua script that describes the request and prints the summary.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bench/wrk-report.lua");

/// What wrk measured (latencies in microseconds).
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Summary {
    pub requests: u64,
    pub rps: f64,
    pub p99_us: f64,
    pub errors: Errors,
}

/// wrk's error counters.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct Errors {
    /// Answers with a status above 399 ("Non-2xx or 3xx responses").
    pub status: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

impl Errors {
    /// Everything wrk counts as a socket error.
    pub fn socket(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }

    pub fn any(&self) -> bool {
        self.status + self.socket() > 0
    }
}

/// The load of one run.
pub struct Load<'a> {
    pub url: String,
    pub connections: u32,
    pub request: Request,
    /// Sent as `Authorization: Bearer …` (the direct path; the proxies add it).
    pub bearer: Option<&'a str>,
    pub duration: Duration,
}

/// wrk's threads for `connections`: it needs at least as many connections
/// as threads, and two threads load a 2-core machine without leaving the
/// proxies nothing.
pub fn threads(connections: u32) -> usize {
    connections.min(2) as usize
}

/// Runs wrk with `load`; its whole output is the error when it fails.
pub fn run(load: &Load<'_>) -> Result<Summary, String> {
    let threads = threads(load.connections);
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{threads}"))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .args(["--timeout", TIMEOUT, "--latency", "-s", SCRIPT])
        .env("BENCH_METHOD", load.request.method)
        .env("BENCH_BODY_BYTES", load.request.body_bytes.to_string());
    if let Some(token) = load.bearer {
        command.arg("-H").arg(format!("Authorization: Bearer {token}"));
    }
    command.arg(&load.url);
    let output = command.output().map_err(|e| format!("starting wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("wrk {}: {}", output.status, text.trim()));
    }
    let json = text
        .lines()
        .find_map(|line| line.strip_prefix("BENCH_JSON "))
        .ok_or_else(|| format!("no BENCH_JSON line: {}", text.trim()))?;
    serde_json::from_str(json).map_err(|e| format!("BENCH_JSON {json}: {e}"))
}

/// Whether wrk is installed (checked before anything starts).
pub fn version() -> Option<String> {
    // `wrk -v` prints its version and exits 1.
    let output = Command::new("wrk").arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    text.lines().next().map(|line| line.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
}
