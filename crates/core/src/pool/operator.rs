//! What an operator changes on a pool's backends: admin state and weight.
//! The server persists a change first and then calls these.

use std::sync::Arc;

use super::{Pool, Watch, describe};
use crate::health::{AdminState, Cause, Change, HealthCounter};

impl Pool {
    /// Sets the admin state of a backend. False if there is no such backend.
    pub fn set_admin(self: &Arc<Self>, name: &str, admin: AdminState) -> bool {
        let Some(b) = self.backend(name) else {
            return false;
        };
        let why = {
            let mut s = b.status();
            let from = s.admin;
            if from == admin {
                return true;
            }
            let before = s.label();
            s.admin = admin;
            if admin == AdminState::Enabled && b.slow_start.is_some() {
                s.ramp_since = Some(std::time::Instant::now());
            }
            // Health is stale after a time without probes: decide it afresh.
            if from == AdminState::Disabled && b.watch == Watch::Probed {
                let (rise, fall) = (self.health.rise, self.health.fall);
                s.health = HealthCounter::new(rise, fall, true);
            }
            b.count_transition(before, s.label());
            let change = Change::Admin { from, to: admin };
            let why = describe(name, &change, &Cause::Operator);
            self.record(b, &mut s, change, Cause::Operator);
            why
        };
        tracing::info!(pool = %self.name, backend = %name, admin = admin.as_str(), "backend admin state set");
        self.rebuild(|| why);
        true
    }

    /// Overrides (or with `None` restores) a backend's weight. False if there
    /// is no such backend.
    pub fn set_weight(self: &Arc<Self>, name: &str, weight: Option<u32>) -> bool {
        let Some(b) = self.backend(name) else {
            return false;
        };
        let why = {
            let mut s = b.status();
            let from = s.weight_override;
            if from == weight {
                return true;
            }
            s.weight_override = weight;
            let change = Change::Weight { from, to: weight };
            let why = describe(name, &change, &Cause::Operator);
            self.record(b, &mut s, change, Cause::Operator);
            why
        };
        self.rebuild(|| why);
        true
    }
}
