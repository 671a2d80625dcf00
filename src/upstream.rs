//! The pooled HTTPS client towards Truedat: rustls with one explicit crypto
//! provider (ring), system roots plus `upstream.ca_file`, an optional client
//! certificate, HTTP/1.1 or HTTP/2 by ALPN, and an optional CONNECT egress
//! proxy.
//!
//! There is deliberately no option to turn certificate verification off.

use std::error::Error as StdError;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::{ProxyEnv, Upstream, parse_egress_proxy};
use crate::origin::Origin;
use crate::replay::{ClientBodyError, UpstreamBody};

/// The client every upstream call goes through.
pub type HttpClient = Client<Connector, UpstreamBody>;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Why the client could not be built: a startup error naming the key.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{key}: cannot read {path}: {source}")]
    File { key: &'static str, path: String, source: std::io::Error },
    #[error("{key}: {path} holds no usable PEM {what}")]
    Pem { key: &'static str, path: String, what: &'static str },
    #[error("upstream.client_key_file: the key does not fit the certificate: {0}")]
    ClientAuth(rustls::Error),
    #[error("no trusted CA certificates: the system store is empty and upstream.ca_file is unset")]
    NoRoots,
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

/// Builds the pooled client for `origin` from the `[upstream]` settings.
pub fn build(settings: &Upstream, proxy_env: &ProxyEnv, origin: &Origin) -> Result<HttpClient, BuildError> {
    let tls = tls_config(settings, origin.is_https())?;
    let dial = Dial::new(settings, proxy_env, origin)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(dial);
    let connector = Connector { inner: https, timeout: settings.connect_timeout.0 };
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout.0)
        // Host is filled from the request URI, always the origin's authority
        // (the proxy removes the client's Host header).
        .set_host(true)
        .build(connector))
}

/// Classifies a client error for the status, the metric and the log.
pub fn classify(error: &hyper_util::client::legacy::Error) -> FailureKind {
    cause_kind(error).unwrap_or(if error.is_connect() { FailureKind::Connect } else { FailureKind::Protocol })
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

/// The TLS client configuration. For a plain-http upstream no handshake ever
/// happens, so the system roots (hundreds of files) are not even read.
fn tls_config(settings: &Upstream, https: bool) -> Result<rustls::ClientConfig, BuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots(settings.ca_file.as_deref(), https)?);
    match (&settings.client_cert_file, &settings.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("upstream.client_cert_file", cert)?;
            let key = read_key(key)?;
            builder.with_client_auth_cert(chain, key).map_err(BuildError::ClientAuth)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `upstream.ca_file` (always checked, so a bad file is reported whatever the
/// scheme) plus, when `system` is set, the system's roots.
fn roots(ca_file: Option<&Path>, system: bool) -> Result<rustls::RootCertStore, BuildError> {
    let mut roots = rustls::RootCertStore::empty();
    let added = if system { add_system_roots(&mut roots) } else { usize::MAX };
    if let Some(path) = ca_file {
        for cert in read_certs("upstream.ca_file", path)? {
            roots.add(cert).map_err(|_| BuildError::Pem {
                key: "upstream.ca_file",
                path: path.display().to_string(),
                what: "CA certificate",
            })?;
        }
    } else if added == 0 {
        return Err(BuildError::NoRoots);
    }
    Ok(roots)
}

fn add_system_roots(roots: &mut rustls::RootCertStore) -> usize {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(error = %error, "could not load some system CA certificates");
    }
    roots.add_parsable_certificates(native.certs).0
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::File { key, path: path.display().to_string(), source })
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, BuildError> {
    let pem = read_pem(key, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(BuildError::Pem { key, path: path.display().to_string(), what: "certificate" });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, BuildError> {
    let key = "upstream.client_key_file";
    let pem = read_pem(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| BuildError::Pem {
        key,
        path: path.display().to_string(),
        what: "private key",
    })
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

/// `HttpsConnector` with one deadline over TCP connect and TLS handshake.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<Dial>,
    timeout: Duration,
}

type Stream = hyper_rustls::MaybeHttpsStream<TokioIo<TcpStream>>;

impl Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result,
                Err(_) => Err(ConnectTimeout(timeout).into()),
            }
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
