//! The `weir` binary: command line, logging, the tokio runtime, signals, and the
//! wiring of the data plane ([`weir_core`]) with the admin endpoint
//! ([`weir_admin`]). This is the only crate that uses `anyhow`.

mod activation;
mod ctl;
mod demo;
mod handover;
mod manual;
mod notify;

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
use weir_telemetry::LogQueue;

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "A load balancer whose operators can see and steer everything",
    long_about = "weir balances TCP, TLS, HTTP/1.1, HTTP/2, gRPC, WebSocket and UDP traffic \
                  over pools of backends (round robin, least connections, two random \
                  choices, first, Maglev), with health checks, failover tiers, retries, \
                  limits, a firewall, access logs, metrics and a control API.\n\nStart \
                  with `weir demo` for a self-contained first look, or `weir run --config \
                  weir.toml`."
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
    ///
    /// SIGHUP (like `weir reload`) reads the file again and applies it without
    /// losing a connection; a broken file changes nothing and is logged.
    ///
    /// SIGUSR2 upgrades in place: weir starts the program file it was started
    /// from (a new version after a package upgrade) with `--upgrade`; once that
    /// one serves, it takes over (systemd's main process) and this one drains.
    /// One that has not taken over within WEIR_UPGRADE_TIMEOUT (default 2m)
    /// is stopped, and this one goes on serving.
    ///
    /// Under systemd, sockets passed by socket activation (LISTEN_FDS) serve
    /// the listeners named by their FileDescriptorName=.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "weir.toml", env = "WEIR_CONFIG")]
        config: PathBuf,
        /// Take over from a weir already serving these addresses: bind beside
        /// it (SO_REUSEPORT) while it drains after its SIGTERM. Without this
        /// flag weir refuses to start while another process listens on any
        /// of its addresses.
        #[arg(long)]
        upgrade: bool,
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
    /// Show the running instance: version, config generation, last reload,
    /// backends by state, saved state for backends not in the config.
    Status {
        #[command(flatten)]
        target: ctl::Target,
    },
    /// List pools with their balancing, check, active tier, serving backends
    /// and last tier change.
    Pools {
        #[command(flatten)]
        target: ctl::Target,
    },
    /// Show a pool's changes of its active tier, with their causes.
    Pool {
        #[command(subcommand)]
        command: ctl::PoolCommand,
        #[command(flatten)]
        target: ctl::Target,
    },
    /// List backends (of one pool, or all) with state, weights, connections,
    /// last probe and last change.
    Backends {
        /// Only this pool.
        pool: Option<String>,
        #[command(flatten)]
        target: ctl::Target,
    },
    /// Change a backend (enable, drain, disable, weight) or show its history.
    ///
    /// Changes need WEIR_TOKEN when the daemon has admin.token_file; they are
    /// written to the state file before they are acknowledged.
    Backend {
        #[command(subcommand)]
        command: ctl::BackendCommand,
        #[command(flatten)]
        target: ctl::Target,
    },
    /// List, add or remove firewall rules at runtime, for every listener.
    ///
    /// `deny` refuses a source (reason `banned`); `allow` lets it past the
    /// configured lists. Rules are written to the state file before they are
    /// acknowledged and applied again after a restart; `--for` ends one by
    /// itself. Changes need WEIR_TOKEN when the daemon has admin.token_file.
    Firewall {
        #[command(subcommand)]
        command: ctl::FirewallCommand,
        #[command(flatten)]
        target: ctl::Target,
    },
    /// Change a listener at runtime: its max_connections.
    Listener {
        #[command(subcommand)]
        command: ctl::ListenerCommand,
        #[command(flatten)]
        target: ctl::Target,
    },
    /// Explain where a client would go: the route that takes it (and why the
    /// routes before it do not), the route's pools and active tier, why each
    /// backend is eligible or not, and the backend maglev picks for it.
    Explain {
        #[command(flatten)]
        args: ctl::ExplainArgs,
        #[command(flatten)]
        target: ctl::Target,
    },
    /// List the live connections and UDP flows (client, listener, route,
    /// pool, backend, age, bytes each way, state), or close some.
    ///
    /// Conditions narrow the list; `close` needs at least one.
    Connections {
        #[command(subcommand)]
        command: Option<ctl::ConnectionsCommand>,
        #[command(flatten)]
        filter: ctl::ConnectionFilter,
        /// Show at most this many (0: all).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[command(flatten)]
        target: ctl::Target,
    },
    /// Make the daemon read its config file again and apply it.
    ///
    /// Prints what was added, removed and changed; on a broken file prints why
    /// and exits 1, and the running config is unchanged.
    Reload {
        #[command(flatten)]
        target: ctl::Target,
    },
    /// Follow backend transitions, tier changes, reloads and firewall rules
    /// as they happen.
    Watch {
        /// Only events of this pool (reloads always show).
        #[arg(long)]
        pool: Option<String>,
        #[command(flatten)]
        target: ctl::Target,
    },
    /// Start a self-contained demo on loopback: three demo HTTP backends with
    /// health checks, a proxy in front of them and the admin endpoints, and
    /// print what to try, including a failover to watch.
    Demo {
        /// Address of the demo proxy.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the admin HTTP endpoint (metrics, health).
        #[arg(long, default_value = "127.0.0.1:9900")]
        admin: SocketAddr,
        /// Address of the gRPC control API (`weir status` and friends).
        #[arg(long, default_value = "127.0.0.1:9901")]
        grpc: SocketAddr,
        /// Also print the configuration the demo runs.
        #[arg(long)]
        show_config: bool,
    },
    /// Print the shell completion script for `shell`.
    ///
    /// bash: `weir completions bash > /etc/bash_completion.d/weir`; zsh: into a
    /// directory of `$fpath` as `_weir`; fish: into
    /// `~/.config/fish/completions/weir.fish`.
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages: weir(1) and one page per command (weir-run(1),
    /// weir-backend-drain(1), ...), from the same definitions as `--help`.
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
}

/// mimalloc rather than the C library's allocator: its per-thread free lists
/// serve the few allocations of every request in a fraction of the
/// instructions (an h2c request: 49,600 -> 47,000 in all, callgrind), and idle
/// connections take less memory. Transparent huge pages are off (`no_thp`),
/// else a fresh process holds ~10 MB more.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, upgrade } => {
            load(&config).and_then(|c| run(c, config, Takeover::from(upgrade)))
        }
        Command::Check { config } => return check(&config),
        Command::Demo {
            listen,
            admin,
            grpc,
            show_config,
        } => demo::run(&demo::Demo {
            listen,
            admin,
            grpc,
            show_config,
        }),
        Command::Status { target } => return ctl::run(&target, ctl::Request::Status),
        Command::Pools { target } => return ctl::run(&target, ctl::Request::Pools),
        Command::Pool { command, target } => {
            return ctl::run(&target, ctl::Request::Pool(command));
        }
        Command::Backends { pool, target } => {
            return ctl::run(&target, ctl::Request::Backends(pool));
        }
        Command::Backend { command, target } => {
            return ctl::run(&target, ctl::Request::Backend(command));
        }
        Command::Reload { target } => return ctl::run(&target, ctl::Request::Reload),
        Command::Explain { args, target } => {
            return ctl::run(&target, ctl::Request::Explain(args));
        }
        Command::Connections {
            command,
            filter,
            limit,
            target,
        } => {
            // Conditions written before `close` narrow it too.
            let command = match command {
                Some(ctl::ConnectionsCommand::Close { filter: after }) => {
                    match after.and(filter.clone()) {
                        Ok(filter) => Some(ctl::ConnectionsCommand::Close { filter }),
                        Err(message) => {
                            eprintln!("weir: {message}");
                            return ExitCode::from(2);
                        }
                    }
                }
                other => other,
            };
            return ctl::run(
                &target,
                ctl::Request::Connections {
                    filter,
                    limit,
                    command,
                },
            );
        }
        Command::Watch { pool, target } => return ctl::run(&target, ctl::Request::Watch(pool)),
        Command::Firewall { command, target } => {
            return ctl::run(&target, ctl::Request::Firewall(command));
        }
        Command::Listener { command, target } => {
            return ctl::run(&target, ctl::Request::Listener(command));
        }
        Command::Completions { shell } => manual::completions::<Cli>(shell),
        Command::Man { dir } => manual::man_pages::<Cli>(&dir),
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
    let checked = weir_config::load_file(path)
        .and_then(|cfg| resolve(path, &cfg).map(|()| cfg))
        .map(|cfg| {
            // The TLS files are read as a start or reload reads them, so that
            // `weir check && kill -HUP` fails here on what would fail there.
            let files = weir_core::upstream::check_files(&cfg)
                .and_then(|()| weir_http::Layer::check_files(&cfg));
            (cfg, files)
        });
    match checked {
        Ok((_, Err(e))) => {
            eprintln!("{}: invalid configuration\n{e}", path.display());
            ExitCode::FAILURE
        }
        Ok((cfg, Ok(()))) => {
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

/// Resolves the backend host names as `weir run` would, so that `check`
/// catches a name that does not resolve.
fn resolve(path: &Path, cfg: &Config) -> Result<(), weir_config::ConfigError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            weir_config::ConfigError::new(vec![weir_config::Problem::new(
                "backend names",
                format!("cannot start the resolver: {e}"),
            )])
        })?;
    runtime
        .block_on(weir_core::resolve::backends(cfg))
        .map(drop)
        .map_err(|mut e| {
            e.file = Some(path.display().to_string());
            e
        })
}

/// Installs the global tracing subscriber, writing to the standard output
/// through a [`LogQueue`]: a reader that stalls costs lines, counted in
/// `weir_log_dropped_lines_total`, never a worker blocked in a write.
pub(crate) fn init_logging(cfg: &weir_config::Log) -> Result<Arc<LogQueue>> {
    let directives = log_directives(&cfg.level);
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .with_context(|| format!("log.level: invalid filter {directives:?}"))?;
    let queue = LogQueue::start(std::io::stdout(), weir_telemetry::QUEUE_BYTES, |n| {
        tracing::warn!(
            dropped = n,
            "log lines were dropped: the standard output did not take them fast enough"
        );
    })
    .context("cannot start the log writer")?;
    let queue = Arc::new(queue);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(LogSink(Arc::clone(&queue)));
    let result = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(queue)
}

/// How long the exit waits for queued log lines to be written.
pub(crate) const LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// The subscriber's writer: each event it formats goes to the queue whole.
struct LogSink(Arc<LogQueue>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> LogLine<'a> {
        LogLine(&self.0)
    }
}

struct LogLine<'a>(&'a LogQueue);

impl std::io::Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The filter for `log.level`. Access-log lines (target `weir::access`) stay
/// on whatever the level: whether they are written is `access_log`'s, which
/// the listeners read and a reload changes, while this filter is set once.
/// A level that names `weir::access` itself is taken as written.
fn log_directives(level: &str) -> String {
    let names_access = level
        .split(',')
        .any(|d| d.trim().split(['=', '[']).next() == Some("weir::access"));
    if names_access {
        level.to_owned()
    } else {
        format!("{level},weir::access=info")
    }
}

pub(crate) fn build_runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
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

fn run(config: Config, path: PathBuf, takeover: Takeover) -> Result<()> {
    // First: taking the descriptors changes the environment, which only a
    // process without other threads may do.
    let inherited = activation::from_env()?;
    let log = init_logging(&config.log)?;
    let runtime = build_runtime(config.runtime.threads())?;
    let served = runtime.block_on(serve(
        config,
        Some(path),
        takeover,
        inherited,
        Some(Arc::clone(log.stats())),
        |_, _| {},
    ));
    log.flush(LOG_FLUSH);
    served
}

/// Whether weir may start on addresses another process listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Takeover {
    /// Refuse, saying what to do instead: two processes on one port would
    /// split its traffic silently.
    Refuse { hint: &'static str },
    /// `--upgrade`: share the ports with the weir being replaced.
    Allow,
}

impl From<bool> for Takeover {
    fn from(upgrade: bool) -> Self {
        if upgrade {
            Takeover::Allow
        } else {
            Takeover::Refuse {
                hint: "Stop it, choose another address, or, to replace a running weir without \
                       dropping connections, start this one with `weir run --upgrade` and then \
                       send the old one SIGTERM",
            }
        }
    }
}

/// Refuses to start on an address another process listens on, naming it.
/// The addresses of listeners served by sockets systemd passed are in use by
/// those very sockets.
fn check_free(config: &Config, inherited: &weir_core::Inherited, hint: &str) -> Result<()> {
    let mut addresses: Vec<(String, SocketAddr, bool)> = Vec::new();
    addresses.extend(
        config
            .admin
            .http
            .map(|a| ("admin.http".to_owned(), a, false)),
    );
    addresses.extend(
        config
            .admin
            .grpc
            .map(|a| ("admin.grpc".to_owned(), a, false)),
    );
    for (i, l) in config.listeners.iter().enumerate() {
        if inherited.serves(&l.name) {
            continue;
        }
        for (j, &a) in l.bind.iter().enumerate() {
            let what = format!("listeners[{i}].bind[{j}] ({})", l.name);
            addresses.push((what, a, l.udp.is_some()));
        }
    }
    for (what, addr, udp) in addresses {
        let taken = if udp {
            weir_core::udp::in_use(addr)
        } else {
            weir_core::in_use(addr)
        };
        if taken {
            anyhow::bail!("{what}: {addr} is in use by another process (another weir?). {hint}");
        }
    }
    Ok(())
}

/// The admin addresses actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdminAddrs {
    pub(crate) http: Option<SocketAddr>,
    pub(crate) grpc: Option<SocketAddr>,
}

/// Starts the data plane and the admin endpoints, then serves until a signal:
/// SIGHUP reloads `config_path`, SIGTERM/SIGINT shut down gracefully. `started`
/// is told the server and the admin addresses once everything accepts.
pub(crate) async fn serve(
    config: Config,
    config_path: Option<PathBuf>,
    takeover: Takeover,
    inherited: weir_core::Inherited,
    log: Option<Arc<weir_telemetry::LogStats>>,
    started: impl FnOnce(&Server, AdminAddrs),
) -> Result<()> {
    let notifier = Arc::new(notify::Notifier::from_env());
    // Installed first: a signal that arrives while starting must stop weir
    // gracefully, not kill it with the default action.
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hup = signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut usr2 = signal(tokio::signal::unix::SignalKind::user_defined2())?;
    let mut usr1 = signal(tokio::signal::unix::SignalKind::user_defined1())?;
    inherited.check_names(&config)?;
    if let Takeover::Refuse { hint } = takeover {
        check_free(&config, &inherited, hint)?;
    }
    check_descriptors(&config);
    // Both admin ports are bound before the data plane starts, so a taken
    // port fails the start instead of leaving weir without its controls. A
    // weir taking over from one that serves them (a new version SIGUSR2
    // started, or `--upgrade` beside a running weir) listens on them only
    // once it serves: the kernel shares a port's connections among the
    // sockets listening on it, and until then the running weir alone
    // answers (this one would say "starting" to half the probes and hold
    // half the commands).
    let replacing = handover::predecessor().is_some();
    let bind = |addr: SocketAddr, key: &str| {
        let later = replacing || (takeover == Takeover::Allow && weir_core::in_use(addr));
        weir_core::bind_only(addr)
            .and_then(|s| {
                if !later {
                    weir_core::listen(&s)?;
                }
                Ok((s, later))
            })
            .with_context(|| format!("{key}: cannot listen on {addr}"))
    };
    let admin = config
        .admin
        .http
        .map(|addr| bind(addr, "admin.http"))
        .transpose()?;
    let grpc = config
        .admin
        .grpc
        .map(|addr| bind(addr, "admin.grpc"))
        .transpose()?;
    let build = weir_admin::metrics::BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        revision: env!("WEIR_REVISION").to_owned(),
    };
    let admin_stats = Arc::new(weir_admin::Stats::default());
    let limits = weir_admin::conn::Limits::from_config(&config.admin);
    let admin_stop = CancellationToken::new();
    // The HTTP endpoint answers from now on (unless it waits to take over):
    // `/readyz` says 503 until the first probe round is done.
    let handle = Arc::new(weir_admin::Handle::default());
    let admin_http = admin.as_ref().and_then(|(s, _)| s.local_addr().ok());
    let serve_admin = {
        let (handle, stop) = (Arc::clone(&handle), admin_stop.clone());
        let (build, stats, first) = (
            build.clone(),
            Arc::clone(&admin_stats),
            config.admin.clone(),
        );
        move |socket: std::net::TcpListener| -> Result<()> {
            let admin =
                weir_admin::AdminListener::from_std(socket).context("admin.http: cannot listen")?;
            tokio::spawn(admin.serve(handle, build, stats, limits, first, stop));
            Ok(())
        }
    };
    let admin = match admin {
        Some((socket, false)) => {
            serve_admin(socket)?;
            None
        }
        Some((socket, true)) => Some((socket, serve_admin)),
        None => None,
    };
    let layer = Arc::new(weir_http::Layer::new());
    for (name, addr, udp) in inherited.sockets() {
        let protocol = if udp { "udp" } else { "tcp" };
        tracing::info!(name, %addr, protocol, "socket passed by systemd");
    }
    let passed_sockets = !inherited.is_empty();
    let handover_config = config_path.clone();
    let options = weir_core::Options {
        config_path,
        http: Some(Arc::clone(&layer) as Arc<dyn weir_core::l7::HttpLayer>),
        inherited,
        takeover: takeover == Takeover::Allow,
        log,
    };
    let server = Server::start_with(config, options).await?;
    handle.set(Arc::clone(&server));
    // The first probe round is done and every listener accepts. A stop asked
    // for while starting is served first: a new version told to stop must not
    // take over, nor listen on the admin ports it waited to share.
    let stop_early = tokio::select! {
        biased;
        _ = term.recv() => true,
        _ = int.recv() => true,
        () = std::future::ready(()) => false,
    };
    if let Some((socket, serve)) = admin
        && !stop_early
    {
        serve(socket)?;
    }
    // The control API stops taking commands as soon as shutdown begins: during
    // an upgrade they belong to the successor on the same port.
    let grpc_stop = CancellationToken::new();
    let bound = AdminAddrs {
        http: admin_http,
        grpc: grpc.as_ref().and_then(|(l, _)| l.local_addr().ok()),
    };
    if let Some((socket, later)) = grpc
        && !(later && stop_early)
    {
        weir_core::listen(&socket).context("admin.grpc: cannot listen")?;
        let listener = tokio::net::TcpListener::from_std(socket)?;
        if let Some(addr) = bound.grpc {
            tracing::info!(%addr, "admin gRPC listening");
        }
        let service = weir_admin::grpc::ControlService::new(
            Arc::clone(&server),
            build,
            &admin_stats,
            grpc_stop.clone(),
        );
        let endpoint = Arc::clone(&admin_stats.conns.grpc);
        tokio::spawn(async move {
            if let Err(e) = weir_admin::grpc::serve(listener, service, endpoint, limits).await {
                tracing::error!(error = %e, "admin gRPC endpoint failed");
            }
        });
    }
    started(&server, bound);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "weir started");
    match handover::predecessor() {
        Some(_) if stop_early => {
            // Not a word to systemd: it takes STOPPING=1 from any process of
            // the unit, and would stop the service, the running weir too.
            notifier.silence();
            tracing::warn!("stopped while starting as the new version: the running one goes on");
        }
        Some(old) => {
            // Started by SIGUSR2 to replace `old`: become the service's main
            // process, then let the old one go.
            notifier.send(&handover::main_pid_message(&serving_status(&server)));
            tracing::info!(
                pid = old.as_raw_nonzero().get(),
                "taking over: the previous process stops accepting"
            );
            let _ = rustix::process::kill_process(old, rustix::process::Signal::USR1);
        }
        None => notifier.ready(&serving_status(&server)),
    }
    if notifier.enabled()
        && let Some(every) = notify::watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        )
    {
        notifier.spawn_watchdog(every);
    }

    // The new version SIGUSR2 starts, until it takes over (SIGUSR1 from it)
    // or exits.
    let successor = Arc::new(handover::Successor::default());

    // A reload through the API shows in systemd's status as SIGHUP's does:
    // the generation it names is the one serving. Not while a new version
    // starts: the status says so then, and the upgrade script reads it.
    if notifier.enabled() {
        let mut events = server.journal().subscribe();
        let (server, notifier) = (Arc::clone(&server), Arc::clone(&notifier));
        let successor = Arc::clone(&successor);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let reloaded = match events.recv().await {
                    Ok(weir_core::events::Event::Reload { error, .. }) => error,
                    Ok(_) => continue,
                    // Events were lost: the last reload says.
                    Err(RecvError::Lagged(_)) => match server.last_reload() {
                        Some(last) => last.error,
                        None => continue,
                    },
                    Err(RecvError::Closed) => break,
                };
                if !successor.starting() {
                    notifier.status(&reload_status(&server, reloaded.as_deref()));
                }
            }
        });
    }
    if !stop_early {
        loop {
            tokio::select! {
                _ = usr2.recv() => {
                    let Some(path) = handover_config.as_deref() else {
                        tracing::warn!("SIGUSR2 ignored: no configuration file to hand over with");
                        continue;
                    };
                    if passed_sockets {
                        tracing::error!("SIGUSR2 ignored: the listeners serve on sockets systemd passed, which a new process cannot share; `systemctl restart weir` keeps them open instead");
                        continue;
                    }
                    // It waits for the changes under way (a reload in its
                    // probe round): a stop meanwhile is served, and no new
                    // version starts.
                    tokio::select! {
                        () = successor.start(path, &notifier, &server) => {}
                        _ = term.recv() => { tracing::info!("SIGTERM received"); break }
                        _ = int.recv() => { tracing::info!("SIGINT received"); break }
                    }
                }
                _ = usr1.recv() => {
                    if successor.take_over() {
                        // The service goes on in the successor, which systemd now
                        // follows: not a word more from this process.
                        notifier.silence();
                        tracing::info!("the new version took over: no longer accepting, open connections finish within shutdown_timeout");
                        break;
                    }
                    tracing::warn!("SIGUSR1 ignored: no new version is starting");
                }
                _ = term.recv() => { tracing::info!("SIGTERM received"); break }
                _ = int.recv() => { tracing::info!("SIGINT received"); break }
                _ = hup.recv() => {
                    if successor.starting() {
                        // The new version read the file at its start: a
                        // reload here would be applied, and lost at the
                        // hand-over.
                        tracing::error!("SIGHUP ignored: a new version of weir is starting to take over and has read the configuration already; reload it once it serves");
                        continue;
                    }
                    tracing::info!("SIGHUP received: reloading");
                    // Outcome and reason are logged by the reload itself.
                    let (server, notifier) = (Arc::clone(&server), Arc::clone(&notifier));
                    notifier.reloading();
                    tokio::spawn(async move {
                        let outcome = server.reload().await;
                        let error = outcome.err().map(|e| e.to_string());
                        notifier.ready(&reload_status(&server, error.as_deref()));
                    });
                }
            }
        }
    }
    grpc_stop.cancel();
    if successor.handed_over() {
        // The admin HTTP endpoint too belongs to the new version now (the
        // port is shared): this one answered half its requests, readiness
        // with a 503 beside the new one's 200.
        admin_stop.cancel();
    } else {
        // A stop while a new version starts: it must not take over.
        successor.cancel();
        notifier.stopping("stopping: open connections finish within shutdown_timeout");
    }
    server.shutdown();
    tokio::select! {
        () = server.wait() => {}
        _ = term.recv() => { tracing::warn!("second signal: closing all connections"); server.close_all(); server.wait().await }
        _ = int.recv() => { tracing::warn!("second signal: closing all connections"); server.close_all(); server.wait().await }
    }
    // The spans of the last requests, bounded by the exporter's timeout.
    layer.flush().await;
    admin_stop.cancel();
    tracing::info!("weir stopped");
    Ok(())
}

/// What weir does, for systemd's `STATUS=`.
fn serving_status(server: &Server) -> String {
    let s = server.snapshot();
    format!(
        "serving: {} listener(s), {} pool(s), configuration generation {}",
        s.listeners.len(),
        s.pools.len(),
        s.generation
    )
}

/// systemd's `STATUS=` after a reload that failed with `error`, or not.
fn reload_status(server: &Server, error: Option<&str>) -> String {
    match error {
        None => serving_status(server),
        Some(e) => format!("reload failed, the previous configuration serves: {e}"),
    }
}

/// Raises the soft limit on open files to the hard one, as HAProxy and nginx
/// do: the soft default (often 1024) is far below what a proxy needs, and the
/// hard limit is what the administrator allowed. Returns the limit in force.
fn raise_nofile() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if setrlimit(Resource::Nofile, limit).is_err() {
            return getrlimit(Resource::Nofile).current;
        }
    }
    limit.current
}

/// Says at start when the open-files limit is below what the config may need
/// at its busiest (see `weir_core::fds`), with the number to set.
fn check_descriptors(config: &Config) {
    let Some(limit) = raise_nofile() else {
        return;
    };
    let workers = config.runtime.threads();
    let needed = weir_core::fds::needed(config, workers);
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open-files limit is below what the listeners' max_connections may need: \
             past it, weir refuses connections with reason local_resources; raise it to at \
             least {needed} (LimitNOFILE= in systemd, ulimit -n)"
        );
    } else {
        tracing::info!(limit, needed, "open-files limit");
    }
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("cannot install a signal handler")
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::log_directives;

    /// What the filter for `level` lets through of one access line and one
    /// ordinary info line.
    fn written(level: &str) -> (bool, bool) {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                weir_core::sync::lock(&self.0).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let filter = tracing_subscriber::EnvFilter::try_new(log_directives(level))
            .unwrap_or_else(|e| panic!("{level}: {e}"));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "weir::access", "access-line");
            tracing::info!(target: "weir::server", "info-line");
        });
        let text = String::from_utf8_lossy(&weir_core::sync::lock(&buf.0)).into_owned();
        (text.contains("access-line"), text.contains("info-line"))
    }

    #[test]
    fn access_lines_are_written_whatever_the_level_unless_it_names_them() {
        assert_eq!(written("info"), (true, true));
        assert_eq!(written("warn"), (true, false));
        assert_eq!(written("off"), (true, false));
        assert_eq!(written("weir=off"), (true, false));
        assert_eq!(written("info,weir::access=off"), (false, true));
        assert_eq!(written("warn,weir::access=info"), (true, false));
        assert_eq!(written("weir::access[span]=off,info"), (true, true));
    }
}
