//! W3C Trace Context on l7 routes (`[tracing]`): each request gets weir's
//! own span id in the `traceparent` sent upstream, which replaces the
//! client's (never a second header). A valid incoming `traceparent`
//! continues its trace and keeps its `tracestate`; none, several or an
//! invalid one start a new trace and drop `tracestate`. The sampled flag
//! follows the client's when `trust_client_sampling`, else `sample_ratio`.

use http::HeaderMap;
use weir_config::Tracing;
use weir_wire::traceparent::{SAMPLED, TraceParent, parse};

pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";

/// The trace context to send upstream for a request with `headers`, and
/// whether it continues the client's trace.
pub(crate) fn next(t: &Tracing, headers: &HeaderMap) -> (TraceParent, bool) {
    let incoming = {
        let mut values = headers.get_all(TRACEPARENT).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => parse(v.as_bytes()),
            _ => None,
        }
    };
    let span = nonzero_u64().to_be_bytes();
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
            (
                TraceParent {
                    trace_id: p.trace_id,
                    parent_id: span,
                    flags: (p.flags & !SAMPLED) | sampled,
                },
                true,
            )
        }
        None => {
            let trace_id = loop {
                let id = fastrand::u128(..);
                if id != 0 {
                    break id.to_be_bytes();
                }
            };
            (
                TraceParent {
                    trace_id,
                    parent_id: span,
                    flags: sample(),
                },
                false,
            )
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let n = fastrand::u64(..);
        if n != 0 {
            return n;
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
        }
    }

    #[test]
    fn a_valid_parent_is_continued_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
        let (t, continued) = next(&cfg(0.0, true), &h);
        assert!(continued);
        assert_eq!(
            t.trace_id,
            parse(PARENT.as_bytes()).expect("valid").trace_id
        );
        assert_ne!(
            t.parent_id,
            parse(PARENT.as_bytes()).expect("valid").parent_id
        );
        assert!(t.sampled(), "the client's flag is kept");
        let (t, _) = next(&cfg(0.0, false), &h);
        assert!(!t.sampled(), "at the edge, the ratio decides");
    }

    #[test]
    fn none_several_or_invalid_start_a_trace() {
        let mut h = HeaderMap::new();
        let (a, continued) = next(&cfg(1.0, true), &h);
        assert!(!continued && a.sampled());
        h.append(TRACEPARENT, HeaderValue::from_static(PARENT));
        h.append(TRACEPARENT, HeaderValue::from_static(PARENT));
        assert!(!next(&cfg(1.0, true), &h).1);
        h.insert(TRACEPARENT, HeaderValue::from_static("00-bad"));
        let (b, continued) = next(&cfg(0.0, true), &h);
        assert!(!continued && !b.sampled());
        assert_ne!(a.trace_id, b.trace_id);
    }
}
