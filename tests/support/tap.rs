//! A recording TCP relay to put between the proxy and the plain-HTTP fake
//! Truedat: it keeps every byte of every connection in both directions, so a
//! test knows every token and refresh cookie Truedat handed out (the fake
//! itself records requests, not its answers), and it can cut Truedat off to
//! make the proxy answer 502.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What crossed one relayed connection.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// Bytes from the proxy to Truedat.
    pub requests: Vec<u8>,
    /// Bytes from Truedat to the proxy.
    pub responses: Vec<u8>,
}

/// A running relay; stops when dropped.
pub struct Tap {
    addr: SocketAddr,
    transcripts: Arc<Mutex<Vec<Arc<Mutex<Transcript>>>>>,
    /// While true, connections are closed as soon as they are accepted, and
    /// those already open are closed at once.
    cut: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl Tap {
    /// Relays a free port of 127.0.0.1 to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Tap {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("binding a loopback port");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let transcripts: Arc<Mutex<Vec<Arc<Mutex<Transcript>>>>> = Arc::default();
        let cut = watch::Sender::new(false);
        let accept_task = tokio::spawn(accept_loop(listener, upstream, transcripts.clone(), cut.clone()));
        Tap { addr, transcripts, cut, accept_task }
    }

    /// Base URL to give the proxy as `upstream.url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts Truedat off (`true`) or restores it (`false`).
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// Every connection relayed so far, in order of acceptance.
    pub fn transcripts(&self) -> Vec<Transcript> {
        self.transcripts.lock().unwrap().iter().map(|t| t.lock().unwrap().clone()).collect()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    transcripts: Arc<Mutex<Vec<Arc<Mutex<Transcript>>>>>,
    cut: watch::Sender<bool>,
) {
    let mut relays = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        if *cut.borrow() {
            drop(client);
            continue;
        }
        let transcript = Arc::new(Mutex::new(Transcript::default()));
        transcripts.lock().unwrap().push(transcript.clone());
        let mut cut = cut.subscribe();
        relays.spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = pump(client_read, server_write, transcript.clone(), |t| &mut t.requests);
            let down = pump(server_read, client_write, transcript, |t| &mut t.responses);
            tokio::select! {
                _ = async { tokio::join!(up, down) } => {}
                _ = cut.wait_for(|cut| *cut) => {}
            }
        });
        while relays.try_join_next().is_some() {}
    }
}

/// Copies `from` to `to`, appending every byte to the transcript side `side`.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    transcript: Arc<Mutex<Transcript>>,
    side: fn(&mut Transcript) -> &mut Vec<u8>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        side(&mut transcript.lock().unwrap()).extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
