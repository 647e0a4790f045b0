//! `[runtime]`: worker threads and the relay's copy mode.

use super::Checker;
use crate::model::Runtime;
use crate::raw::RawRuntime;

impl Checker {
    pub(super) fn runtime(&mut self, raw: &RawRuntime) -> Runtime {
        Runtime {
            worker_threads: self.int("runtime.worker_threads", raw.worker_threads, 0, 0, None),
            // Measured on loopback: the buffered copy relays faster (docs/benchmarks.md).
            zero_copy: raw.zero_copy.unwrap_or(false),
        }
    }
}
