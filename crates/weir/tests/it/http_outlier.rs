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

/// Each ejection of a backend lasts `base_ejection` times the number of its
/// ejections so far, at most `max_ejection`: with 200ms and 500ms, four
/// ejections in a row last 200ms, 400ms, then 500ms twice. The history
/// says how long each one is, and the backend comes back no sooner.
#[test]
fn repeated_ejections_grow_up_to_max_ejection() {
    let (bad, _) = status_backend(500);
    let (good, _) = status_backend(200);
    let (admin, front) = (free_port(), free_port());
    let (_weir, _out) = start(
        "outlier-escalation",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nbalance = \"first\"\n\
             outlier = {{ consecutive_failures = 1, base_ejection = \"200ms\", max_ejection = \"500ms\", max_ejected_percent = 50 }}\n\
             [[pools.backends]]\nname = \"bad\"\naddress = \"{bad}\"\n\
             [[pools.backends]]\nname = \"good\"\naddress = \"{good}\"\n"
        ),
    );
    let of_bad = |family: &str| metric(admin, &format!("{family}{{pool=\"p\",backend=\"bad\"}}"));
    let within = |what: &str, done: &dyn Fn() -> bool| {
        let end = Instant::now() + DEADLINE;
        while !done() {
            assert!(Instant::now() < end, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    const LASTS_MS: [i64; 4] = [200, 400, 500, 500];
    for round in 1..=LASTS_MS.len() {
        // `first`: bad takes the request whenever it is in, and its 500
        // ejects it again (good answers while the balancer catches up).
        within(&format!("bad never took request {round}"), &|| {
            get(front) == 500
        });
        within(&format!("ejection {round} never counted"), &|| {
            of_bad("weir_backend_ejections_total") >= round as f64
        });
        within(&format!("ejection {round} never ended"), &|| {
            of_bad("weir_backend_ejected") == 0.0
        });
    }
    assert_eq!(of_bad("weir_backend_ejections_total"), 4.0);

    // The last return is recorded just after the gauge drops.
    let history = || {
        let answer = crate::cli::http_get(admin, "/api/v1/pools/p/backends/bad/history");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str::<serde_json::Value>(body).expect("json history")
    };
    let outliers = |v: &serde_json::Value| {
        v["transitions"]
            .as_array()
            .map_or(0, |t| t.iter().filter(|t| t["kind"] == "outlier").count())
    };
    within("the last return never reached the history", &|| {
        outliers(&history()) == 2 * LASTS_MS.len()
    });
    let v = history();
    let outlier: Vec<&serde_json::Value> = v["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["kind"] == "outlier")
        .collect();
    assert_eq!(outlier.len(), 2 * LASTS_MS.len(), "{v}");
    for (k, (pair, want)) in outlier.chunks(2).zip(LASTS_MS).enumerate() {
        let (out, back) = (pair[0], pair[1]);
        assert_eq!(
            (out["from"].as_str(), out["to"].as_str()),
            (Some("in"), Some("ejected")),
            "{v}"
        );
        assert!(
            out["cause"]
                .as_str()
                .is_some_and(|c| c.ends_with(&format!("; ejected for {want}ms"))),
            "ejection {}: {out}",
            k + 1
        );
        assert_eq!(
            (back["from"].as_str(), back["to"].as_str()),
            (Some("ejected"), Some("in")),
            "{v}"
        );
        let lasted =
            back["at_ms"].as_i64().unwrap_or_default() - out["at_ms"].as_i64().unwrap_or_default();
        // A few ms of slack: the times are wall-clock, the wait monotonic.
        assert!(
            lasted >= want - 5,
            "ejection {} lasted {lasted} ms, not {want}",
            k + 1
        );
    }

    // Serving a while without one (each 200ms takes one off the count),
    // the next ejection is as short as the first: the count is of recent
    // ejections, not of every one since the start.
    std::thread::sleep(Duration::from_millis(1000));
    within("bad never took the late request", &|| get(front) == 500);
    within("the late ejection never reached the history", &|| {
        outliers(&history()) > 2 * LASTS_MS.len()
    });
    let v = history();
    let late = v["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["kind"] == "outlier")
        .nth(2 * LASTS_MS.len())
        .cloned()
        .unwrap_or_default();
    assert!(
        late["cause"]
            .as_str()
            .is_some_and(|c| c.ends_with("; ejected for 200ms")),
        "{late}"
    );
}

/// An ejection stops new requests only: an answer the backend is still
/// sending goes on to its end, past the pool's `drain_timeout` (it was cut
/// there, as a drain's connections are).
#[test]
fn an_ejection_does_not_cut_what_the_backend_is_sending() {
    // `/slow`: ten bytes, one every 150 ms; anything else: 500.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut out = s;
                loop {
                    let mut first = String::new();
                    if reader.read_line(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        line.clear();
                    }
                    if first.contains("/slow") {
                        let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
                        for _ in 0..10 {
                            std::thread::sleep(Duration::from_millis(150));
                            if out.write_all(b"x").is_err() {
                                return;
                            }
                        }
                    } else if write!(out, "HTTP/1.1 500 X\r\nContent-Length: 2\r\n\r\nno").is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let (admin, front) = (free_port(), free_port());
    let (_weir, _out) = start(
        "outlier-keeps-answers",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\ndrain_timeout = \"300ms\"\n\
             outlier = {{ consecutive_failures = 1, base_ejection = \"5s\", max_ejection = \"5s\", max_ejected_percent = 100 }}\n\
             [[pools.backends]]\nname = \"a\"\naddress = \"{backend}\"\n"
        ),
    );
    let slow = std::thread::spawn(move || crate::http::curl(&[], &format!("http://{front}/slow")));
    // Once the slow answer is under way, a 500 ejects the backend.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(front), 500);
    let ejected = || metric(admin, "weir_backend_ejected{pool=\"p\",backend=\"a\"}");
    let end = Instant::now() + DEADLINE;
    while ejected() != 1.0 {
        assert!(Instant::now() < end, "never ejected");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, body, _) = slow.join().expect("the slow request");
    assert_eq!((status, body.as_str()), (200, "xxxxxxxxxx"));
    assert_eq!(ejected(), 1.0, "the ejection outlasted the answer");
}
