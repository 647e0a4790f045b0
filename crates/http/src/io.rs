//! The client's side of an HTTP/1.1 connection, with the request-header
//! deadline: from a connection's start, and from the first byte of each
//! later request, the whole header must arrive within
//! `timeouts.request_header`, or the read fails with `TimedOut` and hyper
//! closes the connection (slowloris). The wait between requests is not
//! bounded here but by the idle timeout (see `serve`), so a kept-alive
//! connection may rest longer than a header may take to arrive.
//!
//! Its close lingers: after weir's last answer and its FIN, what the client
//! still sends is read and thrown away until it closes too (at most
//! [`LINGER_QUIET`] of silence and [`LINGER_TOTAL`] in all, nginx's
//! defaults), when a request of the connection had a body. Closed with
//! bytes unread, the socket would answer them with a reset, and a client
//! still uploading a body weir refused early (a `413`) would get the reset
//! instead of the answer.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::serve::ConnState;

/// Vectored writes of at most this many bytes leave as one plain write.
const FEW: usize = 4096;

/// A lingering close ends after this long without a byte from the client...
pub(crate) const LINGER_QUIET: Duration = Duration::from_secs(5);
/// ...and after this long in all.
pub(crate) const LINGER_TOTAL: Duration = Duration::from_secs(30);

thread_local! {
    /// Where the slices of a small vectored write are put together.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes `bufs` as a vectored write does, but a few KiB in several slices
/// (hyper's response head and a small body) are copied together and sent
/// by one plain write: on Linux a `send` costs the kernel less than a
/// `writev` of the same bytes (no iovec import, no VFS layers), more than
/// copying a few KiB costs here. Larger writes go vectored, uncopied.
pub(crate) fn poll_write_few<W: AsyncWrite + Unpin>(
    mut w: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let (mut total, mut parts, mut last) = (0, 0, &[][..]);
    for b in bufs.iter().filter(|b| !b.is_empty()) {
        total += b.len();
        parts += 1;
        last = b;
    }
    match parts {
        0 => return Poll::Ready(Ok(0)),
        1 => return w.poll_write(cx, last),
        _ if total > FEW => return w.poll_write_vectored(cx, bufs),
        _ => {}
    }
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => {
            s.clear();
            for b in bufs {
                s.extend_from_slice(b);
            }
            w.as_mut().poll_write(cx, &s)
        }
        // In use further up this thread's stack: not copied.
        Err(_) => w.as_mut().poll_write_vectored(cx, bufs),
    })
}

#[derive(Debug)]
pub(crate) struct HeaderDeadline<S> {
    stream: S,
    state: Arc<ConnState>,
    limit: Duration,
    /// When the header being read began; `None` between requests and while
    /// one is being served.
    since: Option<Instant>,
    /// Requests begun on the connection when `since` was set: once one more
    /// has begun, that header is whole.
    mark: u64,
    timer: Pin<Box<Sleep>>,
    /// The close's linger, once weir has sent its FIN (see the module).
    linger: Option<Linger>,
}

/// A lingering close under way: when it must end, and whether it has.
#[derive(Debug)]
struct Linger {
    until: Instant,
    done: bool,
}

impl<S> HeaderDeadline<S> {
    /// A connection whose first request header must arrive within `limit`.
    pub(crate) fn new(stream: S, state: Arc<ConnState>, limit: Duration) -> HeaderDeadline<S> {
        let now = Instant::now();
        HeaderDeadline {
            stream,
            state,
            limit,
            since: Some(now),
            mark: 0,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
            linger: None,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        // A request begun since the header started: it was whole. One that
        // weir answered at once (a 404, a refusal) is never seen in flight.
        if self.state.in_flight() > 0 || self.state.served() != self.mark {
            self.since = None;
        }
        let Some(since) = self.since else {
            return false;
        };
        let deadline = since + self.limit;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.state.header_timed_out();
            return true;
        }
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.state.in_flight() == 0 {
                    if this.since.is_none() {
                        // The first byte of the next request.
                        this.since = Some(crate::clock::now());
                        this.mark = this.state.served();
                    }
                    this.state.header_begun();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.expired(cx) {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request header timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let linger = match &mut this.linger {
            Some(l) => l,
            None => {
                std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
                if !this.state.lingers() {
                    return Poll::Ready(Ok(()));
                }
                // The header timer is done with: it times the linger now.
                let now = Instant::now();
                this.timer.as_mut().reset(now + LINGER_QUIET);
                this.linger.insert(Linger {
                    until: now + LINGER_TOTAL,
                    done: false,
                })
            }
        };
        let mut scratch = [0u8; 8192];
        // A few reads per turn, so that a fast sender does not hold the thread.
        for _ in 0..16 {
            if linger.done {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let quiet = (Instant::now() + LINGER_QUIET).min(linger.until);
                    this.timer.as_mut().reset(quiet);
                }
                // The client closed too, or its socket failed: done.
                Poll::Ready(_) => linger.done = true,
                Poll::Pending => {
                    if this.timer.as_mut().poll(cx).is_ready() {
                        linger.done = true;
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A client connection whose bytes are counted in its live entry (what
/// `weir connections` shows): read ones as sent on, written ones as
/// received back.
#[derive(Debug)]
pub(crate) struct Counted<S> {
    stream: S,
    live: Option<Arc<weir_core::live::Live>>,
}

impl<S> Counted<S> {
    pub(crate) fn new(stream: S, live: Option<Arc<weir_core::live::Live>>) -> Counted<S> {
        Counted { stream, live }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if let Some(l) = &self.live {
            l.count(n as u64, 0);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(l)) = (&r, &self.live) {
            l.count(0, *n as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = poll_write_few(Pin::new(&mut self.stream), cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(l)) = (&r, &self.live) {
            l.count(0, *n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io::IoSlice;

    /// Records each write: plain ones as one slice, vectored ones as theirs.
    #[derive(Default)]
    struct Calls {
        plain: Vec<Vec<u8>>,
        vectored: Vec<Vec<Vec<u8>>>,
    }

    impl AsyncWrite for Calls {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.plain.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.vectored
                .push(bufs.iter().map(|b| b.to_vec()).collect());
            Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(w: &mut Calls, bufs: &[&[u8]]) -> usize {
        let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match poll_write_few(Pin::new(w), &mut cx, &slices) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn small_vectored_writes_leave_as_one_plain_write() {
        let mut w = Calls::default();
        assert_eq!(
            write(&mut w, &[b"HTTP/1.1 200 OK\r\n\r\n", b"", b"body"]),
            23
        );
        assert_eq!(w.plain, vec![b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec()]);
        // One slice, empty ones around it: written as it is.
        assert_eq!(write(&mut w, &[b"", b"GET / HTTP/1.1\r\n\r\n"]), 18);
        assert_eq!(w.plain.len(), 2);
        // Nothing to write: no write at all.
        assert_eq!(write(&mut w, &[b"", b""]), 0);
        assert_eq!(w.plain.len(), 2);
        assert!(w.vectored.is_empty());
    }

    #[test]
    fn large_vectored_writes_stay_vectored_and_uncopied() {
        let mut w = Calls::default();
        let body = vec![7u8; FEW];
        assert_eq!(write(&mut w, &[b"head", &body]), FEW + 4);
        assert!(w.plain.is_empty());
        assert_eq!(w.vectored, vec![vec![b"head".to_vec(), body]]);
    }

    /// A connection whose close lingers (a request of it had a body), and
    /// the client's end of it.
    fn lingering(
        carried_body: bool,
    ) -> (
        HeaderDeadline<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let state = Arc::new(ConnState::new(tokio::time::Instant::now()));
        if carried_body {
            state.carried_body();
        }
        let (server, client) = tokio::io::duplex(64);
        (
            HeaderDeadline::new(server, state, Duration::from_secs(10)),
            client,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_reads_what_the_client_still_sends_until_it_closes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, mut client) = lingering(true);
        let sender = tokio::spawn(async move {
            // More than the pipe holds: only a linger that reads lets it in.
            for _ in 0..100 {
                client
                    .write_all(&[b'x'; 1000])
                    .await
                    .expect("weir reads it");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // weir's FIN came first.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.expect("an end");
            assert!(rest.is_empty());
        });
        let began = Instant::now();
        conn.shutdown().await.expect("a clean close");
        sender.await.expect("the client sent it all");
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(990) && took < LINGER_QUIET,
            "{took:?}"
        );
    }

    /// Closes `conn` and checks that it took `expected` (of paused time).
    async fn assert_close_takes(
        conn: &mut HeaderDeadline<tokio::io::DuplexStream>,
        expected: Duration,
    ) {
        use tokio::io::AsyncWriteExt;
        let began = Instant::now();
        conn.shutdown().await.expect("a clean close");
        let took = began.elapsed();
        assert!(
            took >= expected && took < expected + Duration::from_millis(50),
            "{took:?}, not {expected:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_lingers_no_longer_than_its_bounds() {
        use tokio::io::AsyncWriteExt;
        // A client that sends a little, then nothing, and does not close.
        let (mut conn, mut client) = lingering(true);
        client
            .write_all(b"the rest of a body")
            .await
            .expect("written");
        assert_close_takes(&mut conn, LINGER_QUIET).await;
        drop(client);

        // A client that never stops sending: cut at the total.
        let (mut conn, mut client) = lingering(true);
        tokio::spawn(async move {
            while client.write_all(b"more").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        assert_close_takes(&mut conn, LINGER_TOTAL).await;

        // No request had a body: nothing to linger for.
        let (mut conn, _client) = lingering(false);
        assert_close_takes(&mut conn, Duration::ZERO).await;
    }

    #[test]
    fn a_write_nested_in_another_goes_vectored() {
        let mut w = Calls::default();
        let n = SCRATCH.with_borrow_mut(|_| write(&mut w, &[b"a", b"b"]));
        assert_eq!(n, 2);
        assert_eq!(w.vectored, vec![vec![b"a".to_vec(), b"b".to_vec()]]);
    }
}
