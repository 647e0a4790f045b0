//! Stage two: raw serde types -> the validated model, one file per section
//! of the file.
//!
//! Every check records a [`Problem`] and carries on with a placeholder value,
//! so one run reports every mistake in the file; the half-built [`Config`] is
//! thrown away if anything was recorded.

mod admin;
mod auth;
mod discover;
mod files;
mod firewall;
mod header_rules;
mod health;
mod http;
mod listener;
pub use listener::bind_meeting;
pub use values::ipv4_if_mapped;
mod log;
mod otlp;
mod policy;
mod pool;
mod route;
mod runtime;
mod state;
mod values;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::error::{ConfigError, Problem};
use crate::model::{Config, Tracing};
use crate::raw::{Int, RawConfig};

/// Stands in for a value that failed a check; never reaches a returned Config.
const PLACEHOLDER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

pub(crate) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut cx = Checker {
        problems: Vec::new(),
    };
    let admin = cx.admin(raw.admin);
    let runtime = cx.runtime(&raw.runtime);
    let state = cx.state(raw.state);
    let log = cx.log(raw.log);
    let global_firewall = raw.firewall.map(|f| cx.firewall("firewall", &f));
    let tracing = raw.tracing.map(|t| {
        let ratio = t.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&ratio) {
            cx.push(
                "tracing.sample_ratio",
                format!("{ratio} is out of range 0.0..=1.0"),
            );
        }
        Tracing {
            sample_ratio: ratio.clamp(0.0, 1.0),
            trust_client_sampling: t.trust_client_sampling.unwrap_or(true),
            otlp: t.otlp.as_ref().map(|o| cx.otlp("tracing.otlp", o)),
        }
    });

    // Routes refer to pools by index, so index the pool names up front; the
    // first of two pools with one name wins (the second is an error below).
    let mut pool_index: HashMap<String, usize> = HashMap::new();
    for (i, pool) in raw.pools.iter().enumerate() {
        pool_index.entry(pool.name.clone()).or_insert(i);
    }

    // In file-section order: listeners (and their binds), then pools.
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    let mut listener_index: HashMap<String, usize> = HashMap::new();
    for (i, mut l) in raw.listeners.into_iter().enumerate() {
        let path = format!("listeners[{i}]");
        let own = l
            .firewall
            .take()
            .map(|f| cx.firewall(&format!("{path}.firewall"), &f));
        let mut listener = cx.listener(&path, l, &pool_index);
        listener.firewall = cx.join_firewall(&path, global_firewall.as_ref(), own);
        if let Some(first) = listener_index.get(&listener.name) {
            cx.push(
                format!("listeners[{i}].name"),
                format!(
                    "duplicate listener name {:?} (also listeners[{first}])",
                    listener.name
                ),
            );
        } else {
            listener_index.insert(listener.name.clone(), i);
        }
        listeners.push(listener);
    }
    cx.check_binds(&admin, &listeners);

    let mut pools = Vec::with_capacity(raw.pools.len());
    for (i, p) in raw.pools.into_iter().enumerate() {
        let pool = cx.pool(&format!("pools[{i}]"), p);
        if let Some(&first) = pool_index.get(&pool.name).filter(|&&first| first != i) {
            cx.push(
                format!("pools[{i}].name"),
                format!("duplicate pool name {:?} (also pools[{first}])", pool.name),
            );
        }
        pools.push(pool);
    }

    cx.check_protocols(&listeners, &pools);

    if cx.problems.is_empty() {
        Ok(Config {
            admin,
            runtime,
            state,
            log,
            tracing,
            listeners,
            pools,
        })
    } else {
        Err(ConfigError::new(cx.problems))
    }
}

/// Collects the problems of one validation; each section adds its checks to
/// it (in the files of this module), and the helpers below are shared.
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn name(&mut self, path: &str, name: &str) {
        if let Some(problem) = name_problem(name) {
            self.push(path, problem);
        }
    }

    /// A listen address: an IP literal and a port, never a host name (what a
    /// name resolves to can change under a running listener).
    fn bind_addr(&mut self, path: &str, s: &str) -> SocketAddr {
        match s.parse::<SocketAddr>() {
            // IPv6 sockets are IPv6-only: the kernel refuses to bind one to
            // an IPv4-mapped address (EINVAL at start), and written so it
            // would escape the overlap check against the IPv4 one.
            Ok(SocketAddr::V6(v6)) if v6.ip().to_ipv4_mapped().is_some() => {
                let v4 = SocketAddr::new(v6.ip().to_canonical(), v6.port());
                self.push(
                    path,
                    format!("{s:?} is an IPv4-mapped address; write it as {v4}"),
                );
                PLACEHOLDER_ADDR
            }
            Ok(addr) => addr,
            Err(_) => {
                self.push(
                    path,
                    format!(
                        "{s:?} is not a socket address; write IP:port, \
                         e.g. \"127.0.0.1:5433\" or \"[::1]:5433\""
                    ),
                );
                PLACEHOLDER_ADDR
            }
        }
    }

    /// A list of CIDRs or IPs at `path`; a problem per entry that is neither.
    fn sources(&mut self, path: &str, items: &[String]) -> Vec<ipnet::IpNet> {
        items
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match values::parse_source(s) {
                Ok(net) => Some(net),
                Err(msg) => {
                    self.push(format!("{path}[{i}]"), msg);
                    None
                }
            })
            .collect()
    }

    fn choice<T: Clone>(
        &mut self,
        path: &str,
        value: Option<String>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        match value {
            Some(value) => self.one_of(path, &value, choices).unwrap_or(default),
            None => default,
        }
    }

    /// The value named `value` in `choices`; `None` (and a problem) if none is.
    fn one_of<T: Clone>(&mut self, path: &str, value: &str, choices: &[(&str, T)]) -> Option<T> {
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == value) {
            return Some(v.clone());
        }
        let accepted: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let hint = crate::suggest::closest(value, accepted.iter().copied())
            .map(|near| format!(" (did you mean {near:?}?)"))
            .unwrap_or_default();
        self.push(
            path,
            format!(
                "unknown value {value:?}{hint}; expected one of: {}",
                accepted.join(", ")
            ),
        );
        None
    }

    /// A timeout or an interval: a humantime string, greater than zero.
    fn timeout(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        self.timeout_opt(path, value).unwrap_or(default)
    }

    /// Like [`Self::timeout`]; `None` when absent or wrong.
    fn timeout_opt(&mut self, path: &str, value: Option<&str>) -> Option<Duration> {
        let value = value?;
        match humantime::parse_duration(value) {
            Ok(d) if d.is_zero() => {
                self.push(path, "must be greater than 0");
                None
            }
            Ok(d) if d > MAX_DURATION => {
                // Added to the clock, a longer one could overflow it.
                self.push(path, format!("{value:?} is longer than 100 years"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.push(
                    path,
                    format!(
                        "{value:?} is not a duration{}; write a number with a unit (ms, s, m, \
                         h, d), e.g. \"250ms\", \"2s\", \"1h\"",
                        duration_detail(&e)
                    ),
                );
                None
            }
        }
    }

    /// An integer in `min..=max`, where no `max` means the largest `T`.
    fn int<T>(
        &mut self,
        path: &str,
        value: Option<Int>,
        default: T,
        min: i64,
        max: Option<i64>,
    ) -> T
    where
        T: TryFrom<i64> + Copy,
    {
        let Some(Int(v)) = value else {
            return default;
        };
        let in_range = v >= min && max.is_none_or(|m| v <= m);
        match T::try_from(v) {
            Ok(t) if in_range => t,
            _ => {
                let message = match max {
                    Some(max) => format!("{v} is out of range {min}..={max}"),
                    None if v < min => format!("{v} is out of range; must be at least {min}"),
                    None => format!("{v} is too large"),
                };
                self.push(path, message);
                default
            }
        }
    }
}

/// The longest duration a config may give (100 of the parser's years of
/// 365.25 days): "never" for all purposes, and far from what the clock can
/// take added to it.
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// What is wrong with a duration, in the file's words (the parser's own
/// errors speak of character offsets).
fn duration_detail(e: &humantime::DurationError) -> String {
    use humantime::DurationError::*;
    match e {
        UnknownUnit { unit, .. } if unit.is_empty() => " (a number needs a unit)".to_owned(),
        UnknownUnit { unit, .. } => format!(" ({unit:?} is not a unit)"),
        NumberOverflow => " (too large)".to_owned(),
        Empty => " (it is empty)".to_owned(),
        InvalidCharacter(_) | NumberExpected(_) => String::new(),
    }
}

/// What is wrong with the name of a listener, route, rule, policy, pool or
/// backend, if anything. Names go into metric labels, log lines and header
/// values (`${backend}`), so none may hold a control character (a header
/// carrying it would be refused at every request).
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("must not be empty")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters (tab, newline, ...)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_take_the_units_the_docs_promise() {
        let mut cx = Checker {
            problems: Vec::new(),
        };
        let mut t = |s: &str| cx.timeout("t", Some(s), Duration::ZERO);
        assert_eq!(t("250ms"), Duration::from_millis(250));
        assert_eq!(t("2s"), Duration::from_secs(2));
        assert_eq!(t("2sec"), Duration::from_secs(2));
        assert_eq!(t("1m30s"), Duration::from_secs(90));
        assert_eq!(t("5min"), Duration::from_secs(300));
        assert_eq!(t("1h"), Duration::from_secs(3600));
        assert_eq!(t("2hours"), Duration::from_secs(7200));
        assert_eq!(t("1d"), Duration::from_secs(86400));
        assert_eq!(t("10us"), Duration::from_micros(10));
        assert_eq!(t("10ns"), Duration::from_nanos(10));
        assert_eq!(t("100years"), MAX_DURATION);
        assert!(cx.problems.is_empty(), "{:?}", cx.problems);
    }

    #[test]
    fn a_duration_is_at_most_a_hundred_years() {
        let mut cx = Checker {
            problems: Vec::new(),
        };
        // Longer would overflow the clock it is added to: refused, and the
        // default used (here zero).
        assert_eq!(
            cx.timeout("t", Some("300000000000y"), Duration::ZERO),
            Duration::ZERO
        );
        assert_eq!(
            cx.timeout("t", Some("101y"), Duration::ZERO),
            Duration::ZERO
        );
        assert_eq!(
            cx.problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>(),
            [
                "\"300000000000y\" is longer than 100 years",
                "\"101y\" is longer than 100 years"
            ]
        );
    }

    #[test]
    fn duration_errors_speak_the_files_words() {
        let mut cx = Checker {
            problems: Vec::new(),
        };
        for bad in ["5 parsecs", "10", "", "1h x", "99999999999999999999s"] {
            cx.timeout("t", Some(bad), Duration::ZERO);
        }
        let messages: Vec<&str> = cx.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(
            messages[0]
                .starts_with("\"5 parsecs\" is not a duration (\"parsecs\" is not a unit); "),
            "{messages:?}"
        );
        assert!(
            messages[1].starts_with("\"10\" is not a duration (a number needs a unit); "),
            "{messages:?}"
        );
        assert!(
            messages[2].starts_with("\"\" is not a duration (it is empty); "),
            "{messages:?}"
        );
        assert!(messages[4].contains("(too large)"), "{messages:?}");
        for m in messages {
            assert!(!m.contains(" at "), "parser internals in {m:?}");
        }
    }
}
