//! `weir explain` with a request: what an l7 route does with it, in the
//! order the proxy does it (`proxy.rs`), and why. Reads only: policies
//! count no refusal, no authentication service is asked, no backend is
//! picked.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use weir_core::l7::{HttpQuestion, RulesExplained};
use weir_core::server::RouteVerdict;

use crate::route::RouteState;

pub(crate) fn explain(state: &RouteState, q: &HttpQuestion<'_>) -> RulesExplained {
    let mut out = RulesExplained {
        rules: Vec::new(),
        rule: None,
        pool: None,
        notes: Vec::new(),
        refused: true,
    };
    let Ok(method) = Method::from_bytes(q.method.as_bytes()) else {
        out.notes
            .push(format!("{:?} is not a method: answered 400", q.method));
        return out;
    };
    let host = match q.host.filter(|h| !h.is_empty()) {
        None => None,
        Some(h) => match crate::rules::normalize_host(h) {
            Some(name) => Some(name.into_owned()),
            None => {
                out.notes
                    .push(format!("host {h:?} is not a host name: answered 400"));
                return out;
            }
        },
    };
    if let Some(refusal) = framing_refusal(q.headers, state.max_body_bytes) {
        out.notes.push(refusal);
        return out;
    }
    let (path, query) = match q.path.split_once('?') {
        Some((p, query)) => (p, Some(query)),
        None => (q.path, None),
    };
    let path = match weir_wire::path::normalize(path, state.encoded_slashes) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            out.notes
                .push(format!("path {path:?} is refused ({e}): answered 400"));
            return out;
        }
    };
    if path != q.path.split('?').next().unwrap_or_default() {
        out.notes.push(format!(
            "matched, and forwarded, with the normal form of its path: {path:?}"
        ));
    }
    let bare = weir_wire::path::without_parameters(&path);
    if let Some(b) = &bare {
        out.notes.push(format!(
            "rules and policies read it without its parameters, as a servlet container does: {b:?}"
        ));
    }
    // Past the refusals that come before a misdirected host's 421.
    out.refused = false;
    let matching = bare.as_deref().unwrap_or(&path);
    let mut headers = HeaderMap::new();
    for (name, value) in q.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => out.notes.push(format!(
                "header {name:?} left out: not a header a client can send"
            )),
        }
    }
    let mut chosen: Option<&crate::rules::Rule> = None;
    for r in &state.rules {
        let (matched, why) = match chosen {
            Some(first) => (
                false,
                format!("not reached: rule {:?} takes the request first", first.name),
            ),
            None => match r.verdict(
                &method,
                host.as_deref(),
                matching,
                &headers,
                q.client,
                query,
            ) {
                Ok(why) => {
                    chosen = Some(r);
                    (true, why)
                }
                Err(why) => (false, why),
            },
        };
        out.rules.push(RouteVerdict {
            name: r.name.to_string(),
            matched,
            why,
        });
    }
    let Some(rule) = chosen else {
        out.notes
            .push("no rule takes it: answered 404 (no_rule)".to_owned());
        return out;
    };
    out.rule = Some(rule.name.to_string());
    let view = crate::policy::Request {
        method: &method,
        host: host.as_deref(),
        path: matching,
        headers: &headers,
        client: q.client,
    };
    if let Some(p) = state
        .policies
        .iter()
        .chain(&rule.policies)
        .find(|p| p.refuses(&view))
    {
        out.notes.push(format!(
            "refused by policy {:?}: answered {}",
            p.name,
            p.status.as_u16()
        ));
        return out;
    }
    if let Some(r) = &rule.redirect {
        let moved = rule
            .rewrite
            .as_ref()
            .map_or_else(|| path.clone(), |rw| rw.apply(&path));
        let target = match query {
            Some(q) => format!("{moved}?{q}"),
            None => moved,
        };
        let proto = if state.tls.is_some() { "https" } else { "http" };
        match r.location(proto, host.as_deref(), &target) {
            Some(to) => out.notes.push(format!(
                "redirected: answered {} to {}",
                r.status.as_u16(),
                String::from_utf8_lossy(to.as_bytes())
            )),
            None => out
                .notes
                .push("a redirect without a host to send the client to: answered 400".to_owned()),
        }
        return out;
    }
    if let Some(gate) = rule.auth.as_ref().or(state.auth.as_ref()) {
        out.notes.push(format!(
            "the authentication service at {} is asked first; a refusal is passed on",
            gate.url()
        ));
    }
    if let Some(rw) = &rule.rewrite {
        out.notes
            .push(format!("the backend gets the path {:?}", rw.apply(&path)));
    }
    match state.pools.get(rule.pool) {
        Some(p) => {
            if let Some(s) = &p.sticky {
                out.notes.push(sticky_note(s, &headers, &p.pool));
            }
            out.pool = Some(p.pool.name.clone());
        }
        None => out
            .notes
            .push("its pool has no backend: answered 503".to_owned()),
    }
    out
}

/// What the pool's sticky cookie, if the request carries one, does with it.
fn sticky_note(
    s: &crate::sticky::StickyCookie,
    headers: &HeaderMap,
    pool: &weir_core::pool::Pool,
) -> String {
    let name = s.name();
    if !s.carried(headers) {
        return format!(
            "no sticky cookie {name:?}: the pool picks a backend, and the answer sets the cookie \
             naming it"
        );
    }
    match s
        .named(headers, pool)
        .and_then(|i| Some((i, pool.backends.get(i)?)))
    {
        Some((i, b)) if pool.keeps(i) => format!(
            "its sticky cookie {name:?} names backend {:?}, which takes it{}",
            b.name,
            if pool.limited() {
                " (when it is at its connection limit, the request waits for it up to the \
                 pool's queue_timeout, or moves if the queue holds max_queue)"
            } else {
                ""
            }
        ),
        Some((_, b)) => {
            use weir_core::pool::StateLabel;
            let why = match b.state_label() {
                // Able, and still not taken: a lower tier serves, or it is
                // ejected as an outlier.
                StateLabel::Up => "a lower tier serves, or it is ejected",
                // Drained but not taking it: its health says why, if it is not up.
                StateLabel::Drain => match b.health() {
                    weir_core::health::Health::Up => "a lower tier serves, or it is ejected",
                    h => h.as_str(),
                },
                other => other.as_str(),
            };
            format!(
                "its sticky cookie {name:?} names backend {:?}, which cannot take it now ({why}): \
                 the pool picks another, and the answer sets the cookie naming it",
                b.name
            )
        }
        None => format!(
            "its sticky cookie {name:?} names no backend of the pool: the pool picks one, and the \
             answer sets the cookie naming it"
        ),
    }
}

/// What the proxy answers, before any rule, to a request with these headers
/// for its body (see `proxy::admissible`): both framings or two lengths are
/// refused (400), and a declared length past `max_body_bytes` is 413.
fn framing_refusal(headers: &[(String, String)], max_body: Option<u64>) -> Option<String> {
    let lengths: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim())
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    if chunked && !lengths.is_empty() {
        return Some(
            "Content-Length with Transfer-Encoding (a smuggling attempt): answered 400".to_owned(),
        );
    }
    if lengths.len() > 1 {
        return Some("two Content-Length headers: answered 400".to_owned());
    }
    let declared = lengths.first()?.parse::<u64>().ok()?;
    let limit = max_body?;
    (declared > limit).then(|| {
        format!(
            "a body of {declared} bytes is past the route's max_body_bytes ({limit}): \
             answered 413 (body_too_large)"
        )
    })
}
