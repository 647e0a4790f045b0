//! Graceful shutdown, and the end of a listener a reload removed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Server, lock};
use crate::listener::Listener;

impl Server {
    /// Begins graceful shutdown (idempotent): stop accepting now, close each
    /// listener's remaining connections after its `shutdown_timeout`.
    pub fn shutdown(&self) {
        // SeqCst, paired with the load after a reload's switch: the stop
        // sees the new snapshot, or the reload sees the stop.
        if !self.ready.swap(false, Ordering::SeqCst) {
            return;
        }
        tracing::info!("shutting down: no longer accepting");
        self.stop_accepting.cancel();
        self.accept_tasks.close();
        self.connections.close();
        self.stop_snapshot(&self.current.load_full());
    }

    /// The stop of one snapshot: its health checks end, its listeners
    /// drain, and their connections are closed after `shutdown_timeout`.
    /// Run again for a snapshot a reload switched to as the stop began.
    pub(super) fn stop_snapshot(&self, snapshot: &super::Snapshot) {
        self.probes.stop();
        for l in &snapshot.listeners {
            l.drain.cancel();
            let kill = l.kill.clone();
            let grace = l.shutdown_timeout;
            let name = l.name.clone();
            let stats = Arc::clone(&l.stats);
            let connections = self.connections.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = connections.wait() => {}
                    () = tokio::time::sleep(grace) => {
                        let open = stats.connections_active.load(Ordering::Relaxed);
                        if open > 0 {
                            tracing::warn!(listener = %name, open, "shutdown_timeout reached; closing connections");
                        }
                        kill.cancel();
                        stats.live.kill();
                    }
                }
            });
        }
    }

    /// Waits until shutdown has completed: accept loops stopped, every
    /// connection ended, and every transition written to the state file.
    /// Call [`Server::shutdown`] first.
    pub async fn wait(&self) {
        self.accept_tasks.wait().await;
        self.connections.wait().await;
        if let Some(p) = &self.persistence {
            p.flush().await;
        }
    }

    /// Open connections across all listeners.
    pub fn active_connections(&self) -> usize {
        self.connections.len()
    }

    /// Closes every open connection now (a second shutdown signal), those
    /// of listeners a reload removed included.
    pub fn close_all(&self) {
        self.shutdown();
        for l in self.current.load().listeners.iter() {
            l.kill.cancel();
            l.stats.live.kill();
        }
        for r in self.retiring() {
            r.kill.cancel();
            r.stats.live.kill();
        }
    }

    /// The listeners a reload removed whose connections still drain.
    pub(super) fn retiring(&self) -> Vec<Retiring> {
        let mut retiring = lock(&self.retiring);
        retiring.retain(Retiring::draining);
        retiring.clone()
    }

    /// A listener removed by a reload: its sockets are closed already; its
    /// connections get `shutdown_timeout` to finish.
    pub(super) fn retire(&self, gone: &Arc<Listener>) {
        let open = gone.stats.connections_active.load(Ordering::Relaxed);
        tracing::info!(listener = %gone.name, open, "listener removed; draining its connections");
        gone.drain.cancel();
        {
            let mut retiring = lock(&self.retiring);
            retiring.retain(Retiring::draining);
            retiring.push(Retiring {
                name: gone.name.clone(),
                stats: Arc::clone(&gone.stats),
                kill: gone.kill.clone(),
            });
        }
        let kill = gone.kill.clone();
        // Weak: the stats live as long as a connection holds them, not for
        // the whole grace (see `Retiring::draining`).
        let stats = Arc::downgrade(&gone.stats);
        let grace = gone.shutdown_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            kill.cancel();
            if let Some(stats) = stats.upgrade() {
                stats.live.kill();
            }
        });
    }
}

/// A listener a reload removed, as its connections need it: what every
/// generation of it shares (a reload or a runtime change builds a new
/// `Listener` each time, and a connection holds the one that accepted it,
/// so the last generation alone may be gone while older ones still run).
#[derive(Debug, Clone)]
pub(super) struct Retiring {
    pub(super) name: String,
    pub(super) stats: Arc<crate::listener::ListenerStats>,
    pub(super) kill: tokio_util::sync::CancellationToken,
}

impl Retiring {
    /// Whether some generation of the listener is still held (by one of its
    /// connections): the stats are shared by all of them and this record.
    fn draining(&self) -> bool {
        Arc::strong_count(&self.stats) > 1
    }
}
