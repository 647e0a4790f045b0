//! The command line: exit codes, messages, signals, the demo, real peers.
//! Each starts the real binary and talks to it over loopback, with deadlines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const DEADLINE: Duration = Duration::from_secs(15);

pub(crate) fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A test's scratch directory, removed with everything in it when the test
/// ends, however it ends; it derefs to the path it was made for (the
/// directory itself, or a file in it).
pub(crate) struct Scratch {
    dir: PathBuf,
    path: PathBuf,
}

impl Scratch {
    /// A fresh directory: what an earlier test process with the same PID left
    /// there (a state file, say) is removed first.
    pub(crate) fn new(name: String) -> Scratch {
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        Scratch {
            path: dir.clone(),
            dir,
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `text` written to `weir.toml` in a scratch directory of its own.
pub(crate) fn temp_config(name: &str, text: &str) -> Scratch {
    let mut scratch = Scratch::new(format!("weir-cli-{}-{name}", std::process::id()));
    scratch.path = scratch.dir.join("weir.toml");
    std::fs::write(&scratch.path, text).expect("write config");
    scratch
}

/// Stops a child we started (by its PID) when the test ends, however it ends,
/// then removes the scratch directory it was given, if any.
pub(crate) struct Running(pub(crate) Child, Option<Scratch>);

/// The resident memory of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
}

impl Running {
    pub(crate) fn new(child: Child) -> Running {
        Running(child, None)
    }

    /// Keeps `scratch` (the process's files) until the process is stopped.
    pub(crate) fn with(mut self, scratch: Scratch) -> Running {
        self.1 = Some(scratch);
        self
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn signal(child: &Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

pub(crate) fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "weir did not exit within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads stdout lines on a thread and hands them over a channel, so a test can
/// wait for a line with a deadline.
pub(crate) fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub(crate) fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line containing {needle:?}: {e}"),
        }
    }
}

/// A loopback port nothing listens on, for weir to bind. Picked below the
/// ephemeral range (32768 and up on Linux): a port from there can become the
/// local port of some concurrent test's client socket before weir binds it.
pub(crate) fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    // Tests run in processes of their own: start each at its own place.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
    for _ in 0..SPAN {
        let n = start.wrapping_add(NEXT.fetch_add(1, Relaxed));
        let port = u16::try_from(LOW + n % SPAN).expect("below 65536");
        if !reserve(port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("addr");
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Claims `port` for this test process for the rest of the test run: a port
/// found free can still be found free by a concurrent test process before
/// its weir binds it, so each port is handed out once per run, marked by a
/// file created exclusively in a directory named after nextest's run id (or
/// in `WEIR_TEST_PORTS_DIR`, which scripts/test.sh makes and removes after
/// the run). Outside nextest (one process) nothing needs marking.
fn reserve(port: u16) -> bool {
    let dir = match (
        std::env::var_os("WEIR_TEST_PORTS_DIR"),
        std::env::var("NEXTEST_RUN_ID"),
    ) {
        (Some(dir), Ok(_)) => PathBuf::from(dir),
        (None, Ok(run)) => std::env::temp_dir().join(format!("weir-test-ports-{run}")),
        (_, Err(_)) => return true,
    };
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(port.to_string()))
        .is_ok()
}

/// A backend that accepts and never answers: an HTTP probe of it takes its
/// whole timeout.
pub(crate) fn silent_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(s) = s else { break };
            held.push(s);
        }
    });
    a
}

/// A backend whose accept queue is full: the kernel drops the SYNs of
/// further connects, which wait until their timeout. Keep the first value
/// (the socket and the connections filling its queue) while it is used.
pub(crate) fn unanswering_backend() -> ((socket2::Socket, Vec<TcpStream>), SocketAddr) {
    let silent =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    silent
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    silent.listen(0).expect("listen");
    let addr = silent
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("address");
    let mut queued = Vec::new();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => queued.push(s),
            Err(_) => break,
        }
        assert!(queued.len() < 16, "the accept queue never filled");
    }
    ((silent, queued), addr)
}

/// A backend on loopback that runs `serve` on a thread of its own for each
/// connection.
pub(crate) fn thread_backend(serve: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            std::thread::spawn(move || serve(s));
        }
    });
    a
}

/// An echo backend on a thread.
pub(crate) fn echo_backend() -> SocketAddr {
    thread_backend(|mut s| {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// Starts `weir run` with a config file and waits until it serves; its stdout
/// lines come through the receiver.
pub(crate) fn run_weir(config: &Path) -> (Running, mpsc::Receiver<String>) {
    let mut cmd = weir();
    cmd.args(["run", "--config"]).arg(config);
    start_weir(cmd)
}

/// Spawns `cmd` (a `weir run`, maybe wrapped) and waits until weir serves.
pub(crate) fn start_weir(mut cmd: Command) -> (Running, mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn weir");
    let out = lines(&mut child);
    let child = Running::new(child);
    wait_line(&out, "weir started");
    (child, out)
}

/// An empty `POST path` over HTTP/1.1; the whole response.
/// A loopback server that hands each connection made to it over to the
/// test, unanswered: for a backend or health endpoint that goes silent
/// until the test writes.
pub(crate) fn holding_server() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, taken) = mpsc::channel();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            if tx.send(c).is_err() {
                return;
            }
        }
    });
    (addr, taken)
}

pub(crate) fn http_post(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

pub(crate) fn http_get(addr: SocketAddr, path: &str) -> String {
    http_get_over(TcpStream::connect(addr).expect("connect"), path)
}

/// `GET path` over `s`, then closed: the whole answer.
pub(crate) fn http_get_over(mut s: TcpStream, path: &str) -> String {
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn version_and_help_for_every_command() {
    let out = weir().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["demo", "--help"],
    ] {
        let out = weir().args(args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: weir"), "{args:?}: {text}");
    }
}

#[test]
fn check_accepts_every_example() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            // Certificate paths in the examples are relative to the root.
            let out = weir()
                .args(["check", "--config"])
                .arg(&path)
                .current_dir(repo_root())
                .output()
                .expect("run");
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
            n += 1;
        }
    }
    assert!(n >= 4, "examples found: {n}");
}

#[test]
fn check_rejects_bad_configs_with_the_key_path() {
    let cases = [
        (
            "[[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"127.0.0.1:1\"\nweight = 1200\n",
            "pools[0].backends[0].weight",
        ),
        ("[admin]\nhtp = \"127.0.0.1:1\"\n", "admin.htp"),
        (
            "[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:1\"]\n[[listeners.routes]]\nname = \"r\"\npool = \"nope\"\n",
            "listeners[0].routes[0].pool",
        ),
        // A name that does not resolve fails the check, as it would fail `run`.
        (
            "[[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"nowhere.invalid:5432\"\n",
            "pools[0].backends[0].address: cannot resolve \"nowhere.invalid:5432\"",
        ),
    ];
    for (i, (text, path)) in cases.iter().enumerate() {
        let file = temp_config(&format!("bad{i}"), text);
        let out = weir()
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(path), "expected {path} in: {err}");
    }
    let out = weir()
        .args(["check", "--config", "/nonexistent/weir.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/weir.toml"));
}

#[test]
fn run_stops_gracefully_on_sigterm_letting_a_connection_finish() {
    let backend = echo_backend();
    let front = free_port();
    let admin = free_port();
    let file = temp_config(
        "run",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"l\"\nbind = [\"{front}\"]\nshutdown_timeout = \"10s\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
        ),
    );
    let (mut child, out) = run_weir(&file);
    assert!(http_get(admin, "/readyz").starts_with("HTTP/1.1 200"));
    assert!(http_get(admin, "/healthz").starts_with("HTTP/1.1 200"));

    let mut conn = TcpStream::connect(front).expect("connect");
    conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
    conn.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).expect("echo");

    signal(&child.0, rustix::process::Signal::TERM);
    wait_line(&out, "SIGTERM received");
    // Not ready any more while the connection finishes, still alive.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let ready = http_get(admin, "/readyz");
        if ready.starts_with("HTTP/1.1 503") {
            assert!(ready.contains("shutting down"), "{ready}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still ready: {ready}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(http_get(admin, "/healthz").starts_with("HTTP/1.1 200"));
    // Still relaying after the signal, then the client ends the connection.
    conn.write_all(b"pong").expect("write after SIGTERM");
    conn.read_exact(&mut buf).expect("echo after SIGTERM");
    assert_eq!(&buf, b"pong");
    drop(conn);
    let access = wait_line(&out, "\"reason\":\"client_closed\"");
    for field in [
        "\"listener\":\"l\"",
        "\"route\":\"r\"",
        "\"backend\":\"echo\"",
        "\"bytes_to_backend\":8",
        "\"bytes_to_client\":8",
        "\"client\":\"127.0.0.1:",
        "\"duration_ms\":",
        "\"timestamp\":",
    ] {
        assert!(access.contains(field), "{field} missing in {access}");
    }
    let status = wait_exit(&mut child.0);
    assert_eq!(status.code(), Some(0));
}

/// Past `shutdown_timeout` a listener's connections are closed with the
/// reason `shutdown` wherever they are: relaying, still connecting to a
/// backend that does not answer (its `connect_timeout` far longer), or on
/// an `l7` route still sending the start of its HTTP/2 preface (its
/// `request_header` timeout far longer), or with a request at a backend
/// that has not answered (logged with the reason `shutdown`, not as a
/// client that left). weir exits then, not when those waits would have
/// ended.
#[test]
fn the_shutdown_timeout_also_ends_connections_still_connecting() {
    let backend = echo_backend();
    let (unanswering, silent_addr) = unanswering_backend();
    let (front, other, web, admin) = (free_port(), free_port(), free_port(), free_port());
    // An HTTP backend that takes requests and never answers.
    let (holding_addr, taken) = holding_server();
    let file = temp_config(
        "shutdown-connecting",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\nshutdown_timeout = \"300ms\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[listeners]]\nname = \"s\"\nbind = \"{other}\"\nshutdown_timeout = \"300ms\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"silent\"\n\
             [[listeners]]\nname = \"h\"\nbind = \"{web}\"\nshutdown_timeout = \"300ms\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             timeouts = {{ request_header = \"60s\" }}\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"hold\"\n\
             [[pools]]\nname = \"hold\"\n[[pools.backends]]\nname = \"h\"\naddress = \"{holding_addr}\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n\
             [[pools]]\nname = \"silent\"\nconnect_timeout = \"60s\"\n\
             [[pools.backends]]\nname = \"mute\"\naddress = \"{silent_addr}\"\n"
        ),
    );
    let (mut child, out) = run_weir(&file);
    let mut relaying = TcpStream::connect(front).expect("connect");
    relaying.set_read_timeout(Some(DEADLINE)).expect("timeout");
    relaying.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    relaying.read_exact(&mut buf).expect("echo");
    let mut connecting = TcpStream::connect(other).expect("connect");
    connecting
        .set_read_timeout(Some(DEADLINE))
        .expect("timeout");
    let mut waiting = TcpStream::connect(web).expect("connect");
    waiting.set_read_timeout(Some(DEADLINE)).expect("timeout");
    waiting.write_all(b"PRI * HTTP/2.0\r\n").expect("write");
    let mut asking = TcpStream::connect(web).expect("connect");
    asking.set_read_timeout(Some(DEADLINE)).expect("timeout");
    asking
        .write_all(b"GET /unanswered HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let _at_backend = taken
        .recv_timeout(DEADLINE)
        .expect("the request at the backend");
    let end = Instant::now() + DEADLINE;
    while !http_get(admin, "/api/v1/connections?listener=s").contains("\"state\":\"connecting\"")
        || !http_get(admin, "/api/v1/connections?listener=h").contains("\"state\":\"http\"")
    {
        assert!(Instant::now() < end, "never connecting and waiting");
        std::thread::sleep(Duration::from_millis(20));
    }

    signal(&child.0, rustix::process::Signal::TERM);
    for c in [&mut relaying, &mut connecting, &mut waiting, &mut asking] {
        // Closed by weir: EOF (or a reset), not the read timeout.
        let read = c.read(&mut buf);
        assert!(
            matches!(read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
            "{read:?}"
        );
    }
    let status = wait_exit(&mut child.0);
    assert_eq!(status.code(), Some(0));
    let mut seen = Vec::new();
    while let Ok(line) = out.recv_timeout(Duration::from_secs(1)) {
        if line.contains("\"reason\":\"shutdown\"") {
            seen.push(line);
        }
    }
    for listener in ["l", "s", "h"] {
        assert!(
            seen.iter()
                .any(|l| l.contains(&format!("\"listener\":\"{listener}\""))),
            "no shutdown line for {listener}: {seen:?}"
        );
    }
    assert!(
        seen.iter().any(|l| l.contains("\"path\":\"/unanswered\"")),
        "the unanswered request: {seen:?}"
    );
    drop(unanswering);
}

/// A second SIGTERM closes every connection at once, those of a listener a
/// reload removed (still in its `shutdown_timeout`) included, and weir exits.
#[test]
fn a_second_signal_closes_every_connection() {
    let backend = echo_backend();
    let (front, gone, admin) = (free_port(), free_port(), free_port());
    let listener = |name: &str, bind: SocketAddr| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"{bind}\"\nshutdown_timeout = \"1h\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n"
        )
    };
    let text = |listeners: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n{listeners}\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
        )
    };
    let file = temp_config(
        "second-signal",
        &text(&(listener("l", front) + &listener("gone", gone))),
    );
    let (mut child, out) = run_weir(&file);
    let open = |to: SocketAddr| {
        let mut c = TcpStream::connect(to).expect("connect");
        c.set_read_timeout(Some(DEADLINE)).expect("timeout");
        c.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).expect("echo");
        c
    };
    let mut kept = open(front);
    let mut left = open(gone);
    std::fs::write(&file, text(&listener("l", front))).expect("rewrite");
    signal(&child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    // The removed listener's connection goes on for its shutdown_timeout.
    left.write_all(b"pong").expect("write");
    let mut buf = [0u8; 4];
    left.read_exact(&mut buf).expect("echo after the reload");

    signal(&child.0, rustix::process::Signal::TERM);
    wait_line(&out, "SIGTERM received");
    signal(&child.0, rustix::process::Signal::TERM);
    for c in [&mut kept, &mut left] {
        let read = c.read(&mut buf);
        assert!(
            matches!(read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
            "{read:?}"
        );
    }
    assert_eq!(wait_exit(&mut child.0).code(), Some(0));
}

/// A listener a reload removes lets its connections go on until its own
/// `shutdown_timeout` runs out, then closes them with the reason
/// `shutdown`; the listener that stays (its timeout an hour) keeps its
/// connection.
#[test]
fn a_listener_a_reload_removes_closes_its_connections_at_its_shutdown_timeout() {
    let backend = echo_backend();
    let (front, gone, admin) = (free_port(), free_port(), free_port());
    let listener = |name: &str, bind: SocketAddr, grace: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"{bind}\"\nshutdown_timeout = \"{grace}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n"
        )
    };
    let text = |listeners: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n{listeners}\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
        )
    };
    let file = temp_config(
        "removed-listener",
        &text(&(listener("l", front, "1h") + &listener("gone", gone, "2s"))),
    );
    let (mut child, out) = run_weir(&file);
    let open = |to: SocketAddr| {
        let mut c = TcpStream::connect(to).expect("connect");
        c.set_read_timeout(Some(DEADLINE)).expect("timeout");
        c.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).expect("echo");
        c
    };
    let mut kept = open(front);
    let mut left = open(gone);
    std::fs::write(&file, text(&listener("l", front, "1h"))).expect("rewrite");
    signal(&child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    // Not closed by the reload itself: it still relays.
    left.write_all(b"pong").expect("write after the reload");
    let mut buf = [0u8; 4];
    left.read_exact(&mut buf).expect("echo after the reload");
    assert_eq!(&buf, b"pong");
    // Closed by weir once the 2 s run out: EOF (or a reset), not the read
    // timeout.
    let read = left.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "{read:?}"
    );
    let line = wait_line(&out, "\"reason\":\"shutdown\"");
    assert!(line.contains("\"listener\":\"gone\""), "{line}");
    assert!(line.contains("\"bytes_to_backend\":8"), "{line}");
    // The listener that stays is not touched.
    kept.write_all(b"more").expect("write on the kept listener");
    kept.read_exact(&mut buf)
        .expect("echo on the kept listener");
    assert_eq!(&buf, b"more");
    drop(kept);
    signal(&child.0, rustix::process::Signal::TERM);
    assert_eq!(wait_exit(&mut child.0).code(), Some(0));
}

/// On SIGTERM the gRPC control API stops at once: a `weir watch` ends with
/// exit code 3, an operator command then finds no weir (3 too) while an established connection still
/// relays and `/healthz` still answers 200.
#[test]
fn sigterm_stops_the_control_api_while_connections_drain() {
    let backend = echo_backend();
    let (front, admin, grpc) = (free_port(), free_port(), free_port());
    let file = temp_config(
        "grpc-stop",
        &format!(
            "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n\
             [[listeners]]\nname = \"l\"\nbind = [\"{front}\"]\nshutdown_timeout = \"10s\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
        ),
    );
    let (mut child, out) = run_weir(&file);
    let status = || crate::control::text(&crate::control::ctl(grpc, None, &["status"]));
    let (code, _, err) = status();
    assert_eq!(code, 0, "the control API serves before the signal: {err}");

    let mut conn = TcpStream::connect(front).expect("connect");
    conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
    conn.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).expect("echo");

    // A misspelt pool is no pool to watch.
    let (code, _, err) = crate::control::text(&crate::control::ctl(
        grpc,
        None,
        &["watch", "--pool", "nosuch"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no pool \"nosuch\""), "{err}");
    // A follower of the events is told that weir stops, not ended as if
    // all was well.
    let mut watch = weir()
        .args(["watch", "--admin", &grpc.to_string()])
        .env_remove("WEIR_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir watch");
    let said = {
        let err = watch.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let mut watch = Running::new(watch);
    wait_line(&said, "waiting for events");

    signal(&child.0, rustix::process::Signal::TERM);
    wait_line(&out, "SIGTERM received");
    assert_eq!(wait_exit(&mut watch.0).code(), Some(3));
    wait_line(&said, "weir is stopping");
    let end = Instant::now() + DEADLINE;
    loop {
        let (code, _, err) = status();
        if code == 3 {
            assert!(
                err.contains(&format!("cannot reach weir at {grpc}")),
                "{err}"
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "the control API still answers: {code} {err}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(http_get(admin, "/healthz").starts_with("HTTP/1.1 200"));
    conn.write_all(b"pong").expect("write after SIGTERM");
    conn.read_exact(&mut buf).expect("echo after SIGTERM");
    assert_eq!(&buf, b"pong");
    drop(conn);
    assert_eq!(wait_exit(&mut child.0).code(), Some(0));
}

#[test]
fn run_fails_clearly_when_the_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let file = temp_config(
        "taken",
        &format!(
            "[admin]\nhttp = \"{addr}\"\n[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.2:0\"]\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"127.0.0.1:9\"\n"
        ),
    );
    let out = weir()
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.http") && err.contains(&addr.to_string()),
        "{err}"
    );
}

/// A second weir (or demo) on the same addresses is refused with one clear
/// message instead of splitting the traffic with the first one.
#[test]
fn a_second_weir_on_the_same_addresses_is_refused() {
    let (admin, grpc) = (free_port(), free_port());
    let args = |extra: &[&str]| {
        let mut a = vec![
            "demo".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--admin".to_owned(),
            admin.to_string(),
            "--grpc".to_owned(),
            grpc.to_string(),
        ];
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let mut first = weir()
        .args(args(&[]))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = lines(&mut first);
    let mut first = Running::new(first);
    wait_line(&out, "Proxy: http://");
    let second = weir().args(args(&[])).output().expect("run");
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(err.matches("in use").count(), 1, "{err}");
    assert!(
        err.contains(&format!("admin.http: {admin} is in use by another process"))
            && err.contains("--listen, --admin and --grpc"),
        "{err}"
    );
    // `weir run` says how to take over on purpose.
    let file = temp_config(
        "second",
        &format!(
            "[admin]\ngrpc = \"{grpc}\"\n[[listeners]]\nname = \"l\"\nbind = [\"127.0.0.1:0\"]\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"127.0.0.1:9\"\n"
        ),
    );
    let run = weir()
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains(&format!("admin.grpc: {grpc} is in use"))
            && err.contains("weir run --upgrade"),
        "{err}"
    );
    signal(&first.0, rustix::process::Signal::INT);
    assert_eq!(wait_exit(&mut first.0).code(), Some(0));
}

/// A second weir started while the first runs its first probe round (bound,
/// not listening yet, so the port looks free to any bind the kernel offers)
/// is refused too: it would otherwise bind beside the first (SO_REUSEPORT)
/// and take half of the connections. The first one then serves alone.
#[test]
fn a_second_weir_during_the_first_ones_probe_round_is_refused() {
    // The first probe round waits out its 8 s timeout on a backend that
    // never answers: time enough for the second start.
    let backend = silent_backend();
    let front = free_port();
    let file = temp_config(
        "probe-round-twin",
        &format!(
            "[[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[pools.health]\ntype = \"http\"\ntimeout = \"8s\"\n\
             [[pools.backends]]\nname = \"b\"\naddress = \"{backend}\"\n"
        ),
    );
    let mut first = weir()
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = lines(&mut first);
    let first = Running::new(first);
    // Bound and claimed: the claim shows in the kernel's list of Unix
    // sockets (abstract names start with '@').
    let name = format!("@weir:tcp:{front}");
    let end = Instant::now() + DEADLINE;
    while !std::fs::read_to_string("/proc/net/unix")
        .is_ok_and(|t| t.lines().any(|l| l.ends_with(&name)))
    {
        assert!(Instant::now() < end, "the first weir never claimed {front}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = weir()
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(
        !out.try_iter().any(|l| l.contains("weir started")),
        "the first weir was to be in its probe round still"
    );
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!(
            "listeners[0] (l): cannot listen on {front}: another weir serves this address or is starting on it"
        )) && err.contains("weir run --upgrade"),
        "{err}"
    );
    assert_eq!(err.matches("another weir").count(), 1, "said once: {err}");
    wait_line(&out, "weir started");
    assert!(TcpStream::connect(front).is_ok(), "the first one serves");
    drop(first);
}

/// `weir run --upgrade` with no weir to replace (a unit that always passes
/// it) listens on its admin port at once, as any start does: `/readyz`
/// says "starting" through its first probe round.
#[test]
fn an_upgrade_with_nothing_to_replace_answers_on_its_admin_port_while_it_starts() {
    let backend = silent_backend();
    let (front, admin) = (free_port(), free_port());
    let file = temp_config(
        "upgrade-alone",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[pools.health]\ntype = \"http\"\ntimeout = \"8s\"\n\
             [[pools.backends]]\nname = \"b\"\naddress = \"{backend}\"\n"
        ),
    );
    let mut child = weir()
        .args(["run", "--upgrade", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = lines(&mut child);
    let _weir = Running::new(child);
    wait_connectable(admin);
    let ready = http_get(admin, "/readyz");
    assert!(
        !out.try_iter().any(|l| l.contains("weir started")),
        "weir was to be in its probe round still"
    );
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("starting"),
        "{ready}"
    );
}

/// The demo's failover: its printed command makes demo-b's health check
/// fail, weir takes demo-b out, and the recover command brings it back.
#[test]
fn the_demo_shows_a_failover_and_its_recovery() {
    let mut child = weir()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = lines(&mut child);
    let mut child = Running::new(child);
    let proxy: SocketAddr = wait_line(&out, "Proxy: http://")
        .trim()
        .trim_start_matches("Proxy: http://")
        .trim_end_matches('/')
        .parse()
        .expect("proxy address");
    let url_of = |line: &str| -> SocketAddr {
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("a url");
        url.trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .expect("backend address")
    };
    let page = url_of(&wait_line(&out, "Status page"));
    let grpc: SocketAddr = wait_line(&out, "weir watch --admin")
        .split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .parse()
        .expect("grpc address");
    // Printed in this order: the proxy, the commands to watch, the failover.
    let fail = url_of(&wait_line(&out, "/fail"));
    let names = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let resp = http_get(proxy, "/");
                let body = resp
                    .rsplit("\r\n\r\n")
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                body.split_whitespace()
                    .nth(2)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    assert!(names(4).contains(&"demo-b".to_owned()));
    assert!(http_post(fail, "/fail").starts_with("HTTP/1.1 200"));
    let deadline = std::time::Instant::now() + DEADLINE;
    while names(4).contains(&"demo-b".to_owned()) {
        assert!(std::time::Instant::now() < deadline, "demo-b still serves");
    }
    let backends = weir()
        .args(["backends", "demo", "-o", "json", "--admin"])
        .arg(grpc.to_string())
        .output()
        .expect("weir backends");
    let v: serde_json::Value = serde_json::from_slice(&backends.stdout).expect("json");
    let b = v
        .as_array()
        .and_then(|a| a.iter().find(|b| b["name"] == "demo-b"))
        .expect("demo-b");
    assert_eq!(b["health"], "down", "{b}");
    // The printed status page, and the JSON API it reads, say so too.
    assert!(http_get(page, "/").contains("<title>weir status</title>"));
    let api = http_get(page, "/api/v1/pools/demo/backends/demo-b");
    assert!(api.contains("\"health\":\"down\""), "{api}");
    assert!(http_post(fail, "/recover").starts_with("HTTP/1.1 200"));
    while !names(4).contains(&"demo-b".to_owned()) {
        assert!(
            std::time::Instant::now() < deadline,
            "demo-b did not come back"
        );
    }
    signal(&child.0, rustix::process::Signal::INT);
    assert_eq!(wait_exit(&mut child.0).code(), Some(0));
}

#[test]
fn demo_serves_through_the_proxy_and_stops_on_sigint() {
    let mut child = weir()
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = lines(&mut child);
    let mut child = Running::new(child);
    let line = wait_line(&out, "Proxy: http://");
    let addr: SocketAddr = line
        .trim()
        .trim_start_matches("Proxy: http://")
        .trim_end_matches('/')
        .parse()
        .expect("proxy address");
    let mut names = Vec::new();
    for _ in 0..4 {
        let resp = http_get(addr, "/");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let body = resp.rsplit("\r\n\r\n").next().unwrap_or_default();
        names.push(
            body.split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_string(),
        );
    }
    // Weights 2:1:1, smooth: a, b, c, a.
    assert_eq!(names, ["demo-a", "demo-b", "demo-c", "demo-a"]);
    signal(&child.0, rustix::process::Signal::INT);
    assert_eq!(wait_exit(&mut child.0).code(), Some(0));
}

/// Runs a real nginx (Debian package) as two HTTP backends and a real curl as the
/// client, with weir in between: a 3 MiB file arrives intact, and requests follow
/// the configured weights.
#[test]
fn nginx_backends_and_curl_client_through_weir() {
    let curl =
        which("curl").expect("curl is not installed: run scripts/test.sh, which installs it");
    let dir = test_dir("nginx");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(www.join("big.bin"), &big).expect("big file");
    let (p1, p2) = (free_port(), free_port());
    let nginx = start_nginx(
        &dir,
        &format!(
            "server {{ listen {p1}; root {www}; location = /who {{ return 200 \"nginx-1\\n\"; }} }}\n\
             server {{ listen {p2}; root {www}; location = /who {{ return 200 \"nginx-2\\n\"; }} }}",
            www = www.display()
        ),
    );
    for p in [p1, p2] {
        wait_connectable(p);
    }

    let front = free_port();
    let file = temp_config(
        "nginx",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = [\"{front}\"]\n\
             [[listeners.routes]]\nname = \"all\"\npool = \"nginx\"\n\
             [[pools]]\nname = \"nginx\"\n\
             [[pools.backends]]\nname = \"n1\"\naddress = \"{p1}\"\nweight = 3\n\
             [[pools.backends]]\nname = \"n2\"\naddress = \"{p2}\"\nweight = 1\n"
        ),
    );
    // Held so the reader thread keeps draining weir's stdout.
    let (mut child, _out) = run_weir(&file);

    let got = Command::new(&curl)
        .args(["-sS", "--fail", "--max-time", "15"])
        .arg(format!("http://{front}/big.bin"))
        .output()
        .expect("curl");
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(got.stdout.len(), big.len());
    assert!(got.stdout == big, "the file changed on the way");

    // curl opens a new connection per URL here (--no-keepalive), so each request is
    // one pick: weights 3:1 over 8 connections.
    let mut who = Vec::new();
    for _ in 0..8 {
        let r = Command::new(&curl)
            .args(["-sS", "--fail", "--no-keepalive", "--max-time", "15"])
            .arg(format!("http://{front}/who"))
            .output()
            .expect("curl");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        who.push(String::from_utf8_lossy(&r.stdout).trim().to_string());
    }
    let n1 = who.iter().filter(|w| *w == "nginx-1").count();
    assert_eq!((n1, who.len() - n1), (6, 2), "{who:?}");

    signal(&child.0, rustix::process::Signal::TERM);
    assert_eq!(wait_exit(&mut child.0).code(), Some(0));
    drop(nginx);
}

/// A scratch directory for one test's files.
pub(crate) fn test_dir(tag: &str) -> Scratch {
    Scratch::new(format!("weir-it-{}-{tag}", std::process::id()))
}

/// Starts a real nginx (Debian package) in the foreground with `http_servers`
/// (`server { ... }` blocks) and every file it writes kept in `dir`; stopped by
/// PID when the returned handle drops. The caller waits for its ports.
pub(crate) fn start_nginx(dir: &Path, http_servers: &str) -> Running {
    let nginx =
        which("nginx").expect("nginx is not installed: run scripts/test.sh, which installs it");
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{ access_log off; client_body_temp_path {d}/t1; proxy_temp_path {d}/t2; fastcgi_temp_path {d}/t3;\n\
           uwsgi_temp_path {d}/t4; scgi_temp_path {d}/t5;\n{http_servers}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx conf");
    Running::new(
        Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    )
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(crate) fn wait_connectable(addr: SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < DEADLINE,
            "{addr} never accepted connections"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The inodes of the sockets listening on `addr` (IPv4), from
/// /proc/net/tcp: the same inode is the same socket.
fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    // The kernel prints the address's four bytes as one native-endian u32.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let mut inodes: Vec<u64> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st field 3 (0A: LISTEN), inode field 9.
            if f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A") {
                f.get(9)?.parse().ok()
            } else {
                None
            }
        })
        .collect();
    inodes.sort_unstable();
    inodes
}

/// A reload keeps the listening socket of an address that stays in the
/// config: a client connecting back to back through five reloads (each a
/// new configuration generation) is never refused, and the socket listening
/// on the address is the same one throughout.
#[test]
fn reloads_refuse_no_connection_on_a_listener_that_stays() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

    const RELOADS: usize = 5;
    let backend = echo_backend();
    let front = free_port();
    let text = |connect_timeout: &str| {
        format!(
            "[log]\nformat = \"json\"\naccess_log = false\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nconnect_timeout = \"{connect_timeout}\"\n\
             [[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
        )
    };
    let file = temp_config("reload-no-refusal", &text("2s"));
    let (mut child, out) = run_weir(&file);
    let sockets = listening_inodes(front);
    assert_eq!(
        sockets.len(),
        1,
        "sockets listening on {front}: {sockets:?}"
    );

    // One client, connecting back to back (a short pause keeps the count
    // to a few hundred).
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Relaxed) {
                match crate::systemd::echo_once(front) {
                    Ok(()) => {
                        served.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        failed.fetch_add(1, Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            errors
        })
    };
    let wait_for_more = |n: usize| {
        let end = Instant::now() + DEADLINE;
        let from = served.load(Relaxed);
        while served.load(Relaxed) < from + n {
            assert!(
                Instant::now() < end,
                "the client stalled ({} failed)",
                failed.load(Relaxed)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for_more(20);
    for i in 0..RELOADS {
        // A real change each time, so that each reload swaps in a new
        // generation; the listener stays as it was.
        let connect_timeout = if i % 2 == 0 { "3s" } else { "2s" };
        std::fs::write(&*file, text(connect_timeout)).expect("rewrite");
        signal(&child.0, rustix::process::Signal::HUP);
        let line = wait_line(&out, "config reloaded");
        assert!(
            line.contains(&format!("\"generation\":{}", i + 2)),
            "{line}"
        );
        assert_eq!(
            listening_inodes(front),
            sockets,
            "the socket on {front} was replaced by reload {}",
            i + 1
        );
        wait_for_more(10);
    }
    stop.store(true, Relaxed);
    let errors = client.join().expect("client");
    eprintln!(
        "{} connections through {RELOADS} reloads, {} failed",
        served.load(Relaxed),
        failed.load(Relaxed)
    );
    assert_eq!(failed.load(Relaxed), 0, "failed connections: {errors:?}");
    signal(&child.0, rustix::process::Signal::TERM);
    assert_eq!(wait_exit(&mut child.0).code(), Some(0));
}

/// `WEIR_CONFIG` names the file when `--config` is not given (a missing one
/// fails, naming it, rather than falling back to another file), `--config`
/// wins over it, and with neither `weir.toml` in the working directory is
/// read. `weir run` started from `WEIR_CONFIG` serves that file and reloads
/// it on SIGHUP.
#[test]
fn weir_config_names_the_file_when_config_is_not_given() {
    let valid = |pools: usize| {
        let mut text = "[log]\naccess_log = false\n\
                        [[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
                        [[listeners.routes]]\nname = \"r\"\npool = \"p0\"\n"
            .to_owned();
        for i in 0..pools {
            text.push_str(&format!(
                "[[pools]]\nname = \"p{i}\"\n[[pools.backends]]\naddress = \"127.0.0.1:9\"\n"
            ));
        }
        text
    };
    // The working directory's weir.toml has one pool, the named file two.
    let cwd = test_dir("weir-config-cwd");
    std::fs::write(cwd.join("weir.toml"), valid(1)).expect("write weir.toml");
    let named = temp_config("weir-config-named", &valid(2));
    let missing = cwd.join("missing").join("weir.toml");
    let check = |config: Option<&Path>, env: Option<&Path>| {
        let mut cmd = weir();
        cmd.arg("check").current_dir(&*cwd);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        match env {
            Some(e) => cmd.env("WEIR_CONFIG", e),
            None => cmd.env_remove("WEIR_CONFIG"),
        };
        let out = cmd.output().expect("weir check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let two_pools = format!(
        "{}: ok (1 listeners, 1 routes, 2 pools, 2 backends)",
        named.display()
    );

    let (code, stdout, stderr) = check(None, Some(&*named));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, two_pools);

    let (code, stdout, stderr) = check(None, Some(missing.as_path()));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");

    let (code, stdout, stderr) = check(Some(&*named), Some(missing.as_path()));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, two_pools);

    let (code, stdout, stderr) = check(None, None);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "weir.toml: ok (1 listeners, 1 routes, 1 pools, 1 backends)"
    );

    // `weir run` with WEIR_CONFIG alone, in a directory whose weir.toml
    // would serve elsewhere.
    let backend = echo_backend();
    let (front, added) = (free_port(), free_port());
    let text = |binds: &str| {
        format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"l\"\nbind = [{binds}]\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        )
    };
    let file = temp_config("weir-config-run", &text(&format!("\"{front}\"")));
    let mut cmd = weir();
    cmd.arg("run").env("WEIR_CONFIG", &*file).current_dir(&*cwd);
    let (mut child, out) = start_weir(cmd);
    crate::systemd::echo_once(front).expect("echo through the WEIR_CONFIG file's listener");
    assert!(
        TcpStream::connect(added).is_err(),
        "{added} listens before the reload"
    );
    std::fs::write(&*file, text(&format!("\"{front}\", \"{added}\""))).expect("rewrite");
    signal(&child.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded");
    crate::systemd::echo_once(added).expect("echo through the address the reload added");
    signal(&child.0, rustix::process::Signal::TERM);
    assert_eq!(wait_exit(&mut child.0).code(), Some(0));
}

/// Access-log lines are written whatever `log.level` says: at `level =
/// "warn"` a relayed connection still writes its line, in the documented
/// text form (target `weir::access`, the fields in order), while info
/// lines such as `weir started` are left out.
#[test]
fn access_lines_are_written_at_level_warn_in_the_text_form() {
    let backend = echo_backend();
    let front = free_port();
    let file = temp_config(
        "access-warn",
        &format!(
            "[log]\nlevel = \"warn\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
        ),
    );
    let mut child = weir()
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let out = lines(&mut child);
    let mut child = Running::new(child);
    // At this level nothing says weir serves: connect until its listener
    // takes the connection (it is relayed once weir accepts).
    let end = Instant::now() + DEADLINE;
    let mut conn = loop {
        match TcpStream::connect(front) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < end, "{front} never listened: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let client = conn.local_addr().expect("local addr");
    conn.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping");
    drop(conn);

    let mut seen = Vec::new();
    let end = Instant::now() + DEADLINE;
    let line = loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = out
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no access-log line ({e}); got {seen:?}"));
        seen.push(line.clone());
        if line.contains("weir::access:") {
            break line;
        }
    };
    let fields = format!(
        " INFO weir::access: listener=web route=\"all\" client={client} backend=\"echo\" \
         bytes_to_backend=4 bytes_to_client=4 duration_ms="
    );
    assert!(line.contains(&fields), "{line}");
    assert!(
        line.ends_with(" reason=\"client_closed\" error=\"-\" tried=\"-\""),
        "{line}"
    );
    // It starts with the UTC time, RFC 3339.
    let stamp = line.split_whitespace().next().unwrap_or_default();
    assert!(
        stamp.len() >= 20 && stamp.as_bytes().get(10) == Some(&b'T') && stamp.ends_with('Z'),
        "{line}"
    );
    let duration: f64 = line
        .split(" duration_ms=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    assert!(
        (0.0..DEADLINE.as_secs_f64() * 1000.0).contains(&duration),
        "{line}"
    );

    signal(&child.0, rustix::process::Signal::TERM);
    assert_eq!(wait_exit(&mut child.0).code(), Some(0));
    // Everything weir wrote, up to its exit.
    while let Ok(line) = out.recv_timeout(DEADLINE) {
        seen.push(line);
    }
    let info: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains(" INFO ") && !l.contains(" INFO weir::access: "))
        .collect();
    assert!(info.is_empty(), "info lines at level warn: {info:?}");
    assert!(!seen.iter().any(|l| l.contains("weir started")), "{seen:?}");
}

/// The names of the threads of process `pid`, from /proc.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

/// `[runtime] worker_threads` is the number of the runtime's threads
/// (`weir-worker`): 5 runs five beside the main thread; 1 a single-threaded
/// event loop on the main thread, no other worker; 0 one per CPU the
/// process may run on, so the same under `taskset` to one CPU. Beside them
/// there is always the thread that writes the log (`weir-log`).
#[test]
fn worker_threads_sets_the_number_of_threads() {
    let backend = echo_backend();
    let text = |front: SocketAddr, threads: u32| {
        format!(
            "[log]\naccess_log = false\n[runtime]\nworker_threads = {threads}\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        )
    };
    let taskset = which("taskset").expect("taskset (util-linux) is not installed");
    // One CPU this process may run on: the first of its list ("0-3,8").
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let cpu = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| list.trim().split([',', '-']).next())
        .expect("Cpus_allowed_list")
        .to_owned();
    // (worker_threads, pinned to one CPU, weir-worker threads, all threads)
    for (threads, pinned, workers, all) in [(5, false, 5, 7), (1, false, 0, 2), (0, true, 0, 2)] {
        let front = free_port();
        let file = temp_config(&format!("workers-{threads}"), &text(front, threads));
        let mut cmd = if pinned {
            let mut c = Command::new(&taskset);
            c.arg("-c").arg(&cpu).arg(weir().get_program());
            c
        } else {
            weir()
        };
        cmd.args(["run", "--config"]).arg(&file);
        let (child, _out) = start_weir(cmd);
        crate::systemd::echo_once(front).expect("served");
        let pid = child.0.id();
        // A thread takes its name just after it starts: wait for the names.
        let end = Instant::now() + DEADLINE;
        loop {
            let names = thread_names(pid);
            let named = names.iter().filter(|n| *n == "weir-worker").count();
            let log = names.iter().filter(|n| *n == "weir-log").count();
            if (named, log, names.len()) == (workers, 1, all) {
                break;
            }
            assert!(
                Instant::now() < end,
                "worker_threads = {threads} (pinned: {pinned}): threads {names:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A reload compares `worker_threads` with the threads weir started, not
/// with the CPUs it may run on by then: started with 0 on one CPU (one
/// thread), then allowed two, a reload asking for 2 needs a restart and one
/// asking for 1 does not.
#[test]
fn a_reload_compares_worker_threads_with_the_threads_started() {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_owned();
    // The CPUs this process may run on, from "0-3,8".
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
        cpus.extend(a..=b);
    }
    if cpus.len() < 2 {
        eprintln!("one CPU only ({list}): an affinity cannot be widened here");
        return;
    }
    let taskset = which("taskset").expect("taskset (util-linux) is not installed");
    let (backend, admin, front) = (echo_backend(), free_port(), free_port());
    let text = |threads: u32| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n[runtime]\nworker_threads = {threads}\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        )
    };
    let file = temp_config("threads-started", &text(0));
    let mut cmd = Command::new(&taskset);
    cmd.arg("-c")
        .arg(cpus[0].to_string())
        .arg(weir().get_program())
        .args(["run", "--config"])
        .arg(&*file);
    let (child, _out) = start_weir(cmd);
    let pid = child.0.id().to_string();
    let both = format!("{},{}", cpus[0], cpus[1]);
    let widened = Command::new(&taskset)
        .args(["-a", "-p", "-c", &both, &pid])
        .output()
        .expect("taskset -p");
    assert!(widened.status.success(), "{widened:?}");
    let reload = |threads: u32| {
        std::fs::write(&*file, text(threads)).expect("write config");
        let answer = http_post(admin, "/api/v1/reload");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let r: serde_json::Value = serde_json::from_str(body).expect("json answer");
        r["need_restart"].clone()
    };
    assert_eq!(reload(2), serde_json::json!(["runtime.worker_threads"]));
    assert_eq!(reload(1), serde_json::json!([]));
    // 0 now stands for two CPUs: a restart would start two threads.
    assert_eq!(reload(0), serde_json::json!(["runtime.worker_threads"]));
}

/// `access_log` turned on by a reload reaches the next connections at
/// once, also at a `log.level` that keeps info lines out (the log filter is
/// set at start, when the access log was off).
#[test]
fn access_log_turned_on_by_a_reload_writes_at_level_warn() {
    let backend = echo_backend();
    let (front, admin) = (free_port(), free_port());
    let text = |on: bool| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nlevel = \"warn\"\naccess_log = {on}\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
        )
    };
    let file = temp_config("access-reloaded", &text(false));
    let mut child = weir()
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let out = lines(&mut child);
    let _child = Running::new(child);
    let ping = || {
        let end = Instant::now() + DEADLINE;
        let mut conn = loop {
            match TcpStream::connect(front) {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < end, "{front} never listened: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
        conn.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).expect("echo");
        conn.local_addr().expect("local addr")
    };
    let quiet = ping();
    std::fs::write(&*file, text(true)).expect("rewrite");
    wait_connectable(admin);
    assert!(http_post(admin, "/api/v1/reload").starts_with("HTTP/1.1 200"));
    let client = ping();
    let line = wait_line(&out, "weir::access:");
    assert!(line.contains(&format!("client={client} ")), "{line}");
    assert!(!line.contains(&format!("client={quiet} ")), "{line}");
}
