//! Reloads: read the file again, build a complete new snapshot beside the
//! running one, and switch over at once; on any error nothing changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use weir_config::{Config, Discover};

use super::backends::Origin;
use super::build::Staged;
use super::sockets::{CLOSE_WAIT, Runners};
use super::{Inputs, LastReload, ReloadError, Reloaded, Server, Snapshot, StartError, lock};
use crate::discovery::plan::Delta;
use crate::events::Event;
use crate::health::{Cause, Change};
use crate::listener::{Listener, Mode};
use crate::pool::Pool;
use crate::statefile;

impl Server {
    /// Reads the config file again and applies it. On any error nothing
    /// changes, and the error says why.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, ReloadError> {
        self.reload_in_turn(false).await
    }

    /// [`Server::reload`] asked by an operator through the control API:
    /// refused, like every operator change, when a new version started to
    /// take over while it waited for its turn.
    pub async fn reload_asked(self: &Arc<Self>) -> Result<Reloaded, ReloadError> {
        self.reload_in_turn(true).await
    }

    async fn reload_in_turn(self: &Arc<Self>, asked: bool) -> Result<Reloaded, ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoFile)?;
        // The file is read in turn: a reload asked while another waits for
        // its first probes reads the file as it is once that one is done,
        // and its outcome (a broken file written meanwhile) is the last
        // recorded, not overwritten by the earlier one's.
        let one = self.control.lock().await;
        if asked && self.changes_refused().is_some() && self.is_ready() {
            return Err(ReloadError::SuccessorStarting);
        }
        let loaded = tokio::task::spawn_blocking(move || weir_config::load_file(&path))
            .await
            .map_err(|e| {
                ReloadError::Start(StartError::Task("reading the config file", e.to_string()))
            })?;
        match loaded {
            Ok(config) => self.apply_in_turn(config, one).await,
            Err(e) => Err(self.reload_failed(ReloadError::Config(e))),
        }
    }

    /// Applies `config` as a reload.
    pub async fn apply(self: &Arc<Self>, config: Config) -> Result<Reloaded, ReloadError> {
        let one = self.control.lock().await;
        self.apply_in_turn(config, one).await
    }

    /// [`Server::apply`], the turn of changes (`control`) taken.
    async fn apply_in_turn(
        self: &Arc<Self>,
        config: Config,
        _one: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<Reloaded, ReloadError> {
        if !self.is_ready() {
            return Err(self.reload_failed(ReloadError::ShuttingDown));
        }
        // The admin endpoints keep the addresses and `insecure` they started
        // with; the token a reload brings must still guard them.
        let started = &self.started.admin;
        if config.admin.token.is_none()
            && !started.insecure
            && let Some(addr) = [started.http, started.grpc]
                .into_iter()
                .flatten()
                .find(|a| !a.ip().is_loopback())
        {
            return Err(self.reload_failed(ReloadError::Unguarded(addr)));
        }
        // Nor may a listener take their addresses: both sockets would bind
        // (SO_REUSEPORT) and the kernel split the connections between them.
        if let Some((path, addr)) = [started.http, started.grpc]
            .into_iter()
            .flatten()
            .find_map(|a| weir_config::bind_meeting(a, &config.listeners).map(|p| (p, a)))
        {
            return Err(self.reload_failed(ReloadError::AdminAddress { path, addr }));
        }
        let old = self.current.load_full();
        let mut diff = weir_config::diff(&old.source, &config);
        // Against the start, not the last reload: a setting read only at
        // start is named by every reload until a restart applies it.
        diff.need_restart = weir_config::need_restart(&self.started, &config);
        // A pool that starts discovering is resolved now; the others keep
        // what they found. Applied only once the rest is staged.
        let plan = match self.discovery.plan(&config).await {
            Ok(plan) => plan,
            Err(e) => return Err(self.reload_failed(StartError::Discovery(e).into())),
        };
        let effective = self.effective(&config, &plan);
        let shadowed = self.shadowed(&config);
        let answered = self.discovery.answered(&config, &plan);
        let mut inputs = match self.inputs(&effective, &answered, None).await {
            Ok(inputs) => inputs,
            Err(e) => return Err(self.reload_failed(e.into())),
        };
        inputs.leaving = self.leaving(&config, &plan);
        let staged = match self.stage(&effective, Some(&old), inputs, true) {
            Ok(staged) => staged,
            Err(e) => return Err(self.reload_failed(e.into())),
        };
        let Some(generation) = self
            .commit(config, effective, staged, Some(&old), true)
            .await
        else {
            return Err(self.reload_failed(ReloadError::ShuttingDown));
        };
        let (tasks, asked_anew) = self.discovery.commit(plan);
        // A pool that asks DNS another question keeps its set until the
        // answer replaces it: what the first answer changed is its story.
        for a in &asked_anew {
            let deltas = self.discovered_only(&a.pool, &a.changed);
            self.note_removed(old.pool(&a.pool), &a.spec, &deltas);
            self.note_taken(&a.pool, &a.spec, &deltas);
            if !deltas.is_empty() {
                log_changes(&a.pool, &deltas);
            }
        }
        crate::discovery::spawn(self, tasks);
        self.reloads.succeeded.fetch_add(1, Ordering::Relaxed);
        self.reloads.last_failed.store(false, Ordering::Relaxed);
        let at = SystemTime::now();
        *lock(&self.last_reload) = Some(LastReload { at, error: None });
        tracing::info!(
            generation,
            added = ?diff.added,
            removed = ?diff.removed,
            changed = ?diff.changed,
            "config reloaded"
        );
        for b in &shadowed {
            tracing::warn!(backend = %b, "a runtime backend is shadowed by the new config and not applied");
        }
        if !diff.need_restart.is_empty() {
            tracing::warn!(sections = ?diff.need_restart, "changes to these sections take effect at the next start");
        }
        self.journal.send(Event::Reload {
            at,
            generation,
            error: None,
        });
        Ok(Reloaded {
            generation,
            diff,
            shadowed,
        })
    }

    /// Rebuilds the snapshot after DNS changed `pool`'s discovered
    /// backends: the running file config plus the new sets, built and
    /// switched like a reload (new backends probed before they serve), in
    /// the same config generation. Each change goes into the history of the
    /// backend it touches. False when the pool could not be rebuilt (it
    /// runs as it was; the caller tries again).
    pub(crate) async fn rediscover(
        &self,
        pool: &str,
        spec: &Discover,
        deltas: &[Delta],
        task: &tokio_util::sync::CancellationToken,
    ) -> bool {
        let _one = self.control.lock().await;
        if !self.is_ready() {
            return true;
        }
        // A reload replaced the task that found these changes while it
        // waited, and the pool now asks another question (or none): the
        // changes answer a question no longer asked, and the reload built
        // the pool from the set that replaced them.
        if task.is_cancelled() && !self.discovery.asks(pool, &spec.query) {
            return true;
        }
        let deltas = self.discovered_only(pool, deltas);
        // A removed backend's last word goes to its pool before it leaves;
        // the others' to the new pool.
        self.note_removed(self.pool(pool).as_ref(), spec, &deltas);
        match self.rebuild_running().await {
            Ok(()) => {}
            // Stopping: nothing to retry.
            Err(StartError::Stopping) => return true,
            Err(e) => {
                tracing::error!(pool, error = %e, "discovery: the pool could not be rebuilt; it runs as it was until a retry succeeds");
                return false;
            }
        }
        self.note_taken(pool, spec, &deltas);
        log_changes(pool, &deltas);
        true
    }

    /// What DNS says of an address that a backend of the file or of `weir
    /// backend add` already stands at is not that backend's story: it
    /// serves whatever DNS says, and its saved state (an operator's
    /// disable, a weight) outlives DNS dropping the address.
    fn discovered_only<'d>(&self, pool: &str, deltas: &'d [Delta]) -> Vec<&'d Delta> {
        let origins = self.origins(pool);
        deltas
            .iter()
            .filter(|d| origins.of(&d.addr().to_string()) == Origin::Discovery)
            .collect()
    }

    /// Notes each removed backend's last change in `pool`, the generation
    /// that still has it.
    fn note_removed(&self, pool: Option<&Arc<Pool>>, spec: &Discover, deltas: &[&Delta]) {
        let Some(p) = pool else { return };
        for d in deltas.iter().filter(|d| matches!(d, Delta::Removed { .. })) {
            p.note(
                &d.addr().to_string(),
                discovery_change(d),
                discovery_cause(spec),
            );
        }
    }

    /// Once the pool serves with `deltas` applied: the removed backends'
    /// saved state is forgotten, and each other change goes into the
    /// history of its backend.
    fn note_taken(&self, pool: &str, spec: &Discover, deltas: &[&Delta]) {
        if let Some(p) = &self.persistence {
            for d in deltas.iter().filter(|d| matches!(d, Delta::Removed { .. })) {
                p.forget(pool, &d.addr().to_string());
            }
        }
        if let Some(p) = self.pool(pool) {
            for d in deltas
                .iter()
                .filter(|d| !matches!(d, Delta::Removed { .. }))
            {
                p.note(
                    &d.addr().to_string(),
                    discovery_change(d),
                    discovery_cause(spec),
                );
            }
        }
    }

    /// Builds and switches to the running file config with the current
    /// runtime and discovered backends, in the same generation. The caller
    /// holds the control lock.
    pub(super) async fn rebuild_running(&self) -> Result<(), StartError> {
        let old = self.current.load_full();
        let source = (*old.source).clone();
        let plan = crate::discovery::Plan::default();
        let config = self.effective(&source, &plan);
        let mut inputs = self
            .inputs(
                &config,
                &self.discovery.answered(&source, &plan),
                Some(&old),
            )
            .await?;
        inputs.leaving = self.leaving(&source, &plan);
        let staged = self.stage(&config, Some(&old), inputs, false)?;
        self.commit(source, config, staged, Some(&old), false)
            .await
            .map(drop)
            .ok_or(StartError::Stopping)
    }

    fn reload_failed(&self, e: ReloadError) -> ReloadError {
        self.reloads.failed.fetch_add(1, Ordering::Relaxed);
        self.reloads.last_failed.store(true, Ordering::Relaxed);
        let at = SystemTime::now();
        let error = e.to_string();
        tracing::error!(error = %error, "reload failed; the running config is unchanged");
        *lock(&self.last_reload) = Some(LastReload {
            at,
            error: Some(error.clone()),
        });
        self.journal.send(Event::Reload {
            at,
            generation: self.generation(),
            error: Some(error),
        });
        e
    }

    /// Step 1 after validation: resolves backend names, reads the state file
    /// for the backends and pools of `config`, and notes (and logs) what it
    /// holds for backends `config` does not have. `answered`: the pools
    /// whose discovered backends in `config` are all DNS gives now.
    /// `keep`: the snapshot whose resolved names a rebuild keeps (names are
    /// looked up at start and reload only).
    pub(super) async fn inputs(
        &self,
        config: &Config,
        answered: &std::collections::HashSet<String>,
        keep: Option<&Snapshot>,
    ) -> Result<Inputs, StartError> {
        let known = |pool: &str, backend: &str| {
            keep.and_then(|s| s.pool(pool))
                .and_then(|p| p.backend(backend))
                .map(|b| b.address)
        };
        let resolved = crate::resolve::backends_knowing(config, &known)
            .await
            .map_err(StartError::Resolve)?;
        let Some(p) = &self.persistence else {
            return Ok(Inputs {
                resolved,
                ..Inputs::default()
            });
        };
        let contents = match p.load().await {
            Ok(contents) => contents,
            // Once running (a reload, a DNS change, a runtime backend), the
            // running backends keep their state without the file; a file
            // that cannot be read (corrupt, an I/O error) must not stop
            // every change. At the start it does: what it holds would be
            // lost without a word.
            Err(e) if self.current.load().generation > 0 => {
                tracing::warn!(error = %e, "the state file cannot be read: running backends keep their state, new ones start as the config says");
                statefile::Contents::default()
            }
            Err(e) => return Err(e.into()),
        };
        let mut saved = HashMap::new();
        let mut orphans = Vec::new();
        let mut gone = Vec::new();
        for e in contents.backends {
            let known = config
                .pools
                .iter()
                .any(|p| p.name == e.pool && p.backends.iter().any(|b| b.name == e.backend));
            if known {
                saved.insert((e.pool.clone(), e.backend.clone()), statefile::saved(&e));
            } else if left_during_its_drain(&e) {
                // A runtime or discovered backend that was leaving when a
                // restart or reload cut its drain short: it is gone for good,
                // and what the file holds of it would pass to the next
                // backend of its name. Forgotten once this config serves (a
                // reload that fails later changes nothing).
                gone.push((e.pool, e.backend, "it left while it drained"));
            } else if gone_from_dns(&e, config, answered) {
                // A discovered address DNS no longer gives (it went while
                // weir was stopped), or of a pool that no longer discovers:
                // else the file kept every address a rolling deploy ever
                // had. Not while DNS has not answered since the start: an
                // unreachable server says nothing about the addresses.
                gone.push((e.pool, e.backend, "DNS no longer gives it"));
            } else {
                if e.admin.is_some() || e.weight_override.is_some() {
                    tracing::warn!(
                        pool = %e.pool,
                        backend = %e.backend,
                        admin = e.admin.as_deref().unwrap_or("-"),
                        weight = ?e.weight_override,
                        "the state file has operator state for a backend that is not in the config; kept, not applied"
                    );
                }
                orphans.push(e);
            }
        }
        Ok(Inputs {
            saved,
            tiers: contents.tiers,
            resolved,
            orphans: Some(orphans),
            gone,
            leaving: std::collections::HashSet::new(),
        })
    }

    /// Step 3: switch over, once the first probe round is done. Cannot fail;
    /// `None` when the stop began meanwhile (nothing switched).
    pub(super) async fn commit(
        &self,
        source: Config,
        config: Config,
        staged: Staged,
        old: Option<&Snapshot>,
        new_generation: bool,
    ) -> Option<u64> {
        let Staged {
            pools,
            listeners,
            probes,
            fresh,
            orphans,
            gone,
        } = staged;
        // Nothing of the new pools touched what they share with the running
        // ones while staging could still fail; from here the switch is on.
        for pool in &pools {
            pool.activate();
        }
        // Probe what no probe has answered for yet at once, and switch only
        // when that round is done (bounded by one probe timeout): a start
        // never sends traffic to a backend known to be down, and a backend
        // added by a reload serves once its first probe passes. Targets the
        // running config probes already keep their schedule.
        let mut checkers = probes.spawn(&self.probes);
        checkers.first_round().await;
        if !self.is_ready() {
            // The stop began during the probe round: nothing switches, and
            // the probes end with the stop. (What the activation above set
            // on pools it shares with the old one stays.)
            return None;
        }
        if let Some(orphans) = orphans {
            *lock(&self.orphans) = orphans;
        }
        if let Some(p) = &self.persistence {
            for (pool, backend, why) in gone {
                tracing::info!(
                    pool,
                    backend,
                    why,
                    "forgetting the saved state of a backend gone for good"
                );
                p.forget(&pool, &backend);
            }
        }
        for pool in &pools {
            pool.settle();
        }
        tracing::debug!(probes = checkers.tasks(), "first health round done");
        for listener in &listeners {
            listener.activate(config.log.refusals_per_second);
        }

        let switched = lock(&self.sockets).switch(
            &config,
            &listeners,
            fresh,
            &Runners {
                stop_accepting: &self.stop_accepting,
                accept_tasks: &self.accept_tasks,
                connections: &self.connections,
            },
        );
        // Open UDP flows look at the new lists at their next datagram, once
        // their sockets hand them the new listeners.
        self.firewall_rules.lists_changed();
        // When a reload returns, removed addresses refuse connections.
        for closed in switched.closing {
            let _ = tokio::time::timeout(CLOSE_WAIT, closed.cancelled()).await;
        }
        if let Some(old) = old {
            for gone in old
                .listeners
                .iter()
                .filter(|o| !listeners.iter().any(|n| n.name == o.name))
            {
                self.retire(gone);
            }
        }
        let generation = match old {
            None => 1,
            Some(o) if new_generation => o.generation + 1,
            Some(o) => o.generation,
        };
        http_handover(old, &listeners);
        if let Some(http) = &self.http {
            http.commit(&config);
        }
        let new = Arc::new(Snapshot {
            generation,
            config: Arc::new(config),
            source: Arc::new(source),
            listeners,
            pools,
            bound: switched.bound,
        });
        self.current.store(Arc::clone(&new));
        if !self.ready.load(Ordering::SeqCst) {
            // The stop began after the probe round, on the old snapshot.
            self.stop_snapshot(&new);
        }
        Some(generation)
    }
}

/// Tells the l7 handlers of the new snapshot that it runs, and those of the
/// routes it no longer has (or no longer serves as HTTP, or serves under
/// other terms for its clients) that they retire.
fn http_handover(old: Option<&Snapshot>, listeners: &[Arc<Listener>]) {
    fn l7(l: &Listener) -> impl Iterator<Item = (&str, &Arc<dyn crate::l7::HttpHandler>)> {
        l.routes.iter().filter_map(|r| match &r.mode {
            Mode::L7(l7) => Some((r.name.as_str(), &l7.handler)),
            Mode::L4(_) => None,
        })
    }
    for l in listeners {
        for (_, handler) in l7(l) {
            handler.activate(l);
        }
    }
    let Some(old) = old else {
        return;
    };
    for l in &old.listeners {
        let kept = listeners.iter().find(|n| n.name == l.name);
        for (route, handler) in l7(l) {
            let carried = kept
                .and_then(|n| l7(n).find(|(name, _)| *name == route))
                .is_some_and(|(_, next)| next.carries_on(handler.as_ref()));
            if !carried {
                handler.retire();
            }
        }
    }
}

/// Whether a backend's last word in its saved history, as a runtime or
/// discovered backend, was that it started to drain out of its pool.
fn left_during_its_drain(e: &weir_state::Entry) -> bool {
    e.history
        .iter()
        .rev()
        .find(|r| r.kind == "runtime" || r.kind == "discovery")
        .is_some_and(|r| r.to == "draining")
}

/// Whether the saved backend `e`, which `config` does not have, was a
/// discovered one that DNS no longer gives: its pool discovers and DNS has
/// answered it (`answered`) without the address, or the pool no longer
/// discovers. Its history's last word as a runtime or discovered backend
/// says which it was; without one (discovered when the process started,
/// which notes no change), a name that is an address in a discovering pool
/// is taken for a discovered one: a file backend named by its address that
/// left the file is then forgotten too, as it would be had DNS dropped it.
fn gone_from_dns(
    e: &weir_state::Entry,
    config: &Config,
    answered: &std::collections::HashSet<String>,
) -> bool {
    let Some(pool) = config.pools.iter().find(|p| p.name == e.pool) else {
        return false;
    };
    let last = e
        .history
        .iter()
        .rev()
        .find(|r| r.kind == "runtime" || r.kind == "discovery");
    match last.map(|r| r.kind.as_str()) {
        Some("discovery") => pool.discover.is_none() || answered.contains(&pool.name),
        Some(_) => false,
        None => {
            pool.discover.is_some()
                && answered.contains(&pool.name)
                && e.backend.parse::<std::net::SocketAddr>().is_ok()
        }
    }
}

/// A discovery delta as a history entry: what the backend was and is in DNS.
fn discovery_change(d: &Delta) -> Change {
    let member = |(tier, weight): (u32, u32)| format!("tier {tier} weight {weight}");
    let (from, to) = match *d {
        Delta::Added { tier, weight, .. } => ("absent".to_owned(), member((tier, weight))),
        Delta::Changed { from, to, .. } => (member(from), member(to)),
        Delta::Leaving { .. } => ("present".to_owned(), "draining".to_owned()),
        Delta::Returned { .. } => ("draining".to_owned(), "present".to_owned()),
        Delta::Removed { .. } => ("draining".to_owned(), "removed".to_owned()),
    };
    Change::Discovery { from, to }
}

fn discovery_cause(spec: &Discover) -> Cause {
    Cause::Discovery(spec.query.to_string())
}

fn log_changes(pool: &str, deltas: &[&Delta]) {
    tracing::info!(
        pool,
        changes = ?deltas.iter().map(|d| describe(d)).collect::<Vec<_>>(),
        "discovery changed the pool's backends"
    );
}

fn describe(d: &Delta) -> String {
    let (_, from, to) = discovery_change(d).parts();
    format!("{}: {from} -> {to}", d.addr())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn entry(pool: &str, backend: &str, kinds: &[&str]) -> weir_state::Entry {
        weir_state::Entry {
            pool: pool.into(),
            backend: backend.into(),
            admin: Some("disabled".into()),
            weight_override: None,
            history: kinds
                .iter()
                .map(|k| weir_state::Record {
                    at_ms: 0,
                    kind: (*k).into(),
                    from: "a".into(),
                    to: "b".into(),
                    cause: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn saved_state_is_gone_from_dns_only_once_dns_answered_without_it() {
        let config = weir_config::load_str(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"dns\"\n\
             [[pools]]\nname = \"dns\"\ndiscover = { srv = \"_a._tcp.x.test\" }\n\
             [[pools]]\nname = \"file\"\n[[pools.backends]]\naddress = \"10.0.0.1:80\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let answered: HashSet<String> = ["dns".to_owned()].into();
        let none = HashSet::new();
        let gone = |e: &weir_state::Entry, a: &HashSet<String>| gone_from_dns(e, &config, a);
        let addr = "10.0.0.9:80";
        // Discovered at the start (no history of it) or later: gone once
        // DNS answered, not while it has not.
        for kinds in [&["health", "admin"][..], &["discovery", "health"]] {
            assert!(gone(&entry("dns", addr, kinds), &answered), "{kinds:?}");
            assert!(!gone(&entry("dns", addr, kinds), &none), "{kinds:?}");
        }
        // A runtime backend's state is its own (forgotten when removed).
        assert!(!gone(
            &entry("dns", addr, &["discovery", "runtime"]),
            &answered
        ));
        // A name that is no address was never DNS's.
        assert!(!gone(&entry("dns", "db-1", &["health"]), &answered));
        // A pool that no longer discovers: its discovered backends only.
        assert!(gone(&entry("file", addr, &["discovery"]), &none));
        assert!(!gone(&entry("file", addr, &["admin"]), &none));
        // A pool the config does not have keeps everything.
        assert!(!gone(&entry("old", addr, &["discovery"]), &answered));
    }
}
