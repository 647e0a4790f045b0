//! Routing on the TLS ClientHello without terminating TLS: the first bytes of
//! the connection are read with MSG_PEEK, so they stay in the socket and reach
//! the backend untouched; the pure parser in `weir_wire::client_hello` says whether they
//! are a ClientHello (and its SNI and ALPN), not TLS at all, or need more bytes.
//! The wait is bounded by the listener's `handshake_timeout`.

use std::net::IpAddr;
use std::num::NonZeroUsize;

use tokio::net::TcpStream;
use weir_wire::client_hello::{self as tls, Peek};

use super::peek;
use crate::Reason;
use crate::client::Client;
use crate::listener::{AlpnHeld, Listener, Route};

/// The most bytes peeked: a ClientHello of up to 16 KiB plus record headers.
const MAX_PEEK: usize = tls::MAX_HELLO_LEN + 1024;
/// The buffer a peek starts with: most ClientHellos fit (Chromium's, with a
/// post-quantum key share, is about 2 KiB and grows it once).
const FIRST_PEEK: usize = 1024;

/// What a peek found: the first route that matches the client's first bytes
/// (non-TLS bytes match only routes without sni/alpn; a TLS record this peek
/// cannot read as a ClientHello of at most 16 KiB matches none), the hash of
/// the hello's server name, for maglev pools that hash by it, and which
/// routes' ALPN conditions it met.
pub(crate) struct Routed<'l> {
    pub(crate) route: Option<&'l Route>,
    pub(crate) sni_key: Option<u64>,
    pub(crate) alpn_held: AlpnHeld,
}

impl Routed<'_> {
    fn none() -> Self {
        Routed {
            route: None,
            sni_key: None,
            alpn_held: 0,
        }
    }
}

/// Peeks at the client's first bytes and routes them (see [`Routed`]).
/// Fails with `HandshakeTimeout` when nothing was decided within what is
/// left of the listener's `handshake_timeout` since the accept, or
/// `ClientClosed` when the client closed (or reset) before.
pub(crate) async fn route<'l>(
    listener: &'l Listener,
    client: &Client,
    ip: IpAddr,
) -> Result<Routed<'l>, Reason> {
    let deadline = client.handshake_deadline(listener.handshake_timeout);
    match tokio::time::timeout_at(deadline, peek_route(listener, &client.stream, ip)).await {
        Ok(r) => r,
        Err(_) => Err(Reason::HandshakeTimeout),
    }
}

/// The route of a client whose ClientHello did not come within
/// `handshake_timeout`: when it sent nothing at all (a client of a protocol
/// whose server speaks first: SMTP, MySQL, FTP), the first route that needs
/// no ClientHello and takes it, as HAProxy's rules are evaluated once more
/// when its inspect-delay ends; `None` otherwise.
pub(crate) fn silent_client_route<'l>(
    listener: &'l Listener,
    client: &TcpStream,
    ip: IpAddr,
) -> Option<&'l Route> {
    let mut one = [std::mem::MaybeUninit::uninit(); 1];
    let nothing_sent = matches!(
        socket2::SockRef::from(client).peek(&mut one),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    listener.route_for(ip, None).filter(|_| nothing_sent)
}

async fn peek_route<'l>(
    listener: &'l Listener,
    client: &TcpStream,
    ip: IpAddr,
) -> Result<Routed<'l>, Reason> {
    // Only listeners that route on SNI/ALPN pay for this buffer, only while
    // the ClientHello arrives, and by what has arrived (never what the record
    // header announces): a flood of clients that never finish their hello
    // holds 1 KiB each, not 17, and at most twice what each one sent.
    let mut buf = vec![0u8; FIRST_PEEK];
    let mut seen = 0;
    // How many bytes the parser needs before another look is worth it (at
    // most the peek's cap: small, as every connection's task holds it).
    let mut want: u16 = 0;
    loop {
        peek::more(client, &mut buf, &mut seen, usize::from(want)).await?;
        match tls::peek(&buf[..seen]) {
            Ok(Peek::Complete(hello)) => {
                return Ok(Routed {
                    route: listener.route_for(ip, Some(&hello)),
                    sni_key: hello.sni.as_deref().map(crate::upstream::sni_key),
                    alpn_held: listener.alpn_held(&hello),
                });
            }
            Ok(Peek::NotTls) => {
                return Ok(Routed {
                    route: listener.route_for(ip, None),
                    ..Routed::none()
                });
            }
            // TLS that this peek cannot read (malformed, or more than 16 KiB)
            // matches no route: a catch-all would still get a server name
            // that TLS stacks more lenient than this parser read, past the
            // `sni` routes and their `source` limits.
            Err(e) => {
                tracing::debug!(listener = %listener.name, client = %ip, error = %e, "unreadable ClientHello");
                return Ok(Routed::none());
            }
            Ok(Peek::Incomplete { needed }) => {
                let total = seen.saturating_add(needed.map_or(1, NonZeroUsize::get));
                want = u16::try_from(total.min(MAX_PEEK)).unwrap_or(u16::MAX);
                if seen == buf.len() {
                    match grown(seen) {
                        Some(len) => buf.resize(len, 0),
                        None => return Ok(Routed::none()),
                    }
                }
            }
        }
    }
}

/// The buffer's next length when it is full with `seen` bytes and the parser
/// needs more: doubled, at most [`MAX_PEEK`]; `None` when it is as large as
/// it may be. Doubling keeps the peeks few (five from 1 KiB to the cap).
fn grown(seen: usize) -> Option<usize> {
    if seen >= MAX_PEEK {
        return None;
    }
    Some(seen.saturating_mul(2).clamp(1, MAX_PEEK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_doubles_and_stops_at_the_cap() {
        assert_eq!(grown(1024), Some(2048));
        assert_eq!(grown(2048), Some(4096));
        assert_eq!(grown(16 * 1024), Some(MAX_PEEK));
        assert_eq!(grown(MAX_PEEK), None);
        const { assert!(FIRST_PEEK < MAX_PEEK && MAX_PEEK <= u16::MAX as usize) };
    }
}
