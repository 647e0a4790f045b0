//! What a DNS answer does to a pool's discovered backends: pure, time given
//! by the caller. The rules the users of other proxies asked for:
//!
//! - a failed resolution (timeout, refusal, server failure) changes nothing:
//!   the last good set serves on (envoy #15457, haproxy #1180);
//! - an empty answer (no records, or a name that no longer exists) is
//!   believed only after it has held for `hold`, so one bad answer or a
//!   registry hiccup never empties a pool;
//! - an address that leaves the answer drains (weight 0, its connections
//!   finish) for `drain_timeout` and only then leaves the pool and its
//!   metrics; one that comes back before that serves again at once;
//! - SRV priority is the tier and SRV weight the weight, scaled into weir's
//!   range tier by tier, with 0 kept as 0 beside weighted records: a
//!   drained backend (haproxy #48); a priority whose records all weigh 0
//!   weighs them alike (RFC 2782);
//! - the set is keyed and ordered by address, so every instance that gets
//!   the same records builds the same pool whatever their order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One address from an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub addr: SocketAddr,
    pub tier: u32,
    /// In SRV's range (0..=65535) or the configured weight; see [`scale`].
    pub weight: u32,
}

/// Why a resolution gave no answer: the `result` label of
/// `weir_discovery_resolutions_total`, beside `ok` and `empty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    /// The server refused, or failed (SERVFAIL).
    ServerFailure,
    /// Anything else: no reachable server, a malformed answer, ...
    Error,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::ServerFailure => "server_failure",
            Failure::Error => "error",
        }
    }
}

/// What one resolution gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Addresses, and for how long the answer may be trusted (its smallest
    /// TTL).
    Records {
        found: Vec<Found>,
        ttl: Duration,
        /// Every question of the answer was answered: no SRV target or
        /// address family failed and kept its last addresses, and no
        /// target was left unasked.
        whole: bool,
    },
    /// An authoritative "none": no such name, or no records of the type.
    Empty {
        ttl: Option<Duration>,
    },
    Failed {
        why: Failure,
        detail: String,
    },
}

impl Outcome {
    /// The `result` label of this outcome.
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Records { .. } => "ok",
            Outcome::Empty { .. } => "empty",
            Outcome::Failed { why, .. } => why.as_str(),
        }
    }
}

/// A discovered backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub tier: u32,
    /// In weir's range (0..=1000).
    pub weight: u32,
    /// Gone from DNS: draining until then.
    pub leaving: Option<Instant>,
}

/// What changed for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    Added {
        addr: SocketAddr,
        tier: u32,
        weight: u32,
    },
    Changed {
        addr: SocketAddr,
        from: (u32, u32),
        to: (u32, u32),
    },
    /// Gone from the answer: drains from now on.
    Leaving { addr: SocketAddr },
    /// Back in the answer before its drain ended.
    Returned { addr: SocketAddr },
    /// Its drain is over: no longer a backend.
    Removed { addr: SocketAddr },
}

impl Delta {
    pub fn addr(&self) -> SocketAddr {
        match *self {
            Delta::Added { addr, .. }
            | Delta::Changed { addr, .. }
            | Delta::Leaving { addr }
            | Delta::Returned { addr }
            | Delta::Removed { addr } => addr,
        }
    }
}

/// Discovered backends a pool has at most, draining ones included: each is a
/// backend with its probes, counters and history, and DNS is not trusted to
/// bound them (one answer over TCP holds thousands of addresses).
pub const MAX_MEMBERS: usize = 1000;

/// Changes waiting for a pool that cannot be rebuilt yet, at most: past it
/// they are folded to the last change of each address ([`fold`]).
pub const MAX_PENDING: usize = 4 * MAX_MEMBERS;

/// Folds `pending` to the last change of each address, in the order of those
/// last changes, once it holds more than `max`: while a pool cannot be
/// rebuilt, DNS answering a different subset every refresh would otherwise
/// pile up changes for as long as the failure lasts. What is kept is what the
/// pool must still take (an address's last word: added, changed, leaving,
/// removed); the steps in between are left out of the history.
pub fn fold(pending: &mut Vec<Delta>, max: usize) {
    if pending.len() <= max {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    let mut last: Vec<Delta> = pending
        .iter()
        .rev()
        .filter(|d| seen.insert(d.addr()))
        .copied()
        .collect();
    last.reverse();
    // More addresses than `max` (never with MAX_MEMBERS per answer): the
    // newest stay.
    let extra = last.len().saturating_sub(max);
    last.drain(..extra);
    *pending = last;
}

/// A pool's discovered backends, by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    pub members: BTreeMap<SocketAddr, Member>,
    /// Since when DNS has said "none" without a break, while the last good
    /// set still serves.
    pub empty_since: Option<Instant>,
    /// Addresses of the last answer left out for want of room
    /// ([`MAX_MEMBERS`]).
    pub left_out: usize,
}

impl Set {
    /// Members that are in DNS now (not draining).
    pub fn present(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.leaving.is_none())
            .count()
    }

    /// Applies `outcome` at `now`; returns what changed.
    pub fn update(
        &mut self,
        outcome: &Outcome,
        now: Instant,
        drain: Duration,
        hold: Duration,
    ) -> Vec<Delta> {
        match outcome {
            Outcome::Failed { .. } => Vec::new(),
            Outcome::Empty { .. } => {
                if self.present() == 0 {
                    return Vec::new();
                }
                let since = *self.empty_since.get_or_insert(now);
                if now.saturating_duration_since(since) < hold {
                    return Vec::new();
                }
                self.apply(&[], now, drain)
            }
            Outcome::Records { found, .. } => {
                self.empty_since = None;
                let found = scale(found);
                self.apply(&found, now, drain)
            }
        }
    }

    fn apply(&mut self, found: &[Found], now: Instant, drain: Duration) -> Vec<Delta> {
        let mut wanted: BTreeMap<SocketAddr, (u32, u32)> = BTreeMap::new();
        for f in found {
            // The same address twice (two SRV records, one target): the better
            // tier, and within it the larger weight.
            let e = wanted.entry(f.addr).or_insert((f.tier, f.weight));
            if (f.tier, u32::MAX - f.weight) < (e.0, u32::MAX - e.1) {
                *e = (f.tier, f.weight);
            }
        }
        let mut deltas = Vec::new();
        for (&addr, m) in &mut self.members {
            match wanted.get(&addr) {
                Some(&(tier, weight)) => {
                    if m.leaving.take().is_some() {
                        deltas.push(Delta::Returned { addr });
                    }
                    if (m.tier, m.weight) != (tier, weight) {
                        deltas.push(Delta::Changed {
                            addr,
                            from: (m.tier, m.weight),
                            to: (tier, weight),
                        });
                        m.tier = tier;
                        m.weight = weight;
                    }
                }
                None if m.leaving.is_none() => {
                    m.leaving = Some(now + drain);
                    deltas.push(Delta::Leaving { addr });
                }
                None => {}
            }
        }
        // New addresses in address order, while there is room; the others
        // wait for drains to end (asked again, they come in then).
        self.left_out = 0;
        for (addr, (tier, weight)) in wanted {
            if self.members.contains_key(&addr) {
                continue;
            }
            if self.members.len() >= MAX_MEMBERS {
                self.left_out += 1;
                continue;
            }
            self.members.insert(
                addr,
                Member {
                    tier,
                    weight,
                    leaving: None,
                },
            );
            deltas.push(Delta::Added { addr, tier, weight });
        }
        deltas
    }

    /// Removes the members whose drain ended by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Delta> {
        let done: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(_, m)| m.leaving.is_some_and(|t| t <= now))
            .map(|(a, _)| *a)
            .collect();
        done.into_iter()
            .map(|addr| {
                self.members.remove(&addr);
                Delta::Removed { addr }
            })
            .collect()
    }

    /// When [`Set::expire`] next has something to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.members.values().filter_map(|m| m.leaving).min()
    }
}

/// SRV weights (0..=65535) into weir's range (0..=1000), tier by tier: as
/// they are when a tier's fit, else in proportion to that tier's largest,
/// a non-zero weight never below 1. Depends only on the records, so every
/// instance scales alike.
pub fn scale(found: &[Found]) -> Vec<Found> {
    let max = weir_config::MAX_WEIGHT;
    let mut top: BTreeMap<u32, u32> = BTreeMap::new();
    for f in found {
        let t = top.entry(f.tier).or_insert(0);
        *t = (*t).max(f.weight);
    }
    found
        .iter()
        .map(|f| {
            let top = top.get(&f.tier).copied().unwrap_or(0);
            let weight = if f.weight == 0 || top <= max {
                f.weight
            } else {
                let w = u64::from(f.weight) * u64::from(max) / u64::from(top);
                u32::try_from(w).unwrap_or(max).max(1)
            };
            Found { weight, ..*f }
        })
        .collect()
}

/// The weights of an SRV answer's records as weir reads them: a record of
/// weight 0 beside others of its priority with a weight is drained (weight
/// 0); when every record of a priority has weight 0, none is preferred
/// (RFC 2782: weight 0 when there is no weighting to do), and each gets 1.
pub fn srv_weights(found: &mut [Found]) {
    let mut weighted: BTreeMap<u32, bool> = BTreeMap::new();
    for f in found.iter() {
        *weighted.entry(f.tier).or_insert(false) |= f.weight > 0;
    }
    for f in found.iter_mut() {
        if !weighted.get(&f.tier).copied().unwrap_or(true) {
            f.weight = 1;
        }
    }
}

/// Whether an address from DNS can be a backend: not unspecified (`0.0.0.0`
/// and `::` reach this host), multicast or broadcast, and a port other
/// than 0.
pub fn usable(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// When to ask again: as the answer's TTL says, within `min..=max`; after
/// a failure, at the shortest interval.
pub fn next_refresh(outcome: &Outcome, min: Duration, max: Duration) -> Duration {
    match outcome {
        Outcome::Records { ttl, .. } | Outcome::Empty { ttl: Some(ttl) } => (*ttl).clamp(min, max),
        Outcome::Empty { ttl: None } | Outcome::Failed { .. } => min,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAIN: Duration = Duration::from_secs(30);
    const HOLD: Duration = Duration::from_secs(60);

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 5432))
    }

    fn found(list: &[(u8, u32, u32)]) -> Outcome {
        Outcome::Records {
            found: list
                .iter()
                .map(|&(a, tier, weight)| Found {
                    addr: addr(a),
                    tier,
                    weight,
                })
                .collect(),
            ttl: Duration::from_secs(5),
            whole: true,
        }
    }

    #[test]
    fn a_pool_takes_at_most_max_members_addresses() {
        let many = |from: u32, n: u32| Outcome::Records {
            found: (from..from + n)
                .map(|i| Found {
                    addr: SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 80)),
                    tier: 0,
                    weight: 1,
                })
                .collect(),
            ttl: Duration::from_secs(5),
            whole: true,
        };
        let t0 = Instant::now();
        let mut set = Set::default();
        let d = set.update(&many(0, 1500), t0, DRAIN, HOLD);
        assert_eq!(d.len(), MAX_MEMBERS);
        assert_eq!(set.members.len(), MAX_MEMBERS);
        assert_eq!(set.left_out, 500);
        // Another thousand: the first ones drain, and take the room until
        // their drain ends.
        let d = set.update(&many(5000, 1000), t0, DRAIN, HOLD);
        assert!(
            d.iter().all(|d| matches!(d, Delta::Leaving { .. })),
            "{d:?}"
        );
        assert_eq!(set.members.len(), MAX_MEMBERS);
        assert_eq!(set.left_out, 1000);
        set.expire(t0 + DRAIN);
        let d = set.update(&many(5000, 1000), t0 + DRAIN, DRAIN, HOLD);
        assert_eq!(d.len(), MAX_MEMBERS);
        assert_eq!(set.present(), MAX_MEMBERS);
        assert_eq!(set.left_out, 0);
    }

    #[test]
    fn records_add_change_and_drain_members() {
        let t0 = Instant::now();
        let mut set = Set::default();
        let d = set.update(&found(&[(1, 0, 10), (2, 1, 5)]), t0, DRAIN, HOLD);
        assert_eq!(
            d,
            [
                Delta::Added {
                    addr: addr(1),
                    tier: 0,
                    weight: 10
                },
                Delta::Added {
                    addr: addr(2),
                    tier: 1,
                    weight: 5
                },
            ]
        );
        // The same answer changes nothing.
        assert!(
            set.update(&found(&[(2, 1, 5), (1, 0, 10)]), t0, DRAIN, HOLD)
                .is_empty()
        );
        // 2 leaves, 1 changes weight, 3 arrives.
        let t1 = t0 + Duration::from_secs(1);
        let d = set.update(&found(&[(1, 0, 20), (3, 0, 10)]), t1, DRAIN, HOLD);
        assert_eq!(
            d,
            [
                Delta::Changed {
                    addr: addr(1),
                    from: (0, 10),
                    to: (0, 20)
                },
                Delta::Leaving { addr: addr(2) },
                Delta::Added {
                    addr: addr(3),
                    tier: 0,
                    weight: 10
                },
            ]
        );
        assert_eq!(set.present(), 2);
        assert_eq!(set.next_expiry(), Some(t1 + DRAIN));
        // Its drain is not over yet.
        assert!(set.expire(t1 + DRAIN - Duration::from_millis(1)).is_empty());
        assert_eq!(set.expire(t1 + DRAIN), [Delta::Removed { addr: addr(2) }]);
        assert_eq!(set.members.len(), 2);
        assert_eq!(set.next_expiry(), None);
    }

    #[test]
    fn a_leaving_member_that_comes_back_serves_again() {
        let t0 = Instant::now();
        let mut set = Set::default();
        set.update(&found(&[(1, 0, 1), (2, 0, 1)]), t0, DRAIN, HOLD);
        set.update(&found(&[(1, 0, 1)]), t0, DRAIN, HOLD);
        let d = set.update(&found(&[(1, 0, 1), (2, 0, 3)]), t0, DRAIN, HOLD);
        assert_eq!(
            d,
            [
                Delta::Returned { addr: addr(2) },
                Delta::Changed {
                    addr: addr(2),
                    from: (0, 1),
                    to: (0, 3)
                }
            ]
        );
        assert_eq!(set.next_expiry(), None);
    }

    #[test]
    fn failures_never_change_the_set() {
        let t0 = Instant::now();
        let mut set = Set::default();
        set.update(&found(&[(1, 0, 1)]), t0, DRAIN, HOLD);
        let before = set.clone();
        for why in [Failure::Timeout, Failure::ServerFailure, Failure::Error] {
            let failed = Outcome::Failed {
                why,
                detail: String::new(),
            };
            // However long it lasts.
            assert!(
                set.update(&failed, t0 + Duration::from_secs(86_400), DRAIN, HOLD)
                    .is_empty()
            );
        }
        assert_eq!(set, before);
    }

    #[test]
    fn an_empty_answer_is_believed_only_after_the_hold() {
        let t0 = Instant::now();
        let mut set = Set::default();
        set.update(&found(&[(1, 0, 1), (2, 0, 1)]), t0, DRAIN, HOLD);
        let empty = Outcome::Empty { ttl: None };
        assert!(set.update(&empty, t0, DRAIN, HOLD).is_empty());
        assert!(
            set.update(&empty, t0 + HOLD - Duration::from_secs(1), DRAIN, HOLD)
                .is_empty()
        );
        // A good answer in between restarts the hold.
        set.update(&found(&[(1, 0, 1), (2, 0, 1)]), t0 + HOLD / 2, DRAIN, HOLD);
        assert_eq!(set.empty_since, None);
        let t1 = t0 + HOLD;
        assert!(set.update(&empty, t1, DRAIN, HOLD).is_empty());
        let d = set.update(&empty, t1 + HOLD, DRAIN, HOLD);
        assert_eq!(
            d,
            [
                Delta::Leaving { addr: addr(1) },
                Delta::Leaving { addr: addr(2) }
            ]
        );
        assert_eq!(set.present(), 0);
    }

    #[test]
    fn the_same_records_in_any_order_give_the_same_set() {
        let t0 = Instant::now();
        let records = [(3, 0, 7), (1, 1, 2), (2, 0, 9), (1, 0, 4)];
        let mut orders = vec![records.to_vec()];
        let mut r = records.to_vec();
        r.reverse();
        orders.push(r);
        orders.push(vec![records[2], records[0], records[3], records[1]]);
        let sets: Vec<Set> = orders
            .iter()
            .map(|o| {
                let mut s = Set::default();
                s.update(&found(o), t0, DRAIN, HOLD);
                s
            })
            .collect();
        assert!(sets.windows(2).all(|w| w[0] == w[1]));
        // Address 1 twice: the better tier wins.
        assert_eq!(sets[0].members[&addr(1)].tier, 0);
        assert_eq!(sets[0].members[&addr(1)].weight, 4);
    }

    #[test]
    fn srv_weights_are_scaled_into_range_keeping_zero_and_ratios() {
        let f = |w: u32| Found {
            addr: addr(1),
            tier: 0,
            weight: w,
        };
        let kept = scale(&[f(0), f(5), f(1000)]);
        assert_eq!(
            kept.iter().map(|f| f.weight).collect::<Vec<_>>(),
            [0, 5, 1000]
        );
        let scaled = scale(&[f(0), f(1), f(32768), f(65535)]);
        assert_eq!(
            scaled.iter().map(|f| f.weight).collect::<Vec<_>>(),
            [0, 1, 500, 1000]
        );
    }

    #[test]
    fn each_tier_is_scaled_by_its_own_largest_weight() {
        let f = |tier: u32, w: u32| Found {
            addr: addr(1),
            tier,
            weight: w,
        };
        let scaled = scale(&[f(0, 10), f(0, 30), f(1, 65535), f(1, 6554)]);
        assert_eq!(
            scaled.iter().map(|f| f.weight).collect::<Vec<_>>(),
            [10, 30, 1000, 100],
            "the first tier's 1:3 kept"
        );
    }

    #[test]
    fn a_priority_whose_weights_are_all_zero_weighs_them_alike() {
        let f = |tier: u32, w: u32| Found {
            addr: addr(1),
            tier,
            weight: w,
        };
        let mut found = [f(0, 0), f(0, 0), f(1, 0), f(1, 5)];
        srv_weights(&mut found);
        assert_eq!(
            found.iter().map(|f| f.weight).collect::<Vec<_>>(),
            [1, 1, 0, 5],
            "all zero: alike; zero beside a weight: drained"
        );
    }

    #[test]
    fn unspecified_multicast_broadcast_and_port_zero_are_never_backends() {
        for ok in [
            "10.0.0.1:80",
            "127.0.0.1:5432",
            "[2001:db8::1]:443",
            "[::1]:53",
        ] {
            assert!(usable(ok.parse().expect("addr")), "{ok}");
        }
        for bad in [
            "0.0.0.0:80",
            "[::]:80",
            "224.0.0.1:80",
            "[ff02::1]:80",
            "255.255.255.255:80",
            "10.0.0.1:0",
        ] {
            assert!(!usable(bad.parse().expect("addr")), "{bad}");
        }
    }

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let rec = |ttl| Outcome::Records {
            found: Vec::new(),
            ttl,
            whole: true,
        };
        assert_eq!(
            next_refresh(&rec(Duration::from_secs(30)), min, max),
            Duration::from_secs(30)
        );
        assert_eq!(next_refresh(&rec(Duration::ZERO), min, max), min);
        assert_eq!(
            next_refresh(&rec(Duration::from_secs(86_400)), min, max),
            max
        );
        let failed = Outcome::Failed {
            why: Failure::Timeout,
            detail: String::new(),
        };
        assert_eq!(next_refresh(&failed, min, max), min);
    }
    #[test]
    fn pending_changes_fold_to_the_last_of_each_address() {
        let (a, b) = (addr(1), addr(2));
        let mut pending = vec![
            Delta::Added {
                addr: a,
                tier: 0,
                weight: 1,
            },
            Delta::Leaving { addr: b },
            Delta::Leaving { addr: a },
            Delta::Returned { addr: b },
        ];
        let before = pending.clone();
        fold(&mut pending, 4);
        assert_eq!(pending, before, "within the bound: untouched");
        fold(&mut pending, 3);
        assert_eq!(
            pending,
            [Delta::Leaving { addr: a }, Delta::Returned { addr: b }]
        );
        // A flood of changes over few addresses stays bounded.
        let mut flood = Vec::new();
        for i in 0..10_000u32 {
            flood.push(Delta::Changed {
                addr: addr(u8::try_from(i % 7).expect("small")),
                from: (0, i),
                to: (0, i + 1),
            });
            fold(&mut flood, 100);
        }
        assert!(flood.len() <= 100, "{}", flood.len());
        assert!(flood.contains(&Delta::Changed {
            addr: addr(3), // 9,999 % 7
            from: (0, 9_999),
            to: (0, 10_000),
        }));
    }
}
