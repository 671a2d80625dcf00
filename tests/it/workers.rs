//! `runtime.worker_threads = 2` on Linux: two threads, each a current-thread
//! runtime with its own listener on the proxy port (README "Performance",
//! `runtime.worker_threads`). The kernel spreads connections over the two
//! listeners by a hash of their addresses, so with a few dozen connections
//! both threads serve some; each test also checks that the worker thread
//! did work. Runs the real binary, as an operator would.

use std::time::Duration;

use futures_util::future::join_all;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use crate::support::client::{Client, Reply};
use crate::support::fake_truedat::FakeTruedat;
use crate::support::proxy::{BinaryProxy, TestProxy, binary_toml, fake};
use crate::support::wait::wait_until;

const PATIENCE: Duration = Duration::from_secs(10);
/// The name `workers` gives the second thread.
const WORKER: &str = "proxy-worker-1";

async fn spawn_two_threads(fake: &FakeTruedat, extra: &[&str]) -> BinaryProxy {
    let mut lines = vec!["runtime.worker_threads = 2"];
    lines.extend_from_slice(extra);
    let proxy = BinaryProxy::spawn(&binary_toml(&fake.url(), &lines), &[]).await;
    let client = Client::new();
    let ready = wait_until(PATIENCE, || async {
        let request = http::Request::get(proxy.admin_url("/readyz")).body(Default::default());
        let reply = client.try_send(request.expect("a valid request"));
        reply.await.is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    assert!(ready, "/readyz never answered 200; output:\n{}", proxy.output());
    proxy
}

/// CPU time the thread named `name` of process `pid` has run, in
/// nanoseconds (the first field of `/proc/PID/task/TID/schedstat`).
fn thread_cpu_ns(pid: u32, name: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim() != name {
            return None;
        }
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        schedstat.split_whitespace().next()?.parse().ok()
    })
}

/// `count` GETs of `path`, each on a connection of its own, all at once.
fn on_their_own_connections(
    proxy: &BinaryProxy,
    path: &str,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Result<Reply, String>>> {
    (0..count)
        .map(|_| {
            let url = proxy.url(path);
            tokio::spawn(async move {
                Client::new().try_send(http::Request::get(url).body(Default::default()).expect("a valid request")).await
            })
        })
        .collect()
}

async fn statuses(requests: Vec<tokio::task::JoinHandle<Result<Reply, String>>>) -> Vec<Result<StatusCode, String>> {
    join_all(requests)
        .await
        .into_iter()
        .map(|joined| joined.expect("the request task").map(|reply| reply.status))
        .collect()
}

#[tokio::test]
async fn two_threads_answer_every_connection_log_in_once_and_drain_both_on_sigterm() {
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_two_threads(&fake, &["shutdown.drain_timeout = \"10s\""]).await;
    let idle = thread_cpu_ns(proxy.pid(), WORKER).expect("the second thread runs, named proxy-worker-1");

    let answered = statuses(on_their_own_connections(&proxy, "/api/data", 200)).await;
    let failed: Vec<_> = answered.iter().filter(|s| *s != &Ok(StatusCode::OK)).collect();
    assert!(failed.is_empty(), "{} of 200 connections were not answered 200: {failed:?}", failed.len());
    assert_eq!(fake.logins(), 1, "both threads must share the one token");
    let busy = thread_cpu_ns(proxy.pid(), WORKER).expect("the second thread still runs");
    assert!(busy > idle, "the second thread served none of 200 connections");

    // In flight on both threads when the signal comes: each must finish.
    let before = fake.data_requests().len();
    let slow = on_their_own_connections(&proxy, "/api/slow?ms=1500", 24);
    assert!(wait_until(PATIENCE, || async { fake.data_requests().len() >= before + 24 }).await);
    proxy.signal("TERM");
    let drained = statuses(slow).await;
    let cut: Vec<_> = drained.iter().filter(|s| *s != &Ok(StatusCode::OK)).collect();
    assert!(cut.is_empty(), "{} of 24 in-flight requests were cut: {cut:?}", cut.len());
    let status = proxy.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proxy.output());
    assert_eq!(fake.logouts(), 1, "the session was not logged out; output:\n{}", proxy.output());
}

#[tokio::test]
async fn a_drain_timeout_cuts_the_requests_of_both_threads_and_counts_them_all() {
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_two_threads(&fake, &["shutdown.drain_timeout = \"300ms\""]).await;
    let idle = thread_cpu_ns(proxy.pid(), WORKER).expect("the second thread runs, named proxy-worker-1");

    let slow = on_their_own_connections(&proxy, "/api/slow?ms=5000", 16);
    assert!(wait_until(PATIENCE, || async { fake.data_requests().len() >= 16 }).await);
    let busy = thread_cpu_ns(proxy.pid(), WORKER).expect("the second thread still runs");
    assert!(busy > idle, "the second thread took none of 16 connections");
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(1), "output:\n{}", proxy.output());
    let answered = statuses(slow).await;
    assert!(!answered.contains(&Ok(StatusCode::OK)), "a request outlasting the drain was answered: {answered:?}");
    let says_16 = wait_until(PATIENCE, || async { says_requests_cut(&proxy.output(), 16) }).await;
    assert!(says_16, "no line says that 16 requests were cut:\n{}", proxy.output());
}

/// Whether a JSON log line carries `requests_cut` = `n`.
fn says_requests_cut(output: &str, n: u64) -> bool {
    output.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()).any(|event| event["requests_cut"] == n)
}

/// `listen.max_connections` is one budget for both threads: with a single
/// slot, a connection waiting on one thread gets it from an idle keep-alive
/// connection of the other (asked to close after its exchange), instead of
/// waiting for it to time out idle, or for ever.
#[tokio::test]
async fn two_threads_share_one_connection_slot_without_starving_a_pooling_client() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::start(&fake, |c| {
        c.runtime.worker_threads = 2;
        c.listen.max_connections = 1;
    })
    .await;
    assert!(proxy.wait_ready(PATIENCE).await);

    let client = Client::new();
    let requests = (0..50).map(|i| {
        let (client, url) = (client.clone(), proxy.url(&format!("/api/burst/{i}")));
        async move { client.try_send(Request::get(url).body(Full::default()).expect("valid")).await.map(|r| r.status) }
    });
    let answered = tokio::time::timeout(Duration::from_secs(10), join_all(requests)).await;
    let statuses = answered.unwrap_or_else(|_| {
        panic!(
            "50 requests through one slot shared by two threads were not all answered within 10 s \
             ({} reached Truedat)",
            fake.data_requests().len()
        )
    });
    assert!(statuses.iter().all(|s| s.as_ref().is_ok_and(|s| *s == StatusCode::OK)), "{statuses:?}");
    proxy.stop().await;
}
