//! The four scenarios. Each starts a fresh fake Truedat with the password-check
//! cost model and a fresh fleet, lets the fleet become ready, then (except for
//! the cold start) takes td-auth away in its own way for the outage, gives it
//! back, and measures the comeback and the steady state after it.

use std::time::Duration;

use tokio::time::Instant;
use truedat_auth_proxy::auth::renewer::schedule;
use truedat_auth_proxy::config::Config;
use truedat_auth_proxy::units::Dur;

use crate::Settings;
use crate::count::{self, Probes};
use crate::fleet::Fleet;
use crate::report::{Outage, Row};
use crate::support::fake_truedat::{FakeConfig, FakeTruedat, LoginMode, LoginRecord, PasswordCheck};

/// Which scenario, and how td-auth is unavailable in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// N proxies start at the same moment.
    ColdStart,
    /// td-auth's listener is closed: connections are refused.
    Down,
    /// td-auth answers every login 500.
    Errors,
    /// Password checks take longer than `token.login_timeout`: every login times out.
    Overloaded,
}

impl Kind {
    /// The names `FLEET_SCENARIOS` lists.
    pub fn parse(name: &str) -> Option<Kind> {
        match name.trim() {
            "cold" => Some(Kind::ColdStart),
            "down" => Some(Kind::Down),
            "errors" => Some(Kind::Errors),
            "overload" => Some(Kind::Overloaded),
            _ => None,
        }
    }

    fn label(self, settings: &Settings) -> String {
        let secs = settings.outage.as_secs();
        match self {
            Kind::ColdStart => "cold start".to_owned(),
            Kind::Down => format!("td-auth down {secs} s (refused)"),
            Kind::Errors => format!("logins answer 500 for {secs} s"),
            Kind::Overloaded => {
                format!("td-auth overloaded {secs} s ({} ms checks)", settings.overload_check.as_millis())
            }
        }
    }
}

/// Longest wait for the whole fleet to be ready: the backoff's cap plus a
/// login timeout, with room.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// Runs one scenario and measures it.
pub async fn run(kind: Kind, settings: &Settings, probes: &Probes) -> Row {
    let mut fake = FakeTruedat::start(FakeConfig { token_ttl: settings.token_ttl, ..FakeConfig::default() }).await;
    fake.set_password_check(Some(settings.check()));
    let mut fleet = Fleet::build(settings.n, &proxy_config(&fake.url(), settings)).await;
    let started = fleet.run();
    let cold = fleet.all_ready(started, READY_LIMIT).await;
    let mut row = Row::new(kind.label(settings));
    if kind == Kind::ColdStart {
        row.ready_after = Some(cold);
        row.peak_logins = peak_per_second(&fake.login_records(), started);
        row.timed_out = abandoned_since(&fake.login_records(), started);
    } else {
        assert!(cold.is_ok(), "the fleet never became ready before the outage: {cold:?}");
        let (outage_started, comebacks) = (Instant::now(), probes.comebacks());
        let mut during = outage(kind, &mut fake, &fleet, settings, probes).await;
        let back = Instant::now();
        row.ready_after = Some(fleet.all_ready(back, READY_LIMIT).await);
        during.comebacks = probes.comebacks() - comebacks;
        row.outage = Some(during);
        // Logins still in line have not ended yet: let them, before reading.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let records = fake.login_records();
        row.peak_logins = peak_per_second(&records, back);
        // Logins cut when td-auth's listener closed were not timeouts.
        let timeouts_from = if kind == Kind::Down { back } else { outage_started };
        row.timed_out = abandoned_since(&records, timeouts_from);
    }
    row.audit_per_day = steady_audit_per_day(&fake, settings).await;
    fleet.stop().await;
    row
}

/// The proxy's defaults (backoff 500 ms to 30 s, login timeout 10 s, probes
/// every second) in front of the fake; `FLEET_PROBE_INTERVAL` may override.
fn proxy_config(url: &str, settings: &Settings) -> Config {
    let fake = FakeConfig::default();
    let mut config = Config::default();
    config.listen.address = "127.0.0.1:0".parse().expect("valid address");
    config.admin.address = "127.0.0.1:0".parse().expect("valid address");
    config.upstream.url = Some(url.to_owned());
    config.credentials.user_name = Some(fake.user_name);
    config.credentials.password = Some(fake.password.into());
    if let Some(interval) = &settings.probe_interval {
        config.token.probe_interval = interval.parse::<Dur>().expect("FLEET_PROBE_INTERVAL is a duration");
    }
    config
}

/// Takes td-auth away for `settings.outage` and gives it back; counts what the
/// fleet did meanwhile (the comebacks come later, and are the caller's to count).
async fn outage(kind: Kind, fake: &mut FakeTruedat, fleet: &Fleet, settings: &Settings, probes: &Probes) -> Outage {
    let (logins, pings, probes_before) = (count::login_attempts(), fake.pings(), probes.probes());
    match kind {
        Kind::Down => fake.stop_listening().await,
        Kind::Errors => fake.set_login_mode(LoginMode::Status(500)),
        Kind::Overloaded => {
            fake.set_password_check(Some(PasswordCheck { duration: settings.overload_check, ..settings.check() }))
        }
        Kind::ColdStart => unreachable!("a cold start has no outage"),
    }
    tokio::time::sleep(settings.outage).await;
    let ready_at_end = fleet.ready_count().await;
    let minutes = settings.outage.as_secs_f64() / 60.0;
    let per_proxy_minute = |count: f64| count / settings.n as f64 / minutes;
    let outage = Outage {
        logins_per_minute: per_proxy_minute(count::login_attempts() - logins),
        probes_per_minute: per_proxy_minute((probes.probes() - probes_before) as f64),
        pings_seen: fake.pings() - pings,
        ready_at_end,
        comebacks: 0,
    };
    match kind {
        Kind::Down => fake.listen_again().await.expect("td-auth's port is free again"),
        Kind::Errors => fake.set_login_mode(LoginMode::Normal),
        Kind::Overloaded => fake.set_password_check(Some(settings.check())),
        Kind::ColdStart => {}
    }
    outage
}

/// The most logins that arrived within one second, counting from `since`.
fn peak_per_second(records: &[LoginRecord], since: Instant) -> usize {
    let mut buckets = std::collections::BTreeMap::<u64, usize>::new();
    for record in records.iter().filter(|r| r.arrived >= since.into_std()) {
        *buckets.entry((record.arrived - since.into_std()).as_secs()).or_default() += 1;
    }
    buckets.into_values().max().unwrap_or(0)
}

/// Logins that arrived from `since` on and whose proxy gave up waiting.
fn abandoned_since(records: &[LoginRecord], since: Instant) -> usize {
    records.iter().filter(|r| r.arrived >= since.into_std() && r.abandoned).count()
}

/// Audit events per sidecar per day once every proxy renews on its own
/// schedule. The fleet renews in waves (everyone logged in within seconds of
/// the start or the comeback), so the window is a whole number of renewal
/// periods starting half a period after the last login, between two waves.
async fn steady_audit_per_day(fake: &FakeTruedat, settings: &Settings) -> f64 {
    // Truedat's whole-second claims cost the proxy a second of planned life.
    let lifetime = settings.token_ttl.saturating_sub(Duration::from_secs(1));
    let period = schedule(lifetime, Duration::from_secs(300), 0.5).renew_after + settings.check;
    tokio::time::sleep(period / 2).await;
    let periods = (settings.steady.as_secs_f64() / period.as_secs_f64()).ceil().max(1.0) as u32;
    let before = fake.audit_events();
    tokio::time::sleep(period * periods).await;
    let events = (fake.audit_events() - before) as f64;
    events / settings.n as f64 / (period * periods).as_secs_f64() * 86_400.0
}
