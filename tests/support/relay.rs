//! Byte-level middlemen for TLS and egress tests:
//!
//! - [`TcpRelay`]: forwards TCP connections to a target that a test can switch
//!   at run time (say, from a good Truedat to one with a bad certificate);
//! - [`TlsFront`]: terminates TLS with a test certificate, records what the
//!   client negotiated (SNI, ALPN) and the plaintext it sent, and relays the
//!   plaintext to a plain-HTTP fake, so a test can see which HTTP version the
//!   proxy really spoke inside TLS;
//! - [`RecordingStream`]: a stream wrapper recording every byte read and written.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_rustls::TlsAcceptor;

/// Bytes seen by a [`RecordingStream`], shared with the test.
#[derive(Clone, Default, Debug)]
pub struct Recording(Arc<Mutex<Vec<u8>>>);

impl Recording {
    pub(super) fn push(&self, bytes: &[u8]) {
        lock(&self.0).extend_from_slice(bytes);
    }

    /// Everything recorded so far.
    pub fn bytes(&self) -> Vec<u8> {
        lock(&self.0).clone()
    }

    /// How many bytes were recorded.
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stream that records what passes through it, in each direction.
pub struct RecordingStream<S> {
    inner: S,
    read: Recording,
    written: Recording,
}

impl<S> RecordingStream<S> {
    /// Wraps `inner`; bytes read from it go to `read`, bytes written to it to `written`.
    pub fn new(inner: S, read: Recording, written: Recording) -> RecordingStream<S> {
        RecordingStream { inner, read, written }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RecordingStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            this.read.push(&buf.filled()[before..]);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RecordingStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.written.push(&buf[..*n]);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP relay on 127.0.0.1 whose target can change; stops when dropped.
pub struct TcpRelay {
    addr: SocketAddr,
    routes: Arc<Mutex<Routes>>,
    accept_task: JoinHandle<()>,
}

/// Where new connections go, and the connections relayed so far.
struct Routes {
    target: SocketAddr,
    open: Vec<AbortHandle>,
    accepted: usize,
}

impl TcpRelay {
    /// Relays every connection to `target` until told otherwise.
    pub async fn start(target: SocketAddr) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let routes = Arc::new(Mutex::new(Routes { target, open: Vec::new(), accepted: 0 }));
        let accept_task = tokio::spawn(relay_loop(listener, routes.clone()));
        TcpRelay { addr, routes, accept_task }
    }

    /// The relay's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends new connections to `target` and cuts every connection relayed so
    /// far, so that nothing reaches the old target any more.
    pub fn switch_to(&self, target: SocketAddr) {
        let mut routes = lock(&self.routes);
        routes.target = target;
        for connection in routes.open.drain(..) {
            connection.abort();
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        lock(&self.routes).accepted
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.accept_task.abort();
        for connection in lock(&self.routes).open.drain(..) {
            connection.abort();
        }
    }
}

async fn relay_loop(listener: TcpListener, routes: Arc<Mutex<Routes>>) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        // The target is read and the connection registered under one lock, so
        // a switch either sees this connection (and cuts it) or precedes it.
        let mut routes = lock(&routes);
        routes.accepted += 1;
        let target = routes.target;
        let task = tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        routes.open.retain(|c| !c.is_finished());
        routes.open.push(task.abort_handle());
    }
}

/// One TLS connection as the [`TlsFront`] saw it.
#[derive(Clone, Debug)]
pub struct TlsSession {
    /// The SNI the client sent.
    pub server_name: Option<String>,
    /// The protocol ALPN settled on, if any.
    pub alpn: Option<Vec<u8>>,
    /// The plaintext the client sent inside TLS.
    pub plaintext: Recording,
}

/// Terminates TLS and relays the plaintext to a plain-HTTP server; stops when dropped.
pub struct TlsFront {
    addr: SocketAddr,
    sessions: Arc<Mutex<Vec<TlsSession>>>,
    accept_task: JoinHandle<()>,
}

impl TlsFront {
    /// Accepts TLS with `config` on a free loopback port and relays to `target`.
    pub async fn start(config: Arc<rustls::ServerConfig>, target: SocketAddr) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let acceptor = TlsAcceptor::from(config);
        let accept_task = tokio::spawn(front_loop(listener, acceptor, target, sessions.clone()));
        TlsFront { addr, sessions, accept_task }
    }

    /// The front's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:PORT`: the name in the test certificates.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Every completed handshake so far.
    pub fn sessions(&self) -> Vec<TlsSession> {
        lock(&self.sessions).clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn front_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    target: SocketAddr,
    sessions: Arc<Mutex<Vec<TlsSession>>>,
) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((inbound, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let sessions = sessions.clone();
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(inbound).await else {
                return;
            };
            let (_, connection) = tls.get_ref();
            let plaintext = Recording::default();
            lock(&sessions).push(TlsSession {
                server_name: connection.server_name().map(str::to_owned),
                alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
                plaintext: plaintext.clone(),
            });
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let mut tls = RecordingStream::new(tls, plaintext, Recording::default());
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut outbound).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Locks `mutex`, ignoring poisoning (a test that panicked has already failed).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
