//! `[pools.health]`: the check type, its keys (a key of another type is
//! named as such), timing, rise and fall, and the probe's TLS.

use std::time::Duration;

use super::Checker;
use super::files::is_visible_ascii;
use super::values::{check_server_name, parse_status_match};
use std::collections::BTreeMap;

use crate::model::{
    Check, DnsCheck, GrpcCheck, Health, HttpCheck, JsonField, JsonValue, ProbeTls, Standby,
    StatusMatch, UdpCheck,
};
use crate::raw::{RawCheckOverride, RawHealth, RawStandby, RawTexts};

const MAX_RISE_FALL: i64 = 100;
const DEFAULT_HTTP_PATH: &str = "/";
/// `expect_status = "2xx"`.
const DEFAULT_EXPECT_STATUS: (u16, u16) = (200, 299);
const HEALTH_TYPES: &[(&str, CheckType)] = &[
    ("none", CheckType::None),
    ("tcp", CheckType::Tcp),
    ("http", CheckType::Http),
    ("grpc", CheckType::Grpc),
    ("dns", CheckType::Dns),
    ("udp", CheckType::Udp),
];

/// `[pools.health] type`, before its keys are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckType {
    None,
    Tcp,
    Http,
    Grpc,
    Dns,
    Udp,
}

impl CheckType {
    fn name(self) -> &'static str {
        HEALTH_TYPES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(name, _)| name)
    }
}

const HTTP: &[CheckType] = &[CheckType::Http];
const HTTP_GRPC: &[CheckType] = &[CheckType::Http, CheckType::Grpc];
const GRPC: &[CheckType] = &[CheckType::Grpc];
const DNS: &[CheckType] = &[CheckType::Dns];
const UDP: &[CheckType] = &[CheckType::Udp];

impl Checker {
    pub(super) fn health(&mut self, path: &str, raw: &RawHealth) -> Health {
        let kind = self.one_of(&format!("{path}.type"), &raw.kind, HEALTH_TYPES);

        let default = Health::default();
        let parsed_interval =
            self.timeout_opt(&format!("{path}.interval"), raw.interval.as_deref());
        let interval_ok = raw.interval.is_none() || parsed_interval.is_some();
        let interval = parsed_interval.unwrap_or(default.interval);
        let fast_path = format!("{path}.fast_interval");
        let fast_interval = match self.timeout_opt(&fast_path, raw.fast_interval.as_deref()) {
            Some(fast) => {
                if interval_ok && fast > interval {
                    let interval_text = match &raw.interval {
                        Some(text) => format!("{text:?}"),
                        None => format!("{}, the default", humantime::format_duration(interval)),
                    };
                    self.push(
                        fast_path,
                        format!(
                            "{:?} is longer than interval ({interval_text}); fast_interval is \
                             the quicker pace used while a backend's state is changing, so it \
                             must not exceed interval",
                            raw.fast_interval.as_deref().unwrap_or_default(),
                        ),
                    );
                }
                fast
            }
            // Half the interval (an interval of 1ns stays 1ns rather than 0).
            None => (interval / 2).max(Duration::from_nanos(1)),
        };
        let timeout = self
            .timeout_opt(&format!("{path}.timeout"), raw.timeout.as_deref())
            .unwrap_or(default.timeout);
        let rise = self.int(
            &format!("{path}.rise"),
            raw.rise,
            default.rise,
            1,
            Some(MAX_RISE_FALL),
        );
        let fall = self.int(
            &format!("{path}.fall"),
            raw.fall,
            default.fall,
            1,
            Some(MAX_RISE_FALL),
        );
        let port = raw
            .port
            .map(|p| self.int(&format!("{path}.port"), Some(p), 0, 1, Some(65535)));
        let passive_timeout = self.timeout(
            &format!("{path}.passive_timeout"),
            raw.passive_timeout.as_deref(),
            default.passive_timeout,
        );

        // With an unknown type there is nothing to hold the other keys against.
        let Some(kind) = kind else {
            return Health {
                interval,
                fast_interval,
                timeout,
                rise,
                fall,
                port,
                passive_timeout,
                ..default
            };
        };
        let typed_keys: [(&str, bool, &[CheckType]); 21] = [
            ("path", raw.path.is_some(), HTTP),
            ("host", raw.host.is_some(), HTTP),
            ("expect_status", raw.expect_status.is_some(), HTTP),
            ("expect_body", raw.expect_body.is_some(), HTTP),
            ("expect_json", raw.expect_json.is_some(), HTTP),
            ("standby", raw.standby.is_some(), HTTP),
            ("method", raw.method.is_some(), HTTP),
            ("headers", raw.headers.is_some(), HTTP),
            ("body", raw.body.is_some(), HTTP),
            ("max_response", raw.max_response.is_some(), HTTP),
            ("follow_redirects", raw.follow_redirects.is_some(), HTTP),
            ("https", raw.https.is_some(), HTTP_GRPC),
            ("tls_skip_verify", raw.tls_skip_verify.is_some(), HTTP_GRPC),
            ("ca", raw.ca.is_some(), HTTP_GRPC),
            ("tls_server_name", raw.tls_server_name.is_some(), HTTP_GRPC),
            ("service", raw.service.is_some(), GRPC),
            ("query", raw.query.is_some(), DNS),
            ("query_type", raw.query_type.is_some(), DNS),
            ("expect_rcode", raw.expect_rcode.is_some(), DNS),
            ("send", raw.send.is_some(), UDP),
            ("expect", raw.expect.is_some(), UDP),
        ];
        for (key, present, types) in typed_keys {
            if present && !types.contains(&kind) {
                let names: Vec<String> = types.iter().map(|t| format!("{:?}", t.name())).collect();
                self.push(
                    format!("{path}.{key}"),
                    format!(
                        "only for type = {} (this check is type = {:?})",
                        names.join(" or "),
                        kind.name()
                    ),
                );
            }
        }

        let check = match kind {
            CheckType::None => Check::None,
            CheckType::Tcp => Check::Tcp,
            CheckType::Http => Check::Http(self.http_check(path, raw)),
            CheckType::Grpc => Check::Grpc(GrpcCheck {
                service: raw.service.clone().unwrap_or_default(),
                tls: self.probe_tls(path, raw),
            }),
            CheckType::Dns => Check::Dns(self.dns_check(path, raw)),
            CheckType::Udp => {
                let send = raw.send.clone().unwrap_or_default().into_bytes();
                if send.is_empty() {
                    self.push(
                        format!("{path}.send"),
                        "a udp check needs the datagram to send (send = \"...\")",
                    );
                }
                Check::Udp(UdpCheck {
                    send,
                    expect: raw.expect.clone().map(String::into_bytes),
                })
            }
        };
        Health {
            check,
            interval,
            fast_interval,
            timeout,
            rise,
            fall,
            port,
            passive_timeout,
        }
    }

    fn dns_check(&mut self, path: &str, raw: &RawHealth) -> DnsCheck {
        let name = raw.query.clone().unwrap_or_default();
        let bare = name.strip_suffix('.').unwrap_or(&name);
        if name != "." && !weir_wire::name::is_dns_name(bare.as_bytes()) {
            self.push(
                format!("{path}.query"),
                format!(
                    "{name:?} is not a domain name; give the name to ask about \
                     (e.g. \"health.example.\", or \".\" for the root)"
                ),
            );
        }
        let lookup = |cx: &mut Checker,
                      key: &str,
                      given: Option<&String>,
                      list: &[(&str, u16)],
                      default: u16| {
            let Some(given) = given else {
                return default;
            };
            match list.iter().find(|(n, _)| n.eq_ignore_ascii_case(given)) {
                Some((_, v)) => *v,
                None => {
                    let names: Vec<&str> = list.iter().map(|(n, _)| *n).collect();
                    cx.push(
                        format!("{path}.{key}"),
                        format!("{given:?}: expected one of {}", names.join(", ")),
                    );
                    default
                }
            }
        };
        let qtype = lookup(
            self,
            "query_type",
            raw.query_type.as_ref(),
            weir_wire::dns::RECORD_TYPES,
            1,
        );
        let rcode = lookup(
            self,
            "expect_rcode",
            raw.expect_rcode.as_ref(),
            weir_wire::dns::RCODES,
            0,
        );
        DnsCheck { name, qtype, rcode }
    }

    fn http_check(&mut self, path: &str, raw: &RawHealth) -> HttpCheck {
        let request_path = raw
            .path
            .clone()
            .unwrap_or_else(|| DEFAULT_HTTP_PATH.to_owned());
        let key = format!("{path}.path");
        if !request_path.starts_with('/') {
            self.push(
                key,
                format!("{request_path:?} must start with \"/\", e.g. \"/health\""),
            );
        } else if !is_visible_ascii(&request_path) {
            self.push(
                key,
                format!(
                    "{request_path:?} must not contain whitespace, control or non-ASCII \
                     characters; percent-encode them (e.g. %20 for a space)"
                ),
            );
        }
        if let Some(host) = &raw.host {
            let key = format!("{path}.host");
            if host.is_empty() {
                self.push(
                    key,
                    "must not be empty; leave it out to send the probed address",
                );
            } else if !is_visible_ascii(host) {
                self.push(
                    key,
                    format!(
                        "{host:?} must not contain whitespace, control or non-ASCII characters \
                         (write an internationalised name in its xn-- form)"
                    ),
                );
            }
        }
        let expect_status = match &raw.expect_status {
            Some(s) => self.status_match(&format!("{path}.expect_status"), s),
            None => StatusMatch {
                ranges: vec![DEFAULT_EXPECT_STATUS],
            },
        };
        let expect_body = self.texts(&format!("{path}.expect_body"), raw.expect_body.as_ref());
        let expect_json =
            self.json_fields(&format!("{path}.expect_json"), raw.expect_json.as_ref());
        let standby = raw
            .standby
            .as_ref()
            .and_then(|s| self.standby(&format!("{path}.standby"), s));
        let method = raw.method.clone().unwrap_or_else(|| "GET".to_owned());
        if method.is_empty()
            || method.len() > 20
            || !method.bytes().all(|c| c.is_ascii_uppercase())
            || method == "CONNECT"
        {
            self.push(
                format!("{path}.method"),
                format!("{method:?} is not a method a probe can send: upper-case letters, e.g. \"GET\", \"HEAD\", \"POST\""),
            );
        }
        let mut headers = Vec::new();
        for (name, value) in raw.headers.iter().flatten() {
            let key = format!("{path}.headers.{name}");
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
            if !token {
                self.push(
                    key,
                    "is not a header name (letters, digits and -_.!#$%&'*+^`|~)",
                );
            } else if ["host", "content-length", "transfer-encoding", "connection"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
            {
                self.push(
                    key,
                    "weir writes this header itself (use `host` for the Host header)",
                );
            } else if !value
                .bytes()
                .all(|c| c == b' ' || c == b'\t' || c.is_ascii_graphic())
            {
                self.push(
                    key,
                    "the value must be visible ASCII (spaces and tabs allowed)",
                );
            } else {
                headers.push((name.clone(), value.clone()));
            }
        }
        let max_response = self.int(
            &format!("{path}.max_response"),
            raw.max_response,
            crate::model::DEFAULT_MAX_RESPONSE,
            256,
            Some(16 * 1024 * 1024),
        );
        let follow_redirects = self.int(
            &format!("{path}.follow_redirects"),
            raw.follow_redirects,
            0,
            0,
            Some(10),
        );
        HttpCheck {
            path: request_path,
            host: raw.host.clone(),
            expect_status,
            expect_body,
            expect_json,
            standby,
            method,
            headers,
            body: raw.body.clone(),
            max_response,
            follow_redirects,
            tls: self.probe_tls(path, raw),
        }
    }

    fn status_match(&mut self, key: &str, text: &str) -> StatusMatch {
        parse_status_match(text).unwrap_or_else(|msg| {
            self.push(key.to_owned(), msg);
            StatusMatch { ranges: Vec::new() }
        })
    }

    /// `expect_body`: texts the body must each contain, none empty.
    fn texts(&mut self, key: &str, raw: Option<&RawTexts>) -> Vec<String> {
        let Some(RawTexts(texts)) = raw else {
            return Vec::new();
        };
        if texts.is_empty() || texts.iter().any(String::is_empty) {
            self.push(
                key.to_owned(),
                "must not be empty; leave it out to accept any body",
            );
        }
        texts.clone()
    }

    /// `expect_json = { "state" = "running", "xlog.paused" = false }`.
    fn json_fields(
        &mut self,
        key: &str,
        raw: Option<&BTreeMap<String, toml::Value>>,
    ) -> Vec<JsonField> {
        let Some(raw) = raw else {
            return Vec::new();
        };
        if raw.is_empty() {
            self.push(
                key.to_owned(),
                "must name at least one field; leave it out to accept any body",
            );
        }
        let mut out = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            let at = format!("{key}.{name}");
            let path: Vec<String> = name.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                self.push(
                    at,
                    "is not a field path: names separated by dots, e.g. \"state\" or \"replication.state\"",
                );
                continue;
            }
            let value = match value {
                toml::Value::String(s) => JsonValue::Str(s.clone()),
                toml::Value::Integer(n) => JsonValue::Int(*n),
                toml::Value::Boolean(b) => JsonValue::Bool(*b),
                other => {
                    self.push(
                        at,
                        format!(
                            "must be a string, an integer or true/false (found {})",
                            other.type_str()
                        ),
                    );
                    continue;
                }
            };
            out.push(JsonField { path, value });
        }
        out
    }

    /// `standby = { status, body, json }`: at least one condition.
    fn standby(&mut self, key: &str, raw: &RawStandby) -> Option<Box<Standby>> {
        if raw.status.is_none() && raw.body.is_none() && raw.json.is_none() {
            self.push(
                key.to_owned(),
                "give the answer that means standby: status, body or json (e.g. { status = \"503\" })",
            );
            return None;
        }
        Some(Box::new(Standby {
            status: raw
                .status
                .as_deref()
                .map(|s| self.status_match(&format!("{key}.status"), s)),
            body: self.texts(&format!("{key}.body"), raw.body.as_ref()),
            json: self.json_fields(&format!("{key}.json"), raw.json.as_ref()),
        }))
    }

    /// A backend's `check = { ... }`: the pool's HTTP check with these keys
    /// changed. Only in a pool whose check is `type = "http"`.
    pub(super) fn check_override(
        &mut self,
        key: &str,
        pool: &Check,
        raw: &RawCheckOverride,
    ) -> Option<HttpCheck> {
        let Check::Http(base) = pool else {
            self.push(
                key.to_owned(),
                format!(
                    "only in a pool whose [pools.health] has type = \"http\" (this one: {:?})",
                    pool.kind()
                ),
            );
            return None;
        };
        let mut check = base.clone();
        if let Some(p) = &raw.path {
            if !p.starts_with('/') || !is_visible_ascii(p) {
                self.push(
                    format!("{key}.path"),
                    format!("{p:?} must start with \"/\" and be visible ASCII, e.g. \"/replica\""),
                );
            }
            check.path.clone_from(p);
        }
        if let Some(s) = &raw.expect_status {
            check.expect_status = self.status_match(&format!("{key}.expect_status"), s);
        }
        if raw.expect_body.is_some() {
            check.expect_body = self.texts(&format!("{key}.expect_body"), raw.expect_body.as_ref());
        }
        if raw.expect_json.is_some() {
            check.expect_json =
                self.json_fields(&format!("{key}.expect_json"), raw.expect_json.as_ref());
        }
        if let Some(s) = &raw.standby {
            check.standby = self.standby(&format!("{key}.standby"), s);
        }
        Some(check)
    }

    /// `https` and the keys that only make sense with it.
    fn probe_tls(&mut self, path: &str, raw: &RawHealth) -> Option<ProbeTls> {
        let skip_verify = raw.tls_skip_verify.unwrap_or(false);
        if raw.https != Some(true) {
            // `tls_skip_verify = false` without https says nothing wrong.
            let stray = [
                ("tls_skip_verify", skip_verify),
                ("ca", raw.ca.is_some()),
                ("tls_server_name", raw.tls_server_name.is_some()),
            ];
            for (key, present) in stray {
                if present {
                    self.push(
                        format!("{path}.{key}"),
                        "only with https = true (the probe does not use TLS)",
                    );
                }
            }
            return None;
        }
        if skip_verify && raw.ca.is_some() {
            self.push(
                format!("{path}.tls_skip_verify"),
                "contradicts `ca`: with tls_skip_verify = true any certificate is accepted, \
                 so the CA would never be used; keep one of them",
            );
        }
        let ca = raw
            .ca
            .as_deref()
            .map(|ca| self.ca_file(&format!("{path}.ca"), ca));
        if let Some(name) = &raw.tls_server_name
            && let Err(msg) = check_server_name(name)
        {
            self.push(format!("{path}.tls_server_name"), msg);
        }
        Some(ProbeTls {
            skip_verify,
            ca,
            server_name: raw.tls_server_name.clone(),
        })
    }
}
