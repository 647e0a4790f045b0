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
    sum_nanos: AtomicU64,
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
            sum_nanos: AtomicU64::new(0),
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
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
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
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 / 1e9,
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

    #[cfg(not(feature = "metrics"))]
    #[test]
    fn without_metrics_nothing_is_recorded() {
        let s = observed();
        assert_eq!(s.buckets, vec![(0.001, 0), (0.01, 0), (0.1, 0)]);
        assert_eq!((s.count, s.sum_seconds), (0, 0.0));
    }
}
