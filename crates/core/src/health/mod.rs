//! The state of one backend, as a pure state machine (no clock, no I/O), and
//! the record of how it got there ([`transition`]).
//!
//! ```text
//! health:  Unknown --first probe ok--> Up      Unknown --first probe failed--> Down
//!          Up   --`fall` consecutive failures (probes or failed connects)--> Down
//!          Down --`rise` consecutive successful probes--> Up
//!          Down --`passive_timeout` without probes (passive health only)--> Unknown
//!          Up   --`fall` consecutive answers that did not pass, the last a
//!                 `standby` one--> Standby      (healthy, not eligible)
//!          Down --`rise` consecutive standby answers--> Standby
//!          Standby --`rise` passes--> Up     Standby --`fall` failures--> Down
//! admin:   Enabled | Drain | Disabled   (set by an operator; independent of health)
//! serving: admin == Enabled && health != Down && the backend's tier is the
//!          pool's active tier (decided by the pool, see `crate::pool`)
//! ```
//!
//! A backend with `health = false` is a static one: it starts `Up` and nothing
//! but an operator changes its state. In a pool with active checks, a failed
//! connect (passive health) counts as a failure only while the backend is
//! `Up`: a backend that is down comes back only through passing probes. In a
//! pool without active checks, backends start `Up`, `fall` consecutive failed
//! connects take one down, and after `passive_timeout` it is tried again
//! (`Unknown`, which serves): the next connect decides, as nginx's
//! `max_fails`/`fail_timeout` do.

mod transition;

pub use transition::{Cause, Change, HISTORY, TierChange, Transition, record};

use crate::Reason;

/// Health as decided by rise/fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Not decided yet: no probe has answered, or passive health is trying
    /// the backend again.
    Unknown,
    Up,
    Down,
    /// Answering, as its check's `standby` says: healthy but not eligible
    /// (a database replica probed by a pool of primaries).
    Standby,
}

impl Health {
    pub fn parse(s: &str) -> Option<Health> {
        [Self::Unknown, Self::Up, Self::Down, Self::Standby]
            .into_iter()
            .find(|h| h.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
            Self::Standby => "standby",
        }
    }
}

/// What one probe's answer means for the rise/fall counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not a pass, but the answer the check's `standby` describes.
    Standby,
}

/// The state an operator set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminState {
    /// Takes traffic when healthy.
    Enabled,
    /// No new connections; existing ones continue (until `drain_timeout`); probes go on.
    Drain,
    /// No traffic and no probes; existing connections closed after `drain_timeout`.
    Disabled,
}

impl AdminState {
    pub fn parse(s: &str) -> Option<AdminState> {
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

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `None`: it passed (or, with `standby`, answered as a standby).
    pub failure: Option<Reason>,
    /// The answer did not pass but matched the check's `standby`.
    pub standby: bool,
    /// What it saw, in words ("http status 503", "connect refused"); kept in
    /// the transition history.
    pub text: String,
}

impl Report {
    pub fn passed(text: impl Into<String>) -> Report {
        Report {
            failure: None,
            standby: false,
            text: text.into(),
        }
    }

    pub fn failed(reason: Reason, text: impl Into<String>) -> Report {
        Report {
            failure: Some(reason),
            standby: false,
            text: text.into(),
        }
    }

    /// An answer that means standby: healthy, not eligible.
    pub fn standby(text: impl Into<String>) -> Report {
        Report {
            failure: None,
            standby: true,
            text: text.into(),
        }
    }

    /// What the answer means for rise/fall.
    pub fn verdict(&self) -> Verdict {
        match (self.failure, self.standby) {
            (Some(_), _) => Verdict::Fail,
            (None, true) => Verdict::Standby,
            (None, false) => Verdict::Pass,
        }
    }

    /// A failure of the protocol spoken (an invalid or broken answer).
    pub fn protocol(text: impl Into<String>) -> Report {
        Report::failed(Reason::Protocol, text)
    }

    /// It passed: neither a failure nor a standby answer.
    pub fn ok(&self) -> bool {
        self.failure.is_none() && !self.standby
    }
}

/// The rise/fall counter of one backend.
#[derive(Debug, Clone)]
pub struct HealthCounter {
    state: Health,
    successes: u32,
    /// Answers in a row that did not pass (failures and standby answers).
    failures: u32,
    /// Standby answers in a row.
    standbys: u32,
    /// Failures in a row.
    fails: u32,
    /// Failed client connects in a row, in a pool with active probes: a
    /// successful connect or a passing probe starts it over (HAProxy's
    /// `observe layer4`). Apart from the probes' count, so that connects
    /// that succeed never hide a failing check.
    passive: u32,
    rise: u32,
    fall: u32,
}

impl HealthCounter {
    /// A probed backend starts `Unknown`; a static one (or one watched by
    /// passive health only) starts `Up`.
    pub fn new(rise: u32, fall: u32, probed: bool) -> Self {
        HealthCounter {
            state: if probed { Health::Unknown } else { Health::Up },
            successes: 0,
            failures: 0,
            standbys: 0,
            fails: 0,
            passive: 0,
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
        self.verdict(if ok { Verdict::Pass } else { Verdict::Fail })
    }

    /// Applies a probe's verdict and returns `(from, to)` when the state
    /// changed. A standby answer counts as not passing, and leaves the
    /// backend `Standby` rather than `Down` when it decides.
    pub fn verdict(&mut self, v: Verdict) -> Option<(Health, Health)> {
        let bump = |n: u32| n.saturating_add(1);
        match v {
            Verdict::Pass => {
                self.successes = bump(self.successes);
                (self.failures, self.standbys, self.fails, self.passive) = (0, 0, 0, 0);
            }
            Verdict::Fail => {
                self.successes = 0;
                self.standbys = 0;
                self.failures = bump(self.failures);
                self.fails = bump(self.fails);
            }
            Verdict::Standby => {
                self.successes = 0;
                self.fails = 0;
                self.failures = bump(self.failures);
                self.standbys = bump(self.standbys);
            }
        }
        let not_up = if v == Verdict::Standby {
            Health::Standby
        } else {
            Health::Down
        };
        let to = match (self.state, v) {
            (Health::Unknown, Verdict::Pass) => Health::Up,
            (Health::Unknown, _) => not_up,
            (Health::Up, Verdict::Fail | Verdict::Standby) if self.failures >= self.fall => not_up,
            (Health::Down | Health::Standby, Verdict::Pass) if self.successes >= self.rise => {
                Health::Up
            }
            (Health::Down, Verdict::Standby) if self.standbys >= self.rise => Health::Standby,
            (Health::Standby, Verdict::Fail) if self.fails >= self.fall => Health::Down,
            (s, _) => s,
        };
        self.change(to)
    }

    /// A failed client connect, in a pool with active probes: `fall` in a
    /// row (no connect succeeding, no probe passing in between) take an
    /// `Up` backend down; ignored in any other state.
    pub fn passive_failure(&mut self) -> Option<(Health, Health)> {
        if self.state != Health::Up {
            return None;
        }
        self.passive = self.passive.saturating_add(1);
        if self.passive < self.fall {
            return None;
        }
        self.change(Health::Down)
    }

    /// A successful client connect, in a pool with active probes: the
    /// failed connects in a row start over.
    pub fn passive_success(&mut self) -> Option<(Health, Health)> {
        self.passive = 0;
        None
    }

    /// A failed client connect, in a pool without active probes: `fall` in a
    /// row take the backend down; one failure after a retry (`Unknown`) does.
    pub fn passive_only_failure(&mut self) -> Option<(Health, Health)> {
        match self.state {
            Health::Down => None,
            _ => self.probe(false),
        }
    }

    /// A successful client connect, in a pool without active probes: a
    /// backend on trial is up again, and a count of failures starts over.
    pub fn passive_only_success(&mut self) -> Option<(Health, Health)> {
        match self.state {
            Health::Unknown => self.change(Health::Up),
            _ => {
                self.failures = 0;
                None
            }
        }
    }

    /// `passive_timeout` has passed since passive health took the backend
    /// down: traffic may try it again.
    pub fn passive_retry(&mut self) -> Option<(Health, Health)> {
        match self.state {
            Health::Down => self.change(Health::Unknown),
            _ => None,
        }
    }

    /// True while the state is undecided or counting towards a change: probes
    /// then run at the faster interval.
    pub fn changing(&self) -> bool {
        match self.state {
            Health::Unknown => true,
            Health::Up => self.failures > 0 || self.passive > 0,
            Health::Down => self.successes > 0 || self.standbys > 0,
            Health::Standby => self.successes > 0 || self.fails > 0,
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
        self.standbys = 0;
        self.fails = 0;
        self.passive = 0;
        Some((from, to))
    }
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

    /// Failed connects count in a row: a successful one between them, or a
    /// passing probe, starts the count over; and connects that succeed do
    /// not hide a probe that fails.
    #[test]
    fn passive_failures_in_a_row_apart_from_the_probes() {
        let mut c = HealthCounter::new(2, 3, true);
        c.probe(true);
        for _ in 0..10 {
            assert_eq!(c.passive_failure(), None);
            assert_eq!(c.passive_failure(), None);
            assert_eq!(c.passive_success(), None);
        }
        assert_eq!(c.passive_failure(), None);
        assert_eq!(c.passive_failure(), None);
        assert_eq!(run(&mut c, "1"), [Up]);
        assert_eq!(c.passive_failure(), None);
        assert_eq!(c.passive_failure(), None);
        assert_eq!(c.passive_failure(), Some((Up, Down)));
        assert_eq!(run(&mut c, "11"), [Down, Up]);
        // Probes that fail take it down whatever the connects do.
        for _ in 0..2 {
            c.probe(false);
            c.passive_success();
        }
        assert_eq!(run(&mut c, "0"), [Down]);
    }

    #[test]
    fn passive_only_health_takes_down_and_retries() {
        let mut c = HealthCounter::new(2, 2, false);
        assert_eq!(c.state(), Up);
        // A success between failures starts the count over.
        assert_eq!(c.passive_only_failure(), None);
        assert_eq!(c.passive_only_success(), None);
        assert_eq!(c.passive_only_failure(), None);
        assert_eq!(c.passive_only_failure(), Some((Up, Down)));
        assert_eq!(c.passive_only_failure(), None, "down stays down");
        // After passive_timeout: on trial; one failure takes it down again...
        assert_eq!(c.passive_retry(), Some((Down, Unknown)));
        assert_eq!(c.passive_only_failure(), Some((Unknown, Down)));
        // ...and one success brings it up.
        assert_eq!(c.passive_retry(), Some((Down, Unknown)));
        assert_eq!(c.passive_only_success(), Some((Unknown, Up)));
        assert_eq!(c.passive_retry(), None, "only a down backend is retried");
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

    fn verdicts(c: &mut HealthCounter, results: &str) -> Vec<Health> {
        results
            .chars()
            .map(|r| {
                c.verdict(match r {
                    '1' => Verdict::Pass,
                    's' => Verdict::Standby,
                    _ => Verdict::Fail,
                });
                c.state()
            })
            .collect()
    }

    #[test]
    fn standby_answers_lead_to_standby_not_down() {
        assert_eq!(
            verdicts(&mut HealthCounter::new(2, 3, true), "s"),
            [Standby]
        );
        let mut c = HealthCounter::new(2, 3, true);
        // Up: `fall` answers that do not pass, the last a standby one.
        assert_eq!(verdicts(&mut c, "1s0s"), [Up, Up, Up, Standby]);
        // Standby: `rise` passes bring it up, `fall` failures take it down.
        assert_eq!(verdicts(&mut c, "1s11"), [Standby, Standby, Standby, Up]);
        assert_eq!(
            verdicts(&mut c, "sss00"),
            [Up, Up, Standby, Standby, Standby]
        );
        assert_eq!(verdicts(&mut c, "0"), [Down]);
        // Down: `rise` standby answers make it standby, a mix does not.
        assert_eq!(verdicts(&mut c, "s0s"), [Down, Down, Down]);
        assert_eq!(verdicts(&mut c, "0ss"), [Down, Down, Standby]);
        assert!(!c.changing());
        assert!(!Report::standby("http status 503").ok());
        assert_eq!(Report::standby("x").verdict(), Verdict::Standby);
    }

    #[test]
    fn reports() {
        assert!(Report::passed("connect ok").ok());
        let r = Report::protocol("grpc: no grpc-status");
        assert_eq!(r.failure, Some(Reason::Protocol));
        assert!(!r.ok());
    }
}
