//! A budget of log lines: under a flood (a million refused connections, a
//! process out of file descriptors) the log must not become a second flood.
//! Metrics stay exact; only the lines are thinned, and what was left out is
//! counted and said.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Lets at most `per_second` lines through in each second; counts the rest.
#[derive(Debug)]
pub struct LogBudget {
    per_second: AtomicU32,
    /// The second (since the process's first budget check) being counted.
    second: AtomicU64,
    used: AtomicU32,
    /// Lines left out since the last one let through.
    pending: AtomicU64,
    /// Lines left out in all.
    suppressed: AtomicU64,
}

/// What the budget says about one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed` lines were left out since the last one written.
    Write { suppressed: u64 },
    /// Leave it out (it is counted).
    Skip,
}

impl LogBudget {
    /// `per_second = 0` means no limit.
    pub fn new(per_second: u32) -> LogBudget {
        LogBudget {
            per_second: AtomicU32::new(per_second),
            second: AtomicU64::new(0),
            used: AtomicU32::new(0),
            pending: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Changes the allowance (a reload may).
    pub fn set_per_second(&self, per_second: u32) {
        self.per_second.store(per_second, Relaxed);
    }

    /// Decides about one line now.
    pub fn check(&self) -> Verdict {
        self.check_at(now_seconds())
    }

    /// Decides about one line in second `now` (any monotonic count of seconds).
    pub fn check_at(&self, now: u64) -> Verdict {
        let per_second = self.per_second.load(Relaxed);
        if per_second == 0 {
            return Verdict::Write { suppressed: 0 };
        }
        // A new second starts a new allowance. Racing threads may both reset
        // it: the budget is approximate by a line or two, never unbounded.
        if self.second.swap(now, Relaxed) != now {
            self.used.store(0, Relaxed);
        }
        if self.used.fetch_add(1, Relaxed) < per_second {
            Verdict::Write {
                suppressed: self.pending.swap(0, Relaxed),
            }
        } else {
            self.pending.fetch_add(1, Relaxed);
            self.suppressed.fetch_add(1, Relaxed);
            Verdict::Skip
        }
    }

    /// Lines left out since the budget was made.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Relaxed)
    }
}

fn now_seconds() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_allowance_per_second_and_the_rest_is_counted() {
        let b = LogBudget::new(3);
        let second: Vec<Verdict> = (0..5).map(|_| b.check_at(7)).collect();
        assert_eq!(
            second,
            [
                Verdict::Write { suppressed: 0 },
                Verdict::Write { suppressed: 0 },
                Verdict::Write { suppressed: 0 },
                Verdict::Skip,
                Verdict::Skip,
            ]
        );
        // The next second says how many were left out.
        assert_eq!(b.check_at(8), Verdict::Write { suppressed: 2 });
        assert_eq!(b.check_at(8), Verdict::Write { suppressed: 0 });
        assert_eq!(b.suppressed(), 2);
    }

    #[test]
    fn zero_means_no_limit() {
        let b = LogBudget::new(0);
        assert!((0..1000).all(|_| b.check_at(1) == Verdict::Write { suppressed: 0 }));
        assert_eq!(b.suppressed(), 0);
    }
}
