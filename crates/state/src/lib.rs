//! weir's persistent runtime state, in one SQLite file. For each backend,
//! keyed by pool and backend name, it keeps what the operator decided (the
//! admin state `enabled`, `drain` or `disabled`, and a weight override) and the
//! last few state transitions (health, admin, weight), so a restart comes back
//! as the operator left it. During a zero-downtime upgrade the old and the new
//! weir process have the same file open, so the database runs in WAL mode
//! (readers never wait for the writer), every call is one short transaction
//! and no lock is held between calls; a writer waits up to one second for the
//! other process. Writes use `synchronous=FULL`: when a call returns the change
//! is on disk, so the caller may acknowledge the operator's action. The API is
//! blocking and not thread-safe on its own; callers share a [`Store`] behind a
//! mutex.

mod error;
mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

pub use error::StoreError;
use error::classify;

/// The admin states [`Store::set_admin`] accepts.
pub const ADMIN_STATES: [&str; 3] = ["enabled", "drain", "disabled"];

/// How long a call waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// One state transition of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// `"health"`, `"admin"` or `"weight"`.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub cause: String,
}

/// One change of a pool's active tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRecord {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// A tier number, or `"none"` when no tier could serve.
    pub from: String,
    pub to: String,
    pub cause: String,
}

/// A firewall rule added at runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    /// An address or a CIDR, as the rule names it.
    pub network: String,
    /// `"deny"` or `"allow"`.
    pub action: String,
    /// Unix time in milliseconds when it ends; `None`: never.
    pub until_ms: Option<i64>,
    pub reason: String,
    pub added_ms: i64,
}

/// A backend an operator added at runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRecord {
    pub pool: String,
    pub name: String,
    /// `IP:port`.
    pub address: String,
    pub weight: u32,
    pub tier: u32,
    pub added_ms: i64,
}

/// Everything stored about one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub pool: String,
    pub backend: String,
    /// `None`: never set.
    pub admin: Option<String>,
    /// `None`: no override (never set, or cleared).
    pub weight_override: Option<u32>,
    /// Oldest first, at most `keep` records.
    pub history: Vec<Record>,
}

/// An open state database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    keep: usize,
    path: PathBuf,
}

impl Store {
    /// Opens the state database at `path`, creating the file (not its
    /// directory) if missing, and brings its schema up to date. Keeps the
    /// newest `keep` transitions per backend.
    ///
    /// Fails without writing anything if the file is not an SQLite database,
    /// is damaged, belongs to another program or was written by a newer weir;
    /// fails if it cannot be written or another process keeps it locked.
    pub fn open(path: &Path, keep: usize) -> Result<Store, StoreError> {
        check_location(path)?;
        // No URI flag: the path is a file name, even if it starts with "file:".
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let err = |e| classify(path, e);
        let mut conn = Connection::open_with_flags(path, flags).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // Migrations run as BEGIN IMMEDIATE so two processes migrating at once
        // queue up instead of failing to upgrade a read lock.
        conn.set_transaction_behavior(TransactionBehavior::Immediate);

        // Everything up to the migrations only reads, so a file that is
        // refused here is left as it was.
        schema::check_before_migrating(&conn, path)?;
        quick_check(&conn, path)?;

        enable_wal(&conn, path)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;

        schema::migrate(&mut conn, path)?;

        // Prove that this process can take the write lock now rather than at
        // the first operator action.
        conn.execute_batch("BEGIN IMMEDIATE; COMMIT").map_err(err)?;

        Ok(Store {
            conn,
            keep,
            path: path.to_path_buf(),
        })
    }

    /// The file this store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every backend that has an admin state, a weight override or any
    /// history, sorted by (pool, backend).
    pub fn load(&self) -> Result<Vec<Entry>, StoreError> {
        // One read transaction so both queries see the same snapshot.
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Deferred)
            .map_err(|e| self.err(e))?;
        let entries = load_in(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(entries)
    }

    /// Records the operator's admin state for a backend: `"enabled"`,
    /// `"drain"` or `"disabled"`; anything else is
    /// [`StoreError::InvalidAdmin`].
    pub fn set_admin(&self, pool: &str, backend: &str, admin: &str) -> Result<(), StoreError> {
        if !ADMIN_STATES.contains(&admin) {
            return Err(StoreError::InvalidAdmin {
                pool: pool.to_owned(),
                backend: backend.to_owned(),
                value: admin.to_owned(),
            });
        }
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO backend_state (pool, backend, admin) VALUES (?1, ?2, ?3)
                 ON CONFLICT (pool, backend) DO UPDATE SET admin = excluded.admin",
            )?
            .execute(params![pool, backend, admin])?;
            Ok(())
        })
    }

    /// Records the operator's weight override for a backend; `None` clears it.
    pub fn set_weight(
        &self,
        pool: &str,
        backend: &str,
        weight: Option<u32>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            match weight {
                Some(w) => {
                    tx.prepare_cached(
                        "INSERT INTO backend_state (pool, backend, weight_override)
                         VALUES (?1, ?2, ?3)
                         ON CONFLICT (pool, backend)
                         DO UPDATE SET weight_override = excluded.weight_override",
                    )?
                    .execute(params![pool, backend, w])?;
                }
                None => {
                    tx.prepare_cached(
                        "UPDATE backend_state SET weight_override = NULL
                         WHERE pool = ?1 AND backend = ?2",
                    )?
                    .execute(params![pool, backend])?;
                    // A row with nothing left in it would make the backend
                    // show up in `load` with no state at all.
                    tx.prepare_cached(
                        "DELETE FROM backend_state WHERE pool = ?1 AND backend = ?2
                         AND admin IS NULL AND weight_override IS NULL",
                    )?
                    .execute(params![pool, backend])?;
                }
            }
            Ok(())
        })
    }

    /// Appends transitions of one backend in one transaction, then drops all
    /// but its newest `keep`.
    pub fn append(&self, pool: &str, backend: &str, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            for r in records {
                insert_record(tx, pool, backend, r)?;
            }
            prune(tx, pool, backend, self.keep)
        })
    }

    /// Appends transitions of any number of backends, given as (pool,
    /// backend, record), in one transaction; each backend keeps its newest
    /// `keep`.
    pub fn append_many(&self, batch: &[(String, String, Record)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut touched = BTreeSet::new();
            for (pool, backend, r) in batch {
                insert_record(tx, pool, backend, r)?;
                touched.insert((pool.as_str(), backend.as_str()));
            }
            for (pool, backend) in touched {
                prune(tx, pool, backend, self.keep)?;
            }
            Ok(())
        })
    }

    /// Appends changes of pools' active tiers, given as (pool, record), in
    /// one transaction; each pool keeps its newest `keep`.
    pub fn append_tiers(&self, batch: &[(String, TierRecord)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut touched = BTreeSet::new();
            for (pool, r) in batch {
                tx.prepare_cached(
                    "INSERT INTO tier_change (pool, at_ms, from_tier, to_tier, cause)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![pool, r.at_ms, r.from, r.to, r.cause])?;
                touched.insert(pool.as_str());
            }
            for pool in touched {
                prune_tiers(tx, pool, self.keep)?;
            }
            Ok(())
        })
    }

    /// Every pool's tier changes, oldest first, by pool name.
    pub fn load_tiers(&self) -> Result<BTreeMap<String, Vec<TierRecord>>, StoreError> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Deferred)
            .map_err(|e| self.err(e))?;
        let tiers = load_tiers_in(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(tiers)
    }

    /// Stores a runtime firewall rule, replacing the one for its network.
    pub fn put_rule(&self, r: &RuleRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO firewall_rule (network, action, until_ms, reason, added_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (network) DO UPDATE SET action = excluded.action,
                   until_ms = excluded.until_ms, reason = excluded.reason,
                   added_ms = excluded.added_ms",
            )?
            .execute(params![
                r.network, r.action, r.until_ms, r.reason, r.added_ms
            ])?;
            Ok(())
        })
    }

    /// Deletes the rule for `network`; true if there was one.
    pub fn delete_rule(&self, network: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx
                .prepare_cached("DELETE FROM firewall_rule WHERE network = ?1")?
                .execute(params![network])?;
            Ok(n > 0)
        })
    }

    /// Deletes the rules that ended by `now_ms`; how many.
    pub fn delete_ended_rules(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM firewall_rule WHERE until_ms <= ?1")?
                .execute(params![now_ms])
        })
    }

    /// Deletes the rules that ended by `now_ms`, then returns the others,
    /// oldest first.
    pub fn load_rules(&self, now_ms: i64) -> Result<Vec<RuleRecord>, StoreError> {
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM firewall_rule WHERE until_ms <= ?1")?
                .execute(params![now_ms])?;
            let mut stmt = tx.prepare_cached(
                "SELECT network, action, until_ms, reason, added_ms FROM firewall_rule
                 ORDER BY added_ms, network",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(RuleRecord {
                    network: row.get(0)?,
                    action: row.get(1)?,
                    until_ms: row.get(2)?,
                    reason: row.get(3)?,
                    added_ms: row.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Stores a runtime backend, replacing one of the same pool and name.
    pub fn put_backend(&self, b: &BackendRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO runtime_backend (pool, name, address, weight, tier, added_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (pool, name) DO UPDATE SET address = excluded.address,
                   weight = excluded.weight, tier = excluded.tier,
                   added_ms = excluded.added_ms",
            )?
            .execute(params![
                b.pool, b.name, b.address, b.weight, b.tier, b.added_ms
            ])?;
            Ok(())
        })
    }

    /// Deletes a runtime backend; true if there was one.
    pub fn delete_backend(&self, pool: &str, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx
                .prepare_cached("DELETE FROM runtime_backend WHERE pool = ?1 AND name = ?2")?
                .execute(params![pool, name])?;
            Ok(n > 0)
        })
    }

    /// Every runtime backend, by pool and in the order they were added.
    pub fn load_backends(&self) -> Result<Vec<BackendRecord>, StoreError> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT pool, name, address, weight, tier, added_ms FROM runtime_backend
                 ORDER BY pool, added_ms, name",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(BackendRecord {
                    pool: row.get(0)?,
                    name: row.get(1)?,
                    address: row.get(2)?,
                    weight: row.get(3)?,
                    tier: row.get(4)?,
                    added_ms: row.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Deletes everything stored about one backend. True if there was
    /// anything.
    pub fn forget(&self, pool: &str, backend: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let state = tx
                .prepare_cached("DELETE FROM backend_state WHERE pool = ?1 AND backend = ?2")?
                .execute(params![pool, backend])?;
            let history = tx
                .prepare_cached("DELETE FROM transition WHERE pool = ?1 AND backend = ?2")?
                .execute(params![pool, backend])?;
            Ok(state + history > 0)
        })
    }

    /// Runs `f` in one write transaction. IMMEDIATE takes the write lock up
    /// front, where the busy timeout applies; a read lock upgraded later could
    /// fail at once if the other process wrote in between.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        // On error the transaction rolls back when dropped.
        let out = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.path, e)
    }
}

/// Turns a missing or wrong directory into a plain message before SQLite
/// reports it as a bare "unable to open database file".
fn check_location(path: &Path) -> Result<(), StoreError> {
    let fail = |reason: String| StoreError::Open {
        path: path.to_path_buf(),
        reason,
    };
    if path.is_dir() {
        return Err(fail("it is a directory".to_owned()));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(fail(format!("{} is not a directory", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(fail(format!(
            "directory {} does not exist; create it first",
            dir.display()
        ))),
        Err(e) => Err(fail(format!("cannot use directory {}: {e}", dir.display()))),
    }
}

/// Switches the file to WAL mode (a no-op once it is). The switch needs an
/// exclusive lock and SQLite reports BUSY at once, without waiting, while
/// another connection holds a lock on a file not yet in WAL mode (as when two
/// processes open a new file together); so retry for the busy timeout here.
fn enable_wal(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mode: String = loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
            Ok(mode) => break mode,
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(classify(path, e)),
        }
    };
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    Err(StoreError::Unwritable {
        path: path.to_path_buf(),
        detail: format!("cannot switch to WAL journal mode, it stays in {mode:?} mode"),
    })
}

/// A damaged file is refused before anything is written to it.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let err = |e| classify(path, e);
    let mut stmt = conn.prepare("PRAGMA quick_check(5)").map_err(err)?;
    let answer = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(err)?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(err)?;
    if answer.len() == 1 && answer[0] == "ok" {
        return Ok(());
    }
    // The answer spans lines and starts with a "*** in database main ***"
    // banner; keep the findings on one line.
    let findings: Vec<&str> = answer
        .iter()
        .flat_map(|a| a.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("***"))
        .collect();
    Err(StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("integrity check failed: {}", findings.join("; ")),
    })
}

fn load_in(tx: &Transaction<'_>) -> rusqlite::Result<Vec<Entry>> {
    let mut entries: BTreeMap<(String, String), Entry> = BTreeMap::new();
    let mut stmt =
        tx.prepare_cached("SELECT pool, backend, admin, weight_override FROM backend_state")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (pool, backend): (String, String) = (row.get(0)?, row.get(1)?);
        let entry = entries
            .entry((pool.clone(), backend.clone()))
            .or_insert_with(|| empty_entry(pool, backend));
        entry.admin = row.get(2)?;
        entry.weight_override = row.get(3)?;
    }
    let mut stmt = tx.prepare_cached(
        "SELECT pool, backend, at_ms, kind, from_state, to_state, cause
         FROM transition ORDER BY pool, backend, id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (pool, backend): (String, String) = (row.get(0)?, row.get(1)?);
        let record = Record {
            at_ms: row.get(2)?,
            kind: row.get(3)?,
            from: row.get(4)?,
            to: row.get(5)?,
            cause: row.get(6)?,
        };
        entries
            .entry((pool.clone(), backend.clone()))
            .or_insert_with(|| empty_entry(pool, backend))
            .history
            .push(record);
    }
    Ok(entries.into_values().collect())
}

fn empty_entry(pool: String, backend: String) -> Entry {
    Entry {
        pool,
        backend,
        admin: None,
        weight_override: None,
        history: Vec::new(),
    }
}

fn insert_record(
    tx: &Transaction<'_>,
    pool: &str,
    backend: &str,
    r: &Record,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO transition (pool, backend, at_ms, kind, from_state, to_state, cause)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        pool, backend, r.at_ms, r.kind, r.from, r.to, r.cause
    ])?;
    Ok(())
}

/// Keeps the newest `keep` transitions of one backend. Order is insertion
/// order (the id), not `at_ms`: the wall clock can step backwards.
fn prune(tx: &Transaction<'_>, pool: &str, backend: &str, keep: usize) -> rusqlite::Result<()> {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let newest_dropped: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM transition WHERE pool = ?1 AND backend = ?2
             ORDER BY id DESC LIMIT 1 OFFSET ?3",
        )?
        .query_row(params![pool, backend, keep], |r| r.get(0))
        .optional()?;
    if let Some(id) = newest_dropped {
        tx.prepare_cached("DELETE FROM transition WHERE pool = ?1 AND backend = ?2 AND id <= ?3")?
            .execute(params![pool, backend, id])?;
    }
    Ok(())
}

fn load_tiers_in(tx: &Transaction<'_>) -> rusqlite::Result<BTreeMap<String, Vec<TierRecord>>> {
    let mut out: BTreeMap<String, Vec<TierRecord>> = BTreeMap::new();
    let mut stmt = tx.prepare_cached(
        "SELECT pool, at_ms, from_tier, to_tier, cause FROM tier_change ORDER BY pool, id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let pool: String = row.get(0)?;
        out.entry(pool).or_default().push(TierRecord {
            at_ms: row.get(1)?,
            from: row.get(2)?,
            to: row.get(3)?,
            cause: row.get(4)?,
        });
    }
    Ok(out)
}

/// Keeps the newest `keep` tier changes of one pool.
fn prune_tiers(tx: &Transaction<'_>, pool: &str, keep: usize) -> rusqlite::Result<()> {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let newest_dropped: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM tier_change WHERE pool = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![pool, keep], |r| r.get(0))
        .optional()?;
    if let Some(id) = newest_dropped {
        tx.prepare_cached("DELETE FROM tier_change WHERE pool = ?1 AND id <= ?2")?
            .execute(params![pool, id])?;
    }
    Ok(())
}
