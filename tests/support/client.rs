//! A plain HTTP/1.1 client for talking to the proxy (and to the fake) in
//! tests: whole bodies in, whole bodies out, over pooled keep-alive
//! connections, like a legacy tool would.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// One header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A pooled keep-alive client.
#[derive(Clone)]
pub struct Client {
    inner: Hyper<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client { inner: Hyper::builder(TokioExecutor::new()).build_http() }
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Reply {
        self.send(Request::get(url).body(Full::default()).expect("valid request")).await
    }

    /// `method url` with `body`.
    pub async fn call(&self, method: Method, url: &str, body: impl Into<Bytes>) -> Reply {
        self.send(Request::builder().method(method).uri(url).body(Full::new(body.into())).expect("valid request")).await
    }

    /// Sends `request` and reads the whole answer; panics on a transport
    /// error or after 30 s, naming the request.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let what = format!("{} {}", request.method(), request.uri());
        self.try_send(request).await.unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Like `send`, returning transport errors instead of panicking.
    pub async fn try_send(&self, request: Request<Full<Bytes>>) -> Result<Reply, String> {
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| format!("request failed: {e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| format!("reading the body failed: {e}"))?.to_bytes();
            Ok(Reply { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(Duration::from_secs(30), exchange).await.map_err(|_| "no answer within 30 s".to_owned())?
    }
}
