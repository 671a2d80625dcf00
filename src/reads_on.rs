//! An upstream connection whose write side may fail while its read side
//! still holds Truedat's answer.
//!
//! A server that answers before reading the whole request body (an
//! ingress's 413, a 401 before reading) and then closes makes the kernel
//! reset the connection, since unread body bytes are still arriving. The
//! answer was sent before the reset and sits in the receive buffer, but
//! hyper's HTTP/1.1 client fails the whole exchange on the first failed
//! write, so the client would get a 502 instead of the 413 (SPEC §4, Early
//! answers). This wrapper reports such a write as done and discards every
//! later one: hyper then reads on, and finds either the answer or the
//! reset, which fails the exchange as before.

use std::io::{self, ErrorKind, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::rt::{Read, ReadBufCursor, Write};

/// `S`, with writes after the peer closed discarded instead of failed.
#[derive(Debug)]
pub struct ReadsOn<S> {
    inner: S,
    /// The peer closed or reset: nothing written reaches it any more.
    closed: bool,
}

impl<S> ReadsOn<S> {
    /// Wraps a fresh connection.
    pub fn new(inner: S) -> ReadsOn<S> {
        ReadsOn { inner, closed: false }
    }

    /// Whether `error` means the peer is gone, so its answer may be waiting.
    fn peer_closed(&mut self, error: &io::Error) -> bool {
        self.closed = matches!(error.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset);
        self.closed
    }

    fn outcome<T>(&mut self, result: io::Result<T>, discarded: T) -> Poll<io::Result<T>> {
        match result {
            Err(error) if self.peer_closed(&error) => Poll::Ready(Ok(discarded)),
            other => Poll::Ready(other),
        }
    }
}

impl<S: Read + Unpin> Read for ReadsOn<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: Write + Unpin> Write for ReadsOn<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        self.outcome(result, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.closed {
            return Poll::Ready(Ok(len));
        }
        let result = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        self.outcome(result, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let result = ready!(Pin::new(&mut self.inner).poll_flush(cx));
        self.outcome(result, ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let result = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        self.outcome(result, ())
    }
}
