//! Any bytes as a request header that carries a call's context: as a
//! `traceparent`, `traceparent::parse` must not panic, and a version-00
//! header it accepts formats back to the same bytes; as a `grpc-timeout`,
//! `grpc_timeout::parse` must not panic and accepts nothing longer than
//! eight digits and a unit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::grpc_timeout;
use weir_wire::traceparent::{LEN, parse};

fuzz_target!(|data: &[u8]| {
    if let Some(t) = parse(data)
        && data.len() == LEN
        && data.starts_with(b"00")
    {
        assert_eq!(&t.format()[..], data);
    }
    if grpc_timeout::parse(data).is_some() {
        assert!((2..=9).contains(&data.len()), "{data:?}");
    }
});
