//! Bodies of responses: Truedat's as they arrive (on a client connection's
//! own link, or through the shared pool), and as they go to the client,
//! streamed through and counted as in flight until their last byte, or one
//! the proxy wrote itself.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::link::LinkBody;
use crate::telemetry::InFlight;

/// Truedat's response body, however it travelled.
pub enum TruedatBody {
    /// On the client connection's own upstream connection.
    Linked(LinkBody),
    /// Through the shared pool (HTTP/2).
    Pooled(Incoming),
}

impl TruedatBody {
    /// Lets a link's connection make progress while the body is not read
    /// (see [`LinkBody::drive`]); the pool's connections drive themselves.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let TruedatBody::Linked(body) = self {
            body.drive(cx);
        }
    }

    /// Truedat answered before the request body was sent in full: its
    /// connection must not serve another request (SPEC §4, Early answers).
    /// A pooled HTTP/2 stream needs nothing: Truedat resets it.
    pub fn forbid_reuse(&mut self) {
        if let TruedatBody::Linked(body) = self {
            body.forbid_reuse();
        }
    }
}

impl Body for TruedatBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            TruedatBody::Linked(body) => Pin::new(body).poll_frame(cx),
            TruedatBody::Pooled(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TruedatBody::Linked(body) => body.is_end_stream(),
            TruedatBody::Pooled(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            TruedatBody::Linked(body) => body.size_hint(),
            TruedatBody::Pooled(body) => body.size_hint(),
        }
    }
}

/// The body of every response to a client.
pub type ProxyBody = Either<Streamed, Full<Bytes>>;

/// Truedat's response body on its way to the client. The request counts as
/// in flight (gauge, drain report) until this body ends or is dropped, not
/// merely until the headers were sent: a 1 GiB download is in flight for as
/// long as it streams. A body that goes silent for longer than `idle` (a
/// Truedat that stalls mid-body) fails, so hyper cuts the client's
/// connection instead of leaving it hanging.
pub struct Streamed {
    body: TruedatBody,
    idle: Duration,
    /// Armed only when a read has to wait: most bodies arrive whole at once,
    /// and those never touch the timer.
    silence: Option<Pin<Box<Sleep>>>,
    /// Data arrived since the timer was last armed.
    progressed: bool,
    _in_flight: InFlight,
}

/// Truedat sent nothing for the body's idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("Truedat sent no part of the response body for {0:?} (upstream.body_idle_timeout)")]
pub struct BodyStalled(Duration);

impl Streamed {
    /// `body`, counted by `in_flight` for as long as it lives, failing after
    /// `idle` without data.
    pub fn new(body: TruedatBody, idle: Duration, in_flight: InFlight) -> Streamed {
        Streamed { body, idle, silence: None, progressed: false, _in_flight: in_flight }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.progressed = true;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let silence = match &mut this.silence {
                    Some(silence) if this.progressed => {
                        silence.as_mut().reset(Instant::now() + idle);
                        silence
                    }
                    Some(silence) => silence,
                    None => this.silence.insert(Box::pin(tokio::time::sleep(idle))),
                };
                this.progressed = false;
                if silence.as_mut().poll(cx).is_ready() {
                    tracing::warn!(
                        idle_ms = idle.as_millis() as u64,
                        "Truedat stalled in the middle of a response body; cutting it"
                    );
                    return Poll::Ready(Some(Err(BodyStalled(idle).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
