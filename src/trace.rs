//! OpenTelemetry spans (SPEC §11): one server span per request, one client
//! span per try under it, and one span per call to Truedat's session routes
//! (login, refresh, logout, session check, ping). [`export`] sends them.
//!
//! Tracing is off unless the `OTEL_*` environment turns it on. Off, a
//! [`Tracer`] holds nothing: every method returns `None` after one check of
//! an `Option`, no span, exporter, thread or timer exists, and the W3C
//! `traceparent`/`tracestate` headers pass through as any other header.
//!
//! On, a request's `traceparent` is continued (its `tracestate` carried
//! along) and each try sends Truedat the `traceparent` of its own span. The
//! spans are built with the OpenTelemetry API directly, not through the
//! `tracing` crate: the proxy has no `tracing` spans to bridge, a bridge
//! layer would cost every request a formatted span even with nothing
//! exported, and each span here needs an explicit parent across tasks (the
//! session check, the login a 401 causes). No attribute ever holds a header
//! value, a token, a password, a cookie or the query string.

pub mod export;
mod otlp;

use std::borrow::Cow;
use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer as _,
};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::origin::Origin;

/// W3C Trace Context: the caller's trace and span.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context: vendor state, carried along unchanged.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The most attributes a request span gets (2 at the start, 4 at the end).
const REQUEST_ATTRIBUTES: usize = 6;
/// The most attributes a try's span gets (4 at the start, 3 at the end).
const TRY_ATTRIBUTES: usize = 7;

/// Spans, or nothing at all when tracing is off. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracer(Option<Arc<Inner>>);

struct Inner {
    tracer: SdkTracer,
    /// `server.address` and `server.port` of every span towards Truedat
    /// (reference-counted: each span takes a copy).
    server_address: StringValue,
    server_port: i64,
}

impl Tracer {
    /// Spans from `tracer` (see [`export::Pipeline::start`]) for calls to `origin`.
    pub fn new(tracer: SdkTracer, origin: &Origin) -> Tracer {
        let authority = origin.authority();
        let port = authority.port_u16().unwrap_or(if origin.is_https() { 443 } else { 80 });
        Tracer(Some(Arc::new(Inner {
            tracer,
            server_address: Arc::<str>::from(authority.host()).into(),
            server_port: i64::from(port),
        })))
    }

    /// Whether spans are made at all.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The server span of a request received now, continuing its
    /// `traceparent` if it has a valid one; `None` when tracing is off.
    pub fn request(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<RequestSpan> {
        let inner = self.0.as_ref()?;
        // Most tools send no trace context: no parsing then.
        let parent = match headers.contains_key(&TRACEPARENT) {
            true => TraceContextPropagator::new().extract_with_context(&Context::new(), &Headers(headers)),
            false => Context::new(),
        };
        let (name, method) = method_names(method);
        // Room for what `finish` adds, so the span's list never grows.
        let mut attributes = Vec::with_capacity(REQUEST_ATTRIBUTES);
        attributes
            .extend([KeyValue::new("http.request.method", method), KeyValue::new("url.path", uri.path().to_owned())]);
        let builder = SpanBuilder::from_name(name).with_kind(SpanKind::Server).with_attributes(attributes);
        let span = inner.tracer.build_with_context(builder, &parent);
        // The parent of the spans under it: its context alone, which costs
        // the request path less than the span itself behind a lock.
        let cx = parent.with_remote_span_context(span.span_context().clone());
        Some(RequestSpan { span, cx, inner: inner.clone() })
    }

    /// A span for a call to one of Truedat's session routes, under `parent`
    /// (or starting a trace of its own); `None` when tracing is off.
    pub fn call(&self, call: Call, method: &Method, path: &'static str, parent: &Parent) -> Option<CallSpan> {
        let inner = self.0.as_ref()?;
        let builder = SpanBuilder::from_name(call.name()).with_kind(SpanKind::Client).with_attributes([
            KeyValue::new("http.request.method", method_names(method).1),
            KeyValue::new("url.path", path),
            KeyValue::new("server.address", inner.server_address.clone()),
            KeyValue::new("server.port", inner.server_port),
        ]);
        let parent = parent.0.clone().unwrap_or_default();
        let span = inner.tracer.build_with_context(builder, &parent);
        Some(CallSpan { cx: parent.with_span(span) })
    }
}

/// The session routes the proxy calls on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Login,
    Refresh,
    Logout,
    SessionCheck,
    Ping,
}

impl Call {
    /// The span name.
    pub fn name(self) -> &'static str {
        match self {
            Call::Login => "login",
            Call::Refresh => "refresh",
            Call::Logout => "logout",
            Call::SessionCheck => "session check",
            Call::Ping => "ping",
        }
    }
}

/// Where a span started elsewhere belongs: the request whose 401 led to a
/// session check or a login. Empty when tracing is off or nothing caused it.
#[derive(Clone, Default)]
pub struct Parent(Option<Context>);

impl Parent {
    /// No parent: the span starts a trace.
    pub fn none() -> Parent {
        Parent(None)
    }
}

/// The span of one request, from its arrival to its response head (the
/// access line's duration), ended exactly once by [`RequestSpan::finish`]
/// or, if the client went away, by its drop.
pub struct RequestSpan {
    span: Span,
    /// The parent of the spans under it: `span`'s context (local, not remote).
    cx: Context,
    inner: Arc<Inner>,
}

/// What a request's span records at its end.
pub struct Outcome<'a> {
    pub status: StatusCode,
    pub attempts: u32,
    pub replayed: bool,
    /// The proxy's own error, when it answered itself.
    pub error: Option<&'a str>,
}

impl RequestSpan {
    /// `trace_id` and `span_id` for the access line, when the request is
    /// sampled (they print as W3C's lowercase hex).
    pub fn ids(&self) -> Option<(TraceId, SpanId)> {
        let context = self.span.span_context();
        context.is_sampled().then(|| (context.trace_id(), context.span_id()))
    }

    /// The parent for a span this request causes elsewhere.
    pub fn parent(&self) -> Parent {
        Parent(Some(self.cx.clone()))
    }

    /// Makes room for the `traceparent` each try sets, in the head the
    /// tries are copied from: a copy has no spare room, and a header added
    /// to it would move the whole map to a larger allocation, on every try.
    /// The room is an empty `traceparent`, which a try fills or removes.
    pub fn make_room(&self, headers: &mut HeaderMap) {
        headers.entry(&TRACEPARENT).or_insert(HeaderValue::from_static(""));
    }

    /// The client span of one try, named after its method like the
    /// request's span. Its attributes are those SPEC §11 lists: each one
    /// costs every try an allocation or two, here and at export.
    pub fn attempt(&self, method: &Method, attempt: Attempt) -> TrySpan {
        let mut attributes = Vec::with_capacity(TRY_ATTRIBUTES);
        attributes.push(KeyValue::new("server.address", self.inner.server_address.clone()));
        if attempt.resends > 0 {
            attributes.push(KeyValue::new("http.request.resend_count", i64::from(attempt.resends)));
        }
        if let Some(reason) = attempt.retry_reason {
            attributes.push(KeyValue::new("truedat_proxy.retry_reason", reason));
        }
        if attempt.replay {
            attributes.push(KeyValue::new("truedat_proxy.replay", true));
        }
        let builder =
            SpanBuilder::from_name(method_names(method).0).with_kind(SpanKind::Client).with_attributes(attributes);
        TrySpan(self.inner.tracer.build_with_context(builder, &self.cx))
    }

    /// A span over a wait for a token (the first one, or the one a 401
    /// asked for), ended when the returned guard is dropped.
    pub fn waiting(&self, what: &'static str) -> Waiting {
        let builder = SpanBuilder::from_name(what).with_kind(SpanKind::Internal);
        Waiting(self.inner.tracer.build_with_context(builder, &self.cx))
    }

    /// Ends the span with the request's outcome. A 5xx is an error (SPEC
    /// §11: the proxy's own; the HTTP conventions add Truedat's), described
    /// by the proxy's message or by the status Truedat answered.
    pub fn finish(mut self, outcome: Outcome<'_>) {
        let span = &mut self.span;
        span.set_attributes([
            KeyValue::new("http.response.status_code", i64::from(outcome.status.as_u16())),
            KeyValue::new("truedat_proxy.attempts", i64::from(outcome.attempts)),
            KeyValue::new("truedat_proxy.replayed", outcome.replayed),
        ]);
        if outcome.status.is_server_error() {
            span.set_attribute(KeyValue::new("error.type", outcome.status.as_str().to_owned()));
            let description: Cow<'static, str> = match outcome.error {
                Some(error) => error.to_owned().into(),
                None => format!("Truedat answered {}", outcome.status.as_u16()).into(),
            };
            span.set_status(Status::error(description));
        }
        span.end();
    }
}

/// What a try is, besides the first.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attempt {
    /// Tries of this request sent before this one.
    pub resends: u32,
    /// Why the previous try is sent again (`connect`, `reset`, `status`).
    pub retry_reason: Option<&'static str>,
    /// The replay after a 401, or a retry of it.
    pub replay: bool,
}

/// The client span of one try.
pub struct TrySpan(Span);

impl TrySpan {
    /// Sets the try's `traceparent` (replacing the client's) and the
    /// `tracestate` carried from the client, or removes a stale one.
    pub fn inject(&self, headers: &mut HeaderMap) {
        inject(self.0.span_context(), headers);
    }

    /// Truedat answered: its status, and the HTTP version of the answer.
    /// A status of 400 or more is an error, as the HTTP conventions say
    /// for client spans.
    pub fn answered(mut self, status: StatusCode, version: Version) {
        let span = &mut self.0;
        span.set_attributes([
            KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
            KeyValue::new("network.protocol.version", version_text(version)),
        ]);
        if status.as_u16() >= 400 {
            span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
            span.set_status(Status::error(format!("Truedat answered {}", status.as_u16())));
        }
        span.end();
    }

    /// The try failed without an answer: `kind` (`connect`, `tls`,
    /// `timeout`, `protocol`…) and the proxy's description, which holds no
    /// request data.
    pub fn failed(mut self, kind: &'static str, description: String) {
        let span = &mut self.0;
        span.set_attribute(KeyValue::new("error.type", kind));
        span.set_status(Status::error(description));
        span.end();
    }
}

/// The span of a call to a session route.
pub struct CallSpan {
    cx: Context,
}

impl CallSpan {
    /// Sets the call's `traceparent`, so Truedat can join the trace.
    pub fn inject(&self, headers: &mut HeaderMap) {
        inject(self.cx.span().span_context(), headers);
    }

    /// Adds an attribute known to the caller (such as why a login happens).
    pub fn set(&self, key: &'static str, value: &'static str) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// Truedat answered with `status`.
    pub fn answered(&self, status: StatusCode) {
        self.cx.span().set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
    }

    /// Ends the span with its result (`truedat_proxy.result`); an `error`
    /// (the proxy's message, which holds no secret) marks it failed.
    pub fn finish(self, result: &'static str, error: Option<String>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("truedat_proxy.result", result));
        if let Some(error) = error {
            span.set_status(Status::error(error));
        }
        span.end();
    }
}

/// A wait, as a span ended on drop.
pub struct Waiting(Span);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Writes `context` as `traceparent` (W3C Trace Context §3.2: version 00,
/// trace id, parent id, the sampled flag) and its trace state as
/// `tracestate`, which is left out when empty.
fn inject(context: &SpanContext, headers: &mut HeaderMap) {
    if !context.is_valid() {
        // No span (the provider has shut down): the client's header goes
        // on as it came, and none where it sent none.
        if headers.get(&TRACEPARENT).is_some_and(HeaderValue::is_empty) {
            headers.remove(&TRACEPARENT);
        }
        return;
    }
    headers.insert(TRACEPARENT.clone(), traceparent(context));
    if context.trace_state() == &opentelemetry::trace::TraceState::NONE {
        headers.remove(&TRACESTATE);
        return;
    }
    match HeaderValue::try_from(context.trace_state().header()) {
        Ok(state) if !state.is_empty() => {
            headers.insert(TRACESTATE.clone(), state);
        }
        _ => {
            headers.remove(&TRACESTATE);
        }
    }
}

/// `00-{trace id}-{span id}-{flags}` in lowercase hex, written without the
/// formatting machinery: it is on every try's path.
fn traceparent(context: &SpanContext) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 55];
    text[..2].copy_from_slice(b"00");
    let trace = context.trace_id().to_bytes();
    let span = context.span_id().to_bytes();
    let flags = [u8::from(context.is_sampled())];
    for (bytes, at) in [(&trace[..], 3), (&span[..], 36), (&flags[..], 53)] {
        for (i, byte) in bytes.iter().enumerate() {
            text[at + 2 * i] = HEX[usize::from(byte >> 4)];
            text[at + 2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
    }
    HeaderValue::from_bytes(&text).expect("hex digits and dashes are a valid header value")
}

/// The span name and the `http.request.method` of `method`: the HTTP
/// conventions name other methods `HTTP` and `_OTHER`, so a client cannot
/// make up span names.
fn method_names(method: &Method) -> (&'static str, &'static str) {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    match KNOWN.into_iter().find(|known| *known == method.as_str()) {
        Some(name) => (name, name),
        None => ("HTTP", "_OTHER"),
    }
}

fn version_text(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A request's headers, as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceFlags, TraceState};

    use super::*;

    fn remote(flags: TraceFlags, state: &str) -> SpanContext {
        let state = if state.is_empty() { TraceState::default() } else { state.parse().unwrap() };
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            flags,
            true,
            state,
        )
    }

    #[test]
    fn traceparent_is_written_as_w3c_says_and_an_empty_tracestate_is_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACESTATE, HeaderValue::from_static("stale=1"));
        inject(&remote(TraceFlags::SAMPLED, ""), &mut headers);
        assert_eq!(headers[&TRACEPARENT], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(!headers.contains_key(&TRACESTATE));

        inject(&remote(TraceFlags::NOT_SAMPLED, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"), &mut headers);
        assert_eq!(headers[&TRACEPARENT], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert_eq!(headers[&TRACESTATE], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        assert_eq!(headers.get_all(&TRACEPARENT).iter().count(), 1);
    }

    #[test]
    fn nothing_is_written_without_a_valid_span() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static("from-the-client"));
        inject(&SpanContext::empty_context(), &mut headers);
        assert_eq!(headers[&TRACEPARENT], "from-the-client");
    }

    #[test]
    fn the_room_made_for_a_traceparent_is_filled_or_removed() {
        let tracer = Tracer(Some(Arc::new(Inner {
            tracer: opentelemetry::trace::TracerProvider::tracer(
                &opentelemetry_sdk::trace::SdkTracerProvider::builder().build(),
                "t",
            ),
            server_address: "truedat".into(),
            server_port: 443,
        })));
        let span = tracer.request(&Method::GET, &Uri::from_static("/api"), &HeaderMap::new()).unwrap();
        let mut headers = HeaderMap::new();
        span.make_room(&mut headers);
        let mut sent = headers.clone();
        span.attempt(&Method::GET, Attempt::default()).inject(&mut sent);
        assert_eq!(sent[&TRACEPARENT].len(), 55);
        inject(&SpanContext::empty_context(), &mut headers);
        assert!(!headers.contains_key(&TRACEPARENT), "no empty traceparent goes to Truedat");

        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static("from-the-client"));
        span.make_room(&mut headers);
        assert_eq!(headers[&TRACEPARENT], "from-the-client");
    }

    #[test]
    fn unknown_methods_make_no_span_names() {
        assert_eq!(method_names(&Method::GET), ("GET", "GET"));
        assert_eq!(method_names(&Method::from_bytes(b"PURGE").unwrap()), ("HTTP", "_OTHER"));
    }

    #[test]
    fn off_is_nothing() {
        let off = Tracer::default();
        assert!(!off.is_on());
        let headers = HeaderMap::new();
        assert!(off.request(&Method::GET, &Uri::from_static("/x"), &headers).is_none());
        assert!(off.call(Call::Login, &Method::POST, "/api/sessions", &Parent::none()).is_none());
    }
}
