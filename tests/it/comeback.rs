//! The probe-gated comeback (SPEC §3.1): while Truedat cannot be reached the
//! proxy probes `GET /api/ping`, and its return ends the login backoff early;
//! after any other failure it does not probe, and a probe never adds a login.
//!
//! The backoff in these tests is long (10–20 s for the first wait) so that
//! "ready within a few seconds of the return" can only come from a probe,
//! however loaded the machine.

use std::time::{Duration, Instant};

use truedat_auth_proxy::config::Config;

use crate::support::fake_truedat::{FakeTruedat, LoginMode};
use crate::support::proxy::{TestProxy, fake};
use crate::support::wait::wait_until;

const READY: Duration = Duration::from_secs(10);
/// Ready this soon after Truedat's return: a 200 ms probe interval plus a
/// login, with room for a loaded machine; the backoff alone would take 10 s.
const SOON: Duration = Duration::from_secs(5);

/// A first backoff wait of 10–20 s, and probes every 200 ms.
fn long_backoff(config: &mut Config) {
    config.token.retry_initial = "20s".parse().unwrap();
    config.token.retry_max = "20s".parse().unwrap();
    config.token.probe_interval = "200ms".parse().unwrap();
}

async fn readiness_detail(proxy: &TestProxy) -> String {
    let reply = proxy.client.get(&proxy.admin_url("/readyz")).await;
    if reply.status == 200 {
        "ready".to_owned()
    } else {
        reply.json()["errors"]["detail"].as_str().unwrap_or("").to_owned()
    }
}

/// Waits until the proxy says Truedat is unreachable, then for five probe
/// intervals, so that at least one probe failed (a refused probe never
/// reaches the fake, so there is nothing to wait on) and the return is an
/// edge the probes can see even on a loaded machine.
async fn wait_unreachable(proxy: &TestProxy) {
    assert!(wait_until(READY, || async { readiness_detail(proxy).await == "Truedat unreachable" }).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Brings the fake back and returns how long the proxy then took to be ready.
async fn time_to_ready(fake: &mut FakeTruedat, proxy: &TestProxy, limit: Duration) -> Option<Duration> {
    fake.listen_again().await.expect("the port is free again");
    let back = Instant::now();
    proxy.wait_ready(limit).await.then(|| back.elapsed())
}

#[tokio::test]
async fn truedat_back_after_a_refused_start_is_noticed_by_a_probe_not_the_backoff() {
    let mut fake = fake(|_| {}).await;
    fake.stop_listening().await;
    let proxy = TestProxy::start(&fake, long_backoff).await;
    wait_unreachable(&proxy).await;

    let took = time_to_ready(&mut fake, &proxy, SOON).await;
    assert!(took.is_some(), "not ready within {SOON:?} of Truedat's return");
    assert_eq!(fake.login_attempts(), 1, "the probe brought the login forward, it did not add one");
    assert_eq!(fake.pings(), 1, "probing stops at the first 200");
    assert_eq!(proxy.get("/api/data").await.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn a_restart_longer_than_the_token_life_heals_soon_after_truedat_returns() {
    let mut fake = fake(|c| c.token_ttl = Duration::from_secs(2)).await;
    let proxy = TestProxy::start(&fake, long_backoff).await;
    assert!(proxy.wait_ready(READY).await);
    fake.stop_listening().await;
    // The 2 s token expires during the outage; readiness says why, as before.
    wait_unreachable(&proxy).await;
    let logins_before = fake.login_attempts();

    let took = time_to_ready(&mut fake, &proxy, SOON).await;
    assert!(took.is_some(), "not ready within {SOON:?} of Truedat's return");
    assert_eq!(fake.login_attempts(), logins_before + 1);
    assert_eq!(proxy.get("/api/data").await.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn with_probing_off_the_backoff_is_waited_out() {
    let mut fake = fake(|_| {}).await;
    fake.stop_listening().await;
    let proxy = TestProxy::start(&fake, |c| {
        long_backoff(c);
        c.token.probe_interval = "0s".parse().unwrap();
    })
    .await;
    wait_unreachable(&proxy).await;

    // The first wait is at least 10 s; 2 s after the return the proxy still waits.
    let took = time_to_ready(&mut fake, &proxy, Duration::from_secs(2)).await;
    assert_eq!(took, None, "ready without probes before the backoff ended");
    assert_eq!(fake.pings(), 0);
    assert_eq!(fake.login_attempts(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn logins_answered_500_are_never_probed() {
    let fake = fake(|_| {}).await;
    fake.set_login_mode(LoginMode::Status(500));
    let proxy = TestProxy::start(&fake, |c| {
        c.token.retry_initial = "100ms".parse().unwrap();
        c.token.retry_max = "400ms".parse().unwrap();
        c.token.probe_interval = "100ms".parse().unwrap();
    })
    .await;
    assert!(wait_until(READY, || async { fake.login_attempts() >= 4 }).await);
    assert_eq!(readiness_detail(&proxy).await, "login failing");
    assert_eq!(fake.pings(), 0, "a 500 says Truedat is reachable: nothing to probe for");

    fake.set_login_mode(LoginMode::Normal);
    assert!(proxy.wait_ready(READY).await);
    assert_eq!(fake.pings(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn an_ingress_answering_503_while_pings_work_is_probed_but_never_cut_short() {
    let fake = fake(|_| {}).await;
    // td-auth behind its ingress has no endpoints, but /api/ping goes to a
    // service that is up: every probe answers 200, none ever failed.
    fake.set_login_mode(LoginMode::Status(503));
    let proxy = TestProxy::start(&fake, |c| {
        c.token.retry_initial = "400ms".parse().unwrap();
        c.token.retry_max = "1600ms".parse().unwrap();
        c.token.probe_interval = "100ms".parse().unwrap();
    })
    .await;
    let started = Instant::now();
    assert!(wait_until(READY, || async { fake.pings() >= 5 }).await, "a 503 from an ingress arms probing");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;

    // Waits of at least 200, 400, 800, 800 ms allow at most 6 attempts in 3 s
    // (one more for a slow scheduler); a 200 that cut waits short would allow 15.
    let attempts = fake.login_attempts();
    assert!((2..=7).contains(&attempts), "{attempts} login attempts in {:?}", started.elapsed());
    fake.set_login_mode(LoginMode::Normal);
    assert!(proxy.wait_ready(READY).await);
    proxy.stop().await;
}
