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
use truedat_auth_proxy::{inject, telemetry, tls, upstream, wait, workers};

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
    /// Add the proxy to every pod template of Kubernetes manifests (YAML or
    /// JSON, from the FILEs or standard input) and write them to standard
    /// output. Works in a pipe and as a Helm post-renderer.
    Inject(InjectArgs),
}

/// `inject`'s options (SPEC §1): what differs from one user to another.
#[derive(clap::Args, Debug)]
struct InjectArgs {
    /// The proxy's image.
    #[arg(long, value_name = "IMAGE", default_value = concat!("truedat-auth-proxy:", env!("CARGO_PKG_VERSION")), value_parser = inject::names::image)]
    image: String,
    /// The Secret holding the service user's password, under the key `password`.
    #[arg(long, value_name = "NAME", default_value = "truedat-auth-proxy-credentials", value_parser = inject::names::object)]
    secret: String,
    /// The ConfigMap holding the proxy's `config.toml`.
    #[arg(long, value_name = "NAME", default_value = "truedat-auth-proxy-config", value_parser = inject::names::object)]
    config_map: String,
    /// For Kubernetes before 1.29: the proxy as the first regular container,
    /// holding the tool back with a postStart `wait`, instead of a native sidecar.
    #[arg(long)]
    no_native_sidecar: bool,
    /// Set this variable to the proxy's URL (http://127.0.0.1:8080) in the
    /// tool's containers. Repeatable.
    #[arg(long, value_name = "NAME", value_parser = inject::names::variable)]
    tool_env: Vec<String>,
    /// Only inject pod templates annotated `truedat-auth-proxy/inject: "true"`.
    #[arg(long)]
    only_annotated: bool,
    /// Manifest files; standard input when there are none, or for `-`.
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
}

fn main() -> ExitCode {
    // clap exits 0 for --help/--version and 2 for a bad command line.
    let cli = Cli::parse();
    match cli.command {
        Some(_) if cli.check_config => {
            eprintln!("truedat-auth-proxy: --check-config goes with no subcommand");
            return ExitCode::from(EXIT_INVALID);
        }
        Some(Command::Wait { config, timeout }) => return wait_ready(config.or(cli.config).as_deref(), &timeout),
        // The proxy's --config (or TRUEDAT_PROXY_CONFIG) plays no part in inject.
        Some(Command::Inject(args)) => return inject_manifests(args),
        None => {}
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

/// `inject`: 0 with the manifests on stdout; 2, with one line on stderr and
/// nothing on stdout, for input that does not parse or an object it refuses.
fn inject_manifests(args: InjectArgs) -> ExitCode {
    let options = inject::Options {
        sidecar: inject::Choices {
            image: args.image,
            secret: args.secret,
            config_map: args.config_map,
            native: !args.no_native_sidecar,
        },
        tool_env: args.tool_env,
        only_annotated: args.only_annotated,
    };
    let inputs = match inject::read_inputs(&args.files) {
        Ok(inputs) => inputs,
        Err(e) => {
            eprintln!("truedat-auth-proxy inject: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let output = match inject::run(&options, &inputs) {
        Ok(output) => output,
        Err(e @ inject::Error::Embedded(_)) => {
            eprintln!("truedat-auth-proxy inject: {e}");
            return ExitCode::from(EXIT_FATAL);
        }
        Err(e) => {
            eprintln!("truedat-auth-proxy inject: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    if let Err(e) = std::io::Write::write_all(&mut std::io::stdout().lock(), output.stdout.as_bytes()) {
        eprintln!("truedat-auth-proxy inject: cannot write the manifests: {e}");
        return ExitCode::from(EXIT_FATAL);
    }
    for line in &output.stderr {
        eprintln!("{line}");
    }
    ExitCode::SUCCESS
}

/// One thread by default (see `runtime.worker_threads` in the README's
/// Performance section for the measurements behind it). More threads each
/// run a current-thread runtime of their own (started by the app, see
/// `workers`), except where the kernel cannot spread connections over them:
/// there, tokio's work-stealing runtime.
fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads == 1 || workers::SPREAD_BY_KERNEL {
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
