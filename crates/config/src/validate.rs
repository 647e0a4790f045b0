//! Stage two: raw serde types -> the validated model.
//!
//! Every check records a [`Problem`] and carries on with a placeholder value,
//! so one run reports every mistake in the file; the half-built [`Config`] is
//! thrown away if anything was recorded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::error::{ConfigError, Problem};
use crate::model::{
    Admin, Backend, BackendTls, Balance, Check, Config, GrpcCheck, HashKey, Health, HttpCheck,
    Listener, Log, LogFormat, Match, Pool, ProbeTls, Protocol, ProxyAccept, ProxyVersion, Route,
    Runtime, State, StatusMatch, Token,
};
use crate::raw::{
    Int, RawAdmin, RawBackend, RawBackendTls, RawConfig, RawHealth, RawListener, RawLog, RawPool,
    RawRoute, RawRuntime, RawState,
};

/// Turns a backend `address` (host:port) into a socket address.
pub(crate) type Resolve<'a> = &'a dyn Fn(&str) -> Result<SocketAddr, String>;

const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_RETRIES: u32 = 2;
const MAX_RETRIES: i64 = 100;
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_WEIGHT: u32 = 1;
const MAX_RISE_FALL: i64 = 100;
const DEFAULT_HTTP_PATH: &str = "/";
/// `expect_status = "2xx"`.
const DEFAULT_EXPECT_STATUS: (u16, u16) = (200, 299);
const MAX_WEIGHT: i64 = crate::model::MAX_WEIGHT as i64;
const DEFAULT_LOG_LEVEL: &str = "info";
/// Transitions kept per backend, in memory and in the state file.
const DEFAULT_HISTORY: usize = 64;

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp)];
const PROXY_VERSIONS: &[(&str, ProxyVersion)] = &[
    ("off", ProxyVersion::Off),
    ("v1", ProxyVersion::V1),
    ("v2", ProxyVersion::V2),
];
const BALANCES: &[(&str, Balance)] = &[
    ("round_robin", Balance::RoundRobin),
    ("least_conn", Balance::LeastConn),
    ("random", Balance::Random),
    ("first", Balance::First),
    ("maglev", Balance::Maglev),
];
const HASH_KEYS: &[(&str, HashKey)] = &[
    ("source_ip", HashKey::SourceIp),
    ("source_addr", HashKey::SourceAddr),
];
const HEALTH_TYPES: &[(&str, CheckType)] = &[
    ("none", CheckType::None),
    ("tcp", CheckType::Tcp),
    ("http", CheckType::Http),
    ("grpc", CheckType::Grpc),
];

/// `[pools.health] type`, before its keys are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckType {
    None,
    Tcp,
    Http,
    Grpc,
}

impl CheckType {
    fn name(self) -> &'static str {
        HEALTH_TYPES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(name, _)| name)
    }
}

const HTTP: &[CheckType] = &[CheckType::Http];
const HTTP_GRPC: &[CheckType] = &[CheckType::Http, CheckType::Grpc];
const GRPC: &[CheckType] = &[CheckType::Grpc];

/// Stands in for a value that failed a check; never reaches a returned Config.
const PLACEHOLDER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

pub(crate) fn validate(raw: RawConfig, resolve: Resolve<'_>) -> Result<Config, ConfigError> {
    let mut cx = Checker {
        problems: Vec::new(),
    };
    let admin = cx.admin(raw.admin);
    let runtime = cx.runtime(&raw.runtime);
    let state = cx.state(raw.state);
    let log = cx.log(raw.log);

    // Routes refer to pools by index, so index the pool names up front; the
    // first of two pools with one name wins (the second is an error below).
    let mut pool_index: HashMap<String, usize> = HashMap::new();
    for (i, pool) in raw.pools.iter().enumerate() {
        pool_index.entry(pool.name.clone()).or_insert(i);
    }

    // In file-section order: listeners (and their binds), then pools.
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    let mut listener_index: HashMap<String, usize> = HashMap::new();
    for (i, l) in raw.listeners.into_iter().enumerate() {
        let listener = cx.listener(&format!("listeners[{i}]"), l, &pool_index);
        if let Some(first) = listener_index.get(&listener.name) {
            cx.push(
                format!("listeners[{i}].name"),
                format!(
                    "duplicate listener name {:?} (also listeners[{first}])",
                    listener.name
                ),
            );
        } else {
            listener_index.insert(listener.name.clone(), i);
        }
        listeners.push(listener);
    }
    cx.check_binds(&admin, &listeners);

    let mut pools = Vec::with_capacity(raw.pools.len());
    for (i, p) in raw.pools.into_iter().enumerate() {
        let pool = cx.pool(&format!("pools[{i}]"), p, resolve);
        if let Some(&first) = pool_index.get(&pool.name).filter(|&&first| first != i) {
            cx.push(
                format!("pools[{i}].name"),
                format!("duplicate pool name {:?} (also pools[{first}])", pool.name),
            );
        }
        pools.push(pool);
    }

    if cx.problems.is_empty() {
        Ok(Config {
            admin,
            runtime,
            state,
            log,
            listeners,
            pools,
        })
    } else {
        Err(ConfigError {
            problems: cx.problems,
        })
    }
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn admin(&mut self, raw: RawAdmin) -> Admin {
        let http = raw.http.map(|s| self.bind_addr("admin.http", &s));
        let grpc = raw.grpc.map(|s| self.bind_addr("admin.grpc", &s));
        let insecure = raw.insecure.unwrap_or(false);
        let token_file = raw.token_file.map(PathBuf::from);
        let token = token_file
            .as_ref()
            .and_then(|f| self.token("admin.token_file", f));
        if token_file.is_none() && !insecure {
            // Anyone who can reach a non-loopback admin port could drain every
            // backend: that needs a token, or an explicit opt-out.
            for (path, addr) in [("admin.http", http), ("admin.grpc", grpc)] {
                if let Some(addr) = addr.filter(|a| !a.ip().is_loopback() && *a != PLACEHOLDER_ADDR)
                {
                    self.push(
                        path,
                        format!(
                            "{addr} is not a loopback address: set admin.token_file so that \
                             changes need a token, or write `insecure = true` in [admin]"
                        ),
                    );
                }
            }
        }
        Admin {
            http,
            grpc,
            token,
            token_file,
            insecure,
        }
    }

    /// The token file holds one secret; surrounding whitespace (a trailing
    /// newline) is not part of it.
    fn token(&mut self, path: &str, file: &Path) -> Option<Token> {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let secret = text.trim();
                if secret.is_empty() {
                    self.push(path, format!("{:?} is empty", file.display().to_string()));
                    None
                } else if secret.len() < 16 {
                    self.push(
                        path,
                        format!(
                            "the token in {:?} is {} characters long; use at least 16 \
                             (e.g. `openssl rand -hex 32`)",
                            file.display().to_string(),
                            secret.len()
                        ),
                    );
                    None
                } else {
                    Some(Token::new(secret.to_owned()))
                }
            }
            Err(e) => {
                let hint = relative_hint(file);
                self.push(
                    path,
                    format!("cannot read {:?}: {e}{hint}", file.display().to_string()),
                );
                None
            }
        }
    }

    fn state(&mut self, raw: RawState) -> State {
        let path = raw.path.map(PathBuf::from);
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            self.push(
                "state.path",
                "must not be empty (leave it out to keep no state)",
            );
        }
        State {
            path,
            history: self.int(
                "state.history",
                raw.history,
                DEFAULT_HISTORY,
                1,
                Some(10_000),
            ),
        }
    }

    fn runtime(&mut self, raw: &RawRuntime) -> Runtime {
        Runtime {
            worker_threads: self.int("runtime.worker_threads", raw.worker_threads, 0, 0, None),
            // Measured on loopback: the buffered copy relays faster (docs/benchmarks.md).
            zero_copy: raw.zero_copy.unwrap_or(false),
        }
    }

    fn log(&mut self, raw: RawLog) -> Log {
        let format = self.choice("log.format", raw.format, LogFormat::Text, LOG_FORMATS);
        let level = raw.level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
        if level.trim().is_empty() {
            self.push("log.level", "must not be empty (e.g. \"info\")");
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            self.push(
                "log.level",
                format!("{level:?} is not a valid log filter: {e}"),
            );
        } else if let Some(word) = bare_non_level(&level) {
            // EnvFilter reads a bare word as a target name, so a misspelt level
            // would silently turn logging off; refuse it instead.
            self.push(
                "log.level",
                format!(
                    "{word:?} is not a level (trace, debug, info, warn, error, off); \
                     to set the level of one module write \"{word}=debug\""
                ),
            );
        }
        Log {
            format,
            level,
            access_log: raw.access_log.unwrap_or(true),
        }
    }

    fn listener(
        &mut self,
        path: &str,
        raw: RawListener,
        pools: &HashMap<String, usize>,
    ) -> Listener {
        self.name(&format!("{path}.name"), &raw.name);
        if raw.bind.0.is_empty() {
            self.push(format!("{path}.bind"), "at least one address is needed");
        }
        let bind = raw
            .bind
            .0
            .iter()
            .enumerate()
            .map(|(i, s)| self.bind_addr(&format!("{path}.bind[{i}]"), s))
            .collect();
        let protocol = self.choice(
            &format!("{path}.protocol"),
            raw.protocol,
            Protocol::Tcp,
            PROTOCOLS,
        );
        let max_connections = self.int(
            &format!("{path}.max_connections"),
            raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            1,
            None,
        );
        let idle_timeout = self.timeout(
            &format!("{path}.idle_timeout"),
            raw.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        );
        let shutdown_timeout = self.timeout(
            &format!("{path}.shutdown_timeout"),
            raw.shutdown_timeout.as_deref(),
            DEFAULT_SHUTDOWN_TIMEOUT,
        );
        let handshake_timeout = self.timeout(
            &format!("{path}.handshake_timeout"),
            raw.handshake_timeout.as_deref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let proxy_protocol = raw.proxy_protocol.and_then(|pp| {
            let trusted: Vec<IpNet> = pp
                .trusted
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match parse_source(s) {
                    Ok(net) => Some(net),
                    Err(msg) => {
                        self.push(format!("{path}.proxy_protocol.trusted[{i}]"), msg);
                        None
                    }
                })
                .collect();
            if pp.accept && pp.trusted.is_empty() {
                self.push(
                    format!("{path}.proxy_protocol.trusted"),
                    "list the sources allowed to send a PROXY header (e.g. [\"10.0.0.0/8\"]); \
                     accepting it from anyone would let any client choose its address",
                );
            }
            pp.accept.then_some(ProxyAccept { trusted })
        });

        if raw.routes.is_empty() {
            self.push(
                format!("{path}.routes"),
                "a listener needs at least one route ([[listeners.routes]])",
            );
        }
        let route_count = raw.routes.len();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut routes = Vec::with_capacity(route_count);
        for (i, r) in raw.routes.into_iter().enumerate() {
            let route_path = format!("{path}.routes[{i}]");
            let route = self.route(&route_path, r, pools);
            if let Some(first) = names.get(&route.name) {
                self.push(
                    format!("{route_path}.name"),
                    format!(
                        "duplicate route name {:?} in this listener (also routes[{first}])",
                        route.name
                    ),
                );
            } else {
                names.insert(route.name.clone(), i);
            }
            if route.matcher.is_catch_all() && i + 1 != route_count {
                self.push(
                    route_path,
                    format!(
                        "route {:?} has no match conditions, so it matches every connection \
                         and must be the last route; the routes after it would never be used",
                        route.name
                    ),
                );
            }
            routes.push(route);
        }

        Listener {
            name: raw.name,
            bind,
            protocol,
            max_connections,
            idle_timeout,
            shutdown_timeout,
            handshake_timeout,
            proxy_protocol,
            routes,
        }
    }

    fn route(&mut self, path: &str, raw: RawRoute, pools: &HashMap<String, usize>) -> Route {
        self.name(&format!("{path}.name"), &raw.name);
        let matcher = raw.matcher.unwrap_or_default();
        let sni = matcher
            .sni
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_sni(s).unwrap_or_else(|msg| {
                    self.push(format!("{path}.match.sni[{i}]"), msg);
                    String::new()
                })
            })
            .collect();
        let alpn = matcher
            .alpn
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if a.is_empty() || a.len() > 255 || !a.bytes().all(|b| b.is_ascii_graphic()) {
                    self.push(
                        format!("{path}.match.alpn[{i}]"),
                        format!("{a:?} is not an ALPN protocol name (1 to 255 printable ASCII characters, e.g. \"h2\", \"postgresql\")"),
                    );
                }
                a.clone()
            })
            .collect();
        let source = matcher
            .source
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_source(s).unwrap_or_else(|msg| {
                    self.push(format!("{path}.match.source[{i}]"), msg);
                    IpNet::from(PLACEHOLDER_ADDR.ip())
                })
            })
            .collect();
        let pool_index = match pools.get(&raw.pool) {
            Some(&i) => i,
            None => {
                self.push(
                    format!("{path}.pool"),
                    format!("unknown pool {:?}", raw.pool),
                );
                0
            }
        };
        let send_proxy_protocol = self.choice(
            &format!("{path}.send_proxy_protocol"),
            raw.send_proxy_protocol,
            ProxyVersion::Off,
            PROXY_VERSIONS,
        );
        let backend_tls = raw
            .backend_tls
            .map(|t| self.backend_tls(&format!("{path}.backend_tls"), t));
        Route {
            name: raw.name,
            send_proxy_protocol,
            backend_tls,
            matcher: Match { source, sni, alpn },
            pool: raw.pool,
            pool_index,
        }
    }

    fn pool(&mut self, path: &str, raw: RawPool, resolve: Resolve<'_>) -> Pool {
        self.name(&format!("{path}.name"), &raw.name);
        let balance = self.choice(
            &format!("{path}.balance"),
            raw.balance,
            Balance::RoundRobin,
            BALANCES,
        );
        let hash_key = self.choice(
            &format!("{path}.hash_key"),
            raw.hash_key,
            HashKey::SourceIp,
            HASH_KEYS,
        );
        let connect_timeout = self.timeout(
            &format!("{path}.connect_timeout"),
            raw.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let retries = self.int(
            &format!("{path}.retries"),
            raw.retries,
            DEFAULT_RETRIES,
            0,
            Some(MAX_RETRIES),
        );
        let drain_timeout = self.timeout(
            &format!("{path}.drain_timeout"),
            raw.drain_timeout.as_deref(),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let health = match raw.health {
            Some(h) => self.health(&format!("{path}.health"), &h),
            None => Health::default(),
        };

        if raw.backends.is_empty() {
            self.push(
                format!("{path}.backends"),
                "a pool needs at least one backend ([[pools.backends]])",
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut backends = Vec::with_capacity(raw.backends.len());
        for (i, b) in raw.backends.into_iter().enumerate() {
            let backend_path = format!("{path}.backends[{i}]");
            let named = b.name.is_some();
            let backend = self.backend(&backend_path, b, resolve);
            if let Some(first) = names.get(&backend.name) {
                let (key, hint) = if named {
                    ("name", "")
                } else {
                    (
                        "address",
                        "; a backend without `name` is named by its address",
                    )
                };
                self.push(
                    format!("{backend_path}.{key}"),
                    format!(
                        "duplicate backend name {:?} in this pool (also backends[{first}]){hint}",
                        backend.name
                    ),
                );
            } else {
                names.insert(backend.name.clone(), i);
            }
            backends.push(backend);
        }

        Pool {
            name: raw.name,
            balance,
            hash_key,
            connect_timeout,
            retries,
            drain_timeout,
            close_on_down: raw.close_on_down.unwrap_or(false),
            health,
            backends,
        }
    }

    fn backend(&mut self, path: &str, raw: RawBackend, resolve: Resolve<'_>) -> Backend {
        let address = match backend_addr(&raw.address, resolve) {
            Ok(addr) => addr,
            Err(msg) => {
                self.push(format!("{path}.address"), msg);
                PLACEHOLDER_ADDR
            }
        };
        if let Some(name) = &raw.name {
            self.name(&format!("{path}.name"), name);
        }
        let weight = self.int(
            &format!("{path}.weight"),
            raw.weight,
            DEFAULT_WEIGHT,
            0,
            Some(MAX_WEIGHT),
        );
        let tier = self.int(&format!("{path}.tier"), raw.tier, 0, 0, None);
        let health = raw.health.unwrap_or(true);
        let check_port = raw
            .check_port
            .map(|p| self.int(&format!("{path}.check_port"), Some(p), 0, 1, Some(65535)));
        if check_port.is_some() && !health {
            self.push(
                format!("{path}.check_port"),
                "has no effect: this backend has `health = false`, so it is never probed",
            );
        }
        Backend {
            name: raw.name.unwrap_or_else(|| raw.address.clone()),
            weight,
            tier,
            address_spec: raw.address,
            address,
            health,
            check_port,
        }
    }

    fn health(&mut self, path: &str, raw: &RawHealth) -> Health {
        let kind = self.one_of(&format!("{path}.type"), &raw.kind, HEALTH_TYPES);

        let default = Health::default();
        let parsed_interval =
            self.timeout_opt(&format!("{path}.interval"), raw.interval.as_deref());
        let interval_ok = raw.interval.is_none() || parsed_interval.is_some();
        let interval = parsed_interval.unwrap_or(default.interval);
        let fast_path = format!("{path}.fast_interval");
        let fast_interval = match self.timeout_opt(&fast_path, raw.fast_interval.as_deref()) {
            Some(fast) => {
                if interval_ok && fast > interval {
                    let interval_text = match &raw.interval {
                        Some(text) => format!("{text:?}"),
                        None => format!("{}, the default", humantime::format_duration(interval)),
                    };
                    self.push(
                        fast_path,
                        format!(
                            "{:?} is longer than interval ({interval_text}); fast_interval is \
                             the quicker pace used while a backend's state is changing, so it \
                             must not exceed interval",
                            raw.fast_interval.as_deref().unwrap_or_default(),
                        ),
                    );
                }
                fast
            }
            // Half the interval (an interval of 1ns stays 1ns rather than 0).
            None => (interval / 2).max(Duration::from_nanos(1)),
        };
        let timeout = self
            .timeout_opt(&format!("{path}.timeout"), raw.timeout.as_deref())
            .unwrap_or(default.timeout);
        let rise = self.int(
            &format!("{path}.rise"),
            raw.rise,
            default.rise,
            1,
            Some(MAX_RISE_FALL),
        );
        let fall = self.int(
            &format!("{path}.fall"),
            raw.fall,
            default.fall,
            1,
            Some(MAX_RISE_FALL),
        );
        let port = raw
            .port
            .map(|p| self.int(&format!("{path}.port"), Some(p), 0, 1, Some(65535)));

        // With an unknown type there is nothing to hold the other keys against.
        let Some(kind) = kind else {
            return Health {
                interval,
                fast_interval,
                timeout,
                rise,
                fall,
                port,
                ..default
            };
        };
        let typed_keys: [(&str, bool, &[CheckType]); 9] = [
            ("path", raw.path.is_some(), HTTP),
            ("host", raw.host.is_some(), HTTP),
            ("expect_status", raw.expect_status.is_some(), HTTP),
            ("expect_body", raw.expect_body.is_some(), HTTP),
            ("https", raw.https.is_some(), HTTP_GRPC),
            ("tls_skip_verify", raw.tls_skip_verify.is_some(), HTTP_GRPC),
            ("ca", raw.ca.is_some(), HTTP_GRPC),
            ("tls_server_name", raw.tls_server_name.is_some(), HTTP_GRPC),
            ("service", raw.service.is_some(), GRPC),
        ];
        for (key, present, types) in typed_keys {
            if present && !types.contains(&kind) {
                let names: Vec<String> = types.iter().map(|t| format!("{:?}", t.name())).collect();
                self.push(
                    format!("{path}.{key}"),
                    format!(
                        "only for type = {} (this check is type = {:?})",
                        names.join(" or "),
                        kind.name()
                    ),
                );
            }
        }

        let check = match kind {
            CheckType::None => Check::None,
            CheckType::Tcp => Check::Tcp,
            CheckType::Http => Check::Http(self.http_check(path, raw)),
            CheckType::Grpc => Check::Grpc(GrpcCheck {
                service: raw.service.clone().unwrap_or_default(),
                tls: self.probe_tls(path, raw),
            }),
        };
        Health {
            check,
            interval,
            fast_interval,
            timeout,
            rise,
            fall,
            port,
        }
    }

    fn http_check(&mut self, path: &str, raw: &RawHealth) -> HttpCheck {
        let request_path = raw
            .path
            .clone()
            .unwrap_or_else(|| DEFAULT_HTTP_PATH.to_owned());
        let key = format!("{path}.path");
        if !request_path.starts_with('/') {
            self.push(
                key,
                format!("{request_path:?} must start with \"/\", e.g. \"/health\""),
            );
        } else if !is_visible_ascii(&request_path) {
            self.push(
                key,
                format!(
                    "{request_path:?} must not contain whitespace, control or non-ASCII \
                     characters; percent-encode them (e.g. %20 for a space)"
                ),
            );
        }
        if let Some(host) = &raw.host {
            let key = format!("{path}.host");
            if host.is_empty() {
                self.push(
                    key,
                    "must not be empty; leave it out to send the probed address",
                );
            } else if !is_visible_ascii(host) {
                self.push(
                    key,
                    format!(
                        "{host:?} must not contain whitespace, control or non-ASCII characters \
                         (write an internationalised name in its xn-- form)"
                    ),
                );
            }
        }
        let expect_status = match &raw.expect_status {
            Some(s) => parse_status_match(s).unwrap_or_else(|msg| {
                self.push(format!("{path}.expect_status"), msg);
                StatusMatch { ranges: Vec::new() }
            }),
            None => StatusMatch {
                ranges: vec![DEFAULT_EXPECT_STATUS],
            },
        };
        if raw.expect_body.as_ref().is_some_and(String::is_empty) {
            self.push(
                format!("{path}.expect_body"),
                "must not be empty; leave it out to accept any body",
            );
        }
        HttpCheck {
            path: request_path,
            host: raw.host.clone(),
            expect_status,
            expect_body: raw.expect_body.clone(),
            tls: self.probe_tls(path, raw),
        }
    }

    /// `https` and the keys that only make sense with it.
    fn probe_tls(&mut self, path: &str, raw: &RawHealth) -> Option<ProbeTls> {
        let skip_verify = raw.tls_skip_verify.unwrap_or(false);
        if raw.https != Some(true) {
            // `tls_skip_verify = false` without https says nothing wrong.
            let stray = [
                ("tls_skip_verify", skip_verify),
                ("ca", raw.ca.is_some()),
                ("tls_server_name", raw.tls_server_name.is_some()),
            ];
            for (key, present) in stray {
                if present {
                    self.push(
                        format!("{path}.{key}"),
                        "only with https = true (the probe does not use TLS)",
                    );
                }
            }
            return None;
        }
        if skip_verify && raw.ca.is_some() {
            self.push(
                format!("{path}.tls_skip_verify"),
                "contradicts `ca`: with tls_skip_verify = true any certificate is accepted, \
                 so the CA would never be used; keep one of them",
            );
        }
        let ca = raw
            .ca
            .as_deref()
            .map(|ca| self.ca_file(&format!("{path}.ca"), ca));
        if let Some(name) = &raw.tls_server_name
            && let Err(msg) = check_server_name(name)
        {
            self.push(format!("{path}.tls_server_name"), msg);
        }
        Some(ProbeTls {
            skip_verify,
            ca,
            server_name: raw.tls_server_name.clone(),
        })
    }

    /// `backend_tls`: its files are read now, so a wrong path fails the load.
    fn backend_tls(&mut self, path: &str, raw: RawBackendTls) -> BackendTls {
        let verify = raw.verify.unwrap_or(true);
        if !verify && raw.ca.is_some() {
            self.push(
                format!("{path}.verify"),
                "contradicts `ca`: with verify = false any certificate is accepted, so the CA \
                 would never be used; keep one of them",
            );
        }
        let ca = raw
            .ca
            .as_deref()
            .map(|ca| self.ca_file(&format!("{path}.ca"), ca));
        if let Some(name) = &raw.sni
            && let Err(msg) = check_server_name(name)
        {
            self.push(format!("{path}.sni"), msg);
        }
        let client_cert = match (raw.cert, raw.key) {
            (Some(cert), Some(key)) => {
                let cert = self.pem_file(
                    &format!("{path}.cert"),
                    &cert,
                    "CERTIFICATE",
                    "is not a PEM certificate chain",
                );
                let key = self.pem_file(
                    &format!("{path}.key"),
                    &key,
                    "PRIVATE KEY",
                    "is not a PEM private key",
                );
                Some((cert, key))
            }
            (Some(_), None) => {
                self.push(
                    format!("{path}.key"),
                    "required with `cert` (the client certificate's private key)",
                );
                None
            }
            (None, Some(_)) => {
                self.push(
                    format!("{path}.cert"),
                    "required with `key` (the client certificate chain)",
                );
                None
            }
            (None, None) => None,
        };
        BackendTls {
            sni: raw.sni,
            verify,
            ca,
            client_cert,
        }
    }

    /// A readable file holding a PEM block whose label contains `marker`; `what`
    /// ends the message when it does not.
    fn pem_file(&mut self, path: &str, value: &str, marker: &str, what: &str) -> PathBuf {
        let file = PathBuf::from(value);
        match std::fs::read(&file) {
            Ok(bytes) => {
                let begin = format!("-----BEGIN {marker}");
                // Keys come as "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY".
                let found = contains(&bytes, begin.as_bytes())
                    || (marker == "PRIVATE KEY" && contains(&bytes, b" PRIVATE KEY-----"));
                if !found {
                    self.push(path, format!("{value:?} {what}"));
                }
            }
            Err(e) => {
                let hint = relative_hint(&file);
                self.push(path, format!("cannot read {value:?}: {e}{hint}"));
            }
        }
        file
    }

    /// A PEM CA bundle: read now, so that a wrong path fails the load (or the
    /// reload) rather than every probe or connection.
    fn ca_file(&mut self, path: &str, ca: &str) -> PathBuf {
        if ca.is_empty() {
            self.push(path, "must not be empty");
            return PathBuf::new();
        }
        self.pem_file(
            path,
            ca,
            "CERTIFICATE",
            "holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line); `ca` takes a \
             PEM bundle of CA certificates",
        )
    }

    fn name(&mut self, path: &str, name: &str) {
        if name.trim().is_empty() {
            self.push(path, "must not be empty");
        }
    }

    /// A listen address: an IP literal and a port, never a host name (what a
    /// name resolves to can change under a running listener).
    fn bind_addr(&mut self, path: &str, s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| {
            self.push(
                path,
                format!(
                    "{s:?} is not a socket address; write IP:port, \
                     e.g. \"127.0.0.1:5433\" or \"[::1]:5433\""
                ),
            );
            PLACEHOLDER_ADDR
        })
    }

    fn choice<T: Clone>(
        &mut self,
        path: &str,
        value: Option<String>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        match value {
            Some(value) => self.one_of(path, &value, choices).unwrap_or(default),
            None => default,
        }
    }

    /// The value named `value` in `choices`; `None` (and a problem) if none is.
    fn one_of<T: Clone>(&mut self, path: &str, value: &str, choices: &[(&str, T)]) -> Option<T> {
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == value) {
            return Some(v.clone());
        }
        let accepted: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        self.push(
            path,
            format!(
                "unknown value {value:?}; expected one of: {}",
                accepted.join(", ")
            ),
        );
        None
    }

    /// A timeout or an interval: a humantime string, greater than zero.
    fn timeout(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        self.timeout_opt(path, value).unwrap_or(default)
    }

    /// Like [`Self::timeout`]; `None` when absent or wrong.
    fn timeout_opt(&mut self, path: &str, value: Option<&str>) -> Option<Duration> {
        let value = value?;
        match humantime::parse_duration(value) {
            Ok(d) if d.is_zero() => {
                self.push(path, "must be greater than 0");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.push(
                    path,
                    format!(
                        "{value:?} is not a duration ({e}); write a number with a unit, \
                         e.g. \"250ms\", \"2s\", \"1h\""
                    ),
                );
                None
            }
        }
    }

    /// An integer in `min..=max`, where no `max` means the largest `T`.
    fn int<T>(
        &mut self,
        path: &str,
        value: Option<Int>,
        default: T,
        min: i64,
        max: Option<i64>,
    ) -> T
    where
        T: TryFrom<i64> + Copy,
    {
        let Some(Int(v)) = value else {
            return default;
        };
        let in_range = v >= min && max.is_none_or(|m| v <= m);
        match T::try_from(v) {
            Ok(t) if in_range => t,
            _ => {
                let message = match max {
                    Some(max) => format!("{v} is out of range {min}..={max}"),
                    None if v < min => format!("{v} is out of range; must be at least {min}"),
                    None => format!("{v} is too large"),
                };
                self.push(path, message);
                default
            }
        }
    }

    /// Two binds overlap when the kernel would give both the same packets:
    /// same port and family, and the same IP or either being the wildcard.
    /// SO_REUSEPORT would let both bind succeed and split traffic silently,
    /// so this must be caught here. Port 0 (pick any free port) never
    /// collides. IPv4 and IPv6 wildcards are not compared: IPv6 listeners are
    /// expected to be IPV6_V6ONLY, so `0.0.0.0:P` and `[::]:P` can coexist.
    fn check_binds(&mut self, admin: &Admin, listeners: &[Listener]) {
        let mut seen: Vec<(String, SocketAddr)> = Vec::new();
        let mut all = Vec::new();
        if let Some(addr) = admin.http {
            all.push(("admin.http".to_owned(), addr));
        }
        if let Some(addr) = admin.grpc {
            all.push(("admin.grpc".to_owned(), addr));
        }
        for (l, listener) in listeners.iter().enumerate() {
            for (b, &addr) in listener.bind.iter().enumerate() {
                all.push((format!("listeners[{l}].bind[{b}]"), addr));
            }
        }
        for (path, addr) in all {
            if addr == PLACEHOLDER_ADDR || addr.port() == 0 {
                continue;
            }
            if let Some((other_path, other)) = seen.iter().find(|(_, o)| overlaps(addr, *o)) {
                let message = if *other == addr {
                    format!("{addr} is already bound by {other_path}")
                } else {
                    format!("{addr} overlaps {other} bound by {other_path}")
                };
                self.push(path, message);
            } else {
                seen.push((path, addr));
            }
        }
    }
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `"10.0.0.0/8"`, `"::1/128"`, or a bare IP meaning that one host.
fn parse_source(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        // Accept "10.1.2.3/8" like most proxies do, but store the network.
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{s:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\", \"::1/128\", \"192.0.2.7\")"
    ))
}

/// `ip:port` is taken as is; `host:port` goes through `resolve`.
fn backend_addr(spec: &str, resolve: Resolve<'_>) -> Result<SocketAddr, String> {
    let addr = match spec.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let Some((host, port)) = spec.rsplit_once(':') else {
                return Err(format!(
                    "{spec:?} has no port; write host:port or ip:port, e.g. \"10.0.0.1:5432\""
                ));
            };
            if host.is_empty() {
                return Err(format!("{spec:?} has no host"));
            }
            if host.contains(':') {
                return Err(format!(
                    "{spec:?} is not a valid address; put an IPv6 address in brackets, \
                     e.g. \"[2001:db8::1]:5432\""
                ));
            }
            if port.parse::<u16>().is_err() {
                return Err(format!("{spec:?}: port {port:?} is not a number 1..=65535"));
            }
            resolve(spec).map_err(|e| format!("cannot resolve {spec:?}: {e}"))?
        }
    };
    if addr.port() == 0 {
        return Err(format!("{spec:?}: port 0 is not a valid backend port"));
    }
    Ok(addr)
}

/// A `match.sni` entry: a DNS name or `*.` followed by one, lower-cased.
fn parse_sni(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(lower)
    } else {
        Err(format!(
            "{s:?} is not a server name: write a DNS name (\"db.example.com\") or a wildcard \
             of one label (\"*.example.com\")"
        ))
    }
}

/// The first comma-separated directive of a log filter that is a bare word but not
/// a level name, if any.
fn bare_non_level(filter: &str) -> Option<&str> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    filter.split(',').map(str::trim).find(|d| {
        !d.is_empty()
            && !d.contains(['=', '[', ':'])
            && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d))
    })
}

/// Non-empty or not, only printable ASCII other than space: what can go
/// into a request line or a header unescaped.
fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// For an error about a relative file path: where it was looked for.
fn relative_hint(file: &Path) -> String {
    if file.is_absolute() {
        return String::new();
    }
    match std::env::current_dir() {
        Ok(dir) => format!(
            "; a relative path is relative to weir's working directory ({})",
            dir.display()
        ),
        Err(_) => "; a relative path is relative to weir's working directory".to_owned(),
    }
}

/// `tls_server_name`: a DNS name (SNI, and the name the certificate must
/// carry) or an IP address (verified, never sent as SNI).
fn check_server_name(name: &str) -> Result<(), String> {
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let dns = name.strip_suffix('.').unwrap_or(name);
    let valid = !dns.is_empty()
        && dns.len() <= 253
        && dns.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS name or an IP address (e.g. \"db.internal\"; write an \
             internationalised name in its xn-- form)"
        ))
    }
}

/// `expect_status`: comma-separated items, each a status (`200`), a class
/// (`2xx` = 200..=299) or an inclusive range (`200-299`); spaces around items
/// are allowed.
fn parse_status_match(s: &str) -> Result<StatusMatch, String> {
    if s.trim().is_empty() {
        return Err(
            "must not be empty; write a status, class or range, e.g. \"200\", \"2xx\", \
             \"200-299\""
                .to_owned(),
        );
    }
    let mut ranges = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!(
                "{s:?} has an empty item; separate statuses with single commas, e.g. \"200,204\""
            ));
        }
        ranges.push(status_item(item)?);
    }
    Ok(StatusMatch { ranges })
}

fn status_item(item: &str) -> Result<(u16, u16), String> {
    let not_a_status = || format!("{item:?} is not a status, class (2xx) or range (200-299)");
    if let Some((lo, hi)) = item.split_once('-') {
        let lo = status_code(lo.trim()).ok_or_else(not_a_status)?;
        let hi = status_code(hi.trim()).ok_or_else(not_a_status)?;
        out_of_range(item, lo)?;
        out_of_range(item, hi)?;
        if lo > hi {
            return Err(format!(
                "{item:?} is an empty range: its first status is above its last"
            ));
        }
        return Ok((lo, hi));
    }
    let bytes = item.as_bytes();
    if let [class @ b'0'..=b'9', b'x' | b'X', b'x' | b'X'] = bytes {
        let class = u16::from(class - b'0');
        if !(1..=5).contains(&class) {
            return Err(format!(
                "{item:?} is not a status class; classes are 1xx to 5xx"
            ));
        }
        return Ok((class * 100, class * 100 + 99));
    }
    let code = status_code(item).ok_or_else(not_a_status)?;
    out_of_range(item, code)?;
    Ok((code, code))
}

/// Exactly three digits.
fn status_code(s: &str) -> Option<u16> {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn out_of_range(item: &str, code: u16) -> Result<(), String> {
    if (100..=599).contains(&code) {
        Ok(())
    } else {
        Err(format!(
            "{item:?}: {code} is not an HTTP status; statuses are 100..=599"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or(PLACEHOLDER_ADDR)
    }

    #[test]
    fn wildcard_overlaps_same_family_only() {
        assert!(overlaps(sa("0.0.0.0:80"), sa("127.0.0.1:80")));
        assert!(overlaps(sa("127.0.0.1:80"), sa("0.0.0.0:80")));
        assert!(overlaps(sa("[::]:80"), sa("[::]:80")));
        assert!(overlaps(sa("[::]:80"), sa("[::1]:80")));
        assert!(!overlaps(sa("0.0.0.0:80"), sa("[::]:80")));
        assert!(!overlaps(sa("127.0.0.1:80"), sa("127.0.0.2:80")));
        assert!(!overlaps(sa("0.0.0.0:80"), sa("0.0.0.0:81")));
    }

    #[test]
    fn sources_accept_bare_ips_and_normalise_networks() {
        assert_eq!(parse_source("192.0.2.7"), Ok(sa_net("192.0.2.7/32")));
        assert_eq!(parse_source("::1"), Ok(sa_net("::1/128")));
        assert_eq!(parse_source("10.1.2.3/8"), Ok(sa_net("10.0.0.0/8")));
        assert!(parse_source("10.0.0.0/33").is_err());
        assert!(parse_source("ten").is_err());
    }

    fn sa_net(s: &str) -> IpNet {
        s.parse().unwrap_or(IpNet::from(PLACEHOLDER_ADDR.ip()))
    }

    #[test]
    fn timeouts_take_the_units_the_docs_promise() {
        let mut cx = Checker {
            problems: Vec::new(),
        };
        let mut t = |s: &str| cx.timeout("t", Some(s), Duration::ZERO);
        assert_eq!(t("250ms"), Duration::from_millis(250));
        assert_eq!(t("2s"), Duration::from_secs(2));
        assert_eq!(t("2sec"), Duration::from_secs(2));
        assert_eq!(t("1m30s"), Duration::from_secs(90));
        assert_eq!(t("5min"), Duration::from_secs(300));
        assert_eq!(t("1h"), Duration::from_secs(3600));
        assert_eq!(t("2hours"), Duration::from_secs(7200));
        assert_eq!(t("1d"), Duration::from_secs(86400));
        assert_eq!(t("10us"), Duration::from_micros(10));
        assert_eq!(t("10ns"), Duration::from_nanos(10));
        assert!(cx.problems.is_empty(), "{:?}", cx.problems);
    }

    #[test]
    fn backend_addresses() {
        let no_dns = |s: &str| -> Result<SocketAddr, String> { Err(format!("no DNS for {s}")) };
        let fixed = |_: &str| -> Result<SocketAddr, String> { Ok(sa("10.9.9.9:5432")) };
        assert_eq!(
            backend_addr("127.0.0.1:5432", &no_dns),
            Ok(sa("127.0.0.1:5432"))
        );
        assert_eq!(backend_addr("[::1]:5432", &no_dns), Ok(sa("[::1]:5432")));
        assert_eq!(backend_addr("db:5432", &fixed), Ok(sa("10.9.9.9:5432")));
        assert_eq!(
            backend_addr("db:5432", &no_dns),
            Err("cannot resolve \"db:5432\": no DNS for db:5432".to_owned())
        );
        assert!(backend_addr("db", &fixed).is_err());
        assert!(backend_addr(":5432", &fixed).is_err());
        assert!(backend_addr("db:http", &fixed).is_err());
        assert!(backend_addr("::1:5432", &fixed).is_err());
        assert!(backend_addr("127.0.0.1:0", &fixed).is_err());
    }

    #[test]
    fn expect_status_forms() {
        let ok = |s: &str| parse_status_match(s).map(|m| m.ranges);
        assert_eq!(ok("200"), Ok(vec![(200, 200)]));
        assert_eq!(ok("2xx"), Ok(vec![(200, 299)]));
        assert_eq!(ok("5XX"), Ok(vec![(500, 599)]));
        assert_eq!(ok("200-299"), Ok(vec![(200, 299)]));
        assert_eq!(ok("200-200"), Ok(vec![(200, 200)]));
        assert_eq!(ok("200,204"), Ok(vec![(200, 200), (204, 204)]));
        assert_eq!(
            ok("200, 3xx, 404-410"),
            Ok(vec![(200, 200), (300, 399), (404, 410)])
        );
        assert_eq!(ok(" 1xx ,599 "), Ok(vec![(100, 199), (599, 599)]));
        assert_eq!(ok("100 - 101"), Ok(vec![(100, 101)]));
    }

    #[test]
    fn expect_status_mistakes() {
        let err = |s: &str| parse_status_match(s).err().unwrap_or_default();
        assert_eq!(
            err("2xz"),
            "\"2xz\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("200,2xz"),
            "\"2xz\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("20"),
            "\"20\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("2000"),
            "\"2000\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("+20"),
            "\"+20\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("200-2xx"),
            "\"200-2xx\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("600"),
            "\"600\": 600 is not an HTTP status; statuses are 100..=599"
        );
        assert_eq!(
            err("099"),
            "\"099\": 99 is not an HTTP status; statuses are 100..=599"
        );
        assert_eq!(
            err("200-600"),
            "\"200-600\": 600 is not an HTTP status; statuses are 100..=599"
        );
        assert_eq!(
            err("299-200"),
            "\"299-200\" is an empty range: its first status is above its last"
        );
        assert_eq!(
            err("6xx"),
            "\"6xx\" is not a status class; classes are 1xx to 5xx"
        );
        assert_eq!(
            err("0xx"),
            "\"0xx\" is not a status class; classes are 1xx to 5xx"
        );
        assert!(err("").starts_with("must not be empty"));
        assert!(err("  ").starts_with("must not be empty"));
        assert!(err("200,").starts_with("\"200,\" has an empty item"));
        assert!(err("200,,204").starts_with("\"200,,204\" has an empty item"));
    }

    #[test]
    fn expect_status_displays_as_written() {
        let shown = |s: &str| {
            parse_status_match(s)
                .map(|m| m.to_string())
                .unwrap_or_else(|e| e)
        };
        assert_eq!(shown("200, 3xx, 404-410"), "200,3xx,404-410");
        assert_eq!(shown("200-299"), "2xx");
        assert_eq!(shown("200-200"), "200");
    }

    #[test]
    fn status_match_matches_inclusive_ranges() {
        let m = parse_status_match("200, 3xx, 404-410").unwrap_or(StatusMatch { ranges: vec![] });
        for status in [200, 300, 350, 399, 404, 407, 410] {
            assert!(m.matches(status), "{status}");
        }
        for status in [199, 201, 299, 400, 403, 411, 500] {
            assert!(!m.matches(status), "{status}");
        }
    }

    #[test]
    fn server_names() {
        assert_eq!(check_server_name("db.internal"), Ok(()));
        assert_eq!(check_server_name("db.internal."), Ok(()));
        assert_eq!(check_server_name("_svc.example-1.com"), Ok(()));
        assert_eq!(check_server_name("10.0.0.1"), Ok(()));
        assert_eq!(check_server_name("::1"), Ok(()));
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a b",
            "db.internal:443",
            "bücher.de",
        ] {
            assert!(check_server_name(bad).is_err(), "{bad:?}");
        }
    }
}
