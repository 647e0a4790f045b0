//! The running data plane: every listener bound and accepting, configuration
//! reload, operator actions, and the graceful shutdown that stops it all.
//!
//! What runs is one immutable [`Snapshot`] (listeners with their routes, pools
//! with their backends) behind an `ArcSwap`. A reload builds a complete new
//! snapshot beside the old one and swaps it in at once:
//!
//! 1. read and validate the file; anything wrong stops here and changes nothing;
//! 2. build the new pools and listeners, reusing by name what survives (a
//!    backend's counters, state and history; a listener's counters), load every
//!    TLS setting and probe, and bind new addresses: a failure drops the new
//!    parts, and the old snapshot runs on untouched;
//! 3. switch probes over, wait for the first probe of new backends (bounded by
//!    one probe timeout), point every kept listening socket at its new listener,
//!    start accepting on new addresses, stop the removed ones, swap.
//!
//! Established connections keep the listener, route and pool they started with
//! and are never cut by a reload; a removed listener's connections get its
//! `shutdown_timeout` to finish.
//!
//! Shutdown, in order: readiness goes false; every accept loop stops (listening
//! sockets close, so new connections are refused by the kernel); established
//! connections continue; when a listener's `shutdown_timeout` runs out its
//! remaining connections are closed. [`Server::wait`] returns once every
//! connection has ended and the state file has every transition.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_config::Config;

use crate::events::{Event, Journal};
use crate::health;
use crate::health::state::Admin;
use crate::listener::{self, Listener, Route};
use crate::pool::{self, BackendView, Pool, Saved};
use crate::store::{self, Persistence};

/// Why the data plane could not start (or a reload could not be applied).
#[derive(Debug, Error)]
pub enum StartError {
    #[error("listeners[{index}] ({name}): cannot listen on {addr}: {source}")]
    Bind {
        index: usize,
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("health checks: {0}")]
    Health(String),
    #[error("{path}: {message}")]
    BackendTls { path: String, message: String },
    #[error("{0}")]
    State(#[from] weir_state::StoreError),
    /// A blocking task (the state file, the config file) did not complete.
    #[error("{0} did not complete: {1}")]
    Task(&'static str, String),
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
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    pub diff: weir_config::Diff,
}

/// The outcome of the last reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReload {
    pub at: SystemTime,
    pub error: Option<String>,
}

/// Reload counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// False while the last attempt failed.
    pub last_failed: AtomicBool,
}

/// Options beside the config itself.
#[derive(Debug, Default)]
pub struct Options {
    /// The file `reload` reads again.
    pub config_path: Option<PathBuf>,
}

/// One complete, immutable runtime configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// 1 for the config the process started with, +1 per successful reload.
    pub generation: u64,
    pub config: Arc<Config>,
    pub listeners: Vec<Arc<Listener>>,
    pub pools: Vec<Arc<Pool>>,
    /// (listener, address actually bound), in config order.
    bound: Vec<(String, SocketAddr)>,
    stop_health: CancellationToken,
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

/// What makes a listening socket the same across reloads: its configured
/// address, which may move from one listener to another; for port 0 (any
/// free port, so several binds may read alike) the listener and position too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SocketKey {
    addr: SocketAddr,
    any_port: Option<(String, usize)>,
}

impl SocketKey {
    fn new(listener: &str, index: usize, addr: SocketAddr) -> Self {
        SocketKey {
            addr,
            any_port: (addr.port() == 0).then(|| (listener.to_owned(), index)),
        }
    }
}

/// A listening socket, kept across reloads while its key stays.
#[derive(Debug)]
struct Bound {
    local: SocketAddr,
    /// The listener this socket accepts for; a reload stores the new one.
    slot: Arc<ArcSwap<Listener>>,
    stop: CancellationToken,
    /// Cancelled by the accept loop once the socket is closed.
    closed: CancellationToken,
}

/// How long a reload waits for a removed socket's accept loop to close it.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The data plane.
#[derive(Debug)]
pub struct Server {
    current: ArcSwap<Snapshot>,
    /// Changed by reloads only.
    sockets: Mutex<HashMap<SocketKey, Bound>>,
    /// One reload or operator action at a time.
    control: tokio::sync::Mutex<()>,
    journal: Arc<Journal>,
    persistence: Option<Persistence>,
    /// Saved state for backends the config does not have.
    orphans: Mutex<Vec<weir_state::Entry>>,
    config_path: Option<PathBuf>,
    started_at: SystemTime,
    pub reloads: ReloadStats,
    last_reload: Mutex<Option<LastReload>>,
    stop_accepting: CancellationToken,
    accept_tasks: TaskTracker,
    connections: TaskTracker,
    ready: AtomicBool,
}

/// The new parts of a snapshot, built but not running yet.
struct Staged {
    pools: Vec<Arc<Pool>>,
    listeners: Vec<Arc<Listener>>,
    probes: health::checker::Prepared,
    /// Newly bound sockets.
    fresh: Vec<(SocketKey, std::net::TcpListener)>,
}

impl Server {
    /// Starts `config` without a state file or a file to reload from.
    pub async fn start(config: &Config) -> Result<Server, StartError> {
        Server::start_with(config.clone(), Options::default()).await
    }

    /// Opens the state file (when `[state] path` is set) and applies what it
    /// holds, binds every listener address, runs the first round of health
    /// probes, and starts accepting. All addresses are bound before any
    /// accepts, so a bad address fails the start as a whole. Must be called
    /// inside a tokio runtime.
    pub async fn start_with(config: Config, options: Options) -> Result<Server, StartError> {
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
        let server = Server {
            current: ArcSwap::from_pointee(Snapshot {
                generation: 0,
                config: Arc::new(config.clone()),
                listeners: Vec::new(),
                pools: Vec::new(),
                bound: Vec::new(),
                stop_health: CancellationToken::new(),
            }),
            sockets: Mutex::new(HashMap::new()),
            control: tokio::sync::Mutex::new(()),
            journal,
            persistence,
            orphans: Mutex::new(Vec::new()),
            config_path: options.config_path,
            started_at: SystemTime::now(),
            reloads: ReloadStats::default(),
            last_reload: Mutex::new(None),
            stop_accepting: CancellationToken::new(),
            accept_tasks: TaskTracker::new(),
            connections: TaskTracker::new(),
            ready: AtomicBool::new(true),
        };
        let saved = server.saved_state(&config).await?;
        let staged = server.stage(&config, None, &saved)?;
        server.commit(config, staged, None).await;
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
        self.current.load().config.state.path.clone()
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

    /// Reads the config file again and applies it. On any error nothing
    /// changes, and the error says why.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoFile)?;
        // Name resolution may block: keep it off the runtime's workers.
        let loaded = tokio::task::spawn_blocking(move || weir_config::load_file(&path))
            .await
            .map_err(|e| {
                ReloadError::Start(StartError::Task("reading the config file", e.to_string()))
            })?;
        match loaded {
            Ok(config) => self.apply(config).await,
            Err(e) => Err(self.reload_failed(ReloadError::Config(e))),
        }
    }

    /// Applies `config` as a reload.
    pub async fn apply(&self, config: Config) -> Result<Reloaded, ReloadError> {
        let _one = self.control.lock().await;
        if !self.is_ready() {
            return Err(self.reload_failed(ReloadError::ShuttingDown));
        }
        let old = self.current.load_full();
        let diff = weir_config::diff(&old.config, &config);
        let saved = match self.saved_state(&config).await {
            Ok(saved) => saved,
            Err(e) => return Err(self.reload_failed(e.into())),
        };
        let staged = match self.stage(&config, Some(&old), &saved) {
            Ok(staged) => staged,
            Err(e) => return Err(self.reload_failed(e.into())),
        };
        let generation = self.commit(config, staged, Some(&old)).await;
        self.reloads.succeeded.fetch_add(1, Ordering::Relaxed);
        self.reloads.last_failed.store(false, Ordering::Relaxed);
        let at = SystemTime::now();
        *lock(&self.last_reload) = Some(LastReload { at, error: None });
        tracing::info!(
            generation,
            added = ?diff.added,
            removed = ?diff.removed,
            changed = ?diff.changed,
            "config reloaded"
        );
        if !diff.need_restart.is_empty() {
            tracing::warn!(sections = ?diff.need_restart, "changes to these sections take effect at the next start");
        }
        self.journal.send(Event::Reload {
            at,
            generation,
            error: None,
        });
        Ok(Reloaded { generation, diff })
    }

    fn reload_failed(&self, e: ReloadError) -> ReloadError {
        self.reloads.failed.fetch_add(1, Ordering::Relaxed);
        self.reloads.last_failed.store(true, Ordering::Relaxed);
        let at = SystemTime::now();
        let error = e.to_string();
        tracing::error!(error = %error, "reload failed; the running config is unchanged");
        *lock(&self.last_reload) = Some(LastReload {
            at,
            error: Some(error.clone()),
        });
        self.journal.send(Event::Reload {
            at,
            generation: self.generation(),
            error: Some(error),
        });
        e
    }

    /// Reads the state file for the backends of `config`, and notes (and
    /// logs) what it holds for backends `config` does not have.
    async fn saved_state(
        &self,
        config: &Config,
    ) -> Result<HashMap<(String, String), Saved>, StartError> {
        let Some(p) = &self.persistence else {
            return Ok(HashMap::new());
        };
        let entries = p.load().await?;
        let mut saved = HashMap::new();
        let mut orphans = Vec::new();
        for e in entries {
            let known = config
                .pools
                .iter()
                .any(|p| p.name == e.pool && p.backends.iter().any(|b| b.name == e.backend));
            if known {
                saved.insert((e.pool.clone(), e.backend.clone()), store::saved(&e));
            } else {
                if e.admin.is_some() || e.weight_override.is_some() {
                    tracing::warn!(
                        pool = %e.pool,
                        backend = %e.backend,
                        admin = e.admin.as_deref().unwrap_or("-"),
                        weight = ?e.weight_override,
                        "the state file has operator state for a backend that is not in the config; kept, not applied"
                    );
                }
                orphans.push(e);
            }
        }
        *lock(&self.orphans) = orphans;
        Ok(saved)
    }

    /// Step 2 of a reload (and of a start): everything that can fail.
    fn stage(
        &self,
        config: &Config,
        old: Option<&Snapshot>,
        saved: &HashMap<(String, String), Saved>,
    ) -> Result<Staged, StartError> {
        let cx = pool::Context {
            journal: Arc::clone(&self.journal),
            history: config.state.history,
        };
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| {
                let before = old.and_then(|o| o.pool(&p.name)).map(|p| &**p);
                let lookup = |b: &str| saved.get(&(p.name.clone(), b.to_owned())).cloned();
                Pool::build(p, before, &lookup, &cx)
            })
            .collect();
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (index, l) in config.listeners.iter().enumerate() {
            let before = old.and_then(|o| o.listener(&l.name)).map(|l| &**l);
            listeners.push(build_listener(index, l, config, &pools, before)?);
        }
        let probes = health::checker::prepare(&pools).map_err(StartError::Health)?;
        let sockets = lock(&self.sockets);
        let mut fresh = Vec::new();
        for (index, l) in config.listeners.iter().enumerate() {
            for (i, &addr) in l.bind.iter().enumerate() {
                let key = SocketKey::new(&l.name, i, addr);
                if sockets.contains_key(&key) || fresh.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let socket = listener::bind(addr).map_err(|source| StartError::Bind {
                    index,
                    name: l.name.clone(),
                    addr,
                    source,
                })?;
                fresh.push((key, socket));
            }
        }
        Ok(Staged {
            pools,
            listeners,
            probes,
            fresh,
        })
    }

    /// Step 3: switch over. Cannot fail.
    async fn commit(&self, config: Config, staged: Staged, old: Option<&Snapshot>) -> u64 {
        let Staged {
            pools,
            listeners,
            probes,
            fresh,
        } = staged;
        // Probe every backend at once and switch only when the first round
        // is done (bounded by one probe timeout): a start never sends traffic
        // to a backend known to be down, and a backend added by a reload
        // serves once its first probe passes.
        if let Some(old) = old {
            old.stop_health.cancel();
        }
        let stop_health = CancellationToken::new();
        let mut checkers = probes.spawn(&stop_health);
        checkers.first_round().await;
        for pool in &pools {
            pool.settle();
        }
        tracing::debug!(probes = checkers.tasks(), "first health round done");

        let (bound, closing) = {
            let mut sockets = lock(&self.sockets);
            let mut fresh: HashMap<SocketKey, std::net::TcpListener> = fresh.into_iter().collect();
            let mut bound = Vec::new();
            let mut wanted = Vec::new();
            for (l, lst) in config.listeners.iter().zip(&listeners) {
                for (i, &addr) in l.bind.iter().enumerate() {
                    let key = SocketKey::new(&l.name, i, addr);
                    wanted.push(key.clone());
                    if let Some(b) = sockets.get(&key) {
                        b.slot.store(Arc::clone(lst));
                        bound.push((l.name.clone(), b.local));
                        continue;
                    }
                    let Some(std_socket) = fresh.remove(&key) else {
                        continue;
                    };
                    let socket = match std_socket.local_addr().and_then(|local| {
                        Ok((local, tokio::net::TcpListener::from_std(std_socket)?))
                    }) {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::error!(listener = %l.name, %addr, error = %e, "cannot accept on a bound socket");
                            continue;
                        }
                    };
                    let (local, socket) = socket;
                    tracing::info!(listener = %l.name, addr = %local, "listening");
                    let slot = Arc::new(ArcSwap::new(Arc::clone(lst)));
                    let stop = self.stop_accepting.child_token();
                    let closed = CancellationToken::new();
                    self.accept_tasks.spawn(listener::accept_loop(
                        Arc::clone(&slot),
                        socket,
                        stop.clone(),
                        closed.clone(),
                        self.connections.clone(),
                    ));
                    sockets.insert(
                        key,
                        Bound {
                            local,
                            slot,
                            stop,
                            closed,
                        },
                    );
                    bound.push((l.name.clone(), local));
                }
            }
            let mut closing = Vec::new();
            sockets.retain(|key, b| {
                let keep = wanted.contains(key);
                if !keep {
                    tracing::info!(addr = %b.local, "no longer listening");
                    b.stop.cancel();
                    closing.push(b.closed.clone());
                }
                keep
            });
            (bound, closing)
        };
        // When a reload returns, removed addresses refuse connections.
        for closed in closing {
            let _ = tokio::time::timeout(CLOSE_WAIT, closed.cancelled()).await;
        }
        if let Some(old) = old {
            for gone in old
                .listeners
                .iter()
                .filter(|o| !listeners.iter().any(|n| n.name == o.name))
            {
                self.retire(gone);
            }
        }
        let generation = old.map_or(1, |o| o.generation + 1);
        self.current.store(Arc::new(Snapshot {
            generation,
            config: Arc::new(config),
            listeners,
            pools,
            bound,
            stop_health,
        }));
        generation
    }

    /// A listener removed by a reload: its sockets are closed already; its
    /// connections get `shutdown_timeout` to finish.
    fn retire(&self, gone: &Arc<Listener>) {
        let open = gone.stats.connections_active.load(Ordering::Relaxed);
        tracing::info!(listener = %gone.name, open, "listener removed; draining its connections");
        let kill = gone.kill.clone();
        let grace = gone.shutdown_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            kill.cancel();
        });
    }

    /// Operator: enable, drain or disable a backend. Saved to the state file
    /// first; when that fails nothing changes.
    pub async fn set_admin(
        &self,
        pool: &str,
        backend: &str,
        admin: Admin,
    ) -> Result<BackendView, ControlError> {
        let _one = self.control.lock().await;
        let p = self.find(pool, backend)?;
        if let Some(persist) = &self.persistence {
            persist
                .set_admin(pool, backend, admin)
                .await
                .map_err(|e| ControlError::State(e.to_string()))?;
        }
        p.set_admin(backend, admin);
        self.view(&p, backend)
    }

    /// Operator: override a backend's weight (`None` restores the configured
    /// one). Saved first, like [`Server::set_admin`].
    pub async fn set_weight(
        &self,
        pool: &str,
        backend: &str,
        weight: Option<u32>,
    ) -> Result<BackendView, ControlError> {
        if let Some(w) = weight.filter(|&w| w > weir_config::MAX_WEIGHT) {
            return Err(ControlError::Weight(w));
        }
        let _one = self.control.lock().await;
        let p = self.find(pool, backend)?;
        if let Some(persist) = &self.persistence {
            persist
                .set_weight(pool, backend, weight)
                .await
                .map_err(|e| ControlError::State(e.to_string()))?;
        }
        p.set_weight(backend, weight);
        self.view(&p, backend)
    }

    fn find(&self, pool: &str, backend: &str) -> Result<Arc<Pool>, ControlError> {
        let p = self
            .pool(pool)
            .ok_or_else(|| ControlError::NoPool(pool.to_owned()))?;
        if p.backend(backend).is_none() {
            return Err(ControlError::NoBackend {
                pool: pool.to_owned(),
                backend: backend.to_owned(),
            });
        }
        Ok(p)
    }

    fn view(&self, p: &Pool, backend: &str) -> Result<BackendView, ControlError> {
        p.view(backend).ok_or_else(|| ControlError::NoBackend {
            pool: p.name.clone(),
            backend: backend.to_owned(),
        })
    }

    /// Begins graceful shutdown (idempotent): stop accepting now, close each
    /// listener's remaining connections after its `shutdown_timeout`.
    pub fn shutdown(&self) {
        if !self.ready.swap(false, Ordering::Relaxed) {
            return;
        }
        tracing::info!("shutting down: no longer accepting");
        self.stop_accepting.cancel();
        let snapshot = self.current.load_full();
        snapshot.stop_health.cancel();
        self.accept_tasks.close();
        self.connections.close();
        for l in &snapshot.listeners {
            let kill = l.kill.clone();
            let grace = l.shutdown_timeout;
            let name = l.name.clone();
            let stats = Arc::clone(&l.stats);
            let connections = self.connections.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = connections.wait() => {}
                    () = tokio::time::sleep(grace) => {
                        let open = stats.connections_active.load(Ordering::Relaxed);
                        if open > 0 {
                            tracing::warn!(listener = %name, open, "shutdown_timeout reached; closing connections");
                        }
                        kill.cancel();
                    }
                }
            });
        }
    }

    /// Waits until shutdown has completed: accept loops stopped, every
    /// connection ended, and every transition written to the state file.
    /// Call [`Server::shutdown`] first.
    pub async fn wait(&self) {
        self.accept_tasks.wait().await;
        self.connections.wait().await;
        if let Some(p) = &self.persistence {
            p.flush().await;
        }
    }

    /// Open connections across all listeners.
    pub fn active_connections(&self) -> usize {
        self.connections.len()
    }

    /// Closes every open connection now (a second shutdown signal).
    pub fn close_all(&self) {
        self.shutdown();
        for l in &self.current.load().listeners {
            l.kill.cancel();
        }
    }
}

/// Builds a listener of `config`, taking counters (and the token that closes
/// its connections) from `before`, the listener of that name before a reload.
fn build_listener(
    index: usize,
    l: &weir_config::Listener,
    config: &Config,
    pools: &[Arc<Pool>],
    before: Option<&Listener>,
) -> Result<Arc<Listener>, StartError> {
    let mut routes = Vec::with_capacity(l.routes.len());
    for (ri, r) in l.routes.iter().enumerate() {
        let backend_tls = match &r.backend_tls {
            None => None,
            Some(t) => {
                let tls =
                    crate::tls::backend_config(t).map_err(|message| StartError::BackendTls {
                        path: format!("listeners[{index}].routes[{ri}].backend_tls"),
                        message,
                    })?;
                Some(listener::BackendTls {
                    connector: tokio_rustls::TlsConnector::from(tls),
                    sni: t
                        .sni
                        .clone()
                        .and_then(|n| rustls::pki_types::ServerName::try_from(n).ok()),
                })
            }
        };
        let stats = before
            .and_then(|b| b.routes.iter().find(|old| old.name == r.name))
            .map_or_else(Arc::default, |old| Arc::clone(&old.stats));
        routes.push(Route {
            backend_tls,
            name: r.name.clone(),
            matcher: r.matcher.clone(),
            send_proxy_protocol: r.send_proxy_protocol,
            pool: Arc::clone(&pools[r.pool_index]),
            stats,
        });
    }
    Ok(Arc::new(Listener {
        name: l.name.clone(),
        max_connections: l.max_connections,
        idle_timeout: l.idle_timeout,
        shutdown_timeout: l.shutdown_timeout,
        handshake_timeout: l.handshake_timeout,
        needs_hello: l.routes.iter().any(|r| r.matcher.needs_client_hello()),
        proxy_accept: l.proxy_protocol.clone(),
        routes,
        stats: before.map_or_else(Arc::default, |b| Arc::clone(&b.stats)),
        zero_copy: config.runtime.zero_copy,
        access_log: config.log.access_log,
        kill: before.map_or_else(CancellationToken::new, |b| b.kill.clone()),
    }))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
