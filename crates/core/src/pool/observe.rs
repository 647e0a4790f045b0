//! What probes and traffic tell a pool about its backends: probe results
//! (active health) and the outcome of client connects (passive health).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use super::backend::{LastProbe, Status};
use super::{Backend, Pool, Watch, describe};
use crate::Reason;
use crate::health::{AdminState, Cause, Change, Health, HealthCounter, Report};
use weir_telemetry::Verdict;

impl Pool {
    /// Applies a probe result to backend `i`.
    pub(crate) fn on_probe(self: &Arc<Self>, i: usize, report: &Report, took: Duration) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        let (ok, text) = (report.ok(), report.text.as_str());
        b.stats.check(report, took);
        if report.failure == Some(Reason::LocalResources) {
            // weir could not even open a socket: that says nothing about the
            // backend, whose state stays as it was.
            self.local_shortage(&b.name, "probe", text);
            return;
        }
        let changed = {
            let mut s = b.status();
            let now = SystemTime::now();
            // Most probes repeat the previous result: reuse its text.
            match &mut s.last_probe {
                Some(last) if last.ok == ok && last.reason == text => {
                    last.at = now;
                    last.took = took;
                }
                slot => {
                    *slot = Some(LastProbe {
                        at: now,
                        ok,
                        reason: text.to_owned(),
                        took,
                    })
                }
            }
            if s.admin == AdminState::Disabled {
                return;
            }
            let verdict = report.verdict();
            self.change_health(
                b,
                &mut s,
                |h| h.verdict(verdict),
                || Cause::Probe(text.to_owned()),
            )
        };
        let Some(why) = changed else {
            return;
        };
        if self.settled.load(Relaxed) {
            self.rebuild(|| why);
        } else {
            // During a reload's probe round the pool before this one serves,
            // and a backend whose check stays shares its state with it.
            let serving = self.latest();
            if !Arc::ptr_eq(&serving, self) {
                serving.rebuild(|| why);
            }
        }
    }

    /// A client connect to backend `i` failed for `reason` (passive health).
    /// Only the backend's own failures count: weir's (say, out of file
    /// descriptors) say nothing about it.
    pub fn on_connect_failure(self: &Arc<Self>, i: usize, reason: Reason) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        if b.watch == Watch::Static || reason.side() != crate::Side::Backend {
            return;
        }
        let changed = {
            let mut s = b.status();
            let cause = || Cause::Passive(format!("connect {}", reason.as_str()));
            // The next successful connect has a count to start over.
            b.passive_pending.store(true, Relaxed);
            match b.watch {
                Watch::Probed => {
                    self.change_health(b, &mut s, HealthCounter::passive_failure, cause)
                }
                _ => self.change_health(b, &mut s, HealthCounter::passive_only_failure, cause),
            }
        };
        if let Some(why) = changed {
            if b.watch == Watch::Passive {
                self.schedule_passive_retry(&b.name);
            }
            // The status is shared with newer generations of this pool: the
            // newest one serves new connections.
            self.latest().rebuild(|| why);
        }
    }

    /// A client connect to backend `i` succeeded. Only backends with failed
    /// connects to settle take the lock; the common case is one relaxed
    /// load.
    pub fn on_connect_success(self: &Arc<Self>, i: usize) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        if !b.passive_pending.load(Relaxed) {
            return;
        }
        let changed = {
            let mut s = b.status();
            b.passive_pending.store(false, Relaxed);
            let settle = match b.watch {
                Watch::Probed => HealthCounter::passive_success,
                _ => HealthCounter::passive_only_success,
            };
            self.change_health(b, &mut s, settle, || {
                Cause::Passive("connect ok".to_owned())
            })
        };
        if let Some(why) = changed {
            self.latest().rebuild(|| why);
        }
    }

    /// weir ran out of descriptors or memory for a connect or a probe of
    /// `backend`: a warning, at most one a second per pool, saying how many
    /// more there were.
    pub fn local_shortage(&self, backend: &str, what: &str, detail: &str) {
        if let Verdict::Write { suppressed } = self.shortage_lines.check() {
            tracing::warn!(
                pool = %self.name,
                backend,
                what,
                detail,
                suppressed,
                "weir is out of file descriptors, memory or local ports; the backend is not at fault and keeps its state"
            );
        }
    }

    /// After `passive_timeout`, a backend that passive health took down is
    /// put on trial: it serves again, and the next connect decides.
    fn schedule_passive_retry(self: &Arc<Self>, name: &str) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (pool, name) = (Arc::clone(self), name.to_owned());
        handle.spawn(async move {
            tokio::time::sleep(pool.health.passive_timeout).await;
            // A reload may have replaced the pool meanwhile.
            let pool = pool.latest();
            let Some(b) = pool.backend(&name) else {
                return;
            };
            let changed = {
                let mut s = b.status();
                let changed = pool.change_health(b, &mut s, HealthCounter::passive_retry, || {
                    Cause::Passive(format!(
                        "tried again after passive_timeout ({:?})",
                        pool.health.passive_timeout
                    ))
                });
                if changed.is_some() {
                    b.passive_pending.store(true, Relaxed);
                }
                changed
            };
            if let Some(why) = changed {
                pool.rebuild(|| why);
            }
        });
    }

    /// Applies `op` to a backend's health counter; when the health changed,
    /// counts and records the transition with `cause`, logs it, and returns
    /// its description for the rebuild that must follow.
    fn change_health(
        &self,
        b: &Backend,
        s: &mut Status,
        op: impl FnOnce(&mut HealthCounter) -> Option<(Health, Health)>,
        cause: impl FnOnce() -> Cause,
    ) -> Option<String> {
        let before = s.label();
        let (from, to) = op(&mut s.health)?;
        b.count_transition(before, s.label());
        // Back in service: up, or, with passive health only, on trial
        // (which serves), as nginx ramps after `fail_timeout`.
        let back = to == Health::Up || (to == Health::Unknown && b.watch == Watch::Passive);
        if matches!(from, Health::Down | Health::Standby) && back && b.slow_start.is_some() {
            s.ramp_since = Some(std::time::Instant::now());
        }
        let (change, cause) = (Change::Health { from, to }, cause());
        let why = describe(&b.name, &change, &cause);
        if to == Health::Down {
            tracing::warn!(pool = %self.name, backend = %b.name, from = from.as_str(), to = to.as_str(), %cause, "backend health changed");
        } else {
            tracing::info!(pool = %self.name, backend = %b.name, from = from.as_str(), to = to.as_str(), %cause, "backend health changed");
        }
        self.record(b, s, change, cause);
        Some(why)
    }
}
