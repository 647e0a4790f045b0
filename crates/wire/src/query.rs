//! The query of a request target, read for a rule's `query` condition:
//! `name=value` pairs separated by `&`, each part percent-decoded and `+`
//! read as a space (the HTML form encoding every browser and most clients
//! write), so that `?env=a%20b`, `?env=a+b` and `?env=a b` are one value.
//!
//! A pair without `=` has an empty value; a malformed escape (`%zz`) is kept
//! as it came rather than refused: a rule then simply does not match it.

use std::borrow::Cow;

/// Whether `query` (without the `?`) has a parameter `name` whose value is
/// `value`, both compared after decoding. Names are case-sensitive.
pub fn has(query: &str, name: &str, value: &str) -> bool {
    query.split('&').any(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        !(n.is_empty() && v.is_empty()) && decode(n) == name && decode(v) == value
    })
}

/// `part` with `+` as a space and `%XX` decoded; borrowed when it has
/// neither. An escape that is not two hex digits, or bytes that decode to
/// something other than UTF-8, leave the part as it came.
pub fn decode(part: &str) -> Cow<'_, str> {
    if !part.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(part);
    }
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(hex),
                bytes.get(i + 2).and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(b),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(part),
    }
}

fn hex(c: &u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_found_by_their_decoded_name_and_value() {
        let q = "a=1&env=canary&x&empty=&sp=a+b&pct=a%20b%26c";
        assert!(has(q, "a", "1"));
        assert!(has(q, "env", "canary"));
        assert!(!has(q, "env", "Canary"), "values are compared as they are");
        assert!(!has(q, "ENV", "canary"), "names are case-sensitive");
        assert!(has(q, "x", ""));
        assert!(has(q, "empty", ""));
        assert!(has(q, "sp", "a b"));
        assert!(has(q, "pct", "a b&c"));
        assert!(!has(q, "missing", ""));
        assert!(!has("", "", ""));
        assert!(has("a=1&a=2", "a", "2"), "any of a repeated name");
        assert!(has("%61=%31", "a", "1"));
        assert!(has("a==b", "a", "=b"));
    }

    #[test]
    fn bad_escapes_are_kept_as_they_came() {
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%ff"), "%ff", "not UTF-8: as it came");
        assert_eq!(decode("%C3%A9"), "é");
        assert!(matches!(decode("plain"), Cow::Borrowed("plain")));
    }
}
