//! The two messages of gRPC's health check (`grpc.health.v1.Health/Check`),
//! each in its length-prefixed gRPC frame, encoded and decoded by hand:
//! `HealthCheckRequest { string service = 1; }` and
//! `HealthCheckResponse { ServingStatus status = 1; }`. Unknown fields of
//! the answer are skipped, as protobuf says.

/// A length-prefixed gRPC message holding `HealthCheckRequest { service }`.
pub fn encode_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0); // not compressed
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// The `status` of a length-prefixed `HealthCheckResponse` (0 when absent, as
/// protobuf defaults say).
pub fn decode_response(buf: &[u8]) -> Result<u64, &'static str> {
    let [compressed, l0, l1, l2, l3, rest @ ..] = buf else {
        return Err("truncated message");
    };
    if *compressed != 0 {
        return Err("compressed message");
    }
    let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
    let mut msg = rest.get(..len).ok_or("truncated message")?;
    let mut status = 0;
    while !msg.is_empty() {
        let key = take_varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = take_varint(&mut msg)?,
            (_, 0) => {
                take_varint(&mut msg)?;
            }
            (_, 1) => msg = msg.get(8..).ok_or("truncated field")?,
            (_, 2) => {
                let n = usize::try_from(take_varint(&mut msg)?).map_err(|_| "bad length")?;
                msg = msg.get(n..).ok_or("truncated field")?;
            }
            (_, 5) => msg = msg.get(4..).ok_or("truncated field")?,
            _ => return Err("unsupported wire type"),
        }
    }
    Ok(status)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(buf: &mut &[u8]) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Ok(v);
        }
    }
    Err("bad varint")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_encoding() {
        assert_eq!(encode_request(""), [0, 0, 0, 0, 0]);
        assert_eq!(
            encode_request("app"),
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'p']
        );
    }

    #[test]
    fn response_decoding() {
        assert_eq!(decode_response(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(decode_response(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
        // An empty message is status 0 (UNKNOWN); unknown fields are skipped.
        assert_eq!(decode_response(&[0, 0, 0, 0, 0]), Ok(0));
        assert_eq!(
            decode_response(&[0, 0, 0, 0, 6, 0x12, 2, b'x', b'y', 0x08, 1]),
            Ok(1)
        );
        assert!(decode_response(&[0, 0, 0, 0, 3, 0x08]).is_err());
        assert!(decode_response(&[1, 0, 0, 0, 0]).is_err());
        assert!(decode_response(&[0, 0]).is_err());
        assert!(decode_response(&[0, 0, 0, 0, 2, 0x08, 0x80]).is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut slice = &out[..];
            assert_eq!(take_varint(&mut slice), Ok(v));
            assert!(slice.is_empty());
        }
    }

    proptest! {
        /// Any message in a well-formed frame, cut anywhere: no panic, and
        /// a status only from the whole frame.
        #[test]
        fn a_cut_frame_is_refused(
            msg in proptest::collection::vec(any::<u8>(), 0..48),
            cut in 0usize..64,
        ) {
            let mut frame = vec![0];
            frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            frame.extend_from_slice(&msg);
            let cut = cut.min(frame.len());
            if cut < frame.len() {
                prop_assert!(decode_response(&frame[..cut]).is_err());
            }
            let _ = decode_response(&frame);
        }

        /// A status written as protobuf does reads back.
        #[test]
        fn a_status_reads_back(status in any::<u64>()) {
            let mut msg = vec![0x08];
            put_varint(&mut msg, status);
            let mut frame = vec![0];
            frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            frame.extend_from_slice(&msg);
            prop_assert_eq!(decode_response(&frame), Ok(status));
        }
    }
}
