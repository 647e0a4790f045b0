//! Listening sockets live outside the snapshot, keyed by configured address,
//! so that a reload keeps every socket whose address stays: each has one
//! accept loop that reads its listener from a slot, and a reload stores the
//! new listener there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_config::Config;

use super::StartError;
use crate::frontend;
use crate::listener::Listener;

/// How long a reload waits for a removed socket's accept loop to close it.
pub(super) const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What makes a listening socket the same across reloads: its configured
/// address, which may move from one listener to another; for port 0 (any
/// free port, so several binds may read alike) the listener and position too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SocketKey {
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

/// Sockets bound by a reload that has not been committed yet.
pub(super) type Fresh = Vec<(SocketKey, std::net::TcpListener)>;

/// Where accept loops run and what stops them.
pub(super) struct Runners<'a> {
    pub(super) stop_accepting: &'a CancellationToken,
    pub(super) accept_tasks: &'a TaskTracker,
    pub(super) connections: &'a TaskTracker,
}

/// What a switch-over did.
pub(super) struct Switched {
    /// (listener, address actually bound), in config order.
    pub(super) bound: Vec<(String, SocketAddr)>,
    /// Cancelled once each removed socket is closed.
    pub(super) closing: Vec<CancellationToken>,
}

/// Every listening socket, by key.
#[derive(Debug, Default)]
pub(super) struct Sockets(HashMap<SocketKey, Bound>);

impl Sockets {
    /// Binds every address of `config` that has no socket yet; the first
    /// failure drops what was bound so far (closing it) and says where.
    pub(super) fn bind_new(&self, config: &Config) -> Result<Fresh, StartError> {
        let mut fresh: Fresh = Vec::new();
        for (index, l) in config.listeners.iter().enumerate() {
            for (i, &addr) in l.bind.iter().enumerate() {
                let key = SocketKey::new(&l.name, i, addr);
                if self.0.contains_key(&key) || fresh.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let socket = frontend::bind(addr).map_err(|source| StartError::Bind {
                    index,
                    name: l.name.clone(),
                    addr,
                    source,
                })?;
                fresh.push((key, socket));
            }
        }
        Ok(fresh)
    }

    /// Points every kept socket at its new listener, starts accepting on the
    /// fresh ones, and stops the sockets `config` no longer has.
    pub(super) fn switch(
        &mut self,
        config: &Config,
        listeners: &[Arc<Listener>],
        fresh: Fresh,
        run: &Runners<'_>,
    ) -> Switched {
        let mut fresh: HashMap<SocketKey, std::net::TcpListener> = fresh.into_iter().collect();
        let mut bound = Vec::new();
        let mut wanted = Vec::new();
        for (l, lst) in config.listeners.iter().zip(listeners) {
            for (i, &addr) in l.bind.iter().enumerate() {
                let key = SocketKey::new(&l.name, i, addr);
                wanted.push(key.clone());
                if let Some(b) = self.0.get(&key) {
                    b.slot.store(Arc::clone(lst));
                    bound.push((l.name.clone(), b.local));
                    continue;
                }
                let Some(std_socket) = fresh.remove(&key) else {
                    continue;
                };
                let socket = std_socket
                    .local_addr()
                    .and_then(|local| Ok((local, tokio::net::TcpListener::from_std(std_socket)?)));
                let (local, socket) = match socket {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::error!(listener = %l.name, %addr, error = %e, "cannot accept on a bound socket");
                        continue;
                    }
                };
                tracing::info!(listener = %l.name, addr = %local, "listening");
                let slot = Arc::new(ArcSwap::new(Arc::clone(lst)));
                let stop = run.stop_accepting.child_token();
                let closed = CancellationToken::new();
                run.accept_tasks.spawn(frontend::accept_loop(
                    Arc::clone(&slot),
                    socket,
                    stop.clone(),
                    closed.clone(),
                    run.connections.clone(),
                ));
                self.0.insert(
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
        self.0.retain(|key, b| {
            let keep = wanted.contains(key);
            if !keep {
                tracing::info!(addr = %b.local, "no longer listening");
                b.stop.cancel();
                closing.push(b.closed.clone());
            }
            keep
        });
        Switched { bound, closing }
    }
}
