//! Who may connect, and how much: a listener's firewall, checked on the real
//! client address (the PROXY header's when a trusted sender gave one) before
//! anything else is done for the connection. A refused connection is reset
//! at once: no peek, no route, no backend.
//!
//! Order: the operator's runtime rules (a ban refuses; an exception skips
//! the lists), the deny list (deny wins), then the allow list, then the
//! per-client limits (open connections, then the rate of new ones).

mod clients;
mod metrics;
mod runtime;
mod set;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use clients::{ClientSlot, ClientTable};
pub(crate) use metrics::render;
pub use runtime::{Action, Rule, RuntimeRules};
pub use set::AddrSet;
use weir_config::PerClient;

use crate::Reason;

/// How often a per-client table forgets the clients it no longer needs.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Why the firewall refused a connection: the `reason` label of
/// `weir_firewall_blocked_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// An operator banned the source at runtime (`weir firewall deny`).
    Banned,
    /// The source is on a deny list.
    DenyList,
    /// There is an allow list and the source is not on it.
    NotAllowed,
    /// The source's country (`countries`) is denied, or not allowed.
    Country,
    /// The source opened new connections faster than `per_client.rate`.
    RateLimit,
    /// The source has `per_client.concurrent` connections open already.
    Concurrency,
    /// An HTTP request over `per_client.requests` per second (answered 429;
    /// the connection stays).
    RequestRate,
}

impl Block {
    pub const ALL: [Block; 7] = [
        Block::Banned,
        Block::DenyList,
        Block::NotAllowed,
        Block::Country,
        Block::RateLimit,
        Block::Concurrency,
        Block::RequestRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Block::Banned => "banned",
            Block::DenyList => "deny_list",
            Block::NotAllowed => "not_allowed",
            Block::Country => "country",
            Block::RateLimit => "rate_limit",
            Block::Concurrency => "concurrency",
            Block::RequestRate => "request_rate",
        }
    }

    /// The `reason` of `weir_listener_connections_rejected_total` and of the
    /// access log: `firewall` for a list, `rate_limit` for a limit.
    pub fn reason(self) -> Reason {
        match self {
            Block::Banned | Block::DenyList | Block::NotAllowed | Block::Country => {
                Reason::Firewall
            }
            Block::RateLimit | Block::Concurrency | Block::RequestRate => Reason::RateLimit,
        }
    }
}

/// One listener's firewall.
#[derive(Debug)]
pub struct Firewall {
    runtime: Arc<RuntimeRules>,
    deny: AddrSet,
    allow: Option<AddrSet>,
    countries: Option<weir_config::Countries>,
    per_client: Option<(PerClient, Arc<ClientTable>)>,
}

impl Firewall {
    /// Builds the firewall of `config` (`None`: the runtime rules only),
    /// keeping the per-client state of `before` (the listener's firewall
    /// before a reload) when it fits.
    pub fn new(
        config: Option<&weir_config::Firewall>,
        runtime: &Arc<RuntimeRules>,
        before: Option<&Firewall>,
    ) -> Firewall {
        let empty = weir_config::Firewall::default();
        let config = config.unwrap_or(&empty);
        let per_client = config.per_client.map(|limits| {
            let kept = before
                .and_then(|b| b.per_client.as_ref())
                .map(|(_, t)| t)
                .filter(|t| t.fits(&limits))
                .map(Arc::clone);
            // A kept table takes the new limits at `activate`, once the
            // reload can no longer fail.
            let table = match kept {
                Some(t) => t,
                None => {
                    let t = Arc::new(ClientTable::new(&limits));
                    ClientTable::spawn_sweeper(&t, SWEEP_EVERY);
                    t
                }
            };
            (limits, table)
        });
        Firewall {
            runtime: Arc::clone(runtime),
            deny: AddrSet::new(&config.deny),
            allow: config.allow.as_ref().map(AddrSet::new),
            countries: config.countries.clone(),
            per_client,
        }
    }

    /// Lets a new connection from `ip` in (with its hold on the client's
    /// This firewall's per-client limits become those its client table
    /// (perhaps kept from the running listener) forgets clients by: called
    /// when a reload switches to it.
    pub fn activate(&self) {
        if let Some((limits, table)) = &self.per_client {
            table.adopt(limits);
        }
    }

    /// count of open connections, when counted), or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Option<ClientSlot>, Block> {
        if let Some(block) = self.listed(ip) {
            return Err(block);
        }
        match &self.per_client {
            Some((limits, table)) => table.connect(ip, limits, Instant::now()),
            None => Ok(None),
        }
    }

    /// What the rules say of `ip` by its address alone (runtime rules, the
    /// lists, countries), taking nothing: `None` lets it on to the
    /// per-client limits. `weir explain` asks this.
    pub fn listed(&self, ip: IpAddr) -> Option<Block> {
        match self.runtime.check(ip) {
            Some(Action::Deny) => Some(Block::Banned),
            Some(Action::Allow) => None,
            None => {
                if self.deny.contains(ip) {
                    return Some(Block::DenyList);
                }
                if let Some(allow) = &self.allow
                    && !allow.contains(ip)
                {
                    return Some(Block::NotAllowed);
                }
                if let Some(c) = &self.countries
                    && !country_admits(c, ip)
                {
                    return Some(Block::Country);
                }
                None
            }
        }
    }

    /// False when `ip` is over `per_client.requests` (an HTTP request).
    /// The runtime rules, shared by every listener's firewall.
    pub fn runtime(&self) -> &RuntimeRules {
        &self.runtime
    }

    pub fn admit_request(&self, ip: IpAddr) -> bool {
        match &self.per_client {
            Some((limits, table)) => table.request(ip, limits, Instant::now()),
            None => true,
        }
    }

    /// Whether HTTP requests are limited (`per_client.requests`).
    pub fn limits_requests(&self) -> bool {
        self.per_client
            .as_ref()
            .is_some_and(|(limits, _)| limits.requests.is_some())
    }

    /// The per-client table, when there are limits.
    pub fn clients(&self) -> Option<&ClientTable> {
        self.per_client.as_ref().map(|(_, t)| &**t)
    }
}

/// The country the database gives `ip` (`country.iso_code`, else
/// `registered_country.iso_code`; `--` when it has none or cannot read its
/// record), checked against `deny` then `allow`. Borrowed from the
/// database: a lookup allocates nothing.
fn country_admits(c: &weir_config::Countries, ip: IpAddr) -> bool {
    use maxminddb::PathElement::Key;
    let found = c.database.reader.lookup(ip.to_canonical()).ok();
    let code = found
        .as_ref()
        .and_then(|f| {
            [
                [Key("country"), Key("iso_code")],
                [Key("registered_country"), Key("iso_code")],
            ]
            .iter()
            .find_map(|path| f.decode_path::<&str>(path).ok().flatten())
        })
        .unwrap_or("--");
    if c.deny.iter().any(|d| d.eq_ignore_ascii_case(code)) {
        return false;
    }
    c.allow
        .as_ref()
        .is_none_or(|a| a.iter().any(|x| x.eq_ignore_ascii_case(code)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_client(rate: Option<u32>, burst: u32) -> weir_config::Firewall {
        weir_config::Firewall {
            per_client: Some(weir_config::PerClient {
                rate,
                burst,
                concurrent: Some(10),
                requests: None,
                requests_burst: 1,
                ipv4_prefix: 32,
                ipv6_prefix: 64,
                max_tracked: 1000,
            }),
            ..weir_config::Firewall::default()
        }
    }

    /// A rate a reload adds to a kept table holds past the sweeps: the
    /// sweeper forgets clients by the limits served now, not by those the
    /// table was made with (which had no rate, so any client without an
    /// open connection looked forgettable and got a fresh bucket).
    #[tokio::test(start_paused = true)]
    async fn a_rate_added_by_a_reload_survives_the_sweeps() {
        let rules = RuntimeRules::new(Vec::new());
        let first = Firewall::new(Some(&per_client(None, 1)), &rules, None);
        let reloaded = Firewall::new(Some(&per_client(Some(1), 5)), &rules, Some(&first));
        reloaded.activate();
        assert!(std::ptr::eq(
            first.clients().expect("table"),
            reloaded.clients().expect("table")
        ));
        drop(first);
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        for _ in 0..5 {
            drop(reloaded.admit(ip).expect("within the burst"));
        }
        assert_eq!(reloaded.admit(ip).err(), Some(Block::RateLimit));
        // Past a few sweeps (paused time: the buckets do not refill).
        for _ in 0..3 {
            tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(1)).await;
        }
        assert_eq!(reloaded.clients().map(ClientTable::tracked), Some(1));
        assert_eq!(reloaded.admit(ip).err(), Some(Block::RateLimit));
    }

    /// A reload that fails after its listeners were built (an address in
    /// use, a probe's TLS settings) changes nothing: the kept table goes on
    /// forgetting clients by the running limits, not by the staged ones
    /// (which had no rate, and would have handed every client a fresh burst
    /// at each sweep).
    #[tokio::test(start_paused = true)]
    async fn a_reload_that_fails_after_staging_leaves_the_running_limits() {
        let rules = RuntimeRules::new(Vec::new());
        let running = Firewall::new(Some(&per_client(Some(1), 5)), &rules, None);
        running.activate();
        let staged = Firewall::new(Some(&per_client(None, 5)), &rules, Some(&running));
        drop(staged);
        let ip: IpAddr = "192.0.2.8".parse().expect("ip");
        for _ in 0..5 {
            drop(running.admit(ip).expect("within the burst"));
        }
        assert_eq!(running.admit(ip).err(), Some(Block::RateLimit));
        for _ in 0..3 {
            tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(1)).await;
        }
        assert_eq!(running.admit(ip).err(), Some(Block::RateLimit));
    }
}
