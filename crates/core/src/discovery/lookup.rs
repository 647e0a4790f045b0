//! Asking DNS, through hickory's resolver: SRV records and their targets'
//! addresses, or a name's A and AAAA records, turned into an [`Outcome`].
//! Everything in an answer is hostile input: records of other types are
//! skipped, a target without addresses is left out (and said), targets are
//! asked about a few at a time, a target whose lookup fails or is still
//! unanswered near the end keeps the addresses it last had (so a transient
//! failure drains nothing, and the rest of the answer still applies), and
//! the whole resolution is bounded by the pool's `discover.timeout`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
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

/// Addresses taken of one answer at most (of a name, of each SRV target's
/// family, and of an SRV answer's records together); the pool's set takes
/// `MAX_MEMBERS` of them.
const MAX_FOUND: usize = super::plan::MAX_PENDING;

/// SRV targets asked about at the same time: more than a DNS answer
/// usually names (512 bytes hold about 20 records, 4,096 about 150), so
/// that a few silent ones leave room for the rest.
const TARGETS_AT_ONCE: usize = 64;

/// The first few of a list for a log line, and how many more there were.
struct Shown<'a>(&'a [String]);

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const FIRST: usize = 8;
        let mut list = f.debug_list();
        list.entries(self.0.iter().take(FIRST));
        if self.0.len() > FIRST {
            list.entry(&format_args!("and {} more", self.0.len() - FIRST));
        }
        list.finish()
    }
}

/// One SRV record, ordered by priority, then target, port and weight, the
/// larger weight first (RFC 2782: the more preferred of the same priority).
#[derive(Debug, PartialEq, Eq)]
struct SrvRecord {
    priority: u16,
    target: String,
    port: u16,
    weight: u16,
}

impl Ord for SrvRecord {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.priority, &self.target, self.port, other.weight).cmp(&(
            other.priority,
            &other.target,
            other.port,
            self.weight,
        ))
    }
}

impl PartialOrd for SrvRecord {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The addresses each SRV target (or a `name` query's name) last resolved
/// to: shared by the lookups of one pool's question, so that a reload that
/// restarts the pool's refresh (another interval, server, timeout) keeps
/// what a failed target keeps.
pub(crate) type Known =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<IpAddr>>>>;

/// A resolver for one pool's `discover`.
pub(crate) struct Lookup {
    resolver: TokioResolver,
    spec: Discover,
    targets: Known,
    streaks: Streaks,
    /// The last answer named more targets than are asked about.
    capped: std::sync::atomic::AtomicBool,
}

/// The names one of whose address families fails while the other answers.
/// A resolver that never answers AAAA, say, fails that family at every
/// refresh (each `min_interval`, every second by default): warned once
/// when the failures start and said once when they end, not at each.
#[derive(Debug, Default)]
struct Streaks(std::sync::Mutex<std::collections::HashSet<(String, bool)>>);

impl Streaks {
    /// Whether this failure of `name`'s family (`v4`: A, else AAAA) starts
    /// a run of them.
    fn failed(&self, name: &str, v4: bool) -> bool {
        let Ok(mut failing) = self.0.lock() else {
            return true;
        };
        let key = (name.to_owned(), v4);
        // Bounded like the remembered targets (two families each).
        if failing.len() >= 2 * MAX_TARGETS && !failing.contains(&key) {
            failing.clear();
        }
        failing.insert(key)
    }

    /// Whether this answer of `name`'s family ends a run of failures.
    fn answered(&self, name: &str, v4: bool) -> bool {
        self.0
            .lock()
            .is_ok_and(|mut failing| !failing.is_empty() && failing.remove(&(name.to_owned(), v4)))
    }
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
    pub(crate) fn new(spec: &Discover, known: Known) -> Result<Lookup, String> {
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
        // weir's own options, EDNS0 on (resolv.conf's `options` line turns
        // it off unless it names it); its `search` domains are never used,
        // as questions are absolute (see `absolute`).
        let resolver = builder
            .with_options(options)
            .build()
            .map_err(|e| format!("cannot build a resolver: {e}"))?;
        Ok(Lookup {
            resolver,
            spec: spec.clone(),
            targets: known,
            streaks: Streaks::default(),
            capped: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Resolves once, within the pool's timeout.
    pub(crate) async fn resolve(&self) -> Outcome {
        // Retries included; the resolver's own timeout is per attempt.
        let bound = self.spec.timeout * 3;
        let deadline = tokio::time::Instant::now() + bound;
        let resolution = async {
            match &self.spec.query {
                DiscoverQuery::Srv(name) => self.srv(name, deadline).await,
                DiscoverQuery::Name { name, port } => {
                    // A family that answered applies without the other.
                    self.addresses(name, *port, before_end(deadline)).await
                }
            }
        };
        tokio::time::timeout_at(deadline, resolution)
            .await
            .unwrap_or_else(|_| Outcome::Failed {
                why: Failure::Timeout,
                detail: format!("no answer within {bound:?}"),
            })
    }

    /// The SRV records, then their targets' addresses, asked at the same
    /// time (a few at once) and each until `deadline` at most: a target
    /// whose lookup is slow or fails keeps its last addresses, and neither
    /// it nor the number of targets keeps the rest of the answer from
    /// applying.
    async fn srv(&self, name: &str, deadline: tokio::time::Instant) -> Outcome {
        let lookup = match self
            .resolver
            .lookup(absolute(name).as_ref(), RecordType::SRV)
            .await
        {
            Ok(l) => l,
            Err(e) => return failed(&e),
        };
        // The targets that answered apply without the silent ones.
        let targets_until = before_end(deadline);
        let mut unusable = 0usize;
        let mut records: Vec<SrvRecord> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv),
                _ => None,
            })
            // "." as the target: the service is decidedly not available here.
            .filter(|srv| !srv.target.is_root())
            .filter(|srv| {
                // Port 0 reaches no service.
                unusable += usize::from(srv.port == 0);
                srv.port != 0
            })
            .map(|srv| SrvRecord {
                priority: srv.priority,
                target: srv.target.to_string(),
                port: srv.port,
                weight: srv.weight,
            })
            .collect();
        let (targets, left_out) = pick_targets(&mut records);
        self.note_capped(name, left_out);
        // Targets that left the answer are forgotten first: what is
        // remembered stays within one answer's targets, and a new one never
        // pushes out those still in it.
        let current: std::collections::HashSet<String> = targets.iter().cloned().collect();
        self.keep_targets(&current);
        // The lookups as a list first: a stream mapped by a closure over
        // borrowed names is not `Send` to the compiler.
        let lookups: Vec<_> = targets
            .iter()
            .map(|t| self.target(t.as_str(), targets_until))
            .collect();
        let answers: Vec<_> = futures_util::stream::iter(lookups)
            // Unordered: a lookup that is done frees its place at once, so
            // that a silent target holds up none beyond its own. The order
            // does not matter: the answers are looked up by target below.
            .buffer_unordered(TARGETS_AT_ONCE)
            .collect()
            .await;
        let mut valid_until = lookup.valid_until();
        let mut addresses: std::collections::HashMap<&str, Vec<IpAddr>> =
            std::collections::HashMap::new();
        let mut unresolved = Vec::new();
        let mut kept = Vec::new();
        // The first target whose lookup failed (not "no address"): with no
        // address found at all, the answer is that failure, not "empty".
        let mut target_failure = None;
        // Targets whose lookup was answered (with addresses or none).
        let mut answered = 0usize;
        let mut whole = left_out == 0;
        for (target, looked) in answers {
            let ips: Vec<IpAddr> = match looked {
                Ok(ips) => {
                    answered += 1;
                    valid_until = valid_until.min(ips.valid_until);
                    whole &= ips.whole;
                    ips.found
                }
                Err(e) if matches!(failed(&e), Outcome::Empty { .. }) => {
                    // The target has no address: an answer, the target is
                    // left out (and `ips` forgot what it had).
                    answered += 1;
                    unresolved.push(format!("{target}: {e}"));
                    continue;
                }
                // The target's lookup failed or took too long: keep what it
                // had, so that a transient failure drains none of its
                // backends.
                Err(e) => {
                    target_failure.get_or_insert_with(|| failed(&e));
                    let why = match e {
                        NetError::Timeout => "no answer in time".to_owned(),
                        e => e.to_string(),
                    };
                    let last = self.known(target);
                    kept.push(format!("{target}: {why} (kept {})", last.len()));
                    last
                }
            };
            addresses.insert(target, ips);
        }
        let mut found = srv_found(&records, &addresses);
        let before = found.len();
        found.retain(|f| super::plan::usable(f.addr));
        unusable += before - found.len();
        // After the unusable ones are gone: a weight beside none left is
        // no weight to weigh against.
        super::plan::srv_weights(&mut found);
        if !kept.is_empty() {
            tracing::warn!(query = name, count = kept.len(), targets = ?Shown(&kept), "SRV targets' addresses could not be resolved; keeping their last ones");
        }
        if !unresolved.is_empty() {
            tracing::warn!(query = name, count = unresolved.len(), targets = ?Shown(&unresolved), "SRV targets without addresses were left out");
        }
        if unusable > 0 {
            tracing::debug!(
                query = name,
                unusable,
                "records with port 0 or an unspecified, multicast or broadcast address were left out"
            );
        }
        // No target answered: the question failed, whatever addresses were
        // kept (the pool stays as it is, and the failure is counted, not
        // taken for a success that refreshes `last_success`).
        match target_failure {
            Some(failure) if found.is_empty() || answered == 0 => failure,
            _ => records_outcome(found, valid_until, whole && kept.is_empty()),
        }
    }

    /// Says when an answer starts and stops naming more targets than are
    /// asked about: once each, not at every refresh.
    fn note_capped(&self, name: &str, left_out: usize) {
        let was = self
            .capped
            .swap(left_out > 0, std::sync::atomic::Ordering::Relaxed);
        if left_out > 0 && !was {
            tracing::warn!(
                query = name,
                max = MAX_TARGETS,
                left_out,
                "the SRV answer names more targets than are asked about; the first by priority and name are used (said again when it no longer does)"
            );
        } else if left_out == 0 && was {
            tracing::info!(
                query = name,
                "the SRV answer's targets are all asked about again"
            );
        }
    }

    /// One SRV target's addresses, asked until `until` at most.
    async fn target<'t>(
        &self,
        target: &'t str,
        until: tokio::time::Instant,
    ) -> (&'t str, Result<Ips, NetError>) {
        (target, self.ips(target, until).await)
    }

    /// A name's A and AAAA records, asked at once. When one family's
    /// question fails (no answer, SERVFAIL) and the other's is answered,
    /// the failed family keeps the addresses the name last had in it, so
    /// that one lost query drains none of them; when both fail, or nothing
    /// is known and the other family has none, the failure is the answer.
    /// (hickory's `lookup_ip` would return the half that answered as if it
    /// were the whole.)
    async fn ips(&self, name: &str, until: tokio::time::Instant) -> Result<Ips, NetError> {
        // Asked absolute; what is known of it stays under the name as
        // written (as `seed` puts it).
        let question = absolute(name);
        let question = question.as_ref();
        let ask = |family| async move {
            tokio::time::timeout_at(until, self.resolver.lookup(question, family))
                .await
                .unwrap_or(Err(NetError::Timeout))
        };
        let (a, aaaa) = tokio::join!(ask(RecordType::A), ask(RecordType::AAAA));
        let mut found = Vec::new();
        let mut valid_until: Option<Instant> = None;
        let mut empty = None;
        let mut failure = None;
        for (answer, v4) in [(a, true), (aaaa, false)] {
            // Records or none: either is an answer.
            let replied = match &answer {
                Ok(_) => true,
                Err(e) => matches!(failed(e), Outcome::Empty { .. }),
            };
            if replied && self.streaks.answered(name, v4) {
                let family = if v4 { "A" } else { "AAAA" };
                tracing::info!(
                    name,
                    family,
                    "the address family's question is answered again"
                );
            }
            match answer {
                Ok(l) => {
                    let until = l.valid_until();
                    valid_until = Some(valid_until.map_or(until, |v| v.min(until)));
                    found.extend(
                        l.answers()
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::A(a) if v4 => Some(IpAddr::V4(a.0)),
                                RData::AAAA(a) if !v4 => Some(IpAddr::V6(a.0)),
                                _ => None,
                            })
                            .take(MAX_FOUND),
                    );
                }
                Err(e) if matches!(failed(&e), Outcome::Empty { .. }) => {
                    empty.get_or_insert(e);
                }
                Err(e) => {
                    let kept: Vec<IpAddr> = self
                        .known(name)
                        .into_iter()
                        .filter(|ip| ip.is_ipv4() == v4)
                        .collect();
                    found.extend(kept);
                    failure.get_or_insert((e, v4));
                }
            }
        }
        let answered = valid_until.is_some() || empty.is_some();
        if answered {
            // What DNS said of the family that answered (an empty family
            // forgets its addresses), and what the other kept.
            self.remember(name, &found);
        }
        if let Some((e, v4)) = &failure
            && answered
            && !found.is_empty()
        {
            let family = if *v4 { "A" } else { "AAAA" };
            if self.streaks.failed(name, *v4) {
                tracing::warn!(name, family, error = %e, "one address family's question failed; it keeps its last addresses (said again when it is answered)");
            } else {
                tracing::debug!(name, family, error = %e, "the address family's question failed again");
            }
        }
        let whole = failure.is_none();
        let failure = failure.map(|(e, _)| e);
        let valid_until = match (failure, valid_until, empty) {
            // Neither family answered: the question failed, whatever is known.
            (Some(e), _, _) if found.is_empty() || !answered => return Err(e),
            // A family failed and what it had is kept: asked again as soon
            // as a failed question would be (`min_interval`).
            (Some(_), _, _) => Instant::now(),
            (None, Some(v), _) => v,
            (None, None, Some(e)) => return Err(e),
            (None, None, None) => Instant::now(),
        };
        Ok(Ips {
            found,
            valid_until,
            whole,
        })
    }

    /// The addresses a `name` query's name has as far as the pool knows,
    /// set before each question: what a family whose question fails keeps.
    /// (SRV targets' addresses are remembered per target by the lookup.)
    pub(crate) fn seed(&self, ips: &[IpAddr]) {
        if let DiscoverQuery::Name { name, .. } = &self.spec.query {
            self.remember(name, ips);
        }
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

    /// Forgets the remembered addresses of targets not in `current`.
    fn keep_targets(&self, current: &std::collections::HashSet<String>) {
        if let Ok(mut known) = self.targets.lock() {
            known.retain(|target, _| current.contains(target));
        }
    }

    fn known(&self, target: &str) -> Vec<IpAddr> {
        self.targets
            .lock()
            .ok()
            .and_then(|k| k.get(target).cloned())
            .unwrap_or_default()
    }

    async fn addresses(&self, name: &str, port: u16, until: tokio::time::Instant) -> Outcome {
        match self.ips(name, until).await {
            Ok(ips) => {
                let found = ips
                    .found
                    .into_iter()
                    .map(|ip| Found {
                        addr: SocketAddr::new(ip, port),
                        tier: self.spec.tier,
                        weight: self.spec.weight,
                    })
                    // Unspecified, multicast, broadcast: never a backend.
                    .filter(|f| super::plan::usable(f.addr))
                    .collect();
                records_outcome(found, ips.valid_until, ips.whole)
            }
            Err(e) => failed(&e),
        }
    }
}

/// Puts an SRV answer's records in an order of their own, duplicates
/// gone, and picks the targets to ask about: the first [`MAX_TARGETS`]
/// distinct ones in that order (best priority first), and how many more
/// there were. The same records in any order give the same targets, on
/// every instance and at every refresh.
/// The backends of SRV `records` (sorted, by priority first) whose targets
/// have `addresses`: one record per target and port (the most preferred),
/// and at most `MAX_FOUND` in all, so that an answer repeating one target
/// thousands of times, each with thousands of addresses, costs no more than
/// the addresses it can give.
fn srv_found(
    records: &[SrvRecord],
    addresses: &std::collections::HashMap<&str, Vec<IpAddr>>,
) -> Vec<Found> {
    let mut found = Vec::new();
    let mut pairs = std::collections::HashSet::new();
    for r in records {
        if !pairs.insert((r.target.as_str(), r.port)) {
            continue;
        }
        for ip in addresses.get(r.target.as_str()).into_iter().flatten() {
            if found.len() >= MAX_FOUND {
                return found;
            }
            found.push(Found {
                addr: SocketAddr::new(*ip, r.port),
                tier: u32::from(r.priority),
                weight: u32::from(r.weight),
            });
        }
    }
    found
}

fn pick_targets(records: &mut Vec<SrvRecord>) -> (Vec<String>, usize) {
    records.sort_unstable();
    records.dedup();
    let mut targets = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut left_out = 0;
    for r in records.iter() {
        if seen.insert(r.target.as_str()) {
            if targets.len() < MAX_TARGETS {
                targets.push(r.target.clone());
            } else {
                left_out += 1;
            }
        }
    }
    (targets, left_out)
}

/// When the questions inside a resolution bounded by `deadline` give up:
/// an eighth of the time left before it, so that what did arrive is still
/// put together and applied rather than lost with the whole.
fn before_end(deadline: tokio::time::Instant) -> tokio::time::Instant {
    deadline - deadline.saturating_duration_since(tokio::time::Instant::now()) / 8
}

/// A name's addresses, both families, and until when the answer holds.
pub(crate) struct Ips {
    found: Vec<IpAddr>,
    valid_until: Instant,
    /// Both families answered (none kept its last addresses).
    whole: bool,
}

fn records_outcome(found: Vec<Found>, valid_until: Instant, whole: bool) -> Outcome {
    if found.is_empty() {
        return Outcome::Empty {
            ttl: Some(valid_until.saturating_duration_since(Instant::now())),
        };
    }
    Outcome::Records {
        found,
        ttl: valid_until.saturating_duration_since(Instant::now()),
        whole,
    }
}

/// An error as an outcome: "no records" (NXDOMAIN, or NOERROR without
/// records of the type) is an answer; anything else is a failure.
/// `name` as an absolute name: the question asked is the name written,
/// never completed by resolv.conf's `search` domains, as HAProxy's and
/// nginx's resolvers ask (hickory would go on to the next completion after
/// any failure, and a SERVFAIL of the name would be taken for the NXDOMAIN,
/// or the records, of a longer one).
fn absolute(name: &str) -> std::borrow::Cow<'_, str> {
    if name.ends_with('.') {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(format!("{name}."))
    }
}

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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, Ordering};

    use hickory_resolver::proto::op::{Message, MessageType, OpCode};
    use hickory_resolver::proto::rr::rdata::{A, AAAA, SRV};
    use hickory_resolver::proto::rr::{Name, Record};

    use super::*;

    /// A hostile SRV answer: one target named 3,000 times (weights apart),
    /// with 4,000 addresses, gives its 4,000 backends once, not twelve
    /// million; a second port of it adds its own, up to `MAX_FOUND`.
    #[test]
    fn an_srv_answer_repeating_a_target_costs_its_addresses_only() {
        let mut records: Vec<SrvRecord> = (0..3_000u16)
            .map(|weight| SrvRecord {
                priority: 1 + weight % 2,
                target: "t.test.".to_owned(),
                port: 80,
                weight,
            })
            .collect();
        records.push(SrvRecord {
            priority: 5,
            target: "t.test.".to_owned(),
            port: 81,
            weight: 1,
        });
        records.sort_unstable();
        let ips: Vec<IpAddr> = (0..4_000u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let addresses = std::collections::HashMap::from([("t.test.", ips)]);
        let found = srv_found(&records, &addresses);
        assert_eq!(found.len(), MAX_FOUND);
        // The most preferred record of the pair: priority 1, and of those
        // the largest weight (RFC 2782), not the smallest.
        assert!(
            found
                .iter()
                .all(|f| f.addr.port() == 80 && f.tier == 1 && f.weight == 2998)
        );
    }

    /// How the test's DNS server answers a family's question.
    const ANSWER: u8 = 0;
    const SERVFAIL: u8 = 1;
    const SILENT: u8 = 2;
    const NONE: u8 = 3;

    /// A DNS server on loopback: `api.test.` has 127.0.0.1 and ::1, each
    /// family answered as its mode says.
    async fn server(v4: Arc<AtomicU8>, v6: Arc<AtomicU8>) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = query.queries.first().cloned() else {
                    continue;
                };
                let mode = match q.query_type() {
                    RecordType::A => v4.load(Ordering::SeqCst),
                    RecordType::AAAA => v6.load(Ordering::SeqCst),
                    RecordType::SRV => ANSWER,
                    _ => NONE,
                };
                let id = query.metadata.id;
                let mut answer = match mode {
                    SILENT => continue,
                    SERVFAIL => Message::error_msg(id, OpCode::Query, ResponseCode::ServFail),
                    _ => Message::new(id, MessageType::Response, OpCode::Query),
                };
                answer.metadata.recursion_desired = true;
                answer.metadata.recursion_available = true;
                answer.add_query(q.clone());
                if mode == ANSWER {
                    let name = Name::from_ascii("api.test.").expect("name");
                    let (owner, data) = match q.query_type() {
                        RecordType::A => (name, RData::A(A(Ipv4Addr::LOCALHOST))),
                        RecordType::SRV => (
                            Name::from_ascii("_api._tcp.test.").expect("name"),
                            RData::SRV(SRV::new(1, 1, 80, name)),
                        ),
                        _ => (name, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))),
                    };
                    answer.add_answer(Record::from_rdata(owner, 60, data));
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        addr
    }

    fn lookup(resolver: SocketAddr) -> Lookup {
        asking(
            resolver,
            DiscoverQuery::Name {
                name: "api.test.".into(),
                port: 80,
            },
        )
    }

    fn asking(resolver: SocketAddr, query: DiscoverQuery) -> Lookup {
        Lookup::new(
            &Discover {
                query,
                resolver: Some(resolver),
                min_interval: Duration::from_secs(1),
                max_interval: Duration::from_secs(60),
                timeout: Duration::from_millis(200),
                hold: Duration::from_secs(60),
                tier: 0,
                weight: 1,
            },
            Known::default(),
        )
        .expect("lookup")
    }

    fn server_failure(outcome: &Outcome) -> bool {
        matches!(
            outcome,
            Outcome::Failed {
                why: Failure::ServerFailure,
                ..
            }
        )
    }

    /// The test's DNS server, both families answered until told otherwise.
    async fn answering() -> (Arc<AtomicU8>, Arc<AtomicU8>, SocketAddr) {
        let (v4, v6) = (
            Arc::new(AtomicU8::new(ANSWER)),
            Arc::new(AtomicU8::new(ANSWER)),
        );
        let dns = server(Arc::clone(&v4), Arc::clone(&v6)).await;
        (v4, v6, dns)
    }

    fn ips(outcome: &Outcome) -> Vec<String> {
        match outcome {
            Outcome::Records { found, .. } => {
                let mut v: Vec<String> = found.iter().map(|f| f.addr.ip().to_string()).collect();
                v.sort();
                v
            }
            other => panic!("{other:?}"),
        }
    }

    /// More targets than are asked about: the same ones are picked whatever
    /// the order of the records, best priority first, each asked once.
    #[test]
    fn the_targets_picked_from_a_large_answer_do_not_depend_on_its_order() {
        let record = |i: usize| SrvRecord {
            priority: u16::try_from(i % 3).expect("small"),
            target: format!("t{i:04}.test."),
            port: 5432,
            weight: 1,
        };
        let n = MAX_TARGETS + 50;
        let mut forward: Vec<SrvRecord> = (0..n).map(record).collect();
        // The same records reversed, each twice (a target on two ports too).
        let mut backward: Vec<SrvRecord> =
            (0..n).rev().flat_map(|i| [record(i), record(i)]).collect();
        backward.push(SrvRecord {
            port: 5433,
            ..record(0)
        });
        let (a, left_a) = pick_targets(&mut forward);
        let (b, left_b) = pick_targets(&mut backward);
        assert_eq!(a, b);
        assert_eq!((a.len(), left_a, left_b), (MAX_TARGETS, 50, 50));
        // Priority 0 first: every one of them is in.
        let zero = (0..n).filter(|i| i % 3 == 0).count();
        assert!(
            a[..zero]
                .iter()
                .all(|t| forward.iter().any(|r| &r.target == t && r.priority == 0))
        );
        assert_eq!(
            backward.len(),
            n + 1,
            "duplicates gone, the second port kept"
        );
    }

    /// A family failing at every refresh is warned when it starts failing
    /// and said when it answers again, not at each refresh.
    #[test]
    fn a_failing_family_is_warned_once_per_run_of_failures() {
        let s = Streaks::default();
        assert!(!s.answered("db.example", false), "nothing was failing");
        assert!(
            s.failed("db.example", false),
            "the first failure starts a run"
        );
        assert!(!s.failed("db.example", false), "the next is the same run");
        assert!(s.failed("db.example", true), "the other family has its own");
        assert!(s.failed("web.example", false), "another name has its own");
        assert!(s.answered("db.example", false), "an answer ends the run");
        assert!(!s.answered("db.example", false));
        assert!(s.failed("db.example", false), "a new run starts");
        // Bounded: a flood of names clears the table rather than growing it.
        for i in 0..3 * MAX_TARGETS {
            s.failed(&format!("n{i}.example"), true);
        }
        assert!(crate::sync::lock(&s.0).len() <= 2 * MAX_TARGETS);
    }

    /// Targets that left the SRV answer are forgotten before its targets
    /// are asked: a new target finds room, and the last addresses of those
    /// still in the answer stay for a failed lookup to keep (the map was
    /// once emptied whole when a new name came to a full one).
    #[tokio::test]
    async fn targets_that_left_the_answer_make_room_for_new_ones() {
        let l = lookup("127.0.0.1:9".parse().expect("addr"));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        for i in 0..MAX_TARGETS - 1 {
            l.remember(&format!("old{i}.test."), &[ip]);
        }
        l.remember("stays.test.", &[ip]);
        let current: std::collections::HashSet<String> =
            ["stays.test.", "new.test."].map(str::to_owned).into();
        l.keep_targets(&current);
        l.remember("new.test.", &[ip]);
        assert_eq!(l.known("stays.test."), [ip]);
        assert_eq!(l.known("new.test."), [ip]);
        assert!(l.known("old0.test.").is_empty());
        assert_eq!(crate::sync::lock(&l.targets).len(), 2);
    }

    /// One family's question failing is not the name losing that family's
    /// addresses: they are kept. The other family still applies alone when
    /// nothing is known (a server that drops AAAA questions), and a failure
    /// with nothing to show is a failure, not an empty answer.
    #[tokio::test]
    async fn a_family_whose_question_fails_keeps_its_addresses() {
        let (v4, v6, dns) = answering().await;
        let known = lookup(dns);
        let whole = |o: &Outcome| matches!(o, Outcome::Records { whole: true, .. });
        let answer = known.resolve().await;
        assert_eq!(ips(&answer), ["127.0.0.1", "::1"]);
        assert!(whole(&answer), "{answer:?}");
        let failing = |l: &Lookup| {
            let set = crate::sync::lock(&l.streaks.0);
            let mut v: Vec<_> = set.iter().map(|(n, v4)| (n.clone(), *v4)).collect();
            v.sort();
            v
        };
        for mode in [SERVFAIL, SILENT] {
            v6.store(mode, Ordering::SeqCst);
            let answer = known.resolve().await;
            assert_eq!(ips(&answer), ["127.0.0.1", "::1"], "{mode}");
            // Not all of it is DNS's word now: what a restart's first
            // answer lacks is not taken for gone.
            assert!(!whole(&answer), "{answer:?}");
            // One run of failures of AAAA, warned at its start.
            assert_eq!(failing(&known), [("api.test.".to_owned(), false)]);
        }
        let fresh = lookup(dns);
        let answer = fresh.resolve().await;
        assert_eq!(ips(&answer), ["127.0.0.1"]);
        assert!(!whole(&answer), "{answer:?}");
        // A fails, AAAA has none: the known IPv4 address stays; with
        // nothing known, the failure is what the answer is.
        v4.store(SERVFAIL, Ordering::SeqCst);
        v6.store(NONE, Ordering::SeqCst);
        assert_eq!(ips(&known.resolve().await), ["127.0.0.1"]);
        let outcome = lookup(dns).resolve().await;
        assert!(server_failure(&outcome), "{outcome:?}");
        // Both fail: a failure, though addresses are known.
        v6.store(SERVFAIL, Ordering::SeqCst);
        let outcome = known.resolve().await;
        assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
        // Both answer again: no run of failures is left.
        v4.store(ANSWER, Ordering::SeqCst);
        v6.store(ANSWER, Ordering::SeqCst);
        assert_eq!(ips(&known.resolve().await), ["127.0.0.1", "::1"]);
        assert_eq!(failing(&known), []);
        // The records go: an empty answer, and nothing of them is kept for
        // a later failure to bring back.
        v4.store(NONE, Ordering::SeqCst);
        v6.store(NONE, Ordering::SeqCst);
        let outcome = known.resolve().await;
        assert!(matches!(outcome, Outcome::Empty { .. }), "{outcome:?}");
        v4.store(SERVFAIL, Ordering::SeqCst);
        let outcome = known.resolve().await;
        assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    }

    /// A name written without its final dot is asked absolute, and what
    /// the pool serves (seeded before the question) is found under it: a
    /// family whose question fails keeps those addresses.
    #[tokio::test]
    async fn a_name_without_its_dot_keeps_the_seeded_addresses() {
        let (_v4, v6, dns) = answering().await;
        let l = asking(
            dns,
            DiscoverQuery::Name {
                name: "api.test".into(),
                port: 80,
            },
        );
        l.seed(&["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")]);
        v6.store(SERVFAIL, Ordering::SeqCst);
        assert_eq!(ips(&l.resolve().await), ["127.0.0.1", "::1"]);
    }

    /// An SRV answer whose one target's questions both fail is that
    /// failure (counted as a server failure, the last set kept), not an
    /// empty answer that would drain it.
    #[tokio::test]
    async fn srv_targets_whose_lookups_fail_are_a_failure_not_empty() {
        let (v4, v6, dns) = answering().await;
        let srv = || asking(dns, DiscoverQuery::Srv("_api._tcp.test.".into()));
        assert_eq!(ips(&srv().resolve().await), ["127.0.0.1", "::1"]);
        v4.store(SERVFAIL, Ordering::SeqCst);
        v6.store(SERVFAIL, Ordering::SeqCst);
        let outcome = srv().resolve().await;
        assert!(server_failure(&outcome), "{outcome:?}");
    }
}
