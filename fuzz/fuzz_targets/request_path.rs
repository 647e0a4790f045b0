//! Any string as a request path: `path::normalize` must not panic, a path it
//! accepts normalises to a fixed point without dot segments or runs of
//! slashes, and refusing encoded slashes only ever refuses more. The same
//! bytes as a request's host: `name::is_authority` must not panic, and a
//! host it accepts has no user info, space or slash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::path::{Slashes, normalize};

fuzz_target!(|data: &[u8]| {
    if weir_wire::name::is_authority(data) {
        assert!(!data.iter().any(|b| matches!(b, b'@' | b' ' | b'/' | b'%')));
    }
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
