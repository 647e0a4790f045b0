//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016).
//!
//! A lookup table of [`TABLE_SIZE`] slots (a prime) is filled by letting backends take turns;
//! each turn claims the backend's next preferred empty slot. A backend's preference list is
//! the permutation `offset, offset + skip, offset + 2 skip, ... (mod M)`, with `offset` and
//! `skip` derived from its name only. Because the name is the only input, adding or removing
//! one of N backends changes roughly 1/N of the slots (more when two names share a
//! [`skip`]), and every weir instance given the same
//! backend set (in any order) builds a bit-identical table: N instances behind ECMP agree on
//! where each client goes without talking to each other.
//!
//! Weights change how often a backend takes a turn: in round `t` (1, 2, ...) backend `i` takes
//! a turn while `taken_i * w_max < t * w_i`, so after round `t` it has taken
//! `ceil(t * w_i / w_max)` turns. The heaviest backends take one turn per round; weight 0 takes
//! none and owns no slot.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use crate::hash;

/// Number of slots, M. A prime, so that every `skip` in `1..M` visits every slot. 65537 is the
/// size Envoy and the paper's evaluation use: about 65 slots per backend at 1000 backends.
pub const TABLE_SIZE: usize = 65537;

const M: u64 = TABLE_SIZE as u64;
const EMPTY: u32 = u32::MAX;
/// Seeds of the two name hashes (ASCII "offset" and "skip"): part of the cross-release
/// contract, like [`crate::hash_bytes`].
const SEED_OFFSET: u64 = 0x6f66_6673_6574;
const SEED_SKIP: u64 = 0x736b_6970;

/// The first slot a backend named `name` prefers.
pub(crate) fn offset(name: &str) -> usize {
    (hash::seeded(name.as_bytes(), SEED_OFFSET) % M) as usize
}

/// The stride of a backend's preference list, in `1..M`.
///
/// Two names share a stride with probability 1/65,536. Their preference
/// lists are then the same cycle from different starts, so they contend for
/// the same slots, and adding or removing a third backend can move far more
/// than 1/N of the slots between them (two thirds of the table, in the
/// worst case seen among three backends). Every Maglev table built this way
/// shares the trait; renaming one of the two backends ends it.
pub fn skip(name: &str) -> usize {
    (hash::seeded(name.as_bytes(), SEED_SKIP) % (M - 1) + 1) as usize
}

/// A filled maglev lookup table.
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    /// Slot -> index into the `backends` slice given to [`Table::build`]. Empty when no
    /// backend has a weight above 0.
    entries: Box<[u32]>,
    /// Indices into `backends`, ordered by (name, weight).
    by_name: Box<[usize]>,
}

impl Table {
    /// Builds the table for `(name, weight)` pairs. The result depends only on the multiset of
    /// pairs, not on their order (apart from which index is reported for two backends with the
    /// same name and weight). Backends with weight 0 own no slot. If more than [`TABLE_SIZE`]
    /// backends have a weight, the table fills before the last ones (by name) get a turn.
    ///
    /// Cost: O(M log M) slot probes plus O(M log N) heap operations.
    ///
    /// # Panics
    ///
    /// If given `u32::MAX` backends or more.
    pub fn build(backends: &[(&str, u32)]) -> Table {
        assert!(
            backends.len() < EMPTY as usize,
            "maglev table over too many backends"
        );
        let mut by_name: Vec<usize> = (0..backends.len()).collect();
        // Stable: equal (name, weight) pairs keep input order, which is all they can differ by.
        by_name.sort_by(|&a, &b| backends[a].cmp(&backends[b]));

        let w_max = backends
            .iter()
            .map(|&(_, w)| u64::from(w))
            .max()
            .unwrap_or(0);
        if w_max == 0 {
            return Table {
                entries: Box::new([]),
                by_name: by_name.into_boxed_slice(),
            };
        }

        struct Turn {
            input: u32,
            weight: u64,
            slot: u64,
            skip: u64,
            taken: u64,
        }
        // Backends with a weight, in name order: ties within a round go to the earlier name.
        let mut turns: Vec<Turn> = by_name
            .iter()
            .filter(|&&i| backends[i].1 > 0)
            .map(|&i| {
                let (name, weight) = backends[i];
                Turn {
                    input: i as u32,
                    weight: u64::from(weight),
                    slot: offset(name) as u64,
                    skip: skip(name) as u64,
                    taken: 0,
                }
            })
            .collect();

        // Min-heap of (round of the next turn, name position): pops in the exact order of the
        // round-by-round loop, without visiting backends that sit a round out.
        let mut queue: BinaryHeap<Reverse<(u64, usize)>> =
            (0..turns.len()).map(|k| Reverse((1, k))).collect();
        let mut entries = vec![EMPTY; TABLE_SIZE].into_boxed_slice();
        let mut filled = 0;
        while let Some(Reverse((_, k))) = queue.pop() {
            let turn = &mut turns[k];
            loop {
                let slot = turn.slot as usize;
                turn.slot += turn.skip;
                if turn.slot >= M {
                    turn.slot -= M;
                }
                if entries[slot] == EMPTY {
                    entries[slot] = turn.input;
                    break;
                }
            }
            filled += 1;
            if filled == TABLE_SIZE {
                break;
            }
            turn.taken += 1;
            // Smallest round t with taken * w_max < t * w.
            let next = turn.taken * w_max / turn.weight + 1;
            queue.push(Reverse((next, k)));
        }
        Table {
            entries,
            by_name: by_name.into_boxed_slice(),
        }
    }

    /// The backend (index into the slice given to [`Table::build`]) for a hashed key, or
    /// `None` if no backend has a weight.
    #[inline]
    pub fn lookup(&self, key: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        Some(self.entries[(key % M) as usize] as usize)
    }

    /// The slots: each is an index into the slice given to [`Table::build`]. Either
    /// [`TABLE_SIZE`] long or empty (no backend with a weight).
    pub fn entries(&self) -> &[u32] {
        &self.entries
    }

    /// Every backend's index into the slice given to [`Table::build`], in (name, weight)
    /// order, weight-0 backends included.
    pub fn by_name(&self) -> &[usize] {
        &self.by_name
    }

    /// Whether no backend owns a slot.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 65537 entries are noise in a debug print.
        f.debug_struct("Table")
            .field("backends", &self.by_name.len())
            .field("slots", &self.entries.len())
            .finish()
    }
}
