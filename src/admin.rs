//! The admin listener: liveness, readiness, metrics and `/quitquitquit`.
//!
//! Probes never call Truedat: readiness is a local fact (a usable token is
//! held and no shutdown has begun), so a Truedat outage cannot make the
//! kubelet restart healthy sidecars. Browsers are refused on every endpoint
//! (the same test as `proxy.allow_browsers`), so a web page open on the
//! machine cannot stop the proxy with a cross-site `POST /quitquitquit`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::body::ProxyBody;
use crate::error::json_error;
use crate::headers;
use crate::telemetry;

/// What the admin endpoints look at.
pub struct Admin {
    auth: Arc<Auth>,
    /// Fired by a signal or `/quitquitquit`; readiness turns 503 at once.
    shutdown: CancellationToken,
}

impl Admin {
    /// Admin endpoints over `auth`, triggering and watching `shutdown`.
    pub fn new(auth: Arc<Auth>, shutdown: CancellationToken) -> Admin {
        Admin { auth, shutdown }
    }

    /// Answers one admin request.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        // SPEC §6: the kubelet and Prometheus never send Origin or
        // Sec-Fetch-Site; a web page must not stop the proxy or read its
        // metrics, whatever `proxy.allow_browsers` lets through on the proxy port.
        if headers::is_from_browser(request.headers()) {
            return Ok(json_error(StatusCode::FORBIDDEN, "requests from web browsers are refused on the admin port"));
        }
        let method = request.method();
        let response = match request.uri().path() {
            "/healthz" if is_read(method) => text(StatusCode::OK, "ok\n", "text/plain; charset=utf-8"),
            "/readyz" if is_read(method) => self.readyz(),
            "/metrics" if is_read(method) => self.metrics(),
            "/quitquitquit" if method == Method::POST => self.quit(peer),
            "/healthz" | "/readyz" | "/metrics" | "/quitquitquit" => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => json_error(StatusCode::NOT_FOUND, "not found"),
        };
        Ok(response)
    }

    /// `Ok` while ready, else why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.shutdown.is_cancelled() {
            return Err("shutting down");
        }
        self.auth.readiness()
    }

    fn readyz(&self) -> Response<ProxyBody> {
        match self.readiness() {
            Ok(()) => text(StatusCode::OK, "ok\n", "text/plain; charset=utf-8"),
            Err(reason) => json_error(StatusCode::SERVICE_UNAVAILABLE, reason),
        }
    }

    fn metrics(&self) -> Response<ProxyBody> {
        telemetry::record_ready(self.readiness().is_ok());
        let body = telemetry::metrics_handle().render();
        text(StatusCode::OK, body, "text/plain; version=0.0.4; charset=utf-8")
    }

    fn quit(&self, peer: SocketAddr) -> Response<ProxyBody> {
        // A dual-stack listener sees an IPv4 peer as ::ffff:a.b.c.d.
        if !peer.ip().to_canonical().is_loopback() {
            return json_error(StatusCode::FORBIDDEN, "/quitquitquit is only answered to loopback clients");
        }
        tracing::info!(%peer, "shutdown requested through /quitquitquit");
        self.shutdown.cancel();
        text(StatusCode::OK, "shutting down\n", "text/plain; charset=utf-8")
    }
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quitquitquit_is_refused_to_other_peers_and_starts_nothing() {
        let shutdown = CancellationToken::new();
        let admin = Admin::new(Arc::new(Auth::new(Duration::from_secs(1), Duration::from_secs(1))), shutdown.clone());
        for peer in ["10.1.2.3:40000", "192.0.2.7:1", "[2001:db8::1]:443"] {
            assert_eq!(admin.quit(peer.parse().unwrap()).status(), StatusCode::FORBIDDEN, "{peer}");
        }
        assert!(!shutdown.is_cancelled());
        assert_eq!(admin.readiness(), Err("no token yet"));
        for peer in ["[::ffff:10.1.2.3]:1", "[::ffff:192.0.2.7]:1"] {
            assert_eq!(admin.quit(peer.parse().unwrap()).status(), StatusCode::FORBIDDEN, "{peer}");
        }
        assert!(!shutdown.is_cancelled());
        assert_eq!(admin.quit("[::1]:5000".parse().unwrap()).status(), StatusCode::OK);
        assert!(shutdown.is_cancelled());
        assert_eq!(admin.readiness(), Err("shutting down"));
    }
}
