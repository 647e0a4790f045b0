//! Health checking: the per-backend state machine ([`state`]), the probes (TCP,
//! HTTP/1.1 and gRPC, each optionally over TLS), and their scheduling.

pub(crate) mod checker;
mod grpc;
pub(crate) mod probe;
pub mod state;
