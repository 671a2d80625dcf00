//! Strict reading of the operator's PEM files (SPEC §4, "TLS material").
//!
//! `rustls-pki-types`' iterators skip what they cannot read: a block of a
//! label they do not know is passed over, and a caller that filters out
//! errors (as this proxy once did) turns a bundle cut short into the blocks
//! before the cut. A CA bundle holding a new CA followed by half of
//! Truedat's was so taken for a bundle of the new CA alone, and every new
//! connection then failed with `UnknownIssuer`. Here every block must parse
//! and be of a kind the file is for, or the whole file is invalid.

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file cannot be used; blocks are counted from 1, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("PEM block {0} ends before its END line: the file is cut short, or was read while being written")]
    Unterminated(usize),
    #[error("PEM block {0} has a malformed BEGIN line")]
    BadBegin(usize),
    #[error("PEM block {0} is not valid base64")]
    NotBase64(usize),
    #[error("PEM block {0} cannot be read: {1}")]
    Unreadable(usize, String),
    #[error("a \"{0}\" PEM block, of a kind not read here (only CERTIFICATE and private key blocks are)")]
    UnknownLabel(String),
    #[error("PEM block {0} is a {1}, not a certificate")]
    NotACertificate(usize, &'static str),
    #[error("PEM block {0} is not a valid X.509 certificate")]
    BadCertificate(usize),
    #[error("no certificate in the file")]
    NoCertificate,
    #[error("PEM block {0} is a {1}, not a private key")]
    NotAKey(usize, &'static str),
    #[error("no private key in the file")]
    NoKey,
    #[error("{0} private keys in the file, where one is expected")]
    SeveralKeys(usize),
}

/// Every certificate of `pem`, in order: at least one, each a valid X.509
/// certificate. `keys_too`: private key blocks may sit beside them (one
/// file holding a certificate and its key) and are passed over.
pub fn certificates(pem: &[u8], keys_too: bool) -> Result<Vec<CertificateDer<'static>>, Invalid> {
    let mut certificates = Vec::new();
    for (block, (kind, der)) in blocks(pem)?.into_iter().enumerate().map(|(i, b)| (i + 1, b)) {
        match kind {
            SectionKind::Certificate => {
                if x509_parser::parse_x509_certificate(&der).is_err() {
                    return Err(Invalid::BadCertificate(block));
                }
                certificates.push(CertificateDer::from(der));
            }
            kind if keys_too && is_key(kind) => {}
            kind => return Err(Invalid::NotACertificate(block, label(kind))),
        }
    }
    if certificates.is_empty() {
        return Err(Invalid::NoCertificate);
    }
    Ok(certificates)
}

/// The one private key of `pem`; certificate blocks may sit beside it.
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Invalid> {
    let mut keys = Vec::new();
    for (block, (kind, der)) in blocks(pem)?.into_iter().enumerate().map(|(i, b)| (i + 1, b)) {
        match PrivateKeyDer::from_pem(kind, der) {
            Some(key) => keys.push(key),
            None if kind == SectionKind::Certificate => {}
            None => return Err(Invalid::NotAKey(block, label(kind))),
        }
    }
    match keys.len() {
        0 => Err(Invalid::NoKey),
        1 => Ok(keys.remove(0)),
        n => Err(Invalid::SeveralKeys(n)),
    }
}

/// Every block of `pem` with its kind and DER bytes; text outside blocks
/// (such as OpenSSL's `subject=` lines in a bundle) is allowed, as RFC 7468
/// §2 says. The first block that does not parse makes the file invalid.
fn blocks(pem: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, Invalid> {
    if let Some(unknown) = begin_labels(pem).find(|label| SectionKind::try_from(*label).is_err()) {
        return Err(Invalid::UnknownLabel(String::from_utf8_lossy(unknown).into_owned()));
    }
    let mut blocks = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let block = blocks.len() + 1;
        blocks.push(item.map_err(|error| match error {
            rustls::pki_types::pem::Error::MissingSectionEnd { .. } => Invalid::Unterminated(block),
            rustls::pki_types::pem::Error::IllegalSectionStart { .. } => Invalid::BadBegin(block),
            rustls::pki_types::pem::Error::Base64Decode(_) => Invalid::NotBase64(block),
            other => Invalid::Unreadable(block, other.to_string()),
        })?);
    }
    Ok(blocks)
}

/// The labels of the well-formed BEGIN lines (`-----BEGIN LABEL-----`), as
/// `rustls-pki-types` reads them: at the start of a line, trailing blanks
/// ignored. A malformed one is reported by the parser itself.
fn begin_labels(pem: &[u8]) -> impl Iterator<Item = &[u8]> {
    pem.split(|b| *b == b'\n' || *b == b'\r').filter_map(|line| {
        line.strip_prefix(b"-----BEGIN ".as_slice())?.trim_ascii_end().strip_suffix(b"-----".as_slice())
    })
}

fn is_key(kind: SectionKind) -> bool {
    matches!(kind, SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey)
}

/// The PEM label of `kind`, for messages.
fn label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        _ => "block of another kind",
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    /// A self-signed certificate and its key, as PEM.
    fn pair(name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn half(text: &str) -> &str {
        &text[..text.len() / 2]
    }

    #[test]
    fn a_bundle_with_text_between_certificates_is_read_whole() {
        let ((a, _), (b, _)) = (pair("a"), pair("b"));
        let bundle = format!("# Truedat CA\nsubject=CN = a\n{a}\n\nsubject=CN = b\r\n{b}");
        assert_eq!(certificates(bundle.as_bytes(), false).unwrap().len(), 2);
    }

    #[test]
    fn one_bad_block_makes_the_file_invalid() {
        let ((a, key), (b, _)) = (pair("a"), pair("b"));
        let cut = format!("{a}{}", half(&b));
        assert_eq!(certificates(cut.as_bytes(), false), Err(Invalid::Unterminated(2)));
        let garbled = format!("{a}-----BEGIN CERTIFICATE-----\nMII*!\n-----END CERTIFICATE-----\n");
        assert_eq!(certificates(garbled.as_bytes(), false), Err(Invalid::NotBase64(2)));
        let not_der = format!("{a}-----BEGIN CERTIFICATE-----\nbm90IGRlcg==\n-----END CERTIFICATE-----\n");
        assert_eq!(certificates(not_der.as_bytes(), false), Err(Invalid::BadCertificate(2)));
        let bad_begin = format!("{a}-----BEGIN CERTIFICATE----\n");
        assert_eq!(certificates(bad_begin.as_bytes(), false), Err(Invalid::BadBegin(2)));
        let trusted = format!("{a}-----BEGIN TRUSTED CERTIFICATE-----\nbm8=\n-----END TRUSTED CERTIFICATE-----\n");
        assert_eq!(certificates(trusted.as_bytes(), false), Err(Invalid::UnknownLabel("TRUSTED CERTIFICATE".into())));
        let key_cut = format!("{key}{}", half(&key));
        assert_eq!(private_key(key_cut.as_bytes()).err(), Some(Invalid::Unterminated(2)));
    }

    #[test]
    fn each_file_holds_what_it_is_for() {
        let ((cert, key), (_, other_key)) = (pair("a"), pair("b"));
        let combined = format!("{cert}{key}");
        assert_eq!(certificates(combined.as_bytes(), false), Err(Invalid::NotACertificate(2, "PRIVATE KEY")));
        assert_eq!(certificates(combined.as_bytes(), true).unwrap().len(), 1, "a certificate with its key");
        assert!(private_key(combined.as_bytes()).is_ok(), "a key with its certificate");
        assert_eq!(certificates(key.as_bytes(), true), Err(Invalid::NoCertificate));
        assert_eq!(certificates(b"just text\n", false), Err(Invalid::NoCertificate));
        assert_eq!(certificates(b"", false), Err(Invalid::NoCertificate));
        assert_eq!(private_key(cert.as_bytes()).err(), Some(Invalid::NoKey));
        assert_eq!(private_key(format!("{key}{other_key}").as_bytes()).err(), Some(Invalid::SeveralKeys(2)));
        let csr = "-----BEGIN X509 CRL-----\nbm8=\n-----END X509 CRL-----\n";
        assert_eq!(private_key(format!("{key}{csr}").as_bytes()).err(), Some(Invalid::NotAKey(2, "X509 CRL")));
    }
}
