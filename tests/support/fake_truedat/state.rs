//! What the fake's connection tasks share with the [`FakeTruedat`](super::FakeTruedat)
//! handle: configuration, the switches tests flip at run time, sessions, counters and
//! the requests received.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::client_certs::ClientCerts;
use super::early::EarlyAnswers;
use super::faults::Faults;
use super::fleet::Fleet;
use super::outage::Outages;
use super::sessions::SessionStore;
use super::{FakeConfig, LoginMode, RecordedRequest, lock};

/// Shared by every task of one fake server, behind an `Arc`.
pub(super) struct State {
    /// The service user; matched case-insensitively, as td-auth does.
    pub(super) user_name: String,
    /// Lifetime of the first refresh token of a chain.
    pub(super) refresh_ttl: Duration,
    /// Answer like servers before 4.48: refresh token in the body, no cookie.
    pub(super) legacy_refresh_in_body: bool,
    pub(super) sessions: SessionStore,
    /// Faults of the data routes and the switches of long runs.
    pub(super) faults: Faults,
    /// The client certificate of every TLS connection.
    pub(super) client_certs: ClientCerts,
    pub(super) outages: Outages,
    /// Answers given before a large body is read.
    pub(super) early: EarlyAnswers,
    pub(super) connections: Connections,
    /// The password-check cost model and the fleet-scale counters.
    pub(super) fleet: Fleet,
    /// Changed by tests while requests are in flight (password rotation, short tokens).
    settings: Mutex<Settings>,
    /// A `watch` so that logins parked by [`LoginMode::Hang`] wake when the mode changes.
    login_mode: watch::Sender<LoginMode>,
    /// A `watch` so that tests can wait for a number of logins without polling.
    logins: watch::Sender<usize>,
    login_attempts: AtomicUsize,
    refreshes: AtomicUsize,
    logouts: AtomicUsize,
    session_checks: AtomicUsize,
    /// Data requests whose bearer passed Guardian's checks.
    authenticated: AtomicUsize,
    /// Non-zero: `GET /api/sessions` is answered this status by the ingress.
    session_check_failure: AtomicU16,
    login_requests: Mutex<Vec<RecordedRequest>>,
    data_requests: Mutex<Vec<RecordedRequest>>,
}

struct Settings {
    password: String,
    token_ttl: Duration,
}

impl State {
    pub(super) fn new(config: FakeConfig) -> State {
        State {
            user_name: config.user_name,
            refresh_ttl: config.refresh_ttl,
            legacy_refresh_in_body: config.legacy_refresh_in_body,
            sessions: SessionStore::new(),
            faults: Faults::new(),
            client_certs: ClientCerts::default(),
            outages: Outages::default(),
            early: EarlyAnswers::default(),
            connections: Connections::default(),
            fleet: Fleet::default(),
            settings: Mutex::new(Settings { password: config.password, token_ttl: config.token_ttl }),
            login_mode: watch::Sender::new(LoginMode::Normal),
            logins: watch::Sender::new(0),
            login_attempts: AtomicUsize::new(0),
            refreshes: AtomicUsize::new(0),
            logouts: AtomicUsize::new(0),
            session_checks: AtomicUsize::new(0),
            authenticated: AtomicUsize::new(0),
            session_check_failure: AtomicU16::new(0),
            login_requests: Mutex::default(),
            data_requests: Mutex::default(),
        }
    }

    /// td-auth compares user names case-insensitively and passwords exactly.
    pub(super) fn credentials_match(&self, user_name: &str, password: &str) -> bool {
        user_name.to_lowercase() == self.user_name.to_lowercase() && password == lock(&self.settings).password
    }

    pub(super) fn set_password(&self, password: &str) {
        password.clone_into(&mut lock(&self.settings).password);
    }

    /// Access-token lifetime in whole seconds, as the `exp` claim counts.
    pub(super) fn token_ttl_secs(&self) -> u64 {
        lock(&self.settings).token_ttl.as_secs()
    }

    pub(super) fn set_token_ttl(&self, ttl: Duration) {
        lock(&self.settings).token_ttl = ttl;
    }

    pub(super) fn set_login_mode(&self, mode: LoginMode) {
        self.login_mode.send_replace(mode);
    }

    /// The mode to answer a login with, waiting as long as the mode is `Hang`.
    pub(super) async fn login_mode_unless_hang(&self) -> LoginMode {
        let mut mode = self.login_mode.subscribe();
        let answer = mode
            .wait_for(|mode| !matches!(mode, LoginMode::Hang))
            .await
            .expect("the sender lives in this State, which the caller borrows");
        answer.clone()
    }

    pub(super) fn count_login_attempt(&self) {
        self.login_attempts.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn count_login(&self) {
        self.logins.send_modify(|n| *n += 1);
    }

    pub(super) fn count_refresh(&self) {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn count_logout(&self) {
        self.logouts.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn count_session_check(&self) {
        self.session_checks.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn set_session_check_failure(&self, status: Option<u16>) {
        self.session_check_failure.store(status.unwrap_or(0), Ordering::SeqCst);
    }

    pub(super) fn session_check_failure(&self) -> Option<u16> {
        Some(self.session_check_failure.load(Ordering::SeqCst)).filter(|s| *s != 0)
    }

    pub(super) fn count_authenticated(&self) {
        self.authenticated.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn authenticated(&self) -> usize {
        self.authenticated.load(Ordering::SeqCst)
    }

    pub(super) fn session_checks(&self) -> usize {
        self.session_checks.load(Ordering::SeqCst)
    }

    pub(super) fn login_attempts(&self) -> usize {
        self.login_attempts.load(Ordering::SeqCst)
    }

    pub(super) fn logins(&self) -> usize {
        *self.logins.borrow()
    }

    pub(super) fn refreshes(&self) -> usize {
        self.refreshes.load(Ordering::SeqCst)
    }

    pub(super) fn logouts(&self) -> usize {
        self.logouts.load(Ordering::SeqCst)
    }

    /// Resolves once at least `n` logins have succeeded.
    pub(super) async fn wait_for_logins(&self, n: usize) {
        let mut logins = self.logins.subscribe();
        logins.wait_for(|&count| count >= n).await.expect("the sender lives in this State, which the caller borrows");
    }

    pub(super) fn record_login(&self, request: RecordedRequest) {
        lock(&self.login_requests).push(request);
    }

    pub(super) fn record_data(&self, request: RecordedRequest) {
        if !self.faults.record_data() {
            return;
        }
        lock(&self.data_requests).push(request);
    }

    pub(super) fn login_requests(&self) -> Vec<RecordedRequest> {
        lock(&self.login_requests).clone()
    }

    pub(super) fn data_requests(&self) -> Vec<RecordedRequest> {
        lock(&self.data_requests).clone()
    }
}

/// Connections accepted, and those still open: how many connections a
/// client keeps to Truedat.
#[derive(Default)]
pub(super) struct Connections {
    accepted: AtomicUsize,
    open: Arc<AtomicUsize>,
}

/// Counts a connection as open until dropped.
pub(super) struct OpenConnection(Arc<AtomicUsize>);

impl Connections {
    pub(super) fn open(&self) -> OpenConnection {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(self.open.clone())
    }

    pub(super) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub(super) fn open_now(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
