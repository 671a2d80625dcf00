//! The client's request body, and what happens to the part of it the proxy
//! no longer needs (SPEC §4, Early answers).
//!
//! Truedat or its ingress may answer before the body was sent in full: a 413
//! from an ingress's body limit, a 401 before reading. Many tools send their
//! whole body before they read anything (Python's `requests` and
//! `http.client`, Java's `HttpURLConnection`). If the proxy stopped reading
//! such a client and closed the connection, the client would be stuck
//! writing, or would see a reset instead of the answer waiting in its
//! receive buffer. So a body dropped before its end is read and discarded
//! for a while in a task of its own, as nginx's lingering close does
//! (`lingering_time` 30 s, `lingering_timeout` 5 s); the response to such a
//! request carries `Connection: close`, so hyper closes the client's
//! connection once the drain ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// How long in all the rest of a body is read and discarded (nginx's `lingering_time`).
pub const LINGER_TIME: Duration = Duration::from_secs(30);
/// The longest silence while discarding before giving up (nginx's `lingering_timeout`).
pub const LINGER_IDLE: Duration = Duration::from_secs(5);

/// A client's request body on its way to Truedat. Dropped before its end,
/// it hands what is left to a lingering task.
#[derive(Debug)]
pub struct ClientBody {
    /// `None` once dropped.
    body: Option<Incoming>,
    /// How reading the body ended, if it did; shared with [`BodyEnd`].
    ended: Arc<AtomicU8>,
    /// Whether the rest is read when the body is dropped early. Not for a
    /// client that waits for `100 Continue` (`Expect: 100-continue`) and was
    /// never asked for its body: reading would ask it to send the body.
    linger: bool,
}

/// The body is still being read (or not yet).
const READING: u8 = 0;
/// The body was read to its end.
const ENDED: u8 = 1;
/// Reading the body failed: the client went away mid-upload.
const FAILED: u8 = 2;

/// Tells the handler how reading the client's body ended.
#[derive(Clone, Debug)]
pub struct BodyEnd(Arc<AtomicU8>);

impl BodyEnd {
    /// Whether the whole body was read from the client.
    pub fn reached(&self) -> bool {
        self.0.load(Ordering::Acquire) == ENDED
    }

    /// Whether the client's body broke off (it went away mid-upload). Over
    /// HTTP/2 hyper resets the stream without passing on why, so the
    /// handler asks here instead of in the error.
    pub fn failed(&self) -> bool {
        self.0.load(Ordering::Acquire) == FAILED
    }
}

impl ClientBody {
    /// Wraps the body of a request; `expects_continue` when its client sent
    /// `Expect: 100-continue`.
    pub fn new(body: Incoming, expects_continue: bool) -> (ClientBody, BodyEnd) {
        let ended = Arc::new(AtomicU8::new(READING));
        let end = BodyEnd(ended.clone());
        (ClientBody { body: Some(body), ended, linger: !expects_continue }, end)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        // Asked for the body: the client has been told to send it.
        this.linger = true;
        let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
        match &frame {
            Some(Err(_)) => this.ended.store(FAILED, Ordering::Release),
            None => this.ended.store(ENDED, Ordering::Release),
            Some(Ok(_)) if body.is_end_stream() => this.ended.store(ENDED, Ordering::Release),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.as_ref().map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if !self.linger || body.is_end_stream() {
            return;
        }
        // No runtime: the process is ending, and the connection with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(discard(body, LINGER_TIME, LINGER_IDLE));
        }
    }
}

/// Reads `body` to its end and drops every byte, for at most `total`,
/// giving up after `idle` without a frame; returns the bytes discarded.
pub async fn discard<B: Body + Unpin>(mut body: B, total: Duration, idle: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + total;
    let mut discarded = 0u64;
    loop {
        let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                discarded += frame.data_ref().map_or(0, |d| d.remaining() as u64);
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                tracing::debug!(discarded, "the client went away while the rest of its body was discarded");
                break;
            }
            Err(_) => {
                tracing::debug!(discarded, "stopped discarding the rest of a request body: the client was too slow");
                break;
            }
        }
    }
    discarded
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;
    use std::convert::Infallible;

    #[tokio::test(start_paused = true)]
    async fn discarding_stops_after_the_idle_timeout_and_the_total_time() {
        // A body that never sends anything: given up after `idle`.
        let silent = StreamBody::new(stream::pending::<Result<Frame<Bytes>, Infallible>>());
        let started = tokio::time::Instant::now();
        assert_eq!(discard(silent, LINGER_TIME, LINGER_IDLE).await, 0);
        assert_eq!(started.elapsed(), LINGER_IDLE);

        // A body that trickles a byte every 4 s: given up after `total`.
        let trickle = StreamBody::new(Box::pin(stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"x"))), ()))
        })));
        let started = tokio::time::Instant::now();
        let discarded = discard(trickle, LINGER_TIME, LINGER_IDLE).await;
        assert_eq!(started.elapsed(), LINGER_TIME);
        assert_eq!(discarded, 7, "a byte every 4 s until the 30 s deadline");
    }

    #[tokio::test]
    async fn a_finished_body_is_read_to_its_end() {
        let frames: Vec<_> = (0..3).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"abc")))).collect();
        let body = StreamBody::new(stream::iter(frames));
        assert_eq!(discard(body, LINGER_TIME, LINGER_IDLE).await, 9);
    }
}
