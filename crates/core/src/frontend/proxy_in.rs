//! Reading the PROXY protocol header a trusted source must send (v1 or v2,
//! auto-detected). The bytes are peeked until the pure parser in
//! `weir_wire::proxy` has a complete header, then exactly the header is
//! consumed: what follows (say a TLS ClientHello) stays in the socket.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_wire::proxy::{self, Command, ProxyParse};

use super::peek;
use crate::Reason;

/// Reads the header and returns the (source, destination) it carries: `None`
/// for LOCAL (a health check of the sender itself) or UNKNOWN addresses, where
/// the socket's own addresses stand. Fails with `HandshakeTimeout` when no
/// complete header came by `deadline`, else with `ProxyProtocol` (not a
/// valid header, or the client closed before it was complete).
pub(crate) async fn read(
    client: &TcpStream,
    deadline: Instant,
) -> Result<Option<(SocketAddr, SocketAddr)>, Reason> {
    match tokio::time::timeout_at(deadline, read_inner(client)).await {
        Ok(r) => r,
        Err(_) => Err(Reason::HandshakeTimeout),
    }
}

async fn read_inner(client: &TcpStream) -> Result<Option<(SocketAddr, SocketAddr)>, Reason> {
    // Enough for any v1 header and most v2 ones; grown when a v2 header says so.
    let mut buf = vec![0u8; 256];
    let mut seen = 0;
    loop {
        // Gone before a byte (a TCP health check from a trusted source):
        // nothing refused, as on a listener without PROXY headers.
        peek::more(client, &mut buf, &mut seen, 0)
            .await
            .map_err(|why| match why {
                Reason::ClientClosed if seen == 0 => Reason::ClientClosed,
                _ => Reason::ProxyProtocol,
            })?;
        let (addresses, consumed) = match proxy::parse(&buf[..seen]) {
            Ok(ProxyParse::Complete {
                header,
                consumed_len,
            }) => {
                let addresses = match header.command {
                    Command::Proxy => header.addresses,
                    Command::Local => None,
                };
                (addresses, consumed_len)
            }
            Ok(ProxyParse::Incomplete { needed }) => {
                if seen == buf.len() {
                    let want = seen + needed.map_or(1, |n| n.get());
                    if want > proxy::V2_MAX_LEN {
                        return Err(Reason::ProxyProtocol);
                    }
                    buf.resize(want.max(buf.len() * 2).min(proxy::V2_MAX_LEN), 0);
                }
                continue;
            }
            Err(_) => return Err(Reason::ProxyProtocol),
        };
        consume(client, &mut buf[..consumed]).await?;
        return Ok(addresses);
    }
}

/// Reads exactly `buf.len()` bytes (already in the socket: they were peeked).
async fn consume(client: &TcpStream, buf: &mut [u8]) -> Result<(), Reason> {
    let mut done = 0;
    while done < buf.len() {
        match client.try_read(&mut buf[done..]) {
            Ok(0) => return Err(Reason::ProxyProtocol),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                client.readable().await.map_err(|_| Reason::ProxyProtocol)?;
            }
            Err(_) => return Err(Reason::ProxyProtocol),
        }
    }
    Ok(())
}
