//! The time of a connection's turn: one clock reading shared by everything
//! that asks for the time while a connection's task is being polled.
//!
//! A request reads the time when it arrives, when it is sent to a backend,
//! when the response comes, when it ends and when its backend connection
//! goes back to the pool; reading the clock costs tens of nanoseconds on a
//! virtual machine, and an HTTP/2 connection serves many requests in one
//! turn. Within a turn every reading is the first one's, as in HAProxy's
//! event loop: a time is then late by at most the turn's length, which is
//! short (a turn only polls what is ready, it never waits).

use std::cell::Cell;

use tokio::time::Instant;

#[derive(Clone, Copy)]
enum Turn {
    /// Not in a turn: every reading reads the clock.
    Off,
    /// In a turn, the clock not read yet.
    Unread,
    /// In a turn, read at this time.
    At(Instant),
}

thread_local! {
    static TURN: Cell<Turn> = const { Cell::new(Turn::Off) };
}

/// The time: the turn's when in a turn, else the clock's.
pub(crate) fn now() -> Instant {
    TURN.with(|t| match t.get() {
        Turn::At(at) => at,
        Turn::Unread => {
            let at = Instant::now();
            t.set(Turn::At(at));
            at
        }
        Turn::Off => Instant::now(),
    })
}

/// `at` as microseconds since the first time asked, for a time kept in an
/// atomic; 0 stands for none, so a time before that first one (a test's
/// paused clock) reads as the first.
pub(crate) fn micros(at: Instant) -> u64 {
    let base = *BASE.get_or_init(|| at);
    u64::try_from(at.saturating_duration_since(base).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The time [`micros`] gave `us` for; `None` for 0 (none kept).
pub(crate) fn from_micros(us: u64) -> Option<Instant> {
    let base = BASE.get()?;
    (us > 0).then(|| *base + std::time::Duration::from_micros(us))
}

static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The time since `since`, by [`now`].
pub(crate) fn elapsed(since: Instant) -> std::time::Duration {
    now().saturating_duration_since(since)
}

/// Starts a turn on this thread; it ends when the guard is dropped. The
/// clock is read on the first [`now`] of the turn, not before: a turn that
/// asks for no time reads none.
pub(crate) fn turn() -> TurnGuard {
    TurnGuard(TURN.with(|t| t.replace(Turn::Unread)))
}

/// Ends its turn when dropped (and goes back to an outer one).
pub(crate) struct TurnGuard(Turn);

impl Drop for TurnGuard {
    fn drop(&mut self) {
        TURN.with(|t| t.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_turn_reads_the_clock_once() {
        let before = now();
        let first;
        {
            let _turn = turn();
            first = now();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(now(), first, "the same time within a turn");
        }
        assert!(first >= before);
        // Out of the turn: the clock again.
        assert!(now() >= first + Duration::from_millis(5));
    }

    #[test]
    fn a_turn_reads_the_clock_at_its_first_reading() {
        let _turn = turn();
        let begun = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        assert!(now() >= begun + Duration::from_millis(5));
    }

    #[test]
    fn an_inner_turn_gives_back_the_outer_one() {
        let _outer = turn();
        let outer = now();
        {
            let _inner = turn();
            std::thread::sleep(Duration::from_millis(5));
            assert!(now() > outer);
        }
        assert_eq!(now(), outer);
    }
}
