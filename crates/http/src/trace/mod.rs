//! W3C Trace Context on l7 routes (`[tracing]`): each request gets weir's
//! own span, and each call weir makes for it (the upstream request, the
//! authentication call) a child span whose id is the parent in the
//! `traceparent` that call carries. The one sent upstream replaces the
//! client's (never a second header). A valid incoming `traceparent`
//! continues its trace and keeps its `tracestate`; none, several or an
//! invalid one start a new trace and drop `tracestate`. The sampled flag
//! follows the client's when `trust_client_sampling`, else `sample_ratio`.
//! With `[tracing.otlp]`, the spans of sampled requests are exported
//! (`span`, `export`).

pub(crate) mod export;
pub(crate) mod span;

use http::{HeaderMap, HeaderValue};
use weir_config::Tracing;
use weir_wire::traceparent::{SAMPLED, TraceParent, parse};

pub(crate) const TRACEPARENT: &str = "traceparent";
/// Trace Context level 2's flag: the trace id's last 7 bytes are random.
/// It and [`SAMPLED`] are the flags weir knows; the others it must send as
/// zero.
const RANDOM: u8 = 0x02;
pub(crate) const TRACESTATE: &str = "tracestate";

/// A request's place in its trace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    pub(crate) trace_id: [u8; 16],
    pub(crate) flags: u8,
    /// The client's span, when its trace is continued.
    pub(crate) parent: Option<[u8; 8]>,
    /// weir's span for the request.
    pub(crate) span: [u8; 8],
}

impl Context {
    pub(crate) fn continued(&self) -> bool {
        self.parent.is_some()
    }

    pub(crate) fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `traceparent` of a call whose span is `span`.
    pub(crate) fn header(&self, span: [u8; 8]) -> Option<HeaderValue> {
        let t = TraceParent {
            trace_id: self.trace_id,
            parent_id: span,
            flags: self.flags,
        };
        HeaderValue::from_bytes(&t.format()).ok()
    }
}

/// The trace context of a request with `headers`.
pub(crate) fn next(t: &Tracing, headers: &HeaderMap) -> Context {
    let incoming = {
        let mut values = headers.get_all(TRACEPARENT).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => parse(v.as_bytes()),
            _ => None,
        }
    };
    let sample = || {
        if t.sample_ratio >= 1.0 || (t.sample_ratio > 0.0 && fastrand::f64() < t.sample_ratio) {
            SAMPLED
        } else {
            0
        }
    };
    match incoming {
        Some(p) => {
            let sampled = if t.trust_client_sampling {
                p.flags & SAMPLED
            } else {
                sample()
            };
            Context {
                trace_id: p.trace_id,
                flags: (p.flags & RANDOM) | sampled,
                parent: Some(p.parent_id),
                span: span_id(),
            }
        }
        None => {
            let trace_id = loop {
                let id = fastrand::u128(..);
                if id != 0 {
                    break id.to_be_bytes();
                }
            };
            Context {
                trace_id,
                flags: sample(),
                parent: None,
                span: span_id(),
            }
        }
    }
}

/// A new span id (never all zeroes, which W3C forbids).
pub(crate) fn span_id() -> [u8; 8] {
    loop {
        let n = fastrand::u64(..);
        if n != 0 {
            return n.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn cfg(ratio: f64, trust: bool) -> Tracing {
        Tracing {
            sample_ratio: ratio,
            trust_client_sampling: trust,
            otlp: None,
        }
    }

    #[test]
    fn a_valid_parent_is_continued_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
        let t = next(&cfg(0.0, true), &h);
        assert!(t.continued());
        assert_eq!(
            t.trace_id,
            parse(PARENT.as_bytes()).expect("valid").trace_id
        );
        assert_eq!(
            t.parent,
            Some(parse(PARENT.as_bytes()).expect("valid").parent_id)
        );
        assert_ne!(t.parent, Some(t.span));
        assert!(t.sampled(), "the client's flag is kept");
        let t = next(&cfg(0.0, false), &h);
        assert!(!t.sampled(), "at the edge, the ratio decides");
        // Flags weir does not know are sent on as zero; `random` is kept.
        let mut h = HeaderMap::new();
        let all = PARENT.replace("-01", "-ff");
        h.insert(TRACEPARENT, HeaderValue::from_str(&all).expect("value"));
        assert_eq!(next(&cfg(0.0, true), &h).flags, SAMPLED | RANDOM);
        assert_eq!(next(&cfg(0.0, false), &h).flags, RANDOM);
    }

    #[test]
    fn none_several_or_invalid_start_a_trace() {
        let mut h = HeaderMap::new();
        let a = next(&cfg(1.0, true), &h);
        assert!(!a.continued() && a.sampled());
        h.append(TRACEPARENT, HeaderValue::from_static(PARENT));
        h.append(TRACEPARENT, HeaderValue::from_static(PARENT));
        assert!(!next(&cfg(1.0, true), &h).continued());
        h.insert(TRACEPARENT, HeaderValue::from_static("00-bad"));
        let b = next(&cfg(0.0, true), &h);
        assert!(!b.continued() && !b.sampled());
        assert_ne!(a.trace_id, b.trace_id);
        let header = b.header([7; 8]).expect("a header value");
        let sent = parse(header.as_bytes()).expect("weir sends a valid traceparent");
        assert_eq!((sent.trace_id, sent.parent_id), (b.trace_id, [7; 8]));
    }
}
