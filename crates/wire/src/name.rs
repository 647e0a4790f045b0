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
    authority_host(raw).is_some()
}

/// [`is_authority`], and where its host ends: the length of the name or
/// bracketed address without the port and a trailing dot, and whether it
/// has upper-case letters (rules compare names in lower case).
pub fn authority_host(raw: &[u8]) -> Option<(usize, bool)> {
    if let Some(rest) = raw.strip_prefix(b"[") {
        let end = rest.iter().position(|&b| b == b']')?;
        let (ip, port) = rest.split_at(end);
        std::str::from_utf8(ip)
            .ok()?
            .parse::<std::net::Ipv6Addr>()
            .ok()?;
        let upper = ip.iter().any(u8::is_ascii_uppercase);
        return is_port(port.get(1..).unwrap_or_default()).then_some((end + 2, upper));
    }
    // One pass over the name (every request pays it): labels of 1 to 63
    // name bytes, `-` neither first nor last, then maybe `:` and a port.
    let mut label = 0usize;
    let mut last = 0u8;
    let mut upper = false;
    let mut host_len = raw.len();
    for (i, &b) in raw.iter().enumerate() {
        match HOST_BYTE[usize::from(b)] {
            NAME => label += 1,
            UPPER => {
                label += 1;
                upper = true;
            }
            DASH if label > 0 => label += 1,
            DOT if label > 0 && last != b'-' => label = 0,
            COLON => {
                host_len = i;
                break;
            }
            _ => return None,
        }
        if label > 63 {
            return None;
        }
        last = b;
    }
    // A trailing dot (the root) is allowed, not a lone one.
    let name_len = host_len - usize::from(last == b'.');
    let ends_well = label > 0 && last != b'-' || last == b'.';
    (ends_well && name_len <= MAX_DNS_NAME_LEN && is_port(raw.get(host_len..).unwrap_or_default()))
        .then_some((name_len, upper))
}

const OTHER: u8 = 0;
const NAME: u8 = 1;
const UPPER: u8 = 2;
const DASH: u8 = 3;
const DOT: u8 = 4;
const COLON: u8 = 5;

/// What each byte is in a host: one look-up per byte.
static HOST_BYTE: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_uppercase() {
            UPPER
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            NAME
        } else if c == b'-' {
            DASH
        } else if c == b'.' {
            DOT
        } else if c == b':' {
            COLON
        } else {
            OTHER
        };
        b += 1;
    }
    t
};

/// Nothing, or `:` and at most 5 digits.
fn is_port(rest: &[u8]) -> bool {
    match rest.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
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
    fn the_host_of_an_authority() {
        for (raw, host) in [
            ("Example.COM:8080", Some((11, true))),
            ("example.com.", Some((11, false))),
            ("example.com.:80", Some((11, false))),
            ("a", Some((1, false))),
            ("[::1]:80", Some((5, false))),
            ("[::A]", Some((5, true))),
            ("a.:", Some((1, false))),
            ("a_b-c.d", Some((7, false))),
            ("a-", None),
            ("a.-b", None),
            (".", None),
            ("", None),
        ] {
            assert_eq!(authority_host(raw.as_bytes()), host, "{raw}");
        }
        let label = "a".repeat(63);
        assert!(is_authority(label.as_bytes()));
        assert!(!is_authority(format!("{label}a").as_bytes()));
        // 255 and 253 bytes.
        let long = format!("{}com", "a.".repeat(126));
        assert!(!is_authority(long.as_bytes()));
        assert!(is_authority(long.as_bytes().get(2..).unwrap_or_default()));
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
