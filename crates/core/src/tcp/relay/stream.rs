//! The relay over async streams, for a backend spoken to through TLS
//! (`backend_tls`). rustls keeps its own buffers per connection, so this path
//! reads into a pooled buffer it holds while waiting; only TLS connections
//! take it, and their task is boxed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_telemetry::count;

use super::buffers::PooledBuf;
use super::guard::ProxyGuard;
use super::{EndState, Evict, Outcome, Progress, Settings};
use crate::Reason;
use crate::live::Live;
use crate::pool::BackendStats;

/// Relays between the client and a backend spoken to through a stream that
/// handles its own bytes (TLS, `backend_tls`). rustls keeps its own buffers per
/// connection, so this path reads into a pooled buffer it holds while waiting.
pub(crate) async fn relay_stream<B>(
    client: &mut TcpStream,
    backend: B,
    backend_stats: &BackendStats,
    settings: Settings,
    evict: Evict<'_>,
    live: &Live,
) -> Outcome
where
    B: AsyncRead + AsyncWrite + Unpin,
{
    let progress = Progress::new(live.started());
    let (sent, received) = (&live.sent, &live.received);
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = tokio::io::split(backend);
    let up = stream_pump(
        &mut client_read,
        &mut backend_write,
        (Reason::ClientError, Reason::BackendError),
        &progress,
        (sent, &backend_stats.sent_bytes),
        settings.refuse_proxy_header,
    );
    let down = stream_pump(
        &mut backend_read,
        &mut client_write,
        (Reason::BackendError, Reason::ClientError),
        &progress,
        (received, &backend_stats.received_bytes),
        false,
    );
    let evicted = evict.token.cancelled();
    let idle = tokio::time::sleep(settings.idle_timeout);
    tokio::pin!(up, down, evicted, idle);
    let mut state = EndState::new(settings.idle_timeout);
    let end = std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(why) = live.poll_closed(cx) {
            return std::task::Poll::Ready(super::End::Done(why));
        }
        state.poll(
            cx,
            (&evict, evicted.as_mut()),
            idle.as_mut(),
            &progress,
            |cx| up.as_mut().poll(cx),
            |cx| down.as_mut().poll(cx),
        )
    })
    .await;
    Outcome {
        end,
        sent: sent.load(Relaxed),
        received: received.load(Relaxed),
    }
}

/// One direction over async streams: read, check, count, write, until EOF
/// (then shut down the other side's write half) or an error (the failed side).
async fn stream_pump<R, W>(
    from: &mut R,
    to: &mut W,
    (from_error, to_error): (Reason, Reason),
    progress: &Progress<'_>,
    (total, backend_total): (&AtomicU64, &AtomicU64),
    guard_proxy: bool,
) -> Result<(), Reason>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut guard = guard_proxy.then(ProxyGuard::default);
    loop {
        let mut buf = PooledBuf::take();
        let n = match from.read(buf.as_mut()).await {
            Ok(n) => n,
            // A TLS peer that closed without close_notify (many do, after
            // their last answer): its end, as a plain peer's FIN would be.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(_) => return Err(from_error),
        };
        if n == 0 {
            if progress.first_eof() {
                let _ = to.shutdown().await;
            }
            return Ok(());
        }
        if let Some(g) = &mut guard {
            match g.feed(&buf.as_mut()[..n]) {
                Some(true) => return Err(Reason::ProxyProtocol),
                Some(false) => guard = None,
                None => {}
            }
        }
        total.fetch_add(n as u64, Relaxed);
        count(backend_total, n as u64);
        progress.touch();
        to.write_all(&buf.as_mut()[..n])
            .await
            .map_err(|_| to_error)?;
        to.flush().await.map_err(|_| to_error)?;
    }
}
