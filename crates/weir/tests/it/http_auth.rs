//! Forward authentication against a real HTTP service of the test's own
//! that counts its calls: what it allows goes through with the headers it
//! gave; what it refuses goes back to the client as it answered; cached
//! decisions make no call; a slow or failing service takes the failure
//! mode, and the circuit breaker opens, short-circuits and closes.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::cli::free_port;
use crate::http::{metric, raw_get, start};

/// Reads one request head; (request line, headers lower-cased).
pub(crate) fn read_head(reader: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" {
            return Some((line, headers));
        }
        if let Some((n, v)) = h.trim_end().split_once(':') {
            headers.push((n.to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
}

pub(crate) fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The authentication service: `Bearer good` -> 200 with `X-User: alice`;
/// `Bearer anon` -> 200 without it; `Bearer slow` -> 200 after 2 s; no or another token -> 401 with
/// `WWW-Authenticate`. While `down`, it closes every connection unanswered.
struct AuthService {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    last_uri: Arc<std::sync::Mutex<String>>,
}

fn auth_service() -> AuthService {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let last_uri = Arc::new(std::sync::Mutex::new(String::new()));
    let (c, d, u) = (Arc::clone(&calls), Arc::clone(&down), Arc::clone(&last_uri));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let (c, d, u) = (Arc::clone(&c), Arc::clone(&d), Arc::clone(&u));
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut out = s;
                while let Some((_, headers)) = read_head(&mut reader) {
                    c.fetch_add(1, Relaxed);
                    if d.load(Relaxed) {
                        return;
                    }
                    *u.lock().expect("uri") = format!(
                        "{} {} {} {} {}",
                        header(&headers, "x-forwarded-method").unwrap_or("-"),
                        header(&headers, "x-forwarded-uri").unwrap_or("-"),
                        header(&headers, "x-forwarded-for").unwrap_or("-"),
                        header(&headers, "x-forwarded-proto").unwrap_or("-"),
                        header(&headers, "x-forwarded-host").unwrap_or("-"),
                    );
                    let answer = match header(&headers, "authorization") {
                        Some("Bearer good") => {
                            "HTTP/1.1 200 OK\r\nX-User: alice\r\nContent-Length: 0\r\n\r\n".to_owned()
                        }
                        Some("Bearer anon") => {
                            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()
                        }
                        Some("Bearer broken") => {
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 7\r\n\r\nbroken\n"
                                .to_owned()
                        }
                        Some("Bearer slow") => {
                            std::thread::sleep(Duration::from_secs(2));
                            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()
                        }
                        _ => "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"weir\"\r\n\
                              Content-Length: 12\r\n\r\nwho are you\n"
                            .to_owned(),
                    };
                    if out.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    AuthService {
        addr,
        calls,
        down,
        last_uri,
    }
}

/// A backend that answers with the headers named `names` it received, as
/// `name=value` lines in the order they came.
pub(crate) fn headers_backend(names: &'static [&'static str]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut out = s;
                while let Some((_, headers)) = read_head(&mut reader) {
                    let body: String = headers
                        .iter()
                        .filter(|(n, _)| names.contains(&n.as_str()))
                        .map(|(n, v)| format!("{n}={v}\n"))
                        .collect();
                    let _ = write!(
                        out,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    addr
}

/// A rule without authentication, in a route where another rule has one:
/// what the client sends under the other rule's `copy_headers` names does
/// not reach the backend through it either.
#[test]
fn identity_headers_are_dropped_on_every_rule_of_the_route() {
    let auth = auth_service();
    let backend = headers_backend(&["x-user", "x_user"]);
    let (admin, front) = (free_port(), free_port());
    let (_weir, _out) = start(
        "auth-open-rule",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"private\"\npool = \"p\"\n\
             match = {{ path_prefix = \"/private/\" }}\n\
             auth = {{ url = \"http://{a}/check\", headers = [\"authorization\"], copy_headers = [\"x-user\"] }}\n\
             [[listeners.routes.http]]\nname = \"open\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n",
            a = auth.addr
        ),
    );
    let (status, _, body) = raw_get(front, "/open", "X-User: mallory\r\nX_User: mallory\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(auth.calls.load(Relaxed), 0, "the open rule asks no one");
    let (status, _, body) = raw_get(
        front,
        "/private/a",
        "Authorization: Bearer good\r\nX-User: mallory\r\n",
    );
    assert_eq!((status, body.as_str()), (200, "x-user=alice\n"));
}

/// A client that sends, as trailers of its request body, the headers weir
/// vouches for — an authentication service's `copy_headers`, the forwarding
/// headers, the request id, or their `_` lookalikes — gets none of them to
/// the backend: one that merges trailers into the head would otherwise take
/// the client's word for them. Its other trailers go on.
#[test]
fn headers_weir_vouches_for_do_not_pass_as_trailers() {
    let auth = auth_service();
    // Answers with the trailer section of the chunked body it received.
    let backend = crate::cli::thread_backend(|s| {
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        let mut out = s;
        if read_head(&mut reader).is_none() {
            return;
        }
        loop {
            let mut size = String::new();
            if reader.read_line(&mut size).unwrap_or(0) == 0 {
                return;
            }
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            if std::io::Read::read_exact(&mut reader, &mut chunk).is_err() {
                return;
            }
        }
        let mut trailers = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            trailers.push_str(&line.to_ascii_lowercase());
        }
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{trailers}",
            trailers.len()
        );
    });
    let front = free_port();
    let (_weir, _out) = start(
        "auth-trailers",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"private\"\npool = \"p\"\n\
             auth = {{ url = \"http://{a}/check\", headers = [\"authorization\"], copy_headers = [\"x-user\"] }}\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n",
            a = auth.addr
        ),
    );
    let forged = [
        "x-user: mallory",
        "x_user: mallory",
        "x-forwarded-for: 192.0.2.66",
        "x_forwarded_host: elsewhere",
        "forwarded: for=192.0.2.66",
        "x-request-id: forged",
    ];
    let names: Vec<&str> = forged.iter().filter_map(|f| f.split(':').next()).collect();
    let mut s = std::net::TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(crate::cli::DEADLINE))
        .expect("timeout");
    write!(
        s,
        "POST /a HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer good\r\n\
         Transfer-Encoding: chunked\r\nTrailer: x-sum, {}\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nx-sum: 1\r\n{}\r\n\r\n",
        names.join(", "),
        forged.join("\r\n")
    )
    .expect("request");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(body, "x-sum: 1\r\n", "{answer}");
}

#[test]
fn forward_auth_with_cache_failure_modes_and_breaker() {
    let auth = auth_service();
    let backend = headers_backend(&["x-user", "x_user"]);
    let (admin, front) = (free_port(), free_port());
    let (_weir, _out) = start(
        "auth",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             auth = {{ url = \"http://{a}/check\", headers = [\"authorization\"], copy_headers = [\"x-user\"], \
                       timeout = \"1s\", denied_ttl = \"1h\", breaker_failures = 2, breaker_open = \"2s\" }}\n\
             [[listeners.routes.http]]\nname = \"public\"\npool = \"p\"\n\
             match = {{ path_prefix = \"/public/\" }}\n\
             auth = {{ url = \"http://{a}/check\", headers = [\"authorization\"], copy_headers = [\"x-user\"], timeout = \"1s\", failure = \"allow\", cache_size = 0 }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n",
            a = auth.addr
        ),
    );
    let calls = || auth.calls.load(Relaxed);

    // Allowed: the service's X-User replaces the client's.
    let (status, _, body) = raw_get(
        front,
        "/orders?id=7",
        "Authorization: Bearer good\r\nX-User: mallory\r\n",
    );
    assert_eq!((status, body.as_str()), (200, "x-user=alice\n"));
    assert_eq!(calls(), 1);
    assert_eq!(
        auth.last_uri.lock().expect("uri").as_str(),
        "GET /orders?id=7 127.0.0.1 http app.example.com"
    );
    // Cached: the same question again makes no call...
    assert_eq!(
        raw_get(front, "/orders?id=7", "Authorization: Bearer good\r\n").0,
        200
    );
    assert_eq!(calls(), 1);
    // ...but another target is another question, whatever the token: the
    // service may decide by path.
    assert_eq!(
        raw_get(front, "/x", "Authorization: Bearer good\r\n").0,
        200
    );
    assert_eq!(calls(), 2);
    // Allowed without an X-User: the client's does not reach the backend.
    let (status, _, body) = raw_get(
        front,
        "/x",
        "Authorization: Bearer anon\r\nX-User: mallory\r\n",
    );
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(calls(), 3);
    // Nor one that reads the same with `_` for `-` (a CGI-style backend
    // would take it for X-User).
    let (status, _, body) = raw_get(
        front,
        "/x",
        "Authorization: Bearer anon\r\nX_User: mallory\r\n",
    );
    assert_eq!((status, body.as_str()), (200, ""));

    // Denied: the service's answer is the client's, and cached too.
    let (status, head, body) = raw_get(front, "/x", "Authorization: Bearer bad\r\n");
    assert_eq!((status, body.as_str()), (401, "who are you\n"));
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"weir\""),
        "{head}"
    );
    assert_eq!(raw_get(front, "/x", "Authorization: Bearer bad\r\n").0, 401);
    assert_eq!(calls(), 4);

    // The service failing (a 5xx): passed on, never cached, and not taken
    // for "cannot decide" (the rule with failure = "allow" does not let it
    // through); a gRPC client gets UNAVAILABLE.
    let (status, _, body) = raw_get(front, "/x", "Authorization: Bearer broken\r\n");
    assert_eq!((status, body.as_str()), (500, "broken\n"));
    assert_eq!(
        raw_get(front, "/public/a", "Authorization: Bearer broken\r\n").0,
        500
    );
    let (status, head, _) = raw_get(
        front,
        "/x",
        "Authorization: Bearer broken\r\nContent-Type: application/grpc\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("grpc-status: 14"),
        "{head}"
    );
    assert_eq!(calls(), 7);

    // Too slow: the failure mode (deny: 503); never cached.
    let (status, _, body) = raw_get(front, "/x", "Authorization: Bearer slow\r\n");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("auth_unavailable"), "{body}");
    // The rule's own auth lets it through when the service cannot decide,
    // and what the client says under a copied name is still dropped.
    let (status, _, body) = raw_get(
        front,
        "/public/a",
        "Authorization: Bearer slow\r\nX-User: mallory\r\n",
    );
    assert_eq!((status, body.as_str()), (200, ""));

    // The service goes down: two failures in a row open the route's breaker
    // (the slow call above was the first), then requests make no call.
    auth.down.store(true, Relaxed);
    assert_eq!(raw_get(front, "/x", "Authorization: Bearer t1\r\n").0, 503);
    let before = calls();
    assert_eq!(raw_get(front, "/x", "Authorization: Bearer t2\r\n").0, 503);
    assert_eq!(raw_get(front, "/x", "Authorization: Bearer t3\r\n").0, 503);
    assert_eq!(calls(), before, "an open breaker made a call");
    assert_eq!(
        metric(
            admin,
            "weir_auth_circuit_breaker_state{listener=\"web\",route=\"app\"}"
        ),
        1.0
    );
    // Back up; after breaker_open one probe goes through and closes it.
    auth.down.store(false, Relaxed);
    std::thread::sleep(Duration::from_millis(2100));
    let (status, _, body) = raw_get(front, "/x", "Authorization: Bearer good2\r\n");
    assert_eq!((status, body.as_str()), (401, "who are you\n"));
    assert_eq!(
        metric(
            admin,
            "weir_auth_circuit_breaker_state{listener=\"web\",route=\"app\"}"
        ),
        0.0
    );
    let result = |r: &str| {
        metric(
            admin,
            &format!("weir_auth_requests_total{{listener=\"web\",route=\"app\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(result("allowed"), 3.0);
    assert_eq!(result("denied"), 2.0);
    assert!(result("timeout") >= 2.0, "{}", result("timeout"));
    assert!(result("error") >= 1.0);
    // Every call is timed, whatever its result; the two timeouts with the
    // whole second each waited.
    let mut made = 0.0;
    for r in ["allowed", "denied", "error", "timeout"] {
        made += result(r);
    }
    assert_eq!(
        metric(
            admin,
            "weir_auth_duration_seconds_count{listener=\"web\",route=\"app\"}"
        ),
        made
    );
    let waited = metric(
        admin,
        "weir_auth_duration_seconds_sum{listener=\"web\",route=\"app\"}",
    );
    assert!(waited >= 2.0, "{waited}");
    assert_eq!(
        metric(
            admin,
            "weir_auth_cache_requests_total{listener=\"web\",route=\"app\",result=\"hit\"}"
        ),
        3.0
    );
}

/// `max_calls` bounds the calls under way to the service: a request that
/// finds them all taken waits for one within `timeout`, then gets 503
/// `auth_busy` without a call, even where `failure = "allow"` lets an
/// unanswered call through.
#[test]
fn requests_past_max_calls_are_refused_even_when_failure_allows() {
    let auth = auth_service();
    let backend = headers_backend(&["x-user"]);
    let (admin, front) = (free_port(), free_port());
    let (_weir, _out) = start(
        "auth-busy",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             auth = {{ url = \"http://{a}/check\", headers = [\"authorization\"], timeout = \"1s\", \
                       failure = \"allow\", breaker_failures = 0, max_calls = 1 }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n",
            a = auth.addr
        ),
    );
    // The service takes 2 s to answer `slow`: each call times out after 1 s.
    let slow = |path: &'static str| {
        std::thread::spawn(move || raw_get(front, path, "Authorization: Bearer slow\r\n"))
    };
    let first = slow("/a");
    let deadline = std::time::Instant::now() + crate::cli::DEADLINE;
    while auth.calls.load(Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "no call");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The second waits, and takes the place when the first times out; the
    // third waits behind it for all of `timeout`.
    let second = slow("/b");
    std::thread::sleep(Duration::from_millis(100));
    let (status, _, body) = slow("/c").join().expect("third");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("auth_busy"), "{body}");
    for t in [first, second] {
        assert_eq!(t.join().expect("request").0, 200, "failure = allow");
    }
    assert_eq!(auth.calls.load(Relaxed), 2);
    let result = |r: &str| {
        metric(
            admin,
            &format!("weir_auth_requests_total{{listener=\"web\",route=\"app\",result=\"{r}\"}}"),
        )
    };
    assert_eq!((result("timeout"), result("busy")), (2.0, 1.0));
}

/// Behind a trusted proxy (`forwarded.trusted`), the service learns the
/// original client as the backend does: the proxy's `X-Forwarded-For` chain
/// extended with the proxy's address, its proto and host kept; and each
/// chain is a question of its own, so one client's decision is not replayed
/// for another behind the same proxy. From an untrusted client the same
/// headers are replaced and play no part in the question.
#[test]
fn a_trusted_proxys_forwarding_headers_reach_the_service() {
    let auth = auth_service();
    let backend = headers_backend(&["x-forwarded-for"]);
    let front = free_port();
    let (_weir, _out) = start(
        "auth-forwarded",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             forwarded = {{ trusted = [\"127.0.0.2\"] }}\n\
             auth = {{ url = \"http://{a}/check\", headers = [\"authorization\"] }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n",
            a = auth.addr
        ),
    );
    let calls = || auth.calls.load(Relaxed);
    let asked = || auth.last_uri.lock().expect("uri").clone();
    let proxy = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let from = |chain: &str| {
        format!(
            "Authorization: Bearer good\r\nX-Forwarded-For: {chain}\r\n\
             X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n"
        )
    };
    assert_eq!(status_from(proxy, front, "/a", &from("203.0.113.7")), 200);
    assert_eq!(
        (calls(), asked().as_str()),
        (1, "GET /a 203.0.113.7, 127.0.0.2 https shop.example")
    );
    // Another client behind the proxy: asked again; the first: cached.
    assert_eq!(status_from(proxy, front, "/a", &from("198.51.100.1")), 200);
    assert_eq!(
        (calls(), asked().as_str()),
        (2, "GET /a 198.51.100.1, 127.0.0.2 https shop.example")
    );
    assert_eq!(status_from(proxy, front, "/a", &from("203.0.113.7")), 200);
    assert_eq!(calls(), 2);
    // An untrusted client's claims are replaced, and whatever it claims it
    // asks one question.
    let direct = std::net::Ipv4Addr::new(127, 0, 0, 1);
    assert_eq!(status_from(direct, front, "/a", &from("203.0.113.7")), 200);
    assert_eq!(
        (calls(), asked().as_str()),
        (3, "GET /a 127.0.0.1 http app.example.com")
    );
    assert_eq!(status_from(direct, front, "/a", &from("192.0.2.9")), 200);
    assert_eq!(calls(), 3);
}

/// One request from the client address `source` (on loopback): its status.
fn status_from(source: std::net::Ipv4Addr, front: SocketAddr, target: &str, headers: &str) -> u16 {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind the client address");
    socket.connect(&front.into()).expect("connect");
    let mut s: std::net::TcpStream = socket.into();
    s.set_read_timeout(Some(crate::cli::DEADLINE))
        .expect("timeout");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: app.example.com\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).expect("read");
    out.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `allowed_ttl` and `denied_ttl` each bound their own decisions: an
/// allowing one (here 5 s) is reused until it runs out, then the service
/// is asked again, while a refusal kept for an hour is still reused then.
/// Neither is reused for another client address.
#[test]
fn an_allowing_decision_is_reused_for_allowed_ttl_only() {
    let auth = auth_service();
    let backend = headers_backend(&["x-user"]);
    let front = free_port();
    let (_weir, _out) = start(
        "auth-ttl",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             auth = {{ url = \"http://{a}/check\", headers = [\"authorization\"], \
                       allowed_ttl = \"5s\", denied_ttl = \"1h\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n",
            a = auth.addr
        ),
    );
    let calls = || auth.calls.load(Relaxed);
    let good = "Authorization: Bearer good\r\n";
    let bad = "Authorization: Bearer bad\r\n";
    // Before the first decision is made: it cannot run out before this.
    let began = std::time::Instant::now();
    assert_eq!(raw_get(front, "/a", good).0, 200);
    assert_eq!(raw_get(front, "/a", bad).0, 401);
    assert_eq!(calls(), 2);
    assert_eq!(raw_get(front, "/a", good).0, 200);
    assert_eq!(raw_get(front, "/a", bad).0, 401);
    assert_eq!(calls(), 2, "both decisions are reused at once");
    // Another client asking the same: a question of its own.
    assert_eq!(
        status_from(std::net::Ipv4Addr::new(127, 0, 0, 2), front, "/a", good),
        200
    );
    assert_eq!(calls(), 3);

    // The allowing decision runs out: asked again, not before 5 s.
    let end = began + crate::cli::DEADLINE;
    while calls() == 3 {
        assert!(
            std::time::Instant::now() < end,
            "still reused after {:?}",
            began.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(raw_get(front, "/a", good).0, 200);
    }
    assert_eq!(calls(), 4);
    assert!(
        began.elapsed() >= Duration::from_secs(5),
        "asked again after {:?}",
        began.elapsed()
    );
    // The refusal is still reused.
    assert_eq!(raw_get(front, "/a", bad).0, 401);
    assert_eq!(calls(), 4, "the refusal was asked again");
}

/// A change of backends only (here `weir backend add`, as DNS discovery
/// makes at every change of its answer) keeps the route's authentication
/// as it was: its decisions are still reused (every client was asked again
/// after each such change).
#[test]
fn a_change_of_backends_keeps_the_decisions() {
    use crate::control::{ctl, text};
    let auth = auth_service();
    let backend = headers_backend(&["x-user"]);
    let extra = headers_backend(&["x-user"]);
    let (front, grpc) = (free_port(), free_port());
    let (_weir, _out) = start(
        "auth-backends",
        &format!(
            "[admin]\ngrpc = \"{grpc}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             auth = {{ url = \"http://{a}/check\", headers = [\"authorization\"] }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n",
            a = auth.addr
        ),
    );
    let good = "Authorization: Bearer good\r\n";
    assert_eq!(raw_get(front, "/a", good).0, 200);
    assert_eq!(auth.calls.load(Relaxed), 1);
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["backend", "add", "p", &extra.to_string()],
    ));
    assert_eq!(code, 0, "{err}");
    for _ in 0..4 {
        assert_eq!(raw_get(front, "/a", good).0, 200);
    }
    assert_eq!(auth.calls.load(Relaxed), 1, "the decision was kept");
}
