//! Ended spans written straight into an OTLP `ExportTraceServiceRequest`
//! (opentelemetry-proto's `trace/v1/trace.proto` and
//! `collector/trace/v1/trace_service.proto`), in protobuf's wire format.
//!
//! Why not `opentelemetry-otlp`'s exporter: its conversion first copies
//! every span into the generated message types (a `String` per attribute key
//! and string value, a `Vec` per id, a hash of the instrumentation scope per
//! span), encodes them and frees it all. Under callgrind, the export thread
//! spent 23,400 instructions per request of two spans that way, against
//! 5,400 for making the spans on the request's thread. Written from the
//! spans as they are, each message once (its length goes in front of it
//! afterwards, [`message`]), it takes 2,400 (README, "Tracing"). The tests
//! below decode what this writes with the official definitions and compare
//! it with that conversion's own output, field for field.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use prost::encoding::{WireType, encode_key, encode_varint};

/// Room for a span of the proxy (ids, times, name, some six attributes):
/// most never grow their buffer.
const SPAN_BYTES: usize = 320;

/// The encoded `Resource` message every batch repeats, and its schema URL:
/// the resource never changes, so it is written once.
#[derive(Debug, Default)]
pub struct Header {
    resource: Vec<u8>,
    schema_url: String,
}

impl Header {
    /// The resource's attributes, as `Resource` (field 1: attributes).
    pub fn new(resource: &Resource) -> Header {
        let mut encoded = Vec::new();
        for (key, value) in resource.iter() {
            message(&mut encoded, 1, |b| key_value(b, key.as_str(), value));
        }
        Header { resource: encoded, schema_url: resource.schema_url().unwrap_or_default().to_owned() }
    }
}

/// Ended spans of one instrumentation scope, each written as a `Span`
/// message in its `ScopeSpans.spans` field, as it ends, on the thread that
/// ended it: an export's body is these bytes as they are, after the
/// resource and the scope.
#[derive(Debug)]
pub struct Spans {
    scope: InstrumentationScope,
    bytes: Vec<u8>,
    /// Where each span's field ends in `bytes`, so that an export can take
    /// part of them.
    ends: Vec<usize>,
}

impl Spans {
    /// Room for `expected` spans of the proxy before the buffer grows.
    pub fn new(scope: InstrumentationScope, expected: usize) -> Spans {
        Spans { scope, bytes: Vec::with_capacity(expected * SPAN_BYTES), ends: Vec::with_capacity(expected) }
    }

    /// Writes `span`, whose scope must be this one ([`Spans::scope`]).
    pub fn push(&mut self, span: &SpanData) {
        debug_assert!(span.instrumentation_scope == self.scope, "a span of another scope");
        // Nearly every span takes 128 to 16,383 bytes: a length of two bytes.
        message_reserving(&mut self.bytes, 2, 2, |b| span_message(b, span));
        self.ends.push(self.bytes.len());
    }

    pub fn scope(&self) -> &InstrumentationScope {
        &self.scope
    }

    /// How many spans are written.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Keeps the first `at` spans and returns the others.
    pub fn split_off(&mut self, at: usize) -> Spans {
        let start = self.start(at);
        let bytes = self.bytes.split_off(start);
        let ends = self.ends.split_off(at).into_iter().map(|end| end - start).collect();
        Spans { scope: self.scope.clone(), bytes, ends }
    }

    /// The spans numbered `spans` (in the order they were written).
    pub fn part(&self, spans: Range<usize>) -> Part<'_> {
        let bytes = &self.bytes[self.start(spans.start)..self.start(spans.end)];
        Part { scope: &self.scope, bytes, spans: spans.len() }
    }

    /// Where span number `span` starts (or would): where the one before ends.
    fn start(&self, span: usize) -> usize {
        span.checked_sub(1).map_or(0, |before| self.ends[before])
    }
}

/// Some of the spans of a [`Spans`], for one export.
#[derive(Debug)]
pub struct Part<'a> {
    scope: &'a InstrumentationScope,
    bytes: &'a [u8],
    spans: usize,
}

impl Part<'_> {
    /// How many spans it holds.
    pub fn len(&self) -> usize {
        self.spans
    }
}

/// The body of an OTLP/HTTP export of `parts`: one `ResourceSpans`, one
/// `ScopeSpans` per instrumentation scope (in order of first appearance).
pub fn request(header: &Header, parts: &[Part<'_>]) -> Vec<u8> {
    // The proxy has a single tracer: nearly always one scope.
    let mut scopes: Vec<&InstrumentationScope> = Vec::with_capacity(1);
    for part in parts {
        if !scopes.contains(&part.scope) {
            scopes.push(part.scope);
        }
    }
    let bytes: usize = parts.iter().map(|p| p.bytes.len()).sum();
    let mut buf = Vec::with_capacity(header.resource.len() + bytes + 128 * scopes.len());
    message(&mut buf, 1, |b| {
        length_delimited(b, 1, &header.resource);
        for scope in scopes {
            message(b, 2, |b| {
                message(b, 1, |b| scope_message(b, scope));
                for part in parts.iter().filter(|p| p.scope == scope) {
                    b.extend_from_slice(part.bytes);
                }
                string_field(b, 3, scope.schema_url().unwrap_or_default());
            });
        }
        string_field(b, 3, &header.schema_url);
    });
    buf
}

// trace.proto `Span`: the field numbers are the protocol's.

fn span_message(b: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes_field(b, 1, &context.trace_id().to_bytes());
    bytes_field(b, 2, &context.span_id().to_bytes());
    trace_state(b, 3, context.trace_state());
    if span.parent_span_id != SpanId::INVALID {
        bytes_field(b, 4, &span.parent_span_id.to_bytes());
    }
    string_field(b, 5, &span.name);
    varint_field(b, 6, kind(&span.span_kind));
    fixed64_field(b, 7, nanos(span.start_time));
    fixed64_field(b, 8, nanos(span.end_time));
    for kv in &span.attributes {
        attribute(b, 9, kv);
    }
    varint_field(b, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        message(b, 11, |b| event_message(b, event));
    }
    varint_field(b, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        message(b, 13, |b| link_message(b, link));
    }
    varint_field(b, 14, u64::from(span.links.dropped_count));
    message(b, 15, |b| status_message(b, &span.status));
    fixed32_field(b, 16, flags(context, span.parent_span_is_remote));
}

/// The W3C `tracestate` (most spans have none: nothing to format then).
fn trace_state(b: &mut Vec<u8>, tag: u32, state: &TraceState) {
    if state != &TraceState::NONE {
        string_field(b, tag, &state.header());
    }
}

/// `SpanFlags`: the W3C trace flags, and whether the parent is remote
/// (`CONTEXT_HAS_IS_REMOTE` 0x100, `CONTEXT_IS_REMOTE` 0x200).
fn flags(context: &SpanContext, parent_is_remote: bool) -> u32 {
    u32::from(context.trace_flags().to_u8()) | 0x100 | if parent_is_remote { 0x200 } else { 0 }
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// `Status`: message (2) and code (3: unset 0, ok 1, error 2).
fn status_message(b: &mut Vec<u8>, status: &Status) {
    let (message, code) = match status {
        Status::Unset => ("", 0),
        Status::Ok => ("", 1),
        Status::Error { description } => (description.as_ref(), 2),
    };
    string_field(b, 2, message);
    varint_field(b, 3, code);
}

fn event_message(b: &mut Vec<u8>, event: &opentelemetry::trace::Event) {
    fixed64_field(b, 1, nanos(event.timestamp));
    string_field(b, 2, &event.name);
    for kv in &event.attributes {
        attribute(b, 3, kv);
    }
    varint_field(b, 4, u64::from(event.dropped_attributes_count));
}

fn link_message(b: &mut Vec<u8>, link: &opentelemetry::trace::Link) {
    let context = &link.span_context;
    bytes_field(b, 1, &context.trace_id().to_bytes());
    bytes_field(b, 2, &context.span_id().to_bytes());
    trace_state(b, 3, context.trace_state());
    for kv in &link.attributes {
        attribute(b, 4, kv);
    }
    varint_field(b, 5, u64::from(link.dropped_attributes_count));
    fixed32_field(b, 6, flags(context, context.is_remote()));
}

// common.proto: `InstrumentationScope`, `KeyValue`, `AnyValue`, `ArrayValue`.

fn scope_message(b: &mut Vec<u8>, scope: &InstrumentationScope) {
    string_field(b, 1, scope.name());
    string_field(b, 2, scope.version().unwrap_or_default());
    for kv in scope.attributes() {
        attribute(b, 3, kv);
    }
}

/// A `KeyValue` as field `tag`. A span's attributes are nearly all a
/// string, an integer or a boolean, whose lengths are known before they are
/// written: such a one is written straight through, lengths first, in room
/// reserved once, without [`message`]'s set-aside and fix-up, which the rare
/// arrays still take (callgrind: the proxy's 8 attributes per request, 2,105
/// instructions that way, 1,654 this way).
fn attribute(b: &mut Vec<u8>, tag: u32, kv: &KeyValue) {
    let key = kv.key.as_str();
    let Some(scalar) = Scalar::of(&kv.value) else {
        return message(b, tag, |b| key_value(b, key, &kv.value));
    };
    let value_len = scalar.len();
    let pair_len = field_len(key.len()) + field_len(value_len);
    b.reserve(field_len(pair_len));
    put_key(b, tag, WireType::LengthDelimited);
    put_varint(b, pair_len as u64);
    length_delimited(b, 1, key.as_bytes());
    put_key(b, 2, WireType::LengthDelimited);
    put_varint(b, value_len as u64);
    scalar.write(b);
}

/// `KeyValue`: key (1) and value (2), an `AnyValue` always present.
fn key_value(b: &mut Vec<u8>, key: &str, value: &Value) {
    string_field(b, 1, key);
    message(b, 2, |b| any_value(b, value));
}

/// `AnyValue` is a `oneof`: its one field is written even when it holds
/// the default (an empty string, `false`, 0), as protobuf does for a oneof.
fn any_value(b: &mut Vec<u8>, value: &Value) {
    match (Scalar::of(value), value) {
        (Some(scalar), _) => scalar.write(b),
        (None, Value::Array(array)) => message(b, 5, |b| array_values(b, array)),
        // `Value` is non-exhaustive: a kind added later is left out, not mis-encoded.
        (None, _) => {}
    }
}

/// An `AnyValue` that is not an array: its one field, whose length is
/// known before it is written.
enum Scalar<'a> {
    String(&'a [u8]),
    Bool(bool),
    I64(i64),
    F64(f64),
}

impl Scalar<'_> {
    fn of(value: &Value) -> Option<Scalar<'_>> {
        Some(match value {
            Value::String(s) => Scalar::String(s.as_str().as_bytes()),
            Value::Bool(v) => Scalar::Bool(*v),
            Value::I64(v) => Scalar::I64(*v),
            Value::F64(v) => Scalar::F64(*v),
            _ => return None,
        })
    }

    /// The length of [`Scalar::write`]'s bytes.
    fn len(&self) -> usize {
        match self {
            Scalar::String(bytes) => field_len(bytes.len()),
            Scalar::Bool(_) => 2,
            Scalar::I64(v) => 1 + prost::encoding::encoded_len_varint(*v as u64),
            Scalar::F64(_) => 9,
        }
    }

    /// `AnyValue`'s fields: string (1), bool (2), int (3), double (4).
    fn write(&self, b: &mut Vec<u8>) {
        match self {
            Scalar::String(bytes) => length_delimited(b, 1, bytes),
            Scalar::Bool(v) => {
                put_key(b, 2, WireType::Varint);
                b.push(u8::from(*v));
            }
            Scalar::I64(v) => {
                put_key(b, 3, WireType::Varint);
                put_varint(b, *v as u64);
            }
            Scalar::F64(v) => {
                put_key(b, 4, WireType::SixtyFourBit);
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// `ArrayValue`: its values (1), each an `AnyValue`.
fn array_values(b: &mut Vec<u8>, array: &Array) {
    for item in array_items(array) {
        message(b, 1, |b| any_value(b, &item));
    }
}

/// An array's items as values (arrays are rare: resource attributes only).
fn array_items(array: &Array) -> Box<dyn Iterator<Item = Value> + '_> {
    match array {
        Array::Bool(items) => Box::new(items.iter().map(|v| Value::Bool(*v))),
        Array::I64(items) => Box::new(items.iter().map(|v| Value::I64(*v))),
        Array::F64(items) => Box::new(items.iter().map(|v| Value::F64(*v))),
        Array::String(items) => Box::new(items.iter().map(|v: &StringValue| Value::String(v.clone()))),
        _ => Box::new(std::iter::empty()),
    }
}

// The wire format (protobuf's encoding guide): a key (field number and wire
// type), then a varint, 8 or 4 little-endian bytes, or a length and bytes.
// proto3 leaves fields at their default out, as these do.

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A length-delimited field whose content `write` appends. Its length is
/// known only once it is written: one byte is set aside for it, which is
/// enough for nearly every attribute and status, and the content moves
/// over when it needs more (a long path, a whole span batch). Writing each
/// message once costs less than measuring it first.
fn message(b: &mut Vec<u8>, tag: u32, write: impl FnOnce(&mut Vec<u8>)) {
    message_reserving(b, tag, 1, write);
}

/// [`message`], with `reserved` bytes set aside for the length (1 or 2).
fn message_reserving(b: &mut Vec<u8>, tag: u32, reserved: usize, write: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, b);
    let at = b.len();
    b.resize(at + reserved, 0);
    write(b);
    let len = b.len() - at - reserved;
    // A varint: 7 bits a byte, the lowest first, each but the last with its
    // high bit set.
    match (reserved, len) {
        (1, 0..0x80) => b[at] = len as u8,
        (2, 0x80..0x4000) => b[at..at + 2].copy_from_slice(&[len as u8 | 0x80, (len >> 7) as u8]),
        _ => {
            let mut prefix = Vec::with_capacity(10);
            encode_varint(len as u64, &mut prefix);
            b.splice(at..at + reserved, prefix);
        }
    }
}

/// A key whose field number is under 16: one byte, as `encode_key` would write it.
#[inline]
fn put_key(b: &mut Vec<u8>, tag: u32, wire_type: WireType) {
    debug_assert!(tag < 16, "a one-byte key");
    b.push((tag << 3) as u8 | wire_type as u8);
}

/// `encode_varint`, inlined: the lengths and values written here are small.
#[inline]
fn put_varint(b: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        b.push(value as u8 | 0x80);
        value >>= 7;
    }
    b.push(value as u8);
}

/// The bytes a length-delimited field of `len` bytes takes: a one-byte
/// key, the length, the content.
fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Bytes or a string as field `tag` (every such field here is numbered
/// under 16). Inlined: an attribute writes two of them.
#[inline]
fn length_delimited(b: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    put_key(b, tag, WireType::LengthDelimited);
    put_varint(b, bytes.len() as u64);
    b.extend_from_slice(bytes);
}

fn string_field(b: &mut Vec<u8>, tag: u32, s: &str) {
    bytes_field(b, tag, s.as_bytes());
}

fn bytes_field(b: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        length_delimited(b, tag, bytes);
    }
}

fn varint_field(b: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, b);
        encode_varint(value, b);
    }
}

/// A `fixed64` (the times): left out when 0, as proto3 leaves a default.
fn fixed64_field(b: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, b);
        b.extend_from_slice(&value.to_le_bytes());
    }
}

/// A `fixed32` (the flags, never 0 here: 0x100 is always set).
fn fixed32_field(b: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, b);
        b.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;

    fn context(trace: u128, span: u64, flags: TraceFlags, remote: bool, state: &str) -> SpanContext {
        let state = if state.is_empty() { TraceState::NONE } else { state.parse().unwrap() };
        SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, remote, state)
    }

    /// A request's span of `scope`, as the SDK hands it over (the export's tests use it too).
    pub(in crate::trace) fn span(name: &'static str, scope: &InstrumentationScope) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        SpanData {
            span_context: context(
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                TraceFlags::SAMPLED,
                false,
                "",
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: start + Duration::from_micros(1234),
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.path", "/api/data_structures".to_owned()),
                KeyValue::new("http.response.status_code", 200_i64),
                KeyValue::new("truedat_proxy.replayed", false),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// Every field and value kind the SDK can hand over, in spans of two scopes.
    fn batch() -> (Resource, Vec<SpanData>) {
        let resource = Resource::builder_empty()
            .with_service_name("reports-proxy")
            .with_schema_url(
                [
                    KeyValue::new("k8s.pod.name", "tool-7c9f"),
                    KeyValue::new("empty", ""),
                    KeyValue::new("ratio", 0.25),
                    KeyValue::new("negative", -3_i64),
                    KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
                    KeyValue::new("ports", Value::Array(Array::I64(vec![80, 443]))),
                    KeyValue::new("weights", Value::Array(Array::F64(vec![0.5]))),
                    KeyValue::new("names", Value::Array(Array::String(vec!["a".into(), "".into()]))),
                ],
                "https://opentelemetry.io/schemas/1.26.0",
            )
            .build();
        let ours = InstrumentationScope::builder("truedat-auth-proxy").with_version("0.1.0").build();
        let other = InstrumentationScope::builder("other")
            .with_schema_url("https://example.com/schema")
            .with_attributes([KeyValue::new("scope.attr", 1_i64)])
            .build();

        let plain = span("GET", &ours);
        let mut failed = span("GET", &ours);
        failed.span_kind = SpanKind::Client;
        failed.span_context = context(7, 8, TraceFlags::SAMPLED, false, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        failed.parent_span_id = SpanId::from(0x00f0_67aa_0ba9_02b7);
        failed.parent_span_is_remote = true;
        // Longer than 127 bytes: a length of two bytes.
        failed.attributes.push(KeyValue::new("url.path", format!("/api/{}", "x".repeat(200))));
        failed.status = Status::error(format!("the connection to Truedat broke {}", "!".repeat(150)));
        failed.dropped_attributes_count = 3;
        failed.events.events.push(Event::new("retry", failed.start_time, vec![KeyValue::new("attempt", 2_i64)], 1));
        failed.events.dropped_count = 2;
        let linked = context(9, 10, TraceFlags::NOT_SAMPLED, true, "a=b");
        failed.links.links.push(Link::new(linked, vec![KeyValue::new("x", "y")], 4));
        failed.links.dropped_count = 5;
        let mut ok = span("login", &other);
        ok.span_kind = SpanKind::Internal;
        ok.status = Status::Ok;
        ok.attributes.clear();
        ok.end_time = UNIX_EPOCH;
        let mut kinds = span("ping", &ours);
        kinds.span_kind = SpanKind::Producer;
        let mut consumer = span("ping", &other);
        consumer.span_kind = SpanKind::Consumer;
        // Over 16 KiB: a span whose length takes three bytes (a short one, such as
        // `ok`, takes one).
        let mut long = span("GET", &ours);
        long.attributes.push(KeyValue::new("url.path", format!("/api/{}", "y".repeat(20_000))));
        (resource, vec![plain, failed, ok, kinds, consumer, long])
    }

    #[test]
    fn what_is_written_decodes_to_exactly_what_the_official_conversion_builds() {
        let (resource, spans) = batch();
        // As threads write them: a new group wherever the scope changes.
        let mut written: Vec<Spans> = Vec::new();
        for span in &spans {
            match written.last_mut() {
                Some(group) if group.scope() == &span.instrumentation_scope => group.push(span),
                _ => {
                    let mut group = Spans::new(span.instrumentation_scope.clone(), 1);
                    group.push(span);
                    written.push(group);
                }
            }
        }
        // The first run in two parts, as when it fills one export and starts the next.
        let mut parts = vec![written[0].part(0..1), written[0].part(1..2)];
        parts.extend(written[1..].iter().map(|run| run.part(0..run.len())));
        let ours = ExportTraceServiceRequest::decode(&request(&Header::new(&resource), &parts)[..]).unwrap();
        let official = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &ResourceAttributesWithSchema::from(&resource)),
        };
        assert_eq!(ours, official);
        assert_eq!(ours.resource_spans[0].scope_spans.len(), 2);
        assert_eq!(ours.resource_spans[0].scope_spans[0].spans.len(), 4);
    }
}
