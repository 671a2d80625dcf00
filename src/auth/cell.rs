//! The token cell: the current token behind an `ArcSwap`, read by every
//! request with one atomic load and written only by the renewer.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwapOption, Guard};
use http::HeaderValue;
use secrecy::SecretString;
use tokio::sync::watch;

/// How long after its local deadline a token may still be alive in Truedat:
/// the half second kept for travel, plus a second of `exp` rounding.
const ALIVE_PAST_DEADLINE: std::time::Duration = std::time::Duration::from_millis(1500);

/// One access token and what the proxy knows about it.
#[derive(Clone)]
pub struct Token {
    /// Increases with every token stored; a 401 names the generation it hit,
    /// so that only the first 401 per token causes a login.
    pub generation: u64,
    /// `Bearer <token>`, built once and marked sensitive so that hyper and
    /// tracing never print it.
    bearer: HeaderValue,
    /// The refresh token, when the server handed one out.
    refresh: Option<SecretString>,
    /// Local deadline after which the token is never sent again.
    usable_until: Instant,
    /// Wall-clock estimate of the same deadline, for logs and metrics.
    pub expires_at: SystemTime,
    /// Truedat answered 401 to this token: it is dead before its expiry.
    revoked: bool,
}

impl Token {
    /// A token with `bearer` already built; `generation` is assigned by the cell.
    pub fn new(
        access: &str,
        refresh: Option<SecretString>,
        usable_until: Instant,
        expires_at: SystemTime,
    ) -> Result<Token, http::header::InvalidHeaderValue> {
        let mut bearer = HeaderValue::try_from(format!("Bearer {access}"))?;
        bearer.set_sensitive(true);
        Ok(Token { generation: 0, bearer, refresh, usable_until, expires_at, revoked: false })
    }

    /// Whether the token may still be sent.
    pub fn is_usable(&self, now: Instant) -> bool {
        !self.revoked && now < self.usable_until
    }

    /// The `Authorization` value.
    pub fn bearer(&self) -> &HeaderValue {
        &self.bearer
    }

    /// The refresh token, if any.
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh.as_ref()
    }

    /// The local deadline.
    pub fn usable_until(&self) -> Instant {
        self.usable_until
    }

    /// Whether Truedat may still hold the session at `now`, so that it is
    /// worth a logout (SPEC §3.6). The token stops being sent half a second
    /// before its expiry, and `exp` counts whole seconds, so a token past
    /// its local deadline can live on for up to that much longer.
    pub fn may_be_alive(&self, now: Instant) -> bool {
        now < self.usable_until + ALIVE_PAST_DEADLINE
    }

    /// Whether Truedat already said 401 to it.
    pub fn is_revoked(&self) -> bool {
        self.revoked
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// What a request needs from the current token.
#[derive(Clone, Debug)]
pub struct Credential {
    pub generation: u64,
    pub bearer: HeaderValue,
}

/// The shared slot holding the current token.
pub struct TokenCell {
    current: ArcSwapOption<Token>,
    /// Last generation stored: waiters watch it instead of polling.
    stored: watch::Sender<u64>,
    generations: AtomicU64,
}

impl Default for TokenCell {
    fn default() -> Self {
        TokenCell { current: ArcSwapOption::empty(), stored: watch::Sender::new(0), generations: AtomicU64::new(0) }
    }
}

impl TokenCell {
    /// The token to send now, if one is usable: the hot path.
    pub fn credential(&self) -> Option<Credential> {
        let guard = self.current.load();
        let token = guard.as_ref().filter(|t| t.is_usable(Instant::now()))?;
        Some(Credential { generation: token.generation, bearer: token.bearer.clone() })
    }

    /// Waits up to `timeout` for a usable token newer than `generation`
    /// (0: any token).
    pub async fn wait_newer(&self, generation: u64, timeout: std::time::Duration) -> Option<Credential> {
        // Subscribe before looking, so a store between the look and the wait is not missed.
        let mut stored = self.stored.subscribe();
        let wait = async {
            loop {
                if let Some(c) = self.credential().filter(|c| c.generation > generation) {
                    return Some(c);
                }
                stored.changed().await.ok()?;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Stores a new token, giving it the next generation, and returns that generation.
    pub fn store(&self, mut token: Token) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        token.generation = generation;
        self.current.store(Some(Arc::new(token)));
        self.stored.send_replace(generation);
        generation
    }

    /// Marks `generation` dead if it is still the current token, so that new
    /// requests wait for its successor instead of collecting 401s.
    pub fn revoke(&self, generation: u64) {
        let current = self.current.load();
        let Some(token) = current.as_ref().filter(|t| t.generation == generation && !t.revoked) else {
            return;
        };
        let dead = Arc::new(Token { revoked: true, ..Token::clone(token) });
        // If the renewer stored a newer token meanwhile, that one stays.
        let _ = self.current.compare_and_swap(&current, Some(dead));
    }

    /// The current token, usable or not (renewer, readiness, logout).
    pub fn snapshot(&self) -> Guard<Option<Arc<Token>>> {
        self.current.load()
    }

    /// The generation of the newest token, 0 before the first.
    pub fn generation(&self) -> u64 {
        *self.stored.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn token(valid_for: Duration) -> Token {
        Token::new("abc", None, Instant::now() + valid_for, SystemTime::now() + valid_for).unwrap()
    }

    #[test]
    fn bearer_is_sensitive_and_debug_hides_it() {
        let t = token(Duration::from_secs(60));
        assert!(t.bearer().is_sensitive());
        assert_eq!(t.bearer(), "Bearer abc");
        assert!(!format!("{t:?}").contains("abc"));
    }

    #[test]
    fn a_token_past_its_deadline_may_still_be_alive_for_a_logout() {
        let now = Instant::now();
        let token = |deadline: Instant| Token::new("abc", None, deadline, SystemTime::now()).unwrap();
        assert!(token(now + Duration::from_secs(1)).may_be_alive(now));
        assert!(
            token(now - Duration::from_millis(1400)).may_be_alive(now),
            "exp is half a second and a rounding later"
        );
        assert!(!token(now - Duration::from_millis(1600)).may_be_alive(now));
    }

    #[test]
    fn expired_and_revoked_tokens_are_never_handed_out() {
        let cell = TokenCell::default();
        assert!(cell.credential().is_none());
        let g = cell.store(token(Duration::from_secs(60)));
        assert_eq!(cell.credential().unwrap().generation, g);
        cell.revoke(g);
        assert!(cell.credential().is_none());
        cell.store(token(Duration::ZERO));
        assert!(cell.credential().is_none());
    }

    #[test]
    fn revoking_an_old_generation_leaves_the_new_token_alone() {
        let cell = TokenCell::default();
        let old = cell.store(token(Duration::from_secs(60)));
        let new = cell.store(token(Duration::from_secs(60)));
        cell.revoke(old);
        assert_eq!(cell.credential().unwrap().generation, new);
    }

    #[tokio::test]
    async fn waiters_wake_on_store_and_time_out_otherwise() {
        let cell = Arc::new(TokenCell::default());
        assert!(cell.wait_newer(0, Duration::from_millis(20)).await.is_none());
        let waiter = tokio::spawn({
            let cell = cell.clone();
            async move { cell.wait_newer(0, Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        let g = cell.store(token(Duration::from_secs(60)));
        assert_eq!(waiter.await.unwrap().unwrap().generation, g);
    }
}
