//! Responses in Truedat's shapes, and the streaming bodies of the data routes:
//! a lazily generated download and a request body hashed as it arrives, so that
//! gigabyte transfers through the proxy never sit in the fake's memory.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

/// Every response body the fake produces.
pub(super) type ResponseBody = BoxBody<Bytes, Infallible>;
/// Every response the fake produces.
pub(super) type Reply = Response<ResponseBody>;

/// Phoenix's JSON content type, charset included, as Truedat sends it.
pub(super) const JSON: &str = "application/json; charset=utf-8";

/// Bodies up to this size are kept (recorded and echoed); larger ones are only hashed.
pub(super) const KEEP_LIMIT: usize = 64 * 1024;

/// Size of the frames of a download.
const CHUNK: usize = 64 * 1024;

/// Length of the download pattern's period: a prime, so chunk boundaries never line
/// up with it and a misplaced or duplicated chunk changes the bytes.
const PERIOD: u64 = 251;

/// A response with a fixed body and content type.
pub(super) fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON response with Phoenix's content type.
pub(super) fn json(status: StatusCode, body: &serde_json::Value) -> Reply {
    full(status, JSON, body.to_string())
}

/// Truedat's error shape: `{"errors":{"detail":"…"}}`.
pub(super) fn error_detail(status: StatusCode, detail: &str) -> Reply {
    json(status, &serde_json::json!({ "errors": { "detail": detail } }))
}

/// The shape of Guardian's auth errors: 401 `{"message":"…"}`, no `WWW-Authenticate`.
pub(super) fn auth_error(message: &str) -> Reply {
    json(StatusCode::UNAUTHORIZED, &serde_json::json!({ "message": message }))
}

/// A response without a body or content type (e.g. 204 after logout).
pub(super) fn empty(status: StatusCode) -> Reply {
    let mut response = Response::new(Empty::new().boxed());
    *response.status_mut() = status;
    response
}

/// Phoenix's answer to an unknown route.
pub(super) fn not_found() -> Reply {
    error_detail(StatusCode::NOT_FOUND, "Page not found")
}

/// Byte `index` of every download: `index % 251`.
pub(super) fn pattern_byte(index: u64) -> u8 {
    u8::try_from(index % PERIOD).expect("a remainder of 251 fits in a byte")
}

/// A download of `len` pattern bytes, produced chunk by chunk as the client reads.
pub(super) fn pattern_body(len: u64) -> ResponseBody {
    PatternBody { next: 0, end: len }.boxed()
}

/// The download body; each chunk is a zero-copy slice of one shared pattern buffer.
struct PatternBody {
    next: u64,
    end: u64,
}

/// One chunk plus one period of pattern, so a chunk may start at any phase.
fn pattern_buffer() -> &'static Bytes {
    static BUFFER: OnceLock<Bytes> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let len = CHUNK as u64 + PERIOD;
        (0..len).map(pattern_byte).collect::<Vec<u8>>().into()
    })
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let remaining = self.end - self.next;
        if remaining == 0 {
            return Poll::Ready(None);
        }
        let len = usize::try_from(remaining.min(CHUNK as u64)).expect("at most CHUNK");
        let phase = usize::try_from(self.next % PERIOD).expect("below PERIOD");
        self.next += len as u64;
        let chunk = pattern_buffer().slice(phase..phase + len);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.next == self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.next)
    }
}

/// What the fake learns from a request body it reads without holding it.
pub(super) struct BodySummary {
    /// Bytes received.
    pub(super) len: u64,
    /// Lower-case hex SHA-256 of the bytes received.
    pub(super) sha256: String,
    /// The body itself, when it is no larger than [`KEEP_LIMIT`].
    pub(super) kept: Option<Bytes>,
    /// False when the client broke off mid-body.
    pub(super) complete: bool,
}

/// Reads `body` to its end, hashing it and keeping it only while it is small.
pub(super) async fn consume(mut body: Incoming) -> BodySummary {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut kept = Some(BytesMut::new());
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            complete = false;
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry no body bytes
        };
        hasher.update(&data);
        len += data.len() as u64;
        kept = kept.filter(|buf| buf.len() + data.len() <= KEEP_LIMIT);
        if let Some(buf) = kept.as_mut() {
            buf.extend_from_slice(&data);
        }
    }
    BodySummary { len, sha256: hex(&hasher.finalize()), kept: kept.map(BytesMut::freeze), complete }
}

/// Reads a (small) body whole; `None` when the client broke off.
pub(super) async fn collect(body: Incoming) -> Option<Bytes> {
    body.collect().await.ok().map(|all| all.to_bytes())
}

/// Lower-case hexadecimal, as `sha256sum` prints it.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        write!(out, "{byte:02x}").expect("writing to a String cannot fail");
        out
    })
}
