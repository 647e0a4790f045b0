//! The gRPC control API (`[admin] grpc`): the `weir.admin.v1.Admin` service
//! over the running [`Server`], with reflection and `grpc_server_*` metrics.
//!
//! Reads need nothing; mutations (admin state, weight, reload) need the bearer
//! token of `admin.token_file` when one is set. The token is taken from the
//! running config, so a reload can rotate it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use weir_core::events::Event;
use weir_core::firewall::{Action, Block, Rule};
use weir_core::health::{AdminState, TierChange, Transition};
use weir_core::listener::Listener;
use weir_core::live::ConnFilter;
use weir_core::pool::Pool;
use weir_core::server::Snapshot;
use weir_core::server::{Origins, Removal};
use weir_core::{ControlError, Reason, ReloadError, Server, millis};

use crate::conn;
use crate::grpc_metrics::{GrpcMetricsLayer, GrpcStats};
use crate::metrics::BuildInfo;
use crate::pb::v1 as pb;
use crate::pb::v1::admin_server::{Admin as AdminApi, AdminServer};

/// Transitions shown with each backend in listings.
const LAST_TRANSITIONS: usize = 5;
/// Events a watch queues for a slow client before its stream is ended.
const WATCH_QUEUE: usize = 256;
/// `Watch` streams open at once, over all connections: each is a task woken
/// by every event.
const MAX_WATCHERS: usize = 256;
/// `Watch` streams one client (an IPv4 address or an IPv6 /64) holds at
/// most: a quarter of them, so that one that opens streams without end
/// leaves room for the others' `weir watch`.
const MAX_WATCHERS_PER_CLIENT: u32 = MAX_WATCHERS as u32 / 4;
/// Calls (HTTP/2 streams) open at once on one connection.
const MAX_STREAMS: u32 = 100;
/// The largest request message, as the JSON API's body limit.
const MAX_REQUEST: usize = 16 * 1024;

/// Operator changes running or waiting for their turn at once, over every
/// connection: each runs to its end even when its caller leaves, so the
/// callers' own limits no longer bound them.
const MAX_CHANGES: usize = 64;

/// The service behind `weir.admin.v1.Admin`.
#[derive(Debug, Clone)]
pub struct ControlService {
    server: Arc<Server>,
    build: BuildInfo,
    stats: Arc<GrpcStats>,
    stop: CancellationToken,
    /// Places for open `Watch` streams.
    watchers: Arc<tokio::sync::Semaphore>,
    /// The open `Watch` streams by client.
    watching: Arc<crate::conn::Clients>,
    /// Places for listed connections, shared with the JSON API.
    listings: crate::listing::Budget,
}

/// Places for operator changes under way, shared by the gRPC endpoint and
/// the JSON API (see [`MAX_CHANGES`]).
static CHANGES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CHANGES);

impl ControlService {
    /// `stop` ends the server and every open `Watch` stream.
    pub fn new(
        server: Arc<Server>,
        build: BuildInfo,
        stats: &crate::Stats,
        stop: CancellationToken,
    ) -> Self {
        ControlService {
            server,
            build,
            stats: Arc::clone(&stats.grpc),
            stop,
            watchers: Arc::new(tokio::sync::Semaphore::new(MAX_WATCHERS)),
            watching: Arc::default(),
            listings: stats.listings.clone(),
        }
    }

    /// Refuses a mutation without the right token (and counts the refusal).
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if let Some(why) = self.server.changes_refused() {
            return Err(Status::unavailable(why));
        }
        let snapshot = self.server.snapshot();
        let expected = snapshot.config.admin.token.as_ref().map(|t| t.secret());
        self.stats
            .authorize(request.metadata(), expected)
            .inspect_err(|s| tracing::warn!(reason = s.message(), "admin API change refused"))
    }
}

/// Binds the gRPC address with SO_REUSEPORT (so a second weir can start
/// beside a draining one), before the data plane starts.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(weir_core::bind(addr)?)
}

/// Why the control API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] crate::reflection::ReflectionError),
    #[error("{0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves the control API on a bound listener, within `limits`, until the
/// service's `stop`. Connections come through [`conn::accept_loop`] (capped,
/// timed out, pausing when out of descriptors) rather than tonic's own
/// accept loop, which retries at once on every error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: ControlService,
    endpoint: Arc<conn::EndpointStats>,
    limits: conn::Limits,
) -> Result<(), ServeError> {
    let stop = service.stop.clone();
    let layer = GrpcMetricsLayer::new(Arc::clone(&service.stats));
    let (tx, rx) = mpsc::channel::<Result<conn::Guarded, std::io::Error>>(1);
    let accept_stop = stop.clone();
    tokio::spawn(async move {
        // The whole HTTP/2 preface within `handshake_timeout`: the server
        // times nothing before it, and one byte would not prove a client.
        let limits = conn::Limits {
            handshake_bytes: H2_PREFACE.len(),
            ..limits
        };
        conn::accept_loop(listener, limits, endpoint, accept_stop, |io, _| {
            // The server takes connections one by one; a full channel means
            // it is busy starting the previous one, which is brief.
            if let Err(mpsc::error::TrySendError::Full(Ok(io))) = tx.try_send(Ok(io)) {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Ok(io)).await;
                });
            }
        })
        .await;
    });
    tonic::transport::Server::builder()
        // h2's default is no limit: one connection could open any number
        // of `Watch` calls, each a task.
        .max_concurrent_streams(Some(MAX_STREAMS))
        .concurrency_limit_per_connection(MAX_STREAMS as usize)
        .layer(layer)
        // Every request is small; tonic's default would reserve up to 4 MiB
        // per call as the message's header announces, before the token
        // is looked at.
        .add_service(AdminServer::new(service).max_decoding_message_size(MAX_REQUEST))
        .add_service(crate::reflection_service()?)
        .add_service(crate::reflection::reflection_service_v1alpha()?)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), async move {
            stop.cancelled().await;
        })
        .await?;
    Ok(())
}

#[tonic::async_trait]
impl AdminApi for ControlService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = &self.server;
        let snapshot = s.snapshot();
        let mut by_state = BTreeMap::new();
        let mut backends = 0;
        for p in &snapshot.pools {
            for b in &p.backends {
                backends += 1;
                *by_state
                    .entry(b.state_label().as_str().to_owned())
                    .or_insert(0) += 1;
            }
        }
        let active = snapshot
            .listeners
            .iter()
            .map(|l| l.stats.connections_active.load(Relaxed))
            .sum();
        let total = snapshot
            .listeners
            .iter()
            .map(|l| l.stats.connections_total.load(Relaxed))
            .sum();
        let uptime = s.started_at().elapsed().unwrap_or_default();
        Ok(Response::new(pb::StatusResponse {
            version: self.build.version.clone(),
            revision: self.build.revision.clone(),
            started_at_ms: millis(s.started_at()),
            config_path: s
                .config_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            config_generation: snapshot.generation,
            last_reload: s.last_reload().map(|r| pb::LastReload {
                at_ms: millis(r.at),
                ok: r.error.is_none(),
                error: r.error.unwrap_or_default(),
            }),
            ready: s.is_ready(),
            listeners: count(snapshot.listeners.len()),
            pools: count(snapshot.pools.len()),
            backends,
            backends_by_state: by_state.into_iter().collect(),
            active_connections: active,
            state_path: s
                .state_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            orphaned_state: s
                .orphaned_state()
                .into_iter()
                .filter(|e| e.admin.is_some() || e.weight_override.is_some())
                .map(|e| pb::SavedState {
                    pool: e.pool,
                    backend: e.backend,
                    admin: e.admin.unwrap_or_default(),
                    weight_override: e.weight_override,
                })
                .collect(),
            uptime_ms: i64::try_from(uptime.as_millis()).unwrap_or(i64::MAX),
            connections_total: total,
        }))
    }

    async fn list_listeners(
        &self,
        _: Request<pb::ListListenersRequest>,
    ) -> Result<Response<pb::ListListenersResponse>, Status> {
        let snapshot = self.server.snapshot();
        let listeners = snapshot
            .listeners
            .iter()
            .map(|l| listener_message(&snapshot, l))
            .collect();
        Ok(Response::new(pb::ListListenersResponse { listeners }))
    }

    async fn list_routes(
        &self,
        _: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let snapshot = self.server.snapshot();
        let routes = snapshot
            .listeners
            .iter()
            .flat_map(|l| {
                l.routes.iter().map(|r| {
                    let pools: Vec<String> = r.pools().iter().map(|p| p.name.clone()).collect();
                    pb::Route {
                        listener: l.name.clone(),
                        name: r.name.clone(),
                        pool: pools.first().cloned().unwrap_or_default(),
                        match_source: r.matcher.source.iter().map(ToString::to_string).collect(),
                        match_sni: r.matcher.sni.clone(),
                        match_alpn: r.matcher.alpn.clone(),
                        connections_total: r.stats.connections_total.load(Relaxed),
                        mode: if r.is_http() { "l7" } else { "l4" }.to_owned(),
                        pools,
                    }
                })
            })
            .collect();
        Ok(Response::new(pb::ListRoutesResponse { routes }))
    }

    async fn list_pools(
        &self,
        _: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let snapshot = self.server.snapshot();
        let pools = snapshot
            .pools
            .iter()
            .map(|p| {
                let mut by_state = BTreeMap::new();
                for b in &p.backends {
                    *by_state
                        .entry(b.state_label().as_str().to_owned())
                        .or_insert(0) += 1;
                }
                pb::Pool {
                    name: p.name.clone(),
                    balance: p.policy().as_str().to_owned(),
                    active_tier: p.active_tier(),
                    health_check: p.health.check.kind().to_owned(),
                    backends: count(p.backends.len()),
                    serving: count(p.backends.iter().filter(|b| b.is_serving()).count()),
                    backends_by_state: by_state.into_iter().collect(),
                    last_tier_change: p.tier_history().last().map(|t| tier_change(&p.name, t)),
                    queue_depth: count(p.queue.depth()),
                    max_queue: if p.limited() { p.max_queue() } else { 0 },
                }
            })
            .collect();
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    async fn list_backends(
        &self,
        request: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        let want = request.into_inner().pool;
        let snapshot = self.server.snapshot();
        if !want.is_empty() && snapshot.pool(&want).is_none() {
            return Err(Status::not_found(format!("no pool {want:?}")));
        }
        let backends = snapshot
            .pools
            .iter()
            .filter(|p| want.is_empty() || p.name == want)
            .flat_map(|p| {
                let origins = self.server.origins(&p.name);
                p.backends
                    .iter()
                    .filter_map(move |b| backend_message(&origins, p, &b.name))
            })
            .collect();
        Ok(Response::new(pb::ListBackendsResponse { backends }))
    }

    async fn set_backend_admin(
        &self,
        request: Request<pb::SetBackendAdminRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let admin = match pb::AdminState::try_from(r.state) {
            Ok(pb::AdminState::Enabled) => AdminState::Enabled,
            Ok(pb::AdminState::Drain) => AdminState::Drain,
            Ok(pb::AdminState::Disabled) => AdminState::Disabled,
            Ok(pb::AdminState::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(
                    "state must be ADMIN_STATE_ENABLED, ADMIN_STATE_DRAIN or ADMIN_STATE_DISABLED",
                ));
            }
        };
        let (server, pool, backend) = (self.server(), r.pool.clone(), r.backend.clone());
        self.to_the_end(async move { server.set_admin(&pool, &backend, admin).await })
            .await?
            .map_err(|e| control_status(&e))?;
        self.backend_reply(&r.pool, &r.backend)
    }

    async fn set_backend_weight(
        &self,
        request: Request<pb::SetBackendWeightRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let (server, pool, backend) = (self.server(), r.pool.clone(), r.backend.clone());
        self.to_the_end(async move { server.set_weight(&pool, &backend, r.weight).await })
            .await?
            .map_err(|e| control_status(&e))?;
        self.backend_reply(&r.pool, &r.backend)
    }

    async fn backend_history(
        &self,
        request: Request<pb::BackendHistoryRequest>,
    ) -> Result<Response<pb::BackendHistoryResponse>, Status> {
        let r = request.into_inner();
        let pool = self
            .server
            .pool(&r.pool)
            .ok_or_else(|| Status::not_found(format!("no pool {:?}", r.pool)))?;
        let view = pool.view(&r.backend).ok_or_else(|| {
            Status::not_found(format!("pool {:?} has no backend {:?}", r.pool, r.backend))
        })?;
        Ok(Response::new(pb::BackendHistoryResponse {
            transitions: view.history.iter().map(transition).collect(),
        }))
    }

    async fn pool_history(
        &self,
        request: Request<pb::PoolHistoryRequest>,
    ) -> Result<Response<pb::PoolHistoryResponse>, Status> {
        let name = request.into_inner().pool;
        let pool = self
            .server
            .pool(&name)
            .ok_or_else(|| Status::not_found(format!("no pool {name:?}")))?;
        Ok(Response::new(pb::PoolHistoryResponse {
            changes: pool
                .tier_history()
                .iter()
                .map(|t| tier_change(&name, t))
                .collect(),
        }))
    }

    async fn reload(
        &self,
        request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        self.authorize(&request)?;
        let server = self.server();
        match self
            .to_the_end(async move { server.reload_asked().await })
            .await?
        {
            Ok(r) => Ok(Response::new(pb::ReloadResponse {
                generation: r.generation,
                added: r.diff.added,
                removed: r.diff.removed,
                changed: r.diff.changed,
                need_restart: r.diff.need_restart,
                shadowed: r.shadowed,
            })),
            Err(
                e @ (ReloadError::Config(_)
                | ReloadError::Start(_)
                | ReloadError::Unguarded(_)
                | ReloadError::AdminAddress { .. }),
            ) => Err(Status::failed_precondition(format!(
                "reload failed; the running config is unchanged:\n{e}"
            ))),
            Err(e @ ReloadError::NoFile) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ (ReloadError::ShuttingDown | ReloadError::SuccessorStarting)) => {
                Err(Status::unavailable(e.to_string()))
            }
        }
    }

    async fn list_firewall_rules(
        &self,
        _: Request<pb::ListFirewallRulesRequest>,
    ) -> Result<Response<pb::ListFirewallRulesResponse>, Status> {
        let rules = self.server.firewall_rules();
        // Up to 100,000 rules with reasons of up to 1 KiB: an answer of
        // 100 MB, held until sent. It takes places in the listings' budget
        // as connections do, one per 100 bytes or so.
        let places = rules.iter().map(|r| 1 + r.reason.len() / 100).sum();
        let held = self.listings.hold(places)?;
        let mut response = Response::new(pb::ListFirewallRulesResponse {
            rules: rules.iter().map(rule_message).collect(),
        });
        response.extensions_mut().insert(held);
        Ok(response)
    }

    async fn add_firewall_rule(
        &self,
        request: Request<pb::AddFirewallRuleRequest>,
    ) -> Result<Response<pb::FirewallRule>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let action = match pb::FirewallAction::try_from(r.action) {
            Ok(pb::FirewallAction::Deny) => Action::Deny,
            Ok(pb::FirewallAction::Allow) => Action::Allow,
            Ok(pb::FirewallAction::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(
                    "action must be FIREWALL_ACTION_DENY or FIREWALL_ACTION_ALLOW",
                ));
            }
        };
        let lasts = (r.duration_ms > 0).then(|| std::time::Duration::from_millis(r.duration_ms));
        let server = self.server();
        let rule = self
            .to_the_end(async move {
                server
                    .add_firewall_rule(&r.network, action, lasts, &r.reason)
                    .await
            })
            .await?
            .map_err(|e| control_status(&e))?;
        Ok(Response::new(rule_message(&rule)))
    }

    async fn remove_firewall_rule(
        &self,
        request: Request<pb::RemoveFirewallRuleRequest>,
    ) -> Result<Response<pb::FirewallRule>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let server = self.server();
        let rule = self
            .to_the_end(async move { server.remove_firewall_rule(&r.network).await })
            .await?
            .map_err(|e| control_status(&e))?;
        Ok(Response::new(rule_message(&rule)))
    }

    async fn set_listener_max_connections(
        &self,
        request: Request<pb::SetListenerMaxConnectionsRequest>,
    ) -> Result<Response<pb::Listener>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        if r.max_connections == Some(0) {
            return Err(Status::invalid_argument(
                "max_connections must be at least 1 (leave it out to restore the configured value)",
            ));
        }
        let server = self.server();
        let l = self
            .to_the_end(async move {
                server
                    .set_max_connections(&r.listener, r.max_connections)
                    .await
            })
            .await?
            .map_err(|e| control_status(&e))?;
        Ok(Response::new(listener_message(&self.server.snapshot(), &l)))
    }

    async fn add_backend(
        &self,
        request: Request<pb::AddBackendRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let (server, pool) = (self.server(), r.pool.clone());
        let added = self
            .to_the_end(async move {
                let name = (!r.name.is_empty()).then_some(r.name.as_str());
                server
                    .add_backend(&r.pool, &r.address, name, r.weight.unwrap_or(1), r.tier)
                    .await
            })
            .await?
            .map_err(|e| control_status(&e))?;
        self.backend_reply(&pool, &added.name)
    }

    async fn remove_backend(
        &self,
        request: Request<pb::RemoveBackendRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let (server, pool, backend) = (self.server(), r.pool.clone(), r.backend.clone());
        let removal = self
            .to_the_end(async move { server.remove_backend(&pool, &backend).await })
            .await?
            .map_err(|e| control_status(&e))?;
        match removal {
            Removal::Draining(_) => self.backend_reply(&r.pool, &r.backend),
            // Not in the running config: it is described from its record.
            Removal::NotApplied(b) => Ok(Response::new(pb::Backend {
                pool: b.pool,
                name: b.name,
                address: b.address.to_string(),
                tier: b.tier,
                weight: b.weight,
                health: "unknown".to_owned(),
                admin: pb::AdminState::Disabled.into(),
                state: "disabled".to_owned(),
                origin: "runtime".to_owned(),
                ..pb::Backend::default()
            })),
        }
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let r = request.into_inner();
        let client = r
            .client
            .parse::<std::net::SocketAddr>()
            .or_else(|_| {
                r.client
                    .parse::<std::net::IpAddr>()
                    .map(|ip| std::net::SocketAddr::new(ip, 0))
            })
            .map_err(|_| {
                Status::invalid_argument(format!(
                    "client {:?} is not an IP address (or IP:port)",
                    r.client
                ))
            })?;
        // What a ClientHello can carry at most (a host name is shorter
        // still): longer is a mistake, and quoted back once per route.
        for (what, value) in [("sni", &r.sni), ("alpn", &r.alpn)] {
            if value.len() > 255 {
                return Err(Status::invalid_argument(format!(
                    "{what} is {} bytes long; a ClientHello carries at most 255",
                    value.len()
                )));
            }
        }
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let (sni, alpn) = (some(&r.sni), some(&r.alpn));
        let headers = explain_headers(&r)?;
        let question = (!r.path.is_empty()).then(|| weir_core::l7::HttpQuestion {
            method: if r.method.is_empty() {
                "GET"
            } else {
                &r.method
            },
            host: (!r.host.is_empty()).then_some(r.host.as_str()),
            path: &r.path,
            headers: &headers,
            client: client.ip(),
        });
        let e = self
            .server
            .explain(
                &r.listener,
                client,
                sni.as_deref(),
                alpn.as_deref(),
                question,
            )
            .map_err(|e| control_status(&e))?;
        let verdicts = |list: Vec<weir_core::server::RouteVerdict>| {
            list.into_iter()
                .map(|v| pb::RouteVerdict {
                    name: v.name,
                    matched: v.matched,
                    why: v.why,
                })
                .collect()
        };
        Ok(Response::new(pb::ExplainResponse {
            routes: verdicts(e.routes),
            http: e.http.map(|h| pb::HttpVerdict {
                rules: verdicts(h.rules),
                rule: h.rule.unwrap_or_default(),
                pool: h.pool.unwrap_or_default(),
                notes: h.notes,
            }),
            route: e.route.unwrap_or_default(),
            firewall: e.firewall.unwrap_or_default().to_owned(),
            pools: e
                .pools
                .into_iter()
                .map(|p| pb::PoolVerdict {
                    name: p.name,
                    balance: p.balance.to_owned(),
                    active_tier: p.active_tier,
                    backends: p
                        .backends
                        .into_iter()
                        .map(|b| pb::BackendVerdict {
                            name: b.name,
                            eligible: b.eligible,
                            why: b.why,
                        })
                        .collect(),
                    pick: p.pick.unwrap_or_default(),
                    pick_note: p.pick_note,
                })
                .collect(),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ConnectionFilter>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let r = request.into_inner();
        let filter = connection_filter(&r)?;
        let limit = if r.limit == 0 {
            usize::MAX
        } else {
            r.limit as usize
        };
        let picked = self
            .server
            .connections(&filter, limit)
            .map_err(|e| control_status(&e))?;
        // Described only once the answer has its places.
        let held = self.listings.hold(picked.len())?;
        let connections = picked
            .views()
            .into_iter()
            .map(|c| pb::Connection {
                id: c.id,
                listener: c.listener,
                route: c.route,
                pool: c.pool.unwrap_or_default(),
                backend: c.backend.unwrap_or_default(),
                client: c.client.to_string(),
                age_ms: u64::try_from(c.age.as_millis()).unwrap_or(u64::MAX),
                sent_bytes: c.sent,
                received_bytes: c.received,
                state: c.state.as_str().to_owned(),
            })
            .collect();
        let mut response = Response::new(pb::ListConnectionsResponse {
            connections,
            total: count(picked.total()),
        });
        // Taken by the body that sends the answer (`GrpcMetrics`, or the
        // JSON API's), which gives the places back once it is gone.
        response.extensions_mut().insert(held);
        Ok(response)
    }

    async fn close_connections(
        &self,
        request: Request<pb::ConnectionFilter>,
    ) -> Result<Response<pb::CloseConnectionsResponse>, Status> {
        self.authorize(&request)?;
        let filter = connection_filter(request.get_ref())?;
        let server = self.server();
        let closed = self
            .to_the_end(async move { server.close_connections(&filter) })
            .await?
            .map_err(|e| control_status(&e))?;
        Ok(Response::new(pb::CloseConnectionsResponse {
            closed: count(closed),
        }))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Event, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Without the peer's address (a connection that is not TCP) only
        // the cap over all applies.
        let client = match request.remote_addr() {
            Some(peer) => Some(
                crate::conn::Clients::enter(&self.watching, peer.ip(), MAX_WATCHERS_PER_CLIENT)
                    .ok_or_else(|| {
                        Status::resource_exhausted(format!(
                            "this client has {MAX_WATCHERS_PER_CLIENT} watchers open, \
                             the most one client may; close one first"
                        ))
                    })?,
            ),
            None => None,
        };
        let pool = request.into_inner().pool;
        // A misspelt pool would be watched in silence for good.
        if !pool.is_empty() && self.server.snapshot().pool(&pool).is_none() {
            return Err(Status::not_found(format!("no pool {pool:?}")));
        }
        let Ok(watching) = Arc::clone(&self.watchers).try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{MAX_WATCHERS} watchers are open; try again later"
            )));
        };
        let mut events = self.server.journal().subscribe();
        // One place more than is ever filled with events: the status that
        // ends the stream always fits.
        let (tx, rx) = mpsc::channel(WATCH_QUEUE + 1);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let _watching = (watching, client);
            loop {
                // weir stopping (or handing over) ends the stream with an
                // error, so that a follower does not take it for a clean end.
                let stopping = || Status::unavailable("weir is stopping; its events end here");
                let event = tokio::select! {
                    () = stop.cancelled() => {
                        let _ = tx.try_send(Err(stopping()));
                        break;
                    }
                    () = tx.closed() => break,
                    e = events.recv() => e,
                };
                let event = match event {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(lost)) => {
                        let status = Status::resource_exhausted(format!(
                            "this watcher fell behind and lost {lost} events"
                        ));
                        let _ = tx.try_send(Err(status));
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.try_send(Err(stopping()));
                        break;
                    }
                };
                if !pool.is_empty() && event.pool().is_some_and(|p| p != pool) {
                    continue;
                }
                if tx.capacity() <= 1 {
                    // The client does not read: end its stream rather than
                    // queue without bound, and say so (the stream would
                    // otherwise end as if all was well).
                    let _ = tx.try_send(Err(Status::resource_exhausted(format!(
                        "this watcher did not read {WATCH_QUEUE} events in time"
                    ))));
                    break;
                }
                if tx.try_send(Ok(event_message(&event))).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

fn listener_message(snapshot: &Snapshot, l: &Listener) -> pb::Listener {
    pb::Listener {
        name: l.name.clone(),
        bind: snapshot
            .local_addrs(&l.name)
            .iter()
            .map(ToString::to_string)
            .collect(),
        protocol: if l.udp.is_some() { "udp" } else { "tcp" }.to_owned(),
        max_connections: l.max_connections(),
        active_connections: l.stats.connections_active.load(Relaxed),
        connections_total: l.stats.connections_total.load(Relaxed),
        rejected: Reason::REJECTIONS
            .iter()
            .map(|&r| (r.as_str().to_owned(), l.stats.rejected(r)))
            .collect(),
        routes: l.routes.iter().map(|r| r.name.clone()).collect(),
        configured_max_connections: l.max_connections,
        firewall_blocked: Block::ALL
            .iter()
            .map(|&b| (b.as_str().to_owned(), l.stats.firewall_blocked(b)))
            .collect(),
    }
}

fn rule_message(r: &Rule) -> pb::FirewallRule {
    pb::FirewallRule {
        network: r.net.to_string(),
        action: match r.action {
            Action::Deny => pb::FirewallAction::Deny,
            Action::Allow => pb::FirewallAction::Allow,
        }
        .into(),
        until_ms: r.until.map(millis),
        reason: r.reason.clone(),
        added_ms: millis(r.added),
    }
}

impl ControlService {
    /// Runs an operator change in a task of its own and waits for it: once
    /// begun, a change runs to its end even when the caller goes away (a
    /// reset stream, a client's deadline, a closed HTTP connection drop the
    /// call), so that a reload never stops between its steps and the state
    /// file and the running process never part ways. At most
    /// [`MAX_CHANGES`] at once; more are refused.
    async fn to_the_end<T: Send + 'static>(
        &self,
        change: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, Status> {
        let place = CHANGES.try_acquire().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_CHANGES} changes are already under way or waiting their turn; try again"
            ))
        })?;
        tokio::spawn(async move {
            let _place = place;
            change.await
        })
        .await
        .map_err(|e| Status::internal(format!("the change did not run to its end: {e}")))
    }
}

impl ControlService {
    fn server(&self) -> Arc<Server> {
        Arc::clone(&self.server)
    }

    fn backend_reply(&self, pool: &str, backend: &str) -> Result<Response<pb::Backend>, Status> {
        self.server
            .pool(pool)
            .and_then(|p| backend_message(&self.server.origins(pool), &p, backend))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("pool {pool:?} has no backend {backend:?}")))
    }
}

/// The request headers of an `ExplainRequest`, as (name, value) pairs:
/// `Name: value` each, at most 100 of at most 8 KiB.
fn explain_headers(r: &pb::ExplainRequest) -> Result<Vec<(String, String)>, Status> {
    // What a request's path, host and headers can hold at most; longer is a
    // mistake, quoted back once per rule.
    if r.path.len() > 8192 || r.host.len() > 255 || r.method.len() > 32 {
        return Err(Status::invalid_argument(
            "path (8 KiB), host (255 bytes) or method (32 bytes) too long",
        ));
    }
    if r.headers.len() > 100 {
        return Err(Status::invalid_argument("at most 100 headers"));
    }
    if !r.path.is_empty() && !r.path.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "path {:?} does not start with /",
            r.path
        )));
    }
    r.headers
        .iter()
        .map(|h| match h.split_once(':') {
            Some((n, v)) if !n.trim().is_empty() && h.len() <= 8192 => {
                Ok((n.trim().to_owned(), v.trim().to_owned()))
            }
            _ => Err(Status::invalid_argument(format!(
                "header {h:?} is not `Name: value` (at most 8 KiB)"
            ))),
        })
        .collect()
}

/// The core's filter from the request's; an unparsable client is
/// INVALID_ARGUMENT.
fn connection_filter(r: &pb::ConnectionFilter) -> Result<ConnFilter, Status> {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let client = if r.client.is_empty() {
        None
    } else {
        Some(ConnFilter::parse_client(&r.client).map_err(|e| control_status(&e))?)
    };
    Ok(ConnFilter {
        listener: some(&r.listener),
        pool: some(&r.pool),
        backend: some(&r.backend),
        client,
        id: r.id,
    })
}

fn control_status(e: &ControlError) -> Status {
    match e {
        ControlError::NoPool(_) | ControlError::NoBackend { .. } => {
            Status::not_found(e.to_string())
        }
        ControlError::NoListener(_) | ControlError::NoRule(_) => Status::not_found(e.to_string()),
        ControlError::Weight(_)
        | ControlError::Network(_)
        | ControlError::NoFilter
        | ControlError::Reason(_) => Status::invalid_argument(e.to_string()),
        ControlError::TooManyRules => Status::resource_exhausted(e.to_string()),
        ControlError::State(_) => Status::internal(e.to_string()),
        ControlError::ShuttingDown | ControlError::SuccessorStarting => {
            Status::unavailable(e.to_string())
        }
        ControlError::Address(_) | ControlError::Name(..) => {
            Status::invalid_argument(e.to_string())
        }
        ControlError::Exists { .. } => Status::already_exists(e.to_string()),
        ControlError::NotRuntime { .. }
        | ControlError::Leaving { .. }
        | ControlError::UdpListener(_) => Status::failed_precondition(e.to_string()),
    }
}

fn backend_message(origins: &Origins, pool: &Pool, name: &str) -> Option<pb::Backend> {
    let b = pool.backend(name)?;
    let v = pool.view(name)?;
    let admin = match v.admin {
        AdminState::Enabled => pb::AdminState::Enabled,
        AdminState::Drain => pb::AdminState::Drain,
        AdminState::Disabled => pb::AdminState::Disabled,
    };
    let skip = v.history.len().saturating_sub(LAST_TRANSITIONS);
    Some(pb::Backend {
        pool: pool.name.clone(),
        name: v.name.clone(),
        address: v.address.to_string(),
        tier: v.tier,
        weight: v.weight,
        weight_override: v.weight_override,
        effective_weight: v.effective_weight,
        health: v.health.as_str().to_owned(),
        admin: admin.into(),
        state: b.state_label().as_str().to_owned(),
        serving: v.serving,
        active_connections: v.active_connections,
        connections_total: b.stats.connections_total.load(Relaxed),
        last_probe: v.last_probe.as_ref().map(|p| pb::Probe {
            at_ms: millis(p.at),
            ok: p.ok,
            reason: p.reason.clone(),
            duration_us: u64::try_from(p.took.as_micros()).unwrap_or(u64::MAX),
        }),
        last_transitions: v.history.iter().skip(skip).map(transition).collect(),
        sent_bytes: b.stats.sent_bytes.load(Relaxed),
        received_bytes: b.stats.received_bytes.load(Relaxed),
        checks_passed: b.stats.checks_passed(),
        checks_failed: b.stats.checks_failed_total(),
        origin: origins.of(name).as_str().to_owned(),
        max_connections: v.max_connections,
        connection_limit: v.connection_limit,
        queue_depth: v.queue_depth,
        active_requests: v.active_requests,
        responses_total: b
            .stats
            .http_responses
            .iter()
            .fold(0u64, |t, n| t.saturating_add(n.load(Relaxed))),
    })
}

fn transition(t: &Transition) -> pb::Transition {
    let (kind, from, to) = t.change.parts();
    pb::Transition {
        at_ms: millis(t.at),
        kind: kind.to_owned(),
        from,
        to,
        cause: t.cause.to_string(),
    }
}

pub(crate) fn event_message(e: &Event) -> pb::Event {
    use pb::event::Kind;
    let kind = match e {
        Event::Backend {
            pool,
            backend,
            transition: t,
        } => Kind::Backend(pb::BackendTransition {
            pool: pool.clone(),
            backend: backend.clone(),
            transition: Some(transition(t)),
        }),
        Event::Tier { pool, change } => Kind::Tier(tier_change(pool, change)),
        Event::Reload {
            generation, error, ..
        } => Kind::Reload(pb::ReloadEvent {
            ok: error.is_none(),
            generation: *generation,
            error: error.clone().unwrap_or_default(),
        }),
        Event::Firewall { change, rule, .. } => Kind::Firewall(pb::FirewallEvent {
            change: change.as_str().to_owned(),
            rule: Some(rule_message(rule)),
        }),
    };
    pb::Event {
        at_ms: millis(e.at()),
        kind: Some(kind),
    }
}

fn tier_change(pool: &str, t: &TierChange) -> pb::TierChange {
    pb::TierChange {
        pool: pool.to_owned(),
        from: t.from,
        to: t.to,
        at_ms: millis(t.at),
        cause: t.cause.clone(),
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
