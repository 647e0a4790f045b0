//! Backends from DNS (`discover` of a pool): SRV records (priority as tier,
//! weight as weight) or a name's A/AAAA records at a port, asked again as
//! their TTLs say. Each discovered address is a backend of its pool named by
//! the address, with its own health, counters, history and operator state,
//! exactly like a static one; static and discovered backends mix.
//!
//! The running config is the file's config plus each pool's discovered
//! backends ([`Discovery::effective`]). A change in DNS rebuilds the snapshot
//! the way a reload does (a new backend is probed before it serves; the
//! others keep their state), without reading the file and without a new
//! config generation. What an answer does to the set is decided in [`plan`].

mod lookup;
pub mod plan;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use weir_config::{Backend, BackendAddress, Config, Discover};
use weir_telemetry::{Kind, Writer};

use crate::Server;
use crate::sync::lock;
use lookup::Lookup;
use plan::{Delta, Outcome, Set};

/// New pools whose first question is asked at the same time, at most.
const FIRSTS_AT_ONCE: usize = 16;

/// The `result` label values of `weir_discovery_resolutions_total`.
pub const RESULTS: [&str; 5] = ["ok", "empty", "timeout", "server_failure", "error"];

/// What one pool's discovery counts; kept across reloads while the pool
/// discovers.
#[derive(Debug, Default)]
pub struct Stats {
    resolutions: [AtomicU64; RESULTS.len()],
    /// Unix seconds of the last answer with records (0: never).
    last_success: AtomicU64,
}

impl Stats {
    fn count(&self, outcome: &Outcome) {
        let result = outcome.result();
        if let Some(i) = RESULTS.iter().position(|r| *r == result) {
            self.resolutions[i].fetch_add(1, Relaxed);
        }
        if matches!(outcome, Outcome::Records { .. }) {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.last_success.store(now, Relaxed);
        }
    }

    pub fn resolutions(&self, result: &str) -> u64 {
        RESULTS
            .iter()
            .position(|r| *r == result)
            .map_or(0, |i| self.resolutions[i].load(Relaxed))
    }
}

/// One discovering pool.
#[derive(Debug)]
struct Entry {
    spec: Discover,
    drain: Duration,
    set: Set,
    stats: Arc<Stats>,
    /// The result of the last resolution, to report changes once.
    last_result: Option<&'static str>,
    /// Ends the pool's refresh task.
    stop: CancellationToken,
    /// What the pool's question last found per name, kept across a restart
    /// of its refresh; a new question starts afresh.
    known: lookup::Known,
    /// DNS has answered the pool's question with records since it was
    /// first asked in this process: the set is DNS's word, not only what a
    /// previous question left.
    answered: bool,
}

impl Entry {
    /// Applies an outcome to the set; returns what changed.
    fn observe(&mut self, pool: &str, outcome: &Outcome, now: Instant) -> Vec<Delta> {
        self.stats.count(outcome);
        let result = outcome.result();
        if self.last_result != Some(result) {
            match outcome {
                Outcome::Records { found, .. } => {
                    tracing::info!(pool, query = %self.spec.query, records = found.len(), "discovery answered");
                }
                Outcome::Empty { .. } => tracing::warn!(
                    pool,
                    query = %self.spec.query,
                    hold = ?self.spec.hold,
                    "discovery: DNS has no records; the last good set serves until the hold ends"
                ),
                Outcome::Failed { detail, .. } => tracing::warn!(
                    pool,
                    query = %self.spec.query,
                    result,
                    error = %detail,
                    "discovery failed; the last good set serves on"
                ),
            }
            self.last_result = Some(result);
        }
        let (drain, hold) = (self.drain, self.spec.hold);
        if matches!(outcome, Outcome::Records { whole: true, .. }) {
            self.answered = true;
        }
        let mut deltas = self.set.expire(now);
        let was_left_out = self.set.left_out;
        deltas.extend(self.set.update(outcome, now, drain, hold));
        if self.set.left_out > 0 && was_left_out == 0 {
            tracing::warn!(
                pool,
                query = %self.spec.query,
                left_out = self.set.left_out,
                max = plan::MAX_MEMBERS,
                "discovery: more addresses than a pool takes; the others wait for room"
            );
        }
        deltas
    }
}

/// What a config changes in discovery ([`Discovery::plan`]), applied by
/// [`Discovery::commit`]. The default changes nothing.
#[derive(Default)]
pub(crate) struct Plan {
    /// Pools that stop discovering, or ask for other records (then also
    /// in `fresh`).
    gone: Vec<String>,
    /// Pools that ask for the same records differently: (pool, spec,
    /// drain, the new resolver).
    restarted: Vec<(String, Discover, Duration, Lookup)>,
    /// Pools that start discovering, resolved once already.
    fresh: Vec<Fresh>,
}

/// A pool that starts discovering, with what its first resolution found.
struct Fresh {
    pool: String,
    entry: Entry,
    /// For a pool that asks another question: what its first answer
    /// changed in the set it had.
    changed: Option<Vec<Delta>>,
    lookup: Lookup,
    first: Duration,
}

/// A pool that asks DNS another question since a reload, and what the
/// first answer changed in the set it kept.
pub(crate) struct AskedAnew {
    pub pool: String,
    pub spec: Discover,
    pub changed: Vec<Delta>,
}

/// A refresh task to start: its pool, resolver and first wait.
pub(crate) struct Task {
    pool: String,
    lookup: Lookup,
    first: Duration,
    stop: CancellationToken,
}

/// Every discovering pool's set.
#[derive(Debug, Default)]
pub(crate) struct Discovery {
    pools: Mutex<BTreeMap<String, Entry>>,
}

impl Discovery {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        lock(&self.pools)
    }

    /// What `config` changes, worked out without changing anything: a pool
    /// that starts discovering (or asks for other records) is resolved
    /// once, here, so that it starts with its backends. Nothing of it
    /// applies until [`Discovery::commit`], so a reload that fails later
    /// leaves discovery as it was. An error (no resolver can be made for a
    /// pool's question: the system's configuration is unreadable) names the
    /// pool; nothing changed.
    pub(crate) async fn plan(&self, config: &Config) -> Result<Plan, String> {
        let mut plan = Plan::default();
        let cannot = |i: usize, pool: &str, e: String| {
            format!("pools[{i}] ({pool}).discover: discovery cannot run: {e}")
        };
        let mut new = Vec::new();
        {
            let pools = self.lock();
            for (name, e) in pools.iter() {
                let keep = config.pools.iter().any(|p| {
                    p.name == *name && p.discover.as_ref().is_some_and(|d| d.query == e.spec.query)
                });
                if !keep {
                    plan.gone.push(name.clone());
                }
            }
            for (i, p) in config.pools.iter().enumerate() {
                let Some(spec) = &p.discover else { continue };
                let seed = match pools.get(&p.name) {
                    // Other records: the set found so far serves until the
                    // new question's answer replaces it (its members not in
                    // the answer drain), so a name that does not resolve
                    // yet, or a typo, empties nothing at once.
                    Some(e) if plan.gone.contains(&p.name) => {
                        let kept = Set {
                            empty_since: None,
                            left_out: 0,
                            ..e.set.clone()
                        };
                        Some((kept, Arc::clone(&e.stats)))
                    }
                    Some(e) if e.spec == *spec && e.drain == p.drain_timeout => continue,
                    // The same records, asked differently (interval, server,
                    // ...): keep what was found, restart the task.
                    Some(e) => {
                        let lookup = Lookup::new(spec, Arc::clone(&e.known))
                            .map_err(|e| cannot(i, &p.name, e))?;
                        let restart = (p.name.clone(), spec.clone(), p.drain_timeout, lookup);
                        plan.restarted.push(restart);
                        continue;
                    }
                    None => None,
                };
                let known = lookup::Known::default();
                let lookup =
                    Lookup::new(spec, Arc::clone(&known)).map_err(|e| cannot(i, &p.name, e))?;
                new.push((
                    p.name.clone(),
                    spec.clone(),
                    p.drain_timeout,
                    seed,
                    known,
                    lookup,
                ));
            }
        }
        // Each new pool's first question at the same time, a few at once:
        // with DNS unreachable, one after another they would add up their
        // timeouts (three times each) to the start or the reload.
        let firsts = new
            .into_iter()
            .map(|(pool, spec, drain, seed, known, lookup)| async move {
                let asked_anew = seed.is_some();
                let (set, stats) = seed.unwrap_or_default();
                let mut entry = Entry {
                    spec,
                    drain,
                    set,
                    stats,
                    last_result: None,
                    stop: CancellationToken::new(),
                    known,
                    answered: false,
                };
                let outcome = lookup.resolve().await;
                let first =
                    plan::next_refresh(&outcome, entry.spec.min_interval, entry.spec.max_interval);
                let deltas = entry.observe(&pool, &outcome, Instant::now());
                Fresh {
                    pool,
                    entry,
                    changed: asked_anew.then_some(deltas),
                    lookup,
                    first,
                }
            });
        plan.fresh = futures_util::stream::iter(firsts)
            .buffered(FIRSTS_AT_ONCE)
            .collect()
            .await;
        Ok(plan)
    }

    /// Applies `plan`: stops the refresh of pools that no longer discover,
    /// restarts the changed ones, adds the new ones. Returns the refresh
    /// tasks to start, and for each pool that asks another question, what
    /// its first answer changed in the set it kept.
    pub(crate) fn commit(&self, plan: Plan) -> (Vec<Task>, Vec<AskedAnew>) {
        let mut pools = self.lock();
        for name in &plan.gone {
            if let Some(e) = pools.remove(name) {
                e.stop.cancel();
            }
        }
        let mut tasks = Vec::new();
        for (pool, spec, drain, lookup) in plan.restarted {
            let Some(e) = pools.get_mut(&pool) else {
                continue;
            };
            e.stop.cancel();
            e.stop = CancellationToken::new();
            e.drain = drain;
            e.spec = spec;
            tasks.push(Task {
                pool,
                lookup,
                first: Duration::ZERO,
                stop: e.stop.clone(),
            });
        }
        let mut asked_anew = Vec::new();
        for f in plan.fresh {
            if let Some(changed) = f.changed {
                asked_anew.push(AskedAnew {
                    pool: f.pool.clone(),
                    spec: f.entry.spec.clone(),
                    changed,
                });
            }
            let stop = f.entry.stop.clone();
            pools.insert(f.pool.clone(), f.entry);
            tasks.push(Task {
                pool: f.pool,
                lookup: f.lookup,
                first: f.first,
                stop,
            });
        }
        (tasks, asked_anew)
    }

    /// Whether `pool` discovers by asking `query`.
    pub(crate) fn asks(&self, pool: &str, query: &weir_config::DiscoverQuery) -> bool {
        self.lock()
            .get(pool)
            .is_some_and(|e| e.spec.query == *query)
    }

    /// The addresses a pool's discovered backends serve on (not leaving).
    fn serving(&self, pool: &str) -> Vec<std::net::IpAddr> {
        self.lock().get(pool).map_or_else(Vec::new, |e| {
            e.set
                .members
                .iter()
                .filter(|(_, m)| m.leaving.is_none())
                .map(|(addr, _)| addr.ip())
                .collect()
        })
    }

    /// Applies an outcome of the refresh task that `stop` ends to a pool's
    /// set; returns what changed. Nothing, when that task was stopped: a
    /// reload replaced it (its answer is to another question) or ended it.
    fn observe(
        &self,
        pool: &str,
        outcome: &Outcome,
        now: Instant,
        stop: &CancellationToken,
    ) -> Vec<Delta> {
        let mut pools = self.lock();
        // A reload cancels a replaced task's token under this lock.
        if stop.is_cancelled() {
            return Vec::new();
        }
        pools
            .get_mut(pool)
            .map(|e| e.observe(pool, outcome, now))
            .unwrap_or_default()
    }

    /// Ends the drains that are over, unless the task that `stop` ends was
    /// stopped (see [`Discovery::observe`]).
    fn expire(&self, pool: &str, now: Instant, stop: &CancellationToken) -> Vec<Delta> {
        let mut pools = self.lock();
        if stop.is_cancelled() {
            return Vec::new();
        }
        pools
            .get_mut(pool)
            .map(|e| e.set.expire(now))
            .unwrap_or_default()
    }

    fn next_expiry(&self, pool: &str) -> Option<Instant> {
        self.lock().get(pool).and_then(|e| e.set.next_expiry())
    }

    /// The pools of `source` (as `plan` would have them) whose discovered
    /// backends are all of what DNS gave in answer to their question: it
    /// answered with records, and none of them waits for room. A saved
    /// discovered address such a pool lacks is no longer in DNS.
    pub(crate) fn answered(&self, source: &Config, plan: &Plan) -> HashSet<String> {
        let pools = self.lock();
        source
            .pools
            .iter()
            .filter(|p| {
                entry_of(&p.name, plan, &pools).is_some_and(|e| e.answered && e.set.left_out == 0)
            })
            .map(|p| p.name.clone())
            .collect()
    }

    /// The discovered backends of `source`'s pools that are leaving (gone
    /// from DNS, draining), as (pool, name), as `plan` would have them.
    pub(crate) fn leaving(&self, source: &Config, plan: &Plan) -> Vec<(String, String)> {
        let pools = self.lock();
        let mut out = Vec::new();
        for p in &source.pools {
            if let Some(entry) = entry_of(&p.name, plan, &pools) {
                out.extend(
                    entry
                        .set
                        .members
                        .iter()
                        .filter(|(_, m)| m.leaving.is_some())
                        .map(|(addr, _)| (p.name.clone(), addr.to_string())),
                );
            }
        }
        out
    }

    /// `source` with each discovering pool's backends added after its static
    /// ones, in address order; a draining one at weight 0. An address that a
    /// static backend of the pool already has (by name or address) is left
    /// to the static one. As `plan` would have it: without the pools it
    /// ends, with the ones it starts.
    pub(crate) fn effective(&self, source: &Config, plan: &Plan) -> Config {
        let pools = self.lock();
        let mut config = source.clone();
        for p in &mut config.pools {
            let Some(entry) = entry_of(&p.name, plan, &pools) else {
                continue;
            };
            for (addr, m) in &entry.set.members {
                let name = addr.to_string();
                let taken = p.backends.iter().any(|b| {
                    b.name == name || matches!(b.address, BackendAddress::Ip(a) if a == *addr)
                });
                if taken {
                    continue;
                }
                p.backends.push(Backend {
                    name,
                    address: BackendAddress::Ip(*addr),
                    weight: if m.leaving.is_some() { 0 } else { m.weight },
                    tier: m.tier,
                    health: true,
                    check_port: None,
                    max_connections: None,
                    check: None,
                });
            }
        }
        config
    }

    /// `weir_discovery_*`.
    pub(crate) fn render(&self, w: &mut Writer) {
        let pools = self.lock();
        w.family(
            "weir_discovery_resolutions",
            Kind::Counter,
            "DNS resolutions of a pool's discover, by result: ok, empty, timeout, server_failure, error.",
        );
        for (name, e) in pools.iter() {
            for result in RESULTS {
                w.sample(
                    "weir_discovery_resolutions_total",
                    &[("pool", name), ("result", result)],
                    e.stats.resolutions(result),
                );
            }
        }
        w.family(
            "weir_discovery_records",
            Kind::Gauge,
            "Addresses of a pool in DNS now (draining ones not counted).",
        );
        for (name, e) in pools.iter() {
            w.sample(
                "weir_discovery_records",
                &[("pool", name)],
                e.set.present() as u64,
            );
        }
        w.family(
            "weir_discovery_last_success_timestamp_seconds",
            Kind::Gauge,
            "When a pool's DNS last answered with records (Unix seconds; 0: never).",
        );
        for (name, e) in pools.iter() {
            w.sample(
                "weir_discovery_last_success_timestamp_seconds",
                &[("pool", name)],
                e.stats.last_success.load(Relaxed),
            );
        }
    }
}

/// A pool's discovery as `plan` would have it: the entry it starts, none
/// when it ends the pool's discovery, else the running one (if any).
fn entry_of<'e>(
    pool: &str,
    plan: &'e Plan,
    pools: &'e BTreeMap<String, Entry>,
) -> Option<&'e Entry> {
    match plan.fresh.iter().find(|f| f.pool == pool) {
        Some(f) => Some(&f.entry),
        None if plan.gone.iter().any(|g| g == pool) => None,
        None => pools.get(pool),
    }
}

/// Starts the refresh tasks; each holds the server weakly and ends with it.
pub(crate) fn spawn(server: &Arc<Server>, tasks: Vec<Task>) {
    for t in tasks {
        tokio::spawn(refresh(Arc::downgrade(server), t));
    }
}

/// Asks DNS again as the TTLs say, ends drains when they are over, and
/// rebuilds the pool when its set changed.
async fn refresh(server: Weak<Server>, task: Task) {
    let Task {
        pool,
        lookup,
        first,
        stop,
    } = task;
    let spec = {
        let Some(s) = server.upgrade() else { return };
        match s.discovery.lock().get(&pool) {
            Some(e) => e.spec.clone(),
            None => return,
        }
    };
    let mut next_query = Instant::now() + first;
    // Changes found but not applied (the rebuild failed: a static backend's
    // name did not resolve, the state file could not be read), and when to
    // try again; the backoff doubles up to `RETRY_MAX`.
    let mut pending: Vec<Delta> = Vec::new();
    let mut retry: Option<(Instant, Duration)> = None;
    loop {
        let mut wake = match server
            .upgrade()
            .and_then(|s| s.discovery.next_expiry(&pool))
        {
            Some(expiry) => expiry.min(next_query),
            None => next_query,
        };
        if let Some((at, _)) = retry {
            wake = wake.min(at);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        let deltas = if now >= next_query {
            // A family whose question fails keeps what the pool serves of
            // it (an empty answer still within `hold` included).
            if let Some(s) = server.upgrade() {
                lookup.seed(&s.discovery.serving(&pool));
            }
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = lookup.resolve() => outcome,
            };
            next_query =
                Instant::now() + plan::next_refresh(&outcome, spec.min_interval, spec.max_interval);
            let Some(s) = server.upgrade() else { return };
            s.discovery.observe(&pool, &outcome, Instant::now(), &stop)
        } else {
            let Some(s) = server.upgrade() else { return };
            s.discovery.expire(&pool, now, &stop)
        };
        if stop.is_cancelled() {
            return;
        }
        let due = retry.is_some_and(|(at, _)| Instant::now() >= at);
        if !deltas.is_empty() || due {
            // A removed backend's last word may be noted twice: its state,
            // history included, is forgotten once the pool takes the change.
            pending.extend(deltas);
            plan::fold(&mut pending, plan::MAX_PENDING);
            let Some(s) = server.upgrade() else { return };
            if s.rediscover(&pool, &spec, &pending, &stop).await {
                pending.clear();
                retry = None;
            } else {
                let backoff = retry.map_or(RETRY_FIRST, |(_, b)| (b * 2).min(RETRY_MAX));
                retry = Some((Instant::now() + backoff, backoff));
            }
        }
    }
}

/// The first wait before a pool that could not be rebuilt is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(30);
