//! The front of every connection, the same whatever handles it: accept and
//! the listener limit ([`accept`]), the firewall (at accept, or once the
//! PROXY header of a trusted sender has said who the client is; see
//! `crate::firewall`), the PROXY header ([`proxy_in`]), a peek at the TLS ClientHello when a route needs SNI or
//! ALPN ([`client_hello`]), the route, and then the route's handler by mode.
//! A refusal on the way is counted and logged here, with its reason.

mod accept;
mod client_hello;
mod peek;
mod proxy_in;

pub(crate) use accept::accept_loop;
pub use accept::{accept_pause, bind, bind_only, in_use, listen};
pub use peek::more as peek_more;

use std::sync::Arc;

use weir_telemetry::{ActiveGuard, count};

use crate::Reason;
use crate::client::Client;
use crate::listener::{Listener, Mode, Route};
use crate::live::ConnState;

/// Handles one accepted client connection. The accept loop has already counted
/// it as active on the listener; the guard gives that back when this returns.
///
/// The client is built once, by the accept loop, and lent to every phase: a
/// value passed down by move would be stored again in every layer of the
/// connection's task. Not an `async fn` for the same reason: one desugars to
/// a copy of its arguments, where this block uses the captured ones in place.
#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
pub(crate) fn handle(
    listener: Arc<Listener>,
    mut client: Client,
) -> impl Future<Output = ()> + Send {
    async move {
        let _slot = ActiveGuard::adopt(&listener.stats.connections_active);
        // A client still sending its PROXY header or ClientHello when the
        // listener's `shutdown_timeout` runs out is closed then; past this
        // point the live-connection registry closes it. The wait is polled
        // (its shared lock taken) only if the client makes this one wait.
        let routed = tokio::select! {
            biased;
            r = front(&listener, &mut client) => r,
            () = listener.kill.cancelled() => {
                let took = client.accepted_at.elapsed();
                listener.log(None, client.peer, None, (0, 0), took, Reason::Shutdown);
                return;
            }
        };
        let Some(route) = routed else {
            return;
        };
        let index = listener
            .routes
            .iter()
            .position(|r| std::ptr::eq(r, route))
            .unwrap_or(0);
        match &route.mode {
            Mode::L4(upstream) => {
                client.live = Some(listener.stats.live.enter(
                    &listener,
                    index,
                    client.peer,
                    ConnState::Connecting,
                ));
                crate::tcp::serve(&listener, route, upstream, &mut client).await;
            }
            Mode::L7(l7) => {
                client.live = Some(listener.stats.live.enter(
                    &listener,
                    index,
                    client.peer,
                    ConnState::Http,
                ));
                let handler = Arc::clone(&l7.handler);
                let listener = Arc::clone(&listener);
                handler.serve(listener, index, client).await;
            }
        }
    }
}

/// PROXY header in, ClientHello peek, route: the route, or `None` when the
/// connection was refused (counted and logged). A trusted source's PROXY
/// header says who the client is; from here on that address stands
/// everywhere (routing, maglev key, logs, the header sent on).
async fn front<'l>(listener: &'l Listener, client: &mut Client) -> Option<&'l Route> {
    // One budget from the accept for the PROXY header, the ClientHello and a
    // TLS handshake: a client slow at each step gets no more in all. (Worked
    // out at each step rather than kept: the task would carry it for good.)
    // TCP_NODELAY is inherited from the listening socket (see `accept::bind`).
    match &listener.proxy_accept {
        Some(accept) if accept.is_trusted(client.peer.ip()) => {
            let deadline = client.handshake_deadline(listener.handshake_timeout);
            match proxy_in::read(&client.stream, deadline).await {
                Ok(Some((src, dst))) => client.proxied(src, dst),
                Ok(None) => {}
                Err(Reason::ClientClosed) => return None,
                Err(reason) => {
                    listener.refuse(client.peer, client.accepted_at, reason);
                    return None;
                }
            }
            // Now that the header said who the client is.
            match listener.firewall.admit(client.peer.ip()) {
                Ok(slot) => client.slot = slot,
                Err(block) => {
                    // A reset, at once, when the client is dropped.
                    let _ = socket2::SockRef::from(&client.stream)
                        .set_linger(Some(std::time::Duration::ZERO));
                    listener.refuse_blocked(client.peer, client.accepted_at.elapsed(), block);
                    return None;
                }
            }
        }
        Some(_) => client.refuse_proxy_header = true,
        None => {}
    }
    let peer = client.peer;
    let routed = if listener.needs_hello {
        match client_hello::route(listener, client, peer.ip()).await {
            Ok(routed) => {
                client.sni_key = routed.sni_key;
                client.alpn_held = routed.alpn_held;
                routed.route
            }
            // Gone before it said anything (a TCP health check, a port
            // scan): nothing to route, and nothing refused.
            Err(Reason::ClientClosed) => return None,
            Err(Reason::HandshakeTimeout)
                if let Some(route) =
                    client_hello::silent_client_route(listener, &client.stream, peer.ip()) =>
            {
                Some(route)
            }
            Err(reason) => {
                listener.refuse(peer, client.accepted_at, reason);
                return None;
            }
        }
    } else {
        listener.route_for(peer.ip(), None)
    };
    let Some(route) = routed else {
        listener.refuse(peer, client.accepted_at, Reason::NoRoute);
        return None;
    };
    count(&route.stats.connections_total, 1);
    Some(route)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    /// Every idle connection holds its whole task, so the task's size is most
    /// of what a connection costs (bench/ measures the RSS; see
    /// docs/benchmarks.md). This guards the layout work in `tcp` and
    /// `upstream` against a change that would, say, store a TLS client in
    /// every connection again.
    #[tokio::test]
    async fn a_connections_task_stays_small() {
        let (server, listener) = crate::testing::one_listener().await;
        let stream = tokio::net::TcpStream::connect(server.local_addrs("l")[0])
            .await
            .expect("connect");
        let peer = stream.local_addr().expect("addr");
        let task = super::handle(
            Arc::clone(&listener),
            crate::client::Client::accepted(stream, peer),
        );
        let size = std::mem::size_of_val(&task);
        // 864 before the live-connection registry, whose entry the relay
        // refers to (872 with it); 832 since the relay takes no wait on the
        // listener's `kill`; 848 since the backend's eviction count is
        // taken at the pick, across the connect.
        assert!(size <= 848, "a connection's task future is {size} bytes");
    }
}
