//! The background task that owns every login.
//!
//! Because exactly one task logs in, logins are single-flight by
//! construction: a burst of 401s on generation G only raises one flag and
//! wakes this task once; it logs in once; every waiter sees generation G+1.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::Auth;
use super::backoff::Backoff;
use super::cell::Token;
use super::jwt;
use super::probe::{self, Outage};
use super::session::{Issued, SessionError, Sessions};
use crate::config::{RenewWith, TokenSettings};
use crate::telemetry;
use crate::trace::Parent;

/// Why a new token is fetched: the `reason` label of
/// `truedat_proxy_token_refreshes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Startup,
    Expiry,
    Unauthorized,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::Expiry => "expiry",
            Reason::Unauthorized => "unauthorized",
        }
    }
}

/// Renews the token until `shutdown` fires.
pub struct Renewer {
    auth: Arc<Auth>,
    sessions: Arc<Sessions>,
    settings: TokenSettings,
    /// Every token obtained that may still be alive in Truedat: after a
    /// renewal by login the previous one lives on until its own expiry, and
    /// all of them are logged out at shutdown (SPEC §3.6).
    issued: Vec<Arc<Token>>,
}

/// When the token in hand must be replaced, and when it stops being usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub usable_for: Duration,
    pub renew_after: Duration,
}

/// Time kept in hand for a request to reach Truedat before the token expires.
const TRAVEL: Duration = Duration::from_millis(500);

/// At most one token per second (SPEC §3.2), however short the lifetime
/// Truedat issues: a server misconfigured with 1-second tokens must not turn
/// the proxy into a login loop.
pub const MIN_TOKEN_GAP: Duration = Duration::from_secs(1);

/// Plans a token's life (SPEC §3.3). The token is not sent during its last
/// half second (the request still has to travel to Truedat),
/// and is renewed `refresh_before` ahead of that, at most half-way through,
/// a little earlier by a random `jitter` fraction (0..1) of up to a tenth of
/// the margin, so that replicas do not log in in lockstep.
pub fn schedule(lifetime: Duration, refresh_before: Duration, jitter: f64) -> Schedule {
    let guard = TRAVEL.min(lifetime / 2);
    let usable_for = lifetime - guard;
    let margin = refresh_before.min(usable_for / 2);
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    let early = (margin / 10).mul_f64(jitter);
    Schedule { usable_for, renew_after: usable_for - margin - early }
}

impl Renewer {
    /// A renewer storing tokens into `auth`.
    pub fn new(auth: Arc<Auth>, sessions: Arc<Sessions>, settings: TokenSettings) -> Renewer {
        Renewer { auth, sessions, settings, issued: Vec::new() }
    }

    /// Logs in, then keeps the token fresh, until `shutdown` fires; returns
    /// the tokens obtained that may still be alive, for the logout.
    pub async fn run(mut self, shutdown: CancellationToken) -> Vec<Arc<Token>> {
        tokio::select! {
            () = self.renew_forever() => {}
            () = shutdown.cancelled() => {}
        }
        let now = Instant::now();
        self.issued.retain(|t| t.may_be_alive(now));
        self.issued
    }

    /// Obtains tokens, retrying failures with backoff; never returns.
    async fn renew_forever(&mut self) {
        let mut reason = Reason::Startup;
        let mut backoff = Backoff::new(self.settings.retry_initial.0, self.settings.retry_max.0);
        let mut failures = Failures::default();
        let mut rejections = Rejections::new(self.settings.retry_initial.0, self.settings.retry_max.0);
        let mut outage = Outage::default();
        loop {
            match self.renew(reason).await {
                Ok(renew_at) => {
                    failures.recovered();
                    outage.ended();
                    backoff.reset();
                    let obtained = Instant::now();
                    reason = self.next_trigger(renew_at.max(obtained + MIN_TOKEN_GAP)).await;
                    let pause = match reason {
                        // A token that lived to its renewal: whatever 401s came
                        // before were about tokens, not a broken endpoint.
                        Reason::Expiry | Reason::Startup => {
                            rejections.reset();
                            Duration::ZERO
                        }
                        Reason::Unauthorized => {
                            self.forget_dead();
                            rejections.after_unauthorized(obtained.elapsed())
                        }
                    };
                    let gap = (obtained + MIN_TOKEN_GAP).saturating_duration_since(Instant::now());
                    tokio::time::sleep(pause.max(gap)).await;
                }
                Err(error) => {
                    self.auth.set_failure(Some(error.readiness_reason()));
                    let delay = backoff.next_delay();
                    failures.record(&error, reason, delay);
                    outage.login_failed(probe::arms(&error), tokio::time::Instant::now());
                    self.wait_after_failure(delay, &mut outage).await;
                }
            }
        }
    }

    /// The current token was answered 401: if Truedat confirmed its session
    /// is gone, there is nothing to log out; otherwise it may still live
    /// (the check failed) and stays on the list.
    fn forget_dead(&mut self) {
        let dead = self.auth.cell().generation();
        if self.auth.is_proven_dead(dead) {
            self.issued.retain(|t| t.generation != dead);
        }
    }

    /// Waits out the backoff `delay`, or less when probes see an unreachable
    /// Truedat return (SPEC §3.1).
    async fn wait_after_failure(&self, delay: Duration, outage: &mut Outage) {
        let interval = self.settings.probe_interval.0;
        probe::wait(delay, interval, outage, || self.sessions.ping(interval)).await;
    }

    /// Waits for the renewal time, or for a 401 on the current token.
    async fn next_trigger(&self, renew_at: Instant) -> Reason {
        let deadline = tokio::time::sleep_until(renew_at.into());
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return Reason::Expiry,
                () = self.auth.woken() => {
                    if self.auth.current_is_dead() {
                        return Reason::Unauthorized;
                    }
                }
            }
        }
    }

    /// Obtains and stores a new token; returns when to renew it.
    async fn renew(&mut self, reason: Reason) -> Result<Instant, SessionError> {
        let issued = match self.refreshable(reason) {
            Some(token) => match self.refresh(&token).await {
                Ok(issued) => {
                    // Truedat revoked the refreshed token at once.
                    self.issued.retain(|t| t.generation != token.generation);
                    issued
                }
                Err(error) => {
                    tracing::warn!(error = %error, "token refresh failed; falling back to a full login");
                    self.login(reason).await?
                }
            },
            None => self.login(reason).await?,
        };
        Ok(self.store(issued, reason))
    }

    /// The current token, if this renewal should use `/api/sessions/refresh`.
    fn refreshable(&self, reason: Reason) -> Option<Arc<Token>> {
        if self.settings.renew_with != RenewWith::Refresh || reason != Reason::Expiry {
            return None;
        }
        let token = self.auth.cell().snapshot().as_ref().cloned()?;
        (token.refresh_token().is_some() && token.is_usable(Instant::now())).then_some(token)
    }

    async fn refresh(&self, token: &Token) -> Result<Issued, SessionError> {
        let refresh = token.refresh_token().expect("refreshable() checked that a refresh token is present");
        self.sessions.refresh(token.bearer(), refresh).await
    }

    async fn login(&self, reason: Reason) -> Result<Issued, SessionError> {
        let started = Instant::now();
        // The login a 401 asked for belongs to the trace of that request.
        let parent = if reason == Reason::Unauthorized { self.auth.take_cause() } else { Parent::none() };
        let result = self.sessions.login(reason.label(), &parent).await;
        let label = result.as_ref().map_or_else(SessionError::result_label, |_| "success");
        telemetry::record_login(label, started.elapsed());
        result
    }

    fn store(&mut self, issued: Issued, reason: Reason) -> Instant {
        let received = Instant::now();
        let (lifetime, source) =
            jwt::lifetime(issued.access.expose_secret(), SystemTime::now(), self.settings.fallback_lifetime.0);
        let plan = schedule(lifetime, self.settings.refresh_before.0, rand::random());
        let expires_at = SystemTime::now() + lifetime;
        let token = Token::new(issued.access.expose_secret(), issued.refresh, received + plan.usable_for, expires_at)
            .expect("session::issued() checked that the token fits in a header");
        let generation = self.auth.cell().store(token);
        self.issued.retain(|t| t.may_be_alive(received));
        self.issued.extend(self.auth.cell().snapshot().as_ref().filter(|t| t.generation == generation).cloned());
        self.auth.set_failure(None);
        telemetry::record_token(reason.label(), expires_at);
        tracing::info!(
            generation,
            reason = reason.label(),
            expires_at = %humantime::format_rfc3339_seconds(expires_at),
            lifetime_s = lifetime.as_secs(),
            lifetime_from = ?source,
            renew_in_s = plan.renew_after.as_secs_f64(),
            "new Truedat token"
        );
        received + plan.renew_after
    }
}

/// Guards against a 401 that is not about the token (an endpoint that always
/// answers 401): without it every request to such an endpoint would cost a
/// login. A 401 on a token younger than `FRESH` is suspicious; such 401s in a
/// row back off like failed logins. A token that lived longer resets it.
struct Rejections {
    backoff: Backoff,
}

/// A token this young that Truedat already rejects is unlikely to be the cause.
const FRESH: Duration = Duration::from_secs(1);

impl Rejections {
    fn new(initial: Duration, max: Duration) -> Self {
        Rejections { backoff: Backoff::new(initial, max) }
    }

    fn reset(&mut self) {
        self.backoff.reset();
    }

    /// How long to wait before logging in after a 401 on a token of `age`.
    fn after_unauthorized(&mut self, age: Duration) -> Duration {
        if age >= FRESH {
            self.backoff.reset();
            return Duration::ZERO;
        }
        let pause = self.backoff.next_delay();
        tracing::warn!(
            token_age_ms = age.as_millis() as u64,
            pause_ms = pause.as_millis() as u64,
            "Truedat answered 401 to a token obtained moments ago; pausing before the next login"
        );
        pause
    }
}

/// Logs a failed renewal at error level once per change of state, not once
/// per retry, and its recovery once.
#[derive(Default)]
struct Failures {
    last: Option<String>,
    count: u32,
}

impl Failures {
    fn record(&mut self, error: &SessionError, reason: Reason, retry_in: Duration) {
        self.count += 1;
        let message = error.to_string();
        if self.last.as_deref() == Some(message.as_str()) {
            tracing::debug!(error = %message, attempts = self.count, retry_in_ms = retry_in.as_millis() as u64, "login still failing");
        } else {
            tracing::error!(error = %message, reason = reason.label(), attempts = self.count, retry_in_ms = retry_in.as_millis() as u64, "cannot obtain a Truedat token");
            self.last = Some(message);
        }
    }

    fn recovered(&mut self) {
        if self.count > 0 {
            tracing::info!(failed_attempts = self.count, "Truedat login works again");
        }
        *self = Failures::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn default_ten_minute_token_renews_five_minutes_ahead() {
        let plan = schedule(secs(599.0), secs(300.0), 0.0);
        assert_eq!(plan.usable_for, secs(598.5));
        assert_eq!(plan.renew_after, secs(299.25));
    }

    #[test]
    fn short_tokens_renew_half_way_and_stay_usable_until_renewed() {
        for lifetime in [2.0, 3.0, 6.0, 30.0] {
            for jitter in [0.0, 0.5, 1.0] {
                let plan = schedule(secs(lifetime), secs(300.0), jitter);
                assert!(plan.usable_for < secs(lifetime));
                assert!(plan.renew_after <= plan.usable_for / 2, "{lifetime} {jitter} {plan:?}");
                assert!(plan.renew_after >= plan.usable_for / 2 - plan.usable_for / 20);
            }
        }
    }

    #[test]
    fn jitter_only_moves_renewal_earlier_and_a_little() {
        let late = schedule(secs(3600.0), secs(300.0), 0.0);
        let early = schedule(secs(3600.0), secs(300.0), 1.0);
        assert_eq!(late.renew_after - early.renew_after, secs(30.0));
    }

    #[test]
    fn repeated_401s_on_fresh_tokens_back_off_and_old_tokens_reset() {
        let mut rejections = Rejections::new(secs(0.5), secs(30.0));
        assert_eq!(rejections.after_unauthorized(secs(60.0)), Duration::ZERO);
        let first = rejections.after_unauthorized(secs(0.1));
        assert!(first > Duration::ZERO && first <= secs(0.5));
        let pauses: Vec<_> = (0..10).map(|_| rejections.after_unauthorized(secs(0.1))).collect();
        assert!(pauses.iter().all(|p| *p <= secs(30.0)));
        assert!(pauses[9] >= secs(15.0), "{pauses:?}");
        assert_eq!(rejections.after_unauthorized(secs(5.0)), Duration::ZERO);
        assert!(rejections.after_unauthorized(secs(0.1)) <= secs(0.5));
    }

    #[test]
    fn zero_lifetime_does_not_underflow() {
        let plan = schedule(Duration::ZERO, secs(300.0), 1.0);
        assert_eq!(plan, Schedule { usable_for: Duration::ZERO, renew_after: Duration::ZERO });
    }
}
