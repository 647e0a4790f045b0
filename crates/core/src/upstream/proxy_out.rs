//! The PROXY protocol header weir sends a backend (`send_proxy_protocol`):
//! the client's address as source, the address it connected to as
//! destination (both as a received PROXY header said, when there was one).

use tokio::net::TcpStream;
use weir_config::ProxyVersion;
use weir_wire::proxy::{self, Command, Transport};

use crate::client::Client;

/// Writes the header (v1 text or v2 binary) to the freshly connected backend.
pub(super) async fn send(
    backend: &TcpStream,
    client: &Client,
    version: ProxyVersion,
) -> std::io::Result<()> {
    let local = client.local()?;
    // At most 16 + 36 bytes (v2, IPv6) or 104 bytes (v1): one small allocation.
    let mut header = Vec::with_capacity(108);
    match version {
        ProxyVersion::V1 => proxy::encode_v1(client.peer, local, &mut header),
        ProxyVersion::V2 => proxy::encode_v2(
            Command::Proxy,
            Transport::Stream,
            Some((client.peer, local)),
            &[],
            &mut header,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?,
        ProxyVersion::Off => return Ok(()),
    }
    let mut rest = &header[..];
    while !rest.is_empty() {
        match backend.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            // Not `writable()`: its future would add to every connection's task.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::future::poll_fn(|cx| backend.poll_write_ready(cx)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
