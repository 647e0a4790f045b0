//! Any bytes as a `traceparent` header: `traceparent::parse` must not panic,
//! and a version-00 header it accepts formats back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::traceparent::{LEN, parse};

fuzz_target!(|data: &[u8]| {
    if let Some(t) = parse(data)
        && data.len() == LEN
        && data.starts_with(b"00")
    {
        assert_eq!(&t.format()[..], data);
    }
});
