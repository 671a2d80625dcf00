//! The legacy tools: [`CLIENTS`] tasks, each with one keep-alive connection
//! to the proxy, sending a mix of GETs, downloads, POSTs small enough to be
//! replayed and POSTs too large for it. Every request carries its own
//! `X-Request-Id`, so that a failure can be matched with what Truedat did.
//!
//! Clients pass a gate around each request: the soak closes it to measure the
//! proxy while nothing is in flight, and opens it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};
use tokio::task::JoinHandle;

use crate::support::fake_truedat::download_byte;
use crate::support::h1::{BodyEnd, H1Conn, read_body};

/// Keep-alive client connections.
pub const CLIENTS: usize = 64;
/// `proxy.replay_body_limit` of the soak's proxy.
pub const REPLAY_LIMIT: usize = 16 * 1024;
/// How long one client waits for one whole answer: longer than anything
/// the proxy may legitimately take (`token.first_token_wait` 10 s plus
/// `upstream.request_timeout` 10 s plus a login).
const PATIENCE: Duration = Duration::from_secs(40);
/// Pause between two requests of one client, drawn uniformly up to this.
const THINK_MAX_MS: u64 = 20;
/// A bound on requests per client, whatever the duration.
const MAX_REQUESTS_PER_CLIENT: u64 = 2_000_000;

/// What a request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `GET /api/data_structures/N?page=M`, echoed.
    Get,
    /// `GET /api/download?bytes=N`, up to 64 KiB of pattern bytes.
    Download,
    /// `POST` of 1 B to 8 KiB: replayable after a 401.
    SmallPost,
    /// `POST` of 20 KiB to 96 KiB to `/api/upload`: over the replay limit.
    BigPost,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Get, Kind::Download, Kind::SmallPost, Kind::BigPost];

    /// GETs may be sent again after any transient failure; POSTs only if
    /// they never reached Truedat.
    pub fn is_idempotent(self) -> bool {
        matches!(self, Kind::Get | Kind::Download)
    }

    fn pick() -> Kind {
        match rand::random_range(0..100) {
            0..45 => Kind::Get,
            45..55 => Kind::Download,
            55..85 => Kind::SmallPost,
            _ => Kind::BigPost,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Get => "GET (echo)",
            Kind::Download => "GET (download)",
            Kind::SmallPost => "POST <= replay limit",
            Kind::BigPost => "POST > replay limit",
        }
    }
}

/// How a request failed, as the client saw it.
#[derive(Debug, Clone)]
pub enum What {
    /// A non-2xx answer; `from_truedat` when it carries the fake's own
    /// content type (the proxy's errors are plain `application/json`).
    Status { status: u16, from_truedat: bool, body: String },
    /// The connection to the proxy failed or broke mid-answer.
    Transport(String),
    /// No whole answer within [`PATIENCE`].
    Timeout,
    /// A 2xx whose body or request id is not what was sent.
    WrongAnswer(String),
}

/// One failed request.
#[derive(Debug, Clone)]
pub struct Failure {
    pub id: String,
    pub kind: Kind,
    pub started: Instant,
    pub ended: Instant,
    pub what: What,
}

/// What one client did.
#[derive(Debug, Default)]
pub struct ClientReport {
    /// Requests sent, by [`Kind`] (index in [`Kind::ALL`]).
    pub sent: [u64; 4],
    /// 2xx answers with the right body.
    pub ok: u64,
    pub failures: Vec<Failure>,
    /// New connections after the first.
    pub reconnects: u64,
}

/// The running clients.
pub struct Load {
    stop: Arc<AtomicBool>,
    gate: Arc<RwLock<()>>,
    tasks: Vec<JoinHandle<ClientReport>>,
}

impl Load {
    /// Starts the clients against the proxy at `addr`; none runs past `hard_stop`.
    pub fn start(addr: std::net::SocketAddr, hard_stop: Instant) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(RwLock::new(()));
        let payload = Bytes::from((0..128 * 1024).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
        let tasks = (0..CLIENTS)
            .map(|n| {
                let client = Client { n, addr, stop: stop.clone(), gate: gate.clone(), payload: payload.clone() };
                tokio::spawn(client.run(hard_stop))
            })
            .collect();
        Load { stop, gate, tasks }
    }

    /// Holds every client before its next request; resolves once none is in flight.
    pub async fn pause(&self) -> OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// Tells the clients to stop after their current request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the clients and collects their reports.
    pub async fn finish(self) -> Vec<ClientReport> {
        self.stop();
        let mut reports = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            reports.push(task.await.expect("a client task does not panic"));
        }
        reports
    }
}

struct Client {
    n: usize,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    gate: Arc<RwLock<()>>,
    /// Random bytes that POST bodies are cut from.
    payload: Bytes,
}

impl Client {
    async fn run(self, hard_stop: Instant) -> ClientReport {
        let mut report = ClientReport::default();
        let mut conn: Option<H1Conn> = None;
        for seq in 0..MAX_REQUESTS_PER_CLIENT {
            if self.stop.load(Ordering::SeqCst) || Instant::now() >= hard_stop {
                break;
            }
            let permit = self.gate.read().await;
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let kind = Kind::pick();
            report.sent[Kind::ALL.iter().position(|k| *k == kind).expect("a known kind")] += 1;
            let id = format!("soak-{:02}-{seq}", self.n);
            let started = Instant::now();
            let outcome = tokio::time::timeout(PATIENCE, self.exchange(&mut conn, &mut report, kind, &id, seq)).await;
            let what = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(what)) => Some(what),
                Err(_) => Some(What::Timeout),
            };
            match what {
                None => report.ok += 1,
                Some(what) => {
                    if matches!(what, What::Transport(_) | What::Timeout) {
                        conn = None;
                    }
                    report.failures.push(Failure { id, kind, started, ended: Instant::now(), what });
                }
            }
            drop(permit);
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..=THINK_MAX_MS))).await;
        }
        report
    }

    /// One request and its whole answer, checked.
    async fn exchange(
        &self,
        conn: &mut Option<H1Conn>,
        report: &mut ClientReport,
        kind: Kind,
        id: &str,
        seq: u64,
    ) -> Result<(), What> {
        if conn.as_ref().is_some_and(H1Conn::is_closed) {
            *conn = None;
            report.reconnects += 1;
        }
        if conn.is_none() {
            *conn = Some(H1Conn::connect(self.addr).await.map_err(|e| What::Transport(format!("connect: {e}")))?);
        }
        let conn = conn.as_mut().expect("connected above");
        let (request, expected) = self.request(kind, id, seq);
        let response = conn.send(request).await.map_err(|e| What::Transport(format!("send: {e}")))?;
        let status = response.status().as_u16();
        // Truedat's services answer JSON with a charset, its ingress HTML;
        // the proxy's own answers are plain `application/json`.
        let from_truedat = response.headers().get("content-type").is_some_and(|ct| {
            ct.as_bytes().eq_ignore_ascii_case(b"application/json; charset=utf-8")
                || ct.as_bytes().eq_ignore_ascii_case(b"text/html")
        });
        let echoed_id = response.headers().get("x-request-id").is_some_and(|v| v == id);
        let body = match read_body(response.into_body(), PATIENCE).await {
            BodyEnd::Complete(body) => body,
            BodyEnd::Broken(bytes, error) => {
                return Err(What::Transport(format!("{status} body broke after {} bytes: {error}", bytes.len())));
            }
            BodyEnd::Stalled(bytes) => {
                return Err(What::Transport(format!("{status} body stalled after {} bytes", bytes.len())));
            }
        };
        if !(200..300).contains(&status) {
            let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(What::Status { status, from_truedat, body });
        }
        if !echoed_id {
            return Err(What::WrongAnswer("X-Request-Id not returned".to_owned()));
        }
        expected.check(&body).map_err(What::WrongAnswer)
    }

    fn request(&self, kind: Kind, id: &str, seq: u64) -> (Request<Full<Bytes>>, Expected) {
        let builder = Request::builder().header("host", "localhost").header("x-request-id", id);
        let (builder, body, expected) = match kind {
            Kind::Get => {
                let path = format!("/api/data_structures/{}?page={seq}", self.n);
                (builder.method(Method::GET).uri(path), Bytes::new(), Expected::Echo(0, None))
            }
            Kind::Download => {
                let len = rand::random_range(1..=64 * 1024u64);
                let path = format!("/api/download?bytes={len}");
                (builder.method(Method::GET).uri(path), Bytes::new(), Expected::Download(len))
            }
            Kind::SmallPost | Kind::BigPost => {
                let len = match kind {
                    Kind::SmallPost => rand::random_range(1..=8 * 1024),
                    _ => rand::random_range(20 * 1024..=96 * 1024),
                };
                let start = rand::random_range(0..self.payload.len() - len);
                let body = self.payload.slice(start..start + len);
                let sha = hex(&Sha256::digest(&body));
                let (uri, expected) = match kind {
                    Kind::SmallPost => ("/api/data_structures", Expected::Echo(len as u64, Some(sha))),
                    _ => ("/api/upload", Expected::Upload(len as u64, sha)),
                };
                let builder = builder.method(Method::POST).uri(uri).header("content-type", "application/octet-stream");
                (builder, body, expected)
            }
        };
        (builder.body(Full::new(body)).expect("a valid request"), expected)
    }
}

/// What a 2xx body must say.
enum Expected {
    /// The echo route: body length and, for a POST, its SHA-256.
    Echo(u64, Option<String>),
    /// `len` bytes of the download pattern.
    Download(u64),
    /// `/api/upload`: length and SHA-256 of what Truedat received.
    Upload(u64, String),
}

impl Expected {
    fn check(&self, body: &[u8]) -> Result<(), String> {
        match self {
            Expected::Download(len) => {
                let right = body.len() as u64 == *len
                    && body.iter().enumerate().step_by(997).all(|(i, b)| *b == download_byte(i as u64));
                right.then_some(()).ok_or_else(|| format!("download of {len} bytes: got {} wrong bytes", body.len()))
            }
            Expected::Echo(len, sha) => {
                let json: serde_json::Value =
                    serde_json::from_slice(body).map_err(|e| format!("echo not JSON: {e}"))?;
                let right = json["body_len"] == *len && sha.as_ref().is_none_or(|sha| json["body_sha256"] == *sha);
                right.then_some(()).ok_or_else(|| format!("echo says {} bytes, {} sent", json["body_len"], len))
            }
            Expected::Upload(len, sha) => {
                let json: serde_json::Value =
                    serde_json::from_slice(body).map_err(|e| format!("upload not JSON: {e}"))?;
                let right = json["bytes"] == *len && json["sha256"] == *sha;
                right.then_some(()).ok_or_else(|| format!("upload says {} bytes, {} sent", json["bytes"], len))
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
