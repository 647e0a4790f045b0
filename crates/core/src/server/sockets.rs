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
use super::claim::{self, Claim};
use super::inherited::Inherited;
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
    /// A UDP and a TCP socket on one address are two sockets.
    udp: bool,
    any_port: Option<(String, usize)>,
}

impl SocketKey {
    fn new(l: &weir_config::Listener, index: usize, addr: SocketAddr) -> Self {
        SocketKey {
            addr,
            udp: l.udp.is_some(),
            any_port: (addr.port() == 0).then(|| (l.name.clone(), index)),
        }
    }
}

/// A socket bound for a listener, not serving yet.
#[derive(Debug)]
pub(super) enum Unstarted {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
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

/// Sockets bound by a reload that has not been committed yet, with the
/// claim of their address (none for a passed socket, port 0, or when
/// taking over from the process that holds it).
pub(super) type Fresh = Vec<(SocketKey, Unstarted, Option<Claim>)>;

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

/// Every listening socket, by key, and the sockets systemd passed.
#[derive(Debug, Default)]
pub(super) struct Sockets {
    bound: HashMap<SocketKey, Bound>,
    inherited: Inherited,
    /// The first binds may share their addresses with the weir this one
    /// takes over from (see [`claim`]); later ones (reloads) may not.
    takeover: bool,
}

impl Sockets {
    pub(super) fn new(inherited: Inherited, takeover: bool) -> Sockets {
        Sockets {
            bound: HashMap::new(),
            inherited,
            takeover,
        }
    }

    /// Binds every address of `config` that has no socket yet; the first
    /// failure drops what was bound so far (closing it) and says where.
    pub(super) fn bind_new(&mut self, config: &Config) -> Result<Fresh, StartError> {
        let takeover = std::mem::take(&mut self.takeover);
        let mut fresh: Fresh = Vec::new();
        for (index, l) in config.listeners.iter().enumerate() {
            let passed = self.inherited.serves(&l.name);
            let refuse = |message: String| StartError::Passed {
                index,
                name: l.name.clone(),
                message,
            };
            if passed {
                let left: Vec<String> = self
                    .inherited
                    .left_over(l)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                if !left.is_empty() {
                    return Err(refuse(format!(
                        "systemd passed sockets named {:?} on {}, which `bind` does not list: \
                         list the same addresses in `bind` as in the socket unit",
                        l.name,
                        left.join(", ")
                    )));
                }
            }
            for (i, &addr) in l.bind.iter().enumerate() {
                let key = SocketKey::new(l, i, addr);
                if self.bound.contains_key(&key) || fresh.iter().any(|(k, ..)| *k == key) {
                    continue;
                }
                if passed {
                    fresh.push((key, self.inherited.take(l, addr).map_err(refuse)?, None));
                    continue;
                }
                let socket = if l.udp.is_some() {
                    crate::udp::bind(addr).map(Unstarted::Udp)
                } else {
                    frontend::bind_only(addr).map(Unstarted::Tcp)
                };
                let fail = |error| StartError::Bind {
                    index,
                    name: l.name.clone(),
                    addr,
                    error,
                };
                let socket = socket.map_err(fail)?;
                let claim = self.claim(addr, l.udp.is_some(), takeover).map_err(fail)?;
                fresh.push((key, socket, claim));
            }
        }
        Ok(fresh)
    }

    /// The claim of `addr`, bound by this process just now; an error when
    /// another weir holds it, unless this one takes over from it.
    fn claim(
        &self,
        addr: SocketAddr,
        udp: bool,
        takeover: bool,
    ) -> Result<Option<Claim>, std::io::Error> {
        // Port 0 is a port of this socket's own; an address this process
        // serves already (under another listener) is claimed by it.
        if addr.port() == 0 || self.bound.keys().any(|k| k.addr == addr && k.udp == udp) {
            return Ok(None);
        }
        match claim::claim(addr, udp) {
            Ok(Some(c)) => Ok(Some(c)),
            Ok(None) if takeover => Ok(None),
            Ok(None) => Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another weir serves this address or is starting on it (its first probe \
                 round runs before it listens); to replace a running weir without dropping \
                 connections, start this one with `weir run --upgrade`",
            )),
            // The claim is a safety net: a namespace that refuses it (a
            // sandbox) leaves weir serving as before.
            Err(e) => {
                tracing::debug!(%addr, error = %e, "cannot claim the address");
                Ok(None)
            }
        }
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
        let mut fresh: HashMap<SocketKey, (Unstarted, Option<Claim>)> =
            fresh.into_iter().map(|(k, s, c)| (k, (s, c))).collect();
        let mut bound = Vec::new();
        let mut wanted = Vec::new();
        for (l, lst) in config.listeners.iter().zip(listeners) {
            for (i, &addr) in l.bind.iter().enumerate() {
                let key = SocketKey::new(l, i, addr);
                wanted.push(key.clone());
                if let Some(b) = self.bound.get(&key) {
                    b.slot.store(Arc::clone(lst));
                    bound.push((l.name.clone(), b.local));
                    continue;
                }
                let Some((std_socket, claim)) = fresh.remove(&key) else {
                    continue;
                };
                let slot = Arc::new(ArcSwap::new(Arc::clone(lst)));
                let stop = run.stop_accepting.child_token();
                let closed = CancellationToken::new();
                let started = match std_socket {
                    Unstarted::Tcp(std_socket) => std_socket.local_addr().and_then(|local| {
                        frontend::listen(&std_socket)?;
                        let socket = tokio::net::TcpListener::from_std(std_socket)?;
                        run.accept_tasks.spawn(frontend::accept_loop(
                            Arc::clone(&slot),
                            socket,
                            stop.clone(),
                            closed.clone(),
                            run.connections.clone(),
                        ));
                        Ok(local)
                    }),
                    Unstarted::Udp(std_socket) => std_socket.local_addr().and_then(|local| {
                        let endpoint = Arc::new(crate::udp::Endpoint::new(std_socket)?);
                        run.accept_tasks.spawn(crate::udp::serve(
                            Arc::clone(&slot),
                            endpoint,
                            stop.clone(),
                            closed.clone(),
                            run.connections.clone(),
                        ));
                        Ok(local)
                    }),
                };
                let local = match started {
                    Ok(local) => local,
                    Err(e) => {
                        tracing::error!(listener = %l.name, %addr, error = %e, "cannot serve on a bound socket");
                        continue;
                    }
                };
                let kind = if l.udp.is_some() { "udp" } else { "tcp" };
                tracing::info!(listener = %l.name, addr = %local, protocol = kind, "listening");
                // Passed sockets are systemd's, port 0 is this socket's own.
                if claim.is_some() || (!self.inherited.serves(&l.name) && addr.port() != 0) {
                    run.accept_tasks
                        .spawn(claim::hold(addr, l.udp.is_some(), claim, stop.clone()));
                }
                self.bound.insert(
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
        self.bound.retain(|key, b| {
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
