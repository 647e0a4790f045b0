//! Backends added and removed at runtime (`weir backend add|remove`): the
//! token, probed before they serve, traffic, history, the state file across a
//! restart, a reload that shadows one (the file wins), and a removal that
//! drains; the CLI's JSON output of each.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::cli::{DEADLINE, free_port, run_weir, temp_config, test_dir};
use crate::control::{ctl, json, text};
use crate::fleet::named_backend;

const TOKEN: &str = "runtime-token-0123456789";

fn backend_of(v: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    v.as_array()?.iter().find(|b| b["name"] == name).cloned()
}

/// Which backends answer `n` connections through `front`.
fn answers(front: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(front).expect("connect");
            s.set_read_timeout(Some(DEADLINE)).expect("timeout");
            let mut name = String::new();
            s.read_to_string(&mut name).expect("read");
            name
        })
        .collect()
}

#[test]
fn backends_added_at_runtime_serve_persist_yield_to_the_file_and_drain_when_removed() {
    let dir = test_dir("runtime-backends");
    std::fs::write(dir.join("token"), TOKEN).expect("token");
    let (grpc, front) = (free_port(), free_port());
    let a = named_backend("a");
    let extra = named_backend("extra");
    let head = format!(
        "[admin]\ngrpc = \"{grpc}\"\ntoken_file = {:?}\n[state]\npath = {:?}\n\
         [[listeners]]\nname = \"front\"\nbind = \"{front}\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\ndrain_timeout = \"1s\"\n\
         [pools.health]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
         [[pools.backends]]\nname = \"a\"\naddress = \"{a}\"\n",
        dir.join("token").display().to_string(),
        dir.join("state.db").display().to_string(),
    );
    let file = temp_config("runtime-backends", &head);
    let (weir, _out) = run_weir(&file);

    // Without the token: refused, nothing added.
    let (code, _, err) = text(&ctl(
        grpc,
        None,
        &["backend", "add", "p", &extra.to_string()],
    ));
    assert_eq!(code, 4, "{err}");
    let add = [
        "backend",
        "add",
        "p",
        &extra.to_string(),
        "--name",
        "extra",
        "--weight",
        "2",
        "-o",
        "json",
    ];
    let added = json(&ctl(grpc, Some(TOKEN), &add));
    assert_eq!(added["origin"], "runtime", "{added}");
    assert_eq!(added["weight"], 2, "{added}");
    // A second one with the same name is refused.
    let (code, _, err) = text(&ctl(grpc, Some(TOKEN), &add));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already has a backend \"extra\""), "{err}");
    // A name with a control character is refused (it would break every
    // header that names the backend).
    let (code, _, err) = text(&ctl(
        grpc,
        Some(TOKEN),
        &[
            "backend",
            "add",
            "p",
            &extra.to_string(),
            "--name",
            "x\u{1b}[2J",
        ],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("must not contain control characters"), "{err}");
    // One where nothing listens is probed and never serves.
    let dead = free_port();
    let d = json(&ctl(
        grpc,
        Some(TOKEN),
        &["backend", "add", "p", &dead.to_string(), "-o", "json"],
    ));
    assert_eq!(d["serving"], false, "{d}");

    // Traffic reaches the new one (2:1 with a), never the dead one.
    let end = Instant::now() + DEADLINE;
    loop {
        let seen = answers(front, 9);
        if seen.iter().filter(|n| *n == "extra").count() == 6 {
            assert_eq!(seen.iter().filter(|n| *n == "a").count(), 3, "{seen:?}");
            break;
        }
        assert!(Instant::now() < end, "extra never served: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let history = text(&ctl(
        grpc,
        None,
        &["backend", "history", "p", "extra", "-o", "json"],
    ))
    .1;
    assert!(
        history.contains("\"runtime\"") && history.contains("\"absent\""),
        "{history}"
    );

    // A new process applies them again from the state file.
    drop(weir);
    let (weir, _out) = run_weir(&file);
    let all = json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    let e = backend_of(&all, "extra").expect("extra after a restart");
    assert_eq!(
        (e["origin"].as_str(), e["weight"].as_u64()),
        (Some("runtime"), Some(2)),
        "{e}"
    );
    assert!(backend_of(&all, &dead.to_string()).is_some(), "{all}");

    // The file names a backend "extra" too: the file wins, the reload says so.
    std::fs::write(
        &file,
        format!("{head}[[pools.backends]]\nname = \"extra\"\naddress = \"{a}\"\n"),
    )
    .expect("write");
    let (code, out, err) = text(&ctl(grpc, Some(TOKEN), &["reload"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "runtime backend not applied: p/extra: the config file has a backend of that name"
        ),
        "{out}"
    );
    let all = json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    let e = backend_of(&all, "extra").expect("extra");
    assert_eq!(e["origin"], "config", "{e}");
    assert_eq!(e["address"], a.to_string(), "{e}");
    // A backend of the file cannot be removed at runtime.
    let (code, _, err) = text(&ctl(grpc, Some(TOKEN), &["backend", "remove", "p", "a"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("comes from the config"), "{err}");

    // Out of the file again: the runtime one is back; drained by an
    // operator, then removed, it drains.
    std::fs::write(&file, &head).expect("write");
    assert_eq!(text(&ctl(grpc, Some(TOKEN), &["reload"])).0, 0);
    assert_eq!(
        text(&ctl(grpc, Some(TOKEN), &["backend", "drain", "p", "extra"])).0,
        0
    );
    let r = json(&ctl(
        grpc,
        Some(TOKEN),
        &["backend", "remove", "p", "extra", "-o", "json"],
    ));
    assert_eq!(r["effective_weight"], 0, "{r}");
    let end = Instant::now() + DEADLINE;
    while backend_of(
        &json(&ctl(grpc, None, &["backends", "p", "-o", "json"])),
        "extra",
    )
    .is_some()
    {
        assert!(Instant::now() < end, "extra never left after its drain");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(weir);
    let (weir, _out) = run_weir(&file);
    let all = json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    assert!(
        backend_of(&all, "extra").is_none(),
        "removed for good: {all}"
    );
    // Its state went with it: added again under the same name, it starts
    // afresh, not drained as its predecessor was.
    let again = json(&ctl(
        grpc,
        Some(TOKEN),
        &[
            "backend",
            "add",
            "p",
            &extra.to_string(),
            "--name",
            "extra",
            "-o",
            "json",
        ],
    ));
    assert_eq!(again["admin"], "enabled", "{again}");
    let history = again["last_transitions"].as_array().expect("transitions");
    assert!(!history.iter().any(|t| t["to"] == "drain"), "{again}");

    // Drained, removed, and the process stopped during its drain: what was
    // saved under its name does not pass to the next backend of that name.
    assert_eq!(
        text(&ctl(grpc, Some(TOKEN), &["backend", "drain", "p", "extra"])).0,
        0
    );
    assert_eq!(
        text(&ctl(
            grpc,
            Some(TOKEN),
            &["backend", "remove", "p", "extra"]
        ))
        .0,
        0
    );
    // Removed again while it drains (a script's retry): said as it is.
    let (code, _, err) = text(&ctl(
        grpc,
        Some(TOKEN),
        &["backend", "remove", "p", "extra"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is already leaving"), "{err}");
    // Its state and weight are the drain's: a change is refused.
    for change in [
        &["backend", "enable", "p", "extra"][..],
        &["backend", "weight", "p", "extra", "3"],
    ] {
        let (code, _, err) = text(&ctl(grpc, Some(TOKEN), change));
        assert_eq!(code, 1, "{change:?}: {err}");
        assert!(err.contains("leaving"), "{change:?}: {err}");
    }
    drop(weir);
    let (_weir, _out) = run_weir(&file);
    let all = json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    assert!(backend_of(&all, "extra").is_none(), "{all}");
    // Its saved state went at the start, not kept as a stray.
    let status = json(&ctl(grpc, None, &["status", "-o", "json"]));
    assert_eq!(status["orphaned_state"], serde_json::json!([]), "{status}");
    let again = json(&ctl(
        grpc,
        Some(TOKEN),
        &[
            "backend",
            "add",
            "p",
            &extra.to_string(),
            "--name",
            "extra",
            "-o",
            "json",
        ],
    ));
    assert_eq!(again["admin"], "enabled", "{again}");
    let history = again["last_transitions"].as_array().expect("transitions");
    assert!(!history.iter().any(|t| t["to"] == "drain"), "{again}");

    // A weight an operator set does not keep a removed backend taking new
    // connections: it leaves at weight 0 all the same.
    assert_eq!(
        text(&ctl(
            grpc,
            Some(TOKEN),
            &["backend", "weight", "p", "extra", "5"]
        ))
        .0,
        0
    );
    let r = json(&ctl(
        grpc,
        Some(TOKEN),
        &["backend", "remove", "p", "extra", "-o", "json"],
    ));
    assert_eq!(r["effective_weight"], 0, "{r}");
}

/// A runtime backend the running config does not apply — the file has its
/// name, or no longer has its pool — is removed at once: nothing drains, and
/// the state the file's backend of that name keeps (its admin state, its
/// history) stays.
#[test]
fn a_shadowed_runtime_backend_is_removed_at_once_and_leaves_the_files_backend_alone() {
    let dir = test_dir("runtime-backends-shadowed");
    std::fs::write(dir.join("token"), TOKEN).expect("token");
    let (grpc, front) = (free_port(), free_port());
    let a = named_backend("a");
    let extra = named_backend("extra");
    // The file's pool `pool`, with a second backend named `named` unless empty.
    let config = |pool: &str, named: &str| {
        let mut text = format!(
            "[admin]\ngrpc = \"{grpc}\"\ntoken_file = {:?}\n[state]\npath = {:?}\n\
             [[listeners]]\nname = \"front\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"{pool}\"\n\
             [[pools]]\nname = \"{pool}\"\ndrain_timeout = \"200ms\"\n\
             [[pools.backends]]\nname = \"a\"\naddress = \"{a}\"\n",
            dir.join("token").display().to_string(),
            dir.join("state.db").display().to_string(),
        );
        if !named.is_empty() {
            text.push_str(&format!(
                "[[pools.backends]]\nname = \"{named}\"\naddress = \"{a}\"\n"
            ));
        }
        text
    };
    let file = temp_config("runtime-backends-shadowed", &config("p", ""));
    let (weir, _out) = run_weir(&file);
    let ok = |args: &[&str]| {
        let (code, out, err) = text(&ctl(grpc, Some(TOKEN), args));
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    let reload_to = |pool: &str, named: &str| {
        std::fs::write(&file, config(pool, named)).expect("write");
        ok(&["reload"])
    };
    let backends = || json(&ctl(grpc, None, &["backends", "p", "-o", "json"]));
    let remove = |name: &str| {
        json(&ctl(
            grpc,
            Some(TOKEN),
            &["backend", "remove", "p", name, "-o", "json"],
        ))
    };
    ok(&["backend", "add", "p", &extra.to_string(), "--name", "extra"]);
    ok(&["backend", "add", "p", &extra.to_string(), "--name", "other"]);

    // The file takes the name "extra"; an operator drains the file's one.
    let out = reload_to("p", "extra");
    assert!(
        out.contains("runtime backend not applied: p/extra"),
        "{out}"
    );
    ok(&["backend", "drain", "p", "extra"]);

    // Removing the runtime "extra" removes only it, at once.
    let r = remove("extra");
    assert_eq!(
        (
            r["origin"].as_str(),
            r["address"].as_str(),
            r["serving"].as_bool()
        ),
        (
            Some("runtime"),
            Some(extra.to_string().as_str()),
            Some(false)
        ),
        "{r}"
    );
    // Past the pool's drain_timeout: no drain end touched the file's backend.
    std::thread::sleep(Duration::from_millis(600));
    let all = backends();
    let e = backend_of(&all, "extra").expect("the file's extra");
    assert_eq!(
        (e["origin"].as_str(), e["admin"].as_str()),
        (Some("config"), Some("drain")),
        "{e}"
    );
    let history = text(&ctl(grpc, None, &["backend", "history", "p", "extra"])).1;
    assert!(!history.contains("draining"), "{history}");
    // Removed twice: there is nothing left to remove.
    let (code, _, err) = text(&ctl(
        grpc,
        Some(TOKEN),
        &["backend", "remove", "p", "extra"],
    ));
    assert_eq!(code, 1, "{err}");

    // A restart: the file's backend is still drained (its saved state
    // stayed), and the runtime one is gone from the state file.
    drop(weir);
    let (weir, _out) = run_weir(&file);
    let all = backends();
    let e = backend_of(&all, "extra").expect("the file's extra");
    assert_eq!(
        (e["origin"].as_str(), e["admin"].as_str()),
        (Some("config"), Some("drain")),
        "{e}"
    );
    let out = reload_to("p", "");
    assert!(!out.contains("not applied"), "{out}");
    let all = backends();
    assert!(
        backend_of(&all, "extra").is_none(),
        "runtime extra came back: {all}"
    );
    assert!(backend_of(&all, "other").is_some(), "{all}");

    // Its pool leaves the file: "other" is not applied, and is removed at
    // once all the same.
    let out = reload_to("q", "");
    assert!(
        out.contains("runtime backend not applied: p/other: its pool is not in the config"),
        "{out}"
    );
    let r = remove("other");
    assert_eq!(
        (r["pool"].as_str(), r["name"].as_str()),
        (Some("p"), Some("other")),
        "{r}"
    );
    // The pool comes back without it.
    let out = reload_to("p", "");
    assert!(!out.contains("not applied"), "{out}");
    let all = backends();
    assert!(backend_of(&all, "other").is_none(), "{all}");

    // A removal still draining when a reload gives the file a backend of
    // its name: the drain's end leaves the file's backend alone.
    ok(&["backend", "add", "p", &extra.to_string(), "--name", "late"]);
    assert_eq!(remove("late")["origin"], "runtime");
    reload_to("p", "late");
    ok(&["backend", "drain", "p", "late"]);
    // Past the pool's 200 ms drain.
    std::thread::sleep(Duration::from_millis(600));
    let history = text(&ctl(grpc, None, &["backend", "history", "p", "late"])).1;
    assert!(!history.contains("removed"), "{history}");
    // Its history says the runtime one's drain gave way to the file's, so
    // the name's saved state is the file backend's for good: dropped from
    // the file by a reload, it is kept like any file backend's.
    assert!(history.contains("config"), "{history}");
    drop(weir);
    let (weir, _out) = run_weir(&file);
    let e = backend_of(&backends(), "late").expect("the file's late");
    assert_eq!(
        (e["origin"].as_str(), e["admin"].as_str()),
        (Some("config"), Some("drain")),
        "{e}"
    );
    // Out of the file and a restart: its saved state is kept, as a file
    // backend's is, not forgotten as a drain cut short.
    reload_to("p", "");
    drop(weir);
    let (weir, _out) = run_weir(&file);
    let status = json(&ctl(grpc, None, &["status", "-o", "json"]));
    let kept = status["orphaned_state"].as_array().is_some_and(|o| {
        o.iter()
            .any(|e| e["backend"] == "late" && e["admin"] == "drain")
    });
    assert!(kept, "{status}");
    drop(weir);
}
