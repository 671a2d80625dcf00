//! td-auth restarting: the listener closes (connections are refused, open ones are
//! cut) and later opens again on the same port, while sessions, switches and counters
//! live on, as they do in Redis and in the rest of Truedat. An HTTPS fake comes back
//! with the TLS configuration it started with.
//!
//! While it is down the port stays reserved ([`ReservedPort`]): bound, not listening,
//! so connections are refused and no other test (running in parallel, binding port 0)
//! can be given it, which would let a retrying proxy reach that test's listener.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

use super::{FakeConfig, FakeTruedat, server};

/// A loopback port nobody listens on and nobody else is given: a socket bound
/// to it without `listen`, so the kernel refuses connections (RST) as for a
/// closed port, and never hands the port to another `bind` while it is held.
#[derive(Debug)]
pub struct ReservedPort {
    addr: std::net::SocketAddr,
    _socket: TcpSocket,
}

impl ReservedPort {
    /// Reserves `addr`, just freed by a fake; retried briefly while the
    /// closed listener lets go of it.
    pub async fn at(addr: std::net::SocketAddr) -> io::Result<ReservedPort> {
        let deadline = tokio::time::Instant::now() + REBIND_PATIENCE;
        loop {
            let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            // The closed fake leaves connections in TIME_WAIT on this port;
            // the kernel still never picks a bound port for a `bind` to port 0.
            socket.set_reuseaddr(true)?;
            match socket.bind(addr) {
                Ok(()) => return Ok(ReservedPort { addr, _socket: socket }),
                Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
                Err(_) => tokio::time::sleep(REBIND_PAUSE).await,
            }
        }
    }

    /// The reserved address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Gives the port up to a new fake Truedat listening on it.
    pub async fn reopen(self, config: FakeConfig) -> io::Result<FakeTruedat> {
        let addr = self.addr;
        drop(self);
        FakeTruedat::start_at(addr, config).await
    }
}

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
        self.reserved = ReservedPort::at(self.addr).await.ok();
    }

    /// Shuts down for good, keeping the port reserved (see [`ReservedPort`]).
    pub async fn shutdown_keeping_port(self) -> ReservedPort {
        let addr = self.addr;
        self.shutdown().await;
        ReservedPort::at(addr).await.expect("the port the fake just closed can be reserved")
    }

    /// Listens on the same address again, with everything the fake remembered (over
    /// TLS as before, if it served HTTPS). Another socket may briefly hold the port;
    /// binding is retried for a few seconds.
    ///
    /// # Panics
    /// When still listening.
    pub async fn listen_again(&mut self) -> io::Result<()> {
        assert!(self.accept_task.is_none(), "listen_again needs stop_listening first");
        self.reserved = None;
        let listener = bind_patiently(self.addr).await?;
        let accept_loop = server::accept_loop(listener, self.tls.clone(), Arc::clone(&self.state), self.stop.clone());
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
