//! Any string as a request path: `path::normalize` must not panic, a path it
//! accepts normalises to a fixed point without dot segments or runs of
//! slashes, read without its parameters it is still one (and holds no `;`),
//! and refusing encoded slashes only ever refuses more. The same
//! bytes as a request's host: `name::authority_host` must not panic, accepts
//! a name exactly when it is a DNS name with an optional port, and a host it
//! accepts has no user info, space or slash. The same text as an operator's
//! header value: `template::parse` must not panic, and what it reads is read
//! the same when written back. The same bytes as a `Cookie` header:
//! `cookie::find` must not panic and gives a part of them, and a sticky
//! token reads back as the id it was made from. As a query: `query::has`
//! must not panic, and decoding changes nothing without `%` or `+`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::path::{Slashes, normalize};

fuzz_target!(|data: &[u8]| {
    for name in [&b"weir"[..], b"a", data.get(..3).unwrap_or(b"x")] {
        if let Some(v) = weir_wire::cookie::find(data, name) {
            let (start, end) = (v.as_ptr() as usize, v.as_ptr() as usize + v.len());
            let base = data.as_ptr() as usize;
            assert!(start >= base && end <= base + data.len());
            assert!(!v.contains(&b';'));
        }
    }
    if let Some(id) = weir_wire::cookie::parse_token(data) {
        assert!(data.eq_ignore_ascii_case(&weir_wire::cookie::token(id)));
    }
    let host = weir_wire::name::authority_host(data);
    if let Some((len, _)) = host {
        assert!(!data.iter().any(|b| matches!(b, b'@' | b' ' | b'/' | b'%')));
        assert!(len <= data.len());
    }
    // A name (not a bracketed address) is accepted exactly when it is a DNS
    // name, a trailing dot allowed, with nothing or a port of up to 5 digits.
    if data.first() != Some(&b'[') {
        let (name, port) = match data.iter().position(|&b| b == b':') {
            Some(i) => data.split_at(i),
            None => (data, &[][..]),
        };
        let port_ok = port.is_empty()
            || (port.len() <= 6 && port.iter().skip(1).all(u8::is_ascii_digit));
        let name_ok = weir_wire::name::is_dns_name(name.strip_suffix(b".").unwrap_or(name));
        assert_eq!(host.is_some(), port_ok && name_ok);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pieces) = weir_wire::template::parse(text) {
        let again = weir_wire::template::parse(&weir_wire::template::render(&pieces));
        assert_eq!(again.as_ref(), Ok(&pieces));
    }
    let _ = weir_wire::query::has(text, "a", "1");
    let _ = weir_wire::query::has(text, text.get(..2).unwrap_or(""), "");
    if !text.contains(['%', '+']) {
        assert_eq!(weir_wire::query::decode(text), text);
    }
    let kept = normalize(text, Slashes::Keep);
    if let Ok(once) = &kept {
        let twice = normalize(once, Slashes::Keep).expect("a normal path stays valid");
        assert_eq!(once, &twice);
        assert!(!once.contains("//"));
        assert!(once.split('/').all(|s| s != "." && s != ".."));
        if let Some(bare) = weir_wire::path::without_parameters(once) {
            assert!(bare.starts_with('/') && !bare.contains("//") && !bare.contains(';'));
            assert!(bare.split('/').all(|s| s != "." && s != ".."));
        }
    }
    if let Ok(strict) = normalize(text, Slashes::Reject) {
        assert_eq!(Ok(strict), kept);
    }
});
