//! Waiting for more of a client's first bytes without consuming them (MSG_PEEK),
//! for parsers that need a whole PROXY header or ClientHello before deciding.

use std::io;

use rustix::net::RecvFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::Reason;

/// Waits until the socket holds more than `*seen` bytes, and at least
/// `want` (or a full `buf`), peeks up to `buf.len()` of them into `buf` and
/// updates `*seen`. When too little has come since the last peek, readiness
/// is cleared so the wait is for new bytes (the kernel raises a new event for
/// them), not a spin; a peer that closed after a partial message sends
/// nothing more, which ends the wait.
///
/// `want` is what the parser said it needs at least: until that much is
/// queued, a new segment costs a count of the queued bytes, not a copy of all
/// of them and a parse from the start. A client sending its hello a byte at
/// a time would otherwise make each of its bytes cost up to 17 KiB of copying.
///
/// Fails with `ClientClosed` when the client closed or failed before enough
/// bytes came.
pub async fn more(
    client: &TcpStream,
    buf: &mut [u8],
    seen: &mut usize,
    want: usize,
) -> Result<(), Reason> {
    let want = want.min(buf.len());
    loop {
        let ready = client
            .ready(Interest::READABLE)
            .await
            .map_err(|_| Reason::ClientClosed)?;
        let peeked = client.try_io(Interest::READABLE, || {
            if want > *seen + 1 {
                let queued = rustix::io::ioctl_fionread(client).map_err(io::Error::from)?;
                if usize::try_from(queued).unwrap_or(usize::MAX) < want {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
            let (n, _) =
                rustix::net::recv(client, &mut *buf, RecvFlags::PEEK).map_err(io::Error::from)?;
            if n == *seen && n > 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match peeked {
            Ok(0) => return Err(Reason::ClientClosed),
            Ok(n) => {
                *seen = n;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    return Err(Reason::ClientClosed);
                }
            }
            Err(_) => return Err(Reason::ClientClosed),
        }
    }
}
