//! `truedat-auth-proxy wait` (SPEC §1), the real binary against proxies run
//! in this process: exit 0 once `/readyz` answers 200, 1 after `--timeout`
//! with one line naming the last reason seen, 2 for an invalid
//! `admin.address` or `--timeout`. Only `admin.address` is read, from the
//! file and the environment, so an environment with nothing else works.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::fake_truedat::LoginMode;
use crate::support::proxy::{BINARY, TestProxy, config_file, fake, run_binary};

/// Bound for a proxy to log in on a loaded machine.
const READY: Duration = Duration::from_secs(10);

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.local_addr().expect("a bound listener has an address").port()
}

/// Runs `wait` with `args` and only `env` in the environment; returns
/// (exit code, stderr lines).
async fn wait(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
    let mut all = vec!["wait"];
    all.extend_from_slice(args);
    let (status, _stdout, stderr) = run_binary(&all, env).await;
    (status.code(), stderr.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect())
}

/// `admin.address = "ADDR"` in a temporary TOML file.
fn admin_file(addr: &str) -> tempfile::NamedTempFile {
    config_file(&format!("[admin]\naddress = \"{addr}\"\n"))
}

#[tokio::test]
async fn without_a_proxy_it_exits_1_naming_that_nothing_answered() {
    let addr = format!("127.0.0.1:{}", free_port());
    // Environment only, and nothing but admin.address: no upstream, no credentials.
    let started = Instant::now();
    let (code, lines) = wait(&["--timeout", "1s"], &[("TRUEDAT_PROXY_ADMIN__ADDRESS", &addr)]).await;
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("nothing answered") && lines[0].contains(&addr), "{lines:?}");
    assert!(lines[0].contains("1s"), "the line names the timeout: {lines:?}");
    assert!(started.elapsed() >= Duration::from_secs(1), "it gave up before --timeout");
}

#[tokio::test]
async fn an_unready_proxy_makes_it_exit_1_with_the_readyz_reason() {
    let fake = fake(|c| c.password = "another-password".to_owned()).await;
    let proxy = TestProxy::start(&fake, |_| {}).await;
    let file = admin_file(&proxy.admin.to_string());
    let path = file.path().to_str().expect("a UTF-8 temporary path");
    let (code, lines) = wait(&["--config", path, "--timeout", "2s"], &[]).await;
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("503") && lines[0].contains("credentials rejected"), "{lines:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_ready_proxy_makes_it_exit_0() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::start(&fake, |_| {}).await;
    assert!(proxy.wait_ready(READY).await);
    let file = admin_file(&proxy.admin.to_string());
    let path = file.path().to_str().expect("a UTF-8 temporary path");
    // The file through TRUEDAT_PROXY_CONFIG, as in a container's environment.
    let (code, lines) = wait(&[], &[("TRUEDAT_PROXY_CONFIG", path)]).await;
    assert_eq!((code, lines.len()), (Some(0), 0), "{lines:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn an_unspecified_admin_address_is_reached_on_loopback() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::start(&fake, |c| c.admin.address = "0.0.0.0:0".parse().expect("an address")).await;
    assert!(ready_on_loopback(&proxy).await);
    let addr = format!("0.0.0.0:{}", proxy.admin.port());
    let (code, lines) = wait(&["--timeout", "5s"], &[("TRUEDAT_PROXY_ADMIN__ADDRESS", &addr)]).await;
    assert_eq!(code, Some(0), "{lines:?}");
    proxy.stop().await;
}

/// The proxy's `/readyz` answers 200 on 127.0.0.1 (its admin listener is on
/// every interface).
async fn ready_on_loopback(proxy: &TestProxy) -> bool {
    let url = format!("http://127.0.0.1:{}/readyz", proxy.admin.port());
    crate::support::wait::wait_until(READY, || async { proxy.client.get(&url).await.status == 200 }).await
}

#[tokio::test]
async fn it_returns_as_soon_as_the_proxy_becomes_ready() {
    let fake = fake(|_| {}).await;
    fake.set_login_mode(LoginMode::Hang);
    let proxy = TestProxy::start(&fake, |_| {}).await;
    let addr = proxy.admin.to_string();
    let mut waiting = tokio::process::Command::new(BINARY)
        .args(["wait", "--timeout", "20s"])
        .env_clear()
        .env("TRUEDAT_PROXY_ADMIN__ADDRESS", &addr)
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    // Still waiting while the login hangs.
    let early = tokio::time::timeout(Duration::from_millis(700), waiting.wait()).await;
    assert!(early.is_err(), "wait returned before the proxy was ready: {early:?}");
    fake.set_login_mode(LoginMode::Normal);
    let status = tokio::time::timeout(READY, waiting.wait()).await.expect("wait returned").expect("wait ran");
    assert_eq!(status.code(), Some(0));
    proxy.stop().await;
}

#[tokio::test]
async fn an_invalid_address_or_timeout_exits_2_naming_it() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (&["--timeout", "soon"], &[], "--timeout"),
        (&["--timeout", "5"], &[], "--timeout"),
        (&[], &[("TRUEDAT_PROXY_ADMIN__ADDRESS", "localhost-ish")], "admin.address"),
        (&[], &[("TRUEDAT_PROXY_ADMIN__ADDRESS", "127.0.0.1:0")], "admin.address"),
    ];
    for (args, env, needle) in cases {
        let (code, lines) = wait(args, env).await;
        assert_eq!(code, Some(2), "{args:?} {env:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "{args:?} {env:?}: {lines:?}");
        assert!(lines[0].contains(needle), "{args:?} {env:?}: {lines:?}");
    }
    let missing = wait(&["--config", "/nonexistent/truedat-proxy.toml"], &[]).await;
    assert_eq!(missing.0, Some(2), "{missing:?}");
}

#[tokio::test]
async fn the_rest_of_the_configuration_is_not_read() {
    let port = free_port();
    // Incomplete (no upstream, no credentials) and with a key the proxy
    // would refuse: wait reads admin.address alone.
    let file =
        config_file(&format!("[admin]\naddress = \"127.0.0.1:{port}\"\n[proxy]\nallow_methods = [\"BAD METHOD\"]\n"));
    let path = file.path().to_str().expect("a UTF-8 temporary path");
    let (code, lines) = wait(&["--config", path, "--timeout", "0s"], &[]).await;
    assert_eq!(code, Some(1), "{lines:?}");
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{lines:?}");
}

/// An admin port that answers every request with `status` and `body`
/// (JSON), then closes; for answers no real proxy gives.
async fn fake_admin(status: &'static str, body: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
    let addr = listener.local_addr().expect("a bound listener has an address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// SPEC §1: the reason `wait` prints is one line, whatever the `/readyz`
/// detail holds: a newline or a terminal escape sequence in it is escaped.
#[tokio::test]
async fn control_characters_in_the_readyz_detail_are_escaped_on_one_line() {
    let detail = "first line\nsecond line \u{1b}[31mred\u{1b}[0m\r\tend\u{7f}";
    let body = serde_json::json!({ "errors": { "detail": detail } }).to_string();
    let addr = fake_admin("503 Service Unavailable", body).await.to_string();
    let (code, lines) = wait(&["--timeout", "0s"], &[("TRUEDAT_PROXY_ADMIN__ADDRESS", &addr)]).await;
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(
        line.contains(r"first line\nsecond line \u{1b}[31mred\u{1b}[0m\r\tend\u{7f}"),
        "the detail is not shown escaped: {line:?}"
    );
    assert!(line.contains("503"), "{line:?}");
}
