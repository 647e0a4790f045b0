//! Outlier detection (`outlier = { ... }` of a pool): a backend whose
//! answers to l7 routes fail (`5xx`, a failed connect, a connection lost
//! before the answer) `consecutive_failures` times in a row is ejected, no
//! requests for `base_ejection` times the number of its recent ejections
//! (at most `max_ejection`; each `base_ejection` it serves without one
//! takes one off the count, as Envoy's multiplier decreases), and comes
//! back by itself. Its connections are not cut: an ejection stops new
//! requests only. No more than
//! `max_ejected_percent` of the pool's backends are ejected at once (at least
//! one may be). Ejections and returns are transitions with their cause: in
//! the history, the API, `weir watch` and the state file.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{Pool, describe};
use crate::health::{Cause, Change};
use crate::sync::lock;

impl Pool {
    /// The outcome of one answer of backend `i` to an l7 route: `failed` for
    /// a 5xx or no answer at all. Lock-free unless it ejects.
    pub fn on_http_outcome(self: &Arc<Self>, i: usize, failed: bool) {
        let Some(cfg) = self.outlier else {
            return;
        };
        let Some(b) = self.backends.get(i) else {
            return;
        };
        let o = &b.outlier;
        if !failed {
            if o.consecutive.load(Relaxed) != 0 {
                o.consecutive.store(0, Relaxed);
            }
            return;
        }
        let n = o.consecutive.fetch_add(1, Relaxed) + 1;
        if n < cfg.consecutive_failures || o.ejected.load(Relaxed) {
            return;
        }
        let ejected = self
            .backends
            .iter()
            .filter(|b| b.outlier.ejected.load(Relaxed))
            .count();
        let allowed = (self.backends.len() * cfg.max_ejected_percent as usize / 100).max(1);
        if ejected >= allowed {
            tracing::debug!(pool = %self.name, backend = %b.name, ejected, allowed, "outlier not ejected: max_ejected_percent reached");
            return;
        }
        if o.ejected.swap(true, Relaxed) {
            return;
        }
        o.consecutive.store(0, Relaxed);
        let times = {
            // Forgiven one ejection per `base_ejection` served since the
            // last one ended: a hiccup a day does not grow to `max_ejection`.
            let served = lock(&o.returned).take().map_or(0, |t| {
                t.elapsed().as_nanos() / cfg.base_ejection.as_nanos().max(1)
            });
            let before = o.ejections.load(Relaxed);
            let kept = u32::try_from(u128::from(before).saturating_sub(served)).unwrap_or(0);
            o.ejections.store(kept + 1, Relaxed);
            kept + 1
        };
        let lasts = cfg
            .base_ejection
            .saturating_mul(times)
            .min(cfg.max_ejection);
        b.stats.ejections.fetch_add(1, Relaxed);
        let change = Change::Outlier {
            from: false,
            to: true,
        };
        let cause = Cause::Passive(format!(
            "{n} failed answers in a row; ejected for {lasts:?}"
        ));
        let why = describe(&b.name, &change, &cause);
        tracing::warn!(pool = %self.name, backend = %b.name, failures = n, ejection = ?lasts, "backend ejected as an outlier");
        {
            let mut s = b.status();
            self.record(b, &mut s, change, cause);
        }
        // The outlier state is shared with newer generations of this pool
        // (a request begun before a reload ends in this one): the newest
        // serves new requests.
        self.latest().rebuild(|| why);
        let name = b.name.clone();
        let state = Arc::clone(o);
        let pool = Arc::clone(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            tokio::time::sleep(lasts).await;
            // The pool that serves now: a reload may have replaced it.
            let pool = pool.latest();
            let Some(b) = pool.backend(&name) else {
                return;
            };
            if !Arc::ptr_eq(&b.outlier, &state) || !state.ejected.swap(false, Relaxed) {
                return;
            }
            state.consecutive.store(0, Relaxed);
            *lock(&state.returned) = Some(std::time::Instant::now());
            let change = Change::Outlier {
                from: true,
                to: false,
            };
            let cause = Cause::Passive("ejection time over".to_owned());
            let why = describe(&b.name, &change, &cause);
            tracing::info!(pool = %pool.name, backend = %b.name, "outlier ejection over");
            {
                let mut s = b.status();
                pool.record(b, &mut s, change, cause);
            }
            pool.rebuild(|| why);
        });
    }
}
