use proptest::prelude::*;

use super::*;

#[test]
fn content_length_body() {
    let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nrunning").expect("ok");
    assert_eq!(
        r,
        Some(Response {
            status: 200,
            body: b"running".to_vec(),
            keep_alive: true,
            location: None,
        })
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nrun"),
        Ok(None)
    );
    assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
}

#[test]
fn chunked_body() {
    let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nrepl\r\n3;x=y\r\nica\r\n0\r\n\r\n";
    let r = parse_response(raw).expect("ok").expect("complete");
    assert_eq!((r.status, r.body.as_slice()), (503, &b"replica"[..]));
    assert_eq!(parse_response(&raw[..raw.len() - 6]), Ok(None));
    assert!(
        parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
    );
}

/// A chunk size near usize::MAX once wrapped `size + 2` and panicked on slicing.
#[test]
fn huge_chunk_sizes_neither_wrap_nor_panic() {
    for size in [
        "ffffffffffffffff",
        "fffffffffffffffe",
        "ffffffffffffffffff",
        "8000000000000000",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nab\r\n");
        let r = parse_response(raw.as_bytes());
        assert!(
            matches!(r, Ok(None) | Err(ResponseError::ChunkSize)),
            "{size}: {r:?}"
        );
        assert!(parse_response_at_eof(raw.as_bytes()).is_err(), "{size}");
    }
}

#[test]
fn chunked_body_ends_after_its_trailers() {
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n".to_vec();
    assert_eq!(parse_response(&head), Ok(None));
    let mut with_trailer = head;
    with_trailer.extend_from_slice(b"X-T: 1\r\n");
    assert_eq!(parse_response(&with_trailer), Ok(None));
    with_trailer.extend_from_slice(b"\r\n");
    let r = parse_response(&with_trailer)
        .expect("ok")
        .expect("complete");
    assert_eq!(r.body, b"ok");
}

#[test]
fn chunk_without_its_crlf_is_an_error() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n";
    assert_eq!(parse_response(raw), Err(ResponseError::ChunkEnd));
}

#[test]
fn body_until_close() {
    let raw = b"HTTP/1.0 200 OK\r\n\r\nhello";
    assert_eq!(parse_response(raw), Ok(None));
    assert_eq!(
        parse_response_at_eof(raw),
        Ok(Response {
            status: 200,
            body: b"hello".to_vec(),
            keep_alive: false,
            location: None,
        })
    );
}

#[test]
fn errors_are_described() {
    assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    assert_eq!(parse_response_at_eof(b""), Err(ResponseError::ClosedEmpty));
    assert_eq!(
        parse_response_at_eof(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
        Err(ResponseError::ShortBody)
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
        Err(ResponseError::ContentLength)
    );
    assert_eq!(
        ResponseError::ClosedInHead.to_string(),
        "connection closed in the middle of the headers"
    );
}

#[test]
fn keep_alive_follows_version_and_connection_header() {
    let ka = |raw: &[u8]| {
        parse_response(raw)
            .expect("ok")
            .expect("complete")
            .keep_alive
    };
    assert!(ka(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(!ka(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(!ka(
        b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(!ka(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
}

#[test]
fn no_body_statuses() {
    let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").expect("ok");
    assert_eq!(
        r,
        Some(Response {
            status: 204,
            body: vec![],
            keep_alive: true,
            location: None,
        })
    );
}

/// `100 Continue` and `103 Early Hints` come before the answer: passed over,
/// whole or still arriving; a `101` is an answer (a probe's failure).
#[test]
fn interim_answers_are_passed_over() {
    let full = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                 HTTP/1.1 100 Continue\r\n\r\n\
                 HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let r = parse_response(full).expect("ok").expect("complete");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    for cut in 1..full.len() {
        assert_eq!(parse_response(&full[..cut]), Ok(None), "{cut}");
    }
    assert_eq!(
        parse_response_at_eof(b"HTTP/1.1 100 Continue\r\n\r\n"),
        Err(ResponseError::ClosedInHead)
    );
    let r = parse_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
        .expect("ok")
        .expect("complete");
    assert_eq!(r.status, 101);
}

/// A response in one of its three framings, for the properties below.
fn response_bytes(status: u16, body: &[u8], framing: u8, chunk: usize) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\n").into_bytes();
    match framing % 3 {
        0 => out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes()),
        1 => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for part in body.chunks(chunk.max(1)) {
                out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            return out;
        }
        _ => out.extend_from_slice(b"Connection: close\r\n\r\n"),
    }
    out.extend_from_slice(body);
    out
}

proptest! {
    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_response(&bytes);
        let _ = parse_response_at_eof(&bytes);
    }

    #[test]
    fn any_tail_after_a_head_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        bytes.extend_from_slice(&tail);
        let _ = parse_response(&bytes);
        let _ = parse_response_at_eof(&bytes);
    }

    #[test]
    fn framed_bodies_round_trip_and_every_prefix_is_incomplete(
        status in 200u16..600,
        body in proptest::collection::vec(any::<u8>(), 0..300),
        framing in 0u8..2,
        chunk in 1usize..64,
    ) {
        prop_assume!(status != 204 && status != 304);
        let raw = response_bytes(status, &body, framing, chunk);
        let r = parse_response(&raw).expect("valid").expect("complete");
        prop_assert_eq!(r.status, status);
        prop_assert_eq!(&r.body, &body);
        for end in 0..raw.len() {
            prop_assert_eq!(parse_response(&raw[..end]), Ok(None), "prefix of {}", end);
        }
    }

    #[test]
    fn until_close_bodies_end_at_eof(
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let raw = response_bytes(200, &body, 2, 1);
        prop_assert_eq!(parse_response(&raw), Ok(None));
        let r = parse_response_at_eof(&raw).expect("valid");
        prop_assert_eq!(r.body, body);
        prop_assert!(!r.keep_alive);
    }
}

#[test]
fn location_and_head_answers() {
    let raw = b"HTTP/1.1 302 Found\r\nLocation: /next?x=1\r\nContent-Length: 5\r\n\r\nmoved";
    let r = parse_response(raw).expect("ok").expect("complete");
    assert_eq!(r.location.as_deref(), Some("/next?x=1"));
    assert_eq!(r.body, b"moved");
    // A Location with a space or a control character is not taken.
    let raw = b"HTTP/1.1 302 Found\r\nLocation: /a b\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        parse_response(raw).expect("ok").expect("complete").location,
        None
    );
    // The answer to a HEAD has no body, whatever Content-Length says.
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    assert_eq!(parse_response(raw), Ok(None));
    let r = parse_response_to(raw, true).expect("ok").expect("complete");
    assert_eq!((r.status, r.body.len(), r.keep_alive), (200, 0, true));
}
