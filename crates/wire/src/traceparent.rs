//! The W3C Trace Context `traceparent` header (version `00`):
//! `00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>`, lower-case.
//! A later version is read by its first four fields, as the specification
//! asks; `ff`, upper-case hex, all-zero ids and wrong lengths are refused.
//! Pure: bytes in, a value out.

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// The `sampled` bit of the flags.
pub const SAMPLED: u8 = 0x01;

/// The length of a version-00 header.
pub const LEN: usize = 55;

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The header value, version `00`.
    pub fn format(&self) -> [u8; LEN] {
        let mut out = [b'-'; LEN];
        out[0] = b'0';
        out[1] = b'0';
        hex(&self.trace_id, &mut out[3..35]);
        hex(&self.parent_id, &mut out[36..52]);
        hex(&[self.flags], &mut out[53..55]);
        out
    }
}

/// The trace id as 32 lower-case hex digits (for logs).
pub fn trace_id_hex(id: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex(id, &mut out);
    out
}

fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Parses a `traceparent` value; `None` when it is not a valid one.
pub fn parse(v: &[u8]) -> Option<TraceParent> {
    if v.len() < LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version: [u8; 1] = unhex(&v[0..2])?;
    match version[0] {
        0xff => return None,
        0x00 if v.len() != LEN => return None,
        // A later version may carry more after a dash.
        0x00 => {}
        _ if v.len() > LEN && v[LEN] != b'-' => return None,
        _ => {}
    }
    let trace_id: [u8; 16] = unhex(&v[3..35])?;
    let parent_id: [u8; 8] = unhex(&v[36..52])?;
    let flags: [u8; 1] = unhex(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_example() {
        let v = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = parse(v).expect("valid");
        assert!(t.sampled());
        assert_eq!(
            t.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(&t.format(), v);
        assert_eq!(
            &trace_id_hex(&t.trace_id),
            b"4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn invalid_headers_are_refused() {
        for v in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(parse(v), None, "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let v = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-whatever";
        let t = parse(v).expect("valid");
        assert!(!t.sampled());
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00x").is_none());
    }

    proptest::proptest! {
        #[test]
        fn round_trips(trace in proptest::array::uniform16(1u8..), parent in proptest::array::uniform8(1u8..), flags: u8) {
            let t = TraceParent { trace_id: trace, parent_id: parent, flags };
            proptest::prop_assert_eq!(parse(&t.format()), Some(t));
        }

        #[test]
        fn never_panics(v: Vec<u8>) {
            let _ = parse(&v);
        }
    }
}
