//! One backend of a pool: its address, weight and tier, its counters, and its
//! status (health counter, admin state, weight override, history), shared
//! with its previous generations across reloads.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::stats::{BackendStats, StateLabel};
use crate::health::{AdminState, Health, HealthCounter, Transition};
use crate::sync::lock;

/// Why weir closed a backend's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The backend went down and the pool has `close_on_down`.
    BackendDown = 1,
    /// It was drained, disabled or demoted and `drain_timeout` ran out.
    DrainTimeout = 2,
}

impl Eviction {
    /// The reason its connections end with, in the log and the metrics.
    pub fn reason(self) -> crate::Reason {
        match self {
            Eviction::BackendDown => crate::Reason::BackendDown,
            Eviction::DrainTimeout => crate::Reason::DrainTimeout,
        }
    }
}

/// What [`Backend::watch_evictions`] gives: the evictions so far, and the
/// token the next one cancels.
#[derive(Debug, Clone)]
pub struct EvictionWatch {
    since: u64,
    token: Arc<CancellationToken>,
}

/// The last probe of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastProbe {
    pub at: SystemTime,
    pub ok: bool,
    pub reason: String,
    /// How long it took.
    pub took: Duration,
}

/// What probes, traffic and operators change, under the backend's mutex.
#[derive(Debug)]
pub(super) struct Status {
    pub(super) health: HealthCounter,
    pub(super) admin: AdminState,
    pub(super) weight_override: Option<u32>,
    pub(super) history: VecDeque<Transition>,
    pub(super) last_probe: Option<LastProbe>,
    /// Came back (down to up, or re-enabled) at this instant: its weight
    /// ramps up over the pool's `slow_start`.
    pub(super) ramp_since: Option<Instant>,
}

impl Status {
    /// The state metrics show: admin state first, then health.
    pub(super) fn label(&self) -> StateLabel {
        match (self.admin, self.health.state()) {
            (AdminState::Disabled, _) => StateLabel::Disabled,
            (AdminState::Drain, _) => StateLabel::Drain,
            (AdminState::Enabled, Health::Unknown) => StateLabel::Unknown,
            (AdminState::Enabled, Health::Up) => StateLabel::Up,
            (AdminState::Enabled, Health::Down) => StateLabel::Down,
            (AdminState::Enabled, Health::Standby) => StateLabel::Standby,
        }
    }
}

/// What a backend's connections watch, shared by every generation of the
/// backend across reloads: an eviction decided by the newest pool reaches
/// connections made through an older one.
#[derive(Debug)]
pub(super) struct Link {
    /// Cancelled (and replaced) to close this backend's connections.
    pub(super) evict: ArcSwap<CancellationToken>,
    pub(super) eviction: AtomicU8,
    /// Evictions so far: a connection that started at `n` is evicted once
    /// it is past `n`, a flag its relay reads without the token's lock.
    pub(super) evictions: AtomicU64,
    /// Bumped whenever serving starts or stops; a pending drain closes
    /// connections only if nothing changed since it was scheduled.
    pub(super) epoch: AtomicU64,
    /// What was done for the connections when the backend last changed how
    /// it is out of service ([`Out`] as a number).
    pub(super) out: AtomicU8,
    /// The `epoch` whose drain ran out (`drain_timeout` closed its
    /// connections): the drain is over, and sticky clients go elsewhere.
    pub(super) drained: AtomicU64,
}

/// How a backend is in or out of service, for its established connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Out {
    /// Not serving, its connections left alone (down or standby without
    /// `close_on_down`, or not yet probed).
    Leave = 0,
    Serving = 1,
    /// Down or standby with `close_on_down`: its connections close at once.
    Evict = 2,
    /// Drained, disabled, weight 0, or in a tier that stopped serving: its
    /// connections may go on for `drain_timeout`.
    Drain = 3,
}

impl Link {
    /// Closes the backend's connections, in every generation of its pool.
    pub(super) fn evict_now(&self, why: Eviction) {
        self.eviction.store(why as u8, Relaxed);
        self.evictions.fetch_add(1, Release);
        let old = self.evict.swap(Arc::new(CancellationToken::new()));
        old.cancel();
    }
}

impl Default for Link {
    fn default() -> Self {
        Link {
            evict: ArcSwap::from_pointee(CancellationToken::new()),
            eviction: AtomicU8::new(0),
            evictions: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            out: AtomicU8::new(Out::Leave as u8),
            drained: AtomicU64::new(u64::MAX),
        }
    }
}

/// Outlier detection of a backend, shared by its generations across
/// reloads: failed answers in a row, whether it is ejected, how many times
/// it was lately (each ejection lasts longer), and when its last one ended.
#[derive(Debug, Default)]
pub(crate) struct OutlierState {
    pub(crate) consecutive: AtomicU32,
    pub(crate) ejected: AtomicBool,
    pub(crate) ejections: AtomicU32,
    pub(crate) returned: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How a backend's health is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Active probes (and passive health while up).
    Probed,
    /// No active checks in its pool: failed connects take it down, and it is
    /// tried again after `passive_timeout`.
    Passive,
    /// `health = false`: always up unless an operator says otherwise.
    Static,
}

/// One backend of a pool.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    /// Configured weight.
    pub weight: u32,
    pub tier: u32,
    pub stats: Arc<BackendStats>,
    /// Where probes go; `None` unless probed.
    pub probe_address: Option<SocketAddr>,
    /// Removed at runtime or gone from DNS, draining: weight 0 whatever an
    /// operator set, no sticky client either.
    pub leaving: bool,
    pub watch: Watch,
    /// Shared with the previous generation when a reload kept the probe target.
    pub(super) status: Arc<Mutex<Status>>,
    pub(super) serving: AtomicBool,
    /// Passive health only: set while a successful connect has something to
    /// settle (failures counting, or a backend on trial), so that the common
    /// success takes no lock.
    pub(super) passive_pending: Arc<AtomicBool>,
    pub(super) link: Arc<Link>,
    pub(crate) outlier: Arc<OutlierState>,
    /// The pool's `slow_start`.
    pub(super) slow_start: Option<Duration>,
    /// Its connection limit (its own, else the pool's); ramped with slow
    /// start.
    pub max_connections: Option<u32>,
    /// Slots in use and the limit now, shared by its generations.
    pub(crate) slots: Arc<super::queue::Slots>,
    /// Its own HTTP check (`check = { ... }`), instead of the pool's.
    pub check: Option<weir_config::HttpCheck>,
    /// What a sticky cookie carries for it: a hash of its name, the same in
    /// every instance and across restarts, that does not show the name.
    pub token: u64,
}

/// The share of its weight a backend that came back gets at first.
const RAMP_FLOOR: f64 = 0.05;
/// Picker weights are scaled by this in pools with `slow_start`, so that a
/// ramp of weight 1 has steps of 1%.
pub(super) const RAMP_SCALE: u32 = 100;

/// A consistent view of a backend's state, for the API and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendView {
    pub name: String,
    pub address: SocketAddr,
    pub tier: u32,
    pub health: Health,
    pub admin: AdminState,
    pub weight: u32,
    pub weight_override: Option<u32>,
    pub effective_weight: u32,
    pub serving: bool,
    pub active_connections: i64,
    /// HTTP requests in flight to it (l7 routes).
    pub active_requests: i64,
    /// Its `max_connections` (own or the pool's), and the limit now.
    pub max_connections: Option<u32>,
    pub connection_limit: u32,
    /// l7 requests waiting in its own line (a sticky cookie names it and it
    /// is full).
    pub queue_depth: u32,
    pub last_probe: Option<LastProbe>,
    pub history: Vec<Transition>,
}

impl Backend {
    pub(super) fn status(&self) -> MutexGuard<'_, Status> {
        lock(&self.status)
    }

    /// The weight it would get if serving.
    fn weight_now(&self, s: &Status) -> u32 {
        if self.leaving {
            return 0;
        }
        s.weight_override.unwrap_or(self.weight)
    }

    /// How far its slow start has come (`RAMP_FLOOR..1`), or `None` when it
    /// is not ramping (any more).
    pub(super) fn ramp(&self, s: &Status, now: Instant) -> Option<f64> {
        let (since, over) = (s.ramp_since?, self.slow_start?);
        let f = now.saturating_duration_since(since).as_secs_f64() / over.as_secs_f64();
        (f < 1.0).then_some(f.max(RAMP_FLOOR))
    }

    /// The weight the balancer uses: [`Self::eligible_weight`], scaled by
    /// [`RAMP_SCALE`] in a pool with `slow_start` and ramped while the
    /// backend comes back.
    pub(super) fn picker_weight(&self, s: &Status, now: Instant) -> u32 {
        let w = self.eligible_weight(s);
        if self.slow_start.is_none() || w == 0 {
            return w;
        }
        let full = w.saturating_mul(RAMP_SCALE);
        match self.ramp(s, now) {
            // Truncation is fine: a share of at most `full`.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(f) => ((f64::from(full) * f) as u32).max(1),
            None => full,
        }
    }

    /// The weight it gets now in the configured scale: ramped while it comes
    /// back (at least 1).
    fn weight_shown(&self, s: &Status) -> u32 {
        let w = self.eligible_weight(s);
        match self.ramp(s, Instant::now()) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(f) if w > 0 => ((f64::from(w) * f).ceil() as u32).clamp(1, w),
            _ => w,
        }
    }

    /// Its weight if its tier serves: 0 unless enabled and up (or, with
    /// passive health only, on trial) and not ejected as an outlier.
    pub(super) fn eligible_weight(&self, s: &Status) -> u32 {
        if s.admin == AdminState::Enabled && self.able(s) {
            self.weight_now(s)
        } else {
            0
        }
    }

    /// Up (or, with passive health only, on trial) and not ejected as an
    /// outlier: able to serve, whatever the operator says.
    fn able(&self, s: &Status) -> bool {
        let healthy = match s.health.state() {
            Health::Up => true,
            Health::Unknown => self.watch == Watch::Passive,
            Health::Down | Health::Standby => false,
        };
        healthy && !self.outlier.ejected.load(Relaxed)
    }

    /// Whether the clients a sticky cookie keeps on it may still come,
    /// though the pool picks it for no one new: able to serve and drained
    /// by an operator (HAProxy keeps persistent clients on a drained server
    /// the same way), until the drain's `drain_timeout` runs out (else a
    /// WebSocket or stream opened after that cut would stay for good, and
    /// the drain would never end). Not a backend leaving (removed at
    /// runtime, gone from DNS) nor one of weight 0: those take no request
    /// at all.
    pub(super) fn keeps_its_clients(&self) -> bool {
        let s = self.status();
        !self.leaving
            && s.admin == AdminState::Drain
            && self.able(&s)
            && self.link.drained.load(Relaxed) != self.link.epoch.load(Relaxed)
    }

    pub fn health(&self) -> Health {
        self.status().health.state()
    }

    /// The state metrics show: admin state first, then health.
    pub fn state_label(&self) -> StateLabel {
        self.status().label()
    }

    /// The weight it gets now: configured or overridden while serving, else 0.
    pub fn effective_weight(&self) -> u32 {
        if self.is_serving() {
            self.weight_shown(&self.status())
        } else {
            0
        }
    }

    /// The configured weight, or the operator's override.
    pub fn current_weight(&self) -> u32 {
        self.weight_now(&self.status())
    }

    pub(super) fn count_transition(&self, before: StateLabel, after: StateLabel) {
        if before != after {
            self.stats.transition(before, after);
        }
    }

    pub fn admin(&self) -> AdminState {
        self.status().admin
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Relaxed)
    }

    /// True while probes should run at the faster interval.
    pub(crate) fn changing(&self) -> bool {
        self.status().health.changing()
    }

    /// Its connection limit now (ramped during slow start); 0: none.
    pub fn connection_limit(&self) -> u32 {
        self.slots.limit.load(Relaxed)
    }

    /// Connections and l7 requests holding one of its slots.
    pub fn slots_in_use(&self) -> u32 {
        self.slots.used.load(Relaxed)
    }

    /// l7 requests waiting for one of its slots by name (a sticky cookie).
    pub fn waiting_by_name(&self) -> u32 {
        self.slots.named.load(Relaxed)
    }

    /// The token a new connection to this backend watches.
    pub(crate) fn eviction_token(&self) -> Arc<CancellationToken> {
        self.link.evict.load_full()
    }

    /// The evictions so far: what a request to the backend notes when it
    /// picks it, to watch from there ([`Backend::watch_evictions`]).
    pub fn evictions_so_far(&self) -> u64 {
        self.link.evictions.load(Acquire)
    }

    /// A watch on the backend's evictions after the `since`-th, for a
    /// request to it that lasts (an l7 relay or stream): see
    /// [`Backend::evicted`]. The token is taken after the count was read,
    /// so an eviction between the two is seen by the count.
    pub fn watch_evictions(&self, since: u64) -> EvictionWatch {
        EvictionWatch {
            since,
            token: self.link.evict.load_full(),
        }
    }

    /// Resolves once the backend has closed its connections
    /// (`drain_timeout` after it left service, or `close_on_down`) since
    /// `watch` began, with the reason to log.
    pub async fn evicted(&self, watch: &EvictionWatch) -> crate::Reason {
        if self.link.evictions.load(Acquire) == watch.since {
            watch.token.cancelled().await;
        }
        self.eviction().reason()
    }

    /// The count of evictions (see [`Backend::evictions_so_far`]).
    pub(crate) fn evictions(&self) -> &AtomicU64 {
        &self.link.evictions
    }

    /// Why the last eviction happened.
    pub(crate) fn eviction(&self) -> Eviction {
        if self.link.eviction.load(Relaxed) == Eviction::BackendDown as u8 {
            Eviction::BackendDown
        } else {
            Eviction::DrainTimeout
        }
    }

    pub(super) fn evict_now(&self, why: Eviction) {
        self.link.evict_now(why);
    }

    pub(super) fn view(&self) -> BackendView {
        let s = self.status();
        BackendView {
            name: self.name.clone(),
            address: self.address,
            tier: self.tier,
            health: s.health.state(),
            admin: s.admin,
            weight: self.weight,
            weight_override: s.weight_override,
            effective_weight: if self.is_serving() {
                self.weight_shown(&s)
            } else {
                0
            },
            serving: self.is_serving(),
            active_connections: self.stats.connections_active.load(Relaxed),
            active_requests: self.stats.http_requests_active.load(Relaxed),
            max_connections: self.max_connections,
            connection_limit: self.connection_limit(),
            queue_depth: self.waiting_by_name(),
            last_probe: s.last_probe.clone(),
            history: s.history.iter().cloned().collect(),
        }
    }
}
