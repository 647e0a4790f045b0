//! The systemd notification protocol against a real `NOTIFY_SOCKET`: a
//! datagram socket the test binds, as systemd does for a `Type=notify`
//! unit. READY=1 comes once weir serves, RELOADING=1 (with MONOTONIC_USEC)
//! and READY=1 again around a reload, WATCHDOG=1 at half of WATCHDOG_USEC,
//! STOPPING=1 when shutdown begins.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::cli::{DEADLINE, echo_backend, free_port, signal, start_weir, temp_config, weir};

/// The next datagram whose text contains `needle`; the others are returned
/// too, in order, for the caller to look at.
pub(crate) fn wait_for(socket: &UnixDatagram, needle: &str, seen: &mut Vec<String>) -> String {
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < end,
            "no {needle:?} within {DEADLINE:?}; got {seen:?}"
        );
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(text.clone());
        if text.contains(needle) {
            return text;
        }
    }
}

/// A datagram socket where systemd's would be, in a directory of its own
/// (removed with the returned guard); `NOTIFY_SOCKET` is its path.
pub(crate) struct NotifySocket {
    pub(crate) dir: std::path::PathBuf,
    pub(crate) path: std::path::PathBuf,
    pub(crate) socket: UnixDatagram,
}

impl NotifySocket {
    pub(crate) fn bind(tag: &str) -> NotifySocket {
        let dir = std::env::temp_dir().join(format!("weir-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        NotifySocket { dir, path, socket }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn weir_tells_systemd_when_it_is_ready_reloading_and_stopping() {
    let notify = NotifySocket::bind("notify");
    let (path, socket) = (&notify.path, &notify.socket);
    let (front, backend, admin) = (free_port(), echo_backend(), free_port());
    let file = temp_config(
        "notify",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let mut cmd = weir();
    cmd.args(["run", "--config"])
        .arg(&file)
        .env("NOTIFY_SOCKET", path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID");
    let (child, _out) = start_weir(cmd);
    let mut seen = Vec::new();
    let ready = wait_for(socket, "READY=1", &mut seen);
    assert!(
        ready.contains("STATUS=serving: 1 listener(s), 1 pool(s), configuration generation 1"),
        "{ready}"
    );
    // Ready means serving: the listener accepts.
    std::net::TcpStream::connect(front).expect("the listener accepts once READY=1 is sent");
    // The watchdog is pinged at half of WATCHDOG_USEC.
    let began = Instant::now();
    wait_for(socket, "WATCHDOG=1", &mut seen);
    wait_for(socket, "WATCHDOG=1", &mut seen);
    assert!(began.elapsed() < Duration::from_secs(2), "{seen:?}");

    signal(&child.0, rustix::process::Signal::HUP);
    let reloading = wait_for(socket, "RELOADING=1", &mut seen);
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_usec = u64::try_from(now.tv_sec).expect("secs") * 1_000_000
        + u64::try_from(now.tv_nsec).expect("nsecs") / 1_000;
    assert!(
        usec <= now_usec && now_usec - usec < 10_000_000,
        "MONOTONIC_USEC {usec}, now {now_usec}"
    );
    let again = wait_for(socket, "READY=1", &mut seen);
    assert!(again.contains("configuration generation 2"), "{again}");
    // A reload through the API is no reload systemd asked for: the status
    // alone follows it.
    assert!(post(admin, "/api/v1/reload").starts_with("HTTP/1.1 200"));
    wait_for(socket, "configuration generation 3", &mut seen);

    // A broken file: the reload fails, the old configuration serves, and
    // systemd is told so.
    std::fs::write(&file, "[[listeners]]\nname = 1\n").expect("break the file");
    signal(&child.0, rustix::process::Signal::HUP);
    wait_for(socket, "RELOADING=1", &mut seen);
    let failed = wait_for(socket, "READY=1", &mut seen);
    assert!(
        failed.contains("STATUS=reload failed, the previous configuration serves"),
        "{failed}"
    );
    std::fs::write(&file, "[[listeners]]\nname = \"l\"\nbogus_key = 1\n").expect("break");
    assert!(!post(admin, "/api/v1/reload").starts_with("HTTP/1.1 200"));
    let failed = wait_for(socket, "bogus_key", &mut seen);
    assert!(
        failed.starts_with("STATUS=reload failed, the previous configuration serves"),
        "{failed}"
    );

    signal(&child.0, rustix::process::Signal::TERM);
    let stopping = wait_for(socket, "STOPPING=1", &mut seen);
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    drop(child);
}

/// The running (not zombie) processes started to take over from `pid`,
/// named by their environment.
fn successors(pid: u32) -> Vec<u32> {
    let marker = format!("WEIR_HANDOVER_FROM={pid}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_string_lossy().parse::<u32>().ok()?, e)))
        .filter(|(_, e)| {
            let running = std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
                st.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            });
            running
                && std::fs::read(e.path().join("environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// A weir told by a notification socket of the test's, ready, whose pool's
/// one backend (`b`) accepts and never answers: the HTTP probe of each
/// process's first round, its own and a new version's, waits out its 2 s
/// timeout. With `admin`, an admin HTTP endpoint there. Returns the socket,
/// the weir and its output, its listener's address and the messages seen so
/// far.
fn slow_to_start(
    tag: &str,
    admin: Option<std::net::SocketAddr>,
) -> (
    NotifySocket,
    (crate::cli::Running, std::sync::mpsc::Receiver<String>),
    std::net::SocketAddr,
    Vec<String>,
) {
    let notify = NotifySocket::bind(tag);
    // The HTTP probe of each process's first round waits out its 2 s
    // timeout.
    let backend = crate::cli::silent_backend();
    let front = free_port();
    let admin = admin.map_or_else(String::new, |a| format!("[admin]\nhttp = \"{a}\"\n"));
    let file = temp_config(
        tag,
        &format!(
            "{admin}[[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[pools.health]\ntype = \"http\"\ntimeout = \"2s\"\n\
             [[pools.backends]]\nname = \"b\"\naddress = \"{backend}\"\n"
        ),
    );
    let mut cmd = weir();
    cmd.args(["run", "--config"])
        .arg(&file)
        .env("NOTIFY_SOCKET", &notify.path);
    let (weir, out) = start_weir(cmd);
    let mut seen = Vec::new();
    wait_for(&notify.socket, "READY=1", &mut seen);
    (notify, (weir.with(file), out), front, seen)
}

/// A change through the admin API, as its status line: `POST path`.
fn post(admin: std::net::SocketAddr, path: &str) -> String {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .expect("answer");
    line.trim_end().to_owned()
}

/// The new version, stopped while it starts (an operator giving up on a
/// hung upgrade), says nothing to systemd: a STOPPING=1 from it, accepted
/// from any process of the unit, would stop the service, the running weir
/// with it. While it starts, the running one refuses changes and ignores a
/// SIGHUP (the new one read the state and config files already); once it
/// is gone, they are taken again.
#[test]
fn a_new_version_stopped_while_it_starts_leaves_the_service_alone() {
    let admin = free_port();
    let (notify, (old, out), front, mut seen) = slow_to_start("handover-give-up", Some(admin));
    let old_pid = old.0.id();
    signal(&old.0, rustix::process::Signal::USR2);
    let end = Instant::now() + DEADLINE;
    let new_pid = loop {
        if let Some(&pid) = successors(old_pid).first() {
            break pid;
        }
        assert!(Instant::now() < end, "no new version started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // In its first probe round the new one does not listen on the admin
    // port it shares: the running one answers every request, ready, and
    // refuses changes. Then the new one is stopped.
    for _ in 0..8 {
        let ready = crate::cli::http_get(admin, "/readyz");
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
        let answer = crate::cli::http_post(admin, "/api/v1/pools/p/backends/b/drain");
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("new version"),
            "{answer}"
        );
    }
    // A reload too: the new one read the file already.
    signal(&old.0, rustix::process::Signal::HUP);
    crate::cli::wait_line(&out, "SIGHUP ignored: a new version of weir is starting");
    let pid = rustix::process::Pid::from_raw(new_pid as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
    while !successors(old_pid).is_empty() {
        assert!(Instant::now() < end, "the new version still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.socket.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        !seen
            .iter()
            .any(|m| m.contains("STOPPING=1") || m.contains("MAINPID=")),
        "{seen:?}"
    );
    // The running one goes on, and takes changes again.
    assert!(std::net::TcpStream::connect(front).is_ok());
    assert_eq!(
        post(admin, "/api/v1/pools/p/backends/b/drain"),
        "HTTP/1.1 200 OK"
    );
    assert!(successors(old_pid).is_empty());
}

/// A config with listener `web` on `front` in front of an echo backend.
fn activated_config(tag: &str, front: std::net::SocketAddr, extra: &str) -> crate::cli::Scratch {
    temp_config(
        tag,
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\nshutdown_timeout = \"5s\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n{extra}\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            echo_backend()
        ),
    )
}

/// One client: connect to `front`, send `ping`, read it back, close.
pub(crate) fn echo_once(front: std::net::SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&front, DEADLINE)?;
    s.set_read_timeout(Some(DEADLINE))?;
    s.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    if &buf != b"ping" {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(())
}

/// systemd's own tool binds the socket (without SO_REUSEPORT, so a bind of
/// weir's would fail beside it) and passes it named: weir serves on it.
#[test]
fn weir_serves_on_a_socket_systemd_passes_by_name() {
    let Some(activate) = crate::cli::which("systemd-socket-activate") else {
        panic!("systemd-socket-activate is not installed: scripts/test.sh installs `systemd`");
    };
    let front = free_port();
    let file = activated_config("activate", front, "");
    let mut cmd = std::process::Command::new(activate);
    cmd.arg("--listen")
        .arg(front.to_string())
        .arg("--fdname=web")
        .arg(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::piped());
    // The tool starts weir when the first client connects.
    let mut child = cmd.spawn().expect("spawn");
    let out = crate::cli::lines(&mut child);
    let _weir = crate::cli::Running::new(child);
    crate::cli::wait_connectable(front);
    for _ in 0..3 {
        echo_once(front).expect("echo through the passed socket");
    }
    crate::cli::wait_line(&out, "weir started");

    // A name no listener has is refused at start, saying what to set.
    let other = free_port();
    let file = activated_config("activate-unknown", other, "");
    let stderr = refused_start(other, "weir.socket", &file);
    assert!(
        stderr.contains("systemd passed sockets named \"weir.socket\"")
            && stderr.contains("FileDescriptorName="),
        "{stderr}"
    );

    // A passed socket on another address than `bind` says is refused too.
    let (bound, elsewhere) = (free_port(), free_port());
    let file = activated_config("activate-elsewhere", elsewhere, "");
    let stderr = refused_start(bound, "web", &file);
    assert!(
        stderr.contains(&format!("on {bound}, which `bind` does not list")),
        "{stderr}"
    );
}

/// Runs weir under `systemd-socket-activate` with a socket on `addr` named
/// `name`, expecting it to refuse to start; returns its stderr.
fn refused_start(addr: std::net::SocketAddr, name: &str, file: &std::path::Path) -> String {
    use std::io::Read;
    let mut child = std::process::Command::new(
        crate::cli::which("systemd-socket-activate").expect("installed"),
    )
    .arg("--listen")
    .arg(addr.to_string())
    .arg(format!("--fdname={name}"))
    .arg(env!("CARGO_BIN_EXE_weir"))
    .args(["run", "--config"])
    .arg(file)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn");
    // The tool starts weir when the first client connects.
    crate::cli::wait_connectable(addr);
    let status = crate::cli::wait_exit(&mut child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(!status.success(), "weir started: {stderr}");
    stderr
}

/// What systemd does on `systemctl restart` of a socket-activated service: it
/// keeps the listening socket while one weir stops and the next starts, so
/// clients that connect in between wait in its backlog instead of being
/// refused. The test holds the socket and passes it to each weir the way
/// systemd does (descriptor 3, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES).
#[test]
fn a_restart_on_a_passed_socket_refuses_no_connection() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let front = socket.local_addr().expect("addr");
    let file = activated_config("restart", front, "");
    let start = || start_weir(passed(&socket, &file));
    let (mut first, _out) = start();

    // Clients connect back to back through the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Relaxed) {
                    match echo_once(front) {
                        Ok(()) => served.fetch_add(1, Relaxed),
                        Err(e) => {
                            errors.push(e.to_string());
                            failed.fetch_add(1, Relaxed)
                        }
                    };
                }
                errors
            })
        })
        .collect();
    let wait_for_more = |n: usize| {
        let end = Instant::now() + DEADLINE;
        let from = served.load(Relaxed);
        while served.load(Relaxed) < from + n {
            assert!(Instant::now() < end, "clients stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for_more(200);
    // Stop the first; start the second only once the first has exited, as
    // systemd does.
    signal(&first.0, rustix::process::Signal::TERM);
    let status = crate::cli::wait_exit(&mut first.0);
    assert!(status.success(), "{status}");
    let before = served.load(Relaxed);
    let (_second, _out) = start();
    wait_for_more(200);
    stop.store(true, Relaxed);
    let errors: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    let total = served.load(Relaxed);
    eprintln!(
        "{total} connections, {} after the first weir exited, {} failed",
        total - before,
        failed.load(Relaxed)
    );
    assert_eq!(failed.load(Relaxed), 0, "failed connections: {errors:?}");
}

/// SIGUSR2 when the new version cannot start (here: the file is broken by
/// then): the running weir says so and goes on serving.
#[test]
fn a_failed_handover_leaves_the_running_weir_serving() {
    let notify = NotifySocket::bind("handover");
    let (path, socket) = (&notify.path, &notify.socket);
    let front = free_port();
    let file = activated_config("handover-fails", front, "");
    let mut cmd = weir();
    cmd.args(["run", "--config"])
        .arg(&file)
        .env("NOTIFY_SOCKET", path);
    let (child, _out) = start_weir(cmd);
    let mut seen = Vec::new();
    wait_for(socket, "READY=1", &mut seen);
    std::fs::write(&file, "[[listeners]\n").expect("break the file");
    signal(&child.0, rustix::process::Signal::USR2);
    let failed = wait_for(socket, "upgrade failed", &mut seen);
    assert!(failed.contains("the previous version serves"), "{failed}");
    assert!(!seen.iter().any(|m| m.contains("MAINPID=")), "{seen:?}");
    echo_once(front).expect("still serving");
}

/// weir's program file in `dir`: weir started by that absolute path runs
/// that path's file on SIGUSR2.
fn own_weir(dir: &std::path::Path) -> std::path::PathBuf {
    let program = dir.join("weir");
    let built = env!("CARGO_BIN_EXE_weir");
    if std::fs::hard_link(built, &program).is_err() {
        std::fs::copy(built, &program).expect("copy weir");
    }
    program
}

/// Replaces `program` (renamed over, as a package upgrade does) by a "new
/// version" that only sleeps and never takes over.
fn make_it_sleep(program: &std::path::Path) {
    replace_by_script(program, "exec sleep 60");
}

/// Replaces `program` by a shell script running `body`.
fn replace_by_script(program: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let script = program.with_extension("new");
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&script, program).expect("replace the program file");
}

/// A new version that does not take over within `WEIR_UPGRADE_TIMEOUT`
/// (here the program file is by then a script that only sleeps) is stopped,
/// the running weir says so in its status and goes on serving, and no
/// process claims the service. A later attempt whose new version exits is
/// reported too (the stop of the first left every later exit unsaid).
#[test]
fn a_new_version_that_does_not_take_over_in_time_is_stopped() {
    let notify = NotifySocket::bind("handover-late");
    let front = free_port();
    let file = activated_config("handover-late", front, "");
    let program = own_weir(&notify.dir);
    let mut cmd = std::process::Command::new(&program);
    cmd.args(["run", "--config"])
        .arg(&file)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WEIR_UPGRADE_TIMEOUT", "1s");
    let (old, out) = start_weir(cmd);
    let old_pid = old.0.id();
    let mut seen = Vec::new();
    wait_for(&notify.socket, "READY=1", &mut seen);
    // The "new version": renamed over the file the running weir came from.
    make_it_sleep(&program);
    signal(&old.0, rustix::process::Signal::USR2);
    let end = Instant::now() + DEADLINE;
    while successors(old_pid).is_empty() {
        assert!(Instant::now() < end, "no new version started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let failed = wait_for(&notify.socket, "upgrade failed", &mut seen);
    assert!(failed.contains("did not take over within 1s"), "{failed}");
    assert!(failed.contains("the previous version serves"), "{failed}");
    crate::cli::wait_line(&out, "did not take over within 1s; stopping it");
    while !successors(old_pid).is_empty() {
        assert!(Instant::now() < end, "the new version still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !seen
            .iter()
            .any(|m| m.contains("MAINPID=") || m.contains("STOPPING=1")),
        "{seen:?}"
    );
    echo_once(front).expect("still serving");
    replace_by_script(&program, "exit 3");
    signal(&old.0, rustix::process::Signal::USR2);
    let failed = wait_for(&notify.socket, "exited", &mut seen);
    assert!(failed.contains("upgrade failed"), "{failed}");
    assert!(failed.contains("exit status: 3"), "{failed}");
    echo_once(front).expect("still serving");
}

/// A stop of the service (SIGTERM) while the new version SIGUSR2 started is
/// still starting: the running weir says STOPPING=1, stops the new one too,
/// and the new one never claims the service.
#[test]
fn a_stop_during_a_handover_stops_both() {
    let (notify, (mut old, _out), _front, mut seen) = slow_to_start("handover-stop", None);
    let old_pid = old.0.id();
    signal(&old.0, rustix::process::Signal::USR2);
    // The successor is in its first probe round now; stop the service.
    std::thread::sleep(Duration::from_millis(500));
    signal(&old.0, rustix::process::Signal::TERM);
    wait_for(&notify.socket, "STOPPING=1", &mut seen);
    let status = crate::cli::wait_exit(&mut old.0);
    assert!(status.success(), "{status}");
    // The successor (named by its environment) is gone too, without a
    // MAINPID= of its own.
    let end = Instant::now() + DEADLINE;
    while !successors(old_pid).is_empty() {
        assert!(Instant::now() < end, "the new version still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.socket.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(!seen.iter().any(|m| m.contains("MAINPID=")), "{seen:?}");
}

/// With sockets systemd passed, SIGUSR2 is refused, and logged saying to
/// use `systemctl restart`: a new process could not share those sockets.
/// No new version starts, so the running weir goes on serving and taking
/// changes (refused while a new version starts).
#[test]
fn sigusr2_is_refused_on_sockets_systemd_passed() {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let front = socket.local_addr().expect("addr");
    let admin = free_port();
    let file = activated_config(
        "usr2-activated",
        front,
        &format!("[admin]\nhttp = \"{admin}\"\n"),
    );
    let (weir, out) = start_weir(passed(&socket, &file));
    echo_once(front).expect("served on the passed socket");

    signal(&weir.0, rustix::process::Signal::USR2);
    let refused = crate::cli::wait_line(&out, "SIGUSR2 ignored");
    assert!(
        refused.contains("sockets systemd passed") && refused.contains("systemctl restart"),
        "{refused}"
    );
    assert!(
        successors(weir.0.id()).is_empty(),
        "a new version was started"
    );
    echo_once(front).expect("still serving");
    assert!(
        post(admin, "/api/v1/reload").starts_with("HTTP/1.1 200"),
        "a change is taken"
    );
}

/// `weir run --config file` given `socket` as systemd passes one named
/// "web": the socket becomes the shell's stdin, then descriptor 3 of weir,
/// which keeps the shell's PID for LISTEN_PID.
fn passed(socket: &std::net::TcpListener, file: &std::path::Path) -> std::process::Command {
    let fd = std::os::fd::OwnedFd::from(socket.try_clone().expect("dup"));
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(
            "exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web; \
             exec \"$0\" run --config \"$1\"",
        )
        .arg(env!("CARGO_BIN_EXE_weir"))
        .arg(file)
        .stdin(std::process::Stdio::from(fd));
    cmd
}

/// `packaging/upgrade-running`, the package's hand-over script, against a
/// real weir. systemd cannot run here: a `systemctl` on PATH answers
/// `show -p PROP --value UNIT` from files, and the test plays systemd's part
/// of the notification protocol (a `MAINPID=` makes that process the unit's
/// main process).
#[test]
fn the_packaged_upgrade_script_hands_a_running_weir_over() {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    let tools = crate::cli::test_dir("upgrade-script");
    let systemctl = tools.join("systemctl");
    std::fs::write(
        &systemctl,
        "#!/bin/sh\nd=$(dirname \"$0\")\n\
         case \"$1\" in\n\
         show) cat \"$d/$3\" 2>/dev/null || true ;;\n\
         restart) echo \"$2\" > \"$d/restarted\" ;;\n\
         *) exit 1 ;;\n\
         esac\n",
    )
    .expect("systemctl");
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = crate::cli::repo_root().join("packaging/upgrade-running");
    // Stopped by PID if the test fails while it waits.
    let start_script = || {
        crate::cli::Running::new(
            std::process::Command::new("sh")
                .arg(&script)
                .env("PATH", &path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run upgrade-running"),
        )
    };
    let finish = |mut run: crate::cli::Running| {
        let status = crate::cli::wait_exit(&mut run.0);
        let mut out = String::new();
        for pipe in [
            run.0.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
            run.0.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
        ]
        .into_iter()
        .flatten()
        {
            let _ = { pipe }.read_to_string(&mut out);
        }
        (status.code(), out)
    };
    // Whole or not at all: the script may read it meanwhile.
    let set = |prop: &str, value: &str| {
        let part = tools.join(format!("{prop}.part"));
        std::fs::write(&part, value).expect("prop");
        std::fs::rename(&part, tools.join(prop)).expect("prop");
    };

    // Not running: nothing to do.
    set("MainPID", "0\n");
    let (code, out) = finish(start_script());
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("is not running; nothing to hand over"),
        "{out}"
    );

    // Fed by socket units: restarted, not signalled.
    set("MainPID", "1\n");
    set("TriggeredBy", "weir-web.socket\n");
    let (code, out) = finish(start_script());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("restarting it"), "{out}");
    let restarted = std::fs::read_to_string(tools.join("restarted")).unwrap_or_default();
    assert_eq!(restarted.trim(), "weir.service");
    set("TriggeredBy", "");

    // Running: SIGUSR2, and the script waits for the new main process.
    let notify = NotifySocket::bind("upgrade-script");
    let front = free_port();
    let file = activated_config("upgrade-script", front, "");
    let mut cmd = weir();
    cmd.args(["run", "--config"])
        .arg(&file)
        .env("NOTIFY_SOCKET", &notify.path);
    let (mut old, _out) = start_weir(cmd);
    let mut seen = Vec::new();
    wait_for(&notify.socket, "READY=1", &mut seen);
    let old_pid = old.0.id();
    set("MainPID", &format!("{old_pid}\n"));
    let script_run = start_script();
    let handed = wait_for(&notify.socket, "MAINPID=", &mut seen);
    let new_pid: u32 = handed
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .expect("a pid");
    // Ours to stop at the end, by its PID.
    struct Successor(u32);
    impl Drop for Successor {
        fn drop(&mut self) {
            if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
    let _successor = Successor(new_pid);
    assert!(successors(old_pid).contains(&new_pid), "{handed}");
    set("MainPID", &format!("{new_pid}\n"));
    let (code, out) = finish(script_run);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "the new version serves (pid {new_pid}); pid {old_pid} finishes its connections"
        )),
        "{out}"
    );
    let status = crate::cli::wait_exit(&mut old.0);
    assert_eq!(status.code(), Some(0), "the old weir exits cleanly");
    echo_once(front).expect("the new version serves");

    // A new version that never takes over (the program file is by then a
    // script that only sleeps; weir's deadline 1 s): the script ends as
    // soon as weir's status says the attempt failed, and says why. The
    // status of an earlier failed attempt is not taken for this one's.
    let program = own_weir(&notify.dir);
    let front = free_port();
    let file = activated_config("upgrade-script-late", front, "");
    let mut cmd = std::process::Command::new(&program);
    cmd.args(["run", "--config"])
        .arg(&file)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WEIR_UPGRADE_TIMEOUT", "1s");
    let (late, _late_out) = start_weir(cmd);
    wait_for(&notify.socket, "READY=1", &mut seen);
    make_it_sleep(&program);
    set("MainPID", &format!("{}\n", late.0.id()));
    let earlier = "upgrade failed (the new version, pid 1, exited: exit status: 1); the previous version serves";
    set("StatusText", &format!("{earlier}\n"));
    // Playing systemd: weir's STATUS= becomes the unit's StatusText.
    let relay = |needle: &str, seen: &mut Vec<String>| {
        let sent = wait_for(&notify.socket, needle, seen);
        let text = sent
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .expect("a status")
            .to_owned();
        set("StatusText", &format!("{text}\n"));
        text
    };
    let script_run = start_script();
    let upgrading = relay("upgrading", &mut seen);
    assert!(
        upgrading.ends_with(", has 1 s to take over)"),
        "{upgrading}"
    );
    let text = relay("upgrade failed", &mut seen);
    assert!(text.contains("did not take over within 1s"), "{text}");
    let (code, out) = finish(script_run);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("weir: {text}; see journalctl")),
        "{out}"
    );
    assert!(!out.contains(earlier), "{out}");

    // The script waits as long as weir's status says (1 s here) and a
    // margin, not its own 2 minutes, when no failure is reported (here the
    // failure's status is not passed on).
    let script_run = start_script();
    let upgrading = relay("upgrading", &mut seen);
    assert!(
        upgrading.ends_with(", has 1 s to take over)"),
        "{upgrading}"
    );
    wait_for(&notify.socket, "upgrade failed", &mut seen);
    let (code, out) = finish(script_run);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("has not handed over within 11 s and has not reported a failure"),
        "{out}"
    );
    echo_once(front).expect("the running weir goes on serving");
}
