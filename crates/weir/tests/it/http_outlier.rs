//! Outlier detection on an l7 pool: a backend that answers 5xx
//! `consecutive_failures` times in a row is ejected (a transition with its
//! cause, in the metrics and the history), gets no requests while ejected,
//! and comes back by itself; no more than `max_ejected_percent` of the pool
//! is ever ejected.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::cli::{DEADLINE, free_port};
use crate::http::{metric, start};

/// A backend answering every request with `status`, counting them.
fn status_backend(status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    slow_status_backend(status, Duration::ZERO)
}

/// [`status_backend`], each answer `delay` after its request.
fn slow_status_backend(status: u16, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let n = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&n);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let count = Arc::clone(&count);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut out = s;
                loop {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    count.fetch_add(1, Relaxed);
                    std::thread::sleep(delay);
                    if write!(out, "HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, n)
}

fn get(front: SocketAddr) -> u16 {
    crate::http::raw_get(front, "/", "").0
}

/// A failure that ejects a backend, from a request that began before a
/// reload, takes the backend out of the pool that serves now, not only out
/// of the one the request began in.
#[test]
fn an_ejection_across_a_reload_reaches_the_pool_that_serves() {
    let (bad, bad_n) = slow_status_backend(500, Duration::from_millis(800));
    let (good, good_n) = status_backend(200);
    let (admin, front) = (free_port(), free_port());
    let config = |connect_timeout: &str| {
        format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nbalance = \"first\"\nconnect_timeout = \"{connect_timeout}\"\n\
             outlier = {{ consecutive_failures = 1, base_ejection = \"30s\", max_ejected_percent = 50 }}\n\
             [[pools.backends]]\nname = \"bad\"\naddress = \"{bad}\"\n\
             [[pools.backends]]\nname = \"good\"\naddress = \"{good}\"\n"
        )
    };
    let file = crate::cli::temp_config("outlier-reload", &config("2s"));
    let (weir, out) = crate::cli::run_weir(&file);
    // `first`: the request goes to bad, whose 500 comes after the reload.
    let in_flight = std::thread::spawn(move || get(front));
    let end = Instant::now() + DEADLINE;
    while bad_n.load(Relaxed) == 0 {
        assert!(Instant::now() < end, "the request never reached bad");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&*file, config("3s")).expect("rewrite");
    crate::cli::signal(&weir.0, rustix::process::Signal::HUP);
    crate::cli::wait_line(&out, "config reloaded");
    assert_eq!(in_flight.join().expect("in flight"), 500);
    assert_eq!(
        metric(admin, "weir_backend_ejected{pool=\"p\",backend=\"bad\"}"),
        1.0
    );
    for _ in 0..5 {
        assert_eq!(get(front), 200);
    }
    assert_eq!(bad_n.load(Relaxed), 1, "the ejected backend got requests");
    assert_eq!(good_n.load(Relaxed), 5);
}

#[test]
fn a_failing_backend_is_ejected_and_comes_back() {
    let (good, good_n) = status_backend(200);
    let (bad, bad_n) = status_backend(500);
    let (worse, worse_n) = status_backend(503);
    let (admin, grpc, front) = (free_port(), free_port(), free_port());
    let (_weir, _out) = start(
        "outlier",
        &format!(
            "[admin]\nhttp = \"{admin}\"\ngrpc = \"{grpc}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n\
             outlier = {{ consecutive_failures = 3, base_ejection = \"5s\", max_ejected_percent = 10 }}\n\
             [[pools.backends]]\nname = \"good\"\naddress = \"{good}\"\n\
             [[pools.backends]]\nname = \"bad\"\naddress = \"{bad}\"\n\
             [[pools.backends]]\nname = \"worse\"\naddress = \"{worse}\"\n"
        ),
    );
    // Round robin: each backend gets every third request. After nine, both
    // failing backends have failed three times in a row; 10% of three
    // backends lets one be ejected at a time. base_ejection is long enough
    // for the checks below to run while it is out, even on a loaded machine.
    for _ in 0..9 {
        get(front);
    }
    let ejected = |b: &str| {
        metric(
            admin,
            &format!("weir_backend_ejected{{pool=\"p\",backend=\"{b}\"}}"),
        )
    };
    assert_eq!(ejected("good"), 0.0);
    assert_eq!(
        ejected("bad") + ejected("worse"),
        1.0,
        "exactly one ejected"
    );
    let (out, kept) = if ejected("bad") == 1.0 {
        ("bad", &worse_n)
    } else {
        ("worse", &bad_n)
    };
    let out_n = if out == "bad" { &bad_n } else { &worse_n };
    let before = out_n.load(Relaxed);
    for _ in 0..6 {
        get(front);
    }
    assert_eq!(
        out_n.load(Relaxed),
        before,
        "an ejected backend got requests"
    );
    assert!(kept.load(Relaxed) > 3);
    assert!(good_n.load(Relaxed) >= 6);
    // The history says why.
    let history = crate::control::json(&crate::control::ctl(
        grpc,
        None,
        &["backend", "history", "p", out, "-o", "json"],
    ));
    let last = history
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .expect("a transition");
    assert_eq!(last["kind"], "outlier", "{history}");
    assert_eq!(
        (last["from"].as_str(), last["to"].as_str()),
        (Some("in"), Some("ejected"))
    );
    assert!(
        last["cause"]
            .as_str()
            .is_some_and(|c| c.contains("3 failed answers in a row")),
        "{last}"
    );
    // Back after base_ejection.
    let deadline = Instant::now() + DEADLINE;
    while ejected(out) != 0.0 {
        assert!(Instant::now() < deadline, "never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(
            admin,
            &format!("weir_backend_ejections_total{{pool=\"p\",backend=\"{out}\"}}")
        ),
        1.0
    );
}
