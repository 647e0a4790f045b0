//! WebSocket (an HTTP/1.1 `Upgrade`): the request goes to a backend on a
//! connection of its own, with `Connection: upgrade` and `Upgrade` kept;
//! when the backend answers `101 Switching Protocols`, both connections are
//! handed over by hyper and relayed byte for byte, like a layer-4
//! connection, until either side closes, nothing moves for
//! `timeouts.websocket_idle`, the listener's connections are killed (or
//! its `shutdown_timeout` passes after a reload removed the route), or the
//! backend's connections are closed (`drain_timeout`, `close_on_down`). The
//! request's access-log line is written when the relay ends, with the bytes
//! each way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, HeaderValue, UPGRADE};
use http::{HeaderMap, Request, Response, Version};
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

/// The backend agreed (`101`): leaves the relay of the two upgraded
/// connections with the client's connection, which runs it once hyper has
/// handed the connection over (so the listener counts it, and shutdown waits
/// for it), and ends the exchange there; returns the response to send the
/// client. `backend_conn` keeps the backend's connection counted active
/// until the relay ends.
pub(crate) fn relay<B>(
    mut response: Response<B>,
    client: OnUpgrade,
    conn: &ConnState,
    idle: Duration,
    ends: Ends,
    mut x: Box<Exchange>,
    backend_conn: crate::upstream::Relaying,
) -> Response<B> {
    let backend = hyper::upgrade::on(&mut response);
    x.status = 101;
    let evicted = x.evicted();
    conn.then_run(Box::pin(async move {
        let _backend_conn = backend_conn;
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
        // The listener's kill and the route's retirement are shared by all
        // their connections: looked at (their locks taken) only when one
        // fired, not at every wake-up.
        let mut kill = std::pin::pin!(ends.kill.cancelled());
        let mut retired = std::pin::pin!(ends.slot.retired.cancelled());
        let mut watcher = weir_core::cancel::Watcher::new();
        let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let killed = std::future::poll_fn(|cx| {
            if let Some(g) = grace.as_mut()
                && g.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(());
            }
            let fired = watcher.poll(cx, |cx| {
                if kill.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
                retired.as_mut().poll(cx).map(|()| false)
            });
            match fired {
                Poll::Ready(true) => Poll::Ready(()),
                // A reload removed the route: the relay ends the listener's
                // `shutdown_timeout` after the removal, as a removed
                // listener's would (a relay that began after it gets none).
                Poll::Ready(false) if grace.is_none() => {
                    let stop = ends.slot.stop_at(ends.grace);
                    grace = Some(Box::pin(tokio::time::sleep_until(stop)));
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                _ => Poll::Pending,
            }
        });
        let ended = tokio::select! {
            r = copied => Some(r.is_ok()),
            () = last.idle_for(idle) => {
                x.reason = Reason::IdleTimeout.as_str();
                None
            }
            () = killed => {
                x.reason = Reason::Shutdown.as_str();
                None
            }
            why = weir_core::live::closed(ends.live.as_deref()) => {
                x.reason = why.as_str();
                None
            }
            // The backend left service and its drain ran out, or it went
            // down under `close_on_down`: as its l4 connections are.
            why = async {
                match evicted {
                    Some(e) => e.0.await,
                    None => std::future::pending().await,
                }
            } => {
                x.reason = why.as_str();
                None
            }
        };
        if let Some(clean) = ended {
            x.reason = ended_by(clean, &client, &backend).as_str();
        }
        x.body.bytes.store(client.moved, Relaxed);
        x.bytes_out = backend.moved;
    }));
    response
}

/// Why a relay that ran to its end ended: the side whose socket failed
/// (reset, broken pipe), else the side that closed first.
fn ended_by<C, B>(clean: bool, client: &Touched<C>, backend: &Touched<B>) -> Reason {
    if !clean {
        if client.failed && !backend.failed {
            return Reason::ClientError;
        }
        return Reason::BackendError;
    }
    match (client.closed, backend.closed) {
        (_, Some(b)) if client.closed.is_none_or(|c| b < c) => Reason::BackendClosed,
        _ => Reason::ClientClosed,
    }
}

/// What ends a relay besides its peers and idleness: the listener's
/// connections killed, the route removed (`grace` after the removal), an
/// operator closing the client's connection.
pub(crate) struct Ends {
    pub(crate) kill: tokio_util::sync::CancellationToken,
    /// The route's slot: its retirement and when it came.
    pub(crate) slot: Arc<crate::route::Slot>,
    pub(crate) grace: Duration,
    pub(crate) live: Option<Arc<weir_core::live::Live>>,
}

/// When bytes last moved on a relay, in milliseconds since it began, and
/// the order in which its sides closed.
#[derive(Debug)]
struct Activity {
    began: Instant,
    last_ms: AtomicU64,
    closes: AtomicU8,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            began: Instant::now(),
            last_ms: AtomicU64::new(0),
            closes: AtomicU8::new(0),
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

/// An upgraded connection that notes when bytes move, counts those read
/// from it, and notes its end: its EOF (in what order among the two sides)
/// or an error on its socket.
struct Touched<S> {
    inner: S,
    last: Arc<Activity>,
    /// Bytes read from this side (written to the other).
    moved: u64,
    /// This side's EOF was the relay's first (0) or second (1).
    closed: Option<u8>,
    /// Reading from or writing to this side failed.
    failed: bool,
}

impl<S> Touched<S> {
    fn new(inner: S, last: Arc<Activity>) -> Touched<S> {
        Touched {
            inner,
            last,
            moved: 0,
            closed: None,
            failed: false,
        }
    }

    /// Notes an error; passes the result on.
    fn note<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &r {
            self.failed = true;
        }
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Touched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let r = match Pin::new(&mut self.inner).poll_read(cx, buf) {
            // A TLS peer that closes its socket without a close_notify
            // (rustls says `UnexpectedEof`; many servers do): a close, as the
            // HTTP connection reads it too, not a failure.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            r => r,
        };
        let n = buf.filled().len() - before;
        if n > 0 {
            self.moved += n as u64;
            self.last.touch();
        } else if room && matches!(r, Poll::Ready(Ok(()))) && self.closed.is_none() {
            self.closed = Some(self.last.closes.fetch_add(1, Relaxed));
        }
        self.note(r)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        match &r {
            Poll::Ready(Ok(n)) if *n > 0 => self.last.touch(),
            // Nothing of a non-empty write taken: this side can take no
            // more (the copy ends with `WriteZero`), its failure.
            Poll::Ready(Ok(_)) if !buf.is_empty() => self.failed = true,
            _ => {}
        }
        self.note(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(r)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A side that takes no byte of a write and never has one to read.
    struct Stuck;

    impl AsyncRead for Stuck {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(0))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A relay that ends because one side took nothing of a write is that
    /// side's failure, not the other's.
    #[tokio::test]
    async fn a_side_that_takes_nothing_is_the_one_that_failed() {
        let last = Arc::new(Activity::default());
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b"frame").await.expect("write");
        let mut client = Touched::new(Stuck, Arc::clone(&last));
        let mut backend = Touched::new(near, Arc::clone(&last));
        let copied = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        assert_eq!(
            copied.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WriteZero)
        );
        assert_eq!(ended_by(false, &client, &backend), Reason::ClientError);

        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b"frame").await.expect("write");
        let mut client = Touched::new(near, Arc::clone(&last));
        let mut backend = Touched::new(Stuck, last);
        assert!(
            tokio::io::copy_bidirectional(&mut client, &mut backend)
                .await
                .is_err()
        );
        assert_eq!(ended_by(false, &client, &backend), Reason::BackendError);
    }
}
