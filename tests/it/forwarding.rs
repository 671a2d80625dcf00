//! Forwarding as Truedat and the tool see it: what reaches Truedat (and what
//! must not), byte-exact targets, streaming in both directions, and the
//! proxy's own errors.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::support::fake_truedat::{FakeTruedat, download_byte};
use crate::support::proxy::{TestProxy, fake};
use crate::support::raw::raw_exchange;

const READY: Duration = Duration::from_secs(10);

async fn ready_pair() -> (FakeTruedat, TestProxy) {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::start(&fake, |_| {}).await;
    assert!(proxy.wait_ready(READY).await);
    (fake, proxy)
}

#[tokio::test]
async fn the_bearer_replaces_the_clients_authorization_and_host_is_the_upstreams() {
    let (fake, proxy) = ready_pair().await;
    let request = Request::get(proxy.url("/api/data"))
        .header("authorization", "Bearer stolen-or-stale")
        .header("host", "evil.example:443")
        .body(Full::default())
        .unwrap();
    let reply = proxy.client.send(request).await;
    assert_eq!(reply.status, 200);
    let seen = &fake.data_requests()[0];
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth.len(), 1);
    let auth = auth[0].to_str().unwrap();
    assert!(auth.starts_with("Bearer ey"), "{auth}");
    assert_eq!(seen.headers["host"], fake.addr().to_string());
    proxy.stop().await;
}

#[tokio::test]
async fn path_and_query_pass_byte_for_byte() {
    let (_fake, proxy) = ready_pair().await;
    let target = "/api/data_structures/a%3Bb/c+d%20e%C3%A9?q=a%20b&q=c+d&x=%2F&y=..&empty=&u=%C3%A9&plus=1+1";
    let echo = proxy.get(target).await.json();
    assert_eq!(echo["path"], "/api/data_structures/a%3Bb/c+d%20e%C3%A9");
    assert_eq!(echo["query"], "q=a%20b&q=c+d&x=%2F&y=..&empty=&u=%C3%A9&plus=1+1");
    proxy.stop().await;
}

#[tokio::test]
async fn a_base_path_in_upstream_url_is_kept() {
    let fake = fake(|_| {}).await;
    // The fake only serves /api/…: a prefix "/" must not double the slash.
    let proxy = TestProxy::start(&fake, |c| c.upstream.url = Some(format!("{}/", fake.url()))).await;
    assert!(proxy.wait_ready(READY).await);
    assert_eq!(proxy.get("/api/x?y=1").await.json()["path"], "/api/x");
    proxy.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_stop_at_the_proxy_both_ways() {
    let (fake, proxy) = ready_pair().await;
    let request = Request::get(proxy.url("/api/hop"))
        .header("connection", "x-private-hop")
        .header("x-private-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-end-to-end", "kept")
        .body(Full::default())
        .unwrap();
    let reply = proxy.client.send(request).await;
    assert_eq!(reply.status, 200);
    let seen = &fake.data_requests()[0].headers;
    for name in ["x-private-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(seen.get(name).is_none(), "{name} reached Truedat");
    }
    assert_eq!(seen["x-end-to-end"], "kept");
    assert!(reply.headers.get("x-custom-hop").is_none(), "a field named by Connection reached the client");
    assert!(reply.headers.get("keep-alive").is_none());
    assert_eq!(reply.header("x-end-to-end"), Some("1"));
    proxy.stop().await;
}

#[tokio::test]
async fn the_refresh_cookie_never_crosses_the_proxy() {
    let (fake, proxy) = ready_pair().await;
    let request = Request::get(proxy.url("/api/cookies"))
        .header("cookie", "theme=dark; _td_refresh=stolen; lang=en")
        .body(Full::default())
        .unwrap();
    let reply = proxy.client.send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(fake.data_requests()[0].headers["cookie"], "theme=dark; lang=en");
    let set_cookies: Vec<_> = reply.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(set_cookies, ["other=1; path=/"]);
    proxy.stop().await;
}

#[tokio::test]
async fn request_ids_are_passed_on_or_generated_and_returned() {
    let (fake, proxy) = ready_pair().await;
    let request =
        Request::get(proxy.url("/api/data")).header("x-request-id", "trace-42").body(Full::default()).unwrap();
    let reply = proxy.client.send(request).await;
    assert_eq!(reply.header("x-request-id"), Some("trace-42"));
    assert_eq!(fake.data_requests()[0].headers["x-request-id"], "trace-42");

    let reply = proxy.get("/api/data").await;
    let generated = reply.header("x-request-id").expect("a generated id").to_owned();
    assert_eq!(fake.data_requests()[1].headers["x-request-id"], generated.as_str());
    assert_ne!(generated, proxy.get("/api/data").await.header("x-request-id").unwrap());
    proxy.stop().await;
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let (_fake, proxy) = ready_pair().await;
    let evil = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let location = format!("http://{}/steal", evil.local_addr().unwrap());
    let reply = proxy.get(&format!("/api/redirect?to={location}")).await;
    assert_eq!(reply.status, 302);
    assert_eq!(reply.header("location"), Some(location.as_str()));
    assert_nothing_arrives(&evil).await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_absolute_form_target_naming_another_host_still_goes_to_truedat() {
    let (fake, proxy) = ready_pair().await;
    let evil = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_addr = evil.local_addr().unwrap();
    let head = format!(
        "GET http://{evil_addr}/api/data?via=absolute HTTP/1.1\r\nHost: {evil_addr}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_exchange(proxy.proxy, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(fake.data_requests()[0].uri, "/api/data?via=absolute");
    assert_nothing_arrives(&evil).await;
    proxy.stop().await;
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let (fake, proxy) = ready_pair().await;
    let answer = raw_exchange(proxy.proxy, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains(r#"{"errors":{"detail":"#), "{answer}");
    assert!(fake.data_requests().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn session_routes_are_refused_so_tools_cannot_touch_the_proxys_session() {
    let (fake, proxy) = ready_pair().await;
    for path in ["/api/sessions", "/api/sessions/refresh", "//api/sessions", "/API/sessions", "/api/%73essions"] {
        let reply = proxy.client.call(Method::DELETE, &proxy.url(path), Bytes::new()).await;
        assert_eq!(reply.status, 403, "{path}");
        assert!(reply.json()["errors"]["detail"].as_str().unwrap().contains("allow_session_paths"));
    }
    assert_eq!(fake.logouts(), 0);
    assert_eq!(proxy.get("/api/data").await.status, 200, "the proxy's session is intact");
    proxy.stop().await;
}

#[tokio::test]
async fn a_large_upload_streams_through() {
    let (_fake, proxy) = ready_pair().await;
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 256; // 64 MiB
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let frames = futures_util::stream::iter((0..CHUNKS).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
    let request =
        Request::post(proxy.url("/api/upload")).header("host", "localhost").body(StreamBody::new(frames)).unwrap();
    let (status, body) = send_streaming(proxy.proxy, request).await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["bytes"], (CHUNK * CHUNKS) as u64);
    proxy.stop().await;
}

#[tokio::test]
async fn a_large_download_streams_through_intact() {
    let (_fake, proxy) = ready_pair().await;
    let size: u64 = 64 * 1024 * 1024;
    let stream = TcpStream::connect(proxy.proxy).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get(format!("/api/download?bytes={size}"))
        .header("host", "localhost")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], size.to_string().as_str());
    let mut body = response.into_body();
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            for (i, byte) in data.iter().enumerate() {
                assert_eq!(*byte, download_byte(offset + i as u64), "byte {}", offset + i as u64);
            }
            offset += data.len() as u64;
        }
    }
    assert_eq!(offset, size);
    proxy.stop().await;
}

#[tokio::test]
async fn truedat_refusing_connections_is_a_502() {
    let (fake, proxy) = ready_pair().await;
    let _port = fake.shutdown_keeping_port().await;
    let reply = proxy.get("/api/data").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.json()["errors"]["detail"].as_str().unwrap().contains("unreachable"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_slow_truedat_is_a_504_after_request_timeout() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::start(&fake, |c| c.upstream.request_timeout = "300ms".parse().unwrap()).await;
    assert!(proxy.wait_ready(READY).await);
    let started = std::time::Instant::now();
    let reply = proxy.get("/api/slow?ms=3000").await;
    assert_eq!(reply.status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(reply.json()["errors"]["detail"].as_str().unwrap().contains("request_timeout"));
    assert_eq!(proxy.get("/api/slow?ms=10").await.status, 200);
    proxy.stop().await;
}

/// Fails if anything connects to `listener` within 300 ms.
async fn assert_nothing_arrives(listener: &TcpListener) {
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "something connected to the other host");
}

async fn send_streaming<B>(addr: std::net::SocketAddr, request: Request<B>) -> (http::StatusCode, Bytes)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}
