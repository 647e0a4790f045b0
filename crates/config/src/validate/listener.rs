//! `[[listeners]]`: addresses, limits, timeouts, the PROXY protocol, and the
//! order of their routes; and that no two binds overlap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Checker, PLACEHOLDER_ADDR};
use crate::model::{Admin, Listener, Protocol, ProxyAccept, ProxyVersion, RouteMode, UdpListener};
use crate::raw::RawListener;

const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP flow's: a DNS or syslog client has long gone after this.
const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_FLOWS: u32 = 100_000;
const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];

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
        let udp = protocol == Protocol::Udp;
        let idle_timeout = self.timeout(
            &format!("{path}.idle_timeout"),
            raw.idle_timeout.as_deref(),
            if udp {
                DEFAULT_UDP_IDLE_TIMEOUT
            } else {
                DEFAULT_IDLE_TIMEOUT
            },
        );
        // Keys of the other protocol are named, not ignored.
        let tcp_only = [
            (
                "max_connections",
                raw.max_connections.is_some(),
                "max_flows",
            ),
            ("handshake_timeout", raw.handshake_timeout.is_some(), ""),
        ];
        let udp_only = [
            ("responses", raw.responses.is_some()),
            ("max_flows", raw.max_flows.is_some()),
        ];
        if udp {
            for (key, present, instead) in tcp_only {
                if present {
                    let hint = if instead.is_empty() {
                        String::new()
                    } else {
                        format!(" (use {instead})")
                    };
                    self.push(
                        format!("{path}.{key}"),
                        format!("only for protocol = \"tcp\" (this listener is \"udp\"){hint}"),
                    );
                }
            }
        } else {
            for (key, present) in udp_only {
                if present {
                    self.push(
                        format!("{path}.{key}"),
                        "only for protocol = \"udp\" (this listener is \"tcp\")",
                    );
                }
            }
        }
        let responses = if raw.responses.is_some() {
            Some(self.int(&format!("{path}.responses"), raw.responses, 1u32, 1, None))
        } else {
            None
        };
        let max_flows = self.int(
            &format!("{path}.max_flows"),
            raw.max_flows,
            DEFAULT_MAX_FLOWS,
            1,
            Some(10_000_000),
        );
        let udp_settings = udp.then_some(UdpListener {
            responses,
            max_flows,
        });
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
            if udp {
                self.udp_route(&route_path, &route);
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
            udp: udp_settings,
        }
    }

    /// What a route of a UDP listener cannot have: TLS (no ClientHello to
    /// route by, none to the backend), HTTP, a PROXY v1 header (text, for
    /// streams).
    fn udp_route(&mut self, path: &str, route: &crate::model::Route) {
        let m = &route.matcher;
        if !m.sni.is_empty() || !m.alpn.is_empty() {
            self.push(
                format!("{path}.match"),
                "a udp route matches on source only (sni and alpn are TLS's)",
            );
        }
        if route.backend_tls.is_some() {
            self.push(
                format!("{path}.backend_tls"),
                "not for a udp listener's routes (datagrams are relayed as they are)",
            );
        }
        match &route.mode {
            RouteMode::L7(_) => self.push(
                format!("{path}.mode"),
                "a udp listener's routes are l4: datagrams are relayed as they are",
            ),
            RouteMode::L4(l4) if l4.send_proxy_protocol == ProxyVersion::V1 => self.push(
                format!("{path}.send_proxy_protocol"),
                "v1 is a text header for streams; over udp, use \"v2\" (one header per datagram)",
            ),
            RouteMode::L4(_) => {}
        }
    }

    /// Two binds overlap when the kernel would give both the same packets:
    /// same port and family, and the same IP or either being the wildcard.
    /// SO_REUSEPORT would let both bind succeed and split traffic silently,
    /// so this must be caught here. Port 0 (pick any free port) never
    /// collides. IPv4 and IPv6 wildcards are not compared: IPv6 listeners are
    /// expected to be IPV6_V6ONLY, so `0.0.0.0:P` and `[::]:P` can coexist.
    pub(super) fn check_binds(&mut self, admin: &Admin, listeners: &[Listener]) {
        let mut all = Vec::new();
        if let Some(addr) = admin.http {
            all.push(("admin.http".to_owned(), addr, Protocol::Tcp));
        }
        if let Some(addr) = admin.grpc {
            all.push(("admin.grpc".to_owned(), addr, Protocol::Tcp));
        }
        for (l, listener) in listeners.iter().enumerate() {
            for (b, &addr) in listener.bind.iter().enumerate() {
                all.push((format!("listeners[{l}].bind[{b}]"), addr, listener.protocol));
            }
        }
        // A UDP and a TCP socket on one port do not meet.
        let mut seen: Vec<(String, SocketAddr, Protocol)> = Vec::new();
        for (path, addr, protocol) in all {
            if addr == PLACEHOLDER_ADDR || addr.port() == 0 {
                continue;
            }
            if let Some((other_path, other, _)) = seen
                .iter()
                .find(|(_, o, p)| *p == protocol && overlaps(addr, *o))
            {
                let message = if *other == addr {
                    format!("{addr} is already bound by {other_path}")
                } else {
                    format!("{addr} overlaps {other} bound by {other_path}")
                };
                self.push(path, message);
            } else {
                seen.push((path, addr, protocol));
            }
        }
    }
}

/// The key of a TCP listener's bind that would meet `addr` (an address the
/// running process holds and a reload does not move, such as the admin
/// endpoints' until a restart), if one would.
pub fn bind_meeting(addr: SocketAddr, listeners: &[Listener]) -> Option<String> {
    listeners.iter().enumerate().find_map(|(l, listener)| {
        if listener.protocol != Protocol::Tcp {
            return None;
        }
        listener
            .bind
            .iter()
            .position(|&b| b.port() != 0 && overlaps(b, addr))
            .map(|b| format!("listeners[{l}].bind[{b}]"))
    })
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

    fn udp(listener: &str, route: &str, pool: &str) -> Result<crate::Config, String> {
        crate::load_str(&format!(
            "[[listeners]]\nname = \"dns\"\nbind = \"127.0.0.1:5353\"\nprotocol = \"udp\"\n{listener}\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n{route}\n\
             [[pools]]\nname = \"p\"\n{pool}\n[[pools.backends]]\naddress = \"127.0.0.1:53\"\n"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn udp_listeners_take_their_keys_and_refuse_tcps() {
        let c = udp(
            "responses = 1\nmax_flows = 10",
            "send_proxy_protocol = \"v2\"",
            "",
        )
        .expect("valid");
        let l = &c.listeners[0];
        assert_eq!(
            l.udp,
            Some(UdpListener {
                responses: Some(1),
                max_flows: 10
            })
        );
        assert_eq!(l.idle_timeout, DEFAULT_UDP_IDLE_TIMEOUT);
        for (listener, route, pool, words) in [
            (
                "max_connections = 5",
                "",
                "",
                "listeners[0].max_connections: only for protocol = \"tcp\"",
            ),
            (
                "handshake_timeout = \"1s\"",
                "",
                "",
                "handshake_timeout: only for protocol",
            ),
            ("responses = 0", "", "", "responses: 0 is out of range"),
            (
                "",
                "match = { sni = [\"a.example\"] }",
                "",
                "matches on source only",
            ),
            ("", "send_proxy_protocol = \"v1\"", "", "use \"v2\""),
            ("", "mode = \"l7\"", "", "routes are l4"),
            (
                "",
                "",
                "[pools.health]\ntype = \"tcp\"",
                "takes type = \"dns\", \"udp\" or \"none\"",
            ),
        ] {
            let e = udp(listener, route, pool).expect_err(words);
            assert!(e.contains(words), "{words}: {e}");
        }
        let e = crate::load_str(
            "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:80\"\nmax_flows = 3\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"127.0.0.1:81\"\n",
        )
        .expect_err("max_flows on tcp")
        .to_string();
        assert!(e.contains("max_flows: only for protocol = \"udp\""), "{e}");
    }

    #[test]
    fn a_udp_and_a_tcp_listener_share_a_port() {
        let both = "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:53\"\n\
                    [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
                    [[listeners]]\nname = \"u\"\nbind = \"0.0.0.0:53\"\nprotocol = \"udp\"\n\
                    [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
                    [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"127.0.0.1:5353\"\n";
        crate::load_str(both).expect("tcp and udp do not meet");
        let twice = both.replace(
            "name = \"t\"\nbind = \"127.0.0.1:53\"\n",
            "name = \"t\"\nbind = \"127.0.0.1:53\"\nprotocol = \"udp\"\n",
        );
        let e = crate::load_str(&twice)
            .expect_err("two udp binds overlap")
            .to_string();
        assert!(e.contains("overlaps"), "{e}");
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
