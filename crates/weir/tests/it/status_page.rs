//! The admin HTTP endpoint's JSON API, event stream and status page against
//! a running weir: every answer checked against the served OpenAPI document
//! (openapi-spec-validator, jsonschema), the page driven in headless Chromium
//! (Playwright with Debian's chromium), `/readyz` during the first probe
//! round, and a slow event reader cut off. The Python side is
//! tests/it/admin_peers.py.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::{
    DEADLINE, echo_backend, free_port, http_get, run_weir, silent_backend, temp_config, test_dir,
};

const TOKEN: &str = "page-token-0123456789abcdef";

fn peers() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/admin_peers.py")
}

/// `python3 admin_peers.py ARGS`, bounded in time: the JSON it prints.
fn peer(args: &[&str]) -> serde_json::Value {
    let out = Command::new("timeout")
        .args(["120", "python3"])
        .arg(peers())
        .args(args)
        .output()
        .expect("python3 (run scripts/test.sh, which installs playwright and jsonschema)");
    assert!(
        out.status.success(),
        "admin_peers.py {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "admin_peers.py {args:?} printed {}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A config with the admin HTTP endpoint on `admin`, a token, the name
/// `weir.example` to answer to, listener
/// `front` and pool `db` with backends `a` and `b`.
fn config(dir: &Path, admin: SocketAddr, a: SocketAddr, b: SocketAddr, health: &str) -> String {
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write token");
    format!(
        "[admin]\nhttp = \"{admin}\"\ntoken_file = {token:?}\nhosts = [\"weir.example\"]\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"db\"\n\
         [[pools]]\nname = \"db\"\nmax_connections_per_backend = 50\n{health}\n\
         [[pools.backends]]\nname = \"a\"\naddress = \"{a}\"\n\
         [[pools.backends]]\nname = \"b\"\naddress = \"{b}\"\n",
        token = token.display().to_string(),
    )
}

#[test]
fn every_answer_matches_the_openapi_document() {
    let dir = test_dir("openapi");
    let admin = free_port();
    let file = temp_config(
        "openapi",
        &config(&dir, admin, echo_backend(), echo_backend(), ""),
    );
    let (_weir, _out) = run_weir(&file);
    let report = peer(&[
        "openapi",
        &admin.to_string(),
        TOKEN,
        &file.display().to_string(),
    ]);
    assert!(report["checked"].as_u64().unwrap_or(0) >= 30, "{report}");
}

#[test]
fn the_status_page_follows_backends_live_and_changes_need_the_token() {
    let dir = test_dir("page");
    let (admin, a, b) = (free_port(), free_port(), free_port());
    let health = "[pools.health]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1\n";
    let file = temp_config("page", &config(&dir, admin, a, b, health));
    let (_weir, _out) = run_weir(&file);
    // The endpoint answers a name listed in admin.hosts, and no other, token
    // or not (reads need none: a rebinding page could read them).
    for (host, status) in [
        ("weir.example:9900", "HTTP/1.1 200"),
        ("other.example:9900", "HTTP/1.1 421"),
    ] {
        let mut s = TcpStream::connect(admin).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        write!(
            s,
            "GET /api/v1/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with(status), "{host}: {answer}");
    }
    let shot = dir.join("status-page.png");
    let report = peer(&[
        "browser",
        &admin.to_string(),
        TOKEN,
        &a.port().to_string(),
        &b.port().to_string(),
        &shot.display().to_string(),
    ]);
    for step in [
        "saw_down",
        "saw_up_again",
        "drained_with_token",
        "hidden_tab_lets_go",
        "refused_stream_followed_again",
    ] {
        assert_eq!(report[step], true, "{report}");
    }
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

#[test]
fn readyz_says_503_until_the_first_probe_round_is_done() {
    let dir = test_dir("readyz");
    let admin = free_port();
    let health =
        "[pools.health]\ntype = \"http\"\npath = \"/\"\ninterval = \"5s\"\ntimeout = \"3s\"\n";
    let file = temp_config(
        "readyz",
        &config(&dir, admin, silent_backend(), silent_backend(), health),
    );
    let mut cmd = crate::cli::weir();
    cmd.args(["run", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn weir");
    let out = crate::cli::lines(&mut child);
    let _weir = crate::cli::Running::new(child);
    let began = Instant::now();
    // The admin endpoint answers while the probes wait for their timeout.
    let first = loop {
        if let Ok(s) = TcpStream::connect(admin) {
            drop(s);
            break http_get(admin, "/readyz");
        }
        assert!(
            began.elapsed() < DEADLINE,
            "the admin endpoint never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(first.starts_with("HTTP/1.1 503"), "{first}");
    assert!(first.contains("first probe round"), "{first}");
    assert!(http_get(admin, "/healthz").starts_with("HTTP/1.1 200"));
    let api = http_get(admin, "/api/v1/status");
    assert!(api.starts_with("HTTP/1.1 503"), "{api}");
    assert!(api.contains("\"code\":\"unavailable\""), "{api}");
    crate::cli::wait_line(&out, "weir started");
    let after = http_get(admin, "/readyz");
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");
    assert!(
        began.elapsed() >= Duration::from_secs(2),
        "the round should take the probe timeout: {:?}",
        began.elapsed()
    );
}

/// Reads one HTTP/1.1 answer with a Content-Length body; its status line.
fn read_answer(r: &mut BufReader<TcpStream>) -> String {
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header");
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("length");
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).expect("body");
    status
}

/// The value of a sample without labels in `/metrics`.
fn sample(admin: SocketAddr, name: &str) -> f64 {
    let body = http_get(admin, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn an_event_reader_that_does_not_read_is_cut_off() {
    let dir = test_dir("sse-slow");
    let admin = free_port();
    let file = temp_config(
        "sse-slow",
        &config(&dir, admin, echo_backend(), echo_backend(), ""),
    );
    let (_weir, _out) = run_weir(&file);

    // A reader with a small receive buffer that never reads.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(&admin.into()).expect("connect");
    let mut slow: TcpStream = socket.into();
    write!(slow, "GET /api/v1/events HTTP/1.1\r\nHost: {admin}\r\n\r\n").expect("write");
    let began = Instant::now();
    while sample(admin, "weir_admin_event_streams_active") < 1.0 {
        assert!(began.elapsed() < DEADLINE, "the stream never opened");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Changes make events, on one kept-alive connection.
    let mut changes = TcpStream::connect(admin).expect("connect");
    changes.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut answers = BufReader::new(changes.try_clone().expect("clone"));
    let mut buf = vec![0u8; 16 * 1024];
    let began = Instant::now();
    let mut sent = 0u32;
    while sample(admin, "weir_admin_event_streams_cut_total") < 1.0 {
        assert!(
            began.elapsed() < Duration::from_secs(60) && sent < 200_000,
            "the slow reader was never cut off ({sent} changes)"
        );
        for _ in 0..200 {
            let body = format!("{{\"weight\": {}}}", 2 + sent % 2);
            // One write: pieces would wait for delayed ACKs.
            let request = format!(
                "POST /api/v1/pools/db/backends/a/weight HTTP/1.1\r\nHost: {admin}\r\n\
                 Authorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            changes.write_all(request.as_bytes()).expect("write");
            let status = read_answer(&mut answers);
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            sent += 1;
        }
    }
    // Its connection is closed: what was buffered, then the end.
    slow.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut read = 0usize;
    loop {
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the cut reader's connection stayed open ({read} bytes read): {e}"),
        }
    }
    assert_eq!(sample(admin, "weir_admin_event_streams_active"), 0.0);
    // weir serves on.
    assert!(http_get(admin, "/healthz").starts_with("HTTP/1.1 200"));
    eprintln!("cut after {sent} changes; the reader had {read} bytes waiting");
}

/// A change without the right token is answered 401 at once: its body is
/// neither waited for nor read. With the token, a body past 16 KiB is 413.
#[test]
fn a_change_without_the_token_is_refused_before_its_body_comes() {
    let dir = test_dir("early-401");
    let admin = free_port();
    let file = temp_config(
        "early-401",
        &config(&dir, admin, echo_backend(), echo_backend(), ""),
    );
    let (_weir, _out) = run_weir(&file);
    let post = |auth: &str, length: usize, body: &[u8]| {
        let mut s = TcpStream::connect(admin).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        write!(
            s,
            "POST /api/v1/firewall/rules HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
        .expect("request");
        s.write_all(body).expect("body");
        read_answer(&mut BufReader::new(s))
    };
    for auth in ["", "Authorization: Bearer wrong-token\r\n"] {
        let status = post(auth, 100, b"");
        assert!(status.starts_with("HTTP/1.1 401"), "{auth:?}: {status}");
    }
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let status = post(&bearer, 20_000, &[b' '; 20_000]);
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
}
