//! The schema and its migrations; the version lives in `PRAGMA user_version`.

use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

use crate::error::{StoreError, classify};

/// Append only: never edit a migration that has shipped. Each one must keep
/// the previous version's queries working, because during an upgrade the old
/// process goes on using the file after the new one has migrated it.
const MIGRATION_LIST: &[M<'static>] = &[
    M::up(
        // The admin state is checked in code, not by a CHECK constraint, so a
        // later version can add a state without rebuilding the table.
        "CREATE TABLE backend_state (
        pool TEXT NOT NULL,
        backend TEXT NOT NULL,
        admin TEXT,
        weight_override INTEGER CHECK (weight_override BETWEEN 0 AND 4294967295),
        PRIMARY KEY (pool, backend)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE transition (
        id INTEGER PRIMARY KEY,
        pool TEXT NOT NULL,
        backend TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        cause TEXT NOT NULL
    ) STRICT;
    CREATE INDEX transition_by_backend ON transition (pool, backend, id);",
    ),
    // Changes of a pool's active tier; a tier is its number or "none".
    M::up(
        "CREATE TABLE tier_change (
        id INTEGER PRIMARY KEY,
        pool TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        from_tier TEXT NOT NULL,
        to_tier TEXT NOT NULL,
        cause TEXT NOT NULL
    ) STRICT;
    CREATE INDEX tier_change_by_pool ON tier_change (pool, id);",
    ),
    // Firewall rules an operator added at runtime; one per network.
    M::up(
        "CREATE TABLE firewall_rule (
        network TEXT PRIMARY KEY,
        action TEXT NOT NULL,
        until_ms INTEGER,
        reason TEXT NOT NULL,
        added_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;",
    ),
    // Backends an operator added at runtime (`weir backend add`); one per
    // pool and name.
    M::up(
        "CREATE TABLE runtime_backend (
        pool TEXT NOT NULL,
        name TEXT NOT NULL,
        address TEXT NOT NULL,
        weight INTEGER NOT NULL CHECK (weight BETWEEN 0 AND 4294967295),
        tier INTEGER NOT NULL CHECK (tier BETWEEN 0 AND 4294967295),
        added_ms INTEGER NOT NULL,
        PRIMARY KEY (pool, name)
    ) STRICT, WITHOUT ROWID;",
    ),
];

const MIGRATIONS: Migrations<'static> = Migrations::from_slice(MIGRATION_LIST);

/// The schema version this code writes.
pub(crate) const LATEST: usize = MIGRATION_LIST.len();

/// Refuses, without writing, a file from a newer weir or from another program.
pub(crate) fn check_before_migrating(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let err = |e| classify(path, e);
    // One snapshot, so a migration committed by another process in between
    // cannot make the version and the tables disagree.
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Deferred).map_err(err)?;
    let version = user_version(&tx).map_err(err)?;
    let objects: i64 = tx
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(err)?;
    tx.commit().map_err(err)?;
    check_version(path, version)?;
    if version == 0 && objects > 0 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "it holds tables but no weir schema version, so another program wrote it"
                .to_owned(),
        });
    }
    Ok(())
}

/// Brings the schema to [`LATEST`] in one transaction.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let Err(first) = MIGRATIONS.to_latest(conn) else {
        return Ok(());
    };
    // Another process may have migrated between our version check and our
    // transaction, making ours fail on tables that now exist.
    let version = user_version(conn).map_err(|e| classify(path, e))?;
    check_version(path, version)?;
    if usize::try_from(version) == Ok(LATEST) {
        return Ok(());
    }
    Err(match first {
        rusqlite_migration::Error::RusqliteError { err, .. } => classify(path, err),
        other => StoreError::Migrate {
            path: path.to_path_buf(),
            known: LATEST,
            detail: other.to_string(),
        },
    })
}

fn check_version(path: &Path, version: i64) -> Result<(), StoreError> {
    if version < 0 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("invalid schema version {version}"),
        });
    }
    if usize::try_from(version).map_or(true, |v| v > LATEST) {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found: version,
            known: LATEST,
        });
    }
    Ok(())
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}
