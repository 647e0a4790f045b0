//! The state file as the runtime uses it: operator actions are written (and
//! durable) before they are applied, transitions are queued to a writer
//! thread that stores them in batches, and at start the file's contents are
//! turned back into admin states, weight overrides and histories.
//!
//! SQLite calls block, so they run on a blocking thread, never on a worker.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_state::{Entry, Record, Store, StoreError};

use crate::health::state::{Admin, Cause, Change, Transition};
use crate::pool::Saved;

/// Work for the writer thread.
#[derive(Debug)]
pub(crate) enum Job {
    /// (pool, backend, transition)
    Transition(String, String, Transition),
    /// Answer once everything queued before is stored.
    Flush(mpsc::Sender<()>),
}

/// The open state file and its writer thread.
#[derive(Debug)]
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

    /// Where the journal sends transitions.
    pub(crate) fn queue(&self) -> mpsc::Sender<Job> {
        self.queue.clone()
    }

    pub(crate) async fn load(&self) -> Result<Vec<Entry>, StoreError> {
        let store = Arc::clone(&self.store);
        self.blocking(move || lock(&store).load()).await
    }

    pub(crate) async fn set_admin(
        &self,
        pool: &str,
        backend: &str,
        admin: Admin,
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

    /// Waits (at most [`FLUSH_TIMEOUT`]) until every transition queued so far
    /// is stored.
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
        let mut flushes = Vec::new();
        for job in std::iter::once(first).chain(rx.try_iter()) {
            match job {
                Job::Transition(pool, backend, t) => records.push((pool, backend, record(&t))),
                Job::Flush(done) => flushes.push(done),
            }
        }
        if !records.is_empty()
            && let Err(e) = lock(store).append_many(&records)
        {
            tracing::warn!(error = %e, lost = records.len(), "cannot write transitions to the state file");
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// A transition as the state file stores it.
pub(crate) fn record(t: &Transition) -> Record {
    let (kind, from, to) = t.change.parts();
    Record {
        at_ms: millis(t.at),
        kind: kind.to_owned(),
        from,
        to,
        cause: t.cause.to_string(),
    }
}

/// What the state file holds for one backend, as the pool applies it.
/// Records this weir cannot read (written by a newer one) are skipped.
pub(crate) fn saved(e: &Entry) -> Saved {
    Saved {
        admin: e.admin.as_deref().and_then(Admin::parse),
        weight_override: e.weight_override,
        history: e
            .history
            .iter()
            .filter_map(|r| {
                Some(Transition {
                    at: UNIX_EPOCH + Duration::from_millis(u64::try_from(r.at_ms).ok()?),
                    change: Change::from_parts(&r.kind, &r.from, &r.to)?,
                    cause: Cause::parse(&r.cause),
                })
            })
            .collect(),
    }
}

/// Unix time in milliseconds (0 before 1970).
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
