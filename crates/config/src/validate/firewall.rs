//! `[firewall]` and a listener's `firewall`: address lists (inline and from
//! files, read now so that a bad line fails the load or the reload) and the
//! per-client limits; then the two tables joined into what one listener
//! enforces.

use ipnet::IpNet;

use super::{Checker, values};
use crate::model::{Countries, Firewall, GeoDatabase, PerClient};
use crate::raw::{RawCountries, RawFirewall, RawPerClient};

const DEFAULT_IPV4_PREFIX: u8 = 32;
const DEFAULT_IPV6_PREFIX: u8 = 64;
const DEFAULT_MAX_TRACKED: u32 = 100_000;
/// Bad lines reported per list file; a file of garbage says so in ten.
const MAX_FILE_PROBLEMS: usize = 10;

/// One `firewall` table, checked but not yet joined with the other.
#[derive(Debug, Default)]
pub(super) struct Parts {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
    /// `allow` or `allow_files` was given (an empty file still means an
    /// allow list: nothing is let in).
    has_allow: bool,
    countries: Option<Countries>,
    per_client: Option<RawPerClient>,
}

impl Checker {
    pub(super) fn firewall(&mut self, path: &str, raw: &RawFirewall) -> Parts {
        let mut deny = self.sources(&format!("{path}.deny"), &raw.deny);
        let mut allow = self.sources(&format!("{path}.allow"), &raw.allow);
        for (i, file) in raw.deny_files.iter().enumerate() {
            deny.extend(self.list_file(&format!("{path}.deny_files[{i}]"), file));
        }
        for (i, file) in raw.allow_files.iter().enumerate() {
            allow.extend(self.list_file(&format!("{path}.allow_files[{i}]"), file));
        }
        if let Some(pc) = &raw.per_client {
            // Checked here, once, with the path of the table that says it.
            self.per_client(&format!("{path}.per_client"), *pc);
        }
        let countries = raw
            .countries
            .as_ref()
            .and_then(|c| self.countries(&format!("{path}.countries"), c));
        Parts {
            deny,
            allow,
            has_allow: !raw.allow.is_empty() || !raw.allow_files.is_empty(),
            countries,
            per_client: raw.per_client,
        }
    }

    /// The database, read and checked now: a missing or unreadable file is
    /// an error here, never a firewall that silently lets everyone in.
    fn countries(&mut self, path: &str, raw: &RawCountries) -> Option<Countries> {
        let deny = self.country_codes(&format!("{path}.deny"), &raw.deny);
        let allow = raw
            .allow
            .as_ref()
            .map(|a| self.country_codes(&format!("{path}.allow"), a));
        if deny.is_empty() && allow.is_none() {
            self.push(path, "names no country: give `deny`, `allow` or both");
        }
        let file = std::path::PathBuf::from(&raw.database);
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                self.push(
                    format!("{path}.database"),
                    format!("cannot read {:?}: {e}", raw.database),
                );
                return None;
            }
        };
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            h.finish()
        };
        match maxminddb::Reader::from_source(bytes) {
            Ok(reader) => Some(Countries {
                database: GeoDatabase {
                    path: file,
                    reader: std::sync::Arc::new(reader),
                    digest,
                },
                deny,
                allow,
            }),
            Err(e) => {
                self.push(
                    format!("{path}.database"),
                    format!("{:?} is not a MaxMind-format database: {e}", raw.database),
                );
                None
            }
        }
    }

    /// ISO 3166-1 alpha-2 codes (any case), or `--`; upper-cased.
    fn country_codes(&mut self, path: &str, codes: &[String]) -> Vec<String> {
        codes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let ok = c == "--" || (c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()));
                if ok {
                    Some(c.to_ascii_uppercase())
                } else {
                    self.push(
                        format!("{path}[{i}]"),
                        format!(
                            "{c:?} is not a country code: write two letters (ISO 3166-1 \
                             alpha-2, e.g. \"NL\"), or \"--\" for addresses the database \
                             has no country for"
                        ),
                    );
                    None
                }
            })
            .collect()
    }

    /// The addresses and networks of a list file: one per line, `#` starts a
    /// comment, blank lines are skipped.
    fn list_file(&mut self, path: &str, file: &str) -> Vec<IpNet> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                self.push(path, format!("cannot read {file:?}: {e}"));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        let mut bad = 0;
        for (n, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            match values::parse_source(entry) {
                Ok(net) => out.push(net),
                Err(msg) => {
                    bad += 1;
                    if bad <= MAX_FILE_PROBLEMS {
                        self.push(path, format!("{file}:{}: {msg}", n + 1));
                    }
                }
            }
        }
        if bad > MAX_FILE_PROBLEMS {
            self.push(
                path,
                format!(
                    "{file}: {} more lines are not addresses",
                    bad - MAX_FILE_PROBLEMS
                ),
            );
        }
        out
    }

    fn per_client(&mut self, path: &str, raw: RawPerClient) -> PerClient {
        let limit = |cx: &mut Checker, key: &str, v: Option<crate::raw::Int>| {
            v.map(|v| cx.int::<u32>(&format!("{path}.{key}"), Some(v), 1, 1, None))
        };
        let rate = limit(self, "rate", raw.rate);
        let concurrent = limit(self, "concurrent", raw.concurrent);
        let requests = limit(self, "requests", raw.requests);
        let burst = self.int(
            &format!("{path}.burst"),
            raw.burst,
            rate.unwrap_or(1),
            1,
            None,
        );
        let requests_burst = self.int(
            &format!("{path}.requests_burst"),
            raw.requests_burst,
            requests.unwrap_or(1),
            1,
            None,
        );
        if raw.burst.is_some() && rate.is_none() {
            self.push(format!("{path}.burst"), "needs `rate`");
        }
        if raw.requests_burst.is_some() && requests.is_none() {
            self.push(format!("{path}.requests_burst"), "needs `requests`");
        }
        PerClient {
            rate,
            burst,
            concurrent,
            requests,
            requests_burst,
            ipv4_prefix: self.int(
                &format!("{path}.ipv4_prefix"),
                raw.ipv4_prefix,
                DEFAULT_IPV4_PREFIX,
                8,
                Some(32),
            ),
            ipv6_prefix: self.int(
                &format!("{path}.ipv6_prefix"),
                raw.ipv6_prefix,
                DEFAULT_IPV6_PREFIX,
                16,
                Some(128),
            ),
            max_tracked: self.int(
                &format!("{path}.max_tracked"),
                raw.max_tracked,
                DEFAULT_MAX_TRACKED,
                64,
                Some(10_000_000),
            ),
        }
    }

    /// What one listener enforces: the global table and its own, lists
    /// joined, the listener's `per_client` keys over the global ones.
    pub(super) fn join_firewall(
        &mut self,
        path: &str,
        global: Option<&Parts>,
        own: Option<Parts>,
    ) -> Option<Firewall> {
        if global.is_none() && own.is_none() {
            return None;
        }
        let own = own.unwrap_or_default();
        let empty = Parts::default();
        let global = global.unwrap_or(&empty);
        let mut deny = global.deny.clone();
        deny.extend(own.deny);
        let allow = (global.has_allow || own.has_allow).then(|| {
            let mut allow = global.allow.clone();
            allow.extend(own.allow);
            allow
        });
        // The listener's own country rule, else the global one.
        let countries = own.countries.or_else(|| global.countries.clone());
        let per_client = match (&global.per_client, own.per_client) {
            (None, None) => None,
            (Some(g), None) => Some(*g),
            (None, Some(o)) => Some(o),
            (Some(g), Some(o)) => Some(RawPerClient {
                rate: o.rate.or(g.rate),
                burst: o.burst.or(g.burst),
                concurrent: o.concurrent.or(g.concurrent),
                requests: o.requests.or(g.requests),
                requests_burst: o.requests_burst.or(g.requests_burst),
                ipv4_prefix: o.ipv4_prefix.or(g.ipv4_prefix),
                ipv6_prefix: o.ipv6_prefix.or(g.ipv6_prefix),
                max_tracked: o.max_tracked.or(g.max_tracked),
            }),
        };
        // Each table's keys were checked with their own path already; the
        // joined one can only fail on a pairing (`burst` from one table,
        // `rate` from none), reported at the listener.
        let per_client = per_client.map(|pc| {
            let mut quiet = Checker {
                problems: Vec::new(),
            };
            let checked = quiet.per_client(&format!("{path}.firewall.per_client"), pc);
            for p in quiet.problems {
                if !self.problems.iter().any(|q| q.message == p.message) {
                    self.problems.push(p);
                }
            }
            checked
        });
        let per_client = per_client
            .filter(|pc| pc.rate.is_some() || pc.concurrent.is_some() || pc.requests.is_some());
        Some(Firewall {
            deny,
            allow,
            countries,
            per_client,
        })
    }
}
