//! The `weir` binary: command line, logging, the tokio runtime, signals, and the
//! wiring of the data plane ([`weir_core`]) with the admin endpoint
//! ([`weir_admin`]). This is the only crate that uses `anyhow`.

mod demo;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use weir_config::{Config, LogFormat};
use weir_core::Server;

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "A layer-4 load balancer whose operators can see and steer everything",
    long_about = "weir proxies TCP connections to pools of backends (round robin, least \
                  connections, two random choices, first, Maglev), with retries, limits, \
                  access logs and graceful shutdown.\n\nStart with `weir demo` for a \
                  self-contained first look, or `weir run --config weir.toml`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the load balancer with a configuration file.
    ///
    /// SIGTERM or SIGINT starts a graceful shutdown: stop accepting, let open
    /// connections finish for up to each listener's shutdown_timeout, then exit 0.
    /// A second signal closes the remaining connections at once.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "weir.toml", env = "WEIR_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file without starting anything.
    ///
    /// Exits 0 when the file is valid, 1 otherwise, printing every problem with
    /// its key path.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "weir.toml", env = "WEIR_CONFIG")]
        config: PathBuf,
    },
    /// Start a self-contained demo on loopback: three demo HTTP backends, a proxy
    /// in front of them and the admin endpoint, and print what to curl.
    Demo {
        /// Address of the demo proxy.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the admin endpoint.
        #[arg(long, default_value = "127.0.0.1:9900")]
        admin: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => load(&config).and_then(run),
        Command::Check { config } => return check(&config),
        Command::Demo { listen, admin } => demo::run(listen, admin),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Config> {
    weir_config::load_file(path).map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))
}

#[allow(clippy::print_stdout)] // `check` reports to the terminal by design.
fn check(path: &Path) -> ExitCode {
    match weir_config::load_file(path) {
        Ok(cfg) => {
            let backends: usize = cfg.pools.iter().map(|p| p.backends.len()).sum();
            let routes: usize = cfg.listeners.iter().map(|l| l.routes.len()).sum();
            println!(
                "{}: ok ({} listeners, {} routes, {} pools, {} backends)",
                path.display(),
                cfg.listeners.len(),
                routes,
                cfg.pools.len(),
                backends
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid configuration\n{e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Installs the global tracing subscriber. Access-log lines (target
/// `weir::access`) stay on whatever the level, when the access log is enabled.
pub(crate) fn init_logging(cfg: &weir_config::Log) -> Result<()> {
    let mut directives = cfg.level.clone();
    if cfg.access_log {
        directives.push_str(",weir::access=info");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .with_context(|| format!("log.level: invalid filter {directives:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    let result = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

pub(crate) fn build_runtime(worker_threads: usize) -> Result<tokio::runtime::Runtime> {
    let threads = match worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = if threads == 1 {
        // One thread: no cross-thread wake-ups at all.
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .thread_name("weir-worker")
        .build()
        .context("cannot start the runtime")
}

fn run(config: Config) -> Result<()> {
    init_logging(&config.log)?;
    let runtime = build_runtime(config.runtime.worker_threads)?;
    runtime.block_on(serve(config, |_, _| {}))
}

/// Starts the data plane and the admin endpoint, then waits for a signal and shuts
/// down gracefully. `started` is told the server and the admin address once both
/// are accepting.
pub(crate) async fn serve(
    config: Config,
    started: impl FnOnce(&Server, Option<SocketAddr>),
) -> Result<()> {
    // Installed first: a signal that arrives while starting must stop weir
    // gracefully, not kill it with the default action.
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let admin = match config.admin.http {
        Some(addr) => Some(
            weir_admin::AdminListener::bind(addr)
                .await
                .with_context(|| format!("admin.http: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let server = Arc::new(Server::start(&config).await?);
    let admin_stop = CancellationToken::new();
    let admin_addr = admin.as_ref().map(weir_admin::AdminListener::local_addr);
    if let Some(admin) = admin {
        let server = Arc::clone(&server);
        let stop = admin_stop.clone();
        let build = weir_admin::metrics::BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: env!("WEIR_REVISION").to_owned(),
        };
        tokio::spawn(async move {
            if let Err(e) = admin.serve(server, build, stop).await {
                tracing::error!(error = %e, "admin endpoint failed");
            }
        });
    }
    started(&server, admin_addr);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "weir started");

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    server.shutdown();
    tokio::select! {
        () = server.wait() => {}
        _ = term.recv() => { tracing::warn!("second signal: closing all connections"); server.close_all(); server.wait().await }
        _ = int.recv() => { tracing::warn!("second signal: closing all connections"); server.close_all(); server.wait().await }
    }
    admin_stop.cancel();
    tracing::info!("weir stopped");
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("cannot install a signal handler")
}
