//! Stable hashing: FNV-1a over the bytes, then a splitmix64-style finaliser.
//!
//! Every function here is part of the wire-level contract between weir instances: two
//! instances that disagree on a hash build different maglev tables and send the same
//! client to different backends. Changing any constant is a breaking change, caught by
//! the fixed vectors in the tests.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Odd constant (2^64 / golden ratio) used to spread small integers before mixing.
pub(crate) const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// FNV-1a, 64 bit, starting from `state`. Good enough to consume bytes; its weak
/// avalanche in the high bits is repaired by [`mix64`].
pub(crate) const fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        state ^= bytes[i] as u64;
        state = state.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    state
}

/// The splitmix64 finaliser: a bijection on u64 with full avalanche.
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A family of independent hashes of `bytes`, one per `seed`. Seed 0 is [`crate::hash_bytes`].
pub(crate) const fn seeded(bytes: &[u8], seed: u64) -> u64 {
    mix64(fnv1a(FNV_OFFSET ^ seed, bytes) ^ seed)
}

/// A fresh key derived from `key` for the `attempt`-th retry (attempt >= 1).
pub(crate) const fn rehash(key: u64, attempt: u64) -> u64 {
    mix64(key ^ attempt.wrapping_mul(GOLDEN))
}

/// Maps 64 random bits uniformly onto `0..n` (n > 0) without a division.
pub(crate) const fn below(random: u64, n: u64) -> u64 {
    ((random as u128 * n as u128) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_published_vectors() {
        // From the FNV reference test suite (64-bit FNV-1a).
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn mix64_is_splitmix_finaliser() {
        // splitmix64 seeded with 0 yields mix64(GOLDEN) as its first output.
        assert_eq!(mix64(GOLDEN), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix64(0), 0);
    }

    #[test]
    fn below_stays_in_range() {
        for n in [1_u64, 2, 3, 7, 1000, u64::MAX] {
            assert!(below(0, n) < n);
            assert!(below(u64::MAX, n) < n);
            assert!(below(GOLDEN, n) < n);
        }
        assert_eq!(below(u64::MAX, 10), 9);
        assert_eq!(below(0, 10), 0);
    }
}
