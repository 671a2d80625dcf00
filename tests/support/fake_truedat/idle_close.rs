//! Closing keep-alive connections shortly after each response, without
//! announcing it (no `Connection: close`), as a server or load balancer with a
//! short keep-alive timeout does.
//!
//! Why it exists: the proxy's pool may pick such a connection for the next
//! request just as the close arrives (a stale pooled connection). The fault
//! tests use it to check that the proxy then retries on a fresh connection or
//! answers 502, and never hangs. That race is rare and timing-dependent, so
//! [`close_if_reused`] provokes its outcome every time: a connection is closed,
//! unanswered, when a second request arrives on it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::{Reply, ResponseBody};
use super::conn::ConnHandle;

/// Whether the request just started on `conn` must be dropped unanswered
/// with its connection, because `close_reused` is on and `conn` served a
/// request before. Closes the connection when so.
pub(super) fn close_if_reused(conn: &ConnHandle, close_reused: bool) -> bool {
    if close_reused && conn.requests() > 1 {
        conn.close();
        return true;
    }
    false
}

/// Makes `conn` close `after` the body of `reply` is done, unless another
/// request starts on it meanwhile.
pub(super) fn close_after(reply: Reply, conn: &ConnHandle, after: Duration) -> Reply {
    let conn = conn.clone();
    reply.map(|inner| WhenDone { inner, on_done: Some((conn, after)) }.boxed())
}

/// A response body that schedules the close when hyper drops it: after the
/// last frame was taken, or when the exchange broke off.
struct WhenDone {
    inner: ResponseBody,
    on_done: Option<(ConnHandle, Duration)>,
}

impl Body for WhenDone {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WhenDone {
    fn drop(&mut self) {
        let Some((conn, after)) = self.on_done.take() else {
            return;
        };
        let seen = conn.requests();
        // Dropped outside a runtime only when the fake itself is gone.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            tokio::time::sleep(after).await;
            if conn.requests() == seen {
                conn.close();
            }
        });
    }
}
