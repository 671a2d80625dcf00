//! What a fleet of sidecars costs td-auth, for the comeback tests and the fleet
//! simulation: a password-check cost model, the audit events td-auth writes, when each
//! login arrived and how long it took, and the `GET /api/ping`s received.
//!
//! td-auth verifies every password with bcrypt (about a quarter of a CPU-second), so
//! it can only check a few at a time and the rest queue; [`PasswordCheck`] models
//! that with a semaphore and a sleep. A login whose client gave up (the proxy's
//! `token.login_timeout`) is dropped by hyper when the connection closes, as Cowboy
//! kills the request process of a closed connection: it frees its place in the queue
//! and is recorded as abandoned.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::sync::Semaphore;

use super::body::{self, Reply};
use super::{FakeTruedat, lock};

/// How td-auth's password checks are limited: `concurrency` at a time, each taking
/// `duration`; further logins wait in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCheck {
    /// Checks running at once (td-auth's schedulers busy with bcrypt).
    pub concurrency: usize,
    /// How long one check takes.
    pub duration: Duration,
}

/// One `POST /api/sessions`, as td-auth lived it.
#[derive(Debug, Clone, Copy)]
pub struct LoginRecord {
    /// When the request arrived.
    pub arrived: Instant,
    /// From arrival to the answer, or to the moment the client went away.
    pub took: Duration,
    /// Never answered: the client closed the connection first (its login timed
    /// out), or the fake cut it ([`FakeTruedat::stop_listening`], shutdown).
    pub abandoned: bool,
}

/// The password-check queue in force: a new one replaces it for new logins only.
struct Checker {
    permits: Semaphore,
    duration: Duration,
}

/// The fleet-scale counters and the cost model, shared by the connection tasks.
#[derive(Default)]
pub(super) struct Fleet {
    /// `None`: checks are free and unlimited (the default of every other test).
    checker: Mutex<Option<Arc<Checker>>>,
    audit_events: AtomicUsize,
    pings: AtomicUsize,
    logins: Mutex<Vec<LoginRecord>>,
}

/// td-auth writes `login_attempt` and then `login_success` or `login_failure` to the
/// `audit:events` stream for every login its controller handles.
const AUDIT_EVENTS_PER_LOGIN: usize = 2;

impl Fleet {
    /// What td-auth's controller spends on one login before answering it: the two
    /// audit events and a place in the password-check queue for the check's duration.
    pub(super) async fn spend_on_login(&self) {
        self.audit_events.fetch_add(AUDIT_EVENTS_PER_LOGIN, Ordering::SeqCst);
        let checker = lock(&self.checker).clone();
        let Some(checker) = checker else {
            return;
        };
        // The semaphore lives as long as the Arc this task holds; it is never closed.
        let _permit = checker.permits.acquire().await.expect("the queue's semaphore is never closed");
        tokio::time::sleep(checker.duration).await;
    }

    /// Runs the login handler `answer`, recording when it arrived, how long it took and
    /// whether its client went away first (the future is then dropped unfinished).
    pub(super) async fn timed(&self, answer: impl Future<Output = Reply>) -> Reply {
        let mut record = Recording { fleet: self, arrived: Instant::now(), answered: false };
        let reply = answer.await;
        record.answered = true;
        reply
    }

    /// `GET /api/ping`: 200 `pong`, counted.
    pub(super) fn pong(&self) -> Reply {
        self.pings.fetch_add(1, Ordering::SeqCst);
        body::full(StatusCode::OK, "text/plain; charset=utf-8", "pong")
    }

    fn set_password_check(&self, check: Option<PasswordCheck>) {
        let checker = check.map(|c| {
            // A semaphore without permits would park every login forever.
            assert!(c.concurrency > 0, "PasswordCheck::concurrency must be at least 1");
            Arc::new(Checker { permits: Semaphore::new(c.concurrency), duration: c.duration })
        });
        *lock(&self.checker) = checker;
    }
}

/// Records one login when dropped, answered or not.
struct Recording<'a> {
    fleet: &'a Fleet,
    arrived: Instant,
    answered: bool,
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        let record = LoginRecord { arrived: self.arrived, took: self.arrived.elapsed(), abandoned: !self.answered };
        lock(&self.fleet.logins).push(record);
    }
}

impl FakeTruedat {
    /// Limits password checks to `check.concurrency` at a time, each taking
    /// `check.duration`; `None` (the default) makes them free. Logins already queued
    /// keep the limit they started under.
    ///
    /// # Panics
    /// On a concurrency of 0.
    pub fn set_password_check(&self, check: Option<PasswordCheck>) {
        self.state.fleet.set_password_check(check);
    }

    /// `GET /api/ping` requests answered.
    pub fn pings(&self) -> usize {
        self.state.fleet.pings.load(Ordering::SeqCst)
    }

    /// Audit events td-auth would have written: two per login its controller handled
    /// ([`LoginMode::Normal`](super::LoginMode::Normal)); logins answered by another
    /// mode never reached it.
    pub fn audit_events(&self) -> usize {
        self.state.fleet.audit_events.load(Ordering::SeqCst)
    }

    /// Every login that ended (answered or abandoned), in the order they ended.
    pub fn login_records(&self) -> Vec<LoginRecord> {
        lock(&self.state.fleet.logins).clone()
    }
}
