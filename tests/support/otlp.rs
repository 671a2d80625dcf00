//! An OpenTelemetry collector for the tests: an OTLP/HTTP receiver on
//! 127.0.0.1 that decodes every export with the official protobuf
//! definitions (`opentelemetry-proto`), keeps the raw bytes for secret
//! scans, and can stop answering like a hanging collector.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::wait::wait_until;

/// `Span.kind` values of the protocol.
pub const KIND_INTERNAL: i32 = 1;
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;
/// `Status.code` of an error.
pub const STATUS_ERROR: i32 = 2;

/// One export as it arrived.
#[derive(Clone, Debug)]
pub struct Export {
    pub headers: HeaderMap,
    /// The protobuf body, undecoded.
    pub body: Bytes,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// Arrays, maps and bytes: the tests never expect them.
    Other(String),
}

/// One span, flattened with its resource.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub name: String,
    pub kind: i32,
    /// Lowercase hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, Attr>,
    pub status_code: i32,
    pub status_message: String,
    pub resource: BTreeMap<String, Attr>,
    /// Unix nanoseconds.
    pub start: u64,
    pub end: u64,
}

impl SpanRecord {
    /// A string attribute.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(Attr::Int(i)) => Some(*i),
            _ => None,
        }
    }

    /// A boolean attribute.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.attributes.get(key) {
            Some(Attr::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// Whether the span's status is an error.
    pub fn is_error(&self) -> bool {
        self.status_code == STATUS_ERROR
    }
}

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 with an empty `ExportTraceServiceResponse`.
    Accept,
    /// Reads the export, then never answers (until the receiver stops).
    Hang,
}

#[derive(Default)]
struct State {
    exports: Mutex<Vec<Export>>,
    spans: Mutex<Vec<SpanRecord>>,
    mode: Mutex<Option<Mode>>,
    /// Bodies that did not decode: a receiver bug or a broken exporter.
    undecodable: Mutex<Vec<String>>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1, accepting exports.
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let state = Arc::new(State::default());
        *lock(&state.mode) = Some(Mode::Accept);
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, state.clone(), stop.clone()));
        Receiver { addr, state, stop }
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes how exports are answered from now on.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state.mode) = Some(mode);
    }

    /// Every span received so far, in order of arrival.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.assert_decodable();
        lock(&self.state.spans).clone()
    }

    /// Every export received so far (answered or not).
    pub fn exports(&self) -> Vec<Export> {
        lock(&self.state.exports).clone()
    }

    /// Waits until the spans received satisfy `condition`; false after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, condition: impl Fn(&[SpanRecord]) -> bool) -> bool {
        wait_until(timeout, || async { condition(&self.spans()) }).await
    }

    fn assert_decodable(&self) {
        let undecodable = lock(&self.state.undecodable);
        assert!(undecodable.is_empty(), "exports that are not OTLP protobuf: {undecodable:?}");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A loopback address where nothing listens: a collector that is down.
pub async fn closed_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    drop(listener);
    format!("http://{addr}")
}

async fn accept(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = stop.cancelled() => return,
        };
        let (state, stop, stopped) = (state.clone(), stop.clone(), stop.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, state.clone(), stop.clone()));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stopped.cancelled() => {}
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    state: Arc<State>,
    stop: CancellationToken,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    lock(&state.exports).push(Export { headers: parts.headers.clone(), body: body.clone() });
    let content_type = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if parts.uri.path() != "/v1/traces" || content_type != "application/x-protobuf" {
        lock(&state.undecodable).push(format!("{} {} ({content_type})", parts.method, parts.uri));
    } else {
        match ExportTraceServiceRequest::decode(body.as_ref()) {
            Ok(request) => lock(&state.spans).extend(flatten(request)),
            Err(error) => lock(&state.undecodable).push(error.to_string()),
        }
    }
    if *lock(&state.mode) == Some(Mode::Hang) {
        stop.cancelled().await;
    }
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-protobuf")
        .body(Full::default())
        .expect("a valid response");
    Ok(response)
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(r.attributes)).unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                spans.push(SpanRecord {
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(span.attributes),
                    status_code: status.code,
                    status_message: status.message,
                    resource: resource.clone(),
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                });
            }
        }
    }
    spans
}

fn attributes(list: Vec<KeyValue>) -> BTreeMap<String, Attr> {
    list.into_iter().map(|kv| (kv.key, attr(kv.value))).collect()
}

fn attr(value: Option<AnyValue>) -> Attr {
    match value.and_then(|v| v.value) {
        Some(Value::StringValue(s)) => Attr::Str(s),
        Some(Value::IntValue(i)) => Attr::Int(i),
        Some(Value::BoolValue(b)) => Attr::Bool(b),
        Some(Value::DoubleValue(d)) => Attr::Double(d),
        other => Attr::Other(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
