//! TLS material towards Truedat (SPEC §4, "TLS material"): the trusted roots
//! (system roots plus `upstream.ca_file`) and the optional client certificate
//! and key, turned into a rustls `ClientConfig` that is replaced, without a
//! restart, when those files change.
//!
//! How a rotation travels:
//! - [`Material`] holds the current `ClientConfig` in an `ArcSwap`; the
//!   connector (`upstream::Connector`) loads it once per *new* connection, so
//!   established connections finish with the material they were opened with.
//! - [`Material::watch`] polls the files every [`POLL_INTERVAL`]. Kubernetes
//!   updates a mounted Secret or ConfigMap by renaming a `..data` symlink, so
//!   an inotify watch on the file itself never fires; a poll that follows the
//!   symlinks and compares each file's stamp (device, inode, size, mtime,
//!   ctime), then its bytes, sees every kind of update: atomic swaps, in-place
//!   rewrites, cert-manager's CSI driver.
//! - Each new `ClientConfig` comes with a fresh session-resumption cache: a
//!   resumed TLS session skips both the server's certificate check and the
//!   client certificate, so a ticket from before the rotation must not be
//!   used after it.
//! - Material that changed but cannot be used (unreadable; a PEM block that
//!   does not parse, however many good ones come before it, see [`pem`]; no
//!   certificate; a key that does not fit its certificate) is logged at error
//!   level once per change, and the previous material stays in use. At
//!   startup the same problems are configuration errors.
//!
//! There is deliberately no option to turn certificate verification off.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;

use crate::config::Upstream;
use crate::{pem, telemetry};

/// How often the files are checked: well inside SPEC's 10 s, and cheap (a
/// `stat` per file; a file is read only when its stamp changed).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// ALPN offered to Truedat: HTTP/2 when its ingress speaks it, else HTTP/1.1.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

const CA_KEY: &str = "upstream.ca_file";
const CERT_KEY: &str = "upstream.client_cert_file";
const KEY_KEY: &str = "upstream.client_key_file";

/// Why TLS material cannot be used; each names the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{key}: cannot read {path}: {reason}")]
    File { key: &'static str, path: String, reason: String },
    #[error("{key}: {path}: {problem}")]
    Pem { key: &'static str, path: String, problem: pem::Invalid },
    #[error("upstream.ca_file: {path}: certificate {index} cannot be a trust anchor: {reason}")]
    Anchor { path: String, index: usize, reason: String },
    #[error("upstream.client_key_file: {path}: the key cannot be used: {reason}")]
    Key { path: String, reason: rustls::Error },
    #[error(
        "upstream.client_key_file: {path}: the key does not fit the certificate of upstream.client_cert_file ({reason})"
    )]
    Mismatch { path: String, reason: rustls::Error },
    #[error("upstream.client_key_file: the key does not fit the certificate: {0}")]
    ClientAuth(rustls::Error),
    #[error("no trusted CA certificates: the system store is empty and upstream.ca_file is unset")]
    NoRoots,
}

/// The TLS client configuration in use, and what it was built from.
pub struct Material {
    current: ArcSwap<ClientConfig>,
    files: Files,
    /// System roots, read once at startup (hundreds of files): a rotation
    /// only re-reads the operator's files.
    system_roots: RootCertStore,
    /// The system store was wanted but empty: `upstream.ca_file` must supply
    /// every root.
    need_ca_file: bool,
    /// The file contents the first configuration was built from.
    loaded: Contents,
}

/// The configured files, by role.
#[derive(Clone, Debug)]
struct Files {
    ca: Option<PathBuf>,
    /// Certificate and key: validation guarantees both or neither.
    client: Option<(PathBuf, PathBuf)>,
}

/// What a read of every configured file gave, by role.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Contents {
    ca: Option<Seen>,
    cert: Option<Seen>,
    key: Option<Seen>,
}

/// One file as read: its bytes, or why it could not be read.
#[derive(Clone, PartialEq, Eq)]
enum Seen {
    Bytes(Vec<u8>),
    Unreadable(String),
}

/// Only the size: the bytes may be a private key.
impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            Seen::Unreadable(reason) => f.debug_tuple("Unreadable").field(reason).finish(),
        }
    }
}

/// A built configuration and the notAfter of its client certificate.
struct Built {
    config: ClientConfig,
    client_cert_not_after: Option<i64>,
}

impl Material {
    /// Reads the files named in `[upstream]` and builds the first
    /// configuration. `system_roots`: whether the system's CA store is read
    /// too (only needed for https; a bad `ca_file` is reported either way).
    pub fn load(settings: &Upstream, system_roots: bool) -> Result<Material, Error> {
        let files = Files {
            ca: settings.ca_file.clone(),
            client: settings.client_cert_file.clone().zip(settings.client_key_file.clone()),
        };
        let (roots, need_ca_file) = if system_roots { read_system_roots() } else { (RootCertStore::empty(), false) };
        let loaded = files.read();
        let built = build(&files, &loaded, &roots, need_ca_file)?;
        if let Some(not_after) = built.client_cert_not_after {
            telemetry::record_client_cert_expiry(not_after);
        }
        Ok(Material { current: ArcSwap::from_pointee(built.config), files, system_roots: roots, need_ca_file, loaded })
    }

    /// The configuration a new connection should use.
    pub fn current(&self) -> Arc<ClientConfig> {
        self.current.load_full()
    }

    /// Whether any file is watched at all (no file, no task).
    fn has_files(&self) -> bool {
        self.files.ca.is_some() || self.files.client.is_some()
    }

    /// Polls the files every `every` until `stop`, swapping in new material
    /// when it changed and is usable.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        if !self.has_files() {
            return;
        }
        let mut poll = Poll::new(self.loaded.clone());
        let mut tick = tokio::time::interval(every);
        // A stalled runtime should not make up for missed checks in a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.check(&mut poll),
                () = stop.cancelled() => return,
            }
        }
    }

    /// One poll: re-read what changed and, if the contents differ from the
    /// last poll's, try to build and swap in new material.
    fn check(&self, poll: &mut Poll) {
        let Some(contents) = poll.observe(&self.files) else {
            return;
        };
        match build(&self.files, &contents, &self.system_roots, self.need_ca_file) {
            Ok(built) => {
                let changed = changed_keys(&poll.in_use, &contents);
                self.current.store(Arc::new(built.config));
                if let Some(not_after) = built.client_cert_not_after {
                    telemetry::record_client_cert_expiry(not_after);
                }
                tracing::info!(
                    files = %changed.join(", "),
                    client_cert_not_after = built.client_cert_not_after,
                    "upstream TLS material reloaded; new connections use it"
                );
                poll.in_use = contents;
            }
            Err(error) => tracing::error!(
                error = %error,
                "upstream TLS material changed but cannot be used; new connections keep the previous material"
            ),
        }
    }
}

/// The watch task's memory between polls.
struct Poll {
    /// What the last poll saw; a change against it triggers one attempt (so
    /// one error line per change, however long a bad file stays).
    seen: Contents,
    /// What the configuration in use was built from, for the log line.
    in_use: Contents,
    /// Each file's stamp at the last poll: an unchanged stamp skips the read.
    stamps: [Option<Stamp>; 3],
}

/// What `stat` (following symlinks) says of a file. Any write or rename
/// changes one of these; ctime cannot be set back by a writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

impl Poll {
    fn new(loaded: Contents) -> Poll {
        Poll { seen: loaded.clone(), in_use: loaded, stamps: [None; 3] }
    }

    /// The contents when they differ from the last poll's, else `None`. Files
    /// whose stamp did not change are not read again.
    fn observe(&mut self, files: &Files) -> Option<Contents> {
        let mut now = self.seen.clone();
        let slots =
            [(&files.ca_path(), &mut now.ca), (&files.cert_path(), &mut now.cert), (&files.key_path(), &mut now.key)];
        for (i, (path, seen)) in slots.into_iter().enumerate() {
            let Some(path) = path else { continue };
            let stamp = Stamp::of(path);
            if stamp.is_some() && stamp == self.stamps[i] {
                continue;
            }
            self.stamps[i] = stamp;
            *seen = Some(read(path));
        }
        if now == self.seen {
            return None;
        }
        self.seen = now.clone();
        Some(now)
    }
}

/// The keys whose files differ between `before` and `after`.
fn changed_keys(before: &Contents, after: &Contents) -> Vec<&'static str> {
    [(CA_KEY, &before.ca, &after.ca), (CERT_KEY, &before.cert, &after.cert), (KEY_KEY, &before.key, &after.key)]
        .into_iter()
        .filter(|(_, b, a)| b != a)
        .map(|(key, _, _)| key)
        .collect()
}

impl Files {
    fn ca_path(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    fn cert_path(&self) -> Option<&Path> {
        self.client.as_ref().map(|(cert, _)| cert.as_path())
    }

    fn key_path(&self) -> Option<&Path> {
        self.client.as_ref().map(|(_, key)| key.as_path())
    }

    /// Reads every configured file.
    fn read(&self) -> Contents {
        Contents { ca: self.ca_path().map(read), cert: self.cert_path().map(read), key: self.key_path().map(read) }
    }
}

fn read(path: &Path) -> Seen {
    match std::fs::read(path) {
        Ok(bytes) => Seen::Bytes(bytes),
        Err(e) => Seen::Unreadable(e.to_string()),
    }
}

/// The bytes of a file, or the error naming its key.
fn bytes<'a>(key: &'static str, path: &Path, seen: Option<&'a Seen>) -> Result<&'a [u8], Error> {
    match seen {
        Some(Seen::Bytes(bytes)) => Ok(bytes),
        Some(Seen::Unreadable(reason)) => {
            Err(Error::File { key, path: path.display().to_string(), reason: reason.clone() })
        }
        None => Err(Error::File { key, path: path.display().to_string(), reason: "not read".to_owned() }),
    }
}

/// A client configuration from `contents`: `system_roots` plus the CA file,
/// and the client certificate when one is configured.
fn build(files: &Files, contents: &Contents, system_roots: &RootCertStore, need_ca_file: bool) -> Result<Built, Error> {
    let mut roots = system_roots.clone();
    match files.ca_path() {
        Some(path) => add_ca_file(&mut roots, path, bytes(CA_KEY, path, contents.ca.as_ref())?)?,
        None if need_ca_file => return Err(Error::NoRoots),
        None => {}
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A new builder also means a new, empty session-resumption cache.
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots);
    let (mut config, client_cert_not_after) = match &files.client {
        Some((cert_path, key_path)) => {
            let chain = pem::certificates(bytes(CERT_KEY, cert_path, contents.cert.as_ref())?, true)
                .map_err(|problem| invalid(CERT_KEY, cert_path, problem))?;
            let not_after = not_after(&chain[0]);
            let key = pem::private_key(bytes(KEY_KEY, key_path, contents.key.as_ref())?)
                .map_err(|problem| invalid(KEY_KEY, key_path, problem))?;
            check_fit(&chain, &key, key_path, &provider)?;
            (builder.with_client_auth_cert(chain, key).map_err(Error::ClientAuth)?, Some(not_after))
        }
        None => (builder.with_no_client_auth(), None),
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Built { config, client_cert_not_after })
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path, pem: &[u8]) -> Result<(), Error> {
    let certificates = pem::certificates(pem, false).map_err(|problem| invalid(CA_KEY, path, problem))?;
    for (index, cert) in certificates.into_iter().enumerate() {
        roots.add(cert).map_err(|e| Error::Anchor {
            path: path.display().to_string(),
            index: index + 1,
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

fn invalid(key: &'static str, path: &Path, problem: pem::Invalid) -> Error {
    Error::Pem { key, path: path.display().to_string(), problem }
}

/// The key must be the certificate's (SPEC §4): rustls only refuses a key it
/// can prove foreign, so a key whose public half it cannot tell is refused
/// here too, rather than failing every handshake later.
fn check_fit(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    key_path: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(), Error> {
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|reason| Error::Key { path: key_path.display().to_string(), reason })?;
    CertifiedKey::new(chain.to_vec(), signing)
        .keys_match()
        .map_err(|reason| Error::Mismatch { path: key_path.display().to_string(), reason })
}

/// The certificate's notAfter as Unix seconds (`pem::certificates` has
/// checked that it parses).
fn not_after(cert: &CertificateDer<'_>) -> i64 {
    x509_parser::parse_x509_certificate(cert).map_or(i64::MAX, |(_, parsed)| parsed.validity().not_after.timestamp())
}

/// The system's CA store, and whether it was empty.
fn read_system_roots() -> (RootCertStore, bool) {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(error = %error, "could not load some system CA certificates");
    }
    let mut roots = RootCertStore::empty();
    let added = roots.add_parsable_certificates(native.certs).0;
    (roots, added == 0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    /// A self-signed certificate (usable as a CA) and its key, as PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn ca_only(path: &Path) -> Files {
        Files { ca: Some(path.to_owned()), client: None }
    }

    #[test]
    fn a_poll_reports_changed_content_once_and_ignores_a_rewrite_of_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "one").unwrap();
        let files = ca_only(&path);
        let mut poll = Poll::new(files.read());
        assert_eq!(poll.observe(&files), None, "the first poll sees what was loaded");

        std::fs::write(&path, "two").unwrap();
        assert_eq!(poll.observe(&files).unwrap().ca, Some(Seen::Bytes(b"two".to_vec())));
        assert_eq!(poll.observe(&files), None, "a change is reported once");

        std::fs::write(&path, "two").unwrap();
        assert_eq!(poll.observe(&files), None, "same bytes, new stamp: no change");
    }

    #[test]
    fn a_kubernetes_style_symlink_swap_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (version, content) in [("..v1", "old"), ("..v2", "new")] {
            std::fs::create_dir(root.join(version)).unwrap();
            std::fs::write(root.join(version).join("ca.crt"), content).unwrap();
        }
        symlink("..v1", root.join("..data")).unwrap();
        symlink("..data/ca.crt", root.join("ca.crt")).unwrap();
        let files = ca_only(&root.join("ca.crt"));
        let mut poll = Poll::new(files.read());
        assert_eq!(poll.observe(&files), None);

        symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        assert_eq!(poll.observe(&files).unwrap().ca, Some(Seen::Bytes(b"new".to_vec())));
    }

    #[test]
    fn a_vanished_file_is_one_change_and_its_return_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "one").unwrap();
        let files = ca_only(&path);
        let mut poll = Poll::new(files.read());
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(poll.observe(&files).unwrap().ca, Some(Seen::Unreadable(_))));
        assert_eq!(poll.observe(&files), None, "still missing: nothing new");
        std::fs::write(&path, "one").unwrap();
        assert_eq!(poll.observe(&files).unwrap().ca, Some(Seen::Bytes(b"one".to_vec())));
    }

    #[test]
    fn unusable_material_is_an_error_naming_the_key() {
        let (cert, key) = self_signed("client");
        let (_, other_key) = self_signed("someone else");
        let files = Files { ca: Some("ca.pem".into()), client: Some(("tls.crt".into(), "tls.key".into())) };
        let contents = |ca: &str, cert: &str, key: &str| Contents {
            ca: Some(Seen::Bytes(ca.as_bytes().to_vec())),
            cert: Some(Seen::Bytes(cert.as_bytes().to_vec())),
            key: Some(Seen::Bytes(key.as_bytes().to_vec())),
        };
        let roots = RootCertStore::empty();
        let built = build(&files, &contents(&cert, &cert, &key), &roots, true).unwrap();
        assert!(built.client_cert_not_after.is_some());
        assert_eq!(built.config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);

        let error = |c: Contents| build(&files, &c, &roots, true).err().unwrap().to_string();
        assert!(error(contents("garbage", &cert, &key)).starts_with("upstream.ca_file: "));
        assert!(error(contents(&cert, "garbage", &key)).starts_with("upstream.client_cert_file: "));
        assert!(error(contents(&cert, &cert, "garbage")).starts_with("upstream.client_key_file: "));
        assert!(error(contents(&cert, &cert, &other_key)).starts_with("upstream.client_key_file: "));
        let mut unreadable = contents(&cert, &cert, &key);
        unreadable.key = Some(Seen::Unreadable("permission denied".into()));
        assert_eq!(error(unreadable), "upstream.client_key_file: cannot read tls.key: permission denied");
    }

    #[test]
    fn without_a_ca_file_an_empty_system_store_is_an_error() {
        let files = Files { ca: None, client: None };
        let empty = RootCertStore::empty();
        assert!(matches!(build(&files, &Contents::default(), &empty, true), Err(Error::NoRoots)));
        assert!(build(&files, &Contents::default(), &empty, false).is_ok());
    }

    #[test]
    fn changed_keys_name_the_files_that_differ() {
        let a = Contents { ca: Some(Seen::Bytes(b"a".to_vec())), cert: None, key: None };
        let b = Contents { ca: Some(Seen::Bytes(b"b".to_vec())), cert: None, key: None };
        assert_eq!(changed_keys(&a, &b), [CA_KEY]);
        assert!(changed_keys(&a, &a).is_empty());
    }
}
