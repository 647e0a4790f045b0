//! Load-balancing algorithms for weir: which backend of a pool gets the next connection.
//!
//! This crate is pure: plain values in, a backend index out, no I/O, no clock, no
//! dependencies. The runtime builds one [`Picker`] per pool whenever the set of serving
//! backends or their effective weights change, publishes it in its snapshot, and every worker
//! thread then calls [`Picker::pick`] through `&self`. Picks never allocate and take no lock:
//! shared state is a single atomic cursor (round robin, least_conn tie rotation); the one
//! exception is round robin over a pool whose weight cycle is too long to precompute (see
//! [`Policy::RoundRobin`]). Everything that varies per pick comes from the caller in a
//! [`Request`]: a hashed affinity key, fresh random bits and a view of current connection
//! counts.
//!
//! Tiers are priority groups: only the lowest tier that has a member with weight > 0 is used;
//! higher tiers are failover and stay idle until every member of the lower tiers has weight 0
//! (the runtime gives down, drained and disabled backends weight 0). Weight 0 is never picked.
//!
//! The [`maglev`] table is deterministic: it depends only on backend names and weights, and
//! [`hash_bytes`] is fixed across platforms and releases, so N weir instances with the same
//! backend set send each client to the same backend without sharing state.

mod hash;
pub mod maglev;
mod rr;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How a pool spreads connections over its members (`balance = "..."` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Smooth weighted round robin (nginx's algorithm): over any run of `sum(weights)`
    /// consecutive picks each member gets exactly its weight, interleaved rather than in
    /// bursts (weights 5, 1, 1 give `a a b a c a a`). The cycle of `sum(weights) / gcd`
    /// picks is precomputed, so a pick is one atomic increment; only when it would exceed
    /// 2^20 entries or a build budget (a thousand or more members with many distinct coprime
    /// weights) do picks step the state under a mutex instead.
    RoundRobin,
    /// The member with the fewest active connections per unit of weight, i.e. the smallest
    /// `(load + 1) / weight`; ties rotate.
    LeastConn,
    /// Power of two choices: two distinct members drawn at random in proportion to their
    /// weights; the one with the smaller `(load + 1) / weight` wins. Close to least_conn
    /// without reading every member's load, and robust to stale loads.
    Random,
    /// The first member in configuration order: everything goes to one backend until it
    /// is excluded (primary/standby setups).
    First,
    /// Maglev consistent hashing on the request key: the same key maps to the same member,
    /// in every weir instance, and a membership change remaps only about 1/N of the keys.
    Maglev,
}

impl Policy {
    /// Every policy, in documentation order.
    pub const ALL: [Policy; 5] = [
        Policy::RoundRobin,
        Policy::LeastConn,
        Policy::Random,
        Policy::First,
        Policy::Maglev,
    ];

    /// The configuration spelling: `round_robin`, `least_conn`, `random`, `first`, `maglev`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastConn => "least_conn",
            Policy::Random => "random",
            Policy::First => "first",
            Policy::Maglev => "maglev",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Policy, UnknownPolicy> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// A string that names no [`Policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPolicy(pub String);

impl fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a balance policy (round_robin, least_conn, random, first, maglev)",
            self.0
        )
    }
}

impl std::error::Error for UnknownPolicy {}

/// One backend of a pool as the picker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// The caller's stable index of this backend; [`Picker::pick`] returns it.
    pub index: usize,
    /// The backend's identity; maglev hashes it, so it must be the same in every instance.
    pub name: &'a str,
    /// Effective weight, 0..=1000 in configurations; 0 is never picked.
    pub weight: u32,
    /// Priority tier: lower tiers serve first.
    pub tier: u32,
}

/// Per-pick input from the caller.
pub struct Request<'a> {
    /// Hash of the affinity key ([`hash_bytes`] of the client IP, IP:port or SNI); maglev only.
    pub key: u64,
    /// Fresh random bits; used by [`Policy::Random`].
    pub random: u64,
    /// Current active connections of the backend with the given caller index.
    pub load: &'a dyn Fn(usize) -> u32,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("key", &self.key)
            .field("random", &self.random)
            .finish_non_exhaustive()
    }
}

/// Hashes bytes (a client IP, `IP:port` or SNI) into a maglev key.
///
/// FNV-1a 64 followed by the splitmix64 finaliser. The output is fixed across platforms and
/// releases: instances running different weir versions must agree on it.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    hash::seeded(bytes, 0)
}

/// Rehashes tried on a maglev retry before falling back to name order.
const MAGLEV_REHASHES: u64 = 4;

/// A pool's members and policy, ready to pick. Build one per backend-set change; share it
/// between threads (it is `Send + Sync`) and pick through `&self`.
///
/// ```
/// use weir_balance::{Member, Picker, Policy, Request, hash_bytes};
///
/// let members = [
///     Member { index: 0, name: "pg-a", weight: 100, tier: 0 },
///     Member { index: 1, name: "pg-b", weight: 100, tier: 0 },
///     Member { index: 2, name: "pg-standby", weight: 100, tier: 1 },
/// ];
/// let picker = Picker::new(Policy::Maglev, &members);
/// assert_eq!(picker.active_tier(), Some(0));
///
/// let active = [3_u32, 5, 0];
/// let load = |index: usize| active[index];
/// let req = Request { key: hash_bytes(&[10, 0, 0, 7]), random: 0x1234, load: &load };
/// let first = picker.pick(&req, &[]).expect("a backend");
/// assert!(first < 2, "tier 1 is failover only");
/// // The connect failed: retry elsewhere, never the standby while tier 0 has members.
/// let retry = picker.pick(&req, &[first]).expect("the other tier-0 backend");
/// assert_eq!(first + retry, 1);
/// assert_eq!(picker.pick(&req, &[0, 1]), None);
/// ```
pub struct Picker {
    policy: Policy,
    active_tier: Option<u32>,
    /// The eligible members (active tier, weight > 0) in the order given.
    members: Box<[Eligible]>,
    strategy: Strategy,
}

#[derive(Debug, Clone, Copy)]
struct Eligible {
    index: usize,
    weight: u32,
}

enum Strategy {
    Empty,
    RoundRobin(rr::RoundRobin),
    LeastConn {
        /// Where the scan starts, so equally loaded members take turns.
        cursor: AtomicUsize,
    },
    Random {
        /// Running sums of the weights, for a weighted draw by binary search.
        cumulative: Box<[u64]>,
    },
    First,
    /// Table positions are positions in `members`.
    Maglev(maglev::Table),
}

impl Picker {
    /// Goes on where `before` (the picker this one replaces) was in its
    /// turns, rather than at the first member: a pool rebuilt often (every
    /// step of a slow start, every health change) would otherwise give the
    /// first members every pick and the later ones none.
    pub fn resume(&self, before: &Picker) {
        let at = match &before.strategy {
            Strategy::RoundRobin(rr) => rr.cursor(),
            Strategy::LeastConn { cursor } => cursor.load(Ordering::Relaxed),
            _ => return,
        };
        match &self.strategy {
            Strategy::RoundRobin(rr) => rr.set_cursor(at),
            Strategy::LeastConn { cursor } => cursor.store(at, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Keeps the members of the active tier with weight > 0, in the order given, and
    /// precomputes what `policy` needs (the round robin cycle, the maglev table).
    pub fn new(policy: Policy, members: &[Member<'_>]) -> Picker {
        let active_tier = members
            .iter()
            .filter(|m| m.weight > 0)
            .map(|m| m.tier)
            .min();
        let kept: Vec<&Member<'_>> = members
            .iter()
            .filter(|m| m.weight > 0 && Some(m.tier) == active_tier)
            .collect();
        let strategy = if kept.is_empty() {
            Strategy::Empty
        } else {
            match policy {
                Policy::RoundRobin => {
                    let weights: Vec<u32> = kept.iter().map(|m| m.weight).collect();
                    Strategy::RoundRobin(rr::RoundRobin::new(&weights))
                }
                Policy::LeastConn => Strategy::LeastConn {
                    cursor: AtomicUsize::new(0),
                },
                Policy::Random => Strategy::Random {
                    cumulative: kept
                        .iter()
                        .scan(0_u64, |sum, m| {
                            *sum += u64::from(m.weight);
                            Some(*sum)
                        })
                        .collect(),
                },
                Policy::First => Strategy::First,
                Policy::Maglev => {
                    let backends: Vec<(&str, u32)> =
                        kept.iter().map(|m| (m.name, m.weight)).collect();
                    Strategy::Maglev(maglev::Table::build(&backends))
                }
            }
        };
        Picker {
            policy,
            active_tier,
            members: kept
                .iter()
                .map(|m| Eligible {
                    index: m.index,
                    weight: m.weight,
                })
                .collect(),
            strategy,
        }
    }

    /// The policy this picker was built with.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The lowest tier having a member with weight > 0; `None` if there is none.
    pub fn active_tier(&self) -> Option<u32> {
        self.active_tier
    }

    /// Number of eligible members (active tier, weight > 0).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no member can be picked.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether the member with this caller index could be picked (it is in
    /// the active tier, with weight > 0).
    pub fn is_eligible(&self, index: usize) -> bool {
        self.members.iter().any(|m| m.index == index)
    }

    /// Whether [`Picker::pick`] would find a member outside `exclude`,
    /// without moving any policy's cursor.
    pub fn has_other(&self, exclude: &[usize]) -> bool {
        self.members.iter().any(|m| !exclude.contains(&m.index))
    }

    /// The caller index of the member for this connection, never one listed in `exclude`
    /// (the members already tried on this connection). `None` iff every eligible member is
    /// excluded (or there is none).
    pub fn pick(&self, req: &Request<'_>, exclude: &[usize]) -> Option<usize> {
        self.pick_where(req, !exclude.is_empty(), |index| exclude.contains(&index))
    }

    /// Like [`Picker::pick`], and never a member for which `full(index)` is
    /// true (a backend at its connection limit): the policy's own choice
    /// when it has room, else the next one the policy would make.
    pub fn pick_with_room(
        &self,
        req: &Request<'_>,
        exclude: &[usize],
        full: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        self.pick_where(req, true, |index| exclude.contains(&index) || full(index))
    }

    fn pick_where(
        &self,
        req: &Request<'_>,
        any_excluded: bool,
        excluded_index: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let members = &*self.members;
        let excluded = |pos: usize| excluded_index(members[pos].index);
        let pos = match &self.strategy {
            Strategy::Empty => None,
            Strategy::RoundRobin(rr) => rr.pick(any_excluded, excluded),
            Strategy::LeastConn { cursor } => {
                let first = cursor.fetch_add(1, Ordering::Relaxed) % members.len();
                least_conn(members, req, first, excluded)
            }
            Strategy::Random { cumulative } => {
                if !any_excluded {
                    Some(two_choices(members, cumulative, req))
                } else {
                    two_choices_excluding(members, req, excluded)
                }
            }
            Strategy::First => (0..members.len()).find(|&pos| !excluded(pos)),
            Strategy::Maglev(table) => maglev_pick(table, req.key, excluded),
        }?;
        Some(members[pos].index)
    }
}

impl fmt::Debug for Picker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picker")
            .field("policy", &self.policy)
            .field("active_tier", &self.active_tier)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// `(load + 1, weight)` of a member: compare `a` and `b` as fractions by cross-multiplying.
/// Both factors are below 2^32, so the products fit in u64.
fn cost(members: &[Eligible], req: &Request<'_>, pos: usize) -> (u64, u64) {
    let m = members[pos];
    (u64::from((req.load)(m.index)) + 1, u64::from(m.weight))
}

/// Whether `a` costs strictly less than `b`.
fn cheaper((la, wa): (u64, u64), (lb, wb): (u64, u64)) -> bool {
    la * wb < lb * wa
}

fn least_conn(
    members: &[Eligible],
    req: &Request<'_>,
    first: usize,
    excluded: impl Fn(usize) -> bool,
) -> Option<usize> {
    // Scanning from a rotating start and replacing only on strictly lower cost makes equals
    // take turns instead of always favouring the first.
    let mut best: Option<(usize, (u64, u64))> = None;
    for pos in (first..members.len()).chain(0..first) {
        if excluded(pos) {
            continue;
        }
        let c = cost(members, req, pos);
        if best.is_none_or(|(_, b)| cheaper(c, b)) {
            best = Some((pos, c));
        }
    }
    best.map(|(pos, _)| pos)
}

/// The better of two distinct weighted draws, with nothing excluded.
fn two_choices(members: &[Eligible], cumulative: &[u64], req: &Request<'_>) -> usize {
    if members.len() == 1 {
        return 0;
    }
    let total = cumulative[cumulative.len() - 1];
    let x = hash::below(req.random, total);
    let a = cumulative.partition_point(|&c| c <= x);
    // Second draw over the other members: a point in the total without `a`'s span, shifted
    // past that span.
    let wa = u64::from(members[a].weight);
    let mut y = hash::below(hash::mix64(req.random ^ hash::GOLDEN), total - wa);
    if y >= cumulative[a] - wa {
        y += wa;
    }
    let b = cumulative.partition_point(|&c| c <= y);
    better_of(members, req, a, b)
}

/// [`two_choices`] on a retry: linear draws over the non-excluded members.
fn two_choices_excluding(
    members: &[Eligible],
    req: &Request<'_>,
    excluded: impl Fn(usize) -> bool,
) -> Option<usize> {
    let (count, total) = (0..members.len())
        .filter(|&pos| !excluded(pos))
        .fold((0_usize, 0_u64), |(n, t), pos| {
            (n + 1, t + u64::from(members[pos].weight))
        });
    let a = draw(members, hash::below(req.random, total), &excluded)?;
    if count == 1 {
        return Some(a);
    }
    let wa = u64::from(members[a].weight);
    let y = hash::below(hash::mix64(req.random ^ hash::GOLDEN), total - wa);
    let b = draw(members, y, |pos| pos == a || excluded(pos)).unwrap_or(a);
    Some(better_of(members, req, a, b))
}

/// The member whose weight span contains `x`, counting only members not skipped.
fn draw(members: &[Eligible], mut x: u64, skipped: impl Fn(usize) -> bool) -> Option<usize> {
    for (pos, m) in members.iter().enumerate() {
        if skipped(pos) {
            continue;
        }
        let w = u64::from(m.weight);
        if x < w {
            return Some(pos);
        }
        x -= w;
    }
    None
}

fn better_of(members: &[Eligible], req: &Request<'_>, a: usize, b: usize) -> usize {
    if cheaper(cost(members, req, b), cost(members, req, a)) {
        b
    } else {
        a
    }
}

fn maglev_pick(table: &maglev::Table, key: u64, excluded: impl Fn(usize) -> bool) -> Option<usize> {
    let pos = table.lookup(key)?;
    if !excluded(pos) {
        return Some(pos);
    }
    // A retry: rehashing keeps the choice a function of the key (all instances retry to the
    // same backend) while spreading a failed backend's keys over the others by weight.
    for attempt in 1..=MAGLEV_REHASHES {
        let pos = table.lookup(hash::rehash(key, attempt))?;
        if !excluded(pos) {
            return Some(pos);
        }
    }
    table.by_name().iter().copied().find(|&pos| !excluded(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picker_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Picker>();
        assert_send_sync::<maglev::Table>();
    }

    /// Members named `names`, in that order, of weight `weight`, all in
    /// tier 0.
    fn equal_members<'a>(names: &[&'a str], weight: u32) -> Vec<Member<'a>> {
        names
            .iter()
            .enumerate()
            .map(|(index, name)| Member {
                index,
                name,
                weight,
                tier: 0,
            })
            .collect()
    }

    #[test]
    fn full_members_are_passed_over_by_every_policy() {
        let members = equal_members(&["a", "b", "c", "d"], 10);
        let load = |_: usize| 0;
        for policy in Policy::ALL {
            let picker = Picker::new(policy, &members);
            for key in 0..200_u64 {
                let req = Request {
                    key: hash_bytes(&key.to_le_bytes()),
                    random: hash::mix64(key),
                    load: &load,
                };
                let own = picker.pick(&req, &[]).expect("someone");
                let none_full = |_: usize| false;
                let with_room = picker.pick_with_room(&req, &[], &none_full);
                // Round robin and least_conn move on at every pick, random
                // draws: only the stateless policies repeat themselves.
                if matches!(policy, Policy::Maglev | Policy::First) {
                    assert_eq!(with_room, Some(own), "{policy}: room everywhere");
                }
                let full = |i: usize| i == own || i == 2;
                let other = picker.pick_with_room(&req, &[], &full).expect("b or d");
                assert!(other != own && other != 2, "{policy} picked a full one");
                let all_full = |_: usize| true;
                assert_eq!(picker.pick_with_room(&req, &[], &all_full), None);
                let rest_full = |i: usize| i != 3;
                assert_eq!(picker.pick_with_room(&req, &[1], &rest_full), Some(3));
            }
        }
    }

    /// A picker that replaces another goes on with the turns: rebuilt
    /// before every pick (a slow start's steps, health changes), round
    /// robin and least_conn still give every member its share.
    #[test]
    fn a_rebuilt_picker_resumes_the_turns() {
        let members = equal_members(&["a", "b", "c"], 1);
        let load = |_: usize| 0;
        let req = Request {
            key: 7,
            random: 11,
            load: &load,
        };
        for policy in [Policy::RoundRobin, Policy::LeastConn] {
            let mut picker = Picker::new(policy, &members);
            let mut counts = [0; 3];
            for _ in 0..30 {
                let next = Picker::new(policy, &members);
                next.resume(&picker);
                picker = next;
                counts[picker.pick(&req, &[]).expect("a member")] += 1;
            }
            assert_eq!(counts, [10, 10, 10], "{policy}");
        }
    }

    #[test]
    fn has_other_agrees_with_pick_and_moves_no_cursor() {
        let names = ["a", "b", "c"];
        let members: Vec<Member<'_>> = names
            .iter()
            .enumerate()
            .map(|(index, name)| Member {
                index,
                name,
                weight: 1,
                // The third is a backup tier: never picked while a and b are.
                tier: u32::from(index == 2),
            })
            .collect();
        let load = |_: usize| 0;
        let req = Request {
            key: 7,
            random: 11,
            load: &load,
        };
        for policy in Policy::ALL {
            let picker = Picker::new(policy, &members);
            for exclude in [&[][..], &[0], &[1], &[0, 1], &[0, 1, 2], &[2]] {
                assert_eq!(
                    picker.has_other(exclude),
                    picker.pick(&req, exclude).is_some(),
                    "{policy} excluding {exclude:?}"
                );
            }
        }
        // Asking does not take a turn: round robin still alternates.
        let rr = Picker::new(Policy::RoundRobin, &members);
        let first = rr.pick(&req, &[]);
        for _ in 0..5 {
            assert!(rr.has_other(&[]));
        }
        assert_ne!(rr.pick(&req, &[]), first);
    }

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.as_str().parse::<Policy>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        let err = "leastconn".parse::<Policy>().expect_err("not a policy");
        assert!(err.to_string().contains("leastconn"));
    }
}
