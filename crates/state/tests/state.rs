//! The state store against real files: round trips across reopen, pruning,
//! the failure modes of open (garbage, damage, locks, a bad location, a newer
//! schema) and two processes sharing one file.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use weir_state::{Entry, Record, Store, StoreError, TierRecord};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "weir-state-test-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("state.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn rec(at_ms: i64, kind: &str, from: &str, to: &str, cause: &str) -> Record {
    Record {
        at_ms,
        kind: kind.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        cause: cause.to_owned(),
    }
}

fn open(path: &Path, keep: usize) -> Store {
    Store::open(path, keep).expect("open store")
}

fn open_err(path: &Path, keep: usize) -> StoreError {
    match Store::open(path, keep) {
        Ok(store) => panic!("expected open to fail, got {store:?}"),
        Err(e) => e,
    }
}

fn entry<'a>(entries: &'a [Entry], pool: &str, backend: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.pool == pool && e.backend == backend)
        .unwrap_or_else(|| panic!("no entry for {pool}/{backend} in {entries:#?}"))
}

fn user_version(path: &Path) -> i64 {
    Connection::open(path)
        .expect("open raw")
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("read user_version")
}

/// A database with enough rows to span many pages, closed so that
/// everything is checkpointed into the main file.
fn populated(path: &Path) {
    let store = open(path, 1000);
    let cause = "x".repeat(300);
    for b in 0..10 {
        let records: Vec<Record> = (0..40)
            .map(|i| rec(i, "health", "up", "down", &cause))
            .collect();
        store
            .append("web", &format!("b{b}"), &records)
            .expect("append");
        store
            .set_admin("web", &format!("b{b}"), "drain")
            .expect("set admin");
    }
    drop(store);
    assert!(
        fs::metadata(path).expect("stat").len() > 16 * 4096,
        "test database should span many pages"
    );
}

#[test]
fn round_trip_across_reopen() {
    let dir = TempDir::new();
    let path = dir.db();
    assert!(!path.exists());
    {
        let store = open(&path, 10);
        assert_eq!(store.path(), path);
        assert_eq!(store.load().expect("load"), Vec::new());
        store.set_admin("web", "b1", "drain").expect("set admin");
        store.set_weight("web", "b1", Some(7)).expect("set weight");
        store
            .set_weight("db", "primary", Some(u32::MAX))
            .expect("set weight");
        store
            .append(
                "web",
                "b1",
                &[
                    rec(1_000, "health", "up", "down", "connect refused"),
                    rec(2_000, "admin", "enabled", "drain", "operator"),
                ],
            )
            .expect("append");
        store
            .append("web", "b0", &[rec(3_000, "weight", "5", "0", "operator")])
            .expect("append");
    }
    assert!(path.exists());

    let store = open(&path, 10);
    let entries = store.load().expect("load");
    assert_eq!(
        entries,
        vec![
            Entry {
                pool: "db".into(),
                backend: "primary".into(),
                admin: None,
                weight_override: Some(u32::MAX),
                history: vec![],
            },
            Entry {
                pool: "web".into(),
                backend: "b0".into(),
                admin: None,
                weight_override: None,
                history: vec![rec(3_000, "weight", "5", "0", "operator")],
            },
            Entry {
                pool: "web".into(),
                backend: "b1".into(),
                admin: Some("drain".into()),
                weight_override: Some(7),
                history: vec![
                    rec(1_000, "health", "up", "down", "connect refused"),
                    rec(2_000, "admin", "enabled", "drain", "operator"),
                ],
            },
        ]
    );

    // Overwrites replace, they do not add.
    store.set_admin("web", "b1", "disabled").expect("set admin");
    store.set_weight("web", "b1", Some(0)).expect("set weight");
    drop(store);
    let entries = open(&path, 10).load().expect("load");
    let b1 = entry(&entries, "web", "b1");
    assert_eq!(b1.admin.as_deref(), Some("disabled"));
    assert_eq!(b1.weight_override, Some(0));
}

#[test]
fn pruning_keeps_the_newest_in_order() {
    let dir = TempDir::new();
    let store = open(&dir.db(), 5);
    // Clock going backwards must not change what counts as newest.
    for i in 0..8 {
        store
            .append(
                "p",
                "a",
                &[rec(100 - i, "health", "up", "down", &format!("#{i}"))],
            )
            .expect("append");
    }
    let batch: Vec<Record> = (8..12)
        .map(|i| rec(100 - i, "health", "up", "down", &format!("#{i}")))
        .collect();
    store.append("p", "a", &batch).expect("append batch");
    // Another backend is pruned on its own.
    store
        .append("p", "b", &[rec(1, "admin", "enabled", "drain", "b")])
        .expect("append");

    let entries = store.load().expect("load");
    let causes: Vec<&str> = entry(&entries, "p", "a")
        .history
        .iter()
        .map(|r| r.cause.as_str())
        .collect();
    assert_eq!(causes, ["#7", "#8", "#9", "#10", "#11"]);
    assert_eq!(entry(&entries, "p", "b").history.len(), 1);

    // One call with more than `keep` records keeps only its last ones.
    let many: Vec<Record> = (0..9)
        .map(|i| rec(i, "health", "down", "up", &format!("m{i}")))
        .collect();
    store.append("p", "b", &many).expect("append many");
    drop(store);
    let entries = open(&dir.db(), 5).load().expect("load");
    let causes: Vec<&str> = entry(&entries, "p", "b")
        .history
        .iter()
        .map(|r| r.cause.as_str())
        .collect();
    assert_eq!(causes, ["m4", "m5", "m6", "m7", "m8"]);
}

#[test]
fn keep_zero_stores_no_history() {
    let dir = TempDir::new();
    let store = open(&dir.db(), 0);
    store
        .append("p", "a", &[rec(1, "health", "up", "down", "x")])
        .expect("append");
    assert_eq!(store.load().expect("load"), Vec::new());
}

#[test]
fn append_many_across_backends() {
    let dir = TempDir::new();
    let store = open(&dir.db(), 3);
    let mut batch = Vec::new();
    for i in 0..5 {
        for (pool, backend) in [("web", "b1"), ("web", "b2"), ("db", "b1")] {
            batch.push((
                pool.to_owned(),
                backend.to_owned(),
                rec(i, "health", "up", "down", &format!("{pool}/{backend}#{i}")),
            ));
        }
    }
    store.append_many(&batch).expect("append_many");
    store.append_many(&[]).expect("empty batch");

    let entries = store.load().expect("load");
    let keys: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.pool.as_str(), e.backend.as_str()))
        .collect();
    assert_eq!(keys, [("db", "b1"), ("web", "b1"), ("web", "b2")]);
    for e in &entries {
        let causes: Vec<String> = e.history.iter().map(|r| r.cause.clone()).collect();
        let want: Vec<String> = (2..5)
            .map(|i| format!("{}/{}#{i}", e.pool, e.backend))
            .collect();
        assert_eq!(causes, want);
        assert_eq!(e.admin, None);
    }
}

#[test]
fn forget_deletes_one_backend() {
    let dir = TempDir::new();
    let store = open(&dir.db(), 10);
    store
        .set_admin("web", "gone", "disabled")
        .expect("set admin");
    store
        .set_weight("web", "gone", Some(3))
        .expect("set weight");
    store
        .append("web", "gone", &[rec(1, "health", "up", "down", "x")])
        .expect("append");
    store
        .append(
            "web",
            "history-only",
            &[rec(1, "health", "up", "down", "x")],
        )
        .expect("append");
    store
        .set_admin("web", "stays", "enabled")
        .expect("set admin");

    assert!(store.forget("web", "gone").expect("forget"));
    assert!(!store.forget("web", "gone").expect("forget again"));
    assert!(!store.forget("web", "never-seen").expect("forget unknown"));
    assert!(store.forget("web", "history-only").expect("forget history"));

    drop(store);
    let entries = open(&dir.db(), 10).load().expect("load");
    let keys: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.pool.as_str(), e.backend.as_str()))
        .collect();
    assert_eq!(keys, [("web", "stays")]);
}

#[test]
fn clearing_the_weight() {
    let dir = TempDir::new();
    let store = open(&dir.db(), 10);
    store.set_admin("web", "b1", "drain").expect("set admin");
    store.set_weight("web", "b1", Some(4)).expect("set weight");
    store.set_weight("web", "b1", None).expect("clear weight");
    let entries = store.load().expect("load");
    let b1 = entry(&entries, "web", "b1");
    assert_eq!(b1.weight_override, None);
    assert_eq!(b1.admin.as_deref(), Some("drain"));

    // A backend with nothing but a cleared override is not listed.
    store.set_weight("web", "b2", Some(4)).expect("set weight");
    store.set_weight("web", "b2", None).expect("clear weight");
    store.set_weight("web", "b3", None).expect("clear unknown");
    assert_eq!(store.load().expect("load").len(), 1);
}

#[test]
fn invalid_admin_is_refused() {
    let dir = TempDir::new();
    let store = open(&dir.db(), 10);
    for bad in ["", "Enabled", "drained", "up", "enabled "] {
        let e = store.set_admin("web", "b1", bad).expect_err("must refuse");
        assert!(
            matches!(&e, StoreError::InvalidAdmin { value, .. } if value == bad),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"drain\""), "{e}");
    }
    assert_eq!(store.load().expect("load"), Vec::new());
}

#[test]
fn garbage_file_is_refused_untouched() {
    let dir = TempDir::new();
    let path = dir.db();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 13) as u8).collect();
    fs::write(&path, &garbage).expect("write garbage");

    let e = open_err(&path, 10);
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("move it aside"), "{msg}");
    assert_eq!(fs::read(&path).expect("read back"), garbage);
}

#[test]
fn truncated_database_is_corrupt() {
    let dir = TempDir::new();
    let path = dir.db();
    populated(&path);
    let len = fs::metadata(&path).expect("stat").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open for truncate")
        .set_len(len / 2)
        .expect("truncate");

    let e = open_err(&path, 10);
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert_eq!(fs::metadata(&path).expect("stat").len(), len / 2);
}

#[test]
fn overwritten_page_is_corrupt() {
    let dir = TempDir::new();
    let path = dir.db();
    populated(&path);
    let mut bytes = fs::read(&path).expect("read db");
    // Pages 3 and 4 hold table and index b-tree pages; the schema on page 1
    // stays intact, so it is the integrity check that finds the damage.
    for (i, b) in bytes[2 * 4096..4 * 4096].iter_mut().enumerate() {
        *b = (i * 31 + 5) as u8;
    }
    fs::write(&path, &bytes).expect("write damage");

    let e = open_err(&path, 10);
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert!(!e.to_string().contains('\n'), "one line: {e}");
    assert_eq!(fs::read(&path).expect("read back"), bytes);
}

#[test]
fn foreign_database_is_refused() {
    let dir = TempDir::new();
    let path = dir.db();
    Connection::open(&path)
        .expect("open raw")
        .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('hi');")
        .expect("create foreign table");
    let e = open_err(&path, 10);
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert_eq!(user_version(&path), 0);
}

#[test]
fn locked_by_another_process() {
    let dir = TempDir::new();
    let path = dir.db();
    drop(open(&path, 10));

    let holder = Connection::open(&path).expect("open holder");
    holder
        .execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO transition (pool, backend, at_ms, kind, from_state, to_state, cause)
             VALUES ('p', 'b', 1, 'health', 'up', 'down', 'pending');",
        )
        .expect("take the write lock");

    let started = Instant::now();
    let e = open_err(&path, 10);
    let waited = started.elapsed();
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    assert!(e.to_string().contains("locked"), "{e}");
    assert!(
        waited >= Duration::from_millis(900),
        "gave up after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");

    // An open store reports the same for a write, and recovers once the
    // lock is gone.
    holder.execute_batch("ROLLBACK").expect("release");
    let store = open(&path, 10);
    holder.execute_batch("BEGIN EXCLUSIVE").expect("lock again");
    let e = store.set_admin("p", "b", "drain").expect_err("locked");
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    // Readers are not blocked by the writer in WAL mode.
    assert_eq!(store.load().expect("load while locked"), Vec::new());
    holder.execute_batch("COMMIT").expect("release");
    store
        .set_admin("p", "b", "drain")
        .expect("set admin after release");
}

#[test]
fn unusable_locations() {
    let dir = TempDir::new();

    // Parent is a regular file.
    let file = dir.0.join("plain-file");
    fs::write(&file, b"not a dir").expect("write file");
    let e = open_err(&file.join("state.db"), 10);
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert!(e.to_string().contains("not a directory"), "{e}");

    // Parent missing: not created.
    let missing = dir.0.join("missing");
    let e = open_err(&missing.join("state.db"), 10);
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!missing.exists());

    // The path itself is a directory.
    let e = open_err(&dir.0, 10);
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
}

#[test]
fn newer_schema_is_refused_untouched() {
    let dir = TempDir::new();
    let path = dir.db();
    drop(open(&path, 10));
    Connection::open(&path)
        .expect("open raw")
        .pragma_update(None, "user_version", 999)
        .expect("set user_version");

    let e = open_err(&path, 10);
    assert!(
        matches!(e, StoreError::SchemaTooNew { found: 999, .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("has schema version 999; this weir knows up to 4"),
        "{msg}"
    );
    assert_eq!(user_version(&path), 999);
}

#[test]
fn two_stores_share_one_file() {
    let dir = TempDir::new();
    let path = dir.db();
    // The old process has the file open when the new one opens it.
    let old = open(&path, 100);
    let new = open(&path, 100);

    // A Store is used by one thread at a time, so each writer owns its own.
    let writers: Vec<_> = [("old", old), ("new", new)]
        .into_iter()
        .map(|(name, store)| {
            std::thread::spawn(move || {
                for i in 0..50 {
                    store
                        .append("web", name, &[rec(i, "health", "up", "down", name)])
                        .expect("append");
                    let admin = if i % 2 == 0 { "drain" } else { "enabled" };
                    store.set_admin("web", "shared", admin).expect("set admin");
                }
                store
            })
        })
        .collect();
    let mut stores = writers
        .into_iter()
        .map(|w| w.join().expect("writer thread"));
    let (old, new) = (stores.next().expect("old"), stores.next().expect("new"));

    for store in [&old, &new] {
        let entries = store.load().expect("load");
        assert_eq!(entry(&entries, "web", "old").history.len(), 50);
        assert_eq!(entry(&entries, "web", "new").history.len(), 50);
        assert_eq!(
            entry(&entries, "web", "shared").admin.as_deref(),
            Some("enabled")
        );
    }
    drop(old);
    new.forget("web", "old").expect("forget");
    drop(new);
    assert_eq!(open(&path, 100).load().expect("load").len(), 2);
}

#[test]
fn concurrent_first_open_migrates_once() {
    for _ in 0..10 {
        let dir = TempDir::new();
        let path = dir.db();
        let openers: Vec<_> = (0..2)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Store::open(&path, 10).map(|_| ()))
            })
            .collect();
        for o in openers {
            o.join().expect("opener thread").expect("concurrent open");
        }
        assert_eq!(user_version(&path), 4);
    }
}

#[test]
fn odd_names_round_trip() {
    let dir = TempDir::new();
    let store = open(&dir.db(), 10);
    let names = [
        "",
        "a'b\"c",
        "nul\0inside",
        "ünïcode ✓",
        "'; DROP TABLE transition; --",
    ];
    for n in names {
        store.set_admin(n, n, "enabled").expect("set admin");
        store
            .append(n, n, &[rec(i64::MIN, n, n, n, n)])
            .expect("append");
    }
    let entries = store.load().expect("load");
    assert_eq!(entries.len(), names.len());
    for n in names {
        let e = entry(&entries, n, n);
        assert_eq!(e.history, [rec(i64::MIN, n, n, n, n)]);
    }
}

fn tier(at_ms: i64, from: &str, to: &str, cause: &str) -> TierRecord {
    TierRecord {
        at_ms,
        from: from.to_owned(),
        to: to.to_owned(),
        cause: cause.to_owned(),
    }
}

#[test]
fn tier_changes_round_trip_and_are_pruned_per_pool() {
    let dir = TempDir::new();
    let path = dir.db();
    {
        let store = open(&path, 3);
        let batch: Vec<(String, TierRecord)> = (0..5)
            .map(|i| {
                (
                    "pg".to_owned(),
                    tier(
                        i,
                        &i.to_string(),
                        &(i + 1).to_string(),
                        "a: health up -> down",
                    ),
                )
            })
            .chain([("web".to_owned(), tier(9, "none", "0", "first probe round"))])
            .collect();
        store.append_tiers(&batch).expect("append");
        store.append_tiers(&[]).expect("empty batch");
    }
    let tiers = open(&path, 3).load_tiers().expect("load");
    let pg: Vec<i64> = tiers["pg"].iter().map(|t| t.at_ms).collect();
    assert_eq!(pg, [2, 3, 4], "the newest 3, oldest first");
    assert_eq!(tiers["web"], [tier(9, "none", "0", "first probe round")]);
    // Backends are not mixed up with pools.
    assert!(open(&path, 3).load().expect("load").is_empty());
}

/// A file written by the first schema gains the tier table and keeps what it
/// held.
#[test]
fn a_version_one_file_is_migrated() {
    let dir = TempDir::new();
    let path = dir.db();
    {
        let conn = Connection::open(&path).expect("open raw");
        conn.execute_batch(
            "CREATE TABLE backend_state (
                pool TEXT NOT NULL, backend TEXT NOT NULL, admin TEXT,
                weight_override INTEGER CHECK (weight_override BETWEEN 0 AND 4294967295),
                PRIMARY KEY (pool, backend)
            ) STRICT, WITHOUT ROWID;
            CREATE TABLE transition (
                id INTEGER PRIMARY KEY, pool TEXT NOT NULL, backend TEXT NOT NULL,
                at_ms INTEGER NOT NULL, kind TEXT NOT NULL, from_state TEXT NOT NULL,
                to_state TEXT NOT NULL, cause TEXT NOT NULL
            ) STRICT;
            CREATE INDEX transition_by_backend ON transition (pool, backend, id);
            INSERT INTO backend_state VALUES ('pg', 'a', 'drain', NULL);
            PRAGMA user_version = 1;",
        )
        .expect("a version 1 file");
    }
    let store = open(&path, 10);
    assert_eq!(user_version(&path), 4);
    let entries = store.load().expect("load");
    assert_eq!(entry(&entries, "pg", "a").admin.as_deref(), Some("drain"));
    store
        .append_tiers(&[("pg".to_owned(), tier(1, "0", "1", "x"))])
        .expect("the new table works");
    assert_eq!(store.load_tiers().expect("tiers")["pg"].len(), 1);
}

#[test]
fn firewall_rules_round_trip_replace_and_expire() {
    let dir = TempDir::new();
    let store = open(&dir.db(), 10);
    let rule = |network: &str, action: &str, until_ms: Option<i64>, added_ms: i64| {
        weir_state::RuleRecord {
            network: network.to_owned(),
            action: action.to_owned(),
            until_ms,
            reason: format!("{action} {network}"),
            added_ms,
        }
    };
    store
        .put_rule(&rule("192.0.2.0/24", "deny", None, 10))
        .expect("put");
    store
        .put_rule(&rule("198.51.100.7/32", "deny", Some(5_000), 20))
        .expect("put");
    store
        .put_rule(&rule("10.0.0.0/8", "allow", Some(9_000), 30))
        .expect("put");
    // Same network: replaced.
    store
        .put_rule(&rule("192.0.2.0/24", "allow", None, 40))
        .expect("replace");
    let now = store.load_rules(1_000).expect("load");
    let nets: Vec<&str> = now.iter().map(|r| r.network.as_str()).collect();
    assert_eq!(nets, ["198.51.100.7/32", "10.0.0.0/8", "192.0.2.0/24"]);
    assert_eq!(now[2].action, "allow");
    // Loading after an end deletes what ended.
    let later = store.load_rules(5_000).expect("load");
    assert_eq!(later.len(), 2);
    assert_eq!(store.load_rules(0).expect("load").len(), 2);
    assert!(store.delete_rule("10.0.0.0/8").expect("delete"));
    assert!(!store.delete_rule("10.0.0.0/8").expect("delete again"));
    assert_eq!(store.load_rules(0).expect("load").len(), 1);
}

#[test]
fn runtime_backends_round_trip_replace_and_delete() {
    let dir = TempDir::new();
    let store = open(&dir.db(), 10);
    let backend =
        |pool: &str, name: &str, address: &str, added_ms: i64| weir_state::BackendRecord {
            pool: pool.to_owned(),
            name: name.to_owned(),
            address: address.to_owned(),
            weight: 5,
            tier: 1,
            added_ms,
        };
    store
        .put_backend(&backend("pg", "c", "10.0.0.3:5432", 20))
        .expect("put");
    store
        .put_backend(&backend("pg", "b", "10.0.0.2:5432", 10))
        .expect("put");
    store
        .put_backend(&backend("web", "a", "10.0.1.1:80", 5))
        .expect("put");
    // Same pool and name: replaced.
    store
        .put_backend(&backend("pg", "c", "10.0.0.33:5432", 30))
        .expect("replace");
    let all = store.load_backends().expect("load");
    let names: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|b| (b.pool.as_str(), b.name.as_str(), b.address.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("pg", "b", "10.0.0.2:5432"),
            ("pg", "c", "10.0.0.33:5432"),
            ("web", "a", "10.0.1.1:80")
        ]
    );
    assert_eq!((all[0].weight, all[0].tier), (5, 1));
    assert!(store.delete_backend("pg", "b").expect("delete"));
    assert!(!store.delete_backend("pg", "b").expect("delete again"));
    assert_eq!(store.load_backends().expect("load").len(), 2);
    // Reopened, they are still there.
    drop(store);
    assert_eq!(open(&dir.db(), 10).load_backends().expect("load").len(), 2);
}
