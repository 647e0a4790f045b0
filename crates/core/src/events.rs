//! What happened, as it happens: backend transitions, active-tier changes,
//! reloads and runtime firewall rules go to every watcher (the `Watch` call of the control API) through a
//! bounded broadcast channel, and transitions and tier changes also go to the
//! state file.
//!
//! Sending never blocks the caller: a watcher that falls behind loses the
//! oldest events (and is told so by the channel), and the state file's writer
//! takes its work from an unbounded queue.

use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::firewall::Rule;
use crate::health::{TierChange, Transition};
use crate::statefile::Queue;

/// Events a slow watcher may fall behind by before it loses some.
const BACKLOG: usize = 1024;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Backend {
        pool: String,
        backend: String,
        transition: Transition,
    },
    Tier {
        pool: String,
        change: TierChange,
    },
    Reload {
        at: SystemTime,
        generation: u64,
        /// Why it failed.
        error: Option<String>,
    },
    /// A runtime firewall rule was added, removed, or ended by itself.
    Firewall {
        at: SystemTime,
        change: RuleChange,
        rule: Rule,
    },
}

/// What happened to a runtime firewall rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleChange {
    Added,
    Removed,
    /// Its time ran out.
    Ended,
}

impl RuleChange {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleChange::Added => "added",
            RuleChange::Removed => "removed",
            RuleChange::Ended => "ended",
        }
    }
}

impl Event {
    pub fn at(&self) -> SystemTime {
        match self {
            Self::Backend { transition, .. } => transition.at,
            Self::Tier { change, .. } => change.at,
            Self::Reload { at, .. } | Self::Firewall { at, .. } => *at,
        }
    }

    /// The pool it concerns; `None` for reloads and firewall rules.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Self::Backend { pool, .. } | Self::Tier { pool, .. } => Some(pool),
            Self::Reload { .. } | Self::Firewall { .. } => None,
        }
    }
}

/// Where events go.
#[derive(Debug)]
pub struct Journal {
    tx: broadcast::Sender<Event>,
    persist: Option<Queue>,
}

impl Journal {
    pub(crate) fn new(persist: Option<Queue>) -> Self {
        Journal {
            tx: broadcast::channel(BACKLOG).0,
            persist,
        }
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub(crate) fn backend(&self, pool: &str, backend: &str, transition: &Transition) {
        if let Some(persist) = &self.persist {
            persist.transition(pool, backend, transition);
        }
        self.send(Event::Backend {
            pool: pool.to_owned(),
            backend: backend.to_owned(),
            transition: transition.clone(),
        });
    }

    pub(crate) fn tier(&self, pool: &str, change: TierChange) {
        if let Some(persist) = &self.persist {
            persist.tier(pool, &change);
        }
        self.send(Event::Tier {
            pool: pool.to_owned(),
            change,
        });
    }

    pub(crate) fn firewall(&self, change: RuleChange, rule: &Rule) {
        self.send(Event::Firewall {
            at: std::time::SystemTime::now(),
            change,
            rule: rule.clone(),
        });
    }

    pub(crate) fn send(&self, event: Event) {
        // No watcher is not an error.
        let _ = self.tx.send(event);
    }
}

impl Default for Journal {
    fn default() -> Self {
        Journal::new(None)
    }
}
