//! `policies = [...]` of an l7 route or rule: each has a name and exactly
//! one check (`block_user_agent`, `require_header`, `deny` or `allow`),
//! with an optional status and body for the requests it refuses.

use std::collections::HashMap;

use super::Checker;
use crate::model::{HttpPolicy, Pattern, PolicyCheck, PolicyMatch};
use crate::raw::{RawPolicy, RawPolicyMatch};

/// Patterns compiled from the config are bounded: linear-time matching, and
/// a size limit so a pasted monster fails the load, not the memory.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

impl Checker {
    /// The policies at `path`; `names` collects every policy name of the
    /// route, which must differ (they label one metric).
    pub(super) fn policies(
        &mut self,
        path: &str,
        raw: Option<&Vec<RawPolicy>>,
        names: &mut HashMap<String, String>,
    ) -> Vec<HttpPolicy> {
        let Some(raw) = raw else {
            return Vec::new();
        };
        raw.iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let path = format!("{path}[{i}]");
                self.name(&format!("{path}.name"), &p.name);
                if let Some(first) = names.get(&p.name) {
                    self.push(
                        format!("{path}.name"),
                        format!(
                            "duplicate policy name {:?} in this route (also {first})",
                            p.name
                        ),
                    );
                } else {
                    names.insert(p.name.clone(), path.clone());
                }
                self.policy(&path, p)
            })
            .collect()
    }

    fn policy(&mut self, path: &str, p: &RawPolicy) -> Option<HttpPolicy> {
        let kinds = [
            p.block_user_agent.is_some() || p.block_user_agent_regex.is_some(),
            p.require_header.is_some(),
            p.deny.is_some(),
            p.allow.is_some(),
        ];
        let given = kinds.iter().filter(|k| **k).count();
        if given != 1 {
            self.push(
                path,
                "a policy takes exactly one of `block_user_agent` (and/or \
                 `block_user_agent_regex`), `require_header`, `deny` and `allow`",
            );
            return None;
        }
        if (p.require_value.is_some() || p.require_regex.is_some()) && p.require_header.is_none() {
            self.push(
                path,
                "`require_value` and `require_regex` need `require_header`",
            );
        }
        let check = if kinds[0] {
            if p.block_user_agent.as_ref().is_some_and(Vec::is_empty)
                && p.block_user_agent_regex.is_none()
            {
                // Like `deny = {}`: a policy that could never refuse anyone.
                self.push(
                    format!("{path}.block_user_agent"),
                    "an empty list blocks nothing; name at least one user agent",
                );
            }
            for (i, ua) in p.block_user_agent.iter().flatten().enumerate() {
                if ua.trim().is_empty() {
                    // Contained in every user agent: it would refuse them all.
                    self.push(
                        format!("{path}.block_user_agent[{i}]"),
                        "an empty entry would block every client that sends a User-Agent",
                    );
                }
            }
            PolicyCheck::BlockUserAgent {
                contains: p
                    .block_user_agent
                    .iter()
                    .flatten()
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
                pattern: p
                    .block_user_agent_regex
                    .as_ref()
                    .and_then(|r| self.pattern(&format!("{path}.block_user_agent_regex"), r)),
            }
        } else if let Some(name) = &p.require_header {
            if name.is_empty() || !name.bytes().all(super::http::is_tchar) {
                self.push(
                    format!("{path}.require_header"),
                    format!("{name:?} is not a header name"),
                );
            } else if name.eq_ignore_ascii_case("host") {
                // Every request has a host (weir refuses one without), and
                // HTTP/2 carries it as `:authority`, not as a header.
                self.push(
                    format!("{path}.require_header"),
                    "every request carries a host, as `Host` or HTTP/2's `:authority`: \
                     to admit some hosts only, use a policy's `allow = { host = [...] }`",
                );
            }
            PolicyCheck::RequireHeader {
                name: name.to_ascii_lowercase(),
                value: p.require_value.clone(),
                pattern: p
                    .require_regex
                    .as_ref()
                    .and_then(|r| self.pattern(&format!("{path}.require_regex"), r)),
            }
        } else if let Some(m) = &p.deny {
            PolicyCheck::Deny(self.policy_match(&format!("{path}.deny"), m))
        } else {
            let m = p.allow.as_ref()?;
            PolicyCheck::Allow(self.policy_match(&format!("{path}.allow"), m))
        };
        let status = self.int(&format!("{path}.status"), p.status, 403, 400, Some(599));
        if let Some(body) = &p.body
            && body.len() > 64 * 1024
        {
            self.push(format!("{path}.body"), "at most 64 KiB");
        }
        Some(HttpPolicy {
            name: p.name.clone(),
            check,
            status,
            body: p.body.clone(),
        })
    }

    fn policy_match(&mut self, path: &str, m: &RawPolicyMatch) -> PolicyMatch {
        let given = !m.methods.is_empty()
            || !m.path_prefix.is_empty()
            || m.path_regex.is_some()
            || !m.host.is_empty()
            || !m.source.is_empty();
        if !given {
            self.push(
                path,
                "names no condition: give `methods`, `path_prefix`, `path_regex`, `host` or \
                 `source`",
            );
        }
        let host_match = self.http_match(
            path,
            &crate::raw::RawHttpMatch {
                host: m.host.clone(),
                methods: m.methods.clone(),
                ..Default::default()
            },
        );
        for (i, p) in m.path_prefix.iter().enumerate() {
            self.normal_path(&format!("{path}.path_prefix[{i}]"), p);
        }
        PolicyMatch {
            methods: host_match.methods,
            path_prefix: m.path_prefix.clone(),
            path_regex: m
                .path_regex
                .as_ref()
                .and_then(|r| self.pattern(&format!("{path}.path_regex"), r)),
            host: host_match.host,
            source: self.sources(&format!("{path}.source"), &m.source),
        }
    }

    pub(super) fn pattern(&mut self, path: &str, re: &str) -> Option<Pattern> {
        match regex::RegexBuilder::new(re)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
        {
            Ok(r) => Some(Pattern(r)),
            Err(e) => {
                self.push(path, format!("not a regular expression: {e}"));
                None
            }
        }
    }
}
