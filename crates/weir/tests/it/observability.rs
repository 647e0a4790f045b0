//! Observability with the real tools: promtool on a live scrape, and a real
//! Prometheus server scraping weir.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{
    DEADLINE, Running, echo_backend, free_port, http_get, run_weir, temp_config, which,
};

/// A weir with an admin endpoint, one listener in front of an echo backend, and
/// a tcp-checked pool; returns (weir, admin address, listener address).
fn weir_with_admin(
    tag: &str,
) -> (
    Running,
    std::sync::mpsc::Receiver<String>,
    SocketAddr,
    SocketAddr,
) {
    let backend = echo_backend();
    let front = free_port();
    let admin = free_port();
    let file = temp_config(
        tag,
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"l\"\nbind = [\"{front}\"]\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[pools.health]\ntype = \"tcp\"\ninterval = \"1s\"\n\
             [[pools.backends]]\nname = \"echo\"\naddress = \"{backend}\"\n"
        ),
    );
    let (child, out) = run_weir(&file);
    (child.with(file), out, admin, front)
}

fn echo_through(front: SocketAddr) {
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("echo");
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn tool(name: &str) -> std::path::PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} is not installed: scripts/test.sh installs the `prometheus` package (CI runs it)")
    })
}

/// `promtool check metrics` lints the Prometheus text format (it has no
/// OpenMetrics parser); the OpenMetrics output is what the real Prometheus of the
/// next test asks for and ingests.
#[test]
fn promtool_accepts_a_live_scrape() {
    let promtool = tool("promtool");
    let (_weir, _out, admin, front) = weir_with_admin("promtool");
    echo_through(front);
    for accept in ["text/plain", "*/*"] {
        let mut s = TcpStream::connect(admin).expect("connect admin");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read");
        let scrape = body(&raw).to_owned();
        assert!(
            scrape.contains("weir_listener_connections_total{listener=\"l\"} 1"),
            "{scrape}"
        );
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(scrape.as_bytes())
            .expect("feed promtool");
        let out = check.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics ({accept}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_real_prometheus_scrapes_weir_and_answers_a_query() {
    let prometheus = tool("prometheus");
    let (_weir, _out, admin, front) = weir_with_admin("prometheus");
    for _ in 0..3 {
        echo_through(front);
    }
    let dir = crate::cli::Scratch::new(format!("weir-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).expect("dir");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - \"{slo}\"\n\
             scrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: [\"{admin}\"]\n",
            slo = crate::cli::repo_root()
                .join("deploy/prometheus/slo.yml")
                .display()
        ),
    )
    .expect("config");
    let web = free_port();
    let _prom = Running::new(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    // Prometheus needs a moment to start and a scrape or two. It asks for
    // OpenMetrics first, so this also checks that format end to end.
    let query = "/api/v1/query?query=weir_listener_connections_total%7Blistener%3D%22l%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok(mut s) = TcpStream::connect(web) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if write!(
                s,
                "GET {query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .is_ok()
            {
                let mut raw = String::new();
                let _ = s.read_to_string(&mut raw);
                last = body(&raw).to_owned();
                // The series with its value, as JSON: ...,"value":[<time>,"3"]
                if last.contains("\"job\":\"weir\"") && last.contains(",\"3\"]") {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never reported 3 connections; last answer: {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The scrape target is healthy in Prometheus' own view.
    let targets = http_get(web, "/api/v1/targets");
    assert!(targets.contains("\"health\":\"up\""), "{targets}");

    // The SLO rules of deploy/ find weir's series: with traffic seen between
    // scrapes, the route's availability and latency error ratios are recorded,
    // both 0 (every connection reached the echo backend, on loopback within
    // the 0.1 s threshold).
    for slo in ["availability", "latency"] {
        let query = format!(
            "/api/v1/query?query=weir%3Aroute_slo_errors%3Aratio_rate5m%7Bslo%3D%22{slo}%22%7D"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            echo_through(front);
            let answer = http_get(web, &query);
            if answer.contains("\"route\":\"r\"") {
                assert!(answer.contains("\"protocol\":\"tcp\""), "{answer}");
                assert!(
                    answer.contains(",\"0\"]"),
                    "{slo} error ratio is not 0: {answer}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never recorded the route's {slo} ratio; last answer: {answer}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A log reader that stops reading (journald behind, a pipe nobody drains)
/// costs weir no worker: with the standard output full, requests are still
/// served and `/metrics` still answers (a worker blocked in its write held
/// the output's lock, and every other one waited behind it); once the
/// reader reads again, every line is there (the queue held them), and
/// `weir_log_dropped_lines_total` says none was lost.
#[test]
fn a_stalled_log_reader_blocks_nothing() {
    let backend = crate::http::raw_backend(None, Duration::ZERO);
    let (front, admin) = (free_port(), free_port());
    let file = temp_config(
        "stalled-log",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    let mut cmd = crate::cli::weir();
    cmd.args(["run", "--config"]).arg(&*file);
    // The pipe is read by no one until the end: 64 KiB fill it.
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn weir");
    let stdout = child.stdout.take().expect("stdout");
    let _weir = Running::new(child).with(file);
    let end = Instant::now() + DEADLINE;
    let ready = || {
        TcpStream::connect(admin)
            .is_ok_and(|s| crate::cli::http_get_over(s, "/readyz").starts_with("HTTP/1.1 200"))
    };
    while !ready() {
        assert!(Instant::now() < end, "weir did not get ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    // About 300 bytes of access log each: far more than the pipe holds.
    let n = 1_000;
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    let path = "/a-path-long-enough-to-make-each-access-line-a-little-longer";
    for i in 0..n {
        crate::http::keepalive_get(&mut s, path)
            .unwrap_or_else(|e| panic!("request {i} with the log stalled: {e}"));
    }
    let scrape = http_get(admin, "/metrics");
    assert!(
        scrape.contains("\nweir_log_dropped_lines_total 0\n"),
        "{scrape}"
    );
    // Read at last: every request's line arrives.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = 0;
    let end = Instant::now() + DEADLINE;
    while seen < n {
        let left = end.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{seen} of {n} access lines arrived"));
        if line.contains(path) {
            seen += 1;
        }
    }
}
