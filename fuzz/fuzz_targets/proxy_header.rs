//! Any bytes: `proxy::parse` must not panic, and what it accepts must be
//! self-consistent and survive a re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};

use weir_wire::proxy::{self, Command, Detect, Family, ProxyHeader, ProxyParse, Tlv, Version};

/// Both addresses IPv4-mapped IPv6: `encode` writes them as IPv4.
fn remapped(h: &ProxyHeader<'_>) -> bool {
    let mapped = |a: SocketAddr| matches!(a.ip(), IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some());
    h.family == Family::Inet6 && h.addresses.is_some_and(|(s, d)| mapped(s) && mapped(d))
}

/// What a re-encode keeps of `h`: its command, addresses (IPv4-mapped ones
/// as IPv4), and its TLVs (a CRC32C's value is the encoder's own).
fn same_values(again: &ProxyHeader<'_>, h: &ProxyHeader<'_>) {
    let canonical = |a: Option<(SocketAddr, SocketAddr)>| {
        a.map(|(s, d)| {
            (
                SocketAddr::new(s.ip().to_canonical(), s.port()),
                SocketAddr::new(d.ip().to_canonical(), d.port()),
            )
        })
    };
    assert_eq!(again.command, h.command);
    assert_eq!(canonical(again.addresses), canonical(h.addresses));
    assert_eq!(again.tlvs.len(), h.tlvs.len());
    for (a, b) in again.tlvs.iter().zip(&h.tlvs) {
        assert_eq!(a.kind, b.kind);
        if a.kind != Tlv::CRC32C {
            assert_eq!(a.value, b.value);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let detected = proxy::detect(data);
    match proxy::parse(data) {
        Ok(ProxyParse::Complete {
            header,
            consumed_len,
        }) => {
            assert!(consumed_len <= data.len());
            assert!(matches!(detected, Detect::V1 | Detect::V2));
            match header.version {
                Version::V1 => assert!(consumed_len <= proxy::V1_MAX_LEN),
                Version::V2 => assert!(consumed_len <= proxy::V2_MAX_LEN),
            }
            // The header's own bytes parse to the same header (what follows is payload)...
            let own = &data[..consumed_len];
            assert_eq!(
                proxy::parse(own),
                Ok(ProxyParse::Complete {
                    header: header.clone(),
                    consumed_len,
                })
            );
            // ...and one byte fewer is a prefix still waiting for its end.
            assert!(matches!(
                proxy::parse(&own[..consumed_len - 1]),
                Ok(ProxyParse::Incomplete { .. })
            ));

            let mut out = Vec::new();
            header
                .encode(&mut out)
                .expect("a parsed header fits the encoder's bounds");
            let Ok(ProxyParse::Complete {
                header: again,
                consumed_len: again_len,
            }) = proxy::parse(&out)
            else {
                panic!("re-encoded header does not parse: {header:?}");
            };
            assert_eq!(again_len, out.len());
            // An IPv4-mapped pair is written as IPv4 (on purpose), and a
            // second CRC32C TLV as four zero bytes: then only the values
            // the encoder keeps are comparable.
            let rewritten = remapped(&header)
                || header.tlvs.iter().filter(|t| t.kind == Tlv::CRC32C).count() > 1;
            match header.version {
                _ if rewritten => same_values(&again, &header),
                // v1 text has several spellings of one IPv6 address: compare values.
                Version::V1 => assert_eq!(again, header),
                Version::V2 => {
                    // LOCAL and AF_UNIX address blocks are not kept by the parser,
                    // so only the rest is comparable; otherwise the bytes are equal.
                    let kept = header.family != Family::Unix
                        && (header.command == Command::Proxy || header.family == Family::Unspec);
                    if kept {
                        assert_eq!(out.as_slice(), own);
                    } else {
                        assert_eq!(again.command, header.command);
                        assert_eq!(again.addresses, None);
                        assert_eq!(again.tlvs.len(), header.tlvs.len());
                    }
                }
            }
        }
        Ok(ProxyParse::Incomplete { needed }) => {
            assert_ne!(detected, Detect::NotProxy);
            if let Some(n) = needed {
                assert!(n.get() <= proxy::V2_MAX_LEN);
            }
        }
        Err(_) => {}
    }
});
