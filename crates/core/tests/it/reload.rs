//! Reload, operator actions and the state file, end to end on real sockets:
//! a long-lived connection crosses reloads that add, change and remove
//! listeners and backends; a broken reload changes nothing; what an operator
//! did survives a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use weir_core::Reason;
use weir_core::events::Event;
use weir_core::health::{AdminState, Cause, Change, Health};
use weir_core::{ControlError, Options, ReloadError, Server};

use crate::common::*;

async fn start_file(path: &Path) -> Arc<Server> {
    let config = weir_config::load_file(path).unwrap_or_else(|e| panic!("config: {e}"));
    let options = Options {
        config_path: Some(path.to_path_buf()),
        ..Options::default()
    };
    within("start", Server::start_with(config, options))
        .await
        .expect("server starts")
}

/// Sends `msg` on a long-lived echo connection and expects it back.
async fn echo(c: &mut TcpStream, msg: &str) {
    c.write_all(msg.as_bytes()).await.expect("write");
    let mut buf = vec![0; msg.len()];
    within("echo", c.read_exact(&mut buf)).await.expect("read");
    assert_eq!(String::from_utf8_lossy(&buf), msg);
}

/// Connects from 127.0.0.2, which the `long` route sends to the echo pool.
async fn long_lived(front: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind("127.0.0.2:0".parse().expect("addr")).expect("bind");
    s.connect(front).await.expect("connect")
}

const HEALTH: &str = "[pools.health]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"300ms\"\n";

fn listener(name: &str, bind: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"{name}\"\nbind = \"{bind}\"\n{extra}\n\
         [[listeners.routes]]\nname = \"long\"\npool = \"long\"\nmatch = {{ source = [\"127.0.0.2\"] }}\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"{name}-pool\"\n"
    )
}

fn pool(name: &str, backends: &[(&str, SocketAddr, u32)]) -> String {
    let mut t = format!("[[pools]]\nname = \"{name}\"\nconnect_timeout = \"300ms\"\n{HEALTH}");
    for (b, a, w) in backends {
        t.push_str(&format!(
            "[[pools.backends]]\nname = \"{b}\"\naddress = \"{a}\"\nweight = {w}\n"
        ));
    }
    t
}

async fn tally(front: SocketAddr, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(within("fetch", fetch(front, None)).await);
    }
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_changes_and_removes_while_a_connection_lives() {
    let echo_addr = echo_backend().await;
    let a = named_backend("a").await;
    let n = named_backend("new").await;
    let b = named_backend("b").await;
    let dead = refused_addr();
    let dir = Scratch::new("reload");
    let file = dir.join("weir.toml");
    let long_pool = pool("long", &[("echo", echo_addr, 1)]);

    std::fs::write(
        &file,
        format!(
            "{}{long_pool}{}",
            listener("l", "127.0.0.1:0", ""),
            pool("l-pool", &[("a", a, 1)])
        ),
    )
    .expect("write");
    let server = start_file(&file).await;
    let front = addr(&server, "l");
    let mut c = long_lived(front).await;
    echo(&mut c, "before").await;
    assert_eq!(tally(front, 2).await, ["a", "a"]);
    let a_stats = server
        .pool("l-pool")
        .expect("p")
        .backend("a")
        .expect("a")
        .stats
        .clone();
    assert_eq!(a_stats.connections_total.load(Relaxed), 2);
    assert_eq!(server.generation(), 1);

    // Reload 1: a new listener with a new pool; a new backend (and a dead
    // one) beside `a`, whose weight changes.
    std::fs::write(
        &file,
        format!(
            "{}{}{long_pool}{}{}",
            listener("l", "127.0.0.1:0", ""),
            listener("l2", "127.0.0.1:0", ""),
            pool("l-pool", &[("a", a, 2), ("new", n, 2), ("dead", dead, 1)]),
            pool("l2-pool", &[("b", b, 1)]),
        ),
    )
    .expect("write");
    let r = within("reload", server.reload()).await.expect("reload 1");
    assert_eq!(r.generation, 2);
    assert_eq!(
        r.diff.added,
        [
            "listener l2",
            "pool l2-pool",
            "backend l-pool/new",
            "backend l-pool/dead"
        ]
    );
    assert_eq!(r.diff.changed, ["backend l-pool/a"]);
    assert_eq!(
        addr(&server, "l"),
        front,
        "a kept listener keeps its socket"
    );
    let p = server.pool("l-pool").expect("p");
    // Probed before serving: decided by the time the reload returns.
    assert_eq!(p.view("new").expect("new").health, Health::Up);
    assert_eq!(p.view("dead").expect("dead").health, Health::Down);
    echo(&mut c, "across reload 1").await;
    assert_eq!(
        tally(front, 8).await,
        ["a", "a", "a", "a", "new", "new", "new", "new"]
    );
    // The same counters, continued.
    assert_eq!(a_stats.connections_total.load(Relaxed), 6);
    assert_eq!(
        p.backend("a")
            .expect("a")
            .stats
            .connections_total
            .load(Relaxed),
        6
    );
    assert_eq!(
        p.backend("dead")
            .expect("dead")
            .stats
            .connect_errors(Reason::Refused),
        0,
        "a backend known down never got traffic"
    );
    let l2 = addr(&server, "l2");
    assert_eq!(within("fetch", fetch(l2, None)).await, "b");
    let listener_stats = server.listener("l").expect("l").stats.clone();
    assert_eq!(listener_stats.connections_total.load(Relaxed), 11);

    // Reload 2: l2 and its pool go, `a` goes, l changes.
    std::fs::write(
        &file,
        format!(
            "{}{long_pool}{}",
            listener("l", "127.0.0.1:0", "max_connections = 500"),
            pool("l-pool", &[("new", n, 1)])
        ),
    )
    .expect("write");
    let r = within("reload", server.reload()).await.expect("reload 2");
    assert_eq!(r.generation, 3);
    assert_eq!(
        r.diff.removed,
        [
            "listener l2",
            "pool l2-pool",
            "backend l-pool/a",
            "backend l-pool/dead"
        ]
    );
    assert_eq!(r.diff.changed, ["listener l", "backend l-pool/new"]);
    assert!(
        TcpStream::connect(l2).await.is_err(),
        "a removed listener no longer accepts"
    );
    assert_eq!(tally(front, 3).await, ["new", "new", "new"]);
    assert!(server.pool("l-pool").expect("p").backend("a").is_none());
    assert_eq!(server.listener("l").expect("l").max_connections, 500);
    assert_eq!(listener_stats.connections_total.load(Relaxed), 14);
    echo(&mut c, "across reload 2").await;
    c.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    within("eof", c.read_to_end(&mut rest)).await.expect("eof");
    assert!(rest.is_empty());
    assert_eq!(server.reloads.succeeded.load(Relaxed), 2);
    server.shutdown();
    within("wait", server.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_changes_nothing_and_says_why() {
    let a = named_backend("a").await;
    let echo_addr = echo_backend().await;
    let dir = Scratch::new("broken");
    let file = dir.join("weir.toml");
    let long_pool = pool("long", &[("echo", echo_addr, 1)]);
    let good = format!(
        "{}{long_pool}{}",
        listener("l", "127.0.0.1:0", ""),
        pool("l-pool", &[("a", a, 1)])
    );
    std::fs::write(&file, &good).expect("write");
    let server = start_file(&file).await;
    let front = addr(&server, "l");
    let mut c = long_lived(front).await;
    let mut events = server.journal().subscribe();

    // A config error: the key path reaches the caller.
    std::fs::write(
        &file,
        good.replace(
            "connect_timeout = \"300ms\"",
            "connect_timeout = \"3 parsecs\"",
        ),
    )
    .expect("write");
    let err = within("reload", server.reload()).await.expect_err("broken");
    assert!(matches!(err, ReloadError::Config(_)), "{err:?}");
    assert!(
        err.to_string().contains("pools[0].connect_timeout"),
        "{err}"
    );
    assert!(
        server
            .last_reload()
            .and_then(|r| r.error)
            .is_some_and(|e| e.contains("connect_timeout"))
    );
    match within("event", events.recv()).await.expect("event") {
        Event::Reload {
            generation: 1,
            error: Some(e),
            ..
        } => assert!(e.contains("connect_timeout"), "{e}"),
        other => panic!("{other:?}"),
    }

    // A bind failure after other new addresses were bound: those are let go.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let spare = refused_addr();
    std::fs::write(
        &file,
        format!(
            "{good}{}{}",
            listener("l2", &spare.to_string(), ""),
            listener("l3", &taken_addr.to_string(), "")
        )
        .replace("pool = \"l2-pool\"", "pool = \"l-pool\"")
        .replace("pool = \"l3-pool\"", "pool = \"l-pool\"")
        // A change to a pool the running one shares its backends with,
        // built before the bind fails: it must not reach them.
        .replace(
            "name = \"l-pool\"\n",
            "name = \"l-pool\"\nmax_connections_per_backend = 5\n",
        ),
    )
    .expect("write");
    let err = within("reload", server.reload())
        .await
        .expect_err("bind fails");
    assert!(matches!(err, ReloadError::Start(_)), "{err:?}");
    assert!(err.to_string().contains(&taken_addr.to_string()), "{err}");
    assert!(
        TcpStream::connect(spare).await.is_err(),
        "the spare address was released"
    );

    // Nothing changed: same generation, traffic as before, the connection
    // lives, no connection limit.
    assert_eq!(server.generation(), 1);
    let limit = |server: &Server| {
        server
            .pool("l-pool")
            .and_then(|p| p.backend("a").map(|b| b.connection_limit()))
    };
    assert_eq!(limit(&server), Some(0));
    assert_eq!(server.reloads.failed.load(Relaxed), 2);
    assert!(server.reloads.last_failed.load(Relaxed));
    assert_eq!(tally(front, 2).await, ["a", "a"]);
    echo(&mut c, "still here").await;

    std::fs::write(&file, &good).expect("write");
    let r = within("reload", server.reload()).await.expect("good again");
    assert_eq!(r.generation, 2);
    assert!(r.diff.is_empty());
    assert!(!server.reloads.last_failed.load(Relaxed));
    // The same pool change in a reload that succeeds applies.
    let older = server.pool("l-pool").expect("l-pool");
    std::fs::write(
        &file,
        good.replace(
            "name = \"l-pool\"\n",
            "name = \"l-pool\"\nmax_connections_per_backend = 5\n",
        ),
    )
    .expect("write");
    let r = within("reload", server.reload()).await.expect("a limit");
    assert_eq!(r.generation, 3);
    assert_eq!(limit(&server), Some(5));
    // A change reaching the generation the reload replaced (work that
    // outlived it) rebuilds the newest one: the old limits do not come back.
    assert!(older.set_weight("a", Some(3)));
    assert_eq!(limit(&server), Some(5));
    let view = server.pool("l-pool").and_then(|p| p.view("a"));
    assert_eq!(view.map(|v| v.effective_weight), Some(3));
    drop(taken);
}

fn static_pool(backends: &[(&str, SocketAddr)]) -> String {
    let mut t = String::from(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n",
    );
    for (b, a) in backends {
        t.push_str(&format!(
            "[[pools.backends]]\nname = \"{b}\"\naddress = \"{a}\"\n"
        ));
    }
    t
}

/// A state file that cannot be read any more does not stop a reload: the running backends keep their state, the new
/// one starts as the config says, and a warning says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_state_file_does_not_stop_reloads() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let dir = Scratch::new("state-broken");
    let (db, file) = (dir.join("state.db"), dir.join("weir.toml"));
    let state = format!("[state]\npath = {:?}\n", db.display().to_string());
    std::fs::write(&file, format!("{state}{}", static_pool(&[("a", a)]))).expect("write");
    let server = start_file(&file).await;
    server
        .set_admin("p", "a", AdminState::Drain)
        .await
        .expect("drain");
    // Broken under weir: a table it reads is gone (another program, a
    // restore gone wrong).
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             c.execute('DROP TABLE tier_change'); c.commit()",
        ])
        .arg(&db)
        .status()
        .expect("python3");
    assert!(status.success(), "cannot break the state file");
    std::fs::write(
        &file,
        format!("{state}{}", static_pool(&[("a", a), ("b", b)])),
    )
    .expect("write");
    let reloaded = within("reload", server.reload()).await;
    assert!(reloaded.is_ok(), "{reloaded:?}");
    let p = server.pool("p").expect("p");
    assert_eq!(p.view("a").map(|v| v.admin), Some(AdminState::Drain));
    assert_eq!(p.view("b").map(|v| v.admin), Some(AdminState::Enabled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_state_survives_a_restart() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let c = named_backend("c").await;
    let dir = Scratch::new("state");
    let db = dir.join("state.db");
    let state = format!("[state]\npath = {:?}\n", db.display().to_string());
    let both = format!("{state}{}", static_pool(&[("a", a), ("b", b)]));
    let config = weir_config::load_str(&both).expect("config");

    let server = within("start", Server::start(&config))
        .await
        .expect("start");
    let mut events = server.journal().subscribe();
    let front = addr(&server, "l");
    let view = server
        .set_admin("p", "a", AdminState::Drain)
        .await
        .expect("drain");
    assert_eq!(view.admin, AdminState::Drain);
    assert_eq!(tally(front, 4).await, ["b", "b", "b", "b"]);
    server.set_weight("p", "b", Some(5)).await.expect("weight");
    match within("event", events.recv()).await.expect("event") {
        Event::Backend {
            pool,
            backend,
            transition,
        } => {
            assert_eq!((pool.as_str(), backend.as_str()), ("p", "a"));
            assert_eq!(
                transition.change,
                Change::Admin {
                    from: AdminState::Enabled,
                    to: AdminState::Drain
                }
            );
            assert_eq!(transition.cause, Cause::Operator);
        }
        other => panic!("{other:?}"),
    }
    // Refusals change nothing.
    assert!(matches!(
        server.set_admin("nope", "a", AdminState::Drain).await,
        Err(ControlError::NoPool(_))
    ));
    assert!(matches!(
        server.set_admin("p", "nope", AdminState::Drain).await,
        Err(ControlError::NoBackend { .. })
    ));
    assert!(matches!(
        server.set_weight("p", "a", Some(1001)).await,
        Err(ControlError::Weight(1001))
    ));
    server.shutdown();
    within("wait", server.wait()).await;
    drop(server);

    // Restart: still drained, still re-weighted, history read back.
    let server = within("start", Server::start(&config))
        .await
        .expect("restart");
    let front = addr(&server, "l");
    let p = server.pool("p").expect("p");
    let va = p.view("a").expect("a");
    assert_eq!(va.admin, AdminState::Drain);
    assert!(
        va.history.iter().any(|t| t.change
            == Change::Admin {
                from: AdminState::Enabled,
                to: AdminState::Drain
            }
            && t.cause == Cause::Operator),
        "{:?}",
        va.history
    );
    assert_eq!(p.view("b").expect("b").weight_override, Some(5));
    assert_eq!(tally(front, 3).await, ["b", "b", "b"]);
    // Enable: weights 1 and 5 now, exact over one round-robin cycle.
    server
        .set_admin("p", "a", AdminState::Enabled)
        .await
        .expect("enable");
    assert_eq!(tally(front, 6).await, ["a", "b", "b", "b", "b", "b"]);
    server.set_weight("p", "b", None).await.expect("clear");
    assert_eq!(tally(front, 4).await, ["a", "a", "b", "b"]);
    server
        .set_admin("p", "a", AdminState::Disabled)
        .await
        .expect("disable");
    server.set_weight("p", "b", Some(3)).await.expect("weight");
    server.shutdown();
    within("wait", server.wait()).await;
    drop(server);

    // Restart without `b`: its saved weight is kept aside, applied to nobody.
    // With checks now: the disabled `a` is not even probed at start.
    let checked = static_pool(&[("a", a), ("c", c)]).replace(
        "name = \"p\"\n",
        "name = \"p\"\n[pools.health]\ntype = \"tcp\"\ninterval = \"1h\"\n",
    );
    let config = weir_config::load_str(&format!("{state}{checked}")).expect("config");
    let server = within("start", Server::start(&config))
        .await
        .expect("restart");
    let orphans = server.orphaned_state();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(
        (orphans[0].pool.as_str(), orphans[0].backend.as_str()),
        ("p", "b")
    );
    assert_eq!(orphans[0].weight_override, Some(3));
    let p = server.pool("p").expect("p");
    assert_eq!(p.view("a").expect("a").admin, AdminState::Disabled);
    let probes = |name: &str| {
        p.backend(name)
            .map(|b| b.stats.checks_passed() + b.stats.checks_failed_total())
    };
    assert_eq!((probes("a"), probes("c")), (Some(0), Some(1)));
    let vc = p.view("c").expect("c");
    assert_eq!((vc.admin, vc.weight_override), (AdminState::Enabled, None));
    assert_eq!(tally(addr(&server, "l"), 2).await, ["c", "c"]);

    // A reload that fails (a port taken) changes nothing, what is reported
    // of the state file's leftovers included (`a` would have been one).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let failing = format!(
        "{state}{}[[listeners]]\nname = \"busy\"\nbind = \"{}\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n",
        static_pool(&[("c", c)]),
        taken.local_addr().expect("addr")
    );
    let failing = weir_config::load_str(&failing).expect("config");
    assert!(within("reload", server.apply(failing)).await.is_err());
    let orphans = server.orphaned_state();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_state_file_stops_the_start_with_a_clear_error() {
    let dir = Scratch::new("corrupt");
    let db = dir.join("state.db");
    std::fs::write(&db, vec![0x5a; 4096]).expect("write");
    let a = named_backend("a").await;
    let text = format!(
        "[state]\npath = {:?}\n{}",
        db.display().to_string(),
        static_pool(&[("a", a)])
    );
    let config = weir_config::load_str(&text).expect("config");
    let err = within("start", Server::start(&config))
        .await
        .expect_err("corrupt");
    let msg = err.to_string();
    assert!(msg.contains("state.db"), "{msg}");
    assert_eq!(
        std::fs::read(&db).expect("read"),
        vec![0x5a; 4096],
        "left untouched"
    );
}

/// The admin endpoints keep the addresses and `insecure` they started with
/// until a restart, so a reload may not drop the token that guards one on
/// a non-loopback address, even when the new file moves it to loopback
/// (which takes effect only at the restart). The running config stays.
#[tokio::test]
async fn a_reload_cannot_leave_a_bound_admin_endpoint_without_a_token() {
    let dir = Scratch::new("reload-unguarded");
    let (file, token) = (dir.join("weir.toml"), dir.join("token"));
    std::fs::write(&token, "a-token-of-sixteen-chars\n").expect("write");
    let a = echo_backend().await;
    let rest = format!(
        "{}{}{}",
        listener("l", "127.0.0.1:0", ""),
        pool("long", &[("a", a, 1)]),
        pool("l-pool", &[("a", a, 1)])
    );
    // Core does not bind the admin endpoints: the address is never used.
    std::fs::write(
        &file,
        format!(
            "[admin]\nhttp = \"192.0.2.1:9901\"\ntoken_file = {:?}\n{rest}",
            token.display().to_string()
        ),
    )
    .expect("write");
    let server = start_file(&file).await;

    std::fs::write(&file, format!("[admin]\nhttp = \"127.0.0.1:9901\"\n{rest}")).expect("write");
    let err = within("reload", server.reload())
        .await
        .expect_err("unguarded");
    assert!(matches!(err, ReloadError::Unguarded(_)), "{err:?}");
    assert!(err.to_string().contains("192.0.2.1:9901"), "{err}");
    assert_eq!(server.generation(), 1);
    assert!(server.snapshot().config.admin.token.is_some());

    // With the token the same move is taken (and waits for the restart).
    std::fs::write(
        &file,
        format!(
            "[admin]\nhttp = \"127.0.0.1:9901\"\ntoken_file = {:?}\n{rest}",
            token.display().to_string()
        ),
    )
    .expect("write");
    let reloaded = within("reload", server.reload()).await.expect("reload");
    assert_eq!(reloaded.diff.need_restart, ["admin"]);
}

/// A reload that moves the admin endpoint (at the next start) cannot put a
/// listener on the address it still holds: both would bind, and the kernel
/// would split connections between the status page and the listener.
#[tokio::test]
async fn a_reload_cannot_bind_a_listener_where_the_admin_endpoint_runs() {
    let dir = Scratch::new("reload-admin-address");
    let file = dir.join("weir.toml");
    let a = echo_backend().await;
    let rest = |bind: &str| {
        format!(
            "{}{}{}",
            listener("l", bind, ""),
            pool("long", &[("a", a, 1)]),
            pool("l-pool", &[("a", a, 1)])
        )
    };
    // Core does not bind the admin endpoints: only the addresses count.
    std::fs::write(
        &file,
        format!(
            "[admin]\nhttp = \"127.0.0.1:19901\"\n{}",
            rest("127.0.0.1:0")
        ),
    )
    .expect("write");
    let server = start_file(&file).await;
    for taken in ["127.0.0.1:19901", "0.0.0.0:19901"] {
        std::fs::write(
            &file,
            format!("[admin]\nhttp = \"127.0.0.1:19902\"\n{}", rest(taken)),
        )
        .expect("write");
        let err = within("reload", server.reload())
            .await
            .expect_err("the admin's address");
        assert!(matches!(err, ReloadError::AdminAddress { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("listeners[0].bind[0]: 127.0.0.1:19901 is bound by the running admin"),
            "{err}"
        );
        assert_eq!(server.generation(), 1);
    }
}

/// A server, and a reload of it held in its first probe round (a new
/// pool whose HTTP check gets no answer for its 2 s timeout): the reload
/// holds the turn of changes until then.
async fn held_reload(
    tag: &str,
) -> (
    Arc<Server>,
    tokio::task::JoinHandle<Result<weir_core::Reloaded, ReloadError>>,
    Scratch,
) {
    let a = echo_backend().await;
    let (silent, probed) = silent_backend().await;
    let dir = Scratch::new(tag);
    let file = dir.join("weir.toml");
    let rest = format!(
        "{}{}{}",
        listener("l", "127.0.0.1:0", ""),
        pool("long", &[("a", a, 1)]),
        pool("l-pool", &[("a", a, 1)])
    );
    std::fs::write(&file, &rest).expect("write");
    let server = start_file(&file).await;
    let reloading = reload_held_by(&server, &file, &rest, silent, &probed).await;
    (server, reloading, dir)
}

/// Starts a reload of `server` to `rest` and a new pool whose one backend,
/// `silent`, holds the reload's first probe round for the HTTP check's 2 s
/// timeout; returns once that probe reached it (`probed`).
async fn reload_held_by(
    server: &Arc<Server>,
    file: &Path,
    rest: &str,
    silent: SocketAddr,
    probed: &std::sync::atomic::AtomicUsize,
) -> tokio::task::JoinHandle<Result<weir_core::Reloaded, ReloadError>> {
    std::fs::write(
        file,
        format!(
            "{rest}[[pools]]\nname = \"slow\"\n\
             [pools.health]\ntype = \"http\"\ntimeout = \"2s\"\ninterval = \"1h\"\n\
             [[pools.backends]]\nname = \"s\"\naddress = \"{silent}\"\n"
        ),
    )
    .expect("write");
    let reloading = tokio::spawn({
        let server = Arc::clone(server);
        async move { server.reload().await }
    });
    wait_until("the reload's probe", || {
        probed.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    reloading
}

/// A reload asked while another is in its probe round reads the file once
/// that one is done: the last outcome recorded is that of the file as it
/// is now (a broken file written meanwhile is reported, not hidden by the
/// earlier reload's success).
#[tokio::test]
async fn a_reload_asked_during_another_reads_the_file_after_it() {
    let (server, reloading, dir) = held_reload("reload-order").await;
    std::fs::write(dir.join("weir.toml"), "[[listeners]]\nname = 3\n").expect("write");
    let second = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.reload().await }
    });
    let first = within("first", reloading).await.expect("task");
    assert!(first.is_ok(), "{first:?}");
    let second = within("second", second).await.expect("task");
    assert!(matches!(second, Err(ReloadError::Config(_))), "{second:?}");
    assert!(
        server.last_reload().and_then(|r| r.error).is_some(),
        "the broken file's failure is the last word: {:?}",
        server.last_reload()
    );
}

/// Once the stop began, operator changes are refused and change nothing,
/// also one that was waiting for its turn behind a reload: nothing is
/// written or rebuilt while the process drains.
#[tokio::test]
async fn operator_changes_are_refused_once_the_stop_began() {
    let (server, reloading, _dir) = held_reload("changes-stopping").await;
    let waiting = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.set_admin("l-pool", "a", AdminState::Drain).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the drain did not wait its turn");
    server.shutdown();
    let err = within("drain", waiting)
        .await
        .expect("task")
        .expect_err("refused");
    assert!(matches!(err, ControlError::ShuttingDown), "{err:?}");
    let _ = within("reload", reloading).await;
    // Changes asked after the stop began, too.
    assert!(matches!(
        server.set_weight("l-pool", "a", Some(5)).await,
        Err(ControlError::ShuttingDown)
    ));
    assert!(matches!(
        server
            .add_backend("l-pool", "127.0.0.1:9", None, 1, 0)
            .await,
        Err(ControlError::ShuttingDown)
    ));
    let view = server.pool("l-pool").and_then(|p| p.view("a")).expect("a");
    assert_eq!((view.admin, view.weight), (AdminState::Enabled, 1));
}

/// A new version that starts to take over (SIGUSR2) is told so once the
/// changes asked before it are done (a reload in its probe round, a drain
/// waiting behind it): a change asked after it, waiting for its turn, is
/// refused and changes nothing (it was applied here and written to the
/// state file the new version had already read: acknowledged, and lost),
/// and so is one asked meanwhile; once no new version is starting, changes
/// go through again.
#[tokio::test]
async fn operator_changes_wait_for_no_new_version() {
    let (server, reloading, _dir) = held_reload("changes-successor").await;
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(50));
    // A drain asked before the new version: it goes through first (and is
    // in the file the new version reads).
    let before = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.set_admin("l-pool", "a", AdminState::Drain).await }
    });
    pause().await;
    let told = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.successor_starting().await }
    });
    pause().await;
    let waiting = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.set_weight("l-pool", "a", Some(7)).await }
    });
    let asked = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.reload_asked().await }
    });
    pause().await;
    assert!(!told.is_finished(), "told while the reload ran");
    assert!(!waiting.is_finished(), "the change did not wait its turn");
    let done = within("reload", reloading).await.expect("task");
    assert!(done.is_ok(), "{done:?}");
    within("told", told).await.expect("task");
    let drained = within("drain", before)
        .await
        .expect("task")
        .expect("drained");
    assert_eq!(drained.admin, AdminState::Drain);
    let err = within("weight", waiting)
        .await
        .expect("task")
        .expect_err("refused");
    assert!(matches!(err, ControlError::SuccessorStarting), "{err:?}");
    let refused = within("asked", asked).await.expect("task");
    assert!(
        matches!(refused, Err(ReloadError::SuccessorStarting)),
        "{refused:?}"
    );
    assert!(matches!(
        server.set_admin("l-pool", "a", AdminState::Enabled).await,
        Err(ControlError::SuccessorStarting)
    ));
    let view = server.pool("l-pool").and_then(|p| p.view("a")).expect("a");
    assert_eq!(
        (view.admin, view.weight_override),
        (AdminState::Drain, None)
    );
    server.successor_gone();
    let view = server
        .set_weight("l-pool", "a", Some(7))
        .await
        .expect("goes through");
    assert_eq!(view.weight_override, Some(7));
}

/// A reload still in its first probe round when the stop begins switches
/// nothing: it fails as shutting down and the running config stays (its
/// new health checks would otherwise run on through the drain).
#[tokio::test]
async fn a_reload_in_its_probe_round_when_the_stop_begins_switches_nothing() {
    let (server, reloading, _dir) = held_reload("reload-stopping").await;
    server.shutdown();
    let err = within("reload", reloading)
        .await
        .expect("task")
        .expect_err("stopped");
    assert!(matches!(err, ReloadError::ShuttingDown), "{err:?}");
    assert_eq!(server.generation(), 1);
    assert!(server.pool("slow").is_none());
}

/// A connection waiting in the queue of a pool generation a reload
/// replaced is refused `no_backend` once no backend of the newest serves,
/// rather than going round between its own generation's picker (which
/// still picks) and the newest one's queue; and a retry that joins it
/// with nothing left in the newest but what failed it goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_of_a_replaced_pool_goes_when_the_newest_serves_none() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let dir = Scratch::new("reload-queue");
    let file = dir.join("weir.toml");
    let config = |queue_timeout: &str| crate::queue::two_slots(a, b, queue_timeout, "");
    std::fs::write(&file, config("30s")).expect("write");
    let server = start_file(&file).await;
    let old = server.pool("p").expect("p");
    assert!(old.take(0) && old.take(1));
    let waiter = tokio::spawn({
        let old = Arc::clone(&old);
        async move { old.acquire(1, &[], None).await }
    });
    wait_until("a waiter", || old.queue.depth() == 1).await;
    std::fs::write(&file, config("40s")).expect("write");
    within("reload", server.reload()).await.expect("reload");
    let newest = server.pool("p").expect("p");
    assert!(!Arc::ptr_eq(&old, &newest), "a new generation");
    assert!(newest.set_admin("a", AdminState::Disabled));
    assert!(!waiter.is_finished(), "b still serves");
    assert!(newest.set_admin("b", AdminState::Disabled));
    let got = within("the waiter let go", waiter).await.expect("join");
    assert_eq!(got, Err(Reason::NoBackend));
    assert_eq!(newest.queue.depth(), 0);
    // A retry (a failed it) joining through the replaced generation, whose
    // picker still offers b, which the newest no longer serves: it goes at
    // once, not at `queue_timeout`.
    assert!(newest.set_admin("a", AdminState::Enabled));
    let retry = within("the retry", old.acquire(1, &[0], None)).await;
    assert_eq!(retry, Err(Reason::NoBackend));
    assert_eq!(newest.queue.depth(), 0);
}

/// A reload that changes how a pool's backends are probed (another check
/// port) starts their health again, and its first probe round decides it
/// before the new pool serves. Until then the running pool serves as it
/// was: a waiter in its queue keeps its place (it was refused `no_backend`
/// while the new backends were undecided), and no tier change is recorded
/// for that moment (it was: `0 -> none -> 0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_check_keeps_the_pool_serving_through_its_round() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    // The kernel completes the probes' handshakes; nothing needs to accept.
    let side = TcpSocket::new_v4().expect("socket");
    side.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = side.local_addr().expect("addr").port();
    let _side = side.listen(16).expect("listen");
    let dir = Scratch::new("reload-check-change");
    let file = dir.join("weir.toml");
    let config = |port: &str| {
        crate::queue::two_slots(
            a,
            b,
            "30s",
            &format!("[pools.health]\ntype = \"tcp\"\ninterval = \"1h\"\n{port}"),
        )
    };
    std::fs::write(&file, config("")).expect("write");
    let server = start_file(&file).await;
    let old = server.pool("p").expect("p");
    assert_eq!(old.active_tier(), Some(0));
    let tiers = old.tier_history().len();
    assert!(old.take(0) && old.take(1));
    let waiter = tokio::spawn({
        let old = Arc::clone(&old);
        async move { old.acquire(1, &[], None).await }
    });
    wait_until("a waiter", || old.queue.depth() == 1).await;

    std::fs::write(&file, config(&format!("port = {port}\n"))).expect("write");
    within("reload", server.reload()).await.expect("reload");
    let newest = server.pool("p").expect("p");
    assert!(!Arc::ptr_eq(&old, &newest), "a new generation");
    let cause = |b: &str| {
        newest
            .view(b)
            .and_then(|v| v.history.last().map(|t| t.cause.clone()))
    };
    assert_eq!(
        cause("a"),
        Some(Cause::Probe("connect ok".to_owned())),
        "health started again and one probe decided it"
    );
    assert_eq!(newest.active_tier(), Some(0));
    assert_eq!(newest.queue.depth(), 1, "the waiter kept its place");
    assert!(!waiter.is_finished());
    let changes: Vec<_> = newest
        .tier_history()
        .into_iter()
        .skip(tiers)
        .map(|t| (t.from, t.to, t.cause))
        .collect();
    assert!(changes.is_empty(), "no tier change: {changes:?}");
    newest.release(0);
    let got = within("the waiter served", waiter).await.expect("join");
    assert_eq!(got, Ok(0));
}

/// During a reload's probe round the running pool serves, and a backend
/// whose check the reload keeps shares its state with it: a probe that
/// takes the backend down meanwhile takes it out of the serving picker at
/// once (the picker missed it until the switch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_fails_during_a_reloads_probe_round_leaves_the_serving_pool() {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = a.local_addr().expect("addr");
    let (silent, probed) = silent_backend().await;
    let echo = echo_backend().await;
    let dir = Scratch::new("reload-round-down");
    let file = dir.join("weir.toml");
    let rest = format!(
        "{}{}[[pools]]\nname = \"long\"\n\
         [pools.health]\ntype = \"tcp\"\ninterval = \"100ms\"\nfall = 1\n\
         [[pools.backends]]\nname = \"a\"\naddress = \"{addr}\"\n",
        listener("l", "127.0.0.1:0", ""),
        pool("l-pool", &[("e", echo, 1)]),
    );
    std::fs::write(&file, &rest).expect("write");
    let server = start_file(&file).await;
    let serving = server.pool("long").expect("long");
    assert_eq!(serving.active_tier(), Some(0));
    // A reload held for 2 s in its first probe round by a silent backend.
    let reloading = reload_held_by(&server, &file, &rest, silent, &probed).await;
    drop(a);
    wait_until("a out of the serving picker", || {
        serving.active_tier().is_none()
    })
    .await;
    assert!(!reloading.is_finished(), "still in its probe round");
    let done = within("reload", reloading).await.expect("task");
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(server.pool("long").expect("long").active_tier(), None);
}

/// A tier change a reload makes (here the only backend of tier 0 moved to
/// tier 2) is recorded with the cause `reload` (it said `first probe
/// round`, the start's cause).
#[tokio::test]
async fn a_tier_change_of_a_reload_says_reload() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let dir = Scratch::new("reload-tier");
    let file = dir.join("weir.toml");
    let config = |tier: u32| {
        format!(
            "{}{}[[pools]]\nname = \"long\"\n\
             [[pools.backends]]\nname = \"a\"\naddress = \"{a}\"\ntier = {tier}\n\
             [[pools.backends]]\nname = \"b\"\naddress = \"{b}\"\ntier = 1\n",
            listener("l", "127.0.0.1:0", ""),
            pool("l-pool", &[("e", a, 1)]),
        )
    };
    std::fs::write(&file, config(0)).expect("write");
    let server = start_file(&file).await;
    let history = || server.pool("long").expect("long").tier_history();
    let first = history().last().cloned().expect("the start's");
    assert_eq!(
        (first.to, first.cause.as_str()),
        (Some(0), "first probe round")
    );
    std::fs::write(&file, config(2)).expect("write");
    within("reload", server.reload()).await.expect("reload");
    let last = history().last().cloned().expect("a change");
    assert_eq!(
        (last.from, last.to, last.cause.as_str()),
        (Some(0), Some(1), "reload")
    );
}
