//! Who counts as a browser (SPEC §2 `proxy.allow_browsers`, §6): the exact
//! header sets real clients send. A request carrying `Origin` or
//! `Sec-Fetch-Site` is a browser's (every current browser sends
//! `Sec-Fetch-Site` on every request), refused with 403 on the proxy port
//! and on every admin endpoint; Node's built-in `fetch` (undici) sends
//! `sec-fetch-mode: cors` on every request and is a tool like curl.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::support::fake_truedat::FakeTruedat;
use crate::support::proxy::{TestProxy, fake};
use crate::support::raw::{RawConn, RawResponse};

/// Bound for a child process on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// What Node 18–22's `fetch()` sends (undici), besides `host` and `connection`.
const NODE_FETCH: &[(&str, &str)] = &[
    ("accept", "*/*"),
    ("accept-language", "*"),
    ("sec-fetch-mode", "cors"),
    ("user-agent", "node"),
    ("accept-encoding", "gzip, deflate"),
];

const CHROME_UA: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const FIREFOX_UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
const SAFARI_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";

/// One browser request: what it is, its method, its headers.
type BrowserRequest = (&'static str, &'static str, Vec<(&'static str, &'static str)>);

/// What browsers send for navigations and fetches, as captured from Chrome
/// 124, Firefox 125 and Safari 17.
fn browser_requests() -> Vec<BrowserRequest> {
    vec![
        (
            "Chrome: the URL typed in the address bar",
            "GET",
            vec![
                ("upgrade-insecure-requests", "1"),
                ("user-agent", CHROME_UA),
                ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                ("sec-fetch-site", "none"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-user", "?1"),
                ("sec-fetch-dest", "document"),
                ("accept-encoding", "gzip, deflate, br, zstd"),
                ("accept-language", "en-US,en;q=0.9"),
            ],
        ),
        (
            "Chrome: fetch() from another site",
            "GET",
            vec![
                ("user-agent", CHROME_UA),
                ("accept", "*/*"),
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "cors"),
                ("sec-fetch-dest", "empty"),
                ("referer", "https://evil.example/"),
            ],
        ),
        (
            "Chrome: an <img> from another site",
            "GET",
            vec![
                ("user-agent", CHROME_UA),
                ("accept", "image/avif,image/webp,image/apng,*/*;q=0.8"),
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "no-cors"),
                ("sec-fetch-dest", "image"),
            ],
        ),
        (
            "Chrome: a page on a rebound name fetching its own origin",
            "GET",
            vec![
                ("user-agent", CHROME_UA),
                ("accept", "*/*"),
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "cors"),
                ("sec-fetch-dest", "empty"),
            ],
        ),
        (
            "Firefox: a navigation",
            "GET",
            vec![
                ("user-agent", FIREFOX_UA),
                ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                ("accept-language", "en-US,en;q=0.5"),
                ("upgrade-insecure-requests", "1"),
                ("sec-fetch-dest", "document"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-site", "none"),
                ("sec-fetch-user", "?1"),
            ],
        ),
        (
            "Firefox: a cross-site form POST",
            "POST",
            vec![
                ("user-agent", FIREFOX_UA),
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", "https://evil.example"),
                ("sec-fetch-dest", "document"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-site", "cross-site"),
            ],
        ),
        (
            "Safari: a navigation",
            "GET",
            vec![
                ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                ("sec-fetch-site", "none"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "document"),
                ("user-agent", SAFARI_UA),
            ],
        ),
        (
            "Safari: fetch() from another site",
            "POST",
            vec![
                ("accept", "*/*"),
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "cors"),
                ("sec-fetch-dest", "empty"),
                ("user-agent", SAFARI_UA),
                ("content-type", "text/plain;charset=UTF-8"),
            ],
        ),
    ]
}

/// `method path` on a fresh connection to `addr` with exactly `headers`
/// (plus `host`, and a 2-byte body for a POST).
async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: keep-alive\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = if method == "POST" { "a=" } else { "" };
    if method == "POST" {
        head.push_str("content-length: 2\r\n");
    }
    head.push_str("\r\n");
    head.push_str(body);
    let mut conn = RawConn::connect(addr).await;
    conn.send(head.as_bytes());
    conn.response().await
}

/// The last data request the fake saw carried the proxy's bearer.
fn saw_bearer(fake: &FakeTruedat) -> bool {
    let last = fake.data_requests().pop();
    let bearer = last.as_ref().and_then(|r| r.headers.get("authorization")).and_then(|v| v.to_str().ok());
    bearer.is_some_and(|b| b.starts_with("Bearer ") && b.len() > "Bearer ".len())
}

#[tokio::test]
async fn node_fetch_headers_are_a_tool_and_forwarded_with_the_bearer() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    let response = send(proxy.proxy, "GET", "/api/data_structures", NODE_FETCH).await;
    assert_eq!(response.status(), Some(200), "{}", response.text());
    assert!(saw_bearer(&fake), "{:?}", fake.data_requests());
    // Either Fetch Metadata field alone is not a browser either.
    for alone in [("sec-fetch-mode", "no-cors"), ("sec-fetch-dest", "empty"), ("sec-fetch-user", "?1")] {
        let response = send(proxy.proxy, "GET", "/api/data_structures", &[alone]).await;
        assert_eq!(response.status(), Some(200), "{alone:?}: {}", response.text());
    }
    proxy.stop().await;
}

#[tokio::test]
async fn browsers_navigations_and_fetches_are_refused_and_never_forwarded() {
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    for (what, method, headers) in browser_requests() {
        let response = send(proxy.proxy, method, "/api/data_structures", &headers).await;
        assert_eq!(response.status(), Some(403), "{what}: {}", response.text());
        assert!(response.text().contains("allow_browsers"), "{what}: {}", response.text());
    }
    assert!(fake.data_requests().is_empty(), "a browser's request reached Truedat");
    proxy.stop().await;
}

/// SPEC §6: the admin port refuses browsers on every endpoint, whatever
/// `proxy.allow_browsers` says, so a web page cannot stop the proxy; the
/// kubelet's and Prometheus' requests (and Node's) are answered.
#[tokio::test]
async fn browsers_are_refused_on_every_admin_endpoint_whatever_allow_browsers_says() {
    let fake = fake(|_| {}).await;
    for allow_browsers in [false, true] {
        let proxy = TestProxy::ready(&fake, |c| c.proxy.allow_browsers = allow_browsers).await;
        for (method, path) in [("POST", "/quitquitquit"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
        {
            for (what, _, headers) in browser_requests() {
                let response = send(proxy.admin, method, path, &headers).await;
                assert_eq!(response.status(), Some(403), "{method} {path}, {what}: {}", response.text());
                assert!(response.json().is_some_and(|j| j["errors"]["detail"].is_string()), "{}", response.text());
            }
        }
        // A browser-style cross-site POST from loopback did not stop the proxy.
        assert!(proxy.wait_ready(Duration::from_secs(1)).await, "a browser's /quitquitquit began a shutdown");
        let kubelet = [("user-agent", "kube-probe/1.30"), ("accept", "*/*")];
        assert_eq!(send(proxy.admin, "GET", "/healthz", &kubelet).await.status(), Some(200));
        assert_eq!(send(proxy.admin, "GET", "/metrics", NODE_FETCH).await.status(), Some(200));
        let quit = send(proxy.admin, "POST", "/quitquitquit", NODE_FETCH).await;
        assert_eq!(quit.status(), Some(200), "{}", quit.text());
        assert_eq!(proxy.stop().await, truedat_auth_proxy::app::Outcome::Clean);
    }
}

/// The real thing: `fetch()` in Node (v20 on CI) through the proxy.
#[tokio::test]
async fn node_fetch_through_the_proxy_reaches_truedat_with_the_bearer() {
    let Ok(version) = std::process::Command::new("node").arg("--version").output() else {
        eprintln!("skipped: `node` is not installed (CI runs this test with Node 20)");
        return;
    };
    let fake = fake(|_| {}).await;
    let proxy = TestProxy::ready(&fake, |_| {}).await;
    let script = "fetch(process.argv[1]).then(async (r) => { console.log(r.status); console.log(await r.text()); })\
                  .catch((e) => { console.error(e); process.exit(3); })";
    let node = tokio::process::Command::new("node")
        .arg("-e")
        .arg(script)
        .arg(proxy.url("/api/data_structures?from=node"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, node).await.expect("node exits").expect("node runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let node_version = String::from_utf8_lossy(&version.stdout);
    assert!(output.status.success(), "node {node_version}: {}\n{stdout}{stderr}", output.status);
    assert_eq!(stdout.lines().next(), Some("200"), "node {node_version}:\n{stdout}{stderr}");
    let seen = fake.data_requests().pop().expect("the request reached Truedat");
    assert_eq!(seen.uri.query(), Some("from=node"));
    assert_eq!(seen.headers.get("sec-fetch-mode").map(|v| v.as_bytes()), Some(&b"cors"[..]), "{seen:?}");
    assert!(saw_bearer(&fake), "{seen:?}");
    proxy.stop().await;
}
