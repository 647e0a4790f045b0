//! "Why did this client go there?": for a listener, a client address and
//! what its ClientHello would say (SNI, ALPN), which route takes it and why
//! each route before it does not, the route's pools with their active tier,
//! every backend's eligibility with the reason, and, under maglev, the
//! backend the pool picks for this client now. Read only: nothing is
//! counted, no balancer state moves.

use std::net::{IpAddr, SocketAddr};

use weir_config::{HashKey, Policy};

use super::{ControlError, Server};
use crate::health::{AdminState, Health};
use crate::listener::{Listener, Route};
use crate::pool::Pool;

/// The answer of [`Server::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Every route of the listener in order, each with its verdict.
    pub routes: Vec<RouteVerdict>,
    /// The route that takes the client; `None`: refused with `no_route`.
    pub route: Option<String>,
    /// The chosen route's pools (an l7 route's rules pick one per request:
    /// with a request to explain, the pool of the rule that takes it).
    pub pools: Vec<PoolVerdict>,
    /// The listener's firewall refuses the client by its address (a
    /// runtime ban, a list, its country): why, as the access log and
    /// `weir_firewall_blocked_total` name it; nothing else applies then.
    pub firewall: Option<&'static str>,
    /// For an l7 route: what its rules do with the request, when one was
    /// given.
    pub http: Option<crate::l7::RulesExplained>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteVerdict {
    pub name: String,
    pub matched: bool,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolVerdict {
    pub name: String,
    pub balance: &'static str,
    pub active_tier: Option<u32>,
    pub backends: Vec<BackendVerdict>,
    /// The backend picked for this client now, when the policy decides by
    /// the client (maglev).
    pub pick: Option<String>,
    /// How the pick is made, or why there is none.
    pub pick_note: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendVerdict {
    pub name: String,
    pub eligible: bool,
    pub why: String,
}

impl Server {
    /// Explains where a connection from `client` to `listener` would go,
    /// with `sni` and `alpn` as its ClientHello would carry them; for an l7
    /// route, where the request `http` describes goes (its `client` is
    /// taken from `client`).
    pub fn explain(
        &self,
        listener: &str,
        client: SocketAddr,
        sni: Option<&str>,
        alpn: Option<&str>,
        http: Option<crate::l7::HttpQuestion<'_>>,
    ) -> Result<Explanation, ControlError> {
        let l = self
            .listener(listener)
            .ok_or_else(|| ControlError::NoListener(listener.to_owned()))?;
        if let Some(block) = l.firewall.listed(client.ip()) {
            return Ok(Explanation {
                routes: Vec::new(),
                route: None,
                pools: Vec::new(),
                firewall: Some(block.as_str()),
                http: None,
            });
        }
        // As the ClientHello peek reads a server name: lower-cased, one
        // trailing dot dropped, an IP literal is no server name at all, and
        // one that is not a DNS name makes the hello match no route.
        let (sni, invalid) =
            match sni.map(|s| (s, weir_wire::client_hello::server_name(s.as_bytes()))) {
                None => (None, None),
                Some((_, Ok(name))) => (name.map(std::borrow::Cow::into_owned), None),
                Some((s, Err(_))) => (None, Some(s)),
            };
        let mut routes = Vec::with_capacity(l.routes.len());
        let mut chosen: Option<&Route> = None;
        for r in &l.routes {
            if let Some(bad) = invalid {
                routes.push(RouteVerdict {
                    name: r.name.clone(),
                    matched: false,
                    why: format!(
                        "SNI {bad:?} is not a valid server name: a ClientHello with it matches no route"
                    ),
                });
                continue;
            }
            if let Some(first) = chosen {
                routes.push(RouteVerdict {
                    name: r.name.clone(),
                    matched: false,
                    why: format!("not reached: route {:?} takes the client first", first.name),
                });
                continue;
            }
            let (matched, why) = route_verdict(r, client.ip(), sni.as_deref(), alpn);
            if matched {
                chosen = Some(r);
            }
            routes.push(RouteVerdict {
                name: r.name.clone(),
                matched,
                why,
            });
        }
        let explained = match (chosen.map(|r| &r.mode), http) {
            (Some(crate::listener::Mode::L7(l7)), Some(q)) => {
                // In the proxy's order: a malformed request is refused
                // before its host is found misdirected.
                let rules = l7.handler.explain(&q);
                let misdirected = match &rules {
                    Some(e) if e.refused => None,
                    _ => misdirected(&l, chosen, client.ip(), sni.as_deref(), alpn, q.host),
                };
                match misdirected {
                    Some(note) => Some(crate::l7::RulesExplained {
                        rules: Vec::new(),
                        rule: None,
                        pool: None,
                        notes: vec![note],
                        refused: true,
                    }),
                    None => rules,
                }
            }
            _ => None,
        };
        let pools = chosen.map_or_else(Vec::new, |r| {
            r.pools()
                .into_iter()
                .filter(|p| {
                    explained
                        .as_ref()
                        .is_none_or(|e| e.pool.as_deref() == Some(&p.name))
                })
                .map(|p| pool_verdict(p, client, sni.as_deref()))
                .collect()
        });
        Ok(Explanation {
            routes,
            route: chosen.map(|r| r.name.clone()),
            pools,
            firewall: None,
            http: explained,
        })
    }
}

/// Why a TLS connection that reached `chosen` with `sni` has its request
/// for `host` answered 421, if it does (see the proxy's check): the host is
/// another name, which would have led the connection to another route.
fn misdirected(
    l: &Listener,
    chosen: Option<&Route>,
    ip: IpAddr,
    sni: Option<&str>,
    alpn: Option<&str>,
    host: Option<&str>,
) -> Option<String> {
    let (chosen, sni, host) = (chosen?, sni?, host?);
    let (len, _) = weir_wire::name::authority_host(host.as_bytes())?;
    let name = host.get(..len)?.to_ascii_lowercase();
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if name == sni || bare.parse::<IpAddr>().is_ok() {
        return None;
    }
    let held = l
        .routes
        .iter()
        .take(64)
        .enumerate()
        .filter(|(_, r)| {
            r.matcher.alpn.is_empty() || alpn.is_some_and(|p| r.matcher.alpn.iter().any(|a| a == p))
        })
        .fold(0, |bits, (i, _)| bits | 1 << i);
    let mine = l.routes.iter().position(|r| std::ptr::eq(r, chosen));
    let other = l.route_for_name(ip, &name, held, alpn.map(str::as_bytes));
    if other == mine {
        return None;
    }
    let there = other
        .and_then(|i| l.routes.get(i))
        .map_or_else(|| "no route".to_owned(), |r| format!("route {:?}", r.name));
    Some(format!(
        "host {name:?} is not the SNI {sni:?}, and as an SNI it would reach {there}, \
         not {:?}: answered 421 (misdirected)",
        chosen.name
    ))
}

fn route_verdict(r: &Route, ip: IpAddr, sni: Option<&str>, alpn: Option<&str>) -> (bool, String) {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let m = &r.matcher;
    let mut held = Vec::new();
    if !m.source.is_empty() {
        let list = m
            .source
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if !m.source.iter().any(|net| net.contains(&ip)) {
            return (false, format!("source {ip} is not in [{list}]"));
        }
        held.push(format!("source {ip} is in [{list}]"));
    }
    if !m.sni.is_empty() {
        let list = m.sni.join(", ");
        match sni {
            None => {
                return (
                    false,
                    format!("needs an SNI in [{list}]; the client sends none"),
                );
            }
            Some(name) if !m.sni_matches(name) => {
                return (false, format!("SNI {name:?} is not in [{list}]"));
            }
            Some(name) => held.push(format!("SNI {name:?} is in [{list}]")),
        }
    }
    if !m.alpn.is_empty() {
        let list = m.alpn.join(", ");
        match alpn {
            None => {
                return (
                    false,
                    format!("needs an ALPN in [{list}]; the client offers none"),
                );
            }
            Some(p) if !m.alpn.iter().any(|a| a == p) => {
                return (false, format!("ALPN {p:?} is not in [{list}]"));
            }
            Some(p) => held.push(format!("ALPN {p:?} is in [{list}]")),
        }
    }
    if held.is_empty() {
        (true, "no conditions: takes every client".to_owned())
    } else {
        (true, held.join("; "))
    }
}

fn pool_verdict(p: &Pool, client: SocketAddr, sni: Option<&str>) -> PoolVerdict {
    let active = p.active_tier();
    let backends = p
        .backends
        .iter()
        .filter_map(|b| p.view(&b.name).map(|v| (b, v)))
        .map(|(b, v)| {
            let (eligible, why) = if v.admin == AdminState::Disabled {
                (false, "disabled by an operator".to_owned())
            } else if v.admin == AdminState::Drain {
                (false, "drained by an operator".to_owned())
            } else if matches!(v.health, Health::Down | Health::Standby) {
                let last = v
                    .last_probe
                    .as_ref()
                    .map_or_else(String::new, |l| format!(" (last probe: {})", l.reason));
                let what = if v.health == Health::Down {
                    "down"
                } else {
                    "standby: healthy, not eligible"
                };
                (false, format!("{what}{last}"))
            } else if b.outlier.ejected.load(std::sync::atomic::Ordering::Relaxed) {
                (false, "ejected as an outlier".to_owned())
            } else if v.health == Health::Unknown && !v.serving {
                (
                    false,
                    "not decided yet: its first probe has not answered".to_owned(),
                )
            } else if b.current_weight() == 0 {
                (false, "weight 0: never picked".to_owned())
            } else if Some(v.tier) != active {
                let active = active.map_or_else(|| "none".to_owned(), |t| t.to_string());
                (
                    false,
                    format!("in tier {}, not the active tier {active}", v.tier),
                )
            } else if !b.slots.has_room() {
                (
                    false,
                    format!(
                        "full: {} of {} connections in use (max_connections)",
                        b.slots_in_use(),
                        b.connection_limit()
                    ),
                )
            } else {
                (true, format!("serving, weight {}", v.effective_weight))
            };
            BackendVerdict {
                name: v.name,
                eligible,
                why,
            }
        })
        .collect::<Vec<_>>();
    let full = backends.iter().any(|b| b.why.starts_with("full:"));
    let (pick, pick_note) = if backends.iter().all(|b| !b.eligible) && full {
        (
            None,
            format!(
                "every serving backend is full: the client waits in the queue ({} waiting, at \
                 most {}) for up to {:?}, then is refused (queue_full, queue_timeout)",
                p.queue.depth(),
                p.max_queue(),
                p.queue_timeout()
            ),
        )
    } else if backends.iter().all(|b| !b.eligible) {
        (
            None,
            "no backend can serve: the client is refused (no_backend)".to_owned(),
        )
    } else if p.policy() == Policy::Maglev {
        let sni_key = (p.hash_key == HashKey::Sni)
            .then_some(sni)
            .flatten()
            .map(crate::upstream::sni_key);
        let key = crate::upstream::affinity_key(p.hash_key, client, sni_key);
        let by = match (p.hash_key, sni_key) {
            (HashKey::SourceAddr, _) => "source address and port",
            (HashKey::Sni, Some(_)) => "SNI",
            _ => "source IP",
        };
        (
            p.pick_with_room(key, &[])
                .and_then(|i| p.backends.get(i))
                .map(|b| b.name.clone()),
            format!(
                "maglev by {by}: the same on every weir with these backends (a failed connect \
                 tries the next one)"
            ),
        )
    } else {
        (
            None,
            format!(
                "{}: any eligible backend, by turn or load at that moment",
                p.policy().as_str()
            ),
        )
    };
    PoolVerdict {
        name: p.name.clone(),
        balance: p.policy().as_str(),
        active_tier: active,
        backends,
        pick,
        pick_note,
    }
}
