//! Self-tests of the fake Truedat: it must behave as TRUEDAT.md says, or every proxy
//! test built on it proves nothing. Real sockets, a plain hyper client, no proxy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::fake_truedat::{FakeConfig, FakeTruedat, LoginMode, download_byte};
use crate::support::{jwt, tls};

const USER: &str = "svc-proxy";
const PASSWORD: &str = "s3cret-Pa55";

/// A response read to its end.
struct Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().expect("a visible ASCII header")
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers.get_all(SET_COOKIE).iter().map(|v| v.to_str().expect("ASCII cookie")).collect()
    }
}

/// The tokens of a successful login.
struct Session {
    token: String,
    refresh: String,
}

async fn send(request: Request<Full<Bytes>>) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http();
    send_with(&client, request).await
}

async fn send_with<C>(client: &Client<C, Full<Bytes>>, request: Request<Full<Bytes>>) -> Answer
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let response = client.request(request).await.expect("the fake answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the whole body").to_bytes();
    Answer { status: parts.status, version: parts.version, headers: parts.headers, body }
}

fn request(method: Method, url: String, bearer: Option<&str>) -> http::request::Builder {
    let builder = Request::builder().method(method).uri(url);
    match bearer {
        Some(token) => builder.header(AUTHORIZATION, format!("Bearer {token}")),
        None => builder,
    }
}

fn get(fake: &FakeTruedat, path: &str, bearer: Option<&str>) -> Request<Full<Bytes>> {
    request(Method::GET, format!("{}{path}", fake.url()), bearer).body(Full::default()).expect("a valid request")
}

fn login_request(fake: &FakeTruedat, content_type: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let builder = request(Method::POST, format!("{}/api/sessions", fake.url()), None);
    let builder = match content_type {
        Some(content_type) => builder.header(CONTENT_TYPE, content_type),
        None => builder,
    };
    builder.body(Full::new(Bytes::copy_from_slice(body.as_bytes()))).expect("a valid request")
}

fn credentials(user_name: &str, password: &str) -> String {
    json!({ "access_method": "alternative_login", "user": { "user_name": user_name, "password": password } })
        .to_string()
}

fn good_login(fake: &FakeTruedat) -> Request<Full<Bytes>> {
    login_request(fake, Some("application/json"), &credentials(USER, PASSWORD))
}

async fn login(fake: &FakeTruedat) -> Session {
    let answer = send(good_login(fake)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    Session { token: answer.json()["token"].as_str().expect("a token").to_owned(), refresh: refresh_cookie(&answer) }
}

/// The value of the `_td_refresh` cookie set by a 201.
fn refresh_cookie(answer: &Answer) -> String {
    let cookie = answer.header("set-cookie");
    let (pair, _attributes) = cookie.split_once(';').expect("cookie attributes");
    pair.strip_prefix("_td_refresh=").expect("the refresh cookie").to_owned()
}

fn refresh_request(fake: &FakeTruedat, bearer: &str, refresh: &str) -> Request<Full<Bytes>> {
    request(Method::POST, format!("{}/api/sessions/refresh", fake.url()), Some(bearer))
        .header(COOKIE, format!("theme=dark; _td_refresh={refresh}"))
        .body(Full::default())
        .expect("a valid request")
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_auth_error(answer: &Answer, message: &str) {
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.json(), json!({ "message": message }));
    assert_eq!(answer.header("content-type"), "application/json; charset=utf-8");
    assert!(answer.headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn login_sets_refresh_cookie_and_mints_truedat_claims() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    // User names match case-insensitively.
    let body = credentials("SVC-Proxy", PASSWORD);
    let answer = send(login_request(&fake, Some("application/json; charset=utf-8"), &body)).await;

    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.header("content-type"), "application/json; charset=utf-8");
    let cookie = answer.header("set-cookie");
    assert!(cookie.starts_with("_td_refresh=ey"), "{cookie}");
    assert!(cookie.ends_with("; path=/; secure; HttpOnly; SameSite=Strict"), "{cookie}");
    let token = answer.json()["token"].as_str().expect("a token").to_owned();
    assert_eq!(answer.json().as_object().map(|o| o.len()), Some(1));

    let claims = jwt::decode_unverified(&token).expect("a JWT");
    assert_eq!((claims.aud.as_str(), claims.iss.as_str()), ("truedat", "tdauth"));
    assert_eq!(claims.exp - claims.iat, 600);
    assert_eq!(claims.nbf, claims.iat);
    assert_eq!(claims.jti.len(), 24);
    assert!(claims.jti.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'v')));
    let sub: Value = serde_json::from_str(&claims.sub).expect("sub is JSON in a string");
    assert_eq!(sub["user_name"], USER);
    assert_eq!((claims.role.as_str(), claims.groups.len()), ("service", 0));
    let refresh = jwt::decode_unverified(&refresh_cookie(&answer)).expect("a JWT");
    assert_eq!(refresh.exp - refresh.iat, 86_400);
    assert_ne!(refresh.aud, "truedat");

    assert_eq!((fake.login_attempts(), fake.logins()), (1, 1));
    let recorded = fake.login_requests();
    assert_eq!(recorded[0].uri, "/api/sessions");
    assert_eq!(recorded[0].body, body.as_bytes());
    assert!(fake.wait_for_logins(1, Duration::from_secs(5)).await);
    assert!(!fake.wait_for_logins(2, Duration::from_millis(20)).await);
}

#[tokio::test]
async fn wrong_password_is_401_and_clears_the_cookie() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let body = credentials(USER, "wrong");
    let answer = send(login_request(&fake, Some("application/json"), &body)).await;

    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.json(), json!({ "errors": { "detail": "Invalid credentials" } }));
    assert!(answer.header("set-cookie").starts_with("_td_refresh=; "));
    assert!(answer.header("set-cookie").contains("max-age=0"));
    assert_eq!((fake.login_attempts(), fake.logins()), (1, 0));

    fake.set_password("rotated");
    let body = credentials(USER, "rotated");
    let answer = send(login_request(&fake, Some("application/json"), &body)).await;
    assert_eq!(answer.status, StatusCode::CREATED);
}

#[tokio::test]
async fn unparsable_logins_are_422_or_400() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let unprocessable = json!({ "errors": { "detail": "Unprocessable Entity" } });
    let good = credentials(USER, PASSWORD);
    for (content_type, body) in [
        (None, good.as_str()),
        (Some("text/plain"), good.as_str()),
        (Some("application/json"), ""),
        (Some("application/json"), r#"{"user":{"user_name":"svc-proxy"}}"#),
    ] {
        let answer = send(login_request(&fake, content_type, body)).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{content_type:?} {body}");
        assert_eq!(answer.json(), unprocessable);
    }

    let answer = send(login_request(&fake, Some("application/json"), "{\"user\":")).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json(), json!({ "errors": { "detail": "Internal server error" } }));
    assert_eq!((fake.login_attempts(), fake.logins()), (5, 0));
}

#[tokio::test]
async fn data_routes_check_the_bearer_like_guardian() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let session = login(&fake).await;
    let path = "/api/data/a%2Fb/%7Bx%7D?q=a%20b&x=%2F&flag";

    assert_auth_error(&send(get(&fake, path, None)).await, "unauthenticated");
    let basic = request(Method::GET, format!("{}{path}", fake.url()), None)
        .header(AUTHORIZATION, "Basic c3ZjOnB3")
        .body(Full::default())
        .expect("a valid request");
    assert_auth_error(&send(basic).await, "unauthenticated");
    assert_auth_error(&send(get(&fake, path, Some("not.a.jwt"))).await, "invalid_token");
    assert_auth_error(&send(get(&fake, path, Some(&session.refresh))).await, "unauthenticated");

    let answer = send(get(&fake, path, Some(&session.token))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let echo = answer.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/api/data/a%2Fb/%7Bx%7D");
    assert_eq!(echo["query"], "q=a%20b&x=%2F&flag");
    assert_eq!(echo["headers"]["authorization"], json!([format!("Bearer {}", session.token)]));
    assert_eq!((echo["body_len"].clone(), echo["body"].clone()), (json!(0), json!("")));

    fake.revoke_all();
    assert_auth_error(&send(get(&fake, path, Some(&session.token))).await, "unauthorized");

    let recorded = fake.data_requests();
    assert_eq!(recorded.len(), 6);
    assert!(recorded.iter().all(|r| r.uri == path));
}

#[tokio::test]
async fn expired_tokens_are_invalid() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    fake.set_token_ttl(Duration::from_secs(1));
    let session = login(&fake).await;
    let claims = jwt::decode_unverified(&session.token).expect("a JWT");
    assert_eq!(claims.exp - claims.iat, 1);

    // Wait for the second named by `exp` to begin: at most one second.
    let expiry = UNIX_EPOCH + Duration::from_secs(claims.exp);
    let until_expiry = expiry.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(until_expiry + Duration::from_millis(5)).await;

    assert_auth_error(&send(get(&fake, "/api/x", Some(&session.token))).await, "invalid_token");
}

#[tokio::test]
async fn refresh_works_once_and_kills_the_old_token() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let first = login(&fake).await;

    let answer = send(refresh_request(&fake, &first.token, &first.refresh)).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let second = Session {
        token: answer.json()["token"].as_str().expect("a token").to_owned(),
        refresh: refresh_cookie(&answer),
    };
    assert_eq!(fake.refreshes(), 1);
    let chain_end = |token: &str| jwt::decode_unverified(token).map(|c| c.exp);
    assert_eq!(chain_end(&second.refresh), chain_end(&first.refresh));

    assert_auth_error(&send(get(&fake, "/api/x", Some(&first.token))).await, "unauthorized");
    assert_eq!(send(get(&fake, "/api/x", Some(&second.token))).await.status, StatusCode::OK);

    // The used refresh token is dead, even with a live bearer.
    let reused = send(refresh_request(&fake, &second.token, &first.refresh)).await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reused.json(), json!({ "errors": { "detail": "Invalid credentials" } }));
    // A dead bearer is refused before the cookie is looked at.
    let dead = send(refresh_request(&fake, &first.token, &second.refresh)).await;
    assert_auth_error(&dead, "unauthorized");
    assert_eq!(fake.refreshes(), 1);
}

#[tokio::test]
async fn logout_kills_the_session() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let session = login(&fake).await;
    assert_eq!(send(get(&fake, "/api/sessions", Some(&session.token))).await.status, StatusCode::OK);

    let logout = request(Method::DELETE, format!("{}/api/sessions", fake.url()), Some(&session.token))
        .body(Full::default())
        .expect("a valid request");
    assert_eq!(send(logout).await.status, StatusCode::NO_CONTENT);
    assert_eq!(fake.logouts(), 1);

    assert_auth_error(&send(get(&fake, "/api/sessions", Some(&session.token))).await, "unauthorized");
    assert_auth_error(&send(get(&fake, "/api/x", Some(&session.token))).await, "unauthorized");
}

#[tokio::test]
async fn legacy_servers_return_the_refresh_token_in_the_body() {
    let config = FakeConfig { legacy_refresh_in_body: true, ..FakeConfig::default() };
    let fake = FakeTruedat::start(config).await;
    let answer = send(good_login(&fake)).await;

    assert_eq!(answer.status, StatusCode::CREATED);
    assert!(answer.headers.get(SET_COOKIE).is_none());
    let body = answer.json();
    let refresh = body["refresh_token"].as_str().expect("a refresh token");
    let token = body["token"].as_str().expect("a token");
    assert_eq!(jwt::decode_unverified(refresh).map(|c| c.aud), Some("truedat_refresh".to_owned()));
    assert_eq!(send(get(&fake, "/api/x", Some(token))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn login_modes_answer_every_attempt() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;

    fake.set_login_mode(LoginMode::Status(503));
    let answer = send(good_login(&fake)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json(), json!({ "errors": { "detail": "Service Unavailable" } }));

    fake.set_login_mode(LoginMode::Html);
    let answer = send(good_login(&fake)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.header("content-type").starts_with("text/html"));
    assert!(answer.body.starts_with(b"<html>"));

    fake.set_login_mode(LoginMode::NoToken);
    let answer = send(good_login(&fake)).await;
    assert_eq!((answer.status, answer.json()), (StatusCode::CREATED, json!({})));

    fake.set_login_mode(LoginMode::NotJson);
    let answer = send(good_login(&fake)).await;
    assert_eq!((answer.status, &answer.body[..]), (StatusCode::CREATED, &b"not json"[..]));
    assert!(answer.header("content-type").starts_with("application/json"));

    assert_eq!((fake.login_attempts(), fake.logins()), (4, 0));
    assert_eq!(fake.login_requests().len(), 4);
}

#[tokio::test]
async fn hanging_logins_answer_once_the_mode_changes() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    fake.set_login_mode(LoginMode::Hang);
    let mut pending = tokio::spawn(send(good_login(&fake)));

    let early = tokio::time::timeout(Duration::from_millis(300), &mut pending).await;
    assert!(early.is_err(), "a hanging login was answered");

    fake.set_login_mode(LoginMode::Normal);
    let answer = pending.await.expect("the login task ends");
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!((fake.login_attempts(), fake.logins()), (1, 1));
}

#[tokio::test]
async fn test_routes_stream_redirect_and_add_headers() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let token = login(&fake).await.token;
    let bearer = Some(token.as_str());

    let forbidden = send(get(&fake, "/api/forbidden", bearer)).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.json(), json!({ "errors": { "detail": "Invalid authorization" } }));

    let download = send(get(&fake, "/api/download?bytes=200003", bearer)).await;
    assert_eq!(download.header("content-length"), "200003");
    assert_eq!(download.header("content-type"), "application/octet-stream");
    assert!(download.body.iter().zip(0..).all(|(&byte, i)| byte == download_byte(i)));
    assert_eq!(download.body.len(), 200_003);

    let upload_body: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
    let upload = request(Method::PUT, format!("{}/api/upload", fake.url()), bearer)
        .body(Full::new(Bytes::from(upload_body.clone())))
        .expect("a valid request");
    let upload = send(upload).await;
    assert_eq!(upload.json(), json!({ "bytes": 100_000, "sha256": hex_sha256(&upload_body) }));
    let recorded = fake.data_requests();
    assert!(recorded.last().expect("the upload was recorded").body.is_empty());

    let redirect = send(get(&fake, "/api/redirect?to=https%3A%2F%2Fexample.com%2Fx%3Fa%3D1", bearer)).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    assert_eq!(redirect.header(LOCATION.as_str()), "https://example.com/x?a=1");

    let cookies = send(get(&fake, "/api/cookies", bearer)).await;
    assert_eq!(cookies.set_cookies(), ["_td_refresh=leaked; path=/; HttpOnly", "other=1; path=/"]);

    let hop = send(get(&fake, "/api/hop", bearer)).await;
    assert_eq!(hop.header("x-custom-hop"), "1");
    assert_eq!(hop.header("x-end-to-end"), "1");
    assert_eq!(hop.header("connection"), "x-custom-hop");
}

#[tokio::test]
async fn echo_reports_small_bodies_and_slow_waits() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let token = login(&fake).await.token;
    let post = request(Method::POST, format!("{}/api/slow?ms=20", fake.url()), Some(&token))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .expect("a valid request");

    let started = std::time::Instant::now();
    let echo = send(post).await.json();
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "{\"a\":1}");
    assert_eq!(echo["body_len"], 7);
    assert_eq!(echo["body_sha256"], hex_sha256(b"{\"a\":1}"));
    assert_eq!(echo["headers"][CONTENT_LENGTH.as_str()], json!(["7"]));
}

#[tokio::test]
async fn ping_needs_no_token_and_other_paths_are_404() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let ping = send(get(&fake, "/api/ping", None)).await;
    assert_eq!((ping.status, &ping.body[..]), (StatusCode::OK, &b"pong"[..]));

    for path in ["/", "/healthz", "/api/sessions/other"] {
        let answer = send(get(&fake, path, None)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.json(), json!({ "errors": { "detail": "Page not found" } }));
    }
    assert!(fake.data_requests().is_empty());
}

#[tokio::test]
async fn shutdown_closes_the_port_and_open_connections() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let addr = fake.addr();
    let mut open = TcpStream::connect(addr).await.expect("the fake accepts");
    ping_raw(&mut open).await;

    fake.shutdown().await;

    let refused = TcpStream::connect(addr).await.expect_err("the port is closed");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let mut buf = [0u8; 16];
    let after = open.read(&mut buf).await;
    assert!(matches!(after, Ok(0) | Err(_)), "the kept-alive connection still works");
}

/// One keep-alive request on a raw socket, so the connection is known to be served.
async fn ping_raw(stream: &mut TcpStream) {
    let request = b"GET /api/ping HTTP/1.1\r\nhost: fake\r\n\r\n";
    stream.write_all(request).await.expect("the request is sent");
    let mut received = Vec::new();
    while !received.ends_with(b"pong") {
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.expect("the response arrives");
        assert_ne!(n, 0, "the connection closed early");
        received.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn start_at_comes_back_on_the_same_port() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let addr = fake.addr();
    login(&fake).await;
    fake.shutdown().await;

    let fake = FakeTruedat::start_at(addr, FakeConfig::default()).await.expect("the port is free again");
    assert_eq!(fake.addr(), addr);
    assert_eq!(fake.logins(), 0);
    login(&fake).await;
    assert_eq!(fake.logins(), 1);
}

#[tokio::test]
async fn tls_serves_http2_by_alpn() {
    let fake = FakeTruedat::start_tls(FakeConfig::default(), tls::server_config(tls::ALPN_H2_HTTP1)).await;
    assert!(fake.url().starts_with("https://localhost:"));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls::client_config())
        .https_only()
        .enable_all_versions()
        .build();
    let client = Client::builder(TokioExecutor::new()).build(connector);

    let answer = send_with(&client, good_login(&fake)).await;
    assert_eq!((answer.status, answer.version), (StatusCode::CREATED, Version::HTTP_2));
    let token = answer.json()["token"].as_str().expect("a token").to_owned();
    let echo = send_with(&client, get(&fake, "/api/x?y=1", Some(&token))).await;
    assert_eq!(echo.json()["query"], "y=1");
    assert_eq!(fake.data_requests()[0].uri, "/api/x?y=1");
}
