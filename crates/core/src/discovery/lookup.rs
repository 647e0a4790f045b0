//! Asking DNS, through hickory's resolver: SRV records and their targets'
//! addresses, or a name's A and AAAA records, turned into an [`Outcome`].
//! Everything in an answer is hostile input: records of other types are
//! skipped, a target without addresses is left out (and said), a target
//! whose lookup fails keeps the addresses it last had (so a transient
//! failure drains nothing, and the rest of the answer still applies), and
//! the whole resolution is bounded by the pool's `discover.timeout`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use weir_config::{Discover, DiscoverQuery};

use super::plan::{Failure, Found, Outcome};

/// SRV targets resolved per answer at most: a huge answer costs bounded work.
const MAX_TARGETS: usize = 256;

/// A resolver for one pool's `discover`.
pub(crate) struct Lookup {
    resolver: TokioResolver,
    spec: Discover,
    /// The addresses each SRV target last resolved to.
    targets: std::sync::Mutex<std::collections::HashMap<String, Vec<IpAddr>>>,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup").field("spec", &self.spec).finish()
    }
}

impl Lookup {
    /// A resolver asking `spec.resolver`, or the system's servers
    /// (`/etc/resolv.conf`). Its cache is off: refreshes follow the TTLs
    /// themselves, and each one must ask the server.
    pub(crate) fn new(spec: &Discover) -> Result<Lookup, String> {
        let mut options = ResolverOpts::default();
        options.timeout = spec.timeout;
        options.attempts = 2;
        options.cache_size = 0;
        let builder = match spec.resolver {
            Some(server) => {
                let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                for c in &mut ns.connections {
                    c.port = server.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("the system's resolver configuration: {e}"))?,
        };
        let resolver = builder
            .with_options(options)
            .build()
            .map_err(|e| format!("cannot build a resolver: {e}"))?;
        Ok(Lookup {
            resolver,
            spec: spec.clone(),
            targets: std::sync::Mutex::default(),
        })
    }

    /// Resolves once, within the pool's timeout.
    pub(crate) async fn resolve(&self) -> Outcome {
        // Retries included; the resolver's own timeout is per attempt.
        let bound = self.spec.timeout * 3;
        let resolution = async {
            match &self.spec.query {
                DiscoverQuery::Srv(name) => self.srv(name).await,
                DiscoverQuery::Name { name, port } => self.addresses(name, *port).await,
            }
        };
        tokio::time::timeout(bound, resolution)
            .await
            .unwrap_or_else(|_| Outcome::Failed {
                why: Failure::Timeout,
                detail: format!("no answer within {bound:?}"),
            })
    }

    async fn srv(&self, name: &str) -> Outcome {
        let lookup = match self.resolver.lookup(name, RecordType::SRV).await {
            Ok(l) => l,
            Err(e) => return failed(&e),
        };
        let mut valid_until = lookup.valid_until();
        let mut found = Vec::new();
        let mut unresolved = Vec::new();
        for srv in lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv),
                _ => None,
            })
            .take(MAX_TARGETS)
        {
            // "." as the target: the service is decidedly not available here.
            if srv.target.is_root() {
                continue;
            }
            let target = srv.target.to_string();
            let ips: Vec<IpAddr> = match self.resolver.lookup_ip(srv.target.clone()).await {
                Ok(ips) => {
                    valid_until = valid_until.min(ips.valid_until());
                    let ips: Vec<IpAddr> = ips.iter().collect();
                    self.remember(&target, &ips);
                    ips
                }
                Err(e) => match failed(&e) {
                    // The target has no address: an answer, the target is left out.
                    Outcome::Empty { .. } => {
                        self.remember(&target, &[]);
                        unresolved.push(format!("{target}: {e}"));
                        continue;
                    }
                    // The target's lookup failed: keep what it had, so that a
                    // transient failure drains none of its backends.
                    _ => {
                        let kept = self.known(&target);
                        tracing::warn!(query = name, %target, error = %e, kept = kept.len(), "an SRV target's addresses could not be resolved; keeping its last ones");
                        kept
                    }
                },
            };
            for ip in ips {
                found.push(Found {
                    addr: SocketAddr::new(ip, srv.port),
                    tier: u32::from(srv.priority),
                    weight: u32::from(srv.weight),
                });
            }
        }
        if !unresolved.is_empty() {
            tracing::warn!(query = name, targets = ?unresolved, "SRV targets without addresses were left out");
        }
        records(found, valid_until)
    }

    fn remember(&self, target: &str, ips: &[IpAddr]) {
        if let Ok(mut known) = self.targets.lock() {
            // Bounded like the targets of one answer.
            if known.len() >= MAX_TARGETS && !known.contains_key(target) {
                known.clear();
            }
            known.insert(target.to_owned(), ips.to_vec());
        }
    }

    fn known(&self, target: &str) -> Vec<IpAddr> {
        self.targets
            .lock()
            .ok()
            .and_then(|k| k.get(target).cloned())
            .unwrap_or_default()
    }

    async fn addresses(&self, name: &str, port: u16) -> Outcome {
        match self.resolver.lookup_ip(name).await {
            Ok(ips) => {
                let found = ips
                    .iter()
                    .map(|ip: IpAddr| Found {
                        addr: SocketAddr::new(ip, port),
                        tier: self.spec.tier,
                        weight: self.spec.weight,
                    })
                    .collect();
                records(found, ips.valid_until())
            }
            Err(e) => failed(&e),
        }
    }
}

fn records(found: Vec<Found>, valid_until: Instant) -> Outcome {
    if found.is_empty() {
        return Outcome::Empty {
            ttl: Some(valid_until.saturating_duration_since(Instant::now())),
        };
    }
    Outcome::Records {
        found,
        ttl: valid_until.saturating_duration_since(Instant::now()),
    }
}

/// An error as an outcome: "no records" (NXDOMAIN, or NOERROR without
/// records of the type) is an answer; anything else is a failure.
fn failed(e: &NetError) -> Outcome {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => Outcome::Empty {
            ttl: no.negative_ttl.map(|s| Duration::from_secs(u64::from(s))),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => Outcome::Failed {
            why: match *code {
                ResponseCode::ServFail | ResponseCode::Refused => Failure::ServerFailure,
                _ => Failure::Error,
            },
            detail: e.to_string(),
        },
        NetError::Timeout => Outcome::Failed {
            why: Failure::Timeout,
            detail: e.to_string(),
        },
        _ => Outcome::Failed {
            why: Failure::Error,
            detail: e.to_string(),
        },
    }
}
