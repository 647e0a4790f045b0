//! Rules for host names as weir meets them: in a ClientHello's SNI, in a
//! route's `match.sni` patterns, and as the TLS name of a backend or probe.

/// Longest DNS name in text form, without a trailing dot (RFC 1035 §2.3.4).
pub const MAX_DNS_NAME_LEN: usize = 253;

/// True for a DNS host name: dot-separated labels of 1 to 63 letters, digits,
/// `-` (not first or last) and `_` (not in the RFC, but seen in the wild), at
/// most [`MAX_DNS_NAME_LEN`] bytes, no trailing dot. Case is not checked.
pub fn is_dns_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DNS_NAME_LEN
        && name.split(|&b| b == b'.').all(|label| {
            (1..=63).contains(&label.len())
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-')
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// True for a request's authority (`Host`, `:authority`) as weir passes it
/// on: a DNS name (a trailing dot allowed) or an IPv4 address, or an IPv6
/// address in brackets, then maybe `:` and a port of at most 5 digits.
/// Anything else — user info (`x@admin.example.com`), spaces, slashes,
/// percent-encodings — is a name that rules and policies would read one way
/// and a backend another.
pub fn is_authority(raw: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = raw.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let ip = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|t| t.parse::<std::net::Ipv6Addr>().ok());
        if ip.is_none() {
            return false;
        }
        (None, &rest[end + 1..])
    } else {
        match raw.iter().position(|&b| b == b':') {
            Some(i) => (Some(&raw[..i]), &raw[i..]),
            None => (Some(raw), &raw[raw.len()..]),
        }
    };
    let port_ok = match port.strip_prefix(b":") {
        Some(digits) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        None => port.is_empty(),
    };
    port_ok && host.is_none_or(|h| is_dns_name(h.strip_suffix(b".").unwrap_or(h)))
}

/// A `match.sni` pattern: a DNS name, or `*.` and a DNS name (a wildcard of
/// exactly one label); returned lower-cased. `None` when it is neither.
pub fn sni_pattern(pattern: &str) -> Option<String> {
    let lower = pattern.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    is_dns_name(name.as_bytes()).then_some(lower)
}

/// Whether `name` (a lower-case SNI) matches `pattern` (from [`sni_pattern`]).
/// A wildcard matches one label exactly: `*.example.com` matches
/// `a.example.com`, not `example.com` nor `a.b.example.com`.
pub fn sni_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        for ok in [
            "example.com",
            "Example.COM:8080",
            "example.com.",
            "example.com:",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "_svc.internal",
        ] {
            assert!(is_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "x@admin.example.com",
            "a b.example.com",
            "example.com/evil",
            "example.com:80:80",
            "example.com:http",
            "example.com:123456",
            "ex%61mple.com",
            "[::1",
            "[not-v6]:80",
            "[::1]x",
            "a..b",
            ":80",
            "example.com\\x",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn dns_names() {
        for ok in ["a", "db.example.com", "_svc.example-1.com", "A.B", "x1"] {
            assert!(is_dns_name(ok.as_bytes()), "{ok}");
        }
        let long_label = "a".repeat(64);
        let long_name = format!("{}.com", "a.".repeat(126));
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "a.",
            "bücher.de",
            &long_label,
            &long_name,
        ] {
            assert!(!is_dns_name(bad.as_bytes()), "{bad:?}");
        }
        assert!(is_dns_name("a".repeat(63).as_bytes()));
    }

    #[test]
    fn patterns_are_lower_cased_and_one_wildcard_label() {
        assert_eq!(
            sni_pattern("DB.Example.com").as_deref(),
            Some("db.example.com")
        );
        assert_eq!(
            sni_pattern("*.Example.com").as_deref(),
            Some("*.example.com")
        );
        for bad in ["*", "*.", "a.*.com", "**.a", "db.example.com.", "x y"] {
            assert_eq!(sni_pattern(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn wildcards_match_exactly_one_label() {
        assert!(sni_matches("*.example.com", "a.example.com"));
        assert!(!sni_matches("*.example.com", "example.com"));
        assert!(!sni_matches("*.example.com", "a.b.example.com"));
        assert!(!sni_matches("*.example.com", ".example.com"));
        assert!(!sni_matches("*.example.com", "aexample.com"));
        assert!(sni_matches("db.example.com", "db.example.com"));
        assert!(!sni_matches("db.example.com", "a.db.example.com"));
    }
}
