//! Sockets and connections: binding (with `SO_REUSEADDR`, so a test can bring the fake
//! back on the port it just left), the accept loop, TLS, and HTTP/1.1 or HTTP/2 per
//! connection. One cancellation token ends all of it at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::conn::ConnHandle;
use super::state::State;
use super::{idle_close, router};

/// Pending connections the kernel queues for us.
const BACKLOG: u32 = 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Binds `addr` with `SO_REUSEADDR`: connections the fake aborted at shutdown leave
/// sockets in TIME_WAIT that would otherwise keep the port busy.
pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `listener` until `stop` fires, then closes it and aborts every open
/// connection, so clients see the server vanish rather than drain.
pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            // Reaps finished connections. A panicking handler has already been reported
            // by the panic hook; its client sees the connection close.
            Some(_finished) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let connection = serve_connection(stream, tls.clone(), Arc::clone(&state), stop.clone());
                    connections.spawn(connection);
                }
                Err(_) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
            },
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(stream: TcpStream, tls: Option<TlsAcceptor>, state: Arc<State>, stop: CancellationToken) {
    let _open = state.connections.open();
    // Small request/response exchanges would otherwise wait on Nagle + delayed ACKs.
    // Failing to set it only costs latency.
    let _ = stream.set_nodelay(true);
    // A socket that cannot be duplicated (out of descriptors) has nobody to answer.
    let Ok((stream, conn)) = ConnHandle::new(stream) else {
        return;
    };
    let serve = async {
        match tls {
            None => serve_http(TokioIo::new(stream), state, stop, conn.clone()).await,
            Some(acceptor) => {
                // A failed handshake (a client that distrusts our CA, say) has nobody to answer.
                if let Ok(stream) = acceptor.accept(stream).await {
                    state.client_certs.record(stream.get_ref().1.peer_certificates());
                    serve_http(TokioIo::new(stream), state, stop, conn.clone()).await;
                }
            }
        }
    };
    // A fault (see `faults`, `idle_close`) ends the connection by dropping it here.
    tokio::select! {
        () = serve => {}
        () = conn.ended() => {}
    }
    conn.release();
}

/// HTTP/1.1 or HTTP/2, whichever the client speaks (ALPN or prior knowledge).
async fn serve_http<I>(io: I, state: Arc<State>, stop: CancellationToken, conn: ConnHandle)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        conn.request_started();
        request.extensions_mut().insert(conn.clone());
        let (state, conn) = (Arc::clone(&state), conn.clone());
        async move {
            if idle_close::close_if_reused(&conn, state.faults.close_reused()) {
                // The accept loop drops this request with its connection.
                std::future::pending::<()>().await;
            }
            let reply = router::handle(Arc::clone(&state), request).await?;
            Ok::<_, std::convert::Infallible>(match state.faults.idle_close() {
                Some(after) => idle_close::close_after(reply, &conn, after),
                None => reply,
            })
        }
    });
    let builder = auto::Builder::new(StopExecutor { stop });
    // Errors are clients going away mid-exchange, which proxy tests do on purpose.
    let _ = builder.serve_connection(io, service).await;
}

/// Runs the tasks hyper spawns (one per HTTP/2 stream) until the fake stops, so that
/// no handler outlives [`FakeTruedat::shutdown`](super::FakeTruedat::shutdown).
#[derive(Clone)]
struct StopExecutor {
    stop: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for StopExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = future => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
