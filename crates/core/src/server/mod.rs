//! The running data plane: every listener bound and accepting, configuration
//! reload, operator actions, and the graceful shutdown that stops it all.
//!
//! What runs is one immutable [`Snapshot`] (listeners with their routes, pools
//! with their backends) behind an `ArcSwap`. A reload ([`reload`]) builds a
//! complete new snapshot beside the old one ([`build`]) and swaps it in at once:
//!
//! 1. read and validate the file, resolve backend names; anything wrong stops
//!    here and changes nothing;
//! 2. build the new pools and listeners, reusing by name what survives (a
//!    backend's counters, state and history; a listener's counters), load every
//!    TLS setting and probe, and bind new addresses: a failure drops the new
//!    parts, and the old snapshot runs on untouched;
//! 3. switch probes over, wait for the first probe of new backends (bounded by
//!    one probe timeout), point every kept listening socket at its new listener
//!    ([`sockets`]), start accepting on new addresses, stop the removed ones,
//!    swap.
//!
//! Established connections keep the listener, route and pool they started with
//! and are never cut by a reload; a removed listener's connections get its
//! `shutdown_timeout` to finish.
//!
//! Operator actions ([`control`]) are saved to the state file, then applied.
//! Shutdown ([`shutdown`]), in order: readiness goes false; every accept loop
//! stops (listening sockets close, so new connections are refused by the
//! kernel); established connections continue; when a listener's
//! `shutdown_timeout` runs out its remaining connections are closed.
//! [`Server::wait`] returns once every connection has ended and the state file
//! has every transition.

mod backends;
mod build;
mod claim;
mod connections;
mod control;
mod explain;
pub(crate) mod firewall;
mod inherited;
mod metrics;
mod reload;
mod shutdown;
mod sockets;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use inherited::{Inherited, PassedSocket};
use weir_config::Config;

pub use backends::{Origin, Origins, Removal, RuntimeBackend};
pub use explain::{BackendVerdict, Explanation, PoolVerdict, RouteVerdict};
pub use metrics::ReloadStats;

use crate::events::Journal;
use crate::listener::Listener;
use crate::pool::Pool;
use crate::statefile::Persistence;
use crate::sync::lock;

/// Why the data plane could not start (or a reload could not be applied).
#[derive(Debug, Error)]
pub enum StartError {
    // The reason is in the message, not a `source`: printed with its
    // chain, the error would say it twice.
    #[error("listeners[{index}] ({name}): cannot listen on {addr}: {error}")]
    Bind {
        index: usize,
        name: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// A listener served by sockets systemd passed, which do not fit it.
    #[error("listeners[{index}] ({name}): {message}")]
    Passed {
        index: usize,
        name: String,
        message: String,
    },
    /// Sockets systemd passed under names no listener has.
    #[error(
        "systemd passed sockets named {0}, and no listener has that name: set each socket's \
         FileDescriptorName= to the name of the listener it is for"
    )]
    UnknownSockets(String),
    /// A backend name that does not resolve, named by its key path.
    #[error("{0}")]
    Resolve(weir_config::ConfigError),
    /// No resolver can be made for a pool's discovery, named by its key path.
    #[error("{0}")]
    Discovery(String),
    #[error("health checks: {0}")]
    Health(String),
    #[error("{path}: {message}")]
    BackendTls { path: String, message: String },
    /// An l7 route whose handler could not be built.
    #[error("{path}: {message}")]
    Http { path: String, message: String },
    #[error("{0}")]
    State(#[from] weir_state::StoreError),
    /// A blocking task (the state file, the config file) did not complete.
    #[error("{0} did not complete: {1}")]
    Task(&'static str, String),
    #[error("weir is stopping")]
    Stopping,
}

/// Why a reload changed nothing.
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error("no config file to reload from (started from a config in memory)")]
    NoFile,
    #[error("{0}")]
    Config(#[from] weir_config::ConfigError),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("shutting down")]
    ShuttingDown,
    #[error(
        "a new version of weir is starting to take over: nothing changed; reload it once it serves"
    )]
    SuccessorStarting,
    /// The new config would leave an admin endpoint that keeps running on
    /// a non-loopback address (its address changes only at a restart)
    /// without a token.
    #[error(
        "admin.token_file: {0} is not a loopback address and stays bound until a restart: \
         a reload cannot leave it without a token (set insecure = true and restart to opt out)"
    )]
    Unguarded(std::net::SocketAddr),
    /// A listener of the new config would bind where a running admin
    /// endpoint is (its address changes only at a restart): the kernel
    /// would split their connections.
    #[error("{path}: {addr} is bound by the running admin endpoint until a restart")]
    AdminAddress {
        path: String,
        addr: std::net::SocketAddr,
    },
}

/// Why an operator action was refused.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("no pool {0:?}")]
    NoPool(String),
    #[error("pool {pool:?} has no backend {backend:?}")]
    NoBackend { pool: String, backend: String },
    #[error("weight {0} is out of range 0..={max}", max = weir_config::MAX_WEIGHT)]
    Weight(u32),
    #[error("not saved, nothing changed: {0}")]
    State(String),
    #[error("weir is stopping: nothing changed")]
    ShuttingDown,
    #[error(
        "a new version of weir is starting to take over: nothing changed; send changes once it serves"
    )]
    SuccessorStarting,
    #[error("no listener {0:?}")]
    NoListener(String),
    #[error(
        "listener {0:?} is a UDP listener: it takes no connections (its flows are bounded by `max_flows`)"
    )]
    UdpListener(String),
    #[error(
        "{0:?} is not an IP address or CIDR (e.g. \"192.0.2.7\", \"10.0.0.0/8\", \"2001:db8::/48\")"
    )]
    Network(String),
    #[error("no firewall rule for {0}")]
    NoRule(String),
    #[error("{0:?} is not an IP:port address (e.g. \"10.0.0.5:5432\", \"[2001:db8::5]:5432\")")]
    Address(String),
    #[error("backend name {0:?} {1}")]
    Name(String, &'static str),
    #[error("pool {pool:?} already has a backend {backend:?}")]
    Exists { pool: String, backend: String },
    #[error(
        "backend {backend:?} of pool {pool:?} comes from the {origin}, not from `weir backend add`: change it there"
    )]
    NotRuntime {
        pool: String,
        backend: String,
        origin: &'static str,
    },
    #[error(
        "backend {backend:?} of pool {pool:?} is already leaving: it was removed and drains \
         (at weight 0) until its connections end or drain_timeout passes"
    )]
    Leaving { pool: String, backend: String },
    #[error(
        "say which connections: --listener, --pool, --backend, --client or --id (to close every \
         connection, stop weir)"
    )]
    NoFilter,
    #[error("a firewall rule's reason is at most {max} bytes, not {0}", max = firewall::MAX_REASON)]
    Reason(usize),
    #[error(
        "{max} firewall rules already: remove some (weir firewall remove) or use a CIDR",
        max = firewall::MAX_RULES
    )]
    TooManyRules,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    pub diff: weir_config::Diff,
    /// Runtime backends the new config shadows, as "POOL/NAME: why".
    pub shadowed: Vec<String>,
}

/// The outcome of the last reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReload {
    pub at: SystemTime,
    pub error: Option<String>,
}

/// Options beside the config itself.
#[derive(Debug, Default)]
pub struct Options {
    /// The file `reload` reads again.
    pub config_path: Option<PathBuf>,
    /// What serves l7 routes; without it a config with one fails to start.
    pub http: Option<Arc<dyn crate::l7::HttpLayer>>,
    /// Listening sockets systemd passed (socket activation).
    pub inherited: Inherited,
    /// Taking over from another weir on the same addresses (`weir run
    /// --upgrade`): the start binds beside it, and claims each address once
    /// that one lets it go. Otherwise an address another weir holds (even
    /// one in its first probe round, not listening yet) fails the start.
    pub takeover: bool,
    /// The log writer's counters (`weir_log_*`), when weir writes its log.
    pub log: Option<Arc<weir_telemetry::LogStats>>,
}

/// One complete, immutable runtime configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// 1 for the config the process started with, +1 per successful reload.
    pub generation: u64,
    /// The config running: the file's, plus the backends found in DNS.
    pub config: Arc<Config>,
    /// The config as the file (or the caller) gave it.
    pub source: Arc<Config>,
    pub listeners: Vec<Arc<Listener>>,
    pub pools: Vec<Arc<Pool>>,
    /// (listener, address actually bound), in config order.
    bound: Vec<(String, SocketAddr)>,
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| l.name == name)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The addresses `listener` actually bound (useful with port 0).
    pub fn local_addrs(&self, listener: &str) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter(|(n, _)| n == listener)
            .map(|(_, a)| *a)
            .collect()
    }
}

/// The data plane.
#[derive(Debug)]
pub struct Server {
    current: ArcSwap<Snapshot>,
    /// Changed by reloads only.
    sockets: Mutex<sockets::Sockets>,
    /// One reload or operator action at a time.
    control: tokio::sync::Mutex<()>,
    journal: Arc<Journal>,
    persistence: Option<Persistence>,
    /// The operator's firewall rules, shared by every listener.
    firewall_rules: Arc<crate::firewall::RuntimeRules>,
    /// Wakes the task that ends timed rules when one is added.
    firewall_changed: Arc<tokio::sync::Notify>,
    /// Saved state for backends the config does not have.
    orphans: Mutex<Vec<weir_state::Entry>>,
    config_path: Option<PathBuf>,
    /// The config the process started with: what the settings read only at
    /// start (`[admin]`, `[state]`, ...) still are, whatever a reload says
    /// (see [`as_started`]).
    started: Arc<Config>,
    http: Option<Arc<dyn crate::l7::HttpLayer>>,
    started_at: SystemTime,
    pub reloads: ReloadStats,
    last_reload: Mutex<Option<LastReload>>,
    stop_accepting: CancellationToken,
    accept_tasks: TaskTracker,
    connections: TaskTracker,
    ready: AtomicBool,
    /// A new version of weir is starting to take over: operator changes
    /// belong to it (see [`Server::changes_refused`]).
    successor_starting: AtomicBool,
    /// The health probes, kept from one reload to the next.
    probes: crate::probe::schedule::Running,
    /// The pools' backends from DNS.
    pub(crate) discovery: crate::discovery::Discovery,
    /// Backends added at runtime (`weir backend add`).
    runtime: Mutex<Vec<RuntimeBackend>>,
    /// Listeners a reload removed whose connections may still run: listed,
    /// closed by an operator, and closed by a second signal too.
    retiring: Mutex<Vec<shutdown::Retiring>>,
    /// The log writer's counters.
    log: Option<Arc<weir_telemetry::LogStats>>,
}

impl Server {
    /// Starts `config` without a state file or a file to reload from.
    pub async fn start(config: &Config) -> Result<Arc<Server>, StartError> {
        Server::start_with(config.clone(), Options::default()).await
    }

    /// Opens the state file (when `[state] path` is set) and applies what it
    /// holds, resolves backend names, binds every listener address, runs the
    /// first round of health probes, and starts accepting. All addresses are
    /// bound before any accepts, so a bad address fails the start as a whole.
    /// Must be called inside a tokio runtime.
    pub async fn start_with(config: Config, options: Options) -> Result<Arc<Server>, StartError> {
        options.inherited.check_names(&config)?;
        let persistence = match &config.state.path {
            Some(path) => {
                let (path, keep) = (path.clone(), config.state.history);
                Some(
                    tokio::task::spawn_blocking(move || Persistence::open(&path, keep))
                        .await
                        .map_err(|e| StartError::Task("opening the state file", e.to_string()))??,
                )
            }
            None => None,
        };
        let journal = Arc::new(Journal::new(persistence.as_ref().map(Persistence::queue)));
        let rules = match &persistence {
            Some(p) => p.load_rules().await?,
            None => Vec::new(),
        };
        let runtime = match &persistence {
            Some(p) => p.load_backends().await?,
            None => Vec::new(),
        };
        if !rules.is_empty() {
            tracing::info!(
                rules = rules.len(),
                "firewall rules restored from the state file"
            );
        }
        let server = Server {
            current: ArcSwap::from_pointee(Snapshot {
                generation: 0,
                config: Arc::new(config.clone()),
                source: Arc::new(config.clone()),
                listeners: Vec::new(),
                pools: Vec::new(),
                bound: Vec::new(),
            }),
            sockets: Mutex::new(sockets::Sockets::new(options.inherited, options.takeover)),
            control: tokio::sync::Mutex::new(()),
            journal,
            persistence,
            firewall_rules: crate::firewall::RuntimeRules::new(rules),
            firewall_changed: Arc::new(tokio::sync::Notify::new()),
            orphans: Mutex::new(Vec::new()),
            config_path: options.config_path,
            started: Arc::new(as_started(&config)),
            http: options.http,
            started_at: SystemTime::now(),
            reloads: ReloadStats::default(),
            last_reload: Mutex::new(None),
            stop_accepting: CancellationToken::new(),
            accept_tasks: TaskTracker::new(),
            connections: TaskTracker::new(),
            ready: AtomicBool::new(true),
            successor_starting: AtomicBool::new(false),
            probes: crate::probe::schedule::Running::default(),
            discovery: crate::discovery::Discovery::default(),
            runtime: Mutex::new(runtime),
            retiring: Mutex::default(),
            log: options.log,
        };
        let server = Arc::new(server);
        // Pools that discover their backends start with what DNS says now.
        let plan = server
            .discovery
            .plan(&config)
            .await
            .map_err(StartError::Discovery)?;
        let effective = server.effective(&config, &plan);
        for shadowed in server.shadowed(&config) {
            tracing::warn!(backend = %shadowed, "a runtime backend of the state file is not applied");
        }
        let answered = server.discovery.answered(&config, &plan);
        let mut inputs = server.inputs(&effective, &answered, None).await?;
        inputs.leaving = server.leaving(&config, &plan);
        let staged = server.stage(&effective, None, inputs, true)?;
        // Nothing can stop a server its caller does not have yet.
        let _ = server.commit(config, effective, staged, None, true).await;
        server.spawn_rule_expiry();
        let (tasks, _) = server.discovery.commit(plan);
        crate::discovery::spawn(&server, tasks);
        Ok(server)
    }

    /// The snapshot running now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The addresses actually bound (useful with port 0), in config order.
    pub fn local_addrs(&self, listener: &str) -> Vec<SocketAddr> {
        self.current.load().local_addrs(listener)
    }

    pub fn listeners(&self) -> Vec<Arc<Listener>> {
        self.current.load().listeners.clone()
    }

    pub fn listener(&self, name: &str) -> Option<Arc<Listener>> {
        self.current.load().listener(name).cloned()
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.current.load().pools.clone()
    }

    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.current.load().pool(name).cloned()
    }

    /// Events as they happen (see [`crate::events`]).
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// The state file, when there is one.
    pub fn state_path(&self) -> Option<PathBuf> {
        // [state] is read only at start: a reload's path is not in use.
        self.started.state.path.clone()
    }

    pub fn last_reload(&self) -> Option<LastReload> {
        lock(&self.last_reload).clone()
    }

    /// Saved operator state for backends the config does not have: kept in
    /// the state file, applied to nothing.
    pub fn orphaned_state(&self) -> Vec<weir_state::Entry> {
        lock(&self.orphans).clone()
    }

    /// True while accepting traffic; false once shutdown has begun.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The control lock, for an operator change: refused when the stop began
    /// or a new version started to take over while the change waited for
    /// it, so that nothing is written to the state file or rebuilt once the
    /// process drains, nor after the new version read the file.
    pub(super) async fn change_lock(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, ControlError> {
        let one = self.control.lock().await;
        if !self.is_ready() {
            return Err(ControlError::ShuttingDown);
        }
        if self.successor_starting.load(Ordering::Relaxed) {
            return Err(ControlError::SuccessorStarting);
        }
        Ok(one)
    }

    /// Says that a new version is starting to take over, once a change under
    /// way (which may be waiting for its first probes) is done: the new
    /// version reads the state file as it starts, and a change written after
    /// that would be applied here, acknowledged, and never there.
    pub async fn successor_starting(&self) {
        let _one = self.control.lock().await;
        self.successor_starting.store(true, Ordering::Relaxed);
    }

    /// Says that no new version is starting (any longer).
    pub fn successor_gone(&self) {
        self.successor_starting.store(false, Ordering::Relaxed);
    }

    /// Why an operator change (a backend's state or weight, a runtime
    /// backend, a firewall rule, a reload through the API) is refused now,
    /// if it is: once shutdown has begun, or while a new version starts, it
    /// would be applied to a process that no longer serves, and the state
    /// file written behind the back of the one that will (it read the file
    /// at its start).
    pub fn changes_refused(&self) -> Option<&'static str> {
        if !self.is_ready() {
            Some("this weir is shutting down; send changes to the one that serves")
        } else if self.successor_starting.load(Ordering::Relaxed) {
            Some("a new version of weir is starting to take over; send changes once it serves")
        } else {
            None
        }
    }
}

/// What a snapshot is built from besides the config: the state file's
/// contents for backends and pools new to this process, and the resolved
/// backend addresses.
#[derive(Debug, Default)]
struct Inputs {
    saved: HashMap<(String, String), crate::statefile::Saved>,
    tiers: std::collections::BTreeMap<String, Vec<crate::health::TierChange>>,
    resolved: crate::resolve::Resolved,
    /// What the state file holds for backends the config does not have;
    /// reported by [`Server::orphaned_state`] once the config serves.
    orphans: Option<Vec<weir_state::Entry>>,
    /// (pool, backend, why): saved state of backends gone for good (they
    /// left during their drain, or DNS no longer gives them), forgotten
    /// once the config that found them serves.
    gone: Vec<(String, String, &'static str)>,
    /// (pool, backend): the runtime and discovered backends leaving.
    leaving: std::collections::HashSet<(String, String)>,
}

/// `config` as the process starts it, with `worker_threads = 0` written out
/// as the threads that run: a reload compares what it asks for with those,
/// not with the CPUs the process may run on by then (a changed affinity
/// would otherwise hide a change, or show one that is not). A reloaded 0
/// stands for the CPUs of the moment: what a restart would start.
fn as_started(config: &Config) -> Config {
    let mut started = config.clone();
    started.runtime.worker_threads = config.runtime.threads();
    started
}
