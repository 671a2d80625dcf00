//! One runtime per thread when `runtime.worker_threads` is above 1 (on
//! Linux): each extra thread runs a current-thread runtime that serves a
//! proxy listener of its own on the same address (`SO_REUSEPORT`: the kernel
//! spreads new connections over the listeners), with a forwarding service
//! of its own, so a client connection, its upstream connections and every
//! wake-up of both stay on one thread, as with nginx's worker processes.
//! The main runtime serves the first listener and runs everything else (the
//! renewer, the admin server, the TLS watcher, the span export).
//!
//! A worker thread is started while the app is built (so a thread or a
//! runtime that cannot be had is a startup error), serves once the app runs,
//! stops accepting with the main listener and keeps its runtime until its
//! connections are drained or the app lets it go.
//!
//! Elsewhere the kernel either does not spread connections over listeners
//! sharing a port or does not allow sharing it: there `worker_threads` above
//! 1 means tokio's multi-thread runtime ([`SPREAD_BY_KERNEL`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// Whether `SO_REUSEPORT` load-balances new connections over the listeners
/// sharing a port (Linux since 3.9). The BSDs accept the option but hand
/// every connection to one socket.
pub const SPREAD_BY_KERNEL: bool = cfg!(target_os = "linux");

/// The accept backlog of each listener, as tokio's own `TcpListener::bind`.
const BACKLOG: i32 = 1024;

/// How many proxy listeners, each served by its own thread, `worker_threads` means.
pub fn listeners(worker_threads: usize) -> usize {
    if SPREAD_BY_KERNEL { worker_threads.max(1) } else { 1 }
}

/// `count` listeners on `addr`. Alone, a listener does not let any other
/// socket share its port. Several have `SO_REUSEPORT` set before binding:
/// the first binds `addr` (port 0 picks a free port, never one that another
/// group of sockets shares), the others the port it got.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = listener(addr, count > 1)?;
    let addr = first.local_addr()?;
    let mut all = Vec::with_capacity(count);
    all.push(first);
    for _ in 1..count {
        all.push(listener(addr, true)?);
    }
    Ok(all)
}

fn listener(addr: SocketAddr, share_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's bind does: a restarted proxy binds while its previous
    // connections sit in TIME_WAIT (a listening socket still refuses it).
    socket.set_reuse_address(true)?;
    if share_port {
        reuse_port(&socket)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(target_os = "linux")]
fn reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

/// [`listeners`] asks for one listener only where this is not Linux.
#[cfg(not(target_os = "linux"))]
fn reuse_port(_: &Socket) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "listeners sharing a port are only spread on Linux"))
}

/// A worker thread, waiting to serve, serving, or gone.
pub struct Worker {
    /// Dropped unsent when the app never runs: the thread ends.
    go: Option<oneshot::Sender<()>>,
    /// Closed when the thread's accept loop ended and its listener is closed.
    stopped: oneshot::Receiver<()>,
    /// Closed when the thread's runtime is gone, with every task it ran.
    gone: oneshot::Receiver<()>,
}

/// What a worker thread serves.
pub struct Job<S> {
    /// The thread's own listener, registered with its runtime when the thread starts.
    pub listener: std::net::TcpListener,
    /// The accept loop over that listener, ending when the app stops accepting.
    pub serve: S,
    /// Every connection task of the app: the runtime is kept until they are done.
    pub tasks: TaskTracker,
}

/// The worker threads of an app. Dropping them (a run cut short, an app
/// never run) ends every thread, cutting what it still serves.
pub struct Workers {
    threads: Vec<Worker>,
    /// Lets every thread go at once, even one still draining.
    release: DropGuard,
}

impl Workers {
    /// Starts one thread per job, each with a runtime of its own, and
    /// returns once every one is ready to serve.
    pub async fn spawn<S, F>(jobs: Vec<Job<S>>) -> io::Result<Workers>
    where
        S: FnOnce(TcpListener) -> F + Send + 'static,
        F: Future<Output = ()> + 'static,
    {
        let release = CancellationToken::new();
        let mut threads = Vec::with_capacity(jobs.len());
        for (index, job) in jobs.into_iter().enumerate() {
            // On failure the threads already started end: their `go` is dropped.
            threads.push(start(index + 1, job, release.clone()).await?);
        }
        Ok(Workers { threads, release: release.drop_guard() })
    }

    /// Lets every thread serve.
    pub fn start(&mut self) {
        for worker in &mut self.threads {
            if let Some(go) = worker.go.take() {
                let _ = go.send(());
            }
        }
    }

    /// Waits until every thread has stopped accepting (its listener is closed).
    pub async fn stopped(&mut self) {
        for worker in &mut self.threads {
            let _ = (&mut worker.stopped).await;
        }
    }

    /// Ends every thread, cutting whatever is still being served, and waits
    /// until their runtimes are gone.
    pub async fn end(self) {
        let Workers { threads, release } = self;
        drop(release);
        for worker in threads {
            let _ = worker.gone.await;
        }
    }
}

/// The channels between a worker thread and the app.
struct Signals {
    ready: oneshot::Sender<io::Result<()>>,
    go: oneshot::Receiver<()>,
    stopped: oneshot::Sender<()>,
    release: CancellationToken,
}

/// Starts thread `index` for `job`, ready once its runtime exists and
/// holds its listener.
async fn start<S, F>(index: usize, job: Job<S>, release: CancellationToken) -> io::Result<Worker>
where
    S: FnOnce(TcpListener) -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let (ready_tx, ready) = oneshot::channel();
    let (go_tx, go) = oneshot::channel();
    let (stopped_tx, stopped) = oneshot::channel();
    let (gone_tx, gone) = oneshot::channel::<()>();
    let signals = Signals { ready: ready_tx, go, stopped: stopped_tx, release };
    std::thread::Builder::new().name(format!("proxy-worker-{index}")).spawn(move || {
        run(job, signals);
        drop(gone_tx);
    })?;
    match ready.await {
        Ok(Ok(())) => Ok(Worker { go: Some(go_tx), stopped, gone }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other(format!("worker thread {index} ended while starting"))),
    }
}

/// The body of a worker thread: serves `job` once told to go, keeps the
/// runtime until every connection task is done or the app lets go, then
/// shuts the runtime down, which cuts whatever is still open. It does not
/// wait for blocking tasks (a name lookup of a dial in progress), which
/// would hold the exit of the whole process for as long as they last.
fn run<S, F>(job: Job<S>, signals: Signals)
where
    S: FnOnce(TcpListener) -> F,
    F: Future<Output = ()>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = signals.ready.send(Err(e));
            return;
        }
    };
    let listener = {
        // Registers the listener with this thread's reactor, not the main one.
        let _context = runtime.enter();
        TcpListener::from_std(job.listener)
    };
    let listener = match listener {
        Ok(listener) => listener,
        Err(e) => {
            let _ = signals.ready.send(Err(e));
            return;
        }
    };
    let _ = signals.ready.send(Ok(()));
    let (serve, tasks, stopped, release) = (job.serve, job.tasks, signals.stopped, signals.release);
    runtime.block_on(async move {
        if signals.go.await.is_err() {
            return;
        }
        let served = async move {
            serve(listener).await;
            drop(stopped);
            tasks.wait().await;
        };
        tokio::select! {
            () = served => {}
            () = release.cancelled() => {}
        }
    });
    runtime.shutdown_background();
}
