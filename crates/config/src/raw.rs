//! Stage one: serde types that mirror the TOML file one to one.
//!
//! These types only catch what serde can: unknown keys (`deny_unknown_fields`
//! everywhere), wrong value types and missing required keys. Everything with a
//! rule beyond its TOML type — enums, durations, addresses, CIDRs, integer
//! ranges — stays a plain string or `i64` here and is checked in stage two
//! (`validate.rs`), so that one pass can report every such mistake, each with
//! a message of ours instead of serde's.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) admin: RawAdmin,
    #[serde(default)]
    pub(crate) runtime: RawRuntime,
    #[serde(default)]
    pub(crate) state: RawState,
    #[serde(default)]
    pub(crate) log: RawLog,
    pub(crate) firewall: Option<RawFirewall>,
    pub(crate) tracing: Option<RawTracing>,
    #[serde(default)]
    pub(crate) listeners: Vec<RawListener>,
    #[serde(default)]
    pub(crate) pools: Vec<RawPool>,
}

/// `[tracing]`: W3C Trace Context on l7 routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawTracing {
    pub(crate) sample_ratio: Option<f64>,
    pub(crate) trust_client_sampling: Option<bool>,
    pub(crate) otlp: Option<RawOtlp>,
}

/// `[tracing.otlp]`: span export.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawOtlp {
    pub(crate) endpoint: String,
    pub(crate) protocol: Option<String>,
    pub(crate) service_name: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) interval: Option<String>,
    pub(crate) batch_size: Option<Int>,
    pub(crate) queue_size: Option<Int>,
}

/// `[firewall]`, and a listener's own `firewall`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawFirewall {
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    #[serde(default)]
    pub(crate) deny: Vec<String>,
    #[serde(default)]
    pub(crate) allow_files: Vec<String>,
    #[serde(default)]
    pub(crate) deny_files: Vec<String>,
    pub(crate) countries: Option<RawCountries>,
    pub(crate) per_client: Option<RawPerClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawCountries {
    pub(crate) database: String,
    #[serde(default)]
    pub(crate) deny: Vec<String>,
    pub(crate) allow: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawPerClient {
    pub(crate) rate: Option<Int>,
    pub(crate) burst: Option<Int>,
    pub(crate) concurrent: Option<Int>,
    pub(crate) requests: Option<Int>,
    pub(crate) requests_burst: Option<Int>,
    pub(crate) ipv4_prefix: Option<Int>,
    pub(crate) ipv6_prefix: Option<Int>,
    pub(crate) max_tracked: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawAdmin {
    pub(crate) http: Option<String>,
    pub(crate) grpc: Option<String>,
    pub(crate) token_file: Option<String>,
    pub(crate) insecure: Option<bool>,
    pub(crate) max_connections: Option<Int>,
    pub(crate) max_connections_per_client: Option<Int>,
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) handshake_timeout: Option<String>,
    pub(crate) idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawState {
    pub(crate) path: Option<String>,
    pub(crate) history: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRuntime {
    pub(crate) worker_threads: Option<Int>,
    pub(crate) zero_copy: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawLog {
    pub(crate) format: Option<String>,
    pub(crate) level: Option<String>,
    pub(crate) access_log: Option<bool>,
    pub(crate) refusals_per_second: Option<Int>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawListener {
    pub(crate) name: String,
    pub(crate) bind: RawBind,
    pub(crate) protocol: Option<String>,
    pub(crate) max_connections: Option<Int>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) shutdown_timeout: Option<String>,
    pub(crate) handshake_timeout: Option<String>,
    pub(crate) proxy_protocol: Option<RawProxyAccept>,
    pub(crate) firewall: Option<RawFirewall>,
    pub(crate) responses: Option<Int>,
    pub(crate) max_flows: Option<Int>,
    // Defaulted so that "a listener needs at least one route" is our message,
    // not serde's "missing field".
    #[serde(default)]
    pub(crate) routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRoute {
    pub(crate) name: String,
    #[serde(rename = "match")]
    pub(crate) matcher: Option<RawMatch>,
    pub(crate) mode: Option<String>,
    pub(crate) pool: Option<String>,
    pub(crate) send_proxy_protocol: Option<String>,
    pub(crate) backend_tls: Option<RawBackendTls>,
    // mode = "l7"
    pub(crate) tls: Option<RawServerTls>,
    #[serde(default)]
    pub(crate) http: Vec<RawHttpRule>,
    pub(crate) forwarded: Option<RawForwarded>,
    pub(crate) timeouts: Option<RawHttpTimeouts>,
    pub(crate) max_header_bytes: Option<Int>,
    pub(crate) max_concurrent_streams: Option<Int>,
    pub(crate) max_body_bytes: Option<Int>,
    pub(crate) request_headers: Option<RawHeaderRules>,
    pub(crate) response_headers: Option<RawHeaderRules>,
    pub(crate) encoded_slashes: Option<String>,
    pub(crate) policies: Option<Vec<RawPolicy>>,
    pub(crate) auth: Option<RawAuth>,
}

/// `auth = { url, ... }`: forward authentication.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawAuth {
    pub(crate) url: String,
    pub(crate) timeout: Option<String>,
    /// Also read as `cache_headers`: they key the cached answers too.
    #[serde(default, alias = "cache_headers")]
    pub(crate) headers: Vec<String>,
    #[serde(default)]
    pub(crate) copy_headers: Vec<String>,
    pub(crate) failure: Option<String>,
    pub(crate) allowed_ttl: Option<String>,
    pub(crate) denied_ttl: Option<String>,
    pub(crate) cache_size: Option<Int>,
    pub(crate) breaker_failures: Option<Int>,
    pub(crate) breaker_open: Option<String>,
    pub(crate) max_calls: Option<Int>,
}

/// One entry of `policies = [...]` (an l7 route's or a rule's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawPolicy {
    pub(crate) name: String,
    pub(crate) block_user_agent: Option<Vec<String>>,
    pub(crate) block_user_agent_regex: Option<String>,
    pub(crate) require_header: Option<String>,
    pub(crate) require_value: Option<String>,
    pub(crate) require_regex: Option<String>,
    pub(crate) deny: Option<RawPolicyMatch>,
    pub(crate) allow: Option<RawPolicyMatch>,
    pub(crate) status: Option<Int>,
    pub(crate) body: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawPolicyMatch {
    #[serde(default)]
    pub(crate) methods: Vec<String>,
    #[serde(default)]
    pub(crate) path_prefix: Vec<String>,
    pub(crate) path_regex: Option<String>,
    #[serde(default)]
    pub(crate) host: Vec<String>,
    #[serde(default)]
    pub(crate) source: Vec<String>,
}

/// `tls = { certificates, client_ca }` of an l7 route: weir terminates TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawServerTls {
    #[serde(default)]
    pub(crate) certificates: Vec<RawCertificate>,
    pub(crate) client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawCertificate {
    pub(crate) cert: String,
    pub(crate) key: String,
}

/// `[[listeners.routes.http]]`: a rule of an l7 route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawHttpRule {
    pub(crate) name: String,
    #[serde(rename = "match")]
    pub(crate) matcher: Option<RawHttpMatch>,
    pub(crate) pool: Option<String>,
    pub(crate) redirect: Option<RawRedirect>,
    pub(crate) strip_prefix: Option<String>,
    pub(crate) add_prefix: Option<String>,
    pub(crate) policies: Option<Vec<RawPolicy>>,
    pub(crate) auth: Option<RawAuth>,
    pub(crate) request_headers: Option<RawHeaderRules>,
    pub(crate) response_headers: Option<RawHeaderRules>,
}

/// `redirect = { scheme, host, port, status }` of a rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRedirect {
    pub(crate) scheme: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) port: Option<Int>,
    pub(crate) status: Option<Int>,
}

/// `request_headers` / `response_headers = { remove, set, add }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawHeaderRules {
    #[serde(default)]
    pub(crate) remove: Vec<String>,
    #[serde(default)]
    pub(crate) set: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) add: std::collections::BTreeMap<String, String>,
    pub(crate) always: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawHttpMatch {
    #[serde(default)]
    pub(crate) host: Vec<String>,
    #[serde(default)]
    pub(crate) path: Vec<String>,
    pub(crate) path_prefix: Option<String>,
    pub(crate) path_regex: Option<String>,
    #[serde(default)]
    pub(crate) methods: Vec<String>,
    /// Header name -> the exact value it must have.
    #[serde(default)]
    pub(crate) headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) source: Vec<String>,
    /// Query parameter -> the exact value it must have (decoded).
    #[serde(default)]
    pub(crate) query: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawForwarded {
    #[serde(default)]
    pub(crate) trusted: Vec<String>,
    pub(crate) rfc7239: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawHttpTimeouts {
    pub(crate) request_header: Option<String>,
    pub(crate) idle: Option<String>,
    pub(crate) upstream_response: Option<String>,
    pub(crate) upstream_idle: Option<String>,
    pub(crate) request: Option<String>,
    pub(crate) request_body: Option<String>,
    pub(crate) upstream_keepalive: Option<String>,
    pub(crate) upstream_ping: Option<String>,
    pub(crate) websocket_idle: Option<String>,
    pub(crate) send: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawBackendTls {
    pub(crate) sni: Option<String>,
    pub(crate) verify: Option<bool>,
    pub(crate) ca: Option<String>,
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawProxyAccept {
    #[serde(default)]
    pub(crate) accept: bool,
    #[serde(default)]
    pub(crate) trusted: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawMatch {
    #[serde(default)]
    pub(crate) source: Vec<String>,
    #[serde(default)]
    pub(crate) sni: Vec<String>,
    #[serde(default)]
    pub(crate) alpn: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawPool {
    pub(crate) name: String,
    pub(crate) balance: Option<String>,
    pub(crate) hash_key: Option<String>,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) retries: Option<Int>,
    pub(crate) retry_on_status: Option<Vec<Int>>,
    pub(crate) retry_budget: Option<RawRetryBudget>,
    pub(crate) sticky: Option<RawSticky>,
    pub(crate) drain_timeout: Option<String>,
    pub(crate) close_on_down: Option<bool>,
    pub(crate) protocol: Option<String>,
    pub(crate) health: Option<RawHealth>,
    pub(crate) outlier: Option<RawOutlier>,
    pub(crate) discover: Option<RawDiscover>,
    pub(crate) slow_start: Option<String>,
    pub(crate) max_connections_per_backend: Option<Int>,
    pub(crate) max_queue: Option<Int>,
    pub(crate) queue_timeout: Option<String>,
    #[serde(default)]
    pub(crate) backends: Vec<RawBackend>,
}

/// `sticky = { cookie, ... }` of a pool: sessions kept on their backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawSticky {
    pub(crate) cookie: String,
    pub(crate) max_age: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) domain: Option<String>,
    pub(crate) secure: Option<bool>,
    pub(crate) http_only: Option<bool>,
    pub(crate) same_site: Option<String>,
}

/// `discover = { ... }` of a pool: backends from DNS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawDiscover {
    pub(crate) srv: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) port: Option<Int>,
    pub(crate) resolver: Option<String>,
    pub(crate) min_interval: Option<String>,
    pub(crate) max_interval: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) hold: Option<String>,
    pub(crate) tier: Option<Int>,
    pub(crate) weight: Option<Int>,
}

/// `retry_budget = { ... }` of a pool: retries in flight at most.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRetryBudget {
    pub(crate) percent: Option<Int>,
    pub(crate) min_concurrent: Option<Int>,
}

/// `outlier = { ... }` of a pool: outlier detection from HTTP responses.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawOutlier {
    pub(crate) consecutive_failures: Option<Int>,
    pub(crate) base_ejection: Option<String>,
    pub(crate) max_ejection: Option<String>,
    pub(crate) max_ejected_percent: Option<Int>,
}

/// `[pools.health]`: the keys of every check type side by side; which ones a
/// given `type` accepts is decided in stage two, so that a key of another
/// type gets a message saying whose it is rather than "unknown key".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawHealth {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) interval: Option<String>,
    pub(crate) fast_interval: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) rise: Option<Int>,
    pub(crate) fall: Option<Int>,
    pub(crate) port: Option<Int>,
    pub(crate) passive_timeout: Option<String>,
    // http
    pub(crate) path: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) expect_status: Option<String>,
    pub(crate) expect_body: Option<RawTexts>,
    pub(crate) expect_json: Option<std::collections::BTreeMap<String, toml::Value>>,
    pub(crate) standby: Option<RawStandby>,
    pub(crate) method: Option<String>,
    pub(crate) headers: Option<std::collections::BTreeMap<String, String>>,
    pub(crate) body: Option<String>,
    pub(crate) max_response: Option<Int>,
    pub(crate) follow_redirects: Option<Int>,
    // http and grpc
    pub(crate) https: Option<bool>,
    pub(crate) tls_skip_verify: Option<bool>,
    pub(crate) ca: Option<String>,
    pub(crate) tls_server_name: Option<String>,
    // grpc
    pub(crate) service: Option<String>,
    // dns
    pub(crate) query: Option<String>,
    pub(crate) query_type: Option<String>,
    pub(crate) expect_rcode: Option<String>,
    // udp
    pub(crate) send: Option<String>,
    pub(crate) expect: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawBackend {
    pub(crate) address: String,
    pub(crate) name: Option<String>,
    pub(crate) weight: Option<Int>,
    pub(crate) tier: Option<Int>,
    pub(crate) health: Option<bool>,
    pub(crate) check_port: Option<Int>,
    pub(crate) max_connections: Option<Int>,
    pub(crate) check: Option<RawCheckOverride>,
}

/// `check = { ... }` of a backend: the keys of the pool's HTTP check it may
/// change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawCheckOverride {
    pub(crate) path: Option<String>,
    pub(crate) expect_status: Option<String>,
    pub(crate) expect_body: Option<RawTexts>,
    pub(crate) expect_json: Option<std::collections::BTreeMap<String, toml::Value>>,
    pub(crate) standby: Option<RawStandby>,
}

/// `standby = { ... }` of an HTTP check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawStandby {
    pub(crate) status: Option<String>,
    pub(crate) body: Option<RawTexts>,
    pub(crate) json: Option<std::collections::BTreeMap<String, toml::Value>>,
}

/// A string, or a list of strings.
#[derive(Debug, Clone)]
pub(crate) struct RawTexts(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for RawTexts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(Strings("a string or a list of strings"))
            .map(RawTexts)
    }
}

/// `bind`: one address as a string, or a list of them.
///
/// Hand-written instead of `#[serde(untagged)]`: untagged buffers the value,
/// which loses both the key path and serde's precise type error.
#[derive(Debug)]
pub(crate) struct RawBind(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for RawBind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(Strings("a socket address or a list of socket addresses"))
            .map(RawBind)
    }
}

/// One string or a list of them, as a list; says `.0` when it is neither.
struct Strings(&'static str);

impl<'de> Visitor<'de> for Strings {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        Ok(vec![v.to_owned()])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(s) = seq.next_element::<String>()? {
            out.push(s);
        }
        Ok(out)
    }
}

/// An integer of any size TOML allows. Ranges are checked in stage two; this
/// type exists so a type error says "an integer" rather than "i64".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Int(pub(crate) i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
        }

        deserializer.deserialize_i64(IntVisitor)
    }
}
