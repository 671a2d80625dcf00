//! Assembles the proxy: binds both listeners (so port 0 works and the real
//! addresses are known before anything runs; with several worker threads,
//! one proxy listener per thread, see [`workers`]), starts the renewer and
//! the TLS material watcher (and, when tracing is on, the span export),
//! serves until shutdown is triggered, then drains in the order of SPEC §7.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::auth::Auth;
use crate::auth::cell::Token;
use crate::auth::liveness::Liveness;
use crate::auth::renewer::Renewer;
use crate::auth::session::Sessions;
use crate::config::{Config, Tracing};
use crate::proxy::Proxy;
use crate::server::{self, Drain, Limits, SharedSlots};
use crate::telemetry;
use crate::tls;
use crate::trace::{self, export::Pipeline};
use crate::upstream;
use crate::workers::{self, Job, Workers};

/// hyper's smallest allowed read buffer.
const MIN_BUF_SIZE: usize = 8192;
/// How often histogram and idle-metric upkeep runs (the exporter has no
/// task of its own when rendered on our route).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// A startup failure: one line naming the cause and the key or address.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key} {addr}: cannot listen: {source}")]
    Bind { key: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Upstream(#[from] upstream::BuildError),
    #[error(transparent)]
    Tracing(#[from] trace::export::SetupError),
    #[error("runtime.worker_threads: cannot start a worker thread: {0}")]
    Worker(std::io::Error),
}

impl From<tls::Error> for StartError {
    fn from(error: tls::Error) -> StartError {
        StartError::Upstream(error.into())
    }
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything drained in time: exit 0.
    Clean,
    /// `shutdown.drain_timeout` passed with this many requests still in flight: exit 1.
    DrainTimedOut(usize),
}

/// The addresses actually bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

/// A proxy with its listeners bound, ready to run.
pub struct App {
    config: Config,
    /// Taken by `run`.
    listeners: Option<(TcpListener, TcpListener)>,
    auth: Arc<Auth>,
    /// The forwarding service of the main runtime's listener.
    proxy: Arc<Proxy>,
    /// How every proxy listener is served and drained.
    serving: Serving,
    /// The other threads' listeners, when `runtime.worker_threads` asks for
    /// more than one; taken by `run`.
    workers: Option<Workers>,
    /// The forwarding services of those threads, for the drain report.
    worker_proxies: Vec<Arc<Proxy>>,
    sessions: Arc<Sessions>,
    /// The TLS material every new upstream connection reads; watched while running.
    tls: Arc<tls::Material>,
    /// How often the watcher checks the TLS files (`tls::POLL_INTERVAL`).
    tls_poll: Duration,
    bound: Bound,
    /// The span export, when tracing is on: flushed at shutdown.
    spans: Option<Pipeline>,
}

impl App {
    /// Builds the client and binds the listeners; nothing talks to Truedat yet.
    /// `config` must have passed `Config::validate`.
    pub async fn build(config: Config) -> Result<App, StartError> {
        // First, so that the client-certificate gauge set while loading is recorded.
        telemetry::metrics_handle();
        let origin = config.origin();
        let tls = Arc::new(tls::Material::load(&config.upstream, origin.is_https())?);
        let clients = upstream::build(&config.upstream, &config.proxy_env, &origin, tls.clone())?;
        let threads = workers::listeners(config.runtime.worker_threads);
        let (proxy_listener, worker_listeners) = bind_proxy(config.listen.address, threads)?;
        let admin_listener = bind("admin.address", config.admin.address).await?;
        let bound = Bound {
            proxy: local_addr("listen.address", &proxy_listener)?,
            admin: local_addr("admin.address", &admin_listener)?,
        };
        // Last, so that nothing is left running when a listener cannot bind.
        let (tracer, spans) = match &config.tracing {
            Tracing::On(settings) => {
                let (pipeline, tracer) = Pipeline::start(settings)?;
                (trace::Tracer::new(tracer, &origin), Some(pipeline))
            }
            Tracing::Off(_) => (trace::Tracer::default(), None),
        };
        let token = &config.token;
        let auth = Arc::new(Auth::new(token.first_token_wait.0, token.login_timeout.0));
        let sessions = Arc::new(Sessions::new(
            clients.pool.clone(),
            origin.clone(),
            &config.credentials,
            token.login_timeout.0,
            tracer.clone(),
        ));
        let liveness = Arc::new(Liveness::new(sessions.clone()));
        let proxy = Arc::new(Proxy::new(auth.clone(), liveness, &clients, &config, tracer));
        let serving = Serving::new(&config, threads);
        let worker_proxies: Vec<_> =
            worker_listeners.iter().map(|_| Arc::new(proxy.for_thread(&clients.for_thread()))).collect();
        let workers = start_workers(worker_listeners, &worker_proxies, &serving).await?;
        let listeners = Some((proxy_listener, admin_listener));
        Ok(App {
            config,
            listeners,
            auth,
            proxy,
            serving,
            workers,
            worker_proxies,
            sessions,
            tls,
            tls_poll: tls::POLL_INTERVAL,
            bound,
            spans,
        })
    }

    /// Checks the TLS files every `every` instead of `tls::POLL_INTERVAL`
    /// (tests use a short one; SPEC only bounds how late a change may be noticed).
    pub fn with_tls_poll_interval(mut self, every: Duration) -> App {
        self.tls_poll = every;
        self
    }

    /// Where the listeners are.
    pub fn bound(&self) -> Bound {
        self.bound
    }

    /// Runs until `shutdown` is cancelled (by a signal, `/quitquitquit` or a
    /// test), then shuts down gracefully.
    pub async fn run(mut self, shutdown: CancellationToken) -> Outcome {
        let (proxy_listener, admin_listener) =
            self.listeners.take().expect("run consumes the app, so listeners are present");
        let tasks = CancellationToken::new();
        let renewer = Renewer::new(self.auth.clone(), self.sessions.clone(), self.config.token.clone());
        let renewer = tokio::spawn(renewer.run(tasks.child_token()));
        let upkeep = tokio::spawn(metrics_upkeep(tasks.child_token()));
        let tls_watch = tokio::spawn(self.tls.clone().watch(self.tls_poll, tasks.child_token()));
        let admin = self.serve_admin(admin_listener, shutdown.clone(), tasks.child_token());
        let proxy = tokio::spawn(serve_proxy(proxy_listener, self.proxy.clone(), self.serving.clone()));
        let mut workers = self.workers.take();
        if let Some(workers) = &mut workers {
            workers.start();
        }
        tracing::info!(proxy = %self.bound.proxy, admin = %self.bound.admin, upstream = %self.config.origin().authority(), "truedat-auth-proxy started");

        shutdown.cancelled().await;
        let settings = &self.config.shutdown;
        tracing::info!(delay_ms = settings.delay.0.as_millis() as u64, "shutdown begun: readiness is now 503");
        tokio::time::sleep(settings.delay.0).await;
        self.serving.stop.cancel();
        let _ = proxy.await;
        if let Some(workers) = &mut workers {
            workers.stopped().await;
        }
        let drain_deadline = Instant::now() + settings.drain_timeout.0;
        let outcome = self.drain(settings.drain_timeout.0).await;
        if let Some(workers) = workers {
            // Drained, or the drain timed out: what is left is cut.
            workers.end().await;
        }
        tasks.cancel();
        let issued = renewer.await.unwrap_or_default();
        self.logout(issued).await;
        if let Some(spans) = self.spans.take() {
            // The spans share the drain's time: what is left of it.
            spans.shutdown(drain_deadline.saturating_duration_since(Instant::now())).await;
        }
        admin.abort();
        upkeep.abort();
        let _ = tls_watch.await;
        outcome
    }

    fn serve_admin(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let admin = Arc::new(Admin::new(self.auth.clone(), shutdown));
        let limits = Limits {
            max_connections: 64,
            max_buf_size: MIN_BUF_SIZE * 2,
            header_read_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            // Probes must get through whatever holds the port (SPEC §6).
            evict_idle: true,
        };
        let handler = move |peer| {
            let admin = admin.clone();
            move |request| admin.clone().handle(request, peer)
        };
        // The admin port answers until the process exits: its connections are not drained.
        tokio::spawn(server::serve(listener, handler, limits, stop, Drain::default()))
    }

    async fn drain(&self, timeout: Duration) -> Outcome {
        let drain = &self.serving.drain;
        drain.signal.cancel();
        drain.tasks.close();
        match tokio::time::timeout(timeout, drain.tasks.wait()).await {
            Ok(()) => {
                tracing::info!("all client connections drained");
                Outcome::Clean
            }
            Err(_) => {
                let cut = self.proxy.in_flight() + self.worker_proxies.iter().map(|p| p.in_flight()).sum::<usize>();
                tracing::error!(
                    requests_cut = cut,
                    timeout_ms = timeout.as_millis() as u64,
                    "shutdown.drain_timeout passed; cutting {cut} in-flight requests"
                );
                Outcome::DrainTimedOut(cut)
            }
        }
    }

    /// Ends the Truedat session of every token obtained that may still be
    /// alive (SPEC §3.6), so that no token copied from the pod outlives it.
    /// All the logouts together are bounded by `token.login_timeout`.
    async fn logout(&self, issued: Vec<Arc<Token>>) {
        if !self.config.token.logout_on_shutdown {
            return;
        }
        let now = Instant::now();
        let mut logouts = JoinSet::new();
        for token in issued.into_iter().filter(|t| t.may_be_alive(now) && !self.auth.is_proven_dead(t.generation)) {
            let sessions = self.sessions.clone();
            logouts.spawn(async move { (token.generation, sessions.logout(token.bearer()).await) });
        }
        let all = async {
            while let Some(Ok((generation, result))) = logouts.join_next().await {
                match result {
                    Ok(()) => tracing::info!(generation, "Truedat session logged out"),
                    Err(error) => tracing::warn!(generation, error = %error, "could not log a Truedat session out"),
                }
            }
        };
        if tokio::time::timeout(self.config.token.login_timeout.0, all).await.is_err() {
            tracing::warn!("logging out took longer than token.login_timeout; giving up on the rest");
        }
    }
}

/// How the proxy listeners are served: the same on every thread.
#[derive(Clone)]
struct Serving {
    limits: Limits,
    /// With several listeners, the `listen.max_connections` slots they all take from.
    shared_slots: Option<SharedSlots>,
    /// Fired at shutdown: every listener closes.
    stop: CancellationToken,
    /// Every client connection of every thread.
    drain: Drain,
}

impl Serving {
    fn new(config: &Config, listeners: usize) -> Serving {
        let max_head = config.proxy.max_request_header_bytes.0 as usize;
        let limits = Limits {
            max_connections: config.listen.max_connections,
            // Heads up to the limit reach our handler, which answers 431 in
            // JSON; only far larger ones are cut by hyper itself.
            max_buf_size: (max_head * 2).max(MIN_BUF_SIZE),
            header_read_timeout: config.listen.header_read_timeout.0,
            send_timeout: config.listen.send_timeout.0,
            evict_idle: false,
        };
        let shared_slots = (listeners > 1).then(|| SharedSlots::new(limits.max_connections));
        Serving { limits, shared_slots, stop: CancellationToken::new(), drain: Drain::default() }
    }
}

/// Serves the proxy `listener` with `proxy` until `serving.stop` fires.
async fn serve_proxy(listener: TcpListener, proxy: Arc<Proxy>, serving: Serving) {
    // Each client connection gets its own link to Truedat.
    let handler = move |_peer| {
        let (proxy, link) = (proxy.clone(), Arc::new(proxy.link()));
        move |request| proxy.clone().handle(request, link.clone())
    };
    let Serving { limits, shared_slots, stop, drain } = serving;
    match shared_slots {
        Some(slots) => server::serve_shared(listener, handler, limits, slots, stop, drain).await,
        None => server::serve(listener, handler, limits, stop, drain).await,
    }
}

/// The main runtime's proxy listener and those of the other threads, all on
/// one address (see [`workers::bind`]).
fn bind_proxy(addr: SocketAddr, count: usize) -> Result<(TcpListener, Vec<std::net::TcpListener>), StartError> {
    let key = "listen.address";
    let mut all = workers::bind(addr, count).map_err(|source| StartError::Bind { key, addr, source })?;
    let others = all.split_off(1);
    let first = all.pop().expect("workers::bind returns at least one listener");
    let first = TcpListener::from_std(first).map_err(|source| StartError::Bind { key, addr, source })?;
    Ok((first, others))
}

/// A thread for each of `listeners`, serving it with its own forwarding
/// service; none for a single listener.
async fn start_workers(
    listeners: Vec<std::net::TcpListener>,
    proxies: &[Arc<Proxy>],
    serving: &Serving,
) -> Result<Option<Workers>, StartError> {
    if listeners.is_empty() {
        return Ok(None);
    }
    let jobs = listeners
        .into_iter()
        .zip(proxies)
        .map(|(listener, proxy)| {
            let (proxy, serving) = (proxy.clone(), serving.clone());
            let tasks = serving.drain.tasks.clone();
            Job { listener, serve: move |listener| serve_proxy(listener, proxy, serving), tasks }
        })
        .collect();
    Workers::spawn(jobs).await.map(Some).map_err(StartError::Worker)
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { key, addr, source })
}

fn local_addr(key: &'static str, listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind { key, addr: SocketAddr::from(([0, 0, 0, 0], 0)), source })
}

async fn metrics_upkeep(stop: CancellationToken) {
    let handle = telemetry::metrics_handle();
    let mut tick = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}
