//! What a hostile review found (issue 13), each as a tool or an operator
//! would notice it: 401s that are not about the token, TRACE, abandoned
//! requests, aborted uploads, chunked GET bodies, browsers, `/quitquitquit`
//! on a dual-stack admin port, egress-proxy credentials, logout of every
//! token at shutdown, at most one token a second, and configuration bounds.
//! Whatever reaches Truedat (401 checks, chunked bodies, abandoned requests)
//! is checked on both ways to Truedat ([`Hop`]); refusals before forwarding,
//! the token's life and the configuration are the same on either.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use crate::support::client::Client;
use crate::support::fake_truedat::FakeConfig;
use crate::support::hops::Hop;
use crate::support::prometheus::Scrape;
use crate::support::proxy::{BinaryProxy, TestProxy, binary_toml, config_file, fake, run_binary};
use crate::support::raw::RawConn;
use crate::support::wait::wait_until;

const PATIENCE: Duration = Duration::from_secs(10);

/// Sends `bytes` on a fresh connection and reads one response.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> crate::support::raw::RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.send(bytes);
    conn.response().await
}

// ---------------------------------------------------------------------------
// SPEC §3.4: a 401 is checked before it costs a login

/// An endpoint that answers 401 for its own reasons, asked three times more
/// than a second apart (past the old "fresh token" pause): the tool gets
/// that 401 as it is each time; the proxy checks its session once per 401
/// (no answer is trusted for longer than a second) and never logs in,
/// replays or leaves a session behind. Both paths side by side: the test
/// is mostly waiting.
#[tokio::test]
async fn a_401_that_is_not_about_the_token_passes_through_without_a_login() {
    join_all(Hop::BOTH.map(a_401_not_about_the_token)).await;
}

async fn a_401_not_about_the_token(hop: Hop) {
    let (fake, proxy) = hop.proxy(|_| {}).await;
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let reply = proxy.get("/api/not_yours").await;
        assert_eq!(reply.status, 401, "{hop}: {}", reply.text());
        assert_eq!(reply.json()["errors"]["detail"], "Not yours", "{hop}: Truedat's own 401 body");
    }
    assert_eq!(fake.session_checks(), 3, "{hop}");
    assert_eq!(fake.login_attempts(), 1, "{hop}: a 401 about something else must not cost a login");
    assert_eq!(hop.data_requests(&fake).len(), 3, "{hop}: nothing was replayed");
    assert_eq!(fake.live_sessions(), 1, "{hop}: no extra session left in Truedat");
    assert_eq!(proxy.get("/api/data").await.status, 200, "{hop}");
    proxy.stop().await;
}

/// Thirty such 401s at once share one session check, and a second burst
/// within the second is answered from it.
#[tokio::test]
async fn concurrent_401s_share_one_session_check() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;
        for _ in 0..2 {
            let urls: Vec<String> = (0..30).map(|i| proxy.url(&format!("/api/not_yours?i={i}"))).collect();
            let replies = join_all(urls.iter().map(|url| proxy.client.get(url))).await;
            let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
            assert!(statuses.iter().all(|s| *s == 401), "{hop}: {statuses:?}");
        }
        assert_eq!(fake.session_checks(), 1, "{hop}: one check per generation at a time, trusted for a second");
        assert_eq!(fake.login_attempts(), 1, "{hop}");
        assert_eq!(hop.data_requests(&fake).len(), 60, "{hop}: nothing was replayed");
        proxy.stop().await;
    }
}

/// A revoked token: the check says dead, one login, one replay; the replay's
/// own 401 (the endpoint refuses everyone) goes to the client and causes
/// nothing more.
#[tokio::test]
async fn a_401_to_the_replay_ends_it() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;
        fake.revoke_all();
        let reply = proxy.get("/api/not_yours").await;
        assert_eq!(reply.status, 401, "{hop}");
        assert_eq!(reply.json()["errors"]["detail"], "Not yours", "{hop}: the replay's answer");
        assert_eq!(fake.logins(), 2, "{hop}: one login for the dead token");
        assert_eq!(hop.data_requests(&fake).len(), 2, "{hop}: the first try and one replay");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fake.login_attempts(), 2, "{hop}: the replay's 401 caused nothing more");
        assert_eq!(fake.session_checks(), 1, "{hop}");
        proxy.stop().await;
    }
}

// ---------------------------------------------------------------------------
// SPEC §4–§5: methods, framing, browsers

/// TRACE and TRACK would have Truedat echo the request, bearer included.
/// One path: refused before anything is forwarded.
#[tokio::test]
async fn trace_and_track_are_a_405_and_never_forwarded() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    for method in ["TRACE", "TRACK"] {
        let response = raw(proxy.proxy, format!("{method} /api/data HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
        assert_eq!(response.status(), Some(405), "{method}: {}", response.text());
        assert!(response.json().is_some_and(|j| j["errors"]["detail"].is_string()), "{}", response.text());
    }
    assert!(fake.data_requests().is_empty());
    proxy.stop().await;
}

/// A GET and a HEAD whose body comes chunked keep it; a transfer coding
/// other than chunked is a 501 and not forwarded. (`Connection: close` ends
/// the answer to the HEAD, whose `Content-Length` announces a body that
/// never comes, without waiting out the raw client's patience.)
#[tokio::test]
async fn chunked_bodies_on_get_and_head_are_forwarded_and_other_codings_refused() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;
        for method in ["GET", "HEAD"] {
            let head = format!(
                "{method} /api/search HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let chunks = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
            let response = raw(proxy.proxy, format!("{head}{chunks}").as_bytes()).await;
            assert_eq!(response.status(), Some(200), "{hop}, {method}: {}", response.text());
            let seen = hop.data_requests(&fake).pop().unwrap_or_else(|| panic!("{hop}, {method}: forwarded"));
            assert_eq!(seen.method.as_str(), method, "{hop}");
            assert_eq!(seen.body, "hello world".as_bytes(), "{hop}, {method}: the body was lost");
        }
        let forwarded = fake.data_requests().len();
        for coding in ["gzip, chunked", "deflate,chunked"] {
            let head = format!("POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n");
            let response = raw(proxy.proxy, head.as_bytes()).await;
            assert_eq!(response.status(), Some(501), "{hop}, {coding}: {}", response.text());
            assert!(response.json().is_some_and(|j| j["errors"]["detail"].is_string()), "{hop}");
        }
        assert_eq!(fake.data_requests().len(), forwarded, "{hop}: a refused coding reached Truedat");
        proxy.stop().await;
    }
}

/// The headers browsers really send: a cross-site form POST (Chrome), a
/// fetch() from another origin, and a DNS-rebinding page that is
/// same-origin to the proxy (Origin names 127.0.0.1:8080). All 403 and
/// never forwarded; a tool's request passes; `allow_browsers` lets them in.
/// (`clients.rs` has the full header sets of Chrome, Firefox, Safari and Node.)
/// One path: refused before anything is forwarded.
#[tokio::test]
async fn browsers_are_refused_unless_allowed() {
    let requests = [
        "POST /api/data_structures HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nOrigin: https://evil.example\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\n\
         Sec-Fetch-Dest: document\r\nContent-Length: 3\r\n\r\na=1",
        "GET /api/data_structures HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nOrigin: https://evil.example\r\n\
         Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\n\r\n",
        "GET /api/data_structures HTTP/1.1\r\nHost: rebind.evil.example:8080\r\nSec-Fetch-Site: same-origin\r\n\
         Sec-Fetch-Mode: cors\r\n\r\n",
        "GET /api/data_structures HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nOrigin: null\r\n\r\n",
        "GET /api/img HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n\
         Sec-Fetch-Dest: image\r\n\r\n",
    ];
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    for request in requests {
        let response = raw(proxy.proxy, request.as_bytes()).await;
        assert_eq!(response.status(), Some(403), "{request}\n{}", response.text());
        assert!(response.text().contains("allow_browsers"), "{}", response.text());
    }
    assert!(fake.data_requests().is_empty(), "a browser's request reached Truedat");
    assert_eq!(proxy.get("/api/data_structures").await.status, 200, "a tool's request passes");
    proxy.stop().await;

    let proxy = TestProxy::ready(&fake, |c| c.proxy.allow_browsers = true).await;
    for request in requests {
        assert_eq!(raw(proxy.proxy, request.as_bytes()).await.status(), Some(200), "{request}");
    }
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// SPEC §8: abandoned requests are 499, in the log and the metrics

async fn wait_ready(client: &Client, proxy: &BinaryProxy) {
    let ready = wait_until(PATIENCE, || async {
        let request = Request::get(proxy.admin_url("/readyz")).body(Full::default()).expect("a valid request");
        client.try_send(request).await.is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    assert!(ready, "/readyz never answered 200; output:\n{}", proxy.output());
}

async fn scrape(client: &Client, proxy: &BinaryProxy) -> Scrape {
    Scrape::parse(&client.get(&proxy.admin_url("/metrics")).await.text()).expect("the Prometheus text format")
}

/// A client that gives up while Truedat is slow, and one that closes in
/// the middle of a 100,000-byte upload: each has its access line with
/// status 499 and its `truedat_proxy_requests_total{status="499"}` count;
/// neither is counted or logged as a Truedat failure.
#[tokio::test]
async fn abandoned_requests_are_logged_and_counted_as_499_not_as_truedat_failures() {
    for hop in Hop::BOTH {
        let fake = hop.fake(FakeConfig::default()).await;
        let proxy = BinaryProxy::spawn(&hop.binary_toml(&fake, &[]), &[]).await;
        let client = Client::new();
        wait_ready(&client, &proxy).await;

        let mut waiting = RawConn::connect(proxy.proxy).await;
        waiting.send(b"GET /api/slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(wait_until(PATIENCE, || async { !hop.data_requests(&fake).is_empty() }).await, "{hop}");
        drop(waiting);
        let line = proxy.access_line("/api/slow").await;
        assert_eq!(line["status"], 499, "{hop}: {line}");

        // Over the HTTP/2 pool hyper resets the stream without passing on
        // the client body's error: the proxy must still tell it was the client.
        let mut uploading = RawConn::connect(proxy.proxy).await;
        uploading.send(b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789");
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(uploading);
        let line = proxy.access_line("/api/upload").await;
        assert_eq!(line["status"], 499, "{hop}: {line}");

        let scraped = scrape(&client, &proxy).await;
        let abandoned =
            |method| scraped.value("truedat_proxy_requests_total", &[("method", method), ("status", "499")]);
        assert_eq!(abandoned("GET"), Some(1.0), "{hop}: {}", scraped.text);
        assert_eq!(abandoned("POST"), Some(1.0), "{hop}: {}", scraped.text);
        assert_eq!(scraped.total("truedat_proxy_upstream_errors_total", &[]), 0.0, "{hop}: {}", scraped.text);
        assert!(!proxy.output().contains("request to Truedat failed"), "{hop}: {}", proxy.output());
        assert!(!proxy.output().contains("\"status\":502"), "{hop}: {}", proxy.output());
    }
}

// ---------------------------------------------------------------------------
// SPEC §6: /quitquitquit on a dual-stack admin listener

/// `admin.address = "[::]:0"`: a POST from 127.0.0.1 arrives as
/// `::ffff:127.0.0.1`, a loopback peer, and stops the proxy.
#[tokio::test]
async fn quitquitquit_accepts_ipv4_loopback_on_a_dual_stack_listener() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6");
        return;
    }
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |c| c.admin.address = "[::]:0".parse().unwrap()).await;
    let url = format!("http://127.0.0.1:{}/quitquitquit", proxy.admin.port());
    let reply = proxy.client.call(Method::POST, &url, Vec::new()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(proxy.stop().await, truedat_auth_proxy::app::Outcome::Clean);
}

// ---------------------------------------------------------------------------
// SPEC §1: egress-proxy credentials are never shown

#[tokio::test]
async fn egress_proxy_credentials_are_redacted_in_check_config_and_errors() {
    let base = binary_toml("https://td.example.com", &[]);
    let shown = config_file(&binary_toml(
        "https://td.example.com",
        &["upstream.egress_proxy = \"http://alice:S3cr3tPw@proxy.corp:3128\""],
    ));
    let path = shown.path().to_str().unwrap();
    let (status, stdout, stderr) = run_binary(&["--config", path, "--check-config"], &[]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("egress_proxy = \"http://<redacted>@proxy.corp:3128\""), "{stdout}");
    assert!(!stdout.contains("S3cr3tPw") && !stdout.contains("alice"), "{stdout}");

    for bad in ["https://alice:S3cr3tPw@proxy.corp:3128", "http://alice:S3cr3tPw@proxy.corp:3128/x"] {
        let env = [("TRUEDAT_PROXY_UPSTREAM__EGRESS_PROXY", bad)];
        let config = config_file(&base);
        let (status, stdout, stderr) =
            run_binary(&["--config", config.path().to_str().unwrap(), "--check-config"], &env).await;
        assert_eq!(status.code(), Some(2), "{bad}: {stdout}{stderr}");
        assert!(stderr.contains("upstream.egress_proxy"), "{stderr}");
        assert!(!stderr.contains("S3cr3tPw") && !stdout.contains("S3cr3tPw"), "{bad} leaked: {stderr}");
    }
}

// ---------------------------------------------------------------------------
// SPEC §3.6 and §3.2: every token logged out; at most one a second

/// Tokens of 6 s renewed by login: after a few renewals the previous tokens
/// are still alive in Truedat (the one before the newest for about 3 s
/// more, a margin a loaded machine keeps). At shutdown every one of them is
/// logged out, so the pod leaves no live session behind.
#[tokio::test]
async fn shutdown_logs_out_every_token_that_may_still_be_alive() {
    let fake = fake(|c| c.token_ttl = Duration::from_secs(6)).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    assert!(wait_until(PATIENCE, || async { fake.logins() >= 3 }).await, "no renewals");
    assert!(fake.live_sessions() >= 2, "renewal by login leaves the previous token alive");
    proxy.stop().await;
    assert_eq!(fake.live_sessions(), 0, "sessions left alive after shutdown");
    assert!(fake.logouts() >= 2, "{} logouts", fake.logouts());
}

/// A server issuing 1-second tokens: the proxy keeps serving, but obtains
/// at most one token a second.
#[tokio::test]
async fn at_most_one_token_a_second_however_short_the_lifetime() {
    let fake = fake(|c| c.token_ttl = Duration::from_secs(1)).await;
    let proxy = TestProxy::start(&fake, |c| c.token.first_token_wait = "3s".parse().unwrap()).await;
    let started = Instant::now();
    let mut ok = 0;
    while started.elapsed() < Duration::from_secs(3) {
        ok += usize::from(proxy.get("/api/data").await.status == 200);
    }
    let logins = fake.login_attempts();
    let allowed = started.elapsed().as_secs_f64().ceil() as usize + 1;
    assert!(logins <= allowed, "{logins} logins in {:?}", started.elapsed());
    assert!(ok > 0, "no request got through");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// Configuration bounds

/// Durations and sizes beyond what the proxy's arithmetic allows are
/// configuration errors naming the key, never a panic.
#[tokio::test]
async fn absurd_durations_and_sizes_are_configuration_errors() {
    for (key, value) in [
        ("TRUEDAT_PROXY_TOKEN__RETRY_MAX", "18446744073709551615s"),
        ("TRUEDAT_PROXY_UPSTREAM__REQUEST_TIMEOUT", "500000000days"),
        ("TRUEDAT_PROXY_PROXY__MAX_REQUEST_HEADER_BYTES", "9000000GiB"),
        ("TRUEDAT_PROXY_PROXY__MAX_REQUEST_HEADER_BYTES", "512MiB"),
        ("TRUEDAT_PROXY_LISTEN__MAX_CONNECTIONS", "18446744073709551615"),
    ] {
        let config = config_file(&binary_toml("https://td.example.com", &[]));
        let (status, _, stderr) =
            run_binary(&["--config", config.path().to_str().unwrap(), "--check-config"], &[(key, value)]).await;
        let name = key.trim_start_matches("TRUEDAT_PROXY_").to_ascii_lowercase().replace("__", ".");
        assert_eq!(status.code(), Some(2), "{key}={value}: {stderr}");
        assert!(stderr.contains(&name), "{key}={value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
