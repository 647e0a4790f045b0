//! Connection limits: each backend's slots in use against its
//! `max_connections` (ramped with slow start), and the pool's queue, where a
//! connection or an l7 request waits, in order, while every serving backend
//! is full.
//!
//! A pool without limits pays one atomic add and one subtract per
//! connection: slots are counted always, so that a reload which sets a
//! limit finds the count right. With limits, a slot is taken by
//! compare-and-swap, so a limit is never exceeded. When a slot frees and
//! someone waits, the newest generation of the pool picks a backend for the
//! first waiter (by its own key: maglev keeps its affinity when it can),
//! takes the slot and hands it over; newcomers queue behind waiters rather
//! than overtake them.
//!
//! A client that names its backend (a sticky cookie) and finds it full waits
//! in that backend's own line instead (HAProxy's server queue): only that
//! backend's slots serve it, and neither a newcomer nor a waiter of the
//! pool's queue that came after the line's head takes them first. When the
//! backend no longer keeps its clients (down, disabled, removed) the line is
//! let go, its clients placed by the pool; such waiters never hold up the
//! others.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use weir_telemetry::Histogram;

use super::{LATENCY_SECONDS, Pool};
use crate::Reason;
use crate::sync::lock;

/// A backend's slots, shared by its generations across reloads.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    /// The limit now (slow start ramps it); 0: none.
    pub(crate) limit: AtomicU32,
    /// Connections and l7 requests holding a slot.
    pub(crate) used: AtomicU32,
    /// Clients waiting in this backend's own line (changed under the
    /// queue's lock, read without it).
    pub(crate) named: AtomicU32,
}

impl Slots {
    pub(crate) fn has_room(&self) -> bool {
        let limit = self.limit.load(Relaxed);
        limit == 0 || self.used.load(Relaxed) < limit
    }

    fn try_take(&self) -> bool {
        let limit = self.limit.load(Relaxed);
        if limit == 0 {
            self.used.fetch_add(1, SeqCst);
            return true;
        }
        self.used
            .fetch_update(SeqCst, Relaxed, |u| (u < limit).then_some(u + 1))
            .is_ok()
    }

    fn give_back(&self) {
        // Saturating: a count is never worth a panic or a wrap.
        let _ = self
            .used
            .fetch_update(SeqCst, Relaxed, |u| Some(u.saturating_sub(1)));
    }
}

/// What a queue's waiters became: `weir_pool_queue_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueResult {
    /// Got a slot.
    Served,
    /// Found the queue full.
    Full,
    /// Waited `queue_timeout` in vain.
    Timeout,
    /// Waited for its backend by name (a sticky cookie) and was let go to
    /// the pool's pick instead: the backend stopped keeping clients while
    /// it waited, or the queue was full.
    Moved,
}

impl QueueResult {
    pub const ALL: [QueueResult; 4] = [Self::Served, Self::Full, Self::Timeout, Self::Moved];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Served => "served",
            Self::Full => "full",
            Self::Timeout => "timeout",
            Self::Moved => "moved",
        }
    }
}

/// Waiters that [`Pool::dispatch`] passes over at most in one round for want
/// of a backend they can take, before it stops looking.
const MAX_PASSED: usize = 64;

/// A pool's queue, shared by its generations across reloads.
#[derive(Debug)]
pub struct Queue {
    /// Waiters in the pool's queue, read without the lock on every release.
    waiting: AtomicUsize,
    /// Waiters in the backends' own lines.
    named: AtomicUsize,
    inner: Mutex<Waiters>,
    /// Time waited by those served, and by those a backend's line let go
    /// (moved) after they waited there.
    pub wait: Histogram,
    results: [AtomicU64; 4],
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            waiting: AtomicUsize::new(0),
            named: AtomicUsize::new(0),
            inner: Mutex::default(),
            wait: Histogram::new(LATENCY_SECONDS),
            results: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Queue {
    /// Waiting now.
    pub fn depth(&self) -> usize {
        self.waiting.load(Relaxed) + self.named.load(Relaxed)
    }

    pub fn results(&self, r: QueueResult) -> u64 {
        self.results[r as usize].load(Relaxed)
    }

    fn count(&self, r: QueueResult) {
        weir_telemetry::count(&self.results[r as usize], 1);
    }

    /// Takes waiter `id` out; false when it is gone (it was handed a slot).
    fn remove(&self, id: u64) -> bool {
        let mut q = lock(&self.inner);
        if let Some(at) = q.list.iter().position(|w| w.id == id) {
            q.list.remove(at);
            self.waiting.fetch_sub(1, SeqCst);
            return true;
        }
        let Some(line) = q
            .named
            .iter_mut()
            .find(|l| l.list.iter().any(|w| w.id == id))
        else {
            return false;
        };
        line.list.retain(|w| w.id != id);
        line.slots.named.fetch_sub(1, SeqCst);
        q.named.retain(|l| !l.list.is_empty());
        self.named.fetch_sub(1, SeqCst);
        true
    }
}

#[derive(Debug, Default)]
struct Waiters {
    /// Shared by both kinds of waiter, so that ids tell who came first.
    next_id: u64,
    list: VecDeque<Waiter>,
    /// The lines of the backends that clients wait for by name; none empty.
    named: Vec<Line>,
}

/// A line's backend (its slots) and the id of the line's first waiter.
type Head = (Arc<Slots>, u64);

/// The clients waiting for one backend.
#[derive(Debug)]
struct Line {
    slots: Arc<Slots>,
    list: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    /// Its maglev key, for the pick made on its behalf.
    key: u64,
    /// The backends it cannot take (by their slots, the same in every
    /// generation): those that failed its connection already, and those its
    /// generation does not know. Empty but on a retry.
    cannot: Vec<Arc<Slots>>,
    tx: oneshot::Sender<Grant>,
}

impl Waiter {
    /// The indices in `pool` of the backends it cannot take.
    fn skip(&self, pool: &Pool) -> Vec<usize> {
        if self.cannot.is_empty() {
            return Vec::new();
        }
        pool.backends
            .iter()
            .enumerate()
            .filter(|(_, b)| self.cannot.iter().any(|s| Arc::ptr_eq(s, &b.slots)))
            .map(|(i, _)| i)
            .collect()
    }
}

/// A slot taken for a waiter. If the waiter is gone before it uses it (its
/// connection closed between the hand-over and its next poll), the slot is
/// given back and passed on to the next waiter, who would otherwise wait for
/// another release or time out.
#[derive(Debug)]
struct Grant {
    slots: Option<Arc<Slots>>,
    pool: Arc<Pool>,
}

impl Grant {
    fn take(mut self) -> Option<Arc<Slots>> {
        self.slots.take()
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(s) = self.slots.take() {
            s.give_back();
            self.pool.latest().dispatch();
        }
    }
}

/// A waiter whose wait is cancelled (its connection closed, weir stopping)
/// leaves the queue.
struct Place<'a> {
    queue: &'a Queue,
    id: u64,
    done: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.queue.remove(self.id);
        }
    }
}

impl Pool {
    /// True when some backend has a connection limit.
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// A backend for `key` with room, never one of `tried`, for a newcomer:
    /// a backend whose own line has clients has no room for it (a slot that
    /// frees there is theirs; [`Pool::dispatch`] orders the queue's waiters
    /// and the lines itself).
    pub(crate) fn pick_with_room(&self, key: u64, tried: &[usize]) -> Option<usize> {
        self.pick_with_room_for(key, tried, None)
    }

    /// [`Pool::pick_with_room`] for a newcomer (`ahead` None: every line
    /// is ahead of it) or for a waiter of the pool's queue, ahead of which
    /// are the lines whose head came first (`ahead`: their slots and the
    /// ids of their heads, and the waiter's id).
    fn pick_with_room_for(
        &self,
        key: u64,
        tried: &[usize],
        ahead: Option<(&[Head], u64)>,
    ) -> Option<usize> {
        let picker = self.picker();
        let load = |i: usize| self.backends.get(i).map_or(u32::MAX, |b| b.stats.load());
        let full = |i: usize| {
            self.backends.get(i).is_none_or(|b| {
                let line_first = match ahead {
                    None => b.slots.named.load(SeqCst) > 0,
                    Some((heads, id)) => heads
                        .iter()
                        .any(|(s, head)| *head < id && Arc::ptr_eq(s, &b.slots)),
                };
                !b.slots.has_room() || line_first
            })
        };
        let req = weir_balance::Request {
            key,
            random: fastrand::u64(..),
            load: &load,
        };
        picker.pick_with_room(&req, tried, &full)
    }

    /// Picks a backend for `key` (never one of `tried`) and takes one of its
    /// slots, waiting in the queue while every serving backend is full. The
    /// slot is the caller's until [`Pool::release`]. Fails with `NoBackend`
    /// when none serves, `QueueFull` or `QueueTimeout`; a wait in the queue
    /// ends at `queue_timeout` or at `until` (the request's own deadline),
    /// whichever comes first.
    pub async fn acquire(
        self: &Arc<Self>,
        key: u64,
        tried: &[usize],
        until: Option<Instant>,
    ) -> Result<usize, Reason> {
        if !self.limited {
            let i = self.pick(key, tried).ok_or(Reason::NoBackend)?;
            if let Some(b) = self.backends.get(i) {
                b.slots.used.fetch_add(1, SeqCst);
            }
            return Ok(i);
        }
        // Boxed: waiting is the rare path, and every connection's task would
        // carry its state (a timer, a channel) otherwise.
        Box::pin(self.acquire_limited(key, tried, until)).await
    }

    /// Takes a slot on backend `i` whatever its limit: for a request that
    /// holds its answer already (one put aside for a retry that found no
    /// better), given back by [`Pool::release`] as any other.
    pub fn hold(&self, i: usize) {
        if let Some(b) = self.backends.get(i) {
            b.slots.used.fetch_add(1, SeqCst);
        }
    }

    /// Takes a slot on backend `i`, chosen by the client (a sticky cookie),
    /// when it has room and either the pool could pick it now (serving, in
    /// the active tier) and nobody waits in the queue (a client does not
    /// overtake the waiters by naming a backend), or it only keeps its
    /// clients ([`Pool::keeps`]: drained), which no waiter of the pool's
    /// queue is handed, and nobody waits in its own line. False otherwise:
    /// the caller then waits for it ([`Pool::wait_for`]) or lets the pool
    /// pick ([`Pool::acquire`]).
    pub fn take(self: &Arc<Self>, i: usize) -> bool {
        let Some(b) = self.backends.get(i) else {
            return false;
        };
        let pickable = self.picker().is_eligible(i);
        if !pickable && !self.keeps(i) {
            return false;
        }
        if !self.limited {
            b.slots.used.fetch_add(1, SeqCst);
            return true;
        }
        // Those waiting for it by name, and while the pool's queue may be
        // handed it, those waiting there.
        let ahead =
            b.slots.named.load(SeqCst) > 0 || (pickable && self.queue.waiting.load(SeqCst) > 0);
        !ahead && b.slots.try_take()
    }

    /// Whether backend `i` may serve a client that names it (a sticky
    /// cookie), room aside: the pool could pick it, or it keeps its
    /// clients (drained, or weight 0) and its tier has not given way to a
    /// lower one. A tier of drained backends only leaves the active tier
    /// to a higher one (or none) for new clients: its own stay.
    pub fn keeps(&self, i: usize) -> bool {
        let Some(b) = self.backends.get(i) else {
            return false;
        };
        let picker = self.picker();
        picker.is_eligible(i)
            || (picker.active_tier().is_none_or(|t| b.tier <= t) && b.keeps_its_clients())
    }

    async fn acquire_limited(
        self: &Arc<Self>,
        key: u64,
        tried: &[usize],
        until: Option<Instant>,
    ) -> Result<usize, Reason> {
        let deadline = self.queue_deadline(until);
        let queued_at = Instant::now();
        let mut queued = false;
        // What the queue must not hand this waiter: it would hand it back.
        let mut cannot: Vec<Arc<Slots>> = tried
            .iter()
            .filter_map(|&i| self.backends.get(i).map(|b| Arc::clone(&b.slots)))
            .collect();
        loop {
            // Waiters first: a newcomer does not overtake them.
            if self.queue.waiting.load(SeqCst) == 0 {
                // A lost race for a slot means another backend may have room.
                for _ in 0..4 {
                    let Some(i) = self.pick_with_room(key, tried) else {
                        break;
                    };
                    if self.backends.get(i).is_some_and(|b| b.slots.try_take()) {
                        if queued {
                            self.queue.wait.observe(queued_at.elapsed());
                            self.queue.count(QueueResult::Served);
                        }
                        return Ok(i);
                    }
                }
            }
            if self.pick(key, tried).is_none() {
                return Err(Reason::NoBackend);
            }
            let (tx, rx) = oneshot::channel();
            let id = {
                let mut q = lock(&self.queue.inner);
                if self.queue.depth() >= self.max_queue as usize {
                    drop(q);
                    self.queue.count(QueueResult::Full);
                    return Err(Reason::QueueFull);
                }
                q.next_id += 1;
                let id = q.next_id;
                q.list.push_back(Waiter {
                    id,
                    key,
                    cannot: cannot.clone(),
                    tx,
                });
                self.queue.waiting.fetch_add(1, SeqCst);
                id
            };
            queued = true;
            // A slot may have freed between the look above and the enqueue;
            // and a retry's last backend may have stopped serving since its
            // look (a rebuild then found nobody waiting to let go).
            if cannot.is_empty() {
                self.latest().dispatch();
            } else {
                self.latest().dispatch_rebuilt();
            }
            let grant = self.await_grant(id, rx, deadline).await?;
            // A grant without a slot: the newest generation has no backend
            // that serves, or none this waiter may take (`refuse_where`);
            // this one's picker may be older.
            let Some(slots) = grant.take() else {
                return Err(Reason::NoBackend);
            };
            // The slot was taken in the newest generation: find its backend
            // in this one (the same backend shares its slots).
            let own = self
                .backends
                .iter()
                .position(|b| Arc::ptr_eq(&b.slots, &slots));
            match own {
                Some(i) if !tried.contains(&i) => {
                    self.queue.wait.observe(queued_at.elapsed());
                    self.queue.count(QueueResult::Served);
                    return Ok(i);
                }
                _ => {
                    // A backend this generation does not know (added by a
                    // reload) or one that failed this connection already
                    // (the queue now knows not to offer either): pass the
                    // slot on and wait again.
                    slots.give_back();
                    if !cannot.iter().any(|s| Arc::ptr_eq(s, &slots)) {
                        cannot.push(slots);
                    }
                    self.latest().dispatch();
                    if Instant::now() >= deadline {
                        self.queue.count(QueueResult::Timeout);
                        return Err(Reason::QueueTimeout);
                    }
                }
            }
        }
    }

    /// Waits for waiter `id`'s grant until `deadline`. On time out it
    /// leaves the queue, or takes the grant handed over as the time ran out.
    async fn await_grant(
        &self,
        id: u64,
        mut rx: oneshot::Receiver<Grant>,
        deadline: Instant,
    ) -> Result<Grant, Reason> {
        // A waiter whose wait is cancelled leaves the queue.
        let mut place = Place {
            queue: &self.queue,
            id,
            done: false,
        };
        let got = match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(grant)) => Some(grant),
            // The queue dropped the sender without a grant: cannot happen
            // while the pool lives; treated as a timeout.
            Ok(Err(_)) => {
                self.queue.remove(id);
                None
            }
            Err(_) if self.queue.remove(id) => None,
            Err(_) => rx.try_recv().ok(),
        };
        place.done = true;
        got.ok_or_else(|| {
            self.queue.count(QueueResult::Timeout);
            Reason::QueueTimeout
        })
    }

    /// When a wait in the queue that starts now ends: at `queue_timeout`,
    /// or at `until` (the request's own deadline) if that comes first. A
    /// request that waits for its backend by name and then for any passes
    /// this on, so that both waits together take no longer.
    pub fn queue_deadline(&self, until: Option<Instant>) -> Instant {
        let own = Instant::now() + self.queue_timeout;
        until.map_or(own, |u| u.min(own))
    }

    /// Waits in backend `i`'s own line for one of its slots: for a client
    /// that names it (a sticky cookie) when [`Pool::take`] found it full or
    /// others before it. `Ok(Some(i))` with the slot (`i` in this
    /// generation); `Ok(None)` when the backend does not keep the client
    /// (down, disabled, removed, before or while it waits) or its line
    /// finds the queue full (HAProxy's redispatch past a server's
    /// `maxqueue`): the caller lets the pool pick, and the client moves.
    /// Fails with `QueueTimeout` at `queue_timeout` or `until`.
    pub async fn wait_for(
        self: &Arc<Self>,
        i: usize,
        until: Option<Instant>,
    ) -> Result<Option<usize>, Reason> {
        let Some(b) = self.backends.get(i) else {
            return Ok(None);
        };
        if !self.limited || !self.keeps(i) {
            return Ok(None);
        }
        let queued_at = Instant::now();
        let deadline = self.queue_deadline(until);
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut q = lock(&self.queue.inner);
            if self.queue.depth() >= self.max_queue as usize {
                drop(q);
                self.queue.count(QueueResult::Moved);
                return Ok(None);
            }
            q.next_id += 1;
            let id = q.next_id;
            let waiter = Waiter {
                id,
                key: 0,
                cannot: Vec::new(),
                tx,
            };
            match q.named.iter_mut().find(|l| Arc::ptr_eq(&l.slots, &b.slots)) {
                Some(line) => line.list.push_back(waiter),
                None => q.named.push(Line {
                    slots: Arc::clone(&b.slots),
                    list: VecDeque::from([waiter]),
                }),
            }
            b.slots.named.fetch_add(1, SeqCst);
            self.queue.named.fetch_add(1, SeqCst);
            id
        };
        // Its backend may have room already (the line was only behind the
        // pool's queue), or have stopped keeping clients meanwhile.
        self.latest().dispatch();
        let grant = self.await_grant(id, rx, deadline).await?;
        // A line's grants carry its backend's slots, or none when the line
        // was let go.
        if grant.take().is_none() {
            self.queue.wait.observe(queued_at.elapsed());
            self.queue.count(QueueResult::Moved);
            return Ok(None);
        }
        self.queue.wait.observe(queued_at.elapsed());
        self.queue.count(QueueResult::Served);
        Ok(Some(i))
    }

    /// Gives back the slot [`Pool::acquire`] took on backend `i`, and lets
    /// the first waiter have one.
    pub fn release(self: &Arc<Self>, i: usize) {
        if let Some(b) = self.backends.get(i) {
            b.slots.give_back();
        }
        if self.queue.waiting.load(SeqCst) > 0 || self.queue.named.load(SeqCst) > 0 {
            self.latest().dispatch();
        }
    }

    /// Hands slots to waiters while a backend they can take has room. The
    /// pool's queue goes first come first served; a waiter that cannot take
    /// any backend with room (see [`Waiter::cannot`]) is passed over,
    /// keeping its place, for the ones behind it. A backend's own line is
    /// served by its slots only, and a waiter of the pool's queue does not
    /// take a backend whose line's head came before it; a line whose
    /// backend no longer keeps its clients is let go (its waiters are
    /// placed by the pool). Called on the newest generation.
    pub(super) fn dispatch(self: &Arc<Self>) {
        self.dispatch_with(false);
    }

    /// [`Pool::dispatch`] after the picker was rebuilt (a backend changed),
    /// or as a retry joins the queue: also refuses, with `no_backend`, the
    /// waiters that have no backend left to take, all serving ones being
    /// those that failed them.
    pub(super) fn dispatch_rebuilt(self: &Arc<Self>) {
        self.dispatch_with(true);
    }

    fn dispatch_with(self: &Arc<Self>, rebuilt: bool) {
        let mut q = lock(&self.queue.inner);
        self.let_go(&mut q);
        // Not before this generation's picker is first built (a reload
        // makes it the newest just before that).
        if self.built.load(SeqCst) {
            if self.picker().is_empty() {
                self.refuse_where(&mut q, |_| true);
            } else if rebuilt {
                // Asked without moving any balancing cursor.
                self.refuse_where(&mut q, |w| {
                    !w.cannot.is_empty() && !self.has_other(&w.skip(self))
                });
            }
        }
        // Bounded: a round after the first needs a line's waiter served in
        // the one before.
        loop {
            self.serve_queue(&mut q);
            if self.serve_lines(&mut q) == 0 || q.list.is_empty() {
                break;
            }
        }
    }

    /// Lets go of the lines of backends that no longer keep their clients
    /// (or that this generation does not know): their waiters get a grant
    /// without a slot.
    fn let_go(self: &Arc<Self>, q: &mut Waiters) {
        if q.named.is_empty() {
            return;
        }
        let keeps = |slots: &Arc<Slots>| {
            self.backends
                .iter()
                .position(|b| Arc::ptr_eq(&b.slots, slots))
                .is_some_and(|i| self.keeps(i))
        };
        let (kept, gone): (Vec<Line>, Vec<Line>) = std::mem::take(&mut q.named)
            .into_iter()
            .partition(|l| keeps(&l.slots));
        q.named = kept;
        for line in gone {
            line.slots
                .named
                .fetch_sub(u32::try_from(line.list.len()).unwrap_or(u32::MAX), SeqCst);
            self.queue.named.fetch_sub(line.list.len(), SeqCst);
            for w in line.list {
                // Dropped under the lock without a slot: it dispatches
                // nothing.
                let _ = w.tx.send(Grant {
                    slots: None,
                    pool: Arc::clone(self),
                });
            }
        }
    }

    /// Refuses the waiters of the pool's queue that `refuse` picks, with
    /// `no_backend` (a grant without a slot), rather than after
    /// `queue_timeout`: all of them when no backend serves any more (all
    /// down, disabled or drained), as a newcomer is answered; after a
    /// rebuild, the retries whose untried backends all stopped serving.
    fn refuse_where(self: &Arc<Self>, q: &mut Waiters, refuse: impl Fn(&Waiter) -> bool) {
        if !q.list.iter().any(&refuse) {
            return;
        }
        let (gone, kept): (VecDeque<Waiter>, VecDeque<Waiter>) =
            std::mem::take(&mut q.list).into_iter().partition(&refuse);
        q.list = kept;
        self.queue.waiting.fetch_sub(gone.len(), SeqCst);
        for w in gone {
            // Dropped under the lock without a slot: it dispatches nothing.
            let _ = w.tx.send(Grant {
                slots: None,
                pool: Arc::clone(self),
            });
        }
    }

    /// Serves the backends' own lines, each from its backend's free slots;
    /// returns how many waiters it served.
    fn serve_lines(self: &Arc<Self>, q: &mut Waiters) -> usize {
        let mut served = 0;
        for line in &mut q.named {
            while !line.list.is_empty() {
                let closed = line.list.front().is_some_and(|w| w.tx.is_closed());
                if !closed && !line.slots.try_take() {
                    break;
                }
                let Some(w) = line.list.pop_front() else {
                    break;
                };
                line.slots.named.fetch_sub(1, SeqCst);
                self.queue.named.fetch_sub(1, SeqCst);
                if closed {
                    continue;
                }
                let grant = Grant {
                    slots: Some(Arc::clone(&line.slots)),
                    pool: Arc::clone(self),
                };
                match w.tx.send(grant) {
                    Ok(()) => served += 1,
                    // The waiter went meanwhile: the slot is the next one's.
                    Err(mut unsent) => {
                        if let Some(s) = unsent.slots.take() {
                            s.give_back();
                        }
                    }
                }
            }
        }
        q.named.retain(|l| !l.list.is_empty());
        served
    }

    /// Serves the pool's queue, first come first served, while a serving
    /// backend has room.
    fn serve_queue(self: &Arc<Self>, q: &mut Waiters) {
        // Bounded: each round serves, drops or passes over a waiter (at most
        // `MAX_PASSED` of those), or loses a race for a slot to a newcomer
        // that took it.
        let (mut misses, mut at) = (0, 0);
        // The lines' heads, which the waiters that came after them let go
        // first.
        let heads: Vec<Head> = q
            .named
            .iter()
            .filter_map(|l| Some((Arc::clone(&l.slots), l.list.front()?.id)))
            .collect();
        while let Some(w) = q.list.get(at) {
            if w.tx.is_closed() {
                q.list.remove(at);
                self.queue.waiting.fetch_sub(1, SeqCst);
                continue;
            }
            let Some(i) = self.pick_with_room_for(w.key, &w.skip(self), Some((&heads, w.id)))
            else {
                if w.cannot.is_empty() || at >= MAX_PASSED {
                    // No room for anyone (or looked far enough).
                    break;
                }
                at += 1;
                continue;
            };
            let Some(slots) = self.backends.get(i).map(|b| &b.slots) else {
                break;
            };
            if !slots.try_take() {
                misses += 1;
                if misses > 4 {
                    break;
                }
                continue;
            }
            let Some(w) = q.list.remove(at) else { break };
            self.queue.waiting.fetch_sub(1, SeqCst);
            let grant = Grant {
                slots: Some(Arc::clone(slots)),
                pool: Arc::clone(self),
            };
            if let Err(mut unsent) = w.tx.send(grant) {
                // The waiter went meanwhile: the slot goes back here, and
                // this loop serves the next waiter (a grant dropped under
                // the lock must not dispatch).
                if let Some(s) = unsent.slots.take() {
                    s.give_back();
                }
            }
        }
    }

    /// Sets each backend's limit for now: its `max_connections`, ramped
    /// like its weight while it comes back (at least 1).
    pub(super) fn set_limits(&self, ramps: &[Option<f64>]) {
        for (b, ramp) in self.backends.iter().zip(ramps) {
            let limit = match (b.max_connections, ramp) {
                (None, _) => 0,
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                (Some(max), Some(f)) => ((f64::from(max) * f).ceil() as u32).clamp(1, max),
                (Some(max), None) => max,
            };
            b.slots.limit.store(limit, Relaxed);
        }
    }

    /// How many may wait in the queue at most.
    pub fn max_queue(&self) -> u32 {
        self.max_queue
    }

    /// How long a connection waits in the queue at most.
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }
}

/// A slot held by a relayed connection, given back when it ends.
pub(crate) struct SlotGuard<'a> {
    pub(crate) pool: &'a Arc<Pool>,
    pub(crate) index: usize,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}
