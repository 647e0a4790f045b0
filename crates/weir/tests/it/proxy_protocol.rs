//! The PROXY protocol weir sends, read by a real peer: nginx with
//! `listen ... proxy_protocol` answers with the client address it parsed, and
//! curl (bound to a chosen loopback address) is the client.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::cli::{
    Running, Scratch, free_port, run_weir, start_nginx, temp_config, test_dir, wait_connectable,
    which,
};

fn nginx_echoing_proxy_addresses(tag: &str) -> (Running, SocketAddr) {
    let port = free_port();
    let dir = test_dir(&format!("pp-{tag}"));
    let nginx = start_nginx(
        &dir,
        &format!(
            "server {{ listen {port} proxy_protocol; \
             location / {{ return 200 \"$proxy_protocol_addr $proxy_protocol_port\\n\"; }} }}"
        ),
    );
    wait_connectable(port);
    (nginx.with(dir), port)
}

fn curl(url: &str, interface: &str) -> String {
    let curl =
        which("curl").expect("curl is not installed: run scripts/test.sh, which installs it");
    let out = Command::new(curl)
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "10",
            "-g",
            "--interface",
            interface,
            url,
        ])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn nginx_reads_the_client_address_from_weirs_v1_and_v2_headers() {
    let (_nginx, backend) = nginx_echoing_proxy_addresses("v1v2");
    let v4 = free_port();
    let v6 = SocketAddr::new("::1".parse().expect("ip"), v4.port() + 1);
    let file = temp_config(
        "pp",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"l\"\nbind = [\"{v4}\", \"{v6}\"]\n\
             [[listeners.routes]]\nname = \"v1\"\nmatch = {{ source = [\"127.0.0.3\"] }}\npool = \"n\"\nsend_proxy_protocol = \"v1\"\n\
             [[listeners.routes]]\nname = \"v2\"\nmatch = {{ source = [\"127.0.0.4\", \"::1\"] }}\npool = \"n\"\nsend_proxy_protocol = \"v2\"\n\
             [[pools]]\nname = \"n\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let (_weir, _out) = run_weir(&file);
    for (client, url) in [
        ("127.0.0.3", format!("http://{v4}/")),
        ("127.0.0.4", format!("http://{v4}/")),
        ("::1", format!("http://{v6}/")),
    ] {
        let answer = curl(&url, client);
        let (addr, port) = answer
            .split_once(' ')
            .unwrap_or_else(|| panic!("answer {answer:?}"));
        assert_eq!(addr, client, "{answer}");
        let port: u16 = port
            .parse()
            .unwrap_or_else(|_| panic!("port in {answer:?}"));
        assert_ne!(port, 0);
    }
}

/// A pool whose traffic starts with a PROXY header is probed with one too
/// (a `LOCAL` one, v1 `UNKNOWN`), as HAProxy's checks are: nginx's
/// `listen ... proxy_protocol` refuses anything else, which would keep every
/// backend down.
#[test]
fn probes_of_a_backend_that_wants_the_header_send_one() {
    let (_nginx, backend) = nginx_echoing_proxy_addresses("probes");
    let (front, admin) = (free_port(), free_port());
    let pool = |name: &str| {
        format!(
            "[[pools]]\nname = \"{name}\"\n[pools.health]\ntype = \"http\"\npath = \"/\"\n\
             [[pools.backends]]\nname = \"n\"\naddress = \"{backend}\"\n"
        )
    };
    let file = temp_config(
        "pp-probes",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"l\"\nbind = [\"{front}\"]\n\
             [[listeners.routes]]\nname = \"v1\"\nmatch = {{ source = [\"127.0.0.3\"] }}\npool = \"a\"\nsend_proxy_protocol = \"v1\"\n\
             [[listeners.routes]]\nname = \"v2\"\nmatch = {{ source = [\"127.0.0.4\"] }}\npool = \"b\"\nsend_proxy_protocol = \"v2\"\n\
             {}{}",
            pool("a"),
            pool("b")
        ),
    );
    let (_weir, _out) = run_weir(&file);
    for (client, pool) in [("127.0.0.3", "a"), ("127.0.0.4", "b")] {
        let passed = crate::http::metric(
            admin,
            &format!(
                "weir_health_checks_total{{pool=\"{pool}\",backend=\"n\",type=\"http\",result=\"success\",reason=\"ok\"}}"
            ),
        );
        assert!(passed >= 1.0, "pool {pool}: {passed}");
        let answer = curl(&format!("http://{front}/"), client);
        assert!(answer.starts_with(client), "{answer}");
    }
}

/// HAProxy with `accept-proxy` answers with the source address it parsed.
fn haproxy_echoing_source(tag: &str) -> (Running, SocketAddr) {
    let haproxy =
        which("haproxy").expect("haproxy is not installed: run scripts/test.sh, which installs it");
    let dir = Scratch::new(format!("weir-pp-haproxy-{}-{tag}", std::process::id()));
    let port = free_port();
    let conf = format!(
        "global\n  maxconn 64\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
         frontend f\n  bind {port} accept-proxy\n  http-request return status 200 content-type text/plain lf-string \"%[src] %[src_port]\"\n"
    );
    std::fs::write(dir.join("haproxy.cfg"), conf).expect("conf");
    let child = Command::new(haproxy)
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    wait_connectable(port);
    (Running::new(child).with(dir), port)
}

#[test]
fn haproxy_reads_the_client_address_from_weirs_v1_and_v2_headers() {
    let (_haproxy, backend) = haproxy_echoing_source("v1v2");
    let front = free_port();
    let file = temp_config(
        "pp-haproxy",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"l\"\nbind = [\"{front}\"]\n\
             [[listeners.routes]]\nname = \"v1\"\nmatch = {{ source = [\"127.0.0.5\"] }}\npool = \"h\"\nsend_proxy_protocol = \"v1\"\n\
             [[listeners.routes]]\nname = \"v2\"\nmatch = {{ source = [\"127.0.0.6\"] }}\npool = \"h\"\nsend_proxy_protocol = \"v2\"\n\
             [[pools]]\nname = \"h\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let (_weir, _out) = run_weir(&file);
    for client in ["127.0.0.5", "127.0.0.6"] {
        let answer = curl(&format!("http://{front}/"), client);
        let (addr, port) = answer
            .split_once(' ')
            .unwrap_or_else(|| panic!("answer {answer:?}"));
        assert_eq!(addr, client, "{answer}");
        assert!(port.parse::<u16>().is_ok_and(|p| p != 0), "{answer}");
    }
}

/// HAProxy in front of weir with `send-proxy-v2`; weir accepts it from the
/// trusted loopback and passes the client on (v1) to nginx, which echoes it.
#[test]
fn a_client_address_travels_from_haproxy_through_weir_to_nginx() {
    let (_nginx, backend) = nginx_echoing_proxy_addresses("chain");
    let weir_port = free_port();
    let file = temp_config(
        "pp-chain",
        &format!(
            "[log]\naccess_log = false\n\
             [[listeners]]\nname = \"l\"\nbind = [\"{weir_port}\"]\n\
             proxy_protocol = {{ accept = true, trusted = [\"127.0.0.1\"] }}\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"n\"\nsend_proxy_protocol = \"v1\"\n\
             [[pools]]\nname = \"n\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let (_weir, _out) = run_weir(&file);
    let haproxy =
        which("haproxy").expect("haproxy is not installed: run scripts/test.sh, which installs it");
    let dir = Scratch::new(format!("weir-pp-chain-{}", std::process::id()));
    let front = free_port();
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  maxconn 64\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend f\n  bind {front}\n  default_backend w\n\
             backend w\n  server weir {weir_port} send-proxy-v2\n"
        ),
    )
    .expect("conf");
    let _haproxy = Running::new(
        Command::new(haproxy)
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    wait_connectable(front);
    let answer = curl(&format!("http://{front}/"), "127.0.0.8");
    let (addr, _) = answer
        .split_once(' ')
        .unwrap_or_else(|| panic!("answer {answer:?}"));
    assert_eq!(addr, "127.0.0.8", "{answer}");
}

/// A refused connection's access line says how long weir held it: a
/// trusted source that sends no PROXY header is refused at
/// `handshake_timeout`, and one whose late header names a denied client
/// when it comes (the lines said `duration_ms` 0).
#[test]
fn a_refusal_after_a_wait_logs_the_time_waited() {
    let (front, backend) = (free_port(), free_port());
    let file = temp_config(
        "pp-refusal-time",
        &format!(
            "[log]\nformat = \"json\"\n[firewall]\ndeny = [\"192.0.2.66\"]\n\
             [[listeners]]\nname = \"l\"\nbind = \"{front}\"\nhandshake_timeout = \"1s\"\n\
             proxy_protocol = {{ accept = true, trusted = [\"127.0.0.1\"] }}\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{backend}\"\n"
        ),
    );
    let (_weir, out) = run_weir(&file);
    let _silent = std::net::TcpStream::connect(front).expect("connect");
    let line = crate::cli::wait_line(&out, "\"reason\":\"handshake_timeout\"");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    let took = v["duration_ms"].as_f64().expect("duration_ms");
    assert!((950.0..5000.0).contains(&took), "{line}");
    // Its header comes well within the handshake timeout, on a loaded
    // machine too.
    let mut late = std::net::TcpStream::connect(front).expect("connect");
    std::thread::sleep(std::time::Duration::from_millis(250));
    std::io::Write::write_all(&mut late, b"PROXY TCP4 192.0.2.66 192.0.2.1 5000 80\r\n")
        .expect("header");
    let line = crate::cli::wait_line(&out, "\"reason\":\"firewall\"");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    let took = v["duration_ms"].as_f64().expect("duration_ms");
    assert!((200.0..5000.0).contains(&took), "{line}");
}
