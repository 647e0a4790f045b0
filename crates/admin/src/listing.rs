//! The connection listings being answered, bounded together: an answer
//! holds one place per connection it lists until it has been sent (or its
//! call has gone), and a listing that would take more places than are free
//! is refused with `RESOURCE_EXHAUSTED` (`429` over HTTP). Without it, any
//! reader of the admin port could ask for every connection again and again
//! without reading the answers, each a few megabytes with 100,000
//! connections, until memory ran out.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections listed in answers not yet sent, on both admin endpoints
/// together: at about 100 bytes each, some 25 MB of answers.
pub const LISTED_AT_ONCE: u32 = 250_000;

/// The places for listed connections.
#[derive(Debug, Clone)]
pub struct Budget {
    places: Arc<Semaphore>,
    size: u32,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(LISTED_AT_ONCE)
    }
}

impl Budget {
    /// `size` places (at least one).
    pub fn new(size: u32) -> Budget {
        let size = size.max(1);
        Budget {
            places: Arc::new(Semaphore::new(size as usize)),
            size,
        }
    }

    /// Places for an answer listing `n` connections, or why not. A listing
    /// larger than the whole budget takes all of it.
    pub(crate) fn hold(&self, n: usize) -> Result<Held, tonic::Status> {
        let want = u32::try_from(n).unwrap_or(u32::MAX).min(self.size);
        match Arc::clone(&self.places).try_acquire_many_owned(want) {
            Ok(permit) => Ok(Held(Arc::new(permit))),
            Err(_) => Err(tonic::Status::resource_exhausted(format!(
                "other answers being sent list {} connections, the most at once is {}; \
                 try again, or narrow the listing with a condition or a limit",
                self.size as usize - self.places.available_permits(),
                self.size
            ))),
        }
    }

    /// Places free now.
    pub fn available(&self) -> usize {
        self.places.available_permits()
    }
}

/// An answer's places, given back when the last copy is dropped. It rides
/// in the answer's extensions until the body that sends it takes it
/// ([`Holding`]).
#[derive(Debug, Clone)]
pub struct Held(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// The largest piece of an answer handed on at once: an HTTP/2 frame's
/// worth. The transport takes the next piece only once it has room, so
/// that the body, and the places it holds, last until little of the answer
/// is left to send.
const PIECE: usize = 16 * 1024;

/// A response body that keeps its answer's places until it is dropped:
/// sent but for its last piece, or given up with its connection. Data
/// comes out in pieces of at most [`PIECE`] bytes (views of the same
/// buffer, not copies).
#[derive(Debug)]
pub struct Holding<B> {
    inner: B,
    /// What is left of the last data frame.
    rest: Bytes,
    _held: Option<Held>,
}

impl<B> Holding<B> {
    pub fn new(inner: B, held: Option<Held>) -> Holding<B> {
        Holding {
            inner,
            rest: Bytes::new(),
            _held: held,
        }
    }

    /// Whether nothing is left to send.
    pub fn ended(&self) -> bool
    where
        B: Body,
    {
        self.rest.is_empty() && self.inner.is_end_stream()
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Holding<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                other => return Poll::Ready(other),
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(PIECE));
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn answers_hold_their_places_until_dropped() {
        let budget = Budget::new(10);
        let a = budget.hold(6).expect("six of ten");
        let refused = budget.hold(5).expect_err("five more");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("list 6 connections, the most at once is 10"),
            "{}",
            refused.message()
        );
        let b = budget.hold(4).expect("the other four");
        assert_eq!(budget.available(), 0);
        drop((a, b));
        assert_eq!(budget.available(), 10);
        // Larger than the budget: all of it, when all is free.
        let all = budget.hold(1_000_000).expect("all of it");
        assert!(budget.hold(1).is_err());
        let body = Holding::new(http_body_util::Empty::<Bytes>::new(), Some(all));
        assert_eq!(budget.available(), 0);
        drop(body);
        assert_eq!(budget.available(), 10);
        assert!(budget.hold(0).is_ok(), "an empty listing needs no place");
    }

    #[tokio::test]
    async fn an_answer_comes_out_in_pieces_of_the_same_buffer() {
        use http_body_util::BodyExt;
        let data = Bytes::from((0..40_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let mut body = Holding::new(http_body_util::Full::new(data.clone()), None);
        assert_eq!(body.size_hint().exact(), Some(40_000));
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            pieces.push(frame.expect("a frame").into_data().expect("data"));
        }
        let lengths: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        assert_eq!(lengths, [PIECE, PIECE, 40_000 - 2 * PIECE]);
        assert_eq!(pieces.concat(), data);
        assert!(body.is_end_stream());
    }
}
