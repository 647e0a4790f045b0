//! Request policies on l7 routes, with hostile clients: every path trick
//! (`/a/../admin`, `//admin`, `%2e%2e`, encoded letters, case variants,
//! encoded slashes) meets the deny rule it tries to slip past, and the
//! backend receives the same normalised path the policy judged; user-agent
//! blocks, required headers, allow lists by method and source; each refusal
//! with its status and body, counted by policy and logged with its name.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use crate::cli::{DEADLINE, free_port, wait_line};
use crate::http::{metric, start};

/// An HTTP/1.1 backend that answers every request with the request target
/// it received, and keeps them.
struct PathBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

fn path_backend() -> PathBackend {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut out = s;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let target = line.split(' ').nth(1).unwrap_or("").to_owned();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                    }
                    log.lock().expect("log").push(target.clone());
                    let body = format!("{target}\n");
                    let _ = write!(
                        out,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    PathBackend { addr, seen }
}

/// (status, body) of one request with a raw target.
fn raw_get(front: SocketAddr, target: &str, headers: &str) -> (u16, String) {
    let (status, _, body) = crate::http::raw_get(front, target, headers);
    (status, body)
}

#[test]
fn path_tricks_meet_the_deny_rule_and_the_backend_sees_the_judged_path() {
    let backend = path_backend();
    let (admin, front) = (free_port(), free_port());
    let (_weir, out) = start(
        "policy-paths",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             policies = [ {{ name = \"no-admin\", deny = {{ path_prefix = [\"/admin\", \"/caf%C3%A9\"] }} }} ]\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    let refused = "weir: refused by policy \"no-admin\" (policy)\n";
    for trick in [
        "/admin",
        "/admin/users",
        "/a/../admin",
        "/a/b/../../admin/",
        "//admin",
        "///admin//x",
        "/./admin",
        "/%2e%2e/admin",
        "/%2E%2e/admin",
        "/x/.%2E/admin",
        "/%61dmin",
        "/%41DMIN",
        "/ADMIN",
        "/Admin/x",
        "/admin?x=1",
        // Raw UTF-8 is the percent-encoded path to a backend: one to the rule.
        "/café/menu",
        "/caf%c3%a9",
        // Parameters are dropped by servlet containers, which then serve
        // `/admin`: the policy reads the path as they do.
        "/;x/admin",
        "/;/;a=b/admin/users",
        "/admin;jsessionid=1",
        "/admin;v=1/x",
    ] {
        assert_eq!(
            raw_get(front, trick, ""),
            (403, refused.to_owned()),
            "{trick}"
        );
    }
    // An encoded slash is refused outright (encoded_slashes = "reject").
    for trick in ["/admin%2Fx", "/x%2f..%2fadmin", "/x%5C..%5Cadmin"] {
        assert_eq!(raw_get(front, trick, "").0, 400, "{trick}");
    }
    assert_eq!(raw_get(front, "/a%zz", "").0, 400);
    // A dot segment with parameters climbs in a servlet container.
    for trick in ["/public/..;/admin", "/x/%2e%2e;a=b/admin", "/.;/admin"] {
        assert_eq!(raw_get(front, trick, "").0, 400, "{trick}");
    }
    // What passes reaches the backend normalised, query untouched.
    for (sent, forwarded) in [
        ("/public", "/public"),
        ("/public/../index.html", "/index.html"),
        ("//assets///app.js", "/assets/app.js"),
        ("/%7euser/%c3%a9", "/~user/%C3%A9"),
        ("/menü;v=1", "/men%C3%BC;v=1"),
        // The backend gets the parameters the policy read past.
        ("/public;v=1/x;y", "/public;v=1/x;y"),
        ("/administrator/../a?q=%2e%2e", "/a?q=%2e%2e"),
    ] {
        let (status, body) = raw_get(front, sent, "");
        assert_eq!((status, body.trim_end()), (200, forwarded), "{sent}");
    }
    let seen = backend.seen.lock().expect("seen").clone();
    assert!(
        !seen
            .iter()
            .any(|p| p.to_ascii_lowercase().contains("admin") && !p.starts_with("/a?")),
        "{seen:?}"
    );
    assert_eq!(
        metric(
            admin,
            "weir_http_policy_blocked_total{listener=\"web\",route=\"app\",policy=\"no-admin\"}"
        ),
        21.0
    );
    let line = wait_line(&out, "\"policy\":\"no-admin\"");
    assert!(line.contains("\"status\":403"), "{line}");
    assert!(line.contains("\"reason\":\"policy\""), "{line}");
}

#[test]
fn user_agents_headers_methods_and_sources() {
    let backend = path_backend();
    let (admin, front) = (free_port(), free_port());
    let (_weir, _out) = start(
        "policy-kinds",
        &format!(
            "[admin]\nhttp = \"{admin}\"\n[log]\naccess_log = false\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"app\"\nmode = \"l7\"\n\
             encoded_slashes = \"keep\"\n\
             policies = [ {{ name = \"no-bots\", block_user_agent = [\"curl\"], block_user_agent_regex = \"^python-requests/\" }} ]\n\
             [[listeners.routes.http]]\nname = \"api\"\npool = \"p\"\n\
             match = {{ path_prefix = \"/api/\" }}\n\
             policies = [ {{ name = \"need-key\", require_header = \"x-api-key\", require_regex = \"^k-[0-9]+$\", status = 401, body = \"a key, please\\n\" }},\n\
                          {{ name = \"read-only\", allow = {{ methods = [\"GET\", \"HEAD\"], source = [\"127.0.0.0/8\"] }} }} ]\n\
             [[listeners.routes.http]]\nname = \"rest\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"{}\"\n",
            backend.addr
        ),
    );
    assert_eq!(raw_get(front, "/", "User-Agent: curl/8.5.0\r\n").0, 403);
    assert_eq!(
        raw_get(front, "/", "User-Agent: Mozilla/5.0 CURLish\r\n").0,
        403
    );
    assert_eq!(
        raw_get(front, "/", "User-Agent: python-requests/2.31\r\n").0,
        403
    );
    assert_eq!(raw_get(front, "/", "User-Agent: Mozilla/5.0\r\n").0, 200);
    // The rule's policies: a key is needed, with the policy's status and body.
    assert_eq!(
        raw_get(front, "/api/x", ""),
        (401, "a key, please\n".to_owned())
    );
    assert_eq!(raw_get(front, "/api/x", "X-Api-Key: nope\r\n").0, 401);
    assert_eq!(raw_get(front, "/api/x", "X-Api-Key: k-42\r\n").0, 200);
    // Read-only: a POST with a key is refused.
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "POST /api/x HTTP/1.1\r\nHost: a\r\nX-Api-Key: k-1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Other rules do not have the rule's policies.
    assert_eq!(raw_get(front, "/other", "").0, 200);
    // encoded_slashes = "keep": forwarded encoded, upper case.
    assert_eq!(
        raw_get(front, "/files/a%2fb", ""),
        (200, "/files/a%2Fb\n".to_owned())
    );
    for (policy, n) in [("no-bots", 3.0), ("need-key", 2.0), ("read-only", 1.0)] {
        assert_eq!(
            metric(
                admin,
                &format!(
                    "weir_http_policy_blocked_total{{listener=\"web\",route=\"app\",policy=\"{policy}\"}}"
                )
            ),
            n,
            "{policy}"
        );
    }
}
