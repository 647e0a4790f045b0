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
fn wait_for(socket: &UnixDatagram, needle: &str, seen: &mut Vec<String>) -> String {
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

#[test]
fn weir_tells_systemd_when_it_is_ready_reloading_and_stopping() {
    let dir = std::env::temp_dir().join(format!("weir-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let (front, backend) = (free_port(), echo_backend());
    let file = temp_config(
        "notify",
        &format!(
            "[[listeners]]\nname = \"l\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let mut cmd = weir();
    cmd.args(["run", "--config"])
        .arg(&file)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID");
    let (child, _out) = start_weir(cmd);
    let mut seen = Vec::new();
    let ready = wait_for(&socket, "READY=1", &mut seen);
    assert!(
        ready.contains("STATUS=serving: 1 listener(s), 1 pool(s), configuration generation 1"),
        "{ready}"
    );
    // Ready means serving: the listener accepts.
    std::net::TcpStream::connect(front).expect("the listener accepts once READY=1 is sent");
    // The watchdog is pinged at half of WATCHDOG_USEC.
    let began = Instant::now();
    wait_for(&socket, "WATCHDOG=1", &mut seen);
    wait_for(&socket, "WATCHDOG=1", &mut seen);
    assert!(began.elapsed() < Duration::from_secs(2), "{seen:?}");

    signal(&child.0, rustix::process::Signal::HUP);
    let reloading = wait_for(&socket, "RELOADING=1", &mut seen);
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
    let again = wait_for(&socket, "READY=1", &mut seen);
    assert!(again.contains("configuration generation 2"), "{again}");

    // A broken file: the reload fails, the old configuration serves, and
    // systemd is told so.
    std::fs::write(&file, "[[listeners]]\nname = 1\n").expect("break the file");
    signal(&child.0, rustix::process::Signal::HUP);
    wait_for(&socket, "RELOADING=1", &mut seen);
    let failed = wait_for(&socket, "READY=1", &mut seen);
    assert!(
        failed.contains("STATUS=reload failed, the previous configuration serves"),
        "{failed}"
    );

    signal(&child.0, rustix::process::Signal::TERM);
    let stopping = wait_for(&socket, "STOPPING=1", &mut seen);
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
