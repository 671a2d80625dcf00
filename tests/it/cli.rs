//! The real binary seen from outside, as an operator and Kubernetes see it: the
//! command line and exit codes (SPEC §1), configuration layering and validation
//! (§2), shutdown (§7) and log lines (§8). Every test runs the binary Cargo built
//! for this test run, against the in-process fake Truedat when it needs one.

use std::time::{Duration, Instant};

use http::{Method, Request};
use http_body_util::Full;
use serde_json::{Value, json};
use truedat_auth_proxy::units::Dur;

use crate::support::client::Client;
use crate::support::fake_truedat::FakeTruedat;
use crate::support::proxy::{BinaryProxy, config_file, fake, run_binary};
use crate::support::wait::wait_until;

/// The fake's default service user and password.
const USER: &str = "svc-proxy";
const PASSWORD: &str = "s3cret-Pa55";

/// An upstream that is never contacted (validation only).
const NOWHERE: &str = "https://truedat.example.com";

/// Generous bound for anything the binary does on its own (start, exit, log).
const PATIENCE: Duration = Duration::from_secs(15);

/// The keys of a minimal valid configuration, written as dotted keys so that
/// a test can drop one or add more without clashing table headers.
fn base_keys(upstream: &str) -> Vec<(&'static str, String)> {
    vec![
        ("listen.address", quoted("127.0.0.1:0")),
        ("admin.address", quoted("127.0.0.1:0")),
        ("upstream.url", quoted(upstream)),
        ("credentials.user_name", quoted(USER)),
        ("credentials.password", quoted(PASSWORD)),
    ]
}

/// A TOML file: the base keys without those in `drop`, then the lines of `add`.
fn toml_text(upstream: &str, drop: &[&str], add: &[&str]) -> String {
    let mut text = String::new();
    for (key, value) in base_keys(upstream).into_iter().filter(|(key, _)| !drop.contains(key)) {
        text.push_str(&format!("{key} = {value}\n"));
    }
    for line in add {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// `text` as a TOML string literal.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The non-empty lines of `text`.
fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|line| !line.trim().is_empty()).collect()
}

/// The variables that make a complete configuration without any file.
fn env_only(password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TRUEDAT_PROXY_UPSTREAM__URL", NOWHERE.to_owned()),
        ("TRUEDAT_PROXY_CREDENTIALS__USER_NAME", USER.to_owned()),
        ("TRUEDAT_PROXY_CREDENTIALS__PASSWORD", password.to_owned()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(name, value)| (*name, value.as_str())).collect()
}

/// `--check-config` must succeed; returns its stdout parsed as TOML, and the
/// whole output for secret checks.
async fn check_config(args: &[&str], env: &[(&str, &str)]) -> (toml::Table, String) {
    let mut all_args = vec!["--check-config"];
    all_args.extend_from_slice(args);
    let (status, stdout, stderr) = run_binary(&all_args, env).await;
    assert_eq!(status.code(), Some(0), "--check-config {args:?} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let table = toml::from_str::<toml::Table>(&stdout)
        .unwrap_or_else(|e| panic!("--check-config printed invalid TOML ({e}):\n{stdout}"));
    (table, format!("{stdout}{stderr}"))
}

/// The value at dotted `key` of `table`; panics naming the key if absent.
fn at<'a>(table: &'a toml::Table, key: &str) -> &'a toml::Value {
    let (section, name) = key.split_once('.').expect("a section.key name");
    table
        .get(section)
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("{key} is missing from the --check-config output: {table:#?}"))
}

fn text_at<'a>(table: &'a toml::Table, key: &str) -> &'a str {
    at(table, key).as_str().unwrap_or_else(|| panic!("{key} is not a string: {:?}", at(table, key)))
}

/// An invalid configuration: exit 2, nothing on stdout, and exactly one stderr
/// line, which names `needle`. Returns a description of what went wrong, if anything.
async fn expect_invalid(what: &str, args: &[&str], env: &[(&str, &str)], needle: &str) -> Option<String> {
    let (status, stdout, stderr) = run_binary(args, env).await;
    let problems = lines(&stderr);
    let ok = status.code() == Some(2)
        && stdout.trim().is_empty()
        && problems.len() == 1
        && problems[0].to_lowercase().contains(&needle.to_lowercase());
    (!ok).then(|| {
        format!("{what}: expected exit 2 and one stderr line naming {needle:?}; got {status}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    })
}

async fn readyz_status(client: &Client, proxy: &BinaryProxy) -> Option<u16> {
    let request = Request::get(proxy.admin_url("/readyz")).body(Full::default()).expect("a valid request");
    client.try_send(request).await.ok().map(|reply| reply.status.as_u16())
}

/// Waits until the binary's `/readyz` answers 200 (it holds a token).
async fn wait_ready(client: &Client, proxy: &BinaryProxy) {
    let ready = wait_until(PATIENCE, || async { readyz_status(client, proxy).await == Some(200) }).await;
    assert!(ready, "/readyz never answered 200; output:\n{}", proxy.output());
}

/// Waits until the binary has printed `needle`.
async fn wait_for_output(proxy: &BinaryProxy, needle: &str) {
    let seen = wait_until(PATIENCE, || async { proxy.output().contains(needle) }).await;
    assert!(seen, "the binary never printed {needle:?}; output:\n{}", proxy.output());
}

/// The binary in front of `fake` with the base configuration plus `add`.
async fn spawn_binary(fake: &FakeTruedat, add: &[&str]) -> BinaryProxy {
    BinaryProxy::spawn(&toml_text(&fake.url(), &[], add), &[]).await
}

// ---------------------------------------------------------------------------
// §1: command line

#[tokio::test]
async fn version_and_help_exit_0_and_an_unknown_flag_exits_2() {
    let (status, stdout, stderr) = run_binary(&["--version"], &[]).await;
    assert_eq!(status.code(), Some(0), "--version: {stderr}");
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "--version printed {stdout:?}");

    let (status, stdout, stderr) = run_binary(&["--help"], &[]).await;
    assert_eq!(status.code(), Some(0), "--help: {stderr}");
    for flag in ["--config", "--check-config", "--version", "--help", "wait", "inject"] {
        assert!(stdout.contains(flag), "--help does not mention {flag}:\n{stdout}");
    }

    let (status, stdout, stderr) = run_binary(&["--no-such-flag"], &[]).await;
    assert_eq!(status.code(), Some(2), "an unknown flag: {stdout}{stderr}");
    assert!(stderr.contains("--no-such-flag"), "the error does not name the flag:\n{stderr}");
}

// ---------------------------------------------------------------------------
// §1/§2: invalid configurations

#[tokio::test]
async fn each_invalid_configuration_exits_2_with_one_line_naming_the_key() {
    let non_loopback = ["listen.address = \"0.0.0.0:8080\""];
    let both = ["credentials.password_file = \"/run/secrets/truedat-password\""];
    // (what, keys dropped from the base, lines added, what the line must name)
    let cases: [(&str, &[&str], &[&str], &str); 11] = [
        ("no upstream.url", &["upstream.url"], &[], "upstream.url"),
        ("no user name", &["credentials.user_name"], &[], "credentials.user_name"),
        ("password and password_file", &[], &both, "credentials.password_file"),
        ("no password at all", &["credentials.password"], &[], "credentials.password"),
        ("unknown key", &[], &["upstream.urll = \"https://x.example\""], "urll"),
        ("unknown section", &[], &["bogus.enabled = true"], "bogus"),
        ("duration without unit", &[], &["token.refresh_before = \"5\""], "token.refresh_before"),
        ("bad size", &[], &["proxy.replay_body_limit = \"1MB\""], "proxy.replay_body_limit"),
        ("non-loopback listener", &["listen.address"], &non_loopback, "listen.address"),
        ("ftp upstream", &["upstream.url"], &["upstream.url = \"ftp://x\""], "upstream.url"),
        ("TOML syntax error", &[], &["token.refresh_before = \"5m"], "line 6"),
    ];
    let mut failures = Vec::new();
    for (what, drop, add, needle) in cases {
        let file = config_file(&toml_text(NOWHERE, drop, add));
        let path = file.path().to_str().expect("a UTF-8 temporary path");
        failures.extend(expect_invalid(what, &["--config", path, "--check-config"], &[], needle).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn each_invalid_retry_or_body_idle_setting_exits_2_with_one_line_naming_the_key() {
    // (what, line added, what the line must name)
    let cases: [(&str, &str, &str); 7] = [
        ("zero body idle timeout", "upstream.body_idle_timeout = \"0s\"", "upstream.body_idle_timeout"),
        ("a 3xx status", "retry.on_status = [503, 302]", "retry.on_status"),
        ("a status over 599", "retry.on_status = [600]", "retry.on_status"),
        ("negative budget ratio", "retry.budget_ratio = -0.5", "retry.budget_ratio"),
        ("infinite budget ratio", "retry.budget_ratio = inf", "retry.budget_ratio"),
        ("not-a-number budget ratio", "retry.budget_ratio = nan", "retry.budget_ratio"),
        ("initial backoff above max", "retry.backoff_initial = \"5s\"", "retry.backoff_initial"),
    ];
    let mut failures = Vec::new();
    for (what, add, needle) in cases {
        let file = config_file(&toml_text(NOWHERE, &[], &[add]));
        let path = file.path().to_str().expect("a UTF-8 temporary path");
        failures.extend(expect_invalid(what, &["--config", path, "--check-config"], &[], needle).await);
    }
    let env = [("TRUEDAT_PROXY_RETRY__ON_STATUS", "[200]")];
    let file = config_file(&toml_text(NOWHERE, &[], &[]));
    let path = file.path().to_str().expect("a UTF-8 temporary path");
    failures.extend(expect_invalid("status from env", &["--config", path], &env, "retry.on_status").await);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    let add = ["retry.window = \"0s\"", "retry.on_status = [429, 503]", "upstream.body_idle_timeout = \"2m\""];
    let file = config_file(&toml_text(NOWHERE, &[], &add));
    let (table, _) = check_config(&["--config", file.path().to_str().expect("UTF-8")], &[]).await;
    assert_eq!(text_at(&table, "retry.window"), "0s");
    assert_eq!(text_at(&table, "upstream.body_idle_timeout"), "2m");
    assert_eq!(at(&table, "retry.on_status").as_array().map(Vec::len), Some(2));
}

/// SPEC §1: every number has bounds that validation checks. A value beyond
/// them is a configuration error naming the key, from the file or the
/// environment, with `--check-config` or at a normal start (where
/// `retry.budget_min_per_second = 2147483647` once tripped an assertion in
/// the retry budget: exit 101).
#[tokio::test]
async fn numbers_beyond_their_bounds_exit_2_with_one_line_naming_the_key() {
    let cases: [(&str, &str); 6] = [
        ("retry.budget_min_per_second", "2147483647"),
        ("retry.budget_min_per_second", "4294967295"),
        ("upstream.connect_timeout", "\"2days\""),
        ("token.first_token_wait", "\"1days\""),
        ("proxy.replay_body_limit", "\"2GiB\""),
        ("shutdown.drain_timeout", "\"366days\""),
    ];
    let mut failures = Vec::new();
    for (key, value) in cases {
        let line = format!("{key} = {value}");
        let file = config_file(&toml_text(NOWHERE, &[], &[&line]));
        let path = file.path().to_str().expect("a UTF-8 temporary path");
        failures.extend(expect_invalid(&line, &["--config", path, "--check-config"], &[], key).await);
    }
    // A normal start, from the environment: no proxy runs (nor panics).
    let file = config_file(&toml_text(NOWHERE, &[], &[]));
    let path = file.path().to_str().expect("a UTF-8 temporary path");
    for value in ["2147483647", "4294967295"] {
        let env = [("TRUEDAT_PROXY_RETRY__BUDGET_MIN_PER_SECOND", value)];
        failures.extend(expect_invalid(value, &["--config", path], &env, "retry.budget_min_per_second").await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn an_invalid_configuration_also_stops_a_normal_start_with_exit_2() {
    let file = config_file(&toml_text(NOWHERE, &["upstream.url"], &[]));
    let path = file.path().to_str().expect("a UTF-8 temporary path");
    let failure = expect_invalid("no upstream.url, no --check-config", &["--config", path], &[], "upstream.url").await;
    assert!(failure.is_none(), "{}", failure.unwrap_or_default());
}

#[tokio::test]
async fn a_non_loopback_listener_is_accepted_with_the_opt_in() {
    let add = ["listen.address = \"0.0.0.0:8080\"", "listen.allow_non_loopback = true"];
    let file = config_file(&toml_text(NOWHERE, &["listen.address"], &add));
    let (table, _) = check_config(&["--config", file.path().to_str().expect("UTF-8")], &[]).await;
    assert_eq!(text_at(&table, "listen.address"), "0.0.0.0:8080");
    assert_eq!(at(&table, "listen.allow_non_loopback").as_bool(), Some(true));
}

#[tokio::test]
async fn a_missing_config_file_exits_2_naming_the_path() {
    let missing = "/does/not/exist/truedat-proxy.toml";
    let mut failures = Vec::new();
    failures.extend(expect_invalid("--config", &["--config", missing], &[], missing).await);
    let env = [("TRUEDAT_PROXY_CONFIG", missing)];
    failures.extend(expect_invalid("TRUEDAT_PROXY_CONFIG", &["--check-config"], &env, missing).await);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn a_config_path_that_is_a_directory_exits_2_with_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().to_str().expect("a UTF-8 temporary path");
    let failure = expect_invalid("--config DIRECTORY", &["--config", path, "--check-config"], &[], path).await;
    assert!(failure.is_none(), "{}", failure.unwrap_or_default());
}

// ---------------------------------------------------------------------------
// §2: environment variables and layering

#[tokio::test]
async fn a_configuration_from_env_alone_keeps_the_password_secret() {
    for password in ["12345", "true", "[a]", "007", "hunter2-from-env"] {
        let env = env_only(password);
        let (table, output) = check_config(&[], &borrowed(&env)).await;
        assert_eq!(text_at(&table, "upstream.url"), NOWHERE);
        assert_eq!(text_at(&table, "credentials.user_name"), USER);
        assert_eq!(text_at(&table, "credentials.password"), "<redacted>", "password {password:?}");
        assert!(output.contains("password = \"<redacted>\""), "password {password:?}:\n{output}");
        // "true" is also the text of every enabled boolean; the redacted value above covers it.
        if password != "true" {
            assert!(!output.contains(password), "password {password:?} printed:\n{output}");
        }
    }
}

#[tokio::test]
async fn a_password_from_env_reaches_truedat_verbatim() {
    // figment reads env values as TOML: these must still arrive as the same string.
    for password in ["12345", "true", "[a]", "007"] {
        let fake = fake(|c| c.password = password.to_owned()).await;
        let env = [("TRUEDAT_PROXY_CREDENTIALS__PASSWORD", password)];
        let proxy = BinaryProxy::spawn(&toml_text(&fake.url(), &["credentials.password"], &[]), &env).await;
        let logged_in = fake.wait_for_logins(1, PATIENCE).await;
        let sent: Vec<Value> =
            fake.login_requests().iter().filter_map(|r| serde_json::from_slice(&r.body).ok()).collect();
        assert!(
            logged_in,
            "password {password:?} was not accepted; login bodies {sent:?}; output:\n{}",
            proxy.output()
        );
        assert_eq!(sent[0]["user"]["password"], json!(password));
    }
}

#[tokio::test]
async fn env_overrides_the_file_which_overrides_the_defaults() {
    let file = config_file(&toml_text(NOWHERE, &[], &["token.refresh_before = \"1m\""]));
    let path = file.path().to_str().expect("a UTF-8 temporary path");

    let (table, _) = check_config(&["--config", path], &[]).await;
    assert_eq!(text_at(&table, "token.refresh_before"), "1m", "the file overrides the default");
    assert_eq!(text_at(&table, "token.fallback_lifetime"), "15m", "defaults fill what the file leaves out");

    let env = [("TRUEDAT_PROXY_TOKEN__REFRESH_BEFORE", "2m")];
    let (table, _) = check_config(&["--config", path], &env).await;
    assert_eq!(text_at(&table, "token.refresh_before"), "2m", "the environment overrides the file");
    assert_eq!(text_at(&table, "upstream.url"), NOWHERE);
}

#[tokio::test]
async fn truedat_proxy_config_works_like_the_flag() {
    let file = config_file(&toml_text(NOWHERE, &[], &["token.refresh_before = \"1m\""]));
    let path = file.path().to_str().expect("a UTF-8 temporary path");
    let (table, _) = check_config(&[], &[("TRUEDAT_PROXY_CONFIG", path)]).await;
    assert_eq!(text_at(&table, "token.refresh_before"), "1m");
    assert_eq!(text_at(&table, "upstream.url"), NOWHERE);
    assert_eq!(text_at(&table, "credentials.user_name"), USER);
}

#[tokio::test]
async fn env_values_are_parsed_into_booleans_numbers_and_durations() {
    let mut env = env_only(PASSWORD);
    env.push(("TRUEDAT_PROXY_LISTEN__MAX_CONNECTIONS", "7".to_owned()));
    env.push(("TRUEDAT_PROXY_TOKEN__LOGOUT_ON_SHUTDOWN", "false".to_owned()));
    env.push(("TRUEDAT_PROXY_SHUTDOWN__DELAY", "3s".to_owned()));
    env.push(("TRUEDAT_PROXY_LISTEN__ADDRESS", "127.0.0.1:18080".to_owned()));
    let (table, _) = check_config(&[], &borrowed(&env)).await;
    assert_eq!(at(&table, "listen.max_connections").as_integer(), Some(7));
    assert_eq!(at(&table, "token.logout_on_shutdown").as_bool(), Some(false));
    assert_eq!(text_at(&table, "shutdown.delay"), "3s");
    assert_eq!(text_at(&table, "listen.address"), "127.0.0.1:18080");
}

#[tokio::test]
async fn an_unknown_env_key_exits_2_naming_it() {
    let mut env = env_only(PASSWORD);
    env.push(("TRUEDAT_PROXY_UPSTREAM__NOPE", "1".to_owned()));
    let failure =
        expect_invalid("TRUEDAT_PROXY_UPSTREAM__NOPE", &["--check-config"], &borrowed(&env), "upstream.nope").await;
    assert!(failure.is_none(), "{}", failure.unwrap_or_default());
}

// ---------------------------------------------------------------------------
// §1: --check-config output

#[tokio::test]
async fn check_config_prints_every_section_with_the_spec_defaults_and_stays_offline() {
    let fake = fake(|_| {}).await;
    let mut env = env_only(PASSWORD);
    env[0].1 = fake.url();
    let (table, output) = check_config(&[], &borrowed(&env)).await;

    for section in ["listen", "admin", "upstream", "credentials", "token", "proxy", "shutdown", "log"] {
        assert!(table.get(section).is_some_and(toml::Value::is_table), "no [{section}] in:\n{output}");
    }
    let texts = [
        ("listen.address", "127.0.0.1:8080"),
        ("admin.address", "127.0.0.1:9090"),
        ("credentials.access_method", "alternative_login"),
        ("token.renew_with", "login"),
        ("log.format", "json"),
        ("log.level", "info"),
    ];
    for (key, expected) in texts {
        assert_eq!(text_at(&table, key), expected, "{key}");
    }
    let durations = [
        ("upstream.connect_timeout", "5s"),
        ("upstream.request_timeout", "60s"),
        ("upstream.pool_idle_timeout", "90s"),
        ("token.refresh_before", "5m"),
        ("token.fallback_lifetime", "15m"),
        ("token.login_timeout", "10s"),
        ("token.retry_initial", "500ms"),
        ("token.retry_max", "30s"),
        ("token.first_token_wait", "10s"),
        ("token.probe_interval", "1s"),
        ("shutdown.drain_timeout", "30s"),
        ("shutdown.delay", "0s"),
    ];
    for (key, expected) in durations {
        let printed = text_at(&table, key);
        assert_eq!(printed.parse::<Dur>(), expected.parse::<Dur>(), "{key} = {printed:?}");
    }
    assert_eq!(text_at(&table, "token.refresh_before"), "5m");
    for (key, expected) in [("proxy.replay_body_limit", "1MiB"), ("proxy.max_request_header_bytes", "64KiB")] {
        assert_eq!(text_at(&table, key), expected, "{key}");
    }
    for (key, expected) in
        [("listen.allow_non_loopback", false), ("token.logout_on_shutdown", true), ("proxy.allow_session_paths", false)]
    {
        assert_eq!(at(&table, key).as_bool(), Some(expected), "{key}");
    }
    assert_eq!(at(&table, "listen.max_connections").as_integer(), Some(1024));
    for key in ["proxy.allow_methods", "proxy.allow_paths"] {
        assert_eq!(at(&table, key).as_array().map(Vec::len), Some(0), "{key}");
    }

    assert_eq!(fake.login_attempts(), 0, "--check-config logged in");
    assert!(fake.data_requests().is_empty(), "--check-config called Truedat");
}

#[tokio::test]
async fn check_config_output_is_accepted_back_as_a_config_file() {
    let add = ["token.refresh_before = \"90s\"", "proxy.allow_paths = [\"/api/v2\"]"];
    let first = config_file(&toml_text(NOWHERE, &[], &add));
    let (status, printed, stderr) =
        run_binary(&["--check-config", "--config", first.path().to_str().expect("UTF-8")], &[]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let second = config_file(&printed);
    let (status, reprinted, stderr) =
        run_binary(&["--check-config", "--config", second.path().to_str().expect("UTF-8")], &[]).await;
    assert_eq!(status.code(), Some(0), "the printed configuration is refused:\n{stderr}\n{printed}");
    assert_eq!(reprinted, printed, "printing is not stable");
}

// ---------------------------------------------------------------------------
// End to end with password_file

#[tokio::test]
async fn password_file_end_to_end() {
    let fake = fake(|_| {}).await;
    let password_file = config_file(&format!("{PASSWORD}\n"));
    let line = format!("credentials.password_file = {}", quoted(password_file.path().to_str().expect("UTF-8")));
    let proxy = BinaryProxy::spawn(&toml_text(&fake.url(), &["credentials.password"], &[&line]), &[]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    let reply = client.get(&proxy.url("/api/anything?x=1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/api/anything");
    assert_eq!(echo["query"], "x=1");

    let logins = fake.login_requests();
    assert_eq!(logins.len(), 1, "one login expected");
    let login = &logins[0];
    assert_eq!(login.method, Method::POST);
    assert_eq!(login.uri.path(), "/api/sessions");
    let body: Value = serde_json::from_slice(&login.body).expect("the login body is JSON");
    let expected = json!({"access_method": "alternative_login", "user": {"user_name": USER, "password": PASSWORD}});
    assert_eq!(body, expected);
    let header = |name: &str| login.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(header("content-type").starts_with("application/json"), "content-type {:?}", header("content-type"));
    assert_eq!(header("accept"), "application/json");
}

// ---------------------------------------------------------------------------
// §1: fatal errors at startup

#[tokio::test]
async fn an_address_in_use_exits_1_naming_the_key_and_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = taken.local_addr().expect("a bound address").to_string();
    let mut failures = Vec::new();
    for key in ["listen.address", "admin.address"] {
        let line = format!("{key} = {}", quoted(&addr));
        let file = config_file(&toml_text(NOWHERE, &[key], &[&line]));
        let (status, stdout, stderr) = run_binary(&["--config", file.path().to_str().expect("UTF-8")], &[]).await;
        let errors = lines(&stderr);
        let ok = status.code() == Some(1) && errors.len() == 1 && errors[0].contains(key) && errors[0].contains(&addr);
        if !ok {
            failures.push(format!(
                "{key} in use: expected exit 1 and one stderr line naming {key} and {addr}; got {status}\n\
                 stdout:\n{stdout}\nstderr:\n{stderr}"
            ));
        }
    }
    drop(taken);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------
// §8: logs

#[tokio::test]
async fn logs_are_json_lines_with_one_access_line_per_request_and_no_secrets() {
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_binary(&fake, &[]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    let request = Request::get(proxy.url("/api/items?page=2&secret=query-secret-value"))
        .header("x-request-id", "cli-test-request-1")
        .body(Full::default())
        .expect("a valid request");
    let first = client.send(request).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = client.get(&proxy.url("/api/other?token=another-query-value")).await;
    assert_eq!(second.status, 200, "{}", second.text());
    let second_id = second.header("x-request-id").expect("a generated request id").to_owned();

    proxy.signal("TERM");
    let status = proxy.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proxy.output());
    // The process has exited; its last line may still be on its way through the pipe.
    wait_for_output(&proxy, "Truedat session logged out").await;
    let output = proxy.output();

    let mut events = Vec::new();
    for line in lines(&output) {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}\n{output}"));
        assert!(event.is_object(), "a log line is not a JSON object: {line}");
        let timestamp = event["timestamp"].as_str().unwrap_or_else(|| panic!("no \"timestamp\" in {line}"));
        assert!(humantime::parse_rfc3339_weak(timestamp).is_ok(), "timestamp {timestamp:?} is not RFC 3339");
        let level = event["level"].as_str().unwrap_or_else(|| panic!("no \"level\" in {line}"));
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level), "level {level:?} in {line}");
        assert!(event["message"].is_string(), "no \"message\" in {line}");
        events.push(event);
    }

    let access: Vec<&Value> = events.iter().filter(|e| e.get("request_id").is_some()).collect();
    assert_eq!(access.len(), 2, "one access line per request expected:\n{output}");
    let line = access
        .iter()
        .find(|e| e["request_id"] == "cli-test-request-1")
        .unwrap_or_else(|| panic!("no access line for the client's request id:\n{output}"));
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/api/items", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["upstream_status"], 200, "{line}");
    assert_eq!(line["replayed"], false, "{line}");
    assert!(line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
    let other = access.iter().find(|e| e["request_id"] == second_id.as_str());
    assert_eq!(other.map(|e| &e["path"]), Some(&json!("/api/other")), "{output}");

    let tokens: Vec<String> = fake
        .data_requests()
        .iter()
        .filter_map(|r| r.headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::to_owned))
        .collect();
    assert_eq!(tokens.len(), 2, "both requests carried a bearer");
    for secret in tokens.iter().map(String::as_str).chain([PASSWORD, "query-secret-value", "another-query-value"]) {
        assert!(!output.contains(secret), "{secret:?} appears in the output:\n{output}");
    }
}

// ---------------------------------------------------------------------------
// §7: shutdown

#[tokio::test]
async fn sigterm_turns_readiness_off_at_once_then_exits_0_after_logging_out() {
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_binary(&fake, &["shutdown.delay = \"3s\""]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    proxy.signal("TERM");
    let signalled = Instant::now();
    let not_ready = wait_until(Duration::from_secs(2), || async { readyz_status(&client, &proxy).await == Some(503) });
    assert!(not_ready.await, "/readyz did not turn 503 after SIGTERM; output:\n{}", proxy.output());
    assert!(signalled.elapsed() < Duration::from_secs(2));
    // During shutdown.delay new requests are still served.
    let reply = client.get(&proxy.url("/api/during-delay")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let status = proxy.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proxy.output());
    assert_eq!(fake.logouts(), 1, "the session was not logged out; output:\n{}", proxy.output());
}

#[tokio::test]
async fn without_logout_on_shutdown_the_session_is_left_alone() {
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_binary(&fake, &["token.logout_on_shutdown = false"]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    proxy.signal("TERM");
    let status = proxy.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proxy.output());
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.logouts(), 0, "logged out although token.logout_on_shutdown = false");
}

#[tokio::test]
async fn quitquitquit_from_loopback_shuts_down_cleanly() {
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_binary(&fake, &[]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    let reply = client.call(Method::POST, &proxy.admin_url("/quitquitquit"), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = proxy.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proxy.output());
    assert_eq!(fake.logouts(), 1, "the session was not logged out; output:\n{}", proxy.output());
}

#[tokio::test]
async fn a_second_signal_exits_at_once_with_a_non_zero_code() {
    let fake = fake(|_| {}).await;
    let mut proxy = spawn_binary(&fake, &["shutdown.delay = \"10s\""]).await;
    let client = Client::new();
    wait_ready(&client, &proxy).await;

    proxy.signal("TERM");
    // Two signals sent back to back may be delivered as one: wait for the first to land.
    wait_for_output(&proxy, "graceful shutdown requested").await;
    proxy.signal("TERM");
    let second = Instant::now();
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    assert!(second.elapsed() < Duration::from_secs(5));
    assert!(!status.success(), "a second signal must not report a clean shutdown: {status}");
    assert_eq!(status.code(), Some(1), "output:\n{}", proxy.output());
}
