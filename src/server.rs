//! The accept loop shared by the proxy and admin listeners: HTTP/1.1 with
//! keep-alive, a bound on concurrent connections, bounded request heads, and
//! graceful shutdown through hyper-util's `GracefulShutdown`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::ProxyBody;

/// Per-listener connection settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// hyper's read buffer: a head that does not fit is answered 431 by hyper.
    pub max_buf_size: usize,
    /// A client must send its whole request head within this time
    /// (slow-loris protection).
    pub header_read_timeout: Duration,
}

/// Serves `listener` until `stop` fires, then drops it so new connections are
/// refused. Connections already accepted are left to `graceful`.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut accept_errors = 0u32;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => { accept_errors = 0; accepted }
                Err(error) => { accept_errors += 1; back_off(error, accept_errors).await; continue }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |request| handler(request, peer));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_buf_size)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %error, "client connection ended with an error");
            }
            drop(permit);
        });
    }
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
