//! Property and unit tests of the public API: what the runtime relies on.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use weir_balance::maglev::{self, TABLE_SIZE, Table};
use weir_balance::{Member, Picker, Policy, Request, hash_bytes};

/// Caller indices deliberately differ from positions, to catch mix-ups.
fn caller_index(pos: usize) -> usize {
    100 + 3 * pos
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("backend-{i}")).collect()
}

/// Members at tier 0 with the given weights.
fn flat<'a>(names: &'a [String], weights: &[u32]) -> Vec<Member<'a>> {
    weights
        .iter()
        .enumerate()
        .map(|(pos, &weight)| Member {
            index: caller_index(pos),
            name: &names[pos],
            weight,
            tier: 0,
        })
        .collect()
}

fn idle(_: usize) -> u32 {
    0
}

fn req(key: u64, random: u64, load: &dyn Fn(usize) -> u32) -> Request<'_> {
    Request { key, random, load }
}

/// splitmix64, to feed `Request::random` in loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn pick_many(picker: &Picker, n: usize) -> Vec<usize> {
    let load = idle;
    (0..n)
        .map(|i| {
            picker
                .pick(&req(i as u64, i as u64, &load), &[])
                .expect("a member")
        })
        .collect()
}

// ---------------------------------------------------------------- round robin

#[test]
fn round_robin_five_one_one_is_smooth() {
    let names = names(3);
    let picker = Picker::new(Policy::RoundRobin, &flat(&names, &[5, 1, 1]));
    let (a, b, c) = (caller_index(0), caller_index(1), caller_index(2));
    assert_eq!(
        pick_many(&picker, 14),
        [a, a, b, a, c, a, a, a, a, b, a, c, a, a]
    );
}

#[test]
fn round_robin_reduces_by_gcd() {
    // 300:100 cycles as a a a b, not 300 a's then 100 b's.
    let names = names(2);
    let picker = Picker::new(Policy::RoundRobin, &flat(&names, &[300, 100]));
    let (a, b) = (caller_index(0), caller_index(1));
    assert_eq!(pick_many(&picker, 8), [a, a, b, a, a, a, b, a]);
}

#[test]
fn round_robin_exclusion_takes_next_entry() {
    let names = names(3);
    let picker = Picker::new(Policy::RoundRobin, &flat(&names, &[1, 1, 1]));
    let load = idle;
    let r = req(0, 0, &load);
    // Cursor 0 is member 0; excluded, the next entry (member 1) is taken.
    assert_eq!(picker.pick(&r, &[caller_index(0)]), Some(caller_index(1)));
    // Cursor 1 is member 1.
    assert_eq!(picker.pick(&r, &[]), Some(caller_index(1)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every window of sum(weights) consecutive picks, from any starting cursor, gives each
    /// member exactly its weight; weight 0 is never picked.
    #[test]
    fn round_robin_windows_are_exact(
        weights in prop::collection::vec(0_u32..=12, 1..8),
        offset in 0_usize..300,
    ) {
        let names = names(weights.len());
        let picker = Picker::new(Policy::RoundRobin, &flat(&names, &weights));
        let total: u32 = weights.iter().sum();
        if total == 0 {
            prop_assert!(picker.is_empty());
            prop_assert_eq!(picker.pick(&req(0, 0, &idle), &[]), None);
            return Ok(());
        }
        let s = total as usize;
        pick_many(&picker, offset);
        let picks = pick_many(&picker, 2 * s);
        for start in 0..=s {
            let mut counts: HashMap<usize, u32> = HashMap::new();
            for &p in &picks[start..start + s] {
                *counts.entry(p).or_default() += 1;
            }
            for (pos, &w) in weights.iter().enumerate() {
                prop_assert_eq!(counts.get(&caller_index(pos)).copied().unwrap_or(0), w);
            }
        }
    }

    /// No member with weight w gets more than ceil(w k / S) + 1 of the first k picks.
    #[test]
    fn round_robin_prefixes_are_smooth(weights in prop::collection::vec(0_u32..=30, 1..10)) {
        let names = names(weights.len());
        let picker = Picker::new(Policy::RoundRobin, &flat(&names, &weights));
        let s: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        prop_assume!(s > 0);
        let picks = pick_many(&picker, s as usize);
        let mut counts = vec![0_u64; weights.len()];
        for (k, &p) in picks.iter().enumerate() {
            counts[(p - 100) / 3] += 1;
            let k = k as u64 + 1;
            for (pos, &w) in weights.iter().enumerate() {
                let bound = (u64::from(w) * k).div_ceil(s) + 1;
                prop_assert!(counts[pos] <= bound, "member {} weight {} got {} of {}", pos, w, counts[pos], k);
            }
        }
    }
}

// ---------------------------------------------------------------- all policies

#[derive(Debug, Clone)]
struct Scenario {
    /// (weight, tier) per member.
    members: Vec<(u32, u32)>,
    excluded: Vec<bool>,
    /// Non-member indices to throw into `exclude` too.
    strangers: Vec<usize>,
    loads: Vec<u32>,
    key: u64,
    random: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (0_usize..10).prop_flat_map(|n| {
        (
            prop::collection::vec((prop_oneof![Just(0_u32), 1_u32..=5], 0_u32..3), n),
            prop::collection::vec(prop::bool::weighted(0.3), n),
            prop::collection::vec(0_usize..100, 0..3),
            prop::collection::vec(0_u32..6, n),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(members, excluded, strangers, loads, key, random)| Scenario {
                    members,
                    excluded,
                    strangers,
                    loads,
                    key,
                    random,
                },
            )
    })
}

impl Scenario {
    fn members<'a>(&self, names: &'a [String]) -> Vec<Member<'a>> {
        self.members
            .iter()
            .enumerate()
            .map(|(pos, &(weight, tier))| Member {
                index: caller_index(pos),
                name: &names[pos],
                weight,
                tier,
            })
            .collect()
    }

    fn exclude(&self) -> Vec<usize> {
        let mut out: Vec<usize> = (0..self.members.len())
            .filter(|&pos| self.excluded[pos])
            .map(caller_index)
            .collect();
        out.extend(self.strangers.iter().map(|&s| 1000 + s));
        out
    }

    fn active_tier(&self) -> Option<u32> {
        self.members
            .iter()
            .filter(|&&(w, _)| w > 0)
            .map(|&(_, t)| t)
            .min()
    }

    /// Positions of members in the active tier with weight > 0.
    fn eligible(&self) -> Vec<usize> {
        let tier = self.active_tier();
        (0..self.members.len())
            .filter(|&pos| self.members[pos].0 > 0 && Some(self.members[pos].1) == tier)
            .collect()
    }

    fn load(&self, index: usize) -> u32 {
        self.loads[(index - 100) / 3]
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The contract every policy keeps: only eligible, non-excluded members; None iff all
    /// eligible members are excluded; only the active tier.
    #[test]
    fn every_policy_keeps_the_contract(sc in scenario()) {
        let names = names(sc.members.len());
        let members = sc.members(&names);
        let exclude = sc.exclude();
        let eligible = sc.eligible();
        let allowed: BTreeSet<usize> = eligible
            .iter()
            .filter(|&&pos| !sc.excluded[pos])
            .map(|&pos| caller_index(pos))
            .collect();
        let load = |i: usize| sc.load(i);
        for policy in Policy::ALL {
            let picker = Picker::new(policy, &members);
            prop_assert_eq!(picker.policy(), policy);
            prop_assert_eq!(picker.active_tier(), sc.active_tier());
            prop_assert_eq!(picker.len(), eligible.len());
            prop_assert_eq!(picker.is_empty(), eligible.is_empty());
            // Several picks, so cursors move and draws vary.
            for i in 0..4_u64 {
                let r = req(sc.key.wrapping_add(i), sc.random.wrapping_add(i), &load);
                match picker.pick(&r, &exclude) {
                    Some(index) => prop_assert!(allowed.contains(&index), "{policy}: {index} not allowed"),
                    None => prop_assert!(allowed.is_empty(), "{policy}: None with {allowed:?} allowed"),
                }
                let unrestricted = picker.pick(&r, &[]);
                prop_assert_eq!(unrestricted.is_none(), eligible.is_empty());
            }
        }
    }

    /// least_conn picks a member with minimal (load + 1) / weight.
    #[test]
    fn least_conn_picks_a_minimum(sc in scenario()) {
        let names = names(sc.members.len());
        let picker = Picker::new(Policy::LeastConn, &sc.members(&names));
        let exclude = sc.exclude();
        let load = |i: usize| sc.load(i);
        let Some(index) = picker.pick(&req(sc.key, sc.random, &load), &exclude) else {
            return Ok(());
        };
        let cost = |index: usize| {
            let pos = (index - 100) / 3;
            (u64::from(sc.loads[pos]) + 1, u64::from(sc.members[pos].0))
        };
        let (l, w) = cost(index);
        for pos in sc.eligible().into_iter().filter(|&pos| !sc.excluded[pos]) {
            let (lo, wo) = cost(caller_index(pos));
            prop_assert!(l * wo <= lo * w, "{index} costs {l}/{w}, member {pos} only {lo}/{wo}");
        }
    }

    /// first picks the first eligible, non-excluded member in the order given.
    #[test]
    fn first_picks_the_first_eligible(sc in scenario()) {
        let names = names(sc.members.len());
        let picker = Picker::new(Policy::First, &sc.members(&names));
        let expected = sc.eligible().into_iter().find(|&pos| !sc.excluded[pos]).map(caller_index);
        let load = |i: usize| sc.load(i);
        prop_assert_eq!(picker.pick(&req(sc.key, sc.random, &load), &sc.exclude()), expected);
    }

    /// With exactly two eligible members, both are drawn, so random picks the cheaper one.
    #[test]
    fn random_with_two_members_picks_the_cheaper(
        weights in (1_u32..=1000, 1_u32..=1000),
        loads in (0_u32..50, 0_u32..50),
        random in any::<u64>(),
    ) {
        let names = names(2);
        let picker = Picker::new(Policy::Random, &flat(&names, &[weights.0, weights.1]));
        let load = |i: usize| if i == caller_index(0) { loads.0 } else { loads.1 };
        let picked = picker.pick(&req(0, random, &load), &[]).expect("a member");
        let (c0, c1) = (
            u64::from(loads.0 + 1) * u64::from(weights.1),
            u64::from(loads.1 + 1) * u64::from(weights.0),
        );
        if c0 < c1 {
            prop_assert_eq!(picked, caller_index(0));
        } else if c1 < c0 {
            prop_assert_eq!(picked, caller_index(1));
        }
    }
}

#[test]
fn least_conn_rotates_ties() {
    let names = names(4);
    let picker = Picker::new(Policy::LeastConn, &flat(&names, &[2, 2, 2, 2]));
    let picks: BTreeSet<usize> = pick_many(&picker, 4).into_iter().collect();
    assert_eq!(picks.len(), 4, "equal members take turns");
}

#[test]
fn least_conn_weighs_load() {
    let names = names(3);
    let picker = Picker::new(Policy::LeastConn, &flat(&names, &[1, 3, 1]));
    // Costs: 5/1, 9/3 = 3, 4/1.
    let loads = [4_u32, 8, 3];
    let load = |i: usize| loads[(i - 100) / 3];
    for _ in 0..5 {
        assert_eq!(picker.pick(&req(0, 0, &load), &[]), Some(caller_index(1)));
    }
    assert_eq!(
        picker.pick(&req(0, 0, &load), &[caller_index(1)]),
        Some(caller_index(2))
    );
}

#[test]
fn random_follows_weights_when_loads_are_equal() {
    // Equal costs tie, and a tie keeps the first draw, so picks follow the weights.
    let names = names(3);
    let weights = [1_u32, 2, 5];
    let picker = Picker::new(Policy::Random, &flat(&names, &weights));
    // (load + 1) / weight is 1 for all three.
    let loads = [0_u32, 1, 4];
    let load = |i: usize| loads[(i - 100) / 3];
    let mut rng = Rng(7);
    let n = 80_000;
    let mut counts = [0_u32; 3];
    for _ in 0..n {
        let index = picker
            .pick(&req(0, rng.next(), &load), &[])
            .expect("a member");
        counts[(index - 100) / 3] += 1;
    }
    for (pos, &w) in weights.iter().enumerate() {
        let expected = f64::from(n) * f64::from(w) / 8.0;
        let got = f64::from(counts[pos]);
        assert!(
            (got - expected).abs() < expected * 0.05,
            "{counts:?} vs weights {weights:?}"
        );
    }
}

#[test]
fn random_prefers_less_loaded() {
    // Four equal members, one heavily loaded: it only wins when drawn... never, since the
    // second draw is a different member with a lower load.
    let names = names(4);
    let picker = Picker::new(Policy::Random, &flat(&names, &[1, 1, 1, 1]));
    let load = |i: usize| if i == caller_index(2) { 100 } else { 0 };
    let mut rng = Rng(1);
    for _ in 0..2000 {
        assert_ne!(
            picker.pick(&req(0, rng.next(), &load), &[]),
            Some(caller_index(2))
        );
    }
}

#[test]
fn tiers_fail_over() {
    let names = names(4);
    let mut members = flat(&names, &[3, 0, 2, 5]);
    members[0].tier = 1;
    members[1].tier = 0; // weight 0: does not make tier 0 active
    members[2].tier = 1;
    members[3].tier = 2;
    for policy in Policy::ALL {
        let picker = Picker::new(policy, &members);
        assert_eq!(picker.active_tier(), Some(1));
        assert_eq!(picker.len(), 2);
        let picked: BTreeSet<usize> = pick_many(&picker, 50).into_iter().collect();
        assert!(picked.is_subset(&[caller_index(0), caller_index(2)].into()));
        let load = idle;
        assert_eq!(
            picker.pick(&req(1, 1, &load), &[caller_index(0), caller_index(2)]),
            None,
            "{policy}: higher tiers are not a retry target"
        );
    }
}

#[test]
fn empty_and_all_zero_pick_nothing() {
    let names = names(3);
    for policy in Policy::ALL {
        for members in [vec![], flat(&names, &[0, 0, 0])] {
            let picker = Picker::new(policy, &members);
            assert!(picker.is_empty());
            assert_eq!(picker.len(), 0);
            assert_eq!(picker.active_tier(), None);
            assert_eq!(picker.pick(&req(1, 2, &idle), &[]), None);
        }
    }
}

// ---------------------------------------------------------------- maglev

/// The table with slots translated to names: comparable across input orders.
fn named(table: &Table, backends: &[(&str, u32)]) -> Vec<String> {
    table
        .entries()
        .iter()
        .map(|&i| backends[i as usize].0.to_owned())
        .collect()
}

fn counts(table: &Table, n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for &i in table.entries() {
        counts[i as usize] += 1;
    }
    counts
}

/// The one case the 1/N bound does not cover, found by the property below:
/// two names with the same stride walk the same cycle, and removing the third
/// backend moves two thirds of the table. Shares stay equal all the same.
#[test]
fn maglev_shared_stride_is_the_exception() {
    let names = [".9.-.6dvzmuyx50f:g", "c9-.-d.zmv45", "z3t3is57j.p0j05"];
    assert_eq!(maglev::skip(names[0]), maglev::skip(names[2]));
    let before: Vec<(&str, u32)> = names.iter().map(|&n| (n, 1)).collect();
    let after = vec![before[0], before[2]];
    let (t1, t2) = (Table::build(&before), Table::build(&after));
    let (n1, n2) = (named(&t1, &before), named(&t2, &after));
    let changed = n1.iter().zip(&n2).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 42_825);
    let c = counts(&t2, 2);
    assert!(c[0].abs_diff(c[1]) <= 1, "{c:?}");
}

#[test]
fn maglev_equal_shares_at_1000_backends() {
    let names = names(1000);
    let backends: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let table = Table::build(&backends);
    let expected = TABLE_SIZE as f64 / 1000.0;
    let tolerance = (expected * 0.01).max(1.0);
    for (i, &c) in counts(&table, 1000).iter().enumerate() {
        assert!(
            (c as f64 - expected).abs() <= tolerance,
            "backend {i} owns {c} slots, expected {expected:.1}"
        );
    }
}

#[test]
fn maglev_weighted_shares_follow_weights() {
    let names = names(4);
    let weights = [100_u32, 200, 300, 400];
    let backends: Vec<(&str, u32)> = names
        .iter()
        .zip(weights)
        .map(|(n, w)| (n.as_str(), w))
        .collect();
    let table = Table::build(&backends);
    for (i, &c) in counts(&table, 4).iter().enumerate() {
        let expected = TABLE_SIZE as f64 * f64::from(weights[i]) / 1000.0;
        assert!(
            (c as f64 - expected).abs() <= 2.0,
            "backend {i} owns {c}, expected {expected:.1}"
        );
    }
}

#[test]
fn maglev_golden_table() {
    // Instances of different releases must build the same table: if this changes, so does
    // where every client of every maglev pool goes during a rolling upgrade.
    let backends = [("pg-a", 1), ("pg-b", 1), ("pg-c", 2)];
    let table = Table::build(&backends);
    let bytes: Vec<u8> = table
        .entries()
        .iter()
        .flat_map(|e| e.to_le_bytes())
        .collect();
    assert_eq!(&table.entries()[..12], GOLDEN_PREFIX);
    assert_eq!(hash_bytes(&bytes), GOLDEN_DIGEST);
    // Weight 2 owns twice the slots (the odd slot goes to the first name).
    assert_eq!(counts(&table, 3), [16385, 16384, 32768]);
}
// Cross-checked against an independent Python implementation of the same construction.
const GOLDEN_PREFIX: &[u32] = &[2, 1, 0, 2, 2, 1, 2, 1, 2, 2, 2, 0];
const GOLDEN_DIGEST: u64 = 0x6620_a8c3_211d_8487;

#[test]
fn hash_bytes_vectors() {
    // Fixed forever: see maglev_golden_table.
    let vectors: &[(&[u8], u64)] = &[
        (b"", 0xf52a_15e9_a9b5_e89b),
        (b"a", 0x02c0_bdbf_4814_20f8),
        (b"10.0.0.1", 0x7fb1_b600_f0f5_c6d3),
        (&[10, 0, 0, 1], 0xe7a7_7091_5e3a_6bb4),
        (b"[::1]:5433", 0xe8c1_9468_a59a_817c),
        (b"db.example.com", 0x0be7_d3a1_bd53_0b71),
    ];
    for &(input, expected) in vectors {
        assert_eq!(
            hash_bytes(input),
            expected,
            "{input:?}: {:#018x}",
            hash_bytes(input)
        );
    }
}

#[test]
fn maglev_weight_zero_and_empty() {
    assert!(Table::build(&[]).is_empty());
    assert_eq!(Table::build(&[]).lookup(5), None);
    let t = Table::build(&[("a", 0), ("b", 0)]);
    assert!(t.is_empty());
    assert_eq!(t.lookup(5), None);
    assert_eq!(t.by_name(), [0, 1]);
    let t = Table::build(&[("b", 1), ("a", 0), ("c", 3)]);
    assert_eq!(t.entries().len(), TABLE_SIZE);
    assert!(!t.entries().contains(&1));
    assert_eq!(t.by_name(), [1, 0, 2]);
}

#[test]
fn maglev_picker_is_sticky_and_retries_deterministically() {
    let names = names(8);
    let members = flat(&names, &[1; 8]);
    let mut reversed = members.clone();
    reversed.reverse();
    let p1 = Picker::new(Policy::Maglev, &members);
    let p2 = Picker::new(Policy::Maglev, &reversed);
    let mut rng = Rng(3);
    for _ in 0..500 {
        let key = hash_bytes(&rng.next().to_le_bytes());
        let r = req(key, rng.next(), &idle);
        let first = p1.pick(&r, &[]).expect("a member");
        assert_eq!(p1.pick(&r, &[]), Some(first), "sticky");
        assert_eq!(p2.pick(&r, &[]), Some(first), "order-independent");
        let retry = p1.pick(&r, &[first]).expect("another member");
        assert_ne!(retry, first);
        assert_eq!(p2.pick(&r, &[first]), Some(retry), "retries agree too");
    }
    let all: Vec<usize> = (0..8).map(caller_index).collect();
    assert_eq!(p1.pick(&req(1, 1, &idle), &all), None);
}

fn backend_names() -> impl Strategy<Value = BTreeSet<String>> {
    prop::collection::btree_set("[a-z0-9.:-]{1,20}", 2..=260)
}

proptest! {
    // Each case builds tables of 65537 slots: keep the count small for the dev profile.
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any input order gives the identical table; every slot is a valid backend with a
    /// weight; weight 0 owns nothing; shares are within one turn of their weight.
    #[test]
    fn maglev_is_order_independent_and_weighted(
        named_weights in prop::collection::btree_map("[a-z0-9-]{1,12}", prop_oneof![1 => Just(0_u32), 4 => 1_u32..=1000], 1..60)
            .prop_map(|m| m.into_iter().collect::<Vec<_>>())
            .prop_shuffle(),
        seed in any::<u64>(),
    ) {
        let backends: Vec<(&str, u32)> = named_weights.iter().map(|(n, w)| (n.as_str(), *w)).collect();
        let table = Table::build(&backends);
        let mut shuffled = backends.clone();
        let mut rng = Rng(seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let other = Table::build(&shuffled);
        prop_assert_eq!(named(&table, &backends), named(&other, &shuffled));

        let w_max = backends.iter().map(|&(_, w)| u64::from(w)).max().unwrap_or(0);
        if w_max == 0 {
            prop_assert!(table.is_empty());
            return Ok(());
        }
        prop_assert_eq!(table.entries().len(), TABLE_SIZE);
        prop_assert!(table.entries().iter().all(|&i| (i as usize) < backends.len() && backends[i as usize].1 > 0));
        let counts = counts(&table, backends.len());
        // After whole round t a backend has taken ceil(t w / w_max) turns and the last round
        // is partial, so normalised by weight no backend is a full round ahead of another:
        // (c_j - 1) / w_j < c_i / w_i + 1 / w_max.
        for (i, &(_, wi)) in backends.iter().enumerate().filter(|(_, b)| b.1 > 0) {
            for (j, &(_, wj)) in backends.iter().enumerate().filter(|(_, b)| b.1 > 0) {
                let (ci, cj) = (counts[i] as u64, counts[j] as u64);
                let (wi, wj) = (u64::from(wi), u64::from(wj));
                prop_assert!(
                    cj.saturating_sub(1) * w_max * wi < ci * w_max * wj + wi * wj,
                    "{} ({}) owns {}, {} ({}) owns {}", i, wi, ci, j, wj, cj
                );
            }
        }
    }

    /// Removing one of N backends moves its own 1/N of the slots and only a few
    /// more, when no two names share a stride (see
    /// `maglev_shared_stride_is_the_exception`). Maglev does not promise exactly 1/N:
    /// the most extra slots seen were 4.9% of the table at N = 3, 3.1% at 5 and 1.3% at
    /// 12 (8,000 random name sets each), under 0.9% at 24, 64 and 260 (700 each). The
    /// bound, 1/N + 2% + 20%/N, keeps a margin of at least 1.7 times that worst case.
    #[test]
    fn maglev_removal_is_minimally_disruptive(
        names in backend_names(),
        victim in any::<prop::sample::Index>(),
    ) {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let strides: BTreeSet<usize> = names.iter().map(|n| maglev::skip(n)).collect();
        prop_assume!(strides.len() == names.len());
        let before: Vec<(&str, u32)> = names.iter().map(|&n| (n, 1)).collect();
        let gone = victim.index(before.len());
        let mut after = before.clone();
        after.remove(gone);
        let (t1, t2) = (Table::build(&before), Table::build(&after));
        let (n1, n2) = (named(&t1, &before), named(&t2, &after));
        let changed = n1.iter().zip(&n2).filter(|(a, b)| a != b).count();
        let n = before.len() as f64;
        let bound = TABLE_SIZE as f64 * (1.0 / n + 0.02 + 0.2 / n);
        prop_assert!(
            changed as f64 <= bound,
            "{} of {} slots changed removing 1 of {}", changed, TABLE_SIZE, before.len()
        );
        // The removed backend's slots all moved; nobody else's slots went to it.
        prop_assert!(!n2.iter().any(|n| n == names[gone]));
    }
}

/// Release-mode timing of the 1000-backend build:
/// `cargo test -p weir-balance --release -- --ignored --nocapture maglev_build_time`.
#[test]
#[ignore = "timing; run in release"]
fn maglev_build_time() {
    let names = names(1000);
    for weights in [
        vec![1_u32; 1000],
        (0..1000).map(|i| 1 + (i * 37) % 1000).collect(),
    ] {
        let backends: Vec<(&str, u32)> = names
            .iter()
            .zip(&weights)
            .map(|(n, &w)| (n.as_str(), w))
            .collect();
        let start = std::time::Instant::now();
        let rounds = 20;
        for _ in 0..rounds {
            std::hint::black_box(Table::build(std::hint::black_box(&backends)));
        }
        eprintln!(
            "maglev build, 1000 backends ({}): {:?} per table",
            if weights[1] == 1 {
                "equal weights"
            } else {
                "weights 1..=1000"
            },
            start.elapsed() / rounds
        );
    }
}
