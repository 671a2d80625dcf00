//! Exponential backoff with jitter between failed logins.
//!
//! Truedat has no lockout or rate limit but audits every attempt, so a proxy
//! that hammers the login route floods the audit stream; and a fleet of
//! replicas retrying in lockstep would hit it together. Each delay is drawn
//! from the upper half of the current step ("equal jitter").

use std::time::Duration;

/// The delay schedule of one run of failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A schedule that starts at `initial` and never exceeds `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), attempt: 0 }
    }

    /// The next delay: the step doubles each time up to `max`, and the delay
    /// is uniformly random in `[step/2, step]`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = delay(self.initial, self.max, self.attempt, rand::random());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Back to `initial` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    #[cfg(test)]
    fn step(&self) -> Duration {
        step(self.initial, self.max, self.attempt)
    }
}

/// The `attempt`th delay (from 0) of a schedule from `initial` to `max`: the
/// step doubles each time up to `max`, and the delay is `jitter` (0..1) of
/// the way through its upper half. Shared with the retries of requests.
pub fn delay(initial: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let half = step(initial, max, attempt) / 2;
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    half + half.mul_f64(jitter)
}

fn step(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 2u32.checked_pow(attempt.min(31)).unwrap_or(u32::MAX);
    initial.checked_mul(factor).map_or(max, |d| d.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_stays_within_bounds() {
        let (initial, max) = (Duration::from_millis(500), Duration::from_secs(30));
        let mut backoff = Backoff::new(initial, max);
        let mut previous_step = Duration::ZERO;
        for _ in 0..100 {
            let step = backoff.step();
            assert!(step >= previous_step && step <= max);
            let delay = backoff.next_delay();
            assert!(delay >= step / 2 && delay <= step, "{delay:?} outside {step:?}");
            previous_step = step;
        }
        assert_eq!(previous_step, max);
        backoff.reset();
        assert!(backoff.next_delay() <= initial);
    }

    #[test]
    fn max_below_initial_is_lifted_to_initial() {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(backoff.next_delay() <= Duration::from_secs(2));
    }
}
