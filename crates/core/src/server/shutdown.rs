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
        let retiring = self.retiring();
        for l in self.current.load().listeners.iter().chain(&retiring) {
            l.kill.cancel();
            l.stats.live.kill();
        }
    }

    /// The listeners a reload removed whose connections still drain.
    pub(super) fn retiring(&self) -> Vec<Arc<Listener>> {
        lock(&self.retiring)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    }

    /// A listener removed by a reload: its sockets are closed already; its
    /// connections get `shutdown_timeout` to finish.
    pub(super) fn retire(&self, gone: &Arc<Listener>) {
        let open = gone.stats.connections_active.load(Ordering::Relaxed);
        tracing::info!(listener = %gone.name, open, "listener removed; draining its connections");
        gone.drain.cancel();
        {
            let mut retiring = lock(&self.retiring);
            retiring.retain(|l| l.strong_count() > 0);
            retiring.push(Arc::downgrade(gone));
        }
        let kill = gone.kill.clone();
        let stats = Arc::clone(&gone.stats);
        let grace = gone.shutdown_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            kill.cancel();
            stats.live.kill();
        });
    }
}
