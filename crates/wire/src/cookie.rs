//! The `Cookie` request header, read for one cookie by name (RFC 6265
//! §4.2: `name=value` pairs separated by `;` and a space), and the token a
//! sticky-session cookie carries.
//!
//! Clients are lenient writers: pairs may lack the space, carry spaces
//! around `=` or have no `=` at all. A pair that cannot be read is skipped,
//! never an error; the first pair of the name wins, as browsers send the
//! most specific cookie first.

/// The value of the first cookie named `name` in one `Cookie` header's
/// bytes, without surrounding spaces or double quotes; `None` when there is
/// none. Names compare byte for byte (cookie names are case-sensitive).
pub fn find<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    if name.is_empty() {
        return None;
    }
    header.split(|&b| b == b';').find_map(|pair| {
        let at = pair.iter().position(|&b| b == b'=')?;
        let (n, v) = (trim(&pair[..at]), trim(&pair[at + 1..]));
        (n == name).then(|| unquote(v))
    })
}

/// The token of a sticky cookie: 16 lower-case hex digits.
pub fn token(id: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        let shift = 60 - 4 * i;
        *b = HEX[((id >> shift) & 0xf) as usize];
    }
    out
}

/// The id a token stands for; `None` for anything but 16 hex digits
/// (either case).
pub fn parse_token(v: &[u8]) -> Option<u64> {
    if v.len() != 16 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(d))
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t'));
    let Some(start) = start else {
        // Empty, but still a part of `b`.
        return &b[b.len()..];
    };
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_cookie_of_a_name() {
        let h = b"a=1; weir=00ff; b=2; weir=dead";
        assert_eq!(find(h, b"weir"), Some(&b"00ff"[..]));
        assert_eq!(find(h, b"a"), Some(&b"1"[..]));
        assert_eq!(find(h, b"b"), Some(&b"2"[..]));
        assert_eq!(find(h, b"c"), None);
        assert_eq!(find(h, b"WEIR"), None, "names are case-sensitive");
        assert_eq!(find(h, b""), None);
    }

    #[test]
    fn lenient_with_what_clients_write() {
        assert_eq!(find(b"a=1;weir=x", b"weir"), Some(&b"x"[..]));
        assert_eq!(find(b"  weir = x ;", b"weir"), Some(&b"x"[..]));
        assert_eq!(find(b"weir=\"x\"", b"weir"), Some(&b"x"[..]));
        assert_eq!(find(b"flag; weir=x", b"weir"), Some(&b"x"[..]));
        assert_eq!(find(b"weir=", b"weir"), Some(&b""[..]));
        assert_eq!(find(b"weir", b"weir"), None);
        assert_eq!(find(b"weirx=1; xweir=2", b"weir"), None);
        assert_eq!(find(b";;;=;", b"weir"), None);
        assert_eq!(find(b"weir=\"", b"weir"), Some(&b"\""[..]));
        // An empty value is still a part of the header (found by fuzzing).
        let h = b"weir=  ;a=1";
        let v = find(h, b"weir").expect("found");
        let (at, range) = (v.as_ptr() as usize, h.as_ptr_range());
        assert!(v.is_empty() && at >= range.start as usize && at <= range.end as usize);
    }

    #[test]
    fn tokens_read_back() {
        for id in [0, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            let t = token(id);
            assert_eq!(parse_token(&t), Some(id));
        }
        assert_eq!(&token(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(
            parse_token(b"0123456789ABCDEF"),
            Some(0x0123_4567_89ab_cdef)
        );
        assert_eq!(parse_token(b"0123456789abcde"), None);
        assert_eq!(parse_token(b"0123456789abcdeg"), None);
        assert_eq!(parse_token(b"+123456789abcdef"), None);
        assert_eq!(parse_token(b""), None);
    }
}
