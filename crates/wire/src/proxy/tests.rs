#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn complete(buf: &[u8]) -> (ProxyHeader<'_>, usize) {
    match parse(buf) {
        Ok(ProxyParse::Complete {
            header,
            consumed_len,
        }) => (header, consumed_len),
        other => panic!("expected a complete header, got {other:?}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Every strict prefix of a valid header is Incomplete, never an error.
fn assert_prefixes_incomplete(full: &[u8], header_len: usize) {
    for cut in 0..header_len {
        match parse(&full[..cut]) {
            Ok(ProxyParse::Incomplete { needed }) => {
                // The hint never asks for more than the header still lacks.
                let needed = needed.map_or(1, NonZeroUsize::get);
                assert!(needed <= header_len - cut, "prefix of {cut}: hint {needed}");
            }
            other => panic!("prefix of {cut} bytes: {other:?}"),
        }
    }
}

/// A hand-assembled v2 header: fixed part, then `rest` (addresses and TLVs).
fn v2(ver_cmd: u8, fam: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(ver_cmd);
    out.push(fam);
    out.extend_from_slice(&u16::try_from(rest.len()).unwrap().to_be_bytes());
    out.extend_from_slice(rest);
    out
}

// ---- detection ----

#[test]
fn detect_needs_the_whole_signature() {
    assert_eq!(detect(b""), Detect::NeedMore);
    for cut in 1..V1_SIGNATURE.len() {
        assert_eq!(detect(&V1_SIGNATURE[..cut]), Detect::NeedMore, "{cut}");
    }
    for cut in 1..V2_SIGNATURE.len() {
        assert_eq!(detect(&V2_SIGNATURE[..cut]), Detect::NeedMore, "{cut}");
    }
    assert_eq!(detect(V1_SIGNATURE), Detect::V1);
    assert_eq!(detect(b"PROXY TCP4 1.2.3.4"), Detect::V1);
    assert_eq!(detect(V2_SIGNATURE), Detect::V2);
    assert_eq!(detect(&v2(0x21, 0x11, &[0; 12])), Detect::V2);
}

#[test]
fn detect_decides_at_the_first_mismatching_byte() {
    // The typical cases decide on the first byte.
    assert_eq!(detect(b"G"), Detect::NotProxy);
    assert_eq!(detect(b"\x16"), Detect::NotProxy);
    assert_eq!(detect(b"\0"), Detect::NotProxy);
    // Later mismatches.
    assert_eq!(detect(b"PROX!"), Detect::NotProxy);
    assert_eq!(detect(b"PROXY\t"), Detect::NotProxy);
    assert_eq!(detect(b"\r\n\r\nGET"), Detect::NotProxy);
    assert_eq!(detect(b"\r\n\r\n\0\r\nQUIT\r"), Detect::NotProxy);
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NotProxy));
}

// ---- v1 ----

const V1_TCP4_MAX: &[u8] = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
const V1_TCP6_FULL: &[u8] = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
const V1_UNKNOWN_SHORT: &[u8] = b"PROXY UNKNOWN\r\n";
const V1_UNKNOWN_MAX: &[u8] = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";

#[test]
fn v1_spec_examples() {
    let (h, n) = complete(V1_TCP4_MAX);
    assert_eq!(n, V1_TCP4_MAX.len());
    assert_eq!(
        h,
        ProxyHeader {
            version: Version::V1,
            command: Command::Proxy,
            family: Family::Inet,
            transport: Transport::Stream,
            addresses: Some((addr("255.255.255.255:65535"), addr("255.255.255.255:65535"))),
            tlvs: vec![],
        }
    );

    assert_eq!(V1_TCP6_FULL.len(), 104);
    let (h, n) = complete(V1_TCP6_FULL);
    assert_eq!(n, 104);
    assert_eq!(h.family, Family::Inet6);
    let all = addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
    assert_eq!(h.addresses, Some((all, all)));

    let (h, n) = complete(V1_UNKNOWN_SHORT);
    assert_eq!(n, V1_MIN_LEN);
    assert_eq!(
        (h.family, h.transport, h.addresses),
        (Family::Unspec, Transport::Unspec, None)
    );

    // The spec's worst case is exactly the 107-byte maximum; UNKNOWN ignores the rest.
    assert_eq!(V1_UNKNOWN_MAX.len(), V1_MAX_LEN);
    let (h, n) = complete(V1_UNKNOWN_MAX);
    assert_eq!(n, V1_MAX_LEN);
    assert_eq!(h.addresses, None);

    let (h, _) = complete(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    assert_eq!(
        h.addresses,
        Some((addr("192.168.0.1:56324"), addr("192.168.0.11:443")))
    );
    let (h, _) = complete(b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::1 0 1\r\n");
    assert_eq!(
        h.addresses,
        Some((addr("[::ffff:10.0.0.1]:0"), addr("[2001:db8::1]:1")))
    );
}

#[test]
fn v1_consumed_len_stops_at_crlf() {
    let mut buf = b"PROXY TCP4 10.0.0.1 10.0.0.2 1234 80\r\n".to_vec();
    let header_len = buf.len();
    buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let (_, n) = complete(&buf);
    assert_eq!(n, header_len);
    // Binary payload right after the header is not looked at.
    let mut buf = V1_UNKNOWN_SHORT.to_vec();
    buf.extend_from_slice(&[0xff; 200]);
    assert_eq!(complete(&buf).1, V1_MIN_LEN);
}

#[test]
fn v1_every_truncation_is_incomplete() {
    for full in [
        V1_TCP4_MAX,
        V1_TCP6_FULL,
        V1_UNKNOWN_SHORT,
        V1_UNKNOWN_MAX,
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0 0\r\n".as_slice(),
    ] {
        assert_prefixes_incomplete(full, full.len());
        let got = parse(&full[..full.len() - 1]);
        assert_eq!(
            got,
            Ok(ProxyParse::Incomplete {
                needed: NonZeroUsize::new(1)
            }),
            "CR received, LF missing"
        );
    }
}

#[test]
fn v1_rejects_malformed_lines() {
    use Endpoint::{Destination as D, Source as S};
    use ProxyError::*;
    let cases: &[(&[u8], ProxyError)] = &[
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
        (b"PROXY UNKNOWNX\r\n", V1Protocol),
        (b"PROXY \r\n", V1Protocol),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", V1Fields),
        (b"PROXY TCP4\r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", V1Port(S)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", V1Port(S)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", V1Port(S)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", V1Port(D)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n", V1Port(D)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x50\r\n", V1Port(D)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 8\xff\r\n", V1Port(D)),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", V1Address(S)),
        (b"PROXY TCP4 1.2.3.4 5.6.7 1 2\r\n", V1Address(D)),
        (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", V1Address(S)),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", V1Address(S)),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", V1Address(S)),
        (b"PROXY TCP6 ::1 fe80::1%eth0 1 2\r\n", V1Address(D)),
        (b"PROXY TCP6 ::1 [::2] 1 2\r\n", V1Address(D)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", V1LineEnding),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", V1LineEnding),
        (b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n", V1LineEnding),
        (b"PROXY UNKNOWN\n", V1LineEnding),
    ];
    for (input, want) in cases {
        assert_eq!(parse(input), Err(*want), "{}", input.escape_ascii());
    }
}

#[test]
fn v1_rejects_partial_lines_early() {
    use ProxyError::*;
    assert_eq!(parse(b"PROXY X"), Err(V1Protocol));
    assert_eq!(parse(b"PROXY TCP5"), Err(V1Protocol));
    assert_eq!(parse(b"PROXY TCP4\t"), Err(V1Protocol));
    assert_eq!(parse(b"PROXY TCP4 1.2.3.4 \0"), Err(V1InvalidByte));
    assert_eq!(parse(b"PROXY TCP6 ::1 ::g"), Err(V1InvalidByte));
    // Still possible: keep reading.
    for ok in [
        &b"PROXY T"[..],
        b"PROXY TCP6 ::1 ",
        b"PROXY UNKNOWN \x00\xff",
    ] {
        assert!(
            matches!(parse(ok), Ok(ProxyParse::Incomplete { .. })),
            "{}",
            ok.escape_ascii()
        );
    }
}

#[test]
fn v1_length_bound() {
    // 107 bytes without CRLF: can never become valid.
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(V1_MAX_LEN, b'a');
    assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    // One byte less is still a possible prefix.
    assert!(matches!(
        parse(&long[..V1_MAX_LEN - 1]),
        Ok(ProxyParse::Incomplete { .. })
    ));
    // A CR as the 107th byte leaves no room for the LF.
    let mut cr_last = long[..V1_MAX_LEN - 1].to_vec();
    cr_last.push(b'\r');
    assert_eq!(parse(&cr_last), Err(ProxyError::V1TooLong));
    // 108 bytes ending in CRLF.
    let mut over = long[..V1_MAX_LEN - 1].to_vec();
    over.extend_from_slice(b"\r\n");
    assert_eq!(parse(&over), Err(ProxyError::V1TooLong));
}

// ---- v2 ----

#[test]
fn v2_local_unspec() {
    // What a health-checking proxy sends: LOCAL, AF_UNSPEC, no payload.
    let buf = v2(0x20, 0x00, &[]);
    let (h, n) = complete(&buf);
    assert_eq!(n, 16);
    assert_eq!(
        h,
        ProxyHeader {
            version: Version::V2,
            command: Command::Local,
            family: Family::Unspec,
            transport: Transport::Unspec,
            addresses: None,
            tlvs: vec![],
        }
    );
}

#[test]
fn v2_tcp4_with_tlvs_and_payload() {
    let mut rest = vec![192, 168, 0, 1, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb];
    rest.extend_from_slice(&[Tlv::ALPN, 0, 2, b'h', b'2']);
    rest.extend_from_slice(&[Tlv::AUTHORITY, 0, 11]);
    rest.extend_from_slice(b"example.com");
    rest.extend_from_slice(&[Tlv::NOOP, 0, 0]);
    let mut buf = v2(0x21, 0x11, &rest);
    let header_len = buf.len();
    buf.extend_from_slice(b"payload");
    let (h, n) = complete(&buf);
    assert_eq!(n, header_len);
    assert_eq!(h.command, Command::Proxy);
    assert_eq!(h.transport, Transport::Stream);
    assert_eq!(
        h.addresses,
        Some((addr("192.168.0.1:56324"), addr("10.0.0.1:443")))
    );
    assert_eq!(
        h.tlvs,
        vec![
            Tlv {
                kind: Tlv::ALPN,
                value: b"h2"
            },
            Tlv {
                kind: Tlv::AUTHORITY,
                value: b"example.com"
            },
            Tlv {
                kind: Tlv::NOOP,
                value: b""
            },
        ]
    );
}

#[test]
fn v2_tcp6_udp6_udp4() {
    let mut rest = Vec::new();
    rest.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    rest.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
    rest.extend_from_slice(&[0, 1, 0, 2]);
    let want = Some((addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2")));
    let buf1 = v2(0x21, 0x21, &rest);
    let (h, n) = complete(&buf1);
    assert_eq!(
        (h.family, h.transport, h.addresses, n),
        (Family::Inet6, Transport::Stream, want, 52)
    );
    let buf2 = v2(0x21, 0x22, &rest);
    let (h, _) = complete(&buf2);
    assert_eq!((h.transport, h.addresses), (Transport::Datagram, want));
    let buf3 = v2(0x21, 0x12, &[1, 1, 1, 1, 8, 8, 8, 8, 0, 53, 0, 53]);
    let (h, _) = complete(&buf3);
    assert_eq!(
        (h.family, h.transport, h.addresses),
        (
            Family::Inet,
            Transport::Datagram,
            Some((addr("1.1.1.1:53"), addr("8.8.8.8:53")))
        )
    );
}

#[test]
fn v2_local_ignores_addresses_but_keeps_tlvs() {
    let mut rest = vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
    rest.extend_from_slice(&[Tlv::UNIQUE_ID, 0, 1, 42]);
    let buf4 = v2(0x20, 0x11, &rest);
    let (h, n) = complete(&buf4);
    assert_eq!(n, 16 + 12 + 4);
    assert_eq!(
        (h.command, h.family, h.addresses),
        (Command::Local, Family::Inet, None)
    );
    assert_eq!(
        h.tlvs,
        vec![Tlv {
            kind: Tlv::UNIQUE_ID,
            value: &[42]
        }]
    );
}

#[test]
fn v2_unix_is_skipped_with_its_tlvs() {
    let mut rest = vec![b'/'; 216];
    rest.extend_from_slice(&[Tlv::NETNS, 0, 3, b'n', b's', b'1']);
    let buf = v2(0x21, 0x31, &rest);
    let (h, n) = complete(&buf);
    assert_eq!(n, buf.len());
    assert_eq!(
        (h.family, h.transport, h.addresses),
        (Family::Unix, Transport::Stream, None)
    );
    assert_eq!(h.tlvs.len(), 1);
    assert_eq!(
        complete(&v2(0x21, 0x32, &[0; 216])).0.transport,
        Transport::Datagram
    );
}

#[test]
fn v2_unspec_with_tlvs() {
    let buf = v2(0x21, 0x00, &[0xe0, 0, 1, 7]);
    let (h, n) = complete(&buf);
    assert_eq!(n, 20);
    assert_eq!((h.family, h.addresses), (Family::Unspec, None));
    assert_eq!(
        h.tlvs,
        vec![Tlv {
            kind: 0xe0,
            value: &[7]
        }]
    );
}

#[test]
fn v2_every_truncation_is_incomplete_with_a_hint() {
    let mut rest = vec![0; 36];
    rest.extend_from_slice(&[Tlv::AUTHORITY, 0, 4, b'a', b'.', b'b', b'c']);
    for full in [
        v2(0x21, 0x21, &rest),
        v2(0x20, 0x00, &[]),
        v2(0x21, 0x31, &[0; 216]),
    ] {
        assert_prefixes_incomplete(&full, full.len());
        for cut in 0..full.len() {
            let Ok(ProxyParse::Incomplete { needed }) = parse(&full[..cut]) else {
                unreachable!()
            };
            let needed = needed.map_or(0, NonZeroUsize::get);
            if cut >= V2_FIXED_LEN {
                // The length is known: the hint is exact.
                assert_eq!(needed, full.len() - cut);
            } else {
                assert!(needed >= 1 && needed <= full.len() - cut, "{cut}: {needed}");
            }
        }
    }
}

#[test]
fn v2_rejects_bad_fixed_fields_as_soon_as_they_arrive() {
    let sig = V2_SIGNATURE.to_vec();
    let with = |extra: &[u8]| [sig.as_slice(), extra].concat();
    assert_eq!(parse(&with(&[0x11])), Err(ProxyError::V2Version(1)));
    assert_eq!(parse(&with(&[0x31])), Err(ProxyError::V2Version(3)));
    assert_eq!(parse(&with(&[0x22])), Err(ProxyError::V2Command(2)));
    assert_eq!(parse(&with(&[0x2f])), Err(ProxyError::V2Command(0xf)));
    for fam in [0x01, 0x02, 0x10, 0x13, 0x20, 0x30, 0x41, 0xff] {
        assert_eq!(
            parse(&with(&[0x21, fam])),
            Err(ProxyError::V2Family(fam)),
            "{fam:#x}"
        );
    }
    for (fam, min) in [(0x11u8, 12u16), (0x22, 36), (0x31, 216)] {
        let err = ProxyError::V2Length { len: min - 1, min };
        let short = with(&[[0x21, fam].as_slice(), &(min - 1).to_be_bytes()].concat());
        assert_eq!(parse(&short), Err(err), "{fam:#x}");
        // Refused from the fixed part alone, before the body arrives.
        assert_eq!(short.len(), V2_FIXED_LEN);
        // LOCAL is held to the same bounds.
        let local = with(&[[0x20, fam].as_slice(), &0u16.to_be_bytes()].concat());
        assert_eq!(parse(&local), Err(ProxyError::V2Length { len: 0, min }));
    }
}

#[test]
fn v2_rejects_truncated_tlvs() {
    let addrs = [0u8; 12];
    for tlvs in [
        &[0x01][..],
        &[0x01, 0x00],
        &[0x01, 0x00, 0x02, b'h'],
        &[0x04, 0, 0, 0x01, 0, 5, 1, 2, 3, 4],
    ] {
        let buf = v2(0x21, 0x11, &[&addrs[..], tlvs].concat());
        assert!(
            matches!(parse(&buf), Err(ProxyError::TlvTruncated { .. })),
            "{tlvs:?}"
        );
    }
    let buf = v2(
        0x21,
        0x11,
        &[&addrs[..], &[0x04, 0, 0, 0x01, 0, 5]].concat(),
    );
    assert_eq!(parse(&buf), Err(ProxyError::TlvTruncated { offset: 31 }));
}

#[test]
fn v2_crc32c_is_verified() {
    let src = addr("10.1.2.3:4000");
    let dst = addr("10.9.9.9:5432");
    let tlvs = [
        Tlv {
            kind: Tlv::AUTHORITY,
            value: b"db",
        },
        Tlv {
            kind: Tlv::CRC32C,
            value: &[],
        },
    ];
    let mut buf = Vec::new();
    encode_v2(
        Command::Proxy,
        Transport::Stream,
        Some((src, dst)),
        &tlvs,
        &mut buf,
    )
    .unwrap();
    let (h, n) = complete(&buf);
    assert_eq!(n, buf.len());
    assert_eq!(h.tlvs.len(), 2);
    assert_eq!(h.tlvs[1].kind, Tlv::CRC32C);
    assert_eq!(h.tlvs[1].value.len(), 4);
    // Independently: the sum over the header with the field zeroed.
    let mut zeroed = buf.clone();
    let at = zeroed.len() - 4;
    zeroed[at..].fill(0);
    assert_eq!(
        Crc32c::new().update(&zeroed).finish().to_be_bytes(),
        buf[at..]
    );

    // Any flipped bit in the header is caught, except in the CRC TLV's own type
    // byte: that makes it another TLV, and the header is then simply unchecked.
    let crc_type_at = buf.len() - 7;
    for i in (12..buf.len()).filter(|&i| i != crc_type_at) {
        let mut bad = buf.clone();
        bad[i] ^= 0x01;
        if let Ok(ProxyParse::Complete { .. }) = parse(&bad) {
            panic!("flip at {i} not detected");
        }
    }
    // A CRC TLV of the wrong size.
    let bad = v2(0x21, 0x00, &[Tlv::CRC32C, 0, 3, 1, 2, 3]);
    assert_eq!(parse(&bad), Err(ProxyError::Crc32cLength(3)));
}

#[test]
fn v2_largest_header() {
    let value = vec![0x5a; usize::from(u16::MAX) - 12 - 3];
    let tlvs = [Tlv {
        kind: 0xee,
        value: &value,
    }];
    let mut buf = Vec::new();
    let a = Some((addr("1.2.3.4:5"), addr("6.7.8.9:10")));
    encode_v2(Command::Proxy, Transport::Stream, a, &tlvs, &mut buf).unwrap();
    assert_eq!(buf.len(), V2_MAX_LEN);
    let (h, n) = complete(&buf);
    assert_eq!(n, V2_MAX_LEN);
    assert_eq!(h.tlvs, tlvs);
    // One byte more does not fit.
    let big = vec![0; value.len() + 1];
    let before = buf.clone();
    assert_eq!(
        encode_v2(
            Command::Proxy,
            Transport::Stream,
            a,
            &[Tlv {
                kind: 0xee,
                value: &big
            }],
            &mut buf
        ),
        Err(EncodeError::TooLong)
    );
    assert_eq!(buf, before, "a refused header leaves out untouched");
}

// ---- encoding ----

#[test]
fn encode_v1_shapes() {
    let mut out = Vec::new();
    encode_v1(addr("10.0.0.1:1234"), addr("10.0.0.2:80"), &mut out);
    assert_eq!(out, b"PROXY TCP4 10.0.0.1 10.0.0.2 1234 80\r\n");

    out.clear();
    encode_v1(addr("[2001:db8::1]:1"), addr("[::1]:65535"), &mut out);
    assert_eq!(out, b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n");

    // Mixed families: the IPv4 side becomes IPv4-mapped IPv6.
    out.clear();
    encode_v1(addr("192.0.2.7:5000"), addr("[2001:db8::1]:443"), &mut out);
    assert_eq!(out, b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 5000 443\r\n");
    let (h, _) = complete(&out);
    assert_eq!(
        h.addresses,
        Some((addr("[::ffff:192.0.2.7]:5000"), addr("[2001:db8::1]:443")))
    );

    // Both IPv4-mapped (an IPv4 client on a dual-stack socket): plain IPv4,
    // as the same client through an IPv4 socket; in v2 too.
    out.clear();
    let (src, dst) = (
        addr("[::ffff:192.0.2.7]:5000"),
        addr("[::ffff:10.0.0.1]:443"),
    );
    encode_v1(src, dst, &mut out);
    assert_eq!(out, b"PROXY TCP4 192.0.2.7 10.0.0.1 5000 443\r\n");
    out.clear();
    encode_v2(
        Command::Proxy,
        Transport::Stream,
        Some((src, dst)),
        &[],
        &mut out,
    )
    .unwrap();
    let (h, _) = complete(&out);
    assert_eq!(
        h.addresses,
        Some((addr("192.0.2.7:5000"), addr("10.0.0.1:443")))
    );

    out.clear();
    encode_v1_unknown(&mut out);
    assert_eq!(out, V1_UNKNOWN_SHORT);

    // The longest possible line fits the bound, and encoding appends.
    let mut out = b"keep".to_vec();
    let max = addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
    encode_v1(max, max, &mut out);
    assert_eq!(&out[..4], b"keep");
    assert_eq!(&out[4..], V1_TCP6_FULL);
    assert!(out.len() - 4 <= V1_MAX_LEN);
}

#[test]
fn encode_v2_shapes_and_errors() {
    let mut out = Vec::new();
    encode_v2(Command::Local, Transport::Stream, None, &[], &mut out).unwrap();
    assert_eq!(out, v2(0x20, 0x00, &[]));

    out.clear();
    let a = (addr("192.168.0.1:56324"), addr("10.0.0.1:443"));
    encode_v2(Command::Proxy, Transport::Stream, Some(a), &[], &mut out).unwrap();
    assert_eq!(
        out,
        v2(
            0x21,
            0x11,
            &[192, 168, 0, 1, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb]
        )
    );

    // Mixed families are written as AF_INET6 with the IPv4 side mapped.
    out.clear();
    let mixed = (addr("192.0.2.1:1"), addr("[2001:db8::1]:2"));
    encode_v2(
        Command::Proxy,
        Transport::Datagram,
        Some(mixed),
        &[],
        &mut out,
    )
    .unwrap();
    assert_eq!(out[13], 0x22);
    assert_eq!(
        complete(&out).0.addresses,
        Some((addr("[::ffff:192.0.2.1]:1"), addr("[2001:db8::1]:2")))
    );

    out.clear();
    assert_eq!(
        encode_v2(Command::Proxy, Transport::Unspec, Some(a), &[], &mut out),
        Err(EncodeError::UnspecTransport)
    );
    let huge = vec![0; 70_000];
    assert_eq!(
        encode_v2(
            Command::Proxy,
            Transport::Stream,
            None,
            &[Tlv {
                kind: 0xe0,
                value: &huge
            }],
            &mut out
        ),
        Err(EncodeError::TlvTooLong {
            kind: 0xe0,
            len: 70_000
        })
    );
    assert!(out.is_empty());
}

#[test]
fn encode_reuses_the_callers_buffer() {
    // With capacity reserved up front, encoding writes in place: no reallocation.
    let mut out = Vec::with_capacity(V2_FIXED_LEN + 36 + 3 + 10 + V1_MAX_LEN);
    let ptr = out.as_ptr();
    let a = (addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2"));
    let tlvs = [
        Tlv {
            kind: Tlv::CRC32C,
            value: &[],
        },
        Tlv {
            kind: 1,
            value: b"h2",
        },
    ];
    encode_v2(
        Command::Proxy,
        Transport::Stream,
        Some(a),
        &tlvs[..1],
        &mut out,
    )
    .unwrap();
    encode_v1(a.0, a.1, &mut out);
    assert_eq!(out.as_ptr(), ptr);
    // A CRC covers only its own header, not what `out` held before.
    let (h, n) = complete(&out);
    assert_eq!(n, V2_FIXED_LEN + 36 + 7);
    assert_eq!(complete(&out[n..]).0.version, Version::V1);
    assert_eq!(h.tlvs.len(), 1);
}

// ---- properties ----

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
    ]
}

/// What the parser reports for encoded endpoints: mixed pairs come back as IPv6.
fn as_parsed(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => (src, dst),
        _ => (
            SocketAddr::new(IpAddr::V6(to_v6(src.ip())), src.port()),
            SocketAddr::new(IpAddr::V6(to_v6(dst.ip())), dst.port()),
        ),
    }
}

fn tlv_list() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    prop::collection::vec(
        (
            any::<u8>().prop_filter("CRC values are computed", |k| *k != Tlv::CRC32C),
            prop::collection::vec(any::<u8>(), 0..300),
        ),
        0..8,
    )
}

proptest! {
    #[test]
    fn v1_round_trip(src in socket_addr(), dst in socket_addr(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut out = Vec::new();
        encode_v1(src, dst, &mut out);
        prop_assert!(out.len() <= V1_MAX_LEN);
        let header_len = out.len();
        out.extend_from_slice(&tail);
        let (h, n) = complete(&out);
        prop_assert_eq!(n, header_len);
        prop_assert_eq!(h.version, Version::V1);
        prop_assert_eq!(h.transport, Transport::Stream);
        prop_assert_eq!(h.addresses, Some(as_parsed(src, dst)));
        let mut again = Vec::new();
        h.encode(&mut again).unwrap();
        prop_assert_eq!(&again[..], &out[..header_len]);
    }

    #[test]
    fn v2_round_trip(
        local in any::<bool>(),
        dgram in any::<bool>(),
        addrs in prop::option::of((socket_addr(), socket_addr())),
        tlvs in tlv_list(),
        crc in any::<bool>(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let command = if local { Command::Local } else { Command::Proxy };
        let transport = if dgram { Transport::Datagram } else { Transport::Stream };
        let mut tlvs: Vec<Tlv<'_>> = tlvs.iter().map(|(kind, value)| Tlv { kind: *kind, value }).collect();
        if crc {
            tlvs.push(Tlv { kind: Tlv::CRC32C, value: &[] });
        }
        let mut out = Vec::new();
        encode_v2(command, transport, addrs, &tlvs, &mut out).unwrap();
        let header_len = out.len();
        out.extend_from_slice(&tail);
        let (h, n) = complete(&out);
        prop_assert_eq!(n, header_len);
        prop_assert_eq!(h.version, Version::V2);
        prop_assert_eq!(h.command, command);
        let pair = addrs.map(|(s, d)| as_parsed(s, d));
        match pair {
            None => prop_assert_eq!((h.family, h.transport), (Family::Unspec, Transport::Unspec)),
            Some((SocketAddr::V4(_), _)) => prop_assert_eq!((h.family, h.transport), (Family::Inet, transport)),
            Some(_) => prop_assert_eq!((h.family, h.transport), (Family::Inet6, transport)),
        }
        prop_assert_eq!(h.addresses, if local { None } else { pair });
        prop_assert_eq!(h.tlvs.len(), tlvs.len());
        for (got, sent) in h.tlvs.iter().zip(&tlvs) {
            prop_assert_eq!(got.kind, sent.kind);
            if sent.kind != Tlv::CRC32C {
                prop_assert_eq!(got.value, sent.value);
            }
        }
        // Proxy headers re-encode byte for byte.
        if !local || addrs.is_none() {
            let mut again = Vec::new();
            h.encode(&mut again).unwrap();
            prop_assert_eq!(&again[..], &out[..header_len]);
        }
        // And every truncation is merely incomplete.
        for cut in [0, 1, 11, 12, 13, 15, 16, header_len / 2, header_len - 1].into_iter().filter(|&c| c < header_len) {
            let is_incomplete = matches!(parse(&out[..cut]), Ok(ProxyParse::Incomplete { .. }));
            prop_assert!(is_incomplete);
        }
    }

    #[test]
    fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = detect(&buf);
        check_invariants(&buf);
    }

    #[test]
    fn random_bytes_after_a_signature_never_panic(
        v2_sig in any::<bool>(),
        rest in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let sig: &[u8] = if v2_sig { V2_SIGNATURE } else { V1_SIGNATURE };
        check_invariants(&[sig, &rest].concat());
    }

    #[test]
    fn plausible_v2_never_panics(
        ver_cmd in prop::sample::select(vec![0x20u8, 0x21, 0x22, 0x11]),
        fam in prop::sample::select(vec![0x00u8, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x13]),
        rest in prop::collection::vec(any::<u8>(), 0..300),
        len_delta in -4i32..4,
    ) {
        let mut buf = v2(ver_cmd, fam, &rest);
        let len = i32::try_from(rest.len()).unwrap() + len_delta;
        let len = u16::try_from(len.max(0)).unwrap();
        buf[14..16].copy_from_slice(&len.to_be_bytes());
        check_invariants(&buf);
    }

    #[test]
    fn mutated_headers_never_panic(
        v1 in any::<bool>(),
        src in socket_addr(),
        dst in socket_addr(),
        tlvs in tlv_list(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let tlvs: Vec<Tlv<'_>> = tlvs.iter().map(|(kind, value)| Tlv { kind: *kind, value }).collect();
        let mut buf = Vec::new();
        if v1 {
            encode_v1(src, dst, &mut buf);
        } else {
            encode_v2(Command::Proxy, Transport::Stream, Some((src, dst)), &tlvs, &mut buf).unwrap();
        }
        for (at, byte) in flips {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        check_invariants(&buf);
    }
}

/// An IPv4-mapped pair of addresses, in v1 and in v2, is re-encoded as
/// IPv4 on purpose: the invariants allow it (they took it for a crash).
#[test]
fn mapped_addresses_meet_the_invariants() {
    check_invariants(b"PROXY TCP6 ::ffff:1.2.3.4 ::ffff:5.6.7.8 1 2\r\n");
    let (src, dst) = (
        addr("[::ffff:192.0.2.1]:1000"),
        addr("[::ffff:10.0.0.1]:443"),
    );
    let mut buf = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    for a in [src, dst] {
        let IpAddr::V6(ip) = a.ip() else {
            unreachable!("IPv6 literals")
        };
        buf.extend_from_slice(&ip.octets());
    }
    buf.extend_from_slice(&1000u16.to_be_bytes());
    buf.extend_from_slice(&443u16.to_be_bytes());
    let (header, n) = complete(&buf);
    assert_eq!((header.family, n), (Family::Inet6, buf.len()));
    check_invariants(&buf);
}

/// What the fuzz target checks, run here on proptest's inputs too.
fn check_invariants(buf: &[u8]) {
    match parse(buf) {
        Ok(ProxyParse::Complete {
            header,
            consumed_len,
        }) => {
            assert!(consumed_len <= buf.len());
            assert!(matches!(detect(buf), Detect::V1 | Detect::V2));
            // The header alone parses the same.
            assert_eq!(
                parse(&buf[..consumed_len]),
                Ok(ProxyParse::Complete {
                    header: header.clone(),
                    consumed_len
                })
            );
            // One byte fewer is a prefix still waiting for its end.
            assert!(matches!(
                parse(&buf[..consumed_len - 1]),
                Ok(ProxyParse::Incomplete { .. })
            ));
            let mut again = Vec::new();
            header.encode(&mut again).unwrap();
            let (h2, n2) = complete(&again);
            assert_eq!(n2, again.len());
            let canonical = header.family != Family::Unix
                && (header.command == Command::Proxy || header.family == Family::Unspec);
            // An IPv4-mapped pair is written as IPv4 (on purpose), and a
            // second CRC32C TLV as four zero bytes: only values compare.
            let mapped =
                |a: SocketAddr| matches!(a.ip(), IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some());
            let remapped = header.family == Family::Inet6
                && header
                    .addresses
                    .is_some_and(|(s, d)| mapped(s) && mapped(d));
            let crcs = header.tlvs.iter().filter(|t| t.kind == Tlv::CRC32C).count();
            if remapped || crcs > 1 {
                let canon = |a: Option<(SocketAddr, SocketAddr)>| {
                    a.map(|(s, d)| {
                        (
                            SocketAddr::new(s.ip().to_canonical(), s.port()),
                            SocketAddr::new(d.ip().to_canonical(), d.port()),
                        )
                    })
                };
                assert_eq!(h2.command, header.command);
                assert_eq!(canon(h2.addresses), canon(header.addresses));
                assert_eq!(h2.tlvs.len(), header.tlvs.len());
                for (a, b) in h2.tlvs.iter().zip(&header.tlvs) {
                    assert_eq!(a.kind, b.kind);
                    assert!(a.kind == Tlv::CRC32C || a.value == b.value);
                }
            } else if header.version == Version::V1 {
                assert_eq!(h2, header);
            } else if canonical {
                assert_eq!(&again[..], &buf[..consumed_len]);
            } else {
                assert_eq!((h2.command, h2.addresses), (header.command, None));
            }
        }
        Ok(ProxyParse::Incomplete { needed }) => {
            assert_ne!(detect(buf), Detect::NotProxy);
            assert!(needed.is_none_or(|n| n.get() <= V2_MAX_LEN));
        }
        Err(_) => {}
    }
}
