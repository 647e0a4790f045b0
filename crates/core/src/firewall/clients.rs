//! Per-client state for `per_client` limits: a token bucket of new
//! connections, one of HTTP requests, and the count of open connections, per
//! client address (or per network of `ipv4_prefix` / `ipv6_prefix` bits).
//!
//! Bounded under a flood of distinct sources: the table holds at most
//! `max_tracked` clients, spread over shards that each take their share. A
//! new client in a full shard takes the place of the shard's oldest client
//! that has no connection open (first in, first out); its state is lost, and
//! that is counted (`evicted`). Clients that hold nothing a fresh entry would
//! not (no connection open, buckets full again) are forgotten by a periodic
//! sweep. Each shard has its own short lock; nothing is shared across them.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use weir_config::PerClient;

use super::Block;
use crate::sync::lock;

const SHARDS: usize = 64;
/// Entries looked at, at most, to make room for a new client in a full
/// shard: the cost of a new client stays constant under a flood.
const EVICTION_TRIES: usize = 8;

/// The per-client table of one listener.
#[derive(Debug)]
pub struct ClientTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    epoch: Instant,
    tracked: AtomicUsize,
    /// Clients whose state was dropped to make room (their limits restart).
    evicted: AtomicU64,
    /// Connections let in untracked: the table was full of clients with
    /// connections open.
    untracked: AtomicU64,
    /// The limits the sweeper forgets clients by: the listener's latest
    /// (a reload that keeps the table sets them, see [`ClientTable::adopt`]).
    limits: Mutex<PerClient>,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<u128, Entry>,
    /// Keys in the order they came in; the front is evicted first.
    order: VecDeque<u128>,
}

#[derive(Debug)]
struct Entry {
    connections: Bucket,
    requests: Bucket,
    /// Open connections; shared with their [`ClientSlot`]s, which give
    /// theirs back without the shard's lock.
    open: Arc<AtomicU32>,
}

/// A token bucket: `tokens` as of `at` (nanoseconds since the table's epoch).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: u64,
}

impl Bucket {
    fn full(burst: u32, now: u64) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Refills at `rate` per second up to `burst`, then takes one token.
    fn take(&mut self, rate: u32, burst: u32, now: u64) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, rate: u32, burst: u32, now: u64) {
        let elapsed = now.saturating_sub(self.at) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.at = now;
    }

    fn is_full(&self, rate: Option<u32>, burst: u32, now: u64) -> bool {
        let Some(rate) = rate else {
            return true;
        };
        let mut b = *self;
        b.refill(rate, burst, now);
        b.tokens >= f64::from(burst)
    }
}

/// One connection's hold on its client's count of open connections; given
/// back when dropped.
#[derive(Debug)]
pub struct ClientSlot(Arc<AtomicU32>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl ClientTable {
    pub fn new(limits: &PerClient) -> ClientTable {
        let max = usize::try_from(limits.max_tracked).unwrap_or(usize::MAX);
        ClientTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: max.div_ceil(SHARDS).max(1),
            ipv4_prefix: limits.ipv4_prefix,
            ipv6_prefix: limits.ipv6_prefix,
            epoch: Instant::now(),
            tracked: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
            limits: Mutex::new(*limits),
        }
    }

    /// Serves `limits` from now on, kept by a reload (see [`Self::fits`]):
    /// a client is forgotten only when a fresh entry would stand for it under
    /// these, so a rate a reload adds is not undone by the next sweep.
    pub fn adopt(&self, limits: &PerClient) {
        *lock(&self.limits) = *limits;
    }

    /// Whether this table can serve `limits` (else a reload builds a new
    /// one): the same keys and the same size.
    pub fn fits(&self, limits: &PerClient) -> bool {
        self.ipv4_prefix == limits.ipv4_prefix
            && self.ipv6_prefix == limits.ipv6_prefix
            && self.per_shard
                == usize::try_from(limits.max_tracked)
                    .unwrap_or(usize::MAX)
                    .div_ceil(SHARDS)
                    .max(1)
    }

    pub fn tracked(&self) -> usize {
        self.tracked.load(Relaxed)
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    pub fn untracked(&self) -> u64 {
        self.untracked.load(Relaxed)
    }

    /// The key of a client: its address, or its network of `ipv4_prefix` /
    /// `ipv6_prefix` bits. IPv4 keys live in `::ffff:0:0/96`.
    fn key(&self, ip: IpAddr) -> u128 {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.ipv4_prefix))
                    .unwrap_or(0);
                (0xffff_u128 << 32) | u128::from(u32::from(a) & mask)
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                u128::from(a) & mask
            }
        }
    }

    fn now(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn shard(&self, key: u128) -> MutexGuard<'_, Shard> {
        let mut h = self.hasher.build_hasher();
        h.write_u128(key);
        let i = (h.finish() % SHARDS as u64) as usize;
        lock(&self.shards[i])
    }

    /// A new connection from `ip` at `at`: its slot among the client's open
    /// connections (`None` when the table had no room to track it), or the
    /// limit it is over. A connection refused for `concurrent` takes no
    /// token.
    pub fn connect(
        &self,
        ip: IpAddr,
        limits: &PerClient,
        at: Instant,
    ) -> Result<Option<ClientSlot>, Block> {
        let key = self.key(ip);
        let now = self.now(at);
        let mut shard = self.shard(key);
        let Some(entry) = self.entry(&mut shard, key, limits, now) else {
            self.untracked.fetch_add(1, Relaxed);
            return Ok(None);
        };
        if let Some(max) = limits.concurrent
            && entry.open.load(Relaxed) >= max
        {
            return Err(Block::Concurrency);
        }
        if let Some(rate) = limits.rate
            && !entry.connections.take(rate, limits.burst, now)
        {
            return Err(Block::RateLimit);
        }
        entry.open.fetch_add(1, Relaxed);
        Ok(Some(ClientSlot(Arc::clone(&entry.open))))
    }

    /// An HTTP request from `ip` at `at`: false when the client is over
    /// `requests` per second.
    pub fn request(&self, ip: IpAddr, limits: &PerClient, at: Instant) -> bool {
        let Some(rate) = limits.requests else {
            return true;
        };
        let key = self.key(ip);
        let now = self.now(at);
        let mut shard = self.shard(key);
        match self.entry(&mut shard, key, limits, now) {
            Some(entry) => entry.requests.take(rate, limits.requests_burst, now),
            None => true,
        }
    }

    /// The client's entry, made (room made for it) when new; `None` when
    /// the shard is full of clients with connections open.
    fn entry<'s>(
        &self,
        shard: &'s mut Shard,
        key: u128,
        limits: &PerClient,
        now: u64,
    ) -> Option<&'s mut Entry> {
        if !shard.map.contains_key(&key) {
            if shard.map.len() >= self.per_shard && !self.make_room(shard, limits, now) {
                return None;
            }
            shard.map.insert(
                key,
                Entry {
                    connections: Bucket::full(limits.burst, now),
                    requests: Bucket::full(limits.requests_burst, now),
                    open: Arc::new(AtomicU32::new(0)),
                },
            );
            shard.order.push_back(key);
            self.tracked.fetch_add(1, Relaxed);
        }
        shard.map.get_mut(&key)
    }

    /// Drops the oldest entry without open connections, looking at a few
    /// at most. True when one was dropped.
    fn make_room(&self, shard: &mut Shard, limits: &PerClient, now: u64) -> bool {
        for _ in 0..EVICTION_TRIES {
            let Some(key) = shard.order.pop_front() else {
                return false;
            };
            match shard.map.get(&key) {
                Some(e) if e.open.load(Relaxed) > 0 => shard.order.push_back(key),
                Some(e) => {
                    if !forgettable(e, limits, now) {
                        self.evicted.fetch_add(1, Relaxed);
                    }
                    shard.map.remove(&key);
                    self.tracked.fetch_sub(1, Relaxed);
                    return true;
                }
                None => {}
            }
        }
        false
    }

    /// Forgets the clients a fresh entry would stand for as well.
    pub fn sweep(&self, limits: &PerClient, at: Instant) {
        let now = self.now(at);
        for shard in &*self.shards {
            let mut shard = lock(shard);
            let before = shard.map.len();
            shard.map.retain(|_, e| !forgettable(e, limits, now));
            let removed = before - shard.map.len();
            if removed > 0 {
                let Shard { map, order } = &mut *shard;
                order.retain(|k| map.contains_key(k));
                self.tracked.fetch_sub(removed, Relaxed);
            }
        }
    }

    /// Sweeps every `every` while the table is in use (held by a listener),
    /// by the limits it serves at the time.
    pub fn spawn_sweeper(table: &Arc<ClientTable>, every: Duration) {
        let weak = Arc::downgrade(table);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(table) = weak.upgrade() else {
                    return;
                };
                let limits = *lock(&table.limits);
                table.sweep(&limits, Instant::now());
            }
        });
    }
}

/// No connection open and both buckets full: the entry says nothing a new
/// one would not.
fn forgettable(e: &Entry, limits: &PerClient, now: u64) -> bool {
    e.open.load(Relaxed) == 0
        && e.connections.is_full(limits.rate, limits.burst, now)
        && e.requests
            .is_full(limits.requests, limits.requests_burst, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PerClient {
        PerClient {
            rate: Some(10),
            burst: 3,
            concurrent: Some(2),
            requests: Some(5),
            requests_burst: 5,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_tracked: 1000,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = PerClient {
            concurrent: None,
            ..limits()
        };
        let t = ClientTable::new(&l);
        let t0 = Instant::now();
        let mut slots = Vec::new();
        for _ in 0..3 {
            slots.push(t.connect(ip("192.0.2.1"), &l, t0).expect("burst"));
        }
        assert_eq!(
            t.connect(ip("192.0.2.1"), &l, t0).err(),
            Some(Block::RateLimit)
        );
        // Another client has its own bucket.
        assert!(t.connect(ip("192.0.2.2"), &l, t0).is_ok());
        // 10 per second: one token back after 100 ms, not before (0.9 at
        // 90 ms, 1.5 at 150 ms).
        let t1 = t0 + Duration::from_millis(90);
        assert!(t.connect(ip("192.0.2.1"), &l, t1).is_err());
        let t2 = t0 + Duration::from_millis(150);
        assert!(t.connect(ip("192.0.2.1"), &l, t2).is_ok());
        assert!(t.connect(ip("192.0.2.1"), &l, t2).is_err());
    }

    #[test]
    fn concurrency_counts_open_connections_and_takes_no_token() {
        let l = PerClient {
            rate: Some(1),
            burst: 3,
            ..limits()
        };
        let t = ClientTable::new(&l);
        let now = Instant::now();
        let a = t.connect(ip("192.0.2.1"), &l, now).expect("1");
        let b = t.connect(ip("192.0.2.1"), &l, now).expect("2");
        for _ in 0..5 {
            assert_eq!(
                t.connect(ip("192.0.2.1"), &l, now).err(),
                Some(Block::Concurrency)
            );
        }
        drop(a);
        // The third token is still there: the refusals took none.
        let c = t.connect(ip("192.0.2.1"), &l, now).expect("3");
        drop((b, c));
        assert_eq!(
            t.connect(ip("192.0.2.1"), &l, now).err(),
            Some(Block::RateLimit)
        );
    }

    #[test]
    fn prefixes_group_clients() {
        let l = PerClient {
            rate: None,
            concurrent: Some(1),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            ..limits()
        };
        let t = ClientTable::new(&l);
        let now = Instant::now();
        let _a = t.connect(ip("192.0.2.1"), &l, now).expect("first");
        assert!(t.connect(ip("192.0.2.200"), &l, now).is_err());
        assert!(t.connect(ip("::ffff:192.0.2.9"), &l, now).is_err());
        assert!(t.connect(ip("192.0.3.1"), &l, now).is_ok());
        let _b = t.connect(ip("2001:db8:0:1::1"), &l, now).expect("v6");
        assert!(t.connect(ip("2001:db8:0:1:ffff::2"), &l, now).is_err());
        assert!(t.connect(ip("2001:db8:0:2::1"), &l, now).is_ok());
    }

    #[test]
    fn requests_have_their_own_bucket() {
        let l = limits();
        let t = ClientTable::new(&l);
        let now = Instant::now();
        for _ in 0..5 {
            assert!(t.request(ip("192.0.2.1"), &l, now));
        }
        assert!(!t.request(ip("192.0.2.1"), &l, now));
        assert!(t.request(ip("192.0.2.1"), &l, now + Duration::from_millis(201)));
        // Connections were not touched.
        assert!(t.connect(ip("192.0.2.1"), &l, now).is_ok());
    }

    /// A flood of distinct sources: the table stays at its size, the oldest
    /// idle clients make room, and clients with connections open keep their
    /// state.
    #[test]
    fn a_flood_of_sources_stays_bounded() {
        let l = PerClient {
            max_tracked: 640,
            concurrent: Some(1),
            ..limits()
        };
        let t = ClientTable::new(&l);
        let now = Instant::now();
        let held = t.connect(ip("198.51.100.1"), &l, now).expect("held");
        for i in 0..100_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let _ = t.connect(IpAddr::V4(a), &l, now).expect("room");
        }
        assert!(t.tracked() <= 640, "{}", t.tracked());
        assert!(t.evicted() > 99_000, "{}", t.evicted());
        // Still known: its connection is open.
        assert_eq!(
            t.connect(ip("198.51.100.1"), &l, now).err(),
            Some(Block::Concurrency)
        );
        drop(held);
        // Once everything has refilled, a sweep forgets everyone.
        t.sweep(&l, now + Duration::from_secs(10));
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn a_table_full_of_open_connections_lets_newcomers_in_untracked() {
        let l = PerClient {
            max_tracked: 16,
            rate: None,
            concurrent: Some(5),
            ..limits()
        };
        let t = ClientTable::new(&l);
        let now = Instant::now();
        let mut held = Vec::new();
        for i in 0..2_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            held.push(t.connect(IpAddr::V4(a), &l, now).expect("in"));
        }
        assert!(t.tracked() <= 64, "{}", t.tracked());
        assert!(t.untracked() > 0);
        assert!(held.iter().filter(|s| s.is_none()).count() as u64 == t.untracked());
    }
}
