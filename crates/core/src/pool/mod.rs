//! A pool as the data plane sees it: its backends with their counters and state,
//! and the balancer built from the backends that are serving.
//!
//! The balancer (`Picker`) is immutable and swapped atomically: a connection loads
//! it without a lock; every change of a backend's health, admin state or weight
//! builds a new one from the effective weights (configured or overridden weight
//! when serving, else 0). The active tier is the lowest tier with a serving
//! backend; backends outside it are demoted. Every change of the active tier is
//! recorded with its cause, kept (across reloads) and sent to the journal.
//!
//! When a backend stops serving, its established connections are handled by why:
//! down with `close_on_down` -> closed at once; drained, disabled or demoted to a
//! standby tier -> closed after `drain_timeout` unless it serves again before;
//! down without `close_on_down` -> left alone (they fail or finish by themselves).

mod backend;
mod budget;
pub(crate) mod metrics;
mod observe;
mod operator;
mod outlier;
mod queue;
mod stats;

pub use backend::{Backend, BackendView, Eviction, EvictionWatch, LastProbe, Watch};
pub use budget::{RetryLeave, Retrying};
pub(crate) use queue::SlotGuard;
pub use queue::{Queue, QueueResult};
pub use stats::{BackendStats, LATENCY_SECONDS, Replay, StateLabel, UpstreamEvent};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use weir_balance::{Member, Picker, Policy};
use weir_config as config;

use self::backend::{Link, Out, Status};
use crate::events::Journal;
use crate::health::{self, AdminState, Cause, Change, Health, HealthCounter, TierChange};
use crate::statefile::Saved;
use crate::sync::lock;

/// What a pool needs from the server around it.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) journal: Arc<Journal>,
    /// Transitions kept per backend, and tier changes per pool.
    pub(crate) history: usize,
}

/// What a pool is built from besides its config.
pub(crate) struct Inputs<'a> {
    /// The pool of that name before a reload.
    pub(crate) previous: Option<&'a Pool>,
    /// What the state file holds for a backend (by name) new to this process.
    pub(crate) saved: &'a dyn Fn(&str) -> Option<Saved>,
    /// The tier changes the state file holds, for a pool new to this process.
    pub(crate) saved_tiers: Vec<TierChange>,
    /// The resolved address of a backend (by name).
    pub(crate) address: &'a dyn Fn(&str) -> Option<SocketAddr>,
    /// An l7 route sends to this pool.
    pub(crate) serves_http: bool,
    /// A route of a UDP listener sends to this pool.
    pub(crate) serves_udp: bool,
    /// The PROXY header its traffic starts with (an l4 route's
    /// `send_proxy_protocol`), which probes to the traffic port send too.
    pub(crate) probe_proxy: config::ProxyVersion,
    /// Whether a backend (by name) is leaving: removed at runtime or gone
    /// from DNS, draining.
    pub(crate) leaving: &'a dyn Fn(&str) -> bool,
}

/// A pool: backends plus how to pick among them.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub connect_timeout: Duration,
    /// Other backends tried when a connect fails (`u32::MAX`: all of them).
    pub retries: u32,
    /// Answers of these statuses (sorted) send an idempotent, bodiless l7
    /// request to another backend, within `retries`.
    pub retry_on_status: Box<[u16]>,
    /// Retries in flight at most ([`Pool::may_retry`]).
    pub retry_budget: Option<config::RetryBudget>,
    /// Retries in flight now, shared by the pool's generations.
    pub retrying: Arc<Retrying>,
    /// A sticky cookie keeps l7 sessions on their backend.
    pub sticky: bool,
    pub hash_key: config::HashKey,
    pub drain_timeout: Duration,
    pub close_on_down: bool,
    pub health: config::Health,
    pub backends: Vec<Backend>,
    /// What l7 routes speak to the backends.
    pub protocol: config::HttpProtocol,
    /// An l7 route sends to this pool: its HTTP families are rendered.
    pub serves_http: bool,
    /// A UDP listener's route sends to this pool: its datagram families
    /// are rendered.
    pub serves_udp: bool,
    /// The PROXY header probes to a backend's traffic port start with (a
    /// `LOCAL` one), as the traffic does; `Off` without.
    pub probe_proxy: config::ProxyVersion,
    /// Outlier detection from l7 answers.
    pub outlier: Option<config::Outlier>,
    /// Waiters for a slot, shared by the pool's generations.
    pub queue: Arc<Queue>,
    max_queue: u32,
    queue_timeout: Duration,
    /// Some backend has a connection limit.
    limited: bool,
    policy: Policy,
    picker: ArcSwap<Picker>,
    /// The picker was built from the backends' states at least once: until
    /// then an empty one says nothing of them.
    pub(super) built: AtomicBool,
    /// Serialises rebuilds so the picker always reflects the latest states;
    /// holds the active tier the last rebuild decided. Shared by the pool's
    /// generations: an older one's rebuild under way when a reload switches
    /// finishes before the newest one's begins, rather than after it (its
    /// limits, tiers and drains would overwrite the newest's).
    rebuild: Arc<Mutex<Option<u32>>>,
    /// False during the first round of probes: results are recorded and the
    /// picker is built once when the round is complete (no transient tiers).
    settled: AtomicBool,
    /// Built by a reload (or a change of backends) from a running pool: a
    /// tier change at its switch is the reload's.
    follows: bool,
    /// A task rebuilds the balancer while backends ramp up (slow start).
    ramp_task: AtomicBool,
    /// Kept across reloads, like the backends' histories.
    tier_history: Arc<Mutex<VecDeque<TierChange>>>,
    /// Thins the warnings about weir's own shortage of descriptors.
    shortage_lines: weir_telemetry::LogBudget,
    /// The newest generation of this pool, shared by all of them: work that
    /// outlives a reload (a passive retry, an old connection's failure)
    /// rebuilds the balancer that serves.
    newest: Arc<Mutex<Weak<Pool>>>,
    /// What the build leaves for [`Pool::activate`]: until then this pool
    /// changes nothing it shares with the running one.
    pending: Mutex<Option<Pending>>,
    cx: Context,
}

/// The changes to what a pool shares with the one it follows (a reload's),
/// made when it is switched to: a reload that fails after the pools are
/// built (a certificate, a port) leaves the running pools as they were.
#[derive(Debug)]
struct Pending {
    /// Health changes of backends whose check changed, for their histories.
    changes: Vec<(String, Change)>,
}

impl Pool {
    /// Builds a pool from its config. Backends that `previous` (the same pool
    /// before a reload) has by name keep their counters, connections, admin
    /// state, weight override and history, and their health too when the
    /// probe target and check are unchanged. Backends new to this process get
    /// what `saved` has for them (the state file).
    pub(crate) fn build(cfg: &config::Pool, inputs: Inputs<'_>, cx: &Context) -> Arc<Pool> {
        let previous = inputs.previous;
        let probed = !matches!(cfg.health.check, config::Check::None);
        let same_check = previous.is_some_and(|p| p.health.check == cfg.health.check);
        let mut reload_changes = Vec::new();
        let backends: Vec<Backend> = cfg
            .backends
            .iter()
            .map(|b| {
                // Resolved by the server before the build; a name that did
                // not resolve failed the start or reload there.
                let address = (inputs.address)(&b.name)
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], b.address.port())));
                let watch = match (b.health, probed) {
                    (false, _) => backend::Watch::Static,
                    (true, true) => backend::Watch::Probed,
                    (true, false) => backend::Watch::Passive,
                };
                let port = b.check_port.or(cfg.health.port);
                let probe_address = (watch == backend::Watch::Probed)
                    .then(|| port.map_or(address, |p| SocketAddr::new(address.ip(), p)));
                let fresh = || {
                    HealthCounter::new(
                        cfg.health.rise,
                        cfg.health.fall,
                        watch == backend::Watch::Probed,
                    )
                };
                let before = previous.and_then(|p| p.backend(&b.name));
                let outlier = before.map_or_else(Arc::default, |old| Arc::clone(&old.outlier));
                let slots = before.map_or_else(Arc::default, |old| Arc::clone(&old.slots));
                let (status, serving, link, stats, pending) = match before {
                    Some(old) => {
                        let keep = same_check
                            && old.check == b.check
                            && old.probe_address == probe_address
                            && old.watch == watch;
                        let status = if keep {
                            // Shared with the running pool: its new
                            // thresholds wait for the switch (`activate`).
                            Arc::clone(&old.status)
                        } else {
                            // Another target or check: what the old probes
                            // said no longer applies.
                            let s = old.status();
                            let health = fresh();
                            if s.health.state() != health.state() {
                                reload_changes.push((
                                    b.name.clone(),
                                    Change::Health {
                                        from: s.health.state(),
                                        to: health.state(),
                                    },
                                ));
                            }
                            Arc::new(Mutex::new(Status {
                                health,
                                admin: s.admin,
                                weight_override: s.weight_override,
                                history: s.history.clone(),
                                last_probe: None,
                                ramp_since: None,
                            }))
                        };
                        (
                            status,
                            old.is_serving(),
                            Arc::clone(&old.link),
                            Arc::clone(&old.stats),
                            Arc::clone(&old.passive_pending),
                        )
                    }
                    None => {
                        let saved = (inputs.saved)(&b.name).unwrap_or_default();
                        let mut history: VecDeque<health::Transition> = saved.history.into();
                        while history.len() > cx.history {
                            history.pop_front();
                        }
                        let status = Status {
                            health: fresh(),
                            admin: saved.admin.unwrap_or(AdminState::Enabled),
                            weight_override: saved.weight_override,
                            history,
                            last_probe: None,
                            ramp_since: None,
                        };
                        (
                            Arc::new(Mutex::new(status)),
                            false,
                            Arc::new(Link::default()),
                            Arc::default(),
                            Arc::default(),
                        )
                    }
                };
                Backend {
                    token: weir_balance::hash_bytes(b.name.as_bytes()),
                    leaving: (inputs.leaving)(&b.name),
                    name: b.name.clone(),
                    address,
                    weight: b.weight,
                    tier: b.tier,
                    stats,
                    probe_address,
                    watch,
                    status,
                    serving: AtomicBool::new(serving),
                    passive_pending: pending,
                    link,
                    outlier,
                    slow_start: cfg.slow_start,
                    max_connections: b.max_connections.or(cfg.max_connections_per_backend),
                    check: b.check.clone(),
                    slots,
                }
            })
            .collect();
        let tier_history = match previous {
            Some(p) => Arc::clone(&p.tier_history),
            None => {
                let mut h: VecDeque<TierChange> = inputs.saved_tiers.into();
                while h.len() > cx.history {
                    h.pop_front();
                }
                Arc::new(Mutex::new(h))
            }
        };
        // A pool new to this process serves no tier until its first probe
        // round: that first decision is recorded as a change too.
        let rebuild = previous.map_or_else(Arc::default, |p| Arc::clone(&p.rebuild));
        let limited = backends.iter().any(|b| b.max_connections.is_some());
        Arc::new(Pool {
            name: cfg.name.clone(),
            connect_timeout: cfg.connect_timeout,
            retries: cfg.retries.unwrap_or(u32::MAX),
            retry_on_status: cfg.retry_on_status.clone().into(),
            retry_budget: cfg.retry_budget,
            retrying: previous.map_or_else(Arc::default, |p| Arc::clone(&p.retrying)),
            sticky: cfg.sticky.is_some(),
            hash_key: cfg.hash_key,
            drain_timeout: cfg.drain_timeout,
            close_on_down: cfg.close_on_down,
            health: cfg.health.clone(),
            backends,
            protocol: cfg.protocol,
            serves_http: inputs.serves_http,
            serves_udp: inputs.serves_udp,
            probe_proxy: inputs.probe_proxy,
            outlier: cfg.outlier,
            queue: previous.map_or_else(Arc::default, |p| Arc::clone(&p.queue)),
            max_queue: cfg.max_queue,
            queue_timeout: cfg.queue_timeout,
            limited,
            policy: cfg.balance,
            picker: ArcSwap::from_pointee(Picker::new(cfg.balance, &[])),
            built: AtomicBool::new(false),
            rebuild,
            settled: AtomicBool::new(false),
            follows: previous.is_some(),
            ramp_task: AtomicBool::new(false),
            tier_history,
            shortage_lines: weir_telemetry::LogBudget::new(1),
            newest: previous.map_or_else(Arc::default, |p| Arc::clone(&p.newest)),
            pending: Mutex::new(Some(Pending {
                changes: reload_changes,
            })),
            cx: cx.clone(),
        })
    }

    /// Makes this pool the one that is switched to: its thresholds and
    /// history length reach the health state it shares with the pool before
    /// it, and the reload's health changes are recorded. Its balancer is
    /// built by [`Pool::settle`], after the first probe round. Called by the
    /// switch, once everything else of a start or reload is ready; again, it
    /// does nothing.
    pub(crate) fn activate(self: &Arc<Self>) {
        let Some(pending) = lock(&self.pending).take() else {
            return;
        };
        for b in &self.backends {
            let mut s = b.status();
            s.health.set_thresholds(self.health.rise, self.health.fall);
            while s.history.len() > self.cx.history {
                s.history.pop_front();
            }
        }
        for (name, change) in pending.changes {
            if let Some(b) = self.backend(&name) {
                let mut s = b.status();
                self.record(
                    b,
                    &mut s,
                    change,
                    Cause::Reload("health check changed".to_owned()),
                );
            }
        }
    }

    /// Appends a transition to a backend's history and tells the journal.
    fn record(&self, b: &Backend, s: &mut Status, change: Change, cause: Cause) {
        let t = health::record(&mut s.history, self.cx.history, change, cause);
        self.cx.journal.backend(&self.name, &b.name, &t);
    }

    /// Records a change that happened outside the pool (DNS) in the history
    /// of backend `name`.
    pub(crate) fn note(&self, name: &str, change: Change, cause: Cause) {
        if let Some(b) = self.backend(name) {
            let mut s = b.status();
            self.record(b, &mut s, change, cause);
        }
    }

    /// Ends the first probe round of a start or reload: this generation is
    /// the one work that outlives a reload rebuilds from now on, every
    /// change rebuilds its picker, and the picker is built from what the
    /// round found. Until then a pool that follows another leaves the
    /// running one to serve as it was: backends whose check changed are
    /// undecided until their first probe, and a picker built from them
    /// would record a tier change for nothing and refuse the queue's
    /// waiters `no_backend`.
    pub(crate) fn settle(self: &Arc<Self>) {
        *lock(&self.newest) = Arc::downgrade(self);
        self.settled.store(true, Relaxed);
        let why = if self.follows {
            "reload"
        } else {
            "first probe round"
        };
        self.rebuild(|| why.to_owned());
    }

    /// The newest generation of this pool (itself unless a reload replaced it).
    pub(crate) fn latest(self: &Arc<Self>) -> Arc<Pool> {
        lock(&self.newest)
            .upgrade()
            .unwrap_or_else(|| Arc::clone(self))
    }

    /// The current balancer: a lock-free load.
    pub(crate) fn picker(&self) -> arc_swap::Guard<Arc<Picker>> {
        self.picker.load()
    }

    /// Picks a backend for a request with this maglev `key` (see
    /// [`crate::upstream::affinity_key`]; ignored by other policies), never
    /// one of `tried`: its index, or `None` when no backend can serve.
    pub fn pick(&self, key: u64, tried: &[usize]) -> Option<usize> {
        let picker = self.picker.load();
        let load = |i: usize| self.backends.get(i).map_or(u32::MAX, |b| b.stats.load());
        let req = weir_balance::Request {
            key,
            random: fastrand::u64(..),
            load: &load,
        };
        picker.pick(&req, tried)
    }

    /// Whether a backend outside `tried` could be picked now; unlike
    /// [`Pool::pick`], it moves no balancing cursor (a probe before a retry).
    pub fn has_other(&self, tried: &[usize]) -> bool {
        self.picker.load().has_other(tried)
    }

    /// The tier currently serving, if any backend can serve.
    pub fn active_tier(&self) -> Option<u32> {
        self.picker.load().active_tier()
    }

    /// The balancing policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Active-tier changes, oldest first.
    pub fn tier_history(&self) -> Vec<TierChange> {
        lock(&self.tier_history).iter().cloned().collect()
    }

    pub fn view(&self, name: &str) -> Option<BackendView> {
        self.backend(name).map(Backend::view)
    }

    /// Backends that probes should skip (disabled).
    pub(crate) fn probe_wanted(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_some_and(|b| b.admin() != AdminState::Disabled)
    }

    /// A backend probes should look at that no probe has answered for yet:
    /// new to this process, or its target or check changed at a reload.
    pub(crate) fn unprobed(&self, i: usize) -> bool {
        self.probe_wanted(i)
            && self
                .backends
                .get(i)
                .is_some_and(|b| b.status().last_probe.is_none())
    }

    /// Rebuilds the picker from the current states and handles backends that
    /// started or stopped serving. `why` describes what changed, for the
    /// record of a tier change; it is only called when the tier changes.
    ///
    /// On a generation a reload replaced (work that outlived the reload: a
    /// slow-start step, an ejection's end, a passive retry, a caller holding
    /// the old pool), the newest generation is rebuilt instead: the old one's
    /// limits and tiers would overwrite what the backends share with it.
    fn rebuild(self: &Arc<Self>, why: impl FnOnce() -> String) {
        let mut last_tier = lock(&self.rebuild);
        let latest = self.latest();
        if !Arc::ptr_eq(&latest, self) {
            drop(last_tier);
            return latest.rebuild(why);
        }
        let now = std::time::Instant::now();
        let mut ramping = false;
        let mut ramps: Vec<Option<f64>> = Vec::with_capacity(self.backends.len());
        let snapshot: Vec<(u32, Health, AdminState, bool, bool)> = self
            .backends
            .iter()
            .map(|b| {
                let mut s = b.status();
                let ramp = b.ramp(&s, now);
                if ramp.is_none() {
                    s.ramp_since = None;
                }
                ramping |= s.ramp_since.is_some();
                ramps.push(ramp);
                let zeroed = s.weight_override == Some(0);
                let ejected = b.outlier.ejected.load(Relaxed);
                (
                    b.picker_weight(&s, now),
                    s.health.state(),
                    s.admin,
                    zeroed,
                    ejected,
                )
            })
            .collect();
        self.set_limits(&ramps);
        let members: Vec<Member<'_>> = self
            .backends
            .iter()
            .zip(&snapshot)
            .enumerate()
            .map(|(index, (b, &(weight, ..)))| Member {
                index,
                name: &b.name,
                weight,
                tier: b.tier,
            })
            .collect();
        let picker = Picker::new(self.policy, &members);
        picker.resume(&self.picker.load());
        let tier = picker.active_tier();
        for (b, &(weight, health, admin, zeroed, ejected)) in self.backends.iter().zip(&snapshot) {
            let serving = weight > 0 && Some(b.tier) == tier;
            // A backend that went standby (a primary demoted to a replica)
            // is no better than a down one for its connections.
            let failed = matches!(health, Health::Down | Health::Standby);
            let out = if serving {
                Out::Serving
            } else if failed && self.close_on_down {
                Out::Evict
            } else if ejected && admin == AdminState::Enabled && !zeroed && !failed {
                // An outlier ejected: no new requests for a while, but what
                // it carries goes on (Envoy's ejection cuts nothing either).
                Out::Leave
            } else if admin != AdminState::Enabled || health == Health::Up || zeroed {
                // Drained, disabled, set to weight 0 (also while on trial) or
                // demoted: connections may finish within drain_timeout.
                Out::Drain
            } else {
                Out::Leave
            };
            b.serving.store(serving, Relaxed);
            // Acted on when it changes, serving or not: a backend disabled
            // while it was already down drains too, and one that goes down
            // while draining is closed at once under close_on_down. What
            // the generations share says whether it served: a drain an
            // older one scheduled is called off by the newest's serving.
            let was = b.link.out.swap(out as u8, Relaxed);
            let was_serving = was == Out::Serving as u8;
            if was == out as u8 {
                continue;
            }
            // A drain under way goes on while the backend stays out of
            // service; serving again, or leaving service, starts anew.
            let epoch = if was_serving != serving {
                b.link.epoch.fetch_add(1, Relaxed) + 1
            } else {
                b.link.epoch.load(Relaxed)
            };
            match out {
                Out::Serving | Out::Leave => {}
                Out::Evict => b.evict_now(Eviction::BackendDown),
                Out::Drain => self.schedule_drain(b, epoch),
            }
        }
        if *last_tier != tier {
            let change = TierChange {
                at: SystemTime::now(),
                from: *last_tier,
                to: tier,
                cause: why(),
            };
            tracing::info!(
                pool = %self.name,
                from = %TierChange::tier_text(change.from),
                to = %TierChange::tier_text(change.to),
                cause = %change.cause,
                "active tier changed"
            );
            {
                let mut h = lock(&self.tier_history);
                while h.len() >= self.cx.history.max(1) {
                    h.pop_front();
                }
                h.push_back(change.clone());
            }
            self.cx.journal.tier(&self.name, change);
            *last_tier = tier;
        }
        self.picker.store(Arc::new(picker));
        self.built.store(true, SeqCst);
        drop(last_tier);
        if ramping {
            self.keep_ramping();
        }
        // A backend that came up, a limit raised: waiters may go now.
        if self.queue.depth() > 0 {
            self.latest().dispatch_rebuilt();
        }
    }

    /// While a backend ramps up after `slow_start`, rebuilds the balancer
    /// every step (a twentieth of `slow_start`, 100 ms..1 s) until every ramp
    /// is over; one task per pool.
    fn keep_ramping(self: &Arc<Self>) {
        let Some(over) = self.backends.iter().find_map(|b| b.slow_start) else {
            return;
        };
        if self.ramp_task.swap(true, Relaxed) {
            return;
        }
        let step = (over / 20).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(step).await;
            if let Some(p) = pool.upgrade() {
                p.ramp_task.store(false, Relaxed);
                // Starts the next step while a ramp goes on.
                p.rebuild(|| "slow start".to_owned());
            }
        });
    }

    /// Closes `b`'s connections `drain_timeout` from now, unless it went back
    /// into service meanwhile (its `epoch` moved). The task holds what the
    /// backend's generations share, not this generation: a pool rebuilt
    /// often (DNS answers that change at every refresh) would otherwise be
    /// kept whole in memory by each drain for `drain_timeout`.
    fn schedule_drain(self: &Arc<Self>, b: &Backend, epoch: u64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (link, stats) = (Arc::clone(&b.link), Arc::clone(&b.stats));
        let (pool, backend, wait) = (self.name.clone(), b.name.clone(), self.drain_timeout);
        handle.spawn(async move {
            tokio::time::sleep(wait).await;
            // The epoch moves whenever the backend starts or stops serving:
            // unchanged, it is still out of service.
            if link.epoch.load(Relaxed) == epoch {
                let open = stats.connections_active.load(Relaxed);
                if open > 0 {
                    tracing::info!(%pool, %backend, open, "drain_timeout reached; closing connections");
                }
                link.drained.store(epoch, Relaxed);
                link.evict_now(Eviction::DrainTimeout);
            }
        });
    }
}

/// The words of a backend transition, as the cause of a tier change:
/// `pg-a: health up -> down (probe: connect refused)`.
fn describe(backend: &str, change: &Change, cause: &Cause) -> String {
    let (kind, from, to) = change.parts();
    format!("{backend}: {kind} {from} -> {to} ({cause})")
}
