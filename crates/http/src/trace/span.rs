//! The spans weir records for a sampled request: the request itself (a
//! server span, child of the client's span when the trace is continued) and
//! the calls made for it (client spans, children of the request's): the
//! authentication call and the upstream request. Attribute names follow the
//! OpenTelemetry HTTP conventions where one exists, `weir.*` otherwise.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Context;
use super::export::Exporter;

/// The longest text attribute, in bytes (longer ones are cut).
pub(crate) const MAX_VALUE: usize = 2048;

/// Query parameters whose values are secrets (a signed URL's signature, a
/// bearer token in the query): their values are sent as `REDACTED`, as the
/// OpenTelemetry HTTP conventions ask for `url.query`.
const SECRET_PARAMETERS: [&str; 5] = [
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "access_token",
];

/// `query` with the values of [`SECRET_PARAMETERS`] replaced by `REDACTED`.
pub(crate) fn scrubbed_query(query: &str) -> std::borrow::Cow<'_, str> {
    let secret = |pair: &str| {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        SECRET_PARAMETERS.contains(&key)
    };
    if !query.split('&').any(|p| p.contains('=') && secret(p)) {
        return std::borrow::Cow::Borrowed(query);
    }
    let pairs: Vec<std::borrow::Cow<'_, str>> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if secret(p) => format!("{k}=REDACTED").into(),
            _ => p.into(),
        })
        .collect();
    std::borrow::Cow::Owned(pairs.join("&"))
}

/// Who is at the other end of a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// weir serving a client.
    Server,
    /// weir calling a service.
    Client,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
}

/// One finished span, on its way to the exporter.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) flags: u8,
    pub(crate) kind: Kind,
    pub(crate) name: String,
    /// Nanoseconds since the Unix epoch.
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) error: bool,
    pub(crate) attributes: Vec<(&'static str, Value)>,
}

impl Span {
    /// A text attribute, cut to [`MAX_VALUE`] bytes: a client's path, query
    /// or `User-Agent` may be as long as `max_header_bytes`, and a few such
    /// spans would fill a batch past what a collector takes.
    pub(crate) fn str(&mut self, key: &'static str, value: impl Into<String>) {
        let mut value = value.into();
        if value.len() > MAX_VALUE {
            let mut end = MAX_VALUE;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
        }
        self.attributes.push((key, Value::Str(value)));
    }

    pub(crate) fn int(&mut self, key: &'static str, value: impl Into<i64>) {
        self.attributes.push((key, Value::Int(value.into())));
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What a sampled request being exported keeps for its spans.
#[derive(Debug)]
pub(crate) struct Recording {
    pub(crate) exporter: Arc<Exporter>,
    pub(crate) cx: Context,
    /// When the request began (Unix nanoseconds).
    pub(crate) start: u64,
    /// The upstream call's span (its id is in the `traceparent` sent).
    pub(crate) upstream: [u8; 8],
    /// When the first try to reach a backend began.
    pub(crate) upstream_start: Option<u64>,
    /// The backend's status, when one answered.
    pub(crate) upstream_status: Option<u16>,
    /// Backends tried.
    pub(crate) attempts: u32,
}

impl Recording {
    pub(crate) fn new(exporter: Arc<Exporter>, cx: Context) -> Recording {
        Recording {
            exporter,
            cx,
            start: now(),
            upstream: super::span_id(),
            upstream_start: None,
            upstream_status: None,
            attempts: 0,
        }
    }

    /// A span of this request's trace; `parent` `None`: the request's own.
    pub(crate) fn span(&self, kind: Kind, name: String, start: u64, end: u64) -> Span {
        let (span_id, parent) = match kind {
            Kind::Server => (self.cx.span, self.cx.parent),
            Kind::Client => (self.upstream, Some(self.cx.span)),
        };
        Span {
            trace_id: self.cx.trace_id,
            span_id,
            parent,
            flags: self.cx.flags,
            kind,
            name,
            start,
            end: end.max(start),
            error: false,
            attributes: Vec::with_capacity(12),
        }
    }

    /// The authentication call that took `took` and ended now, as span
    /// `id`.
    pub(crate) fn auth_call(&self, id: [u8; 8], url: &str, result: &'static str, took: Duration) {
        let end = now();
        let mut s = self.span(
            Kind::Client,
            "auth".to_owned(),
            end.saturating_sub(nanos(took)),
            end,
        );
        s.span_id = id;
        s.str("url.full", url);
        s.str("weir.auth.result", result);
        s.error = matches!(result, "error" | "timeout");
        self.exporter.submit(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_a_query_are_redacted() {
        assert_eq!(scrubbed_query("a=1&b=2"), "a=1&b=2");
        assert!(matches!(
            scrubbed_query("a=1&sig"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            scrubbed_query("X-Goog-Signature=s3cret&page=2&sig=abc&access_token=t"),
            "X-Goog-Signature=REDACTED&page=2&sig=REDACTED&access_token=REDACTED"
        );
        assert_eq!(
            scrubbed_query("AWSAccessKeyId=AK&Signature=x%2By&Expires=1"),
            "AWSAccessKeyId=REDACTED&Signature=REDACTED&Expires=1"
        );
        // Only the names themselves: a longer key is someone else's.
        assert_eq!(scrubbed_query("signature=x&sigma=1"), "signature=x&sigma=1");
    }

    #[test]
    fn long_text_attributes_are_cut_at_a_character() {
        let mut s = Span {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent: None,
            flags: 1,
            kind: Kind::Server,
            name: "GET r".into(),
            start: 0,
            end: 0,
            error: false,
            attributes: Vec::new(),
        };
        s.str("url.path", "é".repeat(MAX_VALUE));
        s.str("url.query", "a=1");
        let Value::Str(path) = &s.attributes[0].1 else {
            panic!("text")
        };
        assert!(path.len() <= MAX_VALUE && path.len() > MAX_VALUE - 2);
        assert!(path.chars().all(|c| c == 'é'));
        assert_eq!(s.attributes[1].1, Value::Str("a=1".into()));
    }
}
