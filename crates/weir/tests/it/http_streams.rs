//! Layer 7 with streaming peers (tests/it/peers.py, on PyPI's grpcio and
//! websockets): gRPC calls of all four kinds with their statuses and
//! trailers, weir's own failures as gRPC statuses, a WebSocket relayed and
//! cut when idle, server-sent events that arrive one by one, and
//! `Expect: 100-continue`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{Running, free_port, wait_line};
use crate::http::{curl, raw_backend, start, wait_connectable};

fn peers() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers.py")
}

/// `python3 peers.py ARGS` in the background, stopped when dropped.
fn peer_server(args: &[&str]) -> Running {
    Running::new(
        Command::new("python3")
            .arg(peers())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (run scripts/test.sh, which installs grpcio and websockets)"),
    )
}

/// `python3 peers.py ARGS`: the JSON it prints.
fn peer_client(args: &[&str]) -> serde_json::Value {
    let out = Command::new("timeout")
        .args(["60", "python3"])
        .arg(peers())
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "peers.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "peers.py {args:?} printed {}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// gRPC through weir (h2c in, h2c to the backend): unary and the three
/// streaming kinds, a status with its message and trailers passed through;
/// weir's own failures answered as gRPC statuses.
#[test]
fn grpc_calls_of_every_kind_and_their_statuses() {
    let backend = free_port();
    let _server = peer_server(&["grpc-server", &backend.port().to_string()]);
    wait_connectable(backend);
    let (refusing, front, admin) = (free_port(), free_port(), free_port());
    let (_weir, out) = start(
        "grpc",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"grpc\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"api\"\nmode = \"l7\"\n\
             timeouts = {{ upstream_response = \"1s\", upstream_idle = \"500ms\", request_body = \"1s\" }}\n\
             [[listeners.routes.http]]\nname = \"gone\"\npool = \"gone\"\n\
             match = {{ path_prefix = \"/weir.test.Echo/Gone\" }}\n\
             [[listeners.routes.http]]\nname = \"echo\"\npool = \"echo\"\n\
             match = {{ path_prefix = \"/weir.test.Echo/\" }}\n\
             [[pools]]\nname = \"echo\"\nprotocol = \"h2c\"\n[[pools.backends]]\naddress = \"{backend}\"\n\
             [[pools]]\nname = \"gone\"\nprotocol = \"h2c\"\n[[pools.backends]]\naddress = \"{refusing}\"\n"
        ),
    );
    let target = front.to_string();
    let r = peer_client(&["grpc-client", &target]);
    assert_eq!(r["unary"], "echo:hi", "{r}");
    assert_eq!(
        r["server_stream"],
        serde_json::json!(["part 0", "part 1", "part 2"]),
        "{r}"
    );
    assert_eq!(r["client_stream"], "a+b+c", "{r}");
    assert_eq!(r["bidi"], serde_json::json!(["bidi:1", "bidi:2"]), "{r}");
    assert_eq!(r["fail"]["code"], "NOT_FOUND", "{r}");
    assert_eq!(r["fail"]["details"], "nothing here", "{r}");
    assert_eq!(r["fail"]["trailers"]["x-why"], "testing", "{r}");

    let gone = peer_client(&["grpc-call", &target, "Gone"]);
    assert_eq!(gone["code"], "UNAVAILABLE", "{gone}");
    let slow = peer_client(&["grpc-call", &target, "Slow"]);
    assert_eq!(slow["code"], "DEADLINE_EXCEEDED", "{slow}");
    // On the wire they are 200 with a grpc-status; counted and logged as the
    // failures they stand for, so a failing gRPC route shows in 5xx.
    let failed = "weir_http_requests_total{listener=\"grpc\",route=\"api\",code=\"5xx\"} ";
    crate::http::wait("two 5xx counted", &|| {
        crate::cli::http_get(admin, "/metrics")
            .lines()
            .any(|l| l.strip_prefix(failed) == Some("2"))
    });
    let line = wait_line(&out, "/weir.test.Echo/Gone");
    assert!(line.contains("\"status\":502"), "{line}");
    let line = wait_line(&out, "/weir.test.Echo/Slow");
    assert!(line.contains("\"status\":504"), "{line}");
    assert!(line.contains("\"reason\":\"upstream_timeout\""), "{line}");
    let ok = peer_client(&["grpc-call", &target, "Unary"]);
    assert_eq!(ok["code"], "OK", "{ok}");
    // A client with nothing to say for longer than `request_body` while the
    // answer streams: the call is not idle, and goes on to its end.
    let quiet = peer_client(&["grpc-quiet", &target]);
    assert_eq!(quiet["code"], "OK", "{quiet}");
    assert_eq!(quiet["parts"].as_array().map(Vec::len), Some(10), "{quiet}");
    // A stream the backend stops feeding for longer than `upstream_idle`
    // ends with a gRPC status in trailers, after what had come through.
    let stalled = peer_client(&["grpc-stream", &target, "Stall"]);
    assert_eq!(stalled["code"], "UNAVAILABLE", "{stalled}");
    assert_eq!(stalled["parts"], serde_json::json!(["part 0"]), "{stalled}");
    assert!(
        stalled["details"]
            .as_str()
            .is_some_and(|d| d.contains("(idle_timeout)")),
        "{stalled}"
    );
}

/// A WebSocket echo server (the Python peer) behind a weir listener `web`
/// with one l7 route to it. `head` goes before the listener, `listener`
/// inside it, `timeouts` is the route's. Returns the server (kept running
/// while held), weir's address, weir and its output.
fn websocket_setup(
    tag: &str,
    head: &str,
    listener: &str,
    timeouts: &str,
) -> (
    Running,
    SocketAddr,
    Running,
    std::sync::mpsc::Receiver<String>,
) {
    let backend = free_port();
    let server = peer_server(&["ws-server", &backend.port().to_string()]);
    wait_connectable(backend);
    let front = free_port();
    let (weir, out) = start(
        tag,
        &format!(
            "{head}[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n{listener}\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ {timeouts} }}\n\
             [[listeners.routes.http]]\nname = \"ws\"\npool = \"ws\"\n\
             [[pools]]\nname = \"ws\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
        ),
    );
    (server, front, weir, out)
}

/// The backend's `101 Switching Protocols` reaches the client without its
/// other hop-by-hop headers (and what its `Connection` names), with the
/// route's and the rule's `response_headers` and the pool's sticky cookie;
/// the switch itself is kept, and the bytes then flow both ways.
#[test]
fn a_switch_reaches_the_client_without_other_hop_by_hop_headers() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let _ = s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Connection: Upgrade, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        );
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let front = free_port();
    let (_weir, _out) = start(
        "switch-headers",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             response_headers = {{ set = {{ \"X-Route\" = \"${{route}}\" }} }}\n\
             [[listeners.routes.http]]\nname = \"ws\"\npool = \"ws\"\n\
             response_headers = {{ add = {{ \"X-Served-By\" = \"${{backend}}\" }} }}\n\
             [[pools]]\nname = \"ws\"\nsticky = {{ cookie = \"srv\" }}\n\
             [pools.health]\ntype = \"none\"\n\
             [[pools.backends]]\nname = \"raw\"\naddress = \"{backend}\"\n"
        ),
    );
    let mut c = std::net::TcpStream::connect(front).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).expect("head"), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("sec-websocket-accept:"), "{head}");
    assert!(head.contains("\r\nx-route: app\r\n"), "{head}");
    assert!(head.contains("\r\nx-served-by: raw\r\n"), "{head}");
    assert!(head.contains("\r\nset-cookie: srv="), "{head}");
    assert!(
        !head.contains("x-hop") && !head.contains("keep-alive"),
        "{head}"
    );
    c.write_all(b"ping").expect("ping");
    let mut echo = [0u8; 4];
    c.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"ping");
}

/// A relayed WebSocket's line names the side that ended it: the one that
/// closed first (`client_closed`, `backend_closed`), or the one whose socket
/// failed (`client_error`, `backend_error`). Its backend connection counts
/// as `active` while the relay runs, and as `closed` once it ends.
#[test]
fn a_websocket_ends_with_the_side_that_ended_it() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    /// Reads an HTTP head byte by byte; empty when the peer left.
    fn head(s: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).unwrap_or(0) == 0 {
                return String::new();
            }
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }
    /// Sends RST instead of FIN when `s` is dropped.
    fn reset(s: &TcpStream) {
        socket2::SockRef::from(s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    }
    // Switches, echoes one message, then: `/close` closes, `/reset` resets,
    // anything else echoes until the client's EOF.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let request = head(&mut s);
                let _ = s.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\n\r\n",
                );
                let mut buf = [0u8; 64];
                loop {
                    let n = s.read(&mut buf).unwrap_or(0);
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    if request.starts_with("GET /close ") {
                        return;
                    }
                    if request.starts_with("GET /reset ") {
                        reset(&s);
                        return;
                    }
                }
            });
        }
    });
    let (front, admin, secure) = (free_port(), free_port(), free_port());
    let dir = crate::cli::test_dir("ws-ends-tls");
    crate::http::make_ca(&dir);
    crate::http::make_leaf(&dir, "ws", &["ws.example"], "");
    let (_weir, out) = start(
        "ws-ends",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"ws\"\npool = \"ws\"\n\
             [[listeners]]\nname = \"secure\"\nbind = \"{secure}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             tls = {{ certificates = [{{ cert = \"{d}/ws.crt\", key = \"{d}/ws.key\" }}] }}\n\
             [[listeners.routes.http]]\nname = \"ws\"\npool = \"ws\"\n\
             [[pools]]\nname = \"ws\"\n[pools.health]\ntype = \"none\"\n\
             [[pools.backends]]\nname = \"raw\"\naddress = \"{backend}\"\n",
            d = dir.display()
        ),
    );
    let series = |state: &str| {
        crate::http::metric(
            admin,
            &format!(
                "weir_http_upstream_connections_open{{pool=\"ws\",backend=\"raw\",state=\"{state}\"}}"
            ),
        )
    };
    let closed = || {
        crate::http::metric(
            admin,
            "weir_http_upstream_connections_total{pool=\"ws\",backend=\"raw\",event=\"closed\"}",
        )
    };
    // The relay's line may come a moment before its sockets are dropped.
    let settles = |active: f64, closed_now: f64| {
        let end = Instant::now() + crate::cli::DEADLINE;
        while (series("active"), closed()) != (active, closed_now) {
            assert!(
                Instant::now() < end,
                "active {}, closed {}",
                series("active"),
                closed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A switched WebSocket on `path` that has echoed one message.
    let open = |path: &str| {
        let mut c = TcpStream::connect(front).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .expect("request");
        assert!(head(&mut c).starts_with("HTTP/1.1 101"), "{path}");
        c.write_all(b"ping").expect("ping");
        let mut echo = [0u8; 4];
        c.read_exact(&mut echo).expect("echo");
        c
    };
    let reason = |path: &str| {
        let line = wait_line(&out, &format!("\"path\":\"{path}\""));
        assert!(line.contains("\"status\":101"), "{line}");
        line.split("\"reason\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_owned()
    };

    let c = open("/echo");
    assert_eq!((series("active"), series("idle")), (1.0, 0.0));
    assert_eq!(closed(), 0.0, "switched, not closed");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_eq!(reason("/echo"), "client_closed");
    settles(0.0, 1.0);

    let mut c = open("/close");
    assert_eq!(
        c.read(&mut [0u8; 8]).unwrap_or(1),
        0,
        "closed by the backend"
    );
    drop(c);
    assert_eq!(reason("/close"), "backend_closed");

    let c = open("/reset");
    assert_eq!(reason("/reset"), "backend_error");
    drop(c);

    let c = open("/client-reset");
    reset(&c);
    drop(c);
    assert_eq!(reason("/client-reset"), "client_error");
    settles(0.0, 4.0);

    // Over TLS, a client that closes its socket without a close_notify
    // (Python's `close()`, as many do) closed; it did not fail.
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context(cafile='{d}/ca.crt')\n\
         s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})), server_hostname='ws.example')\n\
         s.sendall(b'GET /tls-close HTTP/1.1\\r\\nHost: ws.example\\r\\nConnection: Upgrade\\r\\n'\n\
         \x20   b'Upgrade: websocket\\r\\nSec-WebSocket-Version: 13\\r\\n'\n\
         \x20   b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n')\n\
         head = b''\n\
         while not head.endswith(b'\\r\\n\\r\\n'):\n\
         \x20   head += s.recv(1)\n\
         assert head.startswith(b'HTTP/1.1 101'), head\n\
         s.sendall(b'ping')\n\
         assert s.recv(4) == b'ping'\n\
         s.close()\n",
        d = dir.display(),
        port = secure.port()
    );
    let ran = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(reason("/tls-close"), "client_closed");
}

/// A WebSocket: upgraded, relayed both ways, logged with status 101 when it
/// ends, and closed by weir once idle for `websocket_idle`.
#[test]
fn websockets_are_relayed_and_cut_when_idle() {
    let (_server, front, _weir, out) = websocket_setup(
        "ws",
        "",
        "",
        "websocket_idle = \"1500ms\", idle = \"200ms\"",
    );
    let url = format!("ws://{front}/chat");
    let r = peer_client(&["ws-client", &url, "3", "3"]);
    assert_eq!(
        r["replies"],
        serde_json::json!(["echo:m0", "echo:m1", "echo:m2"]),
        "{r}"
    );
    // Not the client connection's idle timeout (200 ms): the WebSocket's.
    assert_eq!(r["after_idle"], "closed", "{r}");
    let after = r["closed_after"].as_f64().unwrap_or(0.0);
    // Measured from after the client took the last echo, a little after
    // weir's idle timer started: some slack below 1.5 s.
    assert!((1.1..4.0).contains(&after), "closed after {after} s");
    let line = wait_line(&out, "\"path\":\"/chat\"");
    assert!(line.contains("\"status\":101"), "{line}");
    assert!(line.contains("\"reason\":\"idle_timeout\""), "{line}");
    assert!(line.contains("\"backend\":\"echo\""), "{line}");
}

/// `weir connections close` ends a WebSocket relayed on an l7 connection
/// at once, whatever its idle timeout, and the request's line says
/// `operator`.
#[test]
fn an_operator_closes_a_websocket() {
    let grpc = free_port();
    let (_server, front, _weir, out) = websocket_setup(
        "ws-close",
        &format!("[admin]\ngrpc = \"{grpc}\"\n"),
        "",
        "websocket_idle = \"60s\"",
    );
    let url = format!("ws://{front}/chat");
    // Three messages, then up to 20 s waiting for the close.
    let client = std::thread::spawn(move || peer_client(&["ws-client", &url, "3", "20"]));
    let id = echoed_websocket(grpc);
    let closed = crate::control::json(&crate::control::ctl(
        grpc,
        None,
        &["connections", "close", "--id", &id, "-o", "json"],
    ));
    assert_eq!(closed["closed"], 1);
    let r = client.join().expect("client");
    assert_eq!(r["after_idle"], "closed", "{r}");
    let after = r["closed_after"].as_f64().unwrap_or(99.0);
    assert!(after < 10.0, "closed after {after} s");
    let line = wait_line(&out, "\"path\":\"/chat\"");
    assert!(line.contains("\"status\":101"), "{line}");
    assert!(line.contains("\"reason\":\"operator\""), "{line}");
}

/// Waits until the WebSocket on listener `web` has sent its three echoes
/// back to the client; its connection id.
fn echoed_websocket(grpc: SocketAddr) -> String {
    let end = std::time::Instant::now() + crate::cli::DEADLINE;
    loop {
        let list = crate::control::json(&crate::control::ctl(
            grpc,
            None,
            &["connections", "--listener", "web", "-o", "json"],
        ));
        let c = &list["connections"][0];
        if c["received_bytes"].as_u64().unwrap_or(0) > 150 {
            return c["id"].to_string();
        }
        assert!(
            std::time::Instant::now() < end,
            "no WebSocket listed: {list}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What `ws-client` with three messages saw, and the access log, of a
/// WebSocket that weir closed (reason `shutdown`) before it went idle.
fn ended_by_shutdown(r: &serde_json::Value, out: &std::sync::mpsc::Receiver<String>) {
    assert_eq!(r["replies"].as_array().map(Vec::len), Some(3), "{r}");
    assert_eq!(r["after_idle"], "closed", "{r}");
    let after = r["closed_after"].as_f64().unwrap_or(99.0);
    assert!(after < 10.0, "closed after {after} s");
    let line = wait_line(out, "\"path\":\"/chat\"");
    assert!(line.contains("\"status\":101"), "{line}");
    assert!(line.contains("\"reason\":\"shutdown\""), "{line}");
}

/// A WebSocket still open when weir stops ends once `shutdown_timeout`
/// runs out, whatever its idle timeout, and its line says `shutdown`.
#[test]
fn a_websocket_ends_at_the_shutdown_timeout() {
    let grpc = free_port();
    let (_server, front, weir, out) = websocket_setup(
        "ws-stop",
        &format!("[admin]\ngrpc = \"{grpc}\"\n"),
        "shutdown_timeout = \"300ms\"\n",
        "websocket_idle = \"60s\"",
    );
    let url = format!("ws://{front}/chat");
    // Three messages, then up to 20 s waiting for the close.
    let client = std::thread::spawn(move || peer_client(&["ws-client", &url, "3", "20"]));
    echoed_websocket(grpc);
    crate::cli::signal(&weir.0, rustix::process::Signal::TERM);
    ended_by_shutdown(&client.join().expect("client"), &out);
}

/// A WebSocket of a route a reload removed ends once the listener's
/// `shutdown_timeout` has passed, as a removed listener's would, whatever
/// its idle timeout, and its line says `shutdown`.
#[test]
fn a_removed_routes_websocket_ends_after_the_shutdown_timeout() {
    let backend = free_port();
    let _server = peer_server(&["ws-server", &backend.port().to_string()]);
    wait_connectable(backend);
    let (front, grpc) = (free_port(), free_port());
    let config = |route: &str| {
        format!(
            "[admin]\ngrpc = \"{grpc}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\nshutdown_timeout = \"300ms\"\n\
             [[listeners.routes]]\nname = \"{route}\"\nmode = \"l7\"\n\
             timeouts = {{ websocket_idle = \"60s\" }}\n\
             [[listeners.routes.http]]\nname = \"ws\"\npool = \"ws\"\n\
             [[pools]]\nname = \"ws\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
        )
    };
    let file = crate::cli::temp_config("ws-removed-route", &config("app"));
    let mut cmd = crate::cli::weir();
    cmd.args(["run", "--config"]).arg(&file);
    let (weir, out) = crate::cli::start_weir(cmd);
    let url = format!("ws://{front}/chat");
    // Three messages, then up to 20 s waiting for the close.
    let client = std::thread::spawn(move || peer_client(&["ws-client", &url, "3", "20"]));
    echoed_websocket(grpc);
    std::fs::write(&*file, config("other")).expect("rewrite");
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    ended_by_shutdown(&client.join().expect("client"), &out);
}

/// A WebSocket whose upgrade was still being answered when its route was
/// removed gets the rest of the `shutdown_timeout` counted from the removal,
/// not a whole one from when its relay began (its close once came up to
/// twice the timeout late). The backend answers 2 s after the removal, 2 s
/// before the stop: a margin no busy machine eats.
#[test]
fn a_websocket_upgraded_during_its_routes_removal_ends_on_time() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    // Answers the upgrade 2 s after the route's removal, then holds the
    // connection.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = listener.local_addr().expect("addr");
    let (came, asked) = std::sync::mpsc::channel();
    let (go, removed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let _ = came.send(());
        if removed.recv_timeout(Duration::from_secs(20)).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
        let head = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                    Upgrade: websocket\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        let mut buf = [0u8; 1024];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let front = free_port();
    let config = |route: &str| {
        format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\nshutdown_timeout = \"4s\"\n\
             [[listeners.routes]]\nname = \"{route}\"\nmode = \"l7\"\n\
             timeouts = {{ websocket_idle = \"60s\" }}\n\
             [[listeners.routes.http]]\nname = \"ws\"\npool = \"ws\"\n\
             [[pools]]\nname = \"ws\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        )
    };
    let file = crate::cli::temp_config("ws-upgrade-removed", &config("app"));
    let mut cmd = crate::cli::weir();
    cmd.args(["run", "--config"]).arg(&file);
    let (weir, out) = crate::cli::start_weir(cmd);
    let mut client = TcpStream::connect(front).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        client,
        "GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .expect("upgrade");
    asked
        .recv_timeout(Duration::from_secs(20))
        .expect("the upgrade reaches the backend");
    std::fs::write(&*file, config("other")).expect("rewrite");
    let before = Instant::now();
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    go.send(()).expect("the backend waits");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let took = before.elapsed();
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // 4 s after the removal; it once came 4 s after the relay began, 6 s
    // after the removal.
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_millis(5500),
        "closed {took:?} after the reload"
    );
    let line = wait_line(&out, "\"path\":\"/chat\"");
    assert!(line.contains("\"reason\":\"shutdown\""), "{line}");
}

/// A stream of server-sent events reaches the client event by event, as
/// the backend sends them, not when the response ends. The backend's
/// pauses are longer than `timeouts.send`, which counts only the client's.
#[test]
fn server_sent_events_arrive_one_by_one() {
    let backend = free_port();
    let _server = peer_server(&["sse-server", &backend.port().to_string()]);
    wait_connectable(backend);
    let front = free_port();
    let (_weir, _out) = start(
        "sse",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ send = \"200ms\" }}\n\
             [[listeners.routes.http]]\nname = \"sse\"\npool = \"sse\"\n\
             [[pools]]\nname = \"sse\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let r = peer_client(&["sse-client", &front.to_string(), "/events"]);
    let at: Vec<f64> = r["arrivals"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    assert_eq!(at.len(), 3, "{r}");
    // The backend waits 1 s between events.
    assert!(at[1] - at[0] > 0.5 && at[2] - at[1] > 0.5, "{at:?}");
    // The same over HTTP/2, where a connection's writes are gathered per
    // turn of its task: each event still leaves as it comes.
    let mut h2 = crate::http::H2Client::connect(front);
    let at = h2.event_arrivals("/events", 3).expect("the h2c stream");
    assert_eq!(at.len(), 3, "{at:?}");
    let gap = Duration::from_millis(500);
    assert!(at[1] - at[0] > gap && at[2] - at[1] > gap, "{at:?}");
}

/// `Expect: 100-continue`: weir lets the client send its body at once
/// instead of making it wait out its timeout.
#[test]
fn expect_continue_does_not_stall_the_upload() {
    let backend = raw_backend(None, Duration::ZERO);
    let front: SocketAddr = free_port();
    let (_weir, _out) = start(
        "continue",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    let began = Instant::now();
    let (status, body, _) = curl(
        &[
            "--http1.1",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "5",
            "-d",
            &"z".repeat(2048),
        ],
        &format!("http://{front}/up"),
    );
    assert_eq!(status, 200);
    assert!(body.ends_with("body=2048"), "{body}");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
}

/// A backend that reads one request head and answers `answer`, then
/// echoes what comes, holding the connection open until its peer closes.
fn answering_backend(answer: &'static [u8]) -> SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = s.write_all(answer);
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A WebSocket and a never-ending event stream to backends an operator
/// disables end at the pools' `drain_timeout`, as their l4 connections
/// would (reason `drain_timeout`), rather than go on for good.
#[test]
fn streams_and_websockets_end_at_the_drain_timeout_of_a_disabled_backend() {
    use std::io::{Read, Write};
    let ws = answering_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    );
    let sse = answering_backend(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
          f\r\ndata: event 0\n\n\r\n",
    );
    let (front, grpc) = (free_port(), free_port());
    let (_weir, out) = start(
        "drain-streams",
        &format!(
            "[admin]\ngrpc = \"{grpc}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"ws\"\npool = \"ws\"\n\
             match = {{ path_prefix = \"/ws\" }}\n\
             [[listeners.routes.http]]\nname = \"sse\"\npool = \"sse\"\n\
             [[pools]]\nname = \"ws\"\ndrain_timeout = \"500ms\"\n[pools.health]\ntype = \"none\"\n\
             [[pools.backends]]\nname = \"w\"\naddress = \"{ws}\"\n\
             [[pools]]\nname = \"sse\"\ndrain_timeout = \"500ms\"\n[pools.health]\ntype = \"none\"\n\
             [[pools.backends]]\nname = \"s\"\naddress = \"{sse}\"\n"
        ),
    );
    let head_of = |c: &mut std::net::TcpStream, ends: &[u8]| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(ends) {
            assert_eq!(c.read(&mut byte).expect("head"), 1, "{head:?}");
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    };
    let mut w = std::net::TcpStream::connect(front).expect("connect");
    w.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .expect("request");
    let head = head_of(&mut w, b"\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    w.write_all(b"ping").expect("send");
    let mut echo = [0u8; 4];
    w.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"ping");
    let mut s = std::net::TcpStream::connect(front).expect("connect");
    s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let first = head_of(&mut s, b"event 0\n\n");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    for (pool, backend) in [("ws", "w"), ("sse", "s")] {
        let (code, _, err) = crate::control::text(&crate::control::ctl(
            grpc,
            None,
            &["backend", "disable", pool, backend],
        ));
        assert_eq!(code, 0, "{err}");
    }
    // Both are closed by weir, not by the backends (which hold on).
    for c in [&mut w, &mut s] {
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(!rest.ends_with(b"0\r\n\r\n"), "ended as complete: {rest:?}");
    }
    // Their lines come in either order.
    let mut lines = Vec::new();
    while lines.len() < 2 {
        lines.push(wait_line(&out, "\"path\":\"/"));
    }
    for path in ["/ws", "/events"] {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("\"path\":\"{path}\"")))
            .unwrap_or_else(|| panic!("no line for {path}: {lines:?}"));
        assert!(line.contains("\"reason\":\"drain_timeout\""), "{line}");
    }
}
