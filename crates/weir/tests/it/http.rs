//! Layer 7 with real peers: curl (HTTP/1.1 and h2c with prior knowledge) as
//! the client, nginx and hand-made backends behind weir's l7 routes. Rules,
//! forwarding headers, kept-alive upstream connections and the keep-alive
//! race, weir's own answers (404, 502, 503, 504, 413, 431, 400, gRPC
//! statuses), hostile clients (smuggling, slowloris, a chunked body past the
//! limit), large bodies both ways, a backend gone silent inside a body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::cli::{
    DEADLINE, Running, free_port, rss_kib, start_nginx, start_weir, temp_config, test_dir,
    thread_backend, wait_line, weir, which,
};

pub(crate) fn curl_path() -> PathBuf {
    which("curl").expect("curl is not installed: run scripts/test.sh, which installs it")
}

/// `curl ARGS URL`: (status, body, HTTP version curl used).
pub(crate) fn curl(args: &[&str], url: &str) -> (u16, String, String) {
    let out = Command::new(curl_path())
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split(' ');
    let status = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = tail.next().unwrap_or("").to_owned();
    let body = body.strip_suffix('\n').unwrap_or(body);
    (status, body.to_owned(), version)
}

/// The value of `series` in a scrape of `admin`.
pub(crate) fn metric(admin: SocketAddr, series: &str) -> f64 {
    let body = crate::cli::http_get(admin, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}

/// Waits until `cond` holds, failing the test past the deadline.
pub(crate) fn wait(what: &str, cond: &dyn Fn() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn wait_connectable(addr: SocketAddr) {
    let end = Instant::now() + DEADLINE;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx with one server whose `location /` does `location` (nginx
/// directives, e.g. `return 200 "$request_uri\n";`), ready for connections.
fn nginx_doing(tag: &str, location: &str) -> (Running, SocketAddr) {
    let dir = test_dir(tag);
    let at = free_port();
    let nginx = start_nginx(
        &dir,
        &format!("server {{ listen {at}; location / {{ {location} }} }}"),
    )
    .with(dir);
    wait_connectable(at);
    (nginx, at)
}

/// nginx with two servers that echo what weir sent them.
fn echoing_nginx(tag: &str) -> (Running, SocketAddr, SocketAddr) {
    let dir = test_dir(tag);
    let (a, b) = (free_port(), free_port());
    let echo = "\"$server_port $request_method $request_uri host=$http_host \
                xff=$http_x_forwarded_for xfp=$http_x_forwarded_proto \
                xfh=$http_x_forwarded_host fwd=$http_forwarded rid=$http_x_request_id \
                secret=$http_x_secret conn=$http_connection ka=$http_keep_alive\\n\"";
    let nginx = start_nginx(
        &dir,
        &format!(
            "server {{ listen {a}; location / {{ return 200 {echo}; }} }}\n\
             server {{ listen {b}; location / {{ return 200 {echo}; }} }}"
        ),
    );
    wait_connectable(a);
    wait_connectable(b);
    (nginx.with(dir), a, b)
}

pub(crate) fn start(tag: &str, config: &str) -> (Running, std::sync::mpsc::Receiver<String>) {
    let file = temp_config(tag, config);
    let mut cmd = weir();
    cmd.args(["run", "--config"]).arg(&file);
    let (weir, out) = start_weir(cmd);
    (weir.with(file), out)
}

/// Requests go to the pool of the first rule they match, over HTTP/1.1 and
/// over h2c; a request no rule takes gets 404 with the reason; the route's
/// and the backends' HTTP counters see all of it.
#[test]
fn rules_pick_the_pool_over_http1_and_h2c() {
    let (_nginx, a, b) = echoing_nginx("rules");
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "rules",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"api\"\npool = \"b\"\n\
             match = {{ host = [\"api.example.com\", \"*.api.example.com\"], path_prefix = \"/v1/\", methods = [\"GET\", \"POST\"] }}\n\
             [[listeners.routes.http]]\nname = \"canary\"\npool = \"b\"\n\
             match = {{ headers = {{ \"x-canary\" = \"1\" }} }}\n\
             [[listeners.routes.http]]\nname = \"web\"\npool = \"a\"\n\
             match = {{ path_prefix = \"/\" , methods = [\"GET\"] }}\n\
             [[pools]]\nname = \"a\"\n[[pools.backends]]\nname = \"a\"\naddress = \"{a}\"\n\
             [[pools]]\nname = \"b\"\n[[pools.backends]]\nname = \"b\"\naddress = \"{b}\"\n"
        ),
    );
    let url = |path: &str| format!("http://{front}{path}");
    let (pa, pb) = (a.port().to_string(), b.port().to_string());
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, body, v) = curl(
            &[version, "-H", "Host: API.example.com:80"],
            &url("/v1/users"),
        );
        assert_eq!(status, 200, "{version} {body}");
        assert!(
            body.starts_with(&format!("{pb} GET /v1/users host=API.example.com:80")),
            "{body}"
        );
        let expected = if version == "--http1.1" { "1.1" } else { "2" };
        assert_eq!(v, expected);

        let (_, body, _) = curl(&[version, "-H", "Host: x.api.example.com"], &url("/v1/a"));
        assert!(body.starts_with(&pb), "{body}");
        // Another host, method or path: the catch-all for GET.
        let (_, body, _) = curl(&[version, "-H", "Host: a.x.api.example.com"], &url("/v1/a"));
        assert!(body.starts_with(&pa), "{body}");
        let (_, body, _) = curl(&[version, "-H", "Host: api.example.com"], &url("/v2/a"));
        assert!(body.starts_with(&pa), "{body}");
        let (_, body, _) = curl(&[version, "-H", "x-canary: 1"], &url("/"));
        assert!(body.starts_with(&pb), "{body}");
        // No rule takes a DELETE of /: 404, with the reason.
        let (status, body, _) = curl(&[version, "-X", "DELETE"], &url("/"));
        assert_eq!(status, 404);
        assert_eq!(
            body,
            "weir: no rule of this route matches the request (no_rule)"
        );
    }
    assert_eq!(
        metric(
            admin,
            "weir_http_requests_total{listener=\"web\",route=\"app\",code=\"2xx\"}"
        ),
        10.0
    );
    assert_eq!(
        metric(
            admin,
            "weir_http_requests_total{listener=\"web\",route=\"app\",code=\"4xx\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            admin,
            "weir_backend_http_requests_total{pool=\"b\",backend=\"b\",code=\"2xx\"}"
        ),
        6.0
    );
    assert_eq!(
        metric(
            admin,
            "weir_http_request_duration_seconds_count{listener=\"web\",route=\"app\"}"
        ),
        12.0
    );
    // Each backend's responses are timed (four to `a`, six to `b`; the 404s
    // reached none), and none is left in flight.
    for (backend, n) in [("a", 4.0), ("b", 6.0)] {
        let id = format!("pool=\"{backend}\",backend=\"{backend}\"");
        // The answers' bodies count as bytes received from it (an l7
        // backend read 0 here).
        let received = metric(admin, &format!("weir_backend_received_bytes_total{{{id}}}"));
        assert!(received >= n * 10.0, "{backend}: {received}");
        assert_eq!(
            metric(
                admin,
                &format!("weir_backend_http_response_duration_seconds_count{{{id}}}")
            ),
            n,
            "{backend}"
        );
        let end = Instant::now() + DEADLINE;
        while metric(admin, &format!("weir_backend_http_requests_active{{{id}}}")) != 0.0 {
            assert!(
                Instant::now() < end,
                "requests to {backend} still in flight"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_documented(admin);
}

/// Every `weir_*` family a scrape of `admin` shows is in docs/metrics.md,
/// with its type.
pub(crate) fn assert_documented(admin: SocketAddr) {
    let documented = crate::deploy::documented_families();
    let scrape = crate::cli::http_get(admin, "/metrics");
    for line in scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE weir_"))
    {
        let (name, kind) = line.split_once(' ').unwrap_or((line, ""));
        let name = format!("weir_{name}");
        assert_eq!(
            documented.get(&name).map(String::as_str),
            Some(kind),
            "{name} ({kind}) is not documented in docs/metrics.md"
        );
    }
}

/// X-Forwarded-* and Forwarded are set from the real client; a client that
/// is not trusted cannot choose them; a trusted one's chain is extended and
/// its request id kept. Hop-by-hop headers never reach the backend.
#[test]
fn forwarding_headers_and_hop_by_hop() {
    let (_nginx, a, _) = echoing_nginx("forwarding");
    let (open, trusting) = (free_port(), free_port());
    let listener = |name: &str, bind: SocketAddr, trusted: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"{bind}\"\n\
             [[listeners.routes]]\nname = \"r\"\nmode = \"l7\"\n\
             forwarded = {{ trusted = [{trusted}], rfc7239 = true }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"a\"\n"
        )
    };
    let (_weir, _out) = start(
        "forwarding",
        &format!(
            "[log]\naccess_log = false\n{}{}\
             [[pools]]\nname = \"a\"\n[[pools.backends]]\naddress = \"{a}\"\n",
            listener("open", open, ""),
            listener("trusting", trusting, "\"127.0.0.0/8\""),
        ),
    );
    let spoof = [
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "X-Request-Id: req-42",
        "-H",
        "Host: app.example.com",
    ];
    let (_, body, _) = curl(&spoof, &format!("http://{open}/"));
    assert!(body.contains(" xff=127.0.0.1 "), "{body}");
    assert!(body.contains(" xfp=http "), "{body}");
    assert!(body.contains(" xfh=app.example.com "), "{body}");
    assert!(
        body.contains(" fwd=for=127.0.0.1;proto=http;host=app.example.com "),
        "{body}"
    );
    assert!(!body.contains("rid=req-42"), "{body}");
    let rid = body
        .split(" rid=")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("");
    assert_eq!(rid.len(), 32, "a generated request id: {body}");

    let (_, body, _) = curl(&spoof, &format!("http://{trusting}/"));
    assert!(body.contains(" xff=6.6.6.6, 127.0.0.1 "), "{body}");
    assert!(body.contains(" xfp=https "), "{body}");
    assert!(body.contains(" rid=req-42 "), "{body}");

    // Hop-by-hop: Connection, what it names, Keep-Alive.
    let (_, body, _) = curl(
        &[
            "--http1.1",
            "-H",
            "Connection: keep-alive, X-Secret",
            "-H",
            "X-Secret: s3cret",
            "-H",
            "Keep-Alive: timeout=5",
        ],
        &format!("http://{open}/"),
    );
    assert!(body.contains(" secret= "), "{body}");
    assert!(body.contains(" ka=\n") || body.ends_with(" ka="), "{body}");

    // An HTTP/1.0 request may name no host; it goes on as HTTP/1.0, since an
    // HTTP/1.1 request must have one (nginx answers 400 without), then the
    // pool's next request is served as before.
    for _ in 0..2 {
        let r = raw_exchange(open, b"GET /old HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 200"), "{r}");
        assert!(r.contains(" GET /old host= "), "{r}");
        let (_, body, _) = curl(&["-H", "Host: app.example.com"], &format!("http://{open}/"));
        assert!(body.contains(" host=app.example.com "), "{body}");
    }
}

/// A hand-made HTTP/1.1 backend: answers every request with `status` and a
/// body saying which connection (1, 2, ...) and which request on it, and
/// counts connections. With `close_after`, it closes each connection after
/// that many answers *without* saying so (no `Connection: close`), as a
/// backend whose keep-alive timeout has just passed does.
pub(crate) struct RawBackend {
    pub(crate) addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    pub(crate) requests: Arc<AtomicUsize>,
}

pub(crate) fn raw_backend(close_after: Option<usize>, delay: Duration) -> RawBackend {
    raw_backend_with(close_after, delay, None)
}

/// A [`raw_backend`] that closes each connection `rest` after its first
/// answer, while it rests (its own keep-alive timeout, shorter than weir's),
/// without saying so.
pub(crate) fn raw_backend_resting(rest: Duration) -> RawBackend {
    raw_backend_with(None, Duration::ZERO, Some(rest))
}

fn raw_backend_with(
    close_after: Option<usize>,
    delay: Duration,
    rest: Option<Duration>,
) -> RawBackend {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let n = c.fetch_add(1, SeqCst) + 1;
            let r = Arc::clone(&r);
            std::thread::spawn(move || serve_raw(s, n, close_after, delay, rest, &r));
        }
    });
    RawBackend {
        addr,
        connections,
        requests,
    }
}

fn serve_raw(
    s: TcpStream,
    conn: usize,
    close_after: Option<usize>,
    delay: Duration,
    rest: Option<Duration>,
    r: &AtomicUsize,
) {
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut s = s;
    for k in 1.. {
        // The request line, then the rest of the head and the body.
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if close_after.is_some_and(|n| k > n) {
            // The request came on a connection this backend is done
            // with: close it without an answer.
            return;
        }
        let Some(body) = framing(&mut reader).and_then(|f| read_body(&mut reader, f)) else {
            return;
        };
        r.fetch_add(1, SeqCst);
        std::thread::sleep(delay);
        let answer = format!("conn={conn} req={k} body={}\n", body.len());
        // One write: `write!` makes one per piece, and the pieces after the
        // first wait for the delayed ACK of the first (Nagle), 40 ms each.
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        let _ = s.write_all(answer.as_bytes());
        if let Some(rest) = rest {
            std::thread::sleep(rest);
            return;
        }
    }
}

/// A chunked body (RFC 9112 §7.1), trailers skipped.
fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            loop {
                line.clear();
                if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        reader.read_exact(&mut body[start..]).ok()?;
        body.truncate(start + size);
    }
}

/// Kept-alive connections to the backend are reused; one the backend closed
/// as a request went out is replaced once for a GET, and a POST is never
/// sent twice.
#[test]
fn kept_alive_upstream_connections_and_the_race() {
    let steady = raw_backend(None, Duration::ZERO);
    let racing = raw_backend(Some(1), Duration::ZERO);
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "keepalive",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"racing\"\npool = \"racing\"\nmatch = {{ path_prefix = \"/race\" }}\n\
             [[listeners.routes.http]]\nname = \"steady\"\npool = \"steady\"\n\
             [[pools]]\nname = \"steady\"\n[[pools.backends]]\nname = \"s\"\naddress = \"{}\"\n\
             [[pools]]\nname = \"racing\"\nretries = 0\n[[pools.backends]]\nname = \"r\"\naddress = \"{}\"\n",
            steady.addr, racing.addr
        ),
    );
    for i in 1..=5 {
        let (status, body, _) = curl(&["--http1.1"], &format!("http://{front}/steady"));
        assert_eq!(status, 200);
        assert_eq!(body, format!("conn=1 req={i} body=0"));
    }
    assert_eq!(steady.connections.load(SeqCst), 1);
    assert_eq!(
        metric(
            admin,
            "weir_http_upstream_connections_total{pool=\"steady\",backend=\"s\",event=\"reused\"}"
        ),
        4.0
    );

    // The racing backend answers one request per connection, then closes
    // the next one's connection unanswered, as a backend whose keep-alive
    // timeout ran out while the connection rested: the GET is replayed on a
    // new connection.
    for _ in 0..3 {
        let (status, body, _) = curl(&["--http1.1"], &format!("http://{front}/race"));
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(600));
    }
    assert_eq!(racing.requests.load(SeqCst), 3);
    assert_eq!(racing.connections.load(SeqCst), 3);
    let replayed = |reason: &str| {
        metric(
            admin,
            &format!(
                "weir_backend_http_replayed_total{{pool=\"racing\",backend=\"r\",reason=\"{reason}\"}}"
            ),
        )
    };
    // The first request found no kept connection; the next two, one that closed.
    assert_eq!(replayed("closed"), 2.0);
    assert_eq!(replayed("goaway"), 0.0);

    // A POST on a kept-alive connection the backend then drops: it may have
    // been taken, so it is not sent again; the client gets 502.
    let (status, body, _) = curl(&["--http1.1", "-d", "x=1"], &format!("http://{front}/race"));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body, "weir: the backend failed (backend_error)");
    assert_eq!(racing.requests.load(SeqCst), 3, "the POST was sent twice");
}

/// The race's retry cannot reach the same backend (it stopped listening as
/// it closed the kept connection): nothing of the GET reached a backend that
/// answers, so the next backend takes it within `retries`.
#[test]
fn a_race_retry_that_cannot_connect_moves_to_another_backend() {
    // Serves one connection (one answer, then closes the next request's
    // connection unanswered) and listens no more.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = l.local_addr().expect("addr");
    let served = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&served);
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            drop(l);
            serve_raw(s, 1, Some(1), Duration::ZERO, None, &counted);
        }
    });
    let steady = raw_backend(None, Duration::ZERO);
    let front = free_port();
    let (_weir, _out) = start(
        "race-moves-on",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nbalance = \"first\"\nretries = 1\n\
             [pools.health]\ntype = \"none\"\n\
             [[pools.backends]]\nname = \"gone\"\naddress = \"{gone}\"\n\
             [[pools.backends]]\nname = \"steady\"\naddress = \"{}\"\n",
            steady.addr
        ),
    );
    let (status, body, _) = curl(&["--http1.1"], &format!("http://{front}/"));
    assert_eq!((status, served.load(SeqCst)), (200, 1), "{body}");
    // Rested long enough for weir to fear the race.
    std::thread::sleep(Duration::from_millis(600));
    let (status, body, _) = curl(&["--http1.1"], &format!("http://{front}/"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "conn=1 req=1 body=0");
    assert_eq!(steady.requests.load(SeqCst), 1);
}

/// A reload that lowers `upstream_keepalive` applies to the connections it
/// keeps as well: one that rested longer than the new value is not used.
#[test]
fn a_reload_lowering_upstream_keepalive_applies_to_kept_connections() {
    let backend = raw_backend(None, Duration::ZERO);
    let front = free_port();
    let config = |keepalive: &str| {
        format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_keepalive = \"{keepalive}\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"b\"\naddress = \"{}\"\n",
            backend.addr
        )
    };
    let file = temp_config("keepalive-reload", &config("60s"));
    let mut cmd = weir();
    cmd.args(["run", "--config"]).arg(&file);
    let (child, out) = start_weir(cmd);
    let (status, body, _) = curl(&["--http1.1"], &format!("http://{front}/"));
    assert_eq!((status, body.as_str()), (200, "conn=1 req=1 body=0"));

    std::fs::write(&file, config("300ms")).expect("write");
    crate::cli::signal(&child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    std::thread::sleep(Duration::from_millis(600));
    let (status, body, _) = curl(&["--http1.1"], &format!("http://{front}/"));
    assert_eq!((status, body.as_str()), (200, "conn=2 req=1 body=0"));
    assert_eq!(backend.connections.load(SeqCst), 2);
}

/// A backend that closes a kept-alive connection while it rests (its own
/// keep-alive timeout, shorter than weir's): weir sees the close when it
/// next looks at the connection, before sending anything on it, so even a
/// POST goes out once, on a new connection, and is answered.
#[test]
fn a_kept_alive_connection_the_backend_closed_at_rest_is_not_used() {
    let backend = raw_backend_resting(Duration::from_millis(100));
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "closed-at-rest",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nretries = 0\n[[pools.backends]]\nname = \"b\"\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    let (status, body, _) = curl(&["--http1.1"], &format!("http://{front}/"));
    assert_eq!((status, body.as_str()), (200, "conn=1 req=1 body=0"));
    std::thread::sleep(Duration::from_millis(400));
    let (status, body, _) = curl(&["--http1.1", "-d", "x=1"], &format!("http://{front}/"));
    assert_eq!((status, body.as_str()), (200, "conn=2 req=1 body=3"));
    assert_eq!(backend.requests.load(SeqCst), 2, "a request was sent twice");
    let series = |event: &str| {
        metric(
            admin,
            &format!(
                "weir_http_upstream_connections_total{{pool=\"p\",backend=\"b\",event=\"{event}\"}}"
            ),
        )
    };
    assert_eq!(series("created"), 2.0);
    assert_eq!(series("reused"), 0.0);
    // The second may have been seen closed too, by now.
    assert!(series("closed") >= 1.0);
}

/// weir's own answers: 503 when no backend can serve, 502 when the backend
/// refuses, 504 when its answer does not come in time, each naming the
/// reason; a gRPC client gets a gRPC status instead.
#[test]
fn failures_get_their_status_and_reason() {
    let refusing = free_port();
    let slow = raw_backend(None, Duration::from_secs(3));
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "failures",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_response = \"300ms\" }}\n\
             [[listeners.routes.http]]\nname = \"slow\"\npool = \"slow\"\nmatch = {{ path_prefix = \"/slow\" }}\n\
             [[listeners.routes.http]]\nname = \"gone\"\npool = \"gone\"\n\
             [[pools]]\nname = \"slow\"\n[[pools.backends]]\naddress = \"{}\"\n\
             [[pools]]\nname = \"gone\"\n[pools.health]\ntype = \"none\"\npassive_timeout = \"1h\"\n\
             [[pools.backends]]\naddress = \"{refusing}\"\n",
            slow.addr
        ),
    );
    let url = |p: &str| format!("http://{front}{p}");
    let (status, body, _) = curl(&[], &url("/"));
    assert_eq!(
        (status, body.as_str()),
        (502, "weir: the backend failed (refused)")
    );
    // The refusals took the backend down (passive health): nothing serves.
    let end = Instant::now() + DEADLINE;
    loop {
        let (status, body, _) = curl(&[], &url("/"));
        if status == 503 {
            assert_eq!(body, "weir: no backend is available (no_backend)");
            break;
        }
        assert!(Instant::now() < end, "never 503: {status} {body}");
    }
    let (status, body, _) = curl(&["-H", "content-type: application/grpc", "-i"], &url("/"));
    assert_eq!(status, 200);
    assert!(body.contains("grpc-status: 14"), "{body}");

    let began = Instant::now();
    let (status, body, _) = curl(&[], &url("/slow"));
    assert_eq!(
        (status, body.as_str()),
        (
            504,
            "weir: the backend did not answer in time (upstream_timeout)"
        )
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    let (status, body, _) = curl(
        &["-H", "content-type: application/grpc+proto", "-i"],
        &url("/slow"),
    );
    assert_eq!(status, 200);
    assert!(body.contains("grpc-status: 4"), "{body}");
    assert!(
        metric(
            admin,
            "weir_http_requests_total{listener=\"web\",route=\"app\",code=\"5xx\"}"
        ) >= 3.0
    );
    // weir's own answers are no bytes from the backends that failed.
    for (pool, backend) in [("gone", refusing), ("slow", slow.addr)] {
        let series =
            format!("weir_backend_received_bytes_total{{pool=\"{pool}\",backend=\"{backend}\"}}");
        assert_eq!(metric(admin, &series), 0.0, "{series}");
    }
}

/// Writes `request` on a new connection to `addr` and reads what comes back
/// until the server closes or 3 s pass.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Hostile clients: an ambiguous length (smuggling), an oversized header, a
/// declared body over the limit, and a header sent too slowly.
#[test]
fn hostile_requests_are_refused() {
    let backend = raw_backend(None, Duration::ZERO);
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "hostile",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             max_header_bytes = 8192\nmax_body_bytes = 1000\n\
             timeouts = {{ request_header = \"500ms\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    // Both lengths: the chunked framing wins, the Content-Length is dropped,
    // and the connection closes after the answer (RFC 9112 §6.3), so the "G"
    // after the chunked body never becomes a request of its own.
    let smuggle = raw_exchange(
        front,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    );
    assert!(smuggle.starts_with("HTTP/1.1 200"), "{smuggle}");
    assert!(smuggle.ends_with("body=0\n"), "{smuggle}");
    assert_eq!(smuggle.matches("HTTP/1.1").count(), 1, "{smuggle}");
    assert!(
        smuggle.to_ascii_lowercase().contains("connection: close"),
        "{smuggle}"
    );
    assert_eq!(backend.requests.load(SeqCst), 1);
    // Two different lengths, an encoding other than chunked, a bad
    // character in a header name, two `Host`s: refused, never forwarded.
    for bad in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        // Codings before the chunked one, in one field or two, or chunked
        // twice: hyper reads the last, and the rest would reach the backend
        // as body with nothing to say so.
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // Two hosts: rules and policies read one, a backend could read the other.
        b"GET / HTTP/1.1\r\nHost: www.example.com\r\nHost: admin.example.com\r\n\r\n",
        // A host that is no name: a wildcard rule would take `x@admin` for
        // one label, a backend parsing it as a URL would read `admin...`.
        b"GET / HTTP/1.1\r\nHost: x@admin.example.com\r\n\r\n",
        b"GET http://x@admin.example.com/ HTTP/1.1\r\nHost: admin.example.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b.example.com\r\n\r\n",
        // A PROXY header where none is taken: a request that does not parse.
        b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        // A backslash is a separator to some backends: `/\admin` would
        // pass a policy on `/admin` and reach it.
        b"GET /\\admin HTTP/1.1\r\nHost: x\r\n\r\n",
        // No host at all in HTTP/1.1 (RFC 9112 §3.2).
        b"GET /admin HTTP/1.1\r\n\r\n",
    ] {
        let r = raw_exchange(front, bad);
        assert!(
            r.starts_with("HTTP/1.1 400"),
            "{}: {r}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        backend.requests.load(SeqCst),
        1,
        "a malformed request reached the backend"
    );
    // HTTP/1.0 may go without a host.
    let r = raw_exchange(front, b"GET / HTTP/1.0\r\n\r\n");
    assert!(r.starts_with("HTTP/1.0 200"), "{r}");
    // HTTP/2: a `Host` beside `:authority` names the same host, in any
    // case, or the request is refused (RFC 9113 §8.3.1).
    let mut h2 = H2Client::connect(front);
    assert_eq!(h2.get_with_host("/", "other.example").expect("answer"), 400);
    assert_eq!(h2.get_with_host("/", "APP").expect("answer"), 200);
    assert_eq!(backend.requests.load(SeqCst), 3);

    let timed = || {
        metric(
            admin,
            "weir_http_request_duration_seconds_count{listener=\"web\",route=\"app\"}",
        )
    };
    let (timed_before, fours_before) = (
        timed(),
        metric(
            admin,
            "weir_http_requests_total{listener=\"web\",route=\"app\",code=\"4xx\"}",
        ),
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let r = raw_exchange(front, big.as_bytes());
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // Counted as an answer, but with no time: no header was ever read
    // (a flood of them pulled the latency quantiles to zero).
    assert_eq!(
        metric(
            admin,
            "weir_http_requests_total{listener=\"web\",route=\"app\",code=\"4xx\"}",
        ),
        fours_before + 1.0
    );
    assert_eq!(timed(), timed_before);
    // More than 100 fields, however small (hyper's limit, HAProxy's 101).
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    let r = raw_exchange(front, many.as_bytes());
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // What hyper refused before weir saw a request is counted as refused
    // connections: the header too large, and the six malformed heads above
    // that hyper's parser refuses (the others are weir's own answers).
    let rejected = |reason: &str| {
        metric(
            admin,
            &format!(
                "weir_listener_connections_rejected_total{{listener=\"web\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(rejected("header_too_large"), 2.0);
    assert!(
        rejected("bad_request") >= 6.0,
        "{}",
        rejected("bad_request")
    );

    let (status, body, _) = curl(&["-d", &"x".repeat(2000)], &format!("http://{front}/"));
    assert_eq!(
        (status, body.as_str()),
        (413, "weir: the request body is too large (body_too_large)")
    );
    // Within the limit, the body arrives.
    let (status, body, _) = curl(&["-d", &"x".repeat(900)], &format!("http://{front}/"));
    assert_eq!(status, 200);
    assert!(body.ends_with("body=900"), "{body}");

    // A slow client's connection is closed within request_header (give or
    // take), whatever is left unread, and counted as the `n`th such refusal.
    let cut_and_counted = |mut s: TcpStream, began: Instant, n: f64, what: &str| {
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        if let Err(e) = s.read_to_end(&mut rest) {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{what} was not cut"
            );
        }
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
            "{what}: {took:?}"
        );
        let end = Instant::now() + DEADLINE;
        while metric(
            admin,
            "weir_listener_connections_rejected_total{listener=\"web\",reason=\"header_timeout\"}",
        ) < n
        {
            assert!(Instant::now() < end, "{what} was not counted");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // Slowloris: a header that trickles in is cut after request_header.
    let mut s = TcpStream::connect(front).expect("connect");
    let began = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\n").expect("write");
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(b"X-A: b\r\n").is_err() {
            break;
        }
    }
    cut_and_counted(s, began, 1.0, "the slow header");

    // HTTP/2 too: a client that says nothing after the preface, and one
    // whose first HEADERS never ends (no END_HEADERS, no CONTINUATION), are
    // cut after request_header, not held for `idle` and `send`.
    let headers_unended = h2_frame(1, 0x1, 1, &[0x82, 0x86, 0x84]);
    for (n, after_preface) in [&[][..], &headers_unended[..]].into_iter().enumerate() {
        let mut s = TcpStream::connect(front).expect("connect");
        let began = Instant::now();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        s.write_all(&h2_frame(4, 0, 0, &[])).expect("settings");
        s.write_all(after_preface).expect("write");
        cut_and_counted(s, began, 2.0 + n as f64, "the silent HTTP/2 client");
    }
}

/// One HTTP/2 frame: `kind`, `flags`, `stream` and `payload`, for clients
/// that speak the protocol by hand.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// The rest of a message head after its first line, read up to the blank
/// line: how its body is framed (Content-Length, chunked). `None` when the
/// connection ends first.
fn framing(reader: &mut impl BufRead) -> Option<(usize, bool)> {
    let (mut length, mut chunked) = (0usize, false);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) if line == "\r\n" => return Some((length, chunked)),
            Ok(_) => {}
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
}

/// A body framed as [`framing`] said; `None` when the connection ends
/// first.
fn read_body(reader: &mut impl BufRead, (length, chunked): (usize, bool)) -> Option<Vec<u8>> {
    if chunked {
        return read_chunked(reader);
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// Writes `request` on a new connection to `addr` and reads one response:
/// its status and its body (framed by Content-Length, or chunked).
fn one_response(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    response_on(s)
}

/// The status and body of the next response on `s`.
fn response_on(s: TcpStream) -> (u16, String) {
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = framing(&mut reader)
        .and_then(|f| read_body(&mut reader, f))
        .expect("a head and a whole body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The JSON access-log line of the request for `path`, parsed.
fn access_line(out: &std::sync::mpsc::Receiver<String>, path: &str) -> serde_json::Value {
    let line = wait_line(out, &format!("\"path\":\"{path}\""));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// `max_body_bytes` holds for a body whose length is not declared too: a
/// chunked upload that grows past the limit is cut and answered 413
/// (reason `body_too_large`, its bytes counted up to the cut), and the
/// backend never gets it as a whole request; a chunked body within the
/// limit goes through. A client that sends its whole body before reading
/// gets the 413 too (the close lingers).
#[test]
fn a_chunked_body_that_grows_past_max_body_bytes_is_cut_with_413() {
    let backend = raw_backend(None, Duration::ZERO);
    let front = free_port();
    let (_weir, out) = start(
        "chunked-limit",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\nmax_body_bytes = 1000\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\noutlier = {{ consecutive_failures = 2 }}\n\
             [[pools.backends]]\nname = \"raw\"\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    // `chunks` chunks of 300 bytes (0x12c), then the last chunk.
    let upload = |path: &str, chunks: usize| {
        let mut request =
            format!("POST {path} HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..chunks {
            request.push_str(&format!("12c\r\n{}\r\n", "x".repeat(300)));
        }
        request.push_str("0\r\n\r\n");
        request
    };

    // 1200 bytes: past the limit at the fourth chunk.
    let (status, body) = one_response(front, &upload("/too-big", 4));
    assert_eq!(
        (status, body.as_str()),
        (
            413,
            "weir: the request body is too large (body_too_large)\n"
        )
    );
    let line = access_line(&out, "/too-big");
    assert_eq!(line["status"], 413, "{line}");
    assert_eq!(line["reason"], "body_too_large", "{line}");
    let counted = line["bytes_in"].as_u64().unwrap_or(0);
    assert!(
        (1001..=1200).contains(&counted),
        "cut at {counted} bytes: {line}"
    );

    // Cut uploads are the client's doing: however many, the backend is not
    // counted as failing (two in a row would eject it here).
    for _ in 0..2 {
        let (status, _) = one_response(front, &upload("/too-big-again", 4));
        assert_eq!(status, 413);
    }

    // 900 bytes: within it, forwarded whole.
    let (status, body) = one_response(front, &upload("/fits", 3));
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with(" body=900\n"), "{body}");
    let line = access_line(&out, "/fits");
    assert_eq!(line["reason"], "completed", "{line}");
    assert_eq!(line["bytes_in"], 900, "{line}");
    // Only the body within the limit reached the backend as a request.
    assert_eq!(backend.requests.load(SeqCst), 1);

    // A client that sends its whole body before it reads (Python's
    // http.client, most scripts) gets the 413 too, declared or chunked:
    // weir reads on what comes after its answer until the client closes,
    // where a plain close would answer the unread bytes with a reset and
    // the client would see a broken pipe instead.
    let big = 8 << 20;
    for (path, head, body) in [
        (
            "/declared",
            format!("POST /declared HTTP/1.1\r\nHost: app\r\nContent-Length: {big}\r\n\r\n"),
            vec![b'x'; big],
        ),
        (
            "/chunked",
            "POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
            format!("{:x}\r\n{}\r\n0\r\n\r\n", big, "x".repeat(big)).into_bytes(),
        ),
    ] {
        let mut s = TcpStream::connect(front).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        s.set_write_timeout(Some(DEADLINE)).expect("timeout");
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(&body)
            .unwrap_or_else(|e| panic!("{path}: the body could not be sent whole: {e}"));
        let (status, answer) = response_on(s);
        assert_eq!(status, 413, "{path}: {answer}");
        assert_eq!(access_line(&out, path)["reason"], "body_too_large");
    }
    assert_eq!(backend.requests.load(SeqCst), 1);
}

/// A client that stops sending its body (or never begins it) is answered
/// 408 (reason `idle_timeout`) when `request_body` runs out, and that does
/// not count against the backend: trickled uploads cannot get a healthy
/// backend ejected (two failures in a row would here). A pause shorter than
/// `request_body` is the client's to take, even past `upstream_response`.
/// A backend slow to answer a whole request still gets 504.
#[test]
fn a_client_slow_with_its_body_is_not_the_backends_failure() {
    let backend = raw_backend(None, Duration::ZERO);
    let slow = raw_backend(None, Duration::from_secs(2));
    let front = free_port();
    let (_weir, out) = start(
        "slow-upload",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_response = \"500ms\", request_body = \"1500ms\" }}\n\
             [[listeners.routes.http]]\nname = \"slow\"\npool = \"s\"\n\
             match = {{ path_prefix = \"/late\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\noutlier = {{ consecutive_failures = 2 }}\n\
             [[pools.backends]]\nname = \"raw\"\naddress = \"{}\"\n\
             [[pools]]\nname = \"s\"\n[[pools.backends]]\nname = \"late\"\naddress = \"{}\"\n",
            backend.addr, slow.addr
        ),
    );
    // Half of a declared body, then nothing; or none of it at all.
    for sent in ["hello", "", ""] {
        let (status, body) = one_response(
            front,
            &format!("POST /trickle HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\n{sent}"),
        );
        assert_eq!(
            (status, body.as_str()),
            (
                408,
                "weir: the request body did not arrive in time (idle_timeout)\n"
            )
        );
    }
    let line = access_line(&out, "/trickle");
    assert_eq!(line["status"], 408, "{line}");
    assert_eq!(line["reason"], "idle_timeout", "{line}");
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(b"POST /paused HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nhello")
        .expect("write");
    std::thread::sleep(Duration::from_millis(900));
    s.write_all(b"world").expect("write");
    let (status, body) = response_on(s);
    assert_eq!(status, 200, "{body}");
    // Not ejected: the backend serves the next request.
    let (status, body) = one_response(
        front,
        "POST /whole HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(status, 200, "{body}");
    // A whole request the backend is slow to answer: the backend's.
    let (status, _) = one_response(front, "GET /late HTTP/1.1\r\nHost: app\r\n\r\n");
    assert_eq!(status, 504);
    let line = access_line(&out, "/late");
    assert_eq!(line["reason"], "upstream_timeout", "{line}");
}

/// How a [`body_taker`] backend reads a request body.
#[derive(Clone, Copy)]
enum Takes {
    /// 256 KiB every 10 ms, then answers.
    Slowly,
    /// Nothing of it, for 20 s.
    Nothing,
    /// Nothing for this long, then all of it at once, then answers.
    After(Duration),
}

/// A backend that reads a request's head, then its body as `takes` says,
/// and answers `got=N` with the bytes it read.
fn body_taker(takes: Takes) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut chunk = vec![0u8; 256 * 1024];
                let mut got = 0;
                match takes {
                    Takes::Nothing => {
                        std::thread::sleep(Duration::from_secs(20));
                        return;
                    }
                    Takes::After(pause) => std::thread::sleep(pause),
                    Takes::Slowly => {}
                }
                while got < len {
                    let want = chunk.len().min(len - got);
                    match reader.read(&mut chunk[..want]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                    if let Takes::Slowly = takes {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                let body = format!("got={got}");
                let mut s = s;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// Uploads `len` zero bytes to `path` as fast as the connection takes
/// them, reading the answer meanwhile: its status and body.
fn upload(front: SocketAddr, path: &str, len: usize) -> (u16, String) {
    let s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    w.set_write_timeout(Some(DEADLINE)).expect("timeout");
    let head = format!("POST {path} HTTP/1.1\r\nHost: app\r\nContent-Length: {len}\r\n\r\n");
    std::thread::spawn(move || {
        let zeros = vec![0u8; 64 * 1024];
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut sent = 0;
        while sent < len {
            let n = zeros.len().min(len - sent);
            if w.write_all(&zeros[..n]).is_err() {
                return;
            }
            sent += n;
        }
    });
    response_on(s)
}

/// `upstream_response` counts from the last piece of the body the backend
/// took, not from the request's start: an upload that keeps moving takes
/// as long as it takes (here 64 MiB read at about 25 MB/s, well past the
/// 1.5 s), while a backend that takes nothing of the body for that long is
/// answered for with `504` (its failure, not the client's `408`). A backend
/// that pauses longer than `request_body` (and less than
/// `upstream_response`) does not make the client, held back by TCP
/// meanwhile, look silent.
#[test]
fn an_upload_that_moves_is_not_timed_out_and_a_backend_that_stops_taking_it_is() {
    const LEN: usize = 64 << 20;
    let slowly = body_taker(Takes::Slowly);
    let stops = body_taker(Takes::Nothing);
    let pauses = body_taker(Takes::After(Duration::from_secs(1)));
    let front = free_port();
    let (_weir, out) = start(
        "long-upload",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_response = \"1500ms\", request_body = \"500ms\" }}\n\
             [[listeners.routes.http]]\nname = \"stops\"\npool = \"stops\"\n\
             match = {{ path_prefix = \"/stops\" }}\n\
             [[listeners.routes.http]]\nname = \"pauses\"\npool = \"pauses\"\n\
             match = {{ path_prefix = \"/pauses\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"slowly\"\n\
             [[pools]]\nname = \"slowly\"\n[[pools.backends]]\naddress = \"{slowly}\"\n\
             [[pools]]\nname = \"stops\"\n[[pools.backends]]\naddress = \"{stops}\"\n\
             [[pools]]\nname = \"pauses\"\n[[pools.backends]]\naddress = \"{pauses}\"\n"
        ),
    );
    let began = Instant::now();
    let (status, body) = upload(front, "/slowly", LEN);
    assert_eq!(
        (status, body.as_str()),
        (200, format!("got={LEN}").as_str())
    );
    assert!(
        began.elapsed() > Duration::from_millis(1500),
        "{:?}",
        began.elapsed()
    );

    let (status, body) = upload(front, "/stops", LEN);
    assert_eq!(
        (status, body.as_str()),
        (
            504,
            "weir: the backend did not answer in time (upstream_timeout)\n"
        )
    );
    let line = access_line(&out, "/stops");
    assert_eq!(line["reason"], "upstream_timeout", "{line}");

    let (status, body) = upload(front, "/pauses", LEN);
    assert_eq!(
        (status, body.as_str()),
        (200, format!("got={LEN}").as_str())
    );
}

/// A client that reads nothing for longer than `upstream_idle` (while TCP
/// holds the backend back) does not get the answer cut as a silent
/// backend's.
#[test]
fn a_client_that_pauses_reading_does_not_make_the_backend_look_idle() {
    const LEN: usize = 64 << 20;
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head);
                let zeros = vec![0u8; 64 * 1024];
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n");
                for _ in 0..LEN / zeros.len() {
                    if s.write_all(&zeros).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let front = free_port();
    let (_weir, _out) = start(
        "paused-reader",
        &format!(
            "[[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_idle = \"500ms\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(b"GET /big HTTP/1.1\r\nHost: app\r\n\r\n")
        .expect("write");
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // Everything weir and the sockets hold fills up while the client rests.
    std::thread::sleep(Duration::from_secs(1));
    let body = framing(&mut reader)
        .and_then(|f| read_body(&mut reader, f))
        .expect("the whole body");
    assert_eq!(body.len(), LEN);
}

/// Large bodies stream both ways and arrive intact; the access log has one
/// line per request with the bytes each way.
#[test]
fn large_bodies_stream_both_ways() {
    let dir = test_dir("l7-large");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    let big: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("big.bin"), &big).expect("big file");
    let port = free_port();
    let _nginx = start_nginx(
        &dir,
        &format!("server {{ listen {port}; root {}; }}", www.display()),
    );
    wait_connectable(port);
    let upload = raw_backend(None, Duration::ZERO);
    let front = free_port();
    let (_weir, out) = start(
        "large",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"up\"\npool = \"up\"\nmatch = {{ methods = [\"POST\"] }}\n\
             [[listeners.routes.http]]\nname = \"files\"\npool = \"files\"\n\
             [[pools]]\nname = \"files\"\n[[pools.backends]]\nname = \"nginx\"\naddress = \"{port}\"\n\
             [[pools]]\nname = \"up\"\n[[pools.backends]]\nname = \"raw\"\naddress = \"{}\"\n",
            upload.addr
        ),
    );
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let got = Command::new(curl_path())
            .args(["-sS", "--fail", "--max-time", "20", version])
            .arg(format!("http://{front}/big.bin"))
            .output()
            .expect("curl");
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert!(got.stdout == big, "{version}: the file changed on the way");
    }
    let line = wait_line(&out, "\"path\":\"/big.bin\"");
    assert!(line.contains("\"bytes_out\":8388608"), "{line}");
    assert!(line.contains("\"status\":200"), "{line}");
    assert!(line.contains("\"backend\":\"nginx\""), "{line}");

    let file = dir.join("upload.bin");
    std::fs::write(&file, &big).expect("upload file");
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, body, _) = curl(
            &[version, "--data-binary", &format!("@{}", file.display())],
            &format!("http://{front}/up"),
        );
        assert_eq!(status, 200);
        assert!(body.ends_with(&format!("body={}", big.len())), "{body}");
    }
    let line = wait_line(&out, "\"path\":\"/up\"");
    assert!(line.contains("\"bytes_in\":8388608"), "{line}");
}

/// Runs the openssl CLI in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let openssl = which("openssl").expect("openssl is not installed");
    let out = Command::new(&openssl)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A test CA in `dir`: `ca.crt`, `ca.key`.
pub(crate) fn make_ca(dir: &std::path::Path) {
    let args = [
        &["req", "-x509"][..],
        &EC,
        &[
            "-days",
            "1",
            "-subj",
            "/CN=weir test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    ]
    .concat();
    openssl(dir, &args);
}

/// A certificate the test CA signed, for the DNS names `sans`, as
/// `TAG.crt` and `TAG.key`; `extra` adds openssl extension lines.
pub(crate) fn make_leaf(dir: &std::path::Path, tag: &str, sans: &[&str], extra: &str) {
    make_leaf_with(dir, tag, sans, extra, &EC);
}

/// [`make_leaf`] with the key `openssl req` makes by `key_args`.
fn make_leaf_with(dir: &std::path::Path, tag: &str, sans: &[&str], extra: &str, key_args: &[&str]) {
    let (key, csr, crt) = (
        format!("{tag}.key"),
        format!("{tag}.csr"),
        format!("{tag}.crt"),
    );
    let subject = format!("/CN={}", sans.first().copied().unwrap_or(tag));
    let args = [
        &["req"][..],
        key_args,
        &["-subj", &subject, "-keyout", &key, "-out", &csr],
    ]
    .concat();
    openssl(dir, &args);
    let names: Vec<String> = sans.iter().map(|n| format!("DNS:{n}")).collect();
    let ext = format!("{tag}.ext");
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={}\n{extra}", names.join(",")),
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    );
}

/// A test CA and a certificate it signed for `name` (`NAME.crt`, `NAME.key`).
fn make_ca_and_leaf(dir: &std::path::Path, name: &str) {
    make_ca(dir);
    make_leaf(dir, name, &[name], "");
}

/// The subject of the certificate `addr` presents for `server_name`.
fn served_subject(addr: SocketAddr, server_name: &str) -> String {
    let openssl = which("openssl").expect("openssl");
    let out = Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            server_name,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("subject="))
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// Starts nghttpd (Debian's nghttp2-server) serving `www`: h2c with prior
/// knowledge, or HTTP/2 over TLS with `tls` (key, certificate).
fn start_nghttpd(www: &std::path::Path, port: u16, tls: Option<(PathBuf, PathBuf)>) -> Running {
    let nghttpd = which("nghttpd")
        .expect("nghttpd is not installed: run scripts/test.sh, which installs nghttp2-server");
    let mut cmd = Command::new(nghttpd);
    cmd.arg("-d").arg(www).args(["--address", "127.0.0.1"]);
    match tls {
        None => {
            cmd.arg("--no-tls").arg(port.to_string());
        }
        Some((key, cert)) => {
            cmd.arg(port.to_string()).arg(key).arg(cert);
        }
    }
    Running::new(
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nghttpd"),
    )
}

/// HTTP/2 backends (nghttpd): in clear text (h2c) and over TLS (h2, the
/// certificate verified against its CA); clients on HTTP/1.1 and h2c; one
/// Requests that wait for the shared HTTP/2 connection to a backend while it
/// is being opened fail with that open when it fails, at once: they do not
/// each open one in turn, behind the first (here the backend takes TCP
/// connections and never answers the TLS handshake, so each open takes
/// `connect_timeout`, 1 s; six requests one after the other took 6 s).
#[test]
fn requests_waiting_for_a_failed_http2_open_fail_with_it() {
    let silent = crate::cli::silent_backend();
    let (front, admin) = (free_port(), free_port());
    let (_weir, out) = start(
        "h2-open-fails",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\nmode = \"l7\"\n\
             backend_tls = {{ sni = \"h2.internal\", verify = false }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"h2\"\n\
             [[pools]]\nname = \"h2\"\nprotocol = \"h2\"\nconnect_timeout = \"1s\"\n\
             [[pools.backends]]\nname = \"silent\"\naddress = \"{silent}\"\n"
        ),
    );
    let began = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                one_response(front, &format!("GET /{i} HTTP/1.1\r\nHost: app\r\n\r\n"))
            })
        })
        .collect();
    for c in clients {
        let (status, body) = c.join().expect("client");
        assert_eq!(status, 502, "{body}");
    }
    let took = began.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "six requests took {took:?}: each waited for the opens before it"
    );
    let line = access_line(&out, "/5");
    assert_eq!(line["reason"], "tls", "{line}");
    // Each failed open counted once, by the request that made it, not by
    // every request that waited for it.
    let opens = metric(
        admin,
        "weir_backend_connect_errors_total{pool=\"h2\",backend=\"silent\",reason=\"tls\"}",
    );
    assert!(
        (1.0..=3.0).contains(&opens),
        "{opens} failed connects counted"
    );
}

/// A backend that cannot be connected to within `connect_timeout` (its
/// accept queue is full) is a failed connect, nothing of the request sent:
/// `502` (reason `timeout`), not the `504` of an answer slow to come.
#[test]
fn a_connect_that_times_out_is_a_failed_connect() {
    let (_held, addr) = crate::cli::unanswering_backend();
    let front = free_port();
    let (_weir, out) = start(
        "connect-timeout",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nconnect_timeout = \"300ms\"\n\
             [[pools.backends]]\naddress = \"{addr}\"\n"
        ),
    );
    let (status, body) = one_response(front, "GET /hangs HTTP/1.1\r\nHost: app\r\n\r\n");
    assert_eq!(
        (status, body.as_str()),
        (
            502,
            "weir: the backend could not be reached in time (timeout)\n"
        )
    );
    let line = access_line(&out, "/hangs");
    assert_eq!(line["reason"], "timeout", "{line}");
}

/// A relay between weir and a backend whose connections can be made a black
/// hole (as a firewall that dropped their state would): what either side
/// sends is read and dropped, nothing is closed. Counts the connections
/// weir opened and those it closed.
struct BlackHole {
    addr: SocketAddr,
    opened: Arc<AtomicUsize>,
    closed_by_weir: Arc<AtomicUsize>,
    /// Connections opened before this many are black holes.
    swallowing: Arc<AtomicUsize>,
}

impl BlackHole {
    fn to(backend: SocketAddr) -> BlackHole {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let hole = BlackHole {
            addr: l.local_addr().expect("addr"),
            opened: Arc::default(),
            closed_by_weir: Arc::default(),
            swallowing: Arc::default(),
        };
        let (opened, closed, swallowing) = (
            Arc::clone(&hole.opened),
            Arc::clone(&hole.closed_by_weir),
            Arc::clone(&hole.swallowing),
        );
        std::thread::spawn(move || {
            for weir in l.incoming() {
                let Ok(weir) = weir else { return };
                let Ok(backend) = TcpStream::connect(backend) else {
                    return;
                };
                let id = opened.fetch_add(1, SeqCst);
                let pipe = |mut from: TcpStream, mut to: TcpStream, from_weir: bool| {
                    let (closed, swallowing) = (Arc::clone(&closed), Arc::clone(&swallowing));
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = from.read(&mut buf).unwrap_or(0);
                            if n == 0 {
                                if from_weir {
                                    closed.fetch_add(1, SeqCst);
                                }
                                let _ = to.shutdown(std::net::Shutdown::Write);
                                return;
                            }
                            if id >= swallowing.load(SeqCst) && to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                };
                let (w, b) = (
                    weir.try_clone().expect("clone"),
                    backend.try_clone().expect("clone"),
                );
                pipe(weir, backend, true);
                pipe(b, w, false);
            }
        });
        hole
    }
}

/// A shared HTTP/2 connection to a backend that went silent is found out
/// by a PING after `upstream_ping` and closed when no answer comes in as
/// long again; the next request opens a new one and is answered. A
/// backend that answers the PINGs keeps its connection however idle.
#[test]
fn a_silent_http2_backend_connection_is_closed_after_an_unanswered_ping() {
    let dir = test_dir("l7-h2-ping");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("hello.txt"), "hello over h2\n").expect("file");
    let c = free_port();
    let _nghttpd = start_nghttpd(&www, c.port(), None);
    wait_connectable(c);
    let hole = BlackHole::to(c);
    let front = free_port();
    let (_weir, _out) = start(
        "h2-ping",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_ping = \"200ms\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"h2c\"\n\
             [[pools]]\nname = \"h2c\"\nprotocol = \"h2c\"\n[pools.health]\ntype = \"none\"\n\
             [[pools.backends]]\nname = \"n\"\naddress = \"{}\"\n",
            hole.addr
        ),
    );
    let get = || one_response(front, "GET /hello.txt HTTP/1.1\r\nHost: app\r\n\r\n");
    assert_eq!(get(), (200, "hello over h2\n".to_owned()));
    // Idle for five PINGs' time, answered: kept.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(get().0, 200);
    assert_eq!(
        (hole.opened.load(SeqCst), hole.closed_by_weir.load(SeqCst)),
        (1, 0)
    );

    hole.swallowing.store(1, SeqCst);
    // A request on it waits for the PING's answer, not `upstream_response`.
    let began = Instant::now();
    let (status, body) = get();
    assert_eq!(status, 502, "{body}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let end = Instant::now() + DEADLINE;
    while hole.closed_by_weir.load(SeqCst) == 0 {
        assert!(
            Instant::now() < end,
            "the silent connection was never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(), (200, "hello over h2\n".to_owned()));
    assert_eq!(hole.opened.load(SeqCst), 2);
}

/// connection per backend carries every request.
#[test]
fn http2_backends_in_clear_text_and_over_tls() {
    let dir = test_dir("l7-h2");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("hello.txt"), "hello over h2\n").expect("file");
    make_ca_and_leaf(&dir, "h2.internal");
    let (c, t) = (free_port(), free_port());
    let _clear = start_nghttpd(&www, c.port(), None);
    let _tls = start_nghttpd(
        &www,
        t.port(),
        Some((dir.join("h2.internal.key"), dir.join("h2.internal.crt"))),
    );
    wait_connectable(c);
    wait_connectable(t);
    let (clear_front, tls_front, admin) = (free_port(), free_port(), free_port());
    let (_weir, _out) = start(
        "h2",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"clear\"\nbind = \"{clear_front}\"\n\
             [[listeners.routes]]\nname = \"r\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"h2c\"\n\
             [[listeners]]\nname = \"tls\"\nbind = \"{tls_front}\"\n\
             [[listeners.routes]]\nname = \"r\"\nmode = \"l7\"\n\
             backend_tls = {{ sni = \"h2.internal\", ca = \"{ca}\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"h2\"\n\
             [[pools]]\nname = \"h2c\"\nprotocol = \"h2c\"\n[[pools.backends]]\nname = \"c\"\naddress = \"{c}\"\n\
             [[pools]]\nname = \"h2\"\nprotocol = \"h2\"\n[[pools.backends]]\nname = \"t\"\naddress = \"{t}\"\n",
            ca = dir.join("ca.crt").display()
        ),
    );
    for front in [clear_front, tls_front] {
        for version in ["--http1.1", "--http2-prior-knowledge", "--http1.1"] {
            let (status, body, _) = curl(&[version], &format!("http://{front}/hello.txt"));
            assert_eq!(
                (status, body.as_str()),
                (200, "hello over h2"),
                "{front} {version}"
            );
        }
    }
    for (pool, backend) in [("h2c", "c"), ("h2", "t")] {
        let id = format!("pool=\"{pool}\",backend=\"{backend}\"");
        assert_eq!(
            metric(
                admin,
                &format!("weir_http_upstream_connections_total{{{id},event=\"created\"}}")
            ),
            1.0,
            "{pool}"
        );
        assert_eq!(
            metric(
                admin,
                &format!("weir_http_upstream_connections_total{{{id},event=\"reused\"}}")
            ),
            2.0,
            "{pool}"
        );
    }
}

/// An HTTP/2 connection to a backend, the last one too, is closed once
/// unused for `upstream_keepalive`, before the backend's own idle timeout
/// ends it under a request; the next request opens a new one.
#[test]
fn an_idle_http2_backend_connection_is_closed_after_the_keepalive() {
    let dir = test_dir("h2-keepalive");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("a.txt"), "a\n").expect("file");
    let backend = free_port();
    let _nghttpd = start_nghttpd(&www, backend.port(), None);
    wait_connectable(backend);
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "h2-keepalive",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_keepalive = \"300ms\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nprotocol = \"h2c\"\n\
             [[pools.backends]]\nname = \"n\"\naddress = \"{backend}\"\n"
        ),
    );
    let event = |e: &str| {
        metric(
            admin,
            &format!(
                "weir_http_upstream_connections_total{{pool=\"p\",backend=\"n\",event=\"{e}\"}}"
            ),
        )
    };
    for round in 1..=2 {
        let (status, body, _) = curl(&["--http1.1"], &format!("http://{front}/a.txt"));
        assert_eq!((status, body.as_str()), (200, "a"), "{round}");
        assert_eq!(event("created"), f64::from(round));
        wait("the idle connection closed", &|| {
            event("closed") == f64::from(round)
        });
    }
}

/// An HTTP/2 backend that ends its connections with a GOAWAY (nginx
/// after `keepalive_requests`) turns away the streams above its last one
/// unprocessed: they go again on another connection, so h2load's 400
/// requests, five at a time, all get their answer, and no 5xx is counted.
#[test]
fn streams_an_http2_backend_turns_away_go_again() {
    let dir = test_dir("h2-goaway");
    let at = free_port();
    let _nginx = start_nginx(
        &dir,
        &format!(
            "server {{ listen {at} http2; keepalive_requests 20; \
             location / {{ return 200 \"ok\\n\"; }} }}"
        ),
    )
    .with(dir);
    wait_connectable(at);
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "h2-goaway",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nprotocol = \"h2c\"\n\
             [[pools.backends]]\nname = \"n\"\naddress = \"{at}\"\n"
        ),
    );
    let out = Command::new("timeout")
        .args(["60", "h2load", "-n", "400", "-c", "1", "-m", "5"])
        .arg(format!("http://{front}/"))
        .output()
        .expect("h2load is not installed: run scripts/test.sh, which installs nghttp2-client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status codes: 400 2xx, 0 3xx, 0 4xx, 0 5xx"),
        "{text}"
    );
    let series = |s: &str| metric(admin, s);
    assert_eq!(
        series("weir_http_requests_total{listener=\"web\",route=\"r\",code=\"5xx\"}"),
        0.0
    );
    // Five requests a connection: the GOAWAYs did come.
    assert!(
        series("weir_http_upstream_connections_total{pool=\"p\",backend=\"n\",event=\"created\"}")
            >= 10.0
    );
    // A POST is no less unprocessed above a GOAWAY's last stream (RFC 9113
    // §6.8): it goes again too (it was answered 502).
    let out = Command::new("timeout")
        .args(["60", "h2load", "-n", "200", "-c", "1", "-m", "5"])
        .args(["-H", ":method: POST"])
        .arg(format!("http://{front}/"))
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status codes: 200 2xx, 0 3xx, 0 4xx, 0 5xx"),
        "{text}"
    );
    assert!(
        series("weir_backend_http_replayed_total{pool=\"p\",backend=\"n\",reason=\"goaway\"}")
            >= 1.0
    );
}

/// TLS termination: a certificate chosen by SNI (exact, wildcard, else the
/// first), HTTP/2 and HTTP/1.1 by ALPN, `X-Forwarded-Proto: https`, the
/// handshake counters and each certificate's expiry in the metrics.
#[test]
fn tls_termination_picks_the_certificate_by_sni() {
    let dir = test_dir("l7-tls");
    make_ca(&dir);
    make_leaf(&dir, "app", &["app.example"], "");
    make_leaf(&dir, "svc", &["*.svc.example"], "");
    let (_nginx, a, _) = echoing_nginx("l7-tls-backend");
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "tls",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"https\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             tls = {{ certificates = [{{ cert = \"{d}/app.crt\", key = \"{d}/app.key\" }}, \
             {{ cert = \"{d}/svc.crt\", key = \"{d}/svc.key\" }}] }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"a\"\n\
             [[pools]]\nname = \"a\"\n[[pools.backends]]\naddress = \"{a}\"\n",
            d = dir.display()
        ),
    );
    let ca = dir.join("ca.crt").display().to_string();
    let https = |name: &str, extra: &[&str]| {
        let resolve = format!("{name}:{}:127.0.0.1", front.port());
        let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
        args.extend_from_slice(extra);
        curl(&args, &format!("https://{name}:{}/x", front.port()))
    };
    let (status, body, version) = https("app.example", &[]);
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    assert!(body.contains(" xfp=https "), "{body}");
    assert!(body.contains(" host=app.example:"), "{body}");
    let (status, _, version) = https("app.example", &["--http1.1"]);
    assert_eq!((status, version.as_str()), (200, "1.1"));
    // A client that offers `http/1.0` alone in ALPN (curl --http1.0) is
    // served, as nginx does, not refused with `no_application_protocol`.
    let (status, body, version) = https("app.example", &["--http1.0"]);
    assert_eq!(status, 200, "{body}");
    assert!(version.starts_with('1'), "{version}");
    // The wildcard certificate, verified by curl against the CA.
    let (status, body, _) = https("api.svc.example", &[]);
    assert_eq!(status, 200, "{body}");
    // A name no certificate has: the first, the default.
    assert!(served_subject(front, "nobody.example").contains("app.example"));
    assert!(served_subject(front, "x.svc.example").contains("svc.example"));

    // Clear-text HTTP to the TLS port is no handshake.
    let (status, _, _) = curl(&[], &format!("http://{front}/"));
    assert_eq!(status, 0);
    let ok = metric(
        admin,
        "weir_tls_handshakes_total{listener=\"https\",result=\"success\",reason=\"ok\"}",
    );
    assert!(ok >= 5.0, "{ok}");
    let end = Instant::now() + DEADLINE;
    while metric(
        admin,
        "weir_tls_handshakes_total{listener=\"https\",result=\"failure\",reason=\"protocol\"}",
    ) < 1.0
    {
        assert!(
            Instant::now() < end,
            "the clear-text client was not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every completed handshake is timed; the failed one is not.
    let timed = metric(
        admin,
        "weir_tls_handshake_duration_seconds_count{listener=\"https\"}",
    );
    assert!(timed >= 5.0, "{timed}");
    assert_eq!(
        timed,
        metric(
            admin,
            "weir_tls_handshakes_total{listener=\"https\",result=\"success\",reason=\"ok\"}",
        )
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as f64;
    for cert in ["app.crt", "svc.crt"] {
        let expiry = metric(
            admin,
            &format!(
                "weir_tls_certificate_expiry_timestamp_seconds{{certificate=\"{}/{cert}\"}}",
                dir.display()
            ),
        );
        // Made for one day.
        assert!(
            expiry > now + 80_000.0 && expiry < now + 90_000.0,
            "{cert}: {expiry}"
        );
    }
}

/// One listener passes one server name through untouched (the backend
/// holds its certificate) and terminates another.
#[test]
fn a_listener_passes_one_name_through_and_terminates_another() {
    let dir = test_dir("l7-mixed");
    make_ca(&dir);
    make_leaf(&dir, "app", &["app.example"], "");
    make_leaf(&dir, "pass", &["pass.example"], "");
    let (tls_port, plain_port) = (free_port(), free_port());
    let _nginx = start_nginx(
        &dir,
        &format!(
            "server {{ listen {tls_port} ssl; ssl_certificate {d}/pass.crt; \
             ssl_certificate_key {d}/pass.key; location / {{ return 200 \"nginx-tls\\n\"; }} }}\n\
             server {{ listen {plain_port}; location / {{ return 200 \"nginx-plain $http_x_forwarded_proto\\n\"; }} }}",
            d = dir.display()
        ),
    );
    wait_connectable(tls_port);
    wait_connectable(plain_port);
    let (front, grpc) = (free_port(), free_port());
    let (_weir, _out) = start(
        "mixed",
        &format!(
            "[admin]\ngrpc = \"{grpc}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"edge\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"pass\"\nmatch = {{ sni = [\"pass.example\"] }}\npool = \"tls\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\nmatch = {{ sni = [\"app.example\"] }}\n\
             tls = {{ certificates = [{{ cert = \"{d}/app.crt\", key = \"{d}/app.key\" }}] }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"plain\"\n\
             [[pools]]\nname = \"tls\"\n[[pools.backends]]\naddress = \"{tls_port}\"\n\
             [[pools]]\nname = \"plain\"\n[[pools.backends]]\naddress = \"{plain_port}\"\n",
            d = dir.display()
        ),
    );
    let ca = dir.join("ca.crt").display().to_string();
    for (name, want) in [
        ("pass.example", "nginx-tls"),
        ("app.example", "nginx-plain https"),
    ] {
        let resolve = format!("{name}:{}:127.0.0.1", front.port());
        let (status, body, _) = curl(
            &["--cacert", &ca, "--resolve", &resolve],
            &format!("https://{name}:{}/", front.port()),
        );
        assert_eq!((status, body.as_str()), (200, want), "{name}");
        assert!(served_subject(front, name).contains(name), "{name}");
    }
    // On a connection set up for app.example, a request may name it (any
    // case, with a port), not a name that leads elsewhere: the passed-through
    // one, or one no route takes (domain fronting; a browser reusing the
    // connection is told to open one for that name).
    for version in ["--http1.1", "--http2"] {
        for (host, want) in [
            (format!("APP.example:{}", front.port()), 200),
            ("pass.example".to_owned(), 421),
            ("other.example".to_owned(), 421),
        ] {
            let (status, body, _) = curl_app_example(front, &ca, version, &host);
            assert_eq!(status, want, "{version} {host}: {body}");
            if want == 421 {
                assert!(body.contains("misdirected"), "{body}");
            }
        }
    }
    // `weir explain` says so too: what it says of a request for `host` and
    // `path` on a connection that named `app.example`.
    let explain = |host: &str, path: &str| {
        crate::control::json(&crate::control::ctl(
            grpc,
            None,
            &[
                "explain",
                "--listener",
                "edge",
                "--client",
                "127.0.0.1",
                "--sni",
                "app.example",
                "--host",
                host,
                "--path",
                path,
                "-o",
                "json",
            ],
        ))
    };
    for (host, misdirected) in [
        ("APP.example:443", false),
        ("pass.example", true),
        ("other.example", true),
    ] {
        let v = explain(host, "/");
        let notes = v["http"]["notes"].to_string();
        assert_eq!(
            notes.contains("answered 421 (misdirected)"),
            misdirected,
            "{host}: {v}"
        );
        assert_eq!(v["http"]["rule"].is_null(), misdirected, "{host}: {v}");
    }
    // A request both misdirected and malformed (an encoded slash) is
    // refused for its path first, by the proxy and by explain alike.
    let resolve = format!("app.example:{}:127.0.0.1", front.port());
    let (status, body, _) = curl(
        &[
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-H",
            "Host: other.example",
        ],
        &format!("https://app.example:{}/x%2Fy", front.port()),
    );
    assert_eq!(status, 400, "{body}");
    let v = explain("other.example", "/x%2Fy");
    let notes = v["http"]["notes"].to_string();
    assert!(
        notes.contains("is refused") && notes.contains("answered 400") && !notes.contains("421"),
        "{v}"
    );
}

/// Routes told apart by ALPN alone: a request for another name than the
/// SNI leads to the route its connection's protocol reached, so it is not
/// misdirected (HTTP/2 to the `h2` route, HTTP/1.1 to the catch-all).
#[test]
fn a_host_is_routed_with_the_protocol_its_connection_agreed_on() {
    let dir = test_dir("l7-misdirected-alpn");
    make_ca(&dir);
    make_leaf(&dir, "app", &["app.example", "other.example"], "");
    let backend = sized_backend();
    let front = free_port();
    let tls = format!(
        "tls = {{ certificates = [{{ cert = \"{d}/app.crt\", key = \"{d}/app.key\" }}] }}\n",
        d = dir.display()
    );
    let (_weir, _out) = start(
        "misdirected-alpn",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"edge\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"h2\"\nmode = \"l7\"\nmatch = {{ alpn = [\"h2\"] }}\n{tls}\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[listeners.routes]]\nname = \"rest\"\nmode = \"l7\"\n{tls}\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let ca = dir.join("ca.crt").display().to_string();
    for (version, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (status, body, used) = curl_app_example(front, &ca, version, "other.example");
        assert_eq!((status, used.as_str()), (200, want), "{version}: {body}");
    }
}

/// A route chosen by a protocol the client offered but did not end up
/// with: curl offers `h2` and `http/1.1`, reaches the `http/1.1` route, and
/// agrees on HTTP/2 with it; another name of its certificate leads to the
/// same route with the same offer, so it is not misdirected. Past a
/// listener's 64th route the protocol agreed on stands for the offer (as
/// documented): there the same request is refused.
#[test]
fn a_host_is_routed_with_the_protocols_its_client_offered() {
    let dir = test_dir("l7-misdirected-offer");
    make_ca(&dir);
    make_leaf(&dir, "app", &["app.example", "other.example"], "");
    let backend = sized_backend();
    let tls = format!(
        "tls = {{ certificates = [{{ cert = \"{d}/app.crt\", key = \"{d}/app.key\" }}] }}\n",
        d = dir.display()
    );
    let ca = dir.join("ca.crt").display().to_string();
    for before in [0, 64] {
        let front = free_port();
        let others: String = (0..before)
            .map(|i| {
                format!(
                    "[[listeners.routes]]\nname = \"n{i}\"\nmatch = {{ sni = [\"n{i}.example\"] }}\n\
                     pool = \"p\"\n"
                )
            })
            .collect();
        let (_weir, _out) = start(
            "misdirected-offer",
            &format!(
                "[log]\naccess_log = false\n\
                 [[listeners]]\nname = \"edge\"\nbind = \"{front}\"\n{others}\
                 [[listeners.routes]]\nname = \"h1\"\nmode = \"l7\"\nmatch = {{ alpn = [\"http/1.1\"] }}\n{tls}\
                 [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
                 [[listeners.routes]]\nname = \"rest\"\nmode = \"l7\"\n{tls}\
                 [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
                 [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
            ),
        );
        let h2 = if before < 64 { 200 } else { 421 };
        for (version, want) in [("--http1.1", (200, "1.1")), ("--http2", (h2, "2"))] {
            let (status, body, used) = curl_app_example(front, &ca, version, "other.example");
            assert_eq!((status, used.as_str()), want, "{before} {version}: {body}");
        }
    }
}

/// curl's `GET /` over TLS to `front` with SNI `app.example` (verified
/// against `ca`), in HTTP `version`, with `host` as its host.
fn curl_app_example(
    front: SocketAddr,
    ca: &str,
    version: &str,
    host: &str,
) -> (u16, String, String) {
    let resolve = format!("app.example:{}:127.0.0.1", front.port());
    let header = format!("Host: {host}");
    curl(
        &[
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            version,
            "-H",
            &header,
        ],
        &format!("https://app.example:{}/", front.port()),
    )
}

/// `handshake_timeout` is one budget from the accept: a client that used
/// most of it on its PROXY header has only the rest for the TLS handshake.
#[test]
fn the_handshake_timeout_is_one_budget_for_proxy_header_and_tls() {
    let dir = test_dir("l7-handshake-budget");
    make_ca_and_leaf(&dir, "budget.example");
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "handshake-budget",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"https\"\nbind = \"{front}\"\nhandshake_timeout = \"2s\"\n\
             proxy_protocol = {{ accept = true, trusted = [\"127.0.0.1\"] }}\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             tls = {{ certificates = [{{ cert = \"{d}/budget.example.crt\", key = \"{d}/budget.example.key\" }}] }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"a\"\n\
             [[pools]]\nname = \"a\"\n[[pools.backends]]\naddress = \"127.0.0.1:9\"\n",
            d = dir.display()
        ),
    );
    let began = Instant::now();
    let mut s = TcpStream::connect(front).expect("connect");
    std::thread::sleep(Duration::from_millis(1600));
    s.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 4000 443\r\n")
        .expect("PROXY header");
    // Then no ClientHello: the connection is closed when the budget ends,
    // not a whole `handshake_timeout` after the header.
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let ended = matches!(s.read(&mut buf), Ok(0) | Err(_));
    let took = began.elapsed();
    assert!(ended, "still open");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3000),
        "closed after {took:?}"
    );
    let end = Instant::now() + DEADLINE;
    while metric(
        admin,
        "weir_tls_handshakes_total{listener=\"https\",result=\"failure\",reason=\"timeout\"}",
    ) < 1.0
    {
        assert!(
            Instant::now() < end,
            "the timed-out handshake was not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A reload swaps the certificates; a broken one fails the reload, names
/// the file, and the running certificate stays.
#[test]
fn certificates_are_swapped_by_a_reload_and_a_broken_one_changes_nothing() {
    let dir = test_dir("l7-reload-tls");
    make_ca(&dir);
    make_leaf(&dir, "site", &["one.example"], "");
    let (_nginx, a, _) = echoing_nginx("l7-reload-tls-backend");
    let (_nginx2, b, _) = echoing_nginx("l7-reload-tls-backend-2");
    let (front, grpc) = (free_port(), free_port());
    std::fs::write(dir.join("token"), "reload-tls-token-0123456789").expect("token");
    let config = format!(
        "[admin]\ngrpc = \"{grpc}\"\ntoken_file = \"{d}/token\"\n\
         [[listeners]]\nname = \"https\"\nbind = \"{front}\"\n\
         [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
         tls = {{ certificates = [{{ cert = \"{d}/site.crt\", key = \"{d}/site.key\" }}] }}\n\
         [[listeners.routes.http]]\nname = \"all\"\npool = \"a\"\n\
         [[pools]]\nname = \"a\"\n[[pools.backends]]\naddress = \"{a}\"\n",
        d = dir.display()
    );
    let (weir_child, out) = start("reload-tls", &config);
    assert!(served_subject(front, "one.example").contains("one.example"));
    let session = dir.join("one.session");
    assert!(
        !tls12_resumed(front, "one.example", &session),
        "a first visit"
    );

    // New files under the same names, then SIGHUP.
    make_leaf(&dir, "site", &["two.example"], "");
    let check_file = crate::cli::temp_config("reload-tls-check", &config);
    let checked = crate::cli::weir()
        .args(["check", "--config"])
        .arg(&*check_file)
        .output()
        .expect("weir check");
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    crate::cli::signal(&weir_child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert!(served_subject(front, "two.example").contains("two.example"));
    // Clients checked as before (none): the session made before resumes.
    assert!(
        tls12_resumed(front, "one.example", &session),
        "not resumed after the reload"
    );

    std::fs::write(
        dir.join("site.crt"),
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .expect("break the certificate");
    // `weir check` reads the files as the reload does, so that `weir check
    // && kill -HUP` stops here; it passed with the files as they were.
    let checked = crate::cli::weir()
        .args(["check", "--config"])
        .arg(&*check_file)
        .output()
        .expect("weir check");
    let err = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{err}");
    assert!(err.contains("listeners[0].routes[0].tls"), "{err}");
    assert!(err.contains("site.crt"), "{err}");
    crate::cli::signal(&weir_child.0, rustix::process::Signal::HUP);
    let line = wait_line(&out, "reload failed");
    assert!(line.contains("site.crt"), "{line}");
    assert!(line.contains("listeners[0].routes[0]"), "{line}");
    assert!(served_subject(front, "two.example").contains("two.example"));
    // A backend added meanwhile does not read the files again: the
    // broken one on disk keeps nothing out, and sessions go on.
    let added = crate::control::ctl(
        grpc,
        Some("reload-tls-token-0123456789"),
        &["backend", "add", "a", &b.to_string(), "--name", "b"],
    );
    assert_eq!(
        added.status.code(),
        Some(0),
        "{:?}",
        crate::control::text(&added)
    );
    assert!(served_subject(front, "two.example").contains("two.example"));
    assert!(
        tls12_resumed(front, "one.example", &session),
        "not resumed after the backend came"
    );
    let (status, _, _) = curl(
        &[
            "--cacert",
            &dir.join("ca.crt").display().to_string(),
            "--resolve",
            &format!("two.example:{}:127.0.0.1", front.port()),
        ],
        &format!("https://two.example:{}/", front.port()),
    );
    assert_eq!(status, 200);
}

/// An ECDSA and an RSA certificate for one name: a client gets the one
/// whose signatures it verifies (here as `openssl s_client -sigalgs` offers
/// them), the first listed when it verifies both.
#[test]
fn an_ecdsa_and_an_rsa_certificate_serve_one_name() {
    let dir = test_dir("l7-two-keys");
    make_ca(&dir);
    make_leaf(&dir, "ec", &["app.example"], "");
    make_leaf_with(
        &dir,
        "rsa",
        &["app.example"],
        "",
        &["-newkey", "rsa:2048", "-nodes"],
    );
    let (_nginx, a, _) = echoing_nginx("l7-two-keys-backend");
    let front = free_port();
    let (_weir, _out) = start(
        "two-keys",
        &format!(
            "[[listeners]]\nname = \"https\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             tls = {{ certificates = [{{ cert = \"{d}/ec.crt\", key = \"{d}/ec.key\" }}, \
             {{ cert = \"{d}/rsa.crt\", key = \"{d}/rsa.key\" }}] }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"a\"\n\
             [[pools]]\nname = \"a\"\n[[pools.backends]]\naddress = \"{a}\"\n",
            d = dir.display()
        ),
    );
    let key_bits = |sigalgs: &str| {
        let out = Command::new(which("openssl").expect("openssl"))
            .args(["s_client", "-connect", &front.to_string()])
            .args(["-servername", "app.example", "-sigalgs", sigalgs])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Server public key is "))
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(key_bits("rsa_pss_rsae_sha256"), "2048 bit");
    assert_eq!(key_bits("ecdsa_secp256r1_sha256"), "256 bit");
    assert_eq!(
        key_bits("rsa_pss_rsae_sha256:ecdsa_secp256r1_sha256"),
        "256 bit"
    );
}

/// A TLS 1.2 handshake with `server_name`, resuming the session saved in
/// `session` when there is one, and saving the one it ends with: whether
/// it resumed.
fn tls12_resumed(addr: SocketAddr, server_name: &str, session: &std::path::Path) -> bool {
    let mut args = vec![
        "s_client".to_owned(),
        "-tls1_2".to_owned(),
        "-connect".to_owned(),
        addr.to_string(),
        "-servername".to_owned(),
        server_name.to_owned(),
        "-sess_out".to_owned(),
        session.display().to_string(),
    ];
    if session.exists() {
        args.extend(["-sess_in".to_owned(), session.display().to_string()]);
    }
    let out = Command::new(which("openssl").expect("openssl"))
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TLSv1.2"), "{text}");
    text.lines().any(|l| l.starts_with("Reused,"))
}

/// A reload that starts asking for client certificates (or asks another
/// CA's) ends the connections set up without one: they drain, and do not
/// go on under the new terms. A reload that checks clients as before keeps
/// them.
#[test]
fn a_reload_that_asks_for_client_certificates_ends_connections_made_without() {
    let dir = test_dir("l7-mtls-reload");
    make_ca(&dir);
    make_leaf(&dir, "app", &["app.example"], "");
    let (_nginx, a, _) = echoing_nginx("l7-mtls-reload-backend");
    let front = free_port();
    let config = |client_ca: &str| {
        format!(
            "[[listeners]]\nname = \"https\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             tls = {{ certificates = [{{ cert = \"{d}/app.crt\", key = \"{d}/app.key\" }}]{client_ca} }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"a\"\n\
             [[pools]]\nname = \"a\"\n[[pools.backends]]\naddress = \"{a}\"\n",
            d = dir.display()
        )
    };
    let file = temp_config("mtls-reload", &config(""));
    let (weir_child, out) = crate::cli::run_weir(&file);
    let mut client = TlsSession::open(front, "app.example");
    assert!(client.ask("app.example").starts_with("HTTP/1.1 200"));
    // Clients checked as before: the connection goes on.
    std::fs::write(&file, config("")).expect("config");
    crate::cli::signal(&weir_child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert!(client.ask("app.example").starts_with("HTTP/1.1 200"));
    // A connection accepted now, whose ClientHello waits (in a relay) until
    // after the next reload.
    let (late, connected, release) = held_relay(front);
    let mut late_client = tls_client(late, "app.example");
    connected.recv_timeout(DEADLINE).expect("relayed");
    // Now a client certificate is asked for: the connection, made without
    // one, is closed.
    std::fs::write(
        &file,
        config(&format!(", client_ca = \"{}/ca.crt\"", dir.display())),
    )
    .expect("config");
    crate::cli::signal(&weir_child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert!(
        client.ends(),
        "a connection made without a client certificate goes on"
    );
    // The late one handshakes under the terms of its accept (no client
    // certificate), but is not served: its route was retired meanwhile.
    // Its request is there as its handshake ends, as a browser's is.
    let mut to_late = late_client.stdin.take().expect("stdin");
    let _ = to_late.write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n");
    let _ = to_late.flush();
    release.send(()).expect("release");
    let mut answer = String::new();
    let _ = late_client
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut answer);
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
    let _ = late_client.wait();
}

/// A reload that adds a route before another, taking one of its names
/// under stricter terms (a client certificate), ends the connections the
/// other route holds: one made for that name without a certificate does not
/// go on being served under it.
#[test]
fn a_reload_that_gives_a_name_to_another_route_ends_the_old_routes_connections() {
    let dir = test_dir("l7-route-moved");
    make_ca(&dir);
    make_leaf(&dir, "site", &["app.example", "admin.example"], "");
    let (_nginx, a, _) = echoing_nginx("l7-route-moved-backend");
    let front = free_port();
    let public = format!(
        "[[listeners.routes]]\nname = \"public\"\nmode = \"l7\"\n\
         tls = {{ certificates = [{{ cert = \"{d}/site.crt\", key = \"{d}/site.key\" }}] }}\n\
         [[listeners.routes.http]]\nname = \"all\"\npool = \"a\"\n",
        d = dir.display()
    );
    let admin = format!(
        "[[listeners.routes]]\nname = \"admin\"\nmode = \"l7\"\nmatch = {{ sni = [\"admin.example\"] }}\n\
         tls = {{ certificates = [{{ cert = \"{d}/site.crt\", key = \"{d}/site.key\" }}], \
         client_ca = \"{d}/ca.crt\" }}\n\
         [[listeners.routes.http]]\nname = \"all\"\npool = \"a\"\n",
        d = dir.display()
    );
    let config = |routes: &str| {
        format!(
            "[[listeners]]\nname = \"https\"\nbind = \"{front}\"\n{routes}\
             [[pools]]\nname = \"a\"\n[[pools.backends]]\naddress = \"{a}\"\n"
        )
    };
    let file = temp_config("route-moved", &config(&public));
    let (weir_child, out) = crate::cli::run_weir(&file);
    let mut client = TlsSession::open(front, "admin.example");
    let answer = client.ask("admin.example");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    std::fs::write(&file, config(&format!("{admin}{public}"))).expect("config");
    crate::cli::signal(&weir_child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert!(
        client.ends(),
        "a connection the new route would take goes on under the old one"
    );
    // A new one for that name needs the certificate now.
    let mut fresh = tls_client(front, "admin.example");
    let mut to_fresh = fresh.stdin.take().expect("stdin");
    let _ = to_fresh.write_all(b"GET / HTTP/1.1\r\nHost: admin.example\r\n\r\n");
    let _ = to_fresh.flush();
    let mut answer = String::new();
    let _ = fresh
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut answer);
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
    let _ = fresh.wait();
}

/// A TLS connection through `openssl s_client` that asks requests one at a
/// time and reads their status lines.
struct TlsSession {
    client: std::process::Child,
    to_weir: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl TlsSession {
    fn open(addr: SocketAddr, server_name: &str) -> TlsSession {
        let mut client = tls_client(addr, server_name);
        let to_weir = client.stdin.take().expect("stdin");
        let from_weir = client.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(from_weir).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        TlsSession {
            client,
            to_weir,
            lines,
        }
    }

    /// `GET /` for `host`: the answer's status line.
    fn ask(&mut self, host: &str) -> String {
        write!(self.to_weir, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("request");
        self.to_weir.flush().expect("flush");
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("an answer");
            if line.starts_with("HTTP/1.1 ") {
                return line;
            }
        }
    }

    /// Whether weir ends the connection within `DEADLINE`.
    fn ends(&mut self) -> bool {
        let end = Instant::now() + DEADLINE;
        while self.client.try_wait().expect("wait").is_none() {
            if Instant::now() >= end {
                let _ = self.client.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

/// `openssl s_client -quiet` to `addr` for `server_name`, its input and
/// output piped: a TLS connection whose bytes the test writes and reads.
fn tls_client(addr: SocketAddr, server_name: &str) -> std::process::Child {
    Command::new(which("openssl").expect("openssl"))
        .args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .args(["-servername", server_name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client")
}

/// A relay to `to` that connects as soon as a client comes and passes
/// nothing either way until released: weir accepts the connection, its
/// first bytes come later.
/// The second value says when weir has the connection.
fn held_relay(
    to: SocketAddr,
) -> (
    SocketAddr,
    std::sync::mpsc::Receiver<()>,
    std::sync::mpsc::Sender<()>,
) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (connected_tx, connected) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let Ok((client, _)) = l.accept() else { return };
        let Ok(server) = TcpStream::connect(to) else {
            return;
        };
        let _ = connected_tx.send(());
        if rx.recv_timeout(DEADLINE).is_err() {
            return;
        }
        let pipe = |mut from: TcpStream, mut to: TcpStream| {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
            })
        };
        let (c2, s2) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        pipe(client, server);
        pipe(s2, c2);
    });
    (addr, connected, tx)
}

/// With `client_ca`, a client must show a certificate that CA signed.
#[test]
fn client_certificates_are_verified() {
    let dir = test_dir("l7-mtls");
    make_ca(&dir);
    make_leaf(&dir, "app", &["app.example"], "");
    make_leaf(
        &dir,
        "client",
        &["client.example"],
        "extendedKeyUsage=clientAuth\n",
    );
    let (_nginx, a, _) = echoing_nginx("l7-mtls-backend");
    let (front, admin) = (free_port(), free_port());
    let (_weir, out) = start(
        "mtls",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"https\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             tls = {{ certificates = [{{ cert = \"{d}/app.crt\", key = \"{d}/app.key\" }}], client_ca = \"{d}/ca.crt\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"a\"\n\
             [[pools]]\nname = \"a\"\n[[pools.backends]]\naddress = \"{a}\"\n",
            d = dir.display()
        ),
    );
    let ca = dir.join("ca.crt").display().to_string();
    let resolve = format!("app.example:{}:127.0.0.1", front.port());
    let url = format!("https://app.example:{}/", front.port());
    // A TCP health check: connects and closes. No access-log line for it.
    drop(TcpStream::connect(front).expect("connect"));
    let end = Instant::now() + DEADLINE;
    while metric(
        admin,
        "weir_tls_handshakes_total{listener=\"https\",result=\"failure\",reason=\"client_closed\"}",
    ) < 1.0
    {
        assert!(Instant::now() < end, "the closed client was not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _, _) = curl(&["--cacert", &ca, "--resolve", &resolve], &url);
    assert_eq!(status, 0, "served without a client certificate");
    let (cert, key) = (
        dir.join("client.crt").display().to_string(),
        dir.join("client.key").display().to_string(),
    );
    let (status, body, _) = curl(
        &[
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "--cert",
            &cert,
            "--key",
            &key,
        ],
        &url,
    );
    assert_eq!(status, 200, "{body}");
    let end = Instant::now() + DEADLINE;
    while metric(
        admin,
        "weir_tls_handshakes_total{listener=\"https\",result=\"failure\",reason=\"client_certificate\"}",
    ) < 1.0
    {
        assert!(Instant::now() < end, "the refused client was not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    // And it has its access-log line, saying why (the first such line: the
    // health check before it wrote none).
    let line = wait_line(&out, "tls_handshake");
    assert!(line.contains("client_certificate"), "{line}");
    assert!(line.contains("route=\"app\""), "{line}");
}

/// One request on an open HTTP/1.1 keep-alive connection: the answer's body.
pub(crate) fn keepalive_get(s: &mut TcpStream, path: &str) -> std::io::Result<String> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: app\r\n\r\n")?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP/2 (h2c) client on one connection, with the h2 crate.
pub(crate) struct H2Client {
    rt: tokio::runtime::Runtime,
    send: h2::client::SendRequest<bytes::Bytes>,
    conn: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

impl H2Client {
    pub(crate) fn connect(addr: SocketAddr) -> H2Client {
        let rt = client_runtime();
        let (send, conn) = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            (send, tokio::spawn(conn))
        });
        H2Client { rt, send, conn }
    }

    /// `GET path`: the status and body, or the error that ended it.
    fn get(&mut self, path: &str) -> Result<(u16, String), h2::Error> {
        let send = self.send.clone();
        let path = path.to_owned();
        self.rt.block_on(async move {
            let response = request(send, &path).await?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                text.extend_from_slice(&chunk);
            }
            Ok((status, String::from_utf8_lossy(&text).into_owned()))
        })
    }

    /// `GET path` with a `Host` field beside `:authority` (`app`): the
    /// status.
    fn get_with_host(&mut self, path: &str, host: &'static str) -> Result<u16, h2::Error> {
        let send = self.send.clone();
        let path = path.to_owned();
        self.rt.block_on(async move {
            let mut send = send.ready().await?;
            let req = http::Request::get(format!("http://app{path}"))
                .header("host", host)
                .body(())
                .expect("request");
            let (response, _) = send.send_request(req, true)?;
            let response = tokio::time::timeout(DEADLINE, response)
                .await
                .map_err(|_| h2::Error::from(h2::Reason::CANCEL))??;
            Ok(response.status().as_u16())
        })
    }

    /// `GET path` of a stream of server-sent events: when each of the
    /// first `events` events arrived, counted from the request.
    pub(crate) fn event_arrivals(
        &mut self,
        path: &str,
        events: usize,
    ) -> Result<Vec<Duration>, h2::Error> {
        let send = self.send.clone();
        let path = path.to_owned();
        self.rt.block_on(async move {
            let began = std::time::Instant::now();
            let response = request(send, &path).await?;
            let mut body = response.into_body();
            let (mut text, mut arrivals) = (Vec::new(), Vec::new());
            while arrivals.len() < events {
                let Ok(Some(chunk)) = tokio::time::timeout(DEADLINE, body.data()).await else {
                    break;
                };
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                text.extend_from_slice(&chunk);
                let seen = String::from_utf8_lossy(&text)
                    .matches("data: event")
                    .count();
                while arrivals.len() < seen {
                    arrivals.push(began.elapsed());
                }
            }
            Ok(arrivals)
        })
    }

    /// Whether the server ended the connection (GOAWAY, then close) within
    /// `within`.
    fn ended_within(&mut self, within: Duration) -> bool {
        let conn = &mut self.conn;
        self.rt
            .block_on(async { tokio::time::timeout(within, conn).await.is_ok() })
    }
}

/// `GET path` on `send`: the response head, within `DEADLINE`.
async fn request(
    send: h2::client::SendRequest<bytes::Bytes>,
    path: &str,
) -> Result<http::Response<h2::RecvStream>, h2::Error> {
    let mut send = send.ready().await?;
    let req = http::Request::get(format!("http://app{path}"))
        .body(())
        .expect("request");
    let (response, _) = send.send_request(req, true)?;
    tokio::time::timeout(DEADLINE, response)
        .await
        .map_err(|_| h2::Error::from(h2::Reason::CANCEL))?
}

/// A runtime for a test's own clients, on the test's thread.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// [`h2_over`] a new connection to `front`.
async fn h2_to(
    front: SocketAddr,
    window: u32,
    connection: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect");
    h2_over(tcp, window, connection).await
}

/// An HTTP/2 client connection over `io` whose streams start with `window`
/// bytes of room and whose connection has `connection` (65,535 when
/// neither is said): its sender, and the task that drives it.
async fn h2_over<T>(
    io: T,
    window: u32,
    connection: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(connection)
        .handshake::<_, bytes::Bytes>(io)
        .await
        .expect("h2 handshake");
    (send, tokio::spawn(conn))
}

/// A reload applies to the requests of connections opened before it: they
/// follow the new rules; a request in flight finishes; when the route is
/// removed, its HTTP/1.1 and HTTP/2 connections close (HTTP/2 with GOAWAY).
/// A client that takes nothing of a response (HTTP/1.1: never reads;
/// HTTP/2: a flow-control window of zero) is disconnected after
/// `timeouts.send`, and the backend's connection is let go, instead of
/// being held for as long as the client likes; also while its connection
/// drains (a reload removed its route), which waits for that response.
#[test]
fn a_client_that_reads_nothing_is_cut_after_the_send_timeout() {
    let dir = test_dir("l7-send-timeout");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    // More than every buffer on the way (both sockets, hyper's) can hold.
    std::fs::write(www.join("big.bin"), vec![7u8; 48 * 1024 * 1024]).expect("big file");
    let port = free_port();
    let _nginx = start_nginx(
        &dir,
        &format!("server {{ listen {port}; root {}; }}", www.display()),
    );
    wait_connectable(port);
    let (front, admin) = (free_port(), free_port());
    let config = |route: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"{route}\"\nmode = \"l7\"\n\
             timeouts = {{ send = \"500ms\" }}\n\
             [[listeners.routes.http]]\nname = \"files\"\npool = \"files\"\n\
             [[pools]]\nname = \"files\"\n[[pools.backends]]\nname = \"nginx\"\naddress = \"{port}\"\n"
        )
    };
    let file = crate::cli::temp_config("send-timeout", &config("app"));
    let mut cmd = weir();
    cmd.args(["run", "--config"]).arg(&file);
    let (weir_child, out) = start_weir(cmd);
    let active = || {
        metric(
            admin,
            "weir_http_upstream_connections_open{pool=\"files\",backend=\"nginx\",state=\"active\"}",
        )
    };

    // HTTP/1.1: the request, then nothing read.
    let began = Instant::now();
    let mut h1 = TcpStream::connect(front).expect("connect");
    write!(h1, "GET /big.bin HTTP/1.1\r\nHost: app\r\n\r\n").expect("request");
    // In flight at the backend until weir cuts it, at least the 500 ms.
    let in_flight = || {
        metric(
            admin,
            "weir_backend_http_requests_active{pool=\"files\",backend=\"nginx\"}",
        )
    };
    let end = Instant::now() + DEADLINE;
    while in_flight() != 1.0 {
        assert!(Instant::now() < end, "the request never counted in flight");
        std::thread::sleep(Duration::from_millis(5));
    }
    let line = wait_line(&out, "\"path\":\"/big.bin\"");
    assert!(line.contains("\"reason\":\"idle_timeout\""), "{line}");
    assert!(line.contains("\"status\":200"), "{line}");
    assert!(
        began.elapsed() >= Duration::from_millis(500),
        "cut too early"
    );
    // The client's connection is closed: what was on its way, then the end.
    h1.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut rest = Vec::new();
    if let Err(e) = h1.read_to_end(&mut rest) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(rest.len() < 48 * 1024 * 1024, "the whole file came");

    // HTTP/2: the response head comes, and no window for its body.
    let rt = client_runtime();
    rt.block_on(async {
        let (send, conn) = h2_to(front, 0, 65_535).await;
        let response = request(send, "/big.bin").await.expect("response head");
        assert_eq!(response.status(), 200);
        // weir ends the connection.
        // Ended, cleanly (GOAWAY) or not: either way, by weir.
        let _ended = tokio::time::timeout(DEADLINE, conn)
            .await
            .expect("the connection ended")
            .expect("the connection task");
        drop(response);
    });
    let line = wait_line(&out, "\"path\":\"/big.bin\"");
    assert!(line.contains("\"reason\":\"idle_timeout\""), "{line}");
    assert!(!line.contains("\"bytes_out\":50331648"), "{line}");
    let end = Instant::now() + DEADLINE;
    while active() != 0.0 {
        assert!(
            Instant::now() < end,
            "the backend's connection is still held"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    while in_flight() != 0.0 {
        assert!(Instant::now() < end, "a cut request still counts in flight");
        std::thread::sleep(Duration::from_millis(20));
    }

    // HTTP/1.1 again, and a reload removes the route (renamed) while the
    // response waits: the draining connection is cut all the same.
    let mut h1 = TcpStream::connect(front).expect("connect");
    write!(h1, "GET /big.bin?drain HTTP/1.1\r\nHost: app\r\n\r\n").expect("request");
    let end = Instant::now() + DEADLINE;
    while in_flight() != 1.0 {
        assert!(Instant::now() < end, "the request never counted in flight");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(&file, config("moved")).expect("rewrite");
    crate::cli::signal(&weir_child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    let line = wait_line(&out, "\"path\":\"/big.bin?drain\"");
    assert!(line.contains("\"reason\":\"idle_timeout\""), "{line}");
    let end = Instant::now() + DEADLINE;
    while in_flight() != 0.0 || active() != 0.0 {
        assert!(
            Instant::now() < end,
            "the drained request still holds its backend"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(h1);
}

/// Pieces of a paced answer of [`pausing_backend`].
const PACED: usize = 20;

/// The `i`th piece of a paced answer.
fn paced_piece(i: usize) -> String {
    format!("piece {i:02}\n")
}

/// A hand-made HTTP/1.1 backend whose answers come in pieces. `GET
/// /stall-length` gets a head declaring 100000 bytes and the 12 bytes
/// `first piece\n`, `GET /stall-chunked` a chunked head and the same as
/// one chunk; then nothing more, the connection held open until the other
/// side closes it, when the path and how long the backend had been silent
/// are sent on the channel. Any other request gets [`PACED`] chunks 100 ms
/// apart, then the last chunk.
fn pausing_backend() -> (SocketAddr, std::sync::mpsc::Receiver<(String, Duration)>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let tx = tx.clone();
            std::thread::spawn(move || serve_pausing(s, &tx));
        }
    });
    (addr, rx)
}

fn serve_pausing(s: TcpStream, closed: &std::sync::mpsc::Sender<(String, Duration)>) {
    let Ok(clone) = s.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    let mut s = s;
    loop {
        // The request line, then the header up to its blank line (GETs: no
        // body).
        let mut line = String::new();
        if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        let stall = match path.as_str() {
            "/stall-length" => {
                Some("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nfirst piece\n")
            }
            "/stall-chunked" => {
                Some("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nc\r\nfirst piece\n\r\n")
            }
            _ => None,
        };
        if let Some(answer) = stall {
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
            let silent = Instant::now();
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            let _ = closed.send((path, silent.elapsed()));
            return;
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .is_err()
        {
            return;
        }
        for i in 0..PACED {
            std::thread::sleep(Duration::from_millis(100));
            let piece = paced_piece(i);
            if write!(s, "{:x}\r\n{piece}\r\n", piece.len()).is_err() {
                return;
            }
        }
        if s.write_all(b"0\r\n\r\n").is_err() {
            return;
        }
    }
}

/// `GET path` on a new kept-alive connection to `front`, read until the
/// connection closes: the response's head, what came after it, and how long
/// after the last bytes the close came.
fn get_until_closed(front: SocketAddr, path: &str) -> (String, String, Duration) {
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").expect("request");
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    let mut last = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                last = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "{path}: still open {DEADLINE:?} after the last bytes ({e}): {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let silence = last.elapsed();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_owned(), silence)
}

/// `timeouts.upstream_idle` bounds a backend's silence inside a response
/// body, not the body's length. A body that stops coming, declared by its
/// Content-Length or chunked, is cut once the backend has been silent that
/// long: the client gets the head and what came of the body, then the
/// connection closes, short of the declared length or without the last
/// chunk, so the client can tell the response is incomplete; the access log
/// says `idle_timeout`, and the backend's connection is closed too. A body
/// whose pieces come closer together than that is served whole, though it
/// takes twice as long.
#[test]
fn a_backend_silent_inside_a_body_is_cut_after_upstream_idle() {
    let (backend, closed) = pausing_backend();
    let front = free_port();
    let (_weir, out) = start(
        "upstream-idle",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_idle = \"1s\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"pausing\"\naddress = \"{backend}\"\n"
        ),
    );
    for path in ["/stall-length", "/stall-chunked"] {
        let (head, body, silence) = get_until_closed(front, path);
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        if path == "/stall-length" {
            assert!(head.contains("content-length: 100000"), "{head}");
            assert_eq!(body, "first piece\n", "{path}");
        } else {
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            assert!(body.contains("first piece\n"), "{path}: {body:?}");
            assert!(
                !body.contains("\r\n0\r\n\r\n"),
                "{path}: ended as if whole: {body:?}"
            );
        }
        // Closed after about upstream_idle of silence: not at once, and
        // well before the client's own patience ran out.
        assert!(
            silence >= Duration::from_millis(500) && silence < Duration::from_secs(6),
            "{path}: closed {silence:?} after the last bytes"
        );
        let line = access_line(&out, path);
        assert_eq!(line["reason"], "idle_timeout", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["bytes_out"], 12, "{line}");
        // weir let go of the backend's connection, not before the backend
        // had been silent for upstream_idle.
        let (which, held) = closed
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("{path}: the backend's connection stayed open: {e}"));
        assert_eq!(which, path);
        assert!(
            held >= Duration::from_millis(950) && held < Duration::from_secs(6),
            "{path}: the backend's connection closed after {held:?} of silence"
        );
    }

    // Never silent for 1 s, though the body takes 2 s: served whole.
    let (status, body, _) = curl(&["--http1.1"], &format!("http://{front}/paced"));
    let whole: String = (0..PACED).map(paced_piece).collect();
    assert_eq!((status, body.as_str()), (200, whole.trim_end()));
    let line = access_line(&out, "/paced");
    assert_eq!(line["reason"], "completed", "{line}");
    assert_eq!(line["bytes_out"], whole.len(), "{line}");
}

/// A backend's response framed by `Transfer-Encoding: chunked` with a
/// `Content-Length` beside it (which RFC 9112 says to ignore) reaches the
/// client whole: weir forwards it without the length, which would cut the
/// body short.
#[test]
fn a_chunked_response_with_a_content_length_arrives_whole() {
    let backend = thread_backend(|mut s| {
        // Kept open between answers: the end of a body is its last chunk's,
        // not the connection's.
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                          Content-Length: 3\r\n\r\n\
                          6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
                    );
                }
                Ok(_) => {}
            }
        }
    });
    let front = free_port();
    let (_weir, out) = start(
        "both-framings",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"b\"\naddress = \"{backend}\"\n"
        ),
    );
    let (status, body) = one_response(front, "GET /both HTTP/1.1\r\nHost: app\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "hello world"));
    let line = access_line(&out, "/both");
    assert_eq!(line["reason"], "completed", "{line}");
    let (status, body, _) = curl(
        &["--http2-prior-knowledge"],
        &format!("http://{front}/both2"),
    );
    assert_eq!((status, body.as_str()), (200, "hello world"));
}

/// Kept connections that a reload does not keep (here, their route is
/// renamed) are closed, and the backend's idle gauge says so.
#[test]
fn kept_connections_a_reload_lets_go_leave_the_idle_gauge() {
    let (_nginx, a, _) = echoing_nginx("l7-idle-gauge");
    let (front, admin) = (free_port(), free_port());
    let config = |route: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"{route}\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"a\"\naddress = \"{a}\"\n"
        )
    };
    let file = crate::cli::temp_config("l7-idle-gauge", &config("app"));
    let mut cmd = weir();
    cmd.args(["run", "--config"]).arg(&file);
    let (weir_child, out) = start_weir(cmd);
    let idle = || {
        metric(
            admin,
            "weir_http_upstream_connections_open{pool=\"p\",backend=\"a\",state=\"idle\"}",
        )
    };
    let wait_idle = |want: f64, what: &str| {
        let end = Instant::now() + DEADLINE;
        while idle() != want {
            assert!(Instant::now() < end, "{what}: {} idle", idle());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (status, _, _) = curl(&[], &format!("http://{front}/"));
    assert_eq!(status, 200);
    wait_idle(1.0, "the connection kept after the request");
    std::fs::write(&*file, config("renamed")).expect("rewrite");
    crate::cli::signal(&weir_child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    wait_idle(0.0, "the old route's connection closed");
    let (status, _, _) = curl(&[], &format!("http://{front}/"));
    assert_eq!(status, 200);
    wait_idle(1.0, "the new route's connection kept");
}

#[test]
fn reload_reaches_open_connections_and_drains_a_removed_route() {
    let (_nginx, a, b) = echoing_nginx("l7-reload");
    let slow = raw_backend(None, Duration::from_millis(800));
    let front = free_port();
    let config = |all: SocketAddr, route: &str| {
        format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"{route}\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"slow\"\npool = \"slow\"\nmatch = {{ path_prefix = \"/slow\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"all\"\n\
             [[pools]]\nname = \"slow\"\n[[pools.backends]]\naddress = \"{}\"\n\
             [[pools]]\nname = \"all\"\n[[pools.backends]]\naddress = \"{all}\"\n",
            slow.addr
        )
    };
    let file = crate::cli::temp_config("l7-reload", &config(a, "app"));
    let mut cmd = weir();
    cmd.args(["run", "--config"]).arg(&file);
    let (weir_child, out) = start_weir(cmd);

    let mut h1 = TcpStream::connect(front).expect("connect");
    h1.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let body = keepalive_get(&mut h1, "/").expect("first request");
    assert!(body.starts_with(&a.port().to_string()), "{body}");
    let mut h2 = H2Client::connect(front);
    let (status, body) = h2.get("/").expect("h2 request");
    assert_eq!(status, 200);
    assert!(body.starts_with(&a.port().to_string()), "{body}");

    // A slow request in flight across the reload.
    let in_flight = std::thread::spawn(move || curl(&[], &format!("http://{front}/slow")));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&file, config(b, "app")).expect("rewrite");
    crate::cli::signal(&weir_child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    let body = keepalive_get(&mut h1, "/").expect("after the reload");
    assert!(
        body.starts_with(&b.port().to_string()),
        "the old rules answered: {body}"
    );
    let (_, body) = h2.get("/").expect("h2 after the reload");
    assert!(body.starts_with(&b.port().to_string()), "{body}");
    let (status, body, _) = in_flight.join().expect("in flight");
    assert_eq!(status, 200, "{body}");

    // The route goes (another takes its place): its connections drain.
    std::fs::write(&file, config(b, "other")).expect("rewrite");
    crate::cli::signal(&weir_child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert!(h2.ended_within(Duration::from_secs(5)), "no GOAWAY");
    let mut rest = Vec::new();
    match h1.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the HTTP/1.1 connection stayed open"
        ),
    }
    // New connections get the new route.
    let (status, body, _) = curl(&[], &format!("http://{front}/"));
    assert_eq!(status, 200);
    assert!(body.starts_with(&b.port().to_string()), "{body}");
}

/// When a reload removes a route, its connections that still carry a
/// response that never ends (a stream of events) are closed once the
/// listener's `shutdown_timeout` has passed, as a removed listener's are,
/// HTTP/1.1 and HTTP/2 alike: the removed route's rules and pools are not
/// kept in use for as long as a client likes. The requests end with reason
/// `shutdown`.
#[test]
fn a_removed_routes_endless_responses_end_after_the_shutdown_timeout() {
    // Answers every request with a chunked body that never ends.
    let backend = thread_backend(|mut s| {
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        while s.write_all(b"c\r\ndata: tick\n\n\r\n").is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let front = free_port();
    let config = |route: &str| {
        format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\nshutdown_timeout = \"1s\"\n\
             [[listeners.routes]]\nname = \"{route}\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        )
    };
    let file = crate::cli::temp_config("removed-route-streams", &config("app"));
    let mut cmd = weir();
    cmd.args(["run", "--config"]).arg(&file);
    let (weir_child, out) = start_weir(cmd);

    let mut h1 = TcpStream::connect(front).expect("connect");
    write!(h1, "GET /h1 HTTP/1.1\r\nHost: app\r\n\r\n").expect("request");
    h1.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut first = [0u8; 256];
    let n = h1.read(&mut first).expect("the response begins");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
    let mut h2 = H2Client::connect(front);
    let send = h2.send.clone();
    let mut body = h2.rt.block_on(async move {
        let response = request(send, "/h2").await.expect("response head");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let chunk = tokio::time::timeout(DEADLINE, body.data()).await;
        assert!(matches!(chunk, Ok(Some(Ok(_)))), "no event");
        body
    });

    std::fs::write(&*file, config("other")).expect("rewrite");
    // Timed from before the signal: the route is removed after it.
    let before = Instant::now();
    crate::cli::signal(&weir_child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    // The events go on until the shutdown timeout, then the end. A read
    // that follows one made half a second after the signal is of an event
    // sent after the reload (the backend sends one every 50 ms; what was
    // buffered before is taken by the earlier read).
    let mut buf = [0u8; 4096];
    let (mut late, mut past) = (0, false);
    loop {
        match h1.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {
                let at = before.elapsed();
                assert!(at < DEADLINE, "HTTP/1.1 stayed open");
                late += usize::from(past);
                past = at >= Duration::from_millis(500);
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                break;
            }
        }
    }
    let took = before.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < DEADLINE,
        "HTTP/1.1 closed after {took:?}"
    );
    assert!(late > 0, "no event half a second after the reload");
    assert!(
        h2.ended_within(DEADLINE),
        "the HTTP/2 connection stayed open"
    );
    // Its stream ends too (what it got before is of no interest here).
    let ended = h2.rt.block_on(async {
        loop {
            match tokio::time::timeout(DEADLINE, body.data()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(_) => return true,
                Err(_) => return false,
            }
        }
    });
    assert!(ended, "the HTTP/2 stream stayed open");
    // The two lines, in either order.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = wait_line(&out, "\"path\":\"/h");
        assert!(line.contains("\"reason\":\"shutdown\""), "{line}");
        seen.push(line);
    }
    assert!(
        seen.iter().any(|l| l.contains("\"path\":\"/h2\"")),
        "{seen:?}"
    );
}

/// weir with one `l7` route to `backend` (`route`: more of the route's
/// keys), its access log off; its listener's address.
fn one_l7_route(tag: &str, backend: SocketAddr, route: &str) -> (Running, SocketAddr) {
    let front = free_port();
    let (weir, _out) = start(
        tag,
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n{route}\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    (weir, front)
}

/// A client connection with no request for `timeouts.idle` is closed; one
/// in the middle of a slow request is not, and waiting for it costs no CPU
/// (the idle timer once fired again and again while a request outlasted it).
#[test]
fn idle_client_connections_are_closed() {
    let slow = raw_backend(None, Duration::from_millis(1500));
    let (weir, front) = one_l7_route("l7-idle", slow.addr, "timeouts = { idle = \"300ms\" }\n");
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    // Longer than the idle timeout, but a request is in flight.
    let cpu = crate::exhaustion::cpu_seconds(weir.0.id());
    // Timed from before the request: weir's idle timer starts only once the
    // answer, 1.5 s after it, is sent, so a stall here cannot shorten it.
    let began = Instant::now();
    let body = keepalive_get(&mut s, "/").expect("a slow request");
    assert!(body.starts_with("conn=1 req=1"), "{body}");
    let spent = crate::exhaustion::cpu_seconds(weir.0.id()) - cpu;
    assert!(
        spent < 0.3,
        "{spent:.2} s of CPU while one request waited 1.5 s"
    );
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).expect("closed by weir");
    assert_eq!(n, 0);
    let took = began.elapsed();
    // 1.5 s for the answer, then the 300 ms idle timeout (not at once).
    assert!(
        took >= Duration::from_millis(1750) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Timed from before the connection, which starts the idle timer.
    let began = Instant::now();
    let mut h2 = H2Client::connect(front);
    assert!(
        h2.ended_within(Duration::from_secs(3)),
        "an idle HTTP/2 connection stayed open"
    );
    assert!(began.elapsed() >= Duration::from_millis(250));
}

/// A request whose header has begun when `timeouts.idle` runs out is not
/// cut (its header has `request_header` from its first byte, as with nginx
/// and HAProxy): closing the connection then dropped it unanswered.
#[test]
fn a_request_header_under_way_outlasts_the_idle_timeout() {
    let backend = raw_backend(None, Duration::ZERO);
    let (_weir, front) = one_l7_route(
        "l7-idle-header",
        backend.addr,
        "timeouts = { idle = \"2s\" }\n",
    );
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let body = keepalive_get(&mut s, "/").expect("first request");
    assert!(body.starts_with("conn=1 req=1"), "{body}");
    // The next header begins a second into the rest and ends past its
    // 2 s.
    std::thread::sleep(Duration::from_secs(1));
    s.write_all(b"GET /second HTTP/1.1\r\nHost: app\r\n")
        .expect("a header begun");
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"\r\n").expect("the header's end");
    let (status, body) = response_on(s);
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("conn=1 req=2"), "{body}");
}

/// Only `timeouts.idle` ends a rest between requests: a kept-alive client
/// connection that rests past 30 s (hyper's own header timer, which weir
/// turns off) is still served at the default 60 s.
#[test]
fn a_kept_alive_connection_rests_as_long_as_the_idle_timeout_allows() {
    let backend = raw_backend(None, Duration::ZERO);
    let (_weir, front) = one_l7_route("l7-rest", backend.addr, "");
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let body = keepalive_get(&mut s, "/").expect("first request");
    assert!(body.starts_with("conn=1 req=1"), "{body}");
    std::thread::sleep(Duration::from_secs(32));
    let body = keepalive_get(&mut s, "/").expect("served after a 32 s rest");
    // The backend's side rested past `upstream_keepalive` (4 s): weir
    // closed it and opened another.
    assert!(body.starts_with("conn=2 req=1"), "{body}");
}

/// A request weir answers itself (here a 404: no rule matches) ends its
/// header's deadline like one sent to a backend: the rest after it is
/// bounded by `idle`, not by `request_header`.
#[test]
fn a_rest_after_a_request_weir_answered_itself_is_not_a_header_timeout() {
    let backend = raw_backend(None, Duration::ZERO);
    let front = free_port();
    let (_weir, _out) = start(
        "l7-rest-local",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ request_header = \"500ms\" }}\n\
             [[listeners.routes.http]]\nname = \"app\"\npool = \"p\"\n\
             match = {{ path_prefix = \"/app\" }}\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let body = keepalive_get(&mut s, "/elsewhere").expect("first request");
    assert!(body.contains("(no_rule)"), "{body}");
    std::thread::sleep(Duration::from_millis(1500));
    let body = keepalive_get(&mut s, "/elsewhere").expect("served after a 1.5 s rest");
    assert!(body.contains("(no_rule)"), "{body}");
    std::thread::sleep(Duration::from_millis(1500));
    let body = keepalive_get(&mut s, "/app").expect("and to the backend after another");
    assert!(body.starts_with("conn=1 req=1"), "{body}");
}

/// One HTTP/1.1 request with a raw request target (no client-side
/// normalisation) and extra header lines, on its own connection:
/// (status, header block, body).
pub(crate) fn raw_get(front: SocketAddr, target: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: app.example.com\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_owned(), body.to_owned())
}

/// `retries = N`: after a failed connect, N other backends are tried and no
/// more, on an `l4` route and an `l7` one alike. Under `first`, with three
/// refusing backends before a live one, `retries = 2` tries the three and
/// gives up: the `l4` client is closed, logged `connect_failed` with the
/// three it tried, the `l7` client gets 502 `refused`, and the live
/// backends see nothing; once a reload makes it `retries = 3`, the fourth
/// try reaches them. The refusing backends are static (`health = false`):
/// passive health cannot take them out between clients.
#[test]
fn retries_bound_the_backends_tried_after_a_failed_connect() {
    let dead: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    let live = crate::fleet::named_backend("live");
    let app = raw_backend(None, Duration::ZERO);
    let (admin, tcp, web) = (free_port(), free_port(), free_port());
    let pool = |name: &str, retries: u32, last: SocketAddr| {
        let mut t =
            format!("[[pools]]\nname = \"{name}\"\nbalance = \"first\"\nretries = {retries}\n");
        for (i, d) in dead.iter().enumerate() {
            t.push_str(&format!(
                "[[pools.backends]]\nname = \"d{}\"\naddress = \"{d}\"\nhealth = false\n",
                i + 1
            ));
        }
        t.push_str(&format!(
            "[[pools.backends]]\nname = \"live\"\naddress = \"{last}\"\n"
        ));
        t
    };
    let config = |retries: u32| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"tcp\"\nbind = \"{tcp}\"\n\
             [[listeners.routes]]\nname = \"relay\"\npool = \"tcp\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{web}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"web\"\n{}{}",
            pool("tcp", retries, live),
            pool("web", retries, app.addr)
        )
    };
    let file = temp_config("retries", &config(2));
    let (weir, out) = crate::cli::run_weir(&file);
    // What an l4 client receives: the name the live backend writes, or
    // nothing when weir closes it.
    let relayed = || {
        let mut s = TcpStream::connect(tcp).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    };
    let refused = |pool: &str, backend: &str| {
        metric(
            admin,
            &format!(
                "weir_backend_connect_errors_total{{pool=\"{pool}\",backend=\"{backend}\",reason=\"refused\"}}"
            ),
        )
    };

    assert_eq!(relayed(), "", "retries = 2 reached the fourth backend");
    let line = wait_line(&out, "\"reason\":\"connect_failed\"");
    assert!(
        line.contains("\"tried\":\"d1:refused d2:refused d3:refused\""),
        "{line}"
    );
    let (status, _, body) = raw_get(web, "/", "");
    assert_eq!(
        (status, body.trim_end()),
        (502, "weir: the backend failed (refused)")
    );
    assert_eq!(app.requests.load(SeqCst), 0);
    for pool in ["tcp", "web"] {
        for d in ["d1", "d2", "d3"] {
            assert_eq!(refused(pool, d), 1.0, "{pool}/{d}");
        }
    }
    assert_eq!(
        metric(
            admin,
            "weir_backend_connections_total{pool=\"tcp\",backend=\"live\"}"
        ),
        0.0
    );

    std::fs::write(&*file, config(3)).expect("rewrite");
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    assert_eq!(relayed(), "live");
    let (status, _, body) = raw_get(web, "/", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.requests.load(SeqCst), 1);
    for pool in ["tcp", "web"] {
        for d in ["d1", "d2", "d3"] {
            assert_eq!(refused(pool, d), 2.0, "{pool}/{d}");
        }
    }
    assert_eq!(
        metric(
            admin,
            "weir_route_connections_failed_total{listener=\"tcp\",route=\"relay\",reason=\"refused\"}"
        ),
        1.0
    );
}

/// An HTTP/2 client sends each cookie in a field of its own (browsers do,
/// and curl with several `Cookie` headers); an HTTP/1.1 backend gets them
/// in one `Cookie` line, as RFC 9113 §8.2.3 asks.
#[test]
fn cookies_of_an_http2_request_reach_an_http1_backend_in_one_line() {
    let backend = crate::http_auth::headers_backend(&["cookie"]);
    let (admin, front) = (free_port(), free_port());
    let (_weir, _out) = start(
        "cookies",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let url = format!("http://{front}/");
    let (status, body, version) = curl(
        &[
            "--http2-prior-knowledge",
            "-H",
            "Cookie: a=1",
            "-H",
            "Cookie: b=2",
        ],
        &url,
    );
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    assert_eq!(body, "cookie=a=1; b=2");
    // Over HTTP/1.1 the client's lines pass as they came.
    let (status, body, _) = curl(&["--http1.1", "-H", "Cookie: a=1; b=2"], &url);
    assert_eq!((status, body.as_str()), (200, "cookie=a=1; b=2"));
}

/// A client that stops sending its request body is cut after
/// `timeouts.request_body`: while the backend waits for the body it gets
/// `408` then, not after `upstream_response`; and when the backend answered
/// early (a 401 before the body), the backend's connection, still taking
/// the body, is closed rather than kept open by the client for good or
/// parked among the idle ones.
#[test]
fn a_stalled_request_body_is_cut_after_request_body() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = l.local_addr().expect("addr");
    let (closed_tx, closed) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let closed_tx = closed_tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut s = s;
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                if line.starts_with("POST /early") {
                    // Answered before the body, which is read on until the
                    // connection ends.
                    let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
                }
                // The body (`/wait`: before an answer that never comes).
                let mut sink = [0u8; 1024];
                while reader.read(&mut sink).is_ok_and(|n| n > 0) {}
                let _ = closed_tx.send(line);
            });
        }
    });
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "stalled-body",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ request_body = \"300ms\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let stalled = |path: &str| {
        let mut s = TcpStream::connect(front).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        .expect("write");
        s
    };
    let started = Instant::now();
    let mut s = stalled("/wait");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("idle_timeout"), "{answer}");
    assert!(
        started.elapsed() < DEADLINE,
        "cut after {:?}",
        started.elapsed()
    );
    assert_eq!(
        closed
            .recv_timeout(DEADLINE)
            .expect("the backend's connection closed"),
        "POST /wait HTTP/1.1\r\n"
    );

    let mut s = stalled("/early");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("the early answer");
    assert_eq!(&head, b"HTTP/1.1 401");
    // The client sends no more: the upload is cut, the backend's
    // connection closed, and so is the client's.
    assert_eq!(
        closed
            .recv_timeout(DEADLINE)
            .expect("the backend's connection closed"),
        "POST /early HTTP/1.1\r\n"
    );
    let mut rest = Vec::new();
    assert!(
        s.read_to_end(&mut rest).is_ok(),
        "the client's connection closed"
    );
    // Never parked among the idle connections while it took the body.
    let idle = format!(
        "weir_http_upstream_connections_open{{pool=\"p\",backend=\"{backend}\",state=\"idle\"}}"
    );
    assert_eq!(metric(admin, &idle), 0.0);
}

/// A client that opens HTTP/2 streams and resets each before its answer
/// (CVE-2023-44487) has its connection closed once it cancelled more than
/// 100 and at least half of its requests, counted in
/// `weir_http_reset_floods_total`; so has one that hides its resets among
/// requests weir answers itself (a 404 costs no backend, and counts on
/// neither side), one that resets each request as soon as its answer
/// begins (each costing the backend connection that carried it), and a
/// gRPC client that cancels its calls long before the deadline it gave. A
/// client that cancels a few stays, and so does a gRPC client whose calls
/// all run out of their 100 ms deadlines while the backend is slow.
#[test]
fn an_http2_rapid_reset_flood_closes_the_connection() {
    let backend = raw_backend(None, Duration::from_millis(500));
    let sized = sized_backend();
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "reset-flood",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"slow\"\npool = \"p\"\nmatch = {{ path_prefix = \"/slow\" }}\n\
             [[listeners.routes.http]]\nname = \"huge\"\npool = \"q\"\nmatch = {{ path_prefix = \"/huge\" }}\n\
             [[listeners.routes.http]]\nname = \"x\"\npool = \"q\"\nmatch = {{ path_prefix = \"/x\" }}\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n\
             [[pools]]\nname = \"q\"\n[[pools.backends]]\naddress = \"{sized}\"\n",
            backend.addr
        ),
    );
    // `n` requests for `path`, each cancelled once weir has it (or, with
    // `answered`, once its answer's head arrived), each followed by
    // `cheap` requests that no rule takes.
    let cancel = |client: &mut H2Client, n: usize, path: &'static str, answered: bool, cheap| {
        let send = client.send.clone();
        client.rt.block_on(async move {
            for _ in 0..n {
                let mut send = send.clone().ready().await?;
                let req = http::Request::get(format!("http://app{path}"))
                    .body(())
                    .expect("request");
                let (response, mut stream) = send.send_request(req, true)?;
                if answered {
                    let head = response.await?;
                    assert_eq!(head.status(), 200);
                    stream.send_reset(h2::Reason::CANCEL);
                } else {
                    // Taken by weir (its request on the way), then cancelled.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    stream.send_reset(h2::Reason::CANCEL);
                    drop(response);
                }
                for _ in 0..cheap {
                    let mut send = send.clone().ready().await?;
                    let req = http::Request::get("http://app/nope")
                        .body(())
                        .expect("request");
                    let (response, _) = send.send_request(req, true)?;
                    assert_eq!(response.await?.status(), 404);
                }
            }
            Ok::<(), h2::Error>(())
        })
    };
    // `n` gRPC calls to the slow backend, `batch` at a time, each giving
    // the deadline `timeout` (`grpc-timeout`) and cancelled `after` its
    // send. (Streams reset before hyper took them end the connection in the
    // h2 crate, uncounted: a batch of calls cancelled at once sends them
    // one by one.)
    let calls = |client: &mut H2Client, n: usize, batch_of, timeout: &'static str, after| {
        let send = client.send.clone();
        client.rt.block_on(async move {
            let mut batch = Vec::new();
            for i in 0..n {
                let mut send = send.clone().ready().await?;
                let req = http::Request::post("http://app/slow")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .header("grpc-timeout", timeout)
                    .body(())
                    .expect("request");
                let (response, mut stream) = send.send_request(req, true)?;
                batch.push(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    stream.send_reset(h2::Reason::CANCEL);
                    drop(response);
                }));
                if batch.len() == batch_of || i + 1 == n {
                    for call in batch.drain(..) {
                        let _ = call.await;
                    }
                }
            }
            Ok::<(), h2::Error>(())
        })
    };
    // A few cancelled among answered requests: the connection stays.
    let mut polite = H2Client::connect(front);
    let _ = cancel(&mut polite, 20, "/slow", false, 0);
    assert_eq!(polite.get("/x").map(|(status, _)| status).ok(), Some(200));
    assert!(!polite.ended_within(Duration::from_millis(200)));
    // A gRPC client whose 100 ms deadlines all run out while the backend
    // is slow: its calls end at their deadline, not as a flood's do.
    let mut deadlines = H2Client::connect(front);
    let sent = calls(&mut deadlines, 200, 50, "100m", Duration::from_millis(100));
    assert!(sent.is_ok(), "{sent:?}");
    assert_eq!(
        deadlines.get("/x").map(|(status, _)| status).ok(),
        Some(200)
    );
    assert!(!deadlines.ended_within(Duration::from_millis(200)));

    // The third: an answer larger than weir takes from a backend while its
    // client reads nothing, so that each is cancelled before it ended (one
    // weir had taken whole, its backend's work done, would not count).
    let floods = [("/slow", false, 0), ("/slow", false, 2), ("/huge", true, 0)];
    for (n, (path, answered, cheap)) in floods.into_iter().enumerate() {
        let mut flood = H2Client::connect(front);
        let sent = cancel(&mut flood, 300, path, answered, cheap);
        assert!(
            flood.ended_within(DEADLINE),
            "{path} {answered} {cheap}: the flooding connection stayed open ({sent:?})"
        );
        assert!(!polite.ended_within(Duration::from_millis(50)));
        assert_eq!(
            metric(
                admin,
                "weir_http_reset_floods_total{listener=\"web\",route=\"app\"}"
            ),
            (n + 1) as f64
        );
    }
    // A deadline the client does not wait for is no excuse.
    let mut liar = H2Client::connect(front);
    let sent = calls(&mut liar, 300, 1, "100m", Duration::from_millis(2));
    assert!(
        liar.ended_within(DEADLINE),
        "cancelled long before their deadline: the connection stayed open ({sent:?})"
    );
    assert!(!deadlines.ended_within(Duration::from_millis(50)));
    assert_eq!(
        metric(
            admin,
            "weir_http_reset_floods_total{listener=\"web\",route=\"app\"}"
        ),
        4.0
    );
}

/// A backend on loopback answering `/big` with 200,000 bytes, `/huge` with
/// 4 MiB and anything else with 2, on kept-alive connections.
fn sized_backend() -> SocketAddr {
    by_path_backend(|line| {
        let body = if line.contains("/huge") {
            4 << 20
        } else if line.contains("/big") {
            200_000
        } else {
            2
        };
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {body}\r\n\r\n").into_bytes();
        answer.resize(answer.len() + body, b'x');
        answer
    })
    .0
}

/// A backend on loopback that reads each request's head (no body) on
/// kept-alive connections and writes what `answer` makes of its request
/// line. Counts its connections.
fn by_path_backend(answer: fn(&str) -> Vec<u8>) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            counted.fetch_add(1, SeqCst);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut s = s;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).map_or(true, |n| n == 0) {
                        return;
                    }
                    let mut header = String::new();
                    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                        header.clear();
                    }
                    if s.write_all(&answer(&line)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// An HTTP/2 client that grants weir all the flow-control room it can,
/// asks for 256 answers of 1 MiB and reads nothing makes weir hold only a
/// bounded piece of each: what waits for the client is in the kernel's
/// socket buffers and, per stream, h2's send buffer, not the answers whole.
/// After `timeouts.send` the client is disconnected.
#[test]
fn an_http2_client_that_reads_nothing_holds_a_bounded_share_of_memory() {
    let (backend, _) = by_path_backend(|_| {
        let body = 1 << 20;
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {body}\r\n\r\n").into_bytes();
        answer.resize(answer.len() + body, b'x');
        answer
    });
    let (front, admin) = (free_port(), free_port());
    let (weir, _out) = start(
        "h2-unread-memory",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ send = \"3s\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    // Warm up: a first client reads its answers (the runtime's and the
    // allocator's first growth are not what is measured).
    let mut warm = H2Client::connect(front);
    for _ in 0..4 {
        assert_eq!(warm.get("/w").map(|(status, _)| status).ok(), Some(200));
    }
    let before = rss_kib(weir.0.id());
    let mut c = TcpStream::connect(front).expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let frame = |out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = u32::try_from(payload.len()).expect("length").to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    };
    let max_window: u32 = 0x7fff_ffff;
    // SETTINGS: INITIAL_WINDOW_SIZE at its largest; then the connection's
    // window to its largest.
    let mut settings = vec![0, 4];
    settings.extend_from_slice(&max_window.to_be_bytes());
    frame(&mut out, 4, 0, 0, &settings);
    frame(&mut out, 8, 0, 0, &(max_window - 65_535).to_be_bytes());
    // GET http://app/ on streams 1, 3, ... (HPACK: static :method GET,
    // :scheme http, :path /, and :authority "app" not indexed).
    let head = [0x82, 0x86, 0x84, 0x01, 0x03, b'a', b'p', b'p'];
    for i in 0..256u32 {
        frame(&mut out, 1, 0x5, 2 * i + 1, &head);
    }
    c.write_all(&out).expect("requests");
    // Then nothing is read. Wait for weir's memory to settle.
    let deadline = Instant::now() + DEADLINE;
    let mut last = rss_kib(weir.0.id());
    let mut steady = 0;
    while steady < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = rss_kib(weir.0.id());
        steady = if now.abs_diff(last) < 512 {
            steady + 1
        } else {
            0
        };
        last = now;
    }
    let grown = last.saturating_sub(before);
    eprintln!("RSS {before} -> {last} KiB (+{grown})");
    // About 60 MiB (230 KiB a stream); hyper's default send buffer let
    // whole answers wait: 268 MiB.
    assert!(grown < 128 * 1024, "weir grew by {grown} KiB");
    // The warm client's connection stays; this one is cut.
    let open = "weir_listener_connections_active{listener=\"web\"}";
    let end = Instant::now() + DEADLINE;
    while metric(admin, open) != 1.0 {
        assert!(Instant::now() < end, "the connection stayed open");
        std::thread::sleep(Duration::from_millis(50));
    }
    // What was sent before the cut can be read, then the connection ends.
    c.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = vec![0u8; 1 << 16];
    let began = Instant::now();
    while matches!(c.read(&mut buf), Ok(n) if n > 0) {
        assert!(began.elapsed() < DEADLINE, "the connection stayed open");
    }
}

/// An HTTP/2 client that gives one stream no flow-control room while it
/// goes on with others has that stream reset after `timeouts.send` (its
/// backend let go), not kept for as long as the connection moves; the
/// connection and its other streams go on.
#[test]
fn an_http2_stream_the_client_gives_no_room_is_reset_after_send() {
    let backend = sized_backend();
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "stream-room",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ send = \"500ms\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let rt = client_runtime();
    rt.block_on(async {
        let (send, _conn) = h2_to(front, 4096, 65_535).await;
        let ask = |path: &'static str| {
            let send = send.clone();
            async move {
                let mut send = send.ready().await.expect("ready");
                let req = http::Request::get(format!("http://app{path}"))
                    .body(())
                    .expect("request");
                let (response, _) = send.send_request(req, true).expect("send");
                response.await.expect("response").into_body()
            }
        };
        // Read nothing of it: its window stays shut after 4 KiB.
        let mut starved = ask("/big").await;
        let started = Instant::now();
        let ended = loop {
            // The connection moves meanwhile: small answers, read whole.
            let mut small = ask("/small").await;
            while let Some(chunk) = small.data().await {
                let chunk = chunk.expect("a small answer");
                let _ = small.flow_control().release_capacity(chunk.len());
            }
            if let Ok(Some(Err(e))) =
                tokio::time::timeout(Duration::from_millis(50), starved.data()).await
            {
                break e;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the starved stream was never reset"
            );
        };
        assert!(ended.is_reset(), "{ended}");
    });
}

/// A socket that stops being read once told: the client of a connection
/// that no longer takes what weir writes.
struct Unread {
    inner: tokio::net::TcpStream,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for Unread {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stop.load(SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Unread {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP/2 client that stops reading its socket once its requests are
/// answered (every answer queued, more than the sockets hold) is closed
/// `timeouts.send` after its connection went idle and began to close: the
/// GOAWAY that cannot be written does not hold it for as long as TCP lets
/// the client stay.
#[test]
fn a_client_that_stops_reading_is_closed_after_its_answers() {
    let backend = sized_backend();
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "unread-close",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ idle = \"300ms\", send = \"500ms\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let open = || metric(admin, "weir_listener_connections_active{listener=\"web\"}");
    let rt = client_runtime();
    rt.block_on(async {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tcp = tokio::net::TcpStream::connect(front)
            .await
            .expect("connect");
        let io = Unread {
            inner: tcp,
            stop: Arc::clone(&stop),
        };
        // Windows as large as HTTP/2 allows: only the sockets hold weir back.
        let (send, conn) = h2_over(io, i32::MAX as u32, i32::MAX as u32).await;
        let mut pending = Vec::new();
        for _ in 0..60 {
            let mut s = send.clone().ready().await.expect("ready");
            let req = http::Request::get("http://app/big")
                .body(())
                .expect("request");
            pending.push(s.send_request(req, true).expect("send").0);
        }
        // Out on the wire, then nothing more is read.
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, SeqCst);
        let end = Instant::now() + DEADLINE;
        while open() != 0.0 {
            assert!(Instant::now() < end, "the unread connection stays open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(pending);
        conn.abort();
    });
}

/// Clients that download from an HTTP/2 backend (nghttpd) and read nothing
/// hold at most their own streams' windows of weir's connection to it:
/// another client's download goes on, on a second connection once the
/// first carries 100 requests; both close after `upstream_keepalive` once
/// unused. (With one connection per backend and
/// hyper's windows, 5 MB for the connection and 2 MB per stream, three such
/// downloads stalled every request to the backend until `timeouts.send`.)
#[test]
fn clients_that_read_nothing_do_not_stall_an_http2_backend() {
    const BIG: usize = 8 << 20;
    let dir = test_dir("l7-h2-windows");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("big.bin"), vec![b'x'; BIG]).expect("file");
    let c = free_port();
    let _nghttpd = start_nghttpd(&www, c.port(), None);
    wait_connectable(c);
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "h2-windows",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_keepalive = \"1s\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nprotocol = \"h2c\"\n\
             [[pools.backends]]\nname = \"c\"\naddress = \"{c}\"\n"
        ),
    );
    // A count not yet in the scrape is zero.
    let event = |event: &str| {
        let series = format!(
            "weir_http_upstream_connections_total{{pool=\"p\",backend=\"c\",event=\"{event}\"}} "
        );
        crate::cli::http_get(admin, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let rt = client_runtime();
    rt.block_on(async {
        // 110 downloads under way with no room at all: weir takes each
        // stream's window of the backend's data and holds it.
        let (starving, _starving_conn) = h2_to(front, 0, 65_535).await;
        let mut starved = Vec::new();
        for _ in 0..110 {
            let response = request(starving.clone(), "/big.bin")
                .await
                .expect("a starved response's head");
            assert_eq!(response.status(), 200);
            starved.push(response);
        }
        let (reader, _reader_conn) = h2_to(front, i32::MAX as u32, i32::MAX as u32).await;
        let read = async {
            let mut body = request(reader, "/big.bin")
                .await
                .expect("the reader's response head")
                .into_body();
            let mut got = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("the reader's body");
                got += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            got
        };
        let got = tokio::time::timeout(DEADLINE, read)
            .await
            .expect("the reader's download stalled");
        assert_eq!(got, BIG);
        drop(starved);
    });
    // The clients' connections close with their runtime.
    drop(rt);
    assert_eq!(
        event("created"),
        2.0,
        "a second connection past 100 requests"
    );
    // Both close once unused for `upstream_keepalive`, the first too.
    let end = Instant::now() + DEADLINE;
    while event("closed") < 2.0 {
        assert!(Instant::now() < end, "an unused connection stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(
            admin,
            "weir_http_upstream_connections_open{pool=\"p\",backend=\"c\",state=\"active\"}"
        ),
        0.0
    );
}

/// A backend on loopback that answers on kept-alive connections: `/trailers`
/// with a chunked body and trailers (some of which may not be trailers),
/// `/switch` with a 101 nobody asked for, `/odd` with status 999, anything
/// else with 200. Counts its connections.
fn odd_answers_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    by_path_backend(|line| {
        let answer: &[u8] = if line.contains("/trailers") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
              5\r\nhello\r\n0\r\nx-sum: 42\r\ntransfer-encoding: chunked\r\n\
              content-length: 99\r\n\r\n"
        } else if line.contains("/switch") {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"
        } else if line.contains("/odd") {
            b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        answer.to_vec()
    })
}

/// A backend's trailers reach an HTTP/2 client without the fields that may
/// not be trailers (HTTP/2 would reset the stream for a
/// `transfer-encoding`), the response is complete and its backend
/// connection is kept (a chunked body's trailers end it); a 101 nobody
/// asked for and a status HTTP does not define are the backend's failure,
/// 502 (reason `protocol`).
#[test]
fn a_backends_trailers_are_cleaned_and_odd_answers_are_its_failure() {
    let (backend, connections) = odd_answers_backend();
    let front = free_port();
    let (_weir, out) = start(
        "odd-answers",
        &format!(
            "[log]\nformat = \"json\"\n[[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let rt = client_runtime();
    rt.block_on(async {
        let (send, _conn) = h2_to(front, 65_535, 65_535).await;
        for _ in 0..2 {
            let mut body = request(send.clone(), "/trailers")
                .await
                .expect("response head")
                .into_body();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("the body");
                let _ = body.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, b"hello");
            let trailers = tokio::time::timeout(DEADLINE, body.trailers())
                .await
                .expect("trailers in time")
                .expect("trailers, not a reset")
                .expect("trailers");
            assert_eq!(
                trailers.get("x-sum").map(|v| v.as_bytes()),
                Some(&b"42"[..])
            );
            assert!(trailers.get("transfer-encoding").is_none(), "{trailers:?}");
            assert!(trailers.get("content-length").is_none(), "{trailers:?}");
        }
    });
    drop(rt);
    for _ in 0..2 {
        let line = access_line(&out, "/trailers");
        assert_eq!(line["reason"], "completed", "{line}");
    }
    assert_eq!(connections.load(SeqCst), 1, "the connection was kept");
    for (path, version) in [
        ("/switch", "--http1.1"),
        ("/switch", "--http2-prior-knowledge"),
        ("/odd", "--http1.1"),
    ] {
        let (status, body, _) = curl(&[version], &format!("http://{front}{path}"));
        assert_eq!(status, 502, "{path} {version}: {body}");
        let line = access_line(&out, path);
        assert_eq!(line["reason"], "protocol", "{line}");
    }
}

/// A chunked request body that ends with trailers is over once they came:
/// its backend connection goes back to be reused, not closed as if the
/// client were still uploading.
#[test]
fn a_request_body_ended_by_trailers_leaves_its_connection_reusable() {
    let backend = raw_backend(None, Duration::ZERO);
    let front = free_port();
    let (_weir, _out) = start(
        "request-trailers",
        &format!(
            "[log]\naccess_log = false\n[[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    let answers = raw_exchange(
        front,
        b"POST /a HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n\
          GET /b HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    );
    assert!(answers.contains("conn=1 req=1 body=5"), "{answers}");
    assert!(answers.contains("conn=1 req=2 body=0"), "{answers}");
}

/// `max_concurrent_streams` is what weir tells an HTTP/2 client it may have
/// under way at once (`SETTINGS_MAX_CONCURRENT_STREAMS`), 256 unless set.
#[test]
fn max_concurrent_streams_is_what_http2_clients_are_allowed() {
    let backend = raw_backend(None, Duration::ZERO);
    let (limited, default) = (free_port(), free_port());
    let route = |name: &str, bind: SocketAddr, extra: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"{bind}\"\n\
             [[listeners.routes]]\nname = \"{name}\"\nmode = \"l7\"\n{extra}\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n"
        )
    };
    let (_weir, _out) = start(
        "h2-max-streams",
        &format!(
            "[log]\naccess_log = false\n{}{}\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            route("limited", limited, "max_concurrent_streams = 7\n"),
            route("default", default, ""),
            backend.addr
        ),
    );
    let allowed = |front: SocketAddr| {
        client_runtime().block_on(async {
            let tcp = tokio::net::TcpStream::connect(front)
                .await
                .expect("connect");
            let (send, mut conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            // An answer comes after weir's settings.
            tokio::select! {
                answer = request(send, "/") => {
                    assert_eq!(answer.expect("an answer").status(), 200);
                }
                ended = &mut conn => panic!("connection ended: {ended:?}"),
            }
            conn.max_concurrent_send_streams()
        })
    };
    assert_eq!(allowed(limited), 7);
    assert_eq!(allowed(default), 256);
}

/// A client that ignores the limit: its stream past `max_concurrent_streams`
/// is refused (`RST_STREAM` `REFUSED_STREAM`, safe for it to retry) while
/// the ones within it are answered.
#[test]
fn a_stream_past_max_concurrent_streams_is_refused() {
    let backend = raw_backend(None, Duration::from_millis(500));
    let front = free_port();
    let (_weir, _out) = start(
        "h2-refused-stream",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\nmax_concurrent_streams = 2\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("preface");
    s.write_all(&h2_frame(4, 0, 0, &[])).expect("settings");
    let read_frame = |s: &mut TcpStream| {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).expect("a frame");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).expect("its payload");
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        (head[3], head[4], stream, payload)
    };
    // weir's settings, with the limit; acknowledged, so that it applies.
    let (kind, _, _, settings) = read_frame(&mut s);
    assert_eq!(kind, 4);
    let limit = settings
        .chunks(6)
        .find(|c| c[..2] == [0, 3])
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    assert_eq!(limit, Some(2));
    s.write_all(&h2_frame(4, 1, 0, &[])).expect("settings ack");
    // Three GETs of / at once (HPACK: GET, http, /, authority "app").
    let get = [0x82, 0x86, 0x84, 0x41, 3, b'a', b'p', b'p'];
    for stream in [1, 3, 5] {
        s.write_all(&h2_frame(1, 0x5, stream, &get))
            .expect("headers");
    }
    let (mut refused, mut answered) = (Vec::new(), Vec::new());
    while answered.len() < 2 {
        match read_frame(&mut s) {
            // RST_STREAM with REFUSED_STREAM (7).
            (3, _, stream, code) if code == [0, 0, 0, 7] => refused.push(stream),
            (3, _, stream, code) => panic!("stream {stream} reset with {code:?}"),
            // HEADERS: an answer.
            (1, _, stream, _) => answered.push(stream),
            _ => {}
        }
    }
    answered.sort_unstable();
    assert_eq!((refused, answered), (vec![5], vec![1, 3]));
}

/// An HTTP/2 client that gives no window (`SETTINGS_INITIAL_WINDOW_SIZE` 0)
/// to one of weir's own answers (a 404) and then waits is disconnected after
/// `timeouts.send`, as one that starves a backend's answer is: the answer
/// held its request in flight, and the connection open, with no timer.
#[test]
fn an_own_answer_the_client_gives_no_window_does_not_hold_the_connection() {
    let front = free_port();
    let (_weir, _out) = start(
        "h2-own-answer-zero-window",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ idle = \"1s\", send = \"1s\" }}\n\
             [[listeners.routes.http]]\nname = \"only\"\npool = \"p\"\n\
             match = {{ path_prefix = \"/only\" }}\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"127.0.0.1:9\"\n"
        ),
    );
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("preface");
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 0: no stream may be sent data.
    s.write_all(&h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]))
        .expect("settings");
    // GET /nothing (HPACK: GET, http, path literal, authority "app").
    let mut get = vec![0x82, 0x86, 0x44, 8];
    get.extend(b"/nothing");
    get.extend([0x41, 3, b'a', b'p', b'p']);
    s.write_all(&h2_frame(1, 0x5, 1, &get)).expect("headers");
    let began = Instant::now();
    let mut buf = [0u8; 4096];
    let mut answered = false;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            // weir's settings and the answer's head (no window is needed
            // for them).
            Ok(_) => answered = true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection stayed open: {e}"),
        }
    }
    assert!(answered);
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "closed after {:?}",
        began.elapsed()
    );
}

/// An upload the backend stops taking holds its stream's window of the
/// client's HTTP/2 connection, not the whole connection's: another request
/// on the same connection still sends its body and is answered (it waited
/// for `request_body` and got 408 when one stream could take every byte of
/// the connection's window).
#[test]
fn an_upload_the_backend_stops_taking_does_not_stall_the_connections_others() {
    // A backend that reads the request head and then nothing.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let stuck = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head);
            held.push(s);
        }
    });
    let echo = raw_backend(None, Duration::ZERO);
    let front = free_port();
    let (_weir, _out) = start(
        "h2-upload-window",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ request_body = \"10s\" }}\n\
             [[listeners.routes.http]]\nname = \"hold\"\npool = \"stuck\"\n\
             match = {{ path_prefix = \"/hold\" }}\n\
             [[listeners.routes.http]]\nname = \"echo\"\npool = \"echo\"\n\
             [[pools]]\nname = \"stuck\"\n[[pools.backends]]\naddress = \"{stuck}\"\n\
             [[pools]]\nname = \"echo\"\n[[pools.backends]]\naddress = \"{}\"\n",
            echo.addr
        ),
    );
    let rt = client_runtime();
    rt.block_on(async {
        let (send, _conn) = h2_to(front, 16 << 20, 16 << 20).await;
        let mut held = send.clone().ready().await.expect("ready");
        let req = http::Request::post("http://app/hold")
            .body(())
            .expect("request");
        let (_held_answer, mut upload) = held.send_request(req, false).expect("send");
        // Far more than the backend's socket buffers take: what is left
        // waits in weir's stream, then at the client.
        upload.reserve_capacity(64 << 20);
        upload
            .send_data(bytes::Bytes::from(vec![b'x'; 64 << 20]), false)
            .expect("data");
        // Time for the stuck upload to fill whatever room weir gives it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut other = send.clone().ready().await.expect("ready");
        let req = http::Request::post("http://app/echo")
            .body(())
            .expect("request");
        let (answer, mut body) = other.send_request(req, false).expect("send");
        body.send_data(bytes::Bytes::from(vec![b'y'; 1024]), true)
            .expect("data");
        // Well before the stuck upload's `request_body` (10 s) would let
        // go of what it holds.
        let answer = tokio::time::timeout(Duration::from_secs(3), answer)
            .await
            .expect("answered while the other upload is stuck")
            .expect("an answer");
        assert_eq!(answer.status(), 200);
    });
}

/// A backend's HTTP/1.1 answer with more than 100 header fields is one weir
/// cannot read: the client gets 502, an answer of 100 comes through.
#[test]
fn a_backend_answer_past_100_fields_is_a_502() {
    let (backend, _) = by_path_backend(|line| {
        let n = if line.contains("/many") { 101 } else { 98 };
        let mut r = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
        for i in 0..n {
            r.push_str(&format!("X-{i}: 1\r\n"));
        }
        r.push_str("\r\nok");
        r.into_bytes()
    });
    let front = free_port();
    let (_weir, _out) = start(
        "many-fields",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let (status, body, _) = curl(&[], &format!("http://{front}/few"));
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _, _) = curl(&[], &format!("http://{front}/many"));
    assert_eq!(status, 502);
}

/// `request_headers` and `response_headers`, the route's then the matched
/// rule's, change what nginx gets and what the client gets back, over
/// HTTP/1.1 and h2c alike: removed, set over the client's or the
/// backend's, added after theirs.
#[test]
fn operator_header_rules_change_requests_and_responses() {
    let (_nginx, port) = nginx_doing(
        "header-rules",
        "add_header X-Powered-By php; add_header Vary accept-encoding; \
         return 200 \"env=$http_x_env debug=$http_x_debug team=$http_x_team\\n\";",
    );
    let front = free_port();
    let (_weir, _out) = start(
        "header-rules",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             request_headers = {{ set = {{ \"X-Env\" = \"prod\" }}, remove = [\"x-debug\"] }}\n\
             response_headers = {{ remove = [\"server\", \"x-powered-by\"], \
                                   set = {{ \"strict-transport-security\" = \"max-age=63072000\" }} }}\n\
             [[listeners.routes.http]]\nname = \"api\"\npool = \"p\"\n\
             match = {{ path_prefix = \"/api/\" }}\n\
             request_headers = {{ add = {{ \"x-team\" = \"api\" }} }}\n\
             response_headers = {{ add = {{ \"vary\" = \"origin\" }} }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{port}\"\n"
        ),
    );
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let get = |path: &str| {
            let (status, text, _) = curl(
                &["-i", version, "-H", "X-Env: dev", "-H", "X-Debug: 1"],
                &format!("http://{front}{path}"),
            );
            assert_eq!(status, 200, "{version} {path}: {text}");
            let text = text.to_ascii_lowercase();
            let (head, body) = text
                .split_once("\r\n\r\n")
                .unwrap_or_else(|| panic!("{version} {path}: {text}"));
            let fields = |name: &str| {
                head.lines()
                    .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .map(|v| v.trim().to_owned())
                    .collect::<Vec<_>>()
            };
            (
                body.trim().to_owned(),
                fields("server"),
                fields("x-powered-by"),
                fields("strict-transport-security"),
                fields("vary"),
            )
        };
        let (body, server, powered, hsts, vary) = get("/api/orders");
        assert_eq!(body, "env=prod debug= team=api", "{version}");
        assert!(server.is_empty() && powered.is_empty(), "{version}");
        assert_eq!(hsts, ["max-age=63072000"], "{version}");
        assert_eq!(vary, ["accept-encoding", "origin"], "{version}");
        // The other rule: the route's changes only.
        let (body, server, _, hsts, vary) = get("/");
        assert_eq!(body, "env=prod debug= team=", "{version}");
        assert!(server.is_empty(), "{version}");
        assert_eq!(hsts, ["max-age=63072000"], "{version}");
        assert_eq!(vary, ["accept-encoding"], "{version}");
    }
}

/// Header values with variables: what nginx gets carries the client's
/// address, the address it came to, the host, scheme, method, protocol and
/// the names of the listener, route and rule; the client's answer names
/// the backend and echoes the request id the access log has, over HTTP/1.1
/// and h2c. Behind a PROXY header, both addresses are the header's.
#[test]
fn header_values_carry_the_requests_facts() {
    let (_nginx, port) = nginx_doing(
        "header-vars",
        "return 200 \"real=$http_x_real_ip to=$http_x_to via=$http_x_via\\n\";",
    );
    let (front, behind) = (free_port(), free_port());
    let route = "[[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
         request_headers = { set = { \"X-Real-IP\" = \"${client_ip}\", \
           \"X-To\" = \"${server_ip} ${server_port}\" } }\n";
    let (_weir, out) = start(
        "header-vars",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"lb\"\nbind = \"{behind}\"\n\
             proxy_protocol = {{ accept = true, trusted = [\"127.0.0.1\"] }}\n\
             {route}\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             {route}\
             response_headers = {{ set = {{ \"X-Request-Id\" = \"${{request_id}}\", \
                                   \"X-Client\" = \"${{client_ip}}:${{client_port}}\" }} }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             request_headers = {{ add = {{ \"X-Via\" = \
               \"${{scheme}}://${{host}} ${{method}} ${{protocol}} ${{listener}}/${{route}}/${{rule}} $$5\" }} }}\n\
             response_headers = {{ add = {{ \"X-Served-By\" = \"${{backend}}\" }} }}\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"nginx-1\"\naddress = \"{port}\"\n"
        ),
    );
    for (version, protocol) in [
        ("--http1.1", "HTTP/1.1"),
        ("--http2-prior-knowledge", "HTTP/2"),
    ] {
        let path = format!("/vars{}", &version[2..7]);
        let (status, text, _) = curl(
            &[
                "-i",
                version,
                "-H",
                "X-Real-IP: 203.0.113.9",
                "-H",
                "X-Request-Id: mine",
            ],
            &format!("http://{front}{path}"),
        );
        assert_eq!(status, 200, "{version}: {text}");
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{version}: {text}"));
        let field = |name: &str| {
            head.lines()
                .filter_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            body.trim(),
            format!(
                "real=127.0.0.1 to=127.0.0.1 {} via=http://{front} GET {protocol} web/app/all $5",
                front.port()
            ),
            "{version}"
        );
        assert_eq!(field("x-served-by"), ["nginx-1"], "{version}");
        let line = access_line(&out, &path);
        let id = line["request_id"].as_str().expect("an id").to_owned();
        assert_ne!(id, "mine", "an untrusted client's id is replaced");
        assert_eq!(field("x-request-id"), [id], "{version}");
        let client = field("x-client");
        assert!(
            client.len() == 1 && client[0].starts_with("127.0.0.1:"),
            "{version}: {client:?}"
        );
        assert!(client[0][10..].parse::<u16>().is_ok(), "{client:?}");
    }
    let answer = raw_exchange(
        behind,
        b"PROXY TCP4 192.0.2.7 198.51.100.1 4000 8443\r\n\
          GET /behind HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    );
    assert!(
        answer.contains("real=192.0.2.7 to=198.51.100.1 8443 via="),
        "{answer}"
    );
    // IPv4 addresses as a dual-stack proxy sends them: written as IPv4,
    // as `X-Forwarded-For` has them.
    let answer = raw_exchange(
        behind,
        b"PROXY TCP6 ::ffff:192.0.2.8 ::ffff:198.51.100.1 4000 8443\r\n\
          GET /behind6 HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    );
    assert!(
        answer.contains("real=192.0.2.8 to=198.51.100.1 8443 via="),
        "{answer}"
    );
    assert_eq!(access_line(&out, "/behind6")["client"], "192.0.2.8:4000");
    // A User-Agent with a byte that is not UTF-8 is logged with that byte
    // escaped (it was logged `-`, as no header at all).
    let answer = raw_exchange(
        front,
        b"GET /ua HTTP/1.1\r\nHost: app.example\r\nUser-Agent: bot\x80 \xc3\xa9\r\n\
          Connection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let line = access_line(&out, "/ua");
    assert_eq!(line["user_agent"], "bot\\x80 \u{e9}", "{line}");
    assert!(line["upstream_ms"].is_f64(), "{line}");
    // An HTTP/1.0 request is logged as one (it was logged as its
    // connection's HTTP/1.1).
    let answer = raw_exchange(
        front,
        b"GET /old HTTP/1.0\r\nHost: app.example:8080\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    let line = access_line(&out, "/old");
    assert_eq!(line["version"], "HTTP/1.0", "{line}");
}

/// Rules matching exact paths, a path pattern, query parameters and the
/// client's network, through weir: the access log names the rule each
/// request took.
#[test]
fn rules_match_exact_paths_patterns_and_sources() {
    let good = raw_backend(None, Duration::ZERO);
    let front = free_port();
    let (_weir, out) = start(
        "rule-paths",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"inside\"\npool = \"p\"\n\
             match = {{ path = [\"/login\"], source = [\"10.0.0.0/8\"] }}\n\
             [[listeners.routes.http]]\nname = \"local\"\npool = \"p\"\n\
             match = {{ path = [\"/login\", \"/logout\"], source = [\"127.0.0.0/8\"] }}\n\
             [[listeners.routes.http]]\nname = \"canary\"\npool = \"p\"\n\
             match = {{ query = {{ \"env\" = \"canary one\" }} }}\n\
             [[listeners.routes.http]]\nname = \"php\"\npool = \"p\"\n\
             match = {{ path_regex = \"^/[a-z]+\\\\.php$\" }}\n\
             [[listeners.routes.http]]\nname = \"rest\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            good.addr
        ),
    );
    for (path, rule) in [
        ("/login", "local"),
        ("/logout?next=/", "local"),
        ("/login/", "rest"),
        ("/index.php", "php"),
        ("/a/../index.php", "php"),
        ("/a/index.php", "rest"),
        ("/INDEX.php", "rest"),
        ("/x?page=2&env=canary+one", "canary"),
        ("/x?env=canary%20one", "canary"),
        ("/x?env=canary", "rest"),
    ] {
        let (status, body, _) = curl(&["--path-as-is"], &format!("http://{front}{path}"));
        assert_eq!(status, 200, "{path}: {body}");
        let line = access_line(&out, path);
        assert_eq!(line["rule"], rule, "{path}: {line}");
    }
}

/// A pool's sticky cookie: a new client gets the cookie of the backend
/// that answered and stays there, over HTTP/1.1 and h2c (where the cookie
/// may come in a field of its own); a cookie naming no backend, or one that
/// was drained, is answered by another backend with a new cookie. Counted
/// per backend as kept and moved.
#[test]
fn sticky_cookies_keep_a_client_on_its_backend() {
    let backends = [
        raw_backend(None, Duration::ZERO),
        raw_backend(None, Duration::ZERO),
        raw_backend(None, Duration::ZERO),
    ];
    let (front, admin, grpc) = (free_port(), free_port(), free_port());
    let (_weir, _out) = start(
        "sticky",
        &format!(
            "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nsticky = {{ cookie = \"srv\", max_age = \"1h\" }}\n\
             [[pools.backends]]\nname = \"b0\"\naddress = \"{}\"\n\
             [[pools.backends]]\nname = \"b1\"\naddress = \"{}\"\n\
             [[pools.backends]]\nname = \"b2\"\naddress = \"{}\"\n",
            backends[0].addr, backends[1].addr, backends[2].addr
        ),
    );
    let counts = || backends.each_ref().map(|b| b.requests.load(SeqCst));
    // (status, the Set-Cookie values)
    let ask = |args: &[&str]| {
        let mut all = vec!["-i"];
        all.extend_from_slice(args);
        let (status, text, _) = curl(&all, &format!("http://{front}/"));
        let head = text.split("\r\n\r\n").next().unwrap_or("").to_owned();
        let cookies: Vec<String> = head
            .lines()
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("set-cookie")
                    .then(|| v.trim().to_owned())
            })
            .collect();
        (status, cookies)
    };
    let before = counts();
    let (status, cookies) = ask(&[]);
    assert_eq!(status, 200);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let (pair, attributes) = cookies[0].split_once(';').expect("attributes");
    assert_eq!(attributes, " Path=/; Max-Age=3600; HttpOnly; SameSite=Lax");
    let token = pair.strip_prefix("srv=").expect("the cookie").to_owned();
    assert!(
        token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    let after = counts();
    let home = (0..3)
        .find(|&k| after[k] > before[k])
        .expect("a backend answered");
    let cookie = format!("Cookie: theme=dark; srv={token}");
    for n in 0..9 {
        let version = if n % 2 == 0 {
            "--http1.1"
        } else {
            "--http2-prior-knowledge"
        };
        let (status, cookies) = ask(&[version, "-H", &cookie]);
        assert_eq!(status, 200, "{version}");
        assert!(cookies.is_empty(), "{version}: {cookies:?}");
    }
    // HTTP/2, with the cookie in a field of its own.
    let (status, cookies) = ask(&[
        "--http2-prior-knowledge",
        "-H",
        "cookie: theme=dark",
        "-H",
        &format!("cookie: srv={token}"),
    ]);
    assert_eq!((status, cookies.len()), (200, 0));
    let now = counts();
    for k in 0..3 {
        let expected = if k == home { after[k] + 10 } else { after[k] };
        assert_eq!(now[k], expected, "backend {k}: {now:?} after {after:?}");
    }
    // A token no backend has: picked as for a new client.
    let (status, cookies) = ask(&["-H", "Cookie: srv=0123456789abcdef"]);
    assert_eq!((status, cookies.len()), (200, 1), "{cookies:?}");
    let name = format!("b{home}");
    let on = |verb: &str, backend: &str| {
        let (code, _, err) = crate::control::text(&crate::control::ctl(
            grpc,
            None,
            &["backend", verb, "p", backend],
        ));
        assert_eq!(code, 0, "{err}");
    };
    let operator = |verb: &str| on(verb, &name);
    // Its backend drained: new clients go elsewhere, the cookie's client
    // stays (HAProxy's persistence through a drain).
    operator("drain");
    let before = counts();
    for _ in 0..6 {
        assert_eq!(ask(&[]).0, 200);
    }
    assert_eq!(
        counts()[home],
        before[home],
        "the drained backend got a new client"
    );
    let (status, cookies) = ask(&["-H", &cookie]);
    assert_eq!((status, cookies.len()), (200, 0), "{cookies:?}");
    assert_eq!(
        counts()[home],
        before[home] + 1,
        "the cookie's client moved"
    );
    // Every backend drained: no new client is taken, the cookie's still is.
    let others: Vec<String> = (0..3)
        .filter(|&k| k != home)
        .map(|k| format!("b{k}"))
        .collect();
    for b in &others {
        on("drain", b);
    }
    assert_eq!(ask(&[]).0, 503);
    assert_eq!(ask(&["-H", &cookie]), (200, vec![]));
    for b in &others {
        on("enable", b);
    }
    // A weight of 0 is not a drain: the cookie's client moves.
    operator("enable");
    let weight = |args: &[&str]| {
        let mut all = vec!["backend", "weight", "p", name.as_str()];
        all.extend_from_slice(args);
        let (code, _, err) = crate::control::text(&crate::control::ctl(grpc, None, &all));
        assert_eq!(code, 0, "{err}");
    };
    weight(&["0"]);
    let before = counts();
    let (status, cookies) = ask(&["-H", &cookie]);
    assert_eq!((status, cookies.len()), (200, 1), "{cookies:?}");
    assert_eq!(counts()[home], before[home], "a backend of weight 0 got it");
    weight(&["--clear"]);
    // Disabled: another answers, and the cookie follows it.
    operator("disable");
    let before = counts();
    let (status, cookies) = ask(&["-H", &cookie]);
    assert_eq!((status, cookies.len()), (200, 1), "{cookies:?}");
    assert!(!cookies[0].contains(&token), "{cookies:?}");
    assert_eq!(counts()[home], before[home], "the disabled backend got it");
    let series = |result: &str| {
        metric(
            admin,
            &format!(
                "weir_backend_sticky_total{{pool=\"p\",backend=\"{name}\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!((series("kept"), series("moved")), (12.0, 2.0));
}

/// `response_headers` with `always = true` reach weir's own answers too
/// (a 404 no rule took, a redirect, a 502 or 503, a policy's refusal), the
/// route's before the matched rule's, over HTTP/1.1 and h2c; without it
/// only the backends' responses get them.
#[test]
fn always_response_headers_reach_weirs_own_answers() {
    let good = raw_backend(None, Duration::ZERO);
    let (front, plain_front, dead) = (free_port(), free_port(), free_port());
    let rules = "[[listeners.routes.http]]\nname = \"gone\"\nmatch = { path_prefix = \"/gone\" }\n\
         redirect = { host = \"new.example\" }\n\
         response_headers = { set = { \"Cache-Control\" = \"no-store\", \
           \"X-Rule\" = \"${rule}\" }, always = true }\n\
         [[listeners.routes.http]]\nname = \"down\"\npool = \"dead\"\n\
         match = { path_prefix = \"/down\" }\n\
         response_headers = { add = { \"X-Rule\" = \"${rule}\" }, always = true }\n\
         [[listeners.routes.http]]\nname = \"closed\"\npool = \"p\"\n\
         match = { path_prefix = \"/closed\" }\n\
         policies = [{ name = \"shut\", deny = { path_prefix = [\"/closed\"] }, status = 403 }]\n\
         [[listeners.routes.http]]\nname = \"app\"\npool = \"p\"\n\
         match = { path_prefix = \"/app\" }\n\
         response_headers = { add = { \"X-Rule\" = \"${rule}\" } }\n";
    let (_weir, _out) = start(
        "always-headers",
        &format!(
            "[[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"site\"\nmode = \"l7\"\n\
             response_headers = {{ set = {{ \"Strict-Transport-Security\" = \"max-age=600\" }}, \
               always = true }}\n{rules}\
             [[listeners]]\nname = \"plain\"\nbind = \"{plain_front}\"\n\
             [[listeners.routes]]\nname = \"site\"\nmode = \"l7\"\n\
             response_headers = {{ set = {{ \"Strict-Transport-Security\" = \"max-age=600\" }} }}\n\
             {rules}\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"good\"\naddress = \"{0}\"\n\
             [[pools]]\nname = \"dead\"\n[[pools.backends]]\nname = \"gone\"\naddress = \"{dead}\"\n",
            good.addr
        ),
    );
    // (status, every field of the head, lower-cased names)
    let ask = |version: &str, at: SocketAddr, path: &str| {
        let (status, text, _) = curl(&["-i", version], &format!("http://{at}{path}"));
        let head = text.split("\r\n\r\n").next().unwrap_or("").to_owned();
        let fields: Vec<(String, String)> = head
            .lines()
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            })
            .collect();
        (status, fields)
    };
    let get = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let hsts = ["max-age=600".to_owned()];
        // No rule takes it: the route's `always` rules only.
        let (status, f) = ask(version, front, "/nothing");
        assert_eq!(status, 404, "{version}: {f:?}");
        assert_eq!(get(&f, "strict-transport-security"), hsts, "{version}");
        assert!(get(&f, "x-rule").is_empty(), "{version}: {f:?}");
        // A redirect: the route's, then the rule's.
        let (status, f) = ask(version, front, "/gone/a?b=1");
        assert_eq!(status, 301, "{version}: {f:?}");
        assert_eq!(get(&f, "location"), ["http://new.example/gone/a?b=1"]);
        assert_eq!(get(&f, "strict-transport-security"), hsts, "{version}");
        assert_eq!(get(&f, "cache-control"), ["no-store"], "{version}");
        assert_eq!(get(&f, "x-rule"), ["gone"], "{version}");
        // No backend answers.
        let (status, f) = ask(version, front, "/down");
        assert!(status == 502 || status == 503, "{version}: {status} {f:?}");
        assert_eq!(get(&f, "strict-transport-security"), hsts, "{version}");
        assert_eq!(get(&f, "x-rule"), ["down"], "{version}");
        // A policy's refusal.
        let (status, f) = ask(version, front, "/closed");
        assert_eq!(status, 403, "{version}: {f:?}");
        assert_eq!(get(&f, "strict-transport-security"), hsts, "{version}");
        // A backend's answer gets them all, `always` or not.
        let (status, f) = ask(version, front, "/app");
        assert_eq!(status, 200, "{version}: {f:?}");
        assert_eq!(get(&f, "strict-transport-security"), hsts, "{version}");
        assert_eq!(get(&f, "x-rule"), ["app"], "{version}");
        // Without `always`: the backend's answer only.
        let (status, f) = ask(version, plain_front, "/app");
        assert_eq!(status, 200, "{version}: {f:?}");
        assert_eq!(get(&f, "strict-transport-security"), hsts, "{version}");
        for path in ["/nothing", "/closed"] {
            let (status, f) = ask(version, plain_front, path);
            assert!(status == 404 || status == 403, "{version} {path}: {f:?}");
            assert!(
                get(&f, "strict-transport-security").is_empty(),
                "{version} {path}: {f:?}"
            );
        }
    }
}

/// `retry_on_status`: a GET answered 503 by one backend is tried on the
/// next, and the client gets the other's answer; a POST is never sent
/// twice and gets the 503; when every backend answers 503 the client gets
/// the last one (the backend's own body, not weir's); a pool without the
/// key passes the 503 on. Counted per backend.
#[test]
fn answers_a_pool_retries_on_go_to_another_backend() {
    let (_nginx, busy) = nginx_doing("retry-on-status", "return 503 \"busy\\n\";");
    let good = raw_backend(None, Duration::ZERO);
    let (front, admin, closed) = (free_port(), free_port(), free_port());
    let (_weir, out) = start(
        "retry-on-status",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"plain\"\npool = \"plain\"\n\
             match = {{ path_prefix = \"/plain\" }}\n\
             [[listeners.routes.http]]\nname = \"dead\"\npool = \"dead\"\n\
             match = {{ path_prefix = \"/dead\" }}\n\
             [[listeners.routes.http]]\nname = \"gone\"\npool = \"gone\"\n\
             match = {{ path_prefix = \"/gone\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nretry_on_status = [502, 503]\n\
             [[pools.backends]]\nname = \"busy\"\naddress = \"{busy}\"\n\
             [[pools.backends]]\nname = \"good\"\naddress = \"{0}\"\n\
             [[pools]]\nname = \"plain\"\n\
             [[pools.backends]]\nname = \"busy\"\naddress = \"{busy}\"\n\
             [[pools.backends]]\nname = \"good\"\naddress = \"{0}\"\n\
             [[pools]]\nname = \"gone\"\nretry_on_status = [503]\n\
             [[pools.backends]]\nname = \"busy\"\naddress = \"{busy}\"\n\
             [[pools.backends]]\nname = \"closed\"\naddress = \"{closed}\"\n\
             [[pools]]\nname = \"dead\"\nretry_on_status = [503]\n\
             [[pools.backends]]\nname = \"busy-1\"\naddress = \"{busy}\"\n\
             [[pools.backends]]\nname = \"busy-2\"\naddress = \"{busy}\"\n",
            good.addr
        ),
    );
    let send = |args: &[&str], path: &str| {
        let (status, body, _) = curl(args, &format!("http://{front}{path}"));
        (status, body)
    };
    // `(family, label)` of pool p's backend busy.
    let busy = |(family, label): (&str, &str)| {
        metric(
            admin,
            &format!(
                "weir_http_upstream_connections_{family}{{pool=\"p\",backend=\"busy\",{label}}}"
            ),
        )
    };
    for n in 0..6 {
        let path = format!("/get-{n}");
        let (status, body) = send(&[], &path);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(access_line(&out, &path)["backend"], "good");
        // The answer put aside is read off and its connection kept.
        wait("the answer put aside let go", &|| {
            busy(("open", "state=\"active\"")) == 0.0
        });
    }
    let retried = |backend: &str| {
        metric(
            admin,
            &format!("weir_backend_http_retried_total{{pool=\"p\",backend=\"{backend}\"}}"),
        )
    };
    assert!(retried("busy") >= 2.0, "{}", retried("busy"));
    assert_eq!(retried("good"), 0.0);
    assert_eq!(
        (
            busy(("total", "event=\"created\"")),
            busy(("total", "event=\"reused\"")),
            busy(("open", "state=\"idle\""))
        ),
        (1.0, retried("busy") - 1.0, 1.0)
    );
    // Never twice for a POST: half of them meet the busy backend.
    let posts: Vec<(u16, String)> = (0..4)
        .map(|n| send(&["-X", "POST", "-d", "x=1"], &format!("/post-{n}")))
        .collect();
    assert!(posts.iter().any(|(s, _)| *s == 503), "{posts:?}");
    for (status, body) in &posts {
        assert!(*status == 200 || body == "busy", "{posts:?}");
    }
    // Every backend busy: the last one's answer.
    assert_eq!(send(&[], "/dead/x"), (503, "busy".to_owned()));
    let line = access_line(&out, "/dead/x");
    assert_eq!(
        (&line["status"], &line["reason"]),
        (&serde_json::json!(503), &serde_json::json!("completed")),
        "{line}"
    );
    // The other backend refuses the connection: the answer put aside is
    // the client's, not weir's 502 or 503 (either backend may come first).
    for n in 0..4 {
        let path = format!("/gone/{n}");
        assert_eq!(send(&[], &path), (503, "busy".to_owned()), "{path}");
    }
    // Without the key the 503 passes.
    let plain: Vec<u16> = (0..4)
        .map(|n| send(&[], &format!("/plain/{n}")).0)
        .collect();
    assert!(plain.contains(&503) && plain.contains(&200), "{plain:?}");
}

/// A backend that takes one request and answers it with `answer`, then
/// reports whether weir closed the connection (rather than sending another
/// request or holding it past the deadline).
fn answering_once(answer: Vec<u8>) -> (SocketAddr, std::thread::JoinHandle<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let backend = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        s.set_write_timeout(Some(DEADLINE)).expect("timeout");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).expect("request");
            assert!(n > 0, "closed before the request");
            head.extend_from_slice(&buf[..n]);
        }
        // weir may close while the answer is still being written (one
        // longer than it reads off): what counts is that it closes.
        let _ = s.write_all(&answer);
        // Closed with the answer's bytes unread, the socket is reset.
        match s.read(&mut buf) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    });
    (addr, backend)
}

/// An answer put aside is read off only so far: one whose body never comes
/// whole is given up after a second, one longer than 64 KiB as soon as it
/// passes that (this one is a megabyte), and either connection is
/// closed, never kept for reuse
/// (kept, it would stay open well past the test's deadline).
#[test]
fn an_answer_put_aside_too_slow_or_too_long_closes_its_connection() {
    let (stuck, stuck_closed) = answering_once(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\npartial".to_vec(),
    );
    let mut long = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    long.resize(long.len() + 1_000_000, b'x');
    let (long, long_closed) = answering_once(long);
    let good = raw_backend(None, Duration::ZERO);
    let (front, admin) = (free_port(), free_port());
    let pool = |name: &str, first: SocketAddr| {
        format!(
            "[[pools]]\nname = \"{name}\"\nbalance = \"first\"\nretry_on_status = [503]\n\
             [[pools.backends]]\nname = \"first\"\naddress = \"{first}\"\n\
             [[pools.backends]]\nname = \"good\"\naddress = \"{}\"\n",
            good.addr
        )
    };
    let (_weir, _out) = start(
        "retry-on-status-stuck",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_keepalive = \"60s\" }}\n\
             [[listeners.routes.http]]\nname = \"long\"\npool = \"long\"\n\
             match = {{ path_prefix = \"/long\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"stuck\"\n{}{}",
            pool("stuck", stuck),
            pool("long", long)
        ),
    );
    for (path, closed) in [("/", stuck_closed), ("/long", long_closed)] {
        let (status, body, _) = curl(&[], &format!("http://{front}{path}"));
        assert_eq!(status, 200, "{path}: {body}");
        assert!(closed.join().expect("backend"), "{path}: not closed");
    }
    for pool in ["stuck", "long"] {
        let series = |(family, label): (&str, &str)| {
            metric(
                admin,
                &format!(
                    "weir_http_upstream_connections_{family}{{pool=\"{pool}\",backend=\"first\",{label}}}"
                ),
            )
        };
        wait("the connection no longer active", &|| {
            series(("open", "state=\"active\"")) == 0.0
        });
        assert_eq!(series(("open", "state=\"idle\"")), 0.0, "{pool}");
    }
}

/// What an h2c backend of [`h2c_answering`] saw: connections taken,
/// streams the peer reset, and requests that came while an earlier
/// stream of their connection was still open.
#[derive(Default)]
struct H2Seen {
    conns: AtomicUsize,
    resets: AtomicUsize,
    early: AtomicUsize,
}

/// An h2c backend (the h2 crate) answering every request with `status`
/// and `body`; `ended` says whether the body ends.
fn h2c_answering(status: u16, body: &'static str, ended: bool) -> (SocketAddr, Arc<H2Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(H2Seen::default());
    let shared = Arc::clone(&seen);
    std::thread::spawn(move || {
        let rt = client_runtime();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            while let Ok((tcp, _)) = l.accept().await {
                shared.conns.fetch_add(1, SeqCst);
                let seen = Arc::clone(&shared);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    // The streams answered, looked at without a waker: the
                    // frames that reset them come before any later request.
                    let mut held: Vec<h2::SendStream<bytes::Bytes>> = Vec::new();
                    let reset = |held: &mut Vec<h2::SendStream<bytes::Bytes>>| {
                        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                        held.iter_mut()
                            .map(|s| s.poll_reset(&mut cx).is_ready())
                            .filter(|&r| r)
                            .count()
                    };
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    loop {
                        tokio::select! {
                            next = conn.accept() => {
                                let Some(Ok((_, mut respond))) = next else { break };
                                if reset(&mut held) < held.len() {
                                    seen.early.fetch_add(1, SeqCst);
                                }
                                let answer = http::Response::builder()
                                    .status(status)
                                    .body(())
                                    .expect("response");
                                let Ok(mut send) = respond.send_response(answer, false) else {
                                    continue;
                                };
                                if send.send_data(bytes::Bytes::from(body), ended).is_ok() && !ended {
                                    held.push(send);
                                }
                            }
                            _ = tick.tick() => {}
                        }
                        seen.resets.store(reset(&mut held), SeqCst);
                    }
                });
            }
        });
    });
    (addr, seen)
}

/// An HTTP/2 backend that refuses a stream (`REFUSED_STREAM`: not
/// processed, RFC 9113 §8.7) has the request again on another connection,
/// and the refusing one goes on serving: a refusal or two (a stream limit
/// met) cost no connection. One that refuses every stream is left after
/// four refusals, the backend served on another.
#[test]
fn a_refused_stream_goes_again_and_its_connection_serves_on() {
    for (refusing, refused_then, served_first) in [(2, 2.0, true), (usize::MAX, 4.0, false)] {
        // The first connection refuses its first `refusing` streams; any
        // other connection serves every stream.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let backend = l.local_addr().expect("addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let first_served = Arc::new(AtomicUsize::new(0));
        let (c, f) = (Arc::clone(&conns), Arc::clone(&first_served));
        std::thread::spawn(move || {
            client_runtime().block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                while let Ok((tcp, _)) = l.accept().await {
                    let first = c.fetch_add(1, SeqCst) == 0;
                    let f = Arc::clone(&f);
                    tokio::spawn(async move {
                        let Ok(mut conn) = h2::server::handshake(tcp).await else {
                            return;
                        };
                        let mut n = 0;
                        while let Some(Ok((_, mut respond))) = conn.accept().await {
                            n += 1;
                            if first && n <= refusing {
                                respond.send_reset(h2::Reason::REFUSED_STREAM);
                                continue;
                            }
                            if first {
                                f.fetch_add(1, SeqCst);
                            }
                            let answer = http::Response::builder()
                                .status(200)
                                .body(())
                                .expect("response");
                            if let Ok(mut send) = respond.send_response(answer, false) {
                                let _ = send.send_data(bytes::Bytes::from_static(b"ok"), true);
                            }
                        }
                    });
                }
            });
        });
        let (front, admin) = (free_port(), free_port());
        let (_weir, _out) = start(
            "h2-backend-refuses",
            &format!(
                "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
                 [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
                 [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
                 [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
                 [[pools]]\nname = \"p\"\nprotocol = \"h2c\"\n\
                 [[pools.backends]]\nname = \"b\"\naddress = \"{backend}\"\n"
            ),
        );
        for n in 0..8 {
            let (status, body, _) = curl(&[], &format!("http://{front}/{n}"));
            assert_eq!(
                (status, body.as_str()),
                (200, "ok"),
                "{refusing}: request {n}"
            );
        }
        assert_eq!(conns.load(SeqCst), 2, "{refusing}: one more connection");
        assert_eq!(
            first_served.load(SeqCst) > 0,
            served_first,
            "{refusing}: the refusing connection kept serving"
        );
        assert_eq!(
            metric(
                admin,
                "weir_backend_http_replayed_total{pool=\"p\",backend=\"b\",reason=\"refused_stream\"}"
            ),
            refused_then,
            "{refusing}"
        );
    }
}

/// A gRPC call from an HTTP/2 client whose backend went quiet ends with
/// weir's own trailers (`grpc-status: 14`); the client's upload, still
/// streaming, is cut at the backend with a reset at once: the backend's
/// stream is not left open (it was, the relay of the upload stalled), and
/// a client-streaming or bidirectional handler is told its input broke
/// off rather than ended.
#[test]
fn a_grpc_call_weir_ends_resets_the_backends_stream() {
    // The backend: answers at once with one message, then only reads, and
    // says how the request body ended.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let backend = l.local_addr().expect("addr");
    let (tx, ended) = std::sync::mpsc::channel::<&'static str>();
    std::thread::spawn(move || {
        client_runtime().block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            while let Ok((tcp, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    let Some(Ok((req, mut respond))) = conn.accept().await else {
                        return;
                    };
                    tokio::spawn(async move { while conn.accept().await.is_some() {} });
                    let answer = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc")
                        .body(())
                        .expect("response");
                    let Ok(mut send) = respond.send_response(answer, false) else {
                        return;
                    };
                    let _ = send.send_data(bytes::Bytes::from_static(b"\0\0\0\0\0"), false);
                    let mut body = req.into_body();
                    let how = loop {
                        match body.data().await {
                            Some(Ok(chunk)) => {
                                let _ = body.flow_control().release_capacity(chunk.len());
                            }
                            Some(Err(_)) => break "reset",
                            None => break "ended",
                        }
                    };
                    let _ = tx.send(how);
                    drop(send);
                });
            }
        });
    });
    let front = free_port();
    let (_weir, _out) = start(
        "grpc-cut",
        &format!(
            "[[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_idle = \"1s\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nprotocol = \"h2c\"\n\
             [[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let rt = client_runtime();
    let status = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(front)
            .await
            .expect("connect");
        let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        let mut send = send.ready().await.expect("ready");
        let req = http::Request::post("http://app/echo.Echo/Stream")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (response, mut upload) = send.send_request(req, false).expect("send");
        // A message every 100 ms for 3 s, then the end of the upload.
        tokio::spawn(async move {
            for _ in 0..30 {
                if upload
                    .send_data(bytes::Bytes::from_static(b"\0\0\0\0\0"), false)
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = upload.send_data(bytes::Bytes::new(), true);
            tokio::time::sleep(DEADLINE).await;
        });
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .expect("in time")
            .expect("response");
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.expect("trailers").expect("some");
        trailers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or("").to_owned())
    });
    assert_eq!(status.as_deref(), Some("14"));
    assert_eq!(ended.recv_timeout(DEADLINE), Ok("reset"));
}

/// With `retry_on_status`, an HTTP/2 backend's answer put aside is not read
/// off: its stream is reset at once (its body here never ends; the reset
/// comes before the next request) and the connection, shared by the
/// backend's requests, stays open for the next.
#[test]
fn an_http2_answer_put_aside_resets_its_stream_and_keeps_the_connection() {
    let (busy, seen) = h2c_answering(503, "busy", false);
    let (good, _) = h2c_answering(200, "ok", true);
    let (front, admin) = (free_port(), free_port());
    let (_weir, _out) = start(
        "retry-on-status-h2",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nbalance = \"first\"\nprotocol = \"h2c\"\nretry_on_status = [503]\n\
             [[pools.backends]]\nname = \"busy\"\naddress = \"{busy}\"\n\
             [[pools.backends]]\nname = \"good\"\naddress = \"{good}\"\n"
        ),
    );
    for n in 0..3 {
        let (status, body, _) = curl(&[], &format!("http://{front}/{n}"));
        assert_eq!((status, body.as_str()), (200, "ok"), "request {n}");
    }
    wait("three streams reset", &|| seen.resets.load(SeqCst) == 3);
    assert_eq!(seen.early.load(SeqCst), 0, "a stream reset only later");
    assert_eq!(seen.conns.load(SeqCst), 1, "one connection, kept");
    let series = |label: &str| {
        metric(
            admin,
            &format!("weir_http_upstream_connections_total{{pool=\"p\",backend=\"busy\",{label}}}"),
        )
    };
    assert_eq!(series("event=\"created\""), 1.0);
    assert_eq!(series("event=\"reused\""), 2.0);
}

/// A rule's `redirect` answers with the request's own URL, its scheme, host
/// or port replaced or its path moved by the rule's prefixes: on a route
/// with no pool at all (a clear-text listener sending everyone to HTTPS)
/// and beside rules that forward, over HTTP/1.1 and h2c.
#[test]
fn redirect_rules_answer_with_the_new_url() {
    let backend = raw_backend(None, Duration::ZERO);
    let (plain, mixed) = (free_port(), free_port());
    let (_weir, out) = start(
        "redirects",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"plain\"\nbind = \"{plain}\"\n\
             [[listeners.routes]]\nname = \"to-https\"\nmode = \"l7\"\n\
             policies = [{{ name = \"no-admin\", deny = {{ path_prefix = [\"/admin\"] }} }}]\n\
             [[listeners.routes.http]]\nname = \"all\"\nredirect = {{ scheme = \"https\" }}\n\
             [[listeners]]\nname = \"mixed\"\nbind = \"{mixed}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"moved\"\n\
             match = {{ host = [\"old.example\"] }}\n\
             redirect = {{ host = \"new.example\", port = 8443, scheme = \"https\", status = 308 }}\n\
             [[listeners.routes.http]]\nname = \"renamed\"\n\
             match = {{ path_prefix = \"/shop\" }}\nredirect = {{ status = 302 }}\n\
             strip_prefix = \"/shop\"\nadd_prefix = \"/store\"\n\
             [[listeners.routes.http]]\nname = \"rest\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let head = |front: SocketAddr, host: &str, target: &str| {
            let (status, text, _) = curl(
                &["-i", version, "-H", &format!("Host: {host}")],
                &format!("http://{front}{target}"),
            );
            let location = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("location:")
                        .then(|| l[9..].trim().to_owned())
                })
                .unwrap_or_default();
            (status, location)
        };
        assert_eq!(
            head(plain, "app.example:8080", "/a/../cart?item=7"),
            (301, "https://app.example/cart?item=7".to_owned()),
            "{version}"
        );
        assert_eq!(
            head(mixed, "OLD.example", "/x"),
            (308, "https://new.example:8443/x".to_owned()),
            "{version}"
        );
        assert_eq!(head(mixed, "app.example", "/x").0, 200, "{version}");
        // The rule's prefixes move the path; the query stays.
        assert_eq!(
            head(mixed, "app.example", "/shop/cart?item=7"),
            (302, "http://app.example/store/cart?item=7".to_owned()),
            "{version}"
        );
        // The route's policies come first: refused, not redirected.
        assert_eq!(head(plain, "app.example", "/admin/x"), (403, String::new()));
    }
    // Logged with its status and rule, and no backend.
    let line = access_line(&out, "/cart?item=7");
    assert_eq!(
        (&line["status"], &line["rule"], &line["backend"]),
        (
            &serde_json::json!(301),
            &serde_json::json!("all"),
            &serde_json::json!("-")
        ),
        "{line}"
    );
    // No host asked for and none to give: 400.
    let answer = raw_exchange(plain, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.") && answer[8..].starts_with(" 400 "),
        "{answer}"
    );
}

/// A rule's `strip_prefix` and `add_prefix` change the path nginx gets (the
/// query kept), over HTTP/1.1 and h2c; the access log keeps the path the
/// client asked for; other rules' paths are untouched.
#[test]
fn path_prefixes_are_stripped_and_added_for_the_backend() {
    let (nginx, nginx_at) = nginx_doing("path-rewrite", "return 200 \"$request_uri\\n\";");
    let front = free_port();
    let (_weir, out) = start(
        "path-rewrite",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"api\"\npool = \"p\"\n\
             match = {{ path_prefix = \"/api/\" }}\nstrip_prefix = \"/api\"\nadd_prefix = \"/v2\"\n\
             [[listeners.routes.http]]\nname = \"shop\"\npool = \"p\"\n\
             match = {{ path_prefix = \"/shop\" }}\nstrip_prefix = \"/shop\"\n\
             [[listeners.routes.http]]\nname = \"rest\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{nginx_at}\"\n"
        ),
    );
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let got = |path: &str| {
            let (status, body, _) = curl(&[version], &format!("http://{front}{path}"));
            assert_eq!(status, 200, "{version} {path}: {body}");
            body
        };
        assert_eq!(got("/api/users?id=7&x"), "/v2/users?id=7&x", "{version}");
        assert_eq!(got("/shop"), "/", "{version}");
        assert_eq!(got("/shop/cart"), "/cart", "{version}");
        // `/shopping` is taken by the rule, but `/shop` ends no segment there.
        assert_eq!(got("/shopping"), "/shopping", "{version}");
        assert_eq!(got("/other/x"), "/other/x", "{version}");
    }
    let line = access_line(&out, "/api/users?id=7&x");
    assert_eq!(line["rule"], "api", "{line}");
    drop(nginx);
}

/// `timeouts.request` bounds a request from its head to the last byte of
/// its answer, whatever the other timeouts allow: a backend that answers
/// after 3 s gets the client a 504 after 1 s (`upstream_response` is 60 s),
/// and a body whose pieces keep coming 100 ms apart (well inside
/// `upstream_idle`) is cut at 1 s, like one that stopped coming; a request
/// waiting in a full pool's queue (`queue_timeout` 30 s) gets its 504 at
/// 1 s too, with a body or without; all logged as `upstream_timeout`. An
/// upload still going at 1 s gets 408, not blamed on its backend.
#[test]
fn the_request_timeout_bounds_the_whole_answer() {
    let slow = raw_backend(None, Duration::from_secs(3));
    let taker = body_taker(Takes::Slowly);
    let (paced, _) = pausing_backend();
    let front = free_port();
    // A listener without the deadline, to fill the queued pool.
    let filler = free_port();
    let (_weir, out) = start(
        "request-timeout",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ request = \"1s\" }}\n\
             [[listeners.routes.http]]\nname = \"slow\"\npool = \"slow\"\n\
             match = {{ path_prefix = \"/slow\" }}\n\
             [[listeners.routes.http]]\nname = \"queued\"\npool = \"queued\"\n\
             match = {{ path_prefix = \"/queued\" }}\n\
             [[listeners.routes.http]]\nname = \"upload\"\npool = \"taker\"\n\
             match = {{ path_prefix = \"/upload\" }}\n\
             [[listeners.routes.http]]\nname = \"paced\"\npool = \"paced\"\n\
             [[listeners]]\nname = \"filler\"\nbind = \"{filler}\"\n\
             [[listeners.routes]]\nname = \"fill\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"queued\"\n\
             [[pools]]\nname = \"slow\"\n[[pools.backends]]\naddress = \"{0}\"\n\
             [[pools]]\nname = \"queued\"\nqueue_timeout = \"30s\"\n\
             max_connections_per_backend = 1\n[[pools.backends]]\naddress = \"{0}\"\n\
             [[pools]]\nname = \"paced\"\n[[pools.backends]]\naddress = \"{paced}\"\n\
             [[pools]]\nname = \"taker\"\n[[pools.backends]]\naddress = \"{taker}\"\n",
            slow.addr
        ),
    );
    // An upload still going at 1 s (its backend reads it slowly): the
    // client's request took too long, no backend is blamed: 408.
    let (status, body) = upload(front, "/upload", 64 << 20);
    assert_eq!(
        (status, body.as_str()),
        (
            408,
            "weir: the request body did not arrive in time (idle_timeout)\n"
        )
    );

    let began = Instant::now();
    let (status, _, body) = raw_get(front, "/slow", "");
    let took = began.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(access_line(&out, "/slow")["reason"], "upstream_timeout");

    // The filler holds the queued pool's one slot for 3 s.
    let held = std::thread::spawn(move || raw_get(filler, "/fill", ""));
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.requests.load(SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the filler never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let began = Instant::now();
    // A request with a body waits in the queue too: no backend took any of
    // it, so the client is not the slow one (it was a 408).
    let posted = std::thread::spawn(move || {
        raw_exchange(
            front,
            b"POST /queued-post HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello",
        )
    });
    let (status, _, body) = raw_get(front, "/queued", "");
    let took = began.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let posted = posted.join().expect("post");
    assert!(posted.starts_with("HTTP/1.1 504"), "{posted}");
    // The two lines, in either order.
    let mut reasons = std::collections::BTreeMap::new();
    while reasons.len() < 2 {
        let line: serde_json::Value =
            serde_json::from_str(&wait_line(&out, "\"path\":\"/queued")).expect("json");
        reasons.insert(line["path"].to_string(), line["reason"].to_string());
    }
    assert!(
        reasons.values().all(|r| r == "\"upstream_timeout\""),
        "{reasons:?}"
    );
    assert_eq!(held.join().expect("filler").0, 200);

    for path in ["/paced", "/stall-length"] {
        let began = Instant::now();
        let (head, body, _) = get_until_closed(front, path);
        let took = began.elapsed();
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
            "{path}: {took:?}"
        );
        if path == "/paced" {
            // Cut short: some pieces, not all, and no last chunk.
            assert!(body.contains(&paced_piece(0)), "{body}");
            assert!(!body.contains(&paced_piece(PACED - 1)), "{body}");
            assert!(!body.ends_with("0\r\n\r\n"), "{body}");
        }
        let line = access_line(&out, path);
        assert_eq!(line["reason"], "upstream_timeout", "{line}");
    }
}

/// An h2c backend (the h2 crate) answering every request with `body` and
/// its `content-length`, the body's end in a frame of its own a little
/// later, as Go servers send a body of more than 4 KiB.
fn h2c_ending_apart(body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        client_runtime().block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            while let Ok((tcp, _)) = l.accept().await {
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((_, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let answer = http::Response::builder()
                                .status(200)
                                .header("content-length", body.len())
                                .body(())
                                .expect("response");
                            let Ok(mut send) = respond.send_response(answer, false) else {
                                return;
                            };
                            let _ = send.send_data(bytes::Bytes::from(body), false);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            let _ = send.send_data(bytes::Bytes::new(), true);
                        });
                    }
                });
            }
        });
    });
    addr
}

/// An HTTP/1.1 client of an HTTP/2 backend that sends a body's end apart
/// from its last bytes gets whole answers logged `completed`, and many of
/// them on one connection are no rapid-reset flood (hyper stops reading a
/// body of known length at its last byte: the exchange took that for the
/// client leaving, and after a hundred closed the connection).
#[test]
fn an_http2_body_ending_in_a_frame_of_its_own_is_complete() {
    let backend = h2c_ending_apart("hello");
    let (front, admin) = (free_port(), free_port());
    let (_weir, out) = start(
        "h2-end-apart",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nprotocol = \"h2c\"\n\
             [[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    for i in 0..150 {
        let body = keepalive_get(&mut s, &format!("/r{i}"))
            .unwrap_or_else(|e| panic!("request {i} on the kept connection: {e}"));
        assert_eq!(body, "hello");
    }
    let line = access_line(&out, "/r0");
    assert_eq!(line["reason"], "completed", "{line}");
    assert_eq!(
        metric(
            admin,
            "weir_http_reset_floods_total{listener=\"web\",route=\"app\"}"
        ),
        0.0
    );
}

/// weir answers in its own terms: its own answer to HEAD carries no body
/// over HTTP/2 either (h2 clients refuse one as a protocol error), and an
/// HTTP/1.0 backend's answer reaches an HTTP/1.1 client as HTTP/1.1, on a
/// connection that stays open.
#[test]
fn answers_to_head_have_no_body_and_speak_http_1_1() {
    // A backend of HTTP/1.0: one answer per connection, then it closes.
    let old = TcpListener::bind("127.0.0.1:0").expect("bind");
    let old_addr = old.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in old.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let front = free_port();
    let (_weir, _out) = start(
        "own-terms",
        &format!(
            "[[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"old\"\npool = \"old\"\n\
             match = {{ path_prefix = \"/old\" }}\n\
             [[pools]]\nname = \"old\"\n[[pools.backends]]\naddress = \"{old_addr}\"\n"
        ),
    );
    let h2 = H2Client::connect(front);
    let send = h2.send.clone();
    let answer = h2.rt.block_on(async move {
        let mut send = send.ready().await?;
        let req = http::Request::head("http://app/nothing")
            .body(())
            .expect("request");
        let (response, _) = send.send_request(req, true)?;
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .map_err(|_| h2::Error::from(h2::Reason::CANCEL))??;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            got += chunk?.len();
        }
        Ok::<_, h2::Error>((status, got))
    });
    assert_eq!(answer.expect("a clean answer"), (404, 0));

    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(s, "GET /old HTTP/1.1\r\nHost: app\r\n\r\n").expect("write");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut head = String::new();
    while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
    let mut body = [0u8; 2];
    reader.read_exact(&mut body).expect("the body");
    assert_eq!(&body, b"ok");
    assert_eq!(
        keepalive_get(&mut s, "/old/again").expect("kept open"),
        "ok"
    );
}

/// `[log] access_log` changed by a reload holds for the requests of a
/// connection opened before it too (they followed the setting of when
/// their connection was accepted).
#[test]
fn a_reload_turns_the_access_log_off_and_on_for_open_connections() {
    let backend = raw_backend(None, Duration::ZERO);
    let front = free_port();
    let config = |on: bool| {
        format!(
            "[log]\nformat = \"json\"\naccess_log = {on}\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        )
    };
    let file = temp_config("access-log-reload", &config(true));
    let (weir, out) = crate::cli::run_weir(&file);
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    keepalive_get(&mut s, "/one").expect("served");
    access_line(&out, "/one");
    // The lines written until the reload is done (in order: a request's
    // line comes before the reload it preceded).
    let reload = |on: bool| {
        std::fs::write(&file, config(on)).expect("write");
        crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = out.recv_timeout(left).expect("config reloaded");
            if line.contains("config reloaded") {
                return seen;
            }
            seen.push(line);
        }
    };
    reload(false);
    keepalive_get(&mut s, "/two").expect("served");
    let seen = reload(true);
    assert!(
        !seen.iter().any(|l| l.contains("\"path\":\"/two\"")),
        "{seen:?}"
    );
    keepalive_get(&mut s, "/three").expect("served");
    access_line(&out, "/three");
}

/// A drained backend keeps its sticky clients until the pool's
/// `drain_timeout`: then its connections are closed and the drain is over,
/// and a client whose cookie names it gets another backend and a new
/// cookie (it stayed on the drained one for good, and so did a WebSocket
/// or stream it opened after the cut).
#[test]
fn a_drained_backend_keeps_its_sticky_clients_until_the_drain_runs_out() {
    let backends = [
        raw_backend(None, Duration::ZERO),
        raw_backend(None, Duration::ZERO),
    ];
    let (front, grpc) = (free_port(), free_port());
    let (_weir, _out) = start(
        "sticky-drain",
        &format!(
            "[admin]\ngrpc = \"{grpc}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\ndrain_timeout = \"1s\"\nsticky = {{ cookie = \"srv\" }}\n\
             [[pools.backends]]\nname = \"b0\"\naddress = \"{}\"\n\
             [[pools.backends]]\nname = \"b1\"\naddress = \"{}\"\n",
            backends[0].addr, backends[1].addr
        ),
    );
    let counts = || backends.each_ref().map(|b| b.requests.load(SeqCst));
    // (the backend that answered, whether a cookie was set)
    let ask = |cookie: Option<&str>| {
        let before = counts();
        let mut args = vec!["-i".to_owned()];
        if let Some(c) = cookie {
            args.extend(["-H".to_owned(), format!("Cookie: {c}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, text, _) = curl(&args, &format!("http://{front}/"));
        assert_eq!(status, 200, "{text}");
        let after = counts();
        let by = (0..2).find(|&k| after[k] > before[k]).expect("answered");
        let set = text
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .lines()
            .find_map(|l| {
                l.strip_prefix("set-cookie: srv=")
                    .or_else(|| l.strip_prefix("Set-Cookie: srv="))
            })
            .map(|v| v.split(';').next().unwrap_or("").to_owned());
        (by, set)
    };
    let (home, token) = ask(None);
    let cookie = format!("srv={}", token.expect("a cookie"));
    let (code, _, err) = crate::control::text(&crate::control::ctl(
        grpc,
        None,
        &["backend", "drain", "p", &format!("b{home}")],
    ));
    assert_eq!(code, 0, "{err}");
    let drained = Instant::now();
    assert_eq!(ask(Some(&cookie)), (home, None), "kept through the drain");
    let end = drained + DEADLINE;
    loop {
        let (by, set) = ask(Some(&cookie));
        if by != home {
            assert!(set.is_some(), "moved with a new cookie");
            assert!(
                drained.elapsed() >= Duration::from_millis(900),
                "moved before drain_timeout: {:?}",
                drained.elapsed()
            );
            break;
        }
        assert!(Instant::now() < end, "still on the drained backend");
        std::thread::sleep(Duration::from_millis(100));
    }
}
