//! Zero-downtime upgrade: a second weir started on the same ports (SO_REUSEPORT)
//! takes new connections while the first drains after SIGTERM, and a client
//! opening connections all the while sees no failure.
//!
//! It runs in a network namespace of its own (loopback only) with
//! `net.ipv4.tcp_migrate_req = 1`, the setting docs/operations.md asks for: with
//! it the kernel hands connections still queued on the old process's closing
//! socket to the new one instead of resetting them.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::cli::{DEADLINE, Running, signal, start_weir, temp_config, wait_exit, weir};

/// A network namespace held open by a `sleep` we started.
pub(crate) struct Netns {
    _holder: Running,
    pub(crate) path: PathBuf,
}

impl Netns {
    pub(crate) fn new() -> Netns {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "300"])
            .spawn()
            .expect("unshare (util-linux) runs; the tests need root for a network namespace");
        let path = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        let holder = Running::new(holder);
        let ours = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        let end = Instant::now() + DEADLINE;
        while std::fs::read_link(&path).ok().is_none_or(|ns| ns == ours) {
            assert!(
                Instant::now() < end,
                "unshare --net did not create a namespace"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args([
                "sh",
                "-c",
                "ip link set lo up && sysctl -qw net.ipv4.tcp_migrate_req=1",
            ])
            .status()
            .expect("nsenter");
        assert!(status.success(), "cannot set up the namespace: {status}");
        Netns {
            _holder: holder,
            path,
        }
    }

    /// `weir run` (with `extra` arguments) inside the namespace.
    fn weir_cmd(&self, config: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path.display()))
            .arg(weir().get_program())
            .arg("run")
            .args(extra)
            .arg("--config")
            .arg(config);
        cmd
    }

    fn weir_run(&self, config: &Path, extra: &[&str]) -> (Running, mpsc::Receiver<String>) {
        start_weir(self.weir_cmd(config, extra))
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter(path: &Path) {
    let f = File::open(path).expect("open netns");
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns");
}

/// Waits until `count` has grown by `more`.
fn wait_for_more(count: &AtomicUsize, more: usize) {
    let target = count.load(Ordering::SeqCst) + more;
    let end = Instant::now() + DEADLINE;
    while count.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < end, "the client stalled");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A backend answering "ok" to every connection, inside the namespace.
fn ok_backend(ns: &Netns) -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    let ns_path = ns.path.clone();
    std::thread::spawn(move || {
        enter(&ns_path);
        let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        tx.send(l.local_addr().expect("addr")).expect("send");
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let _ = s.write_all(b"ok");
        }
    });
    rx.recv_timeout(DEADLINE).expect("backend")
}

/// weir's config for the namespace: listener `l` on `front` before `backend`.
fn upgrade_config(tag: &str, front: SocketAddr, backend: SocketAddr) -> crate::cli::Scratch {
    temp_config(
        tag,
        &format!(
            "[admin]\nhttp = \"127.0.0.1:7490\"\ngrpc = \"127.0.0.1:7491\"\n\
             [log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\nshutdown_timeout = \"5s\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\nname = \"b\"\naddress = \"{backend}\"\n"
        ),
    )
}

/// Four clients in the namespace, each opening one connection after another
/// to `front` and reading "ok", until stopped.
struct Clients {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn start(ns: &Netns, front: SocketAddr) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..4)
            .map(|_| {
                let (stop, done, failures) =
                    (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&failures));
                let ns_path = ns.path.clone();
                std::thread::spawn(move || {
                    enter(&ns_path);
                    while !stop.load(Ordering::SeqCst) {
                        let result = TcpStream::connect_timeout(&front, Duration::from_secs(2))
                            .and_then(|mut s| {
                                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                                let mut answer = String::new();
                                s.read_to_string(&mut answer)?;
                                Ok(answer)
                            });
                        match result {
                            Ok(a) if a == "ok" => {}
                            Ok(a) => failures.lock().expect("lock").push(format!("answer {a:?}")),
                            Err(e) => failures.lock().expect("lock").push(e.to_string()),
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Clients {
            stop,
            done,
            failures,
            threads,
        }
    }

    /// Waits for `more` connections to complete.
    fn wait_for_more(&self, more: usize) {
        wait_for_more(&self.done, more);
    }

    /// Stops the clients; asserts none failed and returns how many ran.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.threads {
            c.join().expect("client");
        }
        let failures = self.failures.lock().expect("lock");
        let total = self.done.load(Ordering::SeqCst);
        assert!(
            failures.is_empty(),
            "{} of {total} connections failed across the switch: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        total
    }
}

#[test]
fn a_second_weir_takes_over_without_a_failed_connection() {
    let ns = Netns::new();
    let backend = ok_backend(&ns);
    let front: SocketAddr = "127.0.0.1:7400".parse().expect("addr");
    let config = upgrade_config("upgrade", front, backend);

    let (mut old, old_out) = ns.weir_run(&config, &[]);
    let clients = Clients::start(&ns, front);
    clients.wait_for_more(300);

    // A second weir on the same ports is refused unless it is an upgrade...
    let refused = ns.weir_cmd(&config, &[]).output().expect("run");
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("127.0.0.1:7490 is in use by another process") && err.contains("--upgrade"),
        "{err}"
    );
    // ...and with --upgrade it binds the same ports while the old one still
    // accepts.
    let (mut new, new_out) = ns.weir_run(&config, &["--upgrade"]);
    clients.wait_for_more(300);
    signal(&old.0, rustix::process::Signal::TERM);
    let status = wait_exit(&mut old.0);
    assert_eq!(status.code(), Some(0), "the old weir exits cleanly");
    clients.wait_for_more(300);
    let total = clients.finish();

    // Both processes served: the old one before the switch, the new one after.
    let served = |rx: &mpsc::Receiver<String>| {
        rx.try_iter()
            .filter(|l| l.contains("\"reason\":\"backend_closed\""))
            .count()
    };
    let by_old = served(&old_out);
    signal(&new.0, rustix::process::Signal::TERM);
    let status = wait_exit(&mut new.0);
    assert_eq!(status.code(), Some(0));
    let by_new = served(&new_out);
    assert!(
        by_old >= 300 && by_new >= 300,
        "old served {by_old}, new {by_new} of {total}"
    );
}

/// The upgrade of a packaged weir (SIGUSR2): weir starts the new binary
/// itself, which tells systemd it is the main process once it serves and
/// stops the old one; the old one does not say the service stops.
#[test]
fn sigusr2_hands_over_to_a_new_process_without_a_failed_connection() {
    let ns = Netns::new();
    let backend = ok_backend(&ns);
    let front: SocketAddr = "127.0.0.1:7400".parse().expect("addr");
    let config = upgrade_config("handover", front, backend);
    let notify = crate::systemd::NotifySocket::bind("handover-ns");
    let mut seen = Vec::new();
    let wait_for = |seen: &mut Vec<String>, needle: &str| {
        crate::systemd::wait_for(&notify.socket, needle, seen)
    };
    let mut cmd = ns.weir_cmd(&config, &[]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let (mut old, _old_out) = start_weir(cmd);
    wait_for(&mut seen, "READY=1");
    let clients = Clients::start(&ns, front);
    clients.wait_for_more(300);

    signal(&old.0, rustix::process::Signal::USR2);
    // The successor's message names it the main process; the old process
    // then reports the handover, never STOPPING=1.
    let handed = wait_for(&mut seen, "MAINPID=");
    assert!(handed.contains("READY=1"), "{handed}");
    let new_pid: i32 = handed
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .expect("a pid");
    assert_ne!(new_pid.unsigned_abs(), old.0.id());
    // Ours to stop at the end, by its PID, unless it has exited.
    struct Successor(Option<i32>);
    impl Drop for Successor {
        fn drop(&mut self) {
            if let Some(pid) = self.0.and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    let mut successor = Successor(Some(new_pid));
    let status = wait_exit(&mut old.0);
    assert_eq!(status.code(), Some(0), "the old weir exits cleanly");
    // Nothing from the old one after the hand-over: no STOPPING=1.
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.socket.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(!seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");
    // The new process serves alone now.
    clients.wait_for_more(300);
    let total = clients.finish();
    assert!(total >= 600, "{total}");
    let pid = rustix::process::Pid::from_raw(new_pid).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("the successor runs");
    wait_for(&mut seen, "STOPPING=1");
    let end = Instant::now() + DEADLINE;
    // Gone, or a zombie its new parent has not reaped yet.
    let running = || {
        std::fs::read_to_string(format!("/proc/{new_pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    while running() {
        assert!(Instant::now() < end, "the successor did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    successor.0 = None;
}
