//! `truedat-auth-proxy wait` (SPEC §1): polls the running proxy's `/readyz`
//! until it answers 200.
//!
//! Why it exists: without native sidecars (Kubernetes < 1.29) the kubelet
//! starts a pod's containers in order and waits for each one's `postStart`
//! hook before starting the next, so this command as the proxy container's
//! hook holds the tool back until the proxy has a token. The image has no
//! shell and no curl, so the probe is built in: one HTTP/1.1 GET per attempt
//! over a fresh loopback connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::units::Dur;

/// Pause between attempts: short enough that the tool starts promptly,
/// long enough that waiting costs nothing noticeable.
const INTERVAL: Duration = Duration::from_millis(250);
/// One attempt (connect, request, answer) may take this long at most.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// `/readyz` bodies are a line of JSON; anything longer is not ours.
const MAX_BODY: usize = 16 * 1024;

/// The proxy did not become ready in time.
#[derive(Debug, thiserror::Error)]
#[error("not ready after {timeout}: {reason}")]
pub struct NotReady {
    timeout: Dur,
    /// The last reason seen: the `/readyz` detail, or that nothing answered.
    reason: String,
}

/// An `admin.address` that cannot be polled.
#[derive(Debug, thiserror::Error)]
#[error("admin.address: {0} has port 0, which no running proxy can be reached on")]
pub struct Unreachable(SocketAddr);

/// Where to reach a proxy listening on `admin`: an unspecified address
/// (`0.0.0.0`, `[::]`) listens on every interface, loopback included.
pub fn target(admin: SocketAddr) -> Result<SocketAddr, Unreachable> {
    if admin.port() == 0 {
        return Err(Unreachable(admin));
    }
    let ip = match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, admin.port()))
}

/// Polls `GET /readyz` on `target` until it answers 200 or `timeout` passes.
/// At least one attempt is made, even with a zero timeout, and one more at
/// the deadline.
pub async fn until_ready(target: SocketAddr, timeout: Duration) -> Result<(), NotReady> {
    let deadline = Instant::now() + timeout;
    loop {
        // A last attempt at the deadline still gets a fair chance to answer.
        let attempt = deadline.saturating_duration_since(Instant::now()).clamp(INTERVAL, ATTEMPT_TIMEOUT);
        let reason = match tokio::time::timeout(attempt, readyz(target)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(reason)) => reason,
            Err(_) => format!("{target} did not answer /readyz within {}", Dur(attempt)),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NotReady { timeout: Dur(timeout), reason });
        }
        tokio::time::sleep(left.min(INTERVAL)).await;
    }
}

/// One `GET /readyz`: `Ok` on 200, else why not.
async fn readyz(target: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect(target).await.map_err(|e| format!("nothing answered on {target} ({e})"))?;
    let broken = |e: hyper::Error| format!("{target} broke the /readyz exchange ({e})");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(broken)?;
    tokio::spawn(connection);
    let request = Request::get("/readyz")
        .header(http::header::HOST, target.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a GET with a fixed path and a socket address as Host is a valid request");
    let response = sender.send_request(request).await.map_err(broken)?;
    let status = response.status();
    if status == StatusCode::OK {
        return Ok(());
    }
    let body = Limited::new(response.into_body(), MAX_BODY).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Err(reason(status, &body))
}

/// The reason a non-200 answer gives: the detail of the proxy's JSON error
/// (`{"errors":{"detail":…}}`), else the status alone.
fn reason(status: StatusCode, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json["errors"]["detail"].as_str().map(str::to_owned));
    match detail {
        Some(detail) => format!("/readyz answered {}: {}", status.as_u16(), escape_controls(&detail)),
        None => format!("/readyz answered {}", status.as_u16()),
    }
}

/// `text` with every control character written as a Rust escape (`\n`,
/// `\u{1b}`), so that whatever the answering server put in its detail, the
/// reason stays one line (SPEC §1) and cannot drive the terminal.
fn escape_controls(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let cases = [("0.0.0.0:9090", "127.0.0.1:9090"), ("[::]:9090", "[::1]:9090"), ("10.1.2.3:9", "10.1.2.3:9")];
        for (admin, reached) in cases {
            assert_eq!(target(admin.parse().unwrap()).unwrap().to_string(), reached, "{admin}");
        }
        assert!(target("127.0.0.1:0".parse().unwrap()).is_err());
    }

    #[test]
    fn the_reason_is_the_readyz_detail() {
        let body = br#"{"errors":{"detail":"Truedat unreachable"}}"#;
        assert_eq!(reason(StatusCode::SERVICE_UNAVAILABLE, body), "/readyz answered 503: Truedat unreachable");
        assert_eq!(reason(StatusCode::NOT_FOUND, b"<html>"), "/readyz answered 404");
        let body = r#"{"errors":{"detail":"a\nb\u001b[31m\u0085c\\n é"}}"#.as_bytes();
        assert_eq!(reason(StatusCode::SERVICE_UNAVAILABLE, body), r"/readyz answered 503: a\nb\u{1b}[31m\u{85}c\n é");
    }

    #[tokio::test]
    async fn nothing_listening_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = until_ready(addr, Duration::ZERO).await.unwrap_err();
        assert!(error.to_string().contains("nothing answered on"), "{error}");
    }
}
