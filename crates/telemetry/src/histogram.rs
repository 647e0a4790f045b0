//! Histograms with fixed bucket bounds: one atomic per bucket, so recording is
//! one search in a short slice and two relaxed adds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A histogram of durations; bounds are in seconds, as Prometheus wants.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts; the last one is the +Inf bucket.
    buckets: Box<[AtomicU64]>,
    /// Microseconds: nanoseconds would wrap within weeks in the sum of the
    /// connection durations of a busy route (10,000 open connections add
    /// 10,000 s every second); microseconds last millennia.
    sum_micros: AtomicU64,
}

/// A read of a [`Histogram`], with cumulative bucket counts.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, cumulative count); the +Inf bucket is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records `d`; does nothing without the `metrics` feature.
    pub fn observe(&self, d: Duration) {
        if !cfg!(feature = "metrics") {
            return;
        }
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < secs);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Relaxed);
        }
        // Rounded to the nearest microsecond, so that the sum of many short
        // observations is not biased low.
        let micros = d
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(d.subsec_nanos().saturating_add(500) / 1_000));
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, &bound) in self.bounds.iter().enumerate() {
            total += self.buckets[i].load(Relaxed);
            buckets.push((bound, total));
        }
        total += self.buckets[self.bounds.len()].load(Relaxed);
        HistogramSnapshot {
            buckets,
            count: total,
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed() -> HistogramSnapshot {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        for ms in [0.5, 1.0, 5.0, 10.0, 50.0, 500.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        h.snapshot()
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn buckets_are_cumulative_and_le() {
        let s = observed();
        // A value equal to a bound counts in that bucket (le = "less or equal").
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 4), (0.1, 5)]);
        assert_eq!(s.count, 6);
        assert!((s.sum_seconds - 0.5665).abs() < 1e-9, "{}", s.sum_seconds);
    }

    /// The sum of long durations does not wrap: 20,000,000,000 s is what
    /// 10,000 connections open for three weeks add up to.
    #[cfg(feature = "metrics")]
    #[test]
    fn the_sum_holds_long_durations() {
        let h = Histogram::new(&[1.0]);
        h.observe(Duration::from_secs(10_000_000_000));
        h.observe(Duration::from_secs(10_000_000_000));
        let s = h.snapshot();
        assert_eq!(s.sum_seconds, 20_000_000_000.0);
        assert_eq!(s.count, 2);
        // Short ones are rounded to the nearest microsecond, not truncated.
        let h = Histogram::new(&[1.0]);
        for nanos in [600, 600, 400] {
            h.observe(Duration::from_nanos(nanos));
        }
        assert_eq!(h.snapshot().sum_seconds, 0.000_002);
    }

    #[cfg(not(feature = "metrics"))]
    #[test]
    fn without_metrics_nothing_is_recorded() {
        let s = observed();
        assert_eq!(s.buckets, vec![(0.001, 0), (0.01, 0), (0.1, 0)]);
        assert_eq!((s.count, s.sum_seconds), (0, 0.0));
    }
}
