//! td-auth's session allowlist and the tokens that point into it.
//!
//! Truedat keeps every live session in Redis keyed by `jti`, and every service checks
//! that list: a token with a good signature is still refused once its entry is gone.
//! Access and refresh sessions live in separate maps, as in td-auth.

use std::collections::HashMap;
use std::sync::Mutex;

use super::super::jwt::{self, Claims, JwtError};
use super::lock;

/// `aud` of access tokens; the only audience services accept as a bearer.
pub(super) const ACCESS_AUDIENCE: &str = "truedat";
/// `aud` of refresh tokens, so one presented as a bearer is refused.
pub(super) const REFRESH_AUDIENCE: &str = "truedat_refresh";
/// `iss` of every token td-auth signs.
pub(super) const ISSUER: &str = "tdauth";

/// The pair a successful login or refresh hands out.
pub(super) struct Issued {
    /// The bearer token.
    pub(super) access: String,
    /// The refresh token (cookie or legacy body field).
    pub(super) refresh: String,
}

/// Signs tokens with a per-instance secret and tracks which sessions are still alive.
pub(super) struct SessionStore {
    /// Random per instance, so tokens from one fake never pass another.
    secret: [u8; 64],
    allowlist: Mutex<Allowlist>,
}

/// `jti` → expiry (Unix seconds), like Redis keys with a TTL.
#[derive(Default)]
struct Allowlist {
    access: HashMap<String, u64>,
    refresh: HashMap<String, u64>,
}

impl SessionStore {
    pub(super) fn new() -> SessionStore {
        let mut secret = [0u8; 64];
        rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
        SessionStore { secret, allowlist: Mutex::default() }
    }

    /// Opens an access session for `access_ttl_secs` and a refresh session ending at
    /// `refresh_exp`: a refreshed chain keeps the expiry of its first refresh token.
    pub(super) fn issue(&self, user_name: &str, access_ttl_secs: u64, refresh_exp: u64, now: u64) -> Issued {
        let access = Claims::new(ACCESS_AUDIENCE, user_name, now, now + access_ttl_secs);
        let refresh = Claims::new(REFRESH_AUDIENCE, user_name, now, refresh_exp);
        let mut allowlist = lock(&self.allowlist);
        allowlist.purge_expired(now);
        allowlist.access.insert(access.jti.clone(), access.exp);
        allowlist.refresh.insert(refresh.jti.clone(), refresh.exp);
        Issued { access: jwt::sign(&access, &self.secret), refresh: jwt::sign(&refresh, &self.secret) }
    }

    /// Signature and validity window only; the allowlist is checked separately because
    /// services answer a revoked session differently from a bad token.
    pub(super) fn verify(&self, token: &str, now: u64) -> Result<Claims, JwtError> {
        jwt::verify(token, &self.secret, now)
    }

    /// Whether the access session `jti` is still in the allowlist.
    pub(super) fn access_alive(&self, jti: &str, now: u64) -> bool {
        lock(&self.allowlist).access.get(jti).is_some_and(|&exp| exp > now)
    }

    /// Ends an access session (logout, or the bearer of a refresh).
    pub(super) fn revoke_access(&self, jti: &str) {
        lock(&self.allowlist).access.remove(jti);
    }

    /// Uses up a refresh session: refresh tokens work once. Returns whether it was alive.
    pub(super) fn take_refresh(&self, jti: &str, now: u64) -> bool {
        lock(&self.allowlist).refresh.remove(jti).is_some_and(|exp| exp > now)
    }

    /// Access sessions still alive: what a pod left behind in Redis.
    pub(super) fn live_access_sessions(&self, now: u64) -> usize {
        lock(&self.allowlist).access.values().filter(|&&exp| exp > now).count()
    }

    /// Forgets every session at once, like a Redis flush.
    pub(super) fn revoke_all(&self) {
        *lock(&self.allowlist) = Allowlist::default();
    }
}

impl Allowlist {
    /// Keeps the maps from growing in long runs; Redis does this with key TTLs.
    fn purge_expired(&mut self, now: u64) {
        self.access.retain(|_, exp| *exp > now);
        self.refresh.retain(|_, exp| *exp > now);
    }
}
