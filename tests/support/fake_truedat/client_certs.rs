//! Which client certificate each TLS connection presented, for the mutual-TLS
//! and rotation tests: "the fake saw the new serial" is read from here.
//!
//! Requiring a certificate is the server configuration's job
//! (`pki::mutual_tls_server_config`); this only records what the handshake
//! ended with, so a resumed session shows the identity it resumed.

use std::sync::Mutex;

use rustls::pki_types::CertificateDer;

use super::lock;

/// The serial of every TLS connection's client certificate, in order of
/// accepted handshakes; `None` for a connection without one.
#[derive(Default)]
pub(super) struct ClientCerts {
    serials: Mutex<Vec<Option<String>>>,
}

impl ClientCerts {
    /// Records one accepted handshake and the chain the client presented.
    pub(super) fn record(&self, chain: Option<&[CertificateDer<'_>]>) {
        let serial = chain.and_then(|chain| chain.first()).map(|cert| serial_of(cert));
        lock(&self.serials).push(serial);
    }

    pub(super) fn serials(&self) -> Vec<Option<String>> {
        lock(&self.serials).clone()
    }
}

/// A certificate's serial number as lowercase hex without separators (the
/// form `openssl x509 -serial` prints, in lower case); `?` if unparseable.
pub fn serial_of(cert: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, parsed)) => parsed.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => "?".to_owned(),
    }
}
