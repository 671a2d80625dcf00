//! Self-tests of the fake Truedat's fleet-scale switches: the ping counter, the
//! password-check cost model, audit events, the login records and a restart on the
//! same port. The comeback tests and the fleet simulation read their results from
//! these, so they must be right.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::client::{Client, Reply};
use crate::support::fake_truedat::{FakeConfig, FakeTruedat, LoginMode, PasswordCheck};
use crate::support::wait::wait_until;

fn login_body(password: &str) -> String {
    let fake = FakeConfig::default();
    serde_json::json!({ "user": { "user_name": fake.user_name, "password": password } }).to_string()
}

async fn login(client: &Client, fake: &FakeTruedat, password: &str) -> Reply {
    let request = http::Request::post(format!("{}/api/sessions", fake.url()))
        .header("content-type", "application/json")
        .body(login_body(password).into())
        .expect("a valid request");
    client.send(request).await
}

#[tokio::test]
async fn ping_answers_pong_without_credentials_and_is_counted() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let client = Client::new();
    let reply = client.get(&format!("{}/api/ping", fake.url())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "pong");
    assert_eq!(client.call(Method::POST, &format!("{}/api/ping", fake.url()), "").await.status, 404);
    assert_eq!(fake.pings(), 1, "only the GET is a ping");
}

#[tokio::test]
async fn password_checks_run_a_few_at_a_time_and_the_rest_queue() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let check = Duration::from_millis(200);
    fake.set_password_check(Some(PasswordCheck { concurrency: 2, duration: check }));
    let client = Client::new();
    let password = FakeConfig::default().password;

    let started = Instant::now();
    let replies = join_all((0..6).map(|_| login(&client, &fake, &password))).await;
    let took = started.elapsed();
    assert!(replies.iter().all(|r| r.status == StatusCode::CREATED));
    // Six checks, two at a time: three rounds.
    assert!(took >= check * 3, "six logins took only {took:?}");
    let mut durations: Vec<Duration> = fake.login_records().iter().map(|r| r.took).collect();
    durations.sort();
    assert!(durations[5] >= check * 3, "the last in line waited for two rounds: {durations:?}");
    assert!(fake.login_records().iter().all(|r| !r.abandoned));

    // A wrong password costs a check and two audit events too; other modes cost nothing.
    assert_eq!(login(&client, &fake, "wrong").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.audit_events(), 14);
    fake.set_login_mode(LoginMode::Status(500));
    assert_eq!(login(&client, &fake, &password).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(fake.audit_events(), 14);
    assert_eq!(fake.login_records().len(), 8);
}

#[tokio::test]
async fn a_login_whose_client_left_is_recorded_as_abandoned_and_frees_its_place() {
    let fake = FakeTruedat::start(FakeConfig::default()).await;
    let check = Duration::from_secs(2);
    fake.set_password_check(Some(PasswordCheck { concurrency: 1, duration: check }));
    let body = login_body(&FakeConfig::default().password);
    let mut leaver = TcpStream::connect(fake.addr()).await.unwrap();
    let head = format!(
        "POST /api/sessions HTTP/1.1\r\nhost: td\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    leaver.write_all(format!("{head}{body}").as_bytes()).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || async { fake.login_attempts() == 1 }).await);

    let waiting = tokio::spawn({
        let (client, url, body) = (Client::new(), format!("{}/api/sessions", fake.url()), body.clone());
        async move {
            let request = http::Request::post(url).header("content-type", "application/json").body(body.into());
            let started = Instant::now();
            let reply = client.send(request.unwrap()).await;
            (reply.status, started.elapsed())
        }
    });
    drop(leaver);
    let (status, took) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    // Had the abandoned check kept its place, the second would wait for it first.
    assert!(took < check * 2 - Duration::from_millis(300), "the abandoned login held the queue: {took:?}");
    let records = fake.login_records();
    assert_eq!(records.iter().filter(|r| r.abandoned).count(), 1, "{records:?}");
    assert_eq!(records.iter().filter(|r| !r.abandoned).count(), 1, "{records:?}");
}

#[tokio::test]
async fn a_restart_refuses_connections_then_serves_the_same_sessions_on_the_same_port() {
    let mut fake = FakeTruedat::start(FakeConfig::default()).await;
    let client = Client::new();
    let token = login(&client, &fake, &FakeConfig::default().password).await.json()["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let addr = fake.addr();

    fake.stop_listening().await;
    let refused = TcpStream::connect(addr).await.expect_err("nothing listens while td-auth is down");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    fake.listen_again().await.expect("the port is free again");
    assert_eq!(fake.addr(), addr);
    let check = http::Request::get(format!("{}/api/sessions", fake.url()))
        .header("authorization", format!("Bearer {token}"))
        .body(Default::default())
        .unwrap();
    assert_eq!(Client::new().send(check).await.status, StatusCode::OK, "sessions live in Redis, not in td-auth");
    assert_eq!(fake.logins(), 1);
}
