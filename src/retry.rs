//! When a failed try is sent to Truedat again (SPEC §4, Retries): one
//! decision, in one place, from the method, whether the body can be sent
//! again, what went wrong, the time spent and the budget.
//!
//! The tools behind the proxy usually cannot retry, so the proxy rides
//! through Truedat's short outages (a pod restart, a rolling upgrade, an
//! ingress without endpoints) within `retry.window`. What may be sent again
//! follows RFC 9110 §9.2.2: a try that failed before any byte reached
//! Truedat can be repeated whatever the method; one that may have reached it
//! only if the method is idempotent. The budget (linkerd's semantics,
//! tower's `TpsBudget`) keeps the proxy from multiplying an outage: every
//! client request deposits, every retry withdraws.

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::{HeaderMap, Method, StatusCode};
use tower::retry::budget::{Budget, TpsBudget};

use crate::auth::backoff;
use crate::config::RetrySettings;

/// Over how long the budget counts requests and retries.
const BUDGET_TTL: Duration = Duration::from_secs(10);

/// How a try ended, as far as retrying is concerned.
#[derive(Clone, Copy, Debug)]
pub enum Failure<'a> {
    /// Nothing of the request reached Truedat: connection refused, connect
    /// timeout, TLS handshake failure, the egress proxy refusing.
    Connect,
    /// The connection broke before the response headers: Truedat may have
    /// received and acted on the request.
    Reset,
    /// `upstream.request_timeout` passed: never retried (the tool already
    /// waited that long, and Truedat may still be working on it).
    Timeout,
    /// Truedat (or its ingress) answered this status, with these headers.
    Status(StatusCode, &'a HeaderMap),
}

/// Why a retry happens: the `reason` label of
/// `truedat_proxy_upstream_retries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Connect,
    Reset,
    Status,
}

impl Reason {
    /// Every label value, exported from zero.
    pub const ALL: [Reason; 3] = [Reason::Connect, Reason::Reset, Reason::Status];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Reset => "reset",
            Reason::Status => "status",
        }
    }
}

/// The answer for one failed try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The client gets this try's outcome.
    GiveUp,
    /// Try again after this pause.
    Retry { after: Duration, reason: Reason },
}

/// One failed try, as the forwarding path saw it.
#[derive(Clone, Copy, Debug)]
pub struct Try<'a> {
    pub method: &'a Method,
    /// The body can be sent again: none, or kept whole.
    pub resendable: bool,
    pub failure: Failure<'a>,
    /// Since the request arrived.
    pub elapsed: Duration,
    /// Retries already made for this request.
    pub retries: u32,
}

/// `[retry]`, prepared once, with the budget shared by every request.
pub struct RetryPolicy {
    window: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    on_status: Vec<StatusCode>,
    budget: TpsBudget,
}

impl RetryPolicy {
    /// The policy of `settings` (validated: ratio finite within 0..=1000).
    pub fn new(settings: &RetrySettings) -> RetryPolicy {
        RetryPolicy {
            window: settings.window.0,
            backoff_initial: settings.backoff_initial.0,
            backoff_max: settings.backoff_max.0,
            on_status: settings.on_status.iter().filter_map(|s| StatusCode::from_u16(*s).ok()).collect(),
            budget: TpsBudget::new(BUDGET_TTL, settings.budget_min_per_second, settings.budget_ratio as f32),
        }
    }

    /// Whether retries are on at all (`retry.window` above zero).
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// A client request arrived: it adds to what retries may spend.
    pub fn deposit(&self) {
        if self.enabled() {
            self.budget.deposit();
        }
    }

    /// Whether a status is one Truedat answers while it is briefly unable to
    /// serve: such a response is not passed on while a retry is possible.
    pub fn is_transient(&self, status: StatusCode) -> bool {
        status != StatusCode::UNAUTHORIZED && self.on_status.contains(&status)
    }

    /// Whether `attempt` could be retried if its body can be sent again
    /// (before waiting for the body to come back), budget aside.
    pub fn could_retry(&self, attempt: &Try<'_>) -> bool {
        self.plan(&Try { resendable: true, ..*attempt }, 0.0).is_some()
    }

    /// Give up, or try again after a pause; `jitter` (0..1) spreads the
    /// pauses of concurrent requests. A retry takes a token from the budget.
    pub fn decide(&self, attempt: &Try<'_>, jitter: f64) -> Decision {
        let Some((after, reason)) = self.plan(attempt, jitter) else {
            return Decision::GiveUp;
        };
        if !self.budget.withdraw() {
            tracing::debug!("retry budget exhausted; the client gets the failure");
            return Decision::GiveUp;
        }
        Decision::Retry { after, reason }
    }

    /// The rules of SPEC §4 and the window; the pause before the next try.
    fn plan(&self, attempt: &Try<'_>, jitter: f64) -> Option<(Duration, Reason)> {
        let reason = self.eligible(attempt)?;
        let backoff = self.backoff(attempt.retries, jitter);
        // `Retry-After` can lengthen a wait, never shorten it: a storm of
        // `Retry-After: 0` must not turn the retries into a busy loop.
        let after = match attempt.failure {
            Failure::Status(_, headers) => retry_after(headers, SystemTime::now()).map_or(backoff, |r| r.max(backoff)),
            _ => backoff,
        };
        // The next try must begin within the window; a Retry-After beyond it
        // means the response goes to the client at once.
        (attempt.elapsed.saturating_add(after) < self.window).then_some((after, reason))
    }

    /// The rules of SPEC §4 before time and budget.
    fn eligible(&self, attempt: &Try<'_>) -> Option<Reason> {
        if !self.enabled() || !attempt.resendable {
            return None;
        }
        let idempotent = is_idempotent(attempt.method);
        match attempt.failure {
            Failure::Connect => Some(Reason::Connect),
            Failure::Reset if idempotent => Some(Reason::Reset),
            Failure::Status(status, _) if idempotent && self.is_transient(status) => Some(Reason::Status),
            Failure::Reset | Failure::Status(..) | Failure::Timeout => None,
        }
    }

    /// Exponential backoff with equal jitter, as between failed logins: the
    /// `n`th pause is drawn from the upper half of `min(initial * 2^n, max)`.
    fn backoff(&self, retries: u32, jitter: f64) -> Duration {
        backoff::delay(self.backoff_initial, self.backoff_max, retries, jitter)
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the effect of one request.
/// (TRACE is idempotent too, but never forwarded.)
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

/// `Retry-After` (RFC 9110 §10.2.3) as a wait from `now`: delay-seconds or
/// an HTTP date (a date in the past means at once).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Dur;
    use http::HeaderValue;

    fn policy(min_per_second: u32) -> RetryPolicy {
        RetryPolicy::new(&RetrySettings { budget_min_per_second: min_per_second, ..RetrySettings::default() })
    }

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn attempt<'a>(method: &'a Method, resendable: bool, failure: Failure<'a>, elapsed_ms: u64) -> Try<'a> {
        Try { method, resendable, failure, elapsed: Duration::from_millis(elapsed_ms), retries: 0 }
    }

    /// Who is retried, by method, body and failure (SPEC §4).
    #[test]
    fn the_rules_of_the_spec() {
        let policy = policy(10);
        let none = headers(None);
        let (get, post, put, patch, delete) = (Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE);
        let status = |s: u16| Failure::Status(StatusCode::from_u16(s).unwrap(), &none);
        let retry = |reason| Some(reason);
        let cases: &[(&Method, bool, Failure<'_>, Option<Reason>)] = &[
            // Nothing reached Truedat: any method whose body can be resent.
            (&get, true, Failure::Connect, retry(Reason::Connect)),
            (&post, true, Failure::Connect, retry(Reason::Connect)),
            (&patch, true, Failure::Connect, retry(Reason::Connect)),
            (&post, false, Failure::Connect, None),
            // It may have: idempotent methods with a kept body only.
            (&get, true, Failure::Reset, retry(Reason::Reset)),
            (&put, true, Failure::Reset, retry(Reason::Reset)),
            (&delete, true, Failure::Reset, retry(Reason::Reset)),
            (&put, false, Failure::Reset, None),
            (&post, true, Failure::Reset, None),
            (&patch, true, Failure::Reset, None),
            (&get, true, status(503), retry(Reason::Status)),
            (&get, true, status(502), retry(Reason::Status)),
            (&put, true, status(504), retry(Reason::Status)),
            (&post, true, status(503), None),
            (&get, true, status(500), None),
            (&get, true, status(401), None),
            (&get, true, status(429), None),
            // Never after request_timeout.
            (&get, true, Failure::Timeout, None),
        ];
        for (method, resendable, failure, expected) in cases {
            let decision = policy.decide(&attempt(method, *resendable, *failure, 0), 0.5);
            let got = match decision {
                Decision::Retry { reason, .. } => Some(reason),
                Decision::GiveUp => None,
            };
            assert_eq!(got, *expected, "{method} resendable={resendable} {failure:?}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_max() {
        let policy = policy(10);
        let pause = |retries, jitter| policy.backoff(retries, jitter);
        assert_eq!(pause(0, 0.0), Duration::from_millis(50));
        assert_eq!(pause(0, 1.0), Duration::from_millis(100));
        assert_eq!(pause(3, 1.0), Duration::from_millis(800));
        assert_eq!(pause(10, 1.0), Duration::from_secs(2));
        assert_eq!(pause(u32::MAX, 0.0), Duration::from_secs(1));
        assert_eq!(pause(1, f64::NAN), Duration::from_millis(100));
    }

    #[test]
    fn retry_after_is_honoured_within_the_window_and_passed_on_beyond_it() {
        let policy = policy(10);
        let (soon, late) = (headers(Some("1")), headers(Some("120")));
        let s503 = StatusCode::SERVICE_UNAVAILABLE;
        let decision = policy.decide(&attempt(&Method::GET, true, Failure::Status(s503, &soon), 0), 0.0);
        assert_eq!(decision, Decision::Retry { after: Duration::from_secs(1), reason: Reason::Status });
        let decision = policy.decide(&attempt(&Method::GET, true, Failure::Status(s503, &late), 0), 0.0);
        assert_eq!(decision, Decision::GiveUp, "Retry-After: 120 is past the 10 s window");
        let decision = policy.decide(&attempt(&Method::GET, true, Failure::Status(s503, &soon), 9_500), 0.0);
        assert_eq!(decision, Decision::GiveUp, "the next try could not begin within the window");
    }

    #[test]
    fn retry_after_never_shortens_the_backoff() {
        let policy = policy(10);
        let s503 = StatusCode::SERVICE_UNAVAILABLE;
        for value in ["0", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            let now = headers(Some(value));
            for retries in 0..4 {
                let attempt = Try { retries, ..attempt(&Method::GET, true, Failure::Status(s503, &now), 0) };
                let expected = policy.backoff(retries, 0.5);
                assert_eq!(
                    policy.decide(&attempt, 0.5),
                    Decision::Retry { after: expected, reason: Reason::Status },
                    "Retry-After: {value}, retry {retries}"
                );
            }
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(retry_after(&headers(Some("7")), now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers(Some("Wed, 21 Oct 2015 07:28:10 GMT")), now), Some(Duration::from_secs(10)));
        assert_eq!(retry_after(&headers(Some("Wed, 21 Oct 2015 07:27:00 GMT")), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers(Some("soon")), now), None);
        assert_eq!(retry_after(&headers(None), now), None);
    }

    #[test]
    fn the_window_bounds_every_retry_and_zero_turns_them_off() {
        let policy = policy(10);
        let late = attempt(&Method::GET, true, Failure::Connect, 9_990);
        assert_eq!(policy.decide(&late, 0.0), Decision::GiveUp);
        let off = RetryPolicy::new(&RetrySettings { window: Dur::secs(0), ..RetrySettings::default() });
        assert_eq!(off.decide(&attempt(&Method::GET, true, Failure::Connect, 0), 0.0), Decision::GiveUp);
    }

    /// With no traffic deposited, the reserve is `min_per_second` × 10 s;
    /// each request then adds `budget_ratio` of a retry.
    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_the_reserve_plus_a_share_of_the_traffic() {
        let policy = policy(1);
        let retries = |policy: &RetryPolicy| {
            (0..1000)
                .take_while(|_| {
                    policy.decide(&attempt(&Method::GET, true, Failure::Connect, 0), 0.0) != Decision::GiveUp
                })
                .count()
        };
        assert_eq!(retries(&policy), 10, "1 per second over 10 s");
        for _ in 0..100 {
            policy.deposit();
        }
        assert_eq!(retries(&policy), 20, "100 requests at 0.2 add 20 retries");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(retries(&policy), 10, "deposits older than 10 s are gone; the reserve stays");
    }
}
