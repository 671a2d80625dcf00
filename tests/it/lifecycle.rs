//! The token's life as a tool behind the proxy sees it: first login,
//! renewal before expiry, revocation healed by one login and a replay,
//! failures that keep the proxy up and unready, and recovery. What a 401
//! sets off (a login, a replay) and an expired token are checked on both ways
//! to Truedat ([`Hop`]); the rest is the token's own life, above either path.

use std::time::Duration;

use futures_util::future::join_all;
use http::Method;

use crate::support::fake_truedat::{FakeConfig, LoginMode};
use crate::support::hops::Hop;
use crate::support::proxy::{TestProxy, fake};
use crate::support::wait::wait_until;

const READY: Duration = Duration::from_secs(10);

#[tokio::test]
async fn startup_login_sends_the_documented_body_and_headers() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::start(&fake, |_| {}).await;
    assert!(proxy.wait_ready(READY).await);

    let logins = fake.login_requests();
    assert_eq!(logins.len(), 1);
    let login = &logins[0];
    assert_eq!(login.method, Method::POST);
    assert_eq!(login.uri.path(), "/api/sessions");
    assert_eq!(login.headers["content-type"], "application/json");
    assert_eq!(login.headers["accept"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&login.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"access_method": "alternative_login", "user": {"user_name": "svc-proxy", "password": "s3cret-Pa55"}})
    );
    proxy.stop().await;
}

#[tokio::test]
async fn not_ready_until_the_first_token_then_ready() {
    let fake = fake(|_| {}).await;
    fake.set_login_mode(LoginMode::Hang);
    let proxy = TestProxy::start(&fake, |c| c.token.first_token_wait = "100ms".parse().unwrap()).await;

    assert!(wait_until(READY, || async { fake.login_attempts() >= 1 }).await);
    let readyz = proxy.client.get(&proxy.admin_url("/readyz")).await;
    assert_eq!(readyz.status, 503);
    assert_eq!(readyz.json()["errors"]["detail"], "no token yet");
    let early = proxy.get("/api/data").await;
    assert_eq!(early.status, 503);
    assert!(early.header("retry-after").is_some());
    assert!(fake.data_requests().is_empty(), "nothing may be forwarded without a token");

    fake.set_login_mode(LoginMode::Normal);
    assert!(proxy.wait_ready(READY).await);
    assert_eq!(proxy.get("/api/data").await.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_arriving_before_the_first_token_waits_for_it() {
    let fake = fake(|_| {}).await;
    fake.set_login_mode(LoginMode::Hang);
    let proxy = TestProxy::start(&fake, |c| c.token.first_token_wait = "10s".parse().unwrap()).await;
    assert!(wait_until(READY, || async { fake.login_attempts() >= 1 }).await);

    let waiting = tokio::spawn({
        let client = proxy.client.clone();
        let url = proxy.url("/api/data");
        async move { client.get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.set_login_mode(LoginMode::Normal);
    assert_eq!(waiting.await.unwrap().status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn renews_before_expiry_with_no_failed_request_under_continuous_traffic() {
    let fake = fake(|c| c.token_ttl = Duration::from_secs(3)).await;
    let proxy = TestProxy::start(&fake, |_| {}).await;
    assert!(proxy.wait_ready(READY).await);

    let until = tokio::time::Instant::now() + Duration::from_secs(7);
    let mut requests = 0;
    while tokio::time::Instant::now() < until {
        let reply = proxy.get("/api/data").await;
        assert_eq!(reply.status, 200, "request {requests} failed: {}", reply.text());
        requests += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A 3 s token is renewed at least every 1.5 s; 7 s of traffic sees several renewals.
    assert!(fake.logins() >= 4, "only {} logins in 7 s of 3 s tokens", fake.logins());
    assert!(requests > 50);
    let unauthorized = fake.data_requests().len() - requests;
    assert_eq!(unauthorized, 0, "the proxy sent a dead token and had to replay");
    proxy.stop().await;
}

#[tokio::test]
async fn revocation_is_healed_by_exactly_one_login_and_a_replay() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;
        assert_eq!(proxy.get("/api/data").await.status, 200, "{hop}");

        fake.revoke_all();
        let reply = proxy.get("/api/data").await;
        assert_eq!(reply.status, 200, "{hop}: {}", reply.text());
        assert_eq!(fake.logins(), 2, "{hop}");
        // The first attempt carried the dead token, the replay the new one.
        let requests = hop.data_requests(&fake);
        assert_eq!(requests.len(), 3, "{hop}");
        assert_ne!(requests[1].headers["authorization"], requests[2].headers["authorization"], "{hop}");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn fifty_concurrent_requests_after_a_revocation_share_one_login() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;

        fake.revoke_all();
        let urls: Vec<String> = (0..50).map(|i| proxy.url(&format!("/api/data?i={i}"))).collect();
        let replies = join_all(urls.iter().map(|url| proxy.client.get(url))).await;
        for reply in &replies {
            assert_eq!(reply.status, 200, "{hop}: {}", reply.text());
        }
        assert_eq!(fake.logins(), 2, "{hop}: a burst of 401s must cause exactly one login");
        assert!(hop.data_requests(&fake).len() > 50, "{hop}: requests with the dead token were replayed");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_small_post_is_replayed_with_its_body_intact() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;

        fake.revoke_all();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let reply = proxy.client.call(Method::POST, &proxy.url("/api/upload"), body.clone()).await;
        assert_eq!(reply.status, 200, "{hop}: {}", reply.text());
        assert_eq!(reply.json()["bytes"], 200_000, "{hop}");
        assert_eq!(reply.json()["sha256"], sha256_hex(&body), "{hop}");
        assert_eq!(fake.logins(), 2, "{hop}");
        assert_eq!(hop.tries(&fake, "/api/upload"), 2, "{hop}: the try and its replay");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_body_over_the_replay_limit_gets_truedats_401_and_the_next_request_works() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|c| c.proxy.replay_body_limit = "1KiB".parse().unwrap()).await;

        fake.revoke_all();
        let reply = proxy.client.call(Method::POST, &proxy.url("/api/upload"), vec![b'x'; 64 * 1024]).await;
        assert_eq!(reply.status, 401, "{hop}");
        assert_eq!(reply.json(), serde_json::json!({"message": "unauthorized"}), "{hop}");
        let relogged = wait_until(READY, || async { fake.logins() == 2 }).await;
        assert!(relogged, "{hop}: the 401 must still trigger a login");
        assert_eq!(proxy.get("/api/data").await.status, 200, "{hop}");
        assert_eq!(fake.logins(), 2, "{hop}");
        assert_eq!(hop.tries(&fake, "/api/upload"), 1, "{hop}: a body over the limit is not replayed");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_403_is_an_answer_not_a_reason_to_log_in() {
    for hop in Hop::BOTH {
        let (fake, proxy) = hop.proxy(|_| {}).await;
        let reply = proxy.get("/api/forbidden").await;
        assert_eq!(reply.status, 403, "{hop}");
        assert_eq!(reply.json()["errors"]["detail"], "Invalid authorization", "{hop}");
        assert_eq!(fake.logins(), 1, "{hop}");
        assert_eq!(hop.tries(&fake, "/api/forbidden"), 1, "{hop}: nothing was replayed");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn wrong_password_keeps_the_proxy_up_unready_and_backing_off() {
    let fake = fake(|_| {}).await;
    fake.set_password("rotated-elsewhere");
    let proxy = TestProxy::start(&fake, |c| c.token.first_token_wait = "100ms".parse().unwrap()).await;

    assert!(wait_until(READY, || async { fake.login_attempts() >= 2 }).await);
    let readyz = proxy.client.get(&proxy.admin_url("/readyz")).await;
    assert_eq!(readyz.status, 503);
    assert_eq!(readyz.json()["errors"]["detail"], "credentials rejected");
    let reply = proxy.get("/api/data").await;
    assert_eq!(reply.status, 503);
    assert!(reply.header("retry-after").is_some());
    assert!(reply.json()["errors"]["detail"].as_str().unwrap().contains("credentials rejected"));
    assert_eq!(proxy.client.get(&proxy.admin_url("/healthz")).await.status, 200);

    // Backoff: 50 ms doubling to 400 ms allows at most ~12 attempts in 2 s.
    let before = fake.login_attempts();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = fake.login_attempts() - before;
    assert!((2..=12).contains(&attempts), "{attempts} login attempts in 2 s");

    fake.set_password("s3cret-Pa55");
    assert!(proxy.wait_ready(READY).await);
    assert_eq!(proxy.get("/api/data").await.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn truedat_down_at_start_then_up_makes_the_proxy_ready() {
    let down = fake(|_| {}).await;
    let addr = down.addr();
    let port = down.shutdown_keeping_port().await;
    let proxy = TestProxy::start_with(crate::support::proxy::test_config(&format!("http://{addr}"))).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let readyz = proxy.client.get(&proxy.admin_url("/readyz")).await;
    assert_eq!(readyz.status, 503);
    assert_eq!(readyz.json()["errors"]["detail"], "Truedat unreachable");

    let fake = port.reopen(Default::default()).await.unwrap();
    assert!(proxy.wait_ready(READY).await);
    assert_eq!(proxy.get("/api/data").await.status, 200);
    assert_eq!(fake.logins(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn malformed_login_answers_keep_the_proxy_unready_until_truedat_recovers() {
    for mode in [LoginMode::Status(500), LoginMode::Html, LoginMode::NoToken, LoginMode::NotJson, LoginMode::Hang] {
        let fake = fake(|_| {}).await;
        fake.set_login_mode(mode.clone());
        let proxy = TestProxy::start(&fake, |c| c.token.login_timeout = "300ms".parse().unwrap()).await;
        assert!(wait_until(READY, || async { fake.login_attempts() >= 2 }).await, "{mode:?}");
        assert_eq!(proxy.client.get(&proxy.admin_url("/readyz")).await.status, 503, "{mode:?}");

        fake.set_login_mode(LoginMode::Normal);
        assert!(proxy.wait_ready(READY).await, "{mode:?}: no recovery");
        assert_eq!(proxy.get("/api/data").await.status, 200);
        proxy.stop().await;
    }
}

#[tokio::test]
async fn an_expired_token_is_never_forwarded_while_truedat_refuses_logins() {
    for hop in Hop::BOTH {
        let fake = hop.fake(FakeConfig { token_ttl: Duration::from_secs(2), ..FakeConfig::default() }).await;
        let proxy = TestProxy::ready(&fake, |c| {
            hop.configure(c);
            c.token.first_token_wait = "200ms".parse().unwrap();
        })
        .await;
        fake.set_login_mode(LoginMode::Status(500));

        // The token is usable for at most 1 s of its 2 s; afterwards only 503s.
        assert!(wait_until(READY, || async { proxy.get("/api/data").await.status == 503 }).await, "{hop}");
        let forwarded = hop.data_requests(&fake).len();
        for _ in 0..5 {
            let reply = proxy.get("/api/data").await;
            assert_eq!(reply.status, 503, "{hop}");
            assert!(reply.header("retry-after").is_some(), "{hop}");
        }
        assert_eq!(hop.data_requests(&fake).len(), forwarded, "{hop}: an expired token was forwarded");
        let readyz = proxy.client.get(&proxy.admin_url("/readyz")).await;
        assert_eq!(readyz.status, 503, "{hop}");
        proxy.stop().await;
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
