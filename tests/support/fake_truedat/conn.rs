//! One accepted connection as its request handlers see it: a handle that can
//! end the connection from inside a handler, abruptly (a TCP reset, as a
//! crashing server or a middlebox does) or quietly (a FIN without any
//! `Connection: close`, as a server whose keep-alive timeout fired does).
//!
//! Why it exists: the fault tests and the soak need Truedat to break
//! connections under the proxy's pool, and hyper gives a handler no way to
//! reach its socket. The accept loop keeps a duplicate of the socket (the same
//! open file, so `SO_LINGER` set on it applies to the connection) and stops
//! serving the connection when the handle fires; the handle reaches the
//! handlers in the request's extensions.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::lock;

/// Ends one connection from a handler; cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct ConnHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Fired to make the accept loop drop the connection.
    end: CancellationToken,
    /// A duplicate of the socket, used only to set `SO_LINGER` 0 before a
    /// reset. Taken (closed) as soon as the connection ends, so that it never
    /// keeps a closed connection open.
    twin: Mutex<Option<std::net::TcpStream>>,
    /// Requests started on this connection, so that an idle close can tell
    /// whether a new request arrived meanwhile.
    requests: AtomicU64,
}

impl ConnHandle {
    /// Wraps a freshly accepted stream; returns the stream to serve and its handle.
    pub(super) fn new(stream: TcpStream) -> io::Result<(TcpStream, ConnHandle)> {
        let stream = stream.into_std()?;
        let twin = stream.try_clone()?;
        let stream = TcpStream::from_std(stream)?;
        let inner = Inner { end: CancellationToken::new(), twin: Mutex::new(Some(twin)), requests: AtomicU64::new(0) };
        Ok((stream, ConnHandle { inner: Arc::new(inner) }))
    }

    /// Ends the connection with a TCP reset: `SO_LINGER` 0, then close.
    pub(super) fn reset(&self) {
        if let Some(twin) = lock(&self.inner.twin).take() {
            // Failing leaves a plain close, which still breaks the exchange.
            let _ = TcpSocket::from_std_stream(twin).set_zero_linger();
        }
        self.inner.end.cancel();
    }

    /// Writes `bytes` straight onto the socket, under any TLS layer: a TLS
    /// record that does not decrypt, as a broken middlebox sends one. The
    /// connection then stays open, unanswered, until it ends.
    pub(super) fn inject_raw(&self, bytes: &[u8]) {
        use std::io::Write;
        if let Some(twin) = lock(&self.inner.twin).as_mut() {
            // The socket is non-blocking; a few dozen bytes fit its buffer.
            let _ = twin.write_all(bytes);
        }
    }

    /// Ends the connection with a plain close (FIN; a reset if the peer's
    /// next request is already waiting unread, as with any server).
    pub(super) fn close(&self) {
        self.release();
        self.inner.end.cancel();
    }

    /// Resolves once `reset` or `close` was called.
    pub(super) async fn ended(&self) {
        self.inner.end.cancelled().await;
    }

    /// Closes the duplicate; called when the connection ends for any reason.
    pub(super) fn release(&self) {
        drop(lock(&self.inner.twin).take());
    }

    /// Counts a request starting on this connection.
    pub(super) fn request_started(&self) {
        self.inner.requests.fetch_add(1, Ordering::SeqCst);
    }

    /// Requests started so far.
    pub(super) fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }
}
