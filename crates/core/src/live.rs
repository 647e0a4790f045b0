//! Live connections: every routed TCP connection and every UDP flow is in
//! its listener's registry until it ends, with live byte counts and its
//! state, so that an operator can list them (`weir connections`) and close
//! the ones matched (`weir connections close`).
//!
//! The registry is sharded: a connection takes one shard's lock to enter and
//! one to leave, and a listing takes the shards one after another, copying
//! what it needs, so that listing 100,000 connections holds no lock for
//! longer than a shard's share takes to copy. Closing sets a flag and wakes
//! the connection's task, which ends with the reason `operator` (an
//! operator's close) or `shutdown` (the listener's `shutdown_timeout` ran
//! out, [`Registry::kill`]): the relay checks the flag whenever it is
//! polled, a connection still connecting or queued, an l7 connection and a
//! UDP flow wait for it beside their other reasons to stop.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use ipnet::IpNet;
use tokio::time::Instant;

use crate::Reason;
use crate::listener::{Listener, Mode};
use crate::sync::lock;

/// Shards of a registry: enough that two worker threads seldom meet.
const SHARDS: usize = 32;

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Routed; picking a backend (waiting in the queue, if every one is
    /// full) and connecting.
    Connecting = 0,
    /// Relaying bytes (an l4 route).
    Relaying = 1,
    /// Served as HTTP (an l7 route).
    Http = 2,
    /// A UDP flow: datagrams of one client relayed to its backend.
    Udp = 3,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Relaying => "relaying",
            Self::Http => "http",
            Self::Udp => "udp",
        }
    }

    fn from_u8(v: u8) -> ConnState {
        match v {
            1 => Self::Relaying,
            2 => Self::Http,
            3 => Self::Udp,
            _ => Self::Connecting,
        }
    }
}

/// One live connection.
#[derive(Debug)]
pub struct Live {
    id: u64,
    /// The generation it was accepted by: its route and pool.
    listener: Arc<Listener>,
    route: u16,
    /// Its place in its shard.
    slot: u32,
    // The client's address in parts: a `SocketAddr` would take 12 bytes
    // more, in every connection.
    client_ip: IpAddr,
    client_port: u16,
    started: Instant,
    state: AtomicU8,
    /// The backend of an l4 connection, as an index into its pool;
    /// `u32::MAX` until connected.
    backend: AtomicU32,
    /// Bytes from the client to the backend, and back.
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    /// Why it was closed: [`OPEN`] until an operator ([`BY_OPERATOR`]) or
    /// the listener's end ([`BY_SHUTDOWN`]) closes it.
    closed: AtomicU8,
    waker: AtomicWaker,
}

const OPEN: u8 = 0;
const BY_OPERATOR: u8 = 1;
const BY_SHUTDOWN: u8 = 2;

impl Live {
    pub(crate) fn set_state(&self, s: ConnState) {
        self.state.store(s as u8, Relaxed);
    }

    pub(crate) fn set_backend(&self, index: usize) {
        self.name_backend(index);
        self.set_state(ConnState::Relaying);
    }

    /// Names its backend, its state left as it is (a UDP flow's).
    pub(crate) fn name_backend(&self, index: usize) {
        self.backend
            .store(u32::try_from(index).unwrap_or(u32::MAX), Relaxed);
    }

    /// When it was routed.
    pub(crate) fn started(&self) -> &Instant {
        &self.started
    }

    /// Why the connection was closed: `Operator`, `Shutdown` (its
    /// listener's `shutdown_timeout` ran out, or `close_all`), or `None`
    /// while it is open.
    pub fn closed_by(&self) -> Option<Reason> {
        match self.closed.load(Relaxed) {
            OPEN => None,
            BY_OPERATOR => Some(Reason::Operator),
            _ => Some(Reason::Shutdown),
        }
    }

    /// True once the connection was closed, by an operator or for shutdown.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed) != OPEN
    }

    /// Ready once the connection was closed, with why; registers the task
    /// to be woken when that happens.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<Reason> {
        if let Some(why) = self.closed_by() {
            return Poll::Ready(why);
        }
        self.waker.register(cx.waker());
        // Closed between the look and the registration: seen now.
        match self.closed_by() {
            Some(why) => Poll::Ready(why),
            None => Poll::Pending,
        }
    }

    /// Waits until the connection is closed, by an operator or for
    /// shutdown.
    pub async fn closed(&self) -> Reason {
        std::future::poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// Bytes from the client so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    /// Bytes to the client so far.
    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }

    /// Counts bytes of an l7 connection (an l4 relay counts its own).
    pub fn count(&self, sent: u64, received: u64) {
        if sent > 0 {
            self.sent.fetch_add(sent, Relaxed);
        }
        if received > 0 {
            self.received.fetch_add(received, Relaxed);
        }
    }

    /// Closes it for `by` ([`BY_OPERATOR`], [`BY_SHUTDOWN`]); false when
    /// it was closed already.
    fn close(&self, by: u8) -> bool {
        let first = self
            .closed
            .compare_exchange(OPEN, by, Relaxed, Relaxed)
            .is_ok();
        if first {
            self.waker.wake();
        }
        first
    }

    /// A copy of what a listing shows.
    fn view(&self) -> ConnView {
        let route = self.listener.routes.get(usize::from(self.route));
        let (pool, backend) = match route.map(|r| &r.mode) {
            Some(Mode::L4(up)) => {
                let i = self.backend.load(Relaxed) as usize;
                (
                    Some(up.pool.name.clone()),
                    up.pool.backends.get(i).map(|b| b.name.clone()),
                )
            }
            _ => (None, None),
        };
        ConnView {
            id: self.id,
            listener: self.listener.name.clone(),
            route: route.map_or_else(String::new, |r| r.name.clone()),
            pool,
            backend,
            client: SocketAddr::new(self.client_ip, self.client_port),
            age: self.started.elapsed(),
            sent: self.sent.load(Relaxed),
            received: self.received.load(Relaxed),
            state: ConnState::from_u8(self.state.load(Relaxed)),
        }
    }

    /// The pools a connection may use: an l4 route's one, an l7 route's
    /// rules' pools.
    fn uses_pool(&self, pool: &str) -> bool {
        self.listener
            .routes
            .get(usize::from(self.route))
            .is_some_and(|r| r.pools().iter().any(|p| p.name == pool))
    }
}

/// Ready when the connection of `live` is closed, by an operator or for
/// shutdown, with why; never without an entry.
pub async fn closed(live: Option<&Live>) -> Reason {
    match live {
        Some(l) => l.closed().await,
        None => std::future::pending().await,
    }
}

/// A live connection as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnView {
    /// Unique in this process.
    pub id: u64,
    pub listener: String,
    pub route: String,
    /// An l4 connection's pool; an l7 one picks a pool per request.
    pub pool: Option<String>,
    /// An l4 connection's backend, once connected.
    pub backend: Option<String>,
    pub client: SocketAddr,
    pub age: Duration,
    pub sent: u64,
    pub received: u64,
    pub state: ConnState,
}

/// Which connections a listing or a close is about; every given condition
/// must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnFilter {
    pub listener: Option<String>,
    /// An l4 connection to this pool, or an l7 one whose route sends to it.
    pub pool: Option<String>,
    /// An l4 connection to this backend.
    pub backend: Option<String>,
    pub client: Option<IpNet>,
    pub id: Option<u64>,
}

impl ConnFilter {
    /// An IP address or CIDR, as a client condition.
    pub fn parse_client(text: &str) -> Result<IpNet, crate::server::ControlError> {
        crate::server::firewall::parse_network(text)
    }

    /// True when no condition is given: every connection.
    pub fn is_empty(&self) -> bool {
        *self == ConnFilter::default()
    }

    fn matches(&self, c: &Live) -> bool {
        if self.id.is_some_and(|id| id != c.id) {
            return false;
        }
        if self.client.is_some_and(|net| !net.contains(&c.client_ip)) {
            return false;
        }
        if let Some(pool) = &self.pool
            && !c.uses_pool(pool)
        {
            return false;
        }
        if let Some(backend) = &self.backend {
            let route = c.listener.routes.get(usize::from(c.route));
            let Some(Mode::L4(up)) = route.map(|r| &r.mode) else {
                return false;
            };
            let i = c.backend.load(Relaxed) as usize;
            if up.pool.backends.get(i).is_none_or(|b| &b.name != backend) {
                return false;
            }
        }
        true
    }
}

/// One shard: a slab of connections (a slot freed is used again).
#[derive(Debug, Default)]
struct Slab {
    slots: Vec<Option<Arc<Live>>>,
    free: Vec<u32>,
    len: usize,
}

/// The next connection's ID: one count for the process, so that an ID
/// names one connection whatever its listener (and a listener removed and
/// added back does not count from 1 again).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The live connections of one listener, kept across reloads.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Mutex<Slab>]>,
    /// Set for good by [`Registry::kill`].
    killed: AtomicBool,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            killed: AtomicBool::new(false),
        }
    }
}

impl Registry {
    fn shard(&self, id: u64) -> &Mutex<Slab> {
        &self.shards[(id as usize) % self.shards.len()]
    }

    /// Enters a connection routed to `route` of `listener`; it leaves when
    /// the guard is dropped.
    pub(crate) fn enter(
        &self,
        listener: &Arc<Listener>,
        route: usize,
        client: SocketAddr,
        state: ConnState,
    ) -> LiveGuard {
        let id = NEXT_ID.fetch_add(1, Relaxed);
        let mut shard = lock(self.shard(id));
        let slot = match shard.free.pop() {
            Some(slot) => slot,
            None => {
                shard.slots.push(None);
                u32::try_from(shard.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let live = Arc::new(Live {
            id,
            listener: Arc::clone(listener),
            route: u16::try_from(route).unwrap_or(u16::MAX),
            slot,
            // IPv4 also when it came as `::ffff:a.b.c.d`: listed and
            // matched as the firewall and routes see it.
            client_ip: client.ip().to_canonical(),
            client_port: client.port(),
            started: Instant::now(),
            state: AtomicU8::new(state as u8),
            backend: AtomicU32::new(u32::MAX),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            closed: AtomicU8::new(OPEN),
            waker: AtomicWaker::new(),
        });
        if let Some(place) = shard.slots.get_mut(slot as usize) {
            *place = Some(Arc::clone(&live));
            shard.len += 1;
        }
        drop(shard);
        // Entered after `kill` went through this shard: closed here. The
        // flag is set before the sweep starts, and the shard's lock orders
        // the two.
        if self.killed.load(Relaxed) {
            live.close(BY_SHUTDOWN);
        }
        LiveGuard(live)
    }

    fn leave(&self, id: u64, slot: u32) {
        let mut shard = lock(self.shard(id));
        if let Some(place) = shard.slots.get_mut(slot as usize)
            && place.as_ref().is_some_and(|l| l.id == id)
        {
            *place = None;
            shard.len -= 1;
            shard.free.push(slot);
        }
    }

    /// Adds to `out` the `keep` connections `filter` matches with the
    /// lowest ids, in order of id; how many it matched in all. What it
    /// holds meanwhile is bounded by `keep` (twice it, and a shard's
    /// share), not by how many match.
    pub fn pick(&self, filter: &ConnFilter, keep: usize, out: &mut Vec<Arc<Live>>) -> usize {
        let from = out.len();
        let mut matched = 0;
        let mut taken: Vec<Arc<Live>> = Vec::new();
        for shard in &self.shards {
            // Only copied under the lock; matched after it, so that a
            // connection entering or leaving waits for a copy of a
            // thirty-second of the registry at most.
            taken.extend(lock(shard).slots.iter().flatten().cloned());
            for c in taken.drain(..) {
                if filter.matches(&c) {
                    matched += 1;
                    if keep > 0 {
                        out.push(c);
                    }
                }
            }
            // Trimmed once it holds twice `keep`: a trim is linear in what
            // it holds, so the walk stays linear in the registry's size.
            if out.len() - from > keep.saturating_mul(2) {
                trim(out, from, keep);
            }
        }
        trim(out, from, keep);
        out[from..].sort_unstable_by_key(|c| c.id);
        matched
    }

    /// Closes the connections `filter` matches; how many.
    pub fn close(&self, filter: &ConnFilter) -> usize {
        let mut n = 0;
        let mut taken: Vec<Arc<Live>> = Vec::new();
        for shard in &self.shards {
            taken.clear();
            taken.extend(lock(shard).slots.iter().flatten().cloned());
            for c in taken.iter().filter(|c| filter.matches(c)) {
                if c.close(BY_OPERATOR) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Closes every connection, those that enter later included: the
    /// listener's `shutdown_timeout` ran out (or it was removed and its
    /// `shutdown_timeout` ran out, or a second signal came). Each ends
    /// with the reason `shutdown`, wherever it is: connecting, waiting in
    /// a queue, relaying, serving HTTP. A flag in each entry the
    /// connection's task looks at anyway, rather than a shared token every
    /// connection would wait on and lock.
    pub fn kill(&self) {
        self.killed.store(true, Relaxed);
        let mut taken: Vec<Arc<Live>> = Vec::new();
        for shard in &self.shards {
            taken.clear();
            taken.extend(lock(shard).slots.iter().flatten().cloned());
            for c in &taken {
                c.close(BY_SHUTDOWN);
            }
        }
    }

    /// Connections in the registry now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's place in its registry: it leaves when this is dropped.
#[derive(Debug)]
pub struct LiveGuard(Arc<Live>);

impl LiveGuard {
    /// The entry itself, for what outlives a borrow (an l7 connection's
    /// byte counter).
    pub fn entry(&self) -> Arc<Live> {
        Arc::clone(&self.0)
    }
}

impl std::ops::Deref for LiveGuard {
    type Target = Live;

    fn deref(&self) -> &Live {
        &self.0
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.listener.stats.live.leave(self.0.id, self.0.slot);
    }
}

/// Keeps the `keep` connections of `out[from..]` with the lowest ids.
fn trim(out: &mut Vec<Arc<Live>>, from: usize, keep: usize) {
    if out.len() - from > keep {
        lowest(&mut out[from..], keep);
        out.truncate(from + keep);
    }
}

/// Moves the `keep` entries with the lowest ids to the front of `entries`.
fn lowest(entries: &mut [Arc<Live>], keep: usize) {
    if keep > 0 && keep < entries.len() {
        entries.select_nth_unstable_by_key(keep - 1, |c| c.id);
    }
}

/// What a listing picked: the first connections it may show, by listener
/// and id, and how many matched in all. They are described only when
/// asked ([`Picked::views`]), so that a caller can first judge whether it
/// may build an answer that large.
#[derive(Debug, Default)]
pub struct Picked {
    pub(crate) entries: Vec<Arc<Live>>,
    pub(crate) total: usize,
}

impl Picked {
    /// How many the listing will show.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many connections matched, shown or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The picked connections as a listing shows them.
    pub fn views(&self) -> Vec<ConnView> {
        self.entries.iter().map(|c| c.view()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection carries one entry: it stays within 104 bytes, so
    /// that with its reference counts it takes a 128-byte allocation.
    #[test]
    fn an_entry_stays_small() {
        let size = std::mem::size_of::<Live>();
        assert!(size <= 104, "a live entry is {size} bytes");
    }

    /// 100,000 entries listed while other threads enter and leave: the
    /// listing holds one shard at a time, so entering never waits for a
    /// whole listing. Prints what it measured (`--nocapture`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_thousand_are_listed_while_others_come_and_go() {
        use std::sync::atomic::AtomicBool;
        use std::time::Instant as Clock;
        let (_server, listener) = crate::testing::one_listener().await;
        let client: SocketAddr = "10.0.0.1:4000".parse().expect("addr");
        let held: Vec<LiveGuard> = (0..100_000)
            .map(|_| {
                listener
                    .stats
                    .live
                    .enter(&listener, 0, client, ConnState::Relaying)
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let (listener, stop) = (Arc::clone(&listener), Arc::clone(&stop));
            std::thread::spawn(move || {
                let (mut n, mut slowest) = (0u64, Duration::ZERO);
                while !stop.load(Relaxed) {
                    let t = Clock::now();
                    let g = listener
                        .stats
                        .live
                        .enter(&listener, 0, client, ConnState::Connecting);
                    drop(g);
                    slowest = slowest.max(t.elapsed());
                    n += 1;
                }
                (n, slowest)
            })
        };
        let mut took = Vec::new();
        for _ in 0..5 {
            let t = Clock::now();
            let mut out = Vec::new();
            listener
                .stats
                .live
                .pick(&ConnFilter::default(), usize::MAX, &mut out);
            took.push(t.elapsed());
            assert!(out.len() >= 100_000, "{}", out.len());
        }
        stop.store(true, Relaxed);
        let (n, slowest) = churn.join().expect("churn");
        eprintln!(
            "listing 100,000 took {took:?}; meanwhile {n} connections entered and left, \
             the slowest in {slowest:?}"
        );
        assert!(n > 0, "nothing entered while listing");
        drop(held);
        assert!(listener.stats.live.is_empty());
    }

    /// A listing with a limit keeps the lowest ids of what matches, in
    /// order, and counts every match, whatever the limit.
    #[tokio::test]
    async fn a_pick_keeps_the_lowest_ids_and_counts_them_all() {
        let (_server, listener) = crate::testing::one_listener().await;
        let a: SocketAddr = "10.0.0.1:4000".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:4000".parse().expect("addr");
        let mut held: Vec<LiveGuard> = (0..1_000)
            .map(|i| {
                let client = if i % 4 == 0 { b } else { a };
                listener
                    .stats
                    .live
                    .enter(&listener, 0, client, ConnState::Relaying)
            })
            .collect();
        // Holes: every third leaves.
        let mut i = 0;
        held.retain(|_| {
            i += 1;
            i % 3 != 0
        });
        let from_a = ConnFilter {
            client: Some(ConnFilter::parse_client("10.0.0.1").expect("ip")),
            ..ConnFilter::default()
        };
        for filter in [ConnFilter::default(), from_a] {
            let mut all: Vec<u64> = held
                .iter()
                .filter(|g| filter.matches(g))
                .map(|g| g.id)
                .collect();
            all.sort_unstable();
            for keep in [0, 1, 5, 31, 32, 33, 64, 100, 499, 1_000, usize::MAX] {
                let mut out = Vec::new();
                let matched = listener.stats.live.pick(&filter, keep, &mut out);
                assert_eq!(matched, all.len(), "keep {keep}");
                let ids: Vec<u64> = out.iter().map(|c| c.id).collect();
                let want: Vec<u64> = all.iter().copied().take(keep).collect();
                assert_eq!(ids, want, "keep {keep}");
            }
        }
    }

    #[test]
    fn clients_are_addresses_or_networks() {
        let net = |s: &str| ConnFilter::parse_client(s).map(|n| n.to_string());
        assert_eq!(net("10.1.2.3").ok().as_deref(), Some("10.1.2.3/32"));
        assert_eq!(net(" 10.1.2.3/16 ").ok().as_deref(), Some("10.1.0.0/16"));
        assert_eq!(net("2001:db8::1").ok().as_deref(), Some("2001:db8::1/128"));
        assert!(net("10.1.2.3:80").is_err());
        assert!(net("nope").is_err());
        assert!(ConnFilter::default().is_empty());
        let f = ConnFilter {
            id: Some(1),
            ..ConnFilter::default()
        };
        assert!(!f.is_empty());
    }
}
