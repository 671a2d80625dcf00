//! OpenTelemetry tracing (SPEC §11), through the real binary (the tracer
//! and its export thread are per process) and an in-test OTLP/HTTP
//! collector that decodes what it receives with the official protobuf
//! definitions: the span trees of a plain GET, a GET retried during a
//! restart and a revocation; W3C trace context in and out; sampling; the
//! attributes; no secret in any export; a collector that is down or hangs;
//! the configuration.

use std::time::{Duration, Instant};

use http::Request;
use http_body_util::Full;
use serde_json::Value;

use crate::secrets::{PASSWORD_A, Secrets, USER};
use crate::support::client::{Client, Reply};
use crate::support::fake_truedat::{FakeTruedat, Outage};
use crate::support::otlp::{self, KIND_CLIENT, KIND_INTERNAL, KIND_SERVER, Mode, Receiver, SpanRecord};
use crate::support::prometheus::Scrape;
use crate::support::proxy::{BinaryProxy, binary_toml, config_file, fake, run_binary};
use crate::support::tap::Tap;
use crate::support::wait::wait_until;

const READY: Duration = Duration::from_secs(10);
/// Spans are batched every 50 ms in these tests (5 s by default).
const FAST_BATCHES: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "50");
const DROPPED: &str = "truedat_proxy_trace_spans_dropped_total";
/// A caller's trace context, as a traced tool would send it.
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// The binary in front of `upstream_url` with `toml` lines added, exporting
/// to `endpoint` with `env` added; ready.
async fn traced(upstream_url: &str, toml: &[&str], endpoint: &str, env: &[(&str, &str)]) -> BinaryProxy {
    traced_with(&binary_toml(upstream_url, toml), endpoint, env).await
}

/// The binary with exactly `toml`, exporting to `endpoint` with `env` added; ready.
async fn traced_with(toml: &str, endpoint: &str, env: &[(&str, &str)]) -> BinaryProxy {
    let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), FAST_BATCHES];
    all.extend_from_slice(env);
    let proxy = BinaryProxy::spawn(toml, &all).await;
    let client = Client::new();
    let ready = wait_until(READY, || async {
        let request = Request::get(proxy.admin_url("/readyz")).body(Full::default()).unwrap();
        client.try_send(request).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(ready, "not ready:\n{}", proxy.output());
    proxy
}

/// `GET path` through `proxy`, with extra request headers.
async fn get(proxy: &BinaryProxy, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Client::new().send(request.body(Full::default()).unwrap()).await
}

/// The server span of the request to `path`.
fn server_span<'a>(spans: &'a [SpanRecord], path: &str) -> Option<&'a SpanRecord> {
    spans.iter().find(|s| s.kind == KIND_SERVER && s.str("url.path") == Some(path))
}

/// The children of `parent`, in order of start.
fn children<'a>(spans: &'a [SpanRecord], parent: &SpanRecord) -> Vec<&'a SpanRecord> {
    let mut children: Vec<&SpanRecord> = spans.iter().filter(|s| s.parent_span_id == parent.span_id).collect();
    children.sort_by_key(|s| s.start);
    children
}

/// Waits until the server span of `path` and `n` children of it arrived.
async fn wait_for_tree(receiver: &Receiver, path: &str, n: usize) -> (SpanRecord, Vec<SpanRecord>) {
    let arrived = receiver
        .wait_for(READY, |spans| server_span(spans, path).is_some_and(|server| children(spans, server).len() >= n))
        .await;
    let spans = receiver.spans();
    assert!(arrived, "no span tree for {path} with {n} children; received:\n{spans:#?}");
    let server = server_span(&spans, path).unwrap().clone();
    let children = children(&spans, &server).into_iter().cloned().collect();
    (server, children)
}

/// What Truedat received as `name` on the data request to `path`.
fn received(fake: &FakeTruedat, path: &str, name: &str) -> Vec<String> {
    fake.data_requests()
        .iter()
        .filter(|r| r.uri.path() == path)
        .filter_map(|r| r.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned))
        .collect()
}

async fn scrape(proxy: &BinaryProxy) -> Scrape {
    Scrape::parse(&Client::new().get(&proxy.admin_url("/metrics")).await.text()).expect("Prometheus text")
}

/// A plain GET: one server span (the request) with one client span (the
/// try) under it, their attributes, the `traceparent` Truedat received, the
/// ids on the access line; the startup login is a span of its own.
#[tokio::test]
async fn a_plain_get_is_a_server_span_with_one_try_under_it() {
    let fake = fake(|_| {}).await;
    let receiver = Receiver::start().await;
    let proxy = traced(&fake.url(), &[], &receiver.endpoint(), &[]).await;
    assert_eq!(get(&proxy, "/api/plain?q=1", &[]).await.status, 200);

    let (server, tries) = wait_for_tree(&receiver, "/api/plain", 1).await;
    assert_eq!((server.name.as_str(), server.parent_span_id.as_str()), ("GET", ""), "{server:#?}");
    assert_eq!(server.str("http.request.method"), Some("GET"));
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert_eq!(server.int("truedat_proxy.attempts"), Some(1));
    assert_eq!(server.bool("truedat_proxy.replayed"), Some(false));
    assert!(!server.is_error());
    assert_eq!(server.resource.get("service.name"), Some(&otlp::Attr::Str("truedat-auth-proxy".into())));
    let [attempt] = tries.as_slice() else { panic!("one try expected: {tries:#?}") };
    assert_eq!((attempt.name.as_str(), attempt.kind), ("GET", KIND_CLIENT));
    assert_eq!(attempt.trace_id, server.trace_id);
    assert_eq!(attempt.str("server.address"), Some("127.0.0.1"));
    assert_eq!(attempt.str("network.protocol.version"), Some("1.1"));
    assert_eq!(attempt.int("http.response.status_code"), Some(200));
    assert_eq!(attempt.str("truedat_proxy.retry_reason"), None);
    assert!(server.start <= attempt.start && attempt.end <= server.end, "{server:#?}\n{attempt:#?}");

    let parent = format!("00-{}-{}-01", server.trace_id, attempt.span_id);
    assert_eq!(received(&fake, "/api/plain", "traceparent"), [parent]);
    assert!(received(&fake, "/api/plain", "tracestate").is_empty());
    let line = proxy.access_line("/api/plain").await;
    assert_eq!(
        (&line["trace_id"], &line["span_id"]),
        (&Value::from(server.trace_id.clone()), &Value::from(server.span_id.clone()))
    );

    let spans = receiver.spans();
    let login = spans.iter().find(|s| s.name == "login").expect("the startup login's span");
    assert_eq!((login.kind, login.parent_span_id.as_str()), (KIND_CLIENT, ""));
    assert_eq!(login.str("truedat_proxy.result"), Some("success"));
    assert_eq!(login.str("truedat_proxy.reason"), Some("startup"));
    assert_eq!(login.int("http.response.status_code"), Some(201));
    assert_eq!(login.str("url.path"), Some("/api/sessions"));
    let login_parent = fake.login_requests()[0].headers.get("traceparent").cloned();
    assert_eq!(login_parent.unwrap(), format!("00-{}-{}-01", login.trace_id, login.span_id).as_str());
}

/// A tool's `traceparent` is continued (same trace, its span the parent)
/// and its `tracestate` carried along; Truedat gets the try's span as parent.
#[tokio::test]
async fn a_callers_trace_is_continued_and_truedat_gets_the_span_of_the_try() {
    let fake = fake(|_| {}).await;
    let receiver = Receiver::start().await;
    let proxy = traced(&fake.url(), &[], &receiver.endpoint(), &[]).await;
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let headers = [("traceparent", traceparent.as_str()), ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")];
    assert_eq!(get(&proxy, "/api/continued", &headers).await.status, 200);

    let (server, tries) = wait_for_tree(&receiver, "/api/continued", 1).await;
    assert_eq!((server.trace_id.as_str(), server.parent_span_id.as_str()), (CALLER_TRACE, CALLER_SPAN));
    assert_eq!(tries[0].trace_id, CALLER_TRACE);
    assert_eq!(
        received(&fake, "/api/continued", "traceparent"),
        [format!("00-{CALLER_TRACE}-{}-01", tries[0].span_id)]
    );
    assert_eq!(received(&fake, "/api/continued", "tracestate"), ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"]);
    let line = proxy.access_line("/api/continued").await;
    assert_eq!(line["trace_id"], CALLER_TRACE);
}

/// Truedat restarting: every try is a client span under the request's
/// span, the refused ones failed (`connect`), each retry saying why and
/// how many came before; Truedat only sees the try that reached it. Then
/// an ingress 503: a failed try, and a retry for `status`.
#[tokio::test]
async fn a_get_retried_during_a_restart_has_a_span_per_try() {
    let mut fake = fake(|_| {}).await;
    let receiver = Receiver::start().await;
    let proxy = traced(&fake.url(), &["retry.backoff_max = \"200ms\""], &receiver.endpoint(), &[]).await;
    fake.stop_listening().await;
    let request = tokio::spawn(get_owned(proxy.url("/api/restart")));
    let retried = wait_until(READY, || async {
        scrape(&proxy).await.count("truedat_proxy_upstream_retries_total", &[("reason", "connect")]) >= 2.0
    })
    .await;
    assert!(retried, "no retries while Truedat was down:\n{}", proxy.output());
    fake.listen_again().await.expect("the port is free again");
    assert_eq!(request.await.unwrap().status, 200);

    let attempts = proxy.access_line("/api/restart").await["attempts"].as_i64().unwrap();
    assert!(attempts >= 3, "{attempts}");
    let (server, tries) = wait_for_tree(&receiver, "/api/restart", attempts as usize).await;
    assert_eq!(server.int("truedat_proxy.attempts"), Some(attempts));
    assert_eq!(tries.len() as i64, attempts, "{tries:#?}");
    for (i, attempt) in tries.iter().enumerate() {
        assert_eq!(attempt.kind, KIND_CLIENT);
        let last = i + 1 == tries.len();
        if last {
            assert_eq!(attempt.int("http.response.status_code"), Some(200), "{attempt:#?}");
        } else {
            assert!(attempt.is_error(), "{attempt:#?}");
            assert_eq!(attempt.str("error.type"), Some("connect"), "{attempt:#?}");
        }
        if i > 0 {
            assert_eq!(attempt.str("truedat_proxy.retry_reason"), Some("connect"), "{attempt:#?}");
            assert_eq!(attempt.int("http.request.resend_count"), Some(i as i64), "{attempt:#?}");
        }
    }
    let last = tries.last().unwrap();
    assert_eq!(received(&fake, "/api/restart", "traceparent"), [format!("00-{}-{}-01", server.trace_id, last.span_id)]);

    fake.fail_next(1, Outage::Status { status: 503, retry_after: None });
    assert_eq!(get(&proxy, "/api/ingress", &[]).await.status, 200);
    let (server, tries) = wait_for_tree(&receiver, "/api/ingress", 2).await;
    assert_eq!(server.int("truedat_proxy.attempts"), Some(2));
    assert_eq!(tries[0].int("http.response.status_code"), Some(503));
    assert!(tries[0].is_error());
    assert_eq!(tries[1].str("truedat_proxy.retry_reason"), Some("status"));
    assert_eq!(tries[1].int("http.response.status_code"), Some(200));
    let parents: Vec<String> = tries.iter().map(|t| format!("00-{}-{}-01", server.trace_id, t.span_id)).collect();
    assert_eq!(received(&fake, "/api/ingress", "traceparent"), parents, "each try carried its own span");
}

async fn get_owned(url: String) -> Reply {
    Client::new().get(&url).await
}

/// A revoked session: the request's span holds the try answered 401, the
/// session check that proved the token dead, the wait for the new token,
/// the login that request caused, and the replay.
#[tokio::test]
async fn a_revocation_shows_the_check_the_login_and_the_replay() {
    let fake = fake(|_| {}).await;
    let receiver = Receiver::start().await;
    let proxy = traced(&fake.url(), &[], &receiver.endpoint(), &[]).await;
    fake.revoke_all();
    assert_eq!(get(&proxy, "/api/revoked", &[]).await.status, 200);

    let (server, children) = wait_for_tree(&receiver, "/api/revoked", 5).await;
    assert_eq!(server.int("truedat_proxy.attempts"), Some(2));
    assert_eq!(server.bool("truedat_proxy.replayed"), Some(true));
    assert_eq!(server.int("http.response.status_code"), Some(200));
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["GET", "session check", "wait for token", "login", "GET"], "{children:#?}");
    let (first, check, wait, login, replay) = (&children[0], &children[1], &children[2], &children[3], &children[4]);
    assert_eq!(first.int("http.response.status_code"), Some(401));
    assert_eq!((check.kind, check.str("truedat_proxy.result")), (KIND_CLIENT, Some("dead")));
    assert_eq!(check.int("http.response.status_code"), Some(401));
    assert_eq!(wait.kind, KIND_INTERNAL);
    assert!(wait.start <= login.start && login.end <= wait.end, "{wait:#?}\n{login:#?}");
    assert_eq!(login.str("truedat_proxy.reason"), Some("unauthorized"));
    assert_eq!(login.str("truedat_proxy.result"), Some("success"));
    assert_eq!(replay.bool("truedat_proxy.replay"), Some(true));
    assert_eq!(replay.int("http.request.resend_count"), Some(1));
    assert_eq!(replay.int("http.response.status_code"), Some(200));
    assert!(!replay.is_error() && !server.is_error());
    let parents: Vec<String> =
        [first, replay].iter().map(|t| format!("00-{}-{}-01", server.trace_id, t.span_id)).collect();
    assert_eq!(received(&fake, "/api/revoked", "traceparent"), parents);
}

/// `OTEL_TRACES_SAMPLER`: with `parentbased_traceidratio` at 0, only a
/// request whose caller sampled it is traced; the others still pass their
/// decision on to Truedat. With `always_off`, nothing at all is exported.
#[tokio::test]
async fn sampling_follows_otel_traces_sampler() {
    let fake = fake(|_| {}).await;
    let receiver = Receiver::start().await;
    let sampler = [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0")];
    let mut proxy = traced(&fake.url(), &[], &receiver.endpoint(), &sampler).await;
    let sampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let declined = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    assert_eq!(get(&proxy, "/api/unsampled", &[]).await.status, 200);
    assert_eq!(get(&proxy, "/api/sampled", &[("traceparent", &sampled)]).await.status, 200);
    assert_eq!(get(&proxy, "/api/declined", &[("traceparent", &declined)]).await.status, 200);
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(READY).await.code(), Some(0), "{}", proxy.output());

    let spans = receiver.spans();
    let servers: Vec<&str> = spans.iter().filter(|s| s.kind == KIND_SERVER).filter_map(|s| s.str("url.path")).collect();
    assert_eq!(servers, ["/api/sampled"], "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == CALLER_TRACE), "no root is sampled at 0: {spans:#?}");
    let unsampled = received(&fake, "/api/unsampled", "traceparent");
    assert!(unsampled.len() == 1 && unsampled[0].ends_with("-00"), "{unsampled:?}");
    let declined_sent = received(&fake, "/api/declined", "traceparent");
    assert!(
        declined_sent.len() == 1 && declined_sent[0].starts_with(&format!("00-{CALLER_TRACE}-")),
        "{declined_sent:?}"
    );
    assert!(declined_sent[0].ends_with("-00"), "{declined_sent:?}");
    assert!(proxy.access_line("/api/unsampled").await.get("trace_id").is_none());
    assert_eq!(proxy.access_line("/api/sampled").await["trace_id"], CALLER_TRACE);

    let receiver = Receiver::start().await;
    let mut proxy = traced(&fake.url(), &[], &receiver.endpoint(), &[("OTEL_TRACES_SAMPLER", "always_off")]).await;
    assert_eq!(get(&proxy, "/api/off", &[("traceparent", &sampled)]).await.status, 200);
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(READY).await.code(), Some(0), "{}", proxy.output());
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
    assert!(received(&fake, "/api/off", "traceparent")[0].ends_with("-00"));
}

/// A whole traced life (logins, refreshes by cookie, a revocation with its
/// check, the tool's own credentials and query strings, logout at
/// shutdown): no password, token, token signature, cookie value or query
/// string is anywhere in what the collector received, and the collector's
/// own credentials, sent to it, are in no line the proxy printed.
#[tokio::test]
async fn no_secret_in_any_span() {
    let fake = fake(|c| {
        c.password = PASSWORD_A.to_owned();
        c.token_ttl = Duration::from_secs(3);
    })
    .await;
    let tap = Tap::start(fake.addr()).await;
    let receiver = Receiver::start().await;
    let collector_key = ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20collector-key-Qm7Tz2");
    let toml = format!(
        "listen.address = \"127.0.0.1:0\"\nadmin.address = \"127.0.0.1:0\"\nupstream.url = \"{}\"\n\
         credentials.user_name = \"{USER}\"\ncredentials.password = \"{PASSWORD_A}\"\n\
         token.renew_with = \"refresh\"\ntoken.refresh_before = \"2s\"\nlog.level = \"trace\"\n",
        tap.url()
    );
    let mut proxy = traced_with(&toml, &receiver.endpoint(), &[collector_key]).await;
    let (query, tools_bearer, tools_cookie) = ("q-Vh3kP9", "tools-own-bearer-Lx5", "tools-own-cookie-Wd8");
    let cookie = format!("_td_refresh={tools_cookie}; theme=dark");
    let own = [("authorization", &*format!("Bearer {tools_bearer}")), ("cookie", cookie.as_str())];
    assert_eq!(get(&proxy, &format!("/api/data?filter={query}"), &own).await.status, 200);
    let refreshed = fake.wait_for_logins(1, READY).await && wait_until(READY, || async { fake.refreshes() >= 2 }).await;
    assert!(refreshed, "no refreshes:\n{}", proxy.output());
    // The revocation must not race a refresh: a token refreshed as it is
    // revoked would be the one the request is replayed with, and that replay's
    // 401 goes to the client (SPEC §3.4). So the next refresh hands out a
    // 10-minute token, and the revocation waits until the proxy holds it.
    let expiry = || async {
        scrape(&proxy).await.value("truedat_proxy_token_expiry_timestamp_seconds", &[]).unwrap_or_default()
    };
    let short = expiry().await;
    fake.set_token_ttl(Duration::from_secs(600));
    let long_lived = wait_until(READY, || async { expiry().await > short + 60.0 }).await;
    assert!(long_lived, "the proxy never held the 10-minute token:\n{}", proxy.output());
    fake.revoke_all();
    assert_eq!(get(&proxy, &format!("/api/after?token={query}"), &[]).await.status, 200);
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(READY).await.code(), Some(0), "{}", proxy.output());

    let spans = receiver.spans();
    for name in ["login", "refresh", "logout", "session check", "GET"] {
        assert!(spans.iter().any(|s| s.name == name), "no {name} span: the scan would prove little\n{spans:#?}");
    }
    let exports = receiver.exports();
    assert!(exports.iter().all(|e| e.headers["authorization"] == "Bearer collector-key-Qm7Tz2"));
    let secrets = Secrets::gather(&fake, &tap);
    for (i, export) in exports.iter().enumerate() {
        let text = String::from_utf8_lossy(&export.body);
        secrets.assert_absent(&format!("export {i}"), &text);
        for value in [query, tools_bearer, tools_cookie, "theme=dark"] {
            assert!(!text.contains(value), "export {i} holds {value:?}");
        }
    }
    assert!(!proxy.output().contains("collector-key-Qm7Tz2"), "the collector's key was printed");
}

/// A collector that is down: requests are not slowed, the spans of failed
/// exports are counted, and shutdown is not held up.
#[tokio::test]
async fn a_collector_that_is_down_costs_the_requests_nothing() {
    let fake = fake(|_| {}).await;
    let down = otlp::closed_endpoint().await;
    let timeout = ("OTEL_EXPORTER_OTLP_TIMEOUT", "500");
    let mut proxy = traced(&fake.url(), &["shutdown.drain_timeout = \"2s\""], &down, &[timeout]).await;
    let scraped = scrape(&proxy).await;
    for reason in ["queue_full", "export_failed"] {
        assert_eq!(scraped.value(DROPPED, &[("reason", reason)]), Some(0.0), "{reason}:\n{}", scraped.text);
    }
    let slowest = twenty_requests(&proxy).await;
    assert!(slowest < Duration::from_secs(1), "a request took {slowest:?}");
    let counted =
        wait_until(READY, || async { scrape(&proxy).await.count(DROPPED, &[("reason", "export_failed")]) > 0.0 }).await;
    assert!(counted, "no dropped spans counted:\n{}", proxy.output());
    assert!(proxy.output().contains("cannot export spans to the OpenTelemetry collector"), "{}", proxy.output());
    stops_within_the_drain(&mut proxy, Duration::from_secs(2)).await;
}

/// A collector that accepts exports and never answers: requests are not
/// slowed, the queue fills and its drops are counted, and shutdown ends
/// within `shutdown.drain_timeout` though an export would wait a minute.
#[tokio::test]
async fn a_collector_that_hangs_costs_the_requests_nothing_and_shutdown_keeps_its_bound() {
    let fake = fake(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Hang);
    let env = [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "8"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
    ];
    let mut proxy = traced(&fake.url(), &["shutdown.drain_timeout = \"2s\""], &receiver.endpoint(), &env).await;
    let slowest = twenty_requests(&proxy).await;
    assert!(slowest < Duration::from_secs(1), "a request took {slowest:?}");
    let counted =
        wait_until(READY, || async { scrape(&proxy).await.count(DROPPED, &[("reason", "queue_full")]) > 0.0 }).await;
    assert!(counted, "no dropped spans counted:\n{}", proxy.output());
    assert!(!receiver.exports().is_empty(), "the collector never got an export");
    stops_within_the_drain(&mut proxy, Duration::from_secs(2)).await;
}

/// Twenty GETs one after the other; the slowest one's time.
async fn twenty_requests(proxy: &BinaryProxy) -> Duration {
    let client = Client::new();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        assert_eq!(client.get(&proxy.url(&format!("/api/load?i={i}"))).await.status, 200);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// SIGTERM ends the process with 0 within `drain` (plus the logout and a
/// margin), however the collector behaves.
async fn stops_within_the_drain(proxy: &mut BinaryProxy, drain: Duration) {
    let started = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
    assert!(took < drain + Duration::from_secs(2), "shutdown took {took:?}:\n{}", proxy.output());
}

/// An invalid `OTEL_*` value is a configuration error: exit 2, one line
/// naming the variable, and never the value of a header.
#[tokio::test]
async fn an_invalid_otel_value_exits_2_with_one_line_naming_it() {
    let fake = fake(|_| {}).await;
    let config = config_file(&binary_toml(&fake.url(), &[]));
    let path = config.path().to_str().unwrap();
    for (variable, value) in [
        ("OTEL_TRACES_SAMPLER", "xray"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "Bearer hdr-secret-Tn4"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
        ("OTEL_SDK_DISABLED", "maybe"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
    ] {
        let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), (variable, value)];
        if variable == "OTEL_TRACES_SAMPLER_ARG" {
            env.push(("OTEL_TRACES_SAMPLER", "traceidratio"));
        }
        for args in [vec!["--config", path], vec!["--config", path, "--check-config"]] {
            let (status, stdout, stderr) = run_binary(&args, &env).await;
            assert_eq!(status.code(), Some(2), "{variable}={value} {args:?}: {stdout}{stderr}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{variable}={value}: {stderr}");
            assert!(lines[0].starts_with(&format!("invalid configuration: {variable}: ")), "{stderr}");
            assert!(!stderr.contains("hdr-secret-Tn4") && !stdout.contains("hdr-secret-Tn4"), "{stderr}");
        }
    }
}

/// `--check-config` shows the effective tracing settings, header values
/// redacted, as comments that keep the output a valid configuration; and
/// why tracing is off when it is.
#[tokio::test]
async fn check_config_shows_the_tracing_settings() {
    let config = config_file(&binary_toml("https://truedat.example.com", &[]));
    let path = config.path().to_str().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=hdr-secret-Tn4"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ("OTEL_SERVICE_NAME", "reports-sidecar"),
    ];
    let (status, stdout, stderr) = run_binary(&["--config", path, "--check-config"], &env).await;
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    for line in [
        "# enabled = true",
        "# endpoint = \"http://otel-collector:4318/v1/traces\"",
        "# protocol = \"http/protobuf\"",
        "# headers = { \"x-api-key\" = \"<redacted>\" }",
        "# sampler = \"parentbased_traceidratio\"",
        "# sampler_arg = 0.1",
        "# service_name = \"reports-sidecar\"",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} missing:\n{stdout}");
    }
    assert!(!stdout.contains("hdr-secret-Tn4"), "{stdout}");
    let again = config_file(&stdout);
    let (status, _, stderr) = run_binary(&["--config", again.path().to_str().unwrap(), "--check-config"], &[]).await;
    assert_eq!(status.code(), Some(0), "the output is not a valid configuration: {stderr}");

    for (env, why) in [
        (&[][..], Some("neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set")),
        (&env[..1], None),
        (&[env[0], ("OTEL_SDK_DISABLED", "true")][..], Some("OTEL_SDK_DISABLED is true")),
        (&[env[0], ("OTEL_TRACES_EXPORTER", "none")][..], Some("OTEL_TRACES_EXPORTER is none")),
    ] {
        let (status, stdout, _) = run_binary(&["--config", path, "--check-config"], env).await;
        assert_eq!(status.code(), Some(0));
        let enabled = stdout.lines().find(|l| l.starts_with("# enabled = ")).unwrap_or_default();
        match why {
            None => assert_eq!(enabled, "# enabled = true", "{stdout}"),
            Some(why) => assert_eq!(enabled, format!("# enabled = false  # {why}"), "{stdout}"),
        }
    }
}

/// Tracing off (no endpoint): `traceparent` and `tracestate` reach Truedat
/// exactly as the tool sent them, the access line has no trace ids, and
/// there is no span metric.
#[tokio::test]
async fn with_tracing_off_trace_headers_pass_through_untouched() {
    let fake = fake(|_| {}).await;
    let proxy = BinaryProxy::spawn(&binary_toml(&fake.url(), &[]), &[("OTEL_TRACES_SAMPLER", "always_on")]).await;
    let client = Client::new();
    let ready = wait_until(READY, || async { client.get(&proxy.admin_url("/readyz")).await.status == 200 }).await;
    assert!(ready, "{}", proxy.output());
    // Not even valid: tracing on would start a new trace and replace both.
    let headers = [("traceparent", "00-not-a-trace-01"), ("tracestate", "vendor=opaque")];
    assert_eq!(get(&proxy, "/api/off", &headers).await.status, 200);
    assert_eq!(received(&fake, "/api/off", "traceparent"), ["00-not-a-trace-01"]);
    assert_eq!(received(&fake, "/api/off", "tracestate"), ["vendor=opaque"]);
    let line = proxy.access_line("/api/off").await;
    assert!(line.get("trace_id").is_none() && line.get("span_id").is_none(), "{line}");
    assert!(scrape(&proxy).await.samples(DROPPED).next().is_none());
}
