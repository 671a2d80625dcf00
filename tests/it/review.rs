//! What the second hostile review found (issue 16), each as a tool or an
//! operator would notice it: a POST sent again after a TLS error on an
//! established connection, `Retry-After: 0` turning retries into a busy
//! loop, a token leaked when the session check failed, a request id a client
//! made hop-by-hop, a `101` nobody asked for, and a retry carrying a token
//! past its deadline.

use std::time::Duration;

use http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use truedat_auth_proxy::units::Dur;

use crate::support::fake_truedat::{DataFault, FakeConfig, FakeTruedat, Outage};
use crate::support::hops::Hop;
use crate::support::proxy::{TestProxy, fake};
use crate::support::raw::RawConn;
use crate::support::tls::{ALPN_H2_HTTP1, CA_FILE, server_config};

fn tries(fake: &FakeTruedat, path: &str) -> usize {
    fake.data_requests().iter().filter(|r| r.uri.path() == path).count()
}

/// SPEC §4: only a failed handshake on a new connection means nothing was
/// sent. Truedat reads a whole POST and then sends a record that does not
/// decrypt: the POST was seen once, and the tool is told the connection
/// broke, not that a handshake failed; over HTTP/2 and HTTP/1.1 on TLS.
#[tokio::test]
async fn a_post_is_not_sent_again_after_a_tls_error_on_an_established_connection() {
    let http1_only: &[&[u8]] = &[b"http/1.1"];
    for alpn in [ALPN_H2_HTTP1, http1_only] {
        let fake = FakeTruedat::start_tls(FakeConfig::default(), server_config(alpn)).await;
        let proxy = TestProxy::ready(&fake, |c| c.upstream.ca_file = Some(CA_FILE.into())).await;
        assert_eq!(proxy.get("/api/warm").await.status, 200);
        fake.set_data_fault(DataFault::CorruptTls);
        let reply = proxy.client.call(Method::POST, &proxy.url("/api/post"), b"{\"x\":1}".to_vec()).await;
        let case = format!("ALPN {:?}", alpn.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>());
        assert_eq!(reply.status, 502, "{case}: {}", reply.text());
        let detail = reply.json()["errors"]["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains("broke") && !detail.contains("handshake"), "{case}: {detail}");
        assert_eq!(tries(&fake, "/api/post"), 1, "{case}: the POST reached Truedat once");
        fake.set_data_fault(DataFault::None);
        assert_eq!(proxy.get("/api/after").await.status, 200, "{case}");
        proxy.stop().await;
    }
}

/// SPEC §4: `Retry-After: 0` changes nothing. A 503 storm answering it
/// gets tries spaced by the backoff (within a 2 s window: at most 1 + 5,
/// since each wait is at least half its step, 50 + 100 + 200 + 400 + 800
/// ms), and the shared budget is left for the next request.
#[tokio::test]
async fn retry_after_zero_keeps_the_backoff_between_tries() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|c| c.retry.window = Dur::secs(2)).await;
        fake.fail_next(1000, Outage::Status { status: 503, retry_after: Some("0".into()) });
        let reply = proxy.get("/api/storm").await;
        assert_eq!(reply.status, 503, "{hop}");
        let storm = tries(&fake, "/api/storm");
        assert!((2..=6).contains(&storm), "{hop}: {storm} tries in 2 s");

        fake.fail_next(1, Outage::Status { status: 503, retry_after: None });
        assert_eq!(proxy.get("/api/next").await.status, 200, "{hop}: the budget was not emptied");
        assert_eq!(tries(&fake, "/api/next"), 2, "{hop}");
        proxy.stop().await;
    }
}

/// SPEC §3.4: a 5xx from `GET /api/sessions` proves nothing. An
/// application's own 401 while the check answers 503: the token is handled
/// as dead (a login, a replay), but it may live, so it is logged out at
/// shutdown with the new one and Truedat holds no session afterwards.
#[tokio::test]
async fn a_token_whose_check_failed_is_still_logged_out_at_shutdown() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;
        fake.set_session_check_failure(Some(503));
        let reply = proxy.get("/api/not_yours").await;
        assert_eq!(reply.status, 401, "{hop}: {}", reply.text());
        assert_eq!(fake.logins(), 2, "{hop}: the unchecked token was replaced");
        assert_eq!(tries(&fake, "/api/not_yours"), 2, "{hop}: one replay");
        assert_eq!(fake.live_sessions(), 2, "{hop}");
        proxy.stop().await;
        assert_eq!(fake.live_sessions(), 0, "{hop}: a session was left alive in Truedat");
    }
}

/// SPEC §4: a client that names `X-Request-Id` in `Connection` made its own
/// id hop-by-hop: the proxy generates one, sends it to Truedat and returns it.
#[tokio::test]
async fn a_request_id_named_in_connection_is_replaced_by_a_generated_one() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    let mut conn = RawConn::connect(proxy.proxy).await;
    conn.send(
        b"GET /api/data HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, X-Request-Id\r\n\
          X-Request-Id: client-chosen\r\n\r\n",
    );
    let response = conn.response().await;
    assert_eq!(response.status(), Some(200), "{}", response.text());
    let returned = response.header("x-request-id").expect("a request id is returned");
    assert_ne!(returned, "client-chosen");
    assert_eq!(returned.len(), 32, "{returned}");
    let sent = fake.data_requests()[0].headers.get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(sent.as_deref(), Some(returned.as_str()), "Truedat got the id the client got back");
    proxy.stop().await;
}

/// SPEC §4: the proxy never forwards `Upgrade`, so a `101` from upstream
/// answers nothing that was asked: the tool gets a 502, and the next request
/// works.
#[tokio::test]
async fn an_upstream_101_without_an_upgrade_is_a_502() {
    let upstream = SwitchingUpstream::start().await;
    let mut config = crate::support::proxy::test_config(&upstream.url());
    config.retry.window = Dur::secs(0);
    let proxy = TestProxy::start_with(config).await;
    assert!(proxy.wait_ready(Duration::from_secs(10)).await);
    let reply = proxy.get("/api/switch").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let body: Value = reply.json();
    assert!(body["errors"]["detail"].as_str().unwrap().contains("101"), "{body}");
    let reply = proxy.get("/api/switch").await;
    assert_eq!(reply.status, 502, "a new connection, and the same answer: {}", reply.text());
    proxy.stop().await;
}

/// SPEC §4: each try carries the token current when it is sent. Tokens of
/// 3 s; a GET answered 503 with `Retry-After: 4` is tried again after its
/// first token expired: the retry carries a newer one, so Truedat never
/// answers 401 and no session check or extra login happens.
#[tokio::test]
async fn a_retry_after_a_long_wait_carries_the_current_token() {
    let fake = fake(|c| c.token_ttl = Duration::from_secs(3)).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    fake.fail_next(1, Outage::Status { status: 503, retry_after: Some("4".into()) });
    let reply = proxy.get("/api/later").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let bearers: Vec<_> = fake
        .data_requests()
        .iter()
        .filter(|r| r.uri.path() == "/api/later")
        .map(|r| r.headers["authorization"].clone())
        .collect();
    assert_eq!(bearers.len(), 2);
    assert_ne!(bearers[0], bearers[1], "the retry carried a newer token");
    assert_eq!(fake.session_checks(), 0, "no try carried an expired token");
    proxy.stop().await;
}

/// An upstream that logs the proxy in (a non-JWT token, so the fallback
/// lifetime applies) and answers every other request with a `101` and a
/// few bytes of another protocol.
struct SwitchingUpstream {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SwitchingUpstream {
    async fn start() -> SwitchingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let login = head.starts_with(b"POST /api/sessions ");
                        let answer: &[u8] = if login {
                            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nconnection: close\r\n\
                              content-length: 22\r\n\r\n{\"token\":\"not-a-jwt\"}\n"
                        } else {
                            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: other\r\n\r\n\x00\x01"
                        };
                        head.drain(..end + 4);
                        if stream.write_all(answer).await.is_err() || login {
                            return;
                        }
                    }
                });
            }
        });
        SwitchingUpstream { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SwitchingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
