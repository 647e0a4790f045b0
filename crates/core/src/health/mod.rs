//! Health checking: the per-backend state machine ([`state`]), the probes, and
//! their scheduling.

pub(crate) mod checker;
pub(crate) mod probe;
pub mod state;
