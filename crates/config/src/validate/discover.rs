//! `discover = { ... }` of a pool: which DNS records give its backends, from
//! which server, and how often they are asked again.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Checker;
use crate::model::{Discover, DiscoverQuery};
use crate::raw::RawDiscover;

const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_HOLD: Duration = Duration::from_secs(60);
const MAX_WEIGHT: i64 = crate::model::MAX_WEIGHT as i64;

impl Checker {
    pub(super) fn discover(&mut self, path: &str, raw: RawDiscover) -> Option<Discover> {
        let query = match (raw.srv, raw.name) {
            (Some(srv), None) => {
                if raw.port.is_some() {
                    self.push(
                        format!("{path}.port"),
                        "an SRV record carries its own port: remove `port`",
                    );
                }
                if raw.tier.is_some() || raw.weight.is_some() {
                    let key = if raw.tier.is_some() { "tier" } else { "weight" };
                    self.push(
                        format!("{path}.{key}"),
                        "SRV records carry their own priority (the tier) and weight: \
                         remove it",
                    );
                }
                self.dns_name(&format!("{path}.srv"), &srv)
                    .then_some(DiscoverQuery::Srv(srv))
            }
            (None, Some(name)) => {
                let port = match raw.port {
                    Some(_) => self.int(&format!("{path}.port"), raw.port, 0u16, 1, Some(65535)),
                    None => {
                        self.push(
                            format!("{path}.port"),
                            "A/AAAA records have no port: add `port`, e.g. port = 8080",
                        );
                        0
                    }
                };
                (self.dns_name(&format!("{path}.name"), &name) && port != 0)
                    .then_some(DiscoverQuery::Name { name, port })
            }
            (Some(_), Some(_)) => {
                self.push(
                    path,
                    "give either `srv` (SRV records) or `name` and `port` (A/AAAA), not both",
                );
                None
            }
            (None, None) => {
                self.push(
                    path,
                    "say what to ask: `srv = \"_pg._tcp.db.service.consul\"`, or \
                     `name = \"api.internal\"` with `port`",
                );
                None
            }
        };
        let resolver = raw
            .resolver
            .as_deref()
            .and_then(|r| self.resolver(&format!("{path}.resolver"), r));
        let min_interval = self.timeout(
            &format!("{path}.min_interval"),
            raw.min_interval.as_deref(),
            DEFAULT_MIN_INTERVAL,
        );
        let max_interval = self.timeout(
            &format!("{path}.max_interval"),
            raw.max_interval.as_deref(),
            DEFAULT_MAX_INTERVAL,
        );
        if max_interval < min_interval {
            self.push(
                format!("{path}.max_interval"),
                "must be at least min_interval",
            );
        }
        let timeout = self.timeout(
            &format!("{path}.timeout"),
            raw.timeout.as_deref(),
            DEFAULT_TIMEOUT,
        );
        let hold = self.timeout(&format!("{path}.hold"), raw.hold.as_deref(), DEFAULT_HOLD);
        let tier = self.int(&format!("{path}.tier"), raw.tier, 0, 0, Some(1000));
        let weight = self.int(
            &format!("{path}.weight"),
            raw.weight,
            1,
            0,
            Some(MAX_WEIGHT),
        );
        Some(Discover {
            query: query?,
            resolver,
            min_interval,
            max_interval,
            timeout,
            hold,
            tier,
            weight,
        })
    }

    /// A name to look up: dot-separated labels of letters, digits, `-` and
    /// `_` (SRV names start with `_service._proto`), 63 bytes a label and 253
    /// in all; a trailing dot is allowed.
    fn dns_name(&mut self, path: &str, name: &str) -> bool {
        let bare = name.strip_suffix('.').unwrap_or(name);
        let ok = !bare.is_empty()
            && bare.len() <= 253
            && bare.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            });
        if !ok {
            self.push(
                path,
                format!(
                    "{name:?} is not a DNS name (labels of letters, digits, '-' and '_' \
                     separated by dots)"
                ),
            );
        }
        ok
    }

    /// A DNS server: `IP` (port 53) or `IP:port`.
    fn resolver(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(a);
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, 53));
        }
        self.push(
            path,
            format!(
                "{s:?} is not a DNS server address; write IP or IP:port, e.g. \
                 \"127.0.0.1:8600\""
            ),
        );
        None
    }
}
