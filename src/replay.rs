//! Request bodies sent upstream, and the bounded copy that lets a request be
//! sent again: retried after a transient failure, or replayed after a 401.
//!
//! In the spirit of linkerd's `ReplayBody`: each try streams the client's
//! body to Truedat frame by frame while keeping the frames it has sent, up to
//! `proxy.replay_body_limit`. When hyper is done with that body it is
//! dropped, and the drop hands the kept frames (and the unread rest of the
//! body, if Truedat answered early or was never reached) back to the request
//! handler over a oneshot channel: no lock, no copy of the bytes (`Bytes`
//! clones share the buffer). The next try streams the kept frames, then the
//! rest, keeping again. A body that outgrows the limit stops keeping
//! anything, so memory stays bounded whatever the upload's size.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::client_body::ClientBody;

/// Any body the proxy sends to Truedat.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body at all (GET, DELETE, logout…).
    Empty,
    /// A body the proxy built itself (login, refresh).
    Full(Option<Bytes>),
    /// A client's body, on any try. Boxed (352 bytes inline): the request
    /// is held by value in every future of the forwarding path, and each
    /// request's whole future is copied into place by hyper, so an inline
    /// tape cost every request, GETs included, about 2 KB of copying; the
    /// box costs one allocation per request that has a body.
    Tape(Box<Tape>),
}

impl UpstreamBody {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        UpstreamBody::Full(Some(bytes.into()))
    }
}

/// Reading the client's body failed: the client went away mid-upload (or
/// sent a broken chunk). A distinct type, so that the failure of the request
/// to Truedat it causes is blamed on the client (499), not on Truedat.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body ended early: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let frame = match self.get_mut() {
            UpstreamBody::Empty => return Poll::Ready(None),
            UpstreamBody::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Tape(tape) => ready!(Pin::new(&mut **tape).poll_frame(cx)),
        };
        Poll::Ready(frame.map(|f| f.map_err(ClientBodyError)))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(bytes) => bytes.is_none(),
            UpstreamBody::Tape(tape) => tape.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::Tape(tape) => tape.size_hint(),
        }
    }
}

/// One try's body: streams the client's frames and keeps a copy.
#[derive(Debug)]
pub struct Tape<B: Body = Resend> {
    inner: Option<B>,
    kept: Vec<Bytes>,
    kept_len: u64,
    limit: u64,
    /// Boxed, as in [`Resend`]: rare, and 96 bytes inline.
    trailers: Option<Box<HeaderMap>>,
    /// The client's body has ended: nothing is left to read from it.
    finished: bool,
    /// Where the copy goes when hyper drops the body; `None` once the copy
    /// was given up (over the limit, or the client's body failed).
    give_back: Option<oneshot::Sender<Kept<B>>>,
}

/// What a try kept, handed back when its body is dropped.
#[derive(Debug)]
pub struct Kept<B = Resend> {
    frames: Vec<Bytes>,
    len: u64,
    trailers: Option<Box<HeaderMap>>,
    /// The part of the body the try never read.
    rest: Option<B>,
}

/// Wraps a body for one try; the receiver yields the kept copy once the try
/// is over, or an error if the body was not kept.
pub fn tape<B: Body>(body: B, limit: u64) -> (Tape<B>, oneshot::Receiver<Kept<B>>) {
    let (give_back, kept) = oneshot::channel();
    let tape = Tape {
        inner: Some(body),
        kept: Vec::new(),
        kept_len: 0,
        limit,
        trailers: None,
        finished: false,
        give_back: Some(give_back),
    };
    (tape, kept)
}

impl<B: Body<Data = Bytes>> Tape<B> {
    fn keep(&mut self, frame: &Frame<Bytes>) {
        if self.give_back.is_none() {
            return;
        }
        if let Some(data) = frame.data_ref() {
            self.kept_len += data.len() as u64;
            if self.kept_len > self.limit {
                self.give_up();
            } else if !data.is_empty() {
                self.kept.push(data.clone());
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(Box::new(trailers.clone()));
        }
    }

    fn give_up(&mut self) {
        self.give_back = None;
        self.kept = Vec::new();
        self.trailers = None;
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tape<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => this.keep(frame),
            Some(Err(_)) => this.give_up(),
            None => this.finished = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl<B: Body> Drop for Tape<B> {
    fn drop(&mut self) {
        let Some(give_back) = self.give_back.take() else {
            return;
        };
        let finished = self.finished || self.inner.as_ref().is_none_or(|b| b.is_end_stream());
        let rest = if finished { None } else { self.inner.take() };
        let kept =
            Kept { frames: std::mem::take(&mut self.kept), len: self.kept_len, trailers: self.trailers.take(), rest };
        // The handler may have stopped waiting (no 401): then the copy is simply freed.
        let _ = give_back.send(kept);
    }
}

impl<B: Body> Kept<Resend<B>> {
    /// The body for the next try, if the request may be sent again: the
    /// client's body was read whole; or nothing of it was read (Truedat was
    /// never reached); or its declared length is within the limit, so the
    /// next try keeps all of it too.
    pub fn into_resend(self, declared_len: Option<u64>, limit: u64) -> Option<Resend<B>> {
        let untouched = self.len == 0;
        match self.rest {
            Some(_) if !untouched && declared_len.is_none_or(|len| len > limit) => None,
            None => {
                Some(Resend { frames: self.frames.into(), kept_len: self.len, rest: None, trailers: self.trailers })
            }
            Some(rest) => {
                let mut frames: VecDeque<Bytes> = self.frames.into();
                frames.extend(rest.frames);
                Some(Resend {
                    frames,
                    kept_len: self.len + rest.kept_len,
                    rest: rest.rest,
                    trailers: rest.trailers.or(self.trailers),
                })
            }
        }
    }
}

/// A body to send: frames kept by an earlier try, then whatever the client
/// still sends.
#[derive(Debug)]
pub struct Resend<B = ClientBody> {
    frames: VecDeque<Bytes>,
    kept_len: u64,
    rest: Option<B>,
    /// Boxed: trailers are rare, and a `HeaderMap` is 96 bytes that every
    /// future holding a body would carry.
    trailers: Option<Box<HeaderMap>>,
}

impl<B> Resend<B> {
    /// The client's body, before any try.
    pub fn new(body: B) -> Resend<B> {
        Resend { frames: VecDeque::new(), kept_len: 0, rest: Some(body), trailers: None }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Resend<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.frames.pop_front() {
            this.kept_len -= data.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(rest) = this.rest.as_mut() {
            match ready!(Pin::new(rest).poll_frame(cx)) {
                None => this.rest = None,
                frame => return Poll::Ready(frame),
            }
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(*t))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.trailers.is_none() && self.rest.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let Some(rest) = &self.rest else {
            return SizeHint::with_exact(self.kept_len);
        };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + self.kept_len);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + self.kept_len);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

    fn client_body(chunks: &[&'static str]) -> StreamBody<Frames> {
        let frames: Vec<_> = chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn send(tape: Tape<Resend<StreamBody<Frames>>>) -> Bytes {
        tape.collect().await.unwrap().to_bytes()
    }

    fn client(chunks: &[&'static str]) -> Resend<StreamBody<Frames>> {
        Resend::new(client_body(chunks))
    }

    #[tokio::test]
    async fn a_small_body_streams_and_comes_back_for_the_replay() {
        let (tape, kept) = tape(client(&["hello ", "world"]), 64);
        assert_eq!(send(tape).await, "hello world");
        let replay = kept.await.unwrap().into_resend(None, 64).unwrap();
        assert_eq!(replay.size_hint().exact(), Some(11));
        assert_eq!(replay.collect().await.unwrap().to_bytes(), "hello world");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_streamed_but_not_kept() {
        let (tape, kept) = tape(client(&["0123456789", "0123456789"]), 15);
        assert_eq!(send(tape).await.len(), 20);
        assert!(kept.await.is_err(), "nothing may be kept past the limit");
    }

    #[tokio::test]
    async fn an_unread_rest_is_replayed_after_the_kept_part() {
        let (mut tape, kept) = tape(client(&["abc", "def", "ghi"]), 64);
        let first = tape.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "abc");
        drop(tape); // Truedat answered before reading the whole body.
        let kept = kept.await.unwrap();
        let replay = kept.into_resend(Some(9), 64).unwrap();
        assert_eq!(replay.collect().await.unwrap().to_bytes(), "abcdefghi");
    }

    #[tokio::test]
    async fn an_untouched_body_of_any_size_can_be_sent_again() {
        // A try that never reached Truedat read nothing: the whole body is
        // still there, however large and whatever its declared length.
        let (tape, kept) = tape(client(&["0123456789", "0123456789"]), 4);
        drop(tape);
        let resend = kept.await.unwrap().into_resend(None, 4).unwrap();
        assert_eq!(resend.collect().await.unwrap().to_bytes(), "01234567890123456789");
    }

    #[tokio::test]
    async fn a_body_is_kept_across_several_tries() {
        let (mut first, kept) = tape(client(&["abc", "def", "ghi"]), 64);
        first.frame().await.unwrap().unwrap();
        drop(first);
        let (second, kept) = tape(kept.await.unwrap().into_resend(Some(9), 64).unwrap(), 64);
        assert_eq!(send(second).await, "abcdefghi");
        let third = kept.await.unwrap().into_resend(Some(9), 64).unwrap();
        assert_eq!(third.size_hint().exact(), Some(9));
        assert_eq!(third.collect().await.unwrap().to_bytes(), "abcdefghi");
    }

    #[tokio::test]
    async fn an_unread_rest_of_unknown_length_is_not_replayed() {
        let (mut tape, kept) = tape(client(&["abc", "def"]), 64);
        tape.frame().await.unwrap().unwrap();
        drop(tape);
        assert!(kept.await.unwrap().into_resend(None, 64).is_none());
    }
}
