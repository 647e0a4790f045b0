//! A client connection as the frontend hands it to a route's handler: its
//! socket, who it is (the PROXY header's source when a trusted sender gave
//! one) and what it connected to, whether it may still start with a PROXY
//! header, and when it arrived.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Client {
    pub stream: TcpStream,
    /// The client's address: from a trusted PROXY header, else the socket's peer.
    pub peer: SocketAddr,
    /// The address the client connected to, when a PROXY header said.
    pub destination: Option<SocketAddr>,
    /// An untrusted source on a listener that accepts the PROXY protocol: a
    /// PROXY header at the start of its bytes is refused.
    pub refuse_proxy_header: bool,
    pub accepted_at: Instant,
    /// The hash of the ClientHello's server name (lower-cased), when a peek
    /// saw one: `hash_key = "sni"` of maglev pools.
    pub sni_key: Option<u64>,
    /// Which routes' ALPN conditions the ClientHello met, when a peek saw
    /// one: a request over TLS for another name is routed with it.
    pub alpn_held: crate::listener::AlpnHeld,
    /// Held for the connection's life when `per_client.concurrent` counts it.
    pub(crate) slot: Option<crate::firewall::ClientSlot>,
    /// Its entry among the listener's live connections, once routed to an
    /// l7 route (an l4 one's is held by its handler).
    pub live: Option<crate::live::LiveGuard>,
}

impl Client {
    /// A connection just accepted from `peer`: an IPv4 client of a
    /// dual-stack socket (`::ffff:a.b.c.d`) is `a.b.c.d` from here on, in
    /// logs, listings and spans as for the firewall and routes.
    pub(crate) fn accepted(stream: TcpStream, peer: SocketAddr) -> Client {
        Client {
            stream,
            peer: canonical(peer),
            destination: None,
            refuse_proxy_header: false,
            accepted_at: Instant::now(),
            sni_key: None,
            alpn_held: 0,
            slot: None,
            live: None,
        }
    }

    /// The client `src` and the address it reached, `dst`, as a trusted
    /// PROXY header gave them (IPv4-mapped addresses as IPv4).
    pub(crate) fn proxied(&mut self, src: SocketAddr, dst: SocketAddr) {
        self.peer = canonical(src);
        self.destination = Some(canonical(dst));
    }

    /// When the client's handshakes (PROXY header, ClientHello, TLS) must be
    /// over: `timeout` after the accept, one budget for all of them.
    pub fn handshake_deadline(&self, timeout: std::time::Duration) -> Instant {
        self.accepted_at
            .checked_add(timeout)
            .unwrap_or_else(|| self.accepted_at + std::time::Duration::from_secs(86_400))
    }

    /// The address the client connected to: the PROXY header's, else our
    /// socket's local address.
    pub fn local(&self) -> std::io::Result<SocketAddr> {
        match self.destination {
            Some(d) => Ok(d),
            None => self.stream.local_addr(),
        }
    }
}

/// `::ffff:a.b.c.d:p` as `a.b.c.d:p`; any other address as it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}
