//! The running data plane: every listener bound and accepting, and the graceful
//! shutdown that stops it.
//!
//! Shutdown, in order: readiness goes false; every accept loop stops (listening
//! sockets close, so new connections are refused by the kernel); established
//! connections continue; when a listener's `shutdown_timeout` runs out its remaining
//! connections are closed. [`Server::wait`] returns once every connection has ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_config::Config;

use crate::health;
use crate::listener::{self, Listener, Route};
use crate::pool::Pool;

/// Why the data plane could not start.
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
}

/// The data plane of one configuration.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<Arc<Listener>>,
    pools: Vec<Arc<Pool>>,
    bound: Vec<(String, SocketAddr)>,
    stop_accepting: CancellationToken,
    accept_tasks: TaskTracker,
    connections: TaskTracker,
    stop_health: CancellationToken,
    ready: AtomicBool,
}

impl Server {
    /// Binds every listener address, runs the first round of health probes, and
    /// starts accepting. All addresses are bound before any accepts, so a bad
    /// address fails the start as a whole. Must be called inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<Server, StartError> {
        let pools: Vec<Arc<Pool>> = config.pools.iter().map(Pool::build).collect();
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut sockets = Vec::new();
        let mut bound = Vec::new();
        for (index, l) in config.listeners.iter().enumerate() {
            let mut tls = Vec::with_capacity(l.routes.len());
            for (ri, r) in l.routes.iter().enumerate() {
                tls.push(match &r.backend_tls {
                    None => None,
                    Some(t) => {
                        let config = crate::tls::backend_config(t).map_err(|message| {
                            StartError::BackendTls {
                                path: format!("listeners[{index}].routes[{ri}].backend_tls"),
                                message,
                            }
                        })?;
                        Some(listener::BackendTls {
                            connector: tokio_rustls::TlsConnector::from(config),
                            sni: t
                                .sni
                                .clone()
                                .and_then(|n| rustls::pki_types::ServerName::try_from(n).ok()),
                        })
                    }
                });
            }
            let routes = l
                .routes
                .iter()
                .zip(tls)
                .map(|(r, backend_tls)| Route {
                    backend_tls,
                    name: r.name.clone(),
                    matcher: r.matcher.clone(),
                    send_proxy_protocol: r.send_proxy_protocol,
                    pool: Arc::clone(&pools[r.pool_index]),
                    stats: Arc::default(),
                })
                .collect();
            let lst = Arc::new(Listener {
                name: l.name.clone(),
                max_connections: l.max_connections,
                idle_timeout: l.idle_timeout,
                shutdown_timeout: l.shutdown_timeout,
                handshake_timeout: l.handshake_timeout,
                needs_hello: l.routes.iter().any(|r| r.matcher.needs_client_hello()),
                proxy_accept: l.proxy_protocol.clone(),
                routes,
                stats: Arc::default(),
                zero_copy: config.runtime.zero_copy,
                access_log: config.log.access_log,
                kill: CancellationToken::new(),
            });
            for &addr in &l.bind {
                let bind_err = |source| StartError::Bind {
                    index,
                    name: l.name.clone(),
                    addr,
                    source,
                };
                let std_listener = listener::bind(addr).map_err(bind_err)?;
                let local = std_listener.local_addr().map_err(bind_err)?;
                let tokio_listener =
                    tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?;
                bound.push((l.name.clone(), local));
                sockets.push((Arc::clone(&lst), tokio_listener));
            }
            listeners.push(lst);
        }
        // Probe every backend at once and open the listeners only when the first
        // round is done (bounded by one probe timeout), so a restart never sends
        // traffic to a backend known to be down.
        let stop_health = CancellationToken::new();
        let mut checkers =
            health::checker::start(&pools, &stop_health).map_err(StartError::Health)?;
        checkers.first_round().await;
        for pool in &pools {
            pool.settle();
        }
        tracing::debug!(probes = checkers.tasks(), "first health round done");
        let stop_accepting = CancellationToken::new();
        let accept_tasks = TaskTracker::new();
        let connections = TaskTracker::new();
        for (lst, socket) in sockets {
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(listener = %lst.name, %addr, "listening");
            }
            accept_tasks.spawn(listener::accept_loop(
                lst,
                socket,
                stop_accepting.clone(),
                connections.clone(),
            ));
        }
        accept_tasks.close();
        Ok(Server {
            listeners,
            pools,
            bound,
            stop_accepting,
            accept_tasks,
            connections,
            stop_health,
            ready: AtomicBool::new(true),
        })
    }

    /// The addresses actually bound (useful with port 0), in config order.
    pub fn local_addrs(&self, listener: &str) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter(|(n, _)| n == listener)
            .map(|(_, a)| *a)
            .collect()
    }

    pub fn listeners(&self) -> &[Arc<Listener>] {
        &self.listeners
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| l.name == name)
    }

    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// True while accepting traffic; false once shutdown has begun.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Begins graceful shutdown (idempotent): stop accepting now, close each
    /// listener's remaining connections after its `shutdown_timeout`.
    pub fn shutdown(&self) {
        if !self.ready.swap(false, Ordering::Relaxed) {
            return;
        }
        tracing::info!("shutting down: no longer accepting");
        self.stop_accepting.cancel();
        self.stop_health.cancel();
        self.connections.close();
        for l in &self.listeners {
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

    /// Waits until shutdown has completed: accept loops stopped and every
    /// connection ended. Call [`Server::shutdown`] first.
    pub async fn wait(&self) {
        self.accept_tasks.wait().await;
        self.connections.wait().await;
    }

    /// Open connections across all listeners.
    pub fn active_connections(&self) -> usize {
        self.connections.len()
    }
}

impl Server {
    /// Closes every open connection now (a second shutdown signal).
    pub fn close_all(&self) {
        self.shutdown();
        for l in &self.listeners {
            l.kill.cancel();
        }
    }
}
