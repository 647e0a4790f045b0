//! `weir explain`: the route that takes a client and why the others do not,
//! every backend's eligibility with its reason, and the maglev pick, which
//! must be where a real connection from that client goes.

use std::io::Read;
use std::net::TcpStream;

use crate::cli::{DEADLINE, free_port, run_weir, temp_config};
use crate::control::{ctl, json, text};
use crate::fleet::named_backend;

#[test]
fn explain_names_the_route_the_eligible_backends_and_the_real_pick() {
    let (grpc, front) = (free_port(), free_port());
    let (b1, b5) = (named_backend("b1"), named_backend("b5"));
    let (b2, b4) = (named_backend("b2"), named_backend("b4"));
    let dead = free_port();
    let file = temp_config(
        "explain",
        &format!(
            "[admin]\ngrpc = \"{grpc}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"admins\"\nmatch = {{ source = [\"10.0.0.0/8\"] }}\npool = \"p\"\n\
             [[listeners.routes]]\nname = \"tls-a\"\nmatch = {{ sni = [\"a.example\"] }}\npool = \"p\"\n\
             [[listeners.routes]]\nname = \"rest\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nbalance = \"maglev\"\n\
             [pools.health]\ntype = \"tcp\"\ninterval = \"200ms\"\n\
             [[pools.backends]]\nname = \"b1\"\naddress = \"{b1}\"\n\
             [[pools.backends]]\nname = \"b2\"\naddress = \"{b2}\"\n\
             [[pools.backends]]\nname = \"b3\"\naddress = \"{dead}\"\n\
             [[pools.backends]]\nname = \"b4\"\naddress = \"{b4}\"\ntier = 1\n\
             [[pools.backends]]\nname = \"b5\"\naddress = \"{b5}\"\n"
        ),
    );
    let (_weir, _out) = run_weir(&file);
    assert_eq!(
        text(&ctl(grpc, None, &["backend", "drain", "p", "b2"])).0,
        0
    );

    fn args(sni: Option<&str>) -> Vec<&str> {
        let mut a = vec![
            "explain",
            "--listener",
            "front",
            "--client",
            "127.0.0.1",
            "-o",
            "json",
        ];
        if let Some(s) = sni {
            a.extend(["--sni", s]);
        }
        a
    }
    // Read as the ClientHello peek reads it: a trailing dot and case do not
    // matter, and an IP literal is no server name.
    let v = json(&ctl(grpc, None, &args(Some("A.Example."))));
    assert_eq!(v["route"], "tls-a", "{v}");
    let v = json(&ctl(grpc, None, &args(Some("192.0.2.1"))));
    assert_eq!(v["route"], "rest", "{v}");
    let v = json(&ctl(grpc, None, &args(Some("a..example"))));
    assert!(v["route"].is_null(), "{v}");
    assert!(
        v["routes"][2]["why"]
            .as_str()
            .is_some_and(|w| w.contains("not a valid server name")),
        "{v}"
    );
    let v = json(&ctl(grpc, None, &args(Some("b.example"))));
    assert_eq!(v["route"], "rest", "{v}");
    let why = |i: usize| {
        v["routes"][i]["why"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        why(0).contains("source 127.0.0.1 is not in [10.0.0.0/8]"),
        "{v}"
    );
    assert!(
        why(1).contains("SNI \"b.example\" is not in [a.example]"),
        "{v}"
    );
    let backends = v["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .clone();
    let verdict = |name: &str| {
        backends
            .iter()
            .find(|b| b["name"] == name)
            .map(|b| {
                (
                    b["eligible"].as_bool().unwrap_or(true),
                    b["why"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .expect("backend")
    };
    assert!(verdict("b1").0 && verdict("b5").0, "{v}");
    assert_eq!(verdict("b2"), (false, "drained by an operator".to_owned()));
    assert!(
        !verdict("b3").0 && verdict("b3").1.starts_with("down"),
        "{v}"
    );
    assert_eq!(
        verdict("b4"),
        (false, "in tier 1, not the active tier 0".to_owned())
    );
    assert_eq!(v["pools"][0]["active_tier"], 0);
    let pick = v["pools"][0]["pick"]
        .as_str()
        .expect("a maglev pick")
        .to_owned();
    assert!(pick == "b1" || pick == "b5", "{v}");

    // The pick is where a connection from that client goes, every time.
    for _ in 0..5 {
        let mut s = TcpStream::connect(front).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        // Plain bytes: not TLS, so the listener routes at once (no SNI).
        std::io::Write::write_all(&mut s, b"hello").expect("write");
        let mut name = String::new();
        s.read_to_string(&mut name).expect("read");
        assert_eq!(name, pick);
    }

    // With the SNI of the second route.
    let v = json(&ctl(grpc, None, &args(Some("A.example"))));
    assert_eq!(v["route"], "tls-a", "{v}");
    assert_eq!(
        v["routes"][2]["why"],
        "not reached: route \"tls-a\" takes the client first"
    );
    // The table for people.
    let (code, out, _) = text(&ctl(
        grpc,
        None,
        &["explain", "--listener", "front", "--client", "10.1.2.3"],
    ));
    assert_eq!(code, 0);
    assert!(
        out.contains("route admins") && out.contains("TAKES"),
        "{out}"
    );
    assert!(out.contains("pick: "), "{out}");
    // Mistakes are named.
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["explain", "--listener", "nope", "--client", "127.0.0.1"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no listener \"nope\""), "{err}");
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["explain", "--listener", "front", "--client", "x"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not an IP address"), "{err}");
    let long = "a".repeat(300);
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &[
            "explain",
            "--listener",
            "front",
            "--client",
            "10.1.2.3",
            "--sni",
            &long,
        ],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sni is 300 bytes long"), "{err}");
}

/// A connection no backend took: its access-log line names every backend
/// tried and each one's error.
#[test]
fn the_access_log_of_a_failed_connection_names_the_backends_tried() {
    let front = free_port();
    let (x, y) = (free_port(), free_port());
    let file = temp_config(
        "tried",
        &format!(
            "[log]\nformat = \"json\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nbalance = \"first\"\n\
             [[pools.backends]]\nname = \"x\"\naddress = \"{x}\"\n\
             [[pools.backends]]\nname = \"y\"\naddress = \"{y}\"\n"
        ),
    );
    let (_weir, out) = run_weir(&file);
    let mut s = TcpStream::connect(front).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let line = crate::cli::wait_line(&out, "\"tried\":");
    assert!(line.contains("\"tried\":\"x:refused y:refused\""), "{line}");
    assert!(line.contains("\"reason\":\"connect_failed\""), "{line}");
    assert!(line.contains("\"error\":\"refused\""), "{line}");
}
