//! The binary: command line, configuration, logging, signals and exit codes.
//! Everything else is in the library.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use truedat_auth_proxy::app::{App, Outcome, StartError};
use truedat_auth_proxy::config::Config;
use truedat_auth_proxy::units::Dur;
use truedat_auth_proxy::{telemetry, tls, upstream, wait};

/// Exit code for an invalid configuration or command line (SPEC §1).
const EXIT_INVALID: u8 = 2;
/// Exit code for any other fatal error.
const EXIT_FATAL: u8 = 1;

/// Authenticating reverse-proxy sidecar for Truedat: local tools talk plain
/// HTTP to it, and it forwards their requests with a fresh bearer token.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (every setting can also come from TRUEDAT_PROXY_* variables).
    #[arg(long, value_name = "PATH", env = "TRUEDAT_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration (no network), print it with secrets redacted, and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Wait until the proxy running with this configuration is ready (its
    /// /readyz answers 200): exit 0 then, 1 after --timeout. For a Kubernetes
    /// postStart hook, so that the next containers start after the proxy.
    Wait {
        /// The proxy's TOML configuration file; only admin.address is read.
        #[arg(long, value_name = "PATH", env = "TRUEDAT_PROXY_CONFIG")]
        config: Option<PathBuf>,
        /// How long to wait, such as "30s" or "5m".
        #[arg(long, value_name = "DURATION", default_value = "30s")]
        timeout: String,
    },
}

fn main() -> ExitCode {
    // clap exits 0 for --help/--version and 2 for a bad command line.
    let cli = Cli::parse();
    if let Some(Command::Wait { config, timeout }) = cli.command {
        if cli.check_config {
            eprintln!("truedat-auth-proxy: --check-config does not go with wait");
            return ExitCode::from(EXIT_INVALID);
        }
        return wait_ready(config.or(cli.config).as_deref(), &timeout);
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(invalid) => {
            for problem in &invalid.0 {
                eprintln!("invalid configuration: {problem}");
            }
            return ExitCode::from(EXIT_INVALID);
        }
    };
    if cli.check_config {
        // TLS material and the egress proxy are part of the configuration: a
        // bad file is reported like a bad key (no network is used).
        let origin = config.origin();
        let built = tls::Material::load(&config.upstream, origin.is_https())
            .map_err(upstream::BuildError::from)
            .and_then(|tls| upstream::build(&config.upstream, &config.proxy_env, &origin, tls.into()));
        if let Err(e) = built {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = telemetry::init_logging(&config.log) {
        eprintln!("truedat-auth-proxy: {e}");
        return ExitCode::from(EXIT_INVALID);
    }
    let runtime = match runtime(config.runtime.worker_threads) {
        Ok(runtime) => runtime,
        Err(e) => return fatal(&format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(run(config))
}

/// `wait`: exit 0 once the proxy at `admin.address` is ready, 1 after
/// `timeout`, 2 if the address or the timeout is invalid.
fn wait_ready(config: Option<&Path>, timeout: &str) -> ExitCode {
    let timeout = match timeout.parse::<Dur>() {
        Ok(timeout) => timeout.0,
        Err(e) => {
            eprintln!("truedat-auth-proxy wait: --timeout: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let admin = match Config::load_admin_address(config) {
        Ok(admin) => admin,
        Err(invalid) => {
            for problem in &invalid.0 {
                eprintln!("invalid configuration: {problem}");
            }
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let target = match wait::target(admin) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("truedat-auth-proxy wait: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    match runtime.block_on(wait::until_ready(target, timeout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(not_ready) => {
            eprintln!("truedat-auth-proxy wait: {not_ready}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

/// One thread by default (see `runtime.worker_threads` in the README's
/// Performance section for the measurements behind it).
fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(worker_threads).enable_all().build()
    }
}

async fn run(config: Config) -> ExitCode {
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(StartError::Upstream(e)) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
        Err(e) => return fatal(&e.to_string()),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    match app.run(shutdown).await {
        Outcome::Clean => ExitCode::SUCCESS,
        Outcome::DrainTimedOut(_) => ExitCode::from(EXIT_FATAL),
    }
}

/// The first SIGTERM or SIGINT begins a graceful shutdown; a second one ends
/// the process at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; use POST /quitquitquit to stop");
        return;
    };
    let mut first = true;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if !first {
            tracing::warn!(signal = name, "second signal: exiting at once");
            std::process::exit(i32::from(EXIT_FATAL));
        }
        first = false;
        tracing::info!(signal = name, "graceful shutdown requested");
        shutdown.cancel();
    }
}

fn fatal(message: &str) -> ExitCode {
    tracing::error!(error = message, "fatal");
    eprintln!("truedat-auth-proxy: {message}");
    ExitCode::from(EXIT_FATAL)
}
