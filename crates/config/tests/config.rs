//! The config contract end to end: TOML text in, a typed `Config` or key-path
//! errors out. Backend names stay names (the runtime resolves them).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use weir_config::{
    BackendAddress, Check, Config, ConfigError, GrpcCheck, HashKey, Health, HttpCheck, LogFormat,
    Policy, ProbeTls, Problem, Protocol, RetryBudget, RouteMode, StatusMatch, load_file, load_str,
};

/// A test's scratch directory, removed when the test ends, however it ends.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("weir-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(text: &str) -> Result<Config, ConfigError> {
    load_str(text)
}

fn problems(text: &str) -> Vec<Problem> {
    match load(text) {
        Ok(cfg) => panic!("expected errors, got {cfg:#?}"),
        Err(e) => e.problems,
    }
}

/// Exactly one problem, at `path`, whose message starts with `message`
/// (stage-one messages end with a line/column we check separately).
#[track_caller]
fn assert_one(text: &str, path: &str, message: &str) {
    let found = problems(text);
    assert_eq!(found.len(), 1, "expected one problem, got {found:#?}");
    assert_eq!(found[0].path, path, "{found:#?}");
    assert!(
        found[0].message.starts_with(message),
        "message {:?} does not start with {message:?}",
        found[0].message
    );
}

/// Exactly one problem, at `path` on `line` (line, column), whose message is
/// `message`.
#[track_caller]
fn assert_at(text: &str, path: &str, line: (usize, usize), message: &str) {
    let found = problems(text);
    assert_eq!(found.len(), 1, "expected one problem, got {found:#?}");
    assert_eq!(
        (
            found[0].path.as_str(),
            found[0].line,
            found[0].message.as_str()
        ),
        (path, Some(line), message),
    );
}

/// A valid listener + pool to which tests append or which they vary.
const OK_LISTENER: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:7000"
  [[listeners.routes]]
  name = "r"
  pool = "p"
"#;

const OK_POOL: &str = r#"
[[pools]]
name = "p"
  [[pools.backends]]
  address = "127.0.0.1:9000"
"#;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// `OK_LISTENER` and `OK_POOL` with `health` as the pool's `[pools.health]`
/// body (one `key = value` per line).
fn with_health(health: &str) -> String {
    format!("{OK_LISTENER}{OK_POOL}  [pools.health]\n{health}\n")
}

/// A file holding one (syntactically) PEM certificate, for `ca`.
fn ca_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.display().to_string()
}

#[test]
fn minimal_config_gets_every_default() {
    let cfg = load(&format!("{OK_LISTENER}{OK_POOL}")).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(cfg.admin.http, None);
    assert_eq!(cfg.runtime.worker_threads, 0);
    assert!(!cfg.runtime.zero_copy);
    assert_eq!(cfg.log.format, LogFormat::Text);
    assert_eq!(cfg.log.level, "info");
    assert!(cfg.log.access_log);

    let [l] = cfg.listeners.as_slice() else {
        panic!("one listener expected")
    };
    assert_eq!(l.name, "l");
    assert_eq!(l.bind, vec![sa("127.0.0.1:7000")]);
    assert_eq!(l.protocol, Protocol::Tcp);
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.idle_timeout, Duration::from_secs(3600));
    assert_eq!(l.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(l.handshake_timeout, Duration::from_secs(5));
    assert!(l.routes[0].matcher.sni.is_empty() && l.routes[0].matcher.alpn.is_empty());
    let [r] = l.routes.as_slice() else {
        panic!("one route expected")
    };
    assert_eq!(r.name, "r");
    assert!(r.matcher.is_catch_all());
    let RouteMode::L4(l4) = &r.mode else {
        panic!("an l4 route expected")
    };
    assert_eq!((l4.pool.as_str(), l4.pool_index), ("p", 0));

    let [p] = cfg.pools.as_slice() else {
        panic!("one pool expected")
    };
    assert_eq!(p.name, "p");
    assert_eq!(p.balance, Policy::RoundRobin);
    assert_eq!(p.hash_key, HashKey::SourceIp);
    assert_eq!(p.connect_timeout, Duration::from_secs(2));
    assert_eq!(p.retries, None, "every other backend");
    assert_eq!(p.drain_timeout, Duration::from_secs(300));
    assert!(!p.close_on_down);
    assert_eq!(p.health, Health::default());
    assert_eq!(p.health.check, Check::None);
    assert_eq!(p.health.interval, Duration::from_secs(2));
    assert_eq!(p.health.fast_interval, Duration::from_secs(1));
    assert_eq!(p.health.timeout, Duration::from_secs(1));
    assert_eq!((p.health.rise, p.health.fall), (2, 3));
    assert_eq!(p.health.port, None);
    assert_eq!(p.health.passive_timeout, Duration::from_secs(10));
    let [b] = p.backends.as_slice() else {
        panic!("one backend expected")
    };
    assert_eq!(b.name, "127.0.0.1:9000");
    assert_eq!(b.address, BackendAddress::Ip(sa("127.0.0.1:9000")));
    assert_eq!(b.address.to_string(), "127.0.0.1:9000");
    assert_eq!(b.weight, 1);
    assert_eq!(b.tier, 0);
    assert!(b.health);
    assert_eq!(b.check_port, None);
    assert_eq!(b.probe_port(&p.health), 9000);
    assert_eq!(b.max_connections, None);
    assert_eq!(p.max_connections_per_backend, None);
    assert_eq!(p.max_queue, 1024);
    assert_eq!(p.queue_timeout, Duration::from_secs(5));
}

#[test]
fn connection_limits_and_the_queue() {
    let text = OK_POOL.replace(
        "name = \"p\"",
        "name = \"p\"\nmax_connections_per_backend = 50\nmax_queue = 0\nqueue_timeout = \"250ms\"",
    );
    let text = text.replace("address = ", "max_connections = 7\n  address = ");
    let text = format!("{text}  [[pools.backends]]\n  address = \"127.0.0.1:9001\"\n");
    let cfg = load(&format!("{OK_LISTENER}{text}")).unwrap_or_else(|e| panic!("{e}"));
    let p = &cfg.pools[0];
    assert_eq!(p.max_connections_per_backend, Some(50));
    assert_eq!(
        (p.max_queue, p.queue_timeout),
        (0, Duration::from_millis(250))
    );
    assert_eq!(p.backends[0].max_connections, Some(7));
    assert_eq!(p.backends[1].max_connections, None, "the pool's applies");

    let text = OK_POOL.replace("address = ", "max_connections = 0\n  address = ");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].backends[0].max_connections",
        "0 is out of range",
    );
    let text = OK_POOL.replace("name = \"p\"", "name = \"p\"\nmax_queue = -1");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].max_queue",
        "-1 is out of range",
    );
    let udp = OK_LISTENER.replace("name = \"l\"", "name = \"l\"\nprotocol = \"udp\"");
    let text = OK_POOL.replace(
        "name = \"p\"",
        "name = \"p\"\nmax_connections_per_backend = 5",
    );
    assert_one(
        &format!("{udp}{text}"),
        "listeners[0].routes[0].pool",
        "pool \"p\" limits its backends' connections",
    );
}

#[test]
fn every_health_type_gets_its_defaults() {
    let health = |body: &str| {
        let cfg = load(&with_health(body)).unwrap_or_else(|e| panic!("{body}: {e}"));
        cfg.pools[0].health.clone()
    };

    // `type` alone: the common keys keep the defaults of an absent table.
    for (kind, check) in [("none", Check::None), ("tcp", Check::Tcp)] {
        let h = health(&format!("type = \"{kind}\""));
        assert_eq!(
            h,
            Health {
                check,
                ..Health::default()
            }
        );
    }
    let h = health(
        "type = \"http\"\nmethod = \"POST\"\nbody = \"{}\"\nmax_response = 4096\n\
         follow_redirects = 2\nheaders = { \"X-Probe\" = \"weir\", \"Accept-Language\" = \"en\" }",
    );
    let Check::Http(c) = &h.check else {
        panic!("{h:?}")
    };
    assert_eq!(
        (
            c.method.as_str(),
            c.body.as_deref(),
            c.max_response,
            c.follow_redirects
        ),
        ("POST", Some("{}"), 4096, 2)
    );
    assert_eq!(
        c.headers,
        [
            ("Accept-Language".to_owned(), "en".to_owned()),
            ("X-Probe".to_owned(), "weir".to_owned())
        ]
    );
    let h = health("type = \"http\"");
    assert_eq!(
        h.check,
        Check::Http(HttpCheck {
            path: "/".to_owned(),
            host: None,
            expect_status: StatusMatch {
                ranges: vec![(200, 299)]
            },
            expect_body: Vec::new(),
            expect_json: Vec::new(),
            standby: None,
            method: "GET".to_owned(),
            headers: Vec::new(),
            body: None,
            max_response: weir_config::DEFAULT_MAX_RESPONSE,
            follow_redirects: 0,
            tls: None,
        })
    );
    assert_eq!(h.check.kind(), "http");
    let h = health("type = \"grpc\"");
    assert_eq!(
        h.check,
        Check::Grpc(GrpcCheck {
            service: String::new(),
            tls: None,
        })
    );

    // fast_interval follows interval unless set.
    let h = health("type = \"tcp\"\ninterval = \"10s\"");
    assert_eq!(h.fast_interval, Duration::from_secs(5));
    let h = health("type = \"tcp\"\ninterval = \"1ns\"");
    assert_eq!(h.fast_interval, Duration::from_nanos(1));

    // https alone: TLS verified against the system roots, default name.
    let h = health("type = \"grpc\"\nhttps = true");
    assert_eq!(
        h.check,
        Check::Grpc(GrpcCheck {
            service: String::new(),
            tls: Some(ProbeTls::default()),
        })
    );
    // https = false and tls_skip_verify = false are allowed and mean no TLS.
    let h = health("type = \"http\"\nhttps = false\ntls_skip_verify = false");
    assert!(matches!(h.check, Check::Http(HttpCheck { tls: None, .. })));
}

#[test]
fn full_config_sets_every_key() {
    let text = r#"
[admin]
http = "127.0.0.1:9900"

[runtime]
worker_threads = 4
zero_copy = true

[log]
format = "json"
level = "weir=debug,info"
access_log = false

[[listeners]]
name = "pg"
bind = ["127.0.0.1:5433", "[::1]:5433"]
protocol = "tcp"
max_connections = 500
idle_timeout = "15m"
shutdown_timeout = "250ms"

  [[listeners.routes]]
  name = "internal"
  match = { source = ["10.1.2.3/8", "::1/128", "192.0.2.7"] }
  pool = "replicas"

  [[listeners.routes]]
  name = "rest"
  match = {}
  pool = "primary"

[[pools]]
name = "primary"
balance = "first"
connect_timeout = "100ms"
retries = 0
drain_timeout = "30s"
close_on_down = true

  [pools.health]
  type = "http"
  interval = "5s"
  fast_interval = "500ms"
  timeout = "750ms"
  rise = 1
  fall = 100
  port = 8008
  path = "/primary?verbose=1"
  host = "db.internal:8008"
  expect_status = "200, 3xx, 404-410"
  expect_body = "running"
  https = true
  ca = 'CA_PATH'
  tls_server_name = "patroni.internal"

  [[pools.backends]]
  address = "db.test:5432"
  check_port = 8009

  [[pools.backends]]
  name = "static"
  address = "127.0.0.1:5432"
  health = false

[[pools]]
name = "replicas"
balance = "maglev"
hash_key = "source_addr"
retries = 100
health = { type = "grpc", service = "pg.Replica", https = true, tls_skip_verify = true }

  [[pools.backends]]
  name = "r1"
  address = "v6.test:5432"
  weight = 1000
  tier = 0
  health = true

  [[pools.backends]]
  name = "r2"
  address = "[::1]:5433"
  weight = 0
  tier = 3
"#;
    let ca = ca_file("full-config-ca.pem");
    let cfg = load(&text.replace("CA_PATH", &ca)).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(cfg.admin.http, Some(sa("127.0.0.1:9900")));
    assert_eq!(cfg.runtime.worker_threads, 4);
    assert!(cfg.runtime.zero_copy);
    assert_eq!(cfg.log.format, LogFormat::Json);
    assert_eq!(cfg.log.level, "weir=debug,info");
    assert!(!cfg.log.access_log);

    let l = &cfg.listeners[0];
    assert_eq!(l.bind, vec![sa("127.0.0.1:5433"), sa("[::1]:5433")]);
    assert_eq!(l.max_connections, 500);
    assert_eq!(l.idle_timeout, Duration::from_secs(15 * 60));
    assert_eq!(l.shutdown_timeout, Duration::from_millis(250));
    let sources: Vec<String> = l.routes[0]
        .matcher
        .source
        .iter()
        .map(|n| n.to_string())
        .collect();
    // Host bits are dropped; a bare IP is a single-host network.
    assert_eq!(sources, ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]);
    assert_eq!(l.routes[0].pool_indices(), [1]);
    assert!(l.routes[1].matcher.is_catch_all());
    assert_eq!(l.routes[1].pool_indices(), [0]);

    let primary = &cfg.pools[0];
    assert_eq!(primary.balance, Policy::First);
    assert_eq!(primary.connect_timeout, Duration::from_millis(100));
    assert_eq!(primary.retries, Some(0));
    assert_eq!(primary.backends[0].name, "db.test:5432");
    assert_eq!(
        primary.backends[0].address,
        BackendAddress::Name {
            host: "db.test".to_owned(),
            port: 5432
        }
    );
    assert_eq!(primary.drain_timeout, Duration::from_secs(30));
    assert!(primary.close_on_down);
    assert_eq!(
        primary.health,
        Health {
            check: Check::Http(HttpCheck {
                path: "/primary?verbose=1".to_owned(),
                host: Some("db.internal:8008".to_owned()),
                expect_status: StatusMatch {
                    ranges: vec![(200, 200), (300, 399), (404, 410)]
                },
                expect_body: vec!["running".to_owned()],
                expect_json: Vec::new(),
                standby: None,
                method: "GET".to_owned(),
                headers: Vec::new(),
                body: None,
                max_response: weir_config::DEFAULT_MAX_RESPONSE,
                follow_redirects: 0,
                tls: Some(ProbeTls {
                    skip_verify: false,
                    ca: Some(ca.into()),
                    server_name: Some("patroni.internal".to_owned()),
                }),
            }),
            interval: Duration::from_secs(5),
            fast_interval: Duration::from_millis(500),
            timeout: Duration::from_millis(750),
            rise: 1,
            fall: 100,
            port: Some(8008),
            passive_timeout: Duration::from_secs(10),
        }
    );
    let probed: Vec<_> = primary
        .backends
        .iter()
        .map(|b| (b.health, b.check_port, b.probe_port(&primary.health)))
        .collect();
    // check_port beats health.port; the static backend keeps the defaults.
    assert_eq!(probed, [(true, Some(8009), 8009), (false, None, 8008)]);

    let replicas = &cfg.pools[1];
    assert_eq!(replicas.balance, Policy::Maglev);
    assert_eq!(replicas.hash_key, HashKey::SourceAddr);
    assert_eq!(replicas.retries, Some(100));
    assert_eq!(
        replicas.health.check,
        Check::Grpc(GrpcCheck {
            service: "pg.Replica".to_owned(),
            tls: Some(ProbeTls {
                skip_verify: true,
                ca: None,
                server_name: None,
            }),
        })
    );
    assert!(replicas.backends[0].health);
    let b: Vec<_> = replicas
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.address.clone(), b.weight, b.tier))
        .collect();
    assert_eq!(
        b,
        [
            (
                "r1",
                BackendAddress::Name {
                    host: "v6.test".to_owned(),
                    port: 5432
                },
                1000,
                0
            ),
            ("r2", BackendAddress::Ip(sa("[::1]:5433")), 0, 3)
        ]
    );
}

#[test]
fn empty_file_is_a_config_with_nothing_to_serve() {
    let cfg = load("").unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.listeners.is_empty() && cfg.pools.is_empty());
}

// ---- stage one: syntax, types and unknown keys ----

#[test]
fn unknown_top_level_key() {
    assert_at(
        &format!("listener = 1\n{OK_LISTENER}{OK_POOL}"),
        "listener",
        (1, 1),
        "unknown key `listener` (did you mean `listeners`?); expected one of `admin`, \
         `runtime`, `state`, `log`, `firewall`, `tracing`, `listeners`, `pools`",
    );
}

#[test]
fn unknown_nested_key() {
    let text = OK_POOL.replace(
        "address = \"127.0.0.1:9000\"",
        "address = \"127.0.0.1:9000\"\n  wieght = 5",
    );
    assert_at(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].backends[0].wieght",
        (13, 3),
        "unknown key `wieght` (did you mean `weight`?); expected one of `address`, `name`, \
         `weight`, `tier`, `health`, `check_port`, `max_connections`, `check`",
    );
}

#[test]
fn misspelt_health_key() {
    assert_at(
        &with_health("type = \"tcp\"\ninter = \"2s\""),
        "pools[0].health.inter",
        (15, 1),
        "unknown key `inter` (did you mean `interval`?); expected one of `type`, `interval`, \
         `fast_interval`, `timeout`, `rise`, `fall`, `port`, `passive_timeout`, `path`, `host`, \
         `expect_status`, `expect_body`, `expect_json`, `standby`, `method`, `headers`, `body`, `max_response`, \
         `follow_redirects`, `https`, `tls_skip_verify`, `ca`, `tls_server_name`, `service`, \
         `query`, `query_type`, `expect_rcode`, `send`, `expect`",
    );
}

#[test]
fn health_table_needs_a_type() {
    assert_at(
        &with_health("interval = \"2s\""),
        "pools[0].health.type",
        (13, 3),
        "required key is missing in this table",
    );
}

#[test]
fn wrong_type() {
    let text = OK_LISTENER.replace("name = \"l\"", "name = \"l\"\nmax_connections = \"lots\"");
    assert_at(
        &format!("{text}{OK_POOL}"),
        "listeners[0].max_connections",
        (4, 19),
        "invalid type: string \"lots\", expected an integer",
    );
}

#[test]
fn wrong_type_inside_bind_list() {
    let text = OK_LISTENER.replace(
        "bind = \"127.0.0.1:7000\"",
        "bind = [\"127.0.0.1:7000\", 7001]",
    );
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].bind[1]",
        "invalid type: integer `7001`, expected a string",
    );
}

#[test]
fn missing_required_key() {
    let text = OK_LISTENER.replace("  pool = \"p\"\n", "");
    assert_at(
        &format!("{text}{OK_POOL}"),
        "listeners[0].routes[0].pool",
        (5, 3),
        "required key is missing in this table (the pool an l4 route sends to)",
    );
}

#[test]
fn toml_syntax_error_has_line_and_column() {
    let found = problems("[log]\nlevel = info\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        (found[0].path.as_str(), found[0].line),
        ("log.level", Some((2, 9)))
    );
    assert!(
        found[0].message.starts_with("TOML syntax error: "),
        "{found:#?}"
    );
}

// ---- stage two: values and cross-references ----

#[test]
fn bad_duration() {
    let text = OK_LISTENER.replace("name = \"l\"", "name = \"l\"\nidle_timeout = \"5 parsecs\"");
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].idle_timeout",
        "\"5 parsecs\" is not a duration (\"parsecs\" is not a unit); write a number with a \
         unit (ms, s, m, h, d), e.g. \"250ms\", \"2s\", \"1h\"",
    );
    let text = OK_POOL.replace("name = \"p\"", "name = \"p\"\nconnect_timeout = \"2\"");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].connect_timeout",
        "\"2\" is not a duration (a number needs a unit); write a number with a unit (ms, s, \
         m, h, d), e.g. \"250ms\", \"2s\", \"1h\"",
    );
}

#[test]
fn zero_timeout() {
    let text = OK_LISTENER.replace("name = \"l\"", "name = \"l\"\nshutdown_timeout = \"0s\"");
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].shutdown_timeout",
        "must be greater than 0",
    );
}

#[test]
fn weight_out_of_range() {
    let text = format!(
        "{OK_LISTENER}{OK_POOL}{}",
        r#"
[[pools]]
name = "q"
  [[pools.backends]]
  address = "127.0.0.1:9001"
  weight = 1200
"#
    );
    let err = load(&text).err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("line 18, column 3: pools[1].backends[0].weight: 1200 is out of range 0..=1000")
    );
}

#[test]
fn other_integer_ranges() {
    let text = OK_POOL.replace("name = \"p\"", "name = \"p\"\nretries = 101");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].retries",
        "101 is out of range 0..=100",
    );
    let text = OK_LISTENER.replace("name = \"l\"", "name = \"l\"\nmax_connections = 0");
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].max_connections",
        "0 is out of range; must be at least 1",
    );
    let text = OK_POOL.replace("address = ", "tier = -1\n  address = ");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].backends[0].tier",
        "-1 is out of range; must be at least 0",
    );
    // A typo, not a plan: tokio would panic at the system's thread limit.
    assert_one(
        &format!("[runtime]\nworker_threads = 100000\n{OK_LISTENER}{OK_POOL}"),
        "runtime.worker_threads",
        "100000 is out of range 0..=1024",
    );
}

/// `outlier = {}` takes Envoy's defaults; a `max_ejection` below
/// `base_ejection` and a percentage outside 1..=100 fail the load.
#[test]
fn outlier_defaults_and_bounds() {
    let with = |outlier: &str| {
        format!(
            "{OK_LISTENER}{}",
            OK_POOL.replace(
                "name = \"p\"",
                &format!("name = \"p\"\noutlier = {{ {outlier} }}")
            )
        )
    };
    let cfg = load(&with("")).unwrap_or_else(|e| panic!("{e}"));
    let o = cfg.pools[0].outlier.as_ref().expect("outlier");
    assert_eq!(
        (
            o.consecutive_failures,
            o.base_ejection,
            o.max_ejection,
            o.max_ejected_percent
        ),
        (5, Duration::from_secs(30), Duration::from_secs(300), 10)
    );
    assert_one(
        &with("base_ejection = \"1m\", max_ejection = \"30s\""),
        "pools[0].outlier.max_ejection",
        "must be at least base_ejection",
    );
    assert_one(
        &with("max_ejected_percent = 0"),
        "pools[0].outlier.max_ejected_percent",
        "0 is out of range 1..=100",
    );
}

/// An IPv4-mapped bind cannot be bound by an IPv6-only socket (EINVAL at
/// start) and would escape the overlap check: refused with the IPv4 form.
#[test]
fn an_ipv4_mapped_bind_is_refused() {
    let text = OK_LISTENER.replace("127.0.0.1:7000", "[::ffff:127.0.0.1]:7000");
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].bind[0]",
        "\"[::ffff:127.0.0.1]:7000\" is an IPv4-mapped address; write it as 127.0.0.1:7000",
    );
}

#[test]
fn unknown_pool() {
    let text = format!(
        "{OK_LISTENER}{}{OK_POOL}",
        "  [[listeners.routes]]\n  name = \"r2\"\n  pool = \"pg2\"\n"
    );
    // Also exercises "catch-all not last": r is before r2. Filter to the pool error.
    let found = problems(&text);
    assert!(found.iter().any(|p| p.path == "listeners[0].routes[1].pool"
        && p.message == "unknown pool \"pg2\""
        && p.line == Some((10, 3))));
    let text = OK_LISTENER.replace("pool = \"p\"", "pool = \"pg2\"");
    let err = load(&format!("{text}{OK_POOL}"))
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("line 7, column 3: listeners[0].routes[0].pool: unknown pool \"pg2\"")
    );
}

#[test]
fn duplicate_listener_name() {
    let second = OK_LISTENER.replace("127.0.0.1:7000", "127.0.0.1:7001");
    assert_one(
        &format!("{OK_LISTENER}{second}{OK_POOL}"),
        "listeners[1].name",
        "duplicate listener name \"l\" (also listeners[0])",
    );
}

#[test]
fn duplicate_route_name() {
    let text = OK_LISTENER.replace(
        "  [[listeners.routes]]",
        "  [[listeners.routes]]\n  name = \"r\"\n  match = { source = [\"10.0.0.0/8\"] }\n  pool = \"p\"\n  [[listeners.routes]]",
    );
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].routes[1].name",
        "duplicate route name \"r\" in this listener (also routes[0])",
    );
    // The same route name in two listeners is fine.
    let second = OK_LISTENER
        .replace("127.0.0.1:7000", "127.0.0.1:7001")
        .replace("name = \"l\"", "name = \"l2\"");
    assert!(load(&format!("{OK_LISTENER}{second}{OK_POOL}")).is_ok());
}

#[test]
fn duplicate_pool_name() {
    assert_one(
        &format!("{OK_LISTENER}{OK_POOL}{OK_POOL}"),
        "pools[1].name",
        "duplicate pool name \"p\" (also pools[0])",
    );
}

#[test]
fn duplicate_backend_name() {
    let text = format!(
        "{OK_LISTENER}{OK_POOL}{}",
        r#"
[[pools]]
name = "q"
  [[pools.backends]]
  name = "a"
  address = "127.0.0.1:9001"
  [[pools.backends]]
  name = "a"
  address = "127.0.0.1:9002"
"#
    );
    assert_one(
        &text,
        "pools[1].backends[1].name",
        "duplicate backend name \"a\" in this pool (also backends[0])",
    );
}

#[test]
fn duplicate_backend_address_without_names() {
    let text = OK_POOL.replace(
        "  [[pools.backends]]",
        "  [[pools.backends]]\n  address = \"127.0.0.1:9000\"\n  [[pools.backends]]",
    );
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].backends[1].address",
        "duplicate backend name \"127.0.0.1:9000\" in this pool (also backends[0]); \
         a backend without `name` is named by its address",
    );
}

#[test]
fn empty_pool() {
    assert_one(
        &format!("{OK_LISTENER}\n[[pools]]\nname = \"p\"\n"),
        "pools[0].backends",
        "a pool needs at least one backend",
    );
}

#[test]
fn listener_without_routes() {
    assert_one(
        &format!("[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:7000\"\n{OK_POOL}"),
        "listeners[0].routes",
        "a listener needs at least one route",
    );
}

#[test]
fn empty_names() {
    let text = OK_LISTENER.replace("name = \"r\"", "name = \" \"");
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].routes[0].name",
        "must not be empty",
    );
}

#[test]
fn names_hold_no_control_characters() {
    let text = OK_LISTENER.replace("name = \"r\"", "name = \"r\\u0007\"");
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].routes[0].name",
        "must not contain control characters",
    );
    let text = OK_POOL.replace(
        "address = \"127.0.0.1:9000\"",
        "name = \"b\\nx\"\naddress = \"127.0.0.1:9000\"",
    );
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].backends[0].name",
        "must not contain control characters",
    );
    assert!(weir_config::name_problem("a\tb").is_some());
    assert_eq!(weir_config::name_problem("pg-1 (eu)"), None);
}

#[test]
fn backend_names_are_not_resolved_here() {
    let text = OK_POOL.replace("127.0.0.1:9000", "nowhere.invalid:5432");
    let cfg = load(&format!("{OK_LISTENER}{text}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.pools[0].backends[0].address,
        BackendAddress::Name {
            host: "nowhere.invalid".to_owned(),
            port: 5432
        }
    );
}

#[test]
fn backend_host_must_be_a_name() {
    let text = OK_POOL.replace("127.0.0.1:9000", "db test:5432");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].backends[0].address",
        "\"db test:5432\": \"db test\" is neither an IP address nor a host name",
    );
}

#[test]
fn backend_without_port() {
    let text = OK_POOL.replace("127.0.0.1:9000", "db.test");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].backends[0].address",
        "\"db.test\" has no port; write host:port or ip:port",
    );
}

#[test]
fn bind_must_be_ip_and_port() {
    let text = OK_LISTENER.replace("127.0.0.1:7000", "localhost:7000");
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].bind[0]",
        "\"localhost:7000\" is not a socket address; write IP:port",
    );
    let text = OK_LISTENER.replace("\"127.0.0.1:7000\"", "[]");
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].bind",
        "at least one address is needed",
    );
}

#[test]
fn duplicate_bind_across_listeners() {
    let second = OK_LISTENER.replace("name = \"l\"", "name = \"l2\"");
    assert_one(
        &format!("{OK_LISTENER}{second}{OK_POOL}"),
        "listeners[1].bind[0]",
        "127.0.0.1:7000 is already bound by listeners[0].bind[0]",
    );
}

#[test]
fn duplicate_bind_within_a_listener() {
    let text = OK_LISTENER.replace(
        "bind = \"127.0.0.1:7000\"",
        "bind = [\"[::1]:7000\", \"[::]:7000\"]",
    );
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].bind[1]",
        "[::]:7000 overlaps [::1]:7000 bound by listeners[0].bind[0]",
    );
}

#[test]
fn wildcard_bind_overlaps_specific_one() {
    let second = OK_LISTENER
        .replace("name = \"l\"", "name = \"l2\"")
        .replace("127.0.0.1:7000", "0.0.0.0:7000");
    assert_one(
        &format!("{OK_LISTENER}{second}{OK_POOL}"),
        "listeners[1].bind[0]",
        "0.0.0.0:7000 overlaps 127.0.0.1:7000 bound by listeners[0].bind[0]",
    );
}

#[test]
fn admin_address_counts_as_a_bind() {
    assert_one(
        &format!("[admin]\nhttp = \"127.0.0.1:7000\"\n{OK_LISTENER}{OK_POOL}"),
        "listeners[0].bind[0]",
        "127.0.0.1:7000 is already bound by admin.http",
    );
}

#[test]
fn binds_that_do_not_collide() {
    // Dual stack on one port (IPv6 sockets are v6-only), and port 0 twice.
    let text = OK_LISTENER.replace(
        "bind = \"127.0.0.1:7000\"",
        "bind = [\"0.0.0.0:7000\", \"[::]:7000\", \"127.0.0.1:0\", \"127.0.0.1:0\"]",
    );
    assert!(load(&format!("{text}{OK_POOL}")).is_ok());
}

#[test]
fn bad_cidr() {
    let text = OK_LISTENER.replace(
        "  pool = \"p\"",
        "  pool = \"p\"\n  match = { source = [\"10.0.0.0/8\", \"10.0.0.0/33\"] }",
    );
    let text = format!("{text}  [[listeners.routes]]\n  name = \"rest\"\n  pool = \"p\"\n");
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].routes[0].match.source[1]",
        "\"10.0.0.0/33\" is not an IP address or CIDR",
    );
}

#[test]
fn catch_all_not_last() {
    let text = format!(
        "{OK_LISTENER}  [[listeners.routes]]\n  name = \"lan\"\n  match = {{ source = [\"10.0.0.0/8\"] }}\n  pool = \"p\"\n"
    );
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].routes[0]",
        "route \"r\" has no match conditions, so it matches every connection and must be the last route",
    );
}

#[test]
fn bad_enum_values_list_the_accepted_ones() {
    let text = OK_POOL.replace("name = \"p\"", "name = \"p\"\nbalance = \"roundrobin\"");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].balance",
        "unknown value \"roundrobin\" (did you mean \"round_robin\"?); expected one of: \
         round_robin, least_conn, random, first, maglev",
    );
    let text = OK_LISTENER.replace("name = \"l\"", "name = \"l\"\nprotocol = \"sctp\"");
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].protocol",
        "unknown value \"sctp\"; expected one of: tcp, udp",
    );
    assert_one(
        &format!("[log]\nformat = \"xml\"\n{OK_LISTENER}{OK_POOL}"),
        "log.format",
        "unknown value \"xml\"; expected one of: text, json",
    );
    let text = OK_POOL.replace("name = \"p\"", "name = \"p\"\nhash_key = \"host\"");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].hash_key",
        "unknown value \"host\"; expected one of: source_ip, source_addr, sni",
    );
    let text = OK_POOL.replace("name = \"p\"", "name = \"p\"\nhealth = { type = \"icmp\" }");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].health.type",
        "unknown value \"icmp\"; expected one of: none, tcp, http, grpc, dns, udp",
    );
}

#[test]
fn design_doc_health_example_validates() {
    // The `[[pools]]` of DESIGN.md §2, as written there.
    let text = r#"
[[pools]]
name = "p"
balance = "round_robin"
hash_key = "source_ip"
connect_timeout = "2s"
retries = 2
drain_timeout = "5m"
close_on_down = false

  [pools.health]
  type = "http"
  interval = "2s"
  timeout = "1s"
  rise = 2
  fall = 3
  port = 8008
  path = "/primary"
  expect_status = "200"
  expect_body = "running"
  https = false
  tls_skip_verify = false
  # ca = "ca.pem"
  host = "db.internal"
  # service = "app"

  [[pools.backends]]
  address = "127.0.0.1:5432"
  name = "pg-a"
  weight = 100
  tier = 0
  health = true
  check_port = 8008
"#;
    let cfg = load(&format!("{OK_LISTENER}{text}")).unwrap_or_else(|e| panic!("{e}"));
    let p = &cfg.pools[0];
    assert_eq!(p.backends[0].probe_port(&p.health), 8008);
    let Check::Http(http) = &p.health.check else {
        panic!("an http check expected")
    };
    assert_eq!(http.tls, None);
}

#[test]
fn expect_status_in_a_file() {
    for (written, ranges) in [
        ("200", vec![(200, 200)]),
        ("2xx", vec![(200, 299)]),
        ("200-299", vec![(200, 299)]),
        ("200,204", vec![(200, 200), (204, 204)]),
        (
            "200, 3xx, 404-410",
            vec![(200, 200), (300, 399), (404, 410)],
        ),
    ] {
        let cfg = load(&with_health(&format!(
            "type = \"http\"\nexpect_status = \"{written}\""
        )))
        .unwrap_or_else(|e| panic!("{written}: {e}"));
        let Check::Http(http) = &cfg.pools[0].health.check else {
            panic!("an http check expected")
        };
        assert_eq!(http.expect_status.ranges, ranges, "{written}");
    }

    let bad = |written: &str, message: &str| {
        assert_one(
            &with_health(&format!("type = \"http\"\nexpect_status = \"{written}\"")),
            "pools[0].health.expect_status",
            message,
        );
    };
    bad(
        "2xz",
        "\"2xz\" is not a status, class (2xx) or range (200-299)",
    );
    bad(
        "600",
        "\"600\": 600 is not an HTTP status; statuses are 100..=599",
    );
    bad(
        "299-200",
        "\"299-200\" is an empty range: its first status is above its last",
    );
    bad("", "must not be empty; write a status, class or range");
    bad(
        "20",
        "\"20\" is not a status, class (2xx) or range (200-299)",
    );
    bad("200,,204", "\"200,,204\" has an empty item");

    // The design doc's example, word for word, in the second pool.
    let second = OK_POOL
        .replace("name = \"p\"", "name = \"q\"")
        .replace("9000", "9001");
    let text = format!(
        "{OK_LISTENER}{OK_POOL}{second}  [pools.health]\n  type = \"http\"\n  expect_status = \"2xz\"\n"
    );
    let err = load(&text).err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "line 20, column 3: pools[1].health.expect_status: \"2xz\" is not a status, class (2xx) or range (200-299)"
        )
    );
}

#[test]
fn keys_of_another_check_type() {
    assert_one(
        &with_health("type = \"tcp\"\npath = \"/health\""),
        "pools[0].health.path",
        "only for type = \"http\" (this check is type = \"tcp\")",
    );
    assert_one(
        &with_health("type = \"grpc\"\nexpect_status = \"200\""),
        "pools[0].health.expect_status",
        "only for type = \"http\" (this check is type = \"grpc\")",
    );
    assert_one(
        &with_health("type = \"http\"\nservice = \"app\""),
        "pools[0].health.service",
        "only for type = \"grpc\" (this check is type = \"http\")",
    );
    assert_one(
        &with_health("type = \"tcp\"\nhttps = true"),
        "pools[0].health.https",
        "only for type = \"http\" or \"grpc\" (this check is type = \"tcp\")",
    );
    // Every stray key is named, in the order of the table above.
    let found = problems(&with_health(
        "type = \"none\"\nservice = \"\"\nhost = \"h\"\nexpect_body = \"ok\"\nca = \"x\"",
    ));
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "pools[0].health.host",
            "pools[0].health.expect_body",
            "pools[0].health.ca",
            "pools[0].health.service",
        ]
    );
    // The common keys go with every type, `none` included.
    assert!(
        load(&with_health(
            "type = \"none\"\ninterval = \"5s\"\nport = 1\nrise = 1"
        ))
        .is_ok()
    );
}

#[test]
fn tls_keys_need_https() {
    for (key, value) in [
        ("tls_skip_verify", "true"),
        ("ca", "\"ca.pem\""),
        ("tls_server_name", "\"db.internal\""),
    ] {
        for https in ["", "\nhttps = false"] {
            assert_one(
                &with_health(&format!("type = \"http\"{https}\n{key} = {value}")),
                &format!("pools[0].health.{key}"),
                "only with https = true (the probe does not use TLS)",
            );
        }
    }
}

#[test]
fn skip_verify_contradicts_ca() {
    let ca = ca_file("skip-verify-ca.pem");
    assert_one(
        &with_health(&format!(
            "type = \"grpc\"\nhttps = true\ntls_skip_verify = true\nca = '{ca}'"
        )),
        "pools[0].health.tls_skip_verify",
        "contradicts `ca`: with tls_skip_verify = true any certificate is accepted",
    );
    // Either one alone is fine.
    assert!(
        load(&with_health(&format!(
            "type = \"grpc\"\nhttps = true\ntls_skip_verify = false\nca = '{ca}'"
        )))
        .is_ok()
    );
}

#[test]
fn ca_must_be_a_readable_pem_file() {
    let cwd = std::env::current_dir().unwrap_or_else(|e| panic!("{e}"));
    assert_one(
        &with_health("type = \"http\"\nhttps = true\nca = \"no-such-ca.pem\""),
        "pools[0].health.ca",
        &format!(
            "cannot read \"no-such-ca.pem\": No such file or directory (os error 2); \
             a relative path is relative to weir's working directory ({})",
            cwd.display()
        ),
    );
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-ca.pem");
    let missing = missing.display();
    assert_one(
        &with_health(&format!("type = \"http\"\nhttps = true\nca = '{missing}'")),
        "pools[0].health.ca",
        &format!("cannot read \"{missing}\": No such file or directory (os error 2)"),
    );
    // A directory, and a file that is not PEM (a key, DER, ...).
    let dir = env!("CARGO_TARGET_TMPDIR");
    assert_one(
        &with_health(&format!("type = \"http\"\nhttps = true\nca = '{dir}'")),
        "pools[0].health.ca",
        &format!("cannot read \"{dir}\": Is a directory"),
    );
    let not_pem = Path::new(env!("CARGO_TARGET_TMPDIR")).join("not-pem-ca.der");
    std::fs::write(&not_pem, [0x30, 0x82, 0x01, 0x0a])
        .unwrap_or_else(|e| panic!("{}: {e}", not_pem.display()));
    let not_pem = not_pem.display();
    assert_one(
        &with_health(&format!("type = \"http\"\nhttps = true\nca = '{not_pem}'")),
        "pools[0].health.ca",
        &format!("\"{not_pem}\" holds no PEM certificate"),
    );
}

#[test]
fn bad_http_probe_values() {
    let bad = |body: &str, key: &str, message: &str| {
        assert_one(
            &with_health(&format!("type = \"http\"\n{body}")),
            &format!("pools[0].health.{key}"),
            message,
        );
    };
    bad(
        "path = \"primary\"",
        "path",
        "\"primary\" must start with \"/\"",
    );
    bad(
        "path = \"/a b\"",
        "path",
        "\"/a b\" must not contain whitespace, control or non-ASCII characters",
    );
    bad(
        "path = \"/a\\nb\"",
        "path",
        "\"/a\\nb\" must not contain whitespace",
    );
    bad(
        "host = \"db internal\"",
        "host",
        "\"db internal\" must not contain whitespace",
    );
    bad("host = \"\"", "host", "must not be empty");
    bad("expect_body = \"\"", "expect_body", "must not be empty");
    bad(
        "https = true\ntls_server_name = \"db internal\"",
        "tls_server_name",
        "\"db internal\" is not a DNS name or an IP address",
    );
}

#[test]
fn health_ranges_and_intervals() {
    let bad = |body: &str, key: &str, message: &str| {
        assert_one(
            &with_health(&format!("type = \"tcp\"\n{body}")),
            &format!("pools[0].health.{key}"),
            message,
        );
    };
    bad("rise = 0", "rise", "0 is out of range 1..=100");
    bad("rise = 101", "rise", "101 is out of range 1..=100");
    bad("fall = 0", "fall", "0 is out of range 1..=100");
    bad("fall = 101", "fall", "101 is out of range 1..=100");
    bad("port = 0", "port", "0 is out of range 1..=65535");
    bad("port = 65536", "port", "65536 is out of range 1..=65535");
    bad("interval = \"0s\"", "interval", "must be greater than 0");
    bad(
        "fast_interval = \"0s\"",
        "fast_interval",
        "must be greater than 0",
    );
    bad("timeout = \"0s\"", "timeout", "must be greater than 0");
    bad(
        "interval = \"1s\"\nfast_interval = \"1500ms\"",
        "fast_interval",
        "\"1500ms\" is longer than interval (\"1s\")",
    );
    bad(
        "fast_interval = \"3s\"",
        "fast_interval",
        "\"3s\" is longer than interval (2s, the default)",
    );
    // Equal is fine; a bad interval is reported once, not again through fast_interval.
    assert!(
        load(&with_health(
            "type = \"tcp\"\ninterval = \"1s\"\nfast_interval = \"1s\""
        ))
        .is_ok()
    );
    bad(
        "interval = \"soon\"\nfast_interval = \"1h\"",
        "interval",
        "\"soon\" is not a duration",
    );
    let ok = |body: &str| load(&with_health(&format!("type = \"tcp\"\n{body}"))).is_ok();
    assert!(ok("rise = 1\nfall = 100\nport = 65535"));
}

#[test]
fn pool_drain_and_backend_probe_keys() {
    let pool = |line: &str| {
        let text = OK_POOL.replace("name = \"p\"", &format!("name = \"p\"\n{line}"));
        format!("{OK_LISTENER}{text}")
    };
    assert_one(
        &pool("drain_timeout = \"0s\""),
        "pools[0].drain_timeout",
        "must be greater than 0",
    );
    assert_one(
        &pool("close_on_down = \"yes\""),
        "pools[0].close_on_down",
        "invalid type: string \"yes\", expected a boolean",
    );
    let backend = |lines: &str| {
        let text = OK_POOL.replace("address = ", &format!("{lines}\n  address = "));
        format!("{OK_LISTENER}{text}")
    };
    assert_one(
        &backend("check_port = 0"),
        "pools[0].backends[0].check_port",
        "0 is out of range 1..=65535",
    );
    assert_one(
        &backend("check_port = 70000"),
        "pools[0].backends[0].check_port",
        "70000 is out of range 1..=65535",
    );
    assert_one(
        &backend("health = false\n  check_port = 8008"),
        "pools[0].backends[0].check_port",
        "has no effect: this backend has `health = false`, so it is never probed",
    );
    let cfg = load(&backend("health = false")).unwrap_or_else(|e| panic!("{e}"));
    assert!(!cfg.pools[0].backends[0].health);
}

#[test]
fn bad_log_level() {
    assert_one(
        &format!("[log]\nlevel = \"weir=loud\"\n{OK_LISTENER}{OK_POOL}"),
        "log.level",
        "\"weir=loud\" is not a valid log filter: ",
    );
    assert_one(
        &format!("[log]\nlevel = \"warn,verbose\"\n{OK_LISTENER}{OK_POOL}"),
        "log.level",
        "\"verbose\" is not a level (trace, debug, info, warn, error, off)",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[[listeners]]
name = ""
bind = ["127.0.0.1:7000", "127.0.0.1:7000"]
idle_timeout = "soon"
  [[listeners.routes]]
  name = "r"
  pool = "missing"

[[pools]]
name = "p"
balance = "fastest"
  [pools.health]
  type = "http"
  rise = 0
  path = "health"
  service = "app"
  [[pools.backends]]
  address = "127.0.0.1:9000"
  weight = -3
  check_port = 0
"#;
    let err = load(text).err().map(|e| e.to_string()).unwrap_or_default();
    // One line per problem: "line L, column C: path: message".
    let paths: Vec<&str> = err
        .lines()
        .map(|line| line.split(": ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        [
            "listeners[0].name",
            "listeners[0].idle_timeout",
            "listeners[0].routes[0].pool",
            "listeners[0].bind[1]",
            "pools[0].balance",
            "pools[0].health.rise",
            "pools[0].health.service",
            "pools[0].health.path",
            "pools[0].backends[0].weight",
            "pools[0].backends[0].check_port",
        ],
        "{err}"
    );
}

// ---- files ----

#[test]
fn unreadable_file_names_the_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-file.toml");
    let err = load_file(&path)
        .err()
        .unwrap_or_else(|| panic!("loaded a missing file"));
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].path, path.display().to_string());
    assert!(
        err.problems[0].message.starts_with("cannot read: "),
        "{err}"
    );
}

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no examples in {}", dir.display());
    // Their certificate paths are relative to the repository's root.
    std::env::set_current_dir(dir.join("..")).expect("cd to the repository");
    for path in entries {
        if let Err(e) = load_file(&path) {
            panic!("{}:\n{e}", path.display());
        }
    }
}

#[test]
fn sni_and_alpn_matches() {
    let text = format!(
        "{}{OK_POOL}",
        OK_LISTENER.replace(
            "  name = \"r\"\n",
            "  name = \"r\"\n  match = { sni = [\"DB.example.com\", \"*.api.example.com\"], alpn = [\"postgresql\", \"h2\"] }\n",
        ) + "  [[listeners.routes]]\n  name = \"rest\"\n  pool = \"p\"\n"
    );
    let cfg = weir_config::load_str(&text).expect("valid");
    let m = &cfg.listeners[0].routes[0].matcher;
    assert_eq!(
        m.sni,
        ["db.example.com", "*.api.example.com"],
        "lower-cased"
    );
    assert_eq!(m.alpn, ["postgresql", "h2"]);
    assert!(m.needs_client_hello() && !m.is_catch_all());
    assert!(m.sni_matches("db.example.com"));
    assert!(m.sni_matches("x.api.example.com"));
    assert!(
        !m.sni_matches("api.example.com"),
        "a wildcard needs one label"
    );
    assert!(!m.sni_matches("y.x.api.example.com"), "and only one");
    assert!(!m.sni_matches(".api.example.com"));
    assert!(!m.sni_matches("example.com"));
}

#[test]
fn bad_sni_and_alpn_name_their_entry() {
    for (entry, path) in [
        (
            "sni = [\"*.*.example.com\"]",
            "listeners[0].routes[0].match.sni[0]",
        ),
        (
            "sni = [\"ok.example.com\", \"a..b\"]",
            "listeners[0].routes[0].match.sni[1]",
        ),
        ("sni = [\"\"]", "listeners[0].routes[0].match.sni[0]"),
        (
            "sni = [\"-a.example.com\"]",
            "listeners[0].routes[0].match.sni[0]",
        ),
        // An address is never sent as SNI: the route could never match.
        (
            "sni = [\"db.example.com\", \"10.0.0.1\"]",
            "listeners[0].routes[0].match.sni[1]",
        ),
        ("sni = [\"::1\"]", "listeners[0].routes[0].match.sni[0]"),
        ("alpn = [\"\"]", "listeners[0].routes[0].match.alpn[0]"),
        ("alpn = [\"h 2\"]", "listeners[0].routes[0].match.alpn[0]"),
    ] {
        let text = format!(
            "{}{OK_POOL}",
            OK_LISTENER.replace(
                "  name = \"r\"\n",
                &format!("  name = \"r\"\n  match = {{ {entry} }}\n")
            )
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{entry}: {found:#?}");
        assert_eq!(found[0].path, path, "{entry}");
    }
    let text =
        OK_LISTENER.replace("name = \"l\"", "name = \"l\"\nhandshake_timeout = \"0s\"") + OK_POOL;
    assert_one(&text, "listeners[0].handshake_timeout", "");
}

#[test]
fn proxy_protocol_accept() {
    let text = OK_LISTENER.replace(
        "name = \"l\"",
        "name = \"l\"\nproxy_protocol = { accept = true, trusted = [\"10.0.0.0/8\", \"192.0.2.7\"] }",
    ) + OK_POOL;
    let cfg = weir_config::load_str(&text).expect("valid");
    let pp = cfg.listeners[0].proxy_protocol.as_ref().expect("accepting");
    assert!(pp.is_trusted("10.9.8.7".parse().expect("ip")));
    assert!(
        pp.is_trusted("::ffff:192.0.2.7".parse().expect("ip")),
        "IPv4-mapped"
    );
    assert!(!pp.is_trusted("192.0.2.8".parse().expect("ip")));
    // accept = false (or no table): not accepting.
    let off = OK_LISTENER.replace(
        "name = \"l\"",
        "name = \"l\"\nproxy_protocol = { accept = false }",
    ) + OK_POOL;
    let cfg = weir_config::load_str(&off).expect("valid");
    assert!(cfg.listeners[0].proxy_protocol.is_none());

    let no_trusted = OK_LISTENER.replace(
        "name = \"l\"",
        "name = \"l\"\nproxy_protocol = { accept = true }",
    ) + OK_POOL;
    assert_one(
        &no_trusted,
        "listeners[0].proxy_protocol.trusted",
        "list the sources",
    );
    let bad = OK_LISTENER.replace(
        "name = \"l\"",
        "name = \"l\"\nproxy_protocol = { accept = true, trusted = [\"10.0.0.0/8\", \"nope\"] }",
    ) + OK_POOL;
    assert_one(&bad, "listeners[0].proxy_protocol.trusted[1]", "");
    let send = OK_LISTENER.replace(
        "  pool = \"p\"",
        "  pool = \"p\"\n  send_proxy_protocol = \"v3\"",
    ) + OK_POOL;
    assert_one(
        &send,
        "listeners[0].routes[0].send_proxy_protocol",
        "unknown value \"v3\"",
    );
}

#[test]
fn backend_tls_keys() {
    let dir = Scratch::new("btls");
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .expect("ca");
    let key = dir.join("k.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
    )
    .expect("key");
    let route = |tls: &str| {
        OK_LISTENER.replace(
            "  pool = \"p\"",
            &format!("  pool = \"p\"\n  backend_tls = {{ {tls} }}"),
        ) + OK_POOL
    };
    let ok = route(&format!(
        "sni = \"db.internal\", ca = \"{0}\", cert = \"{0}\", key = \"{1}\"",
        ca.display(),
        key.display()
    ));
    let cfg = weir_config::load_str(&ok).expect("valid");
    let t = cfg.listeners[0].routes[0]
        .backend_tls
        .as_ref()
        .expect("tls");
    assert!(t.verify, "verify defaults to true");
    assert_eq!(t.sni.as_deref(), Some("db.internal"));
    assert!(t.client_cert.is_some());

    assert_one(
        &route(&format!("verify = false, ca = \"{}\"", ca.display())),
        "listeners[0].routes[0].backend_tls.verify",
        "contradicts `ca`",
    );
    assert_one(
        &route(&format!("cert = \"{}\"", ca.display())),
        "listeners[0].routes[0].backend_tls.key",
        "required with `cert`",
    );
    assert_one(
        &route(&format!(
            "ca = \"{}\", key = \"{}\"",
            ca.display(),
            key.display()
        )),
        "listeners[0].routes[0].backend_tls.cert",
        "required with `key`",
    );
    assert_one(
        &route(&format!("cert = \"{0}\", key = \"{0}\"", ca.display())),
        "listeners[0].routes[0].backend_tls.key",
        "",
    );
    assert_one(
        &route("sni = \"not a name\""),
        "listeners[0].routes[0].backend_tls.sni",
        "",
    );
    assert_one(
        &route("vrfy = true"),
        "listeners[0].routes[0].backend_tls.vrfy",
        "unknown key",
    );
}

// ---- admin security, state, diff ----

/// `contents` in a file named `name` in a scratch directory of its own.
fn temp_file(name: &str, contents: &str) -> (Scratch, std::path::PathBuf) {
    let dir = Scratch::new(name);
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    (dir, path)
}

#[test]
fn one_admin_client_holds_half_the_connections_unless_told() {
    let cfg = load(&format!("{OK_LISTENER}{OK_POOL}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            cfg.admin.max_connections,
            cfg.admin.max_connections_per_client
        ),
        (64, 32)
    );
    let cfg = load(&format!(
        "[admin]\nmax_connections = 7\n{OK_LISTENER}{OK_POOL}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.admin.max_connections_per_client, 3);
    let cfg = load(&format!(
        "[admin]\nmax_connections = 1\n{OK_LISTENER}{OK_POOL}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.admin.max_connections_per_client, 1);
    let cfg = load(&format!(
        "[admin]\nmax_connections_per_client = 64\n{OK_LISTENER}{OK_POOL}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.admin.max_connections_per_client, 64);
    assert_one(
        &format!(
            "[admin]\nmax_connections = 8\nmax_connections_per_client = 9\n{OK_LISTENER}{OK_POOL}"
        ),
        "admin.max_connections_per_client",
        "9 is more than admin.max_connections (8)",
    );
    assert_one(
        &format!("[admin]\nmax_connections_per_client = 0\n{OK_LISTENER}{OK_POOL}"),
        "admin.max_connections_per_client",
        "0 is out of range 1..=100000",
    );
}

#[test]
fn admin_hosts_are_names_or_wildcards_of_one_label() {
    let cfg = load(&format!(
        "[admin]\nhosts = [\"LB1.Example.com.\", \"*.corp.example\"]\n{OK_LISTENER}{OK_POOL}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.admin.hosts, ["lb1.example.com", "*.corp.example"]);
    assert!(cfg.admin.answers_host("lb1.example.com"));
    assert!(cfg.admin.answers_host("a.corp.example"));
    assert!(!cfg.admin.answers_host("corp.example"));
    assert!(!cfg.admin.answers_host("evil.example"));
    assert!(load(&format!("{OK_LISTENER}{OK_POOL}")).is_ok_and(|c| c.admin.hosts.is_empty()));
    for bad in ["lb1.example.com:9900", "http://lb1", "*", "a..b", ""] {
        assert_one(
            &format!("[admin]\nhosts = [\"ok.example\", {bad:?}]\n{OK_LISTENER}{OK_POOL}"),
            "admin.hosts[1]",
            &format!("{bad:?} is not a host name"),
        );
    }
}

#[test]
fn non_loopback_admin_needs_a_token_or_insecure() {
    for key in ["http", "grpc"] {
        assert_one(
            &format!("[admin]\n{key} = \"0.0.0.0:9901\"\n{OK_LISTENER}{OK_POOL}"),
            &format!("admin.{key}"),
            "0.0.0.0:9901 is not a loopback address: set admin.token_file",
        );
        let cfg = load(&format!(
            "[admin]\n{key} = \"0.0.0.0:9901\"\ninsecure = true\n{OK_LISTENER}{OK_POOL}"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.admin.insecure && cfg.admin.token.is_none());
    }
    // The unspecified address with port 0 binds every interface too.
    assert_one(
        &format!("[admin]\nhttp = \"0.0.0.0:0\"\n{OK_LISTENER}{OK_POOL}"),
        "admin.http",
        "0.0.0.0:0 is not a loopback address: set admin.token_file",
    );
    // Loopback (IPv4 and IPv6) needs neither.
    let cfg = load(&format!(
        "[admin]\nhttp = \"[::1]:9900\"\ngrpc = \"127.0.0.1:9901\"\n{OK_LISTENER}{OK_POOL}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.admin.grpc,
        Some(SocketAddr::from(([127, 0, 0, 1], 9901)))
    );
    let (_dir, token) = temp_file("token", "0123456789abcdef0123\n");
    let cfg = load(&format!(
        "[admin]\ngrpc = \"0.0.0.0:9901\"\ntoken_file = {:?}\n{OK_LISTENER}{OK_POOL}",
        token.display().to_string()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let read = cfg.admin.token.expect("token");
    assert_eq!(
        read.secret(),
        "0123456789abcdef0123",
        "trailing newline trimmed"
    );
    assert_eq!(format!("{read:?}"), "Token(<redacted>)");
}

#[test]
fn bad_token_files() {
    let (_short_dir, short) = temp_file("short", "abc\n");
    let (_empty_dir, empty) = temp_file("empty", "  \n");
    for (file, message) in [
        (short.display().to_string(), "the token in"),
        (empty.display().to_string(), ""),
        (
            "/nonexistent/weir-token".to_owned(),
            "cannot read \"/nonexistent/weir-token\"",
        ),
    ] {
        assert_one(
            &format!("[admin]\ntoken_file = {file:?}\n{OK_LISTENER}{OK_POOL}"),
            "admin.token_file",
            message,
        );
    }
}

#[test]
fn state_section() {
    let cfg = load(&format!("{OK_LISTENER}{OK_POOL}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.state.path, None);
    assert_eq!(cfg.state.history, 64);
    let cfg = load(&format!(
        "[state]\npath = \"w.db\"\nhistory = 5\n{OK_LISTENER}{OK_POOL}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.state.path.as_deref(), Some(Path::new("w.db")));
    assert_eq!(cfg.state.history, 5);
    assert_one(
        &format!("[state]\nhistory = 0\n{OK_LISTENER}{OK_POOL}"),
        "state.history",
        "0 is out of range 1..=10000",
    );
    assert_one(
        &format!("[state]\npath = \"\"\n{OK_LISTENER}{OK_POOL}"),
        "state.path",
        "must not be empty",
    );
}

#[test]
fn diff_names_what_a_reload_changes() {
    let old = load(&format!(
        "{OK_LISTENER}{OK_POOL}\n  [[pools.backends]]\n  address = \"127.0.0.1:9002\"\n  name = \"b\"\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(weir_config::diff(&old, &old).is_empty());
    let new_text = format!(
        "[log]\nformat = \"json\"\n{}\n[[listeners]]\nname = \"l2\"\nbind = \"127.0.0.1:7001\"\n  [[listeners.routes]]\n  name = \"r\"\n  pool = \"p\"\n{OK_POOL}\n  [[pools.backends]]\n  address = \"127.0.0.1:9003\"\n  name = \"c\"\n",
        OK_LISTENER.replace("name = \"r\"", "name = \"r1\"")
    );
    let new = load(&new_text).unwrap_or_else(|e| panic!("{e}"));
    let d = weir_config::diff(&old, &new);
    assert_eq!(d.added, ["listener l2", "backend p/c"]);
    assert_eq!(d.removed, ["backend p/b"]);
    assert_eq!(d.changed, ["listener l"]);
    assert_eq!(d.need_restart, ["log"]);
    // zero_copy applies to new connections; worker threads need a restart.
    let runtime = |r: &str| {
        load(&format!("[runtime]\n{r}\n{OK_LISTENER}{OK_POOL}")).unwrap_or_else(|e| panic!("{e}"))
    };
    let d = weir_config::diff(&runtime("zero_copy = false"), &runtime("zero_copy = true"));
    assert!(d.need_restart.is_empty(), "{d:?}");
    let d = weir_config::diff(
        &runtime("worker_threads = 1"),
        &runtime("worker_threads = 2"),
    );
    assert_eq!(d.need_restart, ["runtime.worker_threads"]);
    // 0 is one thread per CPU: written out as that number, nothing changes.
    let cpus = weir_config::cpus();
    let d = weir_config::diff(
        &runtime("worker_threads = 0"),
        &runtime(&format!("worker_threads = {cpus}")),
    );
    assert!(d.need_restart.is_empty(), "{d:?}");
    let d = weir_config::diff(
        &runtime("worker_threads = 0"),
        &runtime(&format!("worker_threads = {}", cpus + 1)),
    );
    assert_eq!(d.need_restart, ["runtime.worker_threads"]);
}

// ---- where a problem is ----

#[test]
fn duplicate_key_names_the_key_its_path_and_its_first_line() {
    let text = OK_POOL.replace(
        "address = \"127.0.0.1:9000\"",
        "address = \"127.0.0.1:9000\"\n  weight = 1\n  weight = 2",
    );
    assert_at(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].backends[0].weight",
        (14, 3),
        "duplicate key `weight`: a key may be set only once in a table (first set on line 13)",
    );
    assert_at(
        "[log]\nlevel = \"info\"\nlevel = \"warn\"\n",
        "log.level",
        (3, 1),
        "duplicate key `level`: a key may be set only once in a table (first set on line 2)",
    );
}

#[test]
fn errors_from_a_file_name_the_file_and_line() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("line-numbers.toml");
    let text = OK_POOL.replace(
        "address = \"127.0.0.1:9000\"",
        "address = \"127.0.0.1:9000\"\n  weight = 1200",
    );
    std::fs::write(&path, format!("{OK_LISTENER}{text}")).expect("write");
    let err = load_file(&path).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:13:3: pools[0].backends[0].weight: 1200 is out of range 0..=1000",
            path.display()
        )
    );
}

#[test]
fn trusted_sources_without_accept_are_an_error() {
    let text = OK_LISTENER.replace(
        "name = \"l\"",
        "name = \"l\"\nproxy_protocol = { accept = false, trusted = [\"10.0.0.0/8\"] }",
    );
    assert_one(
        &format!("{text}{OK_POOL}"),
        "listeners[0].proxy_protocol.trusted",
        "has no effect with accept = false",
    );
}

#[test]
fn misspelt_values_get_a_suggestion() {
    let text = OK_POOL.replace("name = \"p\"", "name = \"p\"\nbalance = \"least_con\"");
    assert_one(
        &format!("{OK_LISTENER}{text}"),
        "pools[0].balance",
        "unknown value \"least_con\" (did you mean \"least_conn\"?); expected one of: ",
    );
}

/// A listener with one l7 route whose body (after `mode = "l7"`) is `route`,
/// pools `p` and `q`, and `pool_extra` appended to pool `q`.
fn l7(route: &str, pool_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:7000\"\n\
         [[listeners.routes]]\nname = \"web\"\nmode = \"l7\"\n{route}\n\
         [[pools]]\nname = \"p\"\n[[pools.backends]]\naddress = \"127.0.0.1:9000\"\n\
         [[pools]]\nname = \"q\"\n{pool_extra}\n[[pools.backends]]\naddress = \"127.0.0.1:9001\"\n"
    )
}

const RULE: &str = "[[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n";

#[test]
fn l7_route_defaults_and_rules() {
    let cfg = load(&l7(
        &format!(
            "[[listeners.routes.http]]\nname = \"api\"\npool = \"q\"\n\
             match = {{ host = [\"API.example.com\", \"*.example.org\"], path_prefix = \"/v1/\", \
             methods = [\"GET\"], headers = {{ \"X-Canary\" = \"1\" }} }}\n{RULE}"
        ),
        "protocol = \"h2c\"",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let route = &cfg.listeners[0].routes[0];
    let RouteMode::L7(http) = &route.mode else {
        panic!("an l7 route expected")
    };
    assert_eq!(route.pool_indices(), [1, 0]);
    let api = &http.rules[0];
    assert_eq!((api.name.as_str(), api.pool_index), ("api", Some(1)));
    assert_eq!(api.matcher.host, ["api.example.com", "*.example.org"]);
    assert_eq!(api.matcher.path_prefix.as_deref(), Some("/v1/"));
    assert_eq!(api.matcher.methods, ["GET"]);
    assert_eq!(
        api.matcher.headers,
        [("x-canary".to_owned(), "1".to_owned())]
    );
    assert!(http.rules[1].matcher.is_catch_all());
    assert_eq!(http.timeouts, weir_config::HttpTimeouts::default());
    assert_eq!(http.timeouts.request_header, Duration::from_secs(10));
    assert_eq!(http.timeouts.upstream_keepalive, Duration::from_secs(4));
    assert_eq!(http.timeouts.upstream_ping, None);
    assert_eq!(http.timeouts.request, None);
    assert_eq!(http.timeouts.send, Duration::from_secs(60));
    assert_eq!(http.max_header_bytes, 32 * 1024);
    assert_eq!(http.max_concurrent_streams, 256);
    assert_eq!(http.max_body_bytes, None);
    assert!(http.forwarded.trusted.is_empty() && !http.forwarded.rfc7239);
    assert_eq!(cfg.pools[1].protocol, weir_config::HttpProtocol::H2c);
    assert_eq!(cfg.pools[0].protocol, weir_config::HttpProtocol::Http1);
}

#[test]
fn l7_route_mistakes_name_their_key() {
    let route = "listeners[0].routes[0]";
    assert_one(
        &l7(&format!("pool = \"p\"\n{RULE}"), ""),
        &format!("{route}.pool"),
        "an l7 route sends each request by its rules",
    );
    assert_one(
        &l7("", ""),
        &format!("{route}.http"),
        "an l7 route needs at least one rule",
    );
    assert_one(
        &l7(&format!("send_proxy_protocol = \"v2\"\n{RULE}"), ""),
        &format!("{route}.send_proxy_protocol"),
        "not with mode = \"l7\"",
    );
    assert_one(
        &l7(&format!("match = {{ sni = [\"a.example\"] }}\n{RULE}"), ""),
        &format!("{route}.match"),
        "an l7 route without tls reads HTTP in clear text",
    );
    assert_one(
        &l7(
            "[[listeners.routes.http]]\nname = \"a\"\npool = \"pp\"\n",
            "",
        ),
        &format!("{route}.http[0].pool"),
        "unknown pool \"pp\" (did you mean \"p\"?)",
    );
    assert_one(
        &l7(
            &format!("{RULE}[[listeners.routes.http]]\nname = \"b\"\npool = \"p\"\n"),
            "",
        ),
        &format!("{route}.http[0]"),
        "rule \"all\" has no match conditions",
    );
    assert_one(
        &l7(
            &format!(
                "{RULE}{}",
                RULE.replace(
                    "pool = \"p\"",
                    "pool = \"q\"\nmatch = { path_prefix = \"/a\" }"
                )
                .replace("\"all\"", "\"a\"")
            ),
            "",
        ),
        &format!("{route}.http[0]"),
        "rule \"all\" has no match conditions",
    );
    for (m, key, message) in [
        ("host = [\"a b\"]", "host[0]", "\"a b\" is not a host name"),
        (
            "host = [\"a.example:80\"]",
            "host[0]",
            "\"a.example:80\" is not a host name",
        ),
        (
            "path_prefix = \"api\"",
            "path_prefix",
            "\"api\" is not a path in normal form",
        ),
        // Forms a request's path never has once normalised: with the form
        // it has, where there is one.
        (
            "path_prefix = \"/%7Eadmin\"",
            "path_prefix",
            "\"/%7Eadmin\" is not a path in normal form (write \"/~admin\")",
        ),
        (
            "path_prefix = \"/caf\\u00e9\"",
            "path_prefix",
            "\"/café\" is not a path in normal form (write \"/caf%C3%A9\")",
        ),
        (
            "path_prefix = \"/a//b\"",
            "path_prefix",
            "\"/a//b\" is not a path in normal form (write \"/a/b\")",
        ),
        (
            "path = [\"/x/./y\"]",
            "path[0]",
            "\"/x/./y\" is not a path in normal form (write \"/x/y\")",
        ),
        (
            "headers = { \"x-canary\" = \" 1\" }",
            "headers.x-canary",
            "\" 1\" would never match",
        ),
        (
            "headers = { \"Host\" = \"a.example\" }",
            "headers.Host",
            "match the request's host with `host`",
        ),
        (
            "methods = [\"get\"]",
            "methods[0]",
            "\"get\": methods are case-sensitive",
        ),
        (
            "methods = [\"GE T\"]",
            "methods[0]",
            "\"GE T\" is not a method name",
        ),
        (
            "headers = { \"x y\" = \"1\" }",
            "headers",
            "\"x y\" is not a header name",
        ),
        (
            "path = [\"/a\", \"b\"]",
            "path[1]",
            "\"b\" is not a path in normal form",
        ),
        (
            "path = [\"/a?b=1\"]",
            "path[0]",
            "\"/a?b=1\" is not a path in normal form",
        ),
        (
            "path_regex = \"(\"",
            "path_regex",
            "not a regular expression",
        ),
        ("source = [\"10.0.0.0/33\"]", "source[0]", "\"10.0.0.0/33\""),
        (
            "query = { \"\" = \"1\" }",
            "query.",
            "a query parameter here is a non-empty name",
        ),
    ] {
        assert_one(
            &l7(
                &format!(
                    "[[listeners.routes.http]]\nname = \"a\"\npool = \"p\"\nmatch = {{ {m} }}\n"
                ),
                "",
            ),
            &format!("{route}.http[0].match.{key}"),
            message,
        );
    }
    assert_one(
        &l7(
            &format!("timeouts = {{ upstream_response = \"soon\" }}\n{RULE}"),
            "",
        ),
        &format!("{route}.timeouts.upstream_response"),
        "\"soon\" is not a duration",
    );
    assert_one(
        &l7(&format!("timeouts = {{ send = \"0s\" }}\n{RULE}"), ""),
        &format!("{route}.timeouts.send"),
        "must be greater than 0",
    );
    assert_one(
        &l7(
            &format!("timeouts = {{ upstream_ping = \"0s\" }}\n{RULE}"),
            "",
        ),
        &format!("{route}.timeouts.upstream_ping"),
        "must be greater than 0",
    );
    for (value, ping) in [("off", None), ("15s", Some(Duration::from_secs(15)))] {
        let text = l7(
            &format!("timeouts = {{ upstream_ping = \"{value}\" }}\n{RULE}"),
            "",
        );
        let cfg = weir_config::load_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
            panic!("an l7 route expected")
        };
        assert_eq!(http.timeouts.upstream_ping, ping, "{value}");
    }
    for (value, request) in [("off", None), ("30s", Some(Duration::from_secs(30)))] {
        let text = l7(
            &format!("timeouts = {{ request = \"{value}\" }}\n{RULE}"),
            "",
        );
        let cfg = weir_config::load_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
            panic!("an l7 route expected")
        };
        assert_eq!(http.timeouts.request, request, "{value}");
    }
    assert_one(
        &l7(&format!("timeouts = {{ request = \"0s\" }}\n{RULE}"), ""),
        &format!("{route}.timeouts.request"),
        "must be greater than 0",
    );
    assert_one(
        &l7(&format!("max_header_bytes = 100\n{RULE}"), ""),
        &format!("{route}.max_header_bytes"),
        "100 is out of range 8192..=1048576",
    );
    for (value, error) in [
        ("0", "0 is out of range 1..=1000"),
        ("1001", "1001 is out of range 1..=1000"),
    ] {
        assert_one(
            &l7(&format!("max_concurrent_streams = {value}\n{RULE}"), ""),
            &format!("{route}.max_concurrent_streams"),
            error,
        );
    }
    let cfg = load(&l7(&format!("max_concurrent_streams = 100\n{RULE}"), ""))
        .unwrap_or_else(|e| panic!("{e}"));
    let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
        panic!("an l7 route");
    };
    assert_eq!(http.max_concurrent_streams, 100);
    assert_one(
        &format!(
            "{}{OK_POOL}",
            OK_LISTENER.replace(
                "  pool = \"p\"\n",
                "  pool = \"p\"\n  max_concurrent_streams = 10\n"
            )
        ),
        "listeners[0].routes[0].max_concurrent_streams",
        "only for HTTP routes",
    );
    assert_one(
        &l7(
            &format!("forwarded = {{ trusted = [\"10.0.0.0/33\"] }}\n{RULE}"),
            "",
        ),
        &format!("{route}.forwarded.trusted[0]"),
        "",
    );
    // h2 is over TLS; h2c is not.
    assert_one(
        &l7(
            &RULE.replace("pool = \"p\"", "pool = \"q\""),
            "protocol = \"h2\"",
        ),
        &format!("{route}.http[0].pool"),
        "pool \"q\" speaks h2, HTTP/2 over TLS: give this route backend_tls",
    );
    assert_one(
        &l7(
            &format!(
                "backend_tls = {{ verify = false }}\n{}",
                RULE.replace("pool = \"p\"", "pool = \"q\"")
            ),
            "protocol = \"h2c\"",
        ),
        &format!("{route}.http[0].pool"),
        "pool \"q\" speaks h2c, HTTP/2 in clear text, but this route has backend_tls",
    );
    assert_one(
        &l7(RULE, "protocol = \"http2\""),
        "pools[1].protocol",
        "unknown value \"http2\"",
    );
}

#[test]
fn l4_routes_take_no_http_keys() {
    let text = format!(
        "{}{OK_POOL}",
        OK_LISTENER.replace(
            "  pool = \"p\"\n",
            "  pool = \"p\"\n  max_body_bytes = 10\n"
        )
    );
    assert_one(
        &text,
        "listeners[0].routes[0].max_body_bytes",
        "only for HTTP routes: add mode = \"l7\"",
    );
}

#[test]
fn l7_tls_files_are_read_at_load() {
    let dir = Scratch::new("tls");
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    )
    .expect("cert");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
    )
    .expect("key");
    let tls = |certs: &str| {
        format!("tls = {{ certificates = [{certs}] }}\nmatch = {{ sni = [\"a.example\"] }}\n{RULE}")
    };
    let pair = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    );
    let cfg = load(&l7(&tls(&pair), "")).unwrap_or_else(|e| panic!("{e}"));
    let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
        panic!("l7")
    };
    let t = http.tls.as_ref().expect("tls");
    assert_eq!(t.certificates, [(cert, key)]);
    assert_eq!(t.client_ca, None);
    assert!(cfg.listeners[0].routes[0].matcher.needs_client_hello());

    let route = "listeners[0].routes[0]";
    assert_one(
        &l7(&tls(""), ""),
        &format!("{route}.tls.certificates"),
        "at least one is needed",
    );
    assert_one(
        &l7(&tls(&pair.replace("k.pem", "nope.pem")), ""),
        &format!("{route}.tls.certificates[0].key"),
        "cannot read",
    );
    assert_one(
        &l7(&tls(&pair.replace("k.pem", "c.pem")), ""),
        &format!("{route}.tls.certificates[0].key"),
        "",
    );
    let l4 = format!(
        "{}{OK_POOL}",
        OK_LISTENER.replace(
            "  pool = \"p\"\n",
            &format!("  pool = \"p\"\n  tls = {{ certificates = [{pair}] }}\n")
        )
    );
    assert_one(&l4, "listeners[0].routes[0].tls", "only for HTTP routes");
}

/// `[firewall]` and a listener's `firewall`: lists joined, files read with
/// comments, `per_client` keys of the listener over the global ones.
#[test]
fn firewall_tables_join_per_listener() {
    let dir = Scratch::new("fw");
    let file = dir.join("deny.txt");
    std::fs::write(&file, "# list\n192.0.2.0/24 # net\n\n2001:db8::1\n").expect("write");
    let text = format!(
        "[firewall]\ndeny = [\"198.51.100.7\"]\ndeny_files = [\"{}\"]\n\
         per_client = {{ rate = 10, concurrent = 5 }}\n\
         [[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:7000\"\n\
         firewall = {{ allow = [\"10.0.0.0/8\"], per_client = {{ concurrent = 2, ipv4_prefix = 24 }} }}\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n\
         [[listeners]]\nname = \"m\"\nbind = \"127.0.0.1:7001\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n{OK_POOL}",
        file.display()
    );
    let cfg = load(&text).expect("valid");
    let l = cfg.listeners[0].firewall.as_ref().expect("firewall");
    let nets: Vec<String> = l.deny.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["198.51.100.7/32", "192.0.2.0/24", "2001:db8::1/128"]);
    assert_eq!(
        l.allow.as_ref().map(|a| a.len()),
        Some(1),
        "the listener's allow list"
    );
    let pc = l.per_client.expect("per_client");
    assert_eq!(
        (
            pc.rate,
            pc.burst,
            pc.concurrent,
            pc.ipv4_prefix,
            pc.ipv6_prefix
        ),
        (Some(10), 10, Some(2), 24, 64)
    );
    assert_eq!(pc.max_tracked, 100_000);
    // The other listener has the global table only.
    let m = cfg.listeners[1].firewall.as_ref().expect("global");
    assert!(m.allow.is_none());
    assert_eq!(m.per_client.and_then(|p| p.concurrent), Some(5));
    // No firewall at all: none.
    let plain = load(&format!("{OK_LISTENER}{OK_POOL}")).expect("valid");
    assert!(plain.listeners[0].firewall.is_none());
}

#[test]
fn firewall_mistakes_name_their_key_file_and_line() {
    assert_one(
        &format!("[firewall]\ndeny = [\"10.0.0.0/8\", \"nope\"]\n{OK_LISTENER}{OK_POOL}"),
        "firewall.deny[1]",
        "\"nope\" is not an IP address or CIDR",
    );
    assert_one(
        &format!("[firewall]\ndeny_files = [\"/nonexistent/weir-list\"]\n{OK_LISTENER}{OK_POOL}"),
        "firewall.deny_files[0]",
        "cannot read \"/nonexistent/weir-list\"",
    );
    let dir = Scratch::new("badlist");
    let file = dir.join("list.txt");
    std::fs::write(&file, "10.0.0.1\n\n10.0.0.300\n").expect("write");
    assert_one(
        &format!(
            "[firewall]\nallow_files = [\"{}\"]\n{OK_LISTENER}{OK_POOL}",
            file.display()
        ),
        "firewall.allow_files[0]",
        &format!("{}:3: \"10.0.0.300\" is not an IP address", file.display()),
    );
    assert_one(
        &format!("[firewall]\nper_client = {{ burst = 5 }}\n{OK_LISTENER}{OK_POOL}"),
        "firewall.per_client.burst",
        "needs `rate`",
    );
    assert_one(
        &format!("[firewall]\nper_client = {{ rate = 0 }}\n{OK_LISTENER}{OK_POOL}"),
        "firewall.per_client.rate",
        "0 is out of range",
    );
    assert_one(
        &format!(
            "[firewall]\nper_client = {{ concurrent = 1, ipv6_prefix = 8 }}\n{OK_LISTENER}{OK_POOL}"
        ),
        "firewall.per_client.ipv6_prefix",
        "8 is out of range 16..=128",
    );
    assert_one(
        &format!("[firewall]\nallow = [\"10.0.0.0/8\"]\nblock = []\n{OK_LISTENER}{OK_POOL}"),
        "firewall.block",
        "unknown key",
    );
}

#[test]
fn country_rules_need_a_readable_database_and_real_codes() {
    assert_one(
        &format!(
            "[firewall]\ncountries = {{ database = \"/nonexistent/c.mmdb\", deny = [\"XX\"] }}\n{OK_LISTENER}{OK_POOL}"
        ),
        "firewall.countries.database",
        "cannot read \"/nonexistent/c.mmdb\"",
    );
    let dir = Scratch::new("geo");
    let file = dir.join("c.mmdb");
    std::fs::write(&file, b"\xab\xcd\xefMaxMind.com but not really").expect("write");
    assert_one(
        &format!(
            "[firewall]\ncountries = {{ database = \"{}\", deny = [\"XX\"] }}\n{OK_LISTENER}{OK_POOL}",
            file.display()
        ),
        "firewall.countries.database",
        &format!(
            "{:?} is not a MaxMind-format database",
            file.display().to_string()
        ),
    );
    let found = problems(&format!(
        "[firewall]\ncountries = {{ database = \"{}\", deny = [\"Netherlands\"] }}\n{OK_LISTENER}{OK_POOL}",
        file.display()
    ));
    assert!(
        found.iter().any(|p| p.path == "firewall.countries.deny[0]"
            && p.message
                .starts_with("\"Netherlands\" is not a country code")),
        "{found:#?}"
    );
    let found = problems(&format!(
        "[firewall]\ncountries = {{ database = \"{}\" }}\n{OK_LISTENER}{OK_POOL}",
        file.display()
    ));
    assert!(
        found
            .iter()
            .any(|p| p.path == "firewall.countries" && p.message.starts_with("names no country")),
        "{found:#?}"
    );
}

/// An l7 route with `policies` at the route and on its rule.
fn l7_with(route_extra: &str, rule_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:7000\"\n\
         [[listeners.routes]]\nname = \"r\"\nmode = \"l7\"\n{route_extra}\n\
         [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n{rule_extra}\n{OK_POOL}"
    )
}

#[test]
fn policies_are_checked_with_their_key_paths() {
    let cfg = load(&l7_with(
        "policies = [ { name = \"a\", deny = { path_prefix = [\"/admin\"], methods = [\"POST\"] } } ]",
        "policies = [ { name = \"b\", require_header = \"X-Key\", status = 401, body = \"no\" } ]",
    ))
    .expect("valid");
    let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
        panic!("l7");
    };
    assert_eq!(http.policies.len(), 1);
    assert_eq!(http.policies[0].status, 403);
    assert_eq!(http.rules[0].policies[0].status, 401);
    assert_eq!(http.encoded_slashes, weir_config::EncodedSlashes::Reject);

    assert_one(
        &l7_with(
            "policies = [ { name = \"a\", require_header = \"x\", deny = { methods = [\"GET\"] } } ]",
            "",
        ),
        "listeners[0].routes[0].policies[0]",
        "a policy takes exactly one of",
    );
    assert_one(
        &l7_with(
            "policies = [ { name = \"a\", block_user_agent_regex = \"(unclosed\" } ]",
            "",
        ),
        "listeners[0].routes[0].policies[0].block_user_agent_regex",
        "not a regular expression",
    );
    assert_one(
        &l7_with(
            "policies = [ { name = \"a\", deny = { methods = [\"GET\"] } } ]",
            "policies = [ { name = \"a\", deny = { methods = [\"PUT\"] } } ]",
        ),
        "listeners[0].routes[0].http[0].policies[0].name",
        "duplicate policy name \"a\"",
    );
    for (policy, key, message) in [
        (
            "block_user_agent = [\"curl\", \"\"]",
            "block_user_agent[1]",
            "an empty entry would block every client",
        ),
        (
            "block_user_agent = []",
            "block_user_agent",
            "an empty list blocks nothing",
        ),
        (
            "require_header = \"Host\"",
            "require_header",
            "every request carries a host",
        ),
        (
            "deny = { path_prefix = [\"/%7eadmin\"] }",
            "deny.path_prefix[0]",
            "\"/%7eadmin\" is not a path in normal form (write \"/~admin\")",
        ),
        (
            "allow = { path_prefix = [\"/ok\", \"/a/../b\"] }",
            "allow.path_prefix[1]",
            "\"/a/../b\" is not a path in normal form (write \"/b\")",
        ),
    ] {
        assert_one(
            &l7_with(&format!("policies = [ {{ name = \"a\", {policy} }} ]"), ""),
            &format!("listeners[0].routes[0].policies[0].{key}"),
            message,
        );
    }
    assert_one(
        &l7_with("policies = [ { name = \"a\", deny = {} } ]", ""),
        "listeners[0].routes[0].policies[0].deny",
        "names no condition",
    );
    assert_one(
        &l7_with(
            "policies = [ { name = \"a\", allow = { source = [\"10.0.0.0/33\"] } } ]",
            "",
        ),
        "listeners[0].routes[0].policies[0].allow.source[0]",
        "\"10.0.0.0/33\" is not an IP address or CIDR",
    );
    assert_one(
        &l7_with("encoded_slashes = \"decode\"", ""),
        "listeners[0].routes[0].encoded_slashes",
        "unknown value \"decode\"; expected one of: reject, keep",
    );
    assert_one(
        &format!(
            "{}{OK_POOL}",
            OK_LISTENER.replace(
                "  pool = \"p\"\n",
                "  pool = \"p\"\n  policies = [ { name = \"a\", deny = { methods = [\"GET\"] } } ]\n"
            )
        ),
        "listeners[0].routes[0].policies",
        "only for HTTP routes",
    );
}

#[test]
fn tracing_takes_a_ratio_and_a_trust_flag() {
    let cfg = load(&format!(
        "[tracing]\nsample_ratio = 0.25\ntrust_client_sampling = false\n{OK_LISTENER}{OK_POOL}"
    ))
    .expect("valid");
    let t = cfg.tracing.expect("tracing");
    assert_eq!((t.sample_ratio, t.trust_client_sampling), (0.25, false));
    assert!(
        load(&format!("{OK_LISTENER}{OK_POOL}"))
            .expect("valid")
            .tracing
            .is_none()
    );
    assert_one(
        &format!("[tracing]\nsample_ratio = 1.5\n{OK_LISTENER}{OK_POOL}"),
        "tracing.sample_ratio",
        "1.5 is out of range 0.0..=1.0",
    );
}

#[test]
fn dns_and_udp_checks() {
    let c = weir_config::load_str(&with_health(
        "type = \"dns\"\nquery = \"health.example.\"\nquery_type = \"aaaa\"\nexpect_rcode = \"NXDOMAIN\"",
    ))
    .expect("valid");
    assert_eq!(
        c.pools[0].health.check,
        weir_config::Check::Dns(weir_config::DnsCheck {
            name: "health.example.".into(),
            qtype: 28,
            rcode: 3
        })
    );
    for (body, key, words) in [
        ("type = \"dns\"", "query", "not a domain name"),
        (
            "type = \"dns\"\nquery = \"a..b\"",
            "query",
            "not a domain name",
        ),
        (
            "type = \"dns\"\nquery = \"a\"\nquery_type = \"WKS\"",
            "query_type",
            "expected one of A",
        ),
        (
            "type = \"dns\"\nquery = \"a\"\nexpect_rcode = \"OK\"",
            "expect_rcode",
            "NOERROR",
        ),
        ("type = \"udp\"", "send", "needs the datagram"),
        (
            "type = \"tcp\"\nsend = \"x\"",
            "send",
            "only for type = \"udp\"",
        ),
        (
            "type = \"udp\"\nsend = \"x\"\nquery = \"a\"",
            "query",
            "only for type = \"dns\"",
        ),
    ] {
        let e = weir_config::load_str(&with_health(body))
            .expect_err(body)
            .to_string();
        assert!(e.contains(&format!("pools[0].health.{key}")), "{body}: {e}");
        assert!(e.contains(words), "{body}: {e}");
    }
}

#[test]
fn http_check_requests_are_checked() {
    let cases = [
        (
            "method = \"get\"",
            "pools[0].health.method",
            "upper-case letters",
        ),
        (
            "method = \"CONNECT\"",
            "pools[0].health.method",
            "not a method",
        ),
        (
            "headers = { \"Host\" = \"x\" }",
            "pools[0].health.headers.Host",
            "weir writes this header itself",
        ),
        (
            "headers = { \"bad name\" = \"x\" }",
            "pools[0].health.headers.bad name",
            "is not a header name",
        ),
        (
            "headers = { \"X-A\" = \"line\\nbreak\" }",
            "pools[0].health.headers.X-A",
            "visible ASCII",
        ),
        (
            "max_response = 10",
            "pools[0].health.max_response",
            "out of range 256..=16777216",
        ),
        (
            "follow_redirects = 11",
            "pools[0].health.follow_redirects",
            "out of range 0..=10",
        ),
    ];
    for (key, path, message) in cases {
        let p = problems(&with_health(&format!("type = \"http\"\n{key}")));
        assert!(
            p.iter()
                .any(|p| p.path == path && p.message.contains(message)),
            "{key}: {p:?}"
        );
    }
    // HTTP-only keys on another check type.
    let p = problems(&with_health("type = \"tcp\"\nmethod = \"POST\""));
    assert!(
        p.iter().any(|p| p.path == "pools[0].health.method"),
        "{p:?}"
    );
}

#[test]
fn hash_key_sni_is_for_l4_routes_of_tcp_listeners() {
    let pool = "[[pools]]\nname = \"p\"\nbalance = \"maglev\"\nhash_key = \"sni\"\n\
                [[pools.backends]]\naddress = \"127.0.0.1:9000\"\n";
    let l4 = format!(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n{pool}"
    );
    assert!(load(&l4).is_ok());
    let udp = format!(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\nprotocol = \"udp\"\n\
         [[listeners.routes]]\nname = \"r\"\npool = \"p\"\n{pool}"
    );
    let p = problems(&udp);
    assert!(
        p.iter()
            .any(|p| p.path == "listeners[0].routes[0]" && p.message.contains("hashes by sni")),
        "{p:?}"
    );
}

#[test]
fn http_checks_take_several_expectations_and_a_standby_answer() {
    let cfg = load(&with_health(
        "type = \"http\"\nexpect_body = [\"running\", \"leader\"]\n\
         expect_json = { state = \"running\", \"xlog.paused\" = false, timeline = 3 }\n\
         standby = { status = \"503\", json = { state = \"running\" } }",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let Check::Http(h) = &cfg.pools[0].health.check else {
        panic!("an http check")
    };
    assert_eq!(h.expect_body, ["running", "leader"]);
    let fields: Vec<String> = h.expect_json.iter().map(ToString::to_string).collect();
    assert_eq!(
        fields,
        ["state = \"running\"", "timeline = 3", "xlog.paused = false"]
    );
    let standby = h.standby.as_ref().expect("standby");
    assert!(standby.status.as_ref().is_some_and(|s| s.matches(503)));
    assert!(standby.body.is_empty());
    assert_eq!(standby.json.len(), 1);

    let bad = |health: &str, path: &str, message: &str| {
        assert_one(&with_health(health), path, message);
    };
    bad(
        "type = \"http\"\nexpect_body = [\"ok\", \"\"]",
        "pools[0].health.expect_body",
        "must not be empty",
    );
    bad(
        "type = \"http\"\nexpect_json = { \"a..b\" = 1 }",
        "pools[0].health.expect_json.a..b",
        "is not a field path",
    );
    bad(
        "type = \"http\"\nexpect_json = { state = 1.5 }",
        "pools[0].health.expect_json.state",
        "must be a string, an integer or true/false (found float)",
    );
    bad(
        "type = \"http\"\nstandby = {}",
        "pools[0].health.standby",
        "give the answer that means standby",
    );
    bad(
        "type = \"http\"\nstandby = { status = \"5zz\" }",
        "pools[0].health.standby.status",
        "\"5zz\" is not",
    );
    bad(
        "type = \"tcp\"\nstandby = { status = \"503\" }",
        "pools[0].health.standby",
        "only for type = \"http\"",
    );
}

#[test]
fn a_backend_changes_the_pools_http_check() {
    let pool = "[[pools]]\nname = \"p\"\n  [pools.health]\n  type = \"http\"\n  path = \"/primary\"\n  \
                expect_status = \"200\"\n  [[pools.backends]]\n  name = \"r\"\n  address = \"127.0.0.1:9000\"\n  \
                check = { path = \"/replica\", expect_json = { role = \"replica\" } }\n  \
                [[pools.backends]]\n  name = \"p\"\n  address = \"127.0.0.1:9001\"\n";
    let cfg = load(&format!("{OK_LISTENER}{pool}")).unwrap_or_else(|e| panic!("{e}"));
    let p = &cfg.pools[0];
    let own = p.backends[0].check.as_ref().expect("its own check");
    assert_eq!(own.path, "/replica");
    assert!(own.expect_status.matches(200) && !own.expect_status.matches(204));
    assert_eq!(own.expect_json.len(), 1);
    assert_eq!(p.backends[1].check, None, "the pool's");

    let tcp = OK_POOL.replace("address = ", "check = { path = \"/x\" }\n  address = ");
    assert_one(
        &format!("{OK_LISTENER}{tcp}"),
        "pools[0].backends[0].check",
        "only in a pool whose [pools.health] has type = \"http\" (this one: \"none\")",
    );
    let unknown = pool.replace("check = { path", "check = { interval = \"1s\", path");
    let found = problems(&format!("{OK_LISTENER}{unknown}"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].message.contains("unknown key `interval`"),
        "{found:#?}"
    );
}

#[test]
fn discover_settings_are_checked_with_their_key_paths() {
    let pool = |discover: &str| {
        format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[listeners.routes]]\n\
             name = \"r\"\npool = \"p\"\n[[pools]]\nname = \"p\"\ndiscover = {{ {discover} }}\n"
        )
    };
    let at = "pools[0].discover";
    assert_one(
        &pool("srv = \"_a._tcp.x\", name = \"x\", port = 1"),
        at,
        "give either `srv`",
    );
    assert_one(&pool("resolver = \"127.0.0.1\""), at, "say what to ask");
    assert_one(
        &pool("srv = \"_a._tcp.x\", port = 5432"),
        &format!("{at}.port"),
        "an SRV record carries its own port",
    );
    assert_one(
        &pool("srv = \"_a._tcp.x\", weight = 3"),
        &format!("{at}.weight"),
        "SRV records carry their own priority",
    );
    assert_one(
        &pool("name = \"api.internal\""),
        &format!("{at}.port"),
        "A/AAAA records have no port",
    );
    assert_one(
        &pool("name = \"api..internal\", port = 80"),
        &format!("{at}.name"),
        "\"api..internal\" is not a DNS name",
    );
    assert_one(
        &pool("srv = \"_a._tcp.x\", resolver = \"dns.local\""),
        &format!("{at}.resolver"),
        "\"dns.local\" is not a DNS server address",
    );
    assert_one(
        &pool("srv = \"_a._tcp.x\", min_interval = \"10s\", max_interval = \"5s\""),
        &format!("{at}.max_interval"),
        "must be at least min_interval",
    );
    // A bare IP resolver gets port 53; a trailing dot is a DNS name.
    let cfg = load(&pool("srv = \"_a._tcp.x.\", resolver = \"10.0.0.2\"")).expect("valid");
    let d = cfg.pools[0].discover.as_ref().expect("discover");
    assert_eq!(d.resolver, Some(sa("10.0.0.2:53")));
}

#[test]
fn forward_auth_never_asks_for_nor_copies_framing_headers() {
    let ok = load(&l7(
        &format!(
            "auth = {{ url = \"http://127.0.0.1:9100/check\", headers = [\"Authorization\"], \
             copy_headers = [\"X-User\"] }}\n{RULE}"
        ),
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let weir_config::RouteMode::L7(http) = &ok.listeners[0].routes[0].mode else {
        panic!("an l7 route");
    };
    let auth = http.auth.as_ref();
    assert_eq!(
        auth.map(|a| (a.headers.clone(), a.copy_headers.clone())),
        Some((vec!["authorization".to_owned()], vec!["x-user".to_owned()]))
    );
    // `cache_headers` is another name for `headers`.
    let alias = load(&l7(
        &format!(
            "auth = {{ url = \"http://127.0.0.1:9100/check\", cache_headers = [\"Cookie\"] }}\n{RULE}"
        ),
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let weir_config::RouteMode::L7(http) = &alias.listeners[0].routes[0].mode else {
        panic!("an l7 route");
    };
    assert_eq!(
        http.auth.as_ref().map(|a| a.headers.clone()),
        Some(vec!["cookie".to_owned()])
    );
    for (key, name) in [
        ("copy_headers", "Content-Length"),
        ("copy_headers", "transfer-encoding"),
        ("copy_headers", "Host"),
        ("copy_headers", "upgrade"),
        ("headers", "host"),
        ("headers", "Connection"),
    ] {
        assert_one(
            &l7(
                &format!(
                    "auth = {{ url = \"http://127.0.0.1:9100/check\", {key} = [\"x-ok\", \"{name}\"] }}\n{RULE}"
                ),
                "",
            ),
            &format!("listeners[0].routes[0].auth.{key}[1]"),
            &format!("{name:?} is weir's to set"),
        );
    }
}

/// An `auth.url` whose target the HTTP library would refuse fails the load
/// (every call would fail, and with `failure = "allow"` let every request
/// through); `allowed_ttl`/`denied_ttl` of zero keep no decision.
#[test]
fn forward_auth_urls_are_targets_and_ttls_may_be_zero() {
    let with = |extra: &str| {
        l7(
            &format!("auth = {{ url = \"http://127.0.0.1:9100/check\"{extra} }}\n{RULE}"),
            "",
        )
    };
    for url in [
        "http://127.0.0.1:9100/check?rd=<x>",
        "http://127.0.0.1:9100/a`b",
        "http://127.0.0.1:9100/a#b",
    ] {
        assert_one(
            &l7(&format!("auth = {{ url = \"{url}\" }}\n{RULE}"), ""),
            "listeners[0].routes[0].auth.url",
            &format!("{url:?} is not an http:// URL"),
        );
    }
    let ttls = |text: &str| {
        let cfg = load(text).unwrap_or_else(|e| panic!("{e}"));
        let weir_config::RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
            panic!("an l7 route");
        };
        http.auth.as_ref().map(|a| (a.allowed_ttl, a.denied_ttl))
    };
    assert_eq!(
        ttls(&with(", allowed_ttl = \"30s\", denied_ttl = \"0s\"")),
        Some((Duration::from_secs(30), Duration::ZERO))
    );
}

#[test]
fn forward_auth_bounds_its_calls_under_way() {
    let with = |extra: &str| {
        l7(
            &format!("auth = {{ url = \"http://127.0.0.1:9100/check\"{extra} }}\n{RULE}"),
            "",
        )
    };
    let max_calls = |text: &str| {
        let cfg = load(text).unwrap_or_else(|e| panic!("{e}"));
        let weir_config::RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
            panic!("an l7 route");
        };
        http.auth.as_ref().map(|a| a.max_calls)
    };
    assert_eq!(max_calls(&with("")), Some(256));
    assert_eq!(max_calls(&with(", max_calls = 8")), Some(8));
    assert_one(
        &with(", max_calls = 0"),
        "listeners[0].routes[0].auth.max_calls",
        "0 is out of range 1..=100000",
    );
}

/// A request header an authentication service of the route fills from its
/// answer (`copy_headers`; weir drops those names from every request on the
/// route) cannot also be given a value by `request_headers`: it would be
/// dropped without a word.
#[test]
fn headers_copied_from_auth_are_not_also_set() {
    let route = "listeners[0].routes[0]";
    let auth = "auth = { url = \"http://127.0.0.1:9100/check\", copy_headers = [\"X-User\"] }";
    assert_one(
        &l7(
            &format!("{auth}\nrequest_headers = {{ set = {{ \"x-user\" = \"nobody\" }} }}\n{RULE}"),
            "",
        ),
        &format!("{route}.request_headers.set.x-user"),
        "an authentication service's answer fills this header",
    );
    assert_one(
        &l7(
            &format!(
                "{auth}\n[[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
                 request_headers = {{ add = {{ \"X-User\" = \"${{client_ip}}\" }} }}\n"
            ),
            "",
        ),
        &format!("{route}.http[0].request_headers.add.x-user"),
        "an authentication service's answer fills this header",
    );
    // Another rule's auth copies it: dropped from this rule's requests too.
    assert_one(
        &l7(
            &format!(
                "[[listeners.routes.http]]\nname = \"own\"\npool = \"p\"\n\
                 match = {{ path_prefix = \"/own\" }}\n{auth}\n\
                 [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
                 request_headers = {{ set = {{ \"x-user\" = \"guest\" }} }}\n"
            ),
            "",
        ),
        &format!("{route}.http[1].request_headers.set.x-user"),
        "an authentication service's answer fills this header",
    );
    load(&l7(
        &format!(
            "{auth}\nrequest_headers = {{ set = {{ \"x-team\" = \"a\" }} }}\n\
             [[listeners.routes.http]]\nname = \"own\"\npool = \"p\"\n\
             request_headers = {{ add = {{ \"x-user-name\" = \"b\" }} }}\n"
        ),
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
}

/// `request_headers` and `response_headers` of a route and a rule: names
/// lower-cased; framing, connection and weir's own headers refused with
/// their key; values that could end a field refused; only on l7 routes.
#[test]
fn header_rules_are_checked() {
    let route = "listeners[0].routes[0]";
    let cfg = load(&l7(
        "request_headers = { set = { \"X-Env\" = \"prod\" }, remove = [\"X-Debug\"] }\n\
             response_headers = { add = { \"Vary\" = \"origin\" } }\n\
             [[listeners.routes.http]]\nname = \"all\"\npool = \"p\"\n\
             response_headers = { remove = [\"server\"] }\n",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
        panic!("an l7 route");
    };
    assert_eq!(http.request_headers.set, [("x-env".into(), "prod".into())]);
    assert_eq!(http.request_headers.remove, ["x-debug"]);
    assert_eq!(
        http.response_headers.add,
        [("vary".into(), "origin".into())]
    );
    assert!(http.rules[0].request_headers.is_empty());
    assert_eq!(http.rules[0].response_headers.remove, ["server"]);
    assert!(!http.response_headers.always && !http.rules[0].response_headers.always);
    // `always`: weir's own answers get them too; a redirect is one.
    let cfg = load(&l7(
        "response_headers = { set = { \"x-a\" = \"1\" }, always = true }\n\
         [[listeners.routes.http]]\nname = \"away\"\nredirect = { scheme = \"https\" }\n\
         response_headers = { set = { \"cache-control\" = \"no-store\" }, always = true }\n",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
        panic!("an l7 route");
    };
    assert!(http.response_headers.always && http.rules[0].response_headers.always);
    for (rules, key, error) in [
        (
            "request_headers = { set = { \"X-Forwarded-For\" = \"1.2.3.4\" } }",
            "request_headers.set.X-Forwarded-For",
            "\"X-Forwarded-For\" is weir's to set",
        ),
        (
            "request_headers = { remove = [\"host\"] }",
            "request_headers.remove[0]",
            "\"host\" is weir's to set",
        ),
        (
            "response_headers = { set = { \"content-length\" = \"0\" } }",
            "response_headers.set.content-length",
            "\"content-length\" is weir's to set",
        ),
        (
            "response_headers = { add = { \"x-a\" = \"1\\r\\nx-b: 2\" } }",
            "response_headers.add.x-a",
            "\"1\\r\\nx-b: 2\" is not a header value",
        ),
        (
            "request_headers = { add = { \"x a\" = \"1\" } }",
            "request_headers.add.x a",
            "\"x a\" is not a header name",
        ),
        (
            "request_headers = { set = { \"x-a\" = \"1\", \"X-A\" = \"2\" } }",
            "request_headers.set.x-a",
            "named twice",
        ),
        (
            "response_headers = { rename = [\"x\"] }",
            "response_headers.rename",
            "unknown key `rename`; expected one of `remove`, `set`, `add`, `always`",
        ),
        (
            "request_headers = { set = { \"x-real-ip\" = \"${client-ip}\" } }",
            "request_headers.set.x-real-ip",
            "`${client-ip}` is not a variable (known: client_ip, client_port,",
        ),
        (
            "response_headers = { add = { \"x-a\" = \"id=${request_id\" } }",
            "response_headers.add.x-a",
            "the `${` at byte 3 has no closing `}`",
        ),
        (
            "request_headers = { set = { \"x-backend\" = \"${backend}\" } }",
            "request_headers.set.x-backend",
            "`${backend}` is known only in `response_headers`",
        ),
        (
            "request_headers = { set = { \"x-a\" = \"1\" }, always = true }",
            "request_headers.always",
            "only `response_headers` take it",
        ),
        (
            "response_headers = { set = { \"x-a\" = \"1\" }, always = \"yes\" }",
            "response_headers.always",
            "invalid type: string \"yes\", expected a boolean",
        ),
    ] {
        assert_one(
            &l7(&format!("{rules}\n{RULE}"), ""),
            &format!("{route}.{key}"),
            error,
        );
    }
    // A response may set what a request may not (its own Host-like fields
    // are the backend's to give), and name the backend that answered.
    load(&l7(
        &format!(
            "response_headers = {{ set = {{ \"x-request-id\" = \"fixed\", \
             \"x-served-by\" = \"${{backend}} ($${{not}} $x)\" }} }}\n{RULE}"
        ),
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_one(
        &format!(
            "{}{OK_POOL}",
            OK_LISTENER.replace(
                "  pool = \"p\"\n",
                "  pool = \"p\"\n  response_headers = { remove = [\"server\"] }\n"
            )
        ),
        "listeners[0].routes[0].response_headers",
        "only for HTTP routes",
    );
}

/// A rule either forwards to a `pool` or answers with a `redirect`; a
/// redirect's parts are checked, it must change something, and what only
/// acts on forwarded requests is refused beside it.
#[test]
fn redirect_rules_are_checked() {
    let route = "listeners[0].routes[0]";
    let cfg = load(&l7(
        "[[listeners.routes.http]]\nname = \"away\"\nmatch = { host = [\"old.example\"] }\n\
         redirect = { scheme = \"https\", host = \"New.example\", port = 8443, status = 308 }\n\
         [[listeners.routes.http]]\nname = \"home\"\nmatch = { path_prefix = \"/\" }\n\
         redirect = { scheme = \"https\" }\n",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
        panic!("an l7 route");
    };
    assert_eq!(
        (http.rules[0].pool.as_ref(), http.rules[0].pool_index),
        (None, None)
    );
    assert_eq!(
        http.rules[0].redirect,
        Some(weir_config::Redirect {
            scheme: Some("https".into()),
            host: Some("new.example".into()),
            port: Some(8443),
            status: 308,
        })
    );
    assert_eq!(http.rules[1].redirect.as_ref().map(|r| r.status), Some(301));
    assert!(cfg.listeners[0].routes[0].pool_indices().is_empty());
    let rule = |body: &str| format!("[[listeners.routes.http]]\nname = \"r\"\n{body}\n");
    for (body, key, error) in [
        ("", "pool", "required: the pool"),
        (
            "pool = \"p\"\nredirect = { scheme = \"https\" }",
            "redirect",
            "a rule either sends its requests to a `pool` or redirects them",
        ),
        (
            "redirect = { status = 301 }",
            "redirect",
            "give at least one of",
        ),
        (
            "redirect = { scheme = \"ftp\" }",
            "redirect.scheme",
            "\"ftp\": expected \"http\" or \"https\"",
        ),
        (
            "redirect = { host = \"a.example:443\" }",
            "redirect.host",
            "\"a.example:443\" is not a host name",
        ),
        (
            "redirect = { port = 0 }",
            "redirect.port",
            "0 is out of range 1..=65535",
        ),
        (
            "redirect = { scheme = \"https\", status = 304 }",
            "redirect.status",
            "304 is not a redirect",
        ),
        (
            "redirect = { scheme = \"https\" }\nauth = { url = \"http://127.0.0.1:9000/\" }",
            "auth",
            "a redirect rule forwards nothing",
        ),
        (
            "redirect = { scheme = \"https\" }\n\
             response_headers = { set = { \"x-a\" = \"1\" } }",
            "response_headers",
            "a redirect rule forwards nothing to a backend: remove it, or give it `always = true`",
        ),
    ] {
        assert_one(
            &l7(&rule(body), ""),
            &format!("{route}.http[0].{key}"),
            error,
        );
    }
}

/// `strip_prefix` and `add_prefix` are paths in the normal form weir gives
/// every request's path; a redirect rule takes them for its URL's path.
#[test]
fn path_prefixes_are_checked() {
    let route = "listeners[0].routes[0]";
    let cfg = load(&l7(
        "[[listeners.routes.http]]\nname = \"api\"\npool = \"p\"\n\
         strip_prefix = \"/api/\"\nadd_prefix = \"/v2\"\n",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
        panic!("an l7 route");
    };
    assert_eq!(http.rules[0].strip_prefix.as_deref(), Some("/api/"));
    assert_eq!(http.rules[0].add_prefix.as_deref(), Some("/v2"));
    for (body, key) in [
        ("strip_prefix = \"api\"", "strip_prefix"),
        ("strip_prefix = \"/a/../b\"", "strip_prefix"),
        ("add_prefix = \"//v2\"", "add_prefix"),
        ("add_prefix = \"/v2?x=1\"", "add_prefix"),
        ("add_prefix = \"/%2fv2\"", "add_prefix"),
        ("add_prefix = \"/v 2\"", "add_prefix"),
    ] {
        assert_one(
            &l7(
                &format!("[[listeners.routes.http]]\nname = \"r\"\npool = \"p\"\n{body}\n"),
                "",
            ),
            &format!("{route}.http[0].{key}"),
            "",
        );
    }
    // With a redirect they move the path the client is sent to, which is
    // then enough of a change by itself.
    let cfg = load(&l7(
        "[[listeners.routes.http]]\nname = \"moved\"\nmatch = { path_prefix = \"/old\" }\n\
         redirect = { status = 308 }\nstrip_prefix = \"/old\"\nadd_prefix = \"/new\"\n",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
        panic!("an l7 route");
    };
    assert_eq!(http.rules[0].strip_prefix.as_deref(), Some("/old"));
}

/// `retry_on_status`: 4xx and 5xx statuses, each once, kept sorted; none by
/// default.
#[test]
fn retry_on_status_is_checked() {
    let with = |list: &str| {
        format!(
            "{OK_LISTENER}{}",
            OK_POOL.replace(
                "name = \"p\"\n",
                &format!("name = \"p\"\nretry_on_status = {list}\n")
            )
        )
    };
    let cfg = load(&with("[504, 502, 503]")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.pools[0].retry_on_status, [502, 503, 504]);
    let cfg = load(&format!("{OK_LISTENER}{OK_POOL}")).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.pools[0].retry_on_status.is_empty());
    for (list, key, error) in [
        (
            "[200]",
            "retry_on_status[0]",
            "200 is out of range 400..=599",
        ),
        (
            "[503, 600]",
            "retry_on_status[1]",
            "600 is out of range 400..=599",
        ),
        ("[503, 503]", "retry_on_status[1]", "503 is listed twice"),
    ] {
        assert_one(&with(list), &format!("pools[0].{key}"), error);
    }
}

/// `retry_budget = { percent, min_concurrent }`: 20% and 3 by default,
/// none without the key.
#[test]
fn retry_budgets_are_checked() {
    let with = |table: &str| {
        format!(
            "{OK_LISTENER}{}",
            OK_POOL.replace(
                "name = \"p\"\n",
                &format!("name = \"p\"\nretry_budget = {table}\n")
            )
        )
    };
    let cfg = load(&format!("{OK_LISTENER}{OK_POOL}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.pools[0].retry_budget, None);
    let cfg = load(&with("{}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.pools[0].retry_budget,
        Some(RetryBudget {
            percent: 20,
            min_concurrent: 3
        })
    );
    let cfg = load(&with("{ percent = 0, min_concurrent = 10 }")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.pools[0].retry_budget,
        Some(RetryBudget {
            percent: 0,
            min_concurrent: 10
        })
    );
    for (table, key, error) in [
        (
            "{ percent = 101 }",
            "percent",
            "101 is out of range 0..=100",
        ),
        (
            "{ min_concurrent = -1 }",
            "min_concurrent",
            "-1 is out of range",
        ),
        ("{ share = 5 }", "share", "unknown key"),
    ] {
        assert_one(&with(table), &format!("pools[0].retry_budget.{key}"), error);
    }
}

/// `sticky = { cookie, ... }`: a cookie name that is a token, a path and a
/// domain that cannot end the field, whole seconds, and `SameSite=None`
/// only with `Secure`.
#[test]
fn sticky_cookies_are_checked() {
    let with = |table: &str| {
        format!(
            "{OK_LISTENER}{}",
            OK_POOL.replace(
                "name = \"p\"\n",
                &format!("name = \"p\"\nsticky = {table}\n")
            )
        )
    };
    let cfg = load(&with("{ cookie = \"srv\" }")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.pools[0].sticky,
        Some(weir_config::Sticky {
            cookie: "srv".into(),
            max_age: None,
            path: "/".into(),
            domain: None,
            secure: None,
            http_only: true,
            same_site: weir_config::SameSite::Lax,
        })
    );
    let cfg = load(&with(
        "{ cookie = \"srv\", max_age = \"1d\", path = \"/app\", domain = \"Example.COM\", \
         http_only = false, same_site = \"none\" }",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let s = cfg.pools[0].sticky.as_ref().expect("sticky");
    assert_eq!(s.max_age, Some(std::time::Duration::from_secs(86_400)));
    assert_eq!(
        (s.path.as_str(), s.domain.as_deref()),
        ("/app", Some("example.com"))
    );
    assert_eq!(
        (s.secure, s.http_only),
        (Some(true), false),
        "None needs Secure"
    );
    let cfg = load(&format!("{OK_LISTENER}{OK_POOL}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.pools[0].sticky, None);
    for (table, key, error) in [
        (
            "{ cookie = \"a b\" }",
            "cookie",
            "\"a b\" is not a cookie name",
        ),
        ("{ cookie = \"\" }", "cookie", "\"\" is not a cookie name"),
        (
            "{ cookie = \"s\", path = \"app\" }",
            "path",
            "\"app\" is not a cookie path",
        ),
        (
            "{ cookie = \"s\", path = \"/a;b\" }",
            "path",
            "\"/a;b\" is not a cookie path",
        ),
        (
            "{ cookie = \"s\", domain = \"a..b\" }",
            "domain",
            "\"a..b\" is not a domain name",
        ),
        (
            "{ cookie = \"s\", max_age = \"500ms\" }",
            "max_age",
            "must be at least 1s",
        ),
        (
            "{ cookie = \"s\", max_age = \"0s\" }",
            "max_age",
            "must be greater than 0",
        ),
        (
            "{ cookie = \"s\", same_site = \"loose\" }",
            "same_site",
            "unknown value \"loose\"",
        ),
        (
            "{ cookie = \"s\", same_site = \"none\", secure = false }",
            "secure",
            "`same_site = \"none\"` needs `Secure`",
        ),
        ("{ path = \"/\" }", "cookie", "required key is missing"),
    ] {
        assert_one(&with(table), &format!("pools[0].sticky.{key}"), error);
    }
}

/// A rule may match exact paths, a path pattern and the client's network.
#[test]
fn rules_match_paths_patterns_and_sources() {
    let cfg = load(&l7(
        "[[listeners.routes.http]]\nname = \"login\"\npool = \"p\"\n\
         match = { path = [\"/login\", \"/logout\"], source = [\"10.0.0.0/8\", \"192.0.2.7\"] }\n\
         [[listeners.routes.http]]\nname = \"php\"\npool = \"p\"\n\
         match = { path_regex = \"\\\\.php$\", query = { \"v\" = \"2\" } }\n\
         [[listeners.routes.http]]\nname = \"rest\"\npool = \"p\"\n",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let RouteMode::L7(http) = &cfg.listeners[0].routes[0].mode else {
        panic!("an l7 route");
    };
    let login = &http.rules[0].matcher;
    assert_eq!(login.path, ["/login", "/logout"]);
    assert_eq!(
        login.source,
        [
            "10.0.0.0/8".parse::<ipnet::IpNet>().expect("net"),
            "192.0.2.7/32".parse().expect("net")
        ]
    );
    let php = &http.rules[1].matcher;
    assert_eq!(
        php.path_regex.as_ref().map(|p| p.0.as_str()),
        Some("\\.php$")
    );
    assert_eq!(php.query, [("v".to_owned(), "2".to_owned())]);
    assert!(!login.is_catch_all() && !php.is_catch_all());
    assert!(http.rules[2].matcher.is_catch_all());
}
