//! Any string as a request path: `path::normalize` must not panic, a path it
//! accepts normalises to a fixed point without dot segments or runs of
//! slashes, and refusing encoded slashes only ever refuses more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::path::{Slashes, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let kept = normalize(text, Slashes::Keep);
    if let Ok(once) = &kept {
        let twice = normalize(once, Slashes::Keep).expect("a normal path stays valid");
        assert_eq!(once, &twice);
        assert!(!once.contains("//"));
        assert!(once.split('/').all(|s| s != "." && s != ".."));
    }
    if let Ok(strict) = normalize(text, Slashes::Reject) {
        assert_eq!(Ok(strict), kept);
    }
});
