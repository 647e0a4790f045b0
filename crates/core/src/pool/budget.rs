//! A pool's retry budget (`retry_budget`, Envoy's retry budgets): how many
//! of its requests and connections may be trying another backend at once.
//! When every backend fails, each request retrying multiplies the load on
//! them; with a budget, retries past it fail at once with the last error
//! (or the answer put aside, with `retry_on_status`).
//!
//! The pool's load is read only when a retry is asked for (the backends'
//! in-flight counts, kept anyway), so requests that need no retry pay
//! nothing.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use super::Pool;

/// Retries in flight, shared by the pool's generations.
#[derive(Debug, Default)]
pub struct Retrying {
    active: AtomicU32,
    refused: AtomicU64,
}

impl Retrying {
    /// Requests and connections trying another backend now.
    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// Retries refused because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }
}

/// Leave to try other backends, held until the request has its answer or
/// the connection is made (or both fail): it counts as a retry in flight.
#[derive(Debug)]
#[must_use = "the leave is given back when dropped"]
pub struct RetryLeave<'a>(Option<&'a Retrying>);

impl Drop for RetryLeave<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.0 {
            r.active.fetch_sub(1, Relaxed);
        }
    }
}

/// The retries the budget allows with `in_flight` requests and connections.
fn allowed(budget: weir_config::RetryBudget, in_flight: u64) -> u64 {
    (in_flight * u64::from(budget.percent) / 100).max(u64::from(budget.min_concurrent))
}

impl Pool {
    /// Whether a request or connection that holds `leave` (or takes it now,
    /// the first time it retries) may try another backend.
    pub fn may_retry<'a>(&'a self, leave: &mut Option<RetryLeave<'a>>) -> bool {
        if leave.is_none() {
            *leave = self.retry_leave();
        }
        leave.is_some()
    }

    /// Leave for one request or connection to try another backend: always
    /// without a `retry_budget`; with one, while the retries in flight stay
    /// within it. `None`: the budget is spent (counted).
    fn retry_leave(&self) -> Option<RetryLeave<'_>> {
        let Some(budget) = self.retry_budget else {
            return Some(RetryLeave(None));
        };
        let in_flight: u64 = self
            .backends
            .iter()
            .map(|b| u64::from(b.stats.load()))
            .sum();
        let max = allowed(budget, in_flight);
        let r = &*self.retrying;
        let taken = r
            .active
            .fetch_update(Relaxed, Relaxed, |n| {
                (u64::from(n) < max).then(|| n.checked_add(1)).flatten()
            })
            .is_ok();
        if taken {
            Some(RetryLeave(Some(r)))
        } else {
            r.refused.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_a_share_of_the_load_or_the_minimum() {
        let b = |percent, min_concurrent| weir_config::RetryBudget {
            percent,
            min_concurrent,
        };
        assert_eq!(allowed(b(20, 3), 0), 3);
        assert_eq!(allowed(b(20, 3), 10), 3);
        assert_eq!(allowed(b(20, 3), 100), 20);
        assert_eq!(allowed(b(0, 0), 1000), 0);
        assert_eq!(allowed(b(100, 0), 7), 7);
        assert_eq!(
            allowed(b(100, 0), u64::from(u32::MAX) * 4),
            u64::from(u32::MAX) * 4
        );
    }
}
