//! The egress proxy (SPEC §2 `upstream.egress_proxy`; issue 3): Truedat is
//! reached through an HTTP CONNECT tunnel, either the configured one or the
//! one `HTTPS_PROXY`/`NO_PROXY` name as curl reads them, and the token only
//! ever travels inside the TLS session to Truedat, so the egress proxy (or
//! anyone logging at it) never sees it. The proxy here is a real CONNECT
//! proxy over real sockets (`support::connect_proxy`).

use std::time::Duration;

use base64::Engine as _;
use truedat_auth_proxy::config::{Config, ProxyEnv};
use truedat_auth_proxy::units::Dur;

use crate::support::client::Client;
use crate::support::connect_proxy::ConnectProxy;
use crate::support::fake_truedat::{FakeConfig, FakeTruedat};
use crate::support::pki::{self, ALPN_BOTH, Ca};
use crate::support::proxy::{BinaryProxy, TestProxy, binary_toml};
use crate::support::wait::wait_until;

/// Generous bound for a login or a state change on a loaded machine.
const READY: Duration = Duration::from_secs(10);

/// The fake's password, which must not cross the egress proxy in clear either.
const PASSWORD: &str = "s3cret-Pa55";

/// A Truedat over HTTPS with a `localhost` certificate from its own CA.
struct HttpsTruedat {
    ca: Ca,
    fake: FakeTruedat,
}

impl HttpsTruedat {
    async fn start() -> HttpsTruedat {
        let ca = Ca::new("test CA");
        let config = pki::server_config(&ca.server_cert("localhost"), ALPN_BOTH);
        let fake = FakeTruedat::start_tls(FakeConfig::default(), config).await;
        HttpsTruedat { ca, fake }
    }

    /// What the egress proxy is asked to connect to.
    fn authority(&self) -> String {
        format!("localhost:{}", self.fake.addr().port())
    }

    /// A proxy for this Truedat, trusting its CA, after `adjust`.
    async fn proxy(&self, adjust: impl FnOnce(&mut Config)) -> TestProxy {
        TestProxy::start(&self.fake, |config| {
            config.upstream.ca_file = Some(self.ca.file().to_owned());
            adjust(config);
        })
        .await
    }

    /// The bearer of the first data request Truedat received.
    fn token(&self) -> String {
        let requests = self.fake.data_requests();
        let request = requests.first().expect("a data request reached Truedat");
        let value = request.headers["authorization"].to_str().expect("an ASCII header");
        value.strip_prefix("Bearer ").expect("a bearer").to_owned()
    }
}

/// Waits until `/readyz` says 503 with `reason`; false after [`READY`].
async fn unready_because(client: &Client, readyz: &str, reason: &str) -> bool {
    wait_until(READY, || async {
        let reply = client.get(readyz).await;
        reply.status == 503 && reply.json()["errors"]["detail"] == reason
    })
    .await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_egress_proxy_carries_the_traffic_and_sees_only_tls() {
    let truedat = HttpsTruedat::start().await;
    let egress = ConnectProxy::start().await;
    let proxy = truedat.proxy(|c| c.upstream.egress_proxy = Some(egress.url())).await;
    assert!(proxy.wait_ready(READY).await);
    let reply = proxy.get("/api/data").await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let connects = egress.connects();
    assert!(!connects.is_empty(), "nothing went through the egress proxy");
    for connect in &connects {
        assert_eq!(connect.target, truedat.authority());
        assert_eq!(connect.status, 200);
        assert_eq!(connect.proxy_authorization, None);
    }

    let token = truedat.token();
    let relayed = egress.relayed();
    assert!(egress.relayed_bytes() > 0);
    assert_eq!(egress.relayed_to_target().first(), Some(&0x16), "the tunnel starts with a TLS handshake record");
    for secret in [token.as_str(), PASSWORD, "Bearer", "_td_refresh", "/api/sessions"] {
        assert!(!contains(&relayed, secret.as_bytes()), "{secret:?} crossed the egress proxy in clear");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn https_proxy_from_the_environment_is_used() {
    let truedat = HttpsTruedat::start().await;
    let egress = ConnectProxy::start().await;
    let env = ProxyEnv { https: Some(egress.url()), ..ProxyEnv::default() };
    let proxy = truedat.proxy(|c| c.proxy_env = env).await;
    assert!(proxy.wait_ready(READY).await);
    assert_eq!(proxy.get("/api/data").await.status, 200);

    let connects = egress.connects();
    assert!(!connects.is_empty(), "https_proxy was ignored");
    assert!(connects.iter().all(|c| c.target == truedat.authority() && c.status == 200), "{connects:?}");
    assert!(!contains(&egress.relayed(), truedat.token().as_bytes()));
    proxy.stop().await;
}

#[tokio::test]
async fn no_proxy_naming_the_host_goes_direct() {
    let truedat = HttpsTruedat::start().await;
    let egress = ConnectProxy::start().await;
    for no in ["localhost", "example.com,localhost", "*"] {
        let env = ProxyEnv { https: Some(egress.url()), no: Some(no.to_owned()), ..ProxyEnv::default() };
        let proxy = truedat.proxy(|c| c.proxy_env = env).await;
        assert!(proxy.wait_ready(READY).await, "NO_PROXY={no}");
        assert_eq!(proxy.get("/api/data").await.status, 200, "NO_PROXY={no}");
        proxy.stop().await;
    }
    assert!(egress.connects().is_empty(), "NO_PROXY was ignored: {:?}", egress.connects());
}

#[tokio::test]
async fn the_configured_egress_proxy_wins_over_the_environment() {
    let truedat = HttpsTruedat::start().await;
    let configured = ConnectProxy::start().await;
    let from_env = ConnectProxy::start().await;
    let env = ProxyEnv { https: Some(from_env.url()), no: Some("localhost".into()), ..ProxyEnv::default() };
    let proxy = truedat
        .proxy(|c| {
            c.upstream.egress_proxy = Some(configured.url());
            c.proxy_env = env;
        })
        .await;
    assert!(proxy.wait_ready(READY).await);
    assert_eq!(proxy.get("/api/data").await.status, 200);
    assert!(!configured.connects().is_empty());
    assert!(from_env.connects().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn proxy_credentials_in_https_proxy_are_sent_as_basic_auth() {
    let truedat = HttpsTruedat::start().await;
    let egress = ConnectProxy::start_with_basic_auth("egress-user", "egress-pw").await;

    let anonymous = ProxyEnv { https: Some(egress.url()), ..ProxyEnv::default() };
    let refused = truedat.proxy(|c| c.proxy_env = anonymous).await;
    assert!(unready_because(&refused.client, &refused.admin_url("/readyz"), "Truedat unreachable").await);
    refused.stop().await;
    assert!(egress.connects().iter().all(|c| c.status == 407));

    let with_credentials = format!("http://egress-user:egress-pw@{}", egress.addr());
    let env = ProxyEnv { https: Some(with_credentials), ..ProxyEnv::default() };
    let proxy = truedat.proxy(|c| c.proxy_env = env).await;
    assert!(proxy.wait_ready(READY).await);
    assert_eq!(proxy.get("/api/data").await.status, 200);
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("egress-user:egress-pw"));
    let accepted: Vec<_> = egress.connects().into_iter().filter(|c| c.status == 200).collect();
    assert!(!accepted.is_empty());
    assert!(accepted.iter().all(|c| c.proxy_authorization.as_deref() == Some(expected.as_str())), "{accepted:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn the_binary_honours_https_proxy_from_its_environment() {
    let truedat = HttpsTruedat::start().await;
    let egress = ConnectProxy::start().await;
    let ca_file = format!("upstream.ca_file = {}", toml::Value::String(truedat.ca.file().display().to_string()));
    let toml = binary_toml(&truedat.fake.url(), &[&ca_file]);
    let url = egress.url();
    // Lower-case names win over upper case (as in curl): blank them so that
    // only HTTPS_PROXY decides, whatever the environment running the tests.
    let env = [("https_proxy", ""), ("HTTPS_PROXY", url.as_str()), ("no_proxy", ""), ("NO_PROXY", "")];
    let mut binary = BinaryProxy::spawn(&toml, &env).await;
    let client = Client::new();
    let ready = wait_until(READY, || async { client.get(&binary.admin_url("/readyz")).await.status == 200 }).await;
    assert!(ready, "output:\n{}", binary.output());
    let reply = client.get(&binary.url("/api/data")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let connects = egress.connects();
    assert!(!connects.is_empty(), "HTTPS_PROXY was ignored; output:\n{}", binary.output());
    assert!(connects.iter().all(|c| c.target == truedat.authority()));
    assert!(!contains(&egress.relayed(), truedat.token().as_bytes()));
    assert!(binary.output().contains("through an egress proxy"), "output:\n{}", binary.output());
    binary.signal("TERM");
    assert!(binary.wait_exit(READY).await.success(), "output:\n{}", binary.output());
}

#[tokio::test]
async fn an_unreachable_egress_proxy_leaves_the_proxy_unready() {
    let truedat = HttpsTruedat::start().await;
    // A port that was free a moment ago and has nobody listening now.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
        listener.local_addr().expect("a bound listener has an address")
    };
    let proxy = truedat
        .proxy(|c| {
            c.upstream.egress_proxy = Some(format!("http://{closed}"));
            c.token.first_token_wait = Dur::millis(200);
        })
        .await;
    assert!(unready_because(&proxy.client, &proxy.admin_url("/readyz"), "Truedat unreachable").await);
    let reply = proxy.get("/api/data").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(truedat.fake.login_attempts(), 0, "Truedat is only reachable through the egress proxy");
    proxy.stop().await;
}
