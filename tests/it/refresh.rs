//! `token.renew_with = "refresh"` against the real server's rules: the old
//! access token dies the moment it is refreshed, each refresh token works
//! once, and the chain ends when the first refresh token expires.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::fake_truedat::FakeTruedat;
use crate::support::proxy::{TestProxy, fake};

const READY: Duration = Duration::from_secs(10);

/// Runs `workers` keep-alive loops of GETs for `length`; returns how many
/// requests were answered, panicking on the first one that was not a 200.
async fn traffic(proxy: &TestProxy, workers: usize, length: Duration) -> usize {
    let answered = Arc::new(AtomicUsize::new(0));
    let until = tokio::time::Instant::now() + length;
    let loops = (0..workers).map(|w| {
        let (client, answered) = (proxy.client.clone(), answered.clone());
        let url = proxy.url(&format!("/api/data?worker={w}"));
        tokio::spawn(async move {
            while tokio::time::Instant::now() < until {
                let reply = client.get(&url).await;
                assert_eq!(reply.status, 200, "worker {w}: {}", reply.text());
                answered.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    for worker in futures_util::future::join_all(loops).await {
        worker.expect("no request failed");
    }
    answered.load(Ordering::Relaxed)
}

async fn refreshing_proxy(fake: &FakeTruedat) -> TestProxy {
    let proxy = TestProxy::start(fake, |c| c.token.renew_with = truedat_auth_proxy::config::RenewWith::Refresh).await;
    assert!(proxy.wait_ready(READY).await);
    proxy
}

#[tokio::test]
async fn several_refreshes_under_continuous_traffic_lose_no_request() {
    let fake = fake(|c| c.token_ttl = Duration::from_secs(3)).await;
    let proxy = refreshing_proxy(&fake).await;

    // Eight concurrent loops: some requests are always in flight with the
    // token a refresh just revoked, and must be replayed, not failed.
    let answered = traffic(&proxy, 8, Duration::from_secs(7)).await;
    assert!(answered > 100, "{answered}");
    assert!(fake.refreshes() >= 3, "only {} refreshes in 7 s of 3 s tokens", fake.refreshes());
    assert_eq!(fake.logins(), 1, "refresh mode sent the password again");
    proxy.stop().await;
}

#[tokio::test]
async fn a_legacy_server_with_the_refresh_token_in_the_body_is_refreshed_too() {
    let fake = fake(|c| {
        c.token_ttl = Duration::from_secs(3);
        c.legacy_refresh_in_body = true;
    })
    .await;
    let proxy = refreshing_proxy(&fake).await;
    traffic(&proxy, 2, Duration::from_secs(4)).await;
    assert!(fake.refreshes() >= 2, "{} refreshes", fake.refreshes());
    assert_eq!(fake.logins(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn when_the_refresh_chain_ends_the_proxy_logs_in_again() {
    // Refresh tokens live 4 s from the login: after that only a login works.
    // (3 s access tokens: the proxy obtains at most one token a second, so
    // shorter ones would lapse before they could be refreshed.)
    let fake = fake(|c| {
        c.token_ttl = Duration::from_secs(3);
        c.refresh_ttl = Duration::from_secs(4);
    })
    .await;
    let proxy = refreshing_proxy(&fake).await;
    traffic(&proxy, 2, Duration::from_secs(7)).await;
    assert!(fake.refreshes() >= 1, "{} refreshes", fake.refreshes());
    assert!(fake.logins() >= 2, "the chain ended but no new login: {} logins", fake.logins());
    proxy.stop().await;
}

#[tokio::test]
async fn a_revoked_session_is_healed_by_a_login_not_a_refresh() {
    let fake = fake(|_| {}).await;
    let proxy = refreshing_proxy(&fake).await;
    fake.revoke_all();
    assert_eq!(proxy.get("/api/data").await.status, 200);
    assert_eq!(fake.logins(), 2);
    assert_eq!(fake.refreshes(), 0, "a dead bearer cannot be refreshed");
    proxy.stop().await;
}
