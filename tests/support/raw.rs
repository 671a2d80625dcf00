//! Raw HTTP/1.1 over a TCP socket, for what a well-behaved client library
//! would never send (or would normalise first): ambiguous framing, folded
//! header lines, oversized heads, garbage, un-normalised request targets.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;

/// How long a read waits for the server before giving up.
const READ_PATIENCE: Duration = Duration::from_secs(5);

/// Sends `head` on a fresh connection and reads until a whole response
/// arrived, the server closes, or 5 s pass.
pub async fn raw_exchange(addr: SocketAddr, head: &[u8]) -> String {
    let mut conn = RawConn::connect(addr).await;
    conn.send(head);
    conn.response().await.text()
}

/// One client connection. Writes happen on a task of their own, in order, so
/// that a server which answers (and closes) before reading everything the
/// client sends cannot block the test, and the answer is read meanwhile.
pub struct RawConn {
    reader: OwnedReadHalf,
    writes: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes read but not yet handed out (the start of a next response).
    pending: Vec<u8>,
}

/// What came back for one request.
#[derive(Debug, Clone, Default)]
pub struct RawResponse {
    /// Every byte read for this response (all of them if it never completed).
    pub bytes: Vec<u8>,
    /// Whether the bytes form one whole response (head, and the body its
    /// framing announces).
    pub complete: bool,
    /// Whether the server closed (or reset) the connection while it was read.
    pub closed: bool,
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        let (reader, mut writer) = stream.into_split();
        let (writes, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(bytes) = queue.recv().await {
                // A server that closed on us makes writes fail: what the test
                // looks at is what it answered, not whether it read everything.
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        RawConn { reader, writes, pending: Vec::new() }
    }

    /// Queues `bytes` to be written after everything queued before.
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.writes.send(bytes.to_vec());
    }

    /// Reads one response: until it is complete, the server closes, or 5 s
    /// pass. Bytes beyond it are kept for the next call.
    pub async fn response(&mut self) -> RawResponse {
        let mut bytes = std::mem::take(&mut self.pending);
        let mut buf = vec![0u8; 64 * 1024];
        let mut closed = false;
        let read = async {
            loop {
                if let Some(end) = response_end(&bytes) {
                    self.pending = bytes.split_off(end);
                    return;
                }
                match self.reader.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        closed = true;
                        return;
                    }
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                }
            }
        };
        let _ = tokio::time::timeout(READ_PATIENCE, read).await;
        let complete = response_end(&bytes).is_some();
        RawResponse { bytes, complete, closed }
    }

    /// Whether the server closes the connection within `within`, sending
    /// nothing more. Bytes that do arrive are kept for [`response`](Self::response).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(within, self.reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                self.pending.extend_from_slice(&buf[..n]);
                false
            }
            Err(_) => false,
        }
    }
}

impl RawResponse {
    /// The bytes as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the status line, if one arrived.
    pub fn status(&self) -> Option<u16> {
        let text = self.text();
        let line = text.lines().next()?;
        let mut parts = line.split(' ');
        parts.next().filter(|version| version.starts_with("HTTP/1."))?;
        parts.next()?.parse().ok()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let (head, _) = text.split_once("\r\n\r\n")?;
        head.lines().skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    }

    /// The body bytes after the head (still chunk-encoded if it was chunked).
    pub fn body(&self) -> &[u8] {
        let end = head_end(&self.bytes).unwrap_or(self.bytes.len());
        &self.bytes[end..]
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(self.body()).ok()
    }
}

/// Index just past the blank line ending the head.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Index just past a whole response at the start of `bytes`: a
/// `Content-Length` body, a chunked body up to its last chunk, or no body
/// for statuses that have none.
fn response_end(bytes: &[u8]) -> Option<usize> {
    let head_len = head_end(bytes)?;
    let head = String::from_utf8_lossy(&bytes[..head_len]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Some(head_len);
    }
    let field = |name: &str| {
        head.lines()
            .skip(1)
            .find_map(|line| line.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_owned()))
    };
    if field("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        // The last chunk: a size of 0 at the start of a line, then the blank line.
        let body = &bytes[head_len..];
        let last = (0..body.len()).find(|&i| (i == 0 || body[i - 1] == b'\n') && body[i..].starts_with(b"0\r\n\r\n"));
        return last.map(|i| head_len + i + 5);
    }
    let length: usize = field("content-length").and_then(|v| v.parse().ok())?;
    (bytes.len() >= head_len + length).then_some(head_len + length)
}

/// What a send-then-read client (Python's `requests`, `http.client`, Java's
/// `HttpURLConnection`) experienced: it writes the whole request, and only
/// then reads.
#[derive(Debug)]
pub struct SendThenRead {
    /// How many body bytes it managed to write before a write failed (all of
    /// them when `write_error` is `None`).
    pub body_written: usize,
    /// Why writing failed (a reset, a broken pipe, a write timeout).
    pub write_error: Option<String>,
    /// What it read afterwards; `None` when reading failed before anything arrived.
    pub response: RawResponse,
    /// Whether the connection was closed (within 5 s) after the response.
    pub closed_after: bool,
}

/// Sends `head` (ending with its blank line), then `body_len` bytes of body,
/// and only then reads one response, on a blocking socket as the tools
/// above do: nothing is read before the last byte was written. Each write
/// and read gives up after `patience`, so a proxy that stops reading the
/// body fails the test instead of hanging it.
pub async fn send_then_read(addr: SocketAddr, head: Vec<u8>, body_len: usize, patience: Duration) -> SendThenRead {
    tokio::task::spawn_blocking(move || send_then_read_blocking(addr, &head, body_len, patience))
        .await
        .expect("the send-then-read client does not panic")
}

fn send_then_read_blocking(addr: SocketAddr, head: &[u8], body_len: usize, patience: Duration) -> SendThenRead {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_write_timeout(Some(patience)).expect("a non-zero timeout");
    stream.set_read_timeout(Some(patience)).expect("a non-zero timeout");
    let mut body_written = 0;
    let mut write_error = stream.write_all(head).err().map(|e| format!("writing the head: {e}"));
    let chunk = vec![b'x'; 64 * 1024];
    while write_error.is_none() && body_written < body_len {
        let n = chunk.len().min(body_len - body_written);
        match stream.write_all(&chunk[..n]) {
            Ok(()) => body_written += n,
            Err(e) => write_error = Some(format!("after {body_written} body bytes: {e}")),
        }
    }
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    while response_end(&bytes).is_none() {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    let complete = response_end(&bytes).is_some();
    let _ = stream.set_read_timeout(Some(READ_PATIENCE));
    let closed_after = closed
        || match stream.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        };
    SendThenRead { body_written, write_error, response: RawResponse { bytes, complete, closed }, closed_after }
}
