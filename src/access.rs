//! One access-log line and one `truedat_proxy_requests_total` count per
//! request, written exactly once (SPEC §8).
//!
//! hyper drops a request's future when its client disconnects before the
//! response head is ready. The slow requests an operator most wants to see
//! would then leave no trace, so the record is a guard: written when the
//! response head is ready, or from `Drop` with status 499 ("client closed
//! the request", as nginx writes it) when the client went away first.

use std::time::Instant;

use http::{HeaderValue, StatusCode, Uri};

use crate::error::{CLIENT_CLOSED, ProxyError};
use crate::telemetry::{self, MethodLabel};
use crate::trace::{Outcome, RequestSpan};

/// What is known of one request so far.
pub struct Exchange {
    method: MethodLabel,
    /// A cheap clone (shared bytes); only the path is logged, never the
    /// query string, which may carry data.
    uri: Uri,
    request_id: HeaderValue,
    started: Instant,
    /// The status Truedat answered, if it answered.
    pub upstream_status: Option<StatusCode>,
    /// Replayed after a 401.
    pub replayed: bool,
    /// How many times the request was sent to Truedat.
    pub attempts: u32,
    /// The request's server span; `None` when tracing is off.
    pub trace: Option<RequestSpan>,
    /// The proxy's own error, kept only for a traced request's span.
    error: Option<String>,
    written: bool,
}

impl Exchange {
    /// Starts the record of a request received now, traced by `trace`.
    pub fn start(method: MethodLabel, uri: Uri, request_id: HeaderValue, trace: Option<RequestSpan>) -> Exchange {
        Exchange {
            method,
            uri,
            request_id,
            started: Instant::now(),
            upstream_status: None,
            replayed: false,
            attempts: 0,
            trace,
            error: None,
            written: false,
        }
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The proxy answers itself with `error`: a traced request's span says why.
    pub fn failed(&mut self, error: &ProxyError) {
        if self.trace.is_some() {
            self.error = Some(error.to_string());
        }
    }

    /// The response head with `status` is ready for the client.
    pub fn finish(mut self, status: StatusCode) {
        self.write(status);
    }

    fn write(&mut self, status: StatusCode) {
        self.written = true;
        let duration = self.started.elapsed();
        telemetry::record_request(self.method, status, duration);
        let ids = self.trace.as_ref().and_then(RequestSpan::ids);
        tracing::info!(
            target: "access",
            method = self.method.as_str(),
            path = self.uri.path(),
            status = status.as_u16(),
            duration_ms = duration.as_secs_f64() * 1000.0,
            upstream_status = self.upstream_status.map(|s| s.as_u16()),
            request_id = self.request_id.to_str().unwrap_or_default(),
            replayed = self.replayed,
            attempts = self.attempts,
            trace_id = ids.map(|(trace, _)| tracing::field::display(trace)),
            span_id = ids.map(|(_, span)| tracing::field::display(span)),
            "request"
        );
        if let Some(span) = self.trace.take() {
            let (attempts, replayed, error) = (self.attempts, self.replayed, self.error.as_deref());
            span.finish(Outcome { status, attempts, replayed, error });
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.written {
            self.write(CLIENT_CLOSED);
        }
    }
}
