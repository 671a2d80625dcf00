//! The OpenTelemetry collector of the tracing cases: a loopback OTLP/HTTP
//! sink that reads each export, counts its spans (so a run where spans went
//! missing shows it) and answers 200 at once, as a collector agent on the
//! node would.
//!
//! It counts by walking protobuf's wire format down to the `Span` messages,
//! without decoding them. Decoding them with `opentelemetry-proto` (as the
//! integration tests do) took about 8,900 instructions per request of two
//! spans under callgrind, as much as the proxy's own tracing work: at the
//! traced proxy's 20,000-25,000 requests per second, a tenth of a core taken
//! from wrk, the upstream and the proxy being measured, on two cores. A body
//! that is not well-formed protobuf down to the spans counts as not OTLP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::encoding::{WireType, decode_key, decode_varint};

/// What the sink received.
#[derive(Default)]
pub struct Received {
    pub exports: AtomicU64,
    pub spans: AtomicU64,
    /// Exports that were not OTLP protobuf: the measurement would be wrong.
    pub undecodable: AtomicU64,
}

/// A running sink; its threads live as long as the run.
pub struct Sink {
    pub port: u16,
    pub received: Arc<Received>,
}

impl Sink {
    /// Listens on a free port of 127.0.0.1, a thread per connection.
    pub fn start() -> Sink {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        let received = Arc::new(Received::default());
        let counts = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counts = counts.clone();
                std::thread::spawn(move || serve(stream, &counts));
            }
        });
        Sink { port, received }
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Keep-alive HTTP/1.1 requests with a `content-length` body, until the peer closes.
fn serve(stream: TcpStream, received: &Received) {
    let _ = stream.set_nodelay(true);
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        received.exports.fetch_add(1, Ordering::Relaxed);
        match count_spans(&body) {
            Some(spans) => received.spans.fetch_add(spans, Ordering::Relaxed),
            None => received.undecodable.fetch_add(1, Ordering::Relaxed),
        };
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}

/// The spans of an `ExportTraceServiceRequest`: its `resource_spans` (1),
/// their `scope_spans` (2), their `spans` (2); `None` when the body is not
/// protobuf down to there.
fn count_spans(body: &[u8]) -> Option<u64> {
    let mut spans = 0;
    for resource_spans in fields(body, 1)? {
        for scope_spans in fields(resource_spans, 2)? {
            spans += fields(scope_spans, 2)?.len() as u64;
        }
    }
    Some(spans)
}

/// The length-delimited fields numbered `tag` of a message, skipping the
/// others; `None` when the message does not parse.
fn fields(mut message: &[u8], tag: u32) -> Option<Vec<&[u8]>> {
    let mut found = Vec::new();
    while !message.is_empty() {
        let (number, wire_type) = decode_key(&mut message).ok()?;
        let len = match wire_type {
            WireType::Varint => {
                decode_varint(&mut message).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => usize::try_from(decode_varint(&mut message).ok()?).ok()?,
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        let (value, rest) = message.split_at_checked(len)?;
        if number == tag && wire_type == WireType::LengthDelimited {
            found.push(value);
        }
        message = rest;
    }
    Some(found)
}
