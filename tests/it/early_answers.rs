//! Early answers (SPEC §4): Truedat or its ingress answers before the
//! request body was sent in full (a 413 from `client_max_body_size`, a 401
//! before reading), or the proxy refuses a request before reading its body.
//! Tools that send their whole body before they read (Python's `requests`,
//! `http.client`, Java's `HttpURLConnection`) must still receive that answer,
//! at once, and the proxy must not be left holding half a request, on
//! either path to Truedat.

use std::time::{Duration, Instant};

use http::Method;
use truedat_auth_proxy::app::Outcome;

use crate::support::fake_truedat::{AfterEarly, EarlyAnswer};
use crate::support::hops::Hop;
use crate::support::raw::{RawConn, SendThenRead, send_then_read};

/// An ingress-nginx default: `client_max_body_size 1m`.
const INGRESS_LIMIT: u64 = 1 << 20;
/// Long enough for a loaded machine; today's failure is a hang, not a delay.
const PATIENCE: Duration = Duration::from_secs(15);

fn upload_head(path: &str, len: usize) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: python-requests/2.32.3\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

/// The client wrote everything, then read the whole `status` answer, and
/// the connection was closed after it.
fn assert_answered(seen: &SendThenRead, status: u16, case: &str) {
    assert_answered_then(seen, status, case);
    assert_eq!(seen.response.header("connection").as_deref(), Some("close"), "{case}: {}", head_of(seen));
}

/// The client wrote everything, then read the whole `status` answer; the
/// connection closed after it exactly when the answer said
/// `Connection: close`. (A Truedat that keeps reading may have taken the
/// whole body by the time the answer is ready, the 401 case waiting for its
/// session check: then nothing is left to drain and the connection stays.)
fn assert_answered_then(seen: &SendThenRead, status: u16, case: &str) {
    assert_eq!(seen.write_error, None, "{case}: the client could not send its body");
    assert_eq!(seen.response.status(), Some(status), "{case}: {}", head_of(seen));
    assert!(seen.response.complete, "{case}: incomplete answer: {}", head_of(seen));
    let close = seen.response.header("connection").as_deref() == Some("close");
    assert_eq!(seen.closed_after, close, "{case}: closed after the answer: {}; {}", seen.closed_after, head_of(seen));
}

fn head_of(seen: &SendThenRead) -> String {
    let text = seen.response.text();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

/// The issue's cases: an early 413 and an early 401, from a Truedat that
/// closes after answering and from one that keeps reading (and the
/// connection), with bodies just over the limit and well over it; after
/// each, the proxy forwards the next upload normally and shuts down cleanly.
#[tokio::test]
async fn a_client_that_sends_before_it_reads_gets_the_early_answer_on_both_paths() {
    for hop in Hop::BOTH {
        for (status, then, body_len) in [
            (413, AfterEarly::Close, 8 << 20),
            (413, AfterEarly::KeepReading, 8 << 20),
            (413, AfterEarly::KeepReading, (1 << 20) + (64 << 10)),
            (401, AfterEarly::Close, 8 << 20),
            (401, AfterEarly::KeepReading, (1 << 20) + (64 << 10)),
        ] {
            let case = format!("{hop}, early {status} for {body_len} bytes, then {then:?}");
            let (fake, proxy) = hop.proxy(|_| {}).await;
            fake.set_early_answer(Some(EarlyAnswer { over: INGRESS_LIMIT, status, then }));
            let started = Instant::now();
            let seen = send_then_read(proxy.proxy, upload_head("/api/upload", body_len), body_len, PATIENCE).await;
            match then {
                // Truedat took only part of the body: the rest is drained, then closed.
                AfterEarly::Close => assert_answered(&seen, status, &case),
                AfterEarly::KeepReading => assert_answered_then(&seen, status, &case),
            }
            assert!(started.elapsed() < PATIENCE, "{case}: took {:?}", started.elapsed());
            let uploads = fake.data_requests().iter().filter(|r| r.uri.path() == "/api/upload").count();
            assert_eq!(uploads, 1, "{case}: an early answer is not a reason to send the upload again");

            fake.set_early_answer(None);
            let body = vec![7u8; 2 << 20];
            let reply = proxy.client.call(Method::POST, &proxy.url("/api/upload"), body).await;
            assert_eq!(reply.status, 200, "{case}: the next upload: {}", reply.text());
            assert_eq!(reply.json()["bytes"], 2 << 20, "{case}");
            assert_eq!(proxy.stop().await, Outcome::Clean, "{case}: nothing was left hanging for the drain");
        }
    }
}

/// The proxy's own refusals come before it reads the body too: a tool that
/// sends first still reads the 403, and Truedat sees nothing.
#[tokio::test]
async fn the_proxy_s_own_refusal_reaches_a_client_that_sends_first() {
    let (fake, proxy) = Hop::Http1.proxy(|_| {}).await;
    let len = 8 << 20;
    let seen = send_then_read(proxy.proxy, upload_head("/api/sessions", len), len, PATIENCE).await;
    assert_answered(&seen, 403, "POST /api/sessions");
    assert!(fake.data_requests().is_empty());
    assert_eq!(proxy.stop().await, Outcome::Clean);
}

/// A client that asked `Expect: 100-continue` and is refused is not told to
/// continue: it gets the final answer at once and sends no body at all.
#[tokio::test]
async fn a_refused_client_waiting_for_100_continue_is_not_asked_for_its_body() {
    let (_fake, proxy) = Hop::Http1.proxy(|_| {}).await;
    let mut conn = RawConn::connect(proxy.proxy).await;
    conn.send(
        b"POST /api/sessions HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n\
          Content-Length: 104857600\r\n\r\n",
    );
    let response = conn.response().await;
    assert_eq!(response.status(), Some(403), "{}", response.text());
    assert!(!response.text().contains("100 Continue"), "{}", response.text());
    assert!(conn.closed_within(Duration::from_secs(5)).await, "the unsent body is not waited for");
    proxy.stop().await;
}

/// The client from the report, for real: Python's `requests` (falling back
/// to the standard library's `http.client`, which it is built on) posting
/// 8 MiB through the proxy to an ingress with a 1 MiB limit, which keeps
/// reading (as nginx does) or closes, on both paths.
#[tokio::test]
async fn python_requests_gets_the_ingress_413_on_both_paths() {
    const SCRIPT: &str = r#"
import sys
url, n = sys.argv[1], 8 << 20
try:
    import requests
    r = requests.post(url, data=b"x" * n, timeout=20)
    print("requests", r.status_code, r.headers.get("connection"))
except ImportError:
    import http.client, urllib.parse
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    c.request("POST", u.path, body=b"x" * n)
    r = c.getresponse()
    print("http.client", r.status, r.getheader("connection"))
"#;
    if std::process::Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 is not installed: skipping the real-client check");
        return;
    }
    for (hop, then) in Hop::BOTH.into_iter().flat_map(|hop| [(hop, AfterEarly::KeepReading), (hop, AfterEarly::Close)])
    {
        let (fake, proxy) = hop.proxy(|_| {}).await;
        fake.set_early_answer(Some(EarlyAnswer { over: INGRESS_LIMIT, status: 413, then }));
        let run = tokio::process::Command::new("python3")
            .args(["-c", SCRIPT, &proxy.url("/api/upload")])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("{hop}, {then:?}: python hung"))
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{hop}, {then:?}: {stdout}{stderr}");
        let words: Vec<&str> = stdout.split_whitespace().collect();
        assert_eq!(words.get(1), Some(&"413"), "{hop}, {then:?}: {stdout}{stderr}");
        if then == AfterEarly::Close {
            assert_eq!(words.get(2), Some(&"close"), "{hop}, {then:?}: the rest was drained: {stdout}");
        }
        proxy.stop().await;
    }
}
