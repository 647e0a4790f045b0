//! The admin HTTP endpoint (`[admin] http`): `/metrics`, `/healthz`,
//! `/readyz`, the JSON API under `/api/v1/` ([`api`], the gRPC control API's
//! calls over HTTP with the same token), its server-sent event stream
//! ([`events`]) and the status page ([`page`]), every answer with the headers
//! of [`security`].
//!
//! It serves from before the first probe round: until the server exists
//! (see [`Handle`]) `/healthz` answers, `/readyz` says "starting" with a 503
//! and everything else answers 503 too.

mod api;
mod events;
mod page;
mod security;

pub use events::EventStats;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_core::Server;

use crate::Stats;
use crate::conn::{self, Closed, Limits};
use crate::grpc::ControlService;
use crate::metrics::{self, BuildInfo};

/// The running server, once it has started. The admin endpoint is served
/// from before the first probe round, while the server does not exist yet.
#[derive(Debug, Default)]
pub struct Handle(OnceLock<Arc<Server>>);

impl Handle {
    /// A handle to a server that is already running.
    pub fn running(server: Arc<Server>) -> Arc<Handle> {
        let h = Handle::default();
        h.set(server);
        Arc::new(h)
    }

    /// The server has started; later calls change nothing.
    pub fn set(&self, server: Arc<Server>) {
        let _ = self.0.set(server);
    }

    pub fn get(&self) -> Option<&Arc<Server>> {
        self.0.get()
    }
}

/// A bound, not yet serving, admin listener.
#[derive(Debug)]
pub struct AdminListener {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl AdminListener {
    /// Binds the admin address. Call inside a tokio runtime.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<AdminListener> {
        // SO_REUSEPORT, like the listeners: a second weir can start beside a
        // draining one.
        AdminListener::from_std(weir_core::bind(addr)?)
    }

    /// An admin listener on a socket [`weir_core::bind_only`] bound, made
    /// to listen now. Call inside a tokio runtime.
    pub fn from_std(socket: std::net::TcpListener) -> std::io::Result<AdminListener> {
        weir_core::listen(&socket)?;
        let listener = tokio::net::TcpListener::from_std(socket)?;
        let addr = listener.local_addr()?;
        Ok(AdminListener { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves HTTP/1.1 within `limits` until `stop` is cancelled; then lets
    /// the requests in flight finish (an event stream ends at once).
    pub async fn serve(
        self,
        handle: Arc<Handle>,
        build: BuildInfo,
        stats: Arc<Stats>,
        limits: Limits,
        first: weir_config::Admin,
        stop: CancellationToken,
    ) {
        let app = router(Arc::new(AppState {
            handle,
            first,
            build,
            stats: Arc::clone(&stats),
            stop: stop.clone(),
            control: OnceLock::new(),
            max_streams: (limits.max_connections as usize / 2).max(1),
            streaming: Arc::default(),
            body_timeout: limits.handshake_timeout,
            keep_alive: events::keep_alive(limits.idle_timeout),
        }));
        let connections = TaskTracker::new();
        let endpoint = Arc::clone(&stats.conns.http);
        conn::accept_loop(
            self.listener,
            limits,
            Arc::clone(&endpoint),
            stop.clone(),
            |io, peer| {
                let app = TowerToHyperService::new(app.clone());
                // Whether a request came, to name a header timeout: before the
                // first request it is a handshake timeout, later the kept-alive
                // connection went idle.
                let served = Arc::new(AtomicBool::new(false));
                // Cancelled by a handler that wants the connection gone now:
                // an event stream whose reader fell behind.
                let cut = CancellationToken::new();
                let service = {
                    let (served, cut) = (Arc::clone(&served), cut.clone());
                    hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                        served.store(true, Relaxed);
                        request.extensions_mut().insert(Cut(cut.clone()));
                        request.extensions_mut().insert(Peer(peer.ip()));
                        app.call(request)
                    })
                };
                let endpoint = Arc::clone(&endpoint);
                let stop = stop.clone();
                connections.spawn(async move {
                    let mut http = hyper::server::conn::http1::Builder::new();
                    // The whole header of each request within the handshake
                    // timeout, not only its first byte; hyper also applies it to
                    // the wait for the next request on a kept-alive connection,
                    // as HAProxy applies `timeout http-request` when no
                    // `timeout http-keep-alive` is set.
                    http.timer(TokioTimer::new())
                        .header_read_timeout(limits.handshake_timeout);
                    let conn = http.serve_connection(TokioIo::new(io), service);
                    tokio::pin!(conn);
                    let ended = tokio::select! {
                        r = conn.as_mut() => r,
                        // Dropping the connection closes the socket, whatever
                        // the reader has not taken yet.
                        () = cut.cancelled() => return,
                        () = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    // After a request was served, hyper's timeout is the wait
                    // for the next one on a kept-alive connection: an ordinary
                    // close (a scrape every 15 s meets it), not a refusal.
                    if ended.as_ref().is_err_and(hyper::Error::is_timeout) && !served.load(Relaxed)
                    {
                        endpoint.close(Closed::HandshakeTimeout);
                    }
                });
            },
        )
        .await;
        connections.close();
        connections.wait().await;
    }
}

/// Closes the connection a request came on, as soon as it is cancelled.
#[derive(Debug, Clone)]
struct Cut(CancellationToken);

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
struct Peer(std::net::IpAddr);

#[derive(Debug)]
struct AppState {
    handle: Arc<Handle>,
    /// `[admin]` of the config weir started with: whose `hosts` are answered
    /// until the first probe round is done and the server's config is there.
    first: weir_config::Admin,
    build: BuildInfo,
    stats: Arc<Stats>,
    stop: CancellationToken,
    control: OnceLock<ControlService>,
    /// Event streams open at once at most: half of the endpoint's
    /// connections, as it was started (a reload changes neither); one
    /// client (an IPv4 address or an IPv6 /64) holds half of them at most.
    max_streams: usize,
    /// The open event streams by client.
    streaming: Arc<crate::conn::Clients>,
    /// A change's body must arrive within this (`handshake_timeout`).
    body_timeout: std::time::Duration,
    /// How often an event stream says something when no event comes.
    keep_alive: std::time::Duration,
}

impl AppState {
    fn server(&self) -> Option<&Arc<Server>> {
        self.handle.get()
    }

    /// The control API's calls, once the server runs.
    fn control(&self) -> Option<&ControlService> {
        let server = self.server()?;
        Some(self.control.get_or_init(|| {
            ControlService::new(
                Arc::clone(server),
                self.build.clone(),
                &self.stats,
                self.stop.clone(),
            )
        }))
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(page::routes())
        .nest("/api/v1", api::routes())
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            known_hosts_only,
        ))
        .layer(axum::middleware::map_response(security::headers))
        .with_state(state)
}

/// Answers only requests addressed to this machine by an IP address,
/// `localhost` or a name in `admin.hosts` (see `security::addressed`): a
/// page of another site, its name made to point at the endpoint, would
/// otherwise read the API as the operator's browser (reads need no token),
/// and without a token make changes too. Liveness and readiness, which tell
/// nothing, answer whatever the name (a health checker may send its own).
async fn known_hosts_only(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let probe = matches!(request.uri().path(), "/healthz" | "/readyz");
    let known = match security::addressed(request.headers()) {
        security::Addressed::Directly => true,
        security::Addressed::ByName(name) => match state.server() {
            Some(s) => s.snapshot().config.admin.answers_host(&name),
            None => state.first.answers_host(&name),
        },
        security::Addressed::Malformed => false,
    };
    if !probe && !known {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this admin endpoint answers only requests addressed to an IP address, \
             localhost or a name listed in admin.hosts\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// What everything but the liveness and readiness answers say before the
/// first probe round is done.
fn starting() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        "starting: the first probe round is running\n",
    )
        .into_response()
}

async fn metrics_handler(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(server) = state.server() else {
        return starting();
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = metrics::Format::from_accept(accept);
    let body = metrics::render_with(server, &state.build, Some(&state.stats), format);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// 200 while the data plane accepts traffic; 503 until the first probe round
/// is done (so nothing is sent to a weir that does not know its backends
/// yet) and once shutdown has begun (so a load balancer in front stops
/// sending new connections before the listeners close).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.server() {
        None => starting(),
        Some(s) if s.is_ready() => (StatusCode::OK, "ready\n").into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    /// The router of an endpoint whose server has not started yet.
    fn starting_router() -> Router {
        router_of(Arc::new(Handle::default()))
    }

    fn router_of(handle: Arc<Handle>) -> Router {
        router(Arc::new(AppState {
            handle,
            first: weir_config::Admin {
                hosts: vec!["lb1.example.com".to_owned()],
                ..weir_config::Admin::default()
            },
            build: BuildInfo {
                version: "0.0.0".into(),
                revision: "test".into(),
            },
            stats: Arc::default(),
            stop: CancellationToken::new(),
            control: OnceLock::new(),
            max_streams: 32,
            streaming: Arc::default(),
            body_timeout: std::time::Duration::from_secs(10),
            keep_alive: std::time::Duration::from_secs(15),
        }))
    }

    async fn answer(method: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        answer_to("127.0.0.1:9900", method, path).await
    }

    async fn answer_to(host: &str, method: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        answer_of(starting_router(), host, method, path).await
    }

    async fn answer_of(
        router: Router,
        host: &str,
        method: &str,
        path: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host)
            .body(Body::empty())
            .expect("request");
        let r = router.oneshot(request).await.expect("answer");
        let (parts, body) = r.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// A percent-encoded path segment that is not UTF-8 is refused as JSON,
    /// like every other error of the API.
    #[tokio::test]
    async fn a_path_segment_that_is_not_utf8_is_a_json_error() {
        for path in [
            "/api/v1/pools/%FF/history",
            "/api/v1/pools/p/backends/%C3%28",
        ] {
            let (status, headers, body) = answer("GET", path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{path}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(v["error"]["code"], "invalid_argument", "{body}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("UTF-8")),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn before_the_first_probe_round_only_liveness_says_yes() {
        assert_eq!(answer("GET", "/healthz").await.0, StatusCode::OK);
        let (status, headers, body) = answer("GET", "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("first probe round"), "{body}");
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(
            answer("GET", "/metrics").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        for (method, path) in [
            ("GET", "/api/v1/status"),
            ("GET", "/api/v1/pools"),
            ("GET", "/api/v1/events"),
            ("POST", "/api/v1/reload"),
            ("POST", "/api/v1/pools/p/backends/b/drain"),
        ] {
            let (status, _, body) = answer(method, path).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(v["error"]["code"], "unavailable", "{method} {path}: {body}");
        }
        // The page itself loads, and shows what the API says once it answers.
        assert_eq!(answer("GET", "/").await.0, StatusCode::OK);
    }

    /// Without a token, a request addressed by a name is refused before
    /// anything else (DNS rebinding); one addressed by IP or localhost is
    /// answered.
    #[tokio::test]
    async fn without_a_token_only_requests_addressed_directly_are_answered() {
        for path in ["/", "/api/v1/status", "/api/v1/events", "/metrics"] {
            let (status, headers, body) = answer_to("evil.example:9900", "GET", path).await;
            assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{path}");
            assert!(body.contains("admin.hosts"), "{body}");
            assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY", "{path}");
        }
        let (status, _, _) = answer_to("evil.example:9900", "POST", "/api/v1/reload").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(
            answer_to("evil.example:9900", "GET", "/healthz").await.0,
            StatusCode::OK,
            "liveness tells nothing"
        );
        // A name of `admin.hosts` is answered while weir starts (here: 503
        // until the first probe round is done), not told it is unknown.
        let (status, _, body) = answer_to("lb1.example.com:9900", "GET", "/metrics").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(
            answer_to("localhost:9900", "GET", "/").await.0,
            StatusCode::OK
        );
        assert_eq!(answer_to("[::1]:9900", "GET", "/").await.0, StatusCode::OK);
    }

    /// A name in `admin.hosts` is answered, exact or by a wildcard of one
    /// label; any other name is refused, with a token as without one (reads
    /// need no token, so a rebinding page could read them).
    #[tokio::test]
    async fn names_are_answered_only_when_listed_in_hosts() {
        let token = std::env::temp_dir().join(format!("weir-hosts-token-{}", std::process::id()));
        std::fs::write(&token, "0123456789abcdef0123\n").expect("token");
        let config = weir_config::load_str(&format!(
            "[admin]\nhosts = [\"lb1.example\", \"*.corp.example\"]\ntoken_file = {:?}\n\
             [[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[listeners.routes]]\n\
             name = \"r\"\npool = \"p\"\n[[pools]]\nname = \"p\"\n[[pools.backends]]\n\
             address = \"127.0.0.1:9\"\n",
            token.display().to_string()
        ))
        .expect("config");
        let _ = std::fs::remove_file(&token);
        let server = weir_core::Server::start(&config).await.expect("start");
        let router = router_of(Handle::running(server));
        for host in [
            "lb1.example:9900",
            "LB1.Example.",
            "a.corp.example:9900",
            "127.0.0.1:9900",
        ] {
            let (status, _, body) = answer_of(router.clone(), host, "GET", "/api/v1/status").await;
            assert_eq!(status, StatusCode::OK, "{host}: {body}");
        }
        for host in [
            "evil.example:9900",
            "lb1.example.evil:9900",
            "corp.example",
            "a.b.corp.example",
        ] {
            for (method, path) in [
                ("GET", "/api/v1/connections"),
                ("GET", "/"),
                ("POST", "/api/v1/reload"),
            ] {
                let (status, _, body) = answer_of(router.clone(), host, method, path).await;
                assert_eq!(
                    status,
                    StatusCode::MISDIRECTED_REQUEST,
                    "{host} {path}: {body}"
                );
            }
            let (status, _, _) = answer_of(router.clone(), host, "GET", "/readyz").await;
            assert_eq!(status, StatusCode::OK, "{host}: readiness tells nothing");
        }
    }

    #[tokio::test]
    async fn every_answer_forbids_framing_and_sniffing() {
        for (method, path, status) in [
            ("GET", "/", StatusCode::OK),
            ("GET", "/status", StatusCode::OK),
            ("GET", "/assets/weir.js", StatusCode::OK),
            ("GET", "/assets/weir.css", StatusCode::OK),
            ("GET", "/api/v1/openapi.json", StatusCode::OK),
            ("GET", "/healthz", StatusCode::OK),
            ("GET", "/nothing", StatusCode::NOT_FOUND),
            ("GET", "/api/v1/nothing", StatusCode::NOT_FOUND),
            ("GET", "/api/v1/reload", StatusCode::METHOD_NOT_ALLOWED),
            ("DELETE", "/api/v1/pools", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let (got, h, _) = answer(method, path).await;
            assert_eq!(got, status, "{method} {path}");
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
            assert_eq!(h[header::CACHE_CONTROL], "no-store", "{path}");
        }
        let (_, h, _) = answer("GET", "/assets/weir.js").await;
        assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    }

    #[test]
    fn the_page_needs_nothing_from_the_network() {
        for (name, text) in [
            ("index.html", page::INDEX),
            ("weir.js", page::SCRIPT),
            ("weir.css", page::STYLE),
        ] {
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(scheme), "{name} refers to {scheme}");
            }
        }
        // No inline script or style: the CSP would block them.
        assert!(!page::INDEX.contains("<script>"));
        assert!(!page::INDEX.contains("<style"));
        assert!(!page::INDEX.contains(" style="));
        assert!(!page::INDEX.contains(" onclick="));
    }

    #[test]
    fn the_openapi_document_is_json_and_names_every_change_as_a_post() {
        let doc: serde_json::Value = serde_json::from_str(api::OPENAPI).expect("json");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        for action in ["drain", "enable", "disable", "weight"] {
            let p = &paths[&format!("/pools/{{pool}}/backends/{{backend}}/{action}")];
            assert!(
                p.get("post").is_some() && p.get("get").is_none(),
                "{action}"
            );
        }
        assert!(paths["/reload"].get("get").is_none());
    }
}
