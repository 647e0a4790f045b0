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
    // A client the listener's firewall refuses reaches no route: said so,
    // not shown taken by one (the firewall is asked first, as at accept).
    let (code, _, err) = text(&ctl(grpc, None, &["firewall", "deny", "10.1.2.3"]));
    assert_eq!(code, 0, "{err}");
    let v = json(&ctl(
        grpc,
        None,
        &[
            "explain",
            "--listener",
            "front",
            "--client",
            "10.1.2.3",
            "-o",
            "json",
        ],
    ));
    assert_eq!(v["firewall"], "banned", "{v}");
    assert!(v["route"].is_null(), "{v}");
    let (code, out, _) = text(&ctl(
        grpc,
        None,
        &["explain", "--listener", "front", "--client", "10.1.2.3"],
    ));
    assert_eq!(code, 0);
    assert!(
        out.contains("the listener's firewall refuses this client (banned)"),
        "{out}"
    );
    assert!(!out.contains("TAKES"), "{out}");
    let (code, _, err) = text(&ctl(grpc, None, &["firewall", "remove", "10.1.2.3"]));
    assert_eq!(code, 0, "{err}");
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

/// `weir explain --path ...` on an l7 route: which rule takes the request
/// and why each before it does not, what happens before a backend (the
/// path's normal form, a policy, a redirect) and the pool it goes to, over
/// the CLI and the JSON API.
#[test]
fn explain_follows_a_request_through_the_rules_of_an_l7_route() {
    let (grpc, http, front) = (free_port(), free_port(), free_port());
    let (a, b) = (named_backend("a"), named_backend("b"));
    let file = temp_config(
        "explain-l7",
        &format!(
            "[admin]\ngrpc = \"{grpc}\"\nhttp = \"{http}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"site\"\nmode = \"l7\"\nmax_body_bytes = 100\n\
             [[listeners.routes.http]]\nname = \"admin\"\npool = \"web\"\n\
             match = {{ path_prefix = \"/admin\", source = [\"10.0.0.0/8\"] }}\n\
             [[listeners.routes.http]]\nname = \"moved\"\n\
             match = {{ host = [\"old.example\"] }}\nredirect = {{ host = \"new.example\" }}\n\
             [[listeners.routes.http]]\nname = \"api\"\npool = \"api\"\n\
             match = {{ path_prefix = \"/api/\", methods = [\"GET\"] }}\nstrip_prefix = \"/api\"\n\
             policies = [{{ name = \"private\", deny = {{ path_prefix = [\"/api/private\"] }} }}]\n\
             [[listeners.routes.http]]\nname = \"rest\"\npool = \"web\"\n\
             [[pools]]\nname = \"web\"\nsticky = {{ cookie = \"srv\" }}\n\
             [[pools.backends]]\naddress = \"{a}\"\n\
             [[pools]]\nname = \"api\"\n[[pools.backends]]\naddress = \"{b}\"\n"
        ),
    );
    let (_weir, _out) = run_weir(&file);
    let ask = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--listener",
            "web",
            "--client",
            "127.0.0.1",
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        json(&ctl(grpc, None, &args))
    };
    let rules = |v: &serde_json::Value| {
        v["http"]["rules"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["matched"] == true,
                            r["why"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    // Without a request: the route and both pools, no rules.
    let v = ask(&[]);
    assert_eq!(v["route"], "site", "{v}");
    assert!(v["http"].is_null(), "{v}");
    assert_eq!(v["pools"].as_array().map(Vec::len), Some(2), "{v}");

    let v = ask(&["--path", "/api/users?x=1", "--host", "app.example"]);
    let r = rules(&v);
    assert_eq!(r.len(), 4, "{v}");
    assert!(
        !r[0].0 && r[0].1.contains("does not start with \"/admin\""),
        "{v}"
    );
    assert!(
        !r[1].0 && r[1].1.contains("host \"app.example\" is not in"),
        "{v}"
    );
    assert!(r[2].0 && r[2].1.contains("starts with \"/api/\""), "{v}");
    assert!(
        !r[3].0 && r[3].1.contains("not reached: rule \"api\""),
        "{v}"
    );
    assert_eq!(
        (&v["http"]["rule"], &v["http"]["pool"]),
        (&"api".into(), &"api".into())
    );
    assert_eq!(v["pools"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["pools"][0]["name"], "api", "{v}");
    let notes = v["http"]["notes"].to_string();
    assert!(
        notes.contains("the backend gets the path \\\"/users\\\""),
        "{v}"
    );

    // The client is not inside: the admin rule does not take it.
    let v = ask(&["--path", "/admin/x"]);
    assert!(
        rules(&v)[0]
            .1
            .contains("client 127.0.0.1 is not in [10.0.0.0/8]"),
        "{v}"
    );
    assert_eq!(v["http"]["rule"], "rest", "{v}");
    assert!(
        v["http"]["notes"]
            .to_string()
            .contains("no sticky cookie \\\"srv\\\""),
        "{v}"
    );
    // With the cookie: the backend it names, and whether it takes the
    // request (a drained one does; a disabled one does not).
    let token = weir_wire::cookie::token(weir_balance::hash_bytes(a.to_string().as_bytes()));
    let cookie = format!("Cookie: srv={}", String::from_utf8_lossy(&token));
    let sticky = |expected: &str| {
        let v = ask(&["--path", "/", "-H", &cookie]);
        let notes = v["http"]["notes"].to_string();
        assert!(notes.contains(expected), "{expected}: {v}");
    };
    let backend = format!("names backend \\\"{a}\\\", which takes it");
    sticky(&backend);
    let operator = |verb: &str| {
        let (code, _, err) = text(&ctl(grpc, None, &["backend", verb, "web", &a.to_string()]));
        assert_eq!(code, 0, "{err}");
    };
    operator("drain");
    sticky(&backend);
    operator("disable");
    sticky("which cannot take it now (disabled)");
    operator("enable");
    let v = ask(&["--path", "/", "-H", "Cookie: srv=0123456789abcdef"]);
    assert!(
        v["http"]["notes"]
            .to_string()
            .contains("names no backend of the pool"),
        "{v}"
    );

    // Matched in its normal form, then refused by the rule's policy.
    let v = ask(&["--path", "/api/x/../private/key"]);
    let notes = v["http"]["notes"].to_string();
    assert!(
        notes.contains("normal form of its path: \\\"/api/private/key\\\""),
        "{v}"
    );
    assert!(
        notes.contains("refused by policy \\\"private\\\": answered 403"),
        "{v}"
    );
    assert!(
        v["http"]["pool"].is_null() && v["pools"] == serde_json::json!([]),
        "{v}"
    );

    // A body refused before any rule: too large, or framed twice.
    for (headers, answer) in [
        (
            &["-H", "Content-Length: 1000"][..],
            "answered 413 (body_too_large)",
        ),
        (
            &[
                "-H",
                "Content-Length: 5",
                "-H",
                "Transfer-Encoding: chunked",
            ][..],
            "answered 400",
        ),
        (
            &["-H", "Content-Length: 5", "-H", "Content-Length: 6"][..],
            "answered 400",
        ),
    ] {
        let mut args = vec!["--path", "/", "--method", "POST"];
        args.extend_from_slice(headers);
        let v = ask(&args);
        assert!(
            v["http"]["notes"].to_string().contains(answer),
            "{answer}: {v}"
        );
        assert!(v["http"]["rule"].is_null(), "{v}");
    }
    let v = ask(&[
        "--path",
        "/",
        "--method",
        "POST",
        "-H",
        "Content-Length: 100",
    ]);
    assert_eq!(v["http"]["rule"], "rest", "{v}");

    // A POST is not the api rule's.
    let v = ask(&["--path", "/api/x", "--method", "POST"]);
    assert!(
        rules(&v)[2].1.contains("method POST is not in [\"GET\"]"),
        "{v}"
    );
    assert_eq!(v["http"]["rule"], "rest", "{v}");

    // A redirect, by the JSON API, with a header.
    let body = crate::cli::http_get(
        http,
        "/api/v1/explain?listener=web&client=127.0.0.1&path=/a%3Fb%3D1&host=old.example\
         &header=X-Test:+1",
    );
    let v: serde_json::Value =
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap_or(&body)).expect("json");
    assert_eq!(v["http"]["rule"], "moved", "{v}");
    assert!(
        v["http"]["notes"]
            .to_string()
            .contains("redirected: answered 301 to http://new.example/a?b=1"),
        "{v}"
    );
    // The table, and a path that is not one.
    let table = |path: &str| {
        text(&ctl(
            grpc,
            None,
            &[
                "explain",
                "--listener",
                "web",
                "--client",
                "127.0.0.1",
                "--path",
                path,
            ],
        ))
    };
    let (code, table_out, err) = table("/api/u");
    assert_eq!(code, 0, "{err}");
    assert!(
        table_out
            .contains("rule  api              TAKES  method GET is in [\"GET\"]; path \"/api/u\"")
            && table_out.contains("  the backend gets the path \"/u\"\n  to pool api\n"),
        "{table_out}"
    );
    let (code, _, err) = table("x");
    assert_ne!(code, 0);
    assert!(err.contains("does not start with /"), "{err}");
}
