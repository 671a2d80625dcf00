//! The probe-gated comeback (SPEC §3.1): noticing that Truedat is back without
//! waiting out the login backoff, and without a stampede.
//!
//! After failed logins the renewer sleeps up to `token.retry_max` (30 s). When
//! Truedat was merely unreachable (a td-auth restart, an ingress without
//! endpoints), most of that sleep is wasted once it returns, and a fleet of
//! sidecars stays unready for it. So while the last failure said Truedat could
//! not be reached, the wait probes `GET /api/ping` every `token.probe_interval`.
//!
//! The rules, each for a reason:
//! - Only unreachability arms probing. After rejected credentials, malformed
//!   answers or login timeouts Truedat answers pings perfectly well (an
//!   overloaded td-auth does too), so a ping says nothing about the next login.
//! - Edge-triggered: a 200 only counts after a failed probe. An ingress that
//!   answers pings while td-auth is down would otherwise cut every wait short
//!   and turn the backoff into a login per probe.
//! - A probe only shortens a wait: the login it brings forward replaces the
//!   one at the end of the wait, so probing never adds a login.
//! - The login follows after a random delay in `[0, probe_interval)`: a fleet
//!   notices the return within one interval of each other, and spreads its
//!   logins over the next one instead of arriving together.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::session::SessionError;

/// Whether a failed login says that Truedat could not be reached, which is what
/// arms probing: a refused, reset or timed-out connection, a failed TLS
/// handshake, or an ingress answering 502, 503 or 504 for a missing backend.
pub fn arms(error: &SessionError) -> bool {
    match error {
        SessionError::Unreachable { .. } => true,
        SessionError::Status { status, .. } => matches!(status.as_u16(), 502..=504),
        _ => false,
    }
}

/// The random delay between noticing Truedat's return and the next login:
/// `fraction` (uniform in `[0, 1)`) of `interval`; anything outside that range
/// means no delay, so the result is always below `interval` (or zero).
pub fn login_delay(interval: Duration, fraction: f64) -> Duration {
    if (0.0..1.0).contains(&fraction) { interval.mul_f64(fraction) } else { Duration::ZERO }
}

/// A run of logins failing because Truedat could not be reached, as the probes
/// see it.
#[derive(Debug, Default)]
pub struct Outage {
    /// When the first login of the run failed; `None` while probing is disarmed.
    since: Option<Instant>,
    /// A probe failed since the run began or since the last comeback: the next
    /// 200 is Truedat's return.
    probe_failed: bool,
    /// The return was already logged for this run.
    announced: bool,
}

/// Truedat answered a probe again after a failed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comeback {
    /// Since the first failed login of the run.
    pub after: Duration,
    /// The first comeback of this run, the one to log.
    pub first: bool,
}

impl Outage {
    /// A login failed: an `unreachable` Truedat arms probing (or keeps it
    /// armed); any other failure disarms it and forgets the run.
    pub fn login_failed(&mut self, unreachable: bool, now: Instant) {
        if unreachable {
            self.since.get_or_insert(now);
        } else {
            *self = Outage::default();
        }
    }

    /// A login worked: the run is over.
    pub fn ended(&mut self) {
        *self = Outage::default();
    }

    /// Whether the wait after the last failure should probe.
    pub fn is_armed(&self) -> bool {
        self.since.is_some()
    }

    /// Records a probe that answered 200 (`ok`) or not; `Some` when this probe
    /// is Truedat's return. Each comeback needs a failed probe before it.
    pub fn probed(&mut self, ok: bool, now: Instant) -> Option<Comeback> {
        let since = self.since?;
        if !ok {
            self.probe_failed = true;
            return None;
        }
        if !std::mem::take(&mut self.probe_failed) {
            return None;
        }
        let first = !std::mem::replace(&mut self.announced, true);
        Some(Comeback { after: now.saturating_duration_since(since), first })
    }
}

/// Sleeps through a backoff `delay`. While `outage` is armed and `interval` is
/// not zero, `ping` (true for a 200) is called every `interval`, each call
/// bounded by it; Truedat's return ends the wait early, after
/// [`login_delay`]. The wait never lasts longer than `delay`.
pub async fn wait<P, F>(delay: Duration, interval: Duration, outage: &mut Outage, ping: P)
where
    P: FnMut() -> F,
    F: Future<Output = bool>,
{
    let deadline = tokio::time::sleep(delay);
    tokio::pin!(deadline);
    if interval.is_zero() || !outage.is_armed() {
        return deadline.await;
    }
    tokio::select! {
        () = &mut deadline => return,
        () = watch(interval, outage, ping) => {}
    }
    tokio::select! {
        () = &mut deadline => {}
        () = tokio::time::sleep(login_delay(interval, rand::random())) => {}
    }
}

/// Probes every `interval` until Truedat's return.
async fn watch<P, F>(interval: Duration, outage: &mut Outage, mut ping: P)
where
    P: FnMut() -> F,
    F: Future<Output = bool>,
{
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let ok = tokio::time::timeout(interval, ping()).await.unwrap_or(false);
        tracing::debug!(ok, "Truedat probe (GET /api/ping)");
        if let Some(comeback) = outage.probed(ok, Instant::now()) {
            if comeback.first {
                let after = comeback.after.as_secs_f64();
                tracing::info!(outage_s = after, "Truedat reachable again after {after:.1} s");
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::cell::Cell;

    fn status(code: u16) -> SessionError {
        SessionError::Status {
            route: "/api/sessions",
            status: StatusCode::from_u16(code).unwrap(),
            content_type: String::new(),
        }
    }

    #[test]
    fn only_an_unreachable_truedat_arms_probing() {
        for kind in ["connect", "tls", "timeout", "protocol"] {
            let error = SessionError::Unreachable { route: "/api/sessions", kind, cause: "refused".into() };
            assert!(arms(&error), "{kind}");
        }
        for code in [502, 503, 504] {
            assert!(arms(&status(code)), "{code}");
        }
        let quiet = [
            status(500),
            status(501),
            status(505),
            status(429),
            status(200),
            SessionError::Rejected { user: "svc".into() },
            SessionError::Unprocessable,
            SessionError::RefreshRejected,
            SessionError::Malformed { route: "/api/sessions", problem: "not JSON".into() },
            SessionError::Timeout { route: "/api/sessions", timeout: Duration::from_secs(10) },
            SessionError::PasswordFile { path: "/pw".into(), cause: "missing".into() },
        ];
        for error in quiet {
            assert!(!arms(&error), "{error}");
        }
    }

    #[test]
    fn a_200_counts_only_after_a_failed_probe() {
        let t0 = Instant::now();
        let mut outage = Outage::default();
        assert_eq!(outage.probed(false, t0), None, "disarmed: probes mean nothing");
        outage.login_failed(true, t0);
        assert_eq!(outage.probed(true, t0), None, "no failed probe yet");
        assert_eq!(outage.probed(false, t0), None);
        assert_eq!(outage.probed(false, t0), None);
        let back = outage.probed(true, t0 + Duration::from_secs(42)).unwrap();
        assert_eq!(back, Comeback { after: Duration::from_secs(42), first: true });
        assert_eq!(outage.probed(true, t0), None, "one comeback per failed probe");
        // The login it brought forward failed again: the next return is not logged again.
        outage.login_failed(true, t0 + Duration::from_secs(43));
        assert_eq!(outage.probed(false, t0), None);
        let again = outage.probed(true, t0 + Duration::from_secs(50)).unwrap();
        assert_eq!(again, Comeback { after: Duration::from_secs(50), first: false });
    }

    #[test]
    fn other_failures_and_success_disarm_and_forget_the_run() {
        let t0 = Instant::now();
        let mut outage = Outage::default();
        outage.login_failed(true, t0);
        assert!(outage.is_armed());
        outage.probed(false, t0);
        outage.login_failed(false, t0);
        assert!(!outage.is_armed());
        assert_eq!(outage.probed(true, t0), None);

        outage.login_failed(true, t0);
        outage.probed(false, t0);
        outage.ended();
        assert!(!outage.is_armed());
        outage.login_failed(true, t0);
        assert_eq!(outage.probed(true, t0), None, "the failed probe belonged to the previous run");
    }

    #[test]
    fn the_login_delay_stays_below_the_interval() {
        let interval = Duration::from_secs(1);
        assert_eq!(login_delay(interval, 0.0), Duration::ZERO);
        assert_eq!(login_delay(interval, 0.25), Duration::from_millis(250));
        assert!(login_delay(interval, 0.999_999) < interval);
        for odd in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
            assert_eq!(login_delay(interval, odd), Duration::ZERO, "{odd}");
        }
        for _ in 0..1000 {
            assert!(login_delay(interval, rand::random()) < interval);
        }
    }

    /// A ping that answers from a script (true: 200), counting its calls.
    fn scripted<'a>(answers: &'a [bool], calls: &'a Cell<usize>) -> impl FnMut() -> std::future::Ready<bool> + 'a {
        move || {
            let n = calls.get();
            calls.set(n + 1);
            std::future::ready(answers.get(n).copied().unwrap_or(true))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn truedats_return_ends_the_wait_within_two_intervals() {
        let (delay, interval) = (Duration::from_secs(30), Duration::from_secs(1));
        let mut outage = Outage::default();
        outage.login_failed(true, Instant::now());
        let calls = Cell::new(0);
        let started = Instant::now();
        wait(delay, interval, &mut outage, scripted(&[false, false, true], &calls)).await;
        let waited = started.elapsed();
        // Probes at 1 s, 2 s and 3 s; the login follows within one more interval.
        assert_eq!(calls.get(), 3);
        assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(4), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn pings_that_never_failed_do_not_shorten_the_wait() {
        let (delay, interval) = (Duration::from_millis(4500), Duration::from_secs(1));
        let mut outage = Outage::default();
        outage.login_failed(true, Instant::now());
        let calls = Cell::new(0);
        let started = Instant::now();
        wait(delay, interval, &mut outage, scripted(&[], &calls)).await;
        assert_eq!(started.elapsed(), delay);
        assert_eq!(calls.get(), 4, "probes at 1, 2, 3 and 4 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_disarmed_or_switched_off_wait_never_pings() {
        let delay = Duration::from_secs(5);
        let calls = Cell::new(0);
        let mut disarmed = Outage::default();
        disarmed.login_failed(false, Instant::now());
        let started = Instant::now();
        wait(delay, Duration::from_secs(1), &mut disarmed, scripted(&[false, true], &calls)).await;
        let mut armed = Outage::default();
        armed.login_failed(true, Instant::now());
        wait(delay, Duration::ZERO, &mut armed, scripted(&[false, true], &calls)).await;
        assert_eq!(started.elapsed(), delay * 2);
        assert_eq!(calls.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_that_hangs_counts_as_failed_and_the_wait_keeps_its_end() {
        let (delay, interval) = (Duration::from_millis(3500), Duration::from_secs(1));
        let mut outage = Outage::default();
        outage.login_failed(true, Instant::now());
        let started = Instant::now();
        wait(delay, interval, &mut outage, std::future::pending::<bool>).await;
        assert_eq!(started.elapsed(), delay);
        assert!(outage.probe_failed);
    }
}
