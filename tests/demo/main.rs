//! `cargo run --example demo`: the proxy in front of the project's fake
//! Truedat, so a newcomer can watch it work without a real Truedat.
//!
//! The fake issues real 30-second JWTs, so renewals show up in the log
//! within a minute. `--tour` runs a scripted walk through the main behaviours
//! (plain request, revocation healed by a replay, the refused session route,
//! readiness and metrics) and exits, which CI uses to keep this demo honest.

/// The parts of the test support the demo needs (not the binary runner).
#[path = "../support"]
mod support {
    #![allow(dead_code)]
    pub mod client;
    pub mod fake_truedat;
    pub mod jwt;
    pub mod tls;
    pub mod wait;
}

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use secrecy::SecretString;
use support::client::Client;
use support::fake_truedat::{FakeConfig, FakeTruedat};
use tokio_util::sync::CancellationToken;
use truedat_auth_proxy::app::{App, Bound};
use truedat_auth_proxy::config::{Config, LogFormat};
use truedat_auth_proxy::units::Dur;

#[tokio::main]
async fn main() -> ExitCode {
    let tour = std::env::args().any(|a| a == "--tour");
    let fake = FakeTruedat::start(FakeConfig { token_ttl: Duration::from_secs(30), ..FakeConfig::default() }).await;
    let config = demo_config(&fake, tour);
    if let Err(e) = truedat_auth_proxy::telemetry::init_logging(&config.log) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("demo: {e}\n(is another program using port 8080 or 9090? stop it and try again)");
            return ExitCode::FAILURE;
        }
    };
    let bound = app.bound();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    print_instructions(&fake, bound);
    let result = if tour { run_tour(&fake, bound).await } else { wait_for_ctrl_c().await };
    shutdown.cancel();
    let _ = running.await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo tour failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The documented ports for a person; free ports for the scripted tour, so
/// it also runs where 8080 is taken.
fn demo_config(fake: &FakeTruedat, tour: bool) -> Config {
    let defaults = FakeConfig::default();
    let mut config = Config::default();
    if tour {
        config.listen.address = "127.0.0.1:0".parse().expect("valid address");
        config.admin.address = "127.0.0.1:0".parse().expect("valid address");
    }
    config.upstream.url = Some(fake.url());
    config.credentials.user_name = Some(defaults.user_name);
    config.credentials.password = Some(SecretString::from(defaults.password));
    config.token.refresh_before = Dur::secs(10);
    config.shutdown.drain_timeout = Dur::secs(5);
    config.log.format = LogFormat::Text;
    config
}

fn print_instructions(fake: &FakeTruedat, bound: Bound) {
    let Bound { proxy, admin } = bound;
    println!(
        "
  Fake Truedat:         {fake}   (user svc-proxy, 30 s tokens)
  truedat-auth-proxy:   http://{proxy}   (admin: http://{admin})

  Try, from another terminal (no credentials anywhere):
    curl -s http://{proxy}/api/data_structures?page=1      # echoed by the fake, with the bearer the proxy added
    curl -s -X POST -d '{{\"q\":1}}' -H 'content-type: application/json' http://{proxy}/api/v2
    curl -s -i http://{proxy}/api/sessions                 # 403: tools cannot touch the proxy's session
    curl -s http://{admin}/readyz
    curl -s http://{admin}/metrics | grep ^truedat_proxy

  Watch the log: a new token every ~20 s, before the old one expires.
  Ctrl-C stops both (graceful shutdown, then logout).
",
        fake = fake.url()
    );
}

async fn wait_for_ctrl_c() -> Result<(), String> {
    tokio::signal::ctrl_c().await.map_err(|e| format!("cannot wait for Ctrl-C: {e}"))
}

/// The scripted walk: each step prints what a user would see and checks it.
async fn run_tour(fake: &FakeTruedat, bound: Bound) -> Result<(), String> {
    let client = Client::new();
    let url = |addr: SocketAddr, path: &str| format!("http://{addr}{path}");
    let ready = support::wait::wait_until(Duration::from_secs(10), || async {
        client.get(&url(bound.admin, "/readyz")).await.status == 200
    })
    .await;
    check(ready, "the proxy became ready")?;

    let reply = client.get(&url(bound.proxy, "/api/data_structures?page=1")).await;
    let echo = reply.json();
    let bearer = echo["headers"]["authorization"][0].as_str().unwrap_or_default();
    println!(
        "GET /api/data_structures?page=1 -> {} (Truedat saw authorization: {}…)",
        reply.status,
        &bearer[..bearer.len().min(16)]
    );
    check(reply.status == 200 && bearer.starts_with("Bearer ey"), "a plain request is answered with the bearer added")?;

    fake.revoke_all();
    let reply = client.get(&url(bound.proxy, "/api/data_structures?page=2")).await;
    println!("after Truedat revoked every session: GET -> {} (logins so far: {})", reply.status, fake.logins());
    check(
        reply.status == 200 && fake.logins() == 2,
        "a revoked token is replaced by one login and the request replayed",
    )?;

    let reply = client.get(&url(bound.proxy, "/api/sessions")).await;
    println!("GET /api/sessions -> {} {}", reply.status, reply.text());
    check(reply.status == 403, "session routes are refused")?;

    let metrics = client.get(&url(bound.admin, "/metrics")).await.text();
    let replays =
        metrics.lines().find(|l| l.starts_with("truedat_proxy_replays_total{result=\"success\"}")).unwrap_or("");
    println!("metrics: {replays}");
    check(replays.ends_with(" 1"), "the replay is counted")?;
    println!("tour passed");
    Ok(())
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(format!("expected: {what}")) }
}
