//! WebSocket (an HTTP/1.1 `Upgrade`): the request goes to a backend on a
//! connection of its own, with `Connection: upgrade` and `Upgrade` kept;
//! when the backend answers `101 Switching Protocols`, both connections are
//! handed over by hyper and relayed byte for byte, like a layer-4
//! connection, until either side closes, nothing moves for
//! `timeouts.websocket_idle`, or the listener's connections are killed. The
//! request's access-log line is written when the relay ends, with the bytes
//! each way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, HeaderValue, UPGRADE};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use weir_core::Reason;

use crate::exchange::Exchange;
use crate::serve::ConnState;

/// True for an HTTP/1.1 request that asks to become a WebSocket.
pub(crate) fn wants_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Puts back the two hop-by-hop headers an upgrade needs, after the others
/// were removed.
pub(crate) fn keep_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, upgrade);
}

/// When the backend agreed (`101`), leaves the relay of the two upgraded
/// connections with the client's connection, which runs it once hyper has
/// handed the connection over (so the listener counts it, and shutdown waits
/// for it), and ends the exchange there; returns the response to send the
/// client.
pub(crate) fn relay_when_switched<B>(
    mut response: Response<B>,
    client: OnUpgrade,
    conn: &ConnState,
    idle: Duration,
    ends: Ends,
    mut x: Box<Exchange>,
) -> Result<Response<B>, (Response<B>, Box<Exchange>)> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err((response, x));
    }
    let backend = hyper::upgrade::on(&mut response);
    x.status = 101;
    conn.then_run(Box::pin(async move {
        let (client, backend) = match tokio::join!(client, backend) {
            (Ok(c), Ok(b)) => (c, b),
            (Err(_), _) => {
                x.reason = Reason::ClientClosed.as_str();
                return;
            }
            (_, Err(_)) => {
                x.reason = Reason::BackendError.as_str();
                return;
            }
        };
        let last = Arc::new(Activity::default());
        let mut client = Touched::new(TokioIo::new(client), Arc::clone(&last));
        let mut backend = Touched::new(TokioIo::new(backend), Arc::clone(&last));
        let copied = async { tokio::io::copy_bidirectional(&mut client, &mut backend).await };
        // The listener's kill is shared by all its connections: looked at
        // (its locks taken) only when it fired, not at every wake-up.
        let mut kill = std::pin::pin!(ends.kill.cancelled());
        let mut watcher = weir_core::cancel::Watcher::new();
        let killed = std::future::poll_fn(|cx| watcher.poll(cx, |cx| kill.as_mut().poll(cx)));
        x.reason = tokio::select! {
            r = copied => match r {
                Ok(_) => Reason::ClientClosed.as_str(),
                Err(_) => Reason::BackendError.as_str(),
            },
            () = last.idle_for(idle) => Reason::IdleTimeout.as_str(),
            () = killed => Reason::Shutdown.as_str(),
            why = weir_core::live::closed(ends.live.as_deref()) => why.as_str(),
        };
        x.body.bytes.store(client.moved, Relaxed);
        x.bytes_out = backend.moved;
    }));
    Ok(response)
}

/// What ends a relay besides its peers and idleness: the listener's
/// connections killed, an operator closing the client's connection.
pub(crate) struct Ends {
    pub(crate) kill: tokio_util::sync::CancellationToken,
    pub(crate) live: Option<Arc<weir_core::live::Live>>,
}

/// When bytes last moved on a relay, in milliseconds since it began.
#[derive(Debug)]
struct Activity {
    began: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            began: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.began + Duration::from_millis(self.last_ms.load(Relaxed));
            if last.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    }
}

/// An upgraded connection that notes when bytes move, and counts those read
/// from it.
struct Touched<S> {
    inner: S,
    last: Arc<Activity>,
    /// Bytes read from this side (written to the other).
    moved: u64,
}

impl<S> Touched<S> {
    fn new(inner: S, last: Arc<Activity>) -> Touched<S> {
        Touched {
            inner,
            last,
            moved: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Touched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.moved += n as u64;
            self.last.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.last.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
