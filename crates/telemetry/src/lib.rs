//! weir-telemetry: the primitives every part of weir measures and reports with.
//! Counters are plain atomics owned by the entity they describe ([`count`],
//! [`ActiveGuard`]); [`Histogram`] has fixed buckets and records with two
//! relaxed adds; [`Writer`] writes the Prometheus text and OpenMetrics formats,
//! so each subsystem renders its own families into one scrape; and
//! [`AccessRecord`] is the one access-log line of a connection or request;
//! a [`LogBudget`] thins such lines under a flood and counts what it left out;
//! a [`LogQueue`] takes log lines to a thread of their own, so that a reader
//! that stalls costs lines (counted), never a blocked worker.
//!
//! There is no registry and no global state: whoever owns a counter renders it.
//! With the `metrics` feature off, counters and histograms that only feed
//! `/metrics` compile to nothing (gauges the data plane reads stay).

mod access;
mod budget;
mod counter;
mod exposition;
mod histogram;
mod log_queue;

pub use access::{AccessRecord, HttpAccessRecord};
pub use budget::{LogBudget, Verdict};
pub use counter::{ActiveGuard, count};
pub use exposition::{Format, Kind, Writer};
pub use histogram::{Histogram, HistogramSnapshot};
pub use log_queue::{LogQueue, LogStats, QUEUE_BYTES};
