//! Running the proxy under test: in-process through the library (`App`), or
//! as the real binary with its real command line, signals and exit codes.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use truedat_auth_proxy::app::{App, Outcome};
use truedat_auth_proxy::config::Config;
use truedat_auth_proxy::units::Dur;

use super::client::{Client, Reply};
use super::fake_truedat::{FakeConfig, FakeTruedat};
use super::wait::wait_until;

/// Path of the binary Cargo built for these tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_truedat-auth-proxy");

/// A configuration for tests: both listeners on free loopback ports, the
/// fake's default credentials, and timings short enough for a test run.
pub fn test_config(upstream_url: &str) -> Config {
    let fake = FakeConfig::default();
    let mut config = Config::default();
    config.listen.address = "127.0.0.1:0".parse().expect("valid address");
    config.admin.address = "127.0.0.1:0".parse().expect("valid address");
    config.upstream.url = Some(upstream_url.to_owned());
    config.upstream.request_timeout = Dur::secs(10);
    config.credentials.user_name = Some(fake.user_name);
    config.credentials.password = Some(SecretString::from(fake.password));
    config.token.retry_initial = Dur::millis(50);
    config.token.retry_max = Dur::millis(400);
    config.token.login_timeout = Dur::secs(3);
    config.token.first_token_wait = Dur::secs(5);
    config.shutdown.drain_timeout = Dur::secs(5);
    config
}

/// A TOML configuration for the real binary in front of the Truedat at
/// `upstream_url`: both listeners on free loopback ports, the fake's
/// credentials, then each line of `extra` (such as `log.format = "text"`).
pub fn binary_toml(upstream_url: &str, extra: &[&str]) -> String {
    let fake = FakeConfig::default();
    let mut text = String::new();
    for (key, value) in [
        ("listen.address", "127.0.0.1:0".to_owned()),
        ("admin.address", "127.0.0.1:0".to_owned()),
        ("upstream.url", upstream_url.to_owned()),
        ("credentials.user_name", fake.user_name),
        ("credentials.password", fake.password),
    ] {
        text.push_str(&format!("{key} = {}\n", toml::Value::String(value)));
    }
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The proxy running in this process.
pub struct TestProxy {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub client: Client,
    shutdown: CancellationToken,
    task: JoinHandle<Outcome>,
}

impl TestProxy {
    /// Starts a proxy in front of `fake` (see [`start`](Self::start)) and
    /// waits until it holds a token.
    pub async fn ready(fake: &FakeTruedat, adjust: impl FnOnce(&mut Config)) -> TestProxy {
        let proxy = TestProxy::start(fake, adjust).await;
        assert!(proxy.wait_ready(Duration::from_secs(10)).await, "the proxy did not become ready");
        proxy
    }

    /// Starts a proxy in front of `fake`, after `adjust` changed the test configuration.
    pub async fn start(fake: &FakeTruedat, adjust: impl FnOnce(&mut Config)) -> TestProxy {
        let mut config = test_config(&fake.url());
        adjust(&mut config);
        TestProxy::start_with(config).await
    }

    /// Starts a proxy with exactly `config`.
    pub async fn start_with(config: Config) -> TestProxy {
        TestProxy::start_app(config, |app| app).await
    }

    /// Starts a proxy with exactly `config` that checks its TLS files every
    /// `every` (the binary checks every `tls::POLL_INTERVAL`).
    pub async fn start_with_tls_poll(config: Config, every: Duration) -> TestProxy {
        TestProxy::start_app(config, |app| app.with_tls_poll_interval(every)).await
    }

    async fn start_app(config: Config, adjust: impl FnOnce(App) -> App) -> TestProxy {
        config.validate().expect("the test configuration is valid");
        let app = adjust(App::build(config).await.expect("the proxy starts"));
        let bound = app.bound();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        TestProxy { proxy: bound.proxy, admin: bound.admin, client: Client::new(), shutdown, task }
    }

    /// A URL on the proxy listener.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.proxy, path_and_query)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// `GET` through the proxy.
    pub async fn get(&self, path_and_query: &str) -> Reply {
        self.client.get(&self.url(path_and_query)).await
    }

    /// Waits until `/readyz` answers 200; false after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        wait_until(timeout, || async { self.client.get(&self.admin_url("/readyz")).await.status == 200 }).await
    }

    /// Starts the graceful shutdown, as SIGTERM would.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts down and returns how the run ended.
    pub async fn stop(self) -> Outcome {
        self.shutdown.cancel();
        self.task.await.expect("the proxy task does not panic")
    }
}

/// The real binary, started with a TOML file and extra environment.
pub struct BinaryProxy {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    output: Arc<Mutex<String>>,
    _config: tempfile::NamedTempFile,
}

impl BinaryProxy {
    /// Starts the binary with `toml` as `--config` and `env` added, and waits
    /// for its "started" log line to learn the bound addresses.
    pub async fn spawn(toml: &str, env: &[(&str, &str)]) -> BinaryProxy {
        let config = config_file(toml);
        let mut command = Command::new(BINARY);
        command.arg("--config").arg(config.path());
        BinaryProxy::launch(command, config, env).await
    }

    /// Like `spawn`, with the process allowed at most `max_fds` open file
    /// descriptors (`ulimit -n`, then `exec`: the pid stays the binary's).
    pub async fn spawn_with_fd_limit(toml: &str, max_fds: u32) -> BinaryProxy {
        let config = config_file(toml);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {max_fds} && exec \"$0\" --config \"$1\""))
            .arg(BINARY)
            .arg(config.path());
        BinaryProxy::launch(command, config, &[]).await
    }

    async fn launch(mut command: Command, config: tempfile::NamedTempFile, env: &[(&str, &str)]) -> BinaryProxy {
        // Only what the test sets: a developer's or CI's own proxy or
        // TRUEDAT_PROXY_* variables must not leak into the run.
        let mut child = command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        collect(child.stdout.take().expect("piped"), output.clone(), Some(started_tx));
        collect(child.stderr.take().expect("piped"), output.clone(), None);
        let line = tokio::time::timeout(Duration::from_secs(20), started_rx)
            .await
            .unwrap_or_else(|_| panic!("no 'started' line; output so far:\n{}", output.lock().unwrap()))
            .unwrap_or_else(|_| panic!("the binary exited early; output:\n{}", output.lock().unwrap()));
        let json: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
        let addr = |field: &str| json[field].as_str().and_then(|a| a.parse().ok()).expect("an address field");
        BinaryProxy { child, proxy: addr("proxy"), admin: addr("admin"), output, _config: config }
    }

    /// The process id, for reading `/proc/PID/status` and `/proc/PID/fd`.
    ///
    /// # Panics
    /// Once the process has been waited for.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// Sends `signal` (such as `"TERM"`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process is running").to_string();
        let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("waiting on the child works"),
            Err(_) => panic!("the binary did not exit within {timeout:?}; output:\n{}", self.output()),
        }
    }

    /// Everything the process printed so far, stdout and stderr.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The access line of the request whose path is `path` (without the
    /// query), once the process has printed it; panics after 10 s.
    pub async fn access_line(&self, path: &str) -> serde_json::Value {
        let find = || {
            self.output()
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|event| event["message"] == "request" && event["path"] == path && event["status"].is_u64())
        };
        let appeared = wait_until(Duration::from_secs(10), || async { find().is_some() }).await;
        assert!(appeared, "no access line for {path}; output:\n{}", self.output());
        find().expect("it appeared")
    }

    /// A URL on the proxy listener.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.proxy, path_and_query)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
}

/// Runs the binary to completion (for `--check-config` and invalid
/// configurations) and returns its exit status, stdout and stderr.
pub async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let output = Command::new(BINARY)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("the binary exits by itself")
        .expect("the binary runs");
    (output.status, String::from_utf8_lossy(&output.stdout).into(), String::from_utf8_lossy(&output.stderr).into())
}

/// A temporary TOML file holding `toml`.
pub fn config_file(toml: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(toml.as_bytes()).expect("writing the temporary file");
    file
}

/// Appends every line of `stream` to `output`; the first line mentioning the
/// start of the proxy is also sent to `started`.
fn collect<R>(stream: R, output: Arc<Mutex<String>>, mut started: Option<tokio::sync::oneshot::Sender<String>>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("truedat-auth-proxy started") {
                if let Some(started) = started.take() {
                    let _ = started.send(line.clone());
                }
            }
            let mut output = output.lock().unwrap();
            output.push_str(&line);
            output.push('\n');
        }
    });
}

/// Starts a fake Truedat with default settings and `adjust` applied.
pub async fn fake(adjust: impl FnOnce(&mut FakeConfig)) -> FakeTruedat {
    let mut config = FakeConfig::default();
    adjust(&mut config);
    FakeTruedat::start(config).await
}
