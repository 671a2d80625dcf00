//! A small but real HTTP CONNECT proxy, the kind of corporate egress proxy the
//! sidecar must tunnel through (RFC 9110 §9.3.6).
//!
//! It answers `CONNECT host:port` with `200 Connection established` and then
//! relays bytes both ways with `copy_bidirectional`, recording every CONNECT
//! and every relayed byte so a test can check what an egress proxy could see.
//! Optionally it demands `Proxy-Authorization: Basic …` and answers 407 without
//! it. Anything but CONNECT gets 405. Stops when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::relay::{Recording, RecordingStream};

/// Longest CONNECT head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// One CONNECT request as received.
#[derive(Clone, Debug)]
pub struct Connect {
    /// The request target, `host:port`.
    pub target: String,
    /// The `Proxy-Authorization` value, if any.
    pub proxy_authorization: Option<String>,
    /// What the proxy answered.
    pub status: u16,
}

/// What the connection tasks share with the test.
#[derive(Default)]
struct Shared {
    /// `Basic …` value demanded, if authentication is on.
    required: Option<String>,
    connects: Mutex<Vec<Connect>>,
    /// Bytes relayed from clients to targets, all tunnels together.
    to_target: Recording,
    /// Bytes relayed from targets to clients, all tunnels together.
    to_client: Recording,
}

/// A CONNECT proxy on a free port of 127.0.0.1.
pub struct ConnectProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl ConnectProxy {
    /// A proxy that lets anyone through.
    pub async fn start() -> ConnectProxy {
        ConnectProxy::launch(None).await
    }

    /// A proxy that demands HTTP Basic credentials `user`:`password`.
    pub async fn start_with_basic_auth(user: &str, password: &str) -> ConnectProxy {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        ConnectProxy::launch(Some(format!("Basic {encoded}"))).await
    }

    async fn launch(required: Option<String>) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let shared = Arc::new(Shared { required, ..Shared::default() });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        ConnectProxy { addr, shared, accept_task }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, as `upstream.egress_proxy` or `https_proxy` take it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every CONNECT received, in order.
    pub fn connects(&self) -> Vec<Connect> {
        lock(&self.shared.connects).clone()
    }

    /// Every byte relayed through the tunnels, both directions.
    pub fn relayed(&self) -> Vec<u8> {
        let mut bytes = self.shared.to_target.bytes();
        bytes.extend(self.shared.to_client.bytes());
        bytes
    }

    /// Bytes relayed from clients to their targets.
    pub fn relayed_to_target(&self) -> Vec<u8> {
        self.shared.to_target.bytes()
    }

    /// How many bytes were relayed, both directions.
    pub fn relayed_bytes(&self) -> usize {
        self.shared.to_target.len() + self.shared.to_client.len()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped with the accept task, which aborts every tunnel.
    let mut tunnels = JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        tunnels.spawn(serve(client, shared.clone()));
        while tunnels.try_join_next().is_some() {}
    }
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let Some((head, early)) = read_head(&mut client).await else {
        return;
    };
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let (method, target) = (request_line.next().unwrap_or_default(), request_line.next().unwrap_or_default());
    let proxy_authorization = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("proxy-authorization").then(|| value.trim().to_owned())
    });
    let record = |status: u16| {
        let connect = Connect { target: target.to_owned(), proxy_authorization: proxy_authorization.clone(), status };
        lock(&shared.connects).push(connect);
    };
    if !method.eq_ignore_ascii_case("CONNECT") {
        record(405);
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n").await;
        return;
    }
    if shared.required.is_some() && shared.required != proxy_authorization {
        record(407);
        let answer = "HTTP/1.1 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: Basic realm=\"egress\"\r\nContent-Length: 0\r\n\r\n";
        let _ = client.write_all(answer.as_bytes()).await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        record(502);
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n").await;
        return;
    };
    record(200);
    if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
        return;
    }
    // Bytes the client sent right behind its head belong to the tunnel.
    shared.to_target.push(&early);
    if upstream.write_all(&early).await.is_err() {
        return;
    }
    let mut client = RecordingStream::new(client, shared.to_target.clone(), shared.to_client.clone());
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Reads up to the blank line ending the head; returns the head and any bytes after it.
async fn read_head(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let early = buffer.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buffer).into_owned(), early));
        }
        if buffer.len() > MAX_HEAD {
            return None;
        }
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Locks `mutex`, ignoring poisoning (a test that panicked has already failed).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
