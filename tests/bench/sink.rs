//! The OpenTelemetry collector of the tracing cases: a loopback OTLP/HTTP
//! sink that reads each export, counts its spans (decoded with
//! `opentelemetry-proto`, so a run where spans went missing shows it) and
//! answers 200 at once, as a collector agent on the node would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

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
        match ExportTraceServiceRequest::decode(body.as_slice()) {
            Ok(request) => {
                let spans: usize =
                    request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                received.spans.fetch_add(spans as u64, Ordering::Relaxed);
            }
            Err(_) => {
                received.undecodable.fetch_add(1, Ordering::Relaxed);
            }
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}
