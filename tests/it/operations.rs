//! The proxy as a platform team operates it (SPEC §1, §6, §7, §8 and
//! `listen.max_connections`): probes, Prometheus metrics that match the
//! traffic, structured logs, graceful shutdown with requests in flight, and
//! the connection limit under load.
//!
//! Metrics are process-global, so every metric assertion runs the real
//! binary; admin routing and the connection limit run in-process. Timing
//! checks compare orderings or lower bounds, never a fixed sleep.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::support::client::{Client, Reply};
use crate::support::fake_truedat::{FakeConfig, FakeTruedat, LoginMode};
use crate::support::process::cpu_ticks;
use crate::support::prometheus::Scrape;
use crate::support::proxy::{BINARY, BinaryProxy, TestProxy, binary_toml, config_file, fake};
use crate::support::wait::wait_until;

/// Bound for anything the proxy does on its own (start, login, exit, log).
const PATIENCE: Duration = Duration::from_secs(15);
/// The version `truedat_proxy_build_info` must carry.
const VERSION: &str = env!("CARGO_PKG_VERSION");

const REQUESTS: &str = "truedat_proxy_requests_total";
const REQUEST_DURATION: &str = "truedat_proxy_request_duration_seconds";
const UPSTREAM_ERRORS: &str = "truedat_proxy_upstream_errors_total";
const LOGINS: &str = "truedat_proxy_logins_total";
const TOKEN_REFRESHES: &str = "truedat_proxy_token_refreshes_total";
const REPLAYS: &str = "truedat_proxy_replays_total";
const TOKEN_EXPIRY: &str = "truedat_proxy_token_expiry_timestamp_seconds";
const READY: &str = "truedat_proxy_ready";
const IN_FLIGHT: &str = "truedat_proxy_in_flight_requests";
const LOGIN_DURATION: &str = "truedat_proxy_login_duration_seconds";
const BUILD_INFO: &str = "truedat_proxy_build_info";

/// Labels whose values SPEC §6 lists, with those values.
type Enumerated = &'static [(&'static str, &'static [&'static str])];

/// SPEC §6: every family, its type, and the values its labels may take.
const FAMILIES: [(&str, &str, Enumerated); 11] = [
    (REQUESTS, "counter", &[]),
    (REQUEST_DURATION, "histogram", &[]),
    (UPSTREAM_ERRORS, "counter", &[("kind", &["connect", "tls", "timeout", "protocol"])]),
    (LOGINS, "counter", &[("result", &["success", "rejected", "error"])]),
    (TOKEN_REFRESHES, "counter", &[("reason", &["startup", "expiry", "unauthorized"])]),
    (REPLAYS, "counter", &[("result", &["success", "failure"])]),
    (TOKEN_EXPIRY, "gauge", &[]),
    (READY, "gauge", &[]),
    (IN_FLIGHT, "gauge", &[]),
    (LOGIN_DURATION, "histogram", &[]),
    (BUILD_INFO, "gauge", &[]),
];

// ---------------------------------------------------------------------------
// Helpers: the binary, its admin port, its output

async fn spawn_binary(fake: &FakeTruedat, extra: &[&str]) -> BinaryProxy {
    BinaryProxy::spawn(&binary_toml(&fake.url(), extra), &[]).await
}

/// `GET` on the admin port, `None` if the port does not answer.
async fn admin_get(client: &Client, proxy: &BinaryProxy, path: &str) -> Option<Reply> {
    let request = Request::get(proxy.admin_url(path)).body(Full::default()).expect("a valid request");
    client.try_send(request).await.ok()
}

async fn wait_ready(client: &Client, proxy: &BinaryProxy) {
    let ready = wait_until(PATIENCE, || async {
        admin_get(client, proxy, "/readyz").await.is_some_and(|r| r.status == StatusCode::OK)
    })
    .await;
    assert!(ready, "/readyz never answered 200; output:\n{}", proxy.output());
}

/// Scrapes `/metrics` and parses it.
async fn scrape(client: &Client, proxy: &BinaryProxy) -> Scrape {
    let reply = client.get(&proxy.admin_url("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK, "/metrics: {}", reply.text());
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "/metrics content-type {content_type:?}");
    Scrape::parse(&reply.text()).unwrap_or_else(|e| panic!("/metrics is not the text format ({e}):\n{}", reply.text()))
}

/// Scrapes until `condition` holds; panics with the last scrape after `PATIENCE`.
async fn scrape_until(client: &Client, proxy: &BinaryProxy, what: &str, condition: impl Fn(&Scrape) -> bool) -> Scrape {
    let last = Mutex::new(None);
    let held = wait_until(PATIENCE, || {
        let (last, condition) = (&last, &condition);
        async move {
            let scraped = scrape(client, proxy).await;
            let holds = condition(&scraped);
            *last.lock().unwrap() = Some(scraped);
            holds
        }
    })
    .await;
    let last = last.into_inner().unwrap().expect("scraped at least once");
    assert!(held, "{what} never held; last scrape:\n{}", last.text);
    last
}

/// Waits until the process has printed `needle` (its pipes are read by tasks
/// that may lag behind the process).
async fn wait_for_output(proxy: &BinaryProxy, needle: &str) {
    let seen = wait_until(PATIENCE, || async { proxy.output().contains(needle) }).await;
    assert!(seen, "the binary never printed {needle:?}; output:\n{}", proxy.output());
}

/// Every output line as a JSON event carrying `timestamp`, `level` and `message`.
fn events(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}\nwhole output:\n{output}"));
            assert!(event["timestamp"].is_string(), "no \"timestamp\" in {line}");
            assert!(event["level"].is_string(), "no \"level\" in {line}");
            assert!(event["message"].is_string(), "no \"message\" in {line}");
            event
        })
        .collect()
}

fn at_level<'a>(events: &'a [Value], level: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["level"] == level).collect()
}

/// SIGTERM, exit 0, and the whole output once the last line (the logout) is in.
async fn stop_cleanly(mut proxy: BinaryProxy) -> String {
    proxy.signal("TERM");
    let status = proxy.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proxy.output());
    wait_for_output(&proxy, "logged out").await;
    proxy.output()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs_f64()
}

// ---------------------------------------------------------------------------
// §6: probes

#[tokio::test]
async fn probes_follow_the_first_token_and_the_start_of_shutdown() {
    let fake = fake(|_| {}).await;
    fake.set_login_mode(LoginMode::Hang);
    let mut proxy = spawn_binary(&fake, &["shutdown.delay = \"2s\""]).await;
    let client = Client::new();
    assert!(wait_until(PATIENCE, || async { fake.login_attempts() >= 1 }).await);

    // Before the first token: alive, not ready, with a JSON reason.
    let healthz = client.get(&proxy.admin_url("/healthz")).await;
    assert_eq!((healthz.status, healthz.text().trim()), (StatusCode::OK, "ok"));
    let readyz = client.get(&proxy.admin_url("/readyz")).await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz.header("content-type"), Some("application/json"));
    assert_eq!(readyz.json()["errors"]["detail"], "no token yet");
    assert_eq!(scrape(&client, &proxy).await.value(READY, &[]), Some(0.0));

    fake.set_login_mode(LoginMode::Normal);
    wait_ready(&client, &proxy).await;
    assert_eq!(client.get(&proxy.admin_url("/readyz")).await.text().trim(), "ok");
    assert_eq!(scrape(&client, &proxy).await.value(READY, &[]), Some(1.0));

    // SIGTERM: not ready at once, with the reason; alive; still serving during the delay.
    proxy.signal("TERM");
    let not_ready = wait_until(Duration::from_secs(2), || async {
        admin_get(&client, &proxy, "/readyz").await.is_some_and(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
    });
    assert!(not_ready.await, "/readyz stayed 200 after SIGTERM; output:\n{}", proxy.output());
    let readyz = client.get(&proxy.admin_url("/readyz")).await;
    assert_eq!(readyz.json()["errors"]["detail"], "shutting down");
    assert_eq!(client.get(&proxy.admin_url("/healthz")).await.status, StatusCode::OK);
    assert_eq!(scrape(&client, &proxy).await.value(READY, &[]), Some(0.0));
    let during_delay = Client::new().get(&proxy.url("/api/during-delay")).await;
    assert_eq!(during_delay.status, StatusCode::OK, "{}", during_delay.text());

    let status = proxy.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proxy.output());
}

#[tokio::test]
async fn admin_port_answers_404_to_unknown_paths_and_405_to_wrong_methods() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::start(&fake, |_| {}).await;
    assert!(proxy.wait_ready(PATIENCE).await);
    let client = &proxy.client;

    for path in ["/", "/nope", "/healthz/extra", "/metricsz", "/api/data"] {
        let reply = client.get(&proxy.admin_url(path)).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "GET {path}: {}", reply.text());
        assert!(reply.json()["errors"]["detail"].is_string(), "GET {path}: {}", reply.text());
    }
    for (method, path) in [
        (Method::POST, "/readyz"),
        (Method::DELETE, "/readyz"),
        (Method::PUT, "/healthz"),
        (Method::POST, "/metrics"),
        (Method::GET, "/quitquitquit"),
    ] {
        let reply = client.call(method.clone(), &proxy.admin_url(path), "").await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {}", reply.text());
    }
    let head = client.call(Method::HEAD, &proxy.admin_url("/healthz"), "").await;
    assert_eq!(head.status, StatusCode::OK);
    // A GET on /quitquitquit must not have begun a shutdown.
    assert_eq!(client.get(&proxy.admin_url("/readyz")).await.status, StatusCode::OK);

    // The proxy port forwards every path, /healthz included, to Truedat.
    let forwarded = proxy.get("/healthz").await;
    assert_eq!(forwarded.status, StatusCode::NOT_FOUND, "{}", forwarded.text());
    assert_ne!(forwarded.text().trim(), "ok");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// §6: metrics

/// Checks that `name` renders as a real histogram: cumulative `_bucket`
/// series ending in `le="+Inf"` equal to `_count`, a `_sum`, no quantiles.
/// Returns the finite bucket bounds.
fn assert_histogram(scrape: &Scrape, name: &str) -> Vec<f64> {
    type Bucket = (f64, f64);
    assert_eq!(scrape.kind(name), Some("histogram"), "# TYPE of {name}:\n{}", scrape.text);
    assert!(
        scrape.samples(name).next().is_none(),
        "{name} has bare samples (quantiles of a summary?):\n{}",
        scrape.text
    );
    let bucket_name = format!("{name}_bucket");
    // Labels other than `le` → (le, cumulative count) of each bucket.
    let mut series: BTreeMap<Vec<(String, String)>, Vec<Bucket>> = BTreeMap::new();
    for sample in scrape.samples(&bucket_name) {
        let le = sample.labels.get("le").unwrap_or_else(|| panic!("a bucket of {name} without le"));
        let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().expect("a numeric le") };
        let key = sample.labels.iter().filter(|(k, _)| *k != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
        series.entry(key).or_default().push((le, sample.value));
    }
    assert!(!series.is_empty(), "{name} has no _bucket lines:\n{}", scrape.text);
    let mut bounds = Vec::new();
    for (labels, mut buckets) in series {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{name}{labels:?}: buckets are not cumulative");
        let (last_le, last_count) = *buckets.last().expect("non-empty");
        assert_eq!(last_le, f64::INFINITY, "{name}{labels:?} has no +Inf bucket");
        let count = scrape.value(&format!("{name}_count"), &labels);
        assert_eq!(count, Some(last_count), "{name}{labels:?}: _count differs from the +Inf bucket");
        assert!(scrape.value(&format!("{name}_sum"), &labels).is_some_and(|s| s >= 0.0), "{name}{labels:?}: no _sum");
        bounds = buckets.iter().map(|b| b.0).filter(|le| le.is_finite()).collect();
    }
    bounds
}

#[tokio::test]
async fn every_spec_metric_is_exposed_with_its_type_and_counts_match_the_traffic() {
    let fake = fake(|_| {}).await;
    let proxy = spawn_binary(&fake, &[]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    for i in 0..5 {
        assert_eq!(client.get(&proxy.url(&format!("/api/items/{i}"))).await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(client.call(Method::POST, &proxy.url("/api/upload"), "payload").await.status, StatusCode::OK);
    }
    assert_eq!(client.get(&proxy.url("/api/forbidden")).await.status, StatusCode::FORBIDDEN);
    let m = scrape(&client, &proxy).await;

    for (name, kind, labels) in FAMILIES {
        assert_eq!(m.kind(name), Some(kind), "# TYPE of {name}:\n{}", m.text);
        for (label, allowed) in labels {
            let series: Vec<_> = m.samples(name).collect();
            assert!(!series.is_empty(), "{name} has no series:\n{}", m.text);
            for sample in series {
                let value = sample.labels.get(*label).map(String::as_str).unwrap_or_default();
                assert!(allowed.contains(&value), "{name}: {label}={value:?} is not one of {allowed:?}");
            }
        }
    }
    let request_bounds = assert_histogram(&m, REQUEST_DURATION);
    assert!(request_bounds.first().is_some_and(|&le| le <= 0.001), "no sub-millisecond bucket: {request_bounds:?}");
    assert!(request_bounds.last().is_some_and(|&le| le >= 10.0), "no bucket of tens of seconds: {request_bounds:?}");
    assert!(assert_histogram(&m, LOGIN_DURATION).len() >= 5, "too few login buckets:\n{}", m.text);

    assert_eq!(m.value(BUILD_INFO, &[("version", VERSION)]), Some(1.0), "{}", m.text);
    for sample in m.samples(REQUESTS) {
        let keys: Vec<&str> = sample.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["method", "status"], "labels of {REQUESTS} must stay low-cardinality");
    }
    assert_eq!(m.value(REQUESTS, &[("method", "GET"), ("status", "200")]), Some(5.0), "{}", m.text);
    assert_eq!(m.value(REQUESTS, &[("method", "POST"), ("status", "200")]), Some(2.0), "{}", m.text);
    assert_eq!(m.value(REQUESTS, &[("method", "GET"), ("status", "403")]), Some(1.0), "{}", m.text);
    assert_eq!(m.total(REQUESTS, &[]), 8.0, "{}", m.text);
    let duration_count = format!("{REQUEST_DURATION}_count");
    assert_eq!(m.value(&duration_count, &[("method", "GET")]), Some(6.0), "{}", m.text);
    assert_eq!(m.value(&duration_count, &[("method", "POST")]), Some(2.0), "{}", m.text);
    assert_eq!(m.total(&duration_count, &[]), m.total(REQUESTS, &[]));

    assert_eq!(m.value(IN_FLIGHT, &[]), Some(0.0), "{}", m.text);
    assert_eq!(m.value(READY, &[]), Some(1.0), "{}", m.text);
    assert_eq!(m.count(LOGINS, &[("result", "success")]), 1.0, "{}", m.text);
    assert_eq!(m.count(TOKEN_REFRESHES, &[("reason", "startup")]), 1.0, "{}", m.text);
    assert_eq!(m.value(&format!("{LOGIN_DURATION}_count"), &[]), Some(1.0), "{}", m.text);
    assert_eq!(m.total(UPSTREAM_ERRORS, &[]), 0.0, "{}", m.text);
    assert_eq!(m.total(REPLAYS, &[]), 0.0, "{}", m.text);
    assert_eq!(fake.logins(), 1);
}

#[tokio::test]
async fn a_revocation_counts_one_unauthorized_refresh_one_replay_and_a_second_login() {
    let fake = fake(|_| {}).await;
    let proxy = spawn_binary(&fake, &[]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;
    assert_eq!(client.get(&proxy.url("/api/before")).await.status, StatusCode::OK);

    fake.revoke_all();
    assert_eq!(client.get(&proxy.url("/api/after")).await.status, StatusCode::OK);
    let m = scrape(&client, &proxy).await;

    assert_eq!(m.count(TOKEN_REFRESHES, &[("reason", "startup")]), 1.0, "{}", m.text);
    assert_eq!(m.count(TOKEN_REFRESHES, &[("reason", "unauthorized")]), 1.0, "{}", m.text);
    assert_eq!(m.count(TOKEN_REFRESHES, &[("reason", "expiry")]), 0.0, "{}", m.text);
    assert_eq!(m.count(REPLAYS, &[("result", "success")]), 1.0, "{}", m.text);
    assert_eq!(m.count(REPLAYS, &[("result", "failure")]), 0.0, "{}", m.text);
    assert_eq!(m.count(LOGINS, &[("result", "success")]), 2.0, "{}", m.text);
    assert_eq!(m.value(&format!("{LOGIN_DURATION}_count"), &[]), Some(m.total(LOGINS, &[])), "{}", m.text);
    // The client saw two 200s: the first attempt's 401 is not an answered request.
    assert_eq!(m.value(REQUESTS, &[("method", "GET"), ("status", "200")]), Some(2.0), "{}", m.text);
    assert_eq!(m.count(REQUESTS, &[("method", "GET"), ("status", "401")]), 0.0, "{}", m.text);
    assert_eq!(fake.logins(), 2);
}

#[tokio::test]
async fn rejected_logins_are_counted_and_the_ready_gauge_follows_the_token() {
    let fake = fake(|_| {}).await;
    fake.set_password("rotated-elsewhere");
    let proxy = spawn_binary(&fake, &["token.retry_initial = \"20ms\"", "token.retry_max = \"100ms\""]).await;
    let client = Client::new();

    let rejected = |m: &Scrape| m.count(LOGINS, &[("result", "rejected")]);
    let m = scrape_until(&client, &proxy, "logins_total{result=\"rejected\"} >= 2", |m| rejected(m) >= 2.0).await;
    assert_eq!(m.value(READY, &[]), Some(0.0), "{}", m.text);
    assert_eq!(m.count(LOGINS, &[("result", "success")]), 0.0, "{}", m.text);
    assert_eq!(m.count(TOKEN_REFRESHES, &[("reason", "startup")]), 0.0, "{}", m.text);
    assert!(rejected(&m) <= fake.login_attempts() as f64, "more rejections counted than attempts made");
    let first = rejected(&m);
    scrape_until(&client, &proxy, "the rejected count to grow", |m| rejected(m) > first).await;

    fake.set_password(&FakeConfig::default().password);
    let m = scrape_until(&client, &proxy, "truedat_proxy_ready 1", |m| m.value(READY, &[]) == Some(1.0)).await;
    assert_eq!(m.count(LOGINS, &[("result", "success")]), 1.0, "{}", m.text);
    assert_eq!(m.count(LOGINS, &[("result", "error")]), 0.0, "{}", m.text);
    assert_eq!(m.count(TOKEN_REFRESHES, &[("reason", "startup")]), 1.0, "{}", m.text);
    assert_eq!(m.value(&format!("{LOGIN_DURATION}_count"), &[]), Some(m.total(LOGINS, &[])), "{}", m.text);
}

#[tokio::test]
async fn the_expiry_gauge_is_now_plus_the_token_lifetime() {
    let lifetime = Duration::from_secs(120);
    let fake = fake(|c| c.token_ttl = lifetime).await;
    let before = unix_now();
    let proxy = spawn_binary(&fake, &[]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;
    let after = unix_now();

    let m = scrape(&client, &proxy).await;
    let expiry = m.value(TOKEN_EXPIRY, &[]).unwrap_or_else(|| panic!("no {TOKEN_EXPIRY}:\n{}", m.text));
    // Whole-second claims and the time the login took: a few seconds of slack.
    let expected = (before + lifetime.as_secs_f64() - 3.0)..=(after + lifetime.as_secs_f64() + 3.0);
    assert!(expected.contains(&expiry), "{TOKEN_EXPIRY} = {expiry}, expected within {expected:?}");
}

#[tokio::test]
async fn an_upstream_timeout_is_counted_and_in_flight_returns_to_zero() {
    let fake = fake(|_| {}).await;
    let proxy = spawn_binary(&fake, &["upstream.request_timeout = \"1500ms\""]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    let slow = tokio::spawn({
        let (client, url) = (client.clone(), proxy.url("/api/slow?ms=5000"));
        async move { client.get(&url).await }
    });
    assert!(wait_until(PATIENCE, || async { !fake.data_requests().is_empty() }).await);
    let during = scrape(&client, &proxy).await;
    assert_eq!(during.value(IN_FLIGHT, &[]), Some(1.0), "{}", during.text);

    assert_eq!(slow.await.expect("the request task").status, StatusCode::GATEWAY_TIMEOUT);
    let m = scrape(&client, &proxy).await;
    assert_eq!(m.value(UPSTREAM_ERRORS, &[("kind", "timeout")]), Some(1.0), "{}", m.text);
    for kind in ["connect", "tls", "protocol"] {
        assert_eq!(m.value(UPSTREAM_ERRORS, &[("kind", kind)]), Some(0.0), "{kind}: {}", m.text);
    }
    assert_eq!(m.value(REQUESTS, &[("method", "GET"), ("status", "504")]), Some(1.0), "{}", m.text);
    assert_eq!(m.value(&format!("{REQUEST_DURATION}_count"), &[("method", "GET")]), Some(1.0), "{}", m.text);
    assert_eq!(m.value(IN_FLIGHT, &[]), Some(0.0), "{}", m.text);
}

// ---------------------------------------------------------------------------
// §8: logs

/// A request sent through the proxy and what its access line must say.
struct Sent {
    reply: Reply,
    method: &'static str,
    /// The path as logged: without the query string.
    path: &'static str,
    /// `None` when the proxy answered by itself.
    upstream_status: Option<u16>,
    replayed: bool,
}

impl Sent {
    fn new(
        reply: Reply,
        method: &'static str,
        path: &'static str,
        upstream_status: Option<u16>,
        replayed: bool,
    ) -> Sent {
        Sent { reply, method, path, upstream_status, replayed }
    }
}

#[tokio::test]
async fn every_request_has_exactly_one_access_line_with_its_id_and_replay_flag() {
    let fake = fake(|_| {}).await;
    let proxy = spawn_binary(&fake, &[]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    let mut sent = Vec::new();
    let request = Request::get(proxy.url("/api/items?secret=1&q=ops-query-value"))
        .header("x-request-id", "ops-request-1")
        .body(Full::default())
        .expect("a valid request");
    sent.push(Sent::new(client.send(request).await, "GET", "/api/items", Some(200), false));
    sent.push(Sent::new(client.get(&proxy.url("/api/forbidden")).await, "GET", "/api/forbidden", Some(403), false));
    let upload = client.call(Method::POST, &proxy.url("/api/upload"), "body").await;
    sent.push(Sent::new(upload, "POST", "/api/upload", Some(200), false));
    // Refused by the proxy itself: no upstream status.
    sent.push(Sent::new(client.get(&proxy.url("/api/sessions")).await, "GET", "/api/sessions", None, false));
    fake.revoke_all();
    sent.push(Sent::new(client.get(&proxy.url("/api/replayed")).await, "GET", "/api/replayed", Some(200), true));
    let statuses: Vec<u16> = sent.iter().map(|s| s.reply.status.as_u16()).collect();
    assert_eq!(statuses, [200, 403, 200, 403, 200]);

    let output = stop_cleanly(proxy).await;
    assert!(!output.contains("secret=1"), "the query string reached the log:\n{output}");
    assert!(!output.contains("ops-query-value"), "the query string reached the log:\n{output}");
    let events = events(&output);
    let access: Vec<&Value> = events.iter().filter(|e| e.get("request_id").is_some()).collect();
    assert_eq!(access.len(), sent.len(), "one access line per request expected:\n{output}");

    for sent in &sent {
        let (method, path) = (sent.method, sent.path);
        let id = sent.reply.header("x-request-id").unwrap_or_else(|| panic!("{path}: no X-Request-Id returned"));
        let lines: Vec<&&Value> = access.iter().filter(|e| e["request_id"] == id).collect();
        assert_eq!(lines.len(), 1, "{method} {path}: expected one access line with request_id {id:?}:\n{output}");
        let line = lines[0];
        assert_eq!(line["method"], method, "{line}");
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["status"], sent.reply.status.as_u16(), "{line}");
        assert!(line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
        match sent.upstream_status {
            Some(upstream) => assert_eq!(line["upstream_status"], upstream, "{line}"),
            None => assert!(line.get("upstream_status").is_none_or(Value::is_null), "{line}"),
        }
        assert_eq!(line["replayed"], sent.replayed, "{line}");
    }
    assert_eq!(sent[0].reply.header("x-request-id"), Some("ops-request-1"));
    // Both attempts of the replayed request reached Truedat with the same id.
    let replayed_id = sent[4].reply.header("x-request-id").expect("an id");
    let attempts =
        fake.data_requests().iter().filter(|r| r.headers.get("x-request-id").is_some_and(|v| v == replayed_id)).count();
    assert_eq!(attempts, 2, "the replay did not carry the request id");

    // Token events (startup, then the login after the revocation) carry the
    // generation and the expiry time, never the token.
    let token_events: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("generation").is_some() && ["startup", "unauthorized"].iter().any(|r| e["reason"] == *r))
        .collect();
    assert_eq!(token_events.len(), 2, "expected a token event for startup and for the revocation:\n{output}");
    for event in &token_events {
        let object = event.as_object().expect("an object");
        assert!(object.keys().any(|k| k.contains("expir")), "a token event without its expiry time: {event}");
    }
    for request in fake.data_requests() {
        let bearer = request.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let token = bearer.strip_prefix("Bearer ").unwrap_or_default();
        assert!(!token.is_empty() && !output.contains(token), "a token reached the log (or none was sent)");
    }
}

#[tokio::test]
async fn a_failing_login_is_logged_at_error_once_per_change_of_state_not_per_retry() {
    let fake = fake(|_| {}).await;
    fake.set_password("rotated-elsewhere");
    let proxy = spawn_binary(&fake, &["token.retry_initial = \"20ms\"", "token.retry_max = \"100ms\""]).await;
    let client = Client::new();

    let started = Instant::now();
    let retried = wait_until(PATIENCE, || async {
        started.elapsed() >= Duration::from_millis(1500) && fake.login_attempts() >= 8
    });
    assert!(retried.await, "only {} login attempts", fake.login_attempts());
    let errors = at_level(&events(&proxy.output()), "ERROR").into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        errors.len(),
        1,
        "{} rejected attempts must give one ERROR line:\n{}",
        fake.login_attempts(),
        proxy.output()
    );
    let rejected = errors[0].to_string().to_lowercase();
    assert!(rejected.contains("rejected"), "the ERROR line does not say the credentials were rejected: {rejected}");

    let before = fake.login_attempts();
    fake.set_login_mode(LoginMode::Status(500));
    assert!(wait_until(PATIENCE, || async { fake.login_attempts() >= before + 8 }).await);
    let events_now = events(&proxy.output());
    let errors = at_level(&events_now, "ERROR");
    assert_eq!(errors.len(), 2, "a new failure must give exactly one new ERROR line:\n{}", proxy.output());
    assert!(errors[1].to_string().contains("500"), "the second ERROR line does not name the 500: {}", errors[1]);
    assert!(at_level(&events_now, "WARN").len() <= 2, "warnings per retry:\n{}", proxy.output());

    fake.set_password(&FakeConfig::default().password);
    fake.set_login_mode(LoginMode::Normal);
    wait_ready(&client, &proxy).await;
    let output = stop_cleanly(proxy).await;
    let events = events(&output);
    assert_eq!(at_level(&events, "ERROR").len(), 2, "{output}");
    let last_error = events.iter().rposition(|e| e["level"] == "ERROR").expect("two errors");
    let recovered = events[last_error..].iter().any(|e| {
        let text = e.to_string().to_lowercase();
        e["level"] == "INFO" && (text.contains("again") || text.contains("recover") || text.contains("failed_attempts"))
    });
    assert!(recovered, "no INFO line says the login recovered:\n{output}");
    assert!(!output.contains(&FakeConfig::default().password), "the password reached the log");
}

/// Removes ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The binary with `log.format = "text"`: `BinaryProxy` expects JSON lines.
struct TextBinary {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Kept so the file outlives the process.
    _config: tempfile::NamedTempFile,
}

impl TextBinary {
    async fn spawn(fake: &FakeTruedat) -> TextBinary {
        let config = config_file(&binary_toml(&fake.url(), &["log.format = \"text\""]));
        let mut child = tokio::process::Command::new(BINARY)
            .arg("--config")
            .arg(config.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        for stream in [Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>, Box::new(stderr)] {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let binary = TextBinary { child, lines, _config: config };
        binary.wait_for("truedat-auth-proxy started").await;
        binary
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The first line containing `needle`.
    fn find(&self, needle: &str) -> Option<String> {
        self.lines.lock().unwrap().iter().find(|l| l.contains(needle)).cloned()
    }

    async fn wait_for(&self, needle: &str) -> String {
        let seen = wait_until(PATIENCE, || async { self.find(needle).is_some() }).await;
        assert!(seen, "the binary never printed {needle:?}; output:\n{}", self.output());
        self.find(needle).expect("seen")
    }

    /// The proxy address, read from the "started" line.
    fn proxy_addr(&self) -> SocketAddr {
        let started = strip_ansi(&self.find("truedat-auth-proxy started").expect("seen at spawn"));
        started
            .split_whitespace()
            .find_map(|word| word.strip_prefix("proxy=")?.parse().ok())
            .unwrap_or_else(|| panic!("no proxy=ADDR in the started line: {started}"))
    }

    async fn stop(&mut self) {
        let pid = self.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success()));
        let status = tokio::time::timeout(PATIENCE, self.child.wait()).await.expect("exits").expect("wait works");
        assert_eq!(status.code(), Some(0), "{}", self.output());
    }
}

#[tokio::test]
async fn text_log_format_prints_plain_lines_with_the_messages() {
    let fake = fake(|_| {}).await;
    let mut binary = TextBinary::spawn(&fake).await;
    let proxy = binary.proxy_addr();
    binary.wait_for("new Truedat token").await;
    let reply = Client::new().get(&format!("http://{proxy}/api/text-check?secret=1")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let access = strip_ansi(&binary.wait_for("/api/text-check").await);
    assert!(access.contains("200"), "the access line lacks the status: {access}");
    binary.stop().await;

    let output = binary.output();
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = serde_json::from_str::<Value>(line);
        assert!(!parsed.is_ok_and(|v| v.is_object()), "log.format = \"text\" printed JSON: {line}");
    }
    assert!(!output.contains("secret=1"), "the query string reached the log:\n{output}");
}

#[tokio::test]
async fn text_logs_carry_no_colour_codes_when_stdout_is_not_a_terminal() {
    let fake = fake(|_| {}).await;
    let binary = TextBinary::spawn(&fake).await;
    binary.wait_for("new Truedat token").await;
    let output = binary.output();
    // Log collectors (kubectl logs, Loki, CloudWatch) store these bytes verbatim.
    assert!(!output.contains('\u{1b}'), "ANSI escape codes in piped text logs:\n{}", output.escape_debug());
}

// ---------------------------------------------------------------------------
// §7: shutdown

#[tokio::test]
async fn sigterm_finishes_the_slow_request_refuses_new_connections_after_the_delay_and_exits_0() {
    let delay = Duration::from_millis(1000);
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_binary(&fake, &["shutdown.delay = \"1s\"", "shutdown.drain_timeout = \"10s\""]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    let slow = tokio::spawn({
        let (client, url) = (Client::new(), proxy.url("/api/slow?ms=2500"));
        async move { client.get(&url).await }
    });
    assert!(wait_until(PATIENCE, || async { !fake.data_requests().is_empty() }).await);
    proxy.signal("TERM");
    let signalled = Instant::now();

    // During the delay a new connection is still accepted and served.
    let during = Client::new().get(&proxy.url("/api/during-delay")).await;
    assert_eq!(during.status, StatusCode::OK, "{}", during.text());

    // After the delay the listener is closed, while the slow request is still draining.
    let refused = wait_until(PATIENCE, || async { TcpStream::connect(proxy.proxy).await.is_err() }).await;
    assert!(refused, "the listener still accepts connections; output:\n{}", proxy.output());
    assert!(signalled.elapsed() >= delay, "connections were refused before shutdown.delay passed");
    assert!(!slow.is_finished(), "the listener closed only after the drain, not after the delay");
    let readyz = admin_get(&client, &proxy, "/readyz").await.expect("the admin port answers while draining");
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);

    let slow = slow.await.expect("the request task");
    assert_eq!(slow.status, StatusCode::OK, "the in-flight request was cut: {}", slow.text());
    let status = proxy.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proxy.output());
    assert_eq!(fake.logouts(), 1, "the session was not logged out; output:\n{}", proxy.output());
}

#[tokio::test]
async fn a_drain_that_outlasts_the_timeout_cuts_the_request_says_how_many_and_exits_1() {
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_binary(&fake, &["shutdown.drain_timeout = \"300ms\""]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    let slow = tokio::spawn({
        let (client, url) = (Client::new(), proxy.url("/api/slow?ms=5000"));
        async move { client.try_send(Request::get(url).body(Full::default()).expect("valid")).await }
    });
    assert!(wait_until(PATIENCE, || async { !fake.data_requests().is_empty() }).await);
    proxy.signal("TERM");
    let signalled = Instant::now();
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(3), "exiting took {took:?} with shutdown.drain_timeout = 300ms");
    assert_eq!(status.code(), Some(1), "output:\n{}", proxy.output());

    let cut = slow.await.expect("the request task");
    assert!(cut.as_ref().is_err() || cut.as_ref().is_ok_and(|r| r.status != StatusCode::OK), "{cut:?}");
    wait_for_output(&proxy, "logged out").await;
    let output = proxy.output();
    assert!(says_requests_cut(&output, 1), "no line says that 1 request was cut:\n{output}");
    assert_eq!(fake.logouts(), 1, "the session must be logged out even after a cut drain");
}

/// Whether a log line says that `n` requests were cut (a `requests_cut`
/// field, or a message about cutting that names the number).
fn says_requests_cut(output: &str, n: u64) -> bool {
    events(output).iter().any(|e| {
        let message = e["message"].as_str().unwrap_or_default().to_lowercase();
        let names_n = message.split(|c: char| !c.is_ascii_alphanumeric()).any(|word| word == n.to_string());
        e["requests_cut"] == n || (message.contains("cut") && names_n)
    })
}

#[tokio::test]
async fn a_response_still_streaming_at_the_drain_timeout_is_counted_as_cut() {
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_binary(&fake, &["shutdown.drain_timeout = \"300ms\""]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    // A client that reads the head of a large download, then stops reading:
    // the response is still being sent when the drain begins.
    let mut connection = Connection::open(proxy.proxy).await;
    let request = Request::get("/api/download?bytes=1000000000")
        .header("host", proxy.proxy.to_string())
        .body(Full::default())
        .expect("a valid request");
    let response = connection.sender.send_request(request).await.expect("the response head");
    assert_eq!(response.status(), StatusCode::OK);

    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(1), "output:\n{}", proxy.output());
    wait_for_output(&proxy, "logged out").await;
    let output = proxy.output();
    assert!(says_requests_cut(&output, 1), "the cut download is not counted in the drain report:\n{output}");
    drop(response);
    connection.close();
}

#[tokio::test]
async fn sigint_shuts_down_gracefully_like_sigterm() {
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_binary(&fake, &[]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;
    assert_eq!(client.get(&proxy.url("/api/data")).await.status, StatusCode::OK);

    proxy.signal("INT");
    let status = proxy.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proxy.output());
    assert_eq!(fake.logouts(), 1, "the session was not logged out; output:\n{}", proxy.output());
}

// ---------------------------------------------------------------------------
// listen.max_connections

/// One client connection driven by hand, so a test decides when it closes.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
    addr: SocketAddr,
}

impl Connection {
    /// Connects (the kernel completes the handshake even while the proxy
    /// has not accepted yet).
    async fn open(addr: SocketAddr) -> Connection {
        let stream = TcpStream::connect(addr).await.expect("the proxy listens");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("an HTTP/1 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Connection { sender, driver, addr }
    }

    /// Sends `GET path` on this connection; resolves with the status and the
    /// moment the whole answer had arrived.
    fn get(&mut self, path: &str, close: bool) -> JoinHandle<(StatusCode, Instant)> {
        let mut request = Request::get(path).header("host", self.addr.to_string());
        if close {
            request = request.header("connection", "close");
        }
        let response = self.sender.send_request(request.body(Full::default()).expect("a valid request"));
        tokio::spawn(async move {
            let response = response.await.expect("an answer on this connection");
            let status = response.status();
            response.into_body().collect().await.expect("the whole body");
            (status, Instant::now())
        })
    }

    /// Closes the connection, freeing its slot.
    fn close(self) {
        drop(self.sender);
        self.driver.abort();
    }
}

#[tokio::test]
async fn a_connection_beyond_the_limit_is_served_only_after_a_slot_frees() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::start(&fake, |c| c.listen.max_connections = 2).await;
    assert!(proxy.wait_ready(PATIENCE).await);

    let mut first = Connection::open(proxy.proxy).await;
    let mut second = Connection::open(proxy.proxy).await;
    let first_slow = first.get("/api/slow?ms=800", false);
    let second_slow = second.get("/api/slow?ms=800", false);
    assert!(wait_until(PATIENCE, || async { fake.data_requests().len() == 2 }).await);

    let mut third = Connection::open(proxy.proxy).await;
    let waiting = third.get("/api/data", false);
    let (status, first_done) = first_slow.await.expect("the first request");
    assert_eq!(status, StatusCode::OK);
    first.close();
    let (status, second_done) = second_slow.await.expect("the second request");
    assert_eq!(status, StatusCode::OK);
    let (status, third_done) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiting connection is served once a slot frees")
        .expect("the third request");
    assert_eq!(status, StatusCode::OK);
    assert!(
        third_done > first_done.min(second_done),
        "the third connection was answered before either slow request finished"
    );
    let paths: Vec<String> = fake.data_requests().iter().map(|r| r.uri.path().to_owned()).collect();
    assert_eq!(paths, ["/api/slow", "/api/slow", "/api/data"]);
    second.close();
    third.close();
    proxy.stop().await;
}

#[tokio::test]
async fn a_burst_of_fifty_short_lived_connections_is_served_four_at_a_time() {
    let slow_ms = 60;
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::start(&fake, |c| c.listen.max_connections = 4).await;
    assert!(proxy.wait_ready(PATIENCE).await);

    let started = Instant::now();
    let requests = (0..50).map(|_| {
        let addr = proxy.proxy;
        async move {
            let mut connection = Connection::open(addr).await;
            let (status, _) = connection.get(&format!("/api/slow?ms={slow_ms}"), true).await.expect("the request");
            connection.close();
            status
        }
    });
    let statuses = tokio::time::timeout(Duration::from_secs(30), join_all(requests)).await.expect("the burst ends");
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    // With at most 4 at a time, 50 requests of >= 60 ms need 13 rounds.
    let floor = Duration::from_millis(12 * slow_ms);
    assert!(elapsed >= floor, "50 requests took {elapsed:?}: more than 4 were served at once");
    assert_eq!(fake.data_requests().len(), 50);
    proxy.stop().await;
}

#[tokio::test]
async fn a_burst_from_a_pooling_keep_alive_client_is_not_starved_by_idle_connections() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::start(&fake, |c| c.listen.max_connections = 4).await;
    assert!(proxy.wait_ready(PATIENCE).await);

    // Like a legacy tool's HTTP pool: keep-alive, connections kept idle after use.
    let client = Client::new();
    let requests = (0..50).map(|i| {
        let (client, url) = (client.clone(), proxy.url(&format!("/api/burst/{i}")));
        async move {
            let request = Request::get(url).body(Full::default()).expect("valid");
            client.try_send(request).await.map(|r| r.status)
        }
    });
    let answered = tokio::time::timeout(Duration::from_secs(10), join_all(requests)).await;
    let statuses = answered.unwrap_or_else(|_| {
        panic!(
            "50 requests through 4 connection slots were not all answered within 10 s \
             ({} reached Truedat): idle keep-alive connections keep their slots",
            fake.data_requests().len()
        )
    });
    assert!(statuses.iter().all(|s| s.as_ref().is_ok_and(|s| *s == StatusCode::OK)), "{statuses:?}");
    proxy.stop().await;
}

/// Out of file descriptors (`ulimit -n 64`, then 120 connections held open):
/// the accept loop logs the error once and backs off instead of spinning or
/// exiting, and serves again as soon as descriptors are free.
#[tokio::test]
async fn running_out_of_descriptors_backs_off_and_recovers() {
    let fake = fake(|_| {}).await;
    let binary = BinaryProxy::spawn_with_fd_limit(&binary_toml(&fake.url(), &[]), 64).await;
    let client = Client::new();
    let ready = || async { admin_get(&client, &binary, "/readyz").await.is_some_and(|r| r.status == StatusCode::OK) };
    assert!(wait_until(PATIENCE, ready).await, "{}", binary.output());
    let pid = binary.pid();

    let mut held = Vec::new();
    for _ in 0..120 {
        held.push(TcpStream::connect(binary.proxy).await.expect("the kernel queues the connection"));
    }
    assert!(
        wait_until(PATIENCE, || async { binary.output().contains("accepting a connection failed") }).await,
        "no accept error logged with 120 connections and 64 descriptors:\n{}",
        binary.output()
    );
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(pid) - before;
    assert!(spent <= 30, "{spent} ticks of CPU in 1 s while out of descriptors: the accept loop spins");
    assert_eq!(binary.output().matches("accepting a connection failed").count(), 1, "{}", binary.output());

    drop(held);
    let served = wait_until(PATIENCE, || async {
        let request = Request::get(binary.url("/api/data")).body(Full::default()).expect("valid");
        client.try_send(request).await.is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    assert!(served, "the proxy did not recover once descriptors were free:\n{}", binary.output());
}
