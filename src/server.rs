//! The accept loop shared by the proxy and admin listeners: HTTP/1.1 with
//! keep-alive, a bound on concurrent connections, bounded request heads, and
//! a graceful drain. When every slot is taken, the proxy listener lets new
//! connections wait; the admin listener evicts an idle one ([`slots`]).
//!
//! [`slots`]: crate::slots

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ProxyBody;
use crate::slots::{Busy, Registration, Slots, Tracked};

/// Per-listener connection settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// hyper's read buffer: a head that does not fit is answered 431 by hyper.
    pub max_buf_size: usize,
    /// A client must send its whole request head within this time
    /// (slow-loris protection); hyper also closes a keep-alive connection
    /// that stays idle this long.
    pub header_read_timeout: Duration,
    /// A write to the client that makes no progress for this long fails,
    /// which ends the connection.
    pub send_timeout: Duration,
    /// When every slot is taken, a new connection evicts the oldest one that
    /// is idle or has not sent a whole request head (SPEC §6, the admin
    /// listener) instead of waiting in the accept backlog.
    pub evict_idle: bool,
}

/// How a listener's connections end.
#[derive(Clone, Default)]
pub struct Drain {
    /// Fired at shutdown: each connection finishes its current exchange, then closes.
    pub signal: CancellationToken,
    /// Every connection task, so the caller can wait for all of them.
    pub tasks: TaskTracker,
}

/// Serves `listener` until `stop` fires, then drops it so new connections are
/// refused. Connections already accepted end through `drain`. `handlers`
/// makes the request handler of each new connection, from its peer's
/// address, so a connection can own state of its own.
pub async fn serve<M, H, F>(listener: TcpListener, handlers: M, limits: Limits, stop: CancellationToken, drain: Drain)
where
    M: Fn(SocketAddr) -> H,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let slots = SharedSlots::new(limits.max_connections);
    accept_loop(listener, handlers, limits, slots, false, stop, drain).await;
}

/// The connection slots of several listeners on one address (a thread
/// each), and the signal that asks all their keep-alive connections to
/// close when every slot is taken (whichever listener has a connection
/// waiting, the slots may all be held by another's connections).
#[derive(Clone)]
pub struct SharedSlots {
    permits: Arc<Semaphore>,
    /// Pressure and drain, to every connection of every listener sharing the slots.
    close: Arc<watch::Sender<Close>>,
}

impl SharedSlots {
    /// `max_connections` slots for all the listeners together.
    pub fn new(max_connections: usize) -> SharedSlots {
        SharedSlots {
            permits: Arc::new(Semaphore::new(max_connections)),
            close: Arc::new(watch::Sender::new(Close::No)),
        }
    }
}

/// [`serve`] for one of several listeners sharing `slots`
/// (`limits.max_connections` is not used). A connection is accepted before
/// it waits for a slot: a listener that held a slot while waiting for a
/// connection could keep the others' connections waiting in their backlogs
/// (with one slot, forever). Each listener holds at most one such connection.
pub async fn serve_shared<M, H, F>(
    listener: TcpListener,
    handlers: M,
    limits: Limits,
    slots: SharedSlots,
    stop: CancellationToken,
    drain: Drain,
) where
    M: Fn(SocketAddr) -> H,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    accept_loop(listener, handlers, limits, slots, true, stop, drain).await;
}

/// The loop of [`serve`] and [`serve_shared`]; `accept_first`: a connection
/// is accepted before it waits for its slot.
async fn accept_loop<M, H, F>(
    listener: TcpListener,
    handlers: M,
    limits: Limits,
    shared_slots: SharedSlots,
    accept_first: bool,
    stop: CancellationToken,
    drain: Drain,
) where
    M: Fn(SocketAddr) -> H,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    // `close` says `Pressure` when every slot is taken: keep-alive
    // connections then close after their current exchange, so a client that
    // pools more connections than the limit cannot keep waiting ones out
    // until they time out idle (nginx reclaims idle keep-alive connections
    // the same way). A watch, not a Notify: a connection subscribed at
    // accept time sees a later signal even if its task had not run yet when
    // it was sent. The drain goes through the same watch, so a connection
    // waits on one signal, polled at each of its wake-ups (five or six per
    // request).
    let SharedSlots { permits, close } = shared_slots;
    tokio::spawn(forward_drain(drain.signal.clone(), close.clone()));
    let slots = Slots::default();
    let mut accept_errors = 0u32;
    loop {
        // A listener alone that waits takes its slot before accepting, so
        // the connections beyond the limit wait in the kernel's backlog.
        let waited = if limits.evict_idle || accept_first {
            None
        } else {
            tokio::select! {
                permit = slot(&permits, &close) => Some(permit),
                () = stop.cancelled() => break,
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => { accept_errors = 0; accepted }
                Err(error) => { accept_errors += 1; back_off(error, accept_errors).await; continue }
            },
            () = stop.cancelled() => break,
        };
        let permit = match waited {
            Some(permit) => permit,
            None => tokio::select! {
                permit = room(&permits, &slots, limits.evict_idle, &close) => permit,
                () = stop.cancelled() => break,
            },
        };
        let registration = limits.evict_idle.then(|| slots.register());
        let mut closing = close.subscribe();
        // A subscription takes the value as seen; a drain already begun is not.
        if *closing.borrow() == Close::Drain {
            closing.mark_changed();
        }
        let connection = serve_connection(stream, peer, handlers(peer), limits, closing, registration);
        drain.tasks.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
}

/// A slot for a connection just accepted: made by evicting the oldest idle
/// connection when `evict_idle` (see [`evict`]), otherwise waited for as [`slot`] does.
async fn room(
    permits: &Arc<Semaphore>,
    slots: &Slots,
    evict_idle: bool,
    close: &watch::Sender<Close>,
) -> OwnedSemaphorePermit {
    if evict_idle { evict(permits, slots).await } else { slot(permits, close).await }
}

/// A slot for a connection just accepted, made by evicting the oldest idle
/// connection when none is free; while every connection is busy, waits for
/// one to end or to become idle.
async fn evict(permits: &Arc<Semaphore>, slots: &Slots) -> OwnedSemaphorePermit {
    loop {
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            return permit;
        }
        // The evicted connection's task ends at once and frees its slot.
        slots.evict_oldest_idle();
        if let Ok(permit) = tokio::time::timeout(PRESSURE_REPEAT, permits.clone().acquire_owned()).await {
            return permit.expect("the semaphore is never closed");
        }
    }
}

/// How often a full listener asks again for keep-alive connections to close:
/// a connection accepted but not yet served is spared the first time.
const PRESSURE_REPEAT: Duration = Duration::from_millis(50);

/// A connection slot; while none is free, asks keep-alive connections to close.
async fn slot(permits: &Arc<Semaphore>, close: &watch::Sender<Close>) -> OwnedSemaphorePermit {
    loop {
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            return permit;
        }
        // Each send wakes the connections again, unless the drain already began.
        close.send_if_modified(|close| {
            let pressing = *close != Close::Drain;
            if pressing {
                *close = Close::Pressure;
            }
            pressing
        });
        if let Ok(permit) = tokio::time::timeout(PRESSURE_REPEAT, permits.clone().acquire_owned()).await {
            return permit.expect("the semaphore is never closed");
        }
    }
}

/// Serves one client connection until it ends, closing it gracefully when
/// `close` says so, and at once when it is evicted.
async fn serve_connection<H, F>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    limits: Limits,
    mut close: watch::Receiver<Close>,
    registration: Option<Registration>,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(limits.send_timeout));
    // Set once the first request arrived: a connection is only closed under
    // pressure after it served one, never before reading the request its
    // client already sent.
    let served = Arc::new(AtomicBool::new(false));
    let busy = registration.as_ref().map(|r| r.busy.clone());
    let service = service_fn({
        let served = served.clone();
        move |request| {
            served.store(true, Ordering::Relaxed);
            let busy = Busy::begin(busy.as_ref());
            let response = handler(request);
            async move { Ok::<_, Infallible>(response.await?.map(|body| Tracked::new(body, busy))) }
        }
    });
    let evictable = registration.is_some();
    let evicted = registration.as_ref().map(|r| r.evicted.clone()).unwrap_or_default();
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buf_size)
        .keep_alive(true)
        .serve_connection(TokioIo::new(Box::pin(stream)), service);
    tokio::pin!(connection);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            // Idle or still without a whole head: nothing of an exchange is lost.
            () = evicted.cancelled(), if evictable => {
                tracing::debug!(%peer, "connection evicted: every slot was taken");
                return;
            }
            // An error means no sender is left, and so no signal can come.
            Ok(()) = close.changed(), if !closing => {
                let reason = *close.borrow_and_update();
                if reason == Close::Drain || served.load(Ordering::Relaxed) {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, error = %error, "client connection ended with an error");
    }
}

/// What asks a listener's connections to close once their current exchange is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    No,
    /// Every slot is taken: connections that served a request close.
    Pressure,
    /// Shutdown: every connection closes.
    Drain,
}

/// Passes the drain on to the connections' watch; the sender it holds keeps
/// the watch open until then.
async fn forward_drain(drain: CancellationToken, close: Arc<watch::Sender<Close>>) {
    drain.cancelled().await;
    close.send_replace(Close::Drain);
}

/// Accept errors such as EMFILE are not fatal: wait, so the loop does not
/// spin, and try again. Errors about one connection are skipped at once.
async fn back_off(error: std::io::Error, consecutive: u32) {
    use std::io::ErrorKind::*;
    if matches!(error.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
        return;
    }
    let delay = Duration::from_millis(10u64 << consecutive.min(7));
    if consecutive == 1 {
        tracing::error!(error = %error, "accepting a connection failed; retrying with backoff");
    }
    tokio::time::sleep(delay).await;
}
