//! HTTP rules: which pool a request goes to. Pure: a request's method, host,
//! path and headers in, the first rule whose conditions all hold out.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use weir_config::HttpMatch;

/// One rule, ready to match.
#[derive(Debug)]
pub struct Rule {
    pub name: std::sync::Arc<str>,
    /// Lower-case exact names or `*.` wildcards of one label.
    host: Vec<String>,
    path_prefix: Option<String>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Index of the rule's pool among the route's pools.
    pub pool: usize,
    /// Checked after the route's, for the requests this rule takes.
    pub(crate) policies: Vec<crate::policy::Policy>,
    /// This rule's forward authentication, instead of the route's.
    pub(crate) auth: Option<crate::auth::Gate>,
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
            path_prefix: m.path_prefix.clone(),
            methods,
            headers,
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
    /// the request's host as [`normalize_host`] returns it.
    pub fn matches(&self, method: &Method, host: Option<&str>, path: &str, h: &HeaderMap) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if let Some(prefix) = &self.path_prefix
            && !path.starts_with(prefix.as_str())
        {
            return false;
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

/// The first rule of `rules` that matches.
pub fn first<'r>(
    rules: &'r [Rule],
    method: &Method,
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> Option<&'r Rule> {
    rules
        .iter()
        .find(|r| r.matches(method, host, path, headers))
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
        assert!(r.matches(&Method::GET, host.as_deref(), "/v1/users", &h));
        assert!(r.matches(&Method::POST, Some("a.api.example.com"), "/v1/", &h));
        assert!(!r.matches(&Method::PUT, host.as_deref(), "/v1/users", &h));
        assert!(!r.matches(&Method::GET, host.as_deref(), "/v2/users", &h));
        assert!(!r.matches(&Method::GET, Some("a.b.api.example.com"), "/v1/", &h));
        assert!(!r.matches(&Method::GET, None, "/v1/", &h));
        assert!(!r.matches(&Method::GET, host.as_deref(), "/v1/", &HeaderMap::new()));
    }

    #[test]
    fn a_rule_without_conditions_takes_everything() {
        let r = rule(&[], None, &[], &[]);
        assert!(r.matches(&Method::DELETE, None, "/", &HeaderMap::new()));
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
            first(&rules, &Method::GET, None, "/api/x", &h).map(|r| r.pool),
            Some(0)
        );
        assert_eq!(
            first(&rules, &Method::GET, None, "/web", &h).map(|r| r.pool),
            Some(1)
        );
        assert!(first(&rules[..1], &Method::GET, None, "/web", &h).is_none());
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
