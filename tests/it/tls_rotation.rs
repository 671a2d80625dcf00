//! TLS material rotation (SPEC §4 "TLS material"; issue 10, item 3): the CA
//! file and the client certificate and key are re-read when their content
//! changes, without a restart, including when they are updated the way the
//! kubelet updates a mounted Secret (a `..data` symlink swap, see
//! `support::secret_dir`). New connections use the new material; material
//! that cannot be used is logged once and the previous one stays in use.
//!
//! Retries are turned off (`retry.window = "0s"`) so that a TLS failure shows
//! as one 502 at once, and `upstream.pool_idle_timeout` is tiny so that each
//! request needs a new connection, hence a new handshake with the current
//! material.

use std::time::Duration;

use serde_json::Value;
use truedat_auth_proxy::config::Config;
use truedat_auth_proxy::units::Dur;

use crate::support::client::Client;
use crate::support::fake_truedat::{FakeConfig, FakeTruedat};
use crate::support::pki::{self, ALPN_BOTH, Ca, Leaf};
use crate::support::prometheus::Scrape;
use crate::support::proxy::{BinaryProxy, TestProxy, binary_toml, fake, test_config};
use crate::support::relay::{TcpRelay, TlsFront};
use crate::support::secret_dir::SecretDir;
use crate::support::wait::wait_until;

/// Bound for a login, or for a rotation to be noticed by the binary (which
/// checks every 2 s), on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(15);
/// How often the in-process proxy checks its TLS files.
const FAST_POLL: Duration = Duration::from_millis(50);
const GAUGE: &str = "truedat_proxy_client_cert_expiry_timestamp_seconds";

/// The test settings every rotation test shares (see the module comment).
fn no_retries_no_pool(config: &mut Config) {
    config.retry.window = Dur::secs(0);
    config.upstream.pool_idle_timeout = Dur::millis(10);
}

#[tokio::test]
async fn a_ca_file_swapped_like_a_kubernetes_secret_is_trusted_without_a_restart() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let fake = fake(|_| {}).await;
    let old_front = TlsFront::start(pki::server_config(&old_ca.server_cert("localhost"), ALPN_BOTH), fake.addr()).await;
    let new_front = TlsFront::start(pki::server_config(&new_ca.server_cert("localhost"), ALPN_BOTH), fake.addr()).await;
    let relay = TcpRelay::start(old_front.addr()).await;
    let mut secret = SecretDir::new(&[("ca.crt", &old_ca.pem())]);
    let mut config = test_config(&format!("https://localhost:{}", relay.addr().port()));
    config.upstream.ca_file = Some(secret.path("ca.crt"));
    no_retries_no_pool(&mut config);
    let proxy = TestProxy::start_with_tls_poll(config, FAST_POLL).await;
    assert!(proxy.wait_ready(PATIENCE).await);
    assert_eq!(proxy.get("/api/data").await.status, 200);

    // Truedat now presents a certificate from a CA the proxy does not trust yet.
    relay.switch_to(new_front.addr());
    let reply = proxy.get("/api/data").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(new_front.sessions().is_empty(), "no handshake with an untrusted CA completes");

    secret.update(&[("ca.crt", &new_ca.pem())]);
    let trusted = wait_until(PATIENCE, || async { proxy.get("/api/data").await.status == 200 }).await;
    assert!(trusted, "the new CA was never trusted");
    assert!(!new_front.sessions().is_empty());

    // The old CA is gone from the file, so it is no longer trusted.
    relay.switch_to(old_front.addr());
    assert_eq!(proxy.get("/api/data").await.status, 502);
    proxy.stop().await;
}

#[tokio::test]
async fn a_ca_file_rewritten_in_place_is_trusted_without_a_restart() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let fake = fake(|_| {}).await;
    let old_front = TlsFront::start(pki::server_config(&old_ca.server_cert("localhost"), ALPN_BOTH), fake.addr()).await;
    let new_front = TlsFront::start(pki::server_config(&new_ca.server_cert("localhost"), ALPN_BOTH), fake.addr()).await;
    let relay = TcpRelay::start(old_front.addr()).await;
    let ca_file = pki::pem_file(&String::from_utf8(old_ca.pem()).expect("PEM is ASCII"));
    let mut config = test_config(&format!("https://localhost:{}", relay.addr().port()));
    config.upstream.ca_file = Some(ca_file.path().to_owned());
    no_retries_no_pool(&mut config);
    let proxy = TestProxy::start_with_tls_poll(config, FAST_POLL).await;
    assert!(proxy.wait_ready(PATIENCE).await);

    relay.switch_to(new_front.addr());
    assert_eq!(proxy.get("/api/data").await.status, 502);
    // Both CAs in one bundle, written over the same inode.
    let bundle = [old_ca.pem(), new_ca.pem()].concat();
    std::fs::write(ca_file.path(), bundle).expect("rewriting the CA file");
    assert!(wait_until(PATIENCE, || async { proxy.get("/api/data").await.status == 200 }).await);
    relay.switch_to(old_front.addr());
    assert_eq!(proxy.get("/api/data").await.status, 200, "the bundle still holds the old CA");
    proxy.stop().await;
}

/// A fake demanding a client certificate from `client_ca`, presenting a
/// `localhost` certificate from `ca`.
async fn mutual_tls_fake(ca: &Ca, client_ca: &Ca) -> FakeTruedat {
    let config = pki::mutual_tls_server_config(&ca.server_cert("localhost"), ALPN_BOTH, client_ca);
    FakeTruedat::start_tls(FakeConfig::default(), config).await
}

/// A Secret-like directory holding `leaf` as `tls.crt` and `tls.key`.
fn identity_files(leaf: &Leaf) -> [(&'static str, Vec<u8>); 2] {
    [("tls.crt", leaf.cert_pem()), ("tls.key", leaf.key_pem())]
}

fn as_files<'a>(files: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    files.iter().map(|(name, bytes)| (*name, bytes.as_slice())).collect()
}

/// The binary in front of `fake`, trusting `ca`, presenting the client
/// certificate in `secret`; no retries, no pooled connections.
async fn binary_with_identity(fake: &FakeTruedat, ca: &Ca, secret: &SecretDir) -> BinaryProxy {
    let line =
        |key: &str, path: &std::path::Path| format!("{key} = {}", toml::Value::String(path.display().to_string()));
    let extra = [
        line("upstream.ca_file", ca.file()),
        line("upstream.client_cert_file", &secret.path("tls.crt")),
        line("upstream.client_key_file", &secret.path("tls.key")),
        "upstream.pool_idle_timeout = \"10ms\"".to_owned(),
        "retry.window = \"0s\"".to_owned(),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    BinaryProxy::spawn(&binary_toml(&fake.url(), &extra), &[]).await
}

/// `GET /api/data` through the binary answered 200 on a connection that
/// presented `serial`.
async fn served_with(client: &Client, proxy: &BinaryProxy, fake: &FakeTruedat, serial: &str) -> bool {
    client.get(&proxy.url("/api/data")).await.status == 200
        && fake.client_cert_serials().last().is_some_and(|last| last.as_deref() == Some(serial))
}

/// The client-certificate expiry gauge of the binary, if exported.
async fn expiry_gauge(client: &Client, proxy: &BinaryProxy) -> Option<f64> {
    let text = client.get(&proxy.admin_url("/metrics")).await.text();
    Scrape::parse(&text).expect("/metrics is Prometheus text").value(GAUGE, &[])
}

/// The JSON log lines at level `level` whose message contains `needle`.
fn log_lines(output: &str, level: &str, needle: &str) -> usize {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|json| json["level"] == level && json["message"].as_str().is_some_and(|m| m.contains(needle)))
        .count()
}

async fn ready(client: &Client, proxy: &BinaryProxy) {
    let ready = wait_until(PATIENCE, || async { client.get(&proxy.admin_url("/readyz")).await.status == 200 }).await;
    assert!(ready, "/readyz never answered 200; output:\n{}", proxy.output());
}

#[tokio::test]
async fn a_rotated_client_certificate_is_presented_and_its_expiry_exported() {
    let (ca, client_ca) = (Ca::new("test CA"), Ca::new("client CA"));
    let fake = mutual_tls_fake(&ca, &client_ca).await;
    let (first, second) =
        (client_ca.client_cert_until("svc-proxy", 2090), client_ca.client_cert_until("svc-proxy", 2095));
    let (first_serial, second_serial) = (first.serial(), second.serial());
    assert_ne!(first_serial, second_serial);
    let mut secret = SecretDir::new(&as_files(&identity_files(&first)));
    let mut proxy = binary_with_identity(&fake, &ca, &secret).await;
    let client = Client::new();
    ready(&client, &proxy).await;
    assert!(served_with(&client, &proxy, &fake, &first_serial).await, "{:?}", fake.client_cert_serials());
    assert_eq!(expiry_gauge(&client, &proxy).await, Some(first.not_after_unix() as f64));

    secret.update(&as_files(&identity_files(&second)));
    let rotated = wait_until(PATIENCE, || served_with(&client, &proxy, &fake, &second_serial)).await;
    assert!(rotated, "the new certificate was never presented: {:?}\n{}", fake.client_cert_serials(), proxy.output());
    assert_eq!(expiry_gauge(&client, &proxy).await, Some(second.not_after_unix() as f64));
    assert_eq!(log_lines(&proxy.output(), "INFO", "TLS material reloaded"), 1, "{}", proxy.output());
    assert_eq!(log_lines(&proxy.output(), "ERROR", "TLS material"), 0, "{}", proxy.output());
    assert!(fake.client_cert_serials().iter().all(Option::is_some), "every connection presented a certificate");
    proxy.signal("TERM");
    assert!(proxy.wait_exit(PATIENCE).await.success(), "{}", proxy.output());
}

#[tokio::test]
async fn garbage_over_a_rotated_certificate_keeps_the_previous_one_with_one_error_line() {
    let (ca, client_ca) = (Ca::new("test CA"), Ca::new("client CA"));
    let fake = mutual_tls_fake(&ca, &client_ca).await;
    let (first, second) =
        (client_ca.client_cert_until("svc-proxy", 2090), client_ca.client_cert_until("svc-proxy", 2095));
    let mut secret = SecretDir::new(&as_files(&identity_files(&first)));
    let second_serial = second.serial();
    let mut proxy = binary_with_identity(&fake, &ca, &secret).await;
    let client = Client::new();
    ready(&client, &proxy).await;
    secret.update(&as_files(&identity_files(&second)));
    assert!(wait_until(PATIENCE, || served_with(&client, &proxy, &fake, &second_serial)).await);

    // Garbage certificate, same key: not PEM at all.
    secret.update(&[("tls.crt", b"not a certificate\n"), ("tls.key", &second.key_pem())]);
    let errors = || log_lines(&proxy.output(), "ERROR", "TLS material changed but cannot be used");
    assert!(wait_until(PATIENCE, || async { errors() == 1 }).await, "no error line:\n{}", proxy.output());
    assert!(proxy.output().contains("upstream.client_cert_file"), "{}", proxy.output());
    // The binary checks every 2 s: for three checks, every new connection
    // still presents the previous certificate, and the error is not repeated.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        assert!(served_with(&client, &proxy, &fake, &second_serial).await, "{:?}", fake.client_cert_serials());
        assert_eq!(errors(), 1, "{}", proxy.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(expiry_gauge(&client, &proxy).await, Some(second.not_after_unix() as f64));

    // A certificate whose key does not fit: one more change, one more line.
    let stranger = client_ca.client_cert_until("svc-proxy", 2099);
    secret.update(&[("tls.crt", &stranger.cert_pem()), ("tls.key", &second.key_pem())]);
    assert!(wait_until(PATIENCE, || async { errors() == 2 }).await, "{}", proxy.output());
    assert!(served_with(&client, &proxy, &fake, &second_serial).await);
    proxy.signal("TERM");
    assert!(proxy.wait_exit(PATIENCE).await.success(), "{}", proxy.output());
}

#[tokio::test]
async fn without_a_client_certificate_no_expiry_is_exported() {
    let fake = fake(|_| {}).await;
    let proxy = BinaryProxy::spawn(&binary_toml(&fake.url(), &[]), &[]).await;
    let client = Client::new();
    ready(&client, &proxy).await;
    assert_eq!(expiry_gauge(&client, &proxy).await, None);
}

/// Issue #16: a bundle holding a new CA followed by half of Truedat's CA
/// (a writer cut short) was logged as reloaded, and every new connection
/// then failed with `UnknownIssuer`. One bad block makes the file invalid:
/// one error line, and the previous material stays in use.
#[tokio::test]
async fn a_ca_bundle_cut_short_keeps_the_previous_material_with_one_error_line() {
    let (truedat_ca, new_ca) = (Ca::new("Truedat CA"), Ca::new("new CA"));
    let tls = pki::server_config(&truedat_ca.server_cert("localhost"), ALPN_BOTH);
    let fake = FakeTruedat::start_tls(FakeConfig::default(), tls).await;
    let ca_file = pki::pem_file(&String::from_utf8(truedat_ca.pem()).expect("PEM is ASCII"));
    let extra = [
        format!("upstream.ca_file = {}", toml::Value::String(ca_file.path().display().to_string())),
        "upstream.pool_idle_timeout = \"10ms\"".to_owned(),
        "retry.window = \"0s\"".to_owned(),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut proxy = BinaryProxy::spawn(&binary_toml(&fake.url(), &extra), &[]).await;
    let client = Client::new();
    ready(&client, &proxy).await;

    let truedat_pem = truedat_ca.pem();
    let cut = [new_ca.pem(), truedat_pem[..truedat_pem.len() / 2].to_vec()].concat();
    std::fs::write(ca_file.path(), cut).expect("rewriting the CA file");
    let errors = || log_lines(&proxy.output(), "ERROR", "TLS material changed but cannot be used");
    assert!(wait_until(PATIENCE, || async { errors() == 1 }).await, "no error line:\n{}", proxy.output());
    assert!(proxy.output().contains("upstream.ca_file"), "{}", proxy.output());
    // Three checks of the binary (every 2 s): each new connection still
    // trusts Truedat's CA, and the error is not repeated.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        let reply = client.get(&proxy.url("/api/data")).await;
        assert_eq!(reply.status, 200, "{}\n{}", reply.text(), proxy.output());
        assert_eq!(errors(), 1, "{}", proxy.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(log_lines(&proxy.output(), "INFO", "TLS material reloaded"), 0, "{}", proxy.output());

    // The whole bundle once the writer is done: reloaded, and still trusted.
    std::fs::write(ca_file.path(), [new_ca.pem(), truedat_ca.pem()].concat()).expect("rewriting the CA file");
    let reloaded = || log_lines(&proxy.output(), "INFO", "TLS material reloaded") == 1;
    assert!(wait_until(PATIENCE, || async { reloaded() }).await, "{}", proxy.output());
    assert_eq!(client.get(&proxy.url("/api/data")).await.status, 200);
    proxy.signal("TERM");
    assert!(proxy.wait_exit(PATIENCE).await.success(), "{}", proxy.output());
}
