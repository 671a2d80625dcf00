//! The token: obtained at startup, held in a lock-free cell, renewed in the
//! background before it expires or as soon as Truedat answers 401.
//!
//! - `cell`: the `ArcSwap` slot and the `Token` in it.
//! - `session`: the HTTP calls to Truedat's session routes.
//! - `jwt`: the token's lifetime from its claims.
//! - `backoff`: delays between failed logins.
//! - `probe`: ends that delay early when an unreachable Truedat answers pings again.
//! - `liveness`: whether a token Truedat answered 401 to is really dead.
//! - `renewer`: the one task that logs in, so logins are single-flight by construction.

pub mod backoff;
pub mod cell;
pub mod jwt;
pub mod liveness;
pub mod probe;
pub mod renewer;
pub mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

pub use cell::{Credential, TokenCell};

use crate::trace::Parent;

/// What requests, the renewer and the admin port share about the token.
pub struct Auth {
    cell: TokenCell,
    /// Wakes the renewer when a request saw a 401.
    wake: Notify,
    /// The newest generation a 401 was seen with: the renewer logs in again
    /// only if the current token is not newer than this.
    dead: AtomicU64,
    /// The newest generation whose session Truedat said is gone (a 401 to
    /// `GET /api/sessions`): only such a token is left out of the logout at
    /// shutdown. One handled as dead on weaker evidence may still live.
    proven_dead: AtomicU64,
    /// Why the last renewal failed, for `/readyz` and 503 bodies.
    failure: ArcSwapOption<&'static str>,
    /// The traced request whose 401 asked for the next login: its span is
    /// the login's parent. Touched only after a 401.
    cause: Mutex<Parent>,
    first_token_wait: Duration,
    login_timeout: Duration,
}

impl Auth {
    /// An empty cell; requests wait up to `first_token_wait` for a token and
    /// up to `login_timeout` for the login a 401 triggers.
    pub fn new(first_token_wait: Duration, login_timeout: Duration) -> Auth {
        Auth {
            cell: TokenCell::default(),
            wake: Notify::new(),
            dead: AtomicU64::new(0),
            proven_dead: AtomicU64::new(0),
            failure: ArcSwapOption::empty(),
            cause: Mutex::default(),
            first_token_wait,
            login_timeout,
        }
    }

    /// The token cell.
    pub fn cell(&self) -> &TokenCell {
        &self.cell
    }

    /// A usable token now, or after waiting up to `token.first_token_wait`.
    pub async fn credential(&self) -> Option<Credential> {
        match self.cell.credential() {
            Some(c) => Some(c),
            // Boxed: the wait is rare, and its state would otherwise be
            // part of every request's future.
            None => Box::pin(self.cell.wait_newer(0, self.first_token_wait)).await,
        }
    }

    /// Truedat said 401 to `generation`: make sure one login happens, unless
    /// one already did for this generation or a newer token exists. The
    /// login's span belongs to `cause`, the request that reported it first.
    pub fn report_unauthorized(&self, generation: u64, cause: Parent) {
        let previous = self.dead.fetch_max(generation, Ordering::AcqRel);
        if previous < generation {
            *self.cause.lock().unwrap_or_else(PoisonError::into_inner) = cause;
            self.cell.revoke(generation);
            self.wake.notify_one();
        }
    }

    /// The request whose 401 asked for the login about to happen, if traced.
    pub(crate) fn take_cause(&self) -> Parent {
        std::mem::take(&mut *self.cause.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Truedat said `generation`'s session is gone: it need not be logged out.
    pub fn prove_dead(&self, generation: u64) {
        self.proven_dead.fetch_max(generation, Ordering::AcqRel);
    }

    /// Whether Truedat said `generation`'s session is gone (the newest such
    /// generation counts; older ones are no longer current when this is asked).
    pub fn is_proven_dead(&self, generation: u64) -> bool {
        self.proven_dead.load(Ordering::Acquire) == generation
    }

    /// Whether a 401 on `generation` (or a newer one) was already found to
    /// mean a dead token: no need to ask Truedat again.
    pub fn known_dead(&self, generation: u64) -> bool {
        self.dead.load(Ordering::Acquire) >= generation
    }

    /// Waits for a token newer than `generation`: the login a 401 triggered.
    pub async fn successor(&self, generation: u64) -> Option<Credential> {
        self.cell.wait_newer(generation, self.login_timeout.saturating_add(self.first_token_wait)).await
    }

    /// `Ok` while a usable token is held, else the reason.
    pub fn readiness(&self) -> Result<(), &'static str> {
        let token = self.cell.snapshot();
        match token.as_ref() {
            Some(t) if t.is_usable(Instant::now()) => Ok(()),
            Some(t) if t.is_revoked() => Err(self.failure().unwrap_or("token revoked by Truedat, logging in again")),
            Some(_) => Err(self.failure().unwrap_or("token expired")),
            None => Err(self.failure().unwrap_or("no token yet")),
        }
    }

    fn failure(&self) -> Option<&'static str> {
        self.failure.load().as_deref().copied()
    }

    pub(crate) fn set_failure(&self, reason: Option<&'static str>) {
        self.failure.store(reason.map(std::sync::Arc::new));
    }

    /// Whether a 401 has been seen for the current token (or a newer one).
    pub(crate) fn current_is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire) >= self.cell.generation()
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }
}
