//! Test-only TLS material: a CA and a `localhost` certificate it signs (valid until 2126),
//! so tests can run the fake Truedat over HTTPS and point a client at [`CA_FILE`].
//!
//! The keys in `certs/` protect nothing; `certs/generate.sh` regenerates them.
//! Everything here uses the `ring` provider explicitly: the crate must never pull aws-lc-rs.

use std::sync::Arc;

use rustls::crypto::ring;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// PEM of the test CA, for building clients in-process.
pub const CA_PEM: &str = include_str!("certs/ca.pem");

/// Path of the test CA's PEM file, for configurations that take a file (`upstream.ca_file`).
pub const CA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/certs/ca.pem");

const SERVER_CERT_PEM: &str = include_str!("certs/localhost.pem");
const SERVER_KEY_PEM: &str = include_str!("certs/localhost.key");

/// ALPN protocols of a server that speaks HTTP/2 and HTTP/1.1, preferring HTTP/2.
pub const ALPN_H2_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A server configuration presenting the `localhost` certificate and offering `alpn`.
pub fn server_config(alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let certs = CertificateDer::pem_slice_iter(SERVER_CERT_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("the bundled localhost certificate is valid PEM");
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY_PEM.as_bytes()).expect("the bundled localhost key is valid PEM");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("the bundled key matches the bundled certificate");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client configuration that trusts only the test CA (no ALPN set).
pub fn client_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(CA_PEM.as_bytes()) {
        let cert = cert.expect("the bundled CA is valid PEM");
        roots.add(cert).expect("the bundled CA is a well-formed certificate");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
