//! The pooled HTTPS client towards Truedat: rustls with the TLS material of
//! [`crate::tls`] (read again for every new connection, so a rotated
//! certificate is used without a restart), HTTP/1.1 or HTTP/2 by ALPN, and an
//! optional CONNECT egress proxy.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::{ProxyEnv, Upstream, parse_egress_proxy};
use crate::origin::Origin;
use crate::replay::{ClientBodyError, UpstreamBody};
use crate::tls;

/// The client every upstream call goes through.
pub type HttpClient = Client<Connector, UpstreamBody>;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Why the client could not be built: a startup error naming the key.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("upstream.egress_proxy: {0}")]
    EgressProxy(String),
}

/// What went wrong talking to Truedat, as a metric label and a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Connect,
    Tls,
    Timeout,
    Protocol,
}

impl FailureKind {
    /// The `kind` label of `truedat_proxy_upstream_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Timeout => "timeout",
            FailureKind::Protocol => "protocol",
        }
    }
}

/// The ways to Truedat: one connector (TCP, TLS, egress proxy, connect
/// timeout) for the client connections' own links, and the pooled client
/// built on it for the session calls and for HTTP/2.
#[derive(Clone)]
pub struct Clients {
    pub pool: HttpClient,
    pub connector: Connector,
    /// For the pools of other threads ([`Clients::for_thread`]).
    pool_idle_timeout: Duration,
}

impl Clients {
    /// The same ways to Truedat with a pool of their own, for another
    /// thread's runtime: a pooled connection runs as a task of the runtime
    /// that dialled it, so a pool shared between threads would hand one
    /// thread's connections to the other, with a wake-up across threads at
    /// every exchange. The connector (and what it knows of HTTP/2) is shared.
    pub fn for_thread(&self) -> Clients {
        let pool = pool(self.connector.clone(), self.pool_idle_timeout);
        Clients { pool, connector: self.connector.clone(), pool_idle_timeout: self.pool_idle_timeout }
    }
}

/// Builds the connector and the pooled client for `origin` from the
/// `[upstream]` settings, with the TLS material `tls` (see
/// [`tls::Material::load`]).
pub fn build(
    settings: &Upstream,
    proxy_env: &ProxyEnv,
    origin: &Origin,
    tls: Arc<tls::Material>,
) -> Result<Clients, BuildError> {
    let dial = Dial::new(settings, proxy_env, origin)?;
    let connector = Connector { dial, tls, timeout: settings.connect_timeout.0, http2: Arc::default() };
    let pool_idle_timeout = settings.pool_idle_timeout.0;
    Ok(Clients { pool: pool(connector.clone(), pool_idle_timeout), connector, pool_idle_timeout })
}

fn pool(connector: Connector, idle_timeout: Duration) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        // Host is filled from the request URI, always the origin's authority
        // (the proxy removes the client's Host header).
        .set_host(true)
        .build(connector)
}

/// Classifies a client error for the status, the metric and the log.
pub fn classify(error: &hyper_util::client::legacy::Error) -> FailureKind {
    if error.is_connect() { classify_connect(error) } else { classify_exchange(error) }
}

/// A failure to connect (TCP, TLS, egress proxy, connect timeout).
pub fn classify_connect(error: &(dyn StdError + 'static)) -> FailureKind {
    cause_kind(error).unwrap_or(FailureKind::Connect)
}

/// A failure on an established connection: broken, or a malformed answer.
pub fn classify_exchange(error: &(dyn StdError + 'static)) -> FailureKind {
    cause_kind(error).unwrap_or(FailureKind::Protocol)
}

/// A timeout or TLS failure anywhere in the chain of causes.
fn cause_kind(error: &(dyn StdError + 'static)) -> Option<FailureKind> {
    causes(error).find_map(|e| {
        if e.is::<ConnectTimeout>() {
            Some(FailureKind::Timeout)
        } else if e.is::<rustls::Error>() {
            Some(FailureKind::Tls)
        } else {
            None
        }
    })
}

/// Whether the request failed because the client's own body broke (the
/// client went away mid-upload): the client's doing, not Truedat's.
pub fn client_went_away(error: &(dyn StdError + 'static)) -> bool {
    causes(error).any(|e| e.is::<ClientBodyError>())
}

/// `error` and its chain of causes.
fn causes<'a>(error: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e: &&'a (dyn StdError + 'static)| {
        // An io::Error's source() skips the error it wraps, and hyper-rustls
        // wraps the rustls::Error in two of them: step into it explicitly.
        match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        }
    })
}

/// The innermost cause of an error, for a log line (never carries a secret:
/// errors from the client hold no request headers).
pub fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut messages = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !messages.last().is_some_and(|m| m.contains(&text)) {
            messages.push(text);
        }
        source = e.source();
    }
    messages.join(": ")
}

/// The TCP leg: straight to Truedat, or through a CONNECT tunnel.
#[derive(Clone)]
pub enum Dial {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

impl Dial {
    fn new(settings: &Upstream, proxy_env: &ProxyEnv, origin: &Origin) -> Result<Dial, BuildError> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(settings.connect_timeout.0));
        let found = match settings.egress_proxy.as_deref() {
            Some(explicit) => {
                parse_egress_proxy(explicit).map_err(BuildError::EgressProxy)?;
                intercept(Matcher::builder().all(explicit.to_owned()), origin)
            }
            None => environment_proxy(proxy_env, origin),
        };
        let Some((proxy, auth)) = found else {
            return Ok(Dial::Direct(tcp));
        };
        let shown = proxy.authority().map(|a| format!("{}:{}", a.host(), a.port_u16().unwrap_or(80)));
        tracing::info!(proxy = shown.unwrap_or_default(), "reaching Truedat through an egress proxy with CONNECT");
        let tunnel = Tunnel::new(proxy, tcp);
        Ok(Dial::Tunnel(match auth {
            Some(auth) => tunnel.with_auth(auth),
            None => tunnel,
        }))
    }
}

/// The proxy curl would use for `origin`, from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`.
fn environment_proxy(proxy_env: &ProxyEnv, origin: &Origin) -> Option<(Uri, Option<HeaderValue>)> {
    let mut matcher = Matcher::builder();
    if let Some(v) = &proxy_env.http {
        matcher = matcher.http(v.clone());
    }
    if let Some(v) = &proxy_env.https {
        matcher = matcher.https(v.clone());
    }
    if let Some(v) = &proxy_env.no {
        matcher = matcher.no(v.clone());
    }
    intercept(matcher, origin)
}

/// The proxy `matcher` picks for `origin`, with its `user:password` (if the
/// URL held one) turned into a `Proxy-Authorization` value.
fn intercept(
    matcher: hyper_util::client::proxy::matcher::Builder,
    origin: &Origin,
) -> Option<(Uri, Option<HeaderValue>)> {
    let intercept = matcher.build().intercept(&origin.base())?;
    Some((intercept.uri().clone(), intercept.basic_auth().cloned()))
}

type DialFuture = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = DialFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Dial::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Dial::Tunnel(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> DialFuture {
        match self {
            Dial::Direct(c) => {
                let connecting = c.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Dial::Tunnel(c) => {
                let connecting = c.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
        }
    }
}

/// The connect phase, TCP and TLS together, took longer than `upstream.connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connecting to Truedat (TCP and TLS) took longer than {0:?}")]
pub struct ConnectTimeout(Duration);

/// `HttpsConnector` with one deadline over TCP connect and TLS handshake,
/// built for each new connection around the TLS configuration current at that
/// moment (two `Arc` clones), so a rotation reaches every new connection;
/// it remembers which protocol Truedat chose last.
#[derive(Clone)]
pub struct Connector {
    dial: Dial,
    tls: Arc<tls::Material>,
    timeout: Duration,
    /// The last connection made negotiated HTTP/2 by ALPN. The first login
    /// connects before any client request is forwarded, so requests know
    /// from the start whether to share one multiplexed connection or to use
    /// one HTTP/1.1 connection each.
    http2: Arc<AtomicBool>,
}

impl Connector {
    /// Whether Truedat spoke HTTP/2 on the last connection made to it.
    pub fn speaks_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }
}

/// A connection to Truedat: plain TCP, or TLS over it.
pub type Stream = hyper_rustls::MaybeHttpsStream<TokioIo<TcpStream>>;

impl Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.dial.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut https = HttpsConnector::from((self.dial.clone(), self.tls.current()));
        let (timeout, http2) = (self.timeout, self.http2.clone());
        Box::pin(async move {
            let connecting = async move {
                std::future::poll_fn(|cx| https.poll_ready(cx)).await?;
                https.call(dst).await
            };
            let stream = match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result?,
                Err(_) => return Err(ConnectTimeout(timeout).into()),
            };
            http2.store(stream.connected().is_negotiated_h2(), Ordering::Relaxed);
            Ok(stream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_wrapped_in_io_errors_are_found() {
        use std::io;
        let rustls_error = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, rustls_error));
        assert_eq!(cause_kind(&wrapped), Some(FailureKind::Tls));
        assert_eq!(cause_kind(&io::Error::other(ConnectTimeout(Duration::from_secs(1)))), Some(FailureKind::Timeout));
        assert_eq!(cause_kind(&io::Error::from(io::ErrorKind::ConnectionRefused)), None);
    }

    #[test]
    fn credentials_in_the_egress_proxy_url_become_proxy_authorization() {
        let origin = Origin::parse("https://td.example.com").unwrap();
        let (uri, auth) = intercept(Matcher::builder().all("http://user:pw@proxy:3128".to_owned()), &origin).unwrap();
        assert_eq!(uri.authority().unwrap().as_str(), "proxy:3128");
        assert_eq!(auth.unwrap(), "Basic dXNlcjpwdw==");
    }

    #[test]
    fn no_proxy_is_honoured_for_the_origin() {
        let origin = Origin::parse("https://td.example.com").unwrap();
        let env = ProxyEnv { https: Some("http://proxy:3128".into()), ..ProxyEnv::default() };
        let (uri, _) = environment_proxy(&env, &origin).unwrap();
        assert_eq!(uri.authority().unwrap().as_str(), "proxy:3128");
        let env = ProxyEnv { no: Some(".example.com".into()), ..env };
        assert!(environment_proxy(&env, &origin).is_none());
        assert!(environment_proxy(&ProxyEnv::default(), &origin).is_none());
    }
}
