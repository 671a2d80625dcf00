//! The binary: command line, configuration, logging, signals and exit codes.
//! Everything else is in the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use truedat_auth_proxy::app::{App, Outcome, StartError};
use truedat_auth_proxy::config::Config;
use truedat_auth_proxy::{telemetry, tls, upstream};

/// Exit code for an invalid configuration or command line (SPEC §1).
const EXIT_INVALID: u8 = 2;
/// Exit code for any other fatal error.
const EXIT_FATAL: u8 = 1;

/// Authenticating reverse-proxy sidecar for Truedat: local tools talk plain
/// HTTP to it, and it forwards their requests with a fresh bearer token.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (every setting can also come from TRUEDAT_PROXY_* variables).
    #[arg(long, value_name = "PATH", env = "TRUEDAT_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration (no network), print it with secrets redacted, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    // clap exits 0 for --help/--version and 2 for a bad command line.
    let cli = Cli::parse();
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
