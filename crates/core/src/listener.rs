//! A listener as the data plane sees it: its limits and timeouts, its routes
//! in order (each with what handles it, by mode), its counters, and the token
//! that closes its connections. Built from the config by the server; read by
//! the frontend and the handlers; rendered into `/metrics` here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_telemetry::{AccessRecord, Histogram, Kind, LogBudget, Verdict, Writer, count};
use weir_wire::client_hello::ClientHello;

use crate::Reason;
use crate::firewall::{Block, Firewall};
use crate::l7::{HttpHandler, TlsEnd};
use crate::pool::Pool;
use crate::upstream::Upstream;

/// A listener: its settings, routes, counters and the tokens that stop it.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    /// As configured; an operator may set another at runtime (see
    /// [`Listener::max_connections`]).
    pub max_connections: u32,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub handshake_timeout: Duration,
    pub routes: Vec<Route>,
    /// Some route matches on SNI or ALPN: peek at the ClientHello first.
    pub(crate) needs_hello: bool,
    /// Accepting the PROXY protocol, from these sources.
    pub(crate) proxy_accept: Option<weir_config::ProxyAccept>,
    /// Who may connect, and how much: the configured firewall and the
    /// operator's runtime rules.
    /// Shared with the connections of its `l7` routes that a reload
    /// carries on: their requests follow the running listener's limits.
    pub firewall: Arc<Firewall>,
    pub stats: Arc<ListenerStats>,
    pub(crate) zero_copy: bool,
    /// Write an access-log line per connection (per request in layer 7).
    pub access_log: bool,
    /// Cancelled when the listener's connections must be closed (end of the
    /// shutdown grace period, or of a removed listener's).
    pub kill: CancellationToken,
    /// `protocol = "udp"`: flows, not connections.
    pub udp: Option<weir_config::UdpListener>,
    /// Cancelled when shutdown begins or a reload removes the listener:
    /// connections that can end gracefully (an idle HTTP keep-alive, an
    /// HTTP/2 connection through GOAWAY) should.
    pub drain: CancellationToken,
}

/// A route: when it matches, and what handles the connections it takes.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: weir_config::Match,
    pub mode: Mode,
    pub stats: Arc<RouteStats>,
    /// The route's `backend_tls` as its files were read, for a rebuild
    /// that reads no files.
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
}

/// What handles a route's connections.
#[derive(Debug)]
pub enum Mode {
    /// Layer 4: relay the bytes to a backend of the pool, untouched.
    L4(Upstream),
    /// Layer 7: HTTP, served by a handler of another crate.
    L7(L7),
}

/// An l7 route's handler and the pools its rules send to.
#[derive(Debug)]
pub struct L7 {
    pub handler: Arc<dyn HttpHandler>,
    pub pools: Vec<Arc<Pool>>,
}

impl Route {
    /// The pools this route sends to: one for layer 4, those of its rules for
    /// layer 7.
    pub fn pools(&self) -> Vec<&Arc<Pool>> {
        match &self.mode {
            Mode::L4(upstream) => vec![&upstream.pool],
            Mode::L7(l7) => l7.pools.iter().collect(),
        }
    }

    /// True for `mode = "l7"`.
    pub fn is_http(&self) -> bool {
        matches!(self.mode, Mode::L7(_))
    }

    /// Source, SNI and ALPN conditions, all of which must hold. `hello` is the
    /// client's ClientHello, or `None` when it sent none (not TLS) or none was
    /// needed.
    pub(crate) fn matches(&self, ip: IpAddr, hello: Option<&ClientHello<'_>>) -> bool {
        let Some(h) = hello else {
            return self.holds(ip, None, |_| false);
        };
        self.holds(ip, Some(h.sni.as_deref()), |m| alpn_offered(m, h))
    }

    /// [`Route::matches`] with the ClientHello's SNI (`None`: no
    /// ClientHello) and `alpn_ok`, which says whether the route's `alpn`
    /// condition (not empty) held; asked only when the rest did.
    fn holds(
        &self,
        ip: IpAddr,
        sni: Option<Option<&str>>,
        alpn_ok: impl FnOnce(&weir_config::Match) -> bool,
    ) -> bool {
        // IPv4 clients on a dual-stack socket show up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let m = &self.matcher;
        if !m.source.is_empty() && !m.source.iter().any(|net| net.contains(&ip)) {
            return false;
        }
        if !m.needs_client_hello() {
            return true;
        }
        let Some(sni) = sni else {
            return false;
        };
        (m.sni.is_empty() || sni.is_some_and(|name| m.sni_matches(name)))
            && (m.alpn.is_empty() || alpn_ok(m))
    }
}

/// Whether `hello` offered one of the protocols of `m`'s `alpn` condition.
fn alpn_offered(m: &weir_config::Match, hello: &ClientHello<'_>) -> bool {
    m.alpn.iter().any(|a| hello.alpn.contains(a.as_bytes()))
}

/// Bit `i` set: the ALPN condition of route `i` (of the first 64) held for
/// what a ClientHello offered, or the route has none. Kept per TLS
/// connection so that [`Listener::route_for_name`] routes another name as
/// the connection itself was routed.
pub type AlpnHeld = u64;

impl Listener {
    /// What this listener shares with the one it replaces (a kept
    /// per-client table, the refusal-log budget) takes its values: called
    /// when a reload switches to it, not while staging, so that a reload
    /// that fails changes none of it.
    pub(crate) fn activate(&self, refusals_per_second: u32) {
        self.firewall.activate();
        self.stats.refusal_lines.set_per_second(refusals_per_second);
    }

    /// Open connections allowed: set at runtime, else as configured.
    pub fn max_connections(&self) -> u32 {
        match self.stats.max_connections_set.load(Relaxed) {
            0 => self.max_connections,
            n => n,
        }
    }

    /// The value set at runtime, when there is one.
    pub fn max_connections_override(&self) -> Option<u32> {
        match self.stats.max_connections_set.load(Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// The first route whose conditions hold.
    pub(crate) fn route_for(&self, ip: IpAddr, hello: Option<&ClientHello<'_>>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(ip, hello))
    }

    /// Which routes' ALPN conditions `hello` meets (see [`AlpnHeld`]).
    pub(crate) fn alpn_held(&self, hello: &ClientHello<'_>) -> AlpnHeld {
        self.routes
            .iter()
            .take(64)
            .enumerate()
            .filter(|(_, r)| r.matcher.alpn.is_empty() || alpn_offered(&r.matcher, hello))
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    /// The index of the route a TLS client at `ip` would have reached with
    /// `name` as its SNI and the ALPN offer its connection made (`held`;
    /// past the 64th route, `agreed`, the protocol the connection agreed
    /// on, stands for it): an HTTP request whose host leads elsewhere than
    /// its connection's route is misdirected (answered 421).
    pub fn route_for_name(
        &self,
        ip: IpAddr,
        name: &str,
        held: AlpnHeld,
        agreed: Option<&[u8]>,
    ) -> Option<usize> {
        self.routes.iter().enumerate().position(|(i, r)| {
            r.holds(ip, Some(Some(name)), |m| {
                if i < 64 {
                    held & 1 << i != 0
                } else {
                    m.alpn.iter().any(|a| agreed == Some(a.as_bytes()))
                }
            })
        })
    }

    /// True when the firewall is to be asked at accept: the socket's peer is
    /// the client (no PROXY header will say otherwise).
    pub(crate) fn filters_at_accept(&self, peer: IpAddr) -> bool {
        !self
            .proxy_accept
            .as_ref()
            .is_some_and(|a| a.is_trusted(peer))
    }

    /// Counts a connection the firewall refused for `block` and writes its
    /// access-log line (reason `firewall` or `rate_limit`, the rule as
    /// `error`), within the refusal lines' budget.
    pub(crate) fn refuse_blocked(&self, client: SocketAddr, held: Duration, block: Block) {
        self.stats.blocked(block);
        let reason = block.reason();
        self.stats.reject(reason);
        if self.refusal_line() {
            AccessRecord {
                listener: &self.name,
                route: None,
                client,
                backend: None,
                bytes_to_backend: 0,
                bytes_to_client: 0,
                duration: held,
                reason: reason.as_str(),
                error: Some(block.as_str()),
                tried: None,
            }
            .emit();
        }
    }

    /// Counts a connection refused before it reached a backend and writes its
    /// access-log line; its duration counts from `accepted_at`.
    pub(crate) fn refuse(
        &self,
        client: SocketAddr,
        accepted_at: tokio::time::Instant,
        reason: Reason,
    ) {
        self.refuse_on(None, client, accepted_at.elapsed(), reason);
    }

    /// Counts a connection refused on `route` (no backend could take it) and
    /// writes its access-log line. Under a flood the lines of refusals are
    /// thinned to `log.refusals_per_second`; the count stays exact, and what
    /// was left out is counted and said.
    pub fn refuse_on(
        &self,
        route: Option<&Route>,
        client: SocketAddr,
        duration: Duration,
        reason: Reason,
    ) {
        self.refuse_tried(route, client, duration, reason, None);
    }

    /// [`Self::refuse_on`], naming the backends tried and their errors.
    pub(crate) fn refuse_tried(
        &self,
        route: Option<&Route>,
        client: SocketAddr,
        duration: Duration,
        reason: Reason,
        tried: Option<&str>,
    ) {
        self.stats.reject(reason);
        if self.refusal_line() {
            self.log_tried(route, client, None, (0, 0), duration, reason, tried);
        }
    }

    /// Whether a refusal's access-log line may be written: the access log
    /// is on and `log.refusals_per_second` has room. The first line after
    /// some were left out is preceded by a warning saying how many.
    fn refusal_line(&self) -> bool {
        if !self.access_log {
            return false;
        }
        let Verdict::Write { suppressed } = self.stats.refusal_lines.check() else {
            return false;
        };
        if suppressed > 0 {
            tracing::warn!(
                target: "weir::access",
                listener = %self.name,
                suppressed,
                "access-log lines of refused connections left out (log.refusals_per_second)"
            );
        }
        true
    }

    /// The access-log line of a client whose TLS handshake failed (`what`:
    /// `protocol`, `client_certificate`), within
    /// `log.refusals_per_second` like a refusal: reason `tls_handshake`, the
    /// failure as `error`. Counted in `weir_tls_handshakes_total`, not as a
    /// refusal.
    pub fn log_failed_handshake(
        &self,
        route: Option<&Route>,
        client: SocketAddr,
        duration: Duration,
        what: &'static str,
    ) {
        if !self.refusal_line() {
            return;
        }
        AccessRecord {
            listener: &self.name,
            route: route.map(|r| r.name.as_str()),
            client,
            backend: None,
            bytes_to_backend: 0,
            bytes_to_client: 0,
            duration,
            reason: "tls_handshake",
            error: Some(what),
            tried: None,
        }
        .emit();
    }

    /// Writes one access-log line, when the access log is on. A connect
    /// failure reads `connect_failed` with the last connect error as `error`.
    pub(crate) fn log(
        &self,
        route: Option<&Route>,
        client: SocketAddr,
        backend: Option<&str>,
        bytes: (u64, u64),
        duration: Duration,
        reason: Reason,
    ) {
        self.log_tried(route, client, backend, bytes, duration, reason, None);
    }

    /// The access-log line of a connection's end that no backend is named
    /// in (an l7 connection closed by an operator).
    pub fn log_end(
        &self,
        route: Option<&Route>,
        client: SocketAddr,
        bytes: (u64, u64),
        duration: Duration,
        reason: Reason,
    ) {
        self.log_tried(route, client, None, bytes, duration, reason, None);
    }

    /// [`Self::log`], naming the backends a failed connection tried.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn log_tried(
        &self,
        route: Option<&Route>,
        client: SocketAddr,
        backend: Option<&str>,
        (sent, received): (u64, u64),
        duration: Duration,
        reason: Reason,
        tried: Option<&str>,
    ) {
        if !self.access_log {
            return;
        }
        let (reason, error) = if reason.retry() {
            ("connect_failed", Some(reason.as_str()))
        } else {
            (reason.as_str(), None)
        };
        AccessRecord {
            listener: &self.name,
            route: route.map(|r| r.name.as_str()),
            client,
            backend,
            bytes_to_backend: sent,
            bytes_to_client: received,
            duration,
            reason,
            error,
            tried,
        }
        .emit();
    }
}

/// Per-listener counters.
#[derive(Debug)]
pub struct ListenerStats {
    /// Connections accepted (including those then rejected).
    pub connections_total: AtomicU64,
    /// Connections currently open and counted against `max_connections`.
    pub connections_active: AtomicI64,
    /// `max_connections` set at runtime (0: the configured one). Kept
    /// across reloads, like the counters, until cleared or a restart.
    pub(crate) max_connections_set: AtomicU32,
    rejected: [AtomicU64; Reason::COUNT],
    firewall_blocked: [AtomicU64; Block::ALL.len()],
    /// Thins the access-log lines of refusals under a flood.
    pub(crate) refusal_lines: LogBudget,
    /// TLS handshakes with clients (l7 routes with `tls`), by how they ended.
    tls_handshakes: [AtomicU64; TlsEnd::ALL.len()],
    /// Time of the completed ones.
    pub tls_handshake_duration: Histogram,
    /// Flows and datagrams (`protocol = "udp"`).
    pub udp: crate::udp::UdpStats,
    /// The live connections (TCP listeners).
    pub live: crate::live::Registry,
}

impl Default for ListenerStats {
    fn default() -> Self {
        ListenerStats {
            connections_total: AtomicU64::new(0),
            connections_active: AtomicI64::new(0),
            max_connections_set: AtomicU32::new(0),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            firewall_blocked: Default::default(),
            refusal_lines: LogBudget::new(0),
            tls_handshakes: Default::default(),
            tls_handshake_duration: Histogram::new(crate::pool::LATENCY_SECONDS),
            udp: crate::udp::UdpStats::default(),
            live: crate::live::Registry::default(),
        }
    }
}

impl ListenerStats {
    /// Counts a TLS handshake that ended `end` after `took`.
    pub fn tls_handshake(&self, end: TlsEnd, took: Duration) {
        count(&self.tls_handshakes[end as usize], 1);
        if end == TlsEnd::Ok {
            self.tls_handshake_duration.observe(took);
        }
    }

    /// TLS handshakes that ended `end`.
    pub fn tls_handshakes(&self, end: TlsEnd) -> u64 {
        self.tls_handshakes[end as usize].load(Relaxed)
    }

    /// Connections refused for `reason` (one of [`Reason::REJECTIONS`]).
    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason as usize].load(Relaxed)
    }

    pub(crate) fn reject(&self, reason: Reason) {
        count(&self.rejected[reason as usize], 1);
    }

    /// Counts a refusal of the firewall's (`request_rate` from layer 7).
    pub fn blocked(&self, block: Block) {
        self.blocked_many(block, 1);
    }

    /// `n` refused for `block` at once (a coalesced batch of datagrams).
    pub fn blocked_many(&self, block: Block, n: u64) {
        count(&self.firewall_blocked[block as usize], n);
    }

    /// Connections the firewall refused for `block`.
    pub fn firewall_blocked(&self, block: Block) -> u64 {
        self.firewall_blocked[block as usize].load(Relaxed)
    }
}

/// Bucket bounds (seconds) of connection lifetimes: from a quick request to an
/// hour-long database session.
pub const CONNECTION_SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Bucket bounds (seconds) of HTTP request and response times: from a cached
/// answer to a long poll.
pub const REQUEST_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The `code` label of HTTP counters: a status class.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`STATUS_CLASSES`] of a status code (600 and up count as 5xx).
pub fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Per-route counters.
#[derive(Debug)]
pub struct RouteStats {
    pub connections_total: AtomicU64,
    /// From accept to close, of the connections this route took.
    pub connection_duration: Histogram,
    /// From the routing decision to a connected backend, waits for a slot and
    /// retries included (l4 routes).
    pub connect_duration: Histogram,
    /// Connections that never reached a backend, by [`Reason::ROUTE_FAILURES`]
    /// (l4 routes).
    pub connections_failed: [AtomicU64; Reason::ROUTE_FAILURES.len()],
    /// HTTP requests answered, by status class (l7 routes).
    pub http_requests: [AtomicU64; 5],
    /// From a request's header read to its response's end (l7 routes).
    pub http_request_duration: Histogram,
    /// Client connections closed because the client cancelled most of its
    /// requests before their answers (an HTTP/2 rapid-reset flood).
    pub http_reset_floods: AtomicU64,
    /// Thins the warnings about them: one a second.
    pub reset_flood_lines: LogBudget,
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats {
            connections_total: AtomicU64::new(0),
            connection_duration: Histogram::new(CONNECTION_SECONDS),
            connect_duration: Histogram::new(crate::pool::LATENCY_SECONDS),
            connections_failed: Default::default(),
            http_requests: Default::default(),
            http_request_duration: Histogram::new(REQUEST_SECONDS),
            http_reset_floods: AtomicU64::new(0),
            reset_flood_lines: LogBudget::new(1),
        }
    }
}

impl RouteStats {
    /// Counts an l4 connection that found no backend, for `reason`.
    pub(crate) fn connection_failed(&self, reason: Reason) {
        if let Some(i) = Reason::ROUTE_FAILURES.iter().position(|r| *r == reason) {
            count(&self.connections_failed[i], 1);
        }
    }

    /// Counts a request answered with `status` after `took`.
    pub fn http_request(&self, status: u16, took: Duration) {
        count(&self.http_requests[status_class(status)], 1);
        self.http_request_duration.observe(took);
    }

    /// A request refused before its header was read whole (a header too
    /// large, one that does not parse): counted, but no duration, which
    /// would be a zero pulling the latency quantiles down.
    pub fn http_refused(&self, status: u16) {
        count(&self.http_requests[status_class(status)], 1);
    }
}

/// The listener and route families.
pub(crate) fn render(listeners: &[Arc<Listener>], w: &mut Writer) {
    w.family(
        "weir_listener_connections",
        Kind::Counter,
        "Connections accepted by the listener, including those then rejected.",
    );
    for l in listeners {
        w.sample(
            "weir_listener_connections_total",
            &[("listener", &l.name)],
            l.stats.connections_total.load(Relaxed),
        );
    }
    w.family(
        "weir_listener_connections_active",
        Kind::Gauge,
        "Connections open on the listener, counted against max_connections.",
    );
    for l in listeners {
        w.sample(
            "weir_listener_connections_active",
            &[("listener", &l.name)],
            l.stats.connections_active.load(Relaxed),
        );
    }
    w.family(
        "weir_listener_connections_rejected",
        Kind::Counter,
        "Connections closed before reaching a backend, by reason.",
    );
    for l in listeners {
        for r in Reason::REJECTIONS {
            w.sample(
                "weir_listener_connections_rejected_total",
                &[("listener", &l.name), ("reason", r.as_str())],
                l.stats.rejected(r),
            );
        }
    }
    crate::firewall::render(listeners, w);
    crate::udp::render(listeners, w);
    w.family(
        "weir_access_log_suppressed",
        Kind::Counter,
        "Access-log lines of refused connections left out under a flood (log.refusals_per_second); the refusals themselves are all counted.",
    );
    for l in listeners {
        w.sample(
            "weir_access_log_suppressed_total",
            &[("listener", &l.name)],
            l.stats.refusal_lines.suppressed(),
        );
    }
    w.family(
        "weir_listener_max_connections",
        Kind::Gauge,
        "The listener's max_connections: as configured, or as set at runtime.",
    );
    for l in listeners {
        w.sample(
            "weir_listener_max_connections",
            &[("listener", &l.name)],
            l.max_connections(),
        );
    }
    w.family(
        "weir_route_connections",
        Kind::Counter,
        "Connections that matched the route.",
    );
    for l in listeners {
        for r in &l.routes {
            w.sample(
                "weir_route_connections_total",
                &[("listener", &l.name), ("route", &r.name)],
                r.stats.connections_total.load(Relaxed),
            );
        }
    }
    w.family(
        "weir_route_connections_failed",
        Kind::Counter,
        "Connections of l4 routes that never reached a backend (retries spent), by reason.",
    );
    // TCP listeners only: a UDP flow has no connect.
    for l in listeners.iter().filter(|l| l.udp.is_none()) {
        for r in l.routes.iter().filter(|r| !r.is_http()) {
            for (i, reason) in Reason::ROUTE_FAILURES.iter().enumerate() {
                w.sample(
                    "weir_route_connections_failed_total",
                    &[
                        ("listener", &l.name),
                        ("route", &r.name),
                        ("reason", reason.as_str()),
                    ],
                    r.stats.connections_failed[i].load(Relaxed),
                );
            }
        }
    }
    w.family(
        "weir_route_connect_duration_seconds",
        Kind::Histogram,
        "Time from the routing decision to a connected backend, on l4 routes: waits for a slot and retries included.",
    );
    // TCP listeners only: a UDP flow has no connect.
    for l in listeners.iter().filter(|l| l.udp.is_none()) {
        for r in l.routes.iter().filter(|r| !r.is_http()) {
            w.histogram(
                "weir_route_connect_duration_seconds",
                &[("listener", &l.name), ("route", &r.name)],
                &r.stats.connect_duration.snapshot(),
            );
        }
    }
    w.family(
        "weir_http_requests",
        Kind::Counter,
        "HTTP requests answered on l7 routes, by status class (weir's own answers included).",
    );
    for l in listeners {
        for r in l.routes.iter().filter(|r| r.is_http()) {
            for (i, code) in STATUS_CLASSES.iter().enumerate() {
                w.sample(
                    "weir_http_requests_total",
                    &[("listener", &l.name), ("route", &r.name), ("code", code)],
                    r.stats.http_requests[i].load(Relaxed),
                );
            }
        }
    }
    w.family(
        "weir_http_request_duration_seconds",
        Kind::Histogram,
        "Time from a request's header to the end of its response, on l7 routes.",
    );
    for l in listeners {
        for r in l.routes.iter().filter(|r| r.is_http()) {
            w.histogram(
                "weir_http_request_duration_seconds",
                &[("listener", &l.name), ("route", &r.name)],
                &r.stats.http_request_duration.snapshot(),
            );
        }
    }
    w.family(
        "weir_http_reset_floods",
        Kind::Counter,
        "Client connections of l7 routes closed because the client cancelled most of its requests at once (HTTP/2 rapid reset).",
    );
    for l in listeners {
        for r in l.routes.iter().filter(|r| r.is_http()) {
            w.sample(
                "weir_http_reset_floods_total",
                &[("listener", &l.name), ("route", &r.name)],
                r.stats.http_reset_floods.load(Relaxed),
            );
        }
    }
    auth(listeners, w);
    w.family(
        "weir_http_policy_blocked",
        Kind::Counter,
        "HTTP requests a request policy of the route refused, by policy name.",
    );
    for l in listeners {
        for r in &l.routes {
            let Mode::L7(l7) = &r.mode else { continue };
            for (policy, n) in l7.handler.policy_blocks() {
                w.sample(
                    "weir_http_policy_blocked_total",
                    &[
                        ("listener", &l.name),
                        ("route", &r.name),
                        ("policy", &policy),
                    ],
                    n,
                );
            }
        }
    }
    tls(listeners, w);
    w.family(
        "weir_connection_duration_seconds",
        Kind::Histogram,
        "Lifetime of routed connections, from accept to close.",
    );
    for l in listeners {
        for r in &l.routes {
            w.histogram(
                "weir_connection_duration_seconds",
                &[("listener", &l.name), ("route", &r.name)],
                &r.stats.connection_duration.snapshot(),
            );
        }
    }
}

/// The TLS families, for listeners with an l7 route that terminates TLS.
fn tls(listeners: &[Arc<Listener>], w: &mut Writer) {
    let terminating = |l: &&Arc<Listener>| {
        l.routes.iter().any(|r| match &r.mode {
            Mode::L7(l7) => !l7.handler.certificates().is_empty(),
            Mode::L4(_) => false,
        })
    };
    w.family(
        "weir_tls_handshakes",
        Kind::Counter,
        "TLS handshakes with clients on l7 routes, by result and reason.",
    );
    for l in listeners.iter().filter(terminating) {
        for end in TlsEnd::ALL {
            w.sample(
                "weir_tls_handshakes_total",
                &[
                    ("listener", &l.name),
                    ("result", end.result()),
                    ("reason", end.as_str()),
                ],
                l.stats.tls_handshakes(end),
            );
        }
    }
    w.family(
        "weir_tls_handshake_duration_seconds",
        Kind::Histogram,
        "Time of completed TLS handshakes with clients, from the ClientHello on.",
    );
    for l in listeners.iter().filter(terminating) {
        w.histogram(
            "weir_tls_handshake_duration_seconds",
            &[("listener", &l.name)],
            &l.stats.tls_handshake_duration.snapshot(),
        );
    }
    let mut certificates: Vec<crate::l7::Certificate> = listeners
        .iter()
        .flat_map(|l| &l.routes)
        .filter_map(|r| match &r.mode {
            Mode::L7(l7) => Some(l7.handler.certificates()),
            Mode::L4(_) => None,
        })
        .flatten()
        .collect();
    certificates.sort_by(|a, b| a.file.cmp(&b.file));
    certificates.dedup_by(|a, b| a.file == b.file);
    w.family(
        "weir_tls_certificate_expiry_timestamp_seconds",
        Kind::Gauge,
        "When a certificate weir serves expires (its notAfter), in seconds since the Unix epoch.",
    );
    for c in &certificates {
        w.sample(
            "weir_tls_certificate_expiry_timestamp_seconds",
            &[("certificate", &c.file)],
            c.not_after,
        );
    }
}

/// The families of forward authentication, for l7 routes with `auth`.
fn auth(listeners: &[Arc<Listener>], w: &mut Writer) {
    let routes: Vec<(&str, &str, crate::l7::AuthSnapshot)> = listeners
        .iter()
        .flat_map(|l| l.routes.iter().map(move |r| (l, r)))
        .filter_map(|(l, r)| match &r.mode {
            Mode::L7(l7) => Some((l.name.as_str(), r.name.as_str(), l7.handler.auth()?)),
            Mode::L4(_) => None,
        })
        .collect();
    w.family(
        "weir_auth_requests",
        Kind::Counter,
        "Calls to the authentication service, by result: allowed, denied, error, timeout.",
    );
    for (l, r, a) in &routes {
        for (result, n) in &a.results {
            w.sample(
                "weir_auth_requests_total",
                &[("listener", l), ("route", r), ("result", result)],
                n,
            );
        }
    }
    w.family(
        "weir_auth_cache_requests",
        Kind::Counter,
        "Lookups of the authentication decision cache, by result: hit, miss.",
    );
    for (l, r, a) in &routes {
        for (result, n) in [("hit", a.cache_hits), ("miss", a.cache_misses)] {
            w.sample(
                "weir_auth_cache_requests_total",
                &[("listener", l), ("route", r), ("result", result)],
                n,
            );
        }
    }
    w.family(
        "weir_auth_circuit_breaker_state",
        Kind::Gauge,
        "The authentication service's circuit breaker: 0 closed, 1 open, 2 half-open.",
    );
    for (l, r, a) in &routes {
        w.sample(
            "weir_auth_circuit_breaker_state",
            &[("listener", l), ("route", r)],
            a.breaker,
        );
    }
    w.family(
        "weir_auth_duration_seconds",
        Kind::Histogram,
        "Time of calls to the authentication service.",
    );
    for (l, r, a) in &routes {
        w.histogram(
            "weir_auth_duration_seconds",
            &[("listener", l), ("route", r)],
            &a.duration,
        );
    }
}
