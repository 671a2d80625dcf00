//! Logs and metrics: the names of SPEC §6 and §8 live here and nowhere else.
//!
//! Metric labels are low-cardinality by construction: methods outside the
//! standard set become `other`, and no path, user or request id is ever a label.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

pub const REQUESTS: &str = "truedat_proxy_requests_total";
pub const REQUEST_DURATION: &str = "truedat_proxy_request_duration_seconds";
pub const UPSTREAM_ERRORS: &str = "truedat_proxy_upstream_errors_total";
pub const LOGINS: &str = "truedat_proxy_logins_total";
pub const TOKEN_REFRESHES: &str = "truedat_proxy_token_refreshes_total";
pub const REPLAYS: &str = "truedat_proxy_replays_total";
pub const TOKEN_EXPIRY: &str = "truedat_proxy_token_expiry_timestamp_seconds";
pub const READY: &str = "truedat_proxy_ready";
pub const IN_FLIGHT: &str = "truedat_proxy_in_flight_requests";
pub const LOGIN_DURATION: &str = "truedat_proxy_login_duration_seconds";
pub const BUILD_INFO: &str = "truedat_proxy_build_info";
pub const CLIENT_CERT_EXPIRY: &str = "truedat_proxy_client_cert_expiry_timestamp_seconds";
pub const UPSTREAM_RETRIES: &str = "truedat_proxy_upstream_retries_total";
/// Spans that never reached the collector (SPEC §11), by `reason`; exported
/// only while tracing is on.
pub const SPANS_DROPPED: &str = "truedat_proxy_trace_spans_dropped_total";

/// Request latency buckets: from a loopback round trip to a slow report.
const REQUEST_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Login latency buckets: a login is a password hash on Truedat's side.
const LOGIN_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Sets up the global `tracing` subscriber from `[log]`. Called once, by main.
pub fn init_logging(log: &Log) -> Result<(), String> {
    let filter = EnvFilter::try_new(&log.level).map_err(|e| format!("log.level: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    let result = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        // Colours only for a person at a terminal, never into a log collector.
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

/// The process-wide Prometheus recorder, installed on first use (tests run
/// several proxies in one process; they share it).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &REQUEST_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(LOGIN_DURATION.into()), &LOGIN_BUCKETS))
            .expect("bucket lists are non-empty constants")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then this handle
        // renders an empty registry, which is visible and harmless.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "Requests answered to local clients, by method and status.");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Time from request received to response headers sent.");
    describe_counter!(UPSTREAM_ERRORS, "Failures talking to Truedat, by kind.");
    describe_counter!(LOGINS, "Logins to Truedat, by result.");
    describe_counter!(TOKEN_REFRESHES, "New tokens obtained, by reason.");
    describe_counter!(REPLAYS, "Requests replayed after a 401, by result.");
    describe_gauge!(TOKEN_EXPIRY, Unit::Seconds, "Unix time at which the current token expires.");
    describe_gauge!(READY, "1 while a valid token is held and no shutdown has begun.");
    describe_gauge!(IN_FLIGHT, "Requests being forwarded right now.");
    describe_histogram!(LOGIN_DURATION, Unit::Seconds, "Duration of login calls to Truedat.");
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
    describe_gauge!(
        CLIENT_CERT_EXPIRY,
        Unit::Seconds,
        "Unix time at which the client certificate in use expires (only with upstream.client_cert_file)."
    );
    describe_counter!(UPSTREAM_RETRIES, "Tries sent to Truedat again after a transient failure, by reason.");
    describe_counter!(SPANS_DROPPED, "Trace spans that never reached the collector, by reason (only with tracing on).");
    for reason in crate::retry::Reason::ALL {
        counter!(UPSTREAM_RETRIES, "reason" => reason.label()).absolute(0);
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for kind in ["connect", "tls", "timeout", "protocol"] {
        counter!(UPSTREAM_ERRORS, "kind" => kind).absolute(0);
    }
    for result in ["success", "rejected", "error"] {
        counter!(LOGINS, "result" => result).absolute(0);
    }
    for reason in ["startup", "expiry", "unauthorized"] {
        counter!(TOKEN_REFRESHES, "reason" => reason).absolute(0);
    }
    for result in ["success", "failure"] {
        counter!(REPLAYS, "result" => result).absolute(0);
    }
    gauge!(IN_FLIGHT).set(0.0);
}

/// The `method` label values; anything else is `other`, so a client cannot
/// create label values at will.
const METHODS: [&str; 8] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other"];

/// A request method reduced to one of the `METHODS` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodLabel(usize);

impl MethodLabel {
    /// The label of `method`.
    pub fn of(method: &Method) -> MethodLabel {
        MethodLabel(match *method {
            Method::GET => 0,
            Method::POST => 1,
            Method::PUT => 2,
            Method::PATCH => 3,
            Method::DELETE => 4,
            Method::HEAD => 5,
            Method::OPTIONS => 6,
            _ => 7,
        })
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        METHODS[self.0]
    }
}

/// Statuses 100–599 get a cached counter per method; others (legal but
/// unheard of) are looked up each time.
const STATUSES: usize = 500;

/// Per-request metric handles, created on first use and then updated with
/// one atomic operation each: the registry lookup (hashing the labels,
/// formatting the status) happens once per label pair, not per request.
struct RequestMetrics {
    counts: Vec<OnceLock<Counter>>,
    durations: [OnceLock<Histogram>; METHODS.len()],
    in_flight: OnceLock<Gauge>,
}

static REQUEST_METRICS: LazyLock<RequestMetrics> = LazyLock::new(|| RequestMetrics {
    counts: (0..METHODS.len() * STATUSES).map(|_| OnceLock::new()).collect(),
    durations: Default::default(),
    in_flight: OnceLock::new(),
});

fn requests_counter(method: MethodLabel, status: StatusCode) -> Counter {
    counter!(REQUESTS, "method" => method.as_str(), "status" => status.as_u16().to_string())
}

/// One answered request.
pub fn record_request(method: MethodLabel, status: StatusCode, duration: Duration) {
    let metrics = &*REQUEST_METRICS;
    match (status.as_u16() as usize).checked_sub(100).filter(|i| *i < STATUSES) {
        Some(i) => {
            metrics.counts[method.0 * STATUSES + i].get_or_init(|| requests_counter(method, status)).increment(1)
        }
        None => requests_counter(method, status).increment(1),
    }
    metrics.durations[method.0]
        .get_or_init(|| histogram!(REQUEST_DURATION, "method" => method.as_str()))
        .record(duration.as_secs_f64());
}

fn in_flight_gauge() -> &'static Gauge {
    REQUEST_METRICS.in_flight.get_or_init(|| gauge!(IN_FLIGHT))
}

/// A failure talking to Truedat.
pub fn record_upstream_error(kind: &'static str) {
    counter!(UPSTREAM_ERRORS, "kind" => kind).increment(1);
}

/// A try sent again after a transient failure.
pub fn record_retry(reason: &'static str) {
    counter!(UPSTREAM_RETRIES, "reason" => reason).increment(1);
}

/// Why a span never reached the collector: the `reason` label of
/// `truedat_proxy_trace_spans_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanDrop {
    /// The export queue was full when the span ended.
    QueueFull,
    /// Its export failed: the collector was down, refused or did not answer in time.
    ExportFailed,
}

impl SpanDrop {
    const ALL: [SpanDrop; 2] = [SpanDrop::QueueFull, SpanDrop::ExportFailed];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            SpanDrop::QueueFull => "queue_full",
            SpanDrop::ExportFailed => "export_failed",
        }
    }
}

/// The drop counters, looked up once: a full queue may drop spans on every
/// request, and a registry lookup hashes the labels.
static SPANS_DROPPED_COUNTERS: LazyLock<[Counter; 2]> =
    LazyLock::new(|| SpanDrop::ALL.map(|why| counter!(SPANS_DROPPED, "reason" => why.label())));

/// Tracing is on: its drop counter is exported from zero for each reason.
pub fn record_spans_dropped_from_zero() {
    for counter in SPANS_DROPPED_COUNTERS.iter() {
        counter.increment(0);
    }
}

/// `spans` spans that will never reach the collector, and why.
pub fn record_spans_dropped(why: SpanDrop, spans: u64) {
    SPANS_DROPPED_COUNTERS[why as usize].increment(spans);
}

/// A replay after a 401 and whether Truedat accepted it.
pub fn record_replay(success: bool) {
    counter!(REPLAYS, "result" => if success { "success" } else { "failure" }).increment(1);
}

/// One login attempt.
pub fn record_login(result: &'static str, duration: Duration) {
    counter!(LOGINS, "result" => result).increment(1);
    histogram!(LOGIN_DURATION).record(duration.as_secs_f64());
}

/// A new token, why it was fetched, and when it expires.
pub fn record_token(reason: &'static str, expires_at: SystemTime) {
    counter!(TOKEN_REFRESHES, "reason" => reason).increment(1);
    let unix = expires_at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    gauge!(TOKEN_EXPIRY).set(unix);
}

/// The notAfter of the client certificate now in use (set at startup and at
/// every rotation; never set without a client certificate, so the series
/// exists only when one is configured).
pub fn record_client_cert_expiry(not_after_unix: i64) {
    gauge!(CLIENT_CERT_EXPIRY).set(not_after_unix as f64);
}

/// Readiness as a gauge, refreshed at every scrape.
pub fn record_ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// Counts a request in flight, in the gauge and in a counter of the proxy's
/// own (for the drain report), for as long as the guard lives.
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one more request in flight.
    pub fn start(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        in_flight_gauge().increment(1.0);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        in_flight_gauge().decrement(1.0);
    }
}
