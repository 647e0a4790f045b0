//! Building a snapshot's parts from a config: pools (reusing by name what a
//! previous snapshot has), listeners with their routes, the probes, and the
//! sockets of new addresses. Everything here may fail, and nothing here runs
//! yet: a failure drops what was built, and the running snapshot is untouched.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use weir_config::{Config, RouteMode};

use super::{Inputs, Server, Snapshot, StartError, sockets};
use crate::l7::{HttpLayer, RouteBuild};
use crate::listener::{L7, Listener, Mode, Route};
use crate::pool::{self, Pool};
use crate::probe::schedule::{self, Prepared};
use crate::upstream::{self, BackendTls, Upstream};

/// The new parts of a snapshot, built but not running yet.
pub(super) struct Staged {
    pub(super) pools: Vec<Arc<Pool>>,
    pub(super) listeners: Vec<Arc<Listener>>,
    pub(super) probes: Prepared,
    /// Newly bound sockets.
    pub(super) fresh: sockets::Fresh,
    /// The state file's entries for backends this config does not have
    /// (`None`: no state file).
    pub(super) orphans: Option<Vec<weir_state::Entry>>,
    /// Saved state to forget once this config serves (see `Inputs::gone`).
    pub(super) gone: Vec<(String, String, &'static str)>,
}

impl Server {
    /// Step 2 of a reload (and of a start): everything that can fail.
    /// `read_files`: false when only backends changed, so routes keep the
    /// certificates, keys and CAs they read before.
    pub(super) fn stage(
        &self,
        config: &Config,
        old: Option<&Snapshot>,
        inputs: Inputs,
        read_files: bool,
    ) -> Result<Staged, StartError> {
        let cx = pool::Context {
            journal: Arc::clone(&self.journal),
            // [state] is read only at start, like the state file's own.
            history: self.started.state.history,
        };
        let Inputs {
            saved,
            mut tiers,
            resolved,
            orphans,
            gone,
            leaving,
        } = inputs;
        let mut serves_http = vec![false; config.pools.len()];
        let mut serves_udp = vec![false; config.pools.len()];
        // A pool whose traffic starts with a PROXY header (an l4 route of a
        // TCP listener sends one) gets one on its probes to the traffic
        // port too, as HAProxy's checks do: such a backend refuses anything
        // else there.
        let mut probe_proxy = vec![weir_config::ProxyVersion::Off; config.pools.len()];
        for l in &config.listeners {
            for r in &l.routes {
                if let RouteMode::L4(l4) = &r.mode
                    && l.udp.is_none()
                    && let Some(v) = probe_proxy.get_mut(l4.pool_index)
                    && *v == weir_config::ProxyVersion::Off
                {
                    *v = l4.send_proxy_protocol;
                }
                for i in r.pool_indices() {
                    if let RouteMode::L7(_) = &r.mode {
                        serves_http[i] = true;
                    }
                    if l.udp.is_some() {
                        serves_udp[i] = true;
                    }
                }
            }
        }
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .enumerate()
            .map(|(pi, p)| {
                let saved_of = |b: &str| saved.get(&(p.name.clone(), b.to_owned())).cloned();
                let address_of = |b: &str| resolved.get(&p.name, b);
                let leaving_of = |b: &str| leaving.contains(&(p.name.clone(), b.to_owned()));
                let inputs = pool::Inputs {
                    previous: old.and_then(|o| o.pool(&p.name)).map(|p| &**p),
                    saved: &saved_of,
                    saved_tiers: tiers.remove(&p.name).unwrap_or_default(),
                    address: &address_of,
                    serves_http: serves_http[pi],
                    serves_udp: serves_udp[pi],
                    probe_proxy: probe_proxy[pi],
                    leaving: &leaving_of,
                };
                Pool::build(p, inputs, &cx)
            })
            .collect();
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (index, l) in config.listeners.iter().enumerate() {
            let before = old.and_then(|o| o.listener(&l.name)).map(|l| &**l);
            let with = With {
                config,
                pools: &pools,
                http: self.http.as_deref(),
                runtime: &self.firewall_rules,
                read_files,
            };
            listeners.push(build_listener(index, l, before, &with)?);
        }
        let probes = schedule::prepare(&pools).map_err(StartError::Health)?;
        let fresh = super::lock(&self.sockets).bind_new(config)?;
        Ok(Staged {
            pools,
            listeners,
            probes,
            fresh,
            orphans,
            gone,
        })
    }
}

/// What every listener of a snapshot is built with.
struct With<'a> {
    config: &'a Config,
    /// The snapshot's pools, indexed like `config.pools`.
    pools: &'a [Arc<Pool>],
    http: Option<&'a dyn HttpLayer>,
    runtime: &'a Arc<crate::firewall::RuntimeRules>,
    /// False when only backends changed: routes keep the TLS files they
    /// read before.
    read_files: bool,
}

/// Builds a listener of `config`, taking counters (and the token that closes
/// its connections) from `before`, the listener of that name before a reload.
fn build_listener(
    index: usize,
    l: &weir_config::Listener,
    before: Option<&Listener>,
    with: &With<'_>,
) -> Result<Arc<Listener>, StartError> {
    let &With {
        config,
        pools,
        http,
        runtime,
        read_files,
    } = with;
    let mut routes = Vec::with_capacity(l.routes.len());
    for (ri, r) in l.routes.iter().enumerate() {
        let path = format!("listeners[{index}].routes[{ri}]");
        let old = before.and_then(|b| b.routes.iter().find(|old| old.name == r.name));
        let tls = match &r.backend_tls {
            None => None,
            // Only backends changed: the files are as they were read.
            Some(_) if !read_files && old.is_some_and(|o| o.backend_tls.is_some()) => {
                old.and_then(|o| o.backend_tls.clone())
            }
            Some(t) => Some(upstream::tls::backend_config(t).map_err(|message| {
                StartError::BackendTls {
                    path: format!("{path}.backend_tls"),
                    message,
                }
            })?),
        };
        let stats = old.map_or_else(Arc::default, |old| Arc::clone(&old.stats));
        let mode = match &r.mode {
            RouteMode::L4(l4) => Mode::L4(Upstream {
                pool: Arc::clone(&pools[l4.pool_index]),
                send_proxy_protocol: l4.send_proxy_protocol,
                tls: tls.clone().map(|tls| BackendTls {
                    connector: tokio_rustls::TlsConnector::from(tls),
                    sni: r.backend_tls.as_ref().and_then(|t| {
                        t.sni
                            .clone()
                            .and_then(|n| rustls::pki_types::ServerName::try_from(n).ok())
                    }),
                }),
            }),
            RouteMode::L7(route_http) => {
                let Some(layer) = http else {
                    return Err(StartError::Http {
                        path,
                        message: "this build of weir cannot serve HTTP (mode = \"l7\")".to_owned(),
                    });
                };
                let before = old.and_then(|o| match &o.mode {
                    Mode::L7(l7) => Some(&l7.handler),
                    Mode::L4(_) => None,
                });
                let handler = layer
                    .build(RouteBuild {
                        config,
                        path: path.clone(),
                        listener: &l.name,
                        route: r,
                        http: route_http,
                        pools,
                        backend_tls: tls.clone(),
                        before,
                        read_files,
                    })
                    .map_err(|message| StartError::Http { path, message })?;
                Mode::L7(L7 {
                    handler,
                    pools: r
                        .pool_indices()
                        .into_iter()
                        .map(|i| Arc::clone(&pools[i]))
                        .collect(),
                })
            }
        };
        routes.push(Route {
            name: r.name.clone(),
            matcher: r.matcher.clone(),
            mode,
            stats,
            backend_tls: tls,
        });
    }
    // Shared with the running listener: its refusal-log budget is set when
    // the switch is certain (`Listener::activate`).
    let stats: Arc<crate::listener::ListenerStats> =
        before.map_or_else(Arc::default, |b| Arc::clone(&b.stats));
    Ok(Arc::new(Listener {
        name: l.name.clone(),
        max_connections: l.max_connections,
        idle_timeout: l.idle_timeout,
        shutdown_timeout: l.shutdown_timeout,
        handshake_timeout: l.handshake_timeout,
        // Also for a maglev pool that hashes by SNI (validation keeps those
        // to l4 routes of TCP listeners).
        needs_hello: l.routes.iter().any(|r| {
            r.matcher.needs_client_hello()
                || r.pool_indices().into_iter().any(|i| {
                    config.pools.get(i).is_some_and(|p| {
                        p.hash_key == weir_config::HashKey::Sni
                            && p.balance == weir_config::Policy::Maglev
                    })
                })
        }),
        proxy_accept: l.proxy_protocol.clone(),
        firewall: Arc::new(crate::firewall::Firewall::new(
            l.firewall.as_ref(),
            runtime,
            before.map(|b| &*b.firewall),
        )),
        routes,
        stats,
        zero_copy: config.runtime.zero_copy,
        access_log: config.log.access_log,
        udp: l.udp,
        kill: before.map_or_else(CancellationToken::new, |b| b.kill.clone()),
        drain: before.map_or_else(CancellationToken::new, |b| b.drain.clone()),
    }))
}
