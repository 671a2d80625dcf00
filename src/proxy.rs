//! The forwarding handler: checks the request against the policy, injects the
//! bearer, streams the request to Truedat and the response back, and replays
//! the request once after a 401.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{CONTENT_LENGTH, ORIGIN, TRANSFER_ENCODING};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::{Body, Incoming};
use tokio::sync::oneshot;

use crate::access::Exchange;
use crate::auth::liveness::Liveness;
use crate::auth::{Auth, Credential};
use crate::body::{ProxyBody, Streamed};
use crate::config::ProxySettings;
use crate::error::ProxyError;
use crate::headers::{self, REQUEST_ID};
use crate::origin::Origin;
use crate::paths::{PathPolicy, Refusal};
use crate::replay::{self, Kept, UpstreamBody};
use crate::telemetry::{self, InFlight, MethodLabel};
use crate::upstream::{self, FailureKind, HttpClient};

/// How long to wait, after a 401, for hyper to hand back the first attempt's
/// body. It is handed back as soon as hyper drops it, normally at once.
const BODY_RETURN_WAIT: Duration = Duration::from_secs(5);

/// The forwarding service shared by every connection.
pub struct Proxy {
    auth: Arc<Auth>,
    /// Tells a dead token from a 401 about something else.
    liveness: Liveness,
    client: HttpClient,
    origin: Origin,
    policy: Policy,
    request_timeout: Duration,
    /// Requests being answered, for the drain report at shutdown.
    in_flight: Arc<AtomicUsize>,
}

/// What `[proxy]` allows, prepared once.
struct Policy {
    methods: Vec<Method>,
    paths: PathPolicy,
    allow_browsers: bool,
    replay_limit: u64,
    max_head: u64,
}

impl Proxy {
    /// A proxy to `origin` through `client`, authenticating with `auth`.
    pub fn new(
        auth: Arc<Auth>,
        liveness: Liveness,
        client: HttpClient,
        origin: Origin,
        settings: &ProxySettings,
        request_timeout: Duration,
    ) -> Proxy {
        let methods = settings
            .allow_methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .collect();
        let policy = Policy {
            methods,
            paths: PathPolicy::new(&settings.allow_paths, settings.allow_session_paths),
            allow_browsers: settings.allow_browsers,
            replay_limit: settings.replay_body_limit.0,
            max_head: settings.max_request_header_bytes.0,
        };
        Proxy { auth, liveness, client, origin, policy, request_timeout, in_flight: Arc::default() }
    }

    /// Answers one client request; every failure becomes a JSON error.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let in_flight = InFlight::start(&self.in_flight);
        let request_id = request_id(request.headers());
        let mut exchange =
            Exchange::start(MethodLabel::of(request.method()), request.uri().clone(), request_id.clone());
        let mut response = match self.forward(request, &request_id, &mut exchange).await {
            Ok(mut response) => {
                exchange.upstream_status = Some(response.status());
                headers::to_client(response.headers_mut());
                response.map(|body| Either::Left(Streamed::new(body, self.request_timeout, in_flight)))
            }
            Err(error) => error.into_response(),
        };
        response.headers_mut().insert(REQUEST_ID.clone(), request_id);
        exchange.finish(response.status());
        Ok(response)
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        request_id: &HeaderValue,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.policy.check(&request)?;
        let credential = self.auth.credential().await.ok_or_else(|| self.no_token())?;
        let (mut parts, body) = request.into_parts();
        let target = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri =
            self.origin.join(&target).map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded"))?;
        parts.headers.insert(REQUEST_ID.clone(), request_id.clone());
        let declared_len = content_length(&parts.headers);
        let (body, kept) = self.first_body(body);
        let replay_parts = clone_parts(&parts);
        exchange.attempts += 1;
        let response = match self.send(parts, body, &credential).await {
            // A pooled connection Truedat had already closed: RFC 9110 §9.2.2
            // lets an idempotent request without a body be sent again.
            Err(ProxyError::Upstream(FailureKind::Protocol))
                if kept.is_none() && is_idempotent(&replay_parts.method) =>
            {
                tracing::debug!("connection to Truedat broke before an answer; retrying the idempotent request once");
                exchange.attempts += 1;
                self.send(clone_parts(&replay_parts), UpstreamBody::Empty, &credential).await?
            }
            result => result?,
        };
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        exchange.upstream_status = Some(response.status());
        self.after_unauthorized(response, credential, replay_parts, kept, declared_len, exchange).await
    }

    /// Truedat said 401. If the token is dead (SPEC §3.4), log in again
    /// (once, however many requests saw it) and replay this request if its
    /// body was kept; if it lives, the 401 was about something else and goes
    /// to the client as it is.
    async fn after_unauthorized(
        &self,
        response: Response<Incoming>,
        credential: Credential,
        parts: Parts,
        kept: Option<oneshot::Receiver<Kept>>,
        declared_len: Option<u64>,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, ProxyError> {
        if !self.auth.known_dead(credential.generation) && self.liveness.is_alive(&credential).await {
            return Ok(response);
        }
        let body = match kept {
            None => Some(UpstreamBody::Empty),
            Some(kept) => match tokio::time::timeout(BODY_RETURN_WAIT, kept).await {
                Ok(Ok(kept)) => kept.into_replay(declared_len, self.policy.replay_limit).map(UpstreamBody::Replay),
                _ => None,
            },
        };
        self.auth.report_unauthorized(credential.generation);
        let Some(body) = body else {
            // Too large to replay: the client gets Truedat's 401; the login
            // still happens, for the next requests.
            return Ok(response);
        };
        let credential = self.auth.successor(credential.generation).await.ok_or_else(|| self.no_token())?;
        drop(response);
        exchange.replayed = true;
        exchange.attempts += 1;
        let replayed = self.send(parts, body, &credential).await;
        telemetry::record_replay(replayed.as_ref().is_ok_and(|r| r.status() != StatusCode::UNAUTHORIZED));
        replayed
    }

    /// The client's body for the first attempt, and where its kept copy will
    /// come back (`None`: no body, nothing to keep).
    fn first_body(&self, body: Incoming) -> (UpstreamBody, Option<oneshot::Receiver<Kept>>) {
        if body.is_end_stream() {
            return (UpstreamBody::Empty, None);
        }
        let (tape, kept) = replay::tape(body, self.policy.replay_limit);
        (UpstreamBody::Tape(tape), Some(kept))
    }

    /// One attempt: bearer in, bounded wait for the response headers.
    async fn send(
        &self,
        mut parts: Parts,
        body: UpstreamBody,
        credential: &Credential,
    ) -> Result<Response<Incoming>, ProxyError> {
        headers::to_upstream(&mut parts.headers, credential.bearer.clone());
        if !body.is_end_stream() && body.size_hint().exact().is_none() {
            // A body of unknown length (the client sent it chunked): hyper's
            // client would frame it as empty on a GET or HEAD unless told.
            parts.headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        let request = Request::from_parts(parts, body);
        match tokio::time::timeout(self.request_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if upstream::client_went_away(&error) => {
                tracing::debug!(error = %upstream::root_cause(&error), "the client went away in the middle of its upload");
                Err(ProxyError::ClientClosed)
            }
            Ok(Err(error)) => {
                let kind = upstream::classify(&error);
                telemetry::record_upstream_error(kind.label());
                tracing::warn!(kind = kind.label(), error = %upstream::root_cause(&error), "request to Truedat failed");
                Err(ProxyError::Upstream(kind))
            }
            Err(_) => {
                telemetry::record_upstream_error("timeout");
                tracing::warn!(timeout_ms = self.request_timeout.as_millis() as u64, "Truedat did not answer in time");
                Err(ProxyError::Timeout)
            }
        }
    }

    /// Requests being answered right now, response bodies still streaming included.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn no_token(&self) -> ProxyError {
        ProxyError::NoToken(self.auth.readiness().err().unwrap_or("token expired"))
    }
}

impl Policy {
    /// SPEC §4–§5: what is refused before anything is sent.
    fn check(&self, request: &Request<Incoming>) -> Result<(), ProxyError> {
        let path = self.paths.check(request.uri().path());
        if path == Err(Refusal::Ambiguous) {
            return Err(ProxyError::BadRequest(
                "ambiguous path: dot segments and encoded slashes or backslashes are read differently by \
                 Truedat's router and its ingress, so they are not forwarded",
            ));
        }
        check_method(request.method())?;
        if !self.methods.is_empty() && !self.methods.contains(request.method()) {
            return Err(ProxyError::MethodNotAllowed("method not allowed by proxy.allow_methods"));
        }
        if head_size(request) > self.max_head {
            return Err(ProxyError::HeadTooLarge);
        }
        check_transfer_coding(request.headers())?;
        if !self.allow_browsers && is_from_browser(request.headers()) {
            return Err(ProxyError::Forbidden(
                "requests from web browsers are refused (proxy.allow_browsers): a web page must not act as the \
                 service user",
            ));
        }
        match path {
            Ok(()) | Err(Refusal::Ambiguous) => Ok(()),
            Err(Refusal::Sessions) => Err(ProxyError::Forbidden(
                "session routes are not forwarded (proxy.allow_session_paths): the proxy manages its own session",
            )),
            Err(Refusal::NotAllowed) => Err(ProxyError::Forbidden("path not allowed by proxy.allow_paths")),
        }
    }
}

/// CONNECT would tunnel elsewhere with the proxy's help; a server that
/// implements TRACE (or IIS's TRACK) echoes the request back, bearer included.
fn check_method(method: &Method) -> Result<(), ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(
            "CONNECT is not supported: this proxy only forwards requests to Truedat",
        ));
    }
    if method == Method::TRACE || method.as_str() == "TRACK" {
        return Err(ProxyError::MethodNotAllowed(
            "TRACE and TRACK are not forwarded: Truedat would echo the proxy's credentials back",
        ));
    }
    Ok(())
}

/// Only `chunked` is forwarded (SPEC §4): the proxy cannot re-frame a body
/// in another coding it does not implement (RFC 9112 §6.1 allows a 501).
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), ProxyError> {
    let other = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    if other {
        return Err(ProxyError::NotImplemented("only the chunked transfer coding is supported on requests"));
    }
    Ok(())
}

/// Browsers send `Origin` on cross-site and non-GET requests and
/// `Sec-Fetch-*` on every request (Fetch Metadata); tools send neither.
fn is_from_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(ORIGIN) || headers.keys().any(|name| name.as_str().starts_with("sec-fetch-"))
}

/// RFC 9110 §9.2.2: methods whose repetition has the effect of one request.
fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

/// The size of the request head as received (request line and fields).
fn head_size<B>(request: &Request<B>) -> u64 {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + uri.scheme_str().map_or(0, str::len) + 3);
    let line = request.method().as_str().len() + target + 12;
    let fields: usize = request.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (line + fields) as u64
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The client's `X-Request-Id`, or a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&REQUEST_ID).filter(|v| !v.is_empty() && v.len() <= 200) {
        return id.clone();
    }
    let id = format!("{:032x}", rand::random::<u128>());
    HeaderValue::try_from(id).expect("hex digits are a valid header value")
}

/// A copy of the request head, for the replay.
fn clone_parts(parts: &Parts) -> Parts {
    let mut builder = Request::builder().method(parts.method.clone()).uri(parts.uri.clone()).version(parts.version);
    if let Some(headers) = builder.headers_mut() {
        *headers = parts.headers.clone();
    }
    builder.body(()).expect("parts taken from a valid request").into_parts().0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_or_generated() {
        let mut h = HeaderMap::new();
        let generated = request_id(&h);
        assert_eq!(generated.len(), 32);
        assert_ne!(generated, request_id(&h));
        h.insert(&REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
    }
}
