//! A fake Truedat for the integration tests and the demo.
//!
//! One origin serving td-auth's session routes and a td-dd-like data service the way
//! `TRUEDAT.md` describes them: same statuses, bodies, headers and cookies, real HS512
//! JWTs, and a server-side session allowlist that can be revoked at any moment. Tests
//! flip switches ([`LoginMode`], password, token lifetime) and read what the proxy sent.
//!
//! - `server`: sockets, TLS, HTTP/1.1 + HTTP/2 connections, shutdown
//! - `router`: which service answers a path
//! - `auth`: td-auth's login, refresh, session check and logout
//! - `data`: Guardian's bearer checks and the test routes of the data service
//! - `sessions`: the allowlist and the tokens pointing into it
//! - `state`: what the connection tasks share with the [`FakeTruedat`] handle
//! - `body`, `query`: response shapes, streaming bodies, query parameters
//! - `client_certs`: the serial of the client certificate each TLS connection presented
//! - `outage`: the next N data requests fail as during an outage ([`Outage`])
//! - `early`: answers before a large body is read, as an ingress's body limit gives them ([`EarlyAnswer`])
//! - `faults`, `conn`, `idle_close`: data-route faults ([`DataFault`]), connections ended
//!   from a handler (reset or quiet close), keep-alive connections closed after each response
//! - `fleet`, `restart`: what many sidecars cost td-auth ([`PasswordCheck`], audit events,
//!   pings) and a restart on the same port

mod auth;
mod body;
mod client_certs;
mod conn;
mod data;
mod early;
mod faults;
mod fleet;
mod idle_close;
mod outage;
mod query;
mod restart;
mod router;
mod server;
mod sessions;
mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use client_certs::serial_of;
#[allow(unused_imports)]
pub use early::{AfterEarly, EarlyAnswer};
#[allow(unused_imports)]
pub use faults::{DataFault, STALL_BODY_LEN, STALL_SENT_LEN};
#[allow(unused_imports)]
pub use fleet::{LoginRecord, PasswordCheck};
#[allow(unused_imports)]
pub use outage::Outage;
#[allow(unused_imports)]
pub use restart::ReservedPort;
use state::State;

/// How the fake starts; the run-time switches are methods of [`FakeTruedat`].
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The only user that can log in (matched case-insensitively).
    pub user_name: String,
    /// That user's password.
    pub password: String,
    /// Access-token lifetime; whole seconds count, as in the `exp` claim.
    pub token_ttl: Duration,
    /// Lifetime of a refresh chain, counted from the login that started it.
    pub refresh_ttl: Duration,
    /// Behave like servers before 4.48: the refresh token comes as `refresh_token` in the
    /// 201 body (of logins and refreshes) and no cookie is set.
    pub legacy_refresh_in_body: bool,
}

impl Default for FakeConfig {
    /// Truedat's defaults: 600 s access tokens, 24 h refresh chains, current servers.
    fn default() -> FakeConfig {
        FakeConfig {
            user_name: "svc-proxy".to_owned(),
            password: "s3cret-Pa55".to_owned(),
            token_ttl: Duration::from_secs(600),
            refresh_ttl: Duration::from_secs(86_400),
            legacy_refresh_in_body: false,
        }
    }
}

/// How `POST /api/sessions` answers; anything but `Normal` applies to every attempt,
/// which is still counted and recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginMode {
    /// Check the credentials as td-auth does.
    Normal,
    /// This status with a Truedat-shaped error body (`{"errors":{"detail":…}}`).
    Status(u16),
    /// 200 `text/html`, like an ingress or captive-portal page.
    Html,
    /// 201 `{}`: JSON without a token.
    NoToken,
    /// 201 labelled `application/json` whose body is `not json`.
    NotJson,
    /// Read the request, then answer nothing until the mode changes (the parked attempts
    /// then get the new mode's answer) or the server stops.
    Hang,
}

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// Path and query exactly as received (origin form, even over HTTP/2).
    pub uri: Uri,
    /// The HTTP version it came in (HTTP/1.1 or HTTP/2).
    pub version: Version,
    /// Every header as received, repeated ones included.
    pub headers: HeaderMap,
    /// Logins: the whole body. Data requests: the body, or empty if it exceeded 64 KiB.
    pub body: Bytes,
}

impl RecordedRequest {
    fn new(parts: &Parts, body: Bytes) -> RecordedRequest {
        let uri = parts.uri.path_and_query().map_or_else(|| parts.uri.clone(), |target| Uri::from(target.clone()));
        RecordedRequest {
            method: parts.method.clone(),
            uri,
            version: parts.version,
            headers: parts.headers.clone(),
            body,
        }
    }
}

/// Byte `index` of every `/api/download` body, for checking downloads through the proxy.
pub fn download_byte(index: u64) -> u8 {
    body::pattern_byte(index)
}

/// A running fake; stops on [`shutdown`](FakeTruedat::shutdown) or when dropped.
pub struct FakeTruedat {
    state: Arc<State>,
    addr: SocketAddr,
    /// The TLS acceptor of an HTTPS fake, kept for [`listen_again`](Self::listen_again).
    tls: Option<TlsAcceptor>,
    /// Fired to end the accept loop, every connection and every HTTP/2 stream task.
    stop: CancellationToken,
    /// The accept loop; `None` once shutdown has awaited it.
    accept_task: Option<JoinHandle<()>>,
    /// Holds the port while [`stop_listening`](Self::stop_listening) keeps it closed.
    reserved: Option<restart::ReservedPort>,
}

impl FakeTruedat {
    /// Serves plain HTTP on a free port of 127.0.0.1.
    pub async fn start(config: FakeConfig) -> FakeTruedat {
        FakeTruedat::launch(any_loopback_port(), config, None)
            .expect("binding port 0 of the loopback interface does not fail")
    }

    /// Serves plain HTTP on `addr`, typically the address of a fake that was shut down,
    /// to test that the proxy recovers when Truedat comes back.
    pub async fn start_at(addr: SocketAddr, config: FakeConfig) -> std::io::Result<FakeTruedat> {
        FakeTruedat::launch(addr, config, None)
    }

    /// Serves HTTPS on a free port of 127.0.0.1; HTTP/2 is offered when `tls` lists `h2`
    /// in its ALPN protocols. See `support::tls` for a ready-made configuration.
    pub async fn start_tls(config: FakeConfig, tls: Arc<rustls::ServerConfig>) -> FakeTruedat {
        let acceptor = TlsAcceptor::from(tls);
        FakeTruedat::launch(any_loopback_port(), config, Some(acceptor))
            .expect("binding port 0 of the loopback interface does not fail")
    }

    fn launch(addr: SocketAddr, config: FakeConfig, tls: Option<TlsAcceptor>) -> std::io::Result<FakeTruedat> {
        let listener = server::bind(addr)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(config));
        let stop = CancellationToken::new();
        let accept_loop = server::accept_loop(listener, tls.clone(), Arc::clone(&state), stop.clone());
        Ok(FakeTruedat { state, addr, tls, stop, accept_task: Some(tokio::spawn(accept_loop)), reserved: None })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL: `http://127.0.0.1:PORT`, or `https://localhost:PORT` (the name in the
    /// test certificate) for TLS.
    pub fn url(&self) -> String {
        if self.tls.is_some() {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Changes how logins are answered, including those parked by [`LoginMode::Hang`].
    ///
    /// # Panics
    /// On `LoginMode::Status` with a code that is not an HTTP status (outside 100–999).
    pub fn set_login_mode(&self, mode: LoginMode) {
        if let LoginMode::Status(code) = mode {
            assert!(StatusCode::from_u16(code).is_ok(), "LoginMode::Status({code}) is not an HTTP status code");
        }
        self.state.set_login_mode(mode);
    }

    /// Rotates the password; sessions already open stay alive, as in td-auth.
    pub fn set_password(&self, password: &str) {
        self.state.set_password(password);
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.state.set_token_ttl(ttl);
    }

    /// Ends every access and refresh session at once, like a Redis flush.
    pub fn revoke_all(&self) {
        self.state.sessions.revoke_all();
    }

    /// Every `POST /api/sessions` received, whatever the answer.
    pub fn login_attempts(&self) -> usize {
        self.state.login_attempts()
    }

    /// Logins answered 201 with a token.
    pub fn logins(&self) -> usize {
        self.state.logins()
    }

    /// Refreshes answered 201.
    pub fn refreshes(&self) -> usize {
        self.state.refreshes()
    }

    /// `DELETE /api/sessions` answered 204.
    pub fn logouts(&self) -> usize {
        self.state.logouts()
    }

    /// Connections accepted since the fake started (restarts included).
    pub fn connections_accepted(&self) -> usize {
        self.state.connections.accepted()
    }

    /// Connections open right now.
    pub fn connections_open(&self) -> usize {
        self.state.connections.open_now()
    }

    /// Data requests whose bearer was accepted (a session alive in the allowlist):
    /// while this grows, a proxy in front holds a token and is forwarding.
    pub fn authenticated_requests(&self) -> usize {
        self.state.authenticated()
    }

    /// `GET /api/sessions` received (the proxy's check of a token after a 401).
    pub fn session_checks(&self) -> usize {
        self.state.session_checks()
    }

    /// `Some(status)`: `GET /api/sessions` is answered `status` by the
    /// ingress (td-auth's pods gone behind it) while every other route works;
    /// `None` (the default): td-auth answers it.
    pub fn set_session_check_failure(&self, status: Option<u16>) {
        self.state.set_session_check_failure(status);
    }

    /// Access sessions still alive in the allowlist (td-auth's Redis).
    pub fn live_sessions(&self) -> usize {
        self.state.sessions.live_access_sessions(now_secs())
    }

    /// Every `POST /api/sessions` received, in order of arrival.
    pub fn login_requests(&self) -> Vec<RecordedRequest> {
        self.state.login_requests()
    }

    /// Every request to a data route, refused ones included, in order of arrival.
    pub fn data_requests(&self) -> Vec<RecordedRequest> {
        self.state.data_requests()
    }

    /// Changes how data routes misbehave, including for requests parked by
    /// [`DataFault::AcceptButNeverAnswer`] and bodies stalled by [`DataFault::StallMidBody`].
    ///
    /// # Panics
    /// On `DataFault::ResetShare` with a share outside 0.0–1.0.
    pub fn set_data_fault(&self, fault: DataFault) {
        if let DataFault::ResetShare(share) = fault {
            assert!((0.0..=1.0).contains(&share), "DataFault::ResetShare({share}) is not a share");
        }
        self.state.faults.set_data_fault(fault);
    }

    /// The `X-Request-Id` of every data request answered with a connection reset
    /// ([`DataFault::ResetShare`]), in order; `-` for a request without one.
    pub fn reset_request_ids(&self) -> Vec<String> {
        self.state.faults.reset_request_ids()
    }

    /// `Some(d)`: close every connection `d` after a response is complete, unless a new
    /// request started on it meanwhile, without announcing it (no `Connection: close`), like
    /// a server with a very short keep-alive timeout. `None` (the default): keep-alive.
    pub fn set_idle_close(&self, after: Option<Duration>) {
        self.state.faults.set_idle_close(after);
    }

    /// `true`: close every connection, without answering, when a second request arrives on
    /// it, on any route. This is what a client sees when a server's keep-alive timeout fires
    /// just as its next request is on the wire: the race [`set_idle_close`] provokes now and
    /// then, every time. Default: `false`.
    ///
    /// [`set_idle_close`]: FakeTruedat::set_idle_close
    pub fn set_close_reused(&self, close: bool) {
        self.state.faults.set_close_reused(close);
    }

    /// Whether data requests are recorded for [`data_requests`](FakeTruedat::data_requests)
    /// (default: yes). A soak turns it off: millions of recorded requests would grow the
    /// test process by gigabytes.
    pub fn set_record_data(&self, record: bool) {
        self.state.faults.set_record_data(record);
    }

    /// Over TLS: the serial (lowercase hex, see [`serial_of`]) of the client certificate
    /// each accepted connection presented, in order; `None` for one without.
    pub fn client_cert_serials(&self) -> Vec<Option<String>> {
        self.state.client_certs.serials()
    }

    /// True as soon as `logins() >= n`; false if that takes longer than `timeout`.
    pub async fn wait_for_logins(&self, n: usize, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.state.wait_for_logins(n)).await.is_ok()
    }

    /// Stops accepting, closes the listener and aborts every open connection. Once this
    /// returns, connecting to [`addr`](FakeTruedat::addr) is refused.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let Some(accept_task) = self.accept_task.take() else {
            return;
        };
        // The task only fails by panicking (nothing aborts it here): let the test see it.
        if let Err(error) = accept_task.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}

impl Drop for FakeTruedat {
    /// Stops the server without waiting; use [`FakeTruedat::shutdown`] to be sure the port
    /// is closed.
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(accept_task) = self.accept_task.take() {
            accept_task.abort();
        }
    }
}

fn any_loopback_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// The current time in whole Unix seconds, the resolution of JWT claims.
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the system clock is set after 1970").as_secs()
}

/// Locks `mutex`, ignoring poisoning: a test that panicked while holding it has already
/// failed, and the data (counters, records) stays meaningful for the others.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
