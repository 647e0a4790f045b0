//! `[state]`: the state file.

use std::path::PathBuf;

use super::Checker;
use crate::model::State;
use crate::raw::RawState;

/// Transitions kept per backend, in memory and in the state file.
const DEFAULT_HISTORY: usize = 64;

impl Checker {
    pub(super) fn state(&mut self, raw: RawState) -> State {
        let path = raw.path.map(PathBuf::from);
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            self.push(
                "state.path",
                "must not be empty (leave it out to keep no state)",
            );
        }
        State {
            path,
            history: self.int(
                "state.history",
                raw.history,
                DEFAULT_HISTORY,
                1,
                Some(10_000),
            ),
        }
    }
}
