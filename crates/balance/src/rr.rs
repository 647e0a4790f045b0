//! Smooth weighted round robin (the nginx algorithm).
//!
//! Each step adds every member's weight to its `current`, picks the member with the largest
//! `current` (the first in member order on ties) and subtracts the total weight from it. After
//! `S = sum(w) / gcd(w)` steps every member has been picked exactly `w / gcd` times and all
//! `current` values are back to zero, so the picks form a cycle of length `S`. We compute that
//! cycle once per backend-set change and serve picks with one atomic increment:
//! `seq[cursor % S]`. Any `S` consecutive cursor values then give each member exactly its share,
//! however the picks interleave across threads.
//!
//! When the cycle would be longer than [`CYCLE_MAX`] or cost more than [`BUILD_BUDGET`] to
//! compute (a thousand or more members with many distinct, coprime weights), picks step the
//! same incremental state under a small mutex instead: the sequence is identical, but a rebuild
//! stays cheap and memory bounded. That is the only lock in the crate; ordinary pools never
//! take it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest cycle we precompute: 4 MiB of `u32`.
pub(crate) const CYCLE_MAX: u64 = 1 << 20;
/// Most work (cycle length × distinct weights) we spend building a cycle: about 5 ns each in
/// release, so at most ~20 ms for the rare pools that get near it.
pub(crate) const BUILD_BUDGET: u64 = 1 << 22;
/// On a retry, how many cycle entries we scan for a non-excluded member before falling back
/// to a linear scan of the members.
const SCAN_LIMIT: usize = 4096;
/// The same for the stepper, whose steps cost more and run under its lock.
const STEP_SCAN_LIMIT: usize = 64;

#[derive(Debug)]
pub(crate) struct RoundRobin {
    kind: Kind,
    len: usize,
}

#[derive(Debug)]
enum Kind {
    Cycle {
        seq: Box<[u32]>,
        cursor: AtomicUsize,
    },
    Stepper {
        state: Mutex<Smooth>,
        cursor: AtomicUsize,
    },
}

impl RoundRobin {
    /// `weights` are all > 0 and there is at least one.
    pub(crate) fn new(weights: &[u32]) -> RoundRobin {
        Self::with_limits(weights, CYCLE_MAX, BUILD_BUDGET)
    }

    pub(crate) fn with_limits(weights: &[u32], cycle_max: u64, budget: u64) -> RoundRobin {
        let mut smooth = Smooth::new(weights);
        let groups = smooth.groups.len() as u64;
        let kind = if smooth.period <= cycle_max && smooth.period.saturating_mul(groups) <= budget {
            let seq: Box<[u32]> = (0..smooth.period).map(|_| smooth.step()).collect();
            Kind::Cycle {
                seq,
                cursor: AtomicUsize::new(0),
            }
        } else {
            Kind::Stepper {
                state: Mutex::new(smooth),
                cursor: AtomicUsize::new(0),
            }
        };
        RoundRobin {
            kind,
            len: weights.len(),
        }
    }

    /// How many picks were made (the turn the next one takes).
    pub(crate) fn cursor(&self) -> usize {
        match &self.kind {
            Kind::Cycle { cursor, .. } | Kind::Stepper { cursor, .. } => {
                cursor.load(Ordering::Relaxed)
            }
        }
    }

    /// Starts at turn `at` of the cycle (`resume`). The stepper's state is
    /// its own; only a precomputed cycle can be entered anywhere.
    pub(crate) fn set_cursor(&self, at: usize) {
        if let Kind::Cycle { cursor, .. } = &self.kind {
            cursor.store(at, Ordering::Relaxed);
        }
    }

    /// Whether picks go through the mutex-protected stepper.
    #[cfg(test)]
    pub(crate) fn is_stepper(&self) -> bool {
        matches!(self.kind, Kind::Stepper { .. })
    }

    /// The next member position, skipping positions for which `excluded` holds; `None` only
    /// when every position is excluded. `any_excluded` false promises `excluded` is always
    /// false, which keeps the common path to a single atomic increment.
    pub(crate) fn pick(
        &self,
        any_excluded: bool,
        excluded: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let start = match &self.kind {
            Kind::Cycle { seq, cursor } => {
                let at = cursor.fetch_add(1, Ordering::Relaxed) % seq.len();
                if !any_excluded {
                    return Some(seq[at] as usize);
                }
                let scan = seq.len().min(SCAN_LIMIT);
                for k in 0..scan {
                    let pos = seq[(at + k) % seq.len()] as usize;
                    if !excluded(pos) {
                        return Some(pos);
                    }
                }
                at
            }
            Kind::Stepper { state, cursor } => {
                // The state is consistent between steps, so a panic elsewhere while holding
                // the lock cannot leave it half-updated: ignore poisoning.
                let mut smooth = state.lock().unwrap_or_else(|e| e.into_inner());
                for _ in 0..STEP_SCAN_LIMIT {
                    let pos = smooth.step() as usize;
                    if !excluded(pos) {
                        return Some(pos);
                    }
                }
                drop(smooth);
                cursor.fetch_add(1, Ordering::Relaxed)
            }
        };
        // Everything scanned was excluded: the remaining members have small weights. Any of
        // them will do; rotate the starting point so retries spread.
        let first = start % self.len;
        (first..self.len)
            .chain(0..first)
            .find(|&pos| !excluded(pos))
    }
}

/// Incremental smooth weighted round robin over reduced weights (divided by their gcd).
///
/// Members of equal weight gain `current` at the same rate, so they keep their relative
/// order forever: among them the one picked least recently (then the lowest position) leads,
/// and picks within a weight group simply rotate. A step therefore compares one leader per
/// distinct weight instead of every member, which makes the cycle cheap to build for usual
/// pools with a few distinct weights. Each group tracks only its leader's `current`: a pick
/// hands the lead to the next member, which has the same `current` as the picked one had
/// before the subtraction, except when the rotation wraps and the next leader was itself
/// picked one more time.
#[derive(Debug)]
pub(crate) struct Smooth {
    groups: Vec<Group>,
    total: i128,
    period: u64,
    step: u64,
}

#[derive(Debug)]
struct Group {
    weight: i128,
    /// Member positions with this weight, ascending.
    members: Vec<u32>,
    /// Index into `members` of the next member to be picked in this group.
    lead: usize,
    /// The nginx `current` of the leader. All values return to 0 every period, so they stay
    /// below period × weight; i128 makes that unable to overflow whatever the weights.
    current: i128,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Smooth {
    pub(crate) fn new(weights: &[u32]) -> Smooth {
        let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))).max(1);
        let mut groups: Vec<Group> = Vec::new();
        for (pos, &w) in weights.iter().enumerate() {
            let weight = i128::from(u64::from(w) / g);
            // Positions beyond u32 cannot occur: the caller's member list would not fit.
            let pos = pos as u32;
            match groups.iter_mut().find(|gr| gr.weight == weight) {
                Some(gr) => gr.members.push(pos),
                None => groups.push(Group {
                    weight,
                    members: vec![pos],
                    lead: 0,
                    current: 0,
                }),
            }
        }
        let period: u64 = weights.iter().map(|&w| u64::from(w) / g).sum();
        Smooth {
            groups,
            total: i128::from(period),
            period,
            step: 0,
        }
    }

    pub(crate) fn step(&mut self) -> u32 {
        // (current, position, group) of the best leader; ties go to the lower position.
        let mut best: Option<(i128, u32, usize)> = None;
        for (gi, gr) in self.groups.iter_mut().enumerate() {
            gr.current += gr.weight;
            let pos = gr.members[gr.lead];
            let better = match best {
                None => true,
                Some((c, p, _)) => gr.current > c || (gr.current == c && pos < p),
            };
            if better {
                best = Some((gr.current, pos, gi));
            }
        }
        let Some((_, pos, gi)) = best else {
            unreachable!("Smooth has at least one member")
        };
        let gr = &mut self.groups[gi];
        gr.lead += 1;
        if gr.lead == gr.members.len() {
            gr.lead = 0;
            gr.current -= self.total;
        }
        self.step += 1;
        if self.step == self.period {
            // Every member got exactly its reduced weight: all `current` values are zero.
            self.step = 0;
            debug_assert!(self.groups.iter().all(|gr| gr.lead == 0 && gr.current == 0));
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook nginx loop over every member, as an oracle.
    fn nginx(weights: &[u32], steps: usize) -> Vec<u32> {
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = vec![0_i64; weights.len()];
        let mut out = Vec::new();
        for _ in 0..steps {
            let mut best = 0;
            for i in 0..weights.len() {
                current[i] += i64::from(weights[i]);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            out.push(best as u32);
        }
        out
    }

    #[test]
    fn grouped_stepper_equals_nginx_loop() {
        let cases: &[&[u32]] = &[
            &[5, 1, 1],
            &[1],
            &[3, 3, 3],
            &[2, 4, 6],
            &[7, 3, 7, 1, 3, 1000, 999],
            &[1000, 1, 1, 1, 500, 500],
        ];
        for &weights in cases {
            let total: u32 = weights.iter().sum();
            let mut smooth = Smooth::new(weights);
            let ours: Vec<u32> = (0..3 * total).map(|_| smooth.step()).collect();
            assert_eq!(ours, nginx(weights, 3 * total as usize), "{weights:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn grouped_stepper_equals_nginx_for_any_weights(
            weights in proptest::collection::vec(1_u32..=12, 1..12),
        ) {
            let total: u32 = weights.iter().sum();
            let mut smooth = Smooth::new(&weights);
            let ours: Vec<u32> = (0..2 * total).map(|_| smooth.step()).collect();
            let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))) as u32;
            let reduced: Vec<u32> = weights.iter().map(|&w| w / g).collect();
            proptest::prop_assert_eq!(ours, nginx(&reduced, 2 * total as usize));
        }
    }

    #[test]
    fn five_one_one_is_the_nginx_sequence() {
        let mut smooth = Smooth::new(&[5, 1, 1]);
        let seq: Vec<u32> = (0..7).map(|_| smooth.step()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn stepper_and_cycle_agree() {
        let weights = [4, 9, 1, 1, 6];
        let cycle = RoundRobin::new(&weights);
        let stepper = RoundRobin::with_limits(&weights, 0, 0);
        assert!(!cycle.is_stepper());
        assert!(stepper.is_stepper());
        for _ in 0..200 {
            assert_eq!(cycle.pick(false, |_| false), stepper.pick(false, |_| false));
        }
    }

    #[test]
    fn stepper_honours_exclusions() {
        let rr = RoundRobin::with_limits(&[5, 1, 1], 0, 0);
        for _ in 0..50 {
            assert_eq!(rr.pick(true, |p| p != 2), Some(2));
            assert_ne!(rr.pick(true, |p| p == 0), Some(0));
        }
        assert_eq!(rr.pick(true, |_| true), None);
    }

    #[test]
    fn scan_limit_falls_back_to_members() {
        // A weight-1 member among huge weights: its entry may lie beyond the scan limit.
        let rr = RoundRobin::new(&[1000, 1000, 1000, 1000, 1000, 1000, 1]);
        for _ in 0..20 {
            assert_eq!(rr.pick(true, |p| p != 6), Some(6));
        }
    }

    #[test]
    fn long_cycle_builds_quickly_enough() {
        // Many coprime-ish weights: S is large but within the budget, or falls back.
        let weights: Vec<u32> = (0..1000).map(|i| 1 + (i * 37) % 1000).collect();
        let rr = RoundRobin::new(&weights);
        assert!(rr.pick(false, |_| false).is_some());
    }
}
