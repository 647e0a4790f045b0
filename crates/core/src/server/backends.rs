//! Backends added and removed at runtime (`weir backend add|remove`), without
//! a reload: written to the state file before they are acknowledged, applied
//! again after a restart, and built into the running config the way
//! discovered backends are (the file's backends, then the runtime ones, then
//! DNS's). A new one is probed before it serves; a removed one drains for its
//! pool's `drain_timeout` at weight 0, then leaves.
//!
//! The file wins a conflict: a runtime backend whose name the file's pool now
//! has too (or whose pool the file no longer has) is not applied; it stays
//! in the state file, reported by every reload as shadowed, until it is
//! removed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use weir_config::{Backend, BackendAddress, Config};

use super::{ControlError, Server, StartError, lock};
use crate::health::{Cause, Change};
use crate::pool::BackendView;

/// A backend an operator added at runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeBackend {
    pub pool: String,
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub tier: u32,
    pub added: SystemTime,
    /// Removed: draining at weight 0 until then.
    pub leaving: Option<Instant>,
}

/// What [`Server::remove_backend`] did.
#[derive(Debug)]
pub enum Removal {
    /// The backend served: it drains at weight 0, then leaves.
    Draining(BackendView),
    /// The running config did not apply it (shadowed): it left the state
    /// file at once.
    NotApplied(RuntimeBackend),
}

/// Where a backend of the running config comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The config file.
    Config,
    /// `weir backend add`.
    Runtime,
    /// DNS (`discover`).
    Discovery,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Runtime => "runtime",
            Origin::Discovery => "discovery",
        }
    }
}

/// The names of one pool's backends by where they come from.
#[derive(Debug, Default)]
pub struct Origins {
    file: HashSet<String>,
    runtime: HashSet<String>,
}

impl Origins {
    /// The file's backends first (they win a conflict), then the runtime
    /// ones; anything else came from DNS.
    pub fn of(&self, name: &str) -> Origin {
        if self.file.contains(name) {
            Origin::Config
        } else if self.runtime.contains(name) {
            Origin::Runtime
        } else {
            Origin::Discovery
        }
    }
}

/// Why a runtime backend is not applied: the file has its name, or no
/// longer has its pool. `None` when it applies.
fn shadowed_by(source: &Config, b: &RuntimeBackend) -> Option<&'static str> {
    match source.pools.iter().find(|p| p.name == b.pool) {
        None => Some("its pool is not in the config"),
        Some(p) if p.backends.iter().any(|s| s.name == b.name) => {
            Some("the config file has a backend of that name, which wins")
        }
        Some(_) => None,
    }
}

impl Server {
    /// `source` with the runtime backends, then the discovered ones (as
    /// `plan` would have them).
    pub(crate) fn effective(&self, source: &Config, plan: &crate::discovery::Plan) -> Config {
        let mut config = source.clone();
        for b in lock(&self.runtime).iter() {
            if shadowed_by(source, b).is_some() {
                continue;
            }
            if let Some(p) = config.pools.iter_mut().find(|p| p.name == b.pool) {
                p.backends.push(Backend {
                    name: b.name.clone(),
                    address: BackendAddress::Ip(b.address),
                    weight: if b.leaving.is_some() { 0 } else { b.weight },
                    tier: b.tier,
                    health: true,
                    check_port: None,
                    max_connections: None,
                    check: None,
                });
            }
        }
        self.discovery.effective(&config, plan)
    }

    /// The runtime and discovered backends that are leaving, by (pool,
    /// name): whatever an operator set, they take no new connection or
    /// request (a weight override does not bring them back).
    pub(crate) fn leaving(
        &self,
        source: &Config,
        plan: &crate::discovery::Plan,
    ) -> std::collections::HashSet<(String, String)> {
        let mut out: std::collections::HashSet<(String, String)> = lock(&self.runtime)
            .iter()
            .filter(|b| b.leaving.is_some() && shadowed_by(source, b).is_none())
            .map(|b| (b.pool.clone(), b.name.clone()))
            .collect();
        out.extend(self.discovery.leaving(source, plan));
        out
    }

    /// The runtime backends `source` shadows, each with the reason, as
    /// "POOL/NAME: why".
    pub(crate) fn shadowed(&self, source: &Config) -> Vec<String> {
        lock(&self.runtime)
            .iter()
            .filter_map(|b| {
                shadowed_by(source, b).map(|why| format!("{}/{}: {why}", b.pool, b.name))
            })
            .collect()
    }

    /// The runtime backends, in the order they were added.
    pub fn runtime_backends(&self) -> Vec<RuntimeBackend> {
        lock(&self.runtime).clone()
    }

    /// Where backend `name` of `pool` comes from.
    pub fn origin(&self, pool: &str, name: &str) -> Origin {
        self.origins(pool).of(name)
    }

    /// Where each backend of `pool` comes from: built once for a listing,
    /// so that asking for every backend stays linear.
    pub fn origins(&self, pool: &str) -> Origins {
        let snapshot = self.snapshot();
        let file = snapshot
            .source
            .pools
            .iter()
            .find(|p| p.name == pool)
            .map(|p| p.backends.iter().map(|b| b.name.clone()).collect())
            .unwrap_or_default();
        let runtime = lock(&self.runtime)
            .iter()
            .filter(|b| b.pool == pool)
            .map(|b| b.name.clone())
            .collect();
        Origins { file, runtime }
    }

    /// Adds backend `name` (default: the address) at `address` to `pool`.
    /// Saved to the state file first; then the pool is rebuilt with it, and
    /// it serves once its first probe passes.
    pub async fn add_backend(
        &self,
        pool: &str,
        address: &str,
        name: Option<&str>,
        weight: u32,
        tier: u32,
    ) -> Result<BackendView, ControlError> {
        let address: SocketAddr = address
            .parse()
            .ok()
            .filter(|a: &SocketAddr| a.port() != 0)
            .ok_or_else(|| ControlError::Address(address.to_owned()))?;
        if weight > weir_config::MAX_WEIGHT {
            return Err(ControlError::Weight(weight));
        }
        let name = name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map_or_else(|| address.to_string(), str::to_owned);
        if let Some(problem) = weir_config::name_problem(&name) {
            return Err(ControlError::Name(name, problem));
        }
        let _one = self.change_lock().await?;
        let running = self
            .pool(pool)
            .ok_or_else(|| ControlError::NoPool(pool.to_owned()))?;
        if running.backend(&name).is_some()
            || lock(&self.runtime)
                .iter()
                .any(|b| b.pool == pool && b.name == name)
        {
            return Err(ControlError::Exists {
                pool: pool.to_owned(),
                backend: name,
            });
        }
        let b = RuntimeBackend {
            pool: pool.to_owned(),
            name: name.clone(),
            address,
            weight,
            tier,
            added: SystemTime::now(),
            leaving: None,
        };
        if let Some(p) = &self.persistence {
            // A new backend starts afresh: what the file may still hold under
            // this name (a predecessor removed while a restart cut its drain
            // short, a discovered address that left) is not its story.
            p.forget(pool, &name);
            p.flush().await;
            p.put_backend(&b)
                .await
                .map_err(|e| ControlError::State(e.to_string()))?;
        }
        lock(&self.runtime).push(b);
        if let Err(e) = self.rebuild_running().await {
            // Saved but not running: take it back out of both, or say why not.
            let stopping = matches!(e, StartError::Stopping);
            let mut message = format!("the pool could not be rebuilt: {e}");
            let deleted = match &self.persistence {
                Some(p) => p.delete_backend(pool, &name).await.map(drop),
                None => Ok(()),
            };
            match deleted {
                Ok(()) if stopping => {
                    lock(&self.runtime).retain(|r| !(r.pool == pool && r.name == name));
                    return Err(ControlError::ShuttingDown);
                }
                Ok(()) => lock(&self.runtime).retain(|r| !(r.pool == pool && r.name == name)),
                // Kept where the state file has it, so that it stays
                // visible and removable rather than coming back unseen.
                Err(d) => {
                    tracing::error!(pool, backend = %name, error = %d, "a backend whose addition failed could not be taken back out of the state file");
                    message.push_str(&format!(
                        "; the state file could not take it back out ({d}), so it stays added \
                         and applies at the pool's next rebuild (a reload, another backend change, \
                         a DNS change) or start: `weir backend remove` takes it out"
                    ));
                }
            }
            return Err(ControlError::State(message));
        }
        let new = self
            .pool(pool)
            .ok_or_else(|| ControlError::NoPool(pool.to_owned()))?;
        new.note(
            &name,
            Change::Runtime {
                from: "absent".to_owned(),
                to: format!("{address} tier {tier} weight {weight}"),
            },
            Cause::Operator,
        );
        tracing::info!(pool, backend = %name, %address, weight, tier, "backend added at runtime");
        new.view(&name).ok_or_else(|| ControlError::NoBackend {
            pool: pool.to_owned(),
            backend: name,
        })
    }

    /// Removes runtime backend `name` of `pool`: deleted from the state file
    /// first, then it takes no new connections and drains for the pool's
    /// `drain_timeout` before it leaves. One the running config does not
    /// apply (shadowed: the file has its name, or no longer has its pool)
    /// serves nothing and only leaves the state file. Backends of the config
    /// file or of DNS cannot be removed this way.
    pub async fn remove_backend(
        self: &Arc<Self>,
        pool: &str,
        name: &str,
    ) -> Result<Removal, ControlError> {
        let _one = self.change_lock().await?;
        let source = Arc::clone(&self.current.load().source);
        let shadowed = lock(&self.runtime)
            .iter()
            .find(|b| b.pool == pool && b.name == name && shadowed_by(&source, b).is_some())
            .cloned();
        if let Some(b) = shadowed {
            // Nothing to drain, and what the state file keeps under this
            // name (health, admin state, history) is the file's backend's.
            if let Some(p) = &self.persistence {
                p.delete_backend(pool, name)
                    .await
                    .map_err(|e| ControlError::State(e.to_string()))?;
            }
            lock(&self.runtime).retain(|r| !(r.pool == pool && r.name == name));
            tracing::info!(
                pool,
                backend = name,
                "runtime backend removed; it was not applied, so nothing drains"
            );
            return Ok(Removal::NotApplied(b));
        }
        let running = self
            .pool(pool)
            .ok_or_else(|| ControlError::NoPool(pool.to_owned()))?;
        let (known, leaving) = {
            let runtime = lock(&self.runtime);
            let mine = runtime.iter().find(|b| b.pool == pool && b.name == name);
            (
                mine.is_some_and(|b| b.leaving.is_none()),
                mine.is_some_and(|b| b.leaving.is_some()),
            )
        };
        if leaving {
            // Removed before (a script's retry): said as it is, not taken
            // for a backend of the config file.
            return Err(ControlError::Leaving {
                pool: pool.to_owned(),
                backend: name.to_owned(),
            });
        }
        if !known {
            return Err(if running.backend(name).is_some() {
                ControlError::NotRuntime {
                    pool: pool.to_owned(),
                    backend: name.to_owned(),
                    origin: match self.origin(pool, name) {
                        Origin::Discovery => "DNS records of the pool's discover",
                        _ => "config file",
                    },
                }
            } else {
                ControlError::NoBackend {
                    pool: pool.to_owned(),
                    backend: name.to_owned(),
                }
            });
        }
        if let Some(p) = &self.persistence {
            p.delete_backend(pool, name)
                .await
                .map_err(|e| ControlError::State(e.to_string()))?;
        }
        let until = Instant::now() + running.drain_timeout;
        for b in lock(&self.runtime).iter_mut() {
            if b.pool == pool && b.name == name {
                b.leaving = Some(until);
            }
        }
        match self.rebuild_running().await {
            Ok(()) | Err(StartError::Stopping) => {}
            Err(e) => {
                tracing::error!(pool, backend = name, error = %e, "the pool could not be rebuilt; the backend leaves at the next change");
            }
        }
        let new = self
            .pool(pool)
            .ok_or_else(|| ControlError::NoPool(pool.to_owned()))?;
        new.note(
            name,
            Change::Runtime {
                from: "added".to_owned(),
                to: "draining".to_owned(),
            },
            Cause::Operator,
        );
        tracing::info!(pool, backend = name, drain = ?running.drain_timeout, "backend removed at runtime; draining");
        // The end of the drain: out of the pool.
        let server = Arc::downgrade(self);
        let (pool_name, backend) = (pool.to_owned(), name.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            let Some(s) = server.upgrade() else { return };
            let _one = s.control.lock().await;
            if !s.is_ready() {
                // Stopping: the state file already forgot it.
                return;
            }
            let before = lock(&s.runtime).len();
            lock(&s.runtime)
                .retain(|b| !(b.pool == pool_name && b.name == backend && b.leaving.is_some()));
            if lock(&s.runtime).len() == before {
                return;
            }
            // A reload during the drain gave the file a backend of this
            // name: the runtime one no longer applied, and what is noted and
            // saved under the name is that backend's now.
            let file_has_it = s
                .current
                .load()
                .source
                .pools
                .iter()
                .any(|p| p.name == pool_name && p.backends.iter().any(|b| b.name == backend));
            if file_has_it {
                // Still, the runtime backend's drain is over: said in the
                // history the file's backend inherited with the name, so that
                // its last runtime word is not a drain (which would make a
                // later start forget the file's backend's saved state, see
                // `left_during_its_drain`).
                if let Some(p) = s.pool(&pool_name) {
                    p.note(
                        &backend,
                        Change::Runtime {
                            from: "draining".to_owned(),
                            to: "config".to_owned(),
                        },
                        Cause::Operator,
                    );
                }
                return;
            }
            if let Some(p) = s.pool(&pool_name) {
                p.note(
                    &backend,
                    Change::Runtime {
                        from: "draining".to_owned(),
                        to: "removed".to_owned(),
                    },
                    Cause::Operator,
                );
            }
            if let Some(p) = &s.persistence {
                p.forget(&pool_name, &backend);
            }
            if let Err(e) = s.rebuild_running().await {
                tracing::error!(pool = pool_name, error = %e, "the pool could not be rebuilt after a removal");
            }
        });
        new.view(name)
            .map(Removal::Draining)
            .ok_or_else(|| ControlError::NoBackend {
                pool: pool.to_owned(),
                backend: name.to_owned(),
            })
    }
}
