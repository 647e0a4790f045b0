//! Any bytes as a backend's answer to an HTTP health probe: `http1` must not
//! panic, a complete response's body is no longer than the input, a
//! response complete before EOF reads the same at EOF, and the answer to a
//! HEAD probe has no body and fails only where the head does. The same
//! bytes as a gRPC health check's answer: no panic, and a status only from
//! a whole frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::grpc_health;
use weir_wire::http1::{parse_response, parse_response_at_eof, parse_response_to};

fuzz_target!(|data: &[u8]| {
    if grpc_health::decode_response(data).is_ok() {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert!(data.len() >= 5 + len);
    }
    let at_eof = parse_response_at_eof(data);
    let get = parse_response(data);
    if let Ok(Some(r)) = &get {
        assert!(r.body.len() <= data.len());
        assert_eq!(at_eof.as_ref().map(|e| e.status), Ok(r.status));
    }
    if let Ok(r) = at_eof {
        assert!(r.body.len() <= data.len());
    }
    match parse_response_to(data, true) {
        Ok(Some(head)) => {
            assert!(head.body.is_empty());
            if let Ok(Some(r)) = &get {
                assert_eq!(head.status, r.status);
            }
        }
        Ok(None) => assert!(matches!(get, Ok(None))),
        Err(e) => assert_eq!(get.err(), Some(e)),
    }
});
