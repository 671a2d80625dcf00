//! Each client connection's own connection to Truedat (`src/link.rs`): how
//! many connections Truedat sees, and that a connection Truedat closed while
//! idle costs a tool nothing, not even a POST.

use std::time::Duration;

use http::Method;
use http_body_util::Full;

use crate::support::h1::H1Conn;
use crate::support::proxy::{TestProxy, fake};
use crate::support::wait::wait_until;

const READY: Duration = Duration::from_secs(10);

fn request(method: Method, path: &str, body: &'static str) -> http::Request<Full<bytes::Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
        .expect("a valid request")
}

async fn status(conn: &mut H1Conn, method: Method, path: &str, body: &'static str) -> u16 {
    let response = conn.send(request(method, path, body)).await.expect("an answer");
    let status = response.status().as_u16();
    http_body_util::BodyExt::collect(response.into_body()).await.expect("a whole body");
    status
}

/// Two tools' keep-alive connections, twenty requests each: Truedat sees
/// one connection per tool connection (plus the login's), reused from
/// request to request; when the tools hang up, their connections to
/// Truedat close too.
#[tokio::test]
async fn each_client_connection_keeps_one_connection_to_truedat() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    let before = fake.connections_accepted();
    let mut tools = [H1Conn::connect(proxy.proxy).await.unwrap(), H1Conn::connect(proxy.proxy).await.unwrap()];
    for i in 0..20 {
        for tool in &mut tools {
            let method = if i % 2 == 0 { Method::GET } else { Method::POST };
            assert_eq!(status(tool, method, "/api/data", "{}").await, 200);
        }
    }
    assert_eq!(fake.connections_accepted() - before, 2, "one connection to Truedat per client connection");
    let open_with_tools = fake.connections_open();
    drop(tools);
    let closed = wait_until(READY, || async { fake.connections_open() <= open_with_tools - 2 }).await;
    assert!(closed, "{} connections still open after the tools left", fake.connections_open());
    proxy.stop().await;
}

/// Truedat closes each connection 5 ms after its response (a short
/// keep-alive timeout); a tool sends POSTs 50 ms apart on one connection.
/// The proxy notices the close before reusing the connection and sends
/// each POST on a fresh one: every POST succeeds, each reaches Truedat once.
#[tokio::test]
async fn a_connection_truedat_closed_while_idle_is_replaced_before_a_post_is_sent() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    fake.set_idle_close(Some(Duration::from_millis(5)));
    let mut tool = H1Conn::connect(proxy.proxy).await.unwrap();
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(status(&mut tool, Method::POST, "/api/upload", "payload").await, 200, "POST {i}");
    }
    fake.set_idle_close(None);
    let posts = fake.data_requests().iter().filter(|r| r.method == Method::POST).count();
    assert_eq!(posts, 10, "each POST reached Truedat exactly once");
    proxy.stop().await;
}
