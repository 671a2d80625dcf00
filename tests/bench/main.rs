//! The side-by-side benchmark of the Performance issue: truedat-auth-proxy
//! against nginx as a reverse proxy with a static `Authorization` header
//! (what a user would run instead), on the same machine and the same CPU
//! budget, with wrk on loopback.
//!
//! ```sh
//! cargo test --release --test bench                    # everything, about 15 minutes
//! BENCH_SECS=2 BENCH_ROUNDS=1 BENCH_STREAM=64M \
//!   BENCH_CASES='plain-w1-get-c16,tls-h2-*' cargo test --release --test bench   # a smoke run
//! ```
//!
//! It runs as one program: installs nginx, wrk and curl with apt-get when
//! missing (as root), starts an upstream nginx standing in for Truedat
//! (login, a small JSON answer, a POST sink, 1 MiB and streamed answers) on
//! plain HTTP and on HTTPS (TLS 1.3; one listener offering HTTP/1.1, one
//! offering HTTP/2 by ALPN; a CA made on the fly), then for each group of
//! cases an nginx reverse proxy and the release binary of truedat-auth-proxy
//! (`log.level = "warn"`; one case turns access logs on for both) with the
//! same number of workers / threads. Each case runs direct, through nginx
//! and through ours, round after round. The Markdown report goes to stdout
//! and to `target/bench/bench-UNIXTIME.md` (and `latest.md`); the run fails
//! on any error through ours.
//!
//! | variable | default | |
//! |---|---|---|
//! | `BENCH_SECS` | 5 | length of each measured wrk run |
//! | `BENCH_ROUNDS` | 3 | measured runs per case and path (medians reported) |
//! | `BENCH_WARMUP_SECS` | 1 | warm-up before the first round of each case and path |
//! | `BENCH_CASES` | all | case names, comma-separated, `name*` for a prefix |
//! | `BENCH_STREAM` | 1G | size of the streamed upload and download; 0 skips them |
//! | `BENCH_PERF` | 1 | 0 skips the perf runs (skipped anyway without perf) |
//! | `BENCH_UPSTREAM_WORKERS` | 1 | worker_processes of the upstream nginx |
//! | `BENCH_OUT_DIR` | target/bench | where reports go |
//! | `BENCH_KEEP_TMP` | 0 | 1 keeps the run's directory (configs, logs, perf output) |
//! | `BENCH_BINARY` | this build | another truedat-auth-proxy binary to measure (to compare two commits) |
//! | `BENCH_TRACING` | 0 | 1 also runs ours with tracing on (every request sampled, OTLP/HTTP to a loopback collector) |
//! | `BENCH_BASELINE` | none | another build run beside ours in the same rounds (tracing off against a build without tracing) |
//! | `BENCH_IDLE_SECS` | 20 | with either of the two above, how long the proxies stay idle after login to measure their idle CPU and wake-ups; 0 skips it |
//! | `BENCH_PIN` | 0 | 1 pins the proxies under test (nginx and ours) to the last CPU, and wrk, the upstream and the collector to the others |
//!
//! The files, one job each: [`cases`] (what is measured), [`group`] (running
//! one group of cases), [`nginx`] and [`ours`] (the processes under test),
//! [`wrk`] (the load), [`sample`] (CPU and memory from `/proc`), [`perf`]
//! (syscalls and context switches), [`stream`] (the memory-flat streaming
//! check), [`report`] (the Markdown), [`tools`] (installing what is
//! missing), [`process`] (starting and stopping processes, ports),
//! [`settings`] (the variables above), [`sink`] (the OpenTelemetry
//! collector of the tracing comparison), [`tracer`] (the tracer's own cost).

// Built with `--cfg test` but no test harness, so the unit tests inside
// support/ are dropped and leave their `use super::*` unused.
#[path = "../support/mod.rs"]
#[allow(unused_imports)]
mod support;

mod cases;
mod group;
mod nginx;
mod ours;
mod perf;
mod process;
mod report;
mod sample;
mod settings;
mod sink;
mod stream;
mod tools;
mod tracer;
mod wrk;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use cases::{Case, Upstream};
use nginx::UpstreamNginx;
use ours::Flavour;
use report::{Environment, Results};
use settings::Settings;
use support::jwt::{Claims, sign};
use support::pki::Ca;

/// `exp` of the token the upstream hands out (2100): the proxy never renews.
const TOKEN_EXPIRY: u64 = 4_102_444_800;

fn main() {
    let settings = Settings::from_env();
    let cases: Vec<Case> = cases::all().into_iter().filter(|case| case.selected(settings.cases.as_deref())).collect();
    if cases.is_empty() {
        let names: Vec<String> = cases::all().iter().map(Case::name).collect();
        panic!("BENCH_CASES={:?} selects no case; the cases are: {}", settings.cases, names.join(", "));
    }
    let nginx_binary = tools::ensure();
    if cases.iter().any(|case| case.group.upstream.is_tls()) {
        nginx::check_modules(&nginx_binary).unwrap_or_else(|e| panic!("the HTTPS cases need it: {e}"));
    }
    let mut results = Results {
        perf_skipped: if settings.perf { perf::available().err() } else { Some("BENCH_PERF=0".to_owned()) },
        binary_bytes: std::fs::metadata(ours::binary()).map_or(0, |m| m.len()),
        baseline_bytes: settings.baseline.as_ref().map(|b| std::fs::metadata(b).map_or(0, |m| m.len())),
        ..Results::default()
    };
    let cpus = settings.pin.then(|| {
        let cpus = process::CpuSplit::new().unwrap_or_else(|| panic!("BENCH_PIN=1 needs at least 2 CPUs"));
        // Before anything starts: every child and thread inherits it.
        process::pin(std::process::id(), &cpus.load);
        cpus
    });
    let sink = settings.tracing.then(sink::Sink::start);
    let mut flavours = vec![Flavour::ours()];
    flavours.extend(sink.as_ref().map(|sink| Flavour::traced(&sink.endpoint())));
    flavours.extend(settings.baseline.as_deref().map(Flavour::baseline));
    let environment = environment(&settings, &nginx_binary, &cases, cpus.as_ref());

    let work = work_dir();
    let nginx_dir = work.path().join("nginx");
    prepare_nginx_dir(&nginx_dir, settings.stream_bytes);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs();
    let token = sign(&Claims::new("truedat", "svc-bench", now, TOKEN_EXPIRY), b"bench-secret-not-checked");
    eprintln!("== starting the upstream nginx (run directory {})", work.path().display());
    let upstream = UpstreamNginx::start(&nginx_binary, &nginx_dir, settings.upstream_workers, &token);
    let unauthorized = process::http_get(upstream.port, "/api/data").map(|(status, _)| status);
    assert!(matches!(unauthorized, Ok(401)), "the upstream answered {unauthorized:?} without a bearer, not 401");

    let context = group::Context {
        settings: &settings,
        nginx: &nginx_binary,
        nginx_dir: &nginx_dir,
        work_dir: work.path(),
        upstream: &upstream,
        token: &token,
        ticks_per_second: sample::ticks_per_second(),
        perf: results.perf_skipped.is_none(),
        flavours: &flavours,
        proxy_cpus: cpus.as_ref().map(|cpus| cpus.proxies.as_str()),
    };
    for group in cases::groups(&cases) {
        let group_cases: Vec<Case> = cases.iter().filter(|case| case.group == group).copied().collect();
        group::run(&context, group, &group_cases, &mut results);
    }
    drop(upstream);
    if let Some(sink) = &sink {
        eprintln!("== the tracer alone, in this process");
        results.tracer = tracer::measure(&sink.endpoint());
        let received = &sink.received;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        results.collected = Some((load(&received.exports), load(&received.spans), load(&received.undecodable)));
        if load(&received.undecodable) > 0 || load(&received.spans) == 0 {
            results.problems.push("the collector got no spans, or exports that were not OTLP protobuf".to_owned());
        }
    }

    let report = results.render(&cases, &environment);
    println!("{report}");
    write_report(&settings.out_dir, &report);
    if settings.keep_tmp {
        eprintln!("kept {}", work.keep().display());
    }
    if !results.problems.is_empty() {
        std::process::exit(1);
    }
}

/// The run's directory: on tmpfs when there is one, so the upstream's
/// temp file for a 1 GiB upload costs no disk writes; readable by nginx.
fn work_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() };
    let dir = tempfile::Builder::new().prefix("truedat-bench.").tempdir_in(&parent).expect("a temporary directory");
    // nginx runs as nobody and reads its configs from below here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod of our own directory");
    dir
}

/// nginx's directory: its temp paths, the answers it serves, the CA and the
/// upstream's certificate, all owned by the user nginx runs as.
fn prepare_nginx_dir(dir: &Path, stream_bytes: u64) {
    for sub in ["www", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"] {
        std::fs::create_dir_all(dir.join(sub)).expect("creating nginx's directories");
    }
    let big: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    std::fs::write(dir.join("www/big.bin"), big).expect("writing the 1 MiB answer");
    // Sparse: the streamed answer costs no memory or disk.
    let download = std::fs::File::create(dir.join("www/download.bin")).expect("creating the streamed answer");
    download.set_len(stream_bytes).expect("sizing the streamed answer");
    let ca = Ca::new("truedat-bench CA");
    // nginx's proxy_ssl_verify checks DNS names only (proxy_ssl_name
    // localhost); ours connects to https://127.0.0.1 and checks the address.
    let leaf = ca.server_cert_for(&["localhost", "127.0.0.1"]);
    for (from, to) in [(ca.file(), "ca.pem"), (leaf.cert_file(), "server.pem"), (leaf.key_file(), "server.key")] {
        std::fs::copy(from, dir.join(to)).expect("copying the generated PEM files");
    }
    if let Some((uid, gid)) = process::unprivileged() {
        chown_all(dir, uid, gid);
    }
}

fn chown_all(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown as root");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("listing our own directory") {
            chown_all(&entry.expect("a directory entry").path(), uid, gid);
        }
    }
}

fn environment(
    settings: &Settings,
    nginx_binary: &Path,
    cases: &[Case],
    cpus: Option<&process::CpuSplit>,
) -> Environment {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let commit = process::output_of("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = process::output_of("git", &["-C", env!("CARGO_MANIFEST_DIR"), "status", "--porcelain"])
        .is_some_and(|changes| !changes.is_empty());
    let tls = cases.iter().any(|case| case.group.upstream != Upstream::Plain);
    Environment {
        cpus: cpuinfo.lines().filter(|line| line.starts_with("processor")).count(),
        cpu_model: cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, model)| model.trim().to_owned()))
            .unwrap_or_else(|| "unknown CPU".to_owned()),
        kernel: format!("Linux {}", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        commit: if dirty { format!("{commit} (plus uncommitted changes)") } else { commit },
        nginx: nginx::version(nginx_binary),
        wrk: wrk::version().unwrap_or_else(|| "wrk (version unknown)".to_owned()),
        settings: format!(
            "wrk -t2 (-t1 at 1 connection), keep-alive, {} s per run, {} round(s), {} s warm-up; \
             upstream nginx with {} worker(s){}; nginx proxy keepalive 64, no access log; \
             truedat-auth-proxy at log.level = \"warn\" (where access logs are on: nginx's \
             combined log to a file, ours at \"info\" to a file){}.",
            settings.run.as_secs(),
            settings.rounds,
            settings.warmup.as_secs(),
            settings.upstream_workers,
            if tls { ", TLS 1.3 with an on-the-fly CA" } else { "" },
            cpus.map_or(String::new(), |cpus| format!(
                "; pinned: the proxies under test on CPU {}, wrk, the upstream and the collector on CPU {}",
                cpus.proxies, cpus.load
            ))
        ),
    }
}

/// Writes the report to `dir/bench-UNIXTIME.md` and `dir/latest.md`.
fn write_report(dir: &Path, report: &str) {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs();
    let path = dir.join(format!("bench-{stamp}.md"));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, report))
        .and_then(|()| std::fs::write(dir.join("latest.md"), report));
    match written {
        Ok(()) => eprintln!("report: {}", path.display()),
        Err(e) => eprintln!("bench: could not write the report to {}: {e}", dir.display()),
    }
}
