//! The weir runtime: it turns a validated [`weir_config::Config`] into bound
//! listeners, routes and pools, and runs the life of every connection. Data
//! walks one way through its modules:
//!
//! ```text
//! frontend   accept, max_connections, PROXY header in, ClientHello peek, route
//!   -> handler by the route's mode:
//!        tcp (layer 4): upstream (pick, connect, PROXY header out, TLS;
//!                       retries) -> relay both ways -> one access-log line
//!        l7 (layer 7):  the HttpHandler another crate built for the route
//! udp        a UDP listener's sockets: datagrams by flow, each flow with its
//!            own socket to a backend of the route's pool (beside `frontend`)
//! ```
//!
//! Beside that path: [`pool`] holds each pool's backends and the balancer built
//! from those that serve (swapped atomically on every change); [`health`] is
//! the backend state machine and its transitions; `probe` runs the active
//! health checks; [`events`] tells watchers and the state file what changed;
//! [`server`] builds snapshots, reloads them, runs operator actions and shuts
//! down. Every way something can end is one [`Reason`].
//!
//! Counters live beside the entity they describe and each part renders its own
//! metric families; the per-connection path does relaxed atomic adds and takes
//! no lock shared across connections.

pub mod cancel;
pub mod client;
pub mod discovery;
pub mod events;
pub mod fds;
pub mod firewall;
mod frontend;
pub mod health;
pub mod l7;
pub mod listener;
pub mod live;
pub mod pool;
mod probe;
pub mod reason;
pub mod resolve;
pub mod server;
mod statefile;
pub mod sync;
mod tcp;
pub mod udp;
pub mod upstream;

pub use frontend::{accept_pause, bind, bind_only, in_use, listen, peek_more};
pub use reason::{Reason, Side};
pub use server::{
    ControlError, Inherited, LastReload, Options, PassedSocket, ReloadError, Reloaded, Server,
    Snapshot, StartError,
};
pub use statefile::{Saved, millis};
pub use upstream::Upstream;

/// What unit tests across the crate start from.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    /// A server with one listener `l` on a free loopback port, whose route
    /// sends to one backend nobody listens on.
    pub(crate) async fn one_listener() -> (Arc<crate::Server>, Arc<crate::listener::Listener>) {
        let cfg = weir_config::load_str(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[listeners.routes]]\n\
             name = \"r\"\npool = \"p\"\n[[pools]]\nname = \"p\"\n[[pools.backends]]\n\
             address = \"127.0.0.1:9\"\n",
        )
        .expect("config");
        let server = crate::Server::start(&cfg).await.expect("start");
        let listener = server.listener("l").expect("l");
        (server, listener)
    }
}
