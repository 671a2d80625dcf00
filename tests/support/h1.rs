//! One HTTP/1.1 keep-alive connection driven by hand: exactly one TCP
//! connection, no pool, no retry, and the response body read frame by frame.
//!
//! The pooled [`client`](super::client) hides what the fault tests and the
//! soak must see: whether the proxy closed a connection, and what a client
//! receives (or stops receiving) in the middle of a body.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A client connection; dropping it closes the connection.
pub struct H1Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

/// How reading a response body ended.
#[derive(Debug)]
pub enum BodyEnd {
    /// The body ended as its framing announced.
    Complete(Bytes),
    /// The connection broke off (or the body was malformed) after these bytes.
    Broken(Bytes, String),
    /// No frame arrived within the patience given, after these bytes.
    Stalled(Bytes),
}

impl H1Conn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<H1Conn> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        // The connection's errors surface through `send` and the body.
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(H1Conn { sender, driver })
    }

    /// Sends `request` once the connection is free; `Err` once the
    /// connection is closed or broke.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }

    /// Whether the connection has ended (closed by either side, or failed).
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished() || self.sender.is_closed()
    }
}

impl Drop for H1Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Reads `body` to its end, giving up when no frame arrives for `patience`.
pub async fn read_body(mut body: Incoming, patience: Duration) -> BodyEnd {
    let mut bytes = BytesMut::new();
    loop {
        match tokio::time::timeout(patience, body.frame()).await {
            Err(_) => return BodyEnd::Stalled(bytes.freeze()),
            Ok(None) => return BodyEnd::Complete(bytes.freeze()),
            Ok(Some(Err(error))) => return BodyEnd::Broken(bytes.freeze(), error.to_string()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
}
