//! `request_headers` and `response_headers` of an l7 route or rule: headers
//! removed, set (replacing what came) and added; values may carry
//! variables (`${client_ip}`, see `weir_wire::template`).

use weir_wire::template::{Piece, Var};

use super::Checker;
use super::http::FRAMING_HEADERS;
use crate::model::HeaderRules;
use crate::raw::RawHeaderRules;

/// The longest value a rule may give a header.
const MAX_VALUE: usize = 8 * 1024;

/// Request headers weir vouches for or routes by (see `forwarded`).
const REQUEST_OWN: [&str; 7] = [
    "host",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
];

/// Which message the rules change.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Request,
    Response,
}

impl Checker {
    /// The `request_headers` and `response_headers` of the route or rule at
    /// `path`.
    pub(super) fn header_rules_of(
        &mut self,
        path: &str,
        request: Option<&RawHeaderRules>,
        response: Option<&RawHeaderRules>,
    ) -> (HeaderRules, HeaderRules) {
        (
            self.header_rules(&format!("{path}.request_headers"), request, Side::Request),
            self.header_rules(
                &format!("{path}.response_headers"),
                response,
                Side::Response,
            ),
        )
    }

    /// The rules at `path`, for `side`; none when not given.
    fn header_rules(
        &mut self,
        path: &str,
        raw: Option<&RawHeaderRules>,
        side: Side,
    ) -> HeaderRules {
        let Some(raw) = raw else {
            return HeaderRules::default();
        };
        let name = |cx: &mut Checker, key: String, h: &str| -> String {
            let lower = h.to_ascii_lowercase();
            if h.is_empty() || !h.bytes().all(super::http::is_tchar) {
                cx.push(key, format!("{h:?} is not a header name"));
            } else if FRAMING_HEADERS.contains(&lower.as_str())
                || (side == Side::Request && REQUEST_OWN.contains(&lower.as_str()))
            {
                cx.push(
                    key,
                    format!(
                        "{h:?} is weir's to set (framing, connection, host or \
                         forwarding headers; see `forwarded`)"
                    ),
                );
            }
            lower
        };
        let value = |cx: &mut Checker, key: String, v: &str| {
            // Visible ASCII, spaces and tabs inside: nothing that could end
            // the field or the head, nothing a peer might read otherwise.
            let ok = v
                .bytes()
                .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
                && !v.starts_with([' ', '\t'])
                && !v.ends_with([' ', '\t']);
            if !ok {
                cx.push(
                    key,
                    format!(
                        "{v:?} is not a header value (visible ASCII, with spaces or \
                         tabs only inside)"
                    ),
                );
            } else if v.len() > MAX_VALUE {
                cx.push(key, format!("longer than {MAX_VALUE} bytes"));
            } else {
                match weir_wire::template::parse(v) {
                    Err(e) => cx.push(key, e.to_string()),
                    Ok(pieces) => {
                        let backend = Piece::Var(Var::Backend);
                        if side == Side::Request && pieces.contains(&backend) {
                            cx.push(
                                key,
                                "`${backend}` is known only in `response_headers`: \
                                 the backend is picked after a request's headers are set",
                            );
                        }
                    }
                }
            }
        };
        let remove = raw
            .remove
            .iter()
            .enumerate()
            .map(|(i, h)| name(self, format!("{path}.remove[{i}]"), h))
            .collect();
        let pairs =
            |cx: &mut Checker, key: &str, map: &std::collections::BTreeMap<String, String>| {
                map.iter()
                    .map(|(h, v)| {
                        let at = format!("{path}.{key}.{h}");
                        let n = name(cx, at.clone(), h);
                        value(cx, at, v);
                        (n, v.clone())
                    })
                    .collect::<Vec<_>>()
            };
        let set = pairs(self, "set", &raw.set);
        let add = pairs(self, "add", &raw.add);
        for (i, (n, _)) in set.iter().enumerate() {
            if set[..i].iter().any(|(m, _)| m == n) {
                self.push(
                    format!("{path}.set.{n}"),
                    "named twice (header names are not case-sensitive)",
                );
            }
        }
        if side == Side::Request && raw.always.is_some() {
            self.push(
                format!("{path}.always"),
                "only `response_headers` take it: it puts them on weir's own answers too",
            );
        }
        HeaderRules {
            remove,
            set,
            add,
            always: side == Side::Response && raw.always == Some(true),
        }
    }
}
