//! The two nginx of a run: the upstream (a stand-in for Truedat: login,
//! small JSON, 4 KiB POST, 1 MiB and streamed answers, an upload sink) and
//! the reverse proxy a user would set up instead of ours. Both come from the
//! `.conf.in` templates beside this file, run in the foreground as `nobody`
//! with every path under the run's directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cases::{Group, Upstream};
use super::process::{self, Process};

const UPSTREAM_TEMPLATE: &str = include_str!("nginx-upstream.conf.in");
const PROXY_TEMPLATE: &str = include_str!("nginx-proxy.conf.in");
/// Idle upstream connections each nginx proxy worker keeps (`keepalive N`).
const PROXY_KEEPALIVE: u32 = 64;
/// How long nginx may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// ~200 bytes: roughly one small page of a Truedat listing.
pub const DATA_JSON: &str = r#"{"data":[{"id":1,"name":"customers","type":"Table","system":"sales-dwh","group":"public"},{"id":2,"name":"orders","type":"Table","system":"sales-dwh","group":"public"}],"page":1,"page_size":2,"total":2}"#;

/// The upstream nginx and its three listeners.
pub struct UpstreamNginx {
    /// Held to stop nginx when the run ends.
    process: Process,
    /// Plain HTTP.
    pub port: u16,
    /// HTTPS offering HTTP/1.1 only.
    pub tls_port: u16,
    /// HTTPS offering HTTP/2 and HTTP/1.1.
    pub h2_port: u16,
}

impl UpstreamNginx {
    /// Starts it in `dir` (which holds `server.pem`, `server.key`, `www/`),
    /// answering only `token` as bearer.
    pub fn start(nginx: &Path, dir: &Path, workers: u32, token: &str) -> UpstreamNginx {
        let (port, tls_port, h2_port) = (process::free_port(), process::free_port(), process::free_port());
        let conf = render(
            UPSTREAM_TEMPLATE,
            &[
                ("WORKERS", workers.to_string()),
                ("DIR", dir.display().to_string()),
                ("PORT", port.to_string()),
                ("TLS_PORT", tls_port.to_string()),
                ("H2_PORT", h2_port.to_string()),
                ("TOKEN", token.to_owned()),
                ("DATA_JSON", DATA_JSON.to_owned()),
            ],
        );
        let process = start(nginx, dir, "upstream", &conf, &[port, tls_port, h2_port]);
        UpstreamNginx { process, port, tls_port, h2_port }
    }

    /// Its master and workers, whose CPU tells whether the upstream itself
    /// was the bottleneck of a run.
    pub fn pids(&self) -> Vec<u32> {
        self.process.family()
    }

    /// Connections it has accepted since it started (`stub_status`).
    pub fn accepted(&self) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}/_stub_status", self.port);
        let status = process::output_of("curl", &["-s", "--noproxy", "*", "--max-time", "5", &url])?;
        // "Active connections: N\nserver accepts handled requests\n A H R\n…"
        status.lines().nth(2)?.split_whitespace().next()?.parse().ok()
    }

    /// The port the proxies of `upstream` talk to.
    pub fn port_for(&self, upstream: Upstream) -> u16 {
        match upstream {
            Upstream::Plain => self.port,
            Upstream::TlsHttp1 => self.tls_port,
            Upstream::TlsHttp2 => self.h2_port,
        }
    }

    /// Its base URL for `upstream` (HTTPS by IP address: the certificate names it).
    pub fn url_for(&self, upstream: Upstream) -> String {
        let scheme = if upstream.is_tls() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port_for(upstream))
    }
}

/// nginx as a reverse proxy adding a static bearer, for one group.
pub struct ProxyNginx {
    pub process: Process,
    pub port: u16,
}

impl ProxyNginx {
    /// Starts it in `dir` (which holds `ca.pem`) in front of `upstream`.
    pub fn start(nginx: &Path, dir: &Path, group: Group, upstream: &UpstreamNginx, token: &str) -> ProxyNginx {
        let port = process::free_port();
        let access_log = if group.access_log {
            format!("{} combined", dir.join("nginx-proxy-access.log").display())
        } else {
            "off".to_owned()
        };
        let conf = render(
            PROXY_TEMPLATE,
            &[
                ("WORKERS", group.workers.to_string()),
                ("DIR", dir.display().to_string()),
                ("PORT", port.to_string()),
                ("UPSTREAM_SCHEME", if group.upstream.is_tls() { "https" } else { "http" }.to_owned()),
                ("UPSTREAM_PORT", upstream.port_for(group.upstream).to_string()),
                ("KEEPALIVE", PROXY_KEEPALIVE.to_string()),
                ("TOKEN", token.to_owned()),
                ("ACCESS_LOG", access_log),
            ],
        );
        let process = start(nginx, dir, "nginx-proxy", &conf, &[port]);
        ProxyNginx { process, port }
    }
}

/// `nginx -v`'s version, for the report.
pub fn version(nginx: &Path) -> String {
    process::output_of(&nginx.display().to_string(), &["-v"])
        .map_or_else(|| "nginx (version unknown)".to_owned(), |v| v.replace("nginx version: ", ""))
}

/// Checks the nginx build has what the cases need (TLS, HTTP/2, the
/// connection counter).
pub fn check_modules(nginx: &Path) -> Result<(), String> {
    let configure = process::output_of(&nginx.display().to_string(), &["-V"]).unwrap_or_default();
    let missing: Vec<&str> = ["http_ssl_module", "http_v2_module", "http_stub_status_module"]
        .into_iter()
        .filter(|module| !configure.contains(module))
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(format!("{} lacks {}", nginx.display(), missing.join(", "))) }
}

/// Writes `conf` as `dir/NAME.conf`, checks it with `nginx -t`, starts nginx
/// in the foreground and waits until it listens on every one of `ports`.
fn start(nginx: &Path, dir: &Path, name: &str, conf: &str, ports: &[u16]) -> Process {
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf).unwrap_or_else(|e| panic!("writing {}: {e}", conf_path.display()));
    let command = |extra: &[&str]| {
        let mut command = Command::new(nginx);
        command
            .args(extra)
            .arg("-p")
            .arg(format!("{}/", dir.display()))
            // nginx opens its compiled-in error log before reading -c: keep it here.
            .arg("-e")
            .arg(dir.join(format!("{name}-error.log")))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null());
        process::as_unprivileged(&mut command);
        command
    };
    let check = command(&["-t", "-q"]).output().unwrap_or_else(|e| panic!("running {}: {e}", nginx.display()));
    assert!(
        check.status.success(),
        "nginx -t rejected {}: {}",
        conf_path.display(),
        String::from_utf8_lossy(&check.stderr).trim()
    );
    let log = log_file(dir, name);
    let mut process = Process::spawn(name, command(&[]).stdout(log.try_clone().expect("a log handle")).stderr(log));
    for &port in ports {
        if !process::wait_listening(port, START_TIMEOUT) || !process.running() {
            let errors = std::fs::read_to_string(dir.join(format!("{name}-error.log"))).unwrap_or_default();
            panic!("nginx ({name}) does not listen on {port}: {}", errors.trim());
        }
    }
    process
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    let path: PathBuf = dir.join(format!("{name}.out"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// Fills a template's `@KEY@` placeholders.
///
/// # Panics
/// When a placeholder outside a comment is left unfilled.
fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("@{key}@"), value);
    }
    for line in text.lines().filter(|line| !line.trim_start().starts_with('#')) {
        if let Some(start) = line.find('@') {
            let rest = &line[start + 1..];
            if let Some(end) = rest.find('@') {
                let key = &rest[..end];
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    panic!("unfilled placeholder @{key}@ in: {line}");
                }
            }
        }
    }
    text
}
