//! The fleet simulation: what a hundred sidecars do to one td-auth, run by
//! hand (it takes about eight minutes), not by `cargo test`.
//!
//! ```sh
//! cargo test --release --test fleet                                  # the README's table
//! FLEET_OUTAGE_SECS=25 FLEET_STEADY_SECS=10 cargo test --release --test fleet   # a quick look
//! FLEET_PROBE_INTERVAL=0s cargo test --release --test fleet          # the same fleet without probes
//! ```
//!
//! `FLEET_N` proxies (default 100) run in this process, each a whole `App`
//! with its own renewer, pool and listeners, with the proxy's default
//! settings, in front of one fake Truedat that issues `FLEET_TOKEN_SECS`
//! tokens (20) and checks passwords `FLEET_CHECKS` at a time (4), each check
//! taking `FLEET_CHECK_MS` (100): td-auth verifies about 40 passwords a second
//! and queues the rest. Scenarios (`FLEET_SCENARIOS`, default
//! `cold,down,errors,overload`):
//!
//! - `cold`: all proxies start at the same moment;
//! - `down`: td-auth's listener closes for `FLEET_OUTAGE_SECS` (60), longer
//!   than the tokens live, then opens again on the same port;
//! - `errors`: every login is answered 500 for the outage;
//! - `overload`: each password check takes `FLEET_OVERLOAD_CHECK_MS`
//!   (12 000), longer than `token.login_timeout` (10 s), for the outage.
//!
//! Each scenario then measures the steady state for at least
//! `FLEET_STEADY_SECS` (20). The table ([`report`]) is Markdown; the process
//! exits 1 when one of issue 12's targets is missed.

// Without libtest's harness the support modules' `#[test]`s are left out,
// which leaves their `use super::*` unused.
#[path = "../support/mod.rs"]
#[allow(unused_imports)]
mod support;

mod count;
mod fleet;
mod report;
mod scenario;

use std::time::Duration;

use support::fake_truedat::PasswordCheck;

use scenario::Kind;

/// What the run simulates, from `FLEET_*` variables.
pub struct Settings {
    pub n: usize,
    pub outage: Duration,
    pub token_ttl: Duration,
    pub concurrency: usize,
    pub check: Duration,
    pub overload_check: Duration,
    pub steady: Duration,
    pub scenarios: Vec<Kind>,
    /// `token.probe_interval` for every proxy; the proxy's default when unset.
    pub probe_interval: Option<String>,
}

impl Settings {
    fn from_env() -> Settings {
        let scenarios = std::env::var("FLEET_SCENARIOS").unwrap_or_else(|_| "cold,down,errors,overload".to_owned());
        let scenarios = scenarios
            .split(',')
            .map(|name| Kind::parse(name).unwrap_or_else(|| panic!("FLEET_SCENARIOS: unknown scenario {name:?}")))
            .collect();
        let settings = Settings {
            n: number("FLEET_N", 100) as usize,
            outage: Duration::from_secs(number("FLEET_OUTAGE_SECS", 60)),
            token_ttl: Duration::from_secs(number("FLEET_TOKEN_SECS", 20)),
            concurrency: number("FLEET_CHECKS", 4) as usize,
            check: Duration::from_millis(number("FLEET_CHECK_MS", 100)),
            overload_check: Duration::from_millis(number("FLEET_OVERLOAD_CHECK_MS", 12_000)),
            steady: Duration::from_secs(number("FLEET_STEADY_SECS", 20)),
            scenarios,
            probe_interval: std::env::var("FLEET_PROBE_INTERVAL").ok(),
        };
        assert!(settings.n > 0 && settings.concurrency > 0, "FLEET_N and FLEET_CHECKS must be at least 1");
        assert!(settings.token_ttl >= Duration::from_secs(4), "FLEET_TOKEN_SECS: at least 4 s");
        assert!(
            settings.outage > settings.token_ttl,
            "FLEET_OUTAGE_SECS must exceed FLEET_TOKEN_SECS, so that every token expires during the outage"
        );
        settings
    }

    /// The normal cost of a password check.
    pub fn check(&self) -> PasswordCheck {
        PasswordCheck { concurrency: self.concurrency, duration: self.check }
    }
}

fn number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map_or(default, |v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")))
}

fn main() {
    let settings = Settings::from_env();
    let probes = count::Probes::install();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a Tokio runtime");
    println!("{}", header(&settings));
    let mut rows = Vec::new();
    for kind in settings.scenarios.clone() {
        let row = runtime.block_on(scenario::run(kind, &settings, &probes));
        eprintln!("done: {row:?}");
        rows.push(row);
    }
    println!("{}", report::table(&rows, &settings));
    let verdicts = report::targets(&rows);
    for (target, met) in &verdicts {
        println!("{} {target}", if *met { "met:   " } else { "MISSED:" });
    }
    if verdicts.iter().any(|(_, met)| !met) {
        std::process::exit(1);
    }
}

fn header(settings: &Settings) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
    format!(
        "fleet: {} proxies, {} s tokens, {} password checks at a time x {} ms, outages of {} s, probe_interval {}; {cores} cores, commit {commit}\n",
        settings.n,
        settings.token_ttl.as_secs(),
        settings.concurrency,
        settings.check.as_millis(),
        settings.outage.as_secs(),
        settings.probe_interval.as_deref().unwrap_or("1s (default)"),
    )
}
