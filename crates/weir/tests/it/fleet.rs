//! A fleet of weirs that agree without talking to each other: three
//! processes on distinct loopback addresses with the same maglev pool send
//! every client to the same backend, removing one of N backends moves at
//! most 1/N + 1% of the clients, and after a reload that only one of them
//! has had they agree again once all have it. Backends discovered from the
//! same DNS answer give the same table as the same backends written in
//! another order. The operator commands address the whole fleet at once.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use crate::cli::{DEADLINE, Running, free_port, run_weir, temp_config, test_dir, weir};
use crate::control::{ctl, json, text};
use crate::http::start;

/// Client keys: this many source addresses (127.1.x.y).
const KEYS: u32 = 1000;

/// A backend that writes its name to every connection and closes it.
pub(crate) fn named_backend(name: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    let name = name.to_owned();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let _ = std::io::Write::write_all(&mut s, name.as_bytes());
        }
    });
    a
}

fn key(k: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (k / 250) as u8, (k % 250 + 1) as u8))
}

/// The backend each client key reaches through `front`.
fn mapping(front: SocketAddr) -> Vec<String> {
    (0..KEYS)
        .map(|k| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket
                .bind(&SocketAddr::new(key(k), 0).into())
                .expect("bind the client key");
            socket.connect(&front.into()).expect("connect");
            let mut s: TcpStream = socket.into();
            s.set_read_timeout(Some(DEADLINE)).expect("timeout");
            let mut name = String::new();
            s.read_to_string(&mut name)
                .expect("read the backend's name");
            name
        })
        .collect()
}

/// One instance: its listener on `ip:port`, its admin endpoints.
struct Instance {
    front: SocketAddr,
    grpc: SocketAddr,
    // Declared after the file, so dropped before it: weir stops first.
    _weir: Running,
    file: crate::cli::Scratch,
}

fn pool_config(backends: &[(String, SocketAddr)], extra: &str) -> String {
    let mut t = format!(
        "[[pools]]\nname = \"p\"\nbalance = \"maglev\"\nhash_key = \"source_ip\"\n{extra}\n"
    );
    for (name, a) in backends {
        t.push_str(&format!(
            "[[pools.backends]]\nname = \"{name}\"\naddress = \"{a}\"\n"
        ));
    }
    t
}

fn instance(tag: &str, ip: Ipv4Addr, port: u16, pool: &str) -> Instance {
    let (http, grpc) = (free_port(), free_port());
    let front = SocketAddr::new(IpAddr::V4(ip), port);
    let text = format!(
        "[admin]\nhttp = \"{http}\"\ngrpc = \"{grpc}\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"{front}\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n{pool}"
    );
    let file = temp_config(tag, &text);
    let (weir, _out) = run_weir(&file);
    Instance {
        front,
        grpc,
        _weir: weir,
        file,
    }
}

/// A port free on every one of `ips`.
fn common_port(ips: &[Ipv4Addr]) -> u16 {
    loop {
        let port = free_port().port();
        if ips.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
}

#[test]
fn three_instances_agree_on_every_client_and_after_a_reload() {
    let names: Vec<String> = (1..=5).map(|i| format!("b{i}")).collect();
    let backends: Vec<(String, SocketAddr)> = names
        .iter()
        .map(|n| (n.clone(), named_backend(n)))
        .collect();
    let ips = [
        Ipv4Addr::new(127, 0, 0, 11),
        Ipv4Addr::new(127, 0, 0, 12),
        Ipv4Addr::new(127, 0, 0, 13),
    ];
    let port = common_port(&ips);
    // The same backends, in another order on each instance.
    let orders: [Vec<usize>; 3] = [
        vec![0, 1, 2, 3, 4],
        vec![4, 3, 2, 1, 0],
        vec![2, 0, 4, 1, 3],
    ];
    let fleet: Vec<Instance> = ips
        .iter()
        .zip(&orders)
        .enumerate()
        .map(|(i, (ip, order))| {
            let list: Vec<(String, SocketAddr)> =
                order.iter().map(|&j| backends[j].clone()).collect();
            instance(&format!("fleet-{i}"), *ip, port, &pool_config(&list, ""))
        })
        .collect();

    let before: Vec<Vec<String>> = fleet.iter().map(|f| mapping(f.front)).collect();
    assert!(
        before.windows(2).all(|w| w[0] == w[1]),
        "the instances disagree"
    );
    let mut share: BTreeMap<&str, u32> = BTreeMap::new();
    for b in &before[0] {
        *share.entry(b.as_str()).or_default() += 1;
    }
    assert_eq!(share.len(), 5, "every backend gets clients: {share:?}");

    // b5 leaves every config; only the first instance reloads at first.
    for (f, order) in fleet.iter().zip(&orders) {
        let list: Vec<(String, SocketAddr)> = order
            .iter()
            .filter(|&&j| j != 4)
            .map(|&j| backends[j].clone())
            .collect();
        let old = std::fs::read_to_string(&f.file).expect("config");
        let head = old.split("[[pools]]").next().unwrap_or_default().to_owned();
        std::fs::write(&f.file, head + &pool_config(&list, "")).expect("write config");
    }
    let (code, out, err) = text(&ctl(fleet[0].grpc, None, &["reload"]));
    assert_eq!(code, 0, "{out}{err}");
    let first = mapping(fleet[0].front);
    let second = mapping(fleet[1].front);
    assert_ne!(
        first, second,
        "one instance reloaded, the other not: they differ"
    );

    // The other two reload with one command addressed to both.
    let both = format!("{},{}", fleet[1].grpc, fleet[2].grpc);
    let o = weir()
        .args(["reload", "--admin", &both])
        .env_remove("WEIR_TOKEN")
        .output()
        .expect("weir reload");
    let (code, out, err) = text(&o);
    assert_eq!(code, 0, "{out}{err}");
    for addr in [fleet[1].grpc, fleet[2].grpc] {
        assert!(out.contains(&format!("== {addr} ==")), "{out}");
    }
    let after: Vec<Vec<String>> = fleet.iter().map(|f| mapping(f.front)).collect();
    assert!(
        after.windows(2).all(|w| w[0] == w[1]),
        "they disagree after the reload"
    );

    // Only b5's clients moved, and not many others: at most 1/N + 1%.
    let moved = before[0]
        .iter()
        .zip(&after[0])
        .filter(|(b, a)| b != a)
        .count() as f64;
    let of_b5 = before[0].iter().filter(|b| *b == "b5").count() as f64;
    let others = before[0]
        .iter()
        .zip(&after[0])
        .filter(|(b, a)| b != a && *b != "b5")
        .count() as f64;
    let k = f64::from(KEYS);
    eprintln!("moved {moved} of {KEYS} keys; b5 had {of_b5}, other backends lost {others}");
    assert!(after[0].iter().all(|b| b != "b5"));
    assert!(
        moved / k <= 1.0 / 5.0 + 0.01,
        "{moved} of {KEYS} clients moved (b5 had {of_b5})"
    );
    assert!(
        others / k <= 0.01,
        "{others} clients of other backends moved"
    );
}

#[test]
fn the_fleet_commands_report_per_instance_and_fail_clearly() {
    let b = named_backend("b");
    let pool = pool_config(&[("b".to_owned(), b)], "");
    let ips = [Ipv4Addr::new(127, 0, 0, 14), Ipv4Addr::new(127, 0, 0, 15)];
    let port = common_port(&ips);
    let a = instance("fleet-cmd-a", ips[0], port, &pool);
    let c = instance("fleet-cmd-b", ips[1], port, &pool);
    let list = format!("{},{}", a.grpc, c.grpc);

    // Both drained with one command.
    let (code, out, err) = text(&ctl_many(&list, &["backend", "drain", "p", "b"]));
    assert_eq!(code, 0, "{out}{err}");
    let v = json(&ctl_many(&list, &["backends", "-o", "json"]));
    let instances = v["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2, "{v}");
    for (i, addr) in instances.iter().zip([a.grpc, c.grpc]) {
        assert_eq!(i["admin"], addr.to_string(), "{v}");
        assert_eq!(i["ok"], true, "{v}");
        assert_eq!(i["result"][0]["admin"], "drain", "{v}");
    }

    // A weight and a disable on both, and the table names each instance.
    for args in [
        &["backend", "weight", "p", "b", "7"][..],
        &["backend", "disable", "p", "b"][..],
    ] {
        let (code, out, err) = text(&ctl_many(&list, args));
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    let (code, table, err) = text(&ctl_many(&list, &["backends"]));
    assert_eq!(code, 0, "{err}");
    for addr in [a.grpc, c.grpc] {
        let part = table
            .split(&format!("== {addr} ==\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no part for {addr}: {table}"));
        let part = part.split("== ").next().unwrap_or_default();
        assert!(part.contains("disabled"), "{addr}: {part}");
    }
    let v = json(&ctl_many(&list, &["backends", "-o", "json"]));
    for i in v["instances"].as_array().expect("instances") {
        assert_eq!(i["result"][0]["admin"], "disabled", "{v}");
        assert_eq!(i["result"][0]["weight_override"], 7, "{v}");
    }

    // One unreachable: the others still answer, the command fails with the
    // unreachable one named.
    let gone = free_port();
    let three = format!("{list},{gone}");
    let o = ctl_many(&three, &["backend", "enable", "p", "b"]);
    let (code, out, err) = text(&o);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains(&format!(
            "== {gone} ==\nFAILED: cannot reach weir at {gone}"
        )),
        "{out}"
    );
    assert!(err.contains("failed on 1 of 3 instances"), "{err}");
    let v = json(&ctl(a.grpc, None, &["backends", "-o", "json"]));
    assert_eq!(v[0]["admin"], "enabled", "the reachable ones acted: {v}");
    // A watch follows one instance only.
    let (code, _, err) = text(&ctl_many(&list, &["watch"]));
    assert_eq!(code, 2, "{err}");
}

/// An operator command addressed to several instances (`WEIR_ADMIN=a,b`).
fn ctl_many(admin: &str, args: &[&str]) -> std::process::Output {
    weir()
        .args(args)
        .env("WEIR_ADMIN", admin)
        .env_remove("WEIR_TOKEN")
        .output()
        .expect("run weir")
}

#[test]
fn instances_that_discover_the_same_records_agree_with_a_static_one() {
    let dir = test_dir("fleet-dns");
    let backends: Vec<SocketAddr> = (1..=4).map(|i| named_backend(&format!("d{i}"))).collect();
    let dns_port = free_port().port();
    let mut records = vec!["--host-record=d.test,127.0.0.1".to_owned()];
    for b in &backends {
        records.push(format!(
            "--srv-host=_d._tcp.fleet.test,d.test,{},0,10",
            b.port()
        ));
    }
    let _dns = crate::discovery::dnsmasq(&dir, dns_port, 30, &records);
    let ips = [
        Ipv4Addr::new(127, 0, 0, 16),
        Ipv4Addr::new(127, 0, 0, 17),
        Ipv4Addr::new(127, 0, 0, 18),
    ];
    let port = common_port(&ips);
    let discover = pool_config(
        &[],
        &format!(
            "discover = {{ srv = \"_d._tcp.fleet.test\", resolver = \"127.0.0.1:{dns_port}\" }}"
        ),
    );
    // The static one names its backends by address, as discovery does, and
    // lists them backwards.
    let written: Vec<(String, SocketAddr)> =
        backends.iter().rev().map(|a| (a.to_string(), *a)).collect();
    let fleet = [
        instance("fleet-dns-0", ips[0], port, &discover),
        instance("fleet-dns-1", ips[1], port, &discover),
        instance("fleet-dns-2", ips[2], port, &pool_config(&written, "")),
    ];
    let maps: Vec<Vec<String>> = fleet.iter().map(|f| mapping(f.front)).collect();
    assert!(
        maps.windows(2).all(|w| w[0] == w[1]),
        "the instances disagree"
    );
    let used: std::collections::BTreeSet<&String> = maps[0].iter().collect();
    assert_eq!(used.len(), 4, "{used:?}");
}

/// `--admin name:port` stands for every address the name resolves to: here
/// two instances' gRPC addresses listed under one name in an /etc/hosts that
/// the command sees.
#[test]
fn a_name_that_resolves_to_every_instance_addresses_the_fleet() {
    let b = named_backend("b");
    let pool = pool_config(&[("b".to_owned(), b)], "");
    let ips = [Ipv4Addr::new(127, 0, 0, 16), Ipv4Addr::new(127, 0, 0, 17)];
    let (front, grpc) = (common_port(&ips), common_port(&ips));
    let _instances: Vec<Running> = ips
        .iter()
        .map(|ip| {
            let tag = format!("fleet-name-{ip}");
            let text = format!(
                "[admin]\ngrpc = \"{ip}:{grpc}\"\n\
                 [[listeners]]\nname = \"front\"\nbind = \"{ip}:{front}\"\n\
                 [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n{pool}"
            );
            start(&tag, &text).0
        })
        .collect();
    let out = drain_under_hosts(
        "fleet-name",
        "127.0.0.16 fleet.test\n127.0.0.17 fleet.test\n",
        &format!("fleet.test:{grpc}"),
    );
    let (code, out, err) = text(&out);
    assert_eq!(code, 0, "{out}{err}");
    for ip in ips {
        assert!(out.contains(&format!("== {ip}:{grpc} ==")), "{out}");
        let v = json(&ctl(
            SocketAddr::new(IpAddr::V4(ip), grpc),
            None,
            &["backends", "-o", "json"],
        ));
        assert_eq!(v[0]["admin"], "drain", "{ip}: {v}");
    }
}

/// `weir backend drain p b` at `admin`, with `hosts` as the /etc/hosts the
/// command sees (mounted over the system's in a mount namespace of its own),
/// and a name server on loopback that answers nothing (a name the file
/// lacks does not resolve, at once).
fn drain_under_hosts(tag: &str, hosts: &str, admin: &str) -> std::process::Output {
    let dir = test_dir(tag);
    let file = dir.join("hosts");
    std::fs::write(&file, hosts).expect("hosts");
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .expect("resolv.conf");
    std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(
            "mount --bind \"$0\" /etc/hosts && mount --bind \"$2\" /etc/resolv.conf \
             && exec \"$1\" backend drain p b",
        )
        .arg(&file)
        .arg(weir().get_program())
        .arg(&resolv)
        .env("WEIR_ADMIN", admin)
        .env_remove("WEIR_TOKEN")
        .output()
        .expect("run weir")
}

/// One weir with a gRPC admin address and a pool `p` of one backend `b`.
fn one_instance(tag: &str) -> (Running, SocketAddr) {
    let b = named_backend("b");
    let pool = pool_config(&[("b".to_owned(), b)], "");
    let (front, grpc) = (free_port(), free_port());
    let weir = start(
        tag,
        &format!(
            "[admin]\ngrpc = \"{grpc}\"\n\
             [[listeners]]\nname = \"front\"\nbind = \"{front}\"\n\
             [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n{pool}"
        ),
    )
    .0;
    (weir, grpc)
}

/// A name that does not resolve is one instance that cannot be reached:
/// the others still act, and the exit code is 3 (it was 2, a usage error,
/// and nothing was done anywhere); alone, 3 too.
#[test]
fn a_name_that_does_not_resolve_leaves_the_others_acting() {
    let (_weir, grpc) = one_instance("fleet-unresolved");
    let out = drain_under_hosts(
        "fleet-unresolved",
        "127.0.0.1 localhost\n",
        &format!("{grpc},missing.test:9901"),
    );
    let (code, out, err) = text(&out);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains(&format!("== {grpc} ==\n")), "{out}");
    assert!(
        out.contains("== missing.test:9901 ==\nFAILED: cannot reach weir at missing.test:9901: the name does not resolve"),
        "{out}"
    );
    assert!(err.contains("failed on 1 of 2 instances"), "{err}");
    let v = json(&ctl(grpc, None, &["backends", "-o", "json"]));
    assert_eq!(v[0]["admin"], "drain", "{v}");
    let (code, out, err) = text(&drain_under_hosts(
        "fleet-unresolved-alone",
        "127.0.0.1 localhost\n",
        "missing.test:9901",
    ));
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("does not resolve"), "{err}");
}

/// A name that resolves to `::1` and `127.0.0.1` (`localhost` on most
/// systems) is one weir, on whichever of the two it listens on: not a fleet
/// of two whose IPv6 half cannot be reached.
#[test]
fn localhost_under_both_families_is_one_instance() {
    let (_weir, grpc) = one_instance("fleet-localhost");
    let out = drain_under_hosts(
        "fleet-localhost",
        "::1 weir.test\n127.0.0.1 weir.test\n",
        &format!("weir.test:{}", grpc.port()),
    );
    let (code, out, err) = text(&out);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("=="), "answered as a fleet: {out}");
    let v = json(&ctl(grpc, None, &["backends", "-o", "json"]));
    assert_eq!(v[0]["admin"], "drain", "{v}");
}

/// Instances that fail in different ways: the command still runs on every
/// one, and its exit code is the worst of theirs (4 token refused, then 3
/// unreachable, then 1 refused), wherever that instance is in the list.
#[test]
fn a_fleet_command_exits_with_the_worst_failure() {
    let b = named_backend("b");
    let dir = test_dir("fleet-worst");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").expect("write the token");
    let start = |tag: &str, admin_extra: &str| {
        let grpc = free_port();
        let file = temp_config(
            tag,
            &format!(
                "[admin]\ngrpc = \"{grpc}\"\n{admin_extra}\n\
                 [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\
                 [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n{}",
                pool_config(&[("b".to_owned(), b)], "")
            ),
        );
        let (weir, out) = run_weir(&file);
        (grpc, weir.with(file), out)
    };
    let (open, _open, _open_out) = start("fleet-worst-open", "");
    let (locked, _locked, _locked_out) = start(
        "fleet-worst-locked",
        &format!("token_file = {:?}", token_file.display().to_string()),
    );
    let gone = free_port();

    // Refused (1), token refused (4), unreachable (3): 4, neither the
    // first failure nor the last.
    let three = format!("{open},{locked},{gone}");
    let drain_nope = ["backend", "drain", "p", "nope"];
    let (code, out, err) = text(&ctl_many(&three, &drain_nope));
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        out.contains(&format!(
            "== {open} ==\nFAILED: pool \"p\" has no backend \"nope\""
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("== {locked} ==\nFAILED: ")) && out.contains("needs a token"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "== {gone} ==\nFAILED: cannot reach weir at {gone}"
        )),
        "{out}"
    );
    assert!(err.contains("failed on 3 of 3 instances"), "{err}");

    // The same with -o json: each instance's own code.
    let mut args = drain_nope.to_vec();
    args.extend(["-o", "json"]);
    let o = ctl_many(&three, &args);
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json output");
    let codes: Vec<serde_json::Value> = v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| serde_json::json!({"admin": i["admin"], "ok": i["ok"], "code": i["code"]}))
        .collect();
    assert_eq!(
        codes,
        [
            serde_json::json!({"admin": open.to_string(), "ok": false, "code": 1}),
            serde_json::json!({"admin": locked.to_string(), "ok": false, "code": 4}),
            serde_json::json!({"admin": gone.to_string(), "ok": false, "code": 3}),
        ],
        "{v}"
    );

    // Refused (1) then unreachable (3): 3.
    let (code, out, err) = text(&ctl_many(&format!("{open},{gone}"), &drain_nope));
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("failed on 2 of 2 instances"), "{err}");
}

/// The backend's name as read from a connection from `client` (an IP and a
/// port) to `front`; a connect the previous connection from the same
/// address still stands in the way of is tried again.
fn reached_from(client: SocketAddr, front: SocketAddr) -> String {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let connected = socket
            .bind(&client.into())
            .and_then(|()| socket.connect(&front.into()));
        match connected {
            Ok(()) => {
                // Closed with a reset, so that no TIME_WAIT is left on
                // this address for its next connection to run into.
                socket
                    .set_linger(Some(std::time::Duration::ZERO))
                    .expect("SO_LINGER");
                let mut s: TcpStream = socket.into();
                s.set_read_timeout(Some(DEADLINE)).expect("timeout");
                let mut name = String::new();
                s.read_to_string(&mut name)
                    .expect("read the backend's name");
                return name;
            }
            Err(e) => {
                assert!(
                    std::time::Instant::now() < end,
                    "no connection from {client}: {e}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// `hash_key = "source_addr"` hashes the client's IP and port: a client
/// address reaches the same backend every time it connects, the one `weir
/// explain` names for that address, while the ports of one IP spread over
/// the backends (under `source_ip` they would all go to one).
#[test]
fn source_addr_keeps_each_client_address_on_one_backend() {
    let names: Vec<String> = (1..=5).map(|i| format!("b{i}")).collect();
    let (grpc, front) = (free_port(), free_port());
    let mut config = format!(
        "[admin]\ngrpc = \"{grpc}\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"{front}\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nbalance = \"maglev\"\nhash_key = \"source_addr\"\n"
    );
    for n in &names {
        config.push_str(&format!(
            "[[pools.backends]]\nname = \"{n}\"\naddress = \"{}\"\n",
            named_backend(n)
        ));
    }
    let file = temp_config("source-addr", &config);
    let (_weir, _out) = run_weir(&file);

    // Four client IPs, each from the same eight ports.
    const PORTS: usize = 8;
    let ports: Vec<u16> = (0..PORTS).map(|_| free_port().port()).collect();
    let clients: Vec<SocketAddr> = (20..24u8)
        .flat_map(|last| {
            ports
                .iter()
                .map(move |&p| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), p))
        })
        .collect();
    // Three rounds: an address comes again only after every other one.
    let rounds: Vec<Vec<String>> = (0..3)
        .map(|_| clients.iter().map(|&c| reached_from(c, front)).collect())
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let seen: Vec<&str> = rounds.iter().map(|r| r[i].as_str()).collect();
        assert!(
            names.iter().any(|n| n == seen[0]) && seen.iter().all(|s| *s == seen[0]),
            "{c} reached {seen:?}"
        );
        let v = json(&ctl(
            grpc,
            None,
            &[
                "explain",
                "--listener",
                "front",
                "--client",
                &c.to_string(),
                "-o",
                "json",
            ],
        ));
        assert_eq!(v["pools"][0]["pick"], seen[0], "explain for {c}: {v}");
    }
    // The port is part of the key: an IP whose eight ports all reach one of
    // five backends would be a chance of 1 in 78,125, all four IPs never.
    let spread = rounds[0]
        .chunks(PORTS)
        .filter(|of_ip| of_ip.iter().any(|b| *b != of_ip[0]))
        .count();
    assert!(
        spread > 0,
        "each IP's ports reached one backend: {:?}",
        rounds[0]
    );
}
