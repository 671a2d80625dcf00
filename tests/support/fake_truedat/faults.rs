//! Network and server faults of the data routes, switched at run time like
//! [`LoginMode`](super::LoginMode), plus the switches a long soak needs.
//!
//! Why it exists: in production Truedat (or what stands between it and the
//! proxy) resets connections, stalls mid-response, accepts and never answers,
//! and closes idle keep-alive connections. The fault tests and the soak
//! provoke each of these on purpose and need to know which requests were hit,
//! so that a failure the client sees can be blamed on Truedat or on the proxy.
//!
//! Faults apply to data routes only (td-auth's session routes have
//! [`LoginMode`](super::LoginMode)), after the request was read and recorded
//! and before its bearer is checked.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::watch;

use super::body::{Reply, pattern_byte};
use super::conn::ConnHandle;
use super::lock;

/// How data routes misbehave; anything but `None` applies to every data
/// request until the fault is changed.
#[derive(Debug, Clone, PartialEq)]
pub enum DataFault {
    /// Answer normally.
    None,
    /// Reset the connection (TCP RST, nothing answered) of this share (0.0 to
    /// 1.0, drawn per request) of data requests, once the request was read;
    /// the `X-Request-Id` of each is recorded
    /// ([`reset_request_ids`](super::FakeTruedat::reset_request_ids)).
    ResetShare(f64),
    /// Answer 200 with a `Content-Length` of [`STALL_BODY_LEN`] bytes, send
    /// the first [`STALL_SENT_LEN`] of them, then nothing more until the fault
    /// changes (the rest then follows, so no transfer stays parked).
    StallMidBody,
    /// Read the request, then answer nothing until the fault changes (the
    /// parked requests then get their normal answer).
    AcceptButNeverAnswer,
    /// Read the request whole, then send a TLS record that does not decrypt
    /// (written under the TLS layer) and answer nothing: what a client sees
    /// when a broken middlebox or a fatal alert ends a connection after the
    /// server acted on the request. Only meaningful over TLS.
    CorruptTls,
}

/// A TLS 1.2/1.3 application-data record whose 32 bytes of payload decrypt
/// under no key.
const BOGUS_TLS_RECORD: [u8; 37] = {
    let mut record = [0xA5u8; 37];
    record[0] = 0x17;
    record[1] = 0x03;
    record[2] = 0x03;
    record[3] = 0x00;
    record[4] = 32;
    record
};

/// Body length announced under [`DataFault::StallMidBody`].
pub const STALL_BODY_LEN: u64 = 1 << 20;
/// Bytes sent before the stall under [`DataFault::StallMidBody`].
pub const STALL_SENT_LEN: u64 = 16 * 1024;

/// The fault switches, shared through `State`.
pub(super) struct Faults {
    /// A `watch`, so that parked requests and stalled bodies resume when the fault changes.
    data: watch::Sender<DataFault>,
    /// `X-Request-Id` of every request answered with a reset (`-` when it had none).
    resets: Mutex<Vec<String>>,
    /// Close each connection this long after a response completes, unless a
    /// new request started on it meanwhile; `None`: keep-alive as usual.
    idle_close: Mutex<Option<Duration>>,
    /// Close a connection, unanswered, when a second request arrives on it.
    close_reused: AtomicBool,
    /// Whether data requests are recorded; a soak sends millions.
    record_data: AtomicBool,
}

/// What a data handler does after a fault was consulted.
pub(super) enum Verdict {
    /// Answer as usual.
    Proceed,
    /// Answer this instead.
    Answer(Reply),
}

impl Faults {
    pub(super) fn new() -> Faults {
        Faults {
            data: watch::Sender::new(DataFault::None),
            resets: Mutex::default(),
            idle_close: Mutex::new(None),
            close_reused: AtomicBool::new(false),
            record_data: AtomicBool::new(true),
        }
    }

    pub(super) fn set_data_fault(&self, fault: DataFault) {
        self.data.send_replace(fault);
    }

    pub(super) fn reset_request_ids(&self) -> Vec<String> {
        lock(&self.resets).clone()
    }

    pub(super) fn set_idle_close(&self, after: Option<Duration>) {
        *lock(&self.idle_close) = after;
    }

    pub(super) fn idle_close(&self) -> Option<Duration> {
        *lock(&self.idle_close)
    }

    pub(super) fn set_close_reused(&self, close: bool) {
        self.close_reused.store(close, Ordering::SeqCst);
    }

    pub(super) fn close_reused(&self) -> bool {
        self.close_reused.load(Ordering::SeqCst)
    }

    pub(super) fn set_record_data(&self, record: bool) {
        self.record_data.store(record, Ordering::SeqCst);
    }

    pub(super) fn record_data(&self) -> bool {
        self.record_data.load(Ordering::SeqCst)
    }

    /// Applies the current fault to a data request that was read whole.
    /// Never returns for a reset: the connection, and this handler with it,
    /// is dropped.
    pub(super) async fn apply(&self, headers: &HeaderMap, conn: Option<&ConnHandle>) -> Verdict {
        let fault = self.data.borrow().clone();
        match fault {
            DataFault::None => Verdict::Proceed,
            DataFault::ResetShare(share) => match conn {
                Some(conn) if rand::random::<f64>() < share => {
                    let id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    lock(&self.resets).push(id.to_owned());
                    conn.reset();
                    // The accept loop drops this handler with the connection;
                    // over HTTP/2 the stream task waits here until the fake stops.
                    std::future::pending().await
                }
                _ => Verdict::Proceed,
            },
            DataFault::StallMidBody => Verdict::Answer(self.stalled_reply()),
            DataFault::AcceptButNeverAnswer => {
                self.left(DataFault::AcceptButNeverAnswer).await;
                Verdict::Proceed
            }
            DataFault::CorruptTls => {
                if let Some(conn) = conn {
                    conn.inject_raw(&BOGUS_TLS_RECORD);
                }
                // Dropped with the connection the client then closes (over
                // HTTP/2, the stream task waits here until the fake stops).
                std::future::pending().await
            }
        }
    }

    /// Resolves once the fault is no longer `fault`.
    fn left(&self, fault: DataFault) -> impl Future<Output = ()> + Send + 'static {
        let mut current = self.data.subscribe();
        async move {
            // An error means the fake is gone: nothing to wait for any more.
            let _ = current.wait_for(|now| *now != fault).await;
        }
    }

    fn stalled_reply(&self) -> Reply {
        let body = StalledBody {
            head: Some(pattern(0, STALL_SENT_LEN)),
            rest: Some(pattern(STALL_SENT_LEN, STALL_BODY_LEN)),
            resume: Mutex::new(Box::pin(self.left(DataFault::StallMidBody))),
        };
        let mut reply = Response::new(body.boxed());
        let headers = reply.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(STALL_BODY_LEN));
        reply
    }
}

/// Download pattern bytes `from..to`, as `/api/download` sends them.
fn pattern(from: u64, to: u64) -> Bytes {
    (from..to).map(pattern_byte).collect::<Vec<u8>>().into()
}

type Resume = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A body that sends its head, then waits for `resume` before the rest.
struct StalledBody {
    head: Option<Bytes>,
    rest: Option<Bytes>,
    /// In a `Mutex` only so that the body is `Sync`, as a boxed response body
    /// must be; it is only ever reached through `&mut self`.
    resume: Mutex<Resume>,
}

impl Body for StalledBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if this.rest.is_some() {
            let resume = this.resume.get_mut().unwrap_or_else(PoisonError::into_inner);
            ready!(resume.as_mut().poll(cx));
        }
        Poll::Ready(this.rest.take().map(|rest| Ok(Frame::data(rest))))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| b.len() as u64);
        SizeHint::with_exact(len(&self.head) + len(&self.rest))
    }
}
