//! PROXY protocol v1 (text) and v2 (binary): detect, parse, encode.
//!
//! Written from the HAProxy PROXY protocol specification. Choices the spec leaves
//! open, made here:
//!
//! - **v1 is strict**: exactly one space between fields, ports are 1–5 decimal digits
//!   with no sign and no leading zero (except `0` itself), addresses must parse as the
//!   announced family. For `UNKNOWN` everything up to CRLF is ignored, as the spec says.
//! - **v2 `LOCAL`** headers report `addresses: None` (the spec says the receiver must
//!   use the real connection endpoints), but keep the announced family and the TLVs.
//! - **v2 `AF_UNIX`** is parsed and bounds-checked like any other family and reported
//!   as [`Family::Unix`] with `addresses: None`: a caller treats it like `AF_UNSPEC`
//!   (use the socket's own endpoints) or refuses it; either way the header can be
//!   skipped with `consumed_len`.
//! - **Mixed families when encoding** (one IPv4 and one IPv6 endpoint): the IPv4 one
//!   is written as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) and the header is
//!   TCP6 / `AF_INET6`. This keeps the client address, where `UNKNOWN` would lose it.
//!   Both endpoints IPv4-mapped (an IPv4 client seen through a dual-stack socket)
//!   are written as IPv4: `TCP4` / `AF_INET`, as a plain IPv4 socket would give.
//! - **CRC32C**: a `PP2_TYPE_CRC32C` TLV is verified when parsing; when encoding, the
//!   first one in the list gets its value computed (the given value is ignored).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::num::NonZeroUsize;

use crate::crc32c::Crc32c;

/// The first bytes of a v1 header (the `PROXY` keyword and its space).
pub const V1_SIGNATURE: &[u8; 6] = b"PROXY ";
/// The 12-byte v2 signature. It contains `\0` and starts with `\r\n\r\n`, so it can
/// never be mistaken for v1 or for an HTTP request.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// Shortest v1 header: `PROXY UNKNOWN\r\n`.
pub const V1_MIN_LEN: usize = 15;
/// Fixed part of a v2 header: signature, version/command, family/protocol, length.
pub const V2_FIXED_LEN: usize = 16;
/// Longest v2 header: the fixed part plus a 16-bit length.
pub const V2_MAX_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

// Address block sizes: two addresses and two ports (AF_UNIX: two 108-byte paths).
const AF_INET_LEN: u16 = 12;
const AF_INET6_LEN: u16 = 36;
const AF_UNIX_LEN: u16 = 216;

/// Which PROXY header, if any, a connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    /// Starts with the v1 signature `PROXY `.
    V1,
    /// Starts with the 12-byte v2 signature.
    V2,
    /// A byte differs from both signatures: this is not a PROXY header.
    NotProxy,
    /// Every byte so far matches a signature, but there are too few to tell.
    NeedMore,
}

/// Protocol version of a parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// v2 command. v1 headers are always `Proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Sent by the proxy itself (e.g. a health check): use the real endpoints.
    Local,
    /// Relayed on behalf of a client: the addresses are the client's.
    Proxy,
}

/// Transport protocol announced by the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// v1 `UNKNOWN`, v2 `AF_UNSPEC`.
    Unspec,
    /// TCP (v1 `TCP4`/`TCP6`, v2 `SOCK_STREAM`).
    Stream,
    /// UDP (v2 `SOCK_DGRAM`).
    Datagram,
}

/// Address family announced by the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Unspec,
    Inet,
    Inet6,
    /// v2 `AF_UNIX`: parsed and skipped; the paths are not reported.
    Unix,
}

/// One v2 TLV (type-length-value) entry; `value` borrows from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub kind: u8,
    pub value: &'a [u8],
}

impl Tlv<'_> {
    pub const ALPN: u8 = 0x01;
    pub const AUTHORITY: u8 = 0x02;
    pub const CRC32C: u8 = 0x03;
    pub const NOOP: u8 = 0x04;
    pub const UNIQUE_ID: u8 = 0x05;
    pub const SSL: u8 = 0x20;
    pub const NETNS: u8 = 0x30;
}

/// A parsed PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader<'a> {
    pub version: Version,
    pub command: Command,
    pub family: Family,
    pub transport: Transport,
    /// `(source, destination)`; `None` for v1 `UNKNOWN`, v2 `LOCAL`, `AF_UNSPEC` and
    /// `AF_UNIX`, meaning "use the connection's own endpoints".
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// v2 TLVs in wire order; always empty for v1. An empty `Vec` does not allocate.
    pub tlvs: Vec<Tlv<'a>>,
}

/// Outcome of [`parse`] when the bytes are not (yet) wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyParse<'a> {
    /// The header, and how many input bytes it occupies (TLVs included); the
    /// connection's payload starts at `consumed_len`.
    Complete {
        header: ProxyHeader<'a>,
        consumed_len: usize,
    },
    /// A valid prefix; at least `needed` more bytes are required when known.
    Incomplete { needed: Option<NonZeroUsize> },
}

/// Why bytes can never form a valid PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 header has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("PROXY v1 header has a stray CR or LF (lines end with CRLF)")]
    V1LineEnding,
    #[error("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")]
    V1Protocol,
    #[error("PROXY v1 header needs 5 fields separated by single spaces")]
    V1Fields,
    #[error("PROXY v1 TCP4/TCP6 line has a byte no address or port contains")]
    V1InvalidByte,
    #[error("PROXY v1 {0} address is not a valid address of the announced family")]
    V1Address(Endpoint),
    #[error("PROXY v1 {0} port is not a decimal 0..=65535 without sign or leading zero")]
    V1Port(Endpoint),
    #[error("PROXY v2 version is {0}, expected 2")]
    V2Version(u8),
    #[error("PROXY v2 command {0:#x} is neither LOCAL nor PROXY")]
    V2Command(u8),
    #[error("PROXY v2 family/protocol byte {0:#04x} is not a defined combination")]
    V2Family(u8),
    #[error("PROXY v2 length {len} is shorter than the {min}-byte address block")]
    V2Length { len: u16, min: u16 },
    #[error("PROXY v2 TLV at offset {offset} runs past the end of the header")]
    TlvTruncated { offset: usize },
    #[error("PROXY v2 CRC32C TLV has {0} bytes, expected 4")]
    Crc32cLength(usize),
    #[error("PROXY v2 CRC32C checksum does not match the header")]
    Crc32cMismatch,
}

/// Which endpoint a v1 field error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Source,
    Destination,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Source => "source",
            Self::Destination => "destination",
        })
    }
}

/// Why a v2 header cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("PROXY v2 addresses and TLVs take more than 65535 bytes")]
    TooLong,
    #[error("PROXY v2 TLV {kind:#04x} value of {len} bytes is longer than 65535")]
    TlvTooLong { kind: u8, len: usize },
    #[error("PROXY v2 addresses need a Stream or Datagram transport, not Unspec")]
    UnspecTransport,
}

/// Says, from the first bytes of a connection, whether it starts with a PROXY header.
///
/// Decides at the first byte that matches neither signature (for most traffic, the
/// first byte), so a caller need not wait for 12 bytes from a client that sent 1.
#[must_use]
pub fn detect(prefix: &[u8]) -> Detect {
    let mut v1 = true;
    let mut v2 = true;
    for (i, &b) in prefix.iter().take(V2_SIGNATURE.len()).enumerate() {
        // Past its 6 bytes the v1 signature no longer constrains anything.
        v1 &= V1_SIGNATURE.get(i).is_none_or(|&s| s == b);
        v2 &= V2_SIGNATURE.get(i) == Some(&b);
        if !v1 && !v2 {
            return Detect::NotProxy;
        }
    }
    if v1 && prefix.len() >= V1_SIGNATURE.len() {
        Detect::V1
    } else if v2 && prefix.len() >= V2_SIGNATURE.len() {
        Detect::V2
    } else {
        Detect::NeedMore
    }
}

/// Parses a v1 or v2 header (auto-detected) at the start of `buf`.
///
/// Bytes after the header are the client's payload and are not looked at.
pub fn parse(buf: &[u8]) -> Result<ProxyParse<'_>, ProxyError> {
    match detect(buf) {
        Detect::V1 => parse_v1(buf),
        Detect::V2 => parse_v2(buf),
        Detect::NotProxy => Err(ProxyError::NotProxy),
        Detect::NeedMore => {
            // The shortest header of the version this prefix matches.
            let min = match buf.first() {
                Some(b'\r') => V2_FIXED_LEN,
                _ => V1_MIN_LEN,
            };
            Ok(incomplete(min.saturating_sub(buf.len())))
        }
    }
}

fn incomplete(needed: usize) -> ProxyParse<'static> {
    ProxyParse::Incomplete {
        needed: NonZeroUsize::new(needed),
    }
}

fn parse_v1(buf: &[u8]) -> Result<ProxyParse<'_>, ProxyError> {
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        check_v1_partial(window.get(V1_SIGNATURE.len()..).unwrap_or_default())?;
        return Ok(incomplete(V1_MIN_LEN.saturating_sub(buf.len()).max(1)));
    };
    if window.get(end) == Some(&b'\n') {
        return Err(ProxyError::V1LineEnding);
    }
    let consumed_len = end + 2;
    if consumed_len > V1_MAX_LEN {
        return Err(ProxyError::V1TooLong);
    }
    match buf.get(end + 1) {
        None => return Ok(incomplete(1)),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::V1LineEnding),
    }
    let line = buf
        .get(V1_SIGNATURE.len()..end)
        .ok_or(ProxyError::V1Fields)?;
    let header = parse_v1_line(line)?;
    Ok(ProxyParse::Complete {
        header,
        consumed_len,
    })
}

/// Refuses a line that cannot become valid before its CRLF arrives: a wrong protocol
/// word, or a byte that no address or port of a TCP4/TCP6 line contains.
fn check_v1_partial(line: &[u8]) -> Result<(), ProxyError> {
    let fits = |word: &[u8]| line.iter().zip(word).all(|(a, b)| a == b);
    if fits(b"UNKNOWN") {
        // Anything may follow UNKNOWN.
        return Ok(());
    }
    if !fits(b"TCP4 ") && !fits(b"TCP6 ") {
        return Err(ProxyError::V1Protocol);
    }
    let rest = line.get(5..).unwrap_or_default();
    if rest
        .iter()
        .all(|&b| b.is_ascii_hexdigit() || b == b'.' || b == b':' || b == b' ')
    {
        Ok(())
    } else {
        Err(ProxyError::V1InvalidByte)
    }
}

/// Parses what follows `PROXY ` up to (not including) the CR.
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader<'static>, ProxyError> {
    let mut fields = line.split(|&b| b == b' ');
    let family = match fields.next() {
        Some(b"TCP4") => Family::Inet,
        Some(b"TCP6") => Family::Inet6,
        Some(b"UNKNOWN") => {
            return Ok(ProxyHeader {
                version: Version::V1,
                command: Command::Proxy,
                family: Family::Unspec,
                transport: Transport::Unspec,
                addresses: None,
                tlvs: Vec::new(),
            });
        }
        _ => return Err(ProxyError::V1Protocol),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1Fields);
    };
    // An empty field means two spaces in a row or a trailing space.
    if [src, dst, sport, dport].iter().any(|f| f.is_empty()) {
        return Err(ProxyError::V1Fields);
    }
    let src_ip = parse_v1_ip(src, family).ok_or(ProxyError::V1Address(Endpoint::Source))?;
    let dst_ip = parse_v1_ip(dst, family).ok_or(ProxyError::V1Address(Endpoint::Destination))?;
    let sport = parse_v1_port(sport).ok_or(ProxyError::V1Port(Endpoint::Source))?;
    let dport = parse_v1_port(dport).ok_or(ProxyError::V1Port(Endpoint::Destination))?;
    Ok(ProxyHeader {
        version: Version::V1,
        command: Command::Proxy,
        family,
        transport: Transport::Stream,
        addresses: Some((
            SocketAddr::new(src_ip, sport),
            SocketAddr::new(dst_ip, dport),
        )),
        tlvs: Vec::new(),
    })
}

fn parse_v1_ip(field: &[u8], family: Family) -> Option<IpAddr> {
    let text = std::str::from_utf8(field).ok()?;
    // std's parsers are strict: no leading zeros in IPv4 octets, no zone ids.
    match family {
        Family::Inet => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        Family::Inet6 => text.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        Family::Unspec | Family::Unix => None,
    }
}

fn parse_v1_port(field: &[u8]) -> Option<u16> {
    // Hand-rolled because str::parse accepts a leading '+' and leading zeros.
    if field.is_empty() || field.len() > 5 || (field.len() > 1 && field.first() == Some(&b'0')) {
        return None;
    }
    let mut port: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        port = port * 10 + u32::from(b - b'0');
    }
    u16::try_from(port).ok()
}

fn parse_v2(buf: &[u8]) -> Result<ProxyParse<'_>, ProxyError> {
    let need_fixed = || Ok(incomplete(V2_FIXED_LEN.saturating_sub(buf.len())));
    // Check each fixed byte as soon as it arrives, so garbage is refused early.
    let Some(&ver_cmd) = buf.get(12) else {
        return need_fixed();
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let command = match ver_cmd & 0x0f {
        0x0 => Command::Local,
        0x1 => Command::Proxy,
        other => return Err(ProxyError::V2Command(other)),
    };
    let Some(&fam) = buf.get(13) else {
        return need_fixed();
    };
    let (family, transport, block_len) = match fam {
        0x00 => (Family::Unspec, Transport::Unspec, 0),
        0x11 => (Family::Inet, Transport::Stream, AF_INET_LEN),
        0x12 => (Family::Inet, Transport::Datagram, AF_INET_LEN),
        0x21 => (Family::Inet6, Transport::Stream, AF_INET6_LEN),
        0x22 => (Family::Inet6, Transport::Datagram, AF_INET6_LEN),
        0x31 => (Family::Unix, Transport::Stream, AF_UNIX_LEN),
        0x32 => (Family::Unix, Transport::Datagram, AF_UNIX_LEN),
        other => return Err(ProxyError::V2Family(other)),
    };
    let Some(&[hi, lo]) = buf.get(14..16).and_then(|s| s.first_chunk::<2>()) else {
        return need_fixed();
    };
    let len = u16::from_be_bytes([hi, lo]);
    let short = ProxyError::V2Length {
        len,
        min: block_len,
    };
    if len < block_len {
        return Err(short);
    }
    let total = V2_FIXED_LEN + usize::from(len);
    let Some(body) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(incomplete(total.saturating_sub(buf.len())));
    };
    let (block, tlv_bytes) = body.split_at_checked(usize::from(block_len)).ok_or(short)?;

    let addresses = match command {
        Command::Local => None,
        Command::Proxy => v2_addresses(family, block),
    };
    let (tlvs, crc_at) = parse_tlvs(tlv_bytes, V2_FIXED_LEN + usize::from(block_len))?;
    if let Some(at) = crc_at {
        verify_crc(buf.get(..total).unwrap_or(buf), at)?;
    }

    Ok(ProxyParse::Complete {
        header: ProxyHeader {
            version: Version::V2,
            command,
            family,
            transport,
            addresses,
            tlvs,
        },
        consumed_len: total,
    })
}

fn v2_addresses(family: Family, block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    match family {
        Family::Inet => {
            let (src, rest) = block.split_first_chunk::<4>()?;
            let (dst, rest) = rest.split_first_chunk::<4>()?;
            let (sport, rest) = rest.split_first_chunk::<2>()?;
            let (dport, _) = rest.split_first_chunk::<2>()?;
            Some((
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(*src),
                    u16::from_be_bytes(*sport),
                )),
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(*dst),
                    u16::from_be_bytes(*dport),
                )),
            ))
        }
        Family::Inet6 => {
            let (src, rest) = block.split_first_chunk::<16>()?;
            let (dst, rest) = rest.split_first_chunk::<16>()?;
            let (sport, rest) = rest.split_first_chunk::<2>()?;
            let (dport, _) = rest.split_first_chunk::<2>()?;
            Some((
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(*src),
                    u16::from_be_bytes(*sport),
                    0,
                    0,
                )),
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(*dst),
                    u16::from_be_bytes(*dport),
                    0,
                    0,
                )),
            ))
        }
        Family::Unspec | Family::Unix => None,
    }
}

/// Parses the TLV area; `base` is its offset in the header. Also returns the header
/// offset of the first CRC32C TLV's value, which the checksum covers as zeros.
fn parse_tlvs(mut bytes: &[u8], base: usize) -> Result<(Vec<Tlv<'_>>, Option<usize>), ProxyError> {
    let mut tlvs = Vec::new();
    let mut crc_at = None;
    let mut offset = base;
    while !bytes.is_empty() {
        let truncated = ProxyError::TlvTruncated { offset };
        let (&[kind, hi, lo], rest) = bytes.split_first_chunk::<3>().ok_or(truncated)?;
        let (value, rest) = rest
            .split_at_checked(usize::from(u16::from_be_bytes([hi, lo])))
            .ok_or(truncated)?;
        if kind == Tlv::CRC32C && crc_at.is_none() {
            if value.len() != 4 {
                return Err(ProxyError::Crc32cLength(value.len()));
            }
            crc_at = Some(offset + 3);
        }
        tlvs.push(Tlv { kind, value });
        offset += 3 + value.len();
        bytes = rest;
    }
    Ok((tlvs, crc_at))
}

/// Checks the CRC32C whose 4-byte value sits at `at` in `header`.
fn verify_crc(header: &[u8], at: usize) -> Result<(), ProxyError> {
    let (before, rest) = header
        .split_at_checked(at)
        .ok_or(ProxyError::Crc32cMismatch)?;
    let (&expected, after) = rest
        .split_first_chunk::<4>()
        .ok_or(ProxyError::Crc32cMismatch)?;
    let sum = Crc32c::new()
        .update(before)
        .update(&[0; 4])
        .update(after)
        .finish();
    if sum == u32::from_be_bytes(expected) {
        Ok(())
    } else {
        Err(ProxyError::Crc32cMismatch)
    }
}

/// Writes a v1 header for a TCP connection from `src` to `dst`.
///
/// Both IPv4: `TCP4`. Otherwise `TCP6`, with an IPv4 endpoint written as an
/// IPv4-mapped IPv6 address. Never longer than [`V1_MAX_LEN`].
pub fn encode_v1(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let (src, dst) = unmapped(src, dst);
    out.reserve(V1_MAX_LEN);
    // Writing to a Vec cannot fail, so the io::Result carries nothing.
    let _ = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            write!(out, "PROXY TCP4 {s} {d} {} {}\r\n", src.port(), dst.port())
        }
        (s, d) => write!(
            out,
            "PROXY TCP6 {} {} {} {}\r\n",
            to_v6(s),
            to_v6(d),
            src.port(),
            dst.port()
        ),
    };
}

/// Writes `PROXY UNKNOWN\r\n`: the receiver will use the connection's own endpoints.
pub fn encode_v1_unknown(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PROXY UNKNOWN\r\n");
}

/// Writes a v2 header.
///
/// `addresses: None` writes `AF_UNSPEC` (and ignores `transport`); this is what a
/// `LOCAL` header, e.g. from a health check, normally carries. Both IPv4 writes
/// `AF_INET`, otherwise `AF_INET6` with IPv4 endpoints mapped. TLVs are written in
/// order; the first [`Tlv::CRC32C`] gets the checksum of the whole header as its
/// value. Only `out` grows; nothing else is allocated.
pub fn encode_v2(
    command: Command,
    transport: Transport,
    addresses: Option<(SocketAddr, SocketAddr)>,
    tlvs: &[Tlv<'_>],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let addresses = addresses.map(|(src, dst)| unmapped(src, dst));
    let proto = match (addresses, transport) {
        (None, _) => 0,
        (Some(_), Transport::Stream) => 0x1,
        (Some(_), Transport::Datagram) => 0x2,
        (Some(_), Transport::Unspec) => return Err(EncodeError::UnspecTransport),
    };
    let (fam, block_len) = match addresses {
        None => (0x00, 0),
        Some((SocketAddr::V4(_), SocketAddr::V4(_))) => (0x10 | proto, AF_INET_LEN),
        Some(_) => (0x20 | proto, AF_INET6_LEN),
    };
    // Size everything first, so a refused header leaves `out` untouched.
    let mut len = usize::from(block_len);
    for tlv in tlvs {
        let value_len = if tlv.kind == Tlv::CRC32C {
            4
        } else {
            tlv.value.len()
        };
        if value_len > usize::from(u16::MAX) {
            return Err(EncodeError::TlvTooLong {
                kind: tlv.kind,
                len: value_len,
            });
        }
        len += 3 + value_len;
        if len > usize::from(u16::MAX) {
            return Err(EncodeError::TooLong);
        }
    }
    let len16 = u16::try_from(len).map_err(|_| EncodeError::TooLong)?;

    let start = out.len();
    out.reserve(V2_FIXED_LEN + len);
    out.extend_from_slice(V2_SIGNATURE);
    out.push(
        0x20 | match command {
            Command::Local => 0x0,
            Command::Proxy => 0x1,
        },
    );
    out.push(fam);
    out.extend_from_slice(&len16.to_be_bytes());
    match addresses {
        None => {}
        Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        Some((s, d)) => {
            out.extend_from_slice(&to_v6(s.ip()).octets());
            out.extend_from_slice(&to_v6(d.ip()).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    let mut crc_at = None;
    for tlv in tlvs {
        out.push(tlv.kind);
        if tlv.kind == Tlv::CRC32C && crc_at.is_none() {
            out.extend_from_slice(&4u16.to_be_bytes());
            crc_at = Some(out.len());
            out.extend_from_slice(&[0; 4]);
        } else if tlv.kind == Tlv::CRC32C {
            // Later CRC TLVs are sized as 4 bytes above; keep that promise.
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
        } else {
            // Sized above, so this always fits.
            let vlen = u16::try_from(tlv.value.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&vlen.to_be_bytes());
            out.extend_from_slice(tlv.value);
        }
    }
    if let Some(at) = crc_at {
        let sum = Crc32c::new()
            .update(out.get(start..).unwrap_or_default())
            .finish();
        if let Some(field) = out.get_mut(at..at + 4) {
            field.copy_from_slice(&sum.to_be_bytes());
        }
    }
    Ok(())
}

/// Both endpoints as IPv4 when both are IPv4 or IPv4-mapped IPv6; else as
/// they are.
fn unmapped(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v4 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    };
    match (v4(src), v4(dst)) {
        (Some(s), Some(d)) => (
            SocketAddr::new(s.into(), src.port()),
            SocketAddr::new(d.into(), dst.port()),
        ),
        _ => (src, dst),
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

impl ProxyHeader<'_> {
    /// Writes this header again in its own version.
    ///
    /// The result parses back to an equal header, except where the parse dropped
    /// information: a v2 `LOCAL` header's address block and an `AF_UNIX` block are
    /// not kept, so they are re-encoded as `AF_UNSPEC`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match (self.version, self.addresses) {
            (Version::V1, Some((src, dst))) => {
                encode_v1(src, dst, out);
                Ok(())
            }
            (Version::V1, None) => {
                encode_v1_unknown(out);
                Ok(())
            }
            (Version::V2, addresses) => {
                encode_v2(self.command, self.transport, addresses, &self.tlvs, out)
            }
        }
    }
}

#[cfg(test)]
mod tests;
