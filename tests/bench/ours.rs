//! truedat-auth-proxy as benchmarked: the release binary Cargo built for this
//! target, configured by a file only (no inherited `TRUEDAT_PROXY_*` or
//! `OTEL_*` variable), `log.level = "warn"` (`"info"` when the group compares
//! access logs), the group's `runtime.worker_threads`. The tracing
//! comparison adds two flavours: the same build with tracing on, and
//! another build (`BENCH_BASELINE`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cases::{Group, Via};
use truedat_auth_proxy::telemetry::{LOGINS, SPANS_DROPPED};

use super::process::{self, Process};
use super::support::prometheus::Scrape;

/// The binary under test (a release build under `cargo test --release`).
pub const BINARY: &str = env!("CARGO_BIN_EXE_truedat-auth-proxy");

/// The binary to run: `BENCH_BINARY` (another build, to compare two
/// commits on one machine), else [`BINARY`].
pub fn binary() -> String {
    std::env::var("BENCH_BINARY").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| BINARY.to_owned())
}
/// How long the proxy may take from start to `/readyz` 200.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Which truedat-auth-proxy runs: a binary and the environment it gets.
pub struct Flavour {
    /// [`Via::Ours`], [`Via::Traced`] or [`Via::Baseline`].
    pub via: Via,
    pub binary: String,
    /// Added to the otherwise empty environment (`OTEL_*` for tracing).
    pub env: Vec<(String, String)>,
}

impl Flavour {
    /// This build (or `BENCH_BINARY`), tracing off.
    pub fn ours() -> Flavour {
        Flavour { via: Via::Ours, binary: binary(), env: Vec::new() }
    }

    /// The same binary exporting every request's spans over OTLP/HTTP to
    /// `endpoint` (the sampler samples every request: wrk sends no
    /// `traceparent`, and the default is parent-based, always on).
    pub fn traced(endpoint: &str) -> Flavour {
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_TRACES_SAMPLER", "always_on")];
        Flavour { via: Via::Traced, binary: binary(), env: env.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec() }
    }

    /// Another build, for an A/B of the same cases in one sitting.
    pub fn baseline(binary: &str) -> Flavour {
        Flavour { via: Via::Baseline, binary: binary.to_owned(), env: Vec::new() }
    }
}

/// A running truedat-auth-proxy.
pub struct Ours {
    pub process: Process,
    pub port: u16,
    pub admin_port: u16,
    /// From process start to the first `/readyz` 200 (polled every 1 ms).
    pub ready_after: Duration,
}

impl Ours {
    /// Starts `flavour` for `group` in front of `upstream_url`, trusting
    /// `ca_file` for an HTTPS upstream; its configuration and log live in `dir`.
    pub fn start(dir: &Path, group: Group, upstream_url: &str, ca_file: &Path, flavour: &Flavour) -> Ours {
        let (port, admin_port) = (process::free_port(), process::free_port());
        let ca = if group.upstream.is_tls() { format!("ca_file = \"{}\"\n", ca_file.display()) } else { String::new() };
        let toml = format!(
            r#"[listen]
address = "127.0.0.1:{port}"

[admin]
address = "127.0.0.1:{admin_port}"

[upstream]
url = "{upstream_url}"
{ca}
[credentials]
user_name = "svc-bench"
password = "bench-password"

[log]
level = "{level}"

[runtime]
worker_threads = {workers}
"#,
            workers = group.workers,
            level = if group.access_log { "info" } else { "warn" },
        );
        let logs = if group.access_log { "-log" } else { "" };
        let name = format!("{}-{}-w{}{logs}", flavour.via.name(), group.upstream.name(), group.workers);
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
        let started = Instant::now();
        let mut process = Process::spawn(
            "truedat-auth-proxy",
            Command::new(&flavour.binary)
                .arg("--config")
                .arg(&config)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(flavour.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("a log handle"))
                .stderr(log),
        );
        loop {
            if matches!(process::http_get(admin_port, "/readyz"), Ok((200, _))) {
                break;
            }
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            assert!(process.running(), "truedat-auth-proxy exited before it was ready:\n{}", log());
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "truedat-auth-proxy not ready after {READY_TIMEOUT:?}:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ours { ready_after: started.elapsed(), process, port, admin_port }
    }

    /// Its logins so far (`truedat_proxy_logins_total`, all outcomes): one
    /// is expected, more mean it saw 401s or errors during the run.
    pub fn logins(&self) -> Result<f64, String> {
        Ok(self.scrape()?.total(LOGINS, &[]))
    }

    /// Trace spans it dropped so far, all reasons (0 with tracing off).
    pub fn spans_dropped(&self) -> Result<f64, String> {
        Ok(self.scrape()?.total(SPANS_DROPPED, &[]))
    }

    fn scrape(&self) -> Result<Scrape, String> {
        let (status, metrics) = process::http_get(self.admin_port, "/metrics").map_err(|e| format!("/metrics: {e}"))?;
        if status != 200 {
            return Err(format!("/metrics answered {status}"));
        }
        Scrape::parse(&metrics)
    }
}
