//! Layer 7 for weir: the handler of routes with `mode = "l7"`. The runtime
//! (`weir-core`) accepts, reads the PROXY header and routes a connection as
//! for any other; this crate then serves HTTP on it with hyper and proxies
//! each request:
//!
//! ```text
//! serve      HTTP/1.1 or HTTP/2 (h2c prior knowledge) on the client's
//!            connection; request-header, idle and drain handling
//!   -> proxy   per request: limits, the first matching rule (rules), the
//!              forwarding headers (headers), a backend of the rule's pool
//!   -> upstream  a pooled connection to that backend (HTTP/1.1 keep-alive,
//!                or one multiplexed HTTP/2 connection), a retry when the
//!                request did not reach it
//!   -> body    the response streamed back; at its end the counters and one
//!              access-log line (exchange)
//! ```
//!
//! weir's own answers (no rule, no backend, a timeout...) come from
//! [`errors`], as plain text or, to gRPC clients, as a gRPC status. HTTP
//! framing is hyper's; what is written here is what is ours: rules, header
//! rules, error mapping, the connection pool's policy.

mod auth;
mod body;
pub mod errors;
mod exchange;
pub mod headers;
mod io;
mod policy;
mod proxy;
mod route;
pub mod rules;
mod serve;
mod tls;
mod trace;
mod upgrade;
mod upstream;

use std::sync::Arc;

use weir_core::l7::{HttpHandler, HttpLayer, RouteBuild};

/// Builds the handlers of l7 routes: pass it to the server in
/// [`weir_core::Options::http`].
#[derive(Debug, Default)]
pub struct Layer;

impl Layer {
    pub fn new() -> Layer {
        Layer
    }
}

impl HttpLayer for Layer {
    fn build(&self, b: RouteBuild<'_>) -> Result<Arc<dyn HttpHandler>, String> {
        route::Handler::build(&b).map(|h| Arc::new(h) as Arc<dyn HttpHandler>)
    }
}
