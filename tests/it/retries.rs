//! Riding through Truedat's bad moments (SPEC §4, Retries): what a tool
//! behind the proxy sees while Truedat restarts, its ingress answers 503 or
//! a connection is reset; and what never happens (a POST sent twice, a
//! retry after `request_timeout`, more tries than the budget allows). Each
//! failure path runs on both ways to Truedat ([`Hop`]).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use crate::support::client::{Client, Reply};
use crate::support::fake_truedat::{DataFault, FakeConfig, Outage};
use crate::support::hops::Hop;
use crate::support::prometheus::Scrape;
use crate::support::proxy::{BinaryProxy, TestProxy, fake};
use crate::support::wait::wait_until;

const READY: Duration = Duration::from_secs(10);

fn status(code: u16) -> Outage {
    Outage::Status { status: code, retry_after: None }
}

async fn call(proxy: &TestProxy, method: Method, path: &str, body: &[u8]) -> Reply {
    proxy.client.call(method, &proxy.url(path), body.to_vec()).await
}

/// Ingress 503s: a GET is retried to its 200; a POST's 503 reaches the tool
/// untouched (status, HTML page), Truedat having seen it once; a PUT is
/// retried with the identical body each time.
#[tokio::test]
async fn transient_statuses_are_retried_for_idempotent_methods_only() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;

        fake.fail_next(2, status(503));
        let reply = proxy.get("/api/get").await;
        assert_eq!(reply.status, 200, "{hop}: {}", reply.text());
        assert_eq!(hop.tries(&fake, "/api/get"), 3, "{hop}");

        fake.fail_next(1, status(503));
        let reply = call(&proxy, Method::POST, "/api/post", b"{\"x\":1}").await;
        assert_eq!(reply.status, 503, "{hop}");
        assert_eq!(reply.header("content-type"), Some("text/html"), "{hop}");
        assert!(reply.text().contains("<h1>503 Service Temporarily Unavailable</h1>"), "{hop}: {}", reply.text());
        assert_eq!(hop.tries(&fake, "/api/post"), 1, "{hop}: a POST is never sent again once it reached Truedat");

        fake.fail_next(2, status(502));
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let reply = call(&proxy, Method::PUT, "/api/upload", &body).await;
        assert_eq!(reply.status, 200, "{hop}: {}", reply.text());
        let puts: Vec<_> = hop.data_requests(&fake).into_iter().filter(|r| r.uri.path() == "/api/upload").collect();
        assert_eq!(puts.len(), 3, "{hop}");
        assert!(puts.iter().all(|r| r.body == body), "{hop}: every try carried the identical body");
        proxy.stop().await;
    }
}

/// An ingress that answers 503 before reading a 900 KiB PUT: the proxy
/// drives its connection until the body it kept comes back, then sends the
/// whole body again: 200, without waiting for a timeout.
#[tokio::test]
async fn a_status_answered_before_the_body_was_read_is_retried_with_the_whole_body() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;
        fake.fail_next(1, Outage::Early(503));
        let body: Vec<u8> = (0..900 * 1024u32).map(|i| (i % 249) as u8).collect();
        let started = Instant::now();
        let reply = call(&proxy, Method::PUT, "/api/upload", &body).await;
        assert_eq!(reply.status, 200, "{hop}: {}", reply.text());
        assert_eq!(reply.json()["bytes"], 900 * 1024, "{hop}");
        assert!(started.elapsed() < Duration::from_secs(3), "{hop}: took {:?}", started.elapsed());
        assert_eq!(hop.tries(&fake, "/api/upload"), 2, "{hop}");
        proxy.stop().await;
    }
}

/// `Retry-After: 1` is waited for, then the GET succeeds; `Retry-After: 120`
/// ends past `retry.window`, so that 503 goes to the tool at once, header
/// included.
#[tokio::test]
async fn retry_after_is_honoured_within_the_window_and_passed_on_beyond_it() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;

        fake.fail_next(1, Outage::Status { status: 503, retry_after: Some("1".into()) });
        let started = Instant::now();
        assert_eq!(proxy.get("/api/soon").await.status, 200, "{hop}");
        assert!(started.elapsed() >= Duration::from_millis(950), "{hop}: Retry-After ignored: {:?}", started.elapsed());
        assert_eq!(hop.tries(&fake, "/api/soon"), 2, "{hop}");

        fake.fail_next(1, Outage::Status { status: 503, retry_after: Some("120".into()) });
        let started = Instant::now();
        let reply = proxy.get("/api/later").await;
        assert_eq!(reply.status, 503, "{hop}");
        assert_eq!(reply.header("retry-after"), Some("120"), "{hop}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{hop}: passed on at once, not after {took:?}");
        assert_eq!(hop.tries(&fake, "/api/later"), 1, "{hop}");
        proxy.stop().await;
    }
}

/// A connection reset after Truedat read the request, before any answer: a
/// GET is retried; a POST is answered 502 and was seen once.
#[tokio::test]
async fn a_reset_before_the_headers_is_retried_for_a_get_only() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;
        fake.fail_next(1, Outage::Reset);
        assert_eq!(proxy.get("/api/get").await.status, 200, "{hop}");
        assert_eq!(hop.tries(&fake, "/api/get"), 2, "{hop}");

        fake.fail_next(1, Outage::Reset);
        let reply = call(&proxy, Method::POST, "/api/post", b"{}").await;
        assert_eq!(reply.status, 502, "{hop}: {}", reply.text());
        assert_eq!(hop.tries(&fake, "/api/post"), 1, "{hop}");
        proxy.stop().await;
    }
}

/// Truedat restarting: requests sent while its port refuses connections
/// (a GET, a small POST, and a 2 MiB POST over `replay_body_limit`, none of
/// which reached it) are sent once it is back; each POST reaches Truedat
/// exactly once.
#[tokio::test]
async fn requests_sent_while_truedat_restarts_go_through_once_it_is_back() {
    for hop in Hop::BOTH {
        let (mut fake, proxy) = hop.proxy(|_| {}).await;
        assert_eq!(proxy.get("/api/warm").await.status, 200, "{hop}");
        fake.stop_listening().await;

        let big: Vec<u8> = vec![7; 2 << 20];
        let requests = async {
            tokio::join!(
                proxy.get("/api/get"),
                call(&proxy, Method::POST, "/api/post", b"{\"small\":true}"),
                call(&proxy, Method::POST, "/api/upload", &big),
            )
        };
        let restart = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            fake.listen_again().await.expect("the port is free again");
        };
        let ((get, post, upload), ()) = tokio::join!(requests, restart);
        assert_eq!(get.status, 200, "{hop}: {}", get.text());
        assert_eq!(post.status, 200, "{hop}: {}", post.text());
        assert_eq!(upload.status, 200, "{hop}: {}", upload.text());
        assert_eq!(upload.json()["bytes"], 2 << 20, "{hop}");
        assert_eq!(hop.tries(&fake, "/api/post"), 1, "{hop}");
        assert_eq!(hop.tries(&fake, "/api/upload"), 1, "{hop}");
        proxy.stop().await;
    }
}

/// `retry.window` bounds a Truedat that keeps failing: the tool gets the
/// last 502 a little after the window, not never.
#[tokio::test]
async fn the_window_bounds_a_permanent_failure() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|c| c.retry.window = "1s".parse().unwrap()).await;
        fake.fail_next(1000, status(502));
        let started = Instant::now();
        let reply = proxy.get("/api/down").await;
        assert_eq!(reply.status, 502, "{hop}");
        assert!(reply.text().contains("502 Bad Gateway"), "{hop}: Truedat's last answer, as it is: {}", reply.text());
        let took = started.elapsed();
        assert!(took < Duration::from_millis(2500), "{hop}: gave up after {took:?}");
        let tries = hop.tries(&fake, "/api/down");
        assert!(tries >= 3, "{hop}: {tries} tries");
        proxy.stop().await;
    }
}

/// A request whose `upstream.request_timeout` expired is a 504 and is not
/// sent again.
#[tokio::test]
async fn a_request_timeout_is_not_retried() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|c| c.upstream.request_timeout = "500ms".parse().unwrap()).await;
        let reply = proxy.get("/api/slow?ms=2000").await;
        assert_eq!(reply.status, 504, "{hop}");
        assert_eq!(hop.tries(&fake, "/api/slow"), 1, "{hop}");
        proxy.stop().await;
    }
}

/// Forty tools during an outage: with `budget_min_per_second = 1` (a
/// reserve of 10 retries over 10 s) and `budget_ratio = 0.2` (40 requests
/// add 8), Truedat sees at most 40 + 18 tries, not 40 times the window.
/// One path: the budget is spent above the exchange, whichever path it takes.
#[tokio::test]
async fn the_budget_bounds_the_tries_of_many_clients() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |c| c.retry.budget_min_per_second = 1).await;
    fake.fail_next(100_000, status(503));
    let urls: Vec<String> = (0..40).map(|i| proxy.url(&format!("/api/outage?i={i}"))).collect();
    let replies = join_all(urls.iter().map(|url| proxy.client.get(url))).await;
    assert!(replies.iter().all(|r| r.status == 503));
    let seen = Hop::Http1.tries(&fake, "/api/outage");
    assert!(seen > 40, "no retry at all: {seen}");
    assert!(seen <= 40 + 18, "{seen} tries: more than the budget allows");
    proxy.stop().await;
}

/// `upstream.body_idle_timeout`, not `request_timeout`, governs silence
/// inside a body: a 2.5 s pause passes with `request_timeout = "1s"`; with
/// `body_idle_timeout = "1s"` the same pause cuts the transfer. The four
/// cases (two settings on each path) wait out their pauses side by side.
#[tokio::test]
async fn body_idle_timeout_governs_pauses_inside_a_body() {
    let cases = Hop::BOTH.into_iter().flat_map(|hop| [(hop, "60s", true), (hop, "1s", false)]);
    join_all(cases.map(|(hop, idle, passes)| a_pause_inside_a_body(hop, idle, passes))).await;
}

async fn a_pause_inside_a_body(hop: Hop, idle: &str, passes: bool) {
    let (fake, proxy) = hop
        .proxy(|c| {
            c.upstream.request_timeout = "1s".parse().unwrap();
            c.upstream.body_idle_timeout = idle.parse().unwrap();
        })
        .await;
    fake.set_data_fault(DataFault::StallMidBody);
    let resume = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        fake.set_data_fault(DataFault::None);
    };
    let request = Request::get(proxy.url("/api/stall")).body(Full::default()).unwrap();
    let (result, ()) = tokio::join!(proxy.client.try_send(request), resume);
    match (passes, result) {
        (true, Ok(reply)) => assert_eq!(reply.body.len() as u64, crate::support::fake_truedat::STALL_BODY_LEN, "{hop}"),
        (false, Err(_)) => {}
        (passes, result) => {
            panic!("{hop}: body_idle_timeout = {idle}: passes={passes}, got {:?}", result.map(|r| r.status))
        }
    }
    proxy.stop().await;
}

/// What an operator sees of retries: `attempts` on the access line and
/// `truedat_proxy_upstream_retries_total{reason}`, every reason exported
/// from zero.
#[tokio::test]
async fn retries_show_in_the_access_log_and_the_metrics() {
    for hop in Hop::BOTH {
        let fake = hop.fake(FakeConfig::default()).await;
        let proxy = BinaryProxy::spawn(&hop.binary_toml(&fake, &[]), &[]).await;
        let client = Client::new();
        let ready = wait_until(READY, || async {
            let request = Request::get(proxy.admin_url("/readyz")).body(Full::default()).unwrap();
            client.try_send(request).await.is_ok_and(|r| r.status == StatusCode::OK)
        })
        .await;
        assert!(ready, "{hop}: {}", proxy.output());
        let scraped = Scrape::parse(&client.get(&proxy.admin_url("/metrics")).await.text()).unwrap();
        for reason in ["connect", "reset", "status"] {
            let value = scraped.value("truedat_proxy_upstream_retries_total", &[("reason", reason)]);
            assert_eq!(value, Some(0.0), "{hop}: {reason} not exported from zero:\n{}", scraped.text);
        }

        fake.fail_next(2, status(503));
        assert_eq!(client.get(&proxy.url("/api/counted")).await.status, 200, "{hop}");
        let line = || {
            proxy
                .output()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| e["path"] == "/api/counted" && e["status"] == 200)
        };
        assert!(wait_until(READY, || async { line().is_some() }).await, "{hop}: {}", proxy.output());
        let line = line().unwrap();
        assert_eq!(line["attempts"], 3, "{hop}: {line}");
        assert_eq!(line["upstream_status"], 200, "{hop}: {line}");
        assert_eq!(hop.tries(&fake, "/api/counted"), 3, "{hop}");
        let scraped = Scrape::parse(&client.get(&proxy.admin_url("/metrics")).await.text()).unwrap();
        let retries = scraped.value("truedat_proxy_upstream_retries_total", &[("reason", "status")]);
        assert_eq!(retries, Some(2.0), "{hop}");
    }
}
