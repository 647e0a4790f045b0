//! `GET /api/v1/events`: backend transitions, tier changes, reloads and
//! firewall rules as server-sent events, each the control API's `Event`
//! message as JSON, named by its kind (`backend`, `tier`, `reload`,
//! `firewall`).
//!
//! Streams take at most half of `admin.max_connections`; past that a new
//! one is refused with 503, so that streams alone cannot take the room
//! readiness probes, scrapes and changes need.
//!
//! A reader never slows weir: each stream has a bounded queue, filled
//! without waiting. A reader that lets it fill, or that falls behind the
//! journal itself, is cut off: its connection is closed at once and counted
//! (`weir_admin_event_streams_cut_total`); an `EventSource` reconnects by
//! itself and reads the current state again.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::extract::State;
use axum::http::{Extensions, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use weir_telemetry::{Kind, Writer};

use super::api::failure;
use super::{AppState, Cut};
use crate::grpc::event_message;
use crate::pb::v1::event::Kind as EventKind;

/// Events queued for one reader before it is cut off.
const QUEUE: usize = 256;
/// A comment this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often a quiet stream says something: every 15 s, or twice within
/// `admin.idle_timeout` when that is shorter, so that weir's own idle timeout
/// never cuts it.
pub(super) fn keep_alive(idle_timeout: Duration) -> Duration {
    KEEP_ALIVE
        .min(idle_timeout / 2)
        .max(Duration::from_millis(1))
}

/// The event streams of the JSON API, for `/metrics`.
#[derive(Debug, Default)]
pub struct EventStats {
    active: AtomicI64,
    cut: AtomicU64,
}

impl EventStats {
    /// Streams open now.
    pub fn active(&self) -> i64 {
        self.active.load(Relaxed)
    }

    /// Streams closed because their reader fell behind.
    pub fn cut(&self) -> u64 {
        self.cut.load(Relaxed)
    }

    pub fn write(&self, w: &mut Writer) {
        w.family(
            "weir_admin_event_streams_active",
            Kind::Gauge,
            "Open /api/v1/events streams.",
        );
        w.sample("weir_admin_event_streams_active", &[], self.active());
        w.family(
            "weir_admin_event_streams_cut",
            Kind::Counter,
            "/api/v1/events streams closed because their reader fell behind.",
        );
        w.sample("weir_admin_event_streams_cut_total", &[], self.cut());
    }
}

/// Counts a stream open for as long as it lives.
struct Open(Arc<crate::Stats>);

impl Open {
    /// A place for one more stream, if fewer than `max` are open.
    fn new(stats: Arc<crate::Stats>, max: usize) -> Option<Open> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        if stats.events.active.fetch_add(1, Relaxed) >= max {
            stats.events.active.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Open(stats))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.events.active.fetch_sub(1, Relaxed);
    }
}

/// A stream refused for want of a place: 503, to be tried again later.
fn full(why: &str) -> Response {
    let mut refused = failure(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
    refused.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        "5".parse().expect("a number"),
    );
    refused
}

pub(super) async fn stream(State(state): State<Arc<AppState>>, extensions: Extensions) -> Response {
    let Some(server) = state.server() else {
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "starting: the first probe round is running",
        );
    };
    // A stream holds its connection for as long as it likes (weir's own
    // keep-alive comments keep it from going idle): half of the endpoint's
    // connections at most, so that the others stay for /readyz, /metrics
    // and changes.
    let max = state.max_streams;
    let Some(open) = Open::new(Arc::clone(&state.stats), max) else {
        return full(&format!(
            "{max} event streams are open, half of admin.max_connections; try again later"
        ));
    };
    // Half of the places at most for one client, so that one that opens
    // streams without end leaves the others room for the status page.
    let per_client = u32::try_from(max / 2).unwrap_or(u32::MAX).max(1);
    let client = match extensions.get::<super::Peer>() {
        Some(&super::Peer(ip)) => {
            let Some(place) = crate::conn::Clients::enter(&state.streaming, ip, per_client) else {
                return full(&format!(
                    "this client has {per_client} event streams open, the most one client may; \
                     close one first"
                ));
            };
            Some(place)
        }
        None => None,
    };
    let mut events = server.journal().subscribe();
    let (tx, rx) = mpsc::channel(QUEUE);
    let cut = extensions.get::<Cut>().cloned();
    let stop = state.stop.clone();
    tokio::spawn(async move {
        let behind = loop {
            let event = tokio::select! {
                () = stop.cancelled() => break None,
                () = tx.closed() => break None,
                e = events.recv() => e,
            };
            match event {
                Ok(e) => match tx.try_send(sse_event(&e)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => break Some(QUEUE as u64),
                    Err(mpsc::error::TrySendError::Closed(_)) => break None,
                },
                Err(broadcast::error::RecvError::Lagged(lost)) => break Some(lost),
                Err(broadcast::error::RecvError::Closed) => break None,
            }
        };
        if let Some(behind) = behind {
            open.0.events.cut.fetch_add(1, Relaxed);
            tracing::warn!(
                behind,
                "an /api/v1/events reader fell behind; its connection is closed"
            );
            if let Some(Cut(cut)) = cut {
                cut.cancel();
            }
        }
        drop((open, client));
    });
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.keep_alive))
        .into_response()
}

fn sse_event(e: &weir_core::events::Event) -> SseEvent {
    let message = event_message(e);
    let name = match message.kind {
        Some(EventKind::Backend(_)) => "backend",
        Some(EventKind::Tier(_)) => "tier",
        Some(EventKind::Reload(_)) => "reload",
        Some(EventKind::Firewall(_)) => "firewall",
        None => "unknown",
    };
    let event = SseEvent::default().event(name);
    // Serializing these messages cannot fail (string keys, no floats).
    event
        .json_data(&message)
        .unwrap_or_else(|_| SseEvent::default().event(name).data("{}"))
}
