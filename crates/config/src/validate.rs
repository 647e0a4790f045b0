//! Stage two: raw serde types -> the validated model.
//!
//! Every check records a [`Problem`] and carries on with a placeholder value,
//! so one run reports every mistake in the file; the half-built [`Config`] is
//! thrown away if anything was recorded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::error::{ConfigError, Problem};
use crate::model::{
    Admin, Backend, Balance, Config, HashKey, Health, Listener, Log, LogFormat, Match, Pool,
    Protocol, Route, Runtime,
};
use crate::raw::{
    Int, RawAdmin, RawBackend, RawConfig, RawListener, RawLog, RawPool, RawRoute, RawRuntime,
};

/// Turns a backend `address` (host:port) into a socket address.
pub(crate) type Resolve<'a> = &'a dyn Fn(&str) -> Result<SocketAddr, String>;

const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_RETRIES: u32 = 2;
const MAX_RETRIES: i64 = 100;
const DEFAULT_WEIGHT: u32 = 1;
const MAX_WEIGHT: i64 = 1000;
const DEFAULT_LOG_LEVEL: &str = "info";

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp)];
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
const HEALTH_TYPES: &[(&str, Health)] = &[("none", Health::None)];

/// Stands in for a value that failed a check; never reaches a returned Config.
const PLACEHOLDER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

pub(crate) fn validate(raw: RawConfig, resolve: Resolve<'_>) -> Result<Config, ConfigError> {
    let mut cx = Checker {
        problems: Vec::new(),
    };
    let admin = cx.admin(raw.admin);
    let runtime = cx.runtime(&raw.runtime);
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
        Admin {
            http: raw.http.map(|s| self.bind_addr("admin.http", &s)),
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
            raw.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
        );
        let shutdown_timeout = self.timeout(
            &format!("{path}.shutdown_timeout"),
            raw.shutdown_timeout,
            DEFAULT_SHUTDOWN_TIMEOUT,
        );

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
            routes,
        }
    }

    fn route(&mut self, path: &str, raw: RawRoute, pools: &HashMap<String, usize>) -> Route {
        self.name(&format!("{path}.name"), &raw.name);
        let source = raw
            .matcher
            .unwrap_or_default()
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
        Route {
            name: raw.name,
            matcher: Match { source },
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
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let retries = self.int(
            &format!("{path}.retries"),
            raw.retries,
            DEFAULT_RETRIES,
            0,
            Some(MAX_RETRIES),
        );
        let health = match raw.health {
            Some(h) => self.choice(
                &format!("{path}.health.type"),
                Some(h.kind),
                Health::None,
                HEALTH_TYPES,
            ),
            None => Health::None,
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
        Backend {
            name: raw.name.unwrap_or_else(|| raw.address.clone()),
            weight: self.int(
                &format!("{path}.weight"),
                raw.weight,
                DEFAULT_WEIGHT,
                0,
                Some(MAX_WEIGHT),
            ),
            tier: self.int(&format!("{path}.tier"), raw.tier, 0, 0, None),
            address_spec: raw.address,
            address,
        }
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
        let Some(value) = value else {
            return default;
        };
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == value) {
            return v.clone();
        }
        let accepted: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        self.push(
            path,
            format!(
                "unknown value {value:?}; expected one of: {}",
                accepted.join(", ")
            ),
        );
        default
    }

    /// A timeout: a humantime string, greater than zero.
    fn timeout(&mut self, path: &str, value: Option<String>, default: Duration) -> Duration {
        let Some(value) = value else {
            return default;
        };
        match humantime::parse_duration(&value) {
            Ok(d) if d.is_zero() => {
                self.push(path, "must be greater than 0");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.push(
                    path,
                    format!(
                        "{value:?} is not a duration ({e}); write a number with a unit, \
                         e.g. \"250ms\", \"2s\", \"1h\""
                    ),
                );
                default
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
        let mut t = |s: &str| cx.timeout("t", Some(s.to_owned()), Duration::ZERO);
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
}
