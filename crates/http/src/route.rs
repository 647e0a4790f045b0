//! An l7 route as this crate runs it: the state one snapshot built (rules,
//! the pools with their kept connections, forwarding, timeouts, limits) and
//! the slot that connections read it from, request by request.
//!
//! The slot is shared by every generation of the route (a reload keeps it by
//! the route's name), so a request on a connection that is older than the
//! last reload is still served by the rules and pools that run now. When a
//! reload removes the route, or changes how its clients are checked (TLS
//! added or removed, another `client_ca`), the slot is retired and its
//! connections drain.

use std::any::Any;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use weir_config::{HttpProtocol, HttpTimeouts};
use weir_core::client::Client;
use weir_core::l7::{Certificate, HttpHandler, RouteBuild, Serving};
use weir_core::listener::Listener;
use weir_core::pool::Pool;

use crate::auth::{AuthStats, Gate, Outcome};
use crate::policy::Policy;
use crate::rules::Rule;
use crate::tls::Terminator;
use crate::upstream::{Conns, Dialer};

/// What one snapshot says about an l7 route.
#[derive(Debug)]
pub(crate) struct RouteState {
    /// Terminates TLS; `None`: HTTP in clear text.
    pub(crate) tls: Option<Arc<Terminator>>,
    pub(crate) rules: Vec<Rule>,
    /// The pools the rules send to (`Rule::pool` indexes this).
    pub(crate) pools: Vec<RoutePool>,
    pub(crate) trusted: Vec<IpNet>,
    pub(crate) rfc7239: bool,
    pub(crate) timeouts: HttpTimeouts,
    pub(crate) max_header_bytes: u32,
    pub(crate) max_concurrent_streams: u32,
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) encoded_slashes: weir_wire::path::Slashes,
    /// Checked for every request, before the matched rule's.
    pub(crate) policies: Vec<Policy>,
    /// Forward authentication of the requests whose rule has none.
    pub(crate) auth: Option<Arc<Gate>>,
    /// The operator's header changes, before the matched rule's.
    pub(crate) request_headers: crate::headers::HeaderOps,
    pub(crate) response_headers: crate::headers::HeaderOps,
    /// A header rule carries `${server_ip}` or `${server_port}`: each
    /// connection looks up the address it came to.
    pub(crate) server_vars: bool,
    /// The `copy_headers` of every authentication of the route (its own
    /// and its rules'): what a client sends under them, or under a name
    /// that reads the same with `_` for `-`, never reaches a backend,
    /// whichever rule the request matched.
    pub(crate) identity: Arc<[http::HeaderName]>,
    /// Counters of the route's (and its rules') authentication, kept across
    /// reloads.
    pub(crate) auth_stats: Arc<AuthStats>,
    /// `[tracing]`: W3C Trace Context; `None`: headers pass untouched.
    pub(crate) tracing: Option<weir_config::Tracing>,
    /// `[log] access_log` of the running config: a request of a connection
    /// a reload carried on follows it too.
    pub(crate) access_log: bool,
    /// `[tracing.otlp]`: where the spans of sampled requests go.
    pub(crate) exporter: Option<Arc<crate::trace::export::Exporter>>,
    backend_tls: Option<weir_config::BackendTls>,
    /// The `match` of the listener's routes up to this one, in order: what
    /// decides which connections reach it.
    reached_by: Vec<weir_config::Match>,
}

/// A pool as an l7 route reaches it.
#[derive(Debug)]
pub(crate) struct RoutePool {
    pub(crate) pool: Arc<Pool>,
    pub(crate) dialer: Dialer,
    /// Kept connections, by backend index.
    pub(crate) conns: Vec<Arc<Conns>>,
    /// The pool's sticky cookie.
    pub(crate) sticky: Option<crate::sticky::StickyCookie>,
}

impl RouteState {
    /// Whether `ip` may send forwarding headers and a request id weir keeps.
    pub(crate) fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// Where the connections of a route find its current state.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) current: ArcSwap<RouteState>,
    /// The firewall of the listener the route runs in now: a request's
    /// `per_client.requests` limit is the running one, also on a connection
    /// a reload carried on (set when the route is switched to).
    pub(crate) firewall: arc_swap::ArcSwapOption<weir_core::firewall::Firewall>,
    /// Some firewall the route ran under limited requests: until then a
    /// request skips the firewall's load (the common case costs one
    /// relaxed load, not an `ArcSwap` one).
    pub(crate) requests_limited: std::sync::atomic::AtomicBool,
    /// Cancelled when a reload removed the route.
    pub(crate) retired: CancellationToken,
    /// When the route was removed: set before `retired` fires, so that
    /// every connection's (and every relay's) close deadline counts from
    /// it, not from when each next looked.
    pub(crate) retired_at: std::sync::OnceLock<tokio::time::Instant>,
}

impl Slot {
    /// When a connection of the removed route is closed whatever it still
    /// carries: `grace` after the removal (`now` if it is not removed).
    pub(crate) fn stop_at(&self, grace: std::time::Duration) -> tokio::time::Instant {
        let removed = self
            .retired_at
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now);
        removed + grace
    }
}

/// The handler of one l7 route in one snapshot.
#[derive(Debug)]
pub(crate) struct Handler {
    state: Arc<RouteState>,
    slot: Arc<Slot>,
}

impl Handler {
    pub(crate) fn build(
        b: &RouteBuild<'_>,
        exporter: Option<Arc<crate::trace::export::Exporter>>,
    ) -> Result<Handler, String> {
        let before = b.before.and_then(|h| h.as_any().downcast_ref::<Handler>());
        let previous = before.map(|h| &h.state);
        let same_tls = previous.is_some_and(|p| p.backend_tls == b.route.backend_tls);
        let indices = b.route.pool_indices();
        let mut pools = Vec::with_capacity(indices.len());
        for &i in &indices {
            let pool = b
                .pools
                .get(i)
                .ok_or_else(|| format!("pool #{i} is missing"))?;
            let config = b.config.pools.get(i);
            let protocol = config.map_or(HttpProtocol::Http1, |p| p.protocol);
            let dialer = Dialer {
                protocol,
                connect_timeout: pool.connect_timeout,
                ping: b.http.timeouts.upstream_ping,
                tls: b.backend_tls.as_ref().map(|tls| {
                    let mut tls = (**tls).clone();
                    tls.alpn_protocols = match protocol {
                        HttpProtocol::H2 => vec![b"h2".to_vec()],
                        _ => vec![b"http/1.1".to_vec()],
                    };
                    let sni = b.route.backend_tls.as_ref().and_then(|t| {
                        t.sni
                            .clone()
                            .and_then(|n| rustls::pki_types::ServerName::try_from(n).ok())
                    });
                    (tokio_rustls::TlsConnector::from(Arc::new(tls)), sni)
                }),
            };
            // Connections to a backend that kept its address, protocol and
            // TLS settings survive the reload.
            let kept = |name: &str| {
                let p = previous?.pools.iter().find(|p| p.pool.name == pool.name)?;
                let bi = p.pool.backends.iter().position(|old| old.name == name)?;
                p.conns.get(bi).cloned()
            };
            let conns = pool
                .backends
                .iter()
                .map(|backend| {
                    kept(&backend.name)
                        .filter(|c| same_tls && c.fits(backend.address, protocol))
                        .unwrap_or_else(|| {
                            Conns::new(
                                backend.address,
                                protocol,
                                Arc::clone(&backend.stats),
                                b.http.timeouts.upstream_keepalive,
                            )
                        })
                })
                .collect();
            pools.push(RoutePool {
                pool: Arc::clone(pool),
                dialer,
                conns,
                sticky: config
                    .and_then(|p| p.sticky.as_ref())
                    .map(crate::sticky::StickyCookie::new),
            });
        }
        // A policy keeps its counter across reloads, by name (unique in a
        // route).
        let counter = |name: &str| {
            previous
                .and_then(|p| {
                    p.policies
                        .iter()
                        .chain(p.rules.iter().flat_map(|r| &r.policies))
                        .find(|old| &*old.name == name)
                        .map(|old| Arc::clone(&old.blocked))
                })
                .unwrap_or_default()
        };
        let compile = |list: &[weir_config::HttpPolicy]| -> Vec<Policy> {
            list.iter()
                .map(|p| Policy::new(p, counter(&p.name)))
                .collect()
        };
        let auth_stats = previous.map_or_else(Arc::default, |p| Arc::clone(&p.auth_stats));
        // When only backends changed (DNS, `weir backend add`), a gate whose
        // settings stay is kept whole: its cache, breaker, connections and
        // `max_calls` (a rolling deploy of some pool would otherwise ask the
        // service again for every client, and close an open breaker).
        let gate = |a: &Option<weir_config::Auth>, before: Option<&Arc<Gate>>| {
            a.as_ref().map(|a| match before {
                Some(old) if !b.read_files && old.settings() == a => Arc::clone(old),
                _ => Arc::new(Gate::new(a, Arc::clone(&auth_stats))),
            })
        };
        let rules = b
            .http
            .rules
            .iter()
            .enumerate()
            .map(|(ri, r)| {
                let at = r
                    .pool_index
                    .and_then(|pi| indices.iter().position(|&i| i == pi))
                    .unwrap_or(0);
                let mut rule = Rule::new(&r.name, &r.matcher, at)
                    .ok_or_else(|| format!("{}.http[{ri}].match: cannot be used", b.path))?;
                rule.policies = compile(&r.policies);
                let before = previous
                    .and_then(|p| p.rules.iter().find(|old| *old.name == *r.name))
                    .and_then(|old| old.auth.as_ref());
                rule.auth = gate(&r.auth, before);
                rule.redirect = r.redirect.as_ref().map(crate::redirect::Redirect::new);
                rule.rewrite = crate::rewrite::PathRewrite::new(
                    r.strip_prefix.as_deref(),
                    r.add_prefix.as_deref(),
                );
                rule.request_headers = crate::headers::HeaderOps::new(&r.request_headers);
                rule.response_headers = crate::headers::HeaderOps::new(&r.response_headers);
                Ok(rule)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let policies = compile(&b.http.policies);
        let auth = gate(&b.http.auth, previous.and_then(|p| p.auth.as_ref()));
        let mut identity: Vec<http::HeaderName> = Vec::new();
        for g in rules.iter().filter_map(|r| r.auth.as_ref()).chain(&auth) {
            for name in g.copied_names() {
                if !identity.contains(name) {
                    identity.push(name.clone());
                }
            }
        }
        let tls_before = previous.and_then(|p| p.tls.as_ref());
        let tls = match &b.http.tls {
            // Only backends changed: the files are as the running route read
            // them (one being rewritten is no reason to keep DNS's answer
            // out), and its sessions go on.
            Some(_) if !b.read_files && tls_before.is_some() => tls_before.cloned(),
            Some(tls) => Some(Arc::new(
                Terminator::load(tls, tls_before.map(|t| &**t)).map_err(|e| format!("tls: {e}"))?,
            )),
            None => None,
        };
        // A connection set up under other terms (without TLS, or without the
        // client certificate now asked for) must not go on under these: the
        // route then takes a new slot and the old one's connections drain.
        // So must one that would now reach another route: a route added or
        // changed before this one (one that asks for a client certificate,
        // say) takes some of the names or clients this one had.
        let reached_by: Vec<weir_config::Match> = b
            .config
            .listeners
            .iter()
            .find(|l| l.name == b.listener)
            .map(|l| {
                l.routes
                    .iter()
                    .take_while(|r| r.name != b.route.name)
                    .chain(std::iter::once(b.route))
                    .map(|r| r.matcher.clone())
                    .collect()
            })
            .unwrap_or_default();
        let same_terms = previous.is_some_and(|p| {
            p.reached_by == reached_by
                && match (&p.tls, &tls) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a.same_clients(b),
                    _ => false,
                }
        });
        let request_headers = crate::headers::HeaderOps::new(&b.http.request_headers);
        let response_headers = crate::headers::HeaderOps::new(&b.http.response_headers);
        let server_vars = [&request_headers, &response_headers]
            .into_iter()
            .chain(
                rules
                    .iter()
                    .flat_map(|r| [&r.request_headers, &r.response_headers]),
            )
            .any(|ops| {
                ops.uses(weir_wire::template::Var::ServerIp)
                    || ops.uses(weir_wire::template::Var::ServerPort)
            });
        let state = Arc::new(RouteState {
            tls,
            rules,
            pools,
            trusted: b.http.forwarded.trusted.clone(),
            rfc7239: b.http.forwarded.rfc7239,
            timeouts: b.http.timeouts,
            max_header_bytes: b.http.max_header_bytes,
            max_concurrent_streams: b.http.max_concurrent_streams,
            max_body_bytes: b.http.max_body_bytes,
            encoded_slashes: match b.http.encoded_slashes {
                weir_config::EncodedSlashes::Reject => weir_wire::path::Slashes::Reject,
                weir_config::EncodedSlashes::Keep => weir_wire::path::Slashes::Keep,
            },
            policies,
            auth,
            request_headers,
            response_headers,
            server_vars,
            identity: identity.into(),
            auth_stats: Arc::clone(&auth_stats),
            tracing: b.config.tracing.clone(),
            access_log: b.config.log.access_log,
            exporter,
            backend_tls: b.route.backend_tls.clone(),
            reached_by,
        });
        let slot = match before {
            Some(h) if same_terms => Arc::clone(&h.slot),
            _ => Arc::new(Slot {
                current: ArcSwap::new(Arc::clone(&state)),
                firewall: arc_swap::ArcSwapOption::empty(),
                requests_limited: std::sync::atomic::AtomicBool::new(false),
                retired: CancellationToken::new(),
                retired_at: std::sync::OnceLock::new(),
            }),
        };
        Ok(Handler { state, slot })
    }
}

impl HttpHandler for Handler {
    fn serve(self: Arc<Self>, listener: Arc<Listener>, route: usize, client: Client) -> Serving {
        Box::pin(crate::serve::serve(
            Arc::clone(&self.slot),
            Arc::clone(&self.state),
            listener,
            route,
            client,
        ))
    }

    fn activate(&self, listener: &Listener) {
        self.slot.current.store(Arc::clone(&self.state));
        self.slot
            .firewall
            .store(Some(Arc::clone(&listener.firewall)));
        if listener.firewall.limits_requests() {
            self.slot
                .requests_limited
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // Kept connections follow this configuration's keep-alive from now
        // (not from the build: a reload that fails later changes nothing),
        // and new ones get a sweeper.
        let conns: Vec<Arc<Conns>> = self
            .state
            .pools
            .iter()
            .flat_map(|p| p.conns.iter().cloned())
            .collect();
        for c in &conns {
            c.set_keepalive(self.state.timeouts.upstream_keepalive);
        }
        let _ = crate::upstream::spawn_sweeper(&conns);
    }

    fn retire(&self) {
        let _ = self.slot.retired_at.set(tokio::time::Instant::now());
        self.slot.retired.cancel();
    }

    fn carries_on(&self, older: &dyn HttpHandler) -> bool {
        older
            .as_any()
            .downcast_ref::<Handler>()
            .is_some_and(|o| Arc::ptr_eq(&o.slot, &self.slot))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn explain(
        &self,
        q: &weir_core::l7::HttpQuestion<'_>,
    ) -> Option<weir_core::l7::RulesExplained> {
        Some(crate::explain::explain(&self.state, q))
    }

    fn auth(&self) -> Option<weir_core::l7::AuthSnapshot> {
        let s = &self.state;
        if s.auth.is_none() && s.rules.iter().all(|r| r.auth.is_none()) {
            return None;
        }
        let a = &s.auth_stats;
        use std::sync::atomic::Ordering::Relaxed;
        Some(weir_core::l7::AuthSnapshot {
            results: Outcome::ALL
                .iter()
                .map(|&o| (o.as_str(), a.results[o as usize].load(Relaxed)))
                .collect(),
            cache_hits: a.cache_hits.load(Relaxed),
            cache_misses: a.cache_misses.load(Relaxed),
            breaker: a.breaker_state(),
            duration: a.duration.snapshot(),
        })
    }

    fn policy_blocks(&self) -> Vec<(Arc<str>, u64)> {
        self.state
            .policies
            .iter()
            .chain(self.state.rules.iter().flat_map(|r| &r.policies))
            .map(|p| {
                (
                    Arc::clone(&p.name),
                    p.blocked.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect()
    }

    fn certificates(&self) -> Vec<Certificate> {
        self.state
            .tls
            .as_ref()
            .map(|t| t.certificates.clone())
            .unwrap_or_default()
    }
}
