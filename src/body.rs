//! Bodies of responses to clients: Truedat's, streamed through and counted
//! as in flight until their last byte, or one the proxy wrote itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::telemetry::InFlight;

/// The body of every response to a client.
pub type ProxyBody = Either<Streamed, Full<Bytes>>;

/// Truedat's response body on its way to the client. The request counts as
/// in flight (gauge, drain report) until this body ends or is dropped, not
/// merely until the headers were sent: a 1 GiB download is in flight for as
/// long as it streams.
pub struct Streamed {
    body: Incoming,
    _in_flight: InFlight,
}

impl Streamed {
    /// `body`, counted by `in_flight` for as long as it lives.
    pub fn new(body: Incoming, in_flight: InFlight) -> Streamed {
        Streamed { body, _in_flight: in_flight }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
