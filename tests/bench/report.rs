//! What a run found, and the Markdown it prints: one table of throughput,
//! CPU and latency ratios per case (the README's), one of perf counts per
//! request, one of memory per group, then streaming and start-up facts, all
//! headed by the machine and commit it ran on; with the tracing comparison,
//! one table of ours against ours with tracing on and against a baseline build.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::cases::{Case, Group, Via};
use super::perf;
use super::sample::{Cpu, Idle};
use super::stream::Streaming;
use super::wrk::Errors;

/// One measured wrk run on one path.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub requests: u64,
    pub rps: f64,
    pub p99_us: f64,
    /// CPU seconds the proxy used during the run (`None` on the direct path).
    pub cpu_seconds: Option<Cpu>,
    pub errors: Errors,
    /// What explains a ratio (see [`Why`]).
    pub why: Why,
}

/// What else happened during a run, to explain its ratios: the same case
/// measured by another harness can differ because of these, not because of
/// the proxies.
#[derive(Clone, Copy, Debug, Default)]
pub struct Why {
    /// Connections the upstream accepted during the run (each one a TCP,
    /// and for TLS a handshake, paid by the proxy and by the upstream).
    pub upstream_accepts: Option<u64>,
    /// CPU seconds of the upstream nginx per second of the run: near its
    /// worker count, the upstream was the bottleneck.
    pub upstream_busy: f64,
    /// Share of all cores busy during the run (every process: wrk, the
    /// upstream, the proxy): near 1.0, the machine was the bottleneck.
    pub machine_busy: f64,
    /// wrk's threads (`-t`), which compete for the same cores.
    pub wrk_threads: usize,
}

impl Sample {
    /// Requests served per CPU-second of the proxy.
    pub fn per_cpu_second(&self) -> Option<f64> {
        self.cpu_seconds.map(Cpu::total).filter(|&cpu| cpu > 0.0).map(|cpu| self.requests as f64 / cpu)
    }

    /// CPU µs per request in user space and in the kernel.
    pub fn split_us(&self) -> Option<(f64, f64)> {
        let cpu = self.cpu_seconds?;
        (self.requests > 0).then(|| {
            let per_request = |seconds: f64| seconds * 1e6 / self.requests as f64;
            (per_request(cpu.user), per_request(cpu.system))
        })
    }
}

/// One proxy's memory in a group, in KiB (nginx: master and workers summed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Ready, before any request.
    pub idle_kib: u64,
    /// Peak during the 256-connection runs, if the group had one.
    pub at_256_kib: Option<u64>,
    /// CPU and wake-ups while idle after login (the tracing comparison only).
    pub idle: Option<Idle>,
}

/// What a group's proxies cost in memory.
pub struct GroupMemory {
    pub group: Group,
    pub nginx: Memory,
    pub ours: Memory,
    /// truedat-auth-proxy's connections to the upstream after the load (one
    /// when HTTP/2 was negotiated).
    pub ours_upstream_connections: usize,
    /// Every truedat-auth-proxy of the group: ours, and the tracing
    /// comparison's traced and baseline ones when measured.
    pub flavours: Vec<(Via, Memory)>,
}

/// Where and on what a run happened.
pub struct Environment {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub load_average: String,
    pub commit: String,
    pub nginx: String,
    pub wrk: String,
    /// The settings in a sentence.
    pub settings: String,
}

/// Everything measured, filled in by `main` as it goes.
#[derive(Default)]
pub struct Results {
    pub samples: HashMap<(String, Via), Vec<Sample>>,
    /// perf's counts over a run, with the requests of that run.
    pub perf: HashMap<(String, Via), (perf::Counts, u64)>,
    /// Why perf columns are missing, when they are.
    pub perf_skipped: Option<String>,
    pub memory: Vec<GroupMemory>,
    pub streaming: Option<Streaming>,
    pub ready: Vec<Duration>,
    pub binary_bytes: u64,
    /// The size of the `BENCH_BASELINE` binary, when there is one.
    pub baseline_bytes: Option<u64>,
    /// What the loopback collector of the traced proxies received:
    /// (exports, spans, exports that were not OTLP protobuf).
    pub collected: Option<(u64, u64, u64)>,
    /// `truedat_proxy_trace_spans_dropped_total` of the traced proxies, summed.
    pub spans_dropped: f64,
    /// The tracer alone: CPU µs per request, by sampler.
    pub tracer: Vec<(&'static str, f64)>,
    /// Failed checks: any makes the run fail.
    pub problems: Vec<String>,
}

impl Results {
    /// Records a sample of `case` on `via`.
    pub fn add(&mut self, case: &Case, via: Via, sample: Sample) {
        self.samples.entry((case.name(), via)).or_default().push(sample);
    }

    fn median(&self, case: &Case, via: Via, value: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        median(self.samples.get(&(case.name(), via))?.iter().filter_map(value).collect())
    }

    /// `a`'s CPU per request over `b`'s, round by round (each round runs
    /// both, one after the other): the median and the range. On a machine
    /// whose speed drifts from one round to the next, the pairs say more
    /// than the ratio of two medians.
    fn paired_cpu(&self, case: &Case, a: Via, b: Via) -> String {
        let per_cpu_second =
            |via| self.samples.get(&(case.name(), via)).into_iter().flatten().map(Sample::per_cpu_second);
        let mut ratios: Vec<f64> =
            per_cpu_second(a).zip(per_cpu_second(b)).filter_map(|(a, b)| Some(b? / a?)).collect();
        ratios.sort_by(f64::total_cmp);
        match (ratios.first(), ratios.last()) {
            (Some(low), Some(high)) => {
                format!("{} ({low:.2}-{high:.2})", fixed(median(ratios.clone()), 2))
            }
            _ => "-".to_owned(),
        }
    }

    /// `via`'s least CPU per request over the rounds (µs). The shared
    /// machine's disturbances (other tenants, cache and memory traffic) only
    /// ever add CPU time, so the least-disturbed round of each is the
    /// steadiest estimate of its own cost.
    fn least_cpu_us(&self, case: &Case, via: Via) -> Option<f64> {
        let samples = self.samples.get(&(case.name(), via))?;
        samples.iter().filter_map(Sample::per_cpu_second).max_by(f64::total_cmp).map(|per_second| 1e6 / per_second)
    }

    fn errors(&self, case: &Case, via: Via) -> (u64, u64) {
        self.samples
            .get(&(case.name(), via))
            .into_iter()
            .flatten()
            .fold((0, 0), |(status, socket), s| (status + s.errors.status, socket + s.errors.socket()))
    }

    fn per_request(&self, case: &Case, via: Via, value: impl Fn(&perf::Counts) -> f64) -> Option<f64> {
        let (counts, requests) = self.perf.get(&(case.name(), via))?;
        (*requests > 0).then(|| value(counts) / *requests as f64)
    }

    /// The report, as Markdown.
    pub fn render(&self, cases: &[Case], environment: &Environment) -> String {
        let mut out = String::new();
        let e = environment;
        let _ = writeln!(out, "## truedat-auth-proxy benchmark\n");
        let _ = writeln!(
            out,
            "Machine: {} CPUs, {}, {}; load average at start {}.",
            e.cpus, e.cpu_model, e.kernel, e.load_average
        );
        let _ = writeln!(out, "Commit {}; {}; {}.", e.commit, e.nginx, e.wrk);
        let _ = writeln!(out, "{}\n", e.settings);
        self.render_throughput(&mut out, cases);
        self.render_why(&mut out, cases);
        self.render_perf(&mut out, cases);
        self.render_memory(&mut out);
        self.render_tracing(&mut out, cases);
        self.render_other(&mut out);
        if self.problems.is_empty() {
            let _ = writeln!(
                out,
                "All checks passed: no errors through truedat-auth-proxy, one login per instance, clean exits."
            );
        } else {
            let _ = writeln!(out, "FAILED checks:");
            for problem in &self.problems {
                let _ = writeln!(out, "- {problem}");
            }
        }
        out
    }

    fn render_throughput(&self, out: &mut String, cases: &[Case]) {
        let _ = writeln!(
            out,
            "Throughput, CPU and latency (medians over the rounds; req/CPU-s = requests per CPU-second of the proxy, from /proc utime+stime, nginx = master + workers; errors = wrk's non-2xx / socket errors over all rounds):\n"
        );
        let mut table = Table::new(&[
            "case",
            "req/s direct",
            "req/s nginx",
            "req/s ours",
            "throughput ours/nginx",
            "req/CPU-s nginx",
            "req/CPU-s ours",
            "req/CPU-s ours/nginx",
            "p99 nginx (ms)",
            "p99 ours (ms)",
            "p99 ours/nginx",
            "errors nginx",
            "errors ours",
        ]);
        for case in cases {
            let rps = |via| self.median(case, via, |s| Some(s.rps));
            let per_cpu = |via| self.median(case, via, Sample::per_cpu_second);
            let p99 = |via| self.median(case, via, |s| Some(s.p99_us));
            let errors = |via| {
                let (status, socket) = self.errors(case, via);
                format!("{status}/{socket}")
            };
            table.row(vec![
                case.describe(),
                whole(rps(Via::Direct)),
                whole(rps(Via::Nginx)),
                whole(rps(Via::Ours)),
                ratio(rps(Via::Ours), rps(Via::Nginx)),
                whole(per_cpu(Via::Nginx)),
                whole(per_cpu(Via::Ours)),
                ratio(per_cpu(Via::Ours), per_cpu(Via::Nginx)),
                fixed(p99(Via::Nginx).map(|us| us / 1000.0), 2),
                fixed(p99(Via::Ours).map(|us| us / 1000.0), 2),
                ratio(p99(Via::Ours), p99(Via::Nginx)),
                errors(Via::Nginx),
                errors(Via::Ours),
            ]);
        }
        let _ = writeln!(out, "{}", table.render());
    }

    fn render_perf(&self, out: &mut String, cases: &[Case]) {
        if let Some(reason) = &self.perf_skipped {
            let _ = writeln!(out, "Syscalls and context switches: not measured ({reason}).\n");
            return;
        }
        let _ = writeln!(
            out,
            "Per request, from `perf stat -e raw_syscalls:sys_enter,context-switches,task-clock -p PIDS` on the proxy's processes during one extra run per case:\n"
        );
        let mut table = Table::new(&[
            "case",
            "syscalls nginx",
            "syscalls ours",
            "context switches nginx",
            "context switches ours",
            "CPU µs nginx",
            "CPU µs ours",
        ]);
        for case in cases {
            let syscalls = |via| fixed(self.per_request(case, via, |c| c.syscalls), 2);
            let switches = |via| fixed(self.per_request(case, via, |c| c.context_switches), 2);
            let cpu_us = |via| fixed(self.per_request(case, via, |c| c.task_clock_ms * 1000.0), 1);
            table.row(vec![
                case.describe(),
                syscalls(Via::Nginx),
                syscalls(Via::Ours),
                switches(Via::Nginx),
                switches(Via::Ours),
                cpu_us(Via::Nginx),
                cpu_us(Via::Ours),
            ]);
        }
        let _ = writeln!(out, "{}", table.render());
    }

    fn render_why(&self, out: &mut String, cases: &[Case]) {
        let _ = writeln!(
            out,
            "What explains the ratios (medians over the rounds): upstream connections opened per 1,000 requests (from the upstream's stub_status; nginx's `keepalive 64` closes every connection beyond 64 idle ones, so at 256 connections it reconnects, which costs it and the upstream CPU); the upstream nginx's CPU-seconds per second (near its worker count, the upstream limited the run); the share of all cores busy (near 100 %, the machine limited it, and the proxies' CPU per request includes contention); wrk's threads:\n"
        );
        let mut table = Table::new(&[
            "case",
            "upstream conns / 1k req nginx",
            "upstream conns / 1k req ours",
            "upstream busy nginx",
            "upstream busy ours",
            "machine busy nginx",
            "machine busy ours",
            "wrk threads",
        ]);
        for case in cases {
            let accepts = |via| {
                self.median(case, via, |s| s.why.upstream_accepts.map(|a| a as f64 * 1000.0 / s.requests.max(1) as f64))
            };
            let upstream = |via| self.median(case, via, |s| Some(s.why.upstream_busy));
            let machine = |via| self.median(case, via, |s| Some(s.why.machine_busy * 100.0));
            let threads = self.median(case, Via::Ours, |s| Some(s.why.wrk_threads as f64));
            table.row(vec![
                case.name(),
                fixed(accepts(Via::Nginx), 1),
                fixed(accepts(Via::Ours), 1),
                fixed(upstream(Via::Nginx), 2),
                fixed(upstream(Via::Ours), 2),
                fixed(machine(Via::Nginx), 0) + " %",
                fixed(machine(Via::Ours), 0) + " %",
                fixed(threads, 0),
            ]);
        }
        let _ = writeln!(out, "{}", table.render());
    }

    fn render_memory(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Memory (VmRSS in MiB, nginx = master + workers; at 256 = peak sampled every 50 ms during the 256-connection runs; per connection = (at 256 - idle) / 256, in KiB; ours' pooled connections to the upstream after the load, one when HTTP/2 was negotiated):\n"
        );
        let mut table = Table::new(&[
            "proxies",
            "idle nginx",
            "idle ours",
            "at 256 nginx",
            "at 256 ours",
            "per connection nginx",
            "per connection ours",
            "upstream connections ours",
        ]);
        let mib = |kib: Option<u64>| fixed(kib.map(|k| k as f64 / 1024.0), 1);
        let per_connection =
            |m: &Memory| fixed(m.at_256_kib.map(|peak| peak.saturating_sub(m.idle_kib) as f64 / 256.0), 1);
        for m in &self.memory {
            table.row(vec![
                m.group.to_string(),
                mib(Some(m.nginx.idle_kib)),
                mib(Some(m.ours.idle_kib)),
                mib(m.nginx.at_256_kib),
                mib(m.ours.at_256_kib),
                per_connection(&m.nginx),
                per_connection(&m.ours),
                m.ours_upstream_connections.to_string(),
            ]);
        }
        let _ = writeln!(out, "{}", table.render());
    }

    /// The tracing comparison: ours with tracing off against ours with
    /// tracing on (every request sampled) and against a baseline build, run
    /// round after round beside each other.
    fn render_tracing(&self, out: &mut String, cases: &[Case]) {
        let measured = |via| cases.iter().any(|case| self.samples.contains_key(&(case.name(), via)));
        if !measured(Via::Traced) && !measured(Via::Baseline) {
            return;
        }
        let _ = writeln!(
            out,
            "Tracing: ours (tracing off) against ours with tracing on (every request sampled, OTLP/HTTP to a loopback collector) and against the baseline build (`BENCH_BASELINE`); CPU µs per request from /proc (1e6 / req per CPU-s){}; medians over the rounds, but for the least CPU per request of each over the rounds:\n",
            if self.perf_skipped.is_none() { " and from perf's task-clock" } else { "" }
        );
        let mut table = Table::new(&[
            "case",
            "req/s baseline",
            "req/s ours",
            "req/s traced",
            "CPU µs/req baseline",
            "CPU µs/req ours",
            "CPU µs/req traced",
            "CPU ours/baseline",
            "CPU traced/ours",
            "CPU traced/ours by round (range)",
            "CPU traced/ours, least of each",
            "user + system µs/req ours; traced",
            "perf CPU µs baseline / ours / traced",
            "p99 ours (ms)",
            "p99 traced (ms)",
        ]);
        for case in cases {
            let rps = |via| self.median(case, via, |s| Some(s.rps));
            let cpu_us = |via| self.median(case, via, |s| s.per_cpu_second().map(|r| 1e6 / r));
            let p99 = |via| fixed(self.median(case, via, |s| Some(s.p99_us)).map(|us| us / 1000.0), 2);
            let perf = |via| fixed(self.per_request(case, via, |c| c.task_clock_ms * 1000.0), 1);
            let split = |via| {
                let part = |pick: fn((f64, f64)) -> f64| fixed(self.median(case, via, |s| s.split_us().map(pick)), 1);
                format!("{} + {}", part(|(user, _)| user), part(|(_, system)| system))
            };
            table.row(vec![
                case.describe(),
                whole(rps(Via::Baseline)),
                whole(rps(Via::Ours)),
                whole(rps(Via::Traced)),
                fixed(cpu_us(Via::Baseline), 1),
                fixed(cpu_us(Via::Ours), 1),
                fixed(cpu_us(Via::Traced), 1),
                ratio(cpu_us(Via::Ours), cpu_us(Via::Baseline)),
                ratio(cpu_us(Via::Traced), cpu_us(Via::Ours)),
                self.paired_cpu(case, Via::Traced, Via::Ours),
                ratio(self.least_cpu_us(case, Via::Traced), self.least_cpu_us(case, Via::Ours)),
                format!("{}; {}", split(Via::Ours), split(Via::Traced)),
                format!("{} / {} / {}", perf(Via::Baseline), perf(Via::Ours), perf(Via::Traced)),
                p99(Via::Ours),
                p99(Via::Traced),
            ]);
        }
        let _ = writeln!(out, "{}", table.render());
        let mib =
            |m: Option<&Memory>, at: fn(&Memory) -> Option<u64>| fixed(m.and_then(at).map(|k| k as f64 / 1024.0), 1);
        let mut memory = Table::new(&[
            "proxies",
            "idle RSS baseline / ours / traced (MiB)",
            "at 256 baseline / ours / traced (MiB)",
            "idle CPU baseline / ours / traced (µs/s)",
            "idle wake-ups baseline / ours / traced (/s)",
        ]);
        for m in &self.memory {
            let of = |via| m.flavours.iter().find(|(v, _)| *v == via).map(|(_, memory)| memory);
            let column = |at: fn(&Memory) -> Option<u64>| {
                format!("{} / {} / {}", mib(of(Via::Baseline), at), mib(of(Via::Ours), at), mib(of(Via::Traced), at))
            };
            let idle = |value: fn(&Idle) -> f64, digits: usize| {
                let one = |via| fixed(of(via).and_then(|m| m.idle.as_ref()).map(value), digits);
                format!("{} / {} / {}", one(Via::Baseline), one(Via::Ours), one(Via::Traced))
            };
            memory.row(vec![
                m.group.to_string(),
                column(|m| Some(m.idle_kib)),
                column(|m| m.at_256_kib),
                idle(|i| i.cpu_us_per_second, 1),
                idle(|i| i.wakeups_per_second, 2),
            ]);
        }
        let _ = writeln!(out, "{}", memory.render());
        if let Some((exports, spans, undecodable)) = self.collected {
            let requests: u64 = cases
                .iter()
                .filter_map(|c| self.samples.get(&(c.name(), Via::Traced)))
                .flatten()
                .map(|s| s.requests)
                .sum();
            let _ = writeln!(
                out,
                "- the loopback collector received {spans} spans in {exports} exports ({undecodable} not OTLP protobuf); {requests} requests went through the traced proxy in the measured runs (warm-ups and perf runs besides); it dropped {} spans",
                self.spans_dropped
            );
        }
        if !self.tracer.is_empty() {
            let each: Vec<String> =
                self.tracer.iter().map(|(sampler, us)| format!("{us:.2} µs ({sampler} sampled)")).collect();
            let _ = writeln!(
                out,
                "- the tracer alone (a loop making each request's spans and traceparent, exporting to the same collector, 20,000 requests/s; CPU of the loop's and the export thread): {} per request",
                each.join(", ")
            );
        }
        if let Some(baseline) = self.baseline_bytes {
            let grown = self.binary_bytes as f64 - baseline as f64;
            let _ = writeln!(
                out,
                "- binaries: baseline {baseline} bytes, this build {} bytes ({grown:+.0} bytes, {:+.2} MB)",
                self.binary_bytes,
                grown / 1e6
            );
        }
        let _ = writeln!(out);
    }

    fn render_other(&self, out: &mut String) {
        if let Some(s) = &self.streaming {
            let _ = writeln!(
                out,
                "Streaming {} MiB through truedat-auth-proxy (curl; the upload chunked from a pipe; MB = 10^6 bytes):\n",
                s.bytes >> 20
            );
            for (name, t) in [("upload", &s.upload), ("download", &s.download)] {
                let _ = writeln!(
                    out,
                    "- {name}: {:.0} MB/s (direct {:.0} MB/s); RSS idle {:.1} MiB, peak {:.1} MiB (+{:.1} MiB)",
                    t.mb_per_s,
                    t.direct_mb_per_s,
                    t.idle_kib as f64 / 1024.0,
                    t.peak_kib as f64 / 1024.0,
                    t.peak_kib.saturating_sub(t.idle_kib) as f64 / 1024.0
                );
            }
            let _ = writeln!(out);
        }
        let mut ready: Vec<f64> = self.ready.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ready.sort_by(f64::total_cmp);
        if let Some(median) = ready.get(ready.len() / 2) {
            let _ = writeln!(
                out,
                "- truedat-auth-proxy start to `/readyz` 200: {median:.1} ms median over {} starts (polled every 1 ms)",
                ready.len()
            );
        }
        let _ =
            writeln!(out, "- release binary: {} bytes ({:.1} MB)\n", self.binary_bytes, self.binary_bytes as f64 / 1e6);
    }
}

/// A Markdown table, the first column left-aligned and the others right.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()] }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
            if i == 0 {
                let rule: Vec<&str> = (0..row.len()).map(|c| if c == 0 { "---" } else { "---:" }).collect();
                out.push_str(&format!("|{}|\n", rule.join("|")));
            }
        }
        out
    }
}

fn whole(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

/// The median of `values` (sorted here), `None` when there are none.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn fixed(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> String {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.2}", n / d),
        _ => "-".to_owned(),
    }
}
