//! Header rules of the proxy. Pure: a header map and what weir knows about
//! the client in, the map as it must leave out.
//!
//! - Hop-by-hop headers belong to one connection and are never forwarded
//!   (RFC 9110 §7.6.1): `Connection` and every header it names, `Keep-Alive`,
//!   `Proxy-Connection`, `TE` (except `TE: trailers`, which gRPC needs
//!   end to end), `Transfer-Encoding` and `Upgrade`. Into HTTP/2 they would
//!   make the message malformed (RFC 9113 §8.2.2).
//! - `X-Forwarded-For`, `-Proto` and `-Host` (and `Forwarded` when asked):
//!   from a trusted source weir appends to what came; from anyone else it
//!   replaces them, so a client cannot choose the address a backend sees.
//! - `X-Request-Id`: kept from a trusted source when well-formed, else a new
//!   one.
//! - The operator's `request_headers` and `response_headers`: removed, set
//!   and added in that order ([`HeaderOps`]).

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE,
};
use weir_wire::template::{Piece, Var};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The longest request id kept from a trusted source.
const MAX_REQUEST_ID: usize = 200;

/// The hop-by-hop headers of a `101 Switching Protocols` removed, but for the
/// switch itself: `Upgrade` as the backend said it, and `Connection: upgrade`.
pub fn keep_only_the_upgrade(headers: &mut HeaderMap) {
    let upgrade: Vec<HeaderValue> = headers.get_all(UPGRADE).iter().cloned().collect();
    strip_hop_by_hop(headers);
    for v in upgrade {
        headers.append(UPGRADE, v);
    }
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Joins the `Cookie` fields of an HTTP/2 request into one, `; ` between
/// them, for an HTTP/1.1 backend (RFC 9113 §8.2.3): HTTP/2 clients send
/// each cookie in a field of its own, and an HTTP/1.1 server may read only
/// the first `Cookie` line. No lookup at all when no name repeats.
pub fn join_cookies(headers: &mut HeaderMap) {
    // Values beyond one per name: without them, no name has two fields.
    if headers.len() == headers.keys_len() {
        return;
    }
    let mut all = headers.get_all(http::header::COOKIE).iter();
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // From bytes that were header values, joined by visible ASCII: valid.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(http::header::COOKIE, v);
    }
}

/// Removes the headers named in `names`, and those whose name reads the
/// same with `_` for `-` (`X_User_Id` for `X-User-Id`): a backend that maps
/// both to one variable (CGI, WSGI, Rack) would take the client's for the
/// one weir sets. Nothing to do, and no pass over the headers, without
/// names. (Both ways: `x_user` among `names` takes the client's `x-user`.)
pub fn strip_identity(headers: &mut HeaderMap, names: &[HeaderName]) {
    if names.is_empty() {
        return;
    }
    for name in names {
        headers.remove(name);
    }
    // The exact names are gone: any that reads the same is a lookalike.
    let lookalikes: Vec<HeaderName> = headers
        .keys()
        .filter(|k| names.iter().any(|n| reads_same(k.as_str(), n.as_str())))
        .cloned()
        .collect();
    for name in lookalikes {
        headers.remove(&name);
    }
}

/// Whether two header names read the same when `_` and `-` are one.
fn reads_same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || matches!((x, y), (b'_', b'-') | (b'-', b'_')))
}

/// Removes the fields named like the forwarding headers and the request id
/// with `_` for `-` (`X_Forwarded_For`): weir sets those for a client it
/// does not trust, and a backend that maps both spellings to one variable
/// would take the client's. Standard names have no `_`: a request without
/// such a field costs one look at each name and no allocation.
fn strip_vouched_lookalikes(headers: &mut HeaderMap) {
    let lookalike = |k: &HeaderName| {
        k.as_str().contains('_') && VOUCHED.iter().any(|n| reads_same(k.as_str(), n.as_str()))
    };
    if !headers.keys().any(lookalike) {
        return;
    }
    let found: Vec<HeaderName> = headers.keys().filter(|k| lookalike(k)).cloned().collect();
    for name in found {
        headers.remove(&name);
    }
}

/// Whether the message's transfer coding, if any, is `chunked` alone: the
/// only one weir decodes. hyper frames a message by its last coding, so
/// `gzip, chunked` (or two fields) would reach the other side stripped of
/// its gzip and of the header that said so, and `chunked, chunked` with a
/// second framing left in the body (RFC 9112 §6.1).
pub fn chunked_only(headers: &HeaderMap) -> bool {
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(one), None) => one.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// Removes the hop-by-hop headers of `headers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which hop-by-hop headers there are
    // (most messages have none, or only `Connection`): only those are then
    // looked up by hash and removed.
    const N: usize = 6;
    const HOP: [HeaderName; N] = [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
        TE,
    ];
    let mut present = [false; N];
    for name in headers.keys() {
        if let Some(i) = HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // The names `Connection` lists are hop-by-hop too. The usual ones are
    // removed below anyway (`keep-alive`, `upgrade`) or name no header
    // (`close`), and are not collected: most messages allocate nothing here.
    // `Connection: te` must not remove the `TE: trailers` kept below, nor
    // `Connection: host` the request's host.
    let mut named: Vec<HeaderName> = Vec::new();
    if present[0] {
        // By bytes: a value with obs-text elsewhere still names its tokens.
        for value in headers.get_all(CONNECTION) {
            for token in value
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
            {
                let usual = ["close", "keep-alive", "upgrade", "te", "host"]
                    .iter()
                    .any(|u| token.eq_ignore_ascii_case(u.as_bytes()));
                if !usual && let Ok(name) = HeaderName::from_bytes(token) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(&name);
    }
    for (name, here) in HOP.iter().zip(present).take(N - 1) {
        if here {
            headers.remove(name);
        }
    }
    // A message framed by Transfer-Encoding is not as long as a
    // Content-Length beside it says (RFC 9112 §6.3): forwarded without its
    // chunking, that length would cut or stall the body. (Requests with both
    // are refused before they get here; a backend's response may have both.)
    if present[3] {
        headers.remove(CONTENT_LENGTH);
    }
    if present[N - 1] {
        let trailers_only = {
            let mut values = headers.get_all(TE).iter();
            matches!(
                (values.next(), values.next()),
                (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"trailers")
            )
        };
        if !trailers_only {
            headers.remove(TE);
        }
    }
}

/// Removes from a body's trailers the fields that may not be trailers or
/// that mean something else there: hop-by-hop ones (HTTP/2 refuses a
/// connection-specific field: the stream would be reset), `TE`, and those
/// that frame or route the message (RFC 9110 §6.5.1).
pub fn clean_trailers(trailers: &mut HeaderMap) {
    strip_hop_by_hop(trailers);
    for name in [TE, CONTENT_LENGTH, HOST, TRAILER] {
        trailers.remove(name);
    }
}

/// The fields weir vouches for in a request it forwards: what it says about
/// the client (the forwarding headers, the request id) and what an
/// authentication service said (`identity`).
const VOUCHED: [HeaderName; 5] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    FORWARDED,
    X_REQUEST_ID,
];

/// [`clean_trailers`] for a client's request, which also loses the fields
/// weir vouches for in the request's head, and their `_` lookalikes: a
/// backend that merges trailers into the head would take the client's
/// word for them.
pub fn clean_request_trailers(trailers: &mut HeaderMap, identity: &[HeaderName]) {
    clean_trailers(trailers);
    strip_identity(trailers, &VOUCHED);
    strip_identity(trailers, identity);
}

/// What the forwarding headers say about one request.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address (the PROXY header's, when a trusted sender gave one).
    pub client: IpAddr,
    /// The same, as a header value ([`client_value`]): made once per connection.
    pub client_value: &'a HeaderValue,
    /// The client sent its request from a source in `forwarded.trusted`.
    pub trusted: bool,
    /// `http` or `https`: how the client reached weir.
    pub proto: &'static str,
    /// The host the client asked for.
    pub host: Option<&'a HeaderValue>,
    /// Also set the standard `Forwarded` header.
    pub rfc7239: bool,
}

/// A client's address as `X-Forwarded-For` carries it (IPv4-mapped IPv6
/// addresses as IPv4).
pub fn client_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and,
/// with `rfc7239`, `Forwarded`. The common case (an untrusted client, no
/// `Forwarded`) copies no bytes: the values are shared.
pub fn set_forwarding(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    if f.trusted {
        match f.client_value.to_str() {
            Ok(client) => append_list(headers, X_FORWARDED_FOR, client),
            Err(_) => {
                headers.insert(X_FORWARDED_FOR, f.client_value.clone());
            }
        }
        if !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
        }
        if !headers.contains_key(X_FORWARDED_HOST)
            && let Some(host) = f.host
        {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    } else {
        strip_vouched_lookalikes(headers);
        headers.insert(X_FORWARDED_FOR, f.client_value.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
        match f.host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
        headers.remove(FORWARDED);
    }
    if f.rfc7239 {
        let node = match f.client.to_canonical() {
            IpAddr::V4(ip) => ip.to_string(),
            // RFC 7239 §6: an IPv6 node is quoted and bracketed.
            IpAddr::V6(ip) => format!("\"[{ip}]\""),
        };
        let mut element = format!("for={node};proto={}", f.proto);
        let host = f.host.and_then(|h| h.to_str().ok());
        if let Some(host) = host.filter(|h| h.bytes().all(is_token_char)) {
            element.push_str(";host=");
            element.push_str(host);
        } else if let Some(host) = host {
            element.push_str(";host=\"");
            element.extend(host.chars().filter(|c| *c != '"' && *c != '\\'));
            element.push('"');
        }
        append_list(headers, FORWARDED, &element);
    }
}

/// The request id to use: the one that came when the source is trusted and
/// it is well-formed (visible ASCII, at most 200 bytes), else `None`.
pub fn trusted_request_id(headers: &HeaderMap, trusted: bool) -> Option<&HeaderValue> {
    if !trusted {
        return None;
    }
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return None;
    };
    let b = v.as_bytes();
    (!b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(u8::is_ascii_graphic)).then_some(v)
}

/// A new request id: 128 random bits as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut digits = [b'0'; 32];
    for d in digits.iter_mut().rev() {
        *d = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    // Owned by the value: its copies (the access log's) share it.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(digits))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Appends `item` to the comma-separated list in `name`, joining several
/// fields of that name into one.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut joined = String::new();
    for v in headers.get_all(&name) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                joined.push_str(s);
                joined.push_str(", ");
            }
        }
    }
    joined.push_str(item);
    insert_str(headers, name, &joined);
}

fn insert_str(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// RFC 9110 §5.6.2: a host with a port (`app:8080`) is not a token and
/// goes quoted (RFC 7239 §4).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An operator's `request_headers` or `response_headers`, ready to apply.
#[derive(Debug, Default)]
pub struct HeaderOps {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, Value)]>,
    add: Box<[(HeaderName, Value)]>,
    /// Also on weir's own answers (`always = true`).
    always: bool,
}

/// A value as written: fixed, or with variables filled in per message.
#[derive(Debug)]
enum Value {
    Fixed(HeaderValue),
    Template(Box<[Piece]>),
}

/// What the variables of a header value stand for, for one message.
pub(crate) trait Vars {
    /// Appends `var`'s value to `out`; nothing when it has none.
    fn write(&self, var: Var, out: &mut Vec<u8>);
}

impl Value {
    fn new(text: &str) -> Option<Value> {
        let pieces = weir_wire::template::parse(text).ok()?;
        match pieces.as_slice() {
            [] => Some(Value::Fixed(HeaderValue::from_static(""))),
            [Piece::Text(t)] => HeaderValue::from_str(t).ok().map(Value::Fixed),
            _ => Some(Value::Template(pieces.into())),
        }
    }

    /// The value for this message; `None` when what the variables hold
    /// cannot be a header value.
    fn make(&self, vars: &dyn Vars) -> Option<HeaderValue> {
        match self {
            Value::Fixed(v) => Some(v.clone()),
            Value::Template(pieces) => {
                let mut out = Vec::with_capacity(64);
                for p in pieces {
                    match p {
                        Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                        Piece::Var(v) => vars.write(*v, &mut out),
                    }
                }
                HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
            }
        }
    }
}

impl HeaderOps {
    /// From validated rules; a name or value that cannot be used (which
    /// validation refuses) is left out.
    pub fn new(rules: &weir_config::HeaderRules) -> HeaderOps {
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .filter_map(|(n, v)| {
                    Some((HeaderName::from_bytes(n.as_bytes()).ok()?, Value::new(v)?))
                })
                .collect()
        };
        HeaderOps {
            remove: rules
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: pairs(&rules.set),
            add: pairs(&rules.add),
            always: rules.always,
        }
    }

    /// Removes, then sets (replacing every field of the name), then adds.
    /// A value whose variables make no header value is left out (a `set`
    /// still removes what came).
    pub(crate) fn apply(&self, headers: &mut HeaderMap, vars: &dyn Vars) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            match value.make(vars) {
                Some(v) => {
                    headers.insert(name.clone(), v);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        for (name, value) in &self.add {
            if let Some(v) = value.make(vars) {
                headers.append(name.clone(), v);
            }
        }
    }

    /// Nothing to do: the request path skips it.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Whether a value carries `var`.
    pub(crate) fn uses(&self, var: Var) -> bool {
        self.set
            .iter()
            .chain(self.add.iter())
            .any(|(_, v)| matches!(v, Value::Template(p) if p.contains(&Piece::Var(var))))
    }

    /// Whether weir's own answers get these too.
    pub(crate) fn always(&self) -> bool {
        self.always && !self.is_empty()
    }
}

#[cfg(test)]
mod tests {
    /// Removed, then set over what came, then added after it; names are
    /// not case-sensitive.
    #[test]
    fn only_a_lone_chunked_coding_is_taken() {
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            chunked_only(&h)
        };
        assert!(with(&[]));
        assert!(with(&["chunked"]));
        assert!(with(&[" Chunked "]));
        assert!(!with(&["gzip, chunked"]));
        assert!(!with(&["chunked, chunked"]));
        assert!(!with(&["gzip", "chunked"]));
        assert!(!with(&["identity"]));
    }

    #[test]
    fn operator_rules_remove_then_set_then_add() {
        let rules = weir_config::HeaderRules {
            remove: vec!["server".into(), "x-debug".into()],
            set: vec![
                ("x-env".into(), "prod".into()),
                ("server".into(), "weir".into()),
            ],
            add: vec![("vary".into(), "origin".into())],
            always: false,
        };
        let ops = super::HeaderOps::new(&rules);
        assert!(!ops.is_empty());
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("Server", "nginx"),
            ("X-Debug", "1"),
            ("X-Debug", "2"),
            ("x-env", "dev"),
            ("x-env", "test"),
            ("vary", "accept-encoding"),
            ("x-kept", "yes"),
        ] {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_static(v),
            );
        }
        ops.apply(&mut h, &NoVars);
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().expect("text"))
                .collect::<Vec<_>>()
        };
        assert_eq!(all("server"), ["weir"]);
        assert!(all("x-debug").is_empty());
        assert_eq!(all("x-env"), ["prod"]);
        assert_eq!(all("vary"), ["accept-encoding", "origin"]);
        assert_eq!(all("x-kept"), ["yes"]);
        assert!(super::HeaderOps::new(&weir_config::HeaderRules::default()).is_empty());
    }

    /// Variables a test names.
    struct NoVars;
    impl super::Vars for NoVars {
        fn write(&self, _: weir_wire::template::Var, _: &mut Vec<u8>) {}
    }

    struct TestVars;
    impl super::Vars for TestVars {
        fn write(&self, var: weir_wire::template::Var, out: &mut Vec<u8>) {
            use weir_wire::template::Var;
            match var {
                Var::ClientIp => out.extend_from_slice(b"192.0.2.7"),
                Var::RequestId => out.extend_from_slice(b"abc"),
                // What a client's host could be, were it not checked.
                Var::Host => out.extend_from_slice(b"bad\r\nx-evil: 1"),
                _ => {}
            }
        }
    }

    /// `${...}` is filled in per message, `$$` is a `$`, a variable without a
    /// value is empty, and a value that cannot be a header leaves the field
    /// out (a `set` still removes what came).
    #[test]
    fn variables_are_filled_in_per_message() {
        let rules = weir_config::HeaderRules {
            remove: vec![],
            set: vec![
                ("x-real-ip".into(), "${client_ip}".into()),
                ("x-price".into(), "$$5".into()),
                ("x-host".into(), "${host}".into()),
            ],
            add: vec![
                ("x-trace".into(), "id=${request_id};rule=${rule}.".into()),
                ("x-host".into(), "h=${host}".into()),
            ],
            always: false,
        };
        let ops = super::HeaderOps::new(&rules);
        let mut h = http::HeaderMap::new();
        h.insert("x-real-ip", http::HeaderValue::from_static("10.0.0.1"));
        h.insert("x-host", http::HeaderValue::from_static("came"));
        ops.apply(&mut h, &TestVars);
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-price"], "$5");
        assert_eq!(h["x-trace"], "id=abc;rule=.");
        assert!(h.get("x-host").is_none(), "{h:?}");
        let mut h = http::HeaderMap::new();
        ops.apply(&mut h, &NoVars);
        assert_eq!(h["x-real-ip"], "");
    }

    #[test]
    fn trailers_keep_only_what_may_be_a_trailer() {
        let mut t = http::HeaderMap::new();
        for (k, v) in [
            ("x-sum", "42"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("content-length", "9"),
            ("host", "elsewhere"),
            ("trailer", "x-sum"),
            ("grpc-status", "0"),
        ] {
            t.append(
                http::HeaderName::from_static(k),
                http::HeaderValue::from_static(v),
            );
        }
        super::clean_trailers(&mut t);
        let left: Vec<_> = t.keys().map(http::HeaderName::as_str).collect();
        assert_eq!(left, ["x-sum", "grpc-status"]);
    }

    #[test]
    fn a_requests_trailers_lose_what_weir_vouches_for() {
        let mut t = map(&[
            ("x-sum", "42"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x_forwarded_proto", "https"),
            ("forwarded", "for=10.0.0.1"),
            ("x-request-id", "forged"),
            ("x-user", "admin"),
            ("x_user", "admin"),
            ("te", "trailers"),
        ]);
        clean_request_trailers(&mut t, &[HeaderName::from_static("x-user")]);
        let left: Vec<_> = t.keys().map(http::HeaderName::as_str).collect();
        assert_eq!(left, ["x-sum"]);
    }

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn get<'h>(h: &'h HeaderMap, name: &str) -> Vec<&'h str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut h = map(&[
            ("cookie", "a=1"),
            ("x-other", "k"),
            ("cookie", "b=2"),
            ("cookie", "c=3"),
        ]);
        join_cookies(&mut h);
        assert_eq!(get(&h, "cookie"), ["a=1; b=2; c=3"]);
        assert_eq!(get(&h, "x-other"), ["k"]);
        let mut one = map(&[("cookie", "a=1")]);
        join_cookies(&mut one);
        assert_eq!(get(&one, "cookie"), ["a=1"]);
        let mut none = map(&[("x-other", "k")]);
        join_cookies(&mut none);
        assert!(none.get("cookie").is_none());
    }

    #[test]
    fn identity_headers_and_their_lookalikes_are_stripped() {
        let names = [
            HeaderName::from_static("x-user"),
            HeaderName::from_static("x_role"),
        ];
        let mut h = map(&[
            ("x-user", "a"),
            ("x_user", "b"),
            ("x-role", "c"),
            ("x_role", "d"),
            ("x-users", "kept"),
            ("x_user_id", "kept"),
            ("x-other", "kept"),
        ]);
        strip_identity(&mut h, &names);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-other", "x-users", "x_user_id"]);
        let mut untouched = map(&[("x_user", "b")]);
        strip_identity(&mut untouched, &[]);
        assert_eq!(untouched.len(), 1);
    }

    #[test]
    fn hop_by_hop_headers_go_and_what_connection_names_too() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-secret", "1"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn connection_names_its_headers_beside_obs_text() {
        let mut h = map(&[("x-secret", "1"), ("x-other", "2"), ("x-kept", "1")]);
        h.append(
            CONNECTION,
            HeaderValue::from_bytes(b"x-secret ,caf\xe9, X-Other").expect("obs-text"),
        );
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn a_chunked_message_loses_its_content_length() {
        let mut h = map(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
        let mut h = map(&[("content-length", "5")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(get(&h, "content-length"), ["5"]);
    }

    #[test]
    fn te_trailers_stays_for_grpc() {
        let mut h = map(&[("te", "trailers"), ("connection", "te")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(get(&h, "te"), ["trailers"]);
        let mut h = map(&[("te", "trailers"), ("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("te").is_none());
    }

    fn forward(h: &mut HeaderMap, client: &str, trusted: bool) {
        forward_for(h, client, trusted, "app.example.com");
    }

    fn forward_for(h: &mut HeaderMap, client: &str, trusted: bool, host: &'static str) {
        let client: IpAddr = client.parse().expect("ip");
        let value = client_value(client);
        let host = HeaderValue::from_static(host);
        set_forwarding(
            h,
            &Forwarding {
                client,
                client_value: &value,
                trusted,
                proto: "http",
                host: Some(&host),
                rfc7239: true,
            },
        );
    }

    #[test]
    fn an_untrusted_client_cannot_choose_its_address() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        forward(&mut h, "192.0.2.7", false);
        assert_eq!(get(&h, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(get(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(get(&h, "x-forwarded-host"), ["app.example.com"]);
        assert_eq!(
            get(&h, "forwarded"),
            ["for=192.0.2.7;proto=http;host=app.example.com"]
        );
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        forward(&mut h, "::ffff:10.0.0.3", true);
        assert_eq!(
            get(&h, "x-forwarded-for"),
            ["203.0.113.9, 10.0.0.2, 10.0.0.3"]
        );
        assert_eq!(get(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(
            get(&h, "forwarded"),
            ["for=203.0.113.9, for=10.0.0.3;proto=http;host=app.example.com"]
        );
    }

    #[test]
    fn an_untrusted_clients_underscore_spellings_are_dropped() {
        let mut h = map(&[
            ("x_forwarded_for", "1.2.3.4"),
            ("x-forwarded_proto", "https"),
            ("x_request_id", "forged"),
            ("x_user", "kept"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        forward(&mut h, "192.0.2.7", false);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x_user"
            ]
        );
        assert_eq!(get(&h, "x-forwarded-for"), ["192.0.2.7"]);
        // A trusted proxy's fields are its own business.
        let mut h = map(&[("x_forwarded_for", "1.2.3.4")]);
        forward(&mut h, "10.0.0.3", true);
        assert_eq!(get(&h, "x_forwarded_for"), ["1.2.3.4"]);
    }

    #[test]
    fn a_host_with_a_port_is_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        forward_for(&mut h, "192.0.2.7", false, "app:8080");
        assert_eq!(
            get(&h, "forwarded"),
            ["for=192.0.2.7;proto=http;host=\"app:8080\""]
        );
    }

    #[test]
    fn ipv6_nodes_are_quoted() {
        let mut h = HeaderMap::new();
        forward(&mut h, "2001:db8::1", false);
        assert_eq!(
            get(&h, "forwarded"),
            ["for=\"[2001:db8::1]\";proto=http;host=app.example.com"]
        );
    }

    #[test]
    fn request_ids_are_kept_only_from_trusted_sources() {
        let h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(
            trusted_request_id(&h, true).map(|v| v.as_bytes()),
            Some(&b"abc-123"[..])
        );
        assert_eq!(trusted_request_id(&h, false), None);
        let twice = map(&[("x-request-id", "a"), ("x-request-id", "b")]);
        assert_eq!(trusted_request_id(&twice, true), None);
        let long = map(&[("x-request-id", &"x".repeat(201))]);
        assert_eq!(trusted_request_id(&long, true), None);
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(id, new_request_id());
    }
}
