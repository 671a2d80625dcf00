//! Faults a production network produces, provoked on purpose: a Truedat that
//! accepts and never answers, one that stalls in the middle of a body, resets
//! connections or closes keep-alive connections under the proxy's pool; slow
//! clients (a slow-loris head, a client that stops reading a large download);
//! and a Truedat unreachable at start for several backoff periods.
//!
//! The rule checked everywhere: a fault costs the client at most a clean error
//! (a status, or a closed connection) within the configured timeouts, never a
//! hang, and never unbounded memory in the proxy. Every fault between the
//! proxy and Truedat is provoked on both ways to Truedat ([`Hop`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Method, Request};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use truedat_auth_proxy::config::Config;
use truedat_auth_proxy::units::Dur;

use crate::support::client::{Client, Reply};
use crate::support::fake_truedat::{DataFault, FakeConfig, FakeTruedat, STALL_BODY_LEN, STALL_SENT_LEN};
use crate::support::h1::{BodyEnd, H1Conn, read_body};
use crate::support::hops::Hop;
use crate::support::process::{mib, open_fds, rss_bytes};
use crate::support::prometheus::Scrape;
use crate::support::proxy::{BinaryProxy, TestProxy, binary_toml, fake};
use crate::support::wait::wait_until;

const READY: Duration = Duration::from_secs(10);
/// `upstream.request_timeout` in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// A fake over `hop` and a ready proxy in front of it with the timeouts
/// above, after `adjust`.
async fn proxy_with(hop: Hop, adjust: impl FnOnce(&mut Config)) -> (FakeTruedat, TestProxy) {
    let fake = hop.fake(FakeConfig::default()).await;
    let proxy = TestProxy::start(&fake, |c| {
        hop.configure(c);
        c.upstream.request_timeout = Dur(REQUEST_TIMEOUT);
        c.upstream.body_idle_timeout = Dur(REQUEST_TIMEOUT);
        adjust(c);
    })
    .await;
    assert!(proxy.wait_ready(READY).await, "{hop}: the proxy never became ready");
    (fake, proxy)
}

async fn ready_proxy(hop: Hop) -> (FakeTruedat, TestProxy) {
    proxy_with(hop, |_| {}).await
}

fn request(method: Method, url: &str, id: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("x-request-id", id)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a valid request")
}

fn detail(reply: &Reply) -> String {
    reply.json()["errors"]["detail"].as_str().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------
// Truedat misbehaving

#[tokio::test]
async fn truedat_accepting_but_never_answering_gets_504_after_the_request_timeout() {
    for hop in Hop::BOTH {
        let (fake, proxy) = ready_proxy(hop).await;
        fake.set_data_fault(DataFault::AcceptButNeverAnswer);

        let started = Instant::now();
        let calls = (0..8).map(|i| {
            let method = if i % 2 == 0 { Method::GET } else { Method::POST };
            let url = proxy.url(&format!("/api/never/{i}"));
            proxy.client.try_send(request(method, &url, &format!("never-{i}"), "{}"))
        });
        let replies = join_all(calls).await;
        let elapsed = started.elapsed();
        for reply in replies {
            let reply = reply.unwrap_or_else(|e| panic!("{hop}: the proxy answers, it does not hang: {e}"));
            assert_eq!(reply.status, 504, "{hop}: {}", reply.text());
            assert_eq!(detail(&reply), "Truedat did not answer within upstream.request_timeout", "{hop}");
        }
        assert!(elapsed >= REQUEST_TIMEOUT, "{hop}: 504 before upstream.request_timeout: {elapsed:?}");
        assert!(elapsed < REQUEST_TIMEOUT * 8, "{hop}: 504s took {elapsed:?} for a {REQUEST_TIMEOUT:?} timeout");
        assert_eq!(hop.data_requests(&fake).len(), 8, "{hop}: each request reached Truedat once");

        fake.set_data_fault(DataFault::None);
        assert_eq!(proxy.get("/api/data").await.status, 200, "{hop}: the proxy recovers once Truedat answers");
        proxy.stop().await;
    }
}

/// What the proxy does: it forwards the status line, headers and the bytes it
/// got, then relays nothing more. `upstream.request_timeout` only covers the
/// response head; `upstream.body_idle_timeout` covers silence inside the
/// body. The client must see a clean error (the connection closed before the
/// announced length) within the configured timeouts; we give it 8 s with a
/// 1 s `upstream.body_idle_timeout`.
#[tokio::test]
async fn a_body_that_stalls_midway_is_cut_for_the_client_not_left_hanging() {
    for hop in Hop::BOTH {
        let (fake, proxy) = ready_proxy(hop).await;
        fake.set_data_fault(DataFault::StallMidBody);

        let mut conn = H1Conn::connect(proxy.proxy).await.expect("connecting to the proxy");
        let response =
            tokio::time::timeout(Duration::from_secs(10), conn.send(request(Method::GET, "/api/stall", "stall-1", "")))
                .await
                .unwrap_or_else(|_| panic!("{hop}: the response head arrives"))
                .unwrap_or_else(|e| panic!("{hop}: the response head arrives: {e}"));
        assert_eq!(response.status(), 200, "{hop}");
        assert_eq!(response.headers()["content-length"], STALL_BODY_LEN.to_string().as_str(), "{hop}");
        let patience = Duration::from_secs(8);
        let end = read_body(response.into_body(), patience).await;
        let closed = conn.is_closed();
        fake.set_data_fault(DataFault::None);
        match end {
            BodyEnd::Broken(bytes, error) => {
                assert!(bytes.len() as u64 <= STALL_SENT_LEN, "{hop}: {} bytes before the stall", bytes.len());
                let closed = closed || wait_until(Duration::from_secs(2), || async { conn.is_closed() }).await;
                assert!(closed, "{hop}: {error}");
            }
            BodyEnd::Complete(bytes) => panic!("{hop}: a cut body must not look complete ({} bytes)", bytes.len()),
            BodyEnd::Stalled(bytes) => panic!(
                "{hop}: the proxy relayed {} of {STALL_BODY_LEN} bytes, then nothing for {patience:?} without \
                 closing the connection: a Truedat body that stalls hangs the client (no timeout covers upstream \
                 response bodies)",
                bytes.len()
            ),
        }
        assert_eq!(proxy.get("/api/data").await.status, 200, "{hop}: the next request is served");
        proxy.stop().await;
    }
}

/// Every connection reset once a request was read: the GET, retried until
/// `retry.window` ends (1 s here, so that both paths take 2 s, not 20), and
/// the POST, never retried, are 502s; the next request is served.
#[tokio::test]
async fn a_connection_reset_by_truedat_is_a_502_for_that_request_only() {
    for hop in Hop::BOTH {
        let (fake, proxy) = proxy_with(hop, |c| c.retry.window = Dur::secs(1)).await;
        fake.set_data_fault(DataFault::ResetShare(1.0));

        let reply = proxy.client.send(request(Method::GET, &proxy.url("/api/reset"), "reset-get", "")).await;
        assert_eq!(reply.status, 502, "{hop}: {}", reply.text());
        assert_eq!(reply.header("x-request-id"), Some("reset-get"), "{hop}");
        let post = request(Method::POST, &proxy.url("/api/reset"), "reset-post", "{\"a\":1}");
        let reply = proxy.client.send(post).await;
        assert_eq!(reply.status, 502, "{hop}: {}", reply.text());
        assert!(detail(&reply).contains("connection broke"), "{hop}: {}", reply.text());

        let resets = fake.reset_request_ids();
        let both = resets.contains(&"reset-get".to_owned()) && resets.contains(&"reset-post".to_owned());
        assert!(both, "{hop}: {resets:?}");
        let posts = hop
            .data_requests(&fake)
            .iter()
            .filter(|r| r.headers.get("x-request-id").is_some_and(|id| id == "reset-post"))
            .count();
        assert_eq!(posts, 1, "{hop}: a POST whose connection was reset must not be sent again");

        fake.set_data_fault(DataFault::ResetShare(0.0));
        assert_eq!(proxy.get("/api/data").await.status, 200, "{hop}");
        proxy.stop().await;
    }
}

/// Statuses of `count` sequential GETs through `proxy`, each after a random
/// gap drawn from `gap_us` (microseconds); `None` for a request that got no
/// answer within 15 s.
async fn sequential_gets(proxy: &TestProxy, count: usize, gap_us: std::ops::Range<u64>) -> Vec<Option<u16>> {
    let mut statuses = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep(Duration::from_micros(rand::random_range(gap_us.clone()))).await;
        let call = proxy.client.try_send(request(Method::GET, &proxy.url(&format!("/api/pool/{i}")), "pool", ""));
        let status = match tokio::time::timeout(Duration::from_secs(15), call).await {
            Ok(Ok(reply)) => Some(reply.status.as_u16()),
            Ok(Err(error)) => panic!("request {i}: the client connection to the proxy failed: {error}"),
            Err(_) => None,
        };
        statuses.push(status);
    }
    statuses
}

fn tally(statuses: &[Option<u16>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for status in statuses {
        let key = status.map_or_else(|| "no answer".to_owned(), |s| s.to_string());
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// The fake closes each keep-alive connection 3 ms after its response (no
/// `Connection: close`); GETs follow each other after 1.5–4.5 ms, so some
/// meet a pooled connection whose close is on its way (about 1 in 100 here).
/// Over HTTP/2 the shared connection is closed the same way, without a
/// GOAWAY, as a load balancer that drops idle connections does.
#[tokio::test]
async fn keep_alive_connections_closed_under_the_pool_never_hang_a_request() {
    for hop in Hop::BOTH {
        let (fake, proxy) = ready_proxy(hop).await;
        fake.set_idle_close(Some(Duration::from_millis(3)));
        let statuses = sequential_gets(&proxy, 300, 1500..4500).await;
        let counts = tally(&statuses);
        eprintln!("{hop}: connection closed 3 ms after each response, 300 sequential GETs: {counts:?}");
        let only = statuses.iter().all(|s| matches!(s, Some(200 | 502)));
        assert!(only, "{hop}: only 200 or 502, never a hang: {counts:?}");
        let accepted = fake.connections_accepted();
        assert!(accepted > 30, "{hop}: the fault closed connections ({accepted} accepted for 300 GETs)");
        fake.set_idle_close(None);
        proxy.stop().await;
    }
}

/// The better behaviour the issue asks for: a GET sent on a pooled connection
/// that Truedat closed without answering (the race above, provoked every
/// time) is sent again on a fresh connection (RFC 9110 §9.2.2: idempotent
/// requests may be retried automatically). Over HTTP/2, the shared
/// connection is closed, unanswered, when a second stream arrives on it.
#[tokio::test]
async fn a_get_sent_on_a_pooled_connection_truedat_closed_is_retried_on_a_fresh_one() {
    for hop in Hop::BOTH {
        let (fake, proxy) = ready_proxy(hop).await;
        fake.set_close_reused(true);
        let statuses = sequential_gets(&proxy, 30, 5000..10_000).await;
        let counts = tally(&statuses);
        let only = statuses.iter().all(|s| matches!(s, Some(200 | 502)));
        assert!(only, "{hop}: only 200 or 502, never a hang: {counts:?}");
        assert!(
            statuses.iter().all(|s| *s == Some(200)),
            "{hop}: GETs sent on a pooled connection that Truedat closed were answered 502 instead of being \
             retried on a fresh connection: {counts:?}"
        );
        let accepted = fake.connections_accepted();
        assert!(accepted >= 30, "{hop}: the fault closed connections ({accepted} accepted for 30 GETs)");
        fake.set_close_reused(false);
        proxy.stop().await;
    }
}

/// The fault switches really end connections, so that the tests above
/// cannot pass because a fault did nothing. The fake alone, over HTTP/1.1;
/// over HTTP/2 the tests above count the connections the faults ended.
#[tokio::test]
async fn the_fakes_connection_faults_really_end_connections() {
    let fake = fake(|_| {}).await;
    let ping = || request(Method::GET, "/api/ping", "ping", "");

    fake.set_idle_close(Some(Duration::from_millis(1)));
    let mut conn = H1Conn::connect(fake.addr()).await.expect("connecting to the fake");
    let response = conn.send(ping()).await.expect("a first request is answered");
    assert!(matches!(read_body(response.into_body(), READY).await, BodyEnd::Complete(_)));
    assert!(wait_until(READY, || async { conn.is_closed() }).await, "idle close left the connection open");
    fake.set_idle_close(None);

    fake.set_close_reused(true);
    let mut conn = H1Conn::connect(fake.addr()).await.expect("connecting to the fake");
    let response = conn.send(ping()).await.expect("a first request is answered");
    assert!(matches!(read_body(response.into_body(), READY).await, BodyEnd::Complete(_)));
    assert!(conn.send(ping()).await.is_err(), "a second request on the connection must go unanswered");
    fake.set_close_reused(false);

    fake.set_data_fault(DataFault::ResetShare(1.0));
    let mut conn = H1Conn::connect(fake.addr()).await.expect("connecting to the fake");
    let error = conn.send(request(Method::GET, "/api/data", "r-1", "")).await.expect_err("a reset, not an answer");
    assert!(format!("{error:?}").contains("ConnectionReset"), "a TCP reset expected: {error:?}");
    assert_eq!(fake.reset_request_ids(), ["r-1"]);
}

// ---------------------------------------------------------------------------
// Slow clients

/// The proxy cuts a client's head only after 30 s (`HEADER_READ_TIMEOUT`
/// in src/app.rs, not configurable), too long for a test. What is checked
/// here: a trickled head does not hold up other clients, and a head that
/// never ends costs at most the read buffer: it is answered 431 and closed.
/// One path: all of it happens between the client and the proxy.
#[tokio::test]
async fn a_slow_loris_head_does_not_hold_up_others_and_an_endless_head_is_cut() {
    let (_fake, proxy) = ready_proxy(Hop::Http1).await;

    let addr = proxy.proxy;
    let loris = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connecting to the proxy");
        let head = format!("GET /api/loris HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n", "a".repeat(80));
        for byte in head.as_bytes() {
            stream.write_all(&[*byte]).await.expect("the proxy keeps reading a slow head");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut answer = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await;
        String::from_utf8_lossy(&answer[..n.map_or(0, |n| n.unwrap_or(0))]).into_owned()
    });
    let started = Instant::now();
    for i in 0..20 {
        let reply = proxy.get(&format!("/api/while-loris/{i}")).await;
        assert_eq!(reply.status, 200);
    }
    assert!(!loris.is_finished(), "the loris head was still trickling while the others were served");
    assert!(started.elapsed() < Duration::from_secs(5), "other clients were slowed down: {:?}", started.elapsed());
    let answer = loris.await.expect("the loris task does not panic");
    assert!(answer.starts_with("HTTP/1.1 200"), "a head trickled over ~2.5 s is still served: {answer:?}");

    // A head that never ends: at most hyper's read buffer (2 × 64 KiB) is held.
    let mut stream = TcpStream::connect(addr).await.expect("connecting to the proxy");
    stream.write_all(b"GET /api/endless HTTP/1.1\r\nhost: x\r\n").await.expect("writing");
    let line = format!("x-pad: {}\r\n", "b".repeat(1000));
    let mut sent = 0usize;
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent < 4 << 20 && Instant::now() < deadline {
        if stream.write_all(line.as_bytes()).await.is_err() {
            break; // the proxy closed on us
        }
        sent += line.len();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "after {sent} bytes of an endless head: {answer:?}");
    assert!(sent < 1 << 20, "the proxy kept reading an endless head: {sent} bytes");
    proxy.stop().await;
}

/// A TOML configuration for the real binary in front of `url`.
async fn wait_binary_ready(client: &Client, binary: &BinaryProxy) {
    let ready = wait_until(Duration::from_secs(15), || async {
        let request = Request::get(binary.admin_url("/readyz")).body(Full::default()).expect("a valid request");
        client.try_send(request).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(ready, "/readyz never answered 200; output:\n{}", binary.output());
}

/// Backpressure from a client that stops reading reaches Truedat: the proxy
/// holds a bounded amount in memory, and after `listen.send_timeout` (2 s
/// here) without progress it gives up on the client and closes both ends
/// (over HTTP/2, the client's stream; the shared connection stays). Both
/// paths side by side, each with its own binary: TCP backpressure on the
/// link, flow-control windows on the pool.
#[tokio::test]
async fn a_client_that_stops_reading_a_large_download_costs_bounded_memory() {
    join_all(Hop::BOTH.map(a_stalled_download)).await;
}

async fn a_stalled_download(hop: Hop) {
    const GIB: u64 = 1 << 30;
    const ALLOWED_GROWTH: u64 = 32 << 20;
    let fake = hop.fake(FakeConfig::default()).await;
    let extra = ["log.level = \"warn,truedat_auth_proxy::app=info\"", "listen.send_timeout = \"2s\""];
    let mut binary = BinaryProxy::spawn(&hop.binary_toml(&fake, &extra), &[]).await;
    let client = Client::new();
    wait_binary_ready(&client, &binary).await;
    let pid = binary.pid();
    // Warm up the paths a download takes, so their buffers count as the baseline.
    for _ in 0..3 {
        let reply = client.get(&binary.url("/api/download?bytes=4194304")).await;
        assert_eq!((reply.status.as_u16(), reply.body.len()), (200, 4 << 20), "{hop}");
    }
    let (rss_before, fds_before) = (rss_bytes(pid), open_fds(pid));

    let mut stream = TcpStream::connect(binary.proxy).await.expect("connecting to the proxy");
    let head = format!("GET /api/download?bytes={GIB} HTTP/1.1\r\nhost: x\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("sending the request");
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    while received < 1 << 20 {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{hop}: the download starts"))
            .unwrap_or_else(|e| panic!("{hop}: reading the download: {e}"));
        assert!(n > 0, "{hop}: the proxy closed the download early");
        received += n as u64;
    }

    // The client stops reading for 5 s.
    let mut rss_peak = rss_before;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_peak = rss_peak.max(rss_bytes(pid));
    }
    // Then reads again for up to 3 s: bytes mean the connection was kept,
    // an end of stream means the proxy gave up on the stalled client.
    let mut resumed = 0u64;
    let mut cut = false;
    let reading = Instant::now();
    while reading.elapsed() < Duration::from_secs(3) && resumed < 64 << 20 {
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => resumed += n as u64,
            Err(_) => break,
        }
    }
    eprintln!(
        "{hop}: stalled download: RSS {:.1} MiB before, peak {:.1} MiB during a 5 s stall; after the stall the \
         proxy {}",
        mib(rss_before),
        mib(rss_peak),
        if cut { "had closed the connection".to_owned() } else { format!("resumed sending ({resumed} bytes read)") }
    );
    assert!(cut, "{hop}: the proxy still held a client that had read nothing for 5 s ({resumed} bytes read after)");
    assert!(
        rss_peak <= rss_before + ALLOWED_GROWTH,
        "{hop}: RSS grew from {:.1} to {:.1} MiB while a client stalled",
        mib(rss_before),
        mib(rss_peak)
    );

    // Hanging up releases both connections.
    drop(stream);
    let released = wait_until(Duration::from_secs(5), || async { open_fds(pid) <= fds_before }).await;
    assert!(released, "{hop}: {} descriptors open after the client left, {fds_before} before", open_fds(pid));
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(Duration::from_secs(15)).await.code(), Some(0), "{hop}: {}", binary.output());
}

// ---------------------------------------------------------------------------
// Truedat away at start

/// One path: the login backoff and readiness are above either path.
#[tokio::test]
async fn truedat_unreachable_for_several_backoff_periods_then_up_makes_the_proxy_ready() {
    let down = fake(|_| {}).await;
    let addr = down.addr();
    let port = down.shutdown_keeping_port().await;
    let toml = binary_toml(
        &format!("http://{addr}"),
        &["token.retry_initial = \"100ms\"", "token.retry_max = \"400ms\"", "token.first_token_wait = \"300ms\""],
    );
    let mut binary = BinaryProxy::spawn(&toml, &[]).await;
    let client = Client::new();

    // 100 ms doubling to 400 ms, each delay drawn from its upper half: 3 s
    // are about eight backoff periods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let readyz = client.get(&binary.admin_url("/readyz")).await;
    assert_eq!(readyz.status, 503);
    assert_eq!(readyz.json()["errors"]["detail"], "Truedat unreachable");
    let reply = client.get(&binary.url("/api/data")).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("retry-after"), Some("5"));
    let metrics = Scrape::parse(&client.get(&binary.admin_url("/metrics")).await.text()).expect("valid metrics");
    let failed = metrics.count("truedat_proxy_logins_total", &[("result", "error")]);
    assert!((4.0..=20.0).contains(&failed), "{failed} failed logins in 3 s: not the configured backoff");
    let errors = binary
        .output()
        .lines()
        .filter(|line| line.contains("\"ERROR\"") && line.contains("cannot obtain a Truedat token"))
        .count();
    assert_eq!(errors, 1, "one error line per change of state, not per retry:\n{}", binary.output());

    let fake = port.reopen(Default::default()).await.expect("the port is free again");
    wait_binary_ready(&client, &binary).await;
    assert_eq!(client.get(&binary.url("/api/data")).await.status, 200);
    assert_eq!(fake.logins(), 1);
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(Duration::from_secs(15)).await.code(), Some(0), "{}", binary.output());
}
