//! The state file as the runtime uses it: operator actions are written (and
//! durable) before they are applied, transitions and tier changes are queued
//! to a writer thread that stores them in batches, and at start the file's
//! contents are turned back into admin states, weight overrides and histories.
//!
//! SQLite calls block, so they run on a blocking thread, never on a worker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_state::{Entry, Record, RuleRecord, Store, StoreError, TierRecord};

use crate::firewall::{Action, Rule};
use crate::health::{AdminState, Cause, Change, TierChange, Transition};
use crate::sync::lock;

/// Work for the writer thread.
#[derive(Debug)]
enum Job {
    /// (pool, backend, transition)
    Transition(String, String, Record),
    /// (pool, change)
    Tier(String, TierRecord),
    /// (pool, backend): everything stored about a backend that is gone.
    Forget(String, String),
    /// Answer once everything queued before is stored.
    Flush(mpsc::Sender<()>),
}

/// Where the journal sends what must be stored; never blocks.
#[derive(Debug, Clone)]
pub(crate) struct Queue(mpsc::Sender<Job>);

impl Queue {
    pub(crate) fn transition(&self, pool: &str, backend: &str, t: &Transition) {
        // The writer only stops at exit; a send error then loses nothing
        // anyone could still read.
        let _ = self.0.send(Job::Transition(
            pool.to_owned(),
            backend.to_owned(),
            record(t),
        ));
    }

    pub(crate) fn tier(&self, pool: &str, change: &TierChange) {
        let _ = self.0.send(Job::Tier(pool.to_owned(), tier_record(change)));
    }
}

/// Operator state read back from the state file for a backend that is new to
/// this process (at start, or added by a reload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    pub admin: Option<AdminState>,
    pub weight_override: Option<u32>,
    /// Oldest first.
    pub history: Vec<Transition>,
}

/// Everything the state file holds, as the pools apply it.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    pub(crate) backends: Vec<Entry>,
    pub(crate) tiers: BTreeMap<String, Vec<TierChange>>,
}

/// The open state file and its writer thread.
#[derive(Debug, Clone)]
pub(crate) struct Persistence {
    path: PathBuf,
    store: Arc<Mutex<Store>>,
    queue: mpsc::Sender<Job>,
}

impl Persistence {
    /// Opens (creating or migrating) the file and starts the writer; blocking.
    pub(crate) fn open(path: &Path, keep: usize) -> Result<Persistence, StoreError> {
        let store = Arc::new(Mutex::new(Store::open(path, keep)?));
        let (queue, rx) = mpsc::channel::<Job>();
        let for_writer = Arc::clone(&store);
        std::thread::Builder::new()
            .name("weir-state".to_owned())
            .spawn(move || write_loop(&for_writer, &rx))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        tracing::info!(path = %path.display(), "state file open");
        Ok(Persistence {
            path: path.to_path_buf(),
            store,
            queue,
        })
    }

    /// Where the journal sends transitions and tier changes.
    pub(crate) fn queue(&self) -> Queue {
        Queue(self.queue.clone())
    }

    /// Deletes what the file holds about a backend that left its pool for
    /// good (a runtime backend removed, a discovered one whose drain ended),
    /// after whatever was queued for it: a new backend at the same name
    /// later starts afresh, not with its predecessor's drain or weight, and
    /// the file does not grow with every address DNS ever gave.
    pub(crate) fn forget(&self, pool: &str, backend: &str) {
        let _ = self
            .queue
            .send(Job::Forget(pool.to_owned(), backend.to_owned()));
    }

    pub(crate) async fn load(&self) -> Result<Contents, StoreError> {
        let store = Arc::clone(&self.store);
        self.blocking(move || {
            let store = lock(&store);
            let backends = store.load()?;
            let tiers = store
                .load_tiers()?
                .into_iter()
                .map(|(pool, records)| (pool, records.iter().filter_map(tier_change).collect()))
                .collect();
            Ok(Contents { backends, tiers })
        })
        .await
    }

    pub(crate) async fn set_admin(
        &self,
        pool: &str,
        backend: &str,
        admin: AdminState,
    ) -> Result<(), StoreError> {
        let (store, pool, backend) = (Arc::clone(&self.store), pool.to_owned(), backend.to_owned());
        self.blocking(move || lock(&store).set_admin(&pool, &backend, admin.as_str()))
            .await
    }

    pub(crate) async fn set_weight(
        &self,
        pool: &str,
        backend: &str,
        weight: Option<u32>,
    ) -> Result<(), StoreError> {
        let (store, pool, backend) = (Arc::clone(&self.store), pool.to_owned(), backend.to_owned());
        self.blocking(move || lock(&store).set_weight(&pool, &backend, weight))
            .await
    }

    /// Stores a runtime firewall rule (replacing its network's).
    pub(crate) async fn put_rule(&self, rule: &Rule) -> Result<(), StoreError> {
        let (store, record) = (Arc::clone(&self.store), rule_record(rule));
        self.blocking(move || lock(&store).put_rule(&record)).await
    }

    /// Deletes the runtime firewall rule for `net`.
    pub(crate) async fn delete_rule(&self, net: ipnet::IpNet) -> Result<bool, StoreError> {
        let store = Arc::clone(&self.store);
        self.blocking(move || lock(&store).delete_rule(&net.to_string()))
            .await
    }

    /// Deletes the runtime firewall rules that have ended.
    pub(crate) async fn delete_ended_rules(&self) -> Result<usize, StoreError> {
        let store = Arc::clone(&self.store);
        self.blocking(move || lock(&store).delete_ended_rules(millis(SystemTime::now())))
            .await
    }

    /// The runtime firewall rules that have not ended (those that have are
    /// deleted). A row this version cannot read is skipped with a warning.
    pub(crate) async fn load_rules(&self) -> Result<Vec<Rule>, StoreError> {
        let store = Arc::clone(&self.store);
        let records = self
            .blocking(move || lock(&store).load_rules(millis(SystemTime::now())))
            .await?;
        Ok(records
            .iter()
            .filter_map(|r| {
                let rule = rule_of(r);
                if rule.is_none() {
                    tracing::warn!(network = %r.network, action = %r.action, "skipping a firewall rule of the state file this weir cannot read");
                }
                rule
            })
            .collect())
    }

    /// Stores a runtime backend (replacing one of its pool and name).
    pub(crate) async fn put_backend(
        &self,
        b: &crate::server::RuntimeBackend,
    ) -> Result<(), StoreError> {
        let record = weir_state::BackendRecord {
            pool: b.pool.clone(),
            name: b.name.clone(),
            address: b.address.to_string(),
            weight: b.weight,
            tier: b.tier,
            added_ms: millis(b.added),
        };
        let store = Arc::clone(&self.store);
        self.blocking(move || lock(&store).put_backend(&record))
            .await
    }

    /// Deletes a runtime backend.
    pub(crate) async fn delete_backend(&self, pool: &str, name: &str) -> Result<bool, StoreError> {
        let (store, pool, name) = (Arc::clone(&self.store), pool.to_owned(), name.to_owned());
        self.blocking(move || lock(&store).delete_backend(&pool, &name))
            .await
    }

    /// The runtime backends; a row this version cannot read, or that no
    /// API call could have stored (a name with control characters), is
    /// skipped with a warning.
    pub(crate) async fn load_backends(
        &self,
    ) -> Result<Vec<crate::server::RuntimeBackend>, StoreError> {
        let store = Arc::clone(&self.store);
        let records = self.blocking(move || lock(&store).load_backends()).await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match runtime_backend(&r) {
                Ok(b) => Some(b),
                Err(why) => {
                    // Debug, not Display: the names may be what is wrong.
                    tracing::warn!(pool = ?r.pool, backend = ?r.name, address = ?r.address, "skipping a runtime backend of the state file: {why}");
                    None
                }
            })
            .collect())
    }

    /// Waits (at most [`FLUSH_TIMEOUT`]) until everything queued so far is
    /// stored.
    pub(crate) async fn flush(&self) {
        let (done, answer) = mpsc::channel();
        if self.queue.send(Job::Flush(done)).is_err() {
            return;
        }
        let waited = tokio::task::spawn_blocking(move || answer.recv_timeout(FLUSH_TIMEOUT)).await;
        if !matches!(waited, Ok(Ok(()))) {
            tracing::warn!(
                "the state file writer did not finish in time; recent transitions may be missing from it"
            );
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
            Err(StoreError::Open {
                path: self.path.clone(),
                reason: format!("the call did not complete: {e}"),
            })
        })
    }
}

/// How long [`Persistence::flush`] waits for the writer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

fn write_loop(store: &Mutex<Store>, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut records = Vec::new();
        let mut tiers = Vec::new();
        let mut flushes = Vec::new();
        let mut forgets = Vec::new();
        for job in std::iter::once(first).chain(rx.try_iter()) {
            match job {
                Job::Transition(pool, backend, r) => records.push((pool, backend, r)),
                Job::Tier(pool, r) => tiers.push((pool, r)),
                Job::Flush(done) => flushes.push(done),
                Job::Forget(pool, backend) => forgets.push((pool, backend)),
            }
        }
        let store = lock(store);
        if let Err(e) = store.append_many(&records) {
            tracing::warn!(error = %e, lost = records.len(), "cannot write transitions to the state file");
        }
        if let Err(e) = store.append_tiers(&tiers) {
            tracing::warn!(error = %e, lost = tiers.len(), "cannot write tier changes to the state file");
        }
        // After the batch's transitions: a backend's last ones go with it.
        for (pool, backend) in &forgets {
            if let Err(e) = store.forget(pool, backend) {
                tracing::warn!(pool, backend, error = %e, "cannot delete a removed backend's state from the state file");
            }
        }
        drop(store);
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// A stored runtime backend as the server takes it back, checked as the
/// API checked it when it was added (the file may have been edited or
/// written by an older version).
fn runtime_backend(
    r: &weir_state::BackendRecord,
) -> Result<crate::server::RuntimeBackend, &'static str> {
    for name in [&r.pool, &r.name] {
        if let Some(problem) = weir_config::name_problem(name) {
            return Err(problem);
        }
    }
    let address = r
        .address
        .parse()
        .map_err(|_| "its address is not IP:port")?;
    Ok(crate::server::RuntimeBackend {
        pool: r.pool.clone(),
        name: r.name.clone(),
        address,
        weight: r.weight.min(weir_config::MAX_WEIGHT),
        tier: r.tier,
        added: UNIX_EPOCH + Duration::from_millis(u64::try_from(r.added_ms).unwrap_or(0)),
        leaving: None,
    })
}

/// A transition as the state file stores it.
fn record(t: &Transition) -> Record {
    let (kind, from, to) = t.change.parts();
    Record {
        at_ms: millis(t.at),
        kind: kind.to_owned(),
        from,
        to,
        cause: t.cause.to_string(),
    }
}

fn tier_record(t: &TierChange) -> TierRecord {
    TierRecord {
        at_ms: millis(t.at),
        from: TierChange::tier_text(t.from),
        to: TierChange::tier_text(t.to),
        cause: t.cause.clone(),
    }
}

/// A stored tier change; `None` for one this weir cannot read.
fn tier_change(r: &TierRecord) -> Option<TierChange> {
    Some(TierChange {
        at: from_millis(r.at_ms)?,
        from: TierChange::parse_tier(&r.from)?,
        to: TierChange::parse_tier(&r.to)?,
        cause: r.cause.clone(),
    })
}

/// What the state file holds for one backend, as the pool applies it.
/// Records this weir cannot read (written by a newer one) are skipped.
pub(crate) fn saved(e: &Entry) -> Saved {
    Saved {
        admin: e.admin.as_deref().and_then(AdminState::parse),
        // The file is outside input: an override weir would not have set
        // (the API refuses more than MAX_WEIGHT) is held to the largest one.
        weight_override: e.weight_override.map(|w| {
            if w > weir_config::MAX_WEIGHT {
                tracing::warn!(pool = %e.pool, backend = %e.backend, weight = w, max = weir_config::MAX_WEIGHT, "the state file's weight override is over the largest weight; using the largest");
            }
            w.min(weir_config::MAX_WEIGHT)
        }),
        history: e
            .history
            .iter()
            .filter_map(|r| {
                Some(Transition {
                    at: from_millis(r.at_ms)?,
                    change: Change::from_parts(&r.kind, &r.from, &r.to)?,
                    cause: Cause::parse(&r.cause),
                })
            })
            .collect(),
    }
}

fn from_millis(ms: i64) -> Option<SystemTime> {
    Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?))
}

/// Unix time in milliseconds (0 before 1970).
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn rule_record(r: &Rule) -> RuleRecord {
    RuleRecord {
        network: r.net.to_string(),
        action: r.action.as_str().to_owned(),
        until_ms: r.until.map(millis),
        reason: r.reason.clone(),
        added_ms: millis(r.added),
    }
}

fn rule_of(r: &RuleRecord) -> Option<Rule> {
    Some(Rule {
        net: r.network.parse().ok()?,
        action: Action::parse(&r.action)?,
        until: r.until_ms.map(|ms| from_millis(ms).unwrap_or(UNIX_EPOCH)),
        reason: r.reason.clone(),
        added: from_millis(r.added_ms).unwrap_or(UNIX_EPOCH),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weight override beyond what the API lets one set (a file edited
    /// by hand, or damaged) is held to the largest weight.
    #[test]
    fn a_saved_weight_override_is_held_to_the_largest_weight() {
        let entry = |w| Entry {
            pool: "p".into(),
            backend: "b".into(),
            admin: None,
            weight_override: Some(w),
            history: Vec::new(),
        };
        assert_eq!(saved(&entry(7)).weight_override, Some(7));
        assert_eq!(
            saved(&entry(4_000_000_000)).weight_override,
            Some(weir_config::MAX_WEIGHT)
        );
    }

    /// A stored runtime backend is checked as the API checked it: a name
    /// with control characters (which would make every header naming the
    /// backend drop out) or an address that is not `IP:port` is refused.
    #[test]
    fn stored_runtime_backends_are_checked_again() {
        let record = |pool: &str, name: &str, address: &str| weir_state::BackendRecord {
            pool: pool.into(),
            name: name.into(),
            address: address.into(),
            weight: 4_000_000_000,
            tier: 1,
            added_ms: 5_000,
        };
        let b = runtime_backend(&record("p", "web-3", "127.0.0.1:80")).expect("fine");
        assert_eq!((b.pool.as_str(), b.name.as_str()), ("p", "web-3"));
        assert_eq!(b.weight, weir_config::MAX_WEIGHT);
        assert_eq!(b.added, UNIX_EPOCH + Duration::from_secs(5));
        assert!(runtime_backend(&record("p", "web\n3", "127.0.0.1:80")).is_err());
        assert!(runtime_backend(&record("p\u{7f}", "web-3", "127.0.0.1:80")).is_err());
        assert!(runtime_backend(&record("p", "web-3", "web:80")).is_err());
    }
}
