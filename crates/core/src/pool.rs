//! A pool as the data plane sees it: its backends with their counters and state,
//! and the balancer built from the backends that are serving.
//!
//! The balancer (`Picker`) is immutable and swapped atomically: a connection loads
//! it without a lock; every change of a backend's health, admin state or weight
//! builds a new one from the effective weights (configured or overridden weight
//! when serving, else 0). The active tier is the lowest tier with a serving
//! backend; backends outside it are demoted.
//!
//! When a backend stops serving, its established connections are handled by why:
//! down with `close_on_down` -> closed at once; drained, disabled or demoted to a
//! standby tier -> closed after `drain_timeout` unless it serves again before;
//! down without `close_on_down` -> left alone (they fail or finish by themselves).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use weir_balance::{Member, Picker, Policy};
use weir_config as config;

use crate::events::{Event, Journal};
use crate::health::probe::Report;
use crate::health::state::{self, Admin, Cause, Change, Health, HealthCounter, Transition};
use crate::stats::{BackendStats, ConnectError, StateLabel};

/// Why weir closed a backend's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The backend went down and the pool has `close_on_down`.
    BackendDown = 1,
    /// It was drained, disabled or demoted and `drain_timeout` ran out.
    DrainTimeout = 2,
}

/// The last probe of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastProbe {
    pub at: SystemTime,
    pub ok: bool,
    pub reason: String,
}

#[derive(Debug)]
struct Status {
    health: HealthCounter,
    admin: Admin,
    weight_override: Option<u32>,
    history: VecDeque<Transition>,
    last_probe: Option<LastProbe>,
}

/// Operator state read back from the state file for a backend that is new to
/// this process (at start, or added by a reload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    pub admin: Option<Admin>,
    pub weight_override: Option<u32>,
    /// Oldest first.
    pub history: Vec<Transition>,
}

/// What a backend's connections watch, shared by every generation of the
/// backend across reloads: an eviction decided by the newest pool reaches
/// connections made through an older one.
#[derive(Debug)]
struct Link {
    /// Cancelled (and replaced) to close this backend's connections.
    evict: ArcSwap<CancellationToken>,
    eviction: AtomicU8,
    /// Bumped whenever serving starts or stops; a pending drain closes
    /// connections only if nothing changed since it was scheduled.
    epoch: AtomicU64,
}

/// What a pool needs from the server around it.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) journal: Arc<Journal>,
    /// Transitions kept per backend.
    pub(crate) history: usize,
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
    /// Where probes go; `None` for a static backend.
    pub probe_address: Option<SocketAddr>,
    /// Shared with the previous generation when a reload kept the probe target.
    status: Arc<Mutex<Status>>,
    serving: AtomicBool,
    link: Arc<Link>,
}

/// A consistent view of a backend's state, for the API and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendView {
    pub name: String,
    pub address: SocketAddr,
    pub tier: u32,
    pub health: Health,
    pub admin: Admin,
    pub weight: u32,
    pub weight_override: Option<u32>,
    pub effective_weight: u32,
    pub serving: bool,
    pub active_connections: i64,
    pub last_probe: Option<LastProbe>,
    pub history: Vec<Transition>,
}

impl Backend {
    fn status(&self) -> MutexGuard<'_, Status> {
        // A poisoned lock only means another thread panicked mid-update; the
        // state itself is plain data and still usable.
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The weight it would get if serving.
    fn weight_now(s: &Status, configured: u32) -> u32 {
        s.weight_override.unwrap_or(configured)
    }

    fn eligible_weight(&self, s: &Status) -> u32 {
        if s.admin == Admin::Enabled && s.health.state() == Health::Up {
            Self::weight_now(s, self.weight)
        } else {
            0
        }
    }

    pub fn health(&self) -> Health {
        self.status().health.state()
    }

    /// The state metrics show: admin state first, then health.
    pub fn state_label(&self) -> StateLabel {
        label(&self.status())
    }

    /// The weight it gets now: configured or overridden while serving, else 0.
    pub fn effective_weight(&self) -> u32 {
        if self.is_serving() {
            self.eligible_weight(&self.status())
        } else {
            0
        }
    }

    /// The configured weight, or the operator's override.
    pub fn current_weight(&self) -> u32 {
        Self::weight_now(&self.status(), self.weight)
    }

    fn count_transition(&self, before: StateLabel, after: StateLabel) {
        if before != after {
            self.stats.transition(before, after);
        }
    }

    pub fn admin(&self) -> Admin {
        self.status().admin
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Relaxed)
    }

    /// True while probes should run at the faster interval.
    pub(crate) fn changing(&self) -> bool {
        self.status().health.changing()
    }

    /// The token a new connection to this backend watches.
    pub(crate) fn eviction_token(&self) -> Arc<CancellationToken> {
        self.link.evict.load_full()
    }

    /// Why the last eviction happened.
    pub(crate) fn eviction(&self) -> Eviction {
        if self.link.eviction.load(Relaxed) == Eviction::BackendDown as u8 {
            Eviction::BackendDown
        } else {
            Eviction::DrainTimeout
        }
    }

    fn evict_now(&self, why: Eviction) {
        self.link.eviction.store(why as u8, Relaxed);
        let old = self.link.evict.swap(Arc::new(CancellationToken::new()));
        old.cancel();
    }
}

/// A pool: backends plus how to pick among them.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub hash_key: config::HashKey,
    pub drain_timeout: Duration,
    pub close_on_down: bool,
    pub health: config::Health,
    pub backends: Vec<Backend>,
    policy: Policy,
    picker: ArcSwap<Picker>,
    /// Serialises rebuilds so the picker always reflects the latest states.
    rebuild: Mutex<Option<u32>>,
    /// False during the first round of probes: results are recorded and the
    /// picker is built once when the round is complete (no transient tiers).
    settled: AtomicBool,
    /// Kept across reloads, like the backends' histories.
    tier_history: Arc<Mutex<VecDeque<TierChange>>>,
    cx: Context,
}

/// A change of a pool's active tier: (when, from, to).
pub type TierChange = (SystemTime, Option<u32>, Option<u32>);

impl Pool {
    /// Builds a pool from its config. Backends that `previous` (the same pool
    /// before a reload) has by name keep their counters, connections, admin
    /// state, weight override and history, and their health too when the
    /// probe target and check are unchanged. Backends new to this process get
    /// what `saved` has for them (the state file).
    pub(crate) fn build(
        cfg: &config::Pool,
        previous: Option<&Pool>,
        saved: &dyn Fn(&str) -> Option<Saved>,
        cx: &Context,
    ) -> Arc<Pool> {
        let probed = !matches!(cfg.health.check, config::Check::None);
        let same_check = previous.is_some_and(|p| p.health.check == cfg.health.check);
        let mut reload_changes = Vec::new();
        let backends: Vec<Backend> = cfg
            .backends
            .iter()
            .map(|b| {
                let probe = probed && b.health;
                let port = b.check_port.or(cfg.health.port);
                let probe_address =
                    probe.then(|| port.map_or(b.address, |p| SocketAddr::new(b.address.ip(), p)));
                let fresh = || HealthCounter::new(cfg.health.rise, cfg.health.fall, probe);
                let before = previous.and_then(|p| p.backend(&b.name));
                let (status, serving, link, stats) = match before {
                    Some(old) => {
                        let status = if same_check && old.probe_address == probe_address {
                            let status = Arc::clone(&old.status);
                            let mut s = lock(&status);
                            s.health.set_thresholds(cfg.health.rise, cfg.health.fall);
                            while s.history.len() > cx.history {
                                s.history.pop_front();
                            }
                            drop(s);
                            status
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
                            }))
                        };
                        (
                            status,
                            old.is_serving(),
                            Arc::clone(&old.link),
                            Arc::clone(&old.stats),
                        )
                    }
                    None => {
                        let saved = saved(&b.name).unwrap_or_default();
                        let mut history: VecDeque<Transition> = saved.history.into();
                        while history.len() > cx.history {
                            history.pop_front();
                        }
                        let status = Status {
                            health: fresh(),
                            admin: saved.admin.unwrap_or(Admin::Enabled),
                            weight_override: saved.weight_override,
                            history,
                            last_probe: None,
                        };
                        let link = Link {
                            evict: ArcSwap::from_pointee(CancellationToken::new()),
                            eviction: AtomicU8::new(0),
                            epoch: AtomicU64::new(0),
                        };
                        (
                            Arc::new(Mutex::new(status)),
                            false,
                            Arc::new(link),
                            Arc::default(),
                        )
                    }
                };
                Backend {
                    name: b.name.clone(),
                    address: b.address,
                    weight: b.weight,
                    tier: b.tier,
                    stats,
                    probe_address,
                    status,
                    serving: AtomicBool::new(serving),
                    link,
                }
            })
            .collect();
        let policy = match cfg.balance {
            config::Balance::RoundRobin => Policy::RoundRobin,
            config::Balance::LeastConn => Policy::LeastConn,
            config::Balance::Random => Policy::Random,
            config::Balance::First => Policy::First,
            config::Balance::Maglev => Policy::Maglev,
        };
        let pool = Arc::new(Pool {
            name: cfg.name.clone(),
            connect_timeout: cfg.connect_timeout,
            retries: cfg.retries,
            hash_key: cfg.hash_key,
            drain_timeout: cfg.drain_timeout,
            close_on_down: cfg.close_on_down,
            health: cfg.health.clone(),
            backends,
            policy,
            picker: ArcSwap::from_pointee(Picker::new(policy, &[])),
            rebuild: Mutex::new(previous.and_then(Pool::active_tier)),
            settled: AtomicBool::new(false),
            tier_history: previous.map_or_else(Arc::default, |p| Arc::clone(&p.tier_history)),
            cx: cx.clone(),
        });
        for (name, change) in reload_changes {
            if let Some(b) = pool.backend(&name) {
                let mut s = b.status();
                pool.record(
                    b,
                    &mut s,
                    change,
                    Cause::Reload("health check changed".to_owned()),
                );
            }
        }
        pool.rebuild();
        pool
    }

    /// Appends a transition to a backend's history and tells the journal.
    fn record(&self, b: &Backend, s: &mut Status, change: Change, cause: Cause) {
        let t = state::record(&mut s.history, self.cx.history, change, cause);
        self.cx.journal.backend(&self.name, &b.name, &t);
    }

    /// Ends the start-up round: from now on every change rebuilds the picker.
    pub(crate) fn settle(self: &Arc<Self>) {
        self.settled.store(true, Relaxed);
        self.rebuild();
    }

    /// The current balancer: a lock-free load.
    pub(crate) fn picker(&self) -> arc_swap::Guard<Arc<Picker>> {
        self.picker.load()
    }

    /// The tier currently serving, if any backend can serve.
    pub fn active_tier(&self) -> Option<u32> {
        self.picker.load().active_tier()
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name == name)
    }

    /// Active-tier changes: (time, from, to).
    pub fn tier_history(&self) -> Vec<TierChange> {
        lock(&self.tier_history).iter().cloned().collect()
    }

    pub fn view(&self, name: &str) -> Option<BackendView> {
        let b = self.backend(name)?;
        let s = b.status();
        Some(BackendView {
            name: b.name.clone(),
            address: b.address,
            tier: b.tier,
            health: s.health.state(),
            admin: s.admin,
            weight: b.weight,
            weight_override: s.weight_override,
            effective_weight: if b.is_serving() {
                b.eligible_weight(&s)
            } else {
                0
            },
            serving: b.is_serving(),
            active_connections: b.stats.connections_active.load(Relaxed),
            last_probe: s.last_probe.clone(),
            history: s.history.iter().cloned().collect(),
        })
    }

    /// Applies a probe result to backend `i`.
    pub(crate) fn on_probe(self: &Arc<Self>, i: usize, report: &Report, took: Duration) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        let (ok, reason) = (report.ok, report.reason.as_str());
        b.stats.check(ok, report.kind, took);
        let changed = {
            let mut s = b.status();
            let now = SystemTime::now();
            // Most probes repeat the previous result: reuse its text.
            match &mut s.last_probe {
                Some(last) if last.ok == ok && last.reason == reason => last.at = now,
                slot => {
                    *slot = Some(LastProbe {
                        at: now,
                        ok,
                        reason: reason.to_owned(),
                    })
                }
            }
            if s.admin == Admin::Disabled {
                return;
            }
            let before = label(&s);
            let change = s.health.probe(ok);
            b.count_transition(before, label(&s));
            if let Some((from, to)) = change {
                self.record(
                    b,
                    &mut s,
                    Change::Health { from, to },
                    Cause::Probe(reason.to_owned()),
                );
                tracing::info!(pool = %self.name, backend = %b.name, from = from.as_str(), to = to.as_str(), cause = reason, "backend health changed");
            }
            change.is_some()
        };
        if changed && self.settled.load(Relaxed) {
            self.rebuild();
        }
    }

    /// A client connect to backend `i` failed: passive health.
    pub(crate) fn on_connect_failure(self: &Arc<Self>, i: usize, kind: ConnectError) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        if b.probe_address.is_none() {
            // Static backends have no probes to bring them back.
            return;
        }
        let reason = format!("connect {}", kind.as_str());
        let changed = {
            let mut s = b.status();
            let before = label(&s);
            let change = s.health.passive_failure();
            b.count_transition(before, label(&s));
            if let Some((from, to)) = change {
                self.record(
                    b,
                    &mut s,
                    Change::Health { from, to },
                    Cause::Passive(reason.clone()),
                );
                tracing::warn!(pool = %self.name, backend = %b.name, cause = %reason, "backend down after failed connects");
            }
            change.is_some()
        };
        if changed {
            self.rebuild();
        }
    }

    /// Operator: set the admin state of a backend. False if there is no such backend.
    pub fn set_admin(self: &Arc<Self>, name: &str, admin: Admin) -> bool {
        let Some(i) = self.index(name) else {
            return false;
        };
        let b = &self.backends[i];
        {
            let mut s = b.status();
            let from = s.admin;
            if from == admin {
                return true;
            }
            let before = label(&s);
            s.admin = admin;
            // Health is stale after a time without probes: decide it afresh.
            if from == Admin::Disabled && b.probe_address.is_some() {
                let (rise, fall) = (self.health.rise, self.health.fall);
                s.health = HealthCounter::new(rise, fall, true);
            }
            b.count_transition(before, label(&s));
            self.record(
                b,
                &mut s,
                Change::Admin { from, to: admin },
                Cause::Operator,
            );
        }
        tracing::info!(pool = %self.name, backend = %name, admin = admin.as_str(), "backend admin state set");
        self.rebuild();
        true
    }

    /// Operator: override (or with `None` restore) a backend's weight.
    pub fn set_weight(self: &Arc<Self>, name: &str, weight: Option<u32>) -> bool {
        let Some(b) = self.backend(name) else {
            return false;
        };
        {
            let mut s = b.status();
            let from = s.weight_override;
            if from == weight {
                return true;
            }
            s.weight_override = weight;
            self.record(
                b,
                &mut s,
                Change::Weight { from, to: weight },
                Cause::Operator,
            );
        }
        self.rebuild();
        true
    }

    /// Backends that probes should skip (disabled).
    pub(crate) fn probe_wanted(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_some_and(|b| b.admin() != Admin::Disabled)
    }

    /// Rebuilds the picker from the current states and handles backends that
    /// started or stopped serving.
    fn rebuild(self: &Arc<Self>) {
        let mut last_tier = lock(&self.rebuild);
        let snapshot: Vec<(u32, Health, Admin)> = self
            .backends
            .iter()
            .map(|b| {
                let s = b.status();
                (b.eligible_weight(&s), s.health.state(), s.admin)
            })
            .collect();
        let members: Vec<Member<'_>> = self
            .backends
            .iter()
            .zip(&snapshot)
            .enumerate()
            .map(|(index, (b, &(weight, _, _)))| Member {
                index,
                name: &b.name,
                weight,
                tier: b.tier,
            })
            .collect();
        let picker = Picker::new(self.policy, &members);
        let tier = picker.active_tier();
        for (b, &(weight, health, admin)) in self.backends.iter().zip(&snapshot) {
            let serving = weight > 0 && Some(b.tier) == tier;
            let was = b.serving.swap(serving, Relaxed);
            if was == serving {
                continue;
            }
            let epoch = b.link.epoch.fetch_add(1, Relaxed) + 1;
            if serving {
                continue;
            }
            if health == Health::Down {
                if self.close_on_down {
                    b.evict_now(Eviction::BackendDown);
                }
            } else if admin != Admin::Enabled || health == Health::Up {
                // Drained, disabled or demoted: connections may finish within
                // drain_timeout.
                self.schedule_drain(b, epoch);
            }
        }
        if *last_tier != tier {
            tracing::info!(pool = %self.name, from = ?*last_tier, to = ?tier, "active tier changed");
            let mut h = lock(&self.tier_history);
            if h.len() == state::HISTORY {
                h.pop_front();
            }
            let at = SystemTime::now();
            h.push_back((at, *last_tier, tier));
            self.cx.journal.send(Event::Tier {
                at,
                pool: self.name.clone(),
                from: *last_tier,
                to: tier,
            });
            *last_tier = tier;
        }
        self.picker.store(Arc::new(picker));
    }

    fn schedule_drain(self: &Arc<Self>, b: &Backend, epoch: u64) {
        let Some(i) = self.index(&b.name) else { return };
        let pool = Arc::clone(self);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            tokio::time::sleep(pool.drain_timeout).await;
            let b = &pool.backends[i];
            if b.link.epoch.load(Relaxed) == epoch && !b.is_serving() {
                let open = b.stats.connections_active.load(Relaxed);
                if open > 0 {
                    tracing::info!(pool = %pool.name, backend = %b.name, open, "drain_timeout reached; closing connections");
                }
                b.evict_now(Eviction::DrainTimeout);
            }
        });
    }
}

fn label(s: &Status) -> StateLabel {
    match (s.admin, s.health.state()) {
        (Admin::Disabled, _) => StateLabel::Disabled,
        (Admin::Drain, _) => StateLabel::Drain,
        (Admin::Enabled, Health::Unknown) => StateLabel::Unknown,
        (Admin::Enabled, Health::Up) => StateLabel::Up,
        (Admin::Enabled, Health::Down) => StateLabel::Down,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
