//! The state of one backend, as a pure state machine (no clock, no I/O).
//!
//! ```text
//! health:  Unknown --first probe ok--> Up      Unknown --first probe failed--> Down
//!          Up   --`fall` consecutive failures (probes or failed connects)--> Down
//!          Down --`rise` consecutive successful probes--> Up
//! admin:   Enabled | Drain | Disabled   (set by an operator; independent of health)
//! serving: admin == Enabled && health == Up && the backend's tier is the pool's
//!          active tier (decided by the pool, see `crate::pool`)
//! ```
//!
//! A backend with `health = false` (or in a pool without checks) is a static one:
//! it starts `Up` and nothing but an operator changes its state. A failed connect
//! (passive health) counts as a failure only while the backend is `Up`: a backend
//! that is down comes back only through passing probes.

use std::collections::VecDeque;
use std::time::SystemTime;

/// Health as decided by rise/fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// No probe has answered yet.
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn parse(s: &str) -> Option<Health> {
        [Self::Unknown, Self::Up, Self::Down]
            .into_iter()
            .find(|h| h.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// Operator-set state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admin {
    /// Takes traffic when healthy.
    Enabled,
    /// No new connections; existing ones continue (until `drain_timeout`); probes go on.
    Drain,
    /// No traffic and no probes; existing connections closed after `drain_timeout`.
    Disabled,
}

impl Admin {
    pub fn parse(s: &str) -> Option<Admin> {
        [Self::Enabled, Self::Drain, Self::Disabled]
            .into_iter()
            .find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Drain => "drain",
            Self::Disabled => "disabled",
        }
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Health {
        from: Health,
        to: Health,
    },
    Admin {
        from: Admin,
        to: Admin,
    },
    /// Operator weight override (None = the configured weight).
    Weight {
        from: Option<u32>,
        to: Option<u32>,
    },
}

impl Change {
    /// `(kind, from, to)` as text, the form the API and the state file use.
    /// A cleared weight override reads "configured".
    pub fn parts(&self) -> (&'static str, String, String) {
        let weight = |w: &Option<u32>| w.map_or_else(|| "configured".to_owned(), |w| w.to_string());
        match self {
            Self::Health { from, to } => {
                ("health", from.as_str().to_owned(), to.as_str().to_owned())
            }
            Self::Admin { from, to } => ("admin", from.as_str().to_owned(), to.as_str().to_owned()),
            Self::Weight { from, to } => ("weight", weight(from), weight(to)),
        }
    }

    /// The inverse of [`Change::parts`]; `None` for text it never produces.
    pub fn from_parts(kind: &str, from: &str, to: &str) -> Option<Change> {
        let weight = |w: &str| -> Option<Option<u32>> {
            if w == "configured" {
                Some(None)
            } else {
                w.parse().ok().map(Some)
            }
        };
        Some(match kind {
            "health" => Change::Health {
                from: Health::parse(from)?,
                to: Health::parse(to)?,
            },
            "admin" => Change::Admin {
                from: Admin::parse(from)?,
                to: Admin::parse(to)?,
            },
            "weight" => Change::Weight {
                from: weight(from)?,
                to: weight(to)?,
            },
            _ => return None,
        })
    }
}

/// Why it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// An active probe; the text says what it saw ("http status 503",
    /// "connect refused", "timeout after 1s", "http status 200").
    Probe(String),
    /// A failed connect of a client connection ("connect refused").
    Passive(String),
    /// An operator action.
    Operator,
    /// A config reload; the text says what changed.
    Reload(String),
}

impl Cause {
    /// The inverse of its `Display` form (as the state file keeps it).
    pub fn parse(text: &str) -> Cause {
        if text == "operator" {
            return Cause::Operator;
        }
        for (prefix, make) in [
            ("probe: ", Cause::Probe as fn(String) -> Cause),
            ("traffic: ", Cause::Passive),
            ("reload: ", Cause::Reload),
        ] {
            if let Some(rest) = text.strip_prefix(prefix) {
                return make(rest.to_owned());
            }
        }
        // Text from a newer weir: keep it, as the closest kind.
        Cause::Reload(text.to_owned())
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Probe(r) => write!(f, "probe: {r}"),
            Self::Passive(r) => write!(f, "traffic: {r}"),
            Self::Operator => f.write_str("operator"),
            Self::Reload(r) => write!(f, "reload: {r}"),
        }
    }
}

/// One entry of a backend's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub at: SystemTime,
    pub change: Change,
    pub cause: Cause,
}

/// Transitions kept per backend unless `state.history` says otherwise.
pub const HISTORY: usize = 64;

/// The rise/fall counter of one backend.
#[derive(Debug, Clone)]
pub struct HealthCounter {
    state: Health,
    successes: u32,
    failures: u32,
    rise: u32,
    fall: u32,
}

impl HealthCounter {
    /// A probed backend starts `Unknown`; a static one starts (and stays) `Up`.
    pub fn new(rise: u32, fall: u32, probed: bool) -> Self {
        HealthCounter {
            state: if probed { Health::Unknown } else { Health::Up },
            successes: 0,
            failures: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// New rise/fall from a reload; counts in progress carry on against them.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Applies a probe result and returns `(from, to)` when the state changed.
    /// The first result decides at once; after that `rise`/`fall` apply.
    pub fn probe(&mut self, ok: bool) -> Option<(Health, Health)> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let to = match self.state {
            Health::Unknown if ok => Health::Up,
            Health::Unknown => Health::Down,
            Health::Up if !ok && self.failures >= self.fall => Health::Down,
            Health::Down if ok && self.successes >= self.rise => Health::Up,
            s => s,
        };
        self.change(to)
    }

    /// A failed client connect: a failure while `Up`, ignored otherwise.
    pub fn passive_failure(&mut self) -> Option<(Health, Health)> {
        if self.state != Health::Up {
            return None;
        }
        self.probe(false)
    }

    /// True while the state is undecided or counting towards a change: probes
    /// then run at the faster interval.
    pub fn changing(&self) -> bool {
        match self.state {
            Health::Unknown => true,
            Health::Up => self.failures > 0,
            Health::Down => self.successes > 0,
        }
    }

    fn change(&mut self, to: Health) -> Option<(Health, Health)> {
        let from = self.state;
        if from == to {
            return None;
        }
        self.state = to;
        self.successes = 0;
        self.failures = 0;
        Some((from, to))
    }
}

/// Appends to a history bounded to `cap` entries, dropping the oldest ones,
/// and returns the new entry.
pub fn record(
    history: &mut VecDeque<Transition>,
    cap: usize,
    change: Change,
    cause: Cause,
) -> Transition {
    while history.len() >= cap.max(1) {
        history.pop_front();
    }
    let t = Transition {
        at: SystemTime::now(),
        change,
        cause,
    };
    history.push_back(t.clone());
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    fn run(c: &mut HealthCounter, results: &str) -> Vec<Health> {
        results
            .chars()
            .map(|r| {
                c.probe(r == '1');
                c.state()
            })
            .collect()
    }

    #[test]
    fn first_result_decides_at_once() {
        assert_eq!(run(&mut HealthCounter::new(2, 3, true), "1"), [Up]);
        assert_eq!(run(&mut HealthCounter::new(2, 3, true), "0"), [Down]);
    }

    #[test]
    fn exact_rise_and_fall_counts() {
        let mut c = HealthCounter::new(2, 3, true);
        // up at once, then two failures keep it up, the third takes it down.
        assert_eq!(run(&mut c, "1001"), [Up, Up, Up, Up]);
        assert_eq!(run(&mut c, "000"), [Up, Up, Down]);
        // one success is not enough with rise = 2; a failure resets the count.
        assert_eq!(run(&mut c, "1011"), [Down, Down, Down, Up]);
    }

    #[test]
    fn failures_must_be_consecutive() {
        let mut c = HealthCounter::new(1, 3, true);
        assert_eq!(run(&mut c, "1001001"), [Up; 7]);
        assert_eq!(run(&mut c, "000"), [Up, Up, Down]);
    }

    #[test]
    fn passive_failures_count_only_while_up() {
        let mut c = HealthCounter::new(2, 2, true);
        assert_eq!(c.passive_failure(), None, "unknown: ignored");
        c.probe(true);
        assert_eq!(c.passive_failure(), None);
        assert_eq!(c.passive_failure(), Some((Up, Down)));
        // down: passive failures change nothing, only probes bring it back.
        assert_eq!(c.passive_failure(), None);
        assert_eq!(run(&mut c, "11"), [Down, Up]);
    }

    #[test]
    fn changing_tracks_pending_transitions() {
        let mut c = HealthCounter::new(2, 2, true);
        assert!(c.changing());
        c.probe(true);
        assert!(!c.changing());
        c.probe(false);
        assert!(c.changing());
        c.probe(true);
        assert!(!c.changing());
    }

    #[test]
    fn static_backends_start_up() {
        let c = HealthCounter::new(2, 3, false);
        assert_eq!(c.state(), Up);
        assert!(!c.changing());
    }

    #[test]
    fn change_text_round_trips() {
        for c in [
            Change::Health {
                from: Unknown,
                to: Down,
            },
            Change::Admin {
                from: Admin::Enabled,
                to: Admin::Disabled,
            },
            Change::Weight {
                from: None,
                to: Some(7),
            },
            Change::Weight {
                from: Some(3),
                to: None,
            },
        ] {
            let (kind, from, to) = c.parts();
            assert_eq!(Change::from_parts(kind, &from, &to), Some(c));
        }
        assert_eq!(Change::from_parts("health", "up", "sideways"), None);
        assert_eq!(Change::from_parts("tier", "0", "1"), None);
    }

    #[test]
    fn history_is_bounded() {
        let mut h = VecDeque::new();
        for i in 0..(HISTORY as u32 + 5) {
            record(
                &mut h,
                HISTORY,
                Change::Weight {
                    from: None,
                    to: Some(i),
                },
                Cause::Operator,
            );
        }
        assert_eq!(h.len(), HISTORY);
        assert_eq!(
            h.front().map(|t| &t.change),
            Some(&Change::Weight {
                from: None,
                to: Some(5)
            })
        );
    }
}
