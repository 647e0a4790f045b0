//! Scheduling of active probes: one task per distinct probe target (address and
//! check settings), however many pools list that backend; each result is applied
//! to every subscribed backend, each with its own rise/fall counter.
//!
//! The tasks outlive reloads ([`Running`]): a reload hands each target that
//! stays its new subscribers and prober, and the target keeps its place in
//! time. Only targets new to the reload, and targets with a backend no probe
//! has answered for yet, are probed at once; a fleet whose DNS answer changes
//! every few seconds is not probed whole at each change.
//!
//! The first probes are spread over a short window (see [`start_offset`]) so
//! that thousands of backends are not all connected to in the same
//! millisecond. After that a backend is probed every `interval` (±10% jitter
//! so probes stay spread out), or every `fast_interval` while its state is
//! undecided or counting towards a change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use weir_config::Check;

use super::{Probe, Prober};
use crate::pool::Pool;
use crate::sync::lock;

/// The first probes start this far apart...
const START_SPACING: Duration = Duration::from_micros(50);
/// ...within a window of at most this (10,000 targets: 0.5 s).
const START_WINDOW: Duration = Duration::from_secs(2);
/// Later probes are due on this grid: those due within one tick go out
/// together, and the worker wakes once for them and takes their answers in
/// a few reads of its event queue, rather than once per probe.
const TICK: Duration = Duration::from_millis(10);

/// The first point of the grid (`epoch` + k × [`TICK`]) at or after `due`.
fn on_grid(epoch: tokio::time::Instant, due: tokio::time::Instant) -> tokio::time::Instant {
    let since = due.saturating_duration_since(epoch).as_nanos();
    let tick = TICK.as_nanos();
    let ticks = since.div_ceil(tick);
    u64::try_from(ticks.saturating_mul(tick))
        .ok()
        .and_then(|nanos| epoch.checked_add(Duration::from_nanos(nanos)))
        .unwrap_or(due)
}

/// When target `i` of `n` sends its first probe: evenly over
/// `min(n × START_SPACING, START_WINDOW)`. A burst of SYNs to thousands of
/// ports at once overflows listen backlogs and fails first probes of
/// healthy backends; 50 µs apart, 10,000 targets start within half a second.
fn start_offset(i: usize, n: usize) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    let window = START_SPACING
        .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
        .min(START_WINDOW);
    let nanos = window.as_nanos() * i as u128 / n as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    address: SocketAddr,
    probe: Probe,
    /// The PROXY header a probe connection starts with.
    proxy: weir_config::ProxyVersion,
    interval: Duration,
    fast_interval: Duration,
    timeout: Duration,
}

#[derive(Debug)]
struct Subscriber {
    pool: Arc<Pool>,
    index: usize,
}

/// The probe tasks of the running config, one per target, kept from one
/// reload to the next.
#[derive(Debug, Default)]
pub(crate) struct Running {
    /// Stops them all (the shutdown); each task's own token is a child.
    stop: CancellationToken,
    tasks: Mutex<HashMap<Target, Handle>>,
}

#[derive(Debug)]
struct Handle {
    stop: CancellationToken,
    update: mpsc::UnboundedSender<Update>,
    /// Asks for a probe at once (a backend an operator enabled again).
    now: Arc<Notify>,
}

/// A reload's word to a target it keeps.
#[derive(Debug)]
struct Update {
    prober: Prober,
    subs: Vec<Subscriber>,
    /// Probe at once and say so here: a subscriber has no answer yet.
    first: Option<mpsc::UnboundedSender<()>>,
}

impl Running {
    /// Ends every probe task, and any a later [`Prepared::spawn`] starts.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Probes the targets at `address` at once, rather than at their next
    /// turn: a backend enabled again starts undecided and serves only once
    /// a probe passes (with an `interval` of a minute, it waited that long).
    pub(crate) fn probe_now(&self, address: SocketAddr) {
        for (target, handle) in lock(&self.tasks).iter() {
            if target.address == address {
                handle.now.notify_one();
            }
        }
    }
}

/// What a reload's [`Prepared::spawn`] waits for: the targets it probes at
/// once.
#[derive(Debug)]
pub(crate) struct Checkers {
    first_round: mpsc::UnboundedReceiver<()>,
    /// Targets probed at once.
    tasks: usize,
    longest_timeout: Duration,
    /// When the last first probe starts.
    last_start: Duration,
}

/// Probers made ready for every distinct probe target, not yet running.
#[derive(Debug)]
pub(crate) struct Prepared {
    ready: Vec<(Target, Prober, Vec<Subscriber>)>,
}

/// Makes one prober per distinct probe target of `pools`. Fails when a
/// check's TLS settings cannot be loaded; nothing runs until [`Prepared::spawn`],
/// so a reload can stop the old probes only once the new ones are sure to start.
pub(crate) fn prepare(pools: &[Arc<Pool>]) -> Result<Prepared, String> {
    let mut targets: HashMap<Target, Vec<Subscriber>> = HashMap::new();
    let mut order = Vec::new();
    for pool in pools {
        let probe = match &pool.health.check {
            Check::None => continue,
            Check::Tcp => Probe::Tcp,
            Check::Http(h) => Probe::Http(h.clone()),
            Check::Grpc(g) => Probe::Grpc(g.clone()),
            Check::Dns(d) => Probe::Dns(d.clone()),
            Check::Udp(u) => Probe::Udp(u.clone()),
        };
        for (index, b) in pool.backends.iter().enumerate() {
            let Some(address) = b.probe_address else {
                continue;
            };
            let probe = match &b.check {
                Some(own) => Probe::Http(own.clone()),
                None => probe.clone(),
            };
            // Only to the traffic port: a check port is another listener.
            let proxy = if Some(b.address) == b.probe_address {
                pool.probe_proxy
            } else {
                weir_config::ProxyVersion::Off
            };
            let target = Target {
                address,
                probe,
                proxy,
                interval: pool.health.interval,
                fast_interval: pool.health.fast_interval,
                timeout: pool.health.timeout,
            };
            let subs = targets.entry(target.clone()).or_default();
            if subs.is_empty() {
                order.push(target);
            }
            subs.push(Subscriber {
                pool: Arc::clone(pool),
                index,
            });
        }
    }
    let mut ready = Vec::with_capacity(order.len());
    for target in order {
        let prober =
            Prober::new(target.probe.clone(), target.address, target.proxy).map_err(|e| {
                let pool = targets
                    .get(&target)
                    .and_then(|s| s.first())
                    .map_or("?", |s| s.pool.name.as_str());
                format!("pool {pool:?}: {e}")
            })?;
        let subs = targets.remove(&target).unwrap_or_default();
        ready.push((target, prober, subs));
    }
    Ok(Prepared { ready })
}

impl Prepared {
    /// Makes `running` probe these targets: a target it already probes gets
    /// its new subscribers and prober and keeps its schedule (probing at once
    /// only when a subscriber has no answer yet), a new target gets a task
    /// that probes at once, and a target no longer listed is stopped.
    pub(crate) fn spawn(self, running: &Running) -> Checkers {
        let (tx, first_round) = mpsc::unbounded_channel();
        let mut tasks = lock(&running.tasks);
        let mut kept = HashMap::with_capacity(self.ready.len());
        let mut fresh = Vec::new();
        let mut now = 0;
        let mut longest_timeout = Duration::ZERO;
        for (target, prober, subs) in self.ready {
            let first = subs
                .iter()
                .any(|s| s.pool.unprobed(s.index))
                .then(|| tx.clone());
            let waits = first.is_some();
            let (prober, subs) = match tasks.remove(&target) {
                Some(handle) => match handle.update.send(Update {
                    prober,
                    subs,
                    first,
                }) {
                    Ok(()) => {
                        if waits {
                            now += 1;
                            // A probe it runs as the update comes is
                            // finished first.
                            longest_timeout = longest_timeout.max(target.timeout * 2);
                        }
                        kept.insert(target, handle);
                        continue;
                    }
                    // Its task ended (stopped): a new one takes over.
                    Err(e) => (e.0.prober, e.0.subs),
                },
                None => (prober, subs),
            };
            longest_timeout = longest_timeout.max(target.timeout);
            fresh.push((target, prober, subs));
        }
        // What is left is probed no more.
        for (_, handle) in tasks.drain() {
            handle.stop.cancel();
        }
        let spread = fresh.len();
        let last_start = start_offset(spread.saturating_sub(1), spread);
        let epoch = tokio::time::Instant::now();
        for (i, (target, prober, subs)) in fresh.into_iter().enumerate() {
            let when = Timing {
                epoch,
                offset: start_offset(i, spread),
            };
            let stop = running.stop.child_token();
            let (update, updates) = mpsc::unbounded_channel();
            let now = Arc::new(Notify::new());
            let task = Task {
                target: target.clone(),
                prober,
                subs,
                stop: stop.clone(),
                updates,
                now: Arc::clone(&now),
            };
            tokio::spawn(task.run(when, tx.clone()));
            kept.insert(target, Handle { stop, update, now });
        }
        *tasks = kept;
        Checkers {
            first_round,
            tasks: now + spread,
            longest_timeout,
            last_start,
        }
    }
}

impl Checkers {
    /// Waits until every target has had its first probe, at most the start
    /// window and one probe timeout (plus a little scheduling slack).
    pub(crate) async fn first_round(&mut self) {
        let deadline = tokio::time::Instant::now()
            + self.last_start
            + self.longest_timeout
            + Duration::from_millis(100);
        let mut seen = 0;
        while seen < self.tasks {
            match tokio::time::timeout_at(deadline, self.first_round.recv()).await {
                Ok(Some(())) => seen += 1,
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// How many targets were probed at once.
    pub(crate) fn tasks(&self) -> usize {
        self.tasks
    }
}

/// When a target's probes go out: the first `offset` after `epoch`, the
/// others on the grid that starts at `epoch`.
#[derive(Debug, Clone, Copy)]
struct Timing {
    epoch: tokio::time::Instant,
    offset: Duration,
}

/// One target's probe task.
struct Task {
    target: Target,
    prober: Prober,
    subs: Vec<Subscriber>,
    stop: CancellationToken,
    updates: mpsc::UnboundedReceiver<Update>,
    now: Arc<Notify>,
}

impl Task {
    async fn run(mut self, when: Timing, first: mpsc::UnboundedSender<()>) {
        let mut first = Some(first);
        let mut due = when.epoch + when.offset;
        loop {
            if !self.wait(due, &mut first).await {
                return;
            }
            if self.subs.iter().any(|s| s.pool.probe_wanted(s.index)) {
                let began = tokio::time::Instant::now();
                let report = tokio::select! {
                    () = self.stop.cancelled() => return,
                    r = self.prober.run(self.target.address, self.target.timeout) => r,
                };
                let took = began.elapsed();
                for s in &self.subs {
                    s.pool.on_probe(s.index, &report, took);
                }
            }
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            let changing = self
                .subs
                .iter()
                .any(|s| s.pool.backends.get(s.index).is_some_and(|b| b.changing()));
            let base = if changing {
                self.target.fast_interval
            } else {
                self.target.interval
            };
            due = on_grid(when.epoch, tokio::time::Instant::now() + jitter(base));
        }
    }

    /// Waits until `due`, taking a reload's updates meanwhile; sooner when
    /// one asks for a probe at once (its round's notice is put in `first`)
    /// or [`Running::probe_now`] does. False when the task is to end.
    async fn wait(
        &mut self,
        due: tokio::time::Instant,
        first: &mut Option<mpsc::UnboundedSender<()>>,
    ) -> bool {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep_until(due) => return true,
                () = self.now.notified() => return true,
                u = self.updates.recv() => {
                    let Some(u) = u else { return false };
                    let old = std::mem::replace(&mut self.prober, u.prober);
                    self.prober.adopt_connection(old);
                    self.subs = u.subs;
                    if u.first.is_some() {
                        *first = u.first;
                        return true;
                    }
                }
            }
        }
    }
}

/// `base` ±10%, so probes of many backends do not fire in lockstep.
fn jitter(base: Duration) -> Duration {
    let spread = base / 10;
    if spread.is_zero() {
        return base;
    }
    let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
    base - spread + Duration::from_nanos(fastrand::u64(0..=nanos.saturating_mul(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_probes_spread_evenly_over_a_bounded_window() {
        assert_eq!(start_offset(0, 1), Duration::ZERO);
        assert_eq!(start_offset(0, 10_000), Duration::ZERO);
        // 10,000 targets: 50 µs apart, the last one just under 0.5 s.
        assert_eq!(start_offset(1, 10_000), Duration::from_micros(50));
        assert_eq!(start_offset(9_999, 10_000), Duration::from_micros(499_950));
        // 100,000: the window stops at 2 s.
        assert_eq!(start_offset(50_000, 100_000), Duration::from_secs(1));
        assert!(start_offset(99_999, 100_000) < START_WINDOW);
        // Never decreasing.
        let offsets: Vec<Duration> = (0..1000).map(|i| start_offset(i, 1000)).collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn later_probes_fall_on_the_grid_never_early() {
        let epoch = tokio::time::Instant::now();
        let at = |ms: u64, us: u64| epoch + Duration::from_millis(ms) + Duration::from_micros(us);
        assert_eq!(on_grid(epoch, epoch), epoch);
        assert_eq!(on_grid(epoch, at(0, 1)), at(10, 0));
        assert_eq!(on_grid(epoch, at(1_000, 0)), at(1_000, 0));
        assert_eq!(on_grid(epoch, at(1_003, 500)), at(1_010, 0));
        for us in (0..100_000).step_by(997) {
            let due = at(0, us);
            let grid = on_grid(epoch, due);
            assert!(grid >= due && grid - due < TICK, "{us} µs");
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(2));
            assert!(
                d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200),
                "{d:?}"
            );
        }
        assert_eq!(jitter(Duration::from_nanos(5)), Duration::from_nanos(5));
    }
}
