//! The admin port stays reachable for probes when something holds its
//! connections (SPEC §6): when its slots are full, a new connection evicts
//! the oldest one that is idle or has not yet sent a complete request head.
//! Kubernetes manifests bind it on `0.0.0.0`, so any pod that reaches it
//! could otherwise hold every slot with half-sent heads and have the
//! sidecar restarted by its failing liveness probe.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::proxy::{TestProxy, fake};
use crate::support::raw::{RawConn, raw_exchange};

/// What SPEC §6 promises for `/healthz` while the connections are held.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// Connections held against the admin port, as SPEC §6 counts them.
const HELD: usize = 1000;

/// The test process holds `HELD` connections and the proxy's ends of some:
/// raise the soft limit on open files towards the hard one.
fn enough_descriptors() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = limit.maximum.map_or(65_536, |max| max.min(65_536));
    if limit.current.is_some_and(|current| current < wanted) {
        let raised = rustix::process::Rlimit { current: Some(wanted), maximum: limit.maximum };
        setrlimit(Resource::Nofile, raised).expect("raising the soft limit on open files up to the hard one");
    }
    let current = getrlimit(Resource::Nofile).current;
    assert!(current.is_none_or(|n| n >= 2 * HELD as u64 + 256), "this test needs more open files: {current:?}");
}

/// `GET /healthz` on a new connection: the status line, if one came.
async fn healthz(admin: SocketAddr) -> String {
    let answer = raw_exchange(admin, b"GET /healthz HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n").await;
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn healthz_answers_within_a_second_while_a_thousand_connections_are_held() {
    enough_descriptors();
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    let mut held = Vec::with_capacity(HELD + 64);
    // Connections kept idle after a complete exchange, as a pooling scraper leaves them...
    for _ in 0..64 {
        let mut conn = RawConn::connect(proxy.admin).await;
        conn.send(b"GET /healthz HTTP/1.1\r\nhost: scraper\r\n\r\n");
        assert_eq!(conn.response().await.status(), Some(200));
        held.push(conn);
    }
    // ...then a thousand that send half a request head and nothing more
    // (the admin port waits 10 s for a head).
    for _ in 0..HELD {
        let mut conn = RawConn::connect(proxy.admin).await;
        conn.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\nuser-agent: half");
        held.push(conn);
    }
    for attempt in 1..=5 {
        let started = Instant::now();
        let answered = tokio::time::timeout(ANSWER_WITHIN, healthz(proxy.admin)).await;
        assert_eq!(
            answered.as_deref(),
            Ok("HTTP/1.1 200 OK"),
            "attempt {attempt}: /healthz was not answered within {ANSWER_WITHIN:?} ({:?} passed)",
            started.elapsed()
        );
    }
    // Readiness and metrics too, and the proxy port is untouched.
    assert_eq!(proxy.client.get(&proxy.admin_url("/readyz")).await.status, 200);
    assert_eq!(proxy.get("/api/data").await.status, 200);
    drop(held);
    proxy.stop().await;
}
