//! `[runtime]`: worker threads and the relay's copy mode.

use super::Checker;
use crate::model::Runtime;
use crate::raw::RawRuntime;

/// The most worker threads a config may ask for.
const MAX_WORKER_THREADS: i64 = 1024;

impl Checker {
    pub(super) fn runtime(&mut self, raw: &RawRuntime) -> Runtime {
        Runtime {
            // Past a thousand a typo, not a plan: tokio would try to start
            // them all, and panic at the system's thread limit.
            worker_threads: self.int(
                "runtime.worker_threads",
                raw.worker_threads,
                0,
                0,
                Some(MAX_WORKER_THREADS),
            ),
            // Measured on loopback: the buffered copy relays faster (docs/benchmarks.md).
            zero_copy: raw.zero_copy.unwrap_or(false),
        }
    }
}
