//! `[[pools]]` and `[[pools.backends]]`: balancing, connect settings, and
//! each backend's address, weight and tier.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::Checker;
use crate::model::{
    Backend, BackendAddress, HashKey, Health, HttpProtocol, Listener, Outlier, Policy, Pool,
    RetryBudget, RouteMode, SameSite, Sticky,
};
use crate::raw::{Int, RawBackend, RawPool, RawSticky};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRIES: i64 = 100;
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_WEIGHT: u32 = 1;
const MAX_WEIGHT: i64 = crate::model::MAX_WEIGHT as i64;
/// A backend's connection limit at most (a million: beyond, no limit is meant).
const MAX_BACKEND_CONNECTIONS: i64 = 1_000_000;
/// HAProxy's `maxqueue` is unbounded by default; a bounded one keeps a
/// saturated pool from holding every client of a burst.
const DEFAULT_MAX_QUEUE: u32 = 1024;
const MAX_QUEUE: i64 = 1_000_000;
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
const PROTOCOLS: &[(&str, HttpProtocol)] = &[
    ("http1", HttpProtocol::Http1),
    ("h2", HttpProtocol::H2),
    ("h2c", HttpProtocol::H2c),
];
const HASH_KEYS: &[(&str, HashKey)] = &[
    ("source_ip", HashKey::SourceIp),
    ("source_addr", HashKey::SourceAddr),
    ("sni", HashKey::Sni),
];

const SAME_SITE: &[(&str, SameSite)] = &[
    ("lax", SameSite::Lax),
    ("strict", SameSite::Strict),
    ("none", SameSite::None),
];

impl Checker {
    /// `sticky = { cookie, max_age, path, domain, secure, http_only,
    /// same_site }` of a pool; `None` when it is wrong.
    fn sticky(&mut self, path: &str, raw: &RawSticky) -> Option<Sticky> {
        let before = self.problems.len();
        if raw.cookie.is_empty() || !raw.cookie.bytes().all(super::http::is_tchar) {
            self.push(
                format!("{path}.cookie"),
                format!(
                    "{:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                    raw.cookie
                ),
            );
        } else if raw.cookie.len() > 64 {
            self.push(format!("{path}.cookie"), "longer than 64 bytes");
        }
        let max_age = self.timeout_opt(&format!("{path}.max_age"), raw.max_age.as_deref());
        if max_age.is_some_and(|d| d < Duration::from_secs(1)) {
            self.push(
                format!("{path}.max_age"),
                "must be at least 1s (whole seconds)",
            );
        }
        // Attribute values end at `;`; nothing that could end the field.
        let attribute = |v: &str| {
            !v.is_empty()
                && v.len() <= 256
                && v.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        };
        let cookie_path = raw.path.clone().unwrap_or_else(|| "/".into());
        if !cookie_path.starts_with('/') || !attribute(&cookie_path) {
            self.push(
                format!("{path}.path"),
                format!("{cookie_path:?} is not a cookie path: it starts with `/`, visible ASCII without `;` or `,`"),
            );
        }
        let domain = raw.domain.as_ref().map(|d| d.to_ascii_lowercase());
        if let Some(d) = &domain
            && !weir_wire::name::is_dns_name(d.trim_start_matches('.').as_bytes())
        {
            self.push(
                format!("{path}.domain"),
                format!("{d:?} is not a domain name"),
            );
        }
        let same_site = self.choice(
            &format!("{path}.same_site"),
            raw.same_site.clone(),
            SameSite::Lax,
            SAME_SITE,
        );
        if same_site == SameSite::None && raw.secure == Some(false) {
            self.push(
                format!("{path}.secure"),
                "`same_site = \"none\"` needs `Secure`: browsers refuse such a cookie without it",
            );
        }
        (self.problems.len() == before).then(|| Sticky {
            cookie: raw.cookie.clone(),
            max_age,
            path: cookie_path,
            domain,
            secure: if same_site == SameSite::None {
                Some(true)
            } else {
                raw.secure
            },
            http_only: raw.http_only.unwrap_or(true),
            same_site,
        })
    }

    pub(super) fn pool(&mut self, path: &str, raw: RawPool) -> Pool {
        self.name(&format!("{path}.name"), &raw.name);
        let policies = Policy::ALL.map(|p| (p.as_str(), p));
        let balance = self.choice(
            &format!("{path}.balance"),
            raw.balance,
            Policy::RoundRobin,
            &policies,
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
        let retries = raw
            .retries
            .map(|r| self.int(&format!("{path}.retries"), Some(r), 0, 0, Some(MAX_RETRIES)));
        let mut retry_on_status: Vec<u16> = Vec::new();
        for (i, code) in raw.retry_on_status.iter().flatten().enumerate() {
            let at = format!("{path}.retry_on_status[{i}]");
            let code = self.int(&at, Some(Int(code.0)), 0u16, 400, Some(599));
            if retry_on_status.contains(&code) {
                self.push(at, format!("{code} is listed twice"));
            } else if code != 0 {
                retry_on_status.push(code);
            }
        }
        retry_on_status.sort_unstable();
        let retry_budget = raw.retry_budget.as_ref().map(|b| {
            let p = format!("{path}.retry_budget");
            RetryBudget {
                percent: self.int(&format!("{p}.percent"), b.percent, 20, 0, Some(100)),
                min_concurrent: self.int(
                    &format!("{p}.min_concurrent"),
                    b.min_concurrent,
                    3,
                    0,
                    Some(1_000_000),
                ),
            }
        });
        let sticky = raw
            .sticky
            .as_ref()
            .and_then(|s| self.sticky(&format!("{path}.sticky"), s));
        let drain_timeout = self.timeout(
            &format!("{path}.drain_timeout"),
            raw.drain_timeout.as_deref(),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let protocol = self.choice(
            &format!("{path}.protocol"),
            raw.protocol,
            HttpProtocol::Http1,
            PROTOCOLS,
        );
        let health = match raw.health {
            Some(h) => self.health(&format!("{path}.health"), &h),
            None => Health::default(),
        };

        // A `discover` that is wrong is said once, where it is wrong.
        let wants_discovery = raw.discover.is_some();
        let discover = raw
            .discover
            .and_then(|d| self.discover(&format!("{path}.discover"), d));
        if raw.backends.is_empty() && !wants_discovery {
            self.push(
                format!("{path}.backends"),
                "a pool needs at least one backend ([[pools.backends]]), or `discover` \
                 to find them in DNS",
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut backends = Vec::with_capacity(raw.backends.len());
        for (i, b) in raw.backends.into_iter().enumerate() {
            let backend_path = format!("{path}.backends[{i}]");
            let named = b.name.is_some();
            let backend = self.backend(&backend_path, b, &health.check);
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
            retry_on_status,
            retry_budget,
            sticky,
            drain_timeout,
            close_on_down: raw.close_on_down.unwrap_or(false),
            protocol,
            health,
            outlier: raw.outlier.as_ref().map(|o| {
                let p = format!("{path}.outlier");
                let base_ejection = self.timeout(
                    &format!("{p}.base_ejection"),
                    o.base_ejection.as_deref(),
                    Duration::from_secs(30),
                );
                let max_ejection = self.timeout(
                    &format!("{p}.max_ejection"),
                    o.max_ejection.as_deref(),
                    Duration::from_secs(300),
                );
                if max_ejection < base_ejection {
                    self.push(
                        format!("{p}.max_ejection"),
                        "must be at least base_ejection",
                    );
                }
                Outlier {
                    consecutive_failures: self.int(
                        &format!("{p}.consecutive_failures"),
                        o.consecutive_failures,
                        5,
                        1,
                        Some(1_000_000),
                    ),
                    base_ejection,
                    max_ejection,
                    max_ejected_percent: self.int(
                        &format!("{p}.max_ejected_percent"),
                        o.max_ejected_percent,
                        10,
                        1,
                        Some(100),
                    ),
                }
            }),
            discover,
            slow_start: self.timeout_opt(&format!("{path}.slow_start"), raw.slow_start.as_deref()),
            max_connections_per_backend: raw.max_connections_per_backend.map(|n| {
                self.int(
                    &format!("{path}.max_connections_per_backend"),
                    Some(n),
                    0,
                    1,
                    Some(MAX_BACKEND_CONNECTIONS),
                )
            }),
            max_queue: self.int(
                &format!("{path}.max_queue"),
                raw.max_queue,
                DEFAULT_MAX_QUEUE,
                0,
                Some(MAX_QUEUE),
            ),
            queue_timeout: self.timeout(
                &format!("{path}.queue_timeout"),
                raw.queue_timeout.as_deref(),
                DEFAULT_QUEUE_TIMEOUT,
            ),
            backends,
        }
    }

    /// A pool that speaks h2 (HTTP/2 over TLS) to its backends is reached
    /// through TLS: every l7 route that sends to it needs `backend_tls`; one
    /// that speaks h2c (in clear text) is not.
    pub(super) fn check_protocols(&mut self, listeners: &[Listener], pools: &[Pool]) {
        for (li, l) in listeners.iter().enumerate() {
            for (ri, r) in l.routes.iter().enumerate() {
                // The SNI is only known where weir peeks at a ClientHello it
                // passes through: l4 routes of TCP listeners.
                let by_sni = r
                    .pool_indices()
                    .into_iter()
                    .filter_map(|i| pools.get(i))
                    .find(|p| p.hash_key == HashKey::Sni && p.balance == Policy::Maglev);
                if let Some(pool) = by_sni
                    && (l.udp.is_some() || matches!(r.mode, RouteMode::L7(_)))
                {
                    self.push(
                        format!("listeners[{li}].routes[{ri}]"),
                        format!(
                            "pool {:?} hashes by sni, which only l4 routes of TCP listeners \
                             know (from the ClientHello they pass through); use hash_key = \
                             \"source_ip\" for this route's pool",
                            pool.name
                        ),
                    );
                }
                if let (Some(_), RouteMode::L4(l4)) = (&l.udp, &r.mode)
                    && let Some(pool) = pools.get(l4.pool_index)
                    && (pool.max_connections_per_backend.is_some()
                        || pool.backends.iter().any(|b| b.max_connections.is_some()))
                {
                    self.push(
                        format!("listeners[{li}].routes[{ri}].pool"),
                        format!(
                            "pool {:?} limits its backends' connections (max_connections), \
                             which UDP flows do not take part in; give this route a pool \
                             without limits",
                            l4.pool
                        ),
                    );
                }
                if let (Some(_), RouteMode::L4(l4)) = (&l.udp, &r.mode)
                    && let Some(pool) = pools.get(l4.pool_index)
                    && !matches!(
                        pool.health.check,
                        crate::model::Check::None
                            | crate::model::Check::Dns(_)
                            | crate::model::Check::Udp(_)
                    )
                {
                    self.push(
                        format!("listeners[{li}].routes[{ri}].pool"),
                        format!(
                            "pool {:?} is probed with type = {:?}, a check of streams; \
                             a pool of a udp listener takes type = \"dns\", \"udp\" or \"none\"",
                            l4.pool,
                            pool.health.check.kind()
                        ),
                    );
                }
                let RouteMode::L7(http) = &r.mode else {
                    continue;
                };
                for (hi, rule) in http.rules.iter().enumerate() {
                    let protocol = rule
                        .pool_index
                        .and_then(|i| pools.get(i))
                        .map(|p| p.protocol);
                    if r.backend_tls.is_some() && protocol == Some(HttpProtocol::H2c) {
                        self.push(
                            format!("listeners[{li}].routes[{ri}].http[{hi}].pool"),
                            format!(
                                "pool {:?} speaks h2c, HTTP/2 in clear text, but this route has \
                                 backend_tls: set the pool's protocol to \"h2\" (HTTP/2 over \
                                 TLS), or remove backend_tls",
                                rule.pool.as_deref().unwrap_or_default()
                            ),
                        );
                    }
                    if r.backend_tls.is_none() && protocol == Some(HttpProtocol::H2) {
                        self.push(
                            format!("listeners[{li}].routes[{ri}].http[{hi}].pool"),
                            format!(
                                "pool {:?} speaks h2, HTTP/2 over TLS: give this route \
                                 backend_tls, or set the pool's protocol to \"h2c\" (HTTP/2 in \
                                 clear text)",
                                rule.pool.as_deref().unwrap_or_default()
                            ),
                        );
                    }
                }
            }
        }
    }

    fn backend(
        &mut self,
        path: &str,
        raw: RawBackend,
        pool_check: &crate::model::Check,
    ) -> Backend {
        let address = match parse_address(&raw.address) {
            Ok(addr) => addr,
            Err(msg) => {
                self.push(format!("{path}.address"), msg);
                BackendAddress::Ip(super::PLACEHOLDER_ADDR)
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
        let max_connections = raw.max_connections.map(|n| {
            self.int(
                &format!("{path}.max_connections"),
                Some(n),
                0,
                1,
                Some(MAX_BACKEND_CONNECTIONS),
            )
        });
        let check = raw.check.as_ref().and_then(|c| {
            if !health {
                self.push(
                    format!("{path}.check"),
                    "has no effect: this backend has `health = false`, so it is never probed",
                );
            }
            self.check_override(&format!("{path}.check"), pool_check, c)
        });
        Backend {
            check,
            max_connections,
            name: raw.name.unwrap_or_else(|| raw.address.clone()),
            weight,
            tier,
            address,
            health,
            check_port,
        }
    }
}

/// `ip:port`, or `host:port` with a DNS name (resolved by the runtime).
fn parse_address(spec: &str) -> Result<BackendAddress, String> {
    let addr = match spec.parse::<SocketAddr>() {
        Ok(addr) => BackendAddress::Ip(addr),
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
            let Ok(port) = port.parse::<u16>() else {
                return Err(format!("{spec:?}: port {port:?} is not a number 1..=65535"));
            };
            let name = host.strip_suffix('.').unwrap_or(host);
            if !weir_wire::name::is_dns_name(name.as_bytes()) {
                return Err(format!(
                    "{spec:?}: {host:?} is neither an IP address nor a host name"
                ));
            }
            BackendAddress::Name {
                host: host.to_owned(),
                port,
            }
        }
    };
    if addr.port() == 0 {
        return Err(format!("{spec:?}: port 0 is not a valid backend port"));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> BackendAddress {
        BackendAddress::Ip(s.parse().unwrap_or(super::super::PLACEHOLDER_ADDR))
    }

    #[test]
    fn backend_addresses() {
        assert_eq!(parse_address("127.0.0.1:5432"), Ok(ip("127.0.0.1:5432")));
        assert_eq!(parse_address("[::1]:5432"), Ok(ip("[::1]:5432")));
        assert_eq!(
            parse_address("db:5432"),
            Ok(BackendAddress::Name {
                host: "db".into(),
                port: 5432
            })
        );
        assert_eq!(
            parse_address("db:5432").map(|a| a.to_string()).as_deref(),
            Ok("db:5432")
        );
        assert!(parse_address("db").is_err());
        assert!(parse_address(":5432").is_err());
        assert!(parse_address("db:http").is_err());
        assert!(parse_address("::1:5432").is_err());
        assert!(parse_address("127.0.0.1:0").is_err());
        assert!(parse_address("db:0").is_err());
        assert!(parse_address("a b:5432").is_err());
    }
}
