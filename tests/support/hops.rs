//! The two ways a request reaches Truedat, for the failure-path tests that
//! must hold on both: plain HTTP/1.1 on the client connection's own link,
//! and TLS with HTTP/2 chosen by ALPN through the shared pool, which is the
//! production path behind ingress-nginx. A defect on one path cannot then
//! hide behind the other.

use std::fmt;

use http::Version;
use truedat_auth_proxy::config::Config;

use super::fake_truedat::{FakeConfig, FakeTruedat, RecordedRequest};
use super::proxy::{TestProxy, binary_toml};
use super::tls::{ALPN_H2_HTTP1, CA_FILE, server_config};

/// How the proxy reaches the fake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Plain HTTP/1.1: each client connection's own link.
    Http1,
    /// TLS offering `h2` and `http/1.1`: HTTP/2 through the shared pool.
    Http2,
}

impl Hop {
    /// Both paths, for tests that loop over them.
    pub const BOTH: [Hop; 2] = [Hop::Http1, Hop::Http2];

    /// A fake Truedat served over this hop.
    pub async fn fake(self, config: FakeConfig) -> FakeTruedat {
        match self {
            Hop::Http1 => FakeTruedat::start(config).await,
            Hop::Http2 => FakeTruedat::start_tls(config, server_config(ALPN_H2_HTTP1)).await,
        }
    }

    /// What a proxy configuration needs to reach a fake over this hop.
    pub fn configure(self, config: &mut Config) {
        if self == Hop::Http2 {
            config.upstream.ca_file = Some(CA_FILE.into());
        }
    }

    /// A TOML configuration for the real binary in front of `fake` over this
    /// hop, then each line of `extra` (see [`binary_toml`]).
    pub fn binary_toml(self, fake: &FakeTruedat, extra: &[&str]) -> String {
        let ca_file = format!("upstream.ca_file = {}", toml::Value::String(CA_FILE.to_owned()));
        let mut lines = extra.to_vec();
        if self == Hop::Http2 {
            lines.push(&ca_file);
        }
        binary_toml(&fake.url(), &lines)
    }

    /// The HTTP version requests reach Truedat in over this hop.
    pub fn version(self) -> Version {
        match self {
            Hop::Http1 => Version::HTTP_11,
            Hop::Http2 => Version::HTTP_2,
        }
    }

    /// Every data request `fake` received, in order; panics if one came in
    /// another HTTP version than this hop's, so that a test cannot pass on
    /// the other path by mistake.
    pub fn data_requests(self, fake: &FakeTruedat) -> Vec<RecordedRequest> {
        let requests = fake.data_requests();
        for request in &requests {
            let (method, uri, version) = (&request.method, &request.uri, request.version);
            assert_eq!(version, self.version(), "{self}: {method} {uri} reached Truedat as {version:?}");
        }
        requests
    }

    /// Data requests to `path` that reached `fake`, checked as in
    /// [`data_requests`](Self::data_requests).
    pub fn tries(self, fake: &FakeTruedat, path: &str) -> usize {
        self.data_requests(fake).iter().filter(|r| r.uri.path() == path).count()
    }

    /// A default fake over this hop and a proxy ready in front of it, after
    /// `adjust` changed the proxy's test configuration.
    pub async fn proxy(self, adjust: impl FnOnce(&mut Config)) -> (FakeTruedat, TestProxy) {
        let fake = self.fake(FakeConfig::default()).await;
        let proxy = TestProxy::ready(&fake, |config| {
            self.configure(config);
            adjust(config);
        })
        .await;
        (fake, proxy)
    }
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hop::Http1 => "HTTP/1.1 link",
            Hop::Http2 => "TLS, HTTP/2 pool",
        })
    }
}
