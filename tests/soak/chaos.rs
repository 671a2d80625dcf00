//! Truedat having a bad day, compressed: one task owns the fake and, until
//! the deadline, revokes every session every [`REVOKE_EVERY`] or a little more
//! (while the proxy is forwarding), makes the
//! login route fail or hang for 1–3 s at random moments, lets the data routes
//! reset [`RESET_SHARE`] of their connections, answers bursts of data
//! requests with ingress-nginx's 502/503/504 page (a pod restarting behind
//! the ingress), and restarts Truedat outright on the same port (down 1–2 s). It records when each of these happened,
//! so that every failure a client saw can be blamed on Truedat or the proxy.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::fake_truedat::{self, DataFault, FakeConfig, FakeTruedat, LoginMode};

/// Every session is revoked this long after the last revocation, plus
/// [`REVOKE_JITTER_MS`], or later: a revocation waits until the proxy is
/// forwarding with a live token (Truedat accepted a bearer during the last
/// [`TICK`]). A revocation while the proxy holds no token (a login outage let
/// it expire, Truedat restarted, the clients are paused) reaches nobody: the
/// next login replaces a token nobody sends. Without this wait, runs where
/// not one of the 8 revocations was followed by a 401 happened (one in CI:
/// no replay to check).
pub const REVOKE_EVERY: Duration = Duration::from_secs(5);
/// Added to each interval between revocations (ms). Token lifetimes are whole
/// seconds (`exp`), so the proxy's logins keep one phase within the second;
/// revocations exactly 5 s apart keep theirs too, so every revocation met the
/// token cycle at the same point.
const REVOKE_JITTER_MS: std::ops::RangeInclusive<u64> = 0..=999;
/// Share of data requests whose connection the fake resets.
pub const RESET_SHARE: f64 = 0.005;
/// Login outages last this long (ms), each shorter than `token.first_token_wait`.
const OUTAGE_MS: std::ops::RangeInclusive<u64> = 1000..=3000;
/// Time between the end of one login outage and the start of the next (ms).
const BETWEEN_OUTAGES_MS: std::ops::RangeInclusive<u64> = 2000..=6000;
/// How long Truedat stays down during a restart (ms).
const RESTART_DOWNTIME_MS: std::ops::RangeInclusive<u64> = 1000..=2000;
/// Time between two bursts of ingress errors (ms).
const BETWEEN_BURSTS_MS: std::ops::RangeInclusive<u64> = 3000..=7000;
/// Data requests each burst answers with an ingress error page.
const BURST_REQUESTS: std::ops::RangeInclusive<usize> = 10..=60;
/// A restart waits until a login outage ended this long ago, so that it
/// hits a proxy that holds a token and is forwarding (right after an outage
/// the token may have expired, and requests wait instead of reaching Truedat).
const RESTART_AFTER_OUTAGE: Duration = Duration::from_secs(2);
/// How often the task looks at the clock.
const TICK: Duration = Duration::from_millis(20);

/// One login outage.
#[derive(Debug, Clone)]
pub struct Outage {
    pub mode: LoginMode,
    pub from: Instant,
    pub to: Instant,
}

/// What Truedat did during the run.
#[derive(Debug, Default)]
pub struct Record {
    /// When every session was revoked.
    pub revocations: Vec<Instant>,
    pub outages: Vec<Outage>,
    /// Truedat down: from the start of its shutdown to the moment it listens again.
    pub restarts: Vec<(Instant, Instant)>,
    /// `X-Request-Id` of every request whose connection the fake reset.
    pub reset_ids: HashSet<String>,
    /// The number of requests each burst of ingress errors answered.
    pub bursts: Vec<usize>,
    /// Successful logins and login attempts, over every incarnation of the fake.
    pub logins: usize,
    pub login_attempts: usize,
}

impl Record {
    /// Adds what `fake` counted; called once per incarnation, when it no
    /// longer resets connections (before a restart, after the load).
    pub fn absorb(&mut self, fake: &FakeTruedat) {
        self.reset_ids.extend(fake.reset_request_ids());
        self.logins += fake.logins();
        self.login_attempts += fake.login_attempts();
    }

    /// Whether Truedat revoked sessions between `from` and `to`, give or take
    /// `slack`. A restart counts from going down to coming back: the new
    /// Truedat signs with a new key and knows no session.
    pub fn revoked_during(&self, from: Instant, to: Instant, slack: Duration) -> bool {
        let within = |at: Instant| at + slack >= from && at <= to + slack;
        self.revocations.iter().any(|at| within(*at)) || self.down_during(from, to, slack)
    }

    /// Whether Truedat was down at some point between `from` and `to`.
    pub fn down_during(&self, from: Instant, to: Instant, slack: Duration) -> bool {
        self.restarts.iter().any(|(down, up)| *down <= to + slack && *up + slack >= from)
    }
}

/// The fault settings every incarnation of the fake starts with.
pub fn configure(fake: &FakeTruedat) {
    fake.set_record_data(false);
    fake.set_data_fault(DataFault::ResetShare(RESET_SHARE));
}

/// Runs the chaos until `deadline`, restarting Truedat at each of `restarts`;
/// returns the fake as it is at the end (not yet absorbed into the record),
/// and the record.
pub async fn run(
    mut fake: FakeTruedat,
    config: FakeConfig,
    deadline: Instant,
    restarts: Vec<Instant>,
) -> (FakeTruedat, Record) {
    let mut record = Record::default();
    let mut next_revocation = Instant::now() + REVOKE_EVERY + millis(REVOKE_JITTER_MS);
    let mut next_outage = Instant::now() + millis(BETWEEN_OUTAGES_MS);
    let mut outage_end: Option<Instant> = None;
    let mut last_outage_end = Instant::now();
    let mut next_burst = Instant::now() + millis(BETWEEN_BURSTS_MS);
    let mut restarts = restarts.into_iter().peekable();
    let mut authenticated = 0;
    while Instant::now() < deadline {
        let now = Instant::now();
        let accepted = fake.authenticated_requests();
        let forwarding = accepted > authenticated;
        authenticated = accepted;
        if now >= next_revocation && forwarding {
            record.revocations.push(Instant::now());
            fake.revoke_all();
            next_revocation = now + REVOKE_EVERY + millis(REVOKE_JITTER_MS);
        }
        match outage_end {
            Some(end) if now >= end => {
                fake.set_login_mode(LoginMode::Normal);
                if let Some(outage) = record.outages.last_mut() {
                    outage.to = Instant::now();
                }
                outage_end = None;
                last_outage_end = Instant::now();
                next_outage = last_outage_end + millis(BETWEEN_OUTAGES_MS);
            }
            None if now >= next_outage && now + millis(OUTAGE_MS) < deadline => {
                let mode = if rand::random::<bool>() { LoginMode::Status(500) } else { LoginMode::Hang };
                let length = millis(OUTAGE_MS);
                fake.set_login_mode(mode.clone());
                record.outages.push(Outage { mode, from: now, to: now + length });
                outage_end = Some(now + length);
            }
            _ => {}
        }
        if now >= next_burst {
            record.bursts.push(burst(&fake));
            next_burst = now + millis(BETWEEN_BURSTS_MS);
        }
        let quiet = outage_end.is_none() && now >= last_outage_end + RESTART_AFTER_OUTAGE;
        if quiet && restarts.peek().is_some_and(|at| now >= *at) {
            restarts.next();
            fake = restart(fake, &config, &mut record).await;
            authenticated = 0;
        }
        tokio::time::sleep(TICK).await;
    }
    if outage_end.is_some() {
        fake.set_login_mode(LoginMode::Normal);
        if let Some(outage) = record.outages.last_mut() {
            outage.to = Instant::now();
        }
    }
    // The last incarnation is absorbed by the caller, once the load stopped:
    // until then it may still reset connections.
    (fake, record)
}

/// Shuts Truedat down, waits, and brings a new one up on the same port.
async fn restart(fake: FakeTruedat, config: &FakeConfig, record: &mut Record) -> FakeTruedat {
    // No reset may happen after its id was collected: stop them, and give a
    // handler that drew one just before a moment to record it.
    fake.set_data_fault(DataFault::None);
    tokio::time::sleep(Duration::from_millis(20)).await;
    record.absorb(&fake);
    let addr = fake.addr();
    let down = Instant::now();
    fake.shutdown().await;
    tokio::time::sleep(millis(RESTART_DOWNTIME_MS)).await;
    let mut attempts = 0;
    let fake = loop {
        match FakeTruedat::start_at(addr, config.clone()).await {
            Ok(fake) => break fake,
            Err(error) if attempts < 100 => {
                attempts += 1;
                if attempts == 1 {
                    eprintln!("restart: {addr} not free yet ({error}); retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("Truedat cannot come back on {addr}: {error}"),
        }
    };
    configure(&fake);
    record.restarts.push((down, Instant::now()));
    fake
}

/// The next few data requests get an ingress error page, as while a pod
/// behind the ingress restarts: 502, 503 or 504, sometimes with
/// `Retry-After: 1`. Returns how many requests it hits.
fn burst(fake: &FakeTruedat) -> usize {
    let requests = rand::random_range(BURST_REQUESTS);
    let status = [502, 503, 504][rand::random_range(0..3)];
    let retry_after = (status == 503 && rand::random::<bool>()).then(|| "1".to_owned());
    fake.fail_next(requests, fake_truedat::Outage::Status { status, retry_after });
    requests
}

fn millis(range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rand::random_range(range))
}
