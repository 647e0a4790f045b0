//! Why a state database call failed, each message naming the file.

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

/// Why a [`Store`](crate::Store) call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file cannot be created or opened at all, e.g. its directory is
    /// missing or is not a directory.
    #[error("cannot open state database {}: {reason}", .path.display())]
    Open { path: PathBuf, reason: String },

    /// Another process kept a lock for longer than the busy timeout.
    #[error(
        "state database {} stayed locked by another process past the 1s busy timeout \
         ({detail}); try again, or stop the program that holds it",
        .path.display()
    )]
    Locked { path: PathBuf, detail: String },

    /// Not an SQLite database, not weir's, or damaged.
    #[error(
        "state database {} is not a usable weir state database ({detail}); \
         move it aside to start with empty state",
        .path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    /// Opened, but it cannot be written.
    #[error(
        "state database {} cannot be written ({detail}); check that the file and its \
         directory are writable and the filesystem is not mounted read-only",
        .path.display()
    )]
    Unwritable { path: PathBuf, detail: String },

    /// Written by a newer weir; left untouched.
    #[error(
        "state database {} has schema version {found}; this weir knows up to {known} \
         (it was written by a newer weir: run that one, or move the file aside to start \
         with empty state)",
        .path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },

    /// Bringing the schema up to date failed for a reason other than SQLite's.
    #[error("cannot update state database {} to schema version {known}: {detail}", .path.display())]
    Migrate {
        path: PathBuf,
        known: usize,
        detail: String,
    },

    /// [`Store::set_admin`](crate::Store::set_admin) was given an unknown state.
    #[error(
        "invalid admin state {value:?} for backend {backend:?} of pool {pool:?}: \
         expected \"enabled\", \"drain\" or \"disabled\""
    )]
    InvalidAdmin {
        pool: String,
        backend: String,
        value: String,
    },

    /// Any other SQLite failure.
    #[error("state database {}: {source}", .path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// Sorts an SQLite error into the variant that tells the operator what to do.
pub(crate) fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    let Some(code) = e.sqlite_error_code() else {
        return StoreError::Sqlite { path, source: e };
    };
    let detail = e.to_string();
    match code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Locked { path, detail },
        ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
            StoreError::Corrupt { path, detail }
        }
        ErrorCode::ReadOnly | ErrorCode::CannotOpen => StoreError::Unwritable { path, detail },
        _ => StoreError::Sqlite { path, source: e },
    }
}
