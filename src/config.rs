//! The configuration: serde structs with the defaults of SPEC §2, layered as
//! built-in defaults < TOML file < `TRUEDAT_PROXY_*` environment variables.
//!
//! Everything is validated here, before any socket is bound, and every problem
//! is reported on its own line naming the offending key. Nothing outside this
//! module reads the environment. The `OTEL_*` variables of tracing are read
//! in [`otel`], a part of this module.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};

use crate::origin::Origin;
use crate::units::{Dur, Size};

mod otel;

pub use otel::{OtelEnv, Root, Sampler, Tracing, TracingSettings, redact_url};

/// Prefix of every environment variable the proxy reads.
pub const ENV_PREFIX: &str = "TRUEDAT_PROXY_";

/// Keys whose values are free text. figment parses environment values as
/// TOML, which would turn a password `12345` into a number or `[a]` into an
/// array; these keys are read from the environment verbatim instead.
const VERBATIM_KEYS: [&str; 13] = [
    "upstream.url",
    "upstream.ca_file",
    "upstream.client_cert_file",
    "upstream.client_key_file",
    "upstream.egress_proxy",
    "credentials.user_name",
    "credentials.password",
    "credentials.password_file",
    "credentials.access_method",
    "log.level",
    "log.format",
    "listen.address",
    "admin.address",
];

/// More client connections than any machine serves; also keeps the
/// connection semaphore within its limits.
const MAX_CONNECTIONS: usize = 1_000_000;

/// Keys whose values are never printed, not even in an error.
const SECRET_KEYS: [&str; 1] = ["credentials.password"];

/// Environment variables under the prefix that are not configuration keys.
const NON_KEYS: [&str; 1] = ["config"];

/// The whole configuration, as read and defaulted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: Listen,
    pub admin: Admin,
    pub upstream: Upstream,
    pub credentials: Credentials,
    pub token: TokenSettings,
    pub proxy: ProxySettings,
    pub retry: RetrySettings,
    pub shutdown: ShutdownSettings,
    pub log: Log,
    pub runtime: Runtime,
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, read with the rest of the
    /// environment; used only when `upstream.egress_proxy` is unset.
    #[serde(skip)]
    pub proxy_env: ProxyEnv,
    /// OpenTelemetry tracing, from the `OTEL_*` variables alone (SPEC §11):
    /// never from the file, shown as comments by `--check-config`.
    #[serde(skip)]
    pub tracing: Tracing,
}

/// The egress-proxy variables as curl reads them: lower case first; upper
/// case `HTTP_PROXY` is ignored as curl does, because CGI servers set it from
/// a request header.
#[derive(Debug, Clone, Default)]
pub struct ProxyEnv {
    pub http: Option<String>,
    pub https: Option<String>,
    pub no: Option<String>,
}

impl ProxyEnv {
    /// Reads the process environment.
    pub fn from_process() -> ProxyEnv {
        let var = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()));
        ProxyEnv {
            http: var(&["http_proxy"]),
            https: var(&["https_proxy", "HTTPS_PROXY"]),
            no: var(&["no_proxy", "NO_PROXY"]),
        }
    }
}

/// The local listener that tools talk to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Loopback by default: whoever reaches this port acts as the service user.
    pub address: SocketAddr,
    /// The explicit opt-in needed to listen anywhere but loopback.
    pub allow_non_loopback: bool,
    /// Connections beyond this wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// A client must send a whole request head within this; hyper also
    /// closes a keep-alive connection idle this long.
    pub header_read_timeout: Dur,
    /// A client that accepts no response data for this long is cut, so a
    /// tool that stopped reading cannot hold connections forever.
    pub send_timeout: Dur,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allow_non_loopback: false,
            max_connections: 1024,
            header_read_timeout: Dur::secs(30),
            send_timeout: Dur::secs(60),
        }
    }
}

/// The admin listener: probes and metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub address: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin { address: SocketAddr::from(([127, 0, 0, 1], 9090)) }
    }
}

/// Where Truedat is and how to reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// Required; `Option` so that its absence is reported by `validate` with the key's name.
    pub url: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Dur,
    pub request_timeout: Dur,
    /// Silence inside a response body longer than this cuts the transfer;
    /// `request_timeout` only covers the wait for the headers.
    pub body_idle_timeout: Dur,
    pub pool_idle_timeout: Dur,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// May carry `user:password@`: shown redacted, everywhere.
    #[serde(serialize_with = "redacted_userinfo")]
    pub egress_proxy: Option<String>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            url: None,
            ca_file: None,
            connect_timeout: Dur::secs(5),
            request_timeout: Dur::secs(60),
            body_idle_timeout: Dur::secs(60),
            pool_idle_timeout: Dur::secs(90),
            client_cert_file: None,
            client_key_file: None,
            egress_proxy: None,
        }
    }
}

/// The service account the proxy logs in as.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Credentials {
    pub user_name: Option<String>,
    #[serde(serialize_with = "redacted")]
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    pub access_method: String,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            user_name: None,
            password: None,
            password_file: None,
            access_method: "alternative_login".to_owned(),
        }
    }
}

/// How the token is renewed before it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenewWith {
    /// A fresh login: the previous token stays valid until its own expiry.
    Login,
    /// `POST /api/sessions/refresh`: fewer password transmissions.
    Refresh,
}

/// The token lifecycle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    pub refresh_before: Dur,
    pub fallback_lifetime: Dur,
    pub renew_with: RenewWith,
    pub login_timeout: Dur,
    pub logout_on_shutdown: bool,
    pub retry_initial: Dur,
    pub retry_max: Dur,
    pub first_token_wait: Dur,
    /// How often `GET /api/ping` is probed while Truedat cannot be reached, so
    /// the login after its return does not wait out the backoff; 0 turns it off.
    pub probe_interval: Dur,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            refresh_before: Dur::secs(300),
            fallback_lifetime: Dur::secs(900),
            renew_with: RenewWith::Login,
            login_timeout: Dur::secs(10),
            logout_on_shutdown: true,
            retry_initial: Dur::millis(500),
            retry_max: Dur::secs(30),
            first_token_wait: Dur::secs(10),
            probe_interval: Dur::secs(1),
        }
    }
}

/// What the forwarding path accepts and keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    pub replay_body_limit: Size,
    pub max_request_header_bytes: Size,
    pub allow_methods: Vec<String>,
    pub allow_paths: Vec<String>,
    /// Requests that carry `Origin` or `Sec-Fetch-Site` come from a web page,
    /// never from a tool (`headers::is_from_browser`).
    pub allow_browsers: bool,
    pub allow_session_paths: bool,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            replay_body_limit: Size(1 << 20),
            max_request_header_bytes: Size(64 << 10),
            allow_methods: Vec::new(),
            allow_paths: Vec::new(),
            allow_browsers: false,
            allow_session_paths: false,
        }
    }
}

/// Retries of transient upstream failures (SPEC §4, Retries).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Retries happen only while less than this has passed since the request
    /// arrived; zero turns retries off.
    pub window: Dur,
    /// First pause between tries of one request, doubled (with jitter) up to `backoff_max`.
    pub backoff_initial: Dur,
    /// The longest pause between two tries, however many came before.
    pub backoff_max: Dur,
    /// Statuses from Truedat or its ingress that count as transient (400–599).
    pub on_status: Vec<u16>,
    /// Retries may add at most this fraction to the requests of the last 10 s…
    pub budget_ratio: f64,
    /// …plus this many retries per second, so that an outage is not
    /// multiplied by the proxy.
    pub budget_min_per_second: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            window: Dur::secs(10),
            backoff_initial: Dur::millis(100),
            backoff_max: Dur::secs(2),
            on_status: vec![502, 503, 504],
            budget_ratio: 0.2,
            budget_min_per_second: 10,
        }
    }
}

/// Graceful shutdown timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    pub drain_timeout: Dur,
    pub delay: Dur,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings { drain_timeout: Dur::secs(30), delay: Dur::secs(0) }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { format: LogFormat::Json, level: "info".to_owned() }
    }
}

/// The async runtime's threads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// 1 (the default): everything on one thread, which costs the least CPU
    /// per request and memory for a sidecar under a small CPU limit. More
    /// lets a proxy with more than one CPU to spend serve more requests at
    /// once, with a runtime and a listener per thread ([`crate::workers`]).
    pub worker_threads: usize,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime { worker_threads: 1 }
    }
}

/// JSON lines for machines, text for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Why the configuration could not be used: one entry per problem, each
/// naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct Invalid(pub Vec<String>);

impl Config {
    /// Reads the layers and validates the result. `file` is the explicit
    /// `--config` path, which must exist (figment would silently skip it).
    pub fn load(file: Option<&Path>) -> Result<Config, Invalid> {
        let figment = layers(file)?;
        let mut config: Config = figment.extract().map_err(|first| every_problem(&figment, first))?;
        config.proxy_env = ProxyEnv::from_process();
        let tracing = Tracing::from_env(&OtelEnv::from_process());
        let mut problems = config.validate().err().map(|invalid| invalid.0).unwrap_or_default();
        match tracing {
            Ok(tracing) => config.tracing = tracing,
            Err(more) => problems.extend(more),
        }
        if problems.is_empty() { Ok(config) } else { Err(Invalid(problems)) }
    }

    /// `admin.address` alone, from the same layers as [`Config::load`], for
    /// `wait`: it runs beside the proxy and must work whatever else the
    /// configuration holds, even an incomplete one.
    pub fn load_admin_address(file: Option<&Path>) -> Result<SocketAddr, Invalid> {
        let figment = layers(file)?;
        figment.extract_inner::<SocketAddr>("admin.address").map_err(|error| {
            Invalid(
                error
                    .into_iter()
                    .map(|mut e| {
                        e.path = vec!["admin".to_owned(), "address".to_owned()];
                        describe_one(&e)
                    })
                    .collect(),
            )
        })
    }

    /// Checks every rule a type cannot express; all problems at once.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut problems = Vec::new();
        self.validate_listeners(&mut problems);
        self.validate_upstream(&mut problems);
        self.validate_credentials(&mut problems);
        self.validate_token(&mut problems);
        self.validate_proxy(&mut problems);
        self.validate_retry(&mut problems);
        self.validate_duration_bounds(&mut problems);
        if !(1..=64).contains(&self.runtime.worker_threads) {
            problems.push("runtime.worker_threads: must be between 1 and 64".to_owned());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!("log.level: {e}"));
        }
        self.tracing.validate(&mut problems);
        if problems.is_empty() { Ok(()) } else { Err(Invalid(problems)) }
    }

    /// The parsed `upstream.url`. Only call after `validate` succeeded.
    pub fn origin(&self) -> Origin {
        let url = self.upstream.url.as_deref().unwrap_or_default();
        Origin::parse(url).expect("upstream.url was validated by Config::validate")
    }

    /// The effective configuration as TOML, secrets replaced by
    /// `"<redacted>"`, then the tracing settings as comments.
    pub fn to_redacted_toml(&self) -> String {
        let mut text = toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"));
        text.push_str(&self.tracing.to_comments());
        text
    }

    /// Every duration key with its value and the longest it accepts (SPEC
    /// §1: every number is bounded). The parser already refuses more than
    /// `units::MAX_DURATION`; these bounds are what an operator could mean.
    fn durations(&self) -> [(&'static str, Dur, Dur); 18] {
        let (l, u, t, r, s) = (&self.listen, &self.upstream, &self.token, &self.retry, &self.shutdown);
        [
            ("listen.header_read_timeout", l.header_read_timeout, HOUR),
            ("listen.send_timeout", l.send_timeout, HOUR),
            ("upstream.connect_timeout", u.connect_timeout, FIVE_MINUTES),
            ("upstream.request_timeout", u.request_timeout, HOUR),
            ("upstream.body_idle_timeout", u.body_idle_timeout, HOUR),
            ("upstream.pool_idle_timeout", u.pool_idle_timeout, HOUR),
            ("token.refresh_before", t.refresh_before, WEEK),
            ("token.fallback_lifetime", t.fallback_lifetime, WEEK),
            ("token.login_timeout", t.login_timeout, FIVE_MINUTES),
            ("token.retry_initial", t.retry_initial, HOUR),
            ("token.retry_max", t.retry_max, HOUR),
            ("token.first_token_wait", t.first_token_wait, FIVE_MINUTES),
            ("token.probe_interval", t.probe_interval, FIVE_MINUTES),
            ("retry.window", r.window, HOUR),
            ("retry.backoff_initial", r.backoff_initial, HOUR),
            ("retry.backoff_max", r.backoff_max, HOUR),
            ("shutdown.drain_timeout", s.drain_timeout, HOUR),
            ("shutdown.delay", s.delay, HOUR),
        ]
    }

    fn validate_duration_bounds(&self, problems: &mut Vec<String>) {
        for (key, value, max) in self.durations() {
            if value > max {
                problems.push(format!("{key}: {value} is longer than {max}, the most it accepts"));
            }
        }
    }

    fn validate_listeners(&self, problems: &mut Vec<String>) {
        let listen = &self.listen;
        if !listen.address.ip().is_loopback() && !listen.allow_non_loopback {
            problems.push(format!(
                "listen.address: {} is not a loopback address; anyone who can reach it acts as the service user \
                 (set listen.allow_non_loopback = true to allow it)",
                listen.address
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&listen.max_connections) {
            problems.push(format!("listen.max_connections: must be between 1 and {MAX_CONNECTIONS}"));
        }
        require_positive(problems, "listen.header_read_timeout", listen.header_read_timeout);
        require_positive(problems, "listen.send_timeout", listen.send_timeout);
        if listen.address == self.admin.address && listen.address.port() != 0 {
            problems.push(format!("admin.address: {} is also listen.address", self.admin.address));
        }
    }

    fn validate_upstream(&self, problems: &mut Vec<String>) {
        let upstream = &self.upstream;
        match upstream.url.as_deref() {
            None => problems
                .push("upstream.url: required (the Truedat base URL, such as https://truedat.example.com)".to_owned()),
            Some(url) => {
                if let Err(e) = Origin::parse(url) {
                    problems.push(format!("upstream.url: {e}"));
                }
            }
        }
        for (key, value) in [
            ("upstream.connect_timeout", upstream.connect_timeout),
            ("upstream.request_timeout", upstream.request_timeout),
            ("upstream.body_idle_timeout", upstream.body_idle_timeout),
        ] {
            require_positive(problems, key, value);
        }
        if upstream.client_cert_file.is_some() != upstream.client_key_file.is_some() {
            problems.push("upstream.client_cert_file / upstream.client_key_file: set both or neither".to_owned());
        }
        if let Some(proxy) = upstream.egress_proxy.as_deref() {
            if let Err(e) = parse_egress_proxy(proxy) {
                problems.push(format!("upstream.egress_proxy: {e}"));
            }
        }
    }

    fn validate_credentials(&self, problems: &mut Vec<String>) {
        let credentials = &self.credentials;
        match credentials.user_name.as_deref() {
            None => problems.push("credentials.user_name: required".to_owned()),
            Some(name) if name.trim().is_empty() => {
                problems.push("credentials.user_name: must not be empty".to_owned())
            }
            Some(_) => {}
        }
        match (&credentials.password, &credentials.password_file) {
            (Some(_), Some(_)) => {
                problems.push("credentials.password / credentials.password_file: set exactly one, not both".to_owned())
            }
            (None, None) => {
                problems.push("credentials.password / credentials.password_file: one of them is required".to_owned())
            }
            _ => {}
        }
    }

    fn validate_token(&self, problems: &mut Vec<String>) {
        let token = &self.token;
        for (key, value) in [
            ("token.fallback_lifetime", token.fallback_lifetime),
            ("token.login_timeout", token.login_timeout),
            ("token.retry_initial", token.retry_initial),
            ("token.retry_max", token.retry_max),
        ] {
            require_positive(problems, key, value);
        }
        if token.retry_initial > token.retry_max {
            problems.push(format!(
                "token.retry_initial: {} is longer than token.retry_max ({})",
                token.retry_initial, token.retry_max
            ));
        }
        if !token.probe_interval.0.is_zero() && token.probe_interval < MIN_PROBE_INTERVAL {
            problems.push(format!(
                "token.probe_interval: {} is shorter than {MIN_PROBE_INTERVAL}; a fleet of sidecars would flood \
                 Truedat with pings (0s turns probing off)",
                token.probe_interval
            ));
        }
    }

    fn validate_proxy(&self, problems: &mut Vec<String>) {
        let proxy = &self.proxy;
        for method in &proxy.allow_methods {
            if http::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
                problems.push(format!("proxy.allow_methods: {method:?} is not an HTTP method"));
            } else if method.eq_ignore_ascii_case("CONNECT") {
                problems.push("proxy.allow_methods: CONNECT is never forwarded".to_owned());
            }
        }
        for path in &proxy.allow_paths {
            if !path.starts_with('/') {
                problems.push(format!("proxy.allow_paths: {path:?} must start with '/'"));
            }
        }
        if !(1 << 10..=1 << 20).contains(&proxy.max_request_header_bytes.0) {
            problems.push("proxy.max_request_header_bytes: must be between 1KiB and 1MiB".to_owned());
        }
        if proxy.replay_body_limit > MAX_REPLAY_BODY_LIMIT {
            problems.push(format!(
                "proxy.replay_body_limit: {} is more than {MAX_REPLAY_BODY_LIMIT}, the most it accepts (each request \
                 may keep this much in memory)",
                proxy.replay_body_limit
            ));
        }
    }

    fn validate_retry(&self, problems: &mut Vec<String>) {
        let retry = &self.retry;
        require_positive(problems, "retry.backoff_initial", retry.backoff_initial);
        require_positive(problems, "retry.backoff_max", retry.backoff_max);
        if retry.backoff_initial > retry.backoff_max {
            problems.push(format!(
                "retry.backoff_initial: {} is longer than retry.backoff_max ({})",
                retry.backoff_initial, retry.backoff_max
            ));
        }
        let outside: Vec<String> =
            retry.on_status.iter().filter(|s| !(400..=599).contains(*s)).map(u16::to_string).collect();
        if !outside.is_empty() {
            problems.push(format!(
                "retry.on_status: {} outside 400–599; only error statuses can be transient",
                outside.join(", ")
            ));
        }
        // tower's TpsBudget asserts a reserve below i32::MAX a second.
        if retry.budget_min_per_second > MAX_BUDGET_MIN_PER_SECOND {
            problems.push(format!(
                "retry.budget_min_per_second: {} is more than {MAX_BUDGET_MIN_PER_SECOND}, the most it accepts",
                retry.budget_min_per_second
            ));
        }
        // tower's TpsBudget, which enforces the budget, accepts 0 to 1000.
        if !(retry.budget_ratio.is_finite() && (0.0..=MAX_BUDGET_RATIO).contains(&retry.budget_ratio)) {
            problems.push(format!(
                "retry.budget_ratio: {} must be a number from 0 to {MAX_BUDGET_RATIO} (0.2 lets retries add 20%)",
                retry.budget_ratio
            ));
        }
    }
}

/// The largest `retry.budget_ratio`: a retry budget of 1000 times the traffic
/// is no budget at all, and the budget's implementation refuses more.
const MAX_BUDGET_RATIO: f64 = 1000.0;

/// The largest `retry.budget_min_per_second`: ten thousand retries a second
/// from one sidecar is already no budget at all (tower's `TpsBudget` panics
/// from 2^31 - 1).
const MAX_BUDGET_MIN_PER_SECOND: u32 = 10_000;

/// The largest `proxy.replay_body_limit`: every request may keep this much
/// in memory until it is answered.
const MAX_REPLAY_BODY_LIMIT: Size = Size(1 << 30);

/// Bounds of the durations (see `Config::durations`): connecting and
/// logging in, and how long a request waits for a token or a probe for the
/// next ping, take minutes at the very most…
const FIVE_MINUTES: Dur = Dur::secs(5 * 60);
/// …timeouts, backoffs, retries and shutdown steps an hour…
const HOUR: Dur = Dur::secs(3600);
/// …and token lifetimes a week.
const WEEK: Dur = Dur::secs(7 * 24 * 3600);

/// Shortest `token.probe_interval` other than 0: a hundred sidecars probing at
/// this rate already send a thousand pings a second to an ingress in trouble.
const MIN_PROBE_INTERVAL: Dur = Dur::millis(100);

fn require_positive(problems: &mut Vec<String>, key: &str, value: Dur) {
    if value.0.is_zero() {
        problems.push(format!("{key}: must be longer than 0s"));
    }
}

/// Built-in defaults, then the file (an explicit `--config` path must exist:
/// figment would silently skip it), then the environment.
fn layers(file: Option<&Path>) -> Result<Figment, Invalid> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        let not_a_file = |why: String| Invalid(vec![format!("--config {}: {why}", path.display())]);
        let metadata = std::fs::metadata(path).map_err(|e| not_a_file(e.to_string()))?;
        if !metadata.is_file() {
            return Err(not_a_file("not a regular file".to_owned()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    Ok(merge_env(figment))
}

/// Layers `TRUEDAT_PROXY_SECTION__KEY` variables over `figment`: free-text keys
/// verbatim, the rest parsed (booleans, numbers, arrays).
fn merge_env(figment: Figment) -> Figment {
    let env = || Env::prefixed(ENV_PREFIX).split("__").ignore(&NON_KEYS);
    let mut figment = figment.merge(env().ignore(&VERBATIM_KEYS));
    for (key, value) in env().only(&VERBATIM_KEYS).iter() {
        figment = figment.merge(Serialized::default(key.as_str(), value));
    }
    figment
}

/// figment stops at the first bad value; extracting each section on its
/// own finds the first problem of every section, so an operator fixes them
/// in one go rather than one run at a time.
fn every_problem(figment: &Figment, first: figment::Error) -> Invalid {
    fn section<T: serde::de::DeserializeOwned>(figment: &Figment, key: &str) -> Vec<String> {
        let Err(error) = figment.extract_inner::<T>(key) else {
            return Vec::new();
        };
        error
            .into_iter()
            .map(|mut e| {
                // extract_inner reports the section last ("retry_max.token").
                if e.path.last().is_some_and(|last| last == key) && e.path.first().is_none_or(|f| f != key) {
                    e.path.rotate_right(1);
                }
                describe_one(&e)
            })
            .collect()
    }
    let mut lines = describe_figment_error(first).0;
    let sections = [
        section::<Listen>(figment, "listen"),
        section::<Admin>(figment, "admin"),
        section::<Upstream>(figment, "upstream"),
        section::<Credentials>(figment, "credentials"),
        section::<TokenSettings>(figment, "token"),
        section::<ProxySettings>(figment, "proxy"),
        section::<RetrySettings>(figment, "retry"),
        section::<ShutdownSettings>(figment, "shutdown"),
        section::<Log>(figment, "log"),
        section::<Runtime>(figment, "runtime"),
    ];
    for line in sections.into_iter().flatten() {
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    Invalid(lines)
}

/// One line per figment error, each naming the key and where it came from.
fn describe_figment_error(error: figment::Error) -> Invalid {
    Invalid(error.into_iter().map(|e| describe_one(&e)).collect())
}

fn describe_one(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let source = e.metadata.as_ref().map(|m| describe_source(m, &e.path)).unwrap_or_default();
    // A figment type error quotes the value: never for a secret.
    let what = if SECRET_KEYS.contains(&key.as_str()) {
        "invalid value (not shown: it is a secret); write it as a quoted string".to_owned()
    } else {
        describe_kind(&e.kind)
    };
    if key.is_empty() { format!("{what}{source}") } else { format!("{key}: {what}{source}") }
}

/// The error on one line: a TOML syntax error's snippet is reduced to its
/// position and reason; an unknown key lists the keys that exist.
fn describe_kind(kind: &figment::error::Kind) -> String {
    if let figment::error::Kind::UnknownField(field, expected) = kind {
        return format!("unknown key {field:?} (known keys: {})", expected.join(", "));
    }
    let text = kind.to_string();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('|')).collect();
    match lines.as_slice() {
        [] => text,
        [only] => (*only).to_owned(),
        [first, .., last] => format!("{first}: {last}"),
    }
}

/// Where a bad value came from: the file, or the exact environment variable.
fn describe_source(metadata: &figment::Metadata, path: &[String]) -> String {
    match &metadata.source {
        Some(figment::Source::File(file)) => format!(" (in {})", file.display()),
        _ if metadata.name.contains("environment") => {
            format!(" (environment variable {ENV_PREFIX}{})", path.join("__").to_ascii_uppercase())
        }
        _ => format!(" (from {})", metadata.name),
    }
}

/// Checks `upstream.egress_proxy`: `http://host:port`, nothing more. The
/// messages show the value with its user information redacted.
pub fn parse_egress_proxy(value: &str) -> Result<http::Uri, String> {
    let shown = redact_userinfo(value);
    let uri: http::Uri = value.parse().map_err(|e| format!("{shown:?} is not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!("{shown:?} must look like http://host:port"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("{shown:?}: a proxy URL has no path or query"));
    }
    Ok(uri)
}

/// `scheme://user:password@host…` with `user:password` replaced by
/// `<redacted>`; anything else as it is.
pub fn redact_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
}

fn redacted_userinfo<S: Serializer>(value: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(url) => serializer.serialize_str(&redact_userinfo(url)),
        None => serializer.serialize_none(),
    }
}

/// Serializes any secret as the same placeholder, so `--check-config` shows
/// that it is set without showing it.
fn redacted<S: Serializer>(value: &Option<SecretString>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => serializer.serialize_str("<redacted>"),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Config {
        let mut c = Config::default();
        c.upstream.url = Some("https://truedat.example.com".into());
        c.credentials.user_name = Some("svc".into());
        c.credentials.password = Some(SecretString::from("pw"));
        c
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::default();
        assert_eq!(c.listen.address.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin.address.to_string(), "127.0.0.1:9090");
        assert_eq!(c.listen.max_connections, 1024);
        assert_eq!(c.token.refresh_before.to_string(), "5m");
        assert_eq!(c.token.first_token_wait.to_string(), "10s");
        assert_eq!(c.proxy.replay_body_limit.to_string(), "1MiB");
        assert_eq!(c.proxy.max_request_header_bytes.to_string(), "64KiB");
        assert_eq!(c.credentials.access_method, "alternative_login");
        assert!(c.token.logout_on_shutdown);
        assert_eq!(c.upstream.body_idle_timeout.to_string(), "1m");
        assert_eq!(c.retry.window.to_string(), "10s");
        assert_eq!(c.retry.backoff_initial.to_string(), "100ms");
        assert_eq!(c.retry.backoff_max.to_string(), "2s");
        assert_eq!(c.retry.on_status, [502, 503, 504]);
        assert_eq!((c.retry.budget_ratio, c.retry.budget_min_per_second), (0.2, 10));
    }

    #[test]
    fn minimal_config_is_valid() {
        minimal().validate().unwrap();
    }

    #[test]
    fn every_problem_names_its_key() {
        let mut c = Config::default();
        c.listen.address = "0.0.0.0:8080".parse().unwrap();
        c.token.retry_initial = Dur::secs(60);
        c.proxy.allow_paths = vec!["api".into()];
        let problems = c.validate().unwrap_err().0;
        for key in [
            "listen.address",
            "upstream.url",
            "credentials.user_name",
            "credentials.password",
            "token.retry_initial",
            "proxy.allow_paths",
        ] {
            assert!(problems.iter().any(|p| p.starts_with(key)), "{key} missing from {problems:?}");
        }
    }

    #[test]
    fn probe_interval_is_off_at_zero_and_otherwise_at_least_100ms() {
        let mut c = minimal();
        for (value, valid) in [("0s", true), ("100ms", true), ("1s", true), ("99ms", false), ("1ms", false)] {
            c.token.probe_interval = value.parse().unwrap();
            let problems = c.validate().err().map(|e| e.0).unwrap_or_default();
            assert_eq!(problems.is_empty(), valid, "{value}: {problems:?}");
            assert!(problems.iter().all(|p| p.starts_with("token.probe_interval: ")), "{problems:?}");
        }
    }

    #[test]
    fn retry_and_body_idle_problems_name_their_keys() {
        type Break = fn(&mut Config);
        let cases: [(&str, Break); 7] = [
            ("upstream.body_idle_timeout", |c| c.upstream.body_idle_timeout = Dur::secs(0)),
            ("retry.on_status", |c| c.retry.on_status = vec![503, 302]),
            ("retry.on_status", |c| c.retry.on_status = vec![600]),
            ("retry.budget_ratio", |c| c.retry.budget_ratio = -0.1),
            ("retry.budget_ratio", |c| c.retry.budget_ratio = f64::NAN),
            ("retry.budget_ratio", |c| c.retry.budget_ratio = f64::INFINITY),
            ("retry.backoff_initial", |c| c.retry.backoff_initial = Dur::secs(3)),
        ];
        for (key, break_it) in cases {
            let mut c = minimal();
            break_it(&mut c);
            let problems = c.validate().unwrap_err().0;
            assert_eq!(problems.len(), 1, "{key}: {problems:?}");
            assert!(problems[0].starts_with(&format!("{key}: ")), "{key}: {problems:?}");
        }
    }

    /// `minimal()` with `key` set to the TOML `value`.
    fn with(key: &str, value: &str) -> Config {
        let (section, name) = key.split_once('.').unwrap();
        Figment::from(Serialized::defaults(minimal()))
            .merge(Toml::string(&format!("[{section}]\n{name} = {value}\n")))
            .extract()
            .unwrap()
    }

    #[test]
    fn every_duration_key_has_an_upper_bound_that_names_it() {
        let table: toml::Table = toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
        let mut from_defaults: Vec<String> = table
            .iter()
            .flat_map(|(section, keys)| {
                keys.as_table().unwrap().iter().map(move |(name, value)| (section, name, value))
            })
            .filter(|(_, _, value)| value.as_str().is_some_and(|v| v.parse::<Dur>().is_ok()))
            .map(|(section, name, _)| format!("{section}.{name}"))
            .collect();
        let mut bounded: Vec<String> = minimal().durations().iter().map(|(key, _, _)| key.to_string()).collect();
        from_defaults.sort();
        bounded.sort();
        assert_eq!(bounded, from_defaults, "a duration key without a bound, or a bound of no key");

        for (key, _, max) in minimal().durations() {
            let at_most = with(key, &format!("\"{max}\"")).validate().err().map(|e| e.0).unwrap_or_default();
            assert!(!at_most.iter().any(|p| p.contains("the most it accepts")), "{key} = {max}: {at_most:?}");
            let over = Dur(max.0 + std::time::Duration::from_millis(1));
            let problems = with(key, &format!("\"{over}\"")).validate().unwrap_err().0;
            let expected = format!("{key}: {over} is longer than {max}, the most it accepts");
            assert!(problems.contains(&expected), "{key} = {over}: {problems:?}");
        }
    }

    #[test]
    fn counts_and_sizes_beyond_their_bounds_name_their_keys() {
        let cases = [
            ("retry.budget_min_per_second", "10000", "10001"),
            ("retry.budget_min_per_second", "10000", "2147483647"),
            ("proxy.replay_body_limit", "\"1GiB\"", "\"1073741825B\""),
            ("listen.max_connections", "1000000", "1000001"),
            ("runtime.worker_threads", "64", "65"),
            ("retry.budget_ratio", "1000.0", "1000.5"),
        ];
        for (key, largest, over) in cases {
            with(key, largest).validate().unwrap_or_else(|e| panic!("{key} = {largest}: {e}"));
            let problems = with(key, over).validate().unwrap_err().0;
            assert_eq!(problems.len(), 1, "{key} = {over}: {problems:?}");
            assert!(problems[0].starts_with(&format!("{key}: ")), "{key} = {over}: {problems:?}");
        }
    }

    #[test]
    fn retry_edges_are_valid() {
        let mut c = minimal();
        c.retry.window = Dur::secs(0);
        c.retry.on_status = vec![400, 429, 599];
        c.retry.budget_ratio = 0.0;
        c.retry.budget_min_per_second = 0;
        c.retry.backoff_initial = c.retry.backoff_max;
        c.validate().unwrap();
        c.retry.on_status.clear();
        c.validate().unwrap();
    }

    #[test]
    fn retry_values_come_from_toml_and_bad_ones_name_the_key() {
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(
            "[retry]\nwindow = \"0s\"\non_status = [503]\nbudget_ratio = 0.5\nbudget_min_per_second = 3\n",
        ));
        let c: Config = figment.extract().unwrap();
        assert_eq!((c.retry.window, c.retry.on_status, c.retry.budget_ratio), (Dur::secs(0), vec![503], 0.5));
        assert_eq!(c.retry.budget_min_per_second, 3);

        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[retry]\non_status = [\"503\"]\n[upstream]\nbody_idle_timeout = \"soon\"\n"));
        let first = figment.extract::<Config>().unwrap_err();
        let lines = every_problem(&figment, first).0;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("retry.on_status")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("upstream.body_idle_timeout: ")), "{lines:?}");
    }

    #[test]
    fn non_loopback_needs_the_opt_in() {
        let mut c = minimal();
        c.listen.address = "0.0.0.0:8080".parse().unwrap();
        assert!(c.validate().is_err());
        c.listen.allow_non_loopback = true;
        c.validate().unwrap();
        c.listen.address = "[::1]:8080".parse().unwrap();
        c.listen.allow_non_loopback = false;
        c.validate().unwrap();
    }

    #[test]
    fn redacted_toml_hides_the_password() {
        let mut c = minimal();
        c.credentials.password = Some(SecretString::from("hunter2-very-secret"));
        let text = c.to_redacted_toml();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("password = \"<redacted>\""), "{text}");
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn problems_in_several_sections_are_all_reported() {
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(
            "[listen]\nmax_connections = \"many\"\n[token]\nretry_max = \"soon\"\n[log]\nlevle = 1\n",
        ));
        let first = figment.extract::<Config>().unwrap_err();
        let lines = every_problem(&figment, first).0;
        for key in ["listen.max_connections", "token.retry_max", "log.levle"] {
            assert_eq!(lines.iter().filter(|l| l.starts_with(key)).count(), 1, "{key} in {lines:?}");
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
    }

    #[test]
    fn a_badly_typed_password_is_not_echoed_in_the_error() {
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[credentials]\npassword = 73105928461\n[token]\nretry_max = 5\n"));
        let e = figment.extract::<Config>().unwrap_err();
        let lines = every_problem(&figment, e).0;
        assert!(lines.iter().any(|l| l.starts_with("credentials.password: ")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("token.retry_max: ")), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("73105928461")), "{lines:?}");
    }

    #[test]
    fn egress_proxy_must_be_plain_http_host_port() {
        assert!(parse_egress_proxy("http://proxy.corp:3128").is_ok());
        for bad in ["proxy.corp:3128", "https://proxy:3128", "http://proxy:3128/path", "socks5://p:1080"] {
            assert!(parse_egress_proxy(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn egress_proxy_credentials_are_never_shown() {
        for (url, shown) in [
            ("http://alice:S3cr3tPw@proxy.corp:3128", "http://<redacted>@proxy.corp:3128"),
            ("http://a%40b:p@ss@proxy:1/x", "http://<redacted>@proxy:1/x"),
            ("alice:pw@proxy:3128", "<redacted>@proxy:3128"),
            ("http://proxy:3128", "http://proxy:3128"),
            ("x", "x"),
        ] {
            assert_eq!(redact_userinfo(url), shown, "{url}");
        }
        for bad in ["https://alice:S3cr3tPw@proxy:3128", "http://alice:S3cr3tPw@proxy:3128/path", "alice:S3cr3tPw@p"] {
            let error = parse_egress_proxy(bad).unwrap_err();
            assert!(!error.contains("S3cr3tPw"), "{error}");
        }
        let mut c = minimal();
        c.upstream.egress_proxy = Some("http://alice:S3cr3tPw@proxy.corp:3128".into());
        let text = c.to_redacted_toml();
        assert!(text.contains("egress_proxy = \"http://<redacted>@proxy.corp:3128\""), "{text}");
    }

    #[test]
    fn toml_round_trips_through_figment() {
        let text = minimal().to_redacted_toml();
        let back: Config = Figment::from(Toml::string(&text)).extract().unwrap();
        assert_eq!(back.token.refresh_before, Dur::secs(300));
        assert_eq!(back.upstream.url.as_deref(), Some("https://truedat.example.com"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[upstream]\nurll = \"x\"\n"))
            .extract::<Config>()
            .unwrap_err();
        let lines = describe_figment_error(e).0;
        assert!(lines[0].contains("urll"), "{lines:?}");
    }

    #[test]
    fn the_example_file_lists_every_key_with_its_default() {
        let text = include_str!("../config.example.toml");
        let mut example: Config = Figment::from(Toml::string(text)).extract().unwrap();
        example.upstream.url = None;
        example.credentials.user_name = None;
        example.credentials.password_file = None;
        assert_eq!(toml::to_string(&example).unwrap(), toml::to_string(&Config::default()).unwrap());

        let mut every_key = minimal();
        every_key.upstream.ca_file = Some("x".into());
        every_key.upstream.client_cert_file = Some("x".into());
        every_key.upstream.client_key_file = Some("x".into());
        every_key.upstream.egress_proxy = Some("x".into());
        every_key.credentials.password_file = Some("x".into());
        let table: toml::Table = toml::from_str(&every_key.to_redacted_toml()).unwrap();
        for (section, keys) in &table {
            assert!(text.contains(&format!("\n[{section}]\n")), "[{section}] missing from config.example.toml");
            for key in keys.as_table().unwrap().keys() {
                let listed = text.contains(&format!("\n{key} = ")) || text.contains(&format!("\n# {key} = "));
                assert!(listed, "{section}.{key} missing from config.example.toml");
            }
        }
    }
}
