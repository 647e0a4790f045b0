//! Counters and gauges are plain atomics; these helpers keep the hot path to
//! one relaxed add.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Adds to a counter that only feeds metrics; compiled out without the
/// `metrics` feature.
#[inline(always)]
pub fn count(counter: &AtomicU64, n: u64) {
    if cfg!(feature = "metrics") {
        counter.fetch_add(n, Relaxed);
    }
}

/// Decrements a gauge of open things when dropped, so every exit path of a
/// task (including cancellation) gives its slot back.
#[derive(Debug)]
pub struct ActiveGuard<'a>(&'a AtomicI64);

impl<'a> ActiveGuard<'a> {
    /// Takes over a slot already counted in `gauge`.
    pub fn adopt(gauge: &'a AtomicI64) -> Self {
        ActiveGuard(gauge)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_gives_the_slot_back() {
        let gauge = AtomicI64::new(1);
        drop(ActiveGuard::adopt(&gauge));
        assert_eq!(gauge.load(Relaxed), 0);
    }

    #[test]
    fn count_records_only_with_metrics() {
        let c = AtomicU64::new(0);
        count(&c, 3);
        assert_eq!(
            c.load(Relaxed),
            if cfg!(feature = "metrics") { 3 } else { 0 }
        );
    }
}
