//! One request through the proxy:
//!
//! 1. refuse what must not be forwarded: an ambiguous message (both
//!    `Content-Length` and `Transfer-Encoding`), a declared body over
//!    `max_body_bytes`;
//! 2. the first rule that matches picks the pool (none: 404);
//! 3. the headers are made ready for the backend (hop-by-hop removed,
//!    forwarding headers and a request id set, `Host` kept);
//! 4. a backend is picked and a connection taken from its pool; a connect
//!    failure moves the request to another backend (nothing of it was sent),
//!    within the pool's `retries`; a kept-alive connection that fails before
//!    the request was written, or with a bodiless idempotent request before
//!    any answer, is replaced by a new one once;
//! 5. the response (or weir's own answer) streams back; its end is counted
//!    and logged (see `exchange`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::header::{CONTENT_LENGTH, HOST, HeaderValue, TRANSFER_ENCODING, UPGRADE, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;
use weir_config::HttpProtocol;
use weir_core::Reason;
use weir_core::listener::Listener;
use weir_core::pool::Replay;

use crate::body::{RequestBody, ResponseBody};
use crate::errors;
use crate::exchange::{BodyCount, Exchange, Facts};
use crate::headers::{self, Forwarding, X_REQUEST_ID};
use crate::route::{RoutePool, RouteState, Slot};
use crate::serve::ConnState;
use crate::upgrade;
use crate::upstream::{Lease, SendError};

/// How long a kept connection must have rested before a request on it is
/// copied for a replay (see `forward`).
const RACE_REST: std::time::Duration = std::time::Duration::from_millis(500);

/// What the requests of one client connection share.
#[derive(Debug)]
pub(crate) struct Cx {
    pub(crate) slot: Arc<Slot>,
    pub(crate) listener: Arc<Listener>,
    pub(crate) route: usize,
    pub(crate) client: SocketAddr,
    /// The address the client connected to (`${server_ip}`), when a header
    /// rule of the route asks for it: the PROXY header's destination, else
    /// the socket's own address.
    pub(crate) server: Option<SocketAddr>,
    /// The client's address as `X-Forwarded-For` carries it.
    pub(crate) client_value: HeaderValue,
    pub(crate) conn: Arc<ConnState>,
    /// How the client reached weir: `http` or `https`.
    pub(crate) proto: &'static str,
    pub(crate) version: &'static str,
    /// The connection's live entry: an operator's close ends a WebSocket
    /// relayed on it too.
    pub(crate) live: Option<Arc<weir_core::live::Live>>,
    /// What the TLS handshake agreed on, on a listener with other routes
    /// (see [`misdirected`]).
    pub(crate) tls: Option<Box<TlsName>>,
}

/// The name and protocol a TLS connection was set up for.
#[derive(Debug)]
pub(crate) struct TlsName {
    /// The SNI, lower-cased.
    pub(crate) sni: Option<String>,
    /// The ALPN protocol agreed on.
    pub(crate) alpn: Option<Vec<u8>>,
    /// Which routes' ALPN conditions the client's offer met.
    pub(crate) alpn_held: weir_core::listener::AlpnHeld,
}

/// Whether a request for `host` (a lower-case name, no port) came on a TLS
/// connection whose SNI reached another route than the one `host` leads
/// to: a client that set up TLS for one name (and the route's client
/// certificate check, or none) cannot ask another route's name on it
/// (RFC 9110 §15.5.20; browsers then open a connection for that name).
/// An address as host names no route by SNI, and is let be. The routes are
/// the listener's when the connection was accepted, as its own route was
/// picked from them: a reload's new routes apply to connections it accepts.
fn misdirected(cx: &Cx, host: &str) -> bool {
    let Some(tls) = &cx.tls else {
        return false;
    };
    if tls.sni.as_deref() == Some(host)
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
    {
        return false;
    }
    cx.listener
        .route_for_name(cx.client.ip(), host, tls.alpn_held, tls.alpn.as_deref())
        != Some(cx.route)
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps two copies of the request"
)]
pub(crate) fn handle(
    cx: Arc<Cx>,
    mut req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send {
    // An async block rather than an async fn: the fn would keep a second copy
    // of the request in its future, which is moved whole (and boxed, for an
    // HTTP/2 stream) for every request.
    async move {
        let state = cx.slot.current.load_full();
        let mut x = Box::new(Exchange::start(
            Arc::clone(&cx.listener),
            cx.route,
            Arc::clone(&cx.conn),
            cx.client,
            &req,
            // The request's own (an HTTP/1.0 one on a connection of HTTP/1).
            match req.version() {
                Version::HTTP_10 => "HTTP/1.0",
                _ => cx.version,
            },
        ));
        x.access_log = state.access_log;
        // What the host is: `:authority` (HTTP/2, absolute form), else `Host`.
        // Two `Host`s are refused below (RFC 9112 §3.2: answered 400): rules,
        // policies and the log read the first, a backend might read the other.
        let (host_header, two_hosts) = {
            let mut hosts = req.headers().get_all(HOST).iter();
            (hosts.next().cloned(), hosts.next().is_some())
        };
        let host: Option<HeaderValue> = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => host_header.clone(),
        };
        // HTTP/1.1 and HTTP/2 requests name their host (RFC 9112 §3.2, RFC
        // 9113 §8.3.1); and an HTTP/2 request's `Host` beside `:authority`
        // names the same one (RFC 9113 §8.3.1: malformed otherwise), or
        // rules and policies would read one and the backend the other.
        let unnamed = host.is_none() && req.version() >= Version::HTTP_11;
        let split = req.version() == Version::HTTP_2
            && req
                .uri()
                .authority()
                .zip(host_header.as_ref())
                .is_some_and(|(a, h)| {
                    let default = if req.uri().scheme() == Some(&Scheme::HTTPS) {
                        &b"443"[..]
                    } else {
                        b"80"
                    };
                    !same_authority(a.as_str().as_bytes(), h.as_bytes(), default)
                });
        x.host = host_header;
        x.user_agent = req.headers().get(USER_AGENT).cloned();
        let grpc = errors::is_grpc(req.headers());
        // A failure inside the response can still reach an HTTP/2 gRPC
        // client as a status, in trailers.
        let grpc_trailers =
            grpc && req.version() == Version::HTTP_2 && errors::is_native_grpc(req.headers());
        if grpc_trailers {
            x.deadline = req
                .headers()
                .get("grpc-timeout")
                .and_then(|v| weir_wire::grpc_timeout::parse(v.as_bytes()));
        }
        // What weir's own answers need: the route's (and, once one
        // matched, the rule's) `response_headers` marked `always`.
        macro_rules! own {
            ($rule:expr) => {
                Own {
                    grpc,
                    cx: &cx,
                    route: &state.response_headers,
                    rule: $rule.map(|r: &crate::rules::Rule| &r.response_headers),
                }
            };
        }
        let trusted = state.trusts(cx.client.ip());
        let request_id = headers::trusted_request_id(req.headers(), trusted)
            .cloned()
            .unwrap_or_else(headers::new_request_id);
        x.request_id = Some(request_id.clone());
        let trace = state
            .tracing
            .as_ref()
            .map(|t| crate::trace::next(t, req.headers()));
        x.trace_id = trace.map(|t| t.trace_id);
        if let (Some(t), Some(e)) = (trace, &state.exporter)
            && t.sampled()
        {
            x.recording = Some(Box::new(crate::trace::span::Recording::new(
                Arc::clone(e),
                t,
            )));
        }

        let admitted = !cx.slot.requests_limited.load(Relaxed)
            || match &*cx.slot.firewall.load() {
                Some(running) => running.admit_request(cx.client.ip()),
                None => cx.listener.firewall.admit_request(cx.client.ip()),
            };
        if !admitted {
            cx.listener
                .stats
                .blocked(weir_core::firewall::Block::RequestRate);
            return Ok(answer(Reason::RateLimit, own!(None), x));
        }
        // Two `Host`s, or a host that is not a name or an address (user
        // info, spaces, slashes): rules and policies would read it one way
        // and a backend that parses it as a URL another.
        // Checked once: where the name ends (no port, no trailing dot) and
        // whether it needs lower-casing, for the rules below.
        let (odd_host, host_part) = match host.as_ref().filter(|h| !h.is_empty()) {
            Some(h) => match weir_wire::name::authority_host(h.as_bytes()) {
                Some(part) => (false, Some(part)),
                None => (true, None),
            },
            None => (false, None),
        };
        if two_hosts || odd_host || unnamed || split {
            return Ok(answer(Reason::BadRequest, own!(None), x));
        }
        if let Err(reason) = admissible(&req, state.max_body_bytes) {
            return Ok(answer(reason, own!(None), x));
        }
        // Rules, policies and the backend all see the normalised path.
        if normalize_path(&mut req, state.encoded_slashes).is_err() {
            return Ok(answer(Reason::BadRequest, own!(None), x));
        }
        let name = host.as_ref().zip(host_part).and_then(|(h, part)| {
            crate::rules::host_name(std::str::from_utf8(h.as_bytes()).ok()?, part)
        });
        if name.as_deref().is_some_and(|host| misdirected(&cx, host)) {
            return Ok(answer(Reason::Misdirected, own!(None), x));
        }
        // Rules and policies read the path as a servlet container does,
        // without its parameters (`/a;x/admin` is `/a/admin` to Tomcat).
        let bare = weir_wire::path::without_parameters(req.uri().path());
        let matching = bare.as_deref().unwrap_or(req.uri().path());
        let matched = crate::rules::first(
            &state.rules,
            req.method(),
            name.as_deref(),
            matching,
            req.headers(),
            cx.client.ip(),
            req.uri().query(),
        );
        let Some(rule) = matched else {
            return Ok(answer(Reason::NoRule, own!(None), x));
        };
        x.rule = Some(Arc::clone(&rule.name));
        let view = crate::policy::Request {
            method: req.method(),
            host: name.as_deref(),
            path: matching,
            headers: req.headers(),
            client: cx.client.ip(),
        };
        if let Some(p) =
            crate::policy::first_refusal(state.policies.iter().chain(&rule.policies), &view)
        {
            return Ok(refused(p, own!(Some(rule)), x));
        }
        if let Some(r) = &rule.redirect {
            // The rule's prefixes move the path the client is sent to.
            let moved = rule.rewrite.as_ref().map(|rw| {
                let path = rw.apply(req.uri().path());
                match req.uri().query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                }
            });
            let target = match &moved {
                Some(t) => t.as_str(),
                None => req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
            };
            let Some(location) = r.location(cx.proto, name.as_deref(), target) else {
                // No host to send the client to.
                return Ok(answer(Reason::BadRequest, own!(Some(rule)), x));
            };
            x.status = r.status.as_u16();
            let mut response = Response::new(());
            *response.status_mut() = r.status;
            response
                .headers_mut()
                .insert(http::header::LOCATION, location);
            own!(Some(rule)).finish(response.headers_mut(), &x);
            let (parts, ()) = response.into_parts();
            let body = ResponseBody::full(bytes::Bytes::new(), Some(x));
            return Ok(Response::from_parts(parts, body));
        }
        // Forward authentication: the rule's, else the route's.
        let gate = rule.auth.as_ref().or(state.auth.as_ref());
        let mut granted = None;
        if let Some(gate) = gate {
            let span = trace.map(|_| crate::trace::span_id());
            let question = crate::auth::Question {
                method: req.method(),
                uri: req.uri(),
                host: host.as_ref(),
                proto: cx.proto,
                client: cx.client.ip(),
                trusted,
                headers: req.headers(),
                traceparent: trace.zip(span).and_then(|(t, id)| t.header(id)),
            };
            let (verdict, call) = gate.check(&question).await;
            if let (Some(r), Some((outcome, took)), Some(id)) = (&x.recording, call, span) {
                r.auth_call(id, gate.url(), outcome.as_str(), took);
            }
            match verdict {
                crate::auth::Verdict::Allow(headers) => granted = Some(headers),
                crate::auth::Verdict::Deny(d) => return Ok(denied(&d, own!(Some(rule)), x)),
                crate::auth::Verdict::Unavailable => {
                    return Ok(answer(Reason::AuthUnavailable, own!(Some(rule)), x));
                }
                crate::auth::Verdict::Busy => {
                    return Ok(answer(Reason::AuthBusy, own!(Some(rule)), x));
                }
            }
        }
        let Some(target) = state.pools.get(rule.pool) else {
            return Ok(answer(Reason::NoBackend, own!(Some(rule)), x));
        };
        // The backend a sticky cookie names, if any: read before the
        // header rules, which may take the cookie from what the backend gets.
        x.sticky = target
            .sticky
            .as_ref()
            .and_then(|s| s.named(req.headers(), &target.pool))
            .and_then(|n| u32::try_from(n).ok());
        // A WebSocket: its upgrade is taken before the request is forwarded.
        let websocket = if upgrade::wants_websocket(&req) {
            if target.dialer.protocol != HttpProtocol::Http1 {
                // An upgrade is HTTP/1.1's; this pool speaks HTTP/2.
                return Ok(answer(Reason::Protocol, own!(Some(rule)), x));
            }
            let value = req.headers().get(UPGRADE).cloned();
            value.map(|v| (v, hyper::upgrade::on(&mut req)))
        } else {
            None
        };

        // In a block, so that the parts are gone before the await below.
        let (req, upgrading, client_upgrade) = {
            let (mut parts, body) = req.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            let client_upgrade = websocket.map(|(value, on)| {
                upgrade::keep_upgrade(&mut parts.headers, value);
                on
            });
            // hyper answered any `Expect: 100-continue` already, as the body is read.
            parts.headers.remove(http::header::EXPECT);
            // The operator's changes come before weir's own headers, which
            // they cannot name (validation), and the authentication
            // service's, which they cannot override.
            let facts = Facts { x: &x, cx: &cx };
            if !state.request_headers.is_empty() {
                state.request_headers.apply(&mut parts.headers, &facts);
            }
            if !rule.request_headers.is_empty() {
                rule.request_headers.apply(&mut parts.headers, &facts);
            }
            headers::set_forwarding(
                &mut parts.headers,
                &Forwarding {
                    client: cx.client.ip(),
                    client_value: &cx.client_value,
                    trusted,
                    proto: cx.proto,
                    host: host.as_ref(),
                    rfc7239: state.rfc7239,
                },
            );
            parts.headers.insert(X_REQUEST_ID, request_id);
            if let Some(t) = trace {
                // Replaces the client's: one traceparent, with weir's span (the
                // upstream call's, when spans are recorded).
                parts.headers.remove(crate::trace::TRACEPARENT);
                if !t.continued() {
                    parts.headers.remove(crate::trace::TRACESTATE);
                }
                let span = x.recording.as_ref().map_or(t.span, |r| r.upstream);
                if let Some(v) = t.header(span) {
                    parts.headers.insert(crate::trace::TRACEPARENT, v);
                }
            }
            // What an authentication service says about the client replaces
            // whatever the client said under those names, also when the
            // service said nothing under one, could not be asked, or the
            // matched rule asks none.
            headers::strip_identity(&mut parts.headers, &state.identity);
            if let Some(granted) = granted {
                for (name, value) in granted.iter() {
                    parts.headers.append(name.clone(), value.clone());
                }
            }
            let body = RequestBody::new(
                body,
                Arc::clone(&x.body),
                state.max_body_bytes,
                state.timeouts.request_body,
                (!state.identity.is_empty()).then(|| Arc::clone(&state.identity)),
            );
            if let Some(rewrite) = &rule.rewrite {
                let path = rewrite.apply(parts.uri.path());
                if set_path(&mut parts.uri, path).is_err() {
                    return Ok(answer(Reason::BadRequest, own!(Some(rule)), x));
                }
            }
            if let Err(reason) = target_form(&mut parts, target.dialer.protocol, host.as_ref()) {
                return Ok(answer(reason, own!(Some(rule)), x));
            }
            // Boxed: the request waits across several awaits, and each async
            // function would otherwise carry its own copy of it.
            let req = Box::new(Request::from_parts(parts, body));
            (req, client_upgrade.is_some(), client_upgrade)
        };
        // `timeouts.request`, from the request's head: bounds the attempts
        // and then the response body.
        let until = state.timeouts.request.map(|r| deadline(x.started, r));
        match forward(&state, target, &cx, req, &mut x, upgrading, until).await {
            Ok((mut response, lease)) => {
                let switched = client_upgrade.is_some()
                    && response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                if switched {
                    headers::keep_only_the_upgrade(response.headers_mut());
                } else {
                    headers::strip_hop_by_hop(response.headers_mut());
                }
                // A client its cookie did not bring to the backend that
                // answered is told to come back to it.
                if let (Some(sticky), Some((pool, i))) = (&target.sticky, &x.backend)
                    && x.sticky.map(|n| n as usize) != Some(*i)
                    && let Some(b) = pool.backends.get(*i)
                    && let Some(v) = sticky.set_cookie(b.token, cx.proto == "https")
                {
                    response.headers_mut().append(http::header::SET_COOKIE, v);
                }
                let facts = Facts { x: &x, cx: &cx };
                if !state.response_headers.is_empty() {
                    state.response_headers.apply(response.headers_mut(), &facts);
                }
                if !rule.response_headers.is_empty() {
                    rule.response_headers.apply(response.headers_mut(), &facts);
                }
                if switched && let Some(on) = client_upgrade {
                    let idle = state.timeouts.websocket_idle;
                    let ends = upgrade::Ends {
                        kill: cx.listener.kill.clone(),
                        slot: Arc::clone(&cx.slot),
                        grace: cx.listener.shutdown_timeout,
                        live: cx.live.clone(),
                    };
                    // The connection is the relay's now.
                    let held = lease.into_relay();
                    let switched = upgrade::relay(response, on, &cx.conn, idle, ends, x, held);
                    let (parts, _) = switched.into_parts();
                    return Ok(Response::from_parts(
                        parts,
                        ResponseBody::full(bytes::Bytes::new(), None),
                    ));
                }
                let status = response.status().as_u16();
                x.status = status;
                let (mut parts, body) = response.into_parts();
                // weir answers in its own version (RFC 9112 §2.3): an
                // HTTP/1.0 backend's status line would make an HTTP/1.1
                // client's answer close-delimited and its connection end.
                parts.version = http::Version::HTTP_11;
                let body = ResponseBody::upstream(
                    body,
                    state.timeouts.upstream_idle,
                    until,
                    lease,
                    x,
                    grpc_trailers,
                );
                Ok(Response::from_parts(parts, body))
            }
            Err(reason) => {
                let reason = if x.body.over.load(Relaxed) {
                    Reason::BodyTooLarge
                } else {
                    reason
                };
                Ok(answer(reason, own!(Some(rule)), x))
            }
        }
    }
}

/// An answer put aside for another backend's (`retry_on_status`), with its
/// connection and backend: the client's when no other backend answers.
struct Kept {
    response: Response<Incoming>,
    lease: Lease,
    backend: usize,
}

/// Bytes of an answer put aside that are read and dropped, so that its
/// connection can carry another request; a longer body closes it.
const DRAIN_BYTES: usize = 64 * 1024;
/// How long that may take; a slower body closes the connection.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Kept {
    /// An answer put aside that no client will get. An error page is
    /// small: read to its end off the request's path, its HTTP/1.1
    /// connection goes back to the idle list rather than closing, so a
    /// backend answering `retry_on_status` under load is not also made to
    /// accept new connections. An HTTP/2 answer is dropped at once: that
    /// resets its stream only, and frees its place on the connection.
    fn discard(self: Box<Self>) {
        let Kept {
            response, lease, ..
        } = *self;
        if !lease.is_h1() {
            return;
        }
        let mut body = response.into_body();
        tokio::spawn(async move {
            let read = async {
                let mut left = DRAIN_BYTES;
                while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                    let Ok(frame) = frame else {
                        return false;
                    };
                    if let Some(data) = frame.data_ref() {
                        let Some(rest) = left.checked_sub(data.len()) else {
                            return false;
                        };
                        left = rest;
                    }
                }
                true
            };
            let done = tokio::time::timeout(DRAIN_WAIT, read)
                .await
                .unwrap_or(false);
            lease.release(done);
        });
    }
}

/// Picks a backend and gets its response header, trying others while
/// nothing of the request reached one. An answer put aside by
/// `retry_on_status` is the client's when no later attempt gets one: weir's
/// own error never replaces a backend's answer (see [`settle`]).
async fn forward(
    state: &RouteState,
    target: &RoutePool,
    cx: &Cx,
    req: Box<Request<RequestBody>>,
    x: &mut Exchange,
    upgrading: bool,
    until: Option<Instant>,
) -> Result<(Response<Incoming>, Lease), Reason> {
    // Boxed: only a retried request has one, and every request's future
    // would carry its room otherwise.
    let mut kept: Option<Box<Kept>> = None;
    let named = x.sticky.map(|n| n as usize);
    let pool = &target.pool;
    let key = match pool.policy() {
        weir_config::Policy::Maglev => {
            weir_core::upstream::affinity_key(pool.hash_key, cx.client, None)
        }
        _ => 0,
    };
    let bodiless = is_bodiless(&req);
    let replayable = is_idempotent(req.method()) && bodiless;
    let mut req = Some(req);
    let mut tried: Vec<usize> = Vec::new();
    let mut last = Reason::NoBackend;
    // `until`: no attempt starts past it, and none waits past it in the
    // pool's queue, for a connection or for an answer. The client is the
    // slow one only if a backend took some of its body, and the rest had
    // not come (no backend has read any of it while it waited for one).
    let too_late = |x: &Exchange| {
        if x.body.uploading.load(Relaxed) && x.body.moved_at.load(Relaxed) != 0 {
            Reason::IdleTimeout
        } else {
            Reason::UpstreamTimeout
        }
    };
    // `retry_on_status`: such a request's answer may be put aside for
    // another backend's, so a copy of it is kept.
    let status_retry = replayable && !pool.retry_on_status.is_empty();
    // Taken from the pool's retry budget at the first retry, held until
    // the last attempt is done.
    let mut leave = None;
    for attempt in 0..=pool.retries {
        if attempt > 0 && pool.has_other(&tried) && !pool.may_retry(&mut leave) {
            return settle(Err(last), kept, target, x);
        }
        if until.is_some_and(|u| crate::clock::now() >= u) {
            return settle(Err(too_late(x)), kept, target, x);
        }
        // The backend the client's sticky cookie names, on the first
        // attempt, when the pool could pick it (or it keeps its clients):
        // at once when it has room, else after a wait in its own line.
        let named_now = named.filter(|_| attempt == 0);
        let mut wait_until = until;
        let named_got = match named_now {
            Some(n) if pool.take(n) => Some(Ok(n)),
            // Boxed: waiting is the rare path. None: the pool picks, and
            // a wait in its queue ends when the one for the backend would
            // have.
            Some(n) => {
                wait_until = Some(pool.queue_deadline(until));
                Box::pin(pool.wait_for(n, wait_until)).await.transpose()
            }
            None => None,
        };
        let acquired = match named_got {
            Some(got) => got,
            None => pool.acquire(key, &tried, wait_until).await,
        };
        // Counted once it is known where the request goes: a wait that
        // ended without a backend went nowhere.
        if let (Some(n), Ok(got)) = (named_now, &acquired)
            && let Some(b) = pool.backends.get(n)
        {
            let result = usize::from(*got != n);
            b.stats.sticky[result].fetch_add(1, Relaxed);
        }
        let i = match acquired {
            Ok(i) => i,
            Err(Reason::NoBackend) => break,
            Err(Reason::QueueTimeout) if until.is_some_and(|u| Instant::now() >= u) => {
                return settle(Err(too_late(x)), kept, target, x);
            }
            Err(reason) => {
                last = reason;
                break;
            }
        };
        // In flight from here, holding the slot until the exchange ends: a
        // request being connected is load too, and the log names the
        // backend that failed it.
        x.set_backend(pool, i);
        let (Some(b), Some(conns)) = (pool.backends.get(i), target.conns.get(i)) else {
            break;
        };
        if let Some(r) = x.recording.as_mut() {
            r.attempts += 1;
            r.upstream_start.get_or_insert_with(crate::trace::span::now);
        }
        let began = crate::clock::now();
        // Boxed under a deadline only: routes without one keep the
        // connect inline in this future, as small as before.
        let checkout = match until {
            None if upgrading => Box::pin(conns.fresh_upgradeable(&target.dialer)).await,
            None => conns.checkout(&target.dialer, began).await,
            Some(u) => {
                let checkout = Box::pin(async {
                    if upgrading {
                        conns.fresh_upgradeable(&target.dialer).await
                    } else {
                        conns.checkout(&target.dialer, began).await
                    }
                });
                match tokio::time::timeout_at(u, checkout).await {
                    Ok(c) => c,
                    Err(_) => return settle(Err(too_late(x)), kept, target, x),
                }
            }
        };
        let mut lease = match checkout {
            Ok(lease) => lease,
            Err(unopened) => {
                let reason = unopened.reason;
                connect_failed(pool, i, unopened);
                last = reason;
                if !reason.retry() {
                    break;
                }
                // Its slot is not held while the next attempt waits.
                x.let_go();
                tried.push(i);
                continue;
            }
        };
        if !lease.reused {
            b.stats
                .connect_duration
                .observe(crate::clock::elapsed(began));
        }
        pool.on_connect_success(i);
        let Some(request) = req.take() else {
            break;
        };
        // A copy for a replay, only where the race is to be feared: a
        // connection that rested long enough for the backend to close it.
        // One used a moment ago is not closing, and a busy proxy pays
        // nothing.
        let race = replayable && lease.reused && lease.rested >= RACE_REST;
        // An HTTP/2 backend may refuse a stream it will not process (a
        // GOAWAY, REFUSED_STREAM), and hyper does not give the request
        // back then: a bodiless one is kept to go again.
        let h2 = bodiless && !lease.is_h1();
        let mut copy = (race || status_retry || h2).then(|| copy_bodiless(&request));
        let sent_at = crate::clock::now();
        let wait = Wait {
            from: sent_at,
            within: state.timeouts.upstream_response,
            until,
            body: &x.body,
        };
        let outcome = send(&mut lease, request, &wait).await;
        let again = |request, retire| {
            Box::pin(retry_fresh(
                conns,
                &target.dialer,
                request,
                Wait {
                    from: Instant::now(),
                    ..wait
                },
                (&lease, retire),
            ))
        };
        // Counted as the replay goes (`REPLAY_REASONS`).
        let replayed = |why: Replay| b.stats.http_replayed[why as usize].fetch_add(1, Relaxed);
        let outcome = match outcome {
            // The keep-alive race: the backend closed a kept-alive
            // connection as the request went out. Once, on a new one.
            Err(Sent::Not(request)) if lease.reused => {
                replayed(Replay::Closed);
                again(request, true).await
            }
            Err(Sent::Failed) if race => match &copy {
                Some(request) => {
                    replayed(Replay::Closed);
                    again(copy_bodiless(request), true).await
                }
                None => Err(Sent::Failed),
            },
            // The backend did not process it (RFC 9113 §8.7, §6.8): once
            // more, whatever the method. A GOAWAY's connection is done, so
            // it goes on a new one; a refused stream's connection still
            // serves (a backend refuses what is past its stream limit): it
            // is not given up for a new one per refusal.
            Err(Sent::Unprocessed { refused }) => match &copy {
                Some(request) => {
                    replayed(if refused {
                        Replay::RefusedStream
                    } else {
                        Replay::GoAway
                    });
                    again(copy_bodiless(request), !refused).await
                }
                None => Err(Sent::Unprocessed { refused }),
            },
            other => other.map(|r| (r, lease)),
        };
        let result = match outcome {
            Ok((response, lease)) => {
                let took = crate::clock::elapsed(sent_at);
                x.upstream = Some(took);
                let status = response.status();
                if status.as_u16() > 599
                    || (status == http::StatusCode::SWITCHING_PROTOCOLS && !upgrading)
                {
                    // No answer a client can be given (a status HTTP does
                    // not define; a switch nobody asked for, which closes
                    // the connection and cannot travel over HTTP/2): the
                    // backend failed. Its connection is closed with the lease.
                    drop(lease);
                    b.stats.http_response(502, took);
                    pool.on_http_outcome(i, true);
                    return settle(Err(Reason::Protocol), kept, target, x);
                }
                if let Some(r) = x.recording.as_mut() {
                    r.upstream_status = Some(response.status().as_u16());
                }
                b.stats.http_response(response.status().as_u16(), took);
                pool.on_http_outcome(i, response.status().is_server_error());
                // An answer the pool retries on, while another backend
                // may give a better one: this one is put aside (the last
                // one put aside is the client's if no later attempt gets
                // an answer) and the copy goes there. Its backend's slot is
                // given back now: the next attempt may wait for one.
                if status_retry
                    && attempt < pool.retries
                    && pool.retry_on_status.contains(&response.status().as_u16())
                {
                    tried.push(i);
                    if pool.has_other(&tried)
                        && pool.may_retry(&mut leave)
                        && let Some(request) = copy.take()
                    {
                        let older = kept.replace(Box::new(Kept {
                            response,
                            lease,
                            backend: i,
                        }));
                        if let Some(k) = older {
                            k.discard();
                        }
                        x.let_go();
                        b.stats.http_retried.fetch_add(1, Relaxed);
                        req = Some(request);
                        continue;
                    }
                }
                Ok((response, lease))
            }
            // Nothing of it reached this backend: another may take it.
            Err(Sent::Not(request)) => {
                req = Some(request);
                last = Reason::BackendError;
                x.let_go();
                tried.push(i);
                continue;
            }
            // (A client silent mid-body is `request_body`'s: `send` waits on.)
            // The request's own deadline (`timeouts.request`) passed while
            // the client still sent its body: the upload took too long,
            // whoever was slow, and no backend is blamed for it.
            Err(Sent::Timeout { whole: true }) if x.body.uploading.load(Relaxed) => {
                Err(Reason::IdleTimeout)
            }
            // No answer, or the backend stopped taking the body: its failure.
            Err(Sent::Timeout { .. }) => {
                pool.on_http_outcome(i, true);
                Err(Reason::UpstreamTimeout)
            }
            // The client went quiet mid-body for `timeouts.request_body`.
            Err(Sent::Failed) if x.body.stalled.load(Relaxed) => Err(Reason::IdleTimeout),
            // The client's body broke the send (over `max_body_bytes`, or
            // the client failed mid-upload): not the backend's failure, or
            // a client could get healthy backends ejected.
            Err(Sent::Failed) if x.body.ended_by_client() => Err(Reason::ClientError),
            Err(Sent::Failed) => {
                pool.on_http_outcome(i, true);
                Err(Reason::BackendError)
            }
            // Turned away unprocessed, and not sent again: the backend is
            // going away or busy, which its health check is to judge; a
            // graceful GOAWAY across many streams must not eject it.
            Err(Sent::Unprocessed { .. }) => Err(Reason::BackendError),
            // The fresh connection of the race's retry could not be made:
            // a connect failure like any, and nothing of the request was
            // sent, so another backend may take it.
            Err(Sent::Connect(unopened, request)) => {
                let reason = unopened.reason;
                connect_failed(pool, i, unopened);
                if !reason.retry() {
                    return settle(Err(reason), kept, target, x);
                }
                req = Some(request);
                last = reason;
                x.let_go();
                tried.push(i);
                continue;
            }
        };
        return settle(result, kept, target, x);
    }
    settle(Err(last), kept, target, x)
}

/// A request's outcome: an error gives way to the answer put aside for a
/// retry, if there is one; an answer discards it.
fn settle(
    result: Result<(Response<Incoming>, Lease), Reason>,
    kept: Option<Box<Kept>>,
    target: &RoutePool,
    x: &mut Exchange,
) -> Result<(Response<Incoming>, Lease), Reason> {
    match (result, kept) {
        (Err(_), Some(k)) => {
            // Its slot was given back when it was put aside: taken again,
            // as the exchange gives it back at its end.
            target.pool.hold(k.backend);
            x.set_backend(&target.pool, k.backend);
            Ok((k.response, k.lease))
        }
        (result, kept) => {
            if let Some(k) = kept {
                k.discard();
            }
            result
        }
    }
}

/// A connection to backend `i` could not be made: counted, and told to
/// passive health (and to outlier detection when the backend is to blame).
fn connect_failed(pool: &Arc<weir_core::pool::Pool>, i: usize, failed: crate::upstream::Unopened) {
    // A shared HTTP/2 open that failed is its opener's to count, once.
    let (reason, Some(b)) = (
        failed.reason,
        pool.backends.get(i).filter(|_| !failed.shared),
    ) else {
        return;
    };
    b.stats.connect_error(reason);
    if reason == Reason::LocalResources {
        pool.local_shortage(&b.name, "connect", "cannot create a socket");
    }
    pool.on_connect_failure(i, reason);
    if reason.side() == weir_core::Side::Backend {
        pool.on_http_outcome(i, true);
    }
}

enum Sent {
    /// Not written: the request, back.
    Not(Box<Request<RequestBody>>),
    /// Written, then the connection failed before a response header.
    Failed,
    /// Written (or about to be), and turned away by an HTTP/2 backend that
    /// did not process it: `refused` for a refused stream, else a GOAWAY
    /// whose last stream is below it (h2 reports a stream at or below it
    /// that the connection's end cut as a broken pipe, not as the GOAWAY).
    Unprocessed { refused: bool },
    /// No response header within `upstream_response` (the backend stopped
    /// taking the body, or did not answer it), or by the request's own
    /// deadline (`whole`).
    Timeout { whole: bool },
    /// A fresh connection for a retry could not be made: the request, back.
    Connect(crate::upstream::Unopened, Box<Request<RequestBody>>),
}

/// How long the answer's head to a request may take: `within`
/// (`upstream_response`) from when it was sent or, while its body goes on,
/// from the last piece of it the backend took (an upload takes as long as
/// it moves), and not past the request's own deadline.
#[derive(Clone, Copy)]
struct Wait<'a> {
    from: Instant,
    within: std::time::Duration,
    until: Option<Instant>,
    body: &'a BodyCount,
}

impl Wait<'_> {
    /// The client owes the body, and weir waits for it: its silence is
    /// `request_body`'s business, not a slow backend's.
    fn client_owes(&self) -> bool {
        self.body.uploading.load(Relaxed) && self.body.awaiting_client.load(Relaxed)
    }

    /// The request's own deadline has passed.
    fn past_until(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() >= u)
    }

    fn by(&self) -> Instant {
        let moved = crate::clock::from_micros(self.body.moved_at.load(Relaxed));
        let from = moved.map_or(self.from, |m| m.max(self.from));
        let by = deadline(from, self.within);
        self.until.map_or(by, |u| by.min(u))
    }
}

/// `within` after `from`, or a date too far to come when that overflows.
fn deadline(from: Instant, within: std::time::Duration) -> Instant {
    from.checked_add(within)
        .or_else(|| from.checked_add(std::time::Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(from)
}

async fn send(
    lease: &mut Lease,
    req: Box<Request<RequestBody>>,
    wait: &Wait<'_>,
) -> Result<Response<Incoming>, Sent> {
    let answer = lease.send(req);
    tokio::pin!(answer);
    let mut by = wait.by();
    let answered = loop {
        match tokio::time::timeout_at(by, answer.as_mut()).await {
            Ok(r) => break r,
            Err(_) if wait.past_until() => return Err(Sent::Timeout { whole: true }),
            Err(_) => {
                let moved = wait.by();
                if moved > by {
                    // The body moved meanwhile: the backend is taking it.
                    by = moved;
                } else if wait.client_owes() {
                    // Looked at again later; meanwhile the body's own
                    // timer ends a silence that lasts.
                    by = Wait {
                        from: Instant::now(),
                        ..*wait
                    }
                    .by();
                } else {
                    return Err(Sent::Timeout { whole: false });
                }
            }
        }
    };
    match answered {
        Ok(r) => Ok(r),
        Err(SendError::NotSent(req)) => Err(Sent::Not(req)),
        Err(SendError::Failed(e)) => {
            tracing::debug!(error = %e, "request to the backend failed");
            Err(unprocessed(&e).map_or(Sent::Failed, |refused| Sent::Unprocessed { refused }))
        }
    }
}

/// Whether an HTTP/2 backend turned the request away unprocessed: `true`
/// for a refused stream, `false` for a GOAWAY (a stream above its last one,
/// or one sent after it); `None` for any other failure.
fn unprocessed(e: &hyper::Error) -> Option<bool> {
    let h2 = std::error::Error::source(e)?.downcast_ref::<h2::Error>()?;
    if !h2.is_remote() {
        return None;
    }
    if h2.is_go_away() {
        return Some(false);
    }
    (h2.reason() == Some(h2::Reason::REFUSED_STREAM)).then_some(true)
}

/// Sends `req` again to the same backend, on another connection than
/// `failed`'s: a new one in its place when `retire` (it closed, or sent a
/// GOAWAY), else any other (it refused a stream and goes on serving).
async fn retry_fresh(
    conns: &Arc<crate::upstream::Conns>,
    dialer: &crate::upstream::Dialer,
    req: Box<Request<RequestBody>>,
    wait: Wait<'_>,
    (failed, retire): (&Lease, bool),
) -> Result<(Response<Incoming>, Lease), Sent> {
    let fresh = Box::pin(async {
        if retire {
            conns.fresh(dialer, Some(failed)).await
        } else {
            conns.other_h2(dialer, failed).await
        }
    });
    let connected = match wait.until {
        Some(u) => match tokio::time::timeout_at(u, fresh).await {
            Ok(c) => c,
            Err(_) => return Err(Sent::Timeout { whole: true }),
        },
        None => fresh.await,
    };
    let mut lease = match connected {
        Ok(lease) => lease,
        Err(reason) => return Err(Sent::Connect(reason, req)),
    };
    let r = send(&mut lease, req, &wait).await?;
    Ok((r, lease))
}

/// A copy of a request without a body, for a replay.
fn copy_bodiless(req: &Request<RequestBody>) -> Box<Request<RequestBody>> {
    let mut copy = Request::new(RequestBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Box::new(copy)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn is_bodiless(req: &Request<RequestBody>) -> bool {
    use http_body::Body as _;
    req.body().is_end_stream()
}

/// Refuses what must not be forwarded.
fn admissible(req: &Request<Incoming>, max_body: Option<u64>) -> Result<(), Reason> {
    let h = req.headers();
    // Both framings at once is how requests are smuggled past a proxy that
    // reads one and a backend that reads the other (RFC 9112 §6.1).
    if h.contains_key(TRANSFER_ENCODING) && h.contains_key(CONTENT_LENGTH) {
        return Err(Reason::BadRequest);
    }
    let mut lengths = h.get_all(CONTENT_LENGTH).iter();
    if let (Some(_), Some(_)) = (lengths.next(), lengths.next()) {
        return Err(Reason::BadRequest);
    }
    if !headers::chunked_only(h) {
        return Err(Reason::BadRequest);
    }
    if let Some(limit) = max_body {
        use http_body::Body as _;
        if req.body().size_hint().lower() > limit {
            return Err(Reason::BodyTooLarge);
        }
    }
    Ok(())
}

/// Whether two authorities name the same host (in any case, with or
/// without the trailing dot) and port, `default` standing for a missing
/// one.
fn same_authority(a: &[u8], b: &[u8], default: &[u8]) -> bool {
    fn split<'a>(raw: &'a [u8], default: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        let (len, _) = weir_wire::name::authority_host(raw)?;
        let (host, rest) = (raw.get(..len)?, raw.get(len..)?);
        let rest = rest.strip_prefix(b".").unwrap_or(rest);
        Some((host, rest.strip_prefix(b":").unwrap_or(default)))
    }
    match (split(a, default), split(b, default)) {
        (Some((ha, pa)), Some((hb, pb))) => ha.eq_ignore_ascii_case(hb) && pa == pb,
        _ => false,
    }
}

/// Makes the request's target what the backend's protocol wants: HTTP/1.1
/// takes the origin form and a `Host` header; HTTP/2 the absolute form,
/// from which hyper sends `:scheme` and `:authority`, and no `Host`.
fn target_form(
    parts: &mut http::request::Parts,
    protocol: HttpProtocol,
    host: Option<&HeaderValue>,
) -> Result<(), Reason> {
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match protocol {
        HttpProtocol::Http1 => {
            if parts.version == Version::HTTP_2 {
                headers::join_cookies(&mut parts.headers);
            }
            // An HTTP/1.1 request must name its host (RFC 9112 §3.2; nginx
            // answers 400 without): an HTTP/1.0 one that named none goes on
            // as HTTP/1.0, as HAProxy passes it. Only HTTP/1.0 gets here
            // without a host.
            parts.version = if host.is_none() {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
                parts.uri = Uri::from(path);
            }
            if let Some(host) = host
                && parts.headers.get(HOST) != Some(host)
            {
                parts.headers.insert(HOST, host.clone());
            }
        }
        HttpProtocol::H2 | HttpProtocol::H2c => {
            parts.version = Version::HTTP_2;
            let scheme = if protocol == HttpProtocol::H2 {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            };
            // No name is made up for an HTTP/1.0 request without `Host`: a
            // backend could take a guess (`localhost`) for one it trusts.
            let authority: Authority = host
                .and_then(|h| h.to_str().ok())
                .ok_or(Reason::BadRequest)?
                .parse()
                .map_err(|_| Reason::BadRequest)?;
            parts.uri = Uri::builder()
                .scheme(scheme)
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|_| Reason::BadRequest)?;
            parts.headers.remove(HOST);
        }
    }
    Ok(())
}

/// Puts the normalised path (`weir_wire::path`) in the request's target,
/// keeping its query. A target without a path (`*`) is left alone.
fn normalize_path(
    req: &mut Request<Incoming>,
    slashes: weir_wire::path::Slashes,
) -> Result<(), weir_wire::path::PathError> {
    let path = req.uri().path();
    if path == "*" {
        return Ok(());
    }
    let std::borrow::Cow::Owned(normal) = weir_wire::path::normalize(path, slashes)? else {
        return Ok(());
    };
    set_path(req.uri_mut(), normal).map_err(|()| weir_wire::path::PathError::NotAPath)
}

/// `uri` with `path` for its path, its query kept.
fn set_path(uri: &mut Uri, path: String) -> Result<(), ()> {
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| ())?);
    *uri = Uri::from_parts(parts).map_err(|_| ())?;
    Ok(())
}

/// The answer of a policy that refused the request: its status and body (a
/// gRPC client gets PERMISSION_DENIED), ending the exchange.
fn refused(
    p: &crate::policy::Policy,
    own: Own<'_>,
    mut x: Box<Exchange>,
) -> Response<ResponseBody> {
    let (mut parts, body) = errors::parts(Reason::Policy, own.grpc);
    x.status = p.status.as_u16();
    x.reason = Reason::Policy.as_str();
    x.policy = Some(Arc::clone(&p.name));
    own.finish(&mut parts.headers, &x);
    if own.grpc {
        return Response::from_parts(parts, ResponseBody::full(body, Some(x)));
    }
    parts.status = p.status;
    Response::from_parts(parts, ResponseBody::full(p.body.clone(), Some(x)))
}

/// The authentication service's refusal, passed on: its status, the
/// headers that matter to the client (`WWW-Authenticate`...) and its body.
/// A gRPC client gets UNAUTHENTICATED or PERMISSION_DENIED. A 5xx is the
/// service failing, not refusing: reason `auth_unavailable`, and
/// UNAVAILABLE for gRPC (which its clients retry).
fn denied(d: &crate::auth::Denial, own: Own<'_>, mut x: Box<Exchange>) -> Response<ResponseBody> {
    let reason = if d.status.is_server_error() {
        Reason::AuthUnavailable
    } else {
        Reason::AuthDenied
    };
    x.reason = reason.as_str();
    if own.grpc {
        let (mut parts, body) = errors::parts(reason, true);
        let code: u16 = match d.status {
            s if s.is_server_error() => 14,
            http::StatusCode::UNAUTHORIZED => 16,
            _ => 7,
        };
        parts.headers.insert("grpc-status", HeaderValue::from(code));
        // Counted and logged as the refusal it passes on (see `answer`).
        x.status = d.status.as_u16();
        own.finish(&mut parts.headers, &x);
        return Response::from_parts(parts, ResponseBody::full(body, Some(x)));
    }
    x.status = d.status.as_u16();
    let mut r = Response::new(());
    *r.status_mut() = d.status;
    for (name, value) in &d.headers {
        r.headers_mut().append(name.clone(), value.clone());
    }
    own.finish(r.headers_mut(), &x);
    let (parts, ()) = r.into_parts();
    Response::from_parts(parts, ResponseBody::full(d.body.clone(), Some(x)))
}

/// weir's own answer, ending the exchange. A gRPC client gets it as 200
/// and a `grpc-status`; the metrics and the access log count the status it
/// stands for (503, 502, 504...), so that a failing gRPC route shows in
/// `code="5xx"` as any other.
fn answer(reason: Reason, own: Own<'_>, mut x: Box<Exchange>) -> Response<ResponseBody> {
    let (mut parts, body) = errors::parts(reason, own.grpc);
    x.status = errors::status(reason).as_u16();
    x.reason = reason.as_str();
    own.finish(&mut parts.headers, &x);
    Response::from_parts(parts, ResponseBody::full(body, Some(x)))
}

/// What weir's own answers (errors, refusals, redirects) need besides
/// their reason: whether the client speaks gRPC, and the operator's
/// `response_headers` marked `always`, the route's and, once a rule
/// matched, the rule's.
#[derive(Clone, Copy)]
struct Own<'a> {
    grpc: bool,
    cx: &'a Cx,
    route: &'a crate::headers::HeaderOps,
    rule: Option<&'a crate::headers::HeaderOps>,
}

impl Own<'_> {
    /// Applies the `always` rules to an answer's headers, in the order a
    /// backend's response gets them (the route's, then the rule's). Their
    /// `remove` cannot take what makes the answer (its status and body
    /// stay), only fields.
    fn finish(&self, headers: &mut http::HeaderMap, x: &Exchange) {
        let facts = Facts { x, cx: self.cx };
        if self.route.always() {
            self.route.apply(headers, &facts);
        }
        if let Some(rule) = self.rule.filter(|r| r.always()) {
            rule.apply(headers, &facts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_authority as same;

    #[test]
    fn authorities_are_the_same_by_host_and_port() {
        assert!(same(b"app", b"APP", b"80"));
        assert!(same(b"app:443", b"app", b"443"));
        assert!(same(b"app.", b"app:80", b"80"));
        assert!(same(b"[::1]:8080", b"[::1]:8080", b"80"));
        assert!(!same(b"app:8080", b"app", b"80"));
        assert!(!same(b"a.example", b"b.example", b"80"));
        assert!(!same(b"app", b"x@app", b"80"));
    }
}
