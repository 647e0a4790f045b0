//! The operator commands against a running weir: token enforcement and
//! rotation, a drain that survives a restart and a reload, reloads (`weir
//! reload` and SIGHUP) with a long-lived connection open across them, what a
//! reload leaves to the next start, a change the state file cannot take,
//! exit codes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Output, Stdio};

use crate::cli::{
    DEADLINE, Running, echo_backend, free_port, http_get, http_post, lines, run_weir, signal,
    temp_config, test_dir, wait_exit, wait_line, weir,
};

/// Runs an operator command against `admin`, with `token` as WEIR_TOKEN.
pub(crate) fn ctl(admin: SocketAddr, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = weir();
    cmd.args(args).env("WEIR_ADMIN", admin.to_string());
    match token {
        Some(t) => cmd.env("WEIR_TOKEN", t),
        None => cmd.env_remove("WEIR_TOKEN"),
    };
    cmd.output().expect("run weir")
}

pub(crate) fn text(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub(crate) fn json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{:?}", text(o));
    serde_json::from_slice(&o.stdout).expect("json output")
}

/// Admin endpoints, one listener on `listen`, pool `p` with `backends`.
fn config_on(
    listen: SocketAddr,
    grpc: SocketAddr,
    http: SocketAddr,
    extra: &str,
    backends: &[(&str, SocketAddr)],
) -> String {
    let mut t = format!(
        "[admin]\nhttp = \"{http}\"\ngrpc = \"{grpc}\"\n{extra}\n\
         [[listeners]]\nname = \"l\"\nbind = \"{listen}\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n"
    );
    for (name, a) in backends {
        t.push_str(&format!(
            "[[pools.backends]]\nname = \"{name}\"\naddress = \"{a}\"\n"
        ));
    }
    t
}

fn config(
    grpc: SocketAddr,
    http: SocketAddr,
    extra: &str,
    backends: &[(&str, SocketAddr)],
) -> String {
    config_on(
        "127.0.0.1:0".parse().expect("addr"),
        grpc,
        http,
        extra,
        backends,
    )
}

fn metric(http: SocketAddr, line_start: &str) -> String {
    let body = http_get(http, "/metrics");
    body.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in /metrics"))
        .to_owned()
}

#[test]
fn changes_need_the_token_and_reads_do_not() {
    let dir = test_dir("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").expect("write");
    let (grpc, http) = (free_port(), free_port());
    let b = echo_backend();
    let file = temp_config(
        "token",
        &config(
            grpc,
            http,
            &format!("token_file = {:?}", token_file.display().to_string()),
            &[("b", b)],
        ),
    );
    let (_weir, _out) = run_weir(&file);

    let (code, _, err) = text(&ctl(grpc, None, &["backend", "drain", "p", "b"]));
    assert_eq!(code, 4, "missing token: {err}");
    assert!(
        err.contains("needs a token") && err.contains("WEIR_TOKEN"),
        "{err}"
    );
    let (code, _, err) = text(&ctl(
        grpc,
        Some("wrong-token-0123456789"),
        &["backend", "drain", "p", "b"],
    ));
    assert_eq!(code, 4, "wrong token: {err}");
    assert!(err.contains("wrong"), "{err}");
    let (code, _, err) = text(&ctl(grpc, Some("short"), &["reload"]));
    assert_eq!(code, 4, "{err}");
    // The firewall's and the listeners' changes too.
    for args in [
        &["firewall", "deny", "192.0.2.1"][..],
        &["firewall", "remove", "192.0.2.1"],
        &["listener", "max-connections", "l", "5"],
    ] {
        let (code, _, err) = text(&ctl(grpc, None, args));
        assert_eq!(code, 4, "{args:?} without a token: {err}");
    }
    // Nothing changed, and reads need no token.
    let backends = json(&ctl(grpc, None, &["backends", "-o", "json"]));
    assert_eq!(backends[0]["admin"], "enabled");
    let rules = json(&ctl(grpc, None, &["firewall", "list", "-o", "json"]));
    assert_eq!(rules, serde_json::json!([]));

    let (code, out, err) = text(&ctl(
        grpc,
        Some("s3cret-token-0123456789"),
        &["backend", "drain", "p", "b"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("drain"), "{out}");
    let backends = json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    assert_eq!(backends[0]["admin"], "drain");

    assert_eq!(
        metric(
            http,
            "weir_admin_auth_failures_total{reason=\"missing_token\"}"
        ),
        "weir_admin_auth_failures_total{reason=\"missing_token\"} 4"
    );
    assert_eq!(
        metric(
            http,
            "weir_admin_auth_failures_total{reason=\"wrong_token\"}"
        ),
        "weir_admin_auth_failures_total{reason=\"wrong_token\"} 2"
    );
    assert!(
        metric(http, "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"SetBackendAdmin\",grpc_code=\"Unauthenticated\"}")
            .ends_with(" 2")
    );
}

#[test]
fn a_drain_survives_a_restart_and_shows_in_the_history() {
    let dir = test_dir("drain");
    let db = dir.join("state.db");
    let (grpc, http) = (free_port(), free_port());
    let (a, b) = (echo_backend(), echo_backend());
    let file = temp_config(
        "drain",
        &config(
            grpc,
            http,
            &format!("[state]\npath = {:?}", db.display().to_string()),
            &[("a", a), ("b", b)],
        ),
    );
    let (mut first, _out) = run_weir(&file);
    let (code, out, err) = text(&ctl(grpc, None, &["backend", "drain", "p", "a"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("BACKEND") && out.contains("drain"), "{out}");
    let (code, _, err) = text(&ctl(grpc, None, &["backend", "weight", "p", "b", "7"]));
    assert_eq!(code, 0, "{err}");
    signal(&first.0, rustix::process::Signal::TERM);
    assert_eq!(wait_exit(&mut first.0).code(), Some(0));

    let (_second, _out) = run_weir(&file);
    let backends = json(&ctl(grpc, None, &["backends", "-o", "json"]));
    assert_eq!(backends[0]["name"], "a");
    assert_eq!(backends[0]["admin"], "drain", "{backends}");
    assert_eq!(backends[0]["serving"], false);
    assert_eq!(backends[1]["weight_override"], 7);
    let (code, out, _) = text(&ctl(grpc, None, &["backend", "history", "p", "a"]));
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l.contains("admin")
            && l.contains("enabled")
            && l.contains("drain")
            && l.contains("operator")),
        "{out}"
    );
    let history = json(&ctl(
        grpc,
        None,
        &["backend", "history", "p", "b", "-o", "json"],
    ));
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    assert_eq!(history[0]["kind"], "weight");
    assert_eq!(
        (history[0]["from"].as_str(), history[0]["to"].as_str()),
        (Some("configured"), Some("7"))
    );
    let status = json(&ctl(grpc, None, &["status", "-o", "json"]));
    assert_eq!(status["state_path"], db.display().to_string());
    assert_eq!(status["backends_by_state"]["drain"], 1);

    // `weir watch` sees the next change as it happens.
    let mut watch = weir()
        .args(["watch", "--pool", "p", "-o", "json"])
        .env("WEIR_ADMIN", grpc.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("weir watch");
    let events = lines(&mut watch);
    let _watch = Running::new(watch);
    // A watch sees changes from the moment it has subscribed, which the test
    // cannot observe from outside: change the backend until an event shows.
    let mut seen = None;
    for _ in 0..50 {
        for state in ["disable", "enable"] {
            let (code, _, err) = text(&ctl(grpc, None, &["backend", state, "p", "a"]));
            assert_eq!(code, 0, "{err}");
        }
        if let Ok(line) = events.recv_timeout(std::time::Duration::from_millis(200)) {
            seen = Some(line);
            break;
        }
    }
    let event: serde_json::Value =
        serde_json::from_str(&seen.expect("an event from weir watch")).expect("json event");
    assert_eq!(event["type"], "backend", "{event}");
    assert_eq!(event["backend"], "a");
    assert_eq!(event["transition"]["kind"], "admin");
    assert_eq!(event["transition"]["cause"], "operator");
    // A watch whose reader is gone (`weir watch | grep -m1 ...` once grep
    // found its line) ends at the next event, rather than follow for no one.
    let mut gone = weir()
        .args(["watch", "--pool", "p"])
        .env("WEIR_ADMIN", grpc.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir watch");
    drop(gone.stdout.take());
    let end = std::time::Instant::now() + DEADLINE;
    while gone.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() >= end {
            let _ = gone.kill();
            panic!("weir watch went on with nobody reading");
        }
        for state in ["disable", "enable"] {
            let (code, _, err) = text(&ctl(grpc, None, &["backend", state, "p", "a"]));
            assert_eq!(code, 0, "{err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["backend", "weight", "p", "b", "--clear"],
    ));
    assert_eq!(code, 0, "{err}");
    let backends = json(&ctl(grpc, None, &["backends", "-o", "json"]));
    assert_eq!(backends[0]["admin"], "enabled");
    assert_eq!(backends[1]["weight_override"], serde_json::Value::Null);

    // Refusals and their exit codes.
    let (code, _, err) = text(&ctl(grpc, None, &["backend", "drain", "p", "nope"]));
    assert_eq!(code, 1);
    assert!(err.contains("pool \"p\" has no backend \"nope\""), "{err}");
    let (code, _, err) = text(&ctl(grpc, None, &["backends", "nope"]));
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = text(&ctl(grpc, None, &["backend", "weight", "p", "a", "5000"]));
    assert_eq!(code, 1);
    assert!(err.contains("out of range"), "{err}");
    let (code, _, _) = text(&ctl(grpc, None, &["backend", "weight", "p", "a"]));
    assert_eq!(code, 2, "a weight or --clear is required");
}

#[test]
fn the_cli_says_when_weir_is_not_there() {
    let nobody = free_port();
    let (code, _, err) = text(&ctl(nobody, None, &["status"]));
    assert_eq!(code, 3);
    assert!(
        err.contains(&format!("cannot reach weir at {nobody}")),
        "{err}"
    );
    assert!(err.contains("WEIR_ADMIN"), "{err}");
}

fn echo_once(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).expect("write");
    let mut buf = vec![0; msg.len()];
    c.read_exact(&mut buf).expect("read");
    assert_eq!(buf, msg);
}

fn write(file: &Path, text: &str) {
    std::fs::write(file, text).expect("write config");
}

#[test]
fn reload_by_command_and_sighup_keeps_a_long_lived_connection() {
    let (grpc, http) = (free_port(), free_port());
    let (a, b) = (echo_backend(), echo_backend());
    let front = free_port();
    let good = config_on(front, grpc, http, "", &[("a", a)]);
    let file = temp_config("reload", &good);
    let (weir_proc, out) = run_weir(&file);
    let mut c = TcpStream::connect(front).expect("connect");
    c.set_read_timeout(Some(DEADLINE)).expect("timeout");
    echo_once(&mut c, b"one");

    // `weir reload`: a backend added.
    write(
        &file,
        &config_on(front, grpc, http, "", &[("a", a), ("b", b)]),
    );
    let (code, stdout, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("generation 2") && stdout.contains("added    backend p/b"),
        "{stdout}"
    );
    echo_once(&mut c, b"two");

    // A broken file: exit 1, the key path, nothing changed.
    write(
        &file,
        &good.replace("name = \"p\"\n", "name = \"p\"\nbalance = \"fastest\"\n"),
    );
    let (code, _, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("pools[0].balance") && err.contains("unchanged"),
        "{err}"
    );
    let status = json(&ctl(grpc, None, &["status", "-o", "json"]));
    assert_eq!(status["config_generation"], 2);
    assert_eq!(status["last_reload"]["ok"], false);
    assert_eq!(
        metric(http, "weir_config_last_reload_successful"),
        "weir_config_last_reload_successful 0"
    );
    echo_once(&mut c, b"three");

    // SIGHUP with a good file: `b` removed again.
    write(&file, &good);
    signal(&weir_proc.0, rustix::process::Signal::HUP);
    // The first `weir reload` logged "config reloaded" too: wait for this one.
    wait_line(&out, "config reloaded generation=3");
    let status = json(&ctl(grpc, None, &["status", "-o", "json"]));
    assert_eq!(status["config_generation"], 3);
    assert_eq!(status["last_reload"]["ok"], true);
    assert_eq!(status["backends"], 1);
    assert_eq!(
        metric(http, "weir_config_generation"),
        "weir_config_generation 3"
    );
    assert_eq!(
        metric(http, "weir_config_reloads_total{result=\"success\"}"),
        "weir_config_reloads_total{result=\"success\"} 2"
    );
    assert_eq!(
        metric(http, "weir_config_reloads_total{result=\"failure\"}"),
        "weir_config_reloads_total{result=\"failure\"} 1"
    );
    echo_once(&mut c, b"four");
    // The connection's listener counted it once, across all three reloads.
    assert_eq!(
        metric(http, "weir_listener_connections_total{listener=\"l\"}"),
        "weir_listener_connections_total{listener=\"l\"} 1"
    );
}

#[test]
fn tier_changes_have_causes_survive_a_restart_and_show_in_the_cli() {
    let dir = test_dir("tiers");
    let db = dir.join("state.db");
    let (grpc, http) = (free_port(), free_port());
    let (a, b) = (echo_backend(), echo_backend());
    let text_config = format!(
        "[admin]\nhttp = \"{http}\"\ngrpc = \"{grpc}\"\n[state]\npath = {:?}\n\
         [[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n\
         [[pools.backends]]\nname = \"a\"\naddress = \"{a}\"\ntier = 0\n\
         [[pools.backends]]\nname = \"b\"\naddress = \"{b}\"\ntier = 1\n",
        db.display().to_string()
    );
    let file = temp_config("tiers", &text_config);
    let (mut first, _out) = run_weir(&file);
    let (code, _, err) = text(&ctl(grpc, None, &["backend", "drain", "p", "a"]));
    assert_eq!(code, 0, "{err}");
    let history = json(&ctl(grpc, None, &["pool", "history", "p", "-o", "json"]));
    let changes: Vec<(serde_json::Value, serde_json::Value, String)> = history
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| {
            (
                t["from"].clone(),
                t["to"].clone(),
                t["cause"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                serde_json::Value::Null,
                0.into(),
                "first probe round".to_owned()
            ),
            (
                0.into(),
                1.into(),
                "a: admin enabled -> drain (operator)".to_owned()
            ),
        ]
    );
    let (code, out, _) = text(&ctl(grpc, None, &["pools"]));
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l.starts_with("p ")
            && l.contains("1/2")
            && l.contains("0 -> 1 (a: admin enabled -> drain (operator))")),
        "{out}"
    );
    signal(&first.0, rustix::process::Signal::TERM);
    assert_eq!(wait_exit(&mut first.0).code(), Some(0));

    // After a restart the history is still there, and the start is a change too.
    let (_second, _out) = run_weir(&file);
    let (code, out, _) = text(&ctl(grpc, None, &["pool", "history", "p"]));
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[1].contains("a: admin enabled -> drain (operator)"),
        "{out}"
    );
    assert!(
        rows[2].contains("none") && rows[2].contains("first probe round"),
        "{out}"
    );
    assert_eq!(
        metric(http, "weir_pool_active_tier{pool=\"p\"}"),
        "weir_pool_active_tier{pool=\"p\"} 1"
    );
}

/// What an operator set survives a reload, one that changes the configured
/// weight of the re-weighted backend included: the drain and the disable
/// stay, the override stays in force with the new configured weight shown
/// beside it, and clearing the override brings in the new configured weight.
#[test]
fn operator_state_survives_a_reload_that_changes_the_configured_weight() {
    let (grpc, http) = (free_port(), free_port());
    let (a, b, c) = (echo_backend(), echo_backend(), echo_backend());
    let before = config(grpc, http, "", &[("a", a), ("b", b), ("c", c)]);
    let file = temp_config("operator-reload", &before);
    let (_weir, _out) = run_weir(&file);
    for args in [
        &["backend", "drain", "p", "a"][..],
        &["backend", "weight", "p", "b", "7"],
        &["backend", "disable", "p", "c"],
    ] {
        let (code, _, err) = text(&ctl(grpc, None, args));
        assert_eq!(code, 0, "{args:?}: {err}");
    }

    write(
        &file,
        &before.replace("name = \"b\"\n", "name = \"b\"\nweight = 3\n"),
    );
    let (code, out, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("generation 2") && out.contains("changed  backend p/b"),
        "{out}"
    );

    let backends = json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    assert_eq!(backends[0]["name"], "a");
    assert_eq!(backends[0]["admin"], "drain", "{backends}");
    assert_eq!(backends[0]["serving"], false);
    assert_eq!(backends[0]["effective_weight"], 0);
    assert_eq!(backends[1]["name"], "b");
    assert_eq!(backends[1]["admin"], "enabled", "{backends}");
    assert_eq!(
        backends[1]["weight"], 3,
        "the configured weight: {backends}"
    );
    assert_eq!(backends[1]["weight_override"], 7, "{backends}");
    assert_eq!(backends[1]["effective_weight"], 7, "{backends}");
    assert_eq!(backends[2]["name"], "c");
    assert_eq!(backends[2]["admin"], "disabled", "{backends}");
    assert_eq!(backends[2]["serving"], false);
    let (code, out, _) = text(&ctl(grpc, None, &["backends", "p"]));
    assert_eq!(code, 0);
    assert!(
        out.lines().any(
            |l| l.split_whitespace().nth(1) == Some("b") && l.contains("7 (set; 3 configured)")
        ),
        "{out}"
    );

    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["backend", "weight", "p", "b", "--clear"],
    ));
    assert_eq!(code, 0, "{err}");
    let backends = json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    assert_eq!(backends[1]["weight_override"], serde_json::Value::Null);
    assert_eq!(backends[1]["effective_weight"], 3, "{backends}");
}

/// A reload reads the token file again, which is how the token is rotated:
/// until then the running token stays; after `weir reload` (with the current
/// token) or SIGHUP only the token the file now holds is accepted.
#[test]
fn a_reload_rotates_the_token() {
    let dir = test_dir("rotate");
    let token_file = dir.join("token");
    let first = "first-token-0123456789abcdef";
    let second = "second-token-fedcba9876543210";
    let third = "third-token-00112233445566778899";
    std::fs::write(&token_file, format!("{first}\n")).expect("write");
    let (grpc, http) = (free_port(), free_port());
    let b = echo_backend();
    let file = temp_config(
        "rotate",
        &config(
            grpc,
            http,
            &format!("token_file = {:?}", token_file.display().to_string()),
            &[("b", b)],
        ),
    );
    let (weir_proc, out) = run_weir(&file);
    let admin = || {
        json(&ctl(grpc, None, &["backends", "p", "-o", "json"]))[0]["admin"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (code, _, err) = text(&ctl(grpc, Some(first), &["backend", "drain", "p", "b"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(admin(), "drain");

    // The file changes; the running token does not until a reload.
    std::fs::write(&token_file, format!("{second}\n")).expect("write");
    let (code, _, err) = text(&ctl(grpc, Some(second), &["backend", "enable", "p", "b"]));
    assert_eq!(code, 4, "the new token before the reload: {err}");
    let (code, _, err) = text(&ctl(grpc, Some(first), &["reload"]));
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = text(&ctl(grpc, Some(first), &["backend", "enable", "p", "b"]));
    assert_eq!(code, 4, "the old token after the reload: {err}");
    assert!(err.contains("wrong"), "{err}");
    assert_eq!(admin(), "drain", "a refused change changed nothing");
    let (code, _, err) = text(&ctl(grpc, Some(second), &["backend", "enable", "p", "b"]));
    assert_eq!(code, 0, "the new token after the reload: {err}");
    assert_eq!(admin(), "enabled");

    // SIGHUP reads it again too.
    std::fs::write(&token_file, format!("{third}\n")).expect("write");
    signal(&weir_proc.0, rustix::process::Signal::HUP);
    wait_line(&out, "config reloaded generation=3");
    let (code, _, err) = text(&ctl(grpc, Some(second), &["backend", "drain", "p", "b"]));
    assert_eq!(code, 4, "the old token after SIGHUP: {err}");
    let (code, _, err) = text(&ctl(grpc, Some(second), &["reload"]));
    assert_eq!(code, 4, "{err}");
    assert_eq!(admin(), "enabled");
    let (code, _, err) = text(&ctl(grpc, Some(third), &["backend", "drain", "p", "b"]));
    assert_eq!(code, 0, "the new token after SIGHUP: {err}");
    assert_eq!(admin(), "drain");

    assert_eq!(
        metric(
            http,
            "weir_admin_auth_failures_total{reason=\"wrong_token\"}"
        ),
        "weir_admin_auth_failures_total{reason=\"wrong_token\"} 4"
    );
}

/// `admin.hosts` is read again by every reload: the names the HTTP endpoint
/// answers change with it, and no restart is asked for.
#[test]
fn a_reload_changes_the_names_the_http_endpoint_answers() {
    let (grpc, http) = (free_port(), free_port());
    let a = echo_backend();
    let file = temp_config(
        "hosts-reload",
        &config(grpc, http, "hosts = [\"a.example\"]", &[("a", a)]),
    );
    let (_weir, _out) = run_weir(&file);
    let status = |host: &str| {
        let mut s = TcpStream::connect(http).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        write!(
            s,
            "GET /api/v1/pools HTTP/1.1\r\nHost: {host}:80\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        answer.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(status("a.example"), "HTTP/1.1 200 OK");
    assert_eq!(status("b.example"), "HTTP/1.1 421 Misdirected Request");
    write(
        &file,
        &config(grpc, http, "hosts = [\"b.example\"]", &[("a", a)]),
    );
    let r = json(&ctl(grpc, None, &["reload", "-o", "json"]));
    assert_eq!(r["need_restart"], serde_json::json!([]), "{r}");
    assert_eq!(status("a.example"), "HTTP/1.1 421 Misdirected Request");
    assert_eq!(status("b.example"), "HTTP/1.1 200 OK");
}

/// A reload that changes settings read only at start applies the rest and
/// says which: `weir reload` prints a `note:` line per section, its JSON
/// answer lists them in `need_restart`, and the log warns. Settings a reload
/// does apply (`zero_copy`, `access_log`) are not listed.
#[test]
fn a_reload_names_the_changes_that_take_effect_at_the_next_start() {
    let (grpc, http) = (free_port(), free_port());
    let (a, b) = (echo_backend(), echo_backend());
    let file = temp_config("restart-only", &config(grpc, http, "", &[("a", a)]));
    let (_weir, out) = run_weir(&file);

    // One of the [admin] settings beside the addresses: the endpoints'
    // limits and timeouts are set up once.
    write(
        &file,
        &config(grpc, http, "handshake_timeout = \"20s\"", &[("a", a)]),
    );
    let (code, stdout, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("generation 2")
            && stdout.contains("  no listener, pool or backend changed (files were read again)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  note: changes to [admin] take effect at the next start\n"),
        "{stdout}"
    );
    let warning = wait_line(&out, "take effect at the next start");
    assert!(warning.contains("admin"), "{warning}");

    // Several sections at once, with a change a reload applies.
    let extra = "handshake_timeout = \"20s\"\nmax_connections = 32\nidle_timeout = \"1m\"\n\
                 [runtime]\nworker_threads = 1\nzero_copy = true\n\
                 [log]\nlevel = \"warn\"\naccess_log = false";
    write(&file, &config(grpc, http, extra, &[("a", a), ("b", b)]));
    let r = json(&ctl(grpc, None, &["reload", "-o", "json"]));
    assert_eq!(r["generation"], 3, "{r}");
    assert_eq!(r["added"], serde_json::json!(["backend p/b"]), "{r}");
    assert_eq!(
        r["need_restart"],
        serde_json::json!(["admin", "runtime.worker_threads", "log"]),
        "{r}"
    );

    // Only settings a reload applies change: the ones still waiting for a
    // restart are named again, compared with what weir started with.
    write(
        &file,
        &config(
            grpc,
            http,
            &extra
                .replace("zero_copy = true", "zero_copy = false")
                .replace("access_log = false", "access_log = true"),
            &[("a", a), ("b", b)],
        ),
    );
    let r = json(&ctl(grpc, None, &["reload", "-o", "json"]));
    assert_eq!(r["generation"], 4, "{r}");
    assert_eq!(
        r["need_restart"],
        serde_json::json!(["admin", "runtime.worker_threads", "log"]),
        "{r}"
    );

    // The JSON API's answer says the same. Back to the settings weir
    // started with, but for the log format: only `log` still waits.
    write(
        &file,
        &config(
            grpc,
            http,
            "[log]\nformat = \"json\"",
            &[("a", a), ("b", b)],
        ),
    );
    let answer = http_post(http, "/api/v1/reload");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let r: serde_json::Value = serde_json::from_str(body).expect("json answer");
    assert_eq!(r["generation"], 5, "{r}");
    assert_eq!(r["need_restart"], serde_json::json!(["log"]), "{r}");
    // And with the file as at the start, nothing waits.
    write(&file, &config(grpc, http, "", &[("a", a), ("b", b)]));
    let r = json(&ctl(grpc, None, &["reload", "-o", "json"]));
    assert_eq!(r["generation"], 6, "{r}");
    assert_eq!(r["need_restart"], serde_json::json!([]), "{r}");
    let status = json(&ctl(grpc, None, &["status", "-o", "json"]));
    assert_eq!(status["config_generation"], 6);
    assert_eq!(status["backends"], 2);
}

/// python3's sqlite3 holding the write lock of an SQLite database
/// (`BEGIN EXCLUSIVE`) until it reads a line.
const HOLD_LOCK: &str = "import sqlite3, sys\n\
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n\
db.execute('BEGIN EXCLUSIVE')\n\
print('locked', flush=True)\n\
sys.stdin.readline()\n\
db.execute('ROLLBACK')\n\
print('released', flush=True)\n";

/// Another process holding the write lock of the state database.
struct DbLock {
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    _holder: Running,
}

impl DbLock {
    /// Takes the lock of `db` and holds it.
    fn hold(db: &Path) -> DbLock {
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(HOLD_LOCK)
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (run scripts/test.sh, which installs it)");
        let stdin = child.stdin.take();
        let lines = lines(&mut child);
        let lock = DbLock {
            stdin,
            lines,
            _holder: Running::new(child),
        };
        wait_line(&lock.lines, "locked");
        lock
    }

    fn release(&mut self) {
        let mut stdin = self.stdin.take().expect("the lock is held");
        stdin.write_all(b"release\n").expect("tell the holder");
        wait_line(&self.lines, "released");
    }
}

/// The rows `sql` reads from the SQLite database `db`, one Python `repr` a
/// line.
pub(crate) fn query(db: &Path, sql: &str) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys\nfor row in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]): print(row)")
        .arg(db)
        .arg(sql)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An operator change the state file cannot take (here another process
/// holds its write lock past the 1 s busy timeout) is refused with `not
/// saved, nothing changed: <reason>`: the CLI exits 1, gRPC says INTERNAL,
/// the JSON API answers 500 `internal`. Nothing changes, in memory or in
/// the file: the backend stays enabled at its configured weight, no rule and
/// no backend is added, the history has no such change. Once the lock is
/// gone the same change is made and saved.
#[test]
fn a_change_the_state_file_cannot_take_is_refused_and_changes_nothing() {
    let dir = test_dir("unsaved");
    let db = dir.join("state.db");
    let (grpc, http) = (free_port(), free_port());
    let b = echo_backend();
    let file = temp_config(
        "unsaved",
        &config(
            grpc,
            http,
            &format!("[state]\npath = {:?}", db.display().to_string()),
            &[("b", b)],
        ),
    );
    let (_weir, _out) = run_weir(&file);
    let mut lock = DbLock::hold(&db);

    let (code, _, err) = text(&ctl(grpc, None, &["backend", "drain", "p", "b"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not saved, nothing changed: ") && err.contains("locked"),
        "{err}"
    );
    let internal = "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"SetBackendAdmin\",grpc_code=\"Internal\"}";
    assert_eq!(metric(http, internal), format!("{internal} 1"));

    let answer = http_post(http, "/api/v1/pools/p/backends/b/drain");
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let r: serde_json::Value = serde_json::from_str(body).expect("json answer");
    assert_eq!(r["error"]["code"], "internal", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("not saved, nothing changed: ")),
        "{r}"
    );

    for args in [
        &["backend", "weight", "p", "b", "7"][..],
        &["firewall", "deny", "192.0.2.1"],
        &["backend", "add", "p", "192.0.2.10:80", "--name", "c"],
    ] {
        let (code, _, err) = text(&ctl(grpc, None, args));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("not saved, nothing changed: "),
            "{args:?}: {err}"
        );
    }

    let backends = json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    assert_eq!(backends.as_array().map(Vec::len), Some(1), "{backends}");
    assert_eq!(backends[0]["admin"], "enabled", "{backends}");
    assert_eq!(
        backends[0]["weight_override"],
        serde_json::Value::Null,
        "{backends}"
    );
    let history = json(&ctl(
        grpc,
        None,
        &["backend", "history", "p", "b", "-o", "json"],
    ));
    assert!(
        !history
            .as_array()
            .expect("a list")
            .iter()
            .any(|t| t["kind"] == "admin" || t["kind"] == "weight"),
        "{history}"
    );
    assert_eq!(
        json(&ctl(grpc, None, &["firewall", "list", "-o", "json"])),
        serde_json::json!([])
    );

    lock.release();
    let (code, _, err) = text(&ctl(grpc, None, &["backend", "drain", "p", "b"]));
    assert_eq!(code, 0, "{err}");
    let backends = json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    assert_eq!(backends[0]["admin"], "drain", "{backends}");
    // The file holds that change and none of the refused ones.
    assert_eq!(
        query(
            &db,
            "SELECT pool, backend, admin, weight_override FROM backend_state"
        ),
        "('p', 'b', 'drain', None)\n"
    );
    assert_eq!(
        query(
            &db,
            "SELECT (SELECT count(*) FROM firewall_rule), (SELECT count(*) FROM runtime_backend)"
        ),
        "(0, 0)\n"
    );
}

/// `weir pools` shows a limited pool's queue as waiting/limit (`QUEUED
/// 2/5`), live: its one backend holds its one connection while two more
/// clients wait, and one fewer waits once that connection ends.
#[test]
fn weir_pools_shows_the_queue_against_its_limit() {
    let (grpc, http, front) = (free_port(), free_port(), free_port());
    let a = echo_backend();
    let file = temp_config(
        "pools-queued",
        &config_on(front, grpc, http, "", &[("a", a)]).replace(
            "name = \"p\"\n",
            "name = \"p\"\nmax_connections_per_backend = 1\nmax_queue = 5\nqueue_timeout = \"1m\"\n",
        ),
    );
    let (_weir, _out) = run_weir(&file);
    // The QUEUED cell of pool p (the columns before it hold no spaces).
    let queued = || {
        let (code, out, err) = text(&ctl(grpc, None, &["pools"]));
        assert_eq!(code, 0, "{err}");
        let mut rows = out.lines();
        let header: Vec<&str> = rows.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header.get(5), Some(&"QUEUED"), "{out}");
        let row = rows
            .find(|l| l.starts_with("p "))
            .unwrap_or_else(|| panic!("no pool p: {out}"));
        row.split_whitespace().nth(5).unwrap_or_default().to_owned()
    };
    let wait_depth = |n: u64| {
        let end = std::time::Instant::now() + DEADLINE;
        loop {
            let pools = json(&ctl(grpc, None, &["pools", "-o", "json"]));
            if pools[0]["queue_depth"] == n {
                assert_eq!(pools[0]["max_queue"], 5, "{pools}");
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "never {n} waiting: {pools}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    assert_eq!(queued(), "0/5");

    let mut held = TcpStream::connect(front).expect("connect");
    held.set_read_timeout(Some(DEADLINE)).expect("timeout");
    echo_once(&mut held, b"held");
    let _waiting: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(front).expect("connect"))
        .collect();
    wait_depth(2);
    assert_eq!(queued(), "2/5");

    // The held connection ends: its slot goes to the first waiter.
    drop(held);
    wait_depth(1);
    assert_eq!(queued(), "1/5");
}

/// Operator state saved for backends the config no longer has is listed by
/// `weir status` under `saved state for backends not in the config`: after
/// the reload that removed them (which logs a warning) and after a restart.
/// A backend that left with history only (an override set and cleared) is
/// not listed. When the backend comes back it gets its state again and the
/// list is gone.
#[test]
fn weir_status_lists_saved_state_for_backends_not_in_the_config() {
    let dir = test_dir("orphaned");
    let db = dir.join("state.db");
    let (grpc, http) = (free_port(), free_port());
    let (a, b, c) = (echo_backend(), echo_backend(), echo_backend());
    let state = format!("[state]\npath = {:?}", db.display().to_string());
    let all = config(grpc, http, &state, &[("a", a), ("b", b), ("c", c)]);
    let only_a = config(grpc, http, &state, &[("a", a)]);
    let file = temp_config("orphaned", &all);
    let (mut first, out) = run_weir(&file);
    for args in [
        &["backend", "drain", "p", "b"][..],
        &["backend", "weight", "p", "b", "7"],
        &["backend", "weight", "p", "c", "5"],
        &["backend", "weight", "p", "c", "--clear"],
    ] {
        let (code, _, err) = text(&ctl(grpc, None, args));
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    // c's history is written in the background: wait until the file has
    // it, so that c is an entry of the file without operator state.
    let end = std::time::Instant::now() + DEADLINE;
    while query(
        &db,
        "SELECT count(*) FROM transition WHERE pool = 'p' AND backend = 'c'",
    ) == "(0,)\n"
    {
        assert!(std::time::Instant::now() < end, "no history for c");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        query(
            &db,
            "SELECT count(*) FROM backend_state WHERE backend = 'c'"
        ),
        "(0,)\n"
    );
    let status = || {
        let (code, out, err) = text(&ctl(grpc, None, &["status"]));
        assert_eq!(code, 0, "{err}");
        out
    };
    let before = status();
    assert!(!before.contains("saved state"), "{before}");

    write(&file, &only_a);
    let (code, stdout, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("removed  backend p/b") && stdout.contains("removed  backend p/c"),
        "{stdout}"
    );
    let warning = wait_line(
        &out,
        "the state file has operator state for a backend that is not in the config; kept, not applied",
    );
    assert!(warning.contains("backend=b"), "{warning}");
    // The last lines of the table: b, and nothing for c after it.
    let listed = "\nsaved state for backends not in the config (kept, not applied):\n\
                  \x20 p/b  admin drain  weight 7\n";
    let after = status();
    assert!(after.ends_with(listed), "{after}");
    assert!(!after.contains("p/c"), "{after}");
    let v = json(&ctl(grpc, None, &["status", "-o", "json"]));
    assert_eq!(
        v["orphaned_state"],
        serde_json::json!([{"pool": "p", "backend": "b", "admin": "drain", "weight_override": 7}]),
        "{v}"
    );

    // At the next start too.
    signal(&first.0, rustix::process::Signal::TERM);
    assert_eq!(wait_exit(&mut first.0).code(), Some(0));
    let (_second, _out) = run_weir(&file);
    let restarted = status();
    assert!(restarted.ends_with(listed), "{restarted}");

    // b comes back, with its state.
    write(&file, &all);
    let (code, _, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 0, "{err}");
    let back = status();
    assert!(!back.contains("saved state"), "{back}");
    let backends = json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    assert_eq!(backends[1]["name"], "b", "{backends}");
    assert_eq!(backends[1]["admin"], "drain", "{backends}");
    assert_eq!(backends[1]["weight_override"], 7, "{backends}");
}

/// `weir watch` prints a reload that failed as `<time>  reload FAILED
/// (generation N still runs): <reason>`, N the generation that goes on
/// serving, and one that worked as `reload ok, generation N`.
#[test]
fn weir_watch_prints_a_failed_reload() {
    let (grpc, http) = (free_port(), free_port());
    let (a, b) = (echo_backend(), echo_backend());
    let good = config(grpc, http, "", &[("a", a)]);
    let broken = good.replace("name = \"a\"\n", "name = \"a\"\nweight = 1200\n");
    let file = temp_config("watch-reload", &good);
    let (_weir, _out) = run_weir(&file);
    let mut watch = weir()
        .arg("watch")
        .env("WEIR_ADMIN", grpc.to_string())
        .env_remove("WEIR_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir watch");
    let events = lines(&mut watch);
    let _watch = Running::new(watch);

    write(&file, &broken);
    // A watch sees events from the moment it has subscribed: reload until
    // one shows.
    let mut seen = None;
    for _ in 0..50 {
        let (code, _, err) = text(&ctl(grpc, None, &["reload"]));
        assert_eq!(code, 1, "{err}");
        if let Ok(line) = events.recv_timeout(std::time::Duration::from_millis(200)) {
            seen = Some(line);
            break;
        }
    }
    let line = seen.expect("an event from weir watch");
    let (at, event) = line
        .split_once("  ")
        .unwrap_or_else(|| panic!("no time: {line}"));
    assert!(
        at.len() == 24 && at.as_bytes().get(10) == Some(&b'T') && at.ends_with('Z'),
        "{line}"
    );
    assert!(
        event.starts_with("reload FAILED (generation 1 still runs): "),
        "{line}"
    );
    assert!(event.contains("pools[0].backends[0].weight"), "{line}");

    write(&file, &config(grpc, http, "", &[("a", a), ("b", b)]));
    let (code, _, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 0, "{err}");
    let ok = wait_line(&events, "reload ok");
    assert!(ok.ends_with("  reload ok, generation 2"), "{ok}");

    write(&file, &broken);
    let (code, _, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 1, "{err}");
    let failed = wait_line(&events, "reload FAILED");
    assert!(
        failed.contains("  reload FAILED (generation 2 still runs): "),
        "{failed}"
    );
}

/// The value of `series` in a scrape of `http`; `None` while it is not
/// there (a gRPC method's series appear once it has been called).
fn sample(http: SocketAddr, series: &str) -> Option<f64> {
    http_get(http, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A reload keeps a backend's health when its probe target and the pool's
/// check stay (a new `interval` keeps it too), and starts it again at
/// `unknown` when the target changes, with the cause `reload: health check
/// changed`; the probe before the swap then decides. With `rise = 3` the
/// two differ after one passing probe: a kept `down` stays down, a reset
/// backend is up at once. Probes run only at start and at each reload
/// (`interval` and `fast_interval` of an hour).
#[test]
fn a_reload_keeps_health_unless_the_probe_target_changes() {
    let (grpc, http) = (free_port(), free_port());
    // Nothing listens on b's address yet: its first probe takes it down.
    let b = free_port();
    let config_text = |interval: &str, check_port: &str| {
        format!(
            "[admin]\nhttp = \"{http}\"\ngrpc = \"{grpc}\"\n\
             [[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n\
             [pools.health]\ntype = \"tcp\"\ninterval = \"{interval}\"\nfast_interval = \"1h\"\nrise = 3\n\
             [[pools.backends]]\nname = \"b\"\naddress = \"{b}\"\n{check_port}"
        )
    };
    let file = temp_config("reload-health", &config_text("1h", ""));
    let (_weir, _out) = run_weir(&file);
    let backend = || json(&ctl(grpc, None, &["backends", "p", "-o", "json"]))[0].clone();
    let v = backend();
    assert_eq!(v["health"], "down", "{v}");

    // From now on b's address takes connections (the kernel completes the
    // handshake; nothing needs to accept them).
    let _listening = std::net::TcpListener::bind(b).expect("listen on b's address");

    // Only the interval changes: the reload's probe passes, one of the three
    // passes `rise` asks for, so the kept `down` stays.
    write(&file, &config_text("2h", ""));
    let (code, _, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 0, "{err}");
    let v = backend();
    assert_eq!(v["last_probe"]["ok"], true, "the reload probed b: {v}");
    assert_eq!(v["health"], "down", "kept across the reload: {v}");

    // Another probe target (a check port that listens): health starts again
    // at unknown and the reload's one probe decides it.
    let side = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = side.local_addr().expect("addr").port();
    write(&file, &config_text("2h", &format!("check_port = {port}\n")));
    let (code, out, err) = text(&ctl(grpc, None, &["reload"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("changed  backend p/b"), "{out}");
    let v = backend();
    assert_eq!(v["health"], "up", "reset, then decided by one probe: {v}");

    let history = json(&ctl(
        grpc,
        None,
        &["backend", "history", "p", "b", "-o", "json"],
    ));
    let health: Vec<(&str, &str, &str)> = history
        .as_array()
        .expect("a list")
        .iter()
        .filter(|t| t["kind"] == "health")
        .map(|t| {
            (
                t["from"].as_str().unwrap_or_default(),
                t["to"].as_str().unwrap_or_default(),
                t["cause"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let steps: Vec<(&str, &str)> = health.iter().map(|&(f, t, _)| (f, t)).collect();
    assert_eq!(
        steps,
        [("unknown", "down"), ("down", "unknown"), ("unknown", "up")],
        "{history}"
    );
    assert_eq!(health[1].2, "reload: health check changed", "{history}");
    assert!(health[2].2.starts_with("probe: "), "{history}");
}

/// The states whose `weir_backend_state` series reads 1 for `backend` of
/// pool `p`, from one scrape; every state's series must be there.
fn states_on(http: SocketAddr, backend: &str) -> Vec<&'static str> {
    let scrape = http_get(http, "/metrics");
    ["unknown", "up", "down", "standby", "drain", "disabled"]
        .into_iter()
        .filter(|s| {
            let series =
                format!("weir_backend_state{{pool=\"p\",backend=\"{backend}\",state=\"{s}\"}} ");
            let line = scrape
                .lines()
                .find(|l| l.starts_with(&series))
                .unwrap_or_else(|| panic!("no {series}in the scrape"));
            &line[series.len()..] == "1"
        })
        .collect()
}

/// `weir_backend_state` on a live scrape: a drained backend that is up
/// reads `drain` and a disabled one that is down reads `disabled`, one
/// state at a time (the admin state wins over health, so a backend being
/// worked on raises no `WeirBackendDown`). Health stays in
/// `weir_backend_healthy`, the pool's counts and the transition counters
/// follow, and an enable brings `up` back.
#[test]
fn drained_and_disabled_backends_show_in_weir_backend_state() {
    let (grpc, http) = (free_port(), free_port());
    let (a, b) = (echo_backend(), echo_backend());
    // Nothing listens there: down after its first probe.
    let gone = free_port();
    let file = temp_config(
        "backend-state",
        &format!(
            "[admin]\nhttp = \"{http}\"\ngrpc = \"{grpc}\"\n\
             [[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\n\
             [pools.health]\ntype = \"tcp\"\ninterval = \"1h\"\n\
             [[pools.backends]]\nname = \"a\"\naddress = \"{a}\"\n\
             [[pools.backends]]\nname = \"b\"\naddress = \"{b}\"\n\
             [[pools.backends]]\nname = \"gone\"\naddress = \"{gone}\"\n"
        ),
    );
    let (_weir, _out) = run_weir(&file);
    assert_eq!(states_on(http, "a"), ["up"]);
    assert_eq!(states_on(http, "gone"), ["down"]);

    for args in [
        &["backend", "drain", "p", "a"][..],
        &["backend", "disable", "p", "gone"],
    ] {
        let (code, _, err) = text(&ctl(grpc, None, args));
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    assert_eq!(states_on(http, "a"), ["drain"]);
    assert_eq!(states_on(http, "gone"), ["disabled"]);
    assert_eq!(states_on(http, "b"), ["up"]);
    let value = |series: &str| crate::http::metric(http, series);
    // Health is its own series: a still up by its probes, gone still down.
    assert_eq!(value("weir_backend_healthy{pool=\"p\",backend=\"a\"}"), 1.0);
    assert_eq!(
        value("weir_backend_healthy{pool=\"p\",backend=\"gone\"}"),
        0.0
    );
    for (state, n) in [
        ("up", 1.0),
        ("down", 0.0),
        ("drain", 1.0),
        ("disabled", 1.0),
    ] {
        assert_eq!(
            value(&format!(
                "weir_pool_backends{{pool=\"p\",state=\"{state}\"}}"
            )),
            n,
            "{state}"
        );
    }
    assert_eq!(
        value("weir_backend_transitions_total{pool=\"p\",backend=\"a\",from=\"up\",to=\"drain\"}"),
        1.0
    );
    assert_eq!(
        value(
            "weir_backend_transitions_total{pool=\"p\",backend=\"gone\",from=\"down\",to=\"disabled\"}"
        ),
        1.0
    );

    // Enabled again: a is up at once, its health never stopped being up.
    let (code, _, err) = text(&ctl(grpc, None, &["backend", "enable", "p", "a"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(states_on(http, "a"), ["up"]);
    assert_eq!(
        value("weir_backend_transitions_total{pool=\"p\",backend=\"a\",from=\"drain\",to=\"up\"}"),
        1.0
    );
}

/// Reloads and operator commands are taken one at a time: a `weir backend
/// drain` that arrives while a reload runs waits for it, then acts on the
/// config the reload brought (its answer shows the new weight). The reload
/// is held in its probe round by a backend whose health check the test
/// answers only once weir has the drain in hand.
#[test]
fn an_operator_command_sent_during_a_reload_waits_for_it() {
    let (grpc, http) = (free_port(), free_port());
    let a = echo_backend();
    let file = temp_config("reload-serial", &config(grpc, http, "", &[("a", a)]));
    let (_weir, _out) = run_weir(&file);

    let (slow, probes) = crate::cli::holding_server();
    // The reload changes a's weight and adds a pool whose backend's HTTP
    // check goes to `slow` (30 s before the probe gives up).
    write(
        &file,
        &format!(
            "{}[[pools]]\nname = \"slow\"\n\
             [pools.health]\ntype = \"http\"\ntimeout = \"30s\"\ninterval = \"1h\"\n\
             [[pools.backends]]\nname = \"s\"\naddress = \"{slow}\"\n",
            config(grpc, http, "", &[("a", a)])
                .replace("name = \"a\"\n", "name = \"a\"\nweight = 5\n")
        ),
    );
    let reload = std::thread::spawn(move || ctl(grpc, None, &["reload"]));
    // The reload is in its probe round, and stays there until this is answered.
    let mut probe = probes
        .recv_timeout(DEADLINE)
        .expect("the reload's probe of s");
    let drain =
        std::thread::spawn(move || ctl(grpc, None, &["backend", "drain", "p", "a", "-o", "json"]));
    // weir has the drain once gRPC counts the call as started.
    let started = "grpc_server_started_total{grpc_type=\"unary\",grpc_service=\"weir.admin.v1.Admin\",grpc_method=\"SetBackendAdmin\"}";
    let end = std::time::Instant::now() + DEADLINE;
    while sample(http, started).is_none() {
        assert!(
            std::time::Instant::now() < end,
            "the drain never reached weir"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        !reload.is_finished(),
        "the reload ended before the drain came (its probe's 30 s ran out)"
    );
    assert!(
        !drain.is_finished(),
        "the drain was answered during the reload"
    );

    probe
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .expect("answer the probe");
    let (code, out, err) = text(&reload.join().expect("reload"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("generation 2"), "{out}");
    let drained = json(&drain.join().expect("drain"));
    assert_eq!(drained["admin"], "drain", "{drained}");
    assert_eq!(
        drained["weight"], 5,
        "the drain acted on the reloaded config: {drained}"
    );
}

/// `[state] history` is read only at start, in memory as in the file: a
/// reload that raises it says it waits for a restart, and a backend still
/// keeps the number of transitions weir started with.
#[test]
fn the_history_length_waits_for_a_restart() {
    let (grpc, http) = (free_port(), free_port());
    let a = echo_backend();
    let with = |history: u32| {
        format!(
            "{}[state]\nhistory = {history}\n",
            config(grpc, http, "", &[("a", a)])
        )
    };
    let file = temp_config("history-length", &with(2));
    let (_weir, _out) = run_weir(&file);
    write(&file, &with(50));
    let r = json(&ctl(grpc, None, &["reload", "-o", "json"]));
    assert_eq!(r["need_restart"], serde_json::json!(["state"]), "{r}");
    for weight in ["3", "4", "5", "6"] {
        let (code, _, err) = text(&ctl(grpc, None, &["backend", "weight", "p", "a", weight]));
        assert_eq!(code, 0, "{err}");
    }
    let history = json(&ctl(
        grpc,
        None,
        &["backend", "history", "p", "a", "-o", "json"],
    ));
    let kept: Vec<_> = history
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["to"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kept, ["5", "6"], "{history}");
}

/// A reload asked over the API runs to its end even when the caller goes
/// away while it waits for its first probe round: the new config serves,
/// and health checks go on (a reload stopped there had already stopped the
/// running config's checks and never started the new ones).
#[test]
fn a_reload_whose_caller_leaves_still_completes() {
    let (grpc, http) = (free_port(), free_port());
    let a = echo_backend();
    let file = temp_config("reload-abandoned", &config(grpc, http, "", &[("a", a)]));
    let (_weir, out) = run_weir(&file);

    let (slow, probes) = crate::cli::holding_server();
    write(
        &file,
        &format!(
            "{}[[pools]]\nname = \"slow\"\n\
             [pools.health]\ntype = \"http\"\ntimeout = \"30s\"\ninterval = \"200ms\"\n\
             [[pools.backends]]\nname = \"s\"\naddress = \"{slow}\"\n",
            config(grpc, http, "", &[("a", a)])
        ),
    );
    let mut caller = TcpStream::connect(http).expect("connect");
    write!(
        caller,
        "POST /api/v1/reload HTTP/1.1\r\nHost: {http}\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("ask for the reload");
    let mut probe = probes
        .recv_timeout(DEADLINE)
        .expect("the reload's probe of s");
    // The caller leaves while the reload waits for that probe.
    drop(caller);
    std::thread::sleep(std::time::Duration::from_millis(200));
    probe
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .expect("answer the probe");
    drop(probe);
    wait_line(&out, "config reloaded");
    let status = json(&ctl(grpc, None, &["status", "-o", "json"]));
    assert_eq!(status["config_generation"], 2, "{status}");
    // The checks run on: the next probes of s come.
    for _ in 0..2 {
        let mut next = probes.recv_timeout(DEADLINE).expect("health checks go on");
        let _ =
            next.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
}
