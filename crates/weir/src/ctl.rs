//! The operator commands: clients of the gRPC control API of a running weir
//! (`weir status`, `weir backends`, `weir backend ...`, `weir reload`,
//! `weir watch`, `weir firewall ...`, `weir listener ...`). Human tables by default, `--output json` for scripts.
//!
//! Exit codes: 0 done; 1 the daemon refused or the action failed (unknown
//! pool or backend, bad value, a reload that changed nothing); 2 bad usage;
//! 3 the daemon cannot be reached; 4 the token is missing or wrong.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use weir_admin::pb::v1 as pb;
use weir_admin::pb::v1::admin_client::AdminClient;

/// Connect timeout towards the daemon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one call; a reload waits for the first probes of new backends.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A daemon that does not answer a keep-alive ping within this is gone.
const PING_ACK_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the daemon is and how to talk to it.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// Address of the daemon's gRPC admin endpoint (`[admin] grpc`). Several,
    /// separated by commas (or a name that resolves to several addresses),
    /// address a fleet: the command runs on every instance and reports per
    /// instance.
    #[arg(
        long,
        global = true,
        env = "WEIR_ADMIN",
        default_value = "127.0.0.1:9901",
        value_delimiter = ','
    )]
    admin: Vec<String>,
    /// Interval of HTTP/2 keep-alive pings to the daemon, which keep a
    /// `watch` open across the daemon's `admin.idle_timeout`.
    #[arg(
        long,
        global = true,
        env = "WEIR_KEEPALIVE",
        default_value = "30s",
        value_parser = parse_interval
    )]
    keepalive: Duration,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts (one object; `watch` prints one per line).
    Json,
}

/// `weir backend ...`
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum BackendCommand {
    /// Let the backend take traffic again (when healthy).
    Enable { pool: String, backend: String },
    /// No new connections; open ones continue until the pool's drain_timeout.
    Drain { pool: String, backend: String },
    /// No traffic and no probes; open connections close after drain_timeout.
    Disable { pool: String, backend: String },
    /// Override the configured weight, or restore it with --clear.
    Weight {
        pool: String,
        backend: String,
        /// The new weight (0..=1000).
        #[arg(required_unless_present = "clear", conflicts_with = "clear")]
        weight: Option<u32>,
        /// Back to the configured weight.
        #[arg(long)]
        clear: bool,
    },
    /// The backend's transitions (health, admin state, weight) with their causes.
    History { pool: String, backend: String },
    /// Add a backend to POOL without a reload: saved to the state file first,
    /// applied again after a restart, serving once its first probe passes.
    Add {
        pool: String,
        /// IP:port.
        address: String,
        /// Default: the address.
        #[arg(long)]
        name: Option<String>,
        /// 0..=1000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Lower tiers serve first.
        #[arg(long, default_value_t = 0)]
        tier: u32,
    },
    /// Remove a backend added with `add`: it drains for the pool's
    /// drain_timeout, then leaves (not for backends of the file or of DNS).
    Remove { pool: String, backend: String },
}

/// `weir firewall ...`
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum FirewallCommand {
    /// The runtime rules, oldest first.
    List,
    /// Refuse an address or network on every listener.
    Deny(RuleArgs),
    /// Let an address or network past the configured deny and allow lists.
    Allow(RuleArgs),
    /// Remove the runtime rule for an address or network.
    Remove {
        /// The address or CIDR of the rule.
        network: String,
    },
}

#[derive(Debug, Clone, Args)]
pub(crate) struct RuleArgs {
    /// An address ("192.0.2.7") or a CIDR ("10.0.0.0/8", "2001:db8::/48").
    network: String,
    /// End the rule by itself after this long ("10m", "1h", "7d").
    #[arg(long = "for", value_parser = parse_lasts)]
    lasts: Option<Duration>,
    /// Why, for the next operator (shown by `list` and `watch`).
    #[arg(long, default_value = "")]
    reason: String,
}

/// `weir listener ...`
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum ListenerCommand {
    /// Set max_connections until a restart, or restore the configured value
    /// with --clear. Connections open beyond a lowered limit stay open.
    MaxConnections {
        listener: String,
        /// The new limit (at least 1).
        #[arg(
            required_unless_present = "clear",
            conflicts_with = "clear",
            value_parser = clap::value_parser!(u32).range(1..)
        )]
        max: Option<u32>,
        /// Back to the configured value.
        #[arg(long)]
        clear: bool,
    },
}

/// `weir explain ...`
#[derive(Debug, Clone, Args)]
pub(crate) struct ExplainArgs {
    /// The listener the client connects to.
    #[arg(long)]
    listener: String,
    /// The client's address: IP, or IP:port (maglev by source_addr).
    #[arg(long)]
    client: String,
    /// The server name its TLS ClientHello would carry.
    #[arg(long)]
    sni: Option<String>,
    /// An ALPN protocol its ClientHello would offer.
    #[arg(long)]
    alpn: Option<String>,
    /// For an l7 route: a request's path (with its query), to see which
    /// rule takes it, why the rules before it do not, and its pool.
    #[arg(long)]
    path: Option<String>,
    /// The request's method (with --path).
    #[arg(long, default_value = "GET", requires = "path")]
    method: String,
    /// The request's host (`Host` or `:authority`; with --path).
    #[arg(long, requires = "path")]
    host: Option<String>,
    /// A request header, `Name: value` (with --path; repeat for more).
    #[arg(long = "header", short = 'H', requires = "path")]
    headers: Vec<String>,
}

/// Which live connections (`weir connections`): every given condition
/// must hold.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectionFilter {
    /// Only this listener's.
    #[arg(long)]
    listener: Option<String>,
    /// l4 connections to this pool, and l7 ones whose route sends to it.
    #[arg(long)]
    pool: Option<String>,
    /// l4 connections to this backend.
    #[arg(long)]
    backend: Option<String>,
    /// Clients in this IP or CIDR (e.g. 10.1.0.0/16).
    #[arg(long)]
    client: Option<String>,
    /// One connection, by the ID a listing shows.
    #[arg(long)]
    id: Option<u64>,
}

impl ConnectionFilter {
    /// The conditions written before `close` and after it, together: all of
    /// them hold for what is closed, as for what is listed. One given on
    /// both sides with two values is refused rather than one of them
    /// dropped (which would close more than was asked).
    pub(crate) fn and(self, before: ConnectionFilter) -> Result<ConnectionFilter, String> {
        fn one<T: PartialEq + std::fmt::Display>(
            flag: &str,
            a: Option<T>,
            b: Option<T>,
        ) -> Result<Option<T>, String> {
            match (a, b) {
                (Some(a), Some(b)) if a != b => Err(format!(
                    "--{flag} is given twice, as {b} and as {a}: give it once"
                )),
                (a, b) => Ok(a.or(b)),
            }
        }
        Ok(ConnectionFilter {
            listener: one("listener", self.listener, before.listener)?,
            pool: one("pool", self.pool, before.pool)?,
            backend: one("backend", self.backend, before.backend)?,
            client: one("client", self.client, before.client)?,
            id: one("id", self.id, before.id)?,
        })
    }

    fn message(self, limit: u32) -> pb::ConnectionFilter {
        pb::ConnectionFilter {
            listener: self.listener.unwrap_or_default(),
            pool: self.pool.unwrap_or_default(),
            backend: self.backend.unwrap_or_default(),
            client: self.client.unwrap_or_default(),
            id: self.id,
            limit,
        }
    }
}

/// `weir connections ...`
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum ConnectionsCommand {
    /// Close the connections matched (at least one condition); the access
    /// log says `operator`. Needs WEIR_TOKEN when the daemon has
    /// admin.token_file.
    Close {
        #[command(flatten)]
        filter: ConnectionFilter,
    },
}

/// `weir pool ...`
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum PoolCommand {
    /// The pool's changes of its active tier, with their causes.
    History { pool: String },
}

/// One operator command.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    Status,
    Pools,
    Pool(PoolCommand),
    Backends(Option<String>),
    Backend(BackendCommand),
    Reload,
    Watch(Option<String>),
    Firewall(FirewallCommand),
    Listener(ListenerCommand),
    Explain(ExplainArgs),
    /// List (with at most this many shown; 0: all) or close.
    Connections {
        filter: ConnectionFilter,
        limit: u32,
        command: Option<ConnectionsCommand>,
    },
}

/// Runs `request` against the daemon (every daemon, with several
/// `--admin`) and prints the result.
pub(crate) fn run(target: &Target, request: Request) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start: {e}"), 1),
    };
    runtime.block_on(async {
        let instances = match instances(&target.admin) {
            Ok(list) => list,
            Err(message) => return fail(&message, 2),
        };
        if let [one] = &instances[..] {
            let one = match one {
                Instance::At(a) => *a,
                Instance::Unresolved { why, .. } => return fail(why, 3),
            };
            return match once(one, target, request).await {
                Ok(text) => {
                    out(&text);
                    ExitCode::SUCCESS
                }
                Err(Failure::Connect(message)) => fail(&message, 3),
                Err(Failure::Call(status)) => fail_status(one, &status),
            };
        }
        if matches!(request, Request::Watch(_)) {
            return fail("watch follows one instance: give a single --admin", 2);
        }
        fleet(&instances, target, &request).await
    })
}

/// Why a command failed on one instance.
enum Failure {
    Connect(String),
    Call(tonic::Status),
}

async fn once(addr: SocketAddr, target: &Target, request: Request) -> Result<String, Failure> {
    let mut client = connect(addr, target.keepalive)
        .await
        .map_err(Failure::Connect)?;
    call(&mut client, addr, target.output == Output::Json, request)
        .await
        .map_err(Failure::Call)
}

/// One instance `--admin` names: an address, or a name that did not
/// resolve (unreachable: the others still act).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Instance {
    At(SocketAddr),
    Unresolved { entry: String, why: String },
}

/// The instances `--admin` names: each entry an `IP:port`, or a
/// `name:port` standing for every address the name resolves to, except a
/// name that resolves to `::1` and `127.0.0.1` (`localhost` on most
/// systems), which is this machine's one weir, at the first of the two that
/// takes a connection. An entry without a port is a usage error; a name
/// that does not resolve is an instance that cannot be reached.
fn instances(list: &[String]) -> Result<Vec<Instance>, String> {
    use std::net::ToSocketAddrs as _;
    let mut out = Vec::new();
    for entry in list.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let mut found: Vec<SocketAddr> = match entry.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            Err(_) => {
                // A name, then a port (an IPv6 address without brackets,
                // `::1`, is not a name with port 1).
                let named = entry
                    .rsplit_once(':')
                    .is_some_and(|(name, port)| !name.contains(':') && port.parse::<u16>().is_ok());
                if !named {
                    return Err(format!("--admin {entry:?}: not IP:port nor name:port"));
                }
                match entry.to_socket_addrs() {
                    Ok(found) => found.collect(),
                    Err(e) => {
                        let unresolved = Instance::Unresolved {
                            entry: entry.to_owned(),
                            why: format!(
                                "cannot reach weir at {entry}: the name does not resolve ({e})"
                            ),
                        };
                        if !out.contains(&unresolved) {
                            out.push(unresolved);
                        }
                        continue;
                    }
                }
            }
        };
        let localhost = |a: &SocketAddr| {
            a.ip() == std::net::Ipv6Addr::LOCALHOST || a.ip() == std::net::Ipv4Addr::LOCALHOST
        };
        if found.len() == 2 && found.iter().all(localhost) && found[0].ip() != found[1].ip() {
            let answering = found.iter().copied().find(|a| {
                std::net::TcpStream::connect_timeout(a, std::time::Duration::from_secs(1)).is_ok()
            });
            found = vec![answering.unwrap_or(found[0])];
        }
        for a in found.into_iter().map(Instance::At) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    if out.is_empty() {
        return Err("--admin names no instance".to_owned());
    }
    Ok(out)
}

/// Runs `request` on every instance at once; prints each one's answer under
/// its address (or, with `-o json`, one object listing them). Fails (with
/// the worst exit code) when any instance did, after reporting them all.
async fn fleet(instances: &[Instance], target: &Target, request: &Request) -> ExitCode {
    // All at once: an unreachable instance costs one connect timeout, not
    // one per instance.
    let mut calls = tokio::task::JoinSet::new();
    for (i, instance) in instances.iter().enumerate() {
        let (keepalive, json, request) = (
            target.keepalive,
            target.output == Output::Json,
            request.clone(),
        );
        let instance = instance.clone();
        calls.spawn(async move {
            let (label, answer) = match instance {
                Instance::At(addr) => (
                    addr.to_string(),
                    match connect(addr, keepalive).await {
                        Ok(mut client) => call(&mut client, addr, json, request)
                            .await
                            .map_err(|s| (addr, Failure::Call(s))),
                        Err(m) => Err((addr, Failure::Connect(m))),
                    },
                ),
                Instance::Unresolved { entry, why } => {
                    let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
                    (entry, Err((nowhere, Failure::Connect(why))))
                }
            };
            (i, label, answer)
        });
    }
    let mut results = calls.join_all().await;
    results.sort_by_key(|(i, _, _)| *i);
    let results = results
        .into_iter()
        .map(|(_, label, answer)| (label, answer));
    let mut worst = 0u8;
    let mut failed = 0usize;
    let mut report = Vec::new();
    let mut text = String::new();
    for (addr, result) in results {
        match result {
            Ok(answer) => {
                if target.output == Output::Json {
                    let value: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
                    report.push(json!({ "admin": addr.to_string(), "ok": true, "result": value }));
                } else {
                    text.push_str(&format!("== {addr} ==\n{answer}"));
                    if !answer.ends_with('\n') {
                        text.push('\n');
                    }
                }
            }
            Err((at, failure)) => {
                let (code, message) = match failure {
                    Failure::Connect(m) => (3, m),
                    Failure::Call(status) => status_failure(at, &status),
                };
                worst = worst.max(code);
                failed += 1;
                if target.output == Output::Json {
                    report.push(json!({ "admin": addr.to_string(), "ok": false, "code": code, "error": message }));
                } else {
                    text.push_str(&format!("== {addr} ==\nFAILED: {message}\n"));
                }
            }
        }
    }
    if target.output == Output::Json {
        text = format!("{}\n", pretty(&json!({ "instances": report })));
    }
    out(&text);
    if worst == 0 {
        ExitCode::SUCCESS
    } else {
        fail(
            &format!(
                "the command failed on {failed} of {} instances",
                instances.len()
            ),
            worst,
        )
    }
}

/// How long a firewall rule lasts: a duration such as `10m` or `1h`.
fn parse_lasts(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. \"1h\")"))?;
    if d < Duration::from_secs(1) {
        return Err("at least 1s".to_owned());
    }
    Ok(d)
}

/// A keep-alive interval: a duration such as `30s` or `500ms`, at least 100 ms.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. \"30s\")"))?;
    if d < Duration::from_millis(100) {
        return Err("at least 100ms".to_owned());
    }
    Ok(d)
}

async fn connect(addr: SocketAddr, keepalive: Duration) -> Result<AdminClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad admin address {addr}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        // Pings move bytes while a watch waits for events, so the daemon's
        // idle timeout does not cut it; a dead daemon is noticed as well.
        .http2_keep_alive_interval(keepalive)
        .keep_alive_timeout(PING_ACK_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await.map_err(|e| {
        format!(
            "cannot reach weir at {addr}: {}\n(is it running with `[admin] grpc = \"{addr}\"`? \
             point at another with --admin or WEIR_ADMIN)",
            source_text(&e)
        )
    })?;
    // A listing of 100,000 connections is about 8 MiB, beyond tonic's
    // default 4 MiB.
    Ok(AdminClient::new(channel).max_decoding_message_size(MAX_ANSWER))
}

/// The largest answer the CLI takes.
const MAX_ANSWER: usize = 256 << 20;

/// A request with the deadline and, when WEIR_TOKEN is set, the token.
fn request<T>(message: T, deadline: bool) -> Result<tonic::Request<T>, tonic::Status> {
    let mut r = tonic::Request::new(message);
    if deadline {
        r.set_timeout(CALL_TIMEOUT);
    }
    if let Ok(token) = std::env::var("WEIR_TOKEN") {
        let value = MetadataValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
            tonic::Status::invalid_argument("WEIR_TOKEN holds characters a header cannot carry")
        })?;
        r.metadata_mut().insert("authorization", value);
    }
    Ok(r)
}

async fn call(
    c: &mut AdminClient<Channel>,
    addr: SocketAddr,
    json: bool,
    req: Request,
) -> Result<String, tonic::Status> {
    match req {
        Request::Status => {
            let s = c
                .status(request(pb::StatusRequest {}, true)?)
                .await?
                .into_inner();
            Ok(show(json, &s, status_json, status_table))
        }
        Request::Pools => {
            let r = c
                .list_pools(request(pb::ListPoolsRequest {}, true)?)
                .await?
                .into_inner();
            Ok(if json {
                pretty(&Value::Array(r.pools.iter().map(pool_json).collect()))
            } else {
                pools_table(&r.pools)
            })
        }
        Request::Pool(PoolCommand::History { pool }) => {
            let r = c
                .pool_history(request(pb::PoolHistoryRequest { pool }, true)?)
                .await?
                .into_inner();
            Ok(if json {
                pretty(&Value::Array(r.changes.iter().map(tier_json).collect()))
            } else {
                tier_history_table(&r.changes)
            })
        }
        Request::Backends(pool) => {
            let pool = pool.unwrap_or_default();
            let r = c
                .list_backends(request(pb::ListBackendsRequest { pool }, true)?)
                .await?
                .into_inner();
            Ok(if json {
                pretty(&Value::Array(r.backends.iter().map(backend_json).collect()))
            } else {
                backends_table(&r.backends)
            })
        }
        Request::Backend(BackendCommand::History { pool, backend }) => {
            let r = c
                .backend_history(request(pb::BackendHistoryRequest { pool, backend }, true)?)
                .await?
                .into_inner();
            Ok(if json {
                pretty(&Value::Array(
                    r.transitions.iter().map(transition_json).collect(),
                ))
            } else {
                history_table(&r.transitions)
            })
        }
        Request::Backend(BackendCommand::Add {
            pool,
            address,
            name,
            weight,
            tier,
        }) => {
            let b = c
                .add_backend(request(
                    pb::AddBackendRequest {
                        pool,
                        address,
                        name: name.unwrap_or_default(),
                        weight: Some(weight),
                        tier,
                    },
                    true,
                )?)
                .await?
                .into_inner();
            Ok(one_backend(json, &b))
        }
        Request::Backend(BackendCommand::Remove { pool, backend }) => {
            let b = c
                .remove_backend(request(pb::RemoveBackendRequest { pool, backend }, true)?)
                .await?
                .into_inner();
            Ok(one_backend(json, &b))
        }
        Request::Backend(BackendCommand::Weight {
            pool,
            backend,
            weight,
            clear,
        }) => {
            let weight = if clear { None } else { weight };
            let b = c
                .set_backend_weight(request(
                    pb::SetBackendWeightRequest {
                        pool,
                        backend,
                        weight,
                    },
                    true,
                )?)
                .await?
                .into_inner();
            Ok(one_backend(json, &b))
        }
        Request::Backend(cmd) => {
            let (pool, backend, state) = match cmd {
                BackendCommand::Enable { pool, backend } => {
                    (pool, backend, pb::AdminState::Enabled)
                }
                BackendCommand::Drain { pool, backend } => (pool, backend, pb::AdminState::Drain),
                BackendCommand::Disable { pool, backend } => {
                    (pool, backend, pb::AdminState::Disabled)
                }
                BackendCommand::Weight { .. }
                | BackendCommand::History { .. }
                | BackendCommand::Add { .. }
                | BackendCommand::Remove { .. } => {
                    return Err(tonic::Status::internal("handled above"));
                }
            };
            let b = c
                .set_backend_admin(request(
                    pb::SetBackendAdminRequest {
                        pool,
                        backend,
                        state: state.into(),
                    },
                    true,
                )?)
                .await?
                .into_inner();
            Ok(one_backend(json, &b))
        }
        Request::Firewall(FirewallCommand::List) => {
            let r = c
                .list_firewall_rules(request(pb::ListFirewallRulesRequest {}, true)?)
                .await?
                .into_inner();
            Ok(if json {
                pretty(&Value::Array(r.rules.iter().map(rule_json).collect()))
            } else {
                rules_table(&r.rules)
            })
        }
        Request::Firewall(FirewallCommand::Remove { network }) => {
            let rule = c
                .remove_firewall_rule(request(pb::RemoveFirewallRuleRequest { network }, true)?)
                .await?
                .into_inner();
            Ok(show(json, &rule, rule_json, |r| {
                format!("removed: {}", rules_table(std::slice::from_ref(r)))
            }))
        }
        Request::Firewall(cmd) => {
            let (action, args) = match cmd {
                FirewallCommand::Deny(a) => (pb::FirewallAction::Deny, a),
                FirewallCommand::Allow(a) => (pb::FirewallAction::Allow, a),
                FirewallCommand::List | FirewallCommand::Remove { .. } => {
                    return Err(tonic::Status::internal("handled above"));
                }
            };
            let duration_ms = args
                .lasts
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let rule = c
                .add_firewall_rule(request(
                    pb::AddFirewallRuleRequest {
                        network: args.network,
                        action: action.into(),
                        duration_ms,
                        reason: args.reason,
                    },
                    true,
                )?)
                .await?
                .into_inner();
            Ok(show(json, &rule, rule_json, |r| {
                rules_table(std::slice::from_ref(r))
            }))
        }
        Request::Listener(ListenerCommand::MaxConnections {
            listener,
            max,
            clear,
        }) => {
            let l = c
                .set_listener_max_connections(request(
                    pb::SetListenerMaxConnectionsRequest {
                        listener,
                        max_connections: if clear { None } else { max },
                    },
                    true,
                )?)
                .await?
                .into_inner();
            Ok(show(json, &l, listener_json, |l| {
                format!(
                    "listener {}: max_connections {} (configured {}), {} open",
                    l.name, l.max_connections, l.configured_max_connections, l.active_connections
                )
            }))
        }
        Request::Explain(a) => {
            let r = c
                .explain(request(
                    pb::ExplainRequest {
                        listener: a.listener,
                        client: a.client,
                        sni: a.sni.unwrap_or_default(),
                        alpn: a.alpn.unwrap_or_default(),
                        path: a.path.unwrap_or_default(),
                        method: a.method,
                        host: a.host.unwrap_or_default(),
                        headers: a.headers,
                    },
                    true,
                )?)
                .await?
                .into_inner();
            Ok(show(json, &r, explain_json, explain_text))
        }
        Request::Connections {
            filter,
            limit,
            command: None,
        } => {
            let r = c
                .list_connections(request(filter.message(limit), true)?)
                .await?
                .into_inner();
            Ok(show(json, &r, connections_json, connections_text))
        }
        Request::Connections {
            command: Some(ConnectionsCommand::Close { filter }),
            ..
        } => {
            let r = c
                .close_connections(request(filter.message(0), true)?)
                .await?
                .into_inner();
            Ok(show(
                json,
                &r,
                |r| json!({"closed": r.closed}),
                |r| format!("closed {} connection(s)\n", r.closed),
            ))
        }
        Request::Reload => {
            let r = c
                .reload(request(pb::ReloadRequest {}, true)?)
                .await?
                .into_inner();
            Ok(show(json, &r, reload_json, reload_text))
        }
        Request::Watch(pool) => {
            let what = pool
                .as_deref()
                .map_or_else(|| "every pool".to_owned(), |p| format!("pool {p}"));
            let pool = pool.unwrap_or_default();
            let mut stream = c
                .watch(request(pb::WatchRequest { pool }, false)?)
                .await?
                .into_inner();
            // On stderr, so that stdout stays one event per line.
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "watching {what} at {}: backend transitions, tier changes and reloads \
                     appear as they happen (Ctrl-C stops); waiting for events...",
                    addr
                );
            }
            while let Some(event) = stream.message().await? {
                let line = if json {
                    event_json(&event).to_string()
                } else {
                    event_text(&event)
                };
                // Whatever read the events is gone (`weir watch | grep -m1`):
                // done, rather than follow for no one.
                if !written(&format!("{line}\n")) {
                    return Ok(String::new());
                }
            }
            // weir ends a stream only with a status; one that just ends went
            // away with its daemon.
            Err(tonic::Status::unavailable(
                "the event stream ended: weir stopped or handed over",
            ))
        }
    }
}

fn fail_status(addr: SocketAddr, s: &tonic::Status) -> ExitCode {
    let (code, message) = status_failure(addr, s);
    fail(&message, code)
}

/// The exit code and message of a failed call.
fn status_failure(addr: SocketAddr, s: &tonic::Status) -> (u8, String) {
    let (code, hint) = match s.code() {
        Code::Unauthenticated => (
            4,
            "\n(set WEIR_TOKEN to the token in the daemon's admin.token_file)",
        ),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => (3, ""),
        _ => (1, ""),
    };
    let message = if code == 3 && s.message().is_empty() {
        format!("cannot reach weir at {addr}: {s}")
    } else if matches!(s.code(), Code::Cancelled | Code::DeadlineExceeded)
        && s.message() == "Timeout expired"
    {
        // The client's own deadline: the daemon may still be at it.
        format!(
            "no answer from weir at {addr} within {} s; a change it was making goes on to \
             its end (see `weir status`)",
            CALL_TIMEOUT.as_secs()
        )
    } else {
        s.message().to_owned()
    };
    (code, format!("{message}{hint}"))
}

fn fail(message: &str, code: u8) -> ExitCode {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("weir: {message}");
    }
    ExitCode::from(code)
}

#[allow(clippy::print_stdout)] // these commands report to the terminal by design
fn out(text: &str) {
    written(text);
}

/// Writes `text` to stdout: false when it could not be (a closed pipe).
fn written(text: &str) -> bool {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).is_ok() && stdout.flush().is_ok()
}

/// The innermost cause, which says what actually went wrong (refused, ...).
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// The answer as JSON or as text for people.
fn show<T>(
    json: bool,
    value: &T,
    as_json: fn(&T) -> Value,
    as_text: impl Fn(&T) -> String,
) -> String {
    if json {
        pretty(&as_json(value))
    } else {
        as_text(value)
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// RFC 3339 UTC with milliseconds; "-" for no time.
fn time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) if ms > 0 => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        _ => "-".to_owned(),
    }
}

fn ago(ms: i64) -> String {
    let Ok(then) = u64::try_from(ms) else {
        return "-".to_owned();
    };
    let then = UNIX_EPOCH + Duration::from_millis(then);
    match SystemTime::now().duration_since(then) {
        Ok(d) => format!("{}s ago", d.as_secs()),
        Err(_) => "just now".to_owned(),
    }
}

fn admin_name(state: i32) -> &'static str {
    match pb::AdminState::try_from(state) {
        Ok(pb::AdminState::Enabled) => "enabled",
        Ok(pb::AdminState::Drain) => "drain",
        Ok(pb::AdminState::Disabled) => "disabled",
        _ => "unknown",
    }
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn status_table(s: &pb::StatusResponse) -> String {
    let mut out = String::new();
    let by_state = ["up", "standby", "down", "unknown", "drain", "disabled"]
        .iter()
        .filter_map(|k| s.backends_by_state.get(*k).map(|n| format!("{n} {k}")))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(out, "weir {} ({})", s.version, s.revision);
    let _ = writeln!(
        out,
        "started       {} ({})",
        time(s.started_at_ms),
        ago(s.started_at_ms)
    );
    let _ = writeln!(
        out,
        "ready         {}",
        if s.ready { "yes" } else { "no (shutting down)" }
    );
    let _ = writeln!(
        out,
        "config        {} (generation {})",
        or_dash(&s.config_path),
        s.config_generation
    );
    let reload = match &s.last_reload {
        None => "none".to_owned(),
        Some(r) if r.ok => format!("ok at {}", time(r.at_ms)),
        Some(r) => format!("FAILED at {}: {}", time(r.at_ms), r.error),
    };
    let _ = writeln!(out, "last reload   {reload}");
    let _ = writeln!(out, "state file    {}", or_dash(&s.state_path));
    let _ = writeln!(out, "listeners     {}", s.listeners);
    let _ = writeln!(out, "pools         {}", s.pools);
    let _ = writeln!(out, "backends      {} ({by_state})", s.backends);
    let _ = writeln!(out, "connections   {}", s.active_connections);
    if !s.orphaned_state.is_empty() {
        let _ = writeln!(
            out,
            "\nsaved state for backends not in the config (kept, not applied):"
        );
        for o in &s.orphaned_state {
            let weight = o
                .weight_override
                .map_or_else(|| "-".to_owned(), |w| w.to_string());
            let _ = writeln!(
                out,
                "  {}/{}  admin {}  weight {weight}",
                o.pool,
                o.backend,
                or_dash(&o.admin)
            );
        }
    }
    out
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// The answer of a command that changed one backend.
fn one_backend(json: bool, b: &pb::Backend) -> String {
    show(json, b, backend_json, |b| {
        backends_table(std::slice::from_ref(b))
    })
}

fn backends_table(backends: &[pb::Backend]) -> String {
    let rows: Vec<Vec<String>> = backends
        .iter()
        .map(|b| {
            let weight = match b.weight_override {
                Some(w) => format!("{w} (set; {} configured)", b.weight),
                None => b.weight.to_string(),
            };
            let probe = b.last_probe.as_ref().map_or_else(
                || "-".to_owned(),
                |p| format!("{} {}", if p.ok { "ok" } else { "failed" }, p.reason),
            );
            let last = b.last_transitions.last().map_or_else(
                || "-".to_owned(),
                |t| {
                    format!(
                        "{} {}->{} ({}, {})",
                        t.kind,
                        t.from,
                        t.to,
                        t.cause,
                        ago(t.at_ms)
                    )
                },
            );
            let active = b.active_connections.saturating_add(b.active_requests);
            // Where it comes from, unless the config file.
            let name = match b.origin.as_str() {
                "" | "config" => b.name.clone(),
                origin => format!("{} ({origin})", b.name),
            };
            vec![
                b.pool.clone(),
                name,
                b.address.clone(),
                b.tier.to_string(),
                b.state.clone(),
                if b.serving { "yes" } else { "no" }.to_owned(),
                weight,
                b.effective_weight.to_string(),
                // Against the limit now, when it has one.
                // Connections (L4 routes) and requests (l7 routes), as
                // its limit counts them.
                match (b.connection_limit, b.queue_depth) {
                    (0, _) => active.to_string(),
                    (limit, 0) => format!("{active}/{limit}"),
                    (limit, q) => format!("{active}/{limit} +{q} queued"),
                },
                b.connections_total
                    .saturating_add(b.responses_total)
                    .to_string(),
                probe,
                last,
            ]
        })
        .collect();
    table(
        &[
            "POOL",
            "BACKEND",
            "ADDRESS",
            "TIER",
            "STATE",
            "SERVING",
            "WEIGHT",
            "EFFECTIVE",
            "ACTIVE",
            "TOTAL",
            "LAST PROBE",
            "LAST CHANGE",
        ],
        &rows,
    )
}

fn action_name(action: i32) -> &'static str {
    match pb::FirewallAction::try_from(action) {
        Ok(pb::FirewallAction::Deny) => "deny",
        Ok(pb::FirewallAction::Allow) => "allow",
        _ => "unknown",
    }
}

fn rules_table(rules: &[pb::FirewallRule]) -> String {
    if rules.is_empty() {
        return "no firewall rules added at runtime\n".to_owned();
    }
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            vec![
                r.network.clone(),
                action_name(r.action).to_owned(),
                r.until_ms.map_or_else(|| "-".to_owned(), time),
                time(r.added_ms),
                if r.reason.is_empty() {
                    "-".to_owned()
                } else {
                    r.reason.clone()
                },
            ]
        })
        .collect();
    table(&["NETWORK", "ACTION", "UNTIL", "ADDED", "REASON"], &rows)
}

fn rule_json(r: &pb::FirewallRule) -> Value {
    json!({
        "network": r.network,
        "action": action_name(r.action),
        "until": r.until_ms.map(time),
        "added": time(r.added_ms),
        "reason": r.reason,
    })
}

fn listener_json(l: &pb::Listener) -> Value {
    json!({
        "name": l.name,
        "bind": l.bind,
        "max_connections": l.max_connections,
        "configured_max_connections": l.configured_max_connections,
        "active_connections": l.active_connections,
        "connections_total": l.connections_total,
        "rejected": l.rejected,
        "firewall_blocked": l.firewall_blocked,
        "routes": l.routes,
    })
}

fn history_table(ts: &[pb::Transition]) -> String {
    if ts.is_empty() {
        return "no transitions yet\n".to_owned();
    }
    let rows: Vec<Vec<String>> = ts
        .iter()
        .map(|t| {
            vec![
                time(t.at_ms),
                t.kind.clone(),
                t.from.clone(),
                t.to.clone(),
                t.cause.clone(),
            ]
        })
        .collect();
    table(&["TIME", "KIND", "FROM", "TO", "CAUSE"], &rows)
}

fn tier_text(t: Option<u32>) -> String {
    t.map_or_else(|| "none".to_owned(), |t| t.to_string())
}

fn pools_table(pools: &[pb::Pool]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.balance.clone(),
                p.health_check.clone(),
                tier_text(p.active_tier),
                format!("{}/{}", p.serving, p.backends),
                if p.max_queue > 0 {
                    format!("{}/{}", p.queue_depth, p.max_queue)
                } else {
                    "-".to_owned()
                },
                p.last_tier_change.as_ref().map_or_else(
                    || "-".to_owned(),
                    |t| {
                        format!(
                            "{} {} -> {} ({})",
                            ago(t.at_ms),
                            tier_text(t.from),
                            tier_text(t.to),
                            t.cause
                        )
                    },
                ),
            ]
        })
        .collect();
    table(
        &[
            "POOL",
            "BALANCE",
            "CHECK",
            "TIER",
            "SERVING",
            "QUEUED",
            "LAST TIER CHANGE",
        ],
        &rows,
    )
}

fn tier_history_table(changes: &[pb::TierChange]) -> String {
    if changes.is_empty() {
        return "no tier changes yet\n".to_owned();
    }
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|t| {
            vec![
                time(t.at_ms),
                tier_text(t.from),
                tier_text(t.to),
                t.cause.clone(),
            ]
        })
        .collect();
    table(&["TIME", "FROM", "TO", "CAUSE"], &rows)
}

fn reload_text(r: &pb::ReloadResponse) -> String {
    let mut out = format!("reloaded: generation {}\n", r.generation);
    for (what, items) in [
        ("added", &r.added),
        ("removed", &r.removed),
        ("changed", &r.changed),
    ] {
        for i in items {
            let _ = writeln!(out, "  {what:<8} {i}");
        }
    }
    if r.added.is_empty() && r.removed.is_empty() && r.changed.is_empty() {
        // Certificates, keys and the other files were read again all the
        // same (a renewed certificate under the same name is the commonest
        // reload), and keys outside listeners and pools may have changed.
        out.push_str("  no listener, pool or backend changed (files were read again)\n");
    }
    for s in &r.need_restart {
        let _ = writeln!(
            out,
            "  note: changes to [{s}] take effect at the next start"
        );
    }
    for s in &r.shadowed {
        let _ = writeln!(out, "  runtime backend not applied: {s}");
    }
    out
}

fn event_text(e: &pb::Event) -> String {
    use pb::event::Kind;
    let at = time(e.at_ms);
    let tier = tier_text;
    match &e.kind {
        Some(Kind::Backend(b)) => match &b.transition {
            Some(t) => format!(
                "{at}  backend {}/{}  {} {} -> {}  ({})",
                b.pool, b.backend, t.kind, t.from, t.to, t.cause
            ),
            None => format!("{at}  backend {}/{}", b.pool, b.backend),
        },
        Some(Kind::Tier(t)) => format!(
            "{at}  pool {}  active tier {} -> {}  ({})",
            t.pool,
            tier(t.from),
            tier(t.to),
            t.cause
        ),
        Some(Kind::Reload(r)) if r.ok => format!("{at}  reload ok, generation {}", r.generation),
        Some(Kind::Reload(r)) => format!(
            "{at}  reload FAILED (generation {} still runs): {}",
            r.generation, r.error
        ),
        Some(Kind::Firewall(f)) => match &f.rule {
            Some(r) => format!(
                "{at}  firewall {} {} {}{}{}",
                action_name(r.action),
                r.network,
                f.change,
                r.until_ms
                    .map_or_else(String::new, |u| format!(" (until {})", time(u))),
                if r.reason.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", r.reason)
                }
            ),
            None => format!("{at}  firewall {}", f.change),
        },
        None => format!("{at}  (an event this weir cannot show)"),
    }
}

fn status_json(s: &pb::StatusResponse) -> Value {
    json!({
        "version": s.version,
        "revision": s.revision,
        "started_at": time(s.started_at_ms),
        "ready": s.ready,
        "config_path": s.config_path,
        "config_generation": s.config_generation,
        "last_reload": s.last_reload.as_ref().map(|r| json!({
            "at": time(r.at_ms), "ok": r.ok, "error": r.error,
        })),
        "state_path": s.state_path,
        "listeners": s.listeners,
        "pools": s.pools,
        "backends": s.backends,
        "backends_by_state": s.backends_by_state,
        "active_connections": s.active_connections,
        "orphaned_state": s.orphaned_state.iter().map(|o| json!({
            "pool": o.pool, "backend": o.backend, "admin": o.admin,
            "weight_override": o.weight_override,
        })).collect::<Vec<_>>(),
    })
}

fn tier_json(t: &pb::TierChange) -> Value {
    json!({"at": time(t.at_ms), "from": t.from, "to": t.to, "cause": t.cause})
}

fn pool_json(p: &pb::Pool) -> Value {
    json!({
        "name": p.name,
        "balance": p.balance,
        "health_check": p.health_check,
        "active_tier": p.active_tier,
        "backends": p.backends,
        "serving": p.serving,
        "backends_by_state": p.backends_by_state,
        "last_tier_change": p.last_tier_change.as_ref().map(tier_json),
        "queue_depth": p.queue_depth,
        "max_queue": p.max_queue,
    })
}

fn transition_json(t: &pb::Transition) -> Value {
    json!({"at": time(t.at_ms), "kind": t.kind, "from": t.from, "to": t.to, "cause": t.cause})
}

fn backend_json(b: &pb::Backend) -> Value {
    json!({
        "pool": b.pool,
        "name": b.name,
        "address": b.address,
        "tier": b.tier,
        "weight": b.weight,
        "weight_override": b.weight_override,
        "effective_weight": b.effective_weight,
        "health": b.health,
        "admin": admin_name(b.admin),
        "state": b.state,
        "serving": b.serving,
        "active_connections": b.active_connections,
        "connections_total": b.connections_total,
        "last_probe": b.last_probe.as_ref().map(|p| json!({
            "at": time(p.at_ms), "ok": p.ok, "reason": p.reason,
        })),
        "last_transitions": b.last_transitions.iter().map(transition_json).collect::<Vec<_>>(),
        "origin": b.origin,
        "max_connections": b.max_connections,
        "connection_limit": b.connection_limit,
        "queue_depth": b.queue_depth,
        "active_requests": b.active_requests,
        "responses_total": b.responses_total,
    })
}

fn reload_json(r: &pb::ReloadResponse) -> Value {
    json!({
        "generation": r.generation,
        "added": r.added,
        "removed": r.removed,
        "changed": r.changed,
        "need_restart": r.need_restart,
        "shadowed": r.shadowed,
    })
}

fn event_json(e: &pb::Event) -> Value {
    use pb::event::Kind;
    let at = time(e.at_ms);
    match &e.kind {
        Some(Kind::Backend(b)) => json!({
            "at": at, "type": "backend", "pool": b.pool, "backend": b.backend,
            "transition": b.transition.as_ref().map(transition_json),
        }),
        Some(Kind::Tier(t)) => json!({
            "at": at, "type": "tier", "pool": t.pool, "from": t.from, "to": t.to,
            "cause": t.cause,
        }),
        Some(Kind::Reload(r)) => json!({
            "at": at, "type": "reload", "ok": r.ok, "generation": r.generation, "error": r.error,
        }),
        Some(Kind::Firewall(f)) => json!({
            "at": at, "type": "firewall", "change": f.change,
            "rule": f.rule.as_ref().map(rule_json),
        }),
        None => json!({"at": at, "type": "unknown"}),
    }
}

fn connection_json(c: &pb::Connection) -> Value {
    json!({
        "id": c.id,
        "listener": c.listener,
        "route": c.route,
        "pool": c.pool,
        "backend": c.backend,
        "client": c.client,
        "age_ms": c.age_ms,
        "sent_bytes": c.sent_bytes,
        "received_bytes": c.received_bytes,
        "state": c.state,
    })
}

fn connections_json(r: &pb::ListConnectionsResponse) -> Value {
    json!({
        "connections": r.connections.iter().map(connection_json).collect::<Vec<_>>(),
        "total": r.total,
    })
}

fn connections_text(r: &pb::ListConnectionsResponse) -> String {
    if r.connections.is_empty() {
        return format!("no live connection matches ({} in all)\n", r.total);
    }
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = r
        .connections
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.listener.clone(),
                c.route.clone(),
                dash(&c.pool),
                dash(&c.backend),
                c.client.clone(),
                format_age(c.age_ms),
                c.sent_bytes.to_string(),
                c.received_bytes.to_string(),
                c.state.clone(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID", "LISTENER", "ROUTE", "POOL", "BACKEND", "CLIENT", "AGE", "SENT", "RECEIVED",
            "STATE",
        ],
        &rows,
    );
    if r.total as usize > r.connections.len() {
        out.push_str(&format!(
            "{} of {} shown (--limit)\n",
            r.connections.len(),
            r.total
        ));
    }
    out
}

/// `3h12m`, `4m05s`, `12.3s`.
fn format_age(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}.{}s", s, (ms % 1000) / 100)
    }
}

fn explain_json(e: &pb::ExplainResponse) -> Value {
    json!({
        "route": (!e.route.is_empty()).then_some(&e.route),
        "firewall": (!e.firewall.is_empty()).then_some(&e.firewall),
        "routes": e.routes.iter().map(|r| json!({
            "name": r.name, "matched": r.matched, "why": r.why,
        })).collect::<Vec<_>>(),
        "http": e.http.as_ref().map(|h| json!({
            "rules": h.rules.iter().map(|r| json!({
                "name": r.name, "matched": r.matched, "why": r.why,
            })).collect::<Vec<_>>(),
            "rule": (!h.rule.is_empty()).then_some(&h.rule),
            "pool": (!h.pool.is_empty()).then_some(&h.pool),
            "notes": h.notes,
        })),
        "pools": e.pools.iter().map(|p| json!({
            "name": p.name,
            "balance": p.balance,
            "active_tier": p.active_tier,
            "backends": p.backends.iter().map(|b| json!({
                "name": b.name, "eligible": b.eligible, "why": b.why,
            })).collect::<Vec<_>>(),
            "pick": (!p.pick.is_empty()).then_some(&p.pick),
            "pick_note": p.pick_note,
        })).collect::<Vec<_>>(),
    })
}

fn explain_text(e: &pb::ExplainResponse) -> String {
    let mut out = String::new();
    if !e.firewall.is_empty() {
        let _ = writeln!(
            out,
            "the listener's firewall refuses this client ({}): no route is looked at",
            e.firewall
        );
        return out;
    }
    for r in &e.routes {
        let mark = if r.matched { "TAKES" } else { "no" };
        let _ = writeln!(out, "route {:<16} {mark:<5}  {}", r.name, r.why);
    }
    if e.route.is_empty() {
        out.push_str("no route takes this client: it is refused (no_route)\n");
        return out;
    }
    if let Some(h) = &e.http {
        out.push('\n');
        for r in &h.rules {
            let mark = if r.matched { "TAKES" } else { "no" };
            let _ = writeln!(out, "rule  {:<16} {mark:<5}  {}", r.name, r.why);
        }
        for n in &h.notes {
            let _ = writeln!(out, "  {n}");
        }
        if !h.pool.is_empty() {
            let _ = writeln!(out, "  to pool {}", h.pool);
        }
    }
    for p in &e.pools {
        let _ = writeln!(
            out,
            "\npool {} ({}), active tier {}",
            p.name,
            p.balance,
            tier_text(p.active_tier)
        );
        for b in &p.backends {
            let mark = if b.eligible { "yes" } else { "no" };
            let _ = writeln!(out, "  {:<24} {mark:<3}  {}", b.name, b.why);
        }
        if p.pick.is_empty() {
            let _ = writeln!(out, "  pick: {}", p.pick_note);
        } else {
            let _ = writeln!(out, "  pick: {}  ({})", p.pick, p.pick_note);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `--admin` entry is an address or a `name:port`; one without a port
    /// is a usage error, not an instance.
    #[test]
    fn admin_entries_are_addresses_or_names_with_a_port() {
        let list = |l: &[&str]| instances(&l.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>());
        let at = |a: &str| Instance::At(a.parse().expect("addr"));
        assert_eq!(
            list(&["127.0.0.1:9901", " 127.0.0.1:9901 ", "[::1]:9902", ""]),
            Ok(vec![at("127.0.0.1:9901"), at("[::1]:9902")])
        );
        for bad in [
            "127.0.0.1",
            "::1",
            "2001:db8::1:9901",
            "weir.example",
            "weir.example:http",
            "weir.example:70000",
        ] {
            let err = list(&[bad]).expect_err(bad);
            assert!(err.contains("not IP:port nor name:port"), "{bad}: {err}");
        }
        assert!(list(&[" "]).is_err());
    }

    /// Every state a backend can be in has its place in `weir status`.
    #[test]
    fn the_status_counts_backends_in_every_state() {
        let s = pb::StatusResponse {
            backends_by_state: [("up", 1), ("standby", 2), ("down", 3)]
                .into_iter()
                .map(|(k, n)| (k.to_owned(), n))
                .collect(),
            ..Default::default()
        };
        let table = status_table(&s);
        assert!(table.contains("1 up, 2 standby, 3 down"), "{table}");
    }

    /// The CLI's own deadline is not a daemon that cannot be reached: the
    /// message says the change may still finish.
    #[test]
    fn a_call_past_its_deadline_says_the_daemon_may_be_at_it() {
        let addr: SocketAddr = "127.0.0.1:9901".parse().expect("addr");
        let (code, message) = status_failure(addr, &tonic::Status::cancelled("Timeout expired"));
        assert_eq!(code, 3);
        assert!(
            message.starts_with("no answer from weir at 127.0.0.1:9901 within 60 s"),
            "{message}"
        );
        let (code, message) = status_failure(addr, &tonic::Status::unavailable(""));
        assert_eq!(code, 3);
        assert!(message.starts_with("cannot reach weir at"), "{message}");
    }
}
