//! Any bytes as the answer to a DNS health check's query: `dns::answer`
//! must not panic, and what it accepts carries the query's id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::dns::answer;

fuzz_target!(|data: &[u8]| {
    let id = data
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    if answer(data, id, "health.example.", 1).is_ok() {
        assert!(data.len() >= 12, "a DNS header is 12 bytes");
    }
});
