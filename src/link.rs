//! One upstream HTTP/1.1 connection per client connection, driven in the
//! client connection's own task.
//!
//! Through hyper-util's pooled client every request pays a pool checkout (a
//! lock and a map lookup), a channel hop to the connection's own task and a
//! wake-up back. A client connection of HTTP/1.1 sends one request at a time,
//! so it can own one connection to Truedat outright: the request future polls
//! that connection while it waits for the response head, the response body
//! polls it while the body streams, and at the body's end the connection goes
//! back to the client connection's [`Link`] for its next request. Nothing is
//! spawned and nothing crosses tasks.
//!
//! What the pool did is done here too: a connection idle longer than
//! `upstream.pool_idle_timeout`, or closed by Truedat, is not reused; one that
//! turns out closed before the request was written is replaced and the
//! request sent on the new one; TLS and the egress proxy come from the same
//! [`Connector`]. The number of connections to Truedat is bounded by
//! `listen.max_connections`. HTTP/2 keeps the shared pool, where one
//! multiplexed connection serves every client connection.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::Connection as _;
use tower_service::Service;

use crate::reads_on::ReadsOn;
use crate::replay::UpstreamBody;
use crate::upstream::{Connector, Stream};

type Connection = http1::Connection<ReadsOn<Stream>, UpstreamBody>;

/// hyper's read buffer towards Truedat: a response head and a body chunk.
const READ_BUFFER: usize = 64 * 1024;

/// A client connection's own connection to Truedat, idle between requests.
pub struct Link {
    connector: Connector,
    /// The origin to dial (scheme and authority).
    origin: http::Uri,
    idle_timeout: Duration,
    /// The connection between two requests. Never contended: hyper serves
    /// a client connection's requests one after the other (the next head is
    /// read only once the previous response body has been written), and the
    /// token on the request path still comes from its lock-free cell.
    idle: Arc<Mutex<Option<Idle>>>,
}

/// A connection to Truedat with nothing in flight.
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    connection: Pin<Box<Connection>>,
    since: Instant,
}

/// Why a request could not be sent on a link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Connecting failed (TCP, TLS, egress proxy, connect timeout): nothing
    /// of the request reached Truedat.
    #[error("connecting to Truedat failed")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while the request was sent or its answer awaited.
    #[error("the exchange with Truedat failed")]
    Exchange(#[source] hyper::Error),
    /// Truedat chose HTTP/2 for a new connection: the shared pool serves
    /// it. The request comes back untouched.
    #[error("Truedat negotiated HTTP/2")]
    Http2(Box<Request<UpstreamBody>>),
}

/// Why no connection could be made.
enum DialError {
    Failed(LinkError),
    Http2,
}

impl Link {
    /// A link that dials `origin` through `connector` when it needs to.
    pub fn new(connector: Connector, origin: http::Uri, idle_timeout: Duration) -> Link {
        Link { connector, origin, idle_timeout, idle: Arc::default() }
    }

    /// Sends `request` (its URI in absolute form, the origin's) and waits
    /// for the response head, driving the connection meanwhile.
    pub async fn send(&self, mut request: Request<UpstreamBody>) -> Result<Response<LinkBody>, LinkError> {
        let (mut sender, connection) = match self.reusable().await {
            Some(idle) => (idle.sender, idle.connection),
            // Boxed (here and below): dialling happens once per client
            // connection, and inline it would enlarge every request's future.
            None => match Box::pin(self.dial()).await {
                Ok(dialled) => dialled,
                Err(DialError::Http2) => return Err(LinkError::Http2(Box::new(request))),
                Err(DialError::Failed(error)) => return Err(error),
            },
        };
        to_origin_form(&mut request);
        let (result, mut connection) = drive(sender.try_send_request(request), connection).await;
        let response = match result {
            Ok(response) => response,
            Err(mut error) => {
                // Not written at all: the connection was closed under us
                // (Truedat ended it while it was idle). Nothing was sent, so
                // a fresh connection may carry it, whatever the method.
                let Some(request) = error.take_message() else {
                    return Err(LinkError::Exchange(error.into_error()));
                };
                let fresh;
                (sender, fresh) = Box::pin(self.dial()).await.map_err(|e| match e {
                    DialError::Failed(error) => error,
                    // The pool's protocol does not change between two connections.
                    DialError::Http2 => LinkError::Exchange(error.into_error()),
                })?;
                let (result, fresh) = drive(sender.send_request(request), fresh).await;
                connection = fresh;
                result.map_err(LinkError::Exchange)?
            }
        };
        let home = connection.map(|connection| Home { sender, connection, slot: self.idle.clone() });
        Ok(response.map(|body| LinkBody { body, home, reusable: true }))
    }

    /// The idle connection, if it is fresh and still open.
    async fn reusable(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        if idle.since.elapsed() >= self.idle_timeout {
            return None;
        }
        // One poll lets the connection notice a close that already arrived.
        let usable = poll_fn(|cx| {
            if idle.connection.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            Poll::Ready(matches!(idle.sender.poll_ready(cx), Poll::Ready(Ok(()))))
        })
        .await;
        usable.then_some(idle)
    }

    async fn dial(&self) -> Result<(http1::SendRequest<UpstreamBody>, Pin<Box<Connection>>), DialError> {
        let connecting = self.connector.clone().call(self.origin.clone());
        let stream = connecting.await.map_err(|e| DialError::Failed(LinkError::Connect(e)))?;
        if stream.connected().is_negotiated_h2() {
            return Err(DialError::Http2);
        }
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(READ_BUFFER)
            .handshake(ReadsOn::new(stream))
            .await
            .map_err(|e| DialError::Failed(LinkError::Exchange(e)))?;
        Ok((sender, Box::pin(connection)))
    }
}

/// HTTP/1.1 on a connection of its own: the request line carries the path
/// and query only, and `Host` names the origin (RFC 9112 §3.2).
fn to_origin_form(request: &mut Request<UpstreamBody>) {
    if let Some(authority) = request.uri().authority().cloned() {
        if let Ok(host) = http::HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(http::header::HOST, host);
        }
    }
    let target = request.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *request.uri_mut() = http::Uri::from(target);
}

/// Waits for `response` while driving `connection`, which does the sending.
/// A connection that ends first is dropped, which fails the request future
/// with the reason (hyper answers every pending request when its dispatcher
/// goes); the connection comes back only while it lives.
async fn drive<T>(
    response: impl Future<Output = T>,
    connection: Pin<Box<Connection>>,
) -> (T, Option<Pin<Box<Connection>>>) {
    let mut response = std::pin::pin!(response);
    let mut connection = Some(connection);
    let result = poll_fn(|cx| {
        if let Poll::Ready(response) = response.as_mut().poll(cx) {
            return Poll::Ready(response);
        }
        if connection.as_mut().is_some_and(|c| c.as_mut().poll(cx).is_ready()) {
            connection = None;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await;
    (result, connection)
}

/// Where a connection returns when its response body is done.
struct Home {
    sender: http1::SendRequest<UpstreamBody>,
    connection: Pin<Box<Connection>>,
    slot: Arc<Mutex<Option<Idle>>>,
}

/// Truedat's response body on a link: polling it also drives the
/// connection (which may still be sending the request body), and its end
/// hands the connection back for the next request.
pub struct LinkBody {
    body: Incoming,
    /// `None` once handed back, or once the connection ended.
    home: Option<Home>,
    /// Cleared when Truedat answered before the request body was sent in
    /// full: the connection still holds that body, so it is closed at the
    /// end of this response instead of serving the next request.
    reusable: bool,
}

impl LinkBody {
    /// Drives the connection without reading the body: it may still be
    /// sending the request body, which must be finished (and so handed back
    /// to the proxy) before the request can be sent again.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(home) = self.home.as_mut() {
            if home.connection.as_mut().poll(cx).is_ready() {
                self.home = None;
            }
        }
    }

    /// Truedat answered early (SPEC §4, Early answers): close the
    /// connection when this body ends instead of reusing it.
    pub fn forbid_reuse(&mut self) {
        self.reusable = false;
    }

    fn go_home(&mut self) {
        let home = self.home.take();
        if !self.reusable {
            // Dropping the connection drops the rest of the request body
            // with it, which then lingers (see `client_body`).
            return;
        }
        if let Some(home) = home {
            let idle = Idle { sender: home.sender, connection: home.connection, since: Instant::now() };
            *home.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(idle);
        }
    }
}

impl Body for LinkBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(home) = this.home.as_mut() {
            // Ready means the connection is over (closed, or failed: the body
            // then reports the error itself); it cannot be reused.
            if home.connection.as_mut().poll(cx).is_ready() {
                this.home = None;
            }
        }
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        if frame.is_none() {
            this.go_home();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for LinkBody {
    fn drop(&mut self) {
        // A body hyper found complete without polling it to its end (an
        // empty or exactly-sized one) still frees its connection.
        if self.body.is_end_stream() {
            self.go_home();
        }
    }
}
