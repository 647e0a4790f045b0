//! The validated, typed configuration. The data plane only ever sees these types;
//! they are built from the raw serde types by [`crate::load_str`] (or
//! [`crate::load_str_with`], [`crate::load_file`]) and carry no `Option`s for
//! things that have defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
pub use weir_balance::Policy;

/// The largest backend weight (configured or set by an operator).
pub const MAX_WEIGHT: u32 = 1000;

/// A whole, validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub admin: Admin,
    pub runtime: Runtime,
    pub state: State,
    pub log: Log,
    /// W3C Trace Context on l7 routes; `None`: `traceparent` passes
    /// through untouched.
    pub tracing: Option<Tracing>,
    pub listeners: Vec<Listener>,
    pub pools: Vec<Pool>,
}

/// `[tracing]`: every request of an l7 route gets weir's own span in the
/// `traceparent` sent upstream, continuing the client's trace or starting
/// one; its trace id is in the access log.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The share of new traces marked sampled, 0.0..=1.0.
    pub sample_ratio: f64,
    /// Keep the client's sampled flag (a parent-based sampler); `false` at
    /// an edge facing untrusted clients decides by `sample_ratio` alone.
    pub trust_client_sampling: bool,
    /// Where the spans of sampled requests go; `None`: propagation only.
    pub otlp: Option<Otlp>,
}

/// `[tracing.otlp]`: the OpenTelemetry collector spans are exported to, in
/// batches, from a bounded queue (a full queue drops spans, never waits).
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// As written: `http://host:port[/path]`.
    pub endpoint: String,
    pub host: String,
    pub port: u16,
    /// The request path of `protocol = "http"` (`/v1/traces` when the
    /// endpoint has none).
    pub path: String,
    pub protocol: OtlpProtocol,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Bounds one export call (connect included).
    pub timeout: Duration,
    /// A batch leaves at least this often while spans wait.
    pub interval: Duration,
    /// Spans per export call at most.
    pub batch_size: u32,
    /// Spans waiting for export at most; more are dropped and counted.
    pub queue_size: u32,
}

/// `protocol` of `[tracing.otlp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (the collector's port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318).
    Http,
}

/// `[admin]`: the admin endpoints. An address left out is not served.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// The status page, `/metrics`, `/healthz`, `/readyz` and the JSON API.
    pub http: Option<SocketAddr>,
    /// The gRPC control API the operator commands use.
    pub grpc: Option<SocketAddr>,
    /// The bearer token every mutation must carry, read from `token_file`.
    pub token: Option<Token>,
    pub token_file: Option<PathBuf>,
    /// Allows a non-loopback admin address without a token.
    pub insecure: bool,
    /// Open connections per admin endpoint at most; beyond, refused at once.
    pub max_connections: u32,
    /// Open connections per endpoint from one client (an IPv4 address or
    /// an IPv6 /64) at most: half of `max_connections` unless set.
    pub max_connections_per_client: u32,
    /// Names (lower-case; `*.` and a name for one label) the HTTP endpoint
    /// answers in `Host`, beside IP addresses and `localhost`.
    pub hosts: Vec<String>,
    /// Time a client has to send its first request (HTTP headers, or the
    /// HTTP/2 preface of a gRPC client).
    pub handshake_timeout: Duration,
    /// An admin connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            http: None,
            grpc: None,
            token: None,
            token_file: None,
            insecure: false,
            max_connections: 64,
            max_connections_per_client: 32,
            hosts: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl Admin {
    /// Whether `name` (lower-case, without port or trailing dot) is one
    /// of `hosts`.
    pub fn answers_host(&self, name: &str) -> bool {
        self.hosts
            .iter()
            .any(|pattern| weir_wire::name::sni_matches(pattern, name))
    }
}

/// A secret read from `admin.token_file`; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(secret: String) -> Self {
        Token(secret)
    }

    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// `[state]`: where operator actions and transition history persist.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The SQLite file; `None` = nothing persists across restarts.
    pub path: Option<PathBuf>,
    /// Transitions kept per backend (in memory and in the file).
    pub history: usize,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    /// Worker threads; 0 means one per CPU this process may run on.
    pub worker_threads: usize,
    /// Relay bytes with splice(2) through a pipe instead of a user-space copy.
    pub zero_copy: bool,
}

impl Runtime {
    /// The worker threads weir runs: `worker_threads`, or for 0 one per CPU
    /// this process may run on (at least one).
    pub fn threads(&self) -> usize {
        match self.worker_threads {
            0 => cpus(),
            n => n,
        }
    }
}

/// The CPUs this process may run on (at least one): the threads of
/// `worker_threads = 0`.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `weir=debug,info`; checked.
    pub level: String,
    pub access_log: bool,
    /// Access-log lines of refused connections written per second and
    /// listener at most (0: all); the rest are counted.
    pub refusals_per_second: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[[listeners]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub bind: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub max_connections: u32,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Time a client has to send its PROXY header and TLS ClientHello.
    pub handshake_timeout: Duration,
    /// `proxy_protocol = { accept = true, trusted = [...] }`; `None` when not
    /// accepted.
    pub proxy_protocol: Option<ProxyAccept>,
    /// In order; at most one route without a match (the catch-all), and it is last.
    pub routes: Vec<Route>,
    /// `[firewall]` and the listener's own `firewall` together; `None` when
    /// neither says anything.
    pub firewall: Option<Firewall>,
    /// `protocol = "udp"`: its flow settings; `None` for TCP.
    pub udp: Option<UdpListener>,
}

/// Who may connect to a listener, and how much: the global `[firewall]`
/// and the listener's own `firewall` together (lists joined, `per_client`
/// keys of the listener's own table winning).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Firewall {
    /// Refused sources, inline and from `deny_files`.
    pub deny: Vec<IpNet>,
    /// With an allow list (`allow` or `allow_files` given), every source not
    /// on it is refused; `deny` still wins.
    pub allow: Option<Vec<IpNet>>,
    /// `countries`: sources refused or let in by the country a MaxMind-format
    /// database gives their address.
    pub countries: Option<Countries>,
    pub per_client: Option<PerClient>,
}

/// `countries = { database, deny, allow }`. Codes are ISO 3166-1 alpha-2,
/// upper case; `--` stands for an address the database has no country for.
#[derive(Debug, Clone, PartialEq)]
pub struct Countries {
    pub database: GeoDatabase,
    pub deny: Vec<String>,
    /// With it, only these countries are let in (`deny` still wins).
    pub allow: Option<Vec<String>>,
}

/// A MaxMind-format database, read and checked when the config is loaded.
#[derive(Clone)]
pub struct GeoDatabase {
    pub path: std::path::PathBuf,
    pub reader: std::sync::Arc<maxminddb::Reader<Vec<u8>>>,
    /// Of the file's bytes: a reload that reads a new file is a change.
    pub digest: u64,
}

impl PartialEq for GeoDatabase {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.digest == other.digest
    }
}

impl std::fmt::Debug for GeoDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.reader.metadata();
        f.debug_struct("GeoDatabase")
            .field("path", &self.path)
            .field("database_type", &m.database_type)
            .field("build_epoch", &m.build_epoch)
            .finish_non_exhaustive()
    }
}

/// `per_client`: limits per client address, or per network of
/// `ipv4_prefix` / `ipv6_prefix` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerClient {
    /// New connections per second (a token bucket refilled at this rate).
    pub rate: Option<u32>,
    /// Connections the bucket holds: a burst allowed after a quiet time.
    pub burst: u32,
    /// Connections open at once.
    pub concurrent: Option<u32>,
    /// HTTP requests per second (l7 routes), answered 429 beyond.
    pub requests: Option<u32>,
    pub requests_burst: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Clients tracked at most; the least recently seen idle one makes room.
    pub max_tracked: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    /// Datagrams, relayed per flow (`[listeners] protocol = "udp"`).
    Udp,
}

/// What a `protocol = "udp"` listener adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpListener {
    /// The datagrams the backend answers each client datagram with: a flow
    /// ends once it relayed that many for every datagram it carried (nginx
    /// `proxy_responses`; 1 for DNS); `None`: only by `idle_timeout`.
    pub responses: Option<u32>,
    /// Flows open at once at most; a datagram that would start another is
    /// dropped and counted.
    pub max_flows: u32,
}

/// `[[listeners.routes]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: Match,
    /// Speak TLS to the backend (`backend_tls`).
    pub backend_tls: Option<BackendTls>,
    /// What handles the connections this route takes.
    pub mode: RouteMode,
}

impl Route {
    /// Indices (into [`Config::pools`]) of the pools this route sends to, in
    /// the order of its rules, without repeats.
    pub fn pool_indices(&self) -> Vec<usize> {
        match &self.mode {
            RouteMode::L4(l4) => vec![l4.pool_index],
            RouteMode::L7(http) => {
                let mut out: Vec<usize> = Vec::with_capacity(http.rules.len());
                for i in http.rules.iter().filter_map(|r| r.pool_index) {
                    if !out.contains(&i) {
                        out.push(i);
                    }
                }
                out
            }
        }
    }
}

/// `mode`: how a route's connections are handled.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteMode {
    /// `mode = "l4"` (the default): relay the bytes to a backend, untouched.
    L4(L4Route),
    /// `mode = "l7"`: serve HTTP and proxy each request by the route's rules.
    L7(Box<HttpRoute>),
}

/// The settings of an l4 route.
#[derive(Debug, Clone, PartialEq)]
pub struct L4Route {
    /// Name of the pool this route sends to.
    pub pool: String,
    /// Index of that pool in [`Config::pools`].
    pub pool_index: usize,
    /// PROXY protocol header sent to the backend before any data.
    pub send_proxy_protocol: ProxyVersion,
}

/// The settings of an l7 route: HTTP/1.1 and HTTP/2 (h2c with prior
/// knowledge) from clients, each request sent to the pool of its first
/// matching rule.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRoute {
    /// Terminate TLS with these certificates; `None`: HTTP in clear text.
    pub tls: Option<ServerTls>,
    /// In order; at most one rule without a match (the catch-all), and it is last.
    pub rules: Vec<HttpRule>,
    pub forwarded: Forwarded,
    pub timeouts: HttpTimeouts,
    /// The largest request header (request line and fields) accepted, in bytes.
    pub max_header_bytes: u32,
    /// Requests an HTTP/2 client connection may have under way at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// The largest request body accepted, in bytes; `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// What an encoded slash (`%2F`, `%5C`) in a path gets.
    pub encoded_slashes: EncodedSlashes,
    /// Checked first for every request, before the matched rule's own.
    pub policies: Vec<HttpPolicy>,
    /// Applied to every request forwarded, before the matched rule's.
    pub request_headers: HeaderRules,
    /// Applied to every backend response, before the matched rule's.
    pub response_headers: HeaderRules,
    /// Forward authentication for every request (a rule's own replaces it).
    pub auth: Option<Auth>,
}

/// `auth = { url, ... }`: every request is first put to an authentication
/// service; 2xx lets it through, anything else is the client's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// `http://host:port/path`.
    pub url: String,
    /// Host (a name or an IP) and port of the service, and the path asked.
    pub host: String,
    pub port: u16,
    pub path: String,
    /// The service's answer must come within this.
    pub timeout: Duration,
    /// Request headers sent to the service, lower-case; they also key the
    /// decision cache.
    pub headers: Vec<String>,
    /// Headers of the service's 2xx answer copied into the upstream request.
    pub copy_headers: Vec<String>,
    /// What a request gets when the service fails, times out, or its
    /// breaker is open.
    pub failure: AuthFailure,
    /// How long a decision is reused, by kind; zero: not cached.
    pub allowed_ttl: Duration,
    pub denied_ttl: Duration,
    /// Decisions kept at most.
    pub cache_size: u32,
    /// Consecutive failures that open the breaker; 0: no breaker.
    pub breaker_failures: u32,
    /// How long an open breaker stays open before one call probes.
    pub breaker_open: Duration,
    /// Calls to the service under way at once; a request waits for one
    /// within `timeout`, else it is refused (503, reason `auth_busy`)
    /// whatever `failure` says.
    pub max_calls: u32,
}

/// `failure`: what a request gets when the authentication service cannot
/// decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// 503 (reason `auth_unavailable`).
    Deny,
    /// Let the request through, unauthenticated.
    Allow,
}

/// `encoded_slashes`: what a `%2F` or `%5C` in a request's path gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlashes {
    /// 400: a backend that decodes it would see another path than the one
    /// the rules and policies saw.
    #[default]
    Reject,
    /// Forwarded encoded (upper-case); rules and policies see it encoded.
    Keep,
}

/// One request policy of an l7 route or rule.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpPolicy {
    pub name: String,
    pub check: PolicyCheck,
    /// The status of a refused request (403 by default).
    pub status: u16,
    /// Its body; `None`: a line naming the policy.
    pub body: Option<String>,
}

/// What a policy checks.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyCheck {
    /// Refuse a request whose User-Agent contains one of these (lower-case;
    /// compared without case) or matches the pattern. A request without a
    /// User-Agent passes.
    BlockUserAgent {
        contains: Vec<String>,
        pattern: Option<Pattern>,
    },
    /// Refuse a request without this header (lower-case name), or whose
    /// value is not `value` / does not match `pattern`.
    RequireHeader {
        name: String,
        value: Option<String>,
        pattern: Option<Pattern>,
    },
    /// Refuse a request for which every given condition holds. Paths are
    /// compared without case: a case-insensitive backend cannot be reached
    /// through `/ADMIN` past a deny of `/admin`.
    Deny(PolicyMatch),
    /// Refuse a request for which a given condition does not hold.
    Allow(PolicyMatch),
}

/// The conditions of a `deny` or `allow` policy; an empty list is no
/// condition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicyMatch {
    pub methods: Vec<String>,
    /// Any of these prefixes of the normalised path.
    pub path_prefix: Vec<String>,
    pub path_regex: Option<Pattern>,
    /// Lower-case host names, exact or `*.example.com`.
    pub host: Vec<String>,
    /// The client's address (the PROXY header's when trusted).
    pub source: Vec<IpNet>,
}

/// A regular expression of the config (Rust `regex` syntax, linear time).
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// `tls = { certificates, client_ca }`: the certificates an l7 route
/// terminates TLS with, chosen by the client's SNI; the first is the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// (certificate chain, private key) PEM files, in order.
    pub certificates: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// Ask clients for a certificate and verify it against this PEM bundle.
    pub client_ca: Option<std::path::PathBuf>,
}

/// `[[listeners.routes.http]]`: requests that match go to `pool`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRule {
    pub name: String,
    pub matcher: HttpMatch,
    /// The pool the rule's requests go to; `None` for a redirect.
    pub pool: Option<String>,
    /// Index of that pool in [`Config::pools`].
    pub pool_index: Option<usize>,
    /// Answer the rule's requests with a redirect instead of a backend's
    /// answer (exactly one of this and `pool`).
    pub redirect: Option<Redirect>,
    /// Taken off the front of the path the backend gets, at a segment's end.
    pub strip_prefix: Option<String>,
    /// Put in front of the path the backend gets (after `strip_prefix`).
    pub add_prefix: Option<String>,
    /// Checked after the route's policies, for the requests this rule takes.
    pub policies: Vec<HttpPolicy>,
    /// This rule's forward authentication, instead of the route's.
    pub auth: Option<Auth>,
    /// Applied after the route's, to the requests this rule takes.
    pub request_headers: HeaderRules,
    /// Applied after the route's, to their backends' responses.
    pub response_headers: HeaderRules,
}

/// `redirect = { scheme, host, port, status }`: the request's own URL with
/// these parts replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    /// `http` or `https`; `None`: the request's.
    pub scheme: Option<String>,
    /// Lower-case; `None`: the request's host, without its port.
    pub host: Option<String>,
    /// `None`: the scheme's own (no port in the URL).
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// `request_headers` / `response_headers`: what is done to a message's
/// headers, in this order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderRules {
    /// Lower-case names: every field of each is removed.
    pub remove: Vec<String>,
    /// (lower-case name, value): replaces every field of that name. A value
    /// is a `weir_wire::template`: `${name}` variables, `$$` for a `$`.
    pub set: Vec<(String, String)>,
    /// (lower-case name, value): one more field, after those that came.
    pub add: Vec<(String, String)>,
    /// `response_headers` only: also on weir's own answers (its errors,
    /// refusals and redirects), not only on the backends' responses.
    pub always: bool,
}

impl HeaderRules {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// `match = { host, path_prefix, methods, headers }` of an HTTP rule: every
/// condition given must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpMatch {
    /// Lower-case host names: exact or a one-label wildcard (`*.example.com`).
    pub host: Vec<String>,
    /// The path is one of these (byte for byte).
    pub path: Vec<String>,
    /// The path must start with this (byte for byte).
    pub path_prefix: Option<String>,
    /// The path must match this (anywhere, unless anchored).
    pub path_regex: Option<Pattern>,
    /// Upper-case method names; matches any of them.
    pub methods: Vec<String>,
    /// (lower-case name, exact value) pairs; each must be present.
    pub headers: Vec<(String, String)>,
    /// The client's address is in one of these.
    pub source: Vec<IpNet>,
    /// (name, value) pairs of the query, both decoded; each must be there.
    pub query: Vec<(String, String)>,
}

impl HttpMatch {
    /// True when this rule has no conditions (the catch-all).
    pub fn is_catch_all(&self) -> bool {
        self.host.is_empty()
            && self.path.is_empty()
            && self.path_prefix.is_none()
            && self.path_regex.is_none()
            && self.methods.is_empty()
            && self.headers.is_empty()
            && self.source.is_empty()
            && self.query.is_empty()
    }
}

/// `forwarded = { trusted, rfc7239 }`: who may send `X-Forwarded-*` headers
/// weir keeps, and whether to set the standard `Forwarded` header too.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Forwarded {
    pub trusted: Vec<IpNet>,
    pub rfc7239: bool,
}

/// `timeouts = { ... }` of an l7 route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// A request's whole header must arrive within this.
    pub request_header: Duration,
    /// A client connection waiting for its next request is closed after this.
    pub idle: Duration,
    /// From the request sent to the backend's response header.
    pub upstream_response: Duration,
    /// Longest gap between two pieces of a backend's response body.
    pub upstream_idle: Duration,
    /// The longest a request may take, from its head to the last byte of
    /// its answer from the backend, retries included; `None` (`"off"`, the
    /// default): no bound but the others.
    pub request: Option<Duration>,
    /// Longest gap between two pieces of a client's request body.
    pub request_body: Duration,
    /// An unused pooled connection to a backend is closed after this.
    pub upstream_keepalive: Duration,
    /// An HTTP/2 connection to a backend silent for this long is sent a
    /// PING, and closed when the answer does not come within it either;
    /// `None` (`"off"`, the default): no PINGs.
    pub upstream_ping: Option<Duration>,
    /// A WebSocket (an upgraded connection) with no byte either way for
    /// this long is closed.
    pub websocket_idle: Duration,
    /// A client that takes none of a response's bytes for this long is
    /// disconnected.
    pub send: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            request_header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            upstream_response: Duration::from_secs(60),
            upstream_idle: Duration::from_secs(300),
            request: None,
            request_body: Duration::from_secs(60),
            upstream_keepalive: Duration::from_secs(4),
            upstream_ping: None,
            websocket_idle: Duration::from_secs(3600),
            send: Duration::from_secs(60),
        }
    }
}

/// `backend_tls = { sni, verify, ca, cert, key }`: weir opens TLS to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    /// Name sent as SNI and verified; defaults to the backend's IP.
    pub sni: Option<String>,
    /// Verify the backend's certificate (default true).
    pub verify: bool,
    /// Verify against this CA bundle (PEM) instead of the system roots.
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate chain and its key (PEM), for backends that ask.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Accepting the PROXY protocol: sources in `trusted` must send a header (v1 or
/// v2); any other source is served by its socket address, and a PROXY header
/// from it is refused.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProxyAccept {
    pub trusted: Vec<IpNet>,
}

impl ProxyAccept {
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// `send_proxy_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProxyVersion {
    #[default]
    Off,
    V1,
    V2,
}

/// `match = { source = [...], sni = [...], alpn = [...] }`: every non-empty list
/// must match (AND); an empty list matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Match {
    pub source: Vec<IpNet>,
    /// Lower-case server names: exact (`db.example.com`) or a one-label wildcard
    /// (`*.example.com`).
    pub sni: Vec<String>,
    /// ALPN protocol names; matches when the client offers any of them.
    pub alpn: Vec<String>,
}

impl Match {
    /// True when this match has no conditions (a catch-all route).
    pub fn is_catch_all(&self) -> bool {
        self.source.is_empty() && self.sni.is_empty() && self.alpn.is_empty()
    }

    /// True when matching needs the client's TLS ClientHello.
    pub fn needs_client_hello(&self) -> bool {
        !self.sni.is_empty() || !self.alpn.is_empty()
    }

    /// Whether `name` (a lower-case SNI) matches one of the `sni` patterns
    /// (a wildcard matches one label exactly).
    pub fn sni_matches(&self, name: &str) -> bool {
        self.sni
            .iter()
            .any(|p| weir_wire::name::sni_matches(p, name))
    }
}

/// `[[pools]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub balance: Policy,
    pub hash_key: HashKey,
    pub connect_timeout: Duration,
    /// Other backends tried when a connect fails; `None`: every other
    /// serving backend of the active tier, once each.
    pub retries: Option<u32>,
    /// Statuses (400..=599, sorted) on which l7 routes try an idempotent,
    /// bodiless request again on another backend, within `retries`.
    pub retry_on_status: Vec<u16>,
    /// Retries in flight at most across the pool; `None`: no bound but
    /// `retries` per request.
    pub retry_budget: Option<RetryBudget>,
    /// Sessions of l7 routes kept on one backend by a cookie.
    pub sticky: Option<Sticky>,
    /// How long connections to a drained or demoted backend may live.
    pub drain_timeout: Duration,
    /// Close a backend's established connections when it goes down.
    pub close_on_down: bool,
    /// How l7 routes speak to the backends.
    pub protocol: HttpProtocol,
    pub health: Health,
    /// Outlier detection from the responses of l7 routes.
    pub outlier: Option<Outlier>,
    /// Backends from DNS, besides the static `backends`.
    pub discover: Option<Discover>,
    /// A backend that comes back (down to up, or re-enabled) ramps its weight
    /// from 5% to full over this long.
    pub slow_start: Option<std::time::Duration>,
    /// The connection limit of each backend without its own
    /// `max_connections` (discovered and runtime backends included).
    pub max_connections_per_backend: Option<u32>,
    /// Connections (and l7 requests) that wait at most for a backend with
    /// room when every serving backend is at its limit; beyond, `queue_full`.
    pub max_queue: u32,
    /// How long one waits in that queue at most; then `queue_timeout`.
    pub queue_timeout: Duration,
    pub backends: Vec<Backend>,
}

/// `retry_budget = { percent, min_concurrent }` (Envoy's retry budgets):
/// the requests and connections of a pool trying another backend at once
/// stay within `percent` of those in flight, or `min_concurrent`, whichever
/// is more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    pub percent: u32,
    pub min_concurrent: u32,
}

/// `sticky = { cookie, ... }`: the cookie that keeps a client's requests on
/// the backend that first answered it (HAProxy `cookie ... insert`,
/// Traefik's sticky cookie).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    /// The cookie's name (an RFC 6265 token).
    pub cookie: String,
    /// `Max-Age`; `None`: a session cookie, gone when the browser closes.
    pub max_age: Option<Duration>,
    pub path: String,
    pub domain: Option<String>,
    /// `Secure`: `None` when the client came over HTTPS.
    pub secure: Option<bool>,
    pub http_only: bool,
    pub same_site: SameSite,
}

/// A cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// `discover = { ... }`: the pool's backends from DNS records, refreshed as
/// their TTLs say (within `min_interval..=max_interval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discover {
    pub query: DiscoverQuery,
    /// The DNS server to ask; `None`: the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    pub min_interval: Duration,
    pub max_interval: Duration,
    /// One resolution (with its retries) at most.
    pub timeout: Duration,
    /// How long an empty answer (or a name that no longer exists) is
    /// distrusted: the last good set serves meanwhile. A failed resolution
    /// never empties the set.
    pub hold: Duration,
    /// Tier and weight of `name` records (SRV records carry their own).
    pub tier: u32,
    pub weight: u32,
}

/// What `discover` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverQuery {
    /// SRV records: each target's addresses at the record's port, the
    /// priority as tier and the weight as weight (0: drained).
    Srv(String),
    /// A and AAAA records of `name`, each address at `port`.
    Name { name: String, port: u16 },
}

impl std::fmt::Display for DiscoverQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoverQuery::Srv(name) => write!(f, "SRV {name}"),
            DiscoverQuery::Name { name, port } => write!(f, "A/AAAA {name} port {port}"),
        }
    }
}

/// `outlier = { ... }`: a backend whose answers to l7 routes fail
/// (`5xx`, or a failed connect) `consecutive_failures` times in a row is
/// ejected: no new requests for `base_ejection` times the number of its
/// recent ejections, at most `max_ejection`; never more than
/// `max_ejected_percent` of the pool's backends at once (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

/// `protocol` of a pool: what l7 routes speak to its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpProtocol {
    /// HTTP/1.1, with keep-alive (over TLS with `backend_tls`).
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN h2); needs `backend_tls` on the route.
    H2,
    /// HTTP/2 in clear text, with prior knowledge.
    H2c,
}

impl HttpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpProtocol::Http1 => "http1",
            HttpProtocol::H2 => "h2",
            HttpProtocol::H2c => "h2c",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    SourceIp,
    SourceAddr,
    /// The server name of a TLS ClientHello (l4 routes of TCP listeners):
    /// one backend per name, whoever connects. Clients without SNI hash by
    /// source IP.
    Sni,
}

/// `[pools.health]`: active health checking of the pool's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub check: Check,
    /// Time between two probes of a backend whose state is settled.
    pub interval: Duration,
    /// Time between probes while a backend is changing state (counting rise or
    /// fall) or not decided yet (HAProxy `fastinter`).
    pub fast_interval: Duration,
    /// A probe that has not answered by then fails.
    pub timeout: Duration,
    /// Consecutive successes that bring a backend up.
    pub rise: u32,
    /// Consecutive failures that take a backend down.
    pub fall: u32,
    /// Probe this port instead of the traffic port (a backend's `check_port` wins).
    pub port: Option<u16>,
    /// Without active checks: how long a backend that failed connects took
    /// down stays down before traffic tries it again.
    pub passive_timeout: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            check: Check::None,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            port: None,
            passive_timeout: Duration::from_secs(10),
        }
    }
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// No active checks: every backend counts as up.
    None,
    /// A TCP connect.
    Tcp,
    /// An HTTP GET (HTTP/1.1, optionally over TLS).
    Http(HttpCheck),
    /// grpc.health.v1 Health/Check, over h2c or TLS.
    Grpc(GrpcCheck),
    /// A DNS query over UDP, answered with the expected response code.
    Dns(DnsCheck),
    /// A datagram sent, an answer (containing `expect`) received.
    Udp(UdpCheck),
}

impl Check {
    /// The `type` as written in the file (`none`, `tcp`, `http`, `grpc`); also
    /// the `type` label of the health-check metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Check::None => "none",
            Check::Tcp => "tcp",
            Check::Http(_) => "http",
            Check::Grpc(_) => "grpc",
            Check::Dns(_) => "dns",
            Check::Udp(_) => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpCheck {
    /// Request path, starting with `/`.
    pub path: String,
    /// Host header; defaults to the probed address.
    pub host: Option<String>,
    pub expect_status: StatusMatch,
    /// The body must contain each of these.
    pub expect_body: Vec<String>,
    /// Fields of the JSON body that must have these values.
    pub expect_json: Vec<JsonField>,
    /// An answer that does not pass but matches this marks the backend
    /// `standby`: healthy, not eligible (a database replica in a pool of
    /// primaries), rather than down.
    pub standby: Option<Box<Standby>>,
    /// `GET` unless set (`HEAD`, `POST`, ...).
    pub method: String,
    /// Extra request headers, in name order.
    pub headers: Vec<(String, String)>,
    /// A request body, sent with its Content-Length.
    pub body: Option<String>,
    /// Most bytes of an answer read (status line, headers and body); a
    /// larger one fails the probe.
    pub max_response: usize,
    /// Redirects (301, 302, 303, 307, 308) followed to the same server, at
    /// most this many; 0 judges the redirect itself.
    pub follow_redirects: u32,
    /// `https = true`: probe over TLS.
    pub tls: Option<ProbeTls>,
}

/// One condition of `expect_json`: the value at `path` (field names into
/// nested objects, `a.b`) equals `value`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonField {
    pub path: Vec<String>,
    pub value: JsonValue,
}

impl std::fmt::Display for JsonField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}", self.path.join("."), self.value)
    }
}

/// A value `expect_json` compares with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JsonValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl std::fmt::Display for JsonValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonValue::Str(s) => write!(f, "{s:?}"),
            JsonValue::Int(n) => write!(f, "{n}"),
            JsonValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// `standby = { status, body, json }`: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Standby {
    pub status: Option<StatusMatch>,
    pub body: Vec<String>,
    pub json: Vec<JsonField>,
}

/// `max_response` of an HTTP check when not set.
pub const DEFAULT_MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrpcCheck {
    /// The service name asked about; empty = the server as a whole.
    pub service: String,
    /// `https = true`: TLS (with ALPN h2); otherwise h2c.
    pub tls: Option<ProbeTls>,
}

/// `type = "dns"`: a recursive query over UDP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsCheck {
    /// The name asked about (`query`).
    pub name: String,
    /// Its record type (`query_type`), as a number: 1 A, 28 AAAA...
    pub qtype: u16,
    /// The response code that passes (`expect_rcode`): 0 NOERROR...
    pub rcode: u16,
}

/// `type = "udp"`: a datagram and the answer it should get.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UdpCheck {
    /// The datagram sent (`send`).
    pub send: Vec<u8>,
    /// Bytes the answer must contain (`expect`); `None`: any answer passes.
    pub expect: Option<Vec<u8>>,
}

/// TLS settings of a probe.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct ProbeTls {
    /// Accept any certificate (self-signed backends).
    pub skip_verify: bool,
    /// Verify against this CA bundle (PEM) instead of the system roots.
    pub ca: Option<std::path::PathBuf>,
    /// SNI / name to verify; defaults to `host`, else the probed IP.
    pub server_name: Option<String>,
}

/// `expect_status`: a set of inclusive status ranges ("200", "2xx", "200-299",
/// "200,204" and combinations).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusMatch {
    pub ranges: Vec<(u16, u16)>,
}

impl StatusMatch {
    pub fn matches(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// Written back in the file's syntax: `200`, `2xx`, `200-204`, comma-separated.
impl std::fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else if lo % 100 == 0 && hi == lo + 99 {
                write!(f, "{}xx", lo / 100)?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// `[[pools.backends]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Unique within the pool; defaults to `address` as written.
    pub name: String,
    /// Where it listens: an IP address, or a host name the runtime resolves.
    pub address: BackendAddress,
    /// 0..=1000; 0 is never picked.
    pub weight: u32,
    /// Lower tiers serve first.
    pub tier: u32,
    /// false: a static backend, never probed, always up.
    pub health: bool,
    /// Probe this port on this backend (overrides `health.port`).
    pub check_port: Option<u16>,
    /// Connections (and l7 requests in flight) at once at most; `None`: the
    /// pool's `max_connections_per_backend`, else no limit.
    pub max_connections: Option<u32>,
    /// `check = { ... }`: this backend's HTTP check, the pool's with these
    /// keys changed (its path and expectations); `None`: the pool's.
    pub check: Option<HttpCheck>,
}

impl Backend {
    /// The port probes of this backend go to: its own `check_port`, else the
    /// pool's `health.port`, else the traffic port of `address`.
    pub fn probe_port(&self, health: &Health) -> u16 {
        self.check_port
            .or(health.port)
            .unwrap_or(self.address.port())
    }
}

/// A backend's `address`: `ip:port`, or `host:port` with a name that the
/// runtime resolves when it builds (or reloads) its snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddress {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl BackendAddress {
    pub fn port(&self) -> u16 {
        match self {
            Self::Ip(a) => a.port(),
            Self::Name { port, .. } => *port,
        }
    }
}

/// As written in the file: `10.0.0.1:5432`, `[::1]:5432`, `db.internal:5432`.
impl std::fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}
