//! Live connections across listeners, UDP flows included: the listing and
//! the close behind `weir connections`. Listeners a reload removed count
//! while their connections drain (`shutdown_timeout`, maybe an hour for a
//! database): an operator can see and close those too.

use std::sync::Arc;

use crate::listener::ListenerStats;
use crate::live::{ConnFilter, Picked};

use super::shutdown::Retiring;

/// The running snapshot, as loaded for one look.
type Running = arc_swap::Guard<Arc<super::Snapshot>>;

use super::{ControlError, Server};

impl Server {
    /// The first `limit` live connections `filter` matches, by listener and
    /// then id, and how many match in all. Fails when it names a listener
    /// or pool that does not exist.
    pub fn connections(&self, filter: &ConnFilter, limit: usize) -> Result<Picked, ControlError> {
        let (snapshot, retiring) = self.check_filter(filter)?;
        let mut picked = Picked::default();
        for (_, stats) in listed(&snapshot, &retiring, filter) {
            let keep = limit.saturating_sub(picked.entries.len());
            picked.total += stats.live.pick(filter, keep, &mut picked.entries);
        }
        Ok(picked)
    }

    /// Closes the live connections `filter` matches (reason `operator`);
    /// how many. An empty filter is refused: closing every connection is
    /// what a stop is for.
    pub fn close_connections(&self, filter: &ConnFilter) -> Result<usize, ControlError> {
        if filter.is_empty() {
            return Err(ControlError::NoFilter);
        }
        let (snapshot, retiring) = self.check_filter(filter)?;
        let closed = listed(&snapshot, &retiring, filter)
            .map(|(_, stats)| stats.live.close(filter))
            .sum();
        if closed > 0 {
            tracing::info!(closed, ?filter, "connections closed by an operator");
        }
        Ok(closed)
    }

    /// The running snapshot and the removed listeners still draining, once
    /// the names `filter` gives are known to one of them.
    fn check_filter(&self, filter: &ConnFilter) -> Result<(Running, Vec<Retiring>), ControlError> {
        let snapshot = self.current.load();
        let retiring = self.retiring();
        if let Some(l) = &filter.listener
            && snapshot.listener(l).is_none()
            && !retiring.iter().any(|r| r.name == *l)
        {
            return Err(ControlError::NoListener(l.clone()));
        }
        if let Some(p) = &filter.pool
            && snapshot.pool(p).is_none()
        {
            return Err(ControlError::NoPool(p.clone()));
        }
        Ok((snapshot, retiring))
    }
}

/// The listeners, running and removed, that `filter` names (all without a
/// listener condition): their names and stats.
fn listed<'a>(
    snapshot: &'a super::Snapshot,
    retiring: &'a [Retiring],
    filter: &'a ConnFilter,
) -> impl Iterator<Item = (&'a str, &'a ListenerStats)> {
    snapshot
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), &*l.stats))
        .chain(retiring.iter().map(|r| (r.name.as_str(), &*r.stats)))
        .filter(|(name, _)| filter.listener.as_deref().is_none_or(|n| n == *name))
}
