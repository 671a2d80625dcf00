//! The password and the tokens (SPEC §2 `credentials.*`, §3, §5, §8): a
//! rotated password file is read at the next login, an unreadable one keeps
//! the proxy up and unready until it appears, and no byte the proxy prints or
//! answers ever holds the password, an access token or a refresh token.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;

use crate::support::client::{Client, Reply};
use crate::support::fake_truedat::{FakeConfig, FakeTruedat};
use crate::support::proxy::{BinaryProxy, TestProxy, config_file, fake, run_binary};
use crate::support::tap::Tap;
use crate::support::wait::wait_until;

/// The password the fake starts with, distinctive enough that finding it
/// anywhere is no coincidence.
pub(crate) const PASSWORD_A: &str = "pw-A-Zq8vR2xK7mLt";
/// The password after rotation.
const PASSWORD_B: &str = "pw-B-Hn4wJ9cY3pQs";
/// The fake's service user.
pub(crate) const USER: &str = "svc-proxy";

const READY: Duration = Duration::from_secs(10);

/// A password file laid out as Kubernetes mounts a Secret: `password` is a
/// symlink to `..data/password`, `..data` a symlink to a timestamped
/// directory, and a rotation swaps `..data` atomically.
struct SecretVolume {
    dir: tempfile::TempDir,
    version: u32,
}

impl SecretVolume {
    fn new(password: &str) -> SecretVolume {
        let mut volume = SecretVolume { dir: tempfile::tempdir().expect("a temporary directory"), version: 0 };
        volume.rotate(password);
        std::os::unix::fs::symlink("..data/password", volume.path()).expect("linking the password file");
        volume
    }

    /// What `credentials.password_file` names.
    fn path(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// Publishes `password` (with the trailing newline editors and `echo` leave).
    fn rotate(&mut self, password: &str) {
        self.version += 1;
        let version = format!("..2025_{}", self.version);
        let target = self.dir.path().join(&version);
        std::fs::create_dir(&target).expect("a version directory");
        std::fs::write(target.join("password"), format!("{password}\n")).expect("writing the password");
        let staged = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).expect("staging the new version");
        std::fs::rename(&staged, self.dir.path().join("..data")).expect("swapping the version in");
    }
}

/// The passwords in the login bodies the fake received, in order.
fn login_passwords(fake: &FakeTruedat) -> Vec<String> {
    fake.login_requests()
        .iter()
        .map(|login| {
            let body: serde_json::Value = serde_json::from_slice(&login.body).expect("login bodies are JSON");
            body["user"]["password"].as_str().expect("a password in the login body").to_owned()
        })
        .collect()
}

/// A rotated Kubernetes Secret takes effect without a restart: when Truedat
/// starts rejecting the old session, the re-login reads the new password and
/// the tool's request still succeeds.
#[tokio::test]
async fn a_rotated_password_file_is_read_at_the_next_login() {
    let fake = fake(|c| c.password = PASSWORD_A.to_owned()).await;
    let mut volume = SecretVolume::new(PASSWORD_A);
    let proxy = TestProxy::start(&fake, |c| {
        c.credentials.password = None;
        c.credentials.password_file = Some(volume.path());
    })
    .await;
    assert!(proxy.wait_ready(READY).await);
    assert_eq!(proxy.get("/api/before").await.status, 200);

    fake.set_password(PASSWORD_B);
    volume.rotate(PASSWORD_B);
    fake.revoke_all();
    let reply = proxy.get("/api/after").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(login_passwords(&fake), [PASSWORD_A, PASSWORD_B], "the trailing newline is not part of the password");
    proxy.stop().await;
}

/// How the password file is broken when the proxy starts.
#[derive(Debug, Clone, Copy)]
enum Broken {
    Missing,
    /// A directory where the file should be: unreadable even for root.
    Directory,
    Empty,
}

/// A missing, unreadable or empty password file is no crash: the proxy
/// serves (`/healthz` 200), is not ready (`/readyz` 503 "password file
/// unreadable"), answers tools 503 with that reason and `Retry-After`, sends
/// no login to Truedat, and becomes ready by itself (backoff retry) once the
/// file appears.
#[tokio::test]
async fn an_unreadable_password_file_keeps_the_proxy_unready_until_it_appears() {
    for broken in [Broken::Missing, Broken::Directory, Broken::Empty] {
        let fake = fake(|_| {}).await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("password");
        match broken {
            Broken::Missing => {}
            Broken::Directory => std::fs::create_dir(&file).expect("a directory"),
            Broken::Empty => std::fs::write(&file, "").expect("an empty file"),
        }
        let proxy = TestProxy::start(&fake, |c| {
            c.credentials.password = None;
            c.credentials.password_file = Some(file.clone());
            c.token.first_token_wait = "200ms".parse().unwrap();
        })
        .await;

        let reason = || async { proxy.client.get(&proxy.admin_url("/readyz")).await };
        let unready = wait_until(READY, || async {
            let readyz = reason().await;
            readyz.status == 503 && readyz.json()["errors"]["detail"] == "password file unreadable"
        })
        .await;
        assert!(unready, "{broken:?}: /readyz said {:?}", reason().await.text());
        assert_eq!(proxy.client.get(&proxy.admin_url("/healthz")).await.status, 200, "{broken:?}");
        let early = proxy.get("/api/data").await;
        assert_eq!(early.status, 503, "{broken:?}");
        assert!(early.header("retry-after").is_some(), "{broken:?}");
        assert_eq!(early.json()["errors"]["detail"], "no valid Truedat token: password file unreadable", "{broken:?}");
        assert_eq!(fake.login_attempts(), 0, "{broken:?}: a login was sent without a password");
        assert!(fake.data_requests().is_empty());

        if let Broken::Directory = broken {
            std::fs::remove_dir(&file).expect("removing the directory");
        }
        write_atomically(&file, &format!("{}\n", FakeConfig::default().password));
        assert!(proxy.wait_ready(READY).await, "{broken:?}: not ready after the file appeared");
        assert_eq!(fake.login_attempts(), 1, "{broken:?}");
        assert_eq!(proxy.get("/api/data").await.status, 200, "{broken:?}");
        proxy.stop().await;
    }
}

/// Writes `text` to `path` through a rename, so no reader sees half of it.
fn write_atomically(path: &Path, text: &str) {
    let staged = path.with_extension("tmp");
    std::fs::write(&staged, text).expect("writing the staged file");
    std::fs::rename(&staged, path).expect("renaming the staged file");
}

// ---------------------------------------------------------------------------
// The secret scan

/// Where the binary gets its password from in a scanned run.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// `TRUEDAT_PROXY_CREDENTIALS__PASSWORD`.
    Env,
    /// `credentials.password_file`, rotated during the run.
    File,
}

/// Everything a client or an operator saw of one run.
#[derive(Default)]
struct Seen {
    /// `(what, text)`: each answer given to a tool or a probe.
    answers: Vec<(String, String)>,
}

impl Seen {
    /// An answer the proxy made itself (errors, admin endpoints): all of it.
    fn own(&mut self, what: &str, reply: Reply) -> Reply {
        self.answers.push((what.to_owned(), format!("{}\n{}\n{}", reply.status, headers_text(&reply), reply.text())));
        reply
    }

    /// Truedat's answer passed through: its headers, which the proxy edits.
    /// The body is Truedat's own (the fake's data routes echo the request,
    /// bearer included) and passes untouched.
    fn forwarded(&mut self, what: &str, reply: Reply) -> Reply {
        self.answers.push((what.to_owned(), format!("{}\n{}", reply.status, headers_text(&reply))));
        reply
    }
}

fn headers_text(reply: &Reply) -> String {
    reply.headers.iter().map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes()))).collect()
}

/// A whole life of the real binary: startup, traffic, Truedat cut off (502),
/// a revocation healed by a login and a replay, a period of rejected
/// credentials (503), recovery, and SIGTERM with logout. Then every byte it
/// printed and every answer it gave is searched for the passwords, every
/// access and refresh token Truedat handed out, and their signatures.
async fn scan_a_full_life(level: &str, source: Source) {
    let fake = fake(|c| c.password = PASSWORD_A.to_owned()).await;
    let tap = Tap::start(fake.addr()).await;
    let mut volume = SecretVolume::new(PASSWORD_A);
    let mut toml = format!(
        "listen.address = \"127.0.0.1:0\"\nadmin.address = \"127.0.0.1:0\"\nupstream.url = \"{}\"\n\
         credentials.user_name = \"{USER}\"\ntoken.retry_initial = \"50ms\"\ntoken.retry_max = \"200ms\"\n\
         token.login_timeout = \"1s\"\ntoken.first_token_wait = \"300ms\"\nshutdown.drain_timeout = \"5s\"\n\
         log.level = \"{level}\"\n",
        tap.url()
    );
    let mut env = Vec::new();
    match source {
        Source::Env => env.push(("TRUEDAT_PROXY_CREDENTIALS__PASSWORD", PASSWORD_A)),
        Source::File => toml.push_str(&format!("credentials.password_file = {:?}\n", volume.path())),
    }
    let mut binary = BinaryProxy::spawn(&toml, &env).await;
    let client = Client::new();
    let mut seen = Seen::default();
    let get = |path: &str| {
        let (client, url) = (client.clone(), binary.url(path));
        async move { client.get(&url).await }
    };
    let readyz = || {
        let (client, url) = (client.clone(), binary.admin_url("/readyz"));
        async move { client.get(&url).await }
    };
    let ready = || async { readyz().await.status == 200 };
    assert!(wait_until(READY, ready).await, "not ready; output:\n{}", binary.output());

    // Ordinary traffic, some of it carrying the tool's own credentials.
    assert_eq!(seen.forwarded("GET", get("/api/data_structures/1?x=1").await).status, 200);
    let upload = client.call(Method::POST, &binary.url("/api/upload"), Bytes::from_static(b"{\"a\":1}")).await;
    assert_eq!(seen.forwarded("POST", upload).status, 200);
    let own = Request::get(binary.url("/api/cookies"))
        .header("authorization", "Bearer the-tools-own")
        .header("cookie", "_td_refresh=the-tools-own; theme=dark")
        .body(Full::default())
        .unwrap();
    assert_eq!(seen.forwarded("cookies", client.send(own).await).status, 200);

    // Truedat unreachable: 502.
    tap.set_cut(true);
    assert_eq!(seen.own("cut off", get("/api/while-cut").await).status, 502);
    tap.set_cut(false);
    assert!(wait_until(READY, || async { get("/api/back").await.status == 200 }).await);

    // The session revoked: one login, the request replayed.
    fake.revoke_all();
    assert_eq!(seen.forwarded("revoked", get("/api/after-revocation").await).status, 200);
    assert_eq!(fake.logins(), 2);

    // Credentials rejected for a while: 503s, /readyz 503.
    let attempts = fake.login_attempts();
    fake.set_password(PASSWORD_B);
    fake.revoke_all();
    assert_eq!(seen.own("rejected", get("/api/while-rejected").await).status, 503);
    assert!(wait_until(READY, || async { fake.login_attempts() >= attempts + 3 }).await, "no retries");
    assert_eq!(seen.own("still rejected", get("/api/still-rejected").await).status, 503);
    assert_eq!(seen.own("readyz", readyz().await).status, 503);

    // Recovery: Truedat's password back (env), or the Secret rotated (file).
    match source {
        Source::Env => fake.set_password(PASSWORD_A),
        Source::File => volume.rotate(PASSWORD_B),
    }
    assert!(wait_until(READY, ready).await, "no recovery; output:\n{}", binary.output());
    assert_eq!(seen.forwarded("recovered", get("/api/recovered").await).status, 200);
    seen.own("metrics", client.get(&binary.admin_url("/metrics")).await);

    binary.signal("TERM");
    let status = binary.wait_exit(READY).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", binary.output());
    assert_eq!(fake.logouts(), 1, "the session was logged out at shutdown");

    let secrets = Secrets::gather(&fake, &tap);
    assert!(secrets.access >= 3 && secrets.refresh >= 3, "too few tokens gathered: {secrets:?}");
    let output = binary.output();
    assert!(output.contains("\"level\":\"DEBUG\""), "no debug lines: the scan would prove little:\n{output}");
    secrets.assert_absent(&format!("everything the binary printed at log.level = {level:?}"), &output);
    for (what, text) in &seen.answers {
        secrets.assert_absent(&format!("the answer to {what}"), text);
    }
}

#[tokio::test]
async fn no_secret_in_any_output_of_a_full_run_at_debug_level() {
    scan_a_full_life("debug", Source::Env).await;
}

#[tokio::test]
async fn no_secret_in_any_output_of_a_full_run_at_trace_level() {
    scan_a_full_life("trace", Source::File).await;
}

/// The secrets of one run, as Truedat and the tools saw them.
#[derive(Debug)]
pub(crate) struct Secrets {
    /// `(kind, value)`.
    values: BTreeSet<(&'static str, String)>,
    access: usize,
    refresh: usize,
}

impl Secrets {
    /// Both passwords; every bearer the data routes received; every token and
    /// refresh token in Truedat's answers and the proxy's session calls.
    pub(crate) fn gather(fake: &FakeTruedat, tap: &Tap) -> Secrets {
        let mut access = BTreeSet::new();
        let mut refresh = BTreeSet::new();
        for request in fake.data_requests() {
            if let Some(bearer) = request.headers.get("authorization").and_then(|v| v.to_str().ok()) {
                access.extend(bearer.strip_prefix("Bearer ").map(str::to_owned));
            }
        }
        let mut passwords_sent = false;
        for transcript in tap.transcripts() {
            let requests = String::from_utf8_lossy(&transcript.requests);
            let responses = String::from_utf8_lossy(&transcript.responses);
            passwords_sent |= requests.contains(PASSWORD_A);
            access.extend(values_after(&requests, "authorization: bearer "));
            access.extend(values_after(&responses, "\"token\":\""));
            refresh.extend(values_after(&responses, "\"refresh_token\":\""));
            refresh.extend(values_after(&responses, "_td_refresh="));
            refresh.extend(values_after(&requests, "_td_refresh="));
        }
        assert!(passwords_sent, "the tap saw no login: the transcripts are not what they should be");
        let (access, refresh): (BTreeSet<_>, BTreeSet<_>) =
            (access.into_iter().filter(|t| is_jwt(t)).collect(), refresh.into_iter().filter(|t| is_jwt(t)).collect());
        let mut values: BTreeSet<(&'static str, String)> =
            [("password A", PASSWORD_A.to_owned()), ("password B", PASSWORD_B.to_owned())].into();
        for (kind, tokens) in [("access token", &access), ("refresh token", &refresh)] {
            for token in tokens {
                values.insert((kind, token.clone()));
                let signature = token.rsplit('.').next().expect("a JWT has parts").to_owned();
                values.insert((
                    if kind == "access token" { "access token signature" } else { "refresh token signature" },
                    signature,
                ));
            }
        }
        Secrets { values, access: access.len(), refresh: refresh.len() }
    }

    /// Fails naming the kind of secret and the line it was found in.
    pub(crate) fn assert_absent(&self, what: &str, text: &str) {
        for (kind, value) in &self.values {
            if let Some(line) = text.lines().find(|line| line.contains(value.as_str())) {
                panic!("{what} holds a {kind}, in this line:\n{line}");
            }
        }
    }
}

/// Every value that follows `marker` (case-insensitive) in `text`, up to the
/// next quote, semicolon or whitespace.
fn values_after(text: &str, marker: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let marker = marker.to_ascii_lowercase();
    lower
        .match_indices(&marker)
        .map(|(at, _)| {
            let rest = &text[at + marker.len()..];
            let end = rest.find(|c: char| c == '"' || c == ';' || c.is_whitespace()).unwrap_or(rest.len());
            rest[..end].to_owned()
        })
        .filter(|value| !value.is_empty())
        .collect()
}

/// Three non-trivial base64url parts separated by dots.
fn is_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| p.len() >= 10 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

// ---------------------------------------------------------------------------
// --check-config and configuration errors

/// Runs the binary with `args` and `env`; returns its exit code and all it printed.
async fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (status, stdout, stderr) = run_binary(args, env).await;
    (status.code(), format!("{stdout}{stderr}"))
}

fn assert_no_password(what: &str, output: &str, secret: &str) {
    assert!(!output.contains(secret), "{what} printed the password:\n{output}");
}

/// `--check-config` shows that a password is set, never what it is: from
/// env, from the file, or from a password file (which it does not read).
#[tokio::test]
async fn check_config_never_prints_the_password() {
    let base = format!("upstream.url = \"https://truedat.example.com\"\ncredentials.user_name = \"{USER}\"\n");
    let env = [
        ("TRUEDAT_PROXY_UPSTREAM__URL", "https://truedat.example.com"),
        ("TRUEDAT_PROXY_CREDENTIALS__USER_NAME", USER),
        ("TRUEDAT_PROXY_CREDENTIALS__PASSWORD", PASSWORD_A),
        ("TRUEDAT_PROXY_LOG__LEVEL", "trace"),
    ];
    let (code, output) = run(&["--check-config"], &env).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("password = \"<redacted>\""), "{output}");
    assert_no_password("--check-config with the password in env", &output, PASSWORD_A);

    let inline = config_file(&format!("{base}credentials.password = \"{PASSWORD_A}\"\n"));
    let (code, output) = run(&["--check-config", "--config", path_text(inline.path())], &[]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("password = \"<redacted>\""), "{output}");
    assert_no_password("--check-config with the password in the file", &output, PASSWORD_A);

    let volume = SecretVolume::new(PASSWORD_A);
    let with_file = config_file(&format!("{base}credentials.password_file = {:?}\n", volume.path()));
    let (code, output) = run(&["--check-config", "--config", path_text(with_file.path())], &[]).await;
    assert_eq!(code, Some(0), "{output}");
    assert_no_password("--check-config with a password file", &output, PASSWORD_A);
}

/// A configuration that cannot be used is reported key by key, and the
/// report never quotes the password, whatever went wrong around it: a
/// conflicting key, a typo in the key, a TOML syntax error on the password's
/// own line, a password written as a bare number, or a bad value in another
/// variable next to it.
#[tokio::test]
async fn configuration_errors_never_print_the_password() {
    let base = format!("upstream.url = \"https://truedat.example.com\"\ncredentials.user_name = \"{USER}\"\n");
    let numeric = "73105928461";
    let bare = PASSWORD_A.replace('-', "_");
    let cases = [
        (
            "password and password_file",
            format!("credentials.password = \"{PASSWORD_A}\"\ncredentials.password_file = \"/x\"\n"),
            PASSWORD_A.to_owned(),
        ),
        ("a misspelt password key", format!("credentials.pasword = \"{PASSWORD_A}\"\n"), PASSWORD_A.to_owned()),
        ("an unterminated password string", format!("credentials.password = \"{PASSWORD_A}\n"), PASSWORD_A.to_owned()),
        (
            "a password with a bad escape",
            format!("credentials.password = \"{PASSWORD_A}\\q\"\n"),
            PASSWORD_A.to_owned(),
        ),
        ("a password as a bare number", format!("credentials.password = {numeric}\n"), numeric.to_owned()),
        ("a password as a bare word", format!("credentials.password = {bare}\n"), bare.clone()),
    ];
    let mut leaks = Vec::new();
    for (what, tail, secret) in &cases {
        let file = config_file(&format!("{base}{tail}"));
        for args in
            [vec!["--check-config", "--config", path_text(file.path())], vec!["--config", path_text(file.path())]]
        {
            let (code, output) = run(&args, &[]).await;
            assert_eq!(code, Some(2), "{what} ({args:?}): {output}");
            if output.contains(secret.as_str()) {
                leaks.push(format!("{what} ({args:?}):\n{output}"));
            }
        }
    }
    let env = [
        ("TRUEDAT_PROXY_UPSTREAM__URL", "https://truedat.example.com"),
        ("TRUEDAT_PROXY_CREDENTIALS__USER_NAME", USER),
        ("TRUEDAT_PROXY_CREDENTIALS__PASSWORD", PASSWORD_A),
        ("TRUEDAT_PROXY_TOKEN__LOGIN_TIMEOUT", "soon"),
    ];
    let (code, output) = run(&["--check-config"], &env).await;
    assert_eq!(code, Some(2), "{output}");
    if output.contains(PASSWORD_A) {
        leaks.push(format!("a bad env value next to the password in env:\n{output}"));
    }
    assert!(leaks.is_empty(), "configuration errors printed the password:\n{}", leaks.join("\n---\n"));
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}
