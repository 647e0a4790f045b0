//! The client's side of an HTTP/1.1 connection, with the request-header
//! deadline: from a connection's start, and from the first byte of each
//! later request, the whole header must arrive within
//! `timeouts.request_header`, or the read fails with `TimedOut` and hyper
//! closes the connection (slowloris). The wait between requests is not
//! bounded here but by the idle timeout (see `serve`), so a kept-alive
//! connection may rest longer than a header may take to arrive.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::serve::ConnState;

#[derive(Debug)]
pub(crate) struct HeaderDeadline<S> {
    stream: S,
    state: Arc<ConnState>,
    limit: Duration,
    /// When the header being read began; `None` between requests and while
    /// one is being served.
    since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
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
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.state.in_flight() > 0 {
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
                if buf.filled().len() > before
                    && this.since.is_none()
                    && this.state.in_flight() == 0
                {
                    // The first byte of the next request.
                    this.since = Some(Instant::now());
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

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<S> {
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
        Pin::new(&mut self.stream).poll_shutdown(cx)
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
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
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
