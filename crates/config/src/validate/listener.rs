//! `[[listeners]]`: addresses, limits, timeouts, the PROXY protocol, and the
//! order of their routes; and that no two binds overlap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Checker, PLACEHOLDER_ADDR};
use crate::model::{Admin, Listener, Protocol, ProxyAccept};
use crate::raw::RawListener;

const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp)];

impl Checker {
    pub(super) fn listener(
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
            let trusted = self.sources(&format!("{path}.proxy_protocol.trusted"), &pp.trusted);
            if pp.accept && pp.trusted.is_empty() {
                self.push(
                    format!("{path}.proxy_protocol.trusted"),
                    "list the sources allowed to send a PROXY header (e.g. [\"10.0.0.0/8\"]); \
                     accepting it from anyone would let any client choose its address",
                );
            }
            if !pp.accept && !pp.trusted.is_empty() {
                self.push(
                    format!("{path}.proxy_protocol.trusted"),
                    "has no effect with accept = false: no source may send a PROXY header; \
                     set accept = true to take them from these sources, or remove `trusted`",
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
            // Joined with the global table by the caller.
            firewall: None,
        }
    }

    /// Two binds overlap when the kernel would give both the same packets:
    /// same port and family, and the same IP or either being the wildcard.
    /// SO_REUSEPORT would let both bind succeed and split traffic silently,
    /// so this must be caught here. Port 0 (pick any free port) never
    /// collides. IPv4 and IPv6 wildcards are not compared: IPv6 listeners are
    /// expected to be IPV6_V6ONLY, so `0.0.0.0:P` and `[::]:P` can coexist.
    pub(super) fn check_binds(&mut self, admin: &Admin, listeners: &[Listener]) {
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
}
