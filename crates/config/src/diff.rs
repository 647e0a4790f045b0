//! What a reload changes: listeners and pools by name, backends by (pool,
//! name), and the settings a running process cannot change.

use crate::model::{Backend, Config};

/// The difference between two configurations, as names a person can read:
/// `listener NAME`, `pool NAME`, `backend POOL/NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Sections that differ but only take effect at the next start.
    pub need_restart: Vec<String>,
}

impl Diff {
    /// True when the new configuration is the same as the old one.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.need_restart.is_empty()
    }
}

/// Compares `old` with `new`. A pool whose own settings are equal but whose
/// backends differ is reported through its backends only.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff::default();
    by_name(
        &mut d,
        "listener",
        &old.listeners,
        &new.listeners,
        |l| &l.name,
        |a, b| a == b,
    );
    by_name(
        &mut d,
        "pool",
        &old.pools,
        &new.pools,
        |p| &p.name,
        |a, b| {
            // The backends are compared one by one below.
            let (mut a, mut b) = (a.clone(), b.clone());
            a.backends.clear();
            b.backends.clear();
            a == b
        },
    );
    for new_pool in &new.pools {
        let Some(old_pool) = old.pools.iter().find(|p| p.name == new_pool.name) else {
            continue;
        };
        let qualify = |b: &Backend| format!("{}/{}", new_pool.name, b.name);
        for b in &new_pool.backends {
            match old_pool.backends.iter().find(|o| o.name == b.name) {
                None => d.added.push(format!("backend {}", qualify(b))),
                Some(o) if o != b => d.changed.push(format!("backend {}", qualify(b))),
                Some(_) => {}
            }
        }
        for o in &old_pool.backends {
            if !new_pool.backends.iter().any(|b| b.name == o.name) {
                d.removed.push(format!("backend {}", qualify(o)));
            }
        }
    }
    d.need_restart = need_restart(old, new);
    d
}

/// The settings read only at start in which `new` differs from `old`, by
/// section name (`admin`, `runtime.worker_threads`, `state`, `log`).
pub fn need_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut need = Vec::new();
    // The token is read again by every reload (rotation); the addresses are
    // bound once.
    let fixed = |a: &crate::model::Admin| {
        (
            a.http,
            a.grpc,
            a.insecure,
            a.max_connections,
            a.max_connections_per_client,
            a.handshake_timeout,
            a.idle_timeout,
        )
    };
    if fixed(&old.admin) != fixed(&new.admin) {
        need.push("admin".to_owned());
    }
    // zero_copy reaches new connections through the rebuilt listeners; the
    // worker threads are started once. 0 and the number it stands for are
    // the same threads.
    if old.runtime.threads() != new.runtime.threads() {
        need.push("runtime.worker_threads".to_owned());
    }
    if old.state != new.state {
        need.push("state".to_owned());
    }
    if old.log.format != new.log.format || old.log.level != new.log.level {
        need.push("log".to_owned());
    }
    need
}

fn by_name<T>(
    d: &mut Diff,
    what: &str,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    same: impl Fn(&T, &T) -> bool,
) {
    for n in new {
        match old.iter().find(|o| name(o) == name(n)) {
            None => d.added.push(format!("{what} {}", name(n))),
            Some(o) if !same(o, n) => d.changed.push(format!("{what} {}", name(n))),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| name(n) == name(o)) {
            d.removed.push(format!("{what} {}", name(o)));
        }
    }
}
