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
    /// The source opened new connections faster than `per_client.rate`.
    RateLimit,
    /// The source has `per_client.concurrent` connections open already.
    Concurrency,
    /// An HTTP request over `per_client.requests` per second (answered 429;
    /// the connection stays).
    RequestRate,
}

impl Block {
    pub const ALL: [Block; 6] = [
        Block::Banned,
        Block::DenyList,
        Block::NotAllowed,
        Block::RateLimit,
        Block::Concurrency,
        Block::RequestRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Block::Banned => "banned",
            Block::DenyList => "deny_list",
            Block::NotAllowed => "not_allowed",
            Block::RateLimit => "rate_limit",
            Block::Concurrency => "concurrency",
            Block::RequestRate => "request_rate",
        }
    }

    /// The `reason` of `weir_listener_connections_rejected_total` and of the
    /// access log: `firewall` for a list, `rate_limit` for a limit.
    pub fn reason(self) -> Reason {
        match self {
            Block::Banned | Block::DenyList | Block::NotAllowed => Reason::Firewall,
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
            let table = kept.unwrap_or_else(|| {
                let t = Arc::new(ClientTable::new(&limits));
                ClientTable::spawn_sweeper(&t, limits, SWEEP_EVERY);
                t
            });
            (limits, table)
        });
        Firewall {
            runtime: Arc::clone(runtime),
            deny: AddrSet::new(&config.deny),
            allow: config.allow.as_ref().map(AddrSet::new),
            per_client,
        }
    }

    /// Lets a new connection from `ip` in (with its hold on the client's
    /// count of open connections, when counted), or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Option<ClientSlot>, Block> {
        match self.runtime.check(ip) {
            Some(Action::Deny) => return Err(Block::Banned),
            Some(Action::Allow) => {}
            None => {
                if self.deny.contains(ip) {
                    return Err(Block::DenyList);
                }
                if let Some(allow) = &self.allow
                    && !allow.contains(ip)
                {
                    return Err(Block::NotAllowed);
                }
            }
        }
        match &self.per_client {
            Some((limits, table)) => table.connect(ip, limits, Instant::now()),
            None => Ok(None),
        }
    }

    /// False when `ip` is over `per_client.requests` (an HTTP request).
    pub fn admit_request(&self, ip: IpAddr) -> bool {
        match &self.per_client {
            Some((limits, table)) => table.request(ip, limits, Instant::now()),
            None => true,
        }
    }

    /// The per-client table, when there are limits.
    pub fn clients(&self) -> Option<&ClientTable> {
        self.per_client.as_ref().map(|(_, t)| &**t)
    }
}
