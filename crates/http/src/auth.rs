//! Forward authentication (`auth = { url, ... }`): before a request is
//! forwarded, weir asks an authentication service with the request's
//! method, target, host, protocol and client address (as `X-Forwarded-*`,
//! a trusted proxy's chain extended as for the backend) and the configured
//! headers. A 2xx answer lets the request through, with
//! the configured headers of that answer copied into it; any other answer is
//! the client's (status, `WWW-Authenticate` and the like, body). When the
//! service fails or is slow, `failure` decides: `deny` (503) or `allow`.
//!
//! Decisions are cached by everything the service was asked (method, target,
//! host, protocol, client address, a trusted proxy's forwarding headers and
//! the configured headers' values), as a
//! 128-bit keyed hash; allowed and denied ones for their own time, in a
//! bounded table; failures never are.
//! A circuit breaker opens after `breaker_failures` failures in a row: for
//! `breaker_open` requests take the failure mode without a call, then one
//! call at a time probes the service (half-open) until one succeeds.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use weir_config::{Auth, AuthFailure};
use weir_core::sync::lock;
use weir_telemetry::Histogram;

/// The largest answer body weir takes from the service (a denial's body is
/// passed on to the client).
const MAX_BODY: usize = 64 * 1024;
/// The bytes one gate's cached verdicts may hold together, their entries
/// included: 10,000 login pages of 60 KiB, one per new query string, would
/// otherwise keep 600 MB, and a `cache_size` near its ceiling of small
/// decisions about 1 GB of entries.
const MAX_CACHED_BYTES: usize = 16 * 1024 * 1024;
/// What one cached decision costs besides its headers and body: its place
/// in the map (hash, key, verdict, expiry; its index and control byte) and
/// the verdict's shared allocation.
const ENTRY_BYTES: usize = 192;
/// Idle connections to the service kept for reuse.
const MAX_IDLE: usize = 32;
/// How long a connection to the service is kept idle: past it, a firewall
/// or load balancer on the way may have forgotten it (Azure after 4
/// minutes, GCP after 10) and drop what is sent on it without a word, so
/// each question on it would wait for all of `timeout` (nginx's
/// `keepalive_timeout` default).
const IDLE_FOR: Duration = Duration::from_secs(60);

/// Headers of a denial passed on to the client.
const DENIAL_HEADERS: [HeaderName; 4] = [
    http::header::WWW_AUTHENTICATE,
    http::header::CONTENT_TYPE,
    http::header::LOCATION,
    http::header::SET_COOKIE,
];

/// What the service (or the cache, or the failure mode) decided.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    /// Let it through, with these headers added to the upstream request.
    Allow(Arc<[(HeaderName, HeaderValue)]>),
    /// Answer the client with this.
    Deny(Arc<Denial>),
    /// The service could not decide and `failure = "deny"`: 503.
    Unavailable,
    /// `max_calls` calls were under way for all of `timeout`: 503, whatever
    /// `failure` says (a flood must not open the way).
    Busy,
}

#[derive(Debug)]
pub(crate) struct Denial {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
}

/// Counters of one route's authentication (`weir_auth_*`).
#[derive(Debug)]
pub(crate) struct AuthStats {
    /// By [`Outcome`].
    pub(crate) results: [AtomicU64; 5],
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    /// The route's gates (its own and its rules') whose breaker is open,
    /// and half-open; a gate leaves both when it closes or is dropped.
    breakers: [AtomicU32; 2],
    pub(crate) duration: Histogram,
}

impl AuthStats {
    /// The route's breaker state as the gauge says it: `1` when a gate's
    /// breaker is open, else `2` when one probes (half-open), else `0`.
    pub(crate) fn breaker_state(&self) -> u8 {
        if self.breakers[0].load(Relaxed) > 0 {
            1
        } else if self.breakers[1].load(Relaxed) > 0 {
            2
        } else {
            0
        }
    }

    /// A gate's breaker went from `from` to `to` (0 closed, 1 open, 2
    /// half-open).
    fn moved(&self, from: u8, to: u8) {
        if from == to {
            return;
        }
        if let Some(n) = from
            .checked_sub(1)
            .and_then(|i| self.breakers.get(usize::from(i)))
        {
            n.fetch_sub(1, Relaxed);
        }
        if let Some(n) = to
            .checked_sub(1)
            .and_then(|i| self.breakers.get(usize::from(i)))
        {
            n.fetch_add(1, Relaxed);
        }
    }
}

impl Default for AuthStats {
    fn default() -> Self {
        AuthStats {
            results: Default::default(),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            breakers: Default::default(),
            duration: Histogram::new(weir_core::listener::REQUEST_SECONDS),
        }
    }
}

/// How a call to the service went: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed,
    Denied,
    Error,
    Timeout,
    /// No call: `max_calls` were under way for all of `timeout`.
    Busy,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 5] = [
        Outcome::Allowed,
        Outcome::Denied,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::Busy,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Busy => "busy",
        }
    }
}

/// The forwarding headers a trusted proxy's question carries on.
const FORWARDING: [HeaderName; 3] = [
    crate::headers::X_FORWARDED_FOR,
    crate::headers::X_FORWARDED_PROTO,
    crate::headers::X_FORWARDED_HOST,
];

/// What the service is asked about one request.
#[derive(Debug, Clone)]
pub(crate) struct Question<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) host: Option<&'a HeaderValue>,
    pub(crate) proto: &'static str,
    pub(crate) client: IpAddr,
    /// The client is a trusted proxy (`forwarded.trusted`): its own
    /// `X-Forwarded-*` are passed on, extended as the backend gets them.
    pub(crate) trusted: bool,
    pub(crate) headers: &'a HeaderMap,
    /// The auth call's `traceparent`, with `[tracing]`.
    pub(crate) traceparent: Option<HeaderValue>,
}

/// One `auth` table (a route's or a rule's), with its cache, breaker and
/// kept connections.
#[derive(Debug)]
pub(crate) struct Gate {
    cfg: Auth,
    copy: Vec<HeaderName>,
    ask: Vec<HeaderName>,
    /// Two independent keyed hashes make a cache key.
    hashers: [RandomState; 2],
    cache: Mutex<Cache>,
    breaker: Mutex<Breaker>,
    /// Kept connections, the newest last, with when each was given back.
    idle: Mutex<Vec<(http1::SendRequest<Empty<Bytes>>, Instant)>>,
    /// The service (its host looked up once at a time).
    service: crate::resolve::Reach,
    /// `max_calls` places: a call, and its connection, holds one.
    calls: Semaphore,
    pub(crate) stats: Arc<AuthStats>,
}

/// A question to the service, hashed: two keyed 64-bit hashes of all of it,
/// so that a decision is reused only for the same question (a collision is
/// about as likely as guessing a 128-bit secret) and a key costs 16 bytes
/// however long the headers it covers.
type Key = u128;

#[derive(Debug)]
struct Cache {
    /// Key -> (verdict, until).
    /// In an index map: a full cache forgets a decision at random in
    /// constant time.
    entries: indexmap::IndexMap<Key, (Verdict, Instant)>,
    /// The bytes the kept verdicts hold (entries, headers, denials'
    /// bodies), at most [`MAX_CACHED_BYTES`].
    bytes: usize,
    /// The part of `bytes` that refusing decisions hold.
    denials: usize,
    /// Times refusing decisions were looked for to make room.
    refusal_scans: u64,
    /// When a full cache was last swept of its expired decisions.
    swept: Option<Instant>,
}

/// How often a full cache looks for expired decisions: a sweep reads every
/// entry under the lock, and a flood of new keys (a client sending a new
/// token with each request) would otherwise make every request pay one.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    /// Open until then; past it, one call probes (half-open).
    open_until: Option<Instant>,
    probing: bool,
}

impl Breaker {
    /// 0 closed, 1 open, 2 half-open.
    fn state(&self) -> u8 {
        match (self.probing, self.open_until) {
            (true, _) => 2,
            (false, Some(_)) => 1,
            (false, None) => 0,
        }
    }
}

impl Gate {
    pub(crate) fn new(cfg: &Auth, stats: Arc<AuthStats>) -> Gate {
        let names = |list: &[String]| {
            list.iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect()
        };
        Gate {
            copy: names(&cfg.copy_headers),
            ask: names(&cfg.headers),
            cfg: cfg.clone(),
            hashers: [RandomState::new(), RandomState::new()],
            cache: Mutex::new(Cache {
                entries: indexmap::IndexMap::new(),
                bytes: 0,
                denials: 0,
                refusal_scans: 0,
                swept: None,
            }),
            breaker: Mutex::new(Breaker::default()),
            idle: Mutex::new(Vec::new()),
            service: crate::resolve::Reach::new(crate::resolve::Name::new(&cfg.host, cfg.port)),
            calls: Semaphore::new(cfg.max_calls as usize),
            stats,
        }
    }

    /// The service's URL, as configured.
    /// The settings the gate was made with.
    pub(crate) fn settings(&self) -> &Auth {
        &self.cfg
    }

    pub(crate) fn url(&self) -> &str {
        &self.cfg.url
    }

    /// The verdict for `q`: from the cache, the service, or the failure
    /// mode; with how the call to the service ended and how long it took,
    /// when one was made.
    pub(crate) async fn check(&self, q: &Question<'_>) -> (Verdict, Option<(Outcome, Duration)>) {
        let key = (self.cfg.cache_size > 0).then(|| self.key(q));
        if let Some(key) = key {
            if let Some(v) = self.cached(key) {
                self.stats.cache_hits.fetch_add(1, Relaxed);
                return (v, None);
            }
            self.stats.cache_misses.fetch_add(1, Relaxed);
        }
        let Some(call) = self.may_call() else {
            return (self.failed(), None);
        };
        // A place among the `max_calls`, waited for at most `timeout`; the
        // call then has all of its own `timeout`: a call that found little
        // time left would time out and count against the breaker for
        // weir's queue, not for the service.
        let Ok(Ok(_place)) = tokio::time::timeout(self.cfg.timeout, self.calls.acquire()).await
        else {
            self.stats.results[Outcome::Busy as usize].fetch_add(1, Relaxed);
            return (Verdict::Busy, None);
        };
        let began = Instant::now();
        let answer = tokio::time::timeout(self.cfg.timeout, self.call(q)).await;
        let took = began.elapsed();
        self.stats.duration.observe(took);
        let (outcome, verdict) = match answer {
            Err(_) => {
                // The service or the way to it stalled: kept connections are
                // suspect, and the next question gets a new one.
                lock(&self.idle).clear();
                (Outcome::Timeout, None)
            }
            Ok(Err(())) => (Outcome::Error, None),
            // The service's own failure (a 5xx): passed to the client like a
            // denial, never cached, and neither `failure` nor the breaker
            // applies: a client that can make the service fail (a malformed
            // token) must get neither through nor everyone refused.
            Ok(Ok((v, true))) => {
                self.stats.results[Outcome::Error as usize].fetch_add(1, Relaxed);
                // A breaker already open for real failures, probing: the
                // service still fails, and the breaker opens again (else
                // it stayed half-open, one call at a time, for as long).
                if call.probe {
                    call.settle(false);
                }
                return (v, Some((Outcome::Error, took)));
            }
            Ok(Ok((v @ Verdict::Allow(_), false))) => (Outcome::Allowed, Some(v)),
            Ok(Ok((v, false))) => (Outcome::Denied, Some(v)),
        };
        self.stats.results[outcome as usize].fetch_add(1, Relaxed);
        call.settle(verdict.is_some());
        let verdict = match verdict {
            Some(v) => {
                if let Some(key) = key {
                    self.remember(key, &v);
                }
                v
            }
            None => self.failed(),
        };
        (verdict, Some((outcome, took)))
    }

    fn failed(&self) -> Verdict {
        match self.cfg.failure {
            AuthFailure::Deny => Verdict::Unavailable,
            AuthFailure::Allow => Verdict::Allow(Arc::from(Vec::new())),
        }
    }

    /// The cache key of `q`: everything [`Gate::call`] sends the service
    /// about the request (the traceparent aside), each part delimited.
    fn key(&self, q: &Question<'_>) -> Key {
        let [a, b] = &self.hashers;
        let mut h = [a.build_hasher(), b.build_hasher()];
        let mut part = |bytes: &[u8]| {
            for h in &mut h {
                h.write_usize(bytes.len());
                h.write(bytes);
            }
        };
        part(q.method.as_str().as_bytes());
        part(
            q.uri
                .path_and_query()
                .map_or("", |pq| pq.as_str())
                .as_bytes(),
        );
        part(q.host.map_or(&[][..], HeaderValue::as_bytes));
        part(q.proto.as_bytes());
        match q.client {
            IpAddr::V4(ip) => part(&ip.octets()),
            IpAddr::V6(ip) => part(&ip.octets()),
        }
        // A trusted proxy's forwarding headers are part of the question:
        // one decision per original client, not one for all behind it.
        part(&[u8::from(q.trusted)]);
        if q.trusted {
            for name in &FORWARDING {
                for v in q.headers.get_all(name) {
                    part(v.as_bytes());
                }
                part(b"");
            }
        }
        // What `headers` copies of these is replaced in the question.
        for name in self.ask.iter().filter(|n| !FORWARDING.contains(n)) {
            for v in q.headers.get_all(name) {
                part(name.as_str().as_bytes());
                part(v.as_bytes());
            }
            part(b"");
        }
        let [a, b] = h;
        (u128::from(a.finish()) << 64) | u128::from(b.finish())
    }

    fn cached(&self, key: Key) -> Option<Verdict> {
        let cache = lock(&self.cache);
        let (v, until) = cache.entries.get(&key)?;
        (*until > Instant::now()).then(|| v.clone())
    }

    fn remember(&self, key: Key, v: &Verdict) {
        let ttl = match v {
            Verdict::Allow(_) => self.cfg.allowed_ttl,
            // A cookie set with a denial (a login flow's state or nonce)
            // belongs to the client asked for: replayed from the cache, it
            // would reach others behind the same address.
            Verdict::Deny(d) if d.headers.iter().any(|(n, _)| n == http::header::SET_COOKIE) => {
                return;
            }
            Verdict::Deny(_) => self.cfg.denied_ttl,
            Verdict::Unavailable | Verdict::Busy => return,
        };
        if ttl.is_zero() {
            return;
        }
        let size = held_bytes(v);
        if size > MAX_CACHED_BYTES {
            return;
        }
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        let cache = &mut *cache;
        let max = usize::try_from(self.cfg.cache_size).unwrap_or(usize::MAX);
        let full = |c: &Cache| c.entries.len() >= max || c.bytes + size > MAX_CACHED_BYTES;
        if full(cache) && cache.swept.is_none_or(|t| now >= t + SWEEP_EVERY) {
            cache.swept = Some(now);
            let (mut freed, mut denials) = (0, 0);
            cache.entries.retain(|_, (v, until)| {
                let live = *until > now;
                if !live {
                    freed += held_bytes(v);
                    denials += denial_bytes(v);
                }
                live
            });
            cache.bytes -= freed;
            cache.denials -= denials;
        }
        // Past the byte budget: refusing decisions go, down to three
        // quarters of it, so that the next large one does not scan again;
        // allowing ones stay. Only when they hold a quarter of the budget:
        // a scan reads every entry under the lock, and a cache full of
        // allowing decisions must not be read whole at every insert for
        // the one refusal among them.
        if cache.bytes + size > MAX_CACHED_BYTES && cache.denials >= MAX_CACHED_BYTES / 4 {
            cache.refusal_scans += 1;
            let target = MAX_CACHED_BYTES / 4 * 3;
            let (mut bytes, mut denials) = (cache.bytes, cache.denials);
            cache.entries.retain(|_, (v, _)| {
                if bytes + size <= target || !matches!(v, Verdict::Deny(_)) {
                    return true;
                }
                bytes -= held_bytes(v);
                denials -= denial_bytes(v);
                false
            });
            (cache.bytes, cache.denials) = (bytes, denials);
        }
        // Still full of live decisions: one at random makes room.
        while full(cache) {
            if cache.entries.is_empty() {
                break;
            }
            let any = fastrand::usize(..cache.entries.len());
            if let Some((_, (v, _))) = cache.entries.swap_remove_index(any) {
                cache.bytes -= held_bytes(&v);
                cache.denials -= denial_bytes(&v);
            }
        }
        if let Some((old, _)) = cache.entries.insert(key, (v.clone(), now + ttl)) {
            cache.bytes -= held_bytes(&old);
            cache.denials -= denial_bytes(&old);
        }
        cache.bytes += size;
        cache.denials += denial_bytes(v);
    }

    /// A call that may go out: the breaker is closed, or it has been open
    /// long enough and no other probe is out (this call is then the probe).
    fn may_call(&self) -> Option<Call<'_>> {
        let mut call = Call {
            gate: self,
            probe: false,
        };
        if self.cfg.breaker_failures == 0 {
            return Some(call);
        }
        let mut b = lock(&self.breaker);
        match b.open_until {
            None => Some(call),
            Some(until) if Instant::now() >= until && !b.probing => {
                self.stats.moved(b.state(), 2);
                b.probing = true;
                call.probe = true;
                Some(call)
            }
            Some(_) => None,
        }
    }

    /// Records how a call went: a success closes the breaker, the n-th
    /// failure in a row (or a failed probe) opens it.
    fn settle(&self, ok: bool) {
        if self.cfg.breaker_failures == 0 {
            return;
        }
        let mut b = lock(&self.breaker);
        if ok {
            self.stats.moved(b.state(), 0);
            *b = Breaker::default();
            return;
        }
        b.failures += 1;
        if b.probing || b.failures >= self.cfg.breaker_failures {
            self.stats.moved(b.state(), 1);
            b.open_until = Some(Instant::now() + self.cfg.breaker_open);
            b.probing = false;
            tracing::warn!(url = %self.cfg.url, failures = b.failures, "authentication service failing; circuit breaker open");
        }
    }

    /// The names of the answer's headers put into the upstream request:
    /// what the client sent under them never reaches the backend.
    pub(crate) fn copied_names(&self) -> &[HeaderName] {
        &self.copy
    }

    /// The headers of a question to the service about `q`.
    fn question(&self, q: &Question<'_>) -> Result<HeaderMap, ()> {
        let mut h = HeaderMap::new();
        // An IPv6 address is written in brackets in `Host`.
        let name = if self.cfg.host.contains(':') {
            format!("[{}]", self.cfg.host)
        } else {
            self.cfg.host.clone()
        };
        let host = if self.cfg.port == 80 {
            name
        } else {
            format!("{name}:{}", self.cfg.port)
        };
        if let Ok(v) = HeaderValue::from_str(&host) {
            h.insert(HOST, v);
        }
        for name in &self.ask {
            for v in q.headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        // The service speaks HTTP/1.1: an HTTP/2 client's cookies in one line.
        crate::headers::join_cookies(&mut h);
        h.insert(
            "x-forwarded-method",
            HeaderValue::from_str(q.method.as_str()).map_err(|_| ())?,
        );
        if let Some(pq) = q.uri.path_and_query()
            && let Ok(v) = HeaderValue::from_str(pq.as_str())
        {
            h.insert("x-forwarded-uri", v);
        }
        // The service learns who the client is as the backend does: from a
        // trusted proxy, its chain extended and its proto and host kept;
        // from anyone else, weir's own view, whatever `headers` copied.
        for name in &FORWARDING {
            h.remove(name);
            if q.trusted {
                for v in q.headers.get_all(name) {
                    h.append(name.clone(), v.clone());
                }
            }
        }
        crate::headers::set_forwarding(
            &mut h,
            &crate::headers::Forwarding {
                client: q.client,
                client_value: &crate::headers::client_value(q.client),
                trusted: q.trusted,
                proto: q.proto,
                host: q.host,
                rfc7239: false,
            },
        );
        if let Some(t) = &q.traceparent {
            h.insert(crate::trace::TRACEPARENT, t.clone());
        }
        Ok(h)
    }

    /// One call to the service: its verdict, and whether the answer was the
    /// service failing (a 5xx).
    async fn call(&self, q: &Question<'_>) -> Result<(Verdict, bool), ()> {
        let uri: Uri = self.cfg.path.parse().map_err(|_| ())?;
        let request = |headers: HeaderMap| {
            let mut r = Request::new(Empty::<Bytes>::new());
            *r.uri_mut() = uri.clone();
            *r.headers_mut() = headers;
            r
        };
        let (mut sender, reused) = self.sender().await?;
        let response = if reused {
            match sender.send_request(request(self.question(q)?)).await {
                Ok(r) => r,
                // A kept connection the service closed as the question went
                // out (its own idle timeout): asked again on a new one, once.
                // A GET that changes nothing is safe to repeat; the question
                // is written again rather than kept for a retry this rare.
                Err(_) => {
                    sender = self.connect().await?;
                    sender
                        .send_request(request(self.question(q)?))
                        .await
                        .map_err(|_| ())?
                }
            }
        } else {
            sender
                .send_request(request(self.question(q)?))
                .await
                .map_err(|_| ())?
        };
        let (parts, body) = response.into_parts();
        let (body, whole) = read_capped(body).await?;
        if whole {
            // The answer was read whole: the connection can serve another.
            self.give_back(sender);
        }
        // hyper hands on a `101` as an answer; neither it nor a status past
        // the defined classes is a verdict to pass to a client.
        if parts.status.is_informational() || parts.status.as_u16() >= 600 {
            return Err(());
        }
        let failed = parts.status.is_server_error();
        if parts.status.is_success() {
            let copied: Vec<(HeaderName, HeaderValue)> = self
                .copy
                .iter()
                .flat_map(|n| {
                    parts
                        .headers
                        .get_all(n)
                        .iter()
                        .map(move |v| (n.clone(), v.clone()))
                })
                .collect();
            Ok((Verdict::Allow(Arc::from(copied)), false))
        } else {
            let headers = DENIAL_HEADERS
                .iter()
                .flat_map(|n| {
                    parts
                        .headers
                        .get_all(n)
                        .iter()
                        .map(move |v| (n.clone(), v.clone()))
                })
                .collect();
            let denial = Verdict::Deny(Arc::new(Denial {
                status: parts.status,
                headers,
                body,
            }));
            Ok((denial, failed))
        }
    }

    /// A kept connection (true) or a new one (false).
    async fn sender(&self) -> Result<(http1::SendRequest<Empty<Bytes>>, bool), ()> {
        loop {
            let kept = {
                let mut idle = lock(&self.idle);
                match idle.pop() {
                    // The newest kept too long: all of them were.
                    Some((_, since)) if since.elapsed() > IDLE_FOR => {
                        idle.clear();
                        None
                    }
                    other => other,
                }
            };
            match kept {
                Some((mut s, _)) if !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        return Ok((s, true));
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        Ok((self.connect().await?, false))
    }

    /// A new connection (see `Reach::connect`).
    async fn connect(&self) -> Result<http1::SendRequest<Empty<Bytes>>, ()> {
        let tcp = self
            .service
            .connect(self.cfg.timeout)
            .await
            .map_err(|_| ())?;
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(|_| ())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn give_back(&self, sender: http1::SendRequest<Empty<Bytes>>) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }
}

/// What a cached verdict costs: its entry, its headers, a denial's body.
fn held_bytes(v: &Verdict) -> usize {
    ENTRY_BYTES + own_bytes(v)
}

/// What a cached verdict holds if it is a refusal.
fn denial_bytes(v: &Verdict) -> usize {
    if matches!(v, Verdict::Deny(_)) {
        held_bytes(v)
    } else {
        0
    }
}

/// A verdict's headers and a denial's body.
fn own_bytes(v: &Verdict) -> usize {
    let headers = |h: &[(HeaderName, HeaderValue)]| {
        h.iter()
            .map(|(n, v)| size_of::<(HeaderName, HeaderValue)>() + n.as_str().len() + v.len())
            .sum::<usize>()
    };
    match v {
        Verdict::Allow(copied) => headers(copied),
        Verdict::Deny(d) => d.body.len() + headers(&d.headers),
        Verdict::Unavailable | Verdict::Busy => 0,
    }
}

/// An answer's body, at most [`MAX_BODY`] of it, and whether it was read
/// whole. A larger one is not an error (a login page may echo a long URL):
/// it is left unread, and its connection is not kept.
async fn read_capped(mut body: hyper::body::Incoming) -> Result<(Bytes, bool), ()> {
    let mut kept = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ())?.into_data() else {
            continue;
        };
        if kept.len() + data.len() > MAX_BODY {
            return Ok((Bytes::new(), false));
        }
        kept.extend_from_slice(&data);
    }
    // Exactly its length: a cached denial holds what it counts.
    Ok((Bytes::copy_from_slice(&kept), true))
}

/// The breaker state and the duration to wait, for tests.
#[cfg(test)]
impl Gate {
    fn breaker_open(&self) -> bool {
        lock(&self.breaker).open_until.is_some()
    }
}

/// A call to the service under way. Dropped unsettled (the request was
/// cancelled mid-call: its client went away), a probe frees the half-open
/// breaker for the next request's probe, instead of keeping it half-open
/// and callless until a reload.
struct Call<'g> {
    gate: &'g Gate,
    probe: bool,
}

impl Call<'_> {
    fn settle(mut self, ok: bool) {
        self.probe = false;
        self.gate.settle(ok);
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if self.probe {
            let mut b = lock(&self.gate.breaker);
            let from = b.state();
            b.probing = false;
            self.gate.stats.moved(from, b.state());
        }
    }
}

impl Drop for Gate {
    /// A gate a reload replaced leaves the route's breaker gauge: the
    /// new one starts closed.
    fn drop(&mut self) {
        let state = lock(&self.breaker).state();
        self.stats.moved(state, 0);
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::time::Duration;

    use super::*;

    fn cfg(breaker_failures: u32) -> Auth {
        Auth {
            url: "http://127.0.0.1:1/".into(),
            host: "127.0.0.1".into(),
            // Nothing listens on port 1: every call fails at once.
            port: 1,
            path: "/".into(),
            timeout: Duration::from_millis(500),
            headers: vec!["authorization".into()],
            copy_headers: vec![],
            failure: AuthFailure::Deny,
            allowed_ttl: Duration::from_secs(60),
            denied_ttl: Duration::from_secs(5),
            cache_size: 2,
            breaker_failures,
            breaker_open: Duration::from_millis(200),
            max_calls: 256,
        }
    }

    #[tokio::test]
    async fn the_breaker_opens_after_failures_in_a_row_and_probes_later() {
        let g = Gate::new(&cfg(3), Arc::default());
        for _ in 0..3 {
            assert!(matches!(ask(&g, "/").await, Verdict::Unavailable));
        }
        assert!(g.breaker_open());
        let calls = |g: &Gate| g.stats.results[Outcome::Error as usize].load(Relaxed);
        assert_eq!(calls(&g), 3);
        // Open: no call.
        assert!(matches!(ask(&g, "/").await, Verdict::Unavailable));
        assert_eq!(calls(&g), 3);
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Half-open: one probe, which fails and opens it again.
        assert!(matches!(ask(&g, "/").await, Verdict::Unavailable));
        assert_eq!(calls(&g), 4);
        assert!(matches!(ask(&g, "/").await, Verdict::Unavailable));
        assert_eq!(calls(&g), 4);
    }

    /// The key of `method target` from `client` with `token` (if any) as
    /// `Authorization` and `host` as the host.
    fn key(g: &Gate, method: &str, target: &str, host: &str, client: &str, token: &str) -> Key {
        let mut h = HeaderMap::new();
        if !token.is_empty() {
            h.insert(
                "authorization",
                HeaderValue::from_str(token).expect("value"),
            );
        }
        let (m, u) = (
            Method::from_bytes(method.as_bytes()).expect("method"),
            Uri::from_str(target).expect("uri"),
        );
        let host = HeaderValue::from_str(host).expect("host");
        g.key(&Question {
            method: &m,
            uri: &u,
            host: Some(&host),
            proto: "http",
            client: client.parse().expect("ip"),
            trusted: false,
            headers: &h,
            traceparent: None,
        })
    }

    fn token(g: &Gate, i: usize) -> Key {
        key(g, "GET", "/", "a", "127.0.0.1", &format!("Bearer {i}"))
    }

    #[test]
    fn the_cache_is_bounded_and_keyed_by_the_whole_question() {
        let g = Gate::new(&cfg(0), Arc::default());
        let allow = Verdict::Allow(Arc::from(Vec::new()));
        let asked = key(&g, "GET", "/a?x=1", "a.example", "10.0.0.1", "Bearer a");
        g.remember(asked, &allow);
        assert!(matches!(g.cached(asked), Some(Verdict::Allow(_))));
        assert_eq!(
            asked,
            key(&g, "GET", "/a?x=1", "a.example", "10.0.0.1", "Bearer a")
        );
        // Any difference in what the service is told is another question.
        for other in [
            key(&g, "GET", "/a?x=1", "a.example", "10.0.0.1", "Bearer b"),
            key(&g, "GET", "/a?x=1", "a.example", "10.0.0.1", ""),
            key(&g, "POST", "/a?x=1", "a.example", "10.0.0.1", "Bearer a"),
            key(&g, "GET", "/a?x=2", "a.example", "10.0.0.1", "Bearer a"),
            key(&g, "GET", "/admin?x=1", "a.example", "10.0.0.1", "Bearer a"),
            key(&g, "GET", "/a?x=1", "b.example", "10.0.0.1", "Bearer a"),
            key(&g, "GET", "/a?x=1", "a.example", "10.0.0.2", "Bearer a"),
        ] {
            assert_ne!(other, asked);
            assert!(g.cached(other).is_none());
        }
        // Parts are delimited: moving bytes from one to the next changes
        // the key.
        assert_ne!(
            key(&g, "GET", "/a", "bc", "10.0.0.1", ""),
            key(&g, "GET", "/ab", "c", "10.0.0.1", "")
        );
        for i in 0..10 {
            g.remember(token(&g, i), &allow);
        }
        assert!(lock(&g.cache).entries.len() <= 2);
    }

    /// A probe whose request is dropped mid-call (its client went away)
    /// leaves the breaker free for the next request's probe.
    #[tokio::test]
    async fn a_probe_cancelled_mid_call_lets_the_next_request_probe() {
        // Accepts connections (the kernel does) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let mut c = cfg(1);
        c.port = port;
        c.timeout = Duration::from_millis(100);
        let g = Gate::new(&c, Arc::default());
        let timeouts = |g: &Gate| g.stats.results[Outcome::Timeout as usize].load(Relaxed);
        assert!(matches!(ask(&g, "/").await, Verdict::Unavailable));
        assert!(g.breaker_open());
        assert_eq!(timeouts(&g), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The probe's request goes away before the service answers.
        let cancelled = tokio::time::timeout(Duration::from_millis(20), ask(&g, "/")).await;
        assert!(cancelled.is_err(), "the probe was to be cancelled");
        // No call under way: open again, as before the probe began, until
        // the next request probes.
        assert_eq!(g.stats.breaker_state(), 1);
        // The next request probes: a call that times out, and opens the
        // breaker again (not refused unasked for want of a probe slot).
        assert!(matches!(ask(&g, "/").await, Verdict::Unavailable));
        assert_eq!(timeouts(&g), 2, "the next request made no call");
        assert!(g.breaker_open());
        drop(silent);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_is_swept_at_most_once_a_second() {
        let g = Gate::new(&cfg(0), Arc::default());
        let allow = Verdict::Allow(Arc::from(Vec::new()));
        let token = |i: usize| token(&g, i);
        g.remember(token(0), &allow);
        g.remember(token(1), &allow);
        // Full: the third decision sweeps, finds nothing expired, and
        // forgets one.
        g.remember(token(2), &allow);
        let first = lock(&g.cache).swept.expect("swept once");
        tokio::time::advance(SWEEP_EVERY / 2).await;
        for i in 3..50 {
            g.remember(token(i), &allow);
        }
        {
            let cache = lock(&g.cache);
            assert_eq!(cache.swept, Some(first), "no second sweep within a second");
            assert_eq!(cache.entries.len(), 2);
        }
        // The newest decision is always kept.
        assert!(g.cached(token(49)).is_some());
        tokio::time::advance(SWEEP_EVERY / 2).await;
        g.remember(token(50), &allow);
        assert_eq!(
            lock(&g.cache).swept,
            Some(first + SWEEP_EVERY),
            "swept again a second later"
        );
    }
    #[test]
    fn cached_bodies_are_bounded_in_bytes() {
        let mut c = cfg(0);
        c.cache_size = 10_000;
        let g = Gate::new(&c, Arc::default());
        let allowed = key(&g, "GET", "/", "a", "10.0.0.9", "Bearer ok");
        g.remember(allowed, &Verdict::Allow(Arc::from(Vec::new())));
        let page = Bytes::from(vec![b'x'; 60 * 1024]);
        for i in 0..400 {
            let deny = Verdict::Deny(Arc::new(Denial {
                status: StatusCode::UNAUTHORIZED,
                headers: vec![],
                body: page.clone(),
            }));
            g.remember(token(&g, i), &deny);
        }
        let cache = lock(&g.cache);
        let held: usize = cache.entries.values().map(|(v, _)| held_bytes(v)).sum();
        assert_eq!(cache.bytes, held);
        assert!(held <= MAX_CACHED_BYTES, "{held}");
        assert!(cache.entries.len() > MAX_CACHED_BYTES / 4 * 3 / page.len());
        // The refusals made room; the allowing decision stayed.
        assert!(matches!(
            cache.entries.get(&allowed),
            Some((Verdict::Allow(_), _))
        ));
    }

    /// Small decisions count their entries: a `cache_size` at its ceiling
    /// holds no more than the byte budget. A cache full of allowing
    /// decisions is not read whole for each refusal that comes; refusals
    /// holding a quarter of the budget are forgotten together, first.
    #[test]
    fn small_decisions_count_their_entries() {
        // The estimate covers what an entry takes in the map.
        let slot = size_of::<(u64, Key, (Verdict, Instant))>();
        let shared = size_of::<Denial>() + 16;
        assert!(ENTRY_BYTES >= slot + 10 + shared, "{slot} {shared}");
        let mut c = cfg(0);
        c.cache_size = 10_000_000;
        let g = Gate::new(&c, Arc::default());
        let allow = Verdict::Allow(Arc::from(Vec::new()));
        let fits = MAX_CACHED_BYTES / ENTRY_BYTES;
        for i in 0..fits + 1000 {
            g.remember(token(&g, i), &allow);
        }
        {
            let cache = lock(&g.cache);
            assert_eq!(cache.entries.len(), fits);
            assert_eq!(cache.bytes, fits * ENTRY_BYTES);
        }
        let deny = |body: usize| {
            Verdict::Deny(Arc::new(Denial {
                status: StatusCode::UNAUTHORIZED,
                headers: vec![],
                body: Bytes::from(vec![b'x'; body]),
            }))
        };
        for i in 0..1000 {
            g.remember(token(&g, fits + 1000 + i), &deny(10));
        }
        assert_eq!(lock(&g.cache).refusal_scans, 0);
        // Refusals come to a quarter of the budget (some are forgotten on
        // the way, as room is made at random): one scan frees them.
        let page = 64 * 1024;
        let quarter = MAX_CACHED_BYTES / 4 / page + 1;
        let mut sent = 0;
        while lock(&g.cache).refusal_scans == 0 && sent < 4 * quarter {
            g.remember(token(&g, 2 * fits + sent), &deny(page));
            sent += 1;
        }
        let cache = lock(&g.cache);
        assert_eq!(cache.refusal_scans, 1, "after {sent} refusals");
        assert!(cache.denials < MAX_CACHED_BYTES / 4, "{}", cache.denials);
        let (bytes, denials) = cache.entries.values().fold((0, 0), |(b, d), (v, _)| {
            (b + held_bytes(v), d + denial_bytes(v))
        });
        assert_eq!((cache.bytes, cache.denials), (bytes, denials));
        assert!(bytes <= MAX_CACHED_BYTES, "{bytes}");
    }

    /// An authentication service on loopback answering by the request's
    /// `X-Forwarded-Uri`: `/big-deny` a 401 with a 70 KB page, `/big-allow`
    /// a 200 with as much, `/fail` a 503, `/drop` no answer (the connection
    /// closed), anything else a 200; after `/once` it closes the connection
    /// when the next question arrives on it, unanswered.
    async fn service() -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut once = false;
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end + 4);
                        let uri = head
                            .lines()
                            .find_map(|l| l.strip_prefix("x-forwarded-uri: "))
                            .unwrap_or("/")
                            .to_owned();
                        if once || uri == "/drop" {
                            // Closed as the question came, unanswered.
                            return;
                        }
                        once = uri == "/once";
                        let (status, body) = match uri.as_str() {
                            "/big-deny" => ("401 Unauthorized", "d".repeat(70_000)),
                            "/big-allow" => ("200 OK", "a".repeat(70_000)),
                            "/fail" => ("503 Service Unavailable", "down".to_owned()),
                            "/deny" => ("401 Unauthorized", String::new()),
                            "/login" => (
                                "302 Found\r\nLocation: /sign-in\r\nSet-Cookie: state=n0nce",
                                String::new(),
                            ),
                            "/switch" => ("101 Switching Protocols\r\nUpgrade: x", String::new()),
                            "/odd" => ("600 Odd", String::new()),
                            _ => ("200 OK", String::new()),
                        };
                        let answer = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    /// `g`'s verdict on a GET of `target` from 127.0.0.1.
    async fn ask(g: &Gate, target: &'static str) -> Verdict {
        let (m, h) = (Method::GET, HeaderMap::new());
        let u = Uri::from_static(target);
        g.check(&Question {
            method: &m,
            uri: &u,
            host: None,
            proto: "http",
            client: "127.0.0.1".parse().expect("ip"),
            trusted: false,
            headers: &h,
            traceparent: None,
        })
        .await
        .0
    }

    /// A denial that sets a cookie is another client's business: asked
    /// again each time, not replayed from the cache; one without is cached.
    #[tokio::test]
    async fn a_denial_setting_a_cookie_is_not_cached() {
        let mut c = cfg(5);
        c.port = service().await;
        let g = Gate::new(&c, Arc::default());
        let denied = |g: &Gate| g.stats.results[Outcome::Denied as usize].load(Relaxed);
        for _ in 0..2 {
            match ask(&g, "/login").await {
                Verdict::Deny(d) => assert!(
                    d.headers
                        .iter()
                        .any(|(n, v)| n == http::header::SET_COOKIE && v == "state=n0nce"),
                    "{:?}",
                    d.headers
                ),
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(denied(&g), 2, "asked both times");
        for _ in 0..2 {
            assert!(matches!(ask(&g, "/deny").await, Verdict::Deny(_)));
        }
        assert_eq!(denied(&g), 3, "the second denial came from the cache");
    }

    /// An HTTP/2 client's cookies, one field each, reach the service in
    /// one line.
    #[test]
    fn the_question_joins_cookies() {
        let mut c = cfg(5);
        c.headers = vec!["cookie".into()];
        let g = Gate::new(&c, Arc::default());
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        let (m, u) = (Method::GET, Uri::from_static("/"));
        let asked = g
            .question(&Question {
                method: &m,
                uri: &u,
                host: None,
                proto: "https",
                client: "127.0.0.1".parse().expect("ip"),
                trusted: false,
                headers: &h,
                traceparent: None,
            })
            .expect("a question");
        let cookies: Vec<_> = asked.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }

    /// The service sees the forwarding headers the backend would: a trusted
    /// proxy's chain extended with its address and its proto and host kept,
    /// anyone else's replaced (also when `headers` names them). The chain is
    /// part of the cache key only where it is passed on.
    #[test]
    fn the_question_carries_a_trusted_proxys_chain() {
        let mut c = cfg(5);
        c.headers = vec!["x-forwarded-for".into(), "x-forwarded-proto".into()];
        let g = Gate::new(&c, Arc::default());
        let (m, u) = (Method::GET, Uri::from_static("/"));
        let host = HeaderValue::from_static("app.example");
        let sent = |xff: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_static(xff));
            h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
            h.insert(
                "x-forwarded-host",
                HeaderValue::from_static("front.example"),
            );
            h
        };
        let (one, other) = (&sent("203.0.113.7"), &sent("198.51.100.1"));
        let question = |headers, trusted| Question {
            method: &m,
            uri: &u,
            host: Some(&host),
            proto: "http",
            client: "::ffff:127.0.0.2".parse().expect("ip"),
            trusted,
            headers,
            traceparent: None,
        };
        let seen = |q: &Question<'_>| {
            let h = g.question(q).expect("a question");
            ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"].map(|n| {
                h.get_all(n)
                    .iter()
                    .map(|v| v.to_str().expect("text"))
                    .collect::<Vec<_>>()
                    .join("|")
            })
        };
        assert_eq!(
            seen(&question(one, true)),
            ["203.0.113.7, 127.0.0.2", "https", "front.example"]
        );
        assert_eq!(
            seen(&question(one, false)),
            ["127.0.0.2", "http", "app.example"]
        );
        assert_ne!(g.key(&question(one, true)), g.key(&question(other, true)));
        assert_ne!(g.key(&question(one, true)), g.key(&question(one, false)));
        assert_eq!(g.key(&question(one, false)), g.key(&question(other, false)));
    }

    /// Gates of one route (its own and its rules') share the breaker gauge:
    /// it shows one open while any is, whatever the others do, and a gate
    /// a reload dropped leaves it.
    #[tokio::test]
    async fn the_gauge_shows_an_open_breaker_of_any_gate_of_the_route() {
        let stats: Arc<AuthStats> = Arc::default();
        let failing = Gate::new(&cfg(1), Arc::clone(&stats));
        let mut c = cfg(1);
        c.port = service().await;
        let serving = Gate::new(&c, Arc::clone(&stats));
        assert!(matches!(ask(&failing, "/").await, Verdict::Unavailable));
        assert_eq!(stats.breaker_state(), 1);
        assert!(matches!(ask(&serving, "/").await, Verdict::Allow(_)));
        assert_eq!(
            stats.breaker_state(),
            1,
            "the other gate's success closes nothing"
        );
        drop(failing);
        assert_eq!(stats.breaker_state(), 0, "the open gate is gone");
    }

    /// A `101` or a status past the classes is no verdict: the call failed.
    #[tokio::test]
    async fn an_informational_or_unknown_status_is_an_error() {
        let mut c = cfg(5);
        c.port = service().await;
        let g = Gate::new(&c, Arc::default());
        for target in ["/switch", "/odd"] {
            assert!(
                matches!(ask(&g, target).await, Verdict::Unavailable),
                "{target}"
            );
        }
        assert_eq!(g.stats.results[Outcome::Error as usize].load(Relaxed), 2);
        assert_eq!(g.stats.results[Outcome::Denied as usize].load(Relaxed), 0);
    }

    /// A service named by host name is found through the system's resolver
    /// (`localhost`, which may also give `::1` first, where nothing listens:
    /// the next address is tried).
    #[tokio::test]
    async fn a_service_named_by_host_name_is_reached() {
        let port = service().await;
        let found = tokio::net::lookup_host(("localhost", port)).await;
        if !found.is_ok_and(|mut a| a.any(|a| a.ip().is_ipv4())) {
            eprintln!("localhost has no IPv4 address here");
            return;
        }
        let mut c = cfg(5);
        c.host = "localhost".into();
        c.port = port;
        let g = Gate::new(&c, Arc::default());
        assert!(matches!(ask(&g, "/").await, Verdict::Allow(_)));
    }

    /// The service at an IPv6 address is asked with the address in brackets
    /// in `Host`.
    #[tokio::test]
    async fn an_ipv6_service_gets_a_bracketed_host() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(l) = tokio::net::TcpListener::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback here");
            return;
        };
        let port = l.local_addr().expect("addr").port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
        });
        let mut c = cfg(5);
        c.host = "::1".into();
        c.port = port;
        let g = Gate::new(&c, Arc::default());
        assert!(matches!(ask(&g, "/").await, Verdict::Allow(_)));
        let head = rx.await.expect("the question");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("\r\nhost: [::1]:{port}\r\n")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn large_answers_decide_and_a_5xx_is_passed_on_uncached() {
        let mut c = cfg(2);
        c.port = service().await;
        c.failure = AuthFailure::Allow;
        c.breaker_open = Duration::from_secs(60);
        let g = Gate::new(&c, Arc::default());
        // A denial past 64 KiB is still a denial (without its body), an
        // allowing answer with a large body still allows.
        match ask(&g, "/big-deny").await {
            Verdict::Deny(d) => {
                assert_eq!(d.status, StatusCode::UNAUTHORIZED);
                assert!(d.body.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(ask(&g, "/big-allow").await, Verdict::Allow(_)));
        assert!(matches!(ask(&g, "/ok").await, Verdict::Allow(_)));
        let count = |o: Outcome| g.stats.results[o as usize].load(Relaxed);
        assert_eq!((count(Outcome::Denied), count(Outcome::Allowed)), (1, 2));
        // A 5xx is the service failing: passed to the client, counted as an
        // error, never cached; neither `failure` (allow here) nor the
        // breaker (two failures) takes it.
        for n in 1..=3 {
            match ask(&g, "/fail").await {
                Verdict::Deny(d) => assert_eq!(d.status, StatusCode::SERVICE_UNAVAILABLE),
                other => panic!("{other:?}"),
            }
            assert_eq!(count(Outcome::Error), n);
        }
        assert!(!g.breaker_open());
    }

    /// A breaker opened by real failures, probed by a question the service
    /// answers 5xx: it opens again, rather than letting every next request
    /// probe one at a time.
    #[tokio::test]
    async fn a_probe_answered_5xx_opens_the_breaker_again() {
        let mut c = cfg(1);
        c.port = service().await;
        c.breaker_open = Duration::from_millis(100);
        let g = Gate::new(&c, Arc::default());
        let errors = |g: &Gate| g.stats.results[Outcome::Error as usize].load(Relaxed);
        assert!(matches!(ask(&g, "/drop").await, Verdict::Unavailable));
        assert!(g.breaker_open());
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The probe: a 503, passed on.
        assert!(matches!(ask(&g, "/fail").await, Verdict::Deny(_)));
        assert_eq!(errors(&g), 2);
        // Open again: the next request makes no call.
        assert!(matches!(ask(&g, "/fail").await, Verdict::Unavailable));
        assert_eq!(errors(&g), 2);
    }

    /// The service closes a kept connection as the next question goes out
    /// on it: the question is asked again on a new connection, and answered.
    /// A loopback address whose listener's queue is full and never taken
    /// from: a connect to it hears nothing (its SYN is dropped), as one to a
    /// dead instance. Kept so while the returned values live.
    fn black_hole() -> (
        std::net::SocketAddr,
        socket2::Socket,
        Vec<std::net::TcpStream>,
    ) {
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        l.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        l.listen(0).expect("listen");
        let addr = l
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("an IP address");
        let mut held = Vec::new();
        while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            held.push(s);
            assert!(held.len() < 16, "the queue never fills");
        }
        (addr, l, held)
    }

    /// The service's first address drops every connect: the next one is
    /// tried within the call's `timeout`, and the connects after start at
    /// the one that answered.
    #[tokio::test]
    async fn an_address_that_hears_nothing_does_not_take_the_call() {
        let (hole, _listener, _held) = black_hole();
        let port = service().await;
        let good = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut c = cfg(5);
        c.timeout = Duration::from_secs(1);
        let mut g = Gate::new(&c, Arc::default());
        g.service = crate::resolve::Reach::new(crate::resolve::Name::with_lookup(
            "auth.test",
            port,
            Arc::new(move |_, _| Box::pin(async move { Ok(vec![hole, good]) })),
        ));
        let v = ask(&g, "/a").await;
        assert!(matches!(v, Verdict::Allow(_)), "{v:?}");
        assert_eq!(g.service.reached(), 1);
        lock(&g.idle).clear();
        let v = ask(&g, "/b").await;
        assert!(matches!(v, Verdict::Allow(_)), "{v:?}");
        let count = |o: Outcome| g.stats.results[o as usize].load(Relaxed);
        assert_eq!((count(Outcome::Allowed), count(Outcome::Timeout)), (2, 0));
    }

    /// A connection kept idle past `IDLE_FOR` is not used again (a firewall
    /// on the way may have forgotten it): the next question opens another.
    #[tokio::test]
    async fn a_connection_kept_too_long_is_not_used_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut chunk).await {
                        seen.extend_from_slice(&chunk[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                            if s.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let mut c = cfg(5);
        c.port = port;
        let g = Gate::new(&c, Arc::default());
        for target in ["/a", "/b"] {
            assert!(matches!(ask(&g, target).await, Verdict::Allow(_)));
        }
        assert_eq!(accepted.load(Relaxed), 1, "kept and used again");
        for (_, since) in lock(&g.idle).iter_mut() {
            *since -= IDLE_FOR + Duration::from_secs(1);
        }
        assert!(matches!(ask(&g, "/c").await, Verdict::Allow(_)));
        assert_eq!(accepted.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn a_question_lost_on_a_kept_connection_is_asked_again() {
        let mut c = cfg(1);
        c.port = service().await;
        let g = Gate::new(&c, Arc::default());
        for target in ["/once", "/next"] {
            let v = ask(&g, target).await;
            assert!(matches!(v, Verdict::Allow(_)), "{target}: {v:?}");
        }
        let count = |o: Outcome| g.stats.results[o as usize].load(Relaxed);
        assert_eq!((count(Outcome::Allowed), count(Outcome::Error)), (2, 0));
    }

    /// A flood of questions waits for one of `max_calls` places and, past
    /// `timeout`, is refused without a call: never let through, even with
    /// `failure = "allow"`, and the service never holds more than
    /// `max_calls` of weir's connections.
    #[tokio::test]
    async fn calls_past_max_calls_wait_then_are_refused_whatever_failure_says() {
        use tokio::io::AsyncReadExt;
        // A service that takes questions and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = tx.send(());
                tokio::spawn(async move {
                    let mut chunk = [0u8; 1024];
                    while matches!(s.read(&mut chunk).await, Ok(n) if n > 0) {}
                });
            }
        });
        let mut c = cfg(0);
        c.port = port;
        c.failure = AuthFailure::Allow;
        c.cache_size = 0;
        c.max_calls = 1;
        c.timeout = Duration::from_millis(300);
        let g = Arc::new(Gate::new(&c, Arc::default()));
        let asking = |target: &'static str| {
            let g = Arc::clone(&g);
            tokio::spawn(async move { ask(&g, target).await })
        };
        let a = asking("/a");
        // The first question holds the one place until its `timeout`.
        rx.recv().await.expect("the first question");
        // The second waits and takes the place when the first times out;
        // the third waits behind it for all of `timeout`, and is refused.
        let b = asking("/b");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let third = asking("/c");
        assert!(matches!(third.await.expect("task"), Verdict::Busy));
        for first in [a, b] {
            // Unanswered: `failure = "allow"`.
            assert!(matches!(first.await.expect("task"), Verdict::Allow(_)));
        }
        let count = |o: Outcome| g.stats.results[o as usize].load(Relaxed);
        assert_eq!((count(Outcome::Timeout), count(Outcome::Busy)), (2, 1));
        rx.recv().await.expect("the second question");
        assert!(rx.try_recv().is_err(), "a third connection");
    }
}
