//! Any bytes as a backend's answer to an HTTP health probe: `http1` must not
//! panic, a complete response's body is no longer than the input, and a
//! response complete before EOF reads the same at EOF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::http1::{parse_response, parse_response_at_eof};

fuzz_target!(|data: &[u8]| {
    let at_eof = parse_response_at_eof(data);
    if let Ok(Some(r)) = parse_response(data) {
        assert!(r.body.len() <= data.len());
        assert_eq!(at_eof.as_ref().map(|e| e.status), Ok(r.status));
    }
    if let Ok(r) = at_eof {
        assert!(r.body.len() <= data.len());
    }
});
