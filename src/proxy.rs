//! The forwarding handler: checks the request against the policy, injects the
//! bearer, streams the request to Truedat and the response back, retries
//! transient failures as [`retry`](crate::retry) decides, and replays the
//! request once after a 401 that killed the token.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::{Body, Incoming};
use tokio::sync::oneshot;

use crate::access::Exchange;
use crate::auth::liveness::Liveness;
use crate::auth::liveness::Session;
use crate::auth::{Auth, Credential};
use crate::body::{ProxyBody, Streamed, TruedatBody};
use crate::client_body::{BodyEnd, ClientBody};
use crate::config::Config;
use crate::error::ProxyError;
use crate::headers::{self, REQUEST_ID};
use crate::link::{Link, LinkError};
use crate::origin::Origin;
use crate::paths::{PathPolicy, Refusal};
use crate::replay::{self, Kept, Resend, UpstreamBody};
use crate::retry::{Decision, Failure, RetryPolicy, Try};
use crate::telemetry::{self, InFlight, MethodLabel};
use crate::trace::{self, RequestSpan, TrySpan};
use crate::upstream::{self, FailureKind, HttpClient};

/// How long to wait for hyper to hand back a try's body before sending it
/// again. It is handed back as soon as hyper drops it, normally at once.
const BODY_RETURN_WAIT: Duration = Duration::from_secs(5);

/// The forwarding service shared by every connection.
pub struct Proxy {
    auth: Arc<Auth>,
    /// Tells a dead token from a 401 about something else; shared by every
    /// thread, so a generation is checked once whichever thread saw the 401.
    liveness: Arc<Liveness>,
    client: HttpClient,
    origin: Origin,
    policy: Policy,
    /// Shared by every thread: the retry budget counts all requests.
    retry: Arc<RetryPolicy>,
    /// Until Truedat's response headers arrive.
    request_timeout: Duration,
    /// Longest silence inside a response body.
    body_idle_timeout: Duration,
    /// Requests being answered, for the drain report at shutdown; one
    /// count per thread, so that no cache line bounces between cores at
    /// every request.
    in_flight: Arc<AtomicUsize>,
    /// What a new client connection's [`Link`] dials with; it also knows
    /// whether Truedat speaks HTTP/2, when requests share the pool's
    /// multiplexed connection instead of a link each.
    connector: upstream::Connector,
    pool_idle_timeout: Duration,
    /// Spans of requests and tries; nothing when tracing is off.
    tracer: trace::Tracer,
}

/// What `[proxy]` allows, prepared once.
#[derive(Clone)]
struct Policy {
    methods: Vec<Method>,
    paths: PathPolicy,
    allow_browsers: bool,
    replay_limit: u64,
    max_head: u64,
}

/// The outcome of sending a request, retries included.
struct Sent {
    result: Result<Response<TruedatBody>, ProxyError>,
    /// Where the last try's body comes back (`None`: no body), for a replay.
    kept: Option<oneshot::Receiver<Kept>>,
    /// The token the last try carried: a 401 is about this one.
    credential: Credential,
}

/// What is sent with every try of one request.
struct Outgoing<'a> {
    parts: &'a Parts,
    /// How reading the client's body went, when there is one.
    body_end: Option<&'a BodyEnd>,
    declared_len: Option<u64>,
    arrived: Instant,
    /// The client connection's own connection to Truedat.
    link: &'a Link,
}

impl Proxy {
    /// A proxy to `config`'s origin through `upstream`, authenticating with
    /// `auth`, tracing with `tracer`. `config` must have passed `Config::validate`.
    pub fn new(
        auth: Arc<Auth>,
        liveness: Arc<Liveness>,
        upstream: &upstream::Clients,
        config: &Config,
        tracer: trace::Tracer,
    ) -> Proxy {
        let settings = &config.proxy;
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
        Proxy {
            auth,
            liveness,
            client: upstream.pool.clone(),
            origin: config.origin(),
            policy,
            retry: Arc::new(RetryPolicy::new(&config.retry)),
            request_timeout: config.upstream.request_timeout.0,
            body_idle_timeout: config.upstream.body_idle_timeout.0,
            in_flight: Arc::default(),
            connector: upstream.connector.clone(),
            pool_idle_timeout: config.upstream.pool_idle_timeout.0,
            tracer,
        }
    }

    /// The same forwarding service for another thread, reaching Truedat
    /// through `upstream` (that thread's own clients) and counting its own
    /// requests in flight; the token, the liveness checks, the retry budget
    /// and the tracer are shared.
    pub fn for_thread(&self, upstream: &upstream::Clients) -> Proxy {
        Proxy {
            auth: self.auth.clone(),
            liveness: self.liveness.clone(),
            client: upstream.pool.clone(),
            origin: self.origin.clone(),
            policy: self.policy.clone(),
            retry: self.retry.clone(),
            request_timeout: self.request_timeout,
            body_idle_timeout: self.body_idle_timeout,
            in_flight: Arc::default(),
            connector: upstream.connector.clone(),
            pool_idle_timeout: self.pool_idle_timeout,
            tracer: self.tracer.clone(),
        }
    }

    /// The upstream connection of a new client connection (dialled on its
    /// first request).
    pub fn link(&self) -> Link {
        Link::new(self.connector.clone(), self.origin.base(), self.pool_idle_timeout)
    }

    /// Answers one client request; every failure becomes a JSON error.
    ///
    /// The request is taken apart before the future is built, and the
    /// steps below borrow its head: the arguments of an async fn stay in
    /// its future for its whole life, so a head passed by value at every
    /// step made each in-flight request's future larger (4.4 KB now, from
    /// 5.9 KB).
    pub fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        link: Arc<Link>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        let in_flight = InFlight::start(&self.in_flight);
        let request_id = request_id(request.headers());
        let span = self.tracer.request(request.method(), request.uri(), request.headers());
        let mut exchange =
            Exchange::start(MethodLabel::of(request.method()), request.uri().clone(), request_id.clone(), span);
        let (mut parts, body) = request.into_parts();
        // From here on, a body dropped before its end is drained, not cut.
        let (body, body_end) = match body.is_end_stream() {
            true => (None, None),
            false => {
                let (body, end) = ClientBody::new(body, expects_continue(&parts.headers));
                (Some(body), Some(end))
            }
        };
        async move {
            let forwarded = self.forward(&mut parts, body, body_end.as_ref(), &request_id, &link, &mut exchange).await;
            let early = body_end.as_ref().is_some_and(|end| !end.reached());
            let mut response = match forwarded {
                Ok(mut response) => {
                    exchange.upstream_status = Some(response.status());
                    headers::to_client(response.headers_mut());
                    if early {
                        response.body_mut().forbid_reuse();
                    }
                    response.map(|body| Either::Left(Streamed::new(body, self.body_idle_timeout, in_flight)))
                }
                Err(error) => {
                    exchange.failed(&error);
                    error.into_response()
                }
            };
            response.headers_mut().insert(REQUEST_ID.clone(), request_id);
            if early {
                // The rest of the body is being discarded (SPEC §4, Early
                // answers); the connection closes once that is done.
                response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            exchange.finish(response.status());
            Ok(response)
        }
    }

    async fn forward(
        &self,
        parts: &mut Parts,
        body: Option<ClientBody>,
        body_end: Option<&BodyEnd>,
        request_id: &HeaderValue,
        link: &Link,
        exchange: &mut Exchange,
    ) -> Result<Response<TruedatBody>, ProxyError> {
        self.policy.check(parts)?;
        self.retry.deposit();
        let credential = match self.auth.cell().credential() {
            Some(credential) => credential,
            None => {
                let _waiting = exchange.trace.as_ref().map(|span| span.waiting("wait for token"));
                self.auth.credential().await.ok_or_else(|| self.no_token())?
            }
        };
        let target = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri =
            self.origin.join(&target).map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded"))?;
        // Header hygiene once for every try (each try then puts its own
        // bearer in). Hop-by-hop fields go before the request id is set: a
        // client that names `X-Request-Id` in `Connection` made its own one
        // hop-by-hop.
        headers::to_upstream(&mut parts.headers, credential.bearer.clone());
        parts.headers.insert(REQUEST_ID.clone(), request_id.clone());
        if let Some(span) = &exchange.trace {
            span.make_room(&mut parts.headers);
        }
        let declared_len = content_length(&parts.headers);
        let outgoing = Outgoing { parts, body_end, declared_len, arrived: exchange.started(), link };
        let body = body.map(Resend::new);
        let sent = self.send_with_retries(&outgoing, credential, body, exchange).await;
        let response = sent.result?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        exchange.upstream_status = Some(response.status());
        // Boxed: this rare path holds a second `send_with_retries`, which
        // inline would double the future that hyper moves (copies) into
        // place for every request.
        Box::pin(self.after_unauthorized(response, &outgoing, &sent.credential, sent.kept, exchange)).await
    }

    /// Sends the request, and again while a try fails in a way SPEC §4
    /// calls transient and the retry policy allows it. Each try carries the
    /// token current when it is sent, never one past its send deadline.
    async fn send_with_retries(
        &self,
        outgoing: &Outgoing<'_>,
        mut credential: Credential,
        mut body: Option<Resend>,
        exchange: &mut Exchange,
    ) -> Sent {
        let mut retries = 0;
        let mut retry_reason = None;
        loop {
            let (upstream_body, kept) = match body.take() {
                None => (UpstreamBody::Empty, None),
                Some(body) => {
                    let (tape, kept) = replay::tape(body, self.policy.replay_limit);
                    (UpstreamBody::Tape(Box::new(tape)), Some(kept))
                }
            };
            let attempt = trace::Attempt { resends: exchange.attempts, retry_reason, replay: exchange.replayed };
            exchange.attempts += 1;
            let mut parts = clone_parts(outgoing.parts);
            let span = exchange.trace.as_ref().map(|span| span.attempt(&parts.method, attempt));
            if let Some(span) = &span {
                span.inject(&mut parts.headers);
            }
            let request = try_request(parts, upstream_body, &credential);
            let mut result = self.send(request, outgoing).await;
            if let Some(span) = span {
                end_try(span, &result);
            }
            let head = match &result {
                Ok(response) if self.retry.is_transient(response.status()) => Some(response.headers().clone()),
                _ => None,
            };
            let Some(failure) = transient(&result, head.as_ref()) else {
                return Sent { result, kept, credential };
            };
            let mut attempt = Try {
                method: &outgoing.parts.method,
                resendable: true,
                failure,
                elapsed: outgoing.arrived.elapsed(),
                retries,
            };
            if !self.retry.could_retry(&attempt) {
                return Sent { result, kept, credential };
            }
            let next = match kept {
                None => Some(None),
                Some(kept) => self.take_back(kept, outgoing.declared_len, result.as_mut().ok()).await.map(Some),
            };
            attempt.resendable = next.is_some();
            let Decision::Retry { after, reason } = self.retry.decide(&attempt, rand::random()) else {
                return Sent { result, kept: None, credential };
            };
            tracing::debug!(
                reason = reason.label(),
                retry_in_ms = after.as_millis() as u64,
                "retrying a transient failure"
            );
            telemetry::record_retry(reason.label());
            retry_reason = Some(reason.label());
            // A discarded response is dropped unread: hyper then closes its
            // connection instead of pooling one in the middle of a body.
            drop(result);
            tokio::time::sleep(after).await;
            credential = match self.auth.credential().await {
                Some(current) => current,
                None => return Sent { result: Err(self.no_token()), kept: None, credential },
            };
            body = next.flatten();
            retries += 1;
        }
    }

    /// The body a finished try kept, ready to be sent again, if it can be.
    /// While it comes back, `answered`'s connection (the try's answer, still
    /// held) is driven: it may still be sending the rest of the body.
    async fn take_back(
        &self,
        kept: oneshot::Receiver<Kept>,
        declared_len: Option<u64>,
        mut answered: Option<&mut Response<TruedatBody>>,
    ) -> Option<Resend> {
        let mut kept = std::pin::pin!(kept);
        let back = std::future::poll_fn(|cx| {
            if let Poll::Ready(kept) = kept.as_mut().poll(cx) {
                return Poll::Ready(kept);
            }
            if let Some(response) = answered.as_deref_mut() {
                response.body_mut().drive(cx);
            }
            Poll::Pending
        });
        match tokio::time::timeout(BODY_RETURN_WAIT, back).await {
            Ok(Ok(kept)) => kept.into_resend(declared_len, self.policy.replay_limit),
            _ => None,
        }
    }

    /// Truedat said 401 to `credential`. If the token is dead (SPEC §3.4),
    /// log in again (once, however many requests saw it) and replay this
    /// request if its body was kept; if it lives, the 401 was about
    /// something else and goes to the client as it is.
    async fn after_unauthorized(
        &self,
        mut response: Response<TruedatBody>,
        outgoing: &Outgoing<'_>,
        credential: &Credential,
        kept: Option<oneshot::Receiver<Kept>>,
        exchange: &mut Exchange,
    ) -> Result<Response<TruedatBody>, ProxyError> {
        let generation = credential.generation;
        let parent = exchange.trace.as_ref().map(RequestSpan::parent).unwrap_or_default();
        if !self.auth.known_dead(generation) {
            match self.liveness.check(credential, &parent).await {
                Session::Alive => return Ok(response),
                Session::Dead => self.auth.prove_dead(generation),
                Session::Unknown => {}
            }
        }
        let body = match kept {
            None => Some(None),
            Some(kept) => self.take_back(kept, outgoing.declared_len, Some(&mut response)).await.map(Some),
        };
        self.auth.report_unauthorized(generation, parent);
        let Some(body) = body else {
            // Too large to replay: the client gets Truedat's 401; the login
            // still happens, for the next requests.
            return Ok(response);
        };
        let waiting = exchange.trace.as_ref().map(|span| span.waiting("wait for token"));
        let successor = self.auth.successor(generation).await.ok_or_else(|| self.no_token())?;
        drop(waiting);
        drop(response);
        exchange.replayed = true;
        let replayed = self.send_with_retries(outgoing, successor, body, exchange).await.result;
        telemetry::record_replay(replayed.as_ref().is_ok_and(|r| r.status() != StatusCode::UNAUTHORIZED));
        replayed
    }

    /// One attempt: bearer in, bounded wait for the response headers.
    async fn send(
        &self,
        request: Request<UpstreamBody>,
        outgoing: &Outgoing<'_>,
    ) -> Result<Response<TruedatBody>, ProxyError> {
        match tokio::time::timeout(self.request_timeout, self.exchange(request, outgoing.link)).await {
            Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                // The proxy never forwards `Upgrade`, so nothing asked for a
                // switch; the connection is not reused (hyper ends it).
                telemetry::record_upstream_error(FailureKind::Protocol.label());
                tracing::warn!("Truedat answered 101 Switching Protocols to a request that asked for no upgrade");
                Err(ProxyError::Malformed(
                    "bad answer from Truedat: 101 Switching Protocols, but no upgrade was asked for",
                ))
            }
            Ok(Ok(response)) => Ok(response),
            Ok(Err(failure)) => Err(self.failed(failure, outgoing.body_end)),
            Err(_) => {
                telemetry::record_upstream_error("timeout");
                tracing::warn!(timeout_ms = self.request_timeout.as_millis() as u64, "Truedat did not answer in time");
                Err(ProxyError::Timeout)
            }
        }
    }

    /// The request on the client connection's link; through the shared pool
    /// once Truedat has shown it speaks HTTP/2.
    async fn exchange(&self, request: Request<UpstreamBody>, link: &Link) -> Result<Response<TruedatBody>, Sending> {
        let request = if self.connector.speaks_http2() {
            request
        } else {
            match link.send(request).await {
                Ok(response) => return Ok(response.map(TruedatBody::Linked)),
                // Truedat switched to HTTP/2 (the connector now knows).
                Err(LinkError::Http2(request)) => *request,
                Err(LinkError::Connect(error)) => return Err(Sending::Connect(error)),
                Err(LinkError::Exchange(error)) => return Err(Sending::Exchange(error.into())),
            }
        };
        match self.client.request(request).await {
            Ok(response) => Ok(response.map(TruedatBody::Pooled)),
            Err(error) if error.is_connect() => Err(Sending::Connect(error.into())),
            Err(error) => Err(Sending::Exchange(error.into())),
        }
    }

    /// A failed exchange as the client will see it, counted and logged
    /// unless the client itself went away (its body broke off).
    fn failed(&self, failure: Sending, body_end: Option<&BodyEnd>) -> ProxyError {
        let (error, kind) = match &failure {
            Sending::Connect(error) => (error.as_ref(), upstream::classify_connect(error.as_ref())),
            Sending::Exchange(error) => (error.as_ref(), upstream::classify_exchange(error.as_ref())),
        };
        if upstream::client_went_away(error) || body_end.is_some_and(BodyEnd::failed) {
            tracing::debug!(error = %upstream::root_cause(error), "the client went away in the middle of its upload");
            return ProxyError::ClientClosed;
        }
        telemetry::record_upstream_error(kind.label());
        tracing::warn!(kind = kind.label(), error = %upstream::root_cause(error), "request to Truedat failed");
        match failure {
            Sending::Connect(_) => ProxyError::Unreachable(kind),
            Sending::Exchange(_) => ProxyError::Broken(kind),
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
    fn check(&self, request: &Parts) -> Result<(), ProxyError> {
        let path = self.paths.check(request.uri.path());
        if path == Err(Refusal::Ambiguous) {
            return Err(ProxyError::BadRequest(
                "ambiguous path: dot segments and encoded slashes or backslashes are read differently by \
                 Truedat's router and its ingress, so they are not forwarded",
            ));
        }
        check_method(&request.method)?;
        if !self.methods.is_empty() && !self.methods.contains(&request.method) {
            return Err(ProxyError::MethodNotAllowed("method not allowed by proxy.allow_methods"));
        }
        if head_size(request) > self.max_head {
            return Err(ProxyError::HeadTooLarge);
        }
        check_transfer_coding(&request.headers)?;
        if !self.allow_browsers && headers::is_from_browser(&request.headers) {
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

/// How an exchange with Truedat failed.
enum Sending {
    /// Before any byte of the request left (TCP, TLS, egress proxy).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// On an established connection.
    Exchange(Box<dyn std::error::Error + Send + Sync>),
}

/// What about a try's outcome could be transient (SPEC §4), `None` when it
/// is final: a success, a 401 (the replay's business), the client gone.
fn transient<'a>(
    result: &Result<Response<TruedatBody>, ProxyError>,
    head: Option<&'a HeaderMap>,
) -> Option<Failure<'a>> {
    match result {
        Ok(response) => head.map(|headers| Failure::Status(response.status(), headers)),
        // Raised by the connector: nothing of the request reached Truedat.
        Err(ProxyError::Unreachable(_)) => Some(Failure::Connect),
        // On an established connection, TLS errors included: Truedat may
        // have read the whole request already.
        Err(ProxyError::Broken(_)) => Some(Failure::Reset),
        Err(ProxyError::Timeout) => Some(Failure::Timeout),
        Err(_) => None,
    }
}

/// Ends a try's span with Truedat's answer or the failure.
fn end_try(span: TrySpan, result: &Result<Response<TruedatBody>, ProxyError>) {
    match result {
        Ok(response) => span.answered(response.status(), response.version()),
        Err(error) => {
            let kind = match error {
                ProxyError::Unreachable(kind) | ProxyError::Broken(kind) => kind.label(),
                ProxyError::Timeout => "timeout",
                ProxyError::Malformed(_) => "protocol",
                ProxyError::ClientClosed => "client_closed",
                _ => "proxy",
            };
            span.failed(kind, error.to_string());
        }
    }
}

/// The size of the request head as received (request line and fields).
fn head_size(request: &Parts) -> u64 {
    let uri = &request.uri;
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + uri.scheme_str().map_or(0, str::len) + 3);
    let line = request.method.as_str().len() + target + 12;
    let fields: usize = request.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (line + fields) as u64
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Whether the client waits for `100 Continue` before it sends its body.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The client's `X-Request-Id`, or a new one: also when the client named it
/// in `Connection`, which makes it hop-by-hop (SPEC §4).
fn request_id(headers: &HeaderMap) -> HeaderValue {
    let id = headers.get(&REQUEST_ID).filter(|v| !v.is_empty() && v.len() <= 200);
    if let Some(id) = id.filter(|_| !headers::names_in_connection(headers).any(|name| name == REQUEST_ID)) {
        return id.clone();
    }
    let id = format!("{:032x}", rand::random::<u128>());
    HeaderValue::try_from(id).expect("hex digits are a valid header value")
}

/// One try's request, from a head already prepared by `headers::to_upstream`:
/// the bearer current for this try in.
fn try_request(mut parts: Parts, body: UpstreamBody, credential: &Credential) -> Request<UpstreamBody> {
    parts.headers.insert(AUTHORIZATION, credential.bearer.clone());
    if !body.is_end_stream() && body.size_hint().exact().is_none() {
        // A body of unknown length (the client sent it chunked): hyper's
        // client would frame it as empty on a GET or HEAD unless told.
        parts.headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    Request::from_parts(parts, body)
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
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Request-Id"));
        let generated = request_id(&h);
        assert_ne!(generated, "abc-123", "named in Connection, it is hop-by-hop: absent");
        assert_eq!(generated.len(), 32);
    }
}
