//! td-auth restarting: the listener closes (connections are refused, open ones are
//! cut) and later opens again on the same port, while sessions, switches and counters
//! live on, as they do in Redis and in the rest of Truedat. Plain HTTP only.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{FakeTruedat, server};

/// How long [`FakeTruedat::listen_again`] keeps trying to bind the old port.
const REBIND_PATIENCE: Duration = Duration::from_secs(5);
/// Pause between two tries.
const REBIND_PAUSE: Duration = Duration::from_millis(50);

impl FakeTruedat {
    /// Closes the listener and cuts every open connection; once this returns, connecting
    /// to [`addr`](FakeTruedat::addr) is refused until [`listen_again`](Self::listen_again).
    pub async fn stop_listening(&mut self) {
        self.stop.cancel();
        if let Some(accept_task) = self.accept_task.take() {
            // The task only fails by panicking (nothing aborts it here): let the test see it.
            if let Err(error) = accept_task.await {
                std::panic::resume_unwind(error.into_panic());
            }
        }
        self.stop = CancellationToken::new();
    }

    /// Listens on the same address again, with everything the fake remembered. Another
    /// socket may briefly hold the port; binding is retried for a few seconds.
    ///
    /// # Panics
    /// On a TLS fake (its acceptor is not kept), or when still listening.
    pub async fn listen_again(&mut self) -> io::Result<()> {
        assert!(!self.tls, "listen_again serves plain HTTP only");
        assert!(self.accept_task.is_none(), "listen_again needs stop_listening first");
        let listener = bind_patiently(self.addr).await?;
        let accept_loop = server::accept_loop(listener, None, Arc::clone(&self.state), self.stop.clone());
        self.accept_task = Some(tokio::spawn(accept_loop));
        Ok(())
    }
}

async fn bind_patiently(addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + REBIND_PATIENCE;
    loop {
        match server::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(REBIND_PAUSE).await,
        }
    }
}
