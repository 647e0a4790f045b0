//! HTTP rules: which pool a request goes to. Pure: a request's method, host,
//! path, headers and client address in, the first rule whose conditions all
//! hold out.

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use weir_config::HttpMatch;

/// One rule, ready to match.
#[derive(Debug)]
pub struct Rule {
    pub name: std::sync::Arc<str>,
    /// Lower-case exact names or `*.` wildcards of one label.
    host: Vec<String>,
    path: Vec<String>,
    path_prefix: Option<String>,
    path_regex: Option<regex::Regex>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    source: Vec<ipnet::IpNet>,
    query: Vec<(String, String)>,
    /// Index of the rule's pool among the route's pools.
    pub pool: usize,
    /// Checked after the route's, for the requests this rule takes.
    pub(crate) policies: Vec<crate::policy::Policy>,
    /// This rule's forward authentication, instead of the route's.
    pub(crate) auth: Option<std::sync::Arc<crate::auth::Gate>>,
    /// The path the backend gets (`strip_prefix`, `add_prefix`).
    pub(crate) rewrite: Option<crate::rewrite::PathRewrite>,
    /// Answer with a redirect instead (`pool` is then unused).
    pub(crate) redirect: Option<crate::redirect::Redirect>,
    /// The operator's header changes, after the route's.
    pub(crate) request_headers: crate::headers::HeaderOps,
    pub(crate) response_headers: crate::headers::HeaderOps,
}

impl Rule {
    /// A rule from its validated config; `pool` indexes the route's pools.
    /// `None` when a name or value cannot be used (validation prevents it).
    pub fn new(name: &str, m: &HttpMatch, pool: usize) -> Option<Rule> {
        let methods = m
            .methods
            .iter()
            .map(|s| Method::from_bytes(s.as_bytes()).ok())
            .collect::<Option<Vec<_>>>()?;
        let headers = m
            .headers
            .iter()
            .map(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Rule {
            name: std::sync::Arc::from(name),
            host: m.host.clone(),
            path: m.path.clone(),
            path_prefix: m.path_prefix.clone(),
            path_regex: m.path_regex.as_ref().map(|p| p.0.clone()),
            methods,
            headers,
            source: m.source.clone(),
            query: m.query.clone(),
            pool,
            policies: Vec::new(),
            auth: None,
            redirect: None,
            rewrite: None,
            request_headers: crate::headers::HeaderOps::default(),
            response_headers: crate::headers::HeaderOps::default(),
        })
    }

    /// Whether every condition of the rule holds for the request. `host` is
    /// the request's host as [`normalize_host`] returns it, `path` the
    /// normalised path without the query.
    pub fn matches(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        h: &HeaderMap,
        client: IpAddr,
        query: Option<&str>,
    ) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if !self
            .query
            .iter()
            .all(|(n, v)| query.is_some_and(|q| weir_wire::query::has(q, n, v)))
        {
            return false;
        }
        if !self.path.is_empty() && !self.path.iter().any(|p| p == path) {
            return false;
        }
        if let Some(prefix) = &self.path_prefix
            && !path.starts_with(prefix.as_str())
        {
            return false;
        }
        if let Some(re) = &self.path_regex
            && !re.is_match(path)
        {
            return false;
        }
        if !self.source.is_empty() {
            let ip = client.to_canonical();
            if !self.source.iter().any(|n| n.contains(&ip)) {
                return false;
            }
        }
        if !self.host.is_empty() {
            let Some(host) = host else {
                return false;
            };
            if !self
                .host
                .iter()
                .any(|p| weir_wire::name::sni_matches(p, host))
            {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| h.get_all(name).iter().any(|v| v == value))
    }
}

impl Rule {
    /// [`Rule::matches`] in words, for `weir explain`: `Ok` with the
    /// conditions that hold, `Err` with the first that does not.
    pub fn verdict(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        h: &HeaderMap,
        client: IpAddr,
        query: Option<&str>,
    ) -> Result<String, String> {
        let mut held = Vec::new();
        if !self.methods.is_empty() {
            let list = join(self.methods.iter().map(Method::as_str));
            if !self.methods.contains(method) {
                return Err(format!("method {method} is not in [{list}]"));
            }
            held.push(format!("method {method} is in [{list}]"));
        }
        if !self.path.is_empty() {
            let list = join(self.path.iter().map(String::as_str));
            if !self.path.iter().any(|p| p == path) {
                return Err(format!("path {path:?} is not in [{list}]"));
            }
            held.push(format!("path {path:?} is in [{list}]"));
        }
        if let Some(prefix) = &self.path_prefix {
            if !path.starts_with(prefix.as_str()) {
                return Err(format!("path {path:?} does not start with {prefix:?}"));
            }
            held.push(format!("path {path:?} starts with {prefix:?}"));
        }
        if let Some(re) = &self.path_regex {
            if !re.is_match(path) {
                return Err(format!("path {path:?} does not match /{}/", re.as_str()));
            }
            held.push(format!("path {path:?} matches /{}/", re.as_str()));
        }
        if !self.source.is_empty() {
            let ip = client.to_canonical();
            let list = self
                .source
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            if !self.source.iter().any(|n| n.contains(&ip)) {
                return Err(format!("client {ip} is not in [{list}]"));
            }
            held.push(format!("client {ip} is in [{list}]"));
        }
        if !self.host.is_empty() {
            let list = join(self.host.iter().map(String::as_str));
            let Some(host) = host else {
                return Err(format!("needs a host in [{list}]; the request has none"));
            };
            if !self
                .host
                .iter()
                .any(|p| weir_wire::name::sni_matches(p, host))
            {
                return Err(format!("host {host:?} is not in [{list}]"));
            }
            held.push(format!("host {host:?} is in [{list}]"));
        }
        for (name, value) in &self.query {
            if !query.is_some_and(|q| weir_wire::query::has(q, name, value)) {
                return Err(format!("no query parameter {name}={value:?}"));
            }
            held.push(format!("query parameter {name}={value:?}"));
        }
        for (name, value) in &self.headers {
            let v = String::from_utf8_lossy(value.as_bytes());
            if !h.get_all(name).iter().any(|x| x == value) {
                return Err(format!("no header {name}: {v}"));
            }
            held.push(format!("header {name}: {v}"));
        }
        Ok(if held.is_empty() {
            "no conditions: takes every request".to_owned()
        } else {
            held.join("; ")
        })
    }
}

fn join<S: AsRef<str>>(items: impl Iterator<Item = S>) -> String {
    items
        .map(|s| format!("{:?}", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first rule of `rules` that matches.
pub fn first<'r>(
    rules: &'r [Rule],
    method: &Method,
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
    client: IpAddr,
    query: Option<&str>,
) -> Option<&'r Rule> {
    rules
        .iter()
        .find(|r| r.matches(method, host, path, headers, client, query))
}

/// A request's host for matching: lower case, without the port and a final
/// dot; borrowed unless it had upper-case letters. `None` when it is empty
/// or not a host (see [`weir_wire::name::is_authority`]).
/// An IPv6 literal keeps its brackets (a rule's host never matches one).
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    host_name(raw, weir_wire::name::authority_host(raw.as_bytes())?)
}

/// [`normalize_host`] of `raw`, whose host part
/// [`weir_wire::name::authority_host`] found already.
pub(crate) fn host_name(raw: &str, (len, upper): (usize, bool)) -> Option<Cow<'_, str>> {
    let name = raw.get(..len)?;
    Some(if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn rule(
        host: &[&str],
        prefix: Option<&str>,
        methods: &[&str],
        headers: &[(&str, &str)],
    ) -> Rule {
        let m = HttpMatch {
            host: host.iter().map(|s| (*s).to_owned()).collect(),
            path_prefix: prefix.map(str::to_owned),
            methods: methods.iter().map(|s| (*s).to_owned()).collect(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            ..HttpMatch::default()
        };
        Rule::new("r", &m, 0).expect("valid rule")
    }

    #[test]
    fn every_condition_must_hold() {
        let r = rule(
            &["api.example.com", "*.api.example.com"],
            Some("/v1/"),
            &["GET", "POST"],
            &[("x-canary", "1")],
        );
        let mut h = HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("1"));
        let host = normalize_host("API.example.com:8443");
        assert!(r.matches(&Method::GET, host.as_deref(), "/v1/users", &h, CLIENT, None));
        assert!(r.matches(
            &Method::POST,
            Some("a.api.example.com"),
            "/v1/",
            &h,
            CLIENT,
            None
        ));
        assert!(!r.matches(&Method::PUT, host.as_deref(), "/v1/users", &h, CLIENT, None));
        assert!(!r.matches(&Method::GET, host.as_deref(), "/v2/users", &h, CLIENT, None));
        assert!(!r.matches(
            &Method::GET,
            Some("a.b.api.example.com"),
            "/v1/",
            &h,
            CLIENT,
            None
        ));
        assert!(!r.matches(&Method::GET, None, "/v1/", &h, CLIENT, None));
        assert!(!r.matches(
            &Method::GET,
            host.as_deref(),
            "/v1/",
            &HeaderMap::new(),
            CLIENT,
            None
        ));
    }

    /// Exact paths, a path pattern and the client's network.
    #[test]
    fn paths_patterns_and_sources() {
        let m = HttpMatch {
            path: vec!["/login".into(), "/logout".into()],
            ..HttpMatch::default()
        };
        let r = Rule::new("r", &m, 0).expect("valid rule");
        let h = HeaderMap::new();
        assert!(r.matches(&Method::GET, None, "/login", &h, CLIENT, None));
        assert!(r.matches(&Method::GET, None, "/logout", &h, CLIENT, None));
        assert!(!r.matches(&Method::GET, None, "/login/", &h, CLIENT, None));
        assert!(!r.matches(&Method::GET, None, "/", &h, CLIENT, None));
        let m = HttpMatch {
            path_regex: Some(weir_config::Pattern(
                regex::Regex::new(r"\.(php|asp)$").expect("regex"),
            )),
            source: vec!["192.0.2.0/24".parse().expect("net")],
            ..HttpMatch::default()
        };
        let r = Rule::new("r", &m, 0).expect("valid rule");
        assert!(r.matches(&Method::GET, None, "/wp/index.php", &h, CLIENT, None));
        assert!(!r.matches(&Method::GET, None, "/index.html", &h, CLIENT, None));
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("ip");
        assert!(r.matches(&Method::GET, None, "/a.asp", &h, mapped, None));
        let other: IpAddr = "198.51.100.1".parse().expect("ip");
        assert!(!r.matches(&Method::GET, None, "/a.asp", &h, other, None));
    }

    /// The verdict says which condition failed, or which held, and agrees
    /// with `matches`.
    #[test]
    fn verdicts_say_why() {
        let r = rule(
            &["api.example.com"],
            Some("/v1/"),
            &["GET"],
            &[("x-canary", "1")],
        );
        let mut h = HeaderMap::new();
        let host = Some("api.example.com");
        let why = |m: &Method, host, path, h: &HeaderMap| {
            let v = r.verdict(m, host, path, h, CLIENT, None);
            assert_eq!(
                v.is_ok(),
                r.matches(m, host, path, h, CLIENT, None),
                "{v:?}"
            );
            v
        };
        assert_eq!(
            why(&Method::POST, host, "/v1/", &h),
            Err("method POST is not in [\"GET\"]".to_owned())
        );
        assert_eq!(
            why(&Method::GET, host, "/v2/", &h),
            Err("path \"/v2/\" does not start with \"/v1/\"".to_owned())
        );
        assert_eq!(
            why(&Method::GET, None, "/v1/", &h),
            Err("needs a host in [\"api.example.com\"]; the request has none".to_owned())
        );
        assert_eq!(
            why(&Method::GET, host, "/v1/", &h),
            Err("no header x-canary: 1".to_owned())
        );
        h.insert("x-canary", HeaderValue::from_static("1"));
        let held = why(&Method::GET, host, "/v1/a", &h).expect("matches");
        assert!(held.starts_with("method GET is in"), "{held}");
        assert!(held.ends_with("header x-canary: 1"), "{held}");
        let all = rule(&[], None, &[], &[]);
        assert_eq!(
            all.verdict(&Method::GET, None, "/", &h, CLIENT, None),
            Ok("no conditions: takes every request".to_owned())
        );
    }

    /// Query parameters, compared decoded; every one must be there.
    #[test]
    fn query_parameters() {
        let m = HttpMatch {
            query: vec![
                ("env".into(), "canary one".into()),
                ("v".into(), "2".into()),
            ],
            ..HttpMatch::default()
        };
        let r = Rule::new("r", &m, 0).expect("valid rule");
        let h = HeaderMap::new();
        let q = |query| r.matches(&Method::GET, None, "/", &h, CLIENT, query);
        assert!(q(Some("v=2&env=canary+one")));
        assert!(q(Some("env=canary%20one&x=1&v=2")));
        assert!(!q(Some("env=canary+one")));
        assert!(!q(Some("env=canary&v=2")));
        assert!(!q(None));
        assert_eq!(
            r.verdict(&Method::GET, None, "/", &h, CLIENT, Some("v=2")),
            Err("no query parameter env=\"canary one\"".to_owned())
        );
    }

    #[test]
    fn a_rule_without_conditions_takes_everything() {
        let r = rule(&[], None, &[], &[]);
        assert!(r.matches(&Method::DELETE, None, "/", &HeaderMap::new(), CLIENT, None));
    }

    #[test]
    fn the_first_match_wins() {
        let rules = [
            rule(&[], Some("/api/"), &[], &[]),
            rule(&[], None, &[], &[]),
        ];
        let rules: Vec<Rule> = rules
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.pool = i;
                r
            })
            .collect();
        let h = HeaderMap::new();
        assert_eq!(
            first(&rules, &Method::GET, None, "/api/x", &h, CLIENT, None).map(|r| r.pool),
            Some(0)
        );
        assert_eq!(
            first(&rules, &Method::GET, None, "/web", &h, CLIENT, None).map(|r| r.pool),
            Some(1)
        );
        assert!(first(&rules[..1], &Method::GET, None, "/web", &h, CLIENT, None).is_none());
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            normalize_host("Example.COM").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com:80").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host(":80"), None);
    }
}
