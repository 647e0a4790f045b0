//! The front of every connection, the same whatever handles it: accept and
//! the listener limit ([`accept`]), the PROXY header of a trusted sender
//! ([`proxy_in`]), a peek at the TLS ClientHello when a route needs SNI or
//! ALPN ([`client_hello`]), the route, and then the route's handler by mode.
//! A refusal on the way is counted and logged here, with its reason.

mod accept;
mod client_hello;
mod peek;
mod proxy_in;

pub(crate) use accept::accept_loop;
pub use accept::{bind, in_use};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_telemetry::{ActiveGuard, count};

use crate::Reason;
use crate::client::Client;
use crate::listener::{Listener, Mode};

/// Handles one accepted client connection. The accept loop has already counted
/// it as active on the listener; the guard gives that back when this returns.
pub(crate) async fn handle(listener: Arc<Listener>, stream: TcpStream, socket_peer: SocketAddr) {
    let _slot = ActiveGuard::adopt(&listener.stats.connections_active);
    let accepted_at = Instant::now();
    // TCP_NODELAY is inherited from the listening socket (see `accept::bind`).
    // A trusted source's PROXY header says who the client is; from here on that
    // address stands everywhere (routing, maglev key, logs, the header sent on).
    let mut refuse_proxy_header = false;
    let (peer, destination) = match &listener.proxy_accept {
        Some(accept) if accept.is_trusted(socket_peer.ip()) => {
            match proxy_in::read(&stream, listener.handshake_timeout).await {
                Ok(Some((src, dst))) => (src, Some(dst)),
                Ok(None) => (socket_peer, None),
                Err(reason) => return listener.refuse(socket_peer, reason),
            }
        }
        Some(_) => {
            refuse_proxy_header = true;
            (socket_peer, None)
        }
        None => (socket_peer, None),
    };
    let routed = if listener.needs_hello {
        match client_hello::route(&listener, &stream, peer.ip()).await {
            Ok(r) => r,
            Err(Reason::ClientClosed) => None,
            Err(reason) => return listener.refuse(peer, reason),
        }
    } else {
        listener.route_for(peer.ip(), None)
    };
    let Some(route) = routed else {
        return listener.refuse(peer, Reason::NoRoute);
    };
    count(&route.stats.connections_total, 1);
    let client = Client {
        stream,
        peer,
        destination,
        refuse_proxy_header,
        accepted_at,
    };
    match &route.mode {
        Mode::L4(upstream) => crate::tcp::serve(&listener, route, upstream, client).await,
    }
}
