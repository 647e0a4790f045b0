//! A read-only peek at a TLS ClientHello: SNI, ALPN and the offered versions.
//!
//! The caller keeps every byte it received and replays them to the backend
//! untouched; this module only reads. It accepts the ClientHello split across any
//! number of handshake records (RFC 8446 §5.1), and records split across any number
//! of reads, and re-parses from the start on every call (the buffer is the state).
//!
//! Bounds: each record's payload ≤ 2^14 bytes, the ClientHello message (handshake
//! header included) ≤ [`MAX_HELLO_LEN`]. A ClientHello inside one record is parsed in
//! place without allocating (the SNI is copied only to lower-case it); one split
//! across records is first copied into a buffer of its exact length.
//!
//! SNI: the `host_name` is validated as a DNS name (LDH labels of 1–63 bytes, `_`
//! tolerated as seen in the wild, ≤ 253 bytes) and lower-cased; one trailing dot is
//! dropped. An IP literal, which RFC 6066 forbids but some clients send, is reported
//! as no SNI rather than an error, since it cannot match a name route anyway.

use std::borrow::Cow;
use std::net::IpAddr;
use std::num::NonZeroUsize;

/// Most bytes of record payload a ClientHello may need: the handshake message with
/// its 4-byte header. Real ClientHellos, post-quantum key shares included, are far
/// below this.
pub const MAX_HELLO_LEN: usize = 16 * 1024;
/// Most payload bytes one TLS record may carry (RFC 8446 §5.1).
pub const MAX_RECORD_LEN: usize = 1 << 14;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// Outcome of [`peek`] when the bytes are not (yet) wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek<'a> {
    Complete(ClientHello<'a>),
    /// A valid prefix; at least `needed` more bytes are required.
    Incomplete {
        needed: Option<NonZeroUsize>,
    },
    /// The stream does not start with a TLS handshake record (decided from the first
    /// two bytes): route it as plain TCP.
    NotTls,
}

/// What a ClientHello says, for routing and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// `legacy_version` of the ClientHello (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// Highest version offered: from `supported_versions` (GREASE values skipped)
    /// when present, else `legacy_version`. 0x0304 means TLS 1.3.
    pub max_version: u16,
    /// The `host_name` from `server_name`, lower-cased; `None` without SNI.
    pub sni: Option<Cow<'a, str>>,
    /// The ALPN protocols in the client's order; empty without the extension.
    pub alpn: AlpnProtocols<'a>,
    /// Offset in the input just past the ClientHello's last byte (record headers
    /// included). Bytes after it were not needed.
    pub wire_len: usize,
}

impl ClientHello<'_> {
    /// Detaches the value from the input buffer.
    #[must_use]
    pub fn into_owned(self) -> ClientHello<'static> {
        ClientHello {
            legacy_version: self.legacy_version,
            max_version: self.max_version,
            sni: self.sni.map(|s| Cow::Owned(s.into_owned())),
            alpn: self.alpn.into_owned(),
            wire_len: self.wire_len,
        }
    }
}

/// The ALPN `protocol_name_list`, validated (every name 1–255 bytes) and kept as its
/// wire bytes so that reading it does not allocate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AlpnProtocols<'a>(Cow<'a, [u8]>);

impl AlpnProtocols<'_> {
    /// The protocol names in the client's order of preference.
    pub fn iter(&self) -> AlpnIter<'_> {
        AlpnIter { rest: &self.0 }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, protocol: &[u8]) -> bool {
        self.iter().any(|p| p == protocol)
    }

    #[must_use]
    pub fn into_owned(self) -> AlpnProtocols<'static> {
        AlpnProtocols(Cow::Owned(self.0.into_owned()))
    }
}

impl std::fmt::Debug for AlpnProtocols<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|p| p.escape_ascii().to_string()))
            .finish()
    }
}

impl<'b> IntoIterator for &'b AlpnProtocols<'_> {
    type Item = &'b [u8];
    type IntoIter = AlpnIter<'b>;
    fn into_iter(self) -> AlpnIter<'b> {
        self.iter()
    }
}

/// Iterator over [`AlpnProtocols`].
#[derive(Debug, Clone)]
pub struct AlpnIter<'b> {
    rest: &'b [u8],
}

impl<'b> Iterator for AlpnIter<'b> {
    type Item = &'b [u8];
    fn next(&mut self) -> Option<&'b [u8]> {
        let (&len, rest) = self.rest.split_first()?;
        let (name, rest) = rest.split_at_checked(usize::from(len))?;
        self.rest = rest;
        Some(name)
    }
}

/// Why bytes that started like TLS can never form a ClientHello we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("TLS record of content type {0} inside the ClientHello, expected handshake (22)")]
    UnexpectedRecordType(u8),
    #[error("TLS record version {0:#06x} is not 0x03xx")]
    RecordVersion(u16),
    #[error("empty TLS handshake record")]
    EmptyRecord,
    #[error("TLS record payload of {0} bytes exceeds 16384")]
    RecordTooLong(usize),
    #[error("first TLS handshake message has type {0}, expected ClientHello (1)")]
    NotClientHello(u8),
    #[error("ClientHello of {0} bytes exceeds the 16 KiB peek limit")]
    TooLarge(usize),
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello repeats extension {0}")]
    DuplicateExtension(u16),
    #[error("ClientHello server_name is not a valid DNS host name")]
    InvalidSni,
}

/// Peeks at the ClientHello at the start of `buf`, all bytes received so far.
pub fn peek(buf: &[u8]) -> Result<Peek<'_>, TlsError> {
    // The first two bytes decide "is this TLS at all", before anything else.
    match buf {
        [first, ..] if *first != CONTENT_HANDSHAKE => return Ok(Peek::NotTls),
        [_, major, ..] if *major != 0x03 => return Ok(Peek::NotTls),
        _ => {}
    }

    // Pass 1: walk the record headers and count handshake bytes, without copying,
    // until the message is complete, provably bad, or the input runs out.
    let mut scan = HelloScan::default();
    let mut records = Records { buf, pos: 0 };
    let mut record_count = 0usize;
    let wire_len = loop {
        let record = match records.next_record()? {
            Next::Record(record) => record,
            Next::Header { missing } => return Ok(incomplete(missing + scan.remaining())),
        };
        record_count += 1;
        let used = scan.feed(record.payload)?;
        if scan.done() {
            break record.start + used;
        }
        if record.missing > 0 {
            // Whether the hello ends inside this record or a later one, at least its
            // remaining bytes must still arrive.
            return Ok(incomplete(scan.remaining()));
        }
    };
    let total = scan.total.unwrap_or(HANDSHAKE_HEADER_LEN);

    // Pass 2: parse the body, in place when it sits in one record.
    let hello = if record_count == 1 {
        let body = buf
            .get(RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN..RECORD_HEADER_LEN + total)
            .ok_or(TlsError::Malformed("record bounds"))?;
        parse_body(body, wire_len)?
    } else {
        let mut message = Vec::with_capacity(total);
        let mut again = Records { buf, pos: 0 };
        while message.len() < total {
            let Next::Record(record) = again.next_record()? else {
                return Err(TlsError::Malformed("record bounds"));
            };
            let take = record.payload.len().min(total - message.len());
            message.extend_from_slice(record.payload.get(..take).unwrap_or_default());
        }
        let body = message
            .get(HANDSHAKE_HEADER_LEN..)
            .ok_or(TlsError::Malformed("record bounds"))?;
        parse_body(body, wire_len)?.into_owned()
    };
    Ok(Peek::Complete(hello))
}

fn incomplete(needed: usize) -> Peek<'static> {
    Peek::Incomplete {
        needed: NonZeroUsize::new(needed.max(1)),
    }
}

/// What the input holds at the next record position.
enum Next<'a> {
    Record(Record<'a>),
    /// Fewer than 5 header bytes (checked as far as they go); `missing` more needed.
    Header {
        missing: usize,
    },
}

/// A record's payload, or the part of it received so far.
struct Record<'a> {
    /// Offset of the payload in the input.
    start: usize,
    payload: &'a [u8],
    /// Payload bytes not received yet; 0 for a whole record.
    missing: usize,
}

/// Walks handshake records, validating each header.
struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Records<'a> {
    fn next_record(&mut self) -> Result<Next<'a>, TlsError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        // Check the bytes of a partial header too, to fail as early as possible.
        if let Some(&kind) = rest.first()
            && kind != CONTENT_HANDSHAKE
        {
            return Err(TlsError::UnexpectedRecordType(kind));
        }
        if let Some(&[major, minor]) = rest.get(1..3).and_then(|s| s.first_chunk::<2>())
            && major != 0x03
        {
            return Err(TlsError::RecordVersion(u16::from_be_bytes([major, minor])));
        }
        let Some((&[_, _, _, hi, lo], payload)) = rest.split_first_chunk::<RECORD_HEADER_LEN>()
        else {
            return Ok(Next::Header {
                missing: RECORD_HEADER_LEN - rest.len(),
            });
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 {
            // RFC 8446 §5.1 forbids zero-length handshake fragments.
            return Err(TlsError::EmptyRecord);
        }
        if len > MAX_RECORD_LEN {
            return Err(TlsError::RecordTooLong(len));
        }
        let start = self.pos + RECORD_HEADER_LEN;
        let (payload, missing) = match payload.get(..len) {
            Some(whole) => (whole, 0),
            None => (payload, len - payload.len()),
        };
        self.pos = start + payload.len();
        Ok(Next::Record(Record {
            start,
            payload,
            missing,
        }))
    }
}

/// Tracks the handshake message across record payloads: its 4-byte header, which may
/// itself be split, and how many of its bytes have been seen.
#[derive(Debug, Default)]
struct HelloScan {
    head: [u8; HANDSHAKE_HEADER_LEN],
    head_len: usize,
    /// Message length, header included, once the header is complete.
    total: Option<usize>,
    /// Message bytes seen, header included (valid once `total` is known).
    seen: usize,
}

impl HelloScan {
    /// Takes the message's bytes from `payload`; returns how many belonged to it.
    fn feed(&mut self, payload: &[u8]) -> Result<usize, TlsError> {
        let mut rest = payload;
        let total = loop {
            if let Some(total) = self.total {
                break total;
            }
            let Some((&b, tail)) = rest.split_first() else {
                return Ok(payload.len());
            };
            rest = tail;
            if self.head_len == 0 && b != HANDSHAKE_CLIENT_HELLO {
                return Err(TlsError::NotClientHello(b));
            }
            if let Some(slot) = self.head.get_mut(self.head_len) {
                *slot = b;
            }
            self.head_len += 1;
            if self.head_len == HANDSHAKE_HEADER_LEN {
                let [_, l0, l1, l2] = self.head;
                let total = HANDSHAKE_HEADER_LEN
                    + usize::from(l0) * 65536
                    + usize::from(l1) * 256
                    + usize::from(l2);
                if total > MAX_HELLO_LEN {
                    return Err(TlsError::TooLarge(total));
                }
                self.total = Some(total);
                self.seen = HANDSHAKE_HEADER_LEN;
            }
        };
        let take = rest.len().min(total.saturating_sub(self.seen));
        self.seen += take;
        Ok(payload.len() - rest.len() + take)
    }

    fn done(&self) -> bool {
        self.total == Some(self.seen)
    }

    /// Message bytes still to come (only the header's, while it is incomplete).
    fn remaining(&self) -> usize {
        match self.total {
            Some(total) => total.saturating_sub(self.seen),
            None => HANDSHAKE_HEADER_LEN - self.head_len,
        }
    }
}

/// A cursor over a ClientHello body; each read names the field it is for, which
/// becomes the error message when the bytes run out.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TlsError> {
        let (head, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or(TlsError::Malformed(what))?;
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, TlsError> {
        let (&b, rest) = self.rest.split_first().ok_or(TlsError::Malformed(what))?;
        self.rest = rest;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, TlsError> {
        let (&b, rest) = self
            .rest
            .split_first_chunk::<2>()
            .ok_or(TlsError::Malformed(what))?;
        self.rest = rest;
        Ok(u16::from_be_bytes(b))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], TlsError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], TlsError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    fn expect_end(&self, what: &'static str) -> Result<(), TlsError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(TlsError::Malformed(what))
        }
    }
}

/// Parses the ClientHello body (after the 4-byte handshake header), RFC 8446 §4.1.2.
fn parse_body(body: &[u8], wire_len: usize) -> Result<ClientHello<'_>, TlsError> {
    let mut r = Reader { rest: body };
    let legacy_version = r.u16("legacy_version")?;
    r.take(32, "random")?;
    if r.vec8("legacy_session_id")?.len() > 32 {
        return Err(TlsError::Malformed("legacy_session_id longer than 32"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(TlsError::Malformed("cipher_suites"));
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(TlsError::Malformed("legacy_compression_methods"));
    }
    let mut hello = ClientHello {
        legacy_version,
        max_version: legacy_version,
        sni: None,
        alpn: AlpnProtocols::default(),
        wire_len,
    };
    // Before TLS 1.2 extensions were optional; their absence is not an error.
    if r.is_empty() {
        return Ok(hello);
    }
    let mut exts = Reader {
        rest: r.vec16("extensions")?,
    };
    r.expect_end("bytes after extensions")?;

    // Duplicates of the extensions we act on are refused: a client sending two SNIs
    // could otherwise be routed by one and served by the other.
    let (mut seen_sni, mut seen_alpn, mut seen_versions) = (false, false, false);
    while !exts.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        let seen = match kind {
            EXT_SERVER_NAME => &mut seen_sni,
            EXT_ALPN => &mut seen_alpn,
            EXT_SUPPORTED_VERSIONS => &mut seen_versions,
            _ => continue,
        };
        if std::mem::replace(seen, true) {
            return Err(TlsError::DuplicateExtension(kind));
        }
        match kind {
            EXT_SERVER_NAME => hello.sni = parse_sni(data)?,
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            _ => {
                if let Some(max) = parse_supported_versions(data)? {
                    hello.max_version = max;
                }
            }
        }
    }
    Ok(hello)
}

/// `server_name` extension, RFC 6066 §3.
fn parse_sni(data: &[u8]) -> Result<Option<Cow<'_, str>>, TlsError> {
    let mut r = Reader { rest: data };
    let mut list = Reader {
        rest: r.vec16("server_name_list")?,
    };
    r.expect_end("bytes after server_name_list")?;
    if list.is_empty() {
        return Err(TlsError::Malformed("empty server_name_list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8("server_name type")?;
        let name = list.vec16("server_name")?;
        // Only host_name (0) is defined; others are skipped as the RFC allows.
        if name_type == 0 && host.replace(name).is_some() {
            return Err(TlsError::Malformed("two host_name entries"));
        }
    }
    match host {
        Some(name) => dns_name(name),
        None => Ok(None),
    }
}

/// A ClientHello's server name as routing reads it: validated, lower-cased,
/// one trailing dot dropped; `Ok(None)` for an IP literal (no server name).
pub fn server_name(name: &[u8]) -> Result<Option<Cow<'_, str>>, TlsError> {
    dns_name(name)
}

/// Validates and lower-cases a host name; `Ok(None)` for an IP literal.
fn dns_name(name: &[u8]) -> Result<Option<Cow<'_, str>>, TlsError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    let text = std::str::from_utf8(name).map_err(|_| TlsError::InvalidSni)?;
    if text.parse::<IpAddr>().is_ok() {
        return Ok(None);
    }
    if !crate::name::is_dns_name(name) {
        return Err(TlsError::InvalidSni);
    }
    Ok(Some(if name.iter().any(u8::is_ascii_uppercase) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }))
}

/// `application_layer_protocol_negotiation`, RFC 7301 §3.1.
fn parse_alpn(data: &[u8]) -> Result<AlpnProtocols<'_>, TlsError> {
    let mut r = Reader { rest: data };
    let list = r.vec16("protocol_name_list")?;
    r.expect_end("bytes after protocol_name_list")?;
    if list.is_empty() {
        return Err(TlsError::Malformed("empty protocol_name_list"));
    }
    let mut names = Reader { rest: list };
    while !names.is_empty() {
        if names.vec8("protocol_name")?.is_empty() {
            return Err(TlsError::Malformed("empty protocol_name"));
        }
    }
    Ok(AlpnProtocols(Cow::Borrowed(list)))
}

/// `supported_versions`, RFC 8446 §4.2.1: the highest non-GREASE version offered.
fn parse_supported_versions(data: &[u8]) -> Result<Option<u16>, TlsError> {
    let mut r = Reader { rest: data };
    let list = r.vec8("supported_versions")?;
    r.expect_end("bytes after supported_versions")?;
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(TlsError::Malformed("supported_versions"));
    }
    Ok(list
        .chunks_exact(2)
        .filter_map(|v| v.first_chunk::<2>())
        .map(|&v| u16::from_be_bytes(v))
        .filter(|&v| !is_grease(v))
        .max())
}

/// GREASE values (RFC 8701) look like 0x?a?a with both bytes equal.
fn is_grease(v: u16) -> bool {
    let [hi, lo] = v.to_be_bytes();
    hi == lo && lo & 0x0f == 0x0a
}

#[cfg(test)]
mod tests;
