//! The data services (td-dd and the like): Guardian's bearer checks first, then routes
//! that let tests provoke each behaviour a proxy must pass through untouched
//! (permission errors, slowness, large bodies, redirects, cookies, hop-by-hop headers).

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{HeaderName, LOCATION};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;

use super::auth::bearer_token;
use super::body::{self, BodySummary, Reply};
use super::conn::ConnHandle;
use super::faults::Verdict;
use super::sessions::{ACCESS_AUDIENCE, ISSUER};
use super::state::State;
use super::{RecordedRequest, now_secs, query};

/// Answered by `/api/cookies`: a refresh cookie that must never reach the proxy's clients,
/// next to one that must.
const COOKIE_HEADERS: &[(&str, &str)] =
    &[("set-cookie", "_td_refresh=leaked; path=/; HttpOnly"), ("set-cookie", "other=1; path=/")];

/// Answered by `/api/hop`: hop-by-hop headers (RFC 9110 §7.6.1) the proxy must drop,
/// and one end-to-end header it must keep.
const HOP_HEADERS: &[(&str, &str)] =
    &[("connection", "x-custom-hop"), ("x-custom-hop", "1"), ("keep-alive", "timeout=5"), ("x-end-to-end", "1")];

/// Any `/api/` route that td-auth does not own. The body is read (hashed, kept only if
/// small) and the request recorded before authentication, so tests also see refused ones;
/// then a [`DataFault`](super::DataFault), if one is set, has its way.
pub(super) async fn handle(state: &State, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let body = match state.early.answer(&parts, body) {
        Ok(reply) => {
            state.record_data(RecordedRequest::new(&parts, bytes::Bytes::new()));
            return reply;
        }
        Err(body) => body,
    };
    if let Some(reply) = state.outages.early() {
        state.record_data(RecordedRequest::new(&parts, bytes::Bytes::new()));
        return reply;
    }
    let summary = body::consume(body).await;
    let recorded_body = summary.kept.clone().unwrap_or_default();
    state.record_data(RecordedRequest::new(&parts, recorded_body));
    if !summary.complete {
        return bad_request();
    }
    if let Some(reply) = state.outages.apply(parts.extensions.get::<ConnHandle>()).await {
        return reply;
    }
    if let Verdict::Answer(reply) = state.faults.apply(&parts.headers, parts.extensions.get::<ConnHandle>()).await {
        return reply;
    }
    if let Err(message) = authenticate(state, &parts.headers, now_secs()) {
        return body::auth_error(message);
    }
    state.count_authenticated();
    route(&parts, &summary).await
}

/// Guardian's pipeline in Truedat's services; the error is the 401 `message`.
fn authenticate(state: &State, headers: &HeaderMap, now: u64) -> Result<(), &'static str> {
    let token = bearer_token(headers).ok_or("unauthenticated")?;
    let claims = state.sessions.verify(token, now).map_err(|_| "invalid_token")?;
    if claims.aud != ACCESS_AUDIENCE || claims.iss != ISSUER {
        return Err("unauthenticated");
    }
    if !state.sessions.access_alive(&claims.jti, now) {
        return Err("unauthorized");
    }
    Ok(())
}

async fn route(parts: &Parts, summary: &BodySummary) -> Reply {
    let query = parts.uri.query();
    match parts.uri.path() {
        "/api/forbidden" => body::error_detail(StatusCode::FORBIDDEN, "Invalid authorization"),
        // A 401 that is not about the bearer (which Guardian accepted above).
        "/api/not_yours" => body::error_detail(StatusCode::UNAUTHORIZED, "Not yours"),
        "/api/slow" => slow(parts, summary).await,
        "/api/download" => download(query),
        "/api/upload" => {
            body::json(StatusCode::OK, &serde_json::json!({ "bytes": summary.len, "sha256": summary.sha256 }))
        }
        "/api/redirect" => redirect(query),
        "/api/cookies" => with_headers(echo(parts, summary), COOKIE_HEADERS),
        "/api/hop" => with_headers(echo(parts, summary), HOP_HEADERS),
        _ => echo(parts, summary),
    }
}

/// `?ms=N`: answers after N milliseconds, to exercise timeouts and draining.
async fn slow(parts: &Parts, summary: &BodySummary) -> Reply {
    let Some(ms) = number_param(parts.uri.query(), "ms") else {
        return bad_request();
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    echo(parts, summary)
}

/// `?bytes=N`: N bytes of [`body::pattern_byte`], generated as they are sent.
fn download(query: Option<&str>) -> Reply {
    let Some(len) = number_param(query, "bytes") else {
        return bad_request();
    };
    let mut reply = http::Response::new(body::pattern_body(len));
    let headers = reply.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    reply
}

/// `?to=URL`: a 302 to the decoded URL, which the proxy must return, not follow.
fn redirect(query: Option<&str>) -> Reply {
    let location = query::param(query, "to").and_then(|to| HeaderValue::try_from(to).ok());
    let Some(location) = location else {
        return bad_request();
    };
    let mut reply = body::json(StatusCode::FOUND, &serde_json::json!({}));
    reply.headers_mut().insert(LOCATION, location);
    reply
}

/// Describes the request as received, so tests can check what the proxy forwarded.
/// Path and query are the raw bytes of the request target, not decoded.
fn echo(parts: &Parts, summary: &BodySummary) -> Reply {
    let mut headers = BTreeMap::<&str, Vec<String>>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.entry(name.as_str()).or_default().push(value);
    }
    let text = summary.kept.as_ref().and_then(|kept| std::str::from_utf8(kept).ok());
    let description = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": summary.len,
        "body_sha256": summary.sha256,
        "body": text,
    });
    body::json(StatusCode::OK, &description)
}

fn with_headers(mut reply: Reply, headers: &[(&'static str, &'static str)]) -> Reply {
    for &(name, value) in headers {
        reply.headers_mut().append(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    reply
}

fn number_param(query: Option<&str>, name: &str) -> Option<u64> {
    query::param(query, name)?.parse().ok()
}

fn bad_request() -> Reply {
    body::error_detail(StatusCode::BAD_REQUEST, "Bad Request")
}
