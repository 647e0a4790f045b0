//! Values with a syntax of their own: source networks, server names, HTTP
//! status sets.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::StatusMatch;

/// `"10.0.0.0/8"`, `"::1/128"`, or a bare IP meaning that one host.
pub(super) fn parse_source(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        // Accept "10.1.2.3/8" like most proxies do, but store the network.
        return Ok(ipv4_if_mapped(net.trunc()));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ipv4_if_mapped(IpNet::from(ip)));
    }
    Err(format!(
        "{s:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\", \"::1/128\", \"192.0.2.7\")"
    ))
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network
/// it stands for: clients are matched by their IPv4 address (a dual-stack
/// socket's `::ffff:a.b.c.d` is turned into `a.b.c.d`), so the mapped form
/// would match none.
pub fn ipv4_if_mapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|ip| ipnet::Ipv4Net::new(ip, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

/// `tls_server_name`: a DNS name (SNI, and the name the certificate must
/// carry) or an IP address (verified, never sent as SNI).
pub(super) fn check_server_name(name: &str) -> Result<(), String> {
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let dns = name.strip_suffix('.').unwrap_or(name);
    // A last label of digits only (`10.0.0.300`, `db.1`) is neither an IP
    // address nor a name TLS takes (RFC 3696 §2; rustls refuses it): the
    // name would be dropped for the address without a word.
    let numeric_tld = dns
        .rsplit('.')
        .next()
        .is_some_and(|tld| !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()));
    let valid = weir_wire::name::is_dns_name(dns.as_bytes()) && !numeric_tld;
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS name or an IP address (e.g. \"db.internal\"; write an \
             internationalised name in its xn-- form)"
        ))
    }
}

/// `expect_status`: comma-separated items, each a status (`200`), a class
/// (`2xx` = 200..=299) or an inclusive range (`200-299`); spaces around items
/// are allowed.
pub(super) fn parse_status_match(s: &str) -> Result<StatusMatch, String> {
    if s.trim().is_empty() {
        return Err(
            "must not be empty; write a status, class or range, e.g. \"200\", \"2xx\", \
             \"200-299\""
                .to_owned(),
        );
    }
    let mut ranges = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!(
                "{s:?} has an empty item; separate statuses with single commas, e.g. \"200,204\""
            ));
        }
        ranges.push(status_item(item)?);
    }
    Ok(StatusMatch { ranges })
}

fn status_item(item: &str) -> Result<(u16, u16), String> {
    let not_a_status = || format!("{item:?} is not a status, class (2xx) or range (200-299)");
    if let Some((lo, hi)) = item.split_once('-') {
        let lo = status_code(lo.trim()).ok_or_else(not_a_status)?;
        let hi = status_code(hi.trim()).ok_or_else(not_a_status)?;
        out_of_range(item, lo)?;
        out_of_range(item, hi)?;
        if lo > hi {
            return Err(format!(
                "{item:?} is an empty range: its first status is above its last"
            ));
        }
        return Ok((lo, hi));
    }
    let bytes = item.as_bytes();
    if let [class @ b'0'..=b'9', b'x' | b'X', b'x' | b'X'] = bytes {
        let class = u16::from(class - b'0');
        if !(1..=5).contains(&class) {
            return Err(format!(
                "{item:?} is not a status class; classes are 1xx to 5xx"
            ));
        }
        return Ok((class * 100, class * 100 + 99));
    }
    let code = status_code(item).ok_or_else(not_a_status)?;
    out_of_range(item, code)?;
    Ok((code, code))
}

/// Exactly three digits.
fn status_code(s: &str) -> Option<u16> {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn out_of_range(item: &str, code: u16) -> Result<(), String> {
    if (100..=599).contains(&code) {
        Ok(())
    } else {
        Err(format!(
            "{item:?}: {code} is not an HTTP status; statuses are 100..=599"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa_net(s: &str) -> IpNet {
        s.parse()
            .unwrap_or(IpNet::from(super::super::PLACEHOLDER_ADDR.ip()))
    }

    #[test]
    fn sources_accept_bare_ips_and_normalise_networks() {
        assert_eq!(parse_source("192.0.2.7"), Ok(sa_net("192.0.2.7/32")));
        assert_eq!(parse_source("::1"), Ok(sa_net("::1/128")));
        assert_eq!(parse_source("10.1.2.3/8"), Ok(sa_net("10.0.0.0/8")));
        // The IPv4-mapped form stands for the IPv4 network (clients are
        // matched by their IPv4 address); a shorter IPv6 network stays.
        assert_eq!(
            parse_source("::ffff:10.1.0.0/112"),
            Ok(sa_net("10.1.0.0/16"))
        );
        assert_eq!(parse_source("::ffff:192.0.2.7"), Ok(sa_net("192.0.2.7/32")));
        assert_eq!(parse_source("::/0"), Ok(sa_net("::/0")));
        assert!(parse_source("10.0.0.0/33").is_err());
        assert!(parse_source("ten").is_err());
    }

    #[test]
    fn expect_status_forms() {
        let ok = |s: &str| parse_status_match(s).map(|m| m.ranges);
        assert_eq!(ok("200"), Ok(vec![(200, 200)]));
        assert_eq!(ok("2xx"), Ok(vec![(200, 299)]));
        assert_eq!(ok("5XX"), Ok(vec![(500, 599)]));
        assert_eq!(ok("200-299"), Ok(vec![(200, 299)]));
        assert_eq!(ok("200-200"), Ok(vec![(200, 200)]));
        assert_eq!(ok("200,204"), Ok(vec![(200, 200), (204, 204)]));
        assert_eq!(
            ok("200, 3xx, 404-410"),
            Ok(vec![(200, 200), (300, 399), (404, 410)])
        );
        assert_eq!(ok(" 1xx ,599 "), Ok(vec![(100, 199), (599, 599)]));
        assert_eq!(ok("100 - 101"), Ok(vec![(100, 101)]));
    }

    #[test]
    fn expect_status_mistakes() {
        let err = |s: &str| parse_status_match(s).err().unwrap_or_default();
        assert_eq!(
            err("2xz"),
            "\"2xz\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("200,2xz"),
            "\"2xz\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("20"),
            "\"20\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("2000"),
            "\"2000\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("+20"),
            "\"+20\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("200-2xx"),
            "\"200-2xx\" is not a status, class (2xx) or range (200-299)"
        );
        assert_eq!(
            err("600"),
            "\"600\": 600 is not an HTTP status; statuses are 100..=599"
        );
        assert_eq!(
            err("099"),
            "\"099\": 99 is not an HTTP status; statuses are 100..=599"
        );
        assert_eq!(
            err("200-600"),
            "\"200-600\": 600 is not an HTTP status; statuses are 100..=599"
        );
        assert_eq!(
            err("299-200"),
            "\"299-200\" is an empty range: its first status is above its last"
        );
        assert_eq!(
            err("6xx"),
            "\"6xx\" is not a status class; classes are 1xx to 5xx"
        );
        assert_eq!(
            err("0xx"),
            "\"0xx\" is not a status class; classes are 1xx to 5xx"
        );
        assert!(err("").starts_with("must not be empty"));
        assert!(err("  ").starts_with("must not be empty"));
        assert!(err("200,").starts_with("\"200,\" has an empty item"));
        assert!(err("200,,204").starts_with("\"200,,204\" has an empty item"));
    }

    #[test]
    fn expect_status_displays_as_written() {
        let shown = |s: &str| {
            parse_status_match(s)
                .map(|m| m.to_string())
                .unwrap_or_else(|e| e)
        };
        assert_eq!(shown("200, 3xx, 404-410"), "200,3xx,404-410");
        assert_eq!(shown("200-299"), "2xx");
        assert_eq!(shown("200-200"), "200");
    }

    #[test]
    fn status_match_matches_inclusive_ranges() {
        let m = parse_status_match("200, 3xx, 404-410").unwrap_or(StatusMatch { ranges: vec![] });
        for status in [200, 300, 350, 399, 404, 407, 410] {
            assert!(m.matches(status), "{status}");
        }
        for status in [199, 201, 299, 400, 403, 411, 500] {
            assert!(!m.matches(status), "{status}");
        }
    }

    #[test]
    fn server_names() {
        assert_eq!(check_server_name("db.internal"), Ok(()));
        assert_eq!(check_server_name("db.internal."), Ok(()));
        assert_eq!(check_server_name("_svc.example-1.com"), Ok(()));
        assert_eq!(check_server_name("10.0.0.1"), Ok(()));
        assert_eq!(check_server_name("::1"), Ok(()));
        assert_eq!(check_server_name("1password.example"), Ok(()));
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a b",
            "db.internal:443",
            "bücher.de",
            // Neither an address nor a name TLS takes.
            "10.0.0.300",
            "010.0.0.1",
            "db.1",
        ] {
            assert!(check_server_name(bad).is_err(), "{bad:?}");
        }
    }
}
